//! Plans that fail safe, end to end: a real `strangler serve` process (as `nobody`, through
//! `setpriv`, where file permissions are the point: CI runs as root, whom permissions do
//! not stop), real upstreams, steady client traffic, the CLI and `strangler plan run` as
//! people use them.
//!
//! - a rollback the routes file cannot take still takes the new share to legacy at once,
//!   survives a reload of the stale file, and reaches the file once it can be written;
//! - a plan whose progress cannot be saved does not start, and pauses when its saves fail;
//! - a runner's lease lapses, and a person on a gateway takes the plan back;
//! - what the status says is what is in force: a changed plan file, a failed write, an
//!   aborted pending plan, the step numbers, plans loaded by every reload;
//! - no blind spots: a diverted share, the shadow gate's window, the watch after the last
//!   step, `max_wait`, few sticky keys, `on_transition`.

use crate::support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::faults::{FaultServer, Mode};
use support::plans::*;
use support::prometheus::Prometheus;
use support::{Flaky, GatewayProcess, client, get_json, get_text, is_root, metric, plan_setup};

const NOBODY: u32 = 65534;

/// The routes file and plans folder: `orders-read` at 0 (with `extra` under its service),
/// and `plan` as `orders-rollout`.
fn setup(legacy: &str, new: &str, extra: &str, plan: &str) -> (tempfile::TempDir, PathBuf) {
    plan_setup(legacy, new, extra, "percent: 0", plan)
}

/// Legacy and the new side (each a [`Flaky`] upstream), and the routes file and plans
/// folder of [`setup`] on them.
async fn flaky_setup(extra: &str, plan: &str) -> (Flaky, Flaky, tempfile::TempDir, PathBuf) {
    let (legacy, new) = (Flaky::start().await, Flaky::start().await);
    let (dir, routes) = setup(&legacy.url(), &new.url(), extra, plan);
    (legacy, new, dir, routes)
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Gives `nobody` the folder and everything in it.
fn give_to_nobody(dir: &Path) {
    chmod(dir, 0o755);
    for entry in walk(dir) {
        std::os::unix::fs::chown(&entry, Some(NOBODY), Some(NOBODY)).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

async fn post(url: String) -> (u16, Value) {
    let r = client().post(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn plan_op(gw: &GatewayProcess, op: &str) -> (u16, Value) {
    post(format!(
        "http://{}/admin/plans/orders-rollout/{op}",
        gw.admin
    ))
    .await
}

/// Waits (up to `secs`) until the plan's status satisfies `check`; the status then.
async fn wait_status(
    gw: &GatewayProcess,
    secs: u64,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = status(gw, "orders-rollout").await;
        if check(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "never {what}: {}",
            serde_json::to_string_pretty(&s).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn last_transition(s: &Value) -> Value {
    s["history"].as_array().unwrap().last().unwrap().clone()
}

fn series(name: &str, labels: &str) -> String {
    format!("{name}{{{labels}}}")
}

const PLAN: &str = "plan=\"orders-rollout\"";

/// Waits (up to `secs`) for a log line of the gateway holding `needle`.
fn wait_line(gw: &GatewayProcess, needle: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match gw.lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(_) => panic!("no log line with {needle:?} within {secs}s"),
        }
    }
}

// -------------------------------------------------------------------------------------
// 1. A rollback that cannot be written still takes the traffic off the new side
// -------------------------------------------------------------------------------------

/// The gateway runs as `nobody`; mid-plan, the routes file's folder becomes read-only (a
/// `chmod 555` during an incident). The new side fails: the rollback takes its share to
/// legacy at once, in memory, and says so everywhere; a reload of the stale file keeps it;
/// once the folder can be written, the file gets 0%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_the_routes_file_cannot_take_is_held_in_memory_until_the_file_catches_up() {
    if !is_root() {
        eprintln!("skipped: a gateway running as another user needs root (CI runs as root)");
        return;
    }
    let (_legacy, new, dir, routes) = flaky_setup("", "route: orders-read\nsteps:\n  - { percent: 50, hold: 1h }\n  - { percent: 100 }\nguard:\n  min_requests: 30\n  max_error_rate_delta: 0.01\non_fail: rollback\n").await;
    give_to_nobody(dir.path());
    let gw = GatewayProcess::spawn_as(&routes, NOBODY, NOBODY).await;
    let traffic = Traffic::start(gw.public);
    start_plan(&format!("http://{}", gw.admin));
    assert_eq!(route_entry(gw.admin, "orders-read").await["percent"], 50);
    // The folder is made read-only: the gateway can no longer replace the routes file.
    chmod(dir.path(), 0o555);
    new.fail_permille.store(1000, Ordering::Relaxed);
    let s = wait_state(&gw, "orders-rollout", "rolled_back", 30).await;
    drop(traffic);
    // In force: 0, whatever the file says.
    let r = route_entry(gw.admin, "orders-read").await;
    assert_eq!(r["percent"], 0, "{r}");
    assert_eq!(r["file_percent"], 50, "{r}");
    assert_eq!(r["override"]["plan"], "orders-rollout", "{r}");
    assert!(percent_in(&routes).contains("percent: 50"));
    let t = last_transition(&s);
    assert_eq!(
        (t["to"].as_str(), t["percent"].as_f64()),
        (Some("rolled_back"), Some(0.0))
    );
    assert!(
        t["reason"].as_str().unwrap().contains("held in memory"),
        "{t}"
    );
    assert!(
        s["override"]["message"]
            .as_str()
            .unwrap()
            .contains("the routes file says 50%"),
        "{s}"
    );
    assert!(s["unpublished"]["attempts"].as_u64().unwrap() >= 1, "{s}");
    let m = gateway_metrics(&gw).await;
    let route = "route=\"orders-read\"";
    assert_eq!(
        metric(&m, &series("strangler_route_percent", route)),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, &series("strangler_route_override", route)),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            &format!("strangler_plan_state{{{PLAN},state=\"rolled_back\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, &series("strangler_plan_unpublished", PLAN)),
        Some(1.0)
    );
    let failures = metric(
        &m,
        &format!("strangler_plan_write_failures_total{{file=\"routes\",{PLAN}}}"),
    );
    assert!(failures.unwrap_or(0.0) >= 1.0, "{m}");
    // Clients get legacy only: the new side answers nothing but 500s now.
    let counted = CountedTraffic::start(gw.public);
    counted.more(200, 20).await;
    let (ok, bad) = counted.finish().await;
    assert!(ok >= 200 && bad.is_empty(), "{ok} ok, {bad:?}");
    // A reload of the stale file (changed, but still saying 50%) does not undo it.
    let before = get_json(format!("http://{}/admin/routes", gw.admin)).await["config_hash"].clone();
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&routes)
            .unwrap();
        writeln!(f, "# touched during the incident").unwrap();
    }
    let (code, reloaded) = post(format!("http://{}/admin/reload", gw.admin)).await;
    assert_eq!(code, 200, "{reloaded}");
    assert_ne!(reloaded["config_hash"], before);
    let r = route_entry(gw.admin, "orders-read").await;
    assert_eq!(
        (r["percent"].as_f64(), r["file_percent"].as_f64()),
        (Some(0.0), Some(50.0)),
        "{r}"
    );
    // The folder can be written again: the file catches up (retried with backoff).
    chmod(dir.path(), 0o755);
    let deadline = Instant::now() + Duration::from_secs(75);
    while !percent_in(&routes).contains("percent: 0") {
        assert!(Instant::now() < deadline, "the routes file never caught up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = wait_metrics(&gw, 10, "published", |m| {
        metric(m, &series("strangler_plan_unpublished", PLAN)) == Some(0.0)
    })
    .await;
    assert_eq!(
        metric(&m, &series("strangler_route_override", route)),
        Some(0.0),
        "{m}"
    );
    let r = route_entry(gw.admin, "orders-read").await;
    assert!(r["override"].is_null(), "{r}");
    assert_eq!(r["percent"], 0);
}

/// `plan run`: the rollback's `--after-change` fails; the plan is `rolled_back` (not
/// paused), the runner's metrics say the rollback is not yet published, and it is retried
/// until it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_run_retries_a_rollback_whose_publication_fails_until_it_is_published() {
    let (_legacy, new, dir, routes) = flaky_setup("", "route: orders-read\nsteps:\n  - { percent: 20, hold: 2s }\n  - { percent: 50, hold: 1h }\n  - { percent: 100 }\nguard:\n  min_requests: 40\n  max_error_rate_delta: 0.01\non_fail: rollback\n").await;
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    let prom = Prometheus::start(&[gw.admin]).await;
    let _traffic = Traffic::start(gw.public);
    let (flag, log) = (
        dir.path().join("publishing-broken"),
        dir.path().join("published.log"),
    );
    let admin = support::dead_addr().await;
    let mut runner = std::process::Command::new(env!("CARGO_BIN_EXE_strangler"))
        .args(["plan", "run", "orders-rollout", "--config"])
        .arg(&routes)
        .args(["--prometheus", &prom.url, "--interval", "1s", "--admin"])
        .arg(admin.to_string())
        .arg("--after-change")
        .arg(format!(
            "test ! -e {} && echo \"$STRANGLER_ROUTE $STRANGLER_PERCENT\" >> {}",
            flag.display(),
            log.display()
        ))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _runner = Kill(&mut runner);
    let state = dir.path().join("plans/.orders-rollout.state.json");
    let progress = |f: &dyn Fn(&Value) -> bool| {
        let state = state.clone();
        let text = std::fs::read_to_string(state).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        f(&v).then_some(v)
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    // (`step_index`: the step's index from 0; `step` in progress files of earlier versions.)
    while progress(&|p| p.get("step_index").or(p.get("step")) == Some(&Value::from(1))).is_none() {
        assert!(
            Instant::now() < deadline,
            "never at the 50% step: {:?}",
            std::fs::read_to_string(&state)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Publishing breaks, then the new side does.
    std::fs::write(&flag, "").unwrap();
    new.fail_permille.store(400, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(90);
    let p = loop {
        if let Some(p) = progress(&|p| p["state"] != "running") {
            break p;
        }
        assert!(Instant::now() < deadline, "never left running");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(p["state"], "rolled_back", "{p}");
    assert!(p["unpublished"].is_object(), "{p}");
    // Its file is written, its publication is not.
    assert!(percent_in(&routes).contains("percent: 0"));
    let runner_metrics = || get_text(format!("http://{admin}/metrics"));
    let m = runner_metrics().await;
    assert_eq!(
        metric(&m, &series("strangler_plan_unpublished", PLAN)),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            &format!("strangler_plan_state{{{PLAN},state=\"rolled_back\"}}")
        ),
        Some(1.0)
    );
    // Publishing works again: the retry publishes 0%.
    std::fs::remove_file(&flag).unwrap();
    let deadline = Instant::now() + Duration::from_secs(75);
    loop {
        let m = runner_metrics().await;
        if metric(&m, &series("strangler_plan_unpublished", PLAN)) == Some(0.0) {
            let failures = metric(
                &m,
                &format!("strangler_plan_write_failures_total{{file=\"routes\",{PLAN}}}"),
            );
            assert!(failures.unwrap_or(0.0) >= 1.0, "{m}");
            break;
        }
        assert!(Instant::now() < deadline, "never published:\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let published = std::fs::read_to_string(&log).unwrap();
    assert!(published.ends_with("orders-read 0\n"), "{published}");
    assert_eq!(progress(&|_| true).unwrap()["state"], "rolled_back");
}

struct Kill<'a>(&'a mut Child);

impl Drop for Kill<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// -------------------------------------------------------------------------------------
// 2. Progress that cannot be saved
// -------------------------------------------------------------------------------------

/// The plans folder is not the gateway's to write: `start` is refused (409, the CLI exits
/// 1) and nothing moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_whose_progress_cannot_be_saved_does_not_start() {
    if !is_root() {
        eprintln!("skipped: a gateway running as another user needs root (CI runs as root)");
        return;
    }
    let (_legacy, _new, dir, routes) = flaky_setup(
        "",
        "route: orders-read\nsteps:\n  - { percent: 10, hold: 1s }\n  - { percent: 100 }\n",
    )
    .await;
    give_to_nobody(dir.path());
    // The plans folder stays root's.
    std::os::unix::fs::chown(dir.path().join("plans"), Some(0), Some(0)).unwrap();
    let gw = GatewayProcess::spawn_as(&routes, NOBODY, NOBODY).await;
    let admin = format!("http://{}", gw.admin);
    let (ok, out, err) = cli(&["plan", "start", "orders-rollout", "--admin", &admin]);
    assert!(!ok, "{out}");
    assert!(err.contains("cannot be saved"), "{err}");
    let (code, body) = plan_op(&gw, "start").await;
    assert_eq!(code, 409);
    assert_eq!(body["error"], "progress_not_saved", "{body}");
    assert!(percent_in(&routes).contains("percent: 0"));
    let s = status(&gw, "orders-rollout").await;
    assert_eq!(s["state"], "pending", "{s}");
    assert_eq!(s["percent"], 0, "{s}");
    let m = gateway_metrics(&gw).await;
    assert!(
        metric(
            &m,
            &format!("strangler_plan_write_failures_total{{file=\"progress\",{PLAN}}}")
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{m}"
    );
}

/// A running plan whose saves start failing pauses, says why, and keeps its percentage;
/// it cannot be resumed until they work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_plan_whose_saves_fail_pauses_and_keeps_its_percentage() {
    if !is_root() {
        eprintln!("skipped: a gateway running as another user needs root (CI runs as root)");
        return;
    }
    let (_legacy, _new, dir, routes) = flaky_setup(
        "",
        "route: orders-read\nsteps:\n  - { percent: 10, hold: 1h }\n  - { percent: 100 }\n",
    )
    .await;
    give_to_nobody(dir.path());
    let gw = GatewayProcess::spawn_as(&routes, NOBODY, NOBODY).await;
    let _traffic = Traffic::start(gw.public);
    start_plan(&format!("http://{}", gw.admin));
    chmod(&dir.path().join("plans"), 0o555);
    let s = wait_state(&gw, "orders-rollout", "paused", 10).await;
    let t = last_transition(&s);
    assert!(
        t["reason"].as_str().unwrap().contains("cannot be saved"),
        "{t}"
    );
    assert_eq!(t["percent"], 10.0);
    assert_eq!(route_entry(gw.admin, "orders-read").await["percent"], 10);
    assert!(percent_in(&routes).contains("percent: 10"));
    let (code, body) = plan_op(&gw, "resume").await;
    assert_eq!(
        (code, body["error"].as_str()),
        (409, Some("progress_not_saved")),
        "{body}"
    );
    chmod(&dir.path().join("plans"), 0o755);
    let (code, body) = plan_op(&gw, "resume").await;
    assert_eq!(
        (code, body["state"].as_str()),
        (200, Some("running")),
        "{body}"
    );
}

/// A gateway whose plan's saved step is not the percentage in force (its last change was
/// not saved) says so and pauses: it never puts the older step back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_finding_another_percentage_than_the_saved_step_pauses_and_says_so() {
    let (_legacy, _new, dir, routes) = flaky_setup("", "route: orders-read\nsteps:\n  - { percent: 10, hold: 1s }\n  - { percent: 40, hold: 1h }\n  - { percent: 100 }\nguard:\n  min_requests: 30\n  max_error_rate_delta: 0.01\n").await;
    let mut gw = GatewayProcess::spawn(&routes, &[]).await;
    let traffic = Traffic::start(gw.public);
    start_plan(&format!("http://{}", gw.admin));
    wait_status(&gw, 30, "at 40%", |s| s["percent"] == 40).await;
    drop(traffic);
    gw.signal("-KILL");
    gw.exit_status().await;
    // The progress as it was before the last change: its save was lost.
    let state = dir.path().join("plans/.orders-rollout.state.json");
    let mut p: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let key = if p.get("step_index").is_some() {
        "step_index"
    } else {
        "step"
    };
    p[key] = 0.into();
    p["written_bp"] = 1000.into();
    p["history"].as_array_mut().unwrap().pop();
    std::fs::write(&state, serde_json::to_string(&p).unwrap()).unwrap();
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    let s = wait_state(&gw, "orders-rollout", "paused", 10).await;
    let reason = last_transition(&s)["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("saved progress") && reason.contains("40%"),
        "{reason}"
    );
    // Time passing is what is tested: nothing writes the file after the pause.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(percent_in(&routes).contains("percent: 40"));
    assert_eq!(route_entry(gw.admin, "orders-read").await["percent"], 40);
}

// -------------------------------------------------------------------------------------
// 3. A person always wins over `plan run`
// -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_run_refuses_an_invalid_interval_before_writing_anything() {
    let (_legacy, _new, dir, routes) = flaky_setup(
        "",
        "route: orders-read\nsteps:\n  - { percent: 10, hold: 1s }\n  - { percent: 100 }\n",
    )
    .await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strangler"))
        .args(["plan", "run", "orders-rollout", "--config"])
        .arg(&routes)
        .args(["--prometheus", "http://127.0.0.1:9", "--interval", "0s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--interval"), "{err}");
    assert!(!dir.path().join("plans/.orders-rollout.state.json").exists());
    assert!(percent_in(&routes).contains("percent: 0"));
}

/// A runner holds a lease. While it lives, gateways refuse to operate its plan; once it
/// is gone (killed: its lease lapses after three intervals; stopped: it gives the lease
/// up), a person on a gateway pauses, aborts or takes the plan over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_on_a_gateway_takes_a_plan_back_from_a_runner_that_went_away() {
    let (_legacy, _new, dir, routes) = flaky_setup(
        "",
        "route: orders-read\nsteps:\n  - { percent: 10, hold: 1h }\n  - { percent: 100 }\n",
    )
    .await;
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    let dead = support::dead_addr().await;
    let runner = |routes: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_strangler"))
            .args(["plan", "run", "orders-rollout", "--config"])
            .arg(routes)
            .args([
                "--prometheus",
                &format!("http://{dead}"),
                "--interval",
                "1s",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut first = runner(&routes);
    let s = wait_status(&gw, 20, "driven by plan run", |s| {
        s["driver"] == "plan run" && s["state"] == "running" && s["runner"]["lapsed"] == false
    })
    .await;
    assert!(
        s["runner"]["holder"]
            .as_str()
            .unwrap()
            .starts_with("plan run "),
        "{s}"
    );
    let (code, body) = plan_op(&gw, "pause").await;
    assert_eq!(
        (code, body["error"].as_str()),
        (409, Some("driven_elsewhere")),
        "{body}"
    );
    // Killed: no chance to give the lease up. It lapses after three intervals.
    first.kill().unwrap();
    first.wait().unwrap();
    let s = wait_status(&gw, 15, "lapsed", |s| s["runner"]["lapsed"] == true).await;
    assert!(
        s["waiting_for"]
            .as_str()
            .unwrap()
            .contains("runner not seen for"),
        "{s}"
    );
    let (code, body) = plan_op(&gw, "pause").await;
    assert_eq!(
        (code, body["state"].as_str()),
        (200, Some("paused")),
        "{body}"
    );
    assert_eq!(body["driver"], "gateway");
    let (code, body) = plan_op(&gw, "resume").await;
    assert_eq!(
        (code, body["state"].as_str()),
        (200, Some("running")),
        "{body}"
    );
    // The gateway drives it now: a new runner refuses to take it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strangler"))
        .args(["plan", "run", "orders-rollout", "--config"])
        .arg(&routes)
        .args([
            "--prometheus",
            &format!("http://{dead}"),
            "--interval",
            "1s",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in a gateway"));
    let (code, _) = plan_op(&gw, "abort").await;
    assert_eq!(code, 200);

    // A runner stopped on purpose gives its lease up: a person may act at once.
    std::fs::remove_file(dir.path().join("plans/.orders-rollout.state.json")).unwrap();
    let mut second = runner(&routes);
    wait_status(&gw, 20, "driven by the second runner", |s| {
        s["driver"] == "plan run" && s["state"] == "running" && s["runner"]["lapsed"] == false
    })
    .await;
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(second.id().to_string())
        .status();
    let exit = second.wait().unwrap();
    assert!(exit.success(), "{exit}");
    let (code, body) = plan_op(&gw, "abort").await;
    assert_eq!(
        (code, body["state"].as_str()),
        (200, Some("aborted")),
        "{body}"
    );
    // A progress file deleted is a plan not started, on every gateway.
    std::fs::remove_file(dir.path().join("plans/.orders-rollout.state.json")).unwrap();
    wait_status(&gw, 5, "pending again", |s| {
        s["state"] == "pending" && s["driver"] == "gateway"
    })
    .await;
}

// -------------------------------------------------------------------------------------
// 4. What the status says is what is in force
// -------------------------------------------------------------------------------------

/// The plan file is edited mid-run: the plan keeps the steps it started with and pauses,
/// the status shows them and the percentage in force, and the config hash names the change;
/// resume takes the new file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_file_edited_mid_run_pauses_the_plan_on_the_steps_it_started_with() {
    let (_legacy, _new, dir, routes) = flaky_setup("", "route: orders-read\nsteps:\n  - { percent: 10, hold: 1s }\n  - { percent: 20, hold: 1h }\n  - { percent: 30 }\n  - { percent: 40 }\n  - { percent: 100 }\nguard:\n  min_requests: 30\n  max_error_rate_delta: 0.01\n").await;
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    let traffic = Traffic::start(gw.public);
    start_plan(&format!("http://{}", gw.admin));
    wait_status(&gw, 30, "at 20%", |s| s["percent"] == 20).await;
    drop(traffic);
    let hash = get_json(format!("http://{}/admin/routes", gw.admin)).await["config_hash"].clone();
    std::fs::write(
        dir.path().join("plans/orders-rollout.yaml"),
        "route: orders-read\nsteps:\n  - { percent: 5, hold: 1h }\n  - { percent: 7 }\n",
    )
    .unwrap();
    let s = wait_state(&gw, "orders-rollout", "paused", 15).await;
    assert!(
        last_transition(&s)["reason"]
            .as_str()
            .unwrap()
            .contains("plan file changed"),
        "{s}"
    );
    assert_eq!(
        (s["step"].as_u64(), s["step_count"].as_u64()),
        (Some(2), Some(5)),
        "{s}"
    );
    assert_eq!(s["percent"], 20);
    assert!(
        s["plan_file_changed"]["message"]
            .as_str()
            .unwrap()
            .contains("5% → 7%"),
        "{s}"
    );
    let now = get_json(format!("http://{}/admin/routes", gw.admin)).await["config_hash"].clone();
    assert_ne!(now, hash, "plan files are part of the config's identity");
    let line = wait_line(&gw, "plan file changed: ", 10);
    assert!(line.contains("orders-rollout.yaml"), "{line}");
    // Resumed onto the new steps: the last one at or below 20%, and it is the last.
    let (code, body) = plan_op(&gw, "resume").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (body["state"].as_str(), body["percent"].as_f64()),
        (Some("done"), Some(7.0)),
        "{body}"
    );
    assert_eq!(
        (body["step"].as_u64(), body["step_count"].as_u64()),
        (Some(2), Some(2))
    );
    assert!(percent_in(&routes).contains("percent: 7"));
}

/// A step whose write fails is never reported as made: the plan pauses on the step in force
/// and says which write failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_write_fails_is_reported_at_the_percentage_in_force() {
    let (_legacy, _new, _dir, routes) = flaky_setup("", "route: orders-read\nsteps:\n  - { percent: 10, hold: 3s }\n  - { percent: 50, hold: 1h }\n  - { percent: 100 }\nguard:\n  min_requests: 30\n  max_error_rate_delta: 0.01\n").await;
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    let _traffic = Traffic::start(gw.public);
    start_plan(&format!("http://{}", gw.admin));
    chmod(&routes, 0o444);
    let s = wait_state(&gw, "orders-rollout", "paused", 30).await;
    let t = last_transition(&s);
    assert!(
        t["reason"].as_str().unwrap().contains("could not set 50%"),
        "{t}"
    );
    assert_eq!(
        (t["step"].as_u64(), t["percent"].as_f64()),
        (Some(1), Some(10.0)),
        "{t}"
    );
    assert_eq!(
        (s["step"].as_u64(), s["percent"].as_f64()),
        (Some(1), Some(10.0)),
        "{s}"
    );
    let made_50 = s["history"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["percent"] == 50.0);
    assert!(!made_50, "{s}");
}

/// Aborting a plan that never started records the percentage in force (0), and the
/// command line counts steps as the dashboard does, from 1, with no `null` anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_and_the_cli_show_the_percentage_in_force_and_steps_from_1() {
    let (_legacy, _new, _dir, routes) = flaky_setup(
        "",
        "route: orders-read\nsteps:\n  - { percent: 10, hold: 1h }\n  - { percent: 100 }\n",
    )
    .await;
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    let admin = format!("http://{}", gw.admin);
    let (ok, out, _) = cli(&["plan", "status", "orders-rollout", "--admin", &admin]);
    assert!(ok);
    assert!(!out.contains("null"), "{out}");
    assert!(
        out.contains("not started") && out.contains("0% in force"),
        "{out}"
    );
    let (code, body) = plan_op(&gw, "abort").await;
    assert_eq!(code, 200);
    assert_eq!(last_transition(&body)["percent"], 0.0, "{body}");
    let out = start_plan(&admin);
    assert!(
        out.contains("step 1 of 2") && out.contains("10% in force"),
        "{out}"
    );
    assert!(!out.contains("null"), "{out}");
}

/// A plan file added to the folder is loaded by `POST /admin/reload`, by SIGHUP and by the
/// watch, each naming what changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_plan_file_is_loaded_by_every_reload() {
    let (_legacy, _new, dir, routes) = flaky_setup(
        "",
        "route: orders-read\nsteps:\n  - { percent: 10, hold: 1h }\n  - { percent: 100 }\n",
    )
    .await;
    // More routes for more plans (one plan per route).
    let text = std::fs::read_to_string(&routes).unwrap();
    let more: String = ["b", "c", "d"]
        .iter()
        .map(|r| format!("  - name: {r}\n    match: {{ prefix: /{r} }}\n    service: orders\n"))
        .collect();
    std::fs::write(&routes, format!("{text}{more}")).unwrap();
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    let names = || async {
        let v = get_json(format!("http://{}/admin/plans", gw.admin)).await;
        v["plans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names().await, ["orders-rollout"]);
    let plan = |route: &str| format!("route: {route}\nsteps:\n  - {{ percent: 100 }}\n");
    let hash = get_json(format!("http://{}/admin/routes", gw.admin)).await["config_hash"].clone();
    std::fs::write(dir.path().join("plans/b.yaml"), plan("b")).unwrap();
    let (code, r) = post(format!("http://{}/admin/reload", gw.admin)).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["changed"], true, "{r}");
    assert_ne!(r["config_hash"], hash);
    assert!(names().await.contains(&"b".to_string()));
    std::fs::write(dir.path().join("plans/c.yaml"), plan("c")).unwrap();
    gw.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !names().await.contains(&"c".to_string()) {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not load the new plan"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::write(dir.path().join("plans/d.yaml"), plan("d")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !names().await.contains(&"d".to_string()) {
        assert!(
            Instant::now() < deadline,
            "the watch did not load the new plan"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each reload's log line names its trigger and what changed.
    for (plan, trigger) in [
        ("b", "admin API"),
        ("c", "SIGHUP"),
        ("d", "plan file added"),
    ] {
        let line = wait_line(
            &gw,
            &format!(
                "plan file added: {}",
                dir.path().join(format!("plans/{plan}.yaml")).display()
            ),
            10,
        );
        assert!(line.contains(&format!("\"trigger\":\"{trigger}")), "{line}");
    }
}

// -------------------------------------------------------------------------------------
// 6. No blind spots
// -------------------------------------------------------------------------------------

/// With health checks on, the new service goes down: clients see no errors (its share goes
/// to legacy), and the plan's guard fails on the diversion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_new_share_is_diverted_fails_its_guard() {
    let legacy = Flaky::start().await;
    let new = FaultServer::start("orders").await;
    let (_dir, routes) = setup(
        &legacy.url(),
        &new.url(),
        "    health: { path: /healthz, interval: 200ms, timeout: 200ms, unhealthy_after: 2, healthy_after: 1 }\n",
        "route: orders-read\nsteps:\n  - { percent: 50, hold: 1h }\n  - { percent: 100 }\nguard:\n  min_requests: 30\n  max_error_rate_delta: 0.01\non_fail: rollback\n",
    );
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    let _traffic = Traffic::start(gw.public);
    start_plan(&format!("http://{}", gw.admin));
    // The step is under way: the new side has served its share.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(&gw, "orders-rollout").await;
        if s["check"]["new_requests"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new side served nothing: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    new.set(Mode::Status(503));
    new.set_health(Some(503));
    let s = wait_state(&gw, "orders-rollout", "rolled_back", 20).await;
    let t = last_transition(&s);
    assert!(
        t["reason"]
            .as_str()
            .unwrap()
            .contains("no healthy instance of orders"),
        "{t}"
    );
    assert!(percent_in(&routes).contains("percent: 0"));
}

/// The shadow gate judges the copies of its window, since the route last changed: a service
/// that went bad is not let in, however long it matched before; once fixed, it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shadow_gate_judges_recent_copies() {
    use support::{Reply, Upstream};
    let legacy = Upstream::scripted(|_| Reply::json(&serde_json::json!({"total": 10}))).await;
    let broken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = broken.clone();
    let new = Upstream::scripted(move |a| {
        // When broken, one copy in ten differs.
        let bad = flag.load(Ordering::Relaxed) && a.id().unwrap_or(0) % 10 == 0;
        Reply::json(&serde_json::json!({"total": if bad { 11 } else { 10 }}))
    })
    .await;
    // Slots of a second, so that a window of seconds is one.
    let (_dir, routes) = plan_setup(
        &legacy.url(),
        &new.url(),
        "compare:\n  window: 60s\n  resolution: 1s\n  retention: 60s\n",
        "percent: 0\n    shadow: { ignore_headers: [x-upstream] }",
        "route: orders-read\nsteps:\n  - { percent: 10, hold: 1h }\n  - { percent: 100 }\nguard:\n  min_requests: 20\n  min_shadow_match: 0.99\n  shadow_window: 3s\n",
    );
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    let send = |from: u64, n: u64| {
        let public = gw.public;
        async move {
            let c = client();
            for i in from..from + n {
                c.get(format!("http://{public}/api/orders/{i}"))
                    .header("x-test-id", i.to_string())
                    .send()
                    .await
                    .unwrap();
            }
        }
    };
    // A long good record, then the service breaks.
    send(0, 300).await;
    // Time passing is what is tested: the good record leaves the gate's 3 s window.
    tokio::time::sleep(Duration::from_secs(4)).await;
    broken.store(true, Ordering::Relaxed);
    send(1000, 200).await;
    let (code, body) = plan_op(&gw, "start").await;
    assert_eq!(
        (code, body["error"].as_str()),
        (409, Some("shadow_not_matching")),
        "{body}"
    );
    assert!(
        body["detail"].as_str().unwrap().contains("last 3s"),
        "{body}"
    );
    // Fixed: within the window, it is let in.
    broken.store(false, Ordering::Relaxed);
    // The same: the broken copies leave the window.
    tokio::time::sleep(Duration::from_secs(4)).await;
    send(2000, 100).await;
    let (code, body) = plan_op(&gw, "start").await;
    assert_eq!(
        (code, body["state"].as_str()),
        (200, Some("running")),
        "{body}"
    );
}

/// After the last step the plan watches: a new side that starts failing at 100% is rolled
/// back (weighed against legacy's figures of the last split step).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_plan_watches_and_rolls_back_a_new_side_that_starts_failing() {
    let (_legacy, new, _dir, routes) = flaky_setup("", "route: orders-read\nsteps:\n  - { percent: 50, hold: 1s }\n  - { percent: 100 }\nguard:\n  min_requests: 30\n  max_error_rate_delta: 0.01\nafter:\n  watch: 1h\non_fail: rollback\n").await;
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    let _traffic = Traffic::start(gw.public);
    start_plan(&format!("http://{}", gw.admin));
    let s = wait_state(&gw, "orders-rollout", "watching", 30).await;
    assert_eq!(s["percent"], 100);
    let m = gateway_metrics(&gw).await;
    assert_eq!(
        metric(
            &m,
            &format!("strangler_plan_state{{{PLAN},state=\"watching\"}}")
        ),
        Some(1.0)
    );
    new.fail_permille.store(300, Ordering::Relaxed);
    let s = wait_state(&gw, "orders-rollout", "rolled_back", 30).await;
    let t = last_transition(&s);
    assert!(
        t["reason"].as_str().unwrap().contains("during the watch"),
        "{t}"
    );
    assert_eq!(t["check"]["legacy_from_reference"], true, "{t}");
    assert!(percent_in(&routes).contains("percent: 0"));
}

/// A step still waiting for evidence `max_wait` after its hold pauses and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_waiting_past_max_wait_pauses_and_says_why() {
    let (_legacy, _new, _dir, routes) = flaky_setup("", "route: orders-read\nsteps:\n  - { percent: 50, hold: 1s, max_wait: 2s }\n  - { percent: 100 }\nguard:\n  min_requests: 100000\n").await;
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    let _traffic = Traffic::start(gw.public);
    start_plan(&format!("http://{}", gw.admin));
    let s = wait_state(&gw, "orders-rollout", "paused", 15).await;
    let reason = last_transition(&s)["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("max_wait") && reason.contains("more traffic: legacy"),
        "{reason}"
    );
    assert_eq!(s["percent"], 50);
}

/// A step whose share covers very few users (5% of 40 sticky keys) says so, with the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_covering_few_sticky_keys_says_so() {
    let (_legacy, _new, _dir, routes) = flaky_setup(
        "sticky: { header: x-user-id }\n",
        "route: orders-read\nsteps:\n  - { percent: 5, hold: 1h }\n  - { percent: 100 }\n",
    )
    .await;
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    start_plan(&format!("http://{}", gw.admin));
    let c = client();
    for round in 0..5 {
        for user in 0..40 {
            c.get(format!("http://{}/api/orders/{round}", gw.public))
                .header("x-user-id", format!("user-{user}"))
                .send()
                .await
                .unwrap();
        }
    }
    let s = status(&gw, "orders-rollout").await;
    let keys = s["sticky"]["keys"].as_u64().unwrap();
    let new_keys = s["sticky"]["new_keys"].as_u64().unwrap();
    assert!((38..=42).contains(&keys), "{s}");
    assert!(new_keys < 10, "{s}");
    let warning = s["sticky"]["warning"].as_str().unwrap();
    assert!(
        warning.contains(&format!("about {new_keys} distinct sticky keys")),
        "{warning}"
    );
    let (_, out, _) = cli(&["plan", "status", "--admin", &format!("http://{}", gw.admin)]);
    assert!(out.contains("sticky keys"), "{out}");
}

/// A gateway-driven plan runs its `on_transition` command on each transition, the
/// transition in its environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_runs_its_on_transition_command_on_each_transition() {
    let (legacy, new) = (Flaky::start().await, Flaky::start().await);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("transitions.log");
    let (_plans, routes) = setup(
        &legacy.url(),
        &new.url(),
        "",
        &format!(
            "route: orders-read\nsteps:\n  - {{ percent: 10, hold: 1h }}\n  - {{ percent: 100 }}\non_transition: 'echo \"$STRANGLER_PLAN $STRANGLER_FROM $STRANGLER_TO $STRANGLER_STEP $STRANGLER_PERCENT\" >> {}'\n",
            log.display()
        ),
    );
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    start_plan(&format!("http://{}", gw.admin));
    let (code, _) = plan_op(&gw, "pause").await;
    assert_eq!(code, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() == 2 {
            let mut lines: Vec<&str> = text.lines().collect();
            lines.sort_unstable();
            assert_eq!(
                lines,
                [
                    "orders-rollout pending running 1 10",
                    "orders-rollout running paused 1 10"
                ]
            );
            break;
        }
        assert!(Instant::now() < deadline, "{text:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
