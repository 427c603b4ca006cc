//! Points encoded back to back: what inputs hand to the buffer, what one buffer row stores, and
//! what a batch carries. One allocation holds many points, and a run of them is forwarded by
//! copying bytes, never by decoding.


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

    /// Rebuilds a run from the bytes and offsets [`Points::bytes`] and [`Points::ends_blob`]
    /// gave, checking that they fit together.
    pub fn from_stored(bytes: Vec<u8>, ends: &[u8]) -> Result<Points, Damaged> {
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
        if ends.last().map_or(0, |&e| e as usize) != bytes.len() {
            return Err(Damaged("offsets do not end at the last byte"));
        }
        Ok(Points { bytes, ends })
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
        let back = Points::from_stored(points.bytes().to_vec(), &points.ends_blob()).unwrap();
        assert_eq!(back, points);
        assert_eq!(Points::from_stored(Vec::new(), &[]).unwrap(), Points::new());
        let short = points.bytes()[..points.byte_len() - 1].to_vec();
        assert!(Points::from_stored(short, &points.ends_blob()).is_err());
        assert!(Points::from_stored(points.bytes().to_vec(), &points.ends_blob()[1..]).is_err());
        let mut backwards = points.ends_blob();
        backwards.swap(0, 4);
        assert!(Points::from_stored(points.bytes().to_vec(), &backwards).is_err());
    }
}
