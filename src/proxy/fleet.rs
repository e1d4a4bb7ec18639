//! The instances of services that need more than one fixed address (docs/resilience.md):
//! several `urls`, host names looked up again every `resolve`, active health checks, and
//! the circuit breaker of a new service.
//!
//! A [`ServiceState`] is kept across reloads while its settings stay the same (health and
//! breaker state survive a reload), in the process's [`Fleet`]. Its two tasks, the resolver
//! and the health checker, hold it weakly and end when the last table using it is gone.
//! A service with one URL whose host is an IP address and neither `health` nor `breaker`
//! has no state here: its requests go straight to its one address, at no cost.

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
use crate::config::resilience::{Balance, BreakerConfig, HealthConfig};
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
        })
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
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
    /// Half-open: this request is the one probe.
    Probe,
    /// Open (or a probe is out): the new share goes to legacy.
    Refuse,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// A circuit breaker (`breaker`): opens after `failures` failed attempts within `window`;
/// after `cooldown`, one probe decides whether it closes or opens again.
pub struct Breaker {
    config: BreakerConfig,
    /// `CLOSED`, `OPEN` or `HALF_OPEN`, readable without the lock (and the metric's value).
    state: AtomicU8,
    inner: Mutex<BreakerInner>,
    /// How long a probe may take before another is let through (its client may have left).
    probe_timeout: Duration,
}

struct BreakerInner {
    failures: VecDeque<Instant>,
    open_until: Instant,
    probe_since: Instant,
}

impl Breaker {
    pub fn new(config: BreakerConfig, probe_timeout: Duration) -> Breaker {
        let now = Instant::now();
        Breaker {
            config,
            state: AtomicU8::new(CLOSED),
            inner: Mutex::new(BreakerInner {
                failures: VecDeque::new(),
                open_until: now,
                probe_since: now,
            }),
            probe_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// 0 closed, 1 open, 2 half-open.
    pub fn state(&self) -> u8 {
        self.state.load(Ordering::Relaxed)
    }

    pub fn is_open(&self) -> bool {
        self.state() != CLOSED
    }

    /// Whether a request may go to the service now.
    pub fn admit(&self, now: Instant) -> Admit {
        if self.state() == CLOSED {
            return Admit::Pass;
        }
        let mut inner = self.lock();
        match self.state() {
            CLOSED => Admit::Pass,
            OPEN if now >= inner.open_until => {
                self.state.store(HALF_OPEN, Ordering::Relaxed);
                inner.probe_since = now;
                Admit::Probe
            }
            HALF_OPEN if now >= inner.probe_since + self.probe_timeout => {
                inner.probe_since = now;
                Admit::Probe
            }
            _ => Admit::Refuse,
        }
    }

    /// The outcome of an attempt on the service (`probe`: it was the half-open probe).
    pub fn record(&self, ok: bool, probe: bool, now: Instant) {
        if ok && !probe {
            return;
        }
        let mut inner = self.lock();
        if probe {
            if ok {
                inner.failures.clear();
                self.state.store(CLOSED, Ordering::Relaxed);
                tracing::info!("circuit breaker closed: the probe succeeded");
            } else {
                inner.open_until = now + self.config.cooldown;
                self.state.store(OPEN, Ordering::Relaxed);
                tracing::warn!("circuit breaker open again: the probe failed");
            }
            return;
        }
        if self.state() != CLOSED {
            return;
        }
        let window = self.config.window;
        while inner
            .failures
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > window)
        {
            inner.failures.pop_front();
        }
        inner.failures.push_back(now);
        if inner.failures.len() >= self.config.failures as usize {
            inner.failures.clear();
            inner.open_until = now + self.config.cooldown;
            self.state.store(OPEN, Ordering::Relaxed);
            tracing::warn!(
                failures = self.config.failures,
                "circuit breaker open: its share goes to legacy"
            );
        }
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
    /// Whether some instance is healthy.
    pub fn available(&self) -> bool {
        self.instances.load().iter().any(|i| i.healthy())
    }

    /// An instance for the next attempt, other than `avoid` when there is another; `None`
    /// only when the service has no instance at all.
    pub fn pick(&self, avoid: Option<&Instance>) -> Option<Picked> {
        let list = self.instances.load();
        let usable =
            |i: &Arc<Instance>| i.healthy() && avoid.is_none_or(|a| !std::ptr::eq(a, &**i));
        let count = list.iter().filter(|i| usable(i)).count();
        let (chosen, all_unhealthy) = if count == 0 {
            // Nothing healthy (or only the instance to avoid): any instance, in turn.
            let healthy_avoided = list.iter().any(|i| i.healthy());
            let pool: Vec<&Arc<Instance>> = if healthy_avoided {
                list.iter().filter(|i| i.healthy()).collect()
            } else {
                list.iter().collect()
            };
            if pool.is_empty() {
                return None;
            }
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            (pool[n % pool.len()].clone(), !healthy_avoided)
        } else {
            let nth = |k: usize| {
                list.iter()
                    .filter(|i| usable(i))
                    .nth(k)
                    .expect("k < count")
                    .clone()
            };
            let chosen = match self.balance {
                Balance::RoundRobin => nth(self.next.fetch_add(1, Ordering::Relaxed) % count),
                Balance::LeastConnections if count == 1 => nth(0),
                Balance::LeastConnections => {
                    // Two distinct instances drawn at random; the less busy one serves.
                    let a = fastrand::usize(..count);
                    let b = (a + 1 + fastrand::usize(..count - 1)) % count;
                    let (a, b) = (nth(a), nth(b));
                    if b.in_flight.load(Ordering::Relaxed) < a.in_flight.load(Ordering::Relaxed) {
                        b
                    } else {
                        a
                    }
                }
            };
            (chosen, false)
        };
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Picked {
            guard: InFlight(chosen),
            all_unhealthy,
        })
    }

    /// The instances now (for status and tests).
    pub fn instances(&self) -> Vec<(String, bool)> {
        self.instances
            .load()
            .iter()
            .map(|i| (i.label.to_string(), i.healthy()))
            .collect()
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
    healthy: IntGaugeVec,
    breaker: IntGaugeVec,
}

impl Fleet {
    pub fn new() -> Arc<Fleet> {
        Arc::new(Fleet {
            states: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            healthy: IntGaugeVec::new(
                Opts::new(
                    "strangler_instance_healthy",
                    "1 while an instance of a service passes its health checks (or has none), 0 while it does not",
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
            "{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            s.name,
            s.authorities,
            s.protocol,
            dial.tls.as_ref().map(|t| t.2),
            s.balance,
            s.resolve,
            s.health,
            s.breaker,
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
                .map(|b| Breaker::new(b, s.connect_timeout + s.timeout)),
            health: s.health.clone(),
            resolve: s.resolve,
            authorities: s.authorities.clone(),
            template: dial.clone(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
        });
        states.insert(key, Arc::downgrade(&state));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
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

/// The fleet's metrics (`strangler_instance_healthy`, `strangler_breaker_state`),
/// computed from the live states whenever they are scraped: a state that is gone leaves no
/// series behind.
pub struct FleetMetrics(pub Arc<Fleet>);

impl Collector for FleetMetrics {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.0.healthy.desc();
        d.extend(self.0.breaker.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.0.collect()
    }
}

impl Fleet {
    fn collect(&self) -> Vec<MetricFamily> {
        self.healthy.reset();
        self.breaker.reset();
        let mut seen = std::collections::HashSet::new();
        for s in self.live() {
            if !seen.insert(s.name.clone()) {
                continue;
            }
            for i in s.instances.load().iter() {
                self.healthy
                    .with_label_values(&[&*s.name, &*i.label])
                    .set(i64::from(i.healthy()));
            }
            if let Some(b) = &s.breaker {
                self.breaker
                    .with_label_values(&[&*s.name])
                    .set(i64::from(b.state()));
            }
        }
        let mut families = self.healthy.collect();
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
    let outcome = tokio::time::timeout(health.timeout, pool::probe(&instance.dial, req)).await;
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

    fn breaker() -> Breaker {
        Breaker::new(
            BreakerConfig {
                failures: 3,
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
        b.record(false, false, t);
        b.record(false, false, t + Duration::from_secs(1));
        // The first two are out of the window by the third.
        b.record(false, false, t + Duration::from_secs(12));
        b.record(false, false, t + Duration::from_secs(13));
        assert_eq!(b.admit(t + Duration::from_secs(13)), Admit::Pass);
        assert_eq!(b.state(), CLOSED);
        b.record(false, false, t + Duration::from_secs(14));
        assert_eq!(b.state(), OPEN);
        assert_eq!(b.admit(t + Duration::from_secs(14)), Admit::Refuse);
    }

    #[test]
    fn one_probe_after_the_cooldown_decides() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.record(false, false, t);
        }
        let after = t + Duration::from_secs(30);
        assert_eq!(b.admit(after), Admit::Probe);
        assert_eq!(b.state(), HALF_OPEN);
        // Only one probe at a time.
        assert_eq!(b.admit(after), Admit::Refuse);
        b.record(false, true, after);
        assert_eq!(b.state(), OPEN);
        assert_eq!(b.admit(after + Duration::from_secs(1)), Admit::Refuse);
        let later = after + Duration::from_secs(30);
        assert_eq!(b.admit(later), Admit::Probe);
        b.record(true, true, later);
        assert_eq!(b.state(), CLOSED);
        assert_eq!(b.admit(later), Admit::Pass);
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.record(false, false, t);
        }
        let after = t + Duration::from_secs(30);
        assert_eq!(b.admit(after), Admit::Probe);
        assert_eq!(b.admit(after + Duration::from_secs(4)), Admit::Refuse);
        assert_eq!(b.admit(after + Duration::from_secs(5)), Admit::Probe);
    }
}
