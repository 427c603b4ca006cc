//! `POST /api/v1/batches`: an agent's batch, stored exactly once.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use tributary_wire::codec::{self, DecodeError, Encoding};

use tributary_wire::{Batch, BatchAck};

use super::{ApiError, AppState};
use crate::storage::{Origin, Reservation, SubmitError, WriteJob};

const ENDPOINT: &str = "batches";

pub async fn post_batch(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = ingest(&state, &headers, body).await;
    let response = match result {
        Ok(ack) => axum::Json(ack).into_response(),
        Err(error) => state.fail(ENDPOINT, error).into_response(),
    };
    state.metrics.batch_status(response.status().as_u16());
    response
}

/// The agent id the request's token belongs to; `missing` says how to authenticate when the
/// header is absent.
pub(super) fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    unknown: &str,
    missing: &str,
) -> Result<String, ApiError> {
    let authorization = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    state.auth.agent_for(authorization).ok_or_else(|| {
        ApiError::Unauthorized(if authorization.is_some() {
            unknown.to_owned()
        } else {
            missing.to_owned()
        })
    })
}

/// The request body as received (413 past `server.max_body_size`), counted.
pub(super) fn received_body(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    let body = body.map_err(|rejection| match rejection {
        BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
            ApiError::TooLarge("request body exceeds server.max_body_size".into())
        }
        other => ApiError::BadRequest(format!("cannot read the request body: {other}")),
    })?;
    state.metrics.bytes_received.inc_by(body.len() as u64);
    Ok(body)
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> ApiError {
        match e {
            DecodeError::TooLarge { .. } => ApiError::TooLarge(e.to_string()),
            DecodeError::UnsupportedContentEncoding(_) | DecodeError::UnsupportedContentType(_) => {
                ApiError::UnsupportedMediaType(e.to_string())
            }
            DecodeError::Decompress(_) | DecodeError::Malformed(_) => {
                ApiError::BadRequest(e.to_string())
            }
        }
    }
}

/// Runs decompression and decoding on the blocking pool: they take CPU time.
pub(super) async fn decode_off_executor<T: Send + 'static>(
    decode: impl FnOnce() -> Result<T, DecodeError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(tokio::task::spawn_blocking(decode)
        .await
        .map_err(|e| ApiError::Internal(format!("decode task failed: {e}")))??)
}

/// Queues `batch` in the room held and waits for the commit that stores it.
pub(super) async fn store(
    reservation: Reservation,
    agent_id: String,
    batch: Batch,
    received_at: i64,
    origin: Origin,
) -> Result<BatchAck, ApiError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    reservation.submit(WriteJob {
        agent_id,
        batch,
        received_at,
        origin,
        reply,
    });
    let what = match origin {
        Origin::Agent => "batch",
        Origin::LineProtocol => "write",
    };
    answer
        .await
        .map_err(|_| ApiError::Unavailable("the storage writer stopped".into()))?
        .map_err(|e| ApiError::Unavailable(format!("storing the {what} failed: {e}")))
}

/// Waits (up to `server.ingest_wait`) for room in the writer's queue.
pub(super) async fn reserve(state: &AppState) -> Result<Reservation, ApiError> {
    state
        .storage
        .reserve(state.ingest_wait)
        .await
        .map_err(|e| match e {
            SubmitError::Busy => ApiError::Busy,
            SubmitError::Closed => ApiError::Unavailable("the collector is shutting down".into()),
        })
}

async fn ingest(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<BatchAck, ApiError> {
    let agent_id = authenticate(
        state,
        headers,
        "the bearer token is not known",
        "missing Authorization: Bearer <token>",
    )?;
    let body = received_body(state, body)?;
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let content_type = header(CONTENT_TYPE).unwrap_or(codec::CONTENT_TYPE_JSON);
    let encoding = Encoding::from_content_type(content_type)
        .ok_or_else(|| DecodeError::UnsupportedContentType(content_type.into()))?;
    let content_encoding = header(CONTENT_ENCODING).map(str::to_owned);
    let limit = state.max_decompressed_size;

    // Room in the writer's queue first, so decoded batches never pile up in memory.
    let reservation = reserve(state).await?;
    let batch = decode_off_executor(move || {
        let raw = codec::decompress_limited(&body, content_encoding.as_deref(), limit)?;
        codec::decode_batch(&raw, encoding)
    })
    .await?;

    state
        .metrics
        .points_received
        .inc_by(batch.points.len() as u64);
    if batch.agent_id != agent_id {
        return Err(ApiError::Forbidden(format!(
            "the token belongs to agent {agent_id:?}, but the batch says it comes from {:?}",
            batch.agent_id
        )));
    }
    let received_at = tributary_wire::time::now_ns();
    store(reservation, agent_id, batch, received_at, Origin::Agent).await
}
