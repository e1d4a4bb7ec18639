//! How a request can fail, and whose fault it was: one type, [`Failure`], for every failure
//! the gateway answers or records. It picks the status, the JSON `error` code, the access
//! log's `error` field and, for the upstream's failures, the `kind` of
//! `strangler_upstream_errors_total` (docs/http.md, "Errors").

use bytes::Bytes;
use http::StatusCode;

use crate::observe::{UpstreamErrorKind, json_str};
use crate::routing::Side;

/// A failure of a request, by the side that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The request was refused on arrival, before any route was chosen.
    Refused(Refusal),
    /// The client's side failed.
    Client(ClientFailure),
    /// The upstream failed, before its response head or while sending its body.
    Upstream {
        kind: UpstreamErrorKind,
        during: Stage,
    },
}

/// Why a request was refused on arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400: a malformed or ambiguous request (path, Host, CONNECT).
    BadRequest,
    /// 400, and the connection is closed: the body's framing cannot be trusted
    /// (`Transfer-Encoding` other than `chunked` once and last).
    BadFraming,
    /// 414: the request target is over the limit.
    UriTooLong,
    /// 431: the request headers are over the limit.
    HeadersTooLarge,
}

/// How the client's side failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFailure {
    /// The client left before the response head (recorded as 499).
    Left,
    /// The client's request body broke off mid-upload (400 if it is still there).
    Upload,
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

impl Failure {
    /// The status the gateway answers (or records) for this failure.
    pub fn status(self) -> StatusCode {
        match self {
            Failure::Refused(Refusal::BadRequest | Refusal::BadFraming) => StatusCode::BAD_REQUEST,
            Failure::Refused(Refusal::UriTooLong) => StatusCode::URI_TOO_LONG,
            Failure::Refused(Refusal::HeadersTooLarge) => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Failure::Client(ClientFailure::Upload) => StatusCode::BAD_REQUEST,
            Failure::Client(ClientFailure::Left) => {
                StatusCode::from_u16(CLIENT_CLOSED).expect("499 is a valid status code")
            }
            Failure::Upstream {
                kind: UpstreamErrorKind::Timeout,
                ..
            } => StatusCode::GATEWAY_TIMEOUT,
            Failure::Upstream { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The `error` of the JSON body the gateway answers.
    pub fn code(self) -> &'static str {
        match self {
            Failure::Refused(Refusal::BadRequest | Refusal::BadFraming) | Failure::Client(_) => {
                "bad_request"
            }
            Failure::Refused(Refusal::UriTooLong) => "uri_too_long",
            Failure::Refused(Refusal::HeadersTooLarge) => "headers_too_large",
            Failure::Upstream {
                kind: UpstreamErrorKind::Timeout,
                ..
            } => "upstream_timeout",
            Failure::Upstream { .. } => "upstream_unavailable",
        }
    }

    /// The access log's `error` field.
    pub fn log_name(self) -> &'static str {
        match self {
            Failure::Refused(_) => self.code(),
            Failure::Client(ClientFailure::Left) => "client_closed",
            Failure::Client(ClientFailure::Upload) => "client_body",
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
        }
    }

    /// Whether the client's connection must be closed after the answer: its framing can no
    /// longer be trusted.
    pub fn closes_connection(self) -> bool {
        matches!(self, Failure::Refused(Refusal::BadFraming))
    }

    /// The `kind` of `strangler_upstream_errors_total`, for the upstream's failures only.
    pub fn upstream_kind(self) -> Option<UpstreamErrorKind> {
        match self {
            Failure::Upstream { kind, .. } => Some(kind),
            _ => None,
        }
    }
}

/// The JSON body of a gateway-made error: `error`, `route` and `side` (null when the request
/// was refused before a route was chosen), `request_id`.
pub fn error_body(
    failure: Failure,
    route: Option<&str>,
    side: Option<Side>,
    request_id: &str,
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
        let b = error_body(unavailable, Some("orders-read"), Some(Side::New), "abc");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"], "upstream_unavailable");
        assert_eq!(v["route"], "orders-read");
        assert_eq!(v["side"], "new");
        let b = error_body(Failure::Refused(Refusal::BadRequest), None, None, "abc");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert!(v["route"].is_null());
    }

    #[test]
    fn each_failure_names_its_side() {
        let timeout = Failure::Upstream {
            kind: UpstreamErrorKind::Timeout,
            during: Stage::Head,
        };
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(timeout.upstream_kind(), Some(UpstreamErrorKind::Timeout));
        let left = Failure::Client(ClientFailure::Left);
        assert_eq!(left.status().as_u16(), CLIENT_CLOSED);
        assert_eq!(left.upstream_kind(), None);
        assert_eq!(left.log_name(), "client_closed");
        let body = Failure::Upstream {
            kind: UpstreamErrorKind::Reset,
            during: Stage::Body,
        };
        assert_eq!(body.log_name(), "upstream_body");
    }
}
