//! The SQLite store's schema, its migrations from older versions, and opening a connection.

use super::*;
use tributary_common::sqlite::{OpenError, open_wal};

/// Raw values live in `chunks` (see [`chunks`]); schema 2 and older kept them in `points`, a
/// row per value, which [`Storage::open`] converts.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS series (
    id       INTEGER PRIMARY KEY,
    name     TEXT NOT NULL,
    tags     TEXT NOT NULL,
    field    TEXT NOT NULL,
    kind     TEXT NOT NULL,
    first_ts INTEGER NOT NULL,
    last_ts  INTEGER NOT NULL,
    exact    INTEGER NOT NULL DEFAULT 0,
    UNIQUE (name, tags, field)
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value
);
CREATE TABLE IF NOT EXISTS marks (
    agent_id    TEXT NOT NULL,
    epoch       TEXT NOT NULL,
    last_seq    INTEGER NOT NULL,
    last_reject INTEGER NOT NULL,
    dropped     INTEGER NOT NULL,
    explained   INTEGER NOT NULL DEFAULT 0,
    first_seen  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    PRIMARY KEY (agent_id, epoch)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS agents (
    agent_id         TEXT PRIMARY KEY,
    first_seen       INTEGER NOT NULL,
    last_seen        INTEGER NOT NULL,
    batches          INTEGER NOT NULL DEFAULT 0,
    points_received  INTEGER NOT NULL DEFAULT 0,
    duplicates       INTEGER NOT NULL DEFAULT 0,
    quarantined      INTEGER NOT NULL DEFAULT 0,
    gaps             INTEGER NOT NULL DEFAULT 0,
    backlog_points   INTEGER,
    backlog_bytes    INTEGER,
    oldest_unsent_ts INTEGER,
    clock_skew_ns    INTEGER,
    clock_error_ns   INTEGER
);
CREATE TABLE IF NOT EXISTS quarantine (
    id              INTEGER PRIMARY KEY,
    received_at     INTEGER NOT NULL,
    origin          TEXT NOT NULL,
    agent_id        TEXT,
    epoch           TEXT,
    agent_reject_id INTEGER,
    source          TEXT NOT NULL,
    topic           TEXT NOT NULL,
    ts              INTEGER,
    payload         BLOB NOT NULL,
    reason          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_by_time ON quarantine (received_at);
";

/// 2: rollups. 3: raw values in chunks instead of a row per value; `marks.explained`.
/// 4: `agents.clock_error_ns` (the bound of the agent's clock estimate). 5: `series.exact`
/// (see [`super::prom`]; a series from before it counts as not exact). 6: chunks written in
/// the segment format of [`crate::storage::codec`] (older chunks are read as they are; an
/// older collector could not read the new ones, hence the new version). 7: rollup windows in
/// blocks (`rollup_blocks`, [`crate::storage::blocks`]) instead of a row each, and chunks in
/// segment format 2 (decimals); opening an older database converts both.
pub(super) const SCHEMA_VERSION: i64 = 7;

/// Page cache of the writer connection, in KiB.
pub(super) const WRITER_CACHE_KIB: u64 = 64 * 1024;

/// Opens the database (WAL, `synchronous = FULL`, a schema no newer than this collector's:
/// `tributary_common::sqlite::open_wal`); returns its schema version too.
pub(super) fn open_connection(path: &Path) -> Result<(Connection, i64), StorageError> {
    open_wal(path, Duration::from_secs(10), SCHEMA_VERSION).map_err(|e| match e {
        OpenError::Sqlite(source) => StorageError::Sqlite {
            path: path.display().to_string(),
            source,
        },
        other => StorageError::Other(format!("{}: {other}", path.display())),
    })
}

pub(super) fn load_series(conn: &Connection) -> rusqlite::Result<SeriesCache> {
    let mut cache = SeriesCache::default();
    let mut stmt = conn.prepare("SELECT id, name, tags, field, kind FROM series")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    for row in rows {
        let (id, name, tags, field, kind) = row?;
        let tags: BTreeMap<String, String> = serde_json::from_str(&tags).unwrap_or_default();
        cache.insert(&name, &tags, &field, id, ValueClass::of_kind(&kind));
    }
    Ok(cache)
}

/// Adds a column to a table of a database from before it, if it is missing.
pub(super) fn add_column(
    conn: &Connection,
    table: &str,
    column: &str,
    kind: &str,
) -> rusqlite::Result<()> {
    let has: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get(0),
    )?;
    if !has {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind};"))?;
    }
    Ok(())
}

/// Adds `marks.explained` to a database from before it (schema 2 and older): drop counts
/// already seen are taken as used.
pub(super) fn add_explained(conn: &Connection) -> rusqlite::Result<()> {
    let has: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('marks') WHERE name = 'explained'",
        [],
        |r| r.get(0),
    )?;
    if !has {
        conn.execute_batch(
            "ALTER TABLE marks ADD COLUMN explained INTEGER NOT NULL DEFAULT 0;
             UPDATE marks SET explained = dropped;",
        )?;
    }
    Ok(())
}

/// Moves the values of a database from before chunks (a `points` row per value) into chunks,
/// in one transaction, and drops `points`; returns how many values moved.
pub(super) fn convert_points(conn: &Connection) -> rusqlite::Result<u64> {
    let exists: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'points'",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(0);
    }
    let tx = conn.unchecked_transaction()?;
    let mut writer = ChunkWriter::default();
    let mut moved = 0u64;
    {
        let mut stmt = tx.prepare(
            "SELECT p.series_id, p.ts, p.value, s.kind = 'boolean' FROM points p
             JOIN series s ON s.id = p.series_id ORDER BY p.series_id, p.ts, p.n",
        )?;
        let mut rows = stmt.query([])?;
        let mut group: Vec<(i64, i64, FieldValue)> = Vec::with_capacity(100_000);
        loop {
            let row = rows.next()?;
            let done = row.is_none();
            if let Some(row) = row {
                let value = match (row.get_ref(2)?, row.get::<_, bool>(3)?) {
                    (ValueRef::Integer(v), true) => FieldValue::Bool(v != 0),
                    (ValueRef::Integer(v), false) => FieldValue::I64(v),
                    (ValueRef::Real(v), _) => FieldValue::F64(v),
                    (ValueRef::Text(v), _) => {
                        FieldValue::Str(String::from_utf8_lossy(v).into_owned())
                    }
                    (ValueRef::Null | ValueRef::Blob(_), _) => continue,
                };
                group.push((row.get(0)?, row.get(1)?, value));
            }
            if group.len() == 100_000 || (done && !group.is_empty()) {
                let borrowed: Vec<(i64, i64, &FieldValue)> =
                    group.iter().map(|(s, t, v)| (*s, *t, v)).collect();
                moved = moved.saturating_add(writer.write(&tx, &borrowed)?.values);
                group.clear();
            }
            if done {
                break;
            }
        }
    }
    tx.execute_batch("DROP TABLE points; DELETE FROM meta WHERE key = 'next_n';")?;
    tx.commit()?;
    Ok(moved)
}
