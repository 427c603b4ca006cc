//! `dedupe`: a point identical (series, time and values) to one seen within the window is
//! quarantined as a duplicate.

use std::hash::{BuildHasher, Hash, Hasher};

use tributary_common::config::ConfigError;
use tributary_common::config::values::parse_duration;
use tributary_wire::{FieldValue, Point};

use super::{Context, Outcome, RuleState};
use crate::clean::config::{RawWindow, RuleKeys};

pub const KEYS: &[&str] = &["window"];

/// How many points pass between sweeps of what fell out of the window.
const TRIM_EVERY: usize = 4096;

#[derive(Debug, Clone)]
pub struct Dedupe {
    /// How far apart in time (ns) a repeat may be and still be one.
    window: i64,
}

impl Dedupe {
    pub fn build(keys: &RuleKeys<'_>) -> Result<Dedupe, ConfigError> {
        let window = match keys.raw.window.clone() {
            None => parse_duration("10m").map_err(|m| keys.error("window", m))?,
            Some(RawWindow::Text(text)) => {
                parse_duration(&text).map_err(|m| keys.error("window", m))?
            }
            Some(RawWindow::Count(_)) => {
                return Err(keys.error("window", "must be a duration, e.g. \"10m\"".into()));
            }
        };
        Ok(Dedupe {
            window: i64::try_from(window.as_nanos()).unwrap_or(i64::MAX),
        })
    }

    pub fn apply(
        &self,
        context: &Context<'_>,
        point: &mut Point,
        state: &mut RuleState,
    ) -> Outcome {
        let mut h = state.hasher.build_hasher();
        context.agent.hash(&mut h);
        point.hash_identity(&mut h);
        let key = h.finish();
        state.newest = state.newest.max(point.ts);
        state.since_trim = state.since_trim.saturating_add(1);
        let horizon = state.newest.saturating_sub(self.window);
        if state.since_trim >= TRIM_EVERY {
            state.since_trim = 0;
            state.seen.retain(|_, ts| *ts >= horizon);
        }
        if point.ts < horizon {
            // Too old to tell: the window has let go of its neighbours.
            return Outcome::Keep;
        }
        match state.seen.insert(key, point.ts) {
            Some(_) => Outcome::Drop(format!(
                "duplicate of a point with the same series, time and values seen within {}s",
                self.window / 1_000_000_000
            )),
            None => Outcome::Keep,
        }
    }
}

/// Hashing a point's identity and values (fields hashed by their bits).
trait HashIdentity {
    fn hash_identity<H: Hasher>(&self, h: &mut H);
}

impl HashIdentity for Point {
    fn hash_identity<H: Hasher>(&self, h: &mut H) {
        self.name.hash(h);
        self.tags.hash(h);
        self.ts.hash(h);
        for (field, value) in &self.fields {
            field.hash(h);
            match value {
                FieldValue::F64(v) => (0u8, v.to_bits()).hash(h),
                FieldValue::I64(v) => (1u8, *v).hash(h),
                FieldValue::Bool(v) => (2u8, *v).hash(h),
                FieldValue::Str(v) => (3u8, v).hash(h),
            }
        }
    }
}
