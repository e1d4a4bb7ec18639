//! Corpora of hostile requests, each sent as raw bytes: the path corpus (what each target is
//! routed as, and exactly what the upstream receives, or that it is refused) and the
//! framing corpus (how each message is framed, and what the upstream receives of it). A
//! disagreement between the gateway and the monolith about what a request means is a
//! security hole; these pin down what the gateway decides.

use crate::support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a request should come to.
#[derive(Debug)]
enum Expect {
    /// Forwarded to this upstream with exactly this request target.
    Routed(&'static str, &'static str),
    /// Refused with this status; nothing forwarded.
    Refused(u16),
}
use Expect::*;

const PATHS: &[(&str, Expect)] = &[
    // Plain and normalized forms.
    ("/api/x", Routed("api", "/api/x")),
    ("/api", Routed("api", "/api")),
    ("/apiX", Routed("legacy", "/apiX")),
    ("/API/x", Routed("legacy", "/API/x")),
    ("/api/./x", Routed("api", "/api/x")),
    ("/./api", Routed("api", "/api")),
    ("/api/../api/x", Routed("api", "/api/x")),
    ("/api//x", Routed("api", "/api/x")),
    ("//api/x", Routed("api", "/api/x")),
    ("/api/x/.", Routed("api", "/api/x/")),
    ("/api/x/..", Routed("api", "/api/")),
    ("/%61pi/x", Routed("api", "/api/x")),
    ("/api/%2e/x", Routed("api", "/api/x")),
    ("/api/%2E%2E/admin", Routed("legacy", "/admin")),
    ("/api/.%2e/admin", Routed("legacy", "/admin")),
    ("/api/%41%42", Routed("api", "/api/AB")),
    ("/api/%2D%2E%5F%7E", Routed("api", "/api/-._~")),
    ("/%7Efiles", Routed("legacy", "/~files")),
    ("/api/caf%c3%a9", Routed("api", "/api/caf%C3%A9")),
    ("/api/a%20b", Routed("api", "/api/a%20b")),
    ("/api/x;jsessionid=1", Routed("api", "/api/x;jsessionid=1")),
    // Path parameters: routed as a servlet container reads them (each segment without its
    // `;parameters`), forwarded as sent.
    ("/api;x/users", Routed("api", "/api;x/users")),
    ("/api;/users", Routed("api", "/api;/users")),
    ("/;x/api/users", Routed("api", "/;x/api/users")),
    ("/files;v=1/a", Routed("files", "/files;v=1/a")),
    ("/apix;y/users", Routed("legacy", "/apix;y/users")),
    ("/api%3Bx/users", Routed("legacy", "/api%3Bx/users")),
    ("/api/x?q=%2F../&a", Routed("api", "/api/x?q=%2F../&a")),
    ("/files/a/b", Routed("files", "/files/a/b")),
    ("/files/", Routed("files", "/files/")),
    ("/files", Routed("legacy", "/files")),
    ("/files/a/../../api/x", Routed("api", "/api/x")),
    // Absolute form: routed on its path, the authority becomes Host.
    ("http://evil.example/api/x", Routed("api", "/api/x")),
    ("http://a.example/api/../x", Routed("legacy", "/x")),
    // Climbs above the root.
    ("/../etc/passwd", Refused(400)),
    ("/api/%2e%2e/%2e%2e/etc", Refused(400)),
    ("/api/../../etc", Refused(400)),
    // Encoded separators and NUL.
    ("/api/..%2f..%2fetc", Refused(400)),
    ("/api/%2F", Refused(400)),
    ("/api%2fx", Refused(400)),
    ("/api/%5c..%5cetc", Refused(400)),
    ("/api/x%3F", Refused(400)),
    ("/api/x%23", Refused(400)),
    ("/api/%00", Refused(400)),
    // Control characters and malformed escapes.
    ("/api/%0a", Refused(400)),
    ("/api/%0d%0aSet-Cookie:x", Refused(400)),
    ("/api/%zz", Refused(400)),
    ("/api/%", Refused(400)),
    ("/api/%4", Refused(400)),
    // Overlong UTF-8 (`.` and `/` spelled in two or three bytes) and invalid UTF-8.
    ("/api/%c0%ae%c0%ae/admin", Refused(400)),
    ("/api/%c0%af", Refused(400)),
    ("/api/%e0%80%ae", Refused(400)),
    ("/api/%ff", Refused(400)),
    // Dot segments with parameters: `..` to Tomcat, Spring and Jetty.
    ("/api/..;/admin", Refused(400)),
    ("/api/.;/admin", Refused(400)),
    ("/api/%2e%2e;x/admin", Refused(400)),
    // Raw bytes that must be escaped.
    ("/api\\..\\admin", Refused(400)),
    ("/api/caf\u{e9}", Refused(400)),
    // Forms a gateway never forwards.
    ("*", Refused(400)),
    ("a.example:443", Refused(400)),
];

struct Site {
    legacy: Upstream,
    api: Upstream,
    files: Upstream,
    gw: Gateway,
}

async fn site() -> Site {
    let legacy = Upstream::start("legacy").await;
    let api = Upstream::start("api").await;
    let files = Upstream::start("files").await;
    let gw = Gateway::start(&format!(
        "{}routes:\n  - name: api\n    match: {{prefix: /api}}\n    service: api\n    percent: 100\n  - name: files\n    match: {{path: \"/files/{{*rest}}\"}}\n    service: files\n    percent: 100\n",
        config_head(&legacy.url(), &[("api", &api.url()), ("files", &files.url())])
    ))
    .await;
    Site {
        legacy,
        api,
        files,
        gw,
    }
}

impl Site {
    fn upstream(&self, name: &str) -> &Upstream {
        match name {
            "api" => &self.api,
            "files" => &self.files,
            _ => &self.legacy,
        }
    }

    fn count(&self) -> usize {
        self.legacy.count() + self.api.count() + self.files.count()
    }
}

/// Writes `bytes` on a new connection and reads until it closes: (status, head, body).
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(buf.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, buf[end..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_path_corpus() {
    assert!(PATHS.len() >= 40, "{} cases", PATHS.len());
    let site = site().await;
    let mut problems = Vec::new();
    for (target, expect) in PATHS {
        let before = site.count();
        let req =
            format!("GET {target} HTTP/1.1\r\nHost: good.example\r\nConnection: close\r\n\r\n");
        let (status, head, _) = exchange(site.gw.running.public_addr, req.as_bytes()).await;
        let forwarded = site.count() - before;
        match expect {
            Routed(up, path) => {
                let served = head
                    .lines()
                    .find_map(|l| l.strip_prefix("x-upstream: "))
                    .unwrap_or("-");
                let got = (forwarded == 1).then(|| site.upstream(up).last().target);
                if status != 200 || served != *up || got.as_deref() != Some(*path) {
                    problems.push(format!(
                        "{target:?}: want {up} {path:?}, got {status} from {served}, upstream target {got:?}"
                    ));
                }
            }
            Refused(want) => {
                if status != *want || forwarded != 0 {
                    problems.push(format!(
                        "{target:?}: want {want} and nothing forwarded, got {status}, {forwarded} forwarded"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// What a framing case should come to.
#[derive(Debug)]
enum Framed {
    /// Forwarded, the upstream receiving exactly this body.
    Body(&'static [u8]),
    /// Refused with this status, nothing forwarded.
    Refused(u16),
}

const FRAMING: &[(&str, &[u8], Framed)] = &[
    (
        "Content-Length",
        b"POST /f HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        Framed::Body(b"hello"),
    ),
    (
        "chunked",
        b"POST /f HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Framed::Body(b"hello"),
    ),
    (
        "chunk extensions and request trailers",
        b"POST /f HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        Framed::Body(b"hello"),
    ),
    (
        "Content-Length then Transfer-Encoding: chunked framing wins",
        b"POST /f HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Framed::Body(b"hello"),
    ),
    (
        "Transfer-Encoding then Content-Length: chunked framing wins",
        b"POST /f HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Framed::Body(b"hello"),
    ),
    (
        "two equal lengths",
        b"POST /f HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        Framed::Body(b"hello"),
    ),
    (
        "a list of lengths on one line",
        b"POST /f HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\nConnection: close\r\n\r\nhello",
        Framed::Refused(400),
    ),
    (
        "two different lengths",
        b"POST /f HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello!",
        Framed::Refused(400),
    ),
    (
        "a signed length",
        b"POST /f HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\nConnection: close\r\n\r\nhello",
        Framed::Refused(400),
    ),
    (
        "an overflowing length",
        b"POST /f HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\nConnection: close\r\n\r\n",
        Framed::Refused(400),
    ),
    (
        "chunked twice",
        b"POST /f HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Framed::Refused(400),
    ),
    (
        "chunked on two lines",
        b"POST /f HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Framed::Refused(400),
    ),
    (
        "gzip, chunked",
        b"POST /f HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Framed::Refused(501),
    ),
    (
        "gzip alone",
        b"POST /f HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nhello",
        Framed::Refused(400),
    ),
    (
        "chunked, gzip",
        b"POST /f HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\nhello",
        Framed::Refused(400),
    ),
    (
        "xchunked",
        b"POST /f HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Framed::Refused(400),
    ),
    (
        "a space before the colon",
        b"POST /f HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Framed::Refused(400),
    ),
    (
        "Transfer-Encoding in HTTP/1.0",
        b"POST /f HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Framed::Refused(400),
    ),
    (
        "obs-fold",
        b"POST /f HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\nContent-Length: 5\r\n\r\nhello",
        Framed::Refused(400),
    ),
    (
        "a bare CR in a header",
        b"POST /f HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\nContent-Length: 5\r\n\r\nhello",
        Framed::Refused(400),
    ),
    (
        "a NUL in a header",
        b"POST /f HTTP/1.1\r\nHost: h\r\nX-A: a\0b\r\nContent-Length: 5\r\n\r\nhello",
        Framed::Refused(400),
    ),
    (
        "two spaces in the request line",
        b"POST  /f HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
        Framed::Refused(400),
    ),
    (
        "HTTP/1.2",
        b"POST /f HTTP/1.2\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
        Framed::Refused(400),
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_framing_corpus() {
    let site = site().await;
    let mut problems = Vec::new();
    for (what, bytes, expect) in FRAMING {
        let before = site.count();
        let (status, _, _) = exchange(site.gw.running.public_addr, bytes).await;
        let forwarded = site.count() - before;
        match expect {
            Framed::Body(body) => {
                let got = (forwarded == 1).then(|| site.legacy.last());
                let ok = status == 200
                    && got.as_ref().is_some_and(|r| {
                        r.body.as_deref() == Some(*body)
                            // One framing goes on: never both, never a list of lengths.
                            && !(r.headers.contains_key("content-length")
                                && r.headers.contains_key("transfer-encoding"))
                            && r.headers
                                .get("content-length")
                                .is_none_or(|v| !v.as_bytes().contains(&b','))
                    });
                if !ok {
                    problems.push(format!(
                        "{what}: want 200 and body {:?}, got {status}, {:?}",
                        String::from_utf8_lossy(body),
                        got.map(|r| (r.body, r.headers))
                    ));
                }
            }
            Framed::Refused(want) => {
                if status != *want || forwarded != 0 {
                    problems.push(format!(
                        "{what}: want {want} and nothing forwarded, got {status}, {forwarded} forwarded"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
