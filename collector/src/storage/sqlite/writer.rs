//! The writer thread: group commits, the isolation of a batch the store refuses, and what
//! one transaction stores.

use super::*;

pub(super) struct WriterThread {
    pub(super) conn: Connection,
    pub(super) path: PathBuf,
    pub(super) series: SeriesCache,
    pub(super) chunks: ChunkWriter,
    pub(super) commit_max_points: usize,
    pub(super) metrics: Arc<Metrics>,
    pub(super) cleaner: Cleaner,
    pub(super) rollups: RollupWriter,
    pub(super) resolutions: Vec<Resolution>,
    pub(super) raw_retention: Option<i64>,
    /// Where stored batches go to be freed, off the writer thread.
    pub(super) dropper: std::sync::mpsc::SyncSender<Vec<Freed>>,
    pub(super) health: Arc<StoreHealth>,
    /// The WAL file's size past which the writer checkpoints and truncates it itself.
    pub(super) wal_limit: u64,
}

/// How long the writer's own checkpoint waits for readers to leave the old snapshot before it
/// gives up until the next commit.
const WAL_TRUNCATE_WAIT: Duration = Duration::from_secs(1);

/// A stored batch on its way to be freed, with the ingest memory it holds.
pub(super) type Freed = (
    tributary_wire::Batch,
    Option<tokio::sync::OwnedSemaphorePermit>,
);

/// Starts the thread that frees stored batches; it ends when the writer drops its sender.
pub(super) fn start_dropper() -> std::io::Result<std::sync::mpsc::SyncSender<Vec<Freed>>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Freed>>(4);
    std::thread::Builder::new()
        .name("storage-free".into())
        .spawn(move || rx.into_iter().for_each(drop))?;
    Ok(tx)
}

/// A job with what cleaning decided for each of its points (`None`: not cleaned yet), and
/// which of its points this attempt stores.
pub(super) struct BatchAttempt {
    pub(super) job: WriteJob,
    /// Per point: why it was rejected, if it was.
    pub(super) verdicts: Option<Vec<Option<Rejection>>>,
    /// The points (indexes into the batch) this attempt stores; all of them unless the batch
    /// is being isolated after a failure (see [`WriterThread::isolate`]).
    pub(super) range: Range<usize>,
    /// Set when storing `range` failed alone: its points go to the quarantine with this
    /// reason instead.
    pub(super) poison: Option<String>,
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
pub(super) struct GroupState<'a> {
    /// Values to store: (series id, ts, value), the value borrowed from its batch.
    pub(super) rows: Vec<(i64, i64, &'a FieldValue)>,
    /// The first series id the transaction created: rowids only grow, so a series is new
    /// in this transaction exactly when its id is at least this.
    pub(super) first_created: Option<i64>,
}

/// Whether a sorted run of one series' values keeps the series exact for PromQL's rollup
/// path ([`super::prom`]): whole milliseconds, no two values at one time, numbers finite or
/// a stale marker. (That the run also starts after what is stored is checked in SQL.)
pub(super) fn run_is_exact(run: &[(i64, i64, &FieldValue)]) -> bool {
    let whole = run.iter().all(|(_, ts, v)| {
        ts.rem_euclid(1_000_000) == 0
            && match v {
                FieldValue::F64(x) => x.is_finite() || crate::promql::is_stale(*x),
                _ => true,
            }
    });
    whole && run.windows(2).all(|w| matches!(w, [a, b] if a.1 < b.1))
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
pub(super) const LISTED_QUARANTINED: usize = 1000;

impl WriterThread {
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Job>) {
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
                Origin::LineProtocol | Origin::RemoteWrite => (0, 0),
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
                self.bound_wal();
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

    /// Keeps the WAL under `wal_limit`: the checkpointer thread restarts it only when it gets
    /// the write lock for a moment, which a writer committing without pause never gives, so
    /// past the limit the writer, between two commits and with the group's answers sent,
    /// copies the rest of the WAL into the database and truncates it. Readers still in an
    /// older snapshot make it wait (up to [`WAL_TRUNCATE_WAIT`]) or try again after the next
    /// commit.
    fn bound_wal(&mut self) {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
        if size <= self.wal_limit {
            return;
        }
        let _ = self.conn.busy_timeout(WAL_TRUNCATE_WAIT);
        let result = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            });
        let _ = self.conn.busy_timeout(Duration::from_secs(10));
        match result {
            Ok(0) => {
                self.metrics.wal_restarts.inc();
            }
            // Readers kept it: the next commit tries again.
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, wal_bytes = size, "truncating the WAL failed; retrying after the next commit");
                self.metrics.error("storage", "checkpoint");
            }
        }
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
            first_created: None,
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
                    "UPDATE series SET first_ts = min(first_ts, ?2), last_ts = max(last_ts, ?3),
                         exact = exact AND ?4 AND (?5 OR ?2 > last_ts)
                     WHERE id = ?1",
                )?;
                for run in state.rows.chunk_by(|a, b| a.0 == b.0) {
                    let (Some(first), Some(last)) = (run.first(), run.last()) else {
                        continue;
                    };
                    let created = state.first_created.is_some_and(|id| first.0 >= id);
                    update.execute(params![
                        first.0,
                        first.1,
                        last.1,
                        run_is_exact(run),
                        created
                    ])?;
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
pub(super) fn merge_stored(total: &mut Option<Stored>, part: Option<Stored>) {
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
pub(super) struct Mark {
    pub(super) last_seq: u64,
    pub(super) last_reject: u64,
    /// How much of the agent's drop count earlier gaps already used.
    pub(super) explained: u64,
}

pub(super) fn read_mark(conn: &Connection, agent_id: &str, epoch: &str) -> rusqlite::Result<Mark> {
    Ok(conn
        .prepare_cached(
            "SELECT last_seq, last_reject, explained FROM marks WHERE agent_id = ?1 AND epoch = ?2",
        )?
        .query_row(params![agent_id, epoch], |r| {
            Ok(Mark {
                last_seq: r.get::<_, u64>(0)?,
                last_reject: r.get::<_, u64>(1)?,
                explained: r.get::<_, u64>(2)?,
            })
        })
        .optional()?
        .unwrap_or_default())
}
