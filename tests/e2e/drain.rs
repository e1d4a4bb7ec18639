//! Graceful stop: SIGTERM lets the request in flight finish, refuses new connections, turns
//! `/readyz` to 503 while the admin listener stays up, and exits 0.

use crate::support;

use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let legacy = Upstream::start("legacy").await;
    let (_dir, file) = routes_file(&format!(
        "{}drain_timeout: 20s\nroutes: []\n",
        config_head(&legacy.url(), &[])
    ));
    let mut gw = GatewayProcess::spawn(&file, &[]).await;
    let public = gw.public;
    let admin = gw.admin;
    let ready = client()
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    // A request the upstream answers after 2 s.
    let slow = tokio::spawn(async move {
        let resp = client()
            .get(format!("http://{public}/slow"))
            .header("x-test-delay-ms", "2000")
            .send()
            .await
            .unwrap();
        (resp.status(), resp.text().await.unwrap())
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while legacy.count() == 0 {
        assert!(
            Instant::now() < deadline,
            "the slow request never reached the upstream"
        );
        tokio::task::yield_now().await;
    }

    gw.signal("-TERM");

    // Draining: not ready, and the public listener refuses new connections.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = client()
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(public).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "new connections are still accepted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "legacy");

    let exit = gw.exit_status().await;
    assert!(exit.success(), "exit status {exit:?}");
}

/// SIGHUP reloads the routes file (here with the file watch off, so only the signal can).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_routes_file() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    let head = config_head(&legacy.url(), &[("orders", &orders.url())]);
    let route = |p: u32| {
        format!(
            "{head}routes:\n  - name: all\n    match: {{prefix: /}}\n    service: orders\n    percent: {p}\n"
        )
    };
    std::fs::write(&file, route(0)).unwrap();
    let gw = GatewayProcess::spawn_with(&file, &["--no-watch"], &[]).await;
    let url = format!("http://{}/x", gw.public);
    assert_eq!(
        client()
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "legacy"
    );
    std::fs::write(&file, route(100)).unwrap();
    gw.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = client()
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if body == "orders" {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A SIGTERM or SIGHUP the moment the gateway says it listens is handled, not fatal: the
/// handlers are in place before the listening line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_right_after_start_are_handled() {
    let legacy = Upstream::start("legacy").await;
    let (_dir, file) = routes_file(&format!("{}routes: []\n", config_head(&legacy.url(), &[])));
    for signal in ["-HUP", "-TERM"] {
        let mut gw = GatewayProcess::spawn(&file, &[]).await;
        gw.signal(signal);
        if signal == "-HUP" {
            // Still serving.
            let r = client()
                .get(format!("http://{}/x", gw.public))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        } else {
            let exit = gw.exit_status().await;
            assert!(exit.success(), "SIGTERM right after start: {exit:?}");
        }
    }
}

/// An upstream that answers every request with a chunked body trickling out (a chunk every
/// 100 ms, for a minute).
async fn trickling_upstream() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
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
                if s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                for _ in 0..600 {
                    if s.write_all(b"5\r\nhello\r\n").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
    });
    addr
}

/// Starts a long download through `gw` and returns once its first bytes have arrived (the
/// socket is kept open, and read, by a task of its own).
async fn start_download(gw: &GatewayProcess) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.public).await.unwrap();
    s.write_all(b"GET /download HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    });
}

/// The access-log line of the request the drain cut.
fn cut_line(gw: &GatewayProcess) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = gw
            .lines
            .recv_timeout(left)
            .expect("an access-log line for the request the drain cut");
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["kind"] == "access"
        {
            return v;
        }
    }
}

/// A download still running when the drain times out is cut, and the cut is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cut_by_the_drain_is_logged_and_counted() {
    let up = trickling_upstream().await;
    let (_dir, file) = routes_file(&format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nlegacy: {{url: 'http://{up}'}}\ndrain_timeout: 1s\nroutes: []\n"
    ));
    let mut gw = GatewayProcess::spawn(&file, &[]).await;
    start_download(&gw).await;
    let term = Instant::now();
    gw.signal("-TERM");
    let status = gw.exit_status().await;
    assert!(status.success(), "{status:?}");
    assert!(
        term.elapsed() < Duration::from_secs(5),
        "{:?}",
        term.elapsed()
    );
    let v = cut_line(&gw);
    assert_eq!(v["error"], "drain", "{v}");
    assert_eq!(v["status"], 200, "{v}");
    assert!(v["bytes_out"].as_u64().unwrap() > 0, "{v}");
    // Counted: strangler_requests_cut_total, whose total the drain's last line gives.
    let over = log_line(&gw, "drain over: requests still in flight were cut");
    assert_eq!(over["fields"]["requests_cut"], 1, "{over}");
}

/// The next log line (not access log) whose message is `message`.
fn log_line(gw: &GatewayProcess, message: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = gw
            .lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("a log line {message:?}"));
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["fields"]["message"] == message
        {
            return v;
        }
    }
}

/// A second SIGTERM ends the drain at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_ends_the_drain_at_once() {
    let up = trickling_upstream().await;
    let (_dir, file) = routes_file(&format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nlegacy: {{url: 'http://{up}'}}\ndrain_timeout: 60s\nroutes: []\n"
    ));
    let mut gw = GatewayProcess::spawn(&file, &[]).await;
    start_download(&gw).await;
    gw.signal("-TERM");
    // The first is taken (the drain has begun) before the second is sent.
    gw.wait_draining().await;
    let second = Instant::now();
    gw.signal("-TERM");
    let status = gw.exit_status().await;
    assert!(status.success(), "{status:?}");
    assert!(
        second.elapsed() < Duration::from_secs(4),
        "{:?}",
        second.elapsed()
    );
    assert_eq!(cut_line(&gw)["error"], "drain");
}

/// A request still waiting for its upstream's answer when the drain ends gets no answer:
/// it is logged and counted as cut, with 444 (no answer sent), which is no 5xx: neither
/// side failed, and the comparison does not count it against either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cut_before_its_answer_is_no_error_of_either_side() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that reads requests and never answers; it says when it has read one.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let (read_one, mut requests) = tokio::sync::mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let read_one = read_one.clone();
            tokio::spawn(async move {
                let (mut head, mut buf) = (Vec::new(), [0u8; 1024]);
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = read_one.send(());
                // Held open, unanswered, until the gateway closes it.
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    let (_dir, file) = routes_file(&format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nlegacy: {{url: 'http://{up}', timeout: 60s}}\ndrain_timeout: 1s\nroutes: []\n"
    ));
    let mut gw = GatewayProcess::spawn(&file, &[]).await;
    let mut s = tokio::net::TcpStream::connect(gw.public).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), requests.recv())
        .await
        .expect("the request reached the upstream");
    gw.signal("-TERM");
    let status = gw.exit_status().await;
    assert!(status.success(), "{status:?}");
    let v = cut_line(&gw);
    assert_eq!(v["error"], "drain", "{v}");
    assert_eq!(v["status"], 444, "{v}");
    // The client got no answer: the connection was closed.
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got).await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
}
