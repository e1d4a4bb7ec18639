//! Legacy vs new, side by side (CONTRACT §6 `GET /admin/compare`): rolling figures per route
//! and side over a sliding window, and the verdict.
//!
//! Each route and side keeps a ring of time slots (`compare.resolution` wide, covering
//! `compare.retention`), each with a request count, an error count and a latency histogram
//! (log-linear, 8 buckets per power of two: percentiles within 12.5%). Memory is fixed per
//! route and side, whatever the traffic, and allocated on a side's first request. Recording
//! is a few relaxed atomic increments; the window's figures are summed when asked for.
//! The figures survive reloads: they are kept by route name, not by table.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::side::Side;

/// Latency buckets: 0 for under 64 µs, then 8 per power of two up to 2^27 µs (134 s).
const SUB: u64 = 8;
const MIN_EXP: u32 = 6;
const MAX_EXP: u32 = 27;
const BUCKETS: usize = 1 + ((MAX_EXP - MIN_EXP) as usize) * SUB as usize;

fn bucket_of(us: u64) -> usize {
    if us < (1 << MIN_EXP) {
        return 0;
    }
    let e = 63 - us.leading_zeros();
    if e >= MAX_EXP {
        return BUCKETS - 1;
    }
    let sub = (us >> (e - 3)) & (SUB - 1);
    1 + ((e - MIN_EXP) as usize) * SUB as usize + sub as usize
}

/// The range of latencies (µs) of a bucket.
fn bucket_range(i: usize) -> (f64, f64) {
    if i == 0 {
        return (0.0, (1u64 << MIN_EXP) as f64);
    }
    let e = MIN_EXP + ((i - 1) / SUB as usize) as u32;
    let sub = ((i - 1) % SUB as usize) as u64;
    let width = 1u64 << (e - 3);
    let lo = (1u64 << e) + sub * width;
    (lo as f64, (lo + width) as f64)
}

/// Settings of the comparison (the routes file's `compare` section).
#[derive(Debug, Clone, PartialEq)]
pub struct CompareConfig {
    /// Default window of `GET /admin/compare`.
    pub window: Duration,
    /// Requests per side in the window below which the verdict is `insufficient_data`.
    pub min_requests: u64,
    /// New's p99 over legacy's above which the verdict is `worse`.
    pub max_p99_ratio: f64,
    /// Width of one time slot.
    pub resolution: Duration,
    /// How far back figures are kept: the longest window.
    pub retention: Duration,
}

impl Default for CompareConfig {
    fn default() -> Self {
        CompareConfig {
            window: Duration::from_secs(300),
            min_requests: 50,
            max_p99_ratio: 1.5,
            resolution: Duration::from_secs(10),
            retention: Duration::from_secs(900),
        }
    }
}

impl CompareConfig {
    fn slots(&self) -> usize {
        let r = self.resolution.as_millis().max(1);
        (self.retention.as_millis().div_ceil(r) as usize).clamp(1, 3600)
    }
}

struct Slot {
    /// Which slot of time (since the registry's start) the counts belong to.
    epoch: AtomicU64,
    requests: AtomicU32,
    errors: AtomicU32,
    latency: [AtomicU32; BUCKETS],
}

impl Slot {
    fn new() -> Slot {
        Slot {
            epoch: AtomicU64::new(u64::MAX),
            requests: AtomicU32::new(0),
            errors: AtomicU32::new(0),
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

/// The rolling figures of one route and side.
struct SideWindow {
    slots: OnceLock<Box<[Slot]>>,
}

/// The rolling figures of one route, both sides.
pub struct RouteWindow {
    registry: Arc<Registry>,
    sides: [SideWindow; 2],
}

impl RouteWindow {
    /// Records one answered request that started at `start`.
    #[inline]
    pub fn record(&self, side: Side, start: Instant, elapsed: Duration, error: bool) {
        let reg = &self.registry;
        let epoch = reg.epoch_of(start);
        let slots = self.sides[side.index()]
            .slots
            .get_or_init(|| (0..reg.slots).map(|_| Slot::new()).collect());
        let slot = &slots[(epoch % slots.len() as u64) as usize];
        let seen = slot.epoch.load(Ordering::Acquire);
        if seen != epoch {
            if seen != u64::MAX && seen > epoch {
                // A late recording of a slot already reused for newer time: dropped.
                return;
            }
            // First recording in this slot's new period: clear it. Concurrent recorders may
            // lose a count or two at the turn; the figures are statistics, not accounts.
            if slot
                .epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                slot.requests.store(0, Ordering::Relaxed);
                slot.errors.store(0, Ordering::Relaxed);
                for b in &slot.latency {
                    b.store(0, Ordering::Relaxed);
                }
            }
        }
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        slot.latency[bucket_of(elapsed.as_micros() as u64)].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests and errors per slot over the last `window`, oldest first, one point per slot
    /// (zeros included): `[seconds from the window's start, requests, errors]`.
    pub fn series(&self, side: Side, window: Duration) -> Vec<[f64; 3]> {
        let reg = &self.registry;
        let now = reg.epoch_of(Instant::now());
        let span = ((window.as_millis() / reg.resolution.as_millis().max(1)).max(1) as u64)
            .min(reg.slots as u64);
        let oldest = now.saturating_sub(span - 1);
        let slot_secs = reg.resolution.as_secs_f64();
        let slots = self.sides[side.index()].slots.get();
        (oldest..=now)
            .map(|epoch| {
                let (mut r, mut e) = (0u64, 0u64);
                if let Some(slots) = slots {
                    let slot = &slots[(epoch % slots.len() as u64) as usize];
                    if slot.epoch.load(Ordering::Acquire) == epoch {
                        r = u64::from(slot.requests.load(Ordering::Relaxed));
                        e = u64::from(slot.errors.load(Ordering::Relaxed));
                    }
                }
                [(epoch - oldest) as f64 * slot_secs, r as f64, e as f64]
            })
            .collect()
    }

    /// The figures of one side over the last `window`.
    pub fn figures(&self, side: Side, window: Duration) -> SideFigures {
        let reg = &self.registry;
        let Some(slots) = self.sides[side.index()].slots.get() else {
            return SideFigures::from_counts(0, 0, &[0; BUCKETS]);
        };
        let now = reg.epoch_of(Instant::now());
        let span = (window.as_millis() / reg.resolution.as_millis().max(1)).max(1) as u64;
        let span = span.min(slots.len() as u64);
        let oldest = now.saturating_sub(span - 1);
        let (mut requests, mut errors) = (0u64, 0u64);
        let mut hist = [0u64; BUCKETS];
        for slot in slots.iter() {
            let e = slot.epoch.load(Ordering::Acquire);
            if e == u64::MAX || e < oldest || e > now {
                continue;
            }
            requests += u64::from(slot.requests.load(Ordering::Relaxed));
            errors += u64::from(slot.errors.load(Ordering::Relaxed));
            for (h, b) in hist.iter_mut().zip(&slot.latency) {
                *h += u64::from(b.load(Ordering::Relaxed));
            }
        }
        SideFigures::from_counts(requests, errors, &hist)
    }
}

/// The registry of every route's window, by name.
pub struct Registry {
    start: Instant,
    resolution: Duration,
    slots: usize,
    routes: Mutex<HashMap<String, Arc<RouteWindow>>>,
    pub config: CompareConfig,
}

impl Registry {
    pub fn new(config: CompareConfig) -> Arc<Registry> {
        Arc::new(Registry {
            start: Instant::now(),
            resolution: config.resolution,
            slots: config.slots(),
            routes: Mutex::new(HashMap::new()),
            config,
        })
    }

    fn epoch_of(&self, t: Instant) -> u64 {
        let since = t.saturating_duration_since(self.start);
        (since.as_millis() / self.resolution.as_millis().max(1)) as u64
    }

    /// The window of a route (made on first use; kept across reloads).
    pub fn route(self: &Arc<Self>, name: &str) -> Arc<RouteWindow> {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(RouteWindow {
                    registry: self.clone(),
                    sides: [
                        SideWindow {
                            slots: OnceLock::new(),
                        },
                        SideWindow {
                            slots: OnceLock::new(),
                        },
                    ],
                })
            })
            .clone()
    }

    /// Forgets the routes not in `names` (after a reload removed or renamed them), so their
    /// memory goes once the last request holding them is done.
    pub fn retain(&self, names: &[&str]) {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes.retain(|name, _| {
            name == crate::metrics::DEFAULT_ROUTE || names.contains(&name.as_str())
        });
    }

    /// How much of `window` the figures can cover: all of it, or the time since start.
    pub fn covered(&self, window: Duration) -> Duration {
        window.min(self.start.elapsed().max(self.resolution))
    }

    /// The width of one slot.
    pub fn resolution(&self) -> Duration {
        self.resolution
    }

    /// The longest window that can be asked for.
    pub fn retention(&self) -> Duration {
        self.resolution * self.slots as u32
    }
}

/// One side's figures over a window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SideFigures {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Per-slot points, when asked for (`series=1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<Vec<[f64; 3]>>,
}

impl SideFigures {
    fn from_counts(requests: u64, errors: u64, hist: &[u64; BUCKETS]) -> SideFigures {
        let total: u64 = hist.iter().sum();
        let q = |p: f64| percentile(hist, total, p).map(|us| (us / 10.0).round() / 100.0);
        SideFigures {
            requests,
            errors,
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            p50_ms: q(0.50),
            p90_ms: q(0.90),
            p99_ms: q(0.99),
            series: None,
        }
    }
}

/// The `p` quantile in µs, interpolated within its bucket.
fn percentile(hist: &[u64; BUCKETS], total: u64, p: f64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = p * total as f64;
    let mut seen = 0u64;
    for (i, &n) in hist.iter().enumerate() {
        if n == 0 {
            continue;
        }
        if (seen + n) as f64 >= rank {
            let (lo, hi) = bucket_range(i);
            let within = ((rank - seen as f64) / n as f64).clamp(0.0, 1.0);
            return Some(lo + (hi - lo) * within);
        }
        seen += n;
    }
    Some(bucket_range(BUCKETS - 1).1)
}

/// The comparison of one route.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouteComparison {
    pub route: String,
    pub percent: serde_json::Value,
    pub legacy: SideFigures,
    pub new: SideFigures,
    /// New's error rate minus legacy's.
    pub error_rate_delta: f64,
    /// New's p99 over legacy's, when both are known.
    pub p99_ratio: Option<f64>,
    pub verdict: Verdict,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    InsufficientData,
    Worse,
    Ok,
}

/// One-sided critical value of the standard normal at 99%.
const Z_99: f64 = 2.326;
/// The significance level of "new's error rate is higher".
const ALPHA: f64 = 0.01;
/// Below this many requests on a side, p99 is one or two requests: the p99 ratio is not
/// judged (the error rates still are).
pub const MIN_FOR_P99: u64 = 200;

/// The two-proportion z statistic of new's error rate over legacy's (pooled variance).
pub fn z_score(legacy: &SideFigures, new: &SideFigures) -> f64 {
    let (n1, n2) = (legacy.requests as f64, new.requests as f64);
    if n1 == 0.0 || n2 == 0.0 {
        return 0.0;
    }
    let pooled = (legacy.errors + new.errors) as f64 / (n1 + n2);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if se == 0.0 {
        return 0.0;
    }
    (new.error_rate - legacy.error_rate) / se
}

/// ln(n!), exact up to 255, Stirling's series beyond (error below 1e-10 there).
fn ln_factorial(n: u64) -> f64 {
    if n < 256 {
        return (2..=n).map(|k| (k as f64).ln()).sum();
    }
    let x = n as f64;
    x * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI * x).ln() + 1.0 / (12.0 * x)
        - 1.0 / (360.0 * x * x * x)
}

fn ln_choose(n: u64, k: u64) -> f64 {
    ln_factorial(n) - ln_factorial(k) - ln_factorial(n - k)
}

/// One-sided Fisher exact test: the probability, with the errors of both sides pooled, that
/// new gets at least as many of them as it did. `None` when the sum would be too long.
fn fisher_p(n1: u64, e1: u64, n2: u64, e2: u64) -> Option<f64> {
    let (n, k) = (n1 + n2, e1 + e2);
    let hi = k.min(n2);
    if hi < e2 {
        return Some(1.0);
    }
    if hi - e2 > 100_000 {
        return None;
    }
    let denom = ln_choose(n, n2);
    let p: f64 = (e2..=hi)
        .filter(|&x| n2 - x <= n - k)
        .map(|x| (ln_choose(k, x) + ln_choose(n - k, n2 - x) - denom).exp())
        .sum();
    Some(p.min(1.0))
}

/// Whether new's error rate is higher with significance at 99%, and how it was judged.
/// Large samples use the two-proportion z-test; where an expected count is under 5 (few
/// errors, or few requests), the normal approximation is poor and Fisher's exact test
/// decides instead (one error among 50 requests against none among 1000 is not a
/// regression at 99%).
pub fn error_rate_worse(legacy: &SideFigures, new: &SideFigures) -> Option<String> {
    let (n1, n2) = (legacy.requests, new.requests);
    if n1 == 0 || n2 == 0 || new.error_rate <= legacy.error_rate {
        return None;
    }
    let pooled = (legacy.errors + new.errors) as f64 / (n1 + n2) as f64;
    let min_expected = [n1 as f64, n2 as f64]
        .iter()
        .flat_map(|n| [n * pooled, n * (1.0 - pooled)])
        .fold(f64::INFINITY, f64::min);
    if min_expected < 5.0
        && let Some(p) = fisher_p(n1, legacy.errors, n2, new.errors)
    {
        return (p < ALPHA).then(|| format!("new error rate higher (Fisher exact p = {p:.4})"));
    }
    let z = z_score(legacy, new);
    (z > Z_99).then(|| format!("new error rate higher (z = {z:.1})"))
}

/// Judges one route from both sides' figures.
pub fn judge(
    route: &str,
    percent: serde_json::Value,
    legacy: SideFigures,
    new: SideFigures,
    cfg: &CompareConfig,
) -> RouteComparison {
    let error_rate_delta = ((new.error_rate - legacy.error_rate) * 1e6).round() / 1e6;
    let p99_ratio = match (legacy.p99_ms, new.p99_ms) {
        (Some(l), Some(n)) if l > 0.0 => Some((n / l * 100.0).round() / 100.0),
        _ => None,
    };
    let mut reasons = Vec::new();
    let verdict = if legacy.requests < cfg.min_requests || new.requests < cfg.min_requests {
        reasons.push(format!(
            "fewer than {} requests on a side (legacy {}, new {})",
            cfg.min_requests, legacy.requests, new.requests
        ));
        Verdict::InsufficientData
    } else {
        if let Some(why) = error_rate_worse(&legacy, &new) {
            reasons.push(why);
        }
        let p99_judged = legacy.requests >= MIN_FOR_P99 && new.requests >= MIN_FOR_P99;
        if let Some(r) = p99_ratio.filter(|r| p99_judged && *r > cfg.max_p99_ratio) {
            reasons.push(format!(
                "new p99 is {r:.2}x legacy's (bound {})",
                cfg.max_p99_ratio
            ));
        }
        if reasons.is_empty() {
            Verdict::Ok
        } else {
            Verdict::Worse
        }
    };
    RouteComparison {
        route: route.to_string(),
        percent,
        legacy,
        new,
        error_rate_delta,
        p99_ratio,
        verdict,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_and_order() {
        let mut last = 0;
        for us in [
            0u64,
            63,
            64,
            65,
            100,
            1000,
            12_345,
            1_000_000,
            60_000_000,
            u64::MAX / 2,
        ] {
            let b = bucket_of(us);
            assert!(b >= last, "{us}");
            assert!(b < BUCKETS);
            let (lo, hi) = bucket_range(b);
            if b > 0 && b < BUCKETS - 1 {
                assert!(lo <= us as f64 && (us as f64) < hi, "{us} in [{lo}, {hi})");
                assert!((hi - lo) / lo <= 0.125 + 1e-9);
            }
            last = b;
        }
    }

    #[test]
    fn percentiles_within_a_bucket_width() {
        let mut hist = [0u64; BUCKETS];
        for us in 1..=10_000u64 {
            hist[bucket_of(us * 10)] += 1;
        }
        let p99 = percentile(&hist, 10_000, 0.99).unwrap();
        assert!((p99 - 99_000.0).abs() / 99_000.0 < 0.125, "{p99}");
        let p50 = percentile(&hist, 10_000, 0.5).unwrap();
        assert!((p50 - 50_000.0).abs() / 50_000.0 < 0.125, "{p50}");
    }

    fn fig(requests: u64, errors: u64, p99: f64) -> SideFigures {
        SideFigures {
            requests,
            errors,
            error_rate: errors as f64 / requests as f64,
            p50_ms: Some(p99 / 2.0),
            p90_ms: Some(p99 / 1.5),
            p99_ms: Some(p99),
            series: None,
        }
    }

    #[test]
    fn verdicts() {
        let cfg = CompareConfig::default();
        let j = |l, n| judge("r", 25.into(), l, n, &cfg).verdict;
        assert_eq!(j(fig(1800, 0, 10.0), fig(200, 20, 10.0)), Verdict::Worse);
        assert_eq!(
            j(fig(1000, 0, 10.0), fig(1000, 0, 16.0)),
            Verdict::Worse,
            "p99 ratio 1.6"
        );
        assert_eq!(j(fig(1000, 10, 10.0), fig(1000, 10, 10.0)), Verdict::Ok);
        assert_eq!(
            j(fig(1000, 10, 10.0), fig(1000, 13, 10.0)),
            Verdict::Ok,
            "noise is not a regression"
        );
        assert_eq!(
            j(fig(5, 0, 10.0), fig(5, 5, 10.0)),
            Verdict::InsufficientData
        );
        assert_eq!(
            j(fig(1000, 0, 10.0), fig(1000, 0, 16.0)),
            Verdict::Worse,
            "p99 ratio 1.6"
        );
        assert_eq!(j(fig(1000, 0, 10.0), fig(1000, 0, 14.0)), Verdict::Ok);
        // One error in a small canary is not a regression at 99% (Fisher: p = 0.048)...
        assert_eq!(j(fig(1000, 0, 10.0), fig(50, 1, 10.0)), Verdict::Ok);
        // ...four are (p < 0.01).
        assert_eq!(j(fig(1000, 0, 10.0), fig(50, 4, 10.0)), Verdict::Worse);
        // p99 from 60 requests is one request: not judged.
        assert_eq!(j(fig(60, 0, 10.0), fig(60, 0, 30.0)), Verdict::Ok);
    }

    #[test]
    fn fisher_matches_a_hand_computed_value() {
        // N = 1050, K = 1 error, 50 drawn: P(X >= 1) = 50 / 1050.
        let p = fisher_p(1000, 0, 50, 1).unwrap();
        assert!((p - 50.0 / 1050.0).abs() < 1e-9, "{p}");
        // Stirling side: continuity across 255/256.
        let d = ln_factorial(256) - ln_factorial(255);
        assert!((d - 256f64.ln()).abs() < 1e-9, "{d}");
    }

    #[test]
    fn window_forgets_and_counts() {
        let reg = Registry::new(CompareConfig {
            resolution: Duration::from_millis(100),
            retention: Duration::from_secs(2),
            ..CompareConfig::default()
        });
        let w = reg.route("r");
        let t0 = Instant::now();
        for i in 0..100 {
            w.record(Side::New, t0, Duration::from_millis(5), i % 10 == 0);
        }
        let f = w.figures(Side::New, Duration::from_secs(1));
        assert_eq!((f.requests, f.errors), (100, 10));
        assert_eq!(w.figures(Side::Legacy, Duration::from_secs(1)).requests, 0);
        // A recording far later reuses the slots; the old traffic is out of the window.
        let later = t0 + Duration::from_secs(5);
        w.record(Side::New, later, Duration::from_millis(5), false);
        let slots = w.sides[Side::New.index()].slots.get().unwrap();
        let live: u32 = slots
            .iter()
            .filter(|s| s.epoch.load(Ordering::Relaxed) == reg.epoch_of(later))
            .map(|s| s.requests.load(Ordering::Relaxed))
            .sum();
        assert_eq!(live, 1);
    }
}
