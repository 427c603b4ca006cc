//! Points encoded back to back: what inputs hand to the buffer, what one buffer row stores, and
//! what a batch carries. One allocation holds many points, and a run of them is forwarded by
//! copying bytes, never by decoding.


use std::borrow::Cow;
use std::ops::Range;

use tributary_wire::Point;
use tributary_wire::codec::{TextPointEncoder, encode_point_into};

/// Points, each encoded with `tributary_wire::codec::encode_point`, stored one after another.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Points {
    bytes: Vec<u8>,
    /// Where each point ends in `bytes`.
    ends: Vec<u32>,
}

/// Stored points whose offsets do not fit their bytes.
#[derive(Debug, thiserror::Error)]
#[error("stored points are damaged: {0}")]
pub struct Damaged(&'static str);

impl Points {
    pub fn new() -> Points {
        Points::default()
    }

    /// Encodes and appends `point`.
    pub fn push(&mut self, point: &Point) {
        encode_point_into(&mut self.bytes, point);
        self.close_point();
    }

    /// Appends a point of `encoder`'s shape with `value` in its field.
    pub fn push_text(&mut self, encoder: &TextPointEncoder, value: &str, ts: i64) {
        encoder.encode_into(&mut self.bytes, value, ts);
        self.close_point();
    }

    /// Appends a point already encoded.
    pub fn push_encoded(&mut self, body: &[u8]) {
        self.bytes.extend_from_slice(body);
        self.close_point();
    }

    fn close_point(&mut self) {
        // A run stays far under 4 GiB (rows hold 64 KiB, batches a few MiB).
        let end = u32::try_from(self.bytes.len()).unwrap_or(u32::MAX);
        self.ends.push(end);
    }

    /// Appends the points of `other` in `range` (indexes into `other`).
    pub fn extend_from(&mut self, other: &Points, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        let bytes = other.span(range.clone());
        let start = other.start(range.start);
        let shift = (self.bytes.len() as i64).saturating_sub(i64::from(start));
        self.bytes.extend_from_slice(bytes);
        self.ends.extend(
            other
                .ends
                .get(range)
                .unwrap_or_default()
                .iter()
                .map(|&end| {
                    u32::try_from(i64::from(end).saturating_add(shift)).unwrap_or(u32::MAX)
                }),
        );
    }

    /// The points in `range`, as a new run.
    pub fn slice(&self, range: Range<usize>) -> Points {
        let mut out = Points::new();
        out.extend_from(self, range);
        out
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes of the encoded points.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// Bytes of the points in `range`.
    pub fn span_len(&self, range: Range<usize>) -> usize {
        self.span(range).len()
    }

    fn start(&self, index: usize) -> u32 {
        index
            .checked_sub(1)
            .and_then(|i| self.ends.get(i))
            .copied()
            .unwrap_or(0)
    }

    /// The bytes of the points in `range` (empty for a range out of the run).
    fn span(&self, range: Range<usize>) -> &[u8] {
        if range.is_empty() {
            return &[];
        }
        let end = range
            .end
            .checked_sub(1)
            .and_then(|i| self.ends.get(i))
            .copied()
            .unwrap_or(0);
        self.bytes
            .get(self.start(range.start) as usize..end as usize)
            .unwrap_or_default()
    }

    /// The encoded point at `index` (empty past the end).
    pub fn get(&self, index: usize) -> &[u8] {
        self.span(index..index.saturating_add(1))
    }

    /// Each encoded point, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// All the encoded points, back to back.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The offsets as stored: each point's end, u32 little endian.
    pub fn ends_blob(&self) -> Vec<u8> {
        self.ends.iter().flat_map(|end| end.to_le_bytes()).collect()
    }

    /// The bytes of the points as a row stores them: a zstd frame when that is smaller, with
    /// the length it unpacks to, or the bytes as they are (`None`). Rows are written once and
    /// read back once or twice, so the write pays for the smaller file: less flash worn per
    /// point, and fewer pages through the WAL and the checkpoint.
    pub fn packed(&self) -> (Cow<'_, [u8]>, Option<usize>) {
        if self.bytes.len() >= PACK_FROM
            && let Ok(packed) = pack(&self.bytes)
            && packed.len() < self.bytes.len()
        {
            return (Cow::Owned(packed), Some(self.bytes.len()));
        }
        (Cow::Borrowed(&self.bytes), None)
    }

    /// Rebuilds a run from the offsets [`Points::ends_blob`] gave and the body [`Points::packed`]
    /// gave (`raw_len` set when the body is packed), checking that they fit together.
    pub fn from_stored(body: Vec<u8>, ends: &[u8], raw_len: Option<u64>) -> Result<Points, Damaged> {
        if !ends.len().is_multiple_of(4) {
            return Err(Damaged("offsets are not whole u32 values"));
        }
        let ends: Vec<u32> = ends
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap_or([0; 4])))
            .collect();
        if ends.windows(2).any(|w| matches!(w, [a, b] if a >= b)) || ends.first() == Some(&0) {
            return Err(Damaged("offsets do not increase"));
        }
        let len = ends.last().map_or(0, |&e| e as usize);
        let bytes = match raw_len {
            None => body,
            Some(raw_len) => unpack(&body, len, raw_len)?,
        };
        if len != bytes.len() {
            return Err(Damaged("offsets do not end at the last byte"));
        }
        Ok(Points { bytes, ends })
    }
}

/// Rows holding fewer bytes are stored as they are: a frame's header would eat the gain.
const PACK_FROM: usize = 256;

/// zstd's fastest regular level: rows of similar points shrink several times over at a few
/// hundred MB/s.
const PACK_LEVEL: i32 = 1;

/// A zstd frame of `bytes` that states its length and carries a checksum, so damage shows
/// when it is read back.
fn pack(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut compressor = zstd::bulk::Compressor::new(PACK_LEVEL)?;
    compressor.include_checksum(true)?;
    compressor.include_contentsize(true)?;
    compressor.compress(bytes)
}

/// Unpacks a row's zstd frame into the `len` bytes its offsets end at. The length is checked
/// three ways (offsets, the row's `raw_len`, the frame's own header) before anything is
/// allocated, and the allocation may fail without stopping the agent: a damaged row is
/// reported, never trusted.
fn unpack(frame: &[u8], len: usize, raw_len: u64) -> Result<Vec<u8>, Damaged> {
    if u64::try_from(len).ok() != Some(raw_len) {
        return Err(Damaged("the packed length does not match the offsets"));
    }
    match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(size)) if size == raw_len => {}
        _ => return Err(Damaged("the packed points' frame does not match the offsets")),
    }
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(len)
        .map_err(|_| Damaged("no memory to unpack the points"))?;
    bytes.resize(len, 0);
    match zstd::bulk::decompress_to_buffer(frame, &mut bytes[..]) {
        Ok(n) if n == len => Ok(bytes),
        _ => Err(Damaged("the packed points do not unpack")),
    }
}

impl<'a> FromIterator<&'a Point> for Points {
    fn from_iter<I: IntoIterator<Item = &'a Point>>(iter: I) -> Points {
        let mut points = Points::new();
        for point in iter {
            points.push(point);
        }
        points
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_wire::codec::{decode_point, encode_point};

    fn run(values: std::ops::Range<i64>) -> Points {
        let mut points = Points::new();
        for v in values {
            points.push(&Point::new("m", v).with_field("v", v));
        }
        points
    }

    fn values(points: &Points) -> Vec<i64> {
        points.iter().map(|p| decode_point(p).unwrap().ts).collect()
    }

    #[test]
    fn slices_and_extends_keep_each_point_whole() {
        let points = run(0..10);
        assert_eq!(values(&points), (0..10).collect::<Vec<_>>());
        assert_eq!(
            points.get(3),
            &encode_point(&Point::new("m", 3).with_field("v", 3))[..]
        );
        let mut joined = points.slice(7..10);
        joined.extend_from(&points, 2..4);
        joined.extend_from(&points, 5..5);
        assert_eq!(values(&joined), vec![7, 8, 9, 2, 3]);
        assert_eq!(
            joined.byte_len(),
            points.span_len(7..10) + points.span_len(2..4)
        );
        assert!(points.slice(4..4).is_empty());
    }

    #[test]
    fn stored_form_round_trips_and_damage_is_refused() {
        let points = run(0..5);
        let raw = |p: &Points| p.bytes().to_vec();
        let back = Points::from_stored(raw(&points), &points.ends_blob(), None).unwrap();
        assert_eq!(back, points);
        assert_eq!(Points::from_stored(Vec::new(), &[], None).unwrap(), Points::new());
        let short = points.bytes()[..points.byte_len() - 1].to_vec();
        assert!(Points::from_stored(short, &points.ends_blob(), None).is_err());
        assert!(Points::from_stored(raw(&points), &points.ends_blob()[1..], None).is_err());
        let mut backwards = points.ends_blob();
        backwards.swap(0, 4);
        assert!(Points::from_stored(raw(&points), &backwards, None).is_err());
    }

    #[test]
    fn small_rows_stay_as_they_are_and_larger_ones_are_packed() {
        let small = run(0..2);
        assert_eq!(small.packed(), (Cow::Borrowed(small.bytes()), None));

        let points = run(0..500);
        let (body, raw_len) = points.packed();
        assert_eq!(raw_len, Some(points.byte_len()));
        assert!(body.len() * 3 < points.byte_len(), "{} of {}", body.len(), points.byte_len());
        let back =
            Points::from_stored(body.to_vec(), &points.ends_blob(), raw_len.map(|n| n as u64));
        assert_eq!(back.unwrap(), points);
    }

    #[test]
    fn damaged_packed_rows_are_refused_before_anything_is_allocated() {
        let points = run(0..500);
        let (body, raw_len) = points.packed();
        let (ends, len) = (points.ends_blob(), raw_len.unwrap() as u64);
        // The row's length disagrees with the offsets, or with the frame's header.
        assert!(Points::from_stored(body.to_vec(), &ends, Some(len + 1)).is_err());
        let mut longer = ends.clone();
        longer.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(Points::from_stored(body.to_vec(), &longer, Some(u64::from(u32::MAX))).is_err());
        // A frame cut short, flipped bytes, or no frame at all.
        assert!(Points::from_stored(body[..body.len() - 3].to_vec(), &ends, Some(len)).is_err());
        let mut flipped = body.to_vec();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0xff;
        flipped[middle + 1] ^= 0x55;
        assert!(Points::from_stored(flipped, &ends, Some(len)).is_err());
        assert!(Points::from_stored(points.bytes().to_vec(), &ends, Some(len)).is_err());
    }
}
