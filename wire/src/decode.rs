//! Decoding a batch within limits on what it becomes in memory.
//!
//! A compressed body's size says little about its decoded size: 537 KB of zstd can hold 62 MiB
//! of MessagePack with 3.6 million tiny points, about 1.4 GB once decoded. So decoding counts
//! as it goes, and stops with [`DecodeError::TooManyPoints`] or [`DecodeError::DecodedTooLarge`]
//! (the collector answers 413) as soon as a limit is passed, before the memory is taken:
//!
//! - every string is checked against the budget before it is allocated (serde hands the
//!   decoder borrowed text), so one huge string cannot overshoot it;
//! - every point, tag, field and reject is charged its estimated heap size as it is added,
//!   so a point with millions of tags stops within one entry of the limit;
//! - a MessagePack array announces its length, which is checked against the point limit
//!   before the vector is allocated.
//!
//! The size is an estimate of the heap the decoded batch occupies: the bytes of its strings
//! plus a fixed overhead per string, map entry and point (the sizes of the Rust values and
//! the B-tree nodes around them). Measured against the allocator it lies between 0.9 and 1.5
//! times what decoding really keeps, for readings, log lines, tiny points and points with
//! thousands of tags (`decoded_size_estimate_is_close` in the tests), which is what the
//! collector's memory budget needs: a bound, not an account.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserializer;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::batch::{AgentStatus, Batch, Reject};
use crate::codec::{DecodeError, Encoding};
use crate::point::{FieldValue, FieldValueVisitor, Point, StringSink};

/// How much one decoded batch may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Points (and rejects) per batch.
    pub max_points: usize,
    /// Estimated heap bytes of the decoded batch.
    pub max_bytes: usize,
}

impl DecodeLimits {
    /// No limit beyond the input's own size (for tools and tests).
    pub const NONE: DecodeLimits = DecodeLimits {
        max_points: usize::MAX,
        max_bytes: usize::MAX,
    };
}

/// A decoded batch and its estimated size in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub batch: Batch,
    /// Estimated heap bytes (see the module docs).
    pub size: usize,
}

/// Overhead charged per heap-allocated string besides its bytes (the allocator's rounding).
const STRING_OVERHEAD: usize = 16;
/// A map's first entry allocates a whole B-tree leaf (eleven keys and values, 544 bytes for
/// both maps of a point).
const MAP_NODE: usize = 560;
/// Each further entry: its share of the nodes a growing map splits into.
const ENTRY_OVERHEAD: usize = 64;
/// Per reject: the `Reject` struct in the batch's vector.
const REJECT_OVERHEAD: usize = std::mem::size_of::<Reject>();

/// What adding an entry to a map of `len` entries costs.
fn entry_cost(len: usize) -> usize {
    if len == 0 { MAP_NODE } else { ENTRY_OVERHEAD }
}

/// The estimated heap size of a point made some other way (a line of line protocol),
/// charged as [`decode_batch_limited`] charges a decoded one.
pub fn point_size(point: &Point) -> usize {
    let string = |text: &str| {
        if text.is_empty() {
            0
        } else {
            text.len().saturating_add(STRING_OVERHEAD)
        }
    };
    let mut size = std::mem::size_of::<Point>().saturating_add(string(&point.name));
    for (index, (key, value)) in point.tags.iter().enumerate() {
        size = size
            .saturating_add(entry_cost(index))
            .saturating_add(string(key))
            .saturating_add(string(value));
    }
    for (index, (key, value)) in point.fields.iter().enumerate() {
        let value = match value {
            FieldValue::Str(text) => string(text),
            _ => 0,
        };
        size = size
            .saturating_add(entry_cost(index))
            .saturating_add(string(key))
            .saturating_add(value);
    }
    size
}

/// What decoding has used so far.
struct Budget {
    limits: DecodeLimits,
    items: usize,
    bytes: usize,
    /// Set when a limit stopped decoding: the error the caller gets instead of serde's.
    exceeded: Option<DecodeError>,
}

impl Budget {
    fn charge<E: de::Error>(&mut self, bytes: usize) -> Result<(), E> {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > self.limits.max_bytes {
            self.exceeded = Some(DecodeError::DecodedTooLarge {
                limit: self.limits.max_bytes,
            });
            return Err(E::custom("the decoded batch is over its size limit"));
        }
        Ok(())
    }

    fn count<E: de::Error>(&mut self, announced: usize) -> Result<(), E> {
        self.items = self.items.saturating_add(announced);
        if self.items > self.limits.max_points {
            self.exceeded = Some(DecodeError::TooManyPoints {
                limit: self.limits.max_points,
            });
            return Err(E::custom("the batch has more points than allowed"));
        }
        Ok(())
    }

    fn string<E: de::Error>(&mut self, text: &str) -> Result<String, E> {
        if !text.is_empty() {
            self.charge(text.len().saturating_add(STRING_OVERHEAD))?;
        }
        Ok(text.to_owned())
    }
}

/// Decodes a decompressed body into a batch within `limits`, and checks its sequence
/// arithmetic.
pub fn decode_batch_limited(
    body: &[u8],
    encoding: Encoding,
    limits: DecodeLimits,
) -> Result<Decoded, DecodeError> {
    let mut budget = Budget {
        limits,
        items: 0,
        bytes: 0,
        exceeded: None,
    };
    let result = match encoding {
        Encoding::MsgPack => {
            // Borrowed: strings reach the visitors as slices of the body, uncopied.
            let mut de = rmp_serde::Deserializer::from_read_ref(body);
            BatchSeed(&mut budget)
                .deserialize(&mut de)
                .map_err(|e| e.to_string())
        }
        Encoding::Json => {
            let mut de = serde_json::Deserializer::from_slice(body);
            BatchSeed(&mut budget)
                .deserialize(&mut de)
                .and_then(|batch| de.end().map(|()| batch))
                .map_err(|e| e.to_string())
        }
    };
    let batch = match (result, budget.exceeded) {
        (_, Some(limit)) => return Err(limit),
        (Err(message), None) => return Err(DecodeError::Malformed(message)),
        (Ok(batch), None) => batch,
    };
    batch.validate().map_err(DecodeError::Malformed)?;
    Ok(Decoded {
        batch,
        size: budget.bytes,
    })
}

/// The names of `Batch`'s fields, in their array order.
const BATCH_FIELDS: &[&str] = &[
    "agent_id",
    "epoch",
    "first_seq",
    "last_seq",
    "dropped",
    "sent_at",
    "status",
    "points",
    "rejects",
];

struct BatchSeed<'b>(&'b mut Budget);

impl<'de> DeserializeSeed<'de> for BatchSeed<'_> {
    type Value = Batch;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Batch, D::Error> {
        deserializer.deserialize_struct("Batch", BATCH_FIELDS, self)
    }
}

/// The parts of a batch as they arrive, by field.
#[derive(Default)]
struct BatchParts {
    agent_id: Option<String>,
    epoch: Option<String>,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    dropped: Option<u64>,
    sent_at: Option<i64>,
    status: Option<AgentStatus>,
    points: Option<Vec<Point>>,
    rejects: Option<Vec<Reject>>,
}

impl BatchParts {
    fn finish<E: de::Error>(self) -> Result<Batch, E> {
        let missing = |name: &'static str| E::missing_field(name);
        Ok(Batch {
            agent_id: self.agent_id.ok_or_else(|| missing("agent_id"))?,
            epoch: self.epoch.ok_or_else(|| missing("epoch"))?,
            first_seq: self.first_seq.ok_or_else(|| missing("first_seq"))?,
            last_seq: self.last_seq.ok_or_else(|| missing("last_seq"))?,
            dropped: self.dropped.ok_or_else(|| missing("dropped"))?,
            sent_at: self.sent_at.ok_or_else(|| missing("sent_at"))?,
            status: self.status.ok_or_else(|| missing("status"))?,
            points: self.points.ok_or_else(|| missing("points"))?,
            rejects: self.rejects.ok_or_else(|| missing("rejects"))?,
        })
    }
}

impl<'de> Visitor<'de> for BatchSeed<'_> {
    type Value = Batch;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a batch")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Batch, A::Error> {
        let budget = self.0;
        let mut parts = BatchParts {
            agent_id: seq.next_element_seed(StringSeed(budget))?,
            epoch: seq.next_element_seed(StringSeed(budget))?,
            first_seq: seq.next_element()?,
            last_seq: seq.next_element()?,
            dropped: seq.next_element()?,
            sent_at: seq.next_element()?,
            status: seq.next_element()?,
            ..BatchParts::default()
        };
        parts.points = seq.next_element_seed(PointsSeed(budget))?;
        parts.rejects = seq.next_element_seed(RejectsSeed(budget))?;
        parts.finish()
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Batch, A::Error> {
        let budget = self.0;
        let mut parts = BatchParts::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "agent_id" => parts.agent_id = Some(map.next_value_seed(StringSeed(budget))?),
                "epoch" => parts.epoch = Some(map.next_value_seed(StringSeed(budget))?),
                "first_seq" => parts.first_seq = Some(map.next_value()?),
                "last_seq" => parts.last_seq = Some(map.next_value()?),
                "dropped" => parts.dropped = Some(map.next_value()?),
                "sent_at" => parts.sent_at = Some(map.next_value()?),
                "status" => parts.status = Some(map.next_value()?),
                "points" => parts.points = Some(map.next_value_seed(PointsSeed(budget))?),
                "rejects" => parts.rejects = Some(map.next_value_seed(RejectsSeed(budget))?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        parts.finish()
    }
}

/// A string, charged before it is allocated.
struct StringSeed<'b>(&'b mut Budget);

impl<'de> DeserializeSeed<'de> for StringSeed<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for StringSeed<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<String, E> {
        self.0.string(text)
    }
}

/// The points array.
struct PointsSeed<'b>(&'b mut Budget);

impl<'de> DeserializeSeed<'de> for PointsSeed<'_> {
    type Value = Vec<Point>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<Point>, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for PointsSeed<'_> {
    type Value = Vec<Point>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of points")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Point>, A::Error> {
        let budget = self.0;
        // The announced length is checked before anything is allocated for it.
        let announced = seq.size_hint().unwrap_or(0);
        budget.count::<A::Error>(announced)?;
        budget.charge::<A::Error>(announced.saturating_mul(std::mem::size_of::<Point>()))?;
        let mut points = Vec::with_capacity(announced);
        loop {
            if points.len() >= announced {
                // Past the announced length (JSON announces none): count as they come.
                budget.count::<A::Error>(1)?;
                budget.charge::<A::Error>(std::mem::size_of::<Point>())?;
            }
            match seq.next_element_seed(PointSeed(budget))? {
                Some(point) => points.push(point),
                None => break,
            }
        }
        Ok(points)
    }
}

/// The names of `Point`'s fields, in their array order.
const POINT_FIELDS: &[&str] = &["name", "tags", "fields", "ts"];

struct PointSeed<'b>(&'b mut Budget);

impl<'de> DeserializeSeed<'de> for PointSeed<'_> {
    type Value = Point;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Point, D::Error> {
        deserializer.deserialize_struct("Point", POINT_FIELDS, self)
    }
}

impl<'de> Visitor<'de> for PointSeed<'_> {
    type Value = Point;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a point")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Point, A::Error> {
        let budget = self.0;
        let name = seq
            .next_element_seed(StringSeed(budget))?
            .ok_or_else(|| de::Error::invalid_length(0, &"a point of 4 elements"))?;
        let tags = seq
            .next_element_seed(TagsSeed(budget))?
            .ok_or_else(|| de::Error::invalid_length(1, &"a point of 4 elements"))?;
        let fields = seq
            .next_element_seed(FieldsSeed(budget))?
            .ok_or_else(|| de::Error::invalid_length(2, &"a point of 4 elements"))?;
        let ts = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(3, &"a point of 4 elements"))?;
        Ok(Point {
            name,
            tags,
            fields,
            ts,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Point, A::Error> {
        let budget = self.0;
        let (mut name, mut tags, mut fields, mut ts) = (None, None, None, None);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "name" => name = Some(map.next_value_seed(StringSeed(budget))?),
                "tags" => tags = Some(map.next_value_seed(TagsSeed(budget))?),
                "fields" => fields = Some(map.next_value_seed(FieldsSeed(budget))?),
                "ts" => ts = Some(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Point {
            name: name.ok_or_else(|| de::Error::missing_field("name"))?,
            tags: tags.ok_or_else(|| de::Error::missing_field("tags"))?,
            fields: fields.ok_or_else(|| de::Error::missing_field("fields"))?,
            ts: ts.ok_or_else(|| de::Error::missing_field("ts"))?,
        })
    }
}

struct TagsSeed<'b>(&'b mut Budget);

impl<'de> DeserializeSeed<'de> for TagsSeed<'_> {
    type Value = BTreeMap<String, String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TagsSeed<'_> {
    type Value = BTreeMap<String, String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of tags")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let budget = self.0;
        let mut tags = BTreeMap::new();
        while let Some(key) = map.next_key_seed(StringSeed(budget))? {
            let value = map.next_value_seed(StringSeed(budget))?;
            budget.charge::<A::Error>(entry_cost(tags.len()))?;
            tags.insert(key, value);
        }
        Ok(tags)
    }
}

struct FieldsSeed<'b>(&'b mut Budget);

impl<'de> DeserializeSeed<'de> for FieldsSeed<'_> {
    type Value = BTreeMap<String, FieldValue>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldsSeed<'_> {
    type Value = BTreeMap<String, FieldValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of fields")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let budget = self.0;
        let mut fields = BTreeMap::new();
        while let Some(key) = map.next_key_seed(StringSeed(budget))? {
            let value = map.next_value_seed(ValueSeed(budget))?;
            budget.charge::<A::Error>(entry_cost(fields.len()))?;
            fields.insert(key, value);
        }
        Ok(fields)
    }
}

/// A field's value: a string value is charged before it is allocated.
struct ValueSeed<'b>(&'b mut Budget);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = FieldValue;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<FieldValue, D::Error> {
        deserializer.deserialize_any(FieldValueVisitor(self))
    }
}

impl StringSink for ValueSeed<'_> {
    fn take<E: de::Error>(self, text: &str) -> Result<String, E> {
        self.0.string(text)
    }
}

/// The rejects array: each reject is decoded whole (its strings and payload are copies of the
/// input, so their total is bounded by the body) and charged as it is added.
struct RejectsSeed<'b>(&'b mut Budget);

impl<'de> DeserializeSeed<'de> for RejectsSeed<'_> {
    type Value = Vec<Reject>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<Reject>, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RejectsSeed<'_> {
    type Value = Vec<Reject>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of rejects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Reject>, A::Error> {
        let budget = self.0;
        let mut rejects = Vec::new();
        while let Some(reject) = seq.next_element::<Reject>()? {
            budget.count::<A::Error>(1)?;
            let size = [
                reject.source.len(),
                reject.topic.len(),
                reject.payload.len(),
                reject.reason.len(),
                REJECT_OVERHEAD,
                4 * STRING_OVERHEAD,
            ]
            .iter()
            .fold(0usize, |sum, n| sum.saturating_add(*n));
            budget.charge::<A::Error>(size)?;
            rejects.push(reject);
        }
        Ok(rejects)
    }
}

#[cfg(test)]
mod tests;
