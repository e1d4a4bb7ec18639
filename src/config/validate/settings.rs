//! The settings of a routes file: the admin listener, sticky keys, trusted proxies and the
//! legacy-vs-new comparison.

use std::net::SocketAddr;
use std::path::Path;

use ipnet::IpNet;

use super::{Validator, join};
use crate::config::tls::{self, Tls};
use crate::config::yaml::{Node, Value};
use crate::config::{AdminConfig, ClientConfig, CompareConfig, InventoryConfig, PathParameters};
use crate::routing::StickyKey;

impl Validator {
    /// `tls: {cert, key}`: PEM files, relative to the routes file's directory; read and
    /// checked now, so that a bad certificate is an invalid config. `Some(None)`: the files
    /// are absent and may be (a check elsewhere than the gateway).
    pub(super) fn tls(&mut self, n: &Node, file: &Path) -> Option<Option<Tls>> {
        let f = self.fields(n, "tls", &["cert", "key"])?;
        let cert = self.require(&f, "tls", "cert", "the certificate chain's PEM file");
        let key = self.require(&f, "tls", "key", "the private key's PEM file");
        let (cert, key) = (cert?, key?);
        let cert_path = self.string(cert, "tls.cert", "a file path")?;
        let key_path = self.string(key, "tls.key", "a file path")?;
        let dir = file.parent().unwrap_or(Path::new("."));
        let (cp, kp) = (dir.join(cert_path), dir.join(key_path));
        let cert_absent = self.absent_file(cert.pos, "tls.cert", &cp);
        let key_absent = self.absent_file(key.pos, "tls.key", &kp);
        if cert_absent || key_absent {
            return Some(None);
        }
        match tls::load(&cp, &kp) {
            Ok((t, files)) => {
                self.files.extend(files);
                Some(Some(t))
            }
            Err((part, message)) => {
                let (node, path) = match part {
                    tls::Part::Key => (key, "tls.key"),
                    tls::Part::Cert | tls::Part::Both => (cert, "tls.cert"),
                };
                self.error(node.pos, path, message);
                None
            }
        }
    }

    pub(super) fn client(&mut self, n: &Node) -> Option<ClientConfig> {
        let f = self.fields(
            n,
            "client",
            &[
                "head_timeout",
                "body_timeout",
                "send_timeout",
                "allow_underscores",
                "path_parameters",
                "extra_methods",
                "strip_headers",
            ],
        )?;
        let mut c = ClientConfig::default();
        let mut ok = true;
        for (key, slot) in [
            ("head_timeout", &mut c.head_timeout),
            ("body_timeout", &mut c.body_timeout),
            ("send_timeout", &mut c.send_timeout),
        ] {
            if let Some(v) = f.get(key) {
                match self.duration(v, &format!("client.{key}")) {
                    Some(d) => *slot = d,
                    None => ok = false,
                }
            }
        }
        if let Some(v) = f.get("allow_underscores") {
            match v.value {
                Value::Bool(b) => c.allow_underscores = b,
                _ => {
                    self.wrong(v, "client.allow_underscores", "true or false");
                    ok = false;
                }
            }
        }
        if let Some(v) = f.get("path_parameters") {
            match v.value {
                Value::Str(ref s) if s == "match_without" => {
                    c.path_parameters = PathParameters::MatchWithout;
                }
                Value::Str(ref s) if s == "refuse" => c.path_parameters = PathParameters::Refuse,
                Value::Str(ref s) if s == "literal" => c.path_parameters = PathParameters::Literal,
                _ => {
                    self.wrong(
                        v,
                        "client.path_parameters",
                        "match_without (the default: routes match each segment without its ;parameters, as servlet containers read them), refuse or literal",
                    );
                    ok = false;
                }
            }
        }
        if let Some(v) = f.get("extra_methods") {
            match self.list(
                v,
                "client.extra_methods",
                "methods in upper case, like [PURGE]",
                |v, item, p| {
                    let s = v.string(item, p, "a method in upper case, like PURGE")?;
                    let token = !s.is_empty()
                        && s.bytes().all(|b| {
                            b.is_ascii_uppercase()
                                || b.is_ascii_digit()
                                || b"!#$%&'*+-.^_`|~".contains(&b)
                        });
                    match http::Method::from_bytes(s.as_bytes()) {
                        Ok(m) if token && m != http::Method::CONNECT => Some(m),
                        _ => {
                            v.wrong(
                                item,
                                p,
                                "a method token in upper case (letters, digits, - and _), like PURGE; CONNECT is never accepted",
                            );
                            None
                        }
                    }
                },
            ) {
                Some(m) => c.extra_methods = m,
                None => ok = false,
            }
        }
        if let Some(v) = f.get("strip_headers") {
            match self.list(v, "client.strip_headers", "header names", |v, item, p| {
                v.header_name(item, p)
            }) {
                Some(h) => c.strip_headers = h,
                None => ok = false,
            }
        }
        ok.then_some(c)
    }

    /// The name in `Via`: a token (RFC 9110 §7.6.3's pseudonym).
    pub(super) fn via(&mut self, n: &Node) -> Option<String> {
        let s = self.string(n, "via", "a name like strangler-edge")?;
        let token = !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            self.wrong(
                n,
                "via",
                "a name of letters, digits and - . _ (an HTTP token), like strangler-edge",
            );
            return None;
        }
        Some(s.to_string())
    }

    pub(super) fn admin(&mut self, n: &Node) -> Option<AdminConfig> {
        let f = self.fields(n, "admin", &["listen", "token_env", "hosts"])?;
        let listen = match f.get("listen") {
            Some(l) => self.socket_addr(l, "admin.listen")?,
            None => SocketAddr::from(([127, 0, 0, 1], 9901)),
        };
        let token_env = match f.get("token_env") {
            Some(t) => Some(
                self.string(t, "admin.token_env", "an environment variable name")?
                    .to_string(),
            ),
            None => None,
        };
        if !listen.ip().is_loopback() && token_env.is_none() {
            let pos = f.get("listen").map_or(f.pos, |l| l.pos);
            self.error(
                pos,
                "admin.listen",
                format!(
                    "found {listen}, beyond loopback, with no admin.token_env; allowed: a loopback address, or set admin.token_env (see docs/admin-api.md, section Access)"
                ),
            );
            return None;
        }
        let hosts = match f.get("hosts") {
            Some(h) => self.list(
                h,
                "admin.hosts",
                "host names, like [gateway.internal]",
                |v, item, p| {
                    let s = v.string(item, p, "a host name, like gateway.internal")?;
                    let name = !s.is_empty()
                        && !s.starts_with('.')
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
                    if name {
                        Some(s.to_ascii_lowercase())
                    } else {
                        v.wrong(
                            item,
                            p,
                            "a host name without port (letters, digits, - and .), like gateway.internal",
                        );
                        None
                    }
                },
            )?,
            None => Vec::new(),
        };
        Some(AdminConfig {
            listen,
            token_env,
            hosts,
        })
    }

    pub(super) fn inventory(&mut self, n: &Node) -> Option<InventoryConfig> {
        let f = self.fields(n, "inventory", &["sample", "max_templates"])?;
        let mut c = InventoryConfig::default();
        let mut ok = true;
        if let Some(v) = f.get("sample") {
            match self.percent(v, "inventory.sample") {
                Some(bp) => c.sample_bp = bp,
                None => ok = false,
            }
        }
        if let Some(v) = f.get("max_templates") {
            match v.value {
                Value::Int(i) if (1..=InventoryConfig::MAX_TEMPLATES as i64).contains(&i) => {
                    c.max_templates = i as usize
                }
                _ => {
                    self.wrong(
                        v,
                        "inventory.max_templates",
                        &format!(
                            "a whole number from 1 to {}",
                            InventoryConfig::MAX_TEMPLATES
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(c)
    }

    pub(super) fn compare(&mut self, n: &Node) -> Option<CompareConfig> {
        let f = self.fields(
            n,
            "compare",
            &[
                "window",
                "min_requests",
                "max_p99_ratio",
                "max_error_rate_delta",
                "confidence",
                "resolution",
                "retention",
            ],
        )?;
        let mut c = CompareConfig::default();
        let mut ok = true;
        for (key, slot) in [
            ("window", &mut c.window),
            ("resolution", &mut c.resolution),
            ("retention", &mut c.retention),
        ] {
            if let Some(v) = f.get(key) {
                match self.duration(v, &format!("compare.{key}")) {
                    Some(d) => *slot = d,
                    None => ok = false,
                }
            }
        }
        if let Some(v) = f.get("min_requests") {
            match v.value {
                Value::Int(i) if i >= 1 => c.min_requests = i as u64,
                _ => {
                    self.wrong(v, "compare.min_requests", "a whole number, at least 1");
                    ok = false;
                }
            }
        }
        if let Some(v) = f.get("max_p99_ratio") {
            match v.value {
                Value::Int(i) if i >= 1 => c.max_p99_ratio = i as f64,
                Value::Float(x) if x >= 1.0 => c.max_p99_ratio = x,
                _ => {
                    self.wrong(v, "compare.max_p99_ratio", "a number, at least 1");
                    ok = false;
                }
            }
        }
        for (key, slot, range, allowed) in [
            (
                "max_error_rate_delta",
                &mut c.max_error_rate_delta,
                0.0..1.0,
                "a number from 0 to below 1, like 0.01 (one percentage point)",
            ),
            (
                "confidence",
                &mut c.confidence,
                0.5..1.0,
                "a number from 0.5 to below 1, like 0.99",
            ),
        ] {
            if let Some(v) = f.get(key) {
                match v.value {
                    Value::Int(i) if range.contains(&(i as f64)) => *slot = i as f64,
                    Value::Float(x) if range.contains(&x) => *slot = x,
                    _ => {
                        self.wrong(v, &format!("compare.{key}"), allowed);
                        ok = false;
                    }
                }
            }
        }
        if ok && c.retention < c.window {
            self.error(
                f.pos,
                "compare.retention",
                format!(
                    "found retention {} shorter than window {}; allowed: retention at least the window",
                    humantime::format_duration(c.retention),
                    humantime::format_duration(c.window)
                ),
            );
            ok = false;
        }
        if ok && c.retention.as_millis() / c.resolution.as_millis().max(1) > 3600 {
            self.error(
                f.pos,
                "compare.resolution",
                "found more than 3600 slots (retention / resolution); allowed: at most 3600"
                    .to_string(),
            );
            ok = false;
        }
        ok.then_some(c)
    }

    pub(super) fn sticky(&mut self, n: &Node, path: &str) -> Option<StickyKey> {
        let f = self.fields(n, path, &["header", "cookie", "query", "client_ip"])?;
        if f.entries.len() != 1 {
            self.error(
                n.pos,
                path,
                format!(
                    "found {} keys; allowed: exactly one of header, cookie, query, client_ip: true",
                    f.entries.len()
                ),
            );
            return None;
        }
        let (k, v) = f.entries[0];
        let p = join(path, &k.name);
        match k.name.as_str() {
            "header" => self.header_name(v, &p).map(StickyKey::Header),
            "cookie" => {
                let s = self.string(v, &p, "a cookie name")?;
                if s.is_empty()
                    || s.bytes()
                        .any(|b| b <= b' ' || b"=;,\"".contains(&b) || b >= 0x7f)
                {
                    self.wrong(
                        v,
                        &p,
                        "a cookie name (visible ASCII without = ; , or quotes)",
                    );
                    return None;
                }
                Some(StickyKey::Cookie(s.to_string()))
            }
            "query" => {
                let s = self.string(v, &p, "a query parameter name")?;
                if s.is_empty() {
                    self.wrong(v, &p, "a non-empty query parameter name");
                    return None;
                }
                Some(StickyKey::Query(s.to_string()))
            }
            _ => match v.value {
                Value::Bool(true) => Some(StickyKey::ClientIp),
                _ => {
                    self.wrong(v, &p, "true");
                    None
                }
            },
        }
    }

    pub(super) fn cidrs(&mut self, n: &Node) -> Vec<IpNet> {
        let Value::Seq(items) = &n.value else {
            self.wrong(
                n,
                "trusted_proxies",
                "a list of CIDRs like [10.0.0.0/8, 127.0.0.1/32]",
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = format!("trusted_proxies[{i}]");
            let Some(s) = self.string(item, &p, "a CIDR like 10.0.0.0/8 or an IP address") else {
                continue;
            };
            match s.parse::<IpNet>() {
                Ok(net) => out.push(net),
                Err(_) => match s.parse::<std::net::IpAddr>() {
                    Ok(ip) => out.push(IpNet::from(ip)),
                    Err(_) => self.wrong(item, &p, "a CIDR like 10.0.0.0/8 or an IP address"),
                },
            }
        }
        out
    }
}
