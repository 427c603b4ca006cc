//! The file input: tails the files that match globs, exactly once across crashes.
//!
//! # Identity and offsets
//!
//! A file is known by its device and inode, not its name, so a file renamed by rotation
//! (`app.log` -> `app.log.1`) is still the same file, whether or not the new name matches
//! the globs. Its read offset is stored as a buffer checkpoint under `<dev>:<ino>`, **in the
//! same transaction as the records it covers**: after a crash the file is read again from the
//! last committed offset, so no line is lost and none repeated. A checkpoint also holds a
//! fingerprint (a hash of the file's first bytes), so a new file that reuses a deleted file's
//! inode is read from its start, not from the old offset.
//!
//! # Where reading starts
//!
//! A file with a checkpoint resumes there. On the input's very first run, files that exist
//! start at the end (`start_at = "end"`, the default, like Telegraf) or the beginning; their
//! positions are committed at once, so a restart does not skip what was written meanwhile.
//! Every file that appears later is read from its beginning.
//!
//! # Rotation
//!
//! * **Rename** (logrotate's default): the open handle keeps reading the old file to its end;
//!   the new file under the old name is found by the next glob scan and read from its start.
//!   A file that no longer has a matching name and has been idle for a scan is closed and its
//!   checkpoint removed.
//! * **Truncation** (copytruncate): a file shorter than the offset is read again from 0; an
//!   unterminated last line is emitted first.
//!
//! # Records
//!
//! A partial last line is held until its newline arrives. With `multiline_start`, a record
//! runs from one line that matches the pattern to the next (stack traces); the last record is
//! emitted once the file has been quiet for `multiline_timeout`. A line or record longer than
//! `max_line` is quarantined (its first 4 KiB) with the reason, never silently dropped.
//! Formats: `lines` (a string field `message`), `json`, `influx`. Points are tagged with the
//! file's path (`path_tag`, default `path`) and stamped with the time they were read.
//!
//! # Threads
//!
//! Everything that touches the file system (globbing, `stat`, opening, fingerprints, reads)
//! runs on the input's own thread, never on the agent's event loop: a hung network mount or a
//! FIFO stops this input only, while MQTT keeps acknowledging and the watchdog keeps pinging.
//! See [`crate::inputs::thread`].

mod input;
mod points;
mod sample;
mod tail;

use std::collections::BTreeMap;
use std::time::Duration;

use regex_lite::Regex;
use serde::Deserialize;
use tributary_common::config::values::RawSize;
use tributary_common::config::{ConfigError, Source};

use tributary_common::choices;
use tributary_common::config::values::{duration, size};

pub use input::FileInput;
pub use sample::sample;
pub use tail::SavedPosition;
#[cfg(test)]
use {std::fs::File, tail::Tail};

/// Bytes read from a file at a time.
const CHUNK: usize = 256 * 1024;
/// Chunks read from one file before the others get a turn.
const CHUNKS_PER_TURN: usize = 8;
/// Bytes hashed for a file's fingerprint.
const FINGERPRINT: u64 = 256;
/// How much of an oversized record the quarantine keeps.
const OVERSIZED_KEPT: usize = 4096;

/// `[[inputs.file]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    /// Name of the points (formats other than `influx`). Default: `file`.
    pub name: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Globs of the files to tail, e.g. `["/var/log/app/*.log"]`.
    #[serde(default)]
    pub paths: Vec<String>,
    /// `lines`, `json` or `influx`.
    pub format: Option<FileFormat>,
    /// `end` (default) or `beginning`: where files found on the first run start.
    pub start_at: Option<StartAt>,
    /// A regular expression that starts a record; lines that do not match join the record.
    pub multiline_start: Option<String>,
    /// How long the last multi-line record waits for more lines. Default: 1s.
    pub multiline_timeout: Option<String>,
    /// Longest line or record. Default: 1MiB.
    pub max_line: Option<RawSize>,
    /// How often an idle file is checked for new data. Default: 250ms.
    pub poll_interval: Option<String>,
    /// How often the globs are matched again and files checked for rotation. Default: 1s.
    pub scan_interval: Option<String>,
    /// Tag holding the file's path; `""` for none. Default: `path`.
    pub path_tag: Option<String>,
    /// JSON members that become tags.
    #[serde(default)]
    pub tag_keys: Vec<String>,
    /// Names this input's saved positions. Default: derived from `paths`.
    pub id: Option<String>,
}

/// Formats a file input reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(try_from = "String")]
pub enum FileFormat {
    #[default]
    Lines,
    Json,
    Influx,
}

choices!(FileFormat, "file format", {
    "lines" => FileFormat::Lines,
    "json" => FileFormat::Json,
    "influx" => FileFormat::Influx,
});

/// Where files found on the first run start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(try_from = "String")]
pub enum StartAt {
    #[default]
    End,
    Beginning,
}

choices!(StartAt, "start position", { "end" => StartAt::End, "beginning" => StartAt::Beginning });

/// A checked `[[inputs.file]]`.
#[derive(Debug, Clone)]
pub struct FileConfig {
    pub label: String,
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub patterns: Vec<String>,
    pub format: FileFormat,
    pub start_at: StartAt,
    pub multiline: Option<Regex>,
    pub multiline_timeout: Duration,
    pub max_line: usize,
    pub poll_interval: Duration,
    pub scan_interval: Duration,
    pub path_tag: Option<String>,
    pub tag_keys: Vec<String>,
    /// Checkpoint source id.
    pub id: String,
}

impl RawFile {
    pub fn resolve(self, index: usize, source: &Source) -> Result<FileConfig, ConfigError> {
        let label = format!("inputs.file[{index}]");
        let key = |name: &str| format!("inputs.file[{index}].{name}");
        if self.paths.is_empty() {
            return Err(source.error(
                key("paths"),
                "needs at least one glob, e.g. [\"/var/log/app/*.log\"]",
            ));
        }
        for (i, pattern) in self.paths.iter().enumerate() {
            glob::Pattern::new(pattern).map_err(|e| {
                source.error(
                    key(&format!("paths[{i}]")),
                    format!("{pattern:?} is not a valid glob: {e}"),
                )
            })?;
        }
        let multiline = match &self.multiline_start {
            Some(text) => Some(Regex::new(text).map_err(|e| {
                source.error(
                    key("multiline_start"),
                    format!("{text:?} is not a valid regular expression: {e}"),
                )
            })?),
            None => None,
        };
        let max_line = size(source, &key("max_line"), self.max_line, "1MiB")?;
        if max_line < 64 {
            return Err(source.error(key("max_line"), "must be at least 64B"));
        }
        let poll_interval = duration(
            source,
            &key("poll_interval"),
            self.poll_interval.as_deref(),
            "250ms",
        )?;
        let scan_interval = duration(
            source,
            &key("scan_interval"),
            self.scan_interval.as_deref(),
            "1s",
        )?;
        if poll_interval.is_zero() || scan_interval.is_zero() {
            return Err(source.error(
                key("poll_interval"),
                "poll_interval and scan_interval must be above zero",
            ));
        }
        let name = self.name.unwrap_or_else(|| "file".to_owned());
        let id = self
            .id
            .unwrap_or_else(|| format!("file:{}", self.paths.join(",")));
        Ok(FileConfig {
            label,
            name,
            tags: self.tags,
            patterns: self.paths,
            format: self.format.unwrap_or_default(),
            start_at: self.start_at.unwrap_or_default(),
            multiline,
            multiline_timeout: duration(
                source,
                &key("multiline_timeout"),
                self.multiline_timeout.as_deref(),
                "1s",
            )?,
            max_line: usize::try_from(max_line).unwrap_or(usize::MAX),
            poll_interval,
            scan_interval,
            path_tag: match self.path_tag {
                Some(tag) if tag.is_empty() => None,
                Some(tag) => Some(tag),
                None => Some("path".to_owned()),
            },
            tag_keys: self.tag_keys,
            id,
        })
    }
}

#[cfg(test)]
mod tests;
