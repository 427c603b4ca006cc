//! The buffer's bound, and batches the collector refuses.

use std::collections::HashSet;
use std::time::Duration;

use tributary_bench::harness::{
    AgentProcess, CollectorProcess, MosquittoOptions, Oracle, Publisher, Supervised, agent_config,
    free_port, query_json,
};

use crate::{NAME, Setup, blocking, publish, publish_all, settle, setup, topic, wait_metric};

/// With `drop_oldest`, a full buffer drops its oldest points, counts them, and the count
/// reaches the collector: what is stored plus what was dropped is everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_counts_what_it_drops_and_the_collector_hears_of_it() {
    let mut s = setup(
        &MosquittoOptions::default(),
        "[buffer]\nmax_size = \"1MiB\"\n",
        &[],
    );
    blocking(|| s.collector.kill9());
    let acked = publish_all(s.broker.port, 0..25_000).await;
    wait_metric(
        &s.agent,
        "tributary_agent_points_buffered_total",
        25_000.0,
        Duration::from_secs(60),
    )
    .await;
    let dropped = s
        .agent
        .metric("tributary_agent_dropped_total")
        .await
        .unwrap_or(0.0);
    assert!(
        dropped > 5_000.0,
        "a 1 MiB buffer dropped only {dropped} of 25,000 points"
    );

    blocking(|| s.collector.restart()).unwrap();
    let verdict = settle(
        &s.collector.url(),
        Some(&s.agent),
        &acked,
        Duration::from_secs(60),
    )
    .await;
    assert!(verdict.duplicated.is_empty(), "{verdict:?}");
    assert_eq!(
        verdict.stored_points + dropped as usize,
        25_000,
        "stored + dropped = published"
    );
    // The oldest were dropped: every missing id is older than every stored one.
    let oracle = Oracle::read(&s.collector.url(), NAME).await.unwrap();
    let oldest_stored = oracle.counts.keys().min().copied().unwrap();
    assert!(verdict.missing.iter().all(|id| *id < oldest_stored));
    let agents = query_json(&s.collector.url(), "/api/v1/agents")
        .await
        .unwrap();
    assert_eq!(
        agents["agents"][0]["dropped"].as_f64(),
        Some(dropped),
        "{agents}"
    );
    assert_eq!(
        agents["agents"][0]["gaps"], 0,
        "the drop count explains the gap"
    );
}

/// With `block`, a full buffer stops acknowledging; the broker keeps the rest, and everything
/// arrives once the collector is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_stops_acknowledging_and_loses_nothing() {
    let mut s = setup(
        &MosquittoOptions::default(),
        "[buffer]\nmax_size = \"1MiB\"\nwhen_full = \"block\"\n",
        &[],
    );
    blocking(|| s.collector.kill9());
    let acked = publish_all(s.broker.port, 0..25_000).await;
    assert!(
        blocking(|| s
            .agent
            .process()
            .wait_for_log("buffer is full", Duration::from_secs(30))),
        "the agent says it is holding data back"
    );
    let buffered = s
        .agent
        .metric("tributary_agent_buffer_points")
        .await
        .expect("the agent reports its buffer depth");
    assert!(
        buffered > 0.0 && buffered < 25_000.0,
        "the buffer stayed bounded ({buffered} points)"
    );

    blocking(|| s.collector.restart()).unwrap();
    let verdict = settle(
        &s.collector.url(),
        Some(&s.agent),
        &acked,
        Duration::from_secs(120),
    )
    .await;
    assert!(verdict.exactly_once(), "{verdict:?}");
    assert_eq!(verdict.stored_points, 25_000);
    assert_eq!(
        s.agent.metric("tributary_agent_dropped_total").await,
        Some(0.0)
    );
}

/// A collector with a small body limit answers 413: the agent splits batches until they fit,
/// and a point too large to ever fit goes to the quarantine with the collector's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_split_on_413_and_an_oversized_point_is_quarantined() {
    let Setup {
        dir,
        broker,
        token,
        agent: first_agent,
        collector: _unused,
    } = setup(&MosquittoOptions::default(), "", &[]);
    drop(first_agent);
    let collector = CollectorProcess::start_with(
        &dir.path().join("small-collector"),
        &[("edge-1", &token)],
        "max_body_size = \"64KiB\"\nmax_decompressed_size = \"64KiB\"",
    )
    .unwrap();
    let config = agent_config(
        "edge-1",
        &dir.path().join("agent2/data"),
        &collector.url(),
        &broker.url(),
        free_port(),
        "",
        "",
    );
    let agent = AgentProcess::start(
        &dir.path().join("agent2"),
        &config,
        &[("TRIBUTARY_TOKEN", &token)],
    )
    .unwrap();

    // The point too large for any batch comes in the middle: the sequences after it must not
    // count its gap as lost (D7 of the adversarial run).
    let publisher = Publisher::connect(broker.port, "publisher", 100).await;
    publish(&publisher, 0..2_500, 0).await;
    let huge = format!(r#"{{"id": 99999, "blob": "{}"}}"#, "x".repeat(100_000));
    publisher
        .publish(99_999, &topic(99_999), huge.into_bytes())
        .await;
    publish(&publisher, 2_500..5_000, 0).await;
    let mut acked = publisher.finish(Duration::from_secs(30)).await;
    assert!(acked.remove(&99_999));
    assert_eq!(acked.len(), 5_000);

    let verdict = settle(
        &collector.url(),
        Some(&agent),
        &acked,
        Duration::from_secs(90),
    )
    .await;
    assert!(verdict.exactly_once(), "{verdict:?}");
    assert_eq!(verdict.stored_points, 5_000);
    // About 90 bytes a point against a 64 KiB limit: at least three halvings before a batch fits.
    let refused = agent
        .metric("tributary_agent_sends_total{outcome=\"refused\"}")
        .await
        .unwrap_or(0.0);
    assert!(
        refused >= 3.0,
        "only {refused} refusals: the batches were not split"
    );

    let db = rusqlite::Connection::open(collector.database()).unwrap();
    let (source, payload_stored, reason): (String, Vec<u8>, String) = db
        .query_row("SELECT source, payload, reason FROM quarantine", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(source, "forward");
    assert!(reason.contains("refused by the collector (413"), "{reason}");
    assert_eq!(
        payload_stored.len(),
        4096,
        "a 4 KiB copy of the point is kept"
    );
    assert!(payload_stored.starts_with(format!("{NAME},").as_bytes()));
    let ids: HashSet<u64> = (0..5_000).collect();
    assert_eq!(acked, ids);

    // The refused point's sequence is explained, and the backlog the agent last reported is
    // what is left (nothing), not the batch before the last (D7).
    let agents = query_json(&collector.url(), "/api/v1/agents")
        .await
        .unwrap();
    let edge = &agents["agents"][0];
    assert_eq!(edge["gaps"], 0, "{edge}");
    assert_eq!(edge["backlog_points"], 0, "{edge}");
    let mut collector = collector;
    assert!(!blocking(|| collector
        .process()
        .logged("sequences missing")));
}
