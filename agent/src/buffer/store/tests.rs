use std::collections::VecDeque;
use std::sync::Arc;

use tributary_wire::Point;
use tributary_wire::codec::{decode_point, encode_point};

use super::*;
use crate::buffer::{Checkpoint, NewReject};

fn point(n: i64) -> Vec<u8> {
    encode_point(&Point::new("m", n).with_field("v", n))
}

fn item(points: impl IntoIterator<Item = i64>) -> Ingest {
    let points: Vec<Point> = points
        .into_iter()
        .map(|n| Point::new("m", n).with_field("v", n))
        .collect();
    Ingest {
        points: points.iter().collect(),
        ..Ingest::default()
    }
}

fn open(dir: &tempfile::TempDir, max_size: u64, when_full: WhenFull) -> (Store, Arc<Depth>) {
    let depth = Arc::new(Depth::default());
    let store = Store::open(
        &dir.path().join("buffer.db"),
        max_size,
        when_full,
        Arc::clone(&depth),
        0,
        Default::default(),
    )
    .unwrap();
    (store, depth)
}

fn values(batch: &StoredBatch) -> Vec<i64> {
    batch
        .points
        .iter()
        .map(|b| decode_point(b).unwrap().ts)
        .collect()
}

#[test]
fn epoch_is_made_once_and_sequences_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, depth) = open(&dir, 1 << 30, WhenFull::DropOldest);
    let epoch = store.epoch().to_owned();
    assert_eq!(epoch.len(), 32);
    let outcome = store.append(&[item(0..3), item(3..5)]).unwrap();
    assert_eq!((outcome.points, outcome.last_seq), (5, 5));
    assert_eq!(depth.points(), 5);
    store.delete_through(5, 0).unwrap();
    assert_eq!(depth.points(), 0);
    assert_eq!(depth.bytes(), 0);
    drop(store);

    // Every row is gone, the file is reopened: the next sequence still follows the last one.
    let (mut store, depth) = open(&dir, 1 << 30, WhenFull::DropOldest);
    assert_eq!(store.epoch(), epoch);
    assert_eq!(store.last_seq(), 5);
    assert_eq!(store.append(&[item([9])]).unwrap().last_seq, 6);
    assert_eq!(depth.points(), 1);

    let mut reader = Reader::open(&dir.path().join("buffer.db")).unwrap();
    let batch = reader.read_batch(0, 0, 100, 1 << 20).unwrap();
    assert_eq!((batch.first_seq, batch.last_seq()), (6, 6));
    assert_eq!(values(&batch), vec![9]);
}

#[test]
fn a_new_file_gets_a_new_epoch() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    assert_ne!(
        open(&a, 1 << 30, WhenFull::DropOldest).0.epoch(),
        open(&b, 1 << 30, WhenFull::DropOldest).0.epoch()
    );
}

#[test]
fn reads_respect_count_and_byte_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = open(&dir, 1 << 30, WhenFull::DropOldest);
    store.append(&[item(0..10)]).unwrap();
    let mut reader = Reader::open(&dir.path().join("buffer.db")).unwrap();
    let batch = reader.read_batch(0, 0, 4, 1 << 20).unwrap();
    assert_eq!(values(&batch), vec![0, 1, 2, 3]);
    let one = batch.points.get(0).len();
    let batch = reader.read_batch(4, 0, 100, one * 3).unwrap();
    assert_eq!(values(&batch), vec![4, 5, 6]);
    // The first point always goes, even past the byte limit, or a big point would stall.
    let batch = reader.read_batch(7, 0, 100, 1).unwrap();
    assert_eq!(values(&batch), vec![7]);
    let empty = reader.read_batch(10, 0, 100, 1 << 20).unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.first_seq, 11);
    assert_eq!(empty.last_seq(), 10);
}

#[test]
fn drop_oldest_counts_and_persists_what_it_drops() {
    let dir = tempfile::tempdir().unwrap();
    let per_point = (point(0).len() + ROW_OVERHEAD) as u64;
    let max = per_point * 10;
    let (mut store, depth) = open(&dir, max, WhenFull::DropOldest);
    store.append(&[item(0..8)]).unwrap();
    let outcome = store.append(&[item(8..12)]).unwrap();
    assert_eq!(outcome.dropped, 2);
    assert_eq!(store.dropped_total(), 2);
    assert_eq!(depth.points(), 10);
    assert!(depth.bytes() <= max);
    let mut reader = Reader::open(&dir.path().join("buffer.db")).unwrap();
    let batch = reader.read_batch(0, 0, 100, 1 << 20).unwrap();
    assert_eq!(batch.first_seq, 3);
    assert_eq!(values(&batch), (2..12).collect::<Vec<_>>());
    drop(store);
    let (store, depth) = open(&dir, max, WhenFull::DropOldest);
    assert_eq!(store.dropped_total(), 2);
    assert_eq!(depth.dropped_total(), 2);
}

#[test]
fn block_mode_reports_no_room_and_drops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let per_point = (point(0).len() + ROW_OVERHEAD) as u64;
    let (mut store, _) = open(&dir, per_point * 4, WhenFull::Block);
    assert!(
        store.has_room(per_point * 100),
        "an empty buffer always takes an item"
    );
    store.append(&[item(0..4)]).unwrap();
    assert!(!store.has_room(per_point));
    // The writer does not append while there is no room; an append that comes anyway (an
    // item larger than what is left) takes it whole and drops nothing.
    let outcome = store.append(&[item(4..6)]).unwrap();
    assert_eq!((outcome.points, outcome.dropped), (2, 0));
    let mut reader = Reader::open(&dir.path().join("buffer.db")).unwrap();
    assert_eq!(
        values(&reader.read_batch(0, 0, 100, 1 << 20).unwrap()),
        vec![0, 1, 2, 3, 4, 5]
    );
    store.delete_through(5, 0).unwrap();
    assert!(store.has_room(per_point));
    assert_eq!(store.dropped_total(), 0);
}

#[test]
fn rejects_and_checkpoints_commit_with_the_points() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, depth) = open(&dir, 1 << 30, WhenFull::DropOldest);
    let source: Arc<str> = Arc::from("mqtt:c@h:1");
    let checkpoint = |key: &str, value: u8| Checkpoint::State {
        source: Arc::clone(&source),
        key: key.into(),
        value: vec![value],
    };
    let reject = NewReject {
        received_at: 7,
        source: "inputs.mqtt[0]".into(),
        topic: "t".into(),
        payload: b"{bad".to_vec(),
        reason: "invalid JSON".into(),
    };
    store
        .append(&[
            Ingest {
                checkpoint: Some(checkpoint("1", 1)),
                ..item([1])
            },
            Ingest {
                rejects: vec![reject.clone()],
                checkpoint: Some(checkpoint("2", 2)),
                ..Ingest::default()
            },
            Ingest {
                checkpoint: Some(checkpoint("1", 3)),
                ..item([2])
            },
        ])
        .unwrap();
    let mut checkpoints = store.checkpoints(&source).unwrap();
    checkpoints.sort();
    assert_eq!(
        checkpoints,
        vec![("1".to_owned(), vec![3]), ("2".to_owned(), vec![2])]
    );

    let mut reader = Reader::open(&dir.path().join("buffer.db")).unwrap();
    let batch = reader.read_batch(0, 0, 100, 1 << 20).unwrap();
    assert_eq!(batch.rejects.len(), 1);
    assert_eq!(batch.rejects[0].payload, b"{bad");
    assert_eq!(batch.rejects[0].reason, "invalid JSON");
    let bytes_before = depth.bytes();
    store
        .delete_through(batch.last_seq(), batch.rejects[0].id)
        .unwrap();
    assert!(depth.bytes() < bytes_before);
    assert_eq!(depth.bytes(), 0);
    assert!(
        reader
            .read_batch(batch.last_seq(), batch.rejects[0].id, 100, 1 << 20)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_refused_point_moves_to_the_quarantine_as_line_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, depth) = open(&dir, 1 << 30, WhenFull::DropOldest);
    store.append(&[item(0..3)]).unwrap();
    store
        .quarantine_point(2, "refused by the collector (400): bad")
        .unwrap();
    assert_eq!(depth.points(), 2);
    let mut reader = Reader::open(&dir.path().join("buffer.db")).unwrap();
    let batch = reader.read_batch(0, 0, 100, 1 << 20).unwrap();
    // The gap ends the batch: seq 1, then seq 3 in the next one.
    assert_eq!(values(&batch), vec![0]);
    assert_eq!(batch.rejects.len(), 1);
    assert_eq!(
        String::from_utf8_lossy(&batch.rejects[0].payload),
        "m v=1i 1"
    );
    let next = reader
        .read_batch(1, batch.rejects[0].id, 100, 1 << 20)
        .unwrap();
    assert_eq!((next.first_seq, values(&next)), (3, vec![2]));
}

/// The buffer behaves like a queue: whatever mix of appends, reads, confirmed deletes and
/// reopenings, a read returns exactly the oldest unconfirmed points in order.
#[test]
fn behaves_like_a_queue_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer.db");
    let (mut store, mut depth) = open(&dir, 1 << 30, WhenFull::DropOldest);
    let mut reader = Reader::open(&path).unwrap();
    let mut model: VecDeque<(u64, i64)> = VecDeque::new();
    let mut next_seq = 1u64;
    let mut next_value = 0i64;
    let mut confirmed = 0u64;
    // A fixed seed keeps the test reproducible; 400 steps keep it quick.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut random = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    for _ in 0..400 {
        match random(10) {
            0..=4 => {
                let items: Vec<Ingest> = (0..1 + random(4))
                    .map(|_| {
                        let n = random(5);
                        let values: Vec<i64> = (0..n).map(|i| next_value + i as i64).collect();
                        next_value += n as i64;
                        item(values)
                    })
                    .collect();
                store.append(&items).unwrap();
                for value in items
                    .iter()
                    .flat_map(|i| i.points.iter())
                    .map(|b| decode_point(b).unwrap().ts)
                {
                    model.push_back((next_seq, value));
                    next_seq += 1;
                }
            }
            5..=7 => {
                let max = 1 + random(8) as usize;
                let batch = reader.read_batch(confirmed, 0, max, 1 << 20).unwrap();
                // The oldest points in order; a batch may end early at a row, but then says
                // that more follow.
                let got = values(&batch);
                let expected: Vec<i64> = model.iter().take(got.len()).map(|(_, v)| *v).collect();
                assert_eq!(got, expected);
                assert!(got.len() <= max);
                assert_eq!(got.is_empty(), model.is_empty());
                assert_eq!(batch.more, got.len() < model.len());
                if let Some((seq, _)) = model.front() {
                    assert_eq!(batch.first_seq, *seq);
                }
                if !batch.points.is_empty() && random(2) == 0 {
                    store.delete_through(batch.last_seq(), 0).unwrap();
                    confirmed = batch.last_seq();
                    model.retain(|(seq, _)| *seq > confirmed);
                }
            }
            8 => {
                drop(store);
                let reopened = open(&dir, 1 << 30, WhenFull::DropOldest);
                store = reopened.0;
                depth = reopened.1;
                reader = Reader::open(&path).unwrap();
            }
            _ => {}
        }
        assert_eq!(depth.points(), model.len() as u64);
    }
}

fn delivery(session: &Arc<str>, pkid: u16, digest: u64) -> Ingest {
    Ingest {
        checkpoint: Some(Checkpoint::Delivery {
            session: Arc::clone(session),
            pkid,
            digest: digest.to_le_bytes(),
        }),
        ..item([i64::from(pkid)])
    }
}

#[test]
fn deliveries_replay_to_the_latest_digest_per_packet_id() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = open(&dir, 1 << 30, WhenFull::DropOldest);
    let a: Arc<str> = Arc::from("mqtt:a@h:1");
    let b: Arc<str> = Arc::from("mqtt:b@h:1");
    store
        .append(&[
            delivery(&a, 1, 10),
            delivery(&a, 2, 20),
            delivery(&b, 1, 99),
        ])
        .unwrap();
    store.append(&[delivery(&a, 1, 11)]).unwrap();
    drop(store);
    let (store, _) = open(&dir, 1 << 30, WhenFull::DropOldest);
    let replayed = store.deliveries(&a).unwrap();
    assert_eq!(replayed.len(), 2);
    assert_eq!(replayed[&1], 11u64.to_le_bytes());
    assert_eq!(replayed[&2], 20u64.to_le_bytes());
    assert_eq!(store.deliveries(&b).unwrap()[&1], 99u64.to_le_bytes());
    assert!(store.deliveries("mqtt:none").unwrap().is_empty());
}

/// Old delivery rows are pruned, but never below one entry per possible packet id, so every
/// packet id keeps its latest digest.
#[test]
fn delivery_rows_are_pruned_but_cover_every_packet_id() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = open(&dir, 1 << 30, WhenFull::DropOldest);
    let session: Arc<str> = Arc::from("mqtt:c@h:1");
    // Three rounds over all packet ids, 4096 messages per commit, like a broker cycling ids.
    let mut n = 0u64;
    for _round in 0..3 {
        for chunk in 0..16u64 {
            let items: Vec<Ingest> = (0..4096u64)
                .map(|i| {
                    n += 1;
                    delivery(&session, (chunk * 4096 + i) as u16, n)
                })
                .collect();
            store.append(&items).unwrap();
        }
        // Halfway through, reopen: the in-memory log must be rebuilt from the table.
        drop(store);
        store = open(&dir, 1 << 30, WhenFull::DropOldest).0;
    }
    let rows: i64 = store
        .conn
        .query_row("SELECT count(*) FROM deliveries", [], |r| r.get(0))
        .unwrap();
    assert!(rows <= 17, "old rows are pruned ({rows} left)");
    let replayed = store.deliveries(&session).unwrap();
    assert_eq!(replayed.len(), 65_536);
    // The last round wrote digests 2*65536+1 ..= 3*65536, in packet id order.
    assert_eq!(replayed[&0], (2 * 65_536 + 1u64).to_le_bytes());
    assert_eq!(replayed[&65_535], (3 * 65_536u64).to_le_bytes());
}

#[test]
fn commits_of_any_size_keep_consecutive_sequences_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = open(&dir, 1 << 30, WhenFull::DropOldest);
    let mut expected = Vec::new();
    let mut next = 0i64;
    // Sizes around the statement sizes (64, 32, …, 1) and their sums.
    for size in [1, 2, 3, 63, 64, 65, 127, 128, 200, 1000] {
        let values: Vec<i64> = (next..next + size).collect();
        next += size;
        expected.extend(values.iter().copied());
        let outcome = store.append(&[item(values)]).unwrap();
        assert_eq!(outcome.last_seq, next as u64);
    }
    let mut reader = Reader::open(&dir.path().join("buffer.db")).unwrap();
    let batch = reader.read_batch(0, 0, 10_000, 1 << 30).unwrap();
    assert_eq!(batch.first_seq, 1);
    assert_eq!(values(&batch), expected);
}

#[test]
fn large_appends_span_rows_and_reads_cross_them() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, depth) = open(&dir, 1 << 30, WhenFull::DropOldest);
    let total = BLOCK_POINTS as i64 * 2 + 500;
    store.append(&[item(0..1000), item(1000..total)]).unwrap();
    let rows: i64 = store
        .conn
        .query_row("SELECT count(*) FROM points", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 3, "rows of at most BLOCK_POINTS points");
    let mut reader = Reader::open(&dir.path().join("buffer.db")).unwrap();
    let all = reader.read_batch(0, 0, 100_000, 1 << 30).unwrap();
    assert_eq!(values(&all), (0..total).collect::<Vec<_>>());
    assert!(!all.more);
    // A limit inside the second row ends the batch at the first row, saying more follow.
    let first = reader.read_batch(0, 0, BLOCK_POINTS + 10, 1 << 30).unwrap();
    assert_eq!(first.points.len(), BLOCK_POINTS);
    assert!(first.more);
    // A confirmed sequence inside a row keeps the rest of the row, across a reopen.
    store.delete_through(1500, 0).unwrap();
    assert_eq!(depth.points(), total as u64 - 1500);
    drop(store);
    let (_store, depth) = open(&dir, 1 << 30, WhenFull::DropOldest);
    assert_eq!(depth.points(), total as u64 - 1500);
    let rest = reader.read_batch(1500, 0, 100_000, 1 << 30).unwrap();
    assert_eq!(rest.first_seq, 1501);
    assert_eq!(values(&rest), (1500..total).collect::<Vec<_>>());
    assert_eq!(reader.oldest_ts_after(1700).unwrap(), Some(1700));
    assert_eq!(reader.oldest_ts_after(total as u64).unwrap(), None);
}

#[test]
fn a_version_1_buffer_is_migrated_with_its_points_and_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer.db");
    {
        // The version 1 layout: one point per row, sequences from AUTOINCREMENT.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value);
             CREATE TABLE points (seq INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL);
             INSERT INTO meta VALUES ('epoch', 'e1'), ('created_at', 0), ('dropped_total', 4);
             PRAGMA user_version = 1;",
        )
        .unwrap();
        for n in 0..10 {
            conn.execute("INSERT INTO points (body) VALUES (?1)", [point(n)])
                .unwrap();
        }
        // Confirmed and deleted: the sequence must not be handed out again.
        conn.execute("DELETE FROM points WHERE seq <= 3 OR seq = 10", [])
            .unwrap();
    }
    let (mut store, depth) = open(&dir, 1 << 30, WhenFull::DropOldest);
    assert_eq!(store.epoch(), "e1");
    assert_eq!(store.dropped_total(), 4);
    assert_eq!(store.last_seq(), 10);
    assert_eq!(depth.points(), 6);
    assert_eq!(store.append(&[item([99])]).unwrap().last_seq, 11);
    let mut reader = Reader::open(&path).unwrap();
    let batch = reader.read_batch(0, 0, 100, 1 << 20).unwrap();
    assert_eq!(batch.first_seq, 4);
    // seq 10 was deleted: the gap ends the batch.
    assert_eq!(values(&batch), vec![3, 4, 5, 6, 7, 8]);
    let next = reader.read_batch(9, 0, 100, 1 << 20).unwrap();
    assert_eq!((next.first_seq, values(&next)), (11, vec![99]));
}

#[test]
fn rows_are_stored_packed_and_counted_unpacked() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, depth) = open(&dir, 1 << 30, WhenFull::DropOldest);
    store.append(&[item(0..1000)]).unwrap();
    let (raw_len, stored): (i64, i64) = store
        .conn
        .query_row("SELECT raw_len, length(body) FROM points", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    let unpacked: usize = (0..1000).map(|n| point(n).len()).sum();
    assert_eq!(raw_len as usize, unpacked);
    assert!(stored * 3 < raw_len, "{stored} bytes stored for {raw_len}");
    // `max_size` counts what the points take unpacked, in memory and after a reopen alike.
    let counted = size::points(unpacked, 1000);
    assert_eq!(depth.bytes(), counted);
    drop(store);
    let (mut store, depth) = open(&dir, 1 << 30, WhenFull::DropOldest);
    assert_eq!(depth.bytes(), counted);
    // A row rewritten after a partial delete is packed again.
    store.delete_through(400, 0).unwrap();
    let mut reader = Reader::open(&dir.path().join("buffer.db")).unwrap();
    let rest = reader.read_batch(400, 0, 10_000, 1 << 30).unwrap();
    assert_eq!(values(&rest), (400..1000).collect::<Vec<_>>());
    let packed: i64 = store
        .conn
        .query_row(
            "SELECT count(*) FROM points WHERE raw_len IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(packed, 1);
}

#[test]
fn a_version_2_buffer_keeps_its_rows_and_packs_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer.db");
    {
        // The version 2 layout: rows of points stored as they are, no `raw_len`.
        let conn = Connection::open(&path).unwrap();
        let v2 = SCHEMA.replace(",\n    raw_len INTEGER", "");
        assert_ne!(v2, SCHEMA);
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; {v2}
             INSERT INTO meta VALUES ('epoch', 'e2'), ('created_at', 0), ('dropped_total', 0),
                                     ('last_seq', 500);
             PRAGMA user_version = 2;"
        ))
        .unwrap();
        let points: Points = (1..=500)
            .map(|n| Point::new("m", n).with_field("v", n))
            .collect::<Vec<_>>()
            .iter()
            .collect();
        conn.execute(
            "INSERT INTO points (seq, count, ends, body) VALUES (1, 500, ?1, ?2)",
            params![points.ends_blob(), points.bytes()],
        )
        .unwrap();
    }
    let before = super::super::repair::inspect(&path).unwrap();
    assert_eq!((before.points, before.last_seq), (500, 500));
    let (mut store, depth) = open(&dir, 1 << 30, WhenFull::DropOldest);
    assert_eq!((store.epoch(), store.last_seq()), ("e2", 500));
    assert_eq!(depth.points(), 500);
    store.append(&[item(501..1001)]).unwrap();
    let version: i64 = store
        .conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let mut reader = Reader::open(&path).unwrap();
    let all = reader.read_batch(0, 0, 10_000, 1 << 30).unwrap();
    assert_eq!(values(&all), (1..1001).collect::<Vec<_>>());
    let after = super::super::repair::inspect(&path).unwrap();
    assert_eq!(after.points, 1000);
    let unpacked: u64 = (1..1001).map(|n| point(n).len() as u64).sum();
    assert_eq!(
        after.bytes, unpacked,
        "inspect counts bytes unpacked, old rows and new"
    );
    drop(store);
    // Opening again does not migrate twice.
    let (store, depth) = open(&dir, 1 << 30, WhenFull::DropOldest);
    assert_eq!((store.last_seq(), depth.points()), (1000, 1000));
}

/// Reads a buffer holding `points` after `damage` (an SQL statement) was done to its rows.
fn read_after_damage(
    points: std::ops::Range<i64>,
    damage: &str,
) -> Result<StoredBatch, StoreError> {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = open(&dir, 1 << 30, WhenFull::DropOldest);
    store.append(&[item(points)]).unwrap();
    store.conn.execute(damage, []).unwrap();
    let mut reader = Reader::open(&dir.path().join("buffer.db")).unwrap();
    reader.read_batch(0, 0, 100, 1 << 20)
}

#[test]
fn a_damaged_packed_row_is_an_error_not_a_panic() {
    let cut = "UPDATE points SET body = substr(body, 1, length(body) - 9)";
    let error = read_after_damage(0..500, cut).unwrap_err();
    assert!(error.to_string().contains("damaged"), "{error}");
    assert!(read_after_damage(0..500, "UPDATE points SET raw_len = 1 << 40").is_err());
}

#[test]
fn damaged_rows_are_an_error_not_a_panic() {
    let error = read_after_damage(0..5, "UPDATE points SET ends = x'0100'").unwrap_err();
    assert!(error.to_string().contains("damaged"), "{error}");
}

mod model {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// Items of these many points each.
        Append(Vec<u8>),
        /// Read up to this many and confirm them.
        Confirm(u8),
        /// Move the n-th unconfirmed point to the quarantine (the collector refused it).
        Quarantine(u8),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => prop::collection::vec(0u8..6, 1..4).prop_map(Op::Append),
            2 => (1u8..12).prop_map(Op::Confirm),
            1 => any::<u8>().prop_map(Op::Quarantine),
            1 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// The buffer against a queue, with `drop_oldest` under a small bound, refused points
        /// moved to the quarantine, and reopenings: reads give the oldest points in order, the
        /// depth counts the model, drops and refusals are counted, and the byte depth kept in
        /// memory equals what the tables add up to after a reopen.
        #[test]
        fn the_buffer_behaves_like_a_queue(ops in prop::collection::vec(op(), 1..60), small in any::<bool>()) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("buffer.db");
            // About 60 points fit under the small bound.
            let max_size = if small { 3_000 } else { 1 << 30 };
            let (mut store, mut depth) = open(&dir, max_size, WhenFull::DropOldest);
            let mut reader = Reader::open(&path).unwrap();
            let mut model: VecDeque<(u64, i64)> = VecDeque::new();
            let (mut next_seq, mut next_value, mut confirmed) = (1u64, 0i64, 0u64);
            let (mut dropped, mut refused) = (0u64, 0u64);
            for op in ops {
                match op {
                    Op::Append(sizes) => {
                        let items: Vec<Ingest> = sizes
                            .iter()
                            .map(|n| {
                                let values: Vec<i64> = (0..i64::from(*n)).map(|i| next_value + i).collect();
                                next_value += i64::from(*n);
                                item(values)
                            })
                            .collect();
                        let outcome = store.append(&items).unwrap();
                        for value in items.iter().flat_map(|i| i.points.iter()).map(|b| decode_point(b).unwrap().ts) {
                            model.push_back((next_seq, value));
                            next_seq += 1;
                        }
                        // Drops take the oldest.
                        for _ in 0..outcome.dropped {
                            model.pop_front();
                        }
                        dropped += outcome.dropped;
                        prop_assert!(small || outcome.dropped == 0);
                    }
                    Op::Confirm(max) => {
                        let batch = reader.read_batch(confirmed, 0, usize::from(max), 1 << 20).unwrap();
                        let got = values(&batch);
                        // After drops or refusals a batch stops at the gap: a prefix of the model.
                        let expected: Vec<i64> = model.iter().take(got.len()).map(|(_, v)| *v).collect();
                        prop_assert_eq!(&got, &expected);
                        prop_assert_eq!(got.is_empty(), model.is_empty());
                        if !batch.points.is_empty() {
                            store.delete_through(batch.last_seq(), 0).unwrap();
                            confirmed = batch.last_seq();
                            model.retain(|(seq, _)| *seq > confirmed);
                        }
                    }
                    Op::Quarantine(n) => {
                        if !model.is_empty() {
                            let index = usize::from(n) % model.len();
                            let (seq, _) = model[index];
                            store.quarantine_point(seq, "refused").unwrap();
                            model.remove(index);
                            refused += 1;
                        }
                    }
                    Op::Reopen => {
                        let bytes = depth.bytes();
                        drop(store);
                        let reopened = open(&dir, max_size, WhenFull::DropOldest);
                        store = reopened.0;
                        depth = reopened.1;
                        reader = Reader::open(&path).unwrap();
                        prop_assert_eq!(depth.bytes(), bytes, "the byte depth kept in memory is what the tables hold");
                    }
                }
                prop_assert_eq!(depth.points(), model.len() as u64);
                prop_assert_eq!(depth.dropped_total(), dropped);
                prop_assert_eq!(depth.removed_total(), dropped + refused);
            }
        }
    }
}
