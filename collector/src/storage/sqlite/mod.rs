//! The SQLite store: `Storage` (opening, the writer's queue, closing) here, and one file per
//! concern: `schema` (tables, migrations, connections), `writer` (the group-committing thread
//! and the isolation of a batch the store refuses), `batch` (what one batch stores, and the
//! gap accounting), `retention`, `checkpointer`, `reads` (the read pool, queries, listings),
//! `chunks` (raw values) and `rollups`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{Semaphore, mpsc};
use tracing::{error, warn};
use tributary_wire::FieldValue;

use self::chunks::ChunkWriter;
use self::rollups::RollupWriter;
use super::series::{SeriesCache, ValueClass};
use super::{
    AgentRecord, EpochMark, QuarantineRecord, QueryResult, RawQuery, RetentionReport, SeriesInfo,
    SeriesPoints, StorageError, StorageOptions, StoreHealth, Stored, SubmitError, WriteJob,
};
use crate::clean::Cleaner;
use crate::metrics::Metrics;
use crate::rollup::Resolution;

mod batch;
mod checkpointer;
pub mod chunks;
pub mod feed;
pub mod prom;
mod reads;
mod retention;
pub mod rollups;
mod schema;
mod writer;

use self::batch::*;
use self::checkpointer::*;
pub use self::reads::*;
use self::schema::*;
use self::writer::*;
use super::group::{GroupState, run_is_exact, store_batch};
use super::writer::{Backend, BatchAttempt, Job, Mark, Writer, start_dropper};

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
    /// The rollup resolutions PromQL may answer from ([`prom::window_resolutions`]).
    windows: Arc<[Resolution]>,
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
        let (conn, version) = open_connection(path)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        conn.execute_batch(chunks::SCHEMA).map_err(sql)?;
        conn.execute_batch(feed::SCHEMA).map_err(sql)?;
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
        if version < 5 {
            add_column(&conn, "series", "exact", "INTEGER NOT NULL DEFAULT 0").map_err(sql)?;
        }
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
        if version < 7 {
            let windows = rollups::convert_rows(&conn).map_err(sql)?;
            let values = chunks::convert(&conn).map_err(sql)?;
            if windows > 0 || values > 0 {
                tracing::info!(
                    windows,
                    values,
                    "converted the rollup windows and chunks of an older database"
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
        let writer = Writer {
            backend: SqliteBackend {
                conn,
                path: path.to_owned(),
                series,
                chunks: ChunkWriter::with_feed(options.export_feed),
                metrics: Arc::clone(&metrics),
                rollups,
                resolutions: options.resolutions.clone(),
                raw_retention: options.raw_retention,
                wal_limit: options.wal_limit,
            },
            commit_max_points: options.commit_max_points,
            metrics: Arc::clone(&metrics),
            cleaner: Cleaner::new(options.rules.clone(), options.time.clone()),
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
            windows: prom::window_resolutions(&options.resolutions, options.raw_retention).into(),
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

    // What the API, the watchdog and the console ask of any store (a backend owes these).

    /// A trivial read, proving the store answers.
    pub async fn ping_reads(&self) -> Result<(), StorageError> {
        self.reads.run(ping).await
    }

    /// Raw points of the series a query matches.
    pub async fn query_raw(&self, query: RawQuery) -> Result<QueryResult, StorageError> {
        self.reads.run(move |conn| query_raw(conn, &query)).await
    }

    /// Runs PromQL work (an evaluation, a listing) on a read connection seen as a
    /// [`crate::promql::Source`].
    pub async fn promql<T, F>(&self, work: F) -> Result<T, StorageError>
    where
        F: FnOnce(&prom::SqliteSource<'_>) -> T + Send + 'static,
        T: Send + 'static,
    {
        let windows = Arc::clone(&self.windows);
        self.reads
            .run(move |conn| {
                Ok(work(&prom::SqliteSource {
                    conn,
                    windows: &windows,
                }))
            })
            .await
    }

    /// Buckets of a query, from the coarsest fitting rollup or the raw points.
    pub async fn query_aggregated(
        &self,
        query: super::AggregateQuery,
        resolutions: Vec<Resolution>,
    ) -> Result<super::AggregateResult, StorageError> {
        self.reads
            .run(move |conn| rollups::query_aggregated(conn, &query, &resolutions))
            .await
    }

    /// The series matching `name` (any when empty) and `tags`, at most `limit`, and whether
    /// there were more.
    pub async fn list_series(
        &self,
        name: String,
        tags: Vec<(String, String)>,
        search: String,
        limit: usize,
    ) -> Result<(Vec<SeriesInfo>, bool), StorageError> {
        self.reads
            .run(move |conn| list_series(conn, &name, &tags, &search, limit))
            .await
    }

    /// Quarantined records received in `[from, to)`, oldest first, at most `limit`.
    pub async fn list_quarantine(
        &self,
        filter: super::QuarantineFilter,
    ) -> Result<(Vec<QuarantineRecord>, bool), StorageError> {
        self.reads
            .run(move |conn| list_quarantine(conn, &filter))
            .await
    }

    /// Every agent the store has heard from, with its marks.
    pub async fn agents(&self) -> Result<Vec<AgentRecord>, StorageError> {
        self.reads.run(agents).await
    }

    /// Every agent, and the newest figures each reported about itself.
    pub async fn agents_with_reports(
        &self,
    ) -> Result<(Vec<AgentRecord>, HashMap<String, SelfReport>), StorageError> {
        self.reads
            .run(|conn| Ok((agents(conn)?, agents_self_reports(conn)?)))
            .await
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

#[cfg(test)]
mod tests;

#[cfg(test)]
mod rollup_tests;
