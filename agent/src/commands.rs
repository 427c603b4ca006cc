//! The agent's helper commands: `test` (run every input once and print what it would buffer)
//! and `quickstart` (a collector and an agent on this machine, with embedded defaults).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tributary_wire::line_protocol::format_point;

use crate::config::Config;

/// `tributary-agent test`: runs every input once and prints the points it would buffer, as
/// line protocol on stdout; rejects, errors and notes go to stderr. Nothing is buffered or
/// forwarded. Exits 1 if any input failed.
pub async fn test(config: &Config, message: Option<(&str, &[u8])>) -> ExitCode {
    let mut failed = false;
    let stdout = std::io::stdout();
    for input in &config.inputs {
        let label = input.label();
        let sample = input.sample(&config.agent.tags, message).await;
        for note in &sample.notes {
            eprintln!("# {label}: {note}");
        }
        let mut out = stdout.lock();
        for point in &sample.points {
            let _ = writeln!(out, "{}", format_point(&one_line(point)));
        }
        drop(out);
        if let Some(summary) = &sample.summary {
            eprintln!("# {label}: {summary}");
        }
        failed |= sample.failed;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `point` with the newlines of its string values spelled out (`\n`, `\r`): line protocol
/// allows them inside quotes, but a reader of `test`'s output, and most tools, take a line
/// for a point.
fn one_line(point: &tributary_wire::Point) -> tributary_wire::Point {
    let spell = |text: &str| text.replace('\n', "\\n").replace('\r', "\\r");
    let mut point = point.clone();
    for value in point.tags.values_mut() {
        *value = spell(value);
    }
    for value in point.fields.values_mut() {
        if let tributary_wire::FieldValue::Str(text) = value {
            *text = spell(text);
        }
    }
    point
}

/// Options of `tributary-agent quickstart`.
pub struct Quickstart {
    /// Where the configuration, the buffer and the collector's database go.
    pub dir: PathBuf,
    /// The collector's port on 127.0.0.1.
    pub port: u16,
}

/// `tributary-agent quickstart`: writes a collector and an agent configuration into `dir`,
/// starts `tributary-collector` (found next to this program, or in PATH), and runs the agent
/// with the system input until Ctrl-C, then stops both.
pub async fn quickstart(options: &Quickstart, shutdown: CancellationToken) -> anyhow::Result<()> {
    let dir = &options.dir;
    // Another program on the port would answer in the collector's place (or make it exit):
    // find out before starting anything.
    if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", options.port)) {
        anyhow::bail!(
            "port {} on 127.0.0.1 is not free ({e}); choose another with --port",
            options.port
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir)?;
    let token = hex::encode(rand::random::<[u8; 32]>());
    let hash = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ));
    let collector_toml = dir.join("collector.toml");
    let agent_toml = dir.join("agent.toml");
    let url = format!("http://127.0.0.1:{}", options.port);
    std::fs::write(
        &collector_toml,
        format!(
            "# Written by `tributary-agent quickstart`. See config/collector.toml for every key.\n[server]\nlisten = \"127.0.0.1:{port}\"\n# Reads need no token: this collector answers on loopback only.\nanonymous_read = true\n\n[storage]\npath = {db:?}\n\n[[agents]]\nid = \"quickstart\"\ntoken_sha256 = \"{hash}\"\n",
            port = options.port,
            db = dir.join("collector.db"),
        ),
    )?;
    std::fs::write(
        &agent_toml,
        format!(
            "# Written by `tributary-agent quickstart`. See config/agent.toml for every key.\n[agent]\nid = \"quickstart\"\ndata_dir = {data:?}\nlisten = \"\"\n\n[forward]\nurl = \"{url}\"\ntoken = \"{token}\"\nlinger = \"1s\"\n\n[[inputs.system]]\ninterval = \"10s\"\n",
            data = dir.join("agent"),
        ),
    )?;
    let collector = collector_program();
    let mut child = tokio::process::Command::new(&collector)
        .arg("--config")
        .arg(&collector_toml)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (build it with `cargo build --release`)",
                collector.display()
            )
        })?;
    wait_for_collector(&url, &mut child).await?;
    let config = Config::load(&agent_toml).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "\nTributary is running: a collector at {url} and an agent reading this machine every 10 s.\n\
         Configuration and data: {dir}\n\n\
         Query the live data (the first points arrive within a few seconds):\n  \
         curl '{url}/api/v1/query?name=cpu&field=usage_idle&tag.cpu=cpu-total'\n  \
         curl '{url}/api/v1/query?name=mem&field=used_percent&format=csv'\n  \
         curl '{url}/api/v1/agents'\n\n\
         Press Ctrl-C to stop both.\n",
        dir = dir.display()
    );
    let result = crate::run(config, None, shutdown).await;
    if let Some(pid) = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32))
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
    result
}

/// `tributary-collector` next to this program, else the one in PATH.
fn collector_program() -> PathBuf {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("tributary-collector")));
    match sibling {
        Some(path) if path.is_file() => path,
        _ => PathBuf::from("tributary-collector"),
    }
}

async fn wait_for_collector(url: &str, child: &mut tokio::process::Child) -> anyhow::Result<()> {
    crate::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()?;
    let health = format!("{url}/healthz");
    for _ in 0..100 {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the collector exited ({status}); is port {url} already in use?");
        }
        if client
            .get(&health)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the collector did not answer {health} within 10 s")
}

/// `buffer inspect`: prints what the buffer at `path` holds; exit 1 if SQLite finds damage.
pub fn buffer_inspect(path: &Path) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(path.exists(), "{} does not exist", path.display());
    let time = |ns: i64| {
        chrono::DateTime::from_timestamp_nanos(ns)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    println!("buffer     {}", path.display());
    let i = match crate::buffer::repair::inspect(path) {
        Ok(i) => i,
        Err(e) => {
            // Too damaged to read its figures: say so, with what SQLite's check finds.
            println!("read       failed: {e}");
            println!("integrity  DAMAGED (`tributary-agent buffer repair` salvages what reads)");
            for problem in crate::buffer::repair::integrity(path, false) {
                println!("  {problem}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    println!("epoch      {}", i.epoch.as_deref().unwrap_or("(none)"));
    println!(
        "points     {} in {} rows, {} bytes",
        i.points, i.rows, i.bytes
    );
    println!("last seq   {}", i.last_seq);
    println!(
        "dropped    {} (by the overflow policy or a salvage, since the epoch began)",
        i.dropped_total
    );
    for (label, end) in [("oldest", &i.oldest), ("newest", &i.newest)] {
        match end {
            Some((seq, ts, name)) => println!("{label}     seq {seq}, {} ({name})", time(*ts)),
            None => println!("{label}     -"),
        }
    }
    println!("quarantine {} records", i.quarantined);
    for (at, source, topic, reason) in &i.recent_quarantine {
        println!("  {} {source} {topic}: {reason}", time(*at));
    }
    if i.problems.is_empty() {
        println!("integrity  ok");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("integrity  DAMAGED (`tributary-agent buffer repair` salvages what reads)");
        for problem in &i.problems {
            println!("  {problem}");
        }
        Ok(ExitCode::from(1))
    }
}

/// `buffer repair`: checks the buffer at `path` and, if damaged (or `force`), salvages it.
pub fn buffer_repair(path: &Path, force: bool) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(path.exists(), "{} does not exist", path.display());
    let problems = crate::buffer::repair::integrity(path, true);
    if problems.is_empty() && !force {
        println!(
            "{}: integrity check ok; nothing to repair (--force salvages anyway)",
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &problems {
        println!("damage: {problem}");
    }
    let report = crate::buffer::repair::salvage(path).map_err(anyhow::Error::msg)?;
    println!("{}: {report}", path.display());
    Ok(ExitCode::SUCCESS)
}
