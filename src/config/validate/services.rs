//! Services: the legacy monolith and the extracted services, with their URLs.

use std::path::Path;

use super::{Fields, SERVICE_KEYS, Validator, join};
use crate::config::tls;
use crate::config::yaml::{Node, Value, quote};
use crate::config::{DEFAULT_IDLE_TIMEOUT, DEFAULT_TIMEOUT, Protocol, Service, bare_host};
use crate::routing::check_canonical;

impl Validator {
    pub(super) fn service(
        &mut self,
        n: &Node,
        path: &str,
        name: &str,
        file: &Path,
    ) -> Option<Service> {
        let f = self.fields(n, path, SERVICE_KEYS)?;
        // Read first, but reported with the other keys: a wrong URL does not hide them.
        let urls = self.urls(&f, path);
        let settings = self.service_resilience(&f, path, name == "legacy");
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
        let protocol = match f.get("protocol") {
            None => Some(Protocol::Http1),
            Some(p) => match &p.value {
                Value::Str(s) if s == "http1" => Some(Protocol::Http1),
                Value::Str(s) if s == "h2c" => Some(Protocol::H2c),
                Value::Str(s) if s == "h2" => Some(Protocol::H2),
                _ => {
                    self.wrong(
                        p,
                        &join(path, "protocol"),
                        "http1 (default), h2c (HTTP/2 in clear) or h2 (HTTP/2 over TLS)",
                    );
                    None
                }
            },
        };
        let Urls {
            mut instances,
            node: url_node,
            path: url_path,
            url,
        } = urls?;
        let authorities: Vec<http::uri::Authority> =
            instances.iter().map(|(_, a, _)| a.clone()).collect();
        let (https, authority, base_path) = instances.swap_remove(0);
        let protocol = protocol?;
        match (protocol, https) {
            (Protocol::H2c, true) => {
                self.error(
                    url_node.pos,
                    &url_path,
                    format!("found {q} with protocol h2c, which is HTTP/2 in clear; allowed: an http:// URL, or protocol h2 for HTTP/2 over TLS", q = quote(url)),
                );
                return None;
            }
            (Protocol::H2, false) => {
                self.error(
                    url_node.pos,
                    &url_path,
                    format!("found {q} with protocol h2, which is HTTP/2 over TLS; allowed: an https:// URL, or protocol h2c for HTTP/2 in clear", q = quote(url)),
                );
                return None;
            }
            _ => {}
        }
        let tls = if https {
            let names: Result<Vec<_>, _> = authorities
                .iter()
                .map(|a| rustls_pki_types::ServerName::try_from(bare_host(a).to_string()))
                .collect();
            let Ok(name) = names.map(|mut n| n.swap_remove(0)) else {
                self.error(
                    url_node.pos,
                    &url_path,
                    format!(
                        "found {q}, whose host cannot be checked against a certificate; allowed: a DNS name or an IP address",
                        q = quote(url)
                    ),
                );
                return None;
            };
            let ca = match f.get("ca") {
                None => None,
                Some(c) => {
                    let s = self.string(c, &join(path, "ca"), "a PEM file of CA certificates")?;
                    Some((c, file.parent().unwrap_or(Path::new(".")).join(s)))
                }
            };
            let alpn: &[u8] = if protocol == Protocol::H2 {
                b"h2"
            } else {
                b"http/1.1"
            };
            let absent = match &ca {
                Some((c, p)) => self.absent_file(c.pos, &join(path, "ca"), p),
                None => false,
            };
            let made = if absent {
                // Checked where the file is not: the config is only reported, never served.
                Ok(tls::unchecked(alpn, name))
            } else {
                tls::client(ca.as_ref().map(|(_, p)| p.as_path()), alpn, name)
            };
            match made {
                Ok(c) => {
                    self.files.extend(c.ca.clone());
                    Some(c)
                }
                Err(e) => {
                    let (pos, p) = match &ca {
                        Some((c, _)) => (c.pos, join(path, "ca")),
                        None => (url_node.pos, url_path.clone()),
                    };
                    self.error(pos, &p, e);
                    return None;
                }
            }
        } else {
            if let Some(c) = f.get("ca") {
                self.wrong(c, &join(path, "ca"), "ca only with an https:// URL");
                return None;
            }
            None
        };
        let settings = settings?;
        Some(Service {
            name: name.to_string(),
            url: url.to_string(),
            authority,
            base_path,
            timeout: timeout?,
            idle_timeout: idle_timeout?,
            host_upstream: host_upstream?,
            protocol,
            tls,
            authorities,
            balance: settings.balance,
            resolve: settings.resolve,
            health: settings.health,
            connect_timeout: settings.connect_timeout,
            breaker: settings.breaker,
            outlier: settings.outlier,
        })
    }

    /// `url`, or `urls` for several instances: each parsed, all of one scheme and base.
    fn urls<'a>(&mut self, f: &Fields<'a>, path: &str) -> Option<Urls<'a>> {
        let mut url_nodes: Vec<(&'a Node, String)> = match (f.get("url"), f.get("urls")) {
            (Some(u), None) => vec![(u, join(path, "url"))],
            (None, Some(us)) => match &us.value {
                Value::Seq(items) if !items.is_empty() => items
                    .iter()
                    .enumerate()
                    .map(|(i, u)| (u, format!("{}[{i}]", join(path, "urls"))))
                    .collect(),
                _ => {
                    self.wrong(
                        us,
                        &join(path, "urls"),
                        "a non-empty list of URLs like [http://10.0.0.1:9001, http://10.0.0.2:9001]",
                    );
                    return None;
                }
            },
            (Some(u), Some(_)) => {
                self.error(
                    u.pos,
                    &join(path, "url"),
                    "found both url and urls; allowed: url for one instance or urls for several",
                );
                return None;
            }
            (None, None) => {
                self.require(
                    f,
                    path,
                    "url",
                    "a URL like http://127.0.0.1:9001 (or urls: a list of them)",
                );
                return None;
            }
        };
        let mut instances: Vec<(bool, http::uri::Authority, String)> = Vec::new();
        for (node, p) in &url_nodes {
            let u = self.string(node, p, "a URL like http://host:port[/base]")?;
            match parse_upstream_url(u) {
                Ok(parsed) => instances.push(parsed),
                Err(why) => {
                    self.error(
                        node.pos,
                        p,
                        format!(
                            "found {q} ({why}); allowed: http://host:port[/base] or https://host:port[/base]",
                            q = quote(u)
                        ),
                    );
                    return None;
                }
            }
        }
        for (i, (https, authority, base)) in instances.iter().enumerate().skip(1) {
            let (first_https, _, first_base) = &instances[0];
            if https != first_https || base != first_base {
                let (node, p) = &url_nodes[i];
                self.error(
                    node.pos,
                    p,
                    format!(
                        "found {authority} with {} and base path {:?}, unlike the first URL; allowed: every instance with the same scheme and base path",
                        if *https { "https" } else { "http" },
                        base
                    ),
                );
                return None;
            }
            if instances[..i].iter().any(|(_, a, _)| a == authority) {
                let (node, p) = &url_nodes[i];
                self.wrong(node, p, "each instance once");
                return None;
            }
        }
        let (node, path) = url_nodes.swap_remove(0);
        let url = self.string(node, &path, "a URL")?;
        Some(Urls {
            instances,
            node,
            path,
            url,
        })
    }
}

/// A service's instances as its `url` or `urls` give them.
struct Urls<'a> {
    /// TLS or not, authority and base path of each.
    instances: Vec<(bool, http::uri::Authority, String)>,
    /// The first URL's node, YAML path and text.
    node: &'a Node,
    path: String,
    url: &'a str,
}

/// Route and service names: `[a-z0-9][a-z0-9_-]*`.
pub fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// Splits `http[s]://host:port[/base]` into TLS or not, authority and base path.
fn parse_upstream_url(url: &str) -> Result<(bool, http::uri::Authority, String), String> {
    let (https, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err("the scheme must be http or https".into());
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
    Ok((https, authority, base.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_urls() {
        for u in ["http://a", "ftp://a:1", "http://a:1/x?y", "http://u@a:1"] {
            assert!(parse_upstream_url(u).is_err(), "{u}");
        }
        let (_, a, b) = parse_upstream_url("http://[::1]:9000/base").unwrap();
        assert_eq!(a.as_str(), "[::1]:9000");
        assert_eq!(b, "/base");
    }
}
