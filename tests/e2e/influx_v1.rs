//! InfluxDB 1's write API, as Telegraf's `[[outputs.influxdb]]` uses it, replayed request by
//! request from its documented shape (plugins/outputs/influxdb/http.go): `GET /ping`; at start
//! `POST /query` with a form body `q=CREATE DATABASE "telegraf"`; then `POST /write?db=telegraf`
//! with gzipped line protocol, `Content-Type: text/plain; charset=utf-8` and HTTP Basic
//! credentials (the token as the password). Also v1's `u`/`p` parameters and `precision`, the
//! 401 and partial-write answers in v1's `{"error": …}` shape, and the points read back.

use std::io::Write;

use base64::Engine;
use tributary_bench::harness::{CollectorProcess, http, query_json, token_pair};

use crate::blocking;

fn gzip(text: &str) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(text.as_bytes()).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegraf_influxdb_v1_output_requests_are_taken_as_influxdb_answers_them() {
    let dir = tempfile::tempdir().unwrap();
    let (token, _) = token_pair("telegraf-host");
    let collector = blocking(|| {
        CollectorProcess::start_with(dir.path(), &[("telegraf-host", &token)], "").unwrap()
    });
    let url = collector.url();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("telegraf:{token}"))
    );

    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        let ping = http()
            .request(method.clone(), format!("{url}/ping"))
            .send()
            .await
            .unwrap();
        assert_eq!(ping.status(), 204, "{method} /ping");
        assert!(
            ping.headers().contains_key("x-influxdb-version"),
            "{:?}",
            ping.headers()
        );
    }

    let create = http()
        .post(format!("{url}/query"))
        .header("Authorization", &basic)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("User-Agent", "Telegraf/1.30.0 Go/1.22.0")
        .body("q=CREATE+DATABASE+%22telegraf%22")
        .send()
        .await
        .unwrap();
    assert_eq!(create.status(), 200);
    let answer: serde_json::Value = create.json().await.unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"results": [{"statement_id": 0}]})
    );

    let now = tributary_wire::time::now_ns();
    let second = now / 1_000_000_000;
    let lines = format!(
        "cpu,cpu=cpu-total,host=gw usage_idle=97.5,usage_user=1.25 {now}\nmem,host=gw used_percent=41.5,available=8123456i {now}\n"
    );
    let write = http()
        .post(format!("{url}/write?db=telegraf"))
        .header("Authorization", &basic)
        .header("Content-Type", "text/plain; charset=utf-8")
        .header("Content-Encoding", "gzip")
        .header("User-Agent", "Telegraf/1.30.0 Go/1.22.0")
        .body(gzip(&lines))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 204, "{:?}", write.text().await);

    // u/p parameters instead of a header; seconds.
    let write = http()
        .post(format!(
            "{url}/write?db=telegraf&rp=autogen&u=telegraf&p={token}&precision=s"
        ))
        .body(format!("disk,host=gw,path=/ used_percent=12.5 {second}\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 204, "{:?}", write.text().await);

    // No credentials, and a wrong password: 401 in v1's shape.
    for request in [
        http().post(format!("{url}/write?db=telegraf")),
        http().post(format!("{url}/write?db=telegraf&u=telegraf&p=wrong")),
    ] {
        let refused = request.body("x v=1\n").send().await.unwrap();
        assert_eq!(refused.status(), 401);
        let body: serde_json::Value = refused.json().await.unwrap();
        assert!(body["error"].as_str().is_some(), "{body}");
    }

    // A partial write: the good line is stored, the bad one named, in `error`.
    let partial = http()
        .post(format!("{url}/write?db=telegraf"))
        .header("Authorization", &basic)
        .body(format!(
            "net,host=gw bytes_recv=5i {now}\nnet,host=gw bytes_sent=\n"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(partial.status(), 400);
    let body: serde_json::Value = partial.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("partial write: 1 of 2 lines")),
        "{body}"
    );
    assert_eq!(body["rejected"][0]["line"], 2, "{body}");

    // Other statements point to the query APIs; an unknown parameter is refused.
    let select = http()
        .post(format!("{url}/query?q=SELECT+*+FROM+cpu"))
        .header("Authorization", &basic)
        .send()
        .await
        .unwrap();
    assert_eq!(select.status(), 400);
    let bad = http()
        .post(format!("{url}/write?db=telegraf&bucket=x"))
        .header("Authorization", &basic)
        .body("x v=1\n")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // Everything good is stored, as the token's agent.
    for (name, field, value) in [
        ("cpu", "usage_idle", 97.5),
        ("mem", "available", 8_123_456.0),
        ("disk", "used_percent", 12.5),
        ("net", "bytes_recv", 5.0),
    ] {
        let answer = query_json(
            &url,
            &format!("/api/v1/query?name={name}&field={field}&from=-1h&to=now"),
        )
        .await
        .unwrap();
        let series = answer["series"].as_array().unwrap();
        assert_eq!(series.len(), 1, "{name}: {answer}");
        assert_eq!(series[0]["tags"]["agent"], "telegraf-host", "{answer}");
        assert_eq!(series[0]["points"][0][1].as_f64(), Some(value), "{answer}");
    }
}
