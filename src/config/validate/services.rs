//! Services: the legacy monolith and the extracted services, with their URLs.

use super::{SERVICE_KEYS, Validator, join};
use crate::config::yaml::{Node, Value, quote};
use crate::config::{DEFAULT_IDLE_TIMEOUT, DEFAULT_TIMEOUT, Service};
use crate::routing::check_canonical;

impl Validator {
    pub(super) fn service(&mut self, n: &Node, path: &str, name: &str) -> Option<Service> {
        let f = self.fields(n, path, SERVICE_KEYS)?;
        let url_node = self.require(&f, path, "url", "a URL like http://127.0.0.1:9001")?;
        let url_path = join(path, "url");
        let url = self.string(url_node, &url_path, "a URL like http://host:port[/base]")?;
        let parsed = parse_upstream_url(url);
        let timeout = match f.get("timeout") {
            Some(t) => self.duration(t, &join(path, "timeout")),
            None => Some(DEFAULT_TIMEOUT),
        };
        let idle_timeout = match f.get("idle_timeout") {
            Some(t) => self.duration(t, &join(path, "idle_timeout")),
            None => Some(DEFAULT_IDLE_TIMEOUT),
        };
        let host_upstream = match f.get("host_header") {
            None => Some(false),
            Some(h) => match &h.value {
                Value::Str(s) if s == "client" => Some(false),
                Value::Str(s) if s == "upstream" => Some(true),
                _ => {
                    self.wrong(
                        h,
                        &join(path, "host_header"),
                        "client (default) or upstream",
                    );
                    None
                }
            },
        };
        let (authority, base_path) = match parsed {
            Ok(p) => p,
            Err(why) => {
                self.error(
                    url_node.pos,
                    &url_path,
                    format!(
                        "found {q} ({why}); allowed: http://host:port[/base]",
                        q = quote(url)
                    ),
                );
                return None;
            }
        };
        Some(Service {
            name: name.to_string(),
            url: url.to_string(),
            authority,
            base_path,
            timeout: timeout?,
            idle_timeout: idle_timeout?,
            host_upstream: host_upstream?,
        })
    }
}

/// Route and service names: `[a-z0-9][a-z0-9_-]*`.
pub fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// Splits `http://host:port[/base]` into authority and base path.
fn parse_upstream_url(url: &str) -> Result<(http::uri::Authority, String), String> {
    let rest = if let Some(r) = url.strip_prefix("http://") {
        r
    } else if url.starts_with("https://") {
        return Err("TLS to upstreams is not supported yet".into());
    } else {
        return Err("the scheme must be http".into());
    };
    let (auth, base) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if auth.contains('@') {
        return Err("user info is not allowed".into());
    }
    let authority: http::uri::Authority =
        auth.parse().map_err(|_| "invalid host:port".to_string())?;
    if authority.port_u16().is_none() {
        return Err("the port is missing".into());
    }
    if authority.host().is_empty() {
        return Err("the host is missing".into());
    }
    if base.contains('?') || base.contains('#') {
        return Err("a query or fragment is not allowed".into());
    }
    let base = base.trim_end_matches('/');
    if !base.is_empty() {
        check_canonical(base).map_err(|e| format!("base path {e}"))?;
    }
    Ok((authority, base.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_urls() {
        for u in [
            "https://a:1",
            "http://a",
            "ftp://a:1",
            "http://a:1/x?y",
            "http://u@a:1",
        ] {
            assert!(parse_upstream_url(u).is_err(), "{u}");
        }
        let (a, b) = parse_upstream_url("http://[::1]:9000/base").unwrap();
        assert_eq!(a.as_str(), "[::1]:9000");
        assert_eq!(b, "/base");
    }
}
