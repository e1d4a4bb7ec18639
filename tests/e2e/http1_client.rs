//! The gateway's own HTTP/1.1 client as an upstream sees it on the wire: answers of every
//! framing (a length, chunked with extensions and trailers, none for 204 and `HEAD`, 1xx
//! before the answer, until the connection closes) relayed whole; an upstream connection
//! kept for the next request only when its answer was read to its end and nothing came
//! after it; malformed answers refused with a 502; bodies that came with their head
//! written with it, framed by their length.

use crate::support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The head (lower case) and body of each request an upstream read, in order.
type Requests = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An upstream that answers each request with the canned answer its path names, and
/// records which of its connections carried each request.
struct Canned {
    addr: std::net::SocketAddr,
    /// (connection number, method and path) of each request, in order.
    log: Arc<Mutex<Vec<(usize, String)>>>,
    requests: Requests,
}

/// The answer to a path; `true`: the upstream closes the connection after it.
fn answer_for(path: &str) -> (&'static [u8], bool) {
    match path {
        "/length" => (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", false),
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc\r\n\r\n",
            false,
        ),
        "/empty" => (b"HTTP/1.1 204 No Content\r\ncontent-length: 3\r\n\r\n", false),
        "/head" => (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false),
        "/early" => (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            false,
        ),
        "/eof" => (b"HTTP/1.1 200 OK\r\n\r\nuntil the end", true),
        "/extra" => (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged",
            false,
        ),
        "/bad-length" => (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
            false,
        ),
        "/short" => (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", true),
        _ => (b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", false),
    }
}

impl Canned {
    async fn start() -> Canned {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let log: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
        let requests: Requests = Arc::default();
        let (seen, read) = (log.clone(), requests.clone());
        tokio::spawn(async move {
            for conn in 0.. {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let (seen, read) = (seen.clone(), read.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end);
                        // A body, by its length.
                        let length: usize = head
                            .to_ascii_lowercase()
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        while buf.len() < length {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body: Vec<u8> = buf.drain(..length).collect();
                        let mut line = head.split(' ');
                        let method = line.next().unwrap_or_default().to_string();
                        let path = line.next().unwrap_or_default().to_string();
                        seen.lock()
                            .unwrap()
                            .push((conn, format!("{method} {path}")));
                        read.lock().unwrap().push((head.to_ascii_lowercase(), body));
                        let (answer, close) = answer_for(&path);
                        if s.write_all(answer).await.is_err() || close {
                            let _ = s.shutdown().await;
                            return;
                        }
                    }
                });
            }
        });
        Canned {
            addr,
            log,
            requests,
        }
    }

    /// The connection that carried each request, in order.
    fn connections(&self) -> Vec<usize> {
        self.log.lock().unwrap().iter().map(|(c, _)| *c).collect()
    }
}

async fn gateway(upstream: &Canned) -> Gateway {
    Gateway::start(&format!(
        "{}routes: []\n",
        config_head(&format!("http://{}", upstream.addr), &[])
    ))
    .await
}

/// Requests of every framing, one after another, share one upstream connection: each
/// answer was read to its end and the connection kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_of_every_framing_are_relayed_whole_on_one_kept_connection() {
    let up = Canned::start().await;
    let gw = gateway(&up).await;
    let c = client();
    for _ in 0..2 {
        let r = c.get(gw.url("/length")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "hello");
        let r = c.get(gw.url("/chunked")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "hello world");
        let r = c.get(gw.url("/empty")).send().await.unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(r.bytes().await.unwrap().len(), 0);
        let r = c.get(gw.url("/early")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("link").is_none(), "a 1xx's headers leaked");
        assert_eq!(r.text().await.unwrap(), "ok");
        let r = c.head(gw.url("/head")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-length"], "5");
        assert_eq!(r.bytes().await.unwrap().len(), 0);
    }
    let conns = up.connections();
    assert_eq!(conns.len(), 10, "{:?}", up.log.lock().unwrap());
    assert!(
        conns.iter().all(|c| *c == conns[0]),
        "requests went out on connections {conns:?}"
    );
}

/// An upstream's trailers reach a client that asked for them, after the last chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_of_a_chunked_answer_reach_the_client() {
    let up = Canned::start().await;
    let gw = gateway(&up).await;
    let mut s = TcpStream::connect(gw.running.public_addr).await.unwrap();
    s.write_all(
        b"GET /chunked HTTP/1.1\r\nhost: example.com\r\nte: trailers\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the answer ends")
        .unwrap();
    let got = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(got.starts_with("http/1.1 200"), "{got}");
    let (_, body) = got.split_once("\r\n\r\n").unwrap();
    assert!(
        body.contains("hello") && body.contains(" world"),
        "{body:?}"
    );
    assert!(
        body.ends_with("0\r\nx-checksum: abc\r\n\r\n"),
        "the trailers are not after the last chunk: {body:?}"
    );
}

/// An answer whose body ends when the upstream closes is relayed whole; the next request
/// goes out on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_ends_with_its_connection_is_relayed_whole() {
    let up = Canned::start().await;
    let gw = gateway(&up).await;
    let c = client();
    let r = c.get(gw.url("/eof")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "until the end");
    let r = c.get(gw.url("/length")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "hello");
    let conns = up.connections();
    assert_ne!(conns[0], conns[1], "a closed connection was used again");
}

/// Bytes after an answer's end (an upstream that answers more than it was asked, or a
/// body longer than its length) are never read as the next request's answer: the
/// connection is not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_an_answer_keep_its_connection_out_of_the_pool() {
    let up = Canned::start().await;
    let gw = gateway(&up).await;
    let c = client();
    let r = c.get(gw.url("/extra")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "ok");
    for _ in 0..3 {
        let r = c.get(gw.url("/length")).send().await.unwrap();
        assert_eq!(
            r.text().await.unwrap(),
            "hello",
            "a forged answer was relayed"
        );
    }
    let conns = up.connections();
    assert_ne!(
        conns[0], conns[1],
        "the connection with bytes left was kept"
    );
    assert!(conns[1..].iter().all(|c| *c == conns[1]), "{conns:?}");
}

/// Malformed answers are a 502; their connection is not kept. A body cut short of its
/// length cuts the client's answer too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_short_answers_are_not_relayed_as_whole() {
    let up = Canned::start().await;
    let gw = gateway(&up).await;
    let c = client();
    let r = c.get(gw.url("/bad-length")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let r = c.get(gw.url("/length")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "hello");
    let r = c.get(gw.url("/short")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().await.is_err(),
        "a body cut short reached the client as whole"
    );
    let r = c.get(gw.url("/length")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "hello");
    let conns = up.connections();
    assert_eq!(conns.len(), 4, "{:?}", up.log.lock().unwrap());
    assert_ne!(
        conns[0], conns[1],
        "a malformed answer's connection was kept"
    );
    assert_eq!(conns[1], conns[2]);
    assert_ne!(conns[2], conns[3], "a connection cut short was kept");
}

/// An HTTP/1.1 service over TLS (`https://`, its own CA) that answers each request on a
/// connection with the number of that connection; `close_after_one`: it ends each
/// connection with TLS's `close_notify` after its first answer, without saying so in the
/// answer (as a service whose idle timeout fired would).
async fn tls_upstream(leaf: &support::tls::Leaf, close_after_one: bool) -> u16 {
    let config = support::tls::server(leaf, &[b"http/1.1"]);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        for conn in 0u32.. {
            let Ok((s, _)) = l.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(s).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.clear();
                    let body = format!("connection {conn}");
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    if close_after_one {
                        let _ = s.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Over TLS too, answers are read by the gateway's own client, and a connection is kept
/// for the next request; one the service closed with `close_notify` while it waited is not
/// used again (the request goes out on a new connection and succeeds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_service_is_served_on_kept_connections() {
    let ca = support::tls::Ca::new("services CA");
    let leaf = ca.leaf("orders");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    for close_after_one in [false, true] {
        let port = tls_upstream(&leaf, close_after_one).await;
        let gw = Gateway::start(&format!(
            "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nlegacy: {{url: 'https://localhost:{port}', ca: '{}'}}\nroutes: []\n",
            ca_file.display()
        ))
        .await;
        let c = client();
        let mut seen = Vec::new();
        for _ in 0..10 {
            let r = c.get(gw.url("/x")).send().await.unwrap();
            assert_eq!(r.status(), 200, "close_after_one {close_after_one}");
            seen.push(r.text().await.unwrap());
            if close_after_one {
                // Time for the service's close_notify and FIN to arrive.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let distinct: std::collections::HashSet<_> = seen.iter().collect();
        if close_after_one {
            assert_eq!(distinct.len(), 10, "{seen:?}");
        } else {
            assert_eq!(
                distinct.len(),
                1,
                "a kept TLS connection was not reused: {seen:?}"
            );
        }
    }
}

/// A request body that came whole with its head goes upstream with the head: framed by its
/// `Content-Length`, whole, and the upstream connection kept for the requests after it.
#[tokio::test(flavor = "current_thread")]
async fn bodies_that_came_with_their_head_go_whole_on_kept_connections() {
    let up = Canned::start().await;
    let gw = gateway(&up).await;
    let mut c = TcpStream::connect(gw.running.public_addr).await.unwrap();
    c.write_all(
        b"POST /length HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
          PUT /length HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyz\
          GET /length HTTP/1.1\r\nHost: h\r\n\r\n\
          PATCH /length HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got))
        .await
        .expect("the gateway closes after `Connection: close`")
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 4, "{text}");
    assert_eq!(up.connections(), [0, 0, 0, 0]);
    let requests = up.requests.lock().unwrap().clone();
    let seen: Vec<(&str, &[u8])> = requests
        .iter()
        .map(|(head, body)| (head.lines().next().unwrap(), &body[..]))
        .collect();
    assert_eq!(
        seen,
        [
            ("post /length http/1.1", &b"hello"[..]),
            ("put /length http/1.1", b"xyz"),
            ("get /length http/1.1", b""),
            ("patch /length http/1.1", b"{}"),
        ]
    );
    for (head, body) in &requests {
        let lengths: Vec<_> = head
            .lines()
            .filter(|l| l.starts_with("content-length:") || l.starts_with("transfer-encoding:"))
            .collect();
        let want = format!("content-length: {}", body.len());
        assert!(
            lengths.is_empty() && body.is_empty() || lengths == [want.as_str()],
            "{head}"
        );
    }
}
