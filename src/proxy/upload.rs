//! The client's request body on its way upstream, streamed and never buffered.
//!
//! It keeps the state the other phases need about the upload: whether it is complete (an
//! upstream connection is reused only once both directions are done), how much the upstream
//! has taken (the wait for the response head is extended only while the upload moves), and
//! whether the client is the one the upload waits on. Each wait for more of the client's
//! body is bounded by `client.body_timeout`.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::admit::Rules;
use super::headers::strip_trailers;
use super::inbound::{Inbound, UploadError};

/// What the other phases know of an upload in progress.
#[derive(Default)]
pub struct Upload {
    /// The body has been handed upstream in full.
    done: AtomicBool,
    /// Bytes the upstream has taken so far.
    taken: AtomicU64,
    /// The upload waits on the client (not on the upstream).
    waiting_on_client: AtomicBool,
    /// The client stopped sending for longer than `client.body_timeout`.
    timed_out: AtomicBool,
}

impl Upload {
    pub fn done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    pub fn waiting_on_client(&self) -> bool {
        self.waiting_on_client.load(Ordering::Relaxed)
    }

    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }
}

/// The most bytes of request bodies kept for replays at once, by every request of the
/// process together: under a flood of large uploads, bodies past it are not kept (they cannot
/// be replayed, as one over `max_body`) rather than memory growing with the requests.
pub const MAX_REPLAY_BYTES: u64 = 256 * 1024 * 1024;

/// Bytes kept now, against a cap: the process's replay bodies, the shadow copies' answers.
pub struct Kept {
    bytes: AtomicU64,
    cap: u64,
}

impl Kept {
    pub const fn new(cap: u64) -> Kept {
        Kept {
            bytes: AtomicU64::new(0),
            cap,
        }
    }

    /// Takes room for `n` more bytes, if there is.
    pub fn reserve(&self, n: u64) -> bool {
        self.bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                b.checked_add(n).filter(|t| *t <= self.cap)
            })
            .is_ok()
    }

    pub fn release(&self, n: u64) {
        if n > 0 {
            self.bytes.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Bytes kept now.
    pub fn now(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// The process's replay bodies.
pub static REPLAY: Kept = Kept::new(MAX_REPLAY_BYTES);

/// A copy of a request body kept while it streams upstream, for a replay (a retry after a
/// reset, or a fallback to legacy), up to a limit: a larger body is not kept, nor one that
/// the process's [`MAX_REPLAY_BYTES`] has no room for.
pub struct Tee {
    kept: std::sync::Mutex<Vec<Bytes>>,
    /// What it holds of the process's room for replays.
    held: AtomicU64,
    room: &'static Kept,
    size: AtomicU64,
    /// The body went over the limit, or carried trailers: it cannot be replayed.
    spilled: AtomicBool,
    /// The whole body went through.
    complete: AtomicBool,
    limit: AtomicU64,
}

impl Tee {
    fn new(limit: u64, room: &'static Kept) -> Tee {
        Tee {
            kept: std::sync::Mutex::new(Vec::new()),
            held: AtomicU64::new(0),
            room,
            size: AtomicU64::new(0),
            spilled: AtomicBool::new(false),
            complete: AtomicBool::new(false),
            limit: AtomicU64::new(limit),
        }
    }

    fn keep(&self, frame: &Frame<Bytes>) {
        if self.spilled.load(Ordering::Relaxed) {
            return;
        }
        let Some(d) = frame.data_ref() else {
            // Trailers are not kept: such a body is not replayed.
            self.spill();
            return;
        };
        let n = d.len() as u64;
        let size = self.size.fetch_add(n, Ordering::Relaxed) + n;
        if size > self.limit.load(Ordering::Relaxed) || !self.room.reserve(n) {
            self.spill();
        } else {
            self.held.fetch_add(n, Ordering::Relaxed);
            self.kept
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(d.clone());
        }
    }

    fn spill(&self) {
        self.spilled.store(true, Ordering::Relaxed);
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.room.release(self.held.swap(0, Ordering::Relaxed));
    }

    /// The bytes that went through so far.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// Whether the whole body went through and was kept.
    pub fn whole(&self) -> bool {
        self.complete.load(Ordering::Acquire) && !self.spilled.load(Ordering::Relaxed)
    }

    /// The whole body, if it went through and was kept.
    pub fn replay(&self) -> Option<Vec<Bytes>> {
        self.whole()
            .then(|| self.kept.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        self.room.release(*self.held.get_mut());
    }
}

/// The client's request body on its way upstream.
pub struct RequestBody {
    /// `None`: an empty body (a replayed bodiless request).
    inner: Option<Inbound>,
    /// `None` for a request without a body (nothing to wait for).
    upload: Option<Arc<Upload>>,
    /// Each wait for more of the client's body.
    timeout: Duration,
    /// Runs while the client is waited on; made on the first wait, reused after.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether `idle` runs for the current wait.
    armed: bool,
    /// The copy kept for a replay, if asked for.
    tee: Option<Arc<Tee>>,
    /// A replayed body, sent from memory (`inner` is `None`).
    replay: std::collections::VecDeque<Bytes>,
    /// The rules its trailers are held to (for a request with a body).
    rules: Option<Arc<Rules>>,
}

impl RequestBody {
    /// The body of a request (`None`: it has none); each wait for more of it is bounded by
    /// `timeout`.
    pub fn new(inner: Option<Inbound>, timeout: Duration) -> RequestBody {
        let has_body = inner.as_ref().is_some_and(|b| !b.is_end_stream());
        RequestBody {
            inner,
            upload: has_body.then(|| Arc::new(Upload::default())),
            timeout,
            idle: None,
            armed: false,
            tee: None,
            replay: Default::default(),
            rules: None,
        }
    }

    /// Holds the body's trailers to `rules` (see [`strip_trailers`]); without them, a
    /// trailer section loses only what never belongs in one.
    pub fn trailers_held_to(mut self, rules: &Arc<Rules>) -> RequestBody {
        if self.upload.is_some() {
            self.rules = Some(rules.clone());
        }
        self
    }

    pub(crate) fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            upload: None,
            timeout: Duration::ZERO,
            idle: None,
            armed: false,
            tee: None,
            replay: Default::default(),
            rules: None,
        }
    }

    /// A body replayed from what a [`Tee`] kept.
    pub(crate) fn replayed(chunks: Vec<Bytes>) -> RequestBody {
        let mut body = RequestBody::empty();
        body.replay = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        body
    }

    /// Keeps a copy of the body as it streams, up to `limit` bytes (one copy serves every
    /// use: a second call raises the limit if it asks for more).
    pub(crate) fn tee(&mut self, limit: u64) -> Arc<Tee> {
        if let Some(tee) = &self.tee {
            tee.limit.fetch_max(limit, Ordering::Relaxed);
            return tee.clone();
        }
        let tee = Arc::new(Tee::new(limit, &REPLAY));
        if self.inner.as_ref().is_none_or(Body::is_end_stream) {
            tee.complete.store(true, Ordering::Release);
        }
        self.tee = Some(tee.clone());
        tee
    }

    /// Whether the request has a body to send.
    pub(crate) fn has_body(&self) -> bool {
        self.upload.is_some() || !self.replay.is_empty()
    }

    /// The body, when it is in memory whole and not yet taken (the own HTTP/1.1 server
    /// read it with its head): it can be written with the head.
    pub(crate) fn whole(&self) -> Option<&Bytes> {
        match &self.inner {
            Some(Inbound::Whole(body)) => body.as_ref(),
            _ => None,
        }
    }

    /// Takes the body kept [`whole`](Self::whole) once it has been written with the head:
    /// the upload is done, and a copy kept for a replay or a shadow has it.
    pub(crate) fn take_whole(&mut self) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while let Poll::Ready(Some(_)) = Pin::new(&mut *self).poll_frame(&mut cx) {}
    }

    /// The upload's state; `None` for a request without a body.
    pub(crate) fn upload(&self) -> Option<Arc<Upload>> {
        self.upload.clone()
    }

    fn mark_done(&self) {
        if let Some(u) = &self.upload {
            u.done.store(true, Ordering::Release);
        }
        if let Some(t) = &self.tee {
            t.complete.store(true, Ordering::Release);
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = UploadError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UploadError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(this.replay.pop_front().map(|c| Ok(Frame::data(c))));
        };
        let mut polled = Pin::new(&mut *inner).poll_frame(cx);
        // The client's trailers reach the upstream only with what its head could carry.
        if let Poll::Ready(Some(Ok(frame))) = &mut polled
            && let Some(t) = frame.trailers_mut()
        {
            let rules = this.rules.as_deref();
            strip_trailers(
                t,
                rules.map_or(&[][..], |r| &r.untrusted),
                rules.is_some_and(|r| r.allow_underscores),
            );
        }
        let upload = this.upload.as_deref();
        match &polled {
            Poll::Pending => {
                if let Some(u) = upload {
                    u.waiting_on_client.store(true, Ordering::Relaxed);
                }
                if !this.armed {
                    let deadline = tokio::time::Instant::now() + this.timeout;
                    match &mut this.idle {
                        Some(idle) => idle.as_mut().reset(deadline),
                        None => this.idle = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                    this.armed = true;
                }
                let idle = this.idle.as_mut().expect("armed above");
                if idle.as_mut().poll(cx).is_ready() {
                    if let Some(u) = upload {
                        u.timed_out.store(true, Ordering::Relaxed);
                    }
                    let err = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client sent nothing more of its body within client.body_timeout",
                    );
                    return Poll::Ready(Some(Err(err.into())));
                }
                return Poll::Pending;
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(u) = upload {
                    u.waiting_on_client.store(false, Ordering::Relaxed);
                    if let Some(d) = frame.data_ref() {
                        u.taken.fetch_add(d.len() as u64, Ordering::Relaxed);
                    }
                }
                // The next wait starts its own clock.
                this.armed = false;
                if let Some(tee) = &this.tee {
                    tee.keep(frame);
                }
            }
            Poll::Ready(_) => {}
        }
        if matches!(polled, Poll::Ready(None)) || inner.is_end_stream() {
            this.mark_done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.as_ref().is_none_or(Body::is_end_stream) && self.replay.is_empty();
        if end {
            self.mark_done();
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(
            || SizeHint::with_exact(self.replay.iter().map(|c| c.len() as u64).sum()),
            Body::size_hint,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Frame<Bytes> {
        Frame::data(Bytes::from(vec![7u8; n]))
    }

    #[test]
    fn bodies_past_the_process_room_are_not_kept_and_room_comes_back() {
        let room: &'static Kept = Box::leak(Box::new(Kept::new(100)));
        let a = Tee::new(1000, room);
        let b = Tee::new(1000, room);
        a.keep(&data(60));
        assert_eq!(room.now(), 60);
        // b fits 40 more, then not: it spills and gives back what it held.
        b.keep(&data(40));
        assert_eq!(room.now(), 100);
        b.keep(&data(1));
        assert!(b.spilled.load(Ordering::Relaxed));
        assert_eq!(room.now(), 60);
        b.complete.store(true, Ordering::Release);
        assert!(b.replay().is_none());
        // a, whole and within the room, replays; dropped, its room comes back.
        a.complete.store(true, Ordering::Release);
        assert_eq!(a.replay().map(|c| c.concat().len()), Some(60));
        drop(a);
        assert_eq!(room.now(), 0);
        // Over its own limit: not kept, nothing held.
        let c = Tee::new(10, room);
        c.keep(&data(11));
        assert!(c.spilled.load(Ordering::Relaxed));
        assert_eq!(room.now(), 0);
    }
}
