//! The sql input against a real SQLite database that grows while it is polled.

use rusqlite::Connection;
use tributary_wire::FieldValue;

use super::*;
use crate::config::tests::{error, one_input};
use crate::inputs::InputConfig;

fn config(path: &std::path::Path) -> SqlConfig {
    let table = format!(
        "[[inputs.sql]]\npath = {path:?}\nquery = \"SELECT id, ts, device, temp, note FROM readings WHERE id > :last ORDER BY id LIMIT 3\"\ntracking_column = \"id\"\ntime_column = \"ts\"\ntag_columns = [\"device\"]\nname = \"gateway\"\n"
    );
    match one_input(&table) {
        InputConfig::Sql(config) => config,
        _ => unreachable!(),
    }
}

fn database(path: &std::path::Path) -> Connection {
    let db = Connection::open(path).unwrap();
    db.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE readings (id INTEGER PRIMARY KEY, ts INTEGER, device TEXT, temp REAL, note TEXT);")
        .unwrap();
    db
}

fn insert(db: &Connection, rows: std::ops::Range<i64>) {
    for id in rows {
        db.execute(
            "INSERT INTO readings (id, ts, device, temp, note) VALUES (?1, ?2, 'd1', ?3, NULL)",
            rusqlite::params![id, 1_700_000_000 + id, id as f64 / 2.0],
        )
        .unwrap();
    }
}

#[tokio::test]
async fn reads_new_rows_once_and_resumes_from_the_committed_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.db");
    let db = database(&path);
    insert(&db, 1..6);
    let mut sql = SqlPoller::new(config(&path), None);

    let first = sql.poll(0).await.unwrap();
    let ids: Vec<i64> = first
        .points
        .iter()
        .map(|p| p.ts / 1_000_000_000 - 1_700_000_000)
        .collect();
    assert_eq!(ids, [1, 2, 3]);
    let point = &first.points[0];
    assert_eq!(point.name, "gateway");
    assert_eq!(point.tags["device"], "d1");
    assert_eq!(point.fields["temp"], FieldValue::F64(0.5));
    assert!(!point.fields.contains_key("id") && !point.fields.contains_key("note"));
    let (key, saved) = first.checkpoint.clone().unwrap();
    assert_eq!(key, TRACKING_KEY);

    // The table grows while it is polled.
    insert(&db, 6..8);
    let second = sql.poll(0).await.unwrap();
    assert_eq!(second.points.len(), 3);
    let third = sql.poll(0).await.unwrap();
    assert_eq!(third.points.len(), 1);
    let idle = sql.poll(0).await.unwrap();
    assert!(idle.points.is_empty() && idle.checkpoint.is_none());

    // A restart after only the first poll committed resumes after row 3.
    let mut restarted = SqlPoller::new(config(&path), Some(&saved));
    let again = restarted.poll(0).await.unwrap();
    assert_eq!(again.points[0].ts, (1_700_000_004) * 1_000_000_000);
}

#[tokio::test]
async fn bad_rows_are_quarantined_and_unordered_results_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.db");
    let db = database(&path);
    db.execute(
        "INSERT INTO readings VALUES (1, 'yesterday', 'd1', 1.0, NULL)",
        [],
    )
    .unwrap();
    db.execute(
        "INSERT INTO readings VALUES (2, 1700000000, 'd1', NULL, NULL)",
        [],
    )
    .unwrap();
    let polled = SqlPoller::new(config(&path), None).poll(0).await.unwrap();
    assert!(polled.points.is_empty());
    assert_eq!(polled.rejected.len(), 2);
    assert!(
        polled.rejected[0].reason.contains("not a time"),
        "{:?}",
        polled.rejected
    );
    assert!(
        polled.rejected[1].reason.contains("no non-NULL field"),
        "{:?}",
        polled.rejected
    );

    let mut unordered = config(&path);
    unordered.query =
        "SELECT id, ts, device, temp FROM readings WHERE id > :last ORDER BY id DESC".into();
    let error = SqlPoller::new(unordered, None).poll(0).await.unwrap_err();
    assert_eq!(error.kind, "unordered");
}

#[test]
fn check_prepares_the_query_against_an_existing_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.db");
    drop(database(&path));
    let message = error(&format!(
        "[[inputs.sql]]\npath = {path:?}\nquery = \"SELECT * FROM nope WHERE id > :last\"\ntracking_column = \"id\"\n"
    ));
    assert!(
        message.contains("inputs.sql[0].query") && message.contains("no such table"),
        "{message}"
    );
    let message = error(&format!(
        "[[inputs.sql]]\npath = {path:?}\nquery = \"SELECT id FROM readings WHERE id > :last\"\ntracking_column = \"rowid_x\"\n"
    ));
    assert!(
        message.contains("inputs.sql[0].tracking_column"),
        "{message}"
    );
    let message = error(&format!(
        "[[inputs.sql]]\npath = {path:?}\nquery = \"SELECT id FROM readings\"\ntracking_column = \"id\"\n"
    ));
    assert!(message.contains(":last"), "{message}");
}
