//! The SQLite store: schema, the group-committing writer thread, and the read pool.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{Semaphore, mpsc};
use tracing::{error, warn};
use tributary_wire::{BatchAck, FieldValue, Point};

use self::chunks::ChunkWriter;
use self::rollups::RollupWriter;
use super::series::{Entry, SeriesCache, ValueClass, canonical_tags};
use super::{
    AgentRecord, EpochMark, Origin, QuarantineRecord, QueryResult, RawQuery, RetentionReport,
    SeriesInfo, SeriesPoints, StorageError, StorageOptions, StoreHealth, Stored, SubmitError,
    WriteJob,
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
/// 4: `agents.clock_error_ns` (the bound of the agent's clock estimate).
const SCHEMA_VERSION: i64 = 4;

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
    Write(Box<WriteJob>),
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
        self.permit.send(Job::Write(Box::new(job)));
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
    health: Arc<StoreHealth>,
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
///
/// While the writer's last commit failed for want of storage (a full disk), it also tries a
/// one-row write now and then, so health recovers once the store can commit again, whether or
/// not a sender is retrying.
fn start_checkpointer(
    path: &Path,
    metrics: Arc<Metrics>,
    health: Arc<StoreHealth>,
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
                if health.failure().is_some() {
                    match conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('probe', ?1)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        [tributary_wire::time::now_ns()],
                    ) {
                        Ok(_) => health.commit_succeeded(),
                        Err(e) if storage_cannot_commit(&e) => {
                            health.commit_failed(&e.to_string());
                        }
                        Err(_) => {}
                    }
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
        conn.pragma_update(
            None,
            "cache_size",
            0i64.saturating_sub_unsigned(WRITER_CACHE_KIB),
        )
        .map_err(sql)?;
        // A multi-row INSERT into a table with a key keeps a statement journal (to undo just
        // that statement on a conflict); in a temporary file, that costs a write per page.
        conn.pragma_update(None, "temp_store", "MEMORY")
            .map_err(sql)?;
        // Checkpoints run on their own thread (start_checkpointer), not inside commits.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(sql)?;
        if version < 4 {
            add_column(&conn, "agents", "clock_error_ns", "INTEGER").map_err(sql)?;
        }
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
        let health = Arc::new(StoreHealth::default());
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
            health: Arc::clone(&health),
        };
        let writer = std::thread::Builder::new()
            .name("storage-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StorageError::Other(format!("cannot start the writer thread: {e}")))?;
        Ok(Storage {
            jobs: Some(jobs),
            writer: Some(writer),
            checkpoints: Some(start_checkpointer(
                path,
                Arc::clone(&metrics),
                Arc::clone(&health),
            )?),
            reads: Arc::new(ReadPool::new(path, options.readers)),
            metrics,
            health,
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

    /// Whether the store can commit.
    pub fn health(&self) -> &StoreHealth {
        &self.health
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
    /// Closing joins the writer, which first commits what is queued: that must not block a
    /// runtime worker (every task on it would stall). On a multi-threaded runtime the join
    /// runs in `block_in_place`; on a current-thread runtime the threads are left to finish
    /// by themselves (their queues close with the senders dropped here); outside a runtime it
    /// joins. `serve` closes storage on the blocking pool before this runs.
    fn drop(&mut self) {
        use tokio::runtime::{Handle, RuntimeFlavor};
        match Handle::try_current().map(|handle| handle.runtime_flavor()) {
            Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| self.close()),
            Ok(_) => self.detach(),
            Err(_) => self.close(),
        }
    }
}

impl Storage {
    /// Stops taking jobs and lets the writer and checkpointer threads end by themselves.
    fn detach(&mut self) {
        self.jobs.take();
        self.writer.take();
        if let Some((stop, handle)) = self.checkpoints.take() {
            drop(stop);
            drop(handle);
        }
    }
}

fn load_series(conn: &Connection) -> rusqlite::Result<SeriesCache> {
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
fn add_column(conn: &Connection, table: &str, column: &str, kind: &str) -> rusqlite::Result<()> {
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
    dropper: std::sync::mpsc::SyncSender<Vec<Freed>>,
    health: Arc<StoreHealth>,
}

/// A stored batch on its way to be freed, with the ingest memory it holds.
type Freed = (
    tributary_wire::Batch,
    Option<tokio::sync::OwnedSemaphorePermit>,
);

/// Starts the thread that frees stored batches; it ends when the writer drops its sender.
fn start_dropper() -> std::io::Result<std::sync::mpsc::SyncSender<Vec<Freed>>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Freed>>(4);
    std::thread::Builder::new()
        .name("storage-free".into())
        .spawn(move || rx.into_iter().for_each(drop))?;
    Ok(tx)
}

/// A job with what cleaning decided for each of its points (`None`: not cleaned yet), and
/// which of its points this attempt stores.
struct BatchAttempt {
    job: WriteJob,
    /// Per point: why it was rejected, if it was.
    verdicts: Option<Vec<Option<Rejection>>>,
    /// The points (indexes into the batch) this attempt stores; all of them unless the batch
    /// is being isolated after a failure (see [`WriterThread::isolate`]).
    range: Range<usize>,
    /// Set when storing `range` failed alone: its points go to the quarantine with this
    /// reason instead.
    poison: Option<String>,
}

impl BatchAttempt {
    fn new(job: WriteJob) -> BatchAttempt {
        let range = 0..job.batch.points.len();
        BatchAttempt {
            job,
            verdicts: None,
            range,
            poison: None,
        }
    }
}

/// What one transaction stores.
#[derive(Default)]
struct GroupState<'a> {
    /// Values to store: (series id, ts, value), the value borrowed from its batch.
    rows: Vec<(i64, i64, &'a FieldValue)>,
}

/// Whether a failed transaction says the store cannot commit at all (disk full, I/O errors,
/// a locked or damaged file), as opposed to something in the data it was given. Only the
/// first kind is answered with 503 for the sender to retry; a batch whose data fails is
/// isolated instead, so it cannot come back forever.
pub(crate) fn storage_cannot_commit(error: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    match error.sqlite_error_code() {
        Some(code) => matches!(
            code,
            C::PermissionDenied
                | C::OperationAborted
                | C::DatabaseBusy
                | C::DatabaseLocked
                | C::OutOfMemory
                | C::ReadOnly
                | C::OperationInterrupted
                | C::SystemIoFailure
                | C::DatabaseCorrupt
                | C::DiskFull
                | C::CannotOpen
                | C::FileLockingProtocolFailed
                | C::NoLargeFileSupport
                | C::NotADatabase
        ),
        None => false,
    }
}

/// Most quarantined points of one write listed back to its sender.
const LISTED_QUARANTINED: usize = 1000;

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
                Job::Write(job) => *job,
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
            let mut jobs = vec![BatchAttempt::new(first)];
            while points < self.commit_max_points {
                match rx.try_recv() {
                    Ok(Job::Write(job)) => {
                        points = points.saturating_add(job.batch.points.len());
                        jobs.push(BatchAttempt::new(*job));
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
    fn clean(&mut self, jobs: &mut [BatchAttempt]) -> rusqlite::Result<()> {
        for pending in jobs.iter_mut().filter(|p| p.verdicts.is_none()) {
            let job = &mut pending.job;
            let (mark, shift) = match job.origin {
                Origin::Agent => {
                    let mark = read_mark(&self.conn, &job.agent_id, &job.batch.epoch)?.last_seq;
                    let shift = self.cleaner.time.batch_shift(&job.batch.status);
                    if shift != 0 {
                        self.metrics.clock_corrected_batches.inc();
                    }
                    (mark, shift)
                }
                Origin::LineProtocol => (0, 0),
            };
            let first_seq = job.batch.first_seq;
            let mut verdicts = Vec::with_capacity(job.batch.points.len());
            for (seq, point) in (first_seq..).zip(job.batch.points.iter_mut()) {
                if job.origin == Origin::Agent && seq <= mark {
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

    /// Stores the jobs in one transaction. If that fails, each is stored alone, so one bad
    /// batch cannot fail the others; a batch that fails alone is isolated.
    fn commit_group(&mut self, mut jobs: Vec<BatchAttempt>) {
        let started = Instant::now();
        if let Err(e) = self.clean(&mut jobs) {
            self.cannot_commit(&e);
            error!(error = %e, "reading marks to clean a batch failed; the agent will retry");
            self.metrics.error("storage", "clean");
            for pending in jobs {
                let _ = pending.job.reply.send(Err(self.failure(&e)));
            }
            return;
        }
        match self.store_all(&jobs) {
            Ok(stored) => {
                self.committed(started);
                let mut batches = Vec::with_capacity(jobs.len());
                for (pending, stored) in jobs.into_iter().zip(stored) {
                    self.count_stored(&stored.ack);
                    let WriteJob {
                        batch,
                        reply,
                        memory,
                        ..
                    } = pending.job;
                    let _ = reply.send(Ok(stored));
                    // Its memory is given back once it is freed.
                    batches.push((batch, memory));
                }
                // Freeing a group's points (many small allocations) is not the writer's job:
                // it is the bottleneck of ingest.
                if let Err(returned) = self.dropper.send(batches) {
                    drop(returned);
                }
            }
            Err(e) if jobs.len() > 1 && !storage_cannot_commit(&e) => {
                warn!(error = %e, batches = jobs.len(), "group commit failed; storing the batches one by one");
                self.metrics.error("storage", "group_commit");
                for job in jobs {
                    self.commit_group(vec![job]);
                }
            }
            Err(e) if storage_cannot_commit(&e) => self.refuse(jobs, &e),
            Err(e) => {
                for pending in jobs {
                    self.isolate(pending, &e);
                }
            }
        }
    }

    /// Answers every job with the failure of a store that cannot commit (the senders retry).
    fn refuse(&mut self, jobs: Vec<BatchAttempt>, e: &rusqlite::Error) {
        self.cannot_commit(e);
        error!(error = %e, batches = jobs.len(), "storage cannot commit; the senders will retry");
        self.metrics.error("storage", "commit");
        // Their points come again: stateful rules must not remember them as seen.
        self.cleaner.reset_state();
        for pending in jobs {
            let _ = pending.job.reply.send(Err(self.failure(e)));
        }
    }

    /// A batch whose data made its transaction fail (not the store: that is [`Self::refuse`]).
    /// Its points are stored in halves, and halves of those, each in its own transaction,
    /// until every point that fails alone is found; those go to the quarantine with the
    /// error as their reason. Marks rise with each part, so exactly once holds whatever
    /// happens on the way, and the sender gets one answer for the whole batch.
    fn isolate(&mut self, mut pending: BatchAttempt, first_error: &rusqlite::Error) {
        warn!(agent = %pending.job.agent_id, points = pending.job.batch.points.len(), error = %first_error,
            "a batch cannot be stored; storing it in parts to find the points that fail");
        self.metrics.error("storage", "isolate_batch");
        let started = Instant::now();
        let mut parts: VecDeque<Range<usize>> = VecDeque::from([pending.range.clone()]);
        let mut total: Option<Stored> = None;
        // Each failing part is split in two or, alone, quarantined: at most 2n parts.
        let mut budget = pending
            .job
            .batch
            .points
            .len()
            .saturating_mul(2)
            .saturating_add(2);
        while let Some(range) = parts.pop_front() {
            budget = budget.saturating_sub(1);
            pending.range = range.clone();
            pending.poison = None;
            let error = match self.store_all(std::slice::from_ref(&pending)) {
                Ok(mut stored) => {
                    merge_stored(&mut total, stored.pop());
                    continue;
                }
                Err(e) => e,
            };
            if storage_cannot_commit(&error) || budget == 0 {
                return self.refuse(vec![pending], &error);
            }
            let half = range.len() / 2;
            if half > 0 {
                let middle = range.start.saturating_add(half);
                parts.push_front(middle..range.end);
                parts.push_front(range.start..middle);
                continue;
            }
            let reason = format!("the store cannot hold it: {error}");
            error!(agent = %pending.job.agent_id, index = range.start, reason = %reason, "moving a point the store refuses to the quarantine");
            self.metrics.error("storage", "poison_point");
            pending.poison = Some(reason);
            match self.store_all(std::slice::from_ref(&pending)) {
                Ok(mut stored) => merge_stored(&mut total, stored.pop()),
                Err(e) => return self.refuse(vec![pending], &e),
            }
        }
        self.committed(started);
        let stored = total.unwrap_or_else(Stored::nothing);
        self.count_stored(&stored.ack);
        let _ = pending.job.reply.send(Ok(stored));
    }

    fn count_stored(&self, ack: &BatchAck) {
        self.metrics.points_stored.inc_by(ack.stored);
        self.metrics.points_duplicate.inc_by(ack.duplicates);
        self.metrics.rejects_stored.inc_by(ack.rejects_stored);
    }

    /// A transaction committed: the store is healthy.
    fn committed(&self, started: Instant) {
        self.metrics.commits.inc();
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.health.commit_succeeded();
    }

    /// Records that the store cannot commit, if `e` says so (health answers 503 meanwhile).
    fn cannot_commit(&self, e: &rusqlite::Error) {
        if storage_cannot_commit(e) {
            self.health.commit_failed(&e.to_string());
        }
    }

    fn failure(&self, e: &rusqlite::Error) -> StorageError {
        StorageError::Other(format!("{}: {e}", self.path.display()))
    }

    fn store_all(&mut self, jobs: &[BatchAttempt]) -> rusqlite::Result<Vec<Stored>> {
        let points: usize = jobs.iter().map(|p| p.range.len()).sum();
        let mut state = GroupState {
            rows: Vec::with_capacity(points.saturating_add(points / 4)),
        };
        let result = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut stored = Vec::with_capacity(jobs.len());
            for pending in jobs {
                stored.push(store_batch(
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
                    let (Some(first), Some(last)) = (run.first(), run.last()) else {
                        continue;
                    };
                    update.execute(params![first.0, first.1, last.1])?;
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
            Ok(stored)
        })();
        match result {
            Ok(stored) => Ok(stored),
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

/// Adds the result of one part of an isolated batch to the total.
fn merge_stored(total: &mut Option<Stored>, part: Option<Stored>) {
    let Some(part) = part else { return };
    match total {
        None => *total = Some(part),
        Some(total) => {
            let (a, b) = (&mut total.ack, &part.ack);
            a.committed_through = a.committed_through.max(b.committed_through);
            a.stored = a.stored.saturating_add(b.stored);
            a.duplicates = a.duplicates.saturating_add(b.duplicates);
            a.rejects_stored = a.rejects_stored.saturating_add(b.rejects_stored);
            a.quarantined = a.quarantined.saturating_add(b.quarantined);
            let room = LISTED_QUARANTINED.saturating_sub(total.quarantined.len());
            total
                .quarantined
                .extend(part.quarantined.into_iter().take(room));
        }
    }
}

/// An agent's marks for one epoch (zeros before its first batch).
#[derive(Debug, Default, Clone, Copy)]
struct Mark {
    last_seq: u64,
    last_reject: u64,
    /// How much of the agent's drop count earlier gaps already used.
    explained: u64,
}

fn read_mark(conn: &Connection, agent_id: &str, epoch: &str) -> rusqlite::Result<Mark> {
    Ok(conn
        .prepare_cached(
            "SELECT last_seq, last_reject, explained FROM marks WHERE agent_id = ?1 AND epoch = ?2",
        )?
        .query_row(params![agent_id, epoch], |r| {
            Ok(Mark {
                last_seq: r.get::<_, i64>(0)? as u64,
                last_reject: r.get::<_, i64>(1)? as u64,
                explained: r.get::<_, i64>(2)? as u64,
            })
        })
        .optional()?
        .unwrap_or_default())
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
                    report.points = report.points.saturating_add(trimmed.values);
                    budget = budget.saturating_sub(trimmed.rows);
                }
                let n = tx.execute(
                    "DELETE FROM quarantine WHERE id IN
                     (SELECT id FROM quarantine WHERE received_at < ?1 ORDER BY received_at LIMIT ?2)",
                    params![cutoff, budget as i64],
                )?;
                report.quarantined = report.quarantined.saturating_add(n as u64);
                budget = budget.saturating_sub(n);
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
                        report.windows = report.windows.saturating_add(n as u64);
                        budget = budget.saturating_sub(n);
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

/// What a jump in an agent's sequences means, given the drop counts it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GapAccount {
    /// Sequences missing that no drop count explains.
    pub gaps: u64,
    /// How much of the drop count is used after this jump (the new `marks.explained`).
    pub explained: u64,
}

/// Accounts for the sequences between `mark` and `first_seq` (the first point that arrived
/// after it). Drops are counted when they happen, which may be before the jump reaches the
/// collector (a salvaged buffer counts its lost rows at once, and sends the points before
/// them first): the part of the cumulative `dropped` that no earlier jump used explains this
/// one, and what it does not explain is a gap.
pub(crate) fn account_gap(mark: u64, first_seq: u64, dropped: u64, explained: u64) -> GapAccount {
    let missing = first_seq.saturating_sub(mark.saturating_add(1));
    let used = missing.min(dropped.saturating_sub(explained));
    GapAccount {
        gaps: missing.saturating_sub(used),
        explained: explained.saturating_add(used),
    }
}

/// A field whose value is of another class than its series holds (a string into a number
/// series): the point is refused whole, as InfluxDB refuses such a line, so a series keeps one
/// class and its rollups stay those of its numbers.
fn type_conflict(entry: &Entry, point: &Point) -> Option<Rejection> {
    point.fields.iter().find_map(|(field, value)| {
        let (_, class) = entry.field_class(field)?;
        let got = ValueClass::of(value);
        (got != class).then(|| Rejection {
            rule: "type".into(),
            reason: format!(
                "field type conflict: {field:?} holds {} in this series, this point has {}",
                class.name(),
                got.name()
            ),
        })
    })
}

/// Caps what a poisoned batch keeps of a text it quarantines, so the quarantine row itself
/// cannot be what fails.
const POISON_KEPT: usize = 4096;

fn cut(text: &[u8], poison: bool) -> &[u8] {
    if poison {
        text.get(..POISON_KEPT).unwrap_or(text)
    } else {
        text
    }
}

/// Stores one batch (its points in `pending.range`) inside the group's transaction: points
/// above the mark (or the reason cleaning gave, in the quarantine), rejects above the reject
/// mark (with the part that starts the batch), the marks themselves, and the agent's figures.
/// Line protocol writes have no marks: all their points are new.
fn store_batch<'a>(
    tx: &rusqlite::Transaction<'_>,
    series: &mut SeriesCache,
    state: &mut GroupState<'a>,
    pending: &'a BatchAttempt,
    metrics: &Metrics,
) -> rusqlite::Result<Stored> {
    let job = &pending.job;
    let batch = &job.batch;
    let agent_origin = job.origin == Origin::Agent;
    let mark = if agent_origin {
        read_mark(tx, &job.agent_id, &batch.epoch)?
    } else {
        Mark::default()
    };
    let verdicts = pending.verdicts.as_deref().unwrap_or(&[]);
    let range = pending.range.clone();
    let first_seq = batch.first_seq.saturating_add(range.start as u64);
    let poison = pending.poison.is_some();

    let mut out = Stored::nothing();
    let (mut stored, mut duplicates, mut quarantined) = (0u64, 0u64, 0u64);
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
        let points = batch.points.get(range.clone()).unwrap_or_default();
        for ((index, seq), point) in range.clone().zip(first_seq..).zip(points) {
            if agent_origin && seq <= mark.last_seq {
                duplicates = duplicates.saturating_add(1);
                continue;
            }
            // The agent tag comes from the token, so a device cannot write as another.
            // One lookup for the point serves the type check and, for a known series (the
            // common case), its ids.
            let entry = series.entry(&point.name, &point.tags, &job.agent_id);
            let rejection = match (&pending.poison, verdicts.get(index)) {
                (Some(reason), _) => Some(Rejection {
                    rule: "storage".into(),
                    reason: reason.clone(),
                }),
                (None, Some(Some(rejection))) => Some(rejection.clone()),
                _ => entry.and_then(|entry| type_conflict(entry, point)),
            };
            if let Some(rejection) = rejection {
                let line = tributary_wire::line_protocol::format_point(point);
                let reason = rejection.to_string();
                quarantine.execute(params![
                    job.received_at,
                    job.agent_id,
                    batch.epoch,
                    source,
                    if agent_origin {
                        format!("seq {seq}")
                    } else {
                        format!("line {}", index.saturating_add(1))
                    },
                    point.ts,
                    cut(line.as_bytes(), poison),
                    reason
                ])?;
                metrics.quarantined(&rejection.rule);
                quarantined = quarantined.saturating_add(1);
                if out.quarantined.len() < LISTED_QUARANTINED {
                    out.quarantined.push((index, reason));
                }
                continue;
            }
            if let Some(entry) = entry
                && point.fields.keys().all(|f| entry.field(f).is_some())
            {
                for (field, value) in &point.fields {
                    if let Some(id) = entry.field(field) {
                        record(state, id, point.ts, value);
                    }
                }
                stored = stored.saturating_add(1);
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
                        series.insert(&point.name, tags, field, id, ValueClass::of(value));
                        id
                    }
                };
                record(state, id, point.ts, value);
            }
            stored = stored.saturating_add(1);
        }
    }

    // Rejects travel with the part that starts the batch (every batch has one).
    let starts_batch = range.start == 0;
    let mut rejects_stored = 0u64;
    if starts_batch {
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
            .filter(|r| !agent_origin || r.id > mark.last_reject)
        {
            insert.execute(params![
                job.received_at,
                origin,
                job.agent_id,
                batch.epoch,
                i64::try_from(reject.id).unwrap_or(i64::MAX),
                reject.source,
                reject.topic,
                reject.received_at,
                cut(&reject.payload, poison),
                reject.reason
            ])?;
            metrics.quarantined(origin);
            rejects_stored = rejects_stored.saturating_add(1);
        }
    }

    // A jump past the mark that the agent's drop count does not explain is a gap.
    let mut gap = GapAccount {
        gaps: 0,
        explained: mark.explained,
    };
    if agent_origin && !range.is_empty() {
        gap = account_gap(mark.last_seq, first_seq, batch.dropped, mark.explained);
        if gap.gaps > 0 {
            warn!(agent = %job.agent_id, epoch = %batch.epoch, mark = mark.last_seq, first_seq, gaps = gap.gaps, "sequences missing from an agent without a drop count to explain them");
            metrics.error("storage", "sequence_gap");
        }
    }

    // The last sequence of this part (of an empty batch: `first_seq - 1`, its `last_seq`).
    let part_last = batch
        .first_seq
        .saturating_add(range.end as u64)
        .saturating_sub(1);
    let new_mark = mark.last_seq.max(part_last);
    let new_reject_mark = match batch.rejects.last() {
        Some(last) if starts_batch => mark.last_reject.max(last.id),
        _ => mark.last_reject,
    };
    let as_sql = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
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
                as_sql(new_mark),
                as_sql(new_reject_mark),
                as_sql(batch.dropped),
                job.received_at,
                as_sql(gap.explained)
            ],
        )?;
    }
    tx.execute(
        "INSERT INTO agents (agent_id, first_seen, last_seen, batches, points_received, duplicates, quarantined, gaps,
                             backlog_points, backlog_bytes, oldest_unsent_ts, clock_skew_ns, clock_error_ns)
         VALUES (?1, ?2, ?2, ?11, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?12)
         ON CONFLICT (agent_id) DO UPDATE SET
             last_seen = excluded.last_seen,
             batches = batches + excluded.batches,
             points_received = points_received + excluded.points_received,
             duplicates = duplicates + excluded.duplicates,
             quarantined = quarantined + excluded.quarantined,
             gaps = gaps + excluded.gaps,
             backlog_points = coalesce(excluded.backlog_points, backlog_points),
             backlog_bytes = coalesce(excluded.backlog_bytes, backlog_bytes),
             oldest_unsent_ts = CASE WHEN excluded.backlog_points IS NULL THEN oldest_unsent_ts ELSE excluded.oldest_unsent_ts END,
             clock_skew_ns = coalesce(excluded.clock_skew_ns, clock_skew_ns),
             clock_error_ns = CASE WHEN excluded.clock_skew_ns IS NULL THEN clock_error_ns ELSE excluded.clock_error_ns END",
        params![
            job.agent_id,
            job.received_at,
            as_sql(stored),
            as_sql(duplicates),
            as_sql(rejects_stored.saturating_add(quarantined)),
            as_sql(gap.gaps),
            agent_origin.then_some(as_sql(batch.status.backlog_points)),
            agent_origin.then_some(as_sql(batch.status.backlog_bytes)),
            batch.status.oldest_unsent_ts.filter(|_| agent_origin),
            batch.status.clock.filter(|_| agent_origin).map(|c| c.offset_ns),
            i64::from(starts_batch),
            batch.status.clock.filter(|_| agent_origin).map(|c| as_sql(c.error_ns)),
        ],
    )?;
    out.ack = BatchAck {
        committed_through: new_mark,
        stored,
        duplicates,
        rejects_stored,
        quarantined,
        received_at: None,
        replied_at: None,
    };
    Ok(out)
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
            values.len().saturating_add(1),
            values.len().saturating_add(2)
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
        remaining = remaining.saturating_sub(points.len());
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
        .query_map(params![from, to, (limit as i64).saturating_add(1)], |r| {
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
                backlog_points, backlog_bytes, oldest_unsent_ts, clock_skew_ns, clock_error_ns FROM agents",
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
            clock_error_ns: r.get::<_, Option<i64>>(12)?.map(|e| e.max(0) as u64),
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
