//! A client's request body as the request path takes it: hyper's, or one the gateway's
//! own HTTP/1.1 server read whole with its head, or feeds from the connection a part at a
//! time as the request takes it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot};

/// Errors of a request body, for hyper's client.
pub type UploadError = Box<dyn std::error::Error + Send + Sync>;

/// A client's request body.
pub enum Inbound {
    /// Read by hyper's server (HTTP/2, and HTTP/1.x connections hyper serves).
    Hyper(Incoming),
    /// Fed by the own HTTP/1.1 server as the request takes it.
    Fed(Fed),
    /// Read whole with its head by the own HTTP/1.1 server (`None` once taken).
    Whole(Option<Bytes>),
}

impl From<Incoming> for Inbound {
    fn from(body: Incoming) -> Inbound {
        Inbound::Hyper(body)
    }
}

impl Body for Inbound {
    type Data = Bytes;
    type Error = UploadError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UploadError>>> {
        match self.get_mut() {
            Inbound::Hyper(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
            Inbound::Fed(body) => Pin::new(body).poll_frame(cx),
            Inbound::Whole(body) => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Inbound::Hyper(body) => body.is_end_stream(),
            Inbound::Fed(body) => body.is_end_stream(),
            Inbound::Whole(body) => body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inbound::Hyper(body) => body.size_hint(),
            Inbound::Fed(body) => body.size_hint(),
            Inbound::Whole(body) => {
                SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// A body fed by the own server: of a known length (`Content-Length`), or chunked.
pub struct Fed {
    parts: mpsc::Receiver<io::Result<Option<Frame<Bytes>>>>,
    /// Bytes still to come, when the length is known.
    left: Option<u64>,
    /// The end was given (a chunked body's, or its trailers).
    done: bool,
    /// Told when the body is first wanted (its first poll), if the feeder asked.
    wanted: Option<oneshot::Sender<()>>,
}

/// The own server's end of a [`Fed`] body.
pub struct Feeder {
    parts: mpsc::Sender<io::Result<Option<Frame<Bytes>>>>,
    /// Told when the body is first wanted, until it was.
    wanted: Option<oneshot::Receiver<()>>,
}

/// A body of `length` bytes (`None`: chunked, its end given by the feeder), and the end
/// that feeds it. One part waits at most between them: the server reads the next when the
/// request has taken the last. With `ask`, the feeder can wait for the body to be first
/// wanted ([`Feeder::wanted`]).
pub fn fed(length: Option<u64>, ask: bool) -> (Feeder, Inbound) {
    let (tx, rx) = mpsc::channel(1);
    let (wanted_tx, wanted_rx) = ask.then(oneshot::channel).unzip();
    (
        Feeder {
            parts: tx,
            wanted: wanted_rx,
        },
        Inbound::Fed(Fed {
            parts: rx,
            left: length,
            done: false,
            wanted: wanted_tx,
        }),
    )
}

impl Feeder {
    /// Waits until the request first wants its body (`true`), or lets it go unwanted
    /// (`false`); at once if it was wanted before, or the feeder did not ask.
    pub async fn wanted(&mut self) -> bool {
        let Some(wanted) = self.wanted.as_mut() else {
            return true;
        };
        let wanted = wanted.await.is_ok();
        self.wanted = None;
        wanted
    }

    /// Waits until the request has taken the part given last: `false` if it will take no
    /// more (it ended, or it let its body go).
    pub async fn taken(&self) -> bool {
        self.parts.reserve().await.is_ok()
    }

    /// Whether the request let its body go (it will take no more).
    pub fn let_go(&self) -> bool {
        self.parts.is_closed()
    }

    /// Gives the request the next part of its body (after [`Feeder::taken`]): a frame
    /// (trailers are the last), the end of a chunked body (`None`), or the error that ends
    /// it.
    pub fn give(&self, part: io::Result<Option<Frame<Bytes>>>) {
        let _ = self.parts.try_send(part);
    }
}

impl Body for Fed {
    type Data = Bytes;
    type Error = UploadError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UploadError>>> {
        if let Some(wanted) = self.wanted.take() {
            let _ = wanted.send(());
        }
        if self.is_end_stream() {
            return Poll::Ready(None);
        }
        Poll::Ready(match ready!(self.parts.poll_recv(cx)) {
            Some(Ok(Some(frame))) => {
                if let (Some(left), Some(data)) = (self.left.as_mut(), frame.data_ref()) {
                    *left = left.saturating_sub(data.len() as u64);
                }
                self.done |= frame.is_trailers();
                Some(Ok(frame))
            }
            Some(Ok(None)) => {
                self.done = true;
                None
            }
            Some(Err(e)) => Some(Err(e.into())),
            None => Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client's body ended short",
            )
            .into())),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.left == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        self.left
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}
