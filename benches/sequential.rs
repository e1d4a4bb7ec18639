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
//! Then a plan's steps under the two boundaries (`simulate_step`, `simulate_latency_step`):
//! rolled back once the harm test above calls `worse`, advanced once the hold is served,
//! both sides have `min_requests` (100) and the advance boundary is shown; beside the rule
//! before it (advance once the observed figures are within the bounds). Each step's
//! yardstick is its hold plus the time for the side with fewer requests to reach the
//! effective minimum, the larger of `min_requests` and the requests the advance boundary
//! needs (`requests_needed`):
//!
//! - equal sides (errors at 0.1%, 1%, 5%; new at 1%, 10%, 50% of traffic): the share of
//!   steps advanced within 3 yardsticks, the median and 99th percentile of the step's
//!   length in yardsticks, the share rolled back; the rule before, against its own
//!   yardstick (the hold plus the time to `min_requests`);
//! - new at twice legacy's error rate, which at these rates is legacy's plus twice the
//!   margin: the share of steps advanced and rolled back, the median requests to the
//!   rollback beside the harm test's alone;
//! - the same for latency (with errors at 1% on both sides; at most 1,000 runs a case):
//!   equal sides, tight and heavy-tailed, at a ratio of 1 and 1.5; a new side with 2% of
//!   its requests slower than the ratio allows (1% + twice the latency margin); twice as
//!   slow.
//!
//! `cargo bench --bench sequential` (RUNS=2000 by default; RUNS=200 for a quick look;
//! STEPS_ONLY=1 for the steps' tables alone).

use strangler::sequential::{
    Advance, LatencyModel, LatencyStepModel, NEED_FACTOR, Settings, StepModel, StepOutcome,
    density_ratio, error_margin, fixed_sample_requests, latency_fixed_sample_requests,
    latency_requests_needed, requests_needed, simulate, simulate_latency, simulate_latency_step,
    simulate_latency_step_before, simulate_step, simulate_step_before, slow_share, with_slow_share,
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
    if std::env::var("STEPS_ONLY").is_ok() {
        steps(runs, &s);
        return;
    }
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
    steps(runs, &s);
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

/// The guard's `min_requests` in the steps' tables.
const MIN_REQUESTS: u64 = 100;

/// The two holds of the steps' tables: the time for the side with fewer requests to reach
/// this many (`min_requests`, and twenty times as many).
const HOLDS: [u64; 2] = [MIN_REQUESTS, 20 * MIN_REQUESTS];

/// The requests (both sides) for the side with fewer of them to reach `n`, on average.
fn time_to(n: u64, share: f64) -> u64 {
    (n as f64 / share.min(1.0 - share)).ceil() as u64
}

/// How `runs` simulated steps ended.
struct Outcomes {
    runs: u64,
    /// The request counts at which steps advanced, and rolled back, sorted.
    advanced: Vec<u64>,
    rolled_back: Vec<u64>,
}

impl Outcomes {
    fn of(
        runs: u64,
        seed: &mut u64,
        mut step: impl FnMut(&mut fastrand::Rng) -> StepOutcome,
    ) -> Outcomes {
        let mut o = Outcomes {
            runs,
            advanced: Vec::new(),
            rolled_back: Vec::new(),
        };
        for _ in 0..runs {
            *seed += 1;
            let mut rng = fastrand::Rng::with_seed(*seed);
            match step(&mut rng) {
                StepOutcome::Advanced(n) => o.advanced.push(n),
                StepOutcome::RolledBack(n) => o.rolled_back.push(n),
                StepOutcome::Undecided => {}
            }
        }
        o.advanced.sort_unstable();
        o.rolled_back.sort_unstable();
        o
    }

    fn share(&self, k: usize) -> f64 {
        k as f64 / self.runs as f64
    }

    fn advanced(&self) -> f64 {
        self.share(self.advanced.len())
    }

    fn rolled_back(&self) -> f64 {
        self.share(self.rolled_back.len())
    }

    fn undecided(&self) -> f64 {
        self.share(self.runs as usize - self.advanced.len() - self.rolled_back.len())
    }

    /// The share of steps advanced within `limit` requests.
    fn advanced_within(&self, limit: u64) -> f64 {
        self.share(self.advanced.iter().filter(|&&n| n <= limit).count())
    }

    /// The `q` quantile of the step's length to its advance, in units of `unit` requests,
    /// steps rolled back or undecided counting as never advanced: `>cap` beyond the runs'
    /// end at `cap` units.
    fn length(&self, q: f64, unit: u64, cap: u64) -> String {
        let k = ((self.runs as f64 * q).ceil() as usize).max(1);
        match self.advanced.get(k - 1) {
            Some(&n) => format!("{:.2}", n as f64 / unit as f64),
            None => format!(">{cap}"),
        }
    }

    fn median_rollback(&self) -> String {
        median(&self.rolled_back)
    }
}

fn median(sorted: &[u64]) -> String {
    sorted
        .get(sorted.len() / 2)
        .map_or("-".into(), |n| n.to_string())
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

/// The tables of a plan's steps under the two boundaries, and under the rule before them.
fn steps(runs: u64, s: &Settings) {
    let a = Advance::default();
    // Seeds of their own: the tables above keep theirs.
    let mut seed = 1_000_000_000;
    println!();
    println!(
        "plan steps: rolled back once the harm test calls worse (with {MIN_REQUESTS} requests a side); advanced once the hold is served, {MIN_REQUESTS} requests a side and the advance boundary shown (beta {}, error margin max({} absolute, {} x legacy's rate), latency margin {}; needed requests at {NEED_FACTOR} x log(1/beta) expected)",
        a.beta,
        a.margin_abs,
        a.margin_ratio - 1.0,
        a.latency_margin
    );
    println!(
        "yardstick Y = the hold + the time for the side with fewer requests to reach the effective minimum, max({MIN_REQUESTS}, needed); the rule before: advanced once the hold is served, {MIN_REQUESTS} a side and the observed figures within the bounds (error rate delta <= 0, p99 ratio <= max), its yardstick Y0 = the hold + the time to {MIN_REQUESTS}"
    );
    println!(
        "holds: the time for the side with fewer requests to reach {} (short) and {} (long); a look every max(10, Y/200) requests (Y0/200 for the rule before); {runs} runs per case",
        HOLDS[0], HOLDS[1]
    );
    steps_errors(runs, s, &a, &mut seed);
    steps_latency(runs.min(1000), s, &a, &mut seed);
}

fn steps_errors(runs: u64, s: &Settings, a: &Advance, seed: &mut u64) {
    println!();
    println!("errors, equal sides (requests counted on both sides; lengths in Y, to the advance)");
    println!(
        "{:>6} {:>6} {:>5} {:>7} {:>7} {:>9} {:>9} {:>8} {:>6} {:>6} {:>7} {:>10}",
        "rate",
        "share",
        "hold",
        "needed",
        "eff.min",
        "hold reqs",
        "Y",
        "<=3Y",
        "p50",
        "p99",
        "rb",
        "median"
    );
    let mut before_rows = Vec::new();
    for hold_n in HOLDS {
        for rate in [0.001, 0.01, 0.05] {
            for share in [0.01, 0.1, 0.5] {
                let needed = requests_needed(share, rate, a).unwrap();
                let eff = needed.max(MIN_REQUESTS);
                let hold = time_to(hold_n, share);
                let y = hold + time_to(eff, share);
                let y0 = hold + time_to(MIN_REQUESTS, share);
                let m = StepModel {
                    share,
                    legacy_rate: rate,
                    new_rate: rate,
                    hold_requests: hold,
                    min_requests: MIN_REQUESTS,
                    every: (y / 200).max(10),
                    max_requests: 100 * y,
                };
                let o = Outcomes::of(runs, seed, |rng| simulate_step(rng, &m, s, a));
                println!(
                    "{rate:>6} {share:>6} {hold_n:>5} {needed:>7} {eff:>7} {hold:>9} {y:>9} {:>8} {:>6} {:>6} {:>7} {:>10}",
                    pct(o.advanced_within(3 * y)),
                    o.length(0.5, y, 100),
                    o.length(0.99, y, 100),
                    pct(o.rolled_back()),
                    median(&o.advanced)
                );
                let before = StepModel {
                    every: (y0 / 200).max(10),
                    max_requests: 1000 * y0,
                    ..m
                };
                let b = Outcomes::of(runs, seed, |rng| simulate_step_before(rng, &before, s));
                before_rows.push(format!(
                    "{rate:>6} {share:>6} {hold_n:>5} {y0:>9} {:>8} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7} {:>10}",
                    pct(b.advanced_within(3 * y0)),
                    b.length(0.5, y0, 1000),
                    b.length(0.99, y0, 1000),
                    pct(1.0 - b.advanced_within(2 * y0)),
                    pct(1.0 - b.advanced_within(10 * y0)),
                    pct(1.0 - b.advanced_within(100 * y0)),
                    pct(1.0 - b.advanced_within(1000 * y0)),
                    median(&b.advanced)
                ));
            }
        }
    }
    println!();
    println!(
        "errors, equal sides, the rule before (lengths in Y0; the share of steps not advanced within 2, 10, 100 and 1000 Y0)"
    );
    println!(
        "{:>6} {:>6} {:>5} {:>9} {:>8} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7} {:>10}",
        "rate",
        "share",
        "hold",
        "Y0",
        "<=3Y0",
        "p50",
        "p99",
        ">2Y0",
        ">10Y0",
        ">100Y0",
        ">1000Y0",
        "median"
    );
    for row in before_rows {
        println!("{row}");
    }
    println!();
    println!(
        "errors, new at twice legacy's rate (= legacy's + twice the margin at these rates): steps advanced and rolled back; the median requests to the rollback, beside the harm test's alone (simulate, the same looks); the rule before: steps advanced"
    );
    println!(
        "{:>6} {:>6} {:>5} {:>8} {:>9} {:>8} {:>8} {:>8} {:>10} {:>10} {:>8}",
        "rate",
        "share",
        "hold",
        "margin",
        "Y",
        "advanced",
        "rb",
        "undec.",
        "median rb",
        "harm test",
        "before"
    );
    for hold_n in HOLDS {
        for rate in [0.001, 0.01, 0.05] {
            for share in [0.01, 0.1, 0.5] {
                let margin = error_margin(rate, a);
                let new_rate = rate + 2.0 * margin;
                let needed = requests_needed(share, rate, a).unwrap();
                let hold = time_to(hold_n, share);
                let y = hold + time_to(needed.max(MIN_REQUESTS), share);
                let y0 = hold + time_to(MIN_REQUESTS, share);
                let every = (y / 200).max(10);
                let m = StepModel {
                    share,
                    legacy_rate: rate,
                    new_rate,
                    hold_requests: hold,
                    min_requests: MIN_REQUESTS,
                    every,
                    max_requests: 100 * y,
                };
                let before = StepModel {
                    every: (y0 / 200).max(10),
                    ..m
                };
                let o = Outcomes::of(runs, seed, |rng| simulate_step(rng, &m, s, a));
                let mut alone: Vec<u64> = Vec::new();
                for _ in 0..runs {
                    *seed += 1;
                    let mut rng = fastrand::Rng::with_seed(*seed);
                    if let Some(n) = simulate(&mut rng, share, rate, new_rate, every, 100 * y, s) {
                        alone.push(n);
                    }
                }
                alone.sort_unstable();
                let b = Outcomes::of(runs, seed, |rng| simulate_step_before(rng, &before, s));
                println!(
                    "{rate:>6} {share:>6} {hold_n:>5} {margin:>8} {y:>9} {:>8} {:>8} {:>8} {:>10} {:>10} {:>8}",
                    pct(o.advanced()),
                    pct(o.rolled_back()),
                    pct(o.undecided()),
                    o.median_rollback(),
                    median(&alone),
                    pct(b.advanced())
                );
            }
        }
    }
}

/// A latency step with errors at 1% on both sides and `min_requests` a side.
fn model<'a>(
    legacy: &'a LatencyModel,
    new: &'a LatencyModel,
    ratio: f64,
    share: f64,
    hold: u64,
    every: u64,
    max: u64,
) -> LatencyStepModel<'a> {
    LatencyStepModel {
        share,
        legacy,
        new,
        max_p99_ratio: ratio,
        legacy_rate: 0.01,
        new_rate: 0.01,
        hold_requests: hold,
        min_requests: MIN_REQUESTS,
        every,
        max_requests: max,
    }
}

fn steps_latency(runs: u64, s: &Settings, a: &Advance, seed: &mut u64) {
    let rate = 0.01;
    let hold_n = HOLDS[0];
    let tight = LatencyModel::log_normal(20.0, 0.2);
    let heavy = LatencyModel::log_normal(20.0, 1.0);
    // The yardstick and a look's spacing for a latency step.
    let sizes = |legacy: &LatencyModel, new: &LatencyModel, ratio: f64, share: f64| {
        let rho = density_ratio(legacy, new, ratio).max(1.0);
        let needed = requests_needed(share, rate, a)
            .unwrap()
            .max(latency_requests_needed(share, rho, a).unwrap());
        let hold = time_to(hold_n, share);
        let y = hold + time_to(needed.max(MIN_REQUESTS), share);
        let y0 = hold + time_to(MIN_REQUESTS, share);
        (rho, needed, hold, y, y0)
    };
    println!();
    println!(
        "latency (log-normal, median 20 ms; errors at 1% on both sides, both tests weighed), the short hold, {runs} runs per case"
    );
    println!(
        "latency, equal sides: the two boundaries (lengths in Y), and the rule before (lengths in Y0; the share not advanced within 10 and 100 Y0)"
    );
    println!(
        "{:>5} {:>5} {:>6} {:>7} {:>8} {:>8} {:>6} {:>6} {:>6} | {:>8} {:>8} {:>6} {:>6} {:>7} {:>7}",
        "sigma",
        "ratio",
        "share",
        "needed",
        "Y",
        "<=3Y",
        "p50",
        "p99",
        "rb",
        "Y0",
        "<=3Y0",
        "p50",
        "p99",
        ">10Y0",
        ">100Y0"
    );
    for (sigma, m) in [(0.2, &tight), (1.0, &heavy)] {
        for ratio in [1.0, 1.5] {
            for share in [0.01, 0.1, 0.5] {
                let (_, needed, hold, y, y0) = sizes(m, m, ratio, share);
                let step = model(m, m, ratio, share, hold, (y / 200).max(10), 100 * y);
                let o = Outcomes::of(runs, seed, |rng| simulate_latency_step(rng, &step, s, a));
                let before = model(m, m, ratio, share, hold, (y0 / 200).max(10), 100 * y0);
                let b = Outcomes::of(runs, seed, |rng| {
                    simulate_latency_step_before(rng, &before, s)
                });
                println!(
                    "{sigma:>5} {ratio:>5} {share:>6} {needed:>7} {y:>8} {:>8} {:>6} {:>6} {:>6} | {y0:>8} {:>8} {:>6} {:>6} {:>7} {:>7}",
                    pct(o.advanced_within(3 * y)),
                    o.length(0.5, y, 100),
                    o.length(0.99, y, 100),
                    pct(o.rolled_back()),
                    pct(b.advanced_within(3 * y0)),
                    b.length(0.5, y0, 100),
                    b.length(0.99, y0, 100),
                    pct(1.0 - b.advanced_within(10 * y0)),
                    pct(1.0 - b.advanced_within(100 * y0)),
                );
            }
        }
    }
    println!();
    let slow = 0.01 + 2.0 * a.latency_margin;
    println!(
        "latency, {:.0}% of new's requests slower than the ratio allows (1% + twice the latency margin): steps advanced, rolled back, undecided within 30 Y; the rule before: advanced within 30 Y or 100 Y0, whichever is less",
        slow * 100.0
    );
    println!(
        "{:<34} {:>5} {:>6} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "new", "ratio", "share", "rho", "Y", "advanced", "rb", "undec.", "before"
    );
    let cases = [
        ("sigma 0.2, legacy scaled", &tight, &tight),
        ("sigma 1.0, legacy scaled", &heavy, &heavy),
        ("sigma 0.2 against legacy's 1.0", &heavy, &tight),
    ];
    for (name, legacy, shape) in cases {
        for ratio in [1.0, 1.5] {
            let new = with_slow_share(legacy, shape, ratio, slow);
            for share in [0.01, 0.1, 0.5] {
                let (rho, _, hold, y, y0) = sizes(legacy, &new, ratio, share);
                let step = model(legacy, &new, ratio, share, hold, (y / 200).max(10), 30 * y);
                let o = Outcomes::of(runs, seed, |rng| simulate_latency_step(rng, &step, s, a));
                let before = model(
                    legacy,
                    &new,
                    ratio,
                    share,
                    hold,
                    (y0 / 200).max(10),
                    (100 * y0).min(30 * y),
                );
                let b = Outcomes::of(runs, seed, |rng| {
                    simulate_latency_step_before(rng, &before, s)
                });
                println!(
                    "{name:<34} {ratio:>5} {share:>6} {rho:>5.2} {y:>8} {:>8} {:>8} {:>8} {:>8}",
                    pct(o.advanced()),
                    pct(o.rolled_back()),
                    pct(o.undecided()),
                    pct(b.advanced())
                );
            }
        }
    }
    println!();
    println!(
        "latency, new twice as slow, ratio 1.5: steps advanced and rolled back; the median requests to the rollback, beside the harm test's alone (simulate_latency, the same looks); the rule before: advanced within 30 Y or 100 Y0, whichever is less"
    );
    println!(
        "{:>5} {:>6} {:>10} {:>8} {:>8} {:>8} {:>10} {:>10} {:>8}",
        "sigma", "share", "slow share", "Y", "advanced", "rb", "median rb", "harm test", "before"
    );
    for (sigma, legacy) in [(0.2, &tight), (1.0, &heavy)] {
        let new = legacy.scaled(2.0);
        for share in [0.01, 0.1, 0.5] {
            let (_, _, hold, y, y0) = sizes(legacy, &new, 1.5, share);
            // Looks as often as the rule before's: the harm test decides within a few Y0.
            let every = (y0 / 200).max(10);
            let step = model(legacy, &new, 1.5, share, hold, every, 30 * y);
            let before = model(
                legacy,
                &new,
                1.5,
                share,
                hold,
                (y0 / 200).max(10),
                (100 * y0).min(30 * y),
            );
            let o = Outcomes::of(runs, seed, |rng| simulate_latency_step(rng, &step, s, a));
            let mut alone: Vec<u64> = Vec::new();
            for _ in 0..runs {
                *seed += 1;
                let mut rng = fastrand::Rng::with_seed(*seed);
                if let Some(n) =
                    simulate_latency(&mut rng, share, legacy, &new, every, 30 * y, 1.5, s)
                {
                    alone.push(n);
                }
            }
            alone.sort_unstable();
            let b = Outcomes::of(runs, seed, |rng| {
                simulate_latency_step_before(rng, &before, s)
            });
            println!(
                "{sigma:>5} {share:>6} {:>10.4} {y:>8} {:>8} {:>8} {:>10} {:>10} {:>8}",
                slow_share(legacy, &new, 1.5),
                pct(o.advanced()),
                pct(o.rolled_back()),
                o.median_rollback(),
                median(&alone),
                pct(b.advanced())
            );
        }
    }
}
