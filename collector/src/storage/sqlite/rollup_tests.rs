//! Rollups through the real writer and SQLite, compared with a direct computation from the
//! raw points: on time, shuffled, and six hours late.

use std::collections::BTreeMap;

use tributary_wire::{AgentStatus, Batch, Point};

use super::tests::{open, store};
use super::*;
use crate::rollup::{Agg, SKETCH_RELATIVE_ACCURACY, default_resolutions};
use crate::storage::read::query_aggregated;
use crate::storage::{AggregateQuery, AggregateResult, RawQuery, Storage};

const MINUTE: i64 = 60_000_000_000;
const HOUR: i64 = 60 * MINUTE;
/// A fixed "now" in 2023, so points are real timestamps.
const T0: i64 = 1_700_000_000_000_000_000 - 1_700_000_000_000_000_000 % (24 * HOUR);

/// Three hours of readings from two devices, every 7 s, with values that wander.
/// (device, time, value) readings.
type Readings = Vec<(String, i64, f64)>;

/// Every `nth` reading (held back, as by an agent offline) and the rest, in their order.
fn hold_back(readings: &[(String, i64, f64)], nth: usize) -> (Readings, Readings) {
    let (mut late, mut on_time) = (Vec::new(), Vec::new());
    for (i, reading) in readings.iter().enumerate() {
        if i % nth == 0 {
            late.push(reading.clone());
        } else {
            on_time.push(reading.clone());
        }
    }
    (late, on_time)
}

fn readings() -> Vec<(String, i64, f64)> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::new();
    for device in ["d1", "d2"] {
        let mut value = 20.0;
        let mut ts = T0 + 3_000_000_000;
        while ts < T0 + 3 * HOUR {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            value += ((state % 2001) as f64 - 1000.0) / 1000.0;
            out.push((device.to_owned(), ts, (value * 1000.0).round() / 1000.0));
            ts += 7_000_000_000;
        }
    }
    out
}

fn point(device: &str, ts: i64, value: f64) -> Point {
    Point::new("temp", ts)
        .with_tag("device", device)
        .with_field("v", value)
}

fn batch_of(epoch: &str, first_seq: u64, points: Vec<Point>) -> Batch {
    Batch {
        agent_id: "a1".into(),
        epoch: epoch.into(),
        first_seq,
        last_seq: first_seq + points.len() as u64 - 1,
        dropped: 0,
        sent_at: 0,
        status: AgentStatus::default(),
        points,
        rejects: Vec::new(),
    }
}

/// Sends `points` in batches of `sizes` (cycled), one epoch, in the order given.
async fn send(
    storage: &Storage,
    epoch: &str,
    points: &[(String, i64, f64)],
    sizes: &[usize],
    first_seq: u64,
) -> u64 {
    let mut seq = first_seq;
    let mut rest = points;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].min(rest.len());
        let chunk: Vec<Point> = rest[..n]
            .iter()
            .map(|(d, ts, v)| point(d, *ts, *v))
            .collect();
        store(storage, "a1", batch_of(epoch, seq, chunk), T0 + 4 * HOUR)
            .await
            .unwrap();
        seq += n as u64;
        rest = &rest[n..];
        i += 1;
    }
    seq
}

async fn query(
    storage: &Storage,
    step: i64,
    resolutions: Vec<crate::rollup::Resolution>,
) -> AggregateResult {
    let query = AggregateQuery {
        raw: RawQuery {
            name: "temp".into(),
            field: None,
            from: T0,
            to: T0 + 3 * HOUR,
            tags: Vec::new(),
            limit: 1_000_000,
        },
        step,
        aggs: Agg::ALL.to_vec(),
        window: None,
    };
    storage
        .read(move |c| query_aggregated(c, &query, &resolutions))
        .await
        .unwrap()
}

/// (device, agg) -> bucket values.
fn by_series(result: &AggregateResult) -> BTreeMap<(String, &'static str), Vec<(i64, f64)>> {
    result
        .series
        .iter()
        .map(|s| ((s.tags["device"].clone(), s.agg.name()), s.points.clone()))
        .collect()
}

/// The same figures computed directly from the readings, per device and bucket.
fn direct(readings: &[(String, i64, f64)], step: i64) -> BTreeMap<(String, i64), Vec<(i64, f64)>> {
    let mut out: BTreeMap<(String, i64), Vec<(i64, f64)>> = BTreeMap::new();
    for (device, ts, value) in readings {
        out.entry((device.clone(), ts - ts.rem_euclid(step)))
            .or_default()
            .push((*ts, *value));
    }
    out
}

fn close(a: f64, b: f64, relative: f64) -> bool {
    (a - b).abs() <= relative * a.abs().max(b.abs()) || (a - b).abs() < 1e-9
}

/// Checks a result against the direct computation: every bucket, every aggregation.
fn assert_equals_direct(result: &AggregateResult, readings: &[(String, i64, f64)], step: i64) {
    let got = by_series(result);
    let expected = direct(readings, step);
    for ((device, bucket), points) in &expected {
        let mut values: Vec<f64> = points.iter().map(|p| p.1).collect();
        values.sort_by(f64::total_cmp);
        let n = values.len() as f64;
        let sum: f64 = values.iter().sum();
        let mean = sum / n;
        let mut by_time = points.clone();
        by_time.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let value = |agg: &'static str| {
            got[&(device.clone(), agg)]
                .iter()
                .find(|(ts, _)| ts == bucket)
                .map(|p| p.1)
                .unwrap_or_else(|| panic!("{device} {agg} has no bucket {bucket}"))
        };
        assert_eq!(value("count"), n, "{device} {bucket}");
        assert_eq!(value("min"), values[0]);
        assert_eq!(value("max"), values[values.len() - 1]);
        assert_eq!(value("first"), by_time[0].1);
        assert_eq!(value("last"), by_time[by_time.len() - 1].1);
        assert!(
            close(value("sum"), sum, 1e-12),
            "sum {} vs {sum}",
            value("sum")
        );
        assert!(close(value("mean"), mean, 1e-12));
        if values.len() > 1 {
            let sd =
                (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0)).sqrt();
            assert!(
                close(value("stddev"), sd, 1e-9),
                "stddev {} vs {sd}",
                value("stddev")
            );
        }
        for (agg, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
            let exact = values[(q * (n - 1.0)) as usize];
            assert!(
                close(value(agg), exact, SKETCH_RELATIVE_ACCURACY + 1e-9),
                "{agg} {} vs {exact}",
                value(agg)
            );
        }
    }
    assert_eq!(
        got[&("d1".to_owned(), "count")].len(),
        expected.keys().filter(|k| k.0 == "d1").count()
    );
}

/// Rollups and raw answer with the same figures (the sketch bins add exactly).
fn assert_same(a: &AggregateResult, b: &AggregateResult) {
    let (a, b) = (by_series(a), by_series(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (key, points) in &a {
        let other = &b[key];
        assert_eq!(points.len(), other.len(), "{key:?}");
        for (p, q) in points.iter().zip(other) {
            assert_eq!(p.0, q.0);
            if matches!(key.1, "sum" | "mean" | "stddev") {
                assert!(close(p.1, q.1, 1e-12), "{key:?}: {} vs {}", p.1, q.1);
            } else {
                assert_eq!(p.1, q.1, "{key:?} at {}", p.0);
            }
        }
    }
}

async fn check(storage: &Storage, readings: &[(String, i64, f64)]) {
    for (step, expected_res) in [(MINUTE, MINUTE), (5 * MINUTE, MINUTE), (HOUR, HOUR)] {
        let rolled = query(storage, step, default_resolutions()).await;
        assert_eq!(rolled.resolution, Some(expected_res));
        assert_equals_direct(&rolled, readings, step);
        let raw = query(storage, step, Vec::new()).await;
        assert_eq!(raw.resolution, None);
        assert_same(&rolled, &raw);
    }
}

#[tokio::test]
async fn on_time_delivery_rolls_up_like_a_direct_computation() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    let mut readings = readings();
    readings.sort_by_key(|r| r.1);
    send(&storage, "e1", &readings, &[50], 1).await;
    check(&storage, &readings).await;
}

#[tokio::test]
async fn shuffled_delivery_gives_the_same_rollups() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    let readings = readings();
    let mut shuffled = readings.clone();
    let mut state = 42u64;
    for i in (1..shuffled.len()).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        shuffled.swap(i, (state >> 33) as usize % (i + 1));
    }
    send(&storage, "e1", &shuffled, &[1, 17, 250, 3, 64], 1).await;
    check(&storage, &readings).await;
}

#[tokio::test]
async fn points_six_hours_late_fold_into_their_windows() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    let mut readings = readings();
    readings.sort_by_key(|r| r.1);
    // Every third reading is held back (an agent offline), the rest arrive on time...
    let (late, on_time) = hold_back(&readings, 3);
    let next = send(&storage, "e1", &on_time, &[40], 1).await;
    // ...then six hours of other traffic, enough commits for the writer to let go of the
    // early windows, so the late points must be merged with what is on disk.
    let other: Vec<(String, i64, f64)> = (0..2_000)
        .map(|i| {
            (
                "d3".to_owned(),
                T0 + 3 * HOUR + i * 10_800_000_000 / 1_000,
                i as f64,
            )
        })
        .collect();
    let next = send(&storage, "e1", &other, &[10], next).await;
    send(&storage, "e1", &late, &[100], next).await;
    let merged = storage.metrics.rollup_late_windows.get();
    assert!(
        merged > 0,
        "the late points were merged with stored windows"
    );
    check(&storage, &readings).await;
}

#[tokio::test]
async fn a_database_from_before_rollups_is_rolled_up_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut readings = readings();
    readings.sort_by_key(|r| r.1);
    {
        let storage = open(&dir);
        send(&storage, "e1", &readings, &[500], 1).await;
    }
    // Make it look like a version 1 database: no rollups yet.
    let conn = Connection::open(dir.path().join("c.db")).unwrap();
    conn.execute_batch("DELETE FROM rollup_blocks; PRAGMA user_version = 1;")
        .unwrap();
    drop(conn);
    let storage = open(&dir);
    check(&storage, &readings).await;
}

/// A database of schema 6 (a `rollups` row per window with the sketch in DataDog's portable
/// format, chunks of MessagePack pairs) is converted on open: the rollups move into blocks,
/// the chunks into the newest segment format, and every answer stays the same.
#[tokio::test]
async fn a_schema_6_database_is_converted_on_open() {
    use sketches_ddsketch::{Config, DDSketch};
    let dir = tempfile::tempdir().unwrap();
    let mut readings = readings();
    readings.sort_by_key(|r| r.1);
    let steps = [MINUTE, 5 * MINUTE, HOUR];
    let mut before = Vec::new();
    {
        let storage = open(&dir);
        send(&storage, "e1", &readings, &[500], 1).await;
        for step in steps {
            before.push(query(&storage, step, default_resolutions()).await);
        }
    }
    // Write the data back as schema 6 kept it.
    let conn = Connection::open(dir.path().join("c.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE rollups (series_id INTEGER NOT NULL, res INTEGER NOT NULL,
             start INTEGER NOT NULL, count INTEGER NOT NULL, sum REAL NOT NULL,
             min REAL NOT NULL, max REAL NOT NULL, first_ts INTEGER NOT NULL,
             first REAL NOT NULL, last_ts INTEGER NOT NULL, last REAL NOT NULL,
             state BLOB NOT NULL, PRIMARY KEY (series_id, res, start)) WITHOUT ROWID;",
    )
    .unwrap();
    let blocks: Vec<(i64, i64, i64, Vec<u8>)> = conn
        .prepare("SELECT series_id, res, start, data FROM rollup_blocks")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let mut rows = 0;
    for (series, res, block, data) in blocks {
        for (start, a) in crate::storage::blocks::windows(&data, block, res, true).unwrap() {
            let mut theirs = DDSketch::new(Config::new(SKETCH_RELATIVE_ACCURACY, 2048, 1e-9));
            for (key, count) in &a.sketch.positive {
                theirs.add_with_count(crate::rollup::sketch::value(*key), *count);
            }
            for (key, count) in &a.sketch.negative {
                theirs.add_with_count(-crate::rollup::sketch::value(*key), *count);
            }
            theirs.add_with_count(0.0, a.sketch.zero);
            let mut state = vec![1u8];
            state.extend_from_slice(&a.sum_lo.to_le_bytes());
            state.extend_from_slice(&a.m2.to_le_bytes());
            state.extend_from_slice(&theirs.to_java_bytes());
            conn.execute(
                "INSERT INTO rollups VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                rusqlite::params![
                    series,
                    res,
                    start,
                    a.count as i64,
                    a.sum_hi,
                    a.min,
                    a.max,
                    a.first.0,
                    a.first.1,
                    a.last.0,
                    a.last.1,
                    state
                ],
            )
            .unwrap();
            rows += 1;
        }
    }
    assert!(rows > 2 * 180, "{rows} windows");
    // Chunks as MessagePack pairs: the time delta, then the value.
    let chunks: Vec<(i64, i64, Vec<u8>)> = conn
        .prepare("SELECT id, start_ts, data FROM chunks")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    for (id, start_ts, data) in chunks {
        let mut legacy = Vec::new();
        let mut previous = start_ts;
        crate::storage::codec::decode(start_ts, &data, |ts, v| {
            rmp::encode::write_uint(&mut legacy, (ts - previous) as u64).unwrap();
            legacy.extend(rmp_serde::to_vec(&v).unwrap());
            previous = ts;
        })
        .unwrap();
        conn.execute(
            "UPDATE chunks SET data = ?2 WHERE id = ?1",
            rusqlite::params![id, legacy],
        )
        .unwrap();
    }
    conn.execute_batch("DELETE FROM rollup_blocks; PRAGMA user_version = 6;")
        .unwrap();
    drop(conn);
    let storage = open(&dir);
    for (step, before) in steps.into_iter().zip(&before) {
        let after = query(&storage, step, default_resolutions()).await;
        assert_same(before, &after);
        assert_equals_direct(&after, &readings, step);
    }
    check(&storage, &readings).await;
    drop(storage);
    let conn = Connection::open(dir.path().join("c.db")).unwrap();
    let (legacy, segments, version): (i64, bool, i64) = conn
        .query_row(
            "SELECT (SELECT count(*) FROM sqlite_master WHERE name = 'rollups'),
                    (SELECT min(substr(data, 1, 2) = x'c102') FROM chunks),
                    (SELECT user_version FROM pragma_user_version)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((legacy, segments, version), (0, true, SCHEMA_VERSION));
}

#[tokio::test]
async fn retention_deletes_what_is_past_its_horizon() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = StorageOptions::new(&dir.path().join("c.db"));
    options.raw_retention = Some(HOUR);
    options.resolutions[0].retention = Some(2 * HOUR);
    let storage = Storage::open(&options, Arc::new(Metrics::new())).unwrap();
    let mut readings = readings();
    readings.sort_by_key(|r| r.1);
    send(&storage, "e1", &readings, &[500], 1).await;
    // At T0 + 4h: raw kept from 3h, 1m windows that ended by 2h go.
    let mut total = RetentionReport::default();
    for _ in 0..10 {
        let report = storage.retain(T0 + 4 * HOUR).await.unwrap();
        total.points += report.points;
        total.windows += report.windows;
        if !report.more {
            break;
        }
    }
    assert_eq!(
        total.points,
        readings.len() as u64,
        "all raw points are older than 3h"
    );
    assert_eq!(
        total.windows,
        2 * 120,
        "two devices' minute windows of the first two hours"
    );
    let hourly = query(&storage, HOUR, default_resolutions()).await;
    assert_equals_direct(&hourly, &readings, HOUR);
    let again = storage.retain(T0 + 4 * HOUR).await.unwrap();
    assert_eq!((again.points, again.windows), (0, 0));
}

/// After a restart the writer knows nothing: a late window written first must not make it
/// take newer stored windows for new ones.
#[tokio::test]
async fn after_a_restart_late_then_newer_points_merge_with_what_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut readings = readings();
    readings.sort_by_key(|r| r.1);
    let (late, on_time) = hold_back(&readings, 5);
    let next = {
        let storage = open(&dir);
        send(&storage, "e1", &on_time, &[300], 1).await
    };
    let storage = open(&dir);
    // The held-back points, oldest first, one small batch at a time: each batch's early windows
    // are late, its last ones touch the newest windows on disk.
    send(&storage, "e1", &late, &[7], next).await;
    check(&storage, &readings).await;
}

/// PromQL's `*_over_time` from the rollups gives the numbers the raw samples give, and a
/// series the rollups cannot answer exactly (a late value, a time between milliseconds) is
/// read raw.
#[tokio::test]
async fn promql_over_time_from_rollups_equals_the_raw_samples() {
    use crate::promql::{Evaluator, Grid, Series, Source, parse};
    let dir = tempfile::tempdir().unwrap();
    let mut options = StorageOptions::new(&dir.path().join("c.db"));
    options.raw_retention = Some(24 * 7 * 60 * MINUTE);
    let storage = Storage::open(&options, Arc::new(Metrics::new())).unwrap();
    let mut readings = readings();
    // d3: a value arrives after newer ones (late); d4: a value between two milliseconds.
    let mut d3: Readings = readings
        .iter()
        .filter(|r| r.0 == "d1")
        .map(|r| ("d3".to_owned(), r.1, r.2 + 1.0))
        .collect();
    let late = d3.remove(100);
    d3.push(late);
    readings.sort_by_key(|r| r.1);
    readings.extend(d3);
    readings.push(("d4".to_owned(), T0 + HOUR + 1, 5.0));
    readings.push(("d4".to_owned(), T0 + HOUR + 2 * MINUTE, 6.0));
    send(&storage, "e1", &readings, &[700, 3, 50], 1).await;

    let t0 = T0 / 1_000_000;
    let minute = MINUTE / 1_000_000;
    let answers = storage
        .promql(move |windowed| {
            let raw = crate::storage::prom::StoreSource {
                rows: windowed.rows,
                windows: &[],
            };
            let probe = windowed
                .windows(
                    &parse("temp_v").map(|e| match e {
                        promql_parser::parser::Expr::VectorSelector(vs) => {
                            crate::promql::selector_matchers(&vs).unwrap()
                        }
                        _ => unreachable!(),
                    })?,
                    5 * minute,
                    Grid {
                        from: t0 + 30 * minute,
                        to: t0 + 180 * minute,
                        step: minute,
                    },
                    1_000_000,
                )?
                .expect("the minute windows tile the grid");
            let split = (probe.width, probe.windowed.len(), probe.raw.len());
            let queries = [
                "avg_over_time(temp_v[5m])",
                "sum_over_time(temp_v[1h])",
                "count_over_time(temp_v[1m])",
                "min_over_time(temp_v{device=\"d1\"}[10m] offset 1m)",
                "max_over_time(temp_v[2h])",
                "sum by (device) (count_over_time(temp_v[3m]))",
            ];
            let grids = [
                (t0 + 30 * minute, t0 + 180 * minute, minute),
                (t0 + 60 * minute, t0 + 180 * minute, 60 * minute),
                (t0 + 61 * minute, t0 + 180 * minute, 30 * minute),
                (t0 + 30 * minute + 7, t0 + 90 * minute, minute),
            ];
            let mut compared = Vec::new();
            for query in queries {
                let expr = parse(query)?;
                for (start, end, step) in grids {
                    let run = |source: &dyn Source| {
                        Evaluator::new(source, start, end, 1_000_000, Duration::from_secs(30))
                            .range(&expr, step)
                    };
                    let (a, b): (Vec<Series>, Vec<Series>) = (run(&raw)?, run(windowed)?);
                    compared.push((format!("{query} {start}..{end}/{step}"), a, b));
                }
            }
            Ok::<_, crate::promql::QueryError>((split, compared))
        })
        .await
        .unwrap()
        .unwrap();
    let (split, compared) = answers;
    assert_eq!(
        split,
        (MINUTE / 1_000_000, 2, 2),
        "d1, d2 from minute windows; d3, d4 raw"
    );
    for (what, raw, windowed) in compared {
        assert!(!raw.is_empty(), "{what}: no answer");
        assert_eq!(raw.len(), windowed.len(), "{what}");
        for (a, b) in raw.iter().zip(&windowed) {
            assert_eq!(a.labels, b.labels, "{what}");
            assert_eq!(a.samples.len(), b.samples.len(), "{what} {:?}", a.labels);
            for (p, q) in a.samples.iter().zip(&b.samples) {
                assert_eq!(p.0, q.0, "{what}");
                assert!(
                    (p.1 - q.1).abs() <= 1e-9 * p.1.abs().max(q.1.abs()),
                    "{what} {:?} at {}: raw {} windows {}",
                    a.labels,
                    p.0,
                    p.1,
                    q.1
                );
            }
        }
    }
}
