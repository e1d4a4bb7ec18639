//! The `admit` phase: what the gateway accepts of a request as it arrives (docs/http.md).
//!
//! Checks the framing, removes the client's hop-by-hop headers and the headers no client may
//! send (names with `_`), takes the request id, and refuses what must never be forwarded: a
//! transfer coding other than `chunked` once, a request that already passed this gateway
//! (`Via`), a request target or headers over the limits, CONNECT, a method not in upper case
//! or not known, an ambiguous, missing or malformed `Host`, and a path that cannot be
//! canonicalized (or holds a `;parameter` the routes file refuses). Finds the path routes
//! are matched on: without the segments' parameters, as servlet containers read it. Runs before any route is
//! chosen, so a refused request counts under route `default`.

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Uri, Version};

use super::error::Refusal;
use super::headers::{self, Coding, X_REQUEST_ID};
use crate::config::{Config, PathParameters};
use crate::routing::{canonicalize, routing_path};

/// Longest request target accepted (414 beyond).
pub const MAX_URI_LEN: usize = 8 * 1024;
/// Largest total size of request headers accepted (431 beyond).
pub const MAX_HEADERS_BYTES: usize = 32 * 1024;

/// The request's canonical path, where it is.
#[derive(Clone)]
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
    /// request's headers, as the only one, so routing, the limits and the upstream all see
    /// it).
    pub request_id: HeaderValue,
    /// The client said it takes trailers (`TE: trailers`), so the upstream may send them.
    pub trailers: bool,
    pub verdict: Result<Admitted, Refused>,
}

/// An admitted request's paths.
pub struct Admitted {
    /// The canonical path: what the upstream gets.
    pub path: CanonicalPath,
    /// The path routes are matched on, when it is not the canonical path: without the
    /// segments' parameters (`client.path_parameters`).
    pub route_path: Option<Box<str>>,
}

impl Admitted {
    /// The path routes are matched on.
    #[inline]
    pub fn route_path<'a>(&'a self, uri: &'a Uri) -> &'a str {
        match &self.route_path {
            Some(p) => p,
            None => self.path.as_str(uri),
        }
    }
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

/// What admission needs of the config, built once per table.
pub struct Rules {
    pub allow_underscores: bool,
    /// The gateway's own name in `Via`.
    pub via: Box<str>,
    pub path_parameters: PathParameters,
    /// Methods accepted beside the registered ones: `client.extra_methods` and those the
    /// routes name.
    pub extra_methods: Vec<Method>,
    /// Headers removed from the requests of untrusted peers, and from every request's
    /// trailers: [`headers::UNTRUSTED`] and `client.strip_headers`.
    pub untrusted: Vec<HeaderName>,
}

impl Rules {
    pub fn of(config: &Config) -> Rules {
        let mut extra_methods = config.client.extra_methods.clone();
        let named = config.routes.iter().flat_map(|r| {
            r.matcher
                .methods
                .iter()
                .flatten()
                .chain(r.shadow.iter().flat_map(|s| &s.methods))
        });
        for m in named {
            if !extra_methods.contains(m) {
                extra_methods.push(m.clone());
            }
        }
        let mut untrusted = headers::UNTRUSTED.to_vec();
        for h in &config.client.strip_headers {
            if !untrusted.contains(h) {
                untrusted.push(h.clone());
            }
        }
        Rules {
            allow_underscores: config.client.allow_underscores,
            via: config.via.as_str().into(),
            path_parameters: config.client.path_parameters,
            extra_methods,
            untrusted,
        }
    }
}

/// The methods of the IANA HTTP Method Registry beyond those `http::Method` names (WebDAV,
/// versioning, calendars, `QUERY`): accepted as sent, in upper case.
const REGISTERED: [&str; 31] = [
    "ACL",
    "BASELINE-CONTROL",
    "BIND",
    "CHECKIN",
    "CHECKOUT",
    "COPY",
    "LABEL",
    "LINK",
    "LOCK",
    "MERGE",
    "MKACTIVITY",
    "MKCALENDAR",
    "MKCOL",
    "MKREDIRECTREF",
    "MKWORKSPACE",
    "MOVE",
    "ORDERPATCH",
    "PROPFIND",
    "PROPPATCH",
    "QUERY",
    "REBIND",
    "REPORT",
    "SEARCH",
    "UNBIND",
    "UNCHECKOUT",
    "UNLINK",
    "UNLOCK",
    "UPDATE",
    "UPDATEREDIRECTREF",
    "VERSION-CONTROL",
    "TRACE",
];

/// Whether a method is accepted, or why not: methods are case-sensitive (RFC 9110 §9.1), and
/// a monolith that upper-cases `get` would serve as `GET` a request no `[GET]` route took, so
/// one that is not all upper case is a 400 (as nginx answers); an upper-case one that is
/// neither registered nor in `extra` is not implemented here (501).
pub fn method_refusal(m: &Method, extra: &[Method]) -> Option<(Refusal, &'static str)> {
    let s = m.as_str();
    if matches!(
        s,
        "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "OPTIONS" | "PATCH" | "CONNECT"
    ) {
        return None;
    }
    if s.bytes().any(|b| b.is_ascii_lowercase()) {
        return Some((
            Refusal::BadRequest,
            "the method is not in upper case (methods are case-sensitive: `get` is not `GET`)",
        ));
    }
    if REGISTERED.contains(&s) || extra.contains(m) {
        return None;
    }
    Some((
        Refusal::MethodNotImplemented,
        "the method is neither a registered one nor in client.extra_methods",
    ))
}

/// Admits (or refuses) a request; removes its hop-by-hop headers and the headers no client
/// may send.
pub fn admit(head: &mut Parts, rules: &Rules) -> Admission {
    // Framing first, while `Transfer-Encoding` is still there to be judged.
    let coding = headers::transfer_coding(&head.headers);
    let trailers = head.headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    // Hop-by-hop headers go before the request id is read and the gateway adds its own, so
    // a client cannot have those removed by naming them in `Connection`.
    headers::strip_hop_by_hop(&mut head.headers);
    headers::strip_underscored(&mut head.headers, rules.allow_underscores);
    // Only the gateway marks a request as a shadow copy: a client's mark would make a
    // real request look like one to a service that skips the side effects of copies.
    head.headers.remove(headers::SHADOW_HEADER);
    // One id, well-formed: a second or malformed one never reaches the upstream.
    let mut ids = head.headers.get_all(&X_REQUEST_ID).iter();
    let (first, second) = (ids.next(), ids.next());
    let request_id = match first {
        Some(v) if second.is_none() && headers::valid_request_id(v.as_bytes()) => v.clone(),
        Some(v) if headers::valid_request_id(v.as_bytes()) => {
            let v = v.clone();
            head.headers.insert(X_REQUEST_ID, v.clone());
            v
        }
        _ => {
            let id = headers::new_request_id();
            head.headers.insert(X_REQUEST_ID, id.clone());
            id
        }
    };
    Admission {
        request_id,
        trailers,
        verdict: check(head, coding, rules),
    }
}

fn check(head: &mut Parts, coding: Coding, rules: &Rules) -> Result<Admitted, Refused> {
    match coding {
        Coding::None | Coding::Chunked => {}
        Coding::Ambiguous => return Err(Refusal::BadFraming.into()),
        Coding::Other => return Err(Refusal::UnsupportedCoding.into()),
    }
    if headers::via_names(&head.headers, &rules.via) {
        return Err(Refusal::Loop.into());
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
    if let Some((refusal, _)) = method_refusal(&head.method, &rules.extra_methods) {
        return Err(refusal.into());
    }
    host(head)?;
    let raw = head.uri.path();
    let refused = || Refused {
        refusal: Refusal::BadRequest,
        path: Some(raw.into()),
    };
    let path = match canonicalize(raw) {
        Ok(std::borrow::Cow::Borrowed(_)) => CanonicalPath::AsSent,
        Ok(std::borrow::Cow::Owned(p)) => CanonicalPath::Rewritten(p.into_boxed_str()),
        Err(_) => return Err(refused()),
    };
    let route_path = match routing_path(path.as_str(&head.uri), rules.path_parameters) {
        Ok(std::borrow::Cow::Borrowed(_)) => None,
        Ok(std::borrow::Cow::Owned(p)) => Some(p.into_boxed_str()),
        Err(_) => return Err(refused()),
    };
    Ok(Admitted { path, route_path })
}

/// `Host` means one thing (RFC 9112 §3.2): an absolute-form target's authority replaces it;
/// otherwise exactly one, well-formed, is required of HTTP/1.1 (none is allowed of
/// HTTP/1.0). Two would let the gateway and the upstream disagree about which site is asked
/// for.
fn host(head: &mut Parts) -> Result<(), Refused> {
    if let Some(authority) = head.uri.authority() {
        let a = authority.as_str();
        if a.contains('@') || !headers::valid_host(a.as_bytes()) {
            return Err(Refusal::BadRequest.into());
        }
        let value = HeaderValue::from_str(a).map_err(|_| Refused::from(Refusal::BadRequest))?;
        head.headers.insert(header::HOST, value);
        return Ok(());
    }
    let mut hosts = head.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if head.version == Version::HTTP_11 => Err(Refusal::BadRequest.into()),
        (None, _) => Ok(()),
        (Some(h), None) if headers::valid_host(h.as_bytes()) => Ok(()),
        _ => Err(Refusal::BadRequest.into()),
    }
}
