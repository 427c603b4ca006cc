//! Rollups in SQLite: the writer folds each transaction's numeric values into the stored
//! windows, and the read side answers aggregated queries from them.
//!
//! Windows are stored by block: a row of `rollup_blocks` holds the windows of one series at one
//! resolution over 60 steps, in the format of [`crate::storage::blocks`]. A transaction's
//! values are first aggregated among themselves (finest resolution from the points, each
//! coarser one from the finer partials), then each touched window is merged into its block and
//! the block written back, in the same transaction as the raw points. The newest block of each
//! series is kept by the writer, so in-order data needs no read; a late point's block is read
//! from disk. Either way a window ends up as the merge of every point of it, whatever the order
//! they came in.
//!
//! Schema 6 and older kept a row per window (`rollups`); [`convert_rows`] moves them into
//! blocks when such a database is opened.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::chunks;
use crate::rollup::aggregate::StoredColumns;
use crate::rollup::{Aggregate, Resolution, partials};
use crate::storage::blocks::{self, Encoder, WINDOWS_PER_BLOCK, block_start};
use crate::storage::read::number;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rollup_blocks (
    id        INTEGER PRIMARY KEY,
    series_id INTEGER NOT NULL,
    res       INTEGER NOT NULL,
    start     INTEGER NOT NULL,
    windows   INTEGER NOT NULL,
    data      BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS rollup_blocks_by_series ON rollup_blocks (series_id, res, start);
";

/// Series-resolutions whose newest block the writer keeps before it starts over (each a
/// kilobyte or two).
const CACHE_MAX_HEADS: usize = 50_000;

/// Windows as (start, aggregate), by start.
type Windows = Vec<(i64, Aggregate)>;

/// What one transaction did to the rollups.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RollupStats {
    /// Windows written.
    pub windows: u64,
    /// Windows that were read back from disk and merged (late data, or a cold cache).
    pub merged_from_disk: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    series: i64,
    res: i64,
    start: i64,
}

/// The newest block of a series at a resolution, as the writer keeps it: its windows but the
/// newest encoded, and the newest, which in-order data keeps merging into.
struct Head {
    sealed: Encoder,
    sealed_windows: u64,
    newest: Option<(i64, Aggregate)>,
    /// Changed since it was last written.
    dirty: bool,
}

impl Head {
    fn empty(block: i64, res: i64) -> Head {
        Head {
            sealed: Encoder::new(block, res),
            sealed_windows: 0,
            newest: None,
            dirty: false,
        }
    }

    fn from_windows(block: i64, res: i64, mut windows: Vec<(i64, Aggregate)>) -> Head {
        let newest = windows.pop();
        let mut head = Head::empty(block, res);
        for (start, aggregate) in &windows {
            head.sealed.push(*start, aggregate);
        }
        head.sealed_windows = windows.len() as u64;
        head.newest = newest;
        head
    }

    /// Every window, decoded.
    fn windows(&self, res: i64) -> rusqlite::Result<Vec<(i64, Aggregate)>> {
        let mut windows = blocks::windows(self.sealed.bytes(), self.sealed.block(), res, true)
            .map_err(corrupt)?;
        windows.extend(self.newest.clone());
        Ok(windows)
    }

    fn bytes(&self) -> Vec<u8> {
        match &self.newest {
            Some((start, aggregate)) => self.sealed.with(*start, aggregate),
            None => self.sealed.bytes().to_vec(),
        }
    }

    fn window_count(&self) -> u64 {
        self.sealed_windows
            .saturating_add(u64::from(self.newest.is_some()))
    }
}

/// The writer's side: the resolutions and, per series and resolution, the newest block it has
/// written (`Head`). Data arriving in time order merges into the newest window or starts a
/// newer one, which needs no read; a window older than the newest block's (late data) is read
/// back from disk, merged and the block rewritten, and so is the newest block of a series not
/// cached since start.
pub struct RollupWriter {
    resolutions: Vec<Resolution>,
    heads: HashMap<(i64, i64), Head, foldhash::fast::RandomState>,
}

impl RollupWriter {
    /// `resolutions` finest first, each a multiple of the one before (the configuration
    /// checks this).
    pub fn new(resolutions: Vec<Resolution>) -> RollupWriter {
        RollupWriter {
            resolutions,
            heads: HashMap::default(),
        }
    }

    /// Forgets the cache: after a failed transaction it may hold what was rolled back.
    pub fn forget(&mut self) {
        self.heads.clear();
    }

    /// Folds `values` (series id, ts, value), sorted by series then time, into the rollups.
    pub fn apply(
        &mut self,
        tx: &Transaction<'_>,
        values: &[(i64, i64, f64)],
    ) -> rusqlite::Result<RollupStats> {
        let mut stats = RollupStats::default();
        if self.heads.len() >= CACHE_MAX_HEADS {
            // Every head was written at the end of the last transaction.
            self.heads.clear();
        }
        let mut dirty: Vec<(i64, i64)> = Vec::new();
        for level in partials(values, &self.resolutions) {
            for ((series, res, start), partial) in level {
                self.fold(
                    tx,
                    Key { series, res, start },
                    partial,
                    &mut dirty,
                    &mut stats,
                )?;
                stats.windows = stats.windows.saturating_add(1);
            }
        }
        for slot in dirty {
            if let Some(head) = self.heads.get_mut(&slot) {
                write_block(
                    tx,
                    slot,
                    head.sealed.block(),
                    head.window_count(),
                    &head.bytes(),
                )?;
                head.dirty = false;
            }
        }
        Ok(stats)
    }

    /// Folds one window's partial into its block (see [`RollupWriter`]).
    fn fold(
        &mut self,
        tx: &Transaction<'_>,
        key: Key,
        partial: Aggregate,
        dirty: &mut Vec<(i64, i64)>,
        stats: &mut RollupStats,
    ) -> rusqlite::Result<()> {
        let slot = (key.series, key.res);
        let block = block_start(key.start, key.res);
        let head = match self.heads.entry(slot) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(match read_newest_block(tx, slot)? {
                    Some((start, windows)) => Head::from_windows(start, key.res, windows),
                    None => Head::empty(i64::MIN, key.res),
                })
            }
        };
        let head_block = head.sealed.block();
        if block < head_block {
            // Late data for an older block: merge on disk.
            let mut windows = read_block(tx, slot, block)?;
            merge_window(&mut windows, key.start, partial);
            let bytes = blocks::encode(block, key.res, &windows);
            write_block(tx, slot, block, windows.len() as u64, &bytes)?;
            stats.merged_from_disk = stats.merged_from_disk.saturating_add(1);
            return Ok(());
        }
        if block > head_block {
            let listed = head.dirty;
            if head.dirty {
                write_block(tx, slot, head_block, head.window_count(), &head.bytes())?;
            }
            *head = Head::empty(block, key.res);
            head.newest = Some((key.start, partial));
            head.dirty = listed;
        } else {
            match &mut head.newest {
                Some((start, aggregate)) if *start == key.start => aggregate.merge(&partial),
                Some((start, _)) if *start > key.start => {
                    // Late data within the newest block.
                    let mut windows = head.windows(key.res)?;
                    merge_window(&mut windows, key.start, partial);
                    let listed = head.dirty;
                    *head = Head::from_windows(block, key.res, windows);
                    head.dirty = listed;
                    stats.merged_from_disk = stats.merged_from_disk.saturating_add(1);
                }
                newest => {
                    if let Some((start, aggregate)) = newest.take() {
                        head.sealed.push(start, &aggregate);
                        head.sealed_windows = head.sealed_windows.saturating_add(1);
                    }
                    *newest = Some((key.start, partial));
                }
            }
        }
        if !head.dirty {
            head.dirty = true;
            dirty.push(slot);
        }
        Ok(())
    }
}

/// Merges `partial` into the window starting at `start` of `windows` (sorted by start), or
/// adds it in its place.
fn merge_window(windows: &mut Vec<(i64, Aggregate)>, start: i64, partial: Aggregate) {
    match windows.binary_search_by_key(&start, |(s, _)| *s) {
        Ok(at) => {
            if let Some((_, aggregate)) = windows.get_mut(at) {
                aggregate.merge(&partial);
            }
        }
        Err(at) => windows.insert(at, (start, partial)),
    }
}

fn write_block(
    tx: &Transaction<'_>,
    (series, res): (i64, i64),
    block: i64,
    windows: u64,
    bytes: &[u8],
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO rollup_blocks (series_id, res, start, windows, data) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (series_id, res, start) DO UPDATE SET windows = excluded.windows, data = excluded.data",
    )?
    .execute(params![series, res, block, windows as i64, bytes])?;
    Ok(())
}

/// The windows of one stored block (none if it is not stored).
fn read_block(
    conn: &Connection,
    (series, res): (i64, i64),
    block: i64,
) -> rusqlite::Result<Vec<(i64, Aggregate)>> {
    let data: Option<Vec<u8>> = conn
        .prepare_cached(
            "SELECT data FROM rollup_blocks WHERE series_id = ?1 AND res = ?2 AND start = ?3",
        )?
        .query_row(params![series, res, block], |r| r.get(0))
        .optional()?;
    match data {
        Some(data) => blocks::windows(&data, block, res, true).map_err(corrupt),
        None => Ok(Vec::new()),
    }
}

/// The newest stored block of a series at a resolution: (start, windows).
fn read_newest_block(
    conn: &Connection,
    (series, res): (i64, i64),
) -> rusqlite::Result<Option<(i64, Windows)>> {
    let row: Option<(i64, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT start, data FROM rollup_blocks WHERE series_id = ?1 AND res = ?2
             ORDER BY start DESC LIMIT 1",
        )?
        .query_row(params![series, res], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match row {
        Some((block, data)) => Ok(Some((
            block,
            blocks::windows(&data, block, res, true).map_err(corrupt)?,
        ))),
        None => Ok(None),
    }
}

fn corrupt(e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Blob,
        format!("rollup block: {e}").into(),
    )
}

/// Deletes, for `series` at resolution `step`, the blocks whose every window ended by
/// `horizon`, at most `limit` of them; returns (blocks, windows) deleted. A block goes whole,
/// so windows outlive their retention by up to a block's span.
pub fn delete_before(
    tx: &Transaction<'_>,
    series: i64,
    step: i64,
    horizon: i64,
    limit: usize,
) -> rusqlite::Result<(usize, u64)> {
    let last_start = horizon.saturating_sub(step.saturating_mul(WINDOWS_PER_BLOCK));
    let mut stmt = tx.prepare_cached(
        "DELETE FROM rollup_blocks WHERE id IN
         (SELECT id FROM rollup_blocks WHERE series_id = ?1 AND res = ?2 AND start <= ?3 LIMIT ?4)
         RETURNING windows",
    )?;
    let mut rows = stmt.query(params![series, step, last_start, limit as i64])?;
    let (mut blocks, mut windows) = (0usize, 0u64);
    while let Some(row) = rows.next()? {
        blocks = blocks.saturating_add(1);
        windows = windows.saturating_add(row.get::<_, u64>(0)?);
    }
    Ok((blocks, windows))
}

/// Moves the windows of a database from before blocks (the `rollups` table of schema 2 to 6,
/// a row per window) into blocks, in one transaction, and drops that table; returns the
/// windows moved.
pub fn convert_rows(conn: &Connection) -> rusqlite::Result<u64> {
    let exists: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'rollups'",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(0);
    }
    let tx = conn.unchecked_transaction()?;
    let mut moved = 0u64;
    {
        let mut stmt = tx.prepare(
            "SELECT series_id, res, start, count, sum, min, max, first_ts, first, last_ts, last, state
             FROM rollups ORDER BY series_id, res, start",
        )?;
        let mut rows = stmt.query([])?;
        let mut current: Option<((i64, i64), i64)> = None;
        let mut windows: Vec<(i64, Aggregate)> = Vec::new();
        let flush = |slot: ((i64, i64), i64), windows: &mut Vec<(i64, Aggregate)>| {
            let ((series, res), block) = slot;
            let bytes = blocks::encode(block, res, windows);
            let n = windows.len() as u64;
            windows.clear();
            write_block(&tx, (series, res), block, n, &bytes)
        };
        while let Some(row) = rows.next()? {
            let (series, res, start): (i64, i64, i64) = (row.get(0)?, row.get(1)?, row.get(2)?);
            if res <= 0 {
                continue;
            }
            let columns = StoredColumns {
                count: row.get::<_, u64>(3)?,
                sum: row.get::<_, Option<f64>>(4)?.unwrap_or(0.0),
                min: row.get(5)?,
                max: row.get(6)?,
                first: (row.get(7)?, row.get(8)?),
                last: (row.get(9)?, row.get(10)?),
            };
            let aggregate = Aggregate::from_stored(&columns, row.get_ref(11)?.as_blob()?, true)
                .map_err(corrupt)?;
            let slot = ((series, res), block_start(start, res));
            if let Some(previous) = current.filter(|c| *c != slot) {
                flush(previous, &mut windows)?;
            }
            current = Some(slot);
            windows.push((start, aggregate));
            moved = moved.saturating_add(1);
        }
        if let Some(last) = current {
            flush(last, &mut windows)?;
        }
    }
    tx.execute_batch("DROP TABLE rollups;")?;
    tx.commit()?;
    Ok(moved)
}

/// Rolls up every numeric point already stored (a database from before rollups existed), in
/// one transaction; returns the windows written.
pub fn rebuild(conn: &Connection, rollups: &mut RollupWriter) -> rusqlite::Result<u64> {
    let tx = conn.unchecked_transaction()?;
    let mut windows = 0u64;
    let numeric: Vec<i64> = tx
        .prepare("SELECT id FROM series WHERE kind IN ('float', 'integer') ORDER BY id")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut group: Vec<(i64, i64, f64)> = Vec::with_capacity(100_000);
    for (index, id) in numeric.iter().enumerate() {
        let values = chunks::read_all(&tx, *id)?;
        group.extend(
            values
                .iter()
                .filter_map(|(ts, value)| Some((*id, *ts, number(value)?))),
        );
        if group.len() >= 100_000 || index.saturating_add(1) == numeric.len() {
            windows = windows.saturating_add(rollups.apply(&tx, &group)?.windows);
            group.clear();
        }
    }
    tx.commit()?;
    Ok(windows)
}
