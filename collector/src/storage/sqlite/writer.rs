//! The writer thread: group commits, the isolation of a batch the store refuses, and what
//! one transaction stores.

use super::*;

/// The SQLite side of the writer (`crate::storage::writer`): the connection and what the
/// writer keeps between commits.
pub(super) struct SqliteBackend {
    pub(super) conn: Connection,
    pub(super) path: PathBuf,
    pub(super) series: SeriesCache,
    pub(super) chunks: ChunkWriter,
    pub(super) metrics: Arc<Metrics>,
    pub(super) rollups: RollupWriter,
    pub(super) resolutions: Vec<Resolution>,
    pub(super) raw_retention: Option<i64>,
    /// The WAL file's size past which the writer checkpoints and truncates it itself.
    pub(super) wal_limit: u64,
}

const WAL_TRUNCATE_WAIT: Duration = Duration::from_secs(1);

/// Whether a failed transaction says the store cannot commit at all (disk full, I/O errors,
/// a locked or damaged file), as opposed to something in the data it was given. Only the
/// first kind is answered with 503 for the sender to retry; a batch whose data fails is
/// isolated instead, so it cannot come back forever.
pub(crate) fn storage_cannot_commit(error: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    match error.sqlite_error_code() {
        Some(code) => matches!(
            code,
            C::PermissionDenied
                | C::OperationAborted
                | C::DatabaseBusy
                | C::DatabaseLocked
                | C::OutOfMemory
                | C::ReadOnly
                | C::OperationInterrupted
                | C::SystemIoFailure
                | C::DatabaseCorrupt
                | C::DiskFull
                | C::CannotOpen
                | C::FileLockingProtocolFailed
                | C::NoLargeFileSupport
                | C::NotADatabase
        ),
        None => false,
    }
}

impl Backend for SqliteBackend {
    type Error = rusqlite::Error;

    fn cannot_commit(error: &rusqlite::Error) -> bool {
        storage_cannot_commit(error)
    }

    fn read_mark(&mut self, agent_id: &str, epoch: &str) -> rusqlite::Result<u64> {
        Ok(read_mark(&self.conn, agent_id, epoch)?.last_seq)
    }

    fn after_commit(&mut self) {
        self.bound_wal();
    }

    fn retention(&mut self, now: i64) -> Result<RetentionReport, StorageError> {
        SqliteBackend::retention(self, now)
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn store_all(&mut self, jobs: &[BatchAttempt]) -> rusqlite::Result<Vec<Stored>> {
        SqliteBackend::store_all(self, jobs)
    }
}

impl SqliteBackend {
    /// Keeps the WAL under `wal_limit`: the checkpointer thread restarts it only when it gets
    /// the write lock for a moment, which a writer committing without pause never gives, so
    /// past the limit the writer, between two commits and with the group's answers sent,
    /// copies the rest of the WAL into the database and truncates it. Readers still in an
    /// older snapshot make it wait (up to [`WAL_TRUNCATE_WAIT`]) or try again after the next
    /// commit.
    fn bound_wal(&mut self) {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
        if size <= self.wal_limit {
            return;
        }
        let _ = self.conn.busy_timeout(WAL_TRUNCATE_WAIT);
        let result = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            });
        let _ = self.conn.busy_timeout(Duration::from_secs(10));
        match result {
            Ok(0) => {
                self.metrics.wal_restarts.inc();
            }
            // Readers kept it: the next commit tries again.
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, wal_bytes = size, "truncating the WAL failed; retrying after the next commit");
                self.metrics.error("storage", "checkpoint");
            }
        }
    }

    fn store_all(&mut self, jobs: &[BatchAttempt]) -> rusqlite::Result<Vec<Stored>> {
        let points: usize = jobs.iter().map(|p| p.range.len()).sum();
        let mut state = GroupState {
            rows: Vec::with_capacity(points.saturating_add(points / 4)),
            created: Vec::new(),
        };
        let result = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut stored = Vec::with_capacity(jobs.len());
            for pending in jobs {
                stored.push(store_batch(
                    &mut SqliteTx(&tx),
                    &mut self.series,
                    &mut state,
                    pending,
                    &self.metrics,
                )?);
            }
            // Stable: values with equal times keep their arrival order in the chunk.
            state.rows.sort_by_key(|(series, ts, _)| (*series, *ts));
            let chunked = self.chunks.write(&tx, &state.rows)?;
            self.metrics.chunks_written.inc_by(chunked.inserted);
            self.metrics.chunks_appended.inc_by(chunked.appended);
            // Sorted, each series' values are a run: its span is the run's ends, and the
            // numeric values come out in the order the rollups want.
            let rollup_started = Instant::now();
            let mut numeric = Vec::with_capacity(state.rows.len());
            {
                let mut update = tx.prepare_cached(
                    "UPDATE series SET first_ts = min(first_ts, ?2), last_ts = max(last_ts, ?3),
                         exact = exact AND ?4 AND (?5 OR ?2 > last_ts)
                     WHERE id = ?1",
                )?;
                for run in state.rows.chunk_by(|a, b| a.0 == b.0) {
                    let (Some(first), Some(last)) = (run.first(), run.last()) else {
                        continue;
                    };
                    let created = state.created.contains(&first.0);
                    update.execute(params![
                        first.0,
                        first.1,
                        last.1,
                        run_is_exact(run),
                        created
                    ])?;
                    numeric.extend(run.iter().filter_map(|(id, ts, v)| {
                        Some((*id, *ts, crate::storage::read::number(v)?))
                    }));
                }
            }
            let rolled = self.rollups.apply(&tx, &numeric)?;
            self.metrics
                .rollup_seconds
                .observe(rollup_started.elapsed().as_secs_f64());
            self.metrics.rollup_windows.inc_by(rolled.windows);
            self.metrics
                .rollup_late_windows
                .inc_by(rolled.merged_from_disk);
            tx.commit()?;
            Ok(stored)
        })();
        match result {
            Ok(stored) => Ok(stored),
            Err(e) => {
                self.rollups.forget();
                self.chunks.forget();
                // The rollback removed any series created in the transaction: forget their ids
                // by reloading the index (failures are rare; correctness is what matters here).
                match load_series(&self.conn) {
                    Ok(series) => self.series = series,
                    Err(reload) => {
                        error!(error = %reload, "cannot reload the series index after a failed commit");
                        self.metrics.error("storage", "reload_series");
                    }
                }
                Err(e)
            }
        }
    }
}

pub(super) fn read_mark(conn: &Connection, agent_id: &str, epoch: &str) -> rusqlite::Result<Mark> {
    Ok(conn
        .prepare_cached(
            "SELECT last_seq, last_reject, explained FROM marks WHERE agent_id = ?1 AND epoch = ?2",
        )?
        .query_row(params![agent_id, epoch], |r| {
            Ok(Mark {
                last_seq: r.get::<_, u64>(0)?,
                last_reject: r.get::<_, u64>(1)?,
                explained: r.get::<_, u64>(2)?,
            })
        })
        .optional()?
        .unwrap_or_default())
}
