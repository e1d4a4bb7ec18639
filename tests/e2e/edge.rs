//! The edge holds against hostile input: no header or Host trick reaches the monolith, a
//! body arrives as sent or not at all, and a loop through the gateway is cut. Every request
//! is raw bytes on a socket, as an attacker would send them.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

async fn legacy_only(extra: &str) -> (Upstream, Gateway) {
    let legacy = Upstream::start("legacy").await;
    let gw = Gateway::start(&format!(
        "{}{extra}routes: []\n",
        config_head(&legacy.url(), &[])
    ))
    .await;
    (legacy, gw)
}

fn get(path: &str, headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: good.example\r\n{headers}Connection: close\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_spelled_with_underscores_never_reach_the_upstream() {
    let (legacy, gw) = legacy_only("").await;
    let sneaky = "X_Forwarded_For: 6.6.6.6\r\nX_Forwarded_Host: evil.example\r\nX_Forwarded_Proto: https\r\nX_Request_Id: forged\r\nX_Custom: 1\r\n";
    let (status, _, _) = raw(gw.running.public_addr, &get("/a", sneaky)).await;
    assert_eq!(status, 200);
    let r = legacy.last();
    let names: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
    assert!(!names.iter().any(|n| n.contains('_')), "{names:?}");
    assert_eq!(r.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(r.headers["x-forwarded-host"], "good.example");

    // With underscores allowed, only the ones that name a forwarding header are dropped.
    let (legacy, gw) = legacy_only("client: {allow_underscores: true}\n").await;
    let (status, _, _) = raw(gw.running.public_addr, &get("/a", sneaky)).await;
    assert_eq!(status, 200);
    let r = legacy.last();
    assert_eq!(r.headers["x_custom"], "1");
    for forged in [
        "x_forwarded_for",
        "x_forwarded_host",
        "x_forwarded_proto",
        "x_request_id",
    ] {
        assert!(!r.headers.contains_key(forged), "{forged}: {:?}", r.headers);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_believed_from_trusted_proxies_only() {
    let forwarded = "Forwarded: for=6.6.6.6;proto=https\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Port: 443\r\nX-Forwarded-Prefix: /admin\r\n";
    let (legacy, gw) = legacy_only("").await;
    raw(gw.running.public_addr, &get("/a", forwarded)).await;
    let r = legacy.last();
    for h in [
        "forwarded",
        "x-real-ip",
        "x-forwarded-port",
        "x-forwarded-prefix",
    ] {
        assert!(
            !r.headers.contains_key(h),
            "{h} from an untrusted client: {:?}",
            r.headers
        );
    }
    let (legacy, gw) = legacy_only("trusted_proxies: [127.0.0.1]\n").await;
    raw(gw.running.public_addr, &get("/a", forwarded)).await;
    let r = legacy.last();
    assert_eq!(r.headers["x-real-ip"], "6.6.6.6");
    assert_eq!(r.headers["forwarded"], "for=6.6.6.6;proto=https");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_well_formed_request_id_goes_upstream() {
    let (legacy, gw) = legacy_only("").await;
    let (_, head, _) = raw(
        gw.running.public_addr,
        &get("/a", "X-Request-Id: good-id\r\nX-Request-Id: bad id!\r\n"),
    )
    .await;
    let ids: Vec<_> = legacy
        .last()
        .headers
        .get_all("x-request-id")
        .iter()
        .cloned()
        .collect();
    assert_eq!(ids, ["good-id"]);
    assert!(head.contains("x-request-id: good-id"), "{head}");
    raw(
        gw.running.public_addr,
        &get("/a", "X-Request-Id: bad id!\r\n"),
    )
    .await;
    let ids: Vec<_> = legacy
        .last()
        .headers
        .get_all("x-request-id")
        .iter()
        .cloned()
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(ids[0].len(), 32, "a new id replaces a malformed one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_means_one_thing() {
    let (legacy, gw) = legacy_only("").await;
    let addr = gw.running.public_addr;
    // An absolute-form target's authority replaces Host (RFC 9112 §3.2.2).
    let (status, _, _) = raw(
        addr,
        "GET http://evil.example:9999/abs HTTP/1.1\r\nHost: good.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let r = legacy.last();
    assert_eq!(r.target, "/abs");
    assert_eq!(r.headers["host"], "evil.example:9999");
    assert_eq!(r.headers["x-forwarded-host"], "evil.example:9999");
    legacy.clear();
    for host in [
        "good.example, evil.example",
        "evil.example/x?",
        "a b",
        "user@evil.example",
        "a:99999999",
        "a:",
        "[::1",
    ] {
        let req = format!("GET /a HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let (status, _, body) = raw(addr, &req).await;
        assert_eq!(status, 400, "Host: {host}");
        assert!(
            String::from_utf8_lossy(&body).contains("bad_request"),
            "Host: {host}"
        );
    }
    let (status, _, _) = raw(
        addr,
        "GET http://user@evil.example/abs HTTP/1.1\r\nHost: good.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "user info in an absolute-form target");
    assert_eq!(legacy.count(), 0, "nothing with a bad Host is forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_coding_the_gateway_does_not_apply_is_501() {
    let (legacy, gw) = legacy_only("").await;
    let mut s = tokio::net::TcpStream::connect(gw.running.public_addr)
        .await
        .unwrap();
    s.write_all(
        b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("the connection is closed after the 501")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 501"), "{text}");
    assert!(text.contains("unsupported_transfer_coding"), "{text}");
    assert_eq!(legacy.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_get_body_is_forwarded() {
    let (legacy, gw) = legacy_only("").await;
    for method in ["GET", "DELETE", "POST"] {
        let req = format!(
            "{method} /search HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nquery\r\n0\r\n\r\n"
        );
        let (status, _, _) = raw(gw.running.public_addr, &req).await;
        assert_eq!(status, 200, "{method}");
        let r = legacy.last();
        assert_eq!(r.body.as_deref(), Some(&b"query"[..]), "{method}");
    }
}

/// A raw upstream that answers every request with `answer`, then closes.
async fn raw_upstream(answer: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

async fn through(answer: &'static [u8], request: &str) -> (u16, String, Vec<u8>) {
    let up = raw_upstream(answer).await;
    let gw = Gateway::start(&format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nlegacy: {{url: http://{up}, timeout: 5s}}\nroutes: []\n"
    ))
    .await;
    raw(gw.running.public_addr, request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_the_gateway_cannot_relay_as_meant_are_502() {
    let req = get("/a", "");
    for answer in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ] {
        let (status, _, body) = through(answer, &req).await;
        assert_eq!(status, 502, "{}", String::from_utf8_lossy(answer));
        assert!(String::from_utf8_lossy(&body).contains("upstream_unavailable"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_content_length_is_folded_into_one() {
    let (status, head, body) = through(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
        &get("/a", ""),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, b"hello");
    let lengths: Vec<&str> = head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("content-length"))
        .collect();
    assert_eq!(lengths, ["content-length: 5"], "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_reach_a_client_that_takes_them() {
    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: grpc-status\r\n\r\n2\r\nok\r\n0\r\ngrpc-status: 0\r\n\r\n";
    let (status, _, body) = through(ANSWER, &get("/a", "TE: trailers\r\n")).await;
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("grpc-status: 0"), "{text:?}");
    // A client that did not ask for trailers gets the body without them.
    let (status, _, body) = through(ANSWER, &get("/a", "")).await;
    assert_eq!(status, 200);
    assert!(!String::from_utf8_lossy(&body).contains("grpc-status"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn via_is_added_both_ways_and_a_loop_is_cut() {
    let (legacy, gw) = legacy_only("via: edge-1\n").await;
    let (status, head, _) = raw(
        gw.running.public_addr,
        &get("/a", "Via: 1.0 corp-proxy\r\n"),
    )
    .await;
    assert_eq!(status, 200);
    let vias: Vec<_> = legacy
        .last()
        .headers
        .get_all("via")
        .iter()
        .cloned()
        .collect();
    assert_eq!(vias, ["1.0 corp-proxy", "1.1 edge-1"]);
    assert!(
        head.to_ascii_lowercase().contains("via: 1.1 edge-1"),
        "{head}"
    );
    legacy.clear();
    let (status, _, body) = raw(
        gw.running.public_addr,
        &get("/a", "Via: 1.1 upstream-lb, 1.1 edge-1\r\n"),
    )
    .await;
    assert_eq!(status, 508);
    assert!(String::from_utf8_lossy(&body).contains("loop_detected"));
    assert_eq!(legacy.count(), 0);
}
