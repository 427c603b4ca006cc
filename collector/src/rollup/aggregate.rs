//! [`Aggregate`]: the partial aggregate of one window of one numeric series, which merges.
//!
//! Everything in it is order-independent, so a window built from points in any order and any
//! split into batches, merged in any order, gives the same answer:
//! - `count`, `min`, `max` are exact;
//! - `first` and `last` are the values at the smallest and largest timestamp; equal timestamps
//!   are broken by the value (smaller first), not by arrival;
//! - the quantile sketch ([`Sketch`], a DDSketch of relative accuracy 1 %) counts values in
//!   logarithmic bins, and bin counts add exactly;
//! - `sum` is kept as an unevaluated pair of doubles (`hi + lo`, error-free transformations), so
//!   it carries about 106 bits and rounds to the same double whatever the order, except for
//!   sums that cancel beyond that precision;
//! - `stddev` comes from the sum of squared deviations, merged with Chan's formula; it agrees
//!   across orders to about 1e-12 relative (floating point), not bit for bit.
//!
//! Non-finite values (NaN, ±inf) are not aggregated: they would poison every figure of the
//! window. The raw value is still stored.

use super::sketch::Sketch;

pub use super::sketch::RELATIVE_ACCURACY as SKETCH_RELATIVE_ACCURACY;

/// An aggregation a query can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Agg {
    Count,
    Sum,
    Min,
    Max,
    Mean,
    Stddev,
    First,
    Last,
    P50,
    P90,
    P99,
}

impl Agg {
    pub const ALL: [Agg; 11] = [
        Agg::Count,
        Agg::Sum,
        Agg::Min,
        Agg::Max,
        Agg::Mean,
        Agg::Stddev,
        Agg::First,
        Agg::Last,
        Agg::P50,
        Agg::P90,
        Agg::P99,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Agg::Count => "count",
            Agg::Sum => "sum",
            Agg::Min => "min",
            Agg::Max => "max",
            Agg::Mean => "mean",
            Agg::Stddev => "stddev",
            Agg::First => "first",
            Agg::Last => "last",
            Agg::P50 => "p50",
            Agg::P90 => "p90",
            Agg::P99 => "p99",
        }
    }

    pub fn parse(text: &str) -> Option<Agg> {
        Agg::ALL.into_iter().find(|a| a.name() == text)
    }

    /// The quantile this aggregation reads from the sketch, if it is one.
    pub fn quantile(self) -> Option<f64> {
        match self {
            Agg::P50 => Some(0.5),
            Agg::P90 => Some(0.9),
            Agg::P99 => Some(0.99),
            _ => None,
        }
    }
}

/// The partial aggregate of a window.
#[derive(Clone)]
pub struct Aggregate {
    pub count: u64,
    pub(crate) sum_hi: f64,
    pub(crate) sum_lo: f64,
    /// Sum of squared deviations from the mean.
    pub(crate) m2: f64,
    pub min: f64,
    pub max: f64,
    /// (ts, value) at the smallest timestamp.
    pub first: (i64, f64),
    /// (ts, value) at the largest timestamp.
    pub last: (i64, f64),
    pub(crate) sketch: Sketch,
}

impl std::fmt::Debug for Aggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregate")
            .field("count", &self.count)
            .field("sum", &self.sum())
            .field("min", &self.min)
            .field("max", &self.max)
            .field("first", &self.first)
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl Default for Aggregate {
    fn default() -> Self {
        Aggregate::new()
    }
}

/// `a + b` as a rounded sum and its exact error (Knuth's TwoSum).
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    let err = (a - (s - bb)) + (b - bb);
    (s, err)
}

/// Whether `a` comes before `b`: by timestamp, then by value.
fn earlier(a: (i64, f64), b: (i64, f64)) -> bool {
    a.0 < b.0 || (a.0 == b.0 && a.1.total_cmp(&b.1).is_lt())
}

impl Aggregate {
    pub fn new() -> Aggregate {
        Aggregate {
            count: 0,
            sum_hi: 0.0,
            sum_lo: 0.0,
            m2: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            first: (i64::MAX, 0.0),
            last: (i64::MIN, 0.0),
            sketch: Sketch::default(),
        }
    }

    /// The sum, rounded once: `hi` is kept as the rounded value of `hi + lo`.
    /// The sum (`hi + lo` is `hi` while both are finite: `lo` is below half an ulp of it).
    pub fn sum(&self) -> f64 {
        self.sum_hi + self.sum_lo
    }

    fn add_to_sum(&mut self, hi: f64, lo: f64) {
        let plain = self.sum_hi + hi;
        if !plain.is_finite() || !self.sum_lo.is_finite() || !lo.is_finite() {
            // Past the range of f64 the compensation means nothing: the sum is an infinity
            // (or NaN, once both signs have overflowed), kept as that.
            self.sum_hi = plain + self.sum_lo + lo;
            self.sum_lo = 0.0;
            return;
        }
        let (s, e) = two_sum(self.sum_hi, hi);
        let e = e + self.sum_lo + lo;
        let (s, e) = two_sum(s, e);
        self.sum_hi = s;
        self.sum_lo = e;
    }

    /// Adds one value observed at `ts`. Non-finite values are ignored (module docs).
    pub fn add(&mut self, ts: i64, value: f64) {
        if !value.is_finite() {
            return;
        }
        let old_mean = if self.count == 0 {
            0.0
        } else {
            self.sum() / self.count as f64
        };
        self.count = self.count.saturating_add(1);
        self.add_to_sum(value, 0.0);
        let new_mean = self.sum() / self.count as f64;
        if self.count > 1 {
            self.m2 += (value - old_mean) * (value - new_mean);
        }
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if self.count == 1 || earlier((ts, value), self.first) {
            self.first = (ts, value);
        }
        if self.count == 1 || earlier(self.last, (ts, value)) {
            self.last = (ts, value);
        }
        self.sketch.add(value);
    }

    /// Folds `other` in, as if its values had been added here.
    pub fn merge(&mut self, other: &Aggregate) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = other.clone();
            return;
        }
        let (na, nb) = (self.count as f64, other.count as f64);
        let delta = other.sum() / nb - self.sum() / na;
        self.m2 += other.m2 + delta * delta * na * nb / (na + nb);
        self.count = self.count.saturating_add(other.count);
        self.add_to_sum(other.sum_hi, other.sum_lo);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if earlier(other.first, self.first) {
            self.first = other.first;
        }
        if earlier(self.last, other.last) {
            self.last = other.last;
        }
        self.sketch.merge(&other.sketch);
    }

    /// The value of `agg`, or `None` where it is undefined (an empty window; stddev of one value).
    pub fn value(&self, agg: Agg) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        Some(match agg {
            Agg::Count => self.count as f64,
            Agg::Sum => self.sum(),
            Agg::Min => self.min,
            Agg::Max => self.max,
            Agg::Mean => self.sum() / self.count as f64,
            Agg::Stddev => {
                if self.count < 2 {
                    return None;
                }
                (self.m2.max(0.0) / self.count.saturating_sub(1) as f64).sqrt()
            }
            Agg::First => self.first.1,
            Agg::Last => self.last.1,
            Agg::P50 | Agg::P90 | Agg::P99 => {
                let q = agg.quantile().unwrap_or(0.5);
                self.sketch.quantile(q)?
            }
        })
    }

    /// Rebuilds an aggregate from a row of the `rollups` table of schema 6 and older (its
    /// columns and its state blob: version 1, `sum_lo`, `m2` as little-endian f64, then the
    /// sketch in DataDog's portable format). Without `with_sketch`, the sketch is left empty.
    pub fn from_stored(
        columns: &StoredColumns,
        blob: &[u8],
        with_sketch: bool,
    ) -> Result<Aggregate, String> {
        let (Some(1), Some(sum_lo), Some(m2), Some(sketch_bytes)) = (
            blob.first().copied(),
            blob.get(1..9),
            blob.get(9..17),
            blob.get(17..),
        ) else {
            return Err("rollup state blob has an unknown layout".into());
        };
        let f = |bytes: &[u8]| f64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]));
        let (sum_lo, m2) = (f(sum_lo), f(m2));
        let sketch = if with_sketch {
            Sketch::from_portable(sketch_bytes).map_err(|e| format!("rollup sketch: {e}"))?
        } else {
            Sketch::default()
        };
        Ok(Aggregate {
            count: columns.count,
            sum_hi: columns.sum,
            sum_lo,
            m2,
            min: columns.min,
            max: columns.max,
            first: columns.first,
            last: columns.last,
            sketch,
        })
    }
}

/// The plain columns of a row of the `rollups` table of schema 6 and older.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoredColumns {
    pub count: u64,
    /// The rounded sum (`hi`); the blob keeps the rounding error (`lo`).
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub first: (i64, f64),
    pub last: (i64, f64),
}
