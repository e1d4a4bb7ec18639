//! Upgraded connections (docs/protocols.md, "WebSocket and other upgrades"): once the
//! upstream has answered 101 to an upgrade request, the client's connection and the
//! upstream's are joined and bytes are copied both ways, as they come, until both sides
//! have closed (once one has, the other is told and has [`LINGER`] to follow), no byte has
//! crossed either way for the service's `idle_timeout`, or the end of a drain cuts it.
//!
//! A tunnel is one request: it is recorded when it ends (status 101, its duration, the bytes
//! each way). [`Tunnels`] counts the open ones, so a drain waits for them (up to
//! `drain_timeout`) and its end closes them.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::sync::watch;

use super::error::{Failure, Stage};
use super::record::Trail;
use crate::observe::{ClientErrorKind, UpstreamErrorKind};

/// How long the other direction of a tunnel may go on once one side has closed.
pub const LINGER: Duration = Duration::from_secs(1);

/// The open tunnels of a listener.
pub struct Tunnels {
    open: watch::Sender<usize>,
    cut: watch::Sender<bool>,
}

impl Default for Tunnels {
    fn default() -> Tunnels {
        Tunnels {
            open: watch::Sender::new(0),
            cut: watch::Sender::new(false),
        }
    }
}

impl Tunnels {
    /// How many tunnels are open.
    pub fn open(&self) -> usize {
        *self.open.borrow()
    }

    /// Resolves once no tunnel is open.
    pub async fn closed(&self) {
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|n| *n == 0).await;
    }

    /// Closes every open tunnel (the end of a drain); each is recorded as cut.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    fn enter(self: &Arc<Tunnels>) -> Open {
        self.open.send_modify(|n| *n += 1);
        Open(self.clone())
    }
}

/// One open tunnel, counted until dropped.
struct Open(Arc<Tunnels>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.send_modify(|n| *n -= 1);
    }
}

/// Joins the client's connection and the upstream's once both are handed over (the 101
/// has been sent to the client), and records `trail` when the tunnel ends.
pub fn spawn(
    client: OnUpgrade,
    upstream: OnUpgrade,
    mut trail: Trail,
    idle_timeout: Duration,
    tunnels: &Arc<Tunnels>,
) {
    let open = tunnels.enter();
    let mut cut = tunnels.cut.subscribe();
    tokio::spawn(async move {
        let _open = open;
        // The hand-over waits for the 101 to be written (bounded by client.send_timeout);
        // a drain's end cuts it too.
        let handed = tokio::select! {
            handed = async { tokio::join!(client, upstream) } => handed,
            _ = cut.wait_for(|c| *c) => {
                trail.record();
                return;
            }
        };
        let (client, upstream) = match handed {
            (Ok(c), Ok(u)) => (c, u),
            (c, u) => {
                let c_failed = c.is_err();
                // The client left before its 101 was sent, or the upstream's connection
                // broke as it was handed over: nothing was tunnelled.
                tracing::debug!(
                    client = c.err().map(|e| e.to_string()),
                    upstream = u.err().map(|e| e.to_string()),
                    "an upgraded connection could not be joined"
                );
                // Nothing was tunnelled: the client's side if its connection is gone (it
                // left before the 101 reached it), else the upstream's.
                trail.cut(if c_failed {
                    Failure::Client(ClientErrorKind::Closed)
                } else {
                    Failure::Upstream {
                        kind: UpstreamErrorKind::Reset,
                        during: Stage::Body,
                    }
                });
                trail.record();
                return;
            }
        };
        let up = Arc::new(AtomicU64::new(0));
        let down = Arc::new(AtomicU64::new(0));
        let client = Counted {
            io: TokioIo::new(client),
            count: up.clone(),
        };
        let upstream = Counted {
            io: TokioIo::new(upstream),
            count: down.clone(),
        };
        let ended = tokio::select! {
            ended = join(client, upstream) => ended,
            () = idle(&up, &down, idle_timeout) => "idle",
            _ = cut.wait_for(|c| *c) => "cut",
        };
        tracing::debug!(ended, "tunnel over");
        trail.tunnelled(up.load(Ordering::Relaxed), down.load(Ordering::Relaxed));
        trail.record();
    });
}

/// Copies bytes both ways until both directions have ended. A side that closes (or
/// half-closes) has its close passed on once what it sent is delivered; the other direction
/// then has [`LINGER`] to end too, after which both connections are closed (a client that
/// keeps its socket open after the server closed would otherwise hold the tunnel until its
/// idle timeout).
async fn join<C, U>(client: C, upstream: U) -> &'static str
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let mut up = std::pin::pin!(async {
        let copied = tokio::io::copy(&mut cr, &mut uw).await;
        let _ = uw.shutdown().await;
        copied
    });
    let mut down = std::pin::pin!(async {
        let copied = tokio::io::copy(&mut ur, &mut cw).await;
        let _ = cw.shutdown().await;
        copied
    });
    let (first, ended, up_done) = tokio::select! {
        r = &mut up => (r, "client closed", true),
        r = &mut down => (r, "upstream closed", false),
    };
    if let Err(e) = first {
        tracing::debug!(error = %e, "a tunnel ended with an error");
        return "error";
    }
    let rest = async {
        if up_done {
            down.as_mut().await
        } else {
            up.as_mut().await
        }
    };
    match tokio::time::timeout(LINGER, rest).await {
        Ok(Ok(_)) => ended,
        Ok(Err(_)) => "error",
        Err(_) => "linger",
    }
}

/// Resolves once no byte has moved either way for `timeout` (looked at every quarter of
/// it, so a tunnel closes between 1 and 1.25 times `timeout` after its last byte).
async fn idle(up: &AtomicU64, down: &AtomicU64, timeout: Duration) {
    let tick = (timeout / 4).max(Duration::from_millis(10));
    let total = || up.load(Ordering::Relaxed) + down.load(Ordering::Relaxed);
    let (mut seen, mut last) = (total(), Instant::now());
    loop {
        tokio::time::sleep(tick).await;
        let now = total();
        if now != seen {
            (seen, last) = (now, Instant::now());
        } else if last.elapsed() >= timeout {
            return;
        }
    }
}

/// A stream that counts the bytes read from it.
struct Counted<T> {
    io: T,
    count: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.count.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
