//! The routes file, read in three steps (docs/routes-file.md):
//!
//! 1. **raw**: [`yaml`] parses the text into a tree of nodes that keep their line and column
//!    (duplicate keys kept, so each can be reported);
//! 2. **validated**: [`validate`] walks the tree section by section and builds a [`Config`],
//!    collecting *every* error of the file with file:line:col, the YAML path, what was found
//!    and what is allowed; [`lints`] adds warnings (rules that can never win);
//! 3. **compiled**: [`Config::compile`] builds the routing table the request path reads.
//!
//! It holds no runtime state and never touches the network.

mod lints;
mod percent;
pub mod plan;
pub mod resilience;
pub mod shadow;
pub mod tls;
mod validate;
pub mod yaml;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;

pub use crate::routing::PathParameters;
pub use percent::{format_percent, parse_percent, percent_json, percent_to_bp};
pub use yaml::{Pos, quote};

use crate::routing::{Match, Route, RouteTable, SidePolicy, StickyKey};

/// Default for `timeout` of a service and for `drain_timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for `idle_timeout` of a service (nginx's `keepalive_timeout` for upstreams).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The host of an authority, an IPv6 literal without its brackets (as a socket address and
/// a certificate name want it).
pub fn bare_host(authority: &http::uri::Authority) -> &str {
    let host = authority.host();
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// A file a routes file names, and the hash (xxh3) of what it held when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedFile {
    pub path: PathBuf,
    pub hash: u64,
    /// A plan file of the plans folder (else a certificate, key or CA).
    pub plan: bool,
}

impl NamedFile {
    /// `path` and the hash of `bytes`, read from it.
    pub fn read(path: &Path, bytes: &[u8]) -> NamedFile {
        NamedFile {
            path: path.to_path_buf(),
            hash: xxhash_rust::xxh3::xxh3_64(bytes),
            plan: false,
        }
    }

    /// A plan file: `path` and the hash of `bytes`, read from it.
    pub fn plan(path: &Path, bytes: &[u8]) -> NamedFile {
        NamedFile {
            plan: true,
            ..NamedFile::read(path, bytes)
        }
    }

    /// Whether the file now holds something else (or cannot be read).
    pub fn changed(&self) -> bool {
        std::fs::read(&self.path).map_or(true, |b| xxhash_rust::xxh3::xxh3_64(&b) != self.hash)
    }

    /// What it is, in words.
    fn kind(&self) -> &'static str {
        if self.plan { "plan file" } else { "TLS file" }
    }
}

/// What changed among the files a config was read with, for a reload's trigger and to tell
/// whether a reload is needed: a word on the first change found, and a fingerprint of what
/// the files hold now (the same fingerprint twice is the same change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesChanged {
    pub what: String,
    pub fingerprint: u64,
}

/// A validated routes file.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from (for messages and reloads).
    pub file: PathBuf,
    /// The config's identity, hex: xxh3 of the routes file's bytes and, when it names a
    /// plans folder, of each plan file's name and bytes. The `hash` label of
    /// `strangler_config_info`.
    pub hash: String,
    /// xxh3 of the routes file's bytes alone, hex.
    pub text_hash: String,
    pub listen: SocketAddr,
    pub admin: AdminConfig,
    /// The monolith.
    pub legacy: Service,
    /// The extracted services, in file order.
    pub services: Vec<Service>,
    pub sticky: Option<StickyKey>,
    pub override_header: Option<HeaderName>,
    pub trusted_proxies: Vec<IpNet>,
    pub drain_timeout: Duration,
    /// What the gateway allows its clients (`client`).
    pub client: ClientConfig,
    /// The name this gateway gives itself in `Via` (and recognises there as a loop).
    pub via: String,
    /// Settings of the legacy-vs-new comparison (`compare`).
    pub compare: CompareConfig,
    /// Settings of the carve-out map (`inventory`).
    pub inventory: InventoryConfig,
    /// TLS on the public listener (`tls`), its files loaded and checked.
    pub tls: Option<tls::Tls>,
    /// The files the routes file names (certificate, key, CAs), as they were read: the
    /// config is the same only while they are too.
    pub files: Vec<NamedFile>,
    pub routes: Vec<RouteConfig>,
    /// The plans folder (`plans:`), resolved against the routes file's directory.
    pub plans_dir: Option<PathBuf>,
    /// Its plans, by file name.
    pub plans: Vec<plan::PlanConfig>,
    /// Non-fatal findings (rules that can never win, ...).
    pub warnings: Vec<Diagnostic>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token_env: Option<String>,
    /// Host names the admin API is reached by (beside loopback names and addresses), lower
    /// case: requests for them are answered without the token.
    pub hosts: Vec<String>,
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
    /// How long an unused keep-alive connection to it stays open.
    pub idle_timeout: Duration,
    /// Send the upstream's own authority as `Host` instead of the client's.
    pub host_upstream: bool,
    /// What it speaks (`protocol`).
    pub protocol: Protocol,
    /// TLS to it (an `https://` URL): the client config, trusting `ca` or the system's roots.
    pub tls: Option<tls::Upstream>,
    /// Every instance's `host:port` (`urls`; one for `url`), the first being `authority`.
    pub authorities: Vec<http::uri::Authority>,
    /// How requests are spread over the instances.
    pub balance: resilience::Balance,
    /// How often host names are looked up again (`None`: not set; a lone host name is
    /// then connected to by name, and several instances are looked up every 30 s).
    pub resolve: Option<Duration>,
    /// Active health checks of the instances.
    pub health: Option<resilience::HealthConfig>,
    /// How long a connection may take to open.
    pub connect_timeout: Duration,
    /// The circuit breaker (services only).
    pub breaker: Option<resilience::BreakerConfig>,
    /// Passive outlier detection of the instances.
    pub outlier: Option<resilience::OutlierConfig>,
}

impl Service {
    /// Whether requests to it need the instance set of `proxy::fleet` (several instances,
    /// host names to look up, health checks, a breaker or outlier detection); otherwise
    /// they go straight to its one address.
    pub fn needs_fleet(&self) -> bool {
        self.authorities.len() > 1
            || self.health.is_some()
            || self.breaker.is_some()
            || self.outlier.is_some()
            || self.resolve.is_some()
    }
}

/// The protocol the gateway speaks to a service (`protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1 (the default), in clear or over TLS.
    Http1,
    /// HTTP/2 with prior knowledge, in clear (gRPC services inside a cluster).
    H2c,
    /// HTTP/2 over TLS, chosen by ALPN.
    H2,
}

impl Protocol {
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::H2c | Protocol::H2)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2c => "h2c",
            Protocol::H2 => "h2",
        }
    }
}

/// What the gateway allows its clients: the waits it bounds, and the headers it takes.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// To send a whole request head, and the longest idle time between two requests on a
    /// kept-alive connection.
    pub head_timeout: Duration,
    /// Each wait for more of a request body.
    pub body_timeout: Duration,
    /// Each wait for the client to take more of an answer.
    pub send_timeout: Duration,
    /// Keep request headers whose names hold `_` (nginx's `underscores_in_headers on`);
    /// by default they are dropped.
    pub allow_underscores: bool,
    /// How a path segment's parameters (`;x`) are read.
    pub path_parameters: PathParameters,
    /// Methods accepted beside the registered ones (upper case).
    pub extra_methods: Vec<http::Method>,
    /// Headers removed from requests of peers that are not trusted proxies, beside the
    /// defaults ([`crate::proxy::headers::UNTRUSTED`]).
    pub strip_headers: Vec<http::HeaderName>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            head_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            allow_underscores: false,
            path_parameters: PathParameters::default(),
            extra_methods: Vec::new(),
            strip_headers: Vec::new(),
        }
    }
}

/// The name in `Via` when the routes file gives none.
pub const DEFAULT_VIA: &str = "strangler";

/// One validated route.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    /// Where the route starts in the file.
    pub pos: Pos,
    /// What it matches.
    pub matcher: Match,
    /// Index into `Config::services`.
    pub service: usize,
    /// Share for the new side in basis points (percent × 100): 0..=10000.
    pub percent_bp: u32,
    /// Route-level sticky key; `None` falls back to the file-wide one.
    pub sticky: Option<StickyKey>,
    pub cohort: String,
    /// Whether upgrade requests (WebSocket) are tunnelled; `false` refuses them (400).
    pub upgrades: bool,
    /// Tightens the service's `timeout` for this route.
    pub timeout: Option<Duration>,
    /// Tightens the service's `connect_timeout` for this route.
    pub connect_timeout: Option<Duration>,
    /// Replay to legacy when the new side fails.
    pub fallback: Option<resilience::FallbackConfig>,
    /// Retries after failures the upstream cannot have acted on.
    pub retries: Option<resilience::RetryConfig>,
    /// Copies of legacy-served requests to the new side, answers compared.
    pub shadow: Option<shadow::ShadowConfig>,
}

/// Settings of the carve-out map (the routes file's `inventory` section): which share of the
/// requests it learns from, and at most how many endpoint templates it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryConfig {
    /// The share of requests sampled, in basis points (0: the map is off).
    pub sample_bp: u32,
    /// The most templates kept; beyond them, requests count in `other`.
    pub max_templates: usize,
}

impl InventoryConfig {
    /// Every 10th request on average.
    pub const DEFAULT_SAMPLE_BP: u32 = 1_000;
    pub const DEFAULT_MAX_TEMPLATES: usize = 2_000;
    /// The most `max_templates` may be.
    pub const MAX_TEMPLATES: usize = 100_000;
}

impl Default for InventoryConfig {
    fn default() -> InventoryConfig {
        InventoryConfig {
            sample_bp: Self::DEFAULT_SAMPLE_BP,
            max_templates: Self::DEFAULT_MAX_TEMPLATES,
        }
    }
}

/// Settings of the legacy-vs-new comparison (the routes file's `compare` section).
#[derive(Debug, Clone, PartialEq)]
pub struct CompareConfig {
    /// Default window of `GET /admin/compare`.
    pub window: Duration,
    /// Requests per side in the window below which the verdict is `insufficient_data`.
    pub min_requests: u64,
    /// New's p99 over legacy's above which the verdict is `worse`.
    pub max_p99_ratio: f64,
    /// The margin: new's error rate may exceed legacy's by this much before it is `worse`.
    pub max_error_rate_delta: f64,
    /// The advance boundary's relative error-rate margin: new's error rate is shown to be no
    /// worse than legacy's beyond `(max_error_rate_ratio - 1)` × legacy's rate (or the
    /// absolute floor of `sequential::Advance`, if that is more) before a plan's step
    /// advances.
    pub max_error_rate_ratio: f64,
    /// The advance boundary's absolute error-rate margin (its floor), when it is not
    /// `max_error_rate_delta`: a plan's guard rolls back on any shown excess (a harm margin
    /// of 0) and asks its step to rule out its own margin (`guard.max_error_rate_delta`).
    pub advance_margin: Option<f64>,
    /// 1 - the chance of ever calling `worse` a new side within the bounds, however often
    /// the comparison is looked at.
    pub confidence: f64,
    /// Width of one time slot.
    pub resolution: Duration,
    /// How far back figures are kept: the longest window.
    pub retention: Duration,
}

impl Default for CompareConfig {
    fn default() -> Self {
        CompareConfig {
            window: Duration::from_secs(300),
            min_requests: 50,
            max_p99_ratio: 1.5,
            max_error_rate_delta: 0.0,
            max_error_rate_ratio: 1.5,
            advance_margin: None,
            confidence: 0.99,
            resolution: Duration::from_secs(10),
            retention: Duration::from_secs(900),
        }
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
        // A finding about the whole file (it cannot be read, say) has no position.
        if self.pos.line == 0 {
            return write!(f, "{}: {}", self.file, self.message);
        }
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

impl ConfigErrors {
    /// A single error about the whole file (it cannot be read, say).
    pub fn whole_file(file: &Path, message: impl Into<String>) -> ConfigErrors {
        ConfigErrors {
            errors: vec![Diagnostic {
                file: file.display().to_string(),
                pos: Pos::default(),
                path: String::new(),
                message: message.into(),
            }],
        }
    }
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
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::whole_file(path, format!("cannot read the routes file: {e}"))
        })?;
        Config::parse(&text, path)
    }

    /// Reads and validates a routes file for `strangler check` (and `explain`), which may run where the
    /// files it names (TLS certificates, keys, CAs) are not: those that are absent are
    /// reported as warnings, not checked; those that are there are checked as the gateway
    /// would. The result is for reporting, never for serving.
    pub fn load_for_check(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::whole_file(path, format!("cannot read the routes file: {e}"))
        })?;
        Config::parse_with(&text, path, true)
    }

    /// Validates a plan file alone (`strangler check` of a plan): everything but whether
    /// its route exists, which only its routes file can tell.
    pub fn check_plan(path: &Path) -> Result<plan::PlanConfig, ConfigErrors> {
        let mut v = validate::Validator::new(path);
        match v.plan_file(path, None) {
            Some((p, _)) if v.errors.is_empty() => Ok(p),
            _ => Err(ConfigErrors { errors: v.errors }),
        }
    }

    /// Whether a YAML text reads as a plan file rather than a routes file: a mapping with
    /// `steps` and no `listen`.
    pub fn is_plan_text(text: &str) -> bool {
        match yaml::parse(text).map(|n| n.value) {
            Ok(yaml::Value::Map(entries)) => {
                let has = |k: &str| entries.iter().any(|(key, _)| key.name == k);
                has("steps") && !has("listen")
            }
            _ => false,
        }
    }

    /// Validates the text of a routes file; `path` names it in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        Config::parse_with(text, path, false)
    }

    fn parse_with(text: &str, path: &Path, absent_files_ok: bool) -> Result<Config, ConfigErrors> {
        let root = match yaml::parse(text) {
            Ok(root) => root,
            Err(e) => {
                let mut message = format!("invalid YAML: {}", e.message);
                if let Some(hint) = yaml::flow_brace_hint(text, e.pos) {
                    message.push_str("; ");
                    message.push_str(&hint);
                }
                return Err(ConfigErrors {
                    errors: vec![Diagnostic {
                        file: path.display().to_string(),
                        pos: e.pos,
                        path: String::new(),
                        message,
                    }],
                });
            }
        };
        let hash = Config::hash_of(text);
        let mut v = validate::Validator::new(path);
        v.source = Some(text.to_string());
        v.absent_files_ok = absent_files_ok;
        let cfg = v.root(&root, path, hash);
        if v.errors.is_empty() {
            let mut cfg = cfg.expect("a file without errors yields a config");
            cfg.hash = cfg.identity();
            cfg.warnings = v.absent;
            cfg.warnings.extend(lints::run(&cfg));
            Ok(cfg)
        } else {
            // The routes file's errors first, then each plan file's, each in file order.
            let own = path.display().to_string();
            v.errors.sort_by(|a, b| {
                (a.file != own, &a.file, a.pos.line, a.pos.col).cmp(&(
                    b.file != own,
                    &b.file,
                    b.pos.line,
                    b.pos.col,
                ))
            });
            Err(ConfigErrors { errors: v.errors })
        }
    }

    /// The hash of a routes file's text (xxh3, hex): the `hash` label of
    /// `strangler_config_info`.
    pub fn hash_of(text: &str) -> String {
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
    }

    /// The config's identity (see [`Config::hash`]): the routes file's hash, with its plan
    /// files' names and contents when it has any.
    fn identity(&self) -> String {
        let plans: Vec<&NamedFile> = self.files.iter().filter(|f| f.plan).collect();
        if self.plans_dir.is_none() {
            return self.text_hash.clone();
        }
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(self.text_hash.as_bytes());
        for f in plans {
            h.update(f.path.to_string_lossy().as_bytes());
            h.update(&f.hash.to_le_bytes());
        }
        format!("{:016x}", h.digest())
    }

    /// What changed among the files this config was read with (certificates, keys, CAs,
    /// plan files, and which plan files the plans folder holds); `None` when nothing did.
    pub fn files_changed(&self) -> Option<FilesChanged> {
        let mut fingerprint = xxhash_rust::xxh3::Xxh3::new();
        let mut what = None;
        for f in &self.files {
            let now = std::fs::read(&f.path).map(|b| xxhash_rust::xxh3::xxh3_64(&b));
            fingerprint.update(&now.as_ref().map_or(0, |h| *h).to_le_bytes());
            if what.is_none() && now.as_ref().ok() != Some(&f.hash) {
                what = Some(match now {
                    Ok(_) => format!("{} changed: {}", f.kind(), f.path.display()),
                    Err(_) => format!("{} removed: {}", f.kind(), f.path.display()),
                });
            }
        }
        if let Some(dir) = &self.plans_dir
            && let Ok(listed) = validate::plan_files(dir)
        {
            for p in &listed {
                fingerprint.update(p.to_string_lossy().as_bytes());
                if what.is_none() && !self.files.iter().any(|f| f.plan && &f.path == p) {
                    what = Some(format!("plan file added: {}", p.display()));
                }
            }
        }
        what.map(|what| FilesChanged {
            what,
            fingerprint: fingerprint.digest(),
        })
    }

    /// Reads a routes file, unless it is the one `current` was read from, unchanged, and
    /// none of the files `current` was read with changed (then `None`, without validating
    /// it again).
    pub fn load_if_changed(path: &Path, current: &Config) -> Result<Option<Config>, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::whole_file(path, format!("cannot read the routes file: {e}"))
        })?;
        if Config::hash_of(&text) == current.text_hash && current.files_changed().is_none() {
            return Ok(None);
        }
        Config::parse(&text, path).map(Some)
    }

    /// The admin token: the value of the environment variable `admin.token_env` names, when
    /// it holds one.
    pub fn admin_token(&self) -> Option<String> {
        let var = self.admin.token_env.as_deref()?;
        let t = std::env::var(var).unwrap_or_default().trim().to_string();
        (!t.is_empty()).then_some(t)
    }

    /// The `i`-th upstream: 0 is legacy, `1 + k` is `services[k]`.
    pub fn upstream(&self, i: usize) -> &Service {
        if i == 0 {
            &self.legacy
        } else {
            &self.services[i - 1]
        }
    }

    /// Compiles the routing table. Fails only where the router cannot be built (regex
    /// size limits).
    pub fn compile(&self) -> Result<RouteTable, String> {
        let routes = self
            .routes
            .iter()
            .map(|r| Route {
                name: r.name.as_str().into(),
                policy: SidePolicy {
                    percent_bp: r.percent_bp,
                    sticky: r.sticky.clone().or_else(|| self.sticky.clone()),
                    cohort: r.cohort.as_str().into(),
                },
                service: r.service,
            })
            .collect();
        RouteTable::new(
            self.routes.iter().map(|r| &r.matcher),
            routes,
            self.override_header.clone(),
            self.trusted_proxies.clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigErrors> {
        Config::parse(s, Path::new("t.yaml"))
    }

    const BASE: &str = "listen: 127.0.0.1:8080\nlegacy: {url: http://127.0.0.1:9001}\nservices:\n  orders: {url: 'http://127.0.0.1:9002/v2/', timeout: 5s}\n";

    /// A file whose bytes are those of the config in force is not parsed again: shown with
    /// bytes that would not even parse, given as the hash in force. Any other bytes are.
    #[test]
    fn an_unchanged_file_is_not_validated_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.yaml");
        let text = "listen: [unclosed\n";
        std::fs::write(&path, text).unwrap();
        let valid = format!("{BASE}routes: []\n");
        let mut current = parse(&valid).unwrap();
        current.text_hash = Config::hash_of(text);
        assert!(matches!(Config::load_if_changed(&path, &current), Ok(None)));
        current.text_hash = Config::hash_of("other");
        assert!(Config::load_if_changed(&path, &current).is_err());
        std::fs::write(&path, &valid).unwrap();
        current.text_hash = Config::hash_of(text);
        assert!(matches!(
            Config::load_if_changed(&path, &current),
            Ok(Some(_))
        ));
    }

    #[test]
    fn minimal_file() {
        let c = parse(&format!("{BASE}routes:\n  - name: a\n    match: {{prefix: /api/}}\n    service: orders\n    percent: 12.5\n")).unwrap();
        assert_eq!(c.routes[0].percent_bp, 1250);
        assert_eq!(c.services[0].base_path, "/v2");
        assert!(
            matches!(&c.routes[0].matcher.path, crate::routing::PathMatch::Prefix(p) if p == "/api")
        );
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
}
