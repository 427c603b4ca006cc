//! The agent-to-collector batch decoder, as the collector runs it: decompression within a
//! limit, then decoding within point and size limits. Nothing may panic; whatever decodes
//! must encode and decode again to the same batch, and stay within the limits.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_wire::codec::{self, Encoding};
use tributary_wire::decode::{DecodeLimits, decode_batch_limited};

const LIMITS: DecodeLimits = DecodeLimits {
    max_points: 10_000,
    max_bytes: 4 << 20,
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let encoding = if mode & 1 == 0 {
        Encoding::MsgPack
    } else {
        Encoding::Json
    };
    let content_encoding = match (mode >> 1) % 3 {
        0 => None,
        1 => Some("zstd"),
        _ => Some("gzip"),
    };
    let Ok(raw) = codec::decompress_limited(body, content_encoding, 1 << 20) else {
        return;
    };
    let Ok(decoded) = decode_batch_limited(&raw, encoding, LIMITS) else {
        return;
    };
    assert!(decoded.batch.points.len() <= LIMITS.max_points);
    assert!(decoded.size <= LIMITS.max_bytes);
    // What decodes is a batch the collector can take: it round-trips.
    let again = codec::encode_batch(&decoded.batch, Encoding::MsgPack).unwrap();
    let back = decode_batch_limited(&again, Encoding::MsgPack, DecodeLimits::NONE).unwrap();
    assert_eq!(
        format!("{:?}", back.batch),
        format!("{:?}", decoded.batch),
        "a decoded batch must survive re-encoding"
    );
});
