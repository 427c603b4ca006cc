//! The SQLite store: `Storage` (opening, the writer's queue, closing) here, and one file per
//! concern: `schema` (tables, migrations, connections), `writer` (the group-committing thread
//! and the isolation of a batch the store refuses), `batch` (what one batch stores, and the
//! gap accounting), `retention`, `checkpointer`, `reads` (the read pool, queries, listings),
//! `chunks` (raw values) and `rollups`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::mpsc;
use tracing::{error, warn};
use tributary_wire::FieldValue;

use self::chunks::ChunkWriter;
use self::rollups::RollupWriter;
use super::series::{SeriesCache, ValueClass};
use super::{
    AgentRecord, EpochMark, QuarantineRecord, RetentionReport, StorageError, StorageOptions,
    StoreHealth, Stored,
};
use crate::clean::Cleaner;
use crate::metrics::Metrics;
use crate::rollup::Resolution;

mod batch;
mod checkpointer;
pub mod chunks;
pub mod feed;
mod reads;
mod retention;
pub mod rollups;
mod schema;
mod writer;

use self::batch::*;
use self::checkpointer::*;
pub use self::reads::*;
use self::schema::*;
use self::writer::*;
use super::group::{GroupState, run_is_exact, store_batch};
use super::writer::{Backend, BatchAttempt, Job, Mark, Writer, start_dropper};

/// What opening the SQLite store started.
pub(super) struct Opened {
    pub jobs: mpsc::Sender<Job>,
    pub writer: JoinHandle<()>,
    /// Dropping the sender stops the checkpointer.
    pub checkpoints: (std::sync::mpsc::Sender<()>, JoinHandle<()>),
    pub reads: Arc<super::read::Pool<Connection>>,
}

/// Opens (creating if needed) the database at `path` and starts the writer thread, the
/// checkpointer and the read pool.
pub(super) fn open(
    options: &StorageOptions,
    path: &Path,
    metrics: &Arc<Metrics>,
    health: Arc<StoreHealth>,
) -> Result<Opened, StorageError> {
    let sql = |source| StorageError::Sqlite {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| StorageError::Other(format!("cannot create {}: {e}", parent.display())))?;
    }
    let (conn, version) = open_connection(path)?;
    conn.execute_batch(SCHEMA).map_err(sql)?;
    conn.execute_batch(chunks::SCHEMA).map_err(sql)?;
    conn.execute_batch(feed::SCHEMA).map_err(sql)?;
    conn.execute_batch(rollups::SCHEMA).map_err(sql)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(sql)?;
    // A transaction touches a leaf page per series it writes to; a cache smaller than that
    // spills dirty pages to the WAL before the commit, writing them twice.
    conn.pragma_update(
        None,
        "cache_size",
        0i64.saturating_sub_unsigned(WRITER_CACHE_KIB),
    )
    .map_err(sql)?;
    // A multi-row INSERT into a table with a key keeps a statement journal (to undo just
    // that statement on a conflict); in a temporary file, that costs a write per page.
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(sql)?;
    // Checkpoints run on their own thread (start_checkpointer), not inside commits.
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(sql)?;
    if version < 5 {
        add_column(&conn, "series", "exact", "INTEGER NOT NULL DEFAULT 0").map_err(sql)?;
    }
    if version < 4 {
        add_column(&conn, "agents", "clock_error_ns", "INTEGER").map_err(sql)?;
    }
    if version < 3 {
        add_explained(&conn).map_err(sql)?;
        let values = convert_points(&conn).map_err(sql)?;
        if values > 0 {
            tracing::info!(
                values,
                "moved the raw values of an older database into chunks"
            );
        }
    }
    if version < 7 {
        let windows = rollups::convert_rows(&conn).map_err(sql)?;
        let values = chunks::convert(&conn).map_err(sql)?;
        if windows > 0 || values > 0 {
            tracing::info!(
                windows,
                values,
                "converted the rollup windows and chunks of an older database"
            );
        }
    }
    let series = load_series(&conn).map_err(sql)?;

    let mut rollups = RollupWriter::new(options.resolutions.clone());
    if version == 1 {
        let windows = rollups::rebuild(&conn, &mut rollups).map_err(sql)?;
        tracing::info!(
            windows,
            "rolled up the points stored before rollups existed"
        );
    }
    let (jobs, rx) = mpsc::channel(options.queue);
    let writer = Writer {
        backend: SqliteBackend {
            conn,
            path: path.to_owned(),
            series,
            chunks: ChunkWriter::with_feed(options.export_feed),
            metrics: Arc::clone(metrics),
            rollups,
            resolutions: options.resolutions.clone(),
            raw_retention: options.raw_retention,
            wal_limit: options.wal_limit,
        },
        commit_max_points: options.commit_max_points,
        metrics: Arc::clone(metrics),
        cleaner: Cleaner::new(options.rules.clone(), options.time.clone()),
        dropper: start_dropper().map_err(|e| {
            StorageError::Other(format!("cannot start the storage-free thread: {e}"))
        })?,
        health: Arc::clone(&health),
    };
    let writer = std::thread::Builder::new()
        .name("storage-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(|e| StorageError::Other(format!("cannot start the writer thread: {e}")))?;
    let reader_path = path.to_owned();
    Ok(Opened {
        jobs,
        writer,
        checkpoints: start_checkpointer(path, Arc::clone(metrics), health)?,
        reads: Arc::new(super::read::Pool::new(
            options.readers,
            move || open_reader(&reader_path),
            |_| true,
        )),
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod rollup_tests;
