//! A real Mosquitto broker on a free loopback port, configured per test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{Process, free_port, port_open, wait_until};

/// How the broker is set up.
#[derive(Debug, Clone)]
pub struct MosquittoOptions {
    /// Keep sessions and queued messages on disk across restarts.
    pub persistence: bool,
    /// QoS 1 messages in flight to one client (Mosquitto's default is 20).
    pub max_inflight: u32,
    /// Messages queued for an offline or busy client; 0 means no limit. Mosquitto's default of
    /// 1000 drops messages it has already acknowledged to the publisher, which would break
    /// delivery for an agent that is offline for long.
    pub max_queued: u32,
    /// A second listener with TLS (and maybe passwords), beside the plain one.
    pub tls: Option<TlsListener>,
}

/// A TLS listener's files.
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require this user and password on the TLS listener.
    pub credentials: Option<(String, String)>,
}

impl Default for MosquittoOptions {
    fn default() -> Self {
        MosquittoOptions {
            persistence: false,
            max_inflight: 100,
            max_queued: 0,
            tls: None,
        }
    }
}

/// A running broker. Dropping it kills the process.
pub struct Mosquitto {
    /// The plain listener.
    pub port: u16,
    /// The TLS listener, if configured.
    pub tls_port: Option<u16>,
    dir: PathBuf,
    options: MosquittoOptions,
    process: Option<Process>,
}

fn current_user() -> Option<String> {
    let output = Command::new("id").arg("-un").output().ok()?;
    let name = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (!name.is_empty()).then_some(name)
}

fn mosquitto_binary() -> PathBuf {
    for candidate in [
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
        "/usr/bin/mosquitto",
    ] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    PathBuf::from("mosquitto")
}

impl Mosquitto {
    /// Starts a broker with its files under `dir`.
    pub fn start(dir: &Path, options: &MosquittoOptions) -> anyhow::Result<Mosquitto> {
        std::fs::create_dir_all(dir)?;
        let mut last_error = None;
        // A free port can be taken between choosing and binding it; try a few.
        for _ in 0..3 {
            let mut broker = Mosquitto {
                port: free_port(),
                tls_port: options.tls.as_ref().map(|_| free_port()),
                dir: dir.to_owned(),
                options: options.clone(),
                process: None,
            };
            match broker.launch() {
                Ok(()) => return Ok(broker),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("mosquitto did not start")))
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let conf = self.dir.join("mosquitto.conf");
        let mut text = String::from(
            "per_listener_settings true\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n",
        );
        text.push_str(&format!(
            "max_inflight_messages {}\nmax_queued_messages {}\nmax_queued_bytes 0\n",
            self.options.max_inflight, self.options.max_queued
        ));
        // Run as whoever runs the tests: as root, Mosquitto would otherwise switch to the
        // `mosquitto` user, which cannot write the test's persistence directory.
        if let Some(user) = current_user() {
            text.push_str(&format!("user {user}\n"));
        }
        if self.options.persistence {
            text.push_str(&format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                self.dir.display()
            ));
        } else {
            text.push_str("persistence false\n");
        }
        text.push_str(&format!(
            "listener {} 127.0.0.1\nallow_anonymous true\n",
            self.port
        ));
        if let (Some(tls), Some(tls_port)) = (&self.options.tls, self.tls_port) {
            text.push_str(&format!(
                "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
                tls.ca.display(),
                tls.cert.display(),
                tls.key.display()
            ));
            match &tls.credentials {
                Some((user, password)) => {
                    let file = self.dir.join("passwords");
                    std::fs::write(&file, format!("{user}:{password}\n"))?;
                    let status = Command::new("mosquitto_passwd")
                        .arg("-U")
                        .arg(&file)
                        .status()?;
                    anyhow::ensure!(status.success(), "mosquitto_passwd -U failed");
                    text.push_str(&format!(
                        "allow_anonymous false\npassword_file {}\n",
                        file.display()
                    ));
                }
                None => text.push_str("allow_anonymous true\n"),
            }
        }
        std::fs::write(&conf, text)?;
        let mut command = Command::new(mosquitto_binary());
        command.arg("-c").arg(&conf);
        let mut process = Process::spawn("mosquitto", command)?;
        let port = self.port;
        let tls_port = self.tls_port;
        let ready = || port_open(port) && tls_port.is_none_or(port_open);
        if !wait_until(Duration::from_secs(10), || ready() || !process.is_running())
            || !process.is_running()
        {
            let logs = process.logs().join("\n");
            anyhow::bail!("mosquitto did not start on port {port}:\n{logs}");
        }
        self.process = Some(process);
        Ok(())
    }

    /// `mqtt://127.0.0.1:<port>`, the plain listener.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// `mqtts://127.0.0.1:<tls port>`, if there is a TLS listener.
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port
            .map(|port| format!("mqtts://127.0.0.1:{port}"))
    }

    /// Stops the broker with SIGTERM, so it saves its persistence file.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.terminate(Duration::from_secs(10));
        }
    }

    /// Stops and starts again on the same port, with the same files.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let port = self.port;
        wait_until(Duration::from_secs(5), || !port_open(port));
        self.launch()
    }

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// What the broker logged.
    pub fn logs(&self) -> Vec<String> {
        self.process.as_ref().map(Process::logs).unwrap_or_default()
    }
}
