//! The writer: one thread that takes jobs from the store's queue, group-commits batches
//! through a [`Backend`], and answers each request only after the commit that holds it.
//!
//! What does not depend on the backend is here: grouping jobs up to `commit_max_points`,
//! cleaning (time sanity and the rules, above each agent's mark), the fallback to one batch at
//! a time when a group fails, isolating the points of a batch whose data the store refuses
//! (halving until each failing point is alone, then quarantining it), refusing every job with
//! 503 when the store cannot commit, and freeing stored batches off the thread. A backend
//! stores a group in one transaction ([`Backend::store_all`]) and says which of its errors
//! mean "the store cannot commit" rather than "this data fails".

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::{error, warn};
use tributary_wire::BatchAck;

use super::{Origin, RetentionReport, StorageError, StoreHealth, Stored, WriteJob};
use crate::clean::{Cleaner, Rejection};
use crate::metrics::Metrics;

/// What the writer's queue carries.
pub(crate) enum Job {
    Write(Box<WriteJob>),
    /// Delete what is past its retention (one bounded pass).
    Retention {
        now: i64,
        reply: tokio::sync::oneshot::Sender<Result<RetentionReport, StorageError>>,
    },
    /// Answer between commits (the watchdog's proof that the writer makes progress).
    Ping(tokio::sync::oneshot::Sender<()>),
}

/// A store the writer commits to.
pub(crate) trait Backend {
    type Error: std::fmt::Display;

    /// Whether `error` means the store cannot commit now (the senders retry: 503), rather
    /// than that this data fails (the batch is isolated, so it cannot come back forever).
    fn cannot_commit(error: &Self::Error) -> bool;

    /// The last sequence stored of an agent's epoch (0 before its first batch), to clean only
    /// what is above it. `store_all` reads it again in its transaction.
    fn read_mark(&mut self, agent_id: &str, epoch: &str) -> Result<u64, Self::Error>;

    /// Stores the jobs' points (each its `range`) in one transaction: points above the marks,
    /// the quarantine, rejects, the marks and the rollups. All or nothing.
    fn store_all(&mut self, jobs: &[BatchAttempt]) -> Result<Vec<Stored>, Self::Error>;

    /// Housekeeping between commits, with the group's answers sent.
    fn after_commit(&mut self);

    /// One bounded retention pass.
    fn retention(&mut self, now: i64) -> Result<RetentionReport, StorageError>;

    /// The store, as errors name it (a path, a URL without its password).
    fn name(&self) -> String;
}

/// The writer thread's state.
pub(crate) struct Writer<B> {
    pub(crate) backend: B,
    pub(crate) commit_max_points: usize,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) cleaner: Cleaner,
    /// Where stored batches go to be freed, off the writer thread.
    pub(crate) dropper: std::sync::mpsc::SyncSender<Vec<Freed>>,
    pub(crate) health: Arc<StoreHealth>,
}

pub(crate) type Freed = (
    tributary_wire::Batch,
    Option<tokio::sync::OwnedSemaphorePermit>,
);

/// Starts the thread that frees stored batches; it ends when the writer drops its sender.
pub(crate) fn start_dropper() -> std::io::Result<std::sync::mpsc::SyncSender<Vec<Freed>>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Freed>>(4);
    std::thread::Builder::new()
        .name("storage-free".into())
        .spawn(move || rx.into_iter().for_each(drop))?;
    Ok(tx)
}

/// A job with what cleaning decided for each of its points (`None`: not cleaned yet), and
/// which of its points this attempt stores.
pub(crate) struct BatchAttempt {
    pub(crate) job: WriteJob,
    /// Per point: why it was rejected, if it was.
    pub(crate) verdicts: Option<Vec<Option<Rejection>>>,
    /// The points (indexes into the batch) this attempt stores; all of them unless the batch
    /// is being isolated after a failure (see `Writer::isolate`).
    pub(crate) range: Range<usize>,
    /// Set when storing `range` failed alone: its points go to the quarantine with this
    /// reason instead.
    pub(crate) poison: Option<String>,
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
/// Most quarantined points of one write listed back to its sender.
pub(crate) const LISTED_QUARANTINED: usize = 1000;

impl<B: Backend> Writer<B> {
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Job>) {
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
                    let _ = reply.send(self.backend.retention(now));
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
    fn clean(&mut self, jobs: &mut [BatchAttempt]) -> Result<(), B::Error> {
        for pending in jobs.iter_mut().filter(|p| p.verdicts.is_none()) {
            let job = &mut pending.job;
            let (mark, shift) = match job.origin {
                Origin::Agent => {
                    let mark = self.backend.read_mark(&job.agent_id, &job.batch.epoch)?;
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
        match self.backend.store_all(&jobs) {
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
                self.backend.after_commit();
            }
            Err(e) if jobs.len() > 1 && !B::cannot_commit(&e) => {
                warn!(error = %e, batches = jobs.len(), "group commit failed; storing the batches one by one");
                self.metrics.error("storage", "group_commit");
                for job in jobs {
                    self.commit_group(vec![job]);
                }
            }
            Err(e) if B::cannot_commit(&e) => self.refuse(jobs, &e),
            Err(e) => {
                for pending in jobs {
                    self.isolate(pending, &e);
                }
            }
        }
    }

    /// Answers every job with the failure of a store that cannot commit (the senders retry).
    fn refuse(&mut self, jobs: Vec<BatchAttempt>, e: &B::Error) {
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
    fn isolate(&mut self, mut pending: BatchAttempt, first_error: &B::Error) {
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
            let error = match self.backend.store_all(std::slice::from_ref(&pending)) {
                Ok(mut stored) => {
                    merge_stored(&mut total, stored.pop());
                    continue;
                }
                Err(e) => e,
            };
            if B::cannot_commit(&error) || budget == 0 {
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
            match self.backend.store_all(std::slice::from_ref(&pending)) {
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
    fn cannot_commit(&self, e: &B::Error) {
        if B::cannot_commit(e) {
            self.health.commit_failed(&e.to_string());
        }
    }

    fn failure(&self, e: &B::Error) -> StorageError {
        StorageError::Other(format!("{}: {e}", self.backend.name()))
    }
}

/// Adds the result of one part of an isolated batch to the total.
pub(crate) fn merge_stored(total: &mut Option<Stored>, part: Option<Stored>) {
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
pub(crate) struct Mark {
    pub(crate) last_seq: u64,
    pub(crate) last_reject: u64,
    /// How much of the agent's drop count earlier gaps already used.
    pub(crate) explained: u64,
}
