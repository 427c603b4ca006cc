//! The `density` scenario: the same InfluxDB line protocol into the collector (`/api/v2/write`,
//! cleaning rules and rollups on) and into VictoriaMetrics (`/write`), one after the other:
//! points/s, CPU s per million points, bytes on disk per point after a clean stop, peak RSS,
//! and the largest the collector's WAL grew during the run.
//!
//! The data: `hosts` hosts, each line carrying `fields` float fields that wander (a random
//! walk rounded to 0.01, as sensor readings are), one line per host every `interval_seconds`
//! over `hours`, posted by `clients` concurrent clients in requests of `lines_per_request`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tributary_bench::harness::procstat::{cpu_seconds, peak_rss_kib};
use tributary_bench::harness::{CollectorProcess, Process, free_port, http, token_pair};

pub struct Options {
    pub hosts: usize,
    pub fields: usize,
    pub hours: i64,
    pub interval_seconds: i64,
    pub clients: usize,
    pub lines_per_request: usize,
}

/// What one receiver did with the data.
struct Figures {
    points_per_second: f64,
    cpu_per_million: f64,
    bytes_per_point: f64,
    disk_bytes: u64,
    peak_rss_mib: f64,
    /// The collector's WAL at its largest (sampled every 50 ms); none for VictoriaMetrics.
    peak_wal_bytes: Option<u64>,
}

const FIELD_NAMES: [&str; 3] = ["temp", "humidity", "pressure"];

fn field_name(k: usize) -> String {
    FIELD_NAMES
        .get(k)
        .map_or_else(|| format!("f{k}"), |n| (*n).to_owned())
}

/// The request bodies, oldest first, and the number of points (lines × fields).
fn requests(options: &Options, end_s: i64) -> (Vec<String>, u64) {
    let start = end_s - options.hours * 3600;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut values: Vec<Vec<f64>> = (0..options.hosts)
        .map(|h| {
            (0..options.fields)
                .map(|k| 20.0 + (h % 17) as f64 + k as f64 * 10.0)
                .collect()
        })
        .collect();
    let mut bodies = Vec::new();
    let mut body = String::new();
    let mut lines_in_body = 0usize;
    let mut lines = 0u64;
    let mut t = start;
    while t < end_s {
        for (h, host_values) in values.iter_mut().enumerate() {
            body.push_str(&format!("env,host=h{h:03}"));
            for (k, v) in host_values.iter_mut().enumerate() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *v = ((*v + ((state % 201) as f64 - 100.0) / 1000.0) * 100.0).round() / 100.0;
                body.push(if k == 0 { ' ' } else { ',' });
                body.push_str(&format!("{}={}", field_name(k), v));
            }
            body.push_str(&format!(" {t}\n"));
            lines += 1;
            lines_in_body += 1;
            if lines_in_body == options.lines_per_request {
                bodies.push(std::mem::take(&mut body));
                lines_in_body = 0;
            }
        }
        t += options.interval_seconds;
    }
    if !body.is_empty() {
        bodies.push(body);
    }
    (bodies, lines * options.fields as u64)
}

/// Posts every body, `clients` at a time, retrying 429 and 503 after their `Retry-After`.
async fn post_all(
    url: &str,
    authorization: Option<&str>,
    bodies: Arc<Vec<String>>,
    clients: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, authorization, bodies, next) = (
            url.to_owned(),
            authorization.map(str::to_owned),
            Arc::clone(&bodies),
            Arc::clone(&next),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(body) = bodies.get(index) else {
                    return anyhow::Ok(());
                };
                loop {
                    let mut request = http().post(&url).body(body.clone());
                    if let Some(value) = &authorization {
                        request = request.header("Authorization", value);
                    }
                    let response = request.send().await?;
                    let status = response.status();
                    if status.is_success() {
                        break;
                    }
                    if status.as_u16() == 429 || status.as_u16() == 503 {
                        let wait = response
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok())
                            .unwrap_or(1);
                        tokio::time::sleep(Duration::from_secs(wait)).await;
                        continue;
                    }
                    anyhow::bail!("{url}: {status}: {}", response.text().await?);
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

fn disk_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return std::fs::metadata(path).map_or(0, |m| m.len());
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => disk_bytes(&p),
                _ => e.metadata().map_or(0, |m| m.len()),
            }
        })
        .sum()
}

async fn collector(
    options: &Options,
    bodies: Arc<Vec<String>>,
    points: u64,
) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let (token, _) = token_pair("writer");
    let mut collector = CollectorProcess::start_with(
        &dir.path().join("collector"),
        &[("writer", &token)],
        crate::collector::RULES,
    )?;
    let pid = collector.process().pid();
    let wal = collector.database().with_extension("db-wal");
    let watching = Arc::new(AtomicBool::new(true));
    let peak_wal = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (watching, peak_wal, wal) = (Arc::clone(&watching), Arc::clone(&peak_wal), wal.clone());
        std::thread::spawn(move || {
            while watching.load(Ordering::Relaxed) {
                let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
                peak_wal.fetch_max(size, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let url = format!("{}/api/v2/write?precision=s", collector.url());
    let cpu_before = cpu_seconds(pid).unwrap_or(0.0);
    let started = Instant::now();
    post_all(
        &url,
        Some(&format!("Token {token}")),
        bodies,
        options.clients,
    )
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
    let peak_rss = peak_rss_kib(pid).unwrap_or(0);
    watching.store(false, Ordering::Relaxed);
    let _ = watcher.join();
    collector.terminate();
    let disk = disk_bytes(&dir.path().join("collector"))
        - std::fs::metadata(collector.config_path()).map_or(0, |m| m.len());
    // For a look at where the bytes went (`sqlite3 … 'SELECT name, sum(pgsize) FROM dbstat
    // GROUP BY name'`).
    if let Some(keep) = std::env::var_os("TRIBUTARY_DENSITY_KEEP") {
        std::fs::copy(collector.database(), &keep)?;
        eprintln!(
            "density: the collector's database is kept as {}",
            Path::new(&keep).display()
        );
    }
    Ok(Figures {
        points_per_second: points as f64 / elapsed,
        cpu_per_million: cpu / (points as f64 / 1e6),
        bytes_per_point: disk as f64 / points as f64,
        disk_bytes: disk,
        peak_rss_mib: peak_rss as f64 / 1024.0,
        peak_wal_bytes: Some(peak_wal.load(Ordering::Relaxed)),
    })
}

async fn victoria(
    options: &Options,
    bodies: Arc<Vec<String>>,
    points: u64,
) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let mut command = Command::new("victoria-metrics");
    command
        .arg(format!("-storageDataPath={}", dir.path().display()))
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .arg("-retentionPeriod=100y");
    let mut process = Process::spawn("victoria-metrics", command)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "victoria-metrics did not start (apt install victoria-metrics)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = process.pid();
    let url = format!("http://127.0.0.1:{port}/write?precision=s");
    let cpu_before = cpu_seconds(pid).unwrap_or(0.0);
    let started = Instant::now();
    post_all(&url, None, bodies, options.clients).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
    let peak_rss = peak_rss_kib(pid).unwrap_or(0);
    // Everything it took is searchable before the stop (it buffers for about a second).
    tokio::time::sleep(Duration::from_secs(3)).await;
    process.terminate(Duration::from_secs(30));
    let disk = disk_bytes(dir.path());
    Ok(Figures {
        points_per_second: points as f64 / elapsed,
        cpu_per_million: cpu / (points as f64 / 1e6),
        bytes_per_point: disk as f64 / points as f64,
        disk_bytes: disk,
        peak_rss_mib: peak_rss as f64 / 1024.0,
        peak_wal_bytes: None,
    })
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let now = tributary_wire::time::now_ns() / 1_000_000_000;
    let end = now - now.rem_euclid(3600);
    let (bodies, points) = requests(&options, end);
    let lines = points / options.fields as u64;
    println!(
        "density: {} hosts x {} fields every {} s for {} h: {lines} lines, {points} points, {} requests of {} lines, {} clients",
        options.hosts,
        options.fields,
        options.interval_seconds,
        options.hours,
        bodies.len(),
        options.lines_per_request,
        options.clients
    );
    let bodies = Arc::new(bodies);
    let ours = collector(&options, Arc::clone(&bodies), points).await?;
    let theirs = victoria(&options, bodies, points).await?;
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    println!("| figure | tributary-collector | victoria-metrics | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| points/s | {:.0} | {:.0} | {:.2}x |",
        ours.points_per_second,
        theirs.points_per_second,
        ratio(theirs.points_per_second, ours.points_per_second)
    );
    println!(
        "| CPU s per million points | {:.2} | {:.2} | {:.2}x |",
        ours.cpu_per_million,
        theirs.cpu_per_million,
        ratio(ours.cpu_per_million, theirs.cpu_per_million)
    );
    println!(
        "| bytes on disk per point, after a clean stop | {:.1} ({:.0} MB) | {:.1} ({:.0} MB) | {:.1}x |",
        ours.bytes_per_point,
        ours.disk_bytes as f64 / 1e6,
        theirs.bytes_per_point,
        theirs.disk_bytes as f64 / 1e6,
        ratio(ours.bytes_per_point, theirs.bytes_per_point)
    );
    println!(
        "| peak RSS | {:.0} MiB | {:.0} MiB | {:.2}x |",
        ours.peak_rss_mib,
        theirs.peak_rss_mib,
        ratio(ours.peak_rss_mib, theirs.peak_rss_mib)
    );
    println!(
        "| WAL at its largest | {:.0} MiB | | |",
        ours.peak_wal_bytes.unwrap_or(0) as f64 / 1048576.0
    );
    Ok(())
}
