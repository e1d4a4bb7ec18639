//! The `record` phase: the end of a request, counted once in the metrics, the compare
//! window and the access log.
//!
//! A [`Trail`] follows a request from its arrival to the end of its response body and
//! gathers what the record needs. [`Trail::record`] is called explicitly when the response
//! body ends (or the gateway's own answer is sent); `Drop` is only the safety net for a
//! request whose client went away first, recorded with what was known then (499 when no
//! response head had gone out).

use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;
use http::uri::PathAndQuery;

use super::connection::Peer;
use super::error::{CLIENT_CLOSED, Failure};
use super::fleet::InFlight;
use super::table::{Endpoint, LEGACY, Table, Upstream, UpstreamId};
use crate::config::resilience::FailKind;
use crate::observe::learner::Seen;
use crate::observe::{AccessLog, ClientErrorKind, Entry, grpc_server_fault};
use crate::routing::{Decision, METHODS, Side, method_index};

/// The path the access log shows: the canonical path, kept without a copy when the request's
/// own target was already canonical.
pub enum LoggedPath {
    Target(PathAndQuery),
    Owned(Box<str>),
}

impl LoggedPath {
    fn as_str(&self) -> &str {
        match self {
            LoggedPath::Target(pq) => pq.path(),
            LoggedPath::Owned(s) => s,
        }
    }
}

/// An attempt whose answer the client did not get (the new side's, before a fallback):
/// recorded against its side as a failure.
struct Attempted {
    side: Side,
    status: u16,
    failure: Option<Failure>,
    latency: std::time::Duration,
}

/// What is known of a request until it is recorded, changed only by the phases' transitions
/// below.
pub struct Trail {
    table: Arc<Table>,
    log: Arc<AccessLog>,
    /// The client's connection (a stall it caused is known there).
    peer: Arc<Peer>,
    start: Instant,
    /// Index into `METHODS`.
    method: usize,
    request_id: HeaderValue,
    /// The route and side chosen (a request refused on arrival has none).
    decision: Option<Decision>,
    /// The upstream whose answer the client gets (legacy after a diversion or a fallback).
    upstream: UpstreamId,
    path: LoggedPath,
    /// The status sent; 0 until a response head is ready.
    status: u16,
    /// The request's declared length (0 for chunked bodies).
    bytes_in: u64,
    bytes_out: u64,
    failure: Option<Failure>,
    /// The answer's `grpc-status`, for a gRPC call.
    grpc: Option<u32>,
    /// The latency the metrics and the comparison take, when it is not the whole request's
    /// life: a tunnel's is the time to its 101 (how long it lives is up to its users).
    latency: Option<std::time::Duration>,
    /// Where the latency the figures take starts, when not at `start` (legacy's answer
    /// after a fallback: not the new side's failed wait).
    measured_from: Option<Instant>,
    /// Counted among its connection's requests under way until recorded.
    counted: bool,
    client: Client,
    /// The attempts whose answers the client did not get.
    earlier: Vec<Attempted>,
    /// The new side failed this way and legacy answered (`fallback`).
    fallback: Option<FailKind>,
    /// The instance that serves, held until the request ends (`least_connections` counts
    /// it as busy).
    instance: Option<InFlight>,
    /// Every instance of the serving service failed its health checks.
    all_unhealthy: bool,
    recorded: bool,
}

/// What the client is.
#[derive(Clone, Copy, Default)]
struct Client {
    /// It speaks HTTP/2.
    h2: bool,
    /// It speaks HTTP/1.0 (it cannot take a chunked answer).
    http10: bool,
    /// The request is a gRPC call (`content-type: application/grpc...`): the gateway's own
    /// errors are answered as gRPC errors.
    grpc: bool,
}

impl Trail {
    /// The trail of a request (`head`) that arrived at `start`, counted among its
    /// connection's requests under way.
    pub fn begin(
        table: Arc<Table>,
        log: &Arc<AccessLog>,
        peer: &Arc<Peer>,
        start: Instant,
        head: &http::request::Parts,
        request_id: HeaderValue,
    ) -> Trail {
        let client = Client {
            h2: head.version == http::Version::HTTP_2,
            http10: head.version == http::Version::HTTP_10,
            grpc: super::headers::is_grpc(head.version, &head.headers),
        };
        let mut trail = Trail::unread(table, log, peer, start, request_id);
        trail.method = method_index(&head.method);
        trail.client = client;
        peer.request_began(!client.h2);
        trail.counted = true;
        trail
    }

    /// The trail of a request the HTTP parser refused (or left unfinished) before the
    /// gateway saw its head.
    pub fn unread(
        table: Arc<Table>,
        log: &Arc<AccessLog>,
        peer: &Arc<Peer>,
        start: Instant,
        request_id: HeaderValue,
    ) -> Trail {
        Trail {
            table,
            log: log.clone(),
            peer: peer.clone(),
            start,
            method: crate::routing::METHOD_OTHER,
            request_id,
            decision: None,
            upstream: LEGACY,
            path: LoggedPath::Owned(Box::from("")),
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            failure: None,
            grpc: None,
            latency: None,
            measured_from: None,
            counted: false,
            client: Client::default(),
            earlier: Vec::new(),
            fallback: None,
            instance: None,
            all_unhealthy: false,
            recorded: false,
        }
    }

    // What the phases read.

    #[inline]
    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    #[inline]
    pub fn start(&self) -> Instant {
        self.start
    }

    #[inline]
    pub fn request_id(&self) -> &HeaderValue {
        &self.request_id
    }

    /// The route and side chosen, once decided.
    #[inline]
    pub fn decision(&self) -> Option<&Decision> {
        self.decision.as_ref()
    }

    /// The upstream whose answer the client gets.
    #[inline]
    pub fn upstream(&self) -> &Upstream {
        self.table.upstream(self.upstream)
    }

    #[inline]
    pub fn client_h2(&self) -> bool {
        self.client.h2
    }

    #[inline]
    pub fn client_http10(&self) -> bool {
        self.client.http10
    }

    #[inline]
    pub fn grpc_call(&self) -> bool {
        self.client.grpc
    }

    #[inline]
    pub fn all_unhealthy(&self) -> bool {
        self.all_unhealthy
    }

    // The transitions, in the order of the phases.

    /// Admission refused the request; `path`: its canonical path, when it had one.
    pub fn refused(&mut self, path: Option<Box<str>>) {
        if let Some(p) = path {
            self.path = LoggedPath::Owned(p);
        }
    }

    /// The decision: the route and side, and the upstream that serves them.
    #[inline]
    pub fn decided(&mut self, decision: Decision, upstream: UpstreamId) {
        self.decision = Some(decision);
        self.upstream = upstream;
    }

    /// The path the access log shows, as the rewrite phase makes it.
    #[inline]
    pub fn logged_path(&mut self) -> &mut LoggedPath {
        &mut self.path
    }

    /// The request body's declared length (0 for chunked bodies).
    #[inline]
    pub fn declared(&mut self, bytes: u64) {
        self.bytes_in = bytes;
    }

    /// The last attempt went to `endpoint`.
    #[inline]
    pub fn served_by(&mut self, endpoint: Endpoint) {
        self.instance = endpoint.instance;
        self.all_unhealthy = endpoint.all_unhealthy;
    }

    /// The new side failed (`status`, `failure`, after `latency`) in a way the route falls
    /// back on (`kind`): legacy is asked from `began`, and its answer is the one measured.
    pub fn fell_back(
        &mut self,
        kind: FailKind,
        status: u16,
        failure: Option<Failure>,
        latency: std::time::Duration,
        began: Instant,
    ) {
        self.earlier.push(Attempted {
            side: Side::New,
            status,
            failure,
            latency,
        });
        self.fallback = Some(kind);
        self.upstream = LEGACY;
        self.measured_from = Some(began);
        self.instance = None;
    }

    /// The response head is ready: `status`, and a gRPC answer's status from its head.
    #[inline]
    pub fn answered(&mut self, status: u16, grpc: Option<u32>) {
        self.status = status;
        self.grpc = grpc;
    }

    /// The request failed: the gateway answers `status` itself (`grpc`: as a gRPC error).
    pub fn failed(&mut self, status: u16, failure: Failure, grpc: Option<u32>) {
        self.status = status;
        self.failure = Some(failure);
        if grpc.is_some() {
            self.grpc = grpc;
        }
    }

    /// The response's body failed after its head went out.
    #[inline]
    pub fn cut(&mut self, failure: Failure) {
        self.failure = Some(failure);
    }

    /// The upgrade was switched (101) now: the figures take the time to here.
    pub fn switched(&mut self) {
        self.status = http::StatusCode::SWITCHING_PROTOCOLS.as_u16();
        self.latency = Some(self.start.elapsed());
    }

    /// Bytes of the answer body sent.
    #[inline]
    pub fn sent(&mut self, bytes: u64) {
        self.bytes_out += bytes;
    }

    /// The answer's trailers carried this `grpc-status`.
    #[inline]
    pub fn grpc_trailer(&mut self, code: u32) {
        self.grpc = Some(code);
    }

    /// A tunnel ended, having carried `up` bytes to the upstream and `down` back.
    pub fn tunnelled(&mut self, up: u64, down: u64) {
        self.bytes_in = up;
        self.bytes_out = down;
    }

    /// Records the request: metrics, compare window, access log. Called once, when the
    /// response has ended. Gives the status as recorded, and whether the request failed.
    pub fn record(mut self) -> (u16, bool) {
        self.write();
        (self.status, self.failure.is_some())
    }

    fn write(&mut self) {
        self.recorded = true;
        if std::mem::take(&mut self.counted) {
            self.peer.request_ended();
        }
        let elapsed = self.start.elapsed();
        if self.failure.is_none() && self.peer.cut() {
            // Cut by the end of a drain: not the client's doing, nor the upstream's.
            self.failure = Some(Failure::Drained);
            if self.status == 0 {
                self.status = Failure::Drained.status().as_u16();
            }
        } else if self.status == 0 {
            self.status = CLIENT_CLOSED;
            self.failure
                .get_or_insert(Failure::Client(ClientErrorKind::Closed));
        } else if self.failure.is_none() && self.peer.send_timed_out() {
            // The answer was cut off because the client stopped taking it.
            self.failure = Some(Failure::Client(ClientErrorKind::SendTimeout));
        }
        let d = self.decision.unwrap_or(Decision::UNMATCHED);
        let stats = self.table.stats(d.route);
        // The attempts the client did not get the answer of count against their side.
        for a in &self.earlier {
            let metrics = &stats.metrics[a.side.index()];
            metrics.record(self.method, a.status, a.latency.as_secs_f64());
            if let Some(kind) = a.failure.and_then(Failure::upstream_kind) {
                metrics.upstream_error(kind);
            }
            stats.window.record(a.side, self.start, a.latency, true);
        }
        // After a fallback, legacy answered: its figures take the answer.
        let served = if self.fallback.is_some() {
            Side::Legacy
        } else {
            d.side
        };
        let metrics = &stats.metrics[served.index()];
        let latency = self
            .latency
            .unwrap_or_else(|| self.measured_from.map_or(elapsed, |t| t.elapsed()));
        metrics.record(self.method, self.status, latency.as_secs_f64());
        if let Some(kind) = self.failure.and_then(Failure::upstream_kind) {
            metrics.upstream_error(kind);
        }
        if let Some(kind) = self.failure.and_then(Failure::client_kind) {
            metrics.client_error(kind);
        }
        if self.failure == Some(Failure::Drained) {
            metrics.cut();
        }
        if let Some(code) = self.grpc {
            metrics.grpc(code);
        }
        // Errors for the comparison: 5xx answers and gateway failures (which are 5xx), and
        // gRPC calls that failed by the server's fault (their HTTP status is 200); a client
        // that left (499) is neither side's failure.
        let error = (self.status >= 500 && self.status != CLIENT_CLOSED)
            || self.grpc.is_some_and(grpc_server_fault);
        stats.window.record(served, self.start, latency, error);
        if let Some(bucket) = d.bucket {
            stats.window.key_seen(served, bucket);
        }
        // The carve-out map learns from a sample of the requests a route (or `default`) took.
        if self.decision.is_some()
            && let Some(learner) = self.table.draw_sample()
        {
            learner.offer(Seen {
                method: METHODS[self.method],
                path: self.path.as_str().into(),
                status: self.status,
                latency,
                route: self.table.route_name(d.route).into(),
                new_side: served == Side::New,
                at_unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |t| t.as_millis() as u64),
            });
        }
        self.log.log(&Entry {
            start: self.start,
            request_id: self.request_id.to_str().unwrap_or("-"),
            method: METHODS[self.method],
            path: self.path.as_str(),
            status: self.status,
            duration: elapsed,
            route: self.table.route_name(d.route),
            side: d.side.as_str(),
            reason: d.reason.as_str(),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            upstream: match &self.instance {
                Some(i) => &i.instance().label,
                None => self.table.upstream(self.upstream).dial.authority.as_str(),
            },
            fallback: self.fallback.map(FailKind::as_str),
            error: self.failure.map(Failure::log_name),
            grpc_status: self.grpc,
        });
    }
}

impl Drop for Trail {
    fn drop(&mut self) {
        // The safety net: a request whose client went away before its response ended.
        if !self.recorded {
            self.write();
        }
    }
}
