//! `[[clean.rules]]` and `[time]` as written, and their checking into [`Rule`]s.
//!
//! One flat table per rule: `action` says which keys apply, and a key that does not belong to
//! the action is an error (a misplaced key would otherwise be ignored silently).

use std::collections::BTreeMap;

use serde::Deserialize;
use tributary_common::config::values::parse_duration;
use tributary_common::config::{ConfigError, Source};
use tributary_wire::FieldValue;

use super::rules::{
    Action, FieldType, Glob, Matcher, MissingPolicy, OutlierMethod, Rule, ViolationPolicy,
};
use super::time::{TimePolicy, TimeSanity};
use crate::units::Conversion;

/// `[clean]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClean {
    #[serde(default)]
    pub rules: Vec<RawRule>,
}

/// A list of names or a table of names to names/types.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawNames {
    List(Vec<String>),
    Map(BTreeMap<String, String>),
}

/// A constant in a rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawScalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl From<RawScalar> for FieldValue {
    fn from(raw: RawScalar) -> FieldValue {
        match raw {
            RawScalar::Bool(v) => FieldValue::Bool(v),
            RawScalar::Int(v) => FieldValue::I64(v),
            RawScalar::Float(v) => FieldValue::F64(v),
            RawScalar::Str(v) => FieldValue::Str(v),
        }
    }
}

/// A count of values or a duration.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawWindow {
    Count(i64),
    Text(String),
}

/// `match = { name = "glob", tags = { k = "glob" }, field = "glob" }`
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub name: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub field: Option<String>,
}

/// One `[[clean.rules]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Names the rule in quarantine reasons and metrics.
    pub name: Option<String>,
    pub action: Option<String>,
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    pub fields: Option<RawNames>,
    pub tags: Option<RawNames>,
    pub measurement: Option<String>,
    pub field: Option<String>,
    pub tag: Option<String>,
    pub values: Option<BTreeMap<String, RawScalar>>,
    pub unmapped: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub policy: Option<String>,
    pub flag: Option<String>,
    pub value: Option<RawScalar>,
    pub method: Option<String>,
    pub window: Option<RawWindow>,
    pub threshold: Option<f64>,
    pub min_samples: Option<usize>,
}

/// Which keys each action takes, besides `name`, `action` and `match`.
fn allowed_keys(action: &str) -> &'static [&'static str] {
    match action {
        "require" => &["fields", "tags"],
        "rename" => &["fields", "tags", "measurement"],
        "map_values" => &["field", "tag", "values", "unmapped"],
        "convert" => &["from", "to"],
        "range" => &["min", "max", "policy", "flag"],
        "missing" => &["fields", "tags", "policy", "value"],
        "outlier" => &[
            "method",
            "window",
            "threshold",
            "min_samples",
            "policy",
            "flag",
        ],
        "dedupe" => &["window"],
        _ => &[],
    }
}

impl RawRule {
    fn present_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut has = |key: &'static str, present: bool| {
            if present {
                keys.push(key);
            }
        };
        has("fields", self.fields.is_some());
        has("tags", self.tags.is_some());
        has("measurement", self.measurement.is_some());
        has("field", self.field.is_some());
        has("tag", self.tag.is_some());
        has("values", self.values.is_some());
        has("unmapped", self.unmapped.is_some());
        has("from", self.from.is_some());
        has("to", self.to.is_some());
        has("min", self.min.is_some());
        has("max", self.max.is_some());
        has("policy", self.policy.is_some());
        has("flag", self.flag.is_some());
        has("value", self.value.is_some());
        has("method", self.method.is_some());
        has("window", self.window.is_some());
        has("threshold", self.threshold.is_some());
        has("min_samples", self.min_samples.is_some());
        keys
    }
}

const ACTIONS: &str = "require, rename, map_values, convert, range, missing, outlier or dedupe";

/// Checks every rule; errors name `clean.rules[i].key`.
pub fn resolve_rules(raw: RawClean, source: &Source) -> Result<Vec<Rule>, ConfigError> {
    let mut rules = Vec::with_capacity(raw.rules.len());
    for (index, raw) in raw.rules.into_iter().enumerate() {
        rules.push(resolve_rule(&raw, index, source)?);
    }
    Ok(rules)
}

fn resolve_rule(raw: &RawRule, index: usize, source: &Source) -> Result<Rule, ConfigError> {
    let key = |name: &str| format!("clean.rules[{index}].{name}");
    let err = |name: &str, message: String| source.error(key(name), message);
    let action_name = raw
        .action
        .clone()
        .ok_or_else(|| err("action", format!("missing; one of {ACTIONS}")))?;
    let allowed = allowed_keys(&action_name);
    if allowed.is_empty() {
        return Err(err(
            "action",
            format!("{action_name:?} is not an action; one of {ACTIONS}"),
        ));
    }
    for present in raw.present_keys() {
        if !allowed.contains(&present) {
            return Err(err(
                present,
                format!(
                    "does not apply to action {action_name:?} (it takes: {})",
                    allowed.join(", ")
                ),
            ));
        }
    }
    let name = raw
        .name
        .clone()
        .unwrap_or_else(|| format!("{action_name}#{index}"));
    let glob = |text: &str, at: &str| {
        Glob::new(text).map_err(|e| err(at, format!("{text:?} is not a glob pattern ({e})")))
    };
    let matcher = Matcher {
        name: raw
            .matcher
            .name
            .as_deref()
            .map(|g| glob(g, "match.name"))
            .transpose()?,
        tags: raw
            .matcher
            .tags
            .iter()
            .map(|(k, g)| Ok((k.clone(), glob(g, &format!("match.tags.{k}"))?)))
            .collect::<Result<_, ConfigError>>()?,
        field: raw
            .matcher
            .field
            .as_deref()
            .map(|g| glob(g, "match.field"))
            .transpose()?,
    };
    let names_list = |value: Option<RawNames>, at: &str| -> Result<Vec<String>, ConfigError> {
        match value {
            None => Ok(Vec::new()),
            Some(RawNames::List(list)) => Ok(list),
            Some(RawNames::Map(_)) => Err(err(at, "must be a list of names".into())),
        }
    };
    let names_map =
        |value: Option<RawNames>, at: &str| -> Result<BTreeMap<String, String>, ConfigError> {
            match value {
                None => Ok(BTreeMap::new()),
                Some(RawNames::Map(map)) => Ok(map),
                Some(RawNames::List(_)) => {
                    Err(err(at, "must be a table, e.g. { old = \"new\" }".into()))
                }
            }
        };
    let violation =
        |default: ViolationPolicy, allow_clamp: bool| -> Result<ViolationPolicy, ConfigError> {
            match raw.policy.as_deref() {
                None => Ok(default),
                Some("drop") => Ok(ViolationPolicy::Drop),
                Some("flag") => Ok(ViolationPolicy::Flag),
                Some("clamp") if allow_clamp => Ok(ViolationPolicy::Clamp),
                Some(other) => Err(err(
                    "policy",
                    format!(
                        "{other:?} is not a policy; one of drop, flag{}",
                        if allow_clamp { ", clamp" } else { "" }
                    ),
                )),
            }
        };
    let flag = raw.flag.clone().unwrap_or_else(|| "flag".to_owned());
    let action = match action_name.as_str() {
        "require" => {
            let mut fields = Vec::new();
            for (field, kind) in names_map(raw.fields.clone(), "fields")? {
                let kind = FieldType::parse(&kind).ok_or_else(|| {
                    err(
                        &format!("fields.{field}"),
                        format!("{kind:?} is not a type; one of float, integer, number, boolean, string, any"),
                    )
                })?;
                fields.push((field, kind));
            }
            let tags = names_list(raw.tags.clone(), "tags")?;
            if fields.is_empty() && tags.is_empty() {
                return Err(err(
                    "fields",
                    "require needs `fields` (name = type) or `tags` (names)".into(),
                ));
            }
            Action::Require { fields, tags }
        }
        "rename" => {
            let fields = names_map(raw.fields.clone(), "fields")?;
            let tags = names_map(raw.tags.clone(), "tags")?;
            if fields.is_empty() && tags.is_empty() && raw.measurement.is_none() {
                return Err(err(
                    "fields",
                    "rename needs `fields`, `tags` or `measurement`".into(),
                ));
            }
            Action::Rename {
                fields,
                tags,
                measurement: raw.measurement.clone(),
            }
        }
        "map_values" => {
            let values: BTreeMap<String, FieldValue> = raw
                .values
                .clone()
                .ok_or_else(|| err("values", "missing; e.g. { buy = 1, click = 0 }".into()))?
                .into_iter()
                .map(|(k, v)| (k, v.into()))
                .collect();
            let drop_unmapped = match raw.unmapped.as_deref() {
                None | Some("keep") => false,
                Some("drop") => true,
                Some(other) => {
                    return Err(err("unmapped", format!("{other:?} is not keep or drop")));
                }
            };
            match (raw.field.clone(), raw.tag.clone()) {
                (Some(field), None) => Action::MapField {
                    field,
                    values,
                    drop_unmapped,
                },
                (None, Some(tag)) => {
                    let mut strings = BTreeMap::new();
                    for (from, to) in values {
                        let FieldValue::Str(to) = to else {
                            return Err(err(
                                &format!("values.{from}"),
                                "a tag's value maps to a string".into(),
                            ));
                        };
                        strings.insert(from, to);
                    }
                    Action::MapTag {
                        tag,
                        values: strings,
                        drop_unmapped,
                    }
                }
                _ => {
                    return Err(err(
                        "field",
                        "map_values needs exactly one of `field` or `tag`".into(),
                    ));
                }
            }
        }
        "convert" => {
            if matcher.field.is_none() {
                return Err(err(
                    "match.field",
                    "convert needs match.field: which fields hold the unit `from`".into(),
                ));
            }
            let from = raw
                .from
                .clone()
                .ok_or_else(|| err("from", "missing unit".into()))?;
            let to = raw
                .to
                .clone()
                .ok_or_else(|| err("to", "missing unit".into()))?;
            let conversion = Conversion::new(&from, &to).map_err(|e| {
                let at = if crate::units::lookup(&from).is_err() {
                    "from"
                } else {
                    "to"
                };
                err(at, e.to_string())
            })?;
            Action::Convert { conversion }
        }
        "range" => {
            if raw.min.is_none() && raw.max.is_none() {
                return Err(err("min", "range needs `min`, `max` or both".into()));
            }
            let min = raw.min.unwrap_or(f64::NEG_INFINITY);
            let max = raw.max.unwrap_or(f64::INFINITY);
            if min > max {
                return Err(err("min", format!("{min} is above max {max}")));
            }
            Action::Range {
                min,
                max,
                policy: violation(ViolationPolicy::Drop, true)?,
                flag,
            }
        }
        "missing" => {
            let fields = names_list(raw.fields.clone(), "fields")?;
            let tags = names_list(raw.tags.clone(), "tags")?;
            if fields.is_empty() && tags.is_empty() {
                return Err(err(
                    "fields",
                    "missing needs `fields` or `tags` to look for".into(),
                ));
            }
            let policy = match (raw.policy.as_deref(), raw.value.clone()) {
                (None | Some("drop"), None) => MissingPolicy::Drop,
                (Some("fill"), Some(value)) => MissingPolicy::Fill(value.into()),
                (Some("fill"), None) => {
                    return Err(err(
                        "value",
                        "policy \"fill\" needs the `value` to fill in".into(),
                    ));
                }
                (Some("fill_last"), None) => MissingPolicy::FillLast,
                (Some("drop" | "fill_last") | None, Some(_)) => {
                    return Err(err("value", "only policy \"fill\" takes a value".into()));
                }
                (Some(other), _) => {
                    return Err(err(
                        "policy",
                        format!("{other:?} is not drop, fill or fill_last"),
                    ));
                }
            };
            if !tags.is_empty()
                && matches!(
                    policy,
                    MissingPolicy::Fill(
                        FieldValue::F64(_) | FieldValue::I64(_) | FieldValue::Bool(_)
                    )
                )
            {
                return Err(err(
                    "value",
                    "a tag can only be filled with a string".into(),
                ));
            }
            Action::Missing {
                fields,
                tags,
                policy,
            }
        }
        "outlier" => {
            let method = match raw.method.as_deref() {
                None | Some("mad") => OutlierMethod::Mad,
                Some("zscore") => OutlierMethod::ZScore,
                Some(other) => {
                    return Err(err("method", format!("{other:?} is not mad or zscore")));
                }
            };
            let window = match raw.window.clone() {
                None => 60,
                Some(RawWindow::Count(n)) if (3..=10_000).contains(&n) => n as usize,
                Some(_) => {
                    return Err(err(
                        "window",
                        "must be a count of recent values, 3 to 10000".into(),
                    ));
                }
            };
            let threshold = raw.threshold.unwrap_or(match method {
                OutlierMethod::Mad => 3.5,
                OutlierMethod::ZScore => 3.0,
            });
            if threshold.is_nan() || threshold <= 0.0 {
                return Err(err("threshold", "must be above 0".into()));
            }
            let min_samples = raw.min_samples.unwrap_or(10);
            if min_samples < 3 || min_samples > window {
                return Err(err(
                    "min_samples",
                    format!("must be between 3 and the window ({window})"),
                ));
            }
            Action::Outlier {
                method,
                window,
                threshold,
                min_samples,
                policy: violation(ViolationPolicy::Flag, false)?,
                flag,
            }
        }
        "dedupe" => {
            let window = match raw.window.clone() {
                None => parse_duration("10m").map_err(|m| err("window", m))?,
                Some(RawWindow::Text(text)) => {
                    parse_duration(&text).map_err(|m| err("window", m))?
                }
                Some(RawWindow::Count(_)) => {
                    return Err(err("window", "must be a duration, e.g. \"10m\"".into()));
                }
            };
            Action::Dedupe {
                window: i64::try_from(window.as_nanos()).unwrap_or(i64::MAX),
            }
        }
        other => {
            return Err(err(
                "action",
                format!("{other:?} is not an action this collector knows"),
            ));
        }
    };
    Ok(Rule {
        name,
        matcher,
        action,
    })
}

/// `[time]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTime {
    /// Shift a batch's timestamps by the agent's clock error when it passes the threshold.
    pub correct_clock_skew: Option<bool>,
    pub skew_threshold: Option<String>,
    /// Points further ahead of the collector's clock than this are out of bounds.
    pub max_future: Option<String>,
    /// Points before this time (RFC 3339) are out of bounds, e.g. a device without a clock.
    pub floor: Option<String>,
    /// `quarantine` or `receive_time` (replace the timestamp by the time of receipt).
    pub out_of_bounds: Option<String>,
}

pub fn resolve_time(raw: &RawTime, source: &Source) -> Result<TimeSanity, ConfigError> {
    let duration = |key: &str, value: Option<&str>, default: &str| {
        parse_duration(value.unwrap_or(default))
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .map_err(|m| source.error(format!("time.{key}"), m))
    };
    let floor = match raw.floor.as_deref() {
        None => None,
        Some(text) => Some(tributary_wire::time::parse_rfc3339(text).ok_or_else(|| {
            source.error(
                "time.floor",
                format!("{text:?} is not an RFC 3339 time like 2000-01-01T00:00:00Z"),
            )
        })?),
    };
    let policy = match raw.out_of_bounds.as_deref() {
        None | Some("quarantine") => TimePolicy::Quarantine,
        Some("receive_time") => TimePolicy::ReceiveTime,
        Some(other) => {
            return Err(source.error(
                "time.out_of_bounds",
                format!("{other:?} is not quarantine or receive_time"),
            ));
        }
    };
    Ok(TimeSanity {
        correct_clock_skew: raw.correct_clock_skew.unwrap_or(false),
        skew_threshold: duration("skew_threshold", raw.skew_threshold.as_deref(), "5s")?,
        max_future: match raw.max_future.as_deref() {
            Some("off") => None,
            other => Some(duration("max_future", other, "1d")?),
        },
        floor,
        policy,
    })
}
