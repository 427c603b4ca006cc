//! The http input: requests a URL on a schedule and parses the answer.
//!
//! GET, or POST with a `body`; `headers`; basic (`username`, `password`) or bearer
//! (`bearer_token`) authentication; a `timeout`; TLS with the system roots plus `ca_file`, or
//! `insecure_skip_verify` for self-signed devices. A status outside `success_status` (default:
//! any 2xx) fails the poll. Formats: `json` (the whole document flattened, or, with
//! `json_fields`, only the members those JSON pointers select, plus `json_tags` and
//! `json_time`), `influx`, `value`, `lines`, and `prometheus` (the text exposition, see
//! [`super::prometheus`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::Value;
use tributary_common::config::values::RawSize;
use tributary_common::config::{ConfigError, Source};
use tributary_wire::time::{parse_rfc3339, unix_to_ns};
use tributary_wire::{FieldValue, Point};
use url::Url;

use super::polled::{PollError, Polled, PolledSettings, raw_timing};
use crate::format::{DecodeContext, Decoded, Format, decode};
use tributary_common::choices;
use tributary_common::config::values::{duration, read_pem, size};

/// `[[inputs.http]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub name: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub interval: Option<String>,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub jitter: Option<String>,
    pub url: Option<String>,
    /// `GET` (default) or `POST`.
    pub method: Option<String>,
    /// Request body (POST).
    pub body: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub bearer_token: Option<String>,
    /// Whole-request timeout. Default: 5s.
    pub timeout: Option<String>,
    /// Extra CA certificate (PEM) for `https` URLs.
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate (self-signed devices). Off by default.
    pub insecure_skip_verify: Option<bool>,
    /// Statuses that count as success. Default: any 2xx.
    #[serde(default)]
    pub success_status: Vec<u16>,
    /// `json`, `influx`, `value`, `lines` or `prometheus`.
    pub format: Option<HttpFormat>,
    /// JSON members that become tags (whole-document mode).
    #[serde(default)]
    pub tag_keys: Vec<String>,
    /// Field name -> JSON pointer (RFC 6901), e.g. `{ temp = "/sensors/0/value" }`.
    #[serde(default)]
    pub json_fields: BTreeMap<String, String>,
    /// Tag name -> JSON pointer.
    #[serde(default)]
    pub json_tags: BTreeMap<String, String>,
    /// JSON pointer to the timestamp (RFC 3339 or Unix time).
    pub json_time: Option<String>,
    /// Largest body read. Default: 4MiB.
    pub max_body: Option<RawSize>,
}

/// How an http input reads bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(try_from = "String")]
pub enum HttpFormat {
    #[default]
    Json,
    Influx,
    Value,
    Lines,
    Prometheus,
}

choices!(HttpFormat, "http format", {
    "json" => HttpFormat::Json,
    "influx" => HttpFormat::Influx,
    "value" => HttpFormat::Value,
    "lines" => HttpFormat::Lines,
    "prometheus" => HttpFormat::Prometheus,
});

/// Members picked out of a JSON document by pointers.
#[derive(Debug, Clone, Default)]
pub struct JsonSelection {
    pub fields: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    pub time: Option<String>,
}

/// A checked `[[inputs.http]]`.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub common: PolledSettings,
    pub url: Url,
    pub post_body: Option<String>,
    pub headers: HeaderMap,
    pub basic: Option<(String, Option<String>)>,
    pub bearer: Option<String>,
    pub timeout: Duration,
    pub ca_pem: Option<Vec<u8>>,
    pub insecure: bool,
    pub success_status: Vec<u16>,
    pub format: HttpFormat,
    pub tag_keys: Vec<String>,
    pub selection: Option<JsonSelection>,
    pub max_body: usize,
}

impl RawHttp {
    pub fn resolve(self, index: usize, source: &Source) -> Result<HttpConfig, ConfigError> {
        let timing = raw_timing!(self);
        let common = PolledSettings::resolve("http", index, self.name, self.tags, &timing, source)?;
        let key = |name: &str| common.key(name);
        let text = self.url.ok_or_else(|| {
            source.error(
                key("url"),
                "missing; e.g. url = \"http://127.0.0.1:9100/metrics\"",
            )
        })?;
        let url = Url::parse(&text)
            .map_err(|e| source.error(key("url"), format!("{text:?} is not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(source.error(
                key("url"),
                format!("{text:?} must be http:// or https:// with a host"),
            ));
        }
        let post_body = match self
            .method
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("GET") => {
                if self.body.is_some() {
                    return Err(source.error(
                        key("body"),
                        "is set, but method is GET; set method = \"POST\"",
                    ));
                }
                None
            }
            Some("POST") => Some(self.body.unwrap_or_default()),
            Some(other) => {
                return Err(source.error(
                    key("method"),
                    format!("{other:?} is not supported; use \"GET\" or \"POST\""),
                ));
            }
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                source.error(
                    key(&format!("headers.{name}")),
                    "is not a valid header name",
                )
            })?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                source.error(
                    key(&format!("headers.{name}")),
                    "is not a valid header value",
                )
            })?;
            headers.insert(header, value);
        }
        if self.username.is_some() && self.bearer_token.is_some() {
            return Err(source.error(
                key("bearer_token"),
                "set either username/password or bearer_token, not both",
            ));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(source.error(key("password"), "is set without a username"));
        }
        let ca_pem = match &self.ca_file {
            Some(path) => Some(read_pem(source, &key("ca_file"), path)?),
            None => None,
        };
        let timeout = duration(source, &key("timeout"), self.timeout.as_deref(), "5s")?;
        if timeout.is_zero() {
            return Err(source.error(key("timeout"), "must be above zero"));
        }
        for status in &self.success_status {
            if !(100..=599).contains(status) {
                return Err(source.error(
                    key("success_status"),
                    format!("{status} is not an HTTP status"),
                ));
            }
        }
        let format = self.format.unwrap_or_default();
        let selected =
            !self.json_fields.is_empty() || !self.json_tags.is_empty() || self.json_time.is_some();
        let selection = if selected {
            if format != HttpFormat::Json {
                return Err(source.error(
                    key("json_fields"),
                    "json_fields, json_tags and json_time need format = \"json\"",
                ));
            }
            if self.json_fields.is_empty() {
                return Err(source.error(
                    key("json_fields"),
                    "needs at least one field when json_tags or json_time is set",
                ));
            }
            for (table, pointers) in [
                ("json_fields", &self.json_fields),
                ("json_tags", &self.json_tags),
            ] {
                for (name, pointer) in pointers {
                    check_pointer(pointer)
                        .map_err(|m| source.error(key(&format!("{table}.{name}")), m))?;
                }
            }
            if let Some(pointer) = &self.json_time {
                check_pointer(pointer).map_err(|m| source.error(key("json_time"), m))?;
            }
            Some(JsonSelection {
                fields: self.json_fields,
                tags: self.json_tags,
                time: self.json_time,
            })
        } else {
            None
        };
        let max_body = size(source, &key("max_body"), self.max_body, "4MiB")?;
        Ok(HttpConfig {
            common,
            url,
            post_body,
            headers,
            basic: self.username.map(|user| (user, self.password)),
            bearer: self.bearer_token,
            timeout,
            ca_pem,
            insecure: self.insecure_skip_verify.unwrap_or(false),
            success_status: self.success_status,
            format,
            tag_keys: self.tag_keys,
            selection,
            max_body: usize::try_from(max_body).unwrap_or(usize::MAX),
        })
    }
}

/// Checks RFC 6901 syntax: empty (the whole document) or `/`-separated tokens in which `~`
/// is only used as `~0` or `~1`.
pub fn check_pointer(pointer: &str) -> Result<(), String> {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(format!(
            "{pointer:?} is not a JSON pointer: it must start with '/' (e.g. \"/data/temp\")"
        ));
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!(
                "{pointer:?} is not a JSON pointer: '~' must be written ~0 and '/' inside a name ~1"
            ));
        }
    }
    Ok(())
}

/// Requests one `[[inputs.http]]`.
pub struct HttpPoller {
    config: HttpConfig,
    client: reqwest::Client,
}

impl HttpPoller {
    pub fn new(config: HttpConfig) -> Result<HttpPoller, reqwest::Error> {
        crate::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("tributary-agent/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(config.insecure);
        if let Some(pem) = &config.ca_pem {
            for certificate in reqwest::Certificate::from_pem_bundle(pem)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        Ok(HttpPoller {
            client: builder.build()?,
            config,
        })
    }

    pub async fn poll(&mut self, at: i64) -> Result<Polled, PollError> {
        let config = &self.config;
        let url = config.url.as_str();
        let mut request = match &config.post_body {
            Some(body) => self.client.post(config.url.clone()).body(body.clone()),
            None => self.client.get(config.url.clone()),
        };
        request = request.headers(config.headers.clone());
        if let Some((user, password)) = &config.basic {
            request = request.basic_auth(user, password.as_ref());
        }
        if let Some(token) = &config.bearer {
            request = request.bearer_auth(token);
        }
        let mut response = request.send().await.map_err(|e| {
            let kind = if e.is_timeout() { "timeout" } else { "request" };
            PollError::new(kind, format!("{url}: {}", crate::forward::error_chain(&e)))
        })?;
        let status = response.status();
        let ok = if config.success_status.is_empty() {
            status.is_success()
        } else {
            config.success_status.contains(&status.as_u16())
        };
        if !ok {
            return Err(PollError::new("status", format!("{url} answered {status}")));
        }
        let mut body = Vec::new();
        let mut cut = false;
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            PollError::new(
                "request",
                format!("reading {url}: {}", crate::forward::error_chain(&e)),
            )
        })? {
            if body.len() + chunk.len() > config.max_body {
                cut = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        if cut {
            return Err(PollError::new(
                "body_too_large",
                format!(
                    "{url}: the body is larger than max_body ({} bytes)",
                    config.max_body
                ),
            ));
        }
        let decoded = self.decode(&body, at);
        Ok(Polled {
            points: decoded.points,
            rejected: decoded.rejected,
            origin: url.to_owned(),
            ..Polled::default()
        })
    }

    /// Turns a body into points, by the configured format.
    pub fn decode(&self, body: &[u8], at: i64) -> Decoded {
        let config = &self.config;
        let format = match config.format {
            HttpFormat::Prometheus => {
                return match std::str::from_utf8(body) {
                    Ok(text) => super::prometheus::parse(text, at),
                    Err(e) => Decoded::reject_all(body, format!("body is not UTF-8: {e}")),
                };
            }
            HttpFormat::Json => match &config.selection {
                Some(selection) => return select(body, selection, &config.common.name, at),
                None => Format::Json,
            },
            HttpFormat::Influx => Format::Influx,
            HttpFormat::Value => Format::Value,
            HttpFormat::Lines => Format::Lines,
        };
        let ctx = DecodeContext {
            name: &config.common.name,
            received_at: at,
            tag_keys: &config.tag_keys,
        };
        decode(format, body, &ctx)
    }
}

/// One point from the members `selection` points at.
fn select(body: &[u8], selection: &JsonSelection, name: &str, at: i64) -> Decoded {
    let document: Value = match serde_json::from_slice(body) {
        Ok(document) => document,
        Err(e) => return Decoded::reject_all(body, format!("invalid JSON: {e}")),
    };
    let mut point = Point::new(name, at);
    let mut missing = Vec::new();
    for (field, pointer) in &selection.fields {
        let value = match document.pointer(pointer) {
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) => FieldValue::I64(i),
                None => FieldValue::F64(n.as_f64().unwrap_or(f64::NAN)),
            },
            Some(Value::Bool(b)) => FieldValue::Bool(*b),
            Some(Value::String(s)) => FieldValue::Str(s.clone()),
            Some(Value::Null) | None => {
                missing.push(pointer.as_str());
                continue;
            }
            Some(_) => {
                return Decoded::reject_all(
                    body,
                    format!(
                        "json_fields.{field} ({pointer}) selects an object or array, not a value"
                    ),
                );
            }
        };
        point.fields.insert(field.clone(), value);
    }
    if point.fields.is_empty() {
        return Decoded::reject_all(
            body,
            format!(
                "none of json_fields was found (missing: {})",
                missing.join(", ")
            ),
        );
    }
    for (tag, pointer) in &selection.tags {
        let value = match document.pointer(pointer) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::Bool(b)) => b.to_string(),
            _ => continue,
        };
        point.tags.insert(tag.clone(), value);
    }
    if let Some(pointer) = &selection.time {
        let ts = match document.pointer(pointer) {
            Some(Value::String(s)) => parse_rfc3339(s),
            Some(Value::Number(n)) => n.as_f64().and_then(unix_to_ns),
            _ => None,
        };
        match ts {
            Some(ts) => point.ts = ts,
            None => {
                return Decoded::reject_all(
                    body,
                    format!("json_time ({pointer}) is missing or not a time"),
                );
            }
        }
    }
    Decoded {
        points: vec![point],
        rejected: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
