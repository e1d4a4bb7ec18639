//! The header rules of the request path (docs/http.md, "Headers"): which headers are
//! hop-by-hop, the headers the gateway owns, and request ids.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub use crate::routing::table::X_FORWARDED_FOR;
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

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

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
}

/// Removes hop-by-hop headers: `Connection` and the names it lists, and the fixed set.
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
                if let Ok(n) = HeaderName::from_bytes(token.as_bytes()) {
                    listed.push(n);
                }
            }
        }
    }
    for n in present.into_iter().chain(listed) {
        h.remove(n);
    }
}

/// Whether a request's `Transfer-Encoding` (all its lines, as one list) is acceptable:
/// absent, or with `chunked` exactly once and last (RFC 9112 §6.1). `chunked, chunked`,
/// `chunked, gzip` and the like are what request smuggling between proxies is made of.
pub fn transfer_encoding_ok(h: &HeaderMap) -> bool {
    let mut values = h.get_all(header::TRANSFER_ENCODING).iter().peekable();
    if values.peek().is_none() {
        return true;
    }
    let mut chunked = 0;
    let mut last_chunked = false;
    for v in values {
        let Ok(s) = v.to_str() else { return false };
        for coding in s.split(',').map(str::trim) {
            if coding.is_empty() {
                continue;
            }
            last_chunked = coding.eq_ignore_ascii_case("chunked");
            chunked += usize::from(last_chunked);
        }
    }
    chunked == 1 && last_chunked
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
    }

    #[test]
    fn transfer_encodings() {
        let te = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::TRANSFER_ENCODING, HeaderValue::from_str(v).unwrap());
            }
            transfer_encoding_ok(&h)
        };
        assert!(te(&[]));
        assert!(te(&["chunked"]));
        assert!(te(&["Chunked"]));
        assert!(te(&["gzip, chunked"]));
        assert!(te(&["gzip", "chunked"]));
        assert!(!te(&["chunked, chunked"]));
        assert!(!te(&["chunked", "chunked"]));
        assert!(!te(&["chunked, gzip"]));
        assert!(!te(&["gzip"]));
        // Empty list elements are allowed and ignored (RFC 9110 §5.6.1).
        assert!(te(&["chunked, "]));
    }
}
