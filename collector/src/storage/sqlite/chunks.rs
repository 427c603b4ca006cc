//! Raw values stored as chunks: one row holds a run of one series' values, in time order, in
//! the chunk format of [`crate::storage::codec`] (segments of delta-of-delta times and
//! Gorilla-XOR floats, zigzag-delta integers, bit-packed booleans, dictionary strings; the
//! MessagePack pairs of schema 3 to 5 still read).
//!
//! A row per value cost a b-tree insert and ~70 bytes per value; a chunk costs one insert per
//! series per commit and a few bytes per value. Three rules keep reads simple:
//!
//! - The values of a chunk lie in one aligned [`CHUNK_SPAN`] (1 h), so every chunk that holds
//!   a value of `[from, to)` starts in `[span start of from, to)`: a range read is an index
//!   range on `(series_id, start_ts)`.
//! - Within a chunk, times never decrease (a run is sorted before it is encoded; equal times
//!   keep their arrival order). Chunks of a series may overlap in time (late data); readers
//!   merge them by time.
//! - A commit that brings a few values of a series appends them to the series' newest chunk
//!   (while that is small, in the same span, and the values are not older than its end), so a
//!   trickle of small batches does not make a row per value. The writer remembers each
//!   series' newest chunk; it forgets them all when a transaction fails or retention ran.

use std::collections::HashMap;

use rusqlite::{Connection, Transaction, params};
use tributary_wire::FieldValue;

use crate::rollup::window_start;
use tributary_wire::time::now_ns;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS chunks (
    id       INTEGER PRIMARY KEY,
    series_id INTEGER NOT NULL,
    start_ts INTEGER NOT NULL,
    end_ts   INTEGER NOT NULL,
    count    INTEGER NOT NULL,
    data     BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_series ON chunks (series_id, start_ts);
";

pub use crate::storage::read::CHUNK_SPAN;

/// A series' newest chunk takes appended values while it is smaller than this (bytes).
const APPEND_BELOW: usize = 2048;

/// Values one chunk holds at most when it is written.
const MAX_VALUES: usize = 4096;

/// A chunk the writer may append to.
#[derive(Debug, Clone, Copy)]
struct OpenChunk {
    id: i64,
    /// Values it holds.
    count: usize,
    start_ts: i64,
    end_ts: i64,
    bytes: usize,
}

/// What one write did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChunkStats {
    pub values: u64,
    pub inserted: u64,
    pub appended: u64,
}

/// Writes the values of a transaction as chunks (see the module docs).
#[derive(Default)]
pub struct ChunkWriter {
    open: HashMap<i64, OpenChunk, foldhash::fast::FixedState>,
    buf: Vec<u8>,
    /// Note each write in the export feed.
    feed: bool,
}

impl ChunkWriter {
    /// A writer that notes its writes in the export feed when `feed` is on.
    pub fn with_feed(feed: bool) -> ChunkWriter {
        ChunkWriter {
            feed,
            ..ChunkWriter::default()
        }
    }

    /// Writes `rows` (series id, time, value), which must be sorted by series and then time.
    pub fn write(
        &mut self,
        tx: &Transaction<'_>,
        rows: &[(i64, i64, &FieldValue)],
    ) -> rusqlite::Result<ChunkStats> {
        debug_assert!(rows.is_sorted_by_key(|(series, ts, _)| (*series, *ts)));
        let mut stats = ChunkStats::default();
        let mut insert = tx.prepare_cached(
            "INSERT INTO chunks (series_id, start_ts, end_ts, count, data) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut append = tx.prepare_cached(
            // `||` yields text; the cast gives back the same bytes as a blob.
            "UPDATE chunks SET data = CAST(data || ?2 AS BLOB), end_ts = ?3, count = count + ?4
             WHERE id = ?1",
        )?;
        let mut rest = rows;
        while let Some(&(series, first_ts, _)) = rest.first() {
            let span = window_start(first_ts, CHUNK_SPAN);
            // The last span of the i64 range has no end to compare with.
            let span_end = span.checked_add(CHUNK_SPAN);
            let len = rest
                .iter()
                .take(MAX_VALUES)
                .take_while(|(s, ts, _)| *s == series && span_end.is_none_or(|end| *ts < end))
                .count()
                // The first value is always in its own span; at least one value is taken, so
                // the loop ends.
                .max(1);
            let Some((run, next)) = rest.split_at_checked(len) else {
                break;
            };
            rest = next;
            let Some(&(_, end_ts, _)) = run.last() else {
                break;
            };
            stats.values = stats.values.saturating_add(len as u64);
            match self.open.get_mut(&series) {
                Some(open)
                    if open.bytes < APPEND_BELOW
                        && first_ts >= open.end_ts
                        && window_start(open.start_ts, CHUNK_SPAN) == span =>
                {
                    encode(&mut self.buf, open.end_ts, run);
                    append.execute(params![open.id, self.buf, end_ts, len])?;
                    if self.feed {
                        super::feed::record(tx, open.id, open.count, len, now_ns())?;
                    }
                    open.count = open.count.saturating_add(len);
                    open.end_ts = end_ts;
                    open.bytes = open.bytes.saturating_add(self.buf.len());
                    stats.appended = stats.appended.saturating_add(1);
                }
                _ => {
                    encode(&mut self.buf, first_ts, run);
                    insert.execute(params![series, first_ts, end_ts, len, self.buf])?;
                    let id = tx.last_insert_rowid();
                    if self.feed {
                        super::feed::record(tx, id, 0, len, now_ns())?;
                    }
                    let chunk = OpenChunk {
                        id,
                        count: len,
                        start_ts: first_ts,
                        end_ts,
                        bytes: self.buf.len(),
                    };
                    // Only a chunk at least as new as the remembered one replaces it: late
                    // values must not stop appends to the series' newest chunk.
                    match self.open.get(&series) {
                        Some(open) if open.end_ts > end_ts => {}
                        _ => {
                            self.open.insert(series, chunk);
                        }
                    }
                    stats.inserted = stats.inserted.saturating_add(1);
                }
            }
        }
        Ok(stats)
    }

    /// Forgets the remembered chunks (after a rollback, or when retention rewrote chunks).
    pub fn forget(&mut self) {
        self.open.clear();
    }
}

/// Encodes `run` into `buf` (cleared first) as one part of the chunk format
/// ([`crate::storage::codec`]), times as deltas from `base`.
fn encode(buf: &mut Vec<u8>, base: i64, run: &[(i64, i64, &FieldValue)]) {
    buf.clear();
    crate::storage::codec::encode(buf, base, run);
}

/// A chunk that does not decode: the database was damaged or written by something else.
fn corrupt(series: i64, start_ts: i64, error: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        5,
        rusqlite::types::Type::Blob,
        format!("chunk of series {series} at {start_ts} does not decode: {error}").into(),
    )
}

/// Calls `each(ts, value)` for every value of a chunk, in its order.
pub fn decode(
    series: i64,
    start_ts: i64,
    data: &[u8],
    each: impl FnMut(i64, FieldValue),
) -> rusqlite::Result<()> {
    crate::storage::codec::decode(start_ts, data, each).map_err(|e| corrupt(series, start_ts, e))
}

/// Rewrites every chunk in the newest segment format (a database from before segment format 2
/// holds MessagePack pairs or format 1 segments), in one transaction; returns the values
/// rewritten.
pub fn convert(conn: &Connection) -> rusqlite::Result<u64> {
    let tx = conn.unchecked_transaction()?;
    let mut rewritten = 0u64;
    let mut after = i64::MIN;
    let mut buf = Vec::new();
    loop {
        let rows: Vec<(i64, i64, i64, Vec<u8>)> = tx
            .prepare_cached(
                "SELECT id, series_id, start_ts, data FROM chunks WHERE id > ?1 ORDER BY id LIMIT 1000",
            )?
            .query_map([after], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let Some(last) = rows.last() else {
            break;
        };
        after = last.0;
        for (id, series, start_ts, data) in rows {
            let mut values = Vec::new();
            decode(series, start_ts, &data, |ts, v| values.push((ts, v)))?;
            let run: Vec<((), i64, &FieldValue)> =
                values.iter().map(|(t, v)| ((), *t, v)).collect();
            buf.clear();
            crate::storage::codec::encode(&mut buf, start_ts, &run);
            tx.prepare_cached("UPDATE chunks SET data = ?2 WHERE id = ?1")?
                .execute(params![id, buf])?;
            rewritten = rewritten.saturating_add(values.len() as u64);
        }
    }
    tx.commit()?;
    Ok(rewritten)
}

/// The values of `series` with `from <= ts < to`, in time order, read inside the writer's
/// transaction (see [`crate::storage::read::read_values`]).
pub fn read_all(conn: &Connection, series: i64) -> rusqlite::Result<Vec<(i64, FieldValue)>> {
    let rows = super::reads::SqliteRows { conn, path: "" };
    crate::storage::read::read_values(&rows, series, i64::MIN, i64::MAX, None)
        .map(|(values, _)| values)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// What one retention pass removed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Trimmed {
    /// Chunks deleted or rewritten.
    pub rows: usize,
    pub values: u64,
}

/// Removes the values of `series` older than `cutoff`, touching at most `budget` chunks:
/// chunks that end before it go, a chunk that straddles it is rewritten without them.
pub fn trim(
    tx: &Transaction<'_>,
    series: i64,
    cutoff: i64,
    budget: usize,
) -> rusqlite::Result<Trimmed> {
    let old: Vec<(i64, i64, i64, i64, Vec<u8>)> = tx
        .prepare_cached(
            "SELECT id, start_ts, end_ts, count, CASE WHEN end_ts >= ?2 THEN data END
             FROM chunks WHERE series_id = ?1 AND start_ts < ?2 ORDER BY start_ts LIMIT ?3",
        )?
        .query_map(params![series, cutoff, budget], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get::<_, Option<Vec<u8>>>(4)?.unwrap_or_default(),
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut trimmed = Trimmed::default();
    let mut delete = tx.prepare_cached("DELETE FROM chunks WHERE id = ?1")?;
    for (id, start_ts, end_ts, count, data) in old {
        trimmed.rows = trimmed.rows.saturating_add(1);
        let count = u64::try_from(count).unwrap_or_default();
        let mut kept = Vec::new();
        if end_ts >= cutoff {
            decode(series, start_ts, &data, |ts, value| {
                if ts >= cutoff {
                    kept.push((series, ts, value));
                }
            })?;
        }
        let run: Vec<(i64, i64, &FieldValue)> = kept.iter().map(|(s, t, v)| (*s, *t, v)).collect();
        // No value left (the chunk ended before the cutoff, or its end was wrong): it goes.
        let Some(&(_, new_start, _)) = run.first() else {
            delete.execute([id])?;
            super::feed::deleted(tx, id)?;
            trimmed.values = trimmed.values.saturating_add(count);
            continue;
        };
        let mut buf = Vec::with_capacity(data.len());
        encode(&mut buf, new_start, &run);
        tx.prepare_cached("UPDATE chunks SET start_ts = ?2, count = ?3, data = ?4 WHERE id = ?1")?
            .execute(params![id, new_start, run.len(), buf])?;
        let removed = usize::try_from(count)
            .unwrap_or(usize::MAX)
            .saturating_sub(run.len());
        super::feed::trimmed(tx, id, removed)?;
        trimmed.values = trimmed
            .values
            .saturating_add(count.saturating_sub(run.len() as u64));
    }
    Ok(trimmed)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MINUTE: i64 = 60_000_000_000;

    /// The shared range read, over this connection.
    fn read(
        conn: &Connection,
        series: i64,
        from: i64,
        to: i64,
        limit: Option<usize>,
    ) -> Result<(Vec<(i64, FieldValue)>, bool), crate::storage::StorageError> {
        let rows = super::super::reads::SqliteRows { conn, path: "test" };
        crate::storage::read::read_values(&rows, series, from, to, limit)
    }

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute_batch(super::super::feed::SCHEMA).unwrap();
        conn
    }

    /// Writes `values` of series 1 as one transaction (sorted first, as the writer does).
    fn commit(conn: &mut Connection, writer: &mut ChunkWriter, values: &[(i64, FieldValue)]) {
        let mut rows: Vec<(i64, i64, &FieldValue)> =
            values.iter().map(|(t, v)| (1, *t, v)).collect();
        rows.sort_by_key(|(s, t, _)| (*s, *t));
        let tx = conn.transaction().unwrap();
        writer.write(&tx, &rows).unwrap();
        tx.commit().unwrap();
    }

    fn rows(conn: &Connection) -> Vec<(i64, i64, i64)> {
        conn.prepare("SELECT start_ts, end_ts, count FROM chunks ORDER BY start_ts, id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn every_kind_of_value_comes_back_as_it_was_stored() {
        let mut conn = db();
        let mut writer = ChunkWriter::default();
        let values = vec![
            (-5 * MINUTE, FieldValue::F64(-0.0)),
            (0, FieldValue::F64(f64::MAX)),
            (0, FieldValue::I64(i64::MIN)),
            (0, FieldValue::I64(0)),
            (1, FieldValue::Bool(true)),
            (2, FieldValue::Bool(false)),
            (3, FieldValue::Str(String::new())),
            (4, FieldValue::Str("ünïcode, with \0 inside".into())),
            (5, FieldValue::F64(f64::NAN)),
            (6, FieldValue::I64(u32::MAX as i64 + 1)),
        ];
        commit(&mut conn, &mut writer, &values);
        let (read, truncated) = read(&conn, 1, i64::MIN, i64::MAX, None).unwrap();
        assert!(!truncated);
        assert_eq!(read.len(), values.len());
        for ((ts, value), (want_ts, want)) in read.iter().zip(&values) {
            assert_eq!(ts, want_ts);
            match (value, want) {
                (FieldValue::F64(a), FieldValue::F64(b)) => assert_eq!(a.to_bits(), b.to_bits()),
                _ => assert_eq!(value, want),
            }
        }
    }

    #[test]
    fn chunks_stay_within_their_hour_and_small_commits_append() {
        let mut conn = db();
        let mut writer = ChunkWriter::default();
        // 90 minutes in one commit: two chunks, split at the hour.
        let first: Vec<_> = (0..90)
            .map(|m| (m * MINUTE, FieldValue::F64(m as f64)))
            .collect();
        commit(&mut conn, &mut writer, &first);
        assert_eq!(
            rows(&conn),
            vec![(0, 59 * MINUTE, 60), (60 * MINUTE, 89 * MINUTE, 30)]
        );
        // A trickle of single values goes into the newest chunk, not a row each.
        for m in 90..95 {
            commit(&mut conn, &mut writer, &[(m * MINUTE, FieldValue::I64(m))]);
        }
        assert_eq!(rows(&conn).len(), 2);
        assert_eq!(rows(&conn)[1], (60 * MINUTE, 94 * MINUTE, 35));
        // A late value does not: it is older than the newest chunk's end.
        commit(
            &mut conn,
            &mut writer,
            &[(10 * MINUTE, FieldValue::I64(-1))],
        );
        assert_eq!(rows(&conn).len(), 3);
        // ... and the newest chunk still takes the next on-time value.
        commit(
            &mut conn,
            &mut writer,
            &[(95 * MINUTE, FieldValue::I64(95))],
        );
        assert_eq!(rows(&conn).len(), 3);
        // After forgetting (a rollback), a new chunk starts.
        writer.forget();
        commit(
            &mut conn,
            &mut writer,
            &[(96 * MINUTE, FieldValue::I64(96))],
        );
        assert_eq!(rows(&conn).len(), 4);

        let (values, _) = read(&conn, 1, 0, i64::MAX, None).unwrap();
        let times: Vec<i64> = values.iter().map(|(t, _)| t / MINUTE).collect();
        let mut want: Vec<i64> = (0..97).collect();
        want.insert(11, 10);
        assert_eq!(times, want, "merged by time across chunks");
        // A range starting inside a chunk finds the chunk that began before it.
        let (values, _) = read(&conn, 1, 61 * MINUTE, 63 * MINUTE, None).unwrap();
        assert_eq!(
            values.iter().map(|(t, _)| t / MINUTE).collect::<Vec<_>>(),
            vec![61, 62]
        );
    }

    #[test]
    fn trimming_drops_old_chunks_and_rewrites_the_one_across_the_cutoff() {
        let mut conn = db();
        let mut writer = ChunkWriter::default();
        let values: Vec<_> = (0..180).map(|m| (m * MINUTE, FieldValue::I64(m))).collect();
        commit(&mut conn, &mut writer, &values);
        let tx = conn.transaction().unwrap();
        let trimmed = trim(&tx, 1, 90 * MINUTE, 100).unwrap();
        tx.commit().unwrap();
        assert_eq!((trimmed.rows, trimmed.values), (2, 90));
        let (kept, _) = read(&conn, 1, i64::MIN, i64::MAX, None).unwrap();
        assert_eq!(kept.first().unwrap().0, 90 * MINUTE);
        assert_eq!(kept.len(), 90);
        assert_eq!(rows(&conn)[0], (90 * MINUTE, 119 * MINUTE, 30));
        // The budget bounds the chunks touched.
        let tx = conn.transaction().unwrap();
        let trimmed = trim(&tx, 1, i64::MAX, 1).unwrap();
        assert_eq!((trimmed.rows, trimmed.values), (1, 30));
    }

    #[test]
    fn a_damaged_chunk_is_an_error_naming_it() {
        let conn = db();
        conn.execute(
            "INSERT INTO chunks (series_id, start_ts, end_ts, count, data) VALUES (7, 0, 0, 1, x'00c1')",
            [],
        )
        .unwrap();
        let error = read(&conn, 7, 0, 10, None).unwrap_err().to_string();
        assert!(
            error.contains("chunk of series 7 at 0 does not decode"),
            "{error}"
        );
    }

    /// Timestamps: mostly minutes of a few hours (so chunks fill and overlap), and anywhere
    /// in the `i64` range with its ends: the chunk code must be total there, storable or not.
    fn timestamp() -> impl Strategy<Value = i64> {
        prop_oneof![
            6 => (0i64..240).prop_map(|m| m * MINUTE),
            2 => any::<i64>(),
            2 => prop::sample::select(vec![
                i64::MIN,
                i64::MIN + 1,
                i64::MAX - 1,
                i64::MAX,
                -1,
                0,
                i64::MAX - CHUNK_SPAN,
                i64::MIN + CHUNK_SPAN,
            ]),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any commits, in any order, read back as the values of the range in time order,
        /// and a limit gives the first of them.
        #[test]
        fn reads_equal_the_values_in_time_order(
            commits in prop::collection::vec(
                prop::collection::vec((timestamp(), any::<i64>()), 1..60), 1..12),
            bounds in (timestamp(), timestamp()),
            limit in 1usize..200,
        ) {
            let mut conn = db();
            let mut writer = ChunkWriter::default();
            let mut all = Vec::new();
            for values in &commits {
                let values: Vec<_> = values
                    .iter()
                    .map(|(t, v)| (*t, FieldValue::I64(*v)))
                    .collect();
                commit(&mut conn, &mut writer, &values);
                all.extend(values);
            }
            let (from, to) = (bounds.0.min(bounds.1), bounds.0.max(bounds.1));
            let value = |v: &FieldValue| match v {
                FieldValue::I64(v) => *v,
                _ => i64::MIN,
            };
            let mut want: Vec<(i64, i64)> = all
                .iter()
                .filter(|(t, _)| *t >= from && *t < to)
                .map(|(t, v)| (*t, value(v)))
                .collect();
            want.sort();
            let (got, truncated) = read(&conn, 1, from, to, None).unwrap();
            prop_assert!(!truncated);
            prop_assert!(got.is_sorted_by_key(|(t, _)| *t));
            let mut got: Vec<(i64, i64)> = got.iter().map(|(t, v)| (*t, value(v))).collect();
            got.sort();
            prop_assert_eq!(&got, &want);

            let (first, truncated) = read(&conn, 1, from, to, Some(limit)).unwrap();
            prop_assert_eq!(truncated, want.len() > limit);
            let times: Vec<i64> = first.iter().map(|(t, _)| *t).collect();
            let want_times: Vec<i64> = want.iter().take(limit).map(|(t, _)| *t).collect();
            prop_assert_eq!(times, want_times);

            // Trimming at any cutoff keeps exactly the values at or after it.
            let cutoff = bounds.0;
            let tx = conn.transaction().unwrap();
            let trimmed = trim(&tx, 1, cutoff, usize::MAX >> 1).unwrap();
            tx.commit().unwrap();
            let kept = all.iter().filter(|(t, _)| *t >= cutoff).count();
            prop_assert_eq!(trimmed.values as usize, all.len() - kept);
            let (left, _) = read(&conn, 1, i64::MIN, i64::MAX, None).unwrap();
            let at_max = all.iter().filter(|(t, _)| *t == i64::MAX).count();
            // `to` is exclusive: a value at i64::MAX is stored but no range reaches it.
            prop_assert_eq!(left.len() + at_max.min(kept), kept);
        }
    }
}
