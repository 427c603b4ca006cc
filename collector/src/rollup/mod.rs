//! Rollups: partial aggregates per numeric series at fixed resolutions (default 1m, 1h, 1d),
//! kept as [`Aggregate`]s that merge, so late points fold into the windows they belong to.
//!
//! The storage writer builds them in the same transaction as the raw points
//! (`storage::sqlite::rollups`); this module holds what does not depend on storage: window
//! arithmetic, the choice of resolution for a query, and bucketing with moving windows.

pub mod aggregate;
pub mod sketch;

pub use aggregate::{Agg, Aggregate, SKETCH_RELATIVE_ACCURACY};

/// Nanoseconds in a second.
pub const SECOND: i64 = 1_000_000_000;

/// One resolution kept, with how long its windows are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    /// Window length (ns).
    pub step: i64,
    /// Windows that ended longer ago than this are deleted; `None` keeps them forever.
    pub retention: Option<i64>,
}

/// The default resolutions: 1 minute (kept 90 days), 1 hour (2 years), 1 day (forever),
/// as `[rollups]` and `[retention]` default to.
pub fn default_resolutions() -> Vec<Resolution> {
    const MINUTE: i64 = 60 * SECOND;
    const DAY: i64 = 1440 * MINUTE;
    vec![
        Resolution {
            step: MINUTE,
            retention: Some(90 * DAY),
        },
        // "2y" as the configuration reads it: 730.5 days.
        Resolution {
            step: 60 * MINUTE,
            retention: Some(63_115_200 * SECOND),
        },
        Resolution {
            step: DAY,
            retention: None,
        },
    ]
}

/// The start of the window of length `step` holding `ts` (windows are aligned to the Unix
/// epoch, so every resolution's windows nest in the coarser ones).
pub fn window_start(ts: i64, step: i64) -> i64 {
    // Only the first window of time is cut short (it cannot start before i64::MIN).
    ts.checked_sub(ts.rem_euclid(step)).unwrap_or(i64::MIN)
}

/// A window of one series: (series id, resolution step, window start).
pub type WindowKey = (i64, i64, i64);

/// The partial aggregates of `values` (series id, ts, value; sorted by series, then time) at
/// every resolution, one level per resolution, finest first, each sorted by series and start:
/// the finest from the values, each coarser one from the finer partials. Non-finite values are
/// left out (see [`Aggregate`]).
pub fn partials(
    values: &[(i64, i64, f64)],
    resolutions: &[Resolution],
) -> Vec<Vec<(WindowKey, Aggregate)>> {
    let Some(finest) = resolutions.first().map(|r| r.step) else {
        return Vec::new();
    };
    let mut level: Vec<(WindowKey, Aggregate)> = Vec::new();
    for &(series, ts, value) in values {
        if !value.is_finite() {
            continue;
        }
        let key = (series, finest, window_start(ts, finest));
        match level.last_mut() {
            Some((last, aggregate)) if *last == key => aggregate.add(ts, value),
            _ => {
                let mut aggregate = Aggregate::new();
                aggregate.add(ts, value);
                level.push((key, aggregate));
            }
        }
    }
    let mut levels = Vec::with_capacity(resolutions.len());
    for coarser in resolutions.iter().skip(1) {
        let mut next: Vec<(WindowKey, Aggregate)> = Vec::new();
        for ((series, _, start), partial) in &level {
            let key = (*series, coarser.step, window_start(*start, coarser.step));
            match next.last_mut() {
                Some((last, aggregate)) if *last == key => aggregate.merge(partial),
                _ => next.push((key, partial.clone())),
            }
        }
        levels.push(std::mem::replace(&mut level, next));
    }
    levels.push(level);
    levels
}

/// The coarsest resolution (index into `resolutions`, finest first) that can answer buckets
/// of `step` over `[from, to)` exactly: its windows must tile every bucket and the range.
/// `None`: only the raw points can.
pub fn choose_resolution(
    resolutions: &[Resolution],
    step: i64,
    from: i64,
    to: i64,
) -> Option<usize> {
    resolutions
        .iter()
        .enumerate()
        .rev()
        .find(|(_, r)| {
            step.checked_rem(r.step) == Some(0)
                && (from == i64::MIN || from.checked_rem_euclid(r.step) == Some(0))
                && (to == i64::MAX || to.checked_rem_euclid(r.step) == Some(0))
        })
        .map(|(index, _)| index)
}

/// Groups `(window start, aggregate)` pairs, sorted by start, into buckets of `step`;
/// returns `(bucket start, merged aggregate)` sorted by start, empty buckets left out.
pub fn into_buckets(
    windows: impl IntoIterator<Item = (i64, Aggregate)>,
    step: i64,
) -> Vec<(i64, Aggregate)> {
    let mut out: Vec<(i64, Aggregate)> = Vec::new();
    for (start, aggregate) in windows {
        let bucket = window_start(start, step);
        match out.last_mut() {
            Some((last, merged)) if *last == bucket => merged.merge(&aggregate),
            _ => out.push((bucket, aggregate)),
        }
    }
    out
}

/// A moving aggregate at every step: the value at `t` merges the buckets that start in
/// `(t - window, t]`, i.e. the trailing `window` ending with bucket `t`. Steps run from the
/// first bucket until the window has passed the last one (or `end`, exclusive), and steps whose
/// window holds no data are left out.
pub fn moving(
    buckets: &[(i64, Aggregate)],
    window: i64,
    step: i64,
    end: i64,
) -> Vec<(i64, Aggregate)> {
    let (Some(first), Some(last)) = (buckets.first(), buckets.last()) else {
        return Vec::new();
    };
    if step <= 0 {
        return Vec::new();
    }
    let window = window.max(step);
    let stop = last.0.saturating_add(window).min(end);
    let mut out = Vec::new();
    let (mut lo, mut hi) = (0usize, 0usize);
    let starts_at = |i: usize| buckets.get(i).map(|(start, _)| *start);
    let mut t = first.0;
    while t < stop {
        while starts_at(hi).is_some_and(|start| start <= t) {
            hi = hi.saturating_add(1);
        }
        let horizon = t.saturating_sub(window);
        while lo < hi && starts_at(lo).is_some_and(|start| start <= horizon) {
            lo = lo.saturating_add(1);
        }
        if let Some(window) = buckets.get(lo..hi).filter(|w| !w.is_empty()) {
            let mut merged = Aggregate::new();
            for (_, aggregate) in window {
                merged.merge(aggregate);
            }
            out.push((t, merged));
        }
        let Some(next) = t.checked_add(step) else {
            break;
        };
        t = next;
    }
    out
}

#[cfg(test)]
mod tests;
