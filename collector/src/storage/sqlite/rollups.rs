//! Rollups in SQLite: the writer folds each transaction's numeric values into the stored
//! windows, and the read side answers aggregated queries from them.
//!
//! A transaction's values are first aggregated among themselves (finest resolution from the
//! points, each coarser one from the finer partials), then each touched window is merged with
//! its stored row and written back, in the same transaction as the raw points. A window still
//! in the writer's cache is merged without a read; a late point's window is read from disk.
//! Either way the row ends up as the merge of every point of the window, whatever the order
//! they came in.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{chunks, matching_series};
use crate::rollup::aggregate::StoredColumns;
use crate::rollup::{Aggregate, Resolution, choose_resolution, into_buckets, moving, window_start};
use crate::storage::{AggregateQuery, AggregateResult, AggregateSeries};
use tributary_wire::FieldValue;

/// `SELECT` of whole windows (the columns `window_from_row` reads), then `$rest`.
macro_rules! select_windows {
    ($rest:literal) => {
        concat!(
            "SELECT count, sum, min, max, first_ts, first, last_ts, last, state, start FROM rollups ",
            $rest
        )
    };
}

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rollups (
    series_id INTEGER NOT NULL,
    res       INTEGER NOT NULL,
    start     INTEGER NOT NULL,
    count     INTEGER NOT NULL,
    sum       REAL NOT NULL,
    min       REAL NOT NULL,
    max       REAL NOT NULL,
    first_ts  INTEGER NOT NULL,
    first     REAL NOT NULL,
    last_ts   INTEGER NOT NULL,
    last      REAL NOT NULL,
    state     BLOB NOT NULL,
    PRIMARY KEY (series_id, res, start)
) WITHOUT ROWID;
";

/// Series-resolutions the cache keeps (one window each) before it starts over.
const CACHE_MAX_WINDOWS: usize = 100_000;

/// What one transaction did to the rollups.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RollupStats {
    /// Windows written.
    pub windows: u64,
    /// Windows that were read back from disk and merged (late data, or a cold cache).
    pub merged_from_disk: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    series: i64,
    res: i64,
    start: i64,
}

/// The writer's side: the resolutions and, per series and resolution, the newest window it
/// has written (start and aggregate). Data arriving in time order hits it or starts a newer
/// window, which needs no read; only a window older than the newest (late data) or one of a
/// series not cached since start is read back from disk.
pub struct RollupWriter {
    resolutions: Vec<Resolution>,
    cache: HashMap<(i64, i64), (i64, Aggregate), foldhash::fast::RandomState>,
}

impl RollupWriter {
    /// `resolutions` finest first, each a multiple of the one before (the configuration
    /// checks this).
    pub fn new(resolutions: Vec<Resolution>) -> RollupWriter {
        RollupWriter {
            resolutions,
            cache: HashMap::default(),
        }
    }

    /// Forgets the cache: after a failed transaction it may hold what was rolled back.
    pub fn forget(&mut self) {
        self.cache.clear();
    }

    /// Folds `values` (series id, ts, value), sorted by series then time, into the rollups.
    pub fn apply(
        &mut self,
        tx: &Transaction<'_>,
        values: &[(i64, i64, f64)],
    ) -> rusqlite::Result<RollupStats> {
        let mut stats = RollupStats::default();
        let Some(finest) = self.resolutions.first().map(|r| r.step) else {
            return Ok(stats);
        };
        // The finest level, from the points: sorted by series and time, so a window's points
        // are next to each other.
        let mut level: Vec<(Key, Aggregate)> = Vec::new();
        for &(series, ts, value) in values {
            if !value.is_finite() {
                continue;
            }
            let key = Key {
                series,
                res: finest,
                start: window_start(ts, finest),
            };
            match level.last_mut() {
                Some((last, aggregate)) if *last == key => aggregate.add(ts, value),
                _ => {
                    let mut aggregate = Aggregate::new();
                    aggregate.add(ts, value);
                    level.push((key, aggregate));
                }
            }
        }
        let mut read = tx.prepare_cached(select_windows!(
            "WHERE series_id = ?1 AND res = ?2 AND start = ?3"
        ))?;
        let mut newest_stmt = tx.prepare_cached(select_windows!(
            "WHERE series_id = ?1 AND res = ?2 ORDER BY start DESC LIMIT 1"
        ))?;
        let mut write = tx.prepare_cached(
            "INSERT OR REPLACE INTO rollups (series_id, res, start, count, sum, min, max, first_ts, first, last_ts, last, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        let mut index = 0usize;
        loop {
            // The next level from this one's partials (sorted by series and start), built
            // first so this level's partials can be moved into the cache below.
            let next: Vec<(Key, Aggregate)> = match self.resolutions.get(index.saturating_add(1)) {
                Some(coarser) => {
                    let mut next: Vec<(Key, Aggregate)> = Vec::new();
                    for (key, partial) in &level {
                        let key = Key {
                            series: key.series,
                            res: coarser.step,
                            start: window_start(key.start, coarser.step),
                        };
                        match next.last_mut() {
                            Some((last, aggregate)) if *last == key => aggregate.merge(partial),
                            _ => next.push((key, partial.clone())),
                        }
                    }
                    next
                }
                None => Vec::new(),
            };
            for (key, partial) in level {
                let slot = (key.series, key.res);
                if !self.cache.contains_key(&slot) {
                    // Not cached: learn the newest window stored (none: anything is new).
                    if self.cache.len() >= CACHE_MAX_WINDOWS {
                        self.cache.clear();
                    }
                    let newest = read_newest(&mut newest_stmt, key.series, key.res)?
                        .unwrap_or((i64::MIN, Aggregate::new()));
                    self.cache.insert(slot, newest);
                }
                let Some(newest) = self.cache.get_mut(&slot) else {
                    continue;
                };
                let late;
                let merged: &Aggregate = if newest.0 == key.start {
                    // The newest window: merge in memory.
                    newest.1.merge(&partial);
                    &newest.1
                } else if newest.0 < key.start {
                    // Newer than anything written for this series: a new window.
                    *newest = (key.start, partial);
                    &newest.1
                } else {
                    // Late data: what is on disk.
                    late = match read_window(&mut read, key)? {
                        Some(mut stored) => {
                            stats.merged_from_disk = stats.merged_from_disk.saturating_add(1);
                            stored.merge(&partial);
                            stored
                        }
                        None => partial,
                    };
                    &late
                };
                let c = merged.columns();
                write.execute(params![
                    key.series,
                    key.res,
                    key.start,
                    c.count as i64,
                    c.sum,
                    c.min,
                    c.max,
                    c.first.0,
                    c.first.1,
                    c.last.0,
                    c.last.1,
                    merged.state_blob()
                ])?;
                stats.windows = stats.windows.saturating_add(1);
            }
            index = index.saturating_add(1);
            if next.is_empty() {
                break;
            }
            level = next;
        }
        Ok(stats)
    }
}

/// The window stored for `key`, if any.
fn read_window(
    stmt: &mut rusqlite::CachedStatement<'_>,
    key: Key,
) -> rusqlite::Result<Option<Aggregate>> {
    Ok(stmt
        .query_row(params![key.series, key.res, key.start], |r| {
            window_from_row(r, true)
        })
        .optional()?
        .map(|(_, aggregate)| aggregate))
}

/// The newest stored window of a series at a resolution: (start, aggregate).
fn read_newest(
    stmt: &mut rusqlite::CachedStatement<'_>,
    series: i64,
    res: i64,
) -> rusqlite::Result<Option<(i64, Aggregate)>> {
    stmt.query_row(params![series, res], |r| window_from_row(r, true))
        .optional()
}

/// A row of `select_windows!` as (start, aggregate); without `with_sketch` the sketch is left
/// empty.
fn window_from_row(r: &rusqlite::Row<'_>, with_sketch: bool) -> rusqlite::Result<(i64, Aggregate)> {
    let columns = StoredColumns {
        count: r.get::<_, u64>(0)?,
        sum: r.get(1)?,
        min: r.get(2)?,
        max: r.get(3)?,
        first: (r.get(4)?, r.get(5)?),
        last: (r.get(6)?, r.get(7)?),
    };
    let blob = r.get_ref(8)?.as_blob()?;
    let aggregate = Aggregate::from_stored(&columns, blob, with_sketch).map_err(|e| corrupt(&e))?;
    Ok((r.get(9)?, aggregate))
}

fn corrupt(message: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Blob,
        message.to_owned().into(),
    )
}

/// The stored windows of one series at resolution `res` that start in `[from, to)`, in order.
/// Without `with_sketch`, quantiles are not available from them.
pub fn read_windows(
    conn: &Connection,
    series: i64,
    res: i64,
    from: i64,
    to: i64,
    with_sketch: bool,
) -> rusqlite::Result<Vec<(i64, Aggregate)>> {
    let mut stmt = conn.prepare_cached(select_windows!(
        "WHERE series_id = ?1 AND res = ?2 AND start >= ?3 AND start < ?4 ORDER BY start"
    ))?;
    stmt.query_map(params![series, res, from, to], |r| {
        window_from_row(r, with_sketch)
    })?
    .collect()
}

/// Rolls up every numeric point already stored (a database from before rollups existed), in
/// one transaction; returns the windows written.
pub fn rebuild(conn: &Connection, rollups: &mut RollupWriter) -> rusqlite::Result<u64> {
    let tx = conn.unchecked_transaction()?;
    let mut windows = 0u64;
    let numeric: Vec<i64> = tx
        .prepare("SELECT id FROM series WHERE kind IN ('float', 'integer') ORDER BY id")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut group: Vec<(i64, i64, f64)> = Vec::with_capacity(100_000);
    for (index, id) in numeric.iter().enumerate() {
        let (values, _) = chunks::read(&tx, *id, i64::MIN, i64::MAX, None)?;
        group.extend(
            values
                .iter()
                .filter_map(|(ts, value)| Some((*id, *ts, number(value)?))),
        );
        if group.len() >= 100_000 || index.saturating_add(1) == numeric.len() {
            windows = windows.saturating_add(rollups.apply(&tx, &group)?.windows);
            group.clear();
        }
    }
    tx.commit()?;
    Ok(windows)
}

/// Answers an aggregated query: from the coarsest rollup whose windows tile the buckets and
/// the range, else from the raw points, which give the same figures (the same [`Aggregate`]).
pub fn query_aggregated(
    conn: &Connection,
    query: &AggregateQuery,
    resolutions: &[Resolution],
) -> rusqlite::Result<AggregateResult> {
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
        conn,
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
    'series: for (name, candidate) in candidates {
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
                    read_windows(conn, candidate.id, res, fetch_from, raw.to, with_sketch)?;
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
                let (values, _) = chunks::read(conn, candidate.id, fetch_from, raw.to, None)?;
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
                name: name.clone(),
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

/// A value the rollups take: floats and integers (booleans and strings are not rolled up).
pub(crate) fn number(value: &FieldValue) -> Option<f64> {
    match value {
        FieldValue::F64(v) => Some(*v),
        FieldValue::I64(v) => Some(*v as f64),
        FieldValue::Bool(_) | FieldValue::Str(_) => None,
    }
}
