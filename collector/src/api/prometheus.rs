//! Prometheus' HTTP API under `/prometheus/api/v1/`, so Grafana's stock Prometheus data source
//! (URL `http://collector:8080/prometheus`) and other Prometheus clients can read the store:
//! `query`, `query_range`, `series`, `labels`, `label/<name>/values`, `metadata`,
//! `status/buildinfo` and `format_query`, by GET or by form-encoded POST, with Prometheus'
//! JSON envelope (`{"status": "success", "data": …}`, or `"error"` with `errorType`
//! `bad_data` (400), `execution` (422), `timeout` (503) or `internal` (500)).
//!
//! Reads need a reader's token, as the other read endpoints (Grafana sends it as a custom
//! `Authorization: Bearer …` header, or as basic auth with the token as the password).
//! Series are named as [`crate::prometheus`] says; PromQL is evaluated by [`crate::promql`].

#[cfg(test)]
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use promql_parser::label::Matcher;
use serde_json::{Value as Json, json};

use super::AppState;
use crate::promql::{self, Evaluator, QueryError, Series, Value};

/// The Prometheus API version this follows, reported by `status/buildinfo`.
pub const PROMETHEUS_API_VERSION: &str = "2.42.0";
/// How long a query may run unless its `timeout` says less.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Most points a range query may answer with per series (Prometheus' own limit).
const MAX_POINTS_PER_SERIES: i64 = 11_000;

/// The request's parameters: the URL's and a form body's, body first (as Prometheus reads
/// them).
type Params = Vec<(String, String)>;

fn merged(query: Params, body: &Bytes) -> Result<Params, QueryError> {
    let mut params: Params = if body.is_empty() {
        Vec::new()
    } else {
        serde_urlencoded::from_bytes(body)
            .map_err(|e| QueryError::BadData(format!("the form body: {e}")))?
    };
    params.extend(query);
    Ok(params)
}

fn param<'p>(params: &'p Params, name: &str) -> Option<&'p str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A time parameter in milliseconds: RFC 3339 or Unix seconds; `default` when absent.
fn time_param(params: &Params, name: &str, default: i64) -> Result<i64, QueryError> {
    match param(params, name) {
        None | Some("") => Ok(default),
        Some(text) => parse_time(text)
            .map_err(|e| QueryError::BadData(format!("invalid parameter \"{name}\": {e}"))),
    }
}

fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(seconds) = text.parse::<f64>() {
        if !seconds.is_finite() {
            return Err(format!("cannot parse {text:?} to a valid timestamp"));
        }
        return Ok((seconds * 1000.0).round() as i64);
    }
    tributary_wire::time::parse_time_param(text).map(|ns| ns.div_euclid(1_000_000))
}

/// A duration parameter in milliseconds: float seconds or a duration like `1m`.
fn duration_param(text: &str, name: &str) -> Result<i64, QueryError> {
    let bad = || {
        QueryError::BadData(format!(
            "invalid parameter \"{name}\": cannot parse {text:?} to a valid duration"
        ))
    };
    if let Ok(seconds) = text.parse::<f64>() {
        if !seconds.is_finite() || seconds.abs() > 1e15 {
            return Err(bad());
        }
        return Ok((seconds * 1000.0).round() as i64);
    }
    tributary_common::config::values::parse_duration(text)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .ok_or_else(bad)
}

fn timeout(params: &Params) -> Result<Duration, QueryError> {
    match param(params, "timeout") {
        None | Some("") => Ok(DEFAULT_TIMEOUT),
        Some(text) => {
            let ms = duration_param(text, "timeout")?;
            Ok(Duration::from_millis(u64::try_from(ms).unwrap_or(0)).min(DEFAULT_TIMEOUT))
        }
    }
}

fn now_ms() -> i64 {
    tributary_wire::time::now_ns().div_euclid(1_000_000)
}

/// Prometheus' JSON time: seconds, to the millisecond.
fn json_time(ms: i64) -> Json {
    json!(ms as f64 / 1000.0)
}

fn json_value(v: f64) -> Json {
    Json::String(promql::format_value(v))
}

fn json_labels(labels: &promql::Labels) -> Json {
    Json::Object(
        labels
            .iter()
            .map(|(k, v)| (k.clone(), Json::String(v.clone())))
            .collect(),
    )
}

fn json_matrix(series: &[Series]) -> Json {
    Json::Array(
        series
            .iter()
            .map(|s| {
                json!({
                    "metric": json_labels(&s.labels),
                    "values": s.samples.iter().map(|&(t, v)| json!([json_time(t), json_value(v)])).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

/// The envelope of a success.
fn success(data: Json) -> Response {
    let mut envelope = serde_json::Map::new();
    envelope.insert("status".into(), Json::String("success".into()));
    envelope.insert("data".into(), data);
    axum::Json(Json::Object(envelope)).into_response()
}

/// The envelope of an error, with its status code; counted as an error of `endpoint`.
fn failure(state: &AppState, endpoint: &str, error: &QueryError) -> Response {
    let status = match error {
        QueryError::BadData(_) => StatusCode::BAD_REQUEST,
        QueryError::Execution(_) => StatusCode::UNPROCESSABLE_ENTITY,
        QueryError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
        QueryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status.is_server_error() {
        tracing::warn!(endpoint, error = %error, "PromQL request failed");
        state.metrics.error("prometheus_api", endpoint);
    }
    (
        status,
        axum::Json(
            json!({"status": "error", "errorType": error.kind(), "error": error.to_string()}),
        ),
    )
        .into_response()
}

#[allow(clippy::needless_pass_by_value)] // used as map_err(storage_error)
fn storage_error(e: crate::storage::StorageError) -> QueryError {
    QueryError::Internal(format!("the store: {e}"))
}

/// `query` and `query_range`.
pub async fn query(
    State(state): State<Arc<AppState>>,
    Query(query): Query<Params>,
    body: Bytes,
) -> Response {
    match instant_query(&state, query, &body).await {
        Ok(data) => success(data),
        Err(e) => failure(&state, "query", &e),
    }
}

async fn instant_query(state: &AppState, query: Params, body: &Bytes) -> Result<Json, QueryError> {
    let params = merged(query, body)?;
    let text = param(&params, "query")
        .ok_or_else(|| QueryError::BadData("invalid parameter \"query\": missing".into()))?
        .to_owned();
    let time = time_param(&params, "time", now_ms())?;
    let timeout = timeout(&params)?;
    let budget = state.query_max_points;
    let expr = promql::parse(&text)?;
    let value = state
        .storage
        .promql(move |source| {
            Evaluator::new(source, time, time, budget, timeout).instant(&expr, time)
        })
        .await
        .map_err(storage_error)??;
    Ok(match value {
        Value::Scalar(v) => {
            json!({"resultType": "scalar", "result": [json_time(time), json_value(v)]})
        }
        Value::String(s) => json!({"resultType": "string", "result": [json_time(time), s]}),
        Value::Vector(samples) => json!({
            "resultType": "vector",
            "result": samples.iter().map(|s| json!({
                "metric": json_labels(&s.labels),
                "value": [json_time(time), json_value(s.value)],
            })).collect::<Vec<_>>(),
        }),
        Value::Matrix(series) => json!({"resultType": "matrix", "result": json_matrix(&series)}),
    })
}

pub async fn query_range(
    State(state): State<Arc<AppState>>,
    Query(query): Query<Params>,
    body: Bytes,
) -> Response {
    match range_query(&state, query, &body).await {
        Ok(data) => success(data),
        Err(e) => failure(&state, "query_range", &e),
    }
}

async fn range_query(state: &AppState, query: Params, body: &Bytes) -> Result<Json, QueryError> {
    let params = merged(query, body)?;
    let text = param(&params, "query")
        .ok_or_else(|| QueryError::BadData("invalid parameter \"query\": missing".into()))?
        .to_owned();
    let missing =
        |name: &str| QueryError::BadData(format!("invalid parameter \"{name}\": missing"));
    let start = parse_time(param(&params, "start").ok_or_else(|| missing("start"))?)
        .map_err(|e| QueryError::BadData(format!("invalid parameter \"start\": {e}")))?;
    let end = parse_time(param(&params, "end").ok_or_else(|| missing("end"))?)
        .map_err(|e| QueryError::BadData(format!("invalid parameter \"end\": {e}")))?;
    let step = duration_param(
        param(&params, "step").ok_or_else(|| missing("step"))?,
        "step",
    )?;
    if end < start {
        return Err(QueryError::BadData(
            "invalid parameter \"end\": end timestamp must not be before start time".into(),
        ));
    }
    if step <= 0 {
        return Err(QueryError::BadData(
            "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
        ));
    }
    if end
        .saturating_sub(start)
        .checked_div(step)
        .unwrap_or(i64::MAX)
        > MAX_POINTS_PER_SERIES
    {
        return Err(QueryError::BadData(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)".into(),
        ));
    }
    let timeout = timeout(&params)?;
    let budget = state.query_max_points;
    let expr = promql::parse(&text)?;
    let series = state
        .storage
        .promql(move |source| {
            Evaluator::new(source, start, end, budget, timeout).range(&expr, step)
        })
        .await
        .map_err(storage_error)??;
    Ok(json!({"resultType": "matrix", "result": json_matrix(&series)}))
}

/// The `match[]` selectors of a request, each as its matchers.
fn selectors(params: &Params) -> Result<Vec<Vec<Matcher>>, QueryError> {
    params
        .iter()
        .filter(|(k, _)| k == "match[]")
        .map(|(_, text)| match promql::parse(text)? {
            promql_parser::parser::Expr::VectorSelector(vs) => {
                let matchers = promql::selector_matchers(&vs)?;
                if promql::matches_everything(&matchers) {
                    return Err(QueryError::BadData(
                        "match[] must contain at least one non-empty matcher".into(),
                    ));
                }
                Ok(matchers)
            }
            _ => Err(QueryError::BadData(format!(
                "invalid parameter \"match[]\": {text:?} is not a series selector"
            ))),
        })
        .collect()
}

/// The labels of every series matching any of `selectors` (all series without any) with data
/// between `start` and `end`.
async fn label_sets(
    state: &AppState,
    params: &Params,
) -> Result<Vec<Arc<promql::Labels>>, QueryError> {
    let selectors = selectors(params)?;
    let start = time_param(params, "start", i64::MIN / 1_000_000)?;
    let end = time_param(params, "end", i64::MAX / 1_000_000)?;
    state
        .storage
        .promql(move |source| {
            let mut out: BTreeSet<Arc<promql::Labels>> = BTreeSet::new();
            let everything = vec![Vec::new()];
            let selectors = if selectors.is_empty() {
                &everything
            } else {
                &selectors
            };
            for matchers in selectors {
                for entry in source.catalogue(matchers, start, end)? {
                    out.insert(entry.labels);
                }
            }
            Ok(out.into_iter().collect())
        })
        .await
        .map_err(storage_error)?
}

pub async fn series(
    State(state): State<Arc<AppState>>,
    Query(query): Query<Params>,
    body: Bytes,
) -> Response {
    let answer = async {
        let params = merged(query, &body)?;
        if param(&params, "match[]").is_none() {
            return Err(QueryError::BadData("no match[] parameter provided".into()));
        }
        let sets = label_sets(&state, &params).await?;
        Ok(Json::Array(sets.iter().map(|l| json_labels(l)).collect()))
    };
    match answer.await {
        Ok(data) => success(data),
        Err(e) => failure(&state, "series", &e),
    }
}

pub async fn labels(
    State(state): State<Arc<AppState>>,
    Query(query): Query<Params>,
    body: Bytes,
) -> Response {
    let answer = async {
        let params = merged(query, &body)?;
        let sets = label_sets(&state, &params).await?;
        let names: BTreeSet<&String> = sets.iter().flat_map(|l| l.keys()).collect();
        Ok(json!(names))
    };
    match answer.await {
        Ok(data) => success(data),
        Err(e) => failure(&state, "labels", &e),
    }
}

pub async fn label_values(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(query): Query<Params>,
) -> Response {
    let answer = async {
        let sets = label_sets(&state, &query).await?;
        let values: BTreeSet<&String> = sets.iter().filter_map(|l| l.get(&name)).collect();
        Ok(json!(values))
    };
    match answer.await {
        Ok(data) => success(data),
        Err(e) => failure(&state, "label_values", &e),
    }
}

/// `metadata`: the collector keeps no metric metadata (types, help) yet, so every metric is
/// answered without any, as Prometheus answers for metrics it has none for.
pub async fn metadata() -> Response {
    success(json!({}))
}

pub async fn buildinfo() -> Response {
    success(json!({
        "version": PROMETHEUS_API_VERSION,
        "revision": format!("tributary-collector {}", env!("CARGO_PKG_VERSION")),
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
    }))
}

pub async fn format_query(
    State(state): State<Arc<AppState>>,
    Query(query): Query<Params>,
    body: Bytes,
) -> Response {
    let answer = (|| {
        let params = merged(query, &body)?;
        let text = param(&params, "query")
            .ok_or_else(|| QueryError::BadData("invalid parameter \"query\": missing".into()))?;
        Ok(Json::String(promql::parse(text)?.prettify()))
    })();
    match answer {
        Ok(data) => success(data),
        Err(e) => failure(&state, "format_query", &e),
    }
}

/// What the listings answer per label name, for tests: name -> values.
#[cfg(test)]
fn by_name(sets: &[Arc<promql::Labels>]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for labels in sets {
        for (k, v) in labels.iter() {
            out.entry(k.clone()).or_default().insert(v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_parse_as_prometheus_takes_them() {
        assert_eq!(parse_time("1435781451.781"), Ok(1_435_781_451_781));
        assert_eq!(
            parse_time("2015-07-01T20:10:51.781Z"),
            Ok(1_435_781_451_781)
        );
        assert!(parse_time("soon").is_err());
        assert_eq!(duration_param("15", "step"), Ok(15_000));
        assert_eq!(duration_param("1m", "step"), Ok(60_000));
        assert_eq!(duration_param("0.5", "step"), Ok(500));
        assert!(duration_param("NaN", "step").is_err());
        let params = merged(
            vec![("query".into(), "up".into())],
            &Bytes::from_static(b"query=down&time=5"),
        )
        .unwrap();
        assert_eq!(param(&params, "query"), Some("down"));
        assert_eq!(param(&params, "time"), Some("5"));
        let sets = vec![Arc::new(promql::Labels::from([(
            "a".to_owned(),
            "1".to_owned(),
        )]))];
        assert_eq!(by_name(&sets)["a"].len(), 1);
    }
}
