//! `*_over_time` from stored windows: when a source keeps partial aggregates (count, sum, min,
//! max, the value at the window's start) over windows that tile a query's range and step,
//! `count_over_time`, `sum_over_time`, `avg_over_time`, `min_over_time` and `max_over_time`
//! are answered from them instead of from every raw sample.
//!
//! Prometheus 2's window `[t - range, t]` is closed at both ends, the stored windows
//! `[start, start + width)` are closed at the start only: with `t - range` and `range` on the
//! window grid, the windows starting in `[t - range, t)` hold every sample of the range but
//! the one at `t` itself, which is the first value of the window starting at `t` when that
//! window's first sample sits at its start. So the answer is the merge of those windows and
//! that one value: the samples are the same, and so are the numbers (the sums to rounding).
//!
//! A source gives windows only for series where this is exact (see
//! [`Source::windows`](super::Source::windows)); the others come back raw and go the usual way.

use std::sync::Arc;

use super::{Labels, Series};

/// The functions this path answers.
pub const FUNCTIONS: [&str; 5] = [
    "count_over_time",
    "sum_over_time",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
];

/// Whether `name` is a function the windows can answer.
pub fn answers(name: &str) -> bool {
    FUNCTIONS.contains(&name)
}

/// The evaluation times a selector is read for: `from + k·step` up to `to` (ms; a single
/// time when `from == to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub from: i64,
    pub to: i64,
    pub step: i64,
}

impl Grid {
    /// Whether windows of `width` (ms) hold every range of length `range` ending at a time of
    /// the grid exactly: the range, the first time and the step are multiples of it.
    pub fn tiled_by(&self, width: i64, range: i64) -> bool {
        width > 0
            && range > 0
            && range.rem_euclid(width) == 0
            && self.from.rem_euclid(width) == 0
            && (self.from == self.to || (self.step > 0 && self.step.rem_euclid(width) == 0))
    }
}

impl Grid {
    /// The widest of `widths` (ms) that tiles ranges of `range` ending on the grid.
    pub fn coarsest(&self, widths: impl Iterator<Item = i64>, range: i64) -> Option<i64> {
        widths.filter(|&w| self.tiled_by(w, range)).max()
    }
}

/// The partial aggregate of one window of one series (stale markers left out).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Partial {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    /// The value of the sample exactly at the window's start, if there is one.
    pub at_start: Option<f64>,
}

impl Partial {
    /// The partial of one value.
    pub fn one(value: f64) -> Partial {
        Partial {
            count: 1,
            sum: value,
            min: value,
            max: value,
            at_start: None,
        }
    }

    /// Folds `other` in (its `at_start` is not carried).
    pub fn merge(&mut self, other: &Partial) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = Partial {
                at_start: None,
                ..*other
            };
            return;
        }
        self.count = self.count.saturating_add(other.count);
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

/// One series as windows, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Windowed {
    pub labels: Arc<Labels>,
    /// `(start ms, partial)`, by start.
    pub windows: Vec<(i64, Partial)>,
}

/// A selector read as windows: the series the windows answer exactly, and the others raw
/// (their samples over the whole span, as [`Source::select`](super::Source::select) gives).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rolled {
    /// The windows' width (ms).
    pub width: i64,
    pub windowed: Vec<Windowed>,
    pub raw: Vec<Series>,
}

impl Windowed {
    /// The partial of the samples in `[reference - range, reference]`: the windows starting
    /// in `[reference - range, reference)` and the sample at `reference`, if any. `None` when
    /// `reference` is off the grid of `width` (a caller's mistake: never answered wrongly).
    pub fn range(&self, width: i64, reference: i64, range: i64) -> Option<Partial> {
        if width <= 0
            || reference.rem_euclid(width) != 0
            || range.rem_euclid(width) != 0
            || range <= 0
        {
            return None;
        }
        let from = reference.saturating_sub(range);
        let first = self.windows.partition_point(|w| w.0 < from);
        let end = self.windows.partition_point(|w| w.0 < reference);
        let mut total = Partial {
            count: 0,
            sum: 0.0,
            min: f64::NAN,
            max: f64::NAN,
            at_start: None,
        };
        for (_, partial) in self.windows.get(first..end).unwrap_or_default() {
            total.merge(partial);
        }
        if let Some((start, partial)) = self.windows.get(end)
            && *start == reference
            && let Some(value) = partial.at_start
        {
            total.merge(&Partial::one(value));
        }
        Some(total)
    }
}

/// The value of `function` over a range's partial; `None` when the range holds no sample.
pub fn value(function: &str, partial: &Partial) -> Option<f64> {
    if partial.count == 0 {
        return None;
    }
    Some(match function {
        "count_over_time" => partial.count as f64,
        "sum_over_time" => partial.sum,
        "avg_over_time" => partial.sum / partial.count as f64,
        "min_over_time" => partial.min,
        "max_over_time" => partial.max,
        _ => return None,
    })
}

/// Windows of `width` (ms) over `samples` (oldest first; stale markers left out), as a store
/// keeps them.
pub fn windows_of(samples: &[(i64, f64)], width: i64) -> Vec<(i64, Partial)> {
    let mut out: Vec<(i64, Partial)> = Vec::new();
    if width <= 0 {
        return out;
    }
    for &(ts, value) in samples {
        if super::is_stale(value) {
            continue;
        }
        let start = ts.div_euclid(width).saturating_mul(width);
        let one = Partial {
            at_start: (ts == start).then_some(value),
            ..Partial::one(value)
        };
        match out.last_mut() {
            Some((s, partial)) if *s == start => partial.merge(&one),
            _ => out.push((start, one)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grid_is_tiled_when_range_first_time_and_step_are_multiples() {
        let grid = Grid {
            from: 120_000,
            to: 600_000,
            step: 60_000,
        };
        assert!(grid.tiled_by(60_000, 300_000));
        assert!(!grid.tiled_by(60_000, 90_000));
        assert!(
            !grid.tiled_by(120_000, 240_000),
            "the step is not a multiple"
        );
        let instant = Grid {
            from: 3_600_000,
            to: 3_600_000,
            step: 0,
        };
        assert!(instant.tiled_by(3_600_000, 3_600_000));
        assert!(!instant.tiled_by(60_000, 0));
    }

    #[test]
    fn a_range_is_its_windows_and_the_sample_at_its_end() {
        let samples = [(0, 1.0), (30_000, 2.0), (60_000, 3.0), (90_000, 10.0)];
        let series = Windowed {
            labels: Arc::default(),
            windows: windows_of(&samples, 60_000),
        };
        // [0, 60000]: 1, 2 and 3 (the sample at the end), not 10.
        let p = series.range(60_000, 60_000, 60_000).unwrap();
        assert_eq!((p.count, p.sum, p.min, p.max), (3, 6.0, 1.0, 3.0));
        // [60000, 120000]: 3 and 10.
        let p = series.range(60_000, 120_000, 60_000).unwrap();
        assert_eq!((p.count, p.sum), (2, 13.0));
        assert_eq!(value("avg_over_time", &p), Some(6.5));
        // Nothing before the first sample.
        let p = series.range(60_000, -60_000, 60_000).unwrap();
        assert_eq!(value("sum_over_time", &p), None);
        // Off the grid: no answer rather than a wrong one.
        assert_eq!(series.range(60_000, 90_000, 60_000), None);
    }
}
