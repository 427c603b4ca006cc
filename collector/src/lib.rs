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

// Panic policy (RELIABILITY.md): with `panic = "abort"`, a panic that outside data can reach
// is a remote kill switch, so this crate, which handles what arrives from the network and
// from files, returns errors instead. Arithmetic is checked or saturating, slices are read
// with `get`, and nothing unwraps; tests may.
#![cfg_attr(
    not(test),
    deny(
        clippy::arithmetic_side_effects,
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]
// The OpenAPI document is one large `serde_json::json!` literal.
#![recursion_limit = "256"]

pub mod api;
pub mod auth;
pub mod clean;
pub mod config;
pub mod export;
pub mod metrics;
pub mod prometheus;
pub mod promql;
pub mod rollup;
pub mod storage;
pub mod tls;
pub mod units;

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tributary_common::lifecycle::{Event, Lifecycle};

use crate::api::AppState;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::storage::Storage;

/// Opens storage and serves on `listener` until `shutdown`; then stops taking requests, lets
/// queued batches commit, and returns. With `config_path`, SIGHUP reloads `[[agents]]` from
/// that file (tokens added or revoked without a restart); a file that does not load is refused
/// and the running configuration stays.
pub async fn serve(
    config: Config,
    config_path: Option<std::path::PathBuf>,
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
    if config.agent_ids.is_empty() {
        warn!("no [[agents]] are configured: every batch will be refused with 401");
        metrics.error("config", "no_agents");
    }
    let state = Arc::new(AppState {
        storage,
        auth: Authenticator::new(config.access()),
        metrics,
        limits: config.ingest_limits(),
        memory: api::memory::IngestMemory::new(config.ingest_memory, config.ingest_wait),
        query_max_points: config.query_max_points,
        resolutions: config.resolutions.clone(),
        limiter: api::limit::RateLimiter::new(config.rate_limit, config.rate_burst),
        fleet: api::fleet::Fleet::new(config.late_after, config.silent_after),
    });
    let app = api::router(Arc::clone(&state));
    let address = listener.local_addr().context("listener address")?;
    info!(address = %address, tls = config.tls.is_some(), mtls = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()), storage = %config.storage_description(), agents = config.agent_ids.len(), "collector listening");

    let exports = export::spawn_all(
        &config.exports,
        &match &config.storage_url {
            Some(url) => storage::feed::FeedStore::Postgres(url.clone()),
            None => storage::feed::FeedStore::Sqlite(config.storage_path.clone()),
        },
        &state.metrics,
        &shutdown,
    );
    let retention = tokio::spawn(retention_loop(
        Arc::clone(&state),
        config.retention_interval,
        shutdown.clone(),
    ));
    let graceful = shutdown.clone();
    let stop = async move { graceful.cancelled().await };
    let tls = match &config.tls {
        Some(files) => Some(Arc::new(
            tls::TlsAcceptor::new(files.clone()).map_err(|e| anyhow::anyhow!("{e}"))?,
        )),
        None => None,
    };
    let server = match &tls {
        Some(acceptor) => {
            let listener =
                tls::TlsListener::new(listener, Arc::clone(acceptor), Arc::clone(&state.metrics))
                    .context("TLS listener")?;
            let server = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<tls::PeerNames>(),
            )
            .with_graceful_shutdown(stop);
            tokio::spawn(async move { server.await })
        }
        None => {
            let server = axum::serve(listener, app).with_graceful_shutdown(stop);
            tokio::spawn(async move { server.await })
        }
    };
    let mut lifecycle = Lifecycle::install(config_path, state.metrics.errors.clone())
        .context("cannot install the SIGHUP handler")?;
    let watched = Arc::clone(&state);
    let probe = move || {
        let state = Arc::clone(&watched);
        async move {
            state.storage.ping().await.ok()?;
            Some(state.metrics.status_line())
        }
    };
    lifecycle.ready(&state.metrics.status_line(), probe, &shutdown);
    while let Event::Reload(path) = lifecycle.next(&shutdown).await {
        reload(&state, &path, tls.as_deref()).await;
        lifecycle.reloaded(&state.metrics.status_line());
    }
    let watchdog = lifecycle.stopping();
    info!("shutting down: finishing requests in flight");
    match tokio::time::timeout(config.shutdown_timeout, server).await {
        Ok(result) => result.context("server task")?.context("server")?,
        Err(_) => {
            warn!(timeout = ?config.shutdown_timeout, "requests still in flight at the shutdown deadline");
            state.metrics.error("server", "shutdown_timeout");
        }
    }
    if let Some(watchdog) = watchdog {
        // It holds the state; it ends at once on shutdown.
        let _ = watchdog.await;
    }
    if let Err(e) = retention.await {
        warn!(error = %e, "the retention task failed");
        state.metrics.error("retention", "task");
    }
    // Exports stop at once on shutdown; a request in flight is sent again after a restart.
    for export in exports {
        let _ = export.await;
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

/// SIGHUP: loads the file again and applies its `[[agents]]`.
async fn reload(state: &AppState, path: &std::path::Path, tls: Option<&tls::TlsAcceptor>) {
    if let Some(tls) = tls {
        // A renewed certificate needs no restart; the files are the ones the collector
        // started with.
        match tls.reload() {
            Ok(()) => info!("TLS certificate reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate not reloaded; the running one stays");
                state.metrics.error("tls", "reload");
            }
        }
    }
    match tributary_common::config::reload_file::<config::RawConfig>(path).await {
        Ok(config) => {
            let (agents, readers) = (config.agent_ids.len(), config.reader_tokens.len());
            state.auth.replace(config.access());
            state.limiter.retain(|client| match client {
                api::limit::Client::Token(hash) => state.auth.is_configured(hash),
                api::limit::Client::Certificate(agent) => state.auth.agent_ids().contains(agent),
            });
            state.metrics.reloads.inc();
            info!(
                agents,
                readers,
                "configuration reloaded: [[agents]], [[readers]] and server.anonymous_read applied (other changes take effect at the next start)"
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "reload refused; the running configuration stays");
            state.metrics.error("config", "reload_invalid");
        }
    }
}

/// Every `interval` (the first after one interval), deletes what is past its retention, in
/// bounded passes that let ingest run between them.
async fn retention_loop(
    state: Arc<AppState>,
    interval: std::time::Duration,
    shutdown: CancellationToken,
) {
    let first = tokio::time::Instant::now()
        .checked_add(interval)
        .unwrap_or_else(tokio::time::Instant::now);
    let mut ticks = tokio::time::interval_at(first, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        // Bounded: a pass deletes at most a fixed number of rows, and a run at most 10,000
        // passes; what is left waits for the next interval.
        for _ in 0..10_000 {
            if shutdown.is_cancelled() {
                return;
            }
            match state.storage.retain(tributary_wire::time::now_ns()).await {
                Ok(report) => {
                    let count = |kind: &str, n: u64| {
                        state
                            .metrics
                            .retention_deleted
                            .get_or_create(&crate::metrics::ReasonLabels {
                                reason: kind.to_owned(),
                            })
                            .inc_by(n);
                    };
                    count("points", report.points);
                    count("windows", report.windows);
                    count("quarantine", report.quarantined);
                    if !report.more {
                        break;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "retention pass failed; trying again next interval");
                    state.metrics.error("retention", "pass");
                    break;
                }
            }
        }
    }
}
