//! The request path (docs/http.md): one request from the client to the chosen side and
//! back, in the phases it lives, each a module of its own:
//!
//! 1. [`admit`]: framing, hop-by-hop headers, request id, limits, `Host`, canonical path;
//! 2. decide: route and side, by [`RouteTable::decide`](crate::routing::RouteTable::decide);
//! 3. [`rewrite`]: the upstream's copy of the request (target, `X-Forwarded-*`, `Host`);
//! 4. [`send`]: the exchange through the per-thread connection [`pool`], up to the head;
//! 5. [`respond`]: the response head and its streamed [`body`] (the request's own body
//!    goes up as an [`upload`]); after a 101, the two connections are joined in a
//!    [`tunnel`];
//! 6. [`record`]: metrics, compare window and access log, when the response ends.
//!
//! [`Gateway::handle`] reads as that list. Bodies are never buffered. Every failure is a
//! [`Failure`](error::Failure) that says which side failed and how.

pub mod admit;
pub mod body;
pub mod connection;
pub mod error;
pub mod fleet;
pub mod forward;
pub mod headers;
pub mod overrides;
pub mod pool;
pub mod record;
pub mod resolve;
pub mod respond;
pub mod rewrite;
pub mod send;
pub mod shadow;
pub mod table;
pub mod tunnel;
pub mod upload;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::{Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;

pub use body::ResponseBody;
pub use connection::{ClientIo, Peer};
pub use error::Failure;
pub use table::Table;
pub use tunnel::Tunnels;
pub use upload::RequestBody;

use crate::observe::AccessLog;
use crate::routing::{RequestView, Side, method_index};
use record::Trail;

/// The shared state of the request path.
pub struct Gateway {
    /// The table in force, swapped whole by a reload.
    pub table: ArcSwap<Table>,
    pub access_log: Arc<AccessLog>,
    /// The upgraded connections open (a drain waits for them).
    pub tunnels: Arc<Tunnels>,
    /// The services' instances, health and breakers, kept across reloads.
    pub fleet: Arc<fleet::Fleet>,
    /// Every route's shadow comparison, kept across reloads.
    pub shadows: Arc<crate::observe::shadow::Shadows>,
    /// The percentages held in memory that the routes file does not say yet, kept across
    /// reloads.
    pub overrides: Arc<overrides::Overrides>,
    /// The room for shadow copies.
    pub shadow_budget: Arc<shadow::Budget>,
}

impl Gateway {
    pub fn new(
        table: Table,
        access_log: Arc<AccessLog>,
        fleet: Arc<fleet::Fleet>,
        shadows: Arc<crate::observe::shadow::Shadows>,
        overrides: Arc<overrides::Overrides>,
    ) -> Arc<Gateway> {
        Arc::new(Gateway {
            table: ArcSwap::from_pointee(table),
            access_log,
            tunnels: Arc::default(),
            fleet,
            shadows,
            overrides,
            shadow_budget: Arc::default(),
        })
    }

    /// Serves one request.
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        peer: &Arc<Peer>,
    ) -> Result<Response<ResponseBody>, Infallible> {
        let start = Instant::now();
        let table = self.table.load_full();
        // An upgrade asked (WebSocket): the protocol, and the client's connection once the
        // 101 is sent. Read before admission removes `Upgrade` with the hop-by-hop headers.
        let upgrade = headers::upgrade_asked(req.headers(), req.version())
            .map(|proto| (proto, hyper::upgrade::on(&mut req)));
        let (mut head, body) = req.into_parts();
        let client = &table.config.client;

        let admission = admit::admit(&mut head, &table.edge);
        let mut trail = Trail::begin(
            table.clone(),
            &self.access_log,
            peer,
            start,
            method_index(&head.method),
            admission.request_id,
        );
        trail.client_h2 = head.version == http::Version::HTTP_2;
        trail.client_http10 = head.version == http::Version::HTTP_10;
        trail.count_on_connection(!trail.client_h2);
        trail.grpc_call = headers::is_grpc(head.version, &head.headers);
        let admitted = match admission.verdict {
            Ok(admitted) => admitted,
            Err(refused) => {
                if let Some(p) = refused.path {
                    trail.path = record::LoggedPath::Owned(p);
                }
                return Ok(respond::failure(trail, Failure::Refused(refused.refusal)));
            }
        };

        let decision = table.routing.decide(&RequestView {
            path: admitted.route_path(&head.uri),
            method: &head.method,
            headers: &head.headers,
            query: head.uri.query(),
            peer: peer.addr.ip(),
        });
        trail.decision = decision;
        trail.decided = true;
        trail.upstream = table.upstream_of(&decision);
        // A new service that cannot take the request now (every instance unhealthy, or
        // its breaker open) sends it to legacy, when legacy speaks its protocol.
        let mut probe = None;
        if let (Side::New, Some(service)) = (decision.side, &table.upstreams[trail.upstream].fleet)
            && table.upstreams[table::LEGACY].dial.protocol.is_http2()
                == table.upstreams[trail.upstream].dial.protocol.is_http2()
        {
            match forward::divert(service, start, upgrade.is_none()) {
                forward::Divert::No { probe: p } => probe = p,
                forward::Divert::ToLegacy(reason) => {
                    trail.decision.side = Side::Legacy;
                    trail.decision.reason = reason;
                    trail.upstream = table::LEGACY;
                }
            }
        }
        let upstream = &table.upstreams[trail.upstream];
        if upgrade.is_some() && !table.upgrades(decision.route) {
            return Ok(respond::failure(
                trail,
                Failure::Refused(error::Refusal::UpgradeRefused),
            ));
        }

        let path = admitted.path;
        let length = body.size_hint().exact();
        let facts = rewrite::Facts {
            chunked_body: length.is_none() && !body.is_end_stream(),
            trailers: admission.trailers,
        };
        let route = table.route_config(decision.route);
        let resilient = upgrade.is_none() && forward::needed(upstream, route);
        // Kept to be rewritten for legacy, should the new side fail and the route fall back.
        let original = (resilient
            && trail.decision.side == Side::New
            && route.is_some_and(|r| r.fallback.is_some()))
        .then(|| forward::Original {
            head: send::copy_head(&head),
            path: path.clone(),
            facts,
        });
        // A copy for the new side, when the route shadows what legacy serves (by the
        // rules, not by a diversion: a new service that cannot take traffic is not sent
        // copies either).
        let shadow = match (decision.route, route.and_then(|r| r.shadow.as_ref())) {
            (Some(r), Some(cfg))
                if decision.side == Side::Legacy
                    && upgrade.is_none()
                    && cfg.methods.contains(&head.method)
                    && fastrand::u32(..10_000) < cfg.percent_bp =>
            {
                self.shadow_copy(&table, r, &head, &path, facts, peer, length, start)
            }
            _ => None,
        };
        if let Err(failure) = rewrite::rewrite(
            &mut head,
            path,
            upstream,
            &table,
            peer,
            facts,
            &mut trail.path,
        ) {
            return Ok(respond::failure(trail, failure));
        }
        // The declared length (hyper has parsed Content-Length); 0 for chunked bodies.
        trail.bytes_in = length.unwrap_or(0);
        let mut body =
            upload::RequestBody::new(body, client.body_timeout).trailers_held_to(&table.edge);
        if let Some(mut copy) = shadow {
            copy.watch_request(&mut body, &head);
            trail.shadow = Some(Box::new(copy));
        }
        if resilient {
            return Ok(
                forward::forward(trail, head, original, body, probe, peer, &self.tunnels).await,
            );
        }
        // An HTTP/2 service is asked for no upgrade (HTTP/2 has none): the request goes as
        // the ordinary request it also is.
        let upgrade =
            upgrade
                .filter(|_| !upstream.dial.protocol.is_http2())
                .map(|(proto, client)| {
                    headers::ask_upgrade(&mut head.headers, proto.clone());
                    (proto, client)
                });
        // An upgrade to a service with instances goes to one of them (without retries or
        // fallback: a tunnel cannot be replayed).
        trail.instance = upstream
            .fleet
            .as_ref()
            .and_then(|f| f.pick(None))
            .map(|p| p.guard);
        if let Some(i) = &trail.instance {
            i.instance().aim(&mut head, upstream.host_upstream);
        }
        let target = match &trail.instance {
            Some(i) => i
                .instance()
                .target(upstream.timeout, upstream.connect_timeout),
            None => upstream.target(),
        };
        match send::send(&target, head, body, start).await {
            Ok(exchange) => Ok(respond::upstream(exchange, trail, upgrade, &self.tunnels)),
            Err(failure) => Ok(respond::failure(trail, failure)),
        }
    }

    /// A shadow copy of a request of route `r` (its head rewritten for the new side), if
    /// the new service can take it and the budget has room; otherwise what became of it is
    /// counted.
    #[allow(clippy::too_many_arguments)]
    fn shadow_copy(
        &self,
        table: &Arc<Table>,
        r: usize,
        head: &http::request::Parts,
        path: &admit::CanonicalPath,
        facts: rewrite::Facts,
        peer: &Peer,
        declared: Option<u64>,
        now: Instant,
    ) -> Option<shadow::Copy> {
        let cfg = table.config.routes[r].shadow.as_ref()?;
        let new = &table.upstreams[table.new_upstream(r)];
        // A new service that cannot take traffic (no healthy instance, breaker open) is
        // not sent copies either.
        let down = new
            .fleet
            .as_ref()
            .is_some_and(|f| !f.available() || f.breaker.as_ref().is_some_and(|b| b.is_open(now)));
        if down {
            shadow::count(table, r, crate::observe::shadow::Outcome::Skipped);
            return None;
        }
        if declared.is_some_and(|n| n > cfg.max_body) {
            shadow::count(table, r, crate::observe::shadow::Outcome::TooLarge);
            return None;
        }
        // Room for the request body as declared (a chunked one: up to `max_body`).
        let Some(room) = self
            .shadow_budget
            .room(declared.unwrap_or(cfg.max_body).min(cfg.max_body))
        else {
            shadow::count(table, r, crate::observe::shadow::Outcome::Skipped);
            return None;
        };
        let mut new_head = send::copy_head(head);
        let mut logged = record::LoggedPath::Owned(Box::from(""));
        if rewrite::rewrite(
            &mut new_head,
            path.clone(),
            new,
            table,
            peer,
            facts,
            &mut logged,
        )
        .is_err()
        {
            shadow::count(table, r, crate::observe::shadow::Outcome::Skipped);
            return None;
        }
        Some(shadow::Copy::new(
            table.clone(),
            r,
            room,
            new_head,
            path.as_str(&head.uri),
        ))
    }

    /// Records a request the HTTP parser refused before the gateway saw it, or a head the
    /// client left unfinished past `client.head_timeout`: counted under route `default` and
    /// logged, like every request the gateway refuses (the parser has answered it already,
    /// or closed the connection).
    pub fn record_unread(&self, peer: &Arc<Peer>, error: &hyper::Error) {
        let failure = if error.is_parse() {
            let status = if error.is_parse_too_large() {
                // hyper answers an over-long target 414 and any other oversized head 431.
                if error.to_string().contains("URI too long") {
                    414
                } else {
                    431
                }
            } else {
                400
            };
            Failure::Refused(error::Refusal::Malformed(status))
        } else if (error.is_timeout() || peer.idle_timed_out()) && peer.sent_since_answer() {
            Failure::Client(crate::observe::ClientErrorKind::HeadTimeout)
        } else {
            return;
        };
        let mut trail = Trail::begin(
            self.table.load_full(),
            &self.access_log,
            peer,
            Instant::now(),
            crate::routing::METHOD_OTHER,
            headers::new_request_id(),
        );
        trail.status = failure.status().as_u16();
        trail.failure = Some(failure);
        trail.record();
    }
}
