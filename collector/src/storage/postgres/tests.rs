//! The PostgreSQL store against a real server of its own ([`super::testing::PgServer`]).

use super::testing::PgServer;
use super::*;

#[test]
fn collectors_starting_at_once_create_the_schema_once() {
    let server = PgServer::start();
    let url = server.url();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut client = connect(&url).unwrap();
                migrate(&mut client, &url).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut client = connect(&url).unwrap();
    let version: i64 = client
        .query_one("SELECT value FROM meta WHERE key = 'schema'", &[])
        .unwrap()
        .get(0);
    assert_eq!(version, SCHEMA_VERSION);
    // A newer schema is refused, not downgraded.
    client
        .execute("UPDATE meta SET value = 99 WHERE key = 'schema'", &[])
        .unwrap();
    let refused = migrate(&mut client, &url).unwrap_err().to_string();
    assert!(refused.contains("schema 99 is newer"), "{refused}");
}

#[test]
fn urls_lose_their_password_in_messages() {
    assert_eq!(
        redact("postgres://ingest:s3cret@db:5432/tributary?sslmode=require"),
        "postgres://ingest:***@db:5432/tributary?sslmode=require"
    );
    assert_eq!(redact("postgres://db/x"), "postgres://db/x");
    let refused = connect("postgres://nobody@127.0.0.1:1/x?sslmode=disable")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        refused.starts_with("storage postgres://nobody@127.0.0.1:1/x"),
        "{refused}"
    );
}

#[test]
fn a_server_stopped_mid_stream_is_an_error_then_comes_back() {
    let server = PgServer::start();
    let url = server.url();
    let mut client = connect(&url).unwrap();
    migrate(&mut client, &url).unwrap();
    server.stop_immediate();
    assert!(client.query_one("SELECT 1", &[]).is_err());
    assert!(connect(&url).is_err());
    server.start_again();
    let mut client = connect(&url).unwrap();
    let one: i32 = client.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
}

mod two_collectors {
    use std::sync::Arc;

    use tributary_wire::{AgentStatus, Batch, FieldValue, Point};

    use super::super::writer;
    use super::PgServer;
    use crate::metrics::Metrics;
    use crate::rollup::default_resolutions;
    use crate::storage::blocks;
    use crate::storage::writer::Job;
    use crate::storage::{Origin, StorageOptions, StoreHealth, WriteJob};

    const T0: i64 = 1_700_000_000_000_000_000 - 1_700_000_000_000_000_000 % 3_600_000_000_000;
    const POINTS: u64 = 3_000;

    fn value(seq: u64) -> f64 {
        ((seq * 37) % 1000) as f64 / 10.0
    }

    /// Points `first..=last` of agent a1's epoch e1, every 2 s from T0.
    fn batch(first: u64, last: u64) -> Batch {
        Batch {
            agent_id: "a1".into(),
            epoch: "e1".into(),
            first_seq: first,
            last_seq: last,
            dropped: 0,
            sent_at: T0,
            status: AgentStatus::default(),
            points: (first..=last)
                .map(|seq| {
                    Point::new("temp", T0 + seq as i64 * 2_000_000_000)
                        .with_field("value", value(seq))
                })
                .collect(),
            rejects: Vec::new(),
        }
    }

    async fn send(jobs: &tokio::sync::mpsc::Sender<Job>, batch: Batch) -> u64 {
        send_as(jobs, batch, Origin::Agent).await
    }

    async fn send_as(jobs: &tokio::sync::mpsc::Sender<Job>, batch: Batch, origin: Origin) -> u64 {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = WriteJob {
            agent_id: "a1".into(),
            batch,
            received_at: T0,
            origin,
            reply,
            memory: None,
        };
        assert!(jobs.send(Job::Write(Box::new(job))).await.is_ok());
        answer.await.unwrap().unwrap().ack.stored
    }

    fn start_collectors(
        url: &str,
        n: usize,
    ) -> Vec<(tokio::sync::mpsc::Sender<Job>, std::thread::JoinHandle<()>)> {
        let options = StorageOptions::new(std::path::Path::new("unused.db"));
        (0..n)
            .map(|_| {
                writer::start(
                    url,
                    &options,
                    Arc::new(Metrics::new()),
                    Arc::new(StoreHealth::default()),
                )
                .unwrap()
            })
            .collect()
    }

    /// Every resolution's windows count all `POINTS` and sum to a direct sum of their values.
    fn assert_rollups_hold_every_point(client: &mut postgres::Client) {
        let direct: f64 = (1..=POINTS).map(value).sum();
        for (step, count, sum) in rollup_totals(client) {
            assert_eq!(count, POINTS, "windows of {step} ns");
            assert!((sum - direct).abs() < 1e-6, "{sum} against {direct}");
        }
    }

    /// Sums every rollup window of every series at each resolution: (count, sum) per step.
    fn rollup_totals(client: &mut postgres::Client) -> Vec<(i64, u64, f64)> {
        default_resolutions()
            .iter()
            .map(|resolution| {
                let (mut count, mut sum) = (0u64, 0f64);
                for row in client
                    .query(
                        "SELECT start, data FROM rollup_blocks WHERE res = $1",
                        &[&resolution.step],
                    )
                    .unwrap()
                {
                    let data: Vec<u8> = row.get(1);
                    for (_, a) in
                        blocks::windows(&data, row.get(0), resolution.step, false).unwrap()
                    {
                        count += a.count;
                        sum += a.sum();
                    }
                }
                (resolution.step, count, sum)
            })
            .collect()
    }

    /// Points without sequences (remote write, line protocol), so no mark serializes them,
    /// for one series, written by three collectors at once into the same rollup blocks: no
    /// partial is lost. Two guards keep it so: the series row is locked before the blocks,
    /// and a new block is created empty before it is locked and merged into.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn rollup_blocks_written_by_three_collectors_at_once_lose_nothing() {
        let server = PgServer::start();
        let url = server.url();
        let collectors = start_collectors(&url, 3);
        // 600 batches of 5 distinct points each, dealt round robin to the collectors, each
        // collector sending from four tasks at once.
        let mut tasks = Vec::new();
        for (c, (jobs, _)) in collectors.iter().enumerate() {
            for lane in 0..4u64 {
                let jobs = jobs.clone();
                tasks.push(tokio::spawn(async move {
                    let mut stored = 0;
                    for b in (0..600u64).filter(|b| b % 12 == c as u64 * 4 + lane) {
                        let first = 1 + b * 5;
                        stored +=
                            send_as(&jobs, batch(first, first + 4), Origin::RemoteWrite).await;
                    }
                    stored
                }));
            }
        }
        let mut stored = 0;
        for task in tasks {
            stored += task.await.unwrap();
        }
        assert_eq!(stored, POINTS);
        drop(collectors);
        tokio::task::spawn_blocking(move || {
            let mut client = super::connect(&url).unwrap();
            assert_rollups_hold_every_point(&mut client);
        })
        .await
        .unwrap();
    }

    /// The same batches, with overlapping ranges, posted to two collectors at once, many
    /// times (an agent failing over while its first request still commits): every point is
    /// stored once, the marks hold the last sequence, and the rollups equal a direct sum.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_same_batch_at_two_collectors_at_once_is_stored_once() {
        let server = PgServer::start();
        let url = server.url();
        let collectors = start_collectors(&url, 2);
        let ranges: Vec<(u64, u64)> = (0..30)
            .map(|i| {
                let first = 1 + i * 100;
                (first, (first + 250).min(POINTS))
            })
            .collect();
        let mut tasks = Vec::new();
        for (jobs, _) in &collectors {
            for _ in 0..2 {
                let jobs = jobs.clone();
                let ranges = ranges.clone();
                tasks.push(tokio::spawn(async move {
                    let mut stored = 0;
                    for (first, last) in ranges {
                        stored += send(&jobs, batch(first, last)).await;
                    }
                    stored
                }));
            }
        }
        let mut stored = 0;
        for task in tasks {
            stored += task.await.unwrap();
        }
        assert_eq!(
            stored, POINTS,
            "acknowledged as stored, over all collectors"
        );
        drop(collectors);
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut client = super::connect(&url).unwrap();
            let values: i64 = client
                .query_one("SELECT sum(count)::BIGINT FROM chunks", &[])
                .unwrap()
                .get(0);
            assert_eq!(values as u64, POINTS);
            let mark: i64 = client
                .query_one(
                    "SELECT last_seq FROM marks WHERE agent_id = 'a1' AND epoch = 'e1'",
                    &[],
                )
                .unwrap()
                .get(0);
            assert_eq!(mark as u64, POINTS);
            let mut decoded = Vec::new();
            for row in client
                .query("SELECT start_ts, data FROM chunks ORDER BY start_ts", &[])
                .unwrap()
            {
                let data: Vec<u8> = row.get(1);
                crate::storage::codec::decode(row.get(0), &data, |ts, v| decoded.push((ts, v)))
                    .unwrap();
            }
            decoded.sort_by_key(|(ts, _)| *ts);
            let expected: Vec<(i64, FieldValue)> = (1..=POINTS)
                .map(|seq| (T0 + seq as i64 * 2_000_000_000, FieldValue::F64(value(seq))))
                .collect();
            assert_eq!(decoded, expected);
            assert_rollups_hold_every_point(&mut client);
        })
        .await
        .unwrap();
    }
}
