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
use super::table::{LEGACY, Table};
use crate::config::resilience::FailKind;
use crate::observe::{AccessLog, ClientErrorKind, Entry, grpc_server_fault};
use crate::routing::{Decision, METHODS, Side};

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

/// What is known of a request until it is recorded.
pub struct Trail {
    pub table: Arc<Table>,
    log: Arc<AccessLog>,
    /// The client's connection (a stall it caused is known there).
    peer: Arc<Peer>,
    pub start: Instant,
    /// Index into `METHODS`.
    method: usize,
    pub request_id: HeaderValue,
    pub decision: Decision,
    /// False until `decision` is made (a request refused on arrival has none).
    pub decided: bool,
    /// Index into `Table::upstreams` of the side that serves.
    pub upstream: usize,
    pub path: LoggedPath,
    /// The status sent; 0 until a response head is ready.
    pub status: u16,
    /// The request's declared length (0 for chunked bodies).
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub failure: Option<Failure>,
    /// The answer's `grpc-status`, for a gRPC call.
    pub grpc: Option<u32>,
    /// The latency the metrics and the comparison take, when it is not the whole request's
    /// life: a tunnel's is the time to its 101 (how long it lives is up to its users).
    pub latency: Option<std::time::Duration>,
    /// Counted among its connection's requests under way until recorded.
    counted: bool,
    /// The client speaks HTTP/2.
    pub client_h2: bool,
    /// The client speaks HTTP/1.0 (it cannot take a chunked answer).
    pub client_http10: bool,
    /// The request is a gRPC call (`content-type: application/grpc...`): the gateway's own
    /// errors are answered as gRPC errors.
    pub grpc_call: bool,
    /// The new side failed this way and legacy answered (`fallback`).
    pub fallback: Option<FailKind>,
    /// The instance that serves, held until the request ends (`least_connections` counts
    /// it as busy).
    pub instance: Option<InFlight>,
    /// Every instance of the serving service failed its health checks.
    pub all_unhealthy: bool,
    /// Where the latency the figures take starts, when not at `start` (legacy's answer
    /// after a fallback: not the new side's failed wait).
    pub measured_from: Option<Instant>,
    /// The shadow copy of this request, while legacy serves it.
    pub shadow: Option<Box<super::shadow::Copy>>,
    recorded: bool,
}

impl Trail {
    /// The trail of a request that arrived at `start`.
    pub fn begin(
        table: Arc<Table>,
        log: &Arc<AccessLog>,
        peer: &Arc<Peer>,
        start: Instant,
        method: usize,
        request_id: HeaderValue,
    ) -> Trail {
        Trail {
            table,
            log: log.clone(),
            peer: peer.clone(),
            start,
            method,
            request_id,
            decision: Decision::UNMATCHED,
            decided: false,
            upstream: LEGACY,
            path: LoggedPath::Owned(Box::from("")),
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            failure: None,
            grpc: None,
            grpc_call: false,
            latency: None,
            counted: false,
            client_h2: false,
            client_http10: false,
            fallback: None,
            instance: None,
            all_unhealthy: false,
            shadow: None,
            measured_from: None,
            recorded: false,
        }
    }

    /// Counts the request among its connection's requests under way until it is recorded
    /// (an idle connection has none).
    pub fn count_on_connection(&mut self, http1: bool) {
        self.peer.request_began(http1);
        self.counted = true;
    }

    /// Records a failed attempt on `side` that the client will not see (the new side's,
    /// before a fallback): in the metrics and the compare window, as a failure.
    pub fn record_attempt(
        &self,
        side: Side,
        status: u16,
        failure: Option<Failure>,
        latency: std::time::Duration,
    ) {
        let stats = self.table.stats(self.decision.route);
        let metrics = &stats.metrics[side.index()];
        metrics.record(self.method, status, latency.as_secs_f64());
        if let Some(kind) = failure.and_then(Failure::upstream_kind) {
            metrics.upstream_error(kind);
        }
        stats.window.record(side, self.start, latency, true);
    }

    /// Records the request: metrics, compare window, access log. Called once, when the
    /// response has ended.
    pub fn record(mut self) {
        self.write();
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
        if let Some(copy) = self.shadow.take() {
            copy.finish(self.status, self.failure.is_some());
        }
        let d = self.decision;
        let stats = self.table.stats(d.route);
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
                None => self.table.upstreams[self.upstream].dial.authority.as_str(),
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
