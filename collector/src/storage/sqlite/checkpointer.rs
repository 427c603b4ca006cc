//! The WAL checkpointer thread (and, while commits fail, the health probe).

use super::*;

/// How often the checkpointer copies the WAL into the database.
pub(super) const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// WAL frames (pages) past which the checkpointer restarts the WAL (~16 MiB of 4 KiB pages).
pub(super) const RESTART_FRAMES: i64 = 4096;

/// How long a restarting checkpoint waits for the writer and for readers before it settles
/// for a passive one: while it waits, the writer waits too.
pub(super) const RESTART_WAIT: Duration = Duration::from_millis(100);

/// Checkpoints the WAL from its own connection, so the writer's commits never pay for it
/// (SQLite's automatic checkpoint runs inside the commit that crosses its threshold).
///
/// Passive checkpoints alone never catch up with a busy writer: the WAL is reused from its
/// start only once a checkpoint has copied all of it, so under steady ingest it grows without
/// bound, and every commit appends to a growing file (the file system zero-fills each new
/// block: a fifth of the writer's time in a profile of the 24 h benchmark). So once the WAL
/// passes [`RESTART_FRAMES`], the checkpointer takes the write lock briefly (a passive pass
/// just copied almost everything), copies the rest and resets the WAL.
///
/// While the writer's last commit failed for want of storage (a full disk), it also tries a
/// one-row write now and then, so health recovers once the store can commit again, whether or
/// not a sender is retrying.
pub(super) fn start_checkpointer(
    path: &Path,
    metrics: Arc<Metrics>,
    health: Arc<StoreHealth>,
) -> Result<(std::sync::mpsc::Sender<()>, JoinHandle<()>), StorageError> {
    let (conn, _) = open_connection(path)?;
    conn.busy_timeout(RESTART_WAIT)
        .map_err(|source| StorageError::Sqlite {
            path: path.display().to_string(),
            source,
        })?;
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("storage-checkpoint".into())
        .spawn(move || {
            let checkpoint = |mode: &str| {
                conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                    r.get::<_, i64>(1)
                })
            };
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(CHECKPOINT_INTERVAL)
            {
                let result = checkpoint("PASSIVE").and_then(|frames| {
                    if frames > RESTART_FRAMES {
                        metrics.wal_restarts.inc();
                        checkpoint("RESTART")?;
                    }
                    Ok(())
                });
                if let Err(e) = result {
                    warn!(error = %e, "WAL checkpoint failed; retrying");
                    metrics.error("storage", "checkpoint");
                }
                if health.failure().is_some() {
                    match conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('probe', ?1)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        [tributary_wire::time::now_ns()],
                    ) {
                        Ok(_) => health.commit_succeeded(),
                        Err(e) if storage_cannot_commit(&e) => {
                            health.commit_failed(&e.to_string());
                        }
                        Err(_) => {}
                    }
                }
            }
        })
        .map_err(|e| StorageError::Other(format!("cannot start the checkpoint thread: {e}")))?;
    Ok((stop, handle))
}
