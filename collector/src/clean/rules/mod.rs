//! The cleaning rules: one module per kind, each holding its checked settings, the keys it
//! takes, how it is built from its `[[clean.rules]]` table, and what it does to a point.
//!
//! A new kind is a module here and one line in `kinds!`'s list below; nothing else changes.
//! What every rule has (its name and which points it matches) and the per-rule state of the
//! stateful kinds live here.

mod convert;
mod dedupe;
mod map_values;
mod missing;
mod outlier;
mod range;
mod rename;
mod require;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};

use tributary_common::config::ConfigError;
use tributary_wire::{FieldValue, Point};

use super::config::RuleKeys;

/// A glob, with the common cases (a plain name, `*`) answered without the pattern matcher.
#[derive(Debug, Clone)]
pub enum Glob {
    Any,
    Literal(String),
    Pattern(glob::Pattern),
}

impl Glob {
    pub fn new(text: &str) -> Result<Glob, glob::PatternError> {
        let pattern = glob::Pattern::new(text)?;
        Ok(if text == "*" {
            Glob::Any
        } else if !text.contains(['*', '?', '[', ']']) {
            Glob::Literal(text.to_owned())
        } else {
            Glob::Pattern(pattern)
        })
    }

    pub fn matches(&self, text: &str) -> bool {
        match self {
            Glob::Any => true,
            Glob::Literal(literal) => literal == text,
            Glob::Pattern(pattern) => pattern.matches(text),
        }
    }
}

/// Which points (and fields) a rule applies to. Every part present must match.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    pub name: Option<Glob>,
    pub tags: Vec<(String, Glob)>,
    /// The point must have a field matching this; field-level actions act on those fields.
    pub field: Option<Glob>,
}

impl Matcher {
    fn matches_point(&self, point: &Point) -> bool {
        self.name.as_ref().is_none_or(|g| g.matches(&point.name))
            && self
                .tags
                .iter()
                .all(|(k, g)| point.tags.get(k).is_some_and(|v| g.matches(v)))
            && self
                .field
                .as_ref()
                .is_none_or(|g| point.fields.keys().any(|f| g.matches(f)))
    }

    /// Whether the stored series `name`, `tags`, `field` is one this matcher selects (exports'
    /// `match`).
    pub fn matches_series(
        &self,
        name: &str,
        tags: &std::collections::BTreeMap<String, String>,
        field: &str,
    ) -> bool {
        self.name.as_ref().is_none_or(|g| g.matches(name))
            && self
                .tags
                .iter()
                .all(|(k, g)| tags.get(k).is_some_and(|v| g.matches(v)))
            && self.matches_field(field)
    }

    fn matches_field(&self, field: &str) -> bool {
        self.field.as_ref().is_none_or(|g| g.matches(field))
    }
}

/// What to do with a value outside its bounds (`range`, `outlier`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViolationPolicy {
    /// Quarantine the point.
    Drop,
    /// Set the value to the nearest bound.
    Clamp,
    /// Keep it, with the tag `flag = <rule name>`.
    Flag,
}

/// What a rule is applied with besides the point: the agent, and the rule's own name and
/// matcher.
pub struct Context<'a> {
    pub agent: &'a str,
    pub name: &'a str,
    pub matcher: &'a Matcher,
}

/// The result of one rule on one point.
pub enum Outcome {
    Keep,
    Drop(String),
}

/// What stateful rules remember between points, per rule.
#[derive(Debug, Default)]
pub struct RuleState {
    hasher: foldhash::fast::RandomState,
    /// `missing` with `fill_last`: last value per series (field).
    last: HashMap<u64, FieldValue>,
    /// `outlier`: recent values per series.
    recent: HashMap<u64, VecDeque<f64>>,
    /// `dedupe`: points seen (hash of the whole point) -> their timestamp, and the newest
    /// timestamp seen, to let go of what is older than the window.
    seen: HashMap<u64, i64>,
    newest: i64,
    since_trim: usize,
}

impl RuleState {
    /// The identity of a series for the stateful rules: a hash of the agent, name, tags and
    /// field.
    fn series_key(&self, agent: &str, point: &Point, field: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        agent.hash(&mut h);
        point.name.hash(&mut h);
        point.tags.hash(&mut h);
        field.hash(&mut h);
        h.finish()
    }
}

/// A number a field holds, if it holds one.
fn numeric(value: &FieldValue) -> Option<f64> {
    match value {
        FieldValue::F64(v) => Some(*v),
        FieldValue::I64(v) => Some(*v as f64),
        _ => None,
    }
}

/// The kinds of rule: the `action` that names each, its module's type, and the keys its
/// table takes besides `name`, `action` and `match`. The one place a kind is registered.
macro_rules! kinds {
    ($($action:literal => $kind:ident ($module:ident)),* $(,)?) => {
        /// A rule's kind and its checked settings.
        #[derive(Debug, Clone)]
        pub enum Action {
            $($kind($module::$kind),)*
        }

        /// Every `action` name, for messages.
        pub const ACTIONS: &[&str] = &[$($action),*];

        /// The keys an action takes, or `None` for an unknown action.
        pub fn keys_of(action: &str) -> Option<&'static [&'static str]> {
            match action {
                $($action => Some($module::KEYS),)*
                _ => None,
            }
        }

        impl Action {
            /// Builds the kind `action` names from its checked table.
            pub fn build(action: &str, keys: &RuleKeys<'_>) -> Result<Action, ConfigError> {
                match action {
                    $($action => Ok(Action::$kind($module::$kind::build(keys)?)),)*
                    other => Err(keys.error("action", format!("{other:?} is not an action"))),
                }
            }

            fn apply(&self, context: &Context<'_>, point: &mut Point, state: &mut RuleState) -> Outcome {
                match self {
                    $(Action::$kind(rule) => rule.apply(context, point, state),)*
                }
            }
        }
    };
}

kinds! {
    "require" => Require(require),
    "rename" => Rename(rename),
    "map_values" => MapValues(map_values),
    "convert" => Convert(convert),
    "range" => Range(range),
    "missing" => Missing(missing),
    "outlier" => Outlier(outlier),
    "dedupe" => Dedupe(dedupe),
}

/// One checked rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub matcher: Matcher,
    pub action: Action,
}

impl Rule {
    pub fn applies_to(&self, point: &Point) -> bool {
        self.matcher.matches_point(point)
    }

    /// Applies the rule to `point` (the caller checked [`Rule::applies_to`]).
    pub fn apply(&self, agent: &str, point: &mut Point, state: &mut RuleState) -> Outcome {
        let context = Context {
            agent,
            name: &self.name,
            matcher: &self.matcher,
        };
        self.action.apply(&context, point, state)
    }
}
