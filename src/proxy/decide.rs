//! The `decide` phase: the route and side by the rules
//! ([`RouteTable::decide`](crate::routing::RouteTable::decide)), then what the moment makes
//! of them: a new service that cannot take the request now (no healthy instance, its breaker
//! open) sends it to legacy when legacy speaks its protocol; a route that does not tunnel
//! upgrades refuses one; a route that shadows what legacy serves draws the request's copy.

use std::time::Instant;

use http::request::Parts;

use super::admit::Admitted;
use super::connection::Peer;
use super::error::{Failure, Refusal};
use super::fleet::{Admit, ServiceState};
use super::record::Trail;
use super::table::{LEGACY, Table, UpstreamId};
use crate::routing::{Reason, RequestView, Side};

/// What the decision leaves to the phases after it.
pub struct Decided {
    /// The route (`None`: `default`).
    pub route: Option<usize>,
    /// The request is an upgrade (WebSocket).
    pub upgrade: bool,
    /// The upstream that serves (legacy after a diversion).
    pub upstream: UpstreamId,
    pub side: Side,
    /// The first attempt is the breaker's probe (its number).
    pub probe: Option<u64>,
    /// A shadow copy of the request goes to the new side of this route.
    pub shadow: Option<usize>,
    /// The request is kept as it arrived, to be rewritten for legacy should the new side
    /// fail in a way the route falls back on.
    pub keep_original: bool,
}

/// Decides where the request goes, into `trail`; a request the route cannot take (an
/// upgrade where `upgrades: false`) is refused.
pub fn decide(
    trail: &mut Trail,
    table: &Table,
    head: &Parts,
    admitted: &Admitted,
    peer: &Peer,
    upgrade: bool,
    now: Instant,
) -> Result<Decided, Failure> {
    let mut decision = table.routing.decide(&RequestView {
        path: admitted.route_path(&head.uri),
        method: &head.method,
        headers: &head.headers,
        query: head.uri.query(),
        peer: peer.addr.ip(),
    });
    let ruled = decision.side;
    let mut upstream = table.upstream_of(&decision);
    let mut probe = None;
    let chosen = table.upstream(upstream);
    if let (Side::New, Some(service)) = (decision.side, &chosen.fleet)
        && table.upstream(LEGACY).dial.protocol.is_http2() == chosen.dial.protocol.is_http2()
    {
        match divert(service, now, !upgrade) {
            Divert::No { probe: p } => probe = p,
            Divert::ToLegacy(reason) => {
                decision.side = Side::Legacy;
                decision.reason = reason;
                upstream = LEGACY;
            }
        }
    }
    trail.decided(decision, upstream);
    let policy = table.policy(decision.route);
    if upgrade && !policy.upgrades {
        return Err(Failure::Refused(Refusal::UpgradeRefused));
    }
    // A copy for the new side, when the route shadows what legacy serves by the rules (a
    // new service that cannot take traffic is not sent copies either).
    let shadow = match (decision.route, &policy.shadow) {
        (Some(r), Some(cfg))
            if ruled == Side::Legacy
                && !upgrade
                && cfg.methods.contains(&head.method)
                && fastrand::u32(..10_000) < cfg.percent_bp =>
        {
            Some(r)
        }
        _ => None,
    };
    Ok(Decided {
        route: decision.route,
        upgrade,
        upstream,
        side: decision.side,
        probe,
        shadow,
        keep_original: !upgrade && decision.side == Side::New && policy.fallback.is_some(),
    })
}

/// What the breaker and the health checks make of a request the decision sent to a new
/// service.
enum Divert {
    /// It goes to the service (as the breaker's probe, with its number).
    No { probe: Option<u64> },
    /// It goes to legacy, for this reason.
    ToLegacy(Reason),
}

/// Whether a new service can take a request now; `reported`: the request's outcome will
/// be told to the breaker (an upgrade's is not, so it never takes the probe).
fn divert(service: &ServiceState, now: Instant, reported: bool) -> Divert {
    if !service.available() {
        return Divert::ToLegacy(Reason::Unhealthy);
    }
    match service.breaker.as_ref().map(|b| b.admit(now, reported)) {
        Some(Admit::Refuse) => Divert::ToLegacy(Reason::BreakerOpen),
        Some(Admit::Probe(n)) => Divert::No { probe: Some(n) },
        _ => Divert::No { probe: None },
    }
}
