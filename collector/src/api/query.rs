//! `GET /api/v1/query`: points of the matching series, as JSON or CSV.
//!
//! Parameters: `name` (required), `field`, `from` and `to` (RFC 3339 or Unix seconds; `from`
//! inclusive, `to` exclusive; default: all time), `tag.K=V` (repeatable), `format=json|csv`,
//! `limit` (at most `query.max_points`). Aggregation (`step`, `agg`) is not available yet and
//! is refused with 501 rather than answered with raw points.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tributary_wire::FieldValue;
use tributary_wire::time::{format_rfc3339, parse_time_param};

use super::{ApiError, AppState};
use crate::storage::{QueryResult, RawQuery, SeriesPoints, sqlite};

const ENDPOINT: &str = "query";

#[derive(Debug, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

pub async fn get_query(
    State(state): State<Arc<AppState>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    match answer(&state, params).await {
        Ok(response) => response,
        Err(error) => state.fail(ENDPOINT, error).into_response(),
    }
}

async fn answer(state: &AppState, params: Vec<(String, String)>) -> Result<Response, ApiError> {
    let (query, format) = parse(params, state.query_max_points)?;
    let result = state
        .storage
        .reads()
        .run(move |conn| sqlite::query_raw(conn, &query))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(match format {
        Format::Json => axum::Json(JsonAnswer::from(&result)).into_response(),
        Format::Csv => (
            [(CONTENT_TYPE, "text/csv; charset=utf-8")],
            to_csv(&result).map_err(ApiError::Internal)?,
        )
            .into_response(),
    })
}

fn parse(params: Vec<(String, String)>, max_points: usize) -> Result<(RawQuery, Format), ApiError> {
    let mut query = RawQuery {
        name: String::new(),
        field: None,
        from: i64::MIN,
        to: i64::MAX,
        tags: Vec::new(),
        limit: max_points,
    };
    let mut format = Format::Json;
    let bad = |message: String| ApiError::BadRequest(message);
    for (key, value) in params {
        match key.as_str() {
            "name" => query.name = value,
            "field" => query.field = Some(value),
            "from" => {
                query.from = parse_time_param(&value).map_err(|e| bad(format!("from: {e}")))?;
            }
            "to" => query.to = parse_time_param(&value).map_err(|e| bad(format!("to: {e}")))?,
            "format" => {
                format = match value.as_str() {
                    "json" => Format::Json,
                    "csv" => Format::Csv,
                    other => return Err(bad(format!("format: {other:?} is not json or csv"))),
                }
            }
            "limit" => {
                let limit: usize = value
                    .parse()
                    .map_err(|_| bad(format!("limit: {value:?} is not a number")))?;
                if limit == 0 || limit > max_points {
                    return Err(bad(format!("limit: must be between 1 and {max_points}")));
                }
                query.limit = limit;
            }
            "step" | "agg" | "window" => {
                return Err(ApiError::NotImplemented(format!(
                    "{key}: aggregated queries are not available yet; omit step and agg for raw points"
                )));
            }
            other => match other.strip_prefix("tag.") {
                Some(tag) if !tag.is_empty() => query.tags.push((tag.to_owned(), value)),
                _ => return Err(bad(format!("unknown parameter {other:?}"))),
            },
        }
    }
    if query.name.is_empty() {
        return Err(bad("name is required".into()));
    }
    if query.from >= query.to {
        return Err(bad("from must be before to".into()));
    }
    Ok((query, format))
}

#[derive(Serialize)]
struct JsonAnswer<'a> {
    series: Vec<JsonSeries<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

#[derive(Serialize)]
struct JsonSeries<'a> {
    name: &'a str,
    tags: &'a std::collections::BTreeMap<String, String>,
    field: &'a str,
    points: Vec<(String, &'a FieldValue)>,
}

impl<'a> From<&'a QueryResult> for JsonAnswer<'a> {
    fn from(result: &'a QueryResult) -> Self {
        JsonAnswer {
            series: result.series.iter().map(JsonSeries::from).collect(),
            truncated: result.truncated,
        }
    }
}

impl<'a> From<&'a SeriesPoints> for JsonSeries<'a> {
    fn from(series: &'a SeriesPoints) -> Self {
        JsonSeries {
            name: &series.name,
            tags: &series.tags,
            field: &series.field,
            points: series
                .points
                .iter()
                .map(|(ts, value)| (format_rfc3339(*ts), value))
                .collect(),
        }
    }
}

/// One row per point: name, field, time, value, then one column per tag key.
fn to_csv(result: &QueryResult) -> Result<String, String> {
    let tag_keys: BTreeSet<&str> = result
        .series
        .iter()
        .flat_map(|s| s.tags.keys().map(String::as_str))
        .collect();
    let mut writer = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["name", "field", "time", "value"];
    header.extend(tag_keys.iter().copied());
    writer.write_record(&header).map_err(|e| e.to_string())?;
    for series in &result.series {
        for (ts, value) in &series.points {
            let mut row = vec![
                series.name.clone(),
                series.field.clone(),
                format_rfc3339(*ts),
                match value {
                    FieldValue::F64(v) => v.to_string(),
                    FieldValue::I64(v) => v.to_string(),
                    FieldValue::Bool(v) => v.to_string(),
                    FieldValue::Str(v) => v.clone(),
                },
            ];
            row.extend(
                tag_keys
                    .iter()
                    .map(|k| series.tags.get(*k).cloned().unwrap_or_default()),
            );
            writer.write_record(&row).map_err(|e| e.to_string())?;
        }
    }
    let bytes = writer.into_inner().map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parameters_are_checked() {
        let (query, format) = parse(
            params(&[
                ("name", "t"),
                ("tag.device", "d1"),
                ("from", "10"),
                ("to", "1970-01-01T00:00:20Z"),
                ("format", "csv"),
            ]),
            100,
        )
        .unwrap();
        assert_eq!(query.tags, vec![("device".to_owned(), "d1".to_owned())]);
        assert_eq!((query.from, query.to), (10_000_000_000, 20_000_000_000));
        assert_eq!(format, Format::Csv);
        for (bad, status) in [
            (params(&[("field", "v")]), 400),
            (params(&[("name", "t"), ("from", "later")]), 400),
            (params(&[("name", "t"), ("from", "20"), ("to", "10")]), 400),
            (params(&[("name", "t"), ("limit", "1000")]), 400),
            (params(&[("name", "t"), ("colour", "red")]), 400),
            (params(&[("name", "t"), ("step", "1m")]), 501),
        ] {
            assert_eq!(parse(bad, 100).unwrap_err().status().as_u16(), status);
        }
    }

    #[test]
    fn csv_has_a_column_per_tag() {
        let result = QueryResult {
            series: vec![SeriesPoints {
                name: "t".into(),
                tags: [("device".to_owned(), "d,1".to_owned())].into(),
                field: "v".into(),
                points: vec![
                    (0, FieldValue::F64(1.5)),
                    (1_000_000_000, FieldValue::Str("x".into())),
                ],
            }],
            truncated: false,
        };
        assert_eq!(
            to_csv(&result).unwrap(),
            "name,field,time,value,device\nt,v,1970-01-01T00:00:00Z,1.5,\"d,1\"\nt,v,1970-01-01T00:00:01Z,x,\"d,1\"\n"
        );
    }
}
