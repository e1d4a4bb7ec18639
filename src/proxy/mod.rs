//! The request path (docs/http.md): one request from the client to the chosen side and
//! back, in the phases it lives, each a module of its own:
//!
//! 1. [`admit`]: framing, hop-by-hop headers, request id, limits, `Host`, canonical path;
//! 2. [`decide`]: route and side by the rules, then what the moment makes of them (a new
//!    service that cannot take traffic, an upgrade the route refuses, the shadow sample);
//! 3. [`rewrite`]: the upstream's copy of the request (target, `X-Forwarded-*`, `Host`);
//! 4. [`attempt`]: the attempts on the chosen side, each at an [`Endpoint`](table::Endpoint)
//!    its upstream picks and aims, through [`send`] and the per-thread connection [`pool`]:
//!    retries, the breaker and outlier detection told, a fallback to legacy, all as the
//!    route's compiled [`RoutePolicy`](table::RoutePolicy) says (one attempt for most);
//! 5. [`respond`]: the response head and its streamed [`body`] (the request's own body
//!    goes up as an [`upload`]); after a 101, the two connections are joined in a
//!    [`tunnel`];
//! 6. [`record`]: metrics, compare window and access log, when the response ends.
//!
//! [`Gateway::handle`] reads as that list. Bodies are never buffered. Every failure is a
//! [`Failure`](error::Failure) that says which side failed and how. What outlives a table
//! (services' states, routes' figures, shadow reports, retry budgets) is [`carried`].

pub mod admit;
pub mod attempt;
pub mod body;
pub mod carried;
pub mod chunked;
pub mod connection;
pub mod decide;
pub mod error;
pub mod fleet;
pub mod h1client;
pub mod headers;
pub mod inbound;
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

pub use body::ResponseBody;
pub use connection::{ClientIo, Peer};
pub use error::Failure;
pub use table::Table;
pub use tunnel::Tunnels;
pub use upload::RequestBody;

use crate::observe::AccessLog;
use record::Trail;

/// A client's request body as the request path takes it (hyper's, or one the gateway's own
/// HTTP/1.1 server feeds), or `None` for a request without one.
pub type ClientBody = Option<inbound::Inbound>;

/// The shared state of the request path.
pub struct Gateway {
    /// The table in force, swapped whole by a reload.
    pub table: ArcSwap<Table>,
    pub access_log: Arc<AccessLog>,
    /// The upgraded connections open (a drain waits for them).
    pub tunnels: Arc<Tunnels>,
    /// What is kept across reloads: the services' states, every route's figures, shadow
    /// report and retry budget, the percentages held in memory.
    pub carried: Arc<carried::Carried>,
    /// The room for shadow copies.
    pub shadow_budget: Arc<shadow::Budget>,
}

impl Gateway {
    pub fn new(
        table: Table,
        access_log: Arc<AccessLog>,
        carried: Arc<carried::Carried>,
    ) -> Arc<Gateway> {
        Arc::new(Gateway {
            table: ArcSwap::from_pointee(table),
            access_log,
            tunnels: Arc::default(),
            carried,
            shadow_budget: Arc::default(),
        })
    }

    /// Serves one request, in its phases: admit, decide, rewrite, attempt, respond (the
    /// record follows when the response ends).
    pub async fn handle(
        &self,
        mut req: Request<ClientBody>,
        peer: &Arc<Peer>,
    ) -> Result<Response<ResponseBody>, Infallible> {
        let start = Instant::now();
        let table = self.table.load_full();
        // An upgrade asked (WebSocket): the protocol, and the client's connection once the
        // 101 is sent. Read before admission removes `Upgrade` with the hop-by-hop headers.
        let upgrade = headers::upgrade_asked(req.headers(), req.version())
            .map(|proto| (proto, hyper::upgrade::on(&mut req)));
        let (mut head, body) = req.into_parts();

        let admission = admit::admit(&mut head, &table.edge);
        let mut trail = Trail::begin(
            table.clone(),
            &self.access_log,
            peer,
            start,
            &head,
            admission.request_id,
        );
        let admitted = match admission.verdict {
            Ok(admitted) => admitted,
            Err(refused) => return Ok(respond::refused(trail, refused)),
        };

        let decided = match decide::decide(
            &mut trail,
            &table,
            &head,
            &admitted,
            peer,
            upgrade.is_some(),
            start,
        ) {
            Ok(decided) => decided,
            Err(failure) => return Ok(respond::failure(trail, failure)),
        };

        let pending = rewrite::Pending::new(head, &body, admitted.path, admission.trailers);
        let copy = decided
            .shadow
            .and_then(|r| shadow::copy(&self.shadow_budget, &table, r, &pending, peer));
        let mut out =
            match rewrite::outbound(&mut trail, &table, &decided, pending, body, upgrade, peer) {
                Ok(out) => out,
                Err(failure) => return Ok(respond::failure(trail, failure)),
            };
        let tap = copy.map(|copy| copy.watching(&mut out.body, &out.head));

        let sent = attempt::run(
            &mut trail,
            &table,
            &decided,
            out.original,
            out.head,
            out.body,
            peer,
        )
        .await;

        Ok(respond::answer(
            trail,
            sent,
            out.upgrade,
            tap,
            &self.tunnels,
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
        self.record_unfinished(peer, failure);
    }

    /// Records a request head the client left unfinished past `client.head_timeout` (the
    /// gateway's own HTTP/1.1 server closes the connection on it).
    pub fn record_head_timeout(&self, peer: &Arc<Peer>) {
        let failure = Failure::Client(crate::observe::ClientErrorKind::HeadTimeout);
        self.record_unfinished(peer, failure);
    }

    fn record_unfinished(&self, peer: &Arc<Peer>, failure: Failure) {
        let mut trail = Trail::unread(
            self.table.load_full(),
            &self.access_log,
            peer,
            Instant::now(),
            headers::new_request_id(),
        );
        trail.failed(failure.status().as_u16(), failure, None);
        trail.record();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<'a, F: std::future::Future>(
        _handle: impl Fn(&'a Gateway, Request<ClientBody>, &'a Arc<Peer>) -> F,
    ) -> usize {
        std::mem::size_of::<F>()
    }

    /// A request's future is set up and moved with every request, and every connection
    /// serving one holds it: what only a few requests need (a new connection and its TLS
    /// handshake, a fallback's attempts) is boxed when it happens, not carried by all.
    #[test]
    fn a_requests_future_carries_only_what_every_request_needs() {
        let size = future_size(Gateway::handle);
        assert!(size <= 9 * 1024, "Gateway::handle's future is {size} bytes");
        fn checkout_size<'a, F: std::future::Future>(
            _checkout: impl Fn(pool::PoolKey, &'a pool::Dial, Instant, pool::Limit, bool) -> F,
        ) -> usize {
            std::mem::size_of::<F>()
        }
        let checkout = checkout_size(pool::checkout);
        assert!(
            checkout <= 1024,
            "pool::checkout's future is {checkout} bytes"
        );
    }
}
