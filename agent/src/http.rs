//! The agent's local HTTP listener: `/metrics` (Prometheus text) and `/health`.
//!
//! It binds to a local address only (default 127.0.0.1:9273). A failure to bind is logged and
//! counted; the agent keeps running without it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

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

/// Serves on `listener` until `shutdown`.
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
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/health", get(health))
        .with_state(AppState {
            metrics: Arc::clone(&metrics),
            depth,
        });
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        error!(error = %e, "the /metrics listener failed");
        metrics.error("http", "serve");
    }
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
}

/// 200 while the buffer commits; 503 with the reason while its commits fail (a full disk),
/// so a supervisor or the `health` subcommand sees what the inputs see.
async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let mut body = serde_json::json!({
        "status": "ok",
        "buffer_points": state.depth.points(),
        "buffer_bytes": state.depth.bytes(),
    });
    match state.depth.commit_failure() {
        None => (StatusCode::OK, axum::Json(body)),
        Some((reason, since)) => {
            body["status"] = "failing".into();
            body["error"] = format!(
                "the buffer cannot commit since {}: {reason}",
                tributary_wire::time::format_rfc3339(since)
            )
            .into();
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body))
        }
    }
}
