//! The `respond` phase: the response head the client gets, and its body.
//!
//! The upstream's head loses its hop-by-hop headers (and a stale `Content-Length` beside
//! `Transfer-Encoding`, RFC 9112 §6.3) and gains the request id; its body streams through
//! [`ResponseBody`]. A failure gets the gateway's own JSON answer (docs/http.md, "Errors").

use http::Response;
use http::header::{self, HeaderValue};

use super::body::{Held, ResponseBody};
use super::error::{Failure, error_body};
use super::headers::{X_REQUEST_ID, strip_hop_by_hop};
use super::record::Trail;
use super::send::Exchange;

/// The upstream's answer, on its way to the client.
pub fn upstream(exchange: Exchange, mut trail: Trail) -> Response<ResponseBody> {
    let (mut parts, body) = exchange.response.into_parts();
    // A message with both is framed by Transfer-Encoding (RFC 9112 §6.3); the gateway
    // re-frames the body, so the stale length must not reach the client.
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(X_REQUEST_ID, trail.request_id.clone());
    trail.status = parts.status.as_u16();
    let upstream = &trail.table.upstreams[trail.upstream];
    let (key, read_timeout) = (upstream.pool_key, upstream.timeout);
    let conn = Held {
        key,
        sender: exchange.sender,
        since: trail.start,
        uploaded: exchange.uploaded,
    };
    Response::from_parts(
        parts,
        ResponseBody::upstream(body, trail, conn, read_timeout),
    )
}

/// The gateway's own answer to a failed request: JSON naming the route and side (null when
/// the request was refused before a route was chosen), with the request id.
pub fn failure(mut trail: Trail, failure: Failure) -> Response<ResponseBody> {
    let (route, side) = if trail.decided {
        (
            Some(trail.table.route_name(trail.decision.route)),
            Some(trail.decision.side),
        )
    } else {
        (None, None)
    };
    let body = error_body(
        failure,
        route,
        side,
        trail.request_id.to_str().unwrap_or("-"),
    );
    let status = failure.status();
    trail.status = status.as_u16();
    trail.failure = Some(failure);
    let request_id = trail.request_id.clone();
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
