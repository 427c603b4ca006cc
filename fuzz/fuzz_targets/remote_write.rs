//! Prometheus remote write as the collector reads it: any bytes as a snappy body (bounded
//! decompression) and as a decompressed WriteRequest, walked series by series into a batch
//! within limits. Nothing may panic; the batch never passes its limits; every series is
//! points or a reject.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_collector::api::remote_write::to_batch;
use tributary_collector::prometheus::remote::decompress;
use tributary_wire::decode::DecodeLimits;

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits {
        max_points: 1_000,
        max_bytes: 1 << 20,
    };
    for raw in [decompress(data, 1 << 20).ok(), Some(data.to_vec())]
        .into_iter()
        .flatten()
    {
        if let Ok((batch, size)) = to_batch("fuzz", &raw, 0, limits) {
            assert!(batch.points.len() + batch.rejects.len() <= limits.max_points + 1);
            assert!(size <= limits.max_bytes);
            for point in &batch.points {
                assert_eq!(point.fields.len(), 1);
                assert!(!point.name.is_empty());
            }
        }
    }
});
