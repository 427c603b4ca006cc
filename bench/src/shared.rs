//! The `shared` scenario: N collectors over one store. The `collector` scenario's simulated
//! agents (batches pre-encoded as agents send them, one request in flight each) are spread
//! over the collectors, agent `i` posting to collector `i mod N`, all storing into one
//! PostgreSQL database (or, as the baseline, one collector on its SQLite file).
//!
//! The PostgreSQL server is started for the run in a temporary directory with the
//! distribution's defaults (fsync and synchronous commit on). Printed: points/s, CPU seconds
//! per million points of the collectors, of PostgreSQL (postmaster, backends and helpers) and
//! of the load generator; bytes per point on disk; WAL bytes and syncs per point; what the
//! server's client backends were waiting on, sampled; and the ceiling of plain `COPY` of the
//! same values as rows.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tributary_bench::harness::postgres::PgServer;
use tributary_bench::harness::procstat::{children, cpu_seconds, tree_cpu_seconds};
use tributary_bench::harness::{CollectorOptions, CollectorProcess, token_pair};
use tributary_wire::codec::{self, Encoding};
use tributary_wire::{Batch, FieldValue};

use crate::collector::{HOUR, RULES, agent, batches};

/// Where the collectors store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Store {
    Sqlite,
    Postgres,
}

pub struct Options {
    pub store: Store,
    pub collectors: usize,
    pub agents: usize,
    pub series_per_agent: usize,
    pub hours: i64,
    pub interval_seconds: i64,
    pub batch_points: usize,
    /// Also time plain `COPY` of the same values (PostgreSQL only).
    pub copy_ceiling: bool,
}

/// The database the collectors share.
const DATABASE: &str = "tributary";

/// Samples what the server's client backends wait on every 200 ms until `stop`: counts per
/// `type:event` (`CPU:-` when running, not waiting). At most 10,000 samples.
fn sample_waits(
    server: Arc<PgServer>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<BTreeMap<String, u64>> {
    std::thread::spawn(move || {
        let mut seen = BTreeMap::new();
        for _ in 0..10_000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let out = server.psql(
                DATABASE,
                "SELECT coalesce(wait_event_type, 'CPU') || ':' || coalesce(wait_event, '-'),
                        count(*)
                 FROM pg_stat_activity
                 WHERE state = 'active' AND backend_type = 'client backend'
                   AND pid <> pg_backend_pid()
                 GROUP BY 1",
            );
            for line in out.lines() {
                if let Some((event, count)) = line.split_once('|') {
                    *seen.entry(event.to_owned()).or_insert(0) += count.parse().unwrap_or(0);
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        seen
    })
}

/// WAL bytes written so far (from the insert position, exact), and WAL syncs (from
/// `pg_stat_wal`, which backends report when they go idle or exit).
fn wal(server: &PgServer) -> (f64, f64) {
    let out = server.psql(
        DATABASE,
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0'), wal_sync FROM pg_stat_wal",
    );
    let mut parts = out.split('|').map(|v| v.trim().parse().unwrap_or(0.0));
    (parts.next().unwrap_or(0.0), parts.next().unwrap_or(0.0))
}

/// Bytes of every table in `database` with its indexes and TOAST, and the four largest.
fn table_bytes(server: &PgServer, database: &str) -> (f64, String) {
    let out = server.psql(
        database,
        "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
         ORDER BY 2 DESC",
    );
    let mut total = 0.0;
    let mut largest = Vec::new();
    for line in out.lines() {
        if let Some((name, bytes)) = line.split_once('|') {
            let bytes: f64 = bytes.parse().unwrap_or(0.0);
            total += bytes;
            if largest.len() < 4 {
                largest.push(format!("{name} {:.1} MB", bytes / 1e6));
            }
        }
    }
    (total, largest.join(", "))
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    anyhow::ensure!(options.collectors >= 1, "--collectors must be at least 1");
    anyhow::ensure!(
        options.store == Store::Postgres || options.collectors == 1,
        "a SQLite file has one collector: --collectors 1 with --store sqlite"
    );
    let dir = tempfile::tempdir()?;
    let server = match options.store {
        // PostgreSQL's defaults, durable: fsync and synchronous_commit on.
        Store::Postgres => Some(Arc::new(PgServer::start_with("-c max_connections=200"))),
        Store::Sqlite => None,
    };
    let url = server.as_ref().map(|s| s.create_database(DATABASE));

    let tokens: Vec<(String, String)> = (0..options.agents)
        .map(|i| {
            let id = format!("agent-{i:03}");
            let token = token_pair(&id).0;
            (id, token)
        })
        .collect();
    let pairs: Vec<(&str, &str)> = tokens
        .iter()
        .map(|(a, t)| (a.as_str(), t.as_str()))
        .collect();
    let mut collectors = Vec::new();
    for n in 0..options.collectors {
        collectors.push(CollectorProcess::start_custom(
            &dir.path().join(format!("collector-{n}")),
            &pairs,
            &CollectorOptions {
                server_extra: format!("rate_limit = 0\n{RULES}"),
                storage_url: url.clone(),
                ..CollectorOptions::default()
            },
        )?);
    }
    let urls: Vec<String> = collectors.iter().map(CollectorProcess::url).collect();
    let pids: Vec<u32> = collectors.iter_mut().map(|c| c.process().pid()).collect();

    let now = tributary_wire::time::now_ns();
    let end = now - now.rem_euclid(HOUR);
    let shape = crate::collector::Options {
        agents: options.agents,
        series_per_agent: options.series_per_agent,
        hours: options.hours,
        interval_seconds: options.interval_seconds,
        batch_points: options.batch_points,
        queries: 0,
    };
    let all: Vec<Vec<Batch>> = (0..options.agents)
        .map(|index| batches(index, &shape, end))
        .collect();
    let mut work = Vec::new();
    let (mut total_points, mut total_values) = (0u64, 0u64);
    for agent_batches in &all {
        let mut bodies = Vec::new();
        for batch in agent_batches {
            total_points += batch.points.len() as u64;
            total_values += batch
                .points
                .iter()
                .map(|p| p.fields.len() as u64)
                .sum::<u64>();
            let raw = codec::encode_batch(batch, Encoding::MsgPack)?;
            bodies.push((codec::compress(&raw, 3)?, batch.points.len() as u64));
        }
        work.push(bodies);
    }
    println!(
        "shared: {} collector(s) on {}, {} agents x {} series, {} h every {} s: {total_points} points ({total_values} values) in batches of {}",
        options.collectors,
        match options.store {
            Store::Postgres => "one PostgreSQL database",
            Store::Sqlite => "SQLite",
        },
        options.agents,
        options.series_per_agent,
        options.hours,
        options.interval_seconds,
        options.batch_points,
    );

    let postmaster = server.as_ref().and_then(|s| s.postmaster_pid());
    let pg_cpu = || postmaster.and_then(tree_cpu_seconds).unwrap_or(0.0);
    let collectors_cpu =
        |pids: &[u32]| -> f64 { pids.iter().map(|p| cpu_seconds(*p).unwrap_or(0.0)).sum() };
    let wal_before = server.as_deref().map(wal).unwrap_or_default();
    let (collectors_before, pg_before) = (collectors_cpu(&pids), pg_cpu());
    let self_before = cpu_seconds(std::process::id()).unwrap_or(0.0);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = server
        .as_ref()
        .map(|s| sample_waits(Arc::clone(s), Arc::clone(&stop)));

    let started = Instant::now();
    let tasks: Vec<_> = tokens
        .iter()
        .zip(work)
        .enumerate()
        .map(|(i, ((_, token), bodies))| {
            tokio::spawn(agent(urls[i % urls.len()].clone(), token.clone(), bodies))
        })
        .collect();
    let (mut stored, mut refusals) = (0u64, 0u64);
    for task in tasks {
        let (s, r) = task.await??;
        stored += s;
        refusals += r;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let wal_bytes = server.as_deref().map(wal).unwrap_or_default().0 - wal_before.0;
    let collectors_spent = collectors_cpu(&pids) - collectors_before;
    let pg_spent = pg_cpu() - pg_before;
    let self_spent = cpu_seconds(std::process::id()).unwrap_or(0.0) - self_before;
    stop.store(true, Ordering::Relaxed);
    let waits = match sampler {
        Some(handle) => handle
            .join()
            .map_err(|_| anyhow::anyhow!("the wait sampler panicked"))?,
        None => BTreeMap::new(),
    };
    anyhow::ensure!(stored == total_points, "stored {stored} of {total_points}");
    let per_million = |cpu: f64| cpu / (stored as f64 / 1e6);
    println!(
        "  ingest: {stored} points in {elapsed:.2} s = {:.0} points/s; {refusals} requests refused (429/503)",
        stored as f64 / elapsed
    );
    println!(
        "  CPU s per million points: collectors {:.2}, PostgreSQL {:.2}, load generator {:.2}; machine busy {:.0}% of 2 cores",
        per_million(collectors_spent),
        per_million(pg_spent),
        per_million(self_spent),
        100.0 * (collectors_spent + pg_spent + self_spent) / elapsed / 2.0
    );

    match &server {
        Some(server) => {
            let samples: u64 = waits.values().sum();
            let mut by_count: Vec<_> = waits.iter().collect();
            by_count.sort_by(|a, b| b.1.cmp(a.1));
            let shown: Vec<String> = by_count
                .iter()
                .take(6)
                .map(|(event, n)| {
                    format!("{event} {:.0}%", 100.0 * **n as f64 / samples.max(1) as f64)
                })
                .collect();
            println!(
                "  active backends sampled ({samples} backend-samples): {}",
                shown.join(", ")
            );
            let held: u64 = server
                .psql(DATABASE, "SELECT coalesce(sum(count), 0) FROM chunks")
                .parse()?;
            anyhow::ensure!(
                held == total_values,
                "the chunks hold {held} values of {total_values}"
            );
            let (bytes, largest) = table_bytes(server, DATABASE);
            println!(
                "  disk: {:.1} MB = {:.1} bytes per point ({largest})",
                bytes / 1e6,
                bytes / stored as f64
            );
        }
        None => {
            let db = collectors[0].database();
            let status = tokio::task::block_in_place(|| collectors[0].terminate());
            anyhow::ensure!(
                status.is_some_and(|s| s.success()),
                "the collector did not stop cleanly"
            );
            let disk: u64 = ["", "-wal", "-shm"]
                .iter()
                .map(|suffix| {
                    std::fs::metadata(format!("{}{suffix}", db.display()))
                        .map(|m| m.len())
                        .unwrap_or(0)
                })
                .sum();
            println!(
                "  disk: {:.1} MB = {:.1} bytes per point",
                disk as f64 / 1e6,
                disk as f64 / stored as f64
            );
        }
    }
    for mut collector in collectors {
        tokio::task::block_in_place(|| collector.terminate());
    }
    if let Some(server) = &server {
        // The collectors' backends reported their syncs as they exited.
        let syncs = wal(server).1 - wal_before.1;
        println!(
            "  WAL: {:.1} bytes per point, {syncs:.0} syncs ({:.0} per s, {:.0} points per sync)",
            wal_bytes / stored as f64,
            syncs / elapsed,
            stored as f64 / syncs.max(1.0)
        );
        // Rewritten rollup blocks leave dead versions until autovacuum: the live size.
        server.psql(DATABASE, "VACUUM FULL");
        let (bytes, largest) = table_bytes(server, DATABASE);
        println!(
            "  live after VACUUM FULL: {:.1} MB = {:.1} bytes per point ({largest})",
            bytes / 1e6,
            bytes / stored as f64
        );
    }

    if let (Some(server), true) = (&server, options.copy_ceiling) {
        copy_ceiling(server, &all, dir.path(), pg_cpu)?;
    }
    Ok(())
}

/// Plain `COPY` of the same values as rows `(series_id, ts, value)`: into a bare table, then
/// into one keyed on `(series_id, ts)` as a time-series table must be to refuse duplicates.
fn copy_ceiling(
    server: &PgServer,
    all: &[Vec<Batch>],
    dir: &std::path::Path,
    pg_cpu: impl Fn() -> f64,
) -> anyhow::Result<()> {
    // psql runs as the server's user: the file must be readable by it.
    let csv = dir.join("values.csv");
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut rows = 0u64;
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&csv)?);
        for (agent, agent_batches) in all.iter().enumerate() {
            for point in agent_batches.iter().flat_map(|b| &b.points) {
                for (field, value) in &point.fields {
                    let value = match value {
                        FieldValue::F64(v) => *v,
                        FieldValue::I64(v) => *v as f64,
                        _ => continue,
                    };
                    let key = format!("{agent}/{:?}/{field}", point.tags);
                    let next = ids.len();
                    let id = *ids.entry(key).or_insert(next);
                    writeln!(out, "{id},{},{value}", point.ts)?;
                    rows += 1;
                }
            }
        }
        out.flush()?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&csv, std::fs::Permissions::from_mode(0o644))?;
    let database = "ceiling";
    server.create_database(database);
    for (table, definition) in [
        ("bare", "series_id bigint, ts bigint, value float8"),
        (
            "keyed",
            "series_id bigint, ts bigint, value float8, PRIMARY KEY (series_id, ts)",
        ),
    ] {
        server.psql(database, &format!("CREATE TABLE {table} ({definition})"));
        let helpers: Vec<u32> = server.postmaster_pid().map(children).unwrap_or_default();
        let before = pg_cpu();
        let started = Instant::now();
        server.psql_with_input(
            database,
            &format!("COPY {table} FROM STDIN WITH (FORMAT csv)"),
            std::fs::File::open(&csv)?,
        );
        let elapsed = started.elapsed().as_secs_f64();
        // The backend's time reaches the postmaster's only once it is reaped.
        for _ in 0..100 {
            let now = server.postmaster_pid().map(children).unwrap_or_default();
            if now.iter().all(|pid| helpers.contains(pid)) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let spent = pg_cpu() - before;
        let bytes: f64 = server
            .psql(
                database,
                &format!("SELECT pg_total_relation_size('{table}')"),
            )
            .parse()?;
        println!(
            "  COPY ceiling, {table} table: {rows} values in {elapsed:.2} s = {:.0} values/s; PostgreSQL {:.2} CPU s per million; {:.1} bytes per value",
            rows as f64 / elapsed,
            spent / (rows as f64 / 1e6),
            bytes / rows as f64
        );
    }
    Ok(())
}
