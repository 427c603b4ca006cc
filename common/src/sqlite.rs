//! SQL both stores need: multi-row INSERT statements.
//!
//! Inserting many rows with one statement is about twice as fast as one statement per row
//! (SQLite updates an `AUTOINCREMENT` counter, and runs the statement's setup, once per
//! statement; see BENCHMARKS.md, "SQLite ceiling"). Statements come in power-of-two sizes, so
//! only a handful live in rusqlite's prepared-statement cache.

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
