//! `POST /api/v2/write`: InfluxDB line protocol, so Telegraf and other existing agents can
//! send here. Same token as an agent (`Authorization: Bearer …` or InfluxDB's `Token …`), same
//! cleaning and storage.
//!
//! Parameters: `precision` = `ns` (default), `us`, `ms` or `s`; InfluxDB's `org` and `bucket`
//! are accepted and ignored (one store). The body may be gzip or zstd compressed.
//!
//! Partial success: every line that parses and passes the collector's checks is stored. If any
//! line did not parse (a line that is not UTF-8 included), or a point was quarantined by time
//! sanity or a cleaning rule, the answer is 400 listing each such line's number and reason
//! (all of them are kept in the quarantine), like InfluxDB's partial write; Telegraf does not
//! retry a 400, and nothing would be gained by it. All stored: 204. Too many lines
//! (`server.max_batch_points`) or too much once parsed (`server.max_decoded_size`): 413 and
//! nothing stored, so the client can split the write. Line protocol has no sequence numbers,
//! so a client that retries a write it already sent stores it again (at-least-once, as with
//! InfluxDB).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header::CONTENT_ENCODING;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tributary_wire::codec::{self, DecodeError};
use tributary_wire::decode::{DecodeLimits, point_size};
use tributary_wire::line_protocol::{self, Precision};
use tributary_wire::{AgentStatus, Batch, Reject};

use super::ingest::{authenticate, decode_within_budget, read_body, store};
use super::{ApiError, AppState};
use crate::storage::Origin;
use crate::tls::PeerNames;

const ENDPOINT: &str = "write";

/// The 400 answer of a partial write.
#[derive(Debug, Serialize)]
struct PartialWrite {
    code: &'static str,
    message: String,
    /// Points stored from the good lines.
    stored: u64,
    /// Points of good lines that the collector's checks (time sanity, cleaning rules) sent
    /// to the quarantine; each is listed in `rejected` with its reason.
    quarantined: u64,
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
    peer: PeerNames,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match write(&state, params, &headers, &peer, body).await {
        Ok(response) => response,
        Err(error) => state.fail(ENDPOINT, error).into_response(),
    }
}

async fn write(
    state: &AppState,
    params: Vec<(String, String)>,
    headers: &HeaderMap,
    peer: &PeerNames,
    body: Body,
) -> Result<Response, ApiError> {
    let agent_id = authenticate(
        state,
        headers,
        peer,
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
    let content_encoding = headers
        .get(CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let compressed = codec::is_compressed(content_encoding.as_deref());
    let (body, held) = read_body(state, headers, body).await?;
    let limit = state.limits.max_decompressed_size;
    let received_at = tributary_wire::time::now_ns();
    let (parsed, memory, reservation) =
        decode_within_budget(state, compressed, held, move |limits| {
            let raw = codec::decompress_limited(&body, content_encoding.as_deref(), limit)?;
            to_batch(&agent_id, &raw, precision, received_at, limits)
        })
        .await?;
    let Parsed {
        batch,
        mut rejected,
        lines,
        point_lines,
    } = parsed;
    state.metrics.lines_received.inc_by(lines as u64);
    state
        .metrics
        .points_received
        .inc_by(batch.points.len() as u64);
    if batch.points.is_empty() && batch.rejects.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }

    let agent_id = batch.agent_id.clone();
    let stored = store(
        reservation,
        agent_id,
        batch,
        received_at,
        Origin::LineProtocol,
        memory,
    )
    .await?;
    let quarantined = stored.ack.quarantined;
    for (index, reason) in stored.quarantined {
        rejected.push(RejectedLine {
            line: point_lines.get(index).copied().unwrap_or_default(),
            error: format!("quarantined: {reason}"),
        });
    }
    rejected.sort_by_key(|r| r.line);
    if rejected.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let refused = rejected.len().saturating_sub(quarantined as usize);
    let body = PartialWrite {
        code: "invalid",
        message: format!(
            "partial write: {refused} of {lines} lines did not parse and {quarantined} points were quarantined by the collector's checks (all kept in the quarantine, GET /api/v1/quarantine); the others are stored"
        ),
        stored: stored.ack.stored,
        quarantined,
        rejected,
    };
    Ok((StatusCode::BAD_REQUEST, axum::Json(body)).into_response())
}

/// A write's lines, parsed.
struct Parsed {
    batch: Batch,
    /// The lines that did not parse.
    rejected: Vec<RejectedLine>,
    /// Lines seen (blank lines and comments not counted).
    lines: usize,
    /// The line number of each point of the batch.
    point_lines: Vec<usize>,
}

/// Parses line protocol: good lines become the batch's points, bad ones its rejects
/// (quarantined) and the list the client is told about. Returns them with the batch's
/// estimated size; `limits` bound the lines and that size (413).
fn to_batch(
    agent_id: &str,
    text: &[u8],
    precision: Precision,
    received_at: i64,
    limits: DecodeLimits,
) -> Result<(Parsed, usize), DecodeError> {
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
    let mut point_lines = Vec::new();
    let mut lines = 0usize;
    let mut size = 0usize;
    for (number, parsed) in line_protocol::parse_numbered(text, precision, received_at) {
        lines = lines.saturating_add(1);
        if lines > limits.max_points {
            return Err(DecodeError::TooManyPoints {
                limit: limits.max_points,
            });
        }
        let cost = match &parsed {
            Ok(point) => point_size(point),
            Err(error) => error.text.len().saturating_add(error.reason.len()),
        };
        size = size.saturating_add(cost);
        if size > limits.max_bytes {
            return Err(DecodeError::DecodedTooLarge {
                limit: limits.max_bytes,
            });
        }
        match parsed {
            Ok(point) => {
                batch.points.push(point);
                point_lines.push(number);
            }
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
    Ok((
        Parsed {
            batch,
            rejected,
            lines,
            point_lines,
        },
        size,
    ))
}

#[cfg(test)]
mod tests {
    use tributary_wire::FieldValue;

    use super::*;

    #[test]
    fn good_lines_become_points_and_bad_ones_are_listed() {
        let text = "cpu,host=a usage=0.5 1700000000\n\ncpu,host=b usage= 1700000000\n# a comment\nmem free=3i 1700000001\n";
        let (parsed, size) = to_batch(
            "t1",
            text.as_bytes(),
            Precision::Seconds,
            7,
            DecodeLimits::NONE,
        )
        .unwrap();
        let Parsed {
            batch,
            rejected,
            lines,
            point_lines,
        } = parsed;
        assert_eq!(lines, 3);
        assert_eq!(point_lines, vec![1, 5]);
        assert!(size > 0);
        assert_eq!(batch.points.len(), 2);
        assert_eq!(batch.points[0].ts, 1_700_000_000_000_000_000);
        assert_eq!(batch.points[1].fields["free"], FieldValue::I64(3));
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].line, 3);
        assert_eq!(batch.rejects[0].payload, b"cpu,host=b usage= 1700000000");
    }

    #[test]
    fn lines_past_the_limits_refuse_the_whole_write() {
        let text = "m v=1\n".repeat(100);
        let few = DecodeLimits {
            max_points: 99,
            max_bytes: usize::MAX,
        };
        assert!(matches!(
            to_batch("t1", text.as_bytes(), Precision::Seconds, 7, few),
            Err(DecodeError::TooManyPoints { limit: 99 })
        ));
        let small = DecodeLimits {
            max_points: usize::MAX,
            max_bytes: 10_000,
        };
        assert!(matches!(
            to_batch("t1", text.as_bytes(), Precision::Seconds, 7, small),
            Err(DecodeError::DecodedTooLarge { limit: 10_000 })
        ));
    }
}
