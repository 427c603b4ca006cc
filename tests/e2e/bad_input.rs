//! Bad input gets a clear error, and nothing is lost.

use std::time::Duration;

use tributary_bench::harness::{
    CollectorProcess, MosquittoOptions, Publisher, Supervised, http, query_json, query_text,
    token_pair,
};
use tributary_wire::codec::{self, Encoding};
use tributary_wire::{AgentStatus, Batch, Point};

use crate::{NAME, Setup, blocking, payload, publish_all, settle, setup, topic, wait_metric};

/// Non-JSON on a JSON topic is quarantined with its reason and counted, at the agent and at the
/// collector, while the good messages around it are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_json_is_quarantined_and_counted_while_its_neighbours_are_stored() {
    let Setup {
        dir: _dir,
        broker,
        collector,
        agent,
        ..
    } = setup(&MosquittoOptions::default(), "", &[]);

    let publisher = Publisher::connect(broker.port, "publisher", 10).await;
    publisher.publish(0, &topic(0), payload(0)).await;
    publisher
        .publish(1, &topic(1), b"{\"id\": 1, oops".to_vec())
        .await;
    publisher.publish(2, &topic(2), payload(2)).await;
    let acked = publisher.finish(Duration::from_secs(10)).await;
    assert_eq!(acked.len(), 3);

    let good = [0, 2].into_iter().collect();
    let verdict = settle(
        &collector.url(),
        Some(&agent),
        &good,
        Duration::from_secs(30),
    )
    .await;
    assert!(verdict.exactly_once(), "{verdict:?}");
    assert_eq!(verdict.stored_points, 2);

    assert_eq!(
        agent.metric("tributary_agent_rejected_total").await,
        Some(1.0)
    );
    let agents = query_json(&collector.url(), "/api/v1/agents")
        .await
        .unwrap();
    assert_eq!(agents["agents"][0]["quarantined"], 1, "{agents}");

    // The collector holds the raw payload and the reason, and lists them.
    let listed = query_json(&collector.url(), "/api/v1/quarantine")
        .await
        .unwrap();
    let records = listed["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{listed}");
    let record = &records[0];
    assert_eq!(record["origin"], "agent");
    assert_eq!(record["agent"], "edge-1");
    assert_eq!(record["topic"], format!("sensors/dev1/{NAME}"));
    assert_eq!(record["payload"], "{\"id\": 1, oops");
    let reason = record["reason"].as_str().unwrap();
    assert!(reason.starts_with("invalid JSON"), "{reason}");
}

/// A wrong token gets 401; the agent logs it on every attempt, keeps its buffer, and delivers
/// everything once the token is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_keeps_the_buffer_until_it_is_fixed() {
    let Setup {
        dir: _dir,
        broker,
        collector,
        mut agent,
        token,
    } = setup(
        &MosquittoOptions::default(),
        "",
        &[("TRIBUTARY_TOKEN", "not-the-token")],
    );

    let acked = publish_all(broker.port, 0..50).await;
    wait_metric(
        &agent,
        "tributary_agent_sends_total{outcome=\"unauthorized\"}",
        3.0,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        agent.metric("tributary_agent_buffer_points").await,
        Some(50.0)
    );
    assert!(
        agent.process().count_logged("refused this agent's token") >= 3,
        "an error on every attempt"
    );
    assert!(
        agent
            .metric("tributary_agent_errors_total{component=\"forward\",kind=\"unauthorized\"}")
            .await
            >= Some(3.0)
    );
    let stored = query_json(&collector.url(), &format!("/api/v1/query?name={NAME}"))
        .await
        .unwrap();
    assert_eq!(stored["series"].as_array().map(Vec::len), Some(0));

    blocking(|| agent.kill9());
    agent.set_env("TRIBUTARY_TOKEN", &token);
    blocking(|| agent.restart()).unwrap();
    let verdict = settle(
        &collector.url(),
        Some(&agent),
        &acked,
        Duration::from_secs(30),
    )
    .await;
    assert!(verdict.exactly_once(), "{verdict:?}");
    assert_eq!(verdict.stored_points, 50);
}

fn batch(agent: &str, first_seq: u64, count: u64) -> Batch {
    Batch {
        agent_id: agent.into(),
        epoch: "00112233445566778899aabbccddeeff".into(),
        first_seq,
        last_seq: first_seq + count - 1,
        dropped: 0,
        sent_at: tributary_wire::time::now_ns(),
        status: AgentStatus::default(),
        points: (0..count)
            .map(|i| Point::new("direct", i as i64).with_field("v", i as i64))
            .collect(),
        rejects: Vec::new(),
    }
}

async fn post(
    url: &str,
    token: Option<&str>,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let mut request = http()
        .post(format!("{url}/api/v1/batches"))
        .header("content-type", content_type)
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let json = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// The collector's ingest contract, over real HTTP: auth, limits, decoding, identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_refuses_bad_requests_with_a_json_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (token, _) = token_pair("edge-1");
    let (other, _) = token_pair("edge-2");
    let collector = CollectorProcess::start_with(
        &dir.path().join("collector"),
        &[("edge-1", &token), ("edge-2", &other)],
        "max_body_size = \"64KiB\"\nmax_decompressed_size = \"1MiB\"",
    )
    .unwrap();
    let url = collector.url();
    let msgpack = Encoding::MsgPack.content_type();
    let good = codec::encode_batch(&batch("edge-1", 1, 3), Encoding::MsgPack).unwrap();

    let (status, body) = post(&url, None, msgpack, None, good.clone()).await;
    assert_eq!(status, 401);
    assert!(
        body["error"].as_str().unwrap().contains("missing"),
        "{body}"
    );
    let (status, _) = post(&url, Some("wrong"), msgpack, None, good.clone()).await;
    assert_eq!(status, 401);

    // A token may not write as another agent.
    let (status, body) = post(&url, Some(&other), msgpack, None, good.clone()).await;
    assert_eq!(status, 403, "{body}");

    let (status, body) = post(
        &url,
        Some(&token),
        msgpack,
        None,
        b"\x93\x01garbage".to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not a valid batch"),
        "{body}"
    );
    let (status, _) = post(
        &url,
        Some(&token),
        msgpack,
        Some("zstd"),
        b"not zstd".to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = post(&url, Some(&token), "text/plain", None, good.clone()).await;
    assert_eq!(status, 415);

    // 8 MiB of zeros compress to a few hundred bytes: a bomb, refused after decompression.
    let bomb = codec::compress(&vec![0u8; 8 << 20], 19).unwrap();
    assert!(bomb.len() < 64 << 10);
    let (status, body) = post(&url, Some(&token), msgpack, Some("zstd"), bomb).await;
    assert_eq!(status, 413, "{body}");
    let (status, _) = post(&url, Some(&token), msgpack, None, vec![0u8; 100 << 10]).await;
    assert_eq!(status, 413);

    // And the good batch, twice: stored once.
    let (status, ack) = post(&url, Some(&token), msgpack, None, good.clone()).await;
    assert_eq!(
        (
            status,
            ack["stored"].as_u64(),
            ack["committed_through"].as_u64()
        ),
        (200, Some(3), Some(3))
    );
    let json = codec::encode_batch(&batch("edge-1", 1, 3), Encoding::Json).unwrap();
    let (status, ack) = post(&url, Some(&token), "application/json", None, json).await;
    assert_eq!(
        (status, ack["stored"].as_u64(), ack["duplicates"].as_u64()),
        (200, Some(0), Some(3))
    );

    let metrics = query_text(&url, "/metrics").await.unwrap();
    assert!(
        metrics.contains(
            "tributary_collector_errors_total{component=\"batches\",kind=\"too_large\"} 2"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("tributary_collector_points_stored_total 3"),
        "{metrics}"
    );
    let health = http().get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

/// Regression for D1 of the adversarial run: with `[time] max_future = "off"`, a reading at
/// the end of the `i64` range aborted the collector (chunk arithmetic overflowed), and again on
/// every restart, as its agent sent it again: 11 deaths in 40 s, nothing stored for anyone.
/// Now it is quarantined with its reason, through line protocol and through an agent, and
/// everything around it is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_at_the_end_of_time_is_quarantined_and_the_collector_lives() {
    let dir = tempfile::tempdir().unwrap();
    let (token, _) = token_pair("edge-1");
    let broker = tributary_bench::harness::Mosquitto::start(
        &dir.path().join("broker"),
        &MosquittoOptions::default(),
    )
    .unwrap();
    let mut collector = CollectorProcess::start_custom(
        &dir.path().join("collector"),
        &[("edge-1", &token)],
        &tributary_bench::harness::CollectorOptions {
            extra: "[time]\nmax_future = \"off\"\n".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let url = collector.url();
    let answer = http()
        .post(format!("{url}/api/v2/write"))
        .header("authorization", format!("Token {token}"))
        .body("x,k=v value=1 9223372036854775807\nx,k=v value=2 1700000000000000000\n")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 400);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(
        (body["stored"].as_u64(), body["quarantined"].as_u64()),
        (Some(1), Some(1)),
        "{body}"
    );
    assert!(
        body["rejected"][0]["error"]
            .as_str()
            .unwrap()
            .contains("storable range"),
        "{body}"
    );

    // Through an agent: the reading carries its own time at the end of the range.
    let agent = crate::start_agent(
        &dir.path().join("agent"),
        &dir.path().join("agent/data"),
        &url,
        &broker,
        "",
        &[("TRIBUTARY_TOKEN", &token)],
    );
    let publisher = Publisher::connect(broker.port, "publisher", 10).await;
    publisher.publish(0, &topic(0), payload(0)).await;
    publisher
        .publish(
            1,
            &topic(1),
            b"{\"id\": 1, \"ts\": 9223372036854775807}".to_vec(),
        )
        .await;
    publisher.publish(2, &topic(2), payload(2)).await;
    let mut acked = publisher.finish(Duration::from_secs(30)).await;
    assert!(acked.remove(&1));
    let verdict = settle(&url, Some(&agent), &acked, Duration::from_secs(60)).await;
    assert!(verdict.exactly_once(), "{verdict:?}");
    assert_eq!(verdict.stored_points, 2);
    assert!(blocking(|| collector.process().is_running()));
    // And it starts again over that data.
    blocking(|| collector.restart()).unwrap();
    assert_eq!(
        http()
            .get(format!("{url}/healthz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let quarantined = query_json(&url, "/api/v1/quarantine").await.unwrap();
    let reasons: Vec<&str> = quarantined["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["reason"].as_str())
        .collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("storable range"))
            .count(),
        2,
        "{quarantined}"
    );
}

/// An agent sending with another agent's token gets 403, and its log says that the token is
/// known but belongs to another id (not that it is wrong).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_agents_token_is_named_as_such_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mine, _) = token_pair("edge-1");
    let (theirs, _) = token_pair("edge-2");
    let broker = blocking(|| {
        tributary_bench::harness::Mosquitto::start(
            &dir.path().join("broker"),
            &MosquittoOptions::default(),
        )
        .unwrap()
    });
    let collector = blocking(|| {
        CollectorProcess::start(
            &dir.path().join("collector"),
            &[("edge-1", &mine), ("edge-2", &theirs)],
        )
        .unwrap()
    });
    let mut agent = blocking(|| {
        crate::start_agent(
            &dir.path().join("agent"),
            &dir.path().join("agent/data"),
            &collector.url(),
            &broker,
            "",
            &[("TRIBUTARY_TOKEN", &theirs)],
        )
    });
    publish_all(broker.port, 0..10).await;
    let logged = blocking(|| {
        agent.process().wait_for_log(
            "the collector knows this token but refuses it for this agent",
            Duration::from_secs(30),
        )
    });
    assert!(logged, "{:?}", agent.process().logs());
    assert!(!agent.process().logged("refused this agent's token"));
    wait_metric(
        &agent,
        "tributary_agent_errors_total{component=\"forward\",kind=\"forbidden\"}",
        1.0,
        Duration::from_secs(10),
    )
    .await;
}

/// A backlog built while the collector was down is reported when it has been delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_backlog_is_logged() {
    let Setup {
        dir: _dir,
        broker,
        mut collector,
        mut agent,
        ..
    } = setup(&MosquittoOptions::default(), "", &[]);
    let mut acked = publish_all(broker.port, 0..50).await;
    let verdict = settle(
        &collector.url(),
        Some(&agent),
        &acked,
        Duration::from_secs(30),
    )
    .await;
    assert!(verdict.exactly_once(), "{verdict:?}");
    blocking(|| collector.kill9());
    acked.extend(publish_all(broker.port, 50..250).await);
    let failing = blocking(|| {
        agent
            .process()
            .wait_for_log("cannot reach the collector", Duration::from_secs(20))
    });
    assert!(failing);
    blocking(|| collector.restart()).unwrap();
    let verdict = settle(
        &collector.url(),
        Some(&agent),
        &acked,
        Duration::from_secs(60),
    )
    .await;
    assert!(verdict.exactly_once(), "{verdict:?}");
    let delivered = blocking(|| {
        agent
            .process()
            .wait_for_log("backlog delivered: 200 points in", Duration::from_secs(10))
    });
    assert!(delivered, "{:?}", agent.process().logs());
}
