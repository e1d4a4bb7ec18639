//! HTTP/2 from clients, on the public listener beside HTTP/1.1: h2c with prior knowledge and
//! h2 over TLS (ALPN), with hyper's HTTP/2 client. The rules of HTTP/1 hold: routing and
//! side choice per stream, the canonical path from `:path`, `:authority` as `Host`, the
//! header limits and the JSON errors; requests go upstream as HTTP/1.1.

use crate::support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::net::TcpStream;

use support::tls::{self, Ca, H2};
use support::*;

async fn h2c(gw: &Gateway) -> H2 {
    tls::h2(TcpStream::connect(gw.running.public_addr).await.unwrap()).await
}

fn get(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri).body(Full::default()).unwrap()
}

/// Sends `req` on `h2`; status, headers and the whole body.
async fn send(h2: &mut H2, req: Request<Full<Bytes>>) -> (StatusCode, http::HeaderMap, Bytes) {
    h2.ready().await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), h2.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

fn routes(legacy: &Upstream, orders: &Upstream) -> String {
    format!(
        "{}override: {{header: x-strangler-side}}\nroutes:\n  - name: orders\n    match: {{prefix: /api/orders/}}\n    service: orders\n    percent: 100\n",
        config_head(&legacy.url(), &[("orders", &orders.url())])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_on_one_h2c_connection_reach_both_sides() {
    let (legacy, orders) = (
        Upstream::start("legacy").await,
        Upstream::start("orders").await,
    );
    let gw = Gateway::start(&routes(&legacy, &orders)).await;
    let h2 = h2c(&gw).await;
    let base = format!("http://{}", gw.running.public_addr);
    // 100 concurrent streams on the one connection, half to each side.
    let answers = futures_util::future::join_all((0..100).map(|i| {
        let mut h2 = h2.clone();
        let path = if i % 2 == 0 {
            format!("{base}/api/orders/{i}")
        } else {
            format!("{base}/home/{i}")
        };
        async move {
            let (status, headers, body) = send(&mut h2, get(&path)).await;
            (i, status, headers["x-upstream"].clone(), body)
        }
    }))
    .await;
    for (i, status, upstream, body) in answers {
        let side = if i % 2 == 0 { "orders" } else { "legacy" };
        assert_eq!(status, 200);
        assert_eq!(upstream, side, "stream {i}");
        assert_eq!(body, side);
    }
    assert_eq!(orders.count(), 50);
    assert_eq!(legacy.count(), 50);
    // Upstream, the request is HTTP/1.1 with the client's :authority as Host, and Via names
    // HTTP/2.
    let seen = orders.last();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.headers["host"], gw.running.public_addr.to_string());
    assert_eq!(
        seen.headers["x-forwarded-host"],
        gw.running.public_addr.to_string()
    );
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert!(
        seen.headers["via"].to_str().unwrap().starts_with("2 "),
        "{:?}",
        seen.headers["via"]
    );
    // Counted like any request.
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"strangler_requests_total{code="200",method="GET",route="orders",side="new"}"#
        ),
        Some(50.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_cross_both_ways_over_h2() {
    let (legacy, orders) = (
        Upstream::start("legacy").await,
        Upstream::start("orders").await,
    );
    let gw = Gateway::start(&routes(&legacy, &orders)).await;
    let mut h2 = h2c(&gw).await;
    let base = format!("http://{}", gw.running.public_addr);
    // 8 MiB up, without a declared length on the HTTP/2 side: it goes up chunked.
    let up: Vec<u8> = (0..8u32 << 20).map(|i| (i % 253) as u8).collect();
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&up);
    let req = Request::post(format!("{base}/api/orders/upload"))
        .body(Full::new(Bytes::from(up)))
        .unwrap();
    let (status, _, _) = send(&mut h2, req).await;
    assert_eq!(status, 200);
    let seen = orders.last();
    assert_eq!(seen.body_len, 8 << 20);
    assert_eq!(seen.body_hash, hasher.digest());
    // 16 MiB down, streamed.
    let req = Request::get(format!("{base}/download"))
        .header("x-test-body-bytes", (16u64 << 20).to_string())
        .body(Full::default())
        .unwrap();
    let (status, _, body) = send(&mut h2, req).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), 16 << 20);
    assert!(
        body.iter()
            .enumerate()
            .step_by(65_537)
            .all(|(i, b)| *b == ((i / (64 * 1024) * 64 * 1024) % 251) as u8)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_of_http1_hold_for_h2() {
    let (legacy, orders) = (
        Upstream::start("legacy").await,
        Upstream::start("orders").await,
    );
    let mut yaml = routes(&legacy, &orders);
    yaml = yaml.replace(
        &format!("  url: {}\n", orders.url()),
        &format!("  url: http://{}\n", dead_addr().await),
    );
    let gw = Gateway::start(&yaml).await;
    let mut h2 = h2c(&gw).await;
    let base = format!("http://{}", gw.running.public_addr);

    // The canonical path, from :path.
    let (status, _, _) = send(&mut h2, get(&format!("{base}/a/./b/../c%7e?q=1"))).await;
    assert_eq!(status, 200);
    assert_eq!(legacy.last().target, "/a/c~?q=1");
    // A path that climbs above the root: 400, JSON.
    let (status, headers, body) = send(&mut h2, get(&format!("{base}/a/../../etc"))).await;
    assert_eq!(status, 400);
    assert_eq!(headers["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "bad_request");
    // A target over 8 KiB: 414, JSON.
    let long = format!("{base}/{}", "a".repeat(9 * 1024));
    let (status, _, body) = send(&mut h2, get(&long)).await;
    assert_eq!(status, 414);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "uri_too_long");
    // Headers over 32 KiB in all: 431, JSON.
    let mut req = get(&format!("{base}/x"));
    for i in 0..40 {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(format!("x-big-{i}").as_bytes()).unwrap(),
            "v".repeat(1024).parse().unwrap(),
        );
    }
    let (status, _, body) = send(&mut h2, req).await;
    assert_eq!(status, 431);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "headers_too_large");
    // A dead new side: 502, JSON naming route and side.
    let (status, _, body) = send(&mut h2, get(&format!("{base}/api/orders/1"))).await;
    assert_eq!(status, 502);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "upstream_unavailable");
    assert_eq!(v["route"], "orders");
    assert_eq!(v["side"], "new");
    // A client's forwarding headers are replaced, and a header with `_` dropped, as in
    // HTTP/1.
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("{base}/fwd"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x_forwarded_for", "6.6.6.6")
        .body(Full::default())
        .unwrap();
    let (status, _, _) = send(&mut h2, req).await;
    assert_eq!(status, 200);
    let seen = legacy.last();
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert!(seen.headers.get("x_forwarded_for").is_none());
    // The connection is still good after all of these.
    let (status, _, body) = send(&mut h2, get(&format!("{base}/after"))).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"legacy"[..]));
}

/// `tls: {cert, key}`: h2 and HTTP/1.1 chosen by ALPN on one port, `X-Forwarded-Proto:
/// https`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_and_http1_over_tls_by_alpn() {
    let (legacy, orders) = (
        Upstream::start("legacy").await,
        Upstream::start("orders").await,
    );
    let ca = Ca::new("test CA");
    let leaf = ca.leaf("gateway");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &leaf.key_pem).unwrap();
    let yaml = format!(
        "{}tls:\n  cert: {}\n  key: {}\n",
        routes(&legacy, &orders),
        dir.path().join("cert.pem").display(),
        dir.path().join("key.pem").display()
    );
    let gw = Gateway::start(&yaml).await;
    let addr = gw.running.public_addr;

    let s = tls::connect(addr, ca.client(&[b"h2", b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(tls::alpn(&s).as_deref(), Some(&b"h2"[..]));
    assert_eq!(tls::peer_cert(&s), leaf.der);
    let mut h2 = tls::h2(s).await;
    let (status, _, body) = send(
        &mut h2,
        get(&format!("https://localhost:{}/api/orders/3", addr.port())),
    )
    .await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"orders"[..]));
    let seen = orders.last();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(
        seen.headers["host"],
        format!("localhost:{}", addr.port()).as_str()
    );

    let s = tls::connect(addr, ca.client(&[b"http/1.1"])).await.unwrap();
    assert_eq!(tls::alpn(&s).as_deref(), Some(&b"http/1.1"[..]));
    let mut h1 = tls::h1(s).await;
    let req = Request::get("/home")
        .header("host", "localhost")
        .body(Full::default())
        .unwrap();
    let resp = h1.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_11);
    assert_eq!(legacy.last().headers["x-forwarded-proto"], "https");

    // Plain HTTP on the TLS port is a failed handshake, counted.
    let (status, _, _) = raw(addr, "GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(status, 0, "no HTTP answer on a TLS port");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = gw.metrics().await;
        if metric(&m, "strangler_tls_handshake_errors_total") == Some(1.0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A connection with no request under way is closed after `client.head_timeout`, whatever
/// it sends that makes no request: nothing at all, part of HTTP/2's preface, or an HTTP/2
/// connection whose streams have all ended. A stream under way keeps its connection open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_request_under_way_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (legacy, orders) = (
        Upstream::start("legacy").await,
        Upstream::start("orders").await,
    );
    let yaml =
        routes(&legacy, &orders).replace("override:", "client: {head_timeout: 1s}\noverride:");
    assert!(yaml.contains("head_timeout: 1s"));
    let gw = Gateway::start(&yaml).await;
    let addr = gw.running.public_addr;
    let closed_within = |mut s: TcpStream, secs: u64| async move {
        let mut buf = [0u8; 256];
        tokio::time::timeout(Duration::from_secs(secs), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    };
    // Nothing sent.
    let s = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(s, 5).await, "a silent connection stayed open");
    // Part of the preface, then nothing.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(
        closed_within(s, 5).await,
        "half a preface held the connection"
    );

    // HTTP/2: a stream that takes 2.5 s (longer than head_timeout) keeps its connection;
    // once it has ended, the idle connection is closed.
    let mut h2 = h2c(&gw).await;
    let req = Request::get(format!("http://{addr}/slow"))
        .header("x-test-delay-ms", "2500")
        .body(Full::default())
        .unwrap();
    let (status, _, body) = send(&mut h2, req).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"legacy"[..]));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !h2.is_closed() {
        assert!(
            std::time::Instant::now() < deadline,
            "an idle HTTP/2 connection stayed open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP/2 client that stops taking a download (it never opens its stream's flow-control
/// window again) does not hold the upstream's connection: after `client.send_timeout` it is
/// closed, and the request is the client's failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_that_stops_reading_releases_the_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that sends a 1 GiB answer as fast as it is taken, and says when its
    // connection was closed under it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut b).await.unwrap();
            assert!(n > 0);
            head.extend_from_slice(&b[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n")
            .await
            .unwrap();
        let chunk = vec![7u8; 64 * 1024];
        while s.write_all(&chunk).await.is_ok() {}
        let _ = closed_tx.send(());
    });
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nlegacy: {{url: 'http://{up}', timeout: 60s}}\nclient: {{send_timeout: 1s}}\nroutes: []\n"
    );
    let gw = Gateway::start(&yaml).await;
    let mut h2 = h2c(&gw).await;
    h2.ready().await.unwrap();
    let resp = h2
        .send_request(get(&format!("http://{}/big", gw.running.public_addr)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The body is never read: the client's window stays shut.
    tokio::time::timeout(Duration::from_secs(10), closed_rx)
        .await
        .expect("the upstream connection was closed")
        .unwrap();
    drop(resp);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let series =
        r#"strangler_client_errors_total{kind="send_timeout",route="default",side="legacy"}"#;
    loop {
        let m = gw.metrics().await;
        if metric(&m, series) == Some(1.0) {
            assert_eq!(
                metric(
                    &m,
                    r#"strangler_upstream_errors_total{kind="reset",route="default",side="legacy"}"#
                ),
                None,
                "not the upstream's failure:\n{m}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
