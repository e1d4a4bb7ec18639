//! The rolling legacy-vs-new figures (docs/metrics.md): per route and side, over a
//! sliding window.
//!
//! Each route and side keeps a ring of time slots (`compare.resolution` wide, covering
//! `compare.retention`), each with a request count, an error count and a latency histogram
//! (log-linear, 8 buckets per power of two: percentiles within 12.5%). Memory is fixed per
//! route and side, whatever the traffic, and allocated on a side's first request. Recording
//! is a few relaxed atomic increments; the window's figures are summed when asked for.
//! The figures survive reloads: they are kept by route name, not by table.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::CompareConfig;
use crate::routing::{DEFAULT_ROUTE, Side};

/// Latency buckets (µs): 0 for under 64 µs, then 8 per power of two up to 2^27 µs (134 s).
const SUB: u64 = 8;
const MIN_EXP: u32 = 6;
const MAX_EXP: u32 = 27;
pub const BUCKETS: usize = 1 + ((MAX_EXP - MIN_EXP) as usize) * SUB as usize;

/// The bucket of a latency in µs.
pub fn bucket_of(us: u64) -> usize {
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
pub fn bucket_range(i: usize) -> (f64, f64) {
    if i == 0 {
        return (0.0, (1u64 << MIN_EXP) as f64);
    }
    let e = MIN_EXP + ((i - 1) / SUB as usize) as u32;
    let sub = ((i - 1) % SUB as usize) as u64;
    let width = 1u64 << (e - 3);
    let lo = (1u64 << e) + sub * width;
    (lo as f64, (lo + width) as f64)
}

/// How many slots `config` asks for.
fn slot_count(config: &CompareConfig) -> usize {
    let r = config.resolution.as_millis().max(1);
    // One more than the retention needs: the slot in progress.
    (config.retention.as_millis().div_ceil(r) as usize).clamp(1, 3600) + 1
}

/// The slots a window reads: from `oldest` to `now` (the slot in progress), and how much
/// time they cover. A window of `w` is rounded up to whole slots, plus the slot in progress:
/// it covers at least `w` (once the gateway has been up that long), and less than two slots
/// more than `w` (less than one more when `w` is a whole number of slots).
#[derive(Debug, Clone, Copy)]
pub struct Span {
    oldest: u64,
    now: u64,
    /// From the start of the oldest slot (or the gateway's start) to now.
    pub covered: Duration,
}

impl Span {
    /// The window's beginnings: the span from its oldest slot to each of its slots in turn
    /// (for figures over time, each on all the traffic up to then).
    pub fn prefixes(&self) -> impl Iterator<Item = Span> + '_ {
        (self.oldest..=self.now).map(move |end| Span {
            oldest: self.oldest,
            now: end,
            covered: self.covered,
        })
    }

    /// Whether the slot of `epoch` is one the window reads.
    pub fn contains(&self, epoch: u64) -> bool {
        epoch >= self.oldest && epoch <= self.now
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

/// The rolling figures of one route and side, and its totals since the gateway started.
struct SideWindow {
    slots: OnceLock<Box<[Slot]>>,
    totals: OnceLock<Box<Totals>>,
}

/// Counts since the gateway started: what a plan's guard judges (the traffic since its
/// step began is the difference of two readings).
struct Totals {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

/// A reading of one side's totals.
#[derive(Debug, Clone, PartialEq)]
pub struct Tally {
    pub requests: u64,
    pub errors: u64,
    /// Requests per latency bucket ([`bucket_of`]).
    pub latency: Vec<u64>,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            requests: 0,
            errors: 0,
            latency: vec![0; BUCKETS],
        }
    }
}

impl Tally {
    /// What was counted since `base` (an earlier reading); a reading from before a
    /// restart (larger counts) counts as zero.
    pub fn since(&self, base: &Tally) -> Tally {
        if self.requests < base.requests {
            return self.clone();
        }
        Tally {
            requests: self.requests - base.requests,
            errors: self.errors.saturating_sub(base.errors),
            latency: self
                .latency
                .iter()
                .zip(base.latency.iter().chain(std::iter::repeat(&0)))
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
        }
    }
}

/// The rolling figures of one route, both sides.
pub struct RouteWindow {
    registry: Arc<Registry>,
    sides: [SideWindow; 2],
    /// Distinct sticky keys seen, once a plan asks for them ([`RouteWindow::watch_keys`]).
    keys: OnceLock<Keys>,
}

/// How many bits a key set keeps: one per cohort bucket, so that a key's bucket (computed
/// for its side anyway) is its bit.
const KEY_BITS: usize = 10_000;

/// A set of sticky keys, as the cohort buckets they fall in: its size is estimated by linear
/// counting (Whang et al.), close for up to a few thousand keys.
pub struct KeySet {
    words: Box<[AtomicU64]>,
}

impl KeySet {
    fn new() -> KeySet {
        KeySet {
            words: (0..KEY_BITS.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    #[inline]
    fn insert(&self, bucket: u32) {
        let b = bucket as usize % KEY_BITS;
        let (w, bit) = (&self.words[b / 64], 1u64 << (b % 64));
        // Most keys were seen before: a read, and a write only for a new bit.
        if w.load(Ordering::Relaxed) & bit == 0 {
            w.fetch_or(bit, Ordering::Relaxed);
        }
    }

    fn clear(&self) {
        for w in self.words.iter() {
            w.store(0, Ordering::Relaxed);
        }
    }

    /// The estimated number of distinct keys.
    pub fn estimate(&self) -> u64 {
        let set: u32 = self
            .words
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones())
            .sum();
        let m = KEY_BITS as f64;
        let zero = (m - f64::from(set)).max(1.0);
        (-m * (zero / m).ln()).round() as u64
    }
}

/// The distinct sticky keys a route served since a plan's counts began: on the new side,
/// and in all.
pub struct Keys {
    pub new: KeySet,
    pub all: KeySet,
}

impl Keys {
    /// Starts counting afresh.
    pub fn clear(&self) {
        self.new.clear();
        self.all.clear();
    }
}

impl RouteWindow {
    /// Counts the distinct sticky keys of the route's requests from now on (their cohort
    /// buckets), for a plan's status: the key sets.
    pub fn watch_keys(&self) -> &Keys {
        self.keys.get_or_init(|| Keys {
            new: KeySet::new(),
            all: KeySet::new(),
        })
    }

    /// The key sets, when a plan asked for them.
    pub fn keys(&self) -> Option<&Keys> {
        self.keys.get()
    }

    /// A request whose sticky key fell in `bucket` was served by `side`.
    #[inline]
    pub fn key_seen(&self, side: Side, bucket: u32) {
        if let Some(k) = self.keys.get() {
            k.all.insert(bucket);
            if side == Side::New {
                k.new.insert(bucket);
            }
        }
    }

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
        let bucket = bucket_of(elapsed.as_micros() as u64);
        slot.latency[bucket].fetch_add(1, Ordering::Relaxed);
        let totals = self.sides[side.index()].totals.get_or_init(|| {
            Box::new(Totals {
                requests: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                latency: std::array::from_fn(|_| AtomicU64::new(0)),
            })
        });
        totals.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            totals.errors.fetch_add(1, Ordering::Relaxed);
        }
        totals.latency[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// One side's totals since the gateway started.
    pub fn tally(&self, side: Side) -> Tally {
        let Some(t) = self.sides[side.index()].totals.get() else {
            return Tally::default();
        };
        Tally {
            requests: t.requests.load(Ordering::Relaxed),
            errors: t.errors.load(Ordering::Relaxed),
            latency: t
                .latency
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }

    /// Requests, errors and p99 per slot over `span`, oldest first, one point per slot
    /// (zeros included): seconds from the first slot read (the window's start, or the
    /// gateway's if later), requests, errors, and the slot's p99 in milliseconds (`None`
    /// without requests).
    pub fn series(&self, side: Side, span: &Span) -> Vec<SlotPoint> {
        let reg = &self.registry;
        let (oldest, now) = (span.oldest, span.now);
        let slot_secs = reg.resolution.as_secs_f64();
        let slots = self.sides[side.index()].slots.get();
        (oldest..=now)
            .map(|epoch| {
                let (mut r, mut e) = (0u64, 0u64);
                let mut hist = [0u64; BUCKETS];
                if let Some(slots) = slots {
                    let slot = &slots[(epoch % slots.len() as u64) as usize];
                    if slot.epoch.load(Ordering::Acquire) == epoch {
                        r = u64::from(slot.requests.load(Ordering::Relaxed));
                        e = u64::from(slot.errors.load(Ordering::Relaxed));
                        for (h, b) in hist.iter_mut().zip(&slot.latency) {
                            *h = u64::from(b.load(Ordering::Relaxed));
                        }
                    }
                }
                let total = hist.iter().sum();
                let p99 = percentile(&hist, total, 0.99).map(|us| (us / 10.0).round() / 100.0);
                SlotPoint((epoch - oldest) as f64 * slot_secs, r, e, p99)
            })
            .collect()
    }

    /// The figures of one side over `span`.
    pub fn figures(&self, side: Side, span: &Span) -> SideFigures {
        let Some(slots) = self.sides[side.index()].slots.get() else {
            return SideFigures::from_counts(0, 0, &[0; BUCKETS]);
        };
        let (oldest, now) = (span.oldest, span.now);
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

/// One slot of a side's series, as JSON `[seconds, requests, errors, p99_ms]` (`p99_ms` null
/// for a slot without requests).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SlotPoint(pub f64, pub u64, pub u64, pub Option<f64>);

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
            slots: slot_count(&config),
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
                    sides: std::array::from_fn(|_| SideWindow {
                        slots: OnceLock::new(),
                        totals: OnceLock::new(),
                    }),
                    keys: OnceLock::new(),
                })
            })
            .clone()
    }

    /// How many routes have a window.
    pub fn len(&self) -> usize {
        self.routes.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Forgets the routes not in `names` (after a reload removed or renamed them), so their
    /// memory goes once the last request holding them is done.
    pub fn retain(&self, names: &HashSet<&str>) {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes.retain(|name, _| name == DEFAULT_ROUTE || names.contains(name.as_str()));
    }

    /// The slot of now.
    pub fn epoch_now(&self) -> u64 {
        self.epoch_of(Instant::now())
    }

    /// How many slots are kept.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The slots a window of `window` reads now (see [`Span`]).
    pub fn span(&self, window: Duration) -> Span {
        let since = self.start.elapsed();
        let res = self.resolution.as_millis().max(1);
        let now = (since.as_millis() / res) as u64;
        let full = (window.as_millis().div_ceil(res) as u64).min(self.slots as u64 - 1);
        let oldest = now.saturating_sub(full);
        let slot_start = Duration::from_millis((u128::from(now) * res) as u64);
        let covered = since.saturating_sub(slot_start) + self.resolution * (now - oldest) as u32;
        Span {
            oldest,
            now,
            covered,
        }
    }

    /// The width of one slot.
    pub fn resolution(&self) -> Duration {
        self.resolution
    }

    /// The longest window that can be asked for.
    pub fn retention(&self) -> Duration {
        self.resolution * (self.slots as u32 - 1)
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
    pub series: Option<Vec<SlotPoint>>,
    /// Requests per latency bucket ([`bucket_of`]): what the latency test reads.
    #[serde(skip)]
    pub latency: Vec<u64>,
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
            latency: hist.to_vec(),
        }
    }

    /// The figures of a tally (a plan step's traffic).
    pub fn of_tally(t: &Tally) -> SideFigures {
        let mut hist = [0u64; BUCKETS];
        for (h, n) in hist.iter_mut().zip(&t.latency) {
            *h = *n;
        }
        SideFigures::from_counts(t.requests, t.errors, &hist)
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
        let span = reg.span(Duration::from_secs(1));
        let f = w.figures(Side::New, &span);
        assert_eq!((f.requests, f.errors), (100, 10));
        assert_eq!(w.figures(Side::Legacy, &span).requests, 0);
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
