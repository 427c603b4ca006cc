//! A real Prometheus (Debian's `prometheus`) per test: its own port and data directory,
//! configured by the test (scrape jobs, remote write), optionally with the remote write
//! receiver on; and [`Exporter`], a fixed-text `/metrics` for it to scrape.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::{Process, free_port, wait_until};

/// A running Prometheus.
pub struct PrometheusProcess {
    pub port: u16,
    process: Process,
}

impl PrometheusProcess {
    /// Starts Prometheus in `dir` with `config` (prometheus.yml) and `args` besides; returns
    /// once it answers `/-/ready`.
    pub fn start(dir: &Path, config: &str, args: &[&str]) -> anyhow::Result<PrometheusProcess> {
        std::fs::create_dir_all(dir.join("data"))?;
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config)?;
        let port = free_port();
        let mut command = Command::new("prometheus");
        command
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(args);
        let mut process = Process::spawn("prometheus", command)?;
        let url = format!("http://127.0.0.1:{port}/-/ready");
        let ready = || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && blocking_get(&url).is_some_and(|status| status == 200)
        };
        if !wait_until(Duration::from_secs(30), || ready() || !process.is_running())
            || !process.is_running()
        {
            anyhow::bail!(
                "prometheus did not start on port {port}:\n{}",
                process.logs().join("\n")
            );
        }
        Ok(PrometheusProcess { port, process })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// The status of a plain-HTTP GET, without an async runtime (for readiness checks).
fn blocking_get(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = std::net::TcpStream::connect(host).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// A `/metrics` endpoint serving whatever text the test sets, for Prometheus to scrape.
pub struct Exporter {
    pub port: u16,
    text: Arc<Mutex<String>>,
}

impl Exporter {
    /// Serves `text` on a free port, on a thread of its own, until the process ends.
    pub fn start(text: &str) -> anyhow::Result<Exporter> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Mutex::new(text.to_owned()));
        let served = Arc::clone(&shared);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let body = served
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Ok(Exporter { port, text: shared })
    }

    /// What the next scrape gets.
    pub fn set(&self, text: &str) {
        *self.text.lock().unwrap_or_else(PoisonError::into_inner) = text.to_owned();
    }

    /// `127.0.0.1:<port>`, a scrape target.
    pub fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}
