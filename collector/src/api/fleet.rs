//! The fleet's liveness: each agent's status from when it was last heard of (`[fleet]`
//! thresholds), the version its requests name, and the points it had stored in the last whole
//! minute (kept in memory: a restart starts the count over).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// An agent's status, by the age of its last stored request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Heard from within `late_after`.
    Ok,
    /// Not heard from for longer than `late_after`, but within `silent_after`.
    Late,
    /// Not heard from for longer than `silent_after`.
    Silent,
    /// Configured, never heard from.
    NeverSeen,
}

/// The status of an agent last seen at `last_seen` (ns), at `now`.
pub fn status(
    last_seen: Option<i64>,
    now: i64,
    late_after: Duration,
    silent_after: Duration,
) -> Status {
    let Some(seen) = last_seen else {
        return Status::NeverSeen;
    };
    let age = u128::try_from(now.saturating_sub(seen)).unwrap_or(0);
    if age > silent_after.as_nanos() {
        Status::Silent
    } else if age > late_after.as_nanos() {
        Status::Late
    } else {
        Status::Ok
    }
}

#[derive(Debug, Default, Clone)]
struct Activity {
    version: Option<String>,
    /// The minute (Unix minutes) `this_minute` counts, and the count of the one before.
    minute: i64,
    this_minute: u64,
    last_minute: u64,
}

/// The thresholds and what ingest has seen of each agent since start.
#[derive(Debug)]
pub struct Fleet {
    pub late_after: Duration,
    pub silent_after: Duration,
    activity: Mutex<HashMap<String, Activity>>,
}

const MINUTE_NS: i64 = 60_000_000_000;

impl Fleet {
    pub fn new(late_after: Duration, silent_after: Duration) -> Fleet {
        Fleet {
            late_after,
            silent_after,
            activity: Mutex::new(HashMap::new()),
        }
    }

    /// Notes that `agent` had `points` stored at `now` (ns), by a client that calls itself
    /// `user_agent` (`tributary-agent/0.1.0`, `Telegraf/1.30`, `Prometheus/2.42.0`).
    pub fn record(&self, agent: &str, points: u64, user_agent: Option<&str>, now: i64) {
        let Ok(mut activity) = self.activity.lock() else {
            return;
        };
        let entry = activity.entry(agent.to_owned()).or_default();
        let minute = now.div_euclid(MINUTE_NS);
        if minute != entry.minute {
            entry.last_minute = if minute == entry.minute.saturating_add(1) {
                entry.this_minute
            } else {
                0
            };
            entry.this_minute = 0;
            entry.minute = minute;
        }
        entry.this_minute = entry.this_minute.saturating_add(points);
        if let Some(client) = user_agent.filter(|c| !c.is_empty()) {
            let client: String = client.chars().take(100).collect();
            if entry.version.as_deref() != Some(client.as_str()) {
                entry.version = Some(client);
            }
        }
    }

    /// The client name `agent` last sent, and the points it had stored in the last whole
    /// minute before `now`.
    pub fn activity(&self, agent: &str, now: i64) -> (Option<String>, u64) {
        let Ok(activity) = self.activity.lock() else {
            return (None, 0);
        };
        let Some(entry) = activity.get(agent) else {
            return (None, 0);
        };
        let minute = now.div_euclid(MINUTE_NS);
        let points = if minute == entry.minute {
            entry.last_minute
        } else if minute == entry.minute.saturating_add(1) {
            entry.this_minute
        } else {
            0
        };
        (entry.version.clone(), points)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_the_age_of_the_last_request() {
        let (late, silent) = (Duration::from_secs(120), Duration::from_secs(600));
        let s = 1_000_000_000i64;
        assert_eq!(status(None, 0, late, silent), Status::NeverSeen);
        assert_eq!(status(Some(1000 * s), 1100 * s, late, silent), Status::Ok);
        assert_eq!(status(Some(1000 * s), 1120 * s, late, silent), Status::Ok);
        assert_eq!(status(Some(1000 * s), 1121 * s, late, silent), Status::Late);
        assert_eq!(
            status(Some(1000 * s), 1601 * s, late, silent),
            Status::Silent
        );
        // A clock that went back reads as just seen.
        assert_eq!(status(Some(1000 * s), 900 * s, late, silent), Status::Ok);
    }

    #[test]
    fn points_per_minute_are_the_last_whole_minutes() {
        let fleet = Fleet::new(Duration::from_secs(1), Duration::from_secs(2));
        let m = MINUTE_NS;
        fleet.record("a", 10, Some("tributary-agent/0.1.0"), 5 * m);
        fleet.record("a", 5, None, 5 * m + 30_000_000_000);
        // During minute 5, the minute before (nothing); during minute 6, minute 5's 15.
        assert_eq!(fleet.activity("a", 5 * m + 1).1, 0);
        assert_eq!(
            fleet.activity("a", 6 * m + 1),
            (Some("tributary-agent/0.1.0".into()), 15)
        );
        fleet.record("a", 7, None, 6 * m + 2);
        assert_eq!(fleet.activity("a", 6 * m + 3).1, 15);
        assert_eq!(fleet.activity("a", 7 * m).1, 7);
        // Quiet for minutes: nothing.
        assert_eq!(fleet.activity("a", 9 * m).1, 0);
        fleet.record("a", 1, None, 9 * m);
        assert_eq!(fleet.activity("a", 9 * m + 1).1, 0);
        assert_eq!(fleet.activity("b", 9 * m).1, 0);
    }
}
