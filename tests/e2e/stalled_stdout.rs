//! A stalled stdout (a log shipper that stops reading) never stops the gateway: requests are
//! served, reloads (SIGHUP and the admin API) apply, and SIGTERM drains and exits on time;
//! the lines stdout cannot take are dropped and counted.

use crate::support;

use std::io::BufRead;
use std::time::{Duration, Instant};

use support::*;

/// A `strangler serve` whose stdout is a pipe nobody reads after the `listening` line.
struct Stalled {
    child: std::process::Child,
    public: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    /// Kept open and never read again: the pipe fills and writes to it block.
    _stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Drop for Stalled {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// The child is killed and reaped by `Drop` once constructed; before that, a failed start
// panics the test, which ends the test process anyway.
#[allow(clippy::zombie_processes)]
fn spawn_stalled(config: &std::path::Path, threads: Option<&str>) -> Stalled {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_strangler"));
    cmd.arg("serve").arg("--config").arg(config);
    cmd.stdout(std::process::Stdio::piped());
    if let Some(t) = threads {
        cmd.env("TOKIO_WORKER_THREADS", t);
    }
    let mut child = cmd.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the gateway exited");
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v["fields"]["message"] == "listening" {
            return Stalled {
                public: v["fields"]["public"].as_str().unwrap().parse().unwrap(),
                admin: v["fields"]["admin"].as_str().unwrap().parse().unwrap(),
                child,
                _stdout: out,
            };
        }
    }
}

fn routes(legacy: &str, percent: u32) -> String {
    format!(
        "{}  orders:\n    url: {legacy}\ndrain_timeout: 2s\nroutes:\n  - name: all\n    match: {{prefix: /}}\n    service: orders\n    percent: {percent}\n",
        config_head(legacy, &[])
    )
}

async fn percent(admin: std::net::SocketAddr) -> f64 {
    let v: serde_json::Value = client()
        .get(format!("http://{admin}/admin/routes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["routes"][0]["percent"].as_f64().unwrap()
}

async fn stalled_stdout_keeps_serving(threads: Option<&str>) {
    let legacy = Upstream::start("legacy").await;
    let (_dir, file) = routes_file(&routes(&legacy.url(), 0));
    let mut gw = spawn_stalled(&file, threads);
    let c = client();
    // Far more access-log lines than the pipe holds (64 KiB), and, with 4 KiB paths, more
    // than the 8 MiB the gateway keeps unwritten: the rest is dropped.
    let long = "x".repeat(4000);
    let started = Instant::now();
    for chunk in 0..30 {
        let rs = futures_util::future::join_all((0..100).map(|i| {
            c.get(format!("http://{}/r/{chunk}/{i}/{long}", gw.public))
                .send()
        }))
        .await;
        for r in rs {
            assert_eq!(r.unwrap().status(), 200);
        }
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    // A SIGHUP reload applies.
    replace(&file, &routes(&legacy.url(), 10));
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &gw.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while percent(gw.admin).await != 10.0 {
        assert!(Instant::now() < deadline, "the SIGHUP reload did not apply");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // So does one through the admin API, which answers.
    replace(&file, &routes(&legacy.url(), 20));
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        c.post(format!("http://{}/admin/reload", gw.admin)).send(),
    )
    .await
    .expect("POST /admin/reload answered")
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(percent(gw.admin).await, 20.0);
    // The dropped lines are counted.
    let m = c
        .get(format!("http://{}/metrics", gw.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dropped = metric(&m, "strangler_log_lines_dropped_total").unwrap();
    assert!(dropped > 0.0, "{dropped}");
    // SIGTERM: /readyz turns 503 at once, and the process exits within the drain timeout.
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &gw.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let term = Instant::now();
    let deadline = term + Duration::from_secs(5);
    loop {
        match c.get(format!("http://{}/readyz", gw.admin)).send().await {
            Ok(r) if r.status() == 503 => break,
            Ok(_) => {}
            // Already gone: drained and exited.
            Err(_) => break,
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed 200 after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = term + Duration::from_secs(8);
    loop {
        if let Some(status) = gw.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the gateway did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes `text` to `file` the way editors do: a temporary file renamed over it.
fn replace(file: &std::path::Path, text: &str) {
    let tmp = file.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stdout_never_stops_a_single_threaded_gateway() {
    stalled_stdout_keeps_serving(Some("1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stdout_never_stops_the_default_gateway() {
    stalled_stdout_keeps_serving(None).await;
}
