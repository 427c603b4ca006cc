//! Time sanity: an agent's clock error, and points whose time cannot be right.

/// What to do with a point out of bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimePolicy {
    Quarantine,
    /// Replace its timestamp with the time the collector received it.
    ReceiveTime,
}

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
    /// How much to add to every timestamp of a batch sent at `sent_at` (agent clock) and
    /// received at `received_at`: the skew when correction is on and it passes the threshold,
    /// else 0. The skew includes the network delay, which the threshold is there to absorb.
    pub fn batch_shift(&self, sent_at: i64, received_at: i64) -> i64 {
        let skew = received_at.saturating_sub(sent_at);
        if self.correct_clock_skew && sent_at != 0 && skew.saturating_abs() > self.skew_threshold {
            skew
        } else {
            0
        }
    }

    /// Checks one timestamp (already shifted).
    pub fn check(&self, ts: i64, received_at: i64) -> TimeVerdict {
        let problem = if self.floor.is_some_and(|floor| ts < floor) {
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
            (Some(_), TimePolicy::ReceiveTime) => TimeVerdict::Keep(received_at),
            (Some(reason), TimePolicy::Quarantine) => TimeVerdict::Quarantine(reason),
        }
    }
}
