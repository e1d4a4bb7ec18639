//! Shadow copies (docs/shadow.md): a request legacy serves, copied to the new side off the
//! request path, and both answers compared by `observe::shadow`.
//!
//! A copy is decided with the request (after the decision: the route shadows, legacy serves
//! it by the rules, the method is one the route copies, the sample draws it, the new
//! service can take traffic) and only if the budget has room: [`MAX_KEPT_BYTES`] of bodies
//! kept for copies, and, when it goes out, at most [`MAX_COPIES`] copies out at once,
//! gateway-wide; otherwise the copy is skipped and counted. While legacy serves, the request body (through the
//! upload's tee) and legacy's answer (as its body streams to the client) are kept up to
//! `max_body`; the client's answer is never held up. When legacy's answer has ended, a task
//! sends the copy to the new side (with `X-Strangler-Shadow: 1`), and, for the noise sample
//! of a safe method, once more to legacy, then compares. Every copy decided is counted
//! once, whatever becomes of it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::BodyExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::connection::Peer;
use super::headers::strip_hop_by_hop;
use super::pool;
use super::record::LoggedPath;
use super::rewrite::{self, Pending};
use super::send;
use super::table::{LEGACY, Table, Upstream};
use super::upload::{Kept, RequestBody, Tee};
use crate::observe::shadow::{Answer, Compared, Copied, Kind, Outcome, RouteShadow};

/// Copies under way at once, gateway-wide.
pub const MAX_COPIES: usize = 64;
/// Bytes of bodies kept for copies at once, gateway-wide: the request body, legacy's
/// answer and the new side's (and legacy's second answer, for the noise sample).
pub const MAX_KEPT_BYTES: u64 = 64 * 1024 * 1024;
/// Comparisons of large bodies run at once, gateway-wide (a JSON body parsed takes several
/// times its size).
const COMPARING: usize = 2;
/// Bodies up to this much in all, not compressed, are compared where the copy runs; larger
/// or compressed ones on the blocking pool, [`COMPARING`] at a time.
const INLINE_COMPARE: u64 = 64 * 1024;
pub use super::headers::SHADOW_HEADER;

/// The gateway's room for copies.
pub struct Budget {
    copies: Arc<Semaphore>,
    bytes: Kept,
    comparing: Semaphore,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget {
            copies: Arc::new(Semaphore::new(MAX_COPIES)),
            bytes: Kept::new(MAX_KEPT_BYTES),
            comparing: Semaphore::new(COMPARING),
        }
    }
}

impl Budget {
    /// Bytes kept for copies now.
    pub fn kept(&self) -> u64 {
        self.bytes.now()
    }

    /// A copy's room: `bytes` kept, if they fit (its place among the copies under way is
    /// taken when it goes out: [`Room::go`]).
    pub fn room(self: &Arc<Self>, bytes: u64) -> Option<Room> {
        self.bytes.reserve(bytes).then(|| Room {
            turn: None,
            budget: self.clone(),
            bytes,
        })
    }
}

/// The room a copy holds in the budget, given back when dropped.
pub struct Room {
    /// Its place among the copies under way, once it goes out.
    turn: Option<OwnedSemaphorePermit>,
    budget: Arc<Budget>,
    bytes: u64,
}

impl Room {
    /// A place among the copies under way, if there is one.
    fn go(&mut self) -> bool {
        self.turn = self.budget.copies.clone().try_acquire_owned().ok();
        self.turn.is_some()
    }

    /// Keeps `n` more bytes, if they fit.
    fn grow(&mut self, n: u64) -> bool {
        let fits = self.budget.bytes.reserve(n);
        if fits {
            self.bytes += n;
        }
        fits
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        self.budget.bytes.release(self.bytes);
    }
}

/// A shadow copy of a request of route `r` (its head rewritten for the new side), if the
/// new service can take it and `budget` has room; otherwise what became of it is counted.
pub fn copy(
    budget: &Arc<Budget>,
    table: &Arc<Table>,
    r: usize,
    request: &Pending,
    peer: &Peer,
) -> Option<Copy> {
    let Pending {
        head,
        path,
        facts,
        length: declared,
    } = request;
    let cfg = table.policy(Some(r)).shadow.as_ref()?;
    let new = table.upstream(table.new_upstream(r));
    // A new service that cannot take traffic (no healthy instance, breaker open) is not
    // sent copies either.
    let down = new.fleet.as_ref().is_some_and(|f| {
        !f.available()
            || f.breaker
                .as_ref()
                .is_some_and(|b| b.is_open(Instant::now()))
    });
    if down {
        count(table, r, Outcome::Skipped);
        return None;
    }
    if declared.is_some_and(|n| n > cfg.max_body) {
        count(table, r, Outcome::TooLarge);
        return None;
    }
    // Room for the request body as declared (a chunked one: up to `max_body`).
    let Some(room) = budget.room(declared.unwrap_or(cfg.max_body).min(cfg.max_body)) else {
        count(table, r, Outcome::Skipped);
        return None;
    };
    let mut new_head = send::copy_head(head);
    let mut logged = LoggedPath::Owned(Box::from(""));
    if rewrite::rewrite(
        &mut new_head,
        path.clone(),
        new,
        table,
        peer,
        *facts,
        &mut logged,
    )
    .is_err()
    {
        count(table, r, Outcome::Skipped);
        return None;
    }
    Some(Copy::new(
        table.clone(),
        r,
        room,
        new_head,
        path.as_str(&head.uri),
    ))
}

/// Counts a copy of route `r` that ends as `outcome` (without a comparison).
pub fn count(table: &Table, r: usize, outcome: Outcome) {
    let stats = table.stats(Some(r));
    if let Some(report) = &stats.shadow {
        report.count(outcome);
    }
    stats.metrics[0].shadowed(outcome);
}

/// Exports a comparison of route `r`'s copy: its result, each kind of difference, and both
/// sides' times.
fn exported(table: &Table, r: usize, c: &Compared) {
    let metrics = &table.stats(Some(r)).metrics[0];
    metrics.shadowed(c.outcome);
    for k in Kind::ALL {
        if c.kinds[k as usize] {
            metrics.shadow_difference(k);
        }
    }
    metrics.shadow_latency(c.legacy.as_secs_f64(), c.new.as_secs_f64());
}

/// A copy in the making, carried by the request's trail while legacy serves it.
pub struct Copy {
    /// `None` once nothing more is kept (too large, or the budget ran out).
    room: Option<Room>,
    table: Arc<Table>,
    report: Arc<RouteShadow>,
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
    /// The route's `max_body`: legacy's answer beyond it is not kept.
    max_body: u64,
    /// What the copy ends as, when decided before the comparison (too large, starved).
    settled: Option<Outcome>,
    /// Legacy's answer body reached its end (a client that left cuts it short).
    ended: bool,
    /// Counted (in the report and the metric).
    counted: bool,
    method: http::Method,
    path: String,
    /// When legacy was asked, and how long its whole answer took.
    started: Instant,
    legacy_time: Option<Duration>,
}

impl Copy {
    /// A copy of a request of route `route`, with its room in the budget and its head
    /// rewritten for the new side.
    pub fn new(table: Arc<Table>, route: usize, room: Room, new_head: Parts, path: &str) -> Copy {
        let report = table
            .stats(Some(route))
            .shadow
            .clone()
            .expect("copies only of routes with shadow");
        let max_body = table
            .policy(Some(route))
            .shadow
            .as_ref()
            .map_or(0, |s| s.max_body);
        let mut new_head = new_head;
        new_head
            .headers
            .insert(SHADOW_HEADER, HeaderValue::from_static("1"));
        Copy {
            room: Some(room),
            table,
            report,
            route,
            new_head,
            legacy_head: None,
            upload: None,
            legacy_headers: None,
            kept: Vec::new(),
            kept_size: 0,
            max_body,
            settled: None,
            ended: false,
            counted: false,
            method: http::Method::GET,
            path: path.to_string(),
            started: Instant::now(),
            legacy_time: None,
        }
    }

    /// The copy, watching the request as it goes to legacy (see [`Copy::watch_request`]).
    pub fn watching(mut self, body: &mut RequestBody, legacy_head: &Parts) -> Box<Copy> {
        self.watch_request(body, legacy_head);
        Box::new(self)
    }

    /// The request body, kept as it streams to legacy (up to `max_body`), and the head
    /// legacy got (for the noise sample of a safe method: a second copy of a write would
    /// run it twice on legacy).
    pub fn watch_request(&mut self, body: &mut RequestBody, legacy_head: &Parts) {
        let Some(cfg) = self.table.policy(Some(self.route)).shadow.as_ref() else {
            return;
        };
        self.method = legacy_head.method.clone();
        if body.has_body() {
            self.upload = Some(body.tee(cfg.max_body));
        }
        if legacy_head.method.is_safe()
            && cfg
                .noise
                .is_some_and(|n| fastrand::u32(..10_000) < n.sample_bp)
        {
            let mut head = send::copy_head(legacy_head);
            head.headers
                .insert(SHADOW_HEADER, HeaderValue::from_static("1"));
            self.legacy_head = Some(head);
        }
    }

    /// A part of legacy's answer body, as it goes to the client.
    pub fn keep(&mut self, data: &Bytes) {
        if self.settled.is_some() {
            return;
        }
        let n = data.len() as u64;
        let outcome = if self.kept_size + n > self.max_body {
            Outcome::TooLarge
        } else if self.room.as_mut().is_some_and(|r| r.grow(n)) {
            self.kept_size += n;
            self.kept.push(data.clone());
            return;
        } else {
            Outcome::Skipped
        };
        // Nothing more is kept: what was, and the copy's room, are let go at once.
        self.settled = Some(outcome);
        self.kept = Vec::new();
        self.room = None;
    }

    /// Legacy's answer body has ended.
    pub fn legacy_ended(&mut self) {
        self.ended = true;
        self.legacy_time = Some(self.started.elapsed());
    }

    /// Legacy's answer is over (`status`; `failed`: it failed): the copy goes on in a task
    /// of its own, or is counted as what it already is.
    pub fn finish(mut self, status: u16, failed: bool) {
        // Legacy failed, its client left before its end, or its answer could not be kept:
        // nothing to compare against; or no place among the copies under way.
        let goes = !failed && status != 0 && self.ended && self.room.as_mut().is_some_and(Room::go);
        let outcome = self.settled.or((!goes).then_some(Outcome::Skipped));
        let runtime = tokio::runtime::Handle::try_current();
        match (outcome, runtime) {
            (None, Ok(runtime)) => {
                runtime.spawn(async move {
                    match self.run(status).await {
                        Ok(compared) => {
                            self.counted = true;
                            exported(&self.table, self.route, &compared);
                        }
                        Err(outcome) => self.done(outcome, false),
                    }
                });
            }
            (outcome, _) => self.done(outcome.unwrap_or(Outcome::Skipped), true),
        }
    }

    /// Counts the copy as `outcome` (`in_report`: also in the report, which a comparison
    /// has counted itself).
    fn done(&mut self, outcome: Outcome, in_report: bool) {
        if self.counted {
            return;
        }
        self.counted = true;
        if in_report {
            count(&self.table, self.route, outcome);
        } else {
            self.table.stats(Some(self.route)).metrics[0].shadowed(outcome);
        }
    }

    /// Sends the copy and compares: what the comparison found, or what the copy ended as
    /// without one (counted in the report).
    async fn run(&mut self, status: u16) -> Result<Compared, Outcome> {
        let table = self.table.clone();
        let Some(cfg) = table.policy(Some(self.route)).shadow.as_ref() else {
            self.report.count(Outcome::Skipped);
            return Err(Outcome::Skipped);
        };
        let body = match &self.upload {
            None => Vec::new(),
            Some(t) if t.size() > cfg.max_body => {
                self.report.count(Outcome::TooLarge);
                return Err(Outcome::TooLarge);
            }
            // Legacy answered before it read the whole body, or the body had trailers.
            Some(t) => match t.replay() {
                Some(b) => b,
                None => {
                    self.report.count(Outcome::Skipped);
                    return Err(Outcome::Skipped);
                }
            },
        };
        // Legacy's body in one piece, its parts let go at once.
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
        let Some(room) = self.room.as_mut() else {
            self.report.count(Outcome::Skipped);
            return Err(Outcome::Skipped);
        };
        let service = table.new_upstream(self.route);
        let sent = Instant::now();
        // The heads are sent as they are: a copy runs once.
        let new_head = std::mem::replace(&mut self.new_head, Request::new(()).into_parts().0);
        let new = match fetch(table.upstream(service), new_head, &body, cfg.max_body, room).await {
            Ok(a) if a.body.is_some() => a,
            Ok(_) => {
                self.report.count(Outcome::TooLarge);
                return Err(Outcome::TooLarge);
            }
            Err(Fetch::Failed) => {
                self.report.count(Outcome::Error);
                return Err(Outcome::Error);
            }
            Err(Fetch::Starved) => {
                self.report.count(Outcome::Skipped);
                return Err(Outcome::Skipped);
            }
        };
        let times = (self.legacy_time.unwrap_or_default(), sent.elapsed());
        // Legacy against itself, for the sample: what differs there is noise.
        let again = match self.legacy_head.take() {
            Some(head) => fetch(table.upstream(LEGACY), head, &body, cfg.max_body, room)
                .await
                .ok()
                .filter(|a| a.body.is_some()),
            None => None,
        };
        let report = self.report.clone();
        let cfg = cfg.clone();
        let (method, path) = (
            std::mem::take(&mut self.method),
            std::mem::take(&mut self.path),
        );
        // A compressed body may decode to up to `max_body`: not work for these threads.
        let encoded = [&legacy, &new]
            .iter()
            .any(|a| a.headers.contains_key(http::header::CONTENT_ENCODING));
        let compare = move || {
            if let Some(again) = again
                && again.status == legacy.status
            {
                report.learn_noise(&legacy, &again, &cfg);
            }
            let at_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            report.compare(
                &Copied {
                    method: method.as_str(),
                    path: &path,
                },
                &legacy,
                &new,
                &cfg,
                cfg.noise.map(|n| n.threshold),
                at_ms,
                times,
            )
        };
        if !encoded
            && self
                .room
                .as_ref()
                .is_some_and(|r| r.bytes <= INLINE_COMPARE)
        {
            return Ok(compare());
        }
        // Large bodies: a few comparisons at once, on the blocking pool (parsing and
        // walking two large JSON bodies is work the request path's threads must not wait
        // behind, and a parsed body takes several times its size).
        let budget = self.room.as_ref().map(|r| r.budget.clone());
        let _turn = match &budget {
            Some(b) => b.comparing.acquire().await.ok(),
            None => None,
        };
        tokio::task::spawn_blocking(compare).await.map_err(|_| {
            self.report.count(Outcome::Error);
            Outcome::Error
        })
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        // Dropped before it was settled (the request failed on the way): skipped.
        if !self.counted {
            self.done(Outcome::Skipped, true);
        }
    }
}

enum Fetch {
    /// No answer, or a broken one.
    Failed,
    /// The budget had no room for the answer.
    Starved,
}

/// Sends a copy and reads its whole answer (up to `max_body`: a larger body is `None`),
/// kept in `room` until the copy ends.
async fn fetch(
    upstream: &Upstream,
    mut head: Parts,
    body: &[Bytes],
    max_body: u64,
    room: &mut Room,
) -> Result<Answer, Fetch> {
    let endpoint = upstream.endpoint(&mut head, None);
    let target = upstream.target(&endpoint, upstream.timeouts());
    let req = Request::from_parts(head, RequestBody::replayed(body.to_vec()));
    let start = Instant::now();
    let exchange = send::attempt(&target, req, start)
        .await
        .map_err(|_| Fetch::Failed)?;
    let (mut parts, mut incoming) = exchange.response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let mut kept: Vec<Bytes> = Vec::new();
    let mut size = 0u64;
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
            if !room.grow(d.len() as u64) {
                return Err(Fetch::Starved);
            }
            kept.push(d.clone());
        }
        Ok(())
    };
    tokio::time::timeout(upstream.timeout.max(Duration::from_millis(1)), read)
        .await
        .map_err(|_| Fetch::Failed)??;
    if !over && exchange.uploaded.as_ref().is_none_or(|u| u.done()) {
        let mut conn = exchange.conn;
        conn.reclaim(&mut incoming);
        pool::checkin(exchange.key, conn, start);
    }
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: (!over).then(|| match kept.len() {
            1 => kept.pop().unwrap_or_default(),
            _ => Bytes::from(kept.concat()),
        }),
    })
}
