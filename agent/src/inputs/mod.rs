//! The inputs: where readings come from. Each kind is a module with its config, its task and
//! its tests; all of them write through the same [`crate::buffer::BufferHandle`].

pub mod mqtt;

use std::collections::BTreeMap;

use tributary_wire::Point;

/// Adds configured tags to a point without overriding the ones it already has: the point's
/// own tags win over the input's `tags`, which win over the agent's `tags`.
pub fn add_tags(point: &mut Point, tags: &BTreeMap<String, String>) {
    for (key, value) in tags {
        if !point.tags.contains_key(key) {
            point.tags.insert(key.clone(), value.clone());
        }
    }
}
