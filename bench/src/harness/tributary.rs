//! The real Tributary binaries as child processes, their configuration, and the oracle that
//! checks what reached the collector.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{Process, free_port, wait_until};

/// Where the built binaries are: `$TRIBUTARY_BIN_DIR`, else the target directory this test or
/// benchmark binary was built into (`target/<profile>`).
/// Under `cargo test`, the binaries there are built first (see `build_binaries`).
pub fn bin_dir() -> PathBuf {
    build_binaries();
    target_bin_dir()
}

fn target_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TRIBUTARY_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let mut dir = exe
        .parent()
        .expect("the test binary is in a directory")
        .to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Under `cargo test` (cargo sets `CARGO`), builds the binaries the tests run, once per test
/// process, with the profile the test was built with: a `cargo test` without a `cargo build`
/// first would otherwise run whatever binaries an older build left behind. Not with
/// `TRIBUTARY_BIN_DIR` (the caller chose the binaries) nor outside cargo (the benchmarks).
fn build_binaries() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let Some(cargo) = std::env::var_os("CARGO") else {
            return;
        };
        if std::env::var_os("TRIBUTARY_BIN_DIR").is_some() {
            return;
        }
        let dir = target_bin_dir();
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the bench crate is in the workspace");
        let mut command = Command::new(cargo);
        command
            .current_dir(workspace)
            .args(["build", "--workspace", "--bins", "--quiet"]);
        if let Some(target) = dir.parent() {
            command.env("CARGO_TARGET_DIR", target);
        }
        match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => {}
            Some("release") => {
                command.arg("--release");
            }
            Some(profile) => {
                command.args(["--profile", profile]);
            }
            None => {}
        }
        let status = command
            .status()
            .expect("cargo runs to build the binaries under test");
        assert!(status.success(), "building the binaries failed");
    });
}

/// The binary `name` (`tributary-agent`, `tributary-collector`): `$TRIBUTARY_AGENT_BIN` or
/// `$TRIBUTARY_COLLECTOR_BIN` when set (e.g. the static musl agent beside a glibc collector),
/// else the one in [`bin_dir`].
fn binary(name: &str) -> PathBuf {
    let variable = format!("{}_BIN", name.to_ascii_uppercase().replace('-', "_"));
    let path = std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| bin_dir().join(name));
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins), or set TRIBUTARY_BIN_DIR",
        path.display()
    );
    path
}

/// A token for `agent` and its SHA-256 in hex.
pub fn token_pair(agent: &str) -> (String, String) {
    let seed = format!(
        "{agent}-{:?}-{}",
        std::time::SystemTime::now(),
        std::process::id()
    );
    let token = hex::encode(Sha256::digest(seed.as_bytes()));
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    (token, hash)
}

/// A program the harness starts, kills and restarts with the same files.
pub trait Supervised {
    /// Where the running process is kept.
    fn slot(&mut self) -> &mut Option<Process>;

    /// Starts the process and waits until it is ready.
    fn launch(&mut self) -> anyhow::Result<()>;

    /// SIGKILL.
    fn kill9(&mut self) {
        if let Some(process) = self.slot().as_mut() {
            process.kill9();
        }
    }

    /// Starts it again after a kill or stop.
    fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.launch()
    }

    /// SIGTERM, and waits up to `timeout` for the exit.
    fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.slot().as_mut().and_then(|p| p.terminate(timeout))
    }

    /// The running process (its logs, its status).
    fn process(&mut self) -> &mut Process {
        self.slot().as_mut().expect("the process was started")
    }
}

/// A collector process on a fixed port (so it can be restarted where agents expect it).
pub struct CollectorProcess {
    pub port: u16,
    pub dir: PathBuf,
    config: PathBuf,
    process: Option<Process>,
    /// The address it listens on.
    host: std::net::IpAddr,
    /// A command the collector runs under, e.g. `ip netns exec NAME`.
    wrapper: Vec<String>,
    /// It speaks TLS (its URL is `https`).
    https: bool,
}

/// How a collector is set up beyond the defaults ([`CollectorProcess::start_custom`]).
#[derive(Debug, Clone)]
pub struct CollectorOptions {
    pub host: std::net::IpAddr,
    pub port: u16,
    /// TOML appended to `[server]`.
    pub server_extra: String,
    /// TOML appended after everything (e.g. a `[time]` section).
    pub extra: String,
    /// A command to run the collector under.
    pub wrapper: Vec<String>,
    /// `server_extra` sets up TLS: the collector's URL is `https`.
    pub https: bool,
    /// `server.anonymous_read`: on by default, so tests read what was stored without a
    /// reader's token; the tests of read tokens turn it off.
    pub anonymous_read: bool,
    /// `[storage] url`: a PostgreSQL database in place of the SQLite file. Without it, and
    /// with `TRIBUTARY_E2E_STORE=postgres` in the environment, each collector gets a new
    /// database on a server shared by the test process ([`shared_postgres`]).
    pub storage_url: Option<String>,
}

/// The PostgreSQL server the collectors of this test process share when
/// `TRIBUTARY_E2E_STORE=postgres` (started on first use, stopped once the process is gone).
pub fn shared_postgres() -> &'static super::postgres::PgServer {
    static SERVER: std::sync::OnceLock<&'static super::postgres::PgServer> =
        std::sync::OnceLock::new();
    SERVER.get_or_init(|| {
        let server = super::postgres::PgServer::start();
        let watched: &'static super::postgres::PgServer = Box::leak(Box::new(server));
        watched.stop_when_gone(std::process::id());
        watched
    })
}

/// The store a collector of the harness gets: `options.storage_url`, else a new database on
/// the shared server when the environment asks for PostgreSQL, else `None` (SQLite).
fn storage_url(options: &CollectorOptions) -> Option<String> {
    if options.storage_url.is_some() {
        return options.storage_url.clone();
    }
    if std::env::var("TRIBUTARY_E2E_STORE").as_deref() != Ok("postgres") {
        return None;
    }
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Some(shared_postgres().create_database(&format!("collector_{n}")))
}

impl Default for CollectorOptions {
    fn default() -> Self {
        CollectorOptions {
            host: [127, 0, 0, 1].into(),
            port: free_port(),
            server_extra: String::new(),
            extra: String::new(),
            wrapper: Vec::new(),
            https: false,
            anonymous_read: true,
            storage_url: None,
        }
    }
}

impl CollectorProcess {
    /// Writes a configuration admitting `agents` (id, token) and starts the collector.
    pub fn start(dir: &Path, agents: &[(&str, &str)]) -> anyhow::Result<CollectorProcess> {
        Self::start_with(dir, agents, "")
    }

    /// Like [`CollectorProcess::start`], with extra TOML appended to the `[server]` table.
    pub fn start_with(
        dir: &Path,
        agents: &[(&str, &str)],
        server_extra: &str,
    ) -> anyhow::Result<CollectorProcess> {
        Self::start_custom(
            dir,
            agents,
            &CollectorOptions {
                server_extra: server_extra.to_owned(),
                ..CollectorOptions::default()
            },
        )
    }

    /// Like [`CollectorProcess::start`], on a given port.
    pub fn start_on(
        dir: &Path,
        port: u16,
        agents: &[(&str, &str)],
    ) -> anyhow::Result<CollectorProcess> {
        Self::start_custom(
            dir,
            agents,
            &CollectorOptions {
                port,
                ..CollectorOptions::default()
            },
        )
    }

    /// Writes a configuration admitting `agents` (id, token) as `options` say and starts it.
    pub fn start_custom(
        dir: &Path,
        agents: &[(&str, &str)],
        options: &CollectorOptions,
    ) -> anyhow::Result<CollectorProcess> {
        let mut collector = Self::configure(dir, agents, options)?;
        collector.launch()?;
        Ok(collector)
    }

    /// Writes the configuration without starting the collector (start it with `restart`).
    pub fn configure(
        dir: &Path,
        agents: &[(&str, &str)],
        options: &CollectorOptions,
    ) -> anyhow::Result<CollectorProcess> {
        std::fs::create_dir_all(dir)?;
        let (host, port) = (options.host, options.port);
        let storage = match storage_url(options) {
            Some(url) => format!("url = \"{url}\""),
            None => format!("path = \"{}\"", dir.join("collector.db").display()),
        };
        let mut text = format!(
            "[server]\nlisten = \"{host}:{port}\"\nanonymous_read = {}\n{}\n[storage]\n{storage}\n",
            options.anonymous_read, options.server_extra,
        );
        for (id, token) in agents {
            let hash = hex::encode(Sha256::digest(token.as_bytes()));
            text.push_str(&format!(
                "\n[[agents]]\nid = \"{id}\"\ntoken_sha256 = \"{hash}\"\n"
            ));
        }
        text.push('\n');
        text.push_str(&options.extra);
        let config = dir.join("collector.toml");
        std::fs::write(&config, text)?;
        Ok(CollectorProcess {
            port,
            dir: dir.to_owned(),
            config,
            process: None,
            host,
            wrapper: options.wrapper.clone(),
            https: options.https,
        })
    }

    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }

    /// The running collector's process id (of the wrapper, if there is one: `ip netns exec`
    /// execs the collector in its place).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    pub fn kill9(&mut self) {
        if let Some(process) = self.process.as_mut() {
            process.kill9();
        }
    }

    /// Starts it again after a kill or stop, on the same port and database.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.launch()
    }

    pub fn terminate(&mut self) -> Option<ExitStatus> {
        self.process
            .as_mut()
            .and_then(|p| p.terminate(Duration::from_secs(15)))
    }

    pub fn process(&mut self) -> &mut Process {
        self.process.as_mut().expect("the collector was started")
    }

    /// The database file, for checks that look under the API.
    pub fn database(&self) -> PathBuf {
        self.dir.join("collector.db")
    }

    /// Its configuration file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }
}

/// An agent process.
pub struct AgentProcess {
    pub dir: PathBuf,
    pub metrics_port: u16,
    config: PathBuf,
    env: Vec<(String, String)>,
    process: Option<Process>,
}

/// An agent configuration with one MQTT input on `sensors/#` (JSON, `sensors/{device}/{name}`),
/// its buffer in `data_dir`, and `/metrics` on `metrics_port`. `extra` is appended verbatim
/// (e.g. `[buffer]` settings); keys for the MQTT input go in `input_extra`.
pub fn agent_config(
    id: &str,
    data_dir: &Path,
    collector_url: &str,
    broker_url: &str,
    metrics_port: u16,
    input_extra: &str,
    extra: &str,
) -> String {
    let mqtt = format!(
        r#"[[inputs.mqtt]]
broker = "{broker_url}"
topics = ["sensors/#"]
qos = 1
format = "json"
topic_tags = "sensors/{{device}}/{{name}}"
reconnect_initial = "100ms"
reconnect_max = "1s"
{input_extra}

{extra}
"#
    );
    agent_config_with(id, data_dir, collector_url, metrics_port, &mqtt)
}

/// An agent configuration with the test defaults for `[agent]` and `[forward]`, and `rest`
/// (inputs and other sections) as given.
pub fn agent_config_with(
    id: &str,
    data_dir: &Path,
    collector_url: &str,
    metrics_port: u16,
    rest: &str,
) -> String {
    format!(
        r#"[agent]
id = "{id}"
data_dir = "{data_dir}"
listen = "127.0.0.1:{metrics_port}"
shutdown_timeout = "10s"

[forward]
url = "{collector_url}"
token = "${{TRIBUTARY_TOKEN}}"
linger = "20ms"
backoff_initial = "100ms"
backoff_max = "1s"

{rest}
"#,
        data_dir = data_dir.display()
    )
}

impl AgentProcess {
    /// Writes `config` and starts the agent with `env`; waits until its MQTT subscription is
    /// confirmed (when the config has an MQTT input) so nothing published after this is missed.
    pub fn start(dir: &Path, config: &str, env: &[(&str, &str)]) -> anyhow::Result<AgentProcess> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("agent.toml");
        std::fs::write(&path, config)?;
        let metrics_port = config
            .lines()
            .find_map(|l| l.strip_prefix("listen = \"127.0.0.1:"))
            .and_then(|rest| rest.trim_end_matches('"').parse().ok())
            .unwrap_or(0);
        let mut agent = AgentProcess {
            dir: dir.to_owned(),
            metrics_port,
            config: path,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            process: None,
        };
        agent.launch()?;
        Ok(agent)
    }

    /// Replaces (or adds) an environment variable for the next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Removes an environment variable for the next start.
    pub fn remove_env(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// A value from the agent's `/metrics`: the first sample whose line starts with `series`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = super::http()
            .get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

impl Supervised for CollectorProcess {
    fn slot(&mut self) -> &mut Option<Process> {
        &mut self.process
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary("tributary-collector"));
                command
            }
            None => Command::new(binary("tributary-collector")),
        };
        command.arg("--config").arg(&self.config);
        let mut process = Process::spawn("tributary-collector", command)?;
        let (host, port) = (self.host, self.port);
        if !wait_until(Duration::from_secs(20), || {
            super::port_open_at(host, port) || !process.is_running()
        }) || !process.is_running()
        {
            anyhow::bail!(
                "the collector did not start:\n{}",
                process.logs().join("\n")
            );
        }
        self.process = Some(process);
        Ok(())
    }
}

impl Supervised for AgentProcess {
    fn slot(&mut self) -> &mut Option<Process> {
        &mut self.process
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new(binary("tributary-agent"));
        command.arg("--config").arg(&self.config);
        command.env("RUST_LOG", "info");
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let mut process = Process::spawn("tributary-agent", command)?;
        let has_mqtt = std::fs::read_to_string(&self.config)?.contains("[[inputs.mqtt]]");
        // Ready once subscribed, or reconnected to a session that still holds the subscription.
        let ready: &[&str] = if has_mqtt {
            &["subscribed", "session_present=true"]
        } else {
            &["agent running"]
        };
        if !process.wait_for_any_log(ready, Duration::from_secs(20)) {
            anyhow::bail!(
                "the agent did not become ready:\n{}",
                process.logs().join("\n")
            );
        }
        self.process = Some(process);
        Ok(())
    }
}

/// GETs `path` from the collector and returns the text of a successful answer.
pub async fn query_text(collector_url: &str, path: &str) -> anyhow::Result<String> {
    let response = super::http()
        .get(format!("{collector_url}{path}"))
        .send()
        .await?;
    let status = response.status();
    let body = response.text().await?;
    anyhow::ensure!(status.is_success(), "GET {path}: {status}: {body}");
    Ok(body)
}

/// GETs `path` from the collector and parses the JSON answer.
pub async fn query_json(collector_url: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(
        &query_text(collector_url, path).await?,
    )?)
}

/// Which message ids the collector stored, and how often.
pub struct Oracle {
    pub counts: HashMap<u64, usize>,
    pub points: usize,
}

/// The oracle's finding against what the broker acknowledged.
#[derive(Debug)]
pub struct Verdict {
    /// Acknowledged by the broker, not stored.
    pub missing: Vec<u64>,
    /// Stored more than once.
    pub duplicated: Vec<u64>,
    pub acked: usize,
    pub stored_points: usize,
}

impl Verdict {
    pub fn exactly_once(&self) -> bool {
        self.missing.is_empty() && self.duplicated.is_empty()
    }
}

impl Oracle {
    /// Reads every stored value of field `id` of points named `name`.
    pub async fn read(collector_url: &str, name: &str) -> anyhow::Result<Oracle> {
        let answer = query_json(
            collector_url,
            &format!("/api/v1/query?name={name}&field=id"),
        )
        .await?;
        // A cut answer would hide doubles and losses past the cut: refuse to judge it.
        if answer["truncated"].as_bool() == Some(true) {
            anyhow::bail!("the collector's answer is truncated; raise query.max_points");
        }
        let mut counts = HashMap::new();
        let mut points = 0;
        for series in answer["series"].as_array().into_iter().flatten() {
            for point in series["points"].as_array().into_iter().flatten() {
                let id = point[1]
                    .as_u64()
                    .ok_or_else(|| anyhow::anyhow!("a stored id is not an integer: {point}"))?;
                *counts.entry(id).or_insert(0) += 1;
                points += 1;
            }
        }
        Ok(Oracle { counts, points })
    }

    pub fn verdict(&self, acked: &HashSet<u64>) -> Verdict {
        let mut missing: Vec<u64> = acked
            .iter()
            .filter(|id| !self.counts.contains_key(id))
            .copied()
            .collect();
        missing.sort_unstable();
        let mut duplicated: Vec<u64> = self
            .counts
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| *id)
            .collect();
        duplicated.sort_unstable();
        Verdict {
            missing,
            duplicated,
            acked: acked.len(),
            stored_points: self.points,
        }
    }
}
