//! Every wait ends: a client that stops sending its body, an upstream that stops reading it,
//! a client that stops reading the answer and a client that stops midway through a head are
//! each cut after their timeout, and counted; a client or upstream that is slow but moving is
//! not. Clients are raw sockets, so nothing cleans up after them.

use crate::support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A gateway whose client waits are bounded by 1 s, in front of `legacy` (whose timeout is
/// `upstream_timeout`).
async fn gateway(legacy: &str, upstream_timeout: &str) -> Gateway {
    Gateway::start(&format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nlegacy: {{url: {legacy}, timeout: {upstream_timeout}}}\nclient: {{head_timeout: 1s, body_timeout: 1s, send_timeout: 1s}}\nroutes: []\n"
    ))
    .await
}

async fn client_errors(gw: &Gateway, kind: &str) -> f64 {
    metric(
        &gw.metrics().await,
        &format!(
            "strangler_client_errors_total{{kind=\"{kind}\",route=\"default\",side=\"legacy\"}}"
        ),
    )
    .unwrap_or(0.0)
}

/// Reads what the peer sends until it closes, for at most `limit`; `None` if it did not
/// close in that time.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    match tokio::time::timeout(limit, s.read_to_end(&mut buf)).await {
        Ok(_) => Some(buf),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_sending_its_body_is_cut_and_counted() {
    let legacy = Upstream::start("legacy").await;
    let gw = gateway(&legacy.url(), "30s").await;
    let mut s = TcpStream::connect(gw.running.public_addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n0123456789")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("the gateway closed the stalled client's connection");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"error\":\"request_timeout\""), "{text}");
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(client_errors(&gw, "body_timeout").await, 1.0);
    // The upstream connection was closed too: the upstream saw the body end at 10 bytes.
    let deadline = Instant::now() + Duration::from_secs(5);
    while legacy.count() == 0 {
        assert!(
            Instant::now() < deadline,
            "the upstream connection stayed open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(legacy.last().body_len, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_moving_upload_is_not_cut() {
    let legacy = Upstream::start("legacy").await;
    let gw = gateway(&legacy.url(), "30s").await;
    let mut s = TcpStream::connect(gw.running.public_addr).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 80\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    // 8 pieces, 400 ms apart: 3.2 s in all, never 1 s without progress.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        s.write_all(b"0123456789").await.unwrap();
    }
    let answer = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(legacy.last().body_len, 80);
    assert_eq!(client_errors(&gw, "body_timeout").await, 0.0);
}

/// An upstream that reads the request head and then stops reading: `Some(delay)` reads
/// 512 KiB every `delay` instead, then answers 200 once the whole body is in.
async fn reading_upstream(pace: Option<Duration>) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 512 * 1024];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf[..1]).await {
                        Ok(1) => head.push(buf[0]),
                        _ => return,
                    }
                }
                let Some(pace) = pace else {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                };
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let len: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let mut got = 0;
                while got < len {
                    tokio::time::sleep(pace).await;
                    let want = buf.len().min(len - got);
                    match s.read_exact(&mut buf[..want]).await {
                        Ok(_) => got += want,
                        Err(_) => return,
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    addr
}

/// Sends a POST with a body of `len` bytes from a task of its own (the send blocks once the
/// buffers fill), and returns the answer's first line.
async fn post_big(gw: &Gateway, len: usize) -> String {
    let s = TcpStream::connect(gw.running.public_addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    tokio::spawn(async move {
        let head = format!(
            "POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        );
        if w.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < len {
            let n = chunk.len().min(len - sent);
            if w.write_all(&chunk[..n]).await.is_err() {
                return;
            }
            sent += n;
        }
        // Keep the write half open: closing it would read as the client leaving.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(w);
    });
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_reading_the_body_times_out() {
    let up = reading_upstream(None).await;
    let gw = gateway(&format!("http://{up}"), "1s").await;
    let started = Instant::now();
    let first = post_big(&gw, 64 << 20).await;
    assert_eq!(
        first,
        "HTTP/1.1 504 Gateway Timeout",
        "after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"strangler_upstream_errors_total{kind="timeout",route="default",side="legacy"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_reads_slowly_but_steadily_is_not_cut() {
    // 512 KiB every 100 ms: 24 MiB (far more than the sockets' buffers hold) in about 5 s,
    // with a 3 s timeout (once the whole body is in the buffers, the upstream still needs
    // a second or so to read it).
    let up = reading_upstream(Some(Duration::from_millis(100))).await;
    let gw = gateway(&format!("http://{up}"), "3s").await;
    let first = post_big(&gw, 24 << 20).await;
    assert_eq!(first, "HTTP/1.1 200 OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_the_answer_is_cut_and_counted() {
    let legacy = Upstream::start("legacy").await;
    let gw = gateway(&legacy.url(), "30s").await;
    let mut s = TcpStream::connect(gw.running.public_addr).await.unwrap();
    // Ten gigabytes: far more than any socket buffer holds.
    s.write_all(b"GET /download HTTP/1.1\r\nHost: h\r\nx-test-body-bytes: 10000000000\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // Stop reading while the buffers fill and the send timeout runs out.
    let deadline = Instant::now() + Duration::from_secs(15);
    while client_errors(&gw, "send_timeout").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the stalled reader was never cut"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rest = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("the gateway closed the connection");
    assert!(rest.len() < 1 << 30, "{} bytes", rest.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_moving_reader_is_not_cut() {
    let legacy = Upstream::start("legacy").await;
    let gw = gateway(&legacy.url(), "30s").await;
    let mut s = TcpStream::connect(gw.running.public_addr).await.unwrap();
    s.write_all(b"GET /download HTTP/1.1\r\nHost: h\r\nx-test-body-bytes: 10000000000\r\n\r\n")
        .await
        .unwrap();
    // Let the buffers fill, then read 1 MiB every 250 ms for 3 s (the sender's socket is
    // writable again only once a good part of its buffer is free).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        s.read_exact(&mut buf).await.unwrap();
    }
    assert_eq!(client_errors(&gw, "send_timeout").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_left_unfinished_is_cut_and_counted_and_an_idle_connection_is_not_counted() {
    let legacy = Upstream::start("legacy").await;
    let gw = gateway(&legacy.url(), "30s").await;
    // Midway through a head, then nothing.
    let mut s = TcpStream::connect(gw.running.public_addr).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: h\r\nX-Wait")
        .await
        .unwrap();
    assert!(
        read_until_closed(&mut s, Duration::from_secs(10))
            .await
            .is_some()
    );
    // A kept-alive connection left idle after an answer.
    let mut idle = TcpStream::connect(gw.running.public_addr).await.unwrap();
    idle.write_all(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert!(
        read_until_closed(&mut idle, Duration::from_secs(10))
            .await
            .is_some()
    );
    let m = gw.metrics().await;
    assert_eq!(client_errors(&gw, "head_timeout").await, 1.0);
    assert_eq!(
        metric(
            &m,
            r#"strangler_requests_total{code="408",method="OTHER",route="default",side="legacy"}"#
        ),
        Some(1.0)
    );
}
