//! `GET /api/v1/series` and `GET /api/v1/quarantine`: what the store knows and what it refused.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tributary_wire::time::{format_rfc3339, parse_time_param};

use super::{ApiError, AppState};
use crate::storage::QuarantineFilter;

/// Most entries one listing answers with unless `limit` says fewer.
const DEFAULT_LIMIT: usize = 10_000;

#[derive(Serialize)]
struct SeriesAnswer {
    series: Vec<SeriesView>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

#[derive(Serialize)]
struct SeriesView {
    name: String,
    tags: BTreeMap<String, String>,
    field: String,
    /// float, integer, boolean or string (the type of its first value).
    kind: String,
    first: String,
    last: String,
}

fn limit_param(value: &str) -> Result<usize, ApiError> {
    match value.parse::<usize>() {
        Ok(n) if (1..=DEFAULT_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "limit: {value:?} is not a number from 1 to {DEFAULT_LIMIT}"
        ))),
    }
}

pub async fn get_series(
    State(state): State<Arc<AppState>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let result = async {
        let mut name = String::new();
        let mut search = String::new();
        let mut tags = Vec::new();
        let mut limit = DEFAULT_LIMIT;
        for (key, value) in params {
            match key.as_str() {
                "name" => name = value,
                "search" => search = value,
                "limit" => limit = limit_param(&value)?,
                other => match other.strip_prefix("tag.") {
                    Some(tag) if !tag.is_empty() => tags.push((tag.to_owned(), value)),
                    _ => return Err(ApiError::BadRequest(format!("unknown parameter {other:?}"))),
                },
            }
        }
        state
            .storage
            .list_series(name, tags, search, limit)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))
    }
    .await;
    match result {
        Ok((series, truncated)) => axum::Json(SeriesAnswer {
            series: series
                .into_iter()
                .map(|s| SeriesView {
                    name: s.name,
                    tags: s.tags,
                    field: s.field,
                    kind: s.kind,
                    first: format_rfc3339(s.first_ts),
                    last: format_rfc3339(s.last_ts),
                })
                .collect(),
            truncated,
        })
        .into_response(),
        Err(e) => state.fail("series", e).into_response(),
    }
}

#[derive(Serialize)]
struct QuarantineAnswer {
    records: Vec<QuarantineView>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

#[derive(Serialize)]
struct QuarantineView {
    id: i64,
    received_at: String,
    origin: String,
    agent: Option<String>,
    source: String,
    /// Where it came from: an MQTT topic, a file, `seq N` of a batch, `line N` of a write.
    topic: String,
    time: Option<String>,
    /// The record as received, as text where it is UTF-8, else hex.
    payload: String,
    payload_encoding: &'static str,
    reason: String,
}

pub async fn get_quarantine(
    State(state): State<Arc<AppState>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let result = async {
        let mut filter = QuarantineFilter {
            from: i64::MIN,
            to: i64::MAX,
            limit: DEFAULT_LIMIT,
            newest_first: false,
            agent: None,
            reason: None,
        };
        for (key, value) in params {
            match key.as_str() {
                "order" => {
                    filter.newest_first = match value.as_str() {
                        "newest" => true,
                        "oldest" => false,
                        other => {
                            return Err(ApiError::BadRequest(format!(
                                "order: {other:?} is neither \"newest\" nor \"oldest\""
                            )));
                        }
                    };
                }
                "agent" => filter.agent = Some(value),
                "reason" => filter.reason = Some(value),
                "from" => {
                    filter.from = parse_time_param(&value)
                        .map_err(|e| ApiError::BadRequest(format!("from: {e}")))?;
                }
                "to" => {
                    filter.to = parse_time_param(&value)
                        .map_err(|e| ApiError::BadRequest(format!("to: {e}")))?;
                }
                "limit" => filter.limit = limit_param(&value)?,
                other => return Err(ApiError::BadRequest(format!("unknown parameter {other:?}"))),
            }
        }
        if filter.from >= filter.to {
            return Err(ApiError::BadRequest("from must be before to".into()));
        }
        state
            .storage
            .list_quarantine(filter)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))
    }
    .await;
    match result {
        Ok((records, truncated)) => axum::Json(QuarantineAnswer {
            records: records
                .into_iter()
                .map(|r| {
                    let (payload, payload_encoding) = match String::from_utf8(r.payload) {
                        Ok(text) => (text, "text"),
                        Err(e) => (hex::encode(e.into_bytes()), "hex"),
                    };
                    QuarantineView {
                        id: r.id,
                        received_at: format_rfc3339(r.received_at),
                        origin: r.origin,
                        agent: r.agent_id,
                        source: r.source,
                        topic: r.topic,
                        time: r.ts.map(format_rfc3339),
                        payload,
                        payload_encoding,
                        reason: r.reason,
                    }
                })
                .collect(),
            truncated,
        })
        .into_response(),
        Err(e) => state.fail("quarantine", e).into_response(),
    }
}
