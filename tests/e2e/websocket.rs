//! WebSocket through the gateway: a real WebSocket server upstream (tokio-tungstenite) and a
//! real WebSocket client, the tunnel between them made by the gateway after the upstream's
//! 101.

use crate::support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use support::*;

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The handshake callback's signature is tungstenite's.
#[allow(clippy::result_large_err)]
fn record_headers(
    seen: &mut String,
    req: &Request,
    resp: Response,
) -> Result<Response, tokio_tungstenite::tungstenite::handshake::server::ErrorResponse> {
    for (k, v) in req.headers() {
        seen.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
    }
    Ok(resp)
}

/// A WebSocket echo server named `name`: a text message comes back as `name:text`, a binary
/// one as it was sent; the text `close` makes the server close the socket. The first text
/// message after the handshake can be `headers`, answered with the upgrade request's
/// headers as `name:` then one `key: value` per line.
async fn ws_server(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut seen = String::new();
                #[allow(clippy::result_large_err)] // tungstenite's callback signature
                let callback = |req: &Request, resp: Response| record_headers(&mut seen, req, resp);
                let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                    .max_message_size(Some(64 << 20))
                    .max_frame_size(Some(64 << 20));
                let Ok(mut ws) =
                    tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config))
                        .await
                else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    let reply = match msg {
                        Message::Text(t) if t.as_str() == "close" => {
                            let _ = ws.close(None).await;
                            // Read on until the client's close answer ends the stream.
                            continue;
                        }
                        Message::Text(t) if t.as_str() == "headers" => {
                            Message::text(format!("{name}:\n{seen}"))
                        }
                        Message::Text(t) => Message::text(format!("{name}:{t}")),
                        Message::Binary(b) => Message::Binary(b),
                        _ => continue,
                    };
                    if ws.send(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn connect(url: &str, headers: &[(&str, &str)]) -> Result<Client, WsError> {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async_with_config(req, Some(config), false),
    )
    .await
    .expect("the handshake ends")
    .map(|(ws, _)| ws)
}

/// Sends `text` and returns the text answered.
async fn ask(ws: &mut Client, text: &str) -> String {
    ws.send(Message::text(text)).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("no text answer to {text:?}: {other:?}"),
        }
    }
}

fn ws_url(gw: &Gateway, path: &str) -> String {
    format!("ws://{}{}", gw.running.public_addr, path)
}

/// A routes file with a legacy and a new WebSocket server, the route `/ws/` split by
/// `percent` on the sticky header `x-user-id`, and the route `/quiet/` refusing upgrades.
fn config(legacy: SocketAddr, new: SocketAddr, percent: u32, extra: &str) -> String {
    format!(
        "{}sticky: {{header: x-user-id}}\noverride: {{header: x-strangler-side}}\n{extra}routes:\n  - name: live\n    match: {{prefix: /ws/}}\n    service: chat\n    percent: {percent}\n  - name: quiet\n    match: {{prefix: /quiet/}}\n    service: chat\n    percent: 0\n    upgrades: false\n",
        config_head(
            &format!("http://{legacy}"),
            &[("chat", &format!("http://{new}"))]
        )
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_binary_messages_cross_both_ways() {
    let (legacy, new) = (ws_server("legacy").await, ws_server("new").await);
    let gw = Gateway::start(&config(legacy, new, 0, "")).await;
    let mut ws = connect(&ws_url(&gw, "/ws/chat"), &[]).await.unwrap();
    assert_eq!(ask(&mut ws, "hello").await, "legacy:hello");
    assert_eq!(ask(&mut ws, "again").await, "legacy:again");
    // A 10 MiB binary message, every byte checked.
    let big: Vec<u8> = (0..10 << 20).map(|i: u32| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    let back = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(back.into_data().as_ref(), &big[..]);
    // The upgrade request reached the upstream with `Upgrade` and `Connection: upgrade`, and
    // the gateway's forwarding headers.
    let headers = ask(&mut ws, "headers").await;
    assert!(headers.contains("upgrade: websocket\n"), "{headers}");
    assert!(headers.contains("connection: upgrade\n"), "{headers}");
    assert!(
        headers.contains("x-forwarded-for: 127.0.0.1\n"),
        "{headers}"
    );
    assert!(headers.contains("sec-websocket-key: "), "{headers}");
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_stickiness_and_the_override_apply_to_upgrades() {
    let (legacy, new) = (ws_server("legacy").await, ws_server("new").await);
    let gw = Gateway::start(&config(legacy, new, 50, "")).await;
    let url = ws_url(&gw, "/ws/chat");
    for side in ["legacy", "new"] {
        let mut ws = connect(&url, &[("x-strangler-side", side)]).await.unwrap();
        assert_eq!(ask(&mut ws, "hi").await, format!("{side}:hi"));
    }
    // Each user stays on one side however often they reconnect; at 50 %, 40 users land on
    // both sides (all on one: probability 2 × 2^-40).
    let mut sides = std::collections::HashSet::new();
    for user in 0..40 {
        let uid = format!("user-{user}");
        let mut first = None;
        for _ in 0..3 {
            let mut ws = connect(&url, &[("x-user-id", &uid)]).await.unwrap();
            let side = ask(&mut ws, "who").await;
            assert_eq!(*first.get_or_insert(side.clone()), side, "{uid}");
            ws.close(None).await.unwrap();
        }
        sides.insert(first.unwrap());
    }
    assert_eq!(sides.len(), 2, "{sides:?}");
    // Paths outside the route go to legacy (route `default`).
    let mut ws = connect(&ws_url(&gw, "/other"), &[("x-strangler-side", "new")])
        .await
        .unwrap();
    assert_eq!(ask(&mut ws, "x").await, "legacy:x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn either_side_can_close_and_the_tunnel_is_counted_as_101() {
    let (legacy, new) = (ws_server("legacy").await, ws_server("new").await);
    let gw = Gateway::start(&config(legacy, new, 100, "")).await;
    let url = ws_url(&gw, "/ws/chat");
    // The client closes: the server's close answer comes back, then the stream ends.
    let mut ws = connect(&url, &[]).await.unwrap();
    assert_eq!(ask(&mut ws, "a").await, "new:a");
    ws.close(None).await.unwrap();
    let mut got_close = false;
    while let Some(m) = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
    {
        match m {
            Ok(Message::Close(_)) => got_close = true,
            Ok(other) => panic!("after close: {other:?}"),
            Err(_) => break,
        }
    }
    assert!(got_close, "the server's close frame came through");
    drop(ws);
    // The server closes.
    let mut ws = connect(&url, &[]).await.unwrap();
    ws.send(Message::text("close")).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap();
    assert!(matches!(m, Some(Ok(Message::Close(_)))), "{m:?}");
    // As a client does: its close answer goes out as it reads on, and it lets go of the
    // socket once the server has closed.
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    // Both tunnels recorded once they ended: code 101, route live, side new.
    let series = r#"strangler_requests_total{code="101",method="GET",route="live",side="new"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = gw.metrics().await;
        if metric(&m, series) == Some(2.0) {
            break;
        }
        assert!(Instant::now() < deadline, "{series} not 2:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gw.running.gateway.tunnels.open(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sockets_at_once() {
    let (legacy, new) = (ws_server("legacy").await, ws_server("new").await);
    let gw = Gateway::start(&config(legacy, new, 50, "")).await;
    let url = ws_url(&gw, "/ws/chat");
    let mut sockets = Vec::new();
    for i in 0..200 {
        let uid = format!("u{i}");
        sockets.push(connect(&url, &[("x-user-id", &uid)]).await.unwrap());
    }
    assert_eq!(gw.running.gateway.tunnels.open(), 200);
    let answers =
        futures_util::future::join_all(sockets.iter_mut().enumerate().map(|(i, ws)| async move {
            let mut ok = 0;
            for k in 0..5 {
                let text = format!("{i}-{k}");
                let got = ask(ws, &text).await;
                if got == format!("legacy:{text}") || got == format!("new:{text}") {
                    ok += 1;
                }
            }
            ok
        }))
        .await;
    assert_eq!(answers.iter().sum::<usize>(), 1000);
    for mut ws in sockets {
        ws.close(None).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.running.gateway.tunnels.open() > 0 {
        assert!(Instant::now() < deadline, "tunnels left open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_upgrades_false_refuses_them() {
    let (legacy, new) = (ws_server("legacy").await, ws_server("new").await);
    let gw = Gateway::start(&config(legacy, new, 0, "")).await;
    match connect(&ws_url(&gw, "/quiet/x"), &[]).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 400);
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"], "upgrade_refused");
            assert_eq!(body["route"], "quiet");
        }
        other => panic!("expected a 400: {:?}", other.map(|_| ())),
    }
    // Counted as a refusal of route quiet.
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"strangler_requests_total{code="400",method="GET",route="quiet",side="legacy"}"#
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_answers_200_to_an_upgrade_is_relayed_as_is() {
    let legacy = Upstream::start("legacy").await;
    let gw = Gateway::start(&format!("{}routes: []\n", config_head(&legacy.url(), &[]))).await;
    match connect(&ws_url(&gw, "/plain"), &[]).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.body().as_deref(), Some(&b"legacy"[..]));
        }
        other => panic!("expected the upstream's 200: {:?}", other.map(|_| ())),
    }
    // The upstream was asked for the upgrade.
    let seen = legacy.last();
    assert_eq!(seen.headers["upgrade"], "websocket");
    assert_eq!(seen.headers["connection"], "upgrade");
}

/// An upgrade to cleartext HTTP/2 is never passed on: tunnelled, it would carry requests
/// the gateway never sees. It is served as the ordinary request it also is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_is_not_passed_on() {
    let legacy = Upstream::start("legacy").await;
    let gw = Gateway::start(&format!("{}routes: []\n", config_head(&legacy.url(), &[]))).await;
    let (status, head, body) = raw(
        gw.running.public_addr,
        "GET /admin-only HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, b"legacy");
    let seen = legacy.last();
    assert!(seen.headers.get("upgrade").is_none(), "{:?}", seen.headers);
    assert!(
        seen.headers.get("http2-settings").is_none(),
        "{:?}",
        seen.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tunnel_closes_after_the_services_idle_timeout() {
    let (legacy, new) = (ws_server("legacy").await, ws_server("new").await);
    let yaml = config(legacy, new, 0, "").replace(
        &format!("  url: http://{legacy}\n  timeout: 10s\n"),
        &format!("  url: http://{legacy}\n  timeout: 10s\n  idle_timeout: 1s\n"),
    );
    assert!(yaml.contains("idle_timeout: 1s"));
    let gw = Gateway::start(&yaml).await;
    let mut ws = connect(&ws_url(&gw, "/ws/chat"), &[]).await.unwrap();
    // Talking every 300 ms for 2.5 s keeps it open...
    for i in 0..8 {
        assert_eq!(ask(&mut ws, &i.to_string()).await, format!("legacy:{i}"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // ...silence closes it, within a few seconds.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the silent tunnel was not closed");
}

/// The access log of a real gateway process: a tunnel's line comes when it ends, with
/// status 101, its duration and the bytes each way. A drain lets an open tunnel go on,
/// then cuts it at `drain_timeout` (logged as `drain`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_are_logged_when_they_end_and_a_drain_cuts_them_at_its_timeout() {
    let (legacy, new) = (ws_server("legacy").await, ws_server("new").await);
    let (_dir, file) = routes_file(&config(legacy, new, 0, "drain_timeout: 2s\n"));
    let mut gw = GatewayProcess::spawn(&file, &[]).await;
    let url = format!("ws://{}/ws/chat", gw.public);
    let mut ws = connect(&url, &[("x-request-id", "tunnel-1")])
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(ask(&mut ws, "12345").await, "legacy:12345");
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    let lived = started.elapsed();
    let line = access_line(&gw, "tunnel-1");
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(line["route"], "live");
    assert!(line.get("error").is_none_or(|e| e.is_null()), "{line}");
    let ms = line["duration_ms"].as_f64().unwrap();
    assert!(
        ms >= 300.0 && ms <= lived.as_millis() as f64 + 50.0,
        "{line}"
    );
    // Client to upstream: the masked frames of "12345" (2 + 4 + 5) and of an empty close
    // (2 + 4).
    assert_eq!(line["bytes_in"], 17, "{line}");
    // Upstream to client: "legacy:12345" (2 + 12) and the empty close answer (2).
    assert_eq!(line["bytes_out"], 16, "{line}");

    // A drain: the open tunnel keeps working, then is cut at drain_timeout.
    let mut ws = connect(&url, &[("x-request-id", "tunnel-2")])
        .await
        .unwrap();
    gw.signal("-TERM");
    gw.wait_draining().await;
    assert_eq!(ask(&mut ws, "during").await, "legacy:during");
    let exit = gw.exit_status().await;
    assert!(exit.success(), "{exit:?}");
    let line = access_line(&gw, "tunnel-2");
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(line["error"], "drain", "{line}");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the client saw its tunnel closed");
}

/// The access-log line of request `id`, waited for (10 s at most).
fn access_line(gw: &GatewayProcess, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let Ok(line) = gw.lines.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["kind"] == "access"
            && v["request_id"] == id
        {
            return v;
        }
    }
    panic!("no access-log line for {id}");
}

/// An upgrade takes the same attempts as any request: to a service of two instances, one of
/// which refuses connections, with `retries` on connect failures, every upgrade reaches the
/// live one (an upgrade that went around the attempts failed on each turn of the balance to
/// the dead instance).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_whose_instance_refuses_the_connection_is_retried_on_another() {
    let (legacy, new) = (ws_server("legacy").await, ws_server("new").await);
    let dead = dead_addr().await;
    let yaml = format!(
        "{}  chat:\n    urls: [http://{dead}, http://{new}]\n    timeout: 10s\nroutes:\n  - name: live\n    match: {{prefix: /ws/}}\n    service: chat\n    percent: 100\n    retries: {{attempts: 1, when: [connect]}}\n",
        config_head(&format!("http://{legacy}"), &[])
    );
    let gw = Gateway::start(&yaml).await;
    for i in 0..10 {
        let mut ws = connect(&ws_url(&gw, "/ws/chat"), &[])
            .await
            .unwrap_or_else(|e| panic!("upgrade {i} failed: {e}"));
        assert_eq!(ask(&mut ws, "hi").await, "new:hi", "upgrade {i}");
    }
    let m = gw.metrics().await;
    // Round robin over the two instances: the first pick of at least one upgrade was the
    // dead one, and each upgrade is retried at most once.
    let retried = metric(&m, r#"strangler_retries_total{route="live",side="new"}"#).unwrap_or(0.0);
    assert!((1.0..=10.0).contains(&retried), "{retried} retries\n{m}");
    assert_eq!(
        metric(
            &m,
            r#"strangler_requests_total{code="101",method="GET",route="live",side="new"}"#
        ),
        Some(10.0),
        "{m}"
    );
}
