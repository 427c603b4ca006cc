//! The read side in SQLite: a pool of read connections, and the row reads the shared queries
//! of [`crate::storage::read`] are built on.

use super::*;
use crate::storage::QuarantineFilter;
use crate::storage::read::{EachBlock, EachChunk, Rows, SeriesQuery, SeriesRow};

/// Opens a read connection to the database at `path` (queries only).
pub(crate) fn open_reader(path: &Path) -> Result<Connection, StorageError> {
    let (conn, _) = open_connection(path)?;
    conn.pragma_update(None, "query_only", true)
        .map_err(|source| StorageError::Sqlite {
            path: path.display().to_string(),
            source,
        })?;
    Ok(conn)
}

/// A SQLite connection's row reads; errors name the database file.
pub struct SqliteRows<'c> {
    pub conn: &'c Connection,
    pub path: &'c str,
}

impl SqliteRows<'_> {
    fn error(&self, source: rusqlite::Error) -> StorageError {
        StorageError::Sqlite {
            path: self.path.to_owned(),
            source,
        }
    }
}

impl Rows for SqliteRows<'_> {
    fn series(&self, query: &SeriesQuery<'_>) -> Result<Vec<SeriesRow>, StorageError> {
        // Tag filters run in SQLite (json_extract on the canonical tags), so a query for one
        // series among thousands does not parse every series' tags.
        let mut sql = String::from(
            "SELECT id, tags, field, kind, first_ts, last_ts, name, exact FROM series
             WHERE (?1 = '' OR name = ?1) AND (?2 IS NULL OR field = ?2) AND last_ts >= ?3 AND first_ts < ?4",
        );
        if query.numeric {
            sql.push_str(" AND kind IN ('float', 'integer', 'boolean')");
        }
        let mut values: Vec<rusqlite::types::Value> = vec![
            query.name.to_owned().into(),
            query.field.map(str::to_owned).into(),
            query.from.into(),
            query.to.into(),
        ];
        for (key, value) in query.tags {
            let path = format!("$.\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\""));
            sql.push_str(&format!(
                " AND json_extract(tags, ?{}) = ?{}",
                values.len().saturating_add(1),
                values.len().saturating_add(2)
            ));
            values.push(path.into());
            values.push(value.clone().into());
        }
        sql.push_str(" ORDER BY name, tags, field");
        let read = || -> rusqlite::Result<Vec<SeriesRow>> {
            let mut stmt = self.conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(values.iter()), |r| {
                let tags: String = r.get(1)?;
                Ok(SeriesRow {
                    id: r.get(0)?,
                    tags: serde_json::from_str(&tags).unwrap_or_default(),
                    field: r.get(2)?,
                    kind: r.get(3)?,
                    first_ts: r.get(4)?,
                    last_ts: r.get(5)?,
                    name: r.get(6)?,
                    exact: r.get(7)?,
                })
            })?;
            rows.collect()
        };
        read().map_err(|e| self.error(e))
    }

    fn chunks(
        &self,
        series: i64,
        from: i64,
        to: i64,
        each: &mut EachChunk<'_>,
    ) -> Result<(), StorageError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT start_ts, data FROM chunks WHERE series_id = ?1 AND start_ts >= ?2 AND start_ts < ?3
                 ORDER BY start_ts, id",
            )
            .map_err(|e| self.error(e))?;
        let mut rows = stmt
            .query(params![series, from, to])
            .map_err(|e| self.error(e))?;
        while let Some(row) = rows.next().map_err(|e| self.error(e))? {
            let start_ts: i64 = row.get(0).map_err(|e| self.error(e))?;
            let data = row
                .get_ref(1)
                .and_then(|v| v.as_blob().map_err(Into::into))
                .map_err(|e| self.error(e))?;
            if !each(start_ts, data)? {
                break;
            }
        }
        Ok(())
    }

    fn newest_chunk(&self, series: i64) -> Result<Option<(i64, Vec<u8>)>, StorageError> {
        self.conn
            .prepare_cached(
                "SELECT start_ts, data FROM chunks WHERE series_id = ?1 ORDER BY start_ts DESC, id DESC LIMIT 1",
            )
            .and_then(|mut stmt| {
                stmt.query_row([series], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(|e| self.error(e))
    }

    fn blocks(
        &self,
        series: i64,
        res: i64,
        from: i64,
        to: i64,
        each: &mut EachBlock<'_>,
    ) -> Result<(), StorageError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT start, data FROM rollup_blocks
                 WHERE series_id = ?1 AND res = ?2 AND start >= ?3 AND start < ?4 ORDER BY start",
            )
            .map_err(|e| self.error(e))?;
        let mut rows = stmt
            .query(params![series, res, from, to])
            .map_err(|e| self.error(e))?;
        while let Some(row) = rows.next().map_err(|e| self.error(e))? {
            let block: i64 = row.get(0).map_err(|e| self.error(e))?;
            let data = row
                .get_ref(1)
                .and_then(|v| v.as_blob().map_err(Into::into))
                .map_err(|e| self.error(e))?;
            each(block, data)?;
        }
        Ok(())
    }

    fn quarantine(
        &self,
        filter: &QuarantineFilter,
        limit: usize,
    ) -> Result<Vec<QuarantineRecord>, StorageError> {
        let read = || -> rusqlite::Result<Vec<QuarantineRecord>> {
            let mut stmt = self.conn.prepare_cached(if filter.newest_first {
                "SELECT id, received_at, origin, agent_id, source, topic, ts, payload, reason FROM quarantine
                 WHERE received_at >= ?1 AND received_at < ?2 AND (?4 IS NULL OR agent_id = ?4)
                   AND (?5 IS NULL OR instr(lower(reason), lower(?5)) > 0)
                 ORDER BY received_at DESC, id DESC LIMIT ?3"
            } else {
                "SELECT id, received_at, origin, agent_id, source, topic, ts, payload, reason FROM quarantine
                 WHERE received_at >= ?1 AND received_at < ?2 AND (?4 IS NULL OR agent_id = ?4)
                   AND (?5 IS NULL OR instr(lower(reason), lower(?5)) > 0)
                 ORDER BY received_at, id LIMIT ?3"
            })?;
            stmt.query_map(
                params![filter.from, filter.to, limit, filter.agent, filter.reason],
                |r| {
                    Ok(QuarantineRecord {
                        id: r.get(0)?,
                        received_at: r.get(1)?,
                        origin: r.get(2)?,
                        agent_id: r.get(3)?,
                        source: r.get(4)?,
                        topic: r.get(5)?,
                        ts: r.get(6)?,
                        payload: r.get(7)?,
                        reason: r.get(8)?,
                    })
                },
            )?
            .collect()
        };
        read().map_err(|e| self.error(e))
    }

    fn agents(&self) -> Result<Vec<AgentRecord>, StorageError> {
        let read = || -> rusqlite::Result<Vec<AgentRecord>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT agent_id, first_seen, last_seen, batches, points_received, duplicates, quarantined, gaps,
                        backlog_points, backlog_bytes, oldest_unsent_ts, clock_skew_ns, clock_error_ns FROM agents",
            )?;
            stmt.query_map([], |r| {
                Ok(AgentRecord {
                    agent_id: r.get(0)?,
                    first_seen: r.get(1)?,
                    last_seen: r.get(2)?,
                    batches: r.get::<_, u64>(3)?,
                    points_received: r.get::<_, u64>(4)?,
                    duplicates: r.get::<_, u64>(5)?,
                    quarantined: r.get::<_, u64>(6)?,
                    gaps: r.get::<_, u64>(7)?,
                    backlog_points: r.get::<_, Option<u64>>(8)?.unwrap_or(0),
                    backlog_bytes: r.get::<_, Option<u64>>(9)?.unwrap_or(0),
                    oldest_unsent_ts: r.get(10)?,
                    clock_skew_ns: r.get(11)?,
                    clock_error_ns: r.get::<_, Option<i64>>(12)?.map(|e| e.max(0) as u64),
                    epochs: Vec::new(),
                })
            })?
            .collect()
        };
        read().map_err(|e| self.error(e))
    }

    fn marks(&self) -> Result<Vec<(String, EpochMark)>, StorageError> {
        let read = || -> rusqlite::Result<Vec<(String, EpochMark)>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT agent_id, epoch, last_seq, last_reject, dropped, last_seen FROM marks ORDER BY agent_id, last_seen",
            )?;
            stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    EpochMark {
                        epoch: r.get(1)?,
                        last_seq: r.get::<_, u64>(2)?,
                        last_reject: r.get::<_, u64>(3)?,
                        dropped: r.get::<_, u64>(4)?,
                        last_seen: r.get(5)?,
                    },
                ))
            })?
            .collect()
        };
        read().map_err(|e| self.error(e))
    }

    fn ping(&self) -> Result<(), StorageError> {
        self.conn
            .query_row("SELECT count(*) FROM marks", [], |_| Ok(()))
            .map_err(|e| self.error(e))
    }
}
