//! Simulations of the anytime-valid error-rate test (`src/observe/sequential.rs`): seeded,
//! on counts only (each batch's counts drawn from a binomial), no network.
//!
//! - false alarms: both sides at the same error rate (0.1%, 1%, 5%), new at 1%, 10% and
//!   50% of traffic, the test applied after every 10 requests up to 1,000,000: the share of
//!   runs ever judged `worse`, against the level (1%);
//! - the margin: new at legacy + d/2 with `margin: d`;
//! - power: new at twice legacy's rate, the median requests to `worse`, beside what a
//!   fixed-sample z-test at the same level needs for the same power.
//!
//!
//! Then the latency test (new's p99 against `max_p99_ratio` times legacy's), on latency
//! histograms (each batch's bucket counts drawn from log-normal distributions), a look
//! every 10 requests (EVERY) up to 1,000,000:
//!
//! - false alarms: both sides alike, tight (sigma 0.2) and heavy-tailed (sigma 1.0), new
//!   at 1%, 10% and 50% of traffic, at a ratio of 1 (the worst case) and 1.5;
//! - the boundary: new's p99 exactly 1.5 times legacy's, at a ratio of 1.5 (legacy scaled;
//!   and a new side of another shape than legacy's);
//! - power: new twice as slow, and 5% of new's requests ten times slower, at a ratio of 1.5:
//!   the median requests to `worse`, beside what a fixed-sample z-test of the slow share
//!   needs.
//!
//! `cargo bench --bench sequential` (RUNS=2000 by default; RUNS=200 for a quick look).

use strangler::sequential::{
    LatencyModel, Settings, density_ratio, fixed_sample_requests, latency_fixed_sample_requests,
    simulate, simulate_latency, slow_share,
};

fn main() {
    let runs: u64 = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let max: u64 = std::env::var("MAX_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let s = Settings::default();
    // The binomial spread of the observed share at the level: 3 standard deviations.
    let tol = 3.0 * (s.alpha * (1.0 - s.alpha) / runs as f64).sqrt();
    println!(
        "false alarms: {runs} runs per case, a look every 10 requests up to {max}; level {} (+ {tol:.4} for 3 sd of {runs} runs)",
        s.alpha
    );
    println!("{:>8} {:>6} {:>12}", "rate", "share", "ever worse");
    let mut seed = 1;
    for rate in [0.001, 0.01, 0.05] {
        for share in [0.01, 0.1, 0.5] {
            let mut alarms = 0;
            for _ in 0..runs {
                seed += 1;
                let mut rng = fastrand::Rng::with_seed(seed);
                if simulate(&mut rng, share, rate, rate, 10, max, &s).is_some() {
                    alarms += 1;
                }
            }
            let frac = alarms as f64 / runs as f64;
            let ok = if frac <= s.alpha + tol { "ok" } else { "OVER" };
            println!("{rate:>8} {share:>6} {frac:>12.4} {ok}");
        }
    }
    println!();
    println!("the margin: new at legacy + d/2, margin d");
    for (rate, d) in [(0.01, 0.01), (0.001, 0.002), (0.05, 0.02)] {
        let ms = Settings { margin: d, ..s };
        let mut alarms = 0;
        for _ in 0..runs {
            seed += 1;
            let mut rng = fastrand::Rng::with_seed(seed);
            if simulate(&mut rng, 0.1, rate, rate + d / 2.0, 10, max, &ms).is_some() {
                alarms += 1;
            }
        }
        let frac = alarms as f64 / runs as f64;
        println!("  legacy {rate}, margin {d}: ever worse {frac:.4}");
    }
    println!();
    println!(
        "power: new at twice legacy's rate; median requests to worse vs a fixed-sample z-test (one-sided, level 1%, power 80%)"
    );
    println!(
        "{:>8} {:>6} {:>10} {:>14} {:>14}",
        "rate", "share", "detected", "median reqs", "fixed-sample"
    );
    for rate in [0.001, 0.01, 0.05] {
        for share in [0.1, 0.5] {
            let mut at: Vec<u64> = Vec::new();
            for _ in 0..runs.min(1000) {
                seed += 1;
                let mut rng = fastrand::Rng::with_seed(seed);
                if let Some(n) = simulate(&mut rng, share, rate, 2.0 * rate, 10, max * 10, &s) {
                    at.push(n);
                }
            }
            at.sort_unstable();
            let detected = at.len() as f64 / runs.min(1000) as f64;
            let median = at.get(at.len() / 2).copied().unwrap_or(0);
            let fixed = fixed_sample_requests(rate, 2.0 * rate, share, s.alpha, 0.8);
            println!("{rate:>8} {share:>6} {detected:>10.3} {median:>14} {fixed:>14}");
        }
    }
    latency(runs, max, &s, &mut seed);
}

/// The latency test's tables.
fn latency(runs: u64, max: u64, s: &Settings, seed: &mut u64) {
    let every: u64 = std::env::var("EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let tol = 3.0 * (s.alpha * (1.0 - s.alpha) / runs as f64).sqrt();
    // The share of runs ever judged worse, and the sorted request counts at which they were.
    let mut runs_of = |n: u64, share, legacy: &LatencyModel, new: &LatencyModel, ratio, max| {
        let mut at = Vec::new();
        for _ in 0..n {
            *seed += 1;
            let mut rng = fastrand::Rng::with_seed(*seed);
            if let Some(k) = simulate_latency(&mut rng, share, legacy, new, every, max, ratio, s) {
                at.push(k);
            }
        }
        at.sort_unstable();
        (at.len() as f64 / n as f64, at)
    };
    println!();
    println!(
        "latency (new p99 against max_p99_ratio x legacy p99), log-normal latencies, median 20 ms"
    );
    println!(
        "false alarms: {runs} runs per case, a look every {every} requests up to {max}; level {} (+ {tol:.4} for 3 sd of {runs} runs)",
        s.alpha
    );
    println!(
        "{:>6} {:>6} {:>6} {:>12}",
        "sigma", "share", "ratio", "ever worse"
    );
    for sigma in [0.2, 1.0] {
        let m = LatencyModel::log_normal(20.0, sigma);
        for share in [0.01, 0.1, 0.5] {
            for ratio in [1.0, 1.5] {
                let (frac, _) = runs_of(runs, share, &m, &m, ratio, max);
                let ok = if frac <= s.alpha + tol { "ok" } else { "OVER" };
                println!("{sigma:>6} {share:>6} {ratio:>6} {frac:>12.4} {ok}");
            }
        }
    }
    println!();
    println!("the boundary: new's p99 exactly 1.5 x legacy's, ratio 1.5, new at 50% of traffic");
    let tight = LatencyModel::log_normal(20.0, 0.2);
    let heavy = LatencyModel::log_normal(20.0, 1.0);
    // A log-normal of the given sigma whose p99 is 1.5 times `of`'s.
    let at_ratio = |of: &LatencyModel, sigma: f64| {
        let p99 = 1.5 * of.quantile_ms(0.99);
        LatencyModel::log_normal(p99 / (2.326_347_874 * sigma).exp(), sigma)
    };
    let boundary = [
        ("sigma 0.2, scaled x1.5", tight.clone(), tight.scaled(1.5)),
        (
            "sigma 0.2 (median 7.3 ms), scaled x1.5",
            LatencyModel::log_normal(7.3, 0.2),
            LatencyModel::log_normal(7.3 * 1.5, 0.2),
        ),
        ("sigma 1.0, scaled x1.5", heavy.clone(), heavy.scaled(1.5)),
        (
            "legacy sigma 1.0, new sigma 0.2",
            heavy.clone(),
            at_ratio(&heavy, 0.2),
        ),
        (
            "legacy sigma 0.2, new sigma 1.0",
            tight.clone(),
            at_ratio(&tight, 1.0),
        ),
    ];
    for (name, legacy, new) in &boundary {
        let (frac, _) = runs_of(runs, 0.5, legacy, new, 1.5, max);
        let ok = if frac <= s.alpha + tol { "ok" } else { "OVER" };
        println!("  {name:<40} ever worse {frac:.4} {ok}");
    }
    println!();
    println!(
        "power, ratio 1.5: median requests to worse vs a fixed-sample one-sided z-test of new's slow share against 1% (level 1%, power 80%), with legacy's part of its variance as the sequential test weighs it (x rho^2), and without (valid only for new = legacy scaled)"
    );
    println!(
        "{:<22} {:>6} {:>6} {:>10} {:>5} {:>10} {:>12} {:>12} {:>12}",
        "new",
        "sigma",
        "share",
        "slow share",
        "rho",
        "detected",
        "median reqs",
        "fixed (rho)",
        "fixed (1)"
    );
    let power_runs = runs.min(1000);
    for sigma in [0.2, 0.5, 1.0] {
        let legacy = LatencyModel::log_normal(20.0, sigma);
        for (name, new) in [
            ("twice as slow", legacy.scaled(2.0)),
            ("5% ten times slower", legacy.with_slow(0.05, 10.0)),
        ] {
            for share in [0.1, 0.5] {
                let (detected, at) = runs_of(power_runs, share, &legacy, &new, 1.5, max * 10);
                let median = at.get(at.len() / 2).copied().unwrap_or(0);
                let slow = slow_share(&legacy, &new, 1.5);
                let with_rho =
                    latency_fixed_sample_requests(&legacy, &new, 1.5, share, s.alpha, 0.8, true);
                let without =
                    latency_fixed_sample_requests(&legacy, &new, 1.5, share, s.alpha, 0.8, false);
                let rho = density_ratio(&legacy, &new, 1.5);
                println!(
                    "{name:<22} {sigma:>6} {share:>6} {slow:>10.4} {rho:>5.2} {detected:>10.3} {median:>12} {with_rho:>12} {without:>12}"
                );
            }
        }
    }
}
