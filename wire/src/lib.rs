//! The one crate both Tributary programs share: the data model ([`Point`], [`Batch`]), the
//! encoding of batches on the wire, and the parsers for formats both sides accept.
//!
//! The agent-to-collector format lives here and nowhere else. A batch travels as MessagePack
//! (structs as arrays, so field names are not repeated per point) compressed with zstd; JSON is
//! accepted too, for debugging with `curl`. The choice was made by measurement; see
//! `BENCHMARKS.md` ("wire encoding").
//!
//! The agent stores each buffered point already encoded ([`codec::encode_point`]), and
//! [`codec::encode_stored_batch`] splices those stored bytes into a batch without decoding them again.
//! A test proves the spliced bytes equal what `rmp_serde` produces for the whole [`Batch`].

// Panic policy (RELIABILITY.md): with `panic = "abort"`, a panic that outside data can reach
// is a remote kill switch, so this crate, which handles what arrives from the network and
// from files, returns errors instead. Arithmetic is checked or saturating, slices are read
// with `get`, and nothing unwraps; tests may.
#![cfg_attr(
    not(test),
    deny(
        clippy::arithmetic_side_effects,
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]
pub mod batch;
pub mod codec;
pub mod decode;
pub mod line_protocol;
pub mod point;
pub mod time;

pub use batch::{AgentStatus, Batch, BatchAck, ClockEstimate, ErrorBody, Reject, TimeAnswer};
pub use point::{FieldValue, Point};
