//! `require`: fields (with a type) and tags a point must have.

use tributary_common::config::ConfigError;
use tributary_wire::{FieldValue, Point};

use super::{Context, Outcome, RuleState};
use crate::clean::config::RuleKeys;

pub const KEYS: &[&str] = &["fields", "tags"];

/// A field type `require` checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Float,
    Integer,
    Number,
    Boolean,
    String,
    Any,
}

impl FieldType {
    pub fn parse(text: &str) -> Option<FieldType> {
        Some(match text {
            "float" => FieldType::Float,
            "integer" => FieldType::Integer,
            "number" => FieldType::Number,
            "boolean" => FieldType::Boolean,
            "string" => FieldType::String,
            "any" => FieldType::Any,
            _ => return None,
        })
    }

    fn accepts(self, value: &FieldValue) -> bool {
        matches!(
            (self, value),
            (FieldType::Any, _)
                | (FieldType::Float, FieldValue::F64(_))
                | (FieldType::Integer, FieldValue::I64(_))
                | (FieldType::Number, FieldValue::F64(_) | FieldValue::I64(_))
                | (FieldType::Boolean, FieldValue::Bool(_))
                | (FieldType::String, FieldValue::Str(_))
        )
    }

    fn name(self) -> &'static str {
        match self {
            FieldType::Float => "float",
            FieldType::Integer => "integer",
            FieldType::Number => "number",
            FieldType::Boolean => "boolean",
            FieldType::String => "string",
            FieldType::Any => "any",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Require {
    fields: Vec<(String, FieldType)>,
    tags: Vec<String>,
}

impl Require {
    pub fn build(keys: &RuleKeys<'_>) -> Result<Require, ConfigError> {
        let mut fields = Vec::new();
        for (field, kind) in keys.names_map(keys.raw.fields.clone(), "fields")? {
            let kind = FieldType::parse(&kind).ok_or_else(|| {
                keys.error(
                    &format!("fields.{field}"),
                    format!(
                        "{kind:?} is not a type; one of float, integer, number, boolean, string, any"
                    ),
                )
            })?;
            fields.push((field, kind));
        }
        let tags = keys.names_list(keys.raw.tags.clone(), "tags")?;
        if fields.is_empty() && tags.is_empty() {
            return Err(keys.error(
                "fields",
                "require needs `fields` (name = type) or `tags` (names)".into(),
            ));
        }
        Ok(Require { fields, tags })
    }

    pub fn apply(&self, _: &Context<'_>, point: &mut Point, _: &mut RuleState) -> Outcome {
        for (field, kind) in &self.fields {
            match point.fields.get(field) {
                None => return Outcome::Drop(format!("required field {field:?} is missing")),
                Some(value) if !kind.accepts(value) => {
                    return Outcome::Drop(format!(
                        "field {field:?} is {}, not {}",
                        value.kind(),
                        kind.name()
                    ));
                }
                Some(_) => {}
            }
        }
        match self.tags.iter().find(|t| !point.tags.contains_key(*t)) {
            Some(tag) => Outcome::Drop(format!("required tag {tag:?} is missing")),
            None => Outcome::Keep,
        }
    }
}
