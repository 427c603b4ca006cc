//! The read side every store shares. A backend answers a handful of row reads ([`Rows`]: the
//! series a query selects, a series' chunks and rollup blocks, the quarantine, the agents and
//! their marks); raw and aggregated queries, the listings, the agents' own reports and the
//! PromQL source ([`crate::storage::prom`]) are built on them once, so both stores give the
//! same answers to the same data.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Semaphore;

use tributary_wire::FieldValue;

use super::{
    AgentRecord, AggregateQuery, AggregateResult, AggregateSeries, EpochMark, QuarantineFilter,
    QuarantineRecord, QueryResult, RawQuery, SeriesInfo, SeriesPoints, StorageError,
};
use crate::rollup::{Aggregate, Resolution, choose_resolution, into_buckets, moving, window_start};
use crate::storage::blocks::{self, block_start};

/// The span of time one chunk covers at most: a chunk starting at `s` holds values in
/// `[window_start(s), window_start(s) + CHUNK_SPAN)`.
pub const CHUNK_SPAN: i64 = 3_600_000_000_000;

/// Read connections of one kind, used one request at a time each, on the blocking pool: at
/// most `size` at once, opened when first needed and kept while they work.
pub struct Pool<C> {
    connect: Box<dyn Fn() -> Result<C, StorageError> + Send + Sync>,
    /// Whether a connection may be used again after a request (a broken one is dropped).
    reusable: fn(&C) -> bool,
    idle: Mutex<Vec<C>>,
    permits: Arc<Semaphore>,
}

impl<C: Send + 'static> Pool<C> {
    pub fn new(
        size: usize,
        connect: impl Fn() -> Result<C, StorageError> + Send + Sync + 'static,
        reusable: fn(&C) -> bool,
    ) -> Pool<C> {
        Pool {
            connect: Box::new(connect),
            reusable,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size.max(1))),
        }
    }

    /// Runs `work` on a read connection off the async executor.
    pub async fn run<T, F>(self: &Arc<Self>, work: F) -> Result<T, StorageError>
    where
        F: FnOnce(&mut C) -> Result<T, StorageError> + Send + 'static,
        T: Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| StorageError::Closed)?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let idle = pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let mut conn = match idle {
                Some(conn) => conn,
                None => (pool.connect)()?,
            };
            let result = work(&mut conn);
            if (pool.reusable)(&conn) {
                pool.idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(conn);
            }
            result
        })
        .await
        .map_err(|e| StorageError::Other(format!("read task failed: {e}")))?
    }
}

/// A stored series, as a backend lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesRow {
    pub id: i64,
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub field: String,
    pub kind: String,
    pub first_ts: i64,
    pub last_ts: i64,
    /// Its rollups answer `*_over_time` exactly (see [`crate::storage::prom`]).
    pub exact: bool,
}

/// Which series a backend lists.
#[derive(Debug, Clone, Copy)]
pub struct SeriesQuery<'q> {
    /// Only this name (any when empty).
    pub name: &'q str,
    /// Only this field (any when `None`).
    pub field: Option<&'q str>,
    /// With data in `[from, to)`: `last_ts >= from` and `first_ts < to`.
    pub from: i64,
    pub to: i64,
    /// Tags the series must have. A backend may filter by them or leave it to the caller,
    /// which checks them again.
    pub tags: &'q [(String, String)],
    /// Only numeric series (float, integer, boolean).
    pub numeric: bool,
}

/// What [`Rows::chunks`] calls with each chunk (start, data): whether to go on.
pub type EachChunk<'e> = dyn FnMut(i64, &[u8]) -> Result<bool, StorageError> + 'e;

/// What [`Rows::blocks`] calls with each block (start, data).
pub type EachBlock<'e> = dyn FnMut(i64, &[u8]) -> Result<(), StorageError> + 'e;

/// The row reads a store answers on one read connection.
pub trait Rows {
    /// The series `query` selects, ordered by name, tags (canonical JSON) and field.
    fn series(&self, query: &SeriesQuery<'_>) -> Result<Vec<SeriesRow>, StorageError>;

    /// Calls `each(start_ts, data)` for every chunk of `series` with a start in `[from, to)`,
    /// by start and then in the order they were written, until it answers `false`.
    fn chunks(
        &self,
        series: i64,
        from: i64,
        to: i64,
        each: &mut EachChunk<'_>,
    ) -> Result<(), StorageError>;

    /// The chunk of `series` with the newest start (the last written of those): (start, data).
    fn newest_chunk(&self, series: i64) -> Result<Option<(i64, Vec<u8>)>, StorageError>;

    /// Calls `each(start, data)` for every rollup block of `series` at resolution `res` with a
    /// start in `[from, to)`, in order.
    fn blocks(
        &self,
        series: i64,
        res: i64,
        from: i64,
        to: i64,
        each: &mut EachBlock<'_>,
    ) -> Result<(), StorageError>;

    /// Up to `limit` quarantined records the filter selects (its own limit is the caller's),
    /// in its order.
    fn quarantine(
        &self,
        filter: &QuarantineFilter,
        limit: usize,
    ) -> Result<Vec<QuarantineRecord>, StorageError>;

    /// Every agent's record, without its marks.
    fn agents(&self) -> Result<Vec<AgentRecord>, StorageError>;

    /// Every `(agent, epoch)` mark, by agent and then by when it was last seen.
    fn marks(&self) -> Result<Vec<(String, EpochMark)>, StorageError>;

    /// A trivial read, proving the store answers.
    fn ping(&self) -> Result<(), StorageError>;
}

/// A chunk that does not decode: the store was damaged or written by something else.
fn corrupt_chunk(series: i64, start_ts: i64, error: impl std::fmt::Display) -> StorageError {
    StorageError::Other(format!(
        "chunk of series {series} at {start_ts} does not decode: {error}"
    ))
}

/// The series named `name` (any name when empty) with `field` (any when `None`) that have the
/// `tags` and data in `[from, to)`, ordered by name, tags and field.
pub fn matching_series(
    rows: &dyn Rows,
    name: &str,
    field: Option<&str>,
    from: i64,
    to: i64,
    tags: &[(String, String)],
) -> Result<Vec<SeriesRow>, StorageError> {
    let mut found = rows.series(&SeriesQuery {
        name,
        field,
        from,
        to,
        tags,
        numeric: false,
    })?;
    found.retain(|s| tags.iter().all(|(k, v)| s.tags.get(k) == Some(v)));
    Ok(found)
}

/// The values of `series` with `from <= ts < to`, in time order (equal times in the order
/// they were stored). With `limit`, only the first `limit` of them; the flag says whether
/// more were left out.
pub fn read_values(
    rows: &dyn Rows,
    series: i64,
    from: i64,
    to: i64,
    limit: Option<usize>,
) -> Result<(Vec<(i64, FieldValue)>, bool), StorageError> {
    let mut values: Vec<(i64, FieldValue)> = Vec::new();
    let mut sorted = true;
    rows.chunks(
        series,
        window_start(from, CHUNK_SPAN),
        to,
        &mut |start_ts, data| {
            // Chunks come by start time: once `limit` values lie before this chunk's start,
            // no later chunk can change the first `limit`.
            if let Some(limit) = limit
                && values.len() > limit
            {
                if !sorted {
                    values.sort_by_key(|(ts, _)| *ts);
                    sorted = true;
                }
                if values.get(limit).is_some_and(|(ts, _)| *ts < start_ts) {
                    return Ok(false);
                }
            }
            crate::storage::codec::decode(start_ts, data, |ts, value| {
                if ts >= from && ts < to {
                    sorted &= values.last().is_none_or(|(last, _)| *last <= ts);
                    values.push((ts, value));
                }
            })
            .map_err(|e| corrupt_chunk(series, start_ts, e))?;
            Ok(true)
        },
    )?;
    if !sorted {
        // Stable: equal times keep the order of their chunks.
        values.sort_by_key(|(ts, _)| *ts);
    }
    let truncated = limit.is_some_and(|limit| values.len() > limit);
    if let Some(limit) = limit {
        values.truncate(limit);
    }
    Ok((values, truncated))
}

/// The stored windows of one series at resolution `res` that start in `[from, to)`, in order.
/// Without `with_sketch`, quantiles are not available from them.
pub fn read_windows(
    rows: &dyn Rows,
    series: i64,
    res: i64,
    from: i64,
    to: i64,
    with_sketch: bool,
) -> Result<Vec<(i64, Aggregate)>, StorageError> {
    let mut out = Vec::new();
    rows.blocks(
        series,
        res,
        block_start(from, res),
        to,
        &mut |block, data| {
            blocks::decode(data, block, res, with_sketch, |start, aggregate| {
                if start >= from && start < to {
                    out.push((start, aggregate));
                }
            })
            .map_err(|e| StorageError::Other(format!("rollup block: {e}")))
        },
    )?;
    Ok(out)
}

/// Answers a raw query.
pub fn query_raw(rows: &dyn Rows, query: &RawQuery) -> Result<QueryResult, StorageError> {
    let candidates = matching_series(
        rows,
        &query.name,
        query.field.as_deref(),
        query.from,
        query.to,
        &query.tags,
    )?;
    let mut result = QueryResult::default();
    let mut remaining = query.limit;
    for candidate in candidates {
        if remaining == 0 {
            result.truncated = true;
            break;
        }
        let (points, truncated) =
            read_values(rows, candidate.id, query.from, query.to, Some(remaining))?;
        result.truncated |= truncated;
        remaining = remaining.saturating_sub(points.len());
        if !points.is_empty() {
            result.series.push(SeriesPoints {
                name: candidate.name,
                tags: candidate.tags,
                field: candidate.field,
                points,
            });
        }
        if result.truncated {
            break;
        }
    }
    Ok(result)
}

/// Every series matching `name` (any when empty), `tags` and every word of `search`, at most
/// `limit`, and whether there were more.
pub fn list_series(
    rows: &dyn Rows,
    name: &str,
    tags: &[(String, String)],
    search: &str,
    limit: usize,
) -> Result<(Vec<SeriesInfo>, bool), StorageError> {
    let mut candidates = matching_series(rows, name, None, i64::MIN, i64::MAX, tags)?;
    if !search.is_empty() {
        let words: Vec<String> = search.split_whitespace().map(str::to_lowercase).collect();
        candidates.retain(|c| {
            let text = format!(
                "{} {} {}",
                c.name,
                c.field,
                c.tags
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
            .to_lowercase();
            words.iter().all(|w| text.contains(w.as_str()))
        });
    }
    let truncated = candidates.len() > limit;
    Ok((
        candidates
            .into_iter()
            .take(limit)
            .map(|c| SeriesInfo {
                name: c.name,
                tags: c.tags,
                field: c.field,
                kind: c.kind,
                first_ts: c.first_ts,
                last_ts: c.last_ts,
            })
            .collect(),
        truncated,
    ))
}

/// Quarantined records the filter selects, at most its `limit`, and whether there were more.
pub fn list_quarantine(
    rows: &dyn Rows,
    filter: &QuarantineFilter,
) -> Result<(Vec<QuarantineRecord>, bool), StorageError> {
    let mut records = rows.quarantine(filter, filter.limit.saturating_add(1))?;
    let truncated = records.len() > filter.limit;
    records.truncate(filter.limit);
    Ok((records, truncated))
}

/// An agent's newest report about itself: when (ns), and field -> value.
pub type SelfReport = (i64, BTreeMap<String, FieldValue>);

/// The newest figures each agent reported about itself (its `tributary_agent` points, see
/// the agent's `inputs/own.rs`), by agent id.
pub fn agents_self_reports(rows: &dyn Rows) -> Result<HashMap<String, SelfReport>, StorageError> {
    let series = rows.series(&SeriesQuery {
        name: "tributary_agent",
        field: None,
        from: i64::MIN,
        to: i64::MAX,
        tags: &[],
        numeric: false,
    })?;
    let mut reports: HashMap<String, SelfReport> = HashMap::new();
    for mut series in series {
        let Some(agent) = series.tags.remove(crate::storage::series::AGENT_TAG) else {
            continue;
        };
        let Some((start_ts, data)) = rows.newest_chunk(series.id)? else {
            continue;
        };
        let mut last: Option<(i64, FieldValue)> = None;
        crate::storage::codec::decode(start_ts, &data, |ts, value| {
            if last.as_ref().is_none_or(|(t, _)| ts >= *t) {
                last = Some((ts, value));
            }
        })
        .map_err(|e| corrupt_chunk(series.id, start_ts, e))?;
        if let Some((ts, value)) = last {
            let report = reports.entry(agent).or_default();
            report.0 = report.0.max(ts);
            report.1.insert(series.field, value);
        }
    }
    Ok(reports)
}

/// Every agent the store has heard from, with its marks, by agent id.
pub fn agents(rows: &dyn Rows) -> Result<Vec<AgentRecord>, StorageError> {
    let mut records: BTreeMap<String, AgentRecord> = rows
        .agents()?
        .into_iter()
        .map(|r| (r.agent_id.clone(), r))
        .collect();
    for (agent_id, mark) in rows.marks()? {
        if let Some(record) = records.get_mut(&agent_id) {
            record.epochs.push(mark);
        }
    }
    Ok(records.into_values().collect())
}

/// A value the rollups take: floats and integers (booleans and strings are not rolled up).
pub(crate) fn number(value: &FieldValue) -> Option<f64> {
    match value {
        FieldValue::F64(v) => Some(*v),
        FieldValue::I64(v) => Some(*v as f64),
        FieldValue::Bool(_) | FieldValue::Str(_) => None,
    }
}

/// Answers an aggregated query: from the coarsest rollup whose windows tile the buckets and
/// the range, else from the raw points, which give the same figures (the same [`Aggregate`]).
pub fn query_aggregated(
    rows: &dyn Rows,
    query: &AggregateQuery,
    resolutions: &[Resolution],
) -> Result<AggregateResult, StorageError> {
    let raw = &query.raw;
    let resolution = choose_resolution(resolutions, query.step, raw.from, raw.to)
        .and_then(|index| resolutions.get(index))
        .map(|r| r.step);
    // A moving window needs the buckets before `from` that it reaches back to.
    let lookback = query
        .window
        .map_or(0, |w| w.saturating_sub(query.step).max(0));
    let fetch_from = if raw.from == i64::MIN || query.step == 0 {
        raw.from
    } else {
        window_start(raw.from.saturating_sub(lookback), query.step)
    };
    let with_sketch = query.aggs.iter().any(|a| a.quantile().is_some());
    let candidates = matching_series(
        rows,
        &raw.name,
        raw.field.as_deref(),
        fetch_from,
        raw.to,
        &raw.tags,
    )?;
    let mut result = AggregateResult {
        resolution,
        ..AggregateResult::default()
    };
    let mut remaining = raw.limit;
    'series: for candidate in candidates {
        if candidate.kind != "float" && candidate.kind != "integer" {
            continue;
        }
        // Step 0: one bucket for the whole range, timed at its start (or its first point).
        let whole = |first: i64| {
            if raw.from == i64::MIN {
                first
            } else {
                raw.from
            }
        };
        let buckets = match resolution {
            Some(res) => {
                let windows =
                    read_windows(rows, candidate.id, res, fetch_from, raw.to, with_sketch)?;
                if query.step == 0 {
                    let mut merged = Aggregate::new();
                    for (_, aggregate) in &windows {
                        merged.merge(aggregate);
                    }
                    match windows.first() {
                        Some((first, _)) => vec![(whole(*first), merged)],
                        None => Vec::new(),
                    }
                } else {
                    into_buckets(windows, query.step)
                }
            }
            None => {
                let mut buckets: Vec<(i64, Aggregate)> = Vec::new();
                let (values, _) = read_values(rows, candidate.id, fetch_from, raw.to, None)?;
                for (ts, value) in values {
                    let Some(value) = number(&value) else {
                        continue;
                    };
                    let bucket = if query.step == 0 {
                        whole(buckets.first().map_or(ts, |b| b.0))
                    } else {
                        window_start(ts, query.step)
                    };
                    match buckets.last_mut() {
                        Some((start, aggregate)) if *start == bucket => aggregate.add(ts, value),
                        _ => {
                            let mut aggregate = Aggregate::new();
                            aggregate.add(ts, value);
                            buckets.push((bucket, aggregate));
                        }
                    }
                }
                buckets
            }
        };
        let buckets = match query.window {
            Some(window) => moving(&buckets, window, query.step, raw.to),
            None => buckets,
        };
        for agg in &query.aggs {
            let points: Vec<(i64, f64)> = buckets
                .iter()
                .filter(|(start, _)| *start >= raw.from)
                .filter_map(|(start, aggregate)| aggregate.value(*agg).map(|v| (*start, v)))
                .collect();
            if points.is_empty() {
                continue;
            }
            let cut = points.len() > remaining;
            let mut points = points;
            points.truncate(remaining);
            remaining = remaining.saturating_sub(points.len());
            result.series.push(AggregateSeries {
                name: candidate.name.clone(),
                tags: candidate.tags.clone(),
                field: candidate.field.clone(),
                agg: *agg,
                points,
            });
            if cut {
                result.truncated = true;
                break 'series;
            }
        }
    }
    Ok(result)
}
