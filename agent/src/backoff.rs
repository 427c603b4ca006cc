//! Exponential backoff with jitter, as a pure state machine; callers supply the randomness.

use std::time::Duration;

/// Delays that double from `initial` up to `max`, each drawn from the upper half of the
/// current step ("equal jitter"): never a tight loop, and many agents restarting together
/// spread out instead of retrying in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            step: initial,
        }
    }

    /// The next delay. `unit` is a random number in `[0, 1)`.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        step.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }

    /// The next delay, with randomness from the thread's generator.
    pub fn next_random(&mut self) -> Duration {
        self.next_delay(rand::random::<f64>())
    }

    /// After a success: start again from `initial`.
    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_within_the_jitter_band() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let upper: Vec<_> = (0..6).map(|_| backoff.next_delay(1.0)).collect();
        let ms: Vec<u128> = upper.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(0.0), Duration::from_millis(50));
        assert_eq!(backoff.next_delay(0.5), Duration::from_millis(150));
    }
}
