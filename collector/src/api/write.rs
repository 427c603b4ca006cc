//! `POST /api/v2/write`: InfluxDB line protocol, so Telegraf and other existing agents can
//! send here. Same token as an agent (`Authorization: Bearer …` or InfluxDB's `Token …`), same
//! cleaning and storage.
//!
//! Parameters: `precision` = `ns` (default), `us`, `ms` or `s`; InfluxDB's `org` and `bucket`
//! are accepted and ignored (one store). The body may be gzip or zstd compressed.
//!
//! Partial success: every line that parses is stored; if any did not, the answer is 400 with
//! each bad line's number and error (and those lines are in the quarantine), like InfluxDB's
//! partial write. All good: 204. Line protocol has no sequence numbers, so a client that
//! retries a write it already sent stores it again (at-least-once, as with InfluxDB).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::header::CONTENT_ENCODING;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tributary_wire::codec::{self, DecodeError};
use tributary_wire::line_protocol::{self, Precision};
use tributary_wire::{AgentStatus, Batch, Reject};

use super::ingest::{authenticate, decode_off_executor, received_body, reserve, store};
use super::{ApiError, AppState};
use crate::storage::Origin;

const ENDPOINT: &str = "write";

/// The 400 answer of a partial write.
#[derive(Debug, Serialize)]
struct PartialWrite {
    code: &'static str,
    message: String,
    /// Points stored from the good lines.
    stored: u64,
    rejected: Vec<RejectedLine>,
}

#[derive(Debug, Serialize)]
struct RejectedLine {
    line: usize,
    error: String,
}

pub async fn post_write(
    State(state): State<Arc<AppState>>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match write(&state, params, &headers, body).await {
        Ok(response) => response,
        Err(error) => state.fail(ENDPOINT, error).into_response(),
    }
}

async fn write(
    state: &AppState,
    params: Vec<(String, String)>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let agent_id = authenticate(
        state,
        headers,
        "the token is not known",
        "missing Authorization: Token <token> (or Bearer <token>)",
    )?;
    let mut precision = Precision::Nanoseconds;
    for (key, value) in params {
        match key.as_str() {
            "precision" => {
                precision = Precision::parse(&value).ok_or_else(|| {
                    ApiError::BadRequest(format!("precision: {value:?} is not ns, us, ms or s"))
                })?;
            }
            "org" | "bucket" | "orgID" | "db" | "rp" => {}
            other => return Err(ApiError::BadRequest(format!("unknown parameter {other:?}"))),
        }
    }
    let body = received_body(state, body)?;
    let content_encoding = headers
        .get(CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let limit = state.max_decompressed_size;
    let received_at = tributary_wire::time::now_ns();

    let reservation = reserve(state).await?;
    let (batch, rejected, lines) = decode_off_executor(move || {
        let raw = codec::decompress_limited(&body, content_encoding.as_deref(), limit)?;
        let text = String::from_utf8(raw).map_err(|e| {
            DecodeError::Malformed(format!("the body is not UTF-8 text ({})", e.utf8_error()))
        })?;
        Ok(to_batch(&agent_id, &text, precision, received_at))
    })
    .await?;
    state.metrics.lines_received.inc_by(lines as u64);
    state
        .metrics
        .points_received
        .inc_by(batch.points.len() as u64);
    if batch.points.is_empty() && batch.rejects.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }

    let agent_id = batch.agent_id.clone();
    let ack = store(
        reservation,
        agent_id,
        batch,
        received_at,
        Origin::LineProtocol,
    )
    .await?;
    if rejected.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let body = PartialWrite {
        code: "invalid",
        message: format!(
            "partial write: {} of {lines} lines rejected (kept in the quarantine); the others are stored",
            rejected.len()
        ),
        stored: ack.stored,
        rejected,
    };
    Ok((StatusCode::BAD_REQUEST, axum::Json(body)).into_response())
}

/// Parses the text: good lines become the batch's points, bad ones its rejects (quarantined)
/// and the list the client is told about. Returns the batch, that list and the line count.
fn to_batch(
    agent_id: &str,
    text: &str,
    precision: Precision,
    received_at: i64,
) -> (Batch, Vec<RejectedLine>, usize) {
    let mut batch = Batch {
        agent_id: agent_id.to_owned(),
        epoch: String::new(),
        first_seq: 0,
        last_seq: 0,
        dropped: 0,
        sent_at: received_at,
        status: AgentStatus::default(),
        points: Vec::new(),
        rejects: Vec::new(),
    };
    let mut rejected = Vec::new();
    let mut lines = 0;
    for parsed in line_protocol::parse(text, precision, received_at) {
        lines += 1;
        match parsed {
            Ok(point) => batch.points.push(point),
            Err(error) => {
                batch.rejects.push(Reject {
                    id: error.line as u64,
                    received_at,
                    source: "line_protocol".into(),
                    topic: format!("line {}", error.line),
                    payload: error.text.into_bytes(),
                    reason: error.reason.clone(),
                });
                rejected.push(RejectedLine {
                    line: error.line,
                    error: error.reason,
                });
            }
        }
    }
    (batch, rejected, lines)
}

#[cfg(test)]
mod tests {
    use tributary_wire::FieldValue;

    use super::*;

    #[test]
    fn good_lines_become_points_and_bad_ones_are_listed() {
        let text = "cpu,host=a usage=0.5 1700000000\n\ncpu,host=b usage= 1700000000\n# a comment\nmem free=3i 1700000001\n";
        let (batch, rejected, lines) = to_batch("t1", text, Precision::Seconds, 7);
        assert_eq!(lines, 3);
        assert_eq!(batch.points.len(), 2);
        assert_eq!(batch.points[0].ts, 1_700_000_000_000_000_000);
        assert_eq!(batch.points[1].fields["free"], FieldValue::I64(3));
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].line, 3);
        assert_eq!(batch.rejects[0].payload, b"cpu,host=b usage= 1700000000");
    }
}
