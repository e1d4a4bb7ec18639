//! The process's service states, shared by the tables that have a service with the same
//! settings and kept across reloads while they do.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use arc_swap::ArcSwap;
use prometheus::{IntGaugeVec, Opts};

use super::*;
use crate::config::resilience::{
    Balance, BreakerConfig, DEFAULT_RESOLVE, HealthConfig, OutlierConfig,
};
use crate::config::{Service, bare_host};
use crate::proxy::pool::Dial;

/// Every setting a service's state is built from: two services share a state only when all
/// are the same. Read from the whole [`Service`] by a pattern that names each of its
/// fields, so that a setting added to it must be placed here or said not to matter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    name: String,
    authorities: Vec<http::uri::Authority>,
    protocol: crate::config::Protocol,
    /// The TLS trust (which roots), by its fingerprint.
    trust: Option<u64>,
    balance: Balance,
    resolve: Option<Duration>,
    health: Option<HealthConfig>,
    breaker: Option<BreakerConfig>,
    outlier: Option<OutlierConfig>,
    timeout: Duration,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

impl ServiceKey {
    pub fn of(s: &Service, dial: &Dial) -> ServiceKey {
        let Service {
            name,
            // The URL and first authority are among `authorities`.
            url: _,
            authority: _,
            // What a request's head becomes, not how instances are reached.
            base_path: _,
            host_upstream: _,
            // Its roots are `trust`, from the dial.
            tls: _,
            timeout,
            idle_timeout,
            protocol,
            authorities,
            balance,
            resolve,
            health,
            connect_timeout,
            breaker,
            outlier,
        } = s;
        ServiceKey {
            name: name.clone(),
            authorities: authorities.clone(),
            protocol: *protocol,
            trust: dial.tls.as_ref().map(|t| t.2),
            balance: *balance,
            resolve: *resolve,
            health: health.clone(),
            breaker: *breaker,
            outlier: *outlier,
            timeout: *timeout,
            connect_timeout: *connect_timeout,
            idle_timeout: *idle_timeout,
        }
    }
}

/// The process's service states, by their settings, and the metrics that describe them.
pub struct Fleet {
    pub(super) states: Mutex<HashMap<ServiceKey, Weak<ServiceState>>>,
    pub(super) seq: AtomicU64,
    /// Where the states' tasks run (a reload compiles its table on a thread of its own).
    pub(super) runtime: Option<tokio::runtime::Handle>,
    /// One scrape at a time fills the gauges below.
    pub(super) collecting: Mutex<()>,
    pub(super) healthy: IntGaugeVec,
    pub(super) ejected: IntGaugeVec,
    pub(super) breaker: IntGaugeVec,
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
        let key = ServiceKey::of(s, dial);
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

    /// How many service states are alive (held by a table in force or a request under way).
    pub fn live_states(&self) -> usize {
        self.live().len()
    }

    pub(super) fn live(&self) -> Vec<Arc<ServiceState>> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let mut live: Vec<Arc<ServiceState>> = states.values().filter_map(Weak::upgrade).collect();
        // Newest first: a name's newest state is the one reported.
        live.sort_by_key(|s| std::cmp::Reverse(s.seq));
        live
    }
}
