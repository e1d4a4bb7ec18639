//! The admin listener (CONTRACT §6): metrics, health, readiness, the live route table, and
//! reloads.
//!
//! Reads need nothing; a call that changes state needs `Authorization: Bearer <token>` when a
//! token is configured (compared in constant time). It changes the request path's state only
//! through `reload`, never directly.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::config::{Config, HeaderTest, PathMatch, StickyKey, format_percent, regex_source};
use crate::forward::{Gateway, GatewayBody};
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::shift::{ShiftError, shift_file};
use http_body_util::BodyExt as _;

/// What the admin API reads and drives.
pub struct Admin {
    pub gateway: Arc<Gateway>,
    pub metrics: Arc<Metrics>,
    pub reloader: Arc<Reloader>,
    /// The bearer token state-changing calls need; `None`: none configured.
    pub token: Option<String>,
    /// The rolling legacy-vs-new figures.
    pub windows: Arc<crate::compare::Registry>,
    /// True once the config is loaded and the public listener is up; false while draining.
    pub ready: AtomicBool,
}

/// Compares in time that depends only on the lengths, not on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Admin {
    pub async fn handle(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<GatewayBody>, Infallible> {
        let path = req.uri().path();
        let resp = match (req.method(), path) {
            (&Method::GET, "/metrics") => {
                let mut r = Response::new(GatewayBody::full(self.metrics.render()));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            (&Method::GET, "/healthz") => json_response(StatusCode::OK, &json!({"status": "ok"})),
            (&Method::GET, "/readyz") => {
                if self.ready.load(Ordering::Acquire) {
                    json_response(StatusCode::OK, &json!({"status": "ready"}))
                } else {
                    json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({"status": "not_ready"}),
                    )
                }
            }
            (&Method::GET, "/admin/routes") => {
                let table = self.gateway.table.load();
                json_response(StatusCode::OK, &routes_json(&table.config))
            }
            (&Method::GET, "/") => {
                let mut r = Response::new(GatewayBody::full(DASHBOARD));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                r
            }
            (&Method::GET, "/admin/compare") => self.compare(req.uri().query()),
            (&Method::POST, "/admin/reload") => match self.authorize(&req) {
                Some(denied) => denied,
                None => match self.reloader.reload("admin API").await {
                    Ok(r) => json_response(
                        StatusCode::OK,
                        &json!({"status": "ok", "config_hash": r.hash, "changed": r.changed, "warnings": r.warnings}),
                    ),
                    Err(e) => json_response(
                        StatusCode::BAD_REQUEST,
                        &json!({
                            "error": "invalid_config",
                            "message": "the routes file was not applied; the previous config keeps serving",
                            "errors": e.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        }),
                    ),
                },
            },
            (&Method::POST, p) if shift_route(p).is_some() => match self.authorize(&req) {
                Some(denied) => denied,
                None => {
                    let route = shift_route(p).unwrap_or_default().to_string();
                    self.shift(&route, req).await
                }
            },
            (_, "/metrics" | "/healthz" | "/readyz" | "/admin/routes") => json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "method_not_allowed", "allowed": ["GET"]}),
            ),
            (_, "/admin/reload") => json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "method_not_allowed", "allowed": ["POST"]}),
            ),
            _ => json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": "not_found", "path": path}),
            ),
        };
        Ok(resp)
    }
}

impl Admin {
    /// `GET /admin/compare?window=5m`: legacy vs new per route over the window.
    fn compare(&self, query: Option<&str>) -> Response<GatewayBody> {
        // The thresholds and default window of the config in force (reloadable); the slot
        // layout is the one the registry was made with.
        let table = self.gateway.table.load();
        let cfg = &table.config.compare;
        let asked = query
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("window=")))
            .map(|w| humantime::parse_duration(w).map_err(|_| w.to_string()));
        let window = match asked {
            None => cfg.window,
            Some(Ok(w)) if !w.is_zero() && w <= self.windows.retention() => w,
            Some(Ok(_)) | Some(Err(_)) => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "bad_request", "message": format!(
                        "window: a duration like 5m, at most the retention ({})",
                        humantime::format_duration(self.windows.retention())
                    )}),
                );
            }
        };
        let with_series = query.is_some_and(|q| q.split('&').any(|kv| kv == "series=1"));
        let figures = |r: &crate::table::Route, side| {
            let mut f = r.window.figures(side, window);
            if with_series {
                f.series = Some(r.window.series(side, window));
            }
            f
        };
        let routes: Vec<_> = table
            .routes
            .iter()
            .map(|r| {
                crate::compare::judge(
                    &r.name,
                    number(r.policy.percent_bp),
                    figures(r, crate::side::Side::Legacy),
                    figures(r, crate::side::Side::New),
                    cfg,
                )
            })
            .collect();
        json_response(
            StatusCode::OK,
            &json!({
                "window_seconds": window.as_secs_f64(),
                "covered_seconds": (self.windows.covered(window).as_secs_f64() * 10.0).round() / 10.0,
                "slot_seconds": self.windows.resolution().as_secs_f64(),
                "min_requests": cfg.min_requests,
                "max_p99_ratio": cfg.max_p99_ratio,
                "routes": routes,
            }),
        )
    }
}

/// The dashboard: one self-contained page (no external assets) that polls the admin API.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The route of `/admin/routes/{name}/percent`.
fn shift_route(path: &str) -> Option<&str> {
    let name = path
        .strip_prefix("/admin/routes/")?
        .strip_suffix("/percent")?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// The largest body `POST /admin/routes/{name}/percent` reads.
const MAX_ADMIN_BODY: usize = 4096;

impl Admin {
    /// `POST /admin/routes/{name}/percent` with `{"percent": N}`: writes the new value into
    /// the routes file (in place, atomically), then reloads.
    async fn shift(&self, route: &str, req: Request<Incoming>) -> Response<GatewayBody> {
        // JSON only: a form or text/plain body is what a cross-site page could send.
        let json_body = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        if !json_body {
            return json_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &json!({"error": "unsupported_media_type", "message": "send Content-Type: application/json"}),
            );
        }
        let bad = |message: String| {
            json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "bad_request", "message": message}),
            )
        };
        let body = match http_body_util::Limited::new(req.into_body(), MAX_ADMIN_BODY)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => return bad(format!("cannot read the body: {e}")),
        };
        let percent = match serde_json::from_slice::<Value>(&body) {
            Ok(v) => v.get("percent").and_then(Value::as_f64),
            Err(_) => None,
        };
        let Some(bp) = percent.and_then(crate::config::percent_to_bp) else {
            return bad(
                "expected {\"percent\": N}, N from 0 to 100 with at most two decimals".into(),
            );
        };
        // The file lock in `shift_file` serializes writers (this gateway's, other gateways',
        // the CLI's). The edit and its reload run as a task of their own, so a client that
        // goes away mid-way cannot leave the file changed and the reload not done.
        let reloader = self.reloader.clone();
        let route = route.to_string();
        let task = tokio::spawn(async move {
            let path = reloader.path().to_path_buf();
            let name = route.clone();
            let shifted =
                match tokio::task::spawn_blocking(move || shift_file(&path, &name, bp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return shift_error(&e),
                    Err(e) => {
                        return json_response(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            &json!({"error": "internal", "message": e.to_string()}),
                        );
                    }
                };
            match reloader.reload("percent change").await {
                Ok(r) => json_response(
                    StatusCode::OK,
                    &json!({
                        "route": route,
                        "percent_before": number(shifted.before),
                        "percent": number(shifted.after),
                        "config_hash": r.hash,
                    }),
                ),
                Err(e) => json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "invalid_config", "errors": e.errors.iter().map(ToString::to_string).collect::<Vec<_>>()}),
                ),
            }
        });
        task.await.unwrap_or_else(|e| {
            json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"error": "internal", "message": e.to_string()}),
            )
        })
    }

    /// `None` when the request may change state; else the 401 or 403 to answer.
    fn authorize(&self, req: &Request<Incoming>) -> Option<Response<GatewayBody>> {
        // A browser on another site can send a POST here (no preflight for simple
        // requests): refuse any request a page from another origin sent.
        if let Some(origin) = req.headers().get(http::header::ORIGIN) {
            let host = req
                .headers()
                .get(http::header::HOST)
                .map(HeaderValue::as_bytes);
            let origin_host = origin
                .as_bytes()
                .strip_prefix(b"http://")
                .or_else(|| origin.as_bytes().strip_prefix(b"https://"));
            if origin_host.is_none() || origin_host != host {
                return Some(json_response(
                    StatusCode::FORBIDDEN,
                    &json!({"error": "forbidden", "message": "state-changing calls from another origin are refused"}),
                ));
            }
        }
        let token = self.token.as_deref()?;
        let given = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        if given.is_some_and(|g| constant_time_eq(g, token.as_bytes())) {
            return None;
        }
        let mut r = json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "unauthorized", "message": "this call changes state: send Authorization: Bearer <token>"}),
        );
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
        Some(r)
    }
}

fn number(bp: u32) -> Value {
    serde_json::from_str(&format_percent(bp)).unwrap_or(Value::Null)
}

fn shift_error(e: &ShiftError) -> Response<GatewayBody> {
    let (status, code, errors) = match e {
        ShiftError::ReadOnly { .. } => (StatusCode::CONFLICT, "read_only", None),
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
        v["errors"] = errors.into();
    }
    json_response(status, &v)
}

fn json_response(status: StatusCode, v: &Value) -> Response<GatewayBody> {
    let mut body = serde_json::to_vec_pretty(v).expect("a JSON value serializes");
    body.push(b'\n');
    let mut r = Response::new(GatewayBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn sticky_json(s: &StickyKey) -> Value {
    match s {
        StickyKey::Header(h) => json!({"header": h.as_str()}),
        StickyKey::Cookie(c) => json!({"cookie": c}),
        StickyKey::Query(q) => json!({"query": q}),
        StickyKey::ClientIp => json!({"client_ip": true}),
    }
}

/// The live table as JSON: what `GET /admin/routes` answers.
pub fn routes_json(cfg: &Config) -> Value {
    let routes: Vec<Value> = cfg
        .routes
        .iter()
        .map(|r| {
            let mut m = serde_json::Map::new();
            let key = match &r.path {
                PathMatch::Exact(_) | PathMatch::Template(_) => "path",
                PathMatch::Prefix(_) => "prefix",
                PathMatch::Regex(_) => "regex",
            };
            m.insert(key.into(), r.path.pattern().into());
            if let Some(ms) = &r.methods {
                m.insert(
                    "methods".into(),
                    ms.iter().map(|x| x.as_str()).collect::<Vec<_>>().into(),
                );
            }
            if !r.headers.is_empty() {
                let mut hs = serde_json::Map::new();
                for c in &r.headers {
                    let v = match &c.test {
                        HeaderTest::Exact(v) => {
                            Value::from(String::from_utf8_lossy(v.as_bytes()).into_owned())
                        }
                        HeaderTest::Regex(re) => json!({"regex": regex_source(re)}),
                        HeaderTest::Present(p) => json!({"present": p}),
                    };
                    hs.insert(c.name.as_str().into(), v);
                }
                m.insert("headers".into(), hs.into());
            }
            let sticky = r.sticky.as_ref().or(cfg.sticky.as_ref()).map(sticky_json);
            let percent: Value =
                serde_json::from_str(&format_percent(r.percent_bp)).unwrap_or(Value::Null);
            json!({
                "name": r.name,
                "match": m,
                "service": cfg.services[r.service].name,
                "percent": percent,
                "cohort": r.cohort,
                "sticky": sticky,
            })
        })
        .collect();
    json!({"config_hash": cfg.hash, "file": cfg.file.display().to_string(), "routes": routes})
}
