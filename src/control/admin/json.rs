//! JSON in and out of the admin API: answers (pretty, newline-terminated, for people with
//! curl as much as for programs), extractors whose rejections are JSON too, and the route
//! table as `GET /admin/routes` shows it.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderValue};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Value, json as j};

use crate::config::{Config, percent_json};
use crate::proxy::overrides::Applied;
use crate::routing::{HeaderTest, PathMatch, StickyKey, regex_source};

/// A JSON answer.
pub fn json(status: StatusCode, v: &Value) -> Response {
    let mut body = serde_json::to_vec_pretty(v).expect("a JSON value serializes");
    body.push(b'\n');
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// A JSON request body: an object, sent as `Content-Type: application/json` (415 for any
/// other type, `application/merge-patch+json` and other `+json` types included, since a
/// form or text/plain body is what a page on another site could send); a declared
/// `Content-Length` over `limit` is 413 at once, before any of the body is read; a body
/// that is not a JSON object (`[33]`, `33`) or does not match the expected keys is 400, all
/// answered in JSON.
pub struct AdminJson<T>(pub T);

/// The largest admin request body.
pub const MAX_BODY: usize = 4096;

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for AdminJson<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let media = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        if media.as_deref() != Some("application/json") {
            return Err(json(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &j!({"error": "unsupported_media_type", "message": "send Content-Type: application/json"}),
            ));
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return Err(too_large());
        }
        let bytes = match axum::body::Bytes::from_request(req, state).await {
            Ok(b) => b,
            Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
            Err(r) => return Err(bad_request(r.body_text())),
        };
        // An object, read straight into `T` (a key given twice is refused, not the last
        // taken).
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => {}
            other => {
                return Err(bad_request(format!(
                    "expected a JSON object, found {}",
                    match other {
                        Some(b'[') => "an array",
                        Some(b'"') => "a string",
                        Some(b't' | b'f') => "a boolean",
                        Some(b'n') => "null",
                        None => "an empty body",
                        _ => "a number",
                    }
                )));
            }
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(&mut de)
            .map(AdminJson)
            .map_err(|e| {
                bad_request(format!(
                    "the body does not fit: {}: {}",
                    e.path(),
                    e.inner()
                ))
            })
    }
}

fn too_large() -> Response {
    json(
        StatusCode::PAYLOAD_TOO_LARGE,
        &j!({"error": "payload_too_large", "message": format!("admin request bodies are at most {MAX_BODY} bytes")}),
    )
}

/// Query parameters; malformed ones are a JSON 400.
pub struct AdminQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for AdminQuery<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| AdminQuery(q.0))
            .map_err(|r: QueryRejection| bad_request(r.body_text()))
    }
}

/// Path parameters; ones that do not decode (invalid UTF-8) are a JSON 400.
pub struct AdminPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for AdminPath<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| AdminPath(p.0))
            .map_err(|r: PathRejection| bad_request(r.body_text()))
    }
}

fn bad_request(message: String) -> Response {
    json(
        StatusCode::BAD_REQUEST,
        &j!({"error": "bad_request", "message": message}),
    )
}

fn sticky(s: &StickyKey) -> Value {
    match s {
        StickyKey::Header(h) => j!({"header": h.as_str()}),
        StickyKey::Cookie(c) => j!({"cookie": c}),
        StickyKey::Query(q) => j!({"query": q}),
        StickyKey::ClientIp => j!({"client_ip": true}),
    }
}

/// The live table: what `GET /admin/routes` answers. `percent` is the percentage in force;
/// a route whose percentage is held in memory (a rollback the routes file has not caught up
/// with) has `override`, with what the file says and why.
pub fn routes(cfg: &Config, held: &[Applied]) -> Value {
    let routes: Vec<Value> = cfg
        .routes
        .iter()
        .map(|r| {
            let mut m = serde_json::Map::new();
            let key = match &r.matcher.path {
                PathMatch::Exact(_) | PathMatch::Template(_) => "path",
                PathMatch::Prefix(_) => "prefix",
                PathMatch::Regex(_) => "regex",
            };
            m.insert(key.into(), r.matcher.path.pattern().into());
            if let Some(ms) = &r.matcher.methods {
                m.insert(
                    "methods".into(),
                    ms.iter().map(|x| x.as_str()).collect::<Vec<_>>().into(),
                );
            }
            if !r.matcher.headers.is_empty() {
                let mut hs = serde_json::Map::new();
                for c in &r.matcher.headers {
                    let v = match &c.test {
                        HeaderTest::Exact(v) => {
                            Value::from(String::from_utf8_lossy(v.as_bytes()).into_owned())
                        }
                        HeaderTest::Regex(re) => {
                            let source = regex_source(re);
                            j!({ "regex": source })
                        }
                        HeaderTest::Present(p) => j!({"present": p}),
                    };
                    hs.insert(c.name.as_str().into(), v);
                }
                m.insert("headers".into(), hs.into());
            }
            let applied = held.iter().find(|a| a.route == r.name);
            let file_bp = applied.map_or(r.percent_bp, |a| a.held.file_bp);
            let held = applied.map(|a| {
                j!({
                    "percent": percent_json(a.held.bp),
                    "file_percent": percent_json(a.held.file_bp),
                    "plan": a.held.plan,
                    "reason": a.held.reason,
                    "since": a.held.since,
                })
            });
            j!({
                "name": r.name,
                "match": m,
                "service": cfg.services[r.service].name,
                "percent": percent_json(r.percent_bp),
                "file_percent": percent_json(file_bp),
                "override": held,
                "cohort": r.cohort,
                "sticky": r.sticky.as_ref().or(cfg.sticky.as_ref()).map(sticky),
            })
        })
        .collect();
    j!({"config_hash": cfg.hash, "file": cfg.file.display().to_string(), "routes": routes})
}
