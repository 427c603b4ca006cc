//! The point: one observation, in the model InfluxDB and Telegraf users know.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One observation: a measurement `name`, identifying `tags`, one or more `fields`, and the
/// time it was taken (`ts`, UTC nanoseconds since the Unix epoch).
///
/// A log line is a point with the string field `message`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// The measurement, e.g. `temperature` or `cpu`.
    pub name: String,
    /// Identify the series. Kept sorted so two equal tag sets encode to equal bytes.
    pub tags: BTreeMap<String, String>,
    /// The observed values. A valid point has at least one.
    pub fields: BTreeMap<String, FieldValue>,
    /// Event time in UTC nanoseconds: when the reading was taken, not when it was stored.
    pub ts: i64,
}

impl Point {
    /// A point with no tags and no fields yet.
    pub fn new(name: impl Into<String>, ts: i64) -> Point {
        Point {
            name: name.into(),
            tags: BTreeMap::new(),
            fields: BTreeMap::new(),
            ts,
        }
    }

    /// Adds a field, builder style.
    pub fn with_field(mut self, key: impl Into<String>, value: impl Into<FieldValue>) -> Point {
        self.fields.insert(key.into(), value.into());
        self
    }

    /// Adds a tag, builder style.
    pub fn with_tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Point {
        self.tags.insert(key.into(), value.into());
        self
    }
}

/// A field's value. Serialized as the plain value (a number, boolean or string), so the
/// encoding carries the type without a tag.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    F64(f64),
    I64(i64),
    Bool(bool),
    Str(String),
}

impl FieldValue {
    /// A counter or size as an integer field, saturating at `i64::MAX` (the largest integer a
    /// field holds) instead of wrapping to a negative number as `as i64` would.
    pub fn count(v: u64) -> FieldValue {
        FieldValue::I64(i64::try_from(v).unwrap_or(i64::MAX))
    }

    /// A short name of the type, as used in error messages and the storage schema.
    pub fn kind(&self) -> &'static str {
        match self {
            FieldValue::F64(_) => "float",
            FieldValue::I64(_) => "integer",
            FieldValue::Bool(_) => "boolean",
            FieldValue::Str(_) => "string",
        }
    }
}

impl From<f64> for FieldValue {
    fn from(v: f64) -> Self {
        FieldValue::F64(v)
    }
}
impl From<i64> for FieldValue {
    fn from(v: i64) -> Self {
        FieldValue::I64(v)
    }
}
impl From<bool> for FieldValue {
    fn from(v: bool) -> Self {
        FieldValue::Bool(v)
    }
}
impl From<String> for FieldValue {
    fn from(v: String) -> Self {
        FieldValue::Str(v)
    }
}
impl From<&str> for FieldValue {
    fn from(v: &str) -> Self {
        FieldValue::Str(v.to_owned())
    }
}

impl Serialize for FieldValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            FieldValue::F64(v) => serializer.serialize_f64(*v),
            FieldValue::I64(v) => serializer.serialize_i64(*v),
            FieldValue::Bool(v) => serializer.serialize_bool(*v),
            FieldValue::Str(v) => serializer.serialize_str(v),
        }
    }
}

/// Where a decoded string value goes: copied as it is, or charged against a decoding budget
/// first (`crate::decode`).
pub(crate) trait StringSink {
    fn take<E: de::Error>(self, text: &str) -> Result<String, E>;
}

/// Copies strings as they are.
struct Unlimited;

impl StringSink for Unlimited {
    fn take<E: de::Error>(self, text: &str) -> Result<String, E> {
        Ok(text.to_owned())
    }
}

/// Reads a field's value: a number, boolean or string (the encoding carries the type).
pub(crate) struct FieldValueVisitor<S>(pub S);

impl<S: StringSink> Visitor<'_> for FieldValueVisitor<S> {
    type Value = FieldValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number, boolean or string")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<FieldValue, E> {
        Ok(FieldValue::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<FieldValue, E> {
        Ok(FieldValue::I64(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<FieldValue, E> {
        i64::try_from(v)
            .map(FieldValue::I64)
            .map_err(|_| E::custom(format!("integer {v} does not fit in a signed 64-bit field")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<FieldValue, E> {
        Ok(FieldValue::F64(v))
    }
    fn visit_f32<E: de::Error>(self, v: f32) -> Result<FieldValue, E> {
        Ok(FieldValue::F64(f64::from(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldValue, E> {
        self.0.take(v).map(FieldValue::Str)
    }
}

impl<'de> Deserialize<'de> for FieldValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FieldValueVisitor(Unlimited))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_saturate_instead_of_wrapping() {
        assert_eq!(FieldValue::count(7), FieldValue::I64(7));
        assert_eq!(FieldValue::count(u64::MAX), FieldValue::I64(i64::MAX));
        assert_eq!(
            FieldValue::count(i64::MAX as u64 + 1),
            FieldValue::I64(i64::MAX)
        );
    }
}
