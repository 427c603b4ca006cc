//! One open file: its identity, position and fingerprint, and cutting what was read into
//! records.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use regex_lite::Regex;

use super::{CHUNK, OVERSIZED_KEPT};

/// A committed position: where to resume, and the fingerprint of the file it belongs to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SavedPosition {
    pub offset: u64,
    pub fingerprint_len: u64,
    pub fingerprint: [u8; 8],
}

impl SavedPosition {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.fingerprint_len.to_le_bytes());
        out.extend_from_slice(&self.fingerprint);
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<SavedPosition> {
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
pub(super) fn fingerprint(file: &File, len: u64) -> std::io::Result<[u8; 8]> {
    use std::os::unix::fs::FileExt;
    let mut head = vec![0u8; len as usize];
    file.read_exact_at(&mut head, 0)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &head);
    Ok(digest.as_ref()[..8].try_into().expect("8 bytes"))
}

/// A record cut out of a file, with the offset just past it.
pub(super) struct Record {
    pub(super) bytes: Vec<u8>,
    pub(super) end: u64,
}

/// One open file.
pub(super) struct Tail {
    /// The name it was last seen under.
    pub(super) path: PathBuf,
    pub(super) path_text: Arc<str>,
    pub(super) key: String,
    pub(super) file: File,
    /// Bytes up to here are committed or handed to the buffer.
    pub(super) offset: u64,
    /// Bytes read past `offset`, not yet part of an emitted record.
    pub(super) buf: Vec<u8>,
    /// Where in `buf` the next unscanned line starts.
    pub(super) scan: usize,
    /// Discarding an oversized line until its newline.
    pub(super) discarding: bool,
    pub(super) fingerprint_len: u64,
    pub(super) fingerprint: [u8; 8],
    pub(super) last_data: Instant,
    /// Still reachable under a name that matches the globs (as of the last scan).
    pub(super) matched: bool,
}

impl Tail {
    pub(super) fn open(
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

    pub(super) fn saved(&self) -> SavedPosition {
        SavedPosition {
            offset: self.offset,
            fingerprint_len: self.fingerprint_len,
            fingerprint: self.fingerprint,
        }
    }

    /// Reads one chunk; returns the bytes read (0 at the end of the file).
    pub(super) fn read_chunk(&mut self) -> std::io::Result<usize> {
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
    pub(super) fn records(
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
                // regex-lite matches text: a line that is not UTF-8 is matched with its
                // invalid bytes replaced (a record's bytes are kept as they are).
                if line_start > consumed && start.is_match(&String::from_utf8_lossy(line)) {
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
