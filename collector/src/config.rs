//! The collector's configuration: raw structs as read from TOML, and the checked [`Config`].
//!
//! `config/collector.toml` documents every key with its default; a test loads it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tributary_common::config::values::{self, RawSize, duration, parse_duration};
use tributary_common::config::{ConfigError, Resolve, Source};

use crate::auth::TokenHash;
use crate::clean::config::{RawClean, RawTime, resolve_rules, resolve_time};
use crate::clean::{Rule, TimeSanity};
use crate::rollup::Resolution;
use crate::storage::StorageOptions;
use crate::tls::TlsFiles;

/// Prefix of environment overrides: `TRIBUTARY_COLLECTOR__SERVER__LISTEN=…`.
pub const ENV_PREFIX: &str = "TRIBUTARY_COLLECTOR";

/// The whole file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub query: RawQuery,
    /// One table per agent allowed to send.
    #[serde(default)]
    pub agents: Vec<RawAgent>,
    /// One table per reader token (queries, listings; Grafana, the console).
    #[serde(default)]
    pub readers: Vec<RawAgent>,
    #[serde(default)]
    pub clean: RawClean,
    #[serde(default)]
    pub time: RawTime,
    #[serde(default)]
    pub rollups: RawRollups,
    /// How long data is kept: `raw`, and one key per rollup resolution (e.g. `"1m"`).
    #[serde(default)]
    pub retention: BTreeMap<String, String>,
    /// Where stored data is sent on.
    #[serde(default)]
    pub exports: RawExports,
    #[serde(default)]
    pub fleet: RawFleet,
}

/// `[fleet]`: when an agent counts as late or silent.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    pub late_after: Option<String>,
    pub silent_after: Option<String>,
}

/// `[exports]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExports {
    /// `[[exports.remote_write]]`: Prometheus remote write receivers.
    #[serde(default)]
    pub remote_write: Vec<RawRemoteWrite>,
}

/// `[[exports.remote_write]]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRemoteWrite {
    pub name: Option<String>,
    pub url: Option<String>,
    pub bearer_token: Option<String>,
    pub basic_auth: Option<RawBasicAuth>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(rename = "match", default)]
    pub matcher: Option<crate::clean::config::RawMatch>,
    pub batch_size: Option<usize>,
    pub concurrency: Option<usize>,
    pub timeout: Option<String>,
    pub poll_interval: Option<String>,
}

/// `basic_auth = { username = "…", password = "…" }`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBasicAuth {
    pub username: Option<String>,
    pub password: Option<String>,
}

/// `[rollups]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollups {
    /// Window lengths, finest first, each a multiple of the one before.
    pub resolutions: Option<Vec<String>>,
    /// How often retention runs.
    pub retention_interval: Option<String>,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Address to listen on.
    pub listen: Option<String>,
    /// Largest request body as received (compressed).
    pub max_body_size: Option<RawSize>,
    /// Largest request body after decompression.
    pub max_decompressed_size: Option<RawSize>,
    /// Largest batch once decoded (estimated heap bytes).
    pub max_decoded_size: Option<RawSize>,
    /// Most points (and rejects, or lines of line protocol) in one request.
    pub max_batch_points: Option<usize>,
    /// What all ingest requests may hold in memory at once: bodies, decompressed bodies and
    /// decoded batches waiting for the storage writer.
    pub ingest_memory: Option<RawSize>,
    /// How long a request body may take to arrive.
    pub body_timeout: Option<String>,
    /// Batches decoded and waiting for the storage writer.
    pub ingest_queue: Option<usize>,
    /// How long a request waits for room in that queue before the answer is 429.
    pub ingest_wait: Option<String>,
    /// How long shutdown may take.
    pub shutdown_timeout: Option<String>,
    /// TLS on the listener: the certificate chain (PEM), with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by these CAs (PEM): mTLS.
    pub tls_client_ca: Option<PathBuf>,
    /// Reads need no token (default false: a reader's token).
    pub anonymous_read: Option<bool>,
    /// Requests per second per token, on average; 0: no limit.
    pub rate_limit: Option<u32>,
    /// Requests per token at once before the average applies.
    pub rate_burst: Option<u32>,
}

/// `[storage]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// The SQLite database file.
    pub path: Option<PathBuf>,
    /// A PostgreSQL server that collectors share (`postgres://user@host:5432/db?sslmode=…`),
    /// in place of `path`.
    pub url: Option<String>,
    /// Most points committed in one transaction (group commit across batches).
    pub commit_max_points: Option<usize>,
    /// Read connections for queries.
    pub readers: Option<usize>,
}

/// `[query]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuery {
    /// Most points one query answers with; more are cut and the answer says `truncated`.
    pub max_points: Option<usize>,
}

/// `[[agents]]` and `[[readers]]`: who holds a token.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    pub id: Option<String>,
    /// SHA-256 of the token, lowercase hex (`tributary-collector token` prints both).
    pub token_sha256: Option<String>,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub max_body_size: usize,
    pub max_decompressed_size: usize,
    pub max_decoded_size: usize,
    pub max_batch_points: usize,
    pub ingest_memory: usize,
    pub body_timeout: Duration,
    pub ingest_queue: usize,
    pub ingest_wait: Duration,
    pub shutdown_timeout: Duration,
    pub storage_path: PathBuf,
    /// The PostgreSQL store (`[storage] url`), in place of `storage_path`.
    pub storage_url: Option<String>,
    pub commit_max_points: usize,
    pub readers: usize,
    pub query_max_points: usize,
    /// Token hash -> agent id.
    pub agents: HashMap<TokenHash, String>,
    /// Every configured agent id, with a token or without (known by its mTLS client
    /// certificate only).
    pub agent_ids: Vec<String>,
    /// Token hash -> reader id (`[[readers]]`).
    pub reader_tokens: HashMap<TokenHash, String>,
    /// Reads need no token.
    pub anonymous_read: bool,
    /// An agent not heard from for longer than these is late, then silent (`[fleet]`).
    pub late_after: Duration,
    pub silent_after: Duration,
    /// Requests per second per token (0: no limit), and the burst.
    pub rate_limit: u32,
    pub rate_burst: u32,
    pub rules: Vec<Rule>,
    pub time: TimeSanity,
    /// Rollup resolutions, finest first, with their retention.
    pub resolutions: Vec<Resolution>,
    /// How long raw points are kept (ns); `None`: forever.
    pub raw_retention: Option<i64>,
    pub retention_interval: Duration,
    /// TLS on the listener, checked (the files load and go together).
    pub tls: Option<TlsFiles>,
    /// `[[exports.remote_write]]`, checked.
    pub exports: Vec<crate::export::RemoteWriteExport>,
}

impl Config {
    /// Loads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        tributary_common::config::load_file::<RawConfig>(path)
    }

    /// Loads and checks configuration text; `path` names it in messages.
    pub fn load_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        tributary_common::config::load_text::<RawConfig>(text, path)
    }
}

impl Config {
    /// What one ingest request may send and become.
    pub fn ingest_limits(&self) -> crate::api::IngestLimits {
        crate::api::IngestLimits {
            max_body_size: self.max_body_size,
            max_decompressed_size: self.max_decompressed_size,
            max_decoded_size: self.max_decoded_size,
            max_batch_points: self.max_batch_points,
            body_timeout: self.body_timeout,
            ingest_wait: self.ingest_wait,
        }
    }

    /// How storage is to be set up.
    /// Who may write and read.
    pub fn access(&self) -> crate::auth::Access {
        crate::auth::Access {
            agents: self.agents.clone(),
            agent_ids: self.agent_ids.iter().cloned().collect(),
            readers: self.reader_tokens.clone(),
            anonymous_read: self.anonymous_read,
        }
    }

    /// The store, as logs and `check` name it (a server without its password).
    pub fn storage_description(&self) -> String {
        match &self.storage_url {
            Some(url) => format!("PostgreSQL {}", crate::storage::postgres::redact(url)),
            None => format!("SQLite {}", self.storage_path.display()),
        }
    }

    pub fn storage_options(&self) -> StorageOptions {
        StorageOptions {
            path: self.storage_path.clone(),
            url: self.storage_url.clone(),
            commit_max_points: self.commit_max_points,
            queue: self.ingest_queue,
            readers: self.readers,
            rules: self.rules.clone(),
            time: self.time.clone(),
            resolutions: self.resolutions.clone(),
            raw_retention: self.raw_retention,
            export_feed: !self.exports.is_empty(),
            ..StorageOptions::new(&self.storage_path)
        }
    }
}

impl Resolve for RawConfig {
    type Checked = Config;
    const ENV_PREFIX: &'static str = ENV_PREFIX;

    /// The second stage: checks every value and fills in defaults.
    fn resolve(self, source: &Source) -> Result<Config, ConfigError> {
        let raw = self;
        let listen_text = raw.server.listen.as_deref().unwrap_or("127.0.0.1:8080");
        let listen = listen_text.parse().map_err(|e| {
            source.error(
                "server.listen",
                format!("{listen_text:?} is not an address like 127.0.0.1:8080 ({e})"),
            )
        })?;
        let tls = resolve_tls(&raw.server, source)?;
        let rate_limit = raw.server.rate_limit.unwrap_or(100);
        let rate_burst = raw
            .server
            .rate_burst
            .unwrap_or(rate_limit.saturating_mul(2));
        if rate_limit > 0 && rate_burst == 0 {
            return Err(source.error(
                "server.rate_burst",
                "must be at least 1 while server.rate_limit is on",
            ));
        }
        let size = |key: &str, value: Option<RawSize>, default: &str| {
            values::size(source, key, value, default)
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
        };
        let max_body_size = size("server.max_body_size", raw.server.max_body_size, "16MiB")?;
        let max_decompressed_size = size(
            "server.max_decompressed_size",
            raw.server.max_decompressed_size,
            "64MiB",
        )?;
        if max_decompressed_size < max_body_size {
            return Err(source.error(
                "server.max_decompressed_size",
                "must be at least server.max_body_size",
            ));
        }
        let max_decoded_size = size(
            "server.max_decoded_size",
            raw.server.max_decoded_size,
            "64MiB",
        )?;
        let max_batch_points = raw.server.max_batch_points.unwrap_or(100_000);
        if max_batch_points == 0 {
            return Err(source.error("server.max_batch_points", "must be at least 1"));
        }
        let ingest_memory = size("server.ingest_memory", raw.server.ingest_memory, "512MiB")?;
        let one_request = max_body_size
            .saturating_add(max_decompressed_size)
            .saturating_add(max_decoded_size);
        if ingest_memory < one_request {
            return Err(source.error(
                "server.ingest_memory",
                format!(
                    "must hold at least one request at its limits: max_body_size + max_decompressed_size + max_decoded_size = {one_request} bytes"
                ),
            ));
        }
        let body_timeout = duration(
            source,
            "server.body_timeout",
            raw.server.body_timeout.as_deref(),
            "30s",
        )?;
        let ingest_queue = raw.server.ingest_queue.unwrap_or(16);
        if ingest_queue == 0 {
            return Err(source.error("server.ingest_queue", "must be at least 1"));
        }
        let ingest_wait = duration(
            source,
            "server.ingest_wait",
            raw.server.ingest_wait.as_deref(),
            "5s",
        )?;
        let shutdown_timeout = duration(
            source,
            "server.shutdown_timeout",
            raw.server.shutdown_timeout.as_deref(),
            "10s",
        )?;

        let commit_max_points = raw.storage.commit_max_points.unwrap_or(50_000);
        if commit_max_points == 0 {
            return Err(source.error("storage.commit_max_points", "must be at least 1"));
        }
        let storage_url = match (&raw.storage.path, raw.storage.url) {
            (Some(_), Some(_)) => {
                return Err(source.error(
                    "storage.url",
                    "give either path (SQLite) or url (PostgreSQL), not both",
                ));
            }
            (_, Some(url)) => {
                if !crate::storage::postgres::is_postgres_url(&url) {
                    return Err(
                        source.error("storage.url", "must be a postgres:// or postgresql:// URL")
                    );
                }
                if let Err(e) = url.parse::<::postgres::Config>() {
                    return Err(source.error("storage.url", format!("is not a valid URL: {e}")));
                }
                Some(url)
            }
            (_, None) => None,
        };
        let readers = raw.storage.readers.unwrap_or(4);
        if !(1..=64).contains(&readers) {
            return Err(source.error("storage.readers", "must be between 1 and 64"));
        }
        let query_max_points = raw.query.max_points.unwrap_or(1_000_000);
        if query_max_points == 0 {
            return Err(source.error("query.max_points", "must be at least 1"));
        }

        let mtls = tls.as_ref().is_some_and(|files| files.client_ca.is_some());
        let (agents, agent_ids) =
            resolve_tokens(raw.agents, "agents", &HashMap::new(), mtls, source)?;
        let (reader_tokens, _) = resolve_tokens(raw.readers, "readers", &agents, false, source)?;
        let rules = resolve_rules(raw.clean, source)?;
        let time = resolve_time(&raw.time, source)?;
        let (resolutions, raw_retention) =
            resolve_rollups(raw.rollups.resolutions, raw.retention, source)?;
        let retention_interval = duration(
            source,
            "rollups.retention_interval",
            raw.rollups.retention_interval.as_deref(),
            "10m",
        )?;
        let exports = resolve_exports(raw.exports, source)?;
        let late_after = duration(
            source,
            "fleet.late_after",
            raw.fleet.late_after.as_deref(),
            "3m",
        )?;
        let silent_after = duration(
            source,
            "fleet.silent_after",
            raw.fleet.silent_after.as_deref(),
            "15m",
        )?;
        if silent_after <= late_after {
            return Err(source.error(
                "fleet.silent_after",
                format!("must be longer than fleet.late_after ({late_after:?})"),
            ));
        }
        Ok(Config {
            late_after,
            silent_after,
            exports,
            tls,
            rules,
            time,
            resolutions,
            raw_retention,
            retention_interval,
            listen,
            max_body_size,
            max_decompressed_size,
            max_decoded_size,
            max_batch_points,
            ingest_memory,
            body_timeout,
            ingest_queue,
            ingest_wait,
            shutdown_timeout,
            storage_path: raw
                .storage
                .path
                .unwrap_or_else(|| PathBuf::from("/var/lib/tributary/collector.db")),
            storage_url,
            commit_max_points,
            readers,
            query_max_points,
            agents,
            agent_ids,
            reader_tokens,
            anonymous_read: raw.server.anonymous_read.unwrap_or(false),
            rate_limit,
            rate_burst,
        })
    }
}

/// `[[agents]]` or `[[readers]]` (`table`): ids present and unique, hashes valid, and no token
/// given twice, here or in `others` (an agent's token may not also read, nor a reader's write).
/// With `certificate_only`, a holder may go without a token: an agent known by its mTLS client
/// certificate alone. Returns the tokens' holders and every id, in order.
fn resolve_tokens(
    raw: Vec<RawAgent>,
    table: &str,
    others: &HashMap<TokenHash, String>,
    certificate_only: bool,
    source: &Source,
) -> Result<(HashMap<TokenHash, String>, Vec<String>), ConfigError> {
    let mut holders = HashMap::new();
    let mut ids = HashMap::new();
    let mut order = Vec::new();
    for (index, holder) in raw.into_iter().enumerate() {
        let key = |name: &str| format!("{table}[{index}].{name}");
        let id = holder
            .id
            .filter(|id| !id.trim().is_empty())
            .ok_or_else(|| source.error(key("id"), "missing or empty"))?;
        if let Some(first) = ids.insert(id.clone(), index) {
            return Err(source.error(
                key("id"),
                format!("{id:?} is already configured at {table}[{first}]"),
            ));
        }
        order.push(id.clone());
        let hash_text = match holder.token_sha256 {
            Some(text) => text,
            None if certificate_only => continue,
            None if table == "agents" => {
                return Err(source.error(
                    key("token_sha256"),
                    "missing; `tributary-collector token` prints a token and its hash (an agent may go without one only when server.tls_client_ca is set: its client certificate names it)",
                ));
            }
            None => {
                return Err(source.error(
                    key("token_sha256"),
                    "missing; `tributary-collector token --reader NAME` prints a block to paste",
                ));
            }
        };
        let hash =
            TokenHash::parse(&hash_text).map_err(|m| source.error(key("token_sha256"), m))?;
        if let Some(other) = others.get(&hash) {
            return Err(source.error(
                key("token_sha256"),
                format!("the same token is already agent {other:?}'s; a token either writes (agents) or reads (readers)"),
            ));
        }
        if let Some(other) = holders.insert(hash, id.clone()) {
            return Err(source.error(
                key("token_sha256"),
                format!("the same token is already given to {other:?}; each needs its own"),
            ));
        }
    }
    Ok((holders, order))
}

/// `[[exports.remote_write]]`: names present and unique, a URL, one way to authenticate.
fn resolve_exports(
    raw: RawExports,
    source: &Source,
) -> Result<Vec<crate::export::RemoteWriteExport>, ConfigError> {
    use crate::export::{Auth, RemoteWriteExport};
    let mut out: Vec<RemoteWriteExport> = Vec::new();
    for (index, export) in raw.remote_write.into_iter().enumerate() {
        let key = |name: &str| format!("exports.remote_write[{index}].{name}");
        let err = |name: &str, message: String| source.error(key(name), message);
        let name = export
            .name
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| {
                err(
                    "name",
                    "missing: each export needs a name (its cursor and metrics label)".into(),
                )
            })?;
        if out.iter().any(|e| e.name == name) {
            return Err(err("name", format!("{name:?} is already an export's name")));
        }
        let url = export
            .url
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
            .ok_or_else(|| err("url", "missing, or not an http:// or https:// URL (the receiver's remote write endpoint)".into()))?;
        let auth = match (export.bearer_token, export.basic_auth) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "basic_auth",
                    "give bearer_token or basic_auth, not both".into(),
                ));
            }
            (Some(token), None) => Auth::Bearer(token),
            (None, Some(basic)) => Auth::Basic {
                username: basic
                    .username
                    .ok_or_else(|| err("basic_auth.username", "missing".into()))?,
                password: basic.password.unwrap_or_default(),
            },
            (None, None) => Auth::None,
        };
        let matcher = match export.matcher {
            Some(raw) => Some(std::sync::Arc::new(raw.resolve(&err)?)),
            None => None,
        };
        let batch_size = export.batch_size.unwrap_or(2_000);
        if !(1..=1_000_000).contains(&batch_size) {
            return Err(err("batch_size", "must be between 1 and 1000000".into()));
        }
        let concurrency = export.concurrency.unwrap_or(1);
        if !(1..=64).contains(&concurrency) {
            return Err(err("concurrency", "must be between 1 and 64".into()));
        }
        let timeout = duration(source, &key("timeout"), export.timeout.as_deref(), "30s")?;
        let poll_interval = duration(
            source,
            &key("poll_interval"),
            export.poll_interval.as_deref(),
            "1s",
        )?;
        out.push(RemoteWriteExport {
            name,
            url,
            auth,
            headers: export.headers.into_iter().collect(),
            matcher,
            batch_size,
            concurrency,
            timeout,
            poll_interval,
        });
    }
    Ok(out)
}

/// `tls_cert`, `tls_key` and `tls_client_ca`: both of the first two or neither, the third only
/// with them; the files are read and built into a server configuration here, so `check` finds
/// what would stop the listener.
fn resolve_tls(server: &RawServer, source: &Source) -> Result<Option<TlsFiles>, ConfigError> {
    let files = match (&server.tls_cert, &server.tls_key) {
        (None, None) => {
            if server.tls_client_ca.is_some() {
                return Err(source.error(
                    "server.tls_client_ca",
                    "client certificates need TLS: set server.tls_cert and server.tls_key too",
                ));
            }
            return Ok(None);
        }
        (Some(_), None) => {
            return Err(source.error(
                "server.tls_key",
                "missing: server.tls_cert needs its private key",
            ));
        }
        (None, Some(_)) => {
            return Err(source.error(
                "server.tls_cert",
                "missing: server.tls_key needs its certificate",
            ));
        }
        (Some(cert), Some(key)) => TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: server.tls_client_ca.clone(),
        },
    };
    crate::tls::server_config(&files)
        .map_err(|e| source.error(format!("server.tls_{}", e.file), e.message))?;
    Ok(Some(files))
}

/// Nanoseconds in a duration written in the file.
fn nanos(text: &str) -> Result<i64, String> {
    let duration = parse_duration(text)?;
    i64::try_from(duration.as_nanos()).map_err(|_| format!("{text:?} is too long"))
}

/// The rollup resolutions and the retention of each, plus the raw retention.
fn resolve_rollups(
    resolutions: Option<Vec<String>>,
    mut retention: BTreeMap<String, String>,
    source: &Source,
) -> Result<(Vec<Resolution>, Option<i64>), ConfigError> {
    let names = resolutions.unwrap_or_else(|| vec!["1m".into(), "1h".into(), "1d".into()]);
    let defaults = [("raw", "7d"), ("1m", "90d"), ("1h", "2y")];
    let mut keep = |name: &str| -> Result<Option<i64>, ConfigError> {
        let key = format!("retention.{name}");
        let text = retention.remove(name).or_else(|| {
            defaults
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, d)| (*d).to_owned())
        });
        match text.as_deref() {
            None | Some("forever") => Ok(None),
            Some(text) => nanos(text).map(Some).map_err(|m| source.error(key, m)),
        }
    };
    let raw_retention = keep("raw")?;
    let mut out: Vec<Resolution> = Vec::with_capacity(names.len());
    for (index, name) in names.iter().enumerate() {
        let key = format!("rollups.resolutions[{index}]");
        let step = nanos(name).map_err(|m| source.error(&key, m))?;
        if step < 1_000_000_000 {
            return Err(source.error(key, format!("{name:?} is shorter than a second")));
        }
        if step > crate::clean::time::MAX_RESOLUTION {
            return Err(source.error(key, format!("{name:?} is longer than 31 days")));
        }
        if let Some(previous) = out.last()
            && step.checked_rem(previous.step) != Some(0)
        {
            let before = index
                .checked_sub(1)
                .and_then(|i| names.get(i))
                .map_or("", String::as_str);
            return Err(source.error(
                key,
                format!("{name:?} is not a multiple of the resolution before it ({before:?}); windows must nest"),
            ));
        }
        out.push(Resolution {
            step,
            retention: keep(name)?,
        });
    }
    if let Some(unknown) = retention.keys().next() {
        return Err(source.error(
            format!("retention.{unknown}"),
            format!(
                "is neither \"raw\" nor one of rollups.resolutions ({})",
                names.join(", ")
            ),
        ));
    }
    Ok((out, raw_retention))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn documented_example_loads_with_the_defaults_it_states() {
        let text = include_str!("../../config/collector.toml");
        let config =
            Config::load_str(text, Path::new("collector.toml")).unwrap_or_else(|e| panic!("{e}"));
        let defaults = Config::load_str("", Path::new("empty.toml")).unwrap();
        assert_eq!(config.listen, defaults.listen);
        assert_eq!(config.max_body_size, defaults.max_body_size);
        assert_eq!(config.max_decompressed_size, defaults.max_decompressed_size);
        assert_eq!(config.max_decoded_size, defaults.max_decoded_size);
        assert_eq!(config.max_batch_points, defaults.max_batch_points);
        assert_eq!(config.ingest_memory, defaults.ingest_memory);
        assert_eq!(config.body_timeout, defaults.body_timeout);
        assert_eq!(config.ingest_queue, defaults.ingest_queue);
        assert_eq!(config.ingest_wait, defaults.ingest_wait);
        assert_eq!(config.shutdown_timeout, defaults.shutdown_timeout);
        assert_eq!(config.storage_path, defaults.storage_path);
        assert_eq!(config.commit_max_points, defaults.commit_max_points);
        assert_eq!(config.readers, defaults.readers);
        assert_eq!(config.query_max_points, defaults.query_max_points);
        assert_eq!(config.agents.len(), 1);
        assert_eq!(config.resolutions, defaults.resolutions);
        assert_eq!(config.resolutions, crate::rollup::default_resolutions());
        assert_eq!(config.raw_retention, defaults.raw_retention);
        assert_eq!(config.time, defaults.time);
        assert_eq!(config.retention_interval, defaults.retention_interval);
    }

    /// The commented rule examples in config/collector.toml load as written.
    #[test]
    fn documented_rule_examples_load() {
        let text = include_str!("../../config/collector.toml");
        let start = text.find("# [[clean.rules]]").expect("rule examples");
        let end = text.find("# One table per agent").expect("agents section");
        let rules: String = text[start..end]
            .lines()
            .map(|line| {
                line.strip_prefix("# ")
                    .or(line.strip_prefix('#'))
                    .unwrap_or(line)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let config =
            Config::load_str(&rules, Path::new("examples.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.rules.len(), 8);
    }

    #[test]
    fn agents_are_checked() {
        let load = |text: &str| Config::load_str(text, Path::new("c.toml"));
        let ok = load(&format!(
            "[[agents]]\nid = \"a\"\ntoken_sha256 = \"{HASH}\"\n"
        ))
        .unwrap();
        assert_eq!(ok.agents.values().next().map(String::as_str), Some("a"));

        let error = load("[[agents]]\nid = \"a\"\ntoken_sha256 = \"abc\"\n").unwrap_err();
        assert_eq!(
            (error.key.as_str(), error.line),
            ("agents[0].token_sha256", Some(3))
        );
        let twice = format!(
            "[[agents]]\nid = \"a\"\ntoken_sha256 = \"{HASH}\"\n[[agents]]\nid = \"b\"\ntoken_sha256 = \"{HASH}\"\n"
        );
        assert!(load(&twice).unwrap_err().message.contains("already given"));
        // Without mTLS an agent needs a token (with it, its certificate may name it: e2e tls).
        let error = load("[[agents]]\nid = \"a\"\n").unwrap_err();
        assert_eq!(error.key, "agents[0].token_sha256");
        assert!(error.message.contains("server.tls_client_ca"), "{error}");
        let error = load("[[readers]]\nid = \"r\"\n").unwrap_err();
        assert_eq!(error.key, "readers[0].token_sha256");
        let error = load("[server]\nlisten = \"everywhere\"\n").unwrap_err();
        assert_eq!(error.key, "server.listen");
        let error = load("[storage]\npth = \"x\"\n").unwrap_err();
        assert_eq!((error.key.as_str(), error.line), ("storage.pth", Some(2)));
        let error = load("[time]\n\nout_of_bounds = \"drop\"\n").unwrap_err();
        assert_eq!(
            (error.key.as_str(), error.line),
            ("time.out_of_bounds", Some(3))
        );
        assert!(
            error
                .message
                .contains(r#"choose one of "quarantine", "receive_time""#),
            "{error}"
        );
        let error = load("[server]\ntls_cert = \"/nonexistent/cert.pem\"\n").unwrap_err();
        assert_eq!(error.key, "server.tls_key");
        let error = load(
            "[server]\ntls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\n",
        )
        .unwrap_err();
        assert_eq!(error.key, "server.tls_cert");
        assert!(
            error.message.contains("cannot read /nonexistent/cert.pem"),
            "{error}"
        );
        let error = load("[server]\ntls_client_ca = \"/nonexistent/ca.pem\"\n").unwrap_err();
        assert_eq!(error.key, "server.tls_client_ca");
        // A `${VAR}` may stand for a number: its type is checked once it is expanded.
        let expanded =
            load("[query]\nmax_points = \"${TRIBUTARY_SURELY_UNSET_MAXP:-5}\"\n").unwrap();
        assert_eq!(expanded.query_max_points, 5);
        let error = load("[query]\nmax_points = \"5\"\n").unwrap_err();
        assert_eq!(
            (error.key.as_str(), error.line),
            ("query.max_points", Some(2))
        );
        let error = load("[server]\nbody_timeout = \"soon\"\n").unwrap_err();
        assert_eq!(
            (error.key.as_str(), error.line),
            ("server.body_timeout", Some(2))
        );
    }

    #[test]
    fn ingest_limits_and_resolutions_are_checked() {
        let load = |text: &str| Config::load_str(text, Path::new("c.toml"));
        let error = load("[server]\ningest_memory = \"100MiB\"\n").unwrap_err();
        assert_eq!(error.key, "server.ingest_memory");
        assert!(
            error.message.contains("at least one request"),
            "{}",
            error.message
        );
        let error = load("[server]\nmax_batch_points = 0\n").unwrap_err();
        assert_eq!(error.key, "server.max_batch_points");
        let error = load("[server]\nbody_timeout = \"soon\"\n").unwrap_err();
        assert_eq!(error.key, "server.body_timeout");
        let error = load("[rollups]\nresolutions = [\"1d\", \"60d\"]\n").unwrap_err();
        assert_eq!(error.key, "rollups.resolutions[1]");
        assert!(error.message.contains("31 days"), "{}", error.message);
        let small = load(
            "[server]\nmax_body_size = \"1MiB\"\nmax_decompressed_size = \"2MiB\"\nmax_decoded_size = \"2MiB\"\ningest_memory = \"5MiB\"\n",
        )
        .unwrap();
        assert_eq!(small.ingest_memory, 5 << 20);
    }

    #[test]
    fn exports_are_checked() {
        let load = |text: &str| Config::load_str(text, Path::new("c.toml"));
        let ok = load(
            "[[exports.remote_write]]\nname = \"vm\"\nurl = \"http://vm:8428/api/v1/write\"\nbasic_auth = { username = \"u\", password = \"p\" }\nheaders = { \"X-Scope-OrgID\" = \"t\" }\nmatch = { name = \"cpu*\" }\nbatch_size = 500\nconcurrency = 4\n",
        )
        .unwrap();
        let export = &ok.exports[0];
        assert_eq!(
            export.auth,
            crate::export::Auth::Basic {
                username: "u".into(),
                password: "p".into()
            }
        );
        assert_eq!((export.batch_size, export.concurrency), (500, 4));
        assert!(ok.storage_options().export_feed);
        assert!(!load("").unwrap().storage_options().export_feed);
        for (text, key) in [
            (
                "[[exports.remote_write]]\nurl = \"http://a\"\n",
                "exports.remote_write[0].name",
            ),
            (
                "[[exports.remote_write]]\nname = \"a\"\nurl = \"ftp://a\"\n",
                "exports.remote_write[0].url",
            ),
            (
                "[[exports.remote_write]]\nname = \"a\"\nurl = \"http://a\"\n[[exports.remote_write]]\nname = \"a\"\nurl = \"http://b\"\n",
                "exports.remote_write[1].name",
            ),
            (
                "[[exports.remote_write]]\nname = \"a\"\nurl = \"http://a\"\nbearer_token = \"t\"\nbasic_auth = { username = \"u\" }\n",
                "exports.remote_write[0].basic_auth",
            ),
            (
                "[[exports.remote_write]]\nname = \"a\"\nurl = \"http://a\"\nconcurrency = 0\n",
                "exports.remote_write[0].concurrency",
            ),
            (
                "[[exports.remote_write]]\nname = \"a\"\nurl = \"http://a\"\ntimeout = \"soon\"\n",
                "exports.remote_write[0].timeout",
            ),
            (
                "[[exports.remote_write]]\nname = \"a\"\nurl = \"http://a\"\nmatch = { name = \"[\" }\n",
                "exports.remote_write[0].match.name",
            ),
            (
                "[[exports.remote_write]]\nname = \"a\"\nurl = \"http://a\"\nbatch = 5\n",
                "exports.remote_write[0].batch",
            ),
        ] {
            let error = load(text).unwrap_err();
            assert_eq!(error.key, key, "{text}: {error}");
        }
    }
}
