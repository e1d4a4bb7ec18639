//! The public listener's HTTP/1.1 server as a client sees it on the wire: pipelined
//! requests answered in order, a request with a body (served by hyper) in the middle of a
//! kept-alive connection, a head sent in pieces, `HEAD`, chunked answers, `Connection:
//! close`.

use crate::support;

use std::time::Duration;

use support::upstream::{Reply, Upstream};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One answer read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads the answers in `buf`, in order; `head_of` says which were to `HEAD` requests
/// (no body).
fn answers(mut buf: &[u8], head_of: &[bool]) -> Vec<Answer> {
    let mut out = Vec::new();
    for &head_request in head_of {
        let end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("answer {} has no head", out.len()))
            + 4;
        let head = String::from_utf8(buf[..end].to_vec()).unwrap();
        buf = &buf[end..];
        let mut a = Answer {
            status: head.split_whitespace().nth(1).unwrap().parse().unwrap(),
            head,
            body: Vec::new(),
        };
        if !head_request {
            if a.header("transfer-encoding") == Some("chunked") {
                loop {
                    let line_end = buf.windows(2).position(|w| w == b"\r\n").unwrap();
                    let size =
                        usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap(), 16)
                            .unwrap();
                    buf = &buf[line_end + 2..];
                    if size == 0 {
                        assert_eq!(&buf[..2], b"\r\n", "no trailers");
                        buf = &buf[2..];
                        break;
                    }
                    a.body.extend_from_slice(&buf[..size]);
                    assert_eq!(&buf[size..size + 2], b"\r\n");
                    buf = &buf[size + 2..];
                }
            } else {
                let n: usize = a.header("content-length").unwrap().parse().unwrap();
                a.body = buf[..n].to_vec();
                buf = &buf[n..];
            }
        }
        out.push(a);
    }
    assert!(buf.is_empty(), "{} bytes after the last answer", buf.len());
    out
}

async fn gateway(up: &Upstream) -> Gateway {
    gateway_to(&up.url()).await
}

/// A gateway whose legacy is at `url`.
async fn gateway_to(url: &str) -> Gateway {
    Gateway::start(&format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nlegacy: {{url: {url}}}\nroutes: []\n"
    ))
    .await
}

/// A gateway whose legacy is down (nothing listens at its address).
async fn gateway_to_a_dead_upstream() -> Gateway {
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    gateway_to(&url).await
}

/// An upstream that answers each request with its method, target and body length.
async fn telling() -> Upstream {
    Upstream::scripted(|r| Reply::plain(format!("{} {} {}", r.method, r.target, r.body_len))).await
}

/// The bodies of the answers, as text.
fn bodies(got: &[Answer]) -> Vec<String> {
    got.iter()
        .map(|a| String::from_utf8(a.body.clone()).unwrap())
        .collect()
}

/// The bodies the upstream received, in order.
fn bodies_seen(up: &Upstream) -> Vec<bytes::Bytes> {
    up.seen()
        .iter()
        .map(|r| r.body.clone().unwrap_or_default())
        .collect()
}

/// Six requests in one write: bodiless ones (one saying `Content-Length: 0`), a `HEAD`,
/// and a `POST` with a body in the middle (which hyper serves from there on). Each is
/// answered, in order, the body reaches the upstream whole, and the last request's
/// `Connection: close` closes the connection.
#[tokio::test(flavor = "current_thread")]
async fn pipelined_requests_are_answered_in_order_with_a_body_in_the_middle() {
    let up = Upstream::scripted(|r| {
        Reply::plain(format!("{} {} {}", r.method, r.target, r.body_len)).header("x-seen", "1")
    })
    .await;
    let gw = gateway(&up).await;
    let mut s = TcpStream::connect(gw.running.public_addr).await.unwrap();
    s.write_all(
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n\
          DELETE /z HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n\
          HEAD /b HTTP/1.1\r\nHost: h\r\n\r\n\
          POST /c HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
          GET /d HTTP/1.1\r\nHost: h\r\n\r\n\
          GET /e HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("the gateway closes the connection after `Connection: close`")
        .unwrap();
    let got = answers(&buf, &[false, false, true, false, false, false]);
    let bodies: Vec<String> = got
        .iter()
        .map(|a| String::from_utf8(a.body.clone()).unwrap())
        .collect();
    assert_eq!(
        bodies,
        [
            "GET /a 0",
            "DELETE /z 0",
            "",
            "POST /c 5",
            "GET /d 0",
            "GET /e 0"
        ]
    );
    assert!(got.iter().all(|a| a.status == 200), "{got:?}");
    assert_eq!(
        got[2].header("content-length"),
        Some("9"),
        "{}",
        got[2].head
    );
    assert_eq!(
        got[5].header("connection"),
        Some("close"),
        "{}",
        got[5].head
    );
    assert!(got[..5].iter().all(|a| a.header("connection").is_none()));
    let seen: Vec<_> = up.seen().iter().map(|r| r.target.clone()).collect();
    assert_eq!(seen, ["/a", "/z", "/b", "/c", "/d", "/e"]);
}

/// A head that arrives a few bytes at a time is served, and the connection is kept for
/// the next request.
#[tokio::test(flavor = "current_thread")]
async fn a_head_sent_in_pieces_is_served_and_the_connection_kept() {
    let up = Upstream::start("legacy").await;
    let gw = gateway(&up).await;
    let mut s = TcpStream::connect(gw.running.public_addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let head = b"GET /pieces?x=1 HTTP/1.1\r\nHost: h\r\nX-Long: abcdefghijklmnop\r\n\r\n";
    for piece in head.chunks(3) {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.ends_with(b"legacy") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let a = &answers(&got, &[false])[0];
    assert_eq!((a.status, a.body.as_slice()), (200, &b"legacy"[..]));
    assert_eq!(up.last().target, "/pieces?x=1");
    assert_eq!(up.last().header("x-long"), Some("abcdefghijklmnop"));
    // The same connection serves the next request.
    s.write_all(b"GET /next HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answers(&rest, &[false])[0].status, 200);
    assert_eq!(up.last().target, "/next");
}

/// An upstream answer of unknown length goes to the client chunked, whole; a 204 and a
/// 304 go without a body or a length.
#[tokio::test(flavor = "current_thread")]
async fn answers_of_unknown_length_go_chunked_and_bodiless_ones_without_a_length() {
    let up = Upstream::scripted(|r| match r.path() {
        "/stream" => Reply {
            streamed: Some(200_000),
            ..Reply::plain("")
        },
        "/none" => Reply::plain("").status(204),
        _ => Reply::plain("").status(304),
    })
    .await;
    let gw = gateway(&up).await;
    let mut s = TcpStream::connect(gw.running.public_addr).await.unwrap();
    s.write_all(
        b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n\
          GET /none HTTP/1.1\r\nHost: h\r\n\r\n\
          GET /same HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let got = answers(&buf, &[false, true, true]);
    assert_eq!(got[0].header("transfer-encoding"), Some("chunked"));
    assert_eq!(got[0].body.len(), 200_000);
    let expected: Vec<u8> = (0..200_000u64)
        .map(|i| (i / 65536 * 65536 % 251) as u8)
        .collect();
    assert!(got[0].body == expected, "the streamed body arrives as sent");
    assert_eq!(got[1].status, 204);
    assert_eq!(got[2].status, 304);
    for a in &got[1..] {
        assert!(a.header("content-length").is_none(), "{}", a.head);
        assert!(a.header("transfer-encoding").is_none(), "{}", a.head);
    }
}

/// A gateway in front of `up` whose `client.head_timeout` is `head_timeout`.
async fn gateway_timing_heads(up: &Upstream, head_timeout: &str) -> Gateway {
    Gateway::start(&format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nlegacy: {{url: {}}}\nclient: {{head_timeout: {head_timeout}}}\nroutes: []\n",
        up.url()
    ))
    .await
}

/// Reads until the gateway closes the connection, for at most `limit`: what it sent, or
/// `None` if it did not close in that time.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    tokio::time::timeout(limit, s.read_to_end(&mut buf))
        .await
        .ok()
        .map(|_| buf)
}

/// Reads one answer with a `Content-Length` body.
async fn read_answer(s: &mut TcpStream) -> Answer {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end + 4]).to_string();
            let n: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if got.len() >= end + 4 + n {
                return answers(&got, &[false]).pop().unwrap();
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed after {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

/// The idle time between requests counts from each request, also when the gateway answers
/// at once (a refusal, here 501 to an unknown method): ten requests 300 ms apart keep a
/// connection whose `head_timeout` is 1 s.
#[tokio::test(flavor = "current_thread")]
async fn answers_given_at_once_renew_the_idle_time() {
    let up = Upstream::start("legacy").await;
    let gw = gateway_timing_heads(&up, "1s").await;
    let mut s = TcpStream::connect(gw.running.public_addr).await.unwrap();
    for i in 0..10 {
        s.write_all(format!("FOO /{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(read_answer(&mut s).await.status, 501, "request {i}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A kept-alive HTTP/1.1 connection stays HTTP/1.1: HTTP/2's preface after a request is a
/// bad request line (400, closed), not a switch to HTTP/2 that no timer bounds.
#[tokio::test(flavor = "current_thread")]
async fn a_kept_alive_connection_cannot_be_switched_to_http2() {
    let up = Upstream::start("legacy").await;
    let gw = gateway_timing_heads(&up, "1s").await;
    let mut s = TcpStream::connect(gw.running.public_addr).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answer(&mut s).await.status, 200);
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let rest = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("the gateway closes the connection");
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
}

/// A head left unfinished after a request is cut after one `head_timeout` (2 s here), not
/// two, and counted once.
#[tokio::test(flavor = "current_thread")]
async fn a_head_left_unfinished_after_a_request_is_cut_after_one_head_timeout() {
    let up = Upstream::start("legacy").await;
    let gw = gateway_timing_heads(&up, "2s").await;
    let mut s = TcpStream::connect(gw.running.public_addr).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answer(&mut s).await.status, 200);
    let started = std::time::Instant::now();
    s.write_all(b"GET /b HTTP/1.1\r\nHost").await.unwrap();
    read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("the gateway closes the connection");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(3300),
        "closed after {took:?}, for a head_timeout of 2 s"
    );
    let errors = metric(
        &gw.metrics().await,
        r#"strangler_client_errors_total{kind="head_timeout",route="default",side="legacy"}"#,
    );
    assert_eq!(errors, Some(1.0));
}

/// Serves one connection with the gateway's own HTTP/1.1 server, as the public listener
/// does: the client's end, and whether the server handed the connection to hyper.
async fn own_server(gw: &Gateway) -> (TcpStream, tokio::task::JoinHandle<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, addr) = listener.accept().await.unwrap();
    let gateway = gw.running.gateway.clone();
    let served = tokio::spawn(async move {
        let (_drain, draining) = tokio::sync::watch::channel(false);
        let peer =
            std::sync::Arc::new(strangler::http1::Peer::new(addr, Default::default(), false));
        strangler::http1::serve(server, &gateway, &peer, draining)
            .await
            .is_some()
    });
    (client, served)
}

/// Requests with a `Content-Length` body are the own server's too (a connection that
/// carried one keeps holding nothing between requests): a body that comes after its head,
/// one that came with it, a pipelined request after a body; each body reaches the
/// upstream whole and the connection is never handed to hyper.
#[tokio::test(flavor = "current_thread")]
async fn requests_with_a_length_are_served_by_the_own_server() {
    let up = telling().await;
    let gw = gateway(&up).await;
    let (mut s, handed) = own_server(&gw).await;
    s.write_all(b"POST /c HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhel")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"lo ").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(
        b"world\
          PUT /d HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc\
          GET /e HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("the connection closes after `Connection: close`")
        .unwrap();
    assert!(
        !tokio::time::timeout(Duration::from_secs(10), handed)
            .await
            .unwrap()
            .unwrap(),
        "the connection was handed to hyper"
    );
    let got = answers(&buf, &[false, false, false]);
    assert_eq!(bodies(&got), ["POST /c 11", "PUT /d 3", "GET /e 0"]);
    assert_eq!(bodies_seen(&up), [&b"hello world"[..], b"abc", b""]);
}

/// An answer that comes before the client's body has been read (a dead upstream here) says
/// `Connection: close` and closes the connection: what is left of the body is never read
/// as a request.
#[tokio::test(flavor = "current_thread")]
async fn an_answer_before_the_whole_body_closes_the_connection() {
    let gw = gateway_to_a_dead_upstream().await;
    let (mut s, handed) = own_server(&gw).await;
    s.write_all(b"POST /c HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n0123456789")
        .await
        .unwrap();
    let rest = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("the gateway closes the connection");
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{text}"
    );
    assert!(!handed.await.unwrap(), "the connection was handed to hyper");
}

/// An upstream that answers as it reads (an echo, chunk by chunk): the client's body keeps
/// flowing while the answer goes out, and the connection, whose body was read to its end,
/// is kept for the next request.
#[tokio::test(flavor = "current_thread")]
async fn a_body_keeps_flowing_while_its_answer_goes_out() {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = echo.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    // One request per connection: its head, then its body echoed as it comes.
                    let head_end = loop {
                        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let n = c.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                    };
                    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    got.drain(..head_end);
                    c.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                        .await
                        .unwrap();
                    let mut left = length;
                    while left > 0 {
                        if got.is_empty() {
                            let n = c.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            got.extend_from_slice(&buf[..n]);
                        }
                        let n = got.len().min(left);
                        let part: Vec<u8> = got.drain(..n).collect();
                        left -= n;
                        c.write_all(format!("{n:x}\r\n").as_bytes()).await.unwrap();
                        c.write_all(&part).await.unwrap();
                        c.write_all(b"\r\n").await.unwrap();
                    }
                    c.write_all(b"0\r\n\r\n").await.unwrap();
                }
            });
        }
    });
    let gw = gateway_to(&format!("http://127.0.0.1:{port}")).await;
    let (mut s, handed) = own_server(&gw).await;
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nfirst")
        .await
        .unwrap();
    // The first half comes back before the second is sent.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !String::from_utf8_lossy(&got).contains("first") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the first half of the body is echoed while the second is still to come");
    s.write_all(b"half.GET /next HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the connection closes after `Connection: close`")
        .unwrap();
    let got = answers(&got, &[false, false]);
    assert_eq!(got[0].body, b"firsthalf.");
    assert_eq!(got[1].status, 200, "{:?}", got[1]);
    assert!(!handed.await.unwrap(), "the connection was handed to hyper");
}

/// A chunked body is the own server's too: sizes, extensions and trailers read as hyper
/// reads them, the body whole upstream, the request after it served on the same
/// connection; a malformed chunk fails the request (400) and closes the connection.
#[tokio::test(flavor = "current_thread")]
async fn chunked_bodies_are_served_by_the_own_server() {
    let up = telling().await;
    let gw = gateway(&up).await;
    let (mut s, handed) = own_server(&gw).await;
    s.write_all(b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"lo\r\n6;name=value\r\n world\r\n0\r\nx-sum: 1\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(
        b"PUT /d HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET /e HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("the connection closes after `Connection: close`")
        .unwrap();
    assert!(!handed.await.unwrap(), "the connection was handed to hyper");
    let got = answers(&buf, &[false, false, false]);
    assert_eq!(bodies(&got), ["POST /c 11", "PUT /d 3", "GET /e 0"]);
    assert_eq!(bodies_seen(&up), [&b"hello world"[..], b"abc", b""]);

    // A chunk whose data runs past its size: the request fails, and the connection is
    // closed (what follows cannot be read as a request).
    let (mut s, handed) = own_server(&gw).await;
    s.write_all(
        b"POST /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n\
          GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .await
    .unwrap();
    let rest = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("the gateway closes the connection");
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text}");
    assert!(!handed.await.unwrap(), "the connection was handed to hyper");
    assert!(
        up.seen().iter().all(|r| r.path() != "/smuggled"),
        "{:?}",
        up.seen()
    );
}

/// `Expect: 100-continue`: the client is told to send its body once the request wants it,
/// and the connection goes on; a request answered before it wants its body (a service
/// that is down) gets no `100 Continue`, and its connection is closed.
#[tokio::test(flavor = "current_thread")]
async fn a_client_that_expects_100_continue_is_told_when_its_body_is_wanted() {
    let up = telling().await;
    let gw = gateway(&up).await;
    let (mut s, handed) = own_server(&gw).await;
    s.write_all(b"PUT /c HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await
        .unwrap();
    let mut got = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got))
        .await
        .expect("a 100 Continue")
        .unwrap();
    assert_eq!(&got, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(
        b"hello\
          GET /e HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("the connection closes after `Connection: close`")
        .unwrap();
    assert!(!handed.await.unwrap(), "the connection was handed to hyper");
    let got = answers(&buf, &[false, false]);
    assert_eq!(got[0].body, b"PUT /c 5");
    assert_eq!(got[1].body, b"GET /e 0");
    assert_eq!(up.last().body.as_deref(), Some(&b""[..]));

    let gw = gateway_to_a_dead_upstream().await;
    let (mut s, handed) = own_server(&gw).await;
    s.write_all(b"PUT /c HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await
        .unwrap();
    let rest = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("the gateway closes the connection");
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
    assert!(!handed.await.unwrap(), "the connection was handed to hyper");
}
