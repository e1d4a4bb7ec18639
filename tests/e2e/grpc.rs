//! gRPC through the gateway: a real tonic service on each side (tonic's server codec and
//! framing, served by hyper over h2c) and a real tonic client. Methods are routed by the
//! ordinary prefix and exact rules, a split route keeps each user on one side, trailers and
//! `grpc-status` reach the client, and server-fault codes count as errors.

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;

use support::*;

#[derive(Clone, PartialEq, prost::Message)]
struct GetOrder {
    #[prost(string, tag = "1")]
    id: String,
    /// A gRPC status code for the server to fail with (0: answer).
    #[prost(int32, tag = "2")]
    fail_with: i32,
    /// How many orders to stream (ListOrders).
    #[prost(int32, tag = "3")]
    count: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Order {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    served_by: String,
}

const GET: &str = "/orders.v1.Orders/Get";
const LIST: &str = "/orders.v1.Orders/List";
const CHAT: &str = "/orders.v1.Orders/Chat";

#[derive(Clone)]
struct Get(&'static str);

impl tonic::server::UnaryService<GetOrder> for Get {
    type Response = Order;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Order>, Status>> + Send>>;

    fn call(&mut self, req: Request<GetOrder>) -> Self::Future {
        let name = self.0;
        Box::pin(async move {
            let r = req.into_inner();
            if r.fail_with != 0 {
                return Err(Status::new(Code::from(r.fail_with), "failing as asked"));
            }
            Ok(Response::new(Order {
                id: r.id,
                served_by: name.to_string(),
            }))
        })
    }
}

#[derive(Clone)]
struct List(&'static str);

type OrderStream = Pin<Box<dyn Stream<Item = Result<Order, Status>> + Send>>;

impl tonic::server::ServerStreamingService<GetOrder> for List {
    type Response = Order;
    type ResponseStream = OrderStream;
    type Future = Pin<Box<dyn Future<Output = Result<Response<OrderStream>, Status>> + Send>>;

    fn call(&mut self, req: Request<GetOrder>) -> Self::Future {
        let name = self.0;
        Box::pin(async move {
            let r = req.into_inner();
            let fail_with = r.fail_with;
            let items = (0..r.count)
                .map(move |i| {
                    Ok(Order {
                        id: format!("{}-{i}", r.id),
                        served_by: name.to_string(),
                    })
                })
                .chain(
                    (fail_with != 0)
                        .then(|| Err(Status::new(Code::from(fail_with), "failing mid-stream"))),
                );
            let stream: OrderStream = Box::pin(tokio_stream::iter(items.collect::<Vec<_>>()));
            Ok(Response::new(stream))
        })
    }
}

#[derive(Clone)]
struct Chat(&'static str);

impl tonic::server::StreamingService<GetOrder> for Chat {
    type Response = Order;
    type ResponseStream = OrderStream;
    type Future = Pin<Box<dyn Future<Output = Result<Response<OrderStream>, Status>> + Send>>;

    /// Answers each message as it comes (bidirectional streaming).
    fn call(&mut self, req: Request<tonic::Streaming<GetOrder>>) -> Self::Future {
        let name = self.0;
        Box::pin(async move {
            let mut incoming = req.into_inner();
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tokio::spawn(async move {
                while let Ok(Some(m)) = incoming.message().await {
                    let order = Order {
                        id: m.id,
                        served_by: name.to_string(),
                    };
                    if tx.send(Ok(order)).await.is_err() {
                        return;
                    }
                }
            });
            let stream: OrderStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
            Ok(Response::new(stream))
        })
    }
}

/// A gRPC server named `name` on h2c: `Get` (unary), `List` (server streaming) and `Chat`
/// (bidirectional streaming).
async fn grpc_server(name: &'static str) -> SocketAddr {
    grpc_server_on(name, None, None).await
}

/// As `grpc_server`, over TLS (h2 by ALPN) when `tls` is given, allowing `max_streams`
/// concurrent streams per connection when given.
async fn grpc_server_on(
    name: &'static str,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    max_streams: Option<u32>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let tls = tls.clone();
            let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| async move {
                let resp = match req.uri().path() {
                    GET => {
                        tonic::server::Grpc::new(ProstCodec::<Order, GetOrder>::default())
                            .unary(Get(name), req)
                            .await
                    }
                    LIST => {
                        tonic::server::Grpc::new(ProstCodec::<Order, GetOrder>::default())
                            .server_streaming(List(name), req)
                            .await
                    }
                    CHAT => {
                        tonic::server::Grpc::new(ProstCodec::<Order, GetOrder>::default())
                            .streaming(Chat(name), req)
                            .await
                    }
                    _ => Status::unimplemented("no such method").into_http(),
                };
                Ok::<_, Infallible>(resp)
            });
            tokio::spawn(async move {
                let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                h2.max_concurrent_streams(max_streams);
                match tls {
                    None => {
                        let _ = h2.serve_connection(TokioIo::new(stream), svc).await;
                    }
                    Some(config) => {
                        let Ok(s) = tokio_rustls::TlsAcceptor::from(config).accept(stream).await
                        else {
                            return;
                        };
                        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
                        let _ = h2.serve_connection(TokioIo::new(s), svc).await;
                    }
                }
            });
        }
    });
    addr
}

type Client = tonic::client::Grpc<tonic::transport::Channel>;

async fn client_of(addr: SocketAddr) -> Client {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

fn request(
    id: &str,
    fail_with: Code,
    count: i32,
    meta: &[(&'static str, &str)],
) -> Request<GetOrder> {
    let mut req = Request::new(GetOrder {
        id: id.to_string(),
        fail_with: fail_with as i32,
        count,
    });
    for (k, v) in meta {
        req.metadata_mut().insert(*k, v.parse().unwrap());
    }
    req
}

async fn get(c: &mut Client, req: Request<GetOrder>) -> Result<Order, Status> {
    c.ready().await.unwrap();
    c.unary(req, PathAndQuery::from_static(GET), ProstCodec::default())
        .await
        .map(Response::into_inner)
}

/// The gateway in front of a gRPC monolith and a gRPC service carved out of it, both on h2c;
/// the route of the `orders.v1.Orders` methods split at `percent`.
async fn setup(percent: u32) -> (Gateway, Client) {
    let (legacy, new) = (grpc_server("legacy").await, grpc_server("orders").await);
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nlegacy: {{url: 'http://{legacy}', protocol: h2c}}\nservices:\n  orders: {{url: 'http://{new}', protocol: h2c}}\nsticky: {{header: x-user-id}}\noverride: {{header: x-strangler-side}}\ncompare: {{min_requests: 10}}\nroutes:\n  - name: orders-grpc\n    match: {{prefix: /orders.v1.Orders/}}\n    service: orders\n    percent: {percent}\n"
    );
    let gw = Gateway::start(&yaml).await;
    let client = client_of(gw.running.public_addr).await;
    (gw, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_grpc_route_keeps_each_user_on_one_side() {
    let (_gw, mut c) = setup(50).await;
    for side in ["legacy", "new"] {
        let got = get(
            &mut c,
            request("1", Code::Ok, 0, &[("x-strangler-side", side)]),
        )
        .await
        .unwrap();
        let want = if side == "new" { "orders" } else { "legacy" };
        assert_eq!(got.served_by, want);
        assert_eq!(got.id, "1");
    }
    // 40 users, 5 calls each on the one connection: each stays on its side, and both sides
    // get users (all on one: probability 2 × 2^-40).
    let mut sides = std::collections::HashSet::new();
    for u in 0..40 {
        let uid = format!("user-{u}");
        let mut first = None;
        for k in 0..5 {
            let got = get(
                &mut c,
                request(&k.to_string(), Code::Ok, 0, &[("x-user-id", &uid)]),
            )
            .await
            .unwrap();
            assert_eq!(
                *first.get_or_insert(got.served_by.clone()),
                got.served_by,
                "{uid}"
            );
        }
        sides.insert(first.unwrap());
    }
    assert_eq!(sides.len(), 2, "{sides:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_streaming_and_trailers_reach_the_client() {
    let (_gw, mut c) = setup(100).await;
    c.ready().await.unwrap();
    let resp = c
        .server_streaming(
            request("s", Code::Ok, 200, &[]),
            PathAndQuery::from_static(LIST),
            ProstCodec::<GetOrder, Order>::default(),
        )
        .await
        .unwrap();
    let mut stream = resp.into_inner();
    let mut n = 0;
    while let Some(order) = stream.message().await.unwrap() {
        assert_eq!(order.id, format!("s-{n}"));
        assert_eq!(order.served_by, "orders");
        n += 1;
    }
    assert_eq!(n, 200);
    // The stream ended with the server's trailers (grpc-status 0), which the client read.
    assert!(stream.trailers().await.unwrap().is_some());

    // A failure after some messages: the status comes in the trailers, after the data.
    c.ready().await.unwrap();
    let resp = c
        .server_streaming(
            request("f", Code::DataLoss, 3, &[]),
            PathAndQuery::from_static(LIST),
            ProstCodec::<GetOrder, Order>::default(),
        )
        .await
        .unwrap();
    let mut stream = resp.into_inner();
    for _ in 0..3 {
        assert!(stream.message().await.unwrap().is_some());
    }
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::DataLoss);
    assert_eq!(status.message(), "failing mid-stream");
}

/// Each message goes through and is answered before the next is sent: neither direction is
/// held back until the other ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_stream_goes_message_by_message() {
    let (_gw, mut c) = setup(100).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<GetOrder>(1);
    c.ready().await.unwrap();
    let call = c.streaming(
        Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
        PathAndQuery::from_static(CHAT),
        ProstCodec::<GetOrder, Order>::default(),
    );
    let first = GetOrder {
        id: "m0".into(),
        ..Default::default()
    };
    tx.send(first).await.unwrap();
    let mut answers = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    for i in 0..50 {
        let got = tokio::time::timeout(Duration::from_secs(10), answers.message())
            .await
            .expect("each answer comes before the next message is sent")
            .unwrap()
            .unwrap();
        assert_eq!(
            (got.id, got.served_by.as_str()),
            (format!("m{i}"), "orders")
        );
        let next = GetOrder {
            id: format!("m{}", i + 1),
            ..Default::default()
        };
        tx.send(next).await.unwrap();
    }
    drop(tx);
    // The last message sent is answered, then the call ends with the server's status.
    assert_eq!(answers.message().await.unwrap().unwrap().id, "m50");
    assert!(answers.message().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_codes_reach_the_client_the_metrics_and_the_comparison() {
    let (gw, mut c) = setup(50).await;
    // On new: 20 UNAVAILABLE (a server fault), 20 NOT_FOUND (the caller's), 20 OK.
    // On legacy: 60 OK.
    for (code, n) in [
        (Code::Unavailable, 20),
        (Code::NotFound, 20),
        (Code::Ok, 20),
    ] {
        for i in 0..n {
            let got = get(
                &mut c,
                request(&i.to_string(), code, 0, &[("x-strangler-side", "new")]),
            )
            .await;
            match got {
                Ok(o) => assert_eq!((code, o.served_by.as_str()), (Code::Ok, "orders")),
                Err(s) => {
                    assert_eq!(s.code(), code);
                    assert_eq!(s.message(), "failing as asked");
                }
            }
        }
    }
    for i in 0..60 {
        get(
            &mut c,
            request(
                &i.to_string(),
                Code::Ok,
                0,
                &[("x-strangler-side", "legacy")],
            ),
        )
        .await
        .unwrap();
    }
    let m = gw.metrics().await;
    let series = |code: &str, side: &str| {
        metric(
            &m,
            &format!(
                r#"strangler_grpc_responses_total{{grpc_code="{code}",route="orders-grpc",side="{side}"}}"#
            ),
        )
    };
    assert_eq!(series("UNAVAILABLE", "new"), Some(20.0), "{m}");
    assert_eq!(series("NOT_FOUND", "new"), Some(20.0), "{m}");
    assert_eq!(series("OK", "new"), Some(20.0), "{m}");
    assert_eq!(series("OK", "legacy"), Some(60.0), "{m}");
    // Every answer is HTTP 200, as gRPC answers are.
    assert_eq!(
        metric(
            &m,
            r#"strangler_requests_total{code="200",method="POST",route="orders-grpc",side="new"}"#
        ),
        Some(60.0),
        "{m}"
    );
    // The comparison counts the 20 UNAVAILABLE as new's errors, not the NOT_FOUND.
    let v: serde_json::Value = client()
        .get(gw.admin_url("/admin/compare"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let route = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "orders-grpc")
        .unwrap();
    assert_eq!(route["new"]["requests"], 60, "{route}");
    assert_eq!(route["new"]["errors"], 20, "{route}");
    assert_eq!(route["legacy"]["errors"], 0, "{route}");
    assert_eq!(route["verdict"], "worse", "{route}");
}

/// `protocol: h2` to an `https://` service: HTTP/2 over TLS, trusting the service's `ca`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_service_over_tls_with_its_own_ca() {
    let ca = support::tls::Ca::new("services CA");
    let leaf = ca.leaf("orders");
    let legacy = grpc_server("legacy").await;
    let new = grpc_server_on("orders", Some(support::tls::server(&leaf, &[b"h2"])), None).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nlegacy: {{url: 'http://{legacy}', protocol: h2c}}\nservices:\n  orders: {{url: 'https://localhost:{port}', protocol: h2, ca: '{ca}'}}\nroutes:\n  - name: orders-grpc\n    match: {{prefix: /orders.v1.Orders/}}\n    service: orders\n    percent: 100\n",
        port = new.port(),
        ca = dir.path().join("ca.pem").display()
    );
    let gw = Gateway::start(&yaml).await;
    let mut c = client_of(gw.running.public_addr).await;
    let got = get(&mut c, request("7", Code::Ok, 0, &[])).await.unwrap();
    assert_eq!((got.id.as_str(), got.served_by.as_str()), ("7", "orders"));
    let err = get(&mut c, request("8", Code::Internal, 0, &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal);

    // Without the CA, the service's certificate is not trusted: the gateway says so, as a
    // gRPC error (UNAVAILABLE), and the failure is the new side's.
    let untrusted = yaml.replace(
        &format!(", ca: '{}'", dir.path().join("ca.pem").display()),
        "",
    );
    assert_ne!(untrusted, yaml);
    let gw = Gateway::start(&untrusted).await;
    let mut c = client_of(gw.running.public_addr).await;
    let err = get(&mut c, request("9", Code::Ok, 0, &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().starts_with(
            "strangler: upstream_unavailable (route orders-grpc, side new, request id "
        ),
        "{err:?}"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"strangler_upstream_errors_total{kind="connect",route="orders-grpc",side="new"}"#
        ),
        Some(1.0),
        "{m}"
    );
}

/// A service that allows 2 concurrent streams per connection, with 6 long-lived calls
/// open through the gateway: every call gets a stream (the gateway opens more connections
/// rather than queue calls behind the limit), and a unary call still goes through at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_a_services_stream_limit_get_another_connection() {
    let legacy = grpc_server("legacy").await;
    let new = grpc_server_on("orders", None, Some(2)).await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nlegacy: {{url: 'http://{legacy}', protocol: h2c}}\nservices:\n  orders: {{url: 'http://{new}', protocol: h2c, timeout: 20s}}\nroutes:\n  - name: orders-grpc\n    match: {{prefix: /orders.v1.Orders/}}\n    service: orders\n    percent: 100\n"
    );
    let gw = Gateway::start(&yaml).await;
    let mut c = client_of(gw.running.public_addr).await;
    let mut open = Vec::new();
    for i in 0..6 {
        let (tx, rx) = tokio::sync::mpsc::channel::<GetOrder>(1);
        c.ready().await.unwrap();
        let call = c.streaming(
            Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            PathAndQuery::from_static(CHAT),
            ProstCodec::<GetOrder, Order>::default(),
        );
        let first = GetOrder {
            id: format!("chat-{i}"),
            ..Default::default()
        };
        tx.send(first).await.unwrap();
        let mut answers = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .expect("the call got a stream")
            .unwrap()
            .into_inner();
        let got = tokio::time::timeout(Duration::from_secs(5), answers.message())
            .await
            .expect("an answer on every open call")
            .unwrap()
            .unwrap();
        assert_eq!(got.id, format!("chat-{i}"));
        open.push((tx, answers));
    }
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        get(&mut c, request("u", Code::Ok, 0, &[])),
    )
    .await
    .expect("a unary call is not queued behind the open streams")
    .unwrap();
    assert_eq!(got.served_by, "orders");
}

/// The gateway's own gRPC error is a "Trailers-Only" answer: its head ends the stream (no
/// DATA frame), as gRPC's protocol requires; grpc-go and grpc-java reject anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_grpc_error_is_trailers_only() {
    use http_body::Body as _;
    let legacy = grpc_server("legacy").await;
    let dead = dead_addr().await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nlegacy: {{url: 'http://{legacy}', protocol: h2c}}\nservices:\n  orders: {{url: 'http://{dead}', protocol: h2c}}\nroutes:\n  - name: orders-grpc\n    match: {{prefix: /orders.v1.Orders/}}\n    service: orders\n    percent: 100\n"
    );
    let gw = Gateway::start(&yaml).await;
    let mut h2 = support::tls::h2(
        tokio::net::TcpStream::connect(gw.running.public_addr)
            .await
            .unwrap(),
    )
    .await;
    let req = http::Request::post(format!("http://{}{GET}", gw.running.public_addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(&[
            0, 0, 0, 0, 0,
        ])))
        .unwrap();
    h2.ready().await.unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    assert_eq!(resp.headers()["grpc-status"], "14");
    assert!(
        resp.body().is_end_stream(),
        "the head ended the stream: no DATA frame follows"
    );
    // Counted as the new side's UNAVAILABLE, and as its connect failure.
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"strangler_grpc_responses_total{grpc_code="UNAVAILABLE",route="orders-grpc",side="new"}"#
        ),
        Some(1.0),
        "{m}"
    );
}

#[test]
fn check_refuses_a_split_between_protocols() {
    let text = "listen: 127.0.0.1:0\nlegacy: {url: 'http://127.0.0.1:9'}\nservices:\n  orders: {url: 'http://127.0.0.1:10', protocol: h2c}\nroutes:\n  - name: orders-grpc\n    match: {prefix: /orders.v1.Orders/}\n    service: orders\n    percent: 50\n";
    let (_dir, file) = routes_file(text);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strangler"))
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success());
    assert!(
        err.contains("routes.yaml:6:5: routes[0]: route \"orders-grpc\" is split between legacy (http1) and orders (h2c)"),
        "{err}"
    );
    // One side only: no split.
    for percent in ["percent: 100", "percent: 0"] {
        let (_dir, file) = routes_file(&text.replace("percent: 50", percent));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_strangler"))
            .arg("check")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{percent}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
