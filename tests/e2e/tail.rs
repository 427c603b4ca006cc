//! The file input, end to end: real files written, renamed and truncated while the real agent
//! tails them, SIGKILLed and restarted; the collector must hold every line exactly once.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::RngExt;
use tributary_bench::harness::{
    AgentProcess, CollectorProcess, Supervised, agent_config_with, free_port, token_pair,
};

use crate::{NAME, blocking, settle};

/// A collector and an agent tailing `<dir>/logs/<glob>` as JSON lines named `reading`.
fn start(dir: &Path, glob: &str, start_at: &str) -> (CollectorProcess, AgentProcess, PathBuf) {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let (token, _) = token_pair("edge-1");
    let collector = CollectorProcess::start(&dir.join("collector"), &[("edge-1", &token)]).unwrap();
    let inputs = format!(
        "[[inputs.file]]\npaths = [\"{}/{glob}\"]\nformat = \"json\"\nname = \"{NAME}\"\nstart_at = \"{start_at}\"\npoll_interval = \"20ms\"\nscan_interval = \"200ms\"\n",
        logs.display()
    );
    let config = agent_config_with(
        "edge-1",
        &dir.join("agent/data"),
        &collector.url(),
        free_port(),
        &inputs,
    );
    let agent =
        AgentProcess::start(&dir.join("agent"), &config, &[("TRIBUTARY_TOKEN", &token)]).unwrap();
    (collector, agent, logs)
}

fn line(id: u64) -> String {
    format!("{{\"id\": {id}, \"value\": {}}}\n", id as f64 + 0.5)
}

/// Appends numbered lines to `logs/app.log`, sometimes in two writes (a partial line first),
/// and rotates it by rename every `rotate_every` lines (to a name the glob does not match).
fn writer(
    logs: &Path,
    total: u64,
    per_tick: u64,
    rotate_every: u64,
    written: &AtomicU64,
    stop: &AtomicBool,
) {
    let path = logs.join("app.log");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let mut rng = rand::rng();
    let mut rotations = 0;
    let mut id = 0;
    while id < total && !stop.load(Ordering::Relaxed) {
        for _ in 0..per_tick.min(total - id) {
            let text = line(id);
            if rng.random_range(0..10) == 0 {
                let (head, rest) = text.split_at(text.len() / 2);
                file.write_all(head.as_bytes()).unwrap();
                file.flush().unwrap();
                std::thread::sleep(Duration::from_millis(2));
                file.write_all(rest.as_bytes()).unwrap();
            } else {
                file.write_all(text.as_bytes()).unwrap();
            }
            id += 1;
            if id % rotate_every == 0 {
                rotations += 1;
                std::fs::rename(&path, logs.join(format!("app.log.{rotations}"))).unwrap();
                file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .unwrap();
            }
        }
        written.store(id, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(10));
    }
    written.store(id, Ordering::Relaxed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailing_survives_kill9_and_rotation_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (collector, mut agent, logs) = start(dir.path(), "app.log", "beginning");
    let total = 20_000;
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let handle = {
        let (written, stop) = (Arc::clone(&written), Arc::clone(&stop));
        std::thread::spawn(move || writer(&logs, total, 30, 3_000, &written, &stop))
    };
    // Five kills at random moments while the file grows and rotates.
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..5 {
        let pause = rand::rng().random_range(400..1_200);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        blocking(|| agent.restart()).unwrap();
        assert!(Instant::now() < deadline);
    }
    let outcome = blocking(|| handle.join());
    stop.store(true, Ordering::Relaxed);
    outcome.unwrap();
    assert_eq!(written.load(Ordering::Relaxed), total);

    let all: HashSet<u64> = (0..total).collect();
    let verdict = settle(
        &collector.url(),
        Some(&agent),
        &all,
        Duration::from_secs(60),
    )
    .await;
    assert!(
        verdict.exactly_once(),
        "{:?} missing, {:?} duplicated",
        &verdict.missing[..verdict.missing.len().min(20)],
        &verdict.duplicated[..verdict.duplicated.len().min(20)]
    );
    assert_eq!(verdict.stored_points, total as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailing_follows_truncation_and_new_files_and_starts_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    // Present before the first run: with start_at = "end" these lines are not sent.
    let old: String = (1_000_000..1_000_010).map(line).collect();
    std::fs::write(logs.join("app.log"), old).unwrap();
    let (collector, agent, logs) = start(dir.path(), "*.log", "end");

    let append = |path: &Path, ids: std::ops::Range<u64>| {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .unwrap();
        let text: String = ids.map(line).collect();
        file.write_all(text.as_bytes()).unwrap();
    };
    let app = logs.join("app.log");
    append(&app, 0..100);
    let first: HashSet<u64> = (0..100).collect();
    let verdict = settle(
        &collector.url(),
        Some(&agent),
        &first,
        Duration::from_secs(30),
    )
    .await;
    assert!(
        verdict.exactly_once() && verdict.stored_points == 100,
        "{verdict:?}"
    );

    // copytruncate: the file is emptied in place and written again from the start.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&app)
        .unwrap()
        .set_len(0)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    append(&app, 100..150);
    // A file that appears later is read from its beginning.
    append(&logs.join("other.log"), 150..180);
    let all: HashSet<u64> = (0..180).collect();
    let verdict = settle(
        &collector.url(),
        Some(&agent),
        &all,
        Duration::from_secs(30),
    )
    .await;
    assert!(verdict.exactly_once(), "{verdict:?}");
    assert_eq!(verdict.stored_points, 180, "the old lines must not be sent");
    assert!(agent.metric("tributary_agent_file_truncations_total").await >= Some(1.0));
}
