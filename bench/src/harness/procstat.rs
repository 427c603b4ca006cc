//! CPU time and memory of a process, from `/proc`.

use std::sync::OnceLock;

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User plus system CPU seconds the process has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resident set size now, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// Peak resident set size, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Bytes the process has caused to be written to storage (`write_bytes` of `/proc/PID/io`:
/// pages it dirtied, counted when dirtied, less what it truncated before writeback).
pub fn write_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |key: &str| -> Option<u64> {
        io.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
    };
    Some(field("write_bytes:")?.saturating_sub(field("cancelled_write_bytes:").unwrap_or(0)))
}

/// The resident memory of a process by kind, in KiB (`/proc/PID/status`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Resident {
    pub total: u64,
    pub anonymous: u64,
    pub file: u64,
    pub shared: u64,
}

/// [`Resident`] now.
pub fn resident(pid: u32) -> Option<Resident> {
    Some(Resident {
        total: status_kib(pid, "VmRSS:")?,
        anonymous: status_kib(pid, "RssAnon:")?,
        file: status_kib(pid, "RssFile:")?,
        shared: status_kib(pid, "RssShmem:").unwrap_or(0),
    })
}

/// Resident KiB per mapping (`/proc/PID/smaps`), summed by what is mapped: a file's path,
/// `[heap]`, `[stack]`, or `anonymous`; largest first.
pub fn resident_by_mapping(pid: u32) -> Vec<(String, u64)> {
    let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return Vec::new();
    };
    let mut sums: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut current = String::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // A mapping header: range, perms, offset, dev, inode, [path].
            current = words.nth(4).unwrap_or("anonymous").to_owned();
        } else if first == "Rss:" {
            let kib: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            *sums.entry(current.clone()).or_default() += kib;
        }
    }
    let mut sums: Vec<(String, u64)> = sums.into_iter().filter(|(_, kib)| *kib > 0).collect();
    sums.sort_by_key(|(_, kib)| std::cmp::Reverse(*kib));
    sums
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The processes whose parent is `pid` now (zombies included, until they are reaped).
pub fn children(pid: u32) -> Vec<u32> {
    let parent = pid.to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            stat_fields(*child).is_some_and(|f| f.get(1).is_some_and(|ppid| *ppid == parent))
        })
        .collect()
}

/// CPU seconds of a process and its children: its own, its live children's and those of the
/// children it has reaped (for a PostgreSQL postmaster, every backend and helper). A child
/// that has exited counts once it is reaped: see [`children`] to wait for that.
pub fn tree_cpu_seconds(pid: u32) -> Option<f64> {
    let ticks =
        |f: &[String], i: usize| -> f64 { f.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
    let own = stat_fields(pid)?;
    // utime, stime, cutime, cstime.
    let mut total = ticks(&own, 11) + ticks(&own, 12) + ticks(&own, 13) + ticks(&own, 14);
    for child in children(pid) {
        if let Some(f) = stat_fields(child) {
            total += ticks(&f, 11) + ticks(&f, 12);
        }
    }
    Some(total / clock_ticks())
}
