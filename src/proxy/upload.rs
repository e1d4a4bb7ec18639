//! The client's request body on its way upstream, streamed and never buffered.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// The client's request body on its way upstream. Marks when it has been sent in full, so
/// the connection is reused only once both directions are done, and the head timeout does
/// not run out during a slow upload.
pub struct RequestBody {
    /// `None`: an empty body (a replayed bodiless request).
    inner: Option<Incoming>,
    /// `None` for a request without a body (nothing to wait for).
    sent: Option<Arc<AtomicBool>>,
}

impl RequestBody {
    pub fn new(inner: Incoming) -> RequestBody {
        let sent = (!inner.is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
        RequestBody {
            inner: Some(inner),
            sent,
        }
    }

    pub(crate) fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            sent: None,
        }
    }

    /// Whether the request has a body to send.
    pub(crate) fn has_body(&self) -> bool {
        self.sent.is_some()
    }

    /// Set once the body has been sent in full; `None` for a request without a body.
    pub(crate) fn sent_flag(&self) -> Option<Arc<AtomicBool>> {
        self.sent.clone()
    }

    fn mark_sent(&self) {
        if let Some(s) = &self.sent {
            s.store(true, Ordering::Release);
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || inner.is_end_stream() {
            this.mark_sent();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.as_ref().is_none_or(Body::is_end_stream);
        if end {
            self.mark_sent();
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
