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
//! A plan's step needs the other side of the same question too: whether the new side has
//! shown itself no worse than legacy beyond a margin, so that the step may advance. The
//! advance boundary ([`Advance`], [`advance_evidence`], [`latency_advance_evidence`]) is a
//! one-sided Wald test on the statistic each harm test weighs, of "new as good as legacy"
//! against "new worse by twice the margin", shown at the level `beta`; a step advances
//! once it is shown (with its hold served), and rolls back once harm is. [`requests_needed`]
//! and [`latency_requests_needed`] say how many requests a step needs for a new side as
//! good as legacy to show it in most runs.
//!
//! Pure functions on counts and histograms: no clock, no I/O. The simulations' helpers
//! (`simulate`, `simulate_latency`, `LatencyModel`, `simulate_step`,
//! `simulate_latency_step` and what they draw with) are seeded, and built only with the
//! `simulate` feature, which the crate's tests and benches turn on: the gateway never runs
//! them, and `statrs` is theirs alone.
//!
//! The comparison's verdict (`verdict.rs`) judges with both tests, and both boundaries.

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
#[cfg(feature = "simulate")]
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
#[cfg(feature = "simulate")]
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
#[cfg(feature = "simulate")]
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
    let rho = slope_ratio(legacy, new, n1, n2, max_p99_ratio);
    let r2 = e.new_slow_share;
    let var = rho * rho * sigma2 / n1 + sigma2.max(r2 * (1.0 - r2)) / n2;
    e.log_lr = mixture_log_lr(excess, var, sigma2, s.taus);
    e
}

/// `ρ` of [`latency_evidence`]: how much new's slow share moves per unit of legacy's tail
/// share, around legacy's p99 (new's share between `max_p99_ratio` times legacy's quantiles
/// at 1% ± 2 standard deviations of legacy's tail share, over the width of that band), at
/// least 1. `n1` and `n2` are the histograms' totals.
fn slope_ratio(legacy: &[u64], new: &[u64], n1: f64, n2: f64, max_p99_ratio: f64) -> f64 {
    slope_over(legacy, new, n1, n2, max_p99_ratio, BAND_SDS, BAND_SDS)
}

/// As [`slope_ratio`], over the band of legacy's quantiles from `up` standard deviations of
/// legacy's tail share above 1% (lower latencies) to `down` below it (higher latencies).
fn slope_over(
    legacy: &[u64],
    new: &[u64],
    n1: f64,
    n2: f64,
    max_p99_ratio: f64,
    up: f64,
    down: f64,
) -> f64 {
    let sigma2 = TAIL * (1.0 - TAIL);
    let d = (sigma2 / n1).sqrt();
    let (t_lo, t_hi) = ((TAIL + up * d).min(1.0), (TAIL - down * d).max(0.0));
    let mut rho: f64 = 1.0;
    if let (Some(q_lo), Some(q_hi)) = (
        upper_quantile(legacy, t_lo * n1),
        upper_quantile(legacy, t_hi * n1),
    ) {
        let within =
            count_above(new, q_lo * max_p99_ratio) - count_above(new, q_hi * max_p99_ratio);
        rho = rho.max(within / n2 / (t_lo - t_hi));
    }
    rho
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
#[cfg(feature = "simulate")]
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

#[cfg(feature = "simulate")]
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
#[cfg(feature = "simulate")]
pub fn slow_share(legacy: &LatencyModel, new: &LatencyModel, max_p99_ratio: f64) -> f64 {
    new.sf(legacy.quantile_ms(1.0 - TAIL) * 1000.0 * max_p99_ratio)
}

/// `shape` scaled so that `max_p99_ratio` × `legacy`'s p99 leaves `slow` of its requests
/// above it ([`slow_share`]): a new side with that slow share, of `shape`'s spread.
#[cfg(feature = "simulate")]
pub fn with_slow_share(
    legacy: &LatencyModel,
    shape: &LatencyModel,
    max_p99_ratio: f64,
    slow: f64,
) -> LatencyModel {
    let (mut lo, mut hi) = (1e-3f64, 1e3f64);
    for _ in 0..100 {
        let mid = (lo * hi).sqrt();
        if slow_share(legacy, &shape.scaled(mid), max_p99_ratio) < slow {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    shape.scaled((lo * hi).sqrt())
}

/// `ρ` of [`latency_evidence`], exactly: how much new's slow share moves per unit of
/// legacy's tail share, at legacy's p99 (the ratio of new's density at `max_p99_ratio` ×
/// legacy's p99 to legacy's at its p99, times `max_p99_ratio`); 1 when new is legacy scaled
/// by `max_p99_ratio`.
#[cfg(feature = "simulate")]
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
#[cfg(feature = "simulate")]
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
#[cfg(feature = "simulate")]
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

// ---------------------------------------------------------------------------------------
// Advancing: the second boundary.
// ---------------------------------------------------------------------------------------

/// The settings of the advance boundary: when a step has shown that the new side is no
/// worse than legacy beyond a margin.
///
/// The boundary is a one-sided Wald sequential probability ratio test on the statistic the
/// harm test weighs (new's error rate less legacy's; new's slow share less 1%), of "the new
/// side is as good as legacy" (a difference of 0) against "it is worse by twice the margin"
/// (a difference of `d1` = 2 × margin): with `Δ` the observed difference and `V` its
/// variance, the log likelihood ratio is `d1 (d1 / 2 - Δ) / V`, and advancing is shown once
/// it reaches log(1 / `beta`). Under a new side worse by exactly twice the margin its
/// exponential is (approximately) a martingale of mean 1, so by Ville's inequality the
/// chance that it *ever* reaches 1 / `beta` is at most `beta`: approximately, through the
/// normal approximation of the rates, which for error counts of a few dozen errs by up to
/// a point at half the traffic (`benches/sequential.rs`). Hence a default of 4% for a
/// bound of 5%.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Advance {
    /// The chance of showing a new side worse than legacy by twice the margin fit to
    /// advance, however often it is looked at, by Ville's inequality (default 0.04; by
    /// simulation, at most 5% with the normal approximation's error).
    pub beta: f64,
    /// The error-rate margin's floor, an absolute difference of rates (default 0.0005: 0.05
    /// point). It is the margin where legacy fails rarely or never.
    pub margin_abs: f64,
    /// The error-rate margin relative to legacy's observed rate: `(margin_ratio - 1)` ×
    /// legacy's rate, when that is more than `margin_abs` (default 1.5: half legacy's rate,
    /// so that twice the margin is a doubled error rate).
    pub margin_ratio: f64,
    /// The latency margin, on new's share of requests slower than `max_p99_ratio` ×
    /// legacy's p99 (default 0.005: half a point above the 1% a new side within the ratio
    /// has; twice the margin is 2% of new's requests slow, new's p98 above the bound).
    pub latency_margin: f64,
}

impl Default for Advance {
    fn default() -> Advance {
        Advance {
            beta: 0.04,
            margin_abs: 0.0005,
            margin_ratio: 1.5,
            latency_margin: 0.005,
        }
    }
}

/// The information a step needs, as a multiple of the information at which a new side as
/// good as legacy reaches the advance threshold on average: [`requests_needed`] is where
/// the expected log likelihood ratio is this many times log(1 / beta). The log likelihood
/// ratio of a new side as good as legacy moves as a Brownian motion with drift `d1² / 2`
/// and variance `d1²` per unit of information (`1 / V`), so its first passage to
/// `a` = log(1 / beta) is inverse Gaussian, of shape `a / 2` in units of its mean: for
/// beta = 4%, 79% of passages come before the need, and 99.2% before 3 times it (4.2 times
/// the mean). The test's variance being conservative and a step's hold only add to that.
pub const NEED_FACTOR: f64 = 1.4;

/// What the advance boundary says now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdvanceEvidence {
    /// The log likelihood ratio of "as good as legacy" against "worse by twice the margin"
    /// (0 below the test's minimum counts; negative when the figures lean to worse).
    pub log_lr: f64,
    /// log(1 / beta): advancing is shown once `log_lr` reaches it.
    pub threshold: f64,
    /// The margin used: the absolute error-rate margin (errors), or the margin on new's
    /// slow share (latency).
    pub margin: f64,
    /// The requests per side (on the side with fewer of them, at the current split) the step
    /// needs: where a new side as good as legacy, at the observed rates, reaches
    /// [`NEED_FACTOR`] × the threshold on average (and the test's minimum counts); `None`
    /// without requests on both sides.
    pub needed: Option<u64>,
    /// How many more requests per side until advancing is shown if the figures stay as they
    /// are: 0 once shown; `None` when no amount of the same shows it (new's difference is at
    /// or beyond the margin), or without requests on both sides.
    pub to_advance: Option<u64>,
}

impl AdvanceEvidence {
    pub fn shown(&self) -> bool {
        self.log_lr >= self.threshold
    }
}

/// The error-rate margin at legacy's error rate: the larger of `margin_abs` and
/// `(margin_ratio - 1)` × `legacy_rate`.
pub fn error_margin(legacy_rate: f64, a: &Advance) -> f64 {
    a.margin_abs
        .max((a.margin_ratio - 1.0).max(0.0) * legacy_rate)
}

/// The variance of one request's outcome (error or not) at rate `p`, capped at 1/4.
fn bernoulli(p: f64) -> f64 {
    let p = p.clamp(0.0, 0.5);
    p * (1.0 - p)
}

/// How much the advance boundary's statistic, `d1 / 2 - Δ`, moves per unit of legacy's
/// error rate at `legacy_rate`: 1 where the margin is `margin_abs`, `margin_ratio` where it
/// is relative to legacy's rate (the margin moves with legacy's observed rate: `d1 / 2 - Δ`
/// is then `margin_ratio` × legacy's rate less new's).
fn legacy_weight(legacy_rate: f64, a: &Advance) -> f64 {
    if (a.margin_ratio - 1.0) * legacy_rate > a.margin_abs {
        a.margin_ratio
    } else {
        1.0
    }
}

/// The variance the advance boundary gives its statistic, `d1 / 2 - Δ` (`n1`, `r1`:
/// legacy's requests and rate; `n2`, `r2`: new's; `w` legacy's weight,
/// [`legacy_weight`]): the largest of the pooled and the unpooled estimates and the
/// variance under the alternative (new at legacy's rate plus `d1`), legacy's part in each
/// multiplied by `w²`. The alternative's keeps the normal approximation honest when errors
/// are rare: with no errors on either side the two estimates are 0, while a new side at
/// the alternative would have shown some.
fn advance_variance(n1: f64, n2: f64, r1: f64, r2: f64, d1: f64, w: f64) -> f64 {
    let w2 = w * w;
    let pooled_rate = (r1 * n1 + r2 * n2) / (n1 + n2);
    let pooled = bernoulli(pooled_rate) * (w2 / n1 + 1.0 / n2);
    let unpooled = w2 * bernoulli(r1) / n1 + bernoulli(r2) / n2;
    let alternative = w2 * bernoulli(r1) / n1 + bernoulli(r1 + d1) / n2;
    pooled.max(unpooled).max(alternative)
}

/// The requests per side (on the side with fewer of them) that the error-rate advance
/// boundary needs for a new side at legacy's error rate `legacy_rate`, with `share` of the
/// traffic to new: where the expected log likelihood ratio, `d1² / (2 V)`, reaches
/// [`NEED_FACTOR`] × log(1 / beta), `V` the variance the boundary uses at equal rates; at
/// least [`MIN_PER_SIDE`]. `None` when no amount does: no traffic on a side, or no margin.
pub fn requests_needed(share: f64, legacy_rate: f64, a: &Advance) -> Option<u64> {
    let d1 = 2.0 * error_margin(legacy_rate, a);
    let (s1, s2) = (1.0 - share, share);
    if s1 <= 0.0 || s2 <= 0.0 || d1 <= 0.0 {
        return None;
    }
    let w2 = legacy_weight(legacy_rate, a).powi(2);
    let p = bernoulli(legacy_rate);
    // V = k / total requests.
    let k = (p * (w2 / s1 + 1.0 / s2)).max(w2 * p / s1 + bernoulli(legacy_rate + d1) / s2);
    let total = NEED_FACTOR * 2.0 * (1.0 / a.beta).ln() * k / (d1 * d1);
    Some(((total * s1.min(s2)).ceil() as u64).max(MIN_PER_SIDE))
}

/// More requests per side until `log_lr` (positive; linear in the requests when the figures
/// stay as they are) reaches `threshold` and the side with fewer requests, `small`, reaches
/// `floor`.
fn more_requests(raw: f64, threshold: f64, small: u64, floor: u64) -> Option<u64> {
    if raw <= 0.0 {
        return None;
    }
    let by_lr = if raw >= threshold {
        0
    } else {
        ((threshold / raw - 1.0) * small as f64).ceil() as u64
    };
    Some(by_lr.max(floor.saturating_sub(small)))
}

/// The evidence that the new side's error rate is no worse than legacy's beyond the margin
/// ([`error_margin`] at legacy's observed rate): the advance boundary's log likelihood
/// ratio, `d1 (d1 / 2 - Δ) / V`, `Δ` new's observed rate less legacy's, `d1` twice the
/// margin, `V` the larger of the pooled, the unpooled and the alternative's variance of
/// `Δ`. No evidence below [`MIN_PER_SIDE`] requests a side.
pub fn advance_evidence(c: &Counts, a: &Advance) -> AdvanceEvidence {
    let threshold = (1.0 / a.beta).ln();
    if c.legacy_requests == 0 || c.new_requests == 0 {
        return AdvanceEvidence {
            log_lr: 0.0,
            threshold,
            margin: error_margin(0.0, a),
            needed: None,
            to_advance: None,
        };
    }
    let (n1, n2) = (c.legacy_requests as f64, c.new_requests as f64);
    let (r1, r2) = (c.legacy_errors as f64 / n1, c.new_errors as f64 / n2);
    let margin = error_margin(r1, a);
    let d1 = 2.0 * margin;
    if d1 <= 0.0 {
        return AdvanceEvidence {
            log_lr: 0.0,
            threshold,
            margin,
            needed: None,
            to_advance: None,
        };
    }
    let var = advance_variance(n1, n2, r1, r2, d1, legacy_weight(r1, a));
    let raw = d1 * (d1 / 2.0 - (r2 - r1)) / var;
    let small = c.legacy_requests.min(c.new_requests);
    let enough = small >= MIN_PER_SIDE;
    AdvanceEvidence {
        log_lr: if enough { raw } else { 0.0 },
        threshold,
        margin,
        needed: requests_needed(n2 / (n1 + n2), r1, a),
        to_advance: more_requests(raw, threshold, small, MIN_PER_SIDE),
    }
}

/// The requests per side (on the side with fewer of them) that the latency advance boundary
/// needs for a new side with 1% slow requests, with `share` of the traffic to new and `rho`
/// the slope of [`latency_evidence`] (at least 1): as [`requests_needed`], with the variance
/// `rho² 1% 99% / legacy's requests + q (1 - q) / new's requests`, `q` = 1% + twice the
/// margin; and at least what [`LATENCY_MIN_LEGACY`] and [`LATENCY_MIN_NEW`] take. `None`
/// when no amount does: no traffic on a side, or no margin.
pub fn latency_requests_needed(share: f64, rho: f64, a: &Advance) -> Option<u64> {
    let d1 = 2.0 * a.latency_margin;
    let (s1, s2) = (1.0 - share, share);
    if s1 <= 0.0 || s2 <= 0.0 || d1 <= 0.0 {
        return None;
    }
    let rho = rho.max(1.0);
    let k = rho * rho * bernoulli(TAIL) / s1 + bernoulli(TAIL + d1).max(bernoulli(TAIL)) / s2;
    let total = (NEED_FACTOR * 2.0 * (1.0 / a.beta).ln() * k / (d1 * d1))
        .max(LATENCY_MIN_LEGACY as f64 / s1)
        .max(LATENCY_MIN_NEW as f64 / s2);
    Some((total * s1.min(s2)).ceil() as u64)
}

/// The evidence that new's p99 is no worse than `max_p99_ratio` × legacy's beyond the
/// latency margin: the advance boundary on new's slow share `x` (its requests slower than
/// `max_p99_ratio` × legacy's p99), of "`x` = 1%" against "`x` = 1% + twice the margin",
/// `d1 (d1 / 2 - (x - 1%)) / V`, `V` the variance of [`latency_evidence`] (with its slope
/// `ρ` for the uncertainty of legacy's p99) with new's part at least that of the
/// alternative.
///
/// Unlike the harm test, which counts only new's requests surely above the bound (from the
/// bucket edge at or above it), this one counts the part of the bound's bucket above it as
/// if the bucket's requests were spread evenly: in a tail, where the density falls across a
/// bucket, that overstates new's slow share, which here errs against advancing. No
/// evidence below [`LATENCY_MIN_LEGACY`] legacy or [`LATENCY_MIN_NEW`] new requests.
pub fn latency_advance_evidence(
    legacy: &[u64],
    new: &[u64],
    max_p99_ratio: f64,
    a: &Advance,
) -> AdvanceEvidence {
    let threshold = (1.0 / a.beta).ln();
    let n1: u64 = legacy.iter().sum();
    let n2: u64 = new.iter().sum();
    let mut e = AdvanceEvidence {
        log_lr: 0.0,
        threshold,
        margin: a.latency_margin,
        needed: None,
        to_advance: None,
    };
    let Some(p99) = upper_quantile(legacy, TAIL * n1 as f64) else {
        return e;
    };
    if n2 == 0 || a.latency_margin <= 0.0 {
        return e;
    }
    let (f1, f2) = (n1 as f64, n2 as f64);
    let x = count_above(new, p99 * max_p99_ratio) / f2;
    // ρ as the harm test measures it, or measured towards lower latencies, where legacy's
    // true p99 lies when its estimate came out high: there a new side tighter than legacy
    // is denser, and its slow share, low for that reason, moves the more.
    let rho = slope_ratio(legacy, new, f1, f2, max_p99_ratio).max(slope_over(
        legacy,
        new,
        f1,
        f2,
        max_p99_ratio,
        2.0 * BAND_SDS,
        0.0,
    ));
    let d1 = 2.0 * a.latency_margin;
    let sigma2 = bernoulli(TAIL);
    let var = rho * rho * sigma2 / f1 + sigma2.max(x * (1.0 - x)).max(bernoulli(TAIL + d1)) / f2;
    let raw = d1 * (d1 / 2.0 - (x - TAIL)) / var;
    let share = f2 / (f1 + f2);
    let needed = latency_requests_needed(share, rho, a);
    if n1 >= LATENCY_MIN_LEGACY && n2 >= LATENCY_MIN_NEW {
        e.log_lr = raw;
    }
    e.needed = needed;
    // The side with fewer requests, at the current split, when both minimums are met.
    let floor = ((LATENCY_MIN_LEGACY as f64 / (1.0 - share)).max(LATENCY_MIN_NEW as f64 / share)
        * share.min(1.0 - share))
    .ceil() as u64;
    e.to_advance = more_requests(raw, threshold, n1.min(n2), floor);
    e
}

// ---------------------------------------------------------------------------------------
// Simulations of a plan's step.
// ---------------------------------------------------------------------------------------

/// One step of a plan, on error counts, for [`simulate_step`]: the request stream split at
/// `share` to new, errors at `legacy_rate` and `new_rate`, the guard looked at after every
/// `every` requests, up to `max_requests` (then the step is undecided).
#[cfg(feature = "simulate")]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepModel {
    pub share: f64,
    pub legacy_rate: f64,
    pub new_rate: f64,
    /// The step's hold, in requests (both sides).
    pub hold_requests: u64,
    /// The guard's `min_requests`: requests per side before the step may end either way.
    pub min_requests: u64,
    pub every: u64,
    pub max_requests: u64,
}

/// How a simulated step ended, and at how many requests (both sides).
#[cfg(feature = "simulate")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    Advanced(u64),
    RolledBack(u64),
    Undecided,
}

/// Draws batches of `every` requests into `state` until `decide` ends the step or
/// `max_requests` have been drawn.
#[cfg(feature = "simulate")]
fn run_step<S>(
    rng: &mut fastrand::Rng,
    every: u64,
    max_requests: u64,
    state: &mut S,
    draw: impl Fn(&mut fastrand::Rng, &mut S, u64),
    decide: impl Fn(&S, u64) -> Option<StepOutcome>,
) -> StepOutcome {
    let every = every.max(1);
    let mut seen = 0;
    while seen < max_requests {
        draw(rng, state, every);
        seen += every;
        if let Some(end) = decide(state, seen) {
            return end;
        }
    }
    StepOutcome::Undecided
}

/// Adds `n` requests, split at `share`, with errors at the given rates.
#[cfg(feature = "simulate")]
fn draw_counts(
    rng: &mut fastrand::Rng,
    c: &mut Counts,
    n: u64,
    share: f64,
    legacy_rate: f64,
    new_rate: f64,
) -> (u64, u64) {
    let to_new = binomial(rng, n, share);
    let to_legacy = n - to_new;
    c.new_requests += to_new;
    c.legacy_requests += to_legacy;
    c.new_errors += binomial(rng, to_new, new_rate);
    c.legacy_errors += binomial(rng, to_legacy, legacy_rate);
    (to_legacy, to_new)
}

/// Seeded simulation of one step under the two boundaries: rolled back as soon as the
/// harm test ([`evidence`]) calls `worse` with both sides at `min_requests` (as the verdict
/// does); advanced at the first look with the hold served (`hold_requests`), both sides at
/// `min_requests` and advancing shown ([`advance_evidence`]).
#[cfg(feature = "simulate")]
pub fn simulate_step(
    rng: &mut fastrand::Rng,
    m: &StepModel,
    s: &Settings,
    a: &Advance,
) -> StepOutcome {
    let mut c = Counts::default();
    run_step(
        rng,
        m.every,
        m.max_requests,
        &mut c,
        |rng, c, n| {
            draw_counts(rng, c, n, m.share, m.legacy_rate, m.new_rate);
        },
        |c, seen| {
            if c.legacy_requests.min(c.new_requests) < m.min_requests {
                return None;
            }
            if evidence(c, s).worse() {
                return Some(StepOutcome::RolledBack(seen));
            }
            (seen >= m.hold_requests && advance_evidence(c, a).shown())
                .then_some(StepOutcome::Advanced(seen))
        },
    )
}

/// Seeded simulation of one step under the rule before the advance boundary: rolled back
/// as [`simulate_step`] does; advanced at the first look with the hold served, both sides at
/// `min_requests`, and new's observed error rate less legacy's at most the margin
/// (`s.margin`).
#[cfg(feature = "simulate")]
pub fn simulate_step_before(rng: &mut fastrand::Rng, m: &StepModel, s: &Settings) -> StepOutcome {
    let mut c = Counts::default();
    run_step(
        rng,
        m.every,
        m.max_requests,
        &mut c,
        |rng, c, n| {
            draw_counts(rng, c, n, m.share, m.legacy_rate, m.new_rate);
        },
        |c, seen| {
            if c.legacy_requests.min(c.new_requests) < m.min_requests {
                return None;
            }
            let e = evidence(c, s);
            if e.worse() {
                return Some(StepOutcome::RolledBack(seen));
            }
            (seen >= m.hold_requests && observed_delta(c) <= s.margin + 1e-9)
                .then_some(StepOutcome::Advanced(seen))
        },
    )
}

/// New's observed error rate less legacy's, rounded as the verdict reports it.
#[cfg(feature = "simulate")]
fn observed_delta(c: &Counts) -> f64 {
    let rate = |e: u64, n: u64| if n == 0 { 0.0 } else { e as f64 / n as f64 };
    ((rate(c.new_errors, c.new_requests) - rate(c.legacy_errors, c.legacy_requests)) * 1e6).round()
        / 1e6
}

/// One step of a plan, on latencies and error counts, for [`simulate_latency_step`]: as
/// [`StepModel`], each side's latencies drawn from its distribution.
#[cfg(feature = "simulate")]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyStepModel<'a> {
    pub share: f64,
    pub legacy: &'a LatencyModel,
    pub new: &'a LatencyModel,
    pub max_p99_ratio: f64,
    pub legacy_rate: f64,
    pub new_rate: f64,
    pub hold_requests: u64,
    pub min_requests: u64,
    pub every: u64,
    pub max_requests: u64,
}

/// A latency step's running figures.
#[cfg(feature = "simulate")]
struct LatencyState {
    counts: Counts,
    legacy: Vec<u64>,
    new: Vec<u64>,
}

#[cfg(feature = "simulate")]
impl LatencyState {
    fn new() -> LatencyState {
        LatencyState {
            counts: Counts::default(),
            legacy: vec![0; BUCKETS],
            new: vec![0; BUCKETS],
        }
    }
}

#[cfg(feature = "simulate")]
fn draw_latency_step(rng: &mut fastrand::Rng, st: &mut LatencyState, n: u64, m: &LatencyStepModel) {
    let (to_legacy, to_new) =
        draw_counts(rng, &mut st.counts, n, m.share, m.legacy_rate, m.new_rate);
    m.legacy.draw(rng, to_legacy, &mut st.legacy);
    m.new.draw(rng, to_new, &mut st.new);
}

/// Seeded simulation of one step under the two boundaries, on both tests: rolled back as
/// soon as either harm test calls `worse` with both sides at `min_requests`; advanced at the
/// first look with the hold served, both sides at `min_requests` and advancing shown by both
/// ([`advance_evidence`] and [`latency_advance_evidence`]).
#[cfg(feature = "simulate")]
pub fn simulate_latency_step(
    rng: &mut fastrand::Rng,
    m: &LatencyStepModel,
    s: &Settings,
    a: &Advance,
) -> StepOutcome {
    let mut st = LatencyState::new();
    run_step(
        rng,
        m.every,
        m.max_requests,
        &mut st,
        |rng, st, n| draw_latency_step(rng, st, n, m),
        |st, seen| {
            let c = &st.counts;
            if c.legacy_requests.min(c.new_requests) < m.min_requests {
                return None;
            }
            if evidence(c, s).worse()
                || latency_evidence(&st.legacy, &st.new, m.max_p99_ratio, s).worse()
            {
                return Some(StepOutcome::RolledBack(seen));
            }
            (seen >= m.hold_requests
                && advance_evidence(c, a).shown()
                && latency_advance_evidence(&st.legacy, &st.new, m.max_p99_ratio, a).shown())
            .then_some(StepOutcome::Advanced(seen))
        },
    )
}

/// Seeded simulation of one step under the rule before the advance boundary, on both tests:
/// rolled back as [`simulate_latency_step`] does; advanced at the first look with the hold
/// served, both sides at `min_requests`, new's observed error rate less legacy's at most
/// the margin and new's observed p99 over legacy's (rounded to hundredths, as the verdict
/// reports it) at most `max_p99_ratio`.
#[cfg(feature = "simulate")]
pub fn simulate_latency_step_before(
    rng: &mut fastrand::Rng,
    m: &LatencyStepModel,
    s: &Settings,
) -> StepOutcome {
    let mut st = LatencyState::new();
    run_step(
        rng,
        m.every,
        m.max_requests,
        &mut st,
        |rng, st, n| draw_latency_step(rng, st, n, m),
        |st, seen| {
            let c = &st.counts;
            if c.legacy_requests.min(c.new_requests) < m.min_requests {
                return None;
            }
            if evidence(c, s).worse()
                || latency_evidence(&st.legacy, &st.new, m.max_p99_ratio, s).worse()
            {
                return Some(StepOutcome::RolledBack(seen));
            }
            let p99 = |h: &[u64]| upper_quantile(h, TAIL * h.iter().sum::<u64>() as f64);
            let ratio_ok = match (p99(&st.legacy), p99(&st.new)) {
                (Some(l), Some(n)) if l > 0.0 => (n / l * 100.0).round() / 100.0 <= m.max_p99_ratio,
                _ => true,
            };
            (seen >= m.hold_requests && observed_delta(c) <= s.margin + 1e-9 && ratio_ok)
                .then_some(StepOutcome::Advanced(seen))
        },
    )
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

    #[test]
    fn the_margin_is_the_floor_or_half_legacys_rate() {
        let a = Advance::default();
        assert_eq!(error_margin(0.0, &a), 0.0005);
        assert_eq!(error_margin(0.001, &a), 0.0005);
        assert!((error_margin(0.01, &a) - 0.005).abs() < 1e-12);
        assert!((error_margin(0.05, &a) - 0.025).abs() < 1e-12);
        assert_eq!(legacy_weight(0.0005, &a), 1.0);
        assert_eq!(legacy_weight(0.01, &a), 1.5);
    }

    #[test]
    fn equal_rates_show_advancing_and_twice_the_margin_does_not() {
        let a = Advance::default();
        let c = Counts {
            legacy_requests: 50_000,
            legacy_errors: 500,
            new_requests: 50_000,
            new_errors: 500,
        };
        let e = advance_evidence(&c, &a);
        assert!(e.shown(), "{e:?}");
        assert_eq!(e.to_advance, Some(0));
        assert!((e.threshold - 25f64.ln()).abs() < 1e-12);
        assert!((e.margin - 0.005).abs() < 1e-12);
        // d1 = 1%, no difference; the variance is the alternative's (new at 2%), legacy's
        // part weighed 1.5² (the margin moves with legacy's rate).
        let v = (2.25 * 0.01 * 0.99 + 0.02 * 0.98) / 50_000.0;
        assert!((e.log_lr - 0.01 * 0.005 / v).abs() < 1e-9, "{e:?}");
        // At the margin (1.5%), the midpoint: no evidence either way.
        let mid = Counts {
            new_errors: 750,
            ..c
        };
        assert!(advance_evidence(&mid, &a).log_lr.abs() < 1e-9);
        // Twice the margin (2%): far from it, and no amount of the same shows it.
        let bad = Counts {
            new_errors: 1000,
            ..c
        };
        let e = advance_evidence(&bad, &a);
        assert!(e.log_lr < -10.0, "{e:?}");
        assert_eq!(e.to_advance, None);
    }

    #[test]
    fn without_errors_the_floor_margin_takes_thousands_of_requests() {
        // No errors on either side: the margin is the floor, 0.05 point, and only the
        // alternative (new at 0.1%) gives the difference a variance: log LR = n / 1998.
        let a = Advance::default();
        let c = |n| Counts {
            legacy_requests: n,
            legacy_errors: 0,
            new_requests: n,
            new_errors: 0,
        };
        let e = advance_evidence(&c(1000), &a);
        assert!(!e.shown());
        assert!(
            (e.log_lr - 1000.0 * 0.001 * 0.0005 / 0.000999).abs() < 1e-9,
            "{e:?}"
        );
        let k = e.to_advance.unwrap();
        assert!(advance_evidence(&c(1000 + k), &a).shown());
        assert!(!advance_evidence(&c(1000 + k - 2), &a).shown());
        assert!((6000..7000).contains(&(1000 + k)), "{k}");
    }

    #[test]
    fn below_the_minimum_nothing_is_weighed() {
        let a = Advance::default();
        let c = Counts {
            legacy_requests: 10_000,
            legacy_errors: 0,
            new_requests: 20,
            new_errors: 0,
        };
        let e = advance_evidence(&c, &a);
        assert_eq!(e.log_lr, 0.0);
        assert!(e.to_advance.unwrap() >= MIN_PER_SIDE - 20, "{e:?}");
        let none = advance_evidence(&Counts::default(), &a);
        assert_eq!(
            (none.log_lr, none.needed, none.to_advance),
            (0.0, None, None)
        );
    }

    /// The counts of `small` requests on the side with fewer, at `share` to new, with the
    /// expected errors at `rate` on both sides.
    fn at_rate(small: u64, share: f64, rate: f64) -> Counts {
        let total = small as f64 / share.min(1.0 - share);
        let (n1, n2) = (total * (1.0 - share), total * share);
        Counts {
            legacy_requests: n1.round() as u64,
            legacy_errors: (n1 * rate).round() as u64,
            new_requests: n2.round() as u64,
            new_errors: (n2 * rate).round() as u64,
        }
    }

    #[test]
    fn the_requests_needed_bring_the_expected_evidence_to_its_multiple_of_the_threshold() {
        let a = Advance::default();
        for (share, rate) in [
            (0.01, 0.001),
            (0.1, 0.01),
            (0.5, 0.05),
            (0.5, 0.0),
            (0.9, 0.01),
        ] {
            let need = requests_needed(share, rate, &a).unwrap();
            let c = at_rate(need, share, rate);
            let e = advance_evidence(&c, &a);
            let target = NEED_FACTOR * e.threshold;
            assert!(
                (e.log_lr / target - 1.0).abs() < 0.02,
                "share {share}, rate {rate}: {need} a side, {e:?}"
            );
            // (From the rounded counts' rates and split.)
            let again = e.needed.unwrap() as f64 / need as f64;
            assert!(
                (again - 1.0).abs() < 0.03,
                "share {share}, rate {rate}: {e:?}"
            );
            // Twice the requests at the same rates, twice the evidence.
            let twice = Counts {
                legacy_requests: 2 * c.legacy_requests,
                legacy_errors: 2 * c.legacy_errors,
                new_requests: 2 * c.new_requests,
                new_errors: 2 * c.new_errors,
            };
            let e2 = advance_evidence(&twice, &a);
            assert!((e2.log_lr / e.log_lr - 2.0).abs() < 1e-9);
        }
        assert_eq!(requests_needed(0.0, 0.01, &a), None);
        assert_eq!(requests_needed(1.0, 0.01, &a), None);
    }

    /// The passage of a Brownian motion with drift `μ` and variance `2 μ` (the log
    /// likelihood ratio of a new side as good as legacy, per unit of information) to
    /// log(1 / beta) is inverse Gaussian of shape log(1 / beta) / 2 in units of its mean, and
    /// the need is `NEED_FACTOR` times that mean.
    #[test]
    fn three_times_the_need_covers_99_percent_of_passages() {
        use statrs::distribution::{ContinuousCDF, Normal};
        let z = Normal::standard();
        let a = (1.0 / Advance::default().beta).ln();
        let shape = a / 2.0;
        let cdf = |x: f64| {
            let r = (shape / x).sqrt();
            z.cdf(r * (x - 1.0)) + (2.0 * shape).exp() * z.cdf(-r * (x + 1.0))
        };
        assert!(cdf(3.0 * NEED_FACTOR) >= 0.99, "{}", cdf(3.0 * NEED_FACTOR));
        assert!(cdf(NEED_FACTOR) > 0.75, "{}", cdf(NEED_FACTOR));
        // And by simulation of the walk itself, looked at 50 times per mean passage.
        let mut rng = fastrand::Rng::with_seed(11);
        let (runs, steps) = (4000, 50.0);
        let (mu, dt) = (a, 1.0 / steps); // drift a per mean passage
        let late = (0..runs)
            .filter(|_| {
                let mut x = 0.0;
                let mut t = 0.0;
                while x < a {
                    // A normal draw from two uniforms (Box-Muller).
                    let g = (-2.0 * rng.f64().max(1e-300).ln()).sqrt()
                        * (2.0 * std::f64::consts::PI * rng.f64()).cos();
                    x += mu * dt + (2.0 * mu * dt).sqrt() * g;
                    t += dt;
                    if t > 3.0 * NEED_FACTOR {
                        return true;
                    }
                }
                false
            })
            .count();
        let frac = late as f64 / runs as f64;
        assert!(
            frac <= 0.01 + 3.0 * (0.01 * 0.99 / runs as f64).sqrt(),
            "{frac}"
        );
    }

    #[test]
    fn the_latency_advance_boundary() {
        let a = Advance::default();
        let m = LatencyModel::log_normal(20.0, 0.5);
        let n = 200_000.0;
        let h = expected(&m, n);
        // Identical histograms, at a ratio of 1: new's slow share is exactly 1%, ρ is 1, and
        // the evidence is d1 (d1 / 2) / V, V = 1% 99% / n + 2% 98% / n.
        let e = latency_advance_evidence(&h, &h, 1.0, &a);
        let n1 = h.iter().sum::<u64>() as f64;
        let v = (0.01 * 0.99 + 0.02 * 0.98) / n1;
        assert!(
            (e.log_lr - 0.01 * 0.005 / v).abs() < 1e-6 * e.log_lr,
            "{e:?}"
        );
        assert!(e.shown());
        assert_eq!(e.to_advance, Some(0));
        assert_eq!(e.margin, 0.005);
        // The requests needed: where that reaches 1.4 times the threshold.
        let need = e.needed.unwrap();
        assert_eq!(need, latency_requests_needed(0.5, 1.0, &a).unwrap());
        let at_need = expected(&m, need as f64);
        let e = latency_advance_evidence(&at_need, &at_need, 1.0, &a);
        assert!(
            (e.log_lr / (NEED_FACTOR * e.threshold) - 1.0).abs() < 0.02,
            "{need}: {e:?}"
        );
        // 2% slow (1% + twice the margin): far from it.
        let slow = with_slow_share(&m, &m, 1.0, 0.02);
        assert!((slow_share(&m, &slow, 1.0) - 0.02).abs() < 1e-9);
        let e = latency_advance_evidence(&h, &expected(&slow, n), 1.0, &a);
        assert!(e.log_lr < -10.0, "{e:?}");
        assert_eq!(e.to_advance, None);
        // Within the ratio by far: shown, and sooner than at the ratio.
        let e15 = latency_advance_evidence(&h, &h, 1.5, &a);
        assert!(e15.log_lr > 2.0 * latency_advance_evidence(&h, &h, 1.0, &a).log_lr);
        // Below the minimums nothing is weighed.
        let few = expected(&m, 300.0);
        let e = latency_advance_evidence(&few, &few, 1.5, &a);
        assert_eq!(e.log_lr, 0.0);
        assert!(e.to_advance.unwrap() >= LATENCY_MIN_LEGACY - 300, "{e:?}");
        assert_eq!(
            latency_advance_evidence(&h, &vec![0; BUCKETS], 1.0, &a).needed,
            None
        );
    }

    #[test]
    fn a_tighter_new_side_weighs_legacys_p99_uncertainty_more_when_advancing() {
        // A tight new side against a heavy-tailed legacy, both 1% above legacy's p99: its
        // slow share moves many times as much as legacy's tail share, so the boundary
        // needs many more requests than for new = legacy.
        let a = Advance::default();
        let legacy = LatencyModel::log_normal(20.0, 1.0);
        let tight = with_slow_share(&legacy, &LatencyModel::log_normal(20.0, 0.2), 1.0, 0.01);
        let n = 100_000.0;
        let h = expected(&legacy, n);
        let same = latency_advance_evidence(&h, &h, 1.0, &a);
        let other = latency_advance_evidence(&h, &expected(&tight, n), 1.0, &a);
        assert!(
            other.needed.unwrap() > 5 * same.needed.unwrap(),
            "{same:?} {other:?}"
        );
        assert!(other.log_lr < same.log_lr / 5.0, "{same:?} {other:?}");
    }

    #[test]
    fn step_simulations_end_as_the_rules_say() {
        let s = Settings::default();
        let a = Advance::default();
        let m = StepModel {
            share: 0.5,
            legacy_rate: 0.01,
            new_rate: 0.01,
            hold_requests: 1000,
            min_requests: 100,
            every: 50,
            max_requests: 1_000_000,
        };
        let mut rng = fastrand::Rng::with_seed(1);
        match simulate_step(&mut rng, &m, &s, &a) {
            StepOutcome::Advanced(n) => assert!(n >= 1000, "{n}"),
            other => panic!("{other:?}"),
        }
        let bad = StepModel { new_rate: 0.2, ..m };
        assert!(matches!(
            simulate_step(&mut rng, &bad, &s, &a),
            StepOutcome::RolledBack(n) if n <= 1000
        ));
        let capped = StepModel {
            max_requests: 500,
            ..m
        };
        assert_eq!(
            simulate_step(&mut rng, &capped, &s, &a),
            StepOutcome::Undecided
        );
        // The rule before advances as soon as the hold is served with new no worse than
        // legacy in the counts: with no errors at all, at the hold.
        let clean = StepModel {
            legacy_rate: 0.0,
            new_rate: 0.0,
            ..m
        };
        assert_eq!(
            simulate_step_before(&mut rng, &clean, &s),
            StepOutcome::Advanced(1000)
        );
        let lm = LatencyModel::log_normal(20.0, 0.5);
        let lstep = LatencyStepModel {
            share: 0.5,
            legacy: &lm,
            new: &lm,
            max_p99_ratio: 1.5,
            legacy_rate: 0.0,
            new_rate: 0.0,
            hold_requests: 1000,
            min_requests: 100,
            every: 100,
            max_requests: 1_000_000,
        };
        assert_eq!(
            simulate_latency_step_before(&mut rng, &lstep, &s),
            StepOutcome::Advanced(1000)
        );
        // With no errors, the error boundary needs about 6,400 requests a side.
        match simulate_latency_step(&mut rng, &lstep, &s, &a) {
            StepOutcome::Advanced(n) => assert!((10_000..20_000).contains(&n), "{n}"),
            other => panic!("{other:?}"),
        }
        let slow = lm.scaled(3.0);
        let lbad = LatencyStepModel {
            new: &slow,
            ..lstep
        };
        assert!(matches!(
            simulate_latency_step(&mut rng, &lbad, &s, &a),
            StepOutcome::RolledBack(_)
        ));
    }
}
