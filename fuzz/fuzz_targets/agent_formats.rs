//! The agent's payload formats (json, influx, value, lines), the Prometheus text parser of
//! the http input and MQTT topic templates, on any bytes. Nothing may panic, and every reject
//! says why.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_agent::format::{DecodeContext, Format, decode};
use tributary_agent::inputs::mqtt::topic::TopicTemplate;
use tributary_agent::inputs::prometheus;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    let tag_keys = vec!["device".to_owned()];
    let ctx = DecodeContext {
        name: "fuzz",
        received_at: 1_700_000_000_000_000_000,
        tag_keys: &tag_keys,
    };
    match mode % 6 {
        0 => check(decode(Format::Json, payload, &ctx)),
        1 => check(decode(Format::Influx, payload, &ctx)),
        2 => check(decode(Format::Value, payload, &ctx)),
        3 => check(decode(Format::Lines, payload, &ctx)),
        4 => {
            if let Ok(text) = std::str::from_utf8(payload) {
                let _ = prometheus::parse(text, 0);
            }
        }
        _ => {
            // A template, then topics against it.
            let text = String::from_utf8_lossy(payload);
            let mut parts = text.splitn(2, '\n');
            let template = parts.next().unwrap_or("");
            let topics = parts.next().unwrap_or("");
            if let Ok(template) = TopicTemplate::parse(template) {
                for topic in topics.lines() {
                    let _ = template.apply(topic);
                }
            }
        }
    }
});

fn check(decoded: tributary_agent::format::Decoded) {
    for reject in decoded.rejected {
        assert!(!reject.reason.is_empty());
    }
}
