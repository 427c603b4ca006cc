//! InfluxDB line protocol as the collector's `/api/v2/write` and the agent's `influx` format
//! read it: any bytes. Nothing may panic; every line is a point or an error of its own, and
//! a parsed point formats back to one line that (for names without backslashes or control
//! characters, whose escaping InfluxDB's builder and parser do not agree on) parses to the
//! same point.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_wire::line_protocol::{Precision, format_point, parse, parse_numbered};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, text)) = data.split_first() else {
        return;
    };
    let precision = match mode % 4 {
        0 => Precision::Nanoseconds,
        1 => Precision::Microseconds,
        2 => Precision::Milliseconds,
        _ => Precision::Seconds,
    };
    let mut last = 0;
    for (number, result) in parse_numbered(text, precision, 42) {
        assert!(number >= last, "line numbers never go back");
        last = number;
        match result {
            Ok(point) => {
                let line = format_point(&point);
                let again: Vec<_> = parse(line.as_bytes(), Precision::Nanoseconds, 0).collect();
                assert_eq!(again.len(), 1, "{line}");
                let plain = std::iter::once(point.name.as_str())
                    .chain(
                        point
                            .tags
                            .iter()
                            .flat_map(|(k, v)| [k.as_str(), v.as_str()]),
                    )
                    .chain(point.fields.keys().map(String::as_str))
                    .all(|text| !text.contains(|c: char| c == '\\' || c.is_control()));
                if plain {
                    let again = again.into_iter().next().unwrap();
                    let again = again.unwrap_or_else(|e| panic!("{line} reads back as {e:?}"));
                    assert_eq!(again.name, point.name);
                    assert_eq!(again.tags, point.tags);
                    assert_eq!(again.ts, point.ts);
                    assert_eq!(again.fields.len(), point.fields.len());
                }
            }
            Err(error) => assert_eq!(error.line, number),
        }
    }
});
