//! `POST /api/v1/batches`: an agent's batch, stored exactly once.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use tributary_wire::codec::{self, DecodeError, Encoding};
use tributary_wire::decode::{DecodeLimits, decode_batch_limited};
use tributary_wire::{Batch, BatchAck, TimeAnswer};

use super::memory::MemoryPermit;
use super::{ApiError, AppState};
use crate::auth::WriteRefusal;
use crate::storage::{Origin, Reservation, Stored, SubmitError, WriteJob};
use crate::tls::PeerNames;

const ENDPOINT: &str = "batches";

pub async fn post_batch(
    State(state): State<Arc<AppState>>,
    peer: PeerNames,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let received_at = tributary_wire::time::now_ns();
    let result = ingest(&state, &headers, &peer, body, received_at).await;
    let response = match result {
        Ok(mut ack) => {
            ack.received_at = Some(received_at);
            ack.replied_at = Some(tributary_wire::time::now_ns());
            axum::Json(ack).into_response()
        }
        Err(error) => state.fail(ENDPOINT, error).into_response(),
    };
    state.metrics.batch_status(response.status().as_u16());
    response
}

/// `GET /api/v1/time`: the collector's clock, so an agent can estimate its offset (see
/// `tributary_wire::ClockEstimate`) before its first batch. Open: it tells nothing but the
/// time.
pub async fn get_time() -> axum::Json<TimeAnswer> {
    let received_at = tributary_wire::time::now_ns();
    axum::Json(TimeAnswer {
        received_at,
        replied_at: tributary_wire::time::now_ns(),
    })
}

/// The 401 body for a token no one was given (ingest and reads alike).
pub(super) const UNKNOWN_TOKEN: &str = "the bearer token is not known";
/// The 401 body without an `Authorization` header (ingest and reads alike).
pub(super) const MISSING_TOKEN: &str = "missing Authorization: Bearer <token>";

/// The agent id the request comes from, by its token or its mTLS client certificate
/// ([`crate::auth::Authenticator::writer`]); `missing` says how to authenticate when there is
/// neither. A reader's token is refused with 403: readers read, agents write.
pub(super) fn authenticate(
    state: &AppState,
    authorization: Option<&str>,
    peer: &PeerNames,
    unknown: &str,
    missing: &str,
) -> Result<String, ApiError> {
    state
        .auth
        .writer(authorization, peer)
        .map_err(|refusal| match refusal {
            WriteRefusal::Missing => ApiError::Unauthorized(missing.to_owned()),
            WriteRefusal::Unknown => ApiError::Unauthorized(unknown.to_owned()),
            WriteRefusal::ReaderToken(reader) => ApiError::Forbidden(format!(
                "the token of reader {reader:?} may read, not write: use an agent's token ([[agents]])"
            )),
            WriteRefusal::CertificateMismatch { certificate, token } => {
                ApiError::Forbidden(format!(
                    "the client certificate names agent {certificate:?} but the token is agent {token:?}'s: send that agent's token, or none and let the certificate name the agent"
                ))
            }
        })
}

/// Reads the request body within `server.max_body_size` and `server.body_timeout`, after
/// reserving memory for it: its `Content-Length`, or the limit when it has none. Call it only
/// after authenticating, so nobody without a token makes the collector hold a body.
pub(super) async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, MemoryPermit), ApiError> {
    let limit = state.limits.max_body_size;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let expected = match declared {
        Some(length) if length > limit as u64 => {
            return Err(ApiError::TooLarge(format!(
                "the request body ({length} bytes) exceeds server.max_body_size ({limit} bytes)"
            )));
        }
        Some(length) => usize::try_from(length).unwrap_or(limit),
        None => limit,
    };
    let mut permit = state.memory.reserve(expected).await?;
    let collect = http_body_util::Limited::new(body, limit).collect();
    let body = match tokio::time::timeout(state.limits.body_timeout, collect).await {
        Err(_) => {
            return Err(ApiError::Timeout(format!(
                "the request body did not arrive within server.body_timeout ({:?})",
                state.limits.body_timeout
            )));
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::TooLarge(format!(
                "the request body exceeds server.max_body_size ({limit} bytes)"
            )));
        }
        Ok(Err(e)) => {
            return Err(ApiError::BadRequest(format!(
                "cannot read the request body: {e}"
            )));
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    permit.shrink_to(body.len());
    state.metrics.bytes_received.inc_by(body.len() as u64);
    Ok((body, permit))
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> ApiError {
        match e {
            DecodeError::TooLarge { .. }
            | DecodeError::TooManyPoints { .. }
            | DecodeError::DecodedTooLarge { .. } => ApiError::TooLarge(e.to_string()),
            DecodeError::UnsupportedContentEncoding(_) | DecodeError::UnsupportedContentType(_) => {
                ApiError::UnsupportedMediaType(e.to_string())
            }
            DecodeError::Decompress(_) | DecodeError::Malformed(_) => {
                ApiError::BadRequest(e.to_string())
            }
        }
    }
}

/// Reserves what decoding a body may take (room for its decompressed form if it is
/// compressed, and for the decoded batch) and a place in the writer's queue, then runs
/// `decode` on the blocking pool (it takes CPU time). What `decode` returns says how large
/// its result is; the reservation shrinks to that and comes back with it.
pub(super) async fn decode_within_budget<T: Send + 'static>(
    state: &AppState,
    compressed: bool,
    mut held: MemoryPermit,
    decode: impl FnOnce(DecodeLimits) -> Result<(T, usize), DecodeError> + Send + 'static,
) -> Result<(T, MemoryPermit, Reservation), ApiError> {
    let limits = &state.limits;
    let room = limits.max_decoded_size.saturating_add(if compressed {
        limits.max_decompressed_size
    } else {
        0
    });
    held.merge(state.memory.reserve(room).await?);
    let reservation = reserve(state).await?;
    let decode_limits = DecodeLimits {
        max_points: limits.max_batch_points,
        max_bytes: limits.max_decoded_size,
    };
    let (value, size) = tokio::task::spawn_blocking(move || decode(decode_limits))
        .await
        .map_err(|e| ApiError::Internal(format!("decode task failed: {e}")))??;
    // The body and its decompressed copy were dropped with the task.
    held.shrink_to(size);
    Ok((value, held, reservation))
}

/// Queues `batch` in the room held and waits for the commit that stores it.
pub(super) async fn store(
    reservation: Reservation,
    agent_id: String,
    batch: Batch,
    received_at: i64,
    origin: Origin,
    memory: MemoryPermit,
) -> Result<Stored, ApiError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    reservation.submit(WriteJob {
        agent_id,
        batch,
        received_at,
        origin,
        reply,
        memory: Some(memory.into_inner()),
    });
    let what = match origin {
        Origin::Agent => "batch",
        Origin::LineProtocol | Origin::RemoteWrite => "write",
    };
    answer
        .await
        .map_err(|_| ApiError::Unavailable("the storage writer stopped".into()))?
        .map_err(|e| ApiError::Unavailable(format!("storing the {what} failed: {e}")))
}

/// Notes for the fleet view that `agent_id`'s request stored `points`, and the client its
/// `User-Agent` names.
pub(super) fn note_activity(state: &AppState, agent_id: &str, points: u64, headers: &HeaderMap) {
    let client = headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    state
        .fleet
        .record(agent_id, points, client, tributary_wire::time::now_ns());
}

/// Waits (up to `server.ingest_wait`) for room in the writer's queue.
pub(super) async fn reserve(state: &AppState) -> Result<Reservation, ApiError> {
    state
        .storage
        .reserve(state.limits.ingest_wait)
        .await
        .map_err(|e| match e {
            SubmitError::Busy => ApiError::Busy,
            SubmitError::Closed => ApiError::Unavailable("the collector is shutting down".into()),
        })
}

async fn ingest(
    state: &AppState,
    headers: &HeaderMap,
    peer: &PeerNames,
    body: Body,
    received_at: i64,
) -> Result<BatchAck, ApiError> {
    let agent_id = authenticate(
        state,
        super::authorization(headers),
        peer,
        UNKNOWN_TOKEN,
        MISSING_TOKEN,
    )?;
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let content_type = header(CONTENT_TYPE).unwrap_or(codec::CONTENT_TYPE_JSON);
    let encoding = Encoding::from_content_type(content_type)
        .ok_or_else(|| DecodeError::UnsupportedContentType(content_type.into()))?;
    let content_encoding = header(CONTENT_ENCODING).map(str::to_owned);
    let compressed = codec::is_compressed(content_encoding.as_deref());
    let (body, held) = read_body(state, headers, body).await?;
    let limit = state.limits.max_decompressed_size;
    let (batch, memory, reservation) =
        decode_within_budget(state, compressed, held, move |limits| {
            let raw = codec::decompress_limited(&body, content_encoding.as_deref(), limit)?;
            let decoded = decode_batch_limited(&raw, encoding, limits)?;
            Ok((decoded.batch, decoded.size))
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
    let stored = store(
        reservation,
        agent_id.clone(),
        batch,
        received_at,
        Origin::Agent,
        memory,
    )
    .await?;
    note_activity(state, &agent_id, stored.ack.stored, headers);
    Ok(stored.ack)
}
