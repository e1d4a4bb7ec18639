//! The tests' HTTP upstream, and the one record of what any test upstream received.
//!
//! An [`Upstream`] is an HTTP/1.1 server (hyper) on `127.0.0.1:0` whose every answer a
//! script decides from the request ([`Upstream::scripted`]). [`Upstream::start`] runs the
//! script of cues: request headers the upstream reads (they pass through the gateway
//! unchanged): `x-test-delay-ms` (wait before answering), `x-test-status` (answer this
//! status), `x-test-body-bytes` (answer a body of that many bytes, streamed in 64 KiB
//! chunks); otherwise 200 with its name as the body and in `x-upstream`. [`Flaky`] is one
//! whose script fails a share of the requests.
//!
//! Every request is recorded ([`Recorded`], as `support::faults::FaultServer` records those
//! it reads) once its body is read, before the answer's delay, if any.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bodies up to this size are kept whole in their record.
pub const KEPT_BODY: u64 = 64 * 1024;

/// What an upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query exactly as received on the request line.
    pub target: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body_len: u64,
    pub body_hash: u64,
    /// The body itself when at most [`KEPT_BODY`].
    pub body: Option<Bytes>,
    /// The address the request came from: one per upstream connection.
    pub peer: SocketAddr,
    /// When it was read in full (before any delay of the answer).
    pub at: Instant,
}

impl Recorded {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The last path segment parsed as a number (`/api/items/7` → 7).
    pub fn id(&self) -> Option<u64> {
        self.path().rsplit('/').next()?.parse().ok()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Whether it carries `X-Strangler-Shadow: 1` (a gateway's shadow copy).
    pub fn shadow(&self) -> bool {
        self.header("x-strangler-shadow") == Some("1")
    }
}

/// A request body's length, hash and (when small) bytes, as it streams in.
#[derive(Default)]
pub struct BodyTally {
    len: u64,
    hasher: xxhash_rust::xxh3::Xxh3,
    kept: Vec<u8>,
}

impl BodyTally {
    pub fn add(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        self.hasher.update(data);
        if self.kept.len() + data.len() <= KEPT_BODY as usize {
            self.kept.extend_from_slice(data);
        }
    }

    /// The record of a request with this body.
    pub fn record(
        self,
        method: String,
        target: String,
        version: http::Version,
        headers: HeaderMap,
        peer: SocketAddr,
    ) -> Recorded {
        Recorded {
            method,
            target,
            version,
            headers,
            body_len: self.len,
            body_hash: self.hasher.digest(),
            body: (self.len <= KEPT_BODY).then(|| Bytes::from(self.kept)),
            peer,
            at: Instant::now(),
        }
    }
}

/// What an [`Upstream`] answers to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Instead of `body`: this many bytes, streamed in 64 KiB chunks without a
    /// `Content-Length` (byte `i` of each chunk is the chunk's offset % 251).
    pub streamed: Option<u64>,
    /// Waited before answering.
    pub delay: Duration,
    /// Whether the answer waits for [`Upstream::release`] (120 s at most).
    pub held: bool,
}

impl Reply {
    /// 200 with `value` as an `application/json` body.
    pub fn json(value: &serde_json::Value) -> Reply {
        Reply::bytes("application/json", Bytes::from(value.to_string()))
    }

    /// 200 with `body` of type `content_type`.
    pub fn bytes(content_type: &str, body: impl Into<Bytes>) -> Reply {
        Reply::plain(body).header("content-type", content_type)
    }

    /// 200 with `body`, and no header at all.
    pub fn plain(body: impl Into<Bytes>) -> Reply {
        Reply {
            status: 200,
            headers: Vec::new(),
            body: body.into(),
            streamed: None,
            delay: Duration::ZERO,
            held: false,
        }
    }

    /// The answer of the cues (see the module's documentation) of an upstream named `name`.
    pub fn cued(name: &str, r: &Recorded) -> Reply {
        let number = |h: &str| -> Option<u64> { r.header(h)?.parse().ok() };
        let mut reply =
            Reply::plain(Bytes::copy_from_slice(name.as_bytes())).header("x-upstream", name);
        if let Some(ms) = number("x-test-delay-ms") {
            reply.delay = Duration::from_millis(ms);
        }
        if let Some(s) = number("x-test-status").and_then(|s| StatusCode::from_u16(s as u16).ok()) {
            reply.status = s.as_u16();
        }
        reply.streamed = number("x-test-body-bytes");
        reply
    }

    pub fn status(mut self, status: u16) -> Reply {
        self.status = status;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Answers after `delay`.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    /// Answers only once [`Upstream::release`] is called.
    pub fn held(mut self) -> Reply {
        self.held = true;
        self
    }
}

type Script = dyn Fn(&Recorded) -> Reply + Send + Sync;

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

struct Shared {
    script: Box<Script>,
    seen: Mutex<Vec<Recorded>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    released: watch::Sender<bool>,
}

/// An HTTP/1.1 upstream on `127.0.0.1:0` that records what it reads and answers as its
/// script says. Stops listening when dropped.
pub struct Upstream {
    pub name: &'static str,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: JoinHandle<()>,
}

impl Upstream {
    /// An upstream that answers by the cues, `name` as its body and in `x-upstream`.
    pub async fn start(name: &'static str) -> Upstream {
        Upstream::with(name, move |r| Reply::cued(name, r)).await
    }

    /// An upstream whose every answer `script` decides from the request.
    pub async fn scripted(script: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Upstream {
        Upstream::with("scripted", script).await
    }

    async fn with(
        name: &'static str,
        script: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            script: Box::new(script),
            seen: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            released: watch::channel(false).0,
        });
        let s = shared.clone();
        let acceptor = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(answer(&s, req, peer).await) }
                    });
                    let _ = http1::Builder::new()
                        .max_headers(512)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            name,
            addr,
            shared,
            acceptor,
        }
    }

    /// `http://ip:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests read in full so far.
    pub fn count(&self) -> usize {
        self.shared.seen.lock().unwrap().len()
    }

    /// The requests read in full so far, in order of arrival.
    pub fn seen(&self) -> Vec<Recorded> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// The last request read.
    pub fn last(&self) -> Recorded {
        self.shared
            .seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream received a request")
    }

    /// Forgets the requests read so far.
    pub fn clear(&self) {
        self.shared.seen.lock().unwrap().clear();
    }

    /// Requests read so far that carried `X-Strangler-Shadow: 1`.
    pub fn shadow_count(&self) -> usize {
        self.shared
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.shadow())
            .count()
    }

    /// Requests read and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests it held at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Lets every held answer go, and every later one go at once.
    pub fn release(&self) {
        self.shared.released.send_replace(true);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.release();
    }
}

async fn answer(s: &Shared, req: Request<Incoming>, peer: SocketAddr) -> Response<TestBody> {
    let (parts, mut body) = req.into_parts();
    let mut tally = BodyTally::default();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(d) = frame.data_ref() {
            tally.add(d);
        }
    }
    let recorded = tally.record(
        parts.method.to_string(),
        parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        parts.version,
        parts.headers,
        peer,
    );
    let reply = (s.script)(&recorded);
    let mut released = s.released.subscribe();
    s.seen.lock().unwrap().push(recorded);
    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_in_flight.fetch_max(now, Ordering::SeqCst);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    if reply.held {
        let _ = tokio::time::timeout(Duration::from_secs(120), released.wait_for(|r| *r)).await;
    }
    s.in_flight.fetch_sub(1, Ordering::SeqCst);
    let mut resp = match reply.streamed {
        // A deterministic streamed body of n bytes, without Content-Length (chunked).
        Some(n) => {
            let chunks = futures_util::stream::unfold(0u64, move |sent| async move {
                if sent >= n {
                    return None;
                }
                let k = (n - sent).min(64 * 1024) as usize;
                let chunk = Bytes::from(vec![(sent % 251) as u8; k]);
                Some((Ok::<_, Infallible>(Frame::data(chunk)), sent + k as u64))
            });
            Response::new(StreamBody::new(chunks).boxed())
        }
        None => Response::new(Full::new(reply.body).boxed()),
    };
    *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    for (k, v) in &reply.headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            resp.headers_mut().append(k, v);
        }
    }
    resp
}

/// An upstream answering 200 (`ok`), or 500 for `fail_permille` of its requests.
pub struct Flaky {
    pub addr: SocketAddr,
    pub fail_permille: Arc<AtomicU32>,
    pub upstream: Upstream,
}

impl Flaky {
    pub async fn start() -> Flaky {
        let fail_permille = Arc::new(AtomicU32::new(0));
        let fail = fail_permille.clone();
        let upstream = Upstream::scripted(move |_| {
            let failing = fastrand::u32(0..1000) < fail.load(Ordering::Relaxed);
            Reply::plain("ok").status(if failing { 500 } else { 200 })
        })
        .await;
        Flaky {
            addr: upstream.addr,
            fail_permille,
            upstream,
        }
    }

    pub fn url(&self) -> String {
        self.upstream.url()
    }
}
