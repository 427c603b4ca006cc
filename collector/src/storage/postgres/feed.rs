//! The export feed in PostgreSQL. Chunks are only ever inserted here (a commit writes new
//! rows, never appends to old ones), so the chunks table is the feed itself: each row carries
//! the id of the transaction that wrote it (`xid`, an `xid8`) and when (`written_at`).
//!
//! Several collectors commit at once, so ids and `xid`s do not arrive in order: a reader that
//! took every row after its cursor could pass a row whose transaction commits a moment later.
//! An export therefore reads only rows written by transactions older than the oldest one still
//! running (`xid < pg_snapshot_xmin(pg_current_snapshot())`), in `(xid, id)` order: no row can
//! appear behind its cursor afterwards. The cost: a transaction left open on the server holds
//! the exports back until it ends.
//!
//! One collector at a time runs an export (a session advisory lock per export name, released
//! when its connection goes); the others wait to take over.

use postgres::Client;
use tributary_wire::FieldValue;

use super::PgError;
use crate::storage::feed::{FeedEntry, Position, SeriesRow};

/// Rows read per query.
const ROWS: i64 = 1000;

/// The advisory lock key of export `name` (stable across collectors and versions).
fn lock_key(name: &str) -> i64 {
    // FNV-1a, 64-bit, over a prefix that keeps it apart from the other locks.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"tributary-export:".iter().chain(name.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// Takes the lock of export `name` for this session; whether it is held.
pub fn claim(client: &mut Client, name: &str) -> Result<bool, PgError> {
    Ok(client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&lock_key(name)])?
        .get(0))
}

/// Chunks written after `after`, by transactions that have all ended, oldest first, until
/// about `max_values` values (at least one row).
pub fn read(
    client: &mut Client,
    after: Position,
    max_values: usize,
) -> Result<Vec<FeedEntry>, PgError> {
    let rows = client.query(
        "SELECT xid::text::bigint, id, series_id, start_ts, data FROM chunks
         WHERE (xid, id) > ($1::text::xid8, $2) AND xid < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY xid, id LIMIT $3",
        &[&after.0.to_string(), &after.1, &ROWS],
    )?;
    let mut out = Vec::new();
    let mut total = 0usize;
    for row in rows {
        let (xid, id, series_id, start_ts): (i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let data: &[u8] = row.get(4);
        let mut values: Vec<(i64, FieldValue)> = Vec::new();
        crate::storage::codec::decode(start_ts, data, |ts, value| values.push((ts, value)))
            .map_err(|e| {
                PgError::Schema(format!(
                    "chunk of series {series_id} at {start_ts} does not decode: {e}"
                ))
            })?;
        total = total.saturating_add(values.len());
        out.push(FeedEntry {
            position: (xid, id),
            series_id,
            values,
        });
        if total >= max_values {
            break;
        }
    }
    Ok(out)
}

/// Where export `name` stands ((0, 0): nothing sent yet).
pub fn cursor(client: &mut Client, name: &str) -> Result<Position, PgError> {
    Ok(client
        .query_opt(
            "SELECT xid, id FROM export_cursors WHERE name = $1",
            &[&name],
        )?
        .map_or((0, 0), |row| (row.get(0), row.get(1))))
}

/// Moves export `name`'s cursor to `at` (never back).
pub fn commit(client: &mut Client, name: &str, at: Position, now: i64) -> Result<(), PgError> {
    client.execute(
        "INSERT INTO export_cursors (name, xid, id, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO UPDATE SET xid = excluded.xid, id = excluded.id,
                                          updated_at = excluded.updated_at
         WHERE (export_cursors.xid, export_cursors.id) < (excluded.xid, excluded.id)",
        &[&name, &at.0, &at.1, &now],
    )?;
    Ok(())
}

/// Values after `after` not sent yet, and when the oldest of them was written.
pub fn lag(client: &mut Client, after: Position) -> Result<(u64, Option<i64>), PgError> {
    let row = client.query_one(
        "SELECT COALESCE(SUM(count), 0)::bigint, MIN(written_at) FROM chunks
         WHERE (xid, id) > ($1::text::xid8, $2)",
        &[&after.0.to_string(), &after.1],
    )?;
    Ok((u64::try_from(row.get::<_, i64>(0)).unwrap_or(0), row.get(1)))
}

/// The name, tags, field and kind of each series of `ids` (`None`: not found).
pub fn series(client: &mut Client, ids: &[i64]) -> Result<Vec<(i64, Option<SeriesRow>)>, PgError> {
    let rows = client.query(
        "SELECT id, name, tags, field, kind FROM series WHERE id = ANY($1)",
        &[&ids],
    )?;
    let mut found: std::collections::HashMap<i64, SeriesRow> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
        .collect();
    Ok(ids.iter().map(|id| (*id, found.remove(id))).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn lock_keys_are_stable_and_apart() {
        assert_eq!(super::lock_key("vm"), super::lock_key("vm"));
        assert_ne!(super::lock_key("vm"), super::lock_key("prometheus"));
    }
}
