//! A buffer file with flipped bytes: `buffer inspect` reports it, the agent starts anyway, moves
//! it aside, salvages what reads, and what it salvaged arrives once, with the loss counted as
//! dropped (an explained gap at the collector). `buffer repair` does the same by hand.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tributary_bench::harness::{MosquittoOptions, Oracle, Supervised, bin_dir};

use crate::{NAME, blocking, publish_all, setup, wait_metric};

/// Overwrites 3,000 bytes at each of `offsets` with 0xA5.
fn damage(path: &Path, offsets: &[u64]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    for offset in offsets {
        file.seek(SeekFrom::Start(*offset)).unwrap();
        file.write_all(&[0xA5; 3000]).unwrap();
    }
    file.sync_all().unwrap();
}

fn buffer(action: &str, path: &Path) -> std::process::Output {
    Command::new(bin_dir().join("tributary-agent"))
        .args(["buffer", action, "--path"])
        .arg(path)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_buffer_is_salvaged_at_start_and_what_survives_arrives_once() {
    let mut s = setup(&MosquittoOptions::default(), "", &[]);
    s.collector.kill9();
    let acked = publish_all(s.broker.port, 0..20_000).await;
    wait_metric(
        &s.agent,
        "tributary_agent_buffer_points",
        20_000.0,
        Duration::from_secs(60),
    )
    .await;
    // A clean stop checkpoints the WAL into the file, so the damage hits the points.
    let status = blocking(|| s.agent.terminate(Duration::from_secs(20)));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    let file = s.agent.dir.join("data").join("buffer.db");
    let size = std::fs::metadata(&file).unwrap().len();
    // Five spots, so at least one lands on pages holding points whatever the layout (with
    // two, a run under load once hit only pages without points, and nothing was lost).
    damage(
        &file,
        &[size / 4, size / 3, size / 2, size * 2 / 3, size * 3 / 4],
    );

    let inspected = buffer("inspect", &file);
    let text = String::from_utf8_lossy(&inspected.stdout);
    assert_eq!(inspected.status.code(), Some(1), "{text}");
    assert!(text.contains("integrity  DAMAGED"), "{text}");

    blocking(|| s.agent.restart()).unwrap();
    let logs = s.agent.process().logs().join("\n");
    assert!(
        logs.contains("the buffer database was damaged; it was moved aside and salvaged"),
        "{logs}"
    );
    let salvaged = s
        .agent
        .metric("tributary_agent_buffer_salvaged_points_total")
        .await
        .unwrap();
    assert!(
        salvaged > 1_000.0 && salvaged < 20_000.0,
        "some points salvaged, some lost: {salvaged}"
    );
    let aside: Vec<_> = std::fs::read_dir(s.agent.dir.join("data"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .collect();
    assert!(!aside.is_empty(), "the damaged file is kept aside");

    // The agent keeps working: new messages are taken, and everything reaches the collector.
    let later = publish_all(s.broker.port, 20_000..20_500).await;
    blocking(|| s.collector.restart()).unwrap();
    wait_metric(
        &s.agent,
        "tributary_agent_points_sent_total",
        salvaged + 500.0,
        Duration::from_secs(60),
    )
    .await;
    let oracle = Oracle::read(&s.collector.url(), NAME).await.unwrap();
    let all: HashSet<u64> = acked.union(&later).copied().collect();
    let verdict = oracle.verdict(&all);
    assert!(verdict.duplicated.is_empty(), "{verdict:?}");
    assert_eq!(verdict.stored_points as f64, salvaged + 500.0);
    assert!(
        later.iter().all(|id| oracle.counts.contains_key(id)),
        "what came after the salvage arrived"
    );
    // The loss is explained to the collector (counted as dropped), not an unexplained gap.
    let agents = tributary_bench::harness::query_json(&s.collector.url(), "/api/v1/agents")
        .await
        .unwrap();
    assert_eq!(agents["agents"][0]["gaps"], 0, "{agents}");
    // Every reading the salvage could not read is counted as dropped: no more, no less.
    let lost = acked
        .iter()
        .filter(|id| !oracle.counts.contains_key(id))
        .count();
    assert!(lost > 0, "the damage cost some readings");
    assert_eq!(agents["agents"][0]["dropped"], lost as u64, "{agents}");
}

#[test]
fn buffer_repair_salvages_a_damaged_file_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nid = \"e\"\ndata_dir = \"{}\"\nlisten = \"\"\n[forward]\nurl = \"http://127.0.0.1:9\"\ntoken = \"x\"\n\n[[inputs.exec]]\ncommand = [\"sh\", \"-c\", \"seq 1 3000 | sed 's/.*/m value=&i/'\"]\nformat = \"influx\"\ninterval = \"1s\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut agent = tributary_bench::harness::Process::spawn("tributary-agent", {
        let mut c = Command::new(bin_dir().join("tributary-agent"));
        c.arg("--config").arg(&config);
        c
    })
    .unwrap();
    let file = dir.path().join("data").join("buffer.db");
    // Bounded: a few runs of the input.
    for _ in 0..100 {
        let out = buffer("inspect", &file);
        if String::from_utf8_lossy(&out.stdout).contains("points     9000") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        agent
            .terminate(Duration::from_secs(20))
            .and_then(|s| s.code()),
        Some(0)
    );
    let size = std::fs::metadata(&file).unwrap().len();
    // A copy with its header destroyed does not even read: inspect still says why.
    let headless = dir.path().join("headless.db");
    std::fs::copy(&file, &headless).unwrap();
    damage(&headless, &[0]);
    let inspected = buffer("inspect", &headless);
    let text = String::from_utf8_lossy(&inspected.stdout);
    assert_eq!(inspected.status.code(), Some(1), "{text}");
    assert!(text.contains("integrity  DAMAGED"), "{text}");

    damage(&file, &[size / 2]);
    let inspected = buffer("inspect", &file);
    assert_eq!(inspected.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&inspected.stdout).contains("integrity  DAMAGED"));

    let repaired = buffer("repair", &file);
    let text = String::from_utf8_lossy(&repaired.stdout);
    assert!(repaired.status.success(), "{text}");
    assert!(
        text.contains("damage:") && text.contains("points salvaged"),
        "{text}"
    );
    let inspected = buffer("inspect", &file);
    let text = String::from_utf8_lossy(&inspected.stdout);
    assert!(
        inspected.status.success(),
        "the fresh buffer is sound: {text}"
    );
    assert!(text.contains("integrity  ok"), "{text}");
    // A sound file is left alone.
    let again = buffer("repair", &file);
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to repair"));
}
