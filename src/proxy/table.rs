//! What the request path reads, built once per config and swapped in whole on reload: the
//! routing table, the upstreams (addresses, timeouts, pool keys) and the measurement handles
//! of every route and side, resolved here so a request only increments.
//!
//! A request holds an `Arc` to the table it started with, so a reload never changes a
//! request midway.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::HeaderValue;

use super::fleet::{Fleet, ServiceState};
use super::overrides::{Applied, Overrides};
use super::pool::{Dial, PoolKey};
use crate::config::resilience::RETRY_BUDGET;
use crate::config::{Config, RouteConfig};
use crate::observe::shadow::{RouteShadow, Shadows};
use crate::observe::{Metrics, Registry, RouteWindow, SideMetrics};
use crate::routing::{DEFAULT_ROUTE, Decision, RouteTable, Side};

/// Index of the legacy upstream in `Table::upstreams`.
pub const LEGACY: usize = 0;

/// An upstream as the forwarder needs it.
pub struct Upstream {
    pub name: Box<str>,
    /// Prepended to the forwarded path; empty for none.
    pub base_path: Box<str>,
    pub timeout: Duration,
    /// Always send `host_value` as `Host` (`host_header: upstream`); otherwise only when the
    /// client sent none (HTTP/1.0), since HTTP/1.1 requires one.
    pub host_upstream: bool,
    /// The authority as a `Host` value.
    pub host_value: HeaderValue,
    /// The connection pool key of the upstream.
    pub pool_key: PoolKey,
    /// How to connect to it: address, protocol, TLS, idle timeout.
    pub dial: Dial,
    /// How long a connection to it may take to open.
    pub connect_timeout: Duration,
    /// Its instances, health and breaker, when it needs them (several URLs, host names,
    /// health checks or a breaker); `None`: `dial` is its one address.
    pub fleet: Option<Arc<ServiceState>>,
}

impl Upstream {
    /// Where a request to its one address goes.
    #[inline]
    pub fn target(&self) -> super::send::Target<'_> {
        super::send::Target {
            key: self.pool_key,
            dial: &self.dial,
            timeout: self.timeout,
            connect_timeout: self.connect_timeout,
        }
    }
}

/// The measurement handles of one route.
pub struct RouteStats {
    /// Indexed by `Side::index()`.
    pub metrics: [SideMetrics; 2],
    /// The rolling figures of legacy vs new (kept across reloads by name).
    pub window: Arc<RouteWindow>,
    /// The route's shadow comparison, for a route with `shadow` (kept across reloads by
    /// name).
    pub shadow: Option<Arc<RouteShadow>>,
}

/// The retry budget is in thousandths of a retry: each request of a route with `retries`
/// adds `RETRY_BUDGET`, each retry takes one whole; the most a quiet route saves up is ten.
const BUDGET_CAP: i64 = 10_000;

impl RouteStats {
    /// Adds a request's share to the retry budget.
    pub fn deposit(&self) {
        let share = (RETRY_BUDGET * 1000.0) as i64;
        let _ = self
            .window
            .retry_budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b < BUDGET_CAP).then(|| (b + share).min(BUDGET_CAP))
            });
    }

    /// Takes one retry from the budget, if it holds one; else from its floor of
    /// `min_per_second` retries a second (up to a second's worth at once), so that a quiet
    /// route, whose requests have saved up nothing, still retries its first failures (as
    /// Linkerd's `minRetriesPerSecond`). Under load, the share decides: the floor adds at
    /// most `min_per_second` retries a second to the fifth of the requests.
    pub fn withdraw(&self, min_per_second: u32) -> bool {
        let shared = self
            .window
            .retry_budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= 1000).then_some(b - 1000)
            })
            .is_ok();
        shared || (min_per_second > 0 && self.floor(min_per_second))
    }

    /// One retry of the floor, if its rate allows one now: a generic cell rate (each retry
    /// moves the next allowed time on by `1 / rate`; up to a second ahead of now is allowed).
    fn floor(&self, rate: u32) -> bool {
        let now = clock_micros();
        let step = 1_000_000 / u64::from(rate);
        self.window
            .retry_floor
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

/// The table in force.
pub struct Table {
    pub config: Arc<Config>,
    pub routing: RouteTable,
    /// 0 is legacy, then the services in file order.
    pub upstreams: Vec<Upstream>,
    /// One per route, in table order, then one for `default`.
    stats: Vec<RouteStats>,
    /// `Via` as the gateway adds it to a message received as HTTP/1.0, HTTP/1.1 and HTTP/2.
    pub via: [HeaderValue; 3],
    /// What admission holds a request to, and its trailers.
    pub edge: Arc<super::admit::Rules>,
    /// The percentages in force that the routes file does not say yet (a rollback held in
    /// memory): `config` carries the held percentage, these what the file says.
    pub held: Vec<Applied>,
}

impl Table {
    /// Builds the table, with the percentages `overrides` holds in place of the file's.
    /// Fails only where the router cannot be built (regex size limits).
    pub fn compile(
        mut config: Config,
        metrics: &Arc<Metrics>,
        windows: &Arc<Registry>,
        fleet: &Fleet,
        shadows: &Shadows,
        overrides: &Overrides,
    ) -> Result<Table, String> {
        let held = overrides.apply(&mut config);
        let routing = config.compile()?;
        let upstreams = std::iter::once(&config.legacy)
            .chain(config.services.iter())
            .map(|s| {
                let dial = dial(s);
                Upstream {
                    name: s.name.as_str().into(),
                    base_path: s.base_path.as_str().into(),
                    timeout: s.timeout,
                    host_upstream: s.host_upstream,
                    host_value: HeaderValue::from_str(s.authority.as_str())
                        .expect("an authority is a valid header value"),
                    pool_key: PoolKey::of(&dial),
                    connect_timeout: s.connect_timeout.min(s.timeout),
                    fleet: s.needs_fleet().then(|| fleet.service(s, &dial)),
                    dial,
                }
            })
            .collect();
        let stats = routing
            .routes()
            .iter()
            .map(|r| &*r.name)
            .chain([DEFAULT_ROUTE])
            .enumerate()
            .map(|(i, name)| RouteStats {
                metrics: Side::BOTH.map(|side| metrics.side(name, side)),
                window: windows.route(name),
                shadow: config.routes.get(i).and_then(|r| {
                    let s = shadows_of(&config, r, shadows)?;
                    Some(s)
                }),
            })
            .collect();
        let via = ["1.0", "1.1", "2"].map(|v| {
            HeaderValue::from_str(&format!("{v} {}", config.via))
                .expect("a validated via name is a valid header value")
        });
        Ok(Table {
            via,
            held,
            edge: Arc::new(super::admit::Rules::of(&config)),
            config: Arc::new(config),
            routing,
            upstreams,
            stats,
        })
    }

    /// Publishes the gauges that describe this table (call when it goes into force).
    pub fn publish(&self, metrics: &Metrics) {
        for r in self.routing.routes() {
            metrics.set_route_percent(&r.name, f64::from(r.policy.percent_bp) / 100.0);
            metrics.set_route_held(&r.name, self.held_of(&r.name).is_some());
        }
        metrics.set_config_hash(&self.config.hash);
    }

    /// The hold of route `name`, when the percentage in force is not the file's.
    pub fn held_of(&self, name: &str) -> Option<&Applied> {
        self.held.iter().find(|a| a.route == name)
    }

    /// The config as the routes file says it: the config in force with the held
    /// percentages put back to the file's (to compile again with other holds).
    pub fn file_config(&self) -> Config {
        let mut config = (*self.config).clone();
        for a in &self.held {
            if let Some(r) = config.routes.iter_mut().find(|r| r.name == a.route) {
                r.percent_bp = a.held.file_bp;
            }
        }
        config
    }

    /// The name of a decision's route (`default` for none).
    #[inline]
    pub fn route_name(&self, route: Option<usize>) -> &str {
        match route {
            Some(i) => &self.routing.routes()[i].name,
            None => DEFAULT_ROUTE,
        }
    }

    /// The measurement handles of a decision's route.
    #[inline]
    pub fn stats(&self, route: Option<usize>) -> &RouteStats {
        &self.stats[route.unwrap_or(self.stats.len() - 1)]
    }

    /// The settings of a decision's route (`None` for `default`).
    #[inline]
    pub fn route_config(&self, route: Option<usize>) -> Option<&RouteConfig> {
        route.map(|i| &self.config.routes[i])
    }

    /// Whether a decision's route tunnels upgrades (`upgrades`, true by default and for
    /// requests no route takes).
    #[inline]
    pub fn upgrades(&self, route: Option<usize>) -> bool {
        route.is_none_or(|i| self.config.routes[i].upgrades)
    }

    /// The `Via` element for a message received in `version`.
    #[inline]
    pub fn via(&self, version: http::Version) -> &HeaderValue {
        let i = match version {
            http::Version::HTTP_10 => 0,
            http::Version::HTTP_2 => 2,
            _ => 1,
        };
        &self.via[i]
    }

    /// Index into `upstreams` of the upstream that serves a decision.
    #[inline]
    pub fn upstream_of(&self, d: &Decision) -> usize {
        match (d.side, d.route) {
            (Side::New, Some(i)) => self.new_upstream(i),
            _ => LEGACY,
        }
    }

    /// Index into `upstreams` of route `i`'s new side.
    #[inline]
    pub fn new_upstream(&self, i: usize) -> usize {
        1 + self.routing.routes()[i].service
    }
}

/// A shadowed route's comparison, told what the route is now (a change of its service,
/// match or shadow settings starts its recent match rate afresh).
fn shadows_of(config: &Config, r: &RouteConfig, shadows: &Shadows) -> Option<Arc<RouteShadow>> {
    let settings = r.shadow.as_ref()?;
    let s = shadows.route(&r.name);
    let service = &config.services[r.service];
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for part in [
        service.name.as_str(),
        service.url.as_str(),
        r.matcher.path.pattern(),
        &format!("{settings:?}"),
    ] {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    s.route_is(h.digest());
    Some(s)
}

/// How to connect to a service.
pub(super) fn dial(s: &crate::config::Service) -> Dial {
    Dial {
        authority: s.authority.clone(),
        protocol: s.protocol,
        tls: s
            .tls
            .as_ref()
            .map(|tls| (tls.config.clone(), tls.name.clone(), tls.trust)),
        idle_timeout: s.idle_timeout,
        addr: None,
    }
}
