//! The instances of services that need more than one fixed address (docs/resilience.md):
//! several `urls`, host names looked up again every `resolve`, active health checks,
//! passive outlier detection, and the circuit breaker of a new service.
//!
//! A [`ServiceState`] is kept across reloads while its settings stay the same (health,
//! ejections and breaker state survive a reload), in the process's [`Fleet`]. Its two tasks, the resolver
//! and the health checker, hold it weakly and end when the last table using it is gone.
//! A service with one URL whose host is an IP address and none of `health`, `breaker` or
//! `outlier` has no state here: its requests go straight to its one address, at no cost.

mod balance;
mod breaker;
mod collector;
mod dns;
mod health;
mod instance;
mod outlier;
mod registry;

pub use breaker::{Admit, Breaker};
pub use collector::FleetMetrics;
pub use instance::{InFlight, Instance};
pub use registry::Fleet;

use dns::resolve_every;
use health::check_every;
use instance::tls_for;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::resilience::{Balance, HealthConfig, OutlierConfig};
use crate::proxy::pool::Dial;

/// A service's instances, health and breaker.
pub struct ServiceState {
    pub name: Box<str>,
    pub(super) instances: ArcSwap<Vec<Arc<Instance>>>,
    pub(super) balance: Balance,
    pub(super) next: AtomicUsize,
    pub breaker: Option<Breaker>,
    pub(super) health: Option<HealthConfig>,
    pub(super) outlier: Option<OutlierConfig>,
    /// One ejection decided at a time (they are rare; the cap counts the others).
    pub(super) ejecting: Mutex<()>,
    /// The origin of the instances' ejection times.
    pub(super) born: Instant,
    pub(super) resolve: Duration,
    /// The URLs' authorities, as written.
    pub(super) authorities: Vec<http::uri::Authority>,
    /// Protocol, TLS and idle timeout of every instance.
    pub(super) template: Dial,
    /// Creation order: the newest state of a name wins in the metrics.
    pub(super) seq: u64,
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
                    breaker::CLOSED => "closed",
                    breaker::OPEN => "open",
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

    /// Whether attempts are reported to it (a breaker, outlier detection).
    pub fn watches(&self) -> bool {
        self.breaker.is_some() || self.outlier.is_some()
    }

    /// Milliseconds since the state began, the clock of its instances' ejections.
    fn ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.born).as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests;
