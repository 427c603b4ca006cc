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

/// The requests Grafana's Prometheus data source makes (URL `…/prometheus`, the reader's
/// token in a custom `Authorization` header or as basic auth), replayed in their shapes:
/// buildinfo at save, the metrics browser's labels, names and series by form POST, and a
/// range panel's `query_range` by form POST. Reads need the reader's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafanas_prometheus_data_source_requests_are_answered() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let (agent_token, _) = token_pair("gw-1");
    let (reader_token, reader_hash) = token_pair("grafana");
    let collector = blocking(|| {
        CollectorProcess::start_custom(
            dir.path(),
            &[("gw-1", &agent_token)],
            &tributary_bench::harness::CollectorOptions {
                anonymous_read: false,
                extra: format!("[[readers]]\nid = \"grafana\"\ntoken_sha256 = \"{reader_hash}\"\n"),
                ..Default::default()
            },
        )
        .unwrap()
    });
    let url = collector.url();
    let now = tributary_wire::time::now_ns() / 1_000_000_000;
    let mut lines = String::new();
    for i in 0..30 {
        let ts = now - 600 + i * 20;
        lines.push_str(&format!(
            "cpu,host=h1 usage_idle={}.5,usage_user=2 {ts}\ncpu,host=h2 usage_idle=80 {ts}\nlog,host=h1 message=\"text\" {ts}\n",
            90 - i % 5
        ));
    }
    let stored = http()
        .post(format!("{url}/api/v2/write?precision=s"))
        .header("Authorization", format!("Token {agent_token}"))
        .body(lines)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 204);

    let bearer = format!("Bearer {reader_token}");
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("grafana:{reader_token}"))
    );
    let range = format!("start={}&end={}", now - 3600, now);
    let call = |method: reqwest::Method, path: &str, form: Option<String>, auth: Option<&str>| {
        let mut request = http().request(method, format!("{url}/prometheus/api/v1/{path}"));
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        if let Some(form) = form {
            request = request
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(form);
        }
        request.send()
    };
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;

    // Without a token, 401; an agent's token, 403; the reader's, 200.
    let anonymous = call(get.clone(), "status/buildinfo", None, None)
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let agent = format!("Bearer {agent_token}");
    let writer = call(get.clone(), "status/buildinfo", None, Some(&agent))
        .await
        .unwrap();
    assert_eq!(writer.status(), 403);
    let info: serde_json::Value = call(get.clone(), "status/buildinfo", None, Some(&bearer))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["status"], "success");
    assert!(
        info["data"]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with('2')),
        "{info}"
    );

    let labels: serde_json::Value = call(post.clone(), "labels", Some(range.clone()), Some(&basic))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for name in ["__name__", "agent", "host"] {
        assert!(
            labels["data"].as_array().unwrap().iter().any(|l| l == name),
            "{labels}"
        );
    }
    let names: serde_json::Value = call(
        get.clone(),
        &format!("label/__name__/values?{range}"),
        None,
        Some(&bearer),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    // Numeric fields only; `log`'s string field is not exposed.
    assert_eq!(
        names["data"],
        serde_json::json!(["cpu_usage_idle", "cpu_usage_user"]),
        "{names}"
    );
    let series: serde_json::Value = call(
        post.clone(),
        "series",
        Some(format!("match%5B%5D=cpu_usage_idle&{range}")),
        Some(&bearer),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(series["data"].as_array().unwrap().len(), 2, "{series}");
    assert_eq!(series["data"][0]["agent"], "gw-1", "{series}");
    let metadata: serde_json::Value = call(get.clone(), "metadata", None, Some(&bearer))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["status"], "success");

    // A time series panel: the query as Grafana sends it, by form POST.
    let panel: serde_json::Value = call(
        post.clone(),
        "query_range",
        Some(format!(
            "query=avg+by+%28host%29+%28cpu_usage_idle%29&start={}&end={}&step=60",
            now - 600,
            now
        )),
        Some(&bearer),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(panel["data"]["resultType"], "matrix", "{panel}");
    let result = panel["data"]["result"].as_array().unwrap();
    assert_eq!(result.len(), 2, "{panel}");
    assert!(
        result
            .iter()
            .all(|s| s["values"].as_array().unwrap().len() >= 10),
        "{panel}"
    );
    // An error in Prometheus' shape.
    let bad: serde_json::Value = call(
        post.clone(),
        "query",
        Some("query=sum(".into()),
        Some(&bearer),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(bad["status"], "error");
    assert_eq!(bad["errorType"], "bad_data");
}
