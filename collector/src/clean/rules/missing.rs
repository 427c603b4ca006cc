//! `missing`: fields or tags a point lacks, dropped, filled with a value, or filled with the
//! series' last value.

use tributary_common::config::ConfigError;
use tributary_wire::{FieldValue, Point};

use super::{Context, Outcome, RuleState};
use crate::clean::config::RuleKeys;

pub const KEYS: &[&str] = &["fields", "tags", "policy", "value"];

/// What to do when a field or tag is missing.
#[derive(Debug, Clone, PartialEq)]
pub enum MissingPolicy {
    Drop,
    Fill(FieldValue),
    /// The series' last value seen (the point is quarantined if there is none yet).
    FillLast,
}

#[derive(Debug, Clone)]
pub struct Missing {
    fields: Vec<String>,
    tags: Vec<String>,
    policy: MissingPolicy,
}

impl Missing {
    pub fn build(keys: &RuleKeys<'_>) -> Result<Missing, ConfigError> {
        let raw = keys.raw;
        let fields = keys.names_list(raw.fields.clone(), "fields")?;
        let tags = keys.names_list(raw.tags.clone(), "tags")?;
        if fields.is_empty() && tags.is_empty() {
            return Err(keys.error(
                "fields",
                "missing needs `fields` or `tags` to look for".into(),
            ));
        }
        let policy = match (raw.policy.as_deref(), raw.value.clone()) {
            (None | Some("drop"), None) => MissingPolicy::Drop,
            (Some("fill"), Some(value)) => MissingPolicy::Fill(value.into()),
            (Some("fill"), None) => {
                return Err(keys.error(
                    "value",
                    "policy \"fill\" needs the `value` to fill in".into(),
                ));
            }
            (Some("fill_last"), None) => MissingPolicy::FillLast,
            (Some("drop" | "fill_last") | None, Some(_)) => {
                return Err(keys.error("value", "only policy \"fill\" takes a value".into()));
            }
            (Some(other), _) => {
                return Err(keys.error(
                    "policy",
                    format!("{other:?} is not drop, fill or fill_last"),
                ));
            }
        };
        if !tags.is_empty()
            && matches!(
                policy,
                MissingPolicy::Fill(FieldValue::F64(_) | FieldValue::I64(_) | FieldValue::Bool(_))
            )
        {
            return Err(keys.error("value", "a tag can only be filled with a string".into()));
        }
        Ok(Missing {
            fields,
            tags,
            policy,
        })
    }

    pub fn apply(
        &self,
        context: &Context<'_>,
        point: &mut Point,
        state: &mut RuleState,
    ) -> Outcome {
        for field in &self.fields {
            let key = state.series_key(context.agent, point, field);
            if let Some(value) = point.fields.get(field) {
                if self.policy == MissingPolicy::FillLast {
                    state.last.insert(key, value.clone());
                }
                continue;
            }
            match &self.policy {
                MissingPolicy::Drop => {
                    return Outcome::Drop(format!("field {field:?} is missing"));
                }
                MissingPolicy::Fill(value) => {
                    point.fields.insert(field.clone(), value.clone());
                }
                MissingPolicy::FillLast => match state.last.get(&key) {
                    Some(value) => {
                        point.fields.insert(field.clone(), value.clone());
                    }
                    None => {
                        return Outcome::Drop(format!(
                            "field {field:?} is missing and its series has no earlier value"
                        ));
                    }
                },
            }
        }
        for tag in &self.tags {
            if point.tags.contains_key(tag) {
                continue;
            }
            match &self.policy {
                MissingPolicy::Fill(FieldValue::Str(value)) => {
                    point.tags.insert(tag.clone(), value.clone());
                }
                _ => return Outcome::Drop(format!("tag {tag:?} is missing")),
            }
        }
        Outcome::Keep
    }
}
