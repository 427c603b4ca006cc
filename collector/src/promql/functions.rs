//! PromQL's functions and aggregations, as Prometheus 2 computes them.

use std::collections::BTreeMap;
use std::sync::Arc;

use promql_parser::label::MatchOp;
use promql_parser::parser::{Call, Expr, LabelModifier};

use super::eval::{Evaluator, check_unique, drop_name, ms};
use super::{Labels, METRIC_NAME, QueryError, Sample, Series, Value};

/// Evaluates a function call at `time`.
pub(super) fn call(ev: &mut Evaluator<'_>, call: &Call, time: i64) -> Result<Value, QueryError> {
    let name = call.func.name;
    let args = &call.args.args;
    let arg = |index: usize| -> Result<&Expr, QueryError> {
        args.get(index)
            .map(|a| &**a)
            .ok_or_else(|| QueryError::BadData(format!("{name}: missing argument {index}")))
    };
    match name {
        "time" => Ok(Value::Scalar(time as f64 / 1000.0)),
        "pi" => Ok(Value::Scalar(std::f64::consts::PI)),
        "vector" => {
            let value = scalar_arg(ev, arg(0)?, time)?;
            Ok(Value::Vector(vec![Sample {
                labels: Arc::new(Labels::new()),
                value,
                ts: time,
            }]))
        }
        "scalar" => {
            let v = vector_arg(ev, arg(0)?, time)?;
            Ok(Value::Scalar(match v.as_slice() {
                [only] => only.value,
                _ => f64::NAN,
            }))
        }
        "abs" | "ceil" | "floor" | "sqrt" | "exp" | "ln" | "log2" | "log10" | "sgn" | "sin"
        | "cos" | "tan" | "asin" | "acos" | "atan" | "sinh" | "cosh" | "tanh" | "asinh"
        | "acosh" | "atanh" | "deg" | "rad" => {
            let f: fn(f64) -> f64 = match name {
                "abs" => f64::abs,
                "ceil" => f64::ceil,
                "floor" => f64::floor,
                "sqrt" => f64::sqrt,
                "exp" => f64::exp,
                "ln" => f64::ln,
                "log2" => f64::log2,
                "log10" => f64::log10,
                "sgn" => |v: f64| {
                    if v > 0.0 {
                        1.0
                    } else if v < 0.0 {
                        -1.0
                    } else {
                        v
                    }
                },
                "sin" => f64::sin,
                "cos" => f64::cos,
                "tan" => f64::tan,
                "asin" => f64::asin,
                "acos" => f64::acos,
                "atan" => f64::atan,
                "sinh" => f64::sinh,
                "cosh" => f64::cosh,
                "tanh" => f64::tanh,
                "asinh" => f64::asinh,
                "acosh" => f64::acosh,
                "atanh" => f64::atanh,
                "deg" => f64::to_degrees,
                _ => f64::to_radians,
            };
            let v = vector_arg(ev, arg(0)?, time)?;
            map_values(v, time, f)
        }
        "round" => {
            let v = vector_arg(ev, arg(0)?, time)?;
            let to_nearest = match args.get(1) {
                Some(a) => scalar_arg(ev, a, time)?,
                None => 1.0,
            };
            let inverse = 1.0 / to_nearest;
            map_values(v, time, |x| (x * inverse + 0.5).floor() / inverse)
        }
        "clamp" => {
            let v = vector_arg(ev, arg(0)?, time)?;
            let (min, max) = (
                scalar_arg(ev, arg(1)?, time)?,
                scalar_arg(ev, arg(2)?, time)?,
            );
            if max < min {
                return Ok(Value::Vector(Vec::new()));
            }
            map_values(v, time, |x| x.max(min).min(max))
        }
        "clamp_min" => {
            let v = vector_arg(ev, arg(0)?, time)?;
            let min = scalar_arg(ev, arg(1)?, time)?;
            map_values(v, time, |x| x.max(min))
        }
        "clamp_max" => {
            let v = vector_arg(ev, arg(0)?, time)?;
            let max = scalar_arg(ev, arg(1)?, time)?;
            map_values(v, time, |x| x.min(max))
        }
        "timestamp" => {
            let v = vector_arg(ev, arg(0)?, time)?;
            let out: Vec<Sample> = v
                .into_iter()
                .map(|s| Sample {
                    labels: drop_name(&s.labels),
                    value: s.ts as f64 / 1000.0,
                    ts: time,
                })
                .collect();
            check_unique(&out)?;
            Ok(Value::Vector(out))
        }
        "sort" | "sort_desc" => {
            let mut v = vector_arg(ev, arg(0)?, time)?;
            let descending = name == "sort_desc";
            v.sort_by(|a, b| {
                // NaN sorts last either way, as in Prometheus.
                match (a.value.is_nan(), b.value.is_nan()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ if descending => b.value.total_cmp(&a.value),
                    _ => a.value.total_cmp(&b.value),
                }
            });
            Ok(Value::Vector(v))
        }
        "absent" => {
            let v = vector_arg(ev, arg(0)?, time)?;
            if !v.is_empty() {
                return Ok(Value::Vector(Vec::new()));
            }
            Ok(Value::Vector(vec![Sample {
                labels: Arc::new(absent_labels(arg(0)?)),
                value: 1.0,
                ts: time,
            }]))
        }
        "absent_over_time" => {
            let m = matrix_arg(ev, arg(0)?, time)?;
            if m.iter().any(|s| !s.samples.is_empty()) {
                return Ok(Value::Vector(Vec::new()));
            }
            Ok(Value::Vector(vec![Sample {
                labels: Arc::new(absent_labels(arg(0)?)),
                value: 1.0,
                ts: time,
            }]))
        }
        "label_replace" => {
            let v = vector_arg(ev, arg(0)?, time)?;
            let dst = string_arg(arg(1)?)?;
            let replacement = string_arg(arg(2)?)?;
            let src = string_arg(arg(3)?)?;
            let pattern = string_arg(arg(4)?)?;
            let regex = regex::Regex::new(&format!("^(?s:{pattern})$")).map_err(|e| {
                QueryError::BadData(format!(
                    "invalid regular expression in label_replace(): {e}"
                ))
            })?;
            if !is_label_name(&dst) {
                return Err(QueryError::BadData(format!(
                    "invalid destination label name in label_replace(): {dst}"
                )));
            }
            let mut out = Vec::with_capacity(v.len());
            for s in v {
                let value = s.labels.get(&src).map_or("", String::as_str);
                let labels = match regex.captures(value) {
                    Some(captures) => {
                        let mut expanded = String::new();
                        captures.expand(&replacement, &mut expanded);
                        let mut labels = (*s.labels).clone();
                        if expanded.is_empty() {
                            labels.remove(&dst);
                        } else {
                            labels.insert(dst.clone(), expanded);
                        }
                        Arc::new(labels)
                    }
                    None => s.labels,
                };
                out.push(Sample {
                    labels,
                    value: s.value,
                    ts: time,
                });
            }
            check_unique(&out)?;
            Ok(Value::Vector(out))
        }
        "label_join" => {
            let v = vector_arg(ev, arg(0)?, time)?;
            let dst = string_arg(arg(1)?)?;
            let separator = string_arg(arg(2)?)?;
            let mut sources = Vec::new();
            for a in args.iter().skip(3) {
                sources.push(string_arg(a)?);
            }
            if !is_label_name(&dst) {
                return Err(QueryError::BadData(format!(
                    "invalid destination label name in label_join(): {dst}"
                )));
            }
            let mut out = Vec::with_capacity(v.len());
            for s in v {
                let joined: Vec<&str> = sources
                    .iter()
                    .map(|src| s.labels.get(src).map_or("", String::as_str))
                    .collect();
                let joined = joined.join(&separator);
                let mut labels = (*s.labels).clone();
                if joined.is_empty() {
                    labels.remove(&dst);
                } else {
                    labels.insert(dst.clone(), joined);
                }
                out.push(Sample {
                    labels: Arc::new(labels),
                    value: s.value,
                    ts: time,
                });
            }
            check_unique(&out)?;
            Ok(Value::Vector(out))
        }
        "histogram_quantile" => {
            let q = scalar_arg(ev, arg(0)?, time)?;
            let v = vector_arg(ev, arg(1)?, time)?;
            histogram_quantile(q, v, time)
        }
        "predict_linear" => {
            let m = matrix_arg(ev, arg(0)?, time)?;
            let seconds = scalar_arg(ev, arg(1)?, time)?;
            over_time(m, time, |samples| {
                if samples.len() < 2 {
                    return None;
                }
                let (slope, intercept) = linear_regression(samples, time);
                Some(slope * seconds + intercept)
            })
        }
        "quantile_over_time" => {
            let q = scalar_arg(ev, arg(0)?, time)?;
            let m = matrix_arg(ev, arg(1)?, time)?;
            over_time(m, time, |samples| {
                let mut values: Vec<f64> = samples.iter().map(|s| s.1).collect();
                Some(quantile(q, &mut values))
            })
        }
        "rate" | "increase" | "delta" => {
            let expr = arg(0)?;
            let range = range_of(expr)?;
            let m = matrix_arg(ev, expr, time)?;
            let reference = reference_time(ev, expr, time);
            let is_counter = name != "delta";
            let is_rate = name == "rate";
            over_time(m, time, |samples| {
                extrapolated_rate(samples, reference, range, is_counter, is_rate)
            })
        }
        "irate" | "idelta" => {
            let m = matrix_arg(ev, arg(0)?, time)?;
            let is_rate = name == "irate";
            over_time(m, time, |samples| {
                let [.., (t0, v0), (t1, v1)] = samples else {
                    return None;
                };
                let mut value = if is_rate && v1 < v0 { *v1 } else { v1 - v0 };
                let interval = t1.saturating_sub(*t0);
                if interval == 0 {
                    return None;
                }
                if is_rate {
                    value /= interval as f64 / 1000.0;
                }
                Some(value)
            })
        }
        "deriv" => {
            let m = matrix_arg(ev, arg(0)?, time)?;
            over_time(m, time, |samples| {
                let first = samples.first()?.0;
                if samples.len() < 2 {
                    return None;
                }
                Some(linear_regression(samples, first).0)
            })
        }
        "resets" | "changes" => {
            let m = matrix_arg(ev, arg(0)?, time)?;
            let resets = name == "resets";
            over_time(m, time, |samples| {
                let count = samples
                    .windows(2)
                    .filter(|w| match w {
                        [(_, a), (_, b)] if resets => b < a,
                        [(_, a), (_, b)] => !(a == b || (a.is_nan() && b.is_nan())),
                        _ => false,
                    })
                    .count();
                Some(count as f64)
            })
        }
        "avg_over_time" | "sum_over_time" | "count_over_time" | "min_over_time"
        | "max_over_time" | "last_over_time" | "present_over_time" | "stddev_over_time"
        | "stdvar_over_time" => {
            let m = matrix_arg(ev, arg(0)?, time)?;
            let keep_name = name == "last_over_time";
            let values = move |samples: &[(i64, f64)]| -> Option<f64> {
                let values = samples.iter().map(|s| s.1);
                Some(match name {
                    "avg_over_time" => mean(values),
                    "sum_over_time" => kahan_sum(values),
                    "count_over_time" => samples.len() as f64,
                    "min_over_time" => {
                        values.fold(f64::NAN, |m, v| if v < m || m.is_nan() { v } else { m })
                    }
                    "max_over_time" => {
                        values.fold(f64::NAN, |m, v| if v > m || m.is_nan() { v } else { m })
                    }
                    "last_over_time" => samples.last()?.1,
                    "present_over_time" => 1.0,
                    "stddev_over_time" => variance(values).sqrt(),
                    _ => variance(values),
                })
            };
            if keep_name {
                let out: Vec<Sample> = m
                    .into_iter()
                    .filter_map(|s| {
                        let value = values(&s.samples)?;
                        Some(Sample {
                            labels: s.labels,
                            value,
                            ts: time,
                        })
                    })
                    .collect();
                return Ok(Value::Vector(out));
            }
            over_time(m, time, values)
        }
        "days_in_month" | "day_of_month" | "day_of_week" | "day_of_year" | "hour" | "minute"
        | "month" | "year" => {
            let v = match args.first() {
                Some(a) => vector_arg(ev, a, time)?,
                None => vec![Sample {
                    labels: Arc::new(Labels::new()),
                    value: time as f64 / 1000.0,
                    ts: time,
                }],
            };
            map_values(v, time, |seconds| date_part(name, seconds))
        }
        other => Err(QueryError::unsupported(format!("the function {other}()"))),
    }
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn date_part(part: &str, seconds: f64) -> f64 {
    use chrono::{Datelike, Timelike};
    if !seconds.is_finite() {
        return f64::NAN;
    }
    let Some(t) = chrono::DateTime::from_timestamp(seconds.floor() as i64, 0) else {
        return f64::NAN;
    };
    f64::from(match part {
        "day_of_month" => t.day(),
        "day_of_week" => t.weekday().num_days_from_sunday(),
        "day_of_year" => t.ordinal(),
        "hour" => t.hour(),
        "minute" => t.minute(),
        "month" => t.month(),
        "year" => return f64::from(t.year()),
        _ => {
            let (y, m) = (t.year(), t.month());
            let next = if m == 12 {
                chrono::NaiveDate::from_ymd_opt(y.saturating_add(1), 1, 1)
            } else {
                chrono::NaiveDate::from_ymd_opt(y, m.saturating_add(1), 1)
            };
            match (next, chrono::NaiveDate::from_ymd_opt(y, m, 1)) {
                (Some(n), Some(f)) => {
                    u32::try_from(n.signed_duration_since(f).num_days()).unwrap_or(0)
                }
                _ => return f64::NAN,
            }
        }
    })
}

/// The labels `absent()` gives: the selector's equality matchers (not the name).
fn absent_labels(expr: &Expr) -> Labels {
    let selector = match expr {
        Expr::VectorSelector(vs) => Some(vs),
        Expr::MatrixSelector(m) => Some(&m.vs),
        _ => None,
    };
    let mut labels = Labels::new();
    let mut repeated = Vec::new();
    if let Some(vs) = selector {
        for m in &vs.matchers.matchers {
            if m.name == METRIC_NAME || !matches!(m.op, MatchOp::Equal) {
                continue;
            }
            if labels.insert(m.name.clone(), m.value.clone()).is_some() {
                repeated.push(m.name.clone());
            }
        }
    }
    // A label given twice has no single value to report.
    for name in repeated {
        labels.remove(&name);
    }
    labels
}

/// The time a range argument's window ends at, for `time`: moved by its `@` and `offset`.
fn reference_time(ev: &Evaluator<'_>, expr: &Expr, time: i64) -> i64 {
    match expr {
        Expr::MatrixSelector(m) => ev.reference(m.vs.at.as_ref(), m.vs.offset.as_ref(), time),
        Expr::Subquery(sq) => ev.reference(sq.at.as_ref(), sq.offset.as_ref(), time),
        Expr::Paren(p) => reference_time(ev, &p.expr, time),
        _ => time,
    }
}

/// A range argument's length (ms).
fn range_of(expr: &Expr) -> Result<i64, QueryError> {
    match expr {
        Expr::MatrixSelector(m) => Ok(ms(&m.range)),
        Expr::Subquery(sq) => Ok(ms(&sq.range)),
        Expr::Paren(p) => range_of(&p.expr),
        _ => Err(QueryError::BadData("expected a range vector".into())),
    }
}

fn scalar_arg(ev: &mut Evaluator<'_>, expr: &Expr, time: i64) -> Result<f64, QueryError> {
    match ev.eval(expr, time)? {
        Value::Scalar(v) => Ok(v),
        other => Err(QueryError::BadData(format!(
            "expected a scalar, got a {}",
            other.kind()
        ))),
    }
}

fn vector_arg(ev: &mut Evaluator<'_>, expr: &Expr, time: i64) -> Result<Vec<Sample>, QueryError> {
    match ev.eval(expr, time)? {
        Value::Vector(v) => Ok(v),
        other => Err(QueryError::BadData(format!(
            "expected an instant vector, got a {}",
            other.kind()
        ))),
    }
}

fn matrix_arg(ev: &mut Evaluator<'_>, expr: &Expr, time: i64) -> Result<Vec<Series>, QueryError> {
    match ev.eval(expr, time)? {
        Value::Matrix(m) => Ok(m),
        other => Err(QueryError::BadData(format!(
            "expected a range vector, got a {}",
            other.kind()
        ))),
    }
}

fn string_arg(expr: &Expr) -> Result<String, QueryError> {
    match expr {
        Expr::StringLiteral(s) => Ok(s.val.clone()),
        Expr::Paren(p) => string_arg(&p.expr),
        _ => Err(QueryError::BadData("expected a string".into())),
    }
}

/// `f` on every value, the metric name dropped.
fn map_values(v: Vec<Sample>, time: i64, f: impl Fn(f64) -> f64) -> Result<Value, QueryError> {
    let out: Vec<Sample> = v
        .into_iter()
        .map(|s| Sample {
            labels: drop_name(&s.labels),
            value: f(s.value),
            ts: time,
        })
        .collect();
    check_unique(&out)?;
    Ok(Value::Vector(out))
}

/// `f` over each series' samples (a series for which it has no value is left out), the
/// metric name dropped.
fn over_time(
    m: Vec<Series>,
    time: i64,
    f: impl Fn(&[(i64, f64)]) -> Option<f64>,
) -> Result<Value, QueryError> {
    let out: Vec<Sample> = m
        .into_iter()
        .filter(|s| !s.samples.is_empty())
        .filter_map(|s| {
            let value = f(&s.samples)?;
            Some(Sample {
                labels: drop_name(&s.labels),
                value,
                ts: time,
            })
        })
        .collect();
    check_unique(&out)?;
    Ok(Value::Vector(out))
}

/// Prometheus' `extrapolatedRate`: the change over the window, counter resets accounted for,
/// extrapolated towards the window's edges (`reference` is its end, `range` its length).
fn extrapolated_rate(
    samples: &[(i64, f64)],
    reference: i64,
    range: i64,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    let (&(first_t, first_v), &(last_t, last_v)) = (samples.first()?, samples.last()?);
    if samples.len() < 2 {
        return None;
    }
    let range_start = reference.saturating_sub(range);
    let mut result = last_v - first_v;
    if is_counter {
        let mut last = 0.0;
        for &(_, v) in samples {
            if v < last {
                result += last;
            }
            last = v;
        }
    }
    let mut duration_to_start = first_t.saturating_sub(range_start) as f64 / 1000.0;
    let duration_to_end = reference.saturating_sub(last_t) as f64 / 1000.0;
    let sampled = last_t.saturating_sub(first_t) as f64 / 1000.0;
    let average = sampled / samples.len().saturating_sub(1) as f64;
    if is_counter && result > 0.0 && first_v >= 0.0 {
        let to_zero = sampled * (first_v / result);
        if to_zero < duration_to_start {
            duration_to_start = to_zero;
        }
    }
    let threshold = average * 1.1;
    let mut interval = sampled;
    interval += if duration_to_start < threshold {
        duration_to_start
    } else {
        average / 2.0
    };
    interval += if duration_to_end < threshold {
        duration_to_end
    } else {
        average / 2.0
    };
    result *= interval / sampled;
    if is_rate {
        result /= range as f64 / 1000.0;
    }
    Some(result)
}

/// Least squares over `samples`, x in seconds from `intercept_time`: (slope, intercept).
fn linear_regression(samples: &[(i64, f64)], intercept_time: i64) -> (f64, f64) {
    let first = samples.first().map_or(0.0, |s| s.1);
    if samples.iter().all(|s| s.1 == first) {
        if first.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, first);
    }
    let (mut n, mut sum_x, mut sum_y, mut sum_xy, mut sum_x2) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(t, v) in samples {
        let x = t.saturating_sub(intercept_time) as f64 / 1000.0;
        n += 1.0;
        sum_x += x;
        sum_y += v;
        sum_xy += x * v;
        sum_x2 += x * x;
    }
    let cov_xy = sum_xy - sum_x * sum_y / n;
    let var_x = sum_x2 - sum_x * sum_x / n;
    let slope = cov_xy / var_x;
    let intercept = sum_y / n - slope * sum_x / n;
    (slope, intercept)
}

/// Kahan-compensated sum, as Prometheus sums over time.
fn kahan_sum(values: impl Iterator<Item = f64>) -> f64 {
    let (mut sum, mut c) = (0.0f64, 0.0f64);
    for v in values {
        (sum, c) = kahan_inc(v, sum, c);
    }
    if sum.is_infinite() { sum } else { sum + c }
}

fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// Prometheus' incremental mean over time.
fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (mut mean, mut count, mut c) = (0.0f64, 0.0f64, 0.0f64);
    for v in values {
        count += 1.0;
        if mean.is_infinite() {
            if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                continue;
            }
            if !v.is_infinite() && !v.is_nan() {
                continue;
            }
        }
        (mean, c) = kahan_inc(v / count - mean / count, mean, c);
    }
    if mean.is_infinite() { mean } else { mean + c }
}

/// Population variance (Welford, compensated), as `stdvar_over_time`.
fn variance(values: impl Iterator<Item = f64>) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for v in values {
        count += 1.0;
        let delta = v - (mean + c_mean);
        (mean, c_mean) = kahan_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_inc(delta * (v - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

/// Prometheus' `quantile`: interpolated between the two nearest ranks.
fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    let at = |i: f64| values.get(i as usize).copied().unwrap_or(f64::NAN);
    at(lower) * (1.0 - weight) + at(upper) * weight
}

/// `histogram_quantile` over classic buckets (`le` labels).
fn histogram_quantile(q: f64, v: Vec<Sample>, time: i64) -> Result<Value, QueryError> {
    let mut groups: BTreeMap<Arc<Labels>, Vec<(f64, f64)>> = BTreeMap::new();
    for s in v {
        let Some(le) = s.labels.get("le") else {
            continue;
        };
        let Ok(bound) = parse_float(le) else {
            continue;
        };
        let mut labels = (*s.labels).clone();
        labels.remove("le");
        labels.remove(METRIC_NAME);
        groups
            .entry(Arc::new(labels))
            .or_default()
            .push((bound, s.value));
    }
    let out = groups
        .into_iter()
        .map(|(labels, buckets)| Sample {
            labels,
            value: bucket_quantile(q, buckets),
            ts: time,
        })
        .collect();
    Ok(Value::Vector(out))
}

/// A float as Prometheus' `le` and `quantile` labels write it (`+Inf` included).
fn parse_float(text: &str) -> Result<f64, std::num::ParseFloatError> {
    match text.trim() {
        "+Inf" | "Inf" | "+inf" | "inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        other => other.parse(),
    }
}

fn bucket_quantile(q: f64, mut buckets: Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    if !buckets.last().is_some_and(|b| b.0 == f64::INFINITY) {
        return f64::NAN;
    }
    // Buckets with the same bound add up; counts never go down.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for (bound, count) in buckets {
        match merged.last_mut() {
            Some(last) if last.0 == bound => last.1 += count,
            _ => merged.push((bound, count)),
        }
    }
    let mut max = f64::NEG_INFINITY;
    for bucket in &mut merged {
        if bucket.1 > max {
            max = bucket.1;
        } else {
            bucket.1 = max;
        }
    }
    if merged.len() < 2 {
        return f64::NAN;
    }
    let observations = merged.last().map_or(0.0, |b| b.1);
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let last_index = merged.len().saturating_sub(1);
    let b = merged
        .get(..last_index)
        .unwrap_or_default()
        .partition_point(|bucket| bucket.1 < rank);
    if b == last_index {
        return merged
            .get(last_index.saturating_sub(1))
            .map_or(f64::NAN, |x| x.0);
    }
    let Some(&(end, mut count)) = merged.get(b) else {
        return f64::NAN;
    };
    if b == 0 && end <= 0.0 {
        return end;
    }
    let mut start = 0.0;
    if b > 0
        && let Some(&(previous_bound, previous_count)) = merged.get(b.saturating_sub(1))
    {
        start = previous_bound;
        count -= previous_count;
        rank -= previous_count;
    }
    start + (end - start) * (rank / count)
}

/// An aggregation over `samples`, grouped by `modifier`.
pub(super) fn aggregate(
    op: &str,
    param: Option<&Value>,
    samples: Vec<Sample>,
    modifier: Option<&LabelModifier>,
    time: i64,
) -> Result<Value, QueryError> {
    let group_labels = |labels: &Labels| -> Labels {
        match modifier {
            Some(LabelModifier::Include(by)) => labels
                .iter()
                .filter(|(k, _)| by.labels.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            Some(LabelModifier::Exclude(without)) => labels
                .iter()
                .filter(|(k, _)| *k != METRIC_NAME && !without.labels.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            None => Labels::new(),
        }
    };
    let scalar_param = || match param {
        Some(Value::Scalar(v)) => Ok(*v),
        _ => Err(QueryError::BadData(format!(
            "{op} needs a scalar parameter"
        ))),
    };
    // Groups in order of first appearance, as Prometheus keeps them.
    let mut order: Vec<Arc<Labels>> = Vec::new();
    let mut groups: BTreeMap<Arc<Labels>, Vec<Sample>> = BTreeMap::new();
    let count_values_label = match (op, param) {
        ("count_values", Some(Value::String(label))) => {
            if !is_label_name(label) {
                return Err(QueryError::BadData(format!("invalid label name {label:?}")));
            }
            Some(label.clone())
        }
        ("count_values", _) => {
            return Err(QueryError::BadData(
                "count_values needs a label name".into(),
            ));
        }
        _ => None,
    };
    for sample in samples {
        let mut key = group_labels(&sample.labels);
        if let Some(label) = &count_values_label {
            key.insert(label.clone(), format_value(sample.value));
        }
        let key = Arc::new(key);
        let entry = groups.entry(Arc::clone(&key)).or_default();
        if entry.is_empty() {
            order.push(key);
        }
        entry.push(sample);
    }
    let mut out = Vec::new();
    for key in order {
        let Some(members) = groups.remove(&key) else {
            continue;
        };
        let values = || members.iter().map(|s| s.value);
        let value = match op {
            "sum" => kahan_sum(values()),
            "avg" => {
                let (mut mean, mut count) = (0.0f64, 0.0f64);
                for v in values() {
                    count += 1.0;
                    if mean.is_infinite() {
                        if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                            continue;
                        }
                        if !v.is_infinite() && !v.is_nan() {
                            continue;
                        }
                    }
                    mean += v / count - mean / count;
                }
                mean
            }
            "min" => values().fold(f64::NAN, |m, v| if m > v || m.is_nan() { v } else { m }),
            "max" => values().fold(f64::NAN, |m, v| if m < v || m.is_nan() { v } else { m }),
            "count" | "count_values" => members.len() as f64,
            "group" => 1.0,
            "stddev" | "stdvar" => {
                let (mut count, mut mean, mut aux) = (0.0f64, 0.0f64, 0.0f64);
                for v in values() {
                    count += 1.0;
                    let delta = v - mean;
                    mean += delta / count;
                    aux += delta * (v - mean);
                }
                let var = aux / count;
                if op == "stddev" { var.sqrt() } else { var }
            }
            "quantile" => {
                let q = scalar_param()?;
                let mut v: Vec<f64> = values().collect();
                quantile(q, &mut v)
            }
            "topk" | "bottomk" => {
                let k = scalar_param()?;
                if k.is_nan() {
                    return Err(QueryError::BadData("Parameter value is NaN".into()));
                }
                let k = if k < 1.0 {
                    0
                } else {
                    k.min(usize::MAX as f64) as usize
                };
                let mut members = members;
                let top = op == "topk";
                members.sort_by(|a, b| match (a.value.is_nan(), b.value.is_nan()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ if top => b.value.total_cmp(&a.value),
                    _ => a.value.total_cmp(&b.value),
                });
                for s in members.into_iter().take(k) {
                    out.push(Sample {
                        labels: s.labels,
                        value: s.value,
                        ts: time,
                    });
                }
                continue;
            }
            other => return Err(QueryError::unsupported(format!("the aggregation {other}"))),
        };
        out.push(Sample {
            labels: key,
            value,
            ts: time,
        });
    }
    Ok(Value::Vector(out))
}

/// A float as Prometheus prints it in labels and JSON: the shortest text that reads back
/// to it, `+Inf`, `-Inf`, `NaN`.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        // Go's strconv.FormatFloat(v, 'f', -1, 64), which Prometheus uses: the shortest
        // digits that read back, never an exponent; so does Rust's Display.
        format!("{v}")
    }
}
