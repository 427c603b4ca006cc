//! The statements of [`crate::storage::group::store_batch`] in SQLite: a single writer, so an
//! agent's marks need no lock beyond the write transaction.

use super::*;
use crate::storage::group::{AgentUpdate, GroupTx, MarkUpdate, QuarantineRow};

/// The group's transaction, as [`GroupTx`] sees it.
pub(super) struct SqliteTx<'t, 'c>(pub(super) &'t rusqlite::Transaction<'c>);

impl GroupTx for SqliteTx<'_, '_> {
    type Error = rusqlite::Error;

    fn mark(&mut self, agent_id: &str, epoch: &str) -> rusqlite::Result<Mark> {
        read_mark(self.0, agent_id, epoch)
    }

    fn create_series(
        &mut self,
        name: &str,
        tags_json: &str,
        field: &str,
        kind: &str,
        ts: i64,
    ) -> rusqlite::Result<(i64, bool)> {
        self.0
            .prepare_cached(
                "INSERT INTO series (name, tags, field, kind, first_ts, last_ts, exact) VALUES (?1, ?2, ?3, ?4, ?5, ?5, 1)",
            )?
            .execute(params![name, tags_json, field, kind, ts])?;
        Ok((self.0.last_insert_rowid(), true))
    }

    fn quarantine(&mut self, row: &QuarantineRow<'_>) -> rusqlite::Result<()> {
        self.0
            .prepare_cached(
                "INSERT INTO quarantine (received_at, origin, agent_id, epoch, agent_reject_id, source, topic, ts, payload, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                row.received_at,
                row.origin,
                row.agent_id,
                row.epoch,
                row.agent_reject_id,
                row.source,
                row.topic,
                row.ts,
                row.payload,
                row.reason
            ])?;
        Ok(())
    }

    fn raise_mark(&mut self, m: &MarkUpdate<'_>) -> rusqlite::Result<()> {
        self.0
            .prepare_cached(
                "INSERT INTO marks (agent_id, epoch, last_seq, last_reject, dropped, explained, first_seen, last_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
                 ON CONFLICT (agent_id, epoch) DO UPDATE SET
                     last_seq = max(last_seq, excluded.last_seq),
                     last_reject = max(last_reject, excluded.last_reject),
                     dropped = max(dropped, excluded.dropped),
                     explained = max(explained, excluded.explained),
                     last_seen = excluded.last_seen",
            )?
            .execute(params![
                m.agent_id,
                m.epoch,
                m.last_seq,
                m.last_reject,
                m.dropped,
                m.explained,
                m.seen
            ])?;
        Ok(())
    }

    fn update_agent(&mut self, a: &AgentUpdate<'_>) -> rusqlite::Result<()> {
        self.0
            .prepare_cached(
                "INSERT INTO agents (agent_id, first_seen, last_seen, batches, points_received, duplicates, quarantined, gaps,
                                     backlog_points, backlog_bytes, oldest_unsent_ts, clock_skew_ns, clock_error_ns)
                 VALUES (?1, ?2, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT (agent_id) DO UPDATE SET
                     last_seen = excluded.last_seen,
                     batches = batches + excluded.batches,
                     points_received = points_received + excluded.points_received,
                     duplicates = duplicates + excluded.duplicates,
                     quarantined = quarantined + excluded.quarantined,
                     gaps = gaps + excluded.gaps,
                     backlog_points = coalesce(excluded.backlog_points, backlog_points),
                     backlog_bytes = coalesce(excluded.backlog_bytes, backlog_bytes),
                     oldest_unsent_ts = CASE WHEN excluded.backlog_points IS NULL THEN oldest_unsent_ts ELSE excluded.oldest_unsent_ts END,
                     clock_skew_ns = coalesce(excluded.clock_skew_ns, clock_skew_ns),
                     clock_error_ns = CASE WHEN excluded.clock_skew_ns IS NULL THEN clock_error_ns ELSE excluded.clock_error_ns END",
            )?
            .execute(params![
                a.agent_id,
                a.seen,
                a.batches,
                a.points,
                a.duplicates,
                a.quarantined,
                a.gaps,
                a.backlog_points,
                a.backlog_bytes,
                a.oldest_unsent_ts,
                a.clock_skew_ns,
                a.clock_error_ns
            ])?;
        Ok(())
    }
}
