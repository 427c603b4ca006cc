//! `forward.urls`: an agent with two collectors moves to the second when the first refuses
//! connections, returns to the first after `failback_after`, and moves again when the first is
//! blackholed inside a network namespace (requests hang until their timeout). Each collector
//! stores what it received exactly once, and together they hold every acknowledged message.
//! (A batch whose answer was lost on the way back from the first may also reach the second:
//! with a store per collector, failover is at-least-once across collectors; the README says
//! so.) Needs root for the namespace, like the fault matrix.

use std::collections::HashSet;
use std::time::Duration;

use tributary_bench::harness::{
    AgentProcess, CollectorOptions, CollectorProcess, Mosquitto, MosquittoOptions, Oracle,
    Supervised, agent_config, free_port, token_pair,
};

use crate::sys::Netns;
use crate::{NAME, blocking, publish_all};

/// Waits (bounded) until the agent's buffer is empty.
async fn drained(agent: &AgentProcess, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while agent.metric("tributary_agent_buffer_points").await != Some(0.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent's buffer drained"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn active(agent: &AgentProcess, url: &str) -> Option<f64> {
    agent
        .metric(&format!(
            "tributary_agent_collector_active{{url=\"{url}\"}}"
        ))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_fails_over_to_the_second_collector_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::create();
    let (token, _) = token_pair("edge-1");
    let broker = blocking(|| {
        Mosquitto::start(&dir.path().join("broker"), &MosquittoOptions::default()).unwrap()
    });
    let mut first = blocking(|| {
        CollectorProcess::start_custom(
            &dir.path().join("c1"),
            &[("edge-1", &token)],
            &CollectorOptions {
                host: ns.ns_ip.into(),
                wrapper: ns.wrapper(),
                ..CollectorOptions::default()
            },
        )
        .unwrap()
    });
    let second = blocking(|| {
        CollectorProcess::start(&dir.path().join("c2"), &[("edge-1", &token)]).unwrap()
    });
    let (url1, url2) = (first.url(), second.url());
    let config = agent_config(
        "edge-1",
        &dir.path().join("agent/data"),
        &url1,
        &broker.url(),
        free_port(),
        "",
        "",
    )
    .replace(
        &format!("url = \"{url1}\""),
        &format!("urls = [\"{url1}\", \"{url2}\"]\nfailback_after = \"4s\"\ntimeout = \"2s\"\nconnect_timeout = \"1s\""),
    );
    assert!(config.contains("urls = ["), "{config}");
    let mut agent = blocking(|| {
        AgentProcess::start(
            &dir.path().join("agent"),
            &config,
            &[("TRIBUTARY_TOKEN", &token)],
        )
        .unwrap()
    });
    let mut acked = HashSet::new();

    // Both up: the first takes everything.
    acked.extend(publish_all(broker.port, 0..300).await);
    drained(&agent, Duration::from_secs(60)).await;
    assert_eq!(active(&agent, &url1).await, Some(1.0));
    assert_eq!(active(&agent, &url2).await, Some(0.0));

    // The first refuses connections: the second takes over.
    blocking(|| first.kill9());
    acked.extend(publish_all(broker.port, 300..600).await);
    drained(&agent, Duration::from_secs(60)).await;
    assert_eq!(active(&agent, &url2).await, Some(1.0));
    assert!(
        agent.process().logged("failing over to the next collector"),
        "the move is logged"
    );

    // The first is back: after failback_after the agent returns to it.
    blocking(|| first.restart()).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    acked.extend(publish_all(broker.port, 600..900).await);
    drained(&agent, Duration::from_secs(60)).await;
    assert_eq!(active(&agent, &url1).await, Some(1.0), "back on the first");
    assert!(agent.process().logged("returning to the first collector"));

    // The first is blackholed (requests hang): the timeout moves the agent on.
    ns.blackhole(first.port);
    acked.extend(publish_all(broker.port, 900..1_200).await);
    drained(&agent, Duration::from_secs(90)).await;
    assert_eq!(active(&agent, &url2).await, Some(1.0));
    ns.heal();

    // Each collector stored what it got once; together they hold everything.
    let one = Oracle::read(&url1, NAME).await.unwrap();
    let two = Oracle::read(&url2, NAME).await.unwrap();
    for (name, oracle) in [("first", &one), ("second", &two)] {
        let doubled: Vec<_> = oracle.counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            doubled.is_empty(),
            "the {name} collector stored twice: {doubled:?}"
        );
    }
    let missing: Vec<_> = acked
        .iter()
        .filter(|id| !one.counts.contains_key(id) && !two.counts.contains_key(id))
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert!(
        one.points >= 600,
        "the first stored its phases: {}",
        one.points
    );
    assert!(
        two.points >= 600,
        "the second stored its phases: {}",
        two.points
    );
    let failovers = agent.metric("tributary_agent_failovers_total").await;
    assert!(failovers.is_some_and(|n| n >= 3.0), "{failovers:?}");
}
