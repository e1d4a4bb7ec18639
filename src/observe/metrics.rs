//! Prometheus metrics (docs/metrics.md): names, label sets, and the per-route handles.
//!
//! Every metric name is a constant here. Label values are bounded: route names from the file
//! (or `default`), two sides, ten method values, status codes, four error kinds. Handles for a
//! route and side are resolved when the route table is compiled; the request path only
//! increments. The one label known only per response, the status code, goes through a small
//! copy-on-write cache per route and side, so the registry's hashing and locking are paid once
//! per distinct (method, code), not per request.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::routing::{DEFAULT_ROUTE, METHODS, Side};

pub const REQUESTS_TOTAL: &str = "strangler_requests_total";
pub const PLAN_STEP: &str = "strangler_plan_step";
pub const PLAN_STATE: &str = "strangler_plan_state";
pub const PLAN_UNPUBLISHED: &str = "strangler_plan_unpublished";
pub const PLAN_WRITE_FAILURES_TOTAL: &str = "strangler_plan_write_failures_total";
pub const PLAN_NOTIFY_FAILURES_TOTAL: &str = "strangler_plan_notify_failures_total";
pub const ROUTE_OVERRIDE: &str = "strangler_route_override";
pub const REQUEST_DURATION: &str = "strangler_request_duration_seconds";
pub const UPSTREAM_ERRORS_TOTAL: &str = "strangler_upstream_errors_total";
pub const CLIENT_ERRORS_TOTAL: &str = "strangler_client_errors_total";
pub const ROUTE_PERCENT: &str = "strangler_route_percent";
pub const CONFIG_RELOADS_TOTAL: &str = "strangler_config_reloads_total";
pub const CONFIG_INFO: &str = "strangler_config_info";
pub const LOG_LINES_DROPPED_TOTAL: &str = "strangler_log_lines_dropped_total";
pub const REQUESTS_CUT_TOTAL: &str = "strangler_requests_cut_total";
pub const GRPC_RESPONSES_TOTAL: &str = "strangler_grpc_responses_total";
pub const FALLBACKS_TOTAL: &str = "strangler_fallbacks_total";
pub const RETRIES_TOTAL: &str = "strangler_retries_total";
pub const SHADOW_REQUESTS_TOTAL: &str = "strangler_shadow_requests_total";
pub const SHADOW_DIFFERENCES_TOTAL: &str = "strangler_shadow_differences_total";
pub const SHADOW_DURATION: &str = "strangler_shadow_duration_seconds";

#[cfg(test)]
mod grpc_tests {
    #[test]
    fn the_fault_regex_names_the_fault_codes() {
        let named: Vec<&str> = (0..17)
            .filter(|c| super::grpc_server_fault(*c))
            .map(|c| super::GRPC_CODES[c as usize])
            .collect();
        assert_eq!(named.join("|"), super::GRPC_SERVER_FAULTS);
    }
}

/// The names of gRPC's status codes, by code, then OTHER for any beyond them (the label
/// stays bounded whatever an upstream sends).
pub const GRPC_CODES: [&str; 18] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
    "OTHER",
];

/// Whether a gRPC status is the server's fault, for the comparison and guards: UNKNOWN,
/// DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE and DATA_LOSS, the codes gRPC's own status
/// mapping (and Google's AIP-194 retry guidance) attribute to the server or to its
/// unavailability, as HTTP's 5xx are. The others report the caller's request (NOT_FOUND,
/// INVALID_ARGUMENT, PERMISSION_DENIED, ...) or its choice (CANCELLED), as HTTP's 4xx do.
pub fn grpc_server_fault(code: u32) -> bool {
    matches!(code, 2 | 4 | 13 | 14 | 15)
}

/// The names of the server-fault codes, as a PromQL regex over `grpc_code`.
pub const GRPC_SERVER_FAULTS: &str = "UNKNOWN|DEADLINE_EXCEEDED|INTERNAL|UNAVAILABLE|DATA_LOSS";
pub const TLS_HANDSHAKE_ERRORS_TOTAL: &str = "strangler_tls_handshake_errors_total";

/// Buckets of `strangler_request_duration_seconds`, in seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How an upstream exchange failed: the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Reset,
    Protocol,
}

impl UpstreamErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
            UpstreamErrorKind::Protocol => "protocol",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// How a client failed its side of an exchange: the `kind` label of
/// `strangler_client_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientErrorKind {
    /// It left before the response head (recorded as 499).
    Closed,
    /// Its request body broke off.
    Body,
    /// It stopped sending its request body (408).
    BodyTimeout,
    /// It stopped taking the answer.
    SendTimeout,
    /// It stopped midway through a request head (408).
    HeadTimeout,
}

impl ClientErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientErrorKind::Closed => "closed",
            ClientErrorKind::Body => "body",
            ClientErrorKind::BodyTimeout => "body_timeout",
            ClientErrorKind::SendTimeout => "send_timeout",
            ClientErrorKind::HeadTimeout => "head_timeout",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// The process-wide registry and metric families.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_errors: IntCounterVec,
    client_errors: IntCounterVec,
    route_percent: GaugeVec,
    config_reloads: IntCounterVec,
    config_info: IntGaugeVec,
    /// Routes with a `strangler_route_percent` series.
    percent_routes: std::sync::Mutex<HashSet<String>>,
    /// Lines stdout could not take, as last exported.
    log_dropped: IntCounter,
    log_dropped_seen: std::sync::Mutex<u64>,
    /// Requests cut by the end of a drain.
    cut: IntCounter,
    /// TLS handshakes on the public listener that failed or timed out.
    tls_errors: IntCounter,
    grpc: IntCounterVec,
    plan_step: IntGaugeVec,
    plan_state: IntGaugeVec,
    plan_unpublished: IntGaugeVec,
    plan_write_failures: IntCounterVec,
    plan_notify_failures: IntCounterVec,
    route_override: IntGaugeVec,
    fallbacks: IntCounterVec,
    retries: IntCounterVec,
    shadow: IntCounterVec,
    shadow_differences: IntCounterVec,
    shadow_duration: HistogramVec,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                REQUESTS_TOTAL,
                "Requests answered, by route, side, method and status code sent",
            ),
            &["route", "side", "method", "code"],
        )
        .expect("static metric definition is valid");
        let duration = HistogramVec::new(
            HistogramOpts::new(REQUEST_DURATION, "Time from request start to response end")
                .buckets(DURATION_BUCKETS.to_vec()),
            &["route", "side"],
        )
        .expect("static metric definition is valid");
        let upstream_errors = IntCounterVec::new(
            Opts::new(UPSTREAM_ERRORS_TOTAL, "Failed upstream exchanges, by kind"),
            &["route", "side", "kind"],
        )
        .expect("static metric definition is valid");
        let client_errors = IntCounterVec::new(
            Opts::new(
                CLIENT_ERRORS_TOTAL,
                "Exchanges a client failed (left, stopped sending or reading), by kind",
            ),
            &["route", "side", "kind"],
        )
        .expect("static metric definition is valid");
        let route_percent = GaugeVec::new(
            Opts::new(
                ROUTE_PERCENT,
                "Share of a route's requests sent to the new side, in percent",
            ),
            &["route"],
        )
        .expect("static metric definition is valid");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                CONFIG_RELOADS_TOTAL,
                "Reloads of the routes file, by result",
            ),
            &["result"],
        )
        .expect("static metric definition is valid");
        let config_info = IntGaugeVec::new(
            Opts::new(
                CONFIG_INFO,
                "1, labelled with the hash of the routes file in force",
            ),
            &["hash"],
        )
        .expect("static metric definition is valid");
        let log_dropped = IntCounter::new(
            LOG_LINES_DROPPED_TOTAL,
            "Log and access-log lines dropped because stdout did not keep up",
        )
        .expect("static metric definition is valid");
        let cut = IntCounter::new(
            REQUESTS_CUT_TOTAL,
            "Requests cut because a drain ran out of time (or was ended by a second signal)",
        )
        .expect("static metric definition is valid");
        let tls_errors = IntCounter::new(
            TLS_HANDSHAKE_ERRORS_TOTAL,
            "TLS handshakes on the public listener that failed or did not finish within client.head_timeout",
        )
        .expect("static metric definition is valid");
        let grpc = IntCounterVec::new(
            Opts::new(
                GRPC_RESPONSES_TOTAL,
                "gRPC answers, by route, side and grpc-status (its name; OTHER beyond the 17 codes)",
            ),
            &["route", "side", "grpc_code"],
        )
        .expect("static metric definition is valid");
        let plan_step = IntGaugeVec::new(
            Opts::new(
                PLAN_STEP,
                "The step a migration plan has in force, counted from 1 (0 before it starts)",
            ),
            &["plan"],
        )
        .expect("static metric definition is valid");
        let plan_state = IntGaugeVec::new(
            Opts::new(
                PLAN_STATE,
                "1 for a migration plan's current state, 0 for the others",
            ),
            &["plan", "state"],
        )
        .expect("static metric definition is valid");
        let plan_unpublished = IntGaugeVec::new(
            Opts::new(
                PLAN_UNPUBLISHED,
                "1 while a plan's rollback is in force but not yet in the routes file (plan run: not yet published); retried until it is",
            ),
            &["plan"],
        )
        .expect("static metric definition is valid");
        let plan_write_failures = IntCounterVec::new(
            Opts::new(
                PLAN_WRITE_FAILURES_TOTAL,
                "Writes a migration plan could not make, by file (routes: a percentage, or its publication by plan run; progress: its progress file)",
            ),
            &["plan", "file"],
        )
        .expect("static metric definition is valid");
        let plan_notify_failures = IntCounterVec::new(
            Opts::new(
                PLAN_NOTIFY_FAILURES_TOTAL,
                "A plan's on_transition commands that failed or timed out",
            ),
            &["plan"],
        )
        .expect("static metric definition is valid");
        let route_override = IntGaugeVec::new(
            Opts::new(
                ROUTE_OVERRIDE,
                "1 while a route's percentage in force is held in memory and the routes file says another (a rollback the file has not caught up with)",
            ),
            &["route"],
        )
        .expect("static metric definition is valid");
        let fallbacks = IntCounterVec::new(
            Opts::new(
                FALLBACKS_TOTAL,
                "Requests the new side failed and legacy answered instead, by the failure (reason)",
            ),
            &["route", "reason"],
        )
        .expect("static metric definition is valid");
        let retries = IntCounterVec::new(
            Opts::new(
                RETRIES_TOTAL,
                "Extra attempts after a connect failure or a reset, by route and side",
            ),
            &["route", "side"],
        )
        .expect("static metric definition is valid");
        let shadow = IntCounterVec::new(
            Opts::new(
                SHADOW_REQUESTS_TOTAL,
                "Copies of legacy-served requests to the new side, by the comparison's result",
            ),
            &["route", "result"],
        )
        .expect("static metric definition is valid");
        let shadow_differences = IntCounterVec::new(
            Opts::new(
                SHADOW_DIFFERENCES_TOTAL,
                "Shadow copies compared that had a difference of this kind (status, headers, body; a copy may count in several)",
            ),
            &["route", "kind"],
        )
        .expect("static metric definition is valid");
        let shadow_duration = HistogramVec::new(
            HistogramOpts::new(
                SHADOW_DURATION,
                "Compared shadow copies: legacy's time for the request and the new side's for its copy",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["route", "side"],
        )
        .expect("static metric definition is valid");
        for c in [
            Box::new(log_dropped.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(shadow.clone()),
            Box::new(shadow_differences.clone()),
            Box::new(shadow_duration.clone()),
            Box::new(fallbacks.clone()),
            Box::new(retries.clone()),
            Box::new(plan_step.clone()),
            Box::new(plan_state.clone()),
            Box::new(plan_unpublished.clone()),
            Box::new(plan_write_failures.clone()),
            Box::new(plan_notify_failures.clone()),
            Box::new(route_override.clone()),
            Box::new(grpc.clone()),
            Box::new(cut.clone()),
            Box::new(tls_errors.clone()),
            Box::new(requests.clone()),
            Box::new(duration.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(client_errors.clone()),
            Box::new(route_percent.clone()),
            Box::new(config_reloads.clone()),
            Box::new(config_info.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        // Both results exist from the start, so a rate() over them is defined.
        config_reloads.with_label_values(&["ok"]);
        config_reloads.with_label_values(&["error"]);
        Arc::new(Metrics {
            registry,
            requests,
            duration,
            upstream_errors,
            client_errors,
            route_percent,
            config_reloads,
            config_info,
            percent_routes: Default::default(),
            log_dropped,
            log_dropped_seen: Default::default(),
            cut,
            tls_errors,
            grpc,
            plan_step,
            plan_state,
            plan_unpublished,
            plan_write_failures,
            plan_notify_failures,
            route_override,
            fallbacks,
            retries,
            shadow,
            shadow_differences,
            shadow_duration,
        })
    }

    /// A request the new side failed (`reason`) and legacy answered.
    pub fn fallback(&self, route: &str, reason: &str) {
        self.fallbacks.with_label_values(&[route, reason]).inc();
    }

    /// An extra attempt.
    pub fn retry(&self, route: &str, side: Side) {
        self.retries
            .with_label_values(&[route, side.as_str()])
            .inc();
    }

    /// Adds a collector of metrics kept elsewhere (the services' instances and breakers).
    pub fn register(&self, c: Box<dyn prometheus::core::Collector>) {
        self.registry.register(c).expect("metric names are unique");
    }

    /// A plan's step and state (one of `states`, each exported 1 or 0).
    /// A plan's step (from 1; 0 before it starts), state, and whether its last change is
    /// still unpublished.
    pub fn set_plan(
        &self,
        plan: &str,
        step: usize,
        state: &str,
        states: &[&str],
        unpublished: bool,
    ) {
        self.plan_step
            .with_label_values(&[plan])
            .set(i64::try_from(step).unwrap_or(i64::MAX));
        for s in states {
            self.plan_state
                .with_label_values(&[plan, s])
                .set(i64::from(*s == state));
        }
        self.plan_unpublished
            .with_label_values(&[plan])
            .set(i64::from(unpublished));
        // Both files exist from the start, so that an increase() over them is defined.
        for file in ["routes", "progress"] {
            self.plan_write_failures.with_label_values(&[plan, file]);
        }
    }

    /// Forgets a plan that is no longer in the plans folder.
    pub fn remove_plan(&self, plan: &str, states: &[&str]) {
        let _ = self.plan_step.remove_label_values(&[plan]);
        let _ = self.plan_unpublished.remove_label_values(&[plan]);
        for s in states {
            let _ = self.plan_state.remove_label_values(&[plan, s]);
        }
    }

    /// A write a plan could not make (`file`: `routes` or `progress`).
    pub fn count_plan_write_failure(&self, plan: &str, file: &str) {
        self.plan_write_failures
            .with_label_values(&[plan, file])
            .inc();
    }

    /// The count of a plan's `on_transition` commands that failed.
    pub fn plan_notify_failures(&self, plan: &str) -> prometheus::IntCounter {
        self.plan_notify_failures.with_label_values(&[plan])
    }

    /// Whether a route's percentage in force is held in memory (see `proxy::overrides`).
    pub fn set_route_held(&self, route: &str, held: bool) {
        self.route_override
            .with_label_values(&[route])
            .set(i64::from(held));
    }

    /// Handles for one route and side.
    pub fn side(self: &Arc<Self>, route: &str, side: Side) -> SideMetrics {
        SideMetrics {
            metrics: self.clone(),
            route: route.into(),
            side,
            duration: OnceLock::new(),
            codes: ArcSwap::from_pointee(Vec::new()),
            errors: Default::default(),
            client_errors: Default::default(),
            grpc: Default::default(),
            shadow: Default::default(),
        }
    }

    /// Publishes the percentage in force for a route.
    pub fn set_route_percent(&self, route: &str, percent: f64) {
        self.route_percent.with_label_values(&[route]).set(percent);
        let mut published = self
            .percent_routes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !published.contains(route) {
            published.insert(route.to_string());
        }
    }

    /// Drops every series of the routes that are no longer in the table (removed or renamed
    /// by a reload): their percentages, and their counters and histograms, so that a gateway
    /// whose routes come and go keeps only what its routes in force have (a route added back
    /// starts its counters from zero, which Prometheus reads as a counter reset).
    pub fn retain_routes(&self, routes: &HashSet<&str>) {
        let mut published = self
            .percent_routes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        published.retain(|r| {
            let keep = routes.contains(r.as_str());
            if !keep {
                let _ = self.route_percent.remove_label_values(&[r]);
                let _ = self.route_override.remove_label_values(&[r]);
            }
            keep
        });
        let gone = |route: &str| route != DEFAULT_ROUTE && !routes.contains(route);
        drop_routes(&self.requests, gone);
        drop_routes(&self.duration, gone);
        drop_routes(&self.upstream_errors, gone);
        drop_routes(&self.client_errors, gone);
        drop_routes(&self.grpc, gone);
        drop_routes(&self.fallbacks, gone);
        drop_routes(&self.retries, gone);
        drop_routes(&self.shadow, gone);
        drop_routes(&self.shadow_differences, gone);
        drop_routes(&self.shadow_duration, gone);
    }

    /// Every request counted so far in `strangler_requests_total`, by the side that served
    /// it: `[legacy, new]` (routes a reload removed no longer count).
    pub fn requests_by_side(&self) -> [u64; 2] {
        use prometheus::core::Collector as _;
        let mut sums = [0u64; 2];
        for family in self.requests.collect() {
            for m in family.get_metric() {
                let side = m.get_label().iter().find(|l| l.name() == "side");
                let i = usize::from(side.is_some_and(|l| l.value() == "new"));
                sums[i] += m.get_counter().get_value() as u64;
            }
        }
        sums
    }

    /// Marks `hash` as the config in force (and no other).
    pub fn set_config_hash(&self, hash: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[hash]).set(1);
    }

    pub fn count_reload(&self, ok: bool) {
        self.config_reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// A TLS handshake on the public listener failed.
    pub fn tls_handshake_failed(&self) {
        self.tls_errors.inc();
    }

    /// Requests cut by the end of a drain, so far.
    pub fn cut_total(&self) -> u64 {
        self.cut.get()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        {
            let now = super::stdout::stdout().dropped_total();
            let mut seen = self
                .log_dropped_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            self.log_dropped.inc_by(now.saturating_sub(*seen));
            *seen = now.max(*seen);
        }
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding into a Vec cannot fail");
        out
    }
}

/// Removes the series of `vec` whose `route` label names a route that is `gone`.
fn drop_routes<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    gone: impl Fn(&str) -> bool,
) {
    use prometheus::core::Collector as _;
    for family in vec.collect() {
        for m in family.get_metric() {
            let labels: HashMap<&str, &str> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if labels.get("route").is_some_and(|r| gone(r)) {
                let _ = vec.remove(&labels);
            }
        }
    }
}

/// The metric handles of one route and side.
pub struct SideMetrics {
    metrics: Arc<Metrics>,
    route: Box<str>,
    side: Side,
    /// Resolved on first use, so routes that see no traffic export no empty series.
    duration: OnceLock<Histogram>,
    /// `(method index × 1000 + code, counter)`, grown copy-on-write as new pairs appear.
    codes: ArcSwap<Vec<(u32, IntCounter)>>,
    errors: [OnceLock<IntCounter>; 4],
    client_errors: [OnceLock<IntCounter>; 5],
    /// By gRPC status code, the last for OTHER.
    grpc: [OnceLock<IntCounter>; 18],
    /// By shadow outcome (`observe::shadow::Outcome` order).
    shadow: [OnceLock<IntCounter>; 7],
}

impl SideMetrics {
    /// Counts an extra attempt on this route and side.
    pub fn retried(&self) {
        self.metrics.retry(&self.route, self.side);
    }

    /// Counts a shadow copy of this route's requests, by its result.
    pub fn shadowed(&self, outcome: super::shadow::Outcome) {
        self.shadow[outcome as usize]
            .get_or_init(|| {
                self.metrics
                    .shadow
                    .with_label_values(&[&*self.route, outcome.as_str()])
            })
            .inc();
    }

    /// Counts a compared copy of this route's requests with a difference of `kind`.
    pub fn shadow_difference(&self, kind: super::shadow::Kind) {
        self.metrics
            .shadow_differences
            .with_label_values(&[&*self.route, kind.as_str()])
            .inc();
    }

    /// Both sides' times for a compared copy of this route's requests.
    pub fn shadow_latency(&self, legacy: f64, new: f64) {
        for (side, secs) in [("legacy", legacy), ("new", new)] {
            self.metrics
                .shadow_duration
                .with_label_values(&[&*self.route, side])
                .observe(secs);
        }
    }

    /// Counts a request of this route the new side failed (`reason`) and legacy answered.
    pub fn fell_back(&self, reason: &str) {
        self.metrics.fallback(&self.route, reason);
    }

    /// Counts one answered request.
    #[inline]
    pub fn record(&self, method: usize, code: u16, seconds: f64) {
        self.duration
            .get_or_init(|| {
                self.metrics
                    .duration
                    .with_label_values(&[&*self.route, self.side.as_str()])
            })
            .observe(seconds);
        let key = method as u32 * 1000 + u32::from(code);
        if let Some((_, c)) = self.codes.load().iter().find(|(k, _)| *k == key) {
            c.inc();
            return;
        }
        self.slow_count(method, code, key);
    }

    #[cold]
    fn slow_count(&self, method: usize, code: u16, key: u32) {
        let counter = self.metrics.requests.with_label_values(&[
            &*self.route,
            self.side.as_str(),
            METHODS[method],
            &code.to_string(),
        ]);
        counter.inc();
        self.codes.rcu(|v| {
            let mut v = Vec::clone(v);
            if !v.iter().any(|(k, _)| *k == key) {
                v.push((key, counter.clone()));
            }
            v
        });
    }

    /// A request of this route and side cut by the end of a drain.
    pub fn cut(&self) {
        self.metrics.cut.inc();
    }

    /// Counts one failed upstream exchange.
    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.errors[kind.index()]
            .get_or_init(|| {
                self.metrics.upstream_errors.with_label_values(&[
                    &*self.route,
                    self.side.as_str(),
                    kind.as_str(),
                ])
            })
            .inc();
    }

    /// Counts one gRPC answer by its `grpc-status`.
    pub fn grpc(&self, code: u32) {
        let i = (code as usize).min(GRPC_CODES.len() - 1);
        self.grpc[i]
            .get_or_init(|| {
                self.metrics.grpc.with_label_values(&[
                    &*self.route,
                    self.side.as_str(),
                    GRPC_CODES[i],
                ])
            })
            .inc();
    }

    /// Counts one exchange the client failed.
    pub fn client_error(&self, kind: ClientErrorKind) {
        self.client_errors[kind.index()]
            .get_or_init(|| {
                self.metrics.client_errors.with_label_values(&[
                    &*self.route,
                    self.side.as_str(),
                    kind.as_str(),
                ])
            })
            .inc();
    }
}
