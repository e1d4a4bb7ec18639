//! The `admit` phase: what the gateway accepts of a request as it arrives (docs/http.md).
//!
//! Checks the framing, removes the client's hop-by-hop headers, takes the request id, and
//! refuses what must never be forwarded: a request target or headers over the limits,
//! CONNECT, an ambiguous or missing `Host`, and a path that cannot be canonicalized. Runs
//! before any route is chosen, so a refused request counts under route `default`.

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Uri, Version};

use super::error::Refusal;
use super::headers::{self, X_REQUEST_ID};
use crate::routing::canonicalize;

/// Longest request target accepted (414 beyond).
pub const MAX_URI_LEN: usize = 8 * 1024;
/// Largest total size of request headers accepted (431 beyond).
pub const MAX_HEADERS_BYTES: usize = 32 * 1024;

/// The request's canonical path, where it is.
pub enum CanonicalPath {
    /// The path as sent is canonical (the common case: nothing was copied).
    AsSent,
    /// The canonical form differs from the path as sent.
    Rewritten(Box<str>),
}

impl CanonicalPath {
    /// The canonical path of the request whose URI is `uri`.
    #[inline]
    pub fn as_str<'a>(&'a self, uri: &'a Uri) -> &'a str {
        match self {
            CanonicalPath::AsSent => uri.path(),
            CanonicalPath::Rewritten(p) => p,
        }
    }
}

/// What admission found.
pub struct Admission {
    /// The client's `X-Request-Id` when well-formed, else a new one (already in the
    /// request's headers, so routing, the limits and the upstream all see it).
    pub request_id: HeaderValue,
    pub verdict: Result<CanonicalPath, Refused>,
}

/// A refused request, and the path the access log shows for it.
pub struct Refused {
    pub refusal: Refusal,
    /// The raw path, for a request refused because of its path.
    pub path: Option<Box<str>>,
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Refused {
        Refused {
            refusal,
            path: None,
        }
    }
}

/// Admits (or refuses) a request; removes its hop-by-hop headers.
pub fn admit(head: &mut Parts) -> Admission {
    // Framing first, while `Transfer-Encoding` is still there to be judged.
    let framing_ok = headers::transfer_encoding_ok(&head.headers);
    // Hop-by-hop headers go before the request id is read and the gateway adds its own, so
    // a client cannot have those removed by naming them in `Connection`.
    headers::strip_hop_by_hop(&mut head.headers);
    let request_id = match head.headers.get(&X_REQUEST_ID) {
        Some(v) if headers::valid_request_id(v.as_bytes()) => v.clone(),
        _ => {
            let id = headers::new_request_id();
            head.headers.insert(X_REQUEST_ID, id.clone());
            id
        }
    };
    Admission {
        request_id,
        verdict: check(head, framing_ok),
    }
}

fn check(head: &Parts, framing_ok: bool) -> Result<CanonicalPath, Refused> {
    if !framing_ok {
        return Err(Refusal::BadFraming.into());
    }
    let uri_len = head.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI_LEN {
        return Err(Refusal::UriTooLong.into());
    }
    if headers::total_bytes(&head.headers) > MAX_HEADERS_BYTES {
        return Err(Refusal::HeadersTooLarge.into());
    }
    // The upstream address comes only from the routes file.
    if head.method == Method::CONNECT {
        return Err(Refusal::BadRequest.into());
    }
    // One Host, and one is required of HTTP/1.1 (RFC 9112 §3.2): two would let the gateway
    // and the upstream disagree about which site is asked for.
    let mut hosts = head.headers.get_all(header::HOST).iter();
    let has_host = hosts.next().is_some();
    if hosts.next().is_some() || (!has_host && head.version == Version::HTTP_11) {
        return Err(Refusal::BadRequest.into());
    }
    let raw = head.uri.path();
    match canonicalize(raw) {
        Ok(std::borrow::Cow::Borrowed(_)) => Ok(CanonicalPath::AsSent),
        Ok(std::borrow::Cow::Owned(p)) => Ok(CanonicalPath::Rewritten(p.into_boxed_str())),
        Err(_) => Err(Refused {
            refusal: Refusal::BadRequest,
            path: Some(raw.into()),
        }),
    }
}
