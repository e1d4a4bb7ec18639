//! The `respond` phase: the response head the client gets, and its body.
//!
//! The upstream's head loses its hop-by-hop headers (and a stale `Content-Length` beside
//! `Transfer-Encoding`, RFC 9112 §6.3; a repeated one is folded into one) and gains the
//! request id and `Via`; its body streams through [`ResponseBody`], trailers included. An
//! answer whose body the gateway could not relay as sent (a transfer coding other than
//! `chunked`, `Content-Length`s that disagree) or an unasked-for 101 is refused: 502. A 101
//! to an upgrade the client asked for is relayed, and the two connections are joined in a
//! [`tunnel`](super::tunnel). A failure gets the gateway's own JSON answer (docs/http.md,
//! "Errors").

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use hyper::upgrade::OnUpgrade;

use super::body::{Held, ResponseBody};
use super::error::{Failure, Stage, error_body};
use super::headers::{
    Coding, X_REQUEST_ID, ask_upgrade, grpc_status, strip_hop_by_hop, transfer_coding,
};
use super::record::Trail;
use super::send::Exchange;
use super::shadow::Copy;
use super::tunnel::{self, Tunnels};
use crate::observe::UpstreamErrorKind;

/// The upstream's answer, on its way to the client. `upgrade` is the protocol the client
/// asked to switch to and its connection: a 101 to that protocol joins it to the
/// upstream's in a tunnel (a 101 to another is refused, as any unasked-for 101).
/// `tap`: the shadow copy of the request, which takes legacy's answer as it streams.
pub fn upstream(
    mut exchange: Exchange,
    mut trail: Trail,
    upgrade: Option<(HeaderValue, OnUpgrade)>,
    tap: Option<Box<Copy>>,
    tunnels: &Arc<Tunnels>,
) -> Response<ResponseBody> {
    if let Some((asked, client)) = upgrade
        && exchange.response.status() == StatusCode::SWITCHING_PROTOCOLS
        && exchange
            .response
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(asked.as_bytes()))
    {
        let upstream = hyper::upgrade::on(&mut exchange.response);
        return switched(exchange, trail, client, upstream, tunnels);
    }
    let (mut parts, body) = exchange.response.into_parts();
    if let Err(why) = relayable(&mut parts) {
        let up = trail.upstream();
        tracing::debug!(upstream = %up.dial.authority, why, "refusing the upstream's answer");
        // The connection is dropped with `exchange.conn`: it is not reused.
        let failure = Failure::Upstream {
            kind: UpstreamErrorKind::Protocol,
            during: Stage::Head,
        };
        return self::failure(trail, failure);
    }
    strip_hop_by_hop(&mut parts.headers);
    let tap = tap.map(|mut copy| {
        copy.legacy_headers = Some(parts.headers.clone());
        copy
    });
    parts
        .headers
        .insert(X_REQUEST_ID, trail.request_id().clone());
    parts
        .headers
        .append(header::VIA, trail.table().via(parts.version).clone());
    // An HTTP/1.0 client cannot take a chunked answer: one of unknown length ends at the
    // close of its connection, which the client must be told (not `keep-alive`).
    if trail.client_http10() && !parts.headers.contains_key(header::CONTENT_LENGTH) {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    // A gRPC answer without a body carries its status in its head ("Trailers-Only").
    trail.answered(parts.status.as_u16(), grpc_status(&parts.headers));
    let (key, read_timeout) = (exchange.key, trail.upstream().timeout);
    let conn = Held {
        key,
        conn: exchange.conn,
        since: trail.start(),
        uploaded: exchange.uploaded,
    };
    // An HTTP/2 client's stream is watched for stalls (see `ResponseBody::watch_client`).
    let send_timeout = trail
        .client_h2()
        .then(|| trail.table().config.client.send_timeout);
    let mut body = ResponseBody::upstream(body, trail, conn, read_timeout, tap);
    if let Some(t) = send_timeout {
        body.watch_client(t);
    }
    Response::from_parts(parts, body)
}

/// The upstream's 101: relayed with its `Upgrade` and `Connection: upgrade`; once it is
/// sent, the two connections are joined and the request is recorded when the tunnel ends.
fn switched(
    exchange: Exchange,
    mut trail: Trail,
    client: OnUpgrade,
    upstream: OnUpgrade,
    tunnels: &Arc<Tunnels>,
) -> Response<ResponseBody> {
    let (mut parts, _) = exchange.response.into_parts();
    let proto = parts.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(proto) = proto {
        ask_upgrade(&mut parts.headers, proto);
    }
    parts
        .headers
        .insert(X_REQUEST_ID, trail.request_id().clone());
    parts
        .headers
        .append(header::VIA, trail.table().via(parts.version).clone());
    trail.switched();
    let idle = trail.upstream().dial.idle_timeout;
    // The connection is the tunnel's now; its pool handle is of no more use.
    drop(exchange.conn);
    tunnel::spawn(client, upstream, trail, idle, tunnels);
    Response::from_parts(parts, ResponseBody::empty())
}

/// Whether the upstream's head can be relayed as it is meant, after folding a repeated
/// `Content-Length` and dropping a stale one; the reason when not.
fn relayable(parts: &mut http::response::Parts) -> Result<(), &'static str> {
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        // Upgrades asked for are handled before this; to any other request a 101 is a
        // protocol error, and relaying it would leave the client with a connection that
        // goes nowhere.
        return Err(
            "a 101 Switching Protocols to a request that asked for no upgrade (or without Upgrade)",
        );
    }
    match transfer_coding(&parts.headers) {
        Coding::None => {}
        Coding::Chunked => {
            // A message with both is framed by Transfer-Encoding (RFC 9112 §6.3); the
            // gateway re-frames the body, so the stale length must not reach the client.
            parts.headers.remove(header::CONTENT_LENGTH);
            return Ok(());
        }
        Coding::Ambiguous | Coding::Other => {
            return Err(
                "a transfer coding other than chunked (the client would get the coded bytes as they are)",
            );
        }
    }
    let mut lengths = parts
        .headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .peekable();
    let first = lengths.next();
    let repeated = lengths.peek().is_some() || first.is_some_and(|v| v.as_bytes().contains(&b','));
    if repeated {
        // `Content-Length: 5, 5` (or two lines): one value, or none (RFC 9110 §8.6).
        let mut value: Option<u64> = None;
        for v in parts.headers.get_all(header::CONTENT_LENGTH) {
            for n in v
                .to_str()
                .map_err(|_| "an unreadable Content-Length")?
                .split(',')
            {
                let n: u64 = n.trim().parse().map_err(|_| "an invalid Content-Length")?;
                if value.is_some_and(|v| v != n) {
                    return Err("Content-Lengths that disagree");
                }
                value = Some(n);
            }
        }
        if let Some(n) = value {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
    Ok(())
}

/// The response to the attempts' outcome: the upstream's answer, or the gateway's own to
/// its failure.
pub fn answer(
    trail: Trail,
    sent: Result<Exchange, Failure>,
    upgrade: Option<(HeaderValue, OnUpgrade)>,
    tap: Option<Box<Copy>>,
    tunnels: &Arc<Tunnels>,
) -> Response<ResponseBody> {
    match sent {
        Ok(exchange) => upstream(exchange, trail, upgrade, tap, tunnels),
        Err(f) => failure(trail, f),
    }
}

/// The gateway's answer to a request admission refused.
pub fn refused(mut trail: Trail, refused: super::admit::Refused) -> Response<ResponseBody> {
    trail.refused(refused.path);
    failure(trail, Failure::Refused(refused.refusal))
}

/// The gateway's own answer to a failed request: JSON naming the route and side (null when
/// the request was refused before a route was chosen), with the request id.
pub fn failure(mut trail: Trail, failure: Failure) -> Response<ResponseBody> {
    if trail.grpc_call() {
        return grpc_failure(trail, failure);
    }
    let (route, side) = match trail.decision() {
        Some(d) => (Some(trail.table().route_name(d.route)), Some(d.side)),
        None => (None, None),
    };
    let detail = (trail.all_unhealthy() && failure.upstream_kind().is_some()).then(|| {
        format!(
            "every instance of {} fails its health checks",
            trail.upstream().name
        )
    });
    let body = error_body(
        failure,
        route,
        side,
        trail.request_id().to_str().unwrap_or("-"),
        detail.as_deref(),
    );
    let status = failure.status();
    let request_id = trail.request_id().clone();
    trail.failed(status.as_u16(), failure, None);
    let mut resp = Response::new(ResponseBody::made(body, trail));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(X_REQUEST_ID, request_id);
    if failure.closes_connection() {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The gateway's own answer to a failed gRPC call: a gRPC error ("Trailers-Only": HTTP 200,
/// no body, `grpc-status` and `grpc-message` in the head), which gRPC clients read as the
/// call's status; a JSON body would be a protocol error to them.
fn grpc_failure(mut trail: Trail, failure: Failure) -> Response<ResponseBody> {
    let code = failure.grpc_status();
    let (route, side) = match trail.decision() {
        Some(d) => (trail.table().route_name(d.route), d.side.as_str()),
        None => ("none", "none"),
    };
    // Only characters gRPC sends as they are (no percent-encoding needed).
    let message = format!(
        "strangler: {} (route {route}, side {side}, request id {})",
        failure.code(),
        trail.request_id().to_str().unwrap_or("-")
    );
    let request_id = trail.request_id().clone();
    trail.failed(StatusCode::OK.as_u16(), failure, Some(code));
    // No body at all, so the head ends the stream (a "Trailers-Only" answer): an empty
    // DATA frame after it would be a protocol error to grpc-go and grpc-java.
    let mut resp = Response::new(ResponseBody::nothing(trail));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(m) = HeaderValue::from_str(&message) {
        h.insert("grpc-message", m);
    }
    h.insert(X_REQUEST_ID, request_id);
    resp
}
