//! Time sanity: an agent's clock error, and points whose time cannot be right.
//!
//! Whatever `[time]` says, a timestamp outside [`STORABLE`] is out of bounds: the store's
//! window, chunk and retention arithmetic needs room past a timestamp for the window that
//! holds it, and a query's exclusive end must be able to lie after it. The range leaves about
//! 100 days at each end of the `i64` nanosecond range (1677-09-21 to 2262-04-11), more than the
//! longest rollup resolution the configuration accepts ([`MAX_RESOLUTION`]).

use std::ops::RangeInclusive;

use tributary_wire::AgentStatus;

/// 1678-01-01T00:00:00Z in UTC ns.
const STORABLE_START: i64 = -9_214_560_000_000_000_000;
/// 2262-01-01T00:00:00Z in UTC ns.
const STORABLE_END: i64 = 9_214_646_400_000_000_000;

/// Timestamps the store keeps: 1678-01-01T00:00:00Z up to, not including, 2262-01-01.
pub const STORABLE: RangeInclusive<i64> = STORABLE_START..=STORABLE_END - 1;

/// The longest rollup resolution (31 days, ns): every window that holds a storable timestamp
/// then starts and ends inside the `i64` range.
pub const MAX_RESOLUTION: i64 = 31 * 86_400_000_000_000;

/// What to do with a point out of bounds (`time.out_of_bounds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum TimePolicy {
    #[default]
    Quarantine,
    /// Replace its timestamp with the time the collector received it.
    ReceiveTime,
}

tributary_common::choices!(TimePolicy, "time policy", {
    "quarantine" => TimePolicy::Quarantine,
    "receive_time" => TimePolicy::ReceiveTime,
});

/// `[time]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeSanity {
    pub correct_clock_skew: bool,
    /// Skews smaller than this (ns, either way) are network delay and jitter, left alone.
    pub skew_threshold: i64,
    /// Points later than receipt plus this (ns) are out of bounds; `None`: no limit.
    pub max_future: Option<i64>,
    /// Points before this (UTC ns) are out of bounds.
    pub floor: Option<i64>,
    pub policy: TimePolicy,
}

impl Default for TimeSanity {
    fn default() -> Self {
        TimeSanity {
            correct_clock_skew: false,
            skew_threshold: 5_000_000_000,
            max_future: Some(86_400_000_000_000),
            floor: None,
            policy: TimePolicy::Quarantine,
        }
    }
}

/// What time sanity decided for one point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeVerdict {
    Keep(i64),
    Quarantine(String),
}

impl TimeSanity {
    /// How much to add to every timestamp of a batch from an agent that reported `status`:
    /// its clock offset when correction is on and the estimate is sure to pass the threshold
    /// (the offset minus its error bound does), else 0. An agent without an estimate is not
    /// corrected: time spent in queues and retries is not skew, and only the agent's round
    /// trips can tell the two apart.
    pub fn batch_shift(&self, status: &AgentStatus) -> i64 {
        let Some(clock) = status.clock.filter(|_| self.correct_clock_skew) else {
            return 0;
        };
        let least = clock
            .offset_ns
            .unsigned_abs()
            .saturating_sub(clock.error_ns);
        if least > self.skew_threshold.unsigned_abs() {
            clock.offset_ns
        } else {
            0
        }
    }

    /// Checks one timestamp (already shifted).
    pub fn check(&self, ts: i64, received_at: i64) -> TimeVerdict {
        let problem = if !STORABLE.contains(&ts) {
            Some(format!(
                "timestamp {ts} ns is outside the storable range {} to {}",
                tributary_wire::time::format_rfc3339(*STORABLE.start()),
                tributary_wire::time::format_rfc3339(*STORABLE.end())
            ))
        } else if self.floor.is_some_and(|floor| ts < floor) {
            Some(format!(
                "timestamp {} is before the floor {}",
                tributary_wire::time::format_rfc3339(ts),
                tributary_wire::time::format_rfc3339(self.floor.unwrap_or_default())
            ))
        } else if self
            .max_future
            .is_some_and(|future| ts > received_at.saturating_add(future))
        {
            Some(format!(
                "timestamp {} is more than {}s ahead of the collector's clock",
                tributary_wire::time::format_rfc3339(ts),
                self.max_future.unwrap_or_default() / 1_000_000_000
            ))
        } else {
            None
        };
        match (problem, self.policy) {
            (None, _) => TimeVerdict::Keep(ts),
            // The receive time is the collector's clock: storable unless that is broken too.
            (Some(_), TimePolicy::ReceiveTime) if STORABLE.contains(&received_at) => {
                TimeVerdict::Keep(received_at)
            }
            (Some(reason), _) => TimeVerdict::Quarantine(reason),
        }
    }
}
