//! Records into encoded points, by the input's format.

use std::collections::BTreeMap;

use tributary_wire::codec::TextPointEncoder;

use super::{FileConfig, FileFormat};
use crate::buffer::{Ingest, NewReject};
use crate::format::{DecodeContext, Format, decode};
use crate::inputs::add_tags;

/// Turns records into encoded points.
pub(super) struct PointMaker<'a> {
    config: &'a FileConfig,
    path: &'a str,
    /// The path tag, the input's tags and the agent's, earlier ones winning: every point of
    /// this file gets those it does not carry.
    tags: BTreeMap<String, String>,
    /// Encodes `lines` records, which have exactly `tags`.
    lines: TextPointEncoder,
}

impl<'a> PointMaker<'a> {
    pub(super) fn new(
        config: &'a FileConfig,
        path: &'a str,
        agent_tags: &'a BTreeMap<String, String>,
    ) -> PointMaker<'a> {
        let mut tags = BTreeMap::new();
        if let Some(tag) = &config.path_tag {
            tags.insert(tag.clone(), path.to_owned());
        }
        for (key, value) in config.tags.iter().chain(agent_tags) {
            tags.entry(key.clone()).or_insert_with(|| value.clone());
        }
        PointMaker {
            config,
            path,
            lines: TextPointEncoder::new(&config.name, &tags, "message"),
            tags,
        }
    }

    pub(super) fn push(&self, record: &[u8], at: i64, ingest: &mut Ingest) {
        let format = match self.config.format {
            FileFormat::Lines => {
                if record.is_empty() {
                    return;
                }
                // Checked first with the fast validator; bad bytes become U+FFFD.
                let message = match std::str::from_utf8(record) {
                    Ok(text) => std::borrow::Cow::Borrowed(text),
                    Err(_) => String::from_utf8_lossy(record),
                };
                ingest.points.push_text(&self.lines, &message, at);
                return;
            }
            FileFormat::Json => Format::Json,
            FileFormat::Influx => Format::Influx,
        };
        if record.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let ctx = DecodeContext {
            name: &self.config.name,
            received_at: at,
            tag_keys: &self.config.tag_keys,
        };
        let decoded = decode(format, record, &ctx);
        for mut point in decoded.points {
            add_tags(&mut point, &self.tags);
            ingest.points.push(&point);
        }
        for rejected in decoded.rejected {
            ingest.rejects.push(NewReject {
                received_at: at,
                source: self.config.label.clone(),
                topic: self.path.to_owned(),
                payload: rejected.payload,
                reason: rejected.reason,
            });
        }
    }
}
