//! PromQL compliance against a real Prometheus (Debian's package): one generator
//! remote-writes the same hour of gauges, counters with resets and classic histograms into
//! Prometheus (its remote write receiver) and into the collector; then every query in
//! [`QUERIES`] runs on both, instant and range, and the answers must agree to 1e-9 relative,
//! or the collector must refuse the query as "unsupported". The `agent` label the collector
//! adds (the writer's id) is set aside before comparing.

use std::collections::BTreeMap;
use std::time::Duration;

use tributary_bench::harness::prometheus::PrometheusProcess;
use tributary_bench::harness::{CollectorProcess, http, token_pair};
use tributary_collector::prometheus::remote::{Label, Sample, TimeSeries, WriteRequest, encode};

use crate::blocking;

/// The queries compared. `{t}` is not used: every query runs at several instants and as a
/// range query over the data.
const QUERIES: &[&str] = &[
    // Selectors.
    "demo_gauge",
    "demo_gauge{instance=\"i1\"}",
    "demo_gauge{instance!=\"i1\"}",
    "demo_gauge{instance=~\"i[12]\"}",
    "demo_gauge{instance!~\"i[12]\"}",
    "{__name__=~\"demo_g.*\"}",
    "demo_gauge offset 5m",
    "demo_gauge offset 90s",
    "demo_requests_total{code=\"500\"}",
    "demo_gauge @ end()",
    "demo_gauge @ start()",
    "nonexistent_metric",
    // Range functions over counters.
    "rate(demo_requests_total[5m])",
    "rate(demo_requests_total[1m])",
    "rate(demo_requests_total[10m] offset 5m)",
    "irate(demo_requests_total[5m])",
    "increase(demo_requests_total[5m])",
    "increase(demo_requests_total[15m])",
    "resets(demo_requests_total[20m])",
    "changes(demo_requests_total[10m])",
    "rate(demo_requests_total[5m] @ end())",
    "delta(demo_gauge[5m])",
    "idelta(demo_gauge[5m])",
    "deriv(demo_gauge[10m])",
    "predict_linear(demo_gauge[10m], 600)",
    "changes(demo_gauge[5m])",
    // Over time.
    "avg_over_time(demo_gauge[5m])",
    "sum_over_time(demo_gauge[5m])",
    "min_over_time(demo_gauge[5m])",
    "max_over_time(demo_gauge[5m])",
    "count_over_time(demo_gauge[5m])",
    "last_over_time(demo_gauge[5m])",
    "present_over_time(demo_gauge[5m])",
    "stddev_over_time(demo_gauge[5m])",
    "stdvar_over_time(demo_gauge[5m])",
    "quantile_over_time(0.5, demo_gauge[5m])",
    "quantile_over_time(0.9, demo_gauge[10m])",
    "quantile_over_time(0, demo_gauge[10m])",
    "absent_over_time(demo_gauge[5m])",
    "absent_over_time(nonexistent{job=\"x\"}[5m])",
    "max_over_time(demo_gauge[10m:1m])",
    "avg_over_time(rate(demo_requests_total[5m])[15m:1m])",
    "max_over_time(deriv(demo_gauge[5m])[10m:30s])",
    // Instant functions.
    "abs(demo_gauge)",
    "ceil(demo_gauge)",
    "floor(demo_gauge)",
    "round(demo_gauge)",
    "round(demo_gauge, 0.5)",
    "clamp(demo_gauge, -1, 1)",
    "clamp_min(demo_gauge, 0)",
    "clamp_max(demo_gauge, 0)",
    "sqrt(abs(demo_gauge))",
    "exp(demo_gauge / 10)",
    "ln(abs(demo_gauge) + 1)",
    "log2(abs(demo_gauge) + 1)",
    "log10(abs(demo_gauge) + 1)",
    "timestamp(demo_gauge)",
    "time()",
    "vector(1)",
    "vector(time())",
    "scalar(demo_gauge{instance=\"i1\"})",
    "scalar(demo_gauge)",
    "absent(demo_gauge)",
    "absent(nonexistent{job=\"x\",instance=\"y\"})",
    "sort(demo_gauge)",
    "sort_desc(demo_gauge)",
    "label_replace(demo_gauge, \"host\", \"$1\", \"instance\", \"i(.*)\")",
    "label_replace(demo_gauge, \"instance\", \"\", \"instance\", \".*\")",
    "label_join(demo_gauge, \"both\", \"-\", \"instance\", \"job\")",
    "histogram_quantile(0.5, demo_latency_seconds_bucket)",
    "histogram_quantile(0.9, rate(demo_latency_seconds_bucket[5m]))",
    "histogram_quantile(0.99, sum by (le) (rate(demo_latency_seconds_bucket[5m])))",
    "histogram_quantile(0.5, sum by (le, instance) (rate(demo_latency_seconds_bucket[10m])))",
    "rate(demo_latency_seconds_sum[5m]) / rate(demo_latency_seconds_count[5m])",
    // Aggregations.
    "sum(demo_gauge)",
    "sum by (instance) (demo_requests_total)",
    "sum without (code) (demo_requests_total)",
    "sum by (code) (rate(demo_requests_total[5m]))",
    "avg(demo_gauge)",
    "avg by (job) (demo_gauge)",
    "min(demo_gauge)",
    "max(demo_gauge)",
    "max by (code) (demo_requests_total)",
    "count(demo_gauge)",
    "count by (code) (demo_requests_total)",
    "stddev(demo_gauge)",
    "stdvar(demo_gauge)",
    "group(demo_gauge)",
    "group by (code) (demo_requests_total)",
    // Ties have no defined order in topk/bottomk: these series never tie.
    "topk(2, demo_latency_seconds_sum)",
    "bottomk(2, demo_latency_seconds_sum)",
    "topk(1, sum by (instance) (demo_latency_seconds_sum))",
    "topk by (code) (1, demo_requests_total)",
    "quantile(0.5, demo_gauge)",
    "quantile(0.9, demo_requests_total)",
    "count_values(\"value\", round(demo_gauge))",
    "sum(rate(demo_requests_total[5m]))",
    "avg without (instance) (rate(demo_requests_total[5m]))",
    "sum(demo_gauge) by (instance)",
    "max(rate(demo_requests_total[5m])) by (code)",
    "sum by (le) (demo_latency_seconds_bucket)",
    "count_over_time(demo_requests_total[1m])",
    // Ranges the minute rollups tile at the aligned times (answered from the windows).
    "avg_over_time(demo_gauge[1h])",
    "count_over_time(demo_requests_total[15m] offset 2m)",
    "max_over_time(demo_gauge[3m] @ end())",
    "sum by (instance) (sum_over_time(demo_requests_total[2m]))",
    "max_over_time(demo_requests_total[5m] offset 10m)",
    "sgn(demo_gauge)",
    "abs(demo_gauge - 1)",
    "count(count by (instance) (demo_requests_total))",
    // Binary operators.
    "demo_gauge * 2",
    "2 * demo_gauge",
    "demo_gauge + demo_gauge",
    "demo_gauge - 1",
    "demo_gauge / 3",
    "demo_gauge % 3",
    "demo_gauge ^ 2",
    "-demo_gauge",
    "1 - demo_gauge",
    "demo_gauge > 0",
    "demo_gauge < 0",
    "demo_gauge >= 1",
    "demo_gauge <= 1",
    "demo_gauge == demo_gauge",
    "demo_gauge != 0",
    "demo_gauge > bool 0",
    "0 < bool demo_gauge",
    "1 > bool 0",
    "1 + 2 * 3",
    "demo_gauge > demo_gauge offset 1m",
    "demo_requests_total / ignoring(code) group_left sum without (code) (demo_requests_total)",
    "demo_requests_total / on(instance, job) group_left sum by (instance, job) (demo_requests_total)",
    "sum by (instance, job) (demo_requests_total) / on(instance, job) group_right demo_requests_total",
    "demo_requests_total{code=\"200\"} / ignoring(code) demo_requests_total{code=\"500\"}",
    "demo_requests_total{code=\"200\"} + on(instance) demo_requests_total{code=\"500\"}",
    "rate(demo_requests_total{code=\"500\"}[5m]) / ignoring(code) rate(demo_requests_total{code=\"200\"}[5m])",
    "demo_gauge and demo_gauge > 0",
    "demo_gauge or demo_requests_total",
    "demo_gauge unless demo_gauge < 0",
    "demo_requests_total and on(instance) demo_gauge > 0",
    "demo_requests_total unless on(code) demo_requests_total{code=\"200\"}",
    "demo_gauge * on(instance) group_left(job) demo_gauge",
    "demo_gauge + ignoring(job) demo_gauge",
    "demo_gauge / on() group_left scalar(sum(demo_gauge))",
    "demo_gauge / scalar(sum(demo_gauge))",
    "demo_requests_total / on(instance) demo_requests_total",
    "atan2(demo_gauge, 2)",
    "demo_gauge atan2 demo_gauge",
    // Subqueries.
    "demo_gauge[5m:1m]",
    "rate(demo_requests_total[5m:30s])",
    "sum_over_time(demo_gauge[10m:2m] offset 3m)",
    "min_over_time(sum(demo_gauge)[20m:1m])",
    // Bare range selectors (instant queries only).
    "demo_gauge[1m]",
    "demo_requests_total{code=\"500\"}[2m]",
    // Not implemented here (and newer than Prometheus 2.42): refused as unsupported.
    "mad_over_time(demo_gauge[5m])",
    "sort_by_label(demo_gauge, \"instance\")",
    // Errors both must refuse.
    "demo_gauge{",
    "sum(",
    "rate(demo_gauge)",
    "{}",
];

/// Samples every 15 s over the hour before `end` (ms).
fn generate(end: i64) -> Vec<TimeSeries> {
    let start = end - 3_600_000;
    let times: Vec<i64> = (0..=240).map(|i| start + i * 15_000).collect();
    let series = |labels: &[(&str, &str)], value: &dyn Fn(usize) -> f64| TimeSeries {
        labels: labels
            .iter()
            .map(|(k, v)| Label {
                name: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
        samples: times
            .iter()
            .enumerate()
            .map(|(i, &t)| Sample {
                value: value(i),
                timestamp: t,
            })
            .collect(),
        histograms: Vec::new(),
    };
    let mut out = Vec::new();
    for (n, instance) in ["i1", "i2", "i3"].iter().enumerate() {
        let phase = n as f64;
        out.push(series(
            &[
                ("__name__", "demo_gauge"),
                ("instance", instance),
                ("job", "demo"),
            ],
            &move |i| {
                ((i as f64 / 7.0 + phase).sin() * 5.0 * (phase + 1.0) + phase).round() / 4.0
                    + 0.125 * (i % 3) as f64
            },
        ));
        for (c, code) in ["200", "500"].iter().enumerate() {
            let step = (n + 1) * (c * 4 + 1);
            let reset_every = 70 + 30 * n + 11 * c;
            out.push(series(
                &[
                    ("__name__", "demo_requests_total"),
                    ("code", code),
                    ("instance", instance),
                    ("job", "demo"),
                ],
                &move |i| ((i % reset_every) * step + (i * i) % 7) as f64,
            ));
        }
        let bounds = ["0.1", "0.5", "1", "+Inf"];
        for (b, le) in bounds.iter().enumerate() {
            out.push(series(
                &[
                    ("__name__", "demo_latency_seconds_bucket"),
                    ("instance", instance),
                    ("job", "demo"),
                    ("le", le),
                ],
                &move |i| (i * (b + 1 + n) + (i * 3) % (b + 2)) as f64,
            ));
        }
        out.push(series(
            &[
                ("__name__", "demo_latency_seconds_count"),
                ("instance", instance),
                ("job", "demo"),
            ],
            &move |i| (i * (4 + n) + (i * 3) % 5) as f64,
        ));
        out.push(series(
            &[
                ("__name__", "demo_latency_seconds_sum"),
                ("instance", instance),
                ("job", "demo"),
            ],
            &move |i| i as f64 * (0.37 + n as f64 * 0.1),
        ));
    }
    out
}

async fn remote_write(url: &str, token: Option<&str>, series: Vec<TimeSeries>) {
    let body = encode(&WriteRequest {
        timeseries: series,
        metadata: Vec::new(),
    })
    .unwrap();
    let mut request = http()
        .post(url)
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "snappy")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    assert!(
        status.is_success(),
        "{url}: {status}: {}",
        response.text().await.unwrap()
    );
}

/// An answer, normalised: per label set (the collector's `agent` set aside), its values.
#[derive(Debug)]
enum Answer {
    Data(String, BTreeMap<String, Vec<(f64, f64)>>),
    Error(String),
}

fn normalise(body: &serde_json::Value) -> Answer {
    if body["status"] != "success" {
        return Answer::Error(body["error"].as_str().unwrap_or_default().to_owned());
    }
    let kind = body["data"]["resultType"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let result = &body["data"]["result"];
    let value = |v: &serde_json::Value| -> (f64, f64) {
        let text = v[1].as_str().unwrap_or("NaN");
        let parsed = match text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other.parse().unwrap_or(f64::NAN),
        };
        (v[0].as_f64().unwrap_or_default(), parsed)
    };
    let mut out = BTreeMap::new();
    match kind.as_str() {
        "scalar" | "string" => {
            out.insert(String::new(), vec![value(result)]);
        }
        _ => {
            for (index, entry) in result.as_array().into_iter().flatten().enumerate() {
                let mut metric: BTreeMap<String, String> =
                    serde_json::from_value(entry["metric"].clone()).unwrap_or_default();
                metric.remove("agent");
                let mut key = format!("{metric:?}");
                if kind == "vector" && body["ordered"] == true {
                    key = format!("{index:04} {key}");
                }
                let values = match entry.get("values") {
                    Some(values) => values.as_array().unwrap().iter().map(value).collect(),
                    None => vec![value(&entry["value"])],
                };
                out.insert(key, values);
            }
        }
    }
    Answer::Data(kind, out)
}

fn close(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a == b {
        return true;
    }
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// Where two answers differ, if they do.
fn differ(ours: &Answer, theirs: &Answer) -> Option<String> {
    match (ours, theirs) {
        (Answer::Error(..), Answer::Error(..)) => None,
        (Answer::Data(k1, a), Answer::Data(k2, b)) => {
            if k1 != k2 {
                return Some(format!("result type {k1} against {k2}"));
            }
            if a.keys().ne(b.keys()) {
                return Some(format!(
                    "series {:?} against {:?}",
                    a.keys().collect::<Vec<_>>(),
                    b.keys().collect::<Vec<_>>()
                ));
            }
            for (key, values) in a {
                let other = &b[key];
                if values.len() != other.len() {
                    return Some(format!(
                        "{key}: {} values against {}",
                        values.len(),
                        other.len()
                    ));
                }
                for (x, y) in values.iter().zip(other) {
                    if (x.0 - y.0).abs() > 1e-6 || !close(x.1, y.1) {
                        return Some(format!("{key}: {x:?} against {y:?}"));
                    }
                }
            }
            None
        }
        _ => Some(format!("{ours:?} against {theirs:?}")),
    }
}

async fn ask(base: &str, path: &str, params: &[(&str, String)], token: Option<&str>) -> Answer {
    let url = reqwest::Url::parse_with_params(&format!("{base}{path}"), params).unwrap();
    let mut request = http().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let body: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
    let mut body = body;
    let ordered = params
        .iter()
        .any(|(_, q)| q.starts_with("sort") || q.starts_with("topk") || q.starts_with("bottomk"));
    if ordered && path.ends_with("/query") {
        // sort() fixes the order; topk's order is not defined, so only sort's is compared.
        body["ordered"] =
            serde_json::Value::Bool(params.iter().any(|(_, q)| q.starts_with("sort")));
    }
    normalise(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promql_answers_match_prometheus_or_are_refused_as_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let (token, _) = token_pair("generator");
    let collector = blocking(|| {
        CollectorProcess::start_with(
            &dir.path().join("collector"),
            &[("generator", &token)],
            // Hundreds of queries in a row: not what the rate limit is for.
            "rate_limit = 0\n",
        )
        .unwrap()
    });
    let prometheus = blocking(|| {
        PrometheusProcess::start(
            &dir.path().join("prometheus"),
            "global:\n  scrape_interval: 1m\n",
            &["--web.enable-remote-write-receiver"],
        )
        .unwrap()
    });
    // A whole minute, so step-aligned times fall on the data.
    let end = tributary_wire::time::now_ns() / 1_000_000 / 60_000 * 60_000;
    let series = generate(end);
    remote_write(
        &format!("{}/api/v1/write", prometheus.url()),
        None,
        series.clone(),
    )
    .await;
    remote_write(
        &format!("{}/prometheus/api/v1/write", collector.url()),
        Some(&token),
        series,
    )
    .await;

    let seconds = |ms: i64| format!("{:.3}", ms as f64 / 1000.0);
    let instants = [end - 40 * 60_000, end - 17 * 60_000 - 7_000, end];
    let (range_start, range_end) = (end - 50 * 60_000, end);
    let ours_base = format!("{}/prometheus/api/v1", collector.url());
    let theirs_base = format!("{}/api/v1", prometheus.url());
    let (mut passed, mut unsupported, mut failures) = (0usize, Vec::new(), Vec::new());
    for &query in QUERIES {
        let mut cases: Vec<(&str, Vec<(&str, String)>)> = instants
            .iter()
            .map(|&t| {
                (
                    "/query",
                    vec![("query", query.to_owned()), ("time", seconds(t))],
                )
            })
            .collect();
        cases.push((
            "/query_range",
            vec![
                ("query", query.to_owned()),
                ("start", seconds(range_start)),
                ("end", seconds(range_end)),
                ("step", "60".to_owned()),
            ],
        ));
        let mut refused = false;
        let mut wrong = None;
        for (path, params) in &cases {
            let ours = ask(&ours_base, path, params, Some(&token)).await;
            let theirs = ask(&theirs_base, path, params, None).await;
            if let Answer::Error(message) = &ours
                && message.starts_with("unsupported")
            {
                refused = true;
                continue;
            }
            if let Some(difference) = differ(&ours, &theirs) {
                wrong = Some(format!("{query} ({path} {params:?}): {difference}"));
                break;
            }
        }
        match (wrong, refused) {
            (Some(w), _) => failures.push(w),
            (None, true) => unsupported.push(query),
            (None, false) => passed += 1,
        }
    }
    eprintln!(
        "PromQL compliance: {passed} of {} queries agree with Prometheus; {} refused as unsupported: {unsupported:?}",
        QUERIES.len(),
        unsupported.len()
    );
    assert!(
        failures.is_empty(),
        "{} wrong answers:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(QUERIES.len() >= 150, "{} queries", QUERIES.len());
    tokio::time::sleep(Duration::from_millis(1)).await;
}
