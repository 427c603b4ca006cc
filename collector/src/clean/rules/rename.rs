//! `rename`: fields, tags and the measurement under new names.

use std::collections::BTreeMap;

use tributary_common::config::ConfigError;
use tributary_wire::Point;

use super::{Context, Outcome, RuleState};
use crate::clean::config::RuleKeys;

pub const KEYS: &[&str] = &["fields", "tags", "measurement"];

#[derive(Debug, Clone)]
pub struct Rename {
    fields: BTreeMap<String, String>,
    tags: BTreeMap<String, String>,
    measurement: Option<String>,
}

impl Rename {
    pub fn build(keys: &RuleKeys<'_>) -> Result<Rename, ConfigError> {
        let fields = keys.names_map(keys.raw.fields.clone(), "fields")?;
        let tags = keys.names_map(keys.raw.tags.clone(), "tags")?;
        if fields.is_empty() && tags.is_empty() && keys.raw.measurement.is_none() {
            return Err(keys.error(
                "fields",
                "rename needs `fields`, `tags` or `measurement`".into(),
            ));
        }
        Ok(Rename {
            fields,
            tags,
            measurement: keys.raw.measurement.clone(),
        })
    }

    pub fn apply(&self, _: &Context<'_>, point: &mut Point, _: &mut RuleState) -> Outcome {
        for (from, to) in &self.fields {
            if let Some(value) = point.fields.remove(from) {
                point.fields.insert(to.clone(), value);
            }
        }
        for (from, to) in &self.tags {
            if let Some(value) = point.tags.remove(from) {
                point.tags.insert(to.clone(), value);
            }
        }
        if let Some(name) = &self.measurement {
            point.name.clone_from(name);
        }
        Outcome::Keep
    }
}
