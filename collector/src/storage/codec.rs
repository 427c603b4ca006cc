//! The chunk value format: how a run of one series' values is laid out in a chunk's bytes,
//! whatever the backend that keeps the chunk (SQLite today, PostgreSQL next).
//!
//! A chunk's bytes are a sequence of parts, each starting where the last one ended, so a part
//! can be appended to a chunk by concatenation. A part is either:
//!
//! - **a segment (format 2; format 1 is format 2 without decimals)**: the byte `0xc1` (a byte
//!   MessagePack never uses), the format version (`2`), the value kind (`0` float, `1` integer,
//!   `2` boolean, `3` string, `4` decimal float), the number of values (LEB128), the payload's
//!   length in bytes (LEB128), then the payload:
//!   - times, each as the change of its delta from the time before (the first delta from the
//!     time the part follows, the chunk's start or the last value before it): zigzag LEB128,
//!     shifted left one bit; a run of `k` zero changes (a regular interval) is one LEB128 of
//!     `(k - 1) << 1 | 1`;
//!   - floats XOR-encoded as in Gorilla (Pelkonen et al., 2015), bit by bit: `0` for the same
//!     bits as the value before, `10` and the meaningful bits in the previous window, or `11`,
//!     6 bits of leading zeros, 6 bits of length − 1 and the meaningful bits; every bit
//!     pattern (NaN payloads, −0.0, ±inf) round-trips;
//!   - floats that are all short decimals (`mantissa / 10^scale` gives back every bit, as
//!     readings like `20.37` do) as kind 4 instead: the scale (a byte, at most 15), the first
//!     mantissa (zigzag LEB128), then each change to the next mantissa, zigzag, bit-packed in
//!     groups of 64 values, each group led by its width in 7 bits. A random walk in steps of
//!     0.01 costs 5 to 6 bits a value where Gorilla needs 40 or more;
//!   - integers as zigzag LEB128 deltas (wrapping, so the extremes round-trip);
//!   - booleans one bit each;
//!   - strings as a dictionary of the distinct strings (count, then length and bytes of each)
//!     and one LEB128 index per value;
//! - **a legacy pair** (the format of schema 3 and 4 databases, still read): the time delta
//!   from the value before as a MessagePack unsigned integer, then the value as the wire
//!   carries it.
//!
//! Decoding returns an error, never panics, on any bytes (`fuzz` and the property tests).

use tributary_wire::FieldValue;

/// The first byte of a segment.
pub const SEGMENT: u8 = 0xc1;
/// The segment format this code writes.
pub const VERSION: u8 = 2;

/// Why a chunk's bytes do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

pub(crate) fn error(what: impl Into<String>) -> CodecError {
    CodecError(what.into())
}

fn kind_of(value: &FieldValue) -> u8 {
    match value {
        FieldValue::F64(_) => 0,
        FieldValue::I64(_) => 1,
        FieldValue::Bool(_) => 2,
        FieldValue::Str(_) => 3,
    }
}

pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(crate) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ ((v & 1) as i64).wrapping_neg()
}

pub(crate) fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Reads bytes from a slice, with errors instead of panics.
pub(crate) struct Bytes<'a> {
    pub(crate) data: &'a [u8],
    pub(crate) at: usize,
}

impl<'a> Bytes<'a> {
    pub(crate) fn byte(&mut self) -> Result<u8, CodecError> {
        let b = *self
            .data
            .get(self.at)
            .ok_or_else(|| error("the chunk ends inside a value"))?;
        self.at = self.at.saturating_add(1);
        Ok(b)
    }

    pub(crate) fn varint(&mut self) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f)
                .checked_shl(shift)
                .ok_or_else(|| error("a number is too long"))?;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(error("a number is too long"))
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or_else(|| error("a length is too large"))?;
        let slice = self
            .data
            .get(self.at..end)
            .ok_or_else(|| error("the chunk ends inside a value"))?;
        self.at = end;
        Ok(slice)
    }
}

/// Writes bits most significant first, a 64-bit word at a time.
#[derive(Default)]
struct BitWriter {
    bytes: Vec<u8>,
    /// Bits waiting in the high end of `word`.
    word: u64,
    pending: u32,
}

impl BitWriter {
    fn push(&mut self, bit: bool) {
        self.bits(u64::from(bit), 1);
    }

    /// The low `n` bits of `v` (`n` ≤ 64), most significant first.
    fn bits(&mut self, v: u64, n: u32) {
        if n == 0 {
            return;
        }
        let v = v & u64::MAX.checked_shr(64u32.saturating_sub(n)).unwrap_or(0);
        let room = 64u32.saturating_sub(self.pending);
        if n <= room {
            self.word |= v.checked_shl(room.saturating_sub(n)).unwrap_or(0);
            self.pending = self.pending.saturating_add(n);
        } else {
            let spill = n.saturating_sub(room);
            self.word |= v.checked_shr(spill).unwrap_or(0);
            self.bytes.extend_from_slice(&self.word.to_be_bytes());
            self.word = v.checked_shl(64u32.saturating_sub(spill)).unwrap_or(0);
            self.pending = spill;
        }
        if self.pending == 64 {
            self.bytes.extend_from_slice(&self.word.to_be_bytes());
            self.word = 0;
            self.pending = 0;
        }
    }

    /// The bytes, the last one padded with zero bits.
    fn finish(mut self) -> Vec<u8> {
        let used = self.pending.div_ceil(8) as usize;
        let word = self.word.to_be_bytes();
        self.bytes
            .extend_from_slice(word.get(..used).unwrap_or_default());
        self.bytes
    }
}

struct BitReader<'a> {
    data: &'a [u8],
    bit: usize,
}

impl BitReader<'_> {
    fn next(&mut self) -> Result<bool, CodecError> {
        Ok(self.bits(1)? == 1)
    }

    /// The next `n` bits (`n` ≤ 64), most significant first.
    fn bits(&mut self, n: u32) -> Result<u64, CodecError> {
        if n == 0 {
            return Ok(0);
        }
        let end = self
            .bit
            .checked_add(n as usize)
            .filter(|end| end.div_ceil(8) <= self.data.len())
            .ok_or_else(|| error("the chunk ends inside a value"))?;
        let mut v = 0u64;
        let mut at = self.bit;
        let mut left = n;
        while left > 0 {
            let byte = self.data.get(at / 8).copied().unwrap_or(0);
            let offset = (at % 8) as u32;
            let take = (8u32.saturating_sub(offset)).min(left);
            let chunk = (byte << offset) >> 8u32.saturating_sub(take).min(7);
            let chunk = if take == 8 {
                u64::from(byte)
            } else {
                u64::from(chunk)
            };
            v = v.checked_shl(take).unwrap_or(0) | chunk;
            at = at.saturating_add(take as usize);
            left = left.saturating_sub(take);
        }
        self.bit = end;
        Ok(v)
    }

    /// Bytes consumed, the last one partly.
    fn len(&self) -> usize {
        self.bit.div_ceil(8)
    }
}

/// Appends to `buf` one segment of `run` (key, time, value; times not decreasing), times as
/// deltas from `base`. A run of several kinds (which a series never has) is written as one
/// segment per kind change.
pub fn encode<K>(buf: &mut Vec<u8>, base: i64, run: &[(K, i64, &FieldValue)]) {
    let mut rest = run;
    let mut previous = base;
    while let Some(&(_, _, first)) = rest.first() {
        let kind = kind_of(first);
        let len = rest
            .iter()
            .take_while(|(_, _, v)| kind_of(v) == kind)
            .count()
            .max(1);
        let (part, next) = rest.split_at(len.min(rest.len()));
        rest = next;
        let mut payload = Vec::with_capacity(part.len().saturating_mul(2));
        encode_times(&mut payload, previous, part.iter().map(|(_, ts, _)| *ts));
        let decimals = if kind == 0 {
            decimals(part.iter().map(|(_, _, v)| *v))
        } else {
            None
        };
        let kind = match decimals {
            Some((scale, mantissas)) => {
                encode_decimals(&mut payload, scale, &mantissas);
                DECIMAL
            }
            None => {
                encode_values(&mut payload, kind, part.iter().map(|(_, _, v)| *v));
                kind
            }
        };
        buf.push(SEGMENT);
        buf.push(VERSION);
        buf.push(kind);
        put_varint(buf, part.len() as u64);
        put_varint(buf, payload.len() as u64);
        buf.extend_from_slice(&payload);
        if let Some(&(_, ts, _)) = part.last() {
            previous = ts;
        }
    }
}

/// The value kind of floats written as decimals.
const DECIMAL: u8 = 4;
/// Most decimal digits after the point a decimal segment carries.
pub(crate) const MAX_SCALE: usize = 15;
/// Powers of ten that are exact doubles, `10^0` to `10^MAX_SCALE`.
pub(crate) const POW10: [f64; MAX_SCALE + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];
/// Mantissas up to this magnitude are exact doubles.
const MAX_MANTISSA: f64 = 9_007_199_254_740_992.0;
/// Values per group of bit-packed mantissa changes (each group has its own width).
const GROUP: usize = 64;

/// `value` as `mantissa / 10^scale` at exactly `scale`, if that gives back the same bits.
pub(crate) fn at_scale(value: f64, scale: usize) -> Option<i64> {
    let p = *POW10.get(scale)?;
    let m = (value * p).round();
    (m.abs() <= MAX_MANTISSA && m / p == value && (value != 0.0 || value.is_sign_positive()))
        .then_some(m as i64)
}

/// Floats that are all short decimals (sensor readings mostly are), as one scale and their
/// mantissas: `value == mantissa as f64 / 10^scale` exactly, bit for bit. `None` when any is
/// not (NaN, ±inf, −0.0, more than 15 decimals, or past 2^53 at the scale).
fn decimals<'v>(values: impl Iterator<Item = &'v FieldValue> + Clone) -> Option<(u8, Vec<i64>)> {
    let mut scale = 0usize;
    for value in values.clone() {
        let FieldValue::F64(v) = value else {
            return None;
        };
        while at_scale(*v, scale).is_none() {
            scale = scale.saturating_add(1);
            if scale > MAX_SCALE {
                return None;
            }
        }
    }
    let mantissas = values
        .map(|value| match value {
            FieldValue::F64(v) => at_scale(*v, scale),
            _ => None,
        })
        .collect::<Option<Vec<i64>>>()?;
    Some((u8::try_from(scale).ok()?, mantissas))
}

/// The decimal payload: the scale (a byte), the first mantissa (zigzag LEB128), then the
/// changes from each mantissa to the next, zigzag, bit-packed in groups of 64, each group a
/// 7-bit width and that many bits per change.
fn encode_decimals(buf: &mut Vec<u8>, scale: u8, mantissas: &[i64]) {
    buf.push(scale);
    let Some((first, rest)) = mantissas.split_first() else {
        return;
    };
    put_varint(buf, zigzag(*first));
    let mut bits = BitWriter::default();
    let mut previous = *first;
    let changes: Vec<u64> = rest
        .iter()
        .map(|m| {
            let change = zigzag(m.wrapping_sub(previous));
            previous = *m;
            change
        })
        .collect();
    for group in changes.chunks(GROUP) {
        let width = group
            .iter()
            .map(|c| 64u32.saturating_sub(c.leading_zeros()))
            .max()
            .unwrap_or(0);
        bits.bits(u64::from(width), 7);
        for change in group {
            bits.bits(*change, width);
        }
    }
    buf.extend_from_slice(&bits.finish());
}

fn decode_decimals(
    rest: &[u8],
    times: &[i64],
    each: &mut impl FnMut(i64, FieldValue),
) -> Result<(), CodecError> {
    let mut bytes = Bytes { data: rest, at: 0 };
    let scale = usize::from(bytes.byte()?);
    let p = *POW10
        .get(scale)
        .ok_or_else(|| error(format!("a decimal scale of {scale} digits")))?;
    let mut times = times.iter();
    let Some(first_ts) = times.next() else {
        return Ok(());
    };
    let mut mantissa = unzigzag(bytes.varint()?);
    each(*first_ts, FieldValue::F64(mantissa as f64 / p));
    let packed = bytes.data.get(bytes.at..).unwrap_or_default();
    let mut bits = BitReader {
        data: packed,
        bit: 0,
    };
    let mut width = 0u32;
    for (i, ts) in times.enumerate() {
        if i % GROUP == 0 {
            width = u32::try_from(bits.bits(7)?).unwrap_or(u32::MAX);
            if width > 64 {
                return Err(error("a decimal group wider than 64 bits"));
            }
        }
        mantissa = mantissa.wrapping_add(unzigzag(bits.bits(width)?));
        each(*ts, FieldValue::F64(mantissa as f64 / p));
    }
    if bits.len() != packed.len() {
        return Err(error("a segment has bytes past its values"));
    }
    Ok(())
}

fn encode_times(buf: &mut Vec<u8>, base: i64, times: impl Iterator<Item = i64>) {
    let (mut previous, mut delta) = (base, 0i64);
    let mut zeros = 0u64;
    let flush = |buf: &mut Vec<u8>, zeros: &mut u64| {
        if *zeros > 0 {
            put_varint(buf, (zeros.saturating_sub(1) << 1) | 1);
            *zeros = 0;
        }
    };
    for ts in times {
        let d = ts.wrapping_sub(previous);
        let change = d.wrapping_sub(delta);
        if change == 0 {
            zeros = zeros.saturating_add(1);
        } else {
            flush(buf, &mut zeros);
            put_varint(buf, zigzag(change) << 1);
        }
        previous = ts;
        delta = d;
    }
    flush(buf, &mut zeros);
}

fn encode_values<'v>(buf: &mut Vec<u8>, kind: u8, values: impl Iterator<Item = &'v FieldValue>) {
    match kind {
        0 => {
            let mut bits = BitWriter::default();
            let (mut previous, mut lead, mut len) = (0u64, u32::MAX, 0u32);
            for (i, value) in values.enumerate() {
                let FieldValue::F64(v) = value else { continue };
                let v = v.to_bits();
                if i == 0 {
                    bits.bits(v, 64);
                } else {
                    let xor = v ^ previous;
                    if xor == 0 {
                        bits.push(false);
                    } else {
                        let l = xor.leading_zeros().min(63);
                        let t = xor.trailing_zeros();
                        bits.push(true);
                        let window_end = 64u32.saturating_sub(lead).saturating_sub(len);
                        if lead != u32::MAX && l >= lead && t >= window_end {
                            bits.push(false);
                            bits.bits(xor >> window_end, len);
                        } else {
                            lead = l;
                            len = 64u32.saturating_sub(l).saturating_sub(t).max(1);
                            bits.push(true);
                            bits.bits(u64::from(lead), 6);
                            bits.bits(u64::from(len.saturating_sub(1)), 6);
                            bits.bits(xor >> t, len);
                        }
                    }
                }
                previous = v;
            }
            buf.extend_from_slice(&bits.finish());
        }
        1 => {
            let mut previous = 0i64;
            for value in values {
                let FieldValue::I64(v) = value else { continue };
                put_varint(buf, zigzag(v.wrapping_sub(previous)));
                previous = *v;
            }
        }
        2 => {
            let mut bits = BitWriter::default();
            for value in values {
                bits.push(matches!(value, FieldValue::Bool(true)));
            }
            buf.extend_from_slice(&bits.finish());
        }
        _ => {
            let values: Vec<&str> = values
                .map(|v| match v {
                    FieldValue::Str(s) => s.as_str(),
                    _ => "",
                })
                .collect();
            let mut dictionary: Vec<&str> = Vec::new();
            let mut index = std::collections::HashMap::new();
            let indexes: Vec<u64> = values
                .iter()
                .map(|s| {
                    *index.entry(*s).or_insert_with(|| {
                        dictionary.push(s);
                        (dictionary.len() as u64).saturating_sub(1)
                    })
                })
                .collect();
            put_varint(buf, dictionary.len() as u64);
            for s in &dictionary {
                put_varint(buf, s.len() as u64);
                buf.extend_from_slice(s.as_bytes());
            }
            for i in indexes {
                put_varint(buf, i);
            }
        }
    }
}

/// Calls `each(ts, value)` for every value of a chunk's bytes, in order; times start from
/// `start` (the chunk's first time, which its first part's deltas count from).
pub fn decode(
    start: i64,
    data: &[u8],
    mut each: impl FnMut(i64, FieldValue),
) -> Result<(), CodecError> {
    let mut bytes = Bytes { data, at: 0 };
    let mut ts = start;
    while bytes.at < data.len() {
        if data.get(bytes.at) == Some(&SEGMENT) {
            ts = decode_segment(&mut bytes, ts, &mut each)?;
        } else {
            ts = decode_legacy(&mut bytes, ts, &mut each)?;
        }
    }
    Ok(())
}

fn decode_legacy(
    bytes: &mut Bytes<'_>,
    ts: i64,
    each: &mut impl FnMut(i64, FieldValue),
) -> Result<i64, CodecError> {
    use serde::Deserialize;
    let rest = bytes.data.get(bytes.at..).unwrap_or_default();
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(rest));
    let delta = u64::deserialize(&mut de).map_err(|e| error(e.to_string()))?;
    let value = FieldValue::deserialize(&mut de).map_err(|e| error(e.to_string()))?;
    let used = usize::try_from(de.position()).map_err(|_| error("a value is too long"))?;
    bytes.at = bytes.at.saturating_add(used.max(1));
    let ts = ts.wrapping_add(delta as i64);
    each(ts, value);
    Ok(ts)
}

fn decode_segment(
    bytes: &mut Bytes<'_>,
    base: i64,
    each: &mut impl FnMut(i64, FieldValue),
) -> Result<i64, CodecError> {
    let _marker = bytes.byte()?;
    let version = bytes.byte()?;
    if version == 0 || version > VERSION {
        return Err(error(format!(
            "segment format {version} is newer than this collector reads ({VERSION})"
        )));
    }
    let kind = bytes.byte()?;
    let count = usize::try_from(bytes.varint()?).map_err(|_| error("too many values"))?;
    let len = usize::try_from(bytes.varint()?).map_err(|_| error("a length is too large"))?;
    let payload = bytes.take(len)?;
    // A value takes at least a bit, or 7 bits per 64 decimals: more values than that is
    // damage, not data (and would be a large allocation).
    if count == 0 || count > payload.len().saturating_mul(74).saturating_add(64) {
        return Err(error(format!(
            "a segment of {len} bytes cannot hold {count} values"
        )));
    }
    let mut inner = Bytes {
        data: payload,
        at: 0,
    };
    let mut times = Vec::with_capacity(count);
    let (mut last_time, mut delta) = (base, 0i64);
    while times.len() < count {
        let word = inner.varint()?;
        if word & 1 == 1 {
            let zeros = (word >> 1).saturating_add(1);
            for _ in 0..zeros {
                if times.len() >= count {
                    return Err(error("more times than values"));
                }
                last_time = last_time.wrapping_add(delta);
                times.push(last_time);
            }
        } else {
            delta = delta.wrapping_add(unzigzag(word >> 1));
            last_time = last_time.wrapping_add(delta);
            times.push(last_time);
        }
    }
    let rest = payload.get(inner.at..).unwrap_or_default();
    match kind {
        0 => {
            let mut bits = BitReader { data: rest, bit: 0 };
            let (mut previous, mut lead, mut len) = (0u64, 0u32, 0u32);
            for (i, ts) in times.iter().enumerate() {
                let v = if i == 0 {
                    bits.bits(64)?
                } else if !bits.next()? {
                    previous
                } else {
                    if bits.next()? {
                        lead = u32::try_from(bits.bits(6)?).unwrap_or(0);
                        len = u32::try_from(bits.bits(6)?).unwrap_or(0).saturating_add(1);
                        if lead.saturating_add(len) > 64 {
                            return Err(error("a float's bits do not fit"));
                        }
                    } else if len == 0 {
                        return Err(error("a float reuses a window it never had"));
                    }
                    let shift = 64u32.saturating_sub(lead).saturating_sub(len);
                    previous ^ bits.bits(len)?.checked_shl(shift).unwrap_or(0)
                };
                previous = v;
                each(*ts, FieldValue::F64(f64::from_bits(v)));
            }
            if bits.len() != rest.len() {
                return Err(error("a segment has bytes past its values"));
            }
        }
        1 => {
            let mut values = Bytes { data: rest, at: 0 };
            let mut previous = 0i64;
            for ts in &times {
                previous = previous.wrapping_add(unzigzag(values.varint()?));
                each(*ts, FieldValue::I64(previous));
            }
        }
        2 => {
            let mut bits = BitReader { data: rest, bit: 0 };
            for ts in &times {
                each(*ts, FieldValue::Bool(bits.next()?));
            }
        }
        3 => {
            let mut values = Bytes { data: rest, at: 0 };
            let entries =
                usize::try_from(values.varint()?).map_err(|_| error("too many strings"))?;
            if entries > rest.len() {
                return Err(error("a dictionary larger than its segment"));
            }
            let mut dictionary = Vec::with_capacity(entries);
            for _ in 0..entries {
                let n =
                    usize::try_from(values.varint()?).map_err(|_| error("a string is too long"))?;
                let text = std::str::from_utf8(values.take(n)?)
                    .map_err(|_| error("a string is not UTF-8"))?;
                dictionary.push(text);
            }
            for ts in &times {
                let i = usize::try_from(values.varint()?).unwrap_or(usize::MAX);
                let text = dictionary
                    .get(i)
                    .ok_or_else(|| error("a string index past its dictionary"))?;
                each(*ts, FieldValue::Str((*text).to_owned()));
            }
        }
        DECIMAL if version >= 2 => decode_decimals(rest, &times, each)?,
        other => return Err(error(format!("unknown value kind {other}"))),
    }
    Ok(last_time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(base: i64, values: &[(i64, FieldValue)]) -> Vec<(i64, FieldValue)> {
        let run: Vec<((), i64, &FieldValue)> = values.iter().map(|(t, v)| ((), *t, v)).collect();
        let mut buf = Vec::new();
        encode(&mut buf, base, &run);
        let mut out = Vec::new();
        decode(base, &buf, |t, v| out.push((t, v))).unwrap();
        out
    }

    fn same(a: &[(i64, FieldValue)], b: &[(i64, FieldValue)]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.0 == y.0
                    && match (&x.1, &y.1) {
                        (FieldValue::F64(p), FieldValue::F64(q)) => p.to_bits() == q.to_bits(),
                        (p, q) => p == q,
                    }
            })
    }

    fn value() -> impl Strategy<Value = FieldValue> {
        prop_oneof![
            any::<u64>().prop_map(|b| FieldValue::F64(f64::from_bits(b))),
            prop_oneof![
                Just(f64::NAN),
                Just(-f64::NAN),
                Just(f64::INFINITY),
                Just(f64::NEG_INFINITY),
                Just(-0.0),
                Just(0.0),
                Just(f64::MIN_POSITIVE),
                Just(f64::MAX),
                Just(f64::MIN),
                (-1e4f64..1e4).prop_map(|v| (v * 100.0).round() / 100.0),
            ]
            .prop_map(FieldValue::F64),
            prop_oneof![
                Just(i64::MIN),
                Just(i64::MAX),
                Just(0),
                any::<i64>(),
                -1000i64..1000
            ]
            .prop_map(FieldValue::I64),
            any::<bool>().prop_map(FieldValue::Bool),
            "[a-c]{0,3}|.{0,8}".prop_map(FieldValue::Str),
        ]
    }

    proptest! {
        #[test]
        fn every_run_round_trips(
            base in any::<i64>(),
            steps in proptest::collection::vec(prop_oneof![Just(0i64), Just(10_000_000_000), 0i64..1_000_000, any::<i64>()], 1..200),
            kind in 0u8..4,
            values in proptest::collection::vec(value(), 200),
        ) {
            // One kind per run (as a series has), times not decreasing from the base.
            let mut t = base;
            let run: Vec<(i64, FieldValue)> = steps
                .iter()
                .zip(values.iter().filter(|v| kind_of(v) == kind).cycle().chain(values.iter()))
                .map(|(step, v)| {
                    t = t.wrapping_add(step.unsigned_abs().min(1 << 40) as i64);
                    (t, v.clone())
                })
                .collect();
            prop_assert!(same(&run, &round_trip(base, &run)));
        }

        #[test]
        fn mixed_kinds_and_appended_parts_round_trip(
            parts in proptest::collection::vec(proptest::collection::vec((0i64..1_000_000_000, value()), 1..20), 1..5),
        ) {
            // Parts appended by concatenation, each from the time the last one ended.
            let mut buf = Vec::new();
            let mut expected = Vec::new();
            let (start, mut t) = (1_700_000_000_000_000_000i64, 1_700_000_000_000_000_000i64);
            for part in parts {
                let base = t;
                let values: Vec<(i64, FieldValue)> = part.into_iter().map(|(step, v)| { t += step; (t, v) }).collect();
                let run: Vec<((), i64, &FieldValue)> = values.iter().map(|(t, v)| ((), *t, v)).collect();
                encode(&mut buf, base, &run);
                expected.extend(values);
            }
            let mut out = Vec::new();
            decode(start, &buf, |t, v| out.push((t, v))).unwrap();
            prop_assert!(same(&expected, &out));
        }

        #[test]
        fn any_bytes_decode_to_values_or_an_error(data in proptest::collection::vec(any::<u8>(), 0..300), start in any::<i64>()) {
            let _ = decode(start, &data, |_, _| {});
            let mut with_marker = vec![SEGMENT, VERSION];
            with_marker.extend(&data);
            let _ = decode(start, &with_marker, |_, _| {});
        }
    }

    #[test]
    fn a_regular_series_costs_little() {
        let mut v = 20.0f64;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let values: Vec<(i64, FieldValue)> = (0..360)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                v = ((v + ((state % 201) as f64 - 100.0) / 1000.0) * 100.0).round() / 100.0;
                (
                    1_700_000_000_000_000_000 + i * 10_000_000_000,
                    FieldValue::F64(v),
                )
            })
            .collect();
        let run: Vec<((), i64, &FieldValue)> = values.iter().map(|(t, v)| ((), *t, v)).collect();
        let mut buf = Vec::new();
        encode(&mut buf, values[0].0, &run);
        let per_value = buf.len() as f64 / values.len() as f64;
        // Decimals: 5 bits per change and next to nothing for the regular times.
        assert!(per_value < 0.8, "{per_value} bytes per value");
        assert!(same(&values, &round_trip(values[0].0, &values)));
    }

    #[test]
    fn decimals_take_their_scale_and_fall_back_to_xor() {
        let cases: [(&[f64], Option<u8>); 6] = [
            (&[20.37, 20.4, 19.0], Some(2)),
            (&[1.0, 2.0, -3.0], Some(0)),
            (&[0.1, 0.2, 0.30000000000000004], None),
            (&[1.5, -0.0], None),
            (&[1.5, f64::NAN], None),
            (&[1e300], None),
        ];
        for (floats, scale) in cases {
            let values: Vec<FieldValue> = floats.iter().map(|v| FieldValue::F64(*v)).collect();
            assert_eq!(decimals(values.iter()).map(|(s, _)| s), scale, "{floats:?}");
            let timed: Vec<(i64, FieldValue)> = values
                .into_iter()
                .enumerate()
                .map(|(i, v)| (i as i64, v))
                .collect();
            assert!(same(&timed, &round_trip(0, &timed)));
        }
    }

    #[test]
    fn a_constant_run_is_a_few_bytes_and_decodes() {
        let values: Vec<(i64, FieldValue)> = (0..4096)
            .map(|i| (i * 1_000_000_000, FieldValue::F64(21.5)))
            .collect();
        let run: Vec<((), i64, &FieldValue)> = values.iter().map(|(t, v)| ((), *t, v)).collect();
        let mut buf = Vec::new();
        encode(&mut buf, 0, &run);
        assert!(buf.len() < 80, "{} bytes", buf.len());
        assert!(same(&values, &round_trip(0, &values)));
    }

    #[test]
    fn legacy_pairs_still_decode() {
        let mut buf = Vec::new();
        rmp::encode::write_uint(&mut buf, 5).unwrap();
        rmp::encode::write_f64(&mut buf, 1.5).unwrap();
        rmp::encode::write_uint(&mut buf, 7).unwrap();
        rmp::encode::write_sint(&mut buf, -3).unwrap();
        // A new segment appended to a legacy chunk.
        let v = FieldValue::F64(2.5);
        encode(&mut buf, 112, &[((), 120, &v)]);
        let mut out = Vec::new();
        decode(100, &buf, |t, v| out.push((t, v))).unwrap();
        assert!(same(
            &out,
            &[
                (105, FieldValue::F64(1.5)),
                (112, FieldValue::I64(-3)),
                (120, FieldValue::F64(2.5))
            ]
        ));
    }
}
