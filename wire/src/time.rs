//! Timestamps: UTC nanoseconds since the Unix epoch, and their text forms.

use chrono::{DateTime, SecondsFormat, Utc};

/// The current time in UTC nanoseconds.
pub fn now_ns() -> i64 {
    Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// Parses an RFC 3339 timestamp (`2026-11-21T20:15:13.5Z`, any offset) into UTC nanoseconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
}

/// Formats UTC nanoseconds as RFC 3339 with as many fractional digits as needed.
pub fn format_rfc3339(ns: i64) -> String {
    DateTime::<Utc>::from_timestamp_nanos(ns).to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Converts a Unix timestamp of unknown unit to nanoseconds, telling the unit by its magnitude:
/// below 10^11 it is seconds (up to the year 5138), below 10^14 milliseconds, below 10^17
/// microseconds, else nanoseconds. Returns `None` for values that are not finite or overflow.
pub fn unix_to_ns(value: f64) -> Option<i64> {
    if !value.is_finite() {
        return None;
    }
    let magnitude = value.abs();
    let scale = if magnitude < 1e11 {
        1e9
    } else if magnitude < 1e14 {
        1e6
    } else if magnitude < 1e17 {
        1e3
    } else {
        1.0
    };
    let ns = (value * scale).round();
    // i64::MAX as f64 rounds up to 2^63, which does not fit; compare strictly.
    if ns >= i64::MIN as f64 && ns < i64::MAX as f64 {
        Some(ns as i64)
    } else {
        None
    }
}

/// Like [`unix_to_ns`] for integers, without a round trip through `f64` (which would lose
/// nanoseconds).
pub fn unix_int_to_ns(value: i64) -> Option<i64> {
    let magnitude = value.unsigned_abs();
    let scale: i64 = if magnitude < 100_000_000_000 {
        1_000_000_000
    } else if magnitude < 100_000_000_000_000 {
        1_000_000
    } else if magnitude < 100_000_000_000_000_000 {
        1_000
    } else {
        1
    };
    value.checked_mul(scale)
}

/// Parses a query bound: RFC 3339, or Unix seconds (integer or fractional).
pub fn parse_time_param(text: &str) -> Result<i64, String> {
    parse_time_param_at(text, now_ns())
}

/// [`parse_time_param`] with `now` for the relative forms: `now`, `now-1h`, `now+30m`, and
/// `-1h` (before now). Units: `ns`, `us`, `ms`, `s`, `m`, `h`, `d`, `w`, combinable (`1h30m`).
pub fn parse_time_param_at(text: &str, now: i64) -> Result<i64, String> {
    let text = text.trim();
    let relative = text
        .strip_prefix("now")
        .map(str::trim_start)
        .or_else(|| text.starts_with('-').then_some(text));
    if let Some(rest) = relative {
        if rest.is_empty() {
            return Ok(now);
        }
        // A bare negative number is Unix seconds before 1970, not a relative time.
        if rest.parse::<f64>().is_err() || text.starts_with("now") {
            let (sign, span) = match rest.split_at_checked(1) {
                Some(("-", span)) => (-1i64, span),
                Some(("+", span)) => (1, span),
                _ => return Err(format!("{text:?}: write now, now-1h, now+5m or -1h")),
            };
            let ns = parse_span(span.trim()).ok_or_else(|| {
                format!("{text:?}: {span:?} is not a duration like 1h, 30m or 1h30m")
            })?;
            return ns
                .checked_mul(sign)
                .and_then(|offset| now.checked_add(offset))
                .ok_or_else(|| format!("{text:?} is out of range"));
        }
    }
    if let Some(ns) = parse_rfc3339(text) {
        return Ok(ns);
    }
    if let Ok(seconds) = text.parse::<i64>() {
        return seconds
            .checked_mul(1_000_000_000)
            .ok_or_else(|| format!("{text:?} is out of range"));
    }
    if let Ok(seconds) = text.parse::<f64>()
        && seconds.is_finite()
    {
        let ns = (seconds * 1e9).round();
        if ns >= i64::MIN as f64 && ns < i64::MAX as f64 {
            return Ok(ns as i64);
        }
    }
    Err(format!(
        "{text:?} is neither an RFC 3339 timestamp nor Unix seconds"
    ))
}

/// Nanoseconds in `1h30m`-style text; `None` if it is not one.
fn parse_span(text: &str) -> Option<i64> {
    let mut total: i64 = 0;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(digits);
        let number: i64 = number.parse().ok()?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale: i64 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            "w" => 604_800_000_000_000,
            _ => return None,
        };
        total = total.checked_add(number.checked_mul(scale)?)?;
        rest = next;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_told_by_magnitude() {
        let ns = 1_763_755_200_000_000_000_i64; // 2025-11-21T20:00:00Z
        assert_eq!(unix_int_to_ns(1_763_755_200), Some(ns));
        assert_eq!(unix_int_to_ns(1_763_755_200_000), Some(ns));
        assert_eq!(unix_int_to_ns(1_763_755_200_000_000), Some(ns));
        assert_eq!(unix_int_to_ns(ns), Some(ns));
        assert_eq!(unix_to_ns(1_763_755_200.5), Some(ns + 500_000_000));
        assert_eq!(unix_to_ns(1_763_755_200_000.0), Some(ns));
        assert_eq!(unix_to_ns(f64::NAN), None);
        assert_eq!(unix_to_ns(1e30), None);
    }

    #[test]
    fn rfc3339_round_trip_with_nanoseconds() {
        let ns = parse_rfc3339("2026-11-21T20:15:13.123456789Z").unwrap();
        assert_eq!(format_rfc3339(ns), "2026-11-21T20:15:13.123456789Z");
        assert_eq!(
            parse_rfc3339("2026-11-21T21:15:13+01:00"),
            parse_rfc3339("2026-11-21T20:15:13Z")
        );
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn query_bounds_accept_both_forms() {
        assert_eq!(parse_time_param("10").unwrap(), 10_000_000_000);
        assert_eq!(parse_time_param("1.5").unwrap(), 1_500_000_000);
        assert_eq!(
            parse_time_param("1970-01-01T00:00:10Z").unwrap(),
            10_000_000_000
        );
        assert!(parse_time_param("soon").is_err());
        let now = 100 * 3_600_000_000_000;
        assert_eq!(parse_time_param_at("now", now).unwrap(), now);
        assert_eq!(
            parse_time_param_at("now-1h", now).unwrap(),
            now - 3_600_000_000_000
        );
        assert_eq!(
            parse_time_param_at("now + 30m", now).unwrap(),
            now + 1_800_000_000_000
        );
        assert_eq!(
            parse_time_param_at("-1h30m", now).unwrap(),
            now - 5_400_000_000_000
        );
        assert_eq!(parse_time_param_at("-10", now).unwrap(), -10_000_000_000);
        assert!(parse_time_param_at("now-1y", now).is_err());
        assert!(parse_time_param_at("now-", now).is_err());
        assert!(parse_time_param_at("now*2", now).is_err());
        assert!(parse_time_param_at("-99999999999999w", now).is_err());
    }
}
