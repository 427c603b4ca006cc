//! The Prometheus text exposition format (version 0.0.4), so the http input can scrape any
//! exporter on the device.
//!
//! Points follow Telegraf's `metric_version = 1` layout, which its users know: one point per
//! sample line named after the metric family, labels as tags, and the value in a field named
//! by the family's type: `counter`, `gauge` or `value` (untyped). Histogram and summary lines
//! keep their own names (`x_bucket` with tag `le`, `x_sum`, `x_count`, `x` with tag
//! `quantile`) and the field `value`, so no line is merged away or lost. A sample's own
//! timestamp (milliseconds) is kept; otherwise the scrape time is used.
//!
//! Why not a crate: `prometheus-parse` splits label sets on `,` and `=` (a quoted comma
//! breaks it) and skips lines it cannot read without saying so; `openmetrics-parser` is
//! LGPL-3.0. This parser follows the format's escaping rules and reports every line it
//! cannot read, for the quarantine.


use std::collections::HashMap;

use tributary_wire::{FieldValue, Point};

use crate::format::{Decoded, Rejected};

/// Parses an exposition; `default_ts` stamps samples without a timestamp.
pub fn parse(text: &str, default_ts: i64) -> Decoded {
    let mut types: HashMap<&str, &str> = HashMap::new();
    let mut decoded = Decoded::default();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            if words.next() == Some("TYPE")
                && let (Some(name), Some(kind)) = (words.next(), words.next())
            {
                types.insert(name, kind);
            }
            continue;
        }
        match sample(line, &types, default_ts) {
            Ok(point) => decoded.points.push(point),
            Err(reason) => decoded.rejected.push(Rejected {
                payload: line.as_bytes().to_vec(),
                reason: format!("line {}: {reason}", number.saturating_add(1)),
            }),
        }
    }
    decoded
}

/// One sample line: `name{label="value",…} value [timestamp]`.
fn sample(line: &str, types: &HashMap<&str, &str>, default_ts: i64) -> Result<Point, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value after the metric name")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err(format!("{name:?} is not a valid metric name"));
    }
    let mut rest = &line[name_end..];
    let mut point = Point::new(name, default_ts);
    if let Some(after) = rest.strip_prefix('{') {
        rest = labels(after, &mut point)?;
    }
    let mut words = rest.split_whitespace();
    let value = words.next().ok_or("no value")?;
    let value = parse_value(value).ok_or_else(|| format!("{value:?} is not a number"))?;
    if let Some(ts) = words.next() {
        let millis: i64 = ts
            .parse()
            .map_err(|_| format!("timestamp {ts:?} is not an integer (milliseconds)"))?;
        point.ts = millis
            .checked_mul(1_000_000)
            .ok_or_else(|| format!("timestamp {ts} is out of range"))?;
    }
    if let Some(extra) = words.next() {
        return Err(format!("unexpected {extra:?} after the timestamp"));
    }
    let field = match types.get(name) {
        Some(&"counter") => "counter",
        Some(&"gauge") => "gauge",
        _ => "value",
    };
    point
        .fields
        .insert(field.to_owned(), FieldValue::F64(value));
    Ok(point)
}

/// Parses `label="value",…}` into tags; returns what follows the `}`.
fn labels<'a>(mut text: &'a str, point: &mut Point) -> Result<&'a str, String> {
    loop {
        text = text.trim_start();
        if let Some(rest) = text.strip_prefix('}') {
            return Ok(rest);
        }
        let eq = text.find('=').ok_or("a label has no '='")?;
        let key = text[..eq].trim();
        if !valid_name(key) || key.contains(':') {
            return Err(format!("{key:?} is not a valid label name"));
        }
        let after = text.get(eq.saturating_add(1)..).unwrap_or("").trim_start();
        let mut chars = after
            .strip_prefix('"')
            .ok_or("a label value is not quoted")?
            .char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, other)) => {
                        return Err(format!("unknown escape \\{other} in a label value"));
                    }
                    None => return Err("unterminated label value".to_owned()),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".to_owned()),
            }
        };
        point.tags.insert(key.to_owned(), value);
        // Past the opening quote (1 byte), the value and the closing quote.
        text = after
            .get(end.saturating_add(2)..)
            .unwrap_or("")
            .trim_start();
        if let Some(rest) = text.strip_prefix(',') {
            text = rest;
        } else if !text.starts_with('}') {
            return Err("labels must be separated by ',' and closed by '}'".to_owned());
        }
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A Go float: also `NaN`, `+Inf`, `-Inf`.
fn parse_value(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = r#"
# HELP http_requests_total The total number of HTTP requests.
# TYPE http_requests_total counter
http_requests_total{method="post",code="200"} 1027 1395066363000
http_requests_total{method="post",code="400"}    3 1395066363000
# TYPE temperature_celsius gauge
temperature_celsius{sensor="a,b=c",path="C:\\dir \"x\"\n"} 21.5
# A histogram
# TYPE latency_seconds histogram
latency_seconds_bucket{le="0.1"} 5
latency_seconds_bucket{le="+Inf"} 7
latency_seconds_sum 1.5
latency_seconds_count 7
untyped_thing -Inf
"#;

    #[test]
    fn parses_types_labels_escapes_and_timestamps() {
        let decoded = parse(EXPOSITION, 42);
        assert!(decoded.rejected.is_empty(), "{:?}", decoded.rejected);
        assert_eq!(decoded.points.len(), 8);
        let first = &decoded.points[0];
        assert_eq!(first.name, "http_requests_total");
        assert_eq!(first.tags["method"], "post");
        assert_eq!(first.fields["counter"], FieldValue::F64(1027.0));
        assert_eq!(first.ts, 1_395_066_363_000_000_000);
        let temperature = &decoded.points[2];
        assert_eq!(temperature.tags["sensor"], "a,b=c");
        assert_eq!(temperature.tags["path"], "C:\\dir \"x\"\n");
        assert_eq!(temperature.fields["gauge"], FieldValue::F64(21.5));
        assert_eq!(temperature.ts, 42);
        let bucket = &decoded.points[4];
        assert_eq!(bucket.name, "latency_seconds_bucket");
        assert_eq!(bucket.tags["le"], "+Inf");
        assert_eq!(bucket.fields["value"], FieldValue::F64(7.0));
        assert_eq!(
            decoded.points[7].fields["value"],
            FieldValue::F64(f64::NEG_INFINITY)
        );
    }

    #[test]
    fn every_bad_line_is_reported() {
        let decoded = parse(
            "ok 1\nbad{x=\"1\" 2\n9lives 3\nnovalue\nx{a=\"1\"} notanumber\nx 1 2 3\ny{a=1} 1\n",
            0,
        );
        assert_eq!(decoded.points.len(), 1);
        let reasons: Vec<_> = decoded.rejected.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons.len(), 6, "{reasons:?}");
        assert!(reasons[0].starts_with("line 2:"), "{reasons:?}");
    }
}
