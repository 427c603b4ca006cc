//! The read side in PostgreSQL: the row reads the shared queries of [`crate::storage::read`]
//! are built on, on clients of the read pool (each used by one request at a time, on the
//! blocking pool).

use std::cell::RefCell;
use std::collections::BTreeMap;

use postgres::Client;
use postgres::types::ToSql;

use crate::storage::read::{EachBlock, EachChunk, Rows, SeriesQuery, SeriesRow};
use crate::storage::{AgentRecord, EpochMark, QuarantineFilter, QuarantineRecord, StorageError};

/// A client's row reads; errors name the server (without its password).
pub struct PgRows<'c> {
    pub client: RefCell<&'c mut Client>,
    pub url: &'c str,
}

/// A count the store keeps as BIGINT, as the unsigned figure it is.
fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl PgRows<'_> {
    fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, StorageError> {
        self.client
            .borrow_mut()
            .query(sql, params)
            .map_err(|e| super::error(self.url, e))
    }

    /// Calls `each` on the rows of a query as they arrive, until it answers `false`.
    fn each_row(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        each: &mut dyn FnMut(&postgres::Row) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        use postgres::fallible_iterator::FallibleIterator;
        let mut client = self.client.borrow_mut();
        let mut rows = client
            .query_raw(sql, params.iter().copied())
            .map_err(|e| super::error(self.url, e))?;
        while let Some(row) = rows.next().map_err(|e| super::error(self.url, e))? {
            if !each(&row)? {
                break;
            }
        }
        Ok(())
    }
}

fn get<'r, T: postgres::types::FromSql<'r>>(
    row: &'r postgres::Row,
    index: usize,
    url: &str,
) -> Result<T, StorageError> {
    row.try_get(index).map_err(|e| super::error(url, e))
}

impl Rows for PgRows<'_> {
    fn series(&self, query: &SeriesQuery<'_>) -> Result<Vec<SeriesRow>, StorageError> {
        let mut sql = String::from(
            "SELECT id, name, tags, field, kind, first_ts, last_ts, exact FROM series
             WHERE ($1 = '' OR name = $1) AND ($2::text IS NULL OR field = $2)
               AND last_ts >= $3 AND first_ts < $4",
        );
        if query.numeric {
            sql.push_str(" AND kind IN ('float', 'integer', 'boolean')");
        }
        let field = query.field.map(str::to_owned);
        // Tags: containment in the canonical JSON, checked again by the caller.
        let tags = (!query.tags.is_empty()).then(|| {
            serde_json::to_string(
                &query
                    .tags
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect::<BTreeMap<_, _>>(),
            )
            .unwrap_or_default()
        });
        if tags.is_some() {
            sql.push_str(" AND tags::jsonb @> $5::text::jsonb");
        }
        // The order of bytes, as SQLite sorts, whatever the database's collation.
        sql.push_str(r#" ORDER BY name COLLATE "C", tags COLLATE "C", field COLLATE "C""#);
        let mut params: Vec<&(dyn ToSql + Sync)> =
            vec![&query.name, &field, &query.from, &query.to];
        if let Some(tags) = &tags {
            params.push(tags);
        }
        self.query(&sql, &params)?
            .iter()
            .map(|row| {
                let tags: String = get(row, 2, self.url)?;
                Ok(SeriesRow {
                    id: get(row, 0, self.url)?,
                    name: get(row, 1, self.url)?,
                    tags: serde_json::from_str(&tags).unwrap_or_default(),
                    field: get(row, 3, self.url)?,
                    kind: get(row, 4, self.url)?,
                    first_ts: get(row, 5, self.url)?,
                    last_ts: get(row, 6, self.url)?,
                    exact: get(row, 7, self.url)?,
                })
            })
            .collect()
    }

    fn chunks(
        &self,
        series: i64,
        from: i64,
        to: i64,
        each: &mut EachChunk<'_>,
    ) -> Result<(), StorageError> {
        self.each_row(
            "SELECT start_ts, data FROM chunks WHERE series_id = $1 AND start_ts >= $2 AND start_ts < $3
             ORDER BY start_ts, id",
            &[&series, &from, &to],
            &mut |row| each(get(row, 0, self.url)?, get(row, 1, self.url)?),
        )
    }

    fn newest_chunk(&self, series: i64) -> Result<Option<(i64, Vec<u8>)>, StorageError> {
        self.query(
            "SELECT start_ts, data FROM chunks WHERE series_id = $1 ORDER BY start_ts DESC, id DESC LIMIT 1",
            &[&series],
        )?
        .first()
        .map(|row| Ok((get(row, 0, self.url)?, get(row, 1, self.url)?)))
        .transpose()
    }

    fn blocks(
        &self,
        series: i64,
        res: i64,
        from: i64,
        to: i64,
        each: &mut EachBlock<'_>,
    ) -> Result<(), StorageError> {
        self.each_row(
            "SELECT start, data FROM rollup_blocks
             WHERE series_id = $1 AND res = $2 AND start >= $3 AND start < $4 ORDER BY start",
            &[&series, &res, &from, &to],
            &mut |row| {
                each(get(row, 0, self.url)?, get(row, 1, self.url)?)?;
                Ok(true)
            },
        )
    }

    fn quarantine(
        &self,
        filter: &QuarantineFilter,
        limit: usize,
    ) -> Result<Vec<QuarantineRecord>, StorageError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT id, received_at, origin, agent_id, source, topic, ts, payload, reason FROM quarantine
             WHERE received_at >= $1 AND received_at < $2 AND ($4::text IS NULL OR agent_id = $4)
               AND ($5::text IS NULL OR strpos(lower(reason), lower($5)) > 0)
             ORDER BY {} LIMIT $3",
            if filter.newest_first {
                "received_at DESC, id DESC"
            } else {
                "received_at, id"
            }
        );
        self.query(
            &sql,
            &[
                &filter.from,
                &filter.to,
                &limit,
                &filter.agent,
                &filter.reason,
            ],
        )?
        .iter()
        .map(|r| {
            Ok(QuarantineRecord {
                id: get(r, 0, self.url)?,
                received_at: get(r, 1, self.url)?,
                origin: get(r, 2, self.url)?,
                agent_id: get(r, 3, self.url)?,
                source: get(r, 4, self.url)?,
                topic: get(r, 5, self.url)?,
                ts: get(r, 6, self.url)?,
                payload: get(r, 7, self.url)?,
                reason: get(r, 8, self.url)?,
            })
        })
        .collect()
    }

    fn agents(&self) -> Result<Vec<AgentRecord>, StorageError> {
        self.query(
            "SELECT agent_id, first_seen, last_seen, batches, points_received, duplicates, quarantined, gaps,
                    backlog_points, backlog_bytes, oldest_unsent_ts, clock_skew_ns, clock_error_ns FROM agents",
            &[],
        )?
        .iter()
        .map(|r| {
            Ok(AgentRecord {
                agent_id: get(r, 0, self.url)?,
                first_seen: get(r, 1, self.url)?,
                last_seen: get(r, 2, self.url)?,
                batches: count(get(r, 3, self.url)?),
                points_received: count(get(r, 4, self.url)?),
                duplicates: count(get(r, 5, self.url)?),
                quarantined: count(get(r, 6, self.url)?),
                gaps: count(get(r, 7, self.url)?),
                backlog_points: count(get::<Option<i64>>(r, 8, self.url)?.unwrap_or(0)),
                backlog_bytes: count(get::<Option<i64>>(r, 9, self.url)?.unwrap_or(0)),
                oldest_unsent_ts: get(r, 10, self.url)?,
                clock_skew_ns: get(r, 11, self.url)?,
                clock_error_ns: get::<Option<i64>>(r, 12, self.url)?.map(count),
                epochs: Vec::new(),
            })
        })
        .collect()
    }

    fn marks(&self) -> Result<Vec<(String, EpochMark)>, StorageError> {
        self.query(
            "SELECT agent_id, epoch, last_seq, last_reject, dropped, last_seen FROM marks
             ORDER BY agent_id, last_seen",
            &[],
        )?
        .iter()
        .map(|r| {
            Ok((
                get(r, 0, self.url)?,
                EpochMark {
                    epoch: get(r, 1, self.url)?,
                    last_seq: count(get(r, 2, self.url)?),
                    last_reject: count(get(r, 3, self.url)?),
                    dropped: count(get(r, 4, self.url)?),
                    last_seen: get(r, 5, self.url)?,
                },
            ))
        })
        .collect()
    }

    fn ping(&self) -> Result<(), StorageError> {
        self.query("SELECT 1", &[]).map(|_| ())
    }
}
