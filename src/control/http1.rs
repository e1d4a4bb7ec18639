//! The public listener's own HTTP/1.1 server, for the common request: an HTTP/1.1 request
//! without a body, or with one framed by one `Content-Length` of digits only or by
//! `Transfer-Encoding: chunked` alone, perhaps with `Expect: 100-continue` (no other
//! expectation, no `Upgrade` or `TE`), in origin form, with at most [`MAX_HEADERS`] headers
//! in at most [`MAX_HEAD`] bytes. Everything else (another coding, both framings, an
//! upgrade, HTTP/1.0, HTTP/2's preface, a head that does not parse, a read that fails
//! midway through a head) hands the connection to hyper, with the bytes read so far, at the
//! start of that request: hyper then serves the connection to its end, with every limit and
//! answer it has (docs/performance.md, "The HTTP/1.1 server").
//!
//! What it buys: a kept-alive connection holds no buffer between its requests (a head is
//! read into the thread's own buffer and copied out once, into the `Bytes` its header
//! values share), and a request costs one parse, one allocation for its head and one
//! `writev` for an answer whose body is ready with its head.
//!
//! A body that came whole with its head is given to the request from memory. A client
//! that expects `100 Continue` and sent none of its body is told to send it when the
//! request first wants it (as hyper does), not if the request is answered first. Any other
//! is read as the request takes it (a chunked one as hyper reads it, `proxy::chunked`), a
//! part at a time, beside the request while it runs and beside its answer while that is written (an upstream may answer as it reads);
//! when the answer has been written before the body was read to its end, or the request
//! let its body go, the connection is closed (with `Connection: close` when that was known
//! before the answer's head went out), so that the rest of the body is never read as a
//! request.
//!
//! It answers as hyper does (hyper 1.x `role::Server::encode`): the same status line,
//! `Content-Length` from the body's length when the answer has none, `Transfer-Encoding:
//! chunked` for a body of unknown length, no body for `HEAD`, 204 and 304, `Connection:
//! close` added when the client asked for it or a drain began, the connection closed after
//! an answer that says `close`, after a body that ended short of its length and when the
//! client's connection ends while its request is under way (which cancels the request; one
//! that ends within the request's body fails the body, and the request ends as an upload
//! the client left).

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body::{Body as _, Frame};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::sync::watch;

use crate::proxy::chunked::{Chunked, Decoded};
use crate::proxy::headers::{decimal, has_token};
use crate::proxy::inbound::{self, Feeder, Inbound};
use crate::proxy::{Gateway, Peer, ResponseBody};

/// The largest request head this server reads; a larger one goes to hyper (which takes
/// heads up to its own limit, and answers beyond it).
pub const MAX_HEAD: usize = 16 * 1024;
/// The most request headers this server parses; more go to hyper.
pub const MAX_HEADERS: usize = 64;
/// How many headers the gateway may add to a request on its way upstream.
const ADDED_UPSTREAM: usize = 6;
/// The largest `Content-Length` this server takes; a larger one goes to hyper, which
/// refuses it (hyper 1.x's limit).
const MAX_LENGTH: u64 = u64::MAX - 2;

thread_local! {
    /// Each public thread reads into this buffer: a connection waiting for its next request
    /// holds none of its own.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; MAX_HEAD].into_boxed_slice());
}

/// The connection, handed to hyper at the start of a request this server does not take.
pub struct Handoff<I> {
    pub io: I,
    /// What was read of the connection and not yet served.
    pub read: Vec<u8>,
    /// This server answered requests of the connection before: it is HTTP/1.1 (a client
    /// cannot switch it to HTTP/2 now).
    pub served: bool,
    /// The listener's drain, as [`serve`] was given it.
    pub drain: watch::Receiver<bool>,
}

/// Serves the connection's requests until it ends (`None`), or until a request that hyper
/// must serve (`Some`). `drain` turns true when the listener drains: an idle connection is
/// closed, a busy one after its answer.
pub async fn serve<I>(
    mut io: I,
    gateway: &Arc<Gateway>,
    peer: &Arc<Peer>,
    mut drain: watch::Receiver<bool>,
) -> Option<Handoff<I>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    peer.served_by_own_http1(true);
    // Bytes read and not yet served: a head that came in pieces, or the next requests a
    // client sent without waiting (pipelining). Empty (and unallocated) between requests.
    let mut read = Vec::new();
    let mut served = false;
    loop {
        let head = match next_head(&mut io, &mut read, &mut drain).await {
            Next::Head(head) => head,
            Next::Closed => {
                let _ = io.shutdown().await;
                return None;
            }
            Next::TimedOut => {
                // As hyper does: closed without an answer, recorded.
                gateway.record_head_timeout(peer);
                return None;
            }
            Next::Hyper => {
                peer.served_by_own_http1(false);
                return Some(Handoff {
                    io,
                    read,
                    served,
                    drain,
                });
            }
        };
        served = true;
        let served = exchange(&mut io, &mut read, gateway, peer, head, &drain).await;
        match served {
            Ok(true) => {}
            Ok(false) => {
                let _ = io.shutdown().await;
                return None;
            }
            Err(e) => {
                tracing::debug!(peer = %peer.addr, error = %e, "client connection ended with an error");
                return None;
            }
        }
    }
}

/// A request head, parsed.
struct Head {
    parts: http::request::Parts,
    /// The client asked to close the connection after this request.
    close: bool,
    body: BodyFraming,
    /// `Expect: 100-continue`: the client waits to be told to send its body.
    expects_continue: bool,
}

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum BodyFraming {
    /// `Content-Length` (0 without one).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

// Returned and matched at once, never stored: boxing the head would cost an allocation per
// request.
#[allow(clippy::large_enum_variant)]
enum Next {
    Head(Head),
    /// The connection ended (or the drain closed it) between requests.
    Closed,
    /// The client left a head unfinished for longer than `client.head_timeout`.
    TimedOut,
    /// The next request is for hyper.
    Hyper,
}

/// The next request head: from what was read already, then from the connection.
async fn next_head<I>(io: &mut I, read: &mut Vec<u8>, drain: &mut watch::Receiver<bool>) -> Next
where
    I: AsyncRead + Unpin,
{
    loop {
        if !read.is_empty() {
            match parse(read) {
                Parsed::Head(head, len) => {
                    drop_front(read, len);
                    return Next::Head(head);
                }
                Parsed::Partial if read.len() < MAX_HEAD => {}
                Parsed::Partial | Parsed::Other => return Next::Hyper,
            }
        }
        let got = if read.is_empty() {
            if *drain.borrow() {
                return Next::Closed;
            }
            tokio::select! {
                biased;
                got = poll_fn(|cx| poll_read_head(io, cx, read)) => got,
                _ = drain.wait_for(|d| *d) => return Next::Closed,
            }
        } else {
            poll_fn(|cx| poll_read_head(io, cx, read)).await
        };
        match got {
            Ok(Got::Head(head)) => return Next::Head(head),
            Ok(Got::Read) => {}
            Ok(Got::Other) => return Next::Hyper,
            // Nothing of a request read: the client closed an idle connection, or it went
            // idle for longer than `client.head_timeout`.
            Ok(Got::End) | Err(_) if read.is_empty() => return Next::Closed,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Next::TimedOut,
            // Midway through a head: hyper reads what came and meets the same end, which it
            // answers and records as it does on any connection.
            Ok(Got::End) | Err(_) => return Next::Hyper,
        }
    }
}

// Returned and matched at once, never stored: boxing the head would cost an allocation per
// request.
#[allow(clippy::large_enum_variant)]
enum Got {
    /// A whole head came in one read, parsed where it was read; what followed it is in
    /// `read`.
    Head(Head),
    /// Bytes came and were added to `read`.
    Read,
    /// Bytes came that this server does not serve (added to `read`).
    Other,
    /// The client closed its side.
    End,
}

/// Reads what the client sent, into the thread's buffer; a whole head read at once is
/// parsed there, anything else is kept in `read`.
fn poll_read_head<I>(io: &mut I, cx: &mut Context<'_>, read: &mut Vec<u8>) -> Poll<io::Result<Got>>
where
    I: AsyncRead + Unpin,
{
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let room = MAX_HEAD.saturating_sub(read.len()).max(1);
        let mut buf = ReadBuf::new(&mut scratch[..room]);
        ready!(Pin::new(&mut *io).poll_read(cx, &mut buf))?;
        let got = buf.filled();
        if got.is_empty() {
            return Poll::Ready(Ok(Got::End));
        }
        if read.is_empty() {
            match parse(got) {
                Parsed::Head(head, len) => {
                    read.extend_from_slice(&got[len..]);
                    return Poll::Ready(Ok(Got::Head(head)));
                }
                Parsed::Partial => {}
                Parsed::Other => {
                    read.extend_from_slice(got);
                    return Poll::Ready(Ok(Got::Other));
                }
            }
        }
        read.extend_from_slice(got);
        Poll::Ready(Ok(Got::Read))
    })
}

// Returned and matched at once, never stored: boxing the head would cost an allocation per
// request.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// A head this server serves, and its length.
    Head(Head, usize),
    /// Not a whole head yet.
    Partial,
    /// A head for hyper (or no head at all).
    Other,
}

/// Parses the head at the start of `buf`: one this server serves, or not.
fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    match own_head(&req, &buf[..len]) {
        Some(head) => Parsed::Head(head, len),
        None => Parsed::Other,
    }
}

/// The request of a parsed head, if this server serves it: its header values and target
/// share one copy of the head.
fn own_head(req: &httparse::Request<'_, '_>, raw: &[u8]) -> Option<Head> {
    if req.version != Some(1) {
        return None;
    }
    let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
    let target = req.path?;
    if method == Method::CONNECT || !target.starts_with('/') {
        return None;
    }
    let bytes = Bytes::copy_from_slice(raw);
    let base = raw.as_ptr() as usize;
    // The same bytes, in the copy.
    let shared = |part: &[u8]| {
        let at = part.as_ptr() as usize - base;
        bytes.slice(at..at + part.len())
    };
    let uri = Uri::from_maybe_shared(shared(target.as_bytes())).ok()?;
    // Room for the headers the gateway adds on the way upstream (the request id, the
    // forwarding headers, `Via`): the map is not grown, and rehashed, on the way.
    let mut map = HeaderMap::with_capacity(req.headers.len() + ADDED_UPSTREAM);
    let mut close = false;
    let mut length = None;
    let mut chunked = false;
    let mut expects_continue = false;
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        match name {
            // One length, of digits only: anything else (a second one above all, even an
            // equal one) is hyper's to judge.
            header::CONTENT_LENGTH if length.is_none() => {
                length = Some(decimal(h.value).filter(|&n| n <= MAX_LENGTH)?);
            }
            // `chunked`, once and alone: another coding, or a second line, is hyper's to
            // judge (the gateway refuses them there).
            header::TRANSFER_ENCODING
                if !chunked && h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") =>
            {
                chunked = true;
            }
            // One expectation, the only one there is; another is hyper's to judge.
            header::EXPECT
                if !expects_continue && h.value.eq_ignore_ascii_case(b"100-continue") =>
            {
                expects_continue = true;
            }
            header::CONTENT_LENGTH
            | header::TRANSFER_ENCODING
            | header::EXPECT
            | header::UPGRADE
            | header::TE => return None,
            header::CONNECTION => {
                for token in h.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                        // An upgrade (`HTTP2-Settings`) or a hop-by-hop header named.
                        return None;
                    }
                }
            }
            _ => {}
        }
        let value = HeaderValue::from_maybe_shared(shared(h.value)).ok()?;
        map.append(name, value);
    }
    let mut parts = Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    parts.headers = map;
    let body = match (length, chunked) {
        (None, true) => BodyFraming::Chunked,
        // Both: hyper frames it by the coding and drops the length.
        (Some(_), true) => return None,
        (length, false) => BodyFraming::Length(length.unwrap_or(0)),
    };
    Some(Head {
        parts,
        close,
        body,
        expects_continue,
    })
}

/// Serves one request: the gateway's answer, written. `Ok(true)`: the connection stays
/// open for the next request.
async fn exchange<I>(
    io: &mut I,
    read: &mut Vec<u8>,
    gateway: &Arc<Gateway>,
    peer: &Arc<Peer>,
    head: Head,
    drain: &watch::Receiver<bool>,
) -> io::Result<bool>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let body = match head.body {
        BodyFraming::Length(0) => None,
        // The whole body came with its head: the request takes it from memory.
        BodyFraming::Length(length) if read.len() as u64 >= length => {
            Some(Inbound::Whole(Some(take_front(read, length as usize))))
        }
        // Boxed: a connection holds no room for a body's exchange between requests.
        _ => return Box::pin(exchange_with_body(io, read, gateway, peer, head, drain)).await,
    };
    let Head { parts, close, .. } = head;
    let head_request = parts.method == Method::HEAD;
    let request = Request::from_parts(parts, body);
    let response = {
        // The request's future is boxed on its own and freed with its answer: the
        // connection keeps a pointer, not room for it, between requests.
        let mut handling = Box::pin(gateway.handle(request, peer));
        under_way(handling.as_mut(), io, read).await?
    };
    let keep_alive = !close && !*drain.borrow();
    // Boxed as the request's future is: the connection holds neither between requests.
    let complete = Box::pin(answer(io, response, head_request, keep_alive)).await?;
    Ok(complete && !*drain.borrow())
}

/// The request's answer, the client's side watched while the request is under way: its
/// end cancels the request (as hyper does), what it sends is the next request.
async fn under_way<I, F>(
    mut handling: Pin<&mut F>,
    io: &mut I,
    read: &mut Vec<u8>,
) -> io::Result<http::Response<ResponseBody>>
where
    I: AsyncRead + Unpin,
    F: Future<Output = Result<http::Response<ResponseBody>, Infallible>>,
{
    loop {
        if !read.is_empty() {
            // A next request is waiting already: nothing more is read until this one is
            // answered.
            let Ok(response) = handling.await;
            return Ok(response);
        }
        tokio::select! {
            biased;
            Ok(response) = &mut handling => return Ok(response),
            got = poll_fn(|cx| poll_read_more(io, cx, read)) => match got {
                Ok(true) => {}
                Ok(false) => return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed its connection while its request was under way",
                )),
                Err(e) => return Err(e),
            },
        }
    }
}

/// Serves one request with a body to read: the body read as the request takes it, beside
/// the request while it runs and beside its answer while that is written.
async fn exchange_with_body<I>(
    io: &mut I,
    read: &mut Vec<u8>,
    gateway: &Arc<Gateway>,
    peer: &Arc<Peer>,
    head: Head,
    drain: &watch::Receiver<bool>,
) -> io::Result<bool>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let Head {
        parts,
        close,
        body,
        expects_continue,
    } = head;
    let head_request = parts.method == Method::HEAD;
    // A client that waits to be told to send its body (and sent none of it yet) is told so
    // once the request wants it (as hyper does); not if the request is answered first.
    let mut owed_continue = expects_continue && read.is_empty();
    let (feeder, inbound) = inbound::fed(
        match body {
            BodyFraming::Length(length) => Some(length),
            BodyFraming::Chunked => None,
        },
        owed_continue,
    );
    let mut upload = Upload::new(feeder, body, read);
    let request = Request::from_parts(parts, Some(inbound));
    let mut handling = Box::pin(gateway.handle(request, peer));
    let answered = loop {
        if owed_continue {
            tokio::select! {
                biased;
                Ok(response) = &mut handling => break Some(response),
                wanted = upload.feeder.wanted() => {
                    owed_continue = false;
                    if wanted {
                        // Written whole before anything else happens: the answer's head
                        // cannot come in the middle of it.
                        io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                        io.flush().await?;
                    }
                }
            }
            continue;
        }
        break tokio::select! {
            biased;
            Ok(response) = &mut handling => Some(response),
            () = upload.feed(io, read) => None,
        };
    };
    let response = match answered {
        Some(response) => response,
        None if upload.whole() => under_way(handling.as_mut(), io, read).await?,
        // The request let its body go, or the client's side ended or failed within it
        // (the request was told): nothing more is read of the connection.
        None => {
            let Ok(response) = handling.await;
            response
        }
    };
    let keep_alive = !close && !*drain.borrow();
    let complete = if upload.whole() {
        answer(io, response, head_request, keep_alive).await?
    } else if upload.ended || upload.feeder.let_go() {
        // What is left of the body will not be read: the connection carries no other
        // request, and the answer says so.
        answer(io, response, head_request, false).await?;
        false
    } else {
        // The request still takes its body as its answer goes out (an upstream that
        // answers as it reads): both at once; the connection is kept only if the body
        // was read to its end by the time the answer was written.
        answer_beside(io, read, &mut upload, response, head_request, keep_alive).await?
    };
    Ok(complete && !*drain.borrow())
}

/// Writes the answer while the request still takes its body: `Ok(true)` when the answer
/// was written whole, the connection may be kept, and the body was read to its end by then.
async fn answer_beside<I>(
    io: &mut I,
    read: &mut Vec<u8>,
    upload: &mut Upload,
    response: http::Response<ResponseBody>,
    head_request: bool,
    keep_alive: bool,
) -> io::Result<bool>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let complete = {
        let mut answering = std::pin::pin!(answer(&mut writer, response, head_request, keep_alive));
        let mut feeding = std::pin::pin!(upload.feed(&mut reader, read));
        let mut fed = false;
        loop {
            tokio::select! {
                biased;
                complete = &mut answering => break complete?,
                () = &mut feeding, if !fed => fed = true,
            }
        }
    };
    Ok(complete && upload.whole())
}

/// The room made for a read of a request body: at least, and at most (a part the request
/// takes).
const FIRST_PART: u64 = 8 * 1024;
const MAX_PART: u64 = 64 * 1024;
/// A part smaller than this is copied out of the buffer it was read into: a part kept for a
/// replay or a shadow holds about its own size, not a buffer (a body that trickles in a
/// byte at a time would otherwise hold a buffer per byte).
const SHARED_PART: usize = 16 * 1024;

/// A request's body on its way from the connection to the request.
struct Upload {
    feeder: Feeder,
    reading: Reading,
    /// The body was read to its end.
    whole: bool,
    /// The request let its body go, or the client's side ended or failed within it.
    ended: bool,
}

/// Where the reading of a body stands, and what was read of the connection and not yet
/// taken (a chunked body's bytes, and once it ended what came after it, given back to the
/// connection).
enum Reading {
    /// Bytes of it not yet read.
    Length(u64, BytesMut),
    Chunked(Chunked, BytesMut),
}

impl Upload {
    /// The upload of a body framed so; what came with the head is in `read`.
    fn new(feeder: Feeder, framing: BodyFraming, read: &mut Vec<u8>) -> Upload {
        let reading = match framing {
            BodyFraming::Length(length) => Reading::Length(length, BytesMut::new()),
            BodyFraming::Chunked => {
                Reading::Chunked(Chunked::new(), BytesMut::from(&std::mem::take(read)[..]))
            }
        };
        Upload {
            feeder,
            reading,
            whole: false,
            ended: false,
        }
    }

    fn whole(&self) -> bool {
        self.whole
    }

    /// Feeds the request its body (what came with its head first, then from the
    /// connection), a part at a time as the request takes them, until its end, until the
    /// request lets it go, or until the client's side ends or fails (the request is told).
    /// Nothing is lost if it is dropped midway: it can be called again.
    async fn feed<R>(&mut self, io: &mut R, read: &mut Vec<u8>)
    where
        R: AsyncRead + Unpin,
    {
        while !self.whole && !self.ended {
            if !self.feeder.taken().await {
                self.ended = true;
                return;
            }
            let part = match &mut self.reading {
                Reading::Length(left, buf) => length_part(left, buf, io, read)
                    .await
                    .map(|data| Some(Frame::data(data))),
                Reading::Chunked(chunked, buf) => chunked_part(chunked, buf, io, read).await,
            };
            match part {
                Ok(part) => {
                    self.whole = match (&self.reading, &part) {
                        (Reading::Length(left, _), _) => *left == 0,
                        (Reading::Chunked(..), Some(frame)) => frame.is_trailers(),
                        (Reading::Chunked(..), None) => true,
                    };
                    self.feeder.give(Ok(part));
                }
                Err(e) => {
                    self.ended = true;
                    self.feeder.give(Err(e));
                }
            }
        }
    }
}

/// The next part of a body of `left` more bytes (taken off `left`): what came with the
/// head first, then from the connection.
async fn length_part<R>(
    left: &mut u64,
    buf: &mut BytesMut,
    io: &mut R,
    read: &mut Vec<u8>,
) -> io::Result<Bytes>
where
    R: AsyncRead + Unpin,
{
    let part = if read.is_empty() {
        buf.reserve((*left).clamp(FIRST_PART, MAX_PART) as usize);
        if (&mut *io).take(*left).read_buf(buf).await? == 0 {
            return Err(closed_within_body());
        }
        kept(buf.split().freeze())
    } else {
        // What came with the head: the body's share of it (the rest is the next request).
        take_front(
            read,
            read.len().min(usize::try_from(*left).unwrap_or(usize::MAX)),
        )
    };
    *left -= part.len() as u64;
    Ok(part)
}

/// The next part of a chunked body: a frame (its trailers are the last), or its end
/// (`None`). At the end, what came after the body goes back to `read`.
async fn chunked_part<R>(
    chunked: &mut Chunked,
    buf: &mut BytesMut,
    io: &mut R,
    read: &mut Vec<u8>,
) -> io::Result<Option<Frame<Bytes>>>
where
    R: AsyncRead + Unpin,
{
    loop {
        let end = match chunked.decode(buf) {
            Ok(Decoded::Data(data)) => return Ok(Some(Frame::data(kept(data)))),
            Ok(Decoded::Trailers(trailers)) => Some(Frame::trailers(trailers)),
            Ok(Decoded::End) => None,
            Ok(Decoded::More) => {
                let want = chunked
                    .data_left()
                    .map_or(FIRST_PART, |left| left.clamp(FIRST_PART, MAX_PART));
                buf.reserve(want as usize);
                if io.read_buf(buf).await? == 0 {
                    return Err(closed_within_body());
                }
                continue;
            }
            Err(why) => return Err(io::Error::new(io::ErrorKind::InvalidData, why)),
        };
        read.extend_from_slice(buf);
        *buf = BytesMut::new();
        return Ok(end);
    }
}

/// Takes the first `n` bytes of what was read.
fn take_front(read: &mut Vec<u8>, n: usize) -> Bytes {
    if n == read.len() {
        // All of it (a body that came alone after its head): the buffer itself, uncopied.
        return Bytes::from(std::mem::take(read));
    }
    let taken = Bytes::copy_from_slice(&read[..n]);
    drop_front(read, n);
    taken
}

/// Drops the first `n` bytes of what was read; the buffer is let go when nothing is left
/// (a connection holds nothing while it waits).
fn drop_front(read: &mut Vec<u8>, n: usize) {
    read.drain(..n);
    if read.is_empty() {
        *read = Vec::new();
    }
}

/// A part as the request keeps it: a copy of its own when it is small (see
/// [`SHARED_PART`]), the buffer's bytes otherwise.
fn kept(part: Bytes) -> Bytes {
    if part.len() < SHARED_PART {
        Bytes::copy_from_slice(&part)
    } else {
        part
    }
}

fn closed_within_body() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the client closed its connection before the end of its body",
    )
}

/// Writes the gateway's answer. `Ok(true)`: the connection stays open for the next
/// request.
async fn answer<I>(
    io: &mut I,
    response: http::Response<ResponseBody>,
    head_request: bool,
    keep_alive: bool,
) -> io::Result<bool>
where
    I: AsyncWrite + Unpin,
{
    let (parts, body) = response.into_parts();
    let mut out = Vec::with_capacity(64 + parts.headers.len() * 40);
    let Some((encoding, keep_alive)) =
        encode_head(&parts, &body, head_request, keep_alive, &mut out)
    else {
        return Err(io::Error::other(
            "an answer that cannot be written as HTTP/1.1",
        ));
    };
    drop(parts);
    let complete = write_body(io, out, body, encoding).await?;
    io.flush().await?;
    Ok(complete && keep_alive)
}

/// Reads what the client sends while its request is under way (the next request, or its
/// end): `Ok(false)` at its end.
fn poll_read_more<I>(io: &mut I, cx: &mut Context<'_>, read: &mut Vec<u8>) -> Poll<io::Result<bool>>
where
    I: AsyncRead + Unpin,
{
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let mut buf = ReadBuf::new(&mut scratch[..]);
        ready!(Pin::new(&mut *io).poll_read(cx, &mut buf))?;
        read.extend_from_slice(buf.filled());
        Poll::Ready(Ok(!buf.filled().is_empty()))
    })
}

/// How an answer's body is written.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Encoding {
    /// Exactly this many bytes (none for `HEAD`, 204 and 304).
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 answer of unknown length).
    Close,
}

/// Writes the answer's status line and headers into `dst`, as hyper does; how its body
/// goes, and whether the connection stays open after it. `None`: an answer that cannot
/// be written (a 1xx, or `Content-Length` values that disagree).
fn encode_head(
    parts: &http::response::Parts,
    body: &ResponseBody,
    head_request: bool,
    mut keep_alive: bool,
    dst: &mut Vec<u8>,
) -> Option<(Encoding, bool)> {
    let status = parts.status;
    if status.is_informational() {
        return None;
    }
    let http10 = parts.version == Version::HTTP_10;
    let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
    if !http10 && status == StatusCode::OK && reason.is_none() {
        dst.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        dst.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        dst.extend_from_slice(status.as_str().as_bytes());
        dst.push(b' ');
        match reason {
            Some(r) => dst.extend_from_slice(r.as_bytes()),
            None => dst.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes()),
        }
        dst.extend_from_slice(b"\r\n");
    }

    // The body: none, of a known length, or of one to be found.
    let length = if body.is_end_stream() {
        None
    } else {
        Some(body.size_hint().exact())
    };
    let bodiless_status = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let can_chunk = !head_request && !bodiless_status && !http10;
    let mut encoding = Encoding::Length(0);
    let mut wrote_len = false;
    let mut closes = false;
    for name in parts.headers.keys() {
        let all = parts.headers.get_all(name);
        let mut values = all.iter();
        match *name {
            header::CONTENT_LENGTH => {
                if encoding == Encoding::Chunked {
                    // hyper refuses an answer with both.
                    return None;
                }
                let first = values.next().expect("a key has a value");
                match length {
                    Some(Some(n)) => encoding = Encoding::Length(n),
                    Some(None) => {
                        let n = content_length(first)?;
                        if values.any(|v| content_length(v) != Some(n)) {
                            return None;
                        }
                        encoding = Encoding::Length(n);
                    }
                    // No body: the length is the one a `HEAD` would have had; otherwise it
                    // is left out, and `Content-Length: 0` said below.
                    None if head_request => {}
                    None => continue,
                }
                line(dst, b"content-length", first.as_bytes());
                wrote_len = true;
            }
            header::TRANSFER_ENCODING => {
                if !can_chunk {
                    continue;
                }
                if wrote_len {
                    // hyper refuses an answer with both.
                    return None;
                }
                joined(dst, b"transfer-encoding", all.iter());
                let last_chunked = all.iter().next_back().is_some_and(|v| {
                    v.as_bytes()
                        .rsplit(|&b| b == b',')
                        .next()
                        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
                });
                if !last_chunked {
                    // As hyper, which makes `chunked` the last coding.
                    add_to_line(dst, b"chunked");
                }
                encoding = Encoding::Chunked;
                wrote_len = true;
            }
            header::CONNECTION => {
                closes |= all.iter().any(|v| has_token(v, "close"));
                joined(dst, b"connection", all.iter());
                if !keep_alive && !closes {
                    // As hyper, which adds `close` to the answer's own `Connection`.
                    add_to_line(dst, b"close");
                    closes = true;
                }
            }
            header::TRAILER => {
                if can_chunk {
                    joined(dst, b"trailer", all.iter());
                }
            }
            _ => {
                for v in all {
                    line(dst, name.as_str().as_bytes(), v.as_bytes());
                }
            }
        }
    }
    // As hyper, which says `close` when the connection will not be kept (and the answer
    // has not said so).
    if !keep_alive && !closes {
        line(dst, b"connection", b"close");
    }
    keep_alive &= !closes;
    if !wrote_len {
        encoding = match length {
            Some(None) if !can_chunk => Encoding::Close,
            Some(None) => {
                line(dst, b"transfer-encoding", b"chunked");
                Encoding::Chunked
            }
            None | Some(Some(0)) => {
                if !bodiless_status && !head_request {
                    line(dst, b"content-length", b"0");
                }
                Encoding::Length(0)
            }
            Some(Some(n)) => {
                if !bodiless_status {
                    line(
                        dst,
                        b"content-length",
                        itoa::Buffer::new().format(n).as_bytes(),
                    );
                }
                Encoding::Length(n)
            }
        };
    }
    if head_request || bodiless_status {
        encoding = Encoding::Length(0);
    }
    if encoding == Encoding::Close {
        keep_alive = false;
    }
    dst.extend_from_slice(b"\r\n");
    Some((encoding, keep_alive))
}

fn line(dst: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    dst.extend_from_slice(name);
    dst.extend_from_slice(b": ");
    dst.extend_from_slice(value);
    dst.extend_from_slice(b"\r\n");
}

/// A header's values on one line, comma-separated (as hyper writes `Connection`).
fn joined<'a>(dst: &mut Vec<u8>, name: &[u8], values: impl Iterator<Item = &'a HeaderValue>) {
    dst.extend_from_slice(name);
    dst.extend_from_slice(b": ");
    for (i, v) in values.enumerate() {
        if i > 0 {
            dst.extend_from_slice(b", ");
        }
        dst.extend_from_slice(v.as_bytes());
    }
    dst.extend_from_slice(b"\r\n");
}

/// Adds `item` to the list on the header line just written.
fn add_to_line(dst: &mut Vec<u8>, item: &[u8]) {
    dst.truncate(dst.len() - 2);
    dst.extend_from_slice(b", ");
    dst.extend_from_slice(item);
    dst.extend_from_slice(b"\r\n");
}

fn content_length(v: &HeaderValue) -> Option<u64> {
    decimal(v.as_bytes().trim_ascii())
}

/// Writes the head and the body after it: the head with the body's first part when that
/// is ready at once (one write), on its own before a wait for the body. `Ok(false)`: the
/// body ended short of its length (the connection must close); an error when the body
/// failed or the client stopped taking it.
async fn write_body<I>(
    io: &mut I,
    head: Vec<u8>,
    mut body: ResponseBody,
    encoding: Encoding,
) -> io::Result<bool>
where
    I: AsyncWrite + Unpin,
{
    let mut head = Some(head);
    let mut left = match encoding {
        Encoding::Length(n) => n,
        _ => 0,
    };
    if encoding == Encoding::Length(0) {
        // No body to send (hyper does not poll one it will not send).
        write_all(io, &mut [IoSlice::new(&head.take().unwrap_or_default())]).await?;
        return Ok(true);
    }
    loop {
        if body.is_end_stream() {
            break;
        }
        let polled = poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
        let frame = match polled {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                // Not ready: what is written so far goes now.
                if let Some(h) = head.take() {
                    write_all(io, &mut [IoSlice::new(&h)]).await?;
                }
                io.flush().await?;
                poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => return Err(io::Error::other(e)),
            // Trailers go only to a client that asked for them (with `TE`), and those are
            // hyper's.
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        if data.is_empty() {
            continue;
        }
        let h = head.take().unwrap_or_default();
        match encoding {
            Encoding::Length(_) => {
                // Beyond its length, the body is cut there (as hyper does).
                let n = (data.len() as u64).min(left);
                let data = data.slice(..n as usize);
                left -= n;
                write_all(io, &mut [IoSlice::new(&h), IoSlice::new(&data)]).await?;
                if left == 0 {
                    return Ok(true);
                }
            }
            Encoding::Chunked => {
                let mut size = [0u8; 18];
                let size = chunk_size(&mut size, data.len());
                write_all(
                    io,
                    &mut [
                        IoSlice::new(&h),
                        IoSlice::new(size),
                        IoSlice::new(&data),
                        IoSlice::new(b"\r\n"),
                    ],
                )
                .await?;
            }
            Encoding::Close => write_all(io, &mut [IoSlice::new(&h), IoSlice::new(&data)]).await?,
        }
    }
    let h = head.take().unwrap_or_default();
    match encoding {
        Encoding::Chunked => {
            write_all(io, &mut [IoSlice::new(&h), IoSlice::new(b"0\r\n\r\n")]).await?;
            Ok(true)
        }
        Encoding::Length(_) => {
            write_all(io, &mut [IoSlice::new(&h)]).await?;
            Ok(left == 0)
        }
        Encoding::Close => {
            write_all(io, &mut [IoSlice::new(&h)]).await?;
            Ok(false)
        }
    }
}

/// `len` in hexadecimal and CRLF, as a chunk's size line.
fn chunk_size(buf: &mut [u8; 18], mut len: usize) -> &[u8] {
    let mut at = 16;
    buf[16] = b'\r';
    buf[17] = b'\n';
    loop {
        at -= 1;
        buf[at] = b"0123456789ABCDEF"[len & 0xf];
        len >>= 4;
        if len == 0 {
            break;
        }
    }
    &buf[at..]
}

/// Writes every slice, in as few writes as the stream takes.
async fn write_all<I>(io: &mut I, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()>
where
    I: AsyncWrite + Unpin,
{
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = io.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &[u8]) -> Option<(Head, usize)> {
        match parse(raw) {
            Parsed::Head(h, n) => Some((h, n)),
            _ => None,
        }
    }

    #[test]
    fn a_bodiless_request_is_served_here_and_its_values_share_the_head() {
        let raw = b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\nConnection: keep-alive\r\n\r\nGET /next";
        let (head, len) = parsed(raw).expect("served here");
        assert_eq!(&raw[len..], b"GET /next");
        assert_eq!(head.parts.uri, "/a?b=1");
        assert_eq!(head.parts.method, Method::GET);
        assert_eq!(head.parts.headers.get_all("x-a").iter().count(), 2);
        assert!(!head.close);
        let (head, _) = parsed(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n").unwrap();
        assert!(head.close);
        let (head, _) =
            parsed(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(head.parts.headers["content-length"], "0");
        assert_eq!(head.body, BodyFraming::Length(0));
        // A body of a known length is this server's too; what follows its head is left to
        // the body (here, all of it).
        let raw = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 012\r\n\r\nhello";
        let (head, len) = parsed(raw).unwrap();
        assert_eq!(head.body, BodyFraming::Length(12));
        assert_eq!(head.parts.headers["content-length"], "012");
        assert_eq!(len, raw.len() - b"hello".len());
        // So is a chunked one.
        let (head, _) =
            parsed(b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap();
        assert_eq!(head.body, BodyFraming::Chunked);
        assert!(!head.expects_continue);
        let (head, _) = parsed(
            b"PUT /p HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n",
        )
        .unwrap();
        assert!(head.expects_continue);
    }

    #[test]
    fn what_hyper_must_serve_is_not_taken() {
        for raw in [
            &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\na",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1a\r\n\r\na",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551614\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: something\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        ] {
            assert!(
                matches!(parse(raw), Parsed::Other),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let many: Vec<u8> = [&b"GET / HTTP/1.1\r\n"[..]]
            .into_iter()
            .chain(std::iter::repeat_n(&b"X-A: 1\r\n"[..], MAX_HEADERS + 1))
            .chain([&b"\r\n"[..]])
            .flatten()
            .copied()
            .collect();
        assert!(matches!(parse(&many), Parsed::Other));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Partial
        ));
    }

    fn head_of(
        status: u16,
        headers: &[(&str, &str)],
        body: ResponseBody,
        head_req: bool,
        keep: bool,
    ) -> (String, Encoding, bool) {
        let mut b = http::Response::builder().status(status);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        let (parts, ()) = b.body(()).unwrap().into_parts();
        let mut dst = Vec::new();
        let (enc, keep) = encode_head(&parts, &body, head_req, keep, &mut dst).unwrap();
        (String::from_utf8(dst).unwrap(), enc, keep)
    }

    #[test]
    fn answers_are_written_as_hyper_writes_them() {
        let full = || ResponseBody::full(Bytes::from_static(b"hello"));
        let (h, enc, keep) = head_of(200, &[("x-a", "1")], full(), false, true);
        assert_eq!(h, "HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\n\r\n");
        assert_eq!((enc, keep), (Encoding::Length(5), true));
        let (h, enc, _) = head_of(404, &[("content-length", "5")], full(), true, true);
        assert_eq!(h, "HTTP/1.1 404 Not Found\r\ncontent-length: 5\r\n\r\n");
        assert_eq!(enc, Encoding::Length(0));
        let (h, _, keep) = head_of(204, &[], ResponseBody::empty(), false, false);
        assert_eq!(h, "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
        assert!(!keep);
        let (h, _, keep) = head_of(
            200,
            &[("connection", "x-a")],
            ResponseBody::empty(),
            false,
            false,
        );
        assert_eq!(
            h,
            "HTTP/1.1 200 OK\r\nconnection: x-a, close\r\ncontent-length: 0\r\n\r\n"
        );
        assert!(!keep);
        let (h, _, keep) = head_of(
            200,
            &[("connection", "close")],
            ResponseBody::empty(),
            false,
            true,
        );
        assert_eq!(
            h,
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
        );
        assert!(!keep);
    }

    /// A connection's task holds this future for as long as the connection is open, busy or
    /// idle: the request's own future is boxed apart and freed with its answer.
    #[test]
    fn a_connection_holds_little_between_requests() {
        fn size<'a, F: std::future::Future>(
            _serve: impl Fn(
                crate::proxy::ClientIo<tokio::net::TcpStream>,
                &'a Arc<Gateway>,
                &'a Arc<Peer>,
                watch::Receiver<bool>,
            ) -> F,
        ) -> usize {
            std::mem::size_of::<F>()
        }
        let size = size(serve);
        assert!(size <= 2048, "serve's future is {size} bytes");
    }

    #[test]
    fn chunk_sizes_are_hexadecimal() {
        let mut b = [0; 18];
        assert_eq!(chunk_size(&mut b, 0), b"0\r\n");
        assert_eq!(chunk_size(&mut b, 255), b"FF\r\n");
        assert_eq!(chunk_size(&mut b, 0x1234), b"1234\r\n");
    }
}
