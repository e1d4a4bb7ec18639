//! Test support: a real gateway (in-process, or a `strangler serve` process) in front of
//! real upstream servers on `127.0.0.1:0` that record what they receive and misbehave on
//! cue: [`upstream`], an HTTP server whose answers a script decides (by default, from cues
//! in the request's headers), and [`faults`], a server of raw TCP that can also reset, half
//! answer or stop listening. Both record a request as a [`Recorded`].
#![allow(dead_code)]

pub mod faults;
pub mod plans;
pub mod prometheus;
pub mod table;
pub mod tls;
pub mod upstream;

#[allow(unused_imports)]
pub use upstream::{Flaky, Recorded, Reply, Upstream};

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use strangler::Config;
use strangler::Running;
use strangler::{AccessLog, LogFormat};

/// An address where nothing listens (connections are refused).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// A gateway running in this process on `127.0.0.1:0`.
pub struct Gateway {
    pub running: Running,
}

impl Gateway {
    /// Starts a gateway on a routes file (its `listen` addresses are replaced by `:0`).
    pub async fn start(yaml: &str) -> Gateway {
        let cfg = Config::parse(yaml, Path::new("test.yaml"))
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let running = strangler::start(cfg, AccessLog::new(LogFormat::Json, false))
            .await
            .unwrap();
        Gateway { running }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.running.public_addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.running.admin_addr, path)
    }

    pub async fn metrics(&self) -> String {
        get_text(self.admin_url("/metrics")).await
    }
}

/// The head of a routes file for tests: listeners on `:0`, `legacy` and the given services.
pub fn config_head(legacy: &str, services: &[(&str, &str)]) -> String {
    let mut s = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nlegacy:\n  url: {legacy}\n  timeout: 10s\nservices:\n"
    );
    for (name, url) in services {
        s.push_str(&format!("  {name}:\n    url: {url}\n    timeout: 10s\n"));
    }
    s
}

/// GET `url` with a plain client: its JSON.
pub async fn get_json(url: impl reqwest::IntoUrl) -> serde_json::Value {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// GET `url` with a plain client: its text.
pub async fn get_text(url: impl reqwest::IntoUrl) -> String {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A route's entry in the JSON of `/admin/compare` (or `strangler compare --json`).
pub fn compared<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == name)
        .unwrap_or_else(|| panic!("route {name} in {v}"))
}

/// A plain HTTP client: no proxy from the environment, no redirects followed.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The value of a metric series in Prometheus text, by exact label set in the order the
/// encoder writes them (alphabetical), e.g. `strangler_requests_total{code="200",...}`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// A raw HTTP/1.1 exchange, for request targets that client libraries would rewrite
/// (dot segments, odd escapes). Sends `head` (which must end with a blank line) and reads
/// the answer until the server closes. Returns status, head text and body.
pub async fn raw(addr: SocketAddr, head: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(buf.len());
    let head_text = String::from_utf8_lossy(&buf[..text_end]).to_string();
    let status = head_text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head_text, buf[text_end..].to_vec())
}

/// A real `strangler serve` process.
pub struct GatewayProcess {
    pub child: std::process::Child,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    /// Lines the process printed after the `listening` line.
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl GatewayProcess {
    /// Starts `strangler serve --config FILE` and waits for its `listening` log line.
    pub async fn spawn(config: &Path, env: &[(&str, &str)]) -> GatewayProcess {
        Self::spawn_with(config, &[], env).await
    }

    /// As `spawn`, with more arguments to `serve`.
    // The child is killed and reaped by `Drop` once constructed; before that, a failed
    // start panics the test, which ends the test process anyway.
    #[allow(clippy::zombie_processes)]
    pub async fn spawn_with(config: &Path, args: &[&str], env: &[(&str, &str)]) -> GatewayProcess {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_strangler"));
        cmd.arg("serve").arg("--config").arg(config).args(args);
        Self::spawn_command(cmd, env).await
    }

    /// As `spawn`, run as the user and group `uid`:`gid` (with `setpriv`; needs root).
    pub async fn spawn_as(config: &Path, uid: u32, gid: u32) -> GatewayProcess {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg(env!("CARGO_BIN_EXE_strangler"))
            .arg("serve")
            .arg("--config")
            .arg(config);
        Self::spawn_command(cmd, &[]).await
    }

    // See `spawn_with`.
    #[allow(clippy::zombie_processes)]
    async fn spawn_command(mut cmd: std::process::Command, env: &[(&str, &str)]) -> GatewayProcess {
        use std::io::BufRead;
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the strangler binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("the gateway printed its listening line");
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["fields"]["message"] == "listening" {
                let public = v["fields"]["public"].as_str().unwrap().parse().unwrap();
                let admin = v["fields"]["admin"].as_str().unwrap().parse().unwrap();
                return GatewayProcess {
                    child,
                    public,
                    admin,
                    lines: rx,
                };
            }
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `n` GETs to `path` through `gw`, forced to `side` with the override header
/// `x-strangler-side` (which the routes file must configure), 32 at a time; every
/// `fail_every`-th (0: none) gets a 500 from the upstream.
pub async fn forced_traffic(gw: &Gateway, path: &str, side: &str, n: usize, fail_every: usize) {
    let c = client();
    for chunk in (0..n).collect::<Vec<_>>().chunks(32) {
        futures_util::future::join_all(chunk.iter().map(|&i| {
            let mut r = c.get(gw.url(path)).header("x-strangler-side", side);
            if fail_every > 0 && i % fail_every == 0 {
                r = r.header("x-test-status", "500");
            }
            async move { r.send().await.unwrap().bytes().await.unwrap() }
        }))
        .await;
    }
}

impl GatewayProcess {
    /// Waits (up to `secs`) for a line the process prints holding `needle`; the line.
    pub fn wait_line(&self, needle: &str, secs: u64) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no line with {needle:?} within {secs}s"),
            }
        }
    }

    /// Waits (10 s at most) until `/readyz` answers 503: the process is draining.
    pub async fn wait_draining(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = client()
                .get(format!("http://{}/readyz", self.admin))
                .send()
                .await;
            if r.is_ok_and(|r| r.status() == 503) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "/readyz never turned 503"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a signal (`-TERM`, `-HUP`) with `kill`.
    pub fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill")
            .arg(signal)
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(sent.success(), "kill {signal}");
    }

    /// Waits (10 s at most) for the process to exit; its status.
    pub async fn exit_status(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the gateway did not exit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Whether the tests run as root (some can only be recreated as root: files owned by
/// another user, a gateway running as `nobody`).
pub fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Counts the opens of `file` from now on (inotify, as the gateway's own watch sees them).
pub fn count_opens(
    file: &Path,
) -> (
    notify::RecommendedWatcher,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let opens = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = opens.clone();
    let mut w = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        use notify::event::{AccessKind, EventKind};
        if let Ok(e) = e
            && matches!(e.kind, EventKind::Access(AccessKind::Open(_)))
        {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    })
    .unwrap();
    use notify::Watcher as _;
    w.watch(file, notify::RecursiveMode::NonRecursive).unwrap();
    (w, opens)
}

/// Writes a routes file into a new temporary directory; keep the directory alive.
pub fn routes_file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::write(&file, text).unwrap();
    (dir, file)
}

/// A routes file with one route, `orders-read` (prefix `/api/orders`, service `orders`),
/// whose percent line is `percent_line`, `extra` before its `plans: plans`, and the plans
/// folder holding `plan` as `orders-rollout.yaml`. Keep the directory alive.
pub fn plan_setup(
    legacy: &str,
    new: &str,
    extra: &str,
    percent_line: &str,
    plan: &str,
) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(
        &routes,
        format!(
            "# the shop's routes\nlisten: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nlegacy:\n  url: {legacy}\nservices:\n  orders:\n    url: {new}\n{extra}plans: plans\nroutes:\n  - name: orders-read\n    match: {{ prefix: /api/orders }}\n    service: orders\n    {percent_line}\n"
        ),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("plans")).unwrap();
    std::fs::write(dir.path().join("plans/orders-rollout.yaml"), plan).unwrap();
    (dir, routes)
}
