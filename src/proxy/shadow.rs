//! Shadow copies (docs/shadow.md): a request legacy serves, copied to the new side off the
//! request path, and both answers compared by `observe::shadow`.
//!
//! A copy is decided with the request (after the decision: the route shadows, legacy serves
//! it by the rules, the method is one the route copies, the sample draws it) and only if
//! the budget has room: at most [`MAX_COPIES`] copies under way and [`MAX_KEPT_BYTES`] of
//! bodies kept for them, gateway-wide; otherwise the copy is skipped and counted. While
//! legacy serves, the request body (through the upload's tee) and legacy's answer (as its
//! body streams to the client) are kept up to `max_body`; the client's answer is never held
//! up. When legacy's answer has ended, a task sends the copy to the new side (with
//! `X-Strangler-Shadow: 1`), and, for the noise sample, once more to legacy, then compares.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::BodyExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::pool;
use super::send;
use super::table::{Table, Upstream};
use super::upload::{RequestBody, Tee};
use crate::observe::shadow::{Answer, Copied, Outcome, RouteShadow};

/// Copies under way at once, gateway-wide.
pub const MAX_COPIES: usize = 64;
/// Bytes of bodies kept for copies at once, gateway-wide.
pub const MAX_KEPT_BYTES: u64 = 64 * 1024 * 1024;
/// The header a copy carries, so the new service can avoid side effects.
pub const SHADOW_HEADER: http::HeaderName = http::HeaderName::from_static("x-strangler-shadow");

/// The gateway's room for copies.
pub struct Budget {
    copies: Arc<Semaphore>,
    bytes: AtomicU64,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget {
            copies: Arc::new(Semaphore::new(MAX_COPIES)),
            bytes: AtomicU64::new(0),
        }
    }
}

impl Budget {
    fn reserve(&self, n: u64) -> bool {
        self.bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b + n <= MAX_KEPT_BYTES).then_some(b + n)
            })
            .is_ok()
    }

    fn release(&self, n: u64) {
        self.bytes.fetch_sub(n, Ordering::Relaxed);
    }

    /// Bytes kept for copies now.
    pub fn kept(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// A copy in the making, carried by the request's trail while legacy serves it.
pub struct Copy {
    _permit: OwnedSemaphorePermit,
    budget: Arc<Budget>,
    /// Bytes reserved in the budget, released when the copy ends.
    reserved: u64,
    pub report: Arc<RouteShadow>,
    /// The route (index in the table).
    route: usize,
    /// The request as the new side gets it.
    new_head: Parts,
    /// The request as legacy got it, for the noise sample.
    legacy_head: Option<Parts>,
    /// The request body as it streams to legacy.
    upload: Option<Arc<Tee>>,
    /// Legacy's answer: its headers, and its body as it streams.
    pub legacy_headers: Option<HeaderMap>,
    kept: Vec<Bytes>,
    kept_size: u64,
    /// Legacy's body went over `max_body`.
    too_large: bool,
    /// The budget ran out while legacy's body was kept.
    starved: bool,
    method: String,
    path: String,
}

/// Whether a request is copied, and the copy if so (`None` with the reason counted when
/// the budget is full).
pub struct Begin<'a> {
    pub table: &'a Table,
    pub route: usize,
    pub budget: &'a Arc<Budget>,
    pub report: Arc<RouteShadow>,
    /// The request rewritten for the new side.
    pub new_head: Parts,
    /// The request body's declared length (`None`: chunked).
    pub declared: Option<u64>,
    pub path: &'a str,
}

impl Copy {
    /// A copy if the budget has room; otherwise the skip is counted.
    pub fn begin(b: Begin<'_>) -> Option<Copy> {
        let cfg = b.table.config.routes[b.route].shadow.as_ref()?;
        let metrics = &b.table.stats(Some(b.route)).metrics[0];
        let Ok(permit) = b.budget.copies.clone().try_acquire_owned() else {
            b.report.count(Outcome::Skipped);
            metrics.shadowed(Outcome::Skipped.as_str());
            return None;
        };
        // Room for the request body as declared (a chunked one: up to `max_body`).
        let reserved = b.declared.unwrap_or(cfg.max_body).min(cfg.max_body);
        if !b.budget.reserve(reserved) {
            b.report.count(Outcome::Skipped);
            metrics.shadowed(Outcome::Skipped.as_str());
            return None;
        }
        let mut new_head = b.new_head;
        new_head
            .headers
            .insert(SHADOW_HEADER, HeaderValue::from_static("1"));
        Some(Copy {
            _permit: permit,
            budget: b.budget.clone(),
            reserved,
            report: b.report,
            route: b.route,
            new_head,
            legacy_head: None,
            upload: None,
            legacy_headers: None,
            kept: Vec::new(),
            kept_size: 0,
            too_large: false,
            starved: false,
            method: String::new(),
            path: b.path.to_string(),
        })
    }

    /// The request body, kept as it streams to legacy (up to `max_body`), and the head
    /// legacy got (for the noise sample, `noise`).
    pub fn watch_request(&mut self, table: &Table, body: &mut RequestBody, legacy_head: &Parts) {
        let Some(cfg) = table.config.routes[self.route].shadow.as_ref() else {
            return;
        };
        self.method = legacy_head.method.to_string();
        if body.has_body() {
            self.upload = Some(body.tee(cfg.max_body));
        }
        if cfg
            .noise
            .is_some_and(|n| fastrand::u32(..10_000) < n.sample_bp)
        {
            self.legacy_head = Some(super::send::copy_head(legacy_head));
        }
    }

    /// A part of legacy's answer body, as it goes to the client.
    pub fn keep(&mut self, max_body: u64, data: &Bytes) {
        if self.too_large || self.starved {
            return;
        }
        let n = data.len() as u64;
        if self.kept_size + n > max_body {
            self.too_large = true;
        } else if !self.budget.reserve(n) {
            self.starved = true;
        } else {
            self.reserved += n;
            self.kept_size += n;
            self.kept.push(data.clone());
            return;
        }
        // Nothing more is kept: what was is let go at once.
        self.kept.clear();
    }

    /// Legacy's answer has ended (`status`, or a failure): the copy goes on in a task of
    /// its own, or is counted as skipped.
    pub fn finish(self, table: Arc<Table>, status: u16, failed: bool) {
        let metrics = &table.stats(Some(self.route)).metrics[0];
        // Legacy failed (or its answer could not be kept): nothing to compare against.
        let runtime = tokio::runtime::Handle::try_current()
            .ok()
            .filter(|_| !failed && status != 0 && !self.starved);
        let Some(runtime) = runtime else {
            self.report.count(Outcome::Skipped);
            metrics.shadowed(Outcome::Skipped.as_str());
            return;
        };
        runtime.spawn(async move {
            let mut copy = self;
            let outcome = copy.run(&table, status).await;
            table.stats(Some(copy.route)).metrics[0].shadowed(outcome.as_str());
        });
    }

    async fn run(&mut self, table: &Table, status: u16) -> Outcome {
        let Some(cfg) = table.config.routes[self.route].shadow.as_ref() else {
            return Outcome::Skipped;
        };
        let body = match &self.upload {
            None => Some(Vec::new()),
            Some(t) => t.replay(),
        };
        let (Some(body), false) = (body, self.too_large) else {
            self.report.count(Outcome::TooLarge);
            return Outcome::TooLarge;
        };
        // Legacy's body in one piece, its parts let go at once (held twice, a copy would
        // cost twice what the budget counts).
        let mut kept = std::mem::take(&mut self.kept);
        let whole = match kept.len() {
            1 => kept.pop().unwrap_or_default(),
            _ => Bytes::from(kept.concat()),
        };
        drop(kept);
        let legacy = Answer {
            status,
            headers: self.legacy_headers.take().unwrap_or_default(),
            body: Some(whole),
        };
        let service = 1 + table.config.routes[self.route].service;
        let new = fetch(
            &table.upstreams[service],
            copy_parts(&self.new_head),
            &body,
            cfg.max_body,
            &self.budget,
        )
        .await;
        let new = match new {
            Ok(a) => a,
            Err(Fetch::Failed) => {
                self.report.count(Outcome::Error);
                return Outcome::Error;
            }
            Err(Fetch::Starved) => {
                self.report.count(Outcome::Skipped);
                return Outcome::Skipped;
            }
        };
        if new.body.is_none() {
            self.report.count(Outcome::TooLarge);
            return Outcome::TooLarge;
        }
        // Legacy against itself, for the sample: what differs there is noise.
        if let Some(head) = &self.legacy_head
            && let Ok(again) = fetch(
                &table.upstreams[0],
                copy_parts(head),
                &body,
                cfg.max_body,
                &self.budget,
            )
            .await
            && again.body.is_some()
        {
            self.report.learn_noise(&legacy, &again, cfg);
        }
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        self.report.compare(
            &Copied {
                method: &self.method,
                path: &self.path,
            },
            &legacy,
            &new,
            cfg,
            cfg.noise.map(|n| n.threshold),
            at_ms,
        )
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        self.budget.release(self.reserved);
    }
}

fn copy_parts(head: &Parts) -> Parts {
    super::send::copy_head(head)
}

enum Fetch {
    /// No answer, or a broken one.
    Failed,
    /// The budget had no room for the answer.
    Starved,
}

/// Sends a copy and reads its whole answer (up to `max_body`: a larger body is `None`).
async fn fetch(
    upstream: &Upstream,
    head: Parts,
    body: &[Bytes],
    max_body: u64,
    budget: &Budget,
) -> Result<Answer, Fetch> {
    let picked = upstream.fleet.as_ref().and_then(|f| f.pick(None));
    let target = match &picked {
        Some(p) => p
            .guard
            .instance()
            .target(upstream.timeout, upstream.connect_timeout),
        None => upstream.target(),
    };
    let req = Request::from_parts(head, RequestBody::replayed(body.to_vec()));
    let start = Instant::now();
    let exchange = send::attempt(&target, req, start)
        .await
        .map_err(|_| Fetch::Failed)?;
    let (parts, mut incoming) = exchange.response.into_parts();
    let mut kept: Vec<Bytes> = Vec::new();
    let mut size = 0u64;
    let mut reserved = 0u64;
    let mut over = false;
    let read = async {
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|_| Fetch::Failed)?;
            let Some(d) = frame.data_ref() else { continue };
            size += d.len() as u64;
            if size > max_body {
                over = true;
                kept.clear();
                break;
            }
            if !budget.reserve(d.len() as u64) {
                return Err(Fetch::Starved);
            }
            reserved += d.len() as u64;
            kept.push(d.clone());
        }
        Ok(())
    };
    let outcome = tokio::time::timeout(upstream.timeout.max(Duration::from_millis(1)), read).await;
    budget.release(reserved);
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(Fetch::Failed),
    }
    if !over && exchange.uploaded.as_ref().is_none_or(|u| u.done()) {
        pool::checkin(exchange.key, exchange.conn, start);
    }
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: (!over).then(|| kept.concat().into()),
    })
}
