//! Heap allocations per proxied request: a gateway in this process, on the production
//! settings of the peer benchmark (`benches/peer/production.yaml`: a sticky header, the
//! comparison window, the carve-out map's sampling, a new service of two health-checked
//! instances), in front of two minimal upstreams, answering `GET /` on one kept-alive
//! connection, one request after another. Every allocation of the process is counted (the
//! client and the upstreams here allocate nothing per request), so the figure is the
//! gateway's.
//!
//! `cargo bench --bench allocations` prints, for a plain route and a shadowed one, the
//! allocations and bytes allocated per request; then the heap each kept-alive client
//! connection holds, before its first request and after one (1,000 connections opened one
//! after another, each answered before the next). The access log is off here (the bench's
//! stdout is its report); its lines are formatted into one reused buffer.

use std::net::SocketAddr;
use std::path::Path;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// The system's allocator, counted (the gateway's own, mimalloc, is asked for the same
// allocations).
#[global_allocator]
static ALLOC: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 4\r\n\r\nnew\n";

/// An upstream that answers every request head with [`ANSWER`], allocating nothing per
/// request.
async fn upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            s.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut have = 0;
                loop {
                    match s.read(&mut buf[have..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                    while let Some(end) = head_end(&buf[..have]) {
                        if s.write_all(ANSWER).await.is_err() {
                            return;
                        }
                        buf.copy_within(end..have, 0);
                        have -= end;
                    }
                }
            });
        }
    });
    addr
}

fn head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Sends `n` requests on one connection, each read to its end before the next.
async fn requests(s: &mut TcpStream, buf: &mut [u8], n: usize) {
    const REQUESTS: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: bench\r\nx-user-id: u1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: bench\r\nx-user-id: u2\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: bench\r\nx-user-id: u3\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: bench\r\nx-user-id: u4\r\n\r\n",
    ];
    for i in 0..n {
        s.write_all(REQUESTS[i % 4]).await.unwrap();
        let mut have = 0;
        loop {
            let got = s.read(&mut buf[have..]).await.unwrap();
            assert!(got > 0, "the gateway closed the connection");
            have += got;
            if let Some(end) = head_end(&buf[..have]) {
                let len = content_length(&buf[..end]);
                if have >= end + len {
                    assert!(buf.starts_with(b"HTTP/1.1 200"), "not a 200");
                    break;
                }
            }
        }
    }
}

fn content_length(head: &[u8]) -> usize {
    let text = std::str::from_utf8(head).unwrap();
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("a content-length")
}

/// Heap held per kept-alive client connection on `yaml`: `CONNS` connections opened one
/// after another (before any request), then one request on each, one after another; the
/// bytes allocated and not freed, per connection, at each point.
async fn per_connection(yaml: &str) -> (f64, f64) {
    const CONNS: usize = 1000;
    let cfg = strangler::Config::parse(yaml, Path::new("allocations.yaml")).unwrap();
    let running = strangler::start(cfg, strangler::AccessLog::new(Default::default(), false))
        .await
        .unwrap();
    let mut buf = vec![0u8; 16384];
    let mut warm = TcpStream::connect(running.public_addr).await.unwrap();
    requests(&mut warm, &mut buf, 200).await;
    drop(warm);
    let mut conns = Vec::with_capacity(CONNS);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let region = Region::new(ALLOC);
    for _ in 0..CONNS {
        conns.push(TcpStream::connect(running.public_addr).await.unwrap());
    }
    // Until the gateway has accepted and set up every one.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let held = |c: stats_alloc::Stats| {
        (c.bytes_allocated as f64 - c.bytes_deallocated as f64 + c.bytes_reallocated as f64)
            / CONNS as f64
    };
    let before = held(region.change());
    for s in &mut conns {
        requests(s, &mut buf, 1).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let after = held(region.change());
    drop(conns);
    running.close();
    (before, after)
}

/// Allocations and bytes per request on `yaml`, after a warm-up.
async fn measure(yaml: &str) -> (f64, f64) {
    let cfg = strangler::Config::parse(yaml, Path::new("allocations.yaml")).unwrap();
    let running = strangler::start(cfg, strangler::AccessLog::new(Default::default(), false))
        .await
        .unwrap();
    let mut s = TcpStream::connect(running.public_addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = vec![0u8; 16384];
    requests(&mut s, &mut buf, 2000).await;
    const N: usize = 20_000;
    let region = Region::new(ALLOC);
    requests(&mut s, &mut buf, N).await;
    let change = region.change();
    running.close();
    let allocations = change.allocations + change.reallocations;
    let bytes = change.bytes_allocated as i64 + change.bytes_reallocated as i64;
    (allocations as f64 / N as f64, bytes as f64 / N as f64)
}

fn main() {
    // Only `cargo bench` runs it (`cargo test --benches` passes --bench too).
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (legacy, new1, new2) = (upstream().await, upstream().await, upstream().await);
        let production = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peer/production.yaml"),
        )
        .unwrap()
        .replace("127.0.0.1:18092", "127.0.0.1:0")
        .replace("127.0.0.1:18093", "127.0.0.1:0")
        .replace("127.0.0.1:18081", &legacy.to_string())
        .replace("127.0.0.1:18082", &new1.to_string())
        .replace("127.0.0.1:18083", &new2.to_string());
        let shadowed = production.replace(
            "    percent: 50\n",
            "    percent: 0\n    shadow: { percent: 100 }\n",
        );
        assert_ne!(production, shadowed);
        println!("allocations per proxied GET (one kept-alive client, production settings)");
        for (name, yaml) in [
            ("plain route, 50% to new", &production),
            ("shadowed route, every request copied", &shadowed),
        ] {
            let (allocs, bytes) = measure(yaml).await;
            println!("  {name:<38} {allocs:>6.1} allocations  {bytes:>8.0} bytes");
        }
        let (before, after) = per_connection(&production).await;
        println!(
            "heap held per kept-alive client connection: {before:.0} bytes before its first request, {after:.0} after one"
        );
    });
}
