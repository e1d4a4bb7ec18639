//! The circuit breaker of a new service (`breaker`): by a count of failures or by their
//! share of a window of attempts, then one probe after the cooldown.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::resilience::{BreakerConfig, Trip};

/// What the breaker lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: every request.
    Pass,
    /// Half-open: this request is the one probe (its number, to report its outcome).
    Probe(u64),
    /// Open (or a probe is out): the new share goes to legacy.
    Refuse,
}

pub(super) const CLOSED: u8 = 0;
pub(super) const OPEN: u8 = 1;
pub(super) const HALF_OPEN: u8 = 2;

/// `now + d`, or a century on for a duration that would overflow.
pub fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

/// The attempts of a rate breaker's window, in ten slots (a slot's counts are started afresh
/// by the first attempt of a later slot): counted with atomics, so that a success costs no
/// lock.
struct Calls {
    /// Milliseconds a slot spans.
    slot_ms: u64,
    slots: [CallSlot; 10],
}

#[derive(Default)]
struct CallSlot {
    /// The slot's number (time / `slot_ms`), plus one; 0 for a slot never used.
    epoch: AtomicU64,
    calls: AtomicU64,
    failures: AtomicU64,
}

impl Calls {
    fn new(window: Duration) -> Calls {
        Calls {
            slot_ms: (window.as_millis() as u64 / 10).max(1),
            slots: Default::default(),
        }
    }

    /// Counts an attempt at `ms` (of the breaker's clock).
    fn count(&self, ms: u64, failed: bool) {
        let epoch = ms / self.slot_ms + 1;
        let slot = &self.slots[(epoch % 10) as usize];
        let seen = slot.epoch.load(Ordering::Acquire);
        if seen != epoch
            && slot
                .epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.calls.store(0, Ordering::Relaxed);
            slot.failures.store(0, Ordering::Relaxed);
        }
        slot.calls.fetch_add(1, Ordering::Relaxed);
        if failed {
            slot.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Attempts and failures of the window ending at `ms`.
    fn window(&self, ms: u64) -> (u64, u64) {
        let now = ms / self.slot_ms + 1;
        self.slots
            .iter()
            .filter(|s| {
                let e = s.epoch.load(Ordering::Acquire);
                e != 0 && e + 10 > now && e <= now
            })
            .fold((0, 0), |(c, f), s| {
                (
                    c + s.calls.load(Ordering::Relaxed),
                    f + s.failures.load(Ordering::Relaxed),
                )
            })
    }

    fn clear(&self) {
        for s in &self.slots {
            s.epoch.store(0, Ordering::Release);
        }
    }
}

/// A circuit breaker (`breaker`): opens after `failures` failed attempts within `window`, or
/// once `failure_rate` of at least `min_requests` attempts within it failed; after
/// `cooldown`, one probe decides whether it closes or opens again.
pub struct Breaker {
    /// The service's name, for the log.
    service: Box<str>,
    config: BreakerConfig,
    /// The attempts of the window, for a rate breaker.
    calls: Option<Calls>,
    /// The clock of `calls`.
    born: Instant,
    /// `CLOSED`, `OPEN` or `HALF_OPEN`, readable without the lock.
    state: AtomicU8,
    inner: Mutex<BreakerInner>,
    /// How long a probe may take before another is let through (its client may have left).
    probe_timeout: Duration,
}

struct BreakerInner {
    failures: VecDeque<Instant>,
    open_until: Instant,
    probe_since: Instant,
    /// The number of the probe out; a report from an older one is ignored.
    probe: u64,
}

impl Breaker {
    pub fn new(service: &str, config: BreakerConfig, probe_timeout: Duration) -> Breaker {
        let now = Instant::now();
        Breaker {
            service: service.into(),
            config,
            calls: matches!(config.trip, Trip::Rate { .. }).then(|| Calls::new(config.window)),
            born: now,
            state: AtomicU8::new(CLOSED),
            inner: Mutex::new(BreakerInner {
                failures: VecDeque::new(),
                open_until: now,
                probe_since: now,
                probe: 0,
            }),
            probe_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// 0 closed, 1 open, 2 half-open (the metric's value). Open past its cooldown, it is
    /// half-open: the next request decides, whether or not one has come yet.
    pub fn state(&self, now: Instant) -> u8 {
        match self.state.load(Ordering::Relaxed) {
            CLOSED => CLOSED,
            OPEN if now >= self.lock().open_until => HALF_OPEN,
            s => s,
        }
    }

    /// Open within its cooldown: the service failed too often to be sent traffic (a
    /// half-open breaker is waiting to learn, not failing).
    pub fn is_open(&self, now: Instant) -> bool {
        self.state(now) == OPEN
    }

    /// Whether a request may go to the service now; `probe: false` for a request whose
    /// outcome will not be reported (an upgrade), which never takes the probe.
    pub fn admit(&self, now: Instant, probe: bool) -> Admit {
        if self.state.load(Ordering::Relaxed) == CLOSED {
            return Admit::Pass;
        }
        let mut inner = self.lock();
        let due = match self.state.load(Ordering::Relaxed) {
            CLOSED => return Admit::Pass,
            OPEN => now >= inner.open_until,
            _ => now >= later(inner.probe_since, self.probe_timeout),
        };
        if !due || !probe {
            return Admit::Refuse;
        }
        self.state.store(HALF_OPEN, Ordering::Relaxed);
        inner.probe_since = now;
        inner.probe += 1;
        Admit::Probe(inner.probe)
    }

    /// The outcome of an attempt on the service: `Some(ok)`, or `None` when it gave no
    /// verdict (its client failed); `probe`, the probe's number if it was one.
    pub fn record(&self, ok: Option<bool>, probe: Option<u64>, now: Instant) {
        if ok == Some(true) && probe.is_none() {
            if let Some(calls) = &self.calls
                && self.state.load(Ordering::Relaxed) == CLOSED
            {
                calls.count(self.ms(now), false);
            }
            return;
        }
        let mut inner = self.lock();
        if let Some(n) = probe {
            if n != inner.probe || self.state.load(Ordering::Relaxed) != HALF_OPEN {
                return;
            }
            match ok {
                Some(true) => {
                    inner.failures.clear();
                    self.state.store(CLOSED, Ordering::Relaxed);
                    tracing::info!(service = %self.service, "circuit breaker closed: the probe succeeded");
                }
                Some(false) => {
                    inner.open_until = later(now, self.config.cooldown);
                    self.state.store(OPEN, Ordering::Relaxed);
                    tracing::warn!(service = %self.service, "circuit breaker open again: the probe failed");
                }
                // No verdict: the next request may probe at once.
                None => inner.probe_since = now.checked_sub(self.probe_timeout).unwrap_or(now),
            }
            return;
        }
        if ok.is_none() || self.state.load(Ordering::Relaxed) != CLOSED {
            return;
        }
        let trips = match (self.config.trip, &self.calls) {
            (
                Trip::Rate {
                    rate_bp,
                    min_requests,
                },
                Some(calls),
            ) => {
                let ms = self.ms(now);
                calls.count(ms, true);
                let (n, failed) = calls.window(ms);
                n >= u64::from(min_requests) && failed * 10_000 >= u64::from(rate_bp) * n
            }
            (trip, _) => {
                let window = self.config.window;
                while inner
                    .failures
                    .front()
                    .is_some_and(|t| now.saturating_duration_since(*t) > window)
                {
                    inner.failures.pop_front();
                }
                inner.failures.push_back(now);
                let limit = match trip {
                    Trip::Failures(n) => n,
                    Trip::Rate { .. } => 1,
                };
                inner.failures.len() >= limit as usize
            }
        };
        if trips {
            inner.failures.clear();
            if let Some(calls) = &self.calls {
                calls.clear();
            }
            inner.open_until = later(now, self.config.cooldown);
            self.state.store(OPEN, Ordering::Relaxed);
            tracing::warn!(
                service = %self.service,
                trip = %describe(self.config.trip),
                "circuit breaker open: its share goes to legacy"
            );
        }
    }

    /// Milliseconds since the breaker began (the clock of its rate window).
    fn ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.born).as_millis()).unwrap_or(u64::MAX)
    }
}

/// What opens a breaker, in words for the log.
fn describe(trip: Trip) -> String {
    match trip {
        Trip::Failures(n) => format!("{n} failures within its window"),
        Trip::Rate {
            rate_bp,
            min_requests,
        } => format!(
            "{}% of at least {min_requests} attempts failed within its window",
            crate::config::format_percent(rate_bp)
        ),
    }
}
