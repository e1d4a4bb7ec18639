//! The gateway's own HTTP/1.1 client, for the common exchange: a request without a body,
//! or with a body in memory whole (one that came with its head to the own HTTP/1.1 server,
//! framed by its one `Content-Length`), to an upstream over HTTP/1.1 (in clear or over
//! TLS), from a client that speaks HTTP/1 (docs/performance.md, "The HTTP/1.1 client"). The
//! connection's stream is written and read by the request itself: no connection task, no
//! channel between the two, no buffers kept while the connection waits in the pool.
//!
//! Everything else goes through hyper's client, on the same connection (the pool hands the
//! stream over for good, `pool::Conn::send`): a body that streams, an upgrade, a request
//! whose answer may be cut from elsewhere while it streams (an HTTP/2 client's stall
//! watchdog), HTTP/2.
//!
//! It reads answers as hyper's client does (hyper 1.x `role::Client::parse` and `decoder`):
//! at most [`MAX_HEADERS`] headers in at most [`MAX_HEAD`] bytes, 1xx answers other than 101
//! skipped, no body for `HEAD`, 204 and 304, a chunked body when `chunked` is the last
//! coding (its trailers given as the last frame), else one of the length every
//! `Content-Length` agrees on, else one that ends when the upstream closes; `Transfer-Encoding`
//! on HTTP/1.0, a `Content-Length` that does not parse and an unasked-for 101 are malformed.
//! It writes requests as hyper's does: the method, the target, `HTTP/1.1`, the headers as
//! they are (a body's framing is its `Content-Length`; a request with `Transfer-Encoding`
//! is hyper's), then the body in the same write. The connection is kept for the
//! next request when the answer said so (HTTP/1.1 unless `Connection: close`; HTTP/1.0 with
//! `keep-alive`), its body was read to its end, and nothing came after it.

use std::future::{Future as _, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;

use super::chunked::{Chunked, Decoded};
use super::headers::{decimal, has_token};
use super::upload::RequestBody;

/// An error of a body, as hyper's server takes it.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The most headers an answer's head may have (hyper's client's limit).
pub const MAX_HEADERS: usize = 100;
/// The largest answer head (hyper's client's buffer limit).
pub const MAX_HEAD: usize = 8192 + 4096 * 100;
/// Room made for each read: the first, and at most (a body read in larger parts as it
/// keeps coming).
const FIRST_READ: usize = 8 * 1024;
const MAX_READ: usize = 64 * 1024;

/// What went wrong with an exchange.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection ended before a whole answer's head: the upstream closed it (its idle
    /// timeout, say) or reset it.
    #[error("the upstream closed the connection before answering")]
    Closed,
    /// The answer is not HTTP/1.1 as the gateway reads it.
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Error {
    /// The connection ended under the request without an answer.
    pub fn closed(&self) -> bool {
        match self {
            Error::Closed => true,
            Error::Malformed(_) => false,
            Error::Io(e) => closed_under(e),
        }
    }

    pub fn is_malformed(&self) -> bool {
        matches!(self, Error::Malformed(_))
    }
}

/// Whether an I/O error says the connection ended under an exchange (reset, or closed),
/// whichever client met it.
pub fn closed_under(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

/// Whether a request must go through hyper's client rather than this one.
pub fn needs_hyper(req: &Request<RequestBody>) -> bool {
    (req.body().has_body() && !goes_with_head(req))
        || req.method() == Method::CONNECT
        || req.headers().contains_key(header::UPGRADE)
        || req.extensions().get::<Abortable>().is_some()
}

/// Whether the request's body is in memory whole, framed by one `Content-Length` of its
/// length and nothing else: it is written with the head.
fn goes_with_head(req: &Request<RequestBody>) -> bool {
    let Some(body) = req.body().whole() else {
        return false;
    };
    let mut lengths = req.headers().get_all(header::CONTENT_LENGTH).iter();
    let length = lengths.next().and_then(|l| decimal(l.as_bytes()));
    length == Some(body.len() as u64)
        && lengths.next().is_none()
        && !req.headers().contains_key(header::TRANSFER_ENCODING)
}

/// Marks an outbound request whose answer may be cut while it streams by something other
/// than its reader (an HTTP/2 client's stall watchdog closes the upstream connection): it
/// goes through hyper's client, whose connection task can be told to close.
#[derive(Debug, Clone, Copy)]
pub struct Abortable;

/// Whether an idle connection is still open: nothing to read, and not closed. Never
/// waits, and costs no system call unless the socket was reported readable since (its
/// readiness is known without one).
pub fn alive(io: &mut Io) -> bool {
    let mut byte = [0u8; 1];
    let idle = |r: io::Result<usize>| matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock);
    // Anything read (an answer nobody asked for) or the end of the stream: not usable.
    match io {
        Io::Plain(tcp) => idle(tcp.try_read(&mut byte)),
        // Over TLS, the socket itself (an alert, a record nobody asked for, its end), and
        // what TLS read of it that nobody took (plaintext, or `close_notify`).
        Io::Tls(tls) => {
            let (tcp, session) = tls.get_mut();
            idle(tcp.try_read(&mut byte)) && idle(io::Read::read(&mut session.reader(), &mut byte))
        }
    }
}

/// A connection's stream: in clear, or over TLS.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Sends a request on `io` (without a body, or with one in memory whole, written with its
/// head) and reads its answer's head. When nothing of an answer came (the connection
/// failed or closed under it), the request comes back with the error, and whether any of it
/// was written; a request with a body comes back only if none of it was (see
/// [`given_back`]).
pub async fn send(mut io: Io, req: Request<RequestBody>) -> Result<Response<UpstreamBody>, Failed> {
    let whole = req.body().whole();
    let mut head = Vec::with_capacity(64 + req.headers().len() * 40 + whole.map_or(0, |b| b.len()));
    encode_request(&req, &mut head);
    if let Some(body) = whole {
        head.extend_from_slice(body);
    }
    let head_only = req.method() == Method::HEAD;
    let req = Some(req);
    let mut written = 0;
    while written < head.len() {
        let error = match io.write(&head[written..]).await {
            Ok(n) if n > 0 => {
                written += n;
                continue;
            }
            Ok(_) => Error::Closed,
            Err(e) => e.into(),
        };
        let sent = written > 0;
        return Err(Failed::unanswered(error, given_back(req, sent), sent));
    }
    // Over TLS, what the session holds goes out now (in clear, nothing is held).
    if let Err(e) = io.flush().await {
        return Err(Failed::unanswered(e.into(), given_back(req, true), true));
    }
    drop(head);
    let mut req = given_back(req, true);
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    loop {
        let read = poll_fn(|cx| poll_read(&mut io, &mut buf, FIRST_READ, cx)).await;
        if buf.is_empty() {
            match read {
                Ok(_) => return Err(Failed::unanswered(Error::Closed, req, true)),
                Err(e) => return Err(Failed::unanswered(e.into(), req, true)),
            }
        }
        // An answer began: the request is not needed again.
        req = None;
        if read.map_err(Failed::answered)? == 0 {
            return Err(Failed::answered(Error::Closed));
        }
        if let Some((response, framing, keep_alive)) =
            parse_head(&mut buf, head_only).map_err(Failed::answered)?
        {
            let mut body = OwnBody {
                io: Some(io),
                buf,
                framing,
                keep_alive,
                reusable: None,
            };
            if matches!(body.framing, Framing::Length(0)) {
                body.ended();
            }
            return Ok(response.map(|()| UpstreamBody::Own(body)));
        }
        if buf.len() > MAX_HEAD {
            return Err(Failed::answered(Error::Malformed("answer head too large")));
        }
    }
}

/// The request a failure gives back, once `sent` (some of it was written): one whose body
/// went out is not. Its body is taken off it first, so that a copy kept for a retry or a
/// shadow has the body whole; the request itself cannot go out again (its head says the
/// body's length, and the body is gone).
fn given_back(req: Option<Request<RequestBody>>, sent: bool) -> Option<Request<RequestBody>> {
    match req {
        Some(mut req) if sent && req.body().whole().is_some() => {
            req.body_mut().take_whole();
            None
        }
        req => req,
    }
}

/// A failed exchange.
pub struct Failed {
    pub error: Error,
    /// The request, when nothing of an answer came.
    pub request: Option<Request<RequestBody>>,
    /// Some of the request was written.
    pub sent: bool,
}

impl Failed {
    /// A request that went nowhere: none of it was written.
    pub fn unsent(error: Error, request: Request<RequestBody>) -> Failed {
        Failed {
            error,
            request: Some(request),
            sent: false,
        }
    }

    fn unanswered(error: Error, request: Option<Request<RequestBody>>, sent: bool) -> Failed {
        Failed {
            error,
            request,
            sent,
        }
    }

    fn answered(error: impl Into<Error>) -> Failed {
        Failed {
            error: error.into(),
            request: None,
            sent: true,
        }
    }
}

/// Reads what the stream has into `buf`, with room for `want` more; 0 at its end.
fn poll_read(
    io: &mut Io,
    buf: &mut BytesMut,
    want: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    buf.reserve(want);
    pin!(io.read_buf(buf)).poll(cx)
}

/// The request's head, as hyper's client writes it (its body's framing is its one
/// `Content-Length`, or none).
fn encode_request(req: &Request<RequestBody>, dst: &mut Vec<u8>) {
    dst.extend_from_slice(req.method().as_str().as_bytes());
    dst.push(b' ');
    let uri = req.uri();
    match uri.path_and_query() {
        Some(pq) if uri.scheme().is_none() => dst.extend_from_slice(pq.as_str().as_bytes()),
        _ => {
            use std::io::Write as _;
            let _ = write!(dst, "{uri}");
        }
    }
    dst.extend_from_slice(if req.version() == Version::HTTP_10 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    for (name, value) in req.headers() {
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
}

/// How an answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// After this many more bytes.
    Length(u64),
    Chunked(Chunked),
    /// When the upstream closes the connection.
    Eof,
    Done,
}

/// Parses an answer's head at the start of `buf` (which it takes off), skipping 1xx
/// answers; `None` while the head is incomplete.
fn parse_head(
    buf: &mut BytesMut,
    head_only: bool,
) -> Result<Option<(Response<()>, Framing, bool)>, Error> {
    loop {
        // Left uninitialised: httparse writes those it parses (no 3 KiB cleared per answer).
        let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut headers,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Error::Malformed("too many headers"));
            }
            Err(_) => return Err(Error::Malformed("answer head does not parse")),
        };
        let code = parsed.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| Error::Malformed("status code out of range"))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(Error::Malformed(
                    "101 to a request that asked for no upgrade",
                ));
            }
            let _ = buf.split_to(len);
            continue;
        }
        let version = if parsed.version == Some(1) {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        // Where each name, value and the reason are in the head, to share its bytes.
        let base = buf.as_ptr() as usize;
        let at = |part: &[u8]| {
            let start = part.as_ptr() as usize - base;
            start..start + part.len()
        };
        let places: SmallVec<[_; 24]> = parsed
            .headers
            .iter()
            .map(|h| (at(h.name.as_bytes()), at(h.value)))
            .collect();
        let reason = parsed
            .reason
            .filter(|r| Some(*r) != status.canonical_reason())
            .map(|r| at(r.as_bytes()));
        let head = buf.split_to(len).freeze();
        // Room for the headers the gateway adds to an answer (the request id, `Via`).
        let mut map = HeaderMap::with_capacity(places.len() + 2);
        let mut keep_alive = version == Version::HTTP_11;
        let mut saw_close = false;
        for (name, value) in places {
            let name = HeaderName::from_bytes(&head[name])
                .map_err(|_| Error::Malformed("invalid header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(value))
                .map_err(|_| Error::Malformed("invalid header value"))?;
            if name == header::CONNECTION {
                // Once any `Connection` line says `close`, a later `keep-alive` does not
                // undo it.
                if saw_close || has_token(&value, "close") {
                    saw_close = true;
                    keep_alive = false;
                } else if !keep_alive {
                    keep_alive = has_token(&value, "keep-alive");
                }
            }
            map.append(name, value);
        }
        let framing = framing(status, head_only, version, &map)?;
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = map;
        if let Some(reason) = reason
            && let Ok(reason) = hyper::ext::ReasonPhrase::try_from(head.slice(reason))
        {
            response.extensions_mut().insert(reason);
        }
        let keep_alive = keep_alive && framing != Framing::Eof;
        return Ok(Some((response, framing, keep_alive)));
    }
}

/// How the body of an answer ends (RFC 9112 §6.3, as hyper's client reads it).
fn framing(
    status: StatusCode,
    head_only: bool,
    version: Version,
    headers: &HeaderMap,
) -> Result<Framing, Error> {
    if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Length(0));
    }
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(last) = codings.next_back() {
        if version == Version::HTTP_10 {
            return Err(Error::Malformed("Transfer-Encoding in HTTP/1.0"));
        }
        let chunked = last
            .as_bytes()
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        return Ok(if chunked {
            Framing::Chunked(Chunked::new())
        } else {
            Framing::Eof
        });
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let n = decimal(item.trim_ascii()).ok_or(Error::Malformed("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::Malformed("Content-Length values differ"));
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(Framing::Eof, Framing::Length))
}

/// An answer's body as the upstream sends it, read by whoever takes it.
pub enum UpstreamBody {
    Hyper(Incoming),
    Own(OwnBody),
}

impl UpstreamBody {
    /// The connection's stream, when the body was read to its end and the connection may
    /// carry another request.
    pub fn reusable(&mut self) -> Option<Io> {
        match self {
            UpstreamBody::Own(b) => b.reusable.take(),
            UpstreamBody::Hyper(_) => None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            UpstreamBody::Hyper(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(Into::into))),
            UpstreamBody::Own(b) => b.poll_frame(cx).map(|f| f.map(|f| f.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(b) => b.is_end_stream(),
            UpstreamBody::Own(b) => b.framing == Framing::Done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Hyper(b) => b.size_hint(),
            UpstreamBody::Own(b) => match b.framing {
                Framing::Length(n) => SizeHint::with_exact(n),
                Framing::Done => SizeHint::with_exact(0),
                _ => SizeHint::default(),
            },
        }
    }
}

/// A body read by this client from the connection's stream.
pub struct OwnBody {
    /// The stream, until the body ends (or fails).
    io: Option<Io>,
    /// Read and not yet given out.
    buf: BytesMut,
    framing: Framing,
    keep_alive: bool,
    /// The stream, once the body ended with the connection fit for another request.
    reusable: Option<Io>,
}

impl OwnBody {
    /// The body has ended: its stream is kept for another request if the answer allows
    /// it and nothing came after the body; closed otherwise.
    fn ended(&mut self) {
        self.framing = Framing::Done;
        let io = self.io.take();
        if self.keep_alive && self.buf.is_empty() {
            self.reusable = io;
        }
    }

    fn failed(&mut self, why: &'static str) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        self.framing = Framing::Done;
        self.io = None;
        Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::UnexpectedEof, why))))
    }

    /// Reads more into the buffer; `Ok(false)` at the stream's end.
    fn poll_more(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<bool>> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Ok(false));
        };
        let want = want.clamp(FIRST_READ, MAX_READ);
        Poll::Ready(ready!(poll_read(io, &mut self.buf, want, cx)).map(|n| n > 0))
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        loop {
            match self.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(0) => {
                    self.ended();
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    if let Some(data) = self.take(left) {
                        let left = left - data.len() as u64;
                        self.framing = Framing::Length(left);
                        if left == 0 {
                            self.ended();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    let want = usize::try_from(left).unwrap_or(MAX_READ);
                    if !ready!(self.poll_more(cx, want))? {
                        return self
                            .failed("the upstream closed the connection before the body's end");
                    }
                }
                Framing::Eof => {
                    if !self.buf.is_empty() {
                        let data = self.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if !ready!(self.poll_more(cx, MAX_READ))? {
                        self.ended();
                        return Poll::Ready(None);
                    }
                }
                Framing::Chunked(mut chunked) => {
                    let decoded = chunked.decode(&mut self.buf);
                    self.framing = Framing::Chunked(chunked);
                    match decoded {
                        Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Ok(Decoded::Trailers(trailers)) => {
                            self.ended();
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Ok(Decoded::End) => {
                            self.ended();
                            return Poll::Ready(None);
                        }
                        Ok(Decoded::More) => {
                            let want = chunked.data_left().map_or(FIRST_READ, |left| {
                                usize::try_from(left).unwrap_or(MAX_READ)
                            });
                            if !ready!(self.poll_more(cx, want))? {
                                return self.failed(
                                    "the upstream closed the connection before the body's end",
                                );
                            }
                        }
                        Err(why) => {
                            self.framing = Framing::Done;
                            self.io = None;
                            return Poll::Ready(Some(Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                why,
                            ))));
                        }
                    }
                }
            }
        }
    }

    /// Up to `left` bytes of what was read, if any.
    fn take(&mut self, left: u64) -> Option<Bytes> {
        if self.buf.is_empty() {
            return None;
        }
        let n = usize::try_from(left).map_or(self.buf.len(), |l| l.min(self.buf.len()));
        Some(self.buf.split_to(n).freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, head_only: bool) -> Result<Option<(Response<()>, Framing, bool)>, Error> {
        parse_head(&mut BytesMut::from(raw.as_bytes()), head_only)
    }

    fn framing_of(raw: &str) -> Framing {
        head(raw, false).unwrap().unwrap().1
    }

    #[test]
    fn framing_follows_the_answer_as_hyper_reads_it() {
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
            Framing::Length(5)
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\ncontent-length: 5\r\n\r\n"),
            Framing::Length(5)
        );
        assert_eq!(
            framing_of(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 5\r\n\r\n"
            ),
            Framing::Chunked(Chunked::new())
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"),
            Framing::Eof
        );
        assert_eq!(framing_of("HTTP/1.1 200 OK\r\n\r\n"), Framing::Eof);
        assert_eq!(
            framing_of("HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n"),
            Framing::Length(0)
        );
        let (_, f, _) = head("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(f, Framing::Length(0));
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
            "HTTP/1.1 99 Odd\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        ] {
            assert!(head(bad, false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keep_alive_and_informational_answers() {
        let ka = |raw: &str| head(raw, false).unwrap().unwrap().2;
        assert!(ka("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(!ka(
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!ka(
            "HTTP/1.1 200 OK\r\nconnection: close\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!ka("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(ka(
            "HTTP/1.0 200 OK\r\nconnection: Keep-Alive\r\ncontent-length: 0\r\n\r\n"
        ));
        // A body that ends with the connection: never kept.
        assert!(!ka("HTTP/1.1 200 OK\r\n\r\n"));
        let (r, _, _) = head(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Made\r\nx: 1\r\ncontent-length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["x"], "1");
        assert!(!r.headers().contains_key("link"));
        assert_eq!(
            r.extensions()
                .get::<hyper::ext::ReasonPhrase>()
                .map(|p| p.as_bytes()),
            Some(&b"Made"[..])
        );
        assert!(
            head("HTTP/1.1 200 OK\r\ncontent-le", false)
                .unwrap()
                .is_none()
        );
    }
}
