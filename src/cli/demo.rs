//! `strangler demo`: the whole product in one process, on the embedded example routes file.
//!
//! Starts a demo monolith and two demo services on the loopback ports that
//! `routes/example.yaml` names (or on `--port-base` and the four ports after it), the
//! gateway on that file, and steady traffic from several
//! users, and starts the two example migration plans of `migrations-plan/`: billing's
//! service is sound, so its plan walks to 100%; the orders service starts as sound as the
//! monolith and fails a tenth of its requests once its plan reaches 25% (a bad deploy), so
//! its plan is rolled back. Nothing here is used by `serve`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::control::plan::{Op, unix_now};
use crate::control::serve::wait_for_stop;
use crate::observe::{AccessLog, LogFormat, stdout};

/// The example routes file, built into the binary so the demo runs from anywhere.
pub const EXAMPLE_ROUTES: &str = include_str!("../../routes/example.yaml");

/// The example plans (`migrations-plan/`), which the example routes file names.
pub const EXAMPLE_PLANS: [(&str, &str); 2] = [
    (
        "orders-read.yaml",
        include_str!("../../migrations-plan/orders-read.yaml"),
    ),
    (
        "billing.yaml",
        include_str!("../../migrations-plan/billing.yaml"),
    ),
];

/// How a demo upstream behaves.
#[derive(Clone)]
struct Behaviour {
    name: &'static str,
    /// Base latency and random extra, in milliseconds.
    base_ms: u64,
    jitter_ms: u64,
    /// Share of requests answered 500, in basis points (the demo changes it mid-run).
    error_bp: Arc<AtomicU32>,
}

async fn demo_upstream(addr: SocketAddr, b: Behaviour) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen on {addr} for the demo {}: is something else using it? \
             (--port-base moves the demo to other ports)",
            b.name
        )
    })?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let b = b.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let b = b.clone();
                    async move {
                        let delay = b.base_ms + fastrand::u64(0..=b.jitter_ms);
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        let failed = fastrand::u32(0..10_000) < b.error_bp.load(Ordering::Relaxed);
                        let status = if failed {
                            StatusCode::INTERNAL_SERVER_ERROR
                        } else {
                            StatusCode::OK
                        };
                        let body = match history_of(req.uri().path()) {
                            Some(customer) => history(customer, b.name),
                            None => serde_json::json!({
                                "served_by": b.name,
                                "method": req.method().as_str(),
                                "path": req.uri().path(),
                                "user": req.headers().get("x-user-id").and_then(|v| v.to_str().ok()),
                                "ok": !failed,
                            }),
                        };
                        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
                        *resp.status_mut() = status;
                        resp.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("application/json"),
                        );
                        resp.headers_mut()
                            .insert("x-served-by", http::HeaderValue::from_static(b.name));
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(())
}

/// The customer of `/api/customers/{id}/orders`.
fn history_of(path: &str) -> Option<u64> {
    path.strip_prefix("/api/customers/")?
        .strip_suffix("/orders")?
        .parse()
        .ok()
}

/// A customer's order history, as the monolith and the orders service both answer it
/// (the shadowed route): the same orders, a `generated_at` timestamp that differs on every
/// answer (noise, which the comparison learns), and a total the orders service rounds
/// wrongly for one customer in seven (a real mismatch, which it reports).
fn history(customer: u64, by: &str) -> serde_json::Value {
    let orders: Vec<serde_json::Value> = (0..3)
        .map(|k| serde_json::json!({"id": customer * 10 + k, "amount_cents": 1999 + 250 * k}))
        .collect();
    let mut total = 3 * 1999 + 250 * 3;
    if by == "orders" && customer.is_multiple_of(7) {
        total += 1;
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    serde_json::json!({
        "customer": customer,
        "orders": orders,
        "total_cents": total,
        "generated_at": now_ms,
    })
}

/// The ports of the example routes file, in the order `--port-base` gives them out: the
/// gateway, the monolith, the orders and billing services, the admin API.
const EXAMPLE_PORTS: [u16; 5] = [8080, 9001, 9002, 9003, 9901];

/// The example routes file with its five loopback addresses moved to `base`, `base + 1`,
/// ... in the order of [`EXAMPLE_PORTS`], all at once (a new port may be an old one).
fn on_ports(text: &str, base: u16) -> anyhow::Result<String> {
    let mut moves = Vec::new();
    for (k, port) in EXAMPLE_PORTS.into_iter().enumerate() {
        let from = format!("127.0.0.1:{port}");
        let mut found = text.match_indices(&from);
        let (Some((at, _)), None) = (found.next(), found.next()) else {
            anyhow::bail!("the example routes file names {from} other than once");
        };
        let to = base
            .checked_add(k as u16)
            .context("--port-base leaves no room for the demo's five ports")?;
        moves.push((at, from.len(), format!("127.0.0.1:{to}")));
    }
    // From the last to the first, so that each leaves the others' positions as they were.
    moves.sort_by_key(|m| std::cmp::Reverse(m.0));
    let mut out = text.to_string();
    for (at, len, to) in moves {
        out.replace_range(at..at + len, &to);
    }
    Ok(out)
}

fn addr_of(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.trim_start_matches("http://");
    let hostport = rest.split('/').next().unwrap_or(rest);
    hostport
        .parse()
        .with_context(|| format!("the demo needs IP:port upstream URLs, found {url}"))
}

/// Runs the demo until Ctrl-C; on the example file's ports, or from `port_base` on.
pub async fn run(
    format: LogFormat,
    access_log: bool,
    port_base: Option<u16>,
) -> anyhow::Result<()> {
    let routes = match port_base {
        Some(base) => on_ports(EXAMPLE_ROUTES, base)?,
        None => EXAMPLE_ROUTES.to_string(),
    };
    // The gateway runs on a copy of the embedded file in a directory of its own, watched
    // like any routes file: shifts and reloads from the demo act on the copy, never on a
    // checkout's routes/example.yaml.
    let dir = tempfile::Builder::new()
        .prefix("strangler-demo-")
        .tempdir()
        .context("cannot make a directory for the demo's routes file")?;
    // As in the repository: routes/ and migrations-plan/ side by side.
    std::fs::create_dir_all(dir.path().join("routes"))?;
    std::fs::create_dir_all(dir.path().join("migrations-plan"))?;
    let file = dir.path().join("routes/example.yaml");
    std::fs::write(&file, &routes).with_context(|| format!("cannot write {}", file.display()))?;
    for (name, text) in EXAMPLE_PLANS {
        let plan = dir.path().join("migrations-plan").join(name);
        std::fs::write(&plan, text).with_context(|| format!("cannot write {}", plan.display()))?;
    }
    let mut config = Config::parse(&routes, &file).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The demo's admin API is on loopback: it needs no token.
    config.admin.token_env = None;
    demo_upstream(
        addr_of(&config.legacy.url)?,
        Behaviour {
            name: "monolith",
            base_ms: 8,
            jitter_ms: 12,
            error_bp: Arc::new(AtomicU32::new(50)),
        },
    )
    .await?;
    // The new orders service: as sound as the monolith until the demo breaks it.
    let orders_errors = Arc::new(AtomicU32::new(50));
    for s in &config.services {
        let b = match s.name.as_str() {
            "orders" => Behaviour {
                name: "orders",
                base_ms: 8,
                jitter_ms: 12,
                error_bp: orders_errors.clone(),
            },
            _ => Behaviour {
                name: "billing",
                base_ms: 5,
                jitter_ms: 8,
                error_bp: Arc::new(AtomicU32::new(30)),
            },
        };
        demo_upstream(addr_of(&s.url)?, b).await?;
    }
    let log = AccessLog::new(format, access_log);
    let running = crate::control::start(config, log.clone())
        .await
        .context("the demo's gateway cannot start (--port-base moves the demo to other ports)")?;
    let _watch = running.watch()?;
    let public = running.public_addr;
    let admin = running.admin_addr;
    // Through the stdout writer, as every line of the process: in order with the log, and
    // never waited on.
    let file = file.display();
    // The commands below ask 127.0.0.1:9901 unless told otherwise.
    let at = match port_base {
        Some(_) => format!(" --admin {admin}"),
        None => String::new(),
    };
    stdout().print(&format!(
        "
strangler demo is running (Ctrl-C to stop)
  routes file:  {file}   (a copy of routes/example.yaml; edit or shift it, it is watched)
  gateway:      http://{public}/api/orders/42   (try -H 'x-user-id: alice')
  dashboard:    http://{admin}/   (legacy vs new, side by side)
  compare:      http://{admin}/admin/compare   (or: target/release/strangler compare{at})
  metrics:      http://{admin}/metrics
  route table:  http://{admin}/admin/routes
  health:       http://{admin}/healthz  http://{admin}/readyz
  explain:      target/release/strangler explain {file} GET /api/orders/42 -H 'x-user-id: alice'
  plans:        http://{admin}/admin/plans   (or: target/release/strangler plan status{at})
  map:          http://{admin}/#/map   (the endpoints learned from the traffic, what is carved and
                what no route takes yet; or: target/release/strangler inventory{at})

Two migration plans start now (migrations-plan/): billing walks to 100% in about a
minute; the orders service breaks once its plan reaches 25%, and the plan rolls it back.
Order histories stay on the monolith but are shadowed to the orders service:
  shadow:       http://{admin}/admin/shadow/orders-history   (a total that differs for one
                customer in seven is found; generated_at is learned as noise; once the
                orders service breaks, its 500s show as status mismatches too)

"
    ));

    for name in ["billing", "orders-read"] {
        if let Err(e) = running.plans.operate(name, Op::Start, unix_now()).await {
            tracing::warn!(plan = name, error = %e, "demo: the plan did not start");
        }
    }
    // The bad deploy: once the orders plan is at 25%, the orders service fails a tenth of
    // its requests.
    let breaker = {
        let plans = running.plans.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                // Steps count from 1: the second is 25%.
                let step = plans
                    .status("orders-read")
                    .await
                    .and_then(|s| s["step"].as_u64());
                if step.is_some_and(|s| s >= 2) {
                    orders_errors.store(1000, Ordering::Relaxed);
                    stdout().print(
                        "demo: the orders service now fails 10% of its requests (a bad deploy): watch the orders-read plan roll back\n",
                    );
                    return;
                }
            }
        })
    };
    let tally: Arc<Mutex<BTreeMap<String, [u64; 3]>>> = Arc::default();
    for worker in 0..4 {
        tokio::spawn(traffic(public, worker, tally.clone()));
    }
    let reporter = {
        let tally = tally.clone();
        let plans = running.plans.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                let t = tally.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let line: Vec<String> = t
                    .iter()
                    .map(|(k, [n, new, err])| format!("{k}: {n} req ({new} new, {err} errors)"))
                    .collect();
                // Through the stdout writer: a stalled terminal must not stall the traffic.
                stdout().print(&format!("demo traffic so far: {}\n", line.join(" | ")));
                for p in plans.statuses().await {
                    stdout().print(&format!(
                        "plan {}: {} at {}% ({}); waiting for {}\n",
                        p["name"].as_str().unwrap_or("?"),
                        p["state"].as_str().unwrap_or("?"),
                        p["percent"],
                        p["step_text"].as_str().unwrap_or("not started"),
                        p["waiting_for"].as_str().unwrap_or("?")
                    ));
                }
            }
        })
    };
    wait_for_stop().await;
    reporter.abort();
    breaker.abort();
    running.drain(Duration::from_secs(5)).await;
    running.close();
    stdout().print("demo stopped\n");
    log.flush();
    Ok(())
}

/// One stream of demo requests from rotating users, about 10 per second.
async fn traffic(gateway: SocketAddr, worker: u32, tally: Arc<Mutex<BTreeMap<String, [u64; 3]>>>) {
    const USERS: [&str; 8] = [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
    ];
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    // 100 requests a second per worker: enough for a plan's guard to tell a sound step
    // within its hold.
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut n: u64 = u64::from(worker) * 7;
    loop {
        tick.tick().await;
        n += 1;
        // A few named users (try them with -H 'x-user-id: alice') among many numbered ones,
        // so that a sticky split follows its percentage closely.
        let numbered;
        let user = if fastrand::u8(0..4) == 0 {
            USERS[fastrand::usize(..USERS.len())]
        } else {
            numbered = format!("user-{}", fastrand::u32(1..1000));
            &numbered
        };
        let beta = n.is_multiple_of(17);
        // Labelled by the route that takes the request.
        let (method, path, label) = match n % 10 {
            0..=4 => (
                "GET",
                format!("/api/orders/{}", fastrand::u32(1..500)),
                if beta {
                    "orders-read-beta"
                } else {
                    "orders-read"
                },
            ),
            5 => ("POST", "/api/orders".to_string(), "orders-write"),
            6 | 7 => (
                "GET",
                format!("/api/billing/invoices?page={}", n % 5),
                "billing",
            ),
            8 => (
                "GET",
                format!("/invoices/{}.pdf", fastrand::u32(1..99)),
                "invoice-pdf",
            ),
            // What no route takes yet: the carve-out map's endpoints still on the monolith
            // (and a near miss of orders-read, in another letter case).
            _ if n % 20 == 9 => {
                let path = match (n / 20) % 6 {
                    0 => "/home".to_string(),
                    1 => format!("/api/products/{}", fastrand::u32(1..300)),
                    2 => format!("/api/products/{}/reviews", fastrand::u32(1..300)),
                    3 => format!(
                        "/api/users/{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}/profile",
                        fastrand::u32(..),
                        fastrand::u16(..),
                        fastrand::u16(..0xfff),
                        fastrand::u16(..0xfff),
                        fastrand::u64(..1 << 48)
                    ),
                    4 => format!(
                        "/api/search/{}",
                        ["shoes", "hats", "socks"][fastrand::usize(..3)]
                    ),
                    _ => format!("/API/orders/{}", fastrand::u32(1..500)),
                };
                ("GET", path, "default")
            }
            _ => (
                "GET",
                format!("/api/customers/{}/orders", fastrand::u32(1..200)),
                "orders-history",
            ),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{gateway}{path}"))
            .header("x-user-id", user)
            .header("cookie", format!("session=s-{user}"));
        if beta {
            req = req.header("x-tenant", "beta");
        }
        let Ok(req) = req.body(Full::new(Bytes::new())) else {
            continue;
        };
        let Ok(resp) = client.request(req).await else {
            continue;
        };
        let status = resp.status();
        let new = resp
            .headers()
            .get("x-served-by")
            .is_some_and(|v| v != "monolith");
        let _ = resp.into_body().collect().await;
        let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
        let e = t.entry(label.to_string()).or_default();
        e[0] += 1;
        e[1] += u64::from(new);
        e[2] += u64::from(status.is_server_error());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_base_moves_all_five_addresses() {
        // 9001 is the monolith's port in the file: the moves must not collide.
        let text = on_ports(EXAMPLE_ROUTES, 9001).unwrap();
        // Beside the repository's copy, whose plans folder is where the file says.
        let beside = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("routes/example.yaml");
        let config = Config::parse(&text, &beside).unwrap();
        assert_eq!(config.listen, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(config.legacy.url, "http://127.0.0.1:9002");
        let services: Vec<(&str, &str)> = config
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.url.as_str()))
            .collect();
        assert_eq!(
            services,
            [
                ("orders", "http://127.0.0.1:9003"),
                ("billing", "http://127.0.0.1:9004")
            ]
        );
        assert_eq!(config.admin.listen, "127.0.0.1:9005".parse().unwrap());
        // The comments and everything else are as they were.
        assert_eq!(text.lines().count(), EXAMPLE_ROUTES.lines().count());
        assert!(on_ports(EXAMPLE_ROUTES, 65535).is_err());
    }
}
