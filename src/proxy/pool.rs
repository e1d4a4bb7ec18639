//! Keep-alive connections to upstreams: hyper HTTP/1 client connections, pooled per thread.
//!
//! Each runtime thread keeps its own idle connections per upstream address, so a checkout or
//! a check-in is a push or pop on a thread-local list: no lock, no shared map, nothing that
//! threads contend on. A connection is taken for one exchange and given back once its
//! response body has ended; one whose body was abandoned is closed instead, since the
//! connection would still carry the rest of that body. hyper-util's pooled client does the
//! same job with a shared, locked pool and per-request bookkeeping that cost about a tenth of
//! the gateway's CPU per request in the peer benchmark; this is the lean version of it.
//!
//! It owns connections only; what to send and which upstream to use are the other phases'.

use std::cell::RefCell;
use std::future::poll_fn;
use std::sync::Mutex;
use std::task::Poll;
use std::time::{Duration, Instant};

use http::uri::Authority;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Idle connections kept per upstream per thread; more are closed.
const MAX_IDLE_PER_THREAD: usize = 256;
/// How long a checkout waits for a pooled connection that is not ready at once.
const READY_GRACE: Duration = Duration::from_millis(50);
/// An idle connection older than this is closed rather than reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The sending half of an upstream connection.
pub type Sender = SendRequest<super::upload::RequestBody>;

/// Identifies an upstream address in the per-thread pools; stable for the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolKey(usize);

static KEYS: Mutex<Vec<Authority>> = Mutex::new(Vec::new());

impl PoolKey {
    /// The key of an upstream address (the same address always gets the same key, so
    /// connections survive a config reload that keeps the address).
    pub fn of(authority: &Authority) -> PoolKey {
        let mut keys = KEYS.lock().unwrap_or_else(|p| p.into_inner());
        match keys.iter().position(|a| a == authority) {
            Some(i) => PoolKey(i),
            None => {
                keys.push(authority.clone());
                PoolKey(keys.len() - 1)
            }
        }
    }
}

thread_local! {
    /// Idle connections by pool key, newest last.
    static IDLE: RefCell<Vec<Vec<(Sender, Instant)>>> = const { RefCell::new(Vec::new()) };
}

/// A connection checked out of the pool.
pub struct Checkout {
    pub sender: Sender,
    /// False when it was reused: a request it fails to send may be retried on a new one.
    pub fresh: bool,
}

/// Takes an idle connection to `authority`, or opens one. `now` is a recent instant (the
/// request's start), which spares a clock read.
pub async fn checkout(
    key: PoolKey,
    authority: &Authority,
    now: Instant,
) -> std::io::Result<Checkout> {
    while let Some(mut sender) = pop_idle(key, now) {
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
            return Ok(Checkout {
                sender,
                fresh: false,
            });
        }
    }
    connect(authority).await.map(|sender| Checkout {
        sender,
        fresh: true,
    })
}

/// Opens a new connection to `authority`, bypassing the idle ones.
pub async fn open(authority: &Authority) -> std::io::Result<Checkout> {
    connect(authority).await.map(|sender| Checkout {
        sender,
        fresh: true,
    })
}

fn pop_idle(key: PoolKey, now: Instant) -> Option<Sender> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(key.0)?;
        while let Some((sender, since)) = list.pop() {
            if !sender.is_closed() && now.duration_since(since) < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    })
}

/// Gives a connection back after its exchange completed (response body at its end). `since`
/// is when it counts as idle from: the request's start, a little early, which errs on the
/// side of closing idle connections sooner.
pub fn checkin(key: PoolKey, sender: Sender, since: Instant) {
    if sender.is_closed() {
        return;
    }
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        if idle.len() <= key.0 {
            idle.resize_with(key.0 + 1, Vec::new);
        }
        let list = &mut idle[key.0];
        if list.len() < MAX_IDLE_PER_THREAD {
            list.push((sender, since));
        }
    });
}

async fn connect(authority: &Authority) -> std::io::Result<Sender> {
    let port = authority.port_u16().unwrap_or(80);
    let host = authority.host();
    // IPv6 literals come bracketed in an authority.
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let stream = TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}
