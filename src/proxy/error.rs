//! How a request can fail, and whose fault it was: one type, [`Failure`], for every failure
//! the gateway answers or records. It picks the status, the JSON `error` code, the access
//! log's `error` field and the `kind` of `strangler_upstream_errors_total` or
//! `strangler_client_errors_total` (docs/http.md, "Errors").

use bytes::Bytes;
use http::StatusCode;

use crate::observe::{ClientErrorKind, UpstreamErrorKind, json_str};
use crate::routing::Side;

/// A failure of a request, by the side that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The request was refused on arrival, before any route was chosen.
    Refused(Refusal),
    /// The client's side failed: it left, broke off or stalled.
    Client(ClientErrorKind),
    /// The upstream failed, before its response head or while sending its body.
    Upstream {
        kind: UpstreamErrorKind,
        during: Stage,
    },
    /// The gateway cut the exchange: its drain ran out of time (or was ended at once).
    Drained,
}

/// Why a request was refused on arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400: a malformed or ambiguous request (path, `Host`, CONNECT).
    BadRequest,
    /// 400, and the connection is closed: the body's framing cannot be trusted
    /// (`chunked` applied twice).
    BadFraming,
    /// 501, and the connection is closed: a transfer coding the gateway does not apply
    /// (`gzip, chunked`).
    UnsupportedCoding,
    /// 414: the request target is over the limit.
    UriTooLong,
    /// 431: the request headers are over the limit.
    HeadersTooLarge,
    /// 508: the request already passed through this gateway (its `Via`).
    Loop,
    /// 400: an upgrade (WebSocket) asked of a route with `upgrades: false`.
    UpgradeRefused,
    /// 501: a method in upper case that is neither registered nor in
    /// `client.extra_methods` (one in any other case is a `BadRequest`).
    MethodNotImplemented,
    /// Refused by the HTTP parser before the gateway saw it (400, 414 or 431, the status
    /// it sent, without a JSON body); recorded for the count and the log.
    Malformed(u16),
}

/// When the upstream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Before its response head: the gateway answers 502 or 504.
    Head,
    /// While its body streamed: the status already sent stands.
    Body,
}

/// The status recorded for a request whose client left before the response head (nginx's
/// "client closed request").
pub const CLIENT_CLOSED: u16 = 499;

/// The status recorded for a request the end of a drain cut before its response head: no
/// answer was sent (nginx's 444, "connection closed without response"). Not a 5xx: the cut
/// is neither side's failure, and must not count against either in the comparison.
pub const CUT_UNANSWERED: u16 = 444;

impl Failure {
    /// The status the gateway answers (or records) for this failure. A failure after the
    /// response head (a stalled client or upstream body) keeps the status already sent.
    pub fn status(self) -> StatusCode {
        let code = match self {
            Failure::Refused(
                Refusal::BadRequest | Refusal::BadFraming | Refusal::UpgradeRefused,
            ) => 400,
            Failure::Refused(Refusal::UnsupportedCoding | Refusal::MethodNotImplemented) => 501,
            Failure::Refused(Refusal::UriTooLong) => 414,
            Failure::Refused(Refusal::HeadersTooLarge) => 431,
            Failure::Refused(Refusal::Loop) => 508,
            Failure::Refused(Refusal::Malformed(status)) => status,
            Failure::Client(ClientErrorKind::Closed) => CLIENT_CLOSED,
            Failure::Client(ClientErrorKind::Body) => 400,
            Failure::Client(
                ClientErrorKind::BodyTimeout
                | ClientErrorKind::HeadTimeout
                | ClientErrorKind::SendTimeout,
            ) => 408,
            Failure::Upstream {
                kind: UpstreamErrorKind::Timeout,
                ..
            } => 504,
            Failure::Upstream { .. } => 502,
            Failure::Drained => CUT_UNANSWERED,
        };
        StatusCode::from_u16(code).expect("the gateway's statuses are valid")
    }

    /// The `error` of the JSON body the gateway answers.
    pub fn code(self) -> &'static str {
        match self {
            Failure::Refused(Refusal::UnsupportedCoding) => "unsupported_transfer_coding",
            Failure::Refused(Refusal::UriTooLong | Refusal::Malformed(414)) => "uri_too_long",
            Failure::Refused(Refusal::HeadersTooLarge | Refusal::Malformed(431)) => {
                "headers_too_large"
            }
            Failure::Refused(Refusal::Loop) => "loop_detected",
            Failure::Refused(Refusal::UpgradeRefused) => "upgrade_refused",
            Failure::Refused(Refusal::MethodNotImplemented) => "method_not_implemented",
            Failure::Refused(_)
            | Failure::Client(ClientErrorKind::Body | ClientErrorKind::Closed) => "bad_request",
            Failure::Client(_) => "request_timeout",
            Failure::Upstream {
                kind: UpstreamErrorKind::Timeout,
                ..
            } => "upstream_timeout",
            Failure::Upstream { .. } => "upstream_unavailable",
            Failure::Drained => "draining",
        }
    }

    /// The access log's `error` field.
    pub fn log_name(self) -> &'static str {
        match self {
            Failure::Refused(Refusal::Malformed(_)) => "malformed",
            Failure::Refused(_) => self.code(),
            Failure::Client(ClientErrorKind::Closed) => "client_closed",
            Failure::Client(ClientErrorKind::Body) => "client_body",
            Failure::Client(ClientErrorKind::BodyTimeout) => "client_body_timeout",
            Failure::Client(ClientErrorKind::SendTimeout) => "client_send_timeout",
            Failure::Client(ClientErrorKind::HeadTimeout) => "client_head_timeout",
            Failure::Upstream {
                kind,
                during: Stage::Head,
            } => kind.as_str(),
            Failure::Upstream {
                kind: UpstreamErrorKind::Timeout,
                during: Stage::Body,
            } => "upstream_body_timeout",
            Failure::Upstream {
                during: Stage::Body,
                ..
            } => "upstream_body",
            Failure::Drained => "drain",
        }
    }

    /// Whether the client's connection must be closed after the answer: its framing can no
    /// longer be trusted, or part of its body is still unread.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            Failure::Refused(Refusal::BadFraming | Refusal::UnsupportedCoding)
                | Failure::Client(ClientErrorKind::Body | ClientErrorKind::BodyTimeout)
        )
    }

    /// The `grpc-status` the gateway answers a gRPC call with for this failure (gRPC clients
    /// read the call's outcome from it, not from the HTTP status): what a retry could fix is
    /// UNAVAILABLE, a call whose time ran out DEADLINE_EXCEEDED, a request refused for its
    /// own sake INVALID_ARGUMENT (RESOURCE_EXHAUSTED when over a limit), and a call its
    /// client gave up CANCELLED.
    pub fn grpc_status(self) -> u32 {
        match self {
            Failure::Refused(Refusal::UriTooLong | Refusal::HeadersTooLarge) => 8,
            Failure::Refused(Refusal::Malformed(414 | 431)) => 8,
            Failure::Refused(Refusal::Loop) => 13,
            Failure::Refused(_) => 3,
            Failure::Client(_) => 1,
            Failure::Upstream {
                kind: UpstreamErrorKind::Timeout,
                ..
            } => 4,
            Failure::Upstream { .. } | Failure::Drained => 14,
        }
    }

    /// The `kind` of `strangler_upstream_errors_total`, for the upstream's failures only.
    pub fn upstream_kind(self) -> Option<UpstreamErrorKind> {
        match self {
            Failure::Upstream { kind, .. } => Some(kind),
            _ => None,
        }
    }

    /// The `kind` of `strangler_client_errors_total`, for the client's failures only.
    pub fn client_kind(self) -> Option<ClientErrorKind> {
        match self {
            Failure::Client(kind) => Some(kind),
            _ => None,
        }
    }
}

/// The JSON body of a gateway-made error: `error`, `route` and `side` (null when the request
/// was refused before a route was chosen), `request_id`, for an upstream's failure its
/// `kind` (`connect`, `timeout`, `reset`, `protocol`, as the access log and the metrics name
/// it), and a `detail` when there is more to say.
pub fn error_body(
    failure: Failure,
    route: Option<&str>,
    side: Option<Side>,
    request_id: &str,
    detail: Option<&str>,
) -> Bytes {
    let mut s = String::with_capacity(128);
    s.push_str("{\"error\":\"");
    s.push_str(failure.code());
    s.push_str("\",\"route\":");
    match route {
        Some(r) => json_str(&mut s, r),
        None => s.push_str("null"),
    }
    s.push_str(",\"side\":");
    match side {
        Some(sd) => json_str(&mut s, sd.as_str()),
        None => s.push_str("null"),
    }
    s.push_str(",\"request_id\":");
    json_str(&mut s, request_id);
    if let Some(kind) = failure.upstream_kind() {
        s.push_str(",\"kind\":\"");
        s.push_str(kind.as_str());
        s.push('"');
    }
    if let Some(d) = detail {
        s.push_str(",\"detail\":");
        json_str(&mut s, d);
    }
    s.push_str("}\n");
    Bytes::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json() {
        let unavailable = Failure::Upstream {
            kind: UpstreamErrorKind::Connect,
            during: Stage::Head,
        };
        let b = error_body(
            unavailable,
            Some("orders-read"),
            Some(Side::New),
            "abc",
            None,
        );
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"], "upstream_unavailable");
        assert_eq!(v["kind"], "connect");
        assert_eq!(v["route"], "orders-read");
        assert_eq!(v["side"], "new");
        let b = error_body(
            Failure::Refused(Refusal::BadRequest),
            None,
            None,
            "abc",
            Some("more"),
        );
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert!(v["route"].is_null());
        assert_eq!(v["detail"], "more");
    }

    #[test]
    fn each_failure_names_its_side() {
        let timeout = Failure::Upstream {
            kind: UpstreamErrorKind::Timeout,
            during: Stage::Head,
        };
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(timeout.upstream_kind(), Some(UpstreamErrorKind::Timeout));
        assert_eq!(timeout.client_kind(), None);
        let left = Failure::Client(ClientErrorKind::Closed);
        assert_eq!(left.status().as_u16(), CLIENT_CLOSED);
        assert_eq!(left.upstream_kind(), None);
        assert_eq!(left.client_kind(), Some(ClientErrorKind::Closed));
        assert_eq!(left.log_name(), "client_closed");
        let body = Failure::Upstream {
            kind: UpstreamErrorKind::Reset,
            during: Stage::Body,
        };
        assert_eq!(body.log_name(), "upstream_body");
        let stalled = Failure::Client(ClientErrorKind::BodyTimeout);
        assert_eq!(
            (stalled.status().as_u16(), stalled.code()),
            (408, "request_timeout")
        );
        assert!(stalled.closes_connection());
        let parser = Failure::Refused(Refusal::Malformed(431));
        assert_eq!(
            (parser.code(), parser.log_name()),
            ("headers_too_large", "malformed")
        );
    }
}
