//! Side choice (docs/routing.md, "Which side serves"): legacy or new, for a request that a route took.
//!
//! A pure function of the route's percentage, the request's cohort key and, only when there
//! is no key, a random draw. Sticky decisions hash `cohort + "\0" + key` with xxh3, which is
//! stable across versions and machines, so every replica and every restart agrees, and a
//! higher percentage only ever moves keys from legacy to new.

use std::fmt;
use std::io::Write as _;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName};
use smallvec::SmallVec;

/// Where the cohort key of a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    Header(HeaderName),
    Cookie(String),
    Query(String),
    ClientIp,
}

impl fmt::Display for StickyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StickyKey::Header(h) => write!(f, "header {h}"),
            StickyKey::Cookie(c) => write!(f, "cookie {c}"),
            StickyKey::Query(q) => write!(f, "query parameter {q}"),
            StickyKey::ClientIp => f.write_str("client IP"),
        }
    }
}

/// Which side serves a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Legacy,
    New,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Legacy => "legacy",
            Side::New => "new",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }

    /// Both sides, in index order.
    pub const BOTH: [Side; 2] = [Side::Legacy, Side::New];
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a side was chosen (the access log's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The override header forced it.
    Override,
    /// The percentage is 0 or 100.
    Percent,
    /// The cohort bucket of the request's sticky key.
    Sticky,
    /// A random draw: the route has no sticky key, or the request does not carry it.
    Random,
    /// No route took the request: legacy serves it.
    Unmatched,
    /// The new share went to legacy: every instance of the new service fails its health
    /// checks.
    Unhealthy,
    /// The new share went to legacy: the new service's circuit breaker is open.
    BreakerOpen,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Override => "override",
            Reason::Percent => "percent",
            Reason::Sticky => "sticky",
            Reason::Random => "random",
            Reason::Unmatched => "unmatched",
            Reason::Unhealthy => "unhealthy",
            Reason::BreakerOpen => "breaker_open",
        }
    }
}

/// What the side choice needs of a route, compiled once.
#[derive(Debug, Clone)]
pub struct SidePolicy {
    /// Basis points (percent × 100) sent to the new side.
    pub percent_bp: u32,
    pub sticky: Option<StickyKey>,
    pub cohort: Box<str>,
}

/// What the side choice needs of a request.
pub struct RequestKeys<'a> {
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    /// The client IP for `client_ip` keys (the peer, or the address behind trusted
    /// proxies): computed only for routes that key on it.
    pub client_ip: IpAddr,
}

/// Chooses the side for a request that `policy`'s route took. For `Reason::Sticky`, also
/// the key's bucket (for explanations; free, since it was computed anyway).
#[inline]
pub fn choose(
    policy: &SidePolicy,
    override_header: Option<&HeaderName>,
    req: &RequestKeys<'_>,
) -> (Side, Reason, Option<u32>) {
    if let Some(h) = override_header
        && let Some(v) = req.headers.get(h)
    {
        let v = v.as_bytes();
        if v.eq_ignore_ascii_case(b"legacy") {
            return (Side::Legacy, Reason::Override, None);
        }
        if v.eq_ignore_ascii_case(b"new") {
            return (Side::New, Reason::Override, None);
        }
    }
    match policy.percent_bp {
        0 => return (Side::Legacy, Reason::Percent, None),
        10_000.. => return (Side::New, Reason::Percent, None),
        _ => {}
    }
    if let Some(key) = &policy.sticky
        && let Some(b) = with_key(key, req, |k| bucket(&policy.cohort, k))
    {
        let side = if b < policy.percent_bp {
            Side::New
        } else {
            Side::Legacy
        };
        return (side, Reason::Sticky, Some(b));
    }
    let side = if fastrand::u32(0..10_000) < policy.percent_bp {
        Side::New
    } else {
        Side::Legacy
    };
    (side, Reason::Random, None)
}

/// The cohort bucket of a key: `xxh3_64(cohort + "\0" + key) % 10000`.
pub fn bucket(cohort: &str, key: &[u8]) -> u32 {
    let mut buf: SmallVec<[u8; 192]> = SmallVec::with_capacity(cohort.len() + 1 + key.len());
    buf.extend_from_slice(cohort.as_bytes());
    buf.push(0);
    buf.extend_from_slice(key);
    (xxhash_rust::xxh3::xxh3_64(&buf) % 10_000) as u32
}

/// Calls `f` with the request's cohort key, if it carries one. Empty values count as absent.
pub fn with_key<T>(
    key: &StickyKey,
    req: &RequestKeys<'_>,
    f: impl FnOnce(&[u8]) -> T,
) -> Option<T> {
    match key {
        StickyKey::Header(name) => {
            let v = req.headers.get(name)?.as_bytes();
            (!v.is_empty()).then(|| f(v))
        }
        StickyKey::Cookie(name) => {
            for h in req.headers.get_all(http::header::COOKIE) {
                if let Some(v) = cookie_value(h.as_bytes(), name.as_bytes()) {
                    return (!v.is_empty()).then(|| f(v));
                }
            }
            None
        }
        StickyKey::Query(name) => {
            let q = req.query?;
            let v = q.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == name).then_some(v)
            })?;
            (!v.is_empty()).then(|| f(v.as_bytes()))
        }
        StickyKey::ClientIp => {
            let mut buf = [0u8; 64];
            let mut cur = std::io::Cursor::new(&mut buf[..]);
            write!(cur, "{}", req.client_ip).expect("an IP address fits in 64 bytes");
            let n = cur.position() as usize;
            Some(f(&buf[..n]))
        }
    }
}

/// The value of cookie `name` in one `Cookie` header (`a=1; b=2`).
fn cookie_value<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        if &pair[..eq] == name {
            let v = &pair[eq + 1..];
            // A quoted cookie value is the same key as the bare one.
            Some(
                v.strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(v),
            )
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_parsing() {
        assert_eq!(
            cookie_value(b"a=1; session=xyz; b=2", b"session"),
            Some(&b"xyz"[..])
        );
        assert_eq!(cookie_value(b"session=\"q\"", b"session"), Some(&b"q"[..]));
        assert_eq!(cookie_value(b"xsession=1", b"session"), None);
    }

    #[test]
    fn bucket_is_stable() {
        // Pinned: a change here would move users between sides on upgrade.
        assert_eq!(
            bucket("orders", b"user-1"),
            (xxhash_rust::xxh3::xxh3_64(b"orders\0user-1") % 10_000) as u32
        );
        assert_eq!(bucket("c", b"k"), bucket("c", b"k"));
    }

    #[test]
    fn fixed_percentages_draw_nothing() {
        let h = HeaderMap::new();
        let req = RequestKeys {
            headers: &h,
            query: None,
            client_ip: IpAddr::from([127, 0, 0, 1]),
        };
        let mut p = SidePolicy {
            percent_bp: 0,
            sticky: None,
            cohort: "x".into(),
        };
        assert_eq!(
            choose(&p, None, &req),
            (Side::Legacy, Reason::Percent, None)
        );
        p.percent_bp = 10_000;
        assert_eq!(choose(&p, None, &req), (Side::New, Reason::Percent, None));
    }
}
