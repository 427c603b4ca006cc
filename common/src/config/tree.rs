//! The one value tree configuration types are deserialized from.
//!
//! A raw configuration struct is deserialized twice while loading: strictly from the file as
//! written, then from the file merged with the environment. Both go through the same
//! deserializer type (`serde_json::Value`, wrapped by `serde_path_to_error`), so each struct's
//! deserialization code is generated once. (Through `toml_edit`'s deserializer and the `config`
//! crate's, it was generated twice: 0.5 MB of the agent's binary.)
//!
//! The second pass is as lenient as the `config` crate is with environment values: where a
//! value has the wrong type, its other spellings are tried in turn (the string `"8080"` as a
//! number, the number `1` as `true`, a number as a string).

use serde::de::DeserializeOwned;
use serde_json::{Map, Number, Value};
use serde_path_to_error::{Path, Segment};

/// The error of a deserialization, with the path of what failed.
pub(crate) type PathError = serde_path_to_error::Error<serde_json::Error>;

/// How many wrongly typed values the lenient pass fixes before it gives up.
const MAX_COERCIONS: usize = 256;

/// Deserializes `T` from `value`, types as they are.
pub(crate) fn strict<T: DeserializeOwned>(value: Value) -> Result<T, PathError> {
    serde_path_to_error::deserialize(value)
}

/// Deserializes `T` from `value`, converting a value of the wrong type where another spelling
/// of it fits. The error, when there is one, is the first one met at the value that cannot be
/// made to fit.
pub(crate) fn lenient<T: DeserializeOwned>(mut value: Value) -> Result<T, PathError> {
    for _ in 0..MAX_COERCIONS {
        let error = match strict::<T>(value.clone()) {
            Ok(parsed) => return Ok(parsed),
            Err(error) => error,
        };
        let path = error.path().clone();
        let Some(slot) = find_mut(&mut value, &path) else {
            return Err(error);
        };
        let original = slot.clone();
        let mut fixed = false;
        for candidate in spellings(&original) {
            *find_mut(&mut value, &path).expect("found above") = candidate;
            match strict::<T>(value.clone()) {
                Ok(parsed) => return Ok(parsed),
                // Past this value: it fits now, the next problem is elsewhere.
                Err(next) if next.path().to_string() != path.to_string() => {
                    fixed = true;
                    break;
                }
                Err(_) => {}
            }
        }
        if !fixed {
            return Err(error);
        }
    }
    strict(value)
}

/// The other spellings of a scalar, most likely first.
fn spellings(value: &Value) -> Vec<Value> {
    match value {
        Value::String(text) => {
            let text = text.trim();
            let mut out = Vec::new();
            if let Ok(n) = text.parse::<i64>() {
                out.push(Value::from(n));
            } else if let Ok(n) = text.parse::<u64>() {
                out.push(Value::from(n));
            }
            if let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64) {
                out.push(Value::Number(n));
            }
            match text.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => out.push(Value::Bool(true)),
                "false" | "no" | "off" | "0" => out.push(Value::Bool(false)),
                _ => {}
            }
            out
        }
        Value::Number(n) => {
            let mut out = vec![Value::String(n.to_string())];
            if let Some(i) = n.as_i64() {
                out.push(Value::Bool(i != 0));
            }
            out
        }
        Value::Bool(b) => vec![Value::String(b.to_string())],
        _ => Vec::new(),
    }
}

/// The value at `path` below `value`.
fn find_mut<'a>(value: &'a mut Value, path: &Path) -> Option<&'a mut Value> {
    let mut at = value;
    for segment in path {
        at = match segment {
            Segment::Seq { index } => at.as_array_mut()?.get_mut(*index)?,
            Segment::Map { key } => at.as_object_mut()?.get_mut(key)?,
            Segment::Enum { .. } | Segment::Unknown => return None,
        };
    }
    Some(at)
}

/// The file as written, as a tree (dates and times become their text).
pub(crate) fn from_document(document: &toml_edit::Document<String>) -> Value {
    from_table(document.as_table())
}

fn from_table(table: &toml_edit::Table) -> Value {
    let mut map = Map::new();
    for (key, item) in table.iter() {
        if let Some(value) = from_item(item) {
            map.insert(key.to_owned(), value);
        }
    }
    Value::Object(map)
}

fn from_item(item: &toml_edit::Item) -> Option<Value> {
    match item {
        toml_edit::Item::None => None,
        toml_edit::Item::Value(value) => Some(from_value(value)),
        toml_edit::Item::Table(table) => Some(from_table(table)),
        toml_edit::Item::ArrayOfTables(tables) => {
            Some(Value::Array(tables.iter().map(from_table).collect()))
        }
    }
}

fn from_value(value: &toml_edit::Value) -> Value {
    match value {
        toml_edit::Value::String(s) => Value::String(s.value().clone()),
        toml_edit::Value::Integer(i) => Value::from(*i.value()),
        toml_edit::Value::Float(f) => float(*f.value()),
        toml_edit::Value::Boolean(b) => Value::Bool(*b.value()),
        toml_edit::Value::Datetime(d) => Value::String(d.value().to_string()),
        toml_edit::Value::Array(items) => Value::Array(items.iter().map(from_value).collect()),
        toml_edit::Value::InlineTable(table) => Value::Object(
            table
                .iter()
                .map(|(key, value)| (key.to_owned(), from_value(value)))
                .collect(),
        ),
    }
}

/// A float; `nan` and `inf`, which a tree of JSON values cannot hold, as their text.
fn float(f: f64) -> Value {
    Number::from_f64(f).map_or_else(|| Value::String(f.to_string()), Value::Number)
}

/// The `config` crate's merged tree (file and environment) as a tree.
pub(crate) fn from_config(value: config::Value) -> Value {
    use config::ValueKind;
    match value.kind {
        ValueKind::Nil => Value::Null,
        ValueKind::Boolean(b) => Value::Bool(b),
        ValueKind::I64(i) => Value::from(i),
        ValueKind::U64(u) => Value::from(u),
        ValueKind::I128(i) => {
            i64::try_from(i).map_or_else(|_| Value::String(i.to_string()), Value::from)
        }
        ValueKind::U128(u) => {
            u64::try_from(u).map_or_else(|_| Value::String(u.to_string()), Value::from)
        }
        ValueKind::Float(f) => float(f),
        ValueKind::String(s) => Value::String(s),
        ValueKind::Table(table) => Value::Object(
            table
                .into_iter()
                .map(|(key, value)| (key, from_config(value)))
                .collect(),
        ),
        ValueKind::Array(items) => Value::Array(items.into_iter().map(from_config).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Settings {
        port: u16,
        enabled: bool,
        name: String,
        ratio: f64,
        list: Vec<u32>,
    }

    #[test]
    fn strict_refuses_what_lenient_converts() {
        let value = serde_json::json!({
            "port": "8080", "enabled": 1, "name": 42, "ratio": "0.5", "list": ["1", 2]
        });
        // Every field but the list's second item has the wrong type as written.
        assert!(strict::<Settings>(value.clone()).is_err());
        let settings = lenient::<Settings>(value).unwrap();
        assert_eq!(
            settings,
            Settings {
                port: 8080,
                enabled: true,
                name: "42".into(),
                ratio: 0.5,
                list: vec![1, 2],
            }
        );
    }

    #[test]
    fn lenient_names_the_value_that_cannot_fit() {
        let value = serde_json::json!({
            "port": "8080", "enabled": "maybe", "name": "x", "ratio": 1, "list": []
        });
        let error = lenient::<Settings>(value).unwrap_err();
        assert_eq!(error.path().to_string(), "enabled");
        assert!(
            error.inner().to_string().contains("expected a boolean"),
            "{error}"
        );
    }
}
