//! The floor of the peer benchmark: the same hyper server and pooled hyper client
//! connections as the gateway, with no feature at all (no routing, rewriting, metrics or
//! log): `/` split at random between 127.0.0.1:18081 and :18082, listening on :18092.
//! Comparing it with the gateway in one run of the peer benchmark shows what the features
//! cost: `python3 benches/peer/peer_bench.py --gateway floor=target/release/examples/floor
//! --gateway strangler='target/release/strangler serve --config RUNDIR/strangler.yaml'`.

use http::uri::Authority;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::time::Instant;
use strangler::floor::{self as pool, PoolKey};

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
                        let mut co = pool::checkout(
                            k,
                            &d,
                            now,
                            pool::Limit::of(std::time::Duration::from_secs(5)),
                        )
                        .await
                        .unwrap();
                        let (mut parts, body) = req.into_parts();
                        parts.uri = http::Uri::from(parts.uri.path_and_query().unwrap().clone());
                        let resp = co
                            .conn
                            .sender
                            .send(http::Request::from_parts(
                                parts,
                                pool::RequestBody::new(
                                    Some(body),
                                    std::time::Duration::from_secs(60),
                                ),
                            ))
                            .await
                            .map_err(|e| e.into_error())
                            .unwrap();
                        // Given back at once (the gateway waits for the body's end); the next
                        // checkout waits until the connection is ready again.
                        pool::checkin(k, co.conn, now);
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
