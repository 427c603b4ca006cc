//! What the agent sends (`Batch`) and what the collector answers (`BatchAck`, `ErrorBody`).

use serde::{Deserialize, Serialize};

use crate::point::Point;

/// Points from one agent's buffer, numbered by the buffer's sequence.
///
/// The points carry the consecutive sequence numbers `first_seq ..= last_seq`, in order; an
/// empty batch has `last_seq == first_seq - 1` and only carries `rejects` and `status`. The
/// collector stores a point only if its sequence is above the high-water mark it keeps for
/// `(agent, epoch)`, and moves the mark in the same transaction, so a retried batch stores
/// nothing twice.
///
/// Field order matters: MessagePack encodes this struct as an array (see [`crate::codec`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The sending agent's configured id. The collector trusts the token, not this field, and
    /// refuses a batch whose id differs from the token's agent.
    pub agent_id: String,
    /// Random id of the agent's buffer database, created with it. A new database (a new epoch)
    /// starts a new sequence, so marks are kept per epoch.
    pub epoch: String,
    /// Sequence of the first point.
    pub first_seq: u64,
    /// Sequence of the last point.
    pub last_seq: u64,
    /// Points this epoch discarded by its overflow policy so far (cumulative, so a retried or
    /// repeated batch cannot count a drop twice). A gap in sequences is explained by it.
    pub dropped: u64,
    /// The agent's clock when it sent the batch (UTC ns), for clock-skew estimates.
    pub sent_at: i64,
    /// The agent's own health, as of sending.
    pub status: AgentStatus,
    /// The points, in sequence order.
    pub points: Vec<Point>,
    /// Payloads the agent could not decode, each with its reason, numbered by their own
    /// sequence (`Reject::id`) and deduplicated by the collector like points.
    pub rejects: Vec<Reject>,
}

impl Batch {
    /// Checks the sequence arithmetic the collector relies on.
    pub fn validate(&self) -> Result<(), String> {
        if self.first_seq == 0 {
            return Err("first_seq must be at least 1".into());
        }
        let expected_last = u64::try_from(self.points.len())
            .ok()
            .and_then(|n| self.first_seq.checked_add(n))
            .and_then(|end| end.checked_sub(1));
        if expected_last != Some(self.last_seq) {
            return Err(format!(
                "last_seq {} does not match first_seq {} and {} points",
                self.last_seq,
                self.first_seq,
                self.points.len()
            ));
        }
        if let Some(pair) = self.rejects.windows(2).find_map(|w| match w {
            [a, b] if a.id >= b.id => Some(b.id),
            _ => None,
        }) {
            return Err(format!("reject ids are not increasing at {pair}"));
        }
        if self.epoch.is_empty() {
            return Err("epoch is empty".into());
        }
        Ok(())
    }
}

/// The agent's view of itself when it sends a batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Points still buffered after this batch.
    pub backlog_points: u64,
    /// Bytes those points take in the buffer.
    pub backlog_bytes: u64,
    /// Event time of the oldest point still buffered after this batch, if any.
    pub oldest_unsent_ts: Option<i64>,
    /// The agent's estimate of its clock's offset from the collector's, if it has a recent
    /// one. Absent from agents before it; and left out when there is none, so a status
    /// without it is the three elements older collectors read (an agent has an estimate only
    /// from a collector that sends its times, i.e. one that reads the fourth element).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<ClockEstimate>,
}

/// How far the agent's clock is from the collector's, measured as NTP does: from one request's
/// four times (agent sends `t0`, collector receives `t1` and replies `t2`, agent receives
/// `t3`), `offset = ((t1 - t0) + (t2 - t3)) / 2` and the true offset lies within
/// `error = round trip / 2` of it, however the delay splits between the two directions. Time
/// a request waits in queues or on a stalled collector widens the bound; it cannot move the
/// estimate outside it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockEstimate {
    /// Collector clock minus agent clock (ns): add it to an agent timestamp to get the
    /// collector's time.
    pub offset_ns: i64,
    /// The true offset lies within this of `offset_ns` (ns).
    pub error_ns: u64,
}

impl ClockEstimate {
    /// The estimate from one exchange: `sent` and `answered` on the agent's clock,
    /// `received` and `replied` on the collector's. `None` if the times cannot be from one
    /// exchange (the answer before the request, or the collector's times reversed).
    pub fn from_exchange(
        sent: i64,
        received: i64,
        replied: i64,
        answered: i64,
    ) -> Option<ClockEstimate> {
        let (t0, t1, t2, t3) = (
            i128::from(sent),
            i128::from(received),
            i128::from(replied),
            i128::from(answered),
        );
        let round_trip = t3.checked_sub(t0)?.checked_sub(t2.checked_sub(t1)?)?;
        if t3 < t0 || t2 < t1 || round_trip < 0 {
            return None;
        }
        let offset = t1.checked_sub(t0)?.checked_add(t2.checked_sub(t3)?)? / 2;
        Some(ClockEstimate {
            offset_ns: i64::try_from(offset).ok()?,
            error_ns: u64::try_from(round_trip / 2).ok()?,
        })
    }
}

/// A payload an input could not decode, kept with its reason instead of being dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reject {
    /// The agent's sequence for rejects (its own, separate from points).
    pub id: u64,
    /// When the agent received the payload (UTC ns).
    pub received_at: i64,
    /// The input that received it, e.g. `mqtt` or the input's configured name.
    pub source: String,
    /// Where it came from: the MQTT topic, a file path, a URL.
    pub topic: String,
    /// The raw bytes, possibly cut to a size limit (the reason says so).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Why it was rejected.
    pub reason: String,
}

/// The collector's answer to a stored batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchAck {
    /// Every point of this `(agent, epoch)` with a sequence at or below this is committed.
    /// The agent deletes its buffered points only up to this value.
    pub committed_through: u64,
    /// Points of this batch newly stored.
    pub stored: u64,
    /// Points of this batch skipped because they were stored before (a retry).
    pub duplicates: u64,
    /// Rejects of this batch newly stored in the quarantine.
    pub rejects_stored: u64,
    /// Points of this batch the collector's cleaning rules sent to the quarantine (counted as
    /// committed: they are kept there with their reason). Absent from older collectors.
    #[serde(default)]
    pub quarantined: u64,
    /// The collector's clock when it began handling the request and when it answered (UTC
    /// ns), for the agent's clock estimate ([`ClockEstimate::from_exchange`]).
    #[serde(default)]
    pub received_at: Option<i64>,
    #[serde(default)]
    pub replied_at: Option<i64>,
}

/// The answer of `GET /api/v1/time`: the collector's clock, for an agent's first clock
/// estimate before it has sent anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeAnswer {
    pub received_at: i64,
    pub replied_at: i64,
}

/// The JSON body of every error answer from the collector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
