//! Misbehaving clients and upstreams: the gateway answers clearly, blames the right side,
//! never reuses a connection in an unknown state, and never waits forever.

use crate::support;

use std::time::Duration;

use bytes::Bytes;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads one request head from `s` (returns it, or None at EOF).
async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut one = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut one).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => buf.push(one[0]),
        }
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// A raw upstream: `answer(head)` gives the bytes to write for each request head; `None`
/// leaves the connection open and silent.
async fn raw_upstream(answer: fn(&str) -> Option<&'static [u8]>) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                while let Some(head) = read_head(&mut s).await {
                    match answer(&head) {
                        Some(bytes) => {
                            if s.write_all(bytes).await.is_err() {
                                return;
                            }
                        }
                        None => {
                            // Hold the connection open without reading or answering.
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn only_legacy(url: &str, timeout: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nlegacy: {{url: {url}, timeout: {timeout}}}\nroutes: []\n"
    )
}

/// An upstream that answers a POST early (401) without reading its body leaves its
/// connection mid-request; the next request must not wait on that connection.
#[tokio::test(flavor = "current_thread")]
async fn early_answer_to_an_unfinished_upload_does_not_block_the_next_request() {
    let up = raw_upstream(|head| {
        if head.starts_with("POST") {
            Some(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
        } else {
            Some(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        }
    })
    .await;
    let gw = Gateway::start(&only_legacy(&format!("http://{up}"), "3s")).await;
    // A client that announces 1 MB and sends 10 bytes, then stalls (keeps the socket open).
    let mut slow = TcpStream::connect(gw.running.public_addr).await.unwrap();
    slow.write_all(
        b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let mut head = [0u8; 12];
    slow.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 401");
    let started = std::time::Instant::now();
    let resp = client().get(gw.url("/next")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ok");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the next request waited {:?}",
        started.elapsed()
    );
    drop(slow);
}

/// The head timeout does not run out while the client is still uploading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_is_not_an_upstream_timeout() {
    let legacy = Upstream::start("legacy").await;
    let gw = Gateway::start(&only_legacy(&legacy.url(), "500ms")).await;
    let chunks = futures_util::stream::unfold(0u32, |i| async move {
        if i == 6 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        Some((
            Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 1000])),
            i + 1,
        ))
    });
    let resp = client()
        .post(gw.url("/upload"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "a 1.5 s upload with a 500 ms head timeout"
    );
    assert_eq!(legacy.last().body_len, 6000);
}

/// An upstream that sends the head and a little of the body, then stalls: the body fails
/// after the service's timeout, counted as an upstream timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_response_body_times_out() {
    let up = raw_upstream(|_| Some(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")).await;
    let gw = Gateway::start(&only_legacy(&format!("http://{up}"), "400ms")).await;
    let started = std::time::Instant::now();
    let resp = client().get(gw.url("/stall")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.is_err(), "the body must fail, not hang");
    assert!(started.elapsed() < Duration::from_secs(5));
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"strangler_upstream_errors_total{kind="timeout",route="default",side="legacy"}"#
        ),
        Some(1.0),
        "{m}"
    );
}

/// Content-Length and Transfer-Encoding together: the chunked framing wins, and the stale
/// length does not reach the client (it would truncate the body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_response_with_a_content_length_is_not_truncated() {
    let up = raw_upstream(|_| {
        Some(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n")
    })
    .await;
    let gw = Gateway::start(&only_legacy(&format!("http://{up}"), "2s")).await;
    let req = "GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    let (status, head, body) = raw(gw.running.public_addr, req).await;
    assert_eq!(status, 200);
    assert!(
        !head.to_ascii_lowercase().contains("content-length: 3"),
        "{head}"
    );
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("hello world"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_rules() {
    let legacy = Upstream::start("legacy").await;
    let gw = Gateway::start(&only_legacy(&legacy.url(), "2s")).await;
    let addr = gw.running.public_addr;
    let (status, _, body) = raw(
        addr,
        "GET /a HTTP/1.1\r\nHost: good.example\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "two Host headers");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "bad_request");
    let (status, _, _) = raw(addr, "GET /a HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, 400, "HTTP/1.1 without Host");
    assert_eq!(legacy.count(), 0);
    // HTTP/1.0 may omit it: the upstream gets its own authority.
    let (status, _, _) = raw(addr, "GET /a HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, 200);
    assert_eq!(
        legacy.last().headers["host"],
        legacy.addr.to_string().as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_strip_the_gateways_own_headers() {
    let legacy = Upstream::start("legacy").await;
    let gw = Gateway::start(&only_legacy(&legacy.url(), "2s")).await;
    let req =
        "GET /a HTTP/1.1\r\nHost: h\r\nConnection: x-request-id, x-forwarded-for, close\r\n\r\n";
    let (status, head, _) = raw(gw.running.public_addr, req).await;
    assert_eq!(status, 200);
    let r = legacy.last();
    let id = r
        .headers
        .get("x-request-id")
        .expect("the upstream got a request id");
    assert!(head.contains(id.to_str().unwrap()), "{head}");
    assert_eq!(r.headers["x-forwarded-for"], "127.0.0.1");
}

/// A client that leaves before the answer is recorded as 499, not as an upstream failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_early_is_499() {
    let legacy = Upstream::start("legacy").await;
    let gw = Gateway::start(&only_legacy(&legacy.url(), "5s")).await;
    let mut s = TcpStream::connect(gw.running.public_addr).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: h\r\nx-test-delay-ms: 1500\r\n\r\n")
        .await
        .unwrap();
    // Wait until the upstream has the request, then leave.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while legacy.count() == 0 && std::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
    drop(s);
    let series =
        r#"strangler_requests_total{code="499",method="GET",route="default",side="legacy"}"#;
    let mut m = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        m = gw.metrics().await;
        if metric(&m, series).is_some() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(metric(&m, series), Some(1.0), "{m}");
    assert!(!m.contains("strangler_upstream_errors_total{"), "{m}");
}

/// A client that leaves mid-upload is not counted against the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_upload_is_not_an_upstream_error() {
    let legacy = Upstream::start("legacy").await;
    let gw = Gateway::start(&only_legacy(&legacy.url(), "5s")).await;
    let mut s = TcpStream::connect(gw.running.public_addr).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\npartial")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(s);
    // The gateway records the request when it gives up on it; wait for that.
    let mut m = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        m = gw.metrics().await;
        if m.contains("strangler_requests_total{") {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(
        m.contains("strangler_requests_total{"),
        "the request was recorded: {m}"
    );
    assert!(!m.contains("strangler_upstream_errors_total{"), "{m}");
}

/// Many small headers are fine: only the total size is limited (431 as JSON beyond it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_limits_are_the_gateways() {
    let legacy = Upstream::start("legacy").await;
    let gw = Gateway::start(&only_legacy(&legacy.url(), "2s")).await;
    let mut req = String::from("GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n");
    for i in 0..150 {
        req.push_str(&format!("x-h{i}: v\r\n"));
    }
    req.push_str("\r\n");
    let (status, _, _) = raw(gw.running.public_addr, &req).await;
    assert_eq!(status, 200, "150 small headers");
    let mut req = String::from("GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n");
    for i in 0..40 {
        req.push_str(&format!("x-h{i}: {}\r\n", "v".repeat(1000)));
    }
    req.push_str("\r\n");
    let (status, head, body) = raw(gw.running.public_addr, &req).await;
    assert_eq!(status, 431, "{head}");
    assert!(head.to_ascii_lowercase().contains("x-request-id"));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "headers_too_large");
}

/// `Transfer-Encoding` other than `chunked` once and last (`chunked, chunked` above all) is
/// how request smuggling between proxies that disagree begins: 400, and the connection is
/// closed, with nothing forwarded. Written as raw bytes, as an attacker would send them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_encoding_other_than_chunked_once_and_last_is_refused() {
    let legacy = Upstream::start("legacy").await;
    let gw = Gateway::start(&only_legacy(&legacy.url(), "2s")).await;
    let addr = gw.running.public_addr;
    for te in [
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked, chunked\r\n",
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // Keep-alive asked for: the gateway must close all the same.
        let req = format!("POST /a HTTP/1.1\r\nHost: h\r\n{te}\r\n5\r\nhello\r\n0\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(
            read.is_ok(),
            "{te:?}: the connection was left open after the answer"
        );
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 400"), "{te:?}: {text}");
        assert!(text.contains("\"error\":\"bad_request\""), "{te:?}: {text}");
    }
    assert_eq!(legacy.count(), 0, "nothing may be forwarded");
    // `chunked` once and last is the ordinary case.
    let (status, _, _) = raw(
        addr,
        "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(legacy.last().body.as_deref(), Some(&b"hello"[..]));
}
