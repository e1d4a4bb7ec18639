//! Request latency while a large routes file is reloaded: a real `strangler serve` process
//! with 10,000 routes (on one runtime thread, where any stall of the request path shows), a
//! steady stream of requests from 4 connections, and the worst latency seen without reloads
//! and then across 5 reloads (each a real change of the file, so each swaps a new table in).
//!
//! `cargo bench --bench reload_latency` (release build of the binary; about a minute).
//! `ROUTES=20000` changes the size; `STRANGLER_BIN=path` measures another build.

use std::io::Write as _;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn routes_file(n: usize, percent: u32, upstream: &str, port: u16, admin: u16) -> String {
    let mut s = format!(
        "listen: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:{admin}}}\nlegacy: {{url: 'http://{upstream}'}}\nservices:\n  svc: {{url: 'http://{upstream}'}}\nroutes:\n"
    );
    for i in 0..n {
        let m = match i % 10 {
            0..=3 => format!("{{path: /api/v1/exact{i}/items}}"),
            4 | 5 => format!("{{path: '/api/t{i}/{{id}}/detail'}}"),
            6 | 7 => format!("{{prefix: /svc/p{i}}}"),
            8 => format!("{{regex: '/re{i}/[0-9]+\\.pdf'}}"),
            _ => format!("{{path: /api/v1/exact{}/items, methods: [POST]}}", i - 9),
        };
        s.push_str(&format!(
            "  - name: r{i}\n    match: {m}\n    service: svc\n    percent: {percent}\n"
        ));
    }
    s
}

async fn upstream() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut pending = Vec::new();
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One keep-alive connection sending requests back to back until `stop`; the latencies.
async fn client(addr: String, stop: Instant) -> Vec<Duration> {
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut i = 0usize;
    while Instant::now() < stop {
        i += 1;
        let req = format!(
            "GET /api/v1/exact{}/items HTTP/1.1\r\nHost: h\r\n\r\n",
            (i * 10) % 10_000
        );
        let t = Instant::now();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        loop {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the gateway closed the connection");
            got.extend_from_slice(&buf[..n]);
            if got.ends_with(b"ok") {
                break;
            }
        }
        out.push(t.elapsed());
    }
    out
}

async fn phase(addr: &str, seconds: u64) -> Vec<Duration> {
    let stop = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..4)
        .map(|_| tokio::spawn(client(addr.to_string(), stop)))
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    all
}

fn show(name: &str, l: &[Duration]) {
    let q = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)];
    println!(
        "{name:<26} {:>8} requests  p50 {:>8.2?}  p99 {:>8.2?}  max {:>8.2?}",
        l.len(),
        q(0.5),
        q(0.99),
        l[l.len() - 1]
    );
}

fn main() {
    let n: usize = std::env::var("ROUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let up = upstream().await.to_string();
        let (port, admin) = (free_port(), free_port());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("routes.yaml");
        std::fs::write(&file, routes_file(n, 0, &up, port, admin)).unwrap();
        let bin = std::env::var("STRANGLER_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_strangler").to_string());
        let mut child = std::process::Command::new(bin)
            .args(["serve", "--no-access-log", "--no-watch", "--config"])
            .arg(&file)
            .env("TOKIO_WORKER_THREADS", "1")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{port}");
        let started = Instant::now();
        while TcpStream::connect(&addr).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the gateway did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let reload_url = format!("http://127.0.0.1:{admin}/admin/reload");
        println!("{n} routes, gateway on one runtime thread, 4 connections");
        let _ = phase(&addr, 2).await; // warm-up
        let baseline = phase(&addr, 5).await;
        show("without reloads", &baseline);
        let load = tokio::spawn({
            let addr = addr.clone();
            async move { phase(&addr, 7).await }
        });
        let mut reload_times = Vec::new();
        for k in 1..=5u32 {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let mut f = std::fs::File::create(&file).unwrap();
            f.write_all(routes_file(n, k, &up, port, admin).as_bytes())
                .unwrap();
            drop(f);
            let t = Instant::now();
            let r = http.post(&reload_url).send().await.unwrap();
            assert!(r.status().is_success(), "reload: {}", r.status());
            reload_times.push(t.elapsed());
        }
        let during = load.await.unwrap();
        show("across 5 reloads", &during);
        println!(
            "reload (POST /admin/reload, read + validate + compile + swap): {:.0?} .. {:.0?}",
            reload_times.iter().min().unwrap(),
            reload_times.iter().max().unwrap()
        );
        let (b, d) = (baseline[baseline.len() - 1], during[during.len() - 1]);
        println!(
            "worst latency across reloads minus worst without: {:.2?}",
            d.saturating_sub(b)
        );
        let _ = child.kill();
        let _ = child.wait();
    });
}
