//! The PostgreSQL store against a real server of its own ([`super::testing::PgServer`]).

use super::testing::PgServer;
use super::*;

#[test]
fn collectors_starting_at_once_create_the_schema_once() {
    let server = PgServer::start();
    let url = server.url();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut client = connect(&url).unwrap();
                migrate(&mut client, &url).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut client = connect(&url).unwrap();
    let version: i64 = client
        .query_one("SELECT value FROM meta WHERE key = 'schema'", &[])
        .unwrap()
        .get(0);
    assert_eq!(version, SCHEMA_VERSION);
    // A newer schema is refused, not downgraded.
    client
        .execute("UPDATE meta SET value = 99 WHERE key = 'schema'", &[])
        .unwrap();
    let refused = migrate(&mut client, &url).unwrap_err().to_string();
    assert!(refused.contains("schema 99 is newer"), "{refused}");
}

#[test]
fn urls_lose_their_password_in_messages() {
    assert_eq!(
        redact("postgres://ingest:s3cret@db:5432/tributary?sslmode=require"),
        "postgres://ingest:***@db:5432/tributary?sslmode=require"
    );
    assert_eq!(redact("postgres://db/x"), "postgres://db/x");
    let refused = connect("postgres://nobody@127.0.0.1:1/x?sslmode=disable")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        refused.starts_with("storage postgres://nobody@127.0.0.1:1/x"),
        "{refused}"
    );
}

#[test]
fn a_server_stopped_mid_stream_is_an_error_then_comes_back() {
    let server = PgServer::start();
    let url = server.url();
    let mut client = connect(&url).unwrap();
    migrate(&mut client, &url).unwrap();
    server.stop_immediate();
    assert!(client.query_one("SELECT 1", &[]).is_err());
    assert!(connect(&url).is_err());
    server.start_again();
    let mut client = connect(&url).unwrap();
    let one: i32 = client.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
}
