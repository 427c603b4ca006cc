use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use super::*;
use crate::codec::encode_batch;

/// Counts the bytes the current thread has allocated and not freed, so a test can compare
/// the decoder's estimate with what decoding really took.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

#[allow(unsafe_code)]
// SAFETY: every call is forwarded to the system allocator unchanged; the counter is a
// const-initialized thread local without a destructor, so touching it never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.with(|live| live.set(live.get() + layout.size() as isize));
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.with(|live| live.set(live.get() - layout.size() as isize));
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.with(|live| live.set(live.get() + new_size as isize - layout.size() as isize));
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn batch_of(points: Vec<Point>) -> Batch {
    Batch {
        agent_id: "edge-1".into(),
        epoch: "e".repeat(32),
        first_seq: 1,
        last_seq: points.len() as u64,
        dropped: 0,
        sent_at: 0,
        status: AgentStatus::default(),
        points,
        rejects: Vec::new(),
    }
}

/// A reading as the agent's inputs make them: a few tags, a few fields.
fn reading(i: i64) -> Point {
    Point::new("temperature", 1_700_000_000_000_000_000 + i)
        .with_tag("agent", "edge-1")
        .with_tag("device", format!("d{}", i % 50))
        .with_tag("site", "plant-3")
        .with_field("value", 21.5 + i as f64)
        .with_field("count", i)
        .with_field("status", "ok")
}

/// Decodes `body` and returns the estimate and the bytes decoding really kept.
fn measured(body: &[u8], encoding: Encoding) -> (usize, usize) {
    let before = LIVE.with(Cell::get);
    let decoded = decode_batch_limited(body, encoding, DecodeLimits::NONE).unwrap();
    let kept = LIVE.with(Cell::get) - before;
    let size = decoded.size;
    drop(decoded);
    (size, kept.max(0) as usize)
}

#[test]
fn decoded_size_estimate_is_close() {
    let shapes: Vec<(&str, Vec<Point>)> = vec![
        ("readings", (0..5000).map(reading).collect()),
        (
            "tiny points (the shape of a decompression attack)",
            (0..5000)
                .map(|i| Point::new("a", i).with_field("v", 1))
                .collect(),
        ),
        (
            "one point with many tags",
            vec![
                (0..5000).fold(Point::new("m", 0).with_field("v", 1.0), |p, i| {
                    p.with_tag(format!("k{i}"), "v")
                }),
            ],
        ),
        (
            "log lines",
            (0..2000)
                .map(|i| Point::new("file", i).with_field("message", "x".repeat(200)))
                .collect(),
        ),
    ];
    for (shape, points) in shapes {
        for encoding in [Encoding::MsgPack, Encoding::Json] {
            let body = encode_batch(&batch_of(points.clone()), encoding).unwrap();
            let (estimate, kept) = measured(&body, encoding);
            let ratio = estimate as f64 / kept as f64;
            assert!(
                (0.9..=1.5).contains(&ratio),
                "{shape} ({encoding:?}): estimated {estimate} bytes, decoding kept {kept} ({ratio:.2})"
            );
        }
    }
}

#[test]
fn many_tiny_points_stop_at_the_point_limit_before_the_vector_is_made() {
    let points: Vec<Point> = (0..50_000)
        .map(|i| Point::new("a", i).with_field("v", 1))
        .collect();
    let limits = DecodeLimits {
        max_points: 10_000,
        max_bytes: usize::MAX,
    };
    for encoding in [Encoding::MsgPack, Encoding::Json] {
        let body = encode_batch(&batch_of(points.clone()), encoding).unwrap();
        let before = LIVE.with(Cell::get);
        let error = decode_batch_limited(&body, encoding, limits).unwrap_err();
        assert!(
            matches!(error, DecodeError::TooManyPoints { limit: 10_000 }),
            "{encoding:?}: {error}"
        );
        // MessagePack announces 50,000 and is refused at once; JSON stops at 10,001.
        assert!(LIVE.with(Cell::get) - before < 1 << 20);
    }
}

#[test]
fn a_point_with_endless_tags_or_a_huge_string_stops_at_the_size_limit() {
    let limits = DecodeLimits {
        max_points: usize::MAX,
        max_bytes: 1 << 20,
    };
    let wide = (0..100_000).fold(Point::new("m", 0).with_field("v", 1.0), |p, i| {
        p.with_tag(format!("k{i}"), "v")
    });
    let long = Point::new("m", 0).with_field("s", "x".repeat(4 << 20));
    for point in [wide, long] {
        for encoding in [Encoding::MsgPack, Encoding::Json] {
            let body = encode_batch(&batch_of(vec![point.clone()]), encoding).unwrap();
            let before = LIVE.with(Cell::get);
            let error = decode_batch_limited(&body, encoding, limits).unwrap_err();
            let peak = LIVE.with(Cell::get) - before;
            assert!(
                matches!(error, DecodeError::DecodedTooLarge { limit } if limit == 1 << 20),
                "{error}"
            );
            // Freed again by now; what matters is that nothing large was ever kept, which
            // the string case shows by never allocating its copy.
            assert!(peak < 1 << 20, "{peak}");
        }
    }
}

#[test]
fn limited_decoding_equals_serde_decoding() {
    let mut batch = batch_of((0..100).map(reading).collect());
    batch.rejects.push(Reject {
        id: 1,
        received_at: 5,
        source: "mqtt".into(),
        topic: "t".into(),
        payload: vec![0, 159, 146, 150],
        reason: "invalid UTF-8".into(),
    });
    batch.status.clock = Some(crate::ClockEstimate {
        offset_ns: -5,
        error_ns: 7,
    });
    for encoding in [Encoding::MsgPack, Encoding::Json] {
        let body = encode_batch(&batch, encoding).unwrap();
        let decoded = decode_batch_limited(&body, encoding, DecodeLimits::NONE).unwrap();
        assert_eq!(decoded.batch, batch);
        let by_serde: Batch = match encoding {
            Encoding::MsgPack => rmp_serde::from_slice(&body).unwrap(),
            Encoding::Json => serde_json::from_slice(&body).unwrap(),
        };
        assert_eq!(by_serde, batch);
    }
}

#[test]
fn a_status_without_the_clock_from_an_older_agent_still_decodes() {
    // An older agent's status has three elements.
    #[derive(serde::Serialize)]
    struct OldStatus(u64, u64, Option<i64>);
    #[derive(serde::Serialize)]
    struct OldBatch(
        String,
        String,
        u64,
        u64,
        u64,
        i64,
        OldStatus,
        Vec<Point>,
        Vec<Reject>,
    );
    let old = OldBatch(
        "a".into(),
        "e".into(),
        1,
        1,
        0,
        0,
        OldStatus(4, 5, None),
        vec![reading(1)],
        vec![],
    );
    let body = rmp_serde::to_vec(&old).unwrap();
    let decoded = decode_batch_limited(&body, Encoding::MsgPack, DecodeLimits::NONE).unwrap();
    assert_eq!(decoded.batch.status.backlog_points, 4);
    assert_eq!(decoded.batch.status.clock, None);
    // And the other way: a status without an estimate is the three elements an older
    // collector reads (it refuses a fourth).
    let status = AgentStatus {
        backlog_points: 4,
        backlog_bytes: 5,
        oldest_unsent_ts: None,
        clock: None,
    };
    assert_eq!(
        rmp_serde::to_vec(&status).unwrap(),
        rmp_serde::to_vec(&OldStatus(4, 5, None)).unwrap()
    );
}

mod extremes {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// u64 counters in a field: up to i64::MAX they are integers; past it the batch is
        /// malformed with a reason (a field is a signed 64-bit integer), never a panic or a
        /// wrapped value.
        #[test]
        fn unsigned_counters_fit_or_are_refused_with_a_reason(value in any::<u64>(), ts in any::<i64>()) {
            // One point with the counter, spliced into a batch as the agent sends it.
            let mut point = Vec::new();
            rmp::encode::write_array_len(&mut point, 4).unwrap();
            rmp::encode::write_str(&mut point, "m").unwrap();
            rmp::encode::write_map_len(&mut point, 0).unwrap();
            rmp::encode::write_map_len(&mut point, 1).unwrap();
            rmp::encode::write_str(&mut point, "count").unwrap();
            rmp::encode::write_uint(&mut point, value).unwrap();
            rmp::encode::write_sint(&mut point, ts).unwrap();
            let header = crate::codec::BatchHeader {
                agent_id: "a".into(),
                epoch: "e".into(),
                first_seq: 1,
                last_seq: 1,
                dropped: 0,
                sent_at: 0,
                status: AgentStatus::default(),
            };
            let body = crate::codec::encode_stored_batch(
                &header,
                std::iter::once(point.as_slice()),
                &[],
                Encoding::MsgPack,
            )
            .unwrap();
            match decode_batch_limited(&body, Encoding::MsgPack, DecodeLimits::NONE) {
                Ok(decoded) => {
                    prop_assert!(value <= i64::MAX as u64);
                    prop_assert_eq!(&decoded.batch.points[0].fields["count"], &FieldValue::I64(value as i64));
                    prop_assert_eq!(decoded.batch.points[0].ts, ts);
                }
                Err(DecodeError::Malformed(reason)) => {
                    prop_assert!(value > i64::MAX as u64);
                    prop_assert!(reason.contains("does not fit"), "{}", reason);
                }
                Err(other) => prop_assert!(false, "{}", other),
            }
        }
    }
}
