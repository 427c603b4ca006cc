//! The inputs: where readings come from. Each kind is a module with its config, its task and
//! its tests; all of them write through the same [`crate::buffer::BufferHandle`].

pub mod exec;
pub mod file;
pub mod http;
pub mod mqtt;
pub mod own;
pub mod polled;
panic_free_mod!(
    pub mod prometheus;
);
pub mod schedule;
pub mod sql;
pub mod system;
pub mod thread;

use std::collections::BTreeMap;

use tributary_wire::Point;

use crate::config::InputConfig;
use crate::inputs::polled::{PolledInput, Poller};

/// Adds configured tags to a point without overriding the ones it already has: the point's
/// own tags win over the input's `tags`, which win over the agent's `tags`.
pub fn add_tags(point: &mut Point, tags: &BTreeMap<String, String>) {
    for (key, value) in tags {
        if !point.tags.contains_key(key) {
            point.tags.insert(key.clone(), value.clone());
        }
    }
}

/// The polled input for `config`, or `None` for inputs that are not polled (MQTT, file).
/// `saved` holds the checkpoints the input committed before.
pub fn polled(
    config: &InputConfig,
    saved: &[(String, Vec<u8>)],
) -> Option<Result<PolledInput, String>> {
    let (common, poller) = match config {
        InputConfig::Mqtt(_) | InputConfig::File(_) => return None,
        InputConfig::Exec(c) => (
            c.common.clone(),
            Poller::Exec(exec::ExecPoller::new(c.clone())),
        ),
        InputConfig::Http(c) => match http::HttpPoller::new(c.clone()) {
            Ok(poller) => (c.common.clone(), Poller::Http(Box::new(poller))),
            Err(e) => {
                return Some(Err(format!(
                    "{}: cannot set up the HTTP client: {e}",
                    c.common.label
                )));
            }
        },
        InputConfig::System(c) => (
            c.common.clone(),
            Poller::System(system::SystemPoller::new(c.clone())),
        ),
        InputConfig::Sql(c) => {
            let last = saved
                .iter()
                .find(|(key, _)| key == sql::TRACKING_KEY)
                .map(|(_, v)| v.as_slice());
            (
                c.common.clone(),
                Poller::Sql(sql::SqlPoller::new(c.clone(), last)),
            )
        }
    };
    Some(Ok(PolledInput { common, poller }))
}
