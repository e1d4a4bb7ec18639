//! The admin API (docs/admin-api.md), on axum: metrics, health, readiness, the live route
//! table, the legacy-vs-new comparison, the dashboard, reloads and percent shifts.
//!
//! Reads need nothing. A `POST` from another origin is refused (403), and when a token is
//! configured every `POST` needs `Authorization: Bearer <token>` (compared in constant
//! time; 401 otherwise). Every answer the API makes itself is JSON, its errors included
//! (`{"error": ...}` and details): 404, 405, 413, 415 and the rejections of its extractors.
//! It changes the request path's state only through the reloader.

mod json;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::{self, HeaderValue};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq as _;
use tower::util::MapResponse;

use super::plan::gateway::GatewayPlans;
use super::plan::runner::RunnerEnv;
use super::plan::{Environment, Op, Plans};
use super::reload::Reloader;
use super::shift::{ShiftError, shift_file};
use crate::config::{percent_json, percent_to_bp};
use crate::observe::window::Span;
use crate::observe::{Metrics, Registry, judge};
use crate::proxy::Gateway;
use crate::routing::Side;
use json::{AdminJson, AdminPath, AdminQuery, json};

/// What the admin API reads and drives.
pub struct AdminState {
    pub gateway: Arc<Gateway>,
    pub metrics: Arc<Metrics>,
    pub reloader: Arc<Reloader>,
    /// The rolling legacy-vs-new figures.
    pub windows: Arc<Registry>,
    /// True once the config is loaded and the public listener is up; false while draining.
    pub ready: Arc<AtomicBool>,
    /// The admin listener's port: without a token, only requests for `localhost` or a
    /// loopback address on this port are answered.
    pub port: u16,
    /// The migration plans.
    pub plans: Arc<GatewayPlans>,
}

type Shared = Arc<AdminState>;

use json::MAX_BODY;

/// The dashboard: one self-contained page (no external assets) that polls the admin API.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The admin API as a service: its routes, with 405s given their JSON body.
pub type AdminService = MapResponse<Router, fn(Response) -> Response>;

/// The admin API's routes.
pub fn router(state: Shared) -> AdminService {
    let access = {
        let (gateway, named) = (state.gateway.clone(), state.gateway.clone());
        let hosts = state.gateway.clone();
        Access {
            token: Arc::new(move || gateway.table.load().config.admin_token()),
            port: state.port,
            identity: Arc::new(move || named.table.load().config.hash.clone()),
            known_host: Arc::new(move |name| {
                hosts
                    .table
                    .load()
                    .config
                    .admin
                    .hosts
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(name))
            }),
        }
    };
    let changes = Router::new()
        .route("/admin/reload", post(reload))
        .route("/admin/routes/{name}/percent", post(shift))
        .route("/admin/shadow/{route}/reset", post(shadow_reset))
        .route_layer(middleware::from_fn_with_state(access.clone(), authorize));
    let routes = Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/admin/routes", get(routes))
        .route("/admin/compare", get(compare))
        .route("/admin/shadow/{route}", get(shadow))
        .route("/admin/services", get(services))
        .route("/admin/inventory", get(inventory))
        .merge(changes)
        .merge(plan_routes(state.plans.clone(), &access))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(access, guard_host))
        .with_state(state);
    // Around the whole router: axum adds `Allow` to a 405 outside of any route's layers.
    MapResponse::new(routes, method_not_allowed as fn(Response) -> Response)
}

/// The admin API of `strangler plan run --admin`: the plan's status and operations, its
/// metrics, and health; the same access rules, with the token in `STRANGLER_ADMIN_TOKEN`.
pub fn runner_router(
    plans: Arc<Plans<RunnerEnv>>,
    metrics: Arc<Metrics>,
    port: u16,
) -> AdminService {
    let named = plans.clone();
    let access = Access {
        token: Arc::new(|| {
            let t = std::env::var(RUNNER_TOKEN_ENV)
                .unwrap_or_default()
                .trim()
                .to_string();
            (!t.is_empty()).then_some(t)
        }),
        port,
        identity: Arc::new(move || named.env.config_hash()),
        known_host: Arc::new(|_| false),
    };
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { render_metrics(&metrics) }
            }),
        )
        .merge(plan_routes(plans, &access))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(access, guard_host));
    MapResponse::new(routes, method_not_allowed as fn(Response) -> Response)
}

/// The environment variable holding the token of `plan run --admin`.
pub const RUNNER_TOKEN_ENV: &str = "STRANGLER_ADMIN_TOKEN";

/// The plans' routes, on whichever plans a process runs.
fn plan_routes<E: Environment, S: Clone + Send + Sync + 'static>(
    plans: Arc<Plans<E>>,
    access: &Access,
) -> Router<S> {
    let ops = Router::new()
        .route("/admin/plans/{name}/{op}", post(plan_op::<E>))
        .route_layer(middleware::from_fn_with_state(access.clone(), authorize));
    Router::new()
        .route("/admin/plans", get(plan_list::<E>))
        .route("/admin/plans/{name}", get(plan_get::<E>))
        .merge(ops)
        .with_state(plans)
}

async fn plan_list<E: Environment>(State(plans): State<Arc<Plans<E>>>) -> Response {
    json(
        StatusCode::OK,
        &json!({
            "plans": plans.statuses().await,
            "plans_dir": plans.env.plans_dir().map(|d| d.display().to_string()),
        }),
    )
}

async fn plan_get<E: Environment>(
    State(plans): State<Arc<Plans<E>>>,
    AdminPath(name): AdminPath<String>,
) -> Response {
    match plans.status(&name).await {
        Some(v) => json(StatusCode::OK, &v),
        None => no_such_plan(&plans, &name).await,
    }
}

/// `POST /admin/plans/{name}/start|pause|resume|abort`.
async fn plan_op<E: Environment>(
    State(plans): State<Arc<Plans<E>>>,
    AdminPath((name, op)): AdminPath<(String, String)>,
) -> Response {
    let Some(op) = Op::parse(&op) else {
        return json(
            StatusCode::NOT_FOUND,
            &json!({"error": "not_found", "message": format!("no operation {op:?}; allowed: start, pause, resume, abort")}),
        );
    };
    // A task of its own: a client that goes away cannot cut a write and its reload short.
    let task = {
        let (plans, name) = (plans.clone(), name.clone());
        tokio::spawn(async move {
            plans
                .operate(&name, op, crate::control::plan::unix_now())
                .await
        })
    };
    match task.await {
        Ok(Ok(Some(v))) => json(StatusCode::OK, &v),
        Ok(Ok(None)) => no_such_plan(&plans, &name).await,
        Ok(Err(refused)) => json(
            StatusCode::CONFLICT,
            &json!({"error": refused.code, "message": refused.to_string(), "state": refused.state, "detail": refused.detail}),
        ),
        Err(e) => internal(&e),
    }
}

async fn no_such_plan<E: Environment>(plans: &Plans<E>, name: &str) -> Response {
    json(
        StatusCode::NOT_FOUND,
        &json!({"error": "no_such_plan", "message": format!("no plan {name:?}"), "plans": plans.names().await}),
    )
}

/// Who may change state: the token (when one is set) and the admin port; and what this
/// process runs (the config's hash), which every answer names.
#[derive(Clone)]
struct Access {
    token: Arc<dyn Fn() -> Option<String> + Send + Sync>,
    port: u16,
    identity: Arc<dyn Fn() -> String + Send + Sync>,
    /// Whether a host name is one of `admin.hosts`.
    known_host: Arc<dyn Fn(&str) -> bool + Send + Sync>,
}

/// The header of every admin answer naming the config the process runs: a client knows it
/// talked to a strangler gateway (or plan runner), and which config answered.
pub const CONFIG_HEADER: &str = "x-strangler-config";

async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

async fn metrics(State(s): State<Shared>) -> Response {
    render_metrics(&s.metrics)
}

fn render_metrics(metrics: &Metrics) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        metrics.render(),
    )
        .into_response()
}

async fn healthz() -> Response {
    json(StatusCode::OK, &json!({"status": "ok"}))
}

async fn readyz(State(s): State<Shared>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        json(StatusCode::OK, &json!({"status": "ready"}))
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "not_ready"}),
        )
    }
}

async fn routes(State(s): State<Shared>) -> Response {
    let table = s.gateway.table.load();
    json(StatusCode::OK, &json::routes(&table.config, &table.held))
}

#[derive(Deserialize)]
struct CompareParams {
    window: Option<String>,
    series: Option<String>,
    /// One route only (with `series=1`, its evidence over time too).
    route: Option<String>,
}

/// The window asked for (`?window=5m`; default `compare.window`), within the slots kept: a
/// 400 otherwise.
fn window_of(s: &AdminState, asked: Option<&str>) -> Result<Duration, Box<Response>> {
    let table = s.gateway.table.load();
    let cfg = &table.config.compare;
    let (retention, slot) = (s.windows.retention(), s.windows.resolution());
    match asked.map(humantime::parse_duration) {
        // A reload may have set a window the slots made at start cannot hold: cut to fit
        // (the reload said so), and reported as what it is.
        None => Ok(cfg.window.clamp(slot, retention)),
        Some(Ok(w)) if w >= slot && w <= retention => Ok(w),
        Some(_) => Err(Box::new(bad_request(format!(
            "window: a duration like 5m, from one slot ({}) to the retention ({})",
            humantime::format_duration(slot),
            humantime::format_duration(retention)
        )))),
    }
}

/// `GET /admin/compare?window=5m[&series=1]`: legacy vs new per route over the window.
async fn compare(State(s): State<Shared>, AdminQuery(q): AdminQuery<CompareParams>) -> Response {
    // The thresholds and default window of the config in force (reloadable); the slot
    // layout is the one the registry was made with.
    let table = s.gateway.table.load();
    let cfg = &table.config.compare;
    let window = match window_of(&s, q.window.as_deref()) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    // One span for every route, so that all read the same slots.
    let span = s.windows.span(window);
    let with_series = q.series.as_deref() == Some("1");
    if let Some(name) = &q.route
        && !table.routing.routes().iter().any(|r| &*r.name == name)
    {
        return no_such_route(&table, name);
    }
    let routes: Vec<_> = table
        .routing
        .routes()
        .iter()
        .enumerate()
        .filter(|(_, r)| q.route.as_deref().is_none_or(|n| n == &*r.name))
        .map(|(i, r)| {
            let w = &table.stats(Some(i)).window;
            let figures = |side| {
                let mut f = w.figures(side, &span);
                if with_series {
                    f.series = Some(w.series(side, &span));
                }
                f
            };
            let c = judge(
                &r.name,
                percent_json(r.policy.percent_bp),
                figures(Side::Legacy),
                figures(Side::New),
                cfg,
            );
            let mut v = serde_json::to_value(&c).unwrap_or_default();
            // One route's evidence over time: each test's statistic on the window's traffic
            // up to the end of each slot, against its threshold.
            if with_series && q.route.is_some() {
                let slot = s.windows.resolution().as_secs_f64();
                let points: Vec<[f64; 3]> = span
                    .prefixes()
                    .enumerate()
                    .map(|(k, prefix)| {
                        let c = judge(
                            &r.name,
                            Value::Null,
                            w.figures(Side::Legacy, &prefix),
                            w.figures(Side::New, &prefix),
                            cfg,
                        );
                        [
                            k as f64 * slot,
                            c.evidence.errors.log_lr,
                            c.evidence.latency.log_lr,
                        ]
                    })
                    .collect();
                v["evidence_series"] = json!({
                    "threshold": c.evidence.errors.threshold,
                    "points": points,
                });
            }
            v["shadow"] =
                shadow_summary(&s, &r.name, table.config.routes[i].shadow.is_some(), &span);
            v
        })
        .collect();
    json(
        StatusCode::OK,
        &json!({
            "window_seconds": window.as_secs_f64(),
            "covered_seconds": round1(span.covered),
            "slot_seconds": s.windows.resolution().as_secs_f64(),
            // The windows that can be asked for, from one slot to the retention, and the
            // default one.
            "retention_seconds": s.windows.retention().as_secs_f64(),
            "default_window_seconds": cfg.window.clamp(s.windows.resolution(), s.windows.retention()).as_secs_f64(),
            "min_requests": cfg.min_requests,
            "max_p99_ratio": cfg.max_p99_ratio,
            "max_error_rate_delta": cfg.max_error_rate_delta,
            "confidence": cfg.confidence,
            "routes": routes,
        }),
    )
}

/// A route's shadow copies over the compare window, for the compare table: `null` for a
/// route that is not shadowed.
fn shadow_summary(s: &AdminState, route: &str, configured: bool, span: &Span) -> Value {
    if !configured {
        return Value::Null;
    }
    let figures = s.gateway.carried.shadows.route(route).figures(span);
    serde_json::to_value(figures).unwrap_or_default()
}

fn no_such_route(table: &crate::proxy::Table, route: &str) -> Response {
    json(
        StatusCode::NOT_FOUND,
        &json!({
            "error": "no_such_route",
            "message": format!("no route {route:?}"),
            "routes": table.config.routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        }),
    )
}

/// `GET /admin/services`: legacy and each service: its URLs, and, for those with instances
/// of their own (several URLs, a host name, health checks, a breaker or outlier detection),
/// each instance's health, ejection and requests under way, and the breaker's state.
async fn services(State(s): State<Shared>) -> Response {
    let table = s.gateway.table.load();
    let list: Vec<Value> = table
        .upstreams()
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let service = table.config.upstream(i);
            let routes: Vec<&str> = table
                .config
                .routes
                .iter()
                .filter(|r| i > 0 && r.service + 1 == i)
                .map(|r| r.name.as_str())
                .collect();
            let mut v = match &u.fleet {
                Some(f) => f.view(),
                None => json!({
                    "health_checks": false,
                    "outlier_detection": false,
                    "instances": [{"instance": u.dial.authority.as_str(), "healthy": true, "ejected": false, "in_flight": null}],
                    "breaker": null,
                }),
            };
            v["name"] = json!(&*u.name);
            v["legacy"] = json!(i == 0);
            v["url"] = json!(service.url);
            v["routes"] = json!(routes);
            v
        })
        .collect();
    json(
        StatusCode::OK,
        &json!({"config_hash": table.config.hash, "services": list}),
    )
}

#[derive(Deserialize)]
struct InventoryParams {
    route: Option<String>,
    min_requests: Option<u64>,
    sort: Option<String>,
    limit: Option<usize>,
}

/// `GET /admin/inventory[?route=&min_requests=&sort=requests|errors|p99|new&limit=]`: the
/// carve-out map (docs/inventory.md): the endpoint templates learned from the sampled
/// requests, the progress and its history, and the templates a route almost takes.
async fn inventory(
    State(s): State<Shared>,
    AdminQuery(q): AdminQuery<InventoryParams>,
) -> Response {
    use crate::observe::inventory::near_misses_for;
    let table = s.gateway.table.load();
    if let Some(name) = q.route.as_deref()
        && name != crate::routing::DEFAULT_ROUTE
        && !table.routing.routes().iter().any(|r| &*r.name == name)
    {
        return no_such_route(&table, name);
    }
    let learner = &s.gateway.carried.learner;
    let map = learner.map();
    let progress = map.progress();
    let near = near_misses_for(&map, &table.config, &table.routing);
    let mut templates: Vec<_> = map
        .templates
        .iter()
        .filter(|t| q.min_requests.is_none_or(|n| t.requests >= n))
        .filter(|t| {
            q.route
                .as_deref()
                .is_none_or(|r| t.routes.iter().any(|x| x.route == r))
        })
        .collect();
    let new_share = |t: &&crate::observe::inventory::TemplateView| {
        t.new_requests as f64 / t.requests.max(1) as f64
    };
    match q.sort.as_deref() {
        None | Some("requests") => {}
        Some("errors") => templates.sort_by_key(|t| std::cmp::Reverse(t.errors)),
        Some("p99") => {
            templates.sort_by(|a, b| b.p99_ms.unwrap_or(0.0).total_cmp(&a.p99_ms.unwrap_or(0.0)))
        }
        Some("new") => templates.sort_by(|a, b| new_share(a).total_cmp(&new_share(b))),
        Some(other) => {
            return bad_request(format!(
                "sort: one of requests, errors, p99, new (found {other:?})"
            ));
        }
    }
    templates.truncate(q.limit.unwrap_or(usize::MAX));
    let (offered, dropped) = learner.counts();
    json(
        StatusCode::OK,
        &json!({
            "config_hash": table.config.hash,
            "sample_percent": crate::config::percent_json(table.config.inventory.sample_bp),
            "max_templates": learner.limits().max_templates,
            "samples": {"offered": offered, "dropped": dropped},
            "totals": map.totals,
            "progress": progress,
            "history": learner.history(),
            "templates": templates,
            "other": map.other,
            "near_misses": near,
        }),
    )
}

#[derive(Deserialize)]
struct WindowParams {
    window: Option<String>,
}

/// `GET /admin/shadow/{route}?window=5m`: the route's shadow comparison (docs/shadow.md).
async fn shadow(
    State(s): State<Shared>,
    AdminPath(route): AdminPath<String>,
    AdminQuery(q): AdminQuery<WindowParams>,
) -> Response {
    let table = s.gateway.table.load();
    let Some(rc) = table.config.routes.iter().find(|r| r.name == route) else {
        return no_such_route(&table, &route);
    };
    let window = match window_of(&s, q.window.as_deref()) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let span = s.windows.span(window);
    let mut v = s
        .gateway
        .carried
        .shadows
        .report(&rc.name, rc.shadow.as_ref(), &span);
    v["window_seconds"] = json!(window.as_secs_f64());
    v["noise_yaml"] = match s.gateway.carried.shadows.get(&rc.name) {
        Some(r) => json!(r.noise_pointers(rc.shadow.as_ref())),
        None => json!([]),
    };
    json(StatusCode::OK, &v)
}

/// `POST /admin/shadow/{route}/reset`: the route's comparison starts afresh (after a fix of
/// the new service).
async fn shadow_reset(State(s): State<Shared>, AdminPath(route): AdminPath<String>) -> Response {
    let table = s.gateway.table.load();
    let Some(rc) = table.config.routes.iter().find(|r| r.name == route) else {
        return no_such_route(&table, &route);
    };
    s.gateway.carried.shadows.route(&rc.name).reset();
    tracing::info!(route = %rc.name, "the route's shadow comparison was reset");
    json(
        StatusCode::OK,
        &json!({"route": rc.name, "reset": true, "config_hash": table.config.hash}),
    )
}

fn round1(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

/// `POST /admin/reload`: re-reads the routes file now.
async fn reload(State(s): State<Shared>) -> Response {
    // A task of its own, so a client that goes away cannot cut a reload short.
    let reloader = s.reloader.clone();
    let done = tokio::spawn(async move { reloader.reload("admin API").await }).await;
    match done {
        Ok(Ok(r)) => json(
            StatusCode::OK,
            &json!({"status": "ok", "config_hash": r.hash, "changed": r.changed, "warnings": r.warnings}),
        ),
        Ok(Err(e)) => json(
            StatusCode::BAD_REQUEST,
            &json!({
                "error": "invalid_config",
                "message": "the routes file was not applied; the previous config keeps serving",
                "errors": e.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
        ),
        Err(e) => internal(&e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PercentBody {
    percent: f64,
}

/// `POST /admin/routes/{name}/percent` with `{"percent": N}`: writes the new value into
/// the routes file (in place, atomically), then reloads.
async fn shift(
    State(s): State<Shared>,
    AdminPath(route): AdminPath<String>,
    AdminJson(body): AdminJson<PercentBody>,
) -> Response {
    let Some(bp) = percent_to_bp(body.percent) else {
        return bad_request(
            "expected {\"percent\": N}, N from 0 to 100 with at most two decimals".into(),
        );
    };
    // The file lock in `shift_file` serializes writers (this gateway's, other gateways',
    // the CLI's). The edit and its reload run as a task of their own, so a client that
    // goes away mid-way cannot leave the file changed and the reload not done.
    let reloader = s.reloader.clone();
    let overrides = s.gateway.carried.overrides.clone();
    let task = tokio::spawn(async move {
        let path = reloader.path().to_path_buf();
        let name = route.clone();
        let shifted = match tokio::task::spawn_blocking(move || shift_file(&path, &name, bp)).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return shift_error(&e),
            Err(e) => return internal(&e),
        };
        // A person's percentage ends any the gateway held in memory for the route (a plan's
        // rollback the file had not caught up with): a person wins.
        let released = overrides.release(&route);
        if let Some(o) = &released {
            tracing::warn!(route = %route, held = crate::config::format_percent(o.bp), percent = crate::config::format_percent(bp), "a person set the route's percentage: the percentage held in memory ends");
        }
        let reloaded = reloader.reload("percent change").await;
        if released.is_some()
            && matches!(&reloaded, Ok(r) if !r.changed)
            && let Err(e) = reloader.rebuild("percent change").await
        {
            return internal(&e);
        }
        match reloaded {
            Ok(r) => json(
                StatusCode::OK,
                &json!({
                    "route": route,
                    "percent_before": percent_json(shifted.before),
                    "percent": percent_json(shifted.after),
                    "config_hash": r.hash,
                }),
            ),
            Err(e) => json(
                StatusCode::BAD_REQUEST,
                &json!({"error": "invalid_config", "errors": e.errors.iter().map(ToString::to_string).collect::<Vec<_>>()}),
            ),
        }
    });
    task.await.unwrap_or_else(|e| internal(&e))
}

/// Without a token, the admin API answers only requests addressed to it as `localhost` or
/// a loopback address: a page whose host name an attacker re-points at 127.0.0.1 (DNS
/// rebinding) sends its own name as `Host`, and is refused before it can read or change
/// anything. With a token, the token guards changes wherever the listener is.
async fn guard_host(State(a): State<Access>, req: Request, next: Next) -> Response {
    let mut resp = match host_refusal(&a, &req) {
        Some(refused) => refused,
        None => next.run(req).await,
    };
    if let Ok(v) = HeaderValue::from_str(&(a.identity)()) {
        resp.headers_mut().insert(CONFIG_HEADER, v);
    }
    resp
}

/// Why a request is not answered for its `Host`, if it is not: an HTTP/1.1 request needs
/// one (RFC 9112 §3.2); and a web page whose name an attacker re-points at the gateway (DNS
/// rebinding) sends its own name, so only a loopback name or address is answered, and, with
/// a token, also an IP address (no page can be served from a name that is an address it does
/// not own), a name of `admin.hosts`, or a request with the token. A token adds protection;
/// it never removes the `Host` rule. `/healthz` and `/readyz` (which tell nothing) are
/// answered for any `Host`, for probes that send their own.
fn host_refusal(a: &Access, req: &Request) -> Option<Response> {
    let host = req.headers().get(header::HOST);
    if host.is_none() && req.version() == http::Version::HTTP_11 {
        return Some(json(
            StatusCode::BAD_REQUEST,
            &json!({"error": "bad_request", "message": "an HTTP/1.1 request needs a Host header"}),
        ));
    }
    if matches!(req.uri().path(), "/healthz" | "/readyz") {
        return None;
    }
    let host = host?.as_bytes();
    if local_host(host, a.port) {
        return None;
    }
    let Some(token) = (a.token)() else {
        return Some(json(
            StatusCode::FORBIDDEN,
            &json!({"error": "forbidden", "message": "without admin.token_env, the admin API answers only requests for localhost or a loopback address"}),
        ));
    };
    let name = host_name(host);
    let known = name.is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok() || (a.known_host)(n));
    if known || bearer(req.headers(), &token) {
        return None;
    }
    Some(json(
        StatusCode::FORBIDDEN,
        &json!({"error": "forbidden", "message": "the admin API answers requests for localhost, an IP address or a name of admin.hosts, or with the token (Authorization: Bearer): this Host is none of them"}),
    ))
}

/// The name of a `Host` value without its port or brackets (`[::1]:9901` is `::1`).
fn host_name(host: &[u8]) -> Option<&str> {
    let host = std::str::from_utf8(host).ok()?;
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next();
    }
    Some(host.split(':').next().unwrap_or(host))
}

/// Whether the headers carry `Authorization: Bearer <token>` (the scheme in any case; the
/// token compared in constant time).
fn bearer(h: &HeaderMap, token: &str) -> bool {
    // The scheme is case-insensitive (RFC 9110 §11.1); the token itself is not.
    let given = h.get(header::AUTHORIZATION).and_then(|v| {
        let v = v.as_bytes();
        let space = v.iter().position(|&b| b == b' ')?;
        v[..space]
            .eq_ignore_ascii_case(b"bearer")
            .then(|| v[space..].trim_ascii_start())
    });
    given.is_some_and(|g| bool::from(g.ct_eq(token.as_bytes())))
}

/// Whether a `Host` names this machine's loopback: `localhost`, `127.x.y.z` or `[::1]`, with
/// no port or the admin listener's.
fn local_host(host: &[u8], port: u16) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let (name, given_port) = match host.rsplit_once(':') {
        Some((n, p)) if !n.ends_with(':') && !p.contains(']') => (n, Some(p)),
        _ => (host, None),
    };
    let port_ok = given_port.is_none_or(|p| p.parse::<u16>() == Ok(port));
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let loopback = name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    port_ok && loopback
}

/// Guards the state-changing routes: same origin, and the bearer token when one is set.
async fn authorize(State(a): State<Access>, req: Request, next: Next) -> Response {
    match refusal(&a, req.headers()) {
        Some(denied) => denied,
        None => next.run(req).await,
    }
}

/// `None` when a request with these headers may change state; else the 403 or 401.
fn refusal(a: &Access, h: &HeaderMap) -> Option<Response> {
    // A browser on another site can send a POST here (no preflight for simple requests):
    // refuse any request a page from another origin sent.
    if let Some(origin) = h.get(header::ORIGIN) {
        let host = h.get(header::HOST).map(HeaderValue::as_bytes);
        let origin_host = origin
            .as_bytes()
            .strip_prefix(b"http://")
            .or_else(|| origin.as_bytes().strip_prefix(b"https://"));
        if origin_host.is_none() || origin_host != host {
            return Some(json(
                StatusCode::FORBIDDEN,
                &json!({"error": "forbidden", "message": "state-changing calls from another origin are refused"}),
            ));
        }
    }
    // The token of the config in force (a reload may add or remove `admin.token_env`).
    let token = (a.token)()?;
    if bearer(h, &token) {
        return None;
    }
    let mut r = json(
        StatusCode::UNAUTHORIZED,
        &json!({"error": "unauthorized", "message": "this call changes state: send Authorization: Bearer <token>"}),
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(r)
}

async fn not_found(req: Request) -> Response {
    json(
        StatusCode::NOT_FOUND,
        &json!({"error": "not_found", "path": req.uri().path()}),
    )
}

/// axum answers a known path with the wrong method 405 and an `Allow` header, but no body:
/// give it the JSON body every other error has.
fn method_not_allowed(resp: Response) -> Response {
    if resp.status() != StatusCode::METHOD_NOT_ALLOWED {
        return resp;
    }
    let allowed: Vec<&str> = resp
        .headers()
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let mut out = json(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({"error": "method_not_allowed", "allowed": allowed}),
    );
    if let Some(allow) = resp.headers().get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

fn bad_request(message: String) -> Response {
    json(
        StatusCode::BAD_REQUEST,
        &json!({"error": "bad_request", "message": message}),
    )
}

fn internal(e: &dyn std::fmt::Display) -> Response {
    json(
        StatusCode::INTERNAL_SERVER_ERROR,
        &json!({"error": "internal", "message": e.to_string()}),
    )
}

fn shift_error(e: &ShiftError) -> Response {
    let (status, code, errors) = match e {
        ShiftError::ReadOnly { .. } => (StatusCode::CONFLICT, "read_only", None),
        ShiftError::DirReadOnly { .. } => (StatusCode::CONFLICT, "directory_read_only", None),
        ShiftError::Changing { .. } => (StatusCode::CONFLICT, "file_changing", None),
        ShiftError::Moved { .. } => (StatusCode::CONFLICT, "changed_meanwhile", None),
        ShiftError::Unreadable { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "unreadable", None),
        ShiftError::Owner { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "cannot_keep_owner", None),
        ShiftError::Lock { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "cannot_lock", None),
        ShiftError::NoSuchRoute(_) => (StatusCode::NOT_FOUND, "no_such_route", None),
        ShiftError::InvalidBefore(c) | ShiftError::InvalidAfter(c) => (
            StatusCode::BAD_REQUEST,
            "invalid_config",
            Some(c.errors.iter().map(ToString::to_string).collect::<Vec<_>>()),
        ),
        ShiftError::Layout(_) => (StatusCode::BAD_REQUEST, "cannot_edit", None),
        ShiftError::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "write_failed", None),
    };
    let mut v = json!({"error": code, "message": e.to_string()});
    if let Some(errors) = errors {
        v["errors"] = Value::from(errors);
    }
    json(status, &v)
}

#[cfg(test)]
mod tests {
    use super::local_host;

    #[test]
    fn local_hosts() {
        for ok in [
            "localhost",
            "localhost:9901",
            "LocalHost:9901",
            "127.0.0.1:9901",
            "127.1.2.3",
            "[::1]:9901",
            "[::1]",
        ] {
            assert!(local_host(ok.as_bytes(), 9901), "{ok}");
        }
        for bad in [
            "rebind.attacker.example:9901",
            "localhost:9902",
            "10.0.0.1:9901",
            "[::2]:9901",
            "localhost.attacker.example",
            "",
        ] {
            assert!(!local_host(bad.as_bytes(), 9901), "{bad}");
        }
    }
}
