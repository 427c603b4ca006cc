//! The system input: the device's own vital signs, named as Telegraf's system inputs name them
//! (the README's "System input reference" lists every measurement, tag, field and unit).
//!
//! | measurement | tags | fields |
//! |---|---|---|
//! | `cpu` | `cpu` (`cpu-total`, `cpu0`, …) | `usage_user`, `usage_system`, `usage_idle`, `usage_nice`, `usage_iowait`, `usage_irq`, `usage_softirq`, `usage_steal`, `usage_guest`, `usage_guest_nice` (percent of the time since the last poll) |
//! | `mem` | | `total`, `available`, `used`, `free`, `cached`, `buffered` (bytes), `used_percent`, `available_percent` |
//! | `swap` | | `total`, `used`, `free` (bytes), `used_percent` |
//! | `system` | | `load1`, `load5`, `load15`, `n_cpus`, `uptime` (seconds) |
//! | `disk` | `path`, `device`, `fstype` | `total`, `free`, `used` (bytes), `used_percent`, `inodes_total`, `inodes_free`, `inodes_used` |
//! | `diskio` | `name` | `reads`, `writes`, `read_bytes`, `write_bytes`, `read_time`, `write_time`, `io_time` (ms), `iops_in_progress` (counters since boot) |
//! | `net` | `interface` | `bytes_sent`, `bytes_recv`, `packets_sent`, `packets_recv`, `err_in`, `err_out`, `drop_in`, `drop_out` (counters since boot) |
//! | `temp` | `sensor` | `temp` (°C, from `/sys/class/thermal`) |
//! | `procstat` | `process_name` = `tributary-agent` | `memory_rss` (bytes), `cpu_time_user`, `cpu_time_system` (seconds), `cpu_usage` (percent of one core since the last poll) |
//!
//! Everything comes from `/proc` (through the procfs crate) and `/sys`; a source that cannot be
//! read (no swap, no thermal zones, a container without `/proc/diskstats`) is left out, and
//! the first failure of each is logged and counted.
//!
//! The reads run on the blocking pool, never on the event loop. `statvfs` of each mount runs on
//! a thread of its own with a [`STATVFS_TIMEOUT`]: a mount that does not answer (a hung NFS
//! server) is left out, logged and counted, and skipped until its call returns. Network and
//! userspace file systems ([`NETWORK_FS`], `fuse`, `fuse.*`) are left out unless named in
//! `mount_points`.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use procfs::{Current, CurrentSI};
use serde::Deserialize;
use tributary_common::config::{ConfigError, Source};
use tributary_wire::{FieldValue, Point};

use super::polled::{PollError, Polled, PolledSettings, raw_timing};

/// The groups of readings, in the order they are taken.
pub const GROUPS: [&str; 9] = [
    "cpu", "mem", "swap", "system", "disk", "diskio", "net", "temp", "process",
];

/// File systems without a disk behind them, left out of `disk` unless `ignore_fs` is set.
const VIRTUAL_FS: [&str; 27] = [
    "tmpfs",
    "devtmpfs",
    "devfs",
    "iso9660",
    "overlay",
    "aufs",
    "squashfs",
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "hugetlbfs",
    "autofs",
    "binfmt_misc",
    "rpc_pipefs",
    "nsfs",
    "efivarfs",
    "ramfs",
];

/// File systems served over the network, left out of `disk` unless named in `mount_points`:
/// their `statvfs` waits on a server. `fuse` and `fuse.*` (userspace, e.g. sshfs) are too.
pub const NETWORK_FS: [&str; 16] = [
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ncpfs",
    "afs",
    "9p",
    "ceph",
    "glusterfs",
    "lustre",
    "gfs2",
    "ocfs2",
    "davfs",
    "sshfs",
    "coda",
];

/// How long one mount's `statvfs` may take before the mount is left out of this poll.
pub const STATVFS_TIMEOUT: Duration = Duration::from_secs(2);

/// `[[inputs.system]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSystem {
    /// Not used for names (each reading has its measurement); accepted for symmetry.
    pub name: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub interval: Option<String>,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub jitter: Option<String>,
    /// Which groups to read. Default: all of them.
    pub collect: Option<Vec<String>>,
    /// Per-core CPU points besides `cpu-total`. Default: true.
    pub percpu: Option<bool>,
    /// File system types left out of `disk`. Default: the virtual ones (tmpfs, overlay, …).
    pub ignore_fs: Option<Vec<String>>,
    /// Only these mount points in `disk`, network file systems included. Default: every mount
    /// but the ignored and the network ones.
    pub mount_points: Option<Vec<String>>,
}

/// A checked `[[inputs.system]]`.
#[derive(Debug, Clone)]
pub struct SystemConfig {
    pub common: PolledSettings,
    pub collect: HashSet<&'static str>,
    pub percpu: bool,
    pub ignore_fs: HashSet<String>,
    pub mount_points: Option<HashSet<String>>,
}

impl RawSystem {
    pub fn resolve(self, index: usize, source: &Source) -> Result<SystemConfig, ConfigError> {
        let timing = raw_timing!(self);
        let common =
            PolledSettings::resolve("system", index, self.name, self.tags, &timing, source)?;
        let collect = match self.collect {
            None => GROUPS.into_iter().collect(),
            Some(groups) => {
                let mut chosen = HashSet::new();
                for (i, group) in groups.iter().enumerate() {
                    let known = GROUPS.iter().find(|g| **g == group).ok_or_else(|| {
                        source.error(
                            common.key(&format!("collect[{i}]")),
                            format!(
                                "{group:?} is not a group; choose from {}",
                                GROUPS.join(", ")
                            ),
                        )
                    })?;
                    chosen.insert(*known);
                }
                chosen
            }
        };
        Ok(SystemConfig {
            common,
            collect,
            percpu: self.percpu.unwrap_or(true),
            ignore_fs: self
                .ignore_fs
                .unwrap_or_else(|| VIRTUAL_FS.iter().map(|s| (*s).to_owned()).collect())
                .into_iter()
                .collect(),
            mount_points: self.mount_points.map(|points| points.into_iter().collect()),
        })
    }
}

impl SystemConfig {
    /// Whether `disk` reads the mount at `path` of type `fs`.
    fn reads_mount(&self, path: &str, fs: &str) -> bool {
        if self.ignore_fs.contains(fs) {
            return false;
        }
        match &self.mount_points {
            Some(named) => named.contains(path),
            None => !is_network_fs(fs),
        }
    }
}

/// Whether `fs` is served over the network or from userspace (and may hang).
fn is_network_fs(fs: &str) -> bool {
    NETWORK_FS.contains(&fs) || fs == "fuse" || fs.starts_with("fuse.")
}

/// CPU and process times from the previous poll, for percentages.
#[derive(Default)]
struct Previous {
    cpus: Vec<(String, procfs::CpuTime)>,
    /// utime, stime (ticks), RSS (pages), when read.
    process: Option<(u64, u64, u64, std::time::Instant)>,
}

/// Polls the system for one `[[inputs.system]]`: the reads run on the blocking pool.
pub struct SystemPoller {
    /// Absent while a read runs (it owns the reader then).
    reader: Option<SystemReader>,
}

/// What a read needs and keeps between reads.
struct SystemReader {
    config: SystemConfig,
    mounts: MountProbe,
    previous: Option<Previous>,
    /// Sources already reported as unreadable (each is logged once).
    failed: HashSet<&'static str>,
    ticks: f64,
    page_size: u64,
}

impl SystemPoller {
    pub fn new(config: SystemConfig) -> SystemPoller {
        SystemPoller {
            reader: Some(SystemReader {
                config,
                mounts: MountProbe::default(),
                previous: None,
                failed: HashSet::new(),
                ticks: procfs::ticks_per_second() as f64,
                page_size: procfs::page_size(),
            }),
        }
    }

    pub async fn poll(&mut self, at: i64) -> Result<Polled, PollError> {
        let mut reader = self
            .reader
            .take()
            .ok_or_else(|| PollError::new("busy", "the previous read did not finish"))?;
        if reader.previous.is_none() && reader.wants("cpu") | reader.wants("process") {
            // Percentages need two readings: the very first poll takes a baseline first.
            let (back, ()) = blocking(reader, |reader| {
                reader.previous = Some(reader.sample_times());
            })
            .await?;
            reader = back;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let (reader, polled) = blocking(reader, move |reader| reader.read(at)).await?;
        self.reader = Some(reader);
        Ok(polled)
    }
}

/// Runs `read` on the blocking pool with the reader, and hands the reader back.
async fn blocking<T: Send + 'static>(
    mut reader: SystemReader,
    read: impl FnOnce(&mut SystemReader) -> T + Send + 'static,
) -> Result<(SystemReader, T), PollError> {
    tokio::task::spawn_blocking(move || {
        let out = read(&mut reader);
        (reader, out)
    })
    .await
    .map_err(|e| PollError::new("task", e.to_string()))
}

impl SystemReader {
    fn read(&mut self, at: i64) -> Polled {
        let mut polled = Polled {
            origin: "/proc".to_owned(),
            ..Polled::default()
        };
        let mut points = Vec::new();
        let mut warn = |group: &'static str, error: String, failed: &mut HashSet<&'static str>| {
            if failed.insert(group) {
                polled.warnings.push((
                    "unreadable",
                    format!("cannot read {group} figures ({error}); leaving them out"),
                ));
            }
        };
        let mut failed = std::mem::take(&mut self.failed);
        let mut timed_out = Vec::new();
        let now = self.sample_times();
        if self.wants("cpu") {
            self.cpu(&now, at, &mut points);
        }
        if self.wants("process") {
            self.process(&now, at, &mut points);
        }
        self.previous = Some(now);
        if self.wants("mem") || self.wants("swap") {
            match procfs::Meminfo::current() {
                Ok(info) => memory(
                    &info,
                    self.wants("mem"),
                    self.wants("swap"),
                    at,
                    &mut points,
                ),
                Err(e) => warn("mem", e.to_string(), &mut failed),
            }
        }
        if self.wants("system") {
            match system(at) {
                Ok(point) => points.push(point),
                Err(e) => warn("system", e, &mut failed),
            }
        }
        if self.wants("disk") {
            match procfs::mounts() {
                Ok(mounts) => timed_out = self.disks(&mounts, at, &mut points),
                Err(e) => warn("disk", e.to_string(), &mut failed),
            }
        }
        if self.wants("diskio") {
            match procfs::diskstats() {
                Ok(stats) => diskio(&stats, at, &mut points),
                Err(e) => warn("diskio", e.to_string(), &mut failed),
            }
        }
        if self.wants("net") {
            match procfs::net::dev_status() {
                Ok(devices) => net(devices, at, &mut points),
                Err(e) => warn("net", e.to_string(), &mut failed),
            }
        }
        if self.wants("temp") {
            temperatures(at, &mut points);
        }
        self.failed = failed;
        for stuck in timed_out {
            polled.warnings.push((
                "mount_timeout",
                format!(
                    "statvfs of {stuck} did not answer within {STATVFS_TIMEOUT:?} (a hung network mount?); leaving it out until it does"
                ),
            ));
        }
        polled.points = points;
        polled
    }

    fn wants(&self, group: &str) -> bool {
        self.config.collect.contains(group)
    }

    fn sample_times(&self) -> Previous {
        let cpus = match procfs::KernelStats::current() {
            Ok(stats) => {
                let mut cpus = vec![("cpu-total".to_owned(), stats.total)];
                if self.config.percpu {
                    cpus.extend(
                        stats
                            .cpu_time
                            .into_iter()
                            .enumerate()
                            .map(|(i, time)| (format!("cpu{i}"), time)),
                    );
                }
                cpus
            }
            Err(_) => Vec::new(),
        };
        let process = procfs::process::Process::myself()
            .and_then(|p| p.stat())
            .ok()
            .map(|stat| (stat.utime, stat.stime, stat.rss, std::time::Instant::now()));
        Previous { cpus, process }
    }

    fn cpu(&self, now: &Previous, at: i64, points: &mut Vec<Point>) {
        let Some(previous) = &self.previous else {
            return;
        };
        for ((name, time), (previous_name, before)) in now.cpus.iter().zip(&previous.cpus) {
            if name != previous_name {
                continue;
            }
            let parts = |t: &procfs::CpuTime| {
                [
                    // The kernel counts guest time inside user and nice; Telegraf takes it out.
                    t.user.saturating_sub(t.guest.unwrap_or(0)),
                    t.system,
                    t.idle,
                    t.nice.saturating_sub(t.guest_nice.unwrap_or(0)),
                    t.iowait.unwrap_or(0),
                    t.irq.unwrap_or(0),
                    t.softirq.unwrap_or(0),
                    t.steal.unwrap_or(0),
                    t.guest.unwrap_or(0),
                    t.guest_nice.unwrap_or(0),
                ]
            };
            let (a, b) = (parts(before), parts(time));
            let deltas: Vec<f64> = a
                .iter()
                .zip(&b)
                .map(|(a, b)| b.saturating_sub(*a) as f64)
                .collect();
            let total: f64 = deltas.iter().sum();
            if total <= 0.0 {
                continue;
            }
            let names = [
                "usage_user",
                "usage_system",
                "usage_idle",
                "usage_nice",
                "usage_iowait",
                "usage_irq",
                "usage_softirq",
                "usage_steal",
                "usage_guest",
                "usage_guest_nice",
            ];
            let mut point = Point::new("cpu", at).with_tag("cpu", name.clone());
            for (field, delta) in names.iter().zip(&deltas) {
                point
                    .fields
                    .insert((*field).to_owned(), FieldValue::F64(delta / total * 100.0));
            }
            points.push(point);
        }
    }

    fn process(&self, now: &Previous, at: i64, points: &mut Vec<Point>) {
        let Some((user, system, rss, when)) = now.process else {
            return;
        };
        let mut point = Point::new("procstat", at)
            .with_tag("process_name", "tributary-agent")
            .with_field("cpu_time_user", user as f64 / self.ticks)
            .with_field("cpu_time_system", system as f64 / self.ticks)
            .with_field(
                "memory_rss",
                FieldValue::count(rss.saturating_mul(self.page_size)),
            );
        if let Some((before_user, before_system, _, before)) =
            self.previous.as_ref().and_then(|p| p.process)
        {
            let seconds = when.duration_since(before).as_secs_f64();
            if seconds > 0.0 {
                let ticks = (user + system).saturating_sub(before_user + before_system) as f64;
                point = point.with_field("cpu_usage", ticks / self.ticks / seconds * 100.0);
            }
        }
        points.push(point);
    }

    /// A `disk` point per mount read; returns the mounts whose `statvfs` timed out now.
    fn disks(
        &self,
        mounts: &[procfs::MountEntry],
        at: i64,
        points: &mut Vec<Point>,
    ) -> Vec<String> {
        let mut seen = HashSet::new();
        let mut timed_out = Vec::new();
        for mount in mounts {
            if !self.config.reads_mount(&mount.fs_file, &mount.fs_vfstype)
                || !seen.insert(&mount.fs_file)
            {
                continue;
            }
            let stat = match self.mounts.statvfs(&mount.fs_file) {
                Probe::Done(stat) => stat,
                Probe::Failed | Probe::StillStuck => continue,
                Probe::TimedOut => {
                    timed_out.push(mount.fs_file.clone());
                    continue;
                }
            };
            if stat.f_blocks == 0 {
                continue;
            }
            let total = stat.f_blocks * stat.f_frsize;
            let free = stat.f_bavail * stat.f_frsize;
            let used = (stat.f_blocks - stat.f_bfree) * stat.f_frsize;
            // As df and Telegraf: space reserved for root counts as neither used nor free.
            let used_percent = if used + free > 0 {
                used as f64 / (used + free) as f64 * 100.0
            } else {
                0.0
            };
            points.push(
                Point::new("disk", at)
                    .with_tag("path", mount.fs_file.clone())
                    .with_tag(
                        "device",
                        mount.fs_spec.trim_start_matches("/dev/").to_owned(),
                    )
                    .with_tag("fstype", mount.fs_vfstype.clone())
                    .with_field("total", FieldValue::count(total))
                    .with_field("free", FieldValue::count(free))
                    .with_field("used", FieldValue::count(used))
                    .with_field("used_percent", used_percent)
                    .with_field("inodes_total", FieldValue::count(stat.f_files))
                    .with_field("inodes_free", FieldValue::count(stat.f_ffree))
                    .with_field(
                        "inodes_used",
                        FieldValue::count(stat.f_files.saturating_sub(stat.f_ffree)),
                    ),
            );
        }
        timed_out
    }
}

fn memory(info: &procfs::Meminfo, mem: bool, swap: bool, at: i64, points: &mut Vec<Point>) {
    if mem {
        let total = info.mem_total;
        let available = info
            .mem_available
            .unwrap_or(info.mem_free + info.buffers + info.cached);
        let used = total.saturating_sub(available);
        let percent = |part: u64| {
            if total > 0 {
                part as f64 / total as f64 * 100.0
            } else {
                0.0
            }
        };
        points.push(
            Point::new("mem", at)
                .with_field("total", FieldValue::count(total))
                .with_field("available", FieldValue::count(available))
                .with_field("used", FieldValue::count(used))
                .with_field("free", FieldValue::count(info.mem_free))
                .with_field("cached", FieldValue::count(info.cached))
                .with_field("buffered", FieldValue::count(info.buffers))
                .with_field("used_percent", percent(used))
                .with_field("available_percent", percent(available)),
        );
    }
    if swap {
        let used = info.swap_total.saturating_sub(info.swap_free);
        let percent = if info.swap_total > 0 {
            used as f64 / info.swap_total as f64 * 100.0
        } else {
            0.0
        };
        points.push(
            Point::new("swap", at)
                .with_field("total", FieldValue::count(info.swap_total))
                .with_field("used", FieldValue::count(used))
                .with_field("free", FieldValue::count(info.swap_free))
                .with_field("used_percent", percent),
        );
    }
}

fn system(at: i64) -> Result<Point, String> {
    let load = procfs::LoadAverage::current().map_err(|e| e.to_string())?;
    let uptime = procfs::Uptime::current().map_err(|e| e.to_string())?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(Point::new("system", at)
        .with_field("load1", f64::from(load.one))
        .with_field("load5", f64::from(load.five))
        .with_field("load15", f64::from(load.fifteen))
        .with_field(
            "n_cpus",
            FieldValue::count(u64::try_from(cpus).unwrap_or(u64::MAX)),
        )
        .with_field("uptime", uptime.uptime as i64))
}

fn diskio(stats: &[procfs::DiskStat], at: i64, points: &mut Vec<Point>) {
    for disk in stats {
        if disk.reads == 0 && disk.writes == 0 {
            continue;
        }
        points.push(
            Point::new("diskio", at)
                .with_tag("name", disk.name.clone())
                .with_field("reads", FieldValue::count(disk.reads))
                .with_field("writes", FieldValue::count(disk.writes))
                // /proc/diskstats counts 512-byte sectors whatever the device's sector size.
                .with_field(
                    "read_bytes",
                    FieldValue::count(disk.sectors_read.saturating_mul(512)),
                )
                .with_field(
                    "write_bytes",
                    FieldValue::count(disk.sectors_written.saturating_mul(512)),
                )
                .with_field("read_time", FieldValue::count(disk.time_reading))
                .with_field("write_time", FieldValue::count(disk.time_writing))
                .with_field("io_time", FieldValue::count(disk.time_in_progress))
                .with_field("iops_in_progress", FieldValue::count(disk.in_progress)),
        );
    }
}

fn net(
    devices: std::collections::HashMap<String, procfs::net::DeviceStatus>,
    at: i64,
    points: &mut Vec<Point>,
) {
    let mut devices: Vec<_> = devices.into_values().filter(|d| d.name != "lo").collect();
    devices.sort_by(|a, b| a.name.cmp(&b.name));
    for device in devices {
        points.push(
            Point::new("net", at)
                .with_tag("interface", device.name)
                .with_field("bytes_sent", FieldValue::count(device.sent_bytes))
                .with_field("bytes_recv", FieldValue::count(device.recv_bytes))
                .with_field("packets_sent", FieldValue::count(device.sent_packets))
                .with_field("packets_recv", FieldValue::count(device.recv_packets))
                .with_field("err_in", FieldValue::count(device.recv_errs))
                .with_field("err_out", FieldValue::count(device.sent_errs))
                .with_field("drop_in", FieldValue::count(device.recv_drop))
                .with_field("drop_out", FieldValue::count(device.sent_drop)),
        );
    }
}

/// The outcome of one mount's `statvfs`.
enum Probe {
    Done(rustix::fs::StatVfs),
    Failed,
    /// No answer within [`STATVFS_TIMEOUT`]; the call goes on on its thread.
    TimedOut,
    /// An earlier call has not returned yet; no new one is made.
    StillStuck,
}

/// `statvfs` with a time limit: each call runs on a thread of its own, and a mount whose call
/// outlives the limit is skipped until that call returns.
#[derive(Default)]
struct MountProbe {
    stuck: Arc<Mutex<HashSet<String>>>,
}

impl MountProbe {
    fn statvfs(&self, path: &str) -> Probe {
        let lock = |set: &Mutex<HashSet<String>>| {
            set.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(path)
        };
        if lock(&self.stuck) {
            return Probe::StillStuck;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let finished = Arc::new(AtomicBool::new(false));
        let (stuck, done, owned) = (
            Arc::clone(&self.stuck),
            Arc::clone(&finished),
            path.to_owned(),
        );
        let spawned = std::thread::Builder::new()
            .name("statvfs".to_owned())
            .spawn(move || {
                let result = rustix::fs::statvfs(owned.as_str());
                {
                    // Under the lock the caller marks a timeout with: either it sees this
                    // call finished, or its mark is removed here.
                    let mut stuck = stuck.lock().unwrap_or_else(PoisonError::into_inner);
                    done.store(true, Ordering::SeqCst);
                    stuck.remove(&owned);
                }
                let _ = tx.send(result);
            });
        if spawned.is_err() {
            return Probe::Failed;
        }
        match rx.recv_timeout(STATVFS_TIMEOUT) {
            Ok(Ok(stat)) => Probe::Done(stat),
            Ok(Err(_)) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Probe::Failed,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let mut stuck = self.stuck.lock().unwrap_or_else(PoisonError::into_inner);
                if finished.load(Ordering::SeqCst) {
                    drop(stuck);
                    match rx.try_recv() {
                        Ok(Ok(stat)) => Probe::Done(stat),
                        _ => Probe::Failed,
                    }
                } else {
                    stuck.insert(path.to_owned());
                    Probe::TimedOut
                }
            }
        }
    }
}

/// `/sys/class/thermal/thermal_zone*/temp` holds millidegrees Celsius; `type` names the sensor.
fn temperatures(at: i64, points: &mut Vec<Point>) {
    let Ok(zones) = std::fs::read_dir("/sys/class/thermal") else {
        return;
    };
    let mut zones: Vec<_> = zones
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("thermal_zone"))
        })
        .collect();
    zones.sort();
    for zone in zones {
        let Some(millis) = std::fs::read_to_string(zone.join("temp"))
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok())
        else {
            continue;
        };
        let zone_name = zone
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let kind = std::fs::read_to_string(zone.join("type"))
            .map(|t| t.trim().to_owned())
            .unwrap_or_default();
        let sensor = if kind.is_empty() {
            zone_name
        } else {
            format!("{kind}_{zone_name}")
        };
        points.push(
            Point::new("temp", at)
                .with_tag("sensor", sensor)
                .with_field("temp", millis as f64 / 1000.0),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poller(table: &str) -> SystemPoller {
        match crate::config::tests::one_input(&format!("[[inputs.system]]\n{table}")) {
            crate::inputs::InputConfig::System(config) => SystemPoller::new(config),
            _ => unreachable!(),
        }
    }

    #[tokio::test]
    async fn reads_this_machine_with_telegraf_names() {
        let mut poller = poller("interval = \"10s\"\n");
        let polled = poller.poll(7).await.unwrap();
        let names: HashSet<&str> = polled.points.iter().map(|p| p.name.as_str()).collect();
        for expected in ["cpu", "mem", "swap", "system", "disk", "net", "procstat"] {
            assert!(
                names.contains(expected),
                "{expected} missing from {names:?}"
            );
        }
        let total = polled
            .points
            .iter()
            .find(|p| p.name == "cpu" && p.tags["cpu"] == "cpu-total")
            .expect("cpu-total");
        let sum: f64 = total
            .fields
            .values()
            .map(|v| match v {
                FieldValue::F64(v) => *v,
                _ => 0.0,
            })
            .sum();
        // Guest time is taken out of user and nice, so the parts add up to 100%.
        assert!((sum - 100.0).abs() < 0.01, "{sum}");
        let mem = polled.points.iter().find(|p| p.name == "mem").unwrap();
        assert!(matches!(mem.fields["total"], FieldValue::I64(t) if t > 0));
        let root = polled.points.iter().find(|p| p.name == "disk").unwrap();
        assert!(root.tags.contains_key("fstype") && root.fields.contains_key("used_percent"));
        let me = polled.points.iter().find(|p| p.name == "procstat").unwrap();
        assert!(matches!(me.fields["memory_rss"], FieldValue::I64(rss) if rss > 1 << 20));
        assert!(polled.points.iter().all(|p| p.ts == 7));
    }

    #[tokio::test]
    async fn collects_only_the_chosen_groups() {
        let mut poller = poller("collect = [\"mem\", \"system\"]\n");
        let polled = poller.poll(1).await.unwrap();
        let names: HashSet<&str> = polled.points.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, HashSet::from(["mem", "system"]));
    }

    #[test]
    fn network_mounts_are_read_only_when_named() {
        let config = |table: &str| match crate::config::tests::one_input(&format!(
            "[[inputs.system]]\n{table}"
        )) {
            crate::inputs::InputConfig::System(config) => config,
            _ => unreachable!(),
        };
        let default = config("");
        assert!(default.reads_mount("/", "ext4"));
        assert!(default.reads_mount("/boot", "fuseblk"));
        for fs in ["nfs", "nfs4", "cifs", "fuse", "fuse.sshfs", "9p"] {
            assert!(!default.reads_mount("/mnt/share", fs), "{fs}");
        }
        assert!(!default.reads_mount("/run", "tmpfs"));
        let named = config("mount_points = [\"/mnt/share\"]\n");
        assert!(named.reads_mount("/mnt/share", "nfs4"));
        assert!(!named.reads_mount("/", "ext4"), "only the named mounts");
        assert!(!config("mount_points = [\"/run\"]\n").reads_mount("/run", "tmpfs"));
    }

    #[test]
    fn a_mount_marked_stuck_is_skipped_until_its_call_returns() {
        let probe = MountProbe::default();
        assert!(matches!(probe.statvfs("/"), Probe::Done(stat) if stat.f_blocks > 0));
        assert!(matches!(probe.statvfs("/no/such/mount"), Probe::Failed));
        probe.stuck.lock().unwrap().insert("/".to_owned());
        assert!(matches!(probe.statvfs("/"), Probe::StillStuck));
        // (The time-out itself is exercised against a hung FUSE mount: tests/e2e/stuck.rs.)
    }

    #[test]
    fn unknown_groups_are_named() {
        let error = crate::config::tests::error(
            "[[inputs.system]]\n[[inputs.system]]\n[[inputs.system]]\ncollect = [\"cpu\", \"gpu\"]\n",
        );
        assert!(
            error.contains("inputs.system[2].collect[1]") && error.contains("\"gpu\""),
            "{error}"
        );
    }
}
