//! The edge, round three: request trailers, path parameters, methods, `Connection` naming
//! the gateway's own headers, HTTP/1.0 keep-alive, the headers older monoliths re-route or
//! trust on, and the admin listener's `Host`. Each request is raw bytes on a socket (or a
//! real HTTP/2 client), as an attacker would send them.

use crate::support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that records each request's raw bytes (head, body and trailer section) and
/// answers `200 ok` naming itself, one request per connection.
struct RawUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl RawUpstream {
    async fn start(name: &'static str) -> RawUpstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let rec = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    continue;
                };
                let rec = rec.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 8192];
                    let mut got = Vec::new();
                    while !complete(&got) {
                        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    rec.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&got).into_owned());
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Upstream: {name}\r\nConnection: close\r\n\r\nok"
                    );
                    let _ = s.write_all(answer.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        RawUpstream { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn last(&self) -> String {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

/// Whether `got` holds a whole request: a head, then its body by its framing.
fn complete(got: &[u8]) -> bool {
    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    let body = &got[end + 4..];
    if head.contains("transfer-encoding: chunked") {
        // The last chunk, then the trailer section up to its blank line.
        let text = String::from_utf8_lossy(body);
        return match text.find("0\r\n") {
            Some(i) if i == 0 || text[..i].ends_with("\r\n") => {
                let rest = &text[i + 3..];
                rest.starts_with("\r\n") || rest.contains("\r\n\r\n")
            }
            _ => false,
        };
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    body.len() >= length
}

/// The trailer section of a chunked request as received (after the last chunk), lower case.
fn trailer_section(raw: &str) -> String {
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let last = body.rfind("0\r\n").unwrap_or(0);
    body[last + 3..].to_ascii_lowercase()
}

const FORGED_TRAILERS: &str = "X-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Request-Id: forged\r\nX-Strangler-Shadow: 1\r\nX_Forwarded_For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nVia: 1.1 forged\r\nX-Forwarded-Host: evil.example\r\nCookie: session=stolen\r\nHost: evil.example\r\nTrue-Client-IP: 6.6.6.6\r\nX-Original-URL: /admin\r\nX-Checksum: abc123\r\n";

fn assert_only_the_checksum(section: &str) {
    for forged in [
        "6.6.6.6",
        "forged",
        "x-strangler-shadow",
        "x_forwarded_for",
        "forwarded:",
        "via:",
        "evil.example",
        "cookie",
        "host:",
        "x-original-url",
    ] {
        assert!(
            !section.contains(forged),
            "{forged} in the trailers: {section:?}"
        );
    }
    assert!(section.contains("x-checksum: abc123"), "{section:?}");
}

/// A client's request trailers carry none of what the head may not: forwarding, identity,
/// gateway-owned, hop-by-hop or underscored fields are dropped, others pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trailers_carry_nothing_the_head_may_not() {
    let up = RawUpstream::start("legacy").await;
    let gw = Gateway::start(&format!("{}routes: []\n", config_head(&up.url(), &[]))).await;
    let req = format!(
        "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: X-Forwarded-For, X-Real-IP, X-Request-Id, X-Strangler-Shadow, X_Forwarded_For, Forwarded, Via, X-Forwarded-Host, Cookie, Host, True-Client-IP, X-Original-URL, X-Checksum\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n{FORGED_TRAILERS}\r\n"
    );
    let (status, _, body) = raw(gw.running.public_addr, &req).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let got = up.last();
    assert!(got.contains("hello"), "{got}");
    assert_only_the_checksum(&trailer_section(&got));
}

/// The same over HTTP/2: a trailing HEADERS frame is held to the same rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_request_trailers_carry_nothing_the_head_may_not() {
    let up = RawUpstream::start("legacy").await;
    let gw = Gateway::start(&format!("{}routes: []\n", config_head(&up.url(), &[]))).await;
    type Frames = http_body_util::StreamBody<
        futures_util::stream::Iter<
            std::vec::IntoIter<Result<http_body::Frame<Bytes>, std::convert::Infallible>>,
        >,
    >;
    let io = TcpStream::connect(gw.running.public_addr).await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake::<_, Frames>(hyper_util::rt::TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut trailers = http::HeaderMap::new();
    for line in FORGED_TRAILERS.split("\r\n").filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(": ").unwrap();
        // HTTP/2 field names are lower case; `Host` is not a field there.
        if k.eq_ignore_ascii_case("host") {
            continue;
        }
        trailers.append(
            http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let frames = vec![
        Ok(http_body::Frame::data(Bytes::from_static(b"hello"))),
        Ok(http_body::Frame::trailers(trailers)),
    ];
    let req = http::Request::post("http://a/x")
        .header(
            "trailer",
            "x-forwarded-for, x-real-ip, x-request-id, x-strangler-shadow, x_forwarded_for, forwarded, via, x-forwarded-host, cookie, true-client-ip, x-original-url, x-checksum",
        )
        .body(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
        .unwrap();
    h2.ready().await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), h2.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;
    let got = up.last();
    assert!(got.contains("hello"), "{got}");
    assert_only_the_checksum(&trailer_section(&got));
}

fn servlet_routes(legacy: &str, admin: &str, orders: &str, client: &str) -> String {
    format!(
        "{}{client}routes:\n  - name: admin\n    match: {{prefix: /admin}}\n    service: admin\n    percent: 100\n  - name: orders\n    match: {{path: \"/api/orders/{{id}}\"}}\n    service: orders\n    percent: 100\n",
        config_head(legacy, &[("admin", admin), ("orders", orders)])
    )
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
}

/// A path parameter (`;x`) cannot take a request past the route a servlet monolith would
/// read it as: routes are matched on each segment without its parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_parameter_cannot_avoid_a_route() {
    let legacy = RawUpstream::start("legacy").await;
    let admin = RawUpstream::start("admin").await;
    let orders = RawUpstream::start("orders").await;
    let gw = Gateway::start(&servlet_routes(
        &legacy.url(),
        &admin.url(),
        &orders.url(),
        "",
    ))
    .await;
    for (path, side) in [
        ("/admin;x/users", "admin"),
        ("/admin;/users", "admin"),
        ("/admin/;x/users", "admin"),
        ("/admin;jsessionid=ABC", "admin"),
        ("/api/orders;x/7", "orders"),
        ("/api/orders/7;jsessionid=ABC", "orders"),
        ("/api;v=1/orders/7", "orders"),
        ("/adminx;y/users", "legacy"),
    ] {
        let (status, head, _) = raw(gw.running.public_addr, &get(path)).await;
        assert_eq!(status, 200, "{path}: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("x-upstream: {side}")),
            "{path} should reach {side}: {head}"
        );
    }
    // The upstream gets the path as sent: its own parameters are its own.
    assert!(
        admin
            .last()
            .starts_with("GET /admin;jsessionid=ABC HTTP/1.1"),
        "{}",
        admin.last()
    );

    // Over HTTP/2 too.
    let mut h2 = support::tls::h2(TcpStream::connect(gw.running.public_addr).await.unwrap()).await;
    h2.ready().await.unwrap();
    let resp = h2
        .send_request(
            http::Request::get("http://a/admin;x/users")
                .body(http_body_util::Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-upstream"], "admin");

    // A monolith whose URLs never carry parameters may have them refused.
    let gw = Gateway::start(&servlet_routes(
        &legacy.url(),
        &admin.url(),
        &orders.url(),
        "client: {path_parameters: refuse}\n",
    ))
    .await;
    let (status, _, body) = raw(gw.running.public_addr, &get("/admin;x/users")).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = raw(gw.running.public_addr, &get("/admin/users")).await;
    assert_eq!(status, 200);
}

/// `explain` reads a path with parameters as the gateway does.
#[test]
fn explain_reads_path_parameters_as_the_gateway() {
    let yaml = servlet_routes(
        "http://127.0.0.1:9001",
        "http://127.0.0.1:9002",
        "http://127.0.0.1:9003",
        "",
    );
    let (_dir, file) = routes_file(&yaml);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strangler"))
        .args(["explain", file.to_str().unwrap(), "GET", "/admin;x/users"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let route = text.lines().find(|l| l.starts_with("route:")).unwrap_or("");
    assert!(route.contains("admin"), "{text}");
}

/// A method that is not an upper-case registered one (or one the routes file adds) is
/// refused: `get` cannot skip a `[GET, HEAD]` route to reach a monolith that upper-cases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_are_upper_case_and_known() {
    let legacy = RawUpstream::start("legacy").await;
    let orders = RawUpstream::start("orders").await;
    let yaml = |client: &str| {
        format!(
            "{}{client}routes:\n  - name: orders\n    match: {{path: \"/api/orders/{{id}}\", methods: [GET, HEAD]}}\n    service: orders\n    percent: 100\n",
            config_head(&legacy.url(), &[("orders", &orders.url())])
        )
    };
    let gw = Gateway::start(&yaml("")).await;
    let send = |method: &str| {
        format!("{method} /api/orders/10 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    };
    for bad in ["get", "Get", "gEt"] {
        let (status, head, body) = raw(gw.running.public_addr, &send(bad)).await;
        assert_eq!(status, 400, "{bad}: {head}");
        assert!(String::from_utf8_lossy(&body).contains("bad_request"));
    }
    assert_eq!(legacy.seen.lock().unwrap().len(), 0);
    let (status, _, body) = raw(gw.running.public_addr, &send("PURGE")).await;
    assert_eq!(status, 501, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("method_not_implemented"));
    for known in ["GET", "PROPFIND", "PATCH", "QUERY"] {
        let (status, _, _) = raw(gw.running.public_addr, &send(known)).await;
        assert_eq!(status, 200, "{known}");
    }
    // HTTP/2 `:method: get` too.
    let mut h2 = support::tls::h2(TcpStream::connect(gw.running.public_addr).await.unwrap()).await;
    h2.ready().await.unwrap();
    let resp = h2
        .send_request(
            http::Request::builder()
                .method(http::Method::from_bytes(b"get").unwrap())
                .uri("http://a/api/orders/10")
                .body(http_body_util::Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // A method the routes file adds.
    let gw = Gateway::start(&yaml("client: {extra_methods: [PURGE]}\n")).await;
    let (status, _, _) = raw(gw.running.public_addr, &send("PURGE")).await;
    assert_eq!(status, 200);
}

/// `explain` refuses what the gateway refuses.
#[test]
fn explain_refuses_a_lower_case_method() {
    let yaml = servlet_routes(
        "http://127.0.0.1:9001",
        "http://127.0.0.1:9002",
        "http://127.0.0.1:9003",
        "",
    );
    let (_dir, file) = routes_file(&yaml);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strangler"))
        .args(["explain", file.to_str().unwrap(), "get", "/api/orders/10"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rejected:   400 bad_request"), "{text}");
}

/// `Connection` cannot remove the headers the gateway judges (`Host`, `Via`), and `Via`
/// names the gateway with or without a port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_hide_host_or_via() {
    let legacy = RawUpstream::start("legacy").await;
    let gw = Gateway::start(&format!("{}routes: []\n", config_head(&legacy.url(), &[]))).await;
    let (status, head, _) = raw(
        gw.running.public_addr,
        "GET /a HTTP/1.1\r\nHost: good.example\r\nConnection: host, close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert!(
        legacy
            .last()
            .to_ascii_lowercase()
            .contains("host: good.example"),
        "{}",
        legacy.last()
    );
    for via in [
        "Via: 1.1 strangler\r\nConnection: via, close\r\n",
        "Via: 1.1 strangler:8080\r\nConnection: close\r\n",
        "Via: HTTP/1.1 strangler:8080 (edge)\r\nConnection: close\r\n",
    ] {
        let (status, head, _) = raw(
            gw.running.public_addr,
            &format!("GET /a HTTP/1.1\r\nHost: a\r\n{via}\r\n"),
        )
        .await;
        assert_eq!(status, 508, "{via:?}: {head}");
    }
}

/// An HTTP/1.0 client asking to keep its connection alive, answered by an upstream whose
/// body ends at its close, is told the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_keep_alive_with_an_unknown_length_is_told_close() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
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
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the close").await;
                let _ = s.shutdown().await;
            });
        }
    });
    let gw = Gateway::start(&format!(
        "{}routes: []\n",
        config_head(&format!("http://{up}"), &[])
    ))
    .await;
    let two = "GET /a HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n";
    let (status, head, body) = raw(gw.running.public_addr, two).await;
    assert_eq!(status, 200);
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("connection: close") || lower.contains("content-length"),
        "a keep-alive answer without a length: {head}"
    );
    assert!(!lower.contains("connection: keep-alive"), "{head}");
    assert!(String::from_utf8_lossy(&body).starts_with("until the close"));
}

/// Headers older monoliths re-route on (`X-Original-URL`, `X-Rewrite-URL`) or take as the
/// client's address are removed from untrusted peers; the routes file can add more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerouting_and_client_address_headers_are_removed_from_untrusted_peers() {
    let sneaky = "X-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\nTrue-Client-IP: 6.6.6.6\r\nX-Client-IP: 6.6.6.6\r\nCF-Connecting-IP: 6.6.6.6\r\nX-Cluster-Client-IP: 6.6.6.6\r\nX-Legacy-User: root\r\n";
    let req = format!("GET /a HTTP/1.1\r\nHost: a\r\n{sneaky}Connection: close\r\n\r\n");
    let legacy = RawUpstream::start("legacy").await;
    let yaml = |extra: &str| format!("{}{extra}routes: []\n", config_head(&legacy.url(), &[]));
    let gw = Gateway::start(&yaml("client: {strip_headers: [x-legacy-user]}\n")).await;
    let (status, _, _) = raw(gw.running.public_addr, &req).await;
    assert_eq!(status, 200);
    let got = legacy.last().to_ascii_lowercase();
    for h in [
        "x-original-url",
        "x-rewrite-url",
        "true-client-ip",
        "x-client-ip",
        "cf-connecting-ip",
        "x-cluster-client-ip",
        "x-legacy-user",
    ] {
        assert!(!got.contains(h), "{h} reached legacy: {got}");
    }
    // A trusted proxy (a CDN that sets them) is believed.
    let gw = Gateway::start(&yaml("trusted_proxies: [127.0.0.1]\n")).await;
    raw(gw.running.public_addr, &req).await;
    let got = legacy.last().to_ascii_lowercase();
    assert!(got.contains("cf-connecting-ip: 6.6.6.6"), "{got}");
}

/// With a token, the admin API still answers reads only for a `Host` that cannot be a
/// rebound name (a loopback name, an address, or one of `admin.hosts`), or with the token; an
/// HTTP/1.1 request without `Host` is 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_host_rule_holds_with_a_token() {
    let legacy = RawUpstream::start("legacy").await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0, token_env: EDGE_THREE_TOKEN, hosts: [gateway.internal]}}\nlegacy: {{url: {}}}\nroutes: []\n",
        legacy.url()
    );
    let (_dir, file) = routes_file(&yaml);
    let gw = GatewayProcess::spawn(&file, &[("EDGE_THREE_TOKEN", "edge-three-secret")]).await;
    let admin = gw.admin;
    let read = |host: &str, auth: &str, path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n")
    };
    for path in [
        "/admin/routes",
        "/metrics",
        "/admin/compare",
        "/",
        "/admin/shadow/x",
    ] {
        let (status, head, _) = raw(admin, &read("rebound.example", "", path)).await;
        assert_eq!(status, 403, "{path}: {head}");
    }
    let port = admin.port();
    for host in [
        format!("127.0.0.1:{port}"),
        "localhost".to_string(),
        format!("10.1.2.3:{port}"),
        "gateway.internal".to_string(),
    ] {
        let (status, head, _) = raw(admin, &read(&host, "", "/admin/routes")).await;
        assert_eq!(status, 200, "{host}: {head}");
    }
    let (status, _, _) = raw(
        admin,
        &read(
            "rebound.example",
            "Authorization: Bearer edge-three-secret\r\n",
            "/admin/routes",
        ),
    )
    .await;
    assert_eq!(status, 200);
    // No Host at all, in HTTP/1.1.
    let (status, head, _) = raw(
        admin,
        "GET /admin/routes HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{head}");
}

/// Without a token, an HTTP/1.1 request without `Host` is 400 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_request_without_host_is_400() {
    let legacy = RawUpstream::start("legacy").await;
    let gw = Gateway::start(&format!("{}routes: []\n", config_head(&legacy.url(), &[]))).await;
    let (status, head, _) = raw(
        gw.running.admin_addr,
        "GET /admin/routes HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{head}");
}
