//! Damaged buffers: checking, inspecting and salvaging (`tributary-agent buffer inspect |
//! repair`, and the check the agent runs at start).
//!
//! A buffer SQLite cannot read (flipped bytes on an SD card, a torn write on a device without
//! power-loss protection) must not stop the agent or make it crash-loop. [`salvage`] moves the
//! file aside (with its WAL, which holds committed transactions) as `buffer.db.corrupt-<time>`
//! and copies into a fresh buffer whatever can still be read: the epoch and sequence marks, each
//! row of points that decodes (a row that reads but does not decode goes to the quarantine with
//! its bytes, so it is reported rather than lost), the quarantine, the MQTT delivery records and
//! the input checkpoints. Sequences the salvage could not read are added to the drop count, so
//! the collector sees an explained gap, not a silent one. The damaged file stays on disk for
//! anyone who wants to try harder.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::Points;
use super::store::{SCHEMA, SCHEMA_VERSION, insert_block};

/// Consecutive unreadable places the point walk skips before it gives up on the table.
const MAX_SKIPS: u32 = 64;

/// What SQLite's own check says of `path`: empty when it is sound. `full` runs
/// `integrity_check` (indexes against tables too), otherwise `quick_check` (pages and records;
/// a read of the whole file). A file that does not open as a database is one problem.
pub fn integrity(path: &Path, full: bool) -> Vec<String> {
    let check = || -> rusqlite::Result<Vec<String>> {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let pragma = if full {
            "PRAGMA integrity_check(100)"
        } else {
            "PRAGMA quick_check(100)"
        };
        let rows: Vec<String> = conn
            .prepare(pragma)?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows.into_iter().filter(|r| r != "ok").collect())
    };
    match check() {
        Ok(problems) => problems,
        // Damage is what SQLite finds wrong with the file. A full disk, an I/O error or a
        // lock says nothing about it, and salvaging (which writes a copy) would only fail or
        // make things worse: the open that follows reports those.
        Err(e) if is_damage(&e) => vec![e.to_string()],
        Err(_) => Vec::new(),
    }
}

/// Whether an error says the file itself is damaged.
pub fn is_damage(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// What `buffer inspect` shows.
#[derive(Debug, Default)]
pub struct Inspection {
    pub epoch: Option<String>,
    pub last_seq: u64,
    pub dropped_total: u64,
    pub points: u64,
    pub rows: u64,
    pub bytes: u64,
    /// (sequence, time in ns, name) of the oldest and newest buffered point.
    pub oldest: Option<(u64, i64, String)>,
    pub newest: Option<(u64, i64, String)>,
    pub quarantined: u64,
    /// The newest quarantined records: (received at, source, topic, reason).
    pub recent_quarantine: Vec<(i64, String, String, String)>,
    /// SQLite's `quick_check` findings (empty: sound).
    pub problems: Vec<String>,
}

/// Reads what the buffer at `path` holds, without changing it.
pub fn inspect(path: &Path) -> rusqlite::Result<Inspection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let meta = |key: &str| -> rusqlite::Result<Option<u64>> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
    };
    let mut inspection = Inspection {
        epoch: conn
            .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
                r.get(0)
            })
            .optional()?,
        dropped_total: meta("dropped_total")?.unwrap_or(0),
        ..Inspection::default()
    };
    let raw_len = raw_len_column(&conn);
    let (points, rows, bytes, last): (u64, u64, u64, Option<u64>) = conn.query_row(
        &format!(
            "SELECT coalesce(sum(count), 0), count(*),
                    coalesce(sum(coalesce({raw_len}, length(body))), 0),
                    max(seq + count - 1) FROM points"
        ),
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    inspection.points = points;
    inspection.rows = rows;
    inspection.bytes = bytes;
    inspection.last_seq = meta("last_seq")?.unwrap_or(0).max(last.unwrap_or(0));
    let end_point = |order: &str| -> rusqlite::Result<Option<(u64, i64, String)>> {
        let row: Option<(u64, Option<Points>)> = conn
            .query_row(
                &format!(
                    "SELECT seq, ends, body, {raw_len} FROM points ORDER BY seq {order} LIMIT 1"
                ),
                [],
                |r| {
                    let points =
                        Points::from_stored(r.get(2)?, r.get_ref(1)?.as_blob()?, r.get(3)?);
                    Ok((r.get(0)?, points.ok()))
                },
            )
            .optional()?;
        Ok(row.and_then(|(seq, points)| {
            let points = points?;
            let index = if order == "DESC" {
                points.len().checked_sub(1)?
            } else {
                0
            };
            let point = tributary_wire::codec::decode_point(points.get(index)).ok()?;
            Some((
                seq.saturating_add(u64::try_from(index).ok()?),
                point.ts,
                point.name,
            ))
        }))
    };
    inspection.oldest = end_point("ASC")?;
    inspection.newest = end_point("DESC")?;
    inspection.quarantined = conn.query_row("SELECT count(*) FROM quarantine", [], |r| {
        r.get::<_, u64>(0)
    })?;
    inspection.recent_quarantine = conn
        .prepare(
            "SELECT received_at, source, topic, reason FROM quarantine ORDER BY id DESC LIMIT 10",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    drop(conn);
    inspection.problems = integrity(path, false);
    Ok(inspection)
}

/// What a salvage recovered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Salvage {
    /// Where the damaged file now is.
    pub moved_to: PathBuf,
    /// Whether the epoch (and so the collector's deduplication of what was already sent)
    /// survived. Without it the salvaged points go out under a new epoch.
    pub epoch_kept: bool,
    pub points: u64,
    /// Rows that read but did not decode: kept in the quarantine with their bytes (their
    /// points count as dropped, so the collector sees the gap explained).
    pub undecodable_rows: u64,
    pub undecodable_points: u64,
    /// Sequences inside the buffered range that could not be read at all.
    pub lost_points: u64,
    pub quarantine: u64,
    pub deliveries: u64,
    pub checkpoints: u64,
}

impl std::fmt::Display for Salvage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} points salvaged, {} unreadable and {} in {} undecodable rows (quarantined with their bytes; all counted as dropped), {} quarantined records, {} MQTT delivery records, {} checkpoints; epoch {}; the damaged file is {}",
            self.points,
            self.lost_points,
            self.undecodable_points,
            self.undecodable_rows,
            self.quarantine,
            self.deliveries,
            self.checkpoints,
            if self.epoch_kept {
                "kept"
            } else {
                "lost (a new one starts)"
            },
            self.moved_to.display()
        )
    }
}

/// The companion files SQLite keeps next to `path`.
fn companions(path: &Path) -> [PathBuf; 2] {
    let with = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [with("-wal"), with("-shm")]
}

/// Moves `path` (and its WAL and shared-memory files) aside; returns the new path.
pub fn move_aside(path: &Path) -> std::io::Result<PathBuf> {
    let stamp = tributary_wire::time::now_ns() / 1_000_000_000;
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".corrupt-{stamp}"));
    let aside = PathBuf::from(name);
    std::fs::rename(path, &aside)?;
    for (from, to) in companions(path).iter().zip(companions(&aside)) {
        if from.exists() {
            std::fs::rename(from, to)?;
        }
    }
    Ok(aside)
}

/// Moves the buffer at `path` aside and copies what can be read of it into a fresh buffer at
/// `path` (see the module docs). Fails only if the fresh buffer cannot be written, or the file
/// cannot be moved.
pub fn salvage(path: &Path) -> Result<Salvage, String> {
    let aside =
        move_aside(path).map_err(|e| format!("cannot move {} aside: {e}", path.display()))?;
    let mut report = Salvage {
        moved_to: aside.clone(),
        ..Salvage::default()
    };
    let fresh = Connection::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let write = |e: rusqlite::Error| format!("{}: {e}", path.display());
    fresh
        .execute_batch(&format!(
            "PRAGMA journal_mode = WAL; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION};"
        ))
        .map_err(write)?;
    // The old file may not even open: then the fresh buffer starts empty.
    let old = match Connection::open_with_flags(&aside, OpenFlags::SQLITE_OPEN_READ_WRITE) {
        Ok(old) => old,
        Err(_) => return Ok(report),
    };
    let tx = fresh.unchecked_transaction().map_err(write)?;

    // Marks: each key on its own, so one unreadable value does not lose the others.
    let meta = |key: &str| -> Option<rusqlite::types::Value> {
        old.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .ok()
    };
    for key in ["epoch", "created_at", "refused_total"] {
        if let Some(value) = meta(key) {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                params![key, value],
            )
            .map_err(write)?;
        }
    }
    report.epoch_kept = matches!(meta("epoch"), Some(rusqlite::types::Value::Text(_)));
    let as_int = |value: Option<rusqlite::types::Value>| match value {
        Some(rusqlite::types::Value::Integer(v)) => non_negative(v),
        _ => 0,
    };
    let mut last_seq = as_int(meta("last_seq"));
    let dropped_before = as_int(meta("dropped_total"));

    // Points: a walk by sequence that steps over what does not read.
    let mut next: i64 = 0;
    let mut skip: i64 = 1;
    let mut skips = 0;
    let mut covered: Vec<(u64, u64)> = Vec::new();
    let select = format!(
        "SELECT seq, count, ends, body, {} FROM points WHERE seq >= ?1 ORDER BY seq LIMIT 1",
        raw_len_column(&old)
    );
    loop {
        let row = old
            .query_row(&select, [next], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, Option<u64>>(4)?,
                ))
            })
            .optional();
        let (seq, count, ends, body, raw_len) = match row {
            Ok(Some(row)) => {
                skip = 1;
                skips = 0;
                row
            }
            Ok(None) => break,
            Err(_) => {
                skips += 1;
                if skips > MAX_SKIPS {
                    break;
                }
                next = next.saturating_add(skip);
                skip = skip.saturating_mul(4);
                continue;
            }
        };
        next = seq.saturating_add(count.max(1));
        let decoded = Points::from_stored(body.clone(), &ends, raw_len)
            .ok()
            .filter(|p| u64::try_from(p.len()).ok() == u64::try_from(count).ok())
            .filter(|p| {
                p.iter()
                    .all(|b| tributary_wire::codec::decode_point(b).is_ok())
            });
        match decoded {
            Some(points) => {
                insert_block(&tx, non_negative(seq), &points).map_err(write)?;
                report.points += non_negative(count);
                covered.push((
                    non_negative(seq),
                    non_negative(seq.saturating_add(count) - 1),
                ));
            }
            None => {
                tx.execute(
                    "INSERT INTO quarantine (received_at, source, topic, payload, reason) VALUES (?1, 'buffer', ?2, ?3, ?4)",
                    params![
                        tributary_wire::time::now_ns(),
                        format!("seq {seq} (+{count})"),
                        body,
                        if raw_len.is_some() {
                            "salvaged from a damaged buffer: the row's points (a zstd frame) do not decode"
                        } else {
                            "salvaged from a damaged buffer: the row's points do not decode"
                        }
                    ],
                )
                .map_err(write)?;
                report.undecodable_rows += 1;
                report.undecodable_points += non_negative(count);
                covered.push((
                    non_negative(seq),
                    non_negative(seq.saturating_add(count.max(1)) - 1),
                ));
            }
        }
    }
    // Sequences between readable rows (and after the last, up to the mark) were lost.
    for pair in covered.windows(2) {
        report.lost_points += pair[1].0.saturating_sub(pair[0].1 + 1);
    }
    if let Some(&(_, end)) = covered.last() {
        report.lost_points += last_seq.saturating_sub(end);
        last_seq = last_seq.max(end);
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('last_seq', ?1), ('dropped_total', ?2)",
        params![
            last_seq,
            dropped_before + report.lost_points + report.undecodable_points
        ],
    )
    .map_err(write)?;

    // The rest, row by row until a row does not read.
    let copy = |select: &str, insert: &str, columns: usize| -> Result<u64, String> {
        let Ok(mut stmt) = old.prepare(select) else {
            return Ok(0);
        };
        let Ok(mut rows) = stmt.query([]) else {
            return Ok(0);
        };
        let mut copied = 0;
        while let Ok(Some(row)) = rows.next() {
            let values: Option<Vec<rusqlite::types::Value>> =
                (0..columns).map(|i| row.get(i).ok()).collect();
            let Some(values) = values else {
                continue;
            };
            tx.execute(insert, rusqlite::params_from_iter(values))
                .map_err(write)?;
            copied += 1;
        }
        Ok(copied)
    };
    report.quarantine = copy(
        "SELECT received_at, source, topic, payload, reason FROM quarantine ORDER BY id",
        "INSERT INTO quarantine (received_at, source, topic, payload, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
        5,
    )?;
    report.deliveries = copy(
        "SELECT session, entries FROM deliveries ORDER BY id",
        "INSERT INTO deliveries (session, entries) VALUES (?1, ?2)",
        2,
    )?;
    report.checkpoints = copy(
        "SELECT source, key, value FROM checkpoints",
        "INSERT OR REPLACE INTO checkpoints (source, key, value) VALUES (?1, ?2, ?3)",
        3,
    )?;
    tx.commit().map_err(write)?;
    Ok(report)
}

/// A count or sequence read from a damaged file as SQLite's signed integer: a negative one is
/// garbage, taken as 0.
/// What to select for a row's `raw_len`: the column where the file has it (schema 3 on),
/// NULL in an older file, whose bodies are all stored as they are.
fn raw_len_column(conn: &Connection) -> &'static str {
    let has = conn
        .query_row(
            "SELECT count(*) FROM pragma_table_info('points') WHERE name = 'raw_len'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap_or(0);
    if has > 0 { "raw_len" } else { "NULL" }
}

fn non_negative(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod conversion_tests {
    use super::non_negative;

    #[test]
    fn garbage_below_zero_reads_as_zero() {
        assert_eq!(non_negative(-1), 0);
        assert_eq!(non_negative(i64::MIN), 0);
        assert_eq!(non_negative(42), 42);
    }
}
