//! The client's connection: what it knows of its peer ([`Peer`], made once per connection)
//! and the stream it wraps ([`ClientIo`]), which bounds each wait for the client to take
//! more of an answer (`client.send_timeout`, as nginx's `send_timeout`), closes a
//! connection that goes `client.head_timeout` without a request under way (nginx's
//! `keepalive_timeout`; for HTTP/2 and before the first request too), and notes whether
//! the client sent anything since the last answer (so that a connection closed by the head
//! timeout midway through a head is told apart from an idle one).

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client end of a connection.
pub struct Peer {
    pub addr: SocketAddr,
    /// The peer IP as a header value, for `X-Forwarded-For`.
    pub ip_header: HeaderValue,
    /// The connection came over TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
    /// The client stopped taking an answer for longer than `client.send_timeout`.
    send_timed_out: AtomicBool,
    /// Bytes arrived since the gateway last wrote to the client.
    read_since_write: AtomicBool,
    /// Set for every connection of a listener whose drain ran out of time: what they carry
    /// is being cut.
    cut: Arc<AtomicBool>,
    /// Requests of this connection not yet recorded (HTTP/2 carries several at once; a
    /// tunnel is one until it closes).
    active: AtomicUsize,
    /// Requests begun on the connection: an idle wait that began before the last of them
    /// is over, even if no read waited while it was under way.
    began: AtomicUsize,
    idle_timed_out: AtomicBool,
    /// The connection carried an HTTP/1 request: from then on, hyper's own head timeout
    /// bounds its idle time.
    http1: AtomicBool,
    /// The gateway's own HTTP/1.1 server serves the connection (not hyper): the idle
    /// timeout here bounds its idle time whatever it carried.
    own_http1: AtomicBool,
}

impl Peer {
    /// The peer at `addr`, on a listener whose drain cut is `cut`; `tls` when the connection
    /// is (to be) TLS.
    pub fn new(addr: SocketAddr, cut: Arc<AtomicBool>, tls: bool) -> Peer {
        Peer {
            addr,
            tls,
            ip_header: HeaderValue::from_str(&addr.ip().to_string())
                .expect("an IP address is a valid header value"),
            send_timed_out: AtomicBool::new(false),
            read_since_write: AtomicBool::new(false),
            cut,
            active: AtomicUsize::new(0),
            began: AtomicUsize::new(0),
            idle_timed_out: AtomicBool::new(false),
            http1: AtomicBool::new(false),
            own_http1: AtomicBool::new(false),
        }
    }

    /// A request of this connection began (`http1`: it is HTTP/1.x).
    pub fn request_began(&self, http1: bool) {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.began.fetch_add(1, Ordering::Relaxed);
        if http1 && !self.http1.load(Ordering::Relaxed) {
            self.http1.store(true, Ordering::Relaxed);
        }
    }

    /// A request of this connection was recorded.
    pub fn request_ended(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// No request is under way on the connection, and no other timer bounds its idle time
    /// (hyper's head timeout does on an HTTP/1 connection hyper serves once it has carried
    /// a request).
    fn idle(&self) -> bool {
        self.active.load(Ordering::Relaxed) == 0
            && (self.own_http1.load(Ordering::Relaxed) || !self.http1.load(Ordering::Relaxed))
    }

    /// Whether the gateway's own HTTP/1.1 server serves the connection (`true`), or hyper
    /// does from now on (`false`).
    pub fn served_by_own_http1(&self, own: bool) {
        self.own_http1.store(own, Ordering::Relaxed);
    }

    /// Whether the connection was closed for staying idle (or with a request head, or
    /// HTTP/2's preface, left unfinished) for `client.head_timeout`.
    pub fn idle_timed_out(&self) -> bool {
        self.idle_timed_out.load(Ordering::Relaxed)
    }

    /// Whether the drain is cutting this connection.
    pub fn cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    /// Whether the client stopped taking an answer (the connection was closed for it).
    pub fn send_timed_out(&self) -> bool {
        self.send_timed_out.load(Ordering::Relaxed)
    }

    /// Whether the client sent bytes since the last answer: a timeout now cut a request
    /// head short, rather than closing an idle connection.
    pub fn sent_since_answer(&self) -> bool {
        self.read_since_write.load(Ordering::Relaxed)
    }
}

/// A client's stream, as the HTTP server reads and writes it.
pub struct ClientIo<S> {
    inner: S,
    peer: Arc<Peer>,
    send_timeout: Duration,
    /// Runs while a write waits; made on the first wait, reused after.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
    /// How long the connection may stay idle (`client.head_timeout`).
    idle_timeout: Duration,
    /// Runs while a read waits on an idle connection; made on the first such wait.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    idle_armed: bool,
    /// The peer's count of requests begun when `idle` was armed.
    idle_since: usize,
}

impl<S> ClientIo<S> {
    /// `send_timeout` bounds each wait for the client to take more of an answer;
    /// `idle_timeout` how long the connection may go without a request under way: from its
    /// start (a client that never sends a byte, or never more than the TLS handshake or
    /// part of HTTP/2's preface) and between requests, for HTTP/1.1 and HTTP/2 alike. Bytes
    /// that make no request (a head or a preface trickled in, HTTP/2 pings) do not extend
    /// it.
    pub fn new(
        inner: S,
        peer: Arc<Peer>,
        send_timeout: Duration,
        idle_timeout: Duration,
    ) -> ClientIo<S> {
        ClientIo {
            inner,
            peer,
            send_timeout,
            stalled: None,
            armed: false,
            idle_timeout,
            idle: None,
            idle_armed: false,
            idle_since: 0,
        }
    }

    /// A read waits: `Ready(err)` once the connection has been idle for longer than
    /// `idle_timeout`.
    fn wait_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if !self.peer.idle() {
            self.idle_armed = false;
            return Poll::Pending;
        }
        // A request began since the wait was armed (one answered without a read waiting
        // while it ran): the idle time counts from now.
        let began = self.peer.began.load(Ordering::Relaxed);
        if !self.idle_armed || self.idle_since != began {
            self.idle_since = began;
            let deadline = tokio::time::Instant::now() + self.idle_timeout;
            match &mut self.idle {
                Some(s) => s.as_mut().reset(deadline),
                None => self.idle = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.idle_armed = true;
        }
        let idle = self.idle.as_mut().expect("armed above");
        if idle.as_mut().poll(cx).is_ready() {
            self.peer.idle_timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request under way for client.head_timeout",
            ));
        }
        Poll::Pending
    }

    /// A write is waiting: `Ready(err)` once it has waited for longer than the timeout.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if !self.armed {
            let deadline = tokio::time::Instant::now() + self.send_timeout;
            match &mut self.stalled {
                Some(s) => s.as_mut().reset(deadline),
                None => self.stalled = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        let stalled = self.stalled.as_mut().expect("armed above");
        if stalled.as_mut().poll(cx).is_ready() {
            self.peer.send_timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took nothing more of the answer within client.send_timeout",
            ));
        }
        Poll::Pending
    }

    fn wrote(&mut self) {
        self.armed = false;
        self.peer.read_since_write.store(false, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.peer.read_since_write.store(true, Ordering::Relaxed);
                polled
            }
            Poll::Pending => this.wait_idle(cx).map(Err),
            ready => ready,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending => this.wait(cx).map(Err),
            ready => {
                this.wrote();
                ready
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.wait(cx).map(Err),
            ready => {
                this.wrote();
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.wait(cx).map(Err),
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
