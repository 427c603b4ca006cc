//! The spine: MQTT -> agent buffer -> collector, exactly once, through crashes and outages.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::RngExt;
use tributary_bench::harness::{
    AgentProcess, CollectorProcess, Mosquitto, MosquittoOptions, Publisher, Verdict, agent_config,
    free_port, query_json,
};

use crate::{NAME, blocking, publish, publish_until, settle};

const TOKEN_ENV: &str = "TRIBUTARY_TOKEN";

struct Setup {
    _dir: tempfile::TempDir,
    broker: Mosquitto,
    collector: CollectorProcess,
    agent: AgentProcess,
}

/// A broker, a collector and an agent subscribed to `sensors/#`.
fn setup(broker_options: &MosquittoOptions, extra: &str, env: &[(&str, &str)]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (token, _) = tributary_bench::harness::token_pair("edge-1");
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
    let mut all_env = vec![(TOKEN_ENV, token.as_str())];
    all_env.extend_from_slice(env);
    let agent = AgentProcess::start(&dir.path().join("agent"), &config, &all_env).unwrap();
    Setup {
        _dir: dir,
        broker,
        collector,
        agent,
    }
}

fn assert_exactly_once(verdict: &Verdict) {
    assert!(
        verdict.exactly_once(),
        "missing {} of {} acknowledged (first: {:?}), duplicated {} (first: {:?})",
        verdict.missing.len(),
        verdict.acked,
        &verdict.missing[..verdict.missing.len().min(10)],
        verdict.duplicated.len(),
        &verdict.duplicated[..verdict.duplicated.len().min(10)]
    );
}

/// Test 1: 10,000 QoS 1 messages become exactly 10,000 stored points with their values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_are_stored_exactly_once_with_their_values() {
    let s = setup(&MosquittoOptions::default(), "", &[]);
    let publisher = Publisher::connect(s.broker.port, "publisher", 100).await;
    publish(&publisher, 0..10_000, 0).await;
    let acked = publisher.finish(Duration::from_secs(60)).await;
    assert_eq!(acked.len(), 10_000, "the broker acknowledged every message");

    let verdict = settle(
        &s.collector.url(),
        Some(&s.agent),
        &acked,
        Duration::from_secs(90),
    )
    .await;
    assert_exactly_once(&verdict);
    assert_eq!(verdict.stored_points, 10_000);

    // The published values, not just the ids, arrived.
    let answer = query_json(
        &s.collector.url(),
        &format!("/api/v1/query?name={NAME}&field=value"),
    )
    .await
    .unwrap();
    let mut values: Vec<f64> = answer["series"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| {
            s["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p[1].as_f64().unwrap())
        })
        .collect();
    values.sort_by(f64::total_cmp);
    let expected: Vec<f64> = (0..10_000).map(|id| id as f64 + 0.5).collect();
    assert_eq!(values, expected);
    // Four devices from the topic template, plus the agent tag from the token.
    let series = answer["series"].as_array().unwrap();
    assert_eq!(series.len(), 4);
    assert!(series.iter().all(|s| s["tags"]["agent"] == "edge-1"
        && s["tags"]["device"].as_str().unwrap().starts_with("dev")));
}

/// Publishes at a steady rate while the agent is SIGKILLed and restarted `kills` times at
/// random moments; returns the oracle's verdict.
async fn kill_scenario(env: &[(&str, &str)], kills: usize) -> Verdict {
    let broker = MosquittoOptions {
        max_inflight: 1000,
        ..MosquittoOptions::default()
    };
    // A 20 ms group commit makes the window between receipt and commit wide enough that a
    // kill inside it is certain; with manual acks that window is harmless.
    let mut s = setup(&broker, "[buffer]\nflush_interval = \"20ms\"\n", env);
    let publisher = Arc::new(Publisher::connect(s.broker.port, "publisher", 200).await);
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = {
        let (publisher, stop) = (Arc::clone(&publisher), Arc::clone(&stop));
        tokio::spawn(async move { publish_until(&publisher, 0..1_000_000, 2_000, &stop).await })
    };
    let mut rng = rand::rng();
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
        blocking(|| s.agent.kill9());
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        blocking(|| s.agent.restart()).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    publishing.await.unwrap();
    let publisher =
        Arc::try_unwrap(publisher).unwrap_or_else(|_| panic!("the publishing task is gone"));
    let acked = publisher.finish(Duration::from_secs(30)).await;
    assert!(
        acked.len() > 5_000,
        "only {} messages were acknowledged",
        acked.len()
    );
    settle(
        &s.collector.url(),
        Some(&s.agent),
        &acked,
        Duration::from_secs(90),
    )
    .await
}

/// Test 2: the agent is SIGKILLed and restarted at random moments while messages flow;
/// every message the broker acknowledged is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_at_random_moments_loses_and_doubles_nothing() {
    let verdict = kill_scenario(&[], 12).await;
    assert_exactly_once(&verdict);
}

/// Test 5, the canary: with acknowledgements sent before the commit, the same scenario must
/// lose data, and the oracle must say so. If this passes, the oracle can see loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_acking_before_commit_loses_data_and_the_oracle_sees_it() {
    let verdict = kill_scenario(&[("TRIBUTARY_TEST_UNSAFE_AUTO_ACK", "1")], 12).await;
    eprintln!(
        "canary: {} of {} acknowledged messages lost, {} duplicated",
        verdict.missing.len(),
        verdict.acked,
        verdict.duplicated.len()
    );
    assert!(
        !verdict.missing.is_empty(),
        "acking before the commit lost nothing across 12 kills: the oracle cannot be trusted ({verdict:?})"
    );
}

/// A crash between the commit and the PUBACK: the broker redelivers messages the buffer
/// already holds; they are recognised and stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_of_committed_but_unacknowledged_messages_is_stored_once() {
    let mut s = setup(
        &MosquittoOptions::default(),
        "",
        &[("TRIBUTARY_TEST_WITHHOLD_ACKS", "1")],
    );
    // Exactly the broker's in-flight window: all 100 are delivered, committed, never acked.
    let publisher = Publisher::connect(s.broker.port, "publisher", 100).await;
    publish(&publisher, 0..100, 0).await;
    let acked = publisher.finish(Duration::from_secs(20)).await;
    assert_eq!(acked.len(), 100);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while s
        .agent
        .metric("tributary_agent_points_buffered_total")
        .await
        != Some(100.0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent did not commit the messages"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    blocking(|| s.agent.kill9());
    s.agent.remove_env("TRIBUTARY_TEST_WITHHOLD_ACKS");
    blocking(|| s.agent.restart()).unwrap();

    let verdict = settle(
        &s.collector.url(),
        Some(&s.agent),
        &acked,
        Duration::from_secs(30),
    )
    .await;
    assert_exactly_once(&verdict);
    assert_eq!(verdict.stored_points, 100);
    let redeliveries = s.agent.metric("tributary_agent_redeliveries_total").await;
    assert_eq!(
        redeliveries,
        Some(100.0),
        "every redelivered message was recognised"
    );
}

/// Test 3: the collector is SIGKILLed mid-stream and stays down 20 s; the agent buffers and
/// drains when it returns; nothing is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down_for_twenty_seconds_the_agent_buffers_and_drains() {
    let mut s = setup(&MosquittoOptions::default(), "", &[]);
    let publisher = Arc::new(Publisher::connect(s.broker.port, "publisher", 100).await);
    let publishing = {
        let publisher = Arc::clone(&publisher);
        tokio::spawn(async move { publish(&publisher, 0..13_000, 500).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    blocking(|| s.collector.kill9());
    tokio::time::sleep(Duration::from_secs(20)).await;
    let buffered = s
        .agent
        .metric("tributary_agent_buffer_points")
        .await
        .unwrap_or(0.0);
    assert!(
        buffered > 5_000.0,
        "the agent kept {buffered} points while the collector was down"
    );
    let retries = s
        .agent
        .metric("tributary_agent_sends_total{outcome=\"retry\"}")
        .await
        .unwrap_or(0.0);
    assert!(retries >= 5.0, "the agent retried {retries} times");
    blocking(|| s.collector.restart()).unwrap();

    publishing.await.unwrap();
    let publisher =
        Arc::try_unwrap(publisher).unwrap_or_else(|_| panic!("the publishing task is gone"));
    let acked = publisher.finish(Duration::from_secs(30)).await;
    assert_eq!(acked.len(), 13_000);
    let verdict = settle(
        &s.collector.url(),
        Some(&s.agent),
        &acked,
        Duration::from_secs(90),
    )
    .await;
    assert_exactly_once(&verdict);
}

/// Test 4: Mosquitto, with persistence, restarts while the agent runs; the agent reconnects and
/// resumes, and every acknowledged message arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_the_agent_reconnects_and_resumes() {
    let options = MosquittoOptions {
        persistence: true,
        ..MosquittoOptions::default()
    };
    let mut s = setup(&options, "", &[]);
    let publisher = Arc::new(Publisher::connect(s.broker.port, "publisher", 100).await);
    let publishing = {
        let publisher = Arc::clone(&publisher);
        tokio::spawn(async move { publish(&publisher, 0..6_000, 1_000).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let acked_before = publisher.acked_count();
    blocking(|| s.broker.restart()).unwrap();
    publishing.await.unwrap();
    let publisher =
        Arc::try_unwrap(publisher).unwrap_or_else(|_| panic!("the publishing task is gone"));
    assert!(
        !publisher.session_lost(),
        "the broker kept the publisher's session"
    );
    assert!(publisher.connections() >= 2, "the publisher reconnected");
    let acked = publisher.finish(Duration::from_secs(30)).await;
    assert!(
        acked.len() > acked_before + 1_000,
        "messages after the restart were acknowledged"
    );

    let verdict = settle(
        &s.collector.url(),
        Some(&s.agent),
        &acked,
        Duration::from_secs(60),
    )
    .await;
    assert_exactly_once(&verdict);
    assert!(
        s.agent.process().count_logged("connected to MQTT broker") >= 2,
        "the agent reconnected"
    );
}

/// SIGTERM: the agent stops intake, commits what it holds, makes a last forward attempt and
/// exits 0; nothing acknowledged is lost across the stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_forwards_and_exits_zero() {
    let mut s = setup(&MosquittoOptions::default(), "", &[]);
    let publisher = Arc::new(Publisher::connect(s.broker.port, "publisher", 100).await);
    let publishing = {
        let publisher = Arc::clone(&publisher);
        tokio::spawn(async move { publish(&publisher, 0..3_000, 2_000).await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let status = blocking(|| s.agent.terminate(Duration::from_secs(20)));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the agent exits 0 on SIGTERM"
    );
    assert!(s.agent.process().logged("final forward attempt"));
    publishing.await.unwrap();
    blocking(|| s.agent.restart()).unwrap();
    let publisher =
        Arc::try_unwrap(publisher).unwrap_or_else(|_| panic!("the publishing task is gone"));
    let acked: HashSet<u64> = publisher.finish(Duration::from_secs(30)).await;
    assert_eq!(acked.len(), 3_000);
    let verdict = settle(
        &s.collector.url(),
        Some(&s.agent),
        &acked,
        Duration::from_secs(60),
    )
    .await;
    assert_exactly_once(&verdict);
}
