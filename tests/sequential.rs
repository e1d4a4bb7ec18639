//! The anytime-valid error-rate test, by seeded simulation on counts (a smaller version of
//! `cargo bench --bench sequential`, whose full runs give the figures): looked at after
//! every 10 requests, it calls an identical new side `worse` at most as often as its level
//! (within the binomial spread of the runs), and it does detect a doubled error rate;
//! a fixed-sample z-test looked at as often does not keep its level.
//!
//! The same for the latency test (new's p99 against `max_p99_ratio` times legacy's), on
//! latency histograms drawn from log-normal distributions: an identical new side, and one
//! exactly at the ratio, are rarely called `worse`; a slower one is.

use strangler::sequential::{
    Counts, LatencyModel, Settings, binomial, evidence, latency_fixed_sample_requests, simulate,
    simulate_latency,
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
