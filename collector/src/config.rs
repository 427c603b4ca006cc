//! The collector's configuration: raw structs as read from TOML, and the checked [`Config`].
//!
//! `config/collector.toml` documents every key with its default; a test loads it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tributary_common::config::values::{RawSize, parse_duration};
use tributary_common::config::{ConfigError, Resolve, Source};

use crate::auth::TokenHash;

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
    /// Batches waiting for the storage writer; past this, ingest answers 429.
    pub ingest_queue: Option<usize>,
    /// How long shutdown may take.
    pub shutdown_timeout: Option<String>,
}

/// `[storage]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// The SQLite database file.
    pub path: Option<PathBuf>,
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

/// `[[agents]]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    pub id: Option<String>,
    /// SHA-256 of the agent's token, lowercase hex (`tributary-collector token` prints both).
    pub token_sha256: Option<String>,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub max_body_size: usize,
    pub max_decompressed_size: usize,
    pub ingest_queue: usize,
    pub shutdown_timeout: Duration,
    pub storage_path: PathBuf,
    pub commit_max_points: usize,
    pub readers: usize,
    pub query_max_points: usize,
    /// Token hash -> agent id.
    pub agents: HashMap<TokenHash, String>,
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
        let size = |key: &str, value: Option<RawSize>, default: &str| {
            value
                .unwrap_or_else(|| RawSize::from(default))
                .bytes()
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
                .map_err(|m| source.error(key, m))
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
        let ingest_queue = raw.server.ingest_queue.unwrap_or(64);
        if ingest_queue == 0 {
            return Err(source.error("server.ingest_queue", "must be at least 1"));
        }
        let shutdown_text = raw.server.shutdown_timeout.as_deref().unwrap_or("10s");
        let shutdown_timeout = parse_duration(shutdown_text)
            .map_err(|m| source.error("server.shutdown_timeout", m))?;

        let commit_max_points = raw.storage.commit_max_points.unwrap_or(50_000);
        if commit_max_points == 0 {
            return Err(source.error("storage.commit_max_points", "must be at least 1"));
        }
        let readers = raw.storage.readers.unwrap_or(4);
        if !(1..=64).contains(&readers) {
            return Err(source.error("storage.readers", "must be between 1 and 64"));
        }
        let query_max_points = raw.query.max_points.unwrap_or(1_000_000);
        if query_max_points == 0 {
            return Err(source.error("query.max_points", "must be at least 1"));
        }

        let mut agents = HashMap::new();
        let mut ids = HashMap::new();
        for (index, agent) in raw.agents.into_iter().enumerate() {
            let key = |name: &str| format!("agents[{index}].{name}");
            let id = agent
                .id
                .filter(|id| !id.trim().is_empty())
                .ok_or_else(|| source.error(key("id"), "missing or empty"))?;
            let hash_text = agent.token_sha256.ok_or_else(|| {
                source.error(
                    key("token_sha256"),
                    "missing; `tributary-collector token` prints a token and its hash",
                )
            })?;
            let hash =
                TokenHash::parse(&hash_text).map_err(|m| source.error(key("token_sha256"), m))?;
            if let Some(first) = ids.insert(id.clone(), index) {
                return Err(source.error(
                    key("id"),
                    format!("agent {id:?} is already configured at agents[{first}]"),
                ));
            }
            if let Some(other) = agents.insert(hash, id.clone()) {
                return Err(source.error(
                    key("token_sha256"),
                    format!("the same token is already given to agent {other:?}; every agent needs its own"),
                ));
            }
        }
        Ok(Config {
            listen,
            max_body_size,
            max_decompressed_size,
            ingest_queue,
            shutdown_timeout,
            storage_path: raw
                .storage
                .path
                .unwrap_or_else(|| PathBuf::from("/var/lib/tributary/collector.db")),
            commit_max_points,
            readers,
            query_max_points,
            agents,
        })
    }
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
        assert_eq!(config.ingest_queue, defaults.ingest_queue);
        assert_eq!(config.shutdown_timeout, defaults.shutdown_timeout);
        assert_eq!(config.storage_path, defaults.storage_path);
        assert_eq!(config.commit_max_points, defaults.commit_max_points);
        assert_eq!(config.readers, defaults.readers);
        assert_eq!(config.query_max_points, defaults.query_max_points);
        assert_eq!(config.agents.len(), 1);
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
        let error = load("[server]\nlisten = \"everywhere\"\n").unwrap_err();
        assert_eq!(error.key, "server.listen");
        let error = load("[storage]\npth = \"x\"\n").unwrap_err();
        assert_eq!((error.key.as_str(), error.line), ("storage.pth", Some(2)));
    }
}
