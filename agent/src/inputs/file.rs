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

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use regex::bytes::Regex;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use tributary_common::config::values::RawSize;
use tributary_common::config::{ConfigError, Source};
use tributary_wire::Point;
use tributary_wire::codec::TextPointEncoder;

use crate::buffer::{BufferHandle, Checkpoint, Ingest, NewReject};
use crate::config::{choices, duration, size};
use crate::format::{DecodeContext, Format, decode};
use crate::inputs::add_tags;
use crate::metrics::Metrics;

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

/// A committed position: where to resume, and the fingerprint of the file it belongs to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SavedPosition {
    pub offset: u64,
    pub fingerprint_len: u64,
    pub fingerprint: [u8; 8],
}

impl SavedPosition {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.fingerprint_len.to_le_bytes());
        out.extend_from_slice(&self.fingerprint);
        out
    }

    fn decode(bytes: &[u8]) -> Option<SavedPosition> {
        if bytes.len() != 24 {
            return None;
        }
        Some(SavedPosition {
            offset: u64::from_le_bytes(bytes[..8].try_into().ok()?),
            fingerprint_len: u64::from_le_bytes(bytes[8..16].try_into().ok()?),
            fingerprint: bytes[16..24].try_into().ok()?,
        })
    }
}

/// The fingerprint of `file`: a hash of its first `len` bytes (at most [`FINGERPRINT`]).
fn fingerprint(file: &File, len: u64) -> std::io::Result<[u8; 8]> {
    use std::os::unix::fs::FileExt;
    let mut head = vec![0u8; len as usize];
    file.read_exact_at(&mut head, 0)?;
    let digest = Sha256::digest(&head);
    Ok(digest[..8].try_into().expect("8 bytes"))
}

/// A record cut out of a file, with the offset just past it.
struct Record {
    bytes: Vec<u8>,
    end: u64,
}

/// One open file.
struct Tail {
    /// The name it was last seen under.
    path: PathBuf,
    path_text: Arc<str>,
    key: String,
    file: File,
    /// Bytes up to here are committed or handed to the buffer.
    offset: u64,
    /// Bytes read past `offset`, not yet part of an emitted record.
    buf: Vec<u8>,
    /// Where in `buf` the next unscanned line starts.
    scan: usize,
    /// Discarding an oversized line until its newline.
    discarding: bool,
    fingerprint_len: u64,
    fingerprint: [u8; 8],
    last_data: Instant,
    /// Still reachable under a name that matches the globs (as of the last scan).
    matched: bool,
}

impl Tail {
    fn open(
        path: &Path,
        file: File,
        offset: u64,
        fingerprint: (u64, [u8; 8]),
        key: String,
    ) -> std::io::Result<Tail> {
        let mut file = file;
        file.seek(SeekFrom::Start(offset))?;
        Ok(Tail {
            path_text: Arc::from(path.to_string_lossy().as_ref()),
            path: path.to_owned(),
            key,
            file,
            offset,
            buf: Vec::new(),
            scan: 0,
            discarding: false,
            fingerprint_len: fingerprint.0,
            fingerprint: fingerprint.1,
            last_data: Instant::now(),
            matched: true,
        })
    }

    fn saved(&self) -> SavedPosition {
        SavedPosition {
            offset: self.offset,
            fingerprint_len: self.fingerprint_len,
            fingerprint: self.fingerprint,
        }
    }

    /// Reads one chunk; returns the bytes read (0 at the end of the file).
    fn read_chunk(&mut self) -> std::io::Result<usize> {
        let start = self.buf.len();
        self.buf.resize(start + CHUNK, 0);
        let result = self.file.read(&mut self.buf[start..]);
        let n = *result.as_ref().unwrap_or(&0);
        self.buf.truncate(start + n);
        if n > 0 {
            self.last_data = Instant::now();
        }
        result
    }

    /// Cuts complete records out of `buf`. `flush` also ends a pending multi-line record.
    /// What exceeds `max_line` comes back as an `Err` record (its head) for the quarantine.
    fn records(
        &mut self,
        multiline: Option<&Regex>,
        max_line: usize,
        flush: bool,
        out: &mut Vec<Result<Record, Record>>,
    ) {
        let mut consumed = 0usize;
        let mut line_start = self.scan;
        while let Some(newline) = memchr::memchr(b'\n', &self.buf[line_start..]) {
            let line_end = line_start + newline;
            if self.discarding {
                // The rest of an oversized line, whose head is already quarantined.
                self.discarding = false;
                consumed = line_end + 1;
            } else if let Some(start) = multiline {
                let line = trim_cr(&self.buf[line_start..line_end]);
                if line_start > consumed && start.is_match(line) {
                    push_record(
                        &self.buf[consumed..line_start - 1],
                        self.offset + line_start as u64,
                        max_line,
                        out,
                    );
                    consumed = line_start;
                }
            } else {
                push_record(
                    &self.buf[consumed..line_end],
                    self.offset + line_end as u64 + 1,
                    max_line,
                    out,
                );
                consumed = line_end + 1;
            }
            line_start = line_end + 1;
        }
        if flush && multiline.is_some() && line_start > consumed {
            push_record(
                &self.buf[consumed..line_start - 1],
                self.offset + line_start as u64,
                max_line,
                out,
            );
            consumed = line_start;
        }
        let len = self.buf.len();
        if self.discarding {
            consumed = len;
            line_start = len;
        } else if len - consumed > max_line {
            // A partial line or pending record past the limit can never be emitted whole.
            let head = &self.buf[consumed..consumed + OVERSIZED_KEPT.min(len - consumed)];
            out.push(Err(Record {
                bytes: head.to_vec(),
                end: self.offset + len as u64,
            }));
            self.discarding = line_start < len;
            consumed = len;
            line_start = len;
        }
        self.buf.drain(..consumed);
        self.scan = line_start - consumed;
        self.offset += consumed as u64;
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn push_record(bytes: &[u8], end: u64, max_line: usize, out: &mut Vec<Result<Record, Record>>) {
    let bytes = trim_cr(bytes);
    if bytes.len() > max_line {
        out.push(Err(Record {
            bytes: bytes[..OVERSIZED_KEPT.min(bytes.len())].to_vec(),
            end,
        }));
    } else {
        out.push(Ok(Record {
            bytes: bytes.to_vec(),
            end,
        }));
    }
}

/// One `[[inputs.file]]` at run time.
pub struct FileInput {
    config: FileConfig,
    source: Arc<str>,
    saved: HashMap<String, SavedPosition>,
    buffer: BufferHandle,
    metrics: Arc<Metrics>,
    agent_tags: Arc<BTreeMap<String, String>>,
    tails: Vec<Tail>,
}

impl FileInput {
    /// `saved` holds the checkpoints this input committed before, by key.
    pub fn new(
        config: FileConfig,
        saved: Vec<(String, Vec<u8>)>,
        buffer: BufferHandle,
        metrics: Arc<Metrics>,
        agent_tags: Arc<BTreeMap<String, String>>,
    ) -> FileInput {
        let saved = saved
            .into_iter()
            .filter_map(|(key, value)| Some((key, SavedPosition::decode(&value)?)))
            .collect();
        FileInput {
            source: Arc::from(config.id.as_str()),
            config,
            saved,
            buffer,
            metrics,
            agent_tags,
            tails: Vec::new(),
        }
    }

    /// Tails until `shutdown`. Records already read but not yet sent are dropped then; their
    /// offsets were not committed, so the next run reads them again.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let first_run = self.saved.is_empty();
        let mut next_scan = Instant::now();
        let mut first_scan = true;
        let received = self
            .metrics
            .received
            .get_or_create(&Metrics::input(&self.config.label))
            .clone();
        loop {
            if Instant::now() >= next_scan {
                let start_at_end = first_scan && first_run && self.config.start_at == StartAt::End;
                if self.scan(first_scan, start_at_end).await.is_err() {
                    return;
                }
                first_scan = false;
                next_scan = Instant::now() + self.config.scan_interval;
            }
            let mut progressed = false;
            for index in 0..self.tails.len() {
                for _ in 0..CHUNKS_PER_TURN {
                    if shutdown.is_cancelled() {
                        return;
                    }
                    let n = match self.tails[index].read_chunk() {
                        Ok(n) => n,
                        Err(e) => {
                            warn!(input = %self.config.label, path = %self.tails[index].path.display(), error = %e, "read failed");
                            self.metrics.input_error(&self.config.label, "file", "read");
                            break;
                        }
                    };
                    let quiet = n == 0
                        && self.tails[index].last_data.elapsed() >= self.config.multiline_timeout;
                    if n == 0
                        && !(quiet
                            && self.config.multiline.is_some()
                            && !self.tails[index].buf.is_empty())
                    {
                        break;
                    }
                    progressed |= n > 0;
                    received.inc();
                    let ingest = self.cut(index, quiet);
                    if let Some(ingest) = ingest
                        && self.buffer.send(ingest).await.is_err()
                    {
                        return;
                    }
                    if n == 0 {
                        break;
                    }
                }
            }
            if !progressed {
                let wait = self
                    .config
                    .poll_interval
                    .min(next_scan.saturating_duration_since(Instant::now()));
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }

    /// Cuts the records read from tail `index` into a buffer item.
    fn cut(&mut self, index: usize, flush: bool) -> Option<Ingest> {
        let config = &self.config;
        let tail = &mut self.tails[index];
        let mut records = Vec::new();
        let before = tail.offset;
        tail.records(
            config.multiline.as_ref(),
            config.max_line,
            flush,
            &mut records,
        );
        if tail.offset == before {
            return None;
        }
        let at = tributary_wire::time::now_ns();
        let mut ingest = Ingest {
            checkpoint: Some(Checkpoint::State {
                source: Arc::clone(&self.source),
                key: tail.key.clone(),
                value: tail.saved().encode(),
            }),
            ..Ingest::default()
        };
        let path = Arc::clone(&tail.path_text);
        let encoder = PointMaker::new(config, &path, &self.agent_tags);
        for record in records {
            match record {
                Ok(record) => encoder.push(&record.bytes, at, &mut ingest),
                Err(record) => ingest.rejects.push(NewReject {
                    received_at: at,
                    source: config.label.clone(),
                    topic: path.to_string(),
                    reason: format!(
                        "record longer than max_line ({} bytes) ending at offset {}; its first {} bytes are kept",
                        config.max_line,
                        record.end,
                        record.bytes.len()
                    ),
                    payload: record.bytes,
                }),
            }
        }
        if !ingest.rejects.is_empty() {
            warn!(input = %config.label, path = %path, count = ingest.rejects.len(), reason = %ingest.rejects[0].reason, "quarantined records");
            self.metrics
                .input_error(&self.config.label, "file", "record_quarantined");
            self.metrics
                .rejected
                .get_or_create(&Metrics::input(&config.label))
                .inc_by(ingest.rejects.len() as u64);
        }
        Some(ingest)
    }

    /// Matches the globs, opens new files, notices rotation and truncation, and closes files
    /// that are gone. `start_at_end`: files found now without a checkpoint start at their end.
    async fn scan(
        &mut self,
        first_scan: bool,
        start_at_end: bool,
    ) -> Result<(), crate::buffer::WriterGone> {
        let mut found: Vec<PathBuf> = Vec::new();
        for pattern in &self.config.patterns {
            match glob::glob(pattern) {
                Ok(paths) => found.extend(paths.filter_map(Result::ok)),
                Err(e) => {
                    warn!(input = %self.config.label, %pattern, error = %e, "bad glob");
                    self.metrics.input_error(&self.config.label, "file", "glob");
                }
            }
        }
        for tail in &mut self.tails {
            tail.matched = false;
        }
        let mut initial = Vec::new();
        for path in found {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let key = format!("{}:{}", meta.dev(), meta.ino());
            if let Some(tail) = self.tails.iter_mut().find(|t| t.key == key) {
                tail.matched = true;
                if tail.path != path {
                    debug!(input = %self.config.label, from = %tail.path.display(), to = %path.display(), "file renamed");
                    tail.path_text = Arc::from(path.to_string_lossy().as_ref());
                    tail.path = path;
                }
                continue;
            }
            match self.open(&path, &meta, key, start_at_end) {
                Ok((tail, announce)) => {
                    if announce {
                        initial.push(self.position_item(&tail));
                    }
                    self.tails.push(tail);
                }
                Err(e) => {
                    warn!(input = %self.config.label, path = %path.display(), error = %e, "cannot open file");
                    self.metrics.input_error(&self.config.label, "file", "open");
                }
            }
        }
        if first_scan {
            self.find_rotated();
        }
        for item in initial {
            self.buffer.send(item).await?;
        }
        // Truncation, and files no longer reachable.
        let mut closed = Vec::new();
        for index in 0..self.tails.len() {
            let Ok(meta) = self.tails[index].file.metadata() else {
                continue;
            };
            let tail = &self.tails[index];
            // Shorter than what was read, or rewritten from the start (a truncation followed
            // by new data before this scan): read it again from the start.
            let rewritten = tail.fingerprint_len > 0
                && meta.len() >= tail.fingerprint_len
                && fingerprint(&tail.file, tail.fingerprint_len)
                    .is_ok_and(|f| f != tail.fingerprint);
            if meta.len() < tail.offset + tail.buf.len() as u64 || rewritten {
                info!(input = %self.config.label, path = %tail.path.display(), "file was truncated; reading it again from the start");
                self.metrics.file_truncations.inc();
                let item = self.restart(index);
                self.buffer.send(item).await?;
                continue;
            }
            let idle = tail.last_data.elapsed() >= self.config.scan_interval;
            if !tail.matched && idle && meta.len() <= tail.offset + tail.buf.len() as u64 {
                closed.push(index);
            }
        }
        for index in closed.into_iter().rev() {
            // An unterminated last line (or a pending multi-line record) ends with the file.
            if !self.tails[index].buf.is_empty() {
                self.tails[index].buf.push(b'\n');
                if let Some(item) = self.cut(index, true) {
                    self.buffer.send(item).await?;
                }
            }
            let tail = self.tails.remove(index);
            debug!(input = %self.config.label, path = %tail.path.display(), "closing a file that no longer matches (rotated away or deleted)");
            // Forget its position: the file is gone from the input's view.
            self.buffer
                .send(Ingest {
                    checkpoint: Some(Checkpoint::State {
                        source: Arc::clone(&self.source),
                        key: tail.key,
                        value: Vec::new(),
                    }),
                    ..Ingest::default()
                })
                .await?;
        }
        Ok(())
    }

    /// Opens a newly found file at its saved position, its end, or its start. The flag says
    /// whether the position must be committed now (a first-run start at the end).
    fn open(
        &mut self,
        path: &Path,
        meta: &std::fs::Metadata,
        key: String,
        start_at_end: bool,
    ) -> std::io::Result<(Tail, bool)> {
        let file = File::open(path)?;
        let len = meta.len();
        let head = len.min(FINGERPRINT);
        let print = fingerprint(&file, head)?;
        let (offset, fingerprint_len, fingerprint, announce) = match self.saved.get(&key) {
            Some(saved)
                if saved.offset <= len
                    && (saved.fingerprint_len == 0
                        || fingerprint(&file, saved.fingerprint_len).ok()
                            == Some(saved.fingerprint)) =>
            {
                debug!(input = %self.config.label, path = %path.display(), offset = saved.offset, "resuming");
                (
                    saved.offset,
                    saved.fingerprint_len,
                    saved.fingerprint,
                    false,
                )
            }
            Some(_) => {
                info!(input = %self.config.label, path = %path.display(), "a different file has the inode of one read before (or it was truncated); reading it from the start");
                (0, head, print, false)
            }
            None if start_at_end => (len, head, print, true),
            None => (0, head, print, false),
        };
        info!(input = %self.config.label, path = %path.display(), offset, "tailing");
        let tail = Tail::open(path, file, offset, (fingerprint_len, fingerprint), key)?;
        Ok((tail, announce))
    }

    /// At start: a file with a checkpoint that no glob matches any more was renamed by a
    /// rotation while the agent was down; it is looked for (by inode) in the directories of
    /// the globs and read to its end, so the lines written before the rotation are not lost.
    fn find_rotated(&mut self) {
        let missing: Vec<&String> = self
            .saved
            .keys()
            .filter(|key| !self.tails.iter().any(|t| &t.key == *key))
            .collect();
        if missing.is_empty() {
            return;
        }
        let mut dirs: Vec<PathBuf> = self
            .config
            .patterns
            .iter()
            .filter_map(|p| Path::new(p).parent().map(Path::to_path_buf))
            .filter(|dir| !dir.to_string_lossy().contains(['*', '?', '[']))
            .collect();
        dirs.sort();
        dirs.dedup();
        let mut found = Vec::new();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.filter_map(Result::ok) {
                let Ok(meta) = entry.metadata() else { continue };
                let key = format!("{}:{}", meta.dev(), meta.ino());
                if meta.is_file() && missing.contains(&&key) {
                    found.push((entry.path(), meta, key));
                }
            }
        }
        for (path, meta, key) in found {
            match self.open(&path, &meta, key, false) {
                Ok((mut tail, _)) => {
                    info!(input = %self.config.label, path = %path.display(), "finishing a file rotated away while the agent was stopped");
                    tail.matched = false;
                    self.tails.push(tail);
                }
                Err(e) => {
                    warn!(input = %self.config.label, path = %path.display(), error = %e, "cannot open file");
                    self.metrics.input_error(&self.config.label, "file", "open");
                }
            }
        }
    }

    /// After a truncation: emits what was read before it (an unterminated last line ends where
    /// the truncation cut it) and moves the tail to the start, in one buffer item.
    fn restart(&mut self, index: usize) -> Ingest {
        let tail = &mut self.tails[index];
        if !tail.buf.is_empty() && !tail.buf.ends_with(b"\n") {
            tail.buf.push(b'\n');
        }
        let mut item = self.cut(index, true).unwrap_or_default();
        let tail = &mut self.tails[index];
        tail.buf.clear();
        tail.scan = 0;
        tail.discarding = false;
        tail.offset = 0;
        let head = tail.file.metadata().map_or(0, |m| m.len().min(FINGERPRINT));
        tail.fingerprint_len = head;
        tail.fingerprint = fingerprint(&tail.file, head).unwrap_or([0; 8]);
        if let Err(e) = tail.file.seek(SeekFrom::Start(0)) {
            warn!(input = %self.config.label, path = %tail.path.display(), error = %e, "cannot seek");
            self.metrics.input_error(&self.config.label, "file", "read");
        }
        item.checkpoint = self.position_item(&self.tails[index]).checkpoint;
        item
    }

    /// A buffer item that only records a tail's position.
    fn position_item(&self, tail: &Tail) -> Ingest {
        Ingest {
            checkpoint: Some(Checkpoint::State {
                source: Arc::clone(&self.source),
                key: tail.key.clone(),
                value: tail.saved().encode(),
            }),
            ..Ingest::default()
        }
    }
}

/// For `tributary-agent test`: the first `limit` records of each matching file, read from the
/// start, as the points they would become; and notes on what was found.
pub fn sample(
    config: &FileConfig,
    agent_tags: &BTreeMap<String, String>,
    limit: usize,
) -> (Vec<Point>, Vec<String>) {
    let mut points = Vec::new();
    let mut notes = Vec::new();
    let mut found = 0;
    for pattern in &config.patterns {
        let Ok(paths) = glob::glob(pattern) else {
            continue;
        };
        for path in paths.filter_map(Result::ok).filter(|p| p.is_file()) {
            found += 1;
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) => {
                    notes.push(format!("{}: cannot open: {e}", path.display()));
                    continue;
                }
            };
            let Ok(mut tail) = Tail::open(&path, file, 0, (0, [0; 8]), String::new()) else {
                continue;
            };
            let mut records = Vec::new();
            while records.len() < limit {
                match tail.read_chunk() {
                    Ok(0) | Err(_) => {
                        tail.records(
                            config.multiline.as_ref(),
                            config.max_line,
                            true,
                            &mut records,
                        );
                        break;
                    }
                    Ok(_) => tail.records(
                        config.multiline.as_ref(),
                        config.max_line,
                        false,
                        &mut records,
                    ),
                }
            }
            records.truncate(limit);
            let path_text = path.to_string_lossy();
            let maker = PointMaker::new(config, &path_text, agent_tags);
            let mut ingest = Ingest::default();
            let at = tributary_wire::time::now_ns();
            for record in records {
                match record {
                    Ok(record) => maker.push(&record.bytes, at, &mut ingest),
                    Err(record) => notes.push(format!(
                        "{}: would quarantine a record longer than max_line ({} bytes)",
                        path.display(),
                        record.bytes.len()
                    )),
                }
            }
            for reject in ingest.rejects {
                notes.push(format!(
                    "{}: would quarantine: {}",
                    path.display(),
                    reject.reason
                ));
            }
            points.extend(
                ingest
                    .points
                    .iter()
                    .filter_map(|bytes| tributary_wire::codec::decode_point(bytes).ok()),
            );
            notes.push(format!(
                "{}: showing up to {limit} records from the start",
                path.display()
            ));
        }
    }
    if found == 0 {
        notes.push(format!("no file matches {}", config.patterns.join(", ")));
    }
    (points, notes)
}

/// Turns records into encoded points.
struct PointMaker<'a> {
    config: &'a FileConfig,
    path: &'a str,
    /// The path tag, the input's tags and the agent's, earlier ones winning: every point of
    /// this file gets those it does not carry.
    tags: BTreeMap<String, String>,
    /// Encodes `lines` records, which have exactly `tags`.
    lines: TextPointEncoder,
}

impl<'a> PointMaker<'a> {
    fn new(
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

    fn push(&self, record: &[u8], at: i64, ingest: &mut Ingest) {
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

#[cfg(test)]
mod tests;
