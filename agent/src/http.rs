//! The agent's local HTTP listener: `/metrics` (Prometheus text) and `/health`.
//!
//! It binds to a local address only (default 127.0.0.1:9273). A failure to bind is logged and
//! counted; the agent keeps running without it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info};

use crate::buffer::Depth;
use crate::metrics::Metrics;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    depth: Arc<Depth>,
}

/// Binds the listener (before the agent reports itself ready); `None` if it cannot, which is
/// logged and counted.
pub async fn bind(address: SocketAddr, metrics: &Metrics) -> Option<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => Some(listener),
        Err(e) => {
            error!(%address, error = %e, "cannot listen for /metrics; continuing without it (set agent.listen)");
            metrics.error("http", "bind");
            None
        }
    }
}

/// How long a connection may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves on `listener` until `shutdown`, then lets open connections finish their request.
/// HTTP/1.1 straight on hyper: two fixed routes do not need a router (axum cost 0.2 MB).
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    depth: Arc<Depth>,
    shutdown: CancellationToken,
) {
    let Ok(address) = listener.local_addr() else {
        return;
    };
    info!(%address, "serving /metrics and /health");
    let state = AppState {
        metrics: Arc::clone(&metrics),
        depth,
    };
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: count it, wait, go on.
                    error!(error = %e, "the /metrics listener cannot accept");
                    metrics.error("http", "accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, &request)) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = served {
                // A client that goes away or sends garbage: its problem, not the agent's.
                debug!(error = %e, "a /metrics connection ended with an error");
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// The response to one request.
fn respond(state: &AppState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let route = match request.uri().path() {
        "/metrics" => Route::Metrics,
        "/health" => Route::Health,
        _ => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        response
            .headers_mut()
            .insert(ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match route {
        Route::Metrics => with_type(
            Response::new(Full::from(state.metrics.render())),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        Route::Health => health(state),
    }
}

enum Route {
    Metrics,
    Health,
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = with_type(Response::new(Full::from(body)), "text/plain; charset=utf-8");
    *response.status_mut() = status;
    response
}

fn with_type(
    mut response: Response<Full<Bytes>>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    response
        .headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

/// 200 while the buffer commits; 503 with the reason while its commits fail (a full disk),
/// so a supervisor or the `health` subcommand sees what the inputs see.
fn health(state: &AppState) -> Response<Full<Bytes>> {
    let mut body = serde_json::json!({
        "status": "ok",
        "buffer_points": state.depth.points(),
        "buffer_bytes": state.depth.bytes(),
    });
    let status = match state.depth.commit_failure() {
        None => StatusCode::OK,
        Some((reason, since)) => {
            body["status"] = "failing".into();
            body["error"] = format!(
                "the buffer cannot commit since {}: {reason}",
                tributary_wire::time::format_rfc3339(since)
            )
            .into();
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    let mut response = with_type(
        Response::new(Full::from(body.to_string())),
        "application/json",
    );
    *response.status_mut() = status;
    response
}
