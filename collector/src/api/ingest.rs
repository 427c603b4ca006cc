//! `POST /api/v1/batches`: an agent's batch, stored exactly once.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use tributary_wire::codec::{self, DecodeError, Encoding};

use super::{ApiError, AppState};
use crate::storage::{Origin, SubmitError, WriteJob};

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

/// Waits (up to `server.ingest_wait`) for room in the writer's queue.
pub(super) async fn reserve(state: &AppState) -> Result<crate::storage::Reservation, ApiError> {
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
) -> Result<tributary_wire::BatchAck, ApiError> {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let agent_id = state
        .auth
        .agent_for(header(AUTHORIZATION))
        .ok_or_else(|| {
            ApiError::Unauthorized(if header(AUTHORIZATION).is_some() {
                "the bearer token is not known".into()
            } else {
                "missing Authorization: Bearer <token>".into()
            })
        })?
        .to_owned();

    let body = body.map_err(|rejection| match rejection {
        BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
            ApiError::TooLarge("request body exceeds server.max_body_size".into())
        }
        other => ApiError::BadRequest(format!("cannot read the request body: {other}")),
    })?;
    state.metrics.bytes_received.inc_by(body.len() as u64);

    let content_type = header(CONTENT_TYPE).unwrap_or(codec::CONTENT_TYPE_JSON);
    let encoding = Encoding::from_content_type(content_type).ok_or_else(|| {
        ApiError::UnsupportedMediaType(
            DecodeError::UnsupportedContentType(content_type.into()).to_string(),
        )
    })?;
    let content_encoding = header(CONTENT_ENCODING).map(str::to_owned);
    let limit = state.max_decompressed_size;

    // Room in the writer's queue first, so decoded batches never pile up in memory.
    let reservation = reserve(state).await?;
    // Decompressing and decoding take CPU time: off the executor.
    let batch = tokio::task::spawn_blocking(move || {
        let raw = codec::decompress_limited(&body, content_encoding.as_deref(), limit)?;
        codec::decode_batch(&raw, encoding)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("decode task failed: {e}")))?
    .map_err(|e| match e {
        DecodeError::TooLarge { .. } => ApiError::TooLarge(e.to_string()),
        DecodeError::UnsupportedContentEncoding(_) | DecodeError::UnsupportedContentType(_) => {
            ApiError::UnsupportedMediaType(e.to_string())
        }
        DecodeError::Decompress(_) | DecodeError::Malformed(_) => {
            ApiError::BadRequest(e.to_string())
        }
    })?;

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

    let (reply, answer) = tokio::sync::oneshot::channel();
    let job = WriteJob {
        agent_id,
        batch,
        received_at: tributary_wire::time::now_ns(),
        origin: Origin::Agent,
        reply,
    };
    reservation.submit(job);
    answer
        .await
        .map_err(|_| ApiError::Unavailable("the storage writer stopped".into()))?
        .map_err(|e| ApiError::Unavailable(format!("storing the batch failed: {e}")))
}
