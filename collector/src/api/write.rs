//! InfluxDB line protocol, so Telegraf and other existing agents can send here: `POST
//! /api/v2/write` (InfluxDB 2, Telegraf's `[[outputs.influxdb_v2]]`) and `POST /write`
//! (InfluxDB 1, `[[outputs.influxdb]]`), with `GET`/`HEAD /ping` and a `POST /query` that
//! answers `CREATE DATABASE` (Telegraf sends it at start; one store, so it is a no-op). Same
//! token as an agent, same cleaning and storage: `Authorization: Bearer …`, InfluxDB's `Token
//! …`, or `Basic` with the token as the password; v1's `u` and `p` parameters too (`p` is the
//! token).
//!
//! Parameters: `precision` = `ns` (default), `us`, `ms` or `s`, and v1's `n`, `u`, `m`, `h`;
//! v2's `org` and `bucket`, v1's `db`, `rp` and `consistency` are accepted and ignored (one
//! store). The body may be gzip or zstd compressed. Errors carry `{"error": …}`, which v1
//! clients read; a v2 partial write also has v2's `code` and `message`.
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

/// Which InfluxDB API a write came in through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    V1,
    V2,
}

/// The version `/ping` reports: Telegraf's v1 output only needs the header to be there.
const INFLUXDB_VERSION: &str = "1.8.10";

/// The 400 answer of a partial write.
#[derive(Debug, Serialize)]
struct PartialWrite {
    code: &'static str,
    message: String,
    /// The same as `message`, where InfluxDB 1 clients look.
    error: String,
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
    match write(&state, Dialect::V2, params, &headers, &peer, body).await {
        Ok(response) => response,
        Err(error) => state.fail(ENDPOINT, error).into_response(),
    }
}

/// `POST /write`: InfluxDB 1's write endpoint.
pub async fn post_write_v1(
    State(state): State<Arc<AppState>>,
    Query(params): Query<Vec<(String, String)>>,
    peer: PeerNames,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match write(&state, Dialect::V1, params, &headers, &peer, body).await {
        Ok(response) => response,
        Err(error) => state.fail(ENDPOINT, error).into_response(),
    }
}

/// `GET`/`HEAD /ping`: InfluxDB 1's liveness probe, 204 with its version headers. Open, like
/// `/healthz`.
pub async fn get_ping() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            ("X-Influxdb-Version", INFLUXDB_VERSION),
            ("X-Influxdb-Build", "OSS"),
        ],
    )
        .into_response()
}

/// `POST /query` (InfluxDB 1): `CREATE DATABASE …` succeeds and does nothing (one store);
/// anything else is refused with a pointer to the query APIs. `q` comes in the URL or a form
/// body, as InfluxDB takes it; the writer's token is needed, as for `/write`.
pub async fn post_query_v1(
    State(state): State<Arc<AppState>>,
    Query(params): Query<Vec<(String, String)>>,
    peer: PeerNames,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let answer = (|| {
        let password = param(&params, "p");
        let authorization = v1_authorization(&headers, password.as_deref());
        authenticate(
            &state,
            authorization.as_deref(),
            &peer,
            "the token is not known",
            MISSING_V1,
        )?;
        let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
            .map_err(|e| ApiError::BadRequest(format!("the form body: {e}")))?;
        let q = param(&params, "q")
            .or_else(|| param(&form, "q"))
            .ok_or_else(|| ApiError::BadRequest("missing parameter \"q\"".into()))?;
        let statement = q.trim().trim_end_matches(';');
        let mut words = statement.split_whitespace();
        if words
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case("create"))
            && words
                .next()
                .is_some_and(|w| w.eq_ignore_ascii_case("database"))
        {
            return Ok(
                axum::Json(serde_json::json!({"results": [{"statement_id": 0}]})).into_response(),
            );
        }
        Err(ApiError::BadRequest(format!(
            "{statement:?}: this collector answers only CREATE DATABASE here (a no-op: it has one store); query it with /prometheus/api/v1/query or /api/v1/query"
        )))
    })();
    answer.unwrap_or_else(|error| state.fail("query_v1", error).into_response())
}

/// The 401 body of a v1 request without credentials.
const MISSING_V1: &str = "missing credentials: Authorization: Token <token> (or Bearer <token>, or Basic with the token as the password), or the p=<token> parameter";

/// The first value of parameter `name`.
fn param(params: &[(String, String)], name: &str) -> Option<String> {
    params
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.clone())
}

/// The credentials of a v1 request: its `Authorization` header, else its `p` parameter as a
/// token.
fn v1_authorization(headers: &HeaderMap, password: Option<&str>) -> Option<String> {
    super::authorization(headers)
        .map(str::to_owned)
        .or_else(|| password.map(|p| format!("Token {p}")))
}

async fn write(
    state: &AppState,
    dialect: Dialect,
    params: Vec<(String, String)>,
    headers: &HeaderMap,
    peer: &PeerNames,
    body: Body,
) -> Result<Response, ApiError> {
    let authorization = match dialect {
        Dialect::V1 => v1_authorization(headers, param(&params, "p").as_deref()),
        Dialect::V2 => super::authorization(headers).map(str::to_owned),
    };
    let missing = match dialect {
        Dialect::V1 => MISSING_V1,
        Dialect::V2 => "missing Authorization: Token <token> (or Bearer <token>)",
    };
    let agent_id = authenticate(
        state,
        authorization.as_deref(),
        peer,
        "the token is not known",
        missing,
    )?;
    let mut precision = Precision::Nanoseconds;
    for (key, value) in params {
        match (dialect, key.as_str()) {
            (_, "precision") => {
                precision = Precision::parse(&value).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "precision: {value:?} is not ns, us, ms, s (or v1's n, u, m, h)"
                    ))
                })?;
            }
            (Dialect::V2, "org" | "bucket" | "orgID" | "db" | "rp") => {}
            (Dialect::V1, "db" | "rp" | "u" | "p" | "consistency") => {}
            (_, other) => {
                return Err(ApiError::BadRequest(format!("unknown parameter {other:?}")));
            }
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
        agent_id.clone(),
        batch,
        received_at,
        Origin::LineProtocol,
        memory,
    )
    .await?;
    super::ingest::note_activity(state, &agent_id, stored.ack.stored, headers);
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
    let message = format!(
        "partial write: {refused} of {lines} lines did not parse and {quarantined} points were quarantined by the collector's checks (all kept in the quarantine, GET /api/v1/quarantine); the others are stored"
    );
    let body = PartialWrite {
        code: "invalid",
        error: message.clone(),
        message,
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
