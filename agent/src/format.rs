//! Payload formats: turning the bytes an input received into points.
//!
//! * `json`: an object is one point, an array of objects several. Numeric, boolean and string
//!   members become fields; nested objects flatten to `a.b` (arrays to `a.0`); `null` is
//!   skipped. A top-level `ts` or `time` member (RFC 3339, or Unix seconds, milliseconds,
//!   microseconds or nanoseconds told apart by magnitude) sets the timestamp. Members named in
//!   `tag_keys` become tags.
//! * `influx`: InfluxDB line protocol, one point per line.
//! * `value`: a bare number, stored as the field `value`.
//! * `lines`: each non-empty line becomes a point with the string field `message`.
//!
//! Decoding never fails as a whole: what cannot be decoded comes back as a [`Rejected`] part
//! with its reason, for the quarantine. For `influx` and JSON arrays that is per line or per
//! element, so one bad record does not take its neighbours with it.


use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};
use tributary_wire::line_protocol::{self, Precision};
use tributary_wire::time::{parse_rfc3339, unix_int_to_ns, unix_to_ns};
use tributary_wire::{FieldValue, Point};

/// How an input's payloads are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(try_from = "String")]
pub enum Format {
    #[default]
    Json,
    Influx,
    Value,
    Lines,
}

tributary_common::choices!(Format, "payload format", {
    "json" => Format::Json,
    "influx" => Format::Influx,
    "value" => Format::Value,
    "lines" => Format::Lines,
});

/// What a decoder needs besides the bytes.
#[derive(Debug, Clone, Copy)]
pub struct DecodeContext<'a> {
    /// Name of points whose format does not carry one (all but `influx`).
    pub name: &'a str,
    /// Timestamp of points that carry none: when the payload was received or polled.
    pub received_at: i64,
    /// JSON members that become tags instead of fields.
    pub tag_keys: &'a [String],
}

/// A part of a payload that could not be decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// The offending bytes: the whole payload, or just the bad line or element.
    pub payload: Vec<u8>,
    pub reason: String,
}

/// The result of decoding one payload.
#[derive(Debug, Default, PartialEq)]
pub struct Decoded {
    pub points: Vec<Point>,
    pub rejected: Vec<Rejected>,
}

impl Decoded {
    /// Nothing decoded: the whole payload is rejected with `reason`.
    pub fn reject_all(payload: &[u8], reason: impl Into<String>) -> Decoded {
        Decoded {
            points: Vec::new(),
            rejected: vec![Rejected {
                payload: payload.to_vec(),
                reason: reason.into(),
            }],
        }
    }
}

/// Decodes `payload` in `format`.
pub fn decode(format: Format, payload: &[u8], ctx: &DecodeContext<'_>) -> Decoded {
    // Line protocol checks UTF-8 line by line: one bad line does not reject its neighbours.
    if format == Format::Influx {
        return decode_influx(payload, ctx);
    }
    let text = match std::str::from_utf8(payload) {
        Ok(text) => text,
        Err(e) => return Decoded::reject_all(payload, format!("payload is not UTF-8: {e}")),
    };
    match format {
        Format::Json => decode_json(text, ctx),
        Format::Influx => decode_influx(text.as_bytes(), ctx),
        Format::Value => decode_value(text, ctx),
        Format::Lines => decode_lines(text, ctx),
    }
}

fn decode_json(text: &str, ctx: &DecodeContext<'_>) -> Decoded {
    // The common case, one object, is flattened as it is parsed, without a `Value` tree.
    if text.trim_start().starts_with('{') {
        return match stream::object_to_point(text, ctx) {
            Ok(point) => Decoded {
                points: vec![point],
                rejected: Vec::new(),
            },
            Err(reason) => Decoded::reject_all(text.as_bytes(), reason),
        };
    }
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => return Decoded::reject_all(text.as_bytes(), format!("invalid JSON: {e}")),
    };
    match value {
        Value::Object(object) => match json_object_to_point(object, ctx) {
            Ok(point) => Decoded {
                points: vec![point],
                rejected: Vec::new(),
            },
            Err(reason) => Decoded::reject_all(text.as_bytes(), reason),
        },
        Value::Array(items) => {
            let mut decoded = Decoded::default();
            for (index, item) in items.into_iter().enumerate() {
                let result = match item {
                    Value::Object(object) => json_object_to_point(object.clone(), ctx)
                        .map_err(|reason| (Value::Object(object), reason)),
                    other => Err((other, "is not a JSON object".to_owned())),
                };
                match result {
                    Ok(point) => decoded.points.push(point),
                    Err((item, reason)) => decoded.rejected.push(Rejected {
                        payload: item.to_string().into_bytes(),
                        reason: format!("element {index}: {reason}"),
                    }),
                }
            }
            decoded
        }
        _ => Decoded::reject_all(
            text.as_bytes(),
            "JSON payload must be an object or an array of objects",
        ),
    }
}

fn json_object_to_point(
    mut object: Map<String, Value>,
    ctx: &DecodeContext<'_>,
) -> Result<Point, String> {
    let mut ts = ctx.received_at;
    for key in ["ts", "time"] {
        if let Some(value) = object.remove(key) {
            ts = json_timestamp(&value).ok_or_else(|| bad_timestamp(key, &value))?;
        }
    }
    let mut flat = BTreeMap::new();
    flatten("", Value::Object(object), &mut flat);
    fields_to_point(flat, ts, ctx)
}

fn bad_timestamp(key: &str, value: &Value) -> String {
    format!("{key}: {value} is not an RFC 3339 time or a Unix timestamp")
}

/// Makes a point of flattened members: `tag_keys` become tags, the rest fields.
fn fields_to_point(
    flat: BTreeMap<String, FieldValue>,
    ts: i64,
    ctx: &DecodeContext<'_>,
) -> Result<Point, String> {
    let mut point = Point::new(ctx.name, ts);
    for (key, value) in flat {
        if ctx.tag_keys.contains(&key) {
            let text = match value {
                FieldValue::Str(s) => s,
                FieldValue::I64(v) => v.to_string(),
                FieldValue::F64(v) => v.to_string(),
                FieldValue::Bool(v) => v.to_string(),
            };
            point.tags.insert(key, text);
        } else {
            point.fields.insert(key, value);
        }
    }
    if point.fields.is_empty() {
        return Err("no numeric, boolean or string members to store as fields".into());
    }
    Ok(point)
}

fn json_timestamp(value: &Value) -> Option<i64> {
    match value {
        Value::String(text) => parse_rfc3339(text),
        Value::Number(n) => match n.as_i64() {
            Some(i) => unix_int_to_ns(i),
            None => n.as_f64().and_then(unix_to_ns),
        },
        _ => None,
    }
}

fn flatten(prefix: &str, value: Value, out: &mut BTreeMap<String, FieldValue>) {
    let join = |key: &str| {
        if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        }
    };
    match value {
        Value::Null => {}
        Value::Bool(b) => {
            out.insert(prefix.to_owned(), FieldValue::Bool(b));
        }
        Value::Number(n) => {
            let value = match n.as_i64() {
                Some(i) => FieldValue::I64(i),
                // Above i64::MAX or fractional: a float (JSON numbers carry no other type).
                None => FieldValue::F64(n.as_f64().unwrap_or(f64::NAN)),
            };
            out.insert(prefix.to_owned(), value);
        }
        Value::String(s) => {
            out.insert(prefix.to_owned(), FieldValue::Str(s));
        }
        Value::Array(items) => {
            for (index, item) in items.into_iter().enumerate() {
                flatten(&join(&index.to_string()), item, out);
            }
        }
        Value::Object(object) => {
            for (key, item) in object {
                flatten(&join(&key), item, out);
            }
        }
    }
}

/// Flattening a JSON object while it is parsed (same rules as [`flatten`]).
mod stream {
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde_json::Value;
    use tributary_wire::{FieldValue, Point};

    use super::{DecodeContext, bad_timestamp, fields_to_point, json_timestamp};

    pub(super) fn object_to_point(text: &str, ctx: &DecodeContext<'_>) -> Result<Point, String> {
        let mut fields = BTreeMap::new();
        let mut ts: Option<Result<i64, String>> = None;
        let mut de = serde_json::Deserializer::from_str(text);
        de.deserialize_map(TopLevel {
            fields: &mut fields,
            ts: &mut ts,
        })
        .and_then(|()| de.end())
        .map_err(|e| format!("invalid JSON: {e}"))?;
        let ts = ts.transpose()?.unwrap_or(ctx.received_at);
        fields_to_point(fields, ts, ctx)
    }

    struct TopLevel<'a> {
        fields: &'a mut BTreeMap<String, FieldValue>,
        ts: &'a mut Option<Result<i64, String>>,
    }

    impl<'de> Visitor<'de> for TopLevel<'_> {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                if key == "ts" || key == "time" {
                    let value: Value = map.next_value()?;
                    *self.ts =
                        Some(json_timestamp(&value).ok_or_else(|| bad_timestamp(&key, &value)));
                } else {
                    map.next_value_seed(Member {
                        path: key,
                        out: self.fields,
                    })?;
                }
            }
            Ok(())
        }
    }

    /// One member at `path`: a scalar becomes a field, an object or array recurses.
    struct Member<'a> {
        path: String,
        out: &'a mut BTreeMap<String, FieldValue>,
    }

    impl<'de> DeserializeSeed<'de> for Member<'_> {
        type Value = ();

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Member<'_> {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON value")
        }

        fn visit_bool<E>(self, v: bool) -> Result<(), E> {
            self.out.insert(self.path, FieldValue::Bool(v));
            Ok(())
        }

        fn visit_i64<E>(self, v: i64) -> Result<(), E> {
            self.out.insert(self.path, FieldValue::I64(v));
            Ok(())
        }

        fn visit_u64<E>(self, v: u64) -> Result<(), E> {
            // Above i64::MAX: a float, as JSON numbers carry no other type.
            let value = i64::try_from(v).map_or(FieldValue::F64(v as f64), FieldValue::I64);
            self.out.insert(self.path, value);
            Ok(())
        }

        fn visit_f64<E>(self, v: f64) -> Result<(), E> {
            self.out.insert(self.path, FieldValue::F64(v));
            Ok(())
        }

        fn visit_str<E>(self, v: &str) -> Result<(), E> {
            self.out.insert(self.path, FieldValue::Str(v.to_owned()));
            Ok(())
        }

        fn visit_string<E>(self, v: String) -> Result<(), E> {
            self.out.insert(self.path, FieldValue::Str(v));
            Ok(())
        }

        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                map.next_value_seed(Member {
                    path: format!("{}.{key}", self.path),
                    out: &mut *self.out,
                })?;
            }
            Ok(())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut index = 0usize;
            while seq
                .next_element_seed(Member {
                    path: format!("{}.{index}", self.path),
                    out: &mut *self.out,
                })?
                .is_some()
            {
                index = index.saturating_add(1);
            }
            Ok(())
        }
    }
}

fn decode_influx(text: &[u8], ctx: &DecodeContext<'_>) -> Decoded {
    let mut decoded = Decoded::default();
    for result in line_protocol::parse(text, Precision::Nanoseconds, ctx.received_at) {
        match result {
            Ok(point) => decoded.points.push(point),
            Err(e) => decoded.rejected.push(Rejected {
                payload: e.text.clone().into_bytes(),
                reason: format!("invalid line protocol at {e}"),
            }),
        }
    }
    decoded
}

fn decode_value(text: &str, ctx: &DecodeContext<'_>) -> Decoded {
    let trimmed = text.trim();
    let value = if let Ok(i) = trimmed.parse::<i64>() {
        FieldValue::I64(i)
    } else {
        match trimmed.parse::<f64>() {
            Ok(f) if f.is_finite() => FieldValue::F64(f),
            _ => {
                return Decoded::reject_all(
                    text.as_bytes(),
                    format!("{:?} is not a finite number", truncate(trimmed, 64)),
                );
            }
        }
    };
    Decoded {
        points: vec![Point::new(ctx.name, ctx.received_at).with_field("value", value)],
        rejected: Vec::new(),
    }
}

fn decode_lines(text: &str, ctx: &DecodeContext<'_>) -> Decoded {
    let points = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| Point::new(ctx.name, ctx.received_at).with_field("message", line))
        .collect();
    Decoded {
        points,
        rejected: Vec::new(),
    }
}

/// At most the first `max` characters of `text`.
pub(crate) fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000;

    fn ctx() -> DecodeContext<'static> {
        DecodeContext {
            name: "mqtt",
            received_at: NOW,
            tag_keys: &[],
        }
    }

    #[test]
    fn json_flattens_and_takes_its_timestamp() {
        let decoded = decode(
            Format::Json,
            br#"{"temp": 21.5, "n": 3, "ok": true, "unit": "C", "gps": {"lat": 1.5, "fix": {"q": 2}}, "list": [7, 8], "nothing": null, "ts": "2026-11-21T20:00:00Z"}"#,
            &ctx(),
        );
        assert!(decoded.rejected.is_empty());
        let point = &decoded.points[0];
        assert_eq!(point.name, "mqtt");
        assert_eq!(point.ts, parse_rfc3339("2026-11-21T20:00:00Z").unwrap());
        assert_eq!(point.fields["temp"], FieldValue::F64(21.5));
        assert_eq!(point.fields["n"], FieldValue::I64(3));
        assert_eq!(point.fields["ok"], FieldValue::Bool(true));
        assert_eq!(point.fields["unit"], FieldValue::Str("C".into()));
        assert_eq!(point.fields["gps.lat"], FieldValue::F64(1.5));
        assert_eq!(point.fields["gps.fix.q"], FieldValue::I64(2));
        assert_eq!(point.fields["list.1"], FieldValue::I64(8));
        assert!(!point.fields.contains_key("nothing"));
        assert!(!point.fields.contains_key("ts"));
    }

    #[test]
    fn json_unix_time_in_seconds_and_millis() {
        for (payload, ts) in [
            (
                &br#"{"v":1,"time":1700000000}"#[..],
                1_700_000_000_000_000_000,
            ),
            (br#"{"v":1,"ts":1700000000123}"#, 1_700_000_000_123_000_000),
            (br#"{"v":1,"ts":1700000000.5}"#, 1_700_000_000_500_000_000),
        ] {
            assert_eq!(decode(Format::Json, payload, &ctx()).points[0].ts, ts);
        }
        let no_ts = decode(Format::Json, br#"{"v":1}"#, &ctx());
        assert_eq!(no_ts.points[0].ts, NOW);
    }

    #[test]
    fn json_tag_keys_become_tags() {
        let keys = vec!["device".to_owned(), "meta.room".to_owned()];
        let ctx = DecodeContext {
            tag_keys: &keys,
            ..ctx()
        };
        let decoded = decode(
            Format::Json,
            br#"{"device": "d7", "meta": {"room": 12}, "v": 1}"#,
            &ctx,
        );
        let point = &decoded.points[0];
        assert_eq!(point.tags["device"], "d7");
        assert_eq!(point.tags["meta.room"], "12");
        assert_eq!(point.fields.len(), 1);
    }

    #[test]
    fn bad_json_is_rejected_with_a_reason() {
        for (payload, reason) in [
            (&b"not json"[..], "invalid JSON"),
            (b"42", "must be an object"),
            (br#"{"only": null}"#, "no numeric"),
            (br#"{"v": 1, "ts": "tuesday"}"#, "ts:"),
            (b"\xff\xfe", "not UTF-8"),
        ] {
            let decoded = decode(Format::Json, payload, &ctx());
            assert!(decoded.points.is_empty());
            assert_eq!(decoded.rejected.len(), 1);
            assert_eq!(decoded.rejected[0].payload, payload);
            assert!(
                decoded.rejected[0].reason.contains(reason),
                "{payload:?}: {}",
                decoded.rejected[0].reason
            );
        }
    }

    /// The streaming path (objects) and the tree path (array elements) flatten alike.
    #[test]
    fn objects_decode_the_same_alone_and_in_an_array() {
        let keys = vec!["meta.room".to_owned()];
        let ctx = DecodeContext {
            tag_keys: &keys,
            ..ctx()
        };
        for object in [
            r#"{"a": 1, "b": {"c": [1.5, {"d": true}], "e": null}, "s": "x", "big": 18446744073709551615, "meta": {"room": 4}, "time": 1700000000}"#,
            r#"{"only": -3, "ts": "2026-01-01T00:00:00Z"}"#,
            r#"{"v": 1, "v": 2}"#,
        ] {
            let alone = decode(Format::Json, object.as_bytes(), &ctx);
            let in_array = decode(Format::Json, format!("[{object}]").as_bytes(), &ctx);
            assert_eq!(alone, in_array, "{object}");
            assert_eq!(alone.points.len(), 1);
        }
    }

    #[test]
    fn json_array_rejects_only_its_bad_elements() {
        let decoded = decode(Format::Json, br#"[{"v": 1}, 5, {"v": 2}, {}]"#, &ctx());
        assert_eq!(decoded.points.len(), 2);
        assert_eq!(decoded.rejected.len(), 2);
        assert_eq!(decoded.rejected[0].payload, b"5");
        assert!(decoded.rejected[0].reason.starts_with("element 1:"));
        assert!(decoded.rejected[1].reason.starts_with("element 3:"));
    }

    #[test]
    fn influx_is_per_line() {
        let decoded = decode(
            Format::Influx,
            b"cpu,host=a usage=1.5 1700000000000000000\nbroken line\ncpu usage=2",
            &ctx(),
        );
        assert_eq!(decoded.points.len(), 2);
        assert_eq!(decoded.points[0].tags["host"], "a");
        assert_eq!(decoded.points[1].ts, NOW);
        assert_eq!(decoded.rejected[0].payload, b"broken line");
        assert!(decoded.rejected[0].reason.contains("line 2"));
    }

    #[test]
    fn value_and_lines() {
        let decoded = decode(Format::Value, b" 42\n", &ctx());
        assert_eq!(decoded.points[0].fields["value"], FieldValue::I64(42));
        let decoded = decode(Format::Value, b"-1.25e3", &ctx());
        assert_eq!(decoded.points[0].fields["value"], FieldValue::F64(-1250.0));
        for bad in [&b"NaN"[..], b"inf", b"12 volts", b""] {
            assert_eq!(
                decode(Format::Value, bad, &ctx()).rejected.len(),
                1,
                "{bad:?}"
            );
        }
        let decoded = decode(Format::Lines, b"first\r\n\nsecond\n", &ctx());
        let messages: Vec<_> = decoded
            .points
            .iter()
            .map(|p| p.fields["message"].clone())
            .collect();
        assert_eq!(
            messages,
            vec![FieldValue::from("first"), FieldValue::from("second")]
        );
    }
}
