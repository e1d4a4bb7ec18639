//! Helpers of the plan tests: steady client traffic, a plan's status through the admin API,
//! the `strangler` command line, and what the routes file and the gateway say.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{GatewayProcess, client, get_json, get_text};

/// Steady traffic to `/api/orders/N` until dropped.
pub struct Traffic {
    stop: Arc<AtomicBool>,
}

impl Traffic {
    pub fn start(public: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        for _ in 0..4 {
            let stop = stop.clone();
            tokio::spawn(async move {
                let c = client();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let url = format!("http://{public}/api/orders/{i}");
                    if let Ok(r) = c.get(&url).send().await {
                        let _ = r.bytes().await;
                    }
                }
            });
        }
        Traffic { stop }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub async fn status(gw: &GatewayProcess, name: &str) -> Value {
    get_json(format!("http://{}/admin/plans/{name}", gw.admin)).await
}

/// Waits (up to `secs`) for the plan to reach `state`; its status then.
pub async fn wait_state(gw: &GatewayProcess, name: &str, state: &str, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = status(gw, name).await;
        if s["state"] == state {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "plan never reached {state}: {}",
            serde_json::to_string_pretty(&s).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `strangler` binary with `args`; (success, stdout, stderr).
pub fn cli(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strangler"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `strangler plan start orders-rollout --admin ADMIN`, which must succeed: its output.
pub fn start_plan(admin: &str) -> String {
    let (ok, out, err) = cli(&["plan", "start", "orders-rollout", "--admin", admin]);
    assert!(ok, "{out}{err}");
    out
}

pub fn percent_in(routes: &Path) -> String {
    let text = std::fs::read_to_string(routes).unwrap();
    text.lines()
        .find(|l| l.trim_start().starts_with("percent:"))
        .unwrap()
        .to_string()
}

/// Steady traffic to `/api/orders/N` that counts what the clients got: every answer that is
/// not a 200 (or no answer at all) is kept, to show.
pub struct CountedTraffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    bad: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl CountedTraffic {
    pub fn start(public: SocketAddr) -> CountedTraffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let bad: Arc<Mutex<Vec<String>>> = Arc::default();
        let tasks = (0..4)
            .map(|_| {
                let (stop, ok, bad) = (stop.clone(), ok.clone(), bad.clone());
                tokio::spawn(async move {
                    let c = client();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let url = format!("http://{public}/api/orders/{i}");
                        let sent = c.get(&url).timeout(Duration::from_secs(30)).send().await;
                        let got = match sent {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                match r.bytes().await {
                                    Ok(_) if status == 200 => Ok(()),
                                    Ok(body) => {
                                        Err(format!("{status} {}", String::from_utf8_lossy(&body)))
                                    }
                                    Err(e) => Err(format!("{status}, then the body failed: {e}")),
                                }
                            }
                            Err(e) => Err(format!("no answer: {e}")),
                        };
                        match got {
                            Ok(()) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => bad.lock().unwrap().push(e),
                        }
                    }
                })
            })
            .collect();
        CountedTraffic {
            stop,
            ok,
            bad,
            tasks,
        }
    }

    /// Answers the clients got so far, of any kind.
    pub fn answered(&self) -> u64 {
        self.ok.load(Ordering::Relaxed) + self.bad.lock().unwrap().len() as u64
    }

    /// Waits (up to `secs`) until the clients got `n` more answers than they had; a sample
    /// of traffic sized by its count rather than by a time.
    pub async fn more(&self, n: u64, secs: u64) {
        let want = self.answered() + n;
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.answered() < want {
            assert!(
                Instant::now() < deadline,
                "{} answers, {want} awaited",
                self.answered()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the clients and waits for their last requests; (200s, everything else).
    pub async fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            t.await.unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.bad.lock().unwrap().clone(),
        )
    }
}

impl Drop for CountedTraffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub async fn gateway_metrics(gw: &GatewayProcess) -> String {
    get_text(format!("http://{}/metrics", gw.admin)).await
}

/// `route`'s entry in a gateway's `/admin/routes`.
pub async fn route_entry(admin: SocketAddr, route: &str) -> Value {
    let v = get_json(format!("http://{admin}/admin/routes")).await;
    v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == route)
        .unwrap_or_else(|| panic!("no route {route} in {v}"))
        .clone()
}

/// Waits (up to `secs`) until `check` holds of the gateway's metrics text; the text then.
pub async fn wait_metrics(
    gw: &GatewayProcess,
    secs: u64,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let m = gateway_metrics(gw).await;
        if check(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "never {what}:\n{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
