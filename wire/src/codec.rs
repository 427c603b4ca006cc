//! How batches are encoded, compressed and decoded on the wire.
//!
//! * `Content-Type: application/vnd.tributary.batch.v1+msgpack`: MessagePack with structs as
//!   arrays (the compact form `rmp_serde::to_vec` produces). The version is in the type, so a
//!   future layout can be told apart.
//! * `Content-Type: application/json`: the same structure as JSON, for debugging.
//! * `Content-Encoding: zstd` or none.
//!
//! Decoding is bounded: the decompressed size may not pass a limit, so a small compressed body
//! cannot expand into an unbounded allocation.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Read;

use crate::batch::{AgentStatus, Batch, Reject};
use crate::point::Point;

/// Content type of a MessagePack batch.
pub const CONTENT_TYPE_MSGPACK: &str = "application/vnd.tributary.batch.v1+msgpack";
/// Content type of a JSON batch.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// Content encoding of a zstd-compressed body.
pub const ENCODING_ZSTD: &str = "zstd";

/// How a batch body is serialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    MsgPack,
    Json,
}

impl Encoding {
    /// The `Content-Type` that announces this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::MsgPack => CONTENT_TYPE_MSGPACK,
            Encoding::Json => CONTENT_TYPE_JSON,
        }
    }

    /// The encoding a `Content-Type` header announces, ignoring parameters like `charset`.
    pub fn from_content_type(value: &str) -> Option<Encoding> {
        let essence = value.split(';').next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case(CONTENT_TYPE_MSGPACK) {
            Some(Encoding::MsgPack)
        } else if essence.eq_ignore_ascii_case(CONTENT_TYPE_JSON) {
            Some(Encoding::Json)
        } else {
            None
        }
    }
}

/// Why a body could not be turned into a batch.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("body is larger than {limit} bytes after decompression")]
    TooLarge { limit: usize },
    #[error("unsupported content type {0:?}; use {CONTENT_TYPE_MSGPACK} or {CONTENT_TYPE_JSON}")]
    UnsupportedContentType(String),
    #[error("unsupported content encoding {0:?}; use zstd or none")]
    UnsupportedContentEncoding(String),
    #[error("body is not valid zstd: {0}")]
    Decompress(std::io::Error),
    #[error("body is not a valid batch: {0}")]
    Malformed(String),
    #[error("the batch has more than {limit} points and rejects; send smaller batches")]
    TooManyPoints { limit: usize },
    #[error("the batch takes more than {limit} bytes once decoded; send smaller batches")]
    DecodedTooLarge { limit: usize },
}

/// Why a batch could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("a stored point is not valid MessagePack: {0}")]
    StoredPoint(#[from] rmp_serde::decode::Error),
    #[error("MessagePack encoding failed: {0}")]
    MsgPack(#[from] rmp_serde::encode::Error),
    #[error("JSON encoding failed: {0}")]
    Json(#[from] serde_json::Error),
    #[error("zstd compression failed: {0}")]
    Compress(std::io::Error),
    #[error("writing the batch failed: {0}")]
    Write(std::io::Error),
}

/// Encodes one point the way the agent's buffer stores it and a MessagePack batch carries it.
pub fn encode_point(point: &Point) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    encode_point_into(&mut out, point);
    out
}

/// Appends the encoding of [`encode_point`] to `out`.
///
/// Writing into a `Vec` cannot fail; MessagePack itself refuses only a string or map of 2^32
/// or more entries, which no point in memory has. Were it to happen, nothing is appended and
/// the stored point would fail to decode (and be quarantined) rather than stop the program.
pub fn encode_point_into(out: &mut Vec<u8>, point: &Point) {
    let start = out.len();
    if rmp_serde::encode::write(out, point).is_err() {
        out.truncate(start);
    }
}

/// Encodes points that differ only in one string field and the time, such as log lines: the
/// name, tags and field key are encoded once, and each point costs two appends. The bytes equal
/// [`encode_point`] of the same point.
#[derive(Debug, Clone)]
pub struct TextPointEncoder {
    /// Everything before the field's value: `[name, tags, {field: `.
    prefix: Vec<u8>,
}

impl TextPointEncoder {
    pub fn new(name: &str, tags: &BTreeMap<String, String>, field: &str) -> TextPointEncoder {
        let mut prefix = Vec::with_capacity(64);
        // `Point` is a struct of four fields, serialized as an array (see the module docs).
        // Into a Vec, with a length that fits: cannot fail.
        let _ = rmp::encode::write_array_len(&mut prefix, 4);
        write_str(&mut prefix, name);
        write_map_len(&mut prefix, tags.len());
        for (key, value) in tags {
            write_str(&mut prefix, key);
            write_str(&mut prefix, value);
        }
        write_map_len(&mut prefix, 1);
        write_str(&mut prefix, field);
        TextPointEncoder { prefix }
    }

    /// Appends the point with `value` in the field, taken at `ts`.
    pub fn encode_into(&self, out: &mut Vec<u8>, value: &str, ts: i64) {
        out.extend_from_slice(&self.prefix);
        write_str(out, value);
        // Into a Vec: cannot fail.
        let _ = rmp::encode::write_sint(out, ts);
    }
}

/// Writing into a Vec cannot fail (strings of 4 GiB aside, which no point has).
fn write_str(out: &mut Vec<u8>, value: &str) {
    let _ = rmp::encode::write_str(out, value);
}

fn write_map_len(out: &mut Vec<u8>, len: usize) {
    let _ = rmp::encode::write_map_len(out, u32::try_from(len).unwrap_or(u32::MAX));
}

/// Decodes one point stored by [`encode_point`].
pub fn decode_point(bytes: &[u8]) -> Result<Point, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

/// Everything in a batch except its points and rejects.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchHeader {
    pub agent_id: String,
    pub epoch: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub dropped: u64,
    pub sent_at: i64,
    pub status: AgentStatus,
}

/// Builds a batch body from points already encoded by [`encode_point`].
///
/// For MessagePack the stored bytes are copied in as they are; the result is byte for byte what
/// `rmp_serde::to_vec(&Batch)` would give. For JSON each point is decoded and re-encoded.
pub fn encode_stored_batch<'a>(
    header: &BatchHeader,
    points: impl ExactSizeIterator<Item = &'a [u8]>,
    rejects: &[Reject],
    encoding: Encoding,
) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(points.len().saturating_mul(48).saturating_add(256));
    write_stored_batch(&mut out, header, points, rejects, encoding)?;
    Ok(out)
}

/// [`encode_stored_batch`] compressed with zstd at `level` in the same pass, so the
/// uncompressed body is never held whole (`level` 0: not compressed).
pub fn encode_stored_batch_compressed<'a>(
    header: &BatchHeader,
    points: impl ExactSizeIterator<Item = &'a [u8]>,
    rejects: &[Reject],
    encoding: Encoding,
    level: i32,
) -> Result<Vec<u8>, EncodeError> {
    if level == 0 {
        return encode_stored_batch(header, points, rejects, encoding);
    }
    let mut encoder =
        zstd::stream::write::Encoder::new(Vec::new(), level).map_err(EncodeError::Compress)?;
    write_stored_batch(&mut encoder, header, points, rejects, encoding)?;
    encoder.finish().map_err(EncodeError::Compress)
}

fn write_stored_batch<'a, W: std::io::Write>(
    out: &mut W,
    header: &BatchHeader,
    points: impl ExactSizeIterator<Item = &'a [u8]>,
    rejects: &[Reject],
    encoding: Encoding,
) -> Result<(), EncodeError> {
    match encoding {
        Encoding::MsgPack => {
            // The field count and order follow `Batch`; the splice test below checks them.
            write_array_len(out, 9)?;
            rmp_serde::encode::write(out, &header.agent_id)?;
            rmp_serde::encode::write(out, &header.epoch)?;
            rmp_serde::encode::write(out, &header.first_seq)?;
            rmp_serde::encode::write(out, &header.last_seq)?;
            rmp_serde::encode::write(out, &header.dropped)?;
            rmp_serde::encode::write(out, &header.sent_at)?;
            rmp_serde::encode::write(out, &header.status)?;
            write_array_len(out, points.len())?;
            for point in points {
                out.write_all(point).map_err(EncodeError::Write)?;
            }
            rmp_serde::encode::write(out, rejects)?;
            Ok(())
        }
        Encoding::Json => {
            let points = points.map(decode_point).collect::<Result<Vec<_>, _>>()?;
            let batch = Batch {
                agent_id: header.agent_id.clone(),
                epoch: header.epoch.clone(),
                first_seq: header.first_seq,
                last_seq: header.last_seq,
                dropped: header.dropped,
                sent_at: header.sent_at,
                status: header.status.clone(),
                points,
                rejects: rejects.to_vec(),
            };
            Ok(serde_json::to_writer(out, &batch)?)
        }
    }
}

fn write_array_len<W: std::io::Write>(out: &mut W, len: usize) -> Result<(), EncodeError> {
    // A batch never holds 2^32 points; the forwarder caps batches far below that.
    let len = u32::try_from(len).map_err(|_| {
        EncodeError::Write(std::io::Error::other(format!(
            "{len} elements do not fit in a MessagePack array"
        )))
    })?;
    rmp::encode::write_array_len(out, len)
        .map(drop)
        .map_err(|e| EncodeError::Write(std::io::Error::other(e.to_string())))
}

/// Encodes a whole batch (used by tests and tools; the agent uses [`encode_stored_batch`]).
pub fn encode_batch(batch: &Batch, encoding: Encoding) -> Result<Vec<u8>, EncodeError> {
    match encoding {
        Encoding::MsgPack => Ok(rmp_serde::to_vec(batch)?),
        Encoding::Json => Ok(serde_json::to_vec(batch)?),
    }
}

/// Compresses a body with zstd at `level` (1 is fast, 3 is zstd's default).
pub fn compress(body: &[u8], level: i32) -> Result<Vec<u8>, EncodeError> {
    zstd::bulk::compress(body, level).map_err(EncodeError::Compress)
}

/// Decompresses `body` per its `Content-Encoding` (zstd, gzip or none), refusing to produce more than `limit` bytes.
/// An uncompressed body comes back as it is, uncopied.
pub fn decompress_limited<'a>(
    body: &'a [u8],
    content_encoding: Option<&str>,
    limit: usize,
) -> Result<Cow<'a, [u8]>, DecodeError> {
    let encoding = content_encoding.map(str::trim).unwrap_or("");
    if !is_compressed(content_encoding) {
        if body.len() > limit {
            return Err(DecodeError::TooLarge { limit });
        }
        return Ok(Cow::Borrowed(body));
    }
    let decoder: Box<dyn Read + '_> = if encoding.eq_ignore_ascii_case(ENCODING_ZSTD) {
        Box::new(zstd::stream::read::Decoder::new(body).map_err(DecodeError::Decompress)?)
    } else if encoding.eq_ignore_ascii_case("gzip") {
        // Telegraf and InfluxDB clients send gzip; several members may follow each other.
        Box::new(flate2::read::MultiGzDecoder::new(body))
    } else {
        return Err(DecodeError::UnsupportedContentEncoding(encoding.to_owned()));
    };
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    // Read one byte past the limit: if it arrives, the body was too large.
    decoder
        .take((limit as u64).saturating_add(1))
        .read_to_end(&mut out)
        .map_err(DecodeError::Decompress)?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge { limit });
    }
    Ok(Cow::Owned(out))
}

/// Whether a `Content-Encoding` value names a compression (not absent, empty or `identity`).
pub fn is_compressed(content_encoding: Option<&str>) -> bool {
    let encoding = content_encoding.map(str::trim).unwrap_or("");
    !(encoding.is_empty() || encoding.eq_ignore_ascii_case("identity"))
}

/// Decodes a decompressed body into a batch and checks its sequence arithmetic, with no limit
/// on its decoded size beyond the body's own (for tools and tests; the collector uses
/// [`crate::decode::decode_batch_limited`]).
pub fn decode_batch(body: &[u8], encoding: Encoding) -> Result<Batch, DecodeError> {
    crate::decode::decode_batch_limited(body, encoding, crate::decode::DecodeLimits::NONE)
        .map(|decoded| decoded.batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point::FieldValue;

    fn sample_batch() -> Batch {
        let points = (0..3)
            .map(|i| {
                Point::new("temperature", 1_700_000_000_000_000_000 + i)
                    .with_tag("device", "d1")
                    .with_field("value", 21.5 + i as f64)
                    .with_field("count", i)
                    .with_field("ok", true)
                    .with_field("note", "fine")
            })
            .collect();
        Batch {
            agent_id: "pump-7".into(),
            epoch: "0123456789abcdef0123456789abcdef".into(),
            first_seq: 41,
            last_seq: 43,
            dropped: 2,
            sent_at: 1_700_000_000_500_000_000,
            status: AgentStatus {
                backlog_points: 7,
                backlog_bytes: 512,
                oldest_unsent_ts: Some(1_700_000_000_000_000_000),
                clock: None,
            },
            points,
            rejects: vec![Reject {
                id: 3,
                received_at: 5,
                source: "mqtt".into(),
                topic: "sensors/x".into(),
                payload: b"{not json".to_vec(),
                reason: "invalid JSON".into(),
            }],
        }
    }

    fn header_of(batch: &Batch) -> BatchHeader {
        BatchHeader {
            agent_id: batch.agent_id.clone(),
            epoch: batch.epoch.clone(),
            first_seq: batch.first_seq,
            last_seq: batch.last_seq,
            dropped: batch.dropped,
            sent_at: batch.sent_at,
            status: batch.status.clone(),
        }
    }

    #[test]
    fn compressed_in_one_pass_decompresses_to_the_plain_encoding() {
        let batch = sample_batch();
        let stored: Vec<Vec<u8>> = batch.points.iter().map(encode_point).collect();
        for encoding in [Encoding::MsgPack, Encoding::Json] {
            let encode = |level| {
                encode_stored_batch_compressed(
                    &header_of(&batch),
                    stored.iter().map(Vec::as_slice),
                    &batch.rejects,
                    encoding,
                    level,
                )
                .unwrap()
            };
            let plain = encode(0);
            let compressed = encode(3);
            assert_ne!(plain, compressed);
            let back = decompress_limited(&compressed, Some("zstd"), 1 << 20).unwrap();
            assert_eq!(back, plain);
            assert_eq!(decode_batch(&back, encoding).unwrap(), batch);
        }
    }

    #[test]
    fn spliced_msgpack_equals_whole_struct_encoding() {
        let batch = sample_batch();
        let stored: Vec<Vec<u8>> = batch.points.iter().map(encode_point).collect();
        let spliced = encode_stored_batch(
            &header_of(&batch),
            stored.iter().map(Vec::as_slice),
            &batch.rejects,
            Encoding::MsgPack,
        )
        .unwrap();
        assert_eq!(spliced, rmp_serde::to_vec(&batch).unwrap());
        assert_eq!(decode_batch(&spliced, Encoding::MsgPack).unwrap(), batch);
    }

    #[test]
    fn text_point_encoder_equals_encode_point() {
        let tags = BTreeMap::from([
            ("agent".to_owned(), "edge-1".to_owned()),
            ("path".to_owned(), "/var/log/ü.log".to_owned()),
        ]);
        let encoder = TextPointEncoder::new("file", &tags, "message");
        let long = "x".repeat(70_000);
        for (message, ts) in [
            ("", 0),
            ("short", 1),
            ("négatif", -5),
            (&long[..40], i64::MAX),
            (&long[..300], i64::MIN),
            (&long[..], 1_700_000_000_000_000_000),
        ] {
            let point = Point {
                name: "file".into(),
                tags: tags.clone(),
                fields: BTreeMap::from([("message".to_owned(), FieldValue::from(message))]),
                ts,
            };
            let mut out = vec![0xAA];
            encoder.encode_into(&mut out, message, ts);
            assert_eq!(out[1..], encode_point(&point)[..], "{message:.20} at {ts}");
        }
    }

    #[test]
    fn json_round_trip_keeps_field_types() {
        let batch = sample_batch();
        let stored: Vec<Vec<u8>> = batch.points.iter().map(encode_point).collect();
        let body = encode_stored_batch(
            &header_of(&batch),
            stored.iter().map(Vec::as_slice),
            &batch.rejects,
            Encoding::Json,
        )
        .unwrap();
        let decoded = decode_batch(&body, Encoding::Json).unwrap();
        assert_eq!(decoded, batch);
        assert_eq!(decoded.points[0].fields["count"], FieldValue::I64(0));
        assert_eq!(decoded.points[0].fields["value"], FieldValue::F64(21.5));
    }

    #[test]
    fn zstd_round_trip_and_bomb_is_refused() {
        let body = vec![0u8; 1 << 20];
        let packed = compress(&body, 3).unwrap();
        assert!(
            packed.len() < 1024,
            "a megabyte of zeros compresses to little"
        );
        assert_eq!(
            decompress_limited(&packed, Some("zstd"), 1 << 20).unwrap(),
            body
        );
        match decompress_limited(&packed, Some("zstd"), (1 << 20) - 1) {
            Err(DecodeError::TooLarge { .. }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(matches!(
            decompress_limited(b"abc", Some("br"), 10),
            Err(DecodeError::UnsupportedContentEncoding(_))
        ));
        assert!(matches!(
            decompress_limited(b"abc", Some("gzip"), 10),
            Err(DecodeError::Decompress(_))
        ));
        // gzip (what Telegraf sends) round-trips and is held to the same limit.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &body).unwrap();
        let gzipped = gz.finish().unwrap();
        assert_eq!(
            decompress_limited(&gzipped, Some("gzip"), 1 << 20).unwrap(),
            body
        );
        assert!(matches!(
            decompress_limited(&gzipped, Some("gzip"), 1000),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            decompress_limited(b"abc", None, 2),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn inconsistent_sequences_are_malformed() {
        let mut batch = sample_batch();
        batch.last_seq = 50;
        let body = encode_batch(&batch, Encoding::MsgPack).unwrap();
        assert!(matches!(
            decode_batch(&body, Encoding::MsgPack),
            Err(DecodeError::Malformed(_))
        ));
        let mut empty = sample_batch();
        empty.points.clear();
        empty.last_seq = empty.first_seq - 1;
        assert!(empty.validate().is_ok());
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for body in [&b""[..], b"\xc1\xc1", b"[1,2,3]", b"\x99\x00"] {
            assert!(decode_batch(body, Encoding::MsgPack).is_err());
            assert!(decode_batch(body, Encoding::Json).is_err());
        }
    }

    #[test]
    fn content_type_parsing_ignores_parameters() {
        assert_eq!(
            Encoding::from_content_type("application/json; charset=utf-8"),
            Some(Encoding::Json)
        );
        assert_eq!(
            Encoding::from_content_type(CONTENT_TYPE_MSGPACK),
            Some(Encoding::MsgPack)
        );
        assert_eq!(Encoding::from_content_type("text/plain"), None);
    }
}
