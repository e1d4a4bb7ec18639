//! The `send` phase: the exchange with the chosen upstream, through the per-thread
//! connection pool, up to the response head.
//!
//! The wait for the head is bounded by the service's `timeout`, counted from the request's
//! start and extended while the upload is still moving or waits on the client (a slow upload
//! is not the upstream's slowness, and a client that stops sending meets
//! `client.body_timeout`); an upstream that takes nothing of the body for a whole `timeout`
//! has stopped reading it, and times out. A reused connection found closed before the
//! request went out is replaced; a bodiless idempotent request whose reused connection
//! closed under it is sent once more on a new one. Every failure comes back as a [`Failure`]
//! naming its side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::request::Parts;
use http::{Request, Response};

use super::error::{Failure, Stage};
use super::h1client::{self, Abortable, UpstreamBody};
use super::pool::{self, Conn, Dial, PoolKey, SendError};
use super::upload::{RequestBody, Upload};
use crate::observe::{ClientErrorKind, UpstreamErrorKind};

/// A response head from the upstream, with the connection that carries its body.
pub struct Exchange {
    pub conn: Conn,
    /// The pool the connection goes back to.
    pub key: PoolKey,
    pub response: Response<UpstreamBody>,
    /// The upload's state (`None`: the request had no body).
    pub uploaded: Option<Arc<Upload>>,
}

/// Where an attempt goes, and how long it may wait.
pub struct Target<'a> {
    pub key: PoolKey,
    pub dial: &'a Dial,
    /// For the response head, from the attempt's start.
    pub timeout: Duration,
    /// For a new connection (and its TLS handshake).
    pub connect_timeout: Duration,
}

/// A failed attempt, with the request when it was never sent (it may go elsewhere).
pub type Failed = (Failure, Option<Request<RequestBody>>);

/// Sends the request to `target` and waits for its response head; gives the request back
/// when it was never sent (it may go elsewhere).
pub async fn attempt(
    target: &Target<'_>,
    req: Request<RequestBody>,
    start: Instant,
) -> Result<Exchange, Failed> {
    let uploaded = req.body().upload();
    let timeout = target.timeout;
    let mut deadline = start + timeout;
    let mut taken = 0;
    let head_received = {
        let upload = uploaded.as_deref();
        let mut exchange = std::pin::pin!(exchange(target, req, start, deadline, upload));
        loop {
            match tokio::time::timeout_at(deadline.into(), exchange.as_mut()).await {
                Ok(received) => break received,
                Err(_)
                    if upload.is_some_and(|u| {
                        !u.done() && (u.waiting_on_client() || u.taken() != taken)
                    }) =>
                {
                    taken = upload.map_or(0, Upload::taken);
                    deadline = Instant::now() + timeout;
                }
                Err(_) => {
                    if target.dial.protocol.is_http2() {
                        // The thread's shared connection may be the problem: the next
                        // request gets a new one.
                        pool::forget_shared(target.key);
                    }
                    break Err((
                        Failure::Upstream {
                            kind: UpstreamErrorKind::Timeout,
                            during: Stage::Head,
                        },
                        None,
                    ));
                }
            }
        }
    };
    head_received.map(|(conn, response)| Exchange {
        conn,
        key: target.key,
        response,
        uploaded,
    })
}

/// Sends `req` on a pooled connection to `upstream`. A reused connection that turns out to
/// be closed before the request was written is replaced by a new one (the request was not
/// sent, so this is safe for any method); any other failure is final.
async fn exchange(
    target: &Target<'_>,
    mut req: Request<RequestBody>,
    now: Instant,
    deadline: Instant,
    upload: Option<&Upload>,
) -> Result<(Conn, Response<UpstreamBody>), Failed> {
    // A connection not made by then is a connect failure (the request comes back unsent),
    // which must come before the head's own deadline.
    let limit = pool::Limit {
        connect: target.connect_timeout,
        by: deadline
            .checked_sub(Duration::from_millis(2))
            .unwrap_or(deadline),
    };
    // A bodiless idempotent request may go out once more, on a new connection, when a
    // reused connection fails before any answer: the upstream closed it (its idle timeout)
    // just as the request went out. hyper's client keeps no such request: for it, a copy
    // of the head is made before sending.
    let may_replay = !req.body().has_body() && req.method().is_idempotent();
    let hyper = h1client::needs_hyper(&req);
    let mut new_only = false;
    loop {
        let checkout = if new_only {
            pool::open(target.key, target.dial, limit).await
        } else {
            pool::checkout(target.key, target.dial, now, limit, hyper).await
        };
        let co = match checkout {
            Ok(co) => co,
            Err(e) => {
                tracing::debug!(upstream = %target.dial.authority, error = %e, "cannot connect to the upstream");
                let failure = Failure::Upstream {
                    kind: UpstreamErrorKind::Connect,
                    during: Stage::Head,
                };
                // A request replayed was written once already: not "never sent", which a
                // retry policy for connect failures would send once more.
                return Err((failure, (!new_only).then_some(req)));
            }
        };
        // From here the connection carries the request: if this future is dropped before
        // the head arrives (the head timeout), the connection is closed with it.
        let replayable = may_replay && !co.fresh;
        let mut replay = (replayable && !co.conn.answers_itself(hyper))
            .then(|| Request::from_parts(head_of(&req), RequestBody::empty()));
        let mut carrying = Carrying(Some(co.conn));
        let sending = carrying.conn().send(req, hyper).await;
        let mut e = match sending {
            Ok(resp) => return Ok((carrying.keep(), resp)),
            Err(e) => e,
        };
        match e.take_unsent() {
            Some(unsent) if !co.fresh => req = unsent,
            None if replayable && e.closed_under_us() => {
                let Some(again) = e.take_unanswered().or_else(|| replay.take()) else {
                    return Err((failure_of(target, upload, &e), None));
                };
                tracing::debug!(error = %e, "a reused upstream connection was closed: replaying on a new one");
                req = again;
                new_only = true;
            }
            unsent => return Err((failure_of(target, upload, &e), unsent)),
        }
    }
}

/// A copy of a request's head (its extensions aside, but for [`Abortable`]).
pub fn head_of<B>(req: &Request<B>) -> Parts {
    copy(
        req.method(),
        req.uri(),
        req.version(),
        req.headers(),
        req.extensions(),
    )
}

/// A copy of a head (its extensions aside, but for [`Abortable`]: a copy sent again must
/// go where the first could be closed from outside too).
pub fn copy_head(head: &Parts) -> Parts {
    copy(
        &head.method,
        &head.uri,
        head.version,
        &head.headers,
        &head.extensions,
    )
}

fn copy(
    method: &http::Method,
    uri: &http::Uri,
    version: http::Version,
    headers: &http::HeaderMap,
    extensions: &http::Extensions,
) -> Parts {
    let mut r = Request::new(());
    *r.method_mut() = method.clone();
    *r.uri_mut() = uri.clone();
    *r.version_mut() = version;
    *r.headers_mut() = headers.clone();
    if extensions.get::<Abortable>().is_some() {
        r.extensions_mut().insert(Abortable);
    }
    r.into_parts().0
}

/// A connection carrying a request whose answer has not come yet; dropped so, it is
/// closed (its exchange is given up).
struct Carrying(Option<Conn>);

impl Carrying {
    fn conn(&mut self) -> &mut Conn {
        self.0.as_mut().expect("a connection until kept")
    }

    fn keep(mut self) -> Conn {
        self.0.take().expect("a connection until kept")
    }
}

impl Drop for Carrying {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            conn.abort();
        }
    }
}

/// The side and kind of a failed exchange.
fn failure_of(target: &Target<'_>, upload: Option<&Upload>, e: &SendError) -> Failure {
    // The client's request body failed (it left or stalled mid-upload): nothing the
    // upstream did.
    if e.is_client_body() {
        return Failure::Client(if upload.is_some_and(Upload::timed_out) {
            ClientErrorKind::BodyTimeout
        } else {
            ClientErrorKind::Body
        });
    }
    tracing::debug!(upstream = %target.dial.authority, error = %e, "upstream exchange failed");
    let kind = if e.is_malformed() {
        UpstreamErrorKind::Protocol
    } else {
        UpstreamErrorKind::Reset
    };
    Failure::Upstream {
        kind,
        during: Stage::Head,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request of an HTTP/2 client keeps its mark in every copy made to send it again
    /// (a replay, a retry), so that each goes where its answer can be cut from outside.
    #[test]
    fn copies_keep_the_abortable_mark() {
        let mut req = Request::new(());
        req.extensions_mut().insert(Abortable);
        let first = head_of(&req);
        assert!(first.extensions.get::<Abortable>().is_some());
        assert!(copy_head(&first).extensions.get::<Abortable>().is_some());
        assert!(
            head_of(&Request::new(()))
                .extensions
                .get::<Abortable>()
                .is_none()
        );
    }
}
