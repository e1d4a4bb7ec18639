//! Upstream keep-alive: connections are reused, and a connection the upstream closed is
//! replaced without failing the request.

use crate::support;

use std::collections::HashSet;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// On one thread (the pools are per thread, as nginx's are per worker), sequential
/// requests share one upstream connection.
#[tokio::test(flavor = "current_thread")]
async fn upstream_connections_are_kept_alive_and_reused() {
    let legacy = Upstream::start("legacy").await;
    let gw = Gateway::start(&format!("{}routes: []\n", config_head(&legacy.url(), &[]))).await;
    let c = client();
    for i in 0..50 {
        let resp = c.get(gw.url(&format!("/a/{i}"))).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let peers: HashSet<_> = legacy.seen().iter().map(|r| r.peer).collect();
    assert_eq!(
        peers.len(),
        1,
        "50 sequential requests used {} upstream connections",
        peers.len()
    );
}

/// An upstream that answers one request per connection and then closes it, without saying
/// so (no `Connection: close`), as an upstream whose idle timeout fired would.
async fn closing_upstream() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_by_the_upstream_is_replaced() {
    let up = closing_upstream().await;
    let gw = Gateway::start(&format!(
        "{}routes: []\n",
        config_head(&format!("http://{up}"), &[])
    ))
    .await;
    let c = client();
    // Every reused connection is closed under the next request's feet at some point in
    // this loop: bodiless idempotent requests are replayed on a new connection then.
    for i in 0..300 {
        let resp = c.get(gw.url(&format!("/a/{i}"))).send().await.unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(resp.text().await.unwrap(), "ok");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_response_does_not_poison_the_pool() {
    let legacy = Upstream::start("legacy").await;
    let gw = Gateway::start(&format!("{}routes: []\n", config_head(&legacy.url(), &[]))).await;
    // Start a large download and drop it after the head: its upstream connection still
    // carries the rest of the body and must not be reused.
    for _ in 0..3 {
        let resp = client()
            .get(gw.url("/big"))
            .header("x-test-body-bytes", (8 << 20).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        drop(resp);
    }
    let c = client();
    for i in 0..20 {
        let resp = c.get(gw.url(&format!("/small/{i}"))).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "legacy");
    }
}

/// An upstream that answers the first request of each connection and closes the
/// connection when the second one arrives, without answering: what a keep-alive timeout
/// firing as a request goes out looks like, made deterministic.
async fn one_answer_per_connection_upstream() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut answered = false;
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    if answered {
                        return; // closes under the second request
                    }
                    buf.clear();
                    answered = true;
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "current_thread")]
async fn bodiless_idempotent_requests_are_replayed_when_a_reused_connection_closes() {
    let up = one_answer_per_connection_upstream().await;
    let gw = Gateway::start(&format!(
        "{}routes: []\n",
        config_head(&format!("http://{up}"), &[])
    ))
    .await;
    let c = client();
    for i in 0..20 {
        let resp = c.get(gw.url(&format!("/a/{i}"))).send().await.unwrap();
        assert_eq!(resp.status(), 200, "GET {i}");
        assert_eq!(resp.text().await.unwrap(), "ok");
    }
    // A POST is not idempotent: it is never sent twice, so this one fails visibly.
    let resp = c.post(gw.url("/p")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "upstream_unavailable");
}

/// An idle upstream connection is closed after the service's `idle_timeout`, by itself:
/// no later request has to come along and find it stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_close_on_time() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let closed = closed_tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => {
                            let _ = closed.send(std::time::Instant::now());
                            return;
                        }
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        buf.clear();
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await;
                    }
                }
            });
        }
    });
    let gw = Gateway::start(&format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nlegacy: {{url: http://{addr}, idle_timeout: 1s}}\nroutes: []\n"
    ))
    .await;
    let resp = client().get(gw.url("/a")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    let answered = std::time::Instant::now();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), closed_rx.recv())
        .await
        .expect("the idle upstream connection was closed")
        .unwrap();
    let idle = closed.duration_since(answered);
    assert!(
        idle >= std::time::Duration::from_millis(500) && idle < std::time::Duration::from_secs(5),
        "closed after {idle:?} idle (idle_timeout 1s)"
    );
}
