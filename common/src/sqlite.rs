//! What both SQLite stores need: opening a database file the same way ([`open_wal`]), and
//! multi-row INSERT statements ([`MultiRowInsert`]).
//!
//! Inserting many rows with one statement is about twice as fast as one statement per row
//! (SQLite updates an `AUTOINCREMENT` counter, and runs the statement's setup, once per
//! statement; see BENCHMARKS.md, "SQLite ceiling"). Statements come in power-of-two sizes, so
//! only a handful live in rusqlite's prepared-statement cache.

/// Why [`open_wal`] failed.
#[derive(Debug)]
pub enum OpenError {
    Sqlite(rusqlite::Error),
    /// The journal could not be switched to WAL (`got` is the mode SQLite kept).
    NotWal {
        got: String,
    },
    /// The file was written by a newer program (`PRAGMA user_version`).
    TooNew {
        found: i64,
        supported: i64,
    },
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Sqlite(e) => write!(f, "{e}"),
            OpenError::NotWal { got } => write!(f, "could not switch to WAL mode (got {got})"),
            OpenError::TooNew { found, supported } => write!(
                f,
                "schema version {found} is newer than this version of Tributary understands ({supported}); upgrade it"
            ),
        }
    }
}

impl std::error::Error for OpenError {}

impl From<rusqlite::Error> for OpenError {
    fn from(e: rusqlite::Error) -> Self {
        OpenError::Sqlite(e)
    }
}

/// Opens (or creates) the database at `path` as both programs keep their files: waiting up to
/// `busy_timeout` for a lock, in WAL mode (checked: a file system that cannot do it is an
/// error, not a silent fallback), with `synchronous = FULL` (a commit is on disk when it
/// returns). Returns the connection and the file's schema version, which must not be newer
/// than `supported`; migrating is the caller's.
pub fn open_wal(
    path: &std::path::Path,
    busy_timeout: std::time::Duration,
    supported: i64,
) -> Result<(rusqlite::Connection, i64), OpenError> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(busy_timeout)?;
    let got: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !got.eq_ignore_ascii_case("wal") {
        return Err(OpenError::NotWal { got });
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > supported {
        return Err(OpenError::TooNew { found, supported });
    }
    Ok((conn, found))
}

/// `INSERT INTO table (columns) VALUES (…), (…), …` for 1, 2, 4, … up to `max_rows` rows.
#[derive(Debug)]
pub struct MultiRowInsert {
    /// `statements[k]` inserts `2^k` rows.
    statements: Vec<String>,
}

impl MultiRowInsert {
    /// Statements for `table (columns)`; `max_rows` is rounded down to a power of two.
    pub fn new(table: &str, columns: &[&str], max_rows: usize) -> MultiRowInsert {
        let width = columns.len();
        let statements = (0..=max_rows.max(1).ilog2())
            .map(|power| {
                let rows: Vec<String> = (0..1usize << power)
                    .map(|row| {
                        let params: Vec<String> = (1..=width)
                            .map(|column| format!("?{}", row * width + column))
                            .collect();
                        format!("({})", params.join(", "))
                    })
                    .collect();
                format!(
                    "INSERT INTO {table} ({}) VALUES {}",
                    columns.join(", "),
                    rows.join(", ")
                )
            })
            .collect();
        MultiRowInsert { statements }
    }

    /// `items` split into runs of power-of-two length (largest first, in order), each with the
    /// statement that inserts that many rows.
    pub fn chunks<'a, T>(&'a self, items: &'a [T]) -> impl Iterator<Item = (&'a str, &'a [T])> {
        let largest = 1usize << (self.statements.len() - 1);
        let mut rest = items;
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let rows = largest.min(1 << rest.len().ilog2());
            let (chunk, tail) = rest.split_at(rows);
            rest = tail;
            Some((
                self.statements[rows.trailing_zeros() as usize].as_str(),
                chunk,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_wal_sets_the_journal_and_refuses_a_newer_schema() {
        let dir = std::env::temp_dir().join(format!("open-wal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.db");
        let timeout = std::time::Duration::from_secs(1);
        let (conn, version) = open_wal(&path, timeout, 3).unwrap();
        assert_eq!(version, 0);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let synchronous: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(synchronous, 2, "FULL");
        conn.pragma_update(None, "user_version", 4).unwrap();
        drop(conn);
        match open_wal(&path, timeout, 3) {
            Err(OpenError::TooNew {
                found: 4,
                supported: 3,
            }) => {}
            other => panic!("{:?}", other.map(|(_, v)| v)),
        }
        assert_eq!(open_wal(&path, timeout, 4).unwrap().1, 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn statements_number_their_parameters_row_by_row() {
        let insert = MultiRowInsert::new("t", &["a", "b"], 4);
        let chunks: Vec<(&str, &[u8])> = insert.chunks(&[1, 2, 3]).collect();
        assert_eq!(chunks.len(), 2);
        assert_eq!(
            chunks[0],
            (
                "INSERT INTO t (a, b) VALUES (?1, ?2), (?3, ?4)",
                &[1, 2][..]
            )
        );
        assert_eq!(
            chunks[1],
            ("INSERT INTO t (a, b) VALUES (?1, ?2)", &[3][..])
        );
    }

    #[test]
    fn chunks_cover_everything_in_order_and_never_exceed_the_maximum() {
        let insert = MultiRowInsert::new("t", &["x"], 64);
        for len in [0usize, 1, 63, 64, 65, 200, 1000] {
            let items: Vec<usize> = (0..len).collect();
            let chunks: Vec<&[usize]> = insert.chunks(&items).map(|(_, c)| c).collect();
            assert!(
                chunks
                    .iter()
                    .all(|c| c.len().is_power_of_two() && c.len() <= 64)
            );
            assert_eq!(chunks.concat(), items);
        }
    }
}
