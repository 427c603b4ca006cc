//! `[[clean.rules]]` and `[time]` as written, and their checking into [`Rule`]s.
//!
//! One flat table per rule: `action` says which keys apply, and a key that does not belong to
//! the action is an error (a misplaced key would otherwise be ignored silently).

use std::collections::BTreeMap;

use serde::Deserialize;
use tributary_common::config::values;
use tributary_common::config::{ConfigError, Source};
use tributary_wire::FieldValue;

use super::rules::{ACTIONS, Action, Glob, Matcher, Rule, ViolationPolicy, keys_of};
use super::time::{TimePolicy, TimeSanity};

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

impl RawMatch {
    /// The matcher, its globs checked; `err` names a key under `match.` of the table it is in.
    pub fn resolve(
        &self,
        err: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<Matcher, ConfigError> {
        let glob = |text: &str, at: &str| {
            Glob::new(text).map_err(|e| err(at, format!("{text:?} is not a glob pattern ({e})")))
        };
        Ok(Matcher {
            name: self
                .name
                .as_deref()
                .map(|g| glob(g, "match.name"))
                .transpose()?,
            tags: self
                .tags
                .iter()
                .map(|(k, g)| Ok((k.clone(), glob(g, &format!("match.tags.{k}"))?)))
                .collect::<Result<_, ConfigError>>()?,
            field: self
                .field
                .as_deref()
                .map(|g| glob(g, "match.field"))
                .transpose()?,
        })
    }
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

impl RawRule {
    pub(super) fn present_keys(&self) -> Vec<&'static str> {
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

/// Checks every rule; errors name `clean.rules[i].key`.
pub fn resolve_rules(raw: RawClean, source: &Source) -> Result<Vec<Rule>, ConfigError> {
    let mut rules = Vec::with_capacity(raw.rules.len());
    for (index, raw) in raw.rules.into_iter().enumerate() {
        rules.push(resolve_rule(&raw, index, source)?);
    }
    Ok(rules)
}

/// One rule's table as a kind's `build` reads it: the raw keys, the checked matcher, and
/// errors that name `clean.rules[i].key` in the file.
pub struct RuleKeys<'a> {
    pub raw: &'a RawRule,
    pub matcher: &'a Matcher,
    index: usize,
    source: &'a Source,
}

impl RuleKeys<'_> {
    /// An error about `key` of this rule.
    pub fn error(&self, key: &str, message: String) -> ConfigError {
        self.source
            .error(format!("clean.rules[{}].{key}", self.index), message)
    }

    /// `value` as a list of names (absent: empty).
    pub fn names_list(
        &self,
        value: Option<RawNames>,
        at: &str,
    ) -> Result<Vec<String>, ConfigError> {
        match value {
            None => Ok(Vec::new()),
            Some(RawNames::List(list)) => Ok(list),
            Some(RawNames::Map(_)) => Err(self.error(at, "must be a list of names".into())),
        }
    }

    /// `value` as a table of names to names (absent: empty).
    pub fn names_map(
        &self,
        value: Option<RawNames>,
        at: &str,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        match value {
            None => Ok(BTreeMap::new()),
            Some(RawNames::Map(map)) => Ok(map),
            Some(RawNames::List(_)) => {
                Err(self.error(at, "must be a table, e.g. { old = \"new\" }".into()))
            }
        }
    }

    /// `policy` for a bounds check: `default` when absent; `clamp` only where it means
    /// something.
    pub fn violation(
        &self,
        default: ViolationPolicy,
        allow_clamp: bool,
    ) -> Result<ViolationPolicy, ConfigError> {
        match self.raw.policy.as_deref() {
            None => Ok(default),
            Some("drop") => Ok(ViolationPolicy::Drop),
            Some("flag") => Ok(ViolationPolicy::Flag),
            Some("clamp") if allow_clamp => Ok(ViolationPolicy::Clamp),
            Some(other) => Err(self.error(
                "policy",
                format!(
                    "{other:?} is not a policy; one of drop, flag{}",
                    if allow_clamp { ", clamp" } else { "" }
                ),
            )),
        }
    }

    /// The tag a flagging rule sets (`flag`, by default).
    pub fn flag(&self) -> String {
        self.raw.flag.clone().unwrap_or_else(|| "flag".to_owned())
    }
}

fn resolve_rule(raw: &RawRule, index: usize, source: &Source) -> Result<Rule, ConfigError> {
    let err =
        |name: &str, message: String| source.error(format!("clean.rules[{index}].{name}"), message);
    let actions = ACTIONS.join(", ");
    let action_name = raw
        .action
        .clone()
        .ok_or_else(|| err("action", format!("missing; one of {actions}")))?;
    let allowed = keys_of(&action_name).ok_or_else(|| {
        err(
            "action",
            format!("{action_name:?} is not an action; one of {actions}"),
        )
    })?;
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
    let matcher = raw.matcher.resolve(&err)?;
    let keys = RuleKeys {
        raw,
        matcher: &matcher,
        index,
        source,
    };
    let action = Action::build(&action_name, &keys)?;
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
    pub out_of_bounds: Option<TimePolicy>,
}

pub fn resolve_time(raw: &RawTime, source: &Source) -> Result<TimeSanity, ConfigError> {
    let duration = |key: &str, value: Option<&str>, default: &str| {
        values::duration(source, &format!("time.{key}"), value, default)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
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
    let policy = raw.out_of_bounds.unwrap_or_default();
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
