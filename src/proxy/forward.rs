//! The `send` phase for routes and services with resilience settings (docs/resilience.md):
//! instances picked by the service's balance and health, retries within the route's budget,
//! the breaker told of every attempt on its service, and a fallback to legacy when the new
//! side fails in one of the ways the route names.
//!
//! In the order they apply: the breaker and the health of a new service may send its share
//! to legacy before anything is sent ([`divert`]); each attempt goes to an instance
//! ([`ServiceState::pick`]); a connect failure or a reset may be retried on another instance
//! (`retries`); when the new side has failed for good, the request is replayed to legacy
//! (`fallback`), and the new side's failure is still counted against it.
//!
//! Requests of routes and services without these settings never come here: they take
//! [`send::send`] straight to the service's one address.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::request::Parts;
use http::{Request, Response, StatusCode};

use super::admit::CanonicalPath;
use super::body::ResponseBody;
use super::connection::Peer;
use super::error::Failure;
use super::fleet::{Admit, InFlight, ServiceState};
use super::record::Trail;
use super::respond;
use super::rewrite::{self, Facts};
use super::send::{self, Exchange, Target};
use super::table::{LEGACY, RouteStats, Table, Upstream};
use super::tunnel::Tunnels;
use super::upload::{RequestBody, Tee};
use crate::config::RouteConfig;
use crate::config::resilience::{DEFAULT_RETRY_MAX_BODY, FailKind, FallbackConfig, RetryConfig};
use crate::observe::UpstreamErrorKind;
use crate::routing::{Reason, Side};

/// What the breaker and the health checks make of a request the decision sent to a new
/// service.
pub enum Divert {
    /// It goes to the service (as the breaker's probe, with its number).
    No { probe: Option<u64> },
    /// It goes to legacy, for this reason.
    ToLegacy(Reason),
}

/// Whether a new service can take a request now; `reported`: the request's outcome will
/// be told to the breaker (an upgrade's is not, so it never takes the probe).
pub fn divert(service: &ServiceState, now: Instant, reported: bool) -> Divert {
    if !service.available() {
        return Divert::ToLegacy(Reason::Unhealthy);
    }
    match service.breaker.as_ref().map(|b| b.admit(now, reported)) {
        Some(Admit::Refuse) => Divert::ToLegacy(Reason::BreakerOpen),
        Some(Admit::Probe(n)) => Divert::No { probe: Some(n) },
        _ => Divert::No { probe: None },
    }
}

/// Whether a request must take [`forward`] rather than the plain [`send::send`].
#[inline]
pub fn needed(upstream: &Upstream, route: Option<&RouteConfig>) -> bool {
    upstream.fleet.is_some()
        || route.is_some_and(|r| {
            r.retries.is_some()
                || r.fallback.is_some()
                || r.timeout.is_some()
                || r.connect_timeout.is_some()
        })
}

/// The request as it was before its rewrite for the new side, kept to be rewritten for
/// legacy should it fall back.
pub struct Original {
    pub head: Parts,
    pub path: CanonicalPath,
    pub facts: Facts,
}

/// The request through its attempts, to the response sent to the client.
pub async fn forward(
    mut trail: Trail,
    head: Parts,
    original: Option<Original>,
    mut body: RequestBody,
    probe: Option<u64>,
    peer: &Peer,
    tunnels: &Arc<Tunnels>,
) -> Response<ResponseBody> {
    let table = trail.table.clone();
    let route = table.route_config(trail.decision.route);
    let stats = table.stats(trail.decision.route);
    // The original is kept only for a request the decision sent to the new side of a
    // route with `fallback`.
    let fallback = route
        .and_then(|r| r.fallback)
        .filter(|_| original.is_some());
    let retries = route.and_then(|r| r.retries);
    if retries.is_some() {
        stats.deposit();
    }
    let had_body = body.has_body();
    let idempotent = head.method.is_idempotent();
    let keep = keep_limit(fallback, retries, idempotent);
    let declared = http_body::Body::size_hint(&body).exact();
    let tee = (had_body && keep > 0 && declared.is_none_or(|n| n <= keep)).then(|| body.tee(keep));
    let plan = Attempts {
        table: &table,
        upstream: trail.upstream,
        route,
        stats,
        side: trail.decision.side,
        retries,
        tee: tee.as_deref(),
        had_body,
        probe,
    };
    let run = plan.run(Request::from_parts(head, body), trail.start).await;
    let Some(fallback) = fallback else {
        return finish(trail, run, tunnels);
    };
    // Did the new side fail in a way the route falls back on, with a body to replay?
    let kind = match &run.result {
        Ok(ex) => status_kind(ex.response.status().as_u16()),
        Err(f) => failure_kind(*f),
    }
    // A broken connection is answered 502: `5xx` covers it.
    .filter(|k| {
        fallback.when.contains(*k)
            || (*k == FailKind::Reset && fallback.when.contains(FailKind::Status5xx))
    })
    // A request that is not idempotent falls back only when the new side cannot have acted
    // on it: it never reached it (connect), or it said it has no such thing (404, 501).
    .filter(|k| {
        idempotent
            || matches!(
                k,
                FailKind::Connect | FailKind::Status404 | FailKind::Status501
            )
    });
    let replay = match (&kind, run.unsent) {
        (None, _) => None,
        (Some(_), Some(unsent)) => Some(unsent.into_body()),
        (Some(_), None) if !had_body => Some(RequestBody::empty()),
        // Kept whole, and within the fallback's own `max_body` (retries may keep more).
        (Some(_), None) => tee
            .as_deref()
            .filter(|t| t.size() <= fallback.max_body)
            .and_then(Tee::replay)
            .map(RequestBody::replayed),
    };
    let (Some(kind), Some(replay)) = (kind, replay) else {
        let run = Run {
            unsent: None,
            ..run
        };
        return finish(trail, run, tunnels);
    };
    // The new side's failure counts against it, though the client never sees it.
    let (status, failure) = match &run.result {
        Ok(ex) => (ex.response.status().as_u16(), None),
        Err(f) => (f.status().as_u16(), Some(*f)),
    };
    trail.record_attempt(Side::New, status, failure, run.began.elapsed());
    let reason = if kind == FailKind::Reset {
        FailKind::Status5xx
    } else {
        kind
    };
    stats.metrics[Side::New.index()].fell_back(reason.as_str());
    trail.fallback = Some(reason);
    // The new side's connection and instance are let go before legacy is asked.
    drop(run.result);
    drop(run.instance);
    let Original {
        mut head,
        path,
        facts,
    } = original.expect("a fallback only with the original");
    trail.upstream = LEGACY;
    if let Err(f) = rewrite::rewrite(
        &mut head,
        path,
        &table.upstreams[LEGACY],
        &table,
        peer,
        facts,
        &mut trail.path,
    ) {
        return respond::failure(trail, f);
    }
    let legacy = Attempts {
        upstream: LEGACY,
        side: Side::Legacy,
        tee: None,
        had_body: replay.has_body(),
        probe: None,
        ..plan
    };
    // Legacy's figures take legacy's own time, not the new side's failed wait.
    let began = Instant::now();
    trail.measured_from = Some(began);
    let run = legacy.run(Request::from_parts(head, replay), began).await;
    finish(trail, run, tunnels)
}

/// The body kept for a replay: for a fallback, up to its `max_body` (a request that is
/// not idempotent only when a 404 or 501 may send it there); for a retry after a reset
/// (idempotent requests only), 64 KiB.
fn keep_limit(
    fallback: Option<FallbackConfig>,
    retries: Option<RetryConfig>,
    idempotent: bool,
) -> u64 {
    let for_retry = retries
        .filter(|r| idempotent && r.when.contains(FailKind::Reset))
        .map_or(0, |_| DEFAULT_RETRY_MAX_BODY);
    let for_fallback = fallback
        .filter(|f| {
            idempotent
                || f.when.contains(FailKind::Status404)
                || f.when.contains(FailKind::Status501)
        })
        .map_or(0, |f| f.max_body);
    for_fallback.max(for_retry)
}

/// The response for the outcome of the last attempt.
fn finish(mut trail: Trail, run: Run, tunnels: &Arc<Tunnels>) -> Response<ResponseBody> {
    trail.all_unhealthy = run.all_unhealthy;
    trail.instance = run.instance;
    match run.result {
        Ok(exchange) => respond::upstream(exchange, trail, None, tunnels),
        Err(failure) => respond::failure(trail, failure),
    }
}

/// The failure kind of an answer's status, if it is one `fallback.when` can name.
fn status_kind(status: u16) -> Option<FailKind> {
    match status {
        404 => Some(FailKind::Status404),
        501 => Some(FailKind::Status501),
        500..=599 => Some(FailKind::Status5xx),
        _ => None,
    }
}

/// The failure kind of a failed attempt (the client's own failures are none).
fn failure_kind(f: Failure) -> Option<FailKind> {
    match f.upstream_kind()? {
        UpstreamErrorKind::Connect => Some(FailKind::Connect),
        UpstreamErrorKind::Timeout => Some(FailKind::Timeout),
        UpstreamErrorKind::Reset | UpstreamErrorKind::Protocol => Some(FailKind::Reset),
    }
}

/// The attempts of a request on one side.
#[derive(Clone, Copy)]
struct Attempts<'a> {
    table: &'a Table,
    upstream: usize,
    route: Option<&'a RouteConfig>,
    stats: &'a RouteStats,
    side: Side,
    retries: Option<RetryConfig>,
    tee: Option<&'a Tee>,
    had_body: bool,
    /// The first attempt is the breaker's probe (its number).
    probe: Option<u64>,
}

/// The last attempt's outcome.
struct Run {
    result: Result<Exchange, Failure>,
    /// The request, when the last attempt never sent it.
    unsent: Option<Request<RequestBody>>,
    instance: Option<InFlight>,
    all_unhealthy: bool,
    /// When the last attempt began.
    began: Instant,
}

impl Attempts<'_> {
    async fn run(&self, mut req: Request<RequestBody>, start: Instant) -> Run {
        let upstream = &self.table.upstreams[self.upstream];
        let (timeout, connect_timeout) = self.timeouts(upstream);
        let retry = self.retries.map_or(0, |r| r.attempts);
        let idempotent = req.method().is_idempotent();
        // A head to send again after a reset (a connect failure gives the request back).
        let copy = self
            .retries
            .filter(|r| idempotent && r.when.contains(FailKind::Reset))
            .map(|_| send::head_of(&req));
        let mut avoid: Option<Arc<super::fleet::Instance>> = None;
        let mut began = start;
        let mut tries = 0;
        loop {
            let picked = upstream
                .fleet
                .as_ref()
                .and_then(|f| f.pick(avoid.as_deref()));
            let all_unhealthy = picked.as_ref().is_some_and(|p| p.all_unhealthy);
            let instance = picked.map(|p| p.guard);
            if let Some(g) = &instance {
                let (mut head, body) = req.into_parts();
                g.instance().aim(&mut head, upstream.host_upstream);
                req = Request::from_parts(head, body);
            }
            let target = match &instance {
                Some(g) => g.instance().target(timeout, connect_timeout),
                None => Target {
                    timeout,
                    connect_timeout,
                    ..upstream.target()
                },
            };
            let outcome = send::attempt(&target, req, began).await;
            let (result, unsent) = match outcome {
                Ok(ex) => (Ok(ex), None),
                Err((f, unsent)) => (Err(f), unsent),
            };
            if let Some(fleet) = upstream.fleet.as_ref().filter(|f| f.watches()) {
                // The client's own failure says nothing of the service, nor a 501: the
                // service does not have the endpoint yet (`fallback.when: [501]`).
                let ok = match &result {
                    Ok(ex) => {
                        let status = ex.response.status();
                        Some(!status.is_server_error() || status == StatusCode::NOT_IMPLEMENTED)
                    }
                    Err(f) if f.upstream_kind().is_some() => Some(false),
                    Err(_) => None,
                };
                fleet.report(
                    instance.as_ref().map(|g| &**g.instance()),
                    ok,
                    self.probe.filter(|_| tries == 0),
                    began,
                    Instant::now(),
                );
            }
            // Another attempt: a connect failure (never sent) or, for an idempotent
            // request whose body can be sent again, a reset; within the attempts asked for
            // and the route's budget.
            let again = match (&result, self.retries) {
                (Err(f), Some(r)) if tries < retry => match failure_kind(*f) {
                    Some(FailKind::Connect) if r.when.contains(FailKind::Connect) => {
                        unsent.is_some()
                    }
                    Some(FailKind::Reset)
                        if r.when.contains(FailKind::Reset)
                            && f.upstream_kind() == Some(UpstreamErrorKind::Reset) =>
                    {
                        idempotent && (!self.had_body || self.tee.is_some_and(Tee::whole))
                    }
                    _ => false,
                },
                _ => false,
            };
            if again
                && self
                    .stats
                    .withdraw(self.retries.map_or(0, |r| r.min_per_second))
            {
                tries += 1;
                self.stats.metrics[self.side.index()].retried();
                avoid = instance.as_ref().map(|g| g.instance().clone());
                req = match unsent {
                    Some(r) => r,
                    None => {
                        let body = if self.had_body {
                            RequestBody::replayed(
                                self.tee.and_then(Tee::replay).expect("checked above"),
                            )
                        } else {
                            RequestBody::empty()
                        };
                        Request::from_parts(
                            send::copy_head(copy.as_ref().expect("made for reset retries")),
                            body,
                        )
                    }
                };
                began = Instant::now();
                drop(instance);
                continue;
            }
            return Run {
                result,
                unsent,
                instance,
                all_unhealthy,
                began,
            };
        }
    }

    /// The service's timeouts, tightened by the route's.
    fn timeouts(&self, upstream: &Upstream) -> (Duration, Duration) {
        let timeout = self
            .route
            .and_then(|r| r.timeout)
            .map_or(upstream.timeout, |t| t.min(upstream.timeout));
        let connect = self
            .route
            .and_then(|r| r.connect_timeout)
            .map_or(upstream.connect_timeout, |t| {
                t.min(upstream.connect_timeout)
            })
            .min(timeout);
        (timeout, connect)
    }
}
