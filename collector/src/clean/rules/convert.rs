//! `convert`: the matching fields from one unit to another (the unit table is `units`).

use tributary_common::config::ConfigError;
use tributary_wire::{FieldValue, Point};

use super::{Context, Outcome, RuleState};
use crate::clean::config::RuleKeys;
use crate::units::Conversion;

pub const KEYS: &[&str] = &["from", "to"];

#[derive(Debug, Clone)]
pub struct Convert {
    conversion: Conversion,
}

impl Convert {
    pub fn build(keys: &RuleKeys<'_>) -> Result<Convert, ConfigError> {
        if keys.matcher.field.is_none() {
            return Err(keys.error(
                "match.field",
                "convert needs match.field: which fields hold the unit `from`".into(),
            ));
        }
        let from = keys
            .raw
            .from
            .clone()
            .ok_or_else(|| keys.error("from", "missing unit".into()))?;
        let to = keys
            .raw
            .to
            .clone()
            .ok_or_else(|| keys.error("to", "missing unit".into()))?;
        let conversion = Conversion::new(&from, &to).map_err(|e| {
            let (at, other) = if crate::units::lookup(&from).is_err() {
                ("from", &to)
            } else {
                ("to", &from)
            };
            // Name the units that would do: those of the other unit's quantity, or all.
            let known = crate::units::lookup(other).ok().map(|u| u.quantity);
            let names: Vec<&str> = crate::units::UNITS
                .iter()
                .filter(|u| known.is_none_or(|q| u.quantity == q))
                .map(|u| u.name())
                .collect();
            let which = if known.is_some() {
                "units of this quantity"
            } else {
                "units"
            };
            keys.error(at, format!("{e}; the {which}: {}", names.join(", ")))
        })?;
        Ok(Convert { conversion })
    }

    pub fn apply(&self, context: &Context<'_>, point: &mut Point, _: &mut RuleState) -> Outcome {
        for (field, value) in point.fields.iter_mut() {
            if !context.matcher.matches_field(field) {
                continue;
            }
            match value {
                FieldValue::F64(v) => *v = self.conversion.apply(*v),
                FieldValue::I64(v) => *value = FieldValue::F64(self.conversion.apply(*v as f64)),
                FieldValue::Bool(_) | FieldValue::Str(_) => {
                    return Outcome::Drop(format!(
                        "field {field:?} is {}, not a number to convert",
                        value.kind()
                    ));
                }
            }
        }
        Outcome::Keep
    }
}
