//! The collector as a central sink, through its real HTTP API: cleaning rules, line protocol
//! ingest, rollups and queries, listings, metrics and the OpenAPI document.

use std::io::Write;

use tributary_bench::harness::{CollectorProcess, http, query_json, query_text, token_pair};

use crate::blocking;

/// The rule set of the golden dataset: rows missing a value go to the quarantine, the action
/// becomes a 0/1 label.
const PURCHASE_RULES: &str = r#"
[[clean.rules]]
name = "complete"
action = "missing"
match = { name = "purchase" }
fields = ["product_id", "price"]

[[clean.rules]]
name = "label"
action = "map_values"
match = { name = "purchase" }
field = "action"
values = { buy = 1, purchase = 1, checkout = 1, click = 0, view = 0, addcart = 0, abandon = 0, sell = 0 }
unmapped = "drop"
"#;

/// A tag value in line protocol: commas, spaces and equals signs escaped.
fn escape_tag(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace(',', "\\,")
        .replace(' ', "\\ ")
        .replace('=', "\\=")
}

/// The CSV as line protocol, one line per row, timestamps in seconds. An empty cell is a
/// missing field (line protocol has no null).
fn purchase_lines() -> String {
    let mut reader = csv::Reader::from_path(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/purchase_events.csv"
    ))
    .unwrap();
    let mut out = String::new();
    for row in reader.records() {
        let row = row.unwrap();
        let (user, product, action, time, price) = (&row[0], &row[1], &row[2], &row[3], &row[4]);
        let ts = tributary_wire::time::parse_rfc3339(time).unwrap() / 1_000_000_000;
        let mut fields = vec![format!("action=\"{action}\"")];
        if !product.is_empty() {
            fields.push(format!("product_id=\"{product}\""));
        }
        if !price.is_empty() {
            fields.push(format!("price={price}"));
        }
        out.push_str(&format!(
            "purchase,user_id={} {} {ts}\n",
            escape_tag(user),
            fields.join(",")
        ));
    }
    out
}

fn gzip(text: &str) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(text.as_bytes()).unwrap();
    encoder.finish().unwrap()
}

async fn write(url: &str, token: &str, query: &str, body: Vec<u8>, gzipped: bool) -> (u16, String) {
    let mut request = http()
        .post(format!("{url}/api/v2/write?{query}"))
        .header("Authorization", format!("Token {token}"))
        .body(body);
    if gzipped {
        request = request.header("Content-Encoding", "gzip");
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// (user, agg) -> value, from an aggregated answer with one bucket per series.
fn per_user(answer: &serde_json::Value) -> std::collections::BTreeMap<(String, String), f64> {
    answer["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let points = s["points"].as_array().unwrap();
            assert_eq!(points.len(), 1, "one bucket for the whole range: {s}");
            (
                (
                    s["tags"]["user_id"].as_str().unwrap().to_owned(),
                    s["agg"].as_str().unwrap().to_owned(),
                ),
                points[0][1].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The golden dataset: purchase events with missing values and eight actions, sent as
/// gzipped line protocol, cleaned by the rule set, and read back as price statistics per
/// user; the expected figures were computed by `tests/data/purchase_events_expected.py`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_purchase_events_are_cleaned_labelled_and_summarised_per_user() {
    let dir = tempfile::tempdir().unwrap();
    let (token, _) = token_pair("shop");
    let collector = blocking(|| {
        CollectorProcess::start_with(dir.path(), &[("shop", &token)], PURCHASE_RULES).unwrap()
    });
    let url = collector.url();
    let expected: serde_json::Value =
        serde_json::from_str(include_str!("../data/purchase_events.expected.json")).unwrap();

    let lines = purchase_lines();
    let (status, body) = write(
        &url,
        &token,
        "precision=s&org=o&bucket=b",
        gzip(&lines),
        true,
    )
    .await;
    // Every line parsed; the points the rules refused are stored in the quarantine and the
    // write says so, line by line (a partial write, as InfluxDB answers one).
    assert_eq!(status, 400, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (body["stored"].as_u64(), body["quarantined"].as_u64()),
        (Some(48), Some(12)),
        "{body}"
    );
    let rejected = body["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 12);
    assert!(
        rejected.iter().all(|r| r["error"]
            .as_str()
            .unwrap()
            .starts_with("quarantined: rule complete")),
        "{body}"
    );

    let range = "from=2024-03-01T00:00:00Z&to=2024-03-02T00:00:00Z";
    let stats = "count,sum,min,max,mean,stddev";
    let rolled = query_json(
        &url,
        &format!("/api/v1/query?name=purchase&field=price&agg={stats}&{range}"),
    )
    .await
    .unwrap();
    // The day is whole, so the daily rollups answer.
    assert_eq!(rolled["source"], "1day", "{rolled}");
    let got = per_user(&rolled);
    let labels = per_user(
        &query_json(
            &url,
            &format!("/api/v1/query?name=purchase&field=action&agg=sum&{range}"),
        )
        .await
        .unwrap(),
    );
    let users = expected["users"].as_object().unwrap();
    assert_eq!(got.len(), users.len() * 6, "{rolled}");
    for (user, figures) in users {
        for agg in stats.split(',') {
            let want = figures[agg].as_f64().unwrap();
            let have = got[&(user.clone(), agg.to_owned())];
            assert!(
                (want - have).abs() <= 1e-9 * want.abs().max(1.0),
                "{user} {agg}: {have} vs {want}"
            );
        }
        assert_eq!(
            labels[&(user.clone(), "sum".to_owned())],
            figures["purchases"].as_f64().unwrap(),
            "{user}"
        );
    }
    // The raw points give the same answer when the range does not fit the rollups.
    let raw = query_json(
        &url,
        &format!("/api/v1/query?name=purchase&field=price&agg={stats}&from=2024-03-01T08:59:59Z&to=2024-03-02T00:00:00Z"),
    )
    .await
    .unwrap();
    assert_eq!(raw["source"], "raw");
    let from_raw = per_user(&raw);
    assert_eq!(
        from_raw.len(),
        got.len(),
        "the raw answer covers every user and stat"
    );
    for (key, value) in from_raw {
        assert!(
            (value - got[&key]).abs() <= 1e-9 * value.abs().max(1.0),
            "{key:?}"
        );
    }

    // Every dropped row is in the quarantine, with the rule that dropped it.
    let quarantine = query_json(&url, "/api/v1/quarantine").await.unwrap();
    let records = quarantine["records"].as_array().unwrap();
    assert_eq!(
        records.len() as u64,
        expected["quarantined"].as_u64().unwrap(),
        "{quarantine}"
    );
    for record in records {
        assert_eq!(record["origin"], "collector");
        assert!(
            record["reason"]
                .as_str()
                .unwrap()
                .starts_with("rule complete: field"),
            "{record}"
        );
        assert!(
            record["payload"].as_str().unwrap().starts_with("purchase,"),
            "{record}"
        );
    }
    let metrics = query_text(&url, "/metrics").await.unwrap();
    assert!(
        metrics.contains(&format!(
            "tributary_collector_quarantined_total{{reason=\"complete\"}} {}",
            expected["quarantined"]
        )),
        "{metrics}"
    );
}

/// Line protocol edge cases over HTTP: partial success with each bad line reported, every
/// precision, escaping, field types; then the listings, CSV, moving windows, metrics and the
/// OpenAPI document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_protocol_writes_partially_and_the_api_exposes_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let (token, _) = token_pair("telegraf");
    let collector =
        blocking(|| CollectorProcess::start(dir.path(), &[("telegraf", &token)]).unwrap());
    let url = collector.url();

    // Unknown token: 401, nothing stored.
    let (status, _) = write(&url, "nope", "", b"m v=1 1".to_vec(), false).await;
    assert_eq!(status, 401);

    // One write per precision, each the same instant: 2024-01-01T00:00:00Z.
    for (precision, ts) in [
        ("s", "1704067200"),
        ("ms", "1704067200000"),
        ("us", "1704067200000000"),
        ("ns", "1704067200000000000"),
    ] {
        let line = format!("precise,unit={precision} v=1i {ts}\n");
        let (status, body) = write(
            &url,
            &token,
            &format!("precision={precision}"),
            line.into_bytes(),
            false,
        )
        .await;
        assert_eq!(status, 204, "{precision}: {body}");
    }
    let precise = query_json(&url, "/api/v1/query?name=precise")
        .await
        .unwrap();
    let series = precise["series"].as_array().unwrap();
    assert_eq!(series.len(), 4, "{precise}");
    for s in series {
        assert_eq!(s["points"][0][0], "2024-01-01T00:00:00Z", "{s}");
    }

    // Escaping and every field type; two bad lines among good ones.
    let text = "weather,station=north\\ pier,kind=a\\,b temp=21.5,count=3i,ok=true,note=\"say \\\"hi\\\"\" 1704067260000000000\n\
                weather,station=x temp= 1704067260000000000\n\
                weather,station=south temp=19.25 1704067320000000000\n\
                this is not line protocol\n\
                weather,station=south temp=18.75 1704067380000000000\n";
    let (status, body) = write(&url, &token, "", text.as_bytes().to_vec(), false).await;
    assert_eq!(status, 400, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["stored"], 3, "{answer}");
    let rejected: Vec<u64> = answer["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(rejected, vec![2, 4], "{answer}");

    let north = query_json(&url, "/api/v1/query?name=weather&tag.station=north%20pier")
        .await
        .unwrap();
    let fields: std::collections::BTreeMap<String, serde_json::Value> = north["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["field"].as_str().unwrap().to_owned(),
                s["points"][0][1].clone(),
            )
        })
        .collect();
    assert_eq!(fields["temp"], 21.5);
    assert_eq!(fields["count"], 3);
    assert_eq!(fields["ok"], true);
    assert_eq!(fields["note"], "say \"hi\"");
    assert_eq!(north["series"][0]["tags"]["kind"], "a,b");

    // The bad lines are in the quarantine, each with its text and error.
    let quarantine = query_json(&url, "/api/v1/quarantine").await.unwrap();
    let records = quarantine["records"].as_array().unwrap();
    assert_eq!(records.len(), 2, "{quarantine}");
    assert_eq!(records[1]["payload"], "this is not line protocol");
    assert_eq!(records[1]["origin"], "line_protocol");

    // Listings.
    let listed = query_json(&url, "/api/v1/series?name=weather&tag.station=south")
        .await
        .unwrap();
    assert_eq!(listed["series"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["series"][0]["first"], "2024-01-01T00:02:00Z");
    assert_eq!(listed["series"][0]["last"], "2024-01-01T00:03:00Z");
    assert_eq!(listed["series"][0]["kind"], "float");
    let agents = query_json(&url, "/api/v1/agents").await.unwrap();
    assert_eq!(agents["agents"][0]["id"], "telegraf");
    assert_eq!(agents["agents"][0]["points_received"], 7, "{agents}");

    // Aggregates as CSV, and a moving mean over two minutes.
    let csv = query_text(&url, "/api/v1/query?name=weather&field=temp&tag.station=south&step=1m&agg=mean,count&format=csv&from=2024-01-01T00:00:00Z&to=2024-01-01T00:05:00Z").await.unwrap();
    assert_eq!(
        csv,
        "name,field,agg,time,value,agent,station\n\
         weather,temp,mean,2024-01-01T00:02:00Z,19.25,telegraf,south\n\
         weather,temp,mean,2024-01-01T00:03:00Z,18.75,telegraf,south\n\
         weather,temp,count,2024-01-01T00:02:00Z,1,telegraf,south\n\
         weather,temp,count,2024-01-01T00:03:00Z,1,telegraf,south\n"
    );
    let moving = query_json(
        &url,
        "/api/v1/query?name=weather&field=temp&tag.station=south&step=1m&window=2m&agg=mean&from=2024-01-01T00:03:00Z&to=2024-01-01T00:05:00Z",
    )
    .await
    .unwrap();
    // 00:03 averages 00:02 and 00:03 (the window reaches back before `from`); 00:04 has only 00:03.
    assert_eq!(
        moving["series"][0]["points"],
        serde_json::json!([
            ["2024-01-01T00:03:00Z", 19.0],
            ["2024-01-01T00:04:00Z", 18.75]
        ]),
        "{moving}"
    );

    // Bad parameters are refused with the reason.
    let response = http()
        .get(format!("{url}/api/v1/query?name=weather&agg=median"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert!(response.text().await.unwrap().contains("median"));

    // Metrics: counters, latency histograms, each agent's health. Whole sample lines, so
    // "… 9" cannot match 90, and no HELP line stands in for a sample.
    let metrics = query_text(&url, "/metrics").await.unwrap();
    let sample = |series: &str| -> Option<f64> {
        metrics
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    };
    for (series, want) in [
        ("tributary_collector_lines_received_total", 9.0),
        (
            "tributary_collector_quarantined_total{reason=\"line_protocol\"}",
            2.0,
        ),
        (
            "tributary_collector_request_seconds_count{route=\"/api/v2/write\",method=\"POST\",status=\"204\"}",
            4.0,
        ),
        (
            "tributary_collector_agent_points_received_total{agent=\"telegraf\"}",
            7.0,
        ),
    ] {
        assert_eq!(sample(series), Some(want), "{series} in\n{metrics}");
    }
    assert!(
        sample("tributary_collector_rollup_windows_written_total").is_some_and(|n| n > 0.0),
        "rollup windows are written:\n{metrics}"
    );

    // The OpenAPI document describes what is served.
    let doc = query_json(&url, "/api/v1/openapi.json").await.unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    for path in [
        "/api/v1/batches",
        "/api/v2/write",
        "/api/v1/query",
        "/api/v1/series",
        "/api/v1/quarantine",
        "/api/v1/agents",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path}");
    }
}
