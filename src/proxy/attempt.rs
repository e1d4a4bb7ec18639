//! The `attempt` phase, for every request: the attempts it makes on the side the decision
//! chose, up to a response head (docs/resilience.md).
//!
//! Each attempt asks its upstream for an [`Endpoint`] again (an instance by the service's
//! balance and health, or its one address); a connect failure or a reset may be retried on
//! another instance (`retries`, within the route's budget); the breaker and outlier
//! detection are told of every attempt; when the new side has failed for good in a way the
//! route names, the request is replayed to legacy (`fallback`), the new side's attempt kept
//! in the trail as data for the record. A route and service with none of these settings
//! make one attempt at the service's one address, through the same loop.
//!
//! An upgrade is one attempt with no body kept (a tunnel cannot be replayed); its connect
//! failures, which sent nothing, may still be retried.

use std::sync::Arc;
use std::time::Instant;

use http::request::Parts;
use http::{Request, StatusCode};

use super::connection::Peer;
use super::decide::Decided;
use super::error::Failure;
use super::fleet::Instance;
use super::record::Trail;
use super::rewrite::{self, Original};
use super::send::{self, Exchange};
use super::table::{Endpoint, LEGACY, RouteStats, Table, Timeouts, UpstreamId};
use super::upload::{RequestBody, Tee};
use crate::config::resilience::{DEFAULT_RETRY_MAX_BODY, FailKind, FallbackConfig, RetryConfig};
use crate::observe::UpstreamErrorKind;
use crate::routing::Side;

/// The request through its attempts, up to the response head the client gets (or the
/// failure that answers it). The attempts the client does not see are in `trail`.
/// `original`: the request before its rewrite, for a fallback (only when one may happen).
pub async fn run(
    trail: &mut Trail,
    table: &Table,
    decided: &Decided,
    original: Option<Original>,
    head: Parts,
    mut body: RequestBody,
    peer: &Peer,
) -> Result<Exchange, Failure> {
    let upgrade = decided.upgrade;
    let stats = table.stats(decided.route);
    let policy = &stats.policy;
    let retries = policy.retries;
    if retries.is_some() {
        stats.budget.deposit();
    }
    let fallback = policy.fallback.filter(|_| original.is_some());
    let had_body = body.has_body();
    let idempotent = head.method.is_idempotent();
    let keep = if upgrade {
        0
    } else {
        keep_limit(fallback, retries, idempotent)
    };
    let tee = (had_body && keep > 0)
        .then(|| http_body::Body::size_hint(&body).exact())
        .filter(|declared| declared.is_none_or(|n| n <= keep))
        .map(|_| body.tee(keep));
    let first = Attempts {
        table,
        upstream: decided.upstream,
        stats,
        side: decided.side,
        retries,
        timeouts: table.upstream(decided.upstream).timeouts_for(policy),
        tee: tee.as_deref(),
        had_body,
        probe: decided.probe,
        upgrade,
    };
    let run = first
        .run(Request::from_parts(head, body), trail.start())
        .await;
    // Did the new side fail in a way the route falls back on, with a body to replay?
    let fell = fallback.and_then(|f| Some((f, fallback_kind(&run.result, f, idempotent)?)));
    let Some((fallback, kind)) = fell else {
        trail.served_by(run.endpoint);
        return run.result;
    };
    let replay = match run.unsent {
        Some(unsent) => Some(unsent.into_body()),
        None if !had_body => Some(RequestBody::empty()),
        // Kept whole, and within the fallback's own `max_body` (retries may keep more).
        None => tee
            .as_deref()
            .filter(|t| t.size() <= fallback.max_body)
            .and_then(Tee::replay)
            .map(RequestBody::replayed),
    };
    let Some(replay) = replay else {
        trail.served_by(run.endpoint);
        return run.result;
    };
    // The new side's failure counts against it, though the client never sees it.
    let (status, failure) = match &run.result {
        Ok(ex) => (ex.response.status().as_u16(), None),
        Err(f) => (f.status().as_u16(), Some(*f)),
    };
    let reason = if kind == FailKind::Reset {
        FailKind::Status5xx
    } else {
        kind
    };
    stats.metrics[Side::New.index()].fell_back(reason.as_str());
    let latency = run.began.elapsed();
    // The new side's connection and instance are let go before legacy is asked.
    drop(run.result);
    drop(run.endpoint);
    // Legacy's figures take legacy's own time, not the new side's failed wait.
    let began = Instant::now();
    trail.fell_back(reason, status, failure, latency, began);
    let Original {
        mut head,
        path,
        facts,
    } = original.expect("a fallback only with the original");
    rewrite::rewrite(
        &mut head,
        path,
        table.upstream(LEGACY),
        table,
        peer,
        facts,
        trail.logged_path(),
    )?;
    let legacy = Attempts {
        upstream: LEGACY,
        side: Side::Legacy,
        timeouts: table.upstream(LEGACY).timeouts_for(policy),
        tee: None,
        had_body: replay.has_body(),
        probe: None,
        ..first
    };
    // Boxed: a fallback is rare, and its attempts' future would otherwise be a second one
    // inside every request's future.
    let run = Box::pin(legacy.run(Request::from_parts(head, replay), began)).await;
    trail.served_by(run.endpoint);
    run.result
}

/// The way the new side failed, if the route falls back on it (`None`: its answer stands).
fn fallback_kind(
    result: &Result<Exchange, Failure>,
    fallback: FallbackConfig,
    idempotent: bool,
) -> Option<FailKind> {
    match result {
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
    })
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
    upstream: UpstreamId,
    stats: &'a RouteStats,
    side: Side,
    retries: Option<RetryConfig>,
    timeouts: Timeouts,
    tee: Option<&'a Tee>,
    had_body: bool,
    /// The first attempt is the breaker's probe (its number).
    probe: Option<u64>,
    /// An upgrade: only what was never sent is sent again.
    upgrade: bool,
}

/// The last attempt's outcome.
struct Run {
    result: Result<Exchange, Failure>,
    /// The request, when the last attempt never sent it.
    unsent: Option<Request<RequestBody>>,
    endpoint: Endpoint,
    /// When the last attempt began.
    began: Instant,
}

impl Attempts<'_> {
    async fn run(&self, mut req: Request<RequestBody>, start: Instant) -> Run {
        let upstream = self.table.upstream(self.upstream);
        let retry = self.retries.map_or(0, |r| r.attempts);
        let idempotent = req.method().is_idempotent();
        // A head to send again after a reset (a connect failure gives the request back).
        let copy = self
            .retries
            .filter(|r| idempotent && r.when.contains(FailKind::Reset))
            .map(|_| send::head_of(&req));
        let mut avoid: Option<Arc<Instance>> = None;
        let mut began = start;
        let mut tries = 0;
        loop {
            let (mut head, body) = req.into_parts();
            let endpoint = upstream.endpoint(&mut head, avoid.as_deref());
            let target = upstream.target(&endpoint, self.timeouts);
            let outcome = send::attempt(&target, Request::from_parts(head, body), began).await;
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
                    endpoint.instance.as_ref().map(|g| &**g.instance()),
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
                        if !self.upgrade
                            && r.when.contains(FailKind::Reset)
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
                    .budget
                    .withdraw(self.retries.map_or(0, |r| r.min_per_second))
            {
                tries += 1;
                self.stats.metrics[self.side.index()].retried();
                avoid = endpoint.instance.as_ref().map(|g| g.instance().clone());
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
                drop(endpoint);
                continue;
            }
            return Run {
                result,
                unsent,
                endpoint,
                began,
            };
        }
    }
}
