//! Upstreams that fail on cue, for the resilience tests (`tests/e2e/resilience.rs`,
//! `tests/resilience_dns.rs`).
//!
//! A [`FaultServer`] is a small HTTP/1.1 server of its own (not hyper), so that it can do
//! what a well-behaved server never does: reset a connection after reading a request, write
//! half a response head, or stop listening altogether (its listener dropped and every open
//! connection reset) and later come back on the same port. Its behaviour is a [`Mode`],
//! switched at run time; `/healthz` follows the same mode unless [`FaultServer::set_health`]
//! overrides it, and is counted apart from the traffic. Per-request cues, as for
//! `support::Upstream`: `x-test-delay-ms` (wait before answering) and `x-test-status`
//! (answer this status, in modes that answer 200). It records what it reads as
//! `support::Upstream` does ([`Recorded`]).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::upstream::{BodyTally, Recorded};

/// What a [`FaultServer`] does with the requests it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200, with the server's name as body and in `x-upstream`.
    Ok,
    /// This status, with the server's name as body and in `x-upstream`.
    Status(u16),
    /// Waits this long, then answers 200 (the wait is fixed when the request arrives).
    Stall(Duration),
    /// Waits until [`FaultServer::release`] (60 s at most), then answers 200.
    Hold,
    /// Reads the whole request, then resets the connection (RST) without a byte of answer.
    Reset,
    /// Reads the whole request, writes part of a response head, then closes the connection.
    PartialHead,
}

struct Shared {
    name: &'static str,
    mode: Mutex<Mode>,
    /// Overrides the status `/healthz` answers with (`None`: it follows the mode).
    health: Mutex<Option<u16>>,
    requests: AtomicUsize,
    health_checks: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    seen: Mutex<Vec<Recorded>>,
    /// Bumped by `release`: held requests answer.
    release: watch::Sender<u64>,
    /// Bumped by `refuse` (and on drop): every open connection is reset.
    kill: watch::Sender<u64>,
}

/// An upstream on `127.0.0.1:0` (or a given address) whose behaviour is switched at run
/// time. See the module's documentation.
pub struct FaultServer {
    pub name: &'static str,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl FaultServer {
    /// A server on `127.0.0.1:0`, in [`Mode::Ok`].
    pub async fn start(name: &'static str) -> FaultServer {
        FaultServer::start_at(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// A server on `addr` (port 0: any), in [`Mode::Ok`].
    pub async fn start_at(name: &'static str, addr: SocketAddr) -> FaultServer {
        let listener = bind(addr).await;
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            name,
            mode: Mutex::new(Mode::Ok),
            health: Mutex::new(None),
            requests: AtomicUsize::new(0),
            health_checks: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            release: watch::channel(0).0,
            kill: watch::channel(0).0,
        });
        let acceptor = accept_loop(listener, shared.clone());
        FaultServer {
            name,
            addr,
            shared,
            acceptor: Mutex::new(Some(acceptor)),
        }
    }

    /// `http://ip:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ip:port`: the `instance` label of its metrics.
    pub fn label(&self) -> String {
        self.addr.to_string()
    }

    pub fn set(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    pub fn mode(&self) -> Mode {
        *self.shared.mode.lock().unwrap()
    }

    /// Makes `/healthz` answer `status` whatever the mode (`None`: follow the mode again).
    pub fn set_health(&self, status: Option<u16>) {
        *self.shared.health.lock().unwrap() = status;
    }

    /// Requests read in full, `/healthz` aside (those reset after reading included).
    pub fn count(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// `/healthz` requests read.
    pub fn health_count(&self) -> usize {
        self.shared.health_checks.load(Ordering::SeqCst)
    }

    /// Requests being answered now (read, not yet answered or reset).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests it was answering at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// The requests read in full so far, `/healthz` aside.
    pub fn seen(&self) -> Vec<Recorded> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Lets every request held by [`Mode::Hold`] answer.
    pub fn release(&self) {
        self.shared.release.send_modify(|g| *g += 1);
    }

    /// Whether it is listening (not [`refuse`](Self::refuse)d).
    pub fn listening(&self) -> bool {
        self.acceptor.lock().unwrap().is_some()
    }

    /// Stops listening: the listener is closed (new connections are refused) and every
    /// open connection is reset, requests under way included.
    pub async fn refuse(&self) {
        let acceptor = self.acceptor.lock().unwrap().take();
        if let Some(h) = acceptor {
            h.abort();
            // Awaited, so that the listener is closed on return.
            let _ = h.await;
        }
        self.shared.kill.send_modify(|g| *g += 1);
    }

    /// Listens again, on the same address.
    pub async fn restore(&self) {
        if self.listening() {
            return;
        }
        let listener = bind(self.addr).await;
        *self.acceptor.lock().unwrap() = Some(accept_loop(listener, self.shared.clone()));
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        if let Some(h) = self.acceptor.lock().unwrap().take() {
            h.abort();
        }
        self.shared.kill.send_modify(|g| *g += 1);
    }
}

/// Binds `addr`, trying again for 10 s (a port just let go of may still be taken).
async fn bind(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot bind {addr}: {e}"),
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let shared = shared.clone();
            let mut kill = shared.kill.subscribe();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                // A second handle on the socket, to reset it when the connection is killed
                // (the first one goes with the dropped exchange).
                let Ok(guard) = stream.as_fd().try_clone_to_owned() else {
                    return;
                };
                tokio::select! {
                    _ = serve(stream, peer, &shared) => {}
                    _ = kill.changed() => {
                        let _ = socket2::SockRef::from(&guard).set_linger(Some(Duration::ZERO));
                    }
                }
                drop(guard);
            });
        }
    })
}

/// A request read off a connection.
struct Request {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn number(&self, name: &str) -> Option<u64> {
        self.header(name)?.trim().parse().ok()
    }

    /// What the tests see of it.
    fn record(&self, peer: SocketAddr) -> Recorded {
        let mut tally = BodyTally::default();
        tally.add(&self.body);
        let mut headers = http::HeaderMap::new();
        for (k, v) in &self.headers {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                headers.append(k, v);
            }
        }
        let version = match self.version.as_str() {
            "HTTP/1.0" => http::Version::HTTP_10,
            _ => http::Version::HTTP_11,
        };
        tally.record(
            self.method.clone(),
            self.target.clone(),
            version,
            headers,
            peer,
        )
    }

    /// Whether the connection ends after this exchange.
    fn closes(&self) -> bool {
        let conn = self.header("connection").unwrap_or("").to_ascii_lowercase();
        if self.version == "HTTP/1.0" {
            !conn.contains("keep-alive")
        } else {
            conn.contains("close")
        }
    }
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Reads more; `false` at the end of the stream.
    async fn fill(&mut self) -> std::io::Result<bool> {
        self.buf.reserve(16 * 1024);
        Ok(self.stream.read_buf(&mut self.buf).await? > 0)
    }

    /// Bytes up to and including `delim`, taken off the buffer.
    async fn until(&mut self, delim: &[u8], limit: usize) -> Option<Vec<u8>> {
        let mut from = 0;
        loop {
            if let Some(p) = self.buf[from..]
                .windows(delim.len())
                .position(|w| w == delim)
            {
                let end = from + p + delim.len();
                return Some(self.buf.drain(..end).collect());
            }
            if self.buf.len() > limit {
                return None;
            }
            from = self.buf.len().saturating_sub(delim.len() - 1);
            if !self.fill().await.ok()? {
                return None;
            }
        }
    }

    async fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await.ok()? {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// The next request, body included (`Content-Length` or chunked); `None` when the
    /// connection ends (or sends what is not HTTP/1).
    async fn request(&mut self) -> Option<Request> {
        let head = self.until(b"\r\n\r\n", 1 << 20).await?;
        let text = String::from_utf8_lossy(&head);
        let mut lines = text.split("\r\n");
        let mut first = lines.next()?.split(' ');
        let (method, target, version) = (
            first.next()?.to_string(),
            first.next()?.to_string(),
            first.next().unwrap_or("HTTP/1.1").to_string(),
        );
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut req = Request {
            method,
            target,
            version,
            headers,
            body: Vec::new(),
        };
        let chunked = req
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                let line = self.until(b"\r\n", 4096).await?;
                let size = String::from_utf8_lossy(&line);
                let size = size.split(';').next()?.trim();
                let size = usize::from_str_radix(size, 16).ok()?;
                if size == 0 {
                    // Trailers, up to an empty line.
                    while self.until(b"\r\n", 64 * 1024).await?.len() > 2 {}
                    break;
                }
                let data = self.take(size).await?;
                req.body.extend_from_slice(&data);
                self.take(2).await?;
            }
        } else if let Some(n) = req.number("content-length") {
            req.body = self.take(n as usize).await?;
        }
        Some(req)
    }

    async fn answer(&mut self, req: &Request, status: u16, name: &str) -> std::io::Result<()> {
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Other");
        let close = if req.closes() {
            "connection: close\r\n"
        } else {
            ""
        };
        let mut out = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-upstream: {name}\r\n{close}\r\n",
            name.len()
        )
        .into_bytes();
        if req.method != "HEAD" {
            out.extend_from_slice(name.as_bytes());
        }
        self.stream.write_all(&out).await
    }

    /// Resets the connection: RST, nothing more written.
    fn reset(self) {
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
        drop(self);
    }

    /// Writes part of a response head, then closes.
    async fn partial_head(mut self) {
        let _ = self
            .stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/pl")
            .await;
        let _ = self.stream.flush().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = self.stream.shutdown().await;
    }
}

/// Counts a request under way until dropped.
struct Busy<'a>(&'a Shared);

impl<'a> Busy<'a> {
    fn new(s: &'a Shared) -> Busy<'a> {
        let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Busy(s)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(stream: TcpStream, peer: SocketAddr, shared: &Shared) {
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
    };
    let name = shared.name;
    while let Some(req) = conn.request().await {
        let mode = *shared.mode.lock().unwrap();
        let path = req.target.split('?').next().unwrap_or("");
        if path == "/healthz" {
            shared.health_checks.fetch_add(1, Ordering::SeqCst);
            let forced = *shared.health.lock().unwrap();
            let status = match (forced, mode) {
                (Some(s), _) => s,
                (None, Mode::Ok | Mode::Hold) => 200,
                (None, Mode::Status(s)) => s,
                (None, Mode::Stall(d)) => {
                    tokio::time::sleep(d).await;
                    200
                }
                (None, Mode::Reset) => return conn.reset(),
                (None, Mode::PartialHead) => return conn.partial_head().await,
            };
            if conn.answer(&req, status, name).await.is_err() || req.closes() {
                return;
            }
            continue;
        }
        // Subscribed before the request is counted as under way: a test that sees it under
        // way and then releases it cannot be missed.
        let mut released = shared.release.subscribe();
        let _busy = Busy::new(shared);
        shared.seen.lock().unwrap().push(req.record(peer));
        shared.requests.fetch_add(1, Ordering::SeqCst);
        if let Some(ms) = req.number("x-test-delay-ms") {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let cue = req
            .number("x-test-status")
            .and_then(|s| u16::try_from(s).ok());
        let status = match mode {
            Mode::Ok => cue.unwrap_or(200),
            Mode::Status(s) => s,
            Mode::Stall(d) => {
                tokio::time::sleep(d).await;
                cue.unwrap_or(200)
            }
            Mode::Hold => {
                let _ = tokio::time::timeout(Duration::from_secs(60), released.changed()).await;
                cue.unwrap_or(200)
            }
            Mode::Reset => return conn.reset(),
            Mode::PartialHead => return conn.partial_head().await,
        };
        if conn.answer(&req, status, name).await.is_err() || req.closes() {
            return;
        }
    }
}

/// Waits (`limit` at most, checking every 50 ms) until `check` holds; panics with `what`
/// otherwise.
pub async fn eventually(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `[http://a, http://b, ...]`: a YAML flow list of the servers' URLs.
pub fn urls(servers: &[&FaultServer]) -> String {
    let list: Vec<String> = servers.iter().map(|s| s.url()).collect();
    format!("[{}]", list.join(", "))
}

/// The series of `strangler_instance_healthy` for an instance of `service`.
pub fn healthy_series(service: &str, instance: &str) -> String {
    format!("strangler_instance_healthy{{instance=\"{instance}\",service=\"{service}\"}}")
}

/// The series of `strangler_instance_ejected` for an instance of `service`.
pub fn ejected_series(service: &str, instance: &str) -> String {
    format!("strangler_instance_ejected{{instance=\"{instance}\",service=\"{service}\"}}")
}

/// The series of `strangler_breaker_state` for `service`.
pub fn breaker_series(service: &str) -> String {
    format!("strangler_breaker_state{{service=\"{service}\"}}")
}

/// The series of `strangler_fallbacks_total` for `route` and `reason`.
pub fn fallbacks_series(route: &str, reason: &str) -> String {
    format!("strangler_fallbacks_total{{reason=\"{reason}\",route=\"{route}\"}}")
}

/// The series of `strangler_retries_total` for `route` (new side).
pub fn retries_series(route: &str) -> String {
    format!("strangler_retries_total{{route=\"{route}\",side=\"new\"}}")
}

/// The series of `strangler_requests_total`.
pub fn requests_series(route: &str, side: &str, method: &str, code: u16) -> String {
    format!(
        "strangler_requests_total{{code=\"{code}\",method=\"{method}\",route=\"{route}\",side=\"{side}\"}}"
    )
}

/// What a client got from the gateway.
#[derive(Debug, Clone)]
pub struct Got {
    pub status: u16,
    /// `x-upstream` (empty when absent).
    pub upstream: String,
    pub body: Bytes,
    pub took: Duration,
}

/// Sends a request through the gateway and reads the whole answer.
pub async fn send(req: reqwest::RequestBuilder) -> Got {
    let started = Instant::now();
    let r = req
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("an answer from the gateway");
    let status = r.status().as_u16();
    let upstream = r
        .headers()
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = r.bytes().await.unwrap();
    Got {
        status,
        upstream,
        body,
        took: started.elapsed(),
    }
}
