//! The agent's estimate of its clock's offset from the collector's, for the collector's
//! clock-skew correction.
//!
//! Every answered request is an NTP-style exchange ([`ClockEstimate::from_exchange`]): the
//! agent stamps when it sent and when the answer came, the collector when it received and
//! replied. Time in queues, retries or on a stalled collector only widens an exchange's error
//! bound (half its round trip); it cannot move the true offset outside it. Of the recent
//! exchanges, the one with the smallest bound wins (NTP's clock filter), its bound grown by
//! how far the local clock may have drifted since ([`DRIFT_PPM`]).
//!
//! A sample is forgotten when it is older than [`MAX_AGE`], and all of them when the local
//! clock was stepped (the wall clock moved differently from the monotonic clock between a
//! sample and now): an offset measured before a step says nothing about the clock after it.
//!
//! Pure: the caller passes the times, so tests need no clock.


use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tributary_wire::ClockEstimate;

/// Samples kept.
const SAMPLES: usize = 8;

/// Samples older than this are forgotten.
pub const MAX_AGE: Duration = Duration::from_secs(15 * 60);

/// How fast a local clock may drift, in parts per million (a cheap crystal is within 50).
pub const DRIFT_PPM: u64 = 100;

/// How far the wall clock may move from the monotonic clock before it counts as stepped (ns).
const STEP_TOLERANCE_NS: i64 = 250_000_000;

/// One measured exchange.
#[derive(Debug, Clone, Copy)]
struct Sample {
    estimate: ClockEstimate,
    /// The local wall clock (UTC ns) and monotonic clock when the answer came.
    wall: i64,
    at: Instant,
}

impl Sample {
    /// Whether the wall clock moved differently from the monotonic clock since this sample.
    fn stepped(&self, now_wall: i64, now: Instant) -> bool {
        let elapsed =
            i64::try_from(now.saturating_duration_since(self.at).as_nanos()).unwrap_or(i64::MAX);
        let expected = self.wall.saturating_add(elapsed);
        now_wall.saturating_sub(expected).saturating_abs() > STEP_TOLERANCE_NS
    }

    fn usable(&self, now_wall: i64, now: Instant) -> bool {
        !self.stepped(now_wall, now) && now.saturating_duration_since(self.at) <= MAX_AGE
    }
}

/// Recent exchanges with the collector.
#[derive(Debug, Default)]
pub struct ClockFilter {
    samples: VecDeque<Sample>,
}

impl ClockFilter {
    /// Records an exchange: `sent` and `answered` on the local wall clock (at `answered_at`
    /// on the monotonic clock), `received` and `replied` on the collector's. Exchanges that
    /// cannot be one (times out of order) are ignored.
    pub fn record(
        &mut self,
        sent: i64,
        received: i64,
        replied: i64,
        answered: i64,
        answered_at: Instant,
    ) {
        let Some(estimate) = ClockEstimate::from_exchange(sent, received, replied, answered) else {
            return;
        };
        // Samples from before a step of the local clock, or too old, are of no more use.
        self.samples.retain(|s| s.usable(answered, answered_at));
        if self.samples.len() >= SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            estimate,
            wall: answered,
            at: answered_at,
        });
    }

    /// The best estimate as of `now_wall` / `now` (local wall and monotonic clocks), if a
    /// recent one exists and the clock has not been stepped since.
    pub fn estimate(&self, now_wall: i64, now: Instant) -> Option<ClockEstimate> {
        if self.samples.iter().any(|s| s.stepped(now_wall, now)) {
            return None;
        }
        self.samples
            .iter()
            .filter(|s| now.saturating_duration_since(s.at) <= MAX_AGE)
            .map(|s| {
                let age = u64::try_from(now.saturating_duration_since(s.at).as_nanos())
                    .unwrap_or(u64::MAX);
                let drift = (age / 1_000_000).saturating_mul(DRIFT_PPM);
                ClockEstimate {
                    offset_ns: s.estimate.offset_ns,
                    error_ns: s.estimate.error_ns.saturating_add(drift),
                }
            })
            .min_by_key(|e| e.error_ns)
    }

    /// Whether a recent sample exists (else the forwarder asks the collector's time first).
    pub fn has_recent(&self, now: Instant) -> bool {
        self.samples
            .iter()
            .any(|s| now.saturating_duration_since(s.at) <= MAX_AGE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;
    const T: i64 = 1_700_000_000_000_000_000;

    #[test]
    fn the_narrowest_exchange_wins_and_a_stall_cannot_fool_it() {
        let start = Instant::now();
        let mut filter = ClockFilter::default();
        // Agent 1 h behind; a 4 ms round trip.
        let offset = 3_600_000 * MS;
        filter.record(
            T,
            T + offset + 2 * MS,
            T + offset + 3 * MS,
            T + 5 * MS,
            start,
        );
        // A collector stalled for 20 s: the request waited 20 s before it was received.
        filter.record(
            T + 10 * MS,
            T + offset + 20_010 * MS,
            T + offset + 20_011 * MS,
            T + 20_012 * MS,
            start + Duration::from_millis(20_007),
        );
        let estimate = filter
            .estimate(T + 20_012 * MS, start + Duration::from_millis(20_007))
            .unwrap();
        assert!(
            (estimate.offset_ns - offset).abs() <= 2 * MS,
            "{estimate:?}"
        );
        // Half the 4 ms round trip, and 100 ppm of drift over the 20 s since.
        assert!(estimate.error_ns <= 5 * MS as u64, "{estimate:?}");

        // With correct clocks and only the stalled exchange, the offset it suggests (10 s)
        // lies within its own bound (10 s): nothing says the clock is off.
        let mut stalled = ClockFilter::default();
        stalled.record(T, T + 20_000 * MS, T + 20_000 * MS, T + 20_000 * MS, start);
        let estimate = stalled.estimate(T + 20_000 * MS, start).unwrap();
        assert!(estimate.offset_ns.unsigned_abs() <= estimate.error_ns);
    }

    #[test]
    fn samples_age_out_and_a_stepped_clock_forgets_them() {
        let start = Instant::now();
        let mut filter = ClockFilter::default();
        filter.record(T, T + MS, T + MS, T + 2 * MS, start);
        assert!(filter.has_recent(start));
        // Drift widens the bound with age: 100 ppm of 10 minutes is 60 ms.
        let later = start + Duration::from_secs(600);
        let estimate = filter.estimate(T + 2 * MS + 600_000 * MS, later).unwrap();
        assert!(estimate.error_ns >= 60 * MS as u64, "{estimate:?}");
        // Past the maximum age: gone.
        let much_later = start + MAX_AGE + Duration::from_secs(1);
        let wall =
            T + 2 * MS + i64::try_from((MAX_AGE + Duration::from_secs(1)).as_nanos()).unwrap();
        assert!(filter.estimate(wall, much_later).is_none());
        assert!(!filter.has_recent(much_later));

        // The wall clock jumps by a minute while the monotonic clock moves a second.
        filter.record(T, T + MS, T + MS, T + 2 * MS, start);
        let step = start + Duration::from_secs(1);
        assert!(filter.estimate(T + 2 * MS + 61_000 * MS, step).is_none());
    }

    #[test]
    fn impossible_exchanges_are_ignored() {
        let start = Instant::now();
        let mut filter = ClockFilter::default();
        // Answered before it was sent; replied before received.
        filter.record(T, T, T, T - 1, start);
        filter.record(T, T, T - 1, T + 1, start);
        assert!(filter.samples.is_empty());
        // The ends of the range are arithmetic, not a panic.
        filter.record(i64::MIN, i64::MAX, i64::MAX, i64::MAX, start);
        assert_eq!(filter.samples.len(), 1);
        let _ = filter.estimate(i64::MAX, start);
    }
}
