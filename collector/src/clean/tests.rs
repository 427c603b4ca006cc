use std::path::Path;

use tributary_wire::{AgentStatus, ClockEstimate, FieldValue, Point};

use super::*;
use crate::config::Config;

const HOUR: i64 = 3_600_000_000_000;
const NOW: i64 = 1_700_000_000_000_000_000;

fn cleaner(rules: &str) -> Cleaner {
    let config =
        Config::load_str(rules, Path::new("collector.toml")).unwrap_or_else(|e| panic!("{e}"));
    Cleaner::new(config.rules, config.time)
}

fn error(rules: &str) -> (String, String) {
    let e = Config::load_str(rules, Path::new("collector.toml")).unwrap_err();
    (e.key, e.message)
}

fn run(cleaner: &mut Cleaner, point: &mut Point) -> Result<(), Rejection> {
    cleaner.clean("a1", point, 0, NOW)
}

fn reading(value: f64) -> Point {
    Point::new("temp", NOW)
        .with_tag("device", "d1")
        .with_field("v", value)
}

#[test]
fn require_checks_presence_and_type() {
    let mut c = cleaner(
        "[[clean.rules]]\nname = \"shape\"\naction = \"require\"\nfields = { v = \"number\", unit = \"string\" }\ntags = [\"device\"]\n",
    );
    let mut ok = reading(1.0).with_field("unit", "C");
    assert_eq!(run(&mut c, &mut ok), Ok(()));
    let mut missing = reading(1.0);
    let rejection = run(&mut c, &mut missing).unwrap_err();
    assert_eq!(rejection.rule, "shape");
    assert!(
        rejection.reason.contains("\"unit\" is missing"),
        "{rejection}"
    );
    let mut wrong = reading(1.0).with_field("unit", 3i64);
    assert!(
        run(&mut c, &mut wrong)
            .unwrap_err()
            .reason
            .contains("is integer, not string")
    );
    let mut no_tag = Point::new("temp", NOW)
        .with_field("v", 1.0)
        .with_field("unit", "C");
    assert!(
        run(&mut c, &mut no_tag)
            .unwrap_err()
            .reason
            .contains("tag \"device\"")
    );
}

#[test]
fn rename_moves_fields_tags_and_the_name() {
    let mut c = cleaner(
        "[[clean.rules]]\naction = \"rename\"\nmeasurement = \"temperature\"\nfields = { v = \"celsius\" }\ntags = { device = \"sensor\" }\n",
    );
    let mut p = reading(21.5);
    run(&mut c, &mut p).unwrap();
    assert_eq!(p.name, "temperature");
    assert_eq!(p.fields.get("celsius"), Some(&FieldValue::F64(21.5)));
    assert_eq!(p.tags.get("sensor").map(String::as_str), Some("d1"));
    assert!(!p.tags.contains_key("device") && !p.fields.contains_key("v"));
}

#[test]
fn map_values_maps_fields_and_tags() {
    let mut c = cleaner(
        "[[clean.rules]]\naction = \"map_values\"\nfield = \"action\"\nvalues = { buy = 1, click = 0 }\nunmapped = \"drop\"\n\
         [[clean.rules]]\naction = \"map_values\"\ntag = \"site\"\nvalues = { n = \"north\" }\n",
    );
    let mut p = Point::new("e", NOW)
        .with_field("action", "buy")
        .with_tag("site", "n");
    run(&mut c, &mut p).unwrap();
    assert_eq!(p.fields.get("action"), Some(&FieldValue::I64(1)));
    assert_eq!(p.tags.get("site").map(String::as_str), Some("north"));
    let mut other = Point::new("e", NOW).with_field("action", "view");
    assert!(
        run(&mut c, &mut other)
            .unwrap_err()
            .reason
            .contains("unmapped value \"view\"")
    );
}

#[test]
fn convert_changes_units_of_matching_fields() {
    let mut c = cleaner(
        "[[clean.rules]]\naction = \"convert\"\nmatch = { name = \"temp\", field = \"*_f\" }\nfrom = \"degF\"\nto = \"degC\"\n",
    );
    let mut p = Point::new("temp", NOW)
        .with_field("in_f", 212.0)
        .with_field("out_f", 32i64)
        .with_field("other", 5.0);
    run(&mut c, &mut p).unwrap();
    assert!((p.fields["in_f"] == FieldValue::F64(100.0)));
    assert_eq!(p.fields["out_f"], FieldValue::F64(0.0));
    assert_eq!(p.fields["other"], FieldValue::F64(5.0));
    // Another measurement is left alone.
    let mut q = Point::new("pressure", NOW).with_field("in_f", 212.0);
    run(&mut c, &mut q).unwrap();
    assert_eq!(q.fields["in_f"], FieldValue::F64(212.0));
    // A string where a number should be is quarantined, not guessed.
    let mut s = Point::new("temp", NOW).with_field("in_f", "hot");
    assert!(run(&mut c, &mut s).is_err());
}

#[test]
fn range_drops_clamps_or_flags() {
    let rule = |policy: &str| {
        cleaner(&format!(
            "[[clean.rules]]\nname = \"sane\"\naction = \"range\"\nmin = -40.0\nmax = 85\npolicy = \"{policy}\"\n"
        ))
    };
    let mut p = reading(120.0);
    assert!(
        run(&mut rule("drop"), &mut p)
            .unwrap_err()
            .reason
            .contains("outside [-40, 85]")
    );
    let mut p = reading(120.0);
    run(&mut rule("clamp"), &mut p).unwrap();
    assert_eq!(p.fields["v"], FieldValue::F64(85.0));
    let mut p = reading(-50.0);
    run(&mut rule("flag"), &mut p).unwrap();
    assert_eq!(
        (p.fields["v"].clone(), p.tags.get("flag").cloned()),
        (FieldValue::F64(-50.0), Some("sane".into()))
    );
    let mut fine = reading(20.0);
    run(&mut rule("flag"), &mut fine).unwrap();
    assert!(!fine.tags.contains_key("flag"));
}

#[test]
fn missing_drops_fills_or_carries_the_last_value() {
    let mut drop = cleaner("[[clean.rules]]\naction = \"missing\"\nfields = [\"price\"]\n");
    assert!(
        run(
            &mut drop,
            &mut Point::new("buy", NOW).with_field("qty", 1i64)
        )
        .is_err()
    );

    let mut fill = cleaner(
        "[[clean.rules]]\naction = \"missing\"\nfields = [\"price\"]\npolicy = \"fill\"\nvalue = 0.0\n",
    );
    let mut p = Point::new("buy", NOW).with_field("qty", 1i64);
    run(&mut fill, &mut p).unwrap();
    assert_eq!(p.fields["price"], FieldValue::F64(0.0));

    let mut last = cleaner(
        "[[clean.rules]]\naction = \"missing\"\nfields = [\"price\"]\npolicy = \"fill_last\"\n",
    );
    let mut first = Point::new("buy", NOW).with_field("qty", 1i64);
    assert!(
        run(&mut last, &mut first)
            .unwrap_err()
            .reason
            .contains("no earlier value")
    );
    run(
        &mut last,
        &mut Point::new("buy", NOW).with_field("price", 9.5),
    )
    .unwrap();
    let mut later = Point::new("buy", NOW + 1).with_field("qty", 2i64);
    run(&mut last, &mut later).unwrap();
    assert_eq!(later.fields["price"], FieldValue::F64(9.5));
    // Another series has its own last value.
    let mut elsewhere = Point::new("buy", NOW)
        .with_tag("shop", "b")
        .with_field("qty", 2i64);
    assert!(run(&mut last, &mut elsewhere).is_err());
}

#[test]
fn outliers_are_flagged_or_dropped_per_series() {
    let mut c = cleaner(
        "[[clean.rules]]\nname = \"spike\"\naction = \"outlier\"\nmethod = \"mad\"\nwindow = 20\nmin_samples = 10\npolicy = \"drop\"\n",
    );
    for i in 0..20 {
        run(&mut c, &mut reading(20.0 + (i % 5) as f64 * 0.1)).unwrap();
    }
    let rejection = run(&mut c, &mut reading(95.0)).unwrap_err();
    assert_eq!(rejection.rule, "spike");
    run(&mut c, &mut reading(20.3)).unwrap();
    // Another device has no history yet: nothing to compare with.
    let mut other = Point::new("temp", NOW)
        .with_tag("device", "d2")
        .with_field("v", 95.0);
    run(&mut c, &mut other).unwrap();

    let mut z = cleaner(
        "[[clean.rules]]\naction = \"outlier\"\nmethod = \"zscore\"\nwindow = 10\nmin_samples = 5\n",
    );
    for v in [10.0, 11.0, 9.0, 10.5, 9.5, 10.0] {
        run(&mut z, &mut reading(v)).unwrap();
    }
    let mut spike = reading(30.0);
    run(&mut z, &mut spike).unwrap();
    assert_eq!(
        spike.tags.get("flag").map(String::as_str),
        Some("outlier#0")
    );
}

#[test]
fn dedupe_drops_a_republished_point_within_the_window() {
    let mut c = cleaner("[[clean.rules]]\naction = \"dedupe\"\nwindow = \"1h\"\n");
    run(&mut c, &mut reading(1.0)).unwrap();
    assert!(
        run(&mut c, &mut reading(1.0))
            .unwrap_err()
            .reason
            .contains("duplicate")
    );
    // Same time, another value: a real reading.
    run(&mut c, &mut reading(2.0)).unwrap();
    // Same value, another time: a real reading.
    let mut later = reading(1.0);
    later.ts += 1;
    run(&mut c, &mut later).unwrap();
    // After a failed commit the state is forgotten, so the retried points pass.
    c.reset_state();
    run(&mut c, &mut reading(1.0)).unwrap();
}

#[test]
fn rules_run_in_order_and_the_first_drop_wins() {
    let mut c = cleaner(
        "[[clean.rules]]\naction = \"convert\"\nmatch = { field = \"v\" }\nfrom = \"degF\"\nto = \"degC\"\n\
         [[clean.rules]]\nname = \"sane\"\naction = \"range\"\nmin = -40\nmax = 85\n\
         [[clean.rules]]\naction = \"rename\"\nfields = { v = \"celsius\" }\n",
    );
    // 212 F is 100 C: in range before conversion, out of it after.
    let rejection = run(&mut c, &mut reading(212.0)).unwrap_err();
    assert_eq!(rejection.rule, "sane");
    let mut p = reading(50.0);
    run(&mut c, &mut p).unwrap();
    assert_eq!(p.fields["celsius"], FieldValue::F64(10.0));
}

#[test]
fn a_point_with_every_field_renamed_away_is_still_whole_but_an_emptied_one_is_not() {
    let mut c = cleaner("[[clean.rules]]\naction = \"rename\"\nfields = { v = \"w\" }\n");
    let mut p = reading(1.0);
    run(&mut c, &mut p).unwrap();
    let mut empty = Point::new("temp", NOW);
    assert_eq!(run(&mut c, &mut empty).unwrap_err().rule, "fields");
}

#[test]
fn time_sanity_shifts_skewed_batches_and_bounds_timestamps() {
    let mut c = cleaner(
        "[time]\ncorrect_clock_skew = true\nskew_threshold = \"10s\"\nfloor = \"2000-01-01T00:00:00Z\"\nmax_future = \"1h\"\n",
    );
    let status = |offset_ns: i64, error_ns: u64| AgentStatus {
        clock: Some(ClockEstimate {
            offset_ns,
            error_ns,
        }),
        ..AgentStatus::default()
    };
    // An agent whose clock is two hours behind, measured within 20 ms: shifted forward.
    let shift = c.time.batch_shift(&status(2 * HOUR, 20_000_000));
    assert_eq!(shift, 2 * HOUR);
    let mut p = reading(1.0);
    p.ts = NOW - 2 * HOUR - 5;
    c.clean("a1", &mut p, shift, NOW).unwrap();
    assert_eq!(p.ts, NOW - 5);
    // A few seconds are within the threshold.
    assert_eq!(c.time.batch_shift(&status(-3_000_000_000, 1_000_000)), 0);
    // An offset that only a slow round trip suggests is not sure: 20 s measured through a
    // collector that held the request for 20 s (error 10 s) leaves 10 s, not past 10 s.
    assert_eq!(
        c.time.batch_shift(&status(10_000_000_000, 10_000_000_000)),
        0
    );
    assert_eq!(
        c.time.batch_shift(&status(-30_000_000_000, 10_000_000_000)),
        -30_000_000_000
    );
    // No estimate: no shift.
    assert_eq!(c.time.batch_shift(&AgentStatus::default()), 0);
    let mut early = reading(1.0);
    early.ts = 5_000_000_000;
    assert!(
        c.clean("a1", &mut early, 0, NOW)
            .unwrap_err()
            .reason
            .contains("before the floor")
    );
    let mut future = reading(1.0);
    future.ts = NOW + 2 * HOUR;
    assert_eq!(c.clean("a1", &mut future, 0, NOW).unwrap_err().rule, "time");

    let mut fix =
        cleaner("[time]\nfloor = \"2000-01-01T00:00:00Z\"\nout_of_bounds = \"receive_time\"\n");
    let mut early = reading(1.0);
    early.ts = 5_000_000_000;
    fix.clean("a1", &mut early, 0, NOW).unwrap();
    assert_eq!(early.ts, NOW);
    // Correction off: no shift whatever the skew.
    assert_eq!(fix.time.batch_shift(&status(-2 * HOUR, 0)), 0);
}

#[test]
fn every_timestamp_is_kept_or_quarantined_and_only_storable_ones_are_kept() {
    let mut off = cleaner("[time]\nmax_future = \"off\"\n");
    let mut fix = cleaner("[time]\nmax_future = \"off\"\nout_of_bounds = \"receive_time\"\n");
    let edges = [
        i64::MIN,
        i64::MIN + 1,
        *crate::clean::time::STORABLE.start() - 1,
        *crate::clean::time::STORABLE.start(),
        0,
        *crate::clean::time::STORABLE.end(),
        *crate::clean::time::STORABLE.end() + 1,
        i64::MAX - 1,
        i64::MAX,
    ];
    for ts in edges {
        for shift in [0, i64::MIN, i64::MAX, -HOUR, HOUR] {
            let mut p = reading(1.0);
            p.ts = ts;
            let want = ts.saturating_add(shift);
            match off.clean("a1", &mut p, shift, NOW) {
                Ok(()) => {
                    assert!(
                        crate::clean::time::STORABLE.contains(&p.ts),
                        "{ts} + {shift}"
                    );
                    assert_eq!(p.ts, want);
                }
                Err(rejection) => {
                    assert_eq!(rejection.rule, "time");
                    assert!(rejection.reason.contains("storable range"), "{rejection}");
                    assert!(!crate::clean::time::STORABLE.contains(&want));
                }
            }
            let mut p = reading(1.0);
            p.ts = ts;
            fix.clean("a1", &mut p, shift, NOW).unwrap();
            assert!(p.ts == want || p.ts == NOW);
        }
    }
}

#[test]
fn check_names_the_key_of_a_bad_rule() {
    let cases = [
        (
            "[[clean.rules]]\naction = \"convert\"\nmatch = { field = \"t\" }\nfrom = \"degF\"\nto = \"degc\"\n",
            "clean.rules[0].to",
            "did you mean",
        ),
        (
            "[[clean.rules]]\naction = \"convert\"\nmatch = { field = \"t\" }\nfrom = \"furlong\"\nto = \"m\"\n",
            "clean.rules[0].from",
            "unknown",
        ),
        (
            "[[clean.rules]]\naction = \"convert\"\nmatch = { field = \"t\" }\nfrom = \"degF\"\nto = \"m\"\n",
            "clean.rules[0].to",
            "cannot convert degF (temperature) to m (length)",
        ),
        (
            "[[clean.rules]]\naction = \"range\"\nmatch = { name = \"te[mp\" }\nmin = 1\n",
            "clean.rules[0].match.name",
            "glob",
        ),
        (
            "[[clean.rules]]\naction = \"range\"\nmatch = { tags = { site = \"[\" } }\nmax = 1\n",
            "clean.rules[0].match.tags.site",
            "glob",
        ),
        (
            "[[clean.rules]]\naction = \"range\"\nmin = 5\nmax = 1\n",
            "clean.rules[0].min",
            "above max",
        ),
        (
            "[[clean.rules]]\naction = \"range\"\nmin = 1\nfrom = \"degC\"\n",
            "clean.rules[0].from",
            "does not apply",
        ),
        (
            "[[clean.rules]]\naction = \"scrub\"\n",
            "clean.rules[0].action",
            "not an action",
        ),
        (
            "[[clean.rules]]\nname = \"r\"\n",
            "clean.rules[0].action",
            "missing",
        ),
        (
            "[[clean.rules]]\naction = \"require\"\nfields = { v = \"decimal\" }\n",
            "clean.rules[0].fields.v",
            "not a type",
        ),
        (
            "[[clean.rules]]\naction = \"missing\"\nfields = [\"p\"]\npolicy = \"fill\"\n",
            "clean.rules[0].value",
            "needs",
        ),
        (
            "[[clean.rules]]\naction = \"outlier\"\nwindow = \"10m\"\n",
            "clean.rules[0].window",
            "count",
        ),
        (
            "[[clean.rules]]\naction = \"dedupe\"\nwindow = \"soon\"\n",
            "clean.rules[0].window",
            "duration",
        ),
        (
            "[[clean.rules]]\naction = \"convert\"\nfrom = \"degF\"\nto = \"degC\"\n",
            "clean.rules[0].match.field",
            "needs",
        ),
        ("[time]\nfloor = \"yesterday\"\n", "time.floor", "RFC 3339"),
        (
            "[rollups]\nresolutions = [\"1m\", \"90s\"]\n",
            "rollups.resolutions[1]",
            "multiple",
        ),
        ("[retention]\n\"5m\" = \"1d\"\n", "retention.5m", "neither"),
    ];
    for (text, key, message) in cases {
        let (got_key, got_message) = error(text);
        assert_eq!(got_key, key, "{text}: {got_message}");
        assert!(got_message.contains(message), "{text}: {got_message}");
    }
}

#[test]
fn every_key_a_kind_takes_is_a_key_a_rule_table_has() {
    use super::config::{RawNames, RawRule, RawScalar, RawWindow};
    let every = RawRule {
        fields: Some(RawNames::List(Vec::new())),
        tags: Some(RawNames::List(Vec::new())),
        measurement: Some(String::new()),
        field: Some(String::new()),
        tag: Some(String::new()),
        values: Some(Default::default()),
        unmapped: Some(String::new()),
        from: Some(String::new()),
        to: Some(String::new()),
        min: Some(0.0),
        max: Some(0.0),
        policy: Some(String::new()),
        flag: Some(String::new()),
        value: Some(RawScalar::Bool(true)),
        method: Some(String::new()),
        window: Some(RawWindow::Count(0)),
        threshold: Some(0.0),
        min_samples: Some(0),
        ..RawRule::default()
    };
    let known = every.present_keys();
    assert_eq!(rules::ACTIONS.len(), 8);
    for action in rules::ACTIONS {
        let keys = rules::keys_of(action).unwrap_or_else(|| panic!("{action} has no keys"));
        assert!(!keys.is_empty(), "{action}");
        for key in keys {
            assert!(
                known.contains(key),
                "{action} takes {key}, which no table has"
            );
        }
    }
    assert!(rules::keys_of("sharpen").is_none());
    let (key, message) = error("[[clean.rules]]\naction = \"sharpen\"\n");
    assert_eq!(key, "clean.rules[0].action");
    assert!(message.contains("one of require, rename"), "{message}");
    let (key, message) = error("[[clean.rules]]\naction = \"dedupe\"\nmin = 1\n");
    assert_eq!(key, "clean.rules[0].min");
    assert!(message.contains("it takes: window"), "{message}");
}

#[test]
fn an_unknown_unit_is_refused_with_the_units_that_would_do() {
    let (key, message) = error(
        "[[clean.rules]]\naction = \"convert\"\nmatch.field = \"t\"\nfrom = \"degF\"\nto = \"centigrade\"\n",
    );
    assert_eq!(key, "clean.rules[0].to");
    assert!(message.contains("unknown unit \"centigrade\""), "{message}");
    assert!(
        message.contains("the units of this quantity: K, degC, degF"),
        "{message}"
    );
    assert!(!message.contains("psi"), "only temperatures: {message}");
    let (key, message) = error(
        "[[clean.rules]]\naction = \"convert\"\nmatch.field = \"t\"\nfrom = \"furlong\"\nto = \"bogus\"\n",
    );
    assert_eq!(key, "clean.rules[0].from");
    assert!(
        message.contains("the units: ") && message.contains("psi"),
        "{message}"
    );
}
