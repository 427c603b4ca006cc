//! `POST /prometheus/api/v1/write`: Prometheus remote write 1.0 (snappy-compressed protobuf),
//! with an agent's token, through the same cleaning, rollups and quarantine as other ingest.
//! Each series is stored as its metric name with its labels as tags and the sample in the
//! field `value` ([`crate::prometheus`] says how it reads back).
//!
//! Answers as Prometheus expects them: 204 when everything was taken; 400 for data that can
//! never be taken (a body that is not a request, a series without `__name__`, duplicate or
//! empty label names, native histograms, a timestamp out of range), which Prometheus drops
//! instead of retrying: the good series of such a request are stored and the bad ones kept
//! in the quarantine with their reason; 413 for a request over the limits (Prometheus does
//! not retry it either: lower its `max_samples_per_send`); 429 or 503 when the collector cannot
//! take data now, which Prometheus retries. Like line protocol, remote write has no sequence
//! numbers: a request Prometheus sends again after a lost answer is stored again.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tributary_wire::codec::DecodeError;
use tributary_wire::decode::{DecodeLimits, point_size};
use tributary_wire::{AgentStatus, Batch, FieldValue, Point, Reject};

use super::ingest::{
    MISSING_TOKEN, UNKNOWN_TOKEN, authenticate, decode_within_budget, read_body, store,
};
use super::{ApiError, AppState};
use crate::prometheus::remote::{self, Part, RemoteError, TimeSeries};
use crate::prometheus::{AGENT_LABEL, EXPORTED_AGENT_LABEL, VALUE_FIELD};
use crate::storage::Origin;
use crate::tls::PeerNames;

const ENDPOINT: &str = "remote_write";

pub async fn post_remote_write(
    State(state): State<Arc<AppState>>,
    peer: PeerNames,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match remote_write(&state, &headers, &peer, body).await {
        Ok(response) => response,
        Err(error) => state.fail(ENDPOINT, error).into_response(),
    }
}

async fn remote_write(
    state: &AppState,
    headers: &HeaderMap,
    peer: &PeerNames,
    body: Body,
) -> Result<Response, ApiError> {
    let agent_id = authenticate(
        state,
        super::authorization(headers),
        peer,
        UNKNOWN_TOKEN,
        MISSING_TOKEN,
    )?;
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(encoding) = header(CONTENT_ENCODING)
        && !encoding.eq_ignore_ascii_case("snappy")
    {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Encoding {encoding:?}: remote write is snappy-compressed"
        )));
    }
    if let Some(kind) = header(CONTENT_TYPE)
        && !kind.starts_with(remote::CONTENT_TYPE)
    {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {kind:?}: remote write 1.0 sends {}",
            remote::CONTENT_TYPE
        )));
    }
    let (body, held) = read_body(state, headers, body).await?;
    let limit = state.limits.max_decompressed_size;
    let received_at = tributary_wire::time::now_ns();
    let (batch, memory, reservation) = decode_within_budget(state, true, held, move |limits| {
        let raw = remote::decompress(&body, limit).map_err(|e| match e {
            RemoteError::TooLarge { limit, .. } => DecodeError::TooLarge { limit },
            other => DecodeError::Malformed(other.to_string()),
        })?;
        to_batch(&agent_id, &raw, received_at, limits)
    })
    .await?;
    let samples = batch.points.len();
    state.metrics.points_received.inc_by(samples as u64);
    let refused = batch.rejects.len();
    let first_problem = batch.rejects.first().map(|r| r.reason.clone());
    if batch.points.is_empty() && batch.rejects.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let agent_id = batch.agent_id.clone();
    let stored = store(
        reservation,
        agent_id.clone(),
        batch,
        received_at,
        Origin::RemoteWrite,
        memory,
    )
    .await?;
    super::ingest::note_activity(state, &agent_id, stored.ack.stored, headers);
    let quarantined = stored.ack.quarantined;
    if refused == 0 && quarantined == 0 {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let reason = first_problem
        .or_else(|| stored.quarantined.first().map(|(_, reason)| reason.clone()))
        .unwrap_or_default();
    Err(ApiError::BadRequest(format!(
        "{refused} series could not be taken and {quarantined} samples were quarantined by the collector's checks (kept in the quarantine, GET /api/v1/quarantine; the first: {reason}); {} samples stored",
        stored.ack.stored
    )))
}

/// The request's series as points (one per sample), and the series that cannot be taken as
/// rejects; with the batch's estimated size. `limits` bound the samples and that size (413).
pub fn to_batch(
    agent_id: &str,
    raw: &[u8],
    received_at: i64,
    limits: DecodeLimits,
) -> Result<(Batch, usize), DecodeError> {
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
    let mut size = 0usize;
    let mut series_seen = 0u64;
    let result = remote::for_each(raw, |part| {
        let Part::Series(series) = part else {
            return Ok(());
        };
        series_seen = series_seen.saturating_add(1);
        match series_points(&series) {
            Ok(points) => {
                for point in points {
                    if batch.points.len().saturating_add(batch.rejects.len()) >= limits.max_points {
                        return Err(Walk::Limit(DecodeError::TooManyPoints {
                            limit: limits.max_points,
                        }));
                    }
                    size = size.saturating_add(point_size(&point));
                    if size > limits.max_bytes {
                        return Err(Walk::Limit(DecodeError::DecodedTooLarge {
                            limit: limits.max_bytes,
                        }));
                    }
                    batch.points.push(point);
                }
            }
            Err(reason) => {
                // A series that cannot be taken counts against the limits as a point does:
                // a request of nothing but bad series must not grow without bound either.
                if batch.points.len().saturating_add(batch.rejects.len()) >= limits.max_points {
                    return Err(Walk::Limit(DecodeError::TooManyPoints {
                        limit: limits.max_points,
                    }));
                }
                let payload = describe(&series).into_bytes();
                size = size
                    .saturating_add(payload.len())
                    .saturating_add(reason.len());
                if size > limits.max_bytes {
                    return Err(Walk::Limit(DecodeError::DecodedTooLarge {
                        limit: limits.max_bytes,
                    }));
                }
                batch.rejects.push(Reject {
                    id: series_seen,
                    received_at,
                    source: "remote_write".into(),
                    topic: format!("series {series_seen}"),
                    payload,
                    reason,
                });
            }
        }
        Ok(())
    });
    match result {
        Ok(()) => Ok((batch, size)),
        Err(Walk::Limit(limit)) => Err(limit),
        Err(Walk::Body(error)) => Err(DecodeError::Malformed(error.to_string())),
    }
}

/// What stops the walk over a request: a limit crossed, or a body that does not decode.
enum Walk {
    Limit(DecodeError),
    Body(RemoteError),
}

impl From<RemoteError> for Walk {
    fn from(error: RemoteError) -> Walk {
        Walk::Body(error)
    }
}

/// A series' samples as points, or why it cannot be stored.
fn series_points(series: &TimeSeries) -> Result<Vec<Point>, String> {
    if !series.histograms.is_empty() {
        return Err("native histograms are not supported: send classic histograms (send_native_histograms_remote_write = false)".into());
    }
    let mut name = None;
    let mut tags = BTreeMap::new();
    for label in &series.labels {
        if label.name.is_empty() {
            return Err("a label with an empty name".into());
        }
        if label.name == "__name__" {
            if name.replace(label.value.clone()).is_some() {
                return Err("two __name__ labels".into());
            }
            continue;
        }
        if label.value.is_empty() {
            // An empty label is the same as no label, in Prometheus.
            continue;
        }
        let key = if label.name == AGENT_LABEL {
            EXPORTED_AGENT_LABEL.to_owned()
        } else {
            label.name.clone()
        };
        if tags.insert(key, label.value.clone()).is_some() {
            return Err(format!("the label {:?} twice", label.name));
        }
    }
    let name = name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| "no __name__ label".to_owned())?;
    series
        .samples
        .iter()
        .map(|sample| {
            let ts = sample
                .timestamp
                .checked_mul(1_000_000)
                .ok_or_else(|| format!("timestamp {} ms is out of range", sample.timestamp))?;
            Ok(Point {
                name: name.clone(),
                tags: tags.clone(),
                fields: BTreeMap::from([(VALUE_FIELD.to_owned(), FieldValue::F64(sample.value))]),
                ts,
            })
        })
        .collect()
}

/// A series as Prometheus would print it, with its sample count, for the quarantine.
fn describe(series: &TimeSeries) -> String {
    let labels: Vec<String> = series
        .labels
        .iter()
        .map(|l| format!("{}={:?}", l.name, l.value))
        .collect();
    format!(
        "{{{}}} ({} samples, {} histograms)",
        labels.join(", "),
        series.samples.len(),
        series.histograms.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prometheus::remote::{Label, Sample, WriteRequest};

    fn label(name: &str, value: &str) -> Label {
        Label {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn series_become_points_and_bad_series_rejects() {
        let good = TimeSeries {
            labels: vec![
                label("__name__", "up"),
                label("job", "node"),
                label("agent", "theirs"),
                label("empty", ""),
            ],
            samples: vec![
                Sample {
                    value: 1.0,
                    timestamp: 1_000,
                },
                Sample {
                    value: 0.0,
                    timestamp: 2_000,
                },
            ],
            histograms: Vec::new(),
        };
        let nameless = TimeSeries {
            labels: vec![label("job", "x")],
            samples: vec![Sample {
                value: 1.0,
                timestamp: 1,
            }],
            histograms: Vec::new(),
        };
        let far = TimeSeries {
            labels: vec![label("__name__", "far")],
            samples: vec![Sample {
                value: 1.0,
                timestamp: i64::MAX,
            }],
            histograms: Vec::new(),
        };
        let request = WriteRequest {
            timeseries: vec![good, nameless, far],
            metadata: Vec::new(),
        };
        let raw = prost::Message::encode_to_vec(&request);
        let limits = DecodeLimits {
            max_points: 100,
            max_bytes: 1 << 20,
        };
        let (batch, size) = to_batch("a", &raw, 5, limits).unwrap();
        assert!(size > 0);
        assert_eq!(batch.points.len(), 2);
        let point = &batch.points[0];
        assert_eq!(point.name, "up");
        assert_eq!(point.ts, 1_000_000_000);
        assert_eq!(
            point.tags,
            BTreeMap::from([
                ("job".to_owned(), "node".to_owned()),
                ("exported_agent".to_owned(), "theirs".to_owned())
            ])
        );
        assert_eq!(point.fields["value"], FieldValue::F64(1.0));
        let reasons: Vec<&str> = batch.rejects.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(
            reasons,
            vec![
                "no __name__ label",
                "timestamp 9223372036854775807 ms is out of range"
            ]
        );

        let tight = DecodeLimits {
            max_points: 1,
            max_bytes: 1 << 20,
        };
        assert!(matches!(
            to_batch("a", &raw, 5, tight),
            Err(DecodeError::TooManyPoints { limit: 1 })
        ));
        let small = DecodeLimits {
            max_points: 100,
            max_bytes: 10,
        };
        assert!(matches!(
            to_batch("a", &raw, 5, small),
            Err(DecodeError::DecodedTooLarge { limit: 10 })
        ));
        assert!(matches!(
            to_batch("a", &[0x0a, 0x7f], 5, limits),
            Err(DecodeError::Malformed(_))
        ));
    }

    /// Series that cannot be taken count against the limits too (a fuzz input of nothing but
    /// nameless series grew the rejects past `max_points`).
    #[test]
    fn rejected_series_count_against_the_limits() {
        let nameless = TimeSeries {
            labels: vec![Label {
                name: "job".into(),
                value: "x".repeat(100),
            }],
            samples: vec![Sample {
                value: 1.0,
                timestamp: 1_000,
            }],
            ..TimeSeries::default()
        };
        let request = WriteRequest {
            timeseries: vec![nameless; 5],
            ..WriteRequest::default()
        };
        let raw = prost::Message::encode_to_vec(&request);
        let few = DecodeLimits {
            max_points: 3,
            max_bytes: 1 << 20,
        };
        assert!(matches!(
            to_batch("a", &raw, 5, few),
            Err(DecodeError::TooManyPoints { limit: 3 })
        ));
        let small = DecodeLimits {
            max_points: 100,
            max_bytes: 300,
        };
        assert!(matches!(
            to_batch("a", &raw, 5, small),
            Err(DecodeError::DecodedTooLarge { limit: 300 })
        ));
        let (batch, _) = to_batch(
            "a",
            &raw,
            5,
            DecodeLimits {
                max_points: 5,
                max_bytes: 1 << 20,
            },
        )
        .unwrap();
        assert_eq!(batch.rejects.len(), 5);
    }
}
