//! Validation: walks the located YAML tree and builds a [`Config`], collecting every error
//! of the file (file:line:col, YAML path, what was found, what is allowed) instead of
//! stopping at the first. One submodule per part of the file: [`settings`] (listeners,
//! sticky, override, trusted proxies, compare), [`services`] and [`routes`].

mod plans;
pub use plans::plan_files;
mod resilience;
mod routes;
mod services;
mod settings;
mod shadow;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::HeaderName;

use super::yaml::{Key, Node, Pos, QUOTE_CHARS, Value, quote};
use super::{
    AdminConfig, ClientConfig, CompareConfig, Config, DEFAULT_TIMEOUT, DEFAULT_VIA, Diagnostic,
    InventoryConfig, NamedFile, Service,
};

pub(super) use services::valid_name;

const ROUTE_KEYS: &[&str] = &[
    "name",
    "match",
    "service",
    "percent",
    "sticky",
    "cohort",
    "upgrades",
    "timeout",
    "connect_timeout",
    "fallback",
    "retries",
    "shadow",
];
const MATCH_KEYS: &[&str] = &["path", "prefix", "regex", "methods", "headers"];
const SERVICE_KEYS: &[&str] = &[
    "url",
    "urls",
    "balance",
    "resolve",
    "health",
    "connect_timeout",
    "breaker",
    "outlier",
    "timeout",
    "idle_timeout",
    "host_header",
    "protocol",
    "ca",
];
const TOP_KEYS: &[&str] = &[
    "listen",
    "admin",
    "legacy",
    "services",
    "sticky",
    "override",
    "trusted_proxies",
    "drain_timeout",
    "client",
    "via",
    "compare",
    "inventory",
    "tls",
    "routes",
    "plans",
];

/// Every name under `services` (valid or not): looked up by name, listed in file order.
struct Defined<'a> {
    names: std::collections::HashSet<&'a str>,
    listed: Vec<&'a str>,
}

/// The longest message (in characters) one error carries.
const MESSAGE_CHARS: usize = 600;

/// Collects errors while walking the tree.
pub(super) struct Validator {
    file: String,
    pub(super) errors: Vec<Diagnostic>,
    /// A file the routes file names (TLS certificate, key, CA) that does not exist is a
    /// warning rather than an error: `strangler check` runs where the gateway's files may
    /// not be (a CI job, with certificates mounted only in production). Serving never sets
    /// it.
    pub(super) absent_files_ok: bool,
    /// Those warnings.
    pub(super) absent: Vec<Diagnostic>,
    /// The files read for the config (certificate, key, CAs).
    files: Vec<NamedFile>,
    /// The text being validated, to read a scalar as it is written.
    pub(super) source: Option<String>,
    /// The routes file's `compare.retention`, for a plan's `guard.shadow_window`.
    pub(super) retention: Option<std::time::Duration>,
}

/// The entries of a mapping node, checked for unknown and duplicate keys.
struct Fields<'a> {
    entries: Vec<(&'a Key, &'a Node)>,
    pos: Pos,
}

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(_, v)| *v)
    }
}

/// The YAML path of `key` under `path`; a long key is cut, as [`quote`] cuts values.
fn join(path: &str, key: &str) -> String {
    let cut = key.char_indices().nth(QUOTE_CHARS).map(|(end, _)| end);
    let (key, more) = match cut {
        Some(end) => (&key[..end], "…"),
        None => (key, ""),
    };
    if path.is_empty() {
        format!("{key}{more}")
    } else {
        format!("{path}.{key}{more}")
    }
}

impl Validator {
    pub(super) fn new(file: &Path) -> Validator {
        Validator {
            file: file.display().to_string(),
            errors: Vec::new(),
            absent_files_ok: false,
            absent: Vec::new(),
            files: Vec::new(),
            source: None,
            retention: None,
        }
    }

    /// Whether `file`, named at `path`, is absent and may be (see `absent_files_ok`): then a
    /// warning says it was not checked.
    fn absent_file(&mut self, pos: Pos, path: &str, file: &Path) -> bool {
        if !self.absent_files_ok || file.exists() {
            return false;
        }
        self.absent.push(Diagnostic {
            file: self.file.clone(),
            pos,
            path: path.to_string(),
            message: format!(
                "{} is not here, so it was not checked; the gateway reads it when it starts or reloads, and refuses the file then if it is missing or unusable",
                file.display()
            ),
        });
        true
    }

    fn error(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        let mut message = message.into();
        // Values are quoted cut ([`quote`]); this bounds what a library's own wording
        // (a regex or path error repeating its input) can add.
        if let Some((end, _)) = message.char_indices().nth(MESSAGE_CHARS) {
            let size = message.len();
            message.truncate(end);
            message.push_str(&format!("… (message cut, {size} bytes)"));
        }
        self.errors.push(Diagnostic {
            file: self.file.clone(),
            pos,
            path: path.to_string(),
            message,
        });
    }

    fn wrong(&mut self, node: &Node, path: &str, allowed: &str) {
        self.error(
            node.pos,
            path,
            format!("found {}; allowed: {allowed}", node.show()),
        );
    }

    /// Checks that `node` is a mapping with only `allowed` keys, each at most once.
    fn fields<'a>(&mut self, node: &'a Node, path: &str, allowed: &[&str]) -> Option<Fields<'a>> {
        let Value::Map(entries) = &node.value else {
            self.error(
                node.pos,
                path,
                format!(
                    "found {}; allowed: a mapping with keys {}",
                    node.value.kind(),
                    allowed.join(", ")
                ),
            );
            return None;
        };
        let mut kept: Vec<(&Key, &Node)> = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            let p = join(path, &k.name);
            if !allowed.contains(&k.name.as_str()) {
                self.error(
                    k.pos,
                    &p,
                    format!(
                        "unknown key {}; allowed keys here: {}",
                        quote(&k.name),
                        allowed.join(", ")
                    ),
                );
            } else if let Some((first, _)) = kept.iter().find(|(f, _)| f.name == k.name) {
                let line = first.pos.line;
                self.error(
                    k.pos,
                    &p,
                    format!(
                        "duplicate key {} (first at line {line}); allowed: each key once",
                        quote(&k.name)
                    ),
                );
            } else {
                kept.push((k, v));
            }
        }
        Some(Fields {
            entries: kept,
            pos: node.pos,
        })
    }

    fn require<'a>(
        &mut self,
        f: &Fields<'a>,
        path: &str,
        key: &str,
        what: &str,
    ) -> Option<&'a Node> {
        let n = f.get(key);
        if n.is_none() {
            self.error(
                f.pos,
                &join(path, key),
                format!("missing key {key:?}; expected {what}"),
            );
        }
        n
    }

    fn string<'a>(&mut self, node: &'a Node, path: &str, allowed: &str) -> Option<&'a str> {
        match &node.value {
            Value::Str(s) => Some(s),
            _ => {
                self.wrong(node, path, allowed);
                None
            }
        }
    }

    fn socket_addr(&mut self, node: &Node, path: &str) -> Option<SocketAddr> {
        let s = self.string(node, path, "an address like 127.0.0.1:8080")?;
        match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.wrong(
                    node,
                    path,
                    "an IP address and port like 127.0.0.1:8080 or [::1]:8080",
                );
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let s = self.string(node, path, "a duration like 30s, 500ms or 1m30s")?;
        match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => Some(d),
            _ => {
                self.wrong(node, path, "a positive duration like 30s, 500ms or 1m30s");
                None
            }
        }
    }

    fn header_name(&mut self, n: &Node, path: &str) -> Option<HeaderName> {
        let s = self.string(n, path, "a header name")?;
        match HeaderName::from_bytes(s.to_ascii_lowercase().as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                self.wrong(n, path, "a valid HTTP header name (token characters)");
                None
            }
        }
    }

    /// A route whose service speaks HTTP/2 while legacy speaks HTTP/1.1 (or the other way)
    /// cannot be split: a gRPC call that legacy got over HTTP/1.1 would fail. Such a route
    /// sends everything to one side (percent 0 or 100).
    fn check_protocols(
        &mut self,
        legacy: &Service,
        services: &[Service],
        routes: &[crate::config::RouteConfig],
    ) {
        for (i, r) in routes.iter().enumerate() {
            let service = &services[r.service];
            let split = r.percent_bp != 0 && r.percent_bp != 10_000;
            if service.protocol.is_http2() != legacy.protocol.is_http2() && r.fallback.is_some() {
                self.error(
                    r.pos,
                    &format!("routes[{i}].fallback"),
                    format!(
                        "route {} falls back to legacy ({}) from {} ({}), which speak different protocols; allowed: fallback only where legacy speaks the service's protocol",
                        quote(&r.name),
                        legacy.protocol.as_str(),
                        service.name,
                        service.protocol.as_str()
                    ),
                );
            }
            if service.protocol.is_http2() != legacy.protocol.is_http2() && split {
                self.error(
                    r.pos,
                    &format!("routes[{i}]"),
                    format!(
                        "route {} is split between legacy ({}) and {} ({}), which speak different protocols; allowed: percent 0 or 100 (one side only), or the same protocol on both sides",
                        quote(&r.name),
                        legacy.protocol.as_str(),
                        service.name,
                        service.protocol.as_str()
                    ),
                );
            }
        }
    }

    pub(super) fn root(&mut self, root: &Node, file: &Path, hash: String) -> Option<Config> {
        let f = self.fields(root, "", TOP_KEYS)?;
        let listen = self
            .require(
                &f,
                "",
                "listen",
                "the public listener address, like 127.0.0.1:8080",
            )
            .and_then(|n| self.socket_addr(n, "listen"));
        let admin = match f.get("admin") {
            Some(n) => self.admin(n),
            None => Some(AdminConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
                token_env: None,
                hosts: Vec::new(),
            }),
        };
        let legacy = self
            .require(&f, "", "legacy", "the monolith: a mapping with url")
            .and_then(|n| self.service(n, "legacy", "legacy", file));

        let mut services: Vec<Service> = Vec::new();
        let mut service_ok = true;
        if let Some(n) = f.get("services") {
            match &n.value {
                Value::Map(entries) => {
                    let mut seen: Vec<&str> = Vec::new();
                    for (k, v) in entries {
                        let p = join("services", &k.name);
                        if seen.contains(&k.name.as_str()) {
                            self.error(
                                k.pos,
                                &p,
                                format!(
                                    "duplicate service {}; allowed: each name once",
                                    quote(&k.name)
                                ),
                            );
                            continue;
                        }
                        seen.push(&k.name);
                        if !valid_name(&k.name) || k.name == "legacy" {
                            self.error(
                                k.pos,
                                &p,
                                format!(
                                    "service name {}; allowed: [a-z0-9][a-z0-9_-]*, not \"legacy\"",
                                    quote(&k.name)
                                ),
                            );
                        }
                        match self.service(v, &p, &k.name, file) {
                            Some(s) => services.push(s),
                            None => service_ok = false,
                        }
                    }
                }
                Value::Null => {}
                _ => self.wrong(
                    n,
                    "services",
                    "a mapping from service name to {url, timeout}",
                ),
            }
        }

        let sticky = f.get("sticky").and_then(|n| self.sticky(n, "sticky"));
        let override_header = f.get("override").and_then(|n| {
            let o = self.fields(n, "override", &["header"])?;
            let h = self.require(
                &o,
                "override",
                "header",
                "a header name like x-strangler-side",
            )?;
            self.header_name(h, "override.header")
        });
        let trusted_proxies = match f.get("trusted_proxies") {
            None => Vec::new(),
            Some(n) => self.cidrs(n),
        };
        let compare = match f.get("compare") {
            None => Some(CompareConfig::default()),
            Some(n) => self.compare(n),
        };
        let inventory = match f.get("inventory") {
            None => Some(InventoryConfig::default()),
            Some(n) => self.inventory(n),
        };
        let drain_timeout = match f.get("drain_timeout") {
            None => Some(DEFAULT_TIMEOUT),
            Some(n) => self.duration(n, "drain_timeout"),
        };
        let client = match f.get("client") {
            None => Some(ClientConfig::default()),
            Some(n) => self.client(n),
        };
        let via = match f.get("via") {
            None => Some(DEFAULT_VIA.to_string()),
            Some(n) => self.via(n),
        };
        let tls = match f.get("tls") {
            None => Some(None),
            Some(n) => self.tls(n, file),
        };

        let routes = match f.get("routes") {
            None => Vec::new(),
            Some(Node {
                value: Value::Null, ..
            }) => Vec::new(),
            Some(Node {
                value: Value::Seq(items),
                ..
            }) => {
                let valid: std::collections::HashMap<&str, usize> = services
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s.name.as_str(), i))
                    .collect();
                let mut out = Vec::new();
                // Every name under `services`, also of services that failed validation: a
                // route naming one of those is not reported a second time, and an unknown
                // name is told what is defined.
                let defined: Vec<&str> = match f.get("services").map(|n| &n.value) {
                    Some(Value::Map(e)) => e.iter().map(|(k, _)| k.name.as_str()).collect(),
                    _ => Vec::new(),
                };
                let defined = Defined {
                    names: defined.iter().copied().collect(),
                    listed: defined,
                };
                for (i, item) in items.iter().enumerate() {
                    if let Some(r) = self.route(item, i, &valid, &defined) {
                        out.push(r);
                    }
                }
                self.check_names(items);
                out
            }
            Some(n) => {
                self.wrong(n, "routes", "a list of routes");
                Vec::new()
            }
        };

        if let Some(legacy) = &legacy {
            self.check_protocols(legacy, &services, &routes);
        }
        let plans = match f.get("plans") {
            None => Some((None, Vec::new())),
            Some(n) => {
                let retention = compare
                    .as_ref()
                    .map_or(CompareConfig::default().retention, |c| c.retention);
                self.plans(n, file, &routes, retention)
                    .map(|(d, p)| (Some(d), p))
            }
        };
        if !self.errors.is_empty() || !service_ok {
            return None;
        }
        let cfg = Config {
            file: file.to_path_buf(),
            text_hash: hash.clone(),
            hash,
            listen: listen?,
            admin: admin?,
            legacy: legacy?,
            services,
            sticky,
            override_header,
            trusted_proxies,
            drain_timeout: drain_timeout?,
            client: client?,
            via: via?,
            compare: compare?,
            inventory: inventory?,
            tls: tls?,
            files: std::mem::take(&mut self.files),
            routes,
            plans_dir: plans.as_ref()?.0.clone(),
            plans: plans?.1,
            warnings: Vec::new(),
        };
        Some(cfg)
    }
}
