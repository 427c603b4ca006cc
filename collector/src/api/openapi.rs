//! `GET /api/v1/openapi.json`: the OpenAPI 3.0 document of every endpoint, written by hand
//! (no generator, no Swagger UI to vendor). A test checks that every route the router is
//! built from is described here, that everything described is served, and that the router
//! answers each (not 404 or 405).

use std::sync::LazyLock;

use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::rollup::Agg;

/// The document, built once.
static DOCUMENT: LazyLock<Value> = LazyLock::new(document);

pub async fn get_openapi() -> impl IntoResponse {
    axum::Json(&*DOCUMENT)
}

fn query_param(name: &str, description: &str, schema: &Value, required: bool) -> Value {
    json!({ "name": name, "in": "query", "required": required, "description": description, "schema": schema })
}

/// The answers of the Prometheus API: its envelope, with `errorType` on failure.
fn prom_responses() -> serde_json::Value {
    json!({
        "200": { "description": "`{\"status\": \"success\", \"data\": …}`", "content": { "application/json": { "schema": { "type": "object" } } } },
        "400": { "description": "`bad_data`: the query or a parameter is malformed" },
        "401": error_response("Missing or unknown token"),
        "403": error_response("An agent's token (agents write, readers read)"),
        "422": { "description": "`execution`: evaluation failed, an unsupported feature included (the error starts with \"unsupported\")" },
        "503": { "description": "`timeout`" }
    })
}

fn error_response(description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

/// The document.
pub fn document() -> Value {
    let time = json!({ "type": "string", "description": "RFC 3339 (2024-05-01T12:00:00Z), Unix seconds, or relative to now: now, now-1h, -30m" });
    let tag_param = json!({
        "name": "tag", "in": "query", "required": false, "style": "deepObject", "explode": true,
        "description": "tag.K=V: only series with tag K equal to V (repeatable)",
        "schema": { "type": "object", "additionalProperties": { "type": "string" } }
    });
    let aggs: Vec<&str> = Agg::ALL.iter().map(|a| a.name()).collect();
    let mut doc = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Tributary collector",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Stores what Tributary agents send exactly once, cleans it, rolls it up (late data included) and answers queries."
        },
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "description": "An agent's token (collector.toml keeps its SHA-256)" },
                "reader": { "type": "http", "scheme": "bearer", "description": "A reader's token ([[readers]]); not needed with server.anonymous_read = true" },
                "influxToken": { "type": "apiKey", "in": "header", "name": "Authorization", "description": "`Token <token>`, as InfluxDB v2 clients send it" },
                "basic": { "type": "http", "scheme": "basic", "description": "Any user name, the token as the password (InfluxDB v1 clients, Grafana)" },
                "influxPassword": { "type": "apiKey", "in": "query", "name": "p", "description": "InfluxDB v1's password parameter: the token" }
            },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } },
                "BatchAck": {
                    "type": "object",
                    "required": ["committed_through", "stored", "duplicates", "rejects_stored"],
                    "properties": {
                        "committed_through": { "type": "integer", "description": "Every sequence of this (agent, epoch) up to here is committed" },
                        "stored": { "type": "integer" },
                        "duplicates": { "type": "integer", "description": "Points already stored before (a retry)" },
                        "rejects_stored": { "type": "integer" },
                        "quarantined": { "type": "integer", "description": "Points the collector's checks sent to the quarantine (time sanity, cleaning rules, a field type conflict, a point the store cannot hold)" },
                        "received_at": { "type": "integer", "description": "The collector's clock (UTC ns) when it began handling the request, for the agent's clock estimate" },
                        "replied_at": { "type": "integer", "description": "The collector's clock (UTC ns) when it answered" }
                    }
                },
                "Series": {
                    "type": "object",
                    "properties": {
                        "name": { "type": "string" },
                        "tags": { "type": "object", "additionalProperties": { "type": "string" } },
                        "field": { "type": "string" },
                        "agg": { "type": "string", "enum": aggs, "description": "Aggregated answers only" },
                        "points": { "type": "array", "items": { "type": "array", "minItems": 2, "maxItems": 2, "items": {}, "description": "[time (RFC 3339), value]" } }
                    }
                }
            }
        },
        "paths": {
            "/api/v1/batches": {
                "post": {
                    "summary": "Agent ingest: a batch stored exactly once",
                    "security": [{ "bearer": [] }],
                    "requestBody": { "required": true, "content": {
                        "application/msgpack": { "schema": { "type": "string", "format": "binary" } },
                        "application/json": { "schema": { "type": "object" } }
                    }, "description": "A batch; Content-Encoding zstd, gzip or none" },
                    "responses": {
                        "200": { "description": "Committed", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/BatchAck" } } } },
                        "400": error_response("Malformed batch"),
                        "401": error_response("Unknown or missing token"),
                        "403": error_response("The batch names another agent than its token's"),
                        "408": error_response("The body did not arrive within server.body_timeout"),
                        "413": error_response("Too large: the body (as sent or decompressed), its points (server.max_batch_points) or its decoded size (server.max_decoded_size); split it"),
                        "415": error_response("Unsupported Content-Type or Content-Encoding"),
                        "429": error_response("Ingest memory or queue full; retry after Retry-After"),
                        "503": error_response("Storage cannot commit (e.g. disk full) or shutting down; retry after Retry-After")
                    }
                }
            },
            "/api/v2/write": {
                "post": {
                    "summary": "InfluxDB line protocol ingest (Telegraf's influxdb_v2 output)",
                    "security": [{ "bearer": [] }, { "influxToken": [] }],
                    "parameters": [
                        query_param("precision", "Unit of the timestamps", &json!({ "type": "string", "enum": ["ns", "us", "ms", "s"], "default": "ns" }), false),
                        query_param("org", "Accepted and ignored", &json!({ "type": "string" }), false),
                        query_param("bucket", "Accepted and ignored", &json!({ "type": "string" }), false)
                    ],
                    "requestBody": { "required": true, "content": { "text/plain": { "schema": { "type": "string" } } }, "description": "Line protocol; Content-Encoding gzip, zstd or none" },
                    "responses": {
                        "204": { "description": "Every line stored" },
                        "400": { "description": "Partial write: the good lines are stored; lines that did not parse (invalid UTF-8 included) and points the collector's checks quarantined are listed with their reasons (and kept in the quarantine)", "content": { "application/json": { "schema": {
                            "type": "object",
                            "properties": {
                                "code": { "type": "string" },
                                "message": { "type": "string" },
                                "stored": { "type": "integer" },
                                "quarantined": { "type": "integer" },
                                "rejected": { "type": "array", "items": { "type": "object", "properties": { "line": { "type": "integer" }, "error": { "type": "string" } } } }
                            }
                        } } } },
                        "401": error_response("Unknown or missing token"),
                        "408": error_response("The body did not arrive within server.body_timeout"),
                        "413": error_response("Too large (body, lines or decoded size); nothing stored: split the write"),
                        "429": error_response("Ingest memory or queue full; retry after Retry-After"),
                        "503": error_response("Storage cannot commit or shutting down")
                    }
                }
            },
            "/prometheus/api/v1/query": {
                "get": {
                    "summary": "Prometheus API: a PromQL instant query (also POST with a form body)",
                    "parameters": [
                        query_param("query", "PromQL", &json!({ "type": "string" }), true),
                        query_param("time", "RFC 3339 or Unix seconds (default: now)", &json!({ "type": "string" }), false),
                        query_param("timeout", "At most 2 minutes", &json!({ "type": "string" }), false)
                    ],
                    "responses": prom_responses()
                }
            },
            "/prometheus/api/v1/query_range": {
                "get": {
                    "summary": "Prometheus API: a PromQL range query (also POST with a form body)",
                    "parameters": [
                        query_param("query", "PromQL", &json!({ "type": "string" }), true),
                        query_param("start", "RFC 3339 or Unix seconds", &json!({ "type": "string" }), true),
                        query_param("end", "RFC 3339 or Unix seconds", &json!({ "type": "string" }), true),
                        query_param("step", "Seconds or a duration (1m)", &json!({ "type": "string" }), true),
                        query_param("timeout", "At most 2 minutes", &json!({ "type": "string" }), false)
                    ],
                    "responses": prom_responses()
                }
            },
            "/prometheus/api/v1/series": {
                "get": {
                    "summary": "Prometheus API: the label sets of the series matching match[] (also POST)",
                    "parameters": [query_param("match[]", "Series selectors (repeatable)", &json!({ "type": "string" }), true)],
                    "responses": prom_responses()
                }
            },
            "/prometheus/api/v1/labels": {
                "get": {
                    "summary": "Prometheus API: label names, of the series matching match[] if given (also POST)",
                    "responses": prom_responses()
                }
            },
            "/prometheus/api/v1/label/{name}/values": {
                "get": {
                    "summary": "Prometheus API: the values of a label (`__name__`: metric names)",
                    "parameters": [{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }],
                    "responses": prom_responses()
                }
            },
            "/prometheus/api/v1/metadata": {
                "get": { "summary": "Prometheus API: metric metadata (none is kept yet: an empty object)", "responses": prom_responses() }
            },
            "/prometheus/api/v1/status/buildinfo": {
                "get": { "summary": "Prometheus API: the Prometheus API version followed", "responses": prom_responses() }
            },
            "/prometheus/api/v1/format_query": {
                "get": {
                    "summary": "Prometheus API: a PromQL expression, formatted (also POST)",
                    "parameters": [query_param("query", "PromQL", &json!({ "type": "string" }), true)],
                    "responses": prom_responses()
                }
            },
            "/prometheus/api/v1/write": {
                "post": {
                    "summary": "Prometheus remote write 1.0 (snappy-compressed protobuf): each series stored as its metric name, labels as tags, samples in the field `value`",
                    "security": [{ "bearer": [] }, { "basic": [] }],
                    "requestBody": { "required": true, "content": { "application/x-protobuf": { "schema": { "type": "string", "format": "binary" } } }, "description": "A WriteRequest; Content-Encoding snappy" },
                    "responses": {
                        "204": { "description": "Every series stored" },
                        "400": error_response("Not a remote write request, or series that can never be taken (no __name__, duplicate labels, native histograms, a timestamp out of range): the good ones are stored, the others quarantined; not retried"),
                        "401": error_response("Unknown or missing token"),
                        "413": error_response("Too large; nothing stored: lower max_samples_per_send"),
                        "415": error_response("Not snappy or not protobuf"),
                        "429": error_response("Ingest memory or queue full; retried"),
                        "503": error_response("Storage cannot commit or shutting down; retried")
                    }
                }
            },
            "/write": {
                "post": {
                    "summary": "InfluxDB v1 line protocol ingest (Telegraf's influxdb output); answers as /api/v2/write does, errors in `error`",
                    "security": [{ "bearer": [] }, { "influxToken": [] }, { "basic": [] }, { "influxPassword": [] }],
                    "parameters": [
                        query_param("precision", "Unit of the timestamps", &json!({ "type": "string", "enum": ["n", "ns", "u", "us", "ms", "s", "m", "h"], "default": "ns" }), false),
                        query_param("db", "Accepted and ignored (one store)", &json!({ "type": "string" }), false),
                        query_param("rp", "Accepted and ignored", &json!({ "type": "string" }), false),
                        query_param("consistency", "Accepted and ignored", &json!({ "type": "string" }), false),
                        query_param("u", "User name, ignored", &json!({ "type": "string" }), false),
                        query_param("p", "The token", &json!({ "type": "string" }), false)
                    ],
                    "requestBody": { "required": true, "content": { "text/plain": { "schema": { "type": "string" } } }, "description": "Line protocol; Content-Encoding gzip, zstd or none" },
                    "responses": {
                        "204": { "description": "Every line stored" },
                        "400": error_response("Partial write (the good lines are stored; `rejected` lists the others) or a bad parameter"),
                        "401": error_response("Unknown or missing token"),
                        "413": error_response("Too large; nothing stored: split the write"),
                        "429": error_response("Ingest memory or queue full; retry after Retry-After"),
                        "503": error_response("Storage cannot commit or shutting down")
                    }
                }
            },
            "/query": {
                "post": {
                    "summary": "InfluxDB v1 statements: only `CREATE DATABASE`, which succeeds and does nothing (one store), for Telegraf's start-up",
                    "security": [{ "bearer": [] }, { "influxToken": [] }, { "basic": [] }, { "influxPassword": [] }],
                    "parameters": [query_param("q", "The statement (or in a form body)", &json!({ "type": "string" }), false)],
                    "responses": {
                        "200": { "description": "`{\"results\":[{\"statement_id\":0}]}`" },
                        "400": error_response("Any other statement: query with /prometheus/api/v1/query or /api/v1/query"),
                        "401": error_response("Unknown or missing token")
                    }
                }
            },
            "/ping": {
                "get": {
                    "summary": "InfluxDB v1 liveness (also HEAD): 204 with X-Influxdb-Version",
                    "responses": { "204": { "description": "Alive" } }
                }
            },
            "/api/v1/time": {
                "get": {
                    "summary": "The collector's clock, for an agent's first clock estimate (open: it tells nothing but the time)",
                    "responses": { "200": { "description": "When the request was received and answered (UTC ns)", "content": { "application/json": { "schema": {
                        "type": "object", "required": ["received_at", "replied_at"],
                        "properties": { "received_at": { "type": "integer" }, "replied_at": { "type": "integer" } }
                    } } } } }
                }
            },
            "/api/v1/query": {
                "get": {
                    "summary": "Raw points, or aggregates per step from the coarsest fitting rollup",
                    "parameters": [
                        query_param("name", "Measurement", &json!({ "type": "string" }), true),
                        query_param("field", "Field (default: every field)", &json!({ "type": "string" }), false),
                        query_param("from", "Inclusive start (default: the beginning)", &time.clone(), false),
                        query_param("to", "Exclusive end (default: the end)", &time.clone(), false),
                        query_param("step", "Bucket length, e.g. 1m; with no step and no agg: raw points", &json!({ "type": "string" }), false),
                        query_param("agg", "Comma-separated or repeated; default mean. Without step: one bucket for the whole range", &json!({ "type": "string", "enum": aggs }), false),
                        query_param("window", "Moving aggregate over this trailing duration at every step (a multiple of step)", &json!({ "type": "string" }), false),
                        query_param("format", "Answer format", &json!({ "type": "string", "enum": ["json", "csv"], "default": "json" }), false),
                        query_param("limit", "Most points in the answer (at most query.max_points)", &json!({ "type": "integer" }), false),
                        tag_param.clone()
                    ],
                    "responses": {
                        "200": { "description": "The series found", "content": {
                            "application/json": { "schema": { "type": "object", "properties": {
                                "series": { "type": "array", "items": { "$ref": "#/components/schemas/Series" } },
                                "source": { "type": "string", "description": "Aggregates: the rollup resolution that answered, or raw" },
                                "truncated": { "type": "boolean" }
                            } } },
                            "text/csv": { "schema": { "type": "string" } }
                        } },
                        "400": error_response("A parameter is wrong; the message says which")
                    }
                }
            },
            "/api/v1/series": {
                "get": {
                    "summary": "Series known, with their first and last timestamps",
                    "parameters": [
                        query_param("name", "Measurement (default: all)", &json!({ "type": "string" }), false),
                        query_param("limit", "Most series (1 to 10000)", &json!({ "type": "integer" }), false),
                        tag_param
                    ],
                    "responses": { "200": { "description": "The series", "content": { "application/json": { "schema": { "type": "object", "properties": {
                        "series": { "type": "array", "items": { "type": "object", "properties": {
                            "name": { "type": "string" }, "tags": { "type": "object" }, "field": { "type": "string" },
                            "kind": { "type": "string", "enum": ["float", "integer", "boolean", "string"] },
                            "first": { "type": "string" }, "last": { "type": "string" }
                        } } },
                        "truncated": { "type": "boolean" }
                    } } } } }, "400": error_response("A parameter is wrong") }
                }
            },
            "/api/v1/quarantine": {
                "get": {
                    "summary": "Records refused (by an agent's decoder, a cleaning rule, time sanity, or a bad line), with reasons",
                    "parameters": [
                        query_param("from", "Received at or after", &time.clone(), false),
                        query_param("to", "Received before", &time, false),
                        query_param("limit", "Most records (1 to 10000)", &json!({ "type": "integer" }), false)
                    ],
                    "responses": { "200": { "description": "The records, oldest first", "content": { "application/json": { "schema": { "type": "object", "properties": {
                        "records": { "type": "array", "items": { "type": "object", "properties": {
                            "id": { "type": "integer" }, "received_at": { "type": "string" },
                            "origin": { "type": "string", "enum": ["agent", "collector", "line_protocol", "remote_write"] },
                            "agent": { "type": "string", "nullable": true }, "source": { "type": "string" }, "topic": { "type": "string" },
                            "time": { "type": "string", "nullable": true }, "payload": { "type": "string" },
                            "payload_encoding": { "type": "string", "enum": ["text", "hex"] }, "reason": { "type": "string" }
                        } } },
                        "truncated": { "type": "boolean" }
                    } } } } }, "400": error_response("A parameter is wrong") }
                }
            },
            "/api/v1/agents": {
                "get": {
                    "summary": "Every agent: status (ok, late, silent, never_seen by the age of its last request against [fleet] late_after and silent_after), last seen, client version, points stored in the last whole minute, marks, points received, reported backlog and lag, clock skew, and `health`: the newest figures it reported about itself (tributary_agent points); and `summary`: the counts by status and the thresholds",
                    "responses": { "200": { "description": "The agents", "content": { "application/json": { "schema": { "type": "object", "properties": {
                        "summary": { "type": "object", "properties": {
                            "generated_at": { "type": "string", "format": "date-time" },
                            "late_after_seconds": { "type": "number" },
                            "silent_after_seconds": { "type": "number" },
                            "ok": { "type": "integer" }, "late": { "type": "integer" },
                            "silent": { "type": "integer" }, "never_seen": { "type": "integer" }
                        } },
                        "agents": { "type": "array", "items": { "type": "object", "properties": {
                            "id": { "type": "string" },
                            "status": { "type": "string", "enum": ["ok", "late", "silent", "never_seen"] },
                            "version": { "type": "string", "nullable": true },
                            "points_per_minute": { "type": "integer" }
                        } } }
                    } } } } } }
                }
            },
            "/api/v1/openapi.json": {
                "get": { "summary": "This document", "responses": { "200": { "description": "OpenAPI 3.0", "content": { "application/json": { "schema": { "type": "object" } } } } } }
            },
            "/healthz": {
                "get": { "summary": "The store answers reads and its writer can commit", "responses": {
                    "200": { "description": "Healthy", "content": { "application/json": { "schema": { "type": "object" } } } },
                    "503": error_response("The store does not answer, or cannot commit (a full disk, I/O errors); the error says why and since when")
                } }
            },
            "/": {
                "get": { "summary": "The web console (HTML; its scripts read this API with a reader's token)", "responses": {
                    "200": { "description": "The console's page", "content": { "text/html": { "schema": { "type": "string" } } } }
                } }
            },
            "/console/{file}": {
                "get": { "summary": "The console's scripts, styles and vendored uPlot (ETag, gzip)", "parameters": [
                    { "name": "file", "in": "path", "required": true, "schema": { "type": "string" } }
                ], "responses": {
                    "200": { "description": "The file" },
                    "304": { "description": "Not modified (If-None-Match)" },
                    "404": { "description": "No such file" }
                } }
            },
            "/metrics": {
                "get": { "summary": "Prometheus text: the collector's counters and each agent's reported health", "responses": {
                    "200": { "description": "Metrics", "content": { "text/plain": { "schema": { "type": "string" } } } }
                } }
            }
        }
    });
    // Reads share their gate: a reader's token, 401 without one, 403 with an agent's.
    for (method, path, gate) in crate::api::routes() {
        if gate != crate::api::Gate::Read {
            continue;
        }
        let operation = doc
            .get_mut("paths")
            .and_then(|paths| paths.get_mut(path))
            .and_then(|item| item.get_mut(method))
            .and_then(Value::as_object_mut);
        if let Some(operation) = operation {
            operation.insert("security".into(), json!([{ "reader": [] }]));
            if let Some(responses) = operation
                .entry("responses")
                .or_insert_with(|| json!({}))
                .as_object_mut()
            {
                responses.insert(
                    "401".into(),
                    error_response("No token, or an unknown one (unless server.anonymous_read)"),
                );
                responses.insert(
                    "403".into(),
                    error_response("An agent's token: agents write, readers read"),
                );
                responses.insert(
                    "429".into(),
                    error_response("Over this token's server.rate_limit; retry after Retry-After"),
                );
            }
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each documented route reaches a handler of the real router (no 404, no 405), and a
    /// path that is not documented does not.
    #[tokio::test]
    async fn the_router_serves_every_documented_route() {
        use std::sync::Arc;

        use crate::api::{AppState, memory::IngestMemory, router};
        use crate::config::Config;

        let dir = tempfile::tempdir().unwrap();
        let config = Config::load_str("", std::path::Path::new("empty.toml")).unwrap();
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let mut options = config.storage_options();
        options.path = dir.path().join("c.db");
        let storage = crate::storage::Storage::open(&options, Arc::clone(&metrics)).unwrap();
        let state = Arc::new(AppState {
            storage,
            auth: crate::auth::Authenticator::new(config.access()),
            metrics,
            limits: config.ingest_limits(),
            memory: IngestMemory::new(config.ingest_memory, config.ingest_wait),
            query_max_points: config.query_max_points,
            resolutions: config.resolutions.clone(),
            limiter: crate::api::limit::RateLimiter::new(config.rate_limit, config.rate_burst),
            fleet: crate::api::fleet::Fleet::new(config.late_after, config.silent_after),
        });
        let app = router(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let status_of = async |method: &str, path: &str| -> u16 {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let request = format!(
                "{} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                method.to_uppercase()
            );
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.unwrap();
            String::from_utf8_lossy(&answer)
                .split_whitespace()
                .nth(1)
                .and_then(|code| code.parse().ok())
                .unwrap_or(0)
        };
        let doc = document();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                // A path parameter the route must find: a real file of the console.
                let concrete = path.replace("{file}", "app.js");
                let status = status_of(method, &concrete).await;
                assert!(
                    status != 0 && status != 404 && status != 405,
                    "{method} {path} answered {status}"
                );
            }
        }
        assert_eq!(status_of("get", "/api/v1/nothing-here").await, 404);
        server.abort();
    }

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        let mut documented: Vec<(String, String)> = paths
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .map(move |method| (method.clone(), path.clone()))
            })
            .collect();
        documented.sort();
        let mut served: Vec<(String, String)> = crate::api::routes()
            .into_iter()
            .map(|(m, p, _)| (m.to_owned(), p.to_owned()))
            .collect();
        served.sort();
        assert_eq!(documented, served);
        for (method, path, gate) in crate::api::routes() {
            let operation = &doc["paths"][path][method];
            assert_eq!(
                gate == crate::api::Gate::Read,
                operation["security"] == json!([{ "reader": [] }]),
                "{method} {path}: documented as a read exactly when it is gated as one"
            );
        }
        for (path, item) in paths {
            for (method, operation) in item.as_object().unwrap() {
                assert!(
                    operation["responses"].is_object(),
                    "{method} {path} has responses"
                );
                assert!(
                    operation["summary"].is_string(),
                    "{method} {path} has a summary"
                );
            }
        }
    }
}
