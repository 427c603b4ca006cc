//! The rollup block format (`storage::blocks`): any bytes decode to windows or an error,
//! never a panic; and windows built from the input round-trip bit for bit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_collector::rollup::{Agg, Aggregate};
use tributary_collector::storage::blocks::{BLOCK, WINDOWS_PER_BLOCK, encode, windows};

const STEP: i64 = 60_000_000_000;

fuzz_target!(|data: &[u8]| {
    let mut marked = vec![BLOCK];
    marked.extend_from_slice(data);
    for bytes in [data, &marked[..]] {
        if let Ok(windows) = windows(bytes, 0, STEP, true) {
            for (_, a) in windows {
                for agg in Agg::ALL {
                    let _ = a.value(agg);
                }
            }
        }
    }

    // Windows from the input, 9 bytes a point: the window (and offset), then the value,
    // as a decimal or as raw bits.
    let mut built: Vec<(i64, Aggregate)> = Vec::new();
    for c in data.chunks_exact(9) {
        let index = i64::from(c[0]) % WINDOWS_PER_BLOCK;
        let raw = u64::from_le_bytes(c[1..9].try_into().unwrap());
        let value = if c[0] & 0x80 == 0 {
            (raw as i64 % 100_000_000) as f64 / 100.0
        } else {
            f64::from_bits(raw)
        };
        let start = index * STEP;
        let ts = start + (raw % 60) as i64 * 1_000_000_000;
        match built.binary_search_by_key(&start, |(s, _)| *s) {
            Ok(at) => built[at].1.add(ts, value),
            Err(at) => {
                let mut a = Aggregate::new();
                a.add(ts, value);
                built.insert(at, (start, a));
            }
        }
    }
    built.retain(|(_, a)| a.count > 0);
    let bytes = encode(0, STEP, &built);
    let back = windows(&bytes, 0, STEP, true).unwrap();
    assert_eq!(back.len(), built.len());
    for ((s1, a), (s2, b)) in built.iter().zip(&back) {
        assert_eq!(s1, s2);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        for agg in Agg::ALL {
            assert_eq!(
                a.value(agg).map(f64::to_bits),
                b.value(agg).map(f64::to_bits),
                "{}",
                agg.name()
            );
        }
    }
});
