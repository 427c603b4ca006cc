//! Handing memory back to the system when the agent is idle (issue 18).
//!
//! Two kinds of memory stay resident after the work that needed them:
//!
//! * **Freed heap.** glibc's allocator raises its mmap and trim thresholds after a large block
//!   is freed (a batch buffer, a compression context) and from then on keeps up to that much
//!   freed memory at the top of its heap: about a megabyte of an idle agent's RSS. Fixing the
//!   thresholds gave it back but cost the busy path CPU (BENCHMARKS.md, "Edge footprint"), so
//!   [`release_freed`] calls `malloc_trim(0)` instead. musl's allocator returns freed pages by
//!   itself; there that part does nothing.
//! * **Code and constants run once.** Start-up (configuration, TLS set-up, opening the buffer)
//!   and any burst leave their pages of the binary and of the C library mapped, and the kernel
//!   maps 64 KiB around every page touched ("fault-around"). `release_file_pages` unmaps the
//!   read-only, file-backed pages nobody wrote; the next instruction or constant used faults
//!   its page back in from the page cache (a minor fault, no disk read while the file is
//!   cached). What stays resident is what the idle agent really runs. The pages are not lost:
//!   they stay in the page cache, where the kernel can reclaim them under memory pressure more
//!   readily than pages mapped into a process.
//!
//! The forwarder calls [`release`] once it has had nothing to send for a while, never while
//! points flow. The file-page part runs at most once per [`FILE_PAGES_EVERY`], sooner while
//! the agent is young: start-up does not end at the first idle moment (the broker's session,
//! each input's first run and the first self-metrics come later), so the gaps grow from
//! 5 s, doubling up to that minute.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most time between two `release_file_pages` runs once the agent has settled: the pages an
/// idle agent uses come back after each one (a few hundred minor faults), so it is not worth
/// doing every few seconds.
pub const FILE_PAGES_EVERY: Duration = Duration::from_secs(60);

/// The first gap between two `release_file_pages` runs; each later one doubles.
const FILE_PAGES_FIRST_GAP: Duration = Duration::from_secs(5);

/// `release_file_pages` when its gap has passed (see the module's notes), then
/// [`release_freed`].
pub fn release() {
    /// When file pages were last released, and the gap until the next time.
    static LAST: Mutex<Option<(Instant, Duration)>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let due = match *last {
        None => Some(FILE_PAGES_FIRST_GAP),
        Some((at, gap)) if at.elapsed() >= gap => Some((gap * 2).min(FILE_PAGES_EVERY)),
        Some(_) => None,
    };
    if let Some(next_gap) = due {
        *last = Some((Instant::now(), next_gap));
        drop(last);
        if let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") {
            let bytes = release_file_pages(&smaps);
            tracing::debug!(bytes, "unmapped clean file pages of code and constants");
        }
    }
    // Last, so the buffer smaps was read into goes back too.
    release_freed();
}

/// Returns the allocator's free memory to the system (`malloc_trim(0)` on glibc).
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only gives free memory of the allocator back to the system; it
        // takes the allocator's own locks, so it is safe from any thread at any time.
        #[allow(unsafe_code)]
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// A mapping of `/proc/self/smaps` whose resident pages can be unmapped without losing
/// anything: private, not writable, backed by a file, and without one page written (copied
/// on write), so every page reads back from the file exactly as it was.
#[derive(Debug, PartialEq, Eq)]
struct Droppable {
    start: usize,
    len: usize,
}

/// The mappings in `smaps` (the text of `/proc/self/smaps`) that [`Droppable`] describes and
/// that have pages resident.
fn droppable(smaps: &str) -> Vec<Droppable> {
    let mut found = Vec::new();
    // The mapping being read: its range if it qualifies by its header, and what its fields
    // said so far.
    let mut current: Option<(Droppable, bool)> = None;
    let mut close = |current: &mut Option<(Droppable, bool)>| {
        if let Some((mapping, true)) = current.take() {
            found.push(mapping);
        }
    };
    for line in smaps.lines() {
        let mut words = line.split_ascii_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            close(&mut current);
            let perms = words.next().unwrap_or("");
            let inode = words.nth(2).unwrap_or("0");
            let path = words.next().unwrap_or("");
            let qualifies = perms.len() == 4
                && perms.as_bytes()[0] == b'r'
                && perms.as_bytes()[1] == b'-'
                && perms.as_bytes()[3] == b'p'
                && inode != "0"
                && path.starts_with('/');
            if qualifies && end > start {
                let mapping = Droppable {
                    start,
                    len: end - start,
                };
                // Unknown until the fields are read: resident pages, nothing written.
                current = Some((mapping, false));
            } else {
                current = None;
            }
            continue;
        }
        let Some((_, ok)) = current.as_mut() else {
            continue;
        };
        let value = words.next().and_then(|v| v.parse::<u64>().ok());
        match first {
            "Rss:" => *ok = value.is_some_and(|kib| kib > 0),
            "Anonymous:" | "Private_Dirty:" | "Shared_Dirty:" | "Swap:" if value != Some(0) => {
                current = None;
            }
            // A locked mapping refuses MADV_DONTNEED; leave it be.
            "Locked:" if value != Some(0) => current = None,
            _ => {}
        }
    }
    close(&mut current);
    found
}

/// Unmaps the resident pages of the mappings in `smaps` that [`Droppable`] describes; returns
/// how many bytes of address space it asked the kernel to drop.
fn release_file_pages(smaps: &str) -> usize {
    let mut dropped = 0;
    for mapping in droppable(smaps) {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: the range is a whole private, read-only file mapping of this process in
            // which no page was ever written (smaps: no anonymous or dirty pages). For such a
            // mapping MADV_DONTNEED only removes page table entries: the next access faults
            // the same bytes back in from the file, so no thread can observe a difference.
            // The range stays mapped, so no pointer into it dangles.
            #[allow(unsafe_code)]
            let done = unsafe {
                libc::madvise(
                    mapping.start as *mut libc::c_void,
                    mapping.len,
                    libc::MADV_DONTNEED,
                )
            };
            if done == 0 {
                dropped += mapping.len;
            }
        }
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
00400000-00410000 r--p 00000000 fe:01 1234   /usr/bin/tributary-agent
Size:                 64 kB
Rss:                  48 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
Swap:                  0 kB
Locked:                0 kB
00410000-00800000 r-xp 00010000 fe:01 1234   /usr/bin/tributary-agent
Size:               4032 kB
Rss:                2048 kB
Shared_Dirty:          0 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
Locked:                0 kB
00800000-00810000 r--p 00400000 fe:01 1234   /usr/bin/tributary-agent
Size:                 64 kB
Rss:                  64 kB
Private_Dirty:        12 kB
Anonymous:            12 kB
00810000-00820000 rw-p 00410000 fe:01 1234   /usr/bin/tributary-agent
Size:                 64 kB
Rss:                  64 kB
Anonymous:            64 kB
01000000-01100000 rw-p 00000000 00:00 0      [heap]
Rss:                 512 kB
Anonymous:           512 kB
7f0000000000-7f0000010000 r--p 00000000 fe:01 99     /usr/lib/libc.so.6
Rss:                   0 kB
Anonymous:             0 kB
7f0000010000-7f0000100000 r-xp 00010000 fe:01 99     /usr/lib/libc.so.6
Rss:                 900 kB
Anonymous:             0 kB
7f0000200000-7f0000210000 r--s 00000000 fe:01 77     /var/lib/tributary/buffer.db-shm
Rss:                  64 kB
Anonymous:             0 kB
7ffd0000000-7ffd0002000 r-xp 00000000 00:00 0        [vdso]
Rss:                   8 kB
Anonymous:             0 kB
";

    #[test]
    fn only_clean_read_only_file_pages_that_are_resident_qualify() {
        let found = droppable(SMAPS);
        assert_eq!(
            found,
            vec![
                Droppable {
                    start: 0x400000,
                    len: 0x10000
                },
                Droppable {
                    start: 0x410000,
                    len: 0x3f0000
                },
                Droppable {
                    start: 0x7f0000010000,
                    len: 0xf0000
                },
            ]
        );
    }

    #[test]
    fn garbage_reads_as_nothing_to_drop() {
        assert!(droppable("").is_empty());
        assert!(droppable("zz-yy r-xp\nRss: 4 kB\n0-\n-\n").is_empty());
        // A header cut short, or fields without a header.
        assert!(droppable("00400000-00410000 r-xp").is_empty());
        assert!(droppable("Rss: 4 kB\nAnonymous: 0 kB\n").is_empty());
    }

    #[test]
    fn this_process_keeps_running_after_its_code_pages_are_dropped() {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let found = droppable(&smaps);
        assert!(!found.is_empty(), "the test binary's own code qualifies");
        assert!(release_file_pages(&smaps) > 0);
        // Code, constants and library calls all fault back in.
        let text: String = (0..1000).map(|n| format!("{n:x}")).collect();
        assert!(text.len() > 1000);
        release();
        release();
        assert!(
            std::fs::read_to_string("/proc/self/status")
                .unwrap()
                .contains("VmRSS")
        );
    }
}
