//! The buffer's SQLite file: synchronous operations, run off the async executor by the caller.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tributary_wire::Reject;

use tracing::warn;
use tributary_common::errors::ErrorCounter;
use tributary_common::sqlite::{OpenError, open_wal};

use super::reserve::Reserve;
use super::{Checkpoint, Depth, Ingest, Points};
use crate::config::WhenFull;

/// Bytes counted per point or reject on top of its payload, for the `max_size` bound (points
/// share rows, so this over-counts a little: the offset, and a share of the row's header).
pub const ROW_OVERHEAD: usize = 16;

/// What buffered data counts against `max_size`, written once: in Rust for what is in memory,
/// and as SQL for what is in the tables. Every size the buffer keeps comes from these.
pub mod size {
    use super::ROW_OVERHEAD;

    /// Points whose encodings take `bytes`, `count` of them.
    pub fn points(bytes: usize, count: usize) -> u64 {
        bytes.saturating_add(count.saturating_mul(ROW_OVERHEAD)) as u64
    }

    /// A reject, from the lengths of its payload, topic, reason and source.
    pub fn reject(payload: usize, topic: usize, reason: usize, source: usize) -> u64 {
        [payload, topic, reason, source, ROW_OVERHEAD]
            .iter()
            .fold(0usize, |sum, n| sum.saturating_add(*n)) as u64
    }

    /// [`points`] of a `points` row, in SQL: the bytes of its points unpacked, as counted
    /// before they were stored.
    pub fn points_sql() -> String {
        format!("(coalesce(raw_len, length(body)) + count * {ROW_OVERHEAD})")
    }

    /// [`reject`] of a `quarantine` row, in SQL.
    pub fn reject_sql() -> String {
        format!(
            "(length(payload) + length(topic) + length(reason) + length(source) + {ROW_OVERHEAD})"
        )
    }
}

/// A row of `points` is closed once it holds this many points...
const BLOCK_POINTS: usize = 1024;
/// ...or this many bytes.
const BLOCK_BYTES: usize = 64 << 10;

/// How much of a point the collector refused is kept in the quarantine.
const REFUSED_KEPT: usize = 4096;

/// Page cache per connection, in KiB.
const CACHE_KIB: u64 = 512;

/// Most rejects carried in one batch.
const REJECTS_PER_BATCH: usize = 100;

/// 1: one point per row, sequences from AUTOINCREMENT. 2: blocks of points, sequences kept
/// in `meta`. 3: a block's body may be packed (zstd), with `raw_len` its unpacked length.
pub(crate) const SCHEMA_VERSION: i64 = 3;

/// Delivery entries kept per MQTT session: one per possible packet id, so any message the
/// broker may still hold unacknowledged is covered.
const DELIVERIES_KEPT: u64 = 65_536;

/// Bytes of one packed delivery entry: packet id (u16, little endian) and digest.
const DELIVERY_ENTRY: usize = 10;

/// The delivery rows of one session still in the table, oldest first: (row id, entries).
#[derive(Debug, Default)]
struct DeliveryLog {
    rows: std::collections::VecDeque<(i64, u64)>,
    entries: u64,
}

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value
);
CREATE TABLE IF NOT EXISTS points (
    seq     INTEGER PRIMARY KEY,
    count   INTEGER NOT NULL,
    ends    BLOB NOT NULL,
    body    BLOB NOT NULL,
    raw_len INTEGER
);
CREATE TABLE IF NOT EXISTS quarantine (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at INTEGER NOT NULL,
    source      TEXT NOT NULL,
    topic       TEXT NOT NULL,
    payload     BLOB NOT NULL,
    reason      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    session TEXT NOT NULL,
    entries BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    source TEXT NOT NULL,
    key    TEXT NOT NULL,
    value  BLOB NOT NULL,
    PRIMARY KEY (source, key)
) WITHOUT ROWID;
";

/// What can go wrong with the buffer file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("buffer database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("buffer database {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// The buffer writer has stopped (the agent is shutting down).
    #[error(transparent)]
    WriterGone(#[from] super::WriterGone),
    /// A blocking task that worked on the buffer failed.
    #[error("a buffer task failed: {0}")]
    Task(String),
    /// The disk is full and nothing may be dropped (`when_full = "block"`): new points wait
    /// for the forwarder's deletes.
    #[error(
        "buffer database {path}: the disk is full; new data waits until confirmed points are deleted"
    )]
    DiskFull { path: PathBuf },
}

impl StoreError {
    /// Whether the file is damaged (what a salvage is for).
    pub fn is_damage(&self) -> bool {
        match self {
            StoreError::Sqlite { source, .. } => super::repair::is_damage(source),
            StoreError::Invalid { .. }
            | StoreError::DiskFull { .. }
            | StoreError::WriterGone(_)
            | StoreError::Task(_) => false,
        }
    }

    /// Whether the disk (or file system) is full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Sqlite { source, .. } => {
                source.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
            }
            StoreError::DiskFull { .. } => true,
            StoreError::Invalid { .. } | StoreError::WriterGone(_) | StoreError::Task(_) => false,
        }
    }
}

/// What one append committed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    pub points: u64,
    pub rejects: u64,
    /// Points deleted by `drop_oldest` in this transaction.
    pub dropped: u64,
    /// The highest sequence committed so far.
    pub last_seq: u64,
}

/// Points and rejects read for one batch.
#[derive(Debug, Default)]
pub struct StoredBatch {
    /// Sequence of the first point; the points have consecutive sequences.
    pub first_seq: u64,
    pub points: Points,
    /// More points follow right after these, left out by the count or byte limit.
    pub more: bool,
    pub rejects: Vec<Reject>,
}

impl StoredBatch {
    /// Sequence of the last point (`first_seq - 1` when there are none).
    pub fn last_seq(&self) -> u64 {
        self.first_seq + self.points.len() as u64 - 1
    }

    /// The bytes this batch takes in the buffer, as counted against `max_size`.
    pub fn buffered_size(&self) -> u64 {
        let points = size::points(self.points.byte_len(), self.points.len());
        let rejects: u64 = self
            .rejects
            .iter()
            .map(|r| {
                size::reject(
                    r.payload.len(),
                    r.topic.len(),
                    r.reason.len(),
                    r.source.len(),
                )
            })
            .sum();
        points.saturating_add(rejects)
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty() && self.rejects.is_empty()
    }
}

/// The writing side of the buffer file. One per agent; used by the writer task only.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    epoch: String,
    dropped_total: u64,
    last_seq: u64,
    max_size: u64,
    when_full: WhenFull,
    depth: Arc<Depth>,
    /// Per MQTT session, the delivery rows in the table (loaded on first use).
    delivery_logs: HashMap<Arc<str>, DeliveryLog>,
    /// Disk space held back for deletes on a full disk.
    reserve: Reserve,
    /// When the reserve was last checked for (re)creation.
    last_ensure: Option<std::time::Instant>,
    /// A write failed for want of disk since the reserve was last held.
    disk_full: bool,
    /// Where logged warnings are counted.
    errors: ErrorCounter,
}

impl Store {
    /// Opens (creating if needed) the buffer at `path`, with `disk_reserve` bytes held back
    /// beside it for deletes on a full disk ([`Reserve`]). On a full disk opening may need
    /// room too (the WAL of a killed process is replayed): the reserve is given back for it.
    /// Warnings are counted in `errors` (component `buffer`).
    pub fn open(
        path: &Path,
        max_size: u64,
        when_full: WhenFull,
        depth: Arc<Depth>,
        disk_reserve: u64,
        errors: ErrorCounter,
    ) -> Result<Store, StoreError> {
        let reserve = Reserve::new(path, disk_reserve);
        let store = match Store::open_once(path, max_size, when_full, Arc::clone(&depth)) {
            Err(e) if e.is_disk_full() && reserve.release() => {
                warn!(path = %path.display(), "the disk is full; gave back the buffer's reserve to open it");
                errors.count("buffer", "reserve_released");
                Store::open_once(path, max_size, when_full, depth)
            }
            other => other,
        };
        let mut store = store?;
        store.reserve = reserve;
        store.errors = errors;
        // A disk without room for the reserve is full as far as the buffer is concerned,
        // from the first commit on: a restarted agent must not grow the database into the
        // room the last one gave back.
        if !store.reserve.ensure() || !store.reserve.room_beside() {
            warn!(path = %path.display(), "the disk has no room for the buffer's reserve; new points go only into room the buffer frees");
            store.errors.count("buffer", "disk_full");
            store.set_disk_full(true);
        }
        Ok(store)
    }

    fn open_once(
        path: &Path,
        max_size: u64,
        when_full: WhenFull,
        depth: Arc<Depth>,
    ) -> Result<Store, StoreError> {
        let sql = |source| StoreError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let (mut conn, mut version) = open_connection(path)?;
        if version == 1 {
            migrate_from_v1(&mut conn).map_err(sql)?;
        } else if version == 2 {
            // Rows written by version 2 keep their bodies as they are (`raw_len` NULL).
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; ALTER TABLE points ADD COLUMN raw_len INTEGER;
                 PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(sql)?;
            version = SCHEMA_VERSION;
        }
        conn.execute_batch(SCHEMA).map_err(sql)?;
        // Written only when it changes: on a full disk even this write may not fit.
        if version != SCHEMA_VERSION {
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(sql)?;
        }

        let epoch: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql)?;
        let epoch = match epoch {
            Some(epoch) => epoch,
            None => {
                let epoch = hex::encode(rand::random::<[u8; 16]>());
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('epoch', ?1), ('created_at', ?2), ('dropped_total', 0)",
                    params![epoch, tributary_wire::time::now_ns()],
                )
                .map_err(sql)?;
                epoch
            }
        };
        let (dropped_total, refused_total): (u64, u64) = conn
            .query_row(
                "SELECT coalesce((SELECT value FROM meta WHERE key = 'dropped_total'), 0),
                        coalesce((SELECT value FROM meta WHERE key = 'refused_total'), 0)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(sql)?;
        let (points, point_bytes): (u64, u64) = conn
            .query_row(
                &format!(
                    "SELECT coalesce(sum(count), 0), coalesce(sum({}), 0) FROM points",
                    size::points_sql()
                ),
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(sql)?;
        let reject_bytes: u64 = conn
            .query_row(
                &format!(
                    "SELECT coalesce(sum({}), 0) FROM quarantine",
                    size::reject_sql()
                ),
                [],
                |r| r.get(0),
            )
            .map_err(sql)?;
        // The mark in `meta` survives deletes; the rows are a second opinion.
        let last_seq: u64 = conn
            .query_row(
                "SELECT max(coalesce((SELECT value FROM meta WHERE key = 'last_seq'), 0),
                            coalesce((SELECT max(seq + count - 1) FROM points), 0))",
                [],
                |r| r.get(0),
            )
            .map_err(sql)?;
        depth.points.store(points, Ordering::Relaxed);
        depth.dropped_total.store(dropped_total, Ordering::Relaxed);
        depth.refused_total.store(refused_total, Ordering::Relaxed);
        depth
            .bytes
            .store(point_bytes.saturating_add(reject_bytes), Ordering::Relaxed);
        Ok(Store {
            conn,
            path: path.to_owned(),
            epoch,
            dropped_total,
            last_seq,
            max_size,
            when_full,
            depth,
            delivery_logs: HashMap::new(),
            reserve: Reserve::new(path, 0),
            last_ensure: None,
            disk_full: false,
            errors: ErrorCounter::default(),
        })
    }

    /// After a write failed for want of disk: gives back the reserve (if it is held) and
    /// checkpoints the whole WAL into the database, which grows into the freed room, so the
    /// next transaction writes the WAL from its start instead of growing it. (A passive
    /// checkpoint would leave the WAL in use while the forwarder reads, and the retry would
    /// grow it into the reserve's room.)
    fn make_room(&mut self) {
        if !self.disk_full {
            self.set_disk_full(true);
        }
        if self.reserve.release() {
            warn!(path = %self.path.display(), "the disk is full; gave back the buffer's reserve so the WAL can be checkpointed and confirmed points deleted");
            self.errors.count("buffer", "reserve_released");
        }
        self.checkpoint();
    }

    /// After a delete: while the disk has been full, checkpoints, so the pages the delete
    /// freed are there for the next commit without the WAL growing.
    fn after_delete(&mut self) {
        if self.disk_full {
            self.checkpoint();
        }
        self.maybe_ensure_reserve();
    }

    /// Takes the reserve back once the disk has room again (checked at most every few
    /// seconds); with the reserve held, the disk is no longer taken for full.
    fn maybe_ensure_reserve(&mut self) {
        let due = self
            .last_ensure
            .is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(5));
        if due {
            self.last_ensure = Some(std::time::Instant::now());
            let held = self.reserve.ensure();
            if self.disk_full && held && self.reserve.room_beside() {
                tracing::info!(path = %self.path.display(), "the disk has room again; the buffer holds its reserve");
                self.set_disk_full(false);
            }
        }
    }

    /// Whether the disk reserve is held now.
    pub fn reserve_held(&self) -> bool {
        self.reserve.held()
    }

    fn sql(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The epoch of this database.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Points discarded by the overflow policy since the database was made.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// The highest sequence committed.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Whether `incoming` more bytes fit under `max_size`. An empty buffer always takes an
    /// item, so one oversized item cannot stall the agent forever.
    pub fn has_room(&self, incoming: u64) -> bool {
        let bytes = self.depth.bytes();
        bytes == 0 || bytes + incoming <= self.max_size
    }

    /// The latest digest stored for each packet id of an MQTT `session`.
    pub fn deliveries(&self, session: &str) -> Result<HashMap<u16, [u8; 8]>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT entries FROM deliveries WHERE session = ?1 ORDER BY id")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([session], |r| r.get::<_, Vec<u8>>(0))
            .map_err(|e| self.sql(e))?;
        let mut latest = HashMap::new();
        for entries in rows {
            let entries = entries.map_err(|e| self.sql(e))?;
            for entry in entries.chunks_exact(DELIVERY_ENTRY) {
                let pkid = u16::from_le_bytes([entry[0], entry[1]]);
                let mut digest = [0u8; 8];
                digest.copy_from_slice(&entry[2..]);
                latest.insert(pkid, digest);
            }
        }
        Ok(latest)
    }

    /// Every state checkpoint an input stored under `source`.
    pub fn checkpoints(&self, source: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, value FROM checkpoints WHERE source = ?1")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([source], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// Commits `items` in one durable transaction, applying `drop_oldest` if they would
    /// overflow. The caller acknowledges the items only if this returns `Ok`.
    ///
    /// Once a write has failed for want of disk, the buffer is in "disk full" mode until the
    /// disk has room for the reserve again: the database may not grow, because a database
    /// that grows needs new room to checkpoint its WAL into, which a full disk does not have,
    /// and then nothing (not even a delete) can be written. So new points go only into pages
    /// the database has free: under `drop_oldest` the oldest points are dropped first, in a
    /// transaction of their own, to make them; under `block` the points wait for the
    /// forwarder's deletes. Every commit is then followed by a checkpoint, so the WAL is
    /// written from its start instead of growing.
    pub fn append(&mut self, items: &[Ingest]) -> Result<AppendOutcome, StoreError> {
        if !self.disk_full {
            match self.append_once(items) {
                Err(e) if e.is_disk_full() => {
                    warn!(path = %self.path.display(), when_full = ?self.when_full, "the disk is full; the buffer takes new points only into room it frees");
                    self.errors.count("buffer", "disk_full");
                    self.set_disk_full(true);
                }
                other => return other,
            }
        }
        self.maybe_ensure_reserve();
        if !self.disk_full {
            return self.append_once(items);
        }
        // Twice what comes in: points take more pages than their bytes (rows, indexes).
        let incoming: u64 = items.iter().map(Ingest::size).sum();
        let mut need = incoming.saturating_mul(2).saturating_add(256 << 10);
        let mut dropped = 0u64;
        // Each round drops more; the database cannot grow (`max_page_count`), so a commit
        // that does not fit fails instead.
        for _ in 0..4 {
            let free = self.free_pages_bytes().unwrap_or(0);
            if free < need {
                if self.when_full != WhenFull::DropOldest || self.depth.points() == 0 {
                    return Err(StoreError::DiskFull {
                        path: self.path.clone(),
                    });
                }
                let room = need.saturating_sub(free);
                dropped = dropped.saturating_add(match self.drop_only(room) {
                    Err(e) if e.is_disk_full() => {
                        self.make_room();
                        self.drop_only(room)?
                    }
                    other => other?,
                });
                self.checkpoint();
            }
            let result = self.append_once(items);
            self.checkpoint();
            match result {
                Ok(mut outcome) => {
                    outcome.dropped = outcome.dropped.saturating_add(dropped);
                    return Ok(outcome);
                }
                Err(e) if e.is_disk_full() => need = need.saturating_mul(2),
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::DiskFull {
            path: self.path.clone(),
        })
    }

    /// Enters or leaves "disk full" mode ([`Store::append`]): while in it, the database is
    /// held at its size (`max_page_count`), so no commit can grow it past what the disk can
    /// checkpoint.
    fn set_disk_full(&mut self, on: bool) {
        self.disk_full = on;
        let limit: i64 = if on {
            self.conn
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .unwrap_or(i64::from(u32::MAX))
        } else {
            // SQLite's default.
            4_294_967_294
        };
        if let Err(e) = self
            .conn
            .query_row(&format!("PRAGMA max_page_count = {limit}"), [], |_| Ok(()))
        {
            warn!(path = %self.path.display(), error = %e, "cannot bound the buffer database's size");
            self.errors.count("buffer", "max_page_count");
        }
    }

    /// Bytes of the pages the database has free (its freelist).
    fn free_pages_bytes(&self) -> rusqlite::Result<u64> {
        let (free, page): (i64, i64) = self.conn.query_row(
            "SELECT freelist_count, page_size FROM pragma_freelist_count, pragma_page_size",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(u64::try_from(free.saturating_mul(page)).unwrap_or(0))
    }

    /// Drops at least `need` bytes of the oldest points in a transaction of its own, counted
    /// like any overflow drop; returns how many points went.
    fn drop_only(&mut self, need: u64) -> Result<u64, StoreError> {
        let (count, freed) = in_transaction(&mut self.conn, &self.path, |tx| {
            let (count, freed) = drop_oldest(tx, need)?;
            if count > 0 {
                tx.execute(
                    "UPDATE meta SET value = value + ?1 WHERE key = 'dropped_total'",
                    [count],
                )?;
            }
            Ok((count, freed))
        })?;
        self.dropped_total = self.dropped_total.saturating_add(count);
        self.depth
            .dropped_total
            .store(self.dropped_total, Ordering::Relaxed);
        self.depth
            .points
            .fetch_sub(count.min(self.depth.points()), Ordering::Relaxed);
        self.depth
            .bytes
            .fetch_sub(freed.min(self.depth.bytes()), Ordering::Relaxed);
        Ok(count)
    }

    /// Copies the whole WAL into the database and lets the next write start it over,
    /// waiting (up to the busy timeout) for the forwarder's reads. Returns whether it did.
    ///
    /// If the database has no room to grow into (the WAL holds pages past its end, from
    /// before the disk filled), the reserve is given back for it.
    fn checkpoint(&mut self) -> bool {
        let restart = |conn: &Connection| {
            conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
        };
        let mut checkpoint = restart(&self.conn);
        let full = matches!(&checkpoint,
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull));
        if full && self.reserve.release() {
            warn!(path = %self.path.display(), "the disk is full; gave back the buffer's reserve so the WAL can be checkpointed");
            self.errors.count("buffer", "reserve_released");
            checkpoint = restart(&self.conn);
        }
        match checkpoint {
            Ok((0, _, _)) => true,
            Ok((_, log, done)) => {
                warn!(path = %self.path.display(), log, done, "the WAL could not be checkpointed whole; readers held it");
                self.errors.count("buffer", "checkpoint_busy");
                false
            }
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "the WAL could not be checkpointed; the disk has no room for the database to grow");
                self.errors.count("buffer", "checkpoint_failed");
                false
            }
        }
    }

    /// [`Store::append`] in one transaction, without the full-disk handling.
    fn append_once(&mut self, items: &[Ingest]) -> Result<AppendOutcome, StoreError> {
        let incoming: u64 = items.iter().map(Ingest::size).sum();
        let bytes_before = self.depth.bytes();
        let (max_size, when_full, last_seq) = (self.max_size, self.when_full, self.last_seq);
        let logs = &mut self.delivery_logs;
        let (outcome, freed, pruned) = in_transaction(&mut self.conn, &self.path, |tx| {
            let mut outcome = AppendOutcome::default();
            let mut freed = 0u64;
            let over = (bytes_before + incoming).saturating_sub(max_size);
            if when_full == WhenFull::DropOldest && over > 0 {
                let need = over;
                let (count, bytes) = drop_oldest(tx, need)?;
                outcome.dropped = count;
                freed = bytes;
                if count > 0 {
                    tx.execute(
                        "UPDATE meta SET value = value + ?1 WHERE key = 'dropped_total'",
                        [count],
                    )?;
                }
            }
            outcome.last_seq = insert_points(tx, last_seq, items.iter().map(|item| &item.points))?;
            outcome.points = outcome.last_seq - last_seq;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO quarantine (received_at, source, topic, payload, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for reject in items.iter().flat_map(|item| &item.rejects) {
                    insert.execute(params![
                        reject.received_at,
                        reject.source,
                        reject.topic,
                        reject.payload,
                        reject.reason
                    ])?;
                    outcome.rejects += 1;
                }
            }
            write_checkpoints(tx, items)?;
            let pruned = write_deliveries(tx, items, logs)?;
            Ok((outcome, freed, pruned))
        })?;

        for (session, row) in pruned.added {
            let log = self.delivery_logs.entry(session).or_default();
            log.entries += row.1;
            log.rows.push_back(row);
        }
        for (session, rows) in pruned.removed {
            if let Some(log) = self.delivery_logs.get_mut(&session) {
                for _ in 0..rows {
                    if let Some((_, entries)) = log.rows.pop_front() {
                        log.entries -= entries;
                    }
                }
            }
        }
        self.last_seq = outcome.last_seq;
        self.dropped_total += outcome.dropped;
        self.depth
            .dropped_total
            .store(self.dropped_total, Ordering::Relaxed);
        self.depth
            .points
            .fetch_add(outcome.points, Ordering::Relaxed);
        self.depth
            .points
            .fetch_sub(outcome.dropped, Ordering::Relaxed);
        self.depth.bytes.store(
            (bytes_before + incoming).saturating_sub(freed),
            Ordering::Relaxed,
        );
        Ok(outcome)
    }

    /// Deletes points through `seq` and rejects through `reject_id`, after the collector
    /// confirmed them. Not fsynced: a delete lost to a power cut only causes a retry. On a
    /// full disk the reserve is given back for it ([`Reserve`]).
    pub fn delete_through(&mut self, seq: u64, reject_id: u64) -> Result<(), StoreError> {
        let result = match self.delete_through_once(seq, reject_id) {
            Err(e) if e.is_disk_full() => {
                self.make_room();
                self.delete_through_once(seq, reject_id)
            }
            other => other,
        };
        if result.is_ok() {
            self.after_delete();
        }
        result
    }

    fn delete_through_once(&mut self, seq: u64, reject_id: u64) -> Result<(), StoreError> {
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| self.sql(e))?;
        let result = self.delete_in_transaction(seq, reject_id);
        let restore = self.conn.pragma_update(None, "synchronous", "FULL");
        let (points, bytes) = result?;
        restore.map_err(|e| self.sql(e))?;
        self.depth
            .points
            .fetch_sub(points.min(self.depth.points()), Ordering::Relaxed);
        self.depth
            .bytes
            .fetch_sub(bytes.min(self.depth.bytes()), Ordering::Relaxed);
        Ok(())
    }

    fn delete_in_transaction(
        &mut self,
        seq: u64,
        reject_id: u64,
    ) -> Result<(u64, u64), StoreError> {
        in_transaction(&mut self.conn, &self.path, |tx| {
            // The row holding `seq` may go on past it: it keeps the rest, under a new key.
            let mut kept = (0, 0);
            if let Some(block) = block_holding(tx, seq)?
                && block.last_seq() > seq
            {
                let cut = (seq + 1 - block.seq) as usize;
                let rest = block.points.slice(cut..block.points.len());
                replace_block(tx, block.seq, seq + 1, &rest)?;
                kept = (cut, block.points.span_len(0..cut));
            }
            let (points, point_bytes): (u64, u64) = tx
                .prepare_cached(&format!(
                    "SELECT coalesce(sum(count), 0), coalesce(sum({}), 0) FROM points WHERE seq <= ?1",
                    size::points_sql()
                ))?
                .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let kept_bytes = size::points(kept.1, kept.0);
            let (points, point_bytes) = (points + kept.0 as u64, point_bytes + kept_bytes);
            tx.prepare_cached("DELETE FROM points WHERE seq <= ?1")?
                .execute([seq])?;
            let reject_bytes: u64 = tx
                .prepare_cached(&format!(
                    "SELECT coalesce(sum({}), 0) FROM quarantine WHERE id <= ?1",
                    size::reject_sql()
                ))?
                .query_row([reject_id], |r| r.get(0))?;
            tx.prepare_cached("DELETE FROM quarantine WHERE id <= ?1")?
                .execute([reject_id])?;
            Ok((points, point_bytes + reject_bytes))
        })
    }
}

impl Store {
    /// Moves the point at `seq` to the quarantine (as line protocol) with `reason`; on a full
    /// disk, after giving back the reserve.
    pub fn quarantine_point(&mut self, seq: u64, reason: &str) -> Result<(), StoreError> {
        match self.quarantine_point_once(seq, reason) {
            Err(e) if e.is_disk_full() => {
                self.make_room();
                self.quarantine_point_once(seq, reason)
            }
            other => other,
        }
    }

    fn quarantine_point_once(&mut self, seq: u64, reason: &str) -> Result<(), StoreError> {
        let topic = format!("buffer seq {seq}");
        let moved = in_transaction(&mut self.conn, &self.path, |tx| {
            let Some(block) = block_holding(tx, seq)? else {
                return Ok(None);
            };
            // The row keeps the points before and after this one, as two rows.
            let index = (seq - block.seq) as usize;
            let body = block.points.get(index).to_vec();
            replace_block(tx, block.seq, block.seq, &block.points.slice(0..index))?;
            let after = block.points.slice(index + 1..block.points.len());
            if !after.is_empty() {
                insert_block(tx, seq + 1, &after)?;
            }
            let mut payload = match tributary_wire::codec::decode_point(&body) {
                Ok(point) => tributary_wire::line_protocol::format_point(&point).into_bytes(),
                Err(_) => body.clone(),
            };
            // The collector refused the point, possibly for its size: keep a copy that can
            // still travel to the collector's quarantine.
            payload.truncate(REFUSED_KEPT);
            tx.execute(
                "INSERT INTO quarantine (received_at, source, topic, payload, reason) VALUES (?1, 'forward', ?2, ?3, ?4)",
                params![tributary_wire::time::now_ns(), topic, payload, reason],
            )?;
            // Its sequence leaves a gap the collector must not count as lost.
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('refused_total', 1)
                 ON CONFLICT (key) DO UPDATE SET value = value + 1",
                [],
            )?;
            Ok(Some((body, payload)))
        })?;
        let Some((body, payload)) = moved else {
            return Ok(());
        };
        self.depth.refused_total.fetch_add(1, Ordering::Relaxed);
        let added = size::reject(payload.len(), topic.len(), reason.len(), "forward".len());
        let removed = size::points(body.len(), 1);
        self.depth
            .points
            .fetch_sub(1.min(self.depth.points()), Ordering::Relaxed);
        let bytes = self.depth.bytes().saturating_add(added);
        self.depth
            .bytes
            .store(bytes.saturating_sub(removed), Ordering::Relaxed);
        Ok(())
    }
}

/// Inserts the runs of points in order, in rows of up to [`BLOCK_POINTS`] points and about
/// [`BLOCK_BYTES`], with sequences following `last_seq`. Returns the new last sequence.
fn insert_points<'a>(
    tx: &rusqlite::Transaction<'_>,
    last_seq: u64,
    runs: impl Iterator<Item = &'a Points>,
) -> rusqlite::Result<u64> {
    let mut next = last_seq + 1;
    let mut block = Points::new();
    for run in runs {
        let mut start = 0;
        while start < run.len() {
            let mut end = start;
            let mut bytes = block.byte_len();
            while end < run.len()
                && block.len() + (end - start) < BLOCK_POINTS
                && bytes < BLOCK_BYTES
            {
                bytes += run.get(end).len();
                end += 1;
            }
            block.extend_from(run, start..end);
            start = end;
            if block.len() >= BLOCK_POINTS || block.byte_len() >= BLOCK_BYTES {
                insert_block(tx, next, &block)?;
                next += block.len() as u64;
                block = Points::new();
            }
        }
    }
    if !block.is_empty() {
        insert_block(tx, next, &block)?;
        next += block.len() as u64;
    }
    if next > last_seq + 1 {
        tx.prepare_cached(
            "INSERT INTO meta (key, value) VALUES ('last_seq', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )?
        .execute([next - 1])?;
    }
    Ok(next - 1)
}

/// One row of `points`: consecutive sequences from `seq`.
struct Block {
    seq: u64,
    points: Points,
}

impl Block {
    fn last_seq(&self) -> u64 {
        self.seq + self.points.len() as u64 - 1
    }
}

/// Stores `points` as one row from `seq`, packed when that makes it smaller.
pub(crate) fn insert_block(conn: &Connection, seq: u64, points: &Points) -> rusqlite::Result<()> {
    let (body, raw_len) = points.packed();
    conn.prepare_cached(
        "INSERT INTO points (seq, count, ends, body, raw_len) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        seq,
        points.len(),
        points.ends_blob(),
        &body[..],
        raw_len
    ])?;
    Ok(())
}

/// Replaces the row at `old_seq` by `points` at `new_seq` (by nothing if `points` is empty).
fn replace_block(
    conn: &Connection,
    old_seq: u64,
    new_seq: u64,
    points: &Points,
) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM points WHERE seq = ?1")?
        .execute([old_seq])?;
    if !points.is_empty() {
        insert_block(conn, new_seq, points)?;
    }
    Ok(())
}

/// Reads a row selected as `seq, ends, body, raw_len`.
fn block_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Block> {
    let seq = row.get::<_, u64>(0)?;
    let ends = row.get_ref(1)?.as_blob()?;
    let body: Vec<u8> = row.get(2)?;
    let raw_len: Option<u64> = row.get(3)?;
    let points = Points::from_stored(body, ends, raw_len).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Blob, Box::new(e))
    })?;
    if points.is_empty() {
        return Err(rusqlite::Error::FromSqlConversionFailure(
            1,
            rusqlite::types::Type::Blob,
            "a stored row holds no points".into(),
        ));
    }
    Ok(Block { seq, points })
}

/// The first sequence and count of the row holding `seq`, if one does.
fn row_holding(conn: &Connection, seq: u64) -> rusqlite::Result<Option<(u64, u64)>> {
    let row: Option<(u64, u64)> = conn
        .prepare_cached("SELECT seq, count FROM points WHERE seq <= ?1 ORDER BY seq DESC LIMIT 1")?
        .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(row.filter(|&(first, count)| first + count > seq))
}

/// The row holding `seq`, if one does.
fn block_holding(conn: &Connection, seq: u64) -> rusqlite::Result<Option<Block>> {
    row_holding(conn, seq)?
        .map(|(first, _)| read_block(conn, first))
        .transpose()
}

/// The row whose first sequence is `seq` (which must exist).
fn read_block(conn: &Connection, seq: u64) -> rusqlite::Result<Block> {
    conn.prepare_cached("SELECT seq, ends, body, raw_len FROM points WHERE seq = ?1")?
        .query_row([seq], block_from_row)
}

/// Moves a version 1 buffer (one point per row, sequences from AUTOINCREMENT) to rows of
/// points, keeping every point and its sequence.
fn migrate_from_v1(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let last_seq: i64 = tx.query_row(
        "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'points'), 0)",
        [],
        |r| r.get(0),
    )?;
    tx.execute_batch("ALTER TABLE points RENAME TO points_v1")?;
    tx.execute_batch(SCHEMA)?;
    {
        let mut select = tx.prepare("SELECT seq, body FROM points_v1 ORDER BY seq")?;
        let mut rows = select.query([])?;
        while let Some(row) = rows.next()? {
            let mut points = Points::new();
            points.push_encoded(row.get_ref(1)?.as_blob()?);
            insert_block(&tx, row.get::<_, u64>(0)?, &points)?;
        }
    }
    tx.execute_batch("DROP TABLE points_v1")?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('last_seq', ?1)
         ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
        [last_seq],
    )?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()
}

/// Upserts state checkpoints; only the last value per key is written.
fn write_checkpoints(tx: &rusqlite::Transaction<'_>, items: &[Ingest]) -> rusqlite::Result<()> {
    let mut latest: HashMap<(&str, &str), &[u8]> = HashMap::new();
    for item in items {
        if let Some(Checkpoint::State { source, key, value }) = &item.checkpoint {
            latest.insert((source, key), value);
        }
    }
    if latest.is_empty() {
        return Ok(());
    }
    let mut upsert = tx.prepare_cached(
        "INSERT INTO checkpoints (source, key, value) VALUES (?1, ?2, ?3)
         ON CONFLICT (source, key) DO UPDATE SET value = excluded.value",
    )?;
    let mut delete = tx.prepare_cached("DELETE FROM checkpoints WHERE source = ?1 AND key = ?2")?;
    for ((source, key), value) in latest {
        if value.is_empty() {
            delete.execute(params![source, key])?;
        } else {
            upsert.execute(params![source, key, value])?;
        }
    }
    Ok(())
}

/// Delivery rows written and pruned in a transaction, applied to the in-memory logs only once
/// it commits.
#[derive(Default)]
struct DeliveryChanges {
    added: Vec<(Arc<str>, (i64, u64))>,
    /// Session -> number of its oldest rows deleted.
    removed: Vec<(Arc<str>, usize)>,
}

/// Writes one packed row of delivery entries per session, and prunes rows no longer needed.
fn write_deliveries(
    tx: &rusqlite::Transaction<'_>,
    items: &[Ingest],
    logs: &mut HashMap<Arc<str>, DeliveryLog>,
) -> rusqlite::Result<DeliveryChanges> {
    let mut packed: Vec<(Arc<str>, Vec<u8>)> = Vec::new();
    for item in items {
        if let Some(Checkpoint::Delivery {
            session,
            pkid,
            digest,
        }) = &item.checkpoint
        {
            let entries = match packed.iter_mut().find(|(s, _)| s == session) {
                Some((_, entries)) => entries,
                None => {
                    packed.push((Arc::clone(session), Vec::new()));
                    &mut packed.last_mut().expect("just pushed").1
                }
            };
            entries.extend_from_slice(&pkid.to_le_bytes());
            entries.extend_from_slice(digest);
        }
    }
    let mut changes = DeliveryChanges::default();
    for (session, entries) in packed {
        if !logs.contains_key(&session) {
            logs.insert(Arc::clone(&session), load_delivery_log(tx, &session)?);
        }
        let count = (entries.len() / DELIVERY_ENTRY) as u64;
        tx.prepare_cached("INSERT INTO deliveries (session, entries) VALUES (?1, ?2)")?
            .execute(params![&*session, entries])?;
        let id = tx.last_insert_rowid();
        // Keep the newest rows that together hold at least DELIVERIES_KEPT entries.
        let log = &logs[&session];
        let mut total = log.entries + count;
        let mut cut = None;
        let mut removed = 0;
        for (row_id, row_entries) in &log.rows {
            if total - row_entries < DELIVERIES_KEPT {
                break;
            }
            total -= row_entries;
            cut = Some(*row_id);
            removed += 1;
        }
        if let Some(cut) = cut {
            tx.prepare_cached("DELETE FROM deliveries WHERE session = ?1 AND id <= ?2")?
                .execute(params![&*session, cut])?;
            changes.removed.push((Arc::clone(&session), removed));
        }
        changes.added.push((session, (id, count)));
    }
    Ok(changes)
}

fn load_delivery_log(conn: &Connection, session: &str) -> rusqlite::Result<DeliveryLog> {
    let mut stmt = conn.prepare(&format!(
        "SELECT id, length(entries) / {DELIVERY_ENTRY} FROM deliveries WHERE session = ?1 ORDER BY id"
    ))?;
    let mut log = DeliveryLog::default();
    for row in stmt.query_map([session], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, u64>(1)?))
    })? {
        let row = row?;
        log.entries += row.1;
        log.rows.push_back(row);
    }
    Ok(log)
}

/// Runs `work` in an immediate (write-locking) transaction and commits it; an error rolls it
/// back and names the file.
fn in_transaction<T>(
    conn: &mut Connection,
    path: &Path,
    work: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
) -> Result<T, StoreError> {
    let sql = |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    // Dropping `tx` on an error rolls it back.
    let value = work(&tx).map_err(sql)?;
    tx.commit().map_err(sql)?;
    Ok(value)
}

/// Deletes the oldest points until at least `need` bytes are freed (or none are left).
fn drop_oldest(tx: &rusqlite::Transaction<'_>, need: u64) -> Result<(u64, u64), rusqlite::Error> {
    let mut freed = 0u64;
    let mut count = 0u64;
    let mut cut = None;
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT seq, count, {} FROM points WHERE seq > ?1 ORDER BY seq LIMIT 256",
        size::points_sql()
    ))?;
    let mut after = 0u64;
    'scan: loop {
        let rows: Vec<(u64, u64, u64)> = stmt
            .query_map([after], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        if rows.is_empty() {
            break;
        }
        for (seq, n, size) in rows {
            if freed + size > need && n > 1 {
                // Only part of this row has to go: it keeps the rest.
                let block = read_block(tx, seq)?;
                let mut k = 0;
                while freed < need {
                    freed += size::points(block.points.get(k).len(), 1);
                    k += 1;
                }
                let rest = block.points.slice(k..block.points.len());
                replace_block(tx, block.seq, block.seq + k as u64, &rest)?;
                count += k as u64;
                break 'scan;
            }
            freed += size;
            count += n;
            cut = Some(seq);
            after = seq;
            if freed >= need {
                break 'scan;
            }
        }
    }
    if let Some(cut) = cut {
        tx.execute("DELETE FROM points WHERE seq <= ?1", [cut])?;
    }
    Ok((count, freed))
}

/// Opens the buffer file (WAL, `synchronous = FULL`, a schema no newer than this agent's:
/// `tributary_common::sqlite::open_wal`) with the buffer's own settings; returns its schema
/// version too.
fn open_connection(path: &Path) -> Result<(Connection, i64), StoreError> {
    let sql = |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let (conn, version) = open_wal(path, std::time::Duration::from_secs(5), SCHEMA_VERSION)
        .map_err(|e| match e {
            OpenError::Sqlite(source) => sql(source),
            other => StoreError::Invalid {
                path: path.to_owned(),
                message: other.to_string(),
            },
        })?;
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
        .map_err(sql)?;
    // The writer appends and the reader scans forward: neither gains from SQLite's default
    // 2 MiB page cache, and the agent's memory is small on purpose.
    conn.pragma_update(None, "cache_size", -(CACHE_KIB as i64))
        .map_err(sql)?;
    Ok((conn, version))
}

/// The reading side of the buffer file, for the forwarder. WAL lets it read while the writer
/// commits.
pub struct Reader {
    conn: Connection,
    path: PathBuf,
}

impl Reader {
    /// Opens a second connection to a buffer that [`Store::open`] has set up.
    pub fn open(path: &Path) -> Result<Reader, StoreError> {
        Ok(Reader {
            conn: open_connection(path)?.0,
            path: path.to_owned(),
        })
    }

    /// Reads the oldest points after `after_seq` (consecutive sequences only, at most
    /// `max_points` and, past the first, `max_bytes`) and the oldest rejects after
    /// `after_reject`.
    pub fn read_batch(
        &mut self,
        after_seq: u64,
        after_reject: u64,
        max_points: usize,
        max_bytes: usize,
    ) -> Result<StoredBatch, StoreError> {
        read_batch(&self.conn, after_seq, after_reject, max_points, max_bytes).map_err(|source| {
            StoreError::Sqlite {
                path: self.path.clone(),
                source,
            }
        })
    }

    /// Event time of the first point after `seq`, if any.
    pub fn oldest_ts_after(&mut self, seq: u64) -> Result<Option<i64>, StoreError> {
        let from = seq + 1;
        let block = (|| {
            let start = row_holding(&self.conn, from)?.map_or(from, |(first, _)| first);
            self.conn
                .prepare_cached(
                    "SELECT seq, ends, body, raw_len FROM points WHERE seq >= ?1 ORDER BY seq LIMIT 1",
                )?
                .query_row([start], block_from_row)
                .optional()
        })()
        .map_err(|source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        })?;
        Ok(block.and_then(|block| {
            let index = from.saturating_sub(block.seq) as usize;
            tributary_wire::codec::decode_point(block.points.get(index))
                .ok()
                .map(|p| p.ts)
        }))
    }
}

fn read_batch(
    conn: &Connection,
    after_seq: u64,
    after_reject: u64,
    max_points: usize,
    max_bytes: usize,
) -> rusqlite::Result<StoredBatch> {
    let mut batch = StoredBatch::default();
    let from = after_seq + 1;
    let start = row_holding(conn, from)?.map_or(from, |(first, _)| first);
    let mut stmt = conn.prepare_cached(
        "SELECT seq, ends, body, raw_len FROM points WHERE seq >= ?1 ORDER BY seq",
    )?;
    let mut rows = stmt.query([start])?;
    let max_points = max_points.max(1);
    while let Some(row) = rows.next()? {
        let block = block_from_row(row)?;
        let skip = from.saturating_sub(block.seq) as usize;
        let all = skip..block.points.len();
        let points = &mut batch.points;
        if points.is_empty() {
            batch.first_seq = block.seq + skip as u64;
        } else if block.seq + skip as u64 != batch.first_seq + points.len() as u64 {
            // A gap (points dropped under the reader) ends the batch.
            break;
        }
        if points.len() + all.len() <= max_points
            && points.byte_len() + block.points.span_len(all.clone()) <= max_bytes
        {
            points.extend_from(&block.points, all);
            continue;
        }
        // The limits end the batch inside this row. The first point always goes, even past
        // the byte limit, or a big point would stall; otherwise the batch ends at a row, so the
        // delete after it removes whole rows.
        if points.is_empty() {
            let mut end = skip + 1;
            while end < all.end
                && end - skip < max_points
                && block.points.span_len(skip..end + 1) <= max_bytes
            {
                end += 1;
            }
            points.extend_from(&block.points, skip..end);
        }
        batch.more = true;
        break;
    }
    drop(rows);
    let bytes = batch.points.byte_len();
    if batch.points.is_empty() {
        // No points: the next sequence keeps the empty batch's arithmetic valid.
        batch.first_seq = after_seq + 1;
    }

    let mut stmt = conn.prepare_cached(
        "SELECT id, received_at, source, topic, payload, reason FROM quarantine
         WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    let rejects = stmt.query_map(params![after_reject, REJECTS_PER_BATCH], |r| {
        Ok(Reject {
            id: r.get::<_, u64>(0)?,
            received_at: r.get(1)?,
            source: r.get(2)?,
            topic: r.get(3)?,
            payload: r.get(4)?,
            reason: r.get(5)?,
        })
    })?;
    let mut bytes = bytes;
    for reject in rejects {
        let reject = reject?;
        let size = reject.payload.len() + reject.reason.len() + reject.topic.len();
        if !batch.rejects.is_empty() && bytes + size > max_bytes {
            break;
        }
        bytes += size;
        batch.rejects.push(reject);
    }
    Ok(batch)
}

#[cfg(test)]
mod tests;
