//! The `collector` scenario: simulated agents post batches to a real collector with cleaning
//! rules and rollups on, then queries run over what they stored.
//!
//! Each simulated agent behaves like a real one catching up: one request in flight, batches
//! pre-encoded (MessagePack + zstd, as the agent sends them) so the load generator costs little
//! while the clock runs, and a 429 waited out per its `Retry-After`.

use std::time::{Duration, Instant};

use tributary_bench::harness::procstat::{cpu_seconds, peak_rss_kib};
use tributary_bench::harness::{CollectorProcess, http, token_pair};
use tributary_wire::codec::{self, Encoding};
use tributary_wire::{AgentStatus, Batch, Point};

/// Rules a site would plausibly run: a sanity range that flags, a unit conversion, a rename.
pub(crate) const RULES: &str = r#"
[query]
max_points = 2000000

[[clean.rules]]
name = "sane"
action = "range"
match = { name = "env", field = "temp" }
min = -40.0
max = 85.0
policy = "flag"

[[clean.rules]]
name = "pressure_kpa"
action = "convert"
match = { name = "env", field = "pressure" }
from = "hPa"
to = "kPa"

[[clean.rules]]
name = "names"
action = "rename"
match = { name = "env" }
tags = { dev = "device" }
"#;

/// One hour in ns.
pub(crate) const HOUR: i64 = 3_600_000_000_000;

pub struct Options {
    pub agents: usize,
    pub series_per_agent: usize,
    pub hours: i64,
    pub interval_seconds: i64,
    pub batch_points: usize,
    pub queries: usize,
}

/// The batches of agent `index`: `series_per_agent` devices reading `temp` (and every tenth
/// device `pressure` too) every `interval_seconds` over `hours` ending at `end`.
pub(crate) fn batches(index: usize, options: &Options, end: i64) -> Vec<Batch> {
    let step = options.interval_seconds * 1_000_000_000;
    let start = end - options.hours * HOUR;
    let mut points = Vec::new();
    let mut ts = start;
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ index as u64;
    while ts < end {
        for device in 0..options.series_per_agent {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut point = Point::new("env", ts)
                .with_tag("dev", format!("d{device}"))
                .with_tag("site", format!("s{}", index % 7))
                .with_field("temp", 15.0 + (state % 1500) as f64 / 100.0);
            if device % 10 == 0 {
                point = point.with_field("pressure", 1000.0 + (state % 400) as f64 / 10.0);
            }
            points.push(point);
        }
        ts += step;
    }
    let agent_id = format!("agent-{index:03}");
    let mut out = Vec::new();
    let mut seq = 1u64;
    for chunk in points.chunks(options.batch_points) {
        out.push(Batch {
            agent_id: agent_id.clone(),
            epoch: format!("epoch-{index}"),
            first_seq: seq,
            last_seq: seq + chunk.len() as u64 - 1,
            dropped: 0,
            sent_at: tributary_wire::time::now_ns(),
            status: AgentStatus::default(),
            points: chunk.to_vec(),
            rejects: Vec::new(),
        });
        seq += chunk.len() as u64;
    }
    out
}

/// Posts `bodies` one at a time, waiting out 429s; returns the points the collector stored.
pub(crate) async fn agent(
    url: String,
    token: String,
    bodies: Vec<(Vec<u8>, u64)>,
) -> anyhow::Result<(u64, u64)> {
    let (mut stored, mut refusals) = (0, 0);
    for (body, _) in bodies {
        loop {
            let response = http()
                .post(format!("{url}/api/v1/batches"))
                .header("Authorization", format!("Bearer {token}"))
                .header("Content-Type", Encoding::MsgPack.content_type())
                .header("Content-Encoding", "zstd")
                .body(body.clone())
                .send()
                .await?;
            match response.status().as_u16() {
                200 => {
                    let ack: tributary_wire::BatchAck = response.json().await?;
                    stored += ack.stored;
                    break;
                }
                429 | 503 => {
                    refusals += 1;
                    let wait = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(1);
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                }
                status => {
                    anyhow::bail!("POST /api/v1/batches: {status}: {}", response.text().await?)
                }
            }
        }
    }
    Ok((stored, refusals))
}

/// Latencies of `count` runs of the query `path`, as (p50, p99, mean bytes answered).
async fn time_queries(
    url: &str,
    path: &str,
    count: usize,
) -> anyhow::Result<(Duration, Duration, usize)> {
    let mut times = Vec::with_capacity(count);
    let mut bytes = 0;
    for _ in 0..count {
        let started = Instant::now();
        let response = http().get(format!("{url}{path}")).send().await?;
        anyhow::ensure!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        bytes += response.bytes().await?.len();
        times.push(started.elapsed());
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Ok((at(0.5), at(0.99), bytes / count.max(1)))
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tokens: Vec<(String, String)> = (0..options.agents)
        .map(|i| {
            (
                format!("agent-{i:03}"),
                token_pair(&format!("agent-{i:03}")).0,
            )
        })
        .collect();
    let pairs: Vec<(&str, &str)> = tokens
        .iter()
        .map(|(a, t)| (a.as_str(), t.as_str()))
        .collect();
    // The collector's defaults (ingest_queue 16, ingest_wait 5 s): requests past the queue
    // wait for room rather than being refused. No rate limit: the query phase asks as fast as
    // it can, which a reader's 100 requests a second would refuse.
    let extra = format!("rate_limit = 0\n{RULES}");
    let mut collector =
        CollectorProcess::start_with(&dir.path().join("collector"), &pairs, &extra)?;
    let url = collector.url();
    let pid = collector.process().pid();

    // The hour boundary makes the 24 h range whole for the query below.
    let now = tributary_wire::time::now_ns();
    let end = now - now.rem_euclid(HOUR);
    let encode_started = Instant::now();
    let mut work = Vec::new();
    let mut total_points = 0u64;
    for index in 0..options.agents {
        let mut bodies = Vec::new();
        for batch in batches(index, &options, end) {
            total_points += batch.points.len() as u64;
            let raw = codec::encode_batch(&batch, Encoding::MsgPack)?;
            bodies.push((codec::compress(&raw, 3)?, batch.points.len() as u64));
        }
        work.push(bodies);
    }
    let wire_bytes: usize = work.iter().flatten().map(|(b, _)| b.len()).sum();
    println!(
        "collector: {} agents x {} series, {} h every {} s: {} points in batches of {}, encoded in {:.1} s ({:.1} wire bytes/point)",
        options.agents,
        options.series_per_agent,
        options.hours,
        options.interval_seconds,
        total_points,
        options.batch_points,
        encode_started.elapsed().as_secs_f64(),
        wire_bytes as f64 / total_points as f64
    );

    let cpu_before = cpu_seconds(pid).unwrap_or(0.0);
    let started = Instant::now();
    let tasks: Vec<_> = tokens
        .iter()
        .zip(work)
        .map(|((_, token), bodies)| tokio::spawn(agent(url.clone(), token.clone(), bodies)))
        .collect();
    let (mut stored, mut refusals) = (0u64, 0u64);
    for task in tasks {
        let (s, r) = task.await??;
        stored += s;
        refusals += r;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
    anyhow::ensure!(stored == total_points, "stored {stored} of {total_points}");
    println!(
        "  ingest: {stored} points in {:.2} s = {:.0} points/s; collector {:.2} CPU s per million, peak RSS {:.1} MiB; {refusals} requests refused (429/503)",
        elapsed.as_secs_f64(),
        stored as f64 / elapsed.as_secs_f64(),
        cpu / (stored as f64 / 1e6),
        peak_rss_kib(pid).unwrap_or(0) as f64 / 1024.0
    );

    let day_from = end - 24 * HOUR;
    let range = format!(
        "from={}&to={}",
        day_from / 1_000_000_000,
        end / 1_000_000_000
    );
    let one = format!(
        "/api/v1/query?name=env&field=temp&tag.agent=agent-000&tag.device=d0&step=1m&agg=mean&{range}"
    );
    let (p50, p99, bytes) = time_queries(&url, &one, options.queries).await?;
    println!(
        "  query 24 h at 1 m, 1 series (mean): p50 {:.2} ms, p99 {:.2} ms ({} bytes)",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        bytes
    );
    let one_p99 = format!(
        "/api/v1/query?name=env&field=temp&tag.agent=agent-000&tag.device=d0&step=1m&agg=p99&{range}"
    );
    let (p50, p99, _) = time_queries(&url, &one_p99, options.queries).await?;
    println!(
        "  query 24 h at 1 m, 1 series (p99 from sketches): p50 {:.2} ms, p99 {:.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    let raw_one = format!(
        "/api/v1/query?name=env&field=temp&tag.agent=agent-000&tag.device=d0&step=1m&agg=mean&from={}&to={}",
        day_from / 1_000_000_000 + 1,
        end / 1_000_000_000
    );
    let (p50, p99, _) = time_queries(&url, &raw_one, options.queries.min(50)).await?;
    println!(
        "  query 24 h at 1 m, 1 series from raw points (range off the minute): p50 {:.2} ms, p99 {:.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    let all = format!("/api/v1/query?name=env&field=temp&step=1m&agg=mean&{range}");
    let runs = (options.queries / 20).max(5);
    let (p50, p99, bytes) = time_queries(&url, &all, runs).await?;
    let series = options.agents * options.series_per_agent;
    println!(
        "  query 24 h at 1 m, {series} series (mean): p50 {:.0} ms, p99 {:.0} ms over {runs} runs ({:.1} MB answered)",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        bytes as f64 / 1e6
    );

    // Disk: stop the collector so the WAL is checkpointed into the database file.
    let db = collector.database();
    let status = tokio::task::block_in_place(|| collector.terminate());
    anyhow::ensure!(
        status.is_some_and(|s| s.success()),
        "the collector did not stop cleanly"
    );
    let mut disk = 0u64;
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", db.display());
        disk += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    }
    let conn = rusqlite::Connection::open(&db)?;
    let (rows, chunks): (i64, i64) = conn.query_row(
        "SELECT coalesce(sum(count), 0), count(*) FROM chunks",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    // Schema 7 keeps windows in blocks; older collectors (for before/after runs) a row each.
    let windows: i64 = conn
        .query_row(
            "SELECT coalesce(sum(windows), 0) FROM rollup_blocks",
            [],
            |r| r.get(0),
        )
        .or_else(|_| conn.query_row("SELECT count(*) FROM rollups", [], |r| r.get(0)))?;
    println!(
        "  disk: {:.1} MB for {stored} points ({rows} values in {chunks} chunks) and {windows} rollup windows = {:.1} bytes per stored point",
        disk as f64 / 1e6,
        disk as f64 / stored as f64
    );
    Ok(())
}
