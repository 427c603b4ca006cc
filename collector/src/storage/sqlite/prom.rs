//! The store as a PromQL [`Source`]: every numeric series with data in the window, named and
//! labelled as [`crate::prometheus`] says, its samples read from the chunks. Booleans read as
//! 0 and 1; string series are not exposed.

use std::collections::BTreeMap;
use std::sync::Arc;

use promql_parser::label::Matcher;
use rusqlite::Connection;
use tributary_wire::FieldValue;

use super::chunks;
use crate::prometheus::{label_name, metric_name};
use crate::promql::{Labels, METRIC_NAME, QueryError, Series, Source, matches};

/// A read connection seen as a PromQL source.
pub struct SqliteSource<'c> {
    pub conn: &'c Connection,
}

/// One stored numeric series, as Prometheus sees it.
pub struct Catalogued {
    pub id: i64,
    pub labels: Arc<Labels>,
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
fn internal(e: rusqlite::Error) -> QueryError {
    QueryError::Internal(format!("reading the store: {e}"))
}

/// Every numeric series with data in `[from_ns, to_ns]` whose labels satisfy `matchers`.
pub fn catalogue(
    conn: &Connection,
    matchers: &[Matcher],
    from_ns: i64,
    to_ns: i64,
) -> Result<Vec<Catalogued>, QueryError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, name, tags, field FROM series
             WHERE kind IN ('float', 'integer', 'boolean') AND last_ts >= ?1 AND first_ts <= ?2
             ORDER BY id",
        )
        .map_err(internal)?;
    let rows = stmt
        .query_map(rusqlite::params![from_ns, to_ns], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .map_err(internal)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, name, tags, field) = row.map_err(internal)?;
        let tags: BTreeMap<String, String> = serde_json::from_str(&tags).unwrap_or_default();
        let labels = labels_of(&name, &tags, &field);
        if matches(&labels, matchers) {
            out.push(Catalogued {
                id,
                labels: Arc::new(labels),
            });
        }
    }
    Ok(out)
}

impl SqliteSource<'_> {
    /// The series whose labels satisfy `matchers` with data in `[from, to]` (ms).
    pub fn catalogue(
        &self,
        matchers: &[Matcher],
        from: i64,
        to: i64,
    ) -> Result<Vec<Catalogued>, QueryError> {
        catalogue(
            self.conn,
            matchers,
            from.saturating_mul(1_000_000),
            to.saturating_mul(1_000_000).saturating_add(999_999),
        )
    }
}

impl Source for SqliteSource<'_> {
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
        for entry in catalogue(self.conn, matchers, from_ns, to_ns)? {
            let left = budget.saturating_sub(total);
            let (points, truncated) = chunks::read(
                self.conn,
                entry.id,
                from_ns,
                to_ns.saturating_add(1),
                Some(left.saturating_add(1)),
            )
            .map_err(internal)?;
            if truncated || points.len() > left {
                return Err(QueryError::Execution(format!(
                    "the query would load more than {budget} samples (query.max_points)"
                )));
            }
            total = total.saturating_add(points.len());
            let mut points = points;
            // Late points may sit in an earlier chunk's successor: order by time (stable, so
            // of two points at one time the one written later stays later).
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
            out.push(Series {
                labels: entry.labels,
                samples,
            });
        }
        Ok(out)
    }
}
