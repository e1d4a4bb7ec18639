//! The compiled route table: everything the request path reads, built once per config.
//!
//! A `RouteTable` is immutable. It is built from a validated `Config` off the request path
//! (router, side policies, upstream addresses, metric handles) and swapped in whole; requests
//! hold an `Arc` to the table they started with, so a reload never changes a request midway.

use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderName, HeaderValue};
use ipnet::IpNet;

use crate::compare::{Registry, RouteWindow};
use crate::config::Config;
use crate::metrics::{DEFAULT_ROUTE, Metrics, SideMetrics};
use crate::pool::PoolKey;
use crate::router::Router;
use crate::side::{Side, SidePolicy};

/// An upstream as the forwarder needs it.
pub struct Upstream {
    pub name: Box<str>,
    pub authority: Authority,
    /// Prepended to the forwarded path; empty for none.
    pub base_path: Box<str>,
    pub timeout: Duration,
    /// Always send `host_value` as `Host` (`host_header: upstream`); otherwise only when the
    /// client sent none (HTTP/1.0), since HTTP/1.1 requires one.
    pub host_upstream: bool,
    /// The authority as a `Host` value.
    pub host_value: HeaderValue,
    /// The connection pool key of the address.
    pub pool_key: PoolKey,
}

/// One route, compiled.
pub struct Route {
    pub name: Box<str>,
    pub policy: SidePolicy,
    /// Index into `RouteTable::upstreams` of the new side.
    pub new_upstream: usize,
    /// Indexed by `Side::index()`.
    pub metrics: [SideMetrics; 2],
    /// The rolling figures of legacy vs new (kept across reloads by name).
    pub window: Arc<RouteWindow>,
}

/// The table in force.
pub struct RouteTable {
    pub config: Arc<Config>,
    pub router: Router,
    pub routes: Vec<Route>,
    /// Requests no rule takes: legacy, under the route label `default`.
    pub default_route: Route,
    /// 0 is legacy, then the services in file order.
    pub upstreams: Vec<Upstream>,
    pub override_header: Option<HeaderName>,
    pub trusted_proxies: Vec<IpNet>,
}

/// Index of the legacy upstream in `RouteTable::upstreams`.
pub const LEGACY: usize = 0;

impl RouteTable {
    /// Builds the table. Fails only where the router cannot be built (regex size limits).
    pub fn compile(
        config: Config,
        metrics: &Arc<Metrics>,
        windows: &Arc<Registry>,
    ) -> Result<RouteTable, String> {
        let router = Router::new(&config.routes)?;
        let mut upstreams = Vec::with_capacity(config.services.len() + 1);
        for s in std::iter::once(&config.legacy).chain(config.services.iter()) {
            upstreams.push(Upstream {
                name: s.name.as_str().into(),
                authority: s.authority.clone(),
                base_path: s.base_path.as_str().into(),
                timeout: s.timeout,
                host_upstream: s.host_upstream,
                host_value: HeaderValue::from_str(s.authority.as_str())
                    .expect("an authority is a valid header value"),
                pool_key: PoolKey::of(&s.authority),
            });
        }
        let routes = config
            .routes
            .iter()
            .map(|r| Route {
                name: r.name.as_str().into(),
                policy: SidePolicy {
                    percent_bp: r.percent_bp,
                    sticky: r.sticky.clone().or_else(|| config.sticky.clone()),
                    cohort: r.cohort.as_str().into(),
                },
                new_upstream: 1 + r.service,
                metrics: [
                    metrics.side(&r.name, Side::Legacy),
                    metrics.side(&r.name, Side::New),
                ],
                window: windows.route(&r.name),
            })
            .collect();
        let default_route = Route {
            name: DEFAULT_ROUTE.into(),
            policy: SidePolicy {
                percent_bp: 0,
                sticky: None,
                cohort: DEFAULT_ROUTE.into(),
            },
            new_upstream: LEGACY,
            metrics: [
                metrics.side(DEFAULT_ROUTE, Side::Legacy),
                metrics.side(DEFAULT_ROUTE, Side::New),
            ],
            window: windows.route(DEFAULT_ROUTE),
        };
        Ok(RouteTable {
            override_header: config.override_header.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            config: Arc::new(config),
            router,
            routes,
            default_route,
            upstreams,
        })
    }

    /// Publishes the gauges that describe this table (call when it goes into force).
    pub fn publish(&self, metrics: &Metrics) {
        for r in &self.routes {
            metrics.set_route_percent(&r.name, f64::from(r.policy.percent_bp) / 100.0);
        }
        metrics.set_config_hash(&self.config.hash);
    }

    /// The upstream that serves `side` of `route`.
    #[inline]
    pub fn upstream(&self, route: &Route, side: Side) -> &Upstream {
        match side {
            Side::Legacy => &self.upstreams[LEGACY],
            Side::New => &self.upstreams[route.new_upstream],
        }
    }
}
