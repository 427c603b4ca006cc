//! The spine: MQTT -> agent buffer -> collector, exactly once, through crashes and outages.

use std::time::Duration;

use rand::RngExt;
use tributary_bench::harness::{MosquittoOptions, Supervised, Verdict, query_json};

use crate::{Background, NAME, blocking, publish_all, settle, setup, wait_metric};

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
    let acked = publish_all(s.broker.port, 0..10_000).await;

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
    let series = answer["series"].as_array().unwrap();
    let mut values: Vec<f64> = series
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
    assert_eq!(series.len(), 4);
    assert!(series.iter().all(|s| s["tags"]["agent"] == "edge-1"
        && s["tags"]["device"].as_str().unwrap().starts_with("dev")));
}

/// Publishes at a steady rate while the agent is SIGKILLed and restarted `kills` times at
/// random moments; returns the oracle's verdict.
async fn kill_scenario(env: &[(&str, &str)], kills: usize, flush_interval: &str) -> Verdict {
    let broker = MosquittoOptions {
        max_inflight: 1000,
        ..MosquittoOptions::default()
    };
    // The group commit's interval is the window between receipt and commit; with manual acks
    // that window is harmless.
    let mut s = setup(
        &broker,
        &format!("[buffer]\nflush_interval = \"{flush_interval}\"\n"),
        env,
    );
    let background = Background::start(s.broker.port, 0..1_000_000, 2_000).await;
    let mut rng = rand::rng();
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
        blocking(|| s.agent.kill9());
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        blocking(|| s.agent.restart()).unwrap();
    }
    let published = background.finish(true).await;
    assert!(
        published.acked.len() > 5_000,
        "only {} messages were acknowledged",
        published.acked.len()
    );
    settle(
        &s.collector.url(),
        Some(&s.agent),
        &published.acked,
        Duration::from_secs(90),
    )
    .await
}

/// Test 2: the agent is SIGKILLed and restarted at random moments while messages flow;
/// every message the broker acknowledged is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_at_random_moments_loses_and_doubles_nothing() {
    let verdict = kill_scenario(&[], 12, "20ms").await;
    assert_exactly_once(&verdict);
}

/// Test 5, the canary: with acknowledgements sent before the commit, the same scenario must
/// lose data, and the oracle must say so. If this passes, the oracle can see loss. The commit
/// waits a second here (2,000 messages a second arrive, fewer than `flush_points`), so every
/// kill after the agent has connected lands with up to a second of acknowledged, uncommitted
/// messages: with 20 ms, as in test 2, twelve kills once all missed that window on a loaded
/// machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_acking_before_commit_loses_data_and_the_oracle_sees_it() {
    let verdict = kill_scenario(&[("TRIBUTARY_TEST_UNSAFE_AUTO_ACK", "1")], 12, "1s").await;
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

/// The duplicate canary, beside the loss canary: an agent that sends confirmed points again
/// under a new epoch makes the collector store them twice, and the oracle must say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_resending_under_a_new_epoch_doubles_data_and_the_oracle_sees_it() {
    let s = setup(
        &MosquittoOptions::default(),
        "",
        &[("TRIBUTARY_TEST_UNSAFE_RESEND_NEW_EPOCH", "1")],
    );
    let acked = publish_all(s.broker.port, 0..500).await;
    let verdict = settle(
        &s.collector.url(),
        Some(&s.agent),
        &acked,
        Duration::from_secs(60),
    )
    .await;
    eprintln!(
        "duplicate canary: {} of {} acknowledged messages doubled",
        verdict.duplicated.len(),
        verdict.acked
    );
    assert!(verdict.missing.is_empty(), "{verdict:?}");
    assert!(
        !verdict.duplicated.is_empty(),
        "resending under a new epoch doubled nothing: the oracle cannot be trusted ({verdict:?})"
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
    let acked = publish_all(s.broker.port, 0..100).await;
    wait_metric(
        &s.agent,
        "tributary_agent_points_buffered_total",
        100.0,
        Duration::from_secs(20),
    )
    .await;
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
    let background = Background::start(s.broker.port, 0..13_000, 500).await;
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

    let published = background.finish(false).await;
    assert_eq!(published.acked.len(), 13_000);
    let verdict = settle(
        &s.collector.url(),
        Some(&s.agent),
        &published.acked,
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
    let background = Background::start(s.broker.port, 0..6_000, 1_000).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let acked_before = background.publisher().acked_count();
    blocking(|| s.broker.restart()).unwrap();
    let published = background.finish(false).await;
    assert!(published.connections >= 2, "the publisher reconnected");
    assert!(
        published.acked.len() > acked_before + 1_000,
        "messages after the restart were acknowledged"
    );

    let verdict = settle(
        &s.collector.url(),
        Some(&s.agent),
        &published.acked,
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
    let background = Background::start(s.broker.port, 0..3_000, 2_000).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let status = blocking(|| s.agent.terminate(Duration::from_secs(20)));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the agent exits 0 on SIGTERM"
    );
    assert!(s.agent.process().logged("final forward attempt"));
    let published = background.finish(false).await;
    blocking(|| s.agent.restart()).unwrap();
    assert_eq!(published.acked.len(), 3_000);
    let verdict = settle(
        &s.collector.url(),
        Some(&s.agent),
        &published.acked,
        Duration::from_secs(60),
    )
    .await;
    assert_exactly_once(&verdict);
}

/// A broker restarted without persistence has forgotten the agent's session: the agent gets a
/// CONNACK without a session, subscribes again, and what is published afterwards arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_forgot_the_session_gets_the_subscription_again() {
    let mut s = setup(&MosquittoOptions::default(), "", &[]);
    blocking(|| s.broker.restart()).unwrap();
    assert!(
        blocking(|| {
            let agent = s.agent.process();
            crate::wait_until_logged(agent, "subscribed", 2, Duration::from_secs(30))
        }),
        "the agent subscribed again"
    );
    assert_eq!(
        s.agent.process().count_logged("session_present=false"),
        2,
        "both connections found no session"
    );
    let acked = publish_all(s.broker.port, 0..500).await;
    let verdict = settle(
        &s.collector.url(),
        Some(&s.agent),
        &acked,
        Duration::from_secs(30),
    )
    .await;
    assert_exactly_once(&verdict);
    assert_eq!(verdict.stored_points, 500);
}
