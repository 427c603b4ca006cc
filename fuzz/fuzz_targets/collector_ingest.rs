//! The whole collector ingest path: a batch is encoded as an agent encodes it, decoded within
//! the collector's limits, cleaned (time sanity and a set of rules) and stored into a real
//! SQLite store in a temporary directory, some of it sent twice, as retries are.
//!
//! Checked: nothing panics; every point is stored or quarantined, none twice (a resent batch
//! stores nothing); what the acknowledgements count is what the store holds; and every
//! 1-minute rollup window equals a direct computation over the raw values stored for it.

#![no_main]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tributary_collector::config::Config;
use tributary_collector::metrics::Metrics;
use tributary_collector::rollup::{Agg, window_start};
use tributary_collector::storage::{
    AggregateQuery, Origin, QuarantineFilter, RawQuery, Storage, StorageOptions, Stored, WriteJob,
};
use tributary_wire::codec::{self, Encoding};
use tributary_wire::decode::{DecodeLimits, decode_batch_limited};
use tributary_wire::{AgentStatus, Batch, FieldValue, Point};

const MINUTE: i64 = 60_000_000_000;
const BASE: i64 = 1_700_000_000_000_000_000;

#[derive(Arbitrary, Debug)]
struct Input {
    batches: Vec<ArbBatch>,
}

#[derive(Arbitrary, Debug)]
struct ArbBatch {
    points: Vec<ArbPoint>,
    /// Send it again after it was stored, as an agent retries.
    resend: bool,
}

#[derive(Arbitrary, Debug)]
struct ArbPoint {
    name: u8,
    device: u8,
    fields: Vec<(u8, ArbValue)>,
    ts: ArbTs,
}

#[derive(Arbitrary, Debug)]
enum ArbValue {
    F(f64),
    I(i64),
    B(bool),
    S(u8),
}

#[derive(Arbitrary, Debug)]
enum ArbTs {
    /// Anywhere in the i64 range.
    Any(i64),
    /// Seconds around a fixed time, so windows fill up.
    Near(i16),
}

/// The rules the store cleans with: a range clamp, a unit conversion and a dedupe window,
/// so their state and their quarantines are part of what is fuzzed.
const CONFIG: &str = r#"
[time]
max_future = "off"

[[clean.rules]]
name = "clamp"
action = "range"
match = { field = "f1" }
min = -1000.0
max = 1000.0
policy = "clamp"

[[clean.rules]]
name = "temps"
action = "convert"
match = { name = "m2", field = "f2" }
from = "degF"
to = "degC"

[[clean.rules]]
name = "repeat"
action = "dedupe"
window = "10m"
"#;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fn options(dir: &Path) -> StorageOptions {
    let config = Config::load_str(CONFIG, Path::new("fuzz.toml")).unwrap();
    let mut options = config.storage_options();
    options.path = dir.join("c.db");
    options.queue = 4;
    options.readers = 1;
    options
}

fn point(p: &ArbPoint) -> Point {
    let mut point = Point::new(
        format!("m{}", p.name % 3),
        match p.ts {
            ArbTs::Any(ts) => ts,
            ArbTs::Near(seconds) => BASE + i64::from(seconds) * 1_000_000_000,
        },
    );
    point
        .tags
        .insert("device".into(), format!("d{}", p.device % 3));
    for (key, value) in p.fields.iter().take(4) {
        let value = match value {
            ArbValue::F(v) => FieldValue::F64(*v),
            ArbValue::I(v) => FieldValue::I64(*v),
            ArbValue::B(v) => FieldValue::Bool(*v),
            ArbValue::S(n) => FieldValue::Str("s".repeat(usize::from(*n))),
        };
        point.fields.insert(format!("f{}", key % 3), value);
    }
    point
}

async fn store(storage: &Storage, batch: Batch) -> Stored {
    let (reply, answer) = tokio::sync::oneshot::channel();
    storage
        .reserve(Duration::from_secs(30))
        .await
        .unwrap()
        .submit(WriteJob {
            agent_id: "a1".into(),
            batch,
            received_at: BASE,
            origin: Origin::Agent,
            reply,
            memory: None,
        });
    answer.await.unwrap().unwrap()
}

fuzz_target!(|input: Input| {
    if input.batches.len() > 8 || input.batches.iter().any(|b| b.points.len() > 64) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let storage = Storage::open(&options(dir.path()), Arc::new(Metrics::new())).unwrap();
        let mut seq = 1u64;
        let (mut stored, mut quarantined, mut sent) = (0u64, 0u64, 0u64);
        for arb in &input.batches {
            let points: Vec<Point> = arb.points.iter().map(point).collect();
            let n = points.len() as u64;
            let batch = Batch {
                agent_id: "a1".into(),
                epoch: "e".into(),
                first_seq: seq,
                last_seq: seq + n - 1,
                dropped: 0,
                sent_at: BASE,
                status: AgentStatus::default(),
                points,
                rejects: Vec::new(),
            };
            // Through the wire, as the collector receives it.
            let body = codec::encode_batch(&batch, Encoding::MsgPack).unwrap();
            let limits = DecodeLimits {
                max_points: 100_000,
                max_bytes: 64 << 20,
            };
            let batch = decode_batch_limited(&body, Encoding::MsgPack, limits)
                .unwrap()
                .batch;
            let ack = store(&storage, batch.clone()).await.ack;
            assert_eq!(ack.committed_through, seq + n - 1);
            assert_eq!(ack.stored + ack.quarantined + ack.duplicates, n);
            assert_eq!(ack.duplicates, 0);
            stored += ack.stored;
            quarantined += ack.quarantined;
            sent += n;
            if arb.resend {
                let again = store(&storage, batch).await.ack;
                assert_eq!(
                    (again.stored, again.quarantined, again.duplicates),
                    (0, 0, n)
                );
            }
            seq += n;
        }
        assert_eq!(stored + quarantined, sent);

        // What the store holds is what was acknowledged.
        let held = storage
            .list_quarantine(QuarantineFilter {
                from: i64::MIN,
                to: i64::MAX,
                limit: 1_000_000,
                newest_first: false,
                agent: None,
                reason: None,
            })
            .await
            .unwrap()
            .0;
        assert_eq!(held.len() as u64, quarantined);
        let raw = storage
            .query_raw(RawQuery {
                name: String::new(),
                field: None,
                from: i64::MIN,
                to: i64::MAX,
                tags: Vec::new(),
                limit: 10_000_000,
            })
            .await
            .unwrap();
        // Rollups equal a direct computation over the stored raw values.
        for series in &raw.series {
            // Per window: count, sum, sum of magnitudes, min, max.
            let mut direct: BTreeMap<i64, (u64, f64, f64, f64, f64)> = BTreeMap::new();
            for (ts, value) in &series.points {
                let v = match value {
                    FieldValue::F64(v) => *v,
                    FieldValue::I64(v) => *v as f64,
                    _ => continue,
                };
                if !v.is_finite() {
                    continue;
                }
                let e = direct.entry(window_start(*ts, MINUTE)).or_insert((
                    0,
                    0.0,
                    0.0,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                ));
                e.0 += 1;
                e.1 += v;
                e.2 += v.abs();
                e.3 = e.3.min(v);
                e.4 = e.4.max(v);
            }
            let query = AggregateQuery {
                raw: RawQuery {
                    name: series.name.clone(),
                    field: Some(series.field.clone()),
                    from: i64::MIN,
                    to: i64::MAX,
                    tags: series
                        .tags
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    limit: 10_000_000,
                },
                step: MINUTE,
                aggs: vec![Agg::Count, Agg::Sum, Agg::Min, Agg::Max],
                window: None,
            };
            let resolutions = options(dir.path()).resolutions;
            let result = storage.query_aggregated(query, resolutions).await.unwrap();
            assert_eq!(
                result.resolution,
                Some(MINUTE),
                "answered from the 1m rollups"
            );
            let by_agg = |agg: Agg| -> BTreeMap<i64, f64> {
                result
                    .series
                    .iter()
                    .filter(|s| s.agg == agg)
                    .flat_map(|s| s.points.iter().copied())
                    .collect()
            };
            let (count, sum, min, max) = (
                by_agg(Agg::Count),
                by_agg(Agg::Sum),
                by_agg(Agg::Min),
                by_agg(Agg::Max),
            );
            assert_eq!(count.len(), direct.len(), "{series:?}");
            for (start, (n, s, magnitude, lo, hi)) in &direct {
                assert_eq!(count.get(start).copied(), Some(*n as f64), "window {start}");
                assert_eq!(min.get(start).copied(), Some(*lo), "window {start}");
                assert_eq!(max.get(start).copied(), Some(*hi), "window {start}");
                // A sum within f64's range agrees to the rounding of a naive sum (the rollup
                // sums compensated); past the range, where partial sums overflow, the result
                // depends on the order of addition and is not compared.
                if magnitude.is_finite() {
                    let got = sum.get(start).copied().unwrap_or(f64::NAN);
                    assert!(
                        (got - s).abs() <= 1e-12 * magnitude,
                        "window {start}: sum {got} vs direct {s}"
                    );
                }
            }
        }
        drop(storage);
    });
});
