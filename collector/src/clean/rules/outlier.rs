//! `outlier`: a value far from its series' recent values (by the median absolute deviation or
//! the standard deviation), flagged or dropped.

use std::collections::VecDeque;

use tributary_common::config::ConfigError;
use tributary_wire::Point;

use super::{Context, Outcome, RuleState, ViolationPolicy, numeric};
use crate::clean::config::{RawWindow, RuleKeys};

pub const KEYS: &[&str] = &[
    "method",
    "window",
    "threshold",
    "min_samples",
    "policy",
    "flag",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutlierMethod {
    /// Modified z-score from the median and the median absolute deviation (Iglewicz and
    /// Hoaglin): robust to the outliers themselves.
    Mad,
    /// Distance from the mean in standard deviations.
    ZScore,
}

#[derive(Debug, Clone)]
pub struct Outlier {
    method: OutlierMethod,
    /// How many recent values per series the score is taken against.
    window: usize,
    threshold: f64,
    /// How many recent values a series needs before anything is scored.
    min_samples: usize,
    policy: ViolationPolicy,
    flag: String,
}

impl Outlier {
    pub fn build(keys: &RuleKeys<'_>) -> Result<Outlier, ConfigError> {
        let raw = keys.raw;
        let method = match raw.method.as_deref() {
            None | Some("mad") => OutlierMethod::Mad,
            Some("zscore") => OutlierMethod::ZScore,
            Some(other) => {
                return Err(keys.error("method", format!("{other:?} is not mad or zscore")));
            }
        };
        let window = match raw.window.clone() {
            None => 60,
            Some(RawWindow::Count(n)) if (3..=10_000).contains(&n) => n as usize,
            Some(_) => {
                return Err(keys.error(
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
            return Err(keys.error("threshold", "must be above 0".into()));
        }
        let min_samples = raw.min_samples.unwrap_or(10);
        if min_samples < 3 || min_samples > window {
            return Err(keys.error(
                "min_samples",
                format!("must be between 3 and the window ({window})"),
            ));
        }
        Ok(Outlier {
            method,
            window,
            threshold,
            min_samples,
            policy: keys.violation(ViolationPolicy::Flag, false)?,
            flag: keys.flag(),
        })
    }

    pub fn apply(
        &self,
        context: &Context<'_>,
        point: &mut Point,
        state: &mut RuleState,
    ) -> Outcome {
        let mut outlier: Option<String> = None;
        let fields: Vec<(String, f64)> = point
            .fields
            .iter()
            .filter(|(f, _)| context.matcher.matches_field(f))
            .filter_map(|(f, v)| numeric(v).map(|v| (f.clone(), v)))
            .collect();
        for (field, v) in fields {
            let key = state.series_key(context.agent, point, &field);
            let recent = state.recent.entry(key).or_default();
            if recent.len() >= self.min_samples && v.is_finite() {
                let score = self.score(recent, v);
                if score > self.threshold {
                    outlier.get_or_insert_with(|| {
                        format!(
                            "field {field:?} = {v} is an outlier (score {score:.2} > {})",
                            self.threshold
                        )
                    });
                }
            }
            if v.is_finite() {
                if recent.len() == self.window {
                    recent.pop_front();
                }
                recent.push_back(v);
            }
        }
        match (outlier, self.policy) {
            (None, _) => Outcome::Keep,
            (Some(reason), ViolationPolicy::Drop) => Outcome::Drop(reason),
            (Some(_), _) => {
                point
                    .tags
                    .insert(self.flag.clone(), context.name.to_owned());
                Outcome::Keep
            }
        }
    }

    /// How far `v` is from `recent` (not empty), in the method's units.
    fn score(&self, recent: &VecDeque<f64>, v: f64) -> f64 {
        match self.method {
            OutlierMethod::Mad => {
                let mut sorted: Vec<f64> = recent.iter().copied().collect();
                sorted.sort_by(f64::total_cmp);
                let med = median(&sorted);
                let mut deviations: Vec<f64> = sorted.iter().map(|x| (x - med).abs()).collect();
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
                let var = recent.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
                let sd = var.sqrt();
                if sd == 0.0 {
                    if v == mean { 0.0 } else { f64::INFINITY }
                } else {
                    (v - mean).abs() / sd
                }
            }
        }
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
