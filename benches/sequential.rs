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
//! `cargo bench --bench sequential` (RUNS=2000 by default; RUNS=200 for a quick look).

use strangler::sequential::{Settings, fixed_sample_requests, simulate};

fn main() {
    let runs: u64 = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let max: u64 = std::env::var("MAX_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    if let Ok(which) = std::env::var("EXPLORE") {
        use strangler::sequential::*;
        let s = Settings::default();
        let v: u8 = std::env::var("VAR")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        VARIANT.store(v, std::sync::atomic::Ordering::Relaxed);
        MINV.store(
            std::env::var("MINV")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(500),
            std::sync::atomic::Ordering::Relaxed,
        );
        NEWMIN.store(
            std::env::var("NEWMIN")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(100),
            std::sync::atomic::Ordering::Relaxed,
        );
        KBAND.store(
            std::env::var("KBAND")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2),
            std::sync::atomic::Ordering::Relaxed,
        );
        let every: u64 = std::env::var("EVERY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10);
        let runs = runs;
        let run = |name: &str,
                   share: f64,
                   leg: &LatencyModel,
                   new: &LatencyModel,
                   r: f64,
                   seed0: u64| {
            let t = std::time::Instant::now();
            let mut at = Vec::new();
            for i in 0..runs {
                let mut rng = fastrand::Rng::with_seed(seed0 * 100_000 + i);
                if let Some(n) = simulate_latency(&mut rng, share, leg, new, every, max, r, &s) {
                    at.push(n);
                }
            }
            at.sort_unstable();
            let med = at.get(at.len() / 2).copied().unwrap_or(0);
            let fixed = latency_fixed_sample_requests(leg, new, r, share, 0.01, 0.8);
            println!(
                "{name:<40} share {share:<5} ratio {r}: worse {:.4} median {med} fixed {fixed} slowshare {:.4} ({:.1?})",
                at.len() as f64 / runs as f64,
                slow_share(leg, new, r),
                t.elapsed()
            );
        };
        let mut seed = 1;
        if which.contains('a') {
            for sigma in [0.2, 1.0] {
                for share in [0.5, 0.1, 0.01] {
                    for r in [1.0, 1.5] {
                        seed += 1;
                        let leg = LatencyModel::log_normal(20.0, sigma);
                        run(&format!("same sigma {sigma}"), share, &leg, &leg, r, seed);
                    }
                }
            }
        }
        if which.contains('b') {
            for sigma in [0.2, 0.5, 1.0] {
                for median in [5.0, 7.3, 20.0, 50.0] {
                    for r in [1.5, 1.2] {
                        seed += 1;
                        let leg = LatencyModel::log_normal(median, sigma);
                        run(
                            &format!("boundary sigma {sigma} median {median}"),
                            0.5,
                            &leg,
                            &leg.scaled(r),
                            r,
                            seed,
                        );
                    }
                }
            }
        }
        if which.contains('c') {
            let shares: &[f64] = if which.contains('e') {
                &[0.5]
            } else if which.contains('f') {
                &[0.1, 0.01]
            } else {
                &[0.5, 0.1]
            };
            for (sl, sn) in [(1.0, 0.2), (0.5, 0.1), (0.2, 1.0)] {
                for &share in shares {
                    for k in 0..4 {
                        seed += 1;
                        let leg = LatencyModel::log_normal(20.0 * (1.0 + k as f64 * 0.03), sl);
                        let target = 1.5 * leg.quantile_ms(0.99);
                        let new = LatencyModel::log_normal(
                            target / (2.3263478740408408 * sn as f64).exp(),
                            sn,
                        );
                        run(
                            &format!("mismatch {sl}/{sn} k {k}"),
                            share,
                            &leg,
                            &new,
                            1.5,
                            seed,
                        );
                    }
                }
            }
        }
        if which.contains('d') {
            for sigma in [0.2, 0.5, 1.0] {
                for share in [0.5, 0.1] {
                    let leg = LatencyModel::log_normal(20.0, sigma);
                    seed += 1;
                    run(
                        &format!("2x sigma {sigma}"),
                        share,
                        &leg,
                        &leg.scaled(2.0),
                        1.5,
                        seed,
                    );
                    seed += 1;
                    run(
                        &format!("5% 10x sigma {sigma}"),
                        share,
                        &leg,
                        &leg.with_slow(0.05, 10.0),
                        1.5,
                        seed,
                    );
                }
            }
        }
        return;
    }
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
}
