//! The evaluator: an expression at one time, over series loaded once per selector.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use promql_parser::label::Matcher;
use promql_parser::parser::{
    AggregateExpr, AtModifier, BinaryExpr, Call, Expr, LabelModifier, MatrixSelector, Offset,
    VectorMatchCardinality, VectorSelector,
};

use super::functions;
use super::rolled::{self, Grid, Windowed};
use super::{Labels, METRIC_NAME, QueryError, Sample, Series, Source, Value, is_stale};

/// Prometheus' default lookback: how far back an instant selector looks for a sample.
pub const LOOKBACK_MS: i64 = 5 * 60 * 1000;
/// The step of a subquery that gives none (Prometheus' default evaluation interval).
pub const DEFAULT_SUBQUERY_STEP_MS: i64 = 60 * 1000;

/// Evaluates one query: at one time, or at each step of a range.
pub struct Evaluator<'a> {
    source: &'a dyn Source,
    /// The query's first and last evaluation times (ms): what `@ start()` and `@ end()` mean.
    start: i64,
    end: i64,
    /// Samples the query may load, and the time it may take.
    budget: usize,
    deadline: Instant,
    /// Each selector's series, loaded for the whole window the query needs (keyed by the
    /// selector's address in the expression, which outlives the evaluation).
    loaded: HashMap<usize, Vec<Series>>,
    /// Calls answered from windows ([`rolled`]), keyed by the call's address: the windows'
    /// width and the series they answer (the others are in `loaded`, raw).
    windowed: HashMap<usize, (i64, Vec<Windowed>)>,
    /// Samples loaded so far.
    used: usize,
}

/// The time span an expression is evaluated over: `[from, to]` (ms).
#[derive(Debug, Clone, Copy)]
struct Span {
    from: i64,
    to: i64,
    /// The times are `from + k·step` (a single time when `from == to`); `None` under a
    /// subquery, whose times the windows path does not follow.
    step: Option<i64>,
}

pub(super) fn ms(duration: &Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn offset_ms(offset: Option<&Offset>) -> i64 {
    match offset {
        None => 0,
        Some(Offset::Pos(d)) => ms(d),
        Some(Offset::Neg(d)) => ms(d).saturating_neg(),
    }
}

fn system_ms(time: &SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => ms(&d),
        Err(e) => ms(&e.duration()).saturating_neg(),
    }
}

impl<'a> Evaluator<'a> {
    /// An evaluator for times in `[start, end]` (ms; equal for an instant query), loading at
    /// most `budget` samples within `timeout`.
    pub fn new(
        source: &'a dyn Source,
        start: i64,
        end: i64,
        budget: usize,
        timeout: Duration,
    ) -> Evaluator<'a> {
        Evaluator {
            source,
            start,
            end,
            budget,
            deadline: Instant::now()
                .checked_add(timeout)
                .unwrap_or_else(Instant::now),
            loaded: HashMap::new(),
            windowed: HashMap::new(),
            used: 0,
        }
    }

    /// The value of `expr` at `time` (ms).
    pub fn instant(&mut self, expr: &Expr, time: i64) -> Result<Value, QueryError> {
        self.load(
            expr,
            Span {
                from: time,
                to: time,
                step: Some(0),
            },
        )?;
        self.eval(expr, time)
    }

    /// The value of `expr` at `start + k·step` up to `end`, as series (a scalar is a series
    /// without labels). Series without any value are left out.
    pub fn range(&mut self, expr: &Expr, step: i64) -> Result<Vec<Series>, QueryError> {
        if step <= 0 {
            return Err(QueryError::BadData(
                "zero or negative query resolution step widths are not accepted".into(),
            ));
        }
        match expr.value_type() {
            promql_parser::parser::value::ValueType::Vector
            | promql_parser::parser::value::ValueType::Scalar => {}
            other => {
                return Err(QueryError::BadData(format!(
                    "invalid expression type {other:?} for range query, must be Scalar or instant Vector"
                )));
            }
        }
        self.load(
            expr,
            Span {
                from: self.start,
                to: self.end,
                step: Some(step),
            },
        )?;
        let mut out: BTreeMap<Arc<Labels>, Vec<(i64, f64)>> = BTreeMap::new();
        let mut time = self.start;
        while time <= self.end {
            match self.eval(expr, time)? {
                Value::Scalar(v) => out
                    .entry(Arc::new(Labels::new()))
                    .or_default()
                    .push((time, v)),
                Value::Vector(samples) => {
                    for sample in samples {
                        out.entry(sample.labels)
                            .or_default()
                            .push((time, sample.value));
                    }
                }
                other => {
                    return Err(QueryError::BadData(format!(
                        "invalid expression type {:?} for range query",
                        other.kind()
                    )));
                }
            }
            time = time.saturating_add(step);
            if time == i64::MAX {
                break;
            }
        }
        Ok(out
            .into_iter()
            .map(|(labels, samples)| Series { labels, samples })
            .collect())
    }

    fn check_time(&self) -> Result<(), QueryError> {
        if Instant::now() > self.deadline {
            return Err(QueryError::Timeout(
                "query timed out in expression evaluation".into(),
            ));
        }
        Ok(())
    }

    /// The time a selector or subquery with `at` is evaluated at, for an outer time `time`.
    fn at_time(&self, at: Option<&AtModifier>, time: i64) -> i64 {
        match at {
            None => time,
            Some(AtModifier::Start) => self.start,
            Some(AtModifier::End) => self.end,
            Some(AtModifier::At(t)) => system_ms(t),
        }
    }

    /// The time a selector or subquery with `at` and `offset` looks back from, at `time`.
    pub(super) fn reference(
        &self,
        at: Option<&AtModifier>,
        offset: Option<&Offset>,
        time: i64,
    ) -> i64 {
        self.at_time(at, time).saturating_sub(offset_ms(offset))
    }

    /// Loads every selector under `expr` for evaluation times in `span`.
    fn load(&mut self, expr: &Expr, span: Span) -> Result<(), QueryError> {
        match expr {
            Expr::VectorSelector(vs) => self.load_selector(vs, span, 0, LOOKBACK_MS),
            Expr::MatrixSelector(m) => self.load_selector(&m.vs, span, ms(&m.range), 0),
            Expr::Subquery(sq) => {
                let offset = offset_ms(sq.offset.as_ref());
                let (from, to) = match &sq.at {
                    Some(at) => {
                        let t = self.at_time(Some(at), span.from);
                        (t, t)
                    }
                    None => (span.from, span.to),
                };
                let inner = Span {
                    from: from.saturating_sub(offset).saturating_sub(ms(&sq.range)),
                    to: to.saturating_sub(offset),
                    step: None,
                };
                self.load(&sq.expr, inner)
            }
            Expr::Aggregate(a) => {
                if let Some(param) = &a.param {
                    self.load(param, span)?;
                }
                self.load(&a.expr, span)
            }
            Expr::Unary(u) => self.load(&u.expr, span),
            Expr::Binary(b) => {
                self.load(&b.lhs, span)?;
                self.load(&b.rhs, span)
            }
            Expr::Paren(p) => self.load(&p.expr, span),
            Expr::Call(call) => {
                if let (Some(step), [arg]) = (span.step, call.args.args.as_slice())
                    && let Expr::MatrixSelector(m) = arg.as_ref()
                    && rolled::answers(call.func.name)
                    && self.load_windows(call, m, span, step)?
                {
                    return Ok(());
                }
                for arg in &call.args.args {
                    self.load(arg, span)?;
                }
                Ok(())
            }
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
            Expr::Extension(_) => Err(QueryError::unsupported("extension expressions")),
        }
    }

    /// Loads the selector of `call` (an `*_over_time` the windows answer) as windows, if the
    /// source keeps windows that tile its ranges; returns whether it did.
    fn load_windows(
        &mut self,
        call: &Call,
        m: &MatrixSelector,
        span: Span,
        step: i64,
    ) -> Result<bool, QueryError> {
        let vs = &m.vs;
        let matchers: Vec<Matcher> = super::selector_matchers(vs)?;
        if super::matches_everything(&matchers) {
            return Ok(false);
        }
        let offset = offset_ms(vs.offset.as_ref());
        let grid = match &vs.at {
            Some(at) => {
                let t = self.at_time(Some(at), span.from).saturating_sub(offset);
                Grid {
                    from: t,
                    to: t,
                    step: 0,
                }
            }
            None => Grid {
                from: span.from.saturating_sub(offset),
                to: span.to.saturating_sub(offset),
                step,
            },
        };
        let budget = self.budget.saturating_sub(self.used);
        let Some(rolled) = self.source.windows(&matchers, ms(&m.range), grid, budget)? else {
            return Ok(false);
        };
        let loaded = rolled
            .windowed
            .iter()
            .map(|w| w.windows.len())
            .chain(rolled.raw.iter().map(|s| s.samples.len()))
            .fold(0usize, usize::saturating_add);
        self.used = self.used.saturating_add(loaded);
        self.loaded
            .insert(std::ptr::from_ref(vs) as usize, rolled.raw);
        self.windowed.insert(
            std::ptr::from_ref(call) as usize,
            (rolled.width, rolled.windowed),
        );
        self.check_time()?;
        Ok(true)
    }

    /// `call` at `time` for a call loaded as windows: the raw series the usual way, the
    /// others from their windows.
    fn call_windowed(&mut self, call: &Call, time: i64) -> Result<Value, QueryError> {
        let Value::Vector(mut out) = functions::call(self, call, time)? else {
            return Err(QueryError::Internal(format!(
                "{} did not give an instant vector",
                call.func.name
            )));
        };
        let Some(Expr::MatrixSelector(m)) = call.args.args.first().map(AsRef::as_ref) else {
            return Err(QueryError::Internal(
                "a windowed call without its range".into(),
            ));
        };
        let reference = self.reference(m.vs.at.as_ref(), m.vs.offset.as_ref(), time);
        let range = ms(&m.range);
        let Some((width, windowed)) = self.windowed.get(&(std::ptr::from_ref(call) as usize))
        else {
            return Ok(Value::Vector(out));
        };
        for series in windowed {
            let Some(partial) = series.range(*width, reference, range) else {
                return Err(QueryError::Internal(format!(
                    "{reference} is off the grid of the {width} ms windows loaded for {}",
                    call.func.name
                )));
            };
            if let Some(value) = rolled::value(call.func.name, &partial) {
                out.push(Sample {
                    labels: drop_name(&series.labels),
                    value,
                    ts: time,
                });
            }
        }
        check_unique(&out)?;
        Ok(Value::Vector(out))
    }

    fn load_selector(
        &mut self,
        vs: &VectorSelector,
        span: Span,
        range: i64,
        lookback: i64,
    ) -> Result<(), QueryError> {
        let matchers: Vec<Matcher> = super::selector_matchers(vs)?;
        if super::matches_everything(&matchers) {
            return Err(QueryError::BadData(
                "vector selector must contain at least one non-empty matcher".into(),
            ));
        }
        let offset = offset_ms(vs.offset.as_ref());
        let (from, to) = match &vs.at {
            Some(at) => {
                let t = self.at_time(Some(at), span.from);
                (t, t)
            }
            None => (span.from, span.to),
        };
        let from = from
            .saturating_sub(offset)
            .saturating_sub(range)
            .saturating_sub(lookback);
        let to = to.saturating_sub(offset);
        let key = std::ptr::from_ref(vs) as usize;
        // A selector under a subquery may be reached for several spans: load the union.
        let (from, to) = match self.loaded.get(&key) {
            Some(_) => return self.extend(key, &matchers, from, to),
            None => (from, to),
        };
        let budget = self.budget.saturating_sub(self.used);
        let series = self.source.select(&matchers, from, to, budget)?;
        self.used = self
            .used
            .saturating_add(series.iter().map(|s| s.samples.len()).sum::<usize>());
        self.loaded.insert(key, series);
        self.check_time()
    }

    /// Loads a selector again over the union of what it had and `[from, to]`.
    fn extend(
        &mut self,
        key: usize,
        matchers: &[Matcher],
        from: i64,
        to: i64,
    ) -> Result<(), QueryError> {
        let had = self.loaded.get(&key).map_or((from, to), |series| {
            let first = series
                .iter()
                .filter_map(|s| s.samples.first())
                .map(|s| s.0)
                .min();
            let last = series
                .iter()
                .filter_map(|s| s.samples.last())
                .map(|s| s.0)
                .max();
            (first.unwrap_or(from).min(from), last.unwrap_or(to).max(to))
        });
        let budget = self.budget.saturating_sub(self.used);
        let series = self.source.select(matchers, had.0, had.1, budget)?;
        self.loaded.insert(key, series);
        Ok(())
    }

    fn series_of(&self, vs: &VectorSelector) -> &[Series] {
        self.loaded
            .get(&(std::ptr::from_ref(vs) as usize))
            .map_or(&[], Vec::as_slice)
    }

    pub(super) fn eval(&mut self, expr: &Expr, time: i64) -> Result<Value, QueryError> {
        match expr {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Value::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, time),
            Expr::Unary(u) => match self.eval(&u.expr, time)? {
                Value::Scalar(v) => Ok(Value::Scalar(-v)),
                Value::Vector(samples) => Ok(Value::Vector(
                    samples
                        .into_iter()
                        .map(|s| Sample {
                            labels: drop_name(&s.labels),
                            value: -s.value,
                            ts: time,
                        })
                        .collect(),
                )),
                other => Err(QueryError::BadData(format!(
                    "unary minus on a {}",
                    other.kind()
                ))),
            },
            Expr::VectorSelector(vs) => Ok(Value::Vector(self.instant_selector(vs, time))),
            Expr::MatrixSelector(m) => {
                let vs = &m.vs;
                let reference = self
                    .at_time(vs.at.as_ref(), time)
                    .saturating_sub(offset_ms(vs.offset.as_ref()));
                let from = reference.saturating_sub(ms(&m.range));
                Ok(Value::Matrix(
                    self.series_of(vs)
                        .iter()
                        .filter_map(|series| {
                            let samples = window(&series.samples, from, reference);
                            (!samples.is_empty()).then(|| Series {
                                labels: Arc::clone(&series.labels),
                                samples,
                            })
                        })
                        .collect(),
                ))
            }
            Expr::Subquery(sq) => {
                let step = sq.step.as_ref().map_or(DEFAULT_SUBQUERY_STEP_MS, ms);
                if step <= 0 {
                    return Err(QueryError::BadData(
                        "a subquery step must be positive".into(),
                    ));
                }
                let reference = self
                    .at_time(sq.at.as_ref(), time)
                    .saturating_sub(offset_ms(sq.offset.as_ref()));
                let from = reference.saturating_sub(ms(&sq.range));
                // The first multiple of the step at or after the range's start.
                let mut t = from.div_euclid(step).saturating_mul(step);
                if t < from {
                    t = t.saturating_add(step);
                }
                let mut out: BTreeMap<Arc<Labels>, Vec<(i64, f64)>> = BTreeMap::new();
                while t <= reference {
                    self.check_time()?;
                    match self.eval(&sq.expr, t)? {
                        Value::Vector(samples) => {
                            for s in samples {
                                out.entry(s.labels).or_default().push((t, s.value));
                            }
                        }
                        Value::Scalar(v) => {
                            out.entry(Arc::new(Labels::new())).or_default().push((t, v));
                        }
                        other => {
                            return Err(QueryError::BadData(format!(
                                "subquery of a {}",
                                other.kind()
                            )));
                        }
                    }
                    t = t.saturating_add(step);
                }
                Ok(Value::Matrix(
                    out.into_iter()
                        .map(|(labels, samples)| Series { labels, samples })
                        .collect(),
                ))
            }
            Expr::Call(call)
                if self
                    .windowed
                    .contains_key(&(std::ptr::from_ref(call) as usize)) =>
            {
                self.call_windowed(call, time)
            }
            Expr::Call(call) => functions::call(self, call, time),
            Expr::Aggregate(a) => self.aggregate(a, time),
            Expr::Binary(b) => self.binary(b, time),
            Expr::Extension(_) => Err(QueryError::unsupported("extension expressions")),
        }
    }

    /// Each series' newest sample within the lookback before the selector's time.
    fn instant_selector(&self, vs: &VectorSelector, time: i64) -> Vec<Sample> {
        let reference = self
            .at_time(vs.at.as_ref(), time)
            .saturating_sub(offset_ms(vs.offset.as_ref()));
        let oldest = reference.saturating_sub(LOOKBACK_MS);
        self.series_of(vs)
            .iter()
            .filter_map(|series| {
                let end = series.samples.partition_point(|&(ts, _)| ts <= reference);
                let &(ts, value) = series.samples.get(end.checked_sub(1)?)?;
                (ts >= oldest && !is_stale(value)).then(|| Sample {
                    labels: Arc::clone(&series.labels),
                    value,
                    ts,
                })
            })
            .collect()
    }

    fn aggregate(&mut self, a: &AggregateExpr, time: i64) -> Result<Value, QueryError> {
        let op = a.op.to_string().to_lowercase();
        let param = match &a.param {
            Some(p) => Some(self.eval(p, time)?),
            None => None,
        };
        let Value::Vector(samples) = self.eval(&a.expr, time)? else {
            return Err(QueryError::BadData(format!("{op} takes an instant vector")));
        };
        functions::aggregate(&op, param.as_ref(), samples, a.modifier.as_ref(), time)
    }

    fn binary(&mut self, b: &BinaryExpr, time: i64) -> Result<Value, QueryError> {
        let op = b.op.to_string().to_lowercase();
        let lhs = self.eval(&b.lhs, time)?;
        let rhs = self.eval(&b.rhs, time)?;
        let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
        let comparison = matches!(op.as_str(), "==" | "!=" | ">" | "<" | ">=" | "<=");
        match (lhs, rhs) {
            (Value::Scalar(l), Value::Scalar(r)) => {
                let (value, keep) = scalar_op(&op, l, r)?;
                if comparison {
                    // The parser only lets `bool` comparisons between scalars through.
                    return Ok(Value::Scalar(if keep { 1.0 } else { 0.0 }));
                }
                Ok(Value::Scalar(value))
            }
            (Value::Vector(v), Value::Scalar(s)) => {
                vector_scalar(&op, v, s, false, return_bool, comparison, time)
            }
            (Value::Scalar(s), Value::Vector(v)) => {
                vector_scalar(&op, v, s, true, return_bool, comparison, time)
            }
            (Value::Vector(l), Value::Vector(r)) => vector_vector(&op, l, r, b, return_bool, time),
            (l, r) => Err(QueryError::BadData(format!(
                "binary operator {op} between {} and {}",
                l.kind(),
                r.kind()
            ))),
        }
    }
}

/// The samples of `samples` in `[from, to]`, stale markers left out.
pub(super) fn window(samples: &[(i64, f64)], from: i64, to: i64) -> Vec<(i64, f64)> {
    let start = samples.partition_point(|&(ts, _)| ts < from);
    let end = samples.partition_point(|&(ts, _)| ts <= to);
    samples
        .get(start..end)
        .unwrap_or_default()
        .iter()
        .copied()
        .filter(|&(_, v)| !is_stale(v))
        .collect()
}

/// `labels` without `__name__`.
pub(super) fn drop_name(labels: &Arc<Labels>) -> Arc<Labels> {
    if labels.contains_key(METRIC_NAME) {
        let mut out = (**labels).clone();
        out.remove(METRIC_NAME);
        Arc::new(out)
    } else {
        Arc::clone(labels)
    }
}

/// Whether `op`'s result loses the metric name: arithmetic does, comparisons and (as in
/// Prometheus 2) `atan2` do not.
fn drops_name(op: &str) -> bool {
    matches!(op, "+" | "-" | "*" | "/" | "%" | "^")
}

/// `op` on two numbers: the value, and for comparisons whether it holds.
fn scalar_op(op: &str, l: f64, r: f64) -> Result<(f64, bool), QueryError> {
    Ok(match op {
        "+" => (l + r, true),
        "-" => (l - r, true),
        "*" => (l * r, true),
        "/" => (l / r, true),
        "%" => (l % r, true),
        "^" => (l.powf(r), true),
        "atan2" => (l.atan2(r), true),
        "==" => (l, l == r),
        "!=" => (l, l != r),
        ">" => (l, l > r),
        "<" => (l, l < r),
        ">=" => (l, l >= r),
        "<=" => (l, l <= r),
        other => return Err(QueryError::unsupported(format!("the operator {other}"))),
    })
}

fn vector_scalar(
    op: &str,
    vector: Vec<Sample>,
    scalar: f64,
    scalar_left: bool,
    return_bool: bool,
    comparison: bool,
    time: i64,
) -> Result<Value, QueryError> {
    if matches!(op, "and" | "or" | "unless") {
        return Err(QueryError::BadData(format!(
            "set operator {op} not allowed in binary scalar expression"
        )));
    }
    let mut out = Vec::with_capacity(vector.len());
    for sample in vector {
        let (l, r) = if scalar_left {
            (scalar, sample.value)
        } else {
            (sample.value, scalar)
        };
        let (mut value, keep) = scalar_op(op, l, r)?;
        // A comparison keeps the vector's value, whichever side it is on.
        if comparison && scalar_left {
            value = r;
        }
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
        } else if !keep {
            continue;
        }
        let labels = if drops_name(op) || return_bool {
            drop_name(&sample.labels)
        } else {
            sample.labels
        };
        out.push(Sample {
            labels,
            value,
            ts: time,
        });
    }
    Ok(Value::Vector(out))
}

/// The matching key of `labels` under `on`/`ignoring` (`__name__` never counts for
/// `ignoring`).
fn signature(labels: &Labels, matching: Option<&LabelModifier>) -> Vec<(String, String)> {
    match matching {
        Some(LabelModifier::Include(on)) => on
            .labels
            .iter()
            .filter_map(|name| labels.get(name).map(|v| (name.clone(), v.clone())))
            .collect(),
        Some(LabelModifier::Exclude(ignoring)) => labels
            .iter()
            .filter(|(k, _)| *k != METRIC_NAME && !ignoring.labels.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        None => labels
            .iter()
            .filter(|(k, _)| *k != METRIC_NAME)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn vector_vector(
    op: &str,
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
    b: &BinaryExpr,
    return_bool: bool,
    time: i64,
) -> Result<Value, QueryError> {
    let matching = b.modifier.as_ref().and_then(|m| m.matching.as_ref());
    let card = b
        .modifier
        .as_ref()
        .map_or(VectorMatchCardinality::OneToOne, |m| m.card.clone());
    match op {
        "and" => {
            let right: HashSet<_> = rhs.iter().map(|s| signature(&s.labels, matching)).collect();
            return Ok(Value::Vector(
                lhs.into_iter()
                    .filter(|s| right.contains(&signature(&s.labels, matching)))
                    .collect(),
            ));
        }
        "or" => {
            let left: HashSet<_> = lhs.iter().map(|s| signature(&s.labels, matching)).collect();
            let mut out = lhs;
            out.extend(
                rhs.into_iter()
                    .filter(|s| !left.contains(&signature(&s.labels, matching))),
            );
            return Ok(Value::Vector(out));
        }
        "unless" => {
            let right: HashSet<_> = rhs.iter().map(|s| signature(&s.labels, matching)).collect();
            return Ok(Value::Vector(
                lhs.into_iter()
                    .filter(|s| !right.contains(&signature(&s.labels, matching)))
                    .collect(),
            ));
        }
        _ => {}
    }
    if b.modifier
        .as_ref()
        .is_some_and(|m| m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some())
    {
        return Err(QueryError::unsupported("fill modifiers"));
    }
    // The "one" side goes right, as in Prometheus.
    let one_to_many = matches!(card, VectorMatchCardinality::OneToMany(_));
    let (many, one) = if one_to_many { (rhs, lhs) } else { (lhs, rhs) };
    let include: Vec<String> = match &card {
        VectorMatchCardinality::ManyToOne(labels) | VectorMatchCardinality::OneToMany(labels) => {
            labels.labels.clone()
        }
        _ => Vec::new(),
    };
    let mut right: HashMap<Vec<(String, String)>, &Sample> = HashMap::new();
    for sample in &one {
        let sig = signature(&sample.labels, matching);
        if right.insert(sig, sample).is_some() {
            let side = if one_to_many { "left" } else { "right" };
            return Err(QueryError::Execution(format!(
                "found duplicate series for the match group on the {side} hand-side of the operation; many-to-many matching not allowed: matching labels must be unique on one side"
            )));
        }
    }
    let drop_metric = drops_name(op) || return_bool;
    let mut matched: HashMap<Vec<(String, String)>, HashSet<Arc<Labels>>> = HashMap::new();
    let mut out = Vec::new();
    for sample in &many {
        let sig = signature(&sample.labels, matching);
        let Some(other) = right.get(&sig) else {
            continue;
        };
        let (l, r) = if one_to_many {
            (other.value, sample.value)
        } else {
            (sample.value, other.value)
        };
        let (mut value, keep) = scalar_op(op, l, r)?;
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
        } else if !keep {
            continue;
        }
        let mut labels = (*sample.labels).clone();
        if drop_metric {
            labels.remove(METRIC_NAME);
        }
        if matches!(card, VectorMatchCardinality::OneToOne) {
            match matching {
                Some(LabelModifier::Include(on)) => labels.retain(|k, _| on.labels.contains(k)),
                Some(LabelModifier::Exclude(ignoring)) => {
                    labels.retain(|k, _| !ignoring.labels.contains(k));
                }
                None => {}
            }
        }
        for name in &include {
            match other.labels.get(name) {
                Some(v) if !v.is_empty() => {
                    labels.insert(name.clone(), v.clone());
                }
                _ => {
                    labels.remove(name);
                }
            }
        }
        let labels = Arc::new(labels);
        let seen = matched.entry(sig).or_default();
        if matches!(card, VectorMatchCardinality::OneToOne) {
            if !seen.is_empty() {
                return Err(QueryError::Execution(
                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into(),
                ));
            }
        } else if seen.contains(&labels) {
            return Err(QueryError::Execution(
                "multiple matches for labels: grouping labels must ensure unique matches".into(),
            ));
        }
        seen.insert(Arc::clone(&labels));
        out.push(Sample {
            labels,
            value,
            ts: time,
        });
    }
    check_unique(&out)?;
    Ok(Value::Vector(out))
}

/// Prometheus refuses a vector in which two elements have the same labels.
pub(super) fn check_unique(samples: &[Sample]) -> Result<(), QueryError> {
    let mut seen = HashSet::with_capacity(samples.len());
    for sample in samples {
        if !seen.insert(&sample.labels) {
            return Err(QueryError::Execution(
                "vector cannot contain metrics with the same labelset".into(),
            ));
        }
    }
    Ok(())
}
