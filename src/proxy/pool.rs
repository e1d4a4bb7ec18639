//! Keep-alive connections to upstreams: hyper HTTP/1 client connections, pooled per thread,
//! and HTTP/2 connections (`protocol: h2c | h2`), shared by a thread's requests as streams:
//! one per upstream per thread, and another whenever those it has carry as many streams as
//! the service allows at once. Either in clear or over TLS (rustls) for `https://`
//! services.
//!
//! Each runtime thread keeps its own idle connections per upstream address, so a checkout or
//! a check-in is a push or pop on a thread-local list: no lock, no shared map, nothing that
//! threads contend on. A connection is taken for one exchange and given back once its
//! response body has ended; one whose body was abandoned is closed instead, since the
//! connection would still carry the rest of that body. hyper-util's pooled client does the
//! same job with a shared, locked pool and per-request bookkeeping that cost about a tenth of
//! the gateway's CPU per request in the peer benchmark; this is the lean version of it.
//!
//! An idle HTTP/1 connection is closed after its service's `idle_timeout` by its own task,
//! whatever else happens on its thread, so idle connections (to upstreams a reload removed
//! among them) do not pile up. A thread's HTTP/2 connections to a service stay while the
//! service keeps them; they are pinged while they carry requests, and replaced after a
//! request on one times out.
//!
//! It owns connections only; what to send and which upstream to use are the other phases'.

use std::cell::RefCell;
use std::future::{Future as _, poll_fn};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{Request, Response};
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::h1client::{self, UpstreamBody};
use super::upload::RequestBody;
use crate::config::Protocol;

/// Idle connections kept per upstream per thread; more are closed.
const MAX_IDLE_PER_THREAD: usize = 256;
/// How often an HTTP/2 connection to a service is pinged while it carries requests.
const H2_PING_EVERY: Duration = Duration::from_secs(30);
/// How long a checkout waits for a pooled connection that is not ready at once.
const READY_GRACE: Duration = Duration::from_millis(50);

/// The sending half of an upstream connection.
pub enum Sender {
    H1(http1::SendRequest<RequestBody>),
    /// A handle on a connection its thread shares: each request is a stream of it.
    H2(http2::SendRequest<RequestBody>),
    /// An HTTP/1.1 connection (in clear or over TLS) that the gateway's own client writes
    /// and reads (`proxy::h1client`): its stream while it waits in the pool, `None` while an
    /// exchange has it (or once it closed).
    Own(Option<h1client::Io>),
}

impl Sender {
    pub fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
            Sender::Own(io) => io.is_none(),
        }
    }
}

/// A request that failed, with the request when none of it was sent.
pub enum SendError {
    Hyper(TrySendError<Request<RequestBody>>),
    Own(h1client::Failed),
}

impl SendError {
    /// The request, if none of it went out (it may be sent again, anywhere).
    pub fn take_unsent(&mut self) -> Option<Request<RequestBody>> {
        match self {
            SendError::Hyper(e) => e.take_message(),
            SendError::Own(f) if !f.sent => f.request.take(),
            SendError::Own(_) => None,
        }
    }

    /// The request, if it went out and nothing of an answer came (the gateway's own client
    /// gives it back; hyper's does not).
    pub fn take_unanswered(&mut self) -> Option<Request<RequestBody>> {
        match self {
            SendError::Own(f) if f.sent => f.request.take(),
            _ => None,
        }
    }

    /// The client's request body failed (it left or stalled mid-upload): nothing the
    /// upstream did.
    pub fn is_client_body(&self) -> bool {
        matches!(self, SendError::Hyper(e) if e.error().is_user())
    }

    /// The answer did not parse.
    pub fn is_malformed(&self) -> bool {
        match self {
            SendError::Hyper(e) => e.error().is_parse() || e.error().is_parse_status(),
            SendError::Own(f) => f.error.is_malformed(),
        }
    }

    /// The connection ended under the request without any answer: EOF or reset.
    pub fn closed_under_us(&self) -> bool {
        match self {
            SendError::Hyper(e) => hyper_closed_under_us(e.error()),
            SendError::Own(f) => f.error.closed(),
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Hyper(e) => e.error().fmt(f),
            SendError::Own(failed) => failed.error.fmt(f),
        }
    }
}

fn hyper_closed_under_us(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return h1client::closed_under(io);
        }
        source = s.source();
    }
    false
}

/// How to reach an upstream: its address, protocol and TLS.
#[derive(Clone)]
pub struct Dial {
    pub authority: Authority,
    pub protocol: Protocol,
    /// TLS to it, with the name its certificate must carry and what it trusts (see
    /// `config::tls::Upstream::trust`).
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>, u64)>,
    /// How long an unused connection to it stays open.
    pub idle_timeout: Duration,
    /// The instance's address, when it was looked up (`proxy::fleet`); `None`: the
    /// authority's host is connected to by name.
    pub addr: Option<SocketAddr>,
    /// How its host name is looked up, when it is connected to by name.
    pub resolver: super::resolve::Resolver,
}

impl Dial {
    /// How to connect to service `s` (its first URL).
    pub fn of(s: &crate::config::Service, resolver: &super::resolve::Resolver) -> Dial {
        Dial {
            authority: s.authority.clone(),
            protocol: s.protocol,
            tls: s
                .tls
                .as_ref()
                .map(|tls| (tls.config.clone(), tls.name.clone(), tls.trust)),
            idle_timeout: s.idle_timeout,
            addr: None,
            resolver: resolver.clone(),
        }
    }
}

/// Identifies an upstream (address, protocol, TLS and its trust) in the per-thread pools;
/// stable for the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolKey(usize);

type KeyId = (Authority, Protocol, Option<u64>, Option<SocketAddr>);

static KEYS: Mutex<Vec<KeyId>> = Mutex::new(Vec::new());

impl PoolKey {
    /// The key of an upstream (the same one always gets the same key, so connections
    /// survive a config reload that keeps it).
    pub fn of(dial: &Dial) -> PoolKey {
        let id = (
            dial.authority.clone(),
            dial.protocol,
            dial.tls.as_ref().map(|t| t.2),
            dial.addr,
        );
        let mut keys = KEYS.lock().unwrap_or_else(|p| p.into_inner());
        match keys.iter().position(|k| *k == id) {
            Some(i) => PoolKey(i),
            None => {
                keys.push(id);
                PoolKey(keys.len() - 1)
            }
        }
    }
}

/// What a connection's own task watches: when it became idle, in milliseconds since
/// `epoch()` plus one (0 while it carries an exchange), to close it once idle for `timeout`
/// whether or not another request ever looks at the pool again; and `abort`, to close it at
/// once when an exchange on it is given up.
struct IdleClock {
    since: AtomicU64,
    timeout: Duration,
    abort: tokio::sync::Notify,
    /// HTTP/2: the requests the connection carries now, and how many the service allows
    /// at once (its `SETTINGS_MAX_CONCURRENT_STREAMS`, as last read).
    streams: AtomicUsize,
    max_streams: AtomicUsize,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl IdleClock {
    fn in_use(&self) {
        self.since.store(0, Ordering::Relaxed);
    }

    fn idle_since(&self, t: Instant) {
        let ms = t.saturating_duration_since(epoch()).as_millis() as u64;
        self.since.store(ms + 1, Ordering::Relaxed);
    }

    /// When the connection is due to close, if it is idle.
    fn due(&self) -> Option<Instant> {
        match self.since.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(epoch() + Duration::from_millis(ms - 1) + self.timeout),
        }
    }
}

/// An upstream connection: its sending half, and the clock its task closes it by.
pub struct Conn {
    pub sender: Sender,
    clock: Arc<IdleClock>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if matches!(self.sender, Sender::H2(_)) {
            self.clock.streams.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Closes an HTTP/1 upstream connection from elsewhere than its holder.
pub struct Aborter(Arc<IdleClock>);

impl Aborter {
    pub fn abort(&self) {
        self.0.abort.notify_one();
    }
}

impl Conn {
    /// A handle on an HTTP/2 connection, counted among its streams until dropped.
    fn h2(sender: http2::SendRequest<RequestBody>, clock: Arc<IdleClock>) -> Conn {
        clock.streams.fetch_add(1, Ordering::Relaxed);
        Conn {
            sender: Sender::H2(sender),
            clock,
        }
    }

    /// Sends a request and waits for its answer's head. A connection of the gateway's own
    /// client is handed to hyper's, for good, when the request needs hyper (`needs_hyper`:
    /// [`h1client::needs_hyper`] of it, as its caller chose its connection by).
    pub async fn send(
        &mut self,
        req: Request<RequestBody>,
        needs_hyper: bool,
    ) -> Result<Response<UpstreamBody>, SendError> {
        if let Sender::Own(io) = &mut self.sender {
            let Some(io) = io.take() else {
                let closed = h1client::Error::Closed;
                return Err(SendError::Own(h1client::Failed::unsent(closed, req)));
            };
            if !needs_hyper {
                // Boxed apart from the request's future: moved with it, it would be copied
                // at every level of the send path (docs/performance.md).
                return Box::pin(h1client::send(io, req))
                    .await
                    .map_err(SendError::Own);
            }
            // Boxed: few requests need it, and every request's future would carry it.
            match Box::pin(handshake(io, Protocol::Http1, &self.clock)).await {
                Ok(sender) => self.sender = sender,
                Err(e) => {
                    return Err(SendError::Own(h1client::Failed::unsent(e.into(), req)));
                }
            }
        }
        match &mut self.sender {
            Sender::H1(s) => s.try_send_request(req).await,
            Sender::H2(s) => s.try_send_request(req).await,
            Sender::Own(_) => unreachable!("handed to hyper above"),
        }
        .map(|r| r.map(UpstreamBody::Hyper))
        .map_err(SendError::Hyper)
    }

    /// Whether this connection's own client takes a request (one that does not need
    /// hyper's, `h1client::needs_hyper`), and gives it back when nothing of an answer came.
    pub fn answers_itself(&self, needs_hyper: bool) -> bool {
        matches!(self.sender, Sender::Own(Some(_))) && !needs_hyper
    }

    /// Takes the connection's stream back from an answer's body read to its end by the
    /// gateway's own client (it closes otherwise).
    pub fn reclaim(&mut self, body: &mut UpstreamBody) {
        if let Sender::Own(slot) = &mut self.sender {
            *slot = body.reusable();
        }
    }

    /// A handle that closes this connection, for an HTTP/1 one of hyper's (an HTTP/2
    /// connection carries other requests too; the gateway's own client's is closed by
    /// whoever reads its answer).
    pub fn aborter(&self) -> Option<Aborter> {
        matches!(self.sender, Sender::H1(_)).then(|| Aborter(self.clock.clone()))
    }

    /// Closes the connection now, with whatever exchange it carries (an upstream that
    /// stopped reading a request body would otherwise hold it, and the client's body with
    /// it, for ever). An HTTP/2 connection carries other requests too: it stays (the
    /// abandoned exchange's stream is reset when its response is dropped).
    pub fn abort(self) {
        if matches!(self.sender, Sender::H1(_)) {
            self.clock.abort.notify_one();
        }
    }
}

/// A thread's HTTP/2 connections to an upstream.
type Shared = Vec<(http2::SendRequest<RequestBody>, Arc<IdleClock>)>;

thread_local! {
    /// Idle connections by pool key, newest last.
    static IDLE: RefCell<Vec<Vec<(Conn, Instant)>>> = const { RefCell::new(Vec::new()) };
    /// The HTTP/2 connection of each pool key, shared by this thread's requests.
    static SHARED: RefCell<Vec<Shared>> = const { RefCell::new(Vec::new()) };
}

/// How long a new connection (and its TLS and HTTP/2 handshakes) may take: `connect`, and
/// never past `by`.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub connect: Duration,
    pub by: Instant,
}

impl Limit {
    /// No limit but `connect` (for probes and tools).
    pub fn of(connect: Duration) -> Limit {
        Limit {
            connect,
            by: Instant::now() + connect,
        }
    }
}

/// A connection checked out of the pool.
pub struct Checkout {
    pub conn: Conn,
    /// False when it was reused: a request it fails to send may be retried on a new one.
    pub fresh: bool,
}

/// Takes an idle connection to the upstream (or its thread's HTTP/2 connection), or opens
/// one. `now` is a recent instant (the request's start), which spares a clock read.
/// `hyper`: the request needs hyper's client (`h1client::needs_hyper`), and takes one of
/// its connections when one is among the newest idle ones; a request that does not takes
/// one of the gateway's own client likewise, so that requests with a body do not turn, one
/// by one, every connection of the pool into hyper's.
pub async fn checkout(
    key: PoolKey,
    dial: &Dial,
    now: Instant,
    limit: Limit,
    hyper: bool,
) -> std::io::Result<Checkout> {
    if dial.protocol.is_http2() {
        if let Some(conn) = shared(key) {
            return Ok(Checkout { conn, fresh: false });
        }
        let conn = connect(dial, limit).await?;
        share(key, &conn);
        return Ok(Checkout { conn, fresh: true });
    }
    while let Some(mut conn) = pop_idle(key, now, hyper) {
        let sender = match &mut conn.sender {
            Sender::H1(sender) => sender,
            Sender::Own(Some(io)) => {
                if h1client::alive(io) {
                    return Ok(Checkout { conn, fresh: false });
                }
                continue;
            }
            _ => continue,
        };
        // A connection is given back only once its exchange is complete, so it is nearly
        // always ready at the first look; one that is not gets a short grace, then is closed.
        let first = poll_fn(|cx| Poll::Ready(sender.poll_ready(cx))).await;
        let ready = match first {
            Poll::Ready(r) => r.is_ok(),
            Poll::Pending => matches!(
                tokio::time::timeout(READY_GRACE, sender.ready()).await,
                Ok(Ok(()))
            ),
        };
        if ready {
            return Ok(Checkout { conn, fresh: false });
        }
    }
    connect(dial, limit)
        .await
        .map(|conn| Checkout { conn, fresh: true })
}

/// Opens a new connection to the upstream, bypassing the idle ones (an HTTP/2 one replaces
/// the thread's shared connection).
pub async fn open(key: PoolKey, dial: &Dial, limit: Limit) -> std::io::Result<Checkout> {
    let conn = connect(dial, limit).await?;
    if dial.protocol.is_http2() {
        share(key, &conn);
    }
    Ok(Checkout { conn, fresh: true })
}

/// A handle on one of this thread's HTTP/2 connections to the upstream that can take
/// another stream, if it has one (closed ones are dropped on the way).
fn shared(key: PoolKey) -> Option<Conn> {
    SHARED.with(|shared| {
        let mut shared = shared.borrow_mut();
        let list = shared.get_mut(key.0)?;
        list.retain(|(sender, _)| !sender.is_closed());
        let (sender, clock) = list.iter().find(|(_, clock)| {
            clock.streams.load(Ordering::Relaxed) < clock.max_streams.load(Ordering::Relaxed)
        })?;
        Some(Conn::h2(sender.clone(), clock.clone()))
    })
}

/// Stops sharing this thread's HTTP/2 connections to the upstream (a request on one timed
/// out: it may be dead): the next request opens a new one, and the old ones close once
/// their streams are done.
pub fn forget_shared(key: PoolKey) {
    SHARED.with(|shared| {
        if let Some(list) = shared.borrow_mut().get_mut(key.0) {
            list.clear();
        }
    });
}

fn share(key: PoolKey, conn: &Conn) {
    let Sender::H2(sender) = &conn.sender else {
        return;
    };
    SHARED.with(|shared| {
        let mut shared = shared.borrow_mut();
        if shared.len() <= key.0 {
            shared.resize_with(key.0 + 1, Vec::new);
        }
        shared[key.0].push((sender.clone(), conn.clock.clone()));
    });
}

/// How many of the newest idle connections a checkout looks through for one of the kind
/// it prefers.
const PREFER_AMONG: usize = 4;

fn pop_idle(key: PoolKey, now: Instant, hyper: bool) -> Option<Conn> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(key.0)?;
        while !list.is_empty() {
            let newest = list.len() - 1;
            let at = (list.len().saturating_sub(PREFER_AMONG)..list.len())
                .rev()
                .find(|&i| matches!(list[i].0.sender, Sender::Own(_)) != hyper)
                .unwrap_or(newest);
            let (conn, since) = list.remove(at);
            if !conn.sender.is_closed() && now.duration_since(since) < conn.clock.timeout {
                conn.clock.in_use();
                return Some(conn);
            }
        }
        None
    })
}

/// Gives a connection back after its exchange completed (response body at its end). `since`
/// is when it counts as idle from: the request's start, a little early, which errs on the
/// side of closing idle connections sooner.
pub fn checkin(key: PoolKey, conn: Conn, since: Instant) {
    // An HTTP/2 connection stays shared; only HTTP/1 ones are pooled.
    if conn.sender.is_closed() || matches!(conn.sender, Sender::H2(_)) {
        return;
    }
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        if idle.len() <= key.0 {
            idle.resize_with(key.0 + 1, Vec::new);
        }
        let list = &mut idle[key.0];
        // Connections its task has closed meanwhile go first (oldest first).
        if list.first().is_some_and(|(c, _)| c.sender.is_closed()) {
            list.retain(|(c, _)| !c.sender.is_closed());
        }
        if list.len() < MAX_IDLE_PER_THREAD {
            let own = matches!(conn.sender, Sender::Own(_));
            let due = since + conn.clock.timeout;
            // One of the gateway's own client that would be due before the sweep planned
            // may be due already (an exchange longer than its idle timeout): closed now.
            let sooner = own && SWEEP.get().0.is_none_or(|at| due < at);
            if sooner && due <= Instant::now() {
                return;
            }
            conn.clock.idle_since(since);
            list.push((conn, since));
            drop(idle);
            if sooner {
                sweep_by(due);
            }
        }
    });
}

thread_local! {
    /// When this thread's sweep of idle connections of the gateway's own client is due, and
    /// the sweep that is (an earlier one replaces it).
    static SWEEP: std::cell::Cell<(Option<Instant>, u64)> = const { std::cell::Cell::new((None, 0)) };
}

/// Makes sure this thread's idle connections of the gateway's own client are swept by
/// `due`: they have no task of their own to close them after their idle timeout.
fn sweep_by(due: Instant) {
    let (at, generation) = SWEEP.get();
    if at.is_some_and(|at| at <= due) {
        return;
    }
    let generation = generation + 1;
    SWEEP.set((Some(due), generation));
    /// Says the sweep is over when its task ends, whichever way (its runtime may shut
    /// down before it is due): the next check-in starts another.
    struct Over(u64);
    impl Drop for Over {
        fn drop(&mut self) {
            if SWEEP.get().1 == self.0 {
                SWEEP.set((None, self.0));
            }
        }
    }
    tokio::spawn(async move {
        let _over = Over(generation);
        let mut at = due;
        loop {
            tokio::time::sleep_until(at.into()).await;
            if SWEEP.get().1 != generation {
                // An earlier sweep took over.
                return;
            }
            match sweep(Instant::now()) {
                Some(next) => {
                    SWEEP.set((Some(next), generation));
                    at = next;
                }
                None => return,
            }
        }
    });
}

/// Closes this thread's idle connections of the gateway's own client that have been idle
/// for their timeout (or that closed); when the next one is due.
fn sweep(now: Instant) -> Option<Instant> {
    IDLE.with(|idle| {
        let mut next: Option<Instant> = None;
        for list in idle.borrow_mut().iter_mut() {
            list.retain_mut(|(conn, since)| {
                let Sender::Own(Some(io)) = &mut conn.sender else {
                    return true;
                };
                let due = *since + conn.clock.timeout;
                let keep = due > now && h1client::alive(io);
                if keep {
                    next = Some(next.map_or(due, |n| n.min(due)));
                }
                keep
            });
        }
        next
    })
}

/// A new connection, within `limit`. Boxed: connecting (and a TLS handshake) takes a
/// future of several KiB that most requests, served on a pooled connection, never need,
/// and that would otherwise be part of every request's own future (moved and set up with
/// each request).
fn connect(
    dial: &Dial,
    limit: Limit,
) -> std::pin::Pin<Box<impl Future<Output = std::io::Result<Conn>> + Send + '_>> {
    Box::pin(connect_within(dial, limit))
}

async fn connect_within(dial: &Dial, limit: Limit) -> std::io::Result<Conn> {
    let until = (Instant::now() + limit.connect).min(limit.by);
    tokio::time::timeout_at(until.into(), connect_now(dial))
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {:?}", limit.connect),
            ))
        })
}

async fn connect_now(dial: &Dial) -> std::io::Result<Conn> {
    let stream = match dial.addr {
        Some(addr) => TcpStream::connect(addr).await?,
        None => {
            let authority = &dial.authority;
            let port = authority.port_u16().unwrap_or(80);
            let host = crate::config::bare_host(authority);
            match dial.resolver.custom_answer(host, port) {
                Some(found) => TcpStream::connect(&*found?).await?,
                None => TcpStream::connect((host, port)).await?,
            }
        }
    };
    stream.set_nodelay(true)?;
    let clock = Arc::new(IdleClock {
        since: AtomicU64::new(0),
        timeout: dial.idle_timeout,
        abort: tokio::sync::Notify::new(),
        streams: AtomicUsize::new(0),
        // Until the service's SETTINGS are read: the common default.
        max_streams: AtomicUsize::new(100),
    });
    // The gateway's own client, where this thread's pool has a sweep of its own: on a
    // runtime of one thread (every public thread's).
    let own = !dial.protocol.is_http2() && own_client_here();
    let sender = match &dial.tls {
        None if own => Sender::Own(Some(h1client::Io::Plain(stream))),
        None => handshake(stream, dial.protocol, &clock).await?,
        Some((config, name, _)) => {
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name.clone(), stream)
                .await?;
            if own {
                Sender::Own(Some(h1client::Io::Tls(Box::new(tls))))
            } else {
                handshake(tls, dial.protocol, &clock).await?
            }
        }
    };
    Ok(match sender {
        Sender::H2(sender) => Conn::h2(sender, clock),
        sender => Conn { sender, clock },
    })
}

/// Whether connections made on this thread use the gateway's own HTTP/1.1 client: when its
/// runtime runs on this thread alone, so that a task it spawns (the idle sweep) runs here.
fn own_client_here() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
}

/// Sends one request on a new connection of its own (a health check), which is closed once
/// the answer's head has come.
pub async fn probe(
    dial: &Dial,
    req: Request<RequestBody>,
    limit: Limit,
) -> std::io::Result<http::StatusCode> {
    let needs_hyper = h1client::needs_hyper(&req);
    let mut conn = connect(dial, limit).await?;
    let answer = conn
        .send(req, needs_hyper)
        .await
        .map(|r| r.status())
        .map_err(|e| std::io::Error::other(e.to_string()));
    conn.abort();
    answer
}

/// The HTTP handshake on a connected stream; the connection's task is spawned.
async fn handshake<I>(io: I, protocol: Protocol, clock: &Arc<IdleClock>) -> std::io::Result<Sender>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if protocol.is_http2() {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // A connection whose peer is gone without a word (a lost NAT entry, a dead
            // host) is found by a ping unanswered within 20 s, rather than after the
            // kernel's retries (many minutes during which every request would time out).
            .keep_alive_interval(H2_PING_EVERY)
            .keep_alive_timeout(Duration::from_secs(20))
            .handshake(TokioIo::new(io))
            .await
            .map_err(std::io::Error::other)?;
        let clock = clock.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            // The service's limit on concurrent streams, read again whenever the connection
            // makes progress (it comes in the service's SETTINGS, and may change), so that
            // requests beyond it go to another connection instead of waiting.
            let ended = poll_fn(|cx| {
                let polled = conn.as_mut().poll(cx);
                let max = conn.current_max_send_streams().max(1);
                clock.max_streams.store(max, Ordering::Relaxed);
                polled
            })
            .await;
            if let Err(e) = ended {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        return Ok(Sender::H2(sender));
    }
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(std::io::Error::other)?;
    let idle = clock.clone();
    tokio::spawn(async move {
        // An upgraded exchange (a 101) ends the connection's HTTP and hands its stream over.
        let mut conn = std::pin::pin!(conn.with_upgrades());
        loop {
            // Sleep until the connection is due to close, or for a whole timeout while it
            // carries an exchange; then look again.
            let wake = idle.due().unwrap_or_else(|| Instant::now() + idle.timeout);
            tokio::select! {
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, "upstream connection ended with an error");
                    }
                    return;
                }
                () = idle.abort.notified() => return,
                () = tokio::time::sleep_until(wake.into()) => {
                    if idle.due().is_some_and(|due| due <= Instant::now()) {
                        // Idle for its whole timeout: dropping the connection closes it.
                        return;
                    }
                }
            }
        }
    });
    Ok(Sender::H1(sender))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle_clock() -> Arc<IdleClock> {
        Arc::new(IdleClock {
            since: AtomicU64::new(0),
            timeout: Duration::from_secs(60),
            abort: tokio::sync::Notify::new(),
            streams: AtomicUsize::new(0),
            max_streams: AtomicUsize::new(100),
        })
    }

    /// A request takes an idle connection of the client it needs when one is among the
    /// newest: requests with a body (hyper's) and without (the own client's) each keep
    /// their own connections, and the one that finds none of its kind takes the newest.
    #[tokio::test(flavor = "current_thread")]
    async fn a_checkout_prefers_the_kind_of_connection_its_request_needs() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = Vec::new();
        let mut conn = async || {
            let stream = TcpStream::connect(addr).await.unwrap();
            accepted.push(listener.accept().await.unwrap().0);
            stream
        };
        let own = Conn {
            sender: Sender::Own(Some(h1client::Io::Plain(conn().await))),
            clock: idle_clock(),
        };
        let clock = idle_clock();
        let hyper = Conn {
            sender: handshake(conn().await, Protocol::Http1, &clock)
                .await
                .unwrap(),
            clock,
        };
        let key = PoolKey(7);
        let now = Instant::now();
        // The own client's connection first, hyper's the newest.
        checkin(key, own, now);
        checkin(key, hyper, now);
        let is_own = |c: &Conn| matches!(c.sender, Sender::Own(_));
        let first = pop_idle(key, now, false).expect("an idle connection");
        assert!(
            is_own(&first),
            "a request without a body took hyper's connection"
        );
        let second = pop_idle(key, now, false).expect("an idle connection");
        assert!(
            !is_own(&second),
            "the newest, of the other kind, when none is left"
        );
        checkin(key, first, now);
        checkin(key, second, now);
        let third = pop_idle(key, now, true).expect("an idle connection");
        assert!(
            !is_own(&third),
            "a request with a body took the own client's connection"
        );
    }
}
