//! Self-observation: the agent's own figures travel as `tributary_agent*` points, so the
//! collector holds every device's health as series, and `/api/v1/agents` shows the newest.

use std::time::Duration;

use tributary_bench::harness::{MosquittoOptions, query_json};

use crate::{publish_all, settle, setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_figures_arrive_as_points() {
    let s = setup(
        &MosquittoOptions::default(),
        "",
        &[("TRIBUTARY_AGENT__AGENT__SELF_METRICS", "1s")],
    );
    let acked = publish_all(s.broker.port, 0..200).await;
    let verdict = settle(
        &s.collector.url(),
        Some(&s.agent),
        &acked,
        Duration::from_secs(60),
    )
    .await;
    assert!(verdict.exactly_once(), "{verdict:?}");

    // Bounded: samples come every second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let received = loop {
        let answer = query_json(
            &s.collector.url(),
            "/api/v1/query?name=tributary_agent_input&field=received_total",
        )
        .await
        .unwrap();
        let series = &answer["series"][0];
        let last = series["points"]
            .as_array()
            .and_then(|p| p.last())
            .and_then(|p| p[1].as_f64())
            .unwrap_or(0.0);
        if last >= 200.0 || tokio::time::Instant::now() > deadline {
            assert_eq!(series["tags"]["input"], "inputs.mqtt[0]", "{answer}");
            assert_eq!(series["tags"]["agent"], "edge-1", "{answer}");
            break last;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // Exactly the 200 published: a receipt counted twice would show.
    assert_eq!(received, 200.0, "the input's receipts");
    let sent = query_json(
        &s.collector.url(),
        "/api/v1/query?name=tributary_agent&field=points_sent_total",
    )
    .await
    .unwrap();
    let last = sent["series"][0]["points"]
        .as_array()
        .and_then(|p| p.last())
        .and_then(|p| p[1].as_f64())
        .unwrap_or(0.0);
    // The 200 readings and the agent's own figures (which travel as points too).
    assert!(
        last >= 200.0,
        "points sent as the agent reported them: {sent}"
    );
    let connected = query_json(
        &s.collector.url(),
        "/api/v1/query?name=tributary_agent_input&field=mqtt_connected",
    )
    .await
    .unwrap();
    assert_eq!(connected["series"][0]["points"][0][1], true, "{connected}");
}
