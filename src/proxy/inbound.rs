//! A client's request body as the request path takes it: hyper's, or one the gateway's
//! own HTTP/1.1 server read whole with its head, or feeds from the connection a part at a
//! time as the request takes it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::mpsc;

/// Errors of a request body, for hyper's client.
pub type UploadError = Box<dyn std::error::Error + Send + Sync>;

/// A client's request body.
pub enum Inbound {
    /// Read by hyper's server (HTTP/2, and HTTP/1.x connections hyper serves).
    Hyper(Incoming),
    /// Fed by the own HTTP/1.1 server.
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
            Inbound::Fed(body) => body.left == 0,
            Inbound::Whole(body) => body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inbound::Hyper(body) => body.size_hint(),
            Inbound::Fed(body) => SizeHint::with_exact(body.left),
            Inbound::Whole(body) => {
                SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// A body of a known length (`Content-Length`), fed by the own server.
pub struct Fed {
    parts: mpsc::Receiver<io::Result<Bytes>>,
    /// Bytes still to come.
    left: u64,
}

/// The own server's end of a [`Fed`] body.
pub struct Feeder {
    parts: mpsc::Sender<io::Result<Bytes>>,
}

/// A body of `length` bytes, and the end that feeds it. One part waits at most between
/// them: the server reads the next when the request has taken the last.
pub fn fed(length: u64) -> (Feeder, Inbound) {
    let (tx, rx) = mpsc::channel(1);
    (
        Feeder { parts: tx },
        Inbound::Fed(Fed {
            parts: rx,
            left: length,
        }),
    )
}

impl Feeder {
    /// Waits until the request has taken the part given last: `false` if it will take no
    /// more (it ended, or it let its body go).
    pub async fn taken(&self) -> bool {
        self.parts.reserve().await.is_ok()
    }

    /// Whether the request let its body go (it will take no more).
    pub fn let_go(&self) -> bool {
        self.parts.is_closed()
    }

    /// Gives the request the next part of its body, or the error that ends it (after
    /// [`Feeder::taken`]).
    pub fn give(&self, part: io::Result<Bytes>) {
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
        if self.left == 0 {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(match ready!(self.parts.poll_recv(cx)) {
            Some(Ok(part)) => {
                self.left = self.left.saturating_sub(part.len() as u64);
                Ok(Frame::data(part))
            }
            Some(Err(e)) => Err(e.into()),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client's body ended short of its Content-Length",
            )
            .into()),
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}
