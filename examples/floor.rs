//! The floor of the peer benchmark: hyper's HTTP/1 server and the gateway's upstream pool
//! (with its own HTTP/1.1 client), with no feature at all (no routing, rewriting, metrics or
//! log): `/` split at random between 127.0.0.1:18081 and :18082, listening on :18092.
//! Comparing it with the gateway in one run of the peer benchmark shows what the features
//! cost: `python3 benches/peer/peer_bench.py --gateway floor=target/release/examples/floor
//! --gateway strangler='target/release/strangler serve --config RUNDIR/strangler.yaml'`.

use http::uri::Authority;
use http_body::{Body, Frame};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use strangler::floor::{self as pool, Conn, PoolKey, UpstreamBody};

// The same allocator as the gateway binary, so the comparison is of features only.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:18092")
            .await
            .unwrap();
        let a1: Authority = "127.0.0.1:18081".parse().unwrap();
        let a2: Authority = "127.0.0.1:18082".parse().unwrap();
        let dial = |authority: &Authority| pool::Dial {
            authority: authority.clone(),
            protocol: pool::Protocol::Http1,
            tls: None,
            idle_timeout: std::time::Duration::from_secs(60),
            addr: None,
            resolver: Default::default(),
        };
        let (d1, d2) = (dial(&a1), dial(&a2));
        let k1 = PoolKey::of(&d1);
        let k2 = PoolKey::of(&d2);
        loop {
            let (s, _) = l.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            let (d1, d2) = (d1.clone(), d2.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (d1, d2) = (d1.clone(), d2.clone());
                    async move {
                        let (k, d) = if fastrand::bool() { (k1, d1) } else { (k2, d2) };
                        let now = Instant::now();
                        let (mut parts, body) = req.into_parts();
                        parts.uri = http::Uri::from(parts.uri.path_and_query().unwrap().clone());
                        let req = http::Request::from_parts(
                            parts,
                            pool::RequestBody::new(
                                Some(body.into()),
                                std::time::Duration::from_secs(60),
                            ),
                        );
                        let hyper = pool::needs_hyper(&req);
                        let mut co = pool::checkout(
                            k,
                            &d,
                            now,
                            pool::Limit::of(std::time::Duration::from_secs(5)),
                            hyper,
                        )
                        .await
                        .unwrap();
                        let resp = co
                            .conn
                            .send(req, hyper)
                            .await
                            .map_err(|e| e.to_string())
                            .unwrap();
                        // The connection goes back to the pool at the body's end, as the
                        // gateway's does.
                        let mut conn = Some((k, co.conn, now));
                        let resp = resp.map(|mut body| {
                            if body.is_end_stream() {
                                give_back(&mut conn, &mut body);
                            }
                            Returning { body, conn }
                        });
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}

/// An answer's body that gives its connection back to the pool at its end.
struct Returning {
    body: UpstreamBody,
    conn: Option<(PoolKey, Conn, Instant)>,
}

fn give_back(conn: &mut Option<(PoolKey, Conn, Instant)>, body: &mut UpstreamBody) {
    if let Some((key, mut conn, since)) = conn.take() {
        conn.reclaim(body);
        pool::checkin(key, conn, since);
    }
}

impl Body for Returning {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || this.body.is_end_stream() {
            give_back(&mut this.conn, &mut this.body);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
}
