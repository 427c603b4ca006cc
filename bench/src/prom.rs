//! The `prom` scenario: the Prometheus side of the collector against its peers, in one sitting
//! with the same data.
//!
//! - Remote write ingest: the same requests (protobuf + snappy, as Prometheus sends them:
//!   `series` series, every `interval_seconds` over `hours`, ten minutes per request, time
//!   order) go to the collector and to VictoriaMetrics, one after the other; samples/s and
//!   each receiver's CPU seconds per million samples.
//! - Queries: a Grafana-like dashboard of ten `query_range` panels over the whole range at a
//!   60 s step, `runs` times each, against the collector's `/prometheus` API and against a
//!   Prometheus that took the same data through its remote write receiver; p50 and p99.

use std::process::Command;
use std::time::{Duration, Instant};

use tributary_bench::harness::procstat::cpu_seconds;
use tributary_bench::harness::prometheus::PrometheusProcess;
use tributary_bench::harness::{CollectorProcess, Process, free_port, http, token_pair};
use tributary_collector::prometheus::remote::{Label, Sample, TimeSeries, WriteRequest, encode};

pub struct Options {
    pub agents: usize,
    pub series_per_agent: usize,
    pub hours: i64,
    pub interval_seconds: i64,
    pub runs: usize,
}

/// The dashboard's panels.
const PANELS: [&str; 10] = [
    "sum by (instance) (rate(bench_requests_total[5m]))",
    "sum(rate(bench_requests_total[5m]))",
    "avg by (instance) (bench_temperature)",
    "max(bench_temperature)",
    "quantile(0.9, bench_temperature)",
    "topk(5, sum by (instance) (rate(bench_requests_total[5m])))",
    "avg_over_time(bench_temperature{instance=\"agent-7\"}[5m])",
    "sum by (room) (bench_humidity)",
    "count(bench_temperature > 20)",
    "histogram_quantile(0.9, sum by (le) (rate(bench_latency_bucket[5m])))",
];

/// The series of agent `a`: `per_agent` of them, spread over the panels' metrics.
fn labels(a: usize, k: usize) -> Vec<Label> {
    let instance = format!("agent-{a}");
    let room = format!("room-{}", a % 10);
    let (name, extra): (&str, Option<(&str, String)>) = match k % 5 {
        0 => ("bench_temperature", Some(("sensor", format!("t{k}")))),
        1 => ("bench_humidity", Some(("sensor", format!("h{k}")))),
        2 => (
            "bench_requests_total",
            Some(("code", format!("{}", 200 + k))),
        ),
        3 => (
            "bench_latency_bucket",
            Some(("le", ["0.1", "0.5", "1", "+Inf"][k / 5 % 4].to_owned())),
        ),
        _ => (
            "bench_requests_total",
            Some(("code", format!("{}", 500 + k))),
        ),
    };
    let mut out = vec![
        Label {
            name: "__name__".into(),
            value: name.into(),
        },
        Label {
            name: "instance".into(),
            value: instance,
        },
        Label {
            name: "job".into(),
            value: "bench".into(),
        },
        Label {
            name: "room".into(),
            value: room,
        },
    ];
    if let Some((n, v)) = extra {
        out.push(Label {
            name: n.into(),
            value: v,
        });
    }
    out.sort_by(|x, y| x.name.cmp(&y.name));
    out
}

fn value(a: usize, k: usize, i: i64) -> f64 {
    let i = i as f64;
    match k % 5 {
        0 | 1 => 20.0 + ((i / 40.0 + a as f64).sin() * 5.0) + k as f64 * 0.1,
        3 => (i * (1.0 + (k / 5 % 4) as f64)).floor(),
        _ => (i * (1.0 + (a % 7) as f64)).floor(),
    }
}

/// The requests: ten minutes of every series each, oldest first.
fn requests(options: &Options, end_ms: i64) -> anyhow::Result<(Vec<Vec<u8>>, u64)> {
    let step = options.interval_seconds * 1000;
    let start = end_ms - options.hours * 3_600_000;
    let per_request = 600_000 / step;
    let mut out = Vec::new();
    let mut samples = 0u64;
    let mut i = 0i64;
    while start + i * step <= end_ms {
        let mut timeseries = Vec::new();
        for a in 0..options.agents {
            for k in 0..options.series_per_agent {
                let s: Vec<Sample> = (i..i + per_request)
                    .map(|j| (j, start + j * step))
                    .filter(|&(_, t)| t <= end_ms)
                    .map(|(j, t)| Sample {
                        value: value(a, k, j),
                        timestamp: t,
                    })
                    .collect();
                samples += s.len() as u64;
                timeseries.push(TimeSeries {
                    labels: labels(a, k),
                    samples: s,
                    histograms: Vec::new(),
                });
            }
        }
        out.push(encode(&WriteRequest {
            timeseries,
            metadata: Vec::new(),
        })?);
        i += per_request;
    }
    Ok((out, samples))
}

async fn post_all(url: &str, token: Option<&str>, bodies: &[Vec<u8>]) -> anyhow::Result<()> {
    for body in bodies {
        loop {
            let mut request = http()
                .post(url)
                .header("Content-Type", "application/x-protobuf")
                .header("Content-Encoding", "snappy")
                .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                .body(body.clone());
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await?;
            let status = response.status();
            if status.is_success() {
                break;
            }
            if status.as_u16() == 429 || status.is_server_error() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            anyhow::bail!("{url}: {status}: {}", response.text().await?);
        }
    }
    Ok(())
}

fn victoria(dir: &std::path::Path) -> anyhow::Result<(Process, u16)> {
    let port = free_port();
    let mut command = Command::new("victoria-metrics");
    command
        .arg(format!("-storageDataPath={}", dir.display()))
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .arg("-retentionPeriod=100y");
    let process = Process::spawn("victoria-metrics", command)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "victoria-metrics did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((process, port))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(index).copied().unwrap_or(f64::NAN)
}

async fn dashboard(
    base: &str,
    token: Option<&str>,
    start_ms: i64,
    end_ms: i64,
    runs: usize,
) -> anyhow::Result<(f64, f64, usize)> {
    let mut times = Vec::new();
    let mut series = 0usize;
    for _ in 0..runs {
        for panel in PANELS {
            let url = reqwest::Url::parse_with_params(
                &format!("{base}/api/v1/query_range"),
                &[
                    ("query", panel.to_owned()),
                    ("start", format!("{}", start_ms / 1000)),
                    ("end", format!("{}", end_ms / 1000)),
                    ("step", "60".to_owned()),
                ],
            )?;
            let mut request = http().get(url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let begun = Instant::now();
            let answer: serde_json::Value = request.send().await?.json().await?;
            times.push(begun.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(answer["status"] == "success", "{panel}: {answer}");
            series += answer["data"]["result"].as_array().map_or(0, Vec::len);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok((percentile(&times, 0.5), percentile(&times, 0.99), series))
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (token, _) = token_pair("bench");
    let collector = CollectorProcess::start_with(
        &dir.path().join("collector"),
        &[("bench", &token)],
        "rate_limit = 0\n",
    )?;
    let (vm, vm_port) = victoria(&dir.path().join("vm"))?;
    let prometheus = PrometheusProcess::start(
        &dir.path().join("prometheus"),
        "global:\n  scrape_interval: 1h\n",
        &["--web.enable-remote-write-receiver"],
    )?;
    let end_ms = tributary_wire::time::now_ns() / 1_000_000 / 60_000 * 60_000;
    let start_ms = end_ms - options.hours * 3_600_000;
    let (bodies, samples) = requests(&options, end_ms)?;
    let series = options.agents * options.series_per_agent;
    println!(
        "remote write: {series} series, {samples} samples in {} requests",
        bodies.len()
    );
    let targets: [(&str, String, Option<&str>, u32); 3] = [
        (
            "tributary-collector",
            format!("{}/prometheus/api/v1/write", collector.url()),
            Some(token.as_str()),
            collector.pid().unwrap_or(0),
        ),
        (
            "victoria-metrics",
            format!("http://127.0.0.1:{vm_port}/api/v1/write"),
            None,
            vm.pid(),
        ),
        (
            "prometheus",
            format!("{}/api/v1/write", prometheus.url()),
            None,
            prometheus.pid(),
        ),
    ];
    for (name, url, auth, pid) in &targets {
        let cpu_before = cpu_seconds(*pid).unwrap_or(0.0);
        let begun = Instant::now();
        post_all(url, *auth, &bodies).await?;
        let seconds = begun.elapsed().as_secs_f64();
        let cpu = cpu_seconds(*pid).unwrap_or(0.0) - cpu_before;
        println!(
            "  {name:<20} {:>10.0} samples/s  {:>6.2} CPU s per million  ({seconds:.1} s)",
            samples as f64 / seconds,
            cpu / (samples as f64 / 1e6)
        );
    }
    // Let Prometheus and the collector settle (commits, head appends) before querying.
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "dashboard: {} panels x {} runs, {} h at step 60 s",
        PANELS.len(),
        options.runs,
        options.hours
    );
    for (name, base, auth) in [
        (
            "tributary-collector",
            format!("{}/prometheus", collector.url()),
            Some(token.as_str()),
        ),
        ("prometheus", prometheus.url(), None),
    ] {
        let (p50, p99, series) = dashboard(&base, auth, start_ms, end_ms, options.runs).await?;
        println!("  {name:<20} p50 {p50:>8.1} ms  p99 {p99:>8.1} ms  ({series} series answered)");
    }
    drop(vm);
    Ok(())
}
