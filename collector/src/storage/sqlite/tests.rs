use std::sync::Arc;

use tributary_wire::{AgentStatus, Batch, BatchAck, FieldValue, Point, Reject};

use super::*;
use crate::storage::group::{GapAccount, account_gap};
use crate::storage::read::*;
use crate::storage::{Origin, QueryResult, RawQuery, Storage, SubmitError, WriteJob};

fn batch(epoch: &str, first_seq: u64, values: &[i64]) -> Batch {
    Batch {
        agent_id: "a1".into(),
        epoch: epoch.into(),
        first_seq,
        last_seq: first_seq + values.len() as u64 - 1,
        dropped: 0,
        sent_at: 0,
        status: AgentStatus::default(),
        points: values
            .iter()
            .map(|v| {
                Point::new("temp", *v)
                    .with_tag("device", "d1")
                    .with_field("v", *v)
            })
            .collect(),
        rejects: Vec::new(),
    }
}

/// Queues a batch as the ingest handler does and waits for its answer.
pub(super) async fn store(
    storage: &Storage,
    agent_id: &str,
    batch: Batch,
    received_at: i64,
) -> Result<BatchAck, StorageError> {
    store_from(storage, agent_id, batch, received_at, Origin::Agent)
        .await
        .map(|stored| stored.ack)
}

/// [`store`] from any origin, with the whole answer.
pub(super) async fn store_from(
    storage: &Storage,
    agent_id: &str,
    batch: Batch,
    received_at: i64,
    origin: Origin,
) -> Result<Stored, StorageError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    storage
        .reserve(Duration::from_secs(10))
        .await
        .expect("the queue has room")
        .submit(WriteJob {
            agent_id: agent_id.to_owned(),
            batch,
            received_at,
            origin,
            reply,
            memory: None,
        });
    answer.await.expect("the writer answers")
}

pub(super) fn open(dir: &tempfile::TempDir) -> Storage {
    let mut options = StorageOptions::new(&dir.path().join("c.db"));
    options.queue = 16;
    options.readers = 2;
    Storage::open(&options, Arc::new(Metrics::new())).unwrap()
}

async fn all(storage: &Storage, name: &str) -> QueryResult {
    let query = RawQuery {
        name: name.into(),
        field: None,
        from: i64::MIN,
        to: i64::MAX,
        tags: Vec::new(),
        limit: 1_000_000,
    };
    storage.read(move |c| query_raw(c, &query)).await.unwrap()
}

fn values(result: &QueryResult) -> Vec<i64> {
    result
        .series
        .iter()
        .flat_map(|s| &s.points)
        .map(|(ts, _)| *ts)
        .collect()
}

#[tokio::test]
async fn a_retried_batch_stores_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    let ack = store(&storage, "a1", batch("e1", 1, &[10, 11, 12]), 5)
        .await
        .unwrap();
    assert_eq!(
        (ack.committed_through, ack.stored, ack.duplicates),
        (3, 3, 0)
    );
    let ack = store(&storage, "a1", batch("e1", 1, &[10, 11, 12]), 6)
        .await
        .unwrap();
    assert_eq!(
        (ack.committed_through, ack.stored, ack.duplicates),
        (3, 0, 3)
    );
    // Overlapping: 2 and 3 are known, 4 and 5 are new.
    let ack = store(&storage, "a1", batch("e1", 2, &[11, 12, 13, 14]), 7)
        .await
        .unwrap();
    assert_eq!(
        (ack.committed_through, ack.stored, ack.duplicates),
        (5, 2, 2)
    );
    assert_eq!(
        values(&all(&storage, "temp").await),
        vec![10, 11, 12, 13, 14]
    );

    // A new epoch (a new agent database) starts its own sequence.
    let ack = store(&storage, "a1", batch("e2", 1, &[20]), 8)
        .await
        .unwrap();
    assert_eq!((ack.committed_through, ack.stored), (1, 1));

    let agents = storage.read(|r| agents(r)).await.unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].points_received, 6);
    assert_eq!(agents[0].duplicates, 5);
    assert_eq!(agents[0].epochs.len(), 2);
}

#[tokio::test]
async fn marks_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = open(&dir);
    store(&storage, "a1", batch("e1", 1, &[1, 2]), 5)
        .await
        .unwrap();
    storage.close();
    drop(storage);
    let storage = open(&dir);
    let ack = store(&storage, "a1", batch("e1", 1, &[1, 2, 3]), 6)
        .await
        .unwrap();
    assert_eq!((ack.stored, ack.duplicates), (1, 2));
    assert_eq!(values(&all(&storage, "temp").await), vec![1, 2, 3]);
}

#[tokio::test]
async fn field_types_tags_and_filters_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    let mut b = batch("e1", 1, &[1]);
    b.points = vec![
        Point::new("m", 100)
            .with_tag("device", "d1")
            .with_tag("agent", "forged")
            .with_field("f", 1.5)
            .with_field("i", -7)
            .with_field("b", true)
            .with_field("s", "42"),
        Point::new("m", 200)
            .with_tag("device", "d2")
            .with_field("f", 2.5),
    ];
    b.last_seq = 2;
    store(&storage, "a1", b, 5).await.unwrap();

    let result = all(&storage, "m").await;
    let fields: Vec<(&str, &FieldValue)> = result
        .series
        .iter()
        .filter(|s| s.tags["device"] == "d1")
        .map(|s| (s.field.as_str(), &s.points[0].1))
        .collect();
    assert_eq!(
        fields,
        vec![
            ("b", &FieldValue::Bool(true)),
            ("f", &FieldValue::F64(1.5)),
            ("i", &FieldValue::I64(-7)),
            // A string that looks like a number stays a string.
            ("s", &FieldValue::Str("42".into())),
        ]
    );
    // The agent tag comes from the token, whatever the point said.
    assert!(result.series.iter().all(|s| s.tags["agent"] == "a1"));

    let query = RawQuery {
        name: "m".into(),
        field: Some("f".into()),
        from: 150,
        to: 300,
        tags: vec![("device".into(), "d2".into())],
        limit: 10,
    };
    let result = storage.read(move |c| query_raw(c, &query)).await.unwrap();
    assert_eq!(result.series.len(), 1);
    assert_eq!(result.series[0].points, vec![(200, FieldValue::F64(2.5))]);
}

#[tokio::test]
async fn the_limit_truncates_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    store(&storage, "a1", batch("e1", 1, &[1, 2, 3, 4, 5]), 5)
        .await
        .unwrap();
    let query = RawQuery {
        name: "temp".into(),
        field: None,
        from: i64::MIN,
        to: i64::MAX,
        tags: Vec::new(),
        limit: 3,
    };
    let result = storage.read(move |c| query_raw(c, &query)).await.unwrap();
    assert_eq!(values(&result), vec![1, 2, 3]);
    assert!(result.truncated);
}

#[tokio::test]
async fn rejects_are_stored_once_and_gaps_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    let reject = |id| Reject {
        id,
        received_at: 1,
        source: "inputs.mqtt[0]".into(),
        topic: "sensors/x".into(),
        payload: b"{oops".to_vec(),
        reason: "invalid JSON".into(),
    };
    let mut b = batch("e1", 1, &[1]);
    b.rejects = vec![reject(1), reject(2)];
    assert_eq!(
        store(&storage, "a1", b.clone(), 5)
            .await
            .unwrap()
            .rejects_stored,
        2
    );
    assert_eq!(store(&storage, "a1", b, 6).await.unwrap().rejects_stored, 0);

    // Sequences 2..=4 never arrive; the agent says it dropped 2 of them.
    let mut b = batch("e1", 5, &[5]);
    b.dropped = 2;
    store(&storage, "a1", b, 7).await.unwrap();
    let agents = storage.read(|r| agents(r)).await.unwrap();
    assert_eq!(agents[0].quarantined, 2);
    assert_eq!(agents[0].gaps, 1);
    assert_eq!(agents[0].epochs[0].dropped, 2);
}

/// A drop count that arrives before its gap (a salvaged buffer counts its lost rows at once,
/// then sends the points before them) still explains the gap when it comes, and only once.
#[tokio::test]
async fn a_drop_count_explains_a_later_gap_once() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    let mut b = batch("e1", 1, &[1, 2, 3]);
    b.dropped = 2;
    store(&storage, "a1", b, 5).await.unwrap();
    // 4 and 5 lost: the count sent with the first batch explains them.
    let mut b = batch("e1", 6, &[6, 7]);
    b.dropped = 2;
    store(&storage, "a1", b, 6).await.unwrap();
    let records = storage.read(|r| agents(r)).await.unwrap();
    assert_eq!(records[0].gaps, 0);
    // 8 and 9 lost too, with no new drops counted: that gap is unexplained.
    let mut b = batch("e1", 10, &[10]);
    b.dropped = 2;
    store(&storage, "a1", b, 7).await.unwrap();
    let records = storage.read(|r| agents(r)).await.unwrap();
    assert_eq!(records[0].gaps, 2);
}

#[tokio::test]
async fn many_batches_in_flight_commit_together_and_correctly() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(open(&dir));
    let mut tasks = Vec::new();
    for agent in 0..8 {
        let storage = Arc::clone(&storage);
        tasks.push(tokio::spawn(async move {
            for chunk in 0..10u64 {
                let mut b = batch(
                    "e",
                    chunk * 10 + 1,
                    &(0..10)
                        .map(|i| (agent * 1000 + chunk * 10 + i) as i64)
                        .collect::<Vec<_>>(),
                );
                b.agent_id = format!("agent-{agent}");
                let ack = store(&storage, &b.agent_id.clone(), b, 1).await.unwrap();
                assert_eq!(ack.committed_through, chunk * 10 + 10);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let result = all(&storage, "temp").await;
    assert_eq!(result.series.len(), 8);
    // Each agent's series holds exactly its own 100 values, in time order, each once.
    for series in &result.series {
        let agent: i64 = series.tags["agent"]
            .strip_prefix("agent-")
            .unwrap()
            .parse()
            .unwrap();
        let times: Vec<i64> = series.points.iter().map(|(ts, _)| *ts).collect();
        let want: Vec<i64> = (agent * 1000..agent * 1000 + 100).collect();
        assert_eq!(times, want, "{}", series.tags["agent"]);
        assert!(
            series
                .points
                .iter()
                .all(|(ts, value)| *value == FieldValue::I64(*ts))
        );
    }
    // And the marks say so.
    let agents = storage.read(|r| agents(r)).await.unwrap();
    assert_eq!(agents.len(), 8);
    assert!(
        agents
            .iter()
            .all(|a| a.epochs[0].last_seq == 100 && a.points_received == 100)
    );
}

/// Ingest reserves room before it decodes: when the queue is held full, a reservation waits
/// its time and then says busy (429), and room comes back when a reservation is used. Paused
/// time: the wait is exactly the reservation's, and the test does not sleep for it.
#[tokio::test(start_paused = true)]
async fn a_full_queue_makes_reservations_wait_then_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = StorageOptions::new(&dir.path().join("c.db"));
    options.queue = 1;
    let storage = Storage::open(&options, Arc::new(Metrics::new())).unwrap();
    let held = storage.reserve(Duration::from_millis(10)).await.unwrap();
    let started = tokio::time::Instant::now();
    assert!(matches!(
        storage.reserve(Duration::from_millis(100)).await,
        Err(SubmitError::Busy)
    ));
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    let (reply, answer) = tokio::sync::oneshot::channel();
    held.submit(WriteJob {
        agent_id: "a1".into(),
        batch: batch("e1", 1, &[1, 2]),
        received_at: 5,
        origin: Origin::Agent,
        reply,
        memory: None,
    });
    assert_eq!(answer.await.unwrap().unwrap().ack.stored, 2);
    assert!(storage.reserve(Duration::from_secs(5)).await.is_ok());
}

/// A database from schema 2 kept a `points` row per value; opening it moves them into chunks
/// (booleans were stored as integers and come back as booleans) and drops the table.
#[tokio::test]
async fn a_database_with_a_row_per_value_is_converted_to_chunks() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = Connection::open(dir.path().join("c.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE series (id INTEGER PRIMARY KEY, name TEXT NOT NULL, tags TEXT NOT NULL,
                 field TEXT NOT NULL, kind TEXT NOT NULL, first_ts INTEGER NOT NULL,
                 last_ts INTEGER NOT NULL, UNIQUE (name, tags, field));
             CREATE TABLE points (series_id INTEGER NOT NULL, ts INTEGER NOT NULL,
                 n INTEGER NOT NULL, value, PRIMARY KEY (series_id, ts, n)) WITHOUT ROWID;
             CREATE TABLE meta (key TEXT PRIMARY KEY, value);
             INSERT INTO meta VALUES ('next_n', 5);
             INSERT INTO series VALUES
                 (1, 'm', '{\"agent\":\"a1\"}', 'f', 'float', 100, 300),
                 (2, 'm', '{\"agent\":\"a1\"}', 'b', 'boolean', 100, 100),
                 (3, 'm', '{\"agent\":\"a1\"}', 's', 'string', 100, 100);
             INSERT INTO points VALUES (1, 300, 2, 3.5), (1, 100, 0, 1.5), (1, 100, 1, 2),
                 (2, 100, 3, 1), (3, 100, 4, '42');
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    let storage = open(&dir);
    let result = all(&storage, "m").await;
    let by_field: BTreeMap<&str, &Vec<(i64, FieldValue)>> = result
        .series
        .iter()
        .map(|s| (s.field.as_str(), &s.points))
        .collect();
    assert_eq!(
        by_field["f"],
        &vec![
            (100, FieldValue::F64(1.5)),
            (100, FieldValue::I64(2)),
            (300, FieldValue::F64(3.5))
        ]
    );
    assert_eq!(by_field["b"], &vec![(100, FieldValue::Bool(true))]);
    assert_eq!(by_field["s"], &vec![(100, FieldValue::Str("42".into()))]);
    drop(storage);
    let conn = Connection::open(dir.path().join("c.db")).unwrap();
    let (tables, version): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT count(*) FROM sqlite_master WHERE name = 'points'),
                    (SELECT user_version FROM pragma_user_version)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((tables, version), (0, SCHEMA_VERSION));
}

async fn quarantine(storage: &Storage) -> Vec<QuarantineRecord> {
    storage
        .read(|c| {
            list_quarantine(
                c,
                &crate::storage::QuarantineFilter {
                    from: i64::MIN,
                    to: i64::MAX,
                    limit: 100_000,
                    newest_first: false,
                    agent: None,
                    reason: None,
                },
            )
        })
        .await
        .unwrap()
        .0
}

fn open_with(dir: &tempfile::TempDir, change: impl FnOnce(&mut StorageOptions)) -> Storage {
    let mut options = StorageOptions::new(&dir.path().join("c.db"));
    change(&mut options);
    Storage::open(&options, Arc::new(Metrics::new())).unwrap()
}

/// Regression (D1 of the adversarial run): a timestamp at the end of the i64 range made the
/// chunk writer's span arithmetic overflow and aborted the collector on every restart. Every
/// timestamp is now stored or quarantined with its reason, whatever `max_future` says.
#[tokio::test]
async fn timestamps_at_the_ends_of_the_range_are_quarantined_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open_with(&dir, |o| o.time.max_future = None);
    let edges = [
        i64::MAX,
        i64::MAX - 1,
        i64::MIN,
        i64::MIN + 1,
        0,
        1_700_000_000_000_000_000,
    ];
    let mut b = batch("e1", 1, &[0; 6]);
    for (point, ts) in b.points.iter_mut().zip(edges) {
        point.ts = ts;
    }
    let ack = store(&storage, "a1", b, 1_700_000_000_000_000_000)
        .await
        .unwrap();
    assert_eq!(
        (ack.committed_through, ack.stored, ack.quarantined),
        (6, 2, 4)
    );
    let kept = quarantine(&storage).await;
    assert_eq!(kept.len(), 4);
    assert!(
        kept.iter().all(|r| r.reason.contains("storable range")),
        "{kept:?}"
    );
    assert_eq!(
        values(&all(&storage, "temp").await),
        vec![0, 1_700_000_000_000_000_000]
    );
    // The store goes on taking batches.
    let ack = store(&storage, "a1", batch("e1", 7, &[5]), 6)
        .await
        .unwrap();
    assert_eq!(ack.stored, 1);
}

/// One agent's batch that the store cannot hold is isolated: the points that fail alone go
/// to the quarantine with the store's error, the rest of it is stored, and batches from other
/// agents in the same group commit as if nothing happened. Exactly once holds through it.
#[tokio::test]
async fn a_batch_the_store_refuses_is_isolated_and_others_are_not_blocked() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    // A real failure inside SQLite for one series name: what a point that breaks the store
    // looks like to the writer.
    let conn = Connection::open(dir.path().join("c.db")).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER poison BEFORE INSERT ON series WHEN NEW.name = 'poison'
         BEGIN SELECT RAISE(ABORT, 'this series cannot be stored'); END;",
    )
    .unwrap();
    drop(conn);

    let mut bad = batch("e1", 1, &[1, 2, 3, 4, 5, 6, 7, 8]);
    bad.points[2].name = "poison".into();
    bad.points[6].name = "poison".into();
    let good = {
        let mut b = batch("e9", 1, &[1, 2, 3]);
        b.agent_id = "a2".into();
        b
    };
    // Both in flight at once, so they can share a group commit.
    let (bad_ack, good_ack) = tokio::join!(
        store(&storage, "a1", bad.clone(), 10),
        store(&storage, "a2", good, 10)
    );
    let good_ack = good_ack.unwrap();
    assert_eq!((good_ack.stored, good_ack.committed_through), (3, 3));
    let bad_ack = bad_ack.unwrap();
    assert_eq!(
        (
            bad_ack.committed_through,
            bad_ack.stored,
            bad_ack.quarantined
        ),
        (8, 6, 2)
    );
    let kept = quarantine(&storage).await;
    assert_eq!(kept.len(), 2);
    assert!(
        kept.iter().all(
            |r| r.reason.contains("rule storage: the store cannot hold it")
                && r.reason.contains("this series cannot be stored")
        ),
        "{kept:?}"
    );
    assert_eq!(
        kept.iter().map(|r| r.topic.as_str()).collect::<Vec<_>>(),
        vec!["seq 3", "seq 7"]
    );
    // A retry stores nothing twice and quarantines nothing twice.
    let again = store(&storage, "a1", bad, 11).await.unwrap();
    assert_eq!(
        (again.stored, again.duplicates, again.quarantined),
        (0, 8, 0)
    );
    assert_eq!(quarantine(&storage).await.len(), 2);
    let stored = all(&storage, "temp").await;
    assert_eq!(values(&stored).len(), 6 + 3);
    // The store is healthy: this was the data, not the disk.
    assert!(storage.health().failure().is_none());
}

/// Line protocol writes are told which points were quarantined, with their index.
#[tokio::test]
async fn quarantined_points_of_a_write_are_listed_with_their_index() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    let mut b = batch("", 0, &[1, 2, 3]);
    b.first_seq = 0;
    b.last_seq = 0;
    b.points[1].ts = i64::MAX;
    let stored = store_from(&storage, "t1", b, 5, Origin::LineProtocol)
        .await
        .unwrap();
    assert_eq!((stored.ack.stored, stored.ack.quarantined), (2, 1));
    assert_eq!(stored.quarantined.len(), 1);
    assert_eq!(stored.quarantined[0].0, 1);
    assert!(stored.quarantined[0].1.contains("storable range"));
}

mod extremes {
    use proptest::prelude::*;

    use super::*;

    /// Values that have broken stores before: the ends of every range.
    fn value() -> impl Strategy<Value = FieldValue> {
        prop_oneof![
            any::<i64>().prop_map(FieldValue::I64),
            prop::sample::select(vec![
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                -0.0,
                0.0,
                f64::MIN_POSITIVE,
                f64::MIN_POSITIVE / 2.0,
                f64::MAX,
                f64::MIN,
                5e-324,
            ])
            .prop_map(FieldValue::F64),
            any::<f64>().prop_map(FieldValue::F64),
            any::<bool>().prop_map(FieldValue::Bool),
            prop::sample::select(vec![0usize, 1, 65_536])
                .prop_map(|n| FieldValue::Str("s".repeat(n))),
        ]
    }

    fn timestamp() -> impl Strategy<Value = i64> {
        prop_oneof![
            any::<i64>(),
            prop::sample::select(vec![
                i64::MIN,
                i64::MIN + 1,
                i64::MAX,
                i64::MAX - 1,
                0,
                -1,
                *crate::clean::time::STORABLE.start(),
                *crate::clean::time::STORABLE.end(),
            ]),
            (-2_000_000_000_000_000_000i64..2_000_000_000_000_000_000),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Any timestamps and values, in any number of batches: every point is stored or
        /// quarantined with a reason, none twice, the writer never stops, and what is stored
        /// reads back with its own time.
        #[test]
        fn every_point_is_stored_or_quarantined(
            batches in prop::collection::vec(
                prop::collection::vec((timestamp(), value()), 1..20), 1..5),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let storage = open_with(&dir, |o| o.time.max_future = None);
                let mut seq = 1u64;
                let mut sent = 0u64;
                let mut want: Vec<i64> = Vec::new();
                // The series takes the class of its first stored value; others conflict.
                let mut class = None;
                for points in &batches {
                    let mut b = batch("e1", seq, &vec![0; points.len()]);
                    for (point, (ts, value)) in b.points.iter_mut().zip(points) {
                        point.ts = *ts;
                        point.fields.clear();
                        point.fields.insert("v".into(), value.clone());
                        let got = ValueClass::of(value);
                        if crate::clean::time::STORABLE.contains(ts) && *class.get_or_insert(got) == got {
                            want.push(*ts);
                        }
                    }
                    seq += points.len() as u64;
                    sent += points.len() as u64;
                    let ack = store(&storage, "a1", b, 1_700_000_000_000_000_000).await.unwrap();
                    assert_eq!(ack.committed_through, seq - 1);
                    assert_eq!(ack.stored + ack.quarantined, points.len() as u64);
                }
                let mut got = values(&all(&storage, "temp").await);
                got.sort_unstable();
                want.sort_unstable();
                assert_eq!(got, want);
                assert_eq!(quarantine(&storage).await.len() as u64, sent - want.len() as u64);
            });
        }
    }
}

/// A field that changes class (a string into a number series) is a type conflict: the point
/// goes to the quarantine, and the series keeps its numbers (found by the ingest fuzzer: the
/// aggregated query skipped a number series whose first stored value was a string).
#[tokio::test]
async fn a_field_type_conflict_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    let mut b = batch("e1", 1, &[1, 2, 3, 4]);
    b.points[1]
        .fields
        .insert("v".into(), FieldValue::Str("oops".into()));
    b.points[2].fields.insert("v".into(), FieldValue::F64(2.5));
    b.points[3]
        .fields
        .insert("v".into(), FieldValue::Bool(true));
    let ack = store(&storage, "a1", b, 5).await.unwrap();
    assert_eq!((ack.stored, ack.quarantined), (2, 2));
    let kept = quarantine(&storage).await;
    assert!(
        kept.iter()
            .all(|r| r.reason.starts_with("rule type: field type conflict")),
        "{kept:?}"
    );
    // After a restart the class is known from the store.
    drop(storage);
    let storage = open(&dir);
    let mut b = batch("e1", 5, &[5]);
    b.points[0]
        .fields
        .insert("v".into(), FieldValue::Str("again".into()));
    let ack = store(&storage, "a1", b, 6).await.unwrap();
    assert_eq!((ack.stored, ack.quarantined), (0, 1));
}

/// A point with 10,000 tags (and 64 KiB strings in a tag and a field) is stored and reads back.
#[tokio::test]
async fn a_point_with_ten_thousand_tags_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    let mut b = batch("e1", 1, &[1]);
    for i in 0..10_000 {
        b.points[0].tags.insert(format!("k{i}"), format!("v{i}"));
    }
    b.points[0].tags.insert("long".into(), "t".repeat(65_536));
    b.points[0]
        .fields
        .insert("text".into(), FieldValue::Str("s".repeat(65_536)));
    let ack = store(&storage, "a1", b, 5).await.unwrap();
    assert_eq!((ack.stored, ack.quarantined), (1, 0));
    let result = all(&storage, "temp").await;
    assert_eq!(result.series.len(), 2);
    // Its 10,001 tags, the batch's device tag and the agent's.
    assert!(result.series.iter().all(|s| s.tags.len() == 10_003));
}

/// Gap accounting, alone: drop counts explain a jump once, whenever they arrived.
#[test]
fn gaps_are_explained_by_drop_counts_no_earlier_jump_used() {
    // No jump: nothing missing, nothing used.
    assert_eq!(
        account_gap(10, 11, 5, 0),
        GapAccount {
            gaps: 0,
            explained: 0
        }
    );
    // A jump of 3 with 5 dropped: explained, 3 of the 5 used.
    assert_eq!(
        account_gap(10, 14, 5, 0),
        GapAccount {
            gaps: 0,
            explained: 3
        }
    );
    // The next jump of 3 finds only 2 unused: 1 gap.
    assert_eq!(
        account_gap(20, 24, 5, 3),
        GapAccount {
            gaps: 1,
            explained: 5
        }
    );
    // No drop count: all of it is a gap.
    assert_eq!(
        account_gap(0, 101, 0, 0),
        GapAccount {
            gaps: 100,
            explained: 0
        }
    );
    // A first sequence at or below the mark is no jump; the ends of u64 are arithmetic.
    assert_eq!(account_gap(50, 10, 9, 0).gaps, 0);
    assert_eq!(account_gap(u64::MAX, u64::MAX, u64::MAX, 0).gaps, 0);
    assert_eq!(
        account_gap(0, u64::MAX, u64::MAX, u64::MAX).explained,
        u64::MAX
    );
}

/// Commits without pause never give the checkpointer thread the moment it needs to restart
/// the WAL; the writer truncates it itself past `wal_limit`.
#[tokio::test]
async fn the_wal_stays_near_its_limit_under_back_to_back_commits() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open_with(&dir, |o| o.wal_limit = 256 << 10);
    let wal = dir.path().join("c.db-wal");
    let (mut largest, mut seq) = (0u64, 1u64);
    for round in 0..30i64 {
        // A thousand series a commit: every commit writes pages all over the database.
        let points: Vec<Point> = (0..1000)
            .map(|d| {
                Point::new("wide", 1_700_000_000_000_000_000 + round * 10_000_000_000)
                    .with_tag("device", format!("d{d}"))
                    .with_field("v", (d * 7 + round) as f64 * 0.37)
            })
            .collect();
        let n = points.len() as u64;
        let batch = Batch {
            points,
            last_seq: seq + n - 1,
            ..batch("e1", seq, &[0])
        };
        store(&storage, "a1", batch, 0).await.unwrap();
        seq += n;
        largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    assert!(
        storage.metrics.wal_restarts.get() >= 1,
        "the writer truncated the WAL"
    );
    assert!(
        largest < 4 << 20,
        "the WAL reached {largest} bytes with a 256 KiB limit"
    );
}
