//! The admin listener (CONTRACT §6): metrics, health, readiness, and the live route table.
//!
//! Reads only, for now; it never touches the request path's state except to read the table
//! in force.

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

/// What the admin API reads.
pub struct Admin {
    pub gateway: Arc<Gateway>,
    pub metrics: Arc<Metrics>,
    /// True once the config is loaded and the public listener is up; false while draining.
    pub ready: AtomicBool,
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
            (_, "/metrics" | "/healthz" | "/readyz" | "/admin/routes") => json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "method_not_allowed", "allowed": ["GET"]}),
            ),
            _ => json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": "not_found", "path": path}),
            ),
        };
        Ok(resp)
    }
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
