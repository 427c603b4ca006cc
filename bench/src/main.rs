//! `tributary-bench`: the benchmark scenarios whose figures are in BENCHMARKS.md.
//!
//! Build the release binaries first: `cargo build --release --workspace --bins`, then e.g.
//! `target/release/tributary-bench mqtt --messages 1000000`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod collector;
mod density;
mod footprint;
mod prom;
mod shared;

use clap::{Parser, Subcommand};
use tributary_bench::harness::pipelined;
use tributary_bench::harness::procstat::{cpu_seconds, peak_rss_kib, rss_kib, write_bytes};
use tributary_bench::harness::{
    AgentProcess, CollectorProcess, Mosquitto, MosquittoOptions, Publisher, Supervised,
    agent_config, agent_config_with, bin_dir, free_port, query_json, token_pair,
};
use tributary_wire::codec::encode_point;
use tributary_wire::{FieldValue, Point};

#[derive(Parser)]
#[command(about = "Tributary benchmark scenarios")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Publisher -> Mosquitto -> agent -> collector, QoS 1 end to end.
    Mqtt {
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        /// Mosquitto's max_inflight_messages (QoS 1 messages in flight to the agent).
        #[arg(long, default_value_t = 1000)]
        broker_inflight: u32,
        /// The publisher's own in-flight window.
        #[arg(long, default_value_t = 1000)]
        publisher_inflight: u16,
        /// Extra TOML for the agent (e.g. "[buffer]\nflush_interval = \"5ms\"").
        #[arg(long, default_value = "")]
        agent_extra: String,
        /// Extra keys for the agent's [forward] table (e.g. "compression_level = 1").
        #[arg(long, default_value = "")]
        forward_extra: String,
        /// Publish with rumqttc (one packet per syscall) instead of the pipelined generator.
        #[arg(long)]
        rumqttc_publisher: bool,
        /// The collector speaks HTTPS (a throw-away CA and certificate; the agent trusts the
        /// CA through forward.ca_file).
        #[arg(long)]
        tls: bool,
    },
    /// The agent's two halves measured apart: intake (a broker queue filled while the agent
    /// was stopped, drained into its buffer with no collector running), then forwarding (the
    /// collector starts and the buffer drains).
    AgentSplit {
        #[arg(long, default_value_t = 300_000)]
        messages: u64,
        #[arg(long, default_value_t = 1000)]
        broker_inflight: u32,
    },
    /// Publisher -> Mosquitto -> a subscriber that only acknowledges: what the broker alone
    /// can deliver on this machine, the ceiling of the mqtt scenario.
    BrokerCeiling {
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        #[arg(long, default_value_t = 1000)]
        broker_inflight: u32,
    },
    /// The same rows as the agent's buffer, inserted by a bare loop: the SQLite ceiling.
    SqliteCeiling {
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Rows per transaction.
        #[arg(long, default_value_t = 1000)]
        batch: u64,
        /// Rows per INSERT statement (multi-row VALUES).
        #[arg(long, default_value_t = 1)]
        rows_per_statement: u64,
    },
    /// Sizes and speeds of candidate wire encodings for a batch.
    Encoding {
        #[arg(long, default_value_t = 10_000)]
        points: usize,
    },
    /// Stripped sizes of the release binaries.
    Sizes,
    /// A file grows at full speed (a writer thread appends log lines) while the agent tails
    /// it into the collector: end-to-end lines/s, agent CPU s per million, peak RSS.
    Tail {
        #[arg(long, default_value_t = 1_000_000)]
        lines: u64,
        /// The collector speaks HTTPS, as for `mqtt --tls`.
        #[arg(long)]
        tls: bool,
    },
    /// Simulated agents post batches to a collector with cleaning rules and rollups on:
    /// points/s, CPU s per million, peak RSS, disk bytes per point; then query latencies for
    /// 24 h at a 1-minute step over one series and over all of them.
    Collector {
        #[arg(long, default_value_t = 100)]
        agents: usize,
        #[arg(long, default_value_t = 10)]
        series_per_agent: usize,
        #[arg(long, default_value_t = 24)]
        hours: i64,
        #[arg(long, default_value_t = 10)]
        interval_seconds: i64,
        #[arg(long, default_value_t = 2000)]
        batch_points: usize,
        /// Runs of each one-series query (the all-series query runs a twentieth as often).
        #[arg(long, default_value_t = 200)]
        queries: usize,
    },
    /// The Prometheus side against its peers with the same data: remote write ingest into the
    /// collector and VictoriaMetrics (samples/s, CPU s per million), then a ten-panel
    /// Grafana-like dashboard of query_range over the whole range at a 60 s step against the
    /// collector and Prometheus (p50, p99).
    Prom {
        #[arg(long, default_value_t = 100)]
        agents: usize,
        #[arg(long, default_value_t = 10)]
        series_per_agent: usize,
        #[arg(long, default_value_t = 24)]
        hours: i64,
        #[arg(long, default_value_t = 60)]
        interval_seconds: i64,
        /// Runs of the whole dashboard.
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// The same InfluxDB line protocol into the collector (cleaning and rollups on) and into
    /// VictoriaMetrics: points/s, CPU s per million, bytes on disk per point after a clean
    /// stop, peak RSS, and the collector's WAL at its largest.
    Density {
        #[arg(long, default_value_t = 100)]
        hosts: usize,
        #[arg(long, default_value_t = 10)]
        fields: usize,
        #[arg(long, default_value_t = 24)]
        hours: i64,
        #[arg(long, default_value_t = 10)]
        interval_seconds: i64,
        #[arg(long, default_value_t = 4)]
        clients: usize,
        #[arg(long, default_value_t = 5000)]
        lines_per_request: usize,
    },
    /// N collectors over one store: the `collector` scenario's agents spread over them (agent
    /// i posts to collector i mod N), on one PostgreSQL database (durable defaults) or, as the
    /// baseline, one collector on SQLite: points/s, CPU s per million of the collectors and of
    /// PostgreSQL, bytes per point, WAL per point, what backends waited on, and plain COPY of
    /// the same values as the ceiling.
    Shared {
        #[arg(long, value_enum, default_value_t = shared::Store::Postgres)]
        store: shared::Store,
        #[arg(long, default_value_t = 1)]
        collectors: usize,
        #[arg(long, default_value_t = 60)]
        agents: usize,
        #[arg(long, default_value_t = 10)]
        series_per_agent: usize,
        #[arg(long, default_value_t = 6)]
        hours: i64,
        #[arg(long, default_value_t = 10)]
        interval_seconds: i64,
        #[arg(long, default_value_t = 2000)]
        batch_points: usize,
        /// Skip the plain COPY ceiling.
        #[arg(long)]
        no_copy: bool,
    },
    /// Ten scheduled inputs (exec, system, http, sql) every 10 s for `seconds`: CPU % and RSS
    /// of an agent that is mostly waiting.
    Idle {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// The edge footprint: an agent with one connected MQTT input and one system input every
    /// 10 s, `seconds` after start: RSS (anonymous, file-backed, by mapping) and binary size.
    /// `TRIBUTARY_AGENT_BIN=path` measures another build of the agent (e.g. static musl).
    Footprint {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Mqtt {
            messages,
            broker_inflight,
            publisher_inflight,
            agent_extra,
            forward_extra,
            rumqttc_publisher,
            tls,
        } => {
            let agent = AgentTuning {
                extra: agent_extra,
                forward: forward_extra,
            };
            block_on(mqtt(
                messages,
                broker_inflight,
                publisher_inflight,
                &agent,
                rumqttc_publisher,
                tls,
            ))
        }
        Scenario::AgentSplit {
            messages,
            broker_inflight,
        } => block_on(agent_split(messages, broker_inflight)),
        Scenario::BrokerCeiling {
            messages,
            broker_inflight,
        } => block_on(broker_ceiling(messages, broker_inflight)),
        Scenario::SqliteCeiling {
            rows,
            batch,
            rows_per_statement,
        } => sqlite_ceiling(rows, batch, rows_per_statement),
        Scenario::Encoding { points } => encoding(points),
        Scenario::Sizes => sizes(),
        Scenario::Tail { lines, tls } => block_on(tail(lines, tls)),
        Scenario::Idle { seconds } => block_on(idle(seconds)),
        Scenario::Footprint { seconds } => block_on(footprint::run(seconds)),
        Scenario::Density {
            hosts,
            fields,
            hours,
            interval_seconds,
            clients,
            lines_per_request,
        } => block_on(density::run(density::Options {
            hosts,
            fields,
            hours,
            interval_seconds,
            clients,
            lines_per_request,
        })),
        Scenario::Prom {
            agents,
            series_per_agent,
            hours,
            interval_seconds,
            runs,
        } => block_on(prom::run(prom::Options {
            agents,
            series_per_agent,
            hours,
            interval_seconds,
            runs,
        })),
        Scenario::Collector {
            agents,
            series_per_agent,
            hours,
            interval_seconds,
            batch_points,
            queries,
        } => block_on(collector::run(collector::Options {
            agents,
            series_per_agent,
            hours,
            interval_seconds,
            batch_points,
            queries,
        })),
        Scenario::Shared {
            store,
            collectors,
            agents,
            series_per_agent,
            hours,
            interval_seconds,
            batch_points,
            no_copy,
        } => block_on(shared::run(shared::Options {
            store,
            collectors,
            agents,
            series_per_agent,
            hours,
            interval_seconds,
            batch_points,
            copy_ceiling: !no_copy,
        })),
    }
}

/// Runs a scenario on a multi-thread runtime.
fn block_on(scenario: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(scenario)
}

/// Starts the collector for agent `bench` (its token `token`), over HTTPS with `tls`; returns
/// it with the keys the agent's `[forward]` needs to trust it.
fn start_collector(
    dir: &Path,
    token: &str,
    tls: bool,
) -> anyhow::Result<(CollectorProcess, String)> {
    if !tls {
        let collector = CollectorProcess::start(&dir.join("collector"), &[("bench", token)])?;
        return Ok((collector, String::new()));
    }
    let certs = tributary_bench::harness::tls::make(&dir.join("pki"))?;
    let collector = CollectorProcess::start_custom(
        &dir.join("collector"),
        &[("bench", token)],
        &tributary_bench::harness::CollectorOptions {
            server_extra: format!(
                "tls_cert = {:?}\ntls_key = {:?}\n",
                certs.cert.display().to_string(),
                certs.key.display().to_string()
            ),
            https: true,
            ..tributary_bench::harness::CollectorOptions::default()
        },
    )?;
    Ok((
        collector,
        format!("ca_file = {:?}\n", certs.ca.display().to_string()),
    ))
}

/// Starts a collector and an agent whose inputs are `inputs`, with the default forwarding.
fn start_pair(
    dir: &Path,
    inputs: &str,
    tls: bool,
) -> anyhow::Result<(CollectorProcess, AgentProcess)> {
    let (token, _) = token_pair("bench");
    let (collector, forward) = start_collector(dir, &token, tls)?;
    let config = default_timing(&agent_config_with(
        "bench",
        &dir.join("agent/data"),
        &collector.url(),
        free_port(),
        inputs,
    ))
    .replace("[forward]\n", &format!("[forward]\n{forward}"));
    let agent = AgentProcess::start(&dir.join("agent"), &config, &[("TRIBUTARY_TOKEN", &token)])?;
    Ok((collector, agent))
}

async fn tail(lines: u64, tls: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = tempfile::tempdir()?;
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    let path = logs.join("app.log");
    std::fs::write(&path, "")?;
    let inputs = format!(
        "[[inputs.file]]\npaths = [\"{}\"]\nstart_at = \"beginning\"\n",
        path.display()
    );
    let (mut collector, agent) = start_pair(dir.path(), &inputs, tls)?;
    let agent_pid = agent.pid().expect("agent running");
    let collector_pid = collector.process().pid();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_kib(agent_pid).unwrap_or(0);
    let agent_cpu = cpu_seconds(agent_pid).unwrap_or(0.0);
    let collector_cpu = cpu_seconds(collector_pid).unwrap_or(0.0);
    let agent_written = write_bytes(agent_pid).unwrap_or(0);
    let started = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<Duration> {
        let started = Instant::now();
        let mut file = std::io::BufWriter::with_capacity(
            1 << 16,
            std::fs::OpenOptions::new().append(true).open(&path)?,
        );
        for id in 0..lines {
            writeln!(
                file,
                "2026-11-21T10:00:00.000Z INFO request id={id} path=/api/v1/items status=200 took_ms=3"
            )?;
        }
        file.flush()?;
        Ok(started.elapsed())
    });
    let stored = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let agents = query_json(&collector.url(), "/api/v1/agents").await?;
        let stored = agents["agents"][0]["points_received"].as_u64().unwrap_or(0);
        if stored >= lines || started.elapsed() > Duration::from_secs(600) {
            break stored;
        }
    };
    let elapsed = started.elapsed();
    let written = writer.join().expect("writer thread")?;
    let agent_cpu = cpu_seconds(agent_pid).unwrap_or(0.0) - agent_cpu;
    let collector_cpu = cpu_seconds(collector_pid).unwrap_or(0.0) - collector_cpu;
    let millions = lines as f64 / 1e6;
    let file_bytes = std::fs::metadata(logs.join("app.log"))?.len();
    println!(
        "tail: {lines} lines, {file_bytes} bytes, file written in {:.2} s",
        written.as_secs_f64()
    );
    println!(
        "  stored {stored} in {:.2} s: {:.0} lines/s end to end",
        elapsed.as_secs_f64(),
        stored as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  agent: {:.2} CPU s per million lines, peak RSS {:.1} MiB (idle before: {:.1} MiB)",
        agent_cpu / millions,
        peak_rss_kib(agent_pid).unwrap_or(0) as f64 / 1024.0,
        idle_rss as f64 / 1024.0
    );
    println!(
        "  collector: {:.2} CPU s per million lines",
        collector_cpu / millions
    );
    print_flash_wear(agent_pid, agent_written, file_bytes).await;
    Ok(())
}

async fn idle(seconds: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("gateway.db");
    let connection = rusqlite::Connection::open(&db)?;
    connection.execute_batch("CREATE TABLE readings (id INTEGER PRIMARY KEY, temp REAL); INSERT INTO readings (temp) VALUES (21.5);")?;
    drop(connection);
    let mut inputs = String::new();
    for i in 0..6 {
        inputs.push_str(&format!("[[inputs.exec]]\nname = \"meter{i}\"\ncommand = [\"/bin/echo\", \"{{\\\"v\\\": {i}}}\"]\ninterval = \"10s\"\n\n"));
    }
    inputs.push_str("[[inputs.system]]\ninterval = \"10s\"\n\n[[inputs.system]]\ninterval = \"10s\"\ncollect = [\"mem\"]\n\n");
    inputs.push_str(&format!("[[inputs.sql]]\npath = {db:?}\nquery = \"SELECT id, temp FROM readings WHERE id > :last ORDER BY id\"\ntracking_column = \"id\"\ninterval = \"10s\"\n\n"));
    inputs.push_str(
        "[[inputs.http]]\nurl = \"http://127.0.0.1:1/\"\ninterval = \"10s\"\ntimeout = \"1s\"\n",
    );
    let (_collector, agent) = start_pair(dir.path(), &inputs, false)?;
    let pid = agent.pid().expect("agent running");
    tokio::time::sleep(Duration::from_secs(12)).await;
    let cpu = cpu_seconds(pid).unwrap_or(0.0);
    let mut peak = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(rss_kib(pid).unwrap_or(0));
    }
    let cpu = cpu_seconds(pid).unwrap_or(0.0) - cpu;
    println!("idle: 10 inputs every 10 s for {seconds} s");
    println!(
        "  agent CPU {:.3} % of one core; RSS now {:.1} MiB, highest {:.1} MiB",
        cpu / seconds as f64 * 100.0,
        rss_kib(pid).unwrap_or(0) as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    Ok(())
}

fn message(id: u64) -> (String, Vec<u8>) {
    (
        format!("sensors/dev{}/reading", id % 16),
        format!(
            r#"{{"id": {id}, "value": {}, "status": "ok"}}"#,
            (id % 1000) as f64 * 0.25
        )
        .into_bytes(),
    )
}

/// `config` without the harness's short test linger and backoff: benchmarks run the agent
/// with its defaults.
fn default_timing(config: &str) -> String {
    config
        .replace("linger = \"20ms\"\n", "")
        .replace("backoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n", "")
}

/// Settings the agent runs the benchmark with, on top of the defaults.
struct AgentTuning {
    /// Appended to the configuration (whole tables).
    extra: String,
    /// Added to the `[forward]` table.
    forward: String,
}

async fn mqtt(
    messages: u64,
    broker_inflight: u32,
    publisher_inflight: u16,
    tuning: &AgentTuning,
    rumqttc_publisher: bool,
    tls: bool,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (token, _) = token_pair("bench");
    let broker = Mosquitto::start(
        &dir.path().join("broker"),
        &MosquittoOptions {
            max_inflight: broker_inflight,
            ..MosquittoOptions::default()
        },
    )?;
    let (collector, tls_forward) = start_collector(dir.path(), &token, tls)?;
    let config = default_timing(&agent_config(
        "bench",
        &dir.path().join("agent/data"),
        &collector.url(),
        &broker.url(),
        free_port(),
        "",
        &tuning.extra,
    ))
    .replace(
        "[forward]\n",
        &format!("[forward]\n{}\n{tls_forward}", tuning.forward),
    );
    let agent = AgentProcess::start(
        &dir.path().join("agent"),
        &config,
        &[("TRIBUTARY_TOKEN", &token)],
    )?;
    let agent_pid = agent.pid().expect("agent running");
    let mut collector = collector;
    let collector_pid = collector.process().pid();

    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rss = rss_kib(agent_pid).unwrap_or(0);
    let broker_pid = broker.pid().expect("broker running");
    let own_pid = std::process::id();
    let agent_cpu_start = cpu_seconds(agent_pid).unwrap_or(0.0);
    let collector_cpu_start = cpu_seconds(collector_pid).unwrap_or(0.0);
    let broker_cpu_start = cpu_seconds(broker_pid).unwrap_or(0.0);
    let own_cpu_start = cpu_seconds(own_pid).unwrap_or(0.0);
    let agent_written = write_bytes(agent_pid).unwrap_or(0);

    let started = Instant::now();
    let published = Arc::new(std::sync::Mutex::new(None));
    let publishing = {
        let published = Arc::clone(&published);
        let port = broker.port;
        tokio::spawn(async move {
            if rumqttc_publisher {
                let publisher =
                    Publisher::connect(port, "bench-publisher", publisher_inflight).await;
                for id in 0..messages {
                    let (topic, payload) = message(id);
                    publisher.publish(id, &topic, payload).await;
                }
                publisher
                    .wait_acked(messages as usize, Duration::from_secs(1800))
                    .await;
            } else {
                pipelined::publish_pipelined(
                    port,
                    "bench-publisher",
                    messages,
                    publisher_inflight,
                    message,
                )
                .await
                .expect("the pipelined publisher runs");
            }
            *published.lock().expect("lock") = Some(started.elapsed());
        })
    };
    let mut buffered_at = None;
    let mut last_report = Instant::now();
    let stored = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if buffered_at.is_none()
            && agent
                .metric("tributary_agent_points_buffered_total")
                .await
                .unwrap_or(0.0)
                >= messages as f64
        {
            buffered_at = Some(started.elapsed());
        }
        let agents = query_json(&collector.url(), "/api/v1/agents").await?;
        let stored = agents["agents"][0]["points_received"].as_u64().unwrap_or(0);
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "  {stored} stored after {:.1}s",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        if stored >= messages {
            break stored;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "gave up after 30 minutes at {stored}"
        );
    };
    let elapsed = started.elapsed();
    publishing.await?;
    let published_at = *published.lock().expect("lock");
    let agent_cpu = cpu_seconds(agent_pid).unwrap_or(0.0) - agent_cpu_start;
    let collector_cpu = cpu_seconds(collector_pid).unwrap_or(0.0) - collector_cpu_start;
    let broker_cpu = cpu_seconds(broker_pid).unwrap_or(0.0) - broker_cpu_start;
    let own_cpu = cpu_seconds(own_pid).unwrap_or(0.0) - own_cpu_start;
    let agent_peak = peak_rss_kib(agent_pid).unwrap_or(0);
    let collector_peak = peak_rss_kib(collector_pid).unwrap_or(0);
    let commits = agent
        .metric("tributary_agent_commits_total")
        .await
        .unwrap_or(0.0);
    let buffered = agent
        .metric("tributary_agent_points_buffered_total")
        .await
        .unwrap_or(0.0);
    let batches = agent
        .metric("tributary_agent_sends_total{outcome=\"ok\"}")
        .await
        .unwrap_or(0.0);
    let millions = stored as f64 / 1e6;

    let publisher_kind = if rumqttc_publisher {
        "rumqttc"
    } else {
        "pipelined"
    };
    println!(
        "## mqtt: {messages} QoS 1 messages, broker max_inflight_messages {broker_inflight}, {publisher_kind} publisher with {publisher_inflight} in flight"
    );
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| end-to-end events/s (first publish to last stored) | {:.0} |",
        stored as f64 / elapsed.as_secs_f64()
    );
    if let Some(buffered) = buffered_at {
        println!(
            "| agent intake events/s (first publish to all committed in the agent's buffer) | {:.0} |",
            messages as f64 / buffered.as_secs_f64()
        );
    }
    if let Some(published) = published_at {
        println!(
            "| publisher: all acknowledged by the broker after | {:.1} s |",
            published.as_secs_f64()
        );
    }
    println!("| end-to-end time | {:.1} s |", elapsed.as_secs_f64());
    println!(
        "| agent CPU seconds per million events | {:.2} |",
        agent_cpu / millions
    );
    println!("| agent peak RSS | {:.1} MiB |", agent_peak as f64 / 1024.0);
    println!(
        "| agent idle RSS (connected, before publishing) | {:.1} MiB |",
        idle_rss as f64 / 1024.0
    );
    println!(
        "| collector CPU seconds per million events | {:.2} |",
        collector_cpu / millions
    );
    println!(
        "| collector peak RSS | {:.1} MiB |",
        collector_peak as f64 / 1024.0
    );
    println!(
        "| Mosquitto CPU seconds per million events | {:.2} |",
        broker_cpu / millions
    );
    println!(
        "| publisher (and bench poller) CPU seconds per million events | {:.2} |",
        own_cpu / millions
    );
    println!(
        "| agent commits (fsyncs) | {commits:.0}, {:.0} points each on average |",
        buffered / commits.max(1.0)
    );
    println!(
        "| batches sent | {batches:.0}, {:.0} points each on average |",
        buffered / batches.max(1.0)
    );
    let payload: u64 = (0..messages).map(|id| message(id).1.len() as u64).sum();
    print_flash_wear(agent_pid, agent_written, payload).await;
    drop(agent);
    drop(broker);
    Ok(())
}

/// Flash wear: what the agent wrote to storage (its buffer and WAL) since `written_before`,
/// against the `payload` bytes it took in, read once the buffer has settled after the run
/// (sent rows deleted, WAL checkpointed).
async fn print_flash_wear(pid: u32, written_before: u64, payload: u64) {
    tokio::time::sleep(Duration::from_secs(5)).await;
    let written = write_bytes(pid).unwrap_or(0).saturating_sub(written_before);
    println!(
        "  flash wear: agent wrote {:.1} MB for {:.1} MB of payload: {:.2}x",
        written as f64 / 1e6,
        payload as f64 / 1e6,
        written as f64 / payload.max(1) as f64
    );
}

async fn broker_ceiling(messages: u64, broker_inflight: u32) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Mosquitto::start(
        &dir.path().join("broker"),
        &MosquittoOptions {
            max_inflight: broker_inflight,
            ..MosquittoOptions::default()
        },
    )?;
    let subscriber = tokio::spawn(pipelined::subscribe_and_discard(
        broker.port,
        "sensors/#",
        messages,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let broker_pid = broker.pid().expect("broker running");
    let broker_cpu_start = cpu_seconds(broker_pid).unwrap_or(0.0);
    let started = Instant::now();
    pipelined::publish_pipelined(broker.port, "bench-publisher", messages, 1000, message).await?;
    subscriber.await??;
    let elapsed = started.elapsed().as_secs_f64();
    let broker_cpu = cpu_seconds(broker_pid).unwrap_or(0.0) - broker_cpu_start;
    println!(
        "## broker ceiling: {messages} QoS 1 messages, Mosquitto max_inflight_messages {broker_inflight}, a subscriber that only acknowledges"
    );
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| events/s through the broker | {:.0} |",
        messages as f64 / elapsed
    );
    println!(
        "| Mosquitto CPU seconds per million events | {:.2} |",
        broker_cpu / (messages as f64 / 1e6)
    );
    Ok(())
}

/// Waits (up to ten minutes) until the agent's counter `series` reaches `target`.
async fn wait_for_metric(agent: &AgentProcess, series: &str, target: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    while agent.metric(series).await.unwrap_or(0.0) < target as f64 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "{series} did not reach {target}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn agent_split(messages: u64, broker_inflight: u32) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (token, _) = token_pair("bench");
    let broker = Mosquitto::start(
        &dir.path().join("broker"),
        &MosquittoOptions {
            max_inflight: broker_inflight,
            ..MosquittoOptions::default()
        },
    )?;
    // The collector's port is chosen now; nothing listens there until the second phase.
    let collector_dir = dir.path().join("collector");
    let collector_port = free_port();
    let config = agent_config(
        "bench",
        &dir.path().join("agent/data"),
        &format!("http://127.0.0.1:{collector_port}"),
        &broker.url(),
        free_port(),
        "",
        "",
    )
    .replace("linger = \"20ms\"\n", "")
    .replace("backoff_max = \"1s\"\n", "backoff_max = \"2s\"\n");
    // First start: the agent's session and subscription exist; then it stops and messages
    // queue at the broker.
    let arena = std::env::var("BENCH_ARENA").unwrap_or_default();
    let mut env = vec![("TRIBUTARY_TOKEN", token.as_str())];
    if !arena.is_empty() {
        env.push(("MALLOC_ARENA_MAX", arena.as_str()));
    }
    let mut agent = AgentProcess::start(&dir.path().join("agent"), &config, &env)?;
    agent.terminate(Duration::from_secs(10));
    pipelined::publish_pipelined(broker.port, "bench-publisher", messages, 1000, message).await?;

    agent.restart()?;
    let pid = agent.pid().expect("agent running");
    let cpu_start = cpu_seconds(pid).unwrap_or(0.0);
    let started = Instant::now();
    wait_for_metric(&agent, "tributary_agent_points_buffered_total", messages).await?;
    let intake_time = started.elapsed().as_secs_f64();
    let intake_cpu = cpu_seconds(pid).unwrap_or(0.0) - cpu_start;
    let commits = agent
        .metric("tributary_agent_commits_total")
        .await
        .unwrap_or(0.0);

    let collector =
        CollectorProcess::start_on(&collector_dir, collector_port, &[("bench", &token)])?;
    let cpu_start = cpu_seconds(pid).unwrap_or(0.0);
    let started = Instant::now();
    wait_for_metric(&agent, "tributary_agent_points_sent_total", messages).await?;
    let forward_time = started.elapsed().as_secs_f64();
    let forward_cpu = cpu_seconds(pid).unwrap_or(0.0) - cpu_start;
    let batches = agent
        .metric("tributary_agent_sends_total{outcome=\"ok\"}")
        .await
        .unwrap_or(0.0);
    let peak = peak_rss_kib(pid).unwrap_or(0);
    let millions = messages as f64 / 1e6;
    println!(
        "## agent split: {messages} QoS 1 messages queued at Mosquitto (max_inflight_messages {broker_inflight}), then forwarded"
    );
    println!();
    println!("| phase | events/s | agent CPU s per million | notes |");
    println!("|---|---|---|---|");
    println!(
        "| intake (broker -> buffer) | {:.0} | {:.2} | {commits:.0} commits, {:.0} points each |",
        messages as f64 / intake_time,
        intake_cpu / millions,
        messages as f64 / commits.max(1.0)
    );
    println!(
        "| forwarding (buffer -> collector) | {:.0} | {:.2} | {batches:.0} batches, {:.0} points each |",
        messages as f64 / forward_time,
        forward_cpu / millions,
        messages as f64 / batches.max(1.0)
    );
    println!("| agent peak RSS | | | {:.1} MiB |", peak as f64 / 1024.0);
    drop(collector);
    Ok(())
}

fn sqlite_ceiling(rows: u64, batch: u64, per_statement: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let conn = rusqlite::Connection::open(dir.path().join("ceiling.db"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE points (seq INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL)",
    )?;
    // The rows the agent stores for the mqtt scenario's messages.
    let bodies: Vec<Vec<u8>> = (0..1000u64)
        .map(|id| {
            let point = Point::new("reading", 1_700_000_000_000_000_000 + id as i64)
                .with_tag("device", format!("dev{}", id % 16))
                .with_field("id", FieldValue::I64(id as i64))
                .with_field("value", (id % 1000) as f64 * 0.25)
                .with_field("status", "ok");
            encode_point(&point)
        })
        .collect();
    let per_statement = per_statement.clamp(1, batch);
    let statement = |n: u64| {
        let values: Vec<String> = (1..=n).map(|i| format!("(?{i})")).collect();
        format!("INSERT INTO points (body) VALUES {}", values.join(", "))
    };
    let started = Instant::now();
    let mut inserted = 0u64;
    while inserted < rows {
        let tx = conn.unchecked_transaction()?;
        let in_this = batch.min(rows - inserted);
        let mut done = 0;
        while done < in_this {
            let n = per_statement.min(in_this - done);
            let mut insert = tx.prepare_cached(&statement(n))?;
            let params = (0..n).map(|i| &bodies[((inserted + i) % 1000) as usize]);
            insert.execute(rusqlite::params_from_iter(params))?;
            inserted += n;
            done += n;
        }
        tx.commit()?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "## sqlite ceiling: {rows} rows of {} bytes, {batch} per transaction, {per_statement} per INSERT, WAL, synchronous = FULL",
        bodies[0].len()
    );
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!("| rows/s | {:.0} |", rows as f64 / elapsed);
    println!(
        "| commits/s | {:.0} |",
        (rows as f64 / batch as f64) / elapsed
    );
    Ok(())
}

fn encoding(count: usize) -> anyhow::Result<()> {
    // Readings like a sensor's: a slowly varying temperature with noise at full float
    // precision, a counter, a status, timestamps about a second apart with jitter.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let points: Vec<Point> = (0..count as u64)
        .map(|id| {
            let jitter = (noise() * 2e7) as i64;
            Point::new(
                "reading",
                1_700_000_000_000_000_000 + id as i64 * 1_000_000_000 + jitter,
            )
            .with_tag("device", format!("dev{}", id % 16))
            .with_tag("site", "plant-1")
            .with_field("counter", FieldValue::I64(id as i64 * 7))
            .with_field(
                "temperature",
                21.0 + (id as f64 / 500.0).sin() * 3.0 + noise() * 0.1,
            )
            .with_field("status", if noise() < 0.99 { "ok" } else { "check" })
        })
        .collect();
    println!(
        "## wire encoding: a batch of {count} sensor-like points (2 tags; an integer, a noisy float and a string field)"
    );
    println!();
    println!(
        "| encoding | bytes/point | zstd-1 bytes/point | zstd-3 bytes/point | encode ns/point | decode ns/point |"
    );
    println!("|---|---|---|---|---|---|");
    type Encode = fn(&[Point]) -> Vec<u8>;
    type Decode = fn(&[u8]) -> Vec<Point>;
    let candidates: [(&str, Encode, Decode); 3] = [
        (
            "MessagePack (rmp-serde, structs as arrays)",
            |p| rmp_serde::to_vec(p).expect("encodes"),
            |b| rmp_serde::from_slice(b).expect("decodes"),
        ),
        (
            "CBOR (ciborium)",
            |p| {
                let mut out = Vec::new();
                ciborium::into_writer(p, &mut out).expect("encodes");
                out
            },
            |b| ciborium::from_reader(b).expect("decodes"),
        ),
        (
            "JSON (serde_json)",
            |p| serde_json::to_vec(p).expect("encodes"),
            |b| serde_json::from_slice(b).expect("decodes"),
        ),
    ];
    for (name, encode, decode) in candidates {
        let rounds = 5;
        let started = Instant::now();
        let mut body = Vec::new();
        for _ in 0..rounds {
            body = encode(&points);
        }
        let encode_ns = started.elapsed().as_nanos() as f64 / (rounds * count) as f64;
        let started = Instant::now();
        for _ in 0..rounds {
            let decoded = decode(&body);
            assert_eq!(decoded.len(), count);
        }
        let decode_ns = started.elapsed().as_nanos() as f64 / (rounds * count) as f64;
        let z1 = zstd::bulk::compress(&body, 1)?.len();
        let z3 = zstd::bulk::compress(&body, 3)?.len();
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {encode_ns:.0} | {decode_ns:.0} |",
            body.len() as f64 / count as f64,
            z1 as f64 / count as f64,
            z3 as f64 / count as f64
        );
    }
    Ok(())
}

fn sizes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    println!("| binary | release size | stripped |");
    println!("|---|---|---|");
    for name in ["tributary-agent", "tributary-collector"] {
        let source = bin_dir().join(name);
        let copy = dir.path().join(name);
        std::fs::copy(&source, &copy)?;
        let status = std::process::Command::new("strip").arg(&copy).status()?;
        anyhow::ensure!(status.success(), "strip failed");
        let size = |p: &Path| {
            std::fs::metadata(p).map(|m| {
                let bytes = m.len();
                format!("{bytes} B ({:.1} MiB)", bytes as f64 / (1024.0 * 1024.0))
            })
        };
        println!("| {name} | {} | {} |", size(&source)?, size(&copy)?);
    }
    idle_order_coverage(&bin_dir().join("tributary-agent"));
    Ok(())
}

/// How many of the functions `agent/idle-order/x86_64-unknown-linux-gnu.txt` lists the release
/// agent still has: symbol names carry a hash of the build, so a dependency upgrade or a
/// profile change leaves the list stale (`scripts/idle-order` regenerates it).
fn idle_order_coverage(agent: &Path) {
    let list = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../agent/idle-order/x86_64-unknown-linux-gnu.txt");
    let Ok(listed) = std::fs::read_to_string(&list) else {
        return;
    };
    let Ok(nm) = std::process::Command::new("nm").arg(agent).output() else {
        return;
    };
    let present: std::collections::HashSet<&str> = std::str::from_utf8(&nm.stdout)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().nth(2))
        .collect();
    let names: Vec<&str> = listed.lines().filter(|l| !l.is_empty()).collect();
    let found = names.iter().filter(|n| present.contains(*n)).count();
    println!(
        "idle order: {found} of {} listed functions are in the agent{}",
        names.len(),
        if found * 10 < names.len() * 9 {
            " (stale: run scripts/idle-order)"
        } else {
            ""
        }
    );
}
