//! The header rules of the request path (docs/http.md, "Forwarding headers"): which
//! headers are hop-by-hop, the headers the gateway owns, request ids, transfer codings,
//! `Host` syntax and `Via`.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

/// The header a shadow copy carries, so the new service can avoid side effects; only the
/// gateway sets it (admission removes a client's).
pub const SHADOW_HEADER: HeaderName = HeaderName::from_static("x-strangler-shadow");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub use crate::routing::table::X_FORWARDED_FOR;
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that say where a request came from: the gateway sets them (or keeps them from a
/// trusted proxy), never a client. A name that differs from one of these only by `_` for
/// `-` is read as the same header by CGI, WSGI and Rack applications.
pub const FORWARDING: [HeaderName; 9] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    X_FORWARDED_PORT,
    X_FORWARDED_PREFIX,
    X_REAL_IP,
    header::FORWARDED,
    X_REQUEST_ID,
    header::VIA,
];

/// Whether a client's `X-Request-Id` is kept: 1 to 128 of `A-Z a-z 0-9 . _ -`.
pub fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A new request id: 32 random hex digits.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut buf = [0u8; 32];
    for b in buf.iter_mut() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value")
}

/// The hop-by-hop headers of RFC 9110 §7.6.1. `Trailer` is not one: it declares the
/// trailer fields of a message end to end, and the HTTP codec writes only the trailers it
/// names, so it stays for trailers (gRPC's `grpc-status` among them) to arrive.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == header::TE
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
}

/// Headers `Connection` cannot name for removal: `Host`, the framing, and the forwarding
/// headers (`Via` among them).
fn protected(name: &HeaderName) -> bool {
    name == header::HOST
        || name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || FORWARDING.contains(name)
}

/// Removes hop-by-hop headers: `Connection` and the names it lists (but not `Host`, the
/// framing or the forwarding headers), and the fixed set.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none, and most of the rest one (`Connection: keep-alive`): find
    // the present ones in one pass, then remove only those.
    let present: SmallVec<[HeaderName; 4]> =
        h.keys().filter(|n| is_hop_by_hop(n)).cloned().collect();
    if present.is_empty() {
        return;
    }
    let mut listed: SmallVec<[HeaderName; 4]> = SmallVec::new();
    for v in h.get_all(header::CONNECTION) {
        if let Ok(s) = v.to_str() {
            for token in s.split(',').map(str::trim) {
                // `close` and `keep-alive` are options, not names of other headers.
                if token.eq_ignore_ascii_case("close") || token.eq_ignore_ascii_case("keep-alive") {
                    continue;
                }
                // The headers the gateway judges or sets are not the client's to remove:
                // `Connection: host` would hide `Host` from its check, `Connection: via` a
                // loop, and a framing or forwarding header the rules that keep them honest.
                if let Ok(n) = HeaderName::from_bytes(token.as_bytes())
                    && !protected(&n)
                {
                    listed.push(n);
                }
            }
        }
    }
    for n in present.into_iter().chain(listed) {
        h.remove(n);
    }
}

/// The protocol an HTTP/1.1 request asks to switch to: one `Upgrade` value, with `upgrade`
/// among the `Connection` options (RFC 9110 §7.8). `h2c` is never one: an upgrade to
/// cleartext HTTP/2 is an offer to this hop, and tunnelled through to the upstream it would
/// carry requests the gateway never sees (the "h2c smuggling" of proxies that forward it);
/// such a request is served as the ordinary request it also is.
pub fn upgrade_asked(h: &HeaderMap, version: http::Version) -> Option<HeaderValue> {
    let mut values = h.get_all(header::UPGRADE).iter();
    let (proto, second) = (values.next()?, values.next());
    if second.is_some() || version != http::Version::HTTP_11 {
        return None;
    }
    let p = proto.to_str().ok()?.trim();
    if p.is_empty() || p.contains(',') || p.eq_ignore_ascii_case("h2c") {
        return None;
    }
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        .then(|| proto.clone())
}

/// Asks the upstream for the upgrade the client asked for: `Connection: upgrade` and its
/// `Upgrade`, the only hop-by-hop headers that go through.
pub fn ask_upgrade(h: &mut HeaderMap, proto: HeaderValue) {
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, proto);
}

/// Whether a list-valued header's value (`Connection: keep-alive, close`) has `token`, in
/// any case.
pub fn has_token(v: &HeaderValue, token: &str) -> bool {
    v.as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// A decimal number of digits only (no sign, no space), if it fits.
pub fn decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
            .flatten()
    })
}

/// A gRPC answer's status (`grpc-status`, in its trailers or, for an answer without a
/// body, in its head).
pub fn grpc_status(h: &HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.trim().parse().ok()
}

/// Whether a request is a gRPC call: HTTP/2 with `content-type: application/grpc` (or
/// `application/grpc+proto`, `+json`, ...; not gRPC-Web, whose clients read HTTP statuses).
pub fn is_grpc(version: http::Version, h: &HeaderMap) -> bool {
    version == http::Version::HTTP_2
        && h.get(header::CONTENT_TYPE).is_some_and(|v| {
            let v = v.as_bytes();
            v.strip_prefix(b"application/grpc")
                .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
        })
}

/// What a message's `Transfer-Encoding` (all its lines, as one list) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// No `Transfer-Encoding`.
    None,
    /// `chunked`, once: the only coding the gateway applies.
    Chunked,
    /// `chunked` more than once (RFC 9112 §6.1 forbids it), or an unreadable value: what
    /// request smuggling between proxies that disagree is made of.
    Ambiguous,
    /// Another coding (`gzip, chunked`, or `gzip` alone): one the gateway does not apply.
    Other,
}

/// Reads a message's `Transfer-Encoding`.
pub fn transfer_coding(h: &HeaderMap) -> Coding {
    let mut values = h.get_all(header::TRANSFER_ENCODING).iter().peekable();
    if values.peek().is_none() {
        return Coding::None;
    }
    let (mut chunked, mut other) = (0, 0);
    for v in values {
        let Ok(s) = v.to_str() else {
            return Coding::Ambiguous;
        };
        // Empty list elements are allowed and ignored (RFC 9110 §5.6.1).
        for coding in s.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if coding.eq_ignore_ascii_case("chunked") {
                chunked += 1;
            } else {
                other += 1;
            }
        }
    }
    match (chunked, other) {
        (c, _) if c > 1 => Coding::Ambiguous,
        (1, 0) => Coding::Chunked,
        (0, 0) => Coding::None,
        _ => Coding::Other,
    }
}

/// Whether `v` is a valid `Host` (RFC 9112 §3.2, RFC 3986 §3.2.2): a registered name (letters,
/// digits, `-`, `.`, `_`, `~`) or a bracketed IPv6 literal, with an optional port of 1 to
/// 65535. A list (`a, b`), user info, a path, spaces or an out-of-range port are not.
pub fn valid_host(v: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = v.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let ok = std::str::from_utf8(&rest[..end])
            .is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok());
        if !ok {
            return false;
        }
        (&b""[..], &rest[end + 1..])
    } else {
        match v.iter().position(|&b| b == b':') {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, &b""[..]),
        }
    };
    let name_ok = host
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => {
            !digits.is_empty()
                && digits.len() <= 5
                && digits.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| d.parse::<u32>().ok())
                    .is_some_and(|p| (1..=65535).contains(&p))
        }
        _ => false,
    };
    // A bracketed literal has no name part; anything else needs one.
    let name_present = !host.is_empty() || v.starts_with(b"[");
    name_ok && port_ok && name_present
}

/// Removes request headers whose names hold `_`: all of them (nginx's default), or, with
/// `allow_underscores`, those that name a forwarding header once `_` is read as `-`.
pub fn strip_underscored(h: &mut HeaderMap, allow_underscores: bool) {
    if !h.keys().any(|n| n.as_str().contains('_')) {
        return;
    }
    let doomed: SmallVec<[HeaderName; 4]> = h
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .filter(|n| {
            !allow_underscores || {
                let dashed = n.as_str().replace('_', "-");
                FORWARDING
                    .iter()
                    .chain(&UNTRUSTED)
                    .any(|f| f.as_str() == dashed)
            }
        })
        .cloned()
        .collect();
    for n in doomed {
        h.remove(n);
    }
}

/// Whether a `Via` list names `name` as one of the proxies it passed (a loop), as a
/// pseudonym or as a host with a port (`strangler:8080`, which RFC 9110 §7.6.3 allows).
pub fn via_names(h: &HeaderMap, name: &str) -> bool {
    h.get_all(header::VIA).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|element| {
                element.split_whitespace().nth(1).is_some_and(|by| {
                    let host = match by.rsplit_once(':') {
                        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
                        _ => by,
                    };
                    host.eq_ignore_ascii_case(name)
                })
            })
        })
    })
}

/// Headers removed from the requests of peers that are not trusted proxies, beside the
/// forwarding ones the rewrite replaces: those older monoliths re-route on (IIS and Symfony's
/// `X-Original-URL`, `X-Rewrite-URL`) or read as the client's address (CDNs' and load
/// balancers' `True-Client-IP`, `X-Client-IP`, `CF-Connecting-IP`, `X-Cluster-Client-IP`).
/// `client.strip_headers` adds to them.
pub const UNTRUSTED: [HeaderName; 6] = [
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("x-cluster-client-ip"),
];

/// Fields a request's trailers may not carry (RFC 9110 §6.5.1: what frames, routes,
/// authenticates or modifies a request, or describes its content, belongs in its head), and
/// the gateway's own.
fn never_a_trailer(name: &HeaderName) -> bool {
    const NAMES: [HeaderName; 21] = [
        header::HOST,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::TRAILER,
        header::TE,
        header::CONNECTION,
        header::UPGRADE,
        header::AUTHORIZATION,
        header::PROXY_AUTHORIZATION,
        header::COOKIE,
        header::CONTENT_TYPE,
        header::CONTENT_ENCODING,
        header::CONTENT_RANGE,
        header::CACHE_CONTROL,
        header::EXPECT,
        header::MAX_FORWARDS,
        header::PRAGMA,
        header::RANGE,
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
    ];
    NAMES.contains(name)
        || name == header::IF_UNMODIFIED_SINCE
        || name == header::IF_RANGE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || FORWARDING.contains(name)
        || name.as_str().starts_with("x-strangler-")
}

/// Removes from a request's trailers every field its head could not carry to the upstream
/// either: those [`never_a_trailer`] names, the forwarding and client-address headers
/// (`untrusted`: [`UNTRUSTED`] and `client.strip_headers`), whoever sent them (a trailer is
/// no place for them), and names with `_` by the head's rule.
pub fn strip_trailers(h: &mut HeaderMap, untrusted: &[HeaderName], allow_underscores: bool) {
    strip_underscored(h, allow_underscores);
    let doomed: SmallVec<[HeaderName; 4]> = h
        .keys()
        .filter(|n| never_a_trailer(n) || untrusted.contains(n))
        .cloned()
        .collect();
    for n in doomed {
        h.remove(n);
    }
}

/// Total size of the headers as sent (name, value, and ": " and CRLF).
pub fn total_bytes(h: &HeaderMap) -> usize {
    h.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert!(valid_request_id(b"abc-1.2_3"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"a b"));
        assert!(!valid_request_id(&[b'a'; 129]));
        assert!(valid_request_id(new_request_id().as_bytes()));
    }

    #[test]
    fn hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-secret, keep-alive"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
        // `Connection` cannot hide the headers the gateway judges.
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("host, via, x-forwarded-for"),
        );
        h.insert(header::HOST, HeaderValue::from_static("a"));
        h.insert(header::VIA, HeaderValue::from_static("1.1 strangler"));
        strip_hop_by_hop(&mut h);
        assert!(h.contains_key(header::HOST) && h.contains_key(header::VIA));
    }

    #[test]
    fn transfer_codings() {
        let te = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::TRANSFER_ENCODING, HeaderValue::from_str(v).unwrap());
            }
            transfer_coding(&h)
        };
        assert_eq!(te(&[]), Coding::None);
        assert_eq!(te(&["chunked"]), Coding::Chunked);
        assert_eq!(te(&["Chunked"]), Coding::Chunked);
        assert_eq!(te(&["chunked, "]), Coding::Chunked);
        assert_eq!(te(&["gzip, chunked"]), Coding::Other);
        assert_eq!(te(&["gzip", "chunked"]), Coding::Other);
        assert_eq!(te(&["gzip"]), Coding::Other);
        assert_eq!(te(&["chunked, chunked"]), Coding::Ambiguous);
        assert_eq!(te(&["chunked", "chunked"]), Coding::Ambiguous);
        assert_eq!(te(&["gzip", "chunked, chunked"]), Coding::Ambiguous);
    }

    #[test]
    fn hosts() {
        for ok in [
            "good.example",
            "good.example:8080",
            "a",
            "127.0.0.1:1",
            "[::1]",
            "[::1]:65535",
            "under_score.example",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "good.example, evil.example",
            "evil.example/x?",
            "a b",
            "user@evil.example",
            "a:99999999",
            "a:0",
            "a:",
            ":80",
            "",
            "[::1",
            "[nope]",
            "[::1]x",
            "a:80:80",
            "é.example",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn underscores() {
        let mut h = HeaderMap::new();
        h.insert("x_forwarded_for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x_custom", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let mut allowed = h.clone();
        strip_underscored(&mut h, false);
        assert_eq!(h.len(), 1);
        strip_underscored(&mut allowed, true);
        assert!(allowed.contains_key("x_custom") && !allowed.contains_key("x_forwarded_for"));
    }

    #[test]
    fn via_loops() {
        let mut h = HeaderMap::new();
        h.append(
            header::VIA,
            HeaderValue::from_static("1.0 fred, 1.1 p.example (Apache/1.1)"),
        );
        assert!(!via_names(&h, "strangler"));
        h.append(header::VIA, HeaderValue::from_static("1.1 Strangler"));
        assert!(via_names(&h, "strangler"));
        assert!(via_names(&h, "fred"));
        let mut port = HeaderMap::new();
        port.append(
            header::VIA,
            HeaderValue::from_static("HTTP/1.1 strangler:8080 (edge)"),
        );
        assert!(via_names(&port, "strangler"));
        assert!(!via_names(&port, "strangler-2"));
    }

    #[test]
    fn digits_are_digits_only() {
        assert_eq!(decimal(b"0"), Some(0));
        assert_eq!(decimal(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"1 ",
            b"18446744073709551616",
            b"0x1",
        ] {
            assert_eq!(decimal(bad), None, "{bad:?}");
        }
    }
}
