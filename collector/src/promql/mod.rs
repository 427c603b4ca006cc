//! PromQL: expressions parsed by `promql-parser`, evaluated here against series from a
//! [`Source`] (the store through [`crate::prometheus`]' naming, or a fixed set in tests).
//!
//! Evaluation follows Prometheus 2's semantics: an instant vector selector takes each series'
//! newest sample within the 5-minute lookback before the evaluation time (not a stale marker);
//! a range selector takes the samples in `[t - range, t]`; `offset` and `@` move those
//! windows; a subquery evaluates its expression at the absolute multiples of its step inside
//! its range; `rate`, `increase` and `delta` extrapolate as Prometheus does. A range query is
//! the instant evaluation at each step (`start + k·step`), so both agree by construction.
//! The series a query touches are loaded once, for the whole window it needs, and the steps
//! slice them.
//!
//! What is not implemented (native histograms, experimental functions, `limitk`, the `or`
//! matcher syntax) is refused with an error that starts with "unsupported": never a wrong
//! answer.

mod eval;
mod functions;
pub mod rolled;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use eval::Evaluator;
pub use functions::format_value;
use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::Expr;
pub use rolled::{Grid, Partial, Rolled, Windowed};

/// A series' labels, `__name__` included, sorted by name.
pub type Labels = BTreeMap<String, String>;

/// The label that carries the metric name.
pub const METRIC_NAME: &str = "__name__";

/// Prometheus' stale marker: a NaN with this bit pattern ends a series.
pub const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// Whether `value` is the stale marker.
pub fn is_stale(value: f64) -> bool {
    value.to_bits() == STALE_NAN
}

/// One series with its samples (milliseconds, oldest first).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Arc<Labels>,
    pub samples: Vec<(i64, f64)>,
}

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Arc<Labels>,
    pub value: f64,
    /// The sample's own time for a plain selector (what `timestamp()` answers), else the
    /// evaluation time.
    pub ts: i64,
}

/// What an expression evaluates to at one time.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(f64),
    String(String),
    Vector(Vec<Sample>),
    Matrix(Vec<Series>),
}

impl Value {
    /// Prometheus' name of the type (`resultType`).
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Scalar(_) => "scalar",
            Value::String(_) => "string",
            Value::Vector(_) => "vector",
            Value::Matrix(_) => "matrix",
        }
    }
}

/// Why a query has no answer, with Prometheus' `errorType`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The query or a parameter is malformed (`bad_data`, 400).
    #[error("{0}")]
    BadData(String),
    /// Evaluation failed (`execution`, 422), unsupported features included.
    #[error("{0}")]
    Execution(String),
    /// The query took longer than allowed (`timeout`, 503).
    #[error("{0}")]
    Timeout(String),
    /// The store could not be read (`internal`, 500).
    #[error("{0}")]
    Internal(String),
}

impl QueryError {
    /// A query that would load more than `budget` samples (`query.max_points`).
    pub fn over_budget(budget: usize) -> QueryError {
        QueryError::Execution(format!(
            "the query would load more than {budget} samples (query.max_points)"
        ))
    }

    pub fn unsupported(what: impl std::fmt::Display) -> QueryError {
        QueryError::Execution(format!("unsupported: {what}"))
    }

    /// Prometheus' `errorType`.
    pub fn kind(&self) -> &'static str {
        match self {
            QueryError::BadData(_) => "bad_data",
            QueryError::Execution(_) => "execution",
            QueryError::Timeout(_) => "timeout",
            QueryError::Internal(_) => "internal",
        }
    }
}

/// Where series come from.
pub trait Source {
    /// Every series whose labels satisfy all `matchers`, with its samples in `[from, to]`
    /// (ms). At most `budget` samples in all, else an error.
    fn select(
        &self,
        matchers: &[Matcher],
        from: i64,
        to: i64,
        budget: usize,
    ) -> Result<Vec<Series>, QueryError>;

    /// The series `matchers` select as windows (see [`rolled`]) for a `*_over_time` over
    /// `range` (ms) at every reference time of `grid`, or `None` when the source keeps no
    /// windows that tile them. Series the windows cannot answer exactly come back raw, with
    /// their samples in `[grid.from - range, grid.to]`. At most `budget` windows and samples
    /// in all, else an error.
    fn windows(
        &self,
        matchers: &[Matcher],
        range: i64,
        grid: Grid,
        budget: usize,
    ) -> Result<Option<Rolled>, QueryError> {
        let _ = (matchers, range, grid, budget);
        Ok(None)
    }
}

/// Whether `labels` satisfy every matcher (a missing label is the empty string).
pub fn matches(labels: &Labels, matchers: &[Matcher]) -> bool {
    matchers.iter().all(|m| {
        let value = labels.get(&m.name).map_or("", String::as_str);
        m.is_match(value)
    })
}

/// Whether a matcher set selects nothing but empty label values: Prometheus refuses such a
/// selector (`{}` or `{a=""}`) as it would match every series.
pub fn matches_everything(matchers: &[Matcher]) -> bool {
    matchers.iter().all(|m| m.is_match(""))
}

/// The parsed query, or a `bad_data` error with the parser's message.
pub fn parse(query: &str) -> Result<Expr, QueryError> {
    check_bare_durations(query)?;
    promql_parser::parser::parse(query).map_err(QueryError::BadData)
}

/// The longest duration written as a bare number of seconds that the parser is given: about
/// 3,000 years. promql-parser turns such numbers into a `Duration` with a conversion that
/// panics when the number is out of range (`x[1e30]`, `offset 1e30`; found by the `promql`
/// fuzz target), and a panic would abort the collector; so they are refused before parsing.
const MAX_BARE_SECONDS: f64 = 1e11;

/// Refuses a range, subquery step or offset written as a bare number (seconds) that is not a
/// finite number of seconds within [`MAX_BARE_SECONDS`]. Strings and comments are skipped.
fn check_bare_durations(query: &str) -> Result<(), QueryError> {
    let bytes = query.as_bytes();
    let mut i = 0usize;
    let mut depth = 0usize;
    // Whether the next token is a duration: after `[`, `:` inside brackets, or `offset`.
    let mut expect_duration = false;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' | b'\'' | b'`' => {
                // Skip the string, escapes included.
                i = i.saturating_add(1);
                while let Some(&c) = bytes.get(i) {
                    if c == b'\\' && b != b'`' {
                        i = i.saturating_add(2);
                        continue;
                    }
                    i = i.saturating_add(1);
                    if c == b {
                        break;
                    }
                }
                expect_duration = false;
                continue;
            }
            b'#' => {
                while bytes.get(i).is_some_and(|&c| c != b'\n') {
                    i = i.saturating_add(1);
                }
                continue;
            }
            b'[' => {
                depth = depth.saturating_add(1);
                expect_duration = true;
            }
            b']' => {
                depth = depth.saturating_sub(1);
                expect_duration = false;
            }
            b':' if depth > 0 => expect_duration = true,
            c if c.is_ascii_whitespace() => {}
            c if c.is_ascii_alphanumeric() || matches!(c, b'.' | b'+' | b'-' | b'_') => {
                let start = i;
                while bytes.get(i).is_some_and(|&c| {
                    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'+' | b'-' | b'_')
                }) {
                    i = i.saturating_add(1);
                }
                let mut token = query.get(start..i).unwrap_or_default();
                // `offset`, also run together with the duration's sign (`offset+ 1e999`,
                // `offset-1e999`: found by the fuzz target).
                if let Some((word, rest)) = token.split_at_checked(6)
                    && word.eq_ignore_ascii_case("offset")
                    && (rest.is_empty() || rest.starts_with(['+', '-']))
                {
                    let rest = rest.trim_start_matches(['+', '-']);
                    expect_duration = true;
                    if rest.is_empty() {
                        continue;
                    }
                    token = rest;
                }
                if expect_duration {
                    let number = token
                        .parse::<f64>()
                        .ok()
                        .or_else(|| duration_seconds(token));
                    if let Some(seconds) = number
                        && !(seconds.is_finite() && seconds.abs() <= MAX_BARE_SECONDS)
                    {
                        return Err(QueryError::BadData(format!(
                            "{token:?} is not a duration this collector takes: a bare number of seconds must be finite and at most {MAX_BARE_SECONDS:e}"
                        )));
                    }
                }
                expect_duration = false;
                continue;
            }
            _ => expect_duration = false,
        }
        i = i.saturating_add(1);
    }
    Ok(())
}

/// The most seconds any number in a duration-position token names (`1h30m`, `0x10`, `1e77`,
/// `5555…5+88h`: the tokens run on through signs): each number, decimal with an optional
/// exponent or hexadecimal, times the unit letters after it (none: seconds). `None` without
/// a number.
fn duration_seconds(token: &str) -> Option<f64> {
    let bytes = token.as_bytes();
    let at = |i: usize| bytes.get(i).copied().unwrap_or(0);
    let mut i = 0usize;
    let mut largest: Option<f64> = None;
    while i < bytes.len() {
        let start = i;
        let value = if at(i) == b'0' && matches!(at(i.saturating_add(1)), b'x' | b'X') {
            i = i.saturating_add(2);
            let digits = i;
            while at(i).is_ascii_hexdigit() {
                i = i.saturating_add(1);
            }
            let hex = token.get(digits..i).unwrap_or_default();
            u64::from_str_radix(hex, 16).map_or(f64::INFINITY, |v| v as f64)
        } else if at(i).is_ascii_digit() || at(i) == b'.' {
            while at(i).is_ascii_digit() || at(i) == b'.' {
                i = i.saturating_add(1);
            }
            let signed = matches!(at(i.saturating_add(1)), b'+' | b'-');
            let exponent_digit = at(i.saturating_add(if signed { 2 } else { 1 }));
            if matches!(at(i), b'e' | b'E') && exponent_digit.is_ascii_digit() {
                i = i.saturating_add(if signed { 2 } else { 1 });
                while at(i).is_ascii_digit() {
                    i = i.saturating_add(1);
                }
            }
            token
                .get(start..i)
                .and_then(|n| n.parse::<f64>().ok())
                .unwrap_or(f64::INFINITY)
        } else {
            i = i.saturating_add(1);
            continue;
        };
        let unit_start = i;
        while at(i).is_ascii_alphabetic() {
            i = i.saturating_add(1);
        }
        let scale = match token.get(unit_start..i).unwrap_or_default() {
            "ms" => 0.001,
            "m" => 60.0,
            "h" => 3_600.0,
            "d" => 86_400.0,
            "w" => 604_800.0,
            "y" => 31_536_000.0,
            _ => 1.0,
        };
        let seconds = value * scale;
        largest = Some(largest.map_or(seconds, |l: f64| l.max(seconds)));
    }
    largest
}

/// A selector's matchers with its metric name as a `__name__` matcher.
pub fn selector_matchers(
    selector: &promql_parser::parser::VectorSelector,
) -> Result<Vec<Matcher>, QueryError> {
    if !selector.matchers.or_matchers.is_empty() {
        return Err(QueryError::unsupported("the `or` matcher syntax"));
    }
    let mut matchers = selector.matchers.matchers.clone();
    if let Some(name) = &selector.name
        && !matchers.iter().any(|m| m.name == METRIC_NAME)
    {
        matchers.push(Matcher::new(MatchOp::Equal, METRIC_NAME, name));
    }
    Ok(matchers)
}

/// An in-memory source, for tests and for answers computed from loaded series.
#[derive(Debug, Clone, Default)]
pub struct MemorySource {
    pub series: Vec<Series>,
    /// Window widths (ms) it answers [`Source::windows`] with, as a store keeps rollups;
    /// none: it answers raw only.
    pub window_widths: Vec<i64>,
}

impl Source for MemorySource {
    fn select(
        &self,
        matchers: &[Matcher],
        from: i64,
        to: i64,
        budget: usize,
    ) -> Result<Vec<Series>, QueryError> {
        let mut out = Vec::new();
        let mut total = 0usize;
        for series in &self.series {
            if !matches(&series.labels, matchers) {
                continue;
            }
            let samples: Vec<(i64, f64)> = series
                .samples
                .iter()
                .copied()
                .filter(|&(ts, _)| ts >= from && ts <= to)
                .collect();
            total = total.saturating_add(samples.len());
            if total > budget {
                return Err(QueryError::over_budget(budget));
            }
            out.push(Series {
                labels: Arc::clone(&series.labels),
                samples,
            });
        }
        Ok(out)
    }

    fn windows(
        &self,
        matchers: &[Matcher],
        range: i64,
        grid: Grid,
        budget: usize,
    ) -> Result<Option<Rolled>, QueryError> {
        let Some(width) = grid.coarsest(self.window_widths.iter().copied(), range) else {
            return Ok(None);
        };
        let from = grid.from.saturating_sub(range);
        let selected = self.select(matchers, from, grid.to.saturating_add(width), budget)?;
        let windowed = selected
            .into_iter()
            .map(|series| Windowed {
                windows: rolled::windows_of(&series.samples, width),
                labels: series.labels,
            })
            .collect();
        Ok(Some(Rolled {
            width,
            windowed,
            raw: Vec::new(),
        }))
    }
}

#[cfg(test)]
mod tests;
