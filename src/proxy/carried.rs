//! What the request path carries from one table to the next, in one place. A reload
//! compiles its table with it ([`Table::compile`](super::Table::compile)) and lets go here
//! of what the routes it removed left behind ([`Carried::keep_only`]):
//!
//! - per service, its state (instances, health, ejections, breaker), by a [`ServiceKey`]
//!   of every setting it is built from, held weakly: it goes with the last table using it;
//! - per route, by name: its metric series, its compare window, its shadow report and its
//!   retry budget;
//! - the percentages held in memory that the routes file does not say yet.
//!
//! [`ServiceKey`]: super::fleet::ServiceKey

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::fleet::{Fleet, FleetMetrics};
use super::overrides::Overrides;
use super::resolve::Resolver;
use crate::config::resilience::RETRY_BUDGET;
use crate::config::{Config, InventoryConfig};
use crate::observe::inventory::Limits;
use crate::observe::learner::{Learner, MapMetrics};
use crate::observe::shadow::Shadows;
use crate::observe::{Metrics, Registry};
use crate::routing::DEFAULT_ROUTE;

/// The state kept across reloads.
pub struct Carried {
    pub metrics: Arc<Metrics>,
    pub windows: Arc<Registry>,
    pub fleet: Arc<Fleet>,
    pub shadows: Arc<Shadows>,
    pub overrides: Arc<Overrides>,
    /// How services' host names are looked up.
    pub resolver: Resolver,
    /// The carve-out map's learner (its limits are read at start).
    pub learner: Arc<Learner>,
    budgets: Mutex<HashMap<Box<str>, Arc<RetryBudget>>>,
}

impl Carried {
    /// Empty, with the fleet's gauges registered in `metrics`.
    pub fn new(
        metrics: Arc<Metrics>,
        windows: Arc<Registry>,
        resolver: Resolver,
        map: &InventoryConfig,
    ) -> Arc<Carried> {
        let fleet = Fleet::new();
        metrics.register(Box::new(FleetMetrics(fleet.clone())));
        let learner = Learner::new(Limits {
            max_templates: map.max_templates,
            ..Limits::default()
        });
        metrics.register(Box::new(MapMetrics::new(learner.clone(), metrics.clone())));
        Arc::new(Carried {
            shadows: Shadows::new(windows.clone()),
            metrics,
            windows,
            fleet,
            overrides: Arc::new(Overrides::default()),
            resolver,
            learner,
            budgets: Mutex::new(HashMap::new()),
        })
    }

    /// Lets go of what belongs to routes `config` does not have (removed or renamed by a
    /// reload): their metric series, windows, shadow reports and retry budgets. What a
    /// request under way holds goes when it ends.
    pub fn keep_only(&self, config: &Config) {
        let names: HashSet<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        self.metrics.retain_routes(&names);
        self.windows.retain(&names);
        let shadowed: HashSet<&str> = config
            .routes
            .iter()
            .filter(|r| r.shadow.is_some())
            .map(|r| r.name.as_str())
            .collect();
        self.shadows.retain(&shadowed);
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        budgets.retain(|name, _| &**name == DEFAULT_ROUTE || names.contains(&**name));
    }

    /// The retry budget of route `name` (made on first use).
    pub fn budget(&self, name: &str) -> Arc<RetryBudget> {
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        budgets.entry(name.into()).or_default().clone()
    }

    /// How many routes hold something here: windows, shadow reports, retry budgets.
    pub fn routes_held(&self) -> (usize, usize, usize) {
        let budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner()).len();
        (self.windows.len(), self.shadows.len(), budgets)
    }
}

/// A route's retry budget (`retries`), in thousandths of a retry: each request of the route
/// adds `RETRY_BUDGET`, each retry takes one whole; the most a quiet route saves up is
/// ten; and a floor of `min_per_second` retries a second.
#[derive(Default)]
pub struct RetryBudget {
    saved: AtomicI64,
    /// The floor: the theoretical time of the next retry it allows, in microseconds of the
    /// process's clock (a generic cell rate).
    floor: AtomicU64,
}

/// The most a quiet route saves up: ten retries.
const BUDGET_CAP: i64 = 10_000;

impl RetryBudget {
    /// Adds a request's share.
    pub fn deposit(&self) {
        let share = (RETRY_BUDGET * 1000.0) as i64;
        let _ = self
            .saved
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b < BUDGET_CAP).then(|| (b + share).min(BUDGET_CAP))
            });
    }

    /// Takes one retry, if the budget holds one; else from its floor of `min_per_second`
    /// retries a second (up to a second's worth at once), so that a quiet route, whose
    /// requests have saved up nothing, still retries its first failures (as Linkerd's
    /// `minRetriesPerSecond`). Under load, the share decides: the floor adds at most
    /// `min_per_second` retries a second to the fifth of the requests.
    pub fn withdraw(&self, min_per_second: u32) -> bool {
        let shared = self
            .saved
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= 1000).then_some(b - 1000)
            })
            .is_ok();
        shared || (min_per_second > 0 && self.floor(min_per_second))
    }

    /// One retry of the floor, if its rate allows one now: each retry moves the next
    /// allowed time on by `1 / rate`; up to a second ahead of now is allowed.
    fn floor(&self, rate: u32) -> bool {
        let now = clock_micros();
        let step = 1_000_000 / u64::from(rate);
        self.floor
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                let next = tat.max(now) + step;
                (next <= now + 1_000_000).then_some(next)
            })
            .is_ok()
    }
}

/// Microseconds since the process's first look at the clock.
fn clock_micros() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}
