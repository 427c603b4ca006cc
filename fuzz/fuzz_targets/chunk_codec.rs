//! The chunk format (`storage::codec`): any bytes decode to values or an error, never a
//! panic; and values made from the input round-trip bit for bit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_collector::storage::codec::{SEGMENT, VERSION, decode, encode};
use tributary_wire::FieldValue;

fuzz_target!(|data: &[u8]| {
    let _ = decode(0, data, |_, _| {});
    let mut segment = vec![SEGMENT, VERSION];
    segment.extend_from_slice(data);
    let _ = decode(i64::MAX, &segment, |_, _| {});

    // Values from the input, 9 bytes each: a kind, then 8 bytes for the value and the step.
    let mut t = 1_700_000_000_000_000_000i64;
    let kind = data.first().copied().unwrap_or(0) % 5;
    let values: Vec<(i64, FieldValue)> = data
        .chunks_exact(9)
        .map(|c| {
            let raw = u64::from_le_bytes(c[1..9].try_into().unwrap());
            t = t.wrapping_add(i64::from(c[0]) * 1_000_000);
            let value = match kind {
                0 => FieldValue::F64(f64::from_bits(raw)),
                1 => FieldValue::I64(raw as i64),
                2 => FieldValue::Bool(raw & 1 == 1),
                // Short decimals, as sensors send: the decimal kind.
                4 => FieldValue::F64(
                    (raw as i64 % 10_000_000) as f64 / 10f64.powi(i32::from(c[0] % 6)),
                ),
                _ => FieldValue::Str(format!("{}", raw % 7)),
            };
            (t, value)
        })
        .collect();
    if values.is_empty() {
        return;
    }
    let run: Vec<((), i64, &FieldValue)> = values.iter().map(|(t, v)| ((), *t, v)).collect();
    let mut buf = Vec::new();
    encode(&mut buf, values[0].0, &run);
    let mut out = Vec::new();
    decode(values[0].0, &buf, |t, v| out.push((t, v))).unwrap();
    assert_eq!(out.len(), values.len());
    for ((t1, v1), (t2, v2)) in values.iter().zip(&out) {
        assert_eq!(t1, t2);
        match (v1, v2) {
            (FieldValue::F64(a), FieldValue::F64(b)) => assert_eq!(a.to_bits(), b.to_bits()),
            (a, b) => assert_eq!(a, b),
        }
    }
});
