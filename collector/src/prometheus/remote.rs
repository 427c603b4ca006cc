//! Prometheus remote write 1.0: its protobuf messages (`prometheus/prompb/remote.proto` and
//! `types.proto`, the fields remote write 1.0 uses), derived with prost so no `protoc` is
//! needed, and the snappy block framing around them.
//!
//! Decoding is bounded and never panics: the snappy header's length is checked against a
//! limit before anything is decompressed, and the request is read one time series at a time
//! (the caller converts each and counts its size), so a body cannot make the collector hold
//! more than the limit plus one series beyond what it stores.

use prost::Message;
use prost::bytes::Buf;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};

/// `Content-Type` of a remote write request.
pub const CONTENT_TYPE: &str = "application/x-protobuf";
/// The protocol version header and its value (remote write 1.0).
pub const VERSION_HEADER: &str = "X-Prometheus-Remote-Write-Version";
pub const VERSION: &str = "0.1.0";

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<MetricMetadata>,
}

/// `prometheus.TimeSeries`. Exemplars (3) are skipped; native histograms (4) are only
/// counted, as this store keeps classic series.
#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    #[prost(message, repeated, tag = "4")]
    pub histograms: Vec<Histogram>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`: a value at a time in milliseconds.
#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// `prometheus.Histogram`, of which nothing is read: only its presence is noticed.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct Histogram {}

/// `prometheus.MetricMetadata`.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct MetricMetadata {
    /// `MetricType`: 0 unknown, 1 counter, 2 gauge, 3 histogram, 4 gauge histogram,
    /// 5 summary, 6 info, 7 stateset.
    #[prost(int32, tag = "1")]
    pub kind: i32,
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
    #[prost(string, tag = "4")]
    pub help: String,
    #[prost(string, tag = "5")]
    pub unit: String,
}

/// Why a remote write body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    #[error("the body is not snappy-compressed (block format): {0}")]
    Snappy(String),
    #[error("the body is {size} bytes once decompressed, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("the body is not a remote write request: {0}")]
    Protobuf(String),
}

/// Decompresses a snappy block within `limit` bytes.
pub fn decompress(body: &[u8], limit: usize) -> Result<Vec<u8>, RemoteError> {
    let size = snap::raw::decompress_len(body).map_err(|e| RemoteError::Snappy(e.to_string()))?;
    if size > limit {
        return Err(RemoteError::TooLarge { size, limit });
    }
    snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| RemoteError::Snappy(e.to_string()))
}

/// Reads a decompressed `WriteRequest` one part at a time: each time series and each
/// metadata entry is handed to `visit` as soon as it is decoded; unknown fields are skipped.
/// `visit` may stop the walk with an error of its own.
pub fn for_each<E: From<RemoteError>>(
    mut buf: &[u8],
    mut visit: impl FnMut(Part) -> Result<(), E>,
) -> Result<(), E> {
    let protobuf = |e: prost::DecodeError| E::from(RemoteError::Protobuf(e.to_string()));
    while buf.has_remaining() {
        let (tag, wire_type) = decode_key(&mut buf).map_err(protobuf)?;
        match (tag, wire_type) {
            (1 | 3, WireType::LengthDelimited) => {
                let length = decode_varint(&mut buf).map_err(protobuf)?;
                let length = usize::try_from(length)
                    .ok()
                    .filter(|&n| n <= buf.len())
                    .ok_or_else(|| {
                        E::from(RemoteError::Protobuf(format!(
                            "a field of {length} bytes in {} left",
                            buf.len()
                        )))
                    })?;
                let (message, rest) = buf.split_at_checked(length).ok_or_else(|| {
                    E::from(RemoteError::Protobuf(
                        "a field runs past the end".to_owned(),
                    ))
                })?;
                buf = rest;
                if tag == 1 {
                    visit(Part::Series(TimeSeries::decode(message).map_err(protobuf)?))?;
                } else {
                    visit(Part::Metadata(
                        MetricMetadata::decode(message).map_err(protobuf)?,
                    ))?;
                }
            }
            _ => {
                skip_field(wire_type, tag, &mut buf, DecodeContext::default()).map_err(protobuf)?;
            }
        }
    }
    Ok(())
}

/// One part of a `WriteRequest`.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Series(TimeSeries),
    Metadata(MetricMetadata),
}

/// A request as it goes on the wire: protobuf, then snappy.
pub fn encode(request: &WriteRequest) -> Result<Vec<u8>, RemoteError> {
    snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .map_err(|e| RemoteError::Snappy(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, samples: &[(i64, f64)]) -> TimeSeries {
        TimeSeries {
            labels: vec![
                Label {
                    name: "__name__".into(),
                    value: name.into(),
                },
                Label {
                    name: "job".into(),
                    value: "node".into(),
                },
            ],
            samples: samples
                .iter()
                .map(|&(timestamp, value)| Sample { value, timestamp })
                .collect(),
            histograms: Vec::new(),
        }
    }

    #[test]
    fn a_request_round_trips_one_part_at_a_time() {
        let request = WriteRequest {
            timeseries: vec![
                series("up", &[(1_000, 1.0), (2_000, 0.0)]),
                series("x", &[]),
            ],
            metadata: vec![MetricMetadata {
                kind: 2,
                metric_family_name: "up".into(),
                help: "Is it up".into(),
                unit: String::new(),
            }],
        };
        let body = encode(&request).unwrap();
        let raw = decompress(&body, 1 << 20).unwrap();
        let mut parts = Vec::new();
        for_each(&raw, |part| {
            parts.push(part);
            Ok::<(), RemoteError>(())
        })
        .unwrap();
        assert_eq!(
            parts,
            vec![
                Part::Series(request.timeseries[0].clone()),
                Part::Series(request.timeseries[1].clone()),
                Part::Metadata(request.metadata[0].clone()),
            ]
        );
    }

    #[test]
    fn bad_bodies_are_errors() {
        assert!(matches!(
            decompress(b"not snappy at all \xff\xff\xff\xff\xff", 1000),
            Err(RemoteError::Snappy(_))
        ));
        let big = encode(&WriteRequest {
            timeseries: vec![series("up", &[(1, 1.0); 100])],
            metadata: Vec::new(),
        })
        .unwrap();
        assert!(matches!(
            decompress(&big, 10),
            Err(RemoteError::TooLarge { limit: 10, .. })
        ));
        // A series field claiming more bytes than there are.
        let visit = |_: Part| Ok::<(), RemoteError>(());
        assert!(for_each(&[0x0a, 0x7f, 0x01], visit).is_err());
        // Garbage, and an unknown field that is skipped.
        assert!(for_each(&[0xff, 0xff, 0xff], visit).is_err());
        assert!(for_each(&[0x10, 0x05], visit).is_ok());
    }
}
