//! Per-token request limits (`server.rate_limit` requests per second, bursts of
//! `server.rate_burst`): one runaway client cannot starve the others. A token bucket per known
//! token (an agent's or a reader's) or, without a token, per agent named by its mTLS client
//! certificate; requests without either share one bucket, so
//! made-up tokens cannot grow the map. Over the limit: 429 with `Retry-After` (whole seconds,
//! at least 1), counted in `errors_total{component="rate_limit"}`. `/healthz` and `/metrics`
//! are not limited.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::auth::TokenHash;

/// Whose bucket a request takes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Client {
    /// A configured token's holder.
    Token(TokenHash),
    /// An agent known by its client certificate, without a token.
    Certificate(String),
}

/// A bucket: tokens left, as of when.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of every known token, and the one shared by the rest.
#[derive(Debug)]
pub struct RateLimiter {
    /// Requests per second; 0 switches limiting off.
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<Option<Client>, Bucket>>,
}

impl RateLimiter {
    /// `rate` requests per second on average, `burst` at once; `rate` 0: no limit.
    pub fn new(rate: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `key`'s bucket (`None`: an unknown client) at `now`; `Err` says
    /// how long until the next would be let through.
    pub fn take(&self, key: Option<Client>, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate;
            Err(Duration::try_from_secs_f64(wait).unwrap_or(Duration::from_secs(1)))
        }
    }

    /// Forgets the buckets of clients no longer configured (after a reload).
    pub fn retain(&self, known: impl Fn(&Client) -> bool) {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|key, _| key.as_ref().is_none_or(&known));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_and_each_token_on_its_own() {
        let limiter = RateLimiter::new(10, 3);
        let start = Instant::now();
        let a = Some(Client::Token(TokenHash::of("a")));
        let b = Some(Client::Certificate("b".into()));
        for _ in 0..3 {
            assert_eq!(limiter.take(a.clone(), start), Ok(()));
        }
        let wait = limiter.take(a.clone(), start).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another token is not held up by the first.
        assert_eq!(limiter.take(b.clone(), start), Ok(()));
        // A tenth of a second later, one more.
        let later = start + Duration::from_millis(100);
        assert_eq!(limiter.take(a.clone(), later), Ok(()));
        assert!(limiter.take(a.clone(), later).is_err());
        // Off: everything passes.
        let off = RateLimiter::new(0, 1);
        for _ in 0..100 {
            assert_eq!(off.take(None, start), Ok(()));
        }
        limiter.retain(|client| Some(client) == b.as_ref());
        assert_eq!(limiter.buckets.lock().unwrap().len(), 1);
    }
}
