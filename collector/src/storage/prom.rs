//! The store as a PromQL [`Source`]: every numeric series with data in the window, named and
//! labelled as [`crate::prometheus`] says, its samples read from the chunks. Booleans read as
//! 0 and 1; string series are not exposed.
//!
//! `*_over_time` over ranges the rollup windows tile is answered from the rollups
//! ([`crate::promql::rolled`]) for the series where that is exact, which the writer records in
//! `series.exact`: every value it has stored for the series was at a whole millisecond, at a
//! time after every value stored before (or later in the same sorted run), and a finite
//! number or a stale marker. Then the samples PromQL reads (a millisecond each, none dropped as
//! a same-millisecond duplicate) are exactly the values the rollups hold (stale markers and
//! non-finite values are left out of both). A resolution is used only if it is kept at least
//! as long as the raw values, so its windows exist wherever raw values do.

use std::collections::BTreeMap;
use std::sync::Arc;

use promql_parser::label::Matcher;
use tributary_wire::FieldValue;

use super::StorageError;
use super::read::{Rows, SeriesQuery, read_values, read_windows};
use crate::prometheus::{label_name, metric_name};
use crate::promql::{
    Grid, Labels, METRIC_NAME, Partial, QueryError, Rolled, Series, Source, Windowed, matches,
};
use crate::rollup::Resolution;

/// A read connection seen as a PromQL source.
pub struct StoreSource<'c> {
    pub rows: &'c dyn Rows,
    /// The rollup resolutions kept at least as long as the raw values (see the module docs).
    pub windows: &'c [Resolution],
}

/// The resolutions of `all` that the windows path may use: kept at least as long as the raw
/// values (`None`: forever).
pub fn window_resolutions(all: &[Resolution], raw_retention: Option<i64>) -> Vec<Resolution> {
    all.iter()
        .filter(|r| match (r.retention, raw_retention) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(kept), Some(raw)) => kept >= raw,
        })
        .copied()
        .collect()
}

/// One stored numeric series, as Prometheus sees it.
pub struct Catalogued {
    pub id: i64,
    pub labels: Arc<Labels>,
    /// Rollups answer its `*_over_time` exactly (see the module docs).
    pub exact: bool,
}

/// The labels of the stored series `name`, `tags`, `field`.
pub fn labels_of(name: &str, tags: &BTreeMap<String, String>, field: &str) -> Labels {
    let mut labels: Labels = tags
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (label_name(k), v.clone()))
        .collect();
    labels.insert(METRIC_NAME.to_owned(), metric_name(name, field));
    labels
}

#[allow(clippy::needless_pass_by_value)] // used as map_err(internal)
fn internal(e: StorageError) -> QueryError {
    QueryError::Internal(format!("reading the store: {e}"))
}

/// Every numeric series with data in `[from_ns, to_ns]` whose labels satisfy `matchers`.
pub fn catalogue(
    rows: &dyn Rows,
    matchers: &[Matcher],
    from_ns: i64,
    to_ns: i64,
) -> Result<Vec<Catalogued>, QueryError> {
    let mut found = rows
        .series(&SeriesQuery {
            name: "",
            field: None,
            from: from_ns,
            to: to_ns.saturating_add(1),
            tags: &[],
            numeric: true,
        })
        .map_err(internal)?;
    found.sort_by_key(|s| s.id);
    let mut out = Vec::new();
    for series in found {
        let labels = labels_of(&series.name, &series.tags, &series.field);
        if matches(&labels, matchers) {
            out.push(Catalogued {
                id: series.id,
                labels: Arc::new(labels),
                exact: series.exact && series.kind != "boolean",
            });
        }
    }
    Ok(out)
}

impl StoreSource<'_> {
    /// The series whose labels satisfy `matchers` with data in `[from, to]` (ms).
    pub fn catalogue(
        &self,
        matchers: &[Matcher],
        from: i64,
        to: i64,
    ) -> Result<Vec<Catalogued>, QueryError> {
        catalogue(
            self.rows,
            matchers,
            from.saturating_mul(1_000_000),
            to.saturating_mul(1_000_000).saturating_add(999_999),
        )
    }
}

/// The samples of series `id` in `[from_ns, to_ns]`, at most `left` (else an error naming
/// `budget`).
fn samples(
    rows: &dyn Rows,
    id: i64,
    from_ns: i64,
    to_ns: i64,
    left: usize,
    budget: usize,
) -> Result<Vec<(i64, f64)>, QueryError> {
    let (mut points, truncated) = read_values(
        rows,
        id,
        from_ns,
        to_ns.saturating_add(1),
        Some(left.saturating_add(1)),
    )
    .map_err(internal)?;
    if truncated || points.len() > left {
        return Err(QueryError::over_budget(budget));
    }
    // Late points may sit in an earlier chunk's successor: order by time (stable, so of two
    // points at one time the one written later stays later).
    points.sort_by_key(|p| p.0);
    let mut samples: Vec<(i64, f64)> = Vec::with_capacity(points.len());
    for (ts, value) in points {
        let value = match value {
            FieldValue::F64(v) => v,
            FieldValue::I64(v) => v as f64,
            FieldValue::Bool(b) => f64::from(u8::from(b)),
            FieldValue::Str(_) => continue,
        };
        let ms = ts.div_euclid(1_000_000);
        // Two points in one millisecond: the later one stands, as a sample would.
        match samples.last_mut() {
            Some(last) if last.0 == ms => last.1 = value,
            _ => samples.push((ms, value)),
        }
    }
    Ok(samples)
}

/// The windows of resolution `res` (ns) of series `id` starting in `[from_ns, to_ns]`, as
/// `(start ms, partial)`.
fn windows(
    rows: &dyn Rows,
    id: i64,
    res: i64,
    from_ns: i64,
    to_ns: i64,
) -> Result<Vec<(i64, Partial)>, QueryError> {
    let windows =
        read_windows(rows, id, res, from_ns, to_ns.saturating_add(1), false).map_err(internal)?;
    Ok(windows
        .into_iter()
        .filter(|(_, a)| a.count > 0)
        .map(|(start, a)| {
            (
                start.div_euclid(1_000_000),
                Partial {
                    count: a.count,
                    sum: a.sum(),
                    min: a.min,
                    max: a.max,
                    at_start: (a.first.0 == start).then_some(a.first.1),
                },
            )
        })
        .collect())
}

impl Source for StoreSource<'_> {
    fn select(
        &self,
        matchers: &[Matcher],
        from: i64,
        to: i64,
        budget: usize,
    ) -> Result<Vec<Series>, QueryError> {
        let from_ns = from.saturating_mul(1_000_000);
        // Through the end of the last millisecond.
        let to_ns = to.saturating_mul(1_000_000).saturating_add(999_999);
        let mut out = Vec::new();
        let mut total = 0usize;
        for entry in catalogue(self.rows, matchers, from_ns, to_ns)? {
            let left = budget.saturating_sub(total);
            let samples = samples(self.rows, entry.id, from_ns, to_ns, left, budget)?;
            total = total.saturating_add(samples.len());
            out.push(Series {
                labels: entry.labels,
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
        let whole_ms = self
            .windows
            .iter()
            .filter(|r| r.step.rem_euclid(1_000_000) == 0)
            .map(|r| r.step / 1_000_000);
        let Some(width) = grid.coarsest(whole_ms, range) else {
            return Ok(None);
        };
        let res = width.saturating_mul(1_000_000);
        let from_ns = grid.from.saturating_sub(range).saturating_mul(1_000_000);
        let to_ns = grid.to.saturating_mul(1_000_000).saturating_add(999_999);
        let mut rolled = Rolled {
            width,
            ..Rolled::default()
        };
        let mut total = 0usize;
        for entry in catalogue(self.rows, matchers, from_ns, to_ns)? {
            let left = budget.saturating_sub(total);
            if entry.exact {
                // Up to the window starting at the last time, for the sample at its start.
                let windows = windows(
                    self.rows,
                    entry.id,
                    res,
                    from_ns,
                    grid.to.saturating_mul(1_000_000),
                )?;
                if windows.len() > left {
                    return Err(QueryError::over_budget(budget));
                }
                total = total.saturating_add(windows.len());
                rolled.windowed.push(Windowed {
                    labels: entry.labels,
                    windows,
                });
            } else {
                let samples = samples(self.rows, entry.id, from_ns, to_ns, left, budget)?;
                total = total.saturating_add(samples.len());
                rolled.raw.push(Series {
                    labels: entry.labels,
                    samples,
                });
            }
        }
        Ok(Some(rolled))
    }
}
