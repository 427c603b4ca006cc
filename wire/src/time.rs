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
    let text = text.trim();
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
    }
}
