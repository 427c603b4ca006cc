//! The buffer writer: one task that group-commits what inputs send and acknowledges it after
//! the commit.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::store::{AppendOutcome, Store, StoreError};
use super::{Depth, Ingest};
use crate::config::{BufferSettings, WhenFull};
use crate::metrics::Metrics;

/// A group commit stops waiting for more items once none has arrived for this long.
const IDLE_GAP: Duration = Duration::from_millis(1);

/// Requests from the forwarder.
pub enum Control {
    /// The collector confirmed points through `seq` and rejects through `reject_id`.
    Delete {
        seq: u64,
        reject_id: u64,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// The collector refuses the point at `seq` whatever the batch around it: move it to the
    /// quarantine with `reason`, so the points behind it can flow.
    Quarantine {
        seq: u64,
        reason: String,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Answer once the store can be reached (the watchdog's proof of progress).
    Ping {
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Run `job` on the store (reading what inputs recorded, for a reload).
    Run {
        job: StoreJob,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// A piece of store work requested by the forwarder, run on the blocking pool.
/// Work on the store, run on the blocking pool between commits.
pub type StoreJob = Box<dyn FnOnce(&mut Store) -> Result<(), StoreError> + Send>;

/// The task that owns the write side of the buffer.
pub struct Writer {
    store: Arc<Mutex<Store>>,
    ingest: mpsc::Receiver<Ingest>,
    control: mpsc::UnboundedReceiver<Control>,
    committed: watch::Sender<u64>,
    settings: BufferSettings,
    metrics: Arc<Metrics>,
    depth: Arc<Depth>,
}

/// Items gathered for one transaction.
#[derive(Default)]
struct Gathered {
    items: Vec<Ingest>,
    points: usize,
    bytes: u64,
}

impl Gathered {
    fn push(&mut self, item: Ingest) {
        self.points += item.points.len().max(1);
        self.bytes += item.size();
        self.items.push(item);
    }
}

impl Writer {
    pub fn new(
        store: Store,
        ingest: mpsc::Receiver<Ingest>,
        control: mpsc::UnboundedReceiver<Control>,
        committed: watch::Sender<u64>,
        settings: BufferSettings,
        metrics: Arc<Metrics>,
        depth: Arc<Depth>,
    ) -> Writer {
        Writer {
            store: Arc::new(Mutex::new(store)),
            ingest,
            control,
            committed,
            settings,
            metrics,
            depth,
        }
    }

    /// Runs until every input has dropped its handle and the forwarder its control sender,
    /// committing everything that was queued. Shutdown is therefore driven by the senders:
    /// inputs stop first, the writer drains, the forwarder makes its last attempt, and then the
    /// writer ends.
    ///
    /// `drained` is cancelled once the inputs are gone and everything they sent is committed
    /// (and acknowledged).
    pub async fn run(mut self, drained: CancellationToken) {
        let mut ingest_open = true;
        let mut control_open = true;
        loop {
            if !ingest_open {
                drained.cancel();
            }
            let mut pending = Gathered::default();
            tokio::select! {
                biased;
                request = self.control.recv(), if control_open => match request {
                    Some(request) => { self.handle_control(request).await; }
                    None => control_open = false,
                },
                item = self.ingest.recv(), if ingest_open => match item {
                    Some(item) => pending.push(item),
                    None => ingest_open = false,
                },
                else => break,
            }
            if pending.items.is_empty() {
                continue;
            }
            self.gather(&mut pending, &mut ingest_open).await;
            if self.settings.when_full == WhenFull::Block {
                self.wait_for_room(&pending, &mut control_open).await;
            }
            self.commit(pending, &mut control_open).await;
        }
        info!("buffer writer stopped");
    }

    /// Takes more items until `flush_points` are waiting, `flush_interval` has passed, or the
    /// stream pauses for [`IDLE_GAP`]. A pause usually means the source is waiting for our acks
    /// (an MQTT broker's in-flight window is full), so waiting longer would only add latency.
    ///
    /// It drains the queue, sleeps for the gap and looks again, rather than waiting for each
    /// item: sleeping with no waker registered, it is not woken once per message.
    async fn gather(&mut self, pending: &mut Gathered, ingest_open: &mut bool) {
        let deadline = Instant::now() + self.settings.flush_interval;
        let mut first_look = true;
        loop {
            let mut taken = 0;
            while pending.points < self.settings.flush_points {
                match self.ingest.try_recv() {
                    Ok(item) => {
                        pending.push(item);
                        taken += 1;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        *ingest_open = false;
                        return;
                    }
                }
            }
            let now = Instant::now();
            let paused = !first_look && taken == 0;
            if pending.points >= self.settings.flush_points || paused || now >= deadline {
                return;
            }
            first_look = false;
            tokio::time::sleep_until(deadline.min(now + IDLE_GAP)).await;
        }
    }

    /// With `when_full = "block"`: serve deletes until the pending items fit.
    async fn wait_for_room(&mut self, pending: &Gathered, control_open: &mut bool) {
        let mut warned = false;
        while *control_open && !self.lock().has_room(pending.bytes) {
            if !warned {
                warn!(
                    buffered_bytes = self.depth.bytes(),
                    max_size = self.settings.max_size,
                    "buffer is full; holding new data unacknowledged until the forwarder frees space"
                );
                self.metrics.error("buffer", "full_blocking");
                warned = true;
            }
            match self.control.recv().await {
                Some(request) => {
                    self.handle_control(request).await;
                }
                None => *control_open = false,
            }
        }
    }

    /// Commits `pending`, retrying on errors (while still serving deletes, which may be what
    /// frees a full disk), then acknowledges every item.
    async fn commit(&mut self, pending: Gathered, control_open: &mut bool) {
        let items = Arc::new(pending.items);
        let mut delay = Duration::from_millis(100);
        let outcome = loop {
            let store = Arc::clone(&self.store);
            let batch = Arc::clone(&items);
            let result = tokio::task::spawn_blocking(move || {
                store
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .append(&batch)
            })
            .await;
            match result {
                Ok(Ok(outcome)) => {
                    self.depth.set_commit_failure(None);
                    break outcome;
                }
                Ok(Err(e)) => {
                    error!(error = %e, retry_in = ?delay, items = items.len(), "buffer commit failed; nothing was acknowledged, retrying");
                    self.metrics.error("buffer", "commit_failed");
                    self.depth.set_commit_failure(Some(e.to_string()));
                }
                Err(e) => {
                    error!(error = %e, "buffer commit task failed; retrying");
                    self.metrics.error("buffer", "commit_panicked");
                }
            }
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    request = self.control.recv(), if *control_open => match request {
                        // A delete may be what frees the disk: try again at once after one.
                        Some(request) => if self.handle_control(request).await {
                            delay = Duration::from_millis(100);
                            break;
                        },
                        None => *control_open = false,
                    },
                }
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        };
        self.after_commit(outcome);
        // The commit is durable: now, and only now, the sources may be acknowledged.
        let items =
            Arc::try_unwrap(items).unwrap_or_else(|_| unreachable!("the commit task has finished"));
        for item in items {
            if let Some(ack) = item.ack {
                ack.sink.ack(ack.token);
            }
        }
    }

    fn after_commit(&self, outcome: AppendOutcome) {
        self.metrics.commits.inc();
        self.metrics.points_buffered.inc_by(outcome.points);
        if outcome.dropped > 0 {
            warn!(
                dropped = outcome.dropped,
                "buffer is full; dropped the oldest points (when_full = \"drop_oldest\")"
            );
            self.metrics.error("buffer", "dropped_oldest");
            self.metrics.dropped.inc_by(outcome.dropped);
        }
        self.publish_depth();
        self.committed.send_replace(outcome.last_seq);
    }

    /// Runs a forwarder's request; returns whether it was a delete that went through.
    async fn handle_control(&mut self, request: Control) -> bool {
        let delete = matches!(request, Control::Delete { .. });
        let (job, done): (StoreJob, _) = match request {
            Control::Delete {
                seq,
                reject_id,
                done,
            } => (
                Box::new(move |store| store.delete_through(seq, reject_id)),
                done,
            ),
            Control::Quarantine { seq, reason, done } => (
                Box::new(move |store| store.quarantine_point(seq, &reason)),
                done,
            ),
            Control::Ping { done } => (Box::new(|_store| Ok(())), done),
            Control::Run { job, done } => (job, done),
        };
        let store = Arc::clone(&self.store);
        let result = tokio::task::spawn_blocking(move || {
            job(&mut store.lock().unwrap_or_else(PoisonError::into_inner))
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Task(e.to_string())));
        self.publish_depth();
        let deleted = delete && result.is_ok();
        let _ = done.send(result);
        deleted
    }

    fn publish_depth(&self) {
        self.metrics
            .buffer_points
            .set(i64::try_from(self.depth.points()).unwrap_or(i64::MAX));
        self.metrics
            .buffer_bytes
            .set(i64::try_from(self.depth.bytes()).unwrap_or(i64::MAX));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
