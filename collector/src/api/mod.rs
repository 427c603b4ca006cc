//! The HTTP API. Handlers live in one module per concern; [`ApiError`] maps every failure to
//! its status code in one place, with a JSON body `{"error": "..."}`.

mod agents;
mod console;
pub mod fleet;
mod ingest;
pub mod limit;
mod listings;
pub mod memory;
pub mod openapi;
mod prometheus;
mod query;
pub mod remote_write;
mod write;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header::{CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use tracing::{error, warn};
use tributary_wire::ErrorBody;

use crate::auth::Authenticator;
use crate::metrics::Metrics;
use crate::storage::Storage;

/// What handlers share.
pub struct AppState {
    pub storage: Storage,
    pub auth: Authenticator,
    pub metrics: Arc<Metrics>,
    pub limits: IngestLimits,
    /// What ingest requests may hold in memory at once.
    pub memory: memory::IngestMemory,
    pub query_max_points: usize,
    /// Rollup resolutions, finest first (queries pick one).
    pub resolutions: Vec<crate::rollup::Resolution>,
    /// Requests per token ([`limit`]).
    pub limiter: limit::RateLimiter,
    /// Agents' liveness thresholds and activity ([`fleet`]).
    pub fleet: fleet::Fleet,
}

/// What one ingest request may send and become (`[server]`).
#[derive(Debug, Clone)]
pub struct IngestLimits {
    pub max_body_size: usize,
    pub max_decompressed_size: usize,
    pub max_decoded_size: usize,
    pub max_batch_points: usize,
    /// How long the body may take to arrive.
    pub body_timeout: std::time::Duration,
    /// How long ingest waits for memory or room in the writer's queue before answering 429.
    pub ingest_wait: std::time::Duration,
}

/// Every endpoint: method, path and handler. The router is built from this table, and the
/// OpenAPI test checks the document against it and each entry against the router.
/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// An agent's token; the handler authenticates (ingest, and the agents' clock probe).
    Write,
    /// A reader's token, unless `server.anonymous_read` (checked before the handler).
    Read,
    /// Anyone: `/healthz` for load balancers, `/metrics` for Prometheus, `/api/v1/time` (it
    /// tells nothing but the time).
    Open,
}

fn endpoints() -> Vec<(
    &'static str,
    &'static str,
    Gate,
    MethodRouter<Arc<AppState>>,
)> {
    vec![
        (
            "post",
            "/api/v1/batches",
            Gate::Write,
            post(ingest::post_batch),
        ),
        (
            "post",
            "/api/v2/write",
            Gate::Write,
            post(write::post_write),
        ),
        (
            "post",
            "/prometheus/api/v1/write",
            Gate::Write,
            post(remote_write::post_remote_write),
        ),
        ("post", "/write", Gate::Write, post(write::post_write_v1)),
        (
            "get",
            "/prometheus/api/v1/query",
            Gate::Read,
            get(prometheus::query).post(prometheus::query),
        ),
        (
            "get",
            "/prometheus/api/v1/query_range",
            Gate::Read,
            get(prometheus::query_range).post(prometheus::query_range),
        ),
        (
            "get",
            "/prometheus/api/v1/series",
            Gate::Read,
            get(prometheus::series).post(prometheus::series),
        ),
        (
            "get",
            "/prometheus/api/v1/labels",
            Gate::Read,
            get(prometheus::labels).post(prometheus::labels),
        ),
        (
            "get",
            "/prometheus/api/v1/label/{name}/values",
            Gate::Read,
            get(prometheus::label_values),
        ),
        (
            "get",
            "/prometheus/api/v1/metadata",
            Gate::Read,
            get(prometheus::metadata),
        ),
        (
            "get",
            "/prometheus/api/v1/status/buildinfo",
            Gate::Read,
            get(prometheus::buildinfo),
        ),
        (
            "get",
            "/prometheus/api/v1/format_query",
            Gate::Read,
            get(prometheus::format_query).post(prometheus::format_query),
        ),
        ("post", "/query", Gate::Write, post(write::post_query_v1)),
        ("get", "/ping", Gate::Open, get(write::get_ping)),
        ("get", "/api/v1/time", Gate::Open, get(ingest::get_time)),
        ("get", "/api/v1/query", Gate::Read, get(query::get_query)),
        (
            "get",
            "/api/v1/series",
            Gate::Read,
            get(listings::get_series),
        ),
        (
            "get",
            "/api/v1/quarantine",
            Gate::Read,
            get(listings::get_quarantine),
        ),
        ("get", "/api/v1/agents", Gate::Read, get(agents::get_agents)),
        (
            "get",
            "/api/v1/openapi.json",
            Gate::Read,
            get(openapi::get_openapi),
        ),
        ("get", "/", Gate::Open, get(console::get_index)),
        (
            "get",
            "/console/{file}",
            Gate::Open,
            get(console::get_asset),
        ),
        ("get", "/healthz", Gate::Open, get(healthz)),
        ("get", "/metrics", Gate::Open, get(metrics)),
    ]
}

/// Every (method, path) the router serves, with who may call it.
pub fn routes() -> Vec<(&'static str, &'static str, Gate)> {
    endpoints()
        .into_iter()
        .map(|(method, path, gate, _)| (method, path, gate))
        .collect()
}

/// The router with every endpoint (each documented in [`openapi`]). Ingest reads its bodies
/// itself, within [`IngestLimits`] and the memory budget; reads pass the reader check (`require_reader`) first.
pub fn router(state: Arc<AppState>) -> Router {
    endpoints()
        .into_iter()
        .fold(Router::new(), |router, (_, path, gate, handler)| {
            let reader =
                || axum::middleware::from_fn_with_state(Arc::clone(&state), require_reader);
            let limit = || axum::middleware::from_fn_with_state(Arc::clone(&state), rate_limit);
            // The layer added last runs first: a client over its limit is turned away before
            // anything else.
            let handler = match gate {
                Gate::Read => handler.route_layer(reader()).route_layer(limit()),
                Gate::Write => handler.route_layer(limit()),
                Gate::Open => handler,
            };
            router.route(path, handler)
        })
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            observe_request,
        ))
        .with_state(state)
}

/// The `Authorization` header's value, if it is text.
pub(super) fn authorization(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// Takes the request from its token's bucket ([`limit`]): 429 with `Retry-After` when empty.
async fn rate_limit(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let authorization = authorization(request.headers());
    let key = match state.auth.known(authorization) {
        Some(hash) => Some(limit::Client::Token(hash)),
        None if authorization.is_none() => state
            .auth
            .agent_by_certificate(&crate::tls::PeerNames::of_request(request.extensions()))
            .map(limit::Client::Certificate),
        None => None,
    };
    match state.limiter.take(key, std::time::Instant::now()) {
        Ok(()) => next.run(request).await,
        Err(wait) => state
            .fail("rate_limit", ApiError::RateLimited(wait))
            .into_response(),
    }
}

/// Lets a read through with a reader's token (or any, under `server.anonymous_read`): 401
/// without a token or with an unknown one, 403 with an agent's (agents write, they do not
/// read). The bodies are ingest's.
async fn require_reader(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let authorization = authorization(request.headers());
    match state.auth.check_read(authorization) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            let error = match refusal {
                crate::auth::ReadRefusal::Missing => {
                    ApiError::Unauthorized(ingest::MISSING_TOKEN.into())
                }
                crate::auth::ReadRefusal::Unknown => {
                    ApiError::Unauthorized(ingest::UNKNOWN_TOKEN.into())
                }
                crate::auth::ReadRefusal::AgentToken(agent) => ApiError::Forbidden(format!(
                    "the token of agent {agent:?} may write, not read: use a reader's token ([[readers]])"
                )),
            };
            state.fail("read", error).into_response()
        }
    }
}

/// Times every request into `request_seconds{route, method, status}`.
async fn observe_request(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .requests
        .get_or_create(&crate::metrics::RequestLabels {
            route,
            method,
            status: response.status().as_u16().to_string(),
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the ingest queue is full; retry shortly")]
    Busy,
    #[error("too many requests with this token (server.rate_limit); retry after {0:?}")]
    RateLimited(std::time::Duration),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    NotImplemented(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Busy | ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short name for the error counter.
    fn kind(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::TooLarge(_) => "too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Busy => "busy",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::Timeout(_) => "timeout",
            ApiError::NotImplemented(_) => "not_implemented",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl AppState {
    /// Logs and counts a failure on its way to the client.
    pub fn fail(&self, endpoint: &str, error: ApiError) -> ApiError {
        if error.status().is_server_error() {
            error!(endpoint, status = error.status().as_u16(), error = %error, "request failed");
        } else {
            warn!(endpoint, status = error.status().as_u16(), error = %error, "request refused");
        }
        self.metrics.error(endpoint, error.kind());
        error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (
            status,
            axum::Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response();
        let headers = response.headers_mut();
        match self {
            ApiError::Unauthorized(_) => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Busy | ApiError::Unavailable(_) => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::RateLimited(wait) => {
                // Whole seconds, rounded up: at least 1.
                let seconds = wait
                    .as_secs()
                    .saturating_add(u64::from(wait.subsec_nanos() > 0));
                headers.insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
            }
            // The body may be left unread (refused by its declared length, or too slow):
            // the connection cannot carry another request.
            ApiError::TooLarge(_) | ApiError::Timeout(_) => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

/// 200 while the store answers reads and its writer can commit; 503 with the reason while it
/// cannot (a full disk, I/O errors), so a load balancer or supervisor sees what ingest sees.
async fn healthz(State(state): State<Arc<AppState>>) -> Result<impl IntoResponse, ApiError> {
    state
        .storage
        .ping_reads()
        .await
        .map_err(|e| state.fail("healthz", ApiError::Unavailable(e.to_string())))?;
    if let Some((reason, since)) = state.storage.health().failure() {
        return Err(state.fail(
            "healthz",
            ApiError::Unavailable(format!(
                "storage cannot commit since {}: {reason}",
                tributary_wire::time::format_rfc3339(since)
            )),
        ));
    }
    Ok(axum::Json(serde_json::json!({ "status": "ok" })))
}

/// The collector's own figures, then what each agent last reported (from the store).
async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let mut text = state.metrics.render();
    match state.storage.agents().await {
        Ok(agents) => {
            text = crate::metrics::with_agent_health(text, &agents, tributary_wire::time::now_ns());
        }
        Err(e) => {
            warn!(error = %e, "cannot read the agents' health for /metrics");
            state.metrics.error("metrics", "agents");
        }
    }
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
}
