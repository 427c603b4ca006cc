//! InfluxDB line protocol: parsing into points (through `influxdb-line-protocol`, the parser
//! InfluxData publishes) and formatting points back.
//!
//! Parsing reports errors per line, so one bad line does not take its neighbours down.

use influxdb_line_protocol::builder::LineProtocolBuilder;
use influxdb_line_protocol::{FieldValue as LpValue, parse_lines};

use crate::point::{FieldValue, Point};

/// The unit of timestamps in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Nanoseconds,
    Microseconds,
    Milliseconds,
    Seconds,
    /// InfluxDB v1's `m`.
    Minutes,
    /// InfluxDB v1's `h`.
    Hours,
}

impl Precision {
    /// Parses the `precision` names InfluxDB uses: `ns`, `us`, `ms`, `s` (v2), and v1's `n`,
    /// `u`, `µ`, `m` and `h` besides.
    pub fn parse(text: &str) -> Option<Precision> {
        match text {
            "ns" | "n" => Some(Precision::Nanoseconds),
            "us" | "u" | "µs" | "µ" => Some(Precision::Microseconds),
            "ms" => Some(Precision::Milliseconds),
            "s" => Some(Precision::Seconds),
            "m" => Some(Precision::Minutes),
            "h" => Some(Precision::Hours),
            _ => None,
        }
    }

    fn nanos_per_unit(self) -> i64 {
        match self {
            Precision::Nanoseconds => 1,
            Precision::Microseconds => 1_000,
            Precision::Milliseconds => 1_000_000,
            Precision::Seconds => 1_000_000_000,
            Precision::Minutes => 60_000_000_000,
            Precision::Hours => 3_600_000_000_000,
        }
    }
}

/// One line that could not be turned into a point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number within the parsed text.
    pub line: usize,
    /// The offending line.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Parses line protocol. Lines without a timestamp get `default_ts`. Blank lines and `#`
/// comments are skipped; every other line yields its 1-based number and a point or an error,
/// lazily, so a caller can stop early (at a memory limit). A line that is not valid UTF-8 is
/// an error of its own: the lines around it parse as usual.
pub fn parse_numbered(
    text: &[u8],
    precision: Precision,
    default_ts: i64,
) -> impl Iterator<Item = (usize, Result<Point, LineError>)> + '_ {
    split_lines(text)
        .zip(1usize..)
        .flat_map(move |(raw, number)| {
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let error = move |text: String, reason: String| LineError {
                line: number,
                text,
                reason,
            };
            let line = match std::str::from_utf8(raw) {
                Ok(line) => line,
                Err(e) => {
                    let reason = format!(
                        "the line is not valid UTF-8 (byte {} of the line)",
                        e.valid_up_to().saturating_add(1)
                    );
                    let text = String::from_utf8_lossy(raw).into_owned();
                    return vec![(number, Err(error(text, reason)))];
                }
            };
            parse_lines(line)
                .map(|parsed| {
                    let result = match parsed {
                        Ok(parsed) => convert(&parsed, precision, default_ts)
                            .map_err(|reason| error(line.to_owned(), reason)),
                        Err(e) => Err(error(line.to_owned(), e.to_string())),
                    };
                    (number, result)
                })
                .collect::<Vec<_>>()
        })
}

/// [`parse_numbered`] without the line numbers (errors carry theirs).
pub fn parse(
    text: &[u8],
    precision: Precision,
    default_ts: i64,
) -> impl Iterator<Item = Result<Point, LineError>> + '_ {
    parse_numbered(text, precision, default_ts).map(|(_, result)| result)
}

/// Splits line protocol into lines at newlines that are not inside a quoted string field,
/// as InfluxDB does (`influxdb_line_protocol::split_lines`, here on bytes so that a line with
/// invalid UTF-8 does not take the whole text with it). Every byte it looks at is ASCII, so
/// on valid UTF-8 it splits exactly where the text version does.
pub fn split_lines(input: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut quoted = false;
    let mut fields = false;
    // How many '=' and ',' the fields have had: a quote opens a string only after an '='.
    let mut equals = 0u32;
    let mut commas = 0u32;
    let mut in_escape = false;
    input.split(move |&c| {
        if in_escape {
            in_escape = false;
            return false;
        }
        match c {
            b'\\' => {
                in_escape = true;
                false
            }
            b' ' => {
                fields = true;
                false
            }
            b'=' if fields && !quoted => {
                equals = equals.saturating_add(1);
                false
            }
            b',' if fields && !quoted => {
                commas = commas.saturating_add(1);
                false
            }
            b'"' if fields && equals > commas => {
                quoted = !quoted;
                false
            }
            b'\n' if !quoted => {
                fields = false;
                equals = 0;
                commas = 0;
                true
            }
            _ => false,
        }
    })
}

fn convert(
    parsed: &influxdb_line_protocol::ParsedLine<'_>,
    precision: Precision,
    default_ts: i64,
) -> Result<Point, String> {
    let ts = match parsed.timestamp {
        Some(t) => t
            .checked_mul(precision.nanos_per_unit())
            .ok_or_else(|| format!("timestamp {t} overflows at precision {precision:?}"))?,
        None => default_ts,
    };
    // The parser takes an escaped newline in a name; line protocol has no way to write one
    // back, so such a point could not be shown or sent on as a line.
    let no_newline = |what: &str, text: &str| {
        if text.contains(['\n', '\r']) {
            Err(format!(
                "{what} {text:?} contains a line break, which line protocol allows only in string field values"
            ))
        } else {
            Ok(())
        }
    };
    no_newline("the measurement", parsed.series.measurement.as_str())?;
    let mut point = Point::new(parsed.series.measurement.as_str(), ts);
    if let Some(tags) = &parsed.series.tag_set {
        for (key, value) in tags {
            no_newline("the tag key", key.as_str())?;
            no_newline("the tag value", value.as_str())?;
            point.tags.insert(key.to_string(), value.to_string());
        }
    }
    for (key, value) in &parsed.field_set {
        no_newline("the field key", key.as_str())?;
        let value = match value {
            LpValue::I64(v) => FieldValue::I64(*v),
            LpValue::U64(v) => FieldValue::I64(i64::try_from(*v).map_err(|_| {
                format!("unsigned field {key} = {v} does not fit in a signed 64-bit integer")
            })?),
            // A literal past f64's range reads as an infinity; InfluxDB refuses it, and
            // line protocol has no way to write one back.
            LpValue::F64(v) if !v.is_finite() => {
                return Err(format!("float field {key} is out of range"));
            }
            LpValue::F64(v) => FieldValue::F64(*v),
            LpValue::Boolean(v) => FieldValue::Bool(*v),
            LpValue::String(v) => FieldValue::Str(v.to_string()),
        };
        point.fields.insert(key.to_string(), value);
    }
    Ok(point)
}

/// Formats a point as one line of line protocol (no trailing newline), timestamp in ns.
/// A point without fields has no line protocol form; it is written as a comment.
pub fn format_point(point: &Point) -> String {
    let mut fields = point.fields.iter();
    let Some((first_key, first_value)) = fields.next() else {
        return format!("# {} has no fields", point.name);
    };
    let mut builder = LineProtocolBuilder::new().measurement(&point.name);
    for (key, value) in &point.tags {
        builder = builder.tag(key, value);
    }
    let mut builder = match first_value {
        FieldValue::F64(v) => builder.field(first_key, *v),
        FieldValue::I64(v) => builder.field(first_key, *v),
        FieldValue::Bool(v) => builder.field(first_key, *v),
        FieldValue::Str(v) => builder.field(first_key, v.as_str()),
    };
    for (key, value) in fields {
        builder = match value {
            FieldValue::F64(v) => builder.field(key, *v),
            FieldValue::I64(v) => builder.field(key, *v),
            FieldValue::Bool(v) => builder.field(key, *v),
            FieldValue::Str(v) => builder.field(key, v.as_str()),
        };
    }
    let bytes = builder.timestamp(point.ts).close_line().build();
    // Built from strings, so UTF-8; lossy would only matter if the builder broke that.
    let mut line = String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    if line.ends_with('\n') {
        line.pop();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_types_tags_and_timestamps() {
        let text = "weather,location=us\\ midwest,season=summer temperature=82,humidity=71i,ok=true,note=\"a \\\"b\\\"\" 1465839830100400200\n";
        let points: Vec<_> = parse(text.as_bytes(), Precision::Nanoseconds, 0).collect();
        let point = points[0].as_ref().unwrap();
        assert_eq!(point.name, "weather");
        assert_eq!(point.tags["location"], "us midwest");
        assert_eq!(point.fields["temperature"], FieldValue::F64(82.0));
        assert_eq!(point.fields["humidity"], FieldValue::I64(71));
        assert_eq!(point.fields["ok"], FieldValue::Bool(true));
        assert_eq!(point.fields["note"], FieldValue::Str("a \"b\"".into()));
        assert_eq!(point.ts, 1_465_839_830_100_400_200);
    }

    #[test]
    fn precision_and_default_timestamp() {
        let points: Vec<_> = parse(b"m v=1 1700000000\nm v=2", Precision::Seconds, 42).collect();
        assert_eq!(points[0].as_ref().unwrap().ts, 1_700_000_000_000_000_000);
        assert_eq!(points[1].as_ref().unwrap().ts, 42);
        let overflow: Vec<_> = parse(b"m v=1 9223372036854775807", Precision::Seconds, 0).collect();
        assert!(overflow[0].is_err());
        let huge: Vec<_> = parse(b"m v=7e400", Precision::Seconds, 0).collect();
        assert!(
            huge[0]
                .as_ref()
                .unwrap_err()
                .reason
                .contains("out of range")
        );
    }

    #[test]
    fn bad_lines_are_reported_alone_with_their_number() {
        let points: Vec<_> = parse(
            b"# comment\nm v=1\nnot line protocol\n\nm v=2u\nm v=18446744073709551615u",
            Precision::Nanoseconds,
            7,
        )
        .collect();
        assert_eq!(points.len(), 4);
        assert!(points[0].is_ok());
        let error = points[1].as_ref().unwrap_err();
        assert_eq!(error.line, 3);
        assert_eq!(error.text, "not line protocol");
        assert_eq!(points[2].as_ref().unwrap().fields["v"], FieldValue::I64(2));
        assert!(
            points[3]
                .as_ref()
                .unwrap_err()
                .reason
                .contains("does not fit")
        );
    }

    #[test]
    fn invalid_utf8_is_an_error_of_its_own_line() {
        let body = b"utf_ok v=1i\nutf,k=\xff\xfe v=2i\nutf_ok v=3i\n";
        let points: Vec<_> = parse(body, Precision::Nanoseconds, 0).collect();
        assert_eq!(points.len(), 3);
        assert_eq!(points[0].as_ref().unwrap().fields["v"], FieldValue::I64(1));
        let error = points[1].as_ref().unwrap_err();
        assert_eq!(error.line, 2);
        assert!(error.reason.contains("not valid UTF-8"), "{error}");
        assert_eq!(points[2].as_ref().unwrap().fields["v"], FieldValue::I64(3));
    }

    #[test]
    fn bytes_split_where_the_text_splitter_does() {
        let text = "a s=\"x\ny\" 1\nb,t=a\\ b v=1 2\r\n\nc s=\"q\\\"\n\" 3\n# c\nd v=1";
        let ours: Vec<&[u8]> = split_lines(text.as_bytes()).collect();
        let theirs: Vec<&[u8]> = influxdb_line_protocol::split_lines(text)
            .map(str::as_bytes)
            .collect();
        assert_eq!(ours, theirs);
        assert_eq!(ours.len(), 6, "a quoted newline does not end a line");
    }

    #[test]
    fn format_then_parse_is_identity() {
        let point = Point::new("my meas,x", 123)
            .with_tag("a b", "c=d,e")
            .with_field("f", 1.5)
            .with_field("i", -3)
            .with_field("b", false)
            .with_field("s", "quote \" and back\\slash");
        let line = format_point(&point);
        let parsed: Vec<_> = parse(line.as_bytes(), Precision::Nanoseconds, 0).collect();
        assert_eq!(parsed[0].as_ref().unwrap(), &point, "line was {line}");
    }
}
