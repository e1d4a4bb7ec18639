//! What the request path reads, built once per config and swapped in whole on reload: the
//! routing table, the upstreams (addresses, timeouts, pool keys) and the measurement handles
//! of every route and side, resolved here so a request only increments.
//!
//! A request holds an `Arc` to the table it started with, so a reload never changes a
//! request midway.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use http::request::Parts;

use super::carried::{Carried, RetryBudget};
use super::fleet::{InFlight, Instance, ServiceState};
use super::overrides::Applied;
use super::pool::{Dial, PoolKey};
use super::send::Target;
use crate::config::resilience::{FallbackConfig, RetryConfig};
use crate::config::shadow::ShadowConfig;
use crate::config::{Config, RouteConfig};
use crate::observe::learner::Learner;
use crate::observe::shadow::{RouteShadow, Shadows};
use crate::observe::{Metrics, RouteWindow, SideMetrics};
use crate::routing::{DEFAULT_ROUTE, Decision, RouteTable, Side};

/// An upstream of a table: legacy, or one of the services in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamId(u16);

/// The legacy upstream.
pub const LEGACY: UpstreamId = UpstreamId(0);

impl UpstreamId {
    /// The upstream of service `i` (in file order).
    #[inline]
    pub fn service(i: usize) -> UpstreamId {
        UpstreamId(u16::try_from(1 + i).expect("a routes file has fewer than 65535 services"))
    }

    #[inline]
    fn index(self) -> usize {
        usize::from(self.0)
    }
}

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

/// Where one attempt goes: the instance picked for it (held until the request ends), or the
/// service's one address.
pub struct Endpoint {
    pub instance: Option<InFlight>,
    /// Every instance failed its health checks: this one was taken anyway.
    pub all_unhealthy: bool,
}

impl Upstream {
    /// Picks where the next attempt goes (an instance other than `avoid`, when there is
    /// another) and aims `head` at it (its authority as `Host` with `host_header:
    /// upstream`). Requests, their retries and shadow copies all go through here.
    #[inline]
    pub fn endpoint(&self, head: &mut Parts, avoid: Option<&Instance>) -> Endpoint {
        let Some(picked) = self.fleet.as_ref().and_then(|f| f.pick(avoid)) else {
            return Endpoint {
                instance: None,
                all_unhealthy: false,
            };
        };
        picked.guard.instance().aim(head, self.host_upstream);
        Endpoint {
            instance: Some(picked.guard),
            all_unhealthy: picked.all_unhealthy,
        }
    }

    /// Where an attempt at `endpoint` goes, waiting at most `timeouts` (the head's, the
    /// connection's).
    #[inline]
    pub fn target<'a>(&'a self, endpoint: &'a Endpoint, timeouts: Timeouts) -> Target<'a> {
        let (key, dial) = match &endpoint.instance {
            Some(i) => (i.instance().pool_key, &i.instance().dial),
            None => (self.pool_key, &self.dial),
        };
        Target {
            key,
            dial,
            timeout: timeouts.head,
            connect_timeout: timeouts.connect,
        }
    }

    /// The service's own timeouts.
    #[inline]
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            head: self.timeout,
            connect: self.connect_timeout,
        }
    }

    /// The service's timeouts, tightened by a route's.
    pub fn timeouts_for(&self, policy: &RoutePolicy) -> Timeouts {
        let head = policy.timeout.map_or(self.timeout, |t| t.min(self.timeout));
        let connect = policy
            .connect_timeout
            .map_or(self.connect_timeout, |t| t.min(self.connect_timeout))
            .min(head);
        Timeouts { head, connect }
    }
}

/// How long an attempt waits for its response head, and for a new connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub head: Duration,
    pub connect: Duration,
}

/// What a route asks of the request path, compiled once per table so that a request only
/// reads it: retries, fallback, timeouts, shadow and upgrades (`default` has none of them
/// but upgrades).
#[derive(Debug, Clone, Default)]
pub struct RoutePolicy {
    pub retries: Option<RetryConfig>,
    pub fallback: Option<FallbackConfig>,
    pub timeout: Option<Duration>,
    pub connect_timeout: Option<Duration>,
    pub shadow: Option<Arc<ShadowConfig>>,
    /// Upgrades (WebSocket) are tunnelled.
    pub upgrades: bool,
}

impl RoutePolicy {
    fn of(route: Option<&RouteConfig>) -> RoutePolicy {
        match route {
            None => RoutePolicy {
                upgrades: true,
                ..RoutePolicy::default()
            },
            Some(r) => RoutePolicy {
                retries: r.retries,
                fallback: r.fallback,
                timeout: r.timeout,
                connect_timeout: r.connect_timeout,
                shadow: r.shadow.clone().map(Arc::new),
                upgrades: r.upgrades,
            },
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
    /// What the route asks of the request path.
    pub policy: RoutePolicy,
    /// Its retry budget (kept across reloads by name).
    pub budget: Arc<RetryBudget>,
}

/// The table in force.
pub struct Table {
    pub config: Arc<Config>,
    pub routing: RouteTable,
    /// Legacy, then the services in file order (see [`UpstreamId`]).
    upstreams: Vec<Upstream>,
    /// One per route, in table order, then one for `default`.
    stats: Vec<RouteStats>,
    /// `Via` as the gateway adds it to a message received as HTTP/1.0, HTTP/1.1 and HTTP/2.
    pub via: [HeaderValue; 3],
    /// What admission holds a request to, and its trailers.
    pub edge: Arc<super::admit::Rules>,
    /// The percentages in force that the routes file does not say yet (a rollback held in
    /// memory): `config` carries the held percentage, these what the file says.
    pub held: Vec<Applied>,
    /// The carve-out map's learner, and the share of requests it is offered (basis points).
    learner: Arc<Learner>,
    sample_bp: u32,
}

impl Table {
    /// Builds the table, with the percentages `overrides` holds in place of the file's.
    /// Fails only where the router cannot be built (regex size limits).
    pub fn compile(mut config: Config, carried: &Carried) -> Result<Table, String> {
        let Carried {
            metrics,
            windows,
            fleet,
            shadows,
            overrides,
            ..
        } = carried;
        let held = overrides.apply(&mut config);
        let routing = config.compile()?;
        let upstreams = std::iter::once(&config.legacy)
            .chain(config.services.iter())
            .map(|s| {
                let dial = Dial::of(s, &carried.resolver);
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
                shadow: config
                    .routes
                    .get(i)
                    .and_then(|r| shadows_of(&config, r, shadows)),
                policy: RoutePolicy::of(config.routes.get(i)),
                budget: carried.budget(name),
            })
            .collect();
        let via = ["1.0", "1.1", "2"].map(|v| {
            HeaderValue::from_str(&format!("{v} {}", config.via))
                .expect("a validated via name is a valid header value")
        });
        Ok(Table {
            via,
            held,
            learner: carried.learner.clone(),
            sample_bp: config.inventory.sample_bp,
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

    /// What a decision's route asks of the request path.
    #[inline]
    pub fn policy(&self, route: Option<usize>) -> &RoutePolicy {
        &self.stats(route).policy
    }

    /// Every upstream: legacy, then the services in file order.
    pub fn upstreams(&self) -> &[Upstream] {
        &self.upstreams
    }

    /// The carve-out map's learner, when this request is among those it is offered (the
    /// routes file's `inventory.sample`).
    #[inline]
    pub fn draw_sample(&self) -> Option<&Learner> {
        (self.sample_bp > 0 && fastrand::u32(..10_000) < self.sample_bp).then_some(&*self.learner)
    }

    /// An upstream of this table.
    #[inline]
    pub fn upstream(&self, id: UpstreamId) -> &Upstream {
        &self.upstreams[id.index()]
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

    /// The upstream that serves a decision.
    #[inline]
    pub fn upstream_of(&self, d: &Decision) -> UpstreamId {
        match (d.side, d.route) {
            (Side::New, Some(i)) => self.new_upstream(i),
            _ => LEGACY,
        }
    }

    /// Route `i`'s new side.
    #[inline]
    pub fn new_upstream(&self, i: usize) -> UpstreamId {
        UpstreamId::service(self.routing.routes()[i].service)
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
