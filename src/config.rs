//! The routes file: reading, validating, and the validated `Config`.
//!
//! Owns the schema of CONTRACT §2. Reading goes YAML text → located tree (`yaml`) →
//! `Config`, collecting *every* error of the file with file:line:col, the YAML path, what was
//! found and what is allowed. It does not build lookup structures (that is `router`) and
//! holds no runtime state.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use regex::Regex;

use crate::canon;
use crate::router::Template;
use crate::yaml::{self, Key, Node, Pos, Value};

/// Default for `timeout` of a service and for `drain_timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A validated routes file.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from (for messages and reloads).
    pub file: PathBuf,
    /// xxh3 of the file's bytes, hex: the `hash` label of `strangler_config_info`.
    pub hash: String,
    pub listen: SocketAddr,
    pub admin: AdminConfig,
    /// The monolith. Index 0 of `Config::upstreams()`.
    pub legacy: Service,
    /// The extracted services, in file order.
    pub services: Vec<Service>,
    pub sticky: Option<StickyKey>,
    pub override_header: Option<HeaderName>,
    pub trusted_proxies: Vec<IpNet>,
    pub drain_timeout: Duration,
    /// Settings of the legacy-vs-new comparison (`compare`).
    pub compare: crate::compare::CompareConfig,
    pub routes: Vec<RouteConfig>,
    /// Non-fatal findings (rules that can never win, ...).
    pub warnings: Vec<Diagnostic>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token_env: Option<String>,
}

/// An upstream the gateway forwards to.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    /// The URL as written.
    pub url: String,
    /// `host:port` of the upstream.
    pub authority: http::uri::Authority,
    /// Path prefix prepended to every forwarded path; empty or `/x` without trailing slash.
    pub base_path: String,
    pub timeout: Duration,
    /// Send the upstream's own authority as `Host` instead of the client's.
    pub host_upstream: bool,
}

/// Where the cohort key of a request comes from (§4).
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

/// What part of the path a route matches on.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    Template(Template),
    /// Stored without a trailing slash (`/` stays `/`).
    Prefix(String),
    /// The pattern as written; matched against the whole path.
    Regex(String),
}

impl PathMatch {
    pub fn kind(&self) -> &'static str {
        match self {
            PathMatch::Exact(_) => "path",
            PathMatch::Template(_) => "path",
            PathMatch::Prefix(_) => "prefix",
            PathMatch::Regex(_) => "regex",
        }
    }
    pub fn pattern(&self) -> &str {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) | PathMatch::Regex(p) => p,
            PathMatch::Template(t) => t.source(),
        }
    }
}

/// A header condition of a route.
#[derive(Debug, Clone)]
pub struct HeaderCond {
    pub name: HeaderName,
    pub test: HeaderTest,
}

#[derive(Debug, Clone)]
pub enum HeaderTest {
    Exact(HeaderValue),
    /// Anchored to match the whole value.
    Regex(Regex),
    Present(bool),
}

impl fmt::Display for HeaderCond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.test {
            HeaderTest::Exact(v) => write!(
                f,
                "{}: {}",
                self.name,
                String::from_utf8_lossy(v.as_bytes())
            ),
            HeaderTest::Regex(r) => write!(f, "{} ~ /{}/", self.name, regex_source(r)),
            HeaderTest::Present(p) => write!(f, "{} present: {p}", self.name),
        }
    }
}

/// The pattern of a header regex as written in the file (without the anchoring added to it).
pub fn regex_source(r: &Regex) -> &str {
    let s = r.as_str();
    s.strip_prefix("^(?:")
        .and_then(|s| s.strip_suffix(")$"))
        .unwrap_or(s)
}

/// One validated route.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    /// Where the route starts in the file.
    pub pos: Pos,
    pub path: PathMatch,
    /// `None`: any method.
    pub methods: Option<Vec<Method>>,
    pub headers: Vec<HeaderCond>,
    /// Index into `Config::services`.
    pub service: usize,
    /// Share for the new side in basis points (percent × 100): 0..=10000.
    pub percent_bp: u32,
    /// Route-level sticky key; `None` falls back to the file-wide one.
    pub sticky: Option<StickyKey>,
    pub cohort: String,
}

impl RouteConfig {
    /// How many conditions the route has: a `methods` list counts one, each header one (§3).
    pub fn condition_count(&self) -> usize {
        usize::from(self.methods.is_some()) + self.headers.len()
    }
}

/// A percentage (0 to 100, at most two decimals) in basis points; `None` otherwise.
pub fn percent_to_bp(f: f64) -> Option<u32> {
    if !(0.0..=100.0).contains(&f) {
        return None;
    }
    let scaled = f * 100.0;
    let rounded = scaled.round();
    ((scaled - rounded).abs() < 1e-9).then_some(rounded as u32)
}

/// Formats basis points as a percentage without trailing zeros: 2550 → "25.5".
pub fn format_percent(bp: u32) -> String {
    if bp.is_multiple_of(100) {
        (bp / 100).to_string()
    } else if bp.is_multiple_of(10) {
        format!("{}.{}", bp / 100, (bp % 100) / 10)
    } else {
        format!("{}.{:02}", bp / 100, bp % 100)
    }
}

/// One finding about a file: an error, or a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub pos: Pos,
    /// YAML path, 0-based indexes: `routes[1].match.regex`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(document)"
        } else {
            &self.path
        };
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.pos.line, self.pos.col, path, self.message
        )
    }
}

/// Every error found in a file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    pub errors: Vec<Diagnostic>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates a routes file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            errors: vec![Diagnostic {
                file: display.clone(),
                pos: Pos::default(),
                path: String::new(),
                message: format!("cannot read the routes file: {e}"),
            }],
        })?;
        Config::parse(&text, path)
    }

    /// Validates the text of a routes file; `path` names it in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        let mut v = Validator {
            file: path.display().to_string(),
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        let root = match yaml::parse(text) {
            Ok(root) => root,
            Err(e) => {
                v.error(e.pos, "", format!("invalid YAML: {}", e.message));
                return Err(ConfigErrors { errors: v.errors });
            }
        };
        let hash = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()));
        let cfg = v.root(&root, path, hash);
        if v.errors.is_empty() {
            let mut cfg = cfg.expect("a file without errors yields a config");
            cfg.warnings = v.warnings;
            Ok(cfg)
        } else {
            v.errors.sort_by_key(|d| (d.pos.line, d.pos.col));
            Err(ConfigErrors { errors: v.errors })
        }
    }

    /// The `i`-th upstream: 0 is legacy, `1 + k` is `services[k]`.
    pub fn upstream(&self, i: usize) -> &Service {
        if i == 0 {
            &self.legacy
        } else {
            &self.services[i - 1]
        }
    }
}

/// Collects errors while walking the tree.
struct Validator {
    file: String,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
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

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

const ROUTE_KEYS: &[&str] = &["name", "match", "service", "percent", "sticky", "cohort"];
const MATCH_KEYS: &[&str] = &["path", "prefix", "regex", "methods", "headers"];
const SERVICE_KEYS: &[&str] = &["url", "timeout", "host_header"];
const TOP_KEYS: &[&str] = &[
    "listen",
    "admin",
    "legacy",
    "services",
    "sticky",
    "override",
    "trusted_proxies",
    "drain_timeout",
    "compare",
    "routes",
];

impl Validator {
    fn error(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.errors.push(Diagnostic {
            file: self.file.clone(),
            pos,
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn warn(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.warnings.push(Diagnostic {
            file: self.file.clone(),
            pos,
            path: path.to_string(),
            message: message.into(),
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
                        "unknown key {:?}; allowed keys here: {}",
                        k.name,
                        allowed.join(", ")
                    ),
                );
            } else if let Some((first, _)) = kept.iter().find(|(f, _)| f.name == k.name) {
                let line = first.pos.line;
                self.error(
                    k.pos,
                    &p,
                    format!(
                        "duplicate key {:?} (first at line {line}); allowed: each key once",
                        k.name
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

    fn root(&mut self, root: &Node, file: &Path, hash: String) -> Option<Config> {
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
            }),
        };
        let legacy = self
            .require(&f, "", "legacy", "the monolith: a mapping with url")
            .and_then(|n| self.service(n, "legacy", "legacy"));

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
                                format!("duplicate service {:?}; allowed: each name once", k.name),
                            );
                            continue;
                        }
                        seen.push(&k.name);
                        if !valid_name(&k.name) || k.name == "legacy" {
                            self.error(
                                k.pos,
                                &p,
                                format!(
                                    "service name {:?}; allowed: [a-z0-9][a-z0-9_-]*, not \"legacy\"",
                                    k.name
                                ),
                            );
                        }
                        match self.service(v, &p, &k.name) {
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
            None => Some(crate::compare::CompareConfig::default()),
            Some(n) => self.compare(n),
        };
        let drain_timeout = match f.get("drain_timeout") {
            None => Some(DEFAULT_TIMEOUT),
            Some(n) => self.duration(n, "drain_timeout"),
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
                let known: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
                let mut out = Vec::new();
                // Names of services that failed validation still count as defined, so a
                // route naming one is not reported a second time.
                let all_names: Vec<String> = match f.get("services").map(|n| &n.value) {
                    Some(Value::Map(e)) => e.iter().map(|(k, _)| k.name.clone()).collect(),
                    _ => Vec::new(),
                };
                for (i, item) in items.iter().enumerate() {
                    if let Some(r) = self.route(item, i, &known, &all_names) {
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

        if !self.errors.is_empty() || !service_ok {
            return None;
        }
        let cfg = Config {
            file: file.to_path_buf(),
            hash,
            listen: listen?,
            admin: admin?,
            legacy: legacy?,
            services,
            sticky,
            override_header,
            trusted_proxies,
            drain_timeout: drain_timeout?,
            compare: compare?,
            routes,
            warnings: Vec::new(),
        };
        self.unreachable_warnings(&cfg);
        Some(cfg)
    }

    fn compare(&mut self, n: &Node) -> Option<crate::compare::CompareConfig> {
        let f = self.fields(
            n,
            "compare",
            &[
                "window",
                "min_requests",
                "max_p99_ratio",
                "resolution",
                "retention",
            ],
        )?;
        let mut c = crate::compare::CompareConfig::default();
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

    fn admin(&mut self, n: &Node) -> Option<AdminConfig> {
        let f = self.fields(n, "admin", &["listen", "token_env"])?;
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
                    "found {listen}, beyond loopback, with no admin.token_env; allowed: a loopback address, or set admin.token_env (CONTRACT §6)"
                ),
            );
            return None;
        }
        Some(AdminConfig { listen, token_env })
    }

    fn service(&mut self, n: &Node, path: &str, name: &str) -> Option<Service> {
        let f = self.fields(n, path, SERVICE_KEYS)?;
        let url_node = self.require(&f, path, "url", "a URL like http://127.0.0.1:9001")?;
        let url_path = join(path, "url");
        let url = self.string(url_node, &url_path, "a URL like http://host:port[/base]")?;
        let parsed = parse_upstream_url(url);
        let timeout = match f.get("timeout") {
            Some(t) => self.duration(t, &join(path, "timeout")),
            None => Some(DEFAULT_TIMEOUT),
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
                    format!("found {url:?} ({why}); allowed: http://host:port[/base]"),
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
            host_upstream: host_upstream?,
        })
    }

    fn sticky(&mut self, n: &Node, path: &str) -> Option<StickyKey> {
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

    fn cidrs(&mut self, n: &Node) -> Vec<IpNet> {
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

    fn route(
        &mut self,
        n: &Node,
        i: usize,
        services: &[&str],
        all_services: &[String],
    ) -> Option<RouteConfig> {
        let path = format!("routes[{i}]");
        let f = self.fields(n, &path, ROUTE_KEYS)?;
        let name = self
            .require(&f, &path, "name", "a unique route name")
            .and_then(|nn| {
                let p = join(&path, "name");
                let s = self.string(nn, &p, "a name matching [a-z0-9][a-z0-9_-]*")?;
                if !valid_name(s) || s == "default" {
                    self.wrong(
                        nn,
                        &p,
                        "a name matching [a-z0-9][a-z0-9_-]*, other than \"default\"",
                    );
                    None
                } else {
                    Some(s.to_string())
                }
            });
        let m = self.require(
            &f,
            &path,
            "match",
            "a mapping with one of path, prefix, regex",
        );
        let matched = m.and_then(|m| self.route_match(m, &join(&path, "match")));
        let service = self
            .require(
                &f,
                &path,
                "service",
                "the name of a service under `services`",
            )
            .and_then(|sn| {
                let p = join(&path, "service");
                let s = self.string(sn, &p, "a service name")?;
                match services.iter().position(|k| *k == s) {
                    Some(idx) => Some((idx, s.to_string())),
                    None if all_services.iter().any(|k| k == s) => None,
                    None => {
                        let allowed = if services.is_empty() {
                            "a key of `services` (none are defined)".to_string()
                        } else {
                            format!("one of {}", services.join(", "))
                        };
                        self.error(
                            sn.pos,
                            &p,
                            format!("unknown service {s:?}; allowed: {allowed}"),
                        );
                        None
                    }
                }
            });
        let percent_bp = match f.get("percent") {
            None => Some(0),
            Some(p) => self.percent(p, &join(&path, "percent")),
        };
        let sticky = match f.get("sticky") {
            None => Some(None),
            Some(s) => self.sticky(s, &join(&path, "sticky")).map(Some),
        };
        let cohort = match f.get("cohort") {
            None => Some(None),
            Some(c) => {
                let p = join(&path, "cohort");
                match self.string(c, &p, "a non-empty cohort name") {
                    Some("") => {
                        self.wrong(c, &p, "a non-empty cohort name");
                        None
                    }
                    Some(s) => Some(Some(s.to_string())),
                    None => None,
                }
            }
        };
        let (path_match, methods, headers) = matched?;
        let (service, service_name) = service?;
        Some(RouteConfig {
            name: name?,
            pos: n.pos,
            path: path_match,
            methods,
            headers,
            service,
            percent_bp: percent_bp?,
            sticky: sticky?,
            cohort: cohort?.unwrap_or(service_name),
        })
    }

    #[allow(clippy::type_complexity)]
    fn route_match(
        &mut self,
        n: &Node,
        path: &str,
    ) -> Option<(PathMatch, Option<Vec<Method>>, Vec<HeaderCond>)> {
        let f = self.fields(n, path, MATCH_KEYS)?;
        let kinds: Vec<(&Key, &Node)> = f
            .entries
            .iter()
            .filter(|(k, _)| matches!(k.name.as_str(), "path" | "prefix" | "regex"))
            .copied()
            .collect();
        let pm = if kinds.len() != 1 {
            let found = if kinds.is_empty() {
                "none of them".to_string()
            } else {
                kinds
                    .iter()
                    .map(|(k, _)| k.name.as_str())
                    .collect::<Vec<_>>()
                    .join(" and ")
            };
            self.error(
                n.pos,
                path,
                format!("found {found}; allowed: exactly one of path, prefix, regex"),
            );
            None
        } else {
            let (k, v) = kinds[0];
            let p = join(path, &k.name);
            self.path_match(&k.name, v, &p)
        };
        let methods = match f.get("methods") {
            None => Some(None),
            Some(m) => self.methods(m, &join(path, "methods")).map(Some),
        };
        let headers = match f.get("headers") {
            None => Some(Vec::new()),
            Some(h) => self.header_conds(h, &join(path, "headers")),
        };
        Some((pm?, methods?, headers?))
    }

    fn path_match(&mut self, kind: &str, n: &Node, path: &str) -> Option<PathMatch> {
        match kind {
            "regex" => {
                let s = self.string(n, path, "a regular expression (regex crate syntax)")?;
                // Compiled alone first: anchoring `a)|(b` would otherwise make it valid.
                match Regex::new(s).and_then(|_| Regex::new(&format!("^(?:{s})$"))) {
                    Ok(_) => Some(PathMatch::Regex(s.to_string())),
                    Err(e) => {
                        let why = e
                            .to_string()
                            .lines()
                            .last()
                            .unwrap_or("invalid")
                            .trim()
                            .to_string();
                        self.error(
                            n.pos,
                            path,
                            format!("found {s:?}, an invalid regex ({why}); allowed: a regex in the syntax of the Rust regex crate"),
                        );
                        None
                    }
                }
            }
            "prefix" => {
                let s = self.string(n, path, "a path prefix like /api/orders")?;
                if let Err(why) = check_canonical(s) {
                    self.error(
                        n.pos,
                        path,
                        format!("found {s:?} ({why}); allowed: a canonical path starting with /"),
                    );
                    return None;
                }
                let trimmed = if s.len() > 1 {
                    s.trim_end_matches('/')
                } else {
                    s
                };
                Some(PathMatch::Prefix(trimmed.to_string()))
            }
            _ => {
                let s = self.string(n, path, "a path like /api/orders or /api/orders/{id}")?;
                if s.contains('{') || s.contains('}') {
                    match Template::parse(s) {
                        Ok(t) => Some(PathMatch::Template(t)),
                        Err(why) => {
                            self.error(
                                n.pos,
                                path,
                                format!("found {s:?}, a malformed template ({why}); allowed: segments that are literal or exactly {{name}}, and an optional final {{*name}}"),
                            );
                            None
                        }
                    }
                } else {
                    if let Err(why) = check_canonical(s) {
                        self.error(
                            n.pos,
                            path,
                            format!(
                                "found {s:?} ({why}); allowed: a canonical path starting with /"
                            ),
                        );
                        return None;
                    }
                    Some(PathMatch::Exact(s.to_string()))
                }
            }
        }
    }

    fn methods(&mut self, n: &Node, path: &str) -> Option<Vec<Method>> {
        let Value::Seq(items) = &n.value else {
            self.wrong(n, path, "a list of methods like [GET, HEAD]");
            return None;
        };
        if items.is_empty() {
            self.wrong(
                n,
                path,
                "a non-empty list of methods (omit the key for any method)",
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let Some(s) = self.string(item, &p, "an HTTP method like GET") else {
                ok = false;
                continue;
            };
            let upper = s.to_ascii_uppercase();
            match Method::from_bytes(upper.as_bytes()) {
                Ok(m) if !upper.is_empty() => {
                    if !out.contains(&m) {
                        out.push(m);
                    }
                }
                _ => {
                    self.wrong(item, &p, "an HTTP method token like GET, POST or PURGE");
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn header_conds(&mut self, n: &Node, path: &str) -> Option<Vec<HeaderCond>> {
        let Value::Map(entries) = &n.value else {
            self.wrong(
                n,
                path,
                "a mapping from header name to a value, {regex: ...} or {present: true|false}",
            );
            return None;
        };
        let mut out: Vec<HeaderCond> = Vec::new();
        let mut ok = true;
        for (k, v) in entries {
            let p = join(path, &k.name);
            let Ok(name) = HeaderName::from_bytes(k.name.to_ascii_lowercase().as_bytes()) else {
                self.error(
                    k.pos,
                    &p,
                    format!(
                        "found header name {:?}; allowed: a valid HTTP header name",
                        k.name
                    ),
                );
                ok = false;
                continue;
            };
            if out.iter().any(|c| c.name == name) {
                self.error(
                    k.pos,
                    &p,
                    format!("duplicate header condition {:?} (names are case-insensitive); allowed: each header once", k.name),
                );
                ok = false;
                continue;
            }
            let test = match &v.value {
                Value::Str(s) => match HeaderValue::from_str(s) {
                    Ok(hv) => Some(HeaderTest::Exact(hv)),
                    Err(_) => {
                        self.wrong(v, &p, "a header value of visible ASCII");
                        None
                    }
                },
                Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                    // `x-version: 2` means the text "2"; YAML typed it as a number.
                    let text = match &v.value {
                        Value::Int(i) => i.to_string(),
                        Value::Float(f) => f.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => unreachable!("matched scalar kinds above"),
                    };
                    HeaderValue::from_str(&text).ok().map(HeaderTest::Exact)
                }
                Value::Map(_) => {
                    let Some(f) = self.fields(v, &p, &["regex", "present"]) else {
                        ok = false;
                        continue;
                    };
                    if f.entries.len() != 1 {
                        self.wrong(
                            v,
                            &p,
                            "exactly one of {regex: ...} or {present: true|false}",
                        );
                        None
                    } else {
                        let (ck, cv) = f.entries[0];
                        let cp = join(&p, &ck.name);
                        if ck.name == "regex" {
                            let s = self.string(cv, &cp, "a regular expression");
                            s.and_then(|s| match Regex::new(s).and_then(|_| Regex::new(&format!("^(?:{s})$"))) {
                                Ok(r) => Some(HeaderTest::Regex(r)),
                                Err(e) => {
                                    let why = e.to_string().lines().last().unwrap_or("invalid").trim().to_string();
                                    self.error(cv.pos, &cp, format!("found {s:?}, an invalid regex ({why}); allowed: a regex in the syntax of the Rust regex crate"));
                                    None
                                }
                            })
                        } else {
                            match cv.value {
                                Value::Bool(b) => Some(HeaderTest::Present(b)),
                                _ => {
                                    self.wrong(cv, &cp, "true or false");
                                    None
                                }
                            }
                        }
                    }
                }
                _ => {
                    self.wrong(v, &p, "a value, {regex: ...} or {present: true|false}");
                    None
                }
            };
            match test {
                Some(test) => out.push(HeaderCond { name, test }),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn percent(&mut self, n: &Node, path: &str) -> Option<u32> {
        const ALLOWED: &str = "a number from 0 to 100 with at most two decimals";
        let bp = match n.value {
            Value::Int(i) if (0..=100).contains(&i) => Some(i as u32 * 100),
            Value::Float(f) => percent_to_bp(f),
            _ => None,
        };
        if bp.is_none() {
            self.wrong(n, path, ALLOWED);
        }
        bp
    }

    /// Reports duplicate route names, over every route of the file (also those with other
    /// errors), with each route's index in the file.
    fn check_names(&mut self, items: &[Node]) {
        let mut seen: Vec<(&str, u32)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let Value::Map(entries) = &item.value else {
                continue;
            };
            let Some((_, n)) = entries.iter().find(|(k, _)| k.name == "name") else {
                continue;
            };
            let Value::Str(name) = &n.value else { continue };
            if let Some((_, line)) = seen.iter().find(|(s, _)| s == name) {
                self.error(
                    n.pos,
                    &format!("routes[{i}].name"),
                    format!("duplicate route name {name:?} (first at line {line}); allowed: unique names"),
                );
            } else {
                seen.push((name, n.pos.line));
            }
        }
    }

    /// Warns about routes that can never win: a route whose pattern is shared with an
    /// earlier-tried route that has no conditions, or the very same conditions.
    fn unreachable_warnings(&mut self, cfg: &Config) {
        let order = crate::router::group_order(&cfg.routes);
        for group in order {
            for (pos, &ri) in group.iter().enumerate() {
                let r = &cfg.routes[ri];
                let shadow = group[..pos].iter().map(|&j| &cfg.routes[j]).find(|e| {
                    e.condition_count() == 0
                        || (same_methods(&e.methods, &r.methods)
                            && same_headers(&e.headers, &r.headers))
                });
                if let Some(e) = shadow {
                    let why = if e.condition_count() == 0 {
                        "has no conditions"
                    } else {
                        "has the same conditions"
                    };
                    self.warn(
                        r.pos,
                        &format!("routes[{ri}]"),
                        format!(
                            "route {:?} can never win: route {:?} matches the same {} {:?} and {why}",
                            r.name,
                            e.name,
                            r.path.kind(),
                            r.path.pattern()
                        ),
                    );
                }
            }
        }
    }
}

fn same_methods(a: &Option<Vec<Method>>, b: &Option<Vec<Method>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.len() == b.len() && a.iter().all(|m| b.contains(m)),
        _ => false,
    }
}

fn same_headers(a: &[HeaderCond], b: &[HeaderCond]) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|x| b.iter().any(|y| x.to_string() == y.to_string()))
}

/// Route and service names: `[a-z0-9][a-z0-9_-]*`.
pub fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// A path in a rule must already be in the form requests are canonicalized to.
fn check_canonical(s: &str) -> Result<(), String> {
    if !s.starts_with('/') {
        return Err("does not start with /".into());
    }
    match canon::canonicalize(s) {
        Ok(c) if c == s => Ok(()),
        Ok(c) => Err(format!("not canonical; requests are matched as {c:?}")),
        Err(e) => Err(e.to_string()),
    }
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

    fn parse(s: &str) -> Result<Config, ConfigErrors> {
        Config::parse(s, Path::new("t.yaml"))
    }

    const BASE: &str = "listen: 127.0.0.1:8080\nlegacy: {url: http://127.0.0.1:9001}\nservices:\n  orders: {url: 'http://127.0.0.1:9002/v2/', timeout: 5s}\n";

    #[test]
    fn minimal_file() {
        let c = parse(&format!("{BASE}routes:\n  - name: a\n    match: {{prefix: /api/}}\n    service: orders\n    percent: 12.5\n")).unwrap();
        assert_eq!(c.routes[0].percent_bp, 1250);
        assert_eq!(c.services[0].base_path, "/v2");
        assert!(matches!(&c.routes[0].path, PathMatch::Prefix(p) if p == "/api"));
        assert_eq!(c.routes[0].cohort, "orders");
        assert_eq!(c.legacy.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn all_errors_reported() {
        let text = format!(
            "{BASE}bogus: 1\nroutes:\n  - name: a\n    match: {{regex: '(['}}\n    service: nope\n    percent: 101\n  - name: b\n    match: {{path: '/x/{{id'}}\n    service: orders\n    percent: 1.234\n"
        );
        let e = parse(&text).unwrap_err();
        let all = e.to_string();
        assert!(all.contains("t.yaml:5:1: bogus: unknown key"), "{all}");
        assert!(all.contains("routes[0].match.regex"), "{all}");
        assert!(
            all.contains("routes[0].service: unknown service \"nope\""),
            "{all}"
        );
        assert!(all.contains("routes[0].percent"), "{all}");
        assert!(all.contains("routes[1].match.path"), "{all}");
        assert!(all.contains("routes[1].percent"), "{all}");
        assert_eq!(e.errors.len(), 6, "{all}");
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let e = parse(&format!("{BASE}listen: 127.0.0.1:1\n")).unwrap_err();
        assert!(e.to_string().contains("duplicate key \"listen\""), "{e}");
    }

    #[test]
    fn anchoring_cannot_be_escaped() {
        let e = parse(&format!(
            "{BASE}routes:\n  - name: a\n    match: {{regex: '/i/[0-9]+)|(.*'}}\n    service: orders\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("routes[0].match.regex"), "{e}");
    }

    #[test]
    fn admin_beyond_loopback_needs_a_token() {
        let e = parse(&format!("{BASE}admin: {{listen: 0.0.0.0:9901}}\n")).unwrap_err();
        assert!(e.to_string().contains("admin.listen"), "{e}");
        parse(&format!(
            "{BASE}admin: {{listen: 0.0.0.0:9901, token_env: T}}\n"
        ))
        .unwrap();
        parse(&format!("{BASE}admin: {{listen: '[::1]:9901'}}\n")).unwrap();
    }

    #[test]
    fn percent_precision() {
        for bad in ["1e-9", "0.001", "33.333", "-1", "100.01"] {
            let text = format!(
                "{BASE}routes:\n  - name: a\n    match: {{prefix: /a}}\n    service: orders\n    percent: {bad}\n"
            );
            assert!(parse(&text).is_err(), "{bad}");
        }
        for (good, bp) in [
            ("0.01", 1),
            ("25.12", 2512),
            ("99.99", 9999),
            ("100", 10000),
        ] {
            let text = format!(
                "{BASE}routes:\n  - name: a\n    match: {{prefix: /a}}\n    service: orders\n    percent: {good}\n"
            );
            assert_eq!(parse(&text).unwrap().routes[0].percent_bp, bp, "{good}");
        }
    }

    #[test]
    fn percent_formats() {
        assert_eq!(format_percent(2500), "25");
        assert_eq!(format_percent(2550), "25.5");
        assert_eq!(format_percent(2505), "25.05");
    }

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
