//! Forwarding (CONTRACT §5): one request from the client to the chosen side and back.
//!
//! Owns the request path: canonicalize, route, choose the side, rewrite headers, send through
//! the pooled client, stream the answer back, and count it. Bodies are never buffered: the
//! client's body is handed to the upstream request and the upstream's body to the response.
//! Errors the gateway makes itself are JSON (`error`, `route`, `side`, `request_id`).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use smallvec::SmallVec;

use crate::accesslog::{AccessLog, Entry};
use crate::canon;
use crate::metrics::{METHODS, UpstreamErrorKind, method_index};
use crate::pool::{self, PoolKey, Sender};
use crate::side::{self, Reason, RequestKeys, Side};
use crate::table::{Route, RouteTable};
use std::future::Future as _;

/// Longest request target accepted (414 beyond).
pub const MAX_URI_LEN: usize = 8 * 1024;
/// Largest total size of request headers accepted (431 beyond).
pub const MAX_HEADERS_BYTES: usize = 32 * 1024;

/// The status recorded for a request whose client left before the response head.
pub const CLIENT_CLOSED: u16 = 499;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// What a connection knows of its peer, computed once per connection.
pub struct Peer {
    pub addr: SocketAddr,
    /// The peer IP as a header value, for `X-Forwarded-For`.
    pub ip_header: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            ip_header: HeaderValue::from_str(&addr.ip().to_string())
                .expect("an IP address is a valid header value"),
        }
    }
}

/// The shared state of the request path.
pub struct Gateway {
    pub table: ArcSwap<RouteTable>,
    pub access_log: Arc<AccessLog>,
}

/// The kinds of error the gateway answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayError {
    BadRequest,
    UpstreamUnavailable,
    UpstreamTimeout,
    UriTooLong,
    HeadersTooLarge,
}

impl GatewayError {
    pub fn status(self) -> StatusCode {
        match self {
            GatewayError::BadRequest => StatusCode::BAD_REQUEST,
            GatewayError::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::UriTooLong => StatusCode::URI_TOO_LONG,
            GatewayError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }
    pub fn code(self) -> &'static str {
        match self {
            GatewayError::BadRequest => "bad_request",
            GatewayError::UpstreamUnavailable => "upstream_unavailable",
            GatewayError::UpstreamTimeout => "upstream_timeout",
            GatewayError::UriTooLong => "uri_too_long",
            GatewayError::HeadersTooLarge => "headers_too_large",
        }
    }
}

/// The JSON body of a gateway-made error.
pub fn error_body(
    err: GatewayError,
    route: Option<&str>,
    side: Option<Side>,
    request_id: &str,
) -> Bytes {
    let mut s = String::with_capacity(128);
    s.push_str("{\"error\":\"");
    s.push_str(err.code());
    s.push_str("\",\"route\":");
    match route {
        Some(r) => crate::accesslog::json_str(&mut s, r),
        None => s.push_str("null"),
    }
    s.push_str(",\"side\":");
    match side {
        Some(sd) => crate::accesslog::json_str(&mut s, sd.as_str()),
        None => s.push_str("null"),
    }
    s.push_str(",\"request_id\":");
    crate::accesslog::json_str(&mut s, request_id);
    s.push_str("}\n");
    Bytes::from(s)
}

/// Whether a client's `X-Request-Id` is kept: 1 to 128 of `A-Z a-z 0-9 . _ -`.
pub fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut buf = [0u8; 32];
    for b in buf.iter_mut() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value")
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
}

/// Removes hop-by-hop headers (§5): `Connection` and the names it lists, and the fixed set.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none, and most of the rest one (`Connection: keep-alive`): find
    // the present ones in one pass, then remove only those.
    let present: SmallVec<[HeaderName; 4]> =
        h.keys().filter(|n| is_hop_by_hop(n)).cloned().collect();
    if present.is_empty() {
        return;
    }
    let mut listed: SmallVec<[HeaderName; 4]> = SmallVec::new();
    for v in h.get_all(header::CONNECTION) {
        if let Ok(s) = v.to_str() {
            for token in s.split(',').map(str::trim) {
                // `close` and `keep-alive` are options, not names of other headers.
                if token.eq_ignore_ascii_case("close") || token.eq_ignore_ascii_case("keep-alive") {
                    continue;
                }
                if let Ok(n) = HeaderName::from_bytes(token.as_bytes()) {
                    listed.push(n);
                }
            }
        }
    }
    for n in present.into_iter().chain(listed) {
        h.remove(n);
    }
}

/// What the forwarder records about a request until its response ends.
struct Completion {
    table: Arc<RouteTable>,
    /// Index of the route, or `None` for the default route.
    route: Option<usize>,
    side: Side,
    reason: Reason,
    method: usize,
    status: u16,
    start: Instant,
    request_id: HeaderValue,
    path: LoggedPath,
    upstream: usize,
    bytes_in: u64,
    bytes_out: u64,
    error: Option<&'static str>,
    log: Arc<AccessLog>,
}

/// The path the access log shows: the canonical path, kept without a copy when the request's
/// own target was already canonical.
enum LoggedPath {
    Target(PathAndQuery),
    Owned(Box<str>),
}

impl LoggedPath {
    fn as_str(&self) -> &str {
        match self {
            LoggedPath::Target(pq) => pq.path(),
            LoggedPath::Owned(s) => s,
        }
    }
}

impl Completion {
    fn route(&self) -> &Route {
        match self.route {
            Some(i) => &self.table.routes[i],
            None => &self.table.default_route,
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        if self.status == 0 {
            // The client left before any response: nginx's 499, "client closed request".
            self.status = CLIENT_CLOSED;
            self.error.get_or_insert("client_closed");
        }
        let route = self.route();
        route.metrics[self.side.index()].record(self.method, self.status, elapsed.as_secs_f64());
        // Errors for the comparison: 5xx answers and gateway failures (which are 5xx); a
        // client that left (499) is neither side's failure.
        route.window.record(
            self.side,
            self.start,
            elapsed,
            self.status >= 500 && self.status != CLIENT_CLOSED,
        );
        let upstream = &self.table.upstreams[self.upstream];
        self.log.log(&Entry {
            start: self.start,
            request_id: self.request_id.to_str().unwrap_or("-"),
            method: METHODS[self.method],
            path: self.path.as_str(),
            status: self.status,
            duration: elapsed,
            route: &route.name,
            side: self.side.as_str(),
            reason: self.reason.as_str(),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            upstream: upstream.authority.as_str(),
            error: self.error,
        });
    }
}

/// The client's request body on its way upstream. Marks when it has been sent in full, so
/// the connection is reused only once both directions are done, and the head timeout does
/// not run out during a slow upload.
pub struct RequestBody {
    /// `None`: an empty body (a replayed bodiless request).
    inner: Option<Incoming>,
    /// `None` for a request without a body (nothing to wait for).
    sent: Option<Arc<AtomicBool>>,
}

impl RequestBody {
    pub fn new(inner: Incoming) -> RequestBody {
        let sent = (!inner.is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
        RequestBody {
            inner: Some(inner),
            sent,
        }
    }

    fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            sent: None,
        }
    }

    fn mark_sent(&self) {
        if let Some(s) = &self.sent {
            s.store(true, Ordering::Release);
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || inner.is_end_stream() {
            this.mark_sent();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.as_ref().is_none_or(Body::is_end_stream);
        if end {
            self.mark_sent();
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// An upstream connection held by the response it carries.
struct Held {
    key: PoolKey,
    sender: Sender,
    /// When the exchange started (the connection's idle clock starts no later).
    since: Instant,
    /// The request body's completion flag, if it had one.
    uploaded: Option<Arc<AtomicBool>>,
}

impl Held {
    /// Returns the connection to the pool if both directions of the exchange are complete;
    /// otherwise drops it, which closes it.
    fn release(self) {
        if self
            .uploaded
            .as_ref()
            .is_none_or(|u| u.load(Ordering::Acquire))
        {
            pool::checkin(self.key, self.sender, self.since);
        }
    }
}

/// Errors of a response body, for hyper's server.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A response body: the upstream's, streamed, or one the gateway made. Counts bytes and
/// records the request when it ends or is dropped.
pub struct GatewayBody {
    inner: Inner,
    done: Option<Completion>,
    /// The upstream connection that carries `inner`, given back to the pool when the body
    /// has ended (and closed when it is dropped before that).
    conn: Option<Held>,
    /// Bounds each wait for more of the upstream's body; made on the first wait.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    read_timeout: Duration,
}

enum Inner {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl GatewayBody {
    /// A complete body with no accounting (admin answers, demo servers).
    pub fn full(b: impl Into<Bytes>) -> GatewayBody {
        GatewayBody {
            inner: Inner::Full(Some(b.into())),
            done: None,
            conn: None,
            idle: None,
            read_timeout: Duration::ZERO,
        }
    }

    /// Records a failure of the upstream's body against the upstream.
    fn upstream_failed(&mut self, kind: UpstreamErrorKind, what: &'static str) {
        if let Some(done) = self.done.as_mut() {
            done.route().metrics[done.side.index()].upstream_error(kind);
            done.error = Some(what);
        }
        self.done = None;
        self.conn = None;
    }
}

impl Drop for GatewayBody {
    fn drop(&mut self) {
        // A body without frames (HEAD, 204, 304, empty) may never be polled.
        if let Some(held) = self.conn.take()
            && self.is_end_stream()
        {
            held.release();
        }
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Upstream(b) => Pin::new(b).poll_frame(cx),
            Inner::Full(b) => return Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(d), Some(done)) = (frame.data_ref(), this.done.as_mut()) {
                    done.bytes_out += d.len() as u64;
                }
                if let Some(idle) = this.idle.as_mut() {
                    idle.as_mut()
                        .reset((Instant::now() + this.read_timeout).into());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                if let Some(held) = this.conn.take() {
                    held.release();
                }
                this.done = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.upstream_failed(UpstreamErrorKind::Reset, "upstream_body");
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => {
                let timeout = this.read_timeout;
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if idle.as_mut().poll(cx).is_ready() {
                    this.upstream_failed(UpstreamErrorKind::Timeout, "upstream_body_timeout");
                    let err = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the upstream sent nothing more within its timeout",
                    );
                    return Poll::Ready(Some(Err(err.into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
        }
    }
}

/// How an exchange with an upstream failed.
enum ExchangeError {
    Connect(std::io::Error),
    Http(hyper::Error),
}

impl ExchangeError {
    /// The metrics' `kind` label.
    fn kind(&self) -> UpstreamErrorKind {
        match self {
            ExchangeError::Connect(_) => UpstreamErrorKind::Connect,
            ExchangeError::Http(e) if e.is_parse() || e.is_parse_status() => {
                UpstreamErrorKind::Protocol
            }
            ExchangeError::Http(_) => UpstreamErrorKind::Reset,
        }
    }

    /// The failure came from the client's side: its request body failed (the client left
    /// mid-upload), or its request could not be written as given.
    fn is_client_side(&self) -> bool {
        matches!(self, ExchangeError::Http(e) if e.is_user())
    }
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::Connect(e) => write!(f, "connect: {e}"),
            ExchangeError::Http(e) => write!(f, "{e}"),
        }
    }
}

/// Sends `req` on a pooled connection to `upstream`. A reused connection that turns out to
/// be closed before the request was written is replaced by a new one (the request was not
/// sent, so this is safe for any method); any other failure is final.
async fn exchange(
    upstream: &crate::table::Upstream,
    mut req: Request<RequestBody>,
    now: Instant,
) -> Result<(Sender, Response<Incoming>), ExchangeError> {
    // A bodiless idempotent request may go out once more, on a new connection, when a
    // reused connection fails before any answer: the upstream closed it (its idle timeout)
    // just as the request went out. That needs a copy of the head, made before sending.
    let mut replay = (req.body().sent.is_none() && req.method().is_idempotent()).then(|| {
        let mut r = Request::new(RequestBody::empty());
        *r.method_mut() = req.method().clone();
        *r.uri_mut() = req.uri().clone();
        *r.version_mut() = req.version();
        *r.headers_mut() = req.headers().clone();
        r
    });
    let mut new_only = false;
    loop {
        let mut co = if new_only {
            pool::open(&upstream.authority).await
        } else {
            pool::checkout(upstream.pool_key, &upstream.authority, now).await
        }
        .map_err(ExchangeError::Connect)?;
        match co.sender.try_send_request(req).await {
            Ok(resp) => return Ok((co.sender, resp)),
            Err(mut e) => match e.take_message() {
                Some(unsent) if !co.fresh => req = unsent,
                None if !co.fresh && replay.is_some() && closed_under_us(e.error()) => {
                    tracing::debug!(error = %e.error(), "a reused upstream connection was closed: replaying on a new one");
                    req = replay.take().expect("checked is_some");
                    new_only = true;
                }
                _ => return Err(ExchangeError::Http(e.into_error())),
            },
        }
    }
}

/// The connection ended under a request without any answer: EOF or reset.
fn closed_under_us(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        source = s.source();
    }
    false
}

fn total_header_bytes(h: &HeaderMap) -> usize {
    h.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum()
}

/// The client IP for sticky keys: the peer, or, behind trusted proxies, the nearest
/// untrusted address of `X-Forwarded-For`.
fn client_ip(table: &RouteTable, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    if !table.trusted_proxies.iter().any(|n| n.contains(&peer)) {
        return peer;
    }
    let mut ip = peer;
    let values: Vec<&HeaderValue> = headers.get_all(&X_FORWARDED_FOR).iter().collect();
    for v in values.iter().rev() {
        let Ok(s) = v.to_str() else { return ip };
        for part in s.rsplit(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(a) => {
                    ip = a;
                    if !table.trusted_proxies.iter().any(|n| n.contains(&a)) {
                        return a;
                    }
                }
                Err(_) => return ip,
            }
        }
    }
    ip
}

impl Gateway {
    pub fn new(table: RouteTable, access_log: Arc<AccessLog>) -> Arc<Gateway> {
        Arc::new(Gateway {
            table: ArcSwap::from_pointee(table),
            access_log,
        })
    }

    /// Serves one request.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        peer: &Peer,
    ) -> Result<Response<GatewayBody>, Infallible> {
        let start = Instant::now();
        let table = self.table.load_full();
        let (mut parts, body) = req.into_parts();
        let method = method_index(&parts.method);
        // Hop-by-hop headers go before the gateway adds its own, so a client cannot have
        // them removed by naming them in `Connection`.
        strip_hop_by_hop(&mut parts.headers);
        // Room for the headers the gateway adds, so the map grows at most once.
        parts.headers.reserve(4);

        let request_id = match parts.headers.get(&X_REQUEST_ID) {
            Some(v) if valid_request_id(v.as_bytes()) => v.clone(),
            _ => {
                let id = new_request_id();
                parts.headers.insert(X_REQUEST_ID, id.clone());
                id
            }
        };

        let mut c = Completion {
            table: table.clone(),
            route: None,
            side: Side::Legacy,
            reason: Reason::Unmatched,
            method,
            status: 0,
            start,
            request_id,
            path: LoggedPath::Owned(Box::from("")),
            upstream: crate::table::LEGACY,
            bytes_in: 0,
            bytes_out: 0,
            error: None,
            log: self.access_log.clone(),
        };

        // Requests rejected before routing are counted under `default`, legacy.
        let uri_len = parts.uri.path_and_query().map_or(0, |p| p.as_str().len());
        if uri_len > MAX_URI_LEN {
            return Ok(gateway_error(c, GatewayError::UriTooLong, false));
        }
        if total_header_bytes(&parts.headers) > MAX_HEADERS_BYTES {
            return Ok(gateway_error(c, GatewayError::HeadersTooLarge, false));
        }
        if parts.method == Method::CONNECT {
            return Ok(gateway_error(c, GatewayError::BadRequest, false));
        }
        // One Host, and one is required of HTTP/1.1 (RFC 9112 §3.2): two would let the
        // gateway and the upstream disagree about which site is asked for.
        let mut hosts = parts.headers.get_all(header::HOST).iter();
        let has_host = hosts.next().is_some();
        if hosts.next().is_some() || (!has_host && parts.version == Version::HTTP_11) {
            return Ok(gateway_error(c, GatewayError::BadRequest, false));
        }
        let raw_path = parts.uri.path();
        let canonical = match canon::canonicalize(raw_path) {
            Ok(p) => p,
            Err(_) => {
                c.path = LoggedPath::Owned(raw_path.into());
                return Ok(gateway_error(c, GatewayError::BadRequest, false));
            }
        };

        let route_idx = table.router.find(&canonical, &parts.method, &parts.headers);
        let route = match route_idx {
            Some(i) => &table.routes[i],
            None => &table.default_route,
        };
        let (side, reason) = match route_idx {
            None => (Side::Legacy, Reason::Unmatched),
            Some(_) => {
                let keys = RequestKeys {
                    headers: &parts.headers,
                    query: parts.uri.query(),
                    client_ip: if matches!(
                        route.policy.sticky,
                        Some(crate::config::StickyKey::ClientIp)
                    ) {
                        client_ip(&table, peer.addr.ip(), &parts.headers)
                    } else {
                        peer.addr.ip()
                    },
                };
                side::choose(&route.policy, table.override_header.as_ref(), &keys)
            }
        };
        let upstream_idx = match side {
            Side::Legacy => crate::table::LEGACY,
            Side::New => route.new_upstream,
        };
        let upstream = &table.upstreams[upstream_idx];
        c.route = route_idx;
        c.side = side;
        c.reason = reason;
        c.upstream = upstream_idx;

        // The upstream URI: canonical path (plus base path) and the original query.
        let path_and_query = if upstream.base_path.is_empty()
            && matches!(canonical, std::borrow::Cow::Borrowed(_))
        {
            let pq = parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            c.path = LoggedPath::Target(pq.clone());
            pq
        } else {
            c.path = LoggedPath::Owned(canonical.as_ref().into());
            let query = parts.uri.query();
            let mut s = String::with_capacity(
                upstream.base_path.len() + canonical.len() + query.map_or(0, |q| q.len() + 1),
            );
            s.push_str(&upstream.base_path);
            s.push_str(&canonical);
            if let Some(q) = query {
                s.push('?');
                s.push_str(q);
            }
            match PathAndQuery::from_maybe_shared(Bytes::from(s)) {
                Ok(pq) => pq,
                Err(_) => return Ok(gateway_error(c, GatewayError::BadRequest, true)),
            }
        };
        // Origin form: the connection already names the upstream.
        parts.uri = Uri::from(path_and_query);
        // The declared length (hyper has parsed Content-Length); 0 for chunked bodies.
        c.bytes_in = body.size_hint().exact().unwrap_or(0);

        self.rewrite_request_headers(&table, &mut parts.headers, peer);
        if upstream.host_upstream || !parts.headers.contains_key(header::HOST) {
            parts
                .headers
                .insert(header::HOST, upstream.host_value.clone());
        }
        parts.version = Version::HTTP_11;

        let timeout = upstream.timeout;
        let request_id = c.request_id.clone();
        let body = RequestBody::new(body);
        let uploaded = body.sent.clone();
        // The wait for the response head is bounded by `timeout`, counted from the start
        // (which spares a clock read), and extended while the request body is still being
        // uploaded: a slow upload is not the upstream's slowness.
        let mut deadline = start + timeout;
        let mut exchange =
            std::pin::pin!(exchange(upstream, Request::from_parts(parts, body), start));
        let sent = loop {
            match tokio::time::timeout_at(deadline.into(), exchange.as_mut()).await {
                Ok(r) => break Ok(r),
                Err(_)
                    if uploaded
                        .as_ref()
                        .is_some_and(|u| !u.load(Ordering::Acquire)) =>
                {
                    deadline = Instant::now() + timeout;
                }
                Err(e) => break Err(e),
            }
        };
        let metrics = &route.metrics[side.index()];
        match sent {
            Ok(Ok((sender, resp))) => {
                let (mut rparts, rbody) = resp.into_parts();
                // A message with both is framed by Transfer-Encoding (RFC 9112 §6.3); the
                // gateway re-frames the body, so the stale length must not reach the client.
                if rparts.headers.contains_key(header::TRANSFER_ENCODING) {
                    rparts.headers.remove(header::CONTENT_LENGTH);
                }
                strip_hop_by_hop(&mut rparts.headers);
                rparts.headers.insert(X_REQUEST_ID, request_id);
                c.status = rparts.status.as_u16();
                Ok(Response::from_parts(
                    rparts,
                    GatewayBody {
                        inner: Inner::Upstream(rbody),
                        done: Some(c),
                        conn: Some(Held {
                            key: upstream.pool_key,
                            sender,
                            since: start,
                            uploaded,
                        }),
                        idle: None,
                        read_timeout: timeout,
                    },
                ))
            }
            Ok(Err(e)) if e.is_client_side() => {
                // The client's request body failed (the client left mid-upload): nothing
                // the upstream did; not counted against it.
                c.error = Some("client_body");
                Ok(gateway_error(c, GatewayError::BadRequest, true))
            }
            Ok(Err(e)) => {
                let kind = e.kind();
                metrics.upstream_error(kind);
                c.error = Some(kind.as_str());
                tracing::debug!(route = %route.name, side = %side, error = %e, "upstream exchange failed");
                Ok(gateway_error(c, GatewayError::UpstreamUnavailable, true))
            }
            Err(_) => {
                metrics.upstream_error(UpstreamErrorKind::Timeout);
                c.error = Some("timeout");
                Ok(gateway_error(c, GatewayError::UpstreamTimeout, true))
            }
        }
    }

    fn rewrite_request_headers(&self, table: &RouteTable, h: &mut HeaderMap, peer: &Peer) {
        let trusted = !table.trusted_proxies.is_empty()
            && table
                .trusted_proxies
                .iter()
                .any(|n| n.contains(&peer.addr.ip()));
        if trusted {
            let prior: Vec<u8> = {
                let mut acc = Vec::new();
                for v in h.get_all(&X_FORWARDED_FOR) {
                    if !acc.is_empty() {
                        acc.extend_from_slice(b", ");
                    }
                    acc.extend_from_slice(v.as_bytes());
                }
                acc
            };
            let value = if prior.is_empty() {
                peer.ip_header.clone()
            } else {
                let mut v = prior;
                v.extend_from_slice(b", ");
                v.extend_from_slice(peer.ip_header.as_bytes());
                HeaderValue::from_bytes(&v).unwrap_or_else(|_| peer.ip_header.clone())
            };
            h.insert(X_FORWARDED_FOR, value);
            if !h.contains_key(&X_FORWARDED_PROTO) {
                h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
            }
            if !h.contains_key(&X_FORWARDED_HOST)
                && let Some(host) = h.get(header::HOST).cloned()
            {
                h.insert(X_FORWARDED_HOST, host);
            }
        } else {
            h.insert(X_FORWARDED_FOR, peer.ip_header.clone());
            h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
            match h.get(header::HOST).cloned() {
                Some(host) => {
                    h.insert(X_FORWARDED_HOST, host);
                }
                None => {
                    h.remove(&X_FORWARDED_HOST);
                }
            }
        }
    }
}

/// Answers a request with a gateway-made error. `routed` says whether a route was chosen.
fn gateway_error(mut c: Completion, err: GatewayError, routed: bool) -> Response<GatewayBody> {
    let (route, side) = if routed {
        (Some(c.route().name.to_string()), Some(c.side))
    } else {
        (None, None)
    };
    let body = error_body(
        err,
        route.as_deref(),
        side,
        c.request_id.to_str().unwrap_or("-"),
    );
    c.status = err.status().as_u16();
    if c.error.is_none() {
        c.error = Some(err.code());
    }
    let request_id = c.request_id.clone();
    let mut resp = Response::new(GatewayBody {
        inner: Inner::Full(Some(body)),
        done: Some(c),
        conn: None,
        idle: None,
        read_timeout: Duration::ZERO,
    });
    *resp.status_mut() = err.status();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(X_REQUEST_ID, request_id);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert!(valid_request_id(b"abc-1.2_3"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"a b"));
        assert!(!valid_request_id(&[b'a'; 129]));
        assert!(valid_request_id(new_request_id().as_bytes()));
    }

    #[test]
    fn hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-secret, keep-alive"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn error_json() {
        let b = error_body(
            GatewayError::UpstreamUnavailable,
            Some("orders-read"),
            Some(Side::New),
            "abc",
        );
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"], "upstream_unavailable");
        assert_eq!(v["route"], "orders-read");
        assert_eq!(v["side"], "new");
        let b = error_body(GatewayError::BadRequest, None, None, "abc");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert!(v["route"].is_null());
    }
}
