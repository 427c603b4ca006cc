//! The SQLite store: schema, the group-committing writer thread, and the read pool.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{Semaphore, mpsc};
use tracing::{error, warn};
use tributary_wire::{BatchAck, FieldValue};

use self::chunks::ChunkWriter;
use self::rollups::RollupWriter;
use super::series::{SeriesCache, canonical_tags};
use super::{
    AgentRecord, EpochMark, Origin, QuarantineRecord, QueryResult, RawQuery, RetentionReport,
    SeriesInfo, SeriesPoints, StorageError, StorageOptions, SubmitError, WriteJob,
};
use crate::clean::{Cleaner, Rejection};
use crate::metrics::Metrics;
use crate::rollup::Resolution;

pub mod chunks;
pub mod rollups;

/// Raw values live in `chunks` (see [`chunks`]); schema 2 and older kept them in `points`, a
/// row per value, which [`Storage::open`] converts.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS series (
    id       INTEGER PRIMARY KEY,
    name     TEXT NOT NULL,
    tags     TEXT NOT NULL,
    field    TEXT NOT NULL,
    kind     TEXT NOT NULL,
    first_ts INTEGER NOT NULL,
    last_ts  INTEGER NOT NULL,
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
    clock_skew_ns    INTEGER
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
const SCHEMA_VERSION: i64 = 3;

/// Page cache of the writer connection, in KiB.
const WRITER_CACHE_KIB: u64 = 64 * 1024;

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// What the writer thread is asked to do.
enum Job {
    Write(WriteJob),
    /// Delete what is past its retention (one bounded pass).
    Retention {
        now: i64,
        reply: tokio::sync::oneshot::Sender<Result<RetentionReport, StorageError>>,
    },
    /// Answer between commits (the watchdog's proof that the writer makes progress).
    Ping(tokio::sync::oneshot::Sender<()>),
}

/// Room held in the writer's queue for one batch.
pub struct Reservation {
    permit: mpsc::OwnedPermit<Job>,
}

impl Reservation {
    /// Queues the batch in the room held.
    pub fn submit(self, job: WriteJob) {
        self.permit.send(Job::Write(job));
    }
}

/// The store: a writer thread fed by a bounded queue, and a pool of readers.
pub struct Storage {
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
    /// Dropping it stops the checkpointer.
    checkpoints: Option<(std::sync::mpsc::Sender<()>, JoinHandle<()>)>,
    reads: Arc<ReadPool>,
    metrics: Arc<Metrics>,
}

/// How often the checkpointer copies the WAL into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// WAL frames (pages) past which the checkpointer restarts the WAL (~16 MiB of 4 KiB pages).
const RESTART_FRAMES: i64 = 4096;

/// How long a restarting checkpoint waits for the writer and for readers before it settles
/// for a passive one: while it waits, the writer waits too.
const RESTART_WAIT: Duration = Duration::from_millis(100);

/// Checkpoints the WAL from its own connection, so the writer's commits never pay for it
/// (SQLite's automatic checkpoint runs inside the commit that crosses its threshold).
///
/// Passive checkpoints alone never catch up with a busy writer: the WAL is reused from its
/// start only once a checkpoint has copied all of it, so under steady ingest it grows without
/// bound, and every commit appends to a growing file (the file system zero-fills each new
/// block: a fifth of the writer's time in a profile of the 24 h benchmark). So once the WAL
/// passes [`RESTART_FRAMES`], the checkpointer takes the write lock briefly (a passive pass
/// just copied almost everything), copies the rest and resets the WAL.
fn start_checkpointer(
    path: &Path,
    metrics: Arc<Metrics>,
) -> Result<(std::sync::mpsc::Sender<()>, JoinHandle<()>), StorageError> {
    let conn = open_connection(path).map_err(|source| StorageError::Sqlite {
        path: path.display().to_string(),
        source,
    })?;
    conn.busy_timeout(RESTART_WAIT)
        .map_err(|source| StorageError::Sqlite {
            path: path.display().to_string(),
            source,
        })?;
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("storage-checkpoint".into())
        .spawn(move || {
            let checkpoint = |mode: &str| {
                conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                    r.get::<_, i64>(1)
                })
            };
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(CHECKPOINT_INTERVAL)
            {
                let result = checkpoint("PASSIVE").and_then(|frames| {
                    if frames > RESTART_FRAMES {
                        metrics.wal_restarts.inc();
                        checkpoint("RESTART")?;
                    }
                    Ok(())
                });
                if let Err(e) = result {
                    warn!(error = %e, "WAL checkpoint failed; retrying");
                    metrics.error("storage", "checkpoint");
                }
            }
        })
        .map_err(|e| StorageError::Other(format!("cannot start the checkpoint thread: {e}")))?;
    Ok((stop, handle))
}

impl Storage {
    /// Opens (creating if needed) the database and starts the writer thread.
    pub fn open(options: &StorageOptions, metrics: Arc<Metrics>) -> Result<Storage, StorageError> {
        let path = options.path.as_path();
        let sql = |source| StorageError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StorageError::Other(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let conn = open_connection(path).map_err(sql)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql)?;
        if version > SCHEMA_VERSION {
            return Err(StorageError::Other(format!(
                "{}: schema version {version} is newer than this collector understands",
                path.display()
            )));
        }
        conn.execute_batch(SCHEMA).map_err(sql)?;
        conn.execute_batch(chunks::SCHEMA).map_err(sql)?;
        conn.execute_batch(rollups::SCHEMA).map_err(sql)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sql)?;
        // A transaction touches a leaf page per series it writes to; a cache smaller than that
        // spills dirty pages to the WAL before the commit, writing them twice.
        conn.pragma_update(None, "cache_size", -(WRITER_CACHE_KIB as i64))
            .map_err(sql)?;
        // A multi-row INSERT into a table with a key keeps a statement journal (to undo just
        // that statement on a conflict); in a temporary file, that costs a write per page.
        conn.pragma_update(None, "temp_store", "MEMORY")
            .map_err(sql)?;
        // Checkpoints run on their own thread (start_checkpointer), not inside commits.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(sql)?;
        if version < 3 {
            add_explained(&conn).map_err(sql)?;
            let values = convert_points(&conn).map_err(sql)?;
            if values > 0 {
                tracing::info!(
                    values,
                    "moved the raw values of an older database into chunks"
                );
            }
        }
        let series = load_series(&conn).map_err(sql)?;

        let mut rollups = RollupWriter::new(options.resolutions.clone());
        if version == 1 {
            let windows = rollups::rebuild(&conn, &mut rollups).map_err(sql)?;
            tracing::info!(
                windows,
                "rolled up the points stored before rollups existed"
            );
        }
        let (jobs, rx) = mpsc::channel(options.queue);
        let writer = WriterThread {
            conn,
            path: path.to_owned(),
            series,
            chunks: ChunkWriter::default(),
            commit_max_points: options.commit_max_points,
            metrics: Arc::clone(&metrics),
            cleaner: Cleaner::new(options.rules.clone(), options.time.clone()),
            rollups,
            resolutions: options.resolutions.clone(),
            raw_retention: options.raw_retention,
            dropper: start_dropper().map_err(|e| {
                StorageError::Other(format!("cannot start the storage-free thread: {e}"))
            })?,
        };
        let writer = std::thread::Builder::new()
            .name("storage-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StorageError::Other(format!("cannot start the writer thread: {e}")))?;
        Ok(Storage {
            jobs: Some(jobs),
            writer: Some(writer),
            checkpoints: Some(start_checkpointer(path, Arc::clone(&metrics))?),
            reads: Arc::new(ReadPool::new(path, options.readers)),
            metrics,
        })
    }

    /// Waits up to `wait` for room in the writer's queue and holds it. Ingest reserves before
    /// it decodes, so decoded batches never outnumber the queue (their memory is bounded);
    /// requests past that wait with only their compressed bodies, then get `Busy` (429).
    pub async fn reserve(&self, wait: Duration) -> Result<Reservation, SubmitError> {
        let jobs = self.jobs.clone().ok_or(SubmitError::Closed)?;
        match tokio::time::timeout(wait, jobs.reserve_owned()).await {
            Ok(Ok(permit)) => Ok(Reservation { permit }),
            Ok(Err(_)) => Err(SubmitError::Closed),
            Err(_) => Err(SubmitError::Busy),
        }
    }

    /// Runs one retention pass on the writer thread (between commits) and waits for it.
    pub async fn retain(&self, now: i64) -> Result<RetentionReport, StorageError> {
        let jobs = self.jobs.as_ref().ok_or(StorageError::Closed)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        jobs.send(Job::Retention { now, reply })
            .await
            .map_err(|_| StorageError::Closed)?;
        answer.await.map_err(|_| StorageError::Closed)?
    }

    /// Returns once the writer thread has taken a ping from its queue, behind the batches
    /// queued before it: proof that it makes progress.
    pub async fn ping(&self) -> Result<(), StorageError> {
        let jobs = self.jobs.as_ref().ok_or(StorageError::Closed)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        jobs.send(Job::Ping(reply))
            .await
            .map_err(|_| StorageError::Closed)?;
        answer.await.map_err(|_| StorageError::Closed)
    }

    /// The read side.
    pub fn reads(&self) -> &Arc<ReadPool> {
        &self.reads
    }

    /// Stops taking jobs, lets the writer finish the queued ones, and waits for it.
    pub fn close(&mut self) {
        self.jobs.take();
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            error!("the storage writer thread panicked");
            self.metrics.error("storage", "writer_panicked");
        }
        if let Some((stop, handle)) = self.checkpoints.take() {
            drop(stop);
            if handle.join().is_err() {
                error!("the storage checkpoint thread panicked");
                self.metrics.error("storage", "checkpoint_panicked");
            }
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        self.close();
    }
}

fn load_series(conn: &Connection) -> rusqlite::Result<SeriesCache> {
    let mut cache = SeriesCache::default();
    let mut stmt = conn.prepare("SELECT id, name, tags, field FROM series")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    for row in rows {
        let (id, name, tags, field) = row?;
        let tags: BTreeMap<String, String> = serde_json::from_str(&tags).unwrap_or_default();
        cache.insert(&name, &tags, &field, id);
    }
    Ok(cache)
}

/// Adds `marks.explained` to a database from before it (schema 2 and older): drop counts
/// already seen are taken as used.
fn add_explained(conn: &Connection) -> rusqlite::Result<()> {
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
fn convert_points(conn: &Connection) -> rusqlite::Result<u64> {
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
    let mut moved = 0;
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
                moved += writer.write(&tx, &borrowed)?.values;
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

struct WriterThread {
    conn: Connection,
    path: PathBuf,
    series: SeriesCache,
    chunks: ChunkWriter,
    commit_max_points: usize,
    metrics: Arc<Metrics>,
    cleaner: Cleaner,
    rollups: RollupWriter,
    resolutions: Vec<Resolution>,
    raw_retention: Option<i64>,
    /// Where stored batches go to be freed, off the writer thread.
    dropper: std::sync::mpsc::SyncSender<Vec<tributary_wire::Batch>>,
}

/// Starts the thread that frees stored batches; it ends when the writer drops its sender.
fn start_dropper() -> std::io::Result<std::sync::mpsc::SyncSender<Vec<tributary_wire::Batch>>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<tributary_wire::Batch>>(4);
    std::thread::Builder::new()
        .name("storage-free".into())
        .spawn(move || rx.into_iter().for_each(drop))?;
    Ok(tx)
}

/// A job with what cleaning decided for each of its points (`None`: not cleaned yet).
struct Pending {
    job: WriteJob,
    /// Per point: why it was rejected, if it was.
    verdicts: Option<Vec<Option<Rejection>>>,
}

/// What one transaction stores.
#[derive(Default)]
struct GroupState<'a> {
    /// Values to store: (series id, ts, value), the value borrowed from its batch.
    rows: Vec<(i64, i64, &'a FieldValue)>,
}

impl WriterThread {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut deferred = None;
        loop {
            let first = match deferred.take() {
                Some(job) => job,
                None => match rx.blocking_recv() {
                    Some(job) => job,
                    None => break,
                },
            };
            let first = match first {
                Job::Write(job) => job,
                Job::Retention { now, reply } => {
                    let _ = reply.send(self.retention(now));
                    continue;
                }
                Job::Ping(reply) => {
                    let _ = reply.send(());
                    continue;
                }
            };
            let mut points = first.batch.points.len();
            let mut jobs = vec![Pending {
                job: first,
                verdicts: None,
            }];
            while points < self.commit_max_points {
                match rx.try_recv() {
                    Ok(Job::Write(job)) => {
                        points += job.batch.points.len();
                        jobs.push(Pending {
                            job,
                            verdicts: None,
                        });
                    }
                    Ok(other) => {
                        deferred = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.commit_group(jobs);
        }
    }

    /// Runs time sanity and the rules on the points of each job that are not stored yet
    /// (above the agent's mark), in place, once per job. `store_batch` reads the mark again
    /// inside the transaction: an earlier job of the same group may have raised it.
    fn clean(&mut self, jobs: &mut [Pending]) -> rusqlite::Result<()> {
        for pending in jobs.iter_mut().filter(|p| p.verdicts.is_none()) {
            let job = &mut pending.job;
            let (mark, shift) = match job.origin {
                Origin::Agent => {
                    let mark: u64 = self
                        .conn
                        .prepare_cached(
                            "SELECT last_seq FROM marks WHERE agent_id = ?1 AND epoch = ?2",
                        )?
                        .query_row(params![job.agent_id, job.batch.epoch], |r| {
                            r.get::<_, i64>(0)
                        })
                        .optional()?
                        .map_or(0, |m| m as u64);
                    let shift = self
                        .cleaner
                        .time
                        .batch_shift(job.batch.sent_at, job.received_at);
                    if shift != 0 {
                        self.metrics.clock_corrected_batches.inc();
                    }
                    (mark, shift)
                }
                Origin::LineProtocol => (0, 0),
            };
            let first_seq = job.batch.first_seq;
            let mut verdicts = Vec::with_capacity(job.batch.points.len());
            for (index, point) in job.batch.points.iter_mut().enumerate() {
                if job.origin == Origin::Agent && first_seq + index as u64 <= mark {
                    verdicts.push(None);
                    continue;
                }
                verdicts.push(
                    self.cleaner
                        .clean(&job.agent_id, point, shift, job.received_at)
                        .err(),
                );
            }
            pending.verdicts = Some(verdicts);
        }
        Ok(())
    }

    /// Stores the jobs in one transaction; if that fails, each alone, so one bad batch cannot
    /// fail the others.
    fn commit_group(&mut self, mut jobs: Vec<Pending>) {
        let started = Instant::now();
        if let Err(e) = self.clean(&mut jobs) {
            error!(error = %e, "reading marks to clean a batch failed; the agent will retry");
            self.metrics.error("storage", "clean");
            for pending in jobs {
                let _ = pending.job.reply.send(Err(StorageError::Other(format!(
                    "{}: {e}",
                    self.path.display()
                ))));
            }
            return;
        }
        match self.store_all(&jobs) {
            Ok(acks) => {
                self.metrics.commits.inc();
                self.metrics
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                let mut batches = Vec::with_capacity(jobs.len());
                for (pending, ack) in jobs.into_iter().zip(acks) {
                    self.metrics.points_stored.inc_by(ack.stored);
                    self.metrics.points_duplicate.inc_by(ack.duplicates);
                    self.metrics.rejects_stored.inc_by(ack.rejects_stored);
                    let WriteJob { batch, reply, .. } = pending.job;
                    let _ = reply.send(Ok(ack));
                    batches.push(batch);
                }
                // Freeing a group's points (many small allocations) is not the writer's job:
                // it is the bottleneck of ingest.
                if let Err(returned) = self.dropper.send(batches) {
                    drop(returned);
                }
            }
            Err(e) if jobs.len() > 1 => {
                warn!(error = %e, batches = jobs.len(), "group commit failed; storing the batches one by one");
                self.metrics.error("storage", "group_commit");
                for job in jobs {
                    self.commit_group(vec![job]);
                }
            }
            Err(e) => {
                error!(error = %e, "storing a batch failed; the agent will retry");
                self.metrics.error("storage", "commit");
                // Its points come again: stateful rules must not remember them as seen.
                self.cleaner.reset_state();
                for pending in jobs {
                    let _ = pending.job.reply.send(Err(StorageError::Other(format!(
                        "{}: {e}",
                        self.path.display()
                    ))));
                }
            }
        }
    }

    fn store_all(&mut self, jobs: &[Pending]) -> rusqlite::Result<Vec<BatchAck>> {
        let points: usize = jobs.iter().map(|p| p.job.batch.points.len()).sum();
        let mut state = GroupState {
            rows: Vec::with_capacity(points + points / 4),
        };
        let result = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut acks = Vec::with_capacity(jobs.len());
            for pending in jobs {
                acks.push(store_batch(
                    &tx,
                    &mut self.series,
                    &mut state,
                    pending,
                    &self.metrics,
                )?);
            }
            // Stable: values with equal times keep their arrival order in the chunk.
            state.rows.sort_by_key(|(series, ts, _)| (*series, *ts));
            let chunked = self.chunks.write(&tx, &state.rows)?;
            self.metrics.chunks_written.inc_by(chunked.inserted);
            self.metrics.chunks_appended.inc_by(chunked.appended);
            // Sorted, each series' values are a run: its span is the run's ends, and the
            // numeric values come out in the order the rollups want.
            let rollup_started = Instant::now();
            let mut numeric = Vec::with_capacity(state.rows.len());
            {
                let mut update = tx.prepare_cached(
                    "UPDATE series SET first_ts = min(first_ts, ?2), last_ts = max(last_ts, ?3) WHERE id = ?1",
                )?;
                for run in state.rows.chunk_by(|a, b| a.0 == b.0) {
                    let (id, first, last) = (run[0].0, run[0].1, run[run.len() - 1].1);
                    update.execute(params![id, first, last])?;
                    numeric.extend(
                        run.iter()
                            .filter_map(|(id, ts, v)| Some((*id, *ts, rollups::number(v)?))),
                    );
                }
            }
            let rolled = self.rollups.apply(&tx, &numeric)?;
            self.metrics
                .rollup_seconds
                .observe(rollup_started.elapsed().as_secs_f64());
            self.metrics.rollup_windows.inc_by(rolled.windows);
            self.metrics
                .rollup_late_windows
                .inc_by(rolled.merged_from_disk);
            tx.commit()?;
            Ok(acks)
        })();
        match result {
            Ok(acks) => Ok(acks),
            Err(e) => {
                self.rollups.forget();
                self.chunks.forget();
                // The rollback removed any series created in the transaction: forget their ids
                // by reloading the index (failures are rare; correctness is what matters here).
                match load_series(&self.conn) {
                    Ok(series) => self.series = series,
                    Err(reload) => {
                        error!(error = %reload, "cannot reload the series index after a failed commit");
                        self.metrics.error("storage", "reload_series");
                    }
                }
                Err(e)
            }
        }
    }
}

/// Rows (chunks, windows, quarantined records) one retention pass deletes or rewrites at
/// most, so ingest waits for it only briefly.
const RETENTION_PASS_ROWS: usize = 50_000;

impl WriterThread {
    /// Deletes up to [`RETENTION_PASS_ROWS`] rows that are past their retention: raw points
    /// and quarantined records older than the raw retention, and rollup windows that ended
    /// before their resolution's.
    fn retention(&mut self, now: i64) -> Result<RetentionReport, StorageError> {
        let result = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut report = RetentionReport::default();
            let mut budget = RETENTION_PASS_ROWS;
            let ids: Vec<i64> = tx
                .prepare_cached("SELECT id FROM series ORDER BY id")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            if let Some(keep) = self.raw_retention {
                let cutoff = now.saturating_sub(keep);
                for id in &ids {
                    if budget == 0 {
                        break;
                    }
                    let trimmed = chunks::trim(&tx, *id, cutoff, budget)?;
                    report.points += trimmed.values;
                    budget -= trimmed.rows;
                }
                let n = tx.execute(
                    "DELETE FROM quarantine WHERE id IN
                     (SELECT id FROM quarantine WHERE received_at < ?1 ORDER BY received_at LIMIT ?2)",
                    params![cutoff, budget as i64],
                )?;
                report.quarantined += n as u64;
                budget -= n;
            }
            {
                let mut delete = tx.prepare_cached(
                    "DELETE FROM rollups WHERE (series_id, res, start) IN
                     (SELECT series_id, res, start FROM rollups
                      WHERE series_id = ?1 AND res = ?2 AND start <= ?3 LIMIT ?4)",
                )?;
                for resolution in &self.resolutions {
                    let Some(keep) = resolution.retention else {
                        continue;
                    };
                    // A window goes once all of it is past the horizon.
                    let last_start = now.saturating_sub(keep).saturating_sub(resolution.step);
                    for id in &ids {
                        if budget == 0 {
                            break;
                        }
                        let n = delete.execute(params![
                            id,
                            resolution.step,
                            last_start,
                            budget as i64
                        ])?;
                        report.windows += n as u64;
                        budget -= n;
                    }
                }
            }
            tx.commit()?;
            report.more = budget == 0;
            Ok(report)
        })();
        // Windows and chunks the writer remembers may just have been deleted or rewritten.
        self.rollups.forget();
        self.chunks.forget();
        result.map_err(|source| {
            error!(error = %source, "retention pass failed");
            self.metrics.error("storage", "retention");
            StorageError::Sqlite {
                path: self.path.display().to_string(),
                source,
            }
        })
    }
}

/// Adds one value to the group.
fn record<'a>(state: &mut GroupState<'a>, id: i64, ts: i64, value: &'a FieldValue) {
    state.rows.push((id, ts, value));
}

/// Stores one batch inside the group's transaction: points above the mark (or the reason
/// cleaning gave, in the quarantine), rejects above the reject mark, the marks themselves, and
/// the agent's figures. Line protocol writes have no marks: all their points are new.
fn store_batch<'a>(
    tx: &rusqlite::Transaction<'_>,
    series: &mut SeriesCache,
    state: &mut GroupState<'a>,
    pending: &'a Pending,
    metrics: &Metrics,
) -> rusqlite::Result<BatchAck> {
    let job = &pending.job;
    let batch = &job.batch;
    let agent_origin = job.origin == Origin::Agent;
    // `explained`: how much of the agent's drop count earlier gaps already used.
    let (mark, reject_mark, explained_before): (u64, u64, u64) = if agent_origin {
        tx.query_row(
            "SELECT last_seq, last_reject, explained FROM marks WHERE agent_id = ?1 AND epoch = ?2",
            params![job.agent_id, batch.epoch],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            },
        )
        .optional()?
        .unwrap_or((0, 0, 0))
    } else {
        (0, 0, 0)
    };
    let verdicts = pending.verdicts.as_deref().unwrap_or(&[]);

    let mut stored = 0u64;
    let mut duplicates = 0u64;
    let mut quarantined = 0u64;
    {
        let mut insert_series = tx.prepare_cached(
            "INSERT INTO series (name, tags, field, kind, first_ts, last_ts) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        )?;
        let mut quarantine = tx.prepare_cached(
            "INSERT INTO quarantine (received_at, origin, agent_id, epoch, source, topic, ts, payload, reason)
             VALUES (?1, 'collector', ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let source = if agent_origin {
            "batch"
        } else {
            "line_protocol"
        };
        for (index, point) in batch.points.iter().enumerate() {
            let seq = batch.first_seq + index as u64;
            if agent_origin && seq <= mark {
                duplicates += 1;
                continue;
            }
            if let Some(rejection) = verdicts.get(index).and_then(Option::as_ref) {
                let line = tributary_wire::line_protocol::format_point(point);
                quarantine.execute(params![
                    job.received_at,
                    job.agent_id,
                    batch.epoch,
                    source,
                    if agent_origin {
                        format!("seq {seq}")
                    } else {
                        format!("line {}", index + 1)
                    },
                    point.ts,
                    line.as_bytes(),
                    rejection.to_string()
                ])?;
                metrics.quarantined(&rejection.rule);
                quarantined += 1;
                continue;
            }
            // The agent tag comes from the token, so a device cannot write as another.
            // Known series (the common case): one lookup for the point, one per field.
            if let Some(entry) = series.entry(&point.name, &point.tags, &job.agent_id)
                && point.fields.keys().all(|f| entry.field(f).is_some())
            {
                for (field, value) in &point.fields {
                    let id = entry.field(field).unwrap_or_default();
                    record(state, id, point.ts, value);
                }
                stored += 1;
                continue;
            }
            let mut canonical = None;
            for (field, value) in &point.fields {
                let id = match series.get(&point.name, &point.tags, &job.agent_id, field) {
                    Some(id) => id,
                    None => {
                        let tags = canonical
                            .get_or_insert_with(|| canonical_tags(&point.tags, &job.agent_id));
                        let tags_json = serde_json::to_string(&*tags).unwrap_or_default();
                        insert_series.execute(params![
                            point.name,
                            tags_json,
                            field,
                            value.kind(),
                            point.ts
                        ])?;
                        let id = tx.last_insert_rowid();
                        series.insert(&point.name, tags, field, id);
                        id
                    }
                };
                record(state, id, point.ts, value);
            }
            stored += 1;
        }
    }

    let mut rejects_stored = 0u64;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO quarantine (received_at, origin, agent_id, epoch, agent_reject_id, source, topic, ts, payload, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        let origin = if agent_origin {
            "agent"
        } else {
            "line_protocol"
        };
        for reject in batch
            .rejects
            .iter()
            .filter(|r| !agent_origin || r.id > reject_mark)
        {
            insert.execute(params![
                job.received_at,
                origin,
                job.agent_id,
                batch.epoch,
                reject.id as i64,
                reject.source,
                reject.topic,
                reject.received_at,
                reject.payload,
                reject.reason
            ])?;
            metrics.quarantined(origin);
            rejects_stored += 1;
        }
    }

    // A jump past the mark that the agent's drop count does not explain is a gap. Drops are
    // counted when they happen, which may be before the jump reaches us (a salvaged buffer
    // counts its lost rows at once, and sends the points before them first): the count not
    // yet used by earlier jumps explains this one.
    let mut gaps = 0u64;
    let mut explained_after = explained_before;
    if agent_origin && !batch.points.is_empty() && batch.first_seq > mark + 1 {
        let missing = batch.first_seq - mark - 1;
        let explained = missing.min(batch.dropped.saturating_sub(explained_before));
        explained_after += explained;
        gaps = missing - explained;
        if gaps > 0 {
            warn!(agent = %job.agent_id, epoch = %batch.epoch, mark, first_seq = batch.first_seq, gaps, "sequences missing from an agent without a drop count to explain them");
            metrics.error("storage", "sequence_gap");
        }
    }

    let new_mark = mark.max(batch.last_seq);
    let new_reject_mark = batch
        .rejects
        .last()
        .map_or(reject_mark, |r| reject_mark.max(r.id));
    if agent_origin {
        tx.execute(
        "INSERT INTO marks (agent_id, epoch, last_seq, last_reject, dropped, explained, first_seen, last_seen)
         VALUES (?1, ?2, ?3, ?4, ?5, ?7, ?6, ?6)
         ON CONFLICT (agent_id, epoch) DO UPDATE SET
             last_seq = max(last_seq, excluded.last_seq),
             last_reject = max(last_reject, excluded.last_reject),
             dropped = max(dropped, excluded.dropped),
             explained = max(explained, excluded.explained),
             last_seen = excluded.last_seen",
        params![
            job.agent_id,
            batch.epoch,
            new_mark as i64,
            new_reject_mark as i64,
            batch.dropped as i64,
            job.received_at,
            explained_after as i64
        ],
    )?;
    }
    tx.execute(
        "INSERT INTO agents (agent_id, first_seen, last_seen, batches, points_received, duplicates, quarantined, gaps,
                             backlog_points, backlog_bytes, oldest_unsent_ts, clock_skew_ns)
         VALUES (?1, ?2, ?2, 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (agent_id) DO UPDATE SET
             last_seen = excluded.last_seen,
             batches = batches + 1,
             points_received = points_received + excluded.points_received,
             duplicates = duplicates + excluded.duplicates,
             quarantined = quarantined + excluded.quarantined,
             gaps = gaps + excluded.gaps,
             backlog_points = coalesce(excluded.backlog_points, backlog_points),
             backlog_bytes = coalesce(excluded.backlog_bytes, backlog_bytes),
             oldest_unsent_ts = CASE WHEN excluded.backlog_points IS NULL THEN oldest_unsent_ts ELSE excluded.oldest_unsent_ts END,
             clock_skew_ns = coalesce(excluded.clock_skew_ns, clock_skew_ns)",
        params![
            job.agent_id,
            job.received_at,
            stored as i64,
            duplicates as i64,
            (rejects_stored + quarantined) as i64,
            gaps as i64,
            agent_origin.then_some(batch.status.backlog_points as i64),
            agent_origin.then_some(batch.status.backlog_bytes as i64),
            batch.status.oldest_unsent_ts.filter(|_| agent_origin),
            agent_origin.then(|| job.received_at.saturating_sub(batch.sent_at))
        ],
    )?;
    Ok(BatchAck {
        committed_through: new_mark,
        stored,
        duplicates,
        rejects_stored,
        quarantined,
    })
}

/// Read connections, used one request at a time each, on the blocking pool.
pub struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl ReadPool {
    fn new(path: &Path, size: usize) -> ReadPool {
        ReadPool {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size)),
        }
    }

    /// Runs `work` on a read connection off the async executor.
    pub async fn run<T, F>(self: &Arc<Self>, work: F) -> Result<T, StorageError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| StorageError::Closed)?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let path = pool.path.display().to_string();
            let conn = match pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()
            {
                Some(conn) => conn,
                None => open_connection(&pool.path)
                    .and_then(|c| c.pragma_update(None, "query_only", true).map(|()| c))
                    .map_err(|source| StorageError::Sqlite {
                        path: path.clone(),
                        source,
                    })?,
            };
            let result = work(&conn).map_err(|source| StorageError::Sqlite { path, source });
            pool.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
            result
        })
        .await
        .map_err(|e| StorageError::Other(format!("read task failed: {e}")))?
    }
}

/// A series a query selected.
pub(crate) struct Candidate {
    pub id: i64,
    pub tags: BTreeMap<String, String>,
    pub field: String,
    pub kind: String,
    pub first_ts: i64,
    pub last_ts: i64,
}

/// The series named `name` (any name when empty) with `field` (any when `None`) that have the
/// `tags` and data in `[from, to)`, ordered by tags and field.
pub(crate) fn matching_series(
    conn: &Connection,
    name: &str,
    field: Option<&str>,
    from: i64,
    to: i64,
    tags: &[(String, String)],
) -> rusqlite::Result<Vec<(String, Candidate)>> {
    // Tag filters run in SQLite (json_extract on the canonical tags), so a query for one
    // series among thousands does not parse every series' tags; the match is checked again
    // below on the parsed tags.
    let mut sql = String::from(
        "SELECT id, tags, field, kind, first_ts, last_ts, name FROM series
         WHERE (?1 = '' OR name = ?1) AND (?2 IS NULL OR field = ?2) AND last_ts >= ?3 AND first_ts < ?4",
    );
    let mut values: Vec<rusqlite::types::Value> = vec![
        name.to_owned().into(),
        field.map(str::to_owned).into(),
        from.into(),
        to.into(),
    ];
    for (key, value) in tags {
        let path = format!("$.\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\""));
        sql.push_str(&format!(
            " AND json_extract(tags, ?{}) = ?{}",
            values.len() + 1,
            values.len() + 2
        ));
        values.push(path.into());
        values.push(value.clone().into());
    }
    sql.push_str(" ORDER BY name, tags, field");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(values.iter()), |r| {
        Ok((
            r.get::<_, String>(6)?,
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, i64>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (name, id, tags_json, field, kind, first_ts, last_ts) = row?;
        let series_tags: BTreeMap<String, String> =
            serde_json::from_str(&tags_json).unwrap_or_default();
        if tags.iter().all(|(k, v)| series_tags.get(k) == Some(v)) {
            out.push((
                name,
                Candidate {
                    id,
                    tags: series_tags,
                    field,
                    kind,
                    first_ts,
                    last_ts,
                },
            ));
        }
    }
    Ok(out)
}

/// Answers a raw query.
pub fn query_raw(conn: &Connection, query: &RawQuery) -> rusqlite::Result<QueryResult> {
    let candidates = matching_series(
        conn,
        &query.name,
        query.field.as_deref(),
        query.from,
        query.to,
        &query.tags,
    )?;
    let mut result = QueryResult::default();
    let mut remaining = query.limit;
    for (name, candidate) in candidates {
        if remaining == 0 {
            result.truncated = true;
            break;
        }
        let (points, truncated) =
            chunks::read(conn, candidate.id, query.from, query.to, Some(remaining))?;
        result.truncated |= truncated;
        remaining -= points.len();
        if !points.is_empty() {
            result.series.push(SeriesPoints {
                name,
                tags: candidate.tags,
                field: candidate.field,
                points,
            });
        }
        if result.truncated {
            break;
        }
    }
    Ok(result)
}

/// Every series matching `name` (any when empty) and `tags`, for the listing.
pub fn list_series(
    conn: &Connection,
    name: &str,
    tags: &[(String, String)],
    limit: usize,
) -> rusqlite::Result<(Vec<SeriesInfo>, bool)> {
    let candidates = matching_series(conn, name, None, i64::MIN, i64::MAX, tags)?;
    let truncated = candidates.len() > limit;
    Ok((
        candidates
            .into_iter()
            .take(limit)
            .map(|(name, c)| SeriesInfo {
                name,
                tags: c.tags,
                field: c.field,
                kind: c.kind,
                first_ts: c.first_ts,
                last_ts: c.last_ts,
            })
            .collect(),
        truncated,
    ))
}

/// Quarantined records received in `[from, to)`, oldest first, at most `limit`.
pub fn list_quarantine(
    conn: &Connection,
    from: i64,
    to: i64,
    limit: usize,
) -> rusqlite::Result<(Vec<QuarantineRecord>, bool)> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, received_at, origin, agent_id, source, topic, ts, payload, reason FROM quarantine
         WHERE received_at >= ?1 AND received_at < ?2 ORDER BY received_at, id LIMIT ?3",
    )?;
    let mut records = stmt
        .query_map(params![from, to, limit as i64 + 1], |r| {
            Ok(QuarantineRecord {
                id: r.get(0)?,
                received_at: r.get(1)?,
                origin: r.get(2)?,
                agent_id: r.get(3)?,
                source: r.get(4)?,
                topic: r.get(5)?,
                ts: r.get(6)?,
                payload: r.get(7)?,
                reason: r.get(8)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let truncated = records.len() > limit;
    records.truncate(limit);
    Ok((records, truncated))
}

/// An agent's newest report about itself: when (ns), and field -> value.
pub type SelfReport = (i64, BTreeMap<String, FieldValue>);

/// The newest figures each agent reported about itself (its `tributary_agent` points, see
/// the agent's `inputs/own.rs`), by agent id.
pub fn agents_self_reports(conn: &Connection) -> rusqlite::Result<HashMap<String, SelfReport>> {
    let series: Vec<(i64, String, String)> = conn
        .prepare_cached("SELECT id, tags, field FROM series WHERE name = 'tributary_agent'")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut newest = conn.prepare_cached(
        "SELECT start_ts, data FROM chunks WHERE series_id = ?1 ORDER BY start_ts DESC, id DESC LIMIT 1",
    )?;
    let mut reports: HashMap<String, SelfReport> = HashMap::new();
    for (id, tags, field) in series {
        let Some(agent) = serde_json::from_str::<BTreeMap<String, String>>(&tags)
            .ok()
            .and_then(|mut tags| tags.remove(super::series::AGENT_TAG))
        else {
            continue;
        };
        let row: Option<(i64, Vec<u8>)> = newest
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((start_ts, data)) = row else {
            continue;
        };
        let mut last: Option<(i64, FieldValue)> = None;
        chunks::decode(id, start_ts, &data, |ts, value| {
            if last.as_ref().is_none_or(|(t, _)| ts >= *t) {
                last = Some((ts, value));
            }
        })?;
        if let Some((ts, value)) = last {
            let report = reports.entry(agent).or_default();
            report.0 = report.0.max(ts);
            report.1.insert(field, value);
        }
    }
    Ok(reports)
}

/// Every agent the store has heard from, with its marks.
pub fn agents(conn: &Connection) -> rusqlite::Result<Vec<AgentRecord>> {
    let mut records: BTreeMap<String, AgentRecord> = BTreeMap::new();
    let mut stmt = conn.prepare_cached(
        "SELECT agent_id, first_seen, last_seen, batches, points_received, duplicates, quarantined, gaps,
                backlog_points, backlog_bytes, oldest_unsent_ts, clock_skew_ns FROM agents",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(AgentRecord {
            agent_id: r.get(0)?,
            first_seen: r.get(1)?,
            last_seen: r.get(2)?,
            batches: r.get::<_, i64>(3)? as u64,
            points_received: r.get::<_, i64>(4)? as u64,
            duplicates: r.get::<_, i64>(5)? as u64,
            quarantined: r.get::<_, i64>(6)? as u64,
            gaps: r.get::<_, i64>(7)? as u64,
            backlog_points: r.get::<_, Option<i64>>(8)?.unwrap_or(0) as u64,
            backlog_bytes: r.get::<_, Option<i64>>(9)?.unwrap_or(0) as u64,
            oldest_unsent_ts: r.get(10)?,
            clock_skew_ns: r.get(11)?,
            epochs: Vec::new(),
        })
    })?;
    for record in rows {
        let record = record?;
        records.insert(record.agent_id.clone(), record);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT agent_id, epoch, last_seq, last_reject, dropped, last_seen FROM marks ORDER BY agent_id, last_seen",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            EpochMark {
                epoch: r.get(1)?,
                last_seq: r.get::<_, i64>(2)? as u64,
                last_reject: r.get::<_, i64>(3)? as u64,
                dropped: r.get::<_, i64>(4)? as u64,
                last_seen: r.get(5)?,
            },
        ))
    })?;
    for row in rows {
        let (agent_id, mark) = row?;
        if let Some(record) = records.get_mut(&agent_id) {
            record.epochs.push(mark);
        }
    }
    Ok(records.into_values().collect())
}

/// A trivial read, proving the database answers.
pub fn ping(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("SELECT count(*) FROM marks", [], |_| Ok(()))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod rollup_tests;
