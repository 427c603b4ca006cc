//! The fault matrix: each test puts the real programs through one fault and counts lost and
//! doubled readings against the oracle (every message the broker acknowledged must be stored
//! exactly once). RELIABILITY.md lists the rows, what each proves and its last figures.
//!
//! | row | fault | proves |
//! |---|---|---|
//! | 1 | the agent's disk fills (tmpfs), the agent is killed and restarted on it | it starts, keeps what it has, holds new data back (`block`), reports 503, and drains once the collector confirms: nothing lost, nothing doubled |
//! | 2 | the collector's disk fills (tmpfs) | it answers 503 and `/healthz` says why; agents keep their data; once there is room it commits again, exactly once |
//! | 3 | a partition that blackholes packets (netns + iptables) | requests time out instead of failing fast; the agent retries and drains after the heal, exactly once |
//! | 4 | a paused collector (SIGSTOP 20 s) with clock correction on | queueing is not taken for clock skew: no timestamp moves |
//! | 5 | an agent clock off by +1 day, then -1 hour (faketime) | the collector corrects it to within 1 s |
//! | 6 | kill -9 loops of the collector, then of the agent | exactly once through every kill |
//! | 7 | 8 concurrent decompression bombs in a memory cgroup of the documented bound | the collector stays within it, answers 413/429, and stores a real agent's data exactly once meanwhile |
//! | 8 | hostile bodies: bombs, deep nesting, lying lengths, slow bodies, invalid UTF-8 | each gets its 4xx; the collector serves on, a real agent's data exactly once |

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::time::Duration;

use tributary_bench::harness::{
    AgentProcess, CollectorOptions, CollectorProcess, Mosquitto, MosquittoOptions, Publisher,
    Supervised, agent_config, free_port, http, query_json, query_text, token_pair,
};

use crate::sys::{MemoryCgroup, Netns, Tmpfs, signal};
use crate::{Background, NAME, blocking, settle, start_agent, topic};

fn assert_exactly_once(verdict: &tributary_bench::harness::Verdict) {
    assert!(
        verdict.exactly_once(),
        "lost {} and doubled {} of {} acknowledged: missing {:?}, doubled {:?}",
        verdict.missing.len(),
        verdict.duplicated.len(),
        verdict.acked,
        &verdict.missing[..verdict.missing.len().min(20)],
        &verdict.duplicated[..verdict.duplicated.len().min(20)]
    );
}

/// A reading padded to about `pad` bytes that differ from message to message (hex of a
/// xorshift seeded by the id), so a small disk fills with few messages: neither the agent's
/// packed buffer rows nor the collector's chunks (which keep each distinct string once per
/// segment) can shrink it below half.
fn padded_unique(id: u64, pad: usize) -> Vec<u8> {
    let mut state = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut text = String::with_capacity(pad);
    while text.len() < pad {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        text.push_str(&format!("{state:016x}"));
    }
    text.truncate(pad);
    format!(
        r#"{{"id": {id}, "value": {}, "pad": "{text}"}}"#,
        id as f64 + 0.5
    )
    .into_bytes()
}

/// Publishes `range` with `payload`, as fast as the broker takes them; returns what the
/// broker acknowledged (all of it, asserted).
async fn publish_with(
    port: u16,
    range: std::ops::Range<u64>,
    payload: impl Fn(u64) -> Vec<u8>,
) -> HashSet<u64> {
    let publisher = Publisher::connect(port, "publisher", 100).await;
    for id in range.clone() {
        publisher.publish(id, &topic(id), payload(id)).await;
    }
    let acked = publisher.finish(Duration::from_secs(60)).await;
    assert_eq!(acked.len() as u64, range.end - range.start);
    acked
}

/// A collector metric (the first sample of `series`).
async fn collector_metric(url: &str, series: &str) -> Option<f64> {
    query_text(url, "/metrics")
        .await
        .ok()?
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Status and body of a GET.
async fn get(url: &str) -> (u16, String) {
    match http().get(url).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// Waits (bounded) until `url` answers `status`.
async fn wait_status(url: &str, status: u16, timeout: Duration) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let answer = get(url).await;
        if answer.0 == status || tokio::time::Instant::now() >= deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Row 1. Regression for D3 and D6 of the adversarial run: on a full disk the agent livelocked
/// (every delete failed, the same batch was sent again and again: 476,594 duplicates) and a
/// restart could exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_on_a_full_disk_restarts_holds_back_and_drains_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("agent-disk"), 16);
    let (token, _) = token_pair("edge-1");
    let broker =
        Mosquitto::start(&dir.path().join("broker"), &MosquittoOptions::default()).unwrap();
    let mut collector =
        CollectorProcess::start(&dir.path().join("collector"), &[("edge-1", &token)]).unwrap();
    blocking(|| collector.kill9());
    let metrics_port = free_port();
    let config = agent_config(
        "edge-1",
        &dir.path().join("agent-disk/data"),
        &collector.url(),
        &broker.url(),
        metrics_port,
        "",
        "[buffer]\nwhen_full = \"block\"\ndisk_reserve = \"4MiB\"\n",
    );
    let mut agent = AgentProcess::start(
        &dir.path().join("agent"),
        &config,
        &[("TRIBUTARY_TOKEN", &token)],
    )
    .unwrap();
    let health = format!("http://127.0.0.1:{metrics_port}/health");

    // 12,000 readings of 3 KB (1.5 KB packed): far more than 16 MiB holds.
    let acked = publish_with(broker.port, 0..12_000, |id| padded_unique(id, 3000)).await;
    let (status, body) = wait_status(&health, 503, Duration::from_secs(60)).await;
    assert_eq!(status, 503, "health says the buffer cannot commit: {body}");
    assert!(body.contains("disk is full"), "{body}");
    assert!(
        disk.free() < 1 << 20,
        "the disk is full ({} free)",
        disk.free()
    );

    // Killed on the full disk, it starts again (D6: it exited 1 with "disk is full").
    blocking(|| agent.restart()).expect("the agent starts on a full disk");
    let (status, _) = wait_status(&health, 503, Duration::from_secs(20)).await;
    assert_eq!(status, 503);

    blocking(|| collector.restart()).unwrap();
    let verdict = settle(
        &collector.url(),
        Some(&agent),
        &acked,
        Duration::from_secs(180),
    )
    .await;
    assert_exactly_once(&verdict);
    assert_eq!(verdict.stored_points, 12_000);
    // No livelock: nothing was sent twice while deletes failed.
    assert_eq!(
        collector_metric(
            &collector.url(),
            "tributary_collector_points_duplicate_total"
        )
        .await,
        Some(0.0)
    );
    let (status, body) = wait_status(&health, 200, Duration::from_secs(30)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        agent.metric("tributary_agent_dropped_total").await,
        Some(0.0)
    );
}

/// Row 2. D7: `/healthz` said 200 while every commit failed with "disk full".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_on_a_full_disk_answers_503_and_resumes_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("collector-disk"), 24);
    let filler = disk.fill("filler", 6 << 20);
    let (token, _) = token_pair("edge-1");
    let broker =
        Mosquitto::start(&dir.path().join("broker"), &MosquittoOptions::default()).unwrap();
    let collector = CollectorProcess::start(
        &dir.path().join("collector-disk/collector"),
        &[("edge-1", &token)],
    )
    .unwrap();
    let agent = start_agent(
        &dir.path().join("agent"),
        &dir.path().join("agent/data"),
        &collector.url(),
        &broker,
        "",
        &[("TRIBUTARY_TOKEN", &token)],
    );
    let healthz = format!("{}/healthz", collector.url());
    assert_eq!(get(&healthz).await.0, 200);

    let acked = publish_with(broker.port, 0..8_000, |id| padded_unique(id, 1500)).await;
    let (status, body) = wait_status(&healthz, 503, Duration::from_secs(60)).await;
    assert_eq!(status, 503, "healthz says storage cannot commit: {body}");
    assert!(body.contains("storage cannot commit"), "{body}");
    assert!(
        agent
            .metric("tributary_agent_buffer_points")
            .await
            .unwrap_or(0.0)
            > 0.0
    );

    std::fs::remove_file(filler).unwrap();
    let (status, body) = wait_status(&healthz, 200, Duration::from_secs(30)).await;
    assert_eq!(status, 200, "healthz recovers once there is room: {body}");
    let verdict = settle(
        &collector.url(),
        Some(&agent),
        &acked,
        Duration::from_secs(180),
    )
    .await;
    assert_exactly_once(&verdict);
    assert_eq!(verdict.stored_points, 8_000);
}

/// Row 3. A partition that drops packets: the agent's requests hang until its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_partition_heals_and_the_agent_drains_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::create();
    let (token, _) = token_pair("edge-1");
    let broker =
        Mosquitto::start(&dir.path().join("broker"), &MosquittoOptions::default()).unwrap();
    let collector = CollectorProcess::start_custom(
        &dir.path().join("collector"),
        &[("edge-1", &token)],
        &CollectorOptions {
            host: ns.ns_ip.into(),
            wrapper: ns.wrapper(),
            ..CollectorOptions::default()
        },
    )
    .unwrap();
    let mut agent = start_agent(
        &dir.path().join("agent"),
        &dir.path().join("agent/data"),
        &collector.url(),
        &broker,
        "",
        &[
            ("TRIBUTARY_TOKEN", &token),
            ("TRIBUTARY_AGENT__FORWARD__TIMEOUT", "2s"),
            ("TRIBUTARY_AGENT__FORWARD__CONNECT_TIMEOUT", "1s"),
        ],
    );

    let background = Background::start(broker.port, 0..3_000, 200).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ns.blackhole(collector.port);
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        blocking(|| agent.process().logged("cannot reach the collector")),
        "the agent saw the partition"
    );
    ns.heal();
    let published = background.finish(false).await;
    let verdict = settle(
        &collector.url(),
        Some(&agent),
        &published.acked,
        Duration::from_secs(120),
    )
    .await;
    assert_exactly_once(&verdict);
    assert_eq!(verdict.stored_points, 3_000);
}

/// Stored timestamps of the test readings, by id.
async fn stored_times(collector_url: &str) -> HashMap<u64, i64> {
    let answer = query_json(
        collector_url,
        &format!("/api/v1/query?name={NAME}&field=id"),
    )
    .await
    .unwrap();
    let mut times = HashMap::new();
    for series in answer["series"].as_array().into_iter().flatten() {
        for point in series["points"].as_array().into_iter().flatten() {
            let ts = tributary_wire::time::parse_rfc3339(point[0].as_str().unwrap()).unwrap();
            times.insert(point[1].as_u64().unwrap(), ts);
        }
    }
    times
}

/// Waits for the publisher's acks and the agent's drain, checks exactly once, and returns
/// the stored timestamps.
async fn settled_times(
    publisher: Publisher,
    collector: &CollectorProcess,
    agent: &AgentProcess,
) -> HashMap<u64, i64> {
    let acked = publisher.finish(Duration::from_secs(60)).await;
    let verdict = settle(
        &collector.url(),
        Some(agent),
        &acked,
        Duration::from_secs(120),
    )
    .await;
    assert_exactly_once(&verdict);
    stored_times(&collector.url()).await
}

fn now_ms() -> i64 {
    tributary_wire::time::now_ns() / 1_000_000
}

/// A collector correcting clock skew, for rows 4 and 5.
fn skew_correcting_collector(dir: &std::path::Path, token: &str) -> CollectorProcess {
    CollectorProcess::start_custom(
        &dir.join("collector"),
        &[("edge-1", token)],
        &CollectorOptions {
            extra: "[time]\ncorrect_clock_skew = true\nskew_threshold = \"5s\"\n".into(),
            ..CollectorOptions::default()
        },
    )
    .unwrap()
}

/// Row 4. Regression for D4: `sent_at` was stamped when a batch was encoded, so 20 s of a
/// stalled collector moved 50 correct points by +19.88 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_collector_moves_no_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let (token, _) = token_pair("edge-1");
    let broker =
        Mosquitto::start(&dir.path().join("broker"), &MosquittoOptions::default()).unwrap();
    let collector = skew_correcting_collector(dir.path(), &token);
    let agent = start_agent(
        &dir.path().join("agent"),
        &dir.path().join("agent/data"),
        &collector.url(),
        &broker,
        "",
        &[("TRIBUTARY_TOKEN", &token)],
    );
    let pid = collector.pid().unwrap();
    let publisher = Publisher::connect(broker.port, "publisher", 100).await;
    let mut sent: HashMap<u64, i64> = HashMap::new();
    let started = tokio::time::Instant::now();
    let mut paused = false;
    let mut resumed = false;
    for id in 0..600u64 {
        let elapsed = started.elapsed();
        if !paused && elapsed > Duration::from_secs(3) {
            signal(pid, "STOP");
            paused = true;
        }
        if paused && !resumed && elapsed > Duration::from_secs(23) {
            signal(pid, "CONT");
            resumed = true;
        }
        let ts = now_ms();
        sent.insert(id, ts);
        publisher
            .publish(
                id,
                &topic(id),
                format!(r#"{{"id": {id}, "ts": {ts}}}"#).into_bytes(),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(45)).await;
    }
    if !resumed {
        signal(pid, "CONT");
    }
    let stored = settled_times(publisher, &collector, &agent).await;
    let moved: Vec<(u64, i64)> = sent
        .iter()
        .filter_map(|(id, ms)| {
            let at = stored.get(id)?;
            (*at != ms * 1_000_000).then_some((*id, at - ms * 1_000_000))
        })
        .collect();
    assert!(
        moved.is_empty(),
        "timestamps moved (id, ns): {:?}",
        &moved[..moved.len().min(10)]
    );
    assert_eq!(
        collector_metric(
            &collector.url(),
            "tributary_collector_clock_corrected_batches_total"
        )
        .await,
        Some(0.0)
    );
}

/// Row 5. An agent whose clock is wrong by `offset` (faketime) has its readings corrected
/// to within 1 s of the true time.
async fn faked_clock_is_corrected(offset: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (token, _) = token_pair("edge-1");
    let broker =
        Mosquitto::start(&dir.path().join("broker"), &MosquittoOptions::default()).unwrap();
    let collector = skew_correcting_collector(dir.path(), &token);
    let library = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(
        std::path::Path::new(library).exists(),
        "libfaketime is missing (apt install faketime; scripts/test does)"
    );
    let agent = start_agent(
        &dir.path().join("agent"),
        &dir.path().join("agent/data"),
        &collector.url(),
        &broker,
        "",
        &[
            ("TRIBUTARY_TOKEN", &token),
            ("LD_PRELOAD", library),
            ("FAKETIME", offset),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let publisher = Publisher::connect(broker.port, "publisher", 100).await;
    let mut sent: HashMap<u64, i64> = HashMap::new();
    for id in 0..200u64 {
        sent.insert(id, tributary_wire::time::now_ns());
        publisher
            .publish(id, &topic(id), format!(r#"{{"id": {id}}}"#).into_bytes())
            .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stored = settled_times(publisher, &collector, &agent).await;
    let worst = sent
        .iter()
        .map(|(id, at)| (stored[id] - at).abs())
        .max()
        .unwrap();
    eprintln!(
        "clock {offset}: stored within {:.1} ms of when taken",
        worst as f64 / 1e6
    );
    assert!(
        worst < 1_000_000_000,
        "with the agent's clock at {offset}, a reading was stored {worst} ns from when it was taken"
    );
    assert!(
        collector_metric(
            &collector.url(),
            "tributary_collector_clock_corrected_batches_total"
        )
        .await
        .unwrap_or(0.0)
            > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_clock_a_day_ahead_is_corrected_to_within_a_second() {
    faked_clock_is_corrected("+1d").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_clock_an_hour_behind_is_corrected_to_within_a_second() {
    faked_clock_is_corrected("-1h").await;
}

/// Row 6. kill -9 of the collector, again and again, while readings flow; then of the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_loops_of_either_program_lose_and_double_nothing() {
    let mut s = crate::setup(&MosquittoOptions::default(), "", &[]);
    let background = Background::start(s.broker.port, 0..6_000, 300).await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        blocking(|| s.collector.restart()).unwrap();
    }
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        blocking(|| s.agent.restart()).unwrap();
    }
    let published = background.finish(false).await;
    let verdict = settle(
        &s.collector.url(),
        Some(&s.agent),
        &published.acked,
        Duration::from_secs(120),
    )
    .await;
    assert_exactly_once(&verdict);
    assert_eq!(verdict.stored_points, 6_000);
}

/// A MessagePack batch of `points` tiny points, zstd-compressed: the shape of D2's attack
/// (537 KB on the wire, 3.6 million points, 1.4 GB once decoded). Made by the agent's own
/// encoder from one encoded point repeated.
fn bomb(agent: &str, points: u64) -> Vec<u8> {
    // [name "a", tags {}, fields {"v": 1}, ts 0]: 9 bytes a point.
    let point: &[u8] = &[0x94, 0xa1, b'a', 0x80, 0x81, 0xa1, b'v', 0x01, 0x00];
    let header = tributary_wire::codec::BatchHeader {
        agent_id: agent.into(),
        epoch: "bomb-epoch".into(),
        first_seq: 1,
        last_seq: points,
        dropped: 0,
        sent_at: 0,
        status: Default::default(),
    };
    tributary_wire::codec::encode_stored_batch_compressed(
        &header,
        std::iter::repeat_n(point, points as usize),
        &[],
        tributary_wire::codec::Encoding::MsgPack,
        19,
    )
    .unwrap()
}

/// The collector's documented memory bound (README, "Memory") for the test's settings:
/// 160 MiB besides `ingest_memory`, and `ingest_memory` itself.
const BASELINE_MIB: u64 = 160;
const INGEST_MEMORY_MIB: u64 = 160;

/// Row 7. Regression for D2: four requests within every configured limit drove the collector
/// to 5.8 GiB; it was killed by the kernel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_bombs_stay_within_the_documented_memory_bound() {
    let dir = tempfile::tempdir().unwrap();
    let limit = (BASELINE_MIB + INGEST_MEMORY_MIB) << 20;
    let cgroup = MemoryCgroup::create(limit);
    let (token, _) = token_pair("edge-1");
    let (attacker, _) = token_pair("attacker");
    let broker =
        Mosquitto::start(&dir.path().join("broker"), &MosquittoOptions::default()).unwrap();
    let collector = CollectorProcess::start_with(
        &dir.path().join("collector"),
        &[("edge-1", &token), ("attacker", &attacker)],
        &format!(
            "max_body_size = \"16MiB\"\nmax_decompressed_size = \"64MiB\"\nmax_decoded_size = \"64MiB\"\ningest_memory = \"{INGEST_MEMORY_MIB}MiB\"\ningest_wait = \"2s\""
        ),
    )
    .unwrap();
    cgroup.add(collector.pid().unwrap());
    let agent = start_agent(
        &dir.path().join("agent"),
        &dir.path().join("agent/data"),
        &collector.url(),
        &broker,
        "",
        &[("TRIBUTARY_TOKEN", &token)],
    );
    let background = Background::start(broker.port, 0..2_000, 200).await;

    // 3.6 million 9-byte points: 31 MiB of MessagePack, a few hundred KB compressed.
    let body = bomb("attacker", 3_600_000);
    assert!(body.len() < 1 << 20, "{} bytes", body.len());
    let url = format!("{}/api/v1/batches", collector.url());
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for _round in 0..3 {
        let requests = (0..8).map(|_| {
            http()
                .post(&url)
                .bearer_auth(&attacker)
                .header("content-type", "application/vnd.tributary.batch.v1+msgpack")
                .header("content-encoding", "zstd")
                .body(body.clone())
                .send()
        });
        for response in futures_join_all(requests).await {
            let status = response.map(|r| r.status().as_u16()).unwrap_or(0);
            *statuses.entry(status).or_default() += 1;
        }
    }
    assert!(
        statuses.keys().all(|s| *s == 413 || *s == 429),
        "every bomb is refused with 413 or 429: {statuses:?}"
    );
    assert_eq!(get(&format!("{}/healthz", collector.url())).await.0, 200);
    let published = background.finish(false).await;
    let verdict = settle(
        &collector.url(),
        Some(&agent),
        &published.acked,
        Duration::from_secs(120),
    )
    .await;
    assert_exactly_once(&verdict);
    assert_eq!(cgroup.oom_kills(), 0, "the kernel killed nothing");
    let peak = cgroup.peak();
    eprintln!(
        "memory: peak {:.1} MiB in a cgroup of {} MiB; answers {statuses:?}",
        peak as f64 / (1 << 20) as f64,
        limit >> 20
    );
    assert!(peak < limit);
}

/// Awaits every future (the tests have no futures crate).
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.expect("the request task ends"));
    }
    out
}

/// Sends raw bytes to the collector and returns the status line of its answer ("" if none
/// came within `wait`).
fn raw_request(port: u16, request: &[u8], wait: Duration) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// Row 8. Hostile bodies, each answered with its 4xx while a real agent's data flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_get_their_4xx_and_the_collector_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let (token, _) = token_pair("edge-1");
    let (hostile, _) = token_pair("hostile");
    let broker =
        Mosquitto::start(&dir.path().join("broker"), &MosquittoOptions::default()).unwrap();
    let collector = CollectorProcess::start_with(
        &dir.path().join("collector"),
        &[("edge-1", &token), ("hostile", &hostile)],
        "max_body_size = \"1MiB\"\nmax_decompressed_size = \"8MiB\"\nmax_decoded_size = \"8MiB\"\nbody_timeout = \"2s\"",
    )
    .unwrap();
    let agent = start_agent(
        &dir.path().join("agent"),
        &dir.path().join("agent/data"),
        &collector.url(),
        &broker,
        "",
        &[("TRIBUTARY_TOKEN", &token)],
    );
    let background = Background::start(broker.port, 0..2_000, 200).await;
    let base = collector.url();
    let msgpack = "application/vnd.tributary.batch.v1+msgpack";
    let post = |path: &str, content_type: &str, encoding: Option<&str>, body: Vec<u8>| {
        let mut request = http()
            .post(format!("{base}{path}"))
            .bearer_auth(&hostile)
            .header("content-type", content_type)
            .body(body);
        if let Some(encoding) = encoding {
            request = request.header("content-encoding", encoding);
        }
        request.send()
    };
    let status =
        |r: reqwest::Result<reqwest::Response>| r.map(|r| r.status().as_u16()).unwrap_or(0);

    // A zstd bomb of zeros, and one of tiny points.
    let zeros = zstd::bulk::compress(&vec![0u8; 64 << 20], 19).unwrap();
    assert_eq!(
        status(post("/api/v1/batches", msgpack, Some("zstd"), zeros).await),
        413
    );
    assert_eq!(
        status(
            post(
                "/api/v1/batches",
                msgpack,
                Some("zstd"),
                bomb("hostile", 1_000_000)
            )
            .await
        ),
        413
    );
    // A gzip bomb through line protocol.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&b"m v=1\n".repeat(4 << 20)).unwrap();
    let gzip_bomb = gz.finish().unwrap();
    assert_eq!(
        status(post("/api/v2/write", "text/plain", Some("gzip"), gzip_bomb).await),
        413
    );
    // Deep nesting: JSON 100,000 levels deep, and a MessagePack field value of nested arrays.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(
        status(
            post(
                "/api/v1/batches",
                "application/json",
                None,
                deep.into_bytes()
            )
            .await
        ),
        400
    );
    let mut nested = Vec::new();
    for _ in 0..100_000 {
        rmp::encode::write_array_len(&mut nested, 1).unwrap();
    }
    assert_eq!(
        status(post("/api/v1/batches", msgpack, None, nested).await),
        400
    );
    // Invalid UTF-8 in line protocol: that line alone (D5).
    let answer = post(
        "/api/v2/write",
        "text/plain",
        None,
        b"utf_ok v=1i\nutf,k=\xff\xfe v=2i\nutf_ok v=3i\n".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(answer.status().as_u16(), 400);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["stored"], 2, "{body}");
    assert_eq!(body["rejected"][0]["line"], 2, "{body}");
    // Lying lengths: more declared than sent (the body never comes: 408 after body_timeout),
    // a declared length past the limit (413 before anything is read), less declared than sent
    // (the rest is not a request: 400 from the HTTP layer).
    let auth = format!("Authorization: Bearer {hostile}\r\n");
    let short = format!(
        "POST /api/v1/batches HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: {msgpack}\r\nContent-Length: 1000\r\n\r\n0123456789"
    );
    assert!(raw_request(collector.port, short.as_bytes(), Duration::from_secs(10)).contains("408"));
    let huge = format!(
        "POST /api/v1/batches HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: {msgpack}\r\nContent-Length: 999999999\r\n\r\n0123456789"
    );
    assert!(raw_request(collector.port, huge.as_bytes(), Duration::from_secs(10)).contains("413"));
    let long = format!(
        "POST /api/v1/batches HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: 4\r\n\r\n[1,2garbage that is not HTTP\r\n\r\n"
    );
    let first = raw_request(collector.port, long.as_bytes(), Duration::from_secs(5));
    assert!(first.contains("400"), "{first}");
    // Nobody without a token gets a body read at all.
    let anonymous = "POST /api/v1/batches HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n";
    assert!(
        raw_request(collector.port, anonymous.as_bytes(), Duration::from_secs(5)).contains("401")
    );

    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    let published = background.finish(false).await;
    let verdict = settle(
        &base,
        Some(&agent),
        &published.acked,
        Duration::from_secs(120),
    )
    .await;
    assert_exactly_once(&verdict);
    assert_eq!(verdict.stored_points, 2_000);
    // Every refusal is counted.
    let metrics = query_text(&base, "/metrics").await.unwrap();
    assert!(metrics.contains("kind=\"too_large\""), "{metrics}");
    assert!(metrics.contains("kind=\"timeout\""), "{metrics}");
}
