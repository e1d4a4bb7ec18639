//! A lean floor of the peer benchmark, beside `examples/floor.rs` (hyper): a minimal
//! keep-alive HTTP/1.1 forwarder on `httparse` that forwards each request head as read (no
//! header rewriting, timeouts, metrics or log), with a fixed 4 KiB buffer per connection and
//! a per-thread upstream pool; `/` split at random between 127.0.0.1:18081 and :18082, on
//! :18092. It shows what a lean HTTP/1 codec costs on the same machine:
//! `cargo build --release --example lean_floor`, then `python3 benches/peer/peer_bench.py
//! --gateway lean=target/release/examples/lean_floor --gateway floor=target/release/examples/floor`.
//! Not the gateway: chunked request bodies get 501, upgrades are closed.
use std::{cell::RefCell, io, net::SocketAddr, rc::Rc, sync::OnceLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// Defaults; override with FLOOR_LISTEN=ip:port and FLOOR_UPSTREAMS=ip:port,ip:port (exactly two).
const LISTEN: &str = "127.0.0.1:18092";
const UPSTREAMS: &str = "127.0.0.1:18081,127.0.0.1:18082";
static UPS: OnceLock<[SocketAddr; 2]> = OnceLock::new();
const BUF: usize = 4096;
const MAX_HEADERS: usize = 64;
const MAX_IDLE: usize = 1024; // idle kept-alive connections per upstream

type Pool = Rc<RefCell<[Vec<TcpStream>; 2]>>;

fn bad(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> io::Result<()> {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let ups: Vec<SocketAddr> = env("FLOOR_UPSTREAMS", UPSTREAMS)
        .split(',')
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    let ups: [SocketAddr; 2] = ups
        .try_into()
        .map_err(|_| bad("FLOOR_UPSTREAMS: need two ip:port"))?;
    UPS.get_or_init(|| ups);
    let listen: SocketAddr = env("FLOOR_LISTEN", LISTEN)
        .parse()
        .map_err(|_| bad("FLOOR_LISTEN: need ip:port"))?;
    let listener = TcpListener::bind(listen).await?;
    let pool: Pool = Rc::new(RefCell::new([Vec::new(), Vec::new()]));
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            loop {
                let sock = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(_) => {
                        tokio::task::yield_now().await;
                        continue;
                    }
                };
                let _ = sock.set_nodelay(true);
                let pool = pool.clone();
                tokio::task::spawn_local(async move {
                    let _ = serve(sock, pool).await;
                });
            }
        })
        .await
}

/// What the forwarder needs to know about a request or response head.
struct Head {
    len: usize,
    status: u16,
    clen: Option<u64>,
    te: bool,
    chunked: bool,
    keep: bool,
    is_head: bool,
}

fn has_token(v: &[u8], tok: &str) -> bool {
    v.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(tok.as_bytes()))
}

fn scan(len: usize, version: Option<u8>, headers: &[httparse::Header]) -> Result<Head, ()> {
    let mut h = Head {
        len,
        status: 0,
        clen: None,
        te: false,
        chunked: false,
        keep: version == Some(1),
        is_head: false,
    };
    for hd in headers {
        if hd.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(hd.value)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or(())?;
            if h.clen.is_some_and(|c| c != v) {
                return Err(());
            } // conflicting lengths
            h.clen = Some(v);
        } else if hd.name.eq_ignore_ascii_case("transfer-encoding") {
            h.te = true;
            h.chunked |= has_token(hd.value, "chunked");
        } else if hd.name.eq_ignore_ascii_case("connection") {
            if has_token(hd.value, "close") {
                h.keep = false
            } else if has_token(hd.value, "keep-alive") {
                h.keep = true
            }
        }
    }
    Ok(h)
}

fn parse_req(buf: &[u8]) -> Result<Option<Head>, ()> {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut hs);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let mut h = scan(n, req.version, req.headers)?;
            h.is_head = req.method == Some("HEAD");
            Ok(Some(h))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(()),
    }
}

fn parse_resp(buf: &[u8]) -> Result<Option<Head>, ()> {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut hs);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let mut h = scan(n, resp.version, resp.headers)?;
            h.status = resp.code.unwrap_or(0);
            Ok(Some(h))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(()),
    }
}

async fn reply(cl: &mut TcpStream, status: &str) -> io::Result<()> {
    let msg = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    cl.write_all(msg.as_bytes()).await
}

async fn connect(i: usize) -> io::Result<TcpStream> {
    let s = TcpStream::connect(UPS.get().ok_or_else(|| bad("no upstreams"))?[i]).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

async fn serve(mut cl: TcpStream, pool: Pool) -> io::Result<()> {
    let (mut cbuf, mut ubuf) = (vec![0u8; BUF], vec![0u8; BUF]);
    let mut cend = 0;
    loop {
        // 1. Request head from the client (pipelined leftovers stay in cbuf).
        let req = loop {
            match parse_req(&cbuf[..cend]) {
                Err(()) => return reply(&mut cl, "400 Bad Request").await,
                Ok(Some(h)) => break h,
                Ok(None) if cend == BUF => {
                    return reply(&mut cl, "431 Request Header Fields Too Large").await;
                }
                Ok(None) => {}
            }
            let n = cl.read(&mut cbuf[cend..]).await?;
            if n == 0 {
                return Ok(());
            }
            cend += n;
        };
        if req.te {
            return reply(&mut cl, "501 Not Implemented").await;
        }
        let clen = req.clen.unwrap_or(0);
        let full = req.len as u64 + clen <= cend as u64; // whole request already buffered
        let consumed = if full { req.len + clen as usize } else { cend };
        let i = fastrand::usize(..2);
        let mut first = true;
        // 2. Exchange with an upstream; a stale pooled connection is retried once on a fresh one.
        let (up, up_reuse, cl_keep) = loop {
            let pooled = if first {
                pool.borrow_mut()[i].pop()
            } else {
                None
            };
            first = false;
            let retry_ok = pooled.is_some() && full;
            let mut up = match pooled {
                Some(s) => s,
                None => match connect(i).await {
                    Ok(s) => s,
                    Err(_) => return reply(&mut cl, "502 Bad Gateway").await,
                },
            };
            let sent = if full {
                up.write_all(&cbuf[..consumed]).await
            } else {
                send_body(&mut cl, &mut up, &mut cbuf, cend, req.len, clen).await
            };
            if let Err(e) = sent {
                if retry_ok {
                    continue;
                }
                let _ = reply(&mut cl, "502 Bad Gateway").await;
                return Err(e);
            }
            // 3. Response head + body, relayed to the client.
            let mut rx = Rx {
                up: &mut up,
                cl: &mut cl,
                buf: &mut ubuf,
                pos: 0,
                end: 0,
            };
            let res = rx.head().await;
            let resp = match res {
                Ok(h) => h,
                Err(_) if rx.end == 0 && retry_ok => continue,
                Err(e) => {
                    if rx.end == 0 {
                        let _ = reply(rx.cl, "502 Bad Gateway").await;
                    }
                    return Err(e);
                }
            };
            let no_body = req.is_head || resp.status == 204 || resp.status == 304;
            let delimited = no_body || resp.chunked || (!resp.te && resp.clen.is_some());
            if resp.status == 101 {
                return Err(bad("upgrade not supported"));
            }
            if no_body {
            } else if resp.chunked {
                rx.chunked().await?;
            } else if let (false, Some(n)) = (resp.te, resp.clen) {
                rx.skip(n).await?;
            } else {
                loop {
                    rx.pos = rx.end;
                    if !rx.more().await? {
                        break;
                    }
                } // body until EOF
            }
            if rx.pos > 0 {
                rx.cl.write_all(&rx.buf[..rx.pos]).await?;
            } // one write if it all fit
            let reuse = resp.keep && delimited && rx.pos == rx.end;
            break (up, reuse, req.keep && resp.keep && delimited);
        };
        if up_reuse {
            let mut p = pool.borrow_mut();
            if p[i].len() < MAX_IDLE {
                p[i].push(up);
            }
        }
        if !cl_keep {
            return Ok(());
        }
        cbuf.copy_within(consumed..cend, 0);
        cend -= consumed;
    }
}

/// Sends a request whose body did not fit in the buffer: buffered bytes, then the rest streamed.
async fn send_body(
    cl: &mut TcpStream,
    up: &mut TcpStream,
    buf: &mut [u8],
    end: usize,
    hlen: usize,
    clen: u64,
) -> io::Result<()> {
    up.write_all(&buf[..end]).await?;
    let mut rem = clen - (end - hlen) as u64;
    while rem > 0 {
        let k = rem.min(buf.len() as u64) as usize; // never read past the body (pipelining)
        let n = cl.read(&mut buf[..k]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        up.write_all(&buf[..n]).await?;
        rem -= n as u64;
    }
    Ok(())
}

/// Upstream response reader: buf[..pos] is parsed and pending for the client, buf[pos..end] unparsed.
struct Rx<'a> {
    up: &'a mut TcpStream,
    cl: &'a mut TcpStream,
    buf: &'a mut [u8],
    pos: usize,
    end: usize,
}

impl Rx<'_> {
    /// Flushes pending bytes to the client, then reads more from upstream; Ok(false) on EOF.
    async fn more(&mut self) -> io::Result<bool> {
        if self.pos > 0 {
            self.cl.write_all(&self.buf[..self.pos]).await?;
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        if self.end == self.buf.len() {
            return Err(bad("upstream head or chunk line too long"));
        }
        let n = self.up.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n > 0)
    }
    async fn need(&mut self) -> io::Result<()> {
        if self.more().await? {
            Ok(())
        } else {
            Err(io::ErrorKind::UnexpectedEof.into())
        }
    }
    /// Final response head; interim 1xx heads (not 101) are passed through.
    async fn head(&mut self) -> io::Result<Head> {
        loop {
            match parse_resp(&self.buf[self.pos..self.end]) {
                Err(()) => return Err(bad("bad response head")),
                Ok(Some(h)) => {
                    self.pos += h.len;
                    if !(100..200).contains(&h.status) || h.status == 101 {
                        return Ok(h);
                    }
                }
                Ok(None) => self.need().await?,
            }
        }
    }
    async fn skip(&mut self, mut n: u64) -> io::Result<()> {
        while n > 0 {
            if self.pos == self.end {
                self.need().await?;
            }
            let k = n.min((self.end - self.pos) as u64) as usize;
            self.pos += k;
            n -= k as u64;
        }
        Ok(())
    }
    /// Streams a chunked body through unchanged, up to and including the trailer section.
    async fn chunked(&mut self) -> io::Result<()> {
        loop {
            match httparse::parse_chunk_size(&self.buf[self.pos..self.end]) {
                Ok(httparse::Status::Complete((n, size))) => {
                    self.pos += n;
                    if size == 0 {
                        break;
                    }
                    self.skip(size).await?;
                    while self.end - self.pos < 2 {
                        self.need().await?;
                    }
                    if &self.buf[self.pos..self.pos + 2] != b"\r\n" {
                        return Err(bad("bad chunk end"));
                    }
                    self.pos += 2;
                }
                Ok(httparse::Status::Partial) => self.need().await?,
                Err(_) => return Err(bad("bad chunk size")),
            }
        }
        loop {
            match self.buf[self.pos..self.end]
                .windows(2)
                .position(|w| w == b"\r\n")
            {
                Some(0) => {
                    self.pos += 2;
                    return Ok(());
                }
                Some(i) => self.pos += i + 2,
                None => self.need().await?,
            }
        }
    }
}
