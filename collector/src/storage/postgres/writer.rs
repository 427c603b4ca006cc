//! The PostgreSQL side of the writer ([`crate::storage::writer`]): one collector's writer
//! thread, one client, and a store that other collectors write at the same time.
//!
//! Exactly once across collectors rests on row locks taken inside the group's transaction:
//! - the `(agent, epoch)` marks of every batch of the group are created if missing and locked
//!   (`SELECT … FOR UPDATE`) first, in sorted order, so two collectors storing the same batch
//!   at once take turns and the second sees the first's raised mark (nothing is stored twice),
//!   and two groups never wait on each other's marks in a cycle;
//! - a rollup block is read `FOR UPDATE`, merged and written back, blocks in sorted order, so
//!   windows touched by several collectors at once merge every update;
//! - series are created with `ON CONFLICT DO NOTHING` and read back when another collector
//!   created them first.
//!
//! A lost connection, a deadlock or a serialization failure is "cannot commit" (503, the
//! agent retries); the next group reconnects.

use std::collections::BTreeMap;
use std::sync::Arc;

use postgres::{Client, Transaction};
use tributary_wire::FieldValue;

use super::{PgError, connect_raw, redact};
use crate::metrics::Metrics;
use crate::rollup::{Resolution, partials, window_start};
use crate::storage::blocks::{self, WINDOWS_PER_BLOCK, block_start};
use crate::storage::group::{
    AgentUpdate, GroupState, GroupTx, MarkUpdate, QuarantineRow, run_is_exact, store_batch,
};
use crate::storage::read::CHUNK_SPAN;
use crate::storage::series::{SeriesCache, ValueClass};
use crate::storage::writer::{Backend, BatchAttempt, Mark};
use crate::storage::{RetentionReport, StorageError, Stored};

/// Values one chunk holds at most.
const MAX_VALUES: usize = 4096;
/// Rows one retention pass deletes at most.
const RETENTION_ROWS: i64 = 50_000;
/// The advisory lock that lets one collector at a time run retention.
const RETENTION_LOCK: i64 = 0x7472_6962_0002;

/// The group's transaction, as [`GroupTx`] sees it.
struct PgTx<'a, 'b>(&'a mut Transaction<'b>);

impl GroupTx for PgTx<'_, '_> {
    type Error = postgres::Error;

    fn mark(&mut self, agent_id: &str, epoch: &str) -> Result<Mark, postgres::Error> {
        // A row to lock even before the first batch: a missing row locks nothing.
        self.0.execute(
            "INSERT INTO marks (agent_id, epoch, last_seq, last_reject, dropped, explained, first_seen, last_seen)
             VALUES ($1, $2, 0, 0, 0, 0, 0, 0) ON CONFLICT DO NOTHING",
            &[&agent_id, &epoch],
        )?;
        let row = self.0.query_one(
            "SELECT last_seq, last_reject, explained FROM marks
             WHERE agent_id = $1 AND epoch = $2 FOR UPDATE",
            &[&agent_id, &epoch],
        )?;
        let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(Mark {
            last_seq: unsigned(row.get(0)),
            last_reject: unsigned(row.get(1)),
            explained: unsigned(row.get(2)),
        })
    }

    fn create_series(
        &mut self,
        name: &str,
        tags_json: &str,
        field: &str,
        kind: &str,
        ts: i64,
    ) -> Result<(i64, bool), postgres::Error> {
        let created = self.0.query_opt(
            "INSERT INTO series (name, tags, field, kind, first_ts, last_ts, exact)
             VALUES ($1, $2, $3, $4, $5, $5, TRUE) ON CONFLICT DO NOTHING RETURNING id",
            &[&name, &tags_json, &field, &kind, &ts],
        )?;
        match created {
            Some(row) => Ok((row.get(0), true)),
            None => Ok((
                self.0
                    .query_one(
                        "SELECT id FROM series WHERE name = $1 AND tags = $2 AND field = $3",
                        &[&name, &tags_json, &field],
                    )?
                    .get(0),
                false,
            )),
        }
    }

    fn quarantine(&mut self, row: &QuarantineRow<'_>) -> Result<(), postgres::Error> {
        self.0.execute(
            "INSERT INTO quarantine (received_at, origin, agent_id, epoch, agent_reject_id, source, topic, ts, payload, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &row.received_at,
                &row.origin,
                &row.agent_id,
                &row.epoch,
                &row.agent_reject_id,
                &row.source,
                &row.topic,
                &row.ts,
                &row.payload,
                &row.reason,
            ],
        )?;
        Ok(())
    }

    fn raise_mark(&mut self, m: &MarkUpdate<'_>) -> Result<(), postgres::Error> {
        self.0.execute(
            "INSERT INTO marks (agent_id, epoch, last_seq, last_reject, dropped, explained, first_seen, last_seen)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
             ON CONFLICT (agent_id, epoch) DO UPDATE SET
                 last_seq = GREATEST(marks.last_seq, excluded.last_seq),
                 last_reject = GREATEST(marks.last_reject, excluded.last_reject),
                 dropped = GREATEST(marks.dropped, excluded.dropped),
                 explained = GREATEST(marks.explained, excluded.explained),
                 first_seen = CASE WHEN marks.first_seen = 0 THEN excluded.first_seen ELSE marks.first_seen END,
                 last_seen = excluded.last_seen",
            &[
                &m.agent_id,
                &m.epoch,
                &m.last_seq,
                &m.last_reject,
                &m.dropped,
                &m.explained,
                &m.seen,
            ],
        )?;
        Ok(())
    }

    fn update_agent(&mut self, a: &AgentUpdate<'_>) -> Result<(), postgres::Error> {
        self.0.execute(
            "INSERT INTO agents (agent_id, first_seen, last_seen, batches, points_received, duplicates, quarantined, gaps,
                                 backlog_points, backlog_bytes, oldest_unsent_ts, clock_skew_ns, clock_error_ns)
             VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (agent_id) DO UPDATE SET
                 last_seen = GREATEST(agents.last_seen, excluded.last_seen),
                 batches = agents.batches + excluded.batches,
                 points_received = agents.points_received + excluded.points_received,
                 duplicates = agents.duplicates + excluded.duplicates,
                 quarantined = agents.quarantined + excluded.quarantined,
                 gaps = agents.gaps + excluded.gaps,
                 backlog_points = coalesce(excluded.backlog_points, agents.backlog_points),
                 backlog_bytes = coalesce(excluded.backlog_bytes, agents.backlog_bytes),
                 oldest_unsent_ts = CASE WHEN excluded.backlog_points IS NULL THEN agents.oldest_unsent_ts ELSE excluded.oldest_unsent_ts END,
                 clock_skew_ns = coalesce(excluded.clock_skew_ns, agents.clock_skew_ns),
                 clock_error_ns = CASE WHEN excluded.clock_skew_ns IS NULL THEN agents.clock_error_ns ELSE excluded.clock_error_ns END",
            &[
                &a.agent_id,
                &a.seen,
                &a.batches,
                &a.points,
                &a.duplicates,
                &a.quarantined,
                &a.gaps,
                &a.backlog_points,
                &a.backlog_bytes,
                &a.oldest_unsent_ts,
                &a.clock_skew_ns,
                &a.clock_error_ns,
            ],
        )?;
        Ok(())
    }
}

/// One collector's writer on a shared PostgreSQL.
pub(crate) struct PgBackend {
    url: String,
    client: Option<Client>,
    /// The schema is known to be current and the series are loaded.
    ready: bool,
    series: SeriesCache,
    metrics: Arc<Metrics>,
    resolutions: Vec<Resolution>,
    raw_retention: Option<i64>,
}

fn load_series(client: &mut Client) -> Result<SeriesCache, postgres::Error> {
    let mut cache = SeriesCache::default();
    for row in client.query("SELECT id, name, tags, field, kind FROM series", &[])? {
        let tags: String = row.get(2);
        let tags: BTreeMap<String, String> = serde_json::from_str(&tags).unwrap_or_default();
        let name: String = row.get(1);
        let field: String = row.get(3);
        let kind: String = row.get(4);
        cache.insert(&name, &tags, &field, row.get(0), ValueClass::of_kind(&kind));
    }
    Ok(cache)
}

impl PgBackend {
    /// Connects, creates or migrates the schema, and loads the series. A server that cannot
    /// be reached is not fatal: the collector starts, refuses batches (503) while it stays
    /// away, and connects when it is back. A server that refuses (authentication, a missing
    /// database, a newer schema) is.
    pub(crate) fn open(
        url: &str,
        metrics: Arc<Metrics>,
        resolutions: Vec<Resolution>,
        raw_retention: Option<i64>,
    ) -> Result<PgBackend, StorageError> {
        let mut backend = PgBackend {
            url: url.to_owned(),
            client: None,
            ready: false,
            series: SeriesCache::default(),
            metrics,
            resolutions,
            raw_retention,
        };
        match backend.client() {
            Ok(_) => Ok(backend),
            Err(e) if e.is_unreachable() => {
                tracing::warn!(
                    url = %redact(url),
                    error = %e,
                    "PostgreSQL cannot be reached; batches are refused (503) until it can"
                );
                backend.metrics.error("storage", "unreachable");
                Ok(backend)
            }
            Err(e) => Err(e.into_storage(url)),
        }
    }

    /// The client, connected again if the last one was lost; the first connection also
    /// creates or migrates the schema and loads the series.
    fn client(&mut self) -> Result<&mut Client, PgError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            let mut client = connect_raw(&self.url)?;
            if !self.ready {
                super::migrate_raw(&mut client)?;
                self.series = load_series(&mut client)?;
                self.ready = true;
            }
            self.client = Some(client);
        }
        self.client
            .as_mut()
            .ok_or_else(|| PgError::Tls("no connection".into()))
    }

    fn store(&mut self, jobs: &[BatchAttempt]) -> Result<Vec<Stored>, PgError> {
        let metrics = Arc::clone(&self.metrics);
        let resolutions = self.resolutions.clone();
        let mut series = std::mem::take(&mut self.series);
        let result = (|| {
            let client = self.client()?;
            let mut tx = client.transaction()?;
            // Every mark of the group, locked in one order (module docs).
            let mut marks: Vec<(&str, &str)> = jobs
                .iter()
                .filter(|p| p.job.origin == crate::storage::Origin::Agent)
                .map(|p| (p.job.agent_id.as_str(), p.job.batch.epoch.as_str()))
                .collect();
            marks.sort_unstable();
            marks.dedup();
            for (agent, epoch) in marks {
                PgTx(&mut tx).mark(agent, epoch)?;
            }
            let points: usize = jobs.iter().map(|p| p.range.len()).sum();
            let mut state = GroupState {
                rows: Vec::with_capacity(points),
                created: Vec::new(),
            };
            let mut stored = Vec::with_capacity(jobs.len());
            for pending in jobs {
                stored.push(store_batch(
                    &mut PgTx(&mut tx),
                    &mut series,
                    &mut state,
                    pending,
                    &metrics,
                )?);
            }
            state.rows.sort_by_key(|(id, ts, _)| (*id, *ts));
            write_chunks(&mut tx, &state.rows)?;
            update_series(&mut tx, &state.rows, &state.created)?;
            let numeric: Vec<(i64, i64, f64)> = state
                .rows
                .iter()
                .filter_map(|(id, ts, v)| Some((*id, *ts, crate::storage::read::number(v)?)))
                .collect();
            let windows = fold_rollups(&mut tx, &numeric, &resolutions)?;
            metrics.rollup_windows.inc_by(windows);
            tx.commit()?;
            Ok::<_, PgError>(stored)
        })();
        match &result {
            Ok(_) => self.series = series,
            // The rollback took any series it created: reload the index.
            Err(_) => {
                if let Some(client) = self.client.as_mut().filter(|c| !c.is_closed())
                    && let Ok(reloaded) = load_series(client)
                {
                    self.series = reloaded;
                }
            }
        }
        result
    }
}

/// Writes the group's values, sorted by series and time, as chunks (one per series and
/// aligned hour, at most `MAX_VALUES` values each), all in one statement.
fn write_chunks(
    tx: &mut Transaction<'_>,
    rows: &[(i64, i64, &FieldValue)],
) -> Result<(), postgres::Error> {
    let (mut ids, mut starts, mut ends, mut counts, mut data) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let same_chunk = |a: &(i64, i64, &FieldValue), b: &(i64, i64, &FieldValue)| {
        a.0 == b.0 && window_start(a.1, CHUNK_SPAN) == window_start(b.1, CHUNK_SPAN)
    };
    for hour in rows.chunk_by(same_chunk) {
        for part in hour.chunks(MAX_VALUES) {
            let (Some(first), Some(last)) = (part.first(), part.last()) else {
                continue;
            };
            let mut buf = Vec::new();
            crate::storage::codec::encode(&mut buf, first.1, part);
            ids.push(first.0);
            starts.push(first.1);
            ends.push(last.1);
            counts.push(part.len() as i64);
            data.push(buf);
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    tx.execute(
        "INSERT INTO chunks (series_id, start_ts, end_ts, count, data)
         SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::bytea[])",
        &[&ids, &starts, &ends, &counts, &data],
    )?;
    Ok(())
}

/// Widens each written series' time range and keeps its `exact` flag (see
/// [`run_is_exact`]): the rows locked in id order first, then one update for all of them.
fn update_series(
    tx: &mut Transaction<'_>,
    rows: &[(i64, i64, &FieldValue)],
    created: &[i64],
) -> Result<(), postgres::Error> {
    let (mut ids, mut firsts, mut lasts, mut exact, mut new) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in rows.chunk_by(|a, b| a.0 == b.0) {
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            continue;
        };
        ids.push(first.0);
        firsts.push(first.1);
        lasts.push(last.1);
        exact.push(run_is_exact(run));
        new.push(created.contains(&first.0));
    }
    if ids.is_empty() {
        return Ok(());
    }
    // In one order, so two collectors writing the same series never wait on each other in a
    // cycle (an UPDATE … FROM locks in the join's order).
    tx.execute(
        "SELECT id FROM series WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        &[&ids],
    )?;
    tx.execute(
        "UPDATE series AS s SET first_ts = LEAST(s.first_ts, u.first_ts),
             last_ts = GREATEST(s.last_ts, u.last_ts),
             exact = s.exact AND u.exact AND (u.created OR u.first_ts > s.last_ts)
         FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::bool[], $5::bool[])
             AS u(id, first_ts, last_ts, exact, created)
         WHERE s.id = u.id",
        &[&ids, &firsts, &lasts, &exact, &new],
    )?;
    Ok(())
}

/// Merges the group's partial windows into their blocks and returns the windows merged.
///
/// Three statements whatever the number of blocks: every block the group touches is created
/// empty if missing (so that there is a row to lock: two collectors creating the same block
/// would otherwise both merge into nothing, and the second would overwrite the first), then
/// read `FOR UPDATE` in `(series, resolution, start)` order, merged, and written back.
fn fold_rollups(
    tx: &mut Transaction<'_>,
    values: &[(i64, i64, f64)],
    resolutions: &[Resolution],
) -> Result<u64, PgError> {
    let mut by_block: BTreeMap<(i64, i64, i64), Vec<(i64, crate::rollup::Aggregate)>> =
        BTreeMap::new();
    let mut windows = 0u64;
    for level in partials(values, resolutions) {
        for ((series, res, start), partial) in level {
            by_block
                .entry((series, res, block_start(start, res)))
                .or_default()
                .push((start, partial));
            windows = windows.saturating_add(1);
        }
    }
    if by_block.is_empty() {
        return Ok(0);
    }
    let (mut ids, mut ress, mut starts) = (Vec::new(), Vec::new(), Vec::new());
    for (series, res, block) in by_block.keys() {
        ids.push(*series);
        ress.push(*res);
        starts.push(*block);
    }
    tx.execute(
        "INSERT INTO rollup_blocks (series_id, res, start, windows, data)
         SELECT k.series_id, k.res, k.start, 0, ''::bytea
         FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS k(series_id, res, start)
         ORDER BY 1, 2, 3
         ON CONFLICT DO NOTHING",
        &[&ids, &ress, &starts],
    )?;
    let mut stored: BTreeMap<(i64, i64, i64), Vec<u8>> = BTreeMap::new();
    for row in tx.query(
        "SELECT b.series_id, b.res, b.start, b.data FROM rollup_blocks AS b
         JOIN unnest($1::int8[], $2::int8[], $3::int8[]) AS k(series_id, res, start)
           ON b.series_id = k.series_id AND b.res = k.res AND b.start = k.start
         ORDER BY 1, 2, 3 FOR UPDATE OF b",
        &[&ids, &ress, &starts],
    )? {
        stored.insert((row.get(0), row.get(1), row.get(2)), row.get(3));
    }
    let (mut counts, mut data) = (Vec::new(), Vec::new());
    for ((series, res, block), partials) in by_block {
        let mut merged = match stored.get(&(series, res, block)) {
            Some(bytes) if !bytes.is_empty() => blocks::windows(bytes, block, res, true)
                .map_err(|e| {
                    PgError::Corrupt(format!(
                        "rollup block (series {series}, resolution {res} ns, start {block}) cannot be read: {e}"
                    ))
                })?,
            _ => Vec::new(),
        };
        for (start, partial) in partials {
            match merged.binary_search_by_key(&start, |(s, _)| *s) {
                Ok(at) => {
                    if let Some((_, aggregate)) = merged.get_mut(at) {
                        aggregate.merge(&partial);
                    }
                }
                Err(at) => merged.insert(at, (start, partial)),
            }
        }
        counts.push(merged.len() as i64);
        data.push(blocks::encode(block, res, &merged));
    }
    tx.execute(
        "UPDATE rollup_blocks AS b SET windows = u.windows, data = u.data
         FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::bytea[])
             AS u(series_id, res, start, windows, data)
         WHERE b.series_id = u.series_id AND b.res = u.res AND b.start = u.start",
        &[&ids, &ress, &starts, &counts, &data],
    )?;
    Ok(windows)
}

impl Backend for PgBackend {
    type Error = PgError;

    fn cannot_commit(error: &PgError) -> bool {
        use postgres::error::SqlState;
        let error = match error {
            PgError::Pg(error) => error,
            PgError::Corrupt(_) => return false,
            PgError::Tls(_) | PgError::Schema(_) => return true,
        };
        match error.code() {
            // No SQL state: the connection (lost, refused, closed).
            None => true,
            Some(code) => {
                let class = code.code().get(..2).unwrap_or_default();
                matches!(class, "08" | "53" | "57" | "58")
                    || *code == SqlState::T_R_SERIALIZATION_FAILURE
                    || *code == SqlState::T_R_DEADLOCK_DETECTED
                    || *code == SqlState::READ_ONLY_SQL_TRANSACTION
            }
        }
    }

    fn read_mark(&mut self, agent_id: &str, epoch: &str) -> Result<u64, PgError> {
        let row = self.client()?.query_opt(
            "SELECT last_seq FROM marks WHERE agent_id = $1 AND epoch = $2",
            &[&agent_id, &epoch],
        )?;
        Ok(row.map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
    }

    fn store_all(&mut self, jobs: &[BatchAttempt]) -> Result<Vec<Stored>, PgError> {
        self.store(jobs)
    }

    fn after_commit(&mut self) {}

    fn retention(&mut self, now: i64) -> Result<RetentionReport, StorageError> {
        let raw = self.raw_retention;
        let resolutions = self.resolutions.clone();
        let result = (|| {
            let client = self.client()?;
            let mut tx = client.transaction()?;
            let mut report = RetentionReport::default();
            // One collector at a time; the others find it taken and skip this pass.
            let ours: bool = tx
                .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&RETENTION_LOCK])?
                .get(0);
            if !ours {
                return Ok::<_, PgError>(report);
            }
            let mut budget = RETENTION_ROWS;
            if let Some(keep) = raw {
                let cutoff = now.saturating_sub(keep);
                // Whole chunks past the horizon (a chunk lies within an hour, so the raw data
                // outlives its retention by less than an hour).
                let rows = tx.query(
                    "DELETE FROM chunks WHERE id IN
                     (SELECT id FROM chunks WHERE end_ts < $1 LIMIT $2) RETURNING count",
                    &[&cutoff, &budget],
                )?;
                budget = budget.saturating_sub(rows.len() as i64);
                report.points = rows
                    .iter()
                    .map(|r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0))
                    .sum();
                let n = tx.execute(
                    "DELETE FROM quarantine WHERE id IN
                     (SELECT id FROM quarantine WHERE received_at < $1 LIMIT $2)",
                    &[&cutoff, &budget],
                )?;
                report.quarantined = n;
                budget = budget.saturating_sub(i64::try_from(n).unwrap_or(0));
            }
            for resolution in &resolutions {
                let Some(keep) = resolution.retention else {
                    continue;
                };
                let last_start = now
                    .saturating_sub(keep)
                    .saturating_sub(resolution.step.saturating_mul(WINDOWS_PER_BLOCK));
                let rows = tx.query(
                    "DELETE FROM rollup_blocks WHERE (series_id, res, start) IN
                     (SELECT series_id, res, start FROM rollup_blocks WHERE res = $1 AND start <= $2 LIMIT $3)
                     RETURNING windows",
                    &[&resolution.step, &last_start, &budget],
                )?;
                budget = budget.saturating_sub(rows.len() as i64);
                report.windows = report.windows.saturating_add(
                    rows.iter()
                        .map(|r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0))
                        .sum(),
                );
            }
            report.more = budget <= 0;
            tx.commit()?;
            Ok::<_, PgError>(report)
        })();
        result.map_err(|e| e.into_storage(&self.url))
    }

    fn name(&self) -> String {
        redact(&self.url)
    }
}

/// Starts one collector's writer thread on a shared PostgreSQL: its queue and the thread.
pub(crate) fn start(
    url: &str,
    options: &crate::storage::StorageOptions,
    metrics: Arc<Metrics>,
    health: Arc<crate::storage::StoreHealth>,
) -> Result<
    (
        tokio::sync::mpsc::Sender<crate::storage::writer::Job>,
        std::thread::JoinHandle<()>,
    ),
    StorageError,
> {
    // The blocking client runs a runtime of its own, which cannot start on a thread of the
    // caller's runtime: the writer thread connects, and says whether it could.
    let (opened, result) = std::sync::mpsc::sync_channel(1);
    let url = url.to_owned();
    let (rules, time) = (options.rules.clone(), options.time.clone());
    let (resolutions, raw_retention) = (options.resolutions.clone(), options.raw_retention);
    let commit_max_points = options.commit_max_points;
    let dropper = crate::storage::writer::start_dropper()
        .map_err(|e| StorageError::Other(format!("cannot start the storage-free thread: {e}")))?;
    let (jobs, rx) = tokio::sync::mpsc::channel(options.queue.max(1));
    let thread = std::thread::Builder::new()
        .name("storage-writer".into())
        .spawn(move || {
            let backend =
                match PgBackend::open(&url, Arc::clone(&metrics), resolutions, raw_retention) {
                    Ok(backend) => backend,
                    Err(e) => {
                        let _ = opened.send(Err(e));
                        return;
                    }
                };
            if backend.client.is_none() {
                health.commit_failed("PostgreSQL cannot be reached");
            }
            let _ = opened.send(Ok(()));
            let writer = crate::storage::writer::Writer {
                backend,
                commit_max_points,
                metrics,
                cleaner: crate::clean::Cleaner::new(rules, time),
                dropper,
                health,
            };
            writer.run(rx);
        })
        .map_err(|e| StorageError::Other(format!("cannot start the writer thread: {e}")))?;
    result
        .recv()
        .map_err(|_| StorageError::Other("the writer thread ended at start".into()))??;
    Ok((jobs, thread))
}
