//! `range`: numbers outside `[min, max]` dropped, clamped or flagged.

use tributary_common::config::ConfigError;
use tributary_wire::{FieldValue, Point};

use super::{Context, Outcome, RuleState, ViolationPolicy, numeric};
use crate::clean::config::RuleKeys;

pub const KEYS: &[&str] = &["min", "max", "policy", "flag"];

#[derive(Debug, Clone)]
pub struct Range {
    min: f64,
    max: f64,
    policy: ViolationPolicy,
    flag: String,
}

impl Range {
    pub fn build(keys: &RuleKeys<'_>) -> Result<Range, ConfigError> {
        let raw = keys.raw;
        if raw.min.is_none() && raw.max.is_none() {
            return Err(keys.error("min", "range needs `min`, `max` or both".into()));
        }
        let min = raw.min.unwrap_or(f64::NEG_INFINITY);
        let max = raw.max.unwrap_or(f64::INFINITY);
        if min > max {
            return Err(keys.error("min", format!("{min} is above max {max}")));
        }
        Ok(Range {
            min,
            max,
            policy: keys.violation(ViolationPolicy::Drop, true)?,
            flag: keys.flag(),
        })
    }

    pub fn apply(&self, context: &Context<'_>, point: &mut Point, _: &mut RuleState) -> Outcome {
        let (min, max) = (self.min, self.max);
        let mut flagged = false;
        for (field, value) in point.fields.iter_mut() {
            if !context.matcher.matches_field(field) {
                continue;
            }
            let Some(v) = numeric(value) else { continue };
            if v >= min && v <= max {
                continue;
            }
            match self.policy {
                ViolationPolicy::Drop => {
                    return Outcome::Drop(format!(
                        "field {field:?} = {v} is outside [{min}, {max}]"
                    ));
                }
                ViolationPolicy::Clamp => {
                    let clamped = if v.is_nan() { min } else { v.clamp(min, max) };
                    *value = match value {
                        FieldValue::I64(_) if clamped.fract() == 0.0 => {
                            FieldValue::I64(clamped as i64)
                        }
                        _ => FieldValue::F64(clamped),
                    };
                }
                ViolationPolicy::Flag => flagged = true,
            }
        }
        if flagged {
            point
                .tags
                .insert(self.flag.clone(), context.name.to_owned());
        }
        Outcome::Keep
    }
}
