//! The anytime-valid error-rate test, by seeded simulation on counts (a smaller version of
//! `cargo bench --bench sequential`, whose full runs give the figures): looked at after
//! every 10 requests, it calls an identical new side `worse` at most as often as its level
//! (within the binomial spread of the runs), and it does detect a doubled error rate;
//! a fixed-sample z-test looked at as often does not keep its level.

use strangler::sequential::{Counts, Settings, binomial, evidence, simulate};

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
