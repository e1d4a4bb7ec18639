//! An anytime-valid test of "the new side's error rate is higher than legacy's (by more
//! than a margin)": a mixture sequential probability ratio test (mSPRT; Johari, Pekelis and
//! Walsh, "Always Valid Inference", the method of Optimizely's stats engine), on the
//! counts of both sides.
//!
//! A fixed-sample test (a z-test at 99%) looked at again and again, as a plan's guard or a
//! person watching the dashboard does, calls an identical new side `worse` at some look far
//! more often than 1% of the time. The mSPRT's statistic Λ is a likelihood ratio averaged
//! over a normal mixture of effect sizes; under the null it is (approximately, through the
//! normal approximation of the two rates) a nonnegative martingale, so by Ville's
//! inequality the chance that it *ever* reaches `1/alpha` is at most `alpha`, however often
//! it is looked at. `tests/sequential.rs` and `benches/sequential.rs` check that by
//! simulation.
//!
//! Pure functions on counts: no clock, no I/O.
//!
//! The comparison's verdict (`verdict.rs`) does not use it yet: the migration plans will
//! judge with it, and the verdict move to it with them.

/// The requests each side needs before the test weighs anything.
pub const MIN_PER_SIDE: u64 = 30;

/// The counts of both sides.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub legacy_requests: u64,
    pub legacy_errors: u64,
    pub new_requests: u64,
    pub new_errors: u64,
}

/// The test's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// The chance, over the whole life of a comparison, of ever calling `worse` a new side
    /// that is not (default 0.01).
    pub alpha: f64,
    /// The error-rate increase that is tolerated: the null is "new ≤ legacy + margin".
    pub margin: f64,
    /// The spreads of the mixture over standardized effect sizes (effect / standard
    /// deviation of one request's outcome), averaged with equal weights: small ones give
    /// power on small effects over many requests (0.02 to 0.05 suit doubling error rates of
    /// 0.1% to 5%), large ones on gross regressions within a few dozen requests. An average
    /// of such likelihood ratios is one too, so the level holds.
    pub taus: &'static [f64],
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            alpha: 0.01,
            margin: 0.0,
            taus: &[0.02, 0.05, 0.2, 1.0],
        }
    }
}

/// What the test says now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evidence {
    /// log Λ: the log of the mixture likelihood ratio (0 for no evidence either way).
    pub log_lr: f64,
    /// log(1/alpha): `worse` once `log_lr` reaches it (with new's rate above legacy's plus
    /// the margin).
    pub threshold: f64,
    /// new's error rate minus legacy's.
    pub delta: f64,
}

impl Evidence {
    pub fn worse(&self) -> bool {
        self.log_lr >= self.threshold
    }
}

/// The evidence that new's error rate exceeds legacy's by more than the margin.
///
/// With `x = delta - margin` the excess, `V` the variance of the observed difference and a
/// mixture N(0, T²) over the true difference (`T = tau` standard deviations of one
/// request's outcome at the pooled rate),
/// `log Λ_T = ½ log(V / (V + T²)) + T² x² / (2 V (V + T²))`;
/// Λ is the mean of Λ_T over the `taus`, reported as log Λ floored at 0. One-sided: no
/// evidence while the excess is not positive.
pub fn evidence(c: &Counts, s: &Settings) -> Evidence {
    let threshold = (1.0 / s.alpha).ln();
    let none = |delta| Evidence {
        log_lr: 0.0,
        threshold,
        delta,
    };
    // Below a few dozen requests a side, the normal approximation of its rate is too rough
    // (one error in the first two requests is a rate of 50%): no evidence yet.
    if c.legacy_requests < MIN_PER_SIDE || c.new_requests < MIN_PER_SIDE {
        return none(0.0);
    }
    let (n1, n2) = (c.legacy_requests as f64, c.new_requests as f64);
    let (r1, r2) = (c.legacy_errors as f64 / n1, c.new_errors as f64 / n2);
    let delta = r2 - r1;
    let excess = delta - s.margin;
    let pooled = (c.legacy_errors + c.new_errors) as f64 / (n1 + n2);
    let sigma2 = pooled * (1.0 - pooled);
    if excess <= 0.0 || sigma2 <= 0.0 {
        return none(delta);
    }
    // The variance of the observed difference: the larger of the pooled and the unpooled
    // estimates. The pooled one alone understates it when the smaller side (a new side at
    // a few percent of traffic) has drawn a few errors more than its share, which is when a
    // rare-error test would otherwise call `worse` too readily.
    let pooled_v = sigma2 * (1.0 / n1 + 1.0 / n2);
    let unpooled_v = r1 * (1.0 - r1) / n1 + r2 * (1.0 - r2) / n2;
    let var = pooled_v.max(unpooled_v);
    // Each mixture's spread on the scale of the difference: tau standard deviations of one
    // request's outcome; their likelihood ratios averaged (in log space, stably).
    let logs: Vec<f64> = s
        .taus
        .iter()
        .map(|tau| {
            let t2 = tau * tau * sigma2;
            0.5 * (var / (var + t2)).ln() + t2 * excess * excess / (2.0 * var * (var + t2))
        })
        .collect();
    let top = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = logs.iter().map(|l| (l - top).exp()).sum::<f64>() / logs.len() as f64;
    let log_lr = (top + mean.ln()).max(0.0);
    Evidence {
        log_lr,
        threshold,
        delta,
    }
}

/// Roughly how many more requests per side a decision needs if the rates stay as they are:
/// the smallest `k` such that the counts scaled by `(n + k) / n` reach the threshold
/// (`None` when the rates show no excess at all, so no amount decides `worse`).
pub fn requests_to_decide(c: &Counts, s: &Settings) -> Option<u64> {
    if evidence(c, s).worse() {
        return Some(0);
    }
    let scaled = |f: f64| Counts {
        legacy_requests: (c.legacy_requests as f64 * f) as u64,
        legacy_errors: (c.legacy_errors as f64 * f) as u64,
        new_requests: (c.new_requests as f64 * f) as u64,
        new_errors: (c.new_errors as f64 * f) as u64,
    };
    // Doubling, then bisection on the scale factor.
    let mut hi = 2.0;
    while !evidence(&scaled(hi), s).worse() {
        hi *= 2.0;
        if hi > 1e9 {
            return None;
        }
    }
    let mut lo = hi / 2.0;
    for _ in 0..40 {
        let mid = (lo + hi) / 2.0;
        if evidence(&scaled(mid), s).worse() {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let n = c.legacy_requests.min(c.new_requests).max(1) as f64;
    Some(((hi - 1.0) * n).ceil() as u64)
}

/// Seeded simulation of a comparison looked at again and again: the request stream split
/// between the sides at `share` to new, errors at `legacy_rate` and `new_rate`, the test
/// applied after every `every` requests up to `max_requests`. Returns the request count at
/// which `worse` was first called, if it was.
pub fn simulate(
    rng: &mut fastrand::Rng,
    share: f64,
    legacy_rate: f64,
    new_rate: f64,
    every: u64,
    max_requests: u64,
    s: &Settings,
) -> Option<u64> {
    let mut c = Counts::default();
    let mut seen = 0;
    while seen < max_requests {
        let to_new = binomial(rng, every, share);
        let to_legacy = every - to_new;
        c.new_requests += to_new;
        c.legacy_requests += to_legacy;
        c.new_errors += binomial(rng, to_new, new_rate);
        c.legacy_errors += binomial(rng, to_legacy, legacy_rate);
        seen += every;
        if evidence(&c, s).worse() {
            return Some(seen);
        }
    }
    None
}

/// A binomial draw (n, p) by inversion: expected O(n p) steps, exact.
pub fn binomial(rng: &mut fastrand::Rng, n: u64, p: f64) -> u64 {
    if n == 0 || p <= 0.0 {
        return 0;
    }
    if p >= 1.0 {
        return n;
    }
    if p > 0.5 {
        return n - binomial(rng, n, 1.0 - p);
    }
    // Inversion of the CDF, one term at a time.
    let q = 1.0 - p;
    let ratio = p / q;
    let mut prob = q.powf(n as f64);
    if prob <= 0.0 || !prob.is_finite() {
        // Too many trials for the direct form: the sum of two halves.
        let half = n / 2;
        return binomial(rng, half, p) + binomial(rng, n - half, p);
    }
    let u = rng.f64();
    let mut cdf = prob;
    let mut k = 0;
    while u > cdf && k < n {
        prob *= ratio * (n - k) as f64 / (k + 1) as f64;
        k += 1;
        cdf += prob;
    }
    k
}

/// The requests per side a fixed-sample one-sided two-proportion z-test at level `alpha`
/// needs to detect `legacy_rate` → `new_rate` with the given power, at `share` to new: the
/// total request count.
pub fn fixed_sample_requests(
    legacy_rate: f64,
    new_rate: f64,
    share: f64,
    alpha: f64,
    power: f64,
) -> u64 {
    use statrs::distribution::{ContinuousCDF, Normal};
    let z = Normal::standard();
    let (za, zb) = (z.inverse_cdf(1.0 - alpha), z.inverse_cdf(power));
    let d = new_rate - legacy_rate;
    // Var of (new - legacy) per total request: p1(1-p1)/(1-share) + p2(1-p2)/share.
    let var =
        legacy_rate * (1.0 - legacy_rate) / (1.0 - share) + new_rate * (1.0 - new_rate) / share;
    ((za + zb).powi(2) * var / (d * d)).ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_excess_no_evidence() {
        let c = Counts {
            legacy_requests: 1000,
            legacy_errors: 20,
            new_requests: 1000,
            new_errors: 10,
        };
        assert_eq!(evidence(&c, &Settings::default()).log_lr, 0.0);
    }

    #[test]
    fn a_clear_regression_is_worse() {
        let c = Counts {
            legacy_requests: 50_000,
            legacy_errors: 500,
            new_requests: 50_000,
            new_errors: 1000,
        };
        let e = evidence(&c, &Settings::default());
        assert!(e.worse(), "{e:?}");
        // Within the margin, it is not.
        let s = Settings {
            margin: 0.02,
            ..Settings::default()
        };
        assert!(!evidence(&c, &s).worse());
    }

    #[test]
    fn a_gross_regression_is_worse_within_a_few_dozen_requests() {
        let c = Counts {
            legacy_requests: 60,
            legacy_errors: 0,
            new_requests: 60,
            new_errors: 20,
        };
        let e = evidence(&c, &Settings::default());
        assert!(e.worse(), "{e:?}");
    }

    #[test]
    fn more_requests_decide() {
        let c = Counts {
            legacy_requests: 1000,
            legacy_errors: 10,
            new_requests: 1000,
            new_errors: 20,
        };
        let s = Settings::default();
        assert!(!evidence(&c, &s).worse());
        let k = requests_to_decide(&c, &s).unwrap();
        let f = (1000 + k) as f64 / 1000.0;
        let more = Counts {
            legacy_requests: (1000.0 * f) as u64,
            legacy_errors: (10.0 * f) as u64,
            new_requests: (1000.0 * f) as u64,
            new_errors: (20.0 * f) as u64,
        };
        assert!(evidence(&more, &s).worse());
        let equal = Counts {
            new_errors: 10,
            ..c
        };
        assert_eq!(requests_to_decide(&equal, &s), None);
    }

    #[test]
    fn binomial_draws_have_the_right_mean() {
        let mut rng = fastrand::Rng::with_seed(7);
        for (n, p) in [(10u64, 0.5), (10, 0.01), (1000, 0.001), (100_000, 0.3)] {
            let runs = 4000;
            let sum: u64 = (0..runs).map(|_| binomial(&mut rng, n, p)).sum();
            let mean = sum as f64 / runs as f64;
            let sd = (n as f64 * p * (1.0 - p) / runs as f64).sqrt();
            assert!(
                (mean - n as f64 * p).abs() < 5.0 * sd + 1e-9,
                "n={n} p={p}: mean {mean}"
            );
        }
    }
}
