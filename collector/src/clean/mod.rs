//! Cleaning: ordered rules from `[[clean.rules]]` applied to each point, and time sanity.
//!
//! Rules run in the order written; each matches points by name, tags and field (globs) and
//! acts: `require`, `rename`, `map_values`, `convert`, `range`, `missing`, `outlier`,
//! `dedupe`. A rule that drops a point ends its cleaning, and the point goes to the quarantine
//! with the rule's name and the reason; nothing is dropped silently.
//!
//! The storage writer runs the cleaner (one thread), so stateful rules (`missing` with
//! `fill_last`, `outlier`, `dedupe`) see each series' points in the order they are stored.
//! Their state lives in memory: after a restart, windows start empty.

pub mod config;
pub mod rules;
pub mod time;

use tributary_wire::Point;

pub use rules::Rule;
use rules::{Outcome, RuleState};
pub use time::{TimePolicy, TimeSanity, TimeVerdict};

/// Why a point did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The rule's name, or `time` for time sanity.
    pub rule: String,
    pub reason: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rule {}: {}", self.rule, self.reason)
    }
}

/// The configured rules with their state.
pub struct Cleaner {
    rules: Vec<Rule>,
    states: Vec<RuleState>,
    pub time: TimeSanity,
}

impl Cleaner {
    pub fn new(rules: Vec<Rule>, time: TimeSanity) -> Cleaner {
        let states = rules.iter().map(|_| RuleState::default()).collect();
        Cleaner {
            rules,
            states,
            time,
        }
    }

    /// Forgets what stateful rules remember (after a failed commit, whose points will come
    /// again and must not be taken for repeats).
    pub fn reset_state(&mut self) {
        for state in &mut self.states {
            *state = RuleState::default();
        }
    }

    /// Runs time sanity (with `shift` from [`TimeSanity::batch_shift`]) and every rule on
    /// `point`, changing it in place; `Err` says which check dropped it.
    pub fn clean(
        &mut self,
        agent: &str,
        point: &mut Point,
        shift: i64,
        received_at: i64,
    ) -> Result<(), Rejection> {
        match self.time.check(point.ts.saturating_add(shift), received_at) {
            TimeVerdict::Keep(ts) => point.ts = ts,
            TimeVerdict::Quarantine(reason) => {
                return Err(Rejection {
                    rule: "time".into(),
                    reason,
                });
            }
        }
        for (rule, state) in self.rules.iter().zip(&mut self.states) {
            if !rule.applies_to(point) {
                continue;
            }
            if let Outcome::Drop(reason) = rule.apply(agent, point, state) {
                return Err(Rejection {
                    rule: rule.name.clone(),
                    reason,
                });
            }
        }
        if point.fields.is_empty() {
            return Err(Rejection {
                rule: "fields".into(),
                reason: "point has no fields".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
