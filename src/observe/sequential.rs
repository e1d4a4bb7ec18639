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
//! The same for latency, "new's p99 is more than `max_p99_ratio` times legacy's"
//! ([`latency_evidence`]), on both sides' latency histograms (the buckets of `window`): new's
//! share of requests slower than `max_p99_ratio` × legacy's p99, against 1%.
//!
//! Pure functions on counts and histograms: no clock, no I/O. The simulations' helpers
//! ([`simulate`], [`simulate_latency`], [`LatencyModel`]) are seeded.
//!
//! The comparison's verdict (`verdict.rs`) judges with both tests.

use super::window::{BUCKETS, bucket_of, bucket_range};

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
    Evidence {
        log_lr: mixture_log_lr(excess, var, sigma2, s.taus),
        threshold,
        delta,
    }
}

/// log Λ, floored at 0, for an observed `excess` (positive) of variance `var`, the mixture's
/// spreads being `taus` standard deviations of one request's outcome (variance `sigma2`):
/// the mean over the `taus` of
/// `Λ_T = sqrt(V / (V + T²)) exp(T² x² / (2 V (V + T²)))`, `T² = tau² sigma2`.
fn mixture_log_lr(excess: f64, var: f64, sigma2: f64, taus: &[f64]) -> f64 {
    // Each mixture's spread on the scale of the difference: tau standard deviations of one
    // request's outcome; their likelihood ratios averaged (in log space, stably).
    let logs: Vec<f64> = taus
        .iter()
        .map(|tau| {
            let t2 = tau * tau * sigma2;
            0.5 * (var / (var + t2)).ln() + t2 * excess * excess / (2.0 * var * (var + t2))
        })
        .collect();
    let top = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = logs.iter().map(|l| (l - top).exp()).sum::<f64>() / logs.len() as f64;
    (top + mean.ln()).max(0.0)
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
    // (Repeated multiplication for a few trials: the same value, faster.)
    let mut prob = if n <= 64 {
        q.powi(n as i32)
    } else {
        q.powf(n as f64)
    };
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

// ---------------------------------------------------------------------------------------
// Latency: new's p99 against `max_p99_ratio` times legacy's.
// ---------------------------------------------------------------------------------------

/// The share of a side's requests above its own p99.
const TAIL: f64 = 0.01;

/// The legacy requests the latency test needs before it weighs anything: legacy's p99 rests
/// on the 1% of its requests above it, five at this count (below it, the normal
/// approximation of that share, on which the test's variance rests, is too rough; with 100
/// or 200, a new side exactly at the ratio but with a much tighter distribution than
/// legacy's was called `worse` at the first looks in 1 to 3% of simulated runs).
pub const LATENCY_MIN_LEGACY: u64 = 500;

/// The new requests the latency test needs before it weighs anything: one slow request
/// expected on the null's boundary.
pub const LATENCY_MIN_NEW: u64 = 100;

/// The spread of the band of legacy's quantiles over which the slope of new's slow share is
/// measured: this many standard deviations of legacy's tail share either side of 1%.
const BAND_SDS: f64 = 2.0;

/// What the latency test says now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyEvidence {
    /// log Λ: the log of the mixture likelihood ratio (0 for no evidence either way).
    pub log_lr: f64,
    /// log(1/alpha): `worse` once `log_lr` reaches it.
    pub threshold: f64,
    /// Legacy's p99 (ms), interpolated within its bucket; `None` without legacy requests.
    pub legacy_p99_ms: Option<f64>,
    /// `L`, the latency (ms) above which a new request is slow: `max_p99_ratio` × legacy's
    /// p99; `None` without legacy requests.
    pub slow_ms: Option<f64>,
    /// The share of new's requests surely slower than `slow_ms`: those in the buckets from
    /// the bucket edge at or above it (at most 1%, but for chance, if new's p99 is within
    /// the ratio); 0 without new requests.
    pub new_slow_share: f64,
}

impl LatencyEvidence {
    pub fn worse(&self) -> bool {
        self.log_lr >= self.threshold
    }
}

/// The latency (µs) with `above` of the histogram's requests above it, interpolated within
/// its bucket as the window's percentiles are (the p99 for `above` = 1% of the requests);
/// `None` for an empty histogram.
fn upper_quantile(hist: &[u64], above: f64) -> Option<f64> {
    let mut acc = 0.0;
    let mut lowest = None;
    for (i, &n) in hist.iter().enumerate().rev() {
        if n == 0 {
            continue;
        }
        let (lo, hi) = bucket_range(i);
        let n = n as f64;
        if acc + n > above {
            let within = ((above - acc) / n).clamp(0.0, 1.0);
            return Some(hi - (hi - lo) * within);
        }
        acc += n;
        lowest = Some(lo);
    }
    lowest
}

/// How many of the histogram's requests are slower than `us`, counting the part of `us`'s
/// bucket above it as if the bucket's requests were spread evenly within it.
fn count_above(hist: &[u64], us: f64) -> f64 {
    let b = bucket_of(us.max(0.0) as u64);
    if b >= hist.len() {
        return 0.0;
    }
    let (lo, hi) = bucket_range(b);
    let part = ((hi - us) / (hi - lo)).clamp(0.0, 1.0);
    hist[b + 1..].iter().sum::<u64>() as f64 + hist[b] as f64 * part
}

/// The bucket edge at or above `us` (µs).
fn edge_at_or_above(us: f64) -> f64 {
    let (lo, hi) = bucket_range(bucket_of(us.max(0.0) as u64));
    if us <= lo { lo } else { hi.max(us) }
}

/// The evidence that new's p99 latency exceeds `max_p99_ratio` times legacy's, from both
/// sides' latency histograms (`BUCKETS` counts each, the buckets of `window`): an
/// anytime-valid test as [`evidence`] is, at level `s.alpha` (`s.margin` does not apply).
///
/// With `L` = `max_p99_ratio` × legacy's p99 (interpolated within its bucket), a new
/// request is slow when it takes longer than `L`; new's p99 is within the ratio exactly
/// when at most 1% of new's requests are slow. The test weighs new's slow share against
/// 1% (the share of legacy's requests above its own p99) with the mixture likelihood ratio
/// of [`evidence`]:
///
/// - new's slow requests are those in the buckets from the bucket edge at or above `L`: a
///   histogram does not tell where within its bucket `L` falls among new's requests, and
///   spreading them evenly over the bucket overstates the share above `L` where the
///   density falls across the bucket, as it does in a tail (by up to 13% of the 1% for a
///   tight distribution, enough for a new side exactly at the ratio to be called `worse`
///   in most runs of a million requests). The test's resolution is thus one bucket:
///   12.5% of `L`;
/// - the variance of new's share less 1% has new's part, the larger of 1% × 99% (the
///   null's boundary) and its observed share's, on new's requests; and legacy's part, from
///   the uncertainty of legacy's estimated p99: by the Bahadur representation of a sample
///   quantile, as uncertain as the share of legacy's requests above the true one (a
///   proportion at 1% on legacy's requests), which moves new's slow share by `ρ` times as
///   much, `ρ` the ratio of new's density at `L` to legacy's at its p99 (scaled by
///   `max_p99_ratio`). `ρ` is 1 when new is legacy scaled, but not otherwise: a new side at
///   exactly the ratio with a tighter distribution than legacy's has a larger `ρ`, and
///   without it was called `worse` in nearly every simulated run. `ρ` is measured from
///   both histograms: new's share between `max_p99_ratio` times legacy's quantiles at
///   1% ± 2 standard deviations of legacy's tail share, over the width of that band; taken
///   as at least 1;
/// - the mixture's spreads are `s.taus` standard deviations of one request's outcome on
///   the null's boundary (1% slow).
///
/// No evidence below [`LATENCY_MIN_LEGACY`] legacy or [`LATENCY_MIN_NEW`] new requests.
/// Within legacy's p99 bucket its latencies are taken as evenly spread, which errs on the
/// safe side (a higher p99) when the density falls across that bucket, as it does in a
/// tail.
pub fn latency_evidence(
    legacy: &[u64],
    new: &[u64],
    max_p99_ratio: f64,
    s: &Settings,
) -> LatencyEvidence {
    debug_assert!(legacy.len() <= BUCKETS && new.len() <= BUCKETS);
    let n1: u64 = legacy.iter().sum();
    let n2: u64 = new.iter().sum();
    let p99 = upper_quantile(legacy, TAIL * n1 as f64);
    let slow = p99.map(|q| q * max_p99_ratio);
    let slow_count = match slow {
        Some(l) if n2 > 0 => count_above(new, edge_at_or_above(l)),
        _ => 0.0,
    };
    let mut e = LatencyEvidence {
        log_lr: 0.0,
        threshold: (1.0 / s.alpha).ln(),
        legacy_p99_ms: p99.map(|us| us / 1000.0),
        slow_ms: slow.map(|us| us / 1000.0),
        new_slow_share: if n2 > 0 { slow_count / n2 as f64 } else { 0.0 },
    };
    if n1 < LATENCY_MIN_LEGACY || n2 < LATENCY_MIN_NEW {
        return e;
    }
    let (n1, n2) = (n1 as f64, n2 as f64);
    let sigma2 = TAIL * (1.0 - TAIL);
    let excess = e.new_slow_share - TAIL;
    if excess <= 0.0 {
        return e;
    }
    // ρ: how much new's slow share moves per unit of legacy's tail share, around legacy's
    // p99.
    let d = BAND_SDS * (sigma2 / n1).sqrt();
    let (t_lo, t_hi) = ((TAIL + d).min(1.0), (TAIL - d).max(0.0));
    let mut rho: f64 = 1.0;
    if let (Some(q_lo), Some(q_hi)) = (
        upper_quantile(legacy, t_lo * n1),
        upper_quantile(legacy, t_hi * n1),
    ) {
        let within =
            count_above(new, q_lo * max_p99_ratio) - count_above(new, q_hi * max_p99_ratio);
        rho = rho.max(within / n2 / (t_lo - t_hi));
    }
    let r2 = e.new_slow_share;
    let var = rho * rho * sigma2 / n1 + sigma2.max(r2 * (1.0 - r2)) / n2;
    e.log_lr = mixture_log_lr(excess, var, sigma2, s.taus);
    e
}

/// Roughly how many more requests per side the latency test needs to call `worse` if both
/// histograms keep their shapes: the smallest `k` such that both scaled by `(n + k) / n`
/// reach the threshold (`None` when no amount does).
pub fn latency_requests_to_decide(
    legacy: &[u64],
    new: &[u64],
    max_p99_ratio: f64,
    s: &Settings,
) -> Option<u64> {
    let worse = |f: f64| {
        let scale = |h: &[u64]| -> Vec<u64> { h.iter().map(|&n| (n as f64 * f) as u64).collect() };
        latency_evidence(&scale(legacy), &scale(new), max_p99_ratio, s).worse()
    };
    if latency_evidence(legacy, new, max_p99_ratio, s).worse() {
        return Some(0);
    }
    let (n1, n2) = (legacy.iter().sum::<u64>(), new.iter().sum::<u64>());
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let mut hi = 2.0;
    while !worse(hi) {
        hi *= 2.0;
        if hi > 1e9 {
            return None;
        }
    }
    let mut lo = hi / 2.0;
    for _ in 0..40 {
        let mid = (lo + hi) / 2.0;
        if worse(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(((hi - 1.0) * n1.min(n2) as f64).ceil() as u64)
}

/// A latency distribution for simulations: a mixture of log-normals, held as the
/// probabilities of the window's latency buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyModel {
    /// (weight, median µs, sigma of the log) of each log-normal.
    parts: Vec<(f64, f64, f64)>,
    /// The probability of each bucket.
    probs: Vec<f64>,
    /// The buckets of nonzero probability, most probable first, each with its probability
    /// given that the request is in none of the buckets before it (1 for the last).
    chain: Vec<(usize, f64)>,
}

impl LatencyModel {
    /// Log-normal latencies: the given median (ms) and standard deviation of the log.
    pub fn log_normal(median_ms: f64, sigma: f64) -> LatencyModel {
        LatencyModel::from_parts(vec![(1.0, median_ms * 1000.0, sigma)])
    }

    /// Every latency multiplied by `factor`.
    pub fn scaled(&self, factor: f64) -> LatencyModel {
        let parts = self
            .parts
            .iter()
            .map(|&(w, m, sg)| (w, m * factor, sg))
            .collect();
        LatencyModel::from_parts(parts)
    }

    /// A `share` of the requests `factor` times slower, the rest as before.
    pub fn with_slow(&self, share: f64, factor: f64) -> LatencyModel {
        let mut parts: Vec<_> = self
            .parts
            .iter()
            .map(|&(w, m, sg)| (w * (1.0 - share), m, sg))
            .collect();
        parts.extend(
            self.parts
                .iter()
                .map(|&(w, m, sg)| (w * share, m * factor, sg)),
        );
        LatencyModel::from_parts(parts)
    }

    fn from_parts(parts: Vec<(f64, f64, f64)>) -> LatencyModel {
        let mut m = LatencyModel {
            parts,
            probs: Vec::new(),
            chain: Vec::new(),
        };
        m.probs = (0..BUCKETS)
            .map(|i| {
                let (lo, hi) = bucket_range(i);
                let hi = if i == BUCKETS - 1 { f64::INFINITY } else { hi };
                // Whichever of the CDF and the survival function loses less to rounding.
                if m.cdf(lo) < 0.5 {
                    (m.cdf(hi) - m.cdf(lo)).max(0.0)
                } else {
                    (m.sf(lo) - m.sf(hi)).max(0.0)
                }
            })
            .collect();
        let mut order: Vec<usize> = (0..BUCKETS).filter(|&i| m.probs[i] > 0.0).collect();
        order.sort_by(|&a, &b| m.probs[b].total_cmp(&m.probs[a]));
        let mut rest: f64 = order.iter().map(|&i| m.probs[i]).sum();
        let last = order.len().saturating_sub(1);
        m.chain = order
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                let p = if k == last {
                    1.0
                } else {
                    (m.probs[i] / rest).min(1.0)
                };
                rest -= m.probs[i];
                (i, p)
            })
            .collect();
        m
    }

    /// P(latency ≤ `us`).
    pub fn cdf(&self, us: f64) -> f64 {
        use statrs::distribution::{ContinuousCDF, Normal};
        if us <= 0.0 {
            return 0.0;
        }
        let z = Normal::standard();
        self.parts
            .iter()
            .map(|&(w, m, sg)| w * z.cdf((us / m).ln() / sg))
            .sum()
    }

    /// P(latency > `us`).
    pub fn sf(&self, us: f64) -> f64 {
        use statrs::distribution::{ContinuousCDF, Normal};
        if us <= 0.0 {
            return 1.0;
        }
        let z = Normal::standard();
        self.parts
            .iter()
            .map(|&(w, m, sg)| w * z.sf((us / m).ln() / sg))
            .sum()
    }

    /// The probability density at `us` (per µs).
    fn density(&self, us: f64) -> f64 {
        use statrs::distribution::{Continuous, Normal};
        let z = Normal::standard();
        self.parts
            .iter()
            .map(|&(w, m, sg)| w * z.pdf((us / m).ln() / sg) / (us * sg))
            .sum()
    }

    /// The `p` quantile (ms) of the latencies themselves (not of their buckets).
    pub fn quantile_ms(&self, p: f64) -> f64 {
        let (mut lo, mut hi) = (1e-3f64, 1e12f64);
        for _ in 0..200 {
            let mid = (lo * hi).sqrt();
            if self.cdf(mid) < p {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        (lo * hi).sqrt() / 1000.0
    }

    /// The probability of each of the window's latency buckets.
    pub fn probabilities(&self) -> &[f64] {
        &self.probs
    }

    /// Adds `n` requests' latencies to `hist` (`BUCKETS` counts): a multinomial draw, as a
    /// chain of binomials over the buckets.
    pub fn draw(&self, rng: &mut fastrand::Rng, n: u64, hist: &mut [u64]) {
        let mut rest = n;
        for &(i, p) in &self.chain {
            if rest == 0 {
                break;
            }
            let k = binomial(rng, rest, p);
            hist[i] += k;
            rest -= k;
        }
    }
}

/// The share of `new`'s requests slower than `max_p99_ratio` times `legacy`'s p99, exactly
/// (from the distributions, not their buckets): the slow share the test estimates, 1% on
/// the null's boundary.
pub fn slow_share(legacy: &LatencyModel, new: &LatencyModel, max_p99_ratio: f64) -> f64 {
    new.sf(legacy.quantile_ms(1.0 - TAIL) * 1000.0 * max_p99_ratio)
}

/// `ρ` of [`latency_evidence`], exactly: how much new's slow share moves per unit of
/// legacy's tail share, at legacy's p99 (the ratio of new's density at `max_p99_ratio` ×
/// legacy's p99 to legacy's at its p99, times `max_p99_ratio`); 1 when new is legacy scaled
/// by `max_p99_ratio`.
pub fn density_ratio(legacy: &LatencyModel, new: &LatencyModel, max_p99_ratio: f64) -> f64 {
    let q = legacy.quantile_ms(1.0 - TAIL) * 1000.0;
    max_p99_ratio * new.density(q * max_p99_ratio) / legacy.density(q)
}

/// The total requests a fixed-sample one-sided z-test of new's slow share against 1% needs
/// (level `alpha`, the given power, `share` to new), the slow share that of [`slow_share`]:
/// [`fixed_sample_requests`] with legacy's part of the variance multiplied by `ρ²`, `ρ` the
/// ratio of the densities of [`density_ratio`] (at least 1), when `with_rho`.
/// Without it, the test does not keep its level for a new side of another shape than
/// legacy's; with it, it is the fixed-sample counterpart of the sequential test (which
/// further loses up to a bucket to its slow threshold's rounding).
pub fn latency_fixed_sample_requests(
    legacy: &LatencyModel,
    new: &LatencyModel,
    max_p99_ratio: f64,
    share: f64,
    alpha: f64,
    power: f64,
    with_rho: bool,
) -> u64 {
    use statrs::distribution::{ContinuousCDF, Normal};
    let slow = slow_share(legacy, new, max_p99_ratio);
    if !with_rho {
        return fixed_sample_requests(TAIL, slow, share, alpha, power);
    }
    let rho = density_ratio(legacy, new, max_p99_ratio).max(1.0);
    let z = Normal::standard();
    let (za, zb) = (z.inverse_cdf(1.0 - alpha), z.inverse_cdf(power));
    let d = slow - TAIL;
    let var = rho * rho * TAIL * (1.0 - TAIL) / (1.0 - share)
        + slow.max(TAIL) * (1.0 - slow.max(TAIL)) / share;
    ((za + zb).powi(2) * var / (d * d)).ceil() as u64
}

/// Seeded simulation of a latency comparison looked at again and again: the request stream
/// split between the sides at `share` to new, each batch of `every` requests drawn into the
/// running histograms from `legacy`'s and `new`'s distributions, the test applied after
/// every batch up to `max_requests`. Returns the request count at which `worse` was first
/// called, if it was.
#[allow(clippy::too_many_arguments)]
pub fn simulate_latency(
    rng: &mut fastrand::Rng,
    share: f64,
    legacy: &LatencyModel,
    new: &LatencyModel,
    every: u64,
    max_requests: u64,
    max_p99_ratio: f64,
    s: &Settings,
) -> Option<u64> {
    let mut h1 = vec![0u64; BUCKETS];
    let mut h2 = vec![0u64; BUCKETS];
    let mut seen = 0;
    while seen < max_requests {
        let to_new = binomial(rng, every, share);
        new.draw(rng, to_new, &mut h2);
        legacy.draw(rng, every - to_new, &mut h1);
        seen += every;
        if latency_evidence(&h1, &h2, max_p99_ratio, s).worse() {
            return Some(seen);
        }
    }
    None
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

    /// A histogram of the given latencies (µs).
    fn hist_of(latencies: impl IntoIterator<Item = u64>) -> Vec<u64> {
        let mut h = vec![0u64; BUCKETS];
        for us in latencies {
            h[bucket_of(us)] += 1;
        }
        h
    }

    /// The expected histogram of `n` requests from a model (rounded counts).
    fn expected(m: &LatencyModel, n: f64) -> Vec<u64> {
        m.probabilities()
            .iter()
            .map(|p| (p * n).round() as u64)
            .collect()
    }

    #[test]
    fn identical_histograms_give_no_latency_evidence() {
        let s = Settings::default();
        // 100,000 requests from 1 ms to 100 ms, evenly.
        let h = hist_of((1..=100_000u64).map(|i| i * 1000 / 1000 + i));
        for ratio in [1.0, 1.5] {
            let e = latency_evidence(&h, &h, ratio, &s);
            assert_eq!(e.log_lr, 0.0, "{e:?}");
            assert!(!e.worse());
            assert!(e.new_slow_share <= TAIL, "{e:?}");
            assert_eq!(latency_requests_to_decide(&h, &h, ratio, &s), None);
        }
        // From a model, at a million requests a side: still none.
        let m = expected(&LatencyModel::log_normal(20.0, 1.0), 1e6);
        assert_eq!(latency_evidence(&m, &m, 1.0, &s).log_lr, 0.0);
    }

    #[test]
    fn a_clearly_slower_new_side_is_worse() {
        let s = Settings::default();
        let legacy = hist_of((1..=2000u64).map(|i| 1000 + i * 10)); // 1 ms to 21 ms
        let new = hist_of((1..=2000u64).map(|i| 3 * (1000 + i * 10))); // three times slower
        let e = latency_evidence(&legacy, &new, 1.5, &s);
        assert!(e.worse(), "{e:?}");
        let p99 = e.legacy_p99_ms.unwrap();
        assert!((p99 - 20.8).abs() / 20.8 < 0.125, "{e:?}");
        assert!((e.slow_ms.unwrap() - 1.5 * p99).abs() < 1e-9);
        assert!(e.new_slow_share > 0.4, "{e:?}");
        assert_eq!(latency_requests_to_decide(&legacy, &new, 1.5, &s), Some(0));
        // Twice as slow, on a tenth of the requests: not yet, but more requests decide.
        let legacy = hist_of((1..=1000u64).map(|i| 1000 + i * 20));
        let new = hist_of((1..=200u64).map(|i| 2 * (1000 + i * 100)));
        let e = latency_evidence(&legacy, &new, 1.5, &s);
        let k = latency_requests_to_decide(&legacy, &new, 1.5, &s).unwrap();
        if !e.worse() {
            let f = (200 + k) as f64 / 200.0;
            let scale =
                |h: &[u64]| -> Vec<u64> { h.iter().map(|&n| (n as f64 * f) as u64).collect() };
            assert!(latency_evidence(&scale(&legacy), &scale(&new), 1.5, &s).worse());
        }
        // Below either side's minimum there is no evidence, however slow new is.
        let few = hist_of((1..LATENCY_MIN_NEW).map(|i| 1_000_000 + i));
        let e = latency_evidence(&legacy, &few, 1.5, &s);
        assert_eq!(e.log_lr, 0.0);
        assert_eq!(e.new_slow_share, 1.0);
        let few_legacy = hist_of((1..LATENCY_MIN_LEGACY).map(|i| 1000 + i));
        assert_eq!(latency_evidence(&few_legacy, &new, 1.5, &s).log_lr, 0.0);
    }

    #[test]
    fn the_p99_and_the_slow_count_are_interpolated_within_their_buckets() {
        // 990 requests in [9216, 10240) µs and 10 in [18432, 20480): the p99 is the top of
        // the lower bucket (990 at or below it), as the window reports it.
        let (lo, hi) = bucket_range(bucket_of(10_000));
        assert_eq!((lo, hi), (9216.0, 10240.0));
        let mut legacy = vec![0u64; BUCKETS];
        legacy[bucket_of(10_000)] = 990;
        legacy[bucket_of(20_000)] = 10;
        assert_eq!(upper_quantile(&legacy, 10.0), Some(10_240.0));
        // 5 above: half-way into the top bucket, from its top.
        assert_eq!(upper_quantile(&legacy, 5.0), Some(19_456.0));
        // 505 above: half-way into the lower bucket.
        assert_eq!(upper_quantile(&legacy, 505.0), Some(9_728.0));

        // The slow count: the buckets above, and the part of its own bucket above it.
        let mut new = vec![0u64; BUCKETS];
        new[bucket_of(10_000)] = 100;
        new[bucket_of(12_000)] = 7; // [11264, 12288)
        new[bucket_of(40_000)] = 3;
        assert_eq!(count_above(&new, 9_216.0), 110.0);
        assert_eq!(count_above(&new, 9_728.0), 60.0);
        assert_eq!(count_above(&new, 9_984.0), 35.0);
        assert_eq!(count_above(&new, 10_240.0), 10.0);
        assert_eq!(count_above(&new, 11_776.0), 3.5 + 3.0);
        assert_eq!(count_above(&new, 1e12), 0.0);
        assert_eq!(edge_at_or_above(9_216.0), 9_216.0);
        assert_eq!(edge_at_or_above(9_217.0), 10_240.0);

        // The test counts new's requests from the edge at or above L: with legacy's p99 at
        // 10,240 µs and a ratio of 0.95, L = 9,728 µs, mid-bucket; the 100 requests of that
        // bucket might all be faster than L, so only the 10 above count.
        let mut legacy = vec![0u64; BUCKETS];
        legacy[bucket_of(10_000)] = 99_000;
        legacy[bucket_of(20_000)] = 1_000;
        let e = latency_evidence(&legacy, &new, 0.95, &Settings::default());
        assert!((e.slow_ms.unwrap() - 9.728).abs() < 1e-9, "{e:?}");
        assert!((e.new_slow_share - 10.0 / 110.0).abs() < 1e-12, "{e:?}");
    }

    #[test]
    fn a_new_side_tighter_than_legacy_weighs_less_for_the_same_slow_share() {
        // The same slow share above legacy's p99 × 1.5, from new = legacy scaled and from a
        // tight new side: legacy's p99 is uncertain, which moves the tight side's slow share
        // more, so the same share is weaker evidence.
        let s = Settings::default();
        let n = 200_000.0;
        let legacy = LatencyModel::log_normal(20.0, 1.0);
        let h = expected(&legacy, n);
        let a = latency_evidence(&h, &expected(&legacy.scaled(1.8), n), 1.5, &s);
        assert!(a.new_slow_share > 0.011 && a.new_slow_share < 0.02, "{a:?}");
        // A tight log-normal (sigma 0.1) with the same share counted slow.
        let tight = |median: f64| {
            let m = LatencyModel::log_normal(median, 0.1);
            latency_evidence(&h, &expected(&m, n), 1.5, &s)
        };
        let (mut lo, mut hi) = (1.0, 1000.0);
        for _ in 0..60 {
            let mid = (lo + hi) / 2.0;
            if tight(mid).new_slow_share < a.new_slow_share {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let b = tight(hi);
        assert!(
            (b.new_slow_share - a.new_slow_share).abs() < 0.001,
            "{a:?} {b:?}"
        );
        assert!(a.log_lr > 0.0 && b.log_lr < a.log_lr / 2.0, "{a:?} {b:?}");
    }

    #[test]
    fn latency_models_draw_their_bucket_probabilities() {
        let m = LatencyModel::log_normal(20.0, 0.5).with_slow(0.05, 10.0);
        let p = m.probabilities();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(
            (m.quantile_ms(0.5) - 20.6).abs() < 1.0,
            "{}",
            m.quantile_ms(0.5)
        );
        let mut rng = fastrand::Rng::with_seed(3);
        let mut h = vec![0u64; BUCKETS];
        let n = 200_000u64;
        for _ in 0..n / 10 {
            m.draw(&mut rng, 10, &mut h);
        }
        assert_eq!(h.iter().sum::<u64>(), n);
        for (i, (&k, &p)) in h.iter().zip(p).enumerate() {
            let mean = n as f64 * p;
            let sd = (mean * (1.0 - p)).sqrt();
            assert!(
                (k as f64 - mean).abs() <= 5.0 * sd + 1.0,
                "bucket {i}: {k} for {mean}"
            );
        }
    }
}
