//! Several collectors on one PostgreSQL (`[storage] url`), against a real server of the test's
//! own (initdb into a temporary directory, a free port):
//!
//! - 3 collectors take 10 agents spread over `forward.urls`, while collectors are killed with
//!   kill -9 in a loop and the server is stopped with `pg_ctl stop -m immediate` mid-stream
//!   and started again: every message the broker acknowledged is stored exactly once, the
//!   agents see no unexplained gap, and the rollups equal a direct computation;
//! - the same batches are posted to two collectors at once, many times, with overlapping
//!   ranges: each sequence is stored once and the agent's figures add up.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tributary_bench::harness::postgres::PgServer;
use tributary_bench::harness::{
    AgentProcess, CollectorOptions, CollectorProcess, Mosquitto, MosquittoOptions, Oracle,
    agent_config, free_port, http, query_json, token_pair,
};
use tributary_wire::codec::{self, Encoding};
use tributary_wire::time::format_rfc3339;
use tributary_wire::{AgentStatus, Batch, Point};

use crate::{NAME, blocking, publish_all};

const AGENTS: u64 = 10;
const PER_AGENT: u64 = 600;

/// Starts 3 collectors on the database at `url`, admitting `agents`.
fn collectors(dir: &std::path::Path, url: &str, agents: &[(&str, &str)]) -> Vec<CollectorProcess> {
    (0..3)
        .map(|i| {
            CollectorProcess::start_custom(
                &dir.join(format!("c{i}")),
                agents,
                &CollectorOptions {
                    storage_url: Some(url.to_owned()),
                    ..CollectorOptions::default()
                },
            )
            .unwrap()
        })
        .collect()
}

/// Waits (bounded) until every agent's buffer is empty.
async fn all_drained(agents: &[AgentProcess], timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    for agent in agents {
        while agent.metric("tributary_agent_buffer_points").await != Some(0.0) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "every agent's buffer drained"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_collectors_on_one_postgres_store_ten_agents_exactly_once_through_kills_and_a_server_crash()
 {
    let dir = tempfile::tempdir().unwrap();
    let server = blocking(PgServer::start);
    let url = blocking(|| server.create_database("tributary"));
    let tokens: Vec<(String, String)> = (0..AGENTS)
        .map(|i| {
            let id = format!("edge-{i}");
            let (token, _) = token_pair(&id);
            (id, token)
        })
        .collect();
    let admitted: Vec<(&str, &str)> = tokens
        .iter()
        .map(|(id, t)| (id.as_str(), t.as_str()))
        .collect();
    let mut collectors = blocking(|| collectors(dir.path(), &url, &admitted));
    let urls: Vec<String> = collectors.iter().map(CollectorProcess::url).collect();

    // Each agent has a broker of its own and the three collectors in its own order.
    let mut brokers = Vec::new();
    let mut agents = Vec::new();
    for (i, (id, token)) in tokens.iter().enumerate() {
        let base = dir.path().join(id);
        let broker =
            blocking(|| Mosquitto::start(&base.join("broker"), &MosquittoOptions::default()))
                .unwrap();
        let order: Vec<String> = (0..3)
            .map(|k| format!("\"{}\"", urls[(i + k) % 3]))
            .collect();
        let first = &urls[i % 3];
        let config = agent_config(
            id,
            &base.join("agent/data"),
            first,
            &broker.url(),
            free_port(),
            "",
            "",
        )
        .replace(
            &format!("url = \"{first}\""),
            &format!(
                "urls = [{}]\nfailback_after = \"5s\"\ntimeout = \"3s\"\nconnect_timeout = \"1s\"",
                order.join(", ")
            ),
        );
        assert!(config.contains("urls = ["), "{config}");
        let agent = blocking(|| {
            AgentProcess::start(&base.join("agent"), &config, &[("TRIBUTARY_TOKEN", token)])
        })
        .unwrap();
        brokers.push(broker);
        agents.push(agent);
    }

    // Publish to every agent while collectors are killed and restarted, one at a time, and
    // the server crashes once in the middle.
    let stop = Arc::new(AtomicBool::new(false));
    let publishing: Vec<_> = brokers
        .iter()
        .enumerate()
        .map(|(i, broker)| {
            let port = broker.port;
            let from = i as u64 * PER_AGENT;
            tokio::spawn(async move {
                let mut acked = HashSet::new();
                // In slices, so the traffic spans the faults.
                for slice in 0..6 {
                    let start = from + slice * PER_AGENT / 6;
                    acked.extend(publish_all(port, start..start + PER_AGENT / 6).await);
                    tokio::time::sleep(Duration::from_millis(700)).await;
                }
                acked
            })
        })
        .collect();
    let faults = {
        let stop = Arc::clone(&stop);
        let mut round = 0usize;
        async move {
            let mut restarts = 0;
            while !stop.load(Ordering::Relaxed) && round < 12 {
                let victim = round % 3;
                blocking(|| collectors[victim].kill9());
                tokio::time::sleep(Duration::from_millis(400)).await;
                blocking(|| collectors[victim].restart()).unwrap();
                restarts += 1;
                if round == 4 {
                    blocking(|| server.stop_immediate());
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    blocking(|| server.start_again());
                }
                tokio::time::sleep(Duration::from_millis(600)).await;
                round += 1;
            }
            (collectors, server, restarts)
        }
    };
    let faults = tokio::spawn(faults);
    let mut acked = HashSet::new();
    for publisher in publishing {
        acked.extend(publisher.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let (collectors, server, restarts) = faults.await.unwrap();
    assert!(restarts >= 3, "collectors were killed: {restarts}");
    all_drained(&agents, Duration::from_secs(120)).await;

    // Every collector answers from the one store: the same points.
    let oracle = Oracle::read(&collectors[0].url(), NAME).await.unwrap();
    let verdict = oracle.verdict(&acked);
    assert!(verdict.exactly_once(), "{verdict:?}");
    assert_eq!(verdict.stored_points as u64, AGENTS * PER_AGENT);
    let other = Oracle::read(&collectors[2].url(), NAME).await.unwrap();
    assert_eq!(other.points, oracle.points);

    // No unexplained gap, and the marks are where the agents' sequences are.
    let listing = query_json(&collectors[1].url(), "/api/v1/agents")
        .await
        .unwrap();
    let listed = listing["agents"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len() as u64, AGENTS, "{listing}");
    for agent in &listed {
        assert_eq!(agent["gaps"].as_u64(), Some(0), "{agent}");
    }

    // The rollups equal a direct computation from the ids (value = id + 0.5, device id % 4),
    // per agent and device.
    let now = tributary_wire::time::now_ns();
    // Buckets are aligned to the step: the range starts on a 4 h boundary, one bucket back.
    let step = 4 * 3_600_000_000_000i64;
    let from = now.div_euclid(step) * step - step;
    let to = from + 3 * step;
    let answer = query_json(
        &collectors[1].url(),
        &format!(
            "/api/v1/query?name={NAME}&field=value&step=4h&agg=count,sum&from={}&to={}",
            format_rfc3339(from),
            format_rfc3339(to)
        ),
    )
    .await
    .unwrap();
    assert_ne!(answer["source"], "raw", "{answer}");
    let mut expected: BTreeMap<(String, String), (f64, f64)> = BTreeMap::new();
    for id in oracle.counts.keys() {
        let key = (format!("edge-{}", id / PER_AGENT), format!("dev{}", id % 4));
        let entry = expected.entry(key).or_default();
        entry.0 += 1.0;
        entry.1 += *id as f64 + 0.5;
    }
    let mut found: BTreeMap<(String, String), (f64, f64)> = BTreeMap::new();
    for series in answer["series"].as_array().into_iter().flatten() {
        let key = (
            series["tags"]["agent"].as_str().unwrap_or("").to_owned(),
            series["tags"]["device"].as_str().unwrap_or("").to_owned(),
        );
        let total: f64 = series["points"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p[1].as_f64())
            .sum();
        let entry = found.entry(key).or_default();
        match series["agg"].as_str() {
            Some("count") => entry.0 += total,
            Some("sum") => entry.1 += total,
            other => panic!("unexpected aggregate {other:?}"),
        }
    }
    assert_eq!(found.len(), expected.len(), "{answer}");
    for (key, (count, sum)) in &expected {
        let (got_count, got_sum) = found.get(key).copied().unwrap_or_default();
        assert_eq!(got_count, *count, "count of {key:?}");
        assert!((got_sum - sum).abs() <= 1e-6 * sum.abs(), "sum of {key:?}");
    }
    drop(agents);
    drop(collectors);
    drop(server);
}

fn batch(first_seq: u64, count: u64) -> Batch {
    Batch {
        agent_id: "edge-1".into(),
        epoch: "00112233445566778899aabbccddeeff".into(),
        first_seq,
        last_seq: first_seq + count - 1,
        dropped: 0,
        sent_at: tributary_wire::time::now_ns(),
        status: AgentStatus::default(),
        points: (first_seq..first_seq + count)
            .map(|seq| Point::new("direct", seq as i64).with_field("seq", seq as i64))
            .collect(),
        rejects: Vec::new(),
    }
}

async fn post(url: &str, token: &str, batch: &Batch) -> u16 {
    let body = codec::encode_batch(batch, Encoding::MsgPack).unwrap();
    http()
        .post(format!("{url}/api/v1/batches"))
        .header("content-type", "application/vnd.tributary.batch.v1+msgpack")
        .bearer_auth(token)
        .body(body)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_batches_posted_to_two_collectors_at_once_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = blocking(PgServer::start);
    let url = blocking(|| server.create_database("tributary"));
    let (token, _) = token_pair("edge-1");
    let collectors = blocking(|| collectors(dir.path(), &url, &[("edge-1", &token)]));
    let (a, b) = (collectors[0].url(), collectors[1].url());

    // Rounds of overlapping ranges, as an agent that fails over resends: each round posts
    // [s, s+100) to one collector and [s, s+150) to the other at the same moment, then each
    // to the other collector.
    let mut posted = 0u64;
    let mut sent = 0u64;
    for round in 0..40u64 {
        let start = 1 + round * 150;
        let one = batch(start, 100);
        let two = batch(start, 150);
        let (x, y, z, w) = tokio::join!(
            post(&a, &token, &one),
            post(&b, &token, &two),
            post(&b, &token, &one),
            post(&a, &token, &two),
        );
        for status in [x, y, z, w] {
            assert_eq!(status, 200, "round {round}");
        }
        posted = start + 149;
        sent += 500;
    }

    let answer = query_json(&collectors[2].url(), "/api/v1/query?name=direct&field=seq")
        .await
        .unwrap();
    let mut seen: BTreeMap<i64, u32> = BTreeMap::new();
    for series in answer["series"].as_array().into_iter().flatten() {
        for point in series["points"].as_array().into_iter().flatten() {
            *seen.entry(point[1].as_i64().unwrap()).or_default() += 1;
        }
    }
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "stored twice: {doubled:?}");
    assert_eq!(seen.len() as u64, posted, "every sequence stored");
    let listing = query_json(&a, "/api/v1/agents").await.unwrap();
    let agent = &listing["agents"][0];
    assert_eq!(agent["points_received"].as_u64(), Some(posted), "{agent}");
    assert_eq!(agent["duplicates"].as_u64(), Some(sent - posted), "{agent}");
    assert_eq!(agent["gaps"].as_u64(), Some(0), "{agent}");
    drop(collectors);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_down_batches_get_503_with_retry_after_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let server = blocking(PgServer::start);
    let url = blocking(|| server.create_database("tributary"));
    let (token, _) = token_pair("edge-1");
    // The server is down before the collector starts: it starts anyway and refuses batches.
    blocking(|| server.stop_immediate());
    let collector = blocking(|| {
        CollectorProcess::start_custom(
            &dir.path().join("c"),
            &[("edge-1", &token)],
            &CollectorOptions {
                storage_url: Some(url.clone()),
                ..CollectorOptions::default()
            },
        )
        .unwrap()
    });
    let body = codec::encode_batch(&batch(1, 50), Encoding::MsgPack).unwrap();
    let send = || {
        http()
            .post(format!("{}/api/v1/batches", collector.url()))
            .header("content-type", "application/vnd.tributary.batch.v1+msgpack")
            .bearer_auth(&token)
            .body(body.clone())
            .send()
    };
    let refused = send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 503);
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let health = http()
        .get(format!("{}/healthz", collector.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        health.status().as_u16(),
        503,
        "not ready while the store is away"
    );

    // Back: the same batch is taken, and a resend of it is a duplicate.
    blocking(|| server.start_again());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = send().await.unwrap().status().as_u16();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            tokio::time::Instant::now() < deadline,
            "stored once the server is back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let again: serde_json::Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(again["duplicates"].as_u64(), Some(50), "{again}");
    let stored = query_json(&collector.url(), "/api/v1/query?name=direct&field=seq")
        .await
        .unwrap();
    let points: usize = stored["series"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s["points"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(points, 50);
    drop(collector);
    drop(server);
}
