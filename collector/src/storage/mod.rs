//! Storage of points, series, agents' high-water marks and the quarantine.
//!
//! Two stores stand behind [`Storage`]: SQLite ([`sqlite`], embedded, zero setup, the
//! default: `[storage] path`) and PostgreSQL ([`postgres`], which several collectors share:
//! `[storage] url`). Either way writes go through one thread per collector that group-commits
//! batches from many requests in one transaction (the backend-neutral part is `writer.rs`,
//! one batch's statements `group.rs`); a batch's points and its agent's mark always commit
//! together, and each request is answered only after that commit. Reads use a small pool of
//! separate connections ([`read::Pool`]); everything a read answers is built once in
//! [`read`] and [`prom`] over a backend's row reads ([`read::Rows`]), and the export feed in
//! [`feed`] over each backend's own.
//!
//! The API, the watchdog, the exports and the SIGHUP reload use only [`Storage`]'s methods
//! (reserve and submit, retain, ping, the read methods, health, close) and [`feed`], never a
//! backend's own functions. What every backend owes:
//!
//! - a batch's points above its `(agent, epoch)` mark, the raised mark, its rejects and the
//!   rollup windows they touch commit in one transaction, or none of them does;
//! - a write is answered (2xx) only after that commit; a store that cannot commit answers an
//!   error the API turns into 503, and reports it through [`StoreHealth`];
//! - a batch whose data the store cannot hold is isolated: its other points are stored and the
//!   failing ones quarantined with the reason, and other batches are not held up;
//! - the same answers to reads, whatever backend wrote the data.
//!
//! Invariant: for every `(agent, epoch)`, the points stored are exactly those with a sequence
//! at or below its mark that were ever sent; a sequence is stored at most once.

pub mod blocks;
pub mod codec;
pub mod feed;
mod group;
pub mod postgres;
pub mod prom;
pub mod read;
mod series;
pub mod sqlite;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::error;
use tributary_wire::{Batch, BatchAck, FieldValue};

use self::read::{Pool, Rows, SelfReport};
use self::writer::Job;
use crate::metrics::Metrics;
use crate::rollup::Resolution;

/// A known series, for `/api/v1/series`.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesInfo {
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub field: String,
    pub kind: String,
    pub first_ts: i64,
    pub last_ts: i64,
}

/// Which quarantined records `/api/v1/quarantine` lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineFilter {
    /// Received in `[from, to)` (ns).
    pub from: i64,
    pub to: i64,
    pub limit: usize,
    /// Newest first (else oldest first).
    pub newest_first: bool,
    /// Only this agent's.
    pub agent: Option<String>,
    /// Only those whose reason contains this (any case).
    pub reason: Option<String>,
}

/// A quarantined record, for `/api/v1/quarantine`.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantineRecord {
    pub id: i64,
    pub received_at: i64,
    /// `agent` (the agent could not decode it), `collector` (a rule or check refused it),
    /// `line_protocol` (a line that did not parse).
    pub origin: String,
    pub agent_id: Option<String>,
    pub source: String,
    pub topic: String,
    pub ts: Option<i64>,
    pub payload: Vec<u8>,
    pub reason: String,
}

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("storage {url}: {source}")]
    Postgres {
        url: String,
        #[source]
        source: ::postgres::Error,
    },
    #[error("storage is shutting down")]
    Closed,
    #[error("storage: {0}")]
    Other(String),
}

/// Where a write comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A Tributary agent's batch: sequences and marks make it exactly-once.
    Agent,
    /// InfluxDB line protocol (`/api/v2/write`, `/write`): no sequences; every point is new,
    /// and the batch's rejects are the lines that did not parse.
    LineProtocol,
    /// Prometheus remote write: no sequences either; the rejects are the series that could
    /// not be taken.
    RemoteWrite,
}

impl Origin {
    /// What the quarantine's `source` and `origin` say of what this origin sent.
    pub fn source(self) -> &'static str {
        match self {
            Origin::Agent => "batch",
            Origin::LineProtocol => "line_protocol",
            Origin::RemoteWrite => "remote_write",
        }
    }
}

/// A batch to store, from the agent its token belongs to.
pub struct WriteJob {
    pub agent_id: String,
    pub batch: Batch,
    /// When the collector received it (UTC ns).
    pub received_at: i64,
    pub origin: Origin,
    pub reply: tokio::sync::oneshot::Sender<Result<Stored, StorageError>>,
    /// The job's share of the ingest memory budget, given back when the batch is freed.
    pub memory: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// What storing one batch did.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub ack: BatchAck,
    /// Points that went to the quarantine instead (index in the batch, reason), at most the
    /// first thousand: a line protocol write lists them in its answer.
    pub quarantined: Vec<(usize, String)>,
}

impl Stored {
    /// Nothing stored, nothing committed.
    pub fn nothing() -> Stored {
        Stored {
            ack: BatchAck {
                committed_through: 0,
                stored: 0,
                duplicates: 0,
                rejects_stored: 0,
                quarantined: 0,
                received_at: None,
                replied_at: None,
            },
            quarantined: Vec::new(),
        }
    }
}

/// Whether the store can commit, as its writer last found: `/healthz` answers 503 with the
/// reason while it cannot. A failed commit sets it; a commit (or a probe write) clears it.
#[derive(Debug, Default)]
pub struct StoreHealth {
    failure: std::sync::Mutex<Option<(String, i64)>>,
}

impl StoreHealth {
    pub fn commit_succeeded(&self) {
        let mut failure = self
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if failure.is_some() {
            tracing::info!("storage commits again");
            *failure = None;
        }
    }

    pub fn commit_failed(&self, reason: &str) {
        let mut failure = self
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if failure.is_none() {
            *failure = Some((reason.to_owned(), tributary_wire::time::now_ns()));
        }
    }

    /// Why the store cannot commit, and since when (UTC ns); `None` while it can.
    pub fn failure(&self) -> Option<(String, i64)> {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// How the store is set up.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// The SQLite database (when `url` is not set).
    pub path: std::path::PathBuf,
    /// The PostgreSQL server that collectors share (`postgres://…`), in place of `path`.
    pub url: Option<String>,
    /// Most points committed in one transaction.
    pub commit_max_points: usize,
    /// Batches waiting for the writer.
    pub queue: usize,
    /// Read connections.
    pub readers: usize,
    pub rules: Vec<crate::clean::Rule>,
    pub time: crate::clean::TimeSanity,
    pub resolutions: Vec<crate::rollup::Resolution>,
    pub raw_retention: Option<i64>,
    /// Note what each transaction stored in the export feed (exports are configured).
    pub export_feed: bool,
    /// The WAL file's size past which the writer truncates it (bytes).
    pub wal_limit: u64,
}

impl StorageOptions {
    /// Options with the collector's defaults for `path`.
    pub fn new(path: &std::path::Path) -> StorageOptions {
        StorageOptions {
            path: path.to_owned(),
            url: None,
            commit_max_points: 50_000,
            queue: 64,
            readers: 4,
            rules: Vec::new(),
            time: crate::clean::TimeSanity::default(),
            resolutions: crate::rollup::default_resolutions(),
            raw_retention: None,
            export_feed: false,
            wal_limit: 128 << 20,
        }
    }
}

/// What one retention pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetentionReport {
    pub points: u64,
    pub windows: u64,
    pub quarantined: u64,
    /// More is left past the horizon: the pass stopped to let ingest run.
    pub more: bool,
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is full: ask the agent to come back later.
    Busy,
    /// The writer has stopped.
    Closed,
}

/// A raw query: points of the series that match, in a time range.
#[derive(Debug, Clone)]
pub struct RawQuery {
    pub name: String,
    pub field: Option<String>,
    /// Inclusive lower bound (UTC ns).
    pub from: i64,
    /// Exclusive upper bound (UTC ns).
    pub to: i64,
    /// Tags every matching series must have.
    pub tags: Vec<(String, String)>,
    /// Most points in the whole answer.
    pub limit: usize,
}

/// An aggregated query: buckets of `step` over the raw query's range.
#[derive(Debug, Clone)]
pub struct AggregateQuery {
    pub raw: RawQuery,
    /// Bucket length (ns); buckets are aligned to the Unix epoch.
    pub step: i64,
    /// Aggregations, each answered as its own series.
    pub aggs: Vec<crate::rollup::Agg>,
    /// A moving aggregate over the trailing `window` (ns) at every step.
    pub window: Option<i64>,
}

/// One series' buckets for one aggregation.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateSeries {
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub field: String,
    pub agg: crate::rollup::Agg,
    /// (bucket start, value); buckets with no data (or an undefined value) are left out.
    pub points: Vec<(i64, f64)>,
}

/// What an aggregated query found, and where from.
#[derive(Debug, Clone, Default)]
pub struct AggregateResult {
    pub series: Vec<AggregateSeries>,
    pub truncated: bool,
    /// The rollup resolution that answered (ns), or `None` for the raw points.
    pub resolution: Option<i64>,
}

/// One series and its points.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesPoints {
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub field: String,
    pub points: Vec<(i64, FieldValue)>,
}

/// What a query found.
#[derive(Debug, Clone, Default)]
pub struct QueryResult {
    pub series: Vec<SeriesPoints>,
    /// The limit cut the answer short.
    pub truncated: bool,
}

/// One `(agent, epoch)` mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochMark {
    pub epoch: String,
    pub last_seq: u64,
    pub last_reject: u64,
    pub dropped: u64,
    pub last_seen: i64,
}

/// What the collector knows of an agent.
#[derive(Debug, Clone, Default)]
pub struct AgentRecord {
    pub agent_id: String,
    pub first_seen: Option<i64>,
    pub last_seen: Option<i64>,
    pub batches: u64,
    pub points_received: u64,
    pub duplicates: u64,
    pub quarantined: u64,
    /// Sequences that never arrived and were not explained as dropped.
    pub gaps: u64,
    pub backlog_points: u64,
    pub backlog_bytes: u64,
    pub oldest_unsent_ts: Option<i64>,
    /// The agent's clock offset from the collector's (collector minus agent, ns), as it
    /// last measured and reported it, and the bound of that estimate.
    pub clock_skew_ns: Option<i64>,
    pub clock_error_ns: Option<u64>,
    pub epochs: Vec<EpochMark>,
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

/// The read connections of a store.
enum Reads {
    Sqlite {
        pool: Arc<Pool<rusqlite::Connection>>,
        path: Arc<str>,
    },
    Postgres {
        pool: Arc<Pool<::postgres::Client>>,
        url: Arc<str>,
    },
}

impl Reads {
    /// Runs `work` on a read connection off the async executor.
    async fn run<T, F>(&self, work: F) -> Result<T, StorageError>
    where
        F: FnOnce(&dyn Rows) -> Result<T, StorageError> + Send + 'static,
        T: Send + 'static,
    {
        match self {
            Reads::Sqlite { pool, path } => {
                let path = Arc::clone(path);
                pool.run(move |conn| work(&sqlite::SqliteRows { conn, path: &path }))
                    .await
            }
            Reads::Postgres { pool, url } => {
                let url = Arc::clone(url);
                pool.run(move |client| {
                    work(&postgres::reads::PgRows {
                        client: std::cell::RefCell::new(client),
                        url: &url,
                    })
                })
                .await
            }
        }
    }
}

/// The store: a writer thread fed by a bounded queue, and a pool of readers, over SQLite (a
/// file of this collector's) or PostgreSQL (a server collectors share).
pub struct Storage {
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
    /// Dropping it stops the checkpointer (SQLite only).
    checkpoints: Option<(std::sync::mpsc::Sender<()>, JoinHandle<()>)>,
    reads: Reads,
    metrics: Arc<Metrics>,
    health: Arc<StoreHealth>,
    /// The rollup resolutions PromQL may answer from ([`prom::window_resolutions`]).
    windows: Arc<[Resolution]>,
}

impl Storage {
    /// Opens the store the options name (creating its schema if needed) and starts the
    /// writer thread.
    pub fn open(options: &StorageOptions, metrics: Arc<Metrics>) -> Result<Storage, StorageError> {
        let health = Arc::new(StoreHealth::default());
        let windows = prom::window_resolutions(&options.resolutions, options.raw_retention).into();
        match &options.url {
            Some(url) => {
                let (jobs, writer) = postgres::writer::start(
                    url,
                    options,
                    Arc::clone(&metrics),
                    Arc::clone(&health),
                )?;
                let connect_url = url.clone();
                Ok(Storage {
                    jobs: Some(jobs),
                    writer: Some(writer),
                    checkpoints: None,
                    reads: Reads::Postgres {
                        pool: Arc::new(Pool::new(
                            options.readers,
                            move || postgres::connect(&connect_url),
                            |client| !client.is_closed(),
                        )),
                        url: url.as_str().into(),
                    },
                    metrics,
                    health,
                    windows,
                })
            }
            None => {
                let path = options.path.as_path();
                let opened = sqlite::open(options, path, &metrics, Arc::clone(&health))?;
                Ok(Storage {
                    jobs: Some(opened.jobs),
                    writer: Some(opened.writer),
                    checkpoints: Some(opened.checkpoints),
                    reads: Reads::Sqlite {
                        pool: opened.reads,
                        path: path.display().to_string().into(),
                    },
                    metrics,
                    health,
                    windows,
                })
            }
        }
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

    /// Runs `work` on a read connection, as the row reads of [`read::Rows`].
    pub async fn read<T, F>(&self, work: F) -> Result<T, StorageError>
    where
        F: FnOnce(&dyn Rows) -> Result<T, StorageError> + Send + 'static,
        T: Send + 'static,
    {
        self.reads.run(work).await
    }

    /// A trivial read, proving the store answers.
    pub async fn ping_reads(&self) -> Result<(), StorageError> {
        self.reads.run(|rows| rows.ping()).await
    }

    /// Raw points of the series a query matches.
    pub async fn query_raw(&self, query: RawQuery) -> Result<QueryResult, StorageError> {
        self.reads
            .run(move |rows| read::query_raw(rows, &query))
            .await
    }

    /// Runs PromQL work (an evaluation, a listing) on a read connection seen as a
    /// [`crate::promql::Source`].
    pub async fn promql<T, F>(&self, work: F) -> Result<T, StorageError>
    where
        F: FnOnce(&prom::StoreSource<'_>) -> T + Send + 'static,
        T: Send + 'static,
    {
        let windows = Arc::clone(&self.windows);
        self.reads
            .run(move |rows| {
                Ok(work(&prom::StoreSource {
                    rows,
                    windows: &windows,
                }))
            })
            .await
    }

    /// Buckets of a query, from the coarsest fitting rollup or the raw points.
    pub async fn query_aggregated(
        &self,
        query: AggregateQuery,
        resolutions: Vec<Resolution>,
    ) -> Result<AggregateResult, StorageError> {
        self.reads
            .run(move |rows| read::query_aggregated(rows, &query, &resolutions))
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
            .run(move |rows| read::list_series(rows, &name, &tags, &search, limit))
            .await
    }

    /// Quarantined records the filter selects, at most its limit.
    pub async fn list_quarantine(
        &self,
        filter: QuarantineFilter,
    ) -> Result<(Vec<QuarantineRecord>, bool), StorageError> {
        self.reads
            .run(move |rows| read::list_quarantine(rows, &filter))
            .await
    }

    /// Every agent the store has heard from, with its marks.
    pub async fn agents(&self) -> Result<Vec<AgentRecord>, StorageError> {
        self.reads.run(|rows| read::agents(rows)).await
    }

    /// Every agent, and the newest figures each reported about itself.
    pub async fn agents_with_reports(
        &self,
    ) -> Result<(Vec<AgentRecord>, HashMap<String, SelfReport>), StorageError> {
        self.reads
            .run(|rows| Ok((read::agents(rows)?, read::agents_self_reports(rows)?)))
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
