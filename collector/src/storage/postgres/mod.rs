//! PostgreSQL as the store that several collectors share (`[storage] url`).
//!
//! The client is `postgres`, the blocking face of `tokio-postgres` (each client drives its
//! connection on a runtime of its own): the writer is a thread that holds its client for its
//! life, as the SQLite writer holds its connection, so the batch logic of
//! `crate::storage::writer` serves both stores unchanged. TLS to the server goes through
//! rustls (`tokio-postgres-rustls`), with the system's roots, when the URL's `sslmode` is not
//! `disable`.
//!
//! The schema is created and migrated under an advisory lock, so N collectors may start at
//! once. Raw values and rollup windows are stored in the formats of [`crate::storage::codec`]
//! and [`crate::storage::blocks`] as `bytea`, so both stores share one codec.

use postgres::{Client, NoTls};

use super::StorageError;

pub(crate) mod feed;
pub(crate) mod reads;
pub(crate) mod writer;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

/// The advisory lock under which collectors create and migrate the schema.
const SCHEMA_LOCK: i64 = 0x7472_6962_0001;

/// The schema version this collector writes (`meta.schema`).
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS series (
    id       BIGSERIAL PRIMARY KEY,
    name     TEXT NOT NULL,
    tags     TEXT NOT NULL,
    field    TEXT NOT NULL,
    kind     TEXT NOT NULL,
    first_ts BIGINT NOT NULL,
    last_ts  BIGINT NOT NULL,
    exact    BOOLEAN NOT NULL DEFAULT FALSE,
    UNIQUE (name, tags, field)
);
CREATE TABLE IF NOT EXISTS marks (
    agent_id    TEXT NOT NULL,
    epoch       TEXT NOT NULL,
    last_seq    BIGINT NOT NULL,
    last_reject BIGINT NOT NULL,
    dropped     BIGINT NOT NULL,
    explained   BIGINT NOT NULL DEFAULT 0,
    first_seen  BIGINT NOT NULL,
    last_seen   BIGINT NOT NULL,
    PRIMARY KEY (agent_id, epoch)
);
CREATE TABLE IF NOT EXISTS agents (
    agent_id         TEXT PRIMARY KEY,
    first_seen       BIGINT NOT NULL,
    last_seen        BIGINT NOT NULL,
    batches          BIGINT NOT NULL DEFAULT 0,
    points_received  BIGINT NOT NULL DEFAULT 0,
    duplicates       BIGINT NOT NULL DEFAULT 0,
    quarantined      BIGINT NOT NULL DEFAULT 0,
    gaps             BIGINT NOT NULL DEFAULT 0,
    backlog_points   BIGINT,
    backlog_bytes    BIGINT,
    oldest_unsent_ts BIGINT,
    clock_skew_ns    BIGINT,
    clock_error_ns   BIGINT
);
CREATE TABLE IF NOT EXISTS quarantine (
    id              BIGSERIAL PRIMARY KEY,
    received_at     BIGINT NOT NULL,
    origin          TEXT NOT NULL,
    agent_id        TEXT,
    epoch           TEXT,
    agent_reject_id BIGINT,
    source          TEXT NOT NULL,
    topic           TEXT NOT NULL,
    ts              BIGINT,
    payload         BYTEA NOT NULL,
    reason          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_by_time ON quarantine (received_at);
CREATE TABLE IF NOT EXISTS chunks (
    id         BIGSERIAL PRIMARY KEY,
    series_id  BIGINT NOT NULL,
    start_ts   BIGINT NOT NULL,
    end_ts     BIGINT NOT NULL,
    count      BIGINT NOT NULL,
    data       BYTEA NOT NULL,
    -- The export feed (feed.rs): the writing transaction, and when.
    xid        XID8 NOT NULL DEFAULT pg_current_xact_id(),
    written_at BIGINT NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1e9)::bigint
);
CREATE INDEX IF NOT EXISTS chunks_by_series ON chunks (series_id, start_ts);
CREATE INDEX IF NOT EXISTS chunks_by_xid ON chunks (xid, id);
CREATE TABLE IF NOT EXISTS export_cursors (
    name       TEXT PRIMARY KEY,
    xid        BIGINT NOT NULL,
    id         BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS rollup_blocks (
    series_id BIGINT NOT NULL,
    res       BIGINT NOT NULL,
    start     BIGINT NOT NULL,
    windows   BIGINT NOT NULL,
    data      BYTEA NOT NULL,
    PRIMARY KEY (series_id, res, start)
);
";

/// Whether a URL names a PostgreSQL server (the `url` setting takes no other).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The URL as logs and errors show it: without its password.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{scheme}://{name}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

pub(crate) fn error(url: &str, source: postgres::Error) -> StorageError {
    StorageError::Postgres {
        url: redact(url),
        source,
    }
}

/// Why the PostgreSQL store failed: the server's or the connection's error, or TLS that could
/// not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(transparent)]
    Pg(#[from] postgres::Error),
    #[error("TLS: {0}")]
    Tls(String),
    /// The schema cannot be used (newer than this collector's).
    #[error("{0}")]
    Schema(String),
    /// Stored data this collector cannot read (a rollup block it cannot decode): the batch
    /// that would merge into it is refused, not the block overwritten with less.
    #[error("{0}")]
    Corrupt(String),
}

impl PgError {
    /// As a storage error naming the server.
    pub(crate) fn into_storage(self, url: &str) -> StorageError {
        match self {
            PgError::Pg(source) => error(url, source),
            PgError::Tls(why) => StorageError::Other(format!("{}: TLS: {why}", redact(url))),
            PgError::Schema(why) | PgError::Corrupt(why) => {
                StorageError::Other(format!("{}: {why}", redact(url)))
            }
        }
    }

    /// The server could not be reached or the connection broke (as opposed to the server
    /// refusing something): worth trying again later.
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(self, PgError::Pg(e) if e.as_db_error().is_none())
    }
}

/// Connects to the server a URL names, with TLS unless its `sslmode` is `disable`.
pub(crate) fn connect_raw(url: &str) -> Result<Client, PgError> {
    let config: postgres::Config = url.parse()?;
    match config.get_ssl_mode() {
        postgres::config::SslMode::Disable => Ok(config.connect(NoTls)?),
        _ => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| PgError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Ok(config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))?)
        }
    }
}

/// `connect_raw`, its error naming the server.
pub fn connect(url: &str) -> Result<Client, StorageError> {
    connect_raw(url).map_err(|e| e.into_storage(url))
}

/// Creates or migrates the schema, under an advisory lock so that collectors starting at once
/// take turns; refuses a schema newer than this collector's.
pub fn migrate(client: &mut Client, url: &str) -> Result<(), StorageError> {
    migrate_raw(client).map_err(|e| e.into_storage(url))
}

/// `migrate`, with the driver's error.
pub(crate) fn migrate_raw(client: &mut Client) -> Result<(), PgError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
    // Not a notice per table that already exists at every start.
    tx.batch_execute("SET LOCAL client_min_messages = warning")?;
    tx.batch_execute(SCHEMA)?;
    let found: Option<i64> = tx
        .query_opt("SELECT value FROM meta WHERE key = 'schema'", &[])?
        .map(|row| row.get(0));
    if let Some(found) = found.filter(|v| *v > SCHEMA_VERSION) {
        return Err(PgError::Schema(format!(
            "schema {found} is newer than this collector's ({SCHEMA_VERSION}); upgrade the collector"
        )));
    }
    if found.is_none_or(|v| v < SCHEMA_VERSION) {
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('schema', $1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&SCHEMA_VERSION],
        )?;
    }
    tx.commit()?;
    Ok(())
}
