//! A service's host name is looked up again every `resolve`: when its record moves, the
//! traffic follows. The gateway is given a resolver of the test's own
//! (`strangler::Dependencies`), which plays the record.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::faults::*;
use crate::support::*;

async fn answered_by(c: &reqwest::Client, url: &str) -> String {
    let r = c
        .get(url)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let by = r
        .headers()
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    r.bytes().await.unwrap();
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_record_moves_the_traffic() {
    let a = FaultServer::start("a").await;
    // b on the same port as a, on another loopback address where the system has one
    // (Linux answers all of 127/8): the move is then in the address alone, whatever the
    // gateway makes of the port the resolver answers. Elsewhere, any port on 127.0.0.1.
    let port = a.addr.port();
    let b = match std::net::TcpListener::bind(("127.0.0.2", port)) {
        Ok(probe) => {
            drop(probe);
            FaultServer::start_at("b", SocketAddr::from(([127, 0, 0, 2], port))).await
        }
        Err(_) => FaultServer::start("b").await,
    };
    let legacy = Upstream::start("legacy").await;

    let record = Arc::new(Mutex::new(a.addr));
    let asked: Arc<Mutex<Vec<(String, u16)>>> = Arc::default();
    let resolver = {
        let (record, asked) = (record.clone(), asked.clone());
        strangler::Resolver::custom(move |host: &str, port: u16| {
            asked.lock().unwrap().push((host.to_string(), port));
            if host == "orders.test" {
                Ok(vec![*record.lock().unwrap()])
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{host}: no such name"),
                ))
            }
        })
    };
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nlegacy:\n  url: {}\n  timeout: 10s\nservices:\n  orders:\n    url: http://orders.test:{port}\n    resolve: 200ms\n    timeout: 10s\nroutes:\n  - name: orders-read\n    match: {{prefix: /api/orders}}\n    service: orders\n    percent: 100\n",
        legacy.url()
    );
    let cfg = strangler::Config::parse(&yaml, std::path::Path::new("test.yaml")).unwrap();
    let deps = strangler::Dependencies {
        resolver,
        ..Default::default()
    };
    let running = strangler::start_with(
        cfg,
        strangler::AccessLog::new(strangler::LogFormat::Json, false),
        deps,
    )
    .await
    .unwrap();
    let gw = Gateway { running };
    let c = client();
    let url = gw.url("/api/orders/1");
    for _ in 0..20 {
        assert_eq!(answered_by(&c, &url).await, "a");
    }
    assert_eq!(b.count(), 0);

    // The record moves to b.
    *record.lock().unwrap() = b.addr;
    let moved = Instant::now();
    eventually("a request reaches b", Duration::from_secs(10), async || {
        answered_by(&c, &url).await == "b"
    })
    .await;
    let first = moved.elapsed();
    // And all of it: 20 requests in a row on b (connections to a kept from before included).
    eventually(
        "20 requests in a row reach b",
        Duration::from_secs(10),
        async || {
            for _ in 0..20 {
                if answered_by(&c, &url).await != "b" {
                    return false;
                }
            }
            true
        },
    )
    .await;
    eprintln!(
        "first request on b {first:?} after the move, all on b after {:?} (resolve: 200ms); {} lookups",
        moved.elapsed(),
        asked.lock().unwrap().len()
    );
    assert_eq!(legacy.count(), 0);
    let asked = asked.lock().unwrap().clone();
    // Looked up again (the first lookup and at least one after the move), and only the
    // name: legacy's IP literal never.
    assert!(asked.len() >= 2, "{asked:?}");
    assert!(
        asked.iter().all(|(h, p)| h == "orders.test" && *p == port),
        "{asked:?}"
    );
}
