//! The rollup block format: the windows of one series at one resolution over
//! [`WINDOWS_PER_BLOCK`] steps (an hour of 1-minute windows, 60 hours of 1-hour windows), in one
//! value, whatever the backend that keeps it.
//!
//! A row per window cost ~190 bytes (a b-tree entry, eight 8-byte columns and a 70-byte
//! sketch); a window in a block costs 10 to 30. A block is the byte `0xb1` (format 1), then one
//! record per window that holds data, in time order. Each record is written against the one
//! before it (its *context*: the window's index, count, time offsets, last value and decimal
//! scale; the first record's context is all zero), so a regular series costs little:
//!
//! - **flags** (LEB128): bit 0 the count is the context's, bit 1 so are the offsets of the
//!   first and last time from the window's start, bit 2 the five values below are decimals,
//!   bit 3 at the context's scale, bit 4 the sketch follows (else it is implied), bit 5 the
//!   extras byte follows, bit 6 the sketch is dense; the bits from 7 up are the number of empty
//!   windows skipped since the context's;
//! - the **count** (LEB128) and the two **offsets** (zigzag LEB128: first − start, last −
//!   first), unless the flags say they repeat;
//! - the **values** first, min, max, last and the rounded sum: as decimals, a scale byte
//!   (unless it repeats) and five zigzag LEB128 mantissa differences: first from the context's
//!   last value at this scale, min, max and last from first, the sum from first × count; else
//!   five little-endian f64;
//! - the **extras**, only when one is not zero: a byte with the lengths of the sum's rounding
//!   error (high nibble) and of the sum of squared deviations (low nibble), then each as its
//!   bits reversed, little-endian, without the zero bytes (a value with few significant bits
//!   takes few bytes). A low nibble of 15 (decimal values only) says the sum of squared
//!   deviations is instead `multiple / (count · 100^scale)` (what it is exactly for decimals)
//!   corrected by a number of units in the last place, both zigzag LEB128;
//! - the **sketch** unless it is implied (a window of one or two values, or of equal values,
//!   has the sketch of its min and max): `positive bins << 1 | more`, then if `more` the zero
//!   count and the number of negative bins; each sign's keys from the key of the min (positive)
//!   or of the max (negative) as zigzag, then the gaps to the next key minus one; then the
//!   counts minus one. All LEB128. A dense sketch (positive values only, a bin for every key
//!   from the min's to the max's, as most windows of a wandering reading have) is only the
//!   counts minus one of every bin but the last, which holds the rest of the count.
//!
//! Every value round-trips bit for bit, NaN sums, infinities and −0.0 included (property tests),
//! and decoding returns an error, never panics, on any bytes (`fuzz`).

use super::codec::{
    Bytes, CodecError, MAX_SCALE, POW10, at_scale, error, put_varint, unzigzag, zigzag,
};
use crate::rollup::aggregate::Aggregate;
use crate::rollup::sketch::{self, Sketch};

/// The first byte of a block: format 1.
pub const BLOCK: u8 = 0xb1;
/// Windows a block spans.
pub const WINDOWS_PER_BLOCK: i64 = 60;

const SAME_COUNT: u64 = 1;
const SAME_OFFSETS: u64 = 2;
const DECIMAL: u64 = 4;
const SAME_SCALE: u64 = 8;
const SKETCH: u64 = 16;
const EXTRAS: u64 = 32;
const DENSE: u64 = 64;
const GAP_SHIFT: u32 = 7;
/// The extras' length nibble that says the sum of squared deviations is written as a
/// multiple of `1 / (count · 100^scale)` and a correction in units in the last place.
const M2_DECIMAL: u8 = 15;

/// The start of the block holding the window that starts at `window` (resolution `step`).
pub fn block_start(window: i64, step: i64) -> i64 {
    crate::rollup::window_start(window, step.saturating_mul(WINDOWS_PER_BLOCK))
}

/// What a record is written against: the record before it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Context {
    index: i64,
    count: u64,
    first_offset: i64,
    last_offset: i64,
    last: f64,
    scale: u8,
}

impl Default for Context {
    fn default() -> Self {
        Context {
            index: -1,
            count: 0,
            first_offset: 0,
            last_offset: 0,
            last: 0.0,
            scale: 0,
        }
    }
}

/// Builds a block window by window.
#[derive(Debug, Clone)]
pub struct Encoder {
    block: i64,
    step: i64,
    bytes: Vec<u8>,
    context: Context,
}

impl Encoder {
    /// An empty block starting at `block` (aligned with [`block_start`]) of windows `step` long.
    pub fn new(block: i64, step: i64) -> Encoder {
        Encoder {
            block,
            step,
            bytes: vec![BLOCK],
            context: Context::default(),
        }
    }

    /// The block's start.
    pub fn block(&self) -> i64 {
        self.block
    }

    /// Adds the window starting at `start`, which must lie in the block after every window
    /// added so far.
    pub fn push(&mut self, start: i64, aggregate: &Aggregate) {
        let index = self.index_of(start);
        record(&mut self.bytes, &mut self.context, index, start, aggregate);
    }

    /// The block's bytes with one more window (as [`Encoder::push`]), leaving this one as is.
    pub fn with(&self, start: i64, aggregate: &Aggregate) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.bytes.len().saturating_add(48));
        bytes.extend_from_slice(&self.bytes);
        let mut context = self.context;
        record(
            &mut bytes,
            &mut context,
            self.index_of(start),
            start,
            aggregate,
        );
        bytes
    }

    /// The block's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn index_of(&self, start: i64) -> i64 {
        start
            .saturating_sub(self.block)
            .checked_div(self.step)
            .unwrap_or(0)
            .max(self.context.index.saturating_add(1))
    }
}

/// Encodes whole windows (sorted by start, all in the block) as a block.
pub fn encode(block: i64, step: i64, windows: &[(i64, Aggregate)]) -> Vec<u8> {
    let mut encoder = Encoder::new(block, step);
    for (start, aggregate) in windows {
        encoder.push(*start, aggregate);
    }
    encoder.bytes
}

/// The common decimal scale of `values` and their mantissas, if they all have one.
fn decimal_scale(values: &[f64; 5]) -> Option<(u8, [i64; 5])> {
    let mut scale = 0usize;
    for v in values {
        while at_scale(*v, scale).is_none() {
            scale = scale.saturating_add(1);
            if scale > MAX_SCALE {
                return None;
            }
        }
    }
    let mut mantissas = [0i64; 5];
    for (m, v) in mantissas.iter_mut().zip(values) {
        *m = at_scale(*v, scale)?;
    }
    Some((u8::try_from(scale).ok()?, mantissas))
}

/// The mantissa the context's last value predicts at `scale`.
fn predicted(last: f64, scale: u8) -> i64 {
    let p = POW10.get(usize::from(scale)).copied().unwrap_or(1.0);
    (last * p).round() as i64
}

/// The sketch a window implies without storing one: that of its min and max (module docs).
fn implied_sketch(count: u64, min: f64, max: f64) -> Option<Sketch> {
    let mut sketch = Sketch::default();
    if count == 0 {
        return Some(sketch);
    }
    if min.to_bits() == max.to_bits() {
        sketch.add_n(min, count);
    } else if count == 2 {
        sketch.add(min);
        sketch.add(max);
    } else if count == 1 {
        sketch.add(min);
    } else {
        return None;
    }
    Some(sketch)
}

/// What the sum of squared deviations of `count` decimals at `scale` is a multiple of, about.
fn m2_unit(count: u64, scale: u8) -> f64 {
    let p = POW10.get(usize::from(scale)).copied().unwrap_or(1.0);
    count as f64 * p * p
}

/// `m2` as (multiple, correction in ulps) if that is shorter than its 8 bytes and gives back
/// every bit.
fn m2_decimal(m2: f64, count: u64, scale: u8) -> Option<(i64, i64)> {
    let unit = m2_unit(count, scale);
    let multiple = (m2 * unit).round();
    if !m2.is_finite() || m2 <= 0.0 || !multiple.is_finite() || multiple.abs() > 9.0e15 {
        return None;
    }
    let near = multiple / unit;
    let ulps = (m2.to_bits() as i64).wrapping_sub(near.to_bits() as i64);
    (ulps.unsigned_abs() < 1 << 20
        && f64::from_bits((near.to_bits() as i64).wrapping_add(ulps) as u64).to_bits()
            == m2.to_bits())
    .then_some((multiple as i64, ulps))
}

fn put_float(out: &mut Vec<u8>, v: f64) -> u8 {
    let reversed = v.to_bits().reverse_bits();
    let n = (64u32.saturating_sub(reversed.leading_zeros())).div_ceil(8) as usize;
    out.extend_from_slice(reversed.to_le_bytes().get(..n).unwrap_or_default());
    n as u8
}

fn read_float(bytes: &mut Bytes<'_>, n: usize) -> Result<f64, CodecError> {
    if n > 8 {
        return Err(error("a float longer than 8 bytes"));
    }
    let mut le = [0u8; 8];
    for (slot, b) in le.iter_mut().zip(bytes.take(n)?) {
        *slot = *b;
    }
    Ok(f64::from_bits(u64::from_le_bytes(le).reverse_bits()))
}

fn put_bins(out: &mut Vec<u8>, bins: &[(i32, u64)], predicted: i32) {
    let mut previous: Option<i32> = None;
    for (key, _) in bins {
        match previous {
            None => put_varint(
                out,
                zigzag(i64::from(*key).wrapping_sub(i64::from(predicted))),
            ),
            Some(p) => put_varint(
                out,
                (i64::from(*key).wrapping_sub(i64::from(p)).wrapping_sub(1)) as u64,
            ),
        }
        previous = Some(*key);
    }
    for (_, count) in bins {
        put_varint(out, count.saturating_sub(1));
    }
}

fn read_bins(bytes: &mut Bytes<'_>, n: u64, predicted: i32) -> Result<Vec<(i32, u64)>, CodecError> {
    // A bin takes at least two bytes.
    let left = bytes.data.len().saturating_sub(bytes.at);
    let n = usize::try_from(n)
        .ok()
        .filter(|n| n.saturating_mul(2) <= left)
        .ok_or_else(|| error("more sketch bins than bytes"))?;
    let mut bins = Vec::with_capacity(n);
    let mut key = i64::from(predicted);
    for i in 0..n {
        let word = bytes.varint()?;
        key = if i == 0 {
            key.wrapping_add(unzigzag(word))
        } else {
            key.wrapping_add(word as i64).wrapping_add(1)
        };
        let key = i32::try_from(key).map_err(|_| error("a sketch key out of range"))?;
        bins.push((key, 0));
    }
    for bin in &mut bins {
        bin.1 = bytes.varint()?.saturating_add(1);
    }
    if bins.windows(2).any(|w| matches!(w, [a, b] if a.0 >= b.0)) {
        return Err(error("sketch keys out of order"));
    }
    Ok(bins)
}

fn record(out: &mut Vec<u8>, context: &mut Context, index: i64, start: i64, a: &Aggregate) {
    let first_offset = a.first.0.wrapping_sub(start);
    let last_offset = a.last.0.wrapping_sub(start);
    let values = [a.first.1, a.min, a.max, a.last.1, a.sum_hi];
    let decimals = decimal_scale(&values);
    let sketch_implied = implied_sketch(a.count, a.min, a.max).is_some_and(|s| s == a.sketch);
    let extras = a.sum_lo.to_bits() != 0 || a.m2.to_bits() != 0;
    let gap = index.saturating_sub(context.index).saturating_sub(1).max(0) as u64;
    let mut flags = gap << GAP_SHIFT;
    if a.count == context.count {
        flags |= SAME_COUNT;
    }
    if (first_offset, last_offset) == (context.first_offset, context.last_offset) {
        flags |= SAME_OFFSETS;
    }
    if let Some((scale, _)) = decimals {
        flags |= DECIMAL;
        if scale == context.scale {
            flags |= SAME_SCALE;
        }
    }
    let dense = !sketch_implied && dense_sketch(a).is_some();
    if !sketch_implied {
        flags |= SKETCH;
        if dense {
            flags |= DENSE;
        }
    }
    if extras {
        flags |= EXTRAS;
    }
    put_varint(out, flags);
    if flags & SAME_COUNT == 0 {
        put_varint(out, a.count);
    }
    if flags & SAME_OFFSETS == 0 {
        put_varint(out, zigzag(first_offset));
        put_varint(out, zigzag(last_offset.wrapping_sub(first_offset)));
    }
    match decimals {
        Some((scale, [first, min, max, last, sum])) => {
            if flags & SAME_SCALE == 0 {
                out.push(scale);
            }
            put_varint(
                out,
                zigzag(first.wrapping_sub(predicted(context.last, scale))),
            );
            put_varint(out, zigzag(min.wrapping_sub(first)));
            put_varint(out, zigzag(max.wrapping_sub(first)));
            put_varint(out, zigzag(last.wrapping_sub(first)));
            let count = i64::try_from(a.count).unwrap_or(i64::MAX);
            put_varint(out, zigzag(sum.wrapping_sub(first.wrapping_mul(count))));
            context.scale = scale;
        }
        None => {
            for v in values {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    if extras {
        let at = out.len();
        out.push(0);
        let lo = put_float(out, a.sum_lo);
        let m2 = match decimals.and_then(|(scale, _)| m2_decimal(a.m2, a.count, scale)) {
            Some((multiple, ulps)) => {
                put_varint(out, zigzag(multiple));
                put_varint(out, zigzag(ulps));
                M2_DECIMAL
            }
            None => put_float(out, a.m2),
        };
        if let Some(lengths) = out.get_mut(at) {
            *lengths = lo << 4 | m2;
        }
    }
    if let (true, Some(counts)) = (dense, dense_sketch(a)) {
        for count in counts {
            put_varint(out, count.saturating_sub(1));
        }
    } else if !sketch_implied {
        let s = &a.sketch;
        let more = s.zero > 0 || !s.negative.is_empty();
        put_varint(out, (s.positive.len() as u64) << 1 | u64::from(more));
        if more {
            put_varint(out, s.zero);
            put_varint(out, s.negative.len() as u64);
        }
        put_bins(out, &s.positive, positive_key(a.min));
        put_bins(out, &s.negative, negative_key(a.max));
    }
    *context = Context {
        index,
        count: a.count,
        first_offset,
        last_offset,
        last: a.last.1,
        scale: context.scale,
    };
}

/// The counts of every bin but the last, when the sketch is dense: positive values only, and
/// a bin for every key from the min's to the max's (most windows of a reading that wanders).
fn dense_sketch(a: &Aggregate) -> Option<Vec<u64>> {
    let s = &a.sketch;
    if s.zero != 0 || !s.negative.is_empty() || a.min <= sketch::MIN_VALUE || !a.max.is_finite() {
        return None;
    }
    let (low, high) = (sketch::key(a.min), sketch::key(a.max));
    let contiguous = s.positive.first().map(|b| b.0) == Some(low)
        && s.positive.last().map(|b| b.0) == Some(high)
        && s.positive
            .windows(2)
            .all(|w| matches!(w, [x, y] if y.0 == x.0.wrapping_add(1)))
        && s.count() == a.count;
    contiguous.then(|| {
        let n = s.positive.len().saturating_sub(1);
        s.positive.iter().take(n).map(|b| b.1).collect()
    })
}

/// The key the lowest positive bin is predicted to have: that of the min, if it is positive.
fn positive_key(min: f64) -> i32 {
    if min > sketch::MIN_VALUE {
        sketch::key(min)
    } else {
        0
    }
}

/// The key the lowest negative bin is predicted to have: that of the max, if it is negative.
fn negative_key(max: f64) -> i32 {
    if max < -sketch::MIN_VALUE {
        sketch::key(-max)
    } else {
        0
    }
}

/// Calls `each(window start, aggregate)` for every window of a block starting at `block` of
/// windows `step` long, in order. Without `with_sketch`, the sketches are left empty.
pub fn decode(
    data: &[u8],
    block: i64,
    step: i64,
    with_sketch: bool,
    mut each: impl FnMut(i64, Aggregate),
) -> Result<(), CodecError> {
    let mut bytes = Bytes { data, at: 0 };
    if bytes.byte()? != BLOCK {
        return Err(error("not a rollup block of a format this collector reads"));
    }
    let mut context = Context::default();
    while bytes.at < data.len() {
        let flags = bytes.varint()?;
        let index = context
            .index
            .checked_add(1)
            .and_then(|i| i.checked_add(i64::try_from(flags >> GAP_SHIFT).ok()?))
            .filter(|i| *i < WINDOWS_PER_BLOCK)
            .ok_or_else(|| error("a window past the end of its block"))?;
        let start = index
            .checked_mul(step)
            .and_then(|o| block.checked_add(o))
            .ok_or_else(|| error("a window out of range"))?;
        let count = if flags & SAME_COUNT == 0 {
            bytes.varint()?
        } else {
            context.count
        };
        let (first_offset, last_offset) = if flags & SAME_OFFSETS == 0 {
            let first = unzigzag(bytes.varint()?);
            (first, first.wrapping_add(unzigzag(bytes.varint()?)))
        } else {
            (context.first_offset, context.last_offset)
        };
        let [first, min, max, last, sum_hi] = if flags & DECIMAL != 0 {
            let scale = if flags & SAME_SCALE == 0 {
                bytes.byte()?
            } else {
                context.scale
            };
            let p = *POW10
                .get(usize::from(scale))
                .ok_or_else(|| error(format!("a decimal scale of {scale} digits")))?;
            context.scale = scale;
            let first = predicted(context.last, scale).wrapping_add(unzigzag(bytes.varint()?));
            let mut next =
                || -> Result<i64, CodecError> { Ok(first.wrapping_add(unzigzag(bytes.varint()?))) };
            let (min, max, last) = (next()?, next()?, next()?);
            let count = i64::try_from(count).unwrap_or(i64::MAX);
            let sum = first
                .wrapping_mul(count)
                .wrapping_add(unzigzag(bytes.varint()?));
            [first, min, max, last, sum].map(|m| m as f64 / p)
        } else {
            let mut values = [0f64; 5];
            for v in &mut values {
                let mut le = [0u8; 8];
                le.copy_from_slice(bytes.take(8)?);
                *v = f64::from_le_bytes(le);
            }
            values
        };
        let (sum_lo, m2) = if flags & EXTRAS != 0 {
            let lengths = bytes.byte()?;
            let sum_lo = read_float(&mut bytes, usize::from(lengths >> 4))?;
            let m2 = if lengths & 15 == M2_DECIMAL && flags & DECIMAL != 0 {
                let multiple = unzigzag(bytes.varint()?);
                let ulps = unzigzag(bytes.varint()?);
                let near = multiple as f64 / m2_unit(count, context.scale);
                f64::from_bits((near.to_bits() as i64).wrapping_add(ulps) as u64)
            } else {
                read_float(&mut bytes, usize::from(lengths & 15))?
            };
            (sum_lo, m2)
        } else {
            (0.0, 0.0)
        };
        let sketch = if flags & SKETCH != 0 && flags & DENSE != 0 {
            let (low, high) = (positive_key(min), positive_key(max));
            let bins = i64::from(high).saturating_sub(i64::from(low));
            if min <= sketch::MIN_VALUE || !(0..2048).contains(&bins) {
                return Err(error("a dense sketch over keys it cannot have"));
            }
            let mut positive =
                Vec::with_capacity(usize::try_from(bins).unwrap_or(0).saturating_add(1));
            let mut left = count;
            for key in low..high {
                let n = bytes.varint()?.saturating_add(1);
                left = left
                    .checked_sub(n)
                    .ok_or_else(|| error("a dense sketch counts more than its window"))?;
                positive.push((key, n));
            }
            if left == 0 {
                return Err(error("a dense sketch with an empty last bin"));
            }
            positive.push((high, left));
            Sketch {
                positive,
                negative: Vec::new(),
                zero: 0,
            }
        } else if flags & SKETCH != 0 {
            let head = bytes.varint()?;
            let (zero, negatives) = if head & 1 == 1 {
                (bytes.varint()?, bytes.varint()?)
            } else {
                (0, 0)
            };
            let positive = read_bins(&mut bytes, head >> 1, positive_key(min))?;
            let negative = read_bins(&mut bytes, negatives, negative_key(max))?;
            Sketch {
                positive,
                negative,
                zero,
            }
        } else if with_sketch {
            implied_sketch(count, min, max).unwrap_or_default()
        } else {
            Sketch::default()
        };
        let first_ts = start.wrapping_add(first_offset);
        let last_ts = start.wrapping_add(last_offset);
        context = Context {
            index,
            count,
            first_offset,
            last_offset,
            last,
            scale: context.scale,
        };
        each(
            start,
            Aggregate {
                count,
                sum_hi,
                sum_lo,
                m2,
                min,
                max,
                first: (first_ts, first),
                last: (last_ts, last),
                sketch: if with_sketch {
                    sketch
                } else {
                    Sketch::default()
                },
            },
        );
    }
    Ok(())
}

/// The windows of a block, in order.
pub fn windows(
    data: &[u8],
    block: i64,
    step: i64,
    with_sketch: bool,
) -> Result<Vec<(i64, Aggregate)>, CodecError> {
    let mut out = Vec::new();
    decode(data, block, step, with_sketch, |start, a| {
        out.push((start, a));
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MINUTE: i64 = 60_000_000_000;

    fn same(a: &Aggregate, b: &Aggregate) -> bool {
        let bits = |v: f64| v.to_bits();
        a.count == b.count
            && bits(a.sum_hi) == bits(b.sum_hi)
            && bits(a.sum_lo) == bits(b.sum_lo)
            && bits(a.m2) == bits(b.m2)
            && bits(a.min) == bits(b.min)
            && bits(a.max) == bits(b.max)
            && a.first.0 == b.first.0
            && bits(a.first.1) == bits(b.first.1)
            && a.last.0 == b.last.0
            && bits(a.last.1) == bits(b.last.1)
            && a.sketch == b.sketch
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            (-1e4f64..1e4).prop_map(|v| (v * 100.0).round() / 100.0),
            any::<f64>(),
            Just(0.0),
            Just(-0.0),
            Just(f64::MAX),
            Just(f64::MIN),
            Just(1e-12),
            (-5i64..5).prop_map(|v| v as f64),
        ]
    }

    /// Windows of a block: sorted distinct indexes, each with some points in its minute.
    fn windows() -> impl Strategy<Value = Vec<(i64, Aggregate)>> {
        proptest::collection::btree_map(
            0i64..WINDOWS_PER_BLOCK,
            proptest::collection::vec((0i64..MINUTE, value()), 1..12),
            1..20,
        )
        .prop_map(|map| {
            map.into_iter()
                .map(|(index, points)| {
                    let start =
                        1_700_000_040 * 1_000_000_000 / MINUTE / 60 * 60 * MINUTE + index * MINUTE;
                    let mut aggregate = Aggregate::new();
                    for (offset, v) in points {
                        aggregate.add(start + offset, v);
                    }
                    (start, aggregate)
                })
                .filter(|(_, a)| a.count > 0)
                .collect()
        })
    }

    proptest! {
        #[test]
        fn every_window_round_trips(windows in windows()) {
            let Some((first, _)) = windows.first() else { return Ok(()) };
            let block = block_start(*first, MINUTE);
            let bytes = encode(block, MINUTE, &windows);
            let back = super::windows(&bytes, block, MINUTE, true).unwrap();
            prop_assert_eq!(back.len(), windows.len());
            for ((s1, a), (s2, b)) in windows.iter().zip(&back) {
                prop_assert_eq!(s1, s2);
                prop_assert!(same(a, b), "{a:?} / {b:?}");
            }
            // The encoder's "one more" form equals pushing it.
            if let Some((last, rest)) = windows.split_last() {
                let mut encoder = Encoder::new(block, MINUTE);
                for (start, a) in rest {
                    encoder.push(*start, a);
                }
                prop_assert_eq!(encoder.with(last.0, &last.1), bytes);
            }
        }

        #[test]
        fn any_bytes_decode_to_windows_or_an_error(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = super::windows(&data, 0, MINUTE, true);
            let mut marked = vec![BLOCK];
            marked.extend(&data);
            if let Ok(windows) = super::windows(&marked, 0, MINUTE, true) {
                for (_, a) in windows {
                    for agg in crate::rollup::Agg::ALL {
                        let _ = a.value(agg);
                    }
                }
            }
        }
    }

    #[test]
    fn sums_past_the_range_of_f64_round_trip() {
        let (mut nan, mut up) = (Aggregate::new(), Aggregate::new());
        for i in 0..2 {
            nan.add(i, f64::MIN);
            up.add(i + 2, f64::MAX);
        }
        nan.merge(&up);
        assert!(nan.sum().is_nan());
        let bytes = encode(0, MINUTE, &[(0, nan.clone())]);
        let back = super::windows(&bytes, 0, MINUTE, true).unwrap();
        assert!(same(&nan, &back[0].1));
    }

    /// An hour of 1-minute windows of readings every 10 s that wander in steps of 0.01.
    #[test]
    fn a_regular_series_costs_little() {
        let mut v = 20.0f64;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let windows: Vec<(i64, Aggregate)> = (0..60)
            .map(|w| {
                let start = w * MINUTE;
                let mut a = Aggregate::new();
                for i in 0..6 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    v = ((v + ((state % 201) as f64 - 100.0) / 1000.0) * 100.0).round() / 100.0;
                    a.add(start + i * 10_000_000_000, v);
                }
                (start, a)
            })
            .collect();
        let bytes = encode(0, MINUTE, &windows);
        let per_window = bytes.len() as f64 / 60.0;
        assert!(per_window < 20.0, "{per_window} bytes per window");
        let back = super::windows(&bytes, 0, MINUTE, true).unwrap();
        assert!(
            windows
                .iter()
                .zip(&back)
                .all(|(a, b)| a.0 == b.0 && same(&a.1, &b.1))
        );
    }
}
