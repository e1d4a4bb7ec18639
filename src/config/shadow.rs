//! The shadow settings of a route (`shadow`; docs/shadow.md): which of the requests legacy
//! serves are copied to the new side, and how the two answers are compared.

use http::{HeaderName, Method};

/// Default `max_body`: answers (and request bodies) larger than this are not compared.
pub const DEFAULT_MAX_BODY: u64 = 1024 * 1024;
/// Default `noise.threshold`: a field that differs between two legacy answers in at least
/// this share of the pairs is noise.
pub const DEFAULT_NOISE_THRESHOLD: f64 = 0.1;

/// A route's `shadow`.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowConfig {
    /// Share of legacy-served requests copied, in basis points.
    pub percent_bp: u32,
    /// Only these methods are copied (default: GET and HEAD; a copy of a POST has side
    /// effects).
    pub methods: Vec<Method>,
    pub max_body: u64,
    /// Headers left out of the comparison, beside those always left out.
    pub ignore_headers: Vec<HeaderName>,
    /// JSON pointers left out of the comparison; `*` is any index or key.
    pub ignore_json: Vec<Pointer>,
    /// Legacy measured against itself.
    pub noise: Option<NoiseConfig>,
}

/// `noise`: a sample of the copied requests is sent a second time to legacy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoiseConfig {
    /// Share of the copies also sent again to legacy, in basis points.
    pub sample_bp: u32,
    /// A field differing in at least this share of the legacy pairs is noise.
    pub threshold: f64,
}

/// A JSON pointer whose segments may be `*` (any index or key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pointer(pub Vec<Segment>);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    Key(String),
    Any,
}

impl Pointer {
    /// Parses `/a/*/b` (RFC 6901, with `~1` for `/` and `~0` for `~`); `""` is the whole
    /// document.
    pub fn parse(s: &str) -> Option<Pointer> {
        if s.is_empty() {
            return Some(Pointer(Vec::new()));
        }
        let rest = s.strip_prefix('/')?;
        Some(Pointer(
            rest.split('/')
                .map(|seg| match seg {
                    "*" => Segment::Any,
                    s => Segment::Key(s.replace("~1", "/").replace("~0", "~")),
                })
                .collect(),
        ))
    }

    /// Whether the concrete path `path` (its segments) is this pattern.
    pub fn matches(&self, path: &[String]) -> bool {
        self.0.len() == path.len()
            && self.0.iter().zip(path).all(|(p, s)| match p {
                Segment::Any => true,
                Segment::Key(k) => k == s,
            })
    }
}

impl std::fmt::Display for Pointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for s in &self.0 {
            match s {
                Segment::Any => f.write_str("/*")?,
                Segment::Key(k) => write!(f, "/{}", k.replace('~', "~0").replace('/', "~1"))?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers() {
        let p = Pointer::parse("/items/*/etag").unwrap();
        assert!(p.matches(&["items".into(), "3".into(), "etag".into()]));
        assert!(!p.matches(&["items".into(), "3".into()]));
        assert_eq!(p.to_string(), "/items/*/etag");
        let q = Pointer::parse("/a~1b/c~0d").unwrap();
        assert!(q.matches(&["a/b".into(), "c~d".into()]));
        assert_eq!(q.to_string(), "/a~1b/c~0d");
        assert!(Pointer::parse("items").is_none());
        assert!(Pointer::parse("").unwrap().matches(&[]));
    }
}
