//! The agent's configuration: raw structs as read from TOML (first stage, through
//! `tributary-common`), and the checked [`Config`] the agent runs on (second stage).
//!
//! Every default lives in the resolve functions here, and `config/agent.toml` documents each
//! key with the same default; a test loads that file so the two cannot drift apart.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tributary_common::choices;
use tributary_common::config::values::{RawSize, duration, read_key_pem, read_pem, size};
use tributary_common::config::{ConfigError, Resolve, Source};
use url::Url;

use crate::inputs::{InputConfig, RawInputs};

/// Prefix of environment overrides: `TRIBUTARY_AGENT__FORWARD__URL=…`.
pub const ENV_PREFIX: &str = "TRIBUTARY_AGENT";

/// The whole file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Identity and local state.
    #[serde(default)]
    pub agent: RawAgent,
    /// The durable buffer.
    #[serde(default)]
    pub buffer: RawBuffer,
    /// Where and how batches go.
    #[serde(default)]
    pub forward: RawForward,
    /// The inputs, one array of tables per kind.
    #[serde(default)]
    pub inputs: RawInputs,
}

/// `[agent]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    /// The agent's id; the collector knows it by its token. Default: the host name.
    pub id: Option<String>,
    /// Directory of the SQLite buffer. Default: `/var/lib/tributary`.
    pub data_dir: Option<PathBuf>,
    /// Tags added to every point, e.g. `{ site = "plant-1" }`.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Local address of `/metrics` and `/health`; `""` switches the listener off.
    pub listen: Option<String>,
    /// How long shutdown may take before the agent exits anyway.
    pub shutdown_timeout: Option<String>,
    /// How often the agent buffers its own figures as `tributary_agent*` points, forwarded
    /// like any reading; `"0s"` switches that off.
    pub self_metrics: Option<String>,
}

/// `[buffer]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuffer {
    /// Bound on buffered data (bytes of encoded points and rejects).
    pub max_size: Option<RawSize>,
    /// `drop_oldest` or `block`.
    pub when_full: Option<WhenFull>,
    /// Disk space held back beside the buffer (`buffer.reserve`) and given back when the
    /// disk is full, so confirmed points can still be deleted; `0` switches it off.
    pub disk_reserve: Option<RawSize>,
    /// Group commit: the longest a point waits for others before its transaction commits (a
    /// commit also goes as soon as the stream pauses for a millisecond).
    pub flush_interval: Option<String>,
    /// Group commit: commit as soon as this many points are waiting.
    pub flush_points: Option<usize>,
    /// Capacity of the queue between inputs and the buffer writer, in messages.
    pub queue_capacity: Option<usize>,
}

/// `[forward]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    /// Base URL of the collector.
    pub url: Option<String>,
    /// Base URLs of several collectors, tried in order (failover); instead of `url`.
    pub urls: Option<Vec<String>>,
    /// How long after failing over the agent tries the first URL again.
    pub failback_after: Option<String>,
    /// Bearer token for the collector.
    pub token: Option<String>,
    /// Most points per batch.
    pub batch_max_points: Option<usize>,
    /// Most bytes (encoded, before compression) per batch.
    pub batch_max_bytes: Option<RawSize>,
    /// How long a partial batch waits for more points.
    pub linger: Option<String>,
    /// Whole-request timeout.
    pub timeout: Option<String>,
    /// TCP and TLS connect timeout.
    pub connect_timeout: Option<String>,
    /// First retry delay.
    pub backoff_initial: Option<String>,
    /// Longest retry delay.
    pub backoff_max: Option<String>,
    /// `msgpack` or `json`.
    pub encoding: Option<WireEncoding>,
    /// zstd level 1 to 19, or 0 to send uncompressed.
    pub compression_level: Option<i32>,
    /// Extra CA certificate (PEM) to trust for `https` collectors.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for collectors that require one (mTLS), with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// Deadline of the last forward attempt at shutdown.
    pub final_attempt_timeout: Option<String>,
}

/// What the buffer does when it reaches `max_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(try_from = "String")]
pub enum WhenFull {
    /// Delete the oldest points, count them, and report the count in the next batch.
    #[default]
    DropOldest,
    /// Stop taking (and acknowledging) new data until the forwarder frees space.
    Block,
}

choices!(WhenFull, "when_full policy", { "drop_oldest" => WhenFull::DropOldest, "block" => WhenFull::Block });

/// The batch encoding on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(try_from = "String")]
pub enum WireEncoding {
    #[default]
    Msgpack,
    Json,
}

choices!(WireEncoding, "batch encoding", { "msgpack" => WireEncoding::Msgpack, "json" => WireEncoding::Json });

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub agent: AgentSettings,
    pub buffer: BufferSettings,
    pub forward: ForwardSettings,
    pub inputs: Vec<InputConfig>,
}

/// Identity and local state.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub id: String,
    pub data_dir: PathBuf,
    pub tags: BTreeMap<String, String>,
    pub listen: Option<SocketAddr>,
    pub shutdown_timeout: Duration,
    /// `None`: off.
    pub self_metrics: Option<Duration>,
}

/// The durable buffer.
#[derive(Debug, Clone)]
pub struct BufferSettings {
    pub max_size: u64,
    pub when_full: WhenFull,
    pub disk_reserve: u64,
    pub flush_interval: Duration,
    pub flush_points: usize,
    pub queue_capacity: usize,
}

/// One collector's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorUrls {
    /// The base URL as configured.
    pub base: String,
    /// The batches endpoint, `<url>/api/v1/batches`.
    pub batches: Url,
    /// The collector's clock, `<url>/api/v1/time`.
    pub time: Url,
}

/// The forwarder.
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// The first collector's batches endpoint, `<url>/api/v1/batches`.
    pub batches_url: Url,
    /// The collectors in the order they are tried (`forward.url` alone, or `forward.urls`).
    pub collectors: Vec<CollectorUrls>,
    /// How long after a failover the first collector is tried again.
    pub failback_after: Duration,
    pub token: Option<String>,
    pub batch_max_points: usize,
    pub batch_max_bytes: usize,
    pub linger: Duration,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub encoding: WireEncoding,
    pub compression_level: i32,
    /// PEM bytes of an extra CA certificate.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM bytes of the client certificate chain followed by its key (mTLS).
    pub identity_pem: Option<Vec<u8>>,
    pub final_attempt_timeout: Duration,
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

impl Resolve for RawConfig {
    type Checked = Config;
    const ENV_PREFIX: &'static str = ENV_PREFIX;
    const SECRET_KEYS: &'static [&'static str] = &["forward.token"];

    /// The second stage: checks every value and fills in defaults.
    fn resolve(self, source: &Source) -> Result<Config, ConfigError> {
        let raw = self;
        let agent = resolve_agent(raw.agent, source)?;
        let buffer = resolve_buffer(raw.buffer, source)?;
        let forward = resolve_forward(raw.forward, source)?;
        let inputs = raw.inputs.resolve(&agent.id, source)?;
        Ok(Config {
            agent,
            buffer,
            forward,
            inputs,
        })
    }
}

fn resolve_agent(raw: RawAgent, source: &Source) -> Result<AgentSettings, ConfigError> {
    let id = match raw.id {
        Some(id) => id,
        None => host_name().ok_or_else(|| {
            source.error(
                "agent.id",
                "not set, and the host name could not be read; set it",
            )
        })?,
    };
    if id.trim().is_empty() || id.chars().any(char::is_control) {
        return Err(source.error("agent.id", format!("{id:?} is not a usable agent id")));
    }
    let listen = match raw.listen.as_deref().unwrap_or("127.0.0.1:9273") {
        "" => None,
        text => Some(text.parse::<SocketAddr>().map_err(|e| {
            source.error(
                "agent.listen",
                format!("{text:?} is not an address like 127.0.0.1:9273 ({e}); use \"\" to switch the listener off"),
            )
        })?),
    };
    Ok(AgentSettings {
        id,
        data_dir: raw
            .data_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/tributary")),
        tags: raw.tags,
        listen,
        shutdown_timeout: duration(
            source,
            "agent.shutdown_timeout",
            raw.shutdown_timeout.as_deref(),
            "15s",
        )?,
        self_metrics: Some(duration(
            source,
            "agent.self_metrics",
            raw.self_metrics.as_deref(),
            "60s",
        )?)
        .filter(|d| !d.is_zero()),
    })
}

fn resolve_buffer(raw: RawBuffer, source: &Source) -> Result<BufferSettings, ConfigError> {
    let max_size = size(source, "buffer.max_size", raw.max_size, "512MiB")?;
    if max_size < 1 << 20 {
        return Err(source.error("buffer.max_size", "must be at least 1MiB"));
    }
    let flush_points = raw.flush_points.unwrap_or(4096);
    if flush_points == 0 {
        return Err(source.error("buffer.flush_points", "must be at least 1"));
    }
    let queue_capacity = raw.queue_capacity.unwrap_or(8192);
    if queue_capacity == 0 {
        return Err(source.error("buffer.queue_capacity", "must be at least 1"));
    }
    let disk_reserve = size(source, "buffer.disk_reserve", raw.disk_reserve, "16MiB")?;
    Ok(BufferSettings {
        max_size,
        when_full: raw.when_full.unwrap_or_default(),
        disk_reserve,
        flush_interval: duration(
            source,
            "buffer.flush_interval",
            raw.flush_interval.as_deref(),
            "10ms",
        )?,
        flush_points,
        queue_capacity,
    })
}

/// A collector's endpoints from its base URL (a path prefix is kept).
fn collector_urls(text: &str) -> Result<CollectorUrls, String> {
    let mut base = Url::parse(text).map_err(|e| format!("{text:?} is not a URL ({e})"))?;
    if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
        return Err(format!(
            "{text:?} must be an http:// or https:// URL with a host"
        ));
    }
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    Ok(CollectorUrls {
        base: text.to_owned(),
        batches: base.join("api/v1/batches").map_err(|e| e.to_string())?,
        time: base.join("api/v1/time").map_err(|e| e.to_string())?,
    })
}

fn resolve_forward(raw: RawForward, source: &Source) -> Result<ForwardSettings, ConfigError> {
    let (key, texts) = match (raw.url, raw.urls) {
        (Some(_), Some(_)) => {
            return Err(source.error(
                "forward.urls",
                "give forward.url (one collector) or forward.urls (several, tried in order), not both",
            ));
        }
        (Some(url), None) => ("forward.url", vec![url]),
        (None, Some(urls)) if urls.is_empty() => {
            return Err(source.error("forward.urls", "is empty; name at least one collector"));
        }
        (None, Some(urls)) => ("forward.urls", urls),
        (None, None) => ("forward.url", vec!["http://127.0.0.1:8080".to_owned()]),
    };
    let mut collectors = Vec::new();
    for (index, text) in texts.into_iter().enumerate() {
        let key = if key == "forward.urls" {
            format!("forward.urls[{index}]")
        } else {
            key.to_owned()
        };
        let collector = collector_urls(&text).map_err(|message| source.error(&key, message))?;
        if collectors
            .iter()
            .any(|c: &CollectorUrls| c.batches == collector.batches)
        {
            return Err(source.error(&key, format!("{text:?} is named twice")));
        }
        collectors.push(collector);
    }
    let batches_url = collectors
        .first()
        .map(|c| c.batches.clone())
        .ok_or_else(|| source.error(key, "no collector"))?;
    let failback_after = duration(
        source,
        "forward.failback_after",
        raw.failback_after.as_deref(),
        "5m",
    )?;

    let token = raw.token.filter(|t| !t.is_empty());
    if let Some(token) = &token
        && (token.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(source.error("forward.token", "contains whitespace or control characters"));
    }
    let batch_max_points = raw.batch_max_points.unwrap_or(10_000);
    if !(1..=1_000_000).contains(&batch_max_points) {
        return Err(source.error("forward.batch_max_points", "must be between 1 and 1000000"));
    }
    let batch_max_bytes = size(
        source,
        "forward.batch_max_bytes",
        raw.batch_max_bytes,
        "4MiB",
    )?;
    if batch_max_bytes < 1024 {
        return Err(source.error("forward.batch_max_bytes", "must be at least 1KiB"));
    }
    let compression_level = raw.compression_level.unwrap_or(3);
    if !(0..=19).contains(&compression_level) {
        return Err(source.error(
            "forward.compression_level",
            "must be 0 (no compression) or a zstd level from 1 to 19",
        ));
    }
    let ca_pem = match raw.ca_file {
        Some(path) => Some(read_pem(source, "forward.ca_file", &path)?),
        None => None,
    };
    let identity_pem = match (raw.cert_file, raw.key_file) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(source.error(
                "forward.key_file",
                "missing: forward.cert_file needs its private key",
            ));
        }
        (None, Some(_)) => {
            return Err(source.error(
                "forward.cert_file",
                "missing: forward.key_file needs its certificate",
            ));
        }
        (Some(cert), Some(key)) => {
            let mut pem = read_pem(source, "forward.cert_file", &cert)?;
            pem.push(b'\n');
            pem.extend(read_key_pem(source, "forward.key_file", &key)?);
            reqwest::Identity::from_pem(&pem).map_err(|e| {
                source.error(
                    "forward.key_file",
                    format!(
                        "{} and {} do not make a client identity: {e}",
                        cert.display(),
                        key.display()
                    ),
                )
            })?;
            Some(pem)
        }
    };
    let backoff_initial = duration(
        source,
        "forward.backoff_initial",
        raw.backoff_initial.as_deref(),
        "500ms",
    )?;
    let backoff_max = duration(
        source,
        "forward.backoff_max",
        raw.backoff_max.as_deref(),
        "60s",
    )?;
    if backoff_initial.is_zero() || backoff_max < backoff_initial {
        return Err(source.error(
            "forward.backoff_max",
            "backoff_initial must be above zero and backoff_max at least backoff_initial",
        ));
    }
    let timeout = duration(source, "forward.timeout", raw.timeout.as_deref(), "30s")?;
    if timeout.is_zero() {
        return Err(source.error("forward.timeout", "must be above zero"));
    }
    Ok(ForwardSettings {
        batches_url,
        collectors,
        failback_after,
        token,
        batch_max_points,
        batch_max_bytes: usize::try_from(batch_max_bytes).unwrap_or(usize::MAX),
        linger: duration(source, "forward.linger", raw.linger.as_deref(), "200ms")?,
        timeout,
        connect_timeout: duration(
            source,
            "forward.connect_timeout",
            raw.connect_timeout.as_deref(),
            "10s",
        )?,
        backoff_initial,
        backoff_max,
        encoding: raw.encoding.unwrap_or_default(),
        compression_level,
        ca_pem,
        identity_pem,
        final_attempt_timeout: duration(
            source,
            "forward.final_attempt_timeout",
            raw.final_attempt_timeout.as_deref(),
            "5s",
        )?,
    })
}

/// The host name, from the kernel.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}

#[cfg(test)]
pub(crate) mod tests;
