//! The sql input: polls a local SQLite database (many gateways log to one) for rows newer
//! than the last ones it took.
//!
//! The `query` must use the parameter `:last` and return rows in ascending order of
//! `tracking_column`, e.g.
//! `SELECT id, ts, device, temp FROM readings WHERE id > :last ORDER BY id LIMIT 5000`.
//! Each run binds `:last` to the tracking value of the last row taken (first run:
//! `tracking_start`, default 0), and commits the new value **in the same buffer transaction
//! as the rows**: a crash before the commit re-reads them, a crash after it does not.
//!
//! Each row is one point named `name` (default `sql`): `time_column` (Unix seconds,
//! milliseconds, microseconds or nanoseconds by magnitude, or RFC 3339 text) sets its time
//! (otherwise the poll time), `tag_columns` become tags, and every other non-NULL column a
//! field (INTEGER, REAL or TEXT; the tracking column is left out unless it is listed in
//! `field_columns`). A row that yields no field, or has a BLOB or an unreadable time, is
//! quarantined. The database is opened read-only with a busy timeout, so the application
//! writing it is never blocked.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OpenFlags};
use serde::Deserialize;
use tributary_common::config::{ConfigError, Source};
use tributary_wire::time::{parse_rfc3339, unix_int_to_ns, unix_to_ns};
use tributary_wire::{FieldValue, Point};

use super::polled::{PollError, Polled, PolledSettings, raw_timing};
use crate::format::Rejected;
use tributary_common::config::values::duration;

/// `[[inputs.sql]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSql {
    pub name: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub interval: Option<String>,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub jitter: Option<String>,
    /// The SQLite database file.
    pub path: Option<PathBuf>,
    /// A SELECT using `:last`, ordered by the tracking column.
    pub query: Option<String>,
    pub tracking_column: Option<String>,
    /// The value `:last` has before any row was taken. Default: 0.
    pub tracking_start: Option<TrackingStart>,
    pub time_column: Option<String>,
    #[serde(default)]
    pub tag_columns: Vec<String>,
    /// Columns that are fields even though they are the tracking or time column.
    #[serde(default)]
    pub field_columns: Vec<String>,
    /// How long a run waits for a writer's lock. Default: 5s.
    pub busy_timeout: Option<String>,
    /// Names this input's saved position; change it to start over. Default: derived from
    /// `path` and `tracking_column`.
    pub id: Option<String>,
}

/// A number or a text, as TOML gives it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TrackingStart {
    Integer(i64),
    Real(f64),
    Text(String),
}

/// A checked `[[inputs.sql]]`.
#[derive(Debug, Clone)]
pub struct SqlConfig {
    pub common: PolledSettings,
    pub path: PathBuf,
    pub query: String,
    pub tracking_column: String,
    pub tracking_start: SqlValue,
    pub time_column: Option<String>,
    pub tag_columns: HashSet<String>,
    pub field_columns: HashSet<String>,
    pub busy_timeout: Duration,
    /// Checkpoint source id.
    pub id: String,
}

impl RawSql {
    pub fn resolve(self, index: usize, source: &Source) -> Result<SqlConfig, ConfigError> {
        let timing = raw_timing!(self);
        let common = PolledSettings::resolve("sql", index, self.name, self.tags, &timing, source)?;
        let key = |name: &str| common.key(name);
        let path = self
            .path
            .ok_or_else(|| source.error(key("path"), "missing; the SQLite database to poll"))?;
        let query = self.query.ok_or_else(|| {
            source.error(
                key("query"),
                "missing; e.g. \"SELECT id, ts, temp FROM readings WHERE id > :last ORDER BY id LIMIT 5000\"",
            )
        })?;
        if !query.contains(":last") {
            return Err(source.error(
                key("query"),
                "must use :last (the tracking value of the last row taken), e.g. WHERE id > :last ORDER BY id",
            ));
        }
        let tracking_column = self.tracking_column.ok_or_else(|| {
            source.error(
                key("tracking_column"),
                "missing; the column that orders new rows, e.g. \"id\"",
            )
        })?;
        let busy_timeout = duration(
            source,
            &key("busy_timeout"),
            self.busy_timeout.as_deref(),
            "5s",
        )?;
        // When the database is already there, the query must prepare and return the columns
        // the settings name; a database that appears later is checked at its first poll.
        if path.exists() {
            let connection = open(&path, busy_timeout).map_err(|e| {
                source.error(key("path"), format!("cannot open {}: {e}", path.display()))
            })?;
            let statement = connection
                .prepare(&query)
                .map_err(|e| source.error(key("query"), format!("does not prepare: {e}")))?;
            let columns: Vec<&str> = statement.column_names().collect();
            let named = std::iter::once(("tracking_column", &tracking_column))
                .chain(self.time_column.iter().map(|c| ("time_column", c)))
                .chain(self.tag_columns.iter().map(|c| ("tag_columns", c)))
                .chain(self.field_columns.iter().map(|c| ("field_columns", c)));
            for (setting, column) in named {
                if !columns.contains(&column.as_str()) {
                    return Err(source.error(
                        key(setting),
                        format!(
                            "{column:?} is not a column of the query (it returns {})",
                            columns.join(", ")
                        ),
                    ));
                }
            }
        }
        let tracking_start = match self.tracking_start {
            None => SqlValue::Integer(0),
            Some(TrackingStart::Integer(i)) => SqlValue::Integer(i),
            Some(TrackingStart::Real(r)) => SqlValue::Real(r),
            Some(TrackingStart::Text(t)) => SqlValue::Text(t),
        };
        let id = self
            .id
            .unwrap_or_else(|| format!("sql:{}#{}", path.display(), tracking_column));
        Ok(SqlConfig {
            common,
            path,
            query,
            tracking_column,
            tracking_start,
            time_column: self.time_column,
            tag_columns: self.tag_columns.into_iter().collect(),
            field_columns: self.field_columns.into_iter().collect(),
            busy_timeout,
            id,
        })
    }
}

fn open(path: &std::path::Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(busy_timeout)?;
    Ok(connection)
}

/// The checkpoint key under the input's source.
pub const TRACKING_KEY: &str = "tracking";

/// Polls one `[[inputs.sql]]`.
pub struct SqlPoller {
    config: Arc<SqlConfig>,
    source: Arc<str>,
    /// The tracking value of the last row handed to the buffer.
    last: SqlValue,
}

impl SqlPoller {
    /// `saved` is the checkpoint this input committed before, if any.
    pub fn new(config: SqlConfig, saved: Option<&[u8]>) -> SqlPoller {
        let last = saved
            .and_then(decode_value)
            .unwrap_or_else(|| config.tracking_start.clone());
        SqlPoller {
            source: Arc::from(config.id.as_str()),
            config: Arc::new(config),
            last,
        }
    }

    pub fn source(&self) -> Arc<str> {
        Arc::clone(&self.source)
    }

    pub async fn poll(&mut self, at: i64) -> Result<Polled, PollError> {
        let config = Arc::clone(&self.config);
        let last = self.last.clone();
        let (polled, newest) = tokio::task::spawn_blocking(move || read(&config, &last, at))
            .await
            .map_err(|e| PollError::new("panicked", format!("the query task failed: {e}")))??;
        if let Some(newest) = newest {
            // The buffer commits the rows and this value together; until then, a crash
            // restarts from the previous commit.
            self.last = newest;
        }
        Ok(polled)
    }
}

/// Runs the query once; returns the points and the tracking value of the last row.
fn read(
    config: &SqlConfig,
    last: &SqlValue,
    at: i64,
) -> Result<(Polled, Option<SqlValue>), PollError> {
    let path = config.path.display();
    let connection = open(&config.path, config.busy_timeout)
        .map_err(|e| PollError::new("open", format!("cannot open {path}: {e}")))?;
    let mut statement = connection
        .prepare(&config.query)
        .map_err(|e| PollError::new("query", format!("{path}: the query does not prepare: {e}")))?;
    let columns: Vec<String> = statement.column_names().map(str::to_owned).collect();
    let tracking = columns
        .iter()
        .position(|c| *c == config.tracking_column)
        .ok_or_else(|| {
            PollError::new(
                "query",
                format!(
                    "{path}: the query returns no column {:?}",
                    config.tracking_column
                ),
            )
        })?;
    let mut rows = statement
        .query(rusqlite::named_params! {":last": last})
        .map_err(|e| PollError::new("query", format!("{path}: {e}")))?;
    let mut polled = Polled {
        origin: format!("{path}: {}", config.query),
        ..Polled::default()
    };
    let mut newest: Option<SqlValue> = None;
    while let Some(row) = rows
        .next()
        .map_err(|e| PollError::new("query", format!("{path}: {e}")))?
    {
        let values: Vec<SqlValue> = (0..columns.len())
            .map(|i| row.get::<_, SqlValue>(i))
            .collect::<Result<_, _>>()
            .map_err(|e| PollError::new("query", format!("{path}: {e}")))?;
        let value = values[tracking].clone();
        if let Some(previous) = &newest
            && compare(&value, previous) == std::cmp::Ordering::Less
        {
            return Err(PollError::new(
                "unordered",
                format!(
                    "{path}: rows are not in ascending order of {:?}; add ORDER BY {} to the query (nothing from this run was taken)",
                    config.tracking_column, config.tracking_column
                ),
            ));
        }
        match row_to_point(config, &columns, &values, at) {
            Ok(point) => polled.points.push(point),
            Err(reason) => polled.rejected.push(Rejected {
                payload: describe_row(&columns, &values).into_bytes(),
                reason,
            }),
        }
        newest = Some(value);
    }
    if let Some(newest) = &newest {
        polled.checkpoint = Some((TRACKING_KEY.to_owned(), encode_value(newest)));
    }
    Ok((polled, newest))
}

fn row_to_point(
    config: &SqlConfig,
    columns: &[String],
    values: &[SqlValue],
    at: i64,
) -> Result<Point, String> {
    let mut point = Point::new(config.common.name.clone(), at);
    for (column, value) in columns.iter().zip(values) {
        let is_time = config.time_column.as_deref() == Some(column.as_str());
        if is_time {
            point.ts = match value {
                SqlValue::Integer(i) => unix_int_to_ns(*i),
                SqlValue::Real(r) => unix_to_ns(*r),
                SqlValue::Text(t) => parse_rfc3339(t),
                _ => None,
            }
            .ok_or_else(|| format!("{column} = {} is not a time", describe(value)))?;
        }
        if config.tag_columns.contains(column) {
            match value {
                SqlValue::Null => {}
                SqlValue::Integer(i) => drop(point.tags.insert(column.clone(), i.to_string())),
                SqlValue::Real(r) => drop(point.tags.insert(column.clone(), r.to_string())),
                SqlValue::Text(t) => drop(point.tags.insert(column.clone(), t.clone())),
                SqlValue::Blob(_) => return Err(format!("tag column {column} holds a BLOB")),
            }
            continue;
        }
        let skipped = (is_time || *column == config.tracking_column)
            && !config.field_columns.contains(column);
        if skipped {
            continue;
        }
        let field = match value {
            SqlValue::Null => continue,
            SqlValue::Integer(i) => FieldValue::I64(*i),
            SqlValue::Real(r) => FieldValue::F64(*r),
            SqlValue::Text(t) => FieldValue::Str(t.clone()),
            SqlValue::Blob(_) => {
                return Err(format!(
                    "column {column} holds a BLOB, which is not a field type"
                ));
            }
        };
        point.fields.insert(column.clone(), field);
    }
    if point.fields.is_empty() {
        return Err("the row has no non-NULL field column".to_owned());
    }
    Ok(point)
}

/// SQLite's order across types: NULL < numbers < text < blob.
fn compare(a: &SqlValue, b: &SqlValue) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let rank = |v: &SqlValue| match v {
        SqlValue::Null => 0,
        SqlValue::Integer(_) | SqlValue::Real(_) => 1,
        SqlValue::Text(_) => 2,
        SqlValue::Blob(_) => 3,
    };
    let number = |v: &SqlValue| match v {
        SqlValue::Integer(i) => *i as f64,
        SqlValue::Real(r) => *r,
        _ => 0.0,
    };
    match (a, b) {
        (SqlValue::Integer(x), SqlValue::Integer(y)) => x.cmp(y),
        (SqlValue::Text(x), SqlValue::Text(y)) => x.cmp(y),
        (SqlValue::Blob(x), SqlValue::Blob(y)) => x.cmp(y),
        _ if rank(a) == 1 && rank(b) == 1 => {
            number(a).partial_cmp(&number(b)).unwrap_or(Ordering::Equal)
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

fn describe(value: &SqlValue) -> String {
    match value {
        SqlValue::Null => "NULL".to_owned(),
        SqlValue::Integer(i) => i.to_string(),
        SqlValue::Real(r) => r.to_string(),
        SqlValue::Text(t) => format!("{t:?}"),
        SqlValue::Blob(b) => format!("<{} byte BLOB>", b.len()),
    }
}

fn describe_row(columns: &[String], values: &[SqlValue]) -> String {
    columns
        .iter()
        .zip(values)
        .map(|(c, v)| format!("{c}={}", describe(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checkpoint encoding: a type byte, then the value.
fn encode_value(value: &SqlValue) -> Vec<u8> {
    match value {
        SqlValue::Null => vec![0],
        SqlValue::Integer(i) => [&[1u8][..], &i.to_le_bytes()].concat(),
        SqlValue::Real(r) => [&[2u8][..], &r.to_le_bytes()].concat(),
        SqlValue::Text(t) => [&[3u8][..], t.as_bytes()].concat(),
        SqlValue::Blob(b) => [&[4u8][..], b].concat(),
    }
}

fn decode_value(bytes: &[u8]) -> Option<SqlValue> {
    let (kind, rest) = bytes.split_first()?;
    Some(match kind {
        0 => SqlValue::Null,
        1 => SqlValue::Integer(i64::from_le_bytes(rest.try_into().ok()?)),
        2 => SqlValue::Real(f64::from_le_bytes(rest.try_into().ok()?)),
        3 => SqlValue::Text(String::from_utf8(rest.to_vec()).ok()?),
        4 => SqlValue::Blob(rest.to_vec()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
