//! The rules and what each does to a point.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};

use tributary_wire::{FieldValue, Point};

use crate::units::Conversion;

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

    fn matches_field(&self, field: &str) -> bool {
        self.field.as_ref().is_none_or(|g| g.matches(field))
    }
}

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

/// What to do with a value outside its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViolationPolicy {
    /// Quarantine the point.
    Drop,
    /// Set the value to the nearest bound.
    Clamp,
    /// Keep it, with the tag `flag = <rule name>`.
    Flag,
}

/// What to do when a field or tag is missing.
#[derive(Debug, Clone, PartialEq)]
pub enum MissingPolicy {
    Drop,
    Fill(FieldValue),
    /// The series' last value seen (the point is quarantined if there is none yet).
    FillLast,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutlierMethod {
    /// Modified z-score from the median and the median absolute deviation (Iglewicz and
    /// Hoaglin): robust to the outliers themselves.
    Mad,
    /// Distance from the mean in standard deviations.
    ZScore,
}

#[derive(Debug, Clone)]
pub enum Action {
    Require {
        fields: Vec<(String, FieldType)>,
        tags: Vec<String>,
    },
    Rename {
        fields: BTreeMap<String, String>,
        tags: BTreeMap<String, String>,
        measurement: Option<String>,
    },
    MapField {
        field: String,
        values: BTreeMap<String, FieldValue>,
        drop_unmapped: bool,
    },
    MapTag {
        tag: String,
        values: BTreeMap<String, String>,
        drop_unmapped: bool,
    },
    Convert {
        conversion: Conversion,
    },
    Range {
        min: f64,
        max: f64,
        policy: ViolationPolicy,
        flag: String,
    },
    Missing {
        fields: Vec<String>,
        tags: Vec<String>,
        policy: MissingPolicy,
    },
    Outlier {
        method: OutlierMethod,
        window: usize,
        threshold: f64,
        min_samples: usize,
        policy: ViolationPolicy,
        flag: String,
    },
    Dedupe {
        /// How far apart in time (ns) a repeat may be and still be one.
        window: i64,
    },
}

/// One checked rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub matcher: Matcher,
    pub action: Action,
}

/// The identity of a series for the stateful rules: a hash of the agent, name, tags and field.
fn series_key(
    hasher: &foldhash::fast::RandomState,
    agent: &str,
    point: &Point,
    field: &str,
) -> u64 {
    let mut h = hasher.build_hasher();
    agent.hash(&mut h);
    point.name.hash(&mut h);
    point.tags.hash(&mut h);
    field.hash(&mut h);
    h.finish()
}

/// What stateful rules remember between points, per rule.
#[derive(Debug, Default)]
pub struct RuleState {
    hasher: foldhash::fast::RandomState,
    /// `missing` with `fill_last`: last value per series (field) or tag value per series.
    last: HashMap<u64, FieldValue>,
    /// `outlier`: recent values per series.
    recent: HashMap<u64, VecDeque<f64>>,
    /// `dedupe`: points seen (hash of the whole point) -> their timestamp, and the newest
    /// timestamp per series, to let go of what is older than the window.
    seen: HashMap<u64, i64>,
    newest: i64,
    since_trim: usize,
}

/// The result of one rule on one point.
pub enum Outcome {
    Keep,
    Drop(String),
}

fn numeric(value: &FieldValue) -> Option<f64> {
    match value {
        FieldValue::F64(v) => Some(*v),
        FieldValue::I64(v) => Some(*v as f64),
        _ => None,
    }
}

/// The median of sorted values (NaN for none).
fn median(sorted: &[f64]) -> f64 {
    let middle = sorted.len() / 2;
    let upper = sorted.get(middle).copied().unwrap_or(f64::NAN);
    if sorted.len() % 2 == 1 {
        upper
    } else {
        let lower = middle
            .checked_sub(1)
            .and_then(|i| sorted.get(i))
            .copied()
            .unwrap_or(f64::NAN);
        (lower + upper) / 2.0
    }
}

impl Rule {
    pub fn applies_to(&self, point: &Point) -> bool {
        self.matcher.matches_point(point)
    }

    /// Applies the rule to `point` (the caller checked [`Rule::applies_to`]).
    pub fn apply(&self, agent: &str, point: &mut Point, state: &mut RuleState) -> Outcome {
        match &self.action {
            Action::Require { fields, tags } => {
                for (field, kind) in fields {
                    match point.fields.get(field) {
                        None => {
                            return Outcome::Drop(format!("required field {field:?} is missing"));
                        }
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
                if let Some(tag) = tags.iter().find(|t| !point.tags.contains_key(*t)) {
                    return Outcome::Drop(format!("required tag {tag:?} is missing"));
                }
                Outcome::Keep
            }
            Action::Rename {
                fields,
                tags,
                measurement,
            } => {
                for (from, to) in fields {
                    if let Some(value) = point.fields.remove(from) {
                        point.fields.insert(to.clone(), value);
                    }
                }
                for (from, to) in tags {
                    if let Some(value) = point.tags.remove(from) {
                        point.tags.insert(to.clone(), value);
                    }
                }
                if let Some(name) = measurement {
                    point.name.clone_from(name);
                }
                Outcome::Keep
            }
            Action::MapField {
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
            Action::MapTag {
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
            Action::Convert { conversion } => {
                for (field, value) in point.fields.iter_mut() {
                    if !self.matcher.matches_field(field) {
                        continue;
                    }
                    match value {
                        FieldValue::F64(v) => *v = conversion.apply(*v),
                        FieldValue::I64(v) => *value = FieldValue::F64(conversion.apply(*v as f64)),
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
            Action::Range {
                min,
                max,
                policy,
                flag,
            } => {
                let mut flagged = false;
                for (field, value) in point.fields.iter_mut() {
                    if !self.matcher.matches_field(field) {
                        continue;
                    }
                    let Some(v) = numeric(value) else { continue };
                    if v >= *min && v <= *max {
                        continue;
                    }
                    match policy {
                        ViolationPolicy::Drop => {
                            return Outcome::Drop(format!(
                                "field {field:?} = {v} is outside [{min}, {max}]"
                            ));
                        }
                        ViolationPolicy::Clamp => {
                            let clamped = if v.is_nan() {
                                *min
                            } else {
                                v.clamp(*min, *max)
                            };
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
                    point.tags.insert(flag.clone(), self.name.clone());
                }
                Outcome::Keep
            }
            Action::Missing {
                fields,
                tags,
                policy,
            } => {
                for field in fields {
                    let key = series_key(&state.hasher, agent, point, field);
                    if let Some(value) = point.fields.get(field) {
                        if *policy == MissingPolicy::FillLast {
                            state.last.insert(key, value.clone());
                        }
                        continue;
                    }
                    match policy {
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
                for tag in tags {
                    if point.tags.contains_key(tag) {
                        continue;
                    }
                    match policy {
                        MissingPolicy::Fill(FieldValue::Str(value)) => {
                            point.tags.insert(tag.clone(), value.clone());
                        }
                        _ => return Outcome::Drop(format!("tag {tag:?} is missing")),
                    }
                }
                Outcome::Keep
            }
            Action::Outlier {
                method,
                window,
                threshold,
                min_samples,
                policy,
                flag,
            } => {
                let mut outlier: Option<String> = None;
                let fields: Vec<(String, f64)> = point
                    .fields
                    .iter()
                    .filter(|(f, _)| self.matcher.matches_field(f))
                    .filter_map(|(f, v)| numeric(v).map(|v| (f.clone(), v)))
                    .collect();
                for (field, v) in fields {
                    let key = series_key(&state.hasher, agent, point, &field);
                    let recent = state.recent.entry(key).or_default();
                    if recent.len() >= *min_samples && v.is_finite() {
                        let score = match method {
                            OutlierMethod::Mad => {
                                let mut sorted: Vec<f64> = recent.iter().copied().collect();
                                sorted.sort_by(f64::total_cmp);
                                let med = median(&sorted);
                                let mut deviations: Vec<f64> =
                                    sorted.iter().map(|x| (x - med).abs()).collect();
                                deviations.sort_by(f64::total_cmp);
                                let mad = median(&deviations);
                                if mad == 0.0 {
                                    if v == med { 0.0 } else { f64::INFINITY }
                                } else {
                                    0.6745 * (v - med).abs() / mad
                                }
                            }
                            OutlierMethod::ZScore => {
                                let n = recent.len() as f64;
                                let mean = recent.iter().sum::<f64>() / n;
                                let var =
                                    recent.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>()
                                        / (n - 1.0);
                                let sd = var.sqrt();
                                if sd == 0.0 {
                                    if v == mean { 0.0 } else { f64::INFINITY }
                                } else {
                                    (v - mean).abs() / sd
                                }
                            }
                        };
                        if score > *threshold {
                            outlier.get_or_insert_with(|| {
                                format!("field {field:?} = {v} is an outlier (score {score:.2} > {threshold})")
                            });
                        }
                    }
                    if v.is_finite() {
                        if recent.len() == *window {
                            recent.pop_front();
                        }
                        recent.push_back(v);
                    }
                }
                match (outlier, policy) {
                    (None, _) => Outcome::Keep,
                    (Some(reason), ViolationPolicy::Drop) => Outcome::Drop(reason),
                    (Some(_), _) => {
                        point.tags.insert(flag.clone(), self.name.clone());
                        Outcome::Keep
                    }
                }
            }
            Action::Dedupe { window } => {
                let mut h = state.hasher.build_hasher();
                agent.hash(&mut h);
                point.hash_identity(&mut h);
                let key = h.finish();
                state.newest = state.newest.max(point.ts);
                state.since_trim = state.since_trim.saturating_add(1);
                if state.since_trim >= 4096 {
                    state.since_trim = 0;
                    let horizon = state.newest.saturating_sub(*window);
                    state.seen.retain(|_, ts| *ts >= horizon);
                }
                if point.ts < state.newest.saturating_sub(*window) {
                    // Too old to tell: the window has let go of its neighbours.
                    return Outcome::Keep;
                }
                match state.seen.insert(key, point.ts) {
                    Some(_) => Outcome::Drop(format!(
                        "duplicate of a point with the same series, time and values seen within {}s",
                        *window / 1_000_000_000
                    )),
                    None => Outcome::Keep,
                }
            }
        }
    }
}

/// Hashing a point's identity and values (fields hashed by their bits).
trait HashIdentity {
    fn hash_identity<H: Hasher>(&self, h: &mut H);
}

impl HashIdentity for Point {
    fn hash_identity<H: Hasher>(&self, h: &mut H) {
        self.name.hash(h);
        self.tags.hash(h);
        self.ts.hash(h);
        for (field, value) in &self.fields {
            field.hash(h);
            match value {
                FieldValue::F64(v) => (0u8, v.to_bits()).hash(h),
                FieldValue::I64(v) => (1u8, *v).hash(h),
                FieldValue::Bool(v) => (2u8, *v).hash(h),
                FieldValue::Str(v) => (3u8, v).hash(h),
            }
        }
    }
}
