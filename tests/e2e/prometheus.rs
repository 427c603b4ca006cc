//! A real Prometheus (Debian's package) scrapes a test exporter and remote-writes into the
//! collector: every sample it holds reaches the collector once, under its own metric name
//! and labels, with the writer's agent id.

use std::collections::BTreeMap;
use std::time::Duration;

use tributary_bench::harness::prometheus::{Exporter, PrometheusProcess};
use tributary_bench::harness::{CollectorProcess, http, query_json, token_pair};

use crate::blocking;

/// The exporter's text at scrape round `n`: a gauge, and a counter that resets at round 4.
fn exposition(n: u64) -> String {
    let counter = if n < 4 { n * 10 } else { n - 4 };
    format!(
        "# TYPE test_gauge gauge\ntest_gauge{{room=\"a\"}} {}\ntest_gauge{{room=\"b\"}} -{n}.5\n# TYPE test_requests_total counter\ntest_requests_total{{code=\"200\"}} {counter}\n",
        n as f64 * 1.25
    )
}

/// (ms, value) of every raw sample of `metric` with `labels` in the collector.
async fn collector_samples(url: &str, metric: &str, room: Option<&str>) -> Vec<(i64, f64)> {
    let mut path = format!("/api/v1/query?name={metric}&field=value&from=-1h&to=now");
    if let Some(room) = room {
        path.push_str(&format!("&tag.room={room}"));
    }
    let answer = query_json(url, &path).await.unwrap();
    let mut samples = Vec::new();
    for series in answer["series"].as_array().into_iter().flatten() {
        for point in series["points"].as_array().into_iter().flatten() {
            let ts = tributary_wire::time::parse_rfc3339(point[0].as_str().unwrap()).unwrap();
            samples.push((ts / 1_000_000, point[1].as_f64().unwrap()));
        }
    }
    samples.sort_by_key(|s| s.0);
    samples
}

/// (ms, value) of every sample Prometheus holds for `selector` over the last 10 minutes.
async fn prometheus_samples(url: &str, selector: &str) -> Vec<(i64, f64)> {
    let address = reqwest::Url::parse_with_params(
        &format!("{url}/api/v1/query"),
        &[("query", format!("{selector}[10m]"))],
    )
    .unwrap();
    let answer: serde_json::Value = http()
        .get(address)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut samples = Vec::new();
    for series in answer["data"]["result"].as_array().into_iter().flatten() {
        for value in series["values"].as_array().into_iter().flatten() {
            let ms = (value[0].as_f64().unwrap() * 1000.0).round() as i64;
            samples.push((ms, value[1].as_str().unwrap().parse().unwrap()));
        }
    }
    samples.sort_by_key(|s| s.0);
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_remote_writes_every_scraped_sample_into_the_collector_once() {
    let dir = tempfile::tempdir().unwrap();
    let (token, _) = token_pair("prom-1");
    let collector = blocking(|| {
        CollectorProcess::start(&dir.path().join("collector"), &[("prom-1", &token)]).unwrap()
    });
    let exporter = Exporter::start(&exposition(0)).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: ['{}']\nremote_write:\n  - url: {}/prometheus/api/v1/write\n    authorization:\n      credentials: {token}\n    queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 100ms\n      max_backoff: 1s\n",
        exporter.target(),
        collector.url()
    );
    let mut prometheus = blocking(|| {
        PrometheusProcess::start(&dir.path().join("prometheus"), &config, &[]).unwrap()
    });

    // Eight scrape rounds of changing values, the counter resetting at the fourth.
    for n in 1..=8 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        exporter.set(&exposition(n));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let selectors = [
        ("test_gauge", Some("a"), "test_gauge{room=\"a\"}"),
        ("test_gauge", Some("b"), "test_gauge{room=\"b\"}"),
        ("test_requests_total", None, "test_requests_total"),
        ("up", None, "up{job=\"node\"}"),
    ];
    for (metric, room, selector) in selectors {
        // What Prometheus holds up to the newest sample the collector has must all be there,
        // once (remote write sends each series in order). Bounded wait for it to catch up.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let stored = collector_samples(&collector.url(), metric, room).await;
            let held = prometheus_samples(&prometheus.url(), selector).await;
            let newest = stored.last().map_or(i64::MIN, |s| s.0);
            let expected: Vec<(i64, f64)> =
                held.iter().copied().filter(|s| s.0 <= newest).collect();
            if stored.len() >= 8 && stored == expected {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{selector}: the collector has {stored:?}, Prometheus {held:?}; {:?}",
                prometheus.process().logs()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // Labels: Prometheus' own (job, instance) and the exporter's, and the writer's agent id.
    let answer = query_json(&collector.url(), "/api/v1/series?name=test_requests_total")
        .await
        .unwrap();
    let series = answer["series"].as_array().unwrap();
    assert_eq!(series.len(), 1, "{answer}");
    let tags: BTreeMap<String, String> = serde_json::from_value(series[0]["tags"].clone()).unwrap();
    assert_eq!(
        tags.get("job").map(String::as_str),
        Some("node"),
        "{tags:?}"
    );
    assert_eq!(
        tags.get("code").map(String::as_str),
        Some("200"),
        "{tags:?}"
    );
    assert_eq!(
        tags.get("instance").map(String::as_str),
        Some(exporter.target().as_str())
    );
    assert_eq!(tags.get("agent").map(String::as_str), Some("prom-1"));
    assert_eq!(series[0]["field"], "value");
}

/// Bodies Prometheus would never send are answered as Prometheus expects: 400 (not retried)
/// for what is not a request, 415 for the wrong encoding, 401 without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_refuses_bad_requests_with_the_answers_prometheus_expects() {
    let dir = tempfile::tempdir().unwrap();
    let (token, _) = token_pair("prom-1");
    let collector =
        blocking(|| CollectorProcess::start(dir.path(), &[("prom-1", &token)]).unwrap());
    let url = format!("{}/prometheus/api/v1/write", collector.url());
    let send = |body: Vec<u8>, encoding: &'static str, token: Option<&str>| {
        let mut request = http()
            .post(&url)
            .header("Content-Type", "application/x-protobuf")
            .header("Content-Encoding", encoding)
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let garbage = send(b"\x05garbage".to_vec(), "snappy", Some(&token))
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);
    let gzip = send(b"x".to_vec(), "gzip", Some(&token)).await.unwrap();
    assert_eq!(gzip.status(), 415);
    let anonymous = send(Vec::new(), "snappy", None).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    // An empty request is fine.
    let empty = send(vec![0], "snappy", Some(&token)).await.unwrap();
    assert_eq!(empty.status(), 204, "{:?}", empty.text().await);
}
