//! The Tributary collector: authenticates agents, stores their batches exactly once, and
//! answers queries.
//!
//! ```text
//! agent ──POST /api/v1/batches──▶ auth (token → agent id) ─▶ decompress + decode (bounded)
//!                                                            │
//!            2xx {committed_through} ◀── commit (points + mark, one transaction) ◀── writer queue
//! ```
//!
//! [`serve`] runs the HTTP server on a listener the caller bound, so tests can use port 0.

pub mod api;
pub mod auth;
pub mod clean;
pub mod config;
pub mod metrics;
pub mod rollup;
pub mod storage;
pub mod units;

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::AppState;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::storage::Storage;

/// Opens storage and serves on `listener` until `shutdown`; then stops taking requests, lets
/// queued batches commit, and returns.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let storage = {
        let config = config.clone();
        let metrics = Arc::clone(&metrics);
        tokio::task::spawn_blocking(move || Storage::open(&config.storage_options(), metrics))
            .await??
    };
    if config.agents.is_empty() {
        warn!("no [[agents]] are configured: every batch will be refused with 401");
        metrics.error("config", "no_agents");
    }
    let state = Arc::new(AppState {
        storage,
        auth: Authenticator::new(config.agents.clone()),
        metrics,
        max_decompressed_size: config.max_decompressed_size,
        query_max_points: config.query_max_points,
        resolutions: config.resolutions.clone(),
    });
    let app = api::router(Arc::clone(&state), config.max_body_size);
    let address = listener.local_addr().context("listener address")?;
    info!(address = %address, storage = %config.storage_path.display(), agents = config.agents.len(), "collector listening");

    let graceful = shutdown.clone();
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(async move { graceful.cancelled().await });
    let server = tokio::spawn(async move { server.await });
    shutdown.cancelled().await;
    info!("shutting down: finishing requests in flight");
    match tokio::time::timeout(config.shutdown_timeout, server).await {
        Ok(result) => result.context("server task")?.context("server")?,
        Err(_) => {
            warn!(timeout = ?config.shutdown_timeout, "requests still in flight at the shutdown deadline");
            state.metrics.error("server", "shutdown_timeout");
        }
    }
    // Every handler is done with the state now; close storage so the writer finishes.
    match Arc::try_unwrap(state) {
        Ok(mut state) => tokio::task::spawn_blocking(move || state.storage.close()).await?,
        Err(state) => {
            warn!(
                "storage still in use at shutdown; queued batches will be retried by their agents"
            );
            state.metrics.error("server", "storage_in_use");
        }
    }
    info!("collector stopped");
    Ok(())
}
