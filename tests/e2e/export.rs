//! Remote write out: the collector exports what it stores to a real Prometheus (its remote
//! write receiver) and a real VictoriaMetrics (Debian's packages), is killed with SIGKILL in
//! the middle of the export, restarts, and both receivers end with exactly the samples
//! written, per series.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use tributary_bench::harness::prometheus::PrometheusProcess;
use tributary_bench::harness::{CollectorProcess, Process, free_port, http, token_pair};

use crate::blocking;

const SERIES: usize = 12;
const POINTS: usize = 150;

/// A VictoriaMetrics on a free port in `dir`, deduplicating identical samples at 1 ms (a
/// resent request stores nothing twice, as Prometheus' receiver ignores it too).
fn victoria(dir: &std::path::Path) -> (Process, u16) {
    let port = free_port();
    let mut command = Command::new("victoria-metrics");
    command
        .arg(format!("-storageDataPath={}", dir.display()))
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .arg("-retentionPeriod=100y")
        .arg("-dedup.minScrapeInterval=1ms")
        .arg("-search.latencyOffset=0s");
    let process = Process::spawn("victoria-metrics", command).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "victoria-metrics did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (process, port)
}

/// Line protocol for points `range` of every series, 2 s apart, ending a little before now.
fn lines(base_ms: i64, range: std::ops::Range<usize>) -> String {
    let mut out = String::new();
    for i in range {
        for s in 0..SERIES {
            let ts = (base_ms + i as i64 * 2_000) * 1_000_000;
            out.push_str(&format!(
                "exported,sensor=s{s} reading={}.5 {ts}\n",
                i * 10 + s
            ));
        }
    }
    out
}

async fn write(url: &str, token: &str, body: String) {
    let response = http()
        .post(format!("{url}/api/v2/write"))
        .header("Authorization", format!("Token {token}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204, "{:?}", response.text().await);
}

/// Samples per `sensor` label that Prometheus' query API at `base` holds for the metric.
async fn counts(base: &str, at: i64) -> BTreeMap<String, f64> {
    let url = reqwest::Url::parse_with_params(
        &format!("{base}/api/v1/query"),
        &[
            ("query", "count_over_time(exported_reading[1h])".to_owned()),
            ("time", format!("{}", at as f64 / 1000.0)),
        ],
    )
    .unwrap();
    let answer: serde_json::Value = http().get(url).send().await.unwrap().json().await.unwrap();
    answer["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["metric"]["sensor"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                r["value"][1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

async fn lag(url: &str, export: &str) -> Option<f64> {
    let text = http()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let prefix = format!("tributary_collector_export_lag_points{{export=\"{export}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_reach_prometheus_and_victoriametrics_once_through_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let (token, _) = token_pair("writer");
    let prometheus = blocking(|| {
        PrometheusProcess::start(
            &dir.path().join("prometheus"),
            "global:\n  scrape_interval: 1m\n",
            &["--web.enable-remote-write-receiver"],
        )
        .unwrap()
    });
    let (_vm, vm_port) = blocking(|| victoria(&dir.path().join("vm")));
    let extra = format!(
        "\n[[exports.remote_write]]\nname = \"prom\"\nurl = \"{}/api/v1/write\"\nbatch_size = 5\nmatch = {{ name = \"exported\" }}\npoll_interval = \"200ms\"\n\n[[exports.remote_write]]\nname = \"vm\"\nurl = \"http://127.0.0.1:{vm_port}/api/v1/write\"\nbatch_size = 100\nconcurrency = 2\nheaders = {{ \"X-Scope-OrgID\" = \"t1\" }}\npoll_interval = \"200ms\"\n",
        prometheus.url()
    );
    let mut collector = blocking(|| {
        CollectorProcess::start_custom(
            &dir.path().join("collector"),
            &[("writer", &token)],
            &tributary_bench::harness::CollectorOptions {
                extra: extra.clone(),
                ..Default::default()
            },
        )
        .unwrap()
    });
    let base_ms = tributary_wire::time::now_ns() / 1_000_000 - 20 * 60_000;
    // Ten transactions: 120 feed entries of 10 values; Prometheus takes them 10 a request.
    for part in 0..10 {
        write(
            &collector.url(),
            &token,
            lines(base_ms, part * 10..part * 10 + 10),
        )
        .await;
    }
    // Kill it while the export to Prometheus is under way: some sent, some not.
    let total = (SERIES * 100) as f64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = lag(&collector.url(), "prom").await.unwrap_or(total);
        if left > 0.0 && left < total {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the export did not start: {left}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    blocking(|| collector.kill9());
    blocking(|| collector.restart()).unwrap();
    write(&collector.url(), &token, lines(base_ms, 100..POINTS)).await;

    // Both receivers end with every sample once (bounded wait: the exports catch up), and
    // the exports then report no lag.
    let at = base_ms + POINTS as i64 * 2_000;
    let expected: BTreeMap<String, f64> = (0..SERIES)
        .map(|s| (format!("s{s}"), POINTS as f64))
        .collect();
    let receivers = [
        ("Prometheus", prometheus.url()),
        ("VictoriaMetrics", format!("http://127.0.0.1:{vm_port}")),
    ];
    for (name, base) in &receivers {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let got = counts(base, at).await;
            if got == expected {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}: {got:?}; {:?}",
                collector.process().logs()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (p, v) = (
            lag(&collector.url(), "prom").await,
            lag(&collector.url(), "vm").await,
        );
        if p == Some(0.0) && v == Some(0.0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "lag {p:?} {v:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let metrics = http()
        .get(format!("{}/metrics", collector.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tributary_collector_export_lag_seconds{export=\"prom\"}"),
        "{metrics}"
    );
}
