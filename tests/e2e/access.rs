//! Who may read and write: reads need a reader's token (401 without one, 403 with an agent's,
//! 200 with a reader's), a reader's token does not write, `/healthz` and `/metrics` stay open,
//! and `anonymous_read` opens reads. The tables come from `tributary-collector token`, pasted
//! into the configuration as printed.

use std::process::Command;

use tributary_bench::harness::{CollectorOptions, CollectorProcess, bin_dir, http, token_pair};

use crate::blocking;

/// Runs `tributary-collector token` with `args`: the printed text, and the token from its
/// comment line.
fn new_token(args: &[&str]) -> (String, String) {
    let output = Command::new(bin_dir().join("tributary-collector"))
        .arg("token")
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let token = text
        .lines()
        .find_map(|line| line.strip_prefix("#   "))
        .expect("the token is printed on a comment line")
        .to_owned();
    (text, token)
}

async fn status(url: &str, token: Option<&str>) -> (u16, String) {
    let mut request = http().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_need_a_reader_token_and_agents_only_write() {
    let dir = tempfile::tempdir().unwrap();
    let (agent_token, _) = token_pair("edge-1");
    let (readers_table, reader_token) = new_token(&["--reader", "grafana"]);
    let mut collector = blocking(|| {
        CollectorProcess::start_custom(
            &dir.path().join("collector"),
            &[("edge-1", &agent_token)],
            &CollectorOptions {
                anonymous_read: false,
                extra: readers_table.clone(),
                ..CollectorOptions::default()
            },
        )
        .unwrap()
    });
    let url = collector.url();
    for path in [
        "/api/v1/query?name=x",
        "/api/v1/series",
        "/api/v1/agents",
        "/api/v1/quarantine",
        "/api/v1/openapi.json",
    ] {
        let read = format!("{url}{path}");
        let (code, body) = status(&read, None).await;
        assert_eq!(code, 401, "{path} without a token: {body}");
        assert_eq!(
            body, r#"{"error":"missing Authorization: Bearer <token>"}"#,
            "the same body as ingest's"
        );
        let (code, body) = status(&read, Some("not-a-token")).await;
        assert_eq!(code, 401, "{path} with an unknown token: {body}");
        assert_eq!(body, r#"{"error":"the bearer token is not known"}"#);
        let (code, body) = status(&read, Some(&agent_token)).await;
        assert_eq!(code, 403, "{path} with an agent's token: {body}");
        assert!(body.contains("may write, not read"), "{body}");
        let (code, body) = status(&read, Some(&reader_token)).await;
        assert_eq!(code, 200, "{path} with a reader's token: {body}");
    }
    // Open to all: health for load balancers, metrics for Prometheus.
    assert_eq!(status(&format!("{url}/healthz"), None).await.0, 200);
    assert_eq!(status(&format!("{url}/metrics"), None).await.0, 200);

    // A reader's token does not write; an agent's does.
    let write = |token: &str| {
        http()
            .post(format!("{url}/api/v2/write?precision=s"))
            .bearer_auth(token)
            .body("m v=1 1700000000\n")
            .send()
    };
    let refused = write(&reader_token).await.unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    assert!(
        refused
            .text()
            .await
            .unwrap()
            .contains("may read, not write")
    );
    assert_eq!(write(&agent_token).await.unwrap().status().as_u16(), 204);

    // A reload with anonymous_read on opens reads.
    let config = dir.path().join("collector/collector.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("anonymous_read = false", "anonymous_read = true"),
    )
    .unwrap();
    let pid = collector.pid().unwrap();
    let sent = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (code, _) = status(&format!("{url}/api/v1/series"), None).await;
        if code == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reads opened after the reload: still {code}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    collector.terminate();
}

/// One token over its limit gets 429 with Retry-After; another token is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_token_is_limited_and_the_others_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let (busy_table, busy) = new_token(&["--reader", "runaway"]);
    let (calm_table, calm) = new_token(&["--reader", "calm"]);
    let collector = blocking(|| {
        CollectorProcess::start_custom(
            &dir.path().join("collector"),
            &[],
            &CollectorOptions {
                anonymous_read: false,
                server_extra: "rate_limit = 2\nrate_burst = 5\n".into(),
                extra: format!("{busy_table}\n{calm_table}"),
                ..CollectorOptions::default()
            },
        )
        .unwrap()
    });
    let url = format!("{}/api/v1/series", collector.url());
    let mut limited = 0;
    let mut retry_after = None;
    for _ in 0..20 {
        let response = http().get(&url).bearer_auth(&busy).send().await.unwrap();
        match response.status().as_u16() {
            200 => {}
            429 => {
                limited += 1;
                retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
            }
            other => panic!("unexpected {other}"),
        }
    }
    // A burst of 5 and 2 per second: of 20 quick requests, at least 10 are turned away.
    assert!(limited >= 10, "{limited} of 20 limited");
    assert_eq!(retry_after, Some(1), "Retry-After in whole seconds");
    let calm_status = http().get(&url).bearer_auth(&calm).send().await.unwrap();
    assert_eq!(
        calm_status.status().as_u16(),
        200,
        "another token is served"
    );
    // Health is never limited.
    for _ in 0..10 {
        assert_eq!(
            status(&format!("{}/healthz", collector.url()), None)
                .await
                .0,
            200
        );
    }
}
