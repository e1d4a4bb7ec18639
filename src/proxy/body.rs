//! The response body on its way to the client, streamed and never buffered: it counts
//! bytes, bounds each wait for the upstream, gives the upstream connection back and records
//! the request when it ends.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::error::{Failure, Stage};
use super::h1client::UpstreamBody;
use super::pool::{self, Conn, PoolKey};
use super::record::Trail;
use super::upload::Upload;
use crate::observe::UpstreamErrorKind;

/// An upstream connection held by the response it carries.
pub(crate) struct Held {
    pub key: PoolKey,
    pub conn: Conn,
    /// When the exchange started (the connection's idle clock starts no later).
    pub since: Instant,
    /// The request body's completion flag, if it had one.
    pub uploaded: Option<Arc<Upload>>,
}

impl Held {
    /// Returns the connection to the pool if both directions of the exchange are complete;
    /// otherwise drops it, which closes it.
    fn release(self) {
        if self.uploaded.as_ref().is_none_or(|u| u.done()) {
            pool::checkin(self.key, self.conn, self.since);
        }
    }
}

/// Errors of a response body, for hyper's server.
pub use super::h1client::BodyError;

/// A response body: the upstream's, streamed, or one the gateway made. Dropped before its
/// end, it was abandoned by the client: its upstream connection closes with it, and the
/// trail's own drop records what was known.
pub struct ResponseBody {
    inner: Inner,
    /// Recorded when the body ends; `None` once recorded (or for bodies with no request).
    trail: Option<Trail>,
    /// The upstream connection that carries `inner`, given back to the pool when the body
    /// has ended (and closed when it is dropped before that).
    conn: Option<Held>,
    /// Bounds each wait for more of the upstream's body; made on the first wait.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    read_timeout: Duration,
    /// Whether an HTTP/2 client keeps taking the body (see [`ResponseBody::watch_client`]).
    taking: Option<Arc<Taking>>,
    /// The request's shadow copy, which takes this answer (legacy's) as it streams and is
    /// sent when it ends; dropped with the body otherwise (counted as skipped).
    tap: Option<Box<super::shadow::Copy>>,
}

/// How an HTTP/2 client takes a response body, as its watchdog sees it.
#[derive(Default)]
struct Taking {
    /// A frame was taken since the watchdog last looked.
    moved: AtomicBool,
    /// The last poll is waiting on the upstream (not the client's doing).
    waiting_upstream: AtomicBool,
    /// The body has ended or was dropped.
    ended: AtomicBool,
    /// The watchdog found the client stalled and closed the upstream connection.
    stalled: AtomicBool,
}

enum Inner {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

impl ResponseBody {
    /// The upstream's body, carried by `conn`; each wait for more is bounded by
    /// `read_timeout`.
    pub(crate) fn upstream(
        body: UpstreamBody,
        trail: Trail,
        conn: Held,
        read_timeout: Duration,
        tap: Option<Box<super::shadow::Copy>>,
    ) -> ResponseBody {
        let mut b = ResponseBody {
            inner: Inner::Upstream(body),
            trail: Some(trail),
            conn: Some(conn),
            idle: None,
            read_timeout,
            taking: None,
            tap,
        };
        // A body with nothing in it (HEAD, 204, 304, `Content-Length: 0`) is never polled:
        // it has ended already.
        if b.is_end_stream() {
            b.finish();
        }
        b
    }

    /// No body, and nothing to record (a 101's: its tunnel records the request).
    pub(crate) fn empty() -> ResponseBody {
        ResponseBody {
            inner: Inner::Full(None),
            trail: None,
            conn: None,
            idle: None,
            read_timeout: Duration::ZERO,
            taking: None,
            tap: None,
        }
    }

    /// A complete body with nothing to record (for tests of what writes answers).
    #[cfg(test)]
    pub(crate) fn full(body: Bytes) -> ResponseBody {
        let mut b = ResponseBody::empty();
        b.inner = Inner::Full(Some(body));
        b
    }

    /// No body, recorded as `trail` once the head is sent (hyper never polls a body that
    /// has ended: it is recorded now, as the answer goes out).
    pub(crate) fn nothing(trail: Trail) -> ResponseBody {
        trail.record();
        ResponseBody::empty()
    }

    /// A complete body the gateway made, recorded as `trail` once sent.
    pub(crate) fn made(body: Bytes, trail: Trail) -> ResponseBody {
        ResponseBody {
            inner: Inner::Full(Some(body)),
            trail: Some(trail),
            conn: None,
            idle: None,
            read_timeout: Duration::ZERO,
            taking: None,
            tap: None,
        }
    }

    /// For an HTTP/2 client: closes the upstream (HTTP/1) connection when the client takes
    /// nothing of the body for `send_timeout`. An HTTP/2 stream whose flow-control window
    /// the client does not open again is simply not polled by hyper, so no timer of the
    /// body's own would run; without this, one client could hold upstream connections for
    /// as long as it keeps its connection. A task of its own looks every `send_timeout`.
    pub(crate) fn watch_client(&mut self, send_timeout: Duration) {
        let Some(abort) = self.conn.as_ref().and_then(|h| h.conn.aborter()) else {
            return;
        };
        if self.is_end_stream() {
            return;
        }
        let taking = Arc::new(Taking::default());
        self.taking = Some(taking.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(send_timeout).await;
                if taking.ended.load(Ordering::Relaxed) {
                    return;
                }
                if taking.moved.swap(false, Ordering::Relaxed)
                    || taking.waiting_upstream.load(Ordering::Relaxed)
                {
                    continue;
                }
                taking.stalled.store(true, Ordering::Relaxed);
                abort.abort();
                return;
            }
        });
    }

    /// The response has ended: the connection goes back to the pool and the request is
    /// recorded.
    fn finish(&mut self) {
        if let Some(t) = &self.taking {
            t.ended.store(true, Ordering::Relaxed);
        }
        if let Some(mut held) = self.conn.take() {
            if let Inner::Upstream(body) = &mut self.inner {
                held.conn.reclaim(body);
            }
            held.release();
        }
        if let Some(trail) = self.trail.take() {
            let tap = self.tap.take().map(|mut copy| {
                copy.legacy_ended();
                copy
            });
            let (status, failed) = trail.record();
            if let Some(copy) = tap {
                copy.finish(status, failed);
            }
        }
    }

    /// The upstream's body failed or stalled: recorded against the upstream; the
    /// connection is closed.
    fn upstream_failed(&mut self, kind: UpstreamErrorKind) {
        self.conn = None;
        if let Some(mut trail) = self.trail.take() {
            let stalled = self
                .taking
                .as_ref()
                .is_some_and(|t| t.stalled.load(Ordering::Relaxed));
            trail.cut(if stalled {
                // Its connection was closed because the client took nothing more.
                Failure::Client(crate::observe::ClientErrorKind::SendTimeout)
            } else {
                Failure::Upstream {
                    kind,
                    during: Stage::Body,
                }
            });
            trail.record();
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(t) = &self.taking {
            t.ended.store(true, Ordering::Relaxed);
            // Dropped (the client reset its stream, or its connection ended) after the
            // watchdog found it stalled: the client's failure.
            if t.stalled.load(Ordering::Relaxed)
                && let Some(mut trail) = self.trail.take()
            {
                trail.cut(Failure::Client(
                    crate::observe::ClientErrorKind::SendTimeout,
                ));
                trail.record();
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Upstream(b) => Pin::new(b).poll_frame(cx),
            Inner::Full(b) => {
                let frame = b.take().map(|d| Ok(Frame::data(d)));
                this.finish();
                return Poll::Ready(frame);
            }
        };
        if let Some(t) = &this.taking {
            t.waiting_upstream
                .store(polled.is_pending(), Ordering::Relaxed);
            if polled.is_ready() {
                t.moved.store(true, Ordering::Relaxed);
            }
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(d), Some(trail)) = (frame.data_ref(), this.trail.as_mut()) {
                    trail.sent(d.len() as u64);
                    if let Some(copy) = this.tap.as_mut() {
                        copy.keep(d);
                    }
                } else if let (Some(t), Some(trail)) = (frame.trailers_ref(), this.trail.as_mut())
                    && let Some(code) = super::headers::grpc_status(t)
                {
                    trail.grpc_trailer(code);
                }
                // hyper stops polling a body that says it has ended, so the end is seen
                // here, with its last frame (trailers are always the last).
                if frame.is_trailers() || this.is_end_stream() {
                    this.finish();
                } else if let Some(idle) = this.idle.as_mut() {
                    idle.as_mut()
                        .reset((Instant::now() + this.read_timeout).into());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.upstream_failed(UpstreamErrorKind::Reset);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => {
                let timeout = this.read_timeout;
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if idle.as_mut().poll(cx).is_ready() {
                    this.upstream_failed(UpstreamErrorKind::Timeout);
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
