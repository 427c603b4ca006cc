//! The http input against a real local HTTP server.

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use tributary_wire::FieldValue;

use super::*;
use crate::config::tests::{error, one_input};
use crate::inputs::InputConfig;

/// Serves an exporter, a JSON device API (bearer token), a POST echo and a failing endpoint.
async fn server() -> String {
    let app = Router::new()
        .route(
            "/metrics",
            get(|| async {
                "# TYPE node_load1 gauge\nnode_load1 0.25\n# TYPE http_requests_total counter\nhttp_requests_total{code=\"200\",path=\"/a,b\"} 7\nbroken{ 1\n"
            }),
        )
        .route(
            "/device",
            get(|headers: HeaderMap| async move {
                if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer s3cret") {
                    return (StatusCode::UNAUTHORIZED, String::new());
                }
                (StatusCode::OK, r#"{"device":{"id":"pump-7"},"readings":[{"temp":21.5},{"temp":22}],"ok":true,"at":"2026-11-21T10:00:00Z"}"#.to_owned())
            }),
        )
        .route("/echo", post(|body: String| async move { format!("{{\"echoed\": {body}}}") }))
        .route("/down", get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "maintenance") }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

fn poller(table: &str) -> HttpPoller {
    match one_input(&format!("[[inputs.http]]\n{table}")) {
        InputConfig::Http(config) => HttpPoller::new(config).unwrap(),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn scrapes_a_prometheus_endpoint_and_quarantines_bad_lines() {
    let base = server().await;
    let mut http = poller(&format!(
        "url = \"{base}/metrics\"\nformat = \"prometheus\"\n"
    ));
    let polled = http.poll(5).await.unwrap();
    assert_eq!(polled.points.len(), 2, "{:?}", polled.points);
    assert_eq!(polled.points[0].name, "node_load1");
    assert_eq!(polled.points[0].fields["gauge"], FieldValue::F64(0.25));
    assert_eq!(polled.points[1].tags["path"], "/a,b");
    assert_eq!(polled.rejected.len(), 1);
    assert!(
        polled.rejected[0].reason.starts_with("line 5"),
        "{}",
        polled.rejected[0].reason
    );
}

#[tokio::test]
async fn selects_json_fields_and_tags_by_pointer_with_bearer_auth() {
    let base = server().await;
    let table = format!(
        "url = \"{base}/device\"\nbearer_token = \"s3cret\"\nname = \"pump\"\njson_fields = {{ first = \"/readings/0/temp\", second = \"/readings/1/temp\", ok = \"/ok\" }}\njson_tags = {{ device = \"/device/id\" }}\njson_time = \"/at\"\n"
    );
    let polled = poller(&table).poll(5).await.unwrap();
    assert!(polled.rejected.is_empty(), "{:?}", polled.rejected);
    let point = &polled.points[0];
    assert_eq!(point.name, "pump");
    assert_eq!(point.fields["first"], FieldValue::F64(21.5));
    assert_eq!(point.fields["second"], FieldValue::I64(22));
    assert_eq!(point.fields["ok"], FieldValue::Bool(true));
    assert_eq!(point.tags["device"], "pump-7");
    assert_eq!(
        point.ts,
        tributary_wire::time::parse_rfc3339("2026-11-21T10:00:00Z").unwrap()
    );

    // Without the token the device answers 401, which fails the poll.
    let error = poller(&format!("url = \"{base}/device\"\n"))
        .poll(5)
        .await
        .unwrap_err();
    assert_eq!(error.kind, "status");
    assert!(error.message.contains("401"), "{error}");
}

#[tokio::test]
async fn posts_a_body_and_checks_the_status() {
    let base = server().await;
    let polled = poller(&format!(
        "url = \"{base}/echo\"\nmethod = \"POST\"\nbody = \"{{\\\"v\\\": 3}}\"\n"
    ))
    .poll(5)
    .await
    .unwrap();
    assert_eq!(polled.points[0].fields["echoed.v"], FieldValue::I64(3));
    let error = poller(&format!("url = \"{base}/down\"\n"))
        .poll(5)
        .await
        .unwrap_err();
    assert!(error.message.contains("503"), "{error}");
    // A status the configuration accepts is parsed.
    let polled = poller(&format!(
        "url = \"{base}/down\"\nformat = \"lines\"\nsuccess_status = [503]\n"
    ))
    .poll(5)
    .await
    .unwrap();
    assert_eq!(
        polled.points[0].fields["message"],
        FieldValue::Str("maintenance".into())
    );
}

#[tokio::test]
async fn a_refused_connection_fails_the_poll() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let error = poller(&format!("url = \"http://127.0.0.1:{port}/\"\n"))
        .poll(0)
        .await
        .unwrap_err();
    assert_eq!(error.kind, "request");
}

#[test]
fn check_names_bad_pointers_and_urls() {
    let message = error("[[inputs.http]]\nurl = \"http://x/\"\njson_fields = { t = \"temp\" }\n");
    assert!(
        message.contains("inputs.http[0].json_fields.t") && message.contains("must start with '/'"),
        "{message}"
    );
    let message = error("[[inputs.http]]\nurl = \"http://x/\"\njson_fields = { t = \"/a~2b\" }\n");
    assert!(message.contains("~0"), "{message}");
    let message = error("[[inputs.http]]\nurl = \"ftp://x/\"\n");
    assert!(message.contains("inputs.http[0].url"), "{message}");
    let message = error("[[inputs.http]]\nurl = \"http://x/\"\nformat = \"xml\"\n");
    assert!(message.contains("prometheus"), "{message}");
}
