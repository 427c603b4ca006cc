//! The writer's in-memory index of series ids, so a point finds its series without building
//! its canonical tag string (which is only made when a series is new).
//!
//! A series is `(name, tags, field)`, where the tags are the point's own with `agent` set to
//! the id its token belongs to (a point cannot choose its agent tag).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};

use tributary_wire::FieldValue;

/// The tag the collector sets from the token.
pub const AGENT_TAG: &str = "agent";

/// Series ids by identity.
#[derive(Debug, Default)]
pub struct SeriesCache {
    by_hash: HashMap<u64, Vec<Entry>>,
    /// foldhash, seeded per process: several times faster than SipHash on short tag strings,
    /// and still not predictable by an agent that would like to collide series.
    hasher: foldhash::fast::RandomState,
}

/// What values a series holds: set by its first value. Integers and floats are one class
/// (both roll up); a value of another class is a field type conflict, quarantined as
/// InfluxDB refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueClass {
    Number,
    Boolean,
    Text,
}

impl ValueClass {
    pub fn of(value: &FieldValue) -> ValueClass {
        match value {
            FieldValue::F64(_) | FieldValue::I64(_) => ValueClass::Number,
            FieldValue::Bool(_) => ValueClass::Boolean,
            FieldValue::Str(_) => ValueClass::Text,
        }
    }

    /// The class of a series' stored `kind` (`FieldValue::kind`).
    pub fn of_kind(kind: &str) -> ValueClass {
        match kind {
            "boolean" => ValueClass::Boolean,
            "string" => ValueClass::Text,
            _ => ValueClass::Number,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ValueClass::Number => "a number",
            ValueClass::Boolean => "a boolean",
            ValueClass::Text => "a string",
        }
    }
}

/// One `(name, tags)` and the ids (and value classes) of its fields' series.
#[derive(Debug)]
pub struct Entry {
    name: String,
    /// Canonical tags, `agent` included.
    tags: BTreeMap<String, String>,
    ids: HashMap<String, (i64, ValueClass), foldhash::fast::FixedState>,
}

impl Entry {
    /// The series id of `field`, if known.
    pub fn field(&self, field: &str) -> Option<i64> {
        self.ids.get(field).map(|(id, _)| *id)
    }

    /// The series id and value class of `field`, if known.
    pub fn field_class(&self, field: &str) -> Option<(i64, ValueClass)> {
        self.ids.get(field).copied()
    }
}

/// Hashes a series identity from a point's tags and its agent: the tags in order with any
/// `agent` tag skipped, then the agent. Canonical tags hash the same way, so both meet.
fn identity_hash<'a>(
    state: &foldhash::fast::RandomState,
    name: &str,
    tags: impl Iterator<Item = (&'a String, &'a String)>,
    agent: &str,
) -> u64 {
    let mut hasher = state.build_hasher();
    name.hash(&mut hasher);
    for (key, value) in tags.filter(|(k, _)| *k != AGENT_TAG) {
        key.hash(&mut hasher);
        value.hash(&mut hasher);
    }
    agent.hash(&mut hasher);
    hasher.finish()
}

fn same_tags(
    canonical: &BTreeMap<String, String>,
    point: &BTreeMap<String, String>,
    agent: &str,
) -> bool {
    canonical.get(AGENT_TAG).map(String::as_str) == Some(agent)
        && canonical
            .iter()
            .filter(|(k, _)| *k != AGENT_TAG)
            .eq(point.iter().filter(|(k, _)| *k != AGENT_TAG))
}

/// A point's tags with `agent` set to the token's agent.
pub fn canonical_tags(point: &BTreeMap<String, String>, agent: &str) -> BTreeMap<String, String> {
    let mut tags = point.clone();
    tags.insert(AGENT_TAG.to_owned(), agent.to_owned());
    tags
}

impl SeriesCache {
    /// The series of `(name, point_tags with agent)`, if any is known: look a point up once,
    /// then each field in the entry.
    pub fn entry(
        &self,
        name: &str,
        point_tags: &BTreeMap<String, String>,
        agent: &str,
    ) -> Option<&Entry> {
        let hash = identity_hash(&self.hasher, name, point_tags.iter(), agent);
        self.by_hash
            .get(&hash)?
            .iter()
            .find(|e| e.name == name && same_tags(&e.tags, point_tags, agent))
    }

    /// The id of series `(name, point_tags with agent, field)`, if known.
    pub fn get(
        &self,
        name: &str,
        point_tags: &BTreeMap<String, String>,
        agent: &str,
        field: &str,
    ) -> Option<i64> {
        self.entry(name, point_tags, agent)?.field(field)
    }

    /// Remembers a series by its canonical tags (with `agent`).
    pub fn insert(
        &mut self,
        name: &str,
        canonical: &BTreeMap<String, String>,
        field: &str,
        id: i64,
        class: ValueClass,
    ) {
        let agent = canonical.get(AGENT_TAG).map(String::as_str).unwrap_or("");
        let hash = identity_hash(&self.hasher, name, canonical.iter(), agent);
        let entries = self.by_hash.entry(hash).or_default();
        let index = match entries
            .iter()
            .position(|e| e.name == name && e.tags == *canonical)
        {
            Some(index) => index,
            None => {
                entries.push(Entry {
                    name: name.to_owned(),
                    tags: canonical.clone(),
                    ids: HashMap::default(),
                });
                entries.len().saturating_sub(1)
            }
        };
        if let Some(entry) = entries.get_mut(index) {
            entry.ids.insert(field.to_owned(), (id, class));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_point_finds_its_series_whatever_agent_tag_it_claims() {
        let mut cache = SeriesCache::default();
        let point = tags(&[("device", "d1"), ("site", "north")]);
        cache.insert(
            "temp",
            &canonical_tags(&point, "a1"),
            "value",
            7,
            ValueClass::Number,
        );
        assert_eq!(cache.get("temp", &point, "a1", "value"), Some(7));
        // A forged agent tag is replaced by the token's agent, so it finds the same series.
        let forged = tags(&[
            ("agent", "someone-else"),
            ("device", "d1"),
            ("site", "north"),
        ]);
        assert_eq!(cache.get("temp", &forged, "a1", "value"), Some(7));
        // Another agent, field, name or tag set is another series.
        assert_eq!(cache.get("temp", &point, "a2", "value"), None);
        assert_eq!(cache.get("temp", &point, "a1", "other"), None);
        assert_eq!(cache.get("humidity", &point, "a1", "value"), None);
        assert_eq!(
            cache.get("temp", &tags(&[("device", "d1")]), "a1", "value"),
            None
        );
        // Tags that sort around "agent" still match.
        let around = tags(&[("aaa", "1"), ("zzz", "2")]);
        cache.insert(
            "m",
            &canonical_tags(&around, "a1"),
            "f",
            9,
            ValueClass::Text,
        );
        assert_eq!(cache.get("m", &around, "a1", "f"), Some(9));
    }
}
