//! `GET /api/v1/query`: points of the matching series, as JSON or CSV.
//!
//! Parameters: `name` (required), `field`, `from` and `to` (RFC 3339, Unix seconds, or `now`, `now-1h`, `-30m`; `from`
//! inclusive, `to` exclusive; default: all time), `tag.K=V` (repeatable), `format=json|csv`,
//! `limit` (at most `query.max_points`).
//!
//! Aggregation: `step` (a duration, e.g. `1m`) with `agg` (one or more of count, sum, min,
//! max, mean, stddev, first, last, p50, p90, p99, comma-separated or repeated; default mean).
//! Buckets are aligned to the Unix epoch and answered from the coarsest rollup whose windows
//! tile them and the range, else from the raw points. `agg` without `step` aggregates the
//! whole range into one bucket. `window` (a duration, a multiple of `step`) turns each bucket
//! into a moving aggregate over the trailing window, e.g. `step=1m&window=5m&agg=mean`.
//! Each (series, agg) is one entry of the answer, with an `agg` member.
//!
//! Values that are not finite numbers (a float field that held NaN or an infinity, a sum that
//! overflowed) are kept, as Prometheus keeps them: JSON has no such numbers, so they are the
//! strings `"NaN"`, `"+Inf"` and `"-Inf"` in JSON, and the same words in CSV.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tributary_wire::FieldValue;
use tributary_wire::time::{format_rfc3339, parse_time_param};

use super::{ApiError, AppState};
use crate::rollup::Agg;
use crate::storage::{AggregateQuery, AggregateResult, QueryResult, RawQuery, SeriesPoints};

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
    let query = match query {
        Parsed::Raw(query) => query,
        Parsed::Aggregate(query) => {
            let result = state
                .storage
                .query_aggregated(query, state.resolutions.clone())
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            return Ok(match format {
                Format::Json => axum::Json(JsonAggregate::from(&result)).into_response(),
                Format::Csv => (
                    [(CONTENT_TYPE, "text/csv; charset=utf-8")],
                    aggregate_csv(&result).map_err(ApiError::Internal)?,
                )
                    .into_response(),
            });
        }
    };
    let result = state
        .storage
        .query_raw(query)
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

/// A query as asked.
#[derive(Debug)]
enum Parsed {
    Raw(RawQuery),
    Aggregate(AggregateQuery),
}

fn duration_param(key: &str, value: &str) -> Result<i64, ApiError> {
    let duration = tributary_common::config::values::parse_duration(value)
        .map_err(|e| ApiError::BadRequest(format!("{key}: {e}")))?;
    let ns = i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX);
    if ns <= 0 {
        return Err(ApiError::BadRequest(format!(
            "{key}: must be longer than 0"
        )));
    }
    Ok(ns)
}

fn parse(params: Vec<(String, String)>, max_points: usize) -> Result<(Parsed, Format), ApiError> {
    let mut query = RawQuery {
        name: String::new(),
        field: None,
        from: i64::MIN,
        to: i64::MAX,
        tags: Vec::new(),
        limit: max_points,
    };
    let mut format = Format::Json;
    let mut step = None;
    let mut window = None;
    let mut aggs: Vec<Agg> = Vec::new();
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
            "step" => step = Some(duration_param("step", &value)?),
            "window" => window = Some(duration_param("window", &value)?),
            "agg" => {
                for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    let agg = Agg::parse(name).ok_or_else(|| {
                        bad(format!(
                            "agg: {name:?} is not one of {}",
                            Agg::ALL.map(Agg::name).join(", ")
                        ))
                    })?;
                    if !aggs.contains(&agg) {
                        aggs.push(agg);
                    }
                }
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
    if step.is_none() && aggs.is_empty() {
        if window.is_some() {
            return Err(bad(
                "window: needs step (the moving aggregate is computed at every step)".into(),
            ));
        }
        return Ok((Parsed::Raw(query), format));
    }
    if aggs.is_empty() {
        aggs.push(Agg::Mean);
    }
    let step = step.unwrap_or(0);
    if let Some(window) = window {
        if step == 0 {
            return Err(bad(
                "window: needs step (the moving aggregate is computed at every step)".into(),
            ));
        }
        if window.checked_rem(step) != Some(0) {
            return Err(bad("window: must be a multiple of step".into()));
        }
    }
    if step > 0 && query.from != i64::MIN && query.to != i64::MAX {
        let span = i128::from(query.to).saturating_sub(i128::from(query.from));
        let buckets = span.checked_div(i128::from(step)).unwrap_or(0);
        if buckets > max_points as i128 {
            return Err(bad(format!(
                "step: {buckets} buckets is more than query.max_points ({max_points}); use a larger step"
            )));
        }
    }
    Ok((
        Parsed::Aggregate(AggregateQuery {
            raw: query,
            step,
            aggs,
            window,
        }),
        format,
    ))
}

/// The text of a float that JSON has no number for, as Prometheus writes it.
fn non_finite(v: f64) -> Option<&'static str> {
    if v.is_nan() {
        Some("NaN")
    } else if v == f64::INFINITY {
        Some("+Inf")
    } else if v == f64::NEG_INFINITY {
        Some("-Inf")
    } else {
        None
    }
}

/// A float for a text answer (CSV): `NaN`, `+Inf` and `-Inf` as in JSON.
fn float_text(v: f64) -> String {
    non_finite(v).map_or_else(|| v.to_string(), str::to_owned)
}

/// A number in a JSON answer; not finite, a string (module docs).
struct JsonFloat(f64);

impl Serialize for JsonFloat {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match non_finite(self.0) {
            Some(text) => serializer.serialize_str(text),
            None => serializer.serialize_f64(self.0),
        }
    }
}

/// A field's value in a JSON answer.
struct JsonValue<'a>(&'a FieldValue);

impl Serialize for JsonValue<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            FieldValue::F64(v) => JsonFloat(*v).serialize(serializer),
            other => other.serialize(serializer),
        }
    }
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
    points: Vec<(String, JsonValue<'a>)>,
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
                .map(|(ts, value)| (format_rfc3339(*ts), JsonValue(value)))
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct JsonAggregate<'a> {
    series: Vec<JsonAggregateSeries<'a>>,
    /// The rollup resolution that answered, e.g. "1m"; "raw" when the raw points did.
    source: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

#[derive(Serialize)]
struct JsonAggregateSeries<'a> {
    name: &'a str,
    tags: &'a std::collections::BTreeMap<String, String>,
    field: &'a str,
    agg: &'static str,
    points: Vec<(String, JsonFloat)>,
}

fn source_name(resolution: Option<i64>) -> String {
    match resolution {
        None => "raw".into(),
        Some(ns) => {
            humantime::format_duration(std::time::Duration::from_nanos(ns as u64)).to_string()
        }
    }
}

impl<'a> From<&'a AggregateResult> for JsonAggregate<'a> {
    fn from(result: &'a AggregateResult) -> Self {
        JsonAggregate {
            series: result
                .series
                .iter()
                .map(|s| JsonAggregateSeries {
                    name: &s.name,
                    tags: &s.tags,
                    field: &s.field,
                    agg: s.agg.name(),
                    points: s
                        .points
                        .iter()
                        .map(|(ts, v)| (format_rfc3339(*ts), JsonFloat(*v)))
                        .collect(),
                })
                .collect(),
            source: source_name(result.resolution),
            truncated: result.truncated,
        }
    }
}

/// A CSV table: `columns`, then one column per tag key of any series; `rows` gives each
/// series' rows (values for `columns`), `tags` its tags.
fn csv_table<S>(
    columns: &[&str],
    series: &[S],
    tags: impl Fn(&S) -> &BTreeMap<String, String>,
    rows: impl Fn(&S) -> Vec<Vec<String>>,
) -> Result<String, String> {
    let tag_keys: BTreeSet<&str> = series
        .iter()
        .flat_map(|s| tags(s).keys().map(String::as_str))
        .collect();
    let mut writer = csv::Writer::from_writer(Vec::new());
    let mut header = columns.to_vec();
    header.extend(tag_keys.iter().copied());
    writer.write_record(&header).map_err(|e| e.to_string())?;
    for one in series {
        let series_tags = tags(one);
        for mut row in rows(one) {
            row.extend(
                tag_keys
                    .iter()
                    .map(|k| series_tags.get(*k).cloned().unwrap_or_default()),
            );
            writer.write_record(&row).map_err(|e| e.to_string())?;
        }
    }
    let bytes = writer.into_inner().map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|e| e.to_string())
}

/// One row per bucket and aggregation: name, field, agg, time, value, then one column per tag.
fn aggregate_csv(result: &AggregateResult) -> Result<String, String> {
    csv_table(
        &["name", "field", "agg", "time", "value"],
        &result.series,
        |s| &s.tags,
        |s| {
            s.points
                .iter()
                .map(|(ts, value)| {
                    vec![
                        s.name.clone(),
                        s.field.clone(),
                        s.agg.name().to_owned(),
                        format_rfc3339(*ts),
                        float_text(*value),
                    ]
                })
                .collect()
        },
    )
}

/// One row per point: name, field, time, value, then one column per tag key.
fn to_csv(result: &QueryResult) -> Result<String, String> {
    csv_table(
        &["name", "field", "time", "value"],
        &result.series,
        |s| &s.tags,
        |s| {
            s.points
                .iter()
                .map(|(ts, value)| {
                    vec![
                        s.name.clone(),
                        s.field.clone(),
                        format_rfc3339(*ts),
                        match value {
                            FieldValue::F64(v) => float_text(*v),
                            FieldValue::I64(v) => v.to_string(),
                            FieldValue::Bool(v) => v.to_string(),
                            FieldValue::Str(v) => v.clone(),
                        },
                    ]
                })
                .collect()
        },
    )
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
    fn non_finite_values_are_kept_as_prometheus_writes_them() {
        let series = SeriesPoints {
            name: "m".into(),
            tags: BTreeMap::new(),
            field: "v".into(),
            points: vec![
                (0, FieldValue::F64(f64::NAN)),
                (1, FieldValue::F64(f64::INFINITY)),
                (2, FieldValue::F64(f64::NEG_INFINITY)),
                (3, FieldValue::F64(-0.0)),
                (4, FieldValue::I64(7)),
            ],
        };
        let result = QueryResult {
            series: vec![series],
            truncated: false,
        };
        let json = serde_json::to_value(JsonAnswer::from(&result)).unwrap();
        let values: Vec<&serde_json::Value> = json["series"][0]["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p[1])
            .collect();
        assert_eq!(values[0], "NaN");
        assert_eq!(values[1], "+Inf");
        assert_eq!(values[2], "-Inf");
        assert_eq!(values[3].as_f64(), Some(-0.0));
        assert_eq!(values[4], 7);
        let csv = to_csv(&result).unwrap();
        assert!(
            csv.contains(",NaN") && csv.contains(",+Inf") && csv.contains(",-Inf"),
            "{csv}"
        );
    }

    #[test]
    fn parameters_are_checked() {
        let (Parsed::Raw(query), format) = parse(
            params(&[
                ("name", "t"),
                ("tag.device", "d1"),
                ("from", "10"),
                ("to", "1970-01-01T00:00:20Z"),
                ("format", "csv"),
            ]),
            100,
        )
        .unwrap() else {
            panic!("a raw query")
        };
        assert_eq!(query.tags, vec![("device".to_owned(), "d1".to_owned())]);
        assert_eq!((query.from, query.to), (10_000_000_000, 20_000_000_000));
        assert_eq!(format, Format::Csv);
        for (bad, status) in [
            (params(&[("field", "v")]), 400),
            (params(&[("name", "t"), ("from", "later")]), 400),
            (params(&[("name", "t"), ("from", "20"), ("to", "10")]), 400),
            (params(&[("name", "t"), ("limit", "1000")]), 400),
            (params(&[("name", "t"), ("colour", "red")]), 400),
            (params(&[("name", "t"), ("step", "soon")]), 400),
            (params(&[("name", "t"), ("agg", "median")]), 400),
            (
                params(&[("name", "t"), ("step", "1m"), ("window", "90s")]),
                400,
            ),
            (params(&[("name", "t"), ("window", "5m")]), 400),
            (
                params(&[
                    ("name", "t"),
                    ("from", "0"),
                    ("to", "86400"),
                    ("step", "1s"),
                ]),
                400,
            ),
        ] {
            assert_eq!(parse(bad, 100).unwrap_err().status().as_u16(), status);
        }
    }

    #[test]
    fn aggregation_parameters_are_read() {
        let (Parsed::Aggregate(query), _) = parse(
            params(&[
                ("name", "t"),
                ("step", "1m"),
                ("agg", "mean,p99"),
                ("agg", "max"),
                ("window", "5m"),
            ]),
            100,
        )
        .unwrap() else {
            panic!("an aggregated query")
        };
        assert_eq!(query.step, 60_000_000_000);
        assert_eq!(query.window, Some(300_000_000_000));
        assert_eq!(query.aggs, vec![Agg::Mean, Agg::P99, Agg::Max]);
        let (Parsed::Aggregate(whole), _) =
            parse(params(&[("name", "t"), ("agg", "count")]), 100).unwrap()
        else {
            panic!("an aggregated query")
        };
        assert_eq!(whole.step, 0);
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
