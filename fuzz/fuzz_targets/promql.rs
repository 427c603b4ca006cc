//! PromQL as the collector's `/prometheus` API takes it: any text, parsed and evaluated
//! (instant and range) over a few series, within a sample budget and a time limit. Nothing
//! may panic: a query is an answer or an error.

#![no_main]

use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tributary_collector::promql::{Evaluator, Labels, MemorySource, Series, parse};

fn source() -> MemorySource {
    let series = |name: &str, extra: (&str, &str), f: fn(i64) -> f64| Series {
        labels: Arc::new(Labels::from([
            ("__name__".to_owned(), name.to_owned()),
            (extra.0.to_owned(), extra.1.to_owned()),
        ])),
        samples: (0..40).map(|i| (i * 15_000, f(i))).collect(),
    };
    MemorySource {
        series: vec![
            series("up", ("job", "a"), |i| (i % 2) as f64),
            series("requests_total", ("code", "200"), |i| (i * 3) as f64),
            series("requests_total", ("code", "500"), |i| (i % 7) as f64),
            series("latency_bucket", ("le", "0.5"), |i| i as f64),
            series("latency_bucket", ("le", "+Inf"), |i| (i * 2) as f64),
            series("temp", ("room", "x"), |i| f64::from(i as i32).sin() * 1e308),
        ],
        // `*_over_time` on these grids goes through the windows path.
        window_widths: vec![15_000, 60_000],
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.len() > 512 {
        return;
    }
    let Ok(expr) = parse(text) else {
        return;
    };
    let source = source();
    let limit = Duration::from_millis(200);
    let _ = Evaluator::new(&source, 300_000, 300_000, 100_000, limit).instant(&expr, 300_000);
    let _ = Evaluator::new(&source, 0, 600_000, 100_000, limit).range(&expr, 60_000);
});
