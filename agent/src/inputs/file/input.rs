//! The running input: scanning the globs, reading every open file in turn, and handing records
//! with their positions to the buffer. All of it runs on the input's own thread (see
//! [`crate::inputs::thread`]); nothing here touches the event loop.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::points::PointMaker;
use super::tail::{SavedPosition, Tail, fingerprint};
use super::{CHUNKS_PER_TURN, FINGERPRINT, FileConfig, StartAt};
use crate::buffer::{BufferHandle, Checkpoint, Ingest, NewReject};
use crate::inputs::thread::{Halt, Stop};
use crate::metrics::Metrics;

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

    /// Tails until `stop` (on the input's own thread: every call here may block in the file
    /// system). Records already read but not yet sent are dropped then; their offsets were not
    /// committed, so the next run reads them again.
    pub fn run(mut self, stop: &Stop) {
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
                if self.scan(stop, first_scan, start_at_end).is_err() {
                    return;
                }
                first_scan = false;
                next_scan = Instant::now() + self.config.scan_interval;
            }
            let mut progressed = false;
            for index in 0..self.tails.len() {
                for _ in 0..CHUNKS_PER_TURN {
                    if stop.is_stopped() {
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
                        && stop.send(&self.buffer, ingest).is_err()
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
                if stop.sleep(wait).is_err() {
                    return;
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
    fn scan(&mut self, stop: &Stop, first_scan: bool, start_at_end: bool) -> Result<(), Halt> {
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
            stop.send(&self.buffer, item)?;
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
                stop.send(&self.buffer, item)?;
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
                    stop.send(&self.buffer, item)?;
                }
            }
            let tail = self.tails.remove(index);
            debug!(input = %self.config.label, path = %tail.path.display(), "closing a file that no longer matches (rotated away or deleted)");
            // Forget its position: the file is gone from the input's view.
            let forget = Ingest {
                checkpoint: Some(Checkpoint::State {
                    source: Arc::clone(&self.source),
                    key: tail.key,
                    value: Vec::new(),
                }),
                ..Ingest::default()
            };
            stop.send(&self.buffer, forget)?;
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
