//! Every refused request is visible: those the HTTP parser refuses before the gateway sees
//! them (it answers them itself, without a JSON body) are counted under route `default` and
//! logged like the gateway's own refusals.

use crate::support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `bytes` and reads what comes back until the connection closes; the status.
async fn send(addr: std::net::SocketAddr, bytes: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The requests the HTTP parser refuses, and the status it answers.
fn malformed() -> Vec<(&'static str, Vec<u8>, u16)> {
    let many_headers: String = (0..600).map(|i| format!("X-H{i}: v\r\n")).collect();
    let mut tls_hello = vec![
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
    ];
    tls_hello.extend_from_slice(&[0u8; 64]);
    vec![
        (
            "a transfer coding whose last is not chunked",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            400,
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: one\r\n two\r\n\r\n".to_vec(),
            400,
        ),
        (
            "a NUL in a header",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\0b\r\n\r\n".to_vec(),
            400,
        ),
        (
            "an invalid header name",
            b"GET / HTTP/1.1\r\nHost: h\r\nX A: b\r\n\r\n".to_vec(),
            400,
        ),
        (
            "more than 512 headers",
            format!("GET / HTTP/1.1\r\nHost: h\r\n{many_headers}\r\n").into_bytes(),
            431,
        ),
        (
            // The head does not fit the parser's 64 KiB buffer: 431, whatever part of it is
            // long (a target between 8 and 64 KiB is the gateway's own 414).
            "a target over 64 KiB",
            format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(70 * 1024)).into_bytes(),
            431,
        ),
        (
            "HTTP/1.2",
            b"GET / HTTP/1.2\r\nHost: h\r\n\r\n".to_vec(),
            400,
        ),
        ("a TLS ClientHello on the plain port", tls_hello, 400),
        (
            "an invalid Content-Length",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1x\r\n\r\n".to_vec(),
            400,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_parser_refuses_are_counted() {
    let legacy = Upstream::start("legacy").await;
    let gw = Gateway::start(&format!("{}routes: []\n", config_head(&legacy.url(), &[]))).await;
    let cases = malformed();
    let mut expected = std::collections::BTreeMap::<u16, f64>::new();
    for (what, bytes, status) in &cases {
        let got = send(gw.running.public_addr, bytes).await;
        assert_eq!(got, *status, "{what}");
        *expected.entry(*status).or_default() += 1.0;
    }
    assert_eq!(legacy.count(), 0);
    // Counted once the connection task has seen the error: wait for the last of them.
    let total: f64 = expected.values().sum();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = gw.metrics().await;
        let counted: f64 = expected
            .keys()
            .filter_map(|code| {
                metric(
                    &m,
                    &format!(
                        "strangler_requests_total{{code=\"{code}\",method=\"OTHER\",route=\"default\",side=\"legacy\"}}"
                    ),
                )
            })
            .sum();
        if counted == total {
            for (code, n) in &expected {
                let series = format!(
                    "strangler_requests_total{{code=\"{code}\",method=\"OTHER\",route=\"default\",side=\"legacy\"}}"
                );
                assert_eq!(metric(&m, &series), Some(*n), "{series}");
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{counted} of {total} refused requests counted\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The access log says what was refused: a real gateway process, its log on stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_parser_refuses_are_logged() {
    let legacy = Upstream::start("legacy").await;
    let (_dir, file) = routes_file(&format!("{}routes: []\n", config_head(&legacy.url(), &[])));
    let gw = GatewayProcess::spawn(&file, &[]).await;
    let status = send(gw.public, b"GET / HTTP/1.1\r\nHost: h\r\nX A: b\r\n\r\n").await;
    assert_eq!(status, 400);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = gw.lines.recv_timeout(left).expect("an access-log line");
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v["kind"] == "access" {
            assert_eq!(v["status"], 400, "{v}");
            assert_eq!(v["route"], "default", "{v}");
            assert_eq!(v["error"], "malformed", "{v}");
            assert_eq!(v["request_id"].as_str().unwrap().len(), 32, "{v}");
            break;
        }
    }
}
