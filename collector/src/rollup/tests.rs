use proptest::prelude::*;

use super::*;

/// The figures of a window computed directly from its values, the way a textbook would.
struct Direct {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    mean: f64,
    stddev: Option<f64>,
    first: f64,
    last: f64,
    sorted: Vec<f64>,
}

fn direct(points: &[(i64, f64)]) -> Direct {
    let n = points.len() as f64;
    let values: Vec<f64> = points.iter().map(|p| p.1).collect();
    let sum: f64 = values.iter().sum();
    let mean = sum / n;
    let stddev = (points.len() > 1)
        .then(|| (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0)).sqrt());
    let mut by_time = points.to_vec();
    by_time.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let mut sorted = values.clone();
    sorted.sort_by(f64::total_cmp);
    Direct {
        count: points.len() as u64,
        sum,
        min: sorted[0],
        max: sorted[sorted.len() - 1],
        mean,
        stddev,
        first: by_time[0].1,
        last: by_time[by_time.len() - 1].1,
        sorted,
    }
}

fn close(a: f64, b: f64, relative: f64) -> bool {
    (a - b).abs() <= relative * a.abs().max(b.abs()).max(1e-300)
}

fn build(points: &[(i64, f64)]) -> Aggregate {
    let mut aggregate = Aggregate::new();
    for &(ts, v) in points {
        aggregate.add(ts, v);
    }
    aggregate
}

fn assert_matches_direct(aggregate: &Aggregate, points: &[(i64, f64)]) {
    // Values that are not finite are not aggregated.
    let points: Vec<(i64, f64)> = points.iter().filter(|p| p.1.is_finite()).copied().collect();
    if points.is_empty() {
        assert_eq!(aggregate.value(Agg::Count), None);
        return;
    }
    let points = points.as_slice();
    let d = direct(points);
    assert_eq!(aggregate.value(Agg::Count), Some(d.count as f64));
    assert_eq!(aggregate.value(Agg::Min), Some(d.min));
    assert_eq!(aggregate.value(Agg::Max), Some(d.max));
    assert_eq!(aggregate.value(Agg::First), Some(d.first));
    assert_eq!(aggregate.value(Agg::Last), Some(d.last));
    // A naive sum's error is bounded by n * epsilon * sum(|x|); near-cancelling sums make a
    // relative comparison meaningless, so the bound is absolute.
    let bound = points.len() as f64 * f64::EPSILON * points.iter().map(|p| p.1.abs()).sum::<f64>();
    assert!((aggregate.value(Agg::Sum).unwrap() - d.sum).abs() <= bound);
    assert!((aggregate.value(Agg::Mean).unwrap() - d.mean).abs() <= bound / points.len() as f64);
    match (aggregate.value(Agg::Stddev), d.stddev) {
        (Some(a), Some(b)) => assert!(close(a, b, 1e-9) || (a - b).abs() < 1e-9, "{a} vs {b}"),
        (a, b) => assert_eq!(a, b),
    }
    // A quantile is within the sketch's accuracy of the value at its rank.
    for agg in [Agg::P50, Agg::P90, Agg::P99] {
        let q = agg.quantile().unwrap();
        let rank = (q * (d.count as f64 - 1.0)) as usize;
        let exact = d.sorted[rank];
        let got = aggregate.value(agg).unwrap();
        assert!(
            close(got, exact, SKETCH_RELATIVE_ACCURACY + 1e-9) || (got - exact).abs() < 1e-9,
            "{}: {got} vs {exact}",
            agg.name()
        );
    }
}

#[test]
fn a_window_matches_a_direct_computation() {
    let points: Vec<(i64, f64)> = (0..1000)
        .map(|i| (i * 60_000_000, 20.0 + ((i * 7919) % 1000) as f64 / 100.0))
        .collect();
    assert_matches_direct(&build(&points), &points);
    let negative: Vec<(i64, f64)> = (0..101).map(|i| (i, (i - 50) as f64 * 1.5)).collect();
    assert_matches_direct(&build(&negative), &negative);
    assert_matches_direct(&build(&[(5, 3.25)]), &[(5, 3.25)]);
}

#[test]
fn empty_and_single_windows_say_what_is_undefined() {
    let empty = Aggregate::new();
    assert!(Agg::ALL.iter().all(|a| empty.value(*a).is_none()));
    let one = build(&[(1, 4.0)]);
    assert_eq!(one.value(Agg::Stddev), None);
    assert_eq!(one.value(Agg::Mean), Some(4.0));
}

#[test]
fn non_finite_values_are_not_aggregated() {
    let aggregate = build(&[(1, 1.0), (2, f64::NAN), (3, f64::INFINITY), (4, 3.0)]);
    assert_eq!(aggregate.value(Agg::Count), Some(2.0));
    assert_eq!(aggregate.value(Agg::Sum), Some(4.0));
}

#[test]
fn equal_timestamps_are_broken_by_value_not_arrival() {
    let a = build(&[(1, 5.0), (1, 2.0), (9, 7.0), (9, 1.0)]);
    let b = build(&[(9, 1.0), (1, 2.0), (9, 7.0), (1, 5.0)]);
    assert_eq!(a.first, (1, 2.0));
    assert_eq!(a.last, (9, 7.0));
    assert_eq!((b.first, b.last), (a.first, a.last));
}

/// An aggregate through the rollup block format and back.
fn stored(aggregate: &Aggregate) -> Aggregate {
    use crate::storage::blocks;
    let bytes = blocks::encode(0, 60_000_000_000, &[(0, aggregate.clone())]);
    let mut windows = blocks::windows(&bytes, 0, 60_000_000_000, true).unwrap();
    windows.remove(0).1
}

#[test]
fn the_stored_form_round_trips() {
    let points: Vec<(i64, f64)> = (0..300).map(|i| (i, (i as f64).sin() * 100.0)).collect();
    let aggregate = build(&points);
    let back = stored(&aggregate);
    for agg in Agg::ALL {
        assert_eq!(back.value(agg), aggregate.value(agg), "{}", agg.name());
    }
    let mut more = back.clone();
    more.add(1_000, 1.0);
    let mut direct_more = aggregate.clone();
    direct_more.add(1_000, 1.0);
    assert_eq!(more.value(Agg::P99), direct_more.value(Agg::P99));
    assert!(crate::storage::blocks::windows(&[0xb1, 0xff], 0, 1, true).is_err());
}

/// Sums past the range of f64 become infinities (and NaN once both signs overflowed), and
/// keep that through the stored form; nothing in them is a panic or a value SQLite refuses.
#[test]
fn sums_that_overflow_stay_infinite_through_storage() {
    let mut down = build(&[(0, f64::MIN), (1, f64::MIN)]);
    assert_eq!(down.value(Agg::Sum), Some(f64::NEG_INFINITY));
    down.merge(&build(&[(2, f64::MIN)]));
    assert_eq!(down.value(Agg::Sum), Some(f64::NEG_INFINITY));
    assert_eq!(down.value(Agg::Min), Some(f64::MIN));
    let back = stored(&down);
    assert_eq!(back.value(Agg::Sum), Some(f64::NEG_INFINITY));
    let up = build(&[(3, f64::MAX), (4, f64::MAX)]);
    let mut both = back.clone();
    both.merge(&up);
    assert!(both.value(Agg::Sum).unwrap().is_nan());
    let back = stored(&both);
    assert!(back.value(Agg::Sum).unwrap().is_nan());
    assert_eq!(back.value(Agg::Count), Some(5.0));
    for agg in Agg::ALL {
        let _ = back.value(agg);
    }
}

/// Window arithmetic is total over the whole i64 range and any positive step.
#[test]
fn window_arithmetic_never_overflows() {
    for ts in [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX] {
        for step in [1, 7, SECOND, 86_400 * SECOND, i64::MAX] {
            let start = window_start(ts, step);
            assert!(start <= ts);
            let _ = into_buckets(vec![(ts, build(&[(ts, 1.0)]))], step);
            let buckets = vec![(start, build(&[(ts, 1.0)]))];
            assert!(moving(&buckets, step, step, i64::MAX).len() <= 2);
        }
    }
    assert!(moving(&[(0, build(&[(0, 1.0)]))], 10, 0, 100).is_empty());
    assert!(moving(&[(0, build(&[(0, 1.0)]))], 10, -5, 100).is_empty());
}

#[test]
fn windows_nest_and_resolutions_are_chosen_coarsest_first() {
    const MINUTE: i64 = 60 * SECOND;
    assert_eq!(window_start(-1, MINUTE), -MINUTE);
    assert_eq!(window_start(MINUTE + 5, MINUTE), MINUTE);
    let resolutions = [
        Resolution {
            step: MINUTE,
            retention: None,
        },
        Resolution {
            step: 60 * MINUTE,
            retention: None,
        },
        Resolution {
            step: 1440 * MINUTE,
            retention: None,
        },
    ];
    assert_eq!(
        choose_resolution(&resolutions, 120 * MINUTE, 0, 1440 * MINUTE),
        Some(1)
    );
    assert_eq!(
        choose_resolution(&resolutions, 5 * MINUTE, 0, 1440 * MINUTE),
        Some(0)
    );
    // A range that does not start on an hour cannot use hourly windows.
    assert_eq!(
        choose_resolution(&resolutions, 120 * MINUTE, MINUTE, 1440 * MINUTE),
        Some(0)
    );
    assert_eq!(
        choose_resolution(&resolutions, 90 * SECOND, 0, MINUTE * 3),
        None
    );
    assert_eq!(
        choose_resolution(&resolutions, MINUTE, SECOND, MINUTE * 3),
        None
    );
}

#[test]
fn moving_windows_merge_the_trailing_buckets() {
    let buckets: Vec<(i64, Aggregate)> = (0..6)
        .map(|i| (i * 10, build(&[(i * 10, i as f64)])))
        .collect();
    let moved = moving(&buckets, 30, 10, 60);
    let means: Vec<f64> = moved
        .iter()
        .map(|(_, a)| a.value(Agg::Mean).unwrap())
        .collect();
    assert_eq!(means, vec![0.0, 0.5, 1.0, 2.0, 3.0, 4.0]);
    // Past the last bucket, the window still holds data until it has passed it.
    let moved = moving(&buckets, 30, 10, i64::MAX);
    let times: Vec<i64> = moved.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, vec![0, 10, 20, 30, 40, 50, 60, 70]);
    assert_eq!(moved[7].1.value(Agg::Mean), Some(5.0));
    // A gap: the window spans time, not a count of buckets; empty windows are left out.
    let sparse = vec![buckets[0].clone(), buckets[5].clone()];
    let moved = moving(&sparse, 30, 10, 60);
    let times: Vec<i64> = moved.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, vec![0, 10, 20, 50]);
    assert_eq!(moved[3].1.value(Agg::Count), Some(1.0));
}

fn split_and_merge(points: &[(i64, f64)], cuts: &[usize], order: &[usize]) -> Aggregate {
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (points.len() + 1)).collect();
    bounds.push(0);
    bounds.push(points.len());
    bounds.sort_unstable();
    let parts: Vec<Aggregate> = bounds
        .windows(2)
        .map(|w| build(&points[w[0]..w[1]]))
        .collect();
    let mut merged = Aggregate::new();
    let mut indices: Vec<usize> = (0..parts.len()).collect();
    for (i, o) in order.iter().enumerate() {
        let n = indices.len();
        indices.swap(i % n, o % n);
    }
    for index in indices {
        merged.merge(&parts[index]);
    }
    merged
}

/// Timestamps anywhere in the `i64` range, its ends weighted in, and often equal ones.
fn timestamp() -> impl Strategy<Value = i64> {
    prop_oneof![
        6 => 0i64..3_600,
        2 => any::<i64>(),
        2 => prop::sample::select(vec![i64::MIN, i64::MIN + 1, -1, 0, i64::MAX - 1, i64::MAX]),
    ]
}

/// Values of a sensible size, and the ones that break arithmetic: NaN and infinities (not
/// aggregated), -0.0, subnormals.
fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        8 => -1e6f64..1e6,
        2 => prop::sample::select(vec![
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            5e-324,
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE / 4.0,
        ]),
    ]
}

proptest! {
    /// Any order of the points, any split into batches and any order of merging give the same
    /// rollup: exactly for count, min, max, first, last and the quantiles; to rounding for
    /// sum, mean and stddev.
    #[test]
    fn any_order_and_split_give_equal_rollups(
        points in prop::collection::vec((timestamp(), value()), 1..300),
        shuffle in prop::collection::vec(any::<usize>(), 0..300),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        order in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let reference = build(&points);
        let mut shuffled = points.clone();
        for (i, s) in shuffle.iter().enumerate() {
            let n = shuffled.len();
            shuffled.swap(i % n, s % n);
        }
        let merged = split_and_merge(&shuffled, &cuts, &order);
        for agg in [Agg::Count, Agg::Min, Agg::Max, Agg::First, Agg::Last, Agg::P50, Agg::P90, Agg::P99] {
            prop_assert_eq!(merged.value(agg), reference.value(agg), "{}", agg.name());
        }
        for agg in [Agg::Sum, Agg::Mean, Agg::Stddev] {
            match (merged.value(agg), reference.value(agg)) {
                (Some(a), Some(b)) => prop_assert!(close(a, b, 1e-9) || (a - b).abs() < 1e-6, "{}: {} vs {}", agg.name(), a, b),
                (a, b) => prop_assert_eq!(a, b),
            }
        }
        assert_matches_direct(&merged, &points);
    }
}

proptest! {
    /// With values anywhere in f64's range (sums may overflow), the order-free aggregates
    /// are still exact whatever the order and split, and nothing panics.
    #[test]
    fn extreme_values_keep_the_exact_aggregates(
        points in prop::collection::vec((timestamp(), any::<f64>()), 1..100),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        order in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let reference = build(&points);
        let mut reversed = points.clone();
        reversed.reverse();
        let merged = split_and_merge(&reversed, &cuts, &order);
        for agg in [Agg::Count, Agg::Min, Agg::Max, Agg::First, Agg::Last] {
            prop_assert_eq!(merged.value(agg), reference.value(agg), "{}", agg.name());
        }
        for agg in Agg::ALL {
            let _ = merged.value(agg);
        }
        let back = stored(&merged);
        prop_assert_eq!(back.value(Agg::Count), merged.value(Agg::Count));
        let (a, b) = (back.value(Agg::Sum), merged.value(Agg::Sum));
        prop_assert!(a == b || a.zip(b).is_some_and(|(a, b)| a.is_nan() && b.is_nan()));
    }
}
