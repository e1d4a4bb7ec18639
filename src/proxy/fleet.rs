//! The instances of services that need more than one fixed address (docs/resilience.md):
//! several `urls`, host names looked up again every `resolve`, active health checks,
//! passive outlier detection, and the circuit breaker of a new service.
//!
//! A [`ServiceState`] is kept across reloads while its settings stay the same (health,
//! ejections and breaker state survive a reload), in the process's [`Fleet`]. Its two tasks, the resolver
//! and the health checker, hold it weakly and end when the last table using it is gone.
//! A service with one URL whose host is an IP address and none of `health`, `breaker` or
//! `outlier` has no state here: its requests go straight to its one address, at no cost.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{HeaderValue, Request, header};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};

use super::pool::{self, Dial, PoolKey};
use super::send::Target;
use super::upload::RequestBody;
use crate::config::resilience::{
    Balance, BreakerConfig, DEFAULT_RESOLVE, HealthConfig, OutlierConfig, Trip,
};
use crate::config::{Service, bare_host};

/// One instance of a service: an address, its pool of connections and its health.
pub struct Instance {
    /// `ip:port` (or `host:port` until the host is looked up): the metric label and the
    /// access log's `upstream`.
    pub label: Box<str>,
    pub dial: Dial,
    pub pool_key: PoolKey,
    /// The instance's own authority, as `Host` for `host_header: upstream`.
    pub host_value: HeaderValue,
    healthy: AtomicBool,
    /// Health-check streaks (only the checker writes them).
    passes: AtomicU32,
    fails: AtomicU32,
    /// Requests under way on it (`least_connections`).
    in_flight: AtomicUsize,
    /// Outlier detection: failed attempts in a row, ejections in a row (no success
    /// between), and when the last ejection began and ends (ms on the service's clock; 0:
    /// never ejected).
    streak: AtomicU32,
    ejections: AtomicU32,
    out_since: AtomicU64,
    out_until: AtomicU64,
}

impl Instance {
    fn new(dial: Dial, label: String) -> Arc<Instance> {
        Arc::new(Instance {
            host_value: HeaderValue::from_str(dial.authority.as_str())
                .expect("an authority is a valid header value"),
            pool_key: PoolKey::of(&dial),
            label: label.into(),
            dial,
            healthy: AtomicBool::new(true),
            passes: AtomicU32::new(0),
            fails: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
            streak: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            out_since: AtomicU64::new(0),
            out_until: AtomicU64::new(0),
        })
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether outlier detection has it out at `now_ms` (the service's clock).
    fn ejected(&self, now_ms: u64) -> bool {
        now_ms < self.out_until.load(Ordering::Relaxed)
    }

    /// Aims a request at this instance: with `host_header: upstream` (`host_upstream`),
    /// its own authority as `Host` (HTTP/1.1) or `:authority` (HTTP/2).
    pub fn aim(&self, head: &mut http::request::Parts, host_upstream: bool) {
        if !host_upstream {
            return;
        }
        if self.dial.protocol.is_http2() {
            let mut parts = head.uri.clone().into_parts();
            if parts.scheme.is_some() {
                parts.authority = Some(self.dial.authority.clone());
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    head.uri = uri;
                }
            }
        } else {
            head.headers.insert(header::HOST, self.host_value.clone());
        }
    }

    /// Where an attempt on this instance goes.
    pub fn target(&self, timeout: Duration, connect_timeout: Duration) -> Target<'_> {
        Target {
            key: self.pool_key,
            dial: &self.dial,
            timeout,
            connect_timeout,
        }
    }
}

/// A request under way on an instance; dropped when the request ends.
pub struct InFlight(Arc<Instance>);

impl InFlight {
    pub fn instance(&self) -> &Arc<Instance> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

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

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

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

/// A service's instances, health and breaker.
pub struct ServiceState {
    pub name: Box<str>,
    instances: ArcSwap<Vec<Arc<Instance>>>,
    balance: Balance,
    next: AtomicUsize,
    pub breaker: Option<Breaker>,
    health: Option<HealthConfig>,
    outlier: Option<OutlierConfig>,
    /// One ejection decided at a time (they are rare; the cap counts the others).
    ejecting: Mutex<()>,
    /// The origin of the instances' ejection times.
    born: Instant,
    resolve: Duration,
    /// The URLs' authorities, as written.
    authorities: Vec<http::uri::Authority>,
    /// Protocol, TLS and idle timeout of every instance.
    template: Dial,
    /// Creation order: the newest state of a name wins in the metrics.
    seq: u64,
}

/// The instance picked for an attempt.
pub struct Picked {
    pub guard: InFlight,
    /// Every instance was unhealthy: this one was taken anyway (legacy has nowhere else).
    pub all_unhealthy: bool,
}

impl ServiceState {
    /// The service as `GET /admin/services` shows it: its instances (health, outlier
    /// ejection, requests under way) and its breaker.
    pub fn view(&self) -> serde_json::Value {
        let now = Instant::now();
        let now_ms = self.ms(now);
        let instances: Vec<serde_json::Value> = self
            .instances
            .load()
            .iter()
            .map(|i| {
                serde_json::json!({
                    "instance": &*i.label,
                    "healthy": i.healthy(),
                    "ejected": self.outlier.is_some() && i.ejected(now_ms),
                    "in_flight": i.in_flight.load(Ordering::Relaxed),
                })
            })
            .collect();
        let breaker = self.breaker.as_ref().map(|b| {
            serde_json::json!({
                "state": match b.state(now) {
                    CLOSED => "closed",
                    OPEN => "open",
                    _ => "half_open",
                },
            })
        });
        serde_json::json!({
            "health_checks": self.health.is_some(),
            "outlier_detection": self.outlier.is_some(),
            "instances": instances,
            "breaker": breaker,
        })
    }

    /// Whether some instance is healthy.
    pub fn available(&self) -> bool {
        self.instances.load().iter().any(|i| i.healthy())
    }

    /// An instance for the next attempt, other than `avoid` when there is another; `None`
    /// only when the service has no instance at all.
    pub fn pick(&self, avoid: Option<&Instance>) -> Option<Picked> {
        let list = self.instances.load();
        let now_ms = self.outlier.map(|_| self.ms(Instant::now()));
        // Serving: healthy and not ejected (one look at each: the checker may change it).
        let serving = |i: &&Arc<Instance>| i.healthy() && now_ms.is_none_or(|m| !i.ejected(m));
        let usable: Vec<&Arc<Instance>> = list
            .iter()
            .filter(serving)
            .filter(|i| avoid.is_none_or(|a| !std::ptr::eq(a, &***i)))
            .collect();
        let (pool, all_unhealthy): (Vec<&Arc<Instance>>, bool) = if !usable.is_empty() {
            (usable, false)
        } else {
            // Only the instance to avoid serves: it again; else an ejected healthy one;
            // else, nothing healthy: any instance, in turn.
            let fewer = |keep: &dyn Fn(&&Arc<Instance>) -> bool| -> Vec<&Arc<Instance>> {
                list.iter().filter(|i| keep(i)).collect()
            };
            let serving = fewer(&serving);
            if !serving.is_empty() {
                (serving, false)
            } else {
                let healthy = fewer(&|i| i.healthy());
                if healthy.is_empty() {
                    (list.iter().collect(), true)
                } else {
                    (healthy, false)
                }
            }
        };
        let chosen = match (self.balance, pool.len()) {
            (_, 0) => return None,
            (Balance::LeastConnections, n) if n > 1 && !all_unhealthy => {
                // Two distinct instances drawn at random; the less busy one serves.
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let (a, b) = (pool[a], pool[b]);
                if b.in_flight.load(Ordering::Relaxed) < a.in_flight.load(Ordering::Relaxed) {
                    b
                } else {
                    a
                }
            }
            (_, n) => pool[self.next.fetch_add(1, Ordering::Relaxed) % n],
        }
        .clone();
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Picked {
            guard: InFlight(chosen),
            all_unhealthy,
        })
    }

    /// Whether attempts are reported to it (a breaker, outlier detection).
    pub fn watches(&self) -> bool {
        self.breaker.is_some() || self.outlier.is_some()
    }

    /// Milliseconds since the state began, the clock of its instances' ejections.
    fn ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.born).as_millis()).unwrap_or(u64::MAX)
    }

    /// Tells the breaker and outlier detection how an attempt on `instance`, begun at
    /// `began`, went; `ok` is `None` when the client's own failure says nothing of the
    /// service; `probe` is the breaker's probe number when the attempt was its probe.
    pub fn report(
        &self,
        instance: Option<&Instance>,
        ok: Option<bool>,
        probe: Option<u64>,
        began: Instant,
        now: Instant,
    ) {
        if let Some(b) = &self.breaker {
            b.record(ok, probe, now);
        }
        let (Some(outlier), Some(i), Some(ok)) = (self.outlier, instance, ok) else {
            return;
        };
        // An attempt begun before the instance's last ejection tells nothing new: that
        // ejection acted on what such attempts saw.
        if self.ms(began) < i.out_since.load(Ordering::Relaxed) {
            return;
        }
        if ok {
            // Written only when set: a success costs a read.
            if i.streak.load(Ordering::Relaxed) != 0 {
                i.streak.store(0, Ordering::Relaxed);
            }
            if i.ejections.load(Ordering::Relaxed) != 0 {
                i.ejections.store(0, Ordering::Relaxed);
            }
        } else if i.streak.fetch_add(1, Ordering::Relaxed) + 1 >= outlier.consecutive {
            self.eject(i, outlier, now);
        }
    }

    /// Takes `i` out, unless the cap is reached or it is the last instance serving (its
    /// streak then stays one short: its next failure asks again).
    fn eject(&self, i: &Instance, outlier: OutlierConfig, now: Instant) {
        let _one = self.ejecting.lock().unwrap_or_else(|p| p.into_inner());
        let now_ms = self.ms(now);
        if i.ejected(now_ms) {
            // Failures of requests it served while out, every healthy instance being out.
            i.streak.store(0, Ordering::Relaxed);
            return;
        }
        let list = self.instances.load();
        let out = list.iter().filter(|x| x.ejected(now_ms)).count();
        let cap = (list.len() * outlier.max_ejected_percent as usize / 100).max(1);
        let serving = list
            .iter()
            .filter(|x| x.healthy() && !x.ejected(now_ms))
            .count();
        if out >= cap || (i.healthy() && serving <= 1) {
            i.streak
                .store(outlier.consecutive.saturating_sub(1), Ordering::Relaxed);
            return;
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        // Ejections in a row count up, unless it stayed in as long as the longest one.
        let last_end = i.out_until.load(Ordering::Relaxed);
        let longest = ms(outlier.ejection.saturating_mul(OutlierConfig::MAX_MULTIPLE));
        let before = if last_end != 0 && now_ms.saturating_sub(last_end) >= longest {
            0
        } else {
            i.ejections.load(Ordering::Relaxed)
        };
        let times = (before + 1).min(OutlierConfig::MAX_MULTIPLE);
        i.ejections.store(times, Ordering::Relaxed);
        let span = outlier.ejection.saturating_mul(times);
        i.out_since.store(now_ms, Ordering::Relaxed);
        i.out_until
            .store(now_ms.saturating_add(ms(span)), Ordering::Relaxed);
        i.streak.store(0, Ordering::Relaxed);
        tracing::warn!(
            service = %self.name,
            instance = %i.label,
            failures = outlier.consecutive,
            out_for = ?span,
            "instance ejected: its requests failed in a row"
        );
    }

    /// Replaces the instances with those at `addrs`, keeping the state of those that stay.
    fn set_addresses(&self, addrs: &[(http::uri::Authority, SocketAddr)]) {
        let old = self.instances.load();
        let list: Vec<Arc<Instance>> = addrs
            .iter()
            .map(|(authority, addr)| {
                old.iter()
                    .find(|i| i.dial.addr == Some(*addr) && i.dial.authority == *authority)
                    .cloned()
                    .unwrap_or_else(|| {
                        let mut dial = self.template.clone();
                        dial.authority = authority.clone();
                        dial.addr = Some(*addr);
                        dial.tls = tls_for(&self.template, authority);
                        Instance::new(dial, addr.to_string())
                    })
            })
            .collect();
        let changed =
            list.len() != old.len() || list.iter().zip(old.iter()).any(|(a, b)| !Arc::ptr_eq(a, b));
        if changed {
            tracing::info!(
                service = %self.name,
                instances = ?list.iter().map(|i| &*i.label).collect::<Vec<_>>(),
                "instances changed"
            );
            self.instances.store(Arc::new(list));
        }
    }
}

/// The TLS settings of an instance: the service's, with the instance's host as the name
/// its certificate must carry.
fn tls_for(
    template: &Dial,
    authority: &http::uri::Authority,
) -> Option<(
    Arc<rustls::ClientConfig>,
    rustls_pki_types::ServerName<'static>,
    u64,
)> {
    template.tls.as_ref().map(|(config, name, trust)| {
        let name = rustls_pki_types::ServerName::try_from(bare_host(authority).to_string())
            .unwrap_or_else(|_| name.clone());
        (config.clone(), name, *trust)
    })
}

/// The process's service states, by their settings, and the metrics that describe them.
pub struct Fleet {
    states: Mutex<HashMap<String, Weak<ServiceState>>>,
    seq: AtomicU64,
    /// Where the states' tasks run (a reload compiles its table on a thread of its own).
    runtime: Option<tokio::runtime::Handle>,
    /// One scrape at a time fills the gauges below.
    collecting: Mutex<()>,
    healthy: IntGaugeVec,
    ejected: IntGaugeVec,
    breaker: IntGaugeVec,
}

impl Fleet {
    pub fn new() -> Arc<Fleet> {
        Arc::new(Fleet {
            states: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            runtime: tokio::runtime::Handle::try_current().ok(),
            collecting: Mutex::new(()),
            healthy: IntGaugeVec::new(
                Opts::new(
                    "strangler_instance_healthy",
                    "1 while an instance of a service passes its health checks (or has none), 0 while it does not",
                ),
                &["service", "instance"],
            )
            .expect("static metric definition is valid"),
            ejected: IntGaugeVec::new(
                Opts::new(
                    "strangler_instance_ejected",
                    "1 while outlier detection keeps an instance of a service out (its requests failed in a row), 0 otherwise; services with outlier only",
                ),
                &["service", "instance"],
            )
            .expect("static metric definition is valid"),
            breaker: IntGaugeVec::new(
                Opts::new(
                    "strangler_breaker_state",
                    "A service's circuit breaker: 0 closed, 1 open, 2 half-open",
                ),
                &["service"],
            )
            .expect("static metric definition is valid"),
        })
    }

    /// The state of service `s` (`dial` being its first URL's), shared with the tables that
    /// have it with the same settings; its tasks are started when it is new.
    pub fn service(&self, s: &Service, dial: &Dial) -> Arc<ServiceState> {
        let key = format!(
            "{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            s.name,
            s.timeout,
            s.authorities,
            s.protocol,
            dial.tls.as_ref().map(|t| t.2),
            s.balance,
            s.resolve,
            s.health,
            s.breaker,
            s.outlier,
            s.connect_timeout,
            s.idle_timeout,
        );
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.retain(|_, w| w.strong_count() > 0);
        if let Some(state) = states.get(&key).and_then(Weak::upgrade) {
            return state;
        }
        // Until a host name is looked up, its instance connects by name.
        let instances = s
            .authorities
            .iter()
            .map(|a| {
                let mut d = dial.clone();
                d.authority = a.clone();
                d.tls = tls_for(dial, a);
                d.addr = bare_host(a)
                    .parse::<std::net::IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, a.port_u16().unwrap_or(80)));
                let label = d.addr.map_or_else(|| a.to_string(), |x| x.to_string());
                Instance::new(d, label)
            })
            .collect();
        let state = Arc::new(ServiceState {
            name: s.name.as_str().into(),
            instances: ArcSwap::from_pointee(instances),
            balance: s.balance,
            next: AtomicUsize::new(0),
            breaker: s
                .breaker
                .map(|b| Breaker::new(&s.name, b, s.connect_timeout.saturating_add(s.timeout))),
            health: s.health.clone(),
            outlier: s.outlier,
            ejecting: Mutex::new(()),
            born: Instant::now(),
            resolve: s.resolve.unwrap_or(DEFAULT_RESOLVE),
            authorities: s.authorities.clone(),
            template: dial.clone(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
        });
        states.insert(key, Arc::downgrade(&state));
        if let Some(rt) = self
            .runtime
            .clone()
            .or_else(|| tokio::runtime::Handle::try_current().ok())
        {
            let names = state
                .authorities
                .iter()
                .any(|a| bare_host(a).parse::<std::net::IpAddr>().is_err());
            if names {
                rt.spawn(resolve_every(Arc::downgrade(&state)));
            }
            if state.health.is_some() {
                rt.spawn(check_every(Arc::downgrade(&state)));
            }
        }
        state
    }

    fn live(&self) -> Vec<Arc<ServiceState>> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let mut live: Vec<Arc<ServiceState>> = states.values().filter_map(Weak::upgrade).collect();
        // Newest first: a name's newest state is the one reported.
        live.sort_by_key(|s| std::cmp::Reverse(s.seq));
        live
    }
}

/// The fleet's metrics (`strangler_instance_healthy`, `strangler_instance_ejected`,
/// `strangler_breaker_state`),
/// computed from the live states whenever they are scraped: a state that is gone leaves no
/// series behind.
pub struct FleetMetrics(pub Arc<Fleet>);

impl Collector for FleetMetrics {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.0.healthy.desc();
        d.extend(self.0.ejected.desc());
        d.extend(self.0.breaker.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.0.collect()
    }
}

impl Fleet {
    fn collect(&self) -> Vec<MetricFamily> {
        let _one = self.collecting.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        self.healthy.reset();
        self.ejected.reset();
        self.breaker.reset();
        let mut seen = std::collections::HashSet::new();
        for s in self.live() {
            if !seen.insert(s.name.clone()) {
                continue;
            }
            let now_ms = s.ms(now);
            for i in s.instances.load().iter() {
                let labels = [&*s.name, &*i.label];
                self.healthy
                    .with_label_values(&labels)
                    .set(i64::from(i.healthy()));
                if s.outlier.is_some() {
                    self.ejected
                        .with_label_values(&labels)
                        .set(i64::from(i.ejected(now_ms)));
                }
            }
            if let Some(b) = &s.breaker {
                self.breaker
                    .with_label_values(&[&*s.name])
                    .set(i64::from(b.state(now)));
            }
        }
        let mut families = self.healthy.collect();
        families.extend(self.ejected.collect());
        families.extend(self.breaker.collect());
        families
    }
}

/// Looks the service's host names up every `resolve`, at once first.
async fn resolve_every(state: Weak<ServiceState>) {
    loop {
        let Some(s) = state.upgrade() else { return };
        let every = s.resolve;
        let mut addrs = Vec::new();
        let mut failed = false;
        for a in &s.authorities {
            let port = a.port_u16().unwrap_or(80);
            match super::resolve::lookup(bare_host(a), port).await {
                Ok(found) => addrs.extend(found.into_iter().map(|x| (a.clone(), x))),
                Err(e) => {
                    tracing::warn!(service = %s.name, host = %a, error = %e, "cannot look up an instance's host name: keeping the addresses known");
                    failed = true;
                }
            }
        }
        // A failed lookup keeps what was known rather than empty the service.
        if !failed && !addrs.is_empty() {
            s.set_addresses(&addrs);
        }
        drop(s);
        tokio::time::sleep(every).await;
    }
}

/// Checks every instance every `interval`.
async fn check_every(state: Weak<ServiceState>) {
    loop {
        let Some(s) = state.upgrade() else { return };
        let health = s.health.clone().expect("only started with health checks");
        let list = s.instances.load_full();
        let name: Arc<str> = s.name.clone().into();
        drop(s);
        let mut checks = tokio::task::JoinSet::new();
        for i in list.iter() {
            let (i, health, name) = (i.clone(), health.clone(), name.clone());
            checks.spawn(async move { check(&name, &i, &health).await });
        }
        while checks.join_next().await.is_some() {}
        tokio::time::sleep(health.interval).await;
    }
}

/// One health check of an instance; updates its streaks and health.
async fn check(service: &str, instance: &Instance, health: &HealthConfig) {
    let mut req = Request::new(RequestBody::empty());
    let uri = if instance.dial.protocol.is_http2() {
        let scheme = if instance.dial.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}{}", instance.dial.authority, health.path)
    } else {
        health.path.clone()
    };
    let Ok(uri) = uri.parse() else { return };
    *req.uri_mut() = uri;
    if !instance.dial.protocol.is_http2() {
        req.headers_mut()
            .insert(header::HOST, instance.host_value.clone());
    }
    req.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("strangler-health-check"),
    );
    let outcome = tokio::time::timeout(
        health.timeout,
        pool::probe(&instance.dial, req, pool::Limit::of(health.timeout)),
    )
    .await;
    let passed = matches!(&outcome, Ok(Ok(status)) if status.is_success());
    if passed {
        instance.fails.store(0, Ordering::Relaxed);
        let passes = instance.passes.fetch_add(1, Ordering::Relaxed) + 1;
        if !instance.healthy() && passes >= health.healthy_after {
            instance.healthy.store(true, Ordering::Relaxed);
            tracing::info!(service, instance = %instance.label, "instance healthy again");
        }
    } else {
        instance.passes.store(0, Ordering::Relaxed);
        let fails = instance.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if instance.healthy() && fails >= health.unhealthy_after {
            instance.healthy.store(false, Ordering::Relaxed);
            let why = match outcome {
                Ok(Ok(status)) => format!("answered {status}"),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {:?}", health.timeout),
            };
            tracing::warn!(service, instance = %instance.label, why, "instance unhealthy: it gets no traffic");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service of `n` instances with outlier detection (2 failures in a row, 10 s out).
    fn outlying(n: usize, max_ejected_percent: u32) -> Arc<ServiceState> {
        let urls: Vec<String> = (0..n)
            .map(|i| format!("http://127.0.0.1:{}", 9100 + i))
            .collect();
        let yaml = format!(
            "listen: 127.0.0.1:8080\nlegacy: {{url: http://127.0.0.1:9001}}\nservices:\n  s:\n    urls: [{}]\n    outlier: {{consecutive: 2, ejection: 10s, max_ejected_percent: {max_ejected_percent}}}\nroutes: []\n",
            urls.join(", ")
        );
        let config = crate::config::Config::parse(&yaml, std::path::Path::new("t.yaml")).unwrap();
        let s = config.upstream(1);
        Fleet::new().service(s, &super::super::table::dial(s))
    }

    fn fail(s: &ServiceState, i: &Instance, at: Instant) {
        s.report(Some(i), Some(false), None, at, at);
    }

    fn succeed(s: &ServiceState, i: &Instance, at: Instant) {
        s.report(Some(i), Some(true), None, at, at);
    }

    /// The labels of the instances picked `n` times in a row.
    fn picks(s: &ServiceState, n: usize) -> std::collections::BTreeSet<String> {
        (0..n)
            .map(|_| s.pick(None).unwrap().guard.instance().label.to_string())
            .collect()
    }

    #[test]
    fn failures_in_a_row_eject_an_instance_for_longer_each_time_and_a_success_forgives() {
        let s = outlying(3, 50);
        let list = s.instances.load_full();
        let (a, t) = (&list[0], s.born);
        fail(&s, a, t);
        succeed(&s, a, t);
        fail(&s, a, t);
        assert!(!a.ejected(s.ms(t)), "a success between resets the streak");
        fail(&s, a, t);
        assert!(a.ejected(s.ms(t)));
        assert!(
            !picks(&s, 30).contains(&*a.label),
            "an ejected instance gets nothing"
        );
        let back = t + Duration::from_secs(10);
        assert!(!a.ejected(s.ms(back)), "back after 10 s");
        // Ejected again with no success between: 20 s.
        fail(&s, a, back);
        fail(&s, a, back);
        assert!(a.ejected(s.ms(back + Duration::from_secs(19))));
        assert!(!a.ejected(s.ms(back + Duration::from_secs(20))));
        // A success forgives: 10 s again.
        let later = back + Duration::from_secs(20);
        succeed(&s, a, later);
        fail(&s, a, later);
        fail(&s, a, later);
        assert!(!a.ejected(s.ms(later + Duration::from_secs(10))));
        // The client's own failure says nothing.
        for _ in 0..5 {
            let at = later + Duration::from_secs(10);
            s.report(Some(a), None, None, at, at);
        }
        assert_eq!(a.streak.load(Ordering::Relaxed), 0);
    }

    /// A service of `n` instances at `max_ejected_percent` whose instances all fail twice
    /// in a row: how many are out, and how many distinct ones 30 picks reach.
    fn all_failing(n: usize, max_ejected_percent: u32) -> (usize, usize) {
        let s = outlying(n, max_ejected_percent);
        let list = s.instances.load_full();
        for i in list.iter() {
            fail(&s, i, s.born);
            fail(&s, i, s.born);
        }
        let out = list.iter().filter(|i| i.ejected(s.ms(s.born))).count();
        (out, picks(&s, 30).len())
    }

    #[test]
    fn ejections_stop_at_the_cap_and_never_take_the_last_instance() {
        // Three instances at 50%: one out at most.
        assert_eq!(all_failing(3, 50), (1, 2));
        // At 100%, two of three, never the third.
        assert_eq!(all_failing(3, 100), (2, 1));
        // A lone instance is never ejected (that is the breaker's work).
        assert_eq!(all_failing(1, 100), (0, 1));
        // A share that rounds down to none still lets one out (of two or more).
        assert_eq!(all_failing(3, 10), (1, 2));
    }

    /// How long `i` is out when ejected at `at`, in seconds.
    fn out_for(s: &ServiceState, i: &Instance, at: Instant) -> u64 {
        fail(s, i, at);
        fail(s, i, at);
        assert!(i.ejected(s.ms(at)));
        (i.out_until.load(Ordering::Relaxed) - s.ms(at)) / 1000
    }

    #[test]
    fn ejections_in_a_row_grow_to_ten_times_and_start_over_after_a_long_stay() {
        let s = outlying(3, 50);
        let a = s.instances.load_full()[0].clone();
        let mut at = s.born;
        let mut spans = Vec::new();
        for _ in 0..12 {
            let span = out_for(&s, &a, at);
            spans.push(span);
            at += Duration::from_secs(span);
        }
        assert_eq!(
            spans,
            [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 100, 100],
            "10 s more each time, up to ten times"
        );
        // In for as long as the longest ejection since the last one ended: 10 s again.
        at += Duration::from_secs(100);
        assert_eq!(out_for(&s, &a, at), 10);
    }

    #[test]
    fn reports_of_attempts_begun_before_an_ejection_are_ignored() {
        let s = outlying(3, 50);
        let a = s.instances.load_full()[0].clone();
        let t = s.born + Duration::from_secs(1);
        assert_eq!(out_for(&s, &a, t), 10);
        let back = t + Duration::from_secs(10);
        // Two failures of requests sent before the ejection, reported after it: nothing.
        for _ in 0..2 {
            s.report(Some(&a), Some(false), None, s.born, back);
        }
        assert!(!a.ejected(s.ms(back)));
        assert_eq!(a.streak.load(Ordering::Relaxed), 0);
        // Nor does an old success forgive: the next ejection is 20 s.
        s.report(Some(&a), Some(true), None, s.born, back);
        assert_eq!(out_for(&s, &a, back), 20);
    }

    #[test]
    fn an_ejected_instance_serves_when_no_other_healthy_one_can() {
        let s = outlying(3, 50);
        let list = s.instances.load_full();
        let t = s.born;
        assert_eq!(out_for(&s, &list[0], t), 10);
        // The checks then take the other two out: the ejected one serves, not none.
        list[1].healthy.store(false, Ordering::Relaxed);
        list[2].healthy.store(false, Ordering::Relaxed);
        let picked = s.pick(None).unwrap();
        assert!(!picked.all_unhealthy);
        assert_eq!(picked.guard.instance().label, list[0].label);
    }

    fn breaker() -> Breaker {
        Breaker::new(
            "s",
            BreakerConfig {
                trip: Trip::Failures(3),
                window: Duration::from_secs(10),
                cooldown: Duration::from_secs(30),
            },
            Duration::from_secs(5),
        )
    }

    #[test]
    fn opens_on_failures_within_the_window_only() {
        let b = breaker();
        let t = Instant::now();
        let fail = |at: u64| b.record(Some(false), None, t + Duration::from_secs(at));
        fail(0);
        fail(1);
        // The first two are out of the window by the third.
        fail(12);
        fail(13);
        let at = t + Duration::from_secs(13);
        assert_eq!(b.admit(at, true), Admit::Pass);
        assert_eq!(b.state(at), CLOSED);
        fail(14);
        let at = t + Duration::from_secs(15);
        assert_eq!(b.state(at), OPEN);
        assert!(b.is_open(at));
        assert_eq!(b.admit(at, true), Admit::Refuse);
    }

    #[test]
    fn one_probe_after_the_cooldown_decides() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.record(Some(false), None, t);
        }
        let after = t + Duration::from_secs(30);
        // Past the cooldown it reads half-open, and fails no guard, before any request.
        assert_eq!(b.state(after), HALF_OPEN);
        assert!(!b.is_open(after));
        // An upgrade never takes the probe.
        assert_eq!(b.admit(after, false), Admit::Refuse);
        let Admit::Probe(first) = b.admit(after, true) else {
            panic!("a probe")
        };
        // Only one probe at a time.
        assert_eq!(b.admit(after, true), Admit::Refuse);
        b.record(Some(false), Some(first), after);
        assert_eq!(b.state(after), OPEN);
        assert_eq!(b.admit(after + Duration::from_secs(1), true), Admit::Refuse);
        let later = after + Duration::from_secs(30);
        let Admit::Probe(second) = b.admit(later, true) else {
            panic!("a probe")
        };
        // A report from the first probe, late, changes nothing.
        b.record(Some(true), Some(first), later);
        assert_eq!(b.state(later), HALF_OPEN);
        b.record(Some(true), Some(second), later);
        assert_eq!(b.state(later), CLOSED);
        assert_eq!(b.admit(later, true), Admit::Pass);
    }

    #[test]
    fn a_probe_without_a_verdict_frees_the_slot_and_one_that_never_reports_is_replaced() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.record(Some(false), None, t);
        }
        let after = t + Duration::from_secs(30);
        let Admit::Probe(n) = b.admit(after, true) else {
            panic!("a probe")
        };
        // Its client left: no verdict, the breaker stays half-open, the next may probe.
        b.record(None, Some(n), after);
        assert_eq!(b.state(after), HALF_OPEN);
        let Admit::Probe(_) = b.admit(after, true) else {
            panic!("a probe")
        };
        assert_eq!(b.admit(after + Duration::from_secs(4), true), Admit::Refuse);
        assert!(matches!(
            b.admit(after + Duration::from_secs(5), true),
            Admit::Probe(_)
        ));
    }

    #[test]
    fn a_cooldown_beyond_any_clock_does_not_panic() {
        let b = Breaker::new(
            "s",
            BreakerConfig {
                trip: Trip::Failures(1),
                window: Duration::from_secs(10),
                cooldown: Duration::MAX,
            },
            Duration::MAX,
        );
        let t = Instant::now();
        b.record(Some(false), None, t);
        assert_eq!(b.admit(t + Duration::from_secs(3600), true), Admit::Refuse);
    }
}
