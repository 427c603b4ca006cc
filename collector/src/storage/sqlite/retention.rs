//! Retention: one bounded pass on the writer thread.

use super::*;

/// Rows (chunks, windows, quarantined records) one retention pass deletes or rewrites at
/// most, so ingest waits for it only briefly.
pub(super) const RETENTION_PASS_ROWS: usize = 50_000;

impl SqliteBackend {
    /// Deletes up to [`RETENTION_PASS_ROWS`] rows that are past their retention: raw points
    /// and quarantined records older than the raw retention, and rollup windows that ended
    /// before their resolution's.
    pub(super) fn retention(&mut self, now: i64) -> Result<RetentionReport, StorageError> {
        let result = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut report = RetentionReport::default();
            let mut budget = RETENTION_PASS_ROWS;
            let ids: Vec<i64> = tx
                .prepare_cached("SELECT id FROM series ORDER BY id")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            if let Some(keep) = self.raw_retention {
                let cutoff = now.saturating_sub(keep);
                for id in &ids {
                    if budget == 0 {
                        break;
                    }
                    let trimmed = chunks::trim(&tx, *id, cutoff, budget)?;
                    report.points = report.points.saturating_add(trimmed.values);
                    budget = budget.saturating_sub(trimmed.rows);
                }
                let n = tx.execute(
                    "DELETE FROM quarantine WHERE id IN
                     (SELECT id FROM quarantine WHERE received_at < ?1 ORDER BY received_at LIMIT ?2)",
                    params![cutoff, budget],
                )?;
                report.quarantined = report.quarantined.saturating_add(n as u64);
                budget = budget.saturating_sub(n);
            }
            for resolution in &self.resolutions {
                let Some(keep) = resolution.retention else {
                    continue;
                };
                // A window goes once all of it is past the horizon, a block once all of its
                // windows are.
                let horizon = now.saturating_sub(keep);
                for id in &ids {
                    if budget == 0 {
                        break;
                    }
                    let (blocks, windows) =
                        rollups::delete_before(&tx, *id, resolution.step, horizon, budget)?;
                    report.windows = report.windows.saturating_add(windows);
                    budget = budget.saturating_sub(blocks);
                }
            }
            tx.commit()?;
            report.more = budget == 0;
            Ok(report)
        })();
        // Windows and chunks the writer remembers may just have been deleted or rewritten.
        self.rollups.forget();
        self.chunks.forget();
        result.map_err(|source| {
            error!(error = %source, "retention pass failed");
            self.metrics.error("storage", "retention");
            StorageError::Sqlite {
                path: self.path.display().to_string(),
                source,
            }
        })
    }
}
