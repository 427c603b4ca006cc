//! End-to-end tests: a real Mosquitto per test, the real `tributary-agent` and
//! `tributary-collector` binaries as processes, real SQLite files and real HTTP on loopback.
//! Crashes are SIGKILL. Every wait is bounded.
//!
//! The harness builds the binaries it runs (`cargo build --workspace --bins`, once per test
//! process) unless `TRIBUTARY_BIN_DIR` names others.

mod access;
mod bad_input;
mod collector_api;
mod config_check;
mod console;
mod damaged;
mod export;
mod failover;
mod faults;
mod influx_v1;
mod observe;
mod overflow;
mod prometheus;
mod promql;
mod reload;
mod scheduled;
mod shared_store;
mod spine;
mod stuck;
mod sys;
mod systemd;
mod tail;
mod tls;
mod transport;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tributary_bench::harness::{
    AgentProcess, CollectorProcess, Mosquitto, MosquittoOptions, Oracle, Publisher, QoS, Verdict,
    agent_config, free_port, token_pair,
};

/// The point name the test messages get from the topic template.
pub const NAME: &str = "reading";

/// Message `id`: a JSON payload whose `value` can be checked against the id.
pub fn payload(id: u64) -> Vec<u8> {
    format!(r#"{{"id": {id}, "value": {}}}"#, id as f64 + 0.5).into_bytes()
}

/// Its topic, spreading messages over four devices.
pub fn topic(id: u64) -> String {
    format!("sensors/dev{}/{NAME}", id % 4)
}

/// Publishes ids `range` at about `per_second` messages a second (0: as fast as possible).
pub async fn publish(publisher: &Publisher, range: std::ops::Range<u64>, per_second: u64) {
    publish_until(publisher, range, per_second, &AtomicBool::new(false)).await;
}

/// Like [`publish`], stopping early once `stop` is set.
pub async fn publish_until(
    publisher: &Publisher,
    range: std::ops::Range<u64>,
    per_second: u64,
    stop: &AtomicBool,
) {
    let started = tokio::time::Instant::now();
    for id in range.clone() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        publisher.publish(id, &topic(id), payload(id)).await;
        if per_second > 0 && (id - range.start) % 50 == 49 {
            let due = started
                + Duration::from_secs_f64((id - range.start + 1) as f64 / per_second as f64);
            tokio::time::sleep_until(due).await;
        }
    }
}

/// Waits (bounded) until every acknowledged id is stored and the agent's buffer is empty, or
/// until nothing changes any more (the agent's buffer is empty and the stored count has been
/// still for three seconds), then reads the final state and judges it.
pub async fn settle(
    collector_url: &str,
    agent: Option<&AgentProcess>,
    acked: &HashSet<u64>,
    timeout: Duration,
) -> Verdict {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_points = usize::MAX;
    let mut still_since = tokio::time::Instant::now();
    while tokio::time::Instant::now() < deadline {
        let drained = match agent {
            Some(agent) => agent.metric("tributary_agent_buffer_points").await == Some(0.0),
            None => true,
        };
        if let Ok(oracle) = Oracle::read(collector_url, NAME).await {
            if drained && acked.iter().all(|id| oracle.counts.contains_key(id)) {
                break;
            }
            if oracle.points != last_points {
                last_points = oracle.points;
                still_since = tokio::time::Instant::now();
            } else if drained && still_since.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Oracle::read(collector_url, NAME)
        .await
        .expect("the collector answers queries")
        .verdict(acked)
}

/// Publishes ids `range` as fast as the broker takes them; asserts the broker acknowledged
/// every one, and returns their ids.
pub async fn publish_all(port: u16, range: std::ops::Range<u64>) -> HashSet<u64> {
    let publisher = Publisher::connect(port, "publisher", 100).await;
    publish(&publisher, range.clone(), 0).await;
    let acked = publisher.finish(Duration::from_secs(60)).await;
    assert_eq!(
        acked.len() as u64,
        range.end - range.start,
        "the broker acknowledged every message"
    );
    acked
}

/// Waits (bounded) until the agent's metric `series` reaches `target`.
pub async fn wait_metric(agent: &AgentProcess, series: &str, target: f64, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let value = agent.metric(series).await.unwrap_or(0.0);
        if value >= target {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} is {value}, not {target}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (bounded) until `needle` has been logged at least `times` times.
pub fn wait_until_logged(
    process: &mut tributary_bench::harness::Process,
    needle: &str,
    times: usize,
    timeout: Duration,
) -> bool {
    tributary_bench::harness::wait_until(timeout, || process.count_logged(needle) >= times)
}

/// Runs blocking harness work (process starts and stops) without stalling the runtime.
pub fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

/// A broker, a collector and an agent subscribed to `sensors/#`, in one temporary directory.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub broker: Mosquitto,
    pub collector: CollectorProcess,
    pub agent: AgentProcess,
    /// The agent's valid token.
    pub token: String,
}

/// Starts the three. `extra` is appended to the agent's configuration; `env` adds to (or, for
/// `TRIBUTARY_TOKEN`, replaces) the agent's environment.
pub fn setup(broker_options: &MosquittoOptions, extra: &str, env: &[(&str, &str)]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (token, _) = token_pair("edge-1");
    let broker = Mosquitto::start(&dir.path().join("broker"), broker_options).unwrap();
    let collector =
        CollectorProcess::start(&dir.path().join("collector"), &[("edge-1", &token)]).unwrap();
    let config = agent_config(
        "edge-1",
        &dir.path().join("agent/data"),
        &collector.url(),
        &broker.url(),
        free_port(),
        "",
        extra,
    );
    let mut all_env: Vec<(&str, &str)> = env.to_vec();
    if !env.iter().any(|(k, _)| *k == "TRIBUTARY_TOKEN") {
        all_env.push(("TRIBUTARY_TOKEN", &token));
    }
    let agent = AgentProcess::start(&dir.path().join("agent"), &config, &all_env).unwrap();
    Setup {
        dir,
        broker,
        collector,
        agent,
        token,
    }
}

/// Starts agent `edge-1` with the test MQTT input (`agent_config`) against `broker` and
/// `collector_url`: its files in `dir`, its buffer in `data_dir`, `extra` appended to its
/// configuration, and `env` (the token among it).
pub fn start_agent(
    dir: &std::path::Path,
    data_dir: &std::path::Path,
    collector_url: &str,
    broker: &Mosquitto,
    extra: &str,
    env: &[(&str, &str)],
) -> AgentProcess {
    let config = agent_config(
        "edge-1",
        data_dir,
        collector_url,
        &broker.url(),
        free_port(),
        "",
        extra,
    );
    AgentProcess::start(dir, &config, env).unwrap()
}

/// A publisher sending a range of ids in the background.
pub struct Background {
    publisher: Arc<Publisher>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Background {
    /// Connects to the broker and starts publishing `range` at `per_second`, with QoS 2: these
    /// tests stop the broker under the publisher, and a QoS 1 publisher would resend messages
    /// whose PUBACK was lost, which the broker forwards again as new ones (see the publisher's
    /// module docs). The agent's subscription stays QoS 1.
    pub async fn start(port: u16, range: std::ops::Range<u64>, per_second: u64) -> Background {
        let publisher =
            Arc::new(Publisher::connect_qos(port, "publisher", 100, QoS::ExactlyOnce).await);
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (publisher, stop) = (Arc::clone(&publisher), Arc::clone(&stop));
            tokio::spawn(async move { publish_until(&publisher, range, per_second, &stop).await })
        };
        Background {
            publisher,
            stop,
            task,
        }
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Lets the range finish (or stops it early), then waits for acks in flight.
    pub async fn finish(self, stop_early: bool) -> Published {
        if stop_early {
            self.stop.store(true, Ordering::Relaxed);
        }
        self.task.await.expect("the publishing task ends");
        let publisher = Arc::try_unwrap(self.publisher)
            .unwrap_or_else(|_| panic!("the publishing task is gone"));
        assert!(
            !publisher.session_lost(),
            "the broker kept the publisher's session"
        );
        let connections = publisher.connections();
        let acked = publisher.finish(Duration::from_secs(30)).await;
        Published { acked, connections }
    }
}

/// What a background publisher achieved.
pub struct Published {
    /// Ids the broker acknowledged.
    pub acked: HashSet<u64>,
    /// Times it connected (more than once if the broker went away).
    pub connections: u64,
}
