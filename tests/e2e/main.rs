//! End-to-end tests: a real Mosquitto per test, the real `tributary-agent` and
//! `tributary-collector` binaries as processes, real SQLite files and real HTTP on loopback.
//! Crashes are SIGKILL. Every wait is bounded.
//!
//! The binaries must be built first (`cargo build --workspace --bins`); the README's test
//! command does that.

mod bad_input;
mod config_check;
mod spine;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tributary_bench::harness::{AgentProcess, Oracle, Publisher, Verdict};

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

/// Runs blocking harness work (process starts and stops) without stalling the runtime.
pub fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}
