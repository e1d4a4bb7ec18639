//! The `rewrite` phase: the upstream's copy of the request (docs/http.md, "Forwarding
//! headers").
//!
//! The target in origin form (the upstream's base path, the canonical path, the original
//! query); `X-Forwarded-For`/`-Proto`/`-Host` (replaced for untrusted peers, extended for
//! trusted proxies) and the other forwarding headers, with those older monoliths re-route
//! on or take as the client's address (removed unless a trusted proxy sent them); `Host` (the client's unless the service asks for its own); `Via`; the framing of a
//! body (`chunked` when its length is unknown, whatever the method); `TE: trailers` when the
//! client takes trailers; and HTTP/1.1, or HTTP/2 for services that speak it (`:authority`
//! and `:scheme` instead of `Host`).

use bytes::Bytes;
use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Uri};

use super::admit::CanonicalPath;
use super::connection::Peer;
use super::decide::Decided;
use super::error::{Failure, Refusal};
use super::headers::{
    X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PORT, X_FORWARDED_PREFIX, X_FORWARDED_PROTO,
    X_REAL_IP, ask_upgrade,
};
use super::record::{LoggedPath, Trail};
use super::table::{Table, Upstream};
use super::upload::RequestBody;
use hyper::upgrade::OnUpgrade;

/// What the rewrite needs to know of the request beyond its head.
#[derive(Clone, Copy)]
pub struct Facts {
    /// The body's length is unknown (it arrived chunked).
    pub chunked_body: bool,
    /// The client takes trailers (`TE: trailers`).
    pub trailers: bool,
}

/// The request as it was before its rewrite for the new side, kept to be rewritten for
/// legacy should it fall back (or for the new side, as a shadow copy).
pub struct Original {
    pub head: Parts,
    pub path: CanonicalPath,
    pub facts: Facts,
}

/// A request as admitted and decided, before its rewrite.
pub struct Pending {
    pub head: Parts,
    pub path: CanonicalPath,
    pub facts: Facts,
    /// The body's declared length (hyper has parsed Content-Length).
    pub length: Option<u64>,
}

impl Pending {
    pub fn new(
        head: Parts,
        body: &super::ClientBody,
        path: CanonicalPath,
        trailers: bool,
    ) -> Pending {
        use http_body::Body as _;
        let length = body.as_ref().map_or(Some(0), |b| b.size_hint().exact());
        Pending {
            head,
            path,
            facts: Facts {
                chunked_body: length.is_none() && body.as_ref().is_some_and(|b| !b.is_end_stream()),
                trailers,
            },
            length,
        }
    }
}

/// The request on its way to the upstream the decision chose.
pub struct Outbound {
    pub head: Parts,
    pub body: RequestBody,
    /// The request before its rewrite, when the new side's failure may send it to legacy.
    pub original: Option<Original>,
    /// The upgrade asked, when the upstream is asked for it (an HTTP/2 service is not: the
    /// request goes as the ordinary request it also is).
    pub upgrade: Option<(HeaderValue, OnUpgrade)>,
}

/// The rewrite phase: `request` rewritten for the decided upstream (kept as it was when a
/// fallback may need it), its body wrapped for sending, the upgrade asked of the upstream.
pub fn outbound(
    trail: &mut Trail,
    table: &Table,
    decided: &Decided,
    request: Pending,
    body: super::ClientBody,
    upgrade: Option<(HeaderValue, OnUpgrade)>,
    peer: &Peer,
) -> Result<Outbound, Failure> {
    let Pending {
        mut head,
        path,
        facts,
        length,
    } = request;
    let original = decided.keep_original.then(|| Original {
        head: super::send::copy_head(&head),
        path: path.clone(),
        facts,
    });
    let upstream = table.upstream(decided.upstream);
    rewrite(
        &mut head,
        path,
        upstream,
        table,
        peer,
        facts,
        trail.logged_path(),
    )?;
    let upgrade = upgrade
        .filter(|_| !upstream.dial.protocol.is_http2())
        .map(|(proto, client)| {
            ask_upgrade(&mut head.headers, proto.clone());
            (proto, client)
        });
    trail.declared(length.unwrap_or(0));
    let body =
        RequestBody::new(body, table.config.client.body_timeout).trailers_held_to(&table.edge);
    Ok(Outbound {
        head,
        body,
        original,
        upgrade,
    })
}

/// Rewrites `head` for `upstream`; `logged` gets the canonical path for the access log.
pub fn rewrite(
    head: &mut Parts,
    path: CanonicalPath,
    upstream: &Upstream,
    table: &Table,
    peer: &Peer,
    facts: Facts,
    logged: &mut LoggedPath,
) -> Result<(), Failure> {
    target(head, path, upstream, logged)?;
    // Room for the headers the gateway adds, so the map grows at most once.
    head.headers.reserve(4);
    forwarded(
        &mut head.headers,
        table.routing.is_trusted(peer.addr.ip()),
        peer,
        &table.edge.untrusted,
    );
    if upstream.host_upstream || !head.headers.contains_key(header::HOST) {
        head.headers
            .insert(header::HOST, upstream.host_value.clone());
    }
    head.headers
        .append(header::VIA, table.via(head.version).clone());
    if facts.trailers {
        head.headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upstream.dial.protocol.is_http2() {
        return to_http2(head, upstream);
    }
    // HTTP/2 sends each cookie as a field of its own; HTTP/1.1 allows one `Cookie` line,
    // and many servers read only the first (RFC 9113 §8.2.3: join them with "; ").
    if head.version == Version::HTTP_2 {
        join_cookies(&mut head.headers);
        // Its answer is watched for a client that stops taking it, which closes the
        // upstream connection from outside the exchange (`ResponseBody::watch_client`).
        head.extensions.insert(super::h1client::Abortable);
    }
    // hyper sends no body for a GET, HEAD or CONNECT whose length it does not know unless
    // told: a body that arrived chunked goes on chunked, whatever the method.
    if facts.chunked_body {
        head.headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    head.version = Version::HTTP_11;
    Ok(())
}

/// Joins several `Cookie` fields into one, `; ` between them.
fn join_cookies(h: &mut HeaderMap) {
    let mut values = h.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let mut joined: Vec<u8> = Vec::new();
    for v in h.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        h.insert(header::COOKIE, v);
    }
}

/// An HTTP/2 upstream's copy: `Host` becomes `:authority` and the target gets its scheme
/// (HTTP/2 requests carry both as pseudo-headers); `TE: trailers` stays (gRPC requires it
/// and the client asked for it), the body needs no framing header.
fn to_http2(head: &mut Parts, upstream: &Upstream) -> Result<(), Failure> {
    let host = head
        .headers
        .remove(header::HOST)
        .unwrap_or_else(|| upstream.host_value.clone());
    let authority = http::uri::Authority::try_from(host.as_bytes())
        .map_err(|_| Failure::Refused(Refusal::BadRequest))?;
    let mut parts = std::mem::take(&mut head.uri).into_parts();
    parts.scheme = Some(if upstream.dial.tls.is_some() {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    });
    parts.authority = Some(authority);
    head.uri = Uri::from_parts(parts).map_err(|_| Failure::Refused(Refusal::BadRequest))?;
    head.version = Version::HTTP_2;
    Ok(())
}

/// Sets the origin-form target: base path, canonical path, original query.
fn target(
    head: &mut Parts,
    path: CanonicalPath,
    upstream: &Upstream,
    logged: &mut LoggedPath,
) -> Result<(), Failure> {
    let pq = match path {
        CanonicalPath::AsSent if upstream.base_path.is_empty() => {
            let pq = head
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *logged = LoggedPath::Target(pq.clone());
            pq
        }
        path => {
            let canonical = path.as_str(&head.uri);
            let query = head.uri.query();
            let mut s = String::with_capacity(
                upstream.base_path.len() + canonical.len() + query.map_or(0, |q| q.len() + 1),
            );
            s.push_str(&upstream.base_path);
            s.push_str(canonical);
            if let Some(q) = query {
                s.push('?');
                s.push_str(q);
            }
            *logged = LoggedPath::Owned(match path {
                CanonicalPath::Rewritten(p) => p,
                CanonicalPath::AsSent => canonical.into(),
            });
            PathAndQuery::from_maybe_shared(Bytes::from(s))
                .map_err(|_| Failure::Refused(Refusal::BadRequest))?
        }
    };
    // Origin form: the connection already names the upstream.
    head.uri = Uri::from(pq);
    Ok(())
}

/// `X-Forwarded-*`: from a trusted proxy, extended (`For`) or kept as sent; from anyone
/// else, replaced.
fn forwarded(h: &mut HeaderMap, trusted: bool, peer: &Peer, untrusted: &[HeaderName]) {
    if trusted {
        let mut prior: Vec<u8> = Vec::new();
        for v in h.get_all(&X_FORWARDED_FOR) {
            if !prior.is_empty() {
                prior.extend_from_slice(b", ");
            }
            prior.extend_from_slice(v.as_bytes());
        }
        let value = if prior.is_empty() {
            peer.ip_header.clone()
        } else {
            prior.extend_from_slice(b", ");
            prior.extend_from_slice(peer.ip_header.as_bytes());
            HeaderValue::from_bytes(&prior).unwrap_or_else(|_| peer.ip_header.clone())
        };
        h.insert(X_FORWARDED_FOR, value);
        if !h.contains_key(&X_FORWARDED_PROTO) {
            h.insert(X_FORWARDED_PROTO, proto(peer));
        }
        if !h.contains_key(&X_FORWARDED_HOST)
            && let Some(host) = h.get(header::HOST).cloned()
        {
            h.insert(X_FORWARDED_HOST, host);
        }
    } else {
        // What only a trusted proxy may tell: removed (the gateway sets the three above).
        for name in [
            X_REAL_IP,
            X_FORWARDED_PORT,
            X_FORWARDED_PREFIX,
            header::FORWARDED,
        ] {
            h.remove(name);
        }
        // What re-routes a request in older monoliths, or names the client's address to
        // them (and what `client.strip_headers` adds).
        for name in untrusted {
            h.remove(name);
        }
        h.insert(X_FORWARDED_FOR, peer.ip_header.clone());
        h.insert(X_FORWARDED_PROTO, proto(peer));
        match h.get(header::HOST).cloned() {
            Some(host) => {
                h.insert(X_FORWARDED_HOST, host);
            }
            None => {
                h.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// `X-Forwarded-Proto` for a client of this gateway.
fn proto(peer: &Peer) -> HeaderValue {
    HeaderValue::from_static(if peer.tls { "https" } else { "http" })
}
