//! When polled inputs run: `interval = "10s"` or `schedule = "<cron>"` (in UTC, or in
//! `timezone`), with optional `jitter`.
//!
//! # Cron expressions
//!
//! Six fields (`sec min hour day-of-month month day-of-week`), five fields (taken as second 0),
//! or one of `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`.
//! The expression is checked here, so a mistake is reported with its key and the reason.
//! Occurrences come from croner (the parser tokio-cron-scheduler itself uses) evaluated in the
//! real zone with chrono-tz. Intervals are aligned to the clock, like Telegraf's
//! `round_interval`: `10s` runs at :00, :10, :20, …
//!
//! # Daylight saving
//!
//! croner moves a wall time that a spring-forward gap removes to the first valid instant
//! after it, runs a fixed-time job once in the fall-back fold, and an hourly (wildcard) job in
//! both of its hours; a test pins all three.
//!
//! # Why not tokio-cron-scheduler's clock
//!
//! It was the planned driver; its source (0.15.1) shows why it is not used: zoned cron jobs
//! compute the next run with the UTC offset that held when the job was created
//! (`FixedOffset` in its `scheduler.rs`), so they run an hour off after a DST change; one-shot
//! jobs round their delay down to whole seconds; intervals are whole seconds from the job's
//! creation; and its ticker wakes every 500 ms even when nothing is due, on a device that
//! should sleep. Each input instead sleeps on a tokio timer until its next occurrence: exact
//! to the millisecond, DST-correct, and free while idle.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// The nicknames accepted in place of fields.
const NICKNAMES: [&str; 7] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

/// When an input runs.
#[derive(Debug, Clone)]
pub enum Timing {
    /// Every so many whole seconds, aligned to the clock.
    Every(Duration),
    /// At each occurrence of a cron expression in a time zone.
    Cron {
        /// As written, for messages.
        text: String,
        cron: Box<Cron>,
        zone: Tz,
    },
}

/// A checked schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub timing: Timing,
    /// Each run waits a random delay up to this long, so devices do not poll in step.
    pub jitter: Duration,
}

impl Schedule {
    /// Checks `interval`, `schedule`, `timezone` and `jitter` as written in an input's table.
    /// The `Err` names the key at fault (relative to the table) and the problem.
    pub fn resolve(
        interval: Option<&str>,
        schedule: Option<&str>,
        timezone: Option<&str>,
        jitter: Option<&str>,
        default_interval: &str,
    ) -> Result<Schedule, (&'static str, String)> {
        let zone = match timezone {
            None => None,
            Some(name) => Some(name.parse::<Tz>().map_err(|_| {
                (
                    "timezone",
                    format!("{name:?} is not an IANA time zone name such as \"Europe/Berlin\" or \"UTC\""),
                )
            })?),
        };
        let timing = match (interval, schedule) {
            (Some(_), Some(_)) => {
                return Err((
                    "schedule",
                    "set either interval or schedule, not both".to_owned(),
                ));
            }
            (_, Some(text)) => Timing::Cron {
                text: text.to_owned(),
                cron: Box::new(parse_cron(text).map_err(|m| ("schedule", m))?),
                zone: zone.unwrap_or(Tz::UTC),
            },
            (interval, None) => {
                if zone.is_some() {
                    return Err((
                        "timezone",
                        "applies only to a cron schedule, not to an interval".to_owned(),
                    ));
                }
                Timing::Every(parse_interval(interval.unwrap_or(default_interval))?)
            }
        };
        let jitter = match jitter {
            None => Duration::ZERO,
            Some(text) => {
                tributary_common::config::values::parse_duration(text).map_err(|m| ("jitter", m))?
            }
        };
        if let Timing::Every(every) = &timing
            && jitter >= *every
        {
            return Err((
                "jitter",
                format!("{jitter:?} must be shorter than the interval ({every:?})"),
            ));
        }
        Ok(Schedule { timing, jitter })
    }

    /// The runs strictly after `after`, in UTC. Ends if the expression never matches again
    /// (e.g. a past year). An iterator rather than a "next after" function: in a fall-back
    /// fold an hourly job runs at both 02:00s, which a search from the last run cannot see.
    pub fn runs_after(&self, after: DateTime<Utc>) -> Runs {
        match &self.timing {
            Timing::Every(every) => {
                // Aligned to the clock: the last multiple of the interval since the epoch.
                let step = i64::try_from(every.as_nanos()).unwrap_or(i64::MAX);
                let now = after.timestamp_nanos_opt().unwrap_or(0);
                Runs::Every {
                    next: DateTime::from_timestamp_nanos(now - now.rem_euclid(step)),
                    every: chrono::Duration::nanoseconds(step),
                }
            }
            Timing::Cron { cron, zone, .. } => {
                Runs::Cron {
                    cron: cron.clone(),
                    zone: *zone,
                    // Cron times are whole seconds.
                    last: DateTime::from_timestamp(after.timestamp(), 0).unwrap_or(after),
                }
            }
        }
    }

    /// Describes the schedule for logs.
    pub fn describe(&self) -> String {
        match &self.timing {
            Timing::Every(every) => format!("every {}", humantime::format_duration(*every)),
            Timing::Cron { text, zone, .. } => format!("cron {text:?} in {zone}"),
        }
    }
}

/// The run times of a schedule.
pub enum Runs {
    Every {
        next: DateTime<Utc>,
        every: chrono::Duration,
    },
    Cron {
        cron: Box<Cron>,
        zone: Tz,
        last: DateTime<Utc>,
    },
}

/// The first occurrence of `cron` after `last`, in `zone`.
///
/// croner's own iterator skips every other second of a per-second pattern (it adds a second
/// after each find, and its next search is exclusive too), so each step is a fresh search. A
/// fresh search from inside a fall-back fold cannot see the fold's second hour, so when the
/// UTC offset changes before the found time, croner's iterator is run from two hours earlier
/// (it does yield both hours of the fold) and the earliest occurrence after `last` wins.
fn next_cron(cron: &Cron, zone: Tz, last: DateTime<Utc>) -> Option<DateTime<Utc>> {
    use chrono::Offset;
    let found = cron
        .find_next_occurrence(&last.with_timezone(&zone), false)
        .ok()?
        .with_timezone(&Utc);
    let offset = |at: DateTime<Utc>| at.with_timezone(&zone).offset().fix();
    if offset(last) == offset(found) {
        return Some(found);
    }
    let earlier = cron
        .iter_after((last - chrono::Duration::hours(2)).with_timezone(&zone))
        .map(|at| at.with_timezone(&Utc))
        .take_while(|at| *at <= found)
        .take(20_000)
        .find(|at| *at > last);
    Some(earlier.map_or(found, |at| at.min(found)))
}

impl Iterator for Runs {
    type Item = DateTime<Utc>;

    fn next(&mut self) -> Option<DateTime<Utc>> {
        match self {
            Runs::Every { next, every } => {
                *next = next.checked_add_signed(*every)?;
                Some(*next)
            }
            Runs::Cron { cron, zone, last } => {
                let next = next_cron(cron, *zone, *last)?;
                *last = next;
                Some(next)
            }
        }
    }
}

/// Parses a cron expression in the forms the module docs list.
pub fn parse_cron(text: &str) -> Result<Cron, String> {
    let trimmed = text.trim();
    if trimmed.starts_with('@') {
        if !NICKNAMES.iter().any(|n| n.eq_ignore_ascii_case(trimmed)) {
            return Err(format!(
                "{text:?} is not a known nickname; use one of {}",
                NICKNAMES.join(", ")
            ));
        }
    } else {
        let fields = trimmed.split_whitespace().count();
        if fields != 5 && fields != 6 {
            return Err(format!(
                "{text:?} has {fields} fields; a cron expression has 6 (sec min hour day-of-month month day-of-week), 5 (min hour day-of-month month day-of-week, at second 0), or is a nickname like @hourly"
            ));
        }
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(trimmed)
        .map_err(|e| match out_of_range(trimmed) {
            Some(why) => format!("{text:?} is not a valid cron expression: {why}"),
            None => format!("{text:?} is not a valid cron expression: {e}"),
        })
}

/// The first field of a 5- or 6-field expression holding a number outside its range, said
/// plainly (croner only says "Number out of bounds").
fn out_of_range(expression: &str) -> Option<String> {
    const SIX: [(&str, u32, u32); 6] = [
        ("second", 0, 59),
        ("minute", 0, 59),
        ("hour", 0, 23),
        ("day of month", 1, 31),
        ("month", 1, 12),
        ("day of week", 0, 7),
    ];
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let names = match fields.len() {
        6 => &SIX[..],
        5 => SIX.get(1..)?,
        _ => return None,
    };
    for (field, (name, low, high)) in fields.iter().zip(names) {
        // Numbers in ranges and lists; a step after `/` is a count, not a value of the field.
        for part in field.split(',') {
            let values = part.split('/').next().unwrap_or(part);
            for number in values.split('-').filter_map(|n| n.parse::<u32>().ok()) {
                if number < *low || number > *high {
                    return Some(format!(
                        "the {name} field is {field:?}, and {number} is outside {low}-{high}"
                    ));
                }
            }
        }
    }
    None
}

/// An interval: a whole number of seconds, at least one.
fn parse_interval(text: &str) -> Result<Duration, (&'static str, String)> {
    let every =
        tributary_common::config::values::parse_duration(text).map_err(|m| ("interval", m))?;
    if every < Duration::from_secs(1) || every.subsec_nanos() != 0 {
        return Err((
            "interval",
            format!("{text:?} must be a whole number of seconds, at least 1s"),
        ));
    }
    Ok(every)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_number_out_of_range_names_its_field_and_the_range() {
        let error = parse_cron("61 * * * *").unwrap_err();
        assert!(
            error.contains("the minute field is \"61\", and 61 is outside 0-59"),
            "{error}"
        );
        let error = parse_cron("0 0 25 * * *").unwrap_err();
        assert!(
            error.contains("the hour field") && error.contains("0-23"),
            "{error}"
        );
        let error = parse_cron("0 0 1-32 * *").unwrap_err();
        assert!(
            error.contains("day of month") && error.contains("1-31"),
            "{error}"
        );
        assert!(parse_cron("*/15 * * * *").is_ok());
    }

    fn cron(text: &str, zone: Option<&str>) -> Schedule {
        Schedule::resolve(None, Some(text), zone, None, "10s").unwrap()
    }

    fn next(schedule: &Schedule, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        schedule.runs_after(after).next()
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn five_fields_run_at_second_zero_and_six_fields_have_seconds() {
        let five = cron("*/5 * * * *", None);
        assert_eq!(
            next(&five, utc("2026-03-01T10:01:30Z")),
            Some(utc("2026-03-01T10:05:00Z"))
        );
        let six = cron("15 */5 * * * *", None);
        assert_eq!(
            next(&six, utc("2026-03-01T10:05:15Z")),
            Some(utc("2026-03-01T10:10:15Z"))
        );
        let hourly = cron("@hourly", None);
        assert_eq!(
            next(&hourly, utc("2026-03-01T10:00:00Z")),
            Some(utc("2026-03-01T11:00:00Z"))
        );
        assert_eq!(
            next(&cron("@DAILY", None), utc("2026-03-01T10:00:00Z")),
            Some(utc("2026-03-02T00:00:00Z"))
        );
    }

    #[test]
    fn bad_expressions_say_why() {
        let error = |text: &str| {
            Schedule::resolve(None, Some(text), None, None, "10s")
                .unwrap_err()
                .1
        };
        assert!(
            error("* * *").contains("has 3 fields"),
            "{}",
            error("* * *")
        );
        assert!(error("0 0 0 * * * 2030").contains("has 7 fields"));
        assert!(error("@fortnightly").contains("not a known nickname"));
        assert!(error("61 * * * *").contains("not a valid cron expression"));
        assert!(error("* * * * mon-foo").contains("not a valid cron expression"));
        let both = Schedule::resolve(Some("10s"), Some("@hourly"), None, None, "10s");
        assert_eq!(both.unwrap_err().0, "schedule");
        let zone = Schedule::resolve(None, Some("@hourly"), Some("Mars/Olympus"), None, "10s");
        assert_eq!(zone.unwrap_err().0, "timezone");
        let fraction = Schedule::resolve(Some("1500ms"), None, None, None, "10s");
        assert_eq!(fraction.unwrap_err().0, "interval");
        let jitter = Schedule::resolve(Some("10s"), None, None, Some("10s"), "10s");
        assert_eq!(jitter.unwrap_err().0, "jitter");
    }

    #[test]
    fn zoned_schedules_follow_daylight_saving() {
        // 02:30 every day in Berlin. Winter: UTC+1, summer: UTC+2.
        let daily = cron("0 30 2 * * *", Some("Europe/Berlin"));
        assert_eq!(
            next(&daily, utc("2026-03-27T12:00:00Z")),
            Some(utc("2026-03-28T01:30:00Z"))
        );
        // 2026-03-29: clocks jump 02:00 -> 03:00; 02:30 does not exist and runs at the first
        // instant after the gap, once.
        let spring = next(&daily, utc("2026-03-28T01:30:00Z")).unwrap();
        assert_eq!(spring, utc("2026-03-29T01:00:00Z"));
        // The day after: 02:30 summer time.
        assert_eq!(next(&daily, spring), Some(utc("2026-03-30T00:30:00Z")));
        // 2026-10-25: clocks fall back 03:00 -> 02:00; 02:30 happens twice and runs once.
        let before = utc("2026-10-24T12:00:00Z");
        let first = next(&daily, before).unwrap();
        assert_eq!(first, utc("2026-10-25T00:30:00Z"));
        let next = next(&daily, first).unwrap();
        assert_eq!(next, utc("2026-10-26T01:30:00Z"));

        // An hourly job keeps one run per real hour through both changes.
        let hourly = cron("0 0 * * * *", Some("Europe/Berlin"));
        let runs: Vec<_> = hourly
            .runs_after(utc("2026-10-24T23:30:00Z"))
            .take(5)
            .collect();
        let expected: Vec<_> = (0..5)
            .map(|h| utc("2026-10-25T00:00:00Z") + chrono::Duration::hours(h))
            .collect();
        assert_eq!(runs, expected);
        let runs: Vec<_> = hourly
            .runs_after(utc("2026-03-28T23:30:00Z"))
            .take(3)
            .collect();
        assert_eq!(
            runs,
            [
                utc("2026-03-29T00:00:00Z"),
                utc("2026-03-29T01:00:00Z"),
                utc("2026-03-29T02:00:00Z")
            ]
        );
    }

    #[test]
    fn a_per_second_schedule_runs_every_second() {
        let every = cron("* * * * * *", None);
        let runs: Vec<_> = every
            .runs_after(utc("2026-03-01T10:00:00.5Z"))
            .take(3)
            .collect();
        assert_eq!(
            runs,
            [
                utc("2026-03-01T10:00:01Z"),
                utc("2026-03-01T10:00:02Z"),
                utc("2026-03-01T10:00:03Z")
            ]
        );
    }

    #[test]
    fn intervals_are_aligned_to_the_clock() {
        let every = Schedule::resolve(Some("10s"), None, None, None, "10s").unwrap();
        let runs: Vec<_> = every
            .runs_after(utc("2026-03-01T10:00:03.5Z"))
            .take(2)
            .collect();
        assert_eq!(
            runs,
            [utc("2026-03-01T10:00:10Z"), utc("2026-03-01T10:00:20Z")]
        );
    }

    #[test]
    fn utc_is_the_default_zone() {
        let daily = cron("0 0 6 * * *", None);
        let at = Utc.with_ymd_and_hms(2026, 7, 1, 0, 0, 0).unwrap();
        assert_eq!(
            next(&daily, at),
            Some(Utc.with_ymd_and_hms(2026, 7, 1, 6, 0, 0).unwrap())
        );
    }
}
