//! Path canonicalization (docs/http.md, "The path").
//!
//! The path is canonicalized once per request; the route is chosen on that form and that same
//! form is forwarded, so the gateway and the upstream can never disagree about which resource
//! a request names. Rule paths in the routes file must already be in this form. It turns a raw
//! path into its canonical form or says why the path is rejected, nothing more.

use std::borrow::Cow;

/// Why a path was rejected (always a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CanonError {
    #[error("the path does not start with /")]
    NotAbsolute,
    #[error("the path climbs above the root")]
    AboveRoot,
    #[error("the path holds an encoded /, \\, ?, # or NUL")]
    EncodedDelimiter,
    #[error("the path holds a malformed % escape")]
    BadEscape,
    #[error("the path holds a control character")]
    ControlChar,
    #[error("the path is not valid UTF-8 once decoded")]
    InvalidUtf8,
    #[error("the path holds a backslash")]
    Backslash,
    #[error("the path holds a byte that must be percent-encoded (not ASCII)")]
    NotAscii,
    #[error("the path holds a dot segment with parameters (`..;` or `.;`)")]
    DotSegmentParams,
    #[error("the path holds a ;parameter, and client.path_parameters is refuse")]
    Parameters,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Returns the canonical form of `path` (without query), borrowing when it is already
/// canonical, which is the common case and costs one scan.
///
/// Canonical means: percent-encoded unreserved characters decoded (other escapes kept, hex in
/// upper case), repeated slashes merged, `.` and `..` segments resolved. Rejected: a climb
/// above the root, an encoded `/ \ ? #` or NUL, a malformed escape, control bytes, a raw
/// backslash, a raw byte that is not ASCII (it must be percent-encoded), a dot segment with
/// parameters (`..;x`), or invalid UTF-8 after decoding.
pub fn canonicalize(path: &str) -> Result<Cow<'_, str>, CanonError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(CanonError::NotAbsolute);
    }
    // Fast path: no escapes, no empty or dot segments, no control bytes.
    let mut needs_work = false;
    let mut prev = 0u8;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' => needs_work = true,
            b'/' if prev == b'/' => needs_work = true,
            b'.' if prev == b'/' => {
                let next = bytes.get(i + 1).copied();
                if next.is_none() || matches!(next, Some(b'/' | b'.' | b';')) {
                    needs_work = true;
                }
            }
            b'\\' => return Err(CanonError::Backslash),
            0..=0x1f | 0x7f => return Err(CanonError::ControlChar),
            0x80.. => return Err(CanonError::NotAscii),
            _ => {}
        }
        prev = b;
    }
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    slow(bytes).map(Cow::Owned)
}

fn slow(bytes: &[u8]) -> Result<String, CanonError> {
    // Pass 1: decode unreserved escapes, normalise the others, validate.
    let mut decoded: Vec<u8> = Vec::with_capacity(bytes.len());
    // The fully decoded bytes, only to check UTF-8 validity.
    let mut plain: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(CanonError::BadEscape);
            };
            let v = h * 16 + l;
            match v {
                b'/' | b'\\' | b'?' | b'#' | 0 => return Err(CanonError::EncodedDelimiter),
                0x01..=0x1f | 0x7f => return Err(CanonError::ControlChar),
                _ => {}
            }
            plain.push(v);
            if unreserved(v) {
                decoded.push(v);
            } else {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                decoded.extend_from_slice(&[
                    b'%',
                    HEX[usize::from(v >> 4)],
                    HEX[usize::from(v & 0xf)],
                ]);
            }
            i += 3;
        } else {
            match b {
                b'\\' => return Err(CanonError::Backslash),
                0..=0x1f | 0x7f => return Err(CanonError::ControlChar),
                _ => {}
            }
            plain.push(b);
            decoded.push(b);
            i += 1;
        }
    }
    if std::str::from_utf8(&plain).is_err() {
        return Err(CanonError::InvalidUtf8);
    }
    // Pass 2: segments. `decoded` is ASCII-or-escaped from a &str, so it is UTF-8.
    let text = String::from_utf8(decoded).map_err(|_| CanonError::InvalidUtf8)?;
    let trailing = text.ends_with('/');
    let mut out: Vec<&str> = Vec::new();
    let mut ends_in_dir = trailing;
    for seg in text.split('/').filter(|s| !s.is_empty()) {
        // `..;x` is `..` to servers that strip path parameters (Tomcat, Spring, Jetty):
        // forwarded as a plain segment it would climb past the route it matched.
        if seg.contains(';') && matches!(seg.split(';').next(), Some("." | "..")) {
            return Err(CanonError::DotSegmentParams);
        }
        match seg {
            "." => ends_in_dir = true,
            ".." => {
                if out.pop().is_none() {
                    return Err(CanonError::AboveRoot);
                }
                ends_in_dir = true;
            }
            s => {
                out.push(s);
                ends_in_dir = false;
            }
        }
    }
    if trailing {
        ends_in_dir = true;
    }
    let mut result = String::with_capacity(text.len());
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if out.is_empty() || ends_in_dir {
        result.push('/');
    }
    Ok(result)
}

/// How the gateway reads a path segment's parameters (`/admin;x/users`): servlet containers
/// (Tomcat, Jetty, Spring) serve it as `/admin/users`, most other servers as a segment
/// `admin;x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathParameters {
    /// Routes match each segment without its parameters, as a servlet container reads it;
    /// the upstream gets the path as sent, parameters and all.
    #[default]
    MatchWithout,
    /// A path with a `;` is refused (400).
    Refuse,
    /// `;` is an ordinary character (for monoliths whose server reads it so).
    Literal,
}

impl PathParameters {
    pub fn as_str(self) -> &'static str {
        match self {
            PathParameters::MatchWithout => "match_without",
            PathParameters::Refuse => "refuse",
            PathParameters::Literal => "literal",
        }
    }
}

/// The path routes are matched on, from the canonical path, by `client.path_parameters`:
/// each segment without its parameters (`/admin;x/users` is `/admin/users`, as Tomcat, Jetty
/// and Spring serve it), the path itself, or a refusal of any `;`. Borrows when the path has
/// no `;` (the common case: one scan).
pub fn routing_path(canonical: &str, mode: PathParameters) -> Result<Cow<'_, str>, CanonError> {
    if mode == PathParameters::Literal || !canonical.as_bytes().contains(&b';') {
        return Ok(Cow::Borrowed(canonical));
    }
    if mode == PathParameters::Refuse {
        return Err(CanonError::Parameters);
    }
    let mut out = String::with_capacity(canonical.len());
    let mut ends_in_dir = canonical.ends_with('/');
    for seg in canonical.split('/').skip(1) {
        let bare = seg.split(';').next().unwrap_or("");
        if bare.is_empty() {
            // `/a/;x` is `/a/` (an empty segment, merged like `//`).
            ends_in_dir = true;
            continue;
        }
        out.push('/');
        out.push_str(bare);
        ends_in_dir = false;
    }
    if canonical.ends_with('/') || out.is_empty() {
        ends_in_dir = true;
    }
    if ends_in_dir {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(p: &str) -> Result<String, CanonError> {
        canonicalize(p).map(|c| c.into_owned())
    }

    #[test]
    fn routing_paths() {
        let r = |p: &str| {
            routing_path(p, PathParameters::MatchWithout)
                .unwrap()
                .into_owned()
        };
        assert_eq!(r("/admin;x/users"), "/admin/users");
        assert_eq!(r("/admin;/users"), "/admin/users");
        assert_eq!(r("/admin/;x/users"), "/admin/users");
        assert_eq!(r("/admin;jsessionid=A"), "/admin");
        assert_eq!(r("/admin/;x"), "/admin/");
        assert_eq!(r("/admin;x/"), "/admin/");
        assert_eq!(r("/;x"), "/");
        assert_eq!(r("/a;b;c/d;e"), "/a/d");
        assert!(matches!(
            routing_path("/a/b", PathParameters::MatchWithout),
            Ok(Cow::Borrowed(_))
        ));
        assert_eq!(
            routing_path("/a;x", PathParameters::Refuse),
            Err(CanonError::Parameters)
        );
        assert_eq!(
            routing_path("/a;x", PathParameters::Literal).unwrap(),
            "/a;x"
        );
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(c("/api/orders/7").unwrap(), "/api/orders/7");
        assert!(matches!(
            canonicalize("/api/orders/7"),
            Ok(Cow::Borrowed(_))
        ));
        assert_eq!(c("/api/orders/../admin").unwrap(), "/api/admin");
        assert_eq!(c("/api/orders/%2e%2e/admin").unwrap(), "/api/admin");
        assert_eq!(c("/api/orders/%2E%2E").unwrap(), "/api/");
        assert_eq!(c("//api//orders").unwrap(), "/api/orders");
        assert_eq!(c("/api/./orders/").unwrap(), "/api/orders/");
        assert_eq!(c("/a/b/.").unwrap(), "/a/b/");
        assert_eq!(c("/%61pi").unwrap(), "/api");
        assert_eq!(c("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(c("/a%20b").unwrap(), "/a%20b");
        assert_eq!(c("/").unwrap(), "/");
        assert_eq!(c("/..x/.y").unwrap(), "/..x/.y");
    }

    #[test]
    fn rejected() {
        assert_eq!(c("/api/%2F/x"), Err(CanonError::EncodedDelimiter));
        assert_eq!(c("/api/%2f"), Err(CanonError::EncodedDelimiter));
        assert_eq!(c("/api/%00"), Err(CanonError::EncodedDelimiter));
        assert_eq!(c("/api/%5c"), Err(CanonError::EncodedDelimiter));
        assert_eq!(c("/api/%3F"), Err(CanonError::EncodedDelimiter));
        assert_eq!(c("/api/%23"), Err(CanonError::EncodedDelimiter));
        assert_eq!(c("/api/%zz"), Err(CanonError::BadEscape));
        assert_eq!(c("/api/%4"), Err(CanonError::BadEscape));
        assert_eq!(c("/../etc"), Err(CanonError::AboveRoot));
        assert_eq!(c("/a/%2e%2e/%2e%2e/b"), Err(CanonError::AboveRoot));
        assert_eq!(c("/a/%0a"), Err(CanonError::ControlChar));
        assert_eq!(c("/a/%ff"), Err(CanonError::InvalidUtf8));
        assert_eq!(c("/a\\b"), Err(CanonError::Backslash));
        assert_eq!(c("/caf\u{e9}"), Err(CanonError::NotAscii));
        assert_eq!(c("/api/..;/admin"), Err(CanonError::DotSegmentParams));
        assert_eq!(c("/api/.;x/admin"), Err(CanonError::DotSegmentParams));
        assert_eq!(c("/api/%2e%2e;/admin"), Err(CanonError::DotSegmentParams));
        assert_eq!(c("/api/x;jsessionid=1").unwrap(), "/api/x;jsessionid=1");
        assert_eq!(c("/api/..x;y").unwrap(), "/api/..x;y");
        assert_eq!(c("a"), Err(CanonError::NotAbsolute));
    }
}
