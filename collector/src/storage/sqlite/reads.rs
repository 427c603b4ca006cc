//! The read side: a pool of read connections, raw queries, listings and agents.

use super::*;
use crate::storage::QuarantineFilter;

/// Read connections, used one request at a time each, on the blocking pool.
pub struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl ReadPool {
    pub(super) fn new(path: &Path, size: usize) -> ReadPool {
        ReadPool {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size)),
        }
    }

    /// Runs `work` on a read connection off the async executor.
    pub async fn run<T, F>(self: &Arc<Self>, work: F) -> Result<T, StorageError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| StorageError::Closed)?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let path = pool.path.display().to_string();
            let conn = match pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()
            {
                Some(conn) => conn,
                None => {
                    let (conn, _) = open_connection(&pool.path)?;
                    conn.pragma_update(None, "query_only", true)
                        .map_err(|source| StorageError::Sqlite {
                            path: path.clone(),
                            source,
                        })?;
                    conn
                }
            };
            let result = work(&conn).map_err(|source| StorageError::Sqlite { path, source });
            pool.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
            result
        })
        .await
        .map_err(|e| StorageError::Other(format!("read task failed: {e}")))?
    }
}

/// A series a query selected.
pub(crate) struct Candidate {
    pub id: i64,
    pub tags: BTreeMap<String, String>,
    pub field: String,
    pub kind: String,
    pub first_ts: i64,
    pub last_ts: i64,
}

/// The series named `name` (any name when empty) with `field` (any when `None`) that have the
/// `tags` and data in `[from, to)`, ordered by tags and field.
pub(crate) fn matching_series(
    conn: &Connection,
    name: &str,
    field: Option<&str>,
    from: i64,
    to: i64,
    tags: &[(String, String)],
) -> rusqlite::Result<Vec<(String, Candidate)>> {
    // Tag filters run in SQLite (json_extract on the canonical tags), so a query for one
    // series among thousands does not parse every series' tags; the match is checked again
    // below on the parsed tags.
    let mut sql = String::from(
        "SELECT id, tags, field, kind, first_ts, last_ts, name FROM series
         WHERE (?1 = '' OR name = ?1) AND (?2 IS NULL OR field = ?2) AND last_ts >= ?3 AND first_ts < ?4",
    );
    let mut values: Vec<rusqlite::types::Value> = vec![
        name.to_owned().into(),
        field.map(str::to_owned).into(),
        from.into(),
        to.into(),
    ];
    for (key, value) in tags {
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
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(values.iter()), |r| {
        Ok((
            r.get::<_, String>(6)?,
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, i64>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (name, id, tags_json, field, kind, first_ts, last_ts) = row?;
        let series_tags: BTreeMap<String, String> =
            serde_json::from_str(&tags_json).unwrap_or_default();
        if tags.iter().all(|(k, v)| series_tags.get(k) == Some(v)) {
            out.push((
                name,
                Candidate {
                    id,
                    tags: series_tags,
                    field,
                    kind,
                    first_ts,
                    last_ts,
                },
            ));
        }
    }
    Ok(out)
}

/// Answers a raw query.
pub fn query_raw(conn: &Connection, query: &RawQuery) -> rusqlite::Result<QueryResult> {
    let candidates = matching_series(
        conn,
        &query.name,
        query.field.as_deref(),
        query.from,
        query.to,
        &query.tags,
    )?;
    let mut result = QueryResult::default();
    let mut remaining = query.limit;
    for (name, candidate) in candidates {
        if remaining == 0 {
            result.truncated = true;
            break;
        }
        let (points, truncated) =
            chunks::read(conn, candidate.id, query.from, query.to, Some(remaining))?;
        result.truncated |= truncated;
        remaining = remaining.saturating_sub(points.len());
        if !points.is_empty() {
            result.series.push(SeriesPoints {
                name,
                tags: candidate.tags,
                field: candidate.field,
                points,
            });
        }
        if result.truncated {
            break;
        }
    }
    Ok(result)
}

/// Every series matching `name` (any when empty) and `tags`, for the listing.
pub fn list_series(
    conn: &Connection,
    name: &str,
    tags: &[(String, String)],
    search: &str,
    limit: usize,
) -> rusqlite::Result<(Vec<SeriesInfo>, bool)> {
    let mut candidates = matching_series(conn, name, None, i64::MIN, i64::MAX, tags)?;
    if !search.is_empty() {
        let words: Vec<String> = search.split_whitespace().map(str::to_lowercase).collect();
        candidates.retain(|(name, c)| {
            let text = format!(
                "{name} {} {}",
                c.field,
                c.tags
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
            .to_lowercase();
            words.iter().all(|w| text.contains(w.as_str()))
        });
    }
    let truncated = candidates.len() > limit;
    Ok((
        candidates
            .into_iter()
            .take(limit)
            .map(|(name, c)| SeriesInfo {
                name,
                tags: c.tags,
                field: c.field,
                kind: c.kind,
                first_ts: c.first_ts,
                last_ts: c.last_ts,
            })
            .collect(),
        truncated,
    ))
}

/// Quarantined records the filter selects, at most its `limit`.
pub fn list_quarantine(
    conn: &Connection,
    filter: &QuarantineFilter,
) -> rusqlite::Result<(Vec<QuarantineRecord>, bool)> {
    let mut stmt = conn.prepare_cached(if filter.newest_first {
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
    let limit = filter.limit;
    let mut records = stmt
        .query_map(
            params![
                filter.from,
                filter.to,
                limit.saturating_add(1),
                filter.agent,
                filter.reason
            ],
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
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let truncated = records.len() > limit;
    records.truncate(limit);
    Ok((records, truncated))
}

/// An agent's newest report about itself: when (ns), and field -> value.
pub type SelfReport = (i64, BTreeMap<String, FieldValue>);

/// The newest figures each agent reported about itself (its `tributary_agent` points, see
/// the agent's `inputs/own.rs`), by agent id.
pub fn agents_self_reports(conn: &Connection) -> rusqlite::Result<HashMap<String, SelfReport>> {
    let series: Vec<(i64, String, String)> = conn
        .prepare_cached("SELECT id, tags, field FROM series WHERE name = 'tributary_agent'")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut newest = conn.prepare_cached(
        "SELECT start_ts, data FROM chunks WHERE series_id = ?1 ORDER BY start_ts DESC, id DESC LIMIT 1",
    )?;
    let mut reports: HashMap<String, SelfReport> = HashMap::new();
    for (id, tags, field) in series {
        let Some(agent) = serde_json::from_str::<BTreeMap<String, String>>(&tags)
            .ok()
            .and_then(|mut tags| tags.remove(crate::storage::series::AGENT_TAG))
        else {
            continue;
        };
        let row: Option<(i64, Vec<u8>)> = newest
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((start_ts, data)) = row else {
            continue;
        };
        let mut last: Option<(i64, FieldValue)> = None;
        chunks::decode(id, start_ts, &data, |ts, value| {
            if last.as_ref().is_none_or(|(t, _)| ts >= *t) {
                last = Some((ts, value));
            }
        })?;
        if let Some((ts, value)) = last {
            let report = reports.entry(agent).or_default();
            report.0 = report.0.max(ts);
            report.1.insert(field, value);
        }
    }
    Ok(reports)
}

/// Every agent the store has heard from, with its marks.
pub fn agents(conn: &Connection) -> rusqlite::Result<Vec<AgentRecord>> {
    let mut records: BTreeMap<String, AgentRecord> = BTreeMap::new();
    let mut stmt = conn.prepare_cached(
        "SELECT agent_id, first_seen, last_seen, batches, points_received, duplicates, quarantined, gaps,
                backlog_points, backlog_bytes, oldest_unsent_ts, clock_skew_ns, clock_error_ns FROM agents",
    )?;
    let rows = stmt.query_map([], |r| {
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
    })?;
    for record in rows {
        let record = record?;
        records.insert(record.agent_id.clone(), record);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT agent_id, epoch, last_seq, last_reject, dropped, last_seen FROM marks ORDER BY agent_id, last_seen",
    )?;
    let rows = stmt.query_map([], |r| {
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
    })?;
    for row in rows {
        let (agent_id, mark) = row?;
        if let Some(record) = records.get_mut(&agent_id) {
            record.epochs.push(mark);
        }
    }
    Ok(records.into_values().collect())
}

/// A trivial read, proving the database answers.
pub fn ping(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("SELECT count(*) FROM marks", [], |_| Ok(()))
}
