//! `map_values`: a field's or a tag's values through a table (e.g. `buy` to 1).

use std::collections::BTreeMap;

use tributary_common::config::ConfigError;
use tributary_wire::{FieldValue, Point};

use super::{Context, Outcome, RuleState};
use crate::clean::config::RuleKeys;

pub const KEYS: &[&str] = &["field", "tag", "values", "unmapped"];

#[derive(Debug, Clone)]
pub enum MapValues {
    Field {
        field: String,
        values: BTreeMap<String, FieldValue>,
        drop_unmapped: bool,
    },
    Tag {
        tag: String,
        values: BTreeMap<String, String>,
        drop_unmapped: bool,
    },
}

impl MapValues {
    pub fn build(keys: &RuleKeys<'_>) -> Result<MapValues, ConfigError> {
        let raw = keys.raw;
        let values: BTreeMap<String, FieldValue> = raw
            .values
            .clone()
            .ok_or_else(|| keys.error("values", "missing; e.g. { buy = 1, click = 0 }".into()))?
            .into_iter()
            .map(|(k, v)| (k, v.into()))
            .collect();
        let drop_unmapped = match raw.unmapped.as_deref() {
            None | Some("keep") => false,
            Some("drop") => true,
            Some(other) => {
                return Err(keys.error("unmapped", format!("{other:?} is not keep or drop")));
            }
        };
        match (raw.field.clone(), raw.tag.clone()) {
            (Some(field), None) => Ok(MapValues::Field {
                field,
                values,
                drop_unmapped,
            }),
            (None, Some(tag)) => {
                let mut strings = BTreeMap::new();
                for (from, to) in values {
                    let FieldValue::Str(to) = to else {
                        return Err(keys.error(
                            &format!("values.{from}"),
                            "a tag's value maps to a string".into(),
                        ));
                    };
                    strings.insert(from, to);
                }
                Ok(MapValues::Tag {
                    tag,
                    values: strings,
                    drop_unmapped,
                })
            }
            _ => Err(keys.error(
                "field",
                "map_values needs exactly one of `field` or `tag`".into(),
            )),
        }
    }

    pub fn apply(&self, _: &Context<'_>, point: &mut Point, _: &mut RuleState) -> Outcome {
        match self {
            MapValues::Field {
                field,
                values,
                drop_unmapped,
            } => {
                let Some(value) = point.fields.get_mut(field) else {
                    return Outcome::Keep;
                };
                let text = match value {
                    FieldValue::Str(s) => s.clone(),
                    FieldValue::I64(v) => v.to_string(),
                    FieldValue::F64(v) => v.to_string(),
                    FieldValue::Bool(v) => v.to_string(),
                };
                match values.get(&text) {
                    Some(mapped) => {
                        *value = mapped.clone();
                        Outcome::Keep
                    }
                    None if *drop_unmapped => {
                        Outcome::Drop(format!("field {field:?} has the unmapped value {text:?}"))
                    }
                    None => Outcome::Keep,
                }
            }
            MapValues::Tag {
                tag,
                values,
                drop_unmapped,
            } => {
                let Some(value) = point.tags.get_mut(tag) else {
                    return Outcome::Keep;
                };
                match values.get(value.as_str()) {
                    Some(mapped) => {
                        value.clone_from(mapped);
                        Outcome::Keep
                    }
                    None if *drop_unmapped => {
                        Outcome::Drop(format!("tag {tag:?} has the unmapped value {value:?}"))
                    }
                    None => Outcome::Keep,
                }
            }
        }
    }
}
