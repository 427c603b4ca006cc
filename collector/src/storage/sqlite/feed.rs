//! The export feed: while exports are configured, the writer notes in each transaction which
//! chunk gained which values (`export_feed`: the chunk, the index of its first new value, how
//! many), in the order they were stored. An export reads the feed after its cursor
//! (`export_cursors`), sends what it read, and moves its cursor only after the receiver's 2xx,
//! in the same database, so after a kill it resumes where it stopped and resends at most the
//! requests that were in flight. Retention keeps the feed's indices true when it trims a
//! chunk, and drops the entries of chunks it deletes; entries every export has passed are
//! deleted.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::chunks;
use crate::storage::feed::FeedEntry;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS export_feed (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    chunk_id   INTEGER NOT NULL,
    first      INTEGER NOT NULL,
    count      INTEGER NOT NULL,
    written_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS export_feed_by_chunk ON export_feed (chunk_id);
CREATE TABLE IF NOT EXISTS export_cursors (
    name       TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
";

/// Notes, in the writer's transaction, that chunk `chunk_id` gained `count` values from index
/// `first`.
pub fn record(
    tx: &Transaction<'_>,
    chunk_id: i64,
    first: usize,
    count: usize,
    now: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO export_feed (chunk_id, first, count, written_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![chunk_id, first, count, now])?;
    Ok(())
}

/// Retention removed the first `removed` values of chunk `chunk_id`: the entries' indices move
/// down, and entries left without values go.
pub fn trimmed(tx: &Transaction<'_>, chunk_id: i64, removed: usize) -> rusqlite::Result<()> {
    // SET expressions all read the row as it was.
    tx.prepare_cached(
        "UPDATE export_feed SET count = MAX(0, first + count - ?2) - MAX(0, first - ?2),
                                first = MAX(0, first - ?2)
         WHERE chunk_id = ?1",
    )?
    .execute(params![chunk_id, removed])?;
    tx.prepare_cached("DELETE FROM export_feed WHERE chunk_id = ?1 AND count <= 0")?
        .execute([chunk_id])?;
    Ok(())
}

/// Retention deleted chunk `chunk_id`.
pub fn deleted(tx: &Transaction<'_>, chunk_id: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM export_feed WHERE chunk_id = ?1")?
        .execute([chunk_id])?;
    Ok(())
}

/// The entries after `cursor`, oldest first, until about `max_values` values (at least one
/// entry). Entries whose chunk retention deleted are skipped.
pub fn read(conn: &Connection, cursor: i64, max_values: usize) -> rusqlite::Result<Vec<FeedEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT f.seq, f.first, f.count, c.series_id, c.start_ts, c.data
         FROM export_feed f JOIN chunks c ON c.id = f.chunk_id
         WHERE f.seq > ?1 ORDER BY f.seq LIMIT 1000",
    )?;
    let mut rows = stmt.query([cursor])?;
    let mut out = Vec::new();
    let mut total = 0usize;
    while let Some(row) = rows.next()? {
        let (seq, first, count): (i64, usize, usize) = (row.get(0)?, row.get(1)?, row.get(2)?);
        let (series_id, start_ts): (i64, i64) = (row.get(3)?, row.get(4)?);
        let data = row.get_ref(5)?.as_blob()?;
        let mut values = Vec::with_capacity(count);
        let mut index = 0usize;
        chunks::decode(series_id, start_ts, data, |ts, value| {
            if index >= first && index < first.saturating_add(count) {
                values.push((ts, value));
            }
            index = index.saturating_add(1);
        })?;
        total = total.saturating_add(values.len());
        out.push(FeedEntry {
            position: (seq, 0),
            series_id,
            values,
        });
        if total >= max_values {
            break;
        }
    }
    Ok(out)
}

/// Where export `name` stands (0: nothing sent yet).
pub fn cursor(conn: &Connection, name: &str) -> rusqlite::Result<i64> {
    Ok(conn
        .prepare_cached("SELECT seq FROM export_cursors WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Moves export `name`'s cursor to `seq` (after the receiver's 2xx).
pub fn commit(conn: &Connection, name: &str, seq: i64, now: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO export_cursors (name, seq, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET seq = MAX(seq, excluded.seq), updated_at = excluded.updated_at",
    )?
    .execute(params![name, seq, now])?;
    Ok(())
}

/// What export `name` has not sent yet: values, and when the oldest of them was stored.
pub fn lag(conn: &Connection, cursor: i64) -> rusqlite::Result<(u64, Option<i64>)> {
    conn.prepare_cached(
        "SELECT COALESCE(SUM(count), 0), MIN(written_at) FROM export_feed WHERE seq > ?1",
    )?
    .query_row([cursor], |r| Ok((r.get(0)?, r.get(1)?)))
}

/// Deletes the entries every export in `names` has passed (none when one has no cursor yet).
pub fn prune(conn: &Connection, names: &[String]) -> rusqlite::Result<usize> {
    let mut lowest = i64::MAX;
    for name in names {
        lowest = lowest.min(cursor(conn, name)?);
    }
    if names.is_empty() || lowest == 0 {
        return Ok(0);
    }
    conn.prepare_cached("DELETE FROM export_feed WHERE seq <= ?1")?
        .execute([lowest])
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;
    use tributary_wire::FieldValue;

    use super::*;
    use crate::storage::sqlite::chunks::{self, ChunkWriter};

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(chunks::SCHEMA).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn
    }

    fn commit(conn: &mut Connection, writer: &mut ChunkWriter, series: i64, times: &[i64]) {
        let values: Vec<FieldValue> = times.iter().map(|&t| FieldValue::F64(t as f64)).collect();
        let rows: Vec<(i64, i64, &FieldValue)> = times
            .iter()
            .zip(&values)
            .map(|(&t, v)| (series, t, v))
            .collect();
        let tx = conn.transaction().unwrap();
        writer.write(&tx, &rows).unwrap();
        tx.commit().unwrap();
    }

    #[test]
    fn inserts_and_appends_are_read_back_once_in_order() {
        let mut conn = db();
        let mut writer = ChunkWriter::with_feed(true);
        commit(&mut conn, &mut writer, 1, &[10, 20, 30]);
        commit(&mut conn, &mut writer, 2, &[15]);
        commit(&mut conn, &mut writer, 1, &[40, 50]);
        let entries = read(&conn, 0, 100).unwrap();
        let got: Vec<(i64, Vec<i64>)> = entries
            .iter()
            .map(|e| (e.series_id, e.values.iter().map(|v| v.0).collect()))
            .collect();
        assert_eq!(
            got,
            vec![(1, vec![10, 20, 30]), (2, vec![15]), (1, vec![40, 50])]
        );
        // After the cursor, only what is newer; a small budget still reads one entry.
        assert_eq!(read(&conn, entries[1].position.0, 100).unwrap().len(), 1);
        assert_eq!(read(&conn, 0, 1).unwrap().len(), 1);
        commit_cursor_and_prune(&conn, entries[1].position.0);
        assert_eq!(lag(&conn, entries[1].position.0).unwrap().0, 2);
    }

    fn commit_cursor_and_prune(conn: &Connection, seq: i64) {
        super::commit(conn, "a", seq, 1).unwrap();
        assert_eq!(cursor(conn, "a").unwrap(), seq);
        assert_eq!(prune(conn, &["a".to_owned()]).unwrap(), 2);
    }

    #[test]
    fn retention_keeps_the_feed_true() {
        let mut conn = db();
        let mut writer = ChunkWriter::with_feed(true);
        commit(&mut conn, &mut writer, 1, &[10, 20, 30]);
        commit(&mut conn, &mut writer, 1, &[40, 50]);
        let tx = conn.transaction().unwrap();
        // Everything before 25 goes: two of the first entry's values.
        chunks::trim(&tx, 1, 25, 10).unwrap();
        tx.commit().unwrap();
        let got: Vec<Vec<i64>> = read(&conn, 0, 100)
            .unwrap()
            .iter()
            .map(|e| e.values.iter().map(|v| v.0).collect())
            .collect();
        assert_eq!(got, vec![vec![30], vec![40, 50]]);
        let tx = conn.transaction().unwrap();
        chunks::trim(&tx, 1, 1_000, 10).unwrap();
        tx.commit().unwrap();
        assert!(read(&conn, 0, 100).unwrap().is_empty());
    }
}
