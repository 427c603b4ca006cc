use std::sync::Arc;
use std::time::Duration;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> Arc<Labels> {
    Arc::new(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

/// Samples every 15 s from 0 to 10 minutes.
fn source() -> MemorySource {
    let every = |f: &dyn Fn(i64) -> f64| -> Vec<(i64, f64)> {
        (0..=40).map(|i| (i * 15_000, f(i))).collect()
    };
    MemorySource {
        series: vec![
            Series {
                labels: labels(&[
                    ("__name__", "requests_total"),
                    ("job", "api"),
                    ("code", "200"),
                ]),
                samples: every(&|i| (i * 10) as f64),
            },
            Series {
                labels: labels(&[
                    ("__name__", "requests_total"),
                    ("job", "api"),
                    ("code", "500"),
                ]),
                // A counter reset at i = 20.
                samples: every(&|i| if i < 20 { i as f64 } else { (i - 20) as f64 }),
            },
            Series {
                labels: labels(&[("__name__", "temperature"), ("room", "a")]),
                samples: every(&|i| 20.0 + (i % 4) as f64),
            },
        ],
        ..MemorySource::default()
    }
}

fn instant(query: &str, time: i64) -> Result<Value, QueryError> {
    let source = source();
    let expr = parse(query)?;
    Evaluator::new(&source, time, time, 1_000_000, Duration::from_secs(5)).instant(&expr, time)
}

fn values(value: Value) -> Vec<(String, f64)> {
    let Value::Vector(samples) = value else {
        panic!("not a vector: {value:?}");
    };
    let mut out: Vec<(String, f64)> = samples
        .into_iter()
        .map(|s| (format!("{:?}", s.labels), s.value))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn selectors_take_the_newest_sample_within_the_lookback() {
    let v = values(instant("temperature", 100_000).unwrap());
    // 100 s: the newest sample is at 90 s (i = 6): 20 + 2.
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].1, 22.0);
    // 5 minutes after the last sample (600 s) it is still there; just after, gone.
    assert_eq!(values(instant("temperature", 900_000).unwrap()).len(), 1);
    assert!(values(instant("temperature", 900_001).unwrap()).is_empty());
    assert_eq!(
        values(instant("temperature offset 15s", 100_000).unwrap())[0].1,
        21.0
    );
    assert_eq!(
        values(instant("temperature @ 45", 600_000).unwrap())[0].1,
        23.0
    );
    assert_eq!(
        values(instant("requests_total{code=~\"5..\"}", 600_000).unwrap()).len(),
        1
    );
    assert!(matches!(
        instant("{job=\"\"}", 0),
        Err(QueryError::BadData(_))
    ));
}

#[test]
fn rate_accounts_for_resets_and_extrapolates() {
    // code 200: +10 every 15 s: rate 2/3 per second, exactly, whatever the extrapolation.
    let v = values(instant("rate(requests_total{code=\"200\"}[5m])", 600_000).unwrap());
    assert!((v[0].1 - 10.0 / 15.0).abs() < 1e-12, "{v:?}");
    // code 500 over [300 s, 600 s]: 20 samples... reset at 300 s: increase 20 over 300 s.
    let v = values(instant("increase(requests_total{code=\"500\"}[5m])", 600_000).unwrap());
    assert!((v[0].1 - 20.0).abs() < 1e-9, "{v:?}");
    let v = values(instant("resets(requests_total[10m])", 600_000).unwrap());
    assert_eq!(v.iter().map(|x| x.1).collect::<Vec<_>>(), vec![0.0, 1.0]);
}

#[test]
fn aggregations_and_binary_operators_match_labels() {
    let v = values(instant("sum by (job) (requests_total)", 600_000).unwrap());
    assert_eq!(v, vec![("{\"job\": \"api\"}".to_owned(), 420.0)]);
    let v = values(
        instant(
            "requests_total{code=\"500\"} / ignoring(code) requests_total{code=\"200\"}",
            600_000,
        )
        .unwrap(),
    );
    assert_eq!(v, vec![("{\"job\": \"api\"}".to_owned(), 20.0 / 400.0)]);
    let v = values(instant("requests_total > 100", 600_000).unwrap());
    assert_eq!(v.len(), 1);
    let v = values(instant("count(requests_total > bool 100)", 600_000).unwrap());
    assert_eq!(v[0].1, 2.0);
    assert!(
        instant("requests_total / on(job) requests_total", 600_000)
            .unwrap_err()
            .to_string()
            .contains("many-to-many")
    );
}

#[test]
fn unsupported_functions_say_so() {
    let error = instant("limitk(1, temperature)", 0);
    assert!(error.is_err());
    let error = instant("mad_over_time(temperature[5m])", 600_000).unwrap_err();
    assert!(error.to_string().starts_with("unsupported"), "{error}");
}

#[test]
fn a_range_query_is_the_instant_query_at_each_step() {
    let source = source();
    let expr = parse("avg_over_time(temperature[1m])").unwrap();
    let series = Evaluator::new(&source, 60_000, 600_000, 1_000_000, Duration::from_secs(5))
        .range(&expr, 60_000)
        .unwrap();
    assert_eq!(series.len(), 1);
    assert_eq!(series[0].samples.len(), 10);
    for &(t, v) in &series[0].samples {
        let Value::Vector(at) = instant("avg_over_time(temperature[1m])", t).unwrap() else {
            panic!()
        };
        assert_eq!(at[0].value, v);
    }
}

#[test]
fn durations_run_on_through_signs_are_refused_before_parsing() {
    // Found by the promql fuzz target: the parser panicked converting these.
    for query in [
        "-hup offset 55555555555555555555555552+8888-88-h+8888h 8*8+88-h-@888*8+88",
        "up offset 1e77+777777 <   0e <  B0m0 bool 0",
        "uup offset  6666666666666660000006167921+00 > boooffset  1+00 > bool0",
        "up offset 99999999999999d",
        "up[0xffffffffffffffffff]",
    ] {
        let error = parse(query).unwrap_err();
        assert!(
            error.to_string().contains("not a duration"),
            "{query}: {error}"
        );
    }
    for query in [
        "up offset 5m",
        "up[1h30m]",
        "rate(up[5m])[1d:1h]",
        "up offset -2w",
    ] {
        parse(query).unwrap();
    }
}

#[test]
fn bare_durations_the_parser_cannot_hold_are_refused_before_parsing() {
    // Each of these made promql-parser panic (the fuzz target found the first).
    for query in [
        "mmp[529999999999992222222222222:2m2230s]",
        "x[1e30]",
        "x[5m:1e30]",
        "x offset 1e30",
        "x offset -1e30",
        "x offset+ 1e30",
        "x offset- 1e30",
        "x offset-1e30",
        "u+p offset+ 100e666666666666666",
        "x[Inf]",
        "x[NaN]",
        "sum(rate(x[ 1e300 ]))",
    ] {
        assert!(
            matches!(parse(query), Err(QueryError::BadData(_))),
            "{query}"
        );
    }
    // Bare numbers elsewhere, in strings and in comments are left to the parser.
    for query in [
        "x[300]",
        "x[5m:30]",
        "x offset 60",
        "x > 1e300",
        "x{a=\"[1e30]\"}",
        "x # [1e30]\n",
        "label_replace(x, \"a\", \"$1\", \"b\", \"[1e30]\")",
    ] {
        assert!(parse(query).is_ok(), "{query}");
    }
}

/// A source that says how often it answered with windows.
struct Counting {
    inner: MemorySource,
    windowed: std::cell::Cell<usize>,
}

impl Source for Counting {
    fn select(
        &self,
        matchers: &[Matcher],
        from: i64,
        to: i64,
        budget: usize,
    ) -> Result<Vec<Series>, QueryError> {
        self.inner.select(matchers, from, to, budget)
    }

    fn windows(
        &self,
        matchers: &[Matcher],
        range: i64,
        grid: Grid,
        budget: usize,
    ) -> Result<Option<Rolled>, QueryError> {
        let answer = self.inner.windows(matchers, range, grid, budget)?;
        if answer.is_some() {
            self.windowed.set(self.windowed.get() + 1);
        }
        Ok(answer)
    }
}

fn close(a: &[Series], b: &[Series]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.labels == y.labels
                && x.samples.len() == y.samples.len()
                && x.samples.iter().zip(&y.samples).all(|(p, q)| {
                    p.0 == q.0 && (p.1 - q.1).abs() <= 1e-9 * p.1.abs().max(q.1.abs()).max(1e-300)
                })
        })
}

#[test]
fn windows_give_the_numbers_the_raw_samples_give() {
    let raw = source();
    let rolled = Counting {
        inner: MemorySource {
            window_widths: vec![15_000, 60_000, 300_000],
            ..source()
        },
        windowed: std::cell::Cell::new(0),
    };
    let queries = [
        "count_over_time(temperature[1m])",
        "sum_over_time(requests_total[5m])",
        "avg_over_time(temperature[5m])",
        "min_over_time(requests_total{code=\"500\"}[2m])",
        "max_over_time(requests_total[10m])",
        "sum by (job) (max_over_time(requests_total[1m]))",
        "avg_over_time(temperature[1m] offset 1m)",
        "sum_over_time(temperature[1m] @ 300)",
        "abs(min_over_time(temperature[45s]))",
        // Not on any grid: the raw samples answer.
        "avg_over_time(temperature[50s])",
    ];
    // (start, end, step): aligned, misaligned, an instant.
    let grids = [
        (0, 900_000, 60_000),
        (0, 900_000, 15_000),
        (300_000, 300_000, 1),
        (7_000, 600_000, 30_000),
        (600_000, 900_000, 300_000),
    ];
    for query in queries {
        let expr = parse(query).unwrap();
        for (start, end, step) in grids {
            let run = |source: &dyn Source| {
                Evaluator::new(source, start, end, 1_000_000, Duration::from_secs(5))
                    .range(&expr, step)
                    .unwrap()
            };
            let (a, b) = (run(&raw), run(&rolled));
            assert!(!a.is_empty(), "{query} at {start}..{end}/{step}: no answer");
            assert!(
                close(&a, &b),
                "{query} at {start}..{end}/{step}:\nraw {a:?}\nwindows {b:?}"
            );
        }
    }
    // The aligned grids were answered from windows.
    assert!(rolled.windowed.get() >= 20, "{}", rolled.windowed.get());
}
