//! The anytime-valid error-rate test, by seeded simulation on counts (a smaller version of
//! `cargo bench --bench sequential`, whose full runs give the figures): looked at after
//! every 10 requests, it calls an identical new side `worse` at most as often as its level
//! (within the binomial spread of the runs), and it does detect a doubled error rate;
//! a fixed-sample z-test looked at as often does not keep its level.
//!
//! The same for the latency test (new's p99 against `max_p99_ratio` times legacy's), on
//! latency histograms drawn from log-normal distributions: an identical new side, and one
//! exactly at the ratio, are rarely called `worse`; a slower one is.
//!
//! Then a plan's steps under the two boundaries (harm: roll back; no harm beyond the
//! margin: advance), within the binomial spread of the runs: equal sides advance within 3
//! yardsticks in at least 99% of steps; a new side worse by twice the margin advances in at
//! most 5%; a doubled error rate is rolled back about as soon as the harm test alone would.

use strangler::sequential::{
    Advance, Counts, LatencyModel, LatencyStepModel, Settings, StepModel, StepOutcome, binomial,
    density_ratio, error_margin, evidence, latency_fixed_sample_requests, latency_requests_needed,
    requests_needed, simulate, simulate_latency, simulate_latency_step, simulate_step,
    simulate_step_before, with_slow_share,
};

/// The share of `runs` seeded runs in which `worse` is ever called.
fn ever_worse(
    runs: u64,
    seed: u64,
    share: f64,
    legacy: f64,
    new: f64,
    max: u64,
    s: &Settings,
) -> f64 {
    let alarms = (0..runs)
        .filter(|i| {
            let mut rng = fastrand::Rng::with_seed(seed * 1_000_003 + i);
            simulate(&mut rng, share, legacy, new, 10, max, s).is_some()
        })
        .count();
    alarms as f64 / runs as f64
}

/// The level plus three binomial standard deviations of the observed share over `runs`.
fn bound(alpha: f64, runs: u64) -> f64 {
    alpha + 3.0 * (alpha * (1.0 - alpha) / runs as f64).sqrt()
}

#[test]
fn equal_error_rates_are_rarely_called_worse_however_often_they_are_looked_at() {
    let s = Settings::default();
    let runs = 300;
    for (i, (rate, share)) in [(0.001, 0.1), (0.01, 0.1), (0.05, 0.5), (0.01, 0.01)]
        .into_iter()
        .enumerate()
    {
        let frac = ever_worse(runs, 10 + i as u64, share, rate, rate, 100_000, &s);
        assert!(
            frac <= bound(s.alpha, runs),
            "rate {rate}, share {share}: worse in {frac} of runs (bound {})",
            bound(s.alpha, runs)
        );
    }
}

#[test]
fn within_the_margin_is_not_worse() {
    let s = Settings {
        margin: 0.01,
        ..Settings::default()
    };
    let runs = 300;
    let frac = ever_worse(runs, 3, 0.1, 0.01, 0.015, 100_000, &s);
    assert!(frac <= bound(s.alpha, runs), "{frac}");
}

#[test]
fn a_doubled_error_rate_is_called_worse() {
    let s = Settings::default();
    let runs = 100;
    // 1% → 2% at half the traffic: a fixed-sample z-test at 80% power needs about 6,000
    // requests; every run decides well within 100,000.
    let frac = ever_worse(runs, 5, 0.5, 0.01, 0.02, 100_000, &s);
    assert!(frac >= 0.99, "detected in {frac} of runs");
}

/// The reason for the sequential test: a 99% z-test applied at every look calls an
/// identical new side `worse` in far more than 1% of runs.
#[test]
fn a_fixed_sample_test_looked_at_often_does_not_keep_its_level() {
    let runs = 300u64;
    let (rate, share) = (0.01, 0.5);
    let mut alarms = 0;
    for i in 0..runs {
        let mut rng = fastrand::Rng::with_seed(99_000 + i);
        let mut c = Counts::default();
        for _ in 0..10_000 {
            let to_new = binomial(&mut rng, 10, share);
            c.new_requests += to_new;
            c.legacy_requests += 10 - to_new;
            c.new_errors += binomial(&mut rng, to_new, rate);
            c.legacy_errors += binomial(&mut rng, 10 - to_new, rate);
            if z(&c) > 2.326 {
                alarms += 1;
                break;
            }
        }
    }
    let frac = alarms as f64 / runs as f64;
    assert!(
        frac > 3.0 * 0.01,
        "the peeking z-test alarmed in only {frac}"
    );
    // The sequential test on the same kind of runs stays within its level.
    let s = Settings::default();
    assert!(ever_worse(runs, 77, share, rate, rate, 100_000, &s) <= bound(s.alpha, runs));
    // And the evidence is reported against its threshold.
    let e = evidence(
        &Counts {
            legacy_requests: 10_000,
            legacy_errors: 100,
            new_requests: 10_000,
            new_errors: 100,
        },
        &s,
    );
    assert_eq!(e.log_lr, 0.0);
    assert!((e.threshold - 100f64.ln()).abs() < 1e-12);
}

/// The pooled two-proportion z statistic.
fn z(c: &Counts) -> f64 {
    let (n1, n2) = (c.legacy_requests as f64, c.new_requests as f64);
    if n1 == 0.0 || n2 == 0.0 {
        return 0.0;
    }
    let p = (c.legacy_errors + c.new_errors) as f64 / (n1 + n2);
    let se = (p * (1.0 - p) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if se == 0.0 {
        return 0.0;
    }
    (c.new_errors as f64 / n2 - c.legacy_errors as f64 / n1) / se
}

/// For `runs` seeded latency runs (a look every 10 requests up to `max`): the share in which
/// `worse` is ever called, and the sorted request counts at which it was.
#[allow(clippy::too_many_arguments)]
fn latency_runs(
    runs: u64,
    seed: u64,
    share: f64,
    legacy: &LatencyModel,
    new: &LatencyModel,
    ratio: f64,
    max: u64,
    s: &Settings,
) -> (f64, Vec<u64>) {
    let mut at: Vec<u64> = (0..runs)
        .filter_map(|i| {
            let mut rng = fastrand::Rng::with_seed(seed * 1_000_003 + i);
            simulate_latency(&mut rng, share, legacy, new, 10, max, ratio, s)
        })
        .collect();
    at.sort_unstable();
    (at.len() as f64 / runs as f64, at)
}

/// Both sides alike, at a ratio of 1 (the worst case: new's p99 is exactly the limit) and
/// 1.5, new at 1%, 10% and 50% of traffic.
fn equal_latencies(sigma: f64, seed: u64) {
    let s = Settings::default();
    let runs = 200;
    let legacy = LatencyModel::log_normal(20.0, sigma);
    for (i, (share, ratio)) in [0.01, 0.1, 0.5]
        .into_iter()
        .flat_map(|share| [(share, 1.0), (share, 1.5)])
        .enumerate()
    {
        let (frac, _) = latency_runs(
            runs,
            seed + i as u64,
            share,
            &legacy,
            &legacy,
            ratio,
            100_000,
            &s,
        );
        assert!(
            frac <= bound(s.alpha, runs),
            "sigma {sigma}, share {share}, ratio {ratio}: worse in {frac} of runs (bound {})",
            bound(s.alpha, runs)
        );
    }
}

#[test]
fn equal_tight_latencies_are_rarely_called_worse_however_often_they_are_looked_at() {
    equal_latencies(0.2, 1000);
}

#[test]
fn equal_heavy_tailed_latencies_are_rarely_called_worse_however_often_they_are_looked_at() {
    equal_latencies(1.0, 2000);
}

/// A new side whose p99 is exactly 1.5 times legacy's, at a ratio of 1.5: legacy scaled
/// (tight, with its p99 where spreading a bucket's requests evenly would overstate new's
/// slow share; and heavy-tailed), and a tight new side against a heavy-tailed legacy (whose
/// slow share the uncertainty of legacy's p99 moves five times as much).
#[test]
fn a_new_side_exactly_at_the_ratio_is_rarely_called_worse() {
    let s = Settings::default();
    let runs = 200;
    let tight = LatencyModel::log_normal(7.3, 0.2);
    let heavy = LatencyModel::log_normal(20.0, 1.0);
    let at_ratio = {
        // Tight (sigma 0.2), its p99 at 1.5 times heavy's.
        let p99 = 1.5 * heavy.quantile_ms(0.99);
        LatencyModel::log_normal(p99 / (2.326_347_874 * 0.2f64).exp(), 0.2)
    };
    assert!((at_ratio.quantile_ms(0.99) / heavy.quantile_ms(0.99) - 1.5).abs() < 1e-6);
    for (i, (name, legacy, new)) in [
        ("tight, scaled", &tight, &tight.scaled(1.5)),
        ("heavy, scaled", &heavy, &heavy.scaled(1.5)),
        ("tight against heavy", &heavy, &at_ratio),
    ]
    .into_iter()
    .enumerate()
    {
        let (frac, _) = latency_runs(runs, 3000 + i as u64, 0.5, legacy, new, 1.5, 100_000, &s);
        assert!(
            frac <= bound(s.alpha, runs),
            "{name}: worse in {frac} of runs (bound {})",
            bound(s.alpha, runs)
        );
    }
}

/// Twice as slow, and 5% of requests ten times slower, at a ratio of 1.5: called worse in
/// every run, within a few times what a fixed-sample z-test of the slow share needs.
#[test]
fn a_slower_new_side_is_called_worse() {
    let s = Settings::default();
    let runs = 100;
    let legacy = LatencyModel::log_normal(20.0, 0.5);
    for (i, (name, new)) in [
        ("twice as slow", legacy.scaled(2.0)),
        ("5% ten times slower", legacy.with_slow(0.05, 10.0)),
    ]
    .into_iter()
    .enumerate()
    {
        for share in [0.1, 0.5] {
            let (frac, at) = latency_runs(
                runs,
                4000 + i as u64,
                share,
                &legacy,
                &new,
                1.5,
                100_000,
                &s,
            );
            assert!(
                frac >= 0.99,
                "{name}, share {share}: detected in {frac} of runs"
            );
            let median = at[at.len() / 2];
            let fixed =
                latency_fixed_sample_requests(&legacy, &new, 1.5, share, s.alpha, 0.8, true);
            assert!(
                median <= 4 * fixed,
                "{name}, share {share}: median {median} requests, fixed-sample {fixed}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// A plan's step under the two boundaries: rolled back once the harm test calls `worse`,
// advanced once the hold is served, `min_requests` a side and the advance boundary shown.
// Each step's yardstick Y is its hold plus the time for the side with fewer requests to
// reach the effective minimum, the larger of `min_requests` and `requests_needed`.
// ---------------------------------------------------------------------------------------

/// The guard's `min_requests`, and the hold: the time to that many on the smaller side.
const MIN_REQUESTS: u64 = 100;

/// The requests (both sides) for the side with fewer of them to reach `n`, on average.
fn time_to(n: u64, share: f64) -> u64 {
    (n as f64 / share.min(1.0 - share)).ceil() as u64
}

/// A step at `share` with errors at `legacy` and `new`, the short hold, a look every Y/100;
/// and its yardstick Y.
fn step(share: f64, legacy: f64, new: f64, a: &Advance) -> (StepModel, u64) {
    let needed = requests_needed(share, legacy, a).unwrap();
    let hold = time_to(MIN_REQUESTS, share);
    let y = hold + time_to(needed.max(MIN_REQUESTS), share);
    let m = StepModel {
        share,
        legacy_rate: legacy,
        new_rate: new,
        hold_requests: hold,
        min_requests: MIN_REQUESTS,
        every: (y / 100).max(10),
        max_requests: 30 * y,
    };
    (m, y)
}

/// The outcomes of `runs` seeded steps.
fn outcomes(
    runs: u64,
    seed: u64,
    mut one: impl FnMut(&mut fastrand::Rng) -> StepOutcome,
) -> Vec<StepOutcome> {
    (0..runs)
        .map(|i| one(&mut fastrand::Rng::with_seed(seed * 1_000_003 + i)))
        .collect()
}

/// The share of steps advanced within `limit` requests.
fn advanced_within(o: &[StepOutcome], limit: u64) -> f64 {
    let k = o
        .iter()
        .filter(|s| matches!(s, StepOutcome::Advanced(n) if *n <= limit))
        .count();
    k as f64 / o.len() as f64
}

/// The share `p` less three binomial standard deviations of `runs` runs' observed share.
fn at_least(p: f64, runs: u64) -> f64 {
    p - 3.0 * (p * (1.0 - p) / runs as f64).sqrt()
}

#[test]
fn equal_sides_advance_within_three_yardsticks() {
    let (s, a) = (Settings::default(), Advance::default());
    let runs = 2000;
    for (i, (rate, share)) in [(0.05, 0.5), (0.01, 0.1), (0.001, 0.5), (0.01, 0.01)]
        .into_iter()
        .enumerate()
    {
        let (m, y) = step(share, rate, rate, &a);
        let o = outcomes(runs, 100 + i as u64, |rng| simulate_step(rng, &m, &s, &a));
        let frac = advanced_within(&o, 3 * y);
        assert!(
            frac >= at_least(0.99, runs),
            "rate {rate}, share {share}: {frac} advanced within 3 Y = {}",
            3 * y
        );
    }
}

/// The rule before the advance boundary (the observed difference at most 0 once the hold
/// is served) leaves many equal steps waiting long after their hold.
#[test]
fn the_rule_before_leaves_equal_steps_waiting() {
    let s = Settings::default();
    let runs = 300;
    let share = 0.1;
    let hold = time_to(MIN_REQUESTS, share);
    let y0 = 2 * hold;
    let m = StepModel {
        share,
        legacy_rate: 0.01,
        new_rate: 0.01,
        hold_requests: hold,
        min_requests: MIN_REQUESTS,
        every: y0 / 100,
        max_requests: 30 * y0,
    };
    let o = outcomes(runs, 150, |rng| simulate_step_before(rng, &m, &s));
    let frac = advanced_within(&o, 3 * y0);
    assert!(frac < 0.95, "{frac} advanced within 3 Y0");
}

/// At these rates a doubled error rate is legacy's plus twice the margin: it advances in at
/// most 5% of steps (within the runs' spread), and is rolled back otherwise, about as soon
/// as the harm test alone calls it `worse`.
#[test]
fn a_new_side_worse_by_twice_the_margin_rarely_advances_and_is_rolled_back() {
    let (s, a) = (Settings::default(), Advance::default());
    let runs = 2000u64;
    for (i, (rate, share)) in [(0.01, 0.5), (0.001, 0.1), (0.05, 0.01)]
        .into_iter()
        .enumerate()
    {
        let new = rate + 2.0 * error_margin(rate, &a);
        assert!((new - 2.0 * rate).abs() < 1e-12);
        let (m, _) = step(share, rate, new, &a);
        let o = outcomes(runs, 200 + i as u64, |rng| simulate_step(rng, &m, &s, &a));
        let advanced = advanced_within(&o, u64::MAX);
        let bound = 0.05 + 3.0 * (0.05 * 0.95 / runs as f64).sqrt();
        assert!(
            advanced <= bound,
            "rate {rate}, share {share}: advanced in {advanced} (bound {bound})"
        );
        let mut rolled: Vec<u64> = o
            .iter()
            .filter_map(|s| match s {
                StepOutcome::RolledBack(n) => Some(*n),
                _ => None,
            })
            .collect();
        assert!(rolled.len() as f64 / runs as f64 >= at_least(0.95, runs));
        // The harm test alone, on runs of its own, looked at as often.
        let mut alone: Vec<u64> = (0..runs)
            .filter_map(|j| {
                let mut rng = fastrand::Rng::with_seed(300 + i as u64 * 1_000_003 + j);
                simulate(&mut rng, share, rate, new, m.every, m.max_requests, &s)
            })
            .collect();
        rolled.sort_unstable();
        alone.sort_unstable();
        // The rollbacks' median, placed among the harm test's own detections: at their
        // median, within the spread of two samples' medians.
        let median = rolled[rolled.len() / 2];
        let below = alone.iter().filter(|&&n| n <= median).count() as f64 / alone.len() as f64;
        let spread = 3.0 * (0.25 / rolled.len() as f64 + 0.25 / alone.len() as f64).sqrt();
        assert!(
            (below - 0.5).abs() <= spread,
            "rate {rate}, share {share}: median rollback at {median}, the harm test's {}",
            alone[alone.len() / 2]
        );
    }
}

/// A latency step with errors at 1% on both sides, the short hold, a look every Y/100; and
/// its yardstick.
fn latency_step<'a>(
    share: f64,
    legacy: &'a LatencyModel,
    new: &'a LatencyModel,
    ratio: f64,
    a: &Advance,
) -> (LatencyStepModel<'a>, u64) {
    let rho = density_ratio(legacy, new, ratio).max(1.0);
    let needed = requests_needed(share, 0.01, a)
        .unwrap()
        .max(latency_requests_needed(share, rho, a).unwrap());
    let hold = time_to(MIN_REQUESTS, share);
    let y = hold + time_to(needed.max(MIN_REQUESTS), share);
    let m = LatencyStepModel {
        share,
        legacy,
        new,
        max_p99_ratio: ratio,
        legacy_rate: 0.01,
        new_rate: 0.01,
        hold_requests: hold,
        min_requests: MIN_REQUESTS,
        every: (y / 100).max(10),
        max_requests: 10 * y,
    };
    (m, y)
}

#[test]
fn equal_latencies_advance_within_three_yardsticks() {
    let (s, a) = (Settings::default(), Advance::default());
    let runs = 1000;
    let tight = LatencyModel::log_normal(20.0, 0.2);
    let heavy = LatencyModel::log_normal(20.0, 1.0);
    for (i, (m, ratio, share)) in [(&heavy, 1.0, 0.5), (&tight, 1.0, 0.1), (&heavy, 1.5, 0.1)]
        .into_iter()
        .enumerate()
    {
        let (step, y) = latency_step(share, m, m, ratio, &a);
        let o = outcomes(runs, 400 + i as u64, |rng| {
            simulate_latency_step(rng, &step, &s, &a)
        });
        let frac = advanced_within(&o, 3 * y);
        assert!(
            frac >= at_least(0.99, runs),
            "ratio {ratio}, share {share}: {frac} advanced within 3 Y = {}",
            3 * y
        );
    }
}

/// 2% of new's requests slower than the ratio allows (1% + twice the latency margin): new
/// legacy scaled, and a tight new side against a heavy-tailed legacy (whose slow share the
/// uncertainty of legacy's p99 moves nine times as much).
#[test]
fn a_new_side_with_twice_the_latency_margin_rarely_advances() {
    let (s, a) = (Settings::default(), Advance::default());
    let runs = 1000u64;
    let heavy = LatencyModel::log_normal(20.0, 1.0);
    let tight = LatencyModel::log_normal(20.0, 0.2);
    let slow = 0.01 + 2.0 * a.latency_margin;
    for (i, (name, shape, share)) in [("scaled", &heavy, 0.5), ("tight", &tight, 0.1)]
        .into_iter()
        .enumerate()
    {
        let new = with_slow_share(&heavy, shape, 1.0, slow);
        let (mut step, y) = latency_step(share, &heavy, &new, 1.0, &a);
        // Undecided steps stop at 3 Y: the bound is on ever advancing, and most advances
        // come before (`cargo bench --bench sequential` runs to 30 Y).
        step.max_requests = 3 * y;
        let o = outcomes(runs, 500 + i as u64, |rng| {
            simulate_latency_step(rng, &step, &s, &a)
        });
        let advanced = advanced_within(&o, u64::MAX);
        let bound = 0.05 + 3.0 * (0.05 * 0.95 / runs as f64).sqrt();
        assert!(
            advanced <= bound,
            "{name}, share {share}: advanced in {advanced} (bound {bound})"
        );
    }
}
