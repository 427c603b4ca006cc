//! The durable buffer: every reading is committed to SQLite before its source is acknowledged,
//! and stays there until the collector has confirmed it.
//!
//! # Design
//!
//! * **One file**, `<data_dir>/buffer.db`, in WAL mode. Tables:
//!   `points(seq INTEGER PRIMARY KEY, count, ends, body, raw_len)` holds points encoded for
//!   the wire (`tributary_wire::codec::encode_point`) in rows of up to 1,024 points or about
//!   64 KiB ([`Points`]: the encodings back to back, and where each ends); a row holds the
//!   sequences `seq .. seq + count`. A body of 256 bytes or more is stored as a zstd frame
//!   (level 1, with its length and a checksum) when that is smaller, and `raw_len` then holds
//!   its unpacked length; `max_size` counts points unpacked. Packing is what keeps flash wear
//!   under the payload's own size: every stored byte passes through the WAL and again through
//!   the checkpoint. Forwarding copies the unpacked bytes without decoding, and a million log
//!   lines cost about a thousand row inserts and deletes, not a million. A confirmed sequence, a
//!   refused point or `drop_oldest` inside a row rewrites the row with the points it keeps;
//!   `quarantine(id AUTOINCREMENT, received_at, source, topic, payload, reason)` holds what inputs
//!   could not decode; `deliveries(session, entries)` holds, per commit, the packet ids and
//!   digests of the MQTT messages it stored (one packed row per commit, not one per message;
//!   the newest 65,536 entries per session are kept, which covers every packet id the broker
//!   can still hold unacknowledged); `checkpoints(source, key, value)` holds other input
//!   positions that must change in the same transaction as the data they cover; `meta` holds
//!   the epoch and the cumulative drop count.
//! * **Sequences** follow `meta.last_seq`, written in every transaction that adds points, so a
//!   number is never reused, even after every row was deleted. (Schema version 1 kept one point
//!   per row with `AUTOINCREMENT` sequences, version 2 had no `raw_len`; [`Store::open`]
//!   migrates either in place.) The **epoch** is a random id made with the database: a new file starts a new
//!   sequence, and the collector keeps its high-water mark per `(agent, epoch)`.
//! * **Group commit.** Inputs send [`Ingest`] items through a bounded queue to one writer task
//!   ([`writer`]). It gathers items for up to `flush_interval` or `flush_points` points, or
//!   until the stream pauses for a millisecond (a broker waiting for acks sends nothing more),
//!   and commits them in one transaction with `synchronous = FULL`, then runs each item's [`Ack`]:
//!   the MQTT PUBACK goes out only after the commit. Deletes after a confirmed batch run with
//!   `synchronous = NORMAL`: losing one to a power cut only means the collector sees a retry,
//!   which its mark absorbs.
//! * **Bound.** `max_size` bounds the bytes of buffered bodies. With `drop_oldest` the oldest
//!   points are deleted in the same transaction that would overflow, and counted in `meta`; the
//!   count travels in every batch (`dropped`). With `block` the writer stops committing, so
//!   nothing more is acknowledged and brokers stop sending, until the forwarder frees space.
//! * **Errors.** A failed commit (disk full, I/O error) is logged, counted and retried with a
//!   growing delay; the items stay in memory and unacknowledged, so a crash meanwhile loses
//!   nothing the source does not still hold.
//!
//! Invariant: a source is acknowledged only for items whose transaction has committed.
//! Invariant: a point is deleted only after the collector answered 2xx naming a
//! `committed_through` at or above its sequence (or by the overflow policy, counted).

panic_free_mod!(
    pub mod points;
);
pub mod repair;
pub mod reserve;
pub mod store;
pub mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, watch};

pub use points::Points;
pub use store::{Reader, Store, StoreError, StoredBatch};
pub use writer::{Control, StoreJob, Writer};

/// Something an input received, ready to be committed as one unit.
#[derive(Default)]
pub struct Ingest {
    /// Points, encoded for the wire.
    pub points: Points,
    /// Payloads (or parts) that could not be decoded.
    pub rejects: Vec<NewReject>,
    /// Input state to store in the same transaction.
    pub checkpoint: Option<Checkpoint>,
    /// What to do once the transaction has committed.
    pub ack: Option<Ack>,
    /// The item's share of the queue's byte budget, returned when the item is dropped
    /// (after its commit). Set by [`BufferHandle::send`].
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Ingest {
    /// The bytes this item adds to the buffer, as counted against `max_size`.
    pub fn size(&self) -> u64 {
        let points = store::size::points(self.points.byte_len(), self.points.len());
        let rejects: u64 = self.rejects.iter().map(NewReject::size).sum();
        points.saturating_add(rejects)
    }
}

/// A payload an input could not decode.
#[derive(Debug, Clone)]
pub struct NewReject {
    pub received_at: i64,
    pub source: String,
    pub topic: String,
    pub payload: Vec<u8>,
    pub reason: String,
}

impl NewReject {
    /// The bytes this reject takes, as counted against `max_size`.
    pub fn size(&self) -> u64 {
        store::size::reject(
            self.payload.len(),
            self.topic.len(),
            self.reason.len(),
            self.source.len(),
        )
    }
}

/// Input state that must commit atomically with the data it covers.
#[derive(Debug, Clone)]
pub enum Checkpoint {
    /// A QoS 1 message stored under this packet id, so a redelivery of it is recognised.
    Delivery {
        /// The MQTT session, e.g. `mqtt:<client id>@<host>:<port>`.
        session: Arc<str>,
        pkid: u16,
        digest: [u8; 8],
    },
    /// Any other input position (e.g. a file offset): the latest value per key wins; an
    /// empty value removes the key.
    State {
        /// The input's stable identity.
        source: Arc<str>,
        key: String,
        value: Vec<u8>,
    },
}

/// Receives acknowledgements after their items committed.
pub trait AckSink: Send + Sync {
    /// Called once per acknowledged item, after its commit, in commit order.
    fn ack(&self, token: u64);
}

/// An acknowledgement owed to a source once its item has committed.
pub struct Ack {
    pub sink: Arc<dyn AckSink>,
    pub token: u64,
}

/// Counters the writer keeps and the forwarder reads.
#[derive(Debug, Default)]
pub struct Depth {
    pub points: AtomicU64,
    pub bytes: AtomicU64,
    /// Points discarded by the overflow policy in this epoch (cumulative).
    pub dropped_total: AtomicU64,
    /// Points moved to the quarantine because the collector refused them (cumulative).
    pub refused_total: AtomicU64,
    /// Why the last commit failed, and since when (UTC ns), while commits fail: `/health`
    /// answers 503 with it.
    pub commit_failure: std::sync::Mutex<Option<(String, i64)>>,
}

impl Depth {
    pub fn points(&self) -> u64 {
        self.points.load(Ordering::Relaxed)
    }
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }
    /// Records the outcome of a commit: `Some(reason)` if it failed.
    pub fn set_commit_failure(&self, failure: Option<String>) {
        let mut held = self
            .commit_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match failure {
            None => *held = None,
            Some(reason) => {
                let since = held
                    .as_ref()
                    .map_or_else(tributary_wire::time::now_ns, |(_, since)| *since);
                *held = Some((reason, since));
            }
        }
    }
    /// Why commits fail, and since when, if they do.
    pub fn commit_failure(&self) -> Option<(String, i64)> {
        self.commit_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
    /// Sequences taken out of the buffer without being sent as points: overflow drops and
    /// points refused by the collector (now in the quarantine, sent as rejects). A batch's
    /// `dropped` carries this, so the collector explains the gaps both leave.
    pub fn removed_total(&self) -> u64 {
        self.dropped_total()
            .saturating_add(self.refused_total.load(Ordering::Relaxed))
    }
}

/// The inputs' side of the buffer: a queue into the writer, bounded in items
/// (`queue_capacity`) and in bytes ([`QUEUE_BYTES`]), so a fast reader (a file tail) cannot
/// hold hundreds of megabytes in memory while the writer commits.
#[derive(Clone)]
pub struct BufferHandle {
    tx: mpsc::Sender<Ingest>,
    bytes: Arc<tokio::sync::Semaphore>,
}

/// Bytes of points and rejects that may wait in the queue and in the writer's current
/// transaction at once.
pub const QUEUE_BYTES: usize = 2 << 20;

/// The writer is gone; the agent is shutting down.
#[derive(Debug, thiserror::Error)]
#[error("the buffer writer has stopped")]
pub struct WriterGone;

impl BufferHandle {
    pub fn new(tx: mpsc::Sender<Ingest>) -> BufferHandle {
        BufferHandle {
            tx,
            bytes: Arc::new(tokio::sync::Semaphore::new(QUEUE_BYTES)),
        }
    }

    /// Queues an item, waiting while the queue is full (in items or in bytes).
    pub async fn send(&self, mut item: Ingest) -> Result<(), WriterGone> {
        let size = (item.size() as usize).clamp(1, QUEUE_BYTES) as u32;
        let permit = Arc::clone(&self.bytes)
            .acquire_many_owned(size)
            .await
            .map_err(|_| WriterGone)?;
        item.permit = Some(permit);
        self.tx.send(item).await.map_err(|_| WriterGone)
    }
}

/// What the forwarder needs from the buffer: where to read, how deep it is, how to learn of new
/// commits, and how to ask for deletes.
#[derive(Clone)]
pub struct ForwarderLink {
    pub depth: Arc<Depth>,
    /// The highest committed sequence.
    pub committed: watch::Receiver<u64>,
    pub control: mpsc::UnboundedSender<Control>,
}
