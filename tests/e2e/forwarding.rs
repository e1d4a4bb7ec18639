//! Forwarding transparency (docs/http.md): what the client sends is what the upstream gets,
//! bar the headers the gateway changes; path canonicalization; headers the gateway sets.

use crate::support;

use bytes::Bytes;
use http::HeaderMap;
use support::*;

/// Headers the gateway sets or removes on the way to the upstream (docs/http.md).
const GATEWAY_HEADERS: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    "via",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn end_to_end(h: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = h
        .iter()
        .filter(|(k, _)| !GATEWAY_HEADERS.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    v.sort();
    v
}

async fn legacy_only() -> (Upstream, Gateway) {
    let legacy = Upstream::start("legacy").await;
    let gw = Gateway::start(&format!("{}routes: []\n", config_head(&legacy.url(), &[]))).await;
    (legacy, gw)
}

fn chunked_body(len: usize) -> reqwest::Body {
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let chunks = (0..len.div_ceil(64 * 1024)).map(move |i| {
        let n = (len - i * 64 * 1024).min(64 * 1024);
        Ok::<_, std::io::Error>(chunk.slice(..n))
    });
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

/// The same requests, sent directly and through the gateway, arrive the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_arrive_as_sent_direct_vs_gateway() {
    let (legacy, gw) = legacy_only().await;
    let direct = Upstream::start("direct").await;
    let c = client();
    let sizes = [0usize, 1024, 64 << 20];
    // Each upstream gets one request per (size, framing), and nothing else.
    let mut sent = 0;
    for &size in &sizes {
        for chunked in [false, true] {
            sent += 1;
            for (base, up) in [(direct.url(), &direct), (gw.url(""), &legacy)] {
                let body = if chunked {
                    chunked_body(size)
                } else {
                    reqwest::Body::from(vec![7u8; size])
                };
                let resp = c
                    .put(format!("{base}/api/items/42?b=2&a=1&a=3"))
                    .header("host", "shop.example")
                    .header("x-custom", "Value With Spaces")
                    .header("x-multi", "one")
                    .header("accept", "application/json")
                    .header("authorization", "Bearer abc")
                    .header("cookie", "session=xyz")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                assert_eq!(resp.bytes().await.unwrap(), up.name);
                assert_eq!(
                    up.count(),
                    sent,
                    "{}: size {size} chunked {chunked}",
                    up.name
                );
            }
            let d = direct.last();
            let g = legacy.last();
            assert_eq!(g.method, "PUT");
            assert_eq!(g.method, d.method);
            assert_eq!(
                g.target, "/api/items/42?b=2&a=1&a=3",
                "path and query unchanged"
            );
            assert_eq!(g.target, d.target);
            assert_eq!(g.body_len, size as u64, "size {size} chunked {chunked}");
            assert_eq!(d.body_len, size as u64, "size {size} chunked {chunked}");
            assert_eq!(g.body_hash, d.body_hash);
            if size <= 64 * 1024 {
                assert_eq!(g.body.as_deref(), Some(&vec![7u8; size][..]));
            }
            let (gh, dh) = (end_to_end(&g.headers), end_to_end(&d.headers));
            assert_eq!(gh, dh, "size {size} chunked {chunked}");
            for (name, value) in [
                ("host", "shop.example"),
                ("x-custom", "Value With Spaces"),
                ("x-multi", "one"),
                ("accept", "application/json"),
                ("authorization", "Bearer abc"),
                ("cookie", "session=xyz"),
            ] {
                assert_eq!(g.headers[name], value, "{name}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_requests_get_no_content_length() {
    let (legacy, gw) = legacy_only().await;
    for method in ["GET", "DELETE", "POST", "OPTIONS"] {
        let req =
            format!("{method} /x HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n");
        let (status, _, _) = raw(gw.running.public_addr, &req).await;
        assert_eq!(status, 200, "{method}");
        let r = legacy.last();
        assert_eq!(r.method, method);
        assert!(
            !r.headers.contains_key("content-length"),
            "{method}: {:?}",
            r.headers
        );
        assert!(
            !r.headers.contains_key("transfer-encoding"),
            "{method}: {:?}",
            r.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_download_streams_through() {
    let (_legacy, gw) = legacy_only().await;
    let n: u64 = 64 << 20;
    let mut resp = client()
        .get(gw.url("/download"))
        .header("x-test-body-bytes", n.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = 0u64;
    let mut first_bad = None;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        // The upstream writes byte (offset of the chunk % 251), 64 KiB chunks.
        for (i, b) in chunk.iter().enumerate() {
            let off = got + i as u64;
            if first_bad.is_none() && *b != ((off - off % (64 * 1024)) % 251) as u8 {
                first_bad = Some(off);
            }
        }
        got += chunk.len() as u64;
    }
    assert_eq!(got, n);
    assert_eq!(first_bad, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_and_request_id() {
    let (legacy, gw) = legacy_only().await;
    let c = client();
    // Untrusted client: its X-Forwarded-* are replaced, a well-formed request id is kept.
    let resp = c
        .get(gw.url("/a"))
        .header("host", "shop.example")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .header("x-request-id", "abc.DEF_1-2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc.DEF_1-2");
    let r = legacy.last();
    assert_eq!(r.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(r.headers["x-forwarded-proto"], "http");
    assert_eq!(r.headers["x-forwarded-host"], "shop.example");
    assert_eq!(
        r.headers["host"], "shop.example",
        "the client's Host passes unchanged"
    );
    assert_eq!(r.headers["x-request-id"], "abc.DEF_1-2");

    // A malformed request id is replaced, and the new one returned.
    for bad in ["has space", "x".repeat(129).as_str(), "semi;colon"] {
        let resp = c
            .get(gw.url("/a"))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let returned = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_ne!(returned, bad);
        assert!(!returned.is_empty() && returned.len() <= 128);
        assert_eq!(legacy.last().headers["x-request-id"], returned.as_str());
    }
    // None sent: one is generated, forwarded and returned.
    let resp = c.get(gw.url("/a")).send().await.unwrap();
    let returned = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(legacy.last().headers["x-request-id"], returned.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_keep_and_extend_forwarded_headers() {
    let legacy = Upstream::start("legacy").await;
    let yaml = format!(
        "{}trusted_proxies: [127.0.0.0/8]\nroutes: []\n",
        config_head(&legacy.url(), &[])
    );
    let gw = Gateway::start(&yaml).await;
    client()
        .get(gw.url("/a"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "public.example")
        .send()
        .await
        .unwrap();
    let r = legacy.last();
    assert_eq!(r.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(r.headers["x-forwarded-proto"], "https");
    assert_eq!(r.headers["x-forwarded-host"], "public.example");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let (legacy, gw) = legacy_only().await;
    let req = "GET /a HTTP/1.1\r\nHost: h\r\nConnection: x-private, close\r\nX-Private: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nUpgrade: websocket\r\nX-Kept: 1\r\n\r\n";
    let (status, head, body) = raw(gw.running.public_addr, req).await;
    assert_eq!(status, 200);
    assert_eq!(body, b"legacy");
    let r = legacy.last();
    for h in ["x-private", "keep-alive", "proxy-connection", "upgrade"] {
        assert!(
            !r.headers.contains_key(h),
            "{h} reached the upstream: {:?}",
            r.headers
        );
    }
    // `TE` is hop-by-hop, but `trailers` in it says the client takes trailers, which the
    // gateway relays: that much goes on.
    assert_eq!(r.headers["te"], "trailers");
    assert_eq!(r.headers["x-kept"], "1");
    assert_eq!(r.headers["via"], "1.1 strangler");
    // The upstream answered chunked (streamed body); the client sees the gateway's own
    // framing, and the request id.
    let head = head.to_ascii_lowercase();
    assert!(head.contains("x-request-id: "), "{head}");
    assert!(head.contains("x-upstream: legacy"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_content_length_added_to_204_and_304() {
    let (_legacy, gw) = legacy_only().await;
    for code in [204, 304] {
        let req = format!(
            "GET /a HTTP/1.1\r\nHost: h\r\nx-test-status: {code}\r\nConnection: close\r\n\r\n"
        );
        let (status, head, _) = raw(gw.running.public_addr, &req).await;
        assert_eq!(status, code);
        assert!(
            !head.to_ascii_lowercase().contains("content-length"),
            "{head}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_path_and_host_header_upstream() {
    let legacy = Upstream::start("legacy").await;
    let svc = Upstream::start("svc").await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nlegacy: {{url: {}}}\nservices:\n  svc: {{url: '{}/v2/', host_header: upstream}}\nroutes:\n  - name: r\n    match: {{prefix: /api}}\n    service: svc\n    percent: 100\n",
        legacy.url(),
        svc.url()
    );
    let gw = Gateway::start(&yaml).await;
    client()
        .get(gw.url("/api/x?q=1"))
        .header("host", "shop.example")
        .send()
        .await
        .unwrap();
    let r = svc.last();
    assert_eq!(r.target, "/v2/api/x?q=1");
    assert_eq!(r.headers["host"], svc.addr.to_string().as_str());
    assert_eq!(r.headers["x-forwarded-host"], "shop.example");
}

/// Canonicalization (docs/http.md): routed on, and forwarded as, the canonical path, or rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canonical_paths_are_routed_and_forwarded() {
    let legacy = Upstream::start("legacy").await;
    let admin = Upstream::start("admin").await;
    let orders = Upstream::start("orders").await;
    let yaml = format!(
        "{}routes:\n  - name: admin\n    match: {{prefix: /api/admin}}\n    service: admin\n    percent: 100\n  - name: orders\n    match: {{prefix: /api/orders}}\n    service: orders\n    percent: 100\n",
        config_head(
            &legacy.url(),
            &[("admin", &admin.url()), ("orders", &orders.url())]
        )
    );
    let gw = Gateway::start(&yaml).await;
    let cases: &[(&str, &str, &Upstream)] = &[
        ("/api/orders/../admin", "/api/admin", &admin),
        ("/api/orders/%2e%2e/admin", "/api/admin", &admin),
        ("/api/orders/%2E%2E/admin?x=1", "/api/admin?x=1", &admin),
        ("//api/orders", "/api/orders", &orders),
        ("/api//orders///7", "/api/orders/7", &orders),
        ("/api/./orders/7", "/api/orders/7", &orders),
        ("/api/%6Frders/7", "/api/orders/7", &orders),
        ("/api/orders/caf%c3%a9", "/api/orders/caf%C3%A9", &orders),
    ];
    for (sent, want, up) in cases {
        let before = up.count();
        let req = format!("GET {sent} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
        let (status, _, _) = raw(gw.running.public_addr, &req).await;
        assert_eq!(status, 200, "{sent}");
        assert_eq!(up.count(), before + 1, "{sent} went to {}", up.name);
        assert_eq!(up.last().target, *want, "{sent}");
    }
    let before = legacy.count() + admin.count() + orders.count();
    for bad in [
        "/api/orders%2F..%2Fadmin",
        "/api/orders/%2f",
        "/api/orders/%00",
        "/api/orders/%5C",
        "/api/orders/%3F",
        "/api/orders/%zz",
        "/api/orders/%4",
        "/../api/orders",
        "/api/%2e%2e/%2e%2e/etc",
        "/api/orders/%ff",
        "/api/orders/%0a",
    ] {
        let req = format!("GET {bad} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
        let (status, head, body) = raw(gw.running.public_addr, &req).await;
        assert_eq!(status, 400, "{bad}");
        assert!(head.to_ascii_lowercase().contains("x-request-id"), "{head}");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "bad_request", "{bad}");
        assert!(v["route"].is_null() && v["side"].is_null(), "{bad}");
    }
    assert_eq!(
        legacy.count() + admin.count() + orders.count(),
        before,
        "a rejected path was forwarded"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"strangler_requests_total{code="400",method="GET",route="default",side="legacy"}"#
        ),
        Some(11.0),
        "{m}"
    );
}

/// Absolute-form targets never pick the upstream; CONNECT is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_and_connect_never_reach_other_hosts() {
    let (legacy, gw) = legacy_only().await;
    let req = "GET http://evil.example:81/a?x=1 HTTP/1.1\r\nHost: evil.example:81\r\nConnection: close\r\n\r\n";
    let (status, _, body) = raw(gw.running.public_addr, req).await;
    assert_eq!(status, 200);
    assert_eq!(body, b"legacy");
    assert_eq!(legacy.last().target, "/a?x=1");
    let req =
        "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n";
    let (status, _, _) = raw(gw.running.public_addr, req).await;
    assert_eq!(status, 400);
}

/// The forwarding client never reads `HTTP_PROXY`: a real gateway process with the proxy
/// variables pointing at a dead address still reaches the upstream directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_environment_variables_are_ignored() {
    let legacy = Upstream::start("legacy").await;
    let dead = dead_addr().await;
    let (_dir, file) = routes_file(&format!("{}routes: []\n", config_head(&legacy.url(), &[])));
    let proxy = format!("http://{dead}");
    let gw = GatewayProcess::spawn(
        &file,
        &[
            ("HTTP_PROXY", proxy.as_str()),
            ("http_proxy", proxy.as_str()),
            ("ALL_PROXY", proxy.as_str()),
        ],
    )
    .await;
    let resp = client()
        .get(format!("http://{}/a", gw.public))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "legacy");
    assert_eq!(legacy.count(), 1);
}
