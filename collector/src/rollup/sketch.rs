//! [`Sketch`]: the quantile sketch of a rollup window, a DDSketch (Masson, Rim and Lee, 2019)
//! with sparse bins.
//!
//! A value `v > 1e-9` counts in the bin `floor(ln v / ln γ)` with `γ = 1.01 / 0.99`, a value
//! below `-1e-9` in the bin of `-v` among the negatives, and anything between as a zero. A
//! quantile is the value of the bin holding its rank, `γ^key · 2γ / (1 + γ)`, which is within
//! 1 % of the value at that rank. Bin counts add, so sketches merge exactly.
//!
//! The mapping, the rank rule and the bin limit (2,048 per sign, the lowest collapsing into
//! the lowest kept) are those of `sketches-ddsketch` 0.4 with the configuration this collector
//! used through schema 6, so quantiles read before and after the change of storage agree bit
//! for bit (a test compares them). Bins are kept sparse, a sorted `(key, count)` list, because
//! a window of a minute holds a handful of distinct bins: a dense store allocated 128 of them
//! per sign.
//!
//! [`Sketch::from_portable`] reads DataDog's portable binary format, in which schema 6 and
//! earlier stored sketches, so old databases convert.

/// Relative accuracy of the quantiles: a reported p99 is within 1 % of a value whose rank is
/// the 99th percentile's.
pub const RELATIVE_ACCURACY: f64 = 0.01;
/// Most bins per sign; with 1 % accuracy, 2,048 bins span 17 orders of magnitude before the
/// lowest bins collapse.
const MAX_BINS: i64 = 2048;
/// Values closer to zero than this count as zero.
pub const MIN_VALUE: f64 = 1e-9;

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

/// The bin of a value above [`MIN_VALUE`].
pub fn key(v: f64) -> i32 {
    (v.ln() / gamma().ln()).floor() as i32
}

/// The value a bin stands for.
pub fn value(key: i32) -> f64 {
    let g = gamma();
    (f64::from(key) * g.ln()).exp() * (2.0 * g / (1.0 + g))
}

/// The quantile sketch of a window (module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sketch {
    /// Bins of positive values, by key, counts above zero.
    pub positive: Vec<(i32, u64)>,
    /// Bins of negative values (keyed by the magnitude), by key.
    pub negative: Vec<(i32, u64)>,
    /// Values within [`MIN_VALUE`] of zero.
    pub zero: u64,
}

fn add_to(bins: &mut Vec<(i32, u64)>, key: i32, count: u64) {
    match bins.binary_search_by_key(&key, |(k, _)| *k) {
        Ok(at) => {
            if let Some(bin) = bins.get_mut(at) {
                bin.1 = bin.1.saturating_add(count);
            }
        }
        Err(at) => bins.insert(at, (key, count)),
    }
    collapse(bins);
}

/// Folds the lowest bins into the lowest kept one while the keys span more than `MAX_BINS`.
fn collapse(bins: &mut Vec<(i32, u64)>) {
    let (Some(first), Some(last)) = (bins.first(), bins.last()) else {
        return;
    };
    if i64::from(last.0).saturating_sub(i64::from(first.0)) < MAX_BINS {
        return;
    }
    let floor = i32::try_from(i64::from(last.0).saturating_sub(MAX_BINS).saturating_add(1))
        .unwrap_or(last.0);
    let cut = bins.partition_point(|(k, _)| *k < floor);
    let folded: u64 = bins
        .drain(..cut)
        .fold(0u64, |sum, (_, c)| sum.saturating_add(c));
    match bins.first_mut() {
        Some(bin) if bin.0 == floor => bin.1 = bin.1.saturating_add(folded),
        _ => bins.insert(0, (floor, folded)),
    }
}

fn merge_into(bins: &mut Vec<(i32, u64)>, other: &[(i32, u64)]) {
    if other.is_empty() {
        return;
    }
    if bins.is_empty() {
        bins.extend_from_slice(other);
        return;
    }
    let mut merged = Vec::with_capacity(bins.len().saturating_add(other.len()));
    let (mut a, mut b) = (bins.iter().peekable(), other.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                merged.push((x.0, x.1.saturating_add(y.1)));
                a.next();
                b.next();
            }
            (Some(x), Some(y)) if x.0 < y.0 => {
                merged.push(**x);
                a.next();
            }
            (_, Some(y)) => {
                merged.push(**y);
                b.next();
            }
            (Some(x), None) => {
                merged.push(**x);
                a.next();
            }
            (None, None) => break,
        }
    }
    *bins = merged;
    collapse(bins);
}

fn total(bins: &[(i32, u64)]) -> u64 {
    bins.iter().fold(0u64, |sum, (_, c)| sum.saturating_add(*c))
}

/// The key of the bin holding the value of rank `rank` (0 the lowest key).
fn key_at_rank(bins: &[(i32, u64)], rank: u64) -> Option<i32> {
    let mut seen = 0u64;
    for (key, count) in bins {
        seen = seen.saturating_add(*count);
        if seen > rank {
            return Some(*key);
        }
    }
    bins.last().map(|(k, _)| *k)
}

impl Sketch {
    pub fn add(&mut self, v: f64) {
        self.add_n(v, 1);
    }

    /// Adds `v` `n` times.
    pub fn add_n(&mut self, v: f64, n: u64) {
        if n == 0 {
            return;
        }
        if v > MIN_VALUE {
            add_to(&mut self.positive, key(v), n);
        } else if v < -MIN_VALUE {
            add_to(&mut self.negative, key(-v), n);
        } else {
            self.zero = self.zero.saturating_add(n);
        }
    }

    pub fn merge(&mut self, other: &Sketch) {
        merge_into(&mut self.positive, &other.positive);
        merge_into(&mut self.negative, &other.negative);
        self.zero = self.zero.saturating_add(other.zero);
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        total(&self.positive)
            .saturating_add(total(&self.negative))
            .saturating_add(self.zero)
    }

    /// The value at quantile `q` (0 to 1), `None` for an empty sketch.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = (q * (count as f64 - 1.0)) as u64;
        let negatives = total(&self.negative);
        if rank < negatives {
            let reversed = negatives.saturating_sub(rank).saturating_sub(1);
            Some(-value(key_at_rank(&self.negative, reversed)?))
        } else if rank < negatives.saturating_add(self.zero) {
            Some(0.0)
        } else {
            let rest = rank.saturating_sub(negatives).saturating_sub(self.zero);
            Some(value(key_at_rank(&self.positive, rest)?))
        }
    }

    /// Reads a sketch in DataDog's portable binary format (as `sketches-ddsketch` writes it:
    /// flag bytes, each followed by its data; stores in any of the three bin encodings).
    pub fn from_portable(bytes: &[u8]) -> Result<Sketch, String> {
        let mut input = Portable { bytes, at: 0 };
        let mut sketch = Sketch::default();
        while let Some(flag) = input.next_byte() {
            let subflag = flag >> 2;
            match flag & 3 {
                // The index mapping: gamma and offset, those of this sketch.
                2 => {
                    input.take(16)?;
                }
                0 => match flag {
                    // Zero count.
                    0x04 => sketch.zero = sketch.zero.saturating_add(input.var_double()? as u64),
                    // Count.
                    0xa0 => {
                        input.var_double()?;
                    }
                    // Sum, min, max.
                    0x84 | 0x88 | 0x8c => {
                        input.take(8)?;
                    }
                    other => return Err(format!("unknown sketch flag 0x{other:02x}")),
                },
                store => {
                    let bins = if store == 1 {
                        &mut sketch.positive
                    } else {
                        &mut sketch.negative
                    };
                    let n = input.var_long()?;
                    let mut index = 0i64;
                    match subflag {
                        1 | 2 => {
                            for _ in 0..n {
                                index = index.saturating_add(input.signed_var_long()?);
                                let count = if subflag == 1 {
                                    input.var_double()? as u64
                                } else {
                                    1
                                };
                                add_to(bins, clamp_key(index), count);
                            }
                        }
                        3 => {
                            index = input.signed_var_long()?;
                            let step = input.signed_var_long()?;
                            for _ in 0..n {
                                let count = input.var_double()? as u64;
                                add_to(bins, clamp_key(index), count);
                                index = index.saturating_add(step);
                            }
                        }
                        other => return Err(format!("unknown bin encoding {other}")),
                    }
                }
            }
        }
        sketch.positive.retain(|(_, c)| *c > 0);
        sketch.negative.retain(|(_, c)| *c > 0);
        Ok(sketch)
    }
}

fn clamp_key(index: i64) -> i32 {
    i32::try_from(index).unwrap_or(if index < 0 { i32::MIN } else { i32::MAX })
}

/// A reader of the portable format's primitives.
struct Portable<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Portable<'_> {
    fn next_byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at = self.at.saturating_add(1);
        Some(b)
    }

    fn byte(&mut self) -> Result<u8, String> {
        self.next_byte()
            .ok_or_else(|| "a sketch ends inside a value".to_owned())
    }

    fn take(&mut self, n: usize) -> Result<(), String> {
        let end = self.at.saturating_add(n);
        if end > self.bytes.len() {
            return Err("a sketch ends inside a value".to_owned());
        }
        self.at = end;
        Ok(())
    }

    fn var_long(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            if b < 0x80 || shift == 56 {
                return Ok(value | u64::from(b).checked_shl(shift).unwrap_or(0));
            }
            value |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
            shift = shift.saturating_add(7);
        }
    }

    fn signed_var_long(&mut self) -> Result<i64, String> {
        let v = self.var_long()?;
        Ok(((v >> 1) as i64) ^ ((v & 1) as i64).wrapping_neg())
    }

    fn var_double(&mut self) -> Result<f64, String> {
        let mut bits = 0u64;
        let mut shift = 57i32;
        loop {
            let b = self.byte()?;
            if shift == 1 {
                bits |= u64::from(b);
                break;
            }
            let part = u64::from(b & 0x7f)
                .checked_shl(u32::try_from(shift).unwrap_or(0))
                .unwrap_or(0);
            bits |= part;
            if b < 0x80 {
                break;
            }
            shift = shift.saturating_sub(7);
        }
        Ok(f64::from_bits(bits.rotate_right(6).wrapping_add(1f64.to_bits())) - 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sketches_ddsketch::{Config, DDSketch};

    fn reference() -> DDSketch {
        DDSketch::new(Config::new(RELATIVE_ACCURACY, 2048, MIN_VALUE))
    }

    proptest! {
        /// The same quantiles, bit for bit, as the sketch this collector stored before, and
        /// the stored bytes of that sketch read back into the same bins.
        #[test]
        fn agrees_with_the_sketch_it_replaced(
            values in proptest::collection::vec(prop_oneof![
                -1e6f64..1e6,
                (-100f64..100.0).prop_map(|v| (v * 100.0).round() / 100.0),
                Just(0.0),
                Just(1e-12),
                1e-300f64..1e300,
            ], 1..300),
            split in 0usize..300,
        ) {
            let mut theirs = reference();
            let (mut a, mut b) = (Sketch::default(), Sketch::default());
            for (i, v) in values.iter().enumerate() {
                theirs.add(*v);
                if i < split { a.add(*v) } else { b.add(*v) }
            }
            a.merge(&b);
            for q in [0.01, 0.25, 0.5, 0.9, 0.99] {
                prop_assert_eq!(a.quantile(q), theirs.quantile(q).unwrap());
            }
            let read = Sketch::from_portable(&theirs.to_java_bytes()).unwrap();
            prop_assert_eq!(&read, &a);
        }

        #[test]
        fn any_bytes_read_to_a_sketch_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(sketch) = Sketch::from_portable(&bytes) {
                let _ = sketch.quantile(0.5);
            }
        }
    }

    #[test]
    fn a_wide_range_collapses_its_lowest_bins() {
        let mut sketch = Sketch::default();
        let mut theirs = reference();
        for e in -200..200 {
            let v = 10f64.powi(e);
            sketch.add(v);
            theirs.add(v);
        }
        assert!(sketch.positive.len() <= 2048);
        assert_eq!(sketch.count(), 400);
        assert_eq!(sketch.quantile(0.99), theirs.quantile(0.99).unwrap());
    }
}
