//! The export feed as exports see it, over either store: what was stored after a position,
//! the durable cursor of each export, its lag, and the series the values belong to. SQLite
//! keeps a feed table the writer fills (`sqlite::feed`); PostgreSQL reads its chunks by the
//! transaction that wrote them (`postgres::feed`). One connection per export, used from the
//! blocking pool.

use std::path::PathBuf;
use std::time::Duration;

use tributary_wire::FieldValue;

use super::StorageError;

/// A place in the feed: `(seq, 0)` in SQLite, `(xid, chunk id)` in PostgreSQL; `(0, 0)` is
/// before everything.
pub type Position = (i64, i64);

/// Values one feed entry brought, with the series they belong to.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedEntry {
    pub position: Position,
    pub series_id: i64,
    pub values: Vec<(i64, FieldValue)>,
}

/// A series as stored: name, tags (canonical JSON), field, kind.
pub type SeriesRow = (String, String, String, String);

/// Where the feed is.
#[derive(Debug, Clone)]
pub enum FeedStore {
    Sqlite(PathBuf),
    Postgres(String),
}

/// A connection to the feed.
pub enum FeedConn {
    Sqlite {
        conn: rusqlite::Connection,
        path: String,
    },
    Postgres {
        client: Option<::postgres::Client>,
        url: String,
        /// This session holds the export's lock.
        claimed: bool,
    },
}

impl FeedConn {
    /// Opens a connection to the feed (PostgreSQL connects on first use).
    pub fn open(store: &FeedStore) -> Result<FeedConn, StorageError> {
        match store {
            FeedStore::Sqlite(path) => {
                let sql = |source| StorageError::Sqlite {
                    path: path.display().to_string(),
                    source,
                };
                let conn = rusqlite::Connection::open(path).map_err(sql)?;
                conn.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
                Ok(FeedConn::Sqlite {
                    conn,
                    path: path.display().to_string(),
                })
            }
            FeedStore::Postgres(url) => Ok(FeedConn::Postgres {
                client: None,
                url: url.clone(),
                claimed: false,
            }),
        }
    }

    /// Runs `sqlite` or `postgres` on the connection, reconnecting to PostgreSQL if the last
    /// connection was lost (which also loses the export's lock).
    fn run<T>(
        &mut self,
        sqlite: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
        postgres: impl FnOnce(&mut ::postgres::Client, &mut bool) -> Result<T, super::postgres::PgError>,
    ) -> Result<T, StorageError> {
        match self {
            FeedConn::Sqlite { conn, path } => {
                sqlite(conn).map_err(|source| StorageError::Sqlite {
                    path: path.clone(),
                    source,
                })
            }
            FeedConn::Postgres {
                client,
                url,
                claimed,
            } => {
                if client.as_ref().is_none_or(::postgres::Client::is_closed) {
                    *claimed = false;
                    *client = None;
                    *client = Some(super::postgres::connect(url)?);
                }
                let Some(connected) = client.as_mut() else {
                    return Err(StorageError::Closed);
                };
                postgres(connected, claimed).map_err(|e| e.into_storage(url))
            }
        }
    }

    /// Whether this collector runs export `name` now: always with SQLite (the file is its
    /// own); with PostgreSQL, while it holds the export's lock.
    pub fn claim(&mut self, name: &str) -> Result<bool, StorageError> {
        self.run(
            |_| Ok(true),
            |client, claimed| {
                if !*claimed {
                    *claimed = super::postgres::feed::claim(client, name)?;
                }
                Ok(*claimed)
            },
        )
    }

    /// Where export `name` stands.
    pub fn cursor(&mut self, name: &str) -> Result<Position, StorageError> {
        self.run(
            |conn| super::sqlite::feed::cursor(conn, name).map(|seq| (seq, 0)),
            |client, _| super::postgres::feed::cursor(client, name),
        )
    }

    /// The entries after `after`, oldest first, until about `max_values` values.
    pub fn read(
        &mut self,
        after: Position,
        max_values: usize,
    ) -> Result<Vec<FeedEntry>, StorageError> {
        self.run(
            |conn| super::sqlite::feed::read(conn, after.0, max_values),
            |client, _| super::postgres::feed::read(client, after, max_values),
        )
    }

    /// Moves export `name`'s cursor to `at`.
    pub fn commit(&mut self, name: &str, at: Position, now: i64) -> Result<(), StorageError> {
        self.run(
            |conn| super::sqlite::feed::commit(conn, name, at.0, now),
            |client, _| super::postgres::feed::commit(client, name, at, now),
        )
    }

    /// What export `name` has not sent yet: values, and when the oldest was stored.
    pub fn lag(&mut self, name: &str) -> Result<(u64, Option<i64>), StorageError> {
        self.run(
            |conn| super::sqlite::feed::lag(conn, super::sqlite::feed::cursor(conn, name)?),
            |client, _| {
                let at = super::postgres::feed::cursor(client, name)?;
                super::postgres::feed::lag(client, at)
            },
        )
    }

    /// Deletes what every export in `names` has passed (SQLite's feed table; PostgreSQL reads
    /// the chunks themselves and has nothing to delete).
    pub fn prune(&mut self, names: &[String]) -> Result<usize, StorageError> {
        self.run(|conn| super::sqlite::feed::prune(conn, names), |_, _| Ok(0))
    }

    /// Each series of `ids` as stored (`None`: not found).
    pub fn series(&mut self, ids: &[i64]) -> Result<Vec<(i64, Option<SeriesRow>)>, StorageError> {
        self.run(
            |conn| {
                let mut stmt = conn
                    .prepare_cached("SELECT name, tags, field, kind FROM series WHERE id = ?1")?;
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    let row = stmt
                        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                        .ok();
                    out.push((*id, row));
                }
                Ok(out)
            },
            |client, _| super::postgres::feed::series(client, ids),
        )
    }
}
