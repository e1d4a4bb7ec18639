//! The compiled route table and [`RouteTable::decide`], the one function that picks a
//! request's route and side. The gateway calls it for every request; `strangler explain`
//! calls it too, with a trace of the candidates, and only adds the narration.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use ipnet::IpNet;

use super::pattern::Match;
use super::router::{Candidate, Router};
use super::side::{self, Reason, RequestKeys, Side, SidePolicy, StickyKey};

/// The route label of requests no rule takes.
pub const DEFAULT_ROUTE: &str = "default";

/// `X-Forwarded-For`: read for `client_ip` keys behind trusted proxies.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// One route as the decision needs it.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: Box<str>,
    pub policy: SidePolicy,
    /// The new side: an index into the routes file's `services`.
    pub service: usize,
}

/// The rule set, compiled: immutable, built off the request path and swapped in whole.
#[derive(Debug)]
pub struct RouteTable {
    router: Router,
    routes: Vec<Route>,
    override_header: Option<HeaderName>,
    trusted_proxies: Vec<IpNet>,
}

/// What the decision reads of a request.
pub struct RequestView<'a> {
    /// The canonical path.
    pub path: &'a str,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    /// The query string as sent (for `query` sticky keys).
    pub query: Option<&'a str>,
    /// The TCP peer's address.
    pub peer: IpAddr,
}

/// Which route takes a request and which side serves it, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Index of the route in the table; `None`: no rule took the request (route `default`,
    /// served by legacy).
    pub route: Option<usize>,
    pub side: Side,
    pub reason: Reason,
    /// The sticky key's bucket (0..10000) when `reason` is `Sticky`.
    pub bucket: Option<u32>,
}

impl Decision {
    /// The decision for a request no rule takes (or one refused before routing).
    pub const UNMATCHED: Decision = Decision {
        route: None,
        side: Side::Legacy,
        reason: Reason::Unmatched,
        bucket: None,
    };
}

impl RouteTable {
    /// Compiles a table. `matches` and `routes` are the rules in file order, one each.
    pub fn new<'a>(
        matches: impl IntoIterator<Item = &'a Match>,
        routes: Vec<Route>,
        override_header: Option<HeaderName>,
        trusted_proxies: Vec<IpNet>,
    ) -> Result<RouteTable, String> {
        let matches: Vec<&Match> = matches.into_iter().collect();
        assert_eq!(matches.len(), routes.len(), "one match per route");
        Ok(RouteTable {
            router: Router::new(matches)?,
            routes,
            override_header,
            trusted_proxies,
        })
    }

    /// The route and side for a request.
    #[inline]
    pub fn decide(&self, req: &RequestView<'_>) -> Decision {
        self.decide_traced(req, |_| {})
    }

    /// As `decide`, calling `trace` with every candidate rule examined, in order.
    #[inline]
    pub fn decide_traced(
        &self,
        req: &RequestView<'_>,
        trace: impl FnMut(Candidate<'_>),
    ) -> Decision {
        let Some(i) = self
            .router
            .find_traced(req.path, req.method, req.headers, trace)
        else {
            return Decision::UNMATCHED;
        };
        let policy = &self.routes[i].policy;
        let keys = RequestKeys {
            headers: req.headers,
            query: req.query,
            client_ip: if matches!(policy.sticky, Some(StickyKey::ClientIp)) {
                self.client_ip(req.peer, req.headers)
            } else {
                req.peer
            },
        };
        let (side, reason, bucket) = side::choose(policy, self.override_header.as_ref(), &keys);
        Decision {
            route: Some(i),
            side,
            reason,
            bucket,
        }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    pub fn override_header(&self) -> Option<&HeaderName> {
        self.override_header.as_ref()
    }

    /// Whether `ip` is in `trusted_proxies` (its `X-Forwarded-*` headers are kept).
    #[inline]
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        !self.trusted_proxies.is_empty() && self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// The client IP for sticky keys: the peer, or, behind trusted proxies, the nearest
    /// address of `X-Forwarded-For` that is not a trusted proxy.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut ip = peer;
        let values: Vec<&HeaderValue> = headers.get_all(&X_FORWARDED_FOR).iter().collect();
        for v in values.iter().rev() {
            let Ok(s) = v.to_str() else { return ip };
            for part in s.rsplit(',') {
                match part.trim().parse::<IpAddr>() {
                    Ok(a) => {
                        ip = a;
                        if !self.is_trusted(a) {
                            return a;
                        }
                    }
                    Err(_) => return ip,
                }
            }
        }
        ip
    }
}
