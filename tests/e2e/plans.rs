//! Migration plans end to end: a real `strangler serve` process with a routes file and a
//! plans folder, real upstreams on 127.0.0.1:0 (one of which fails on cue), steady client
//! traffic, and the CLI (`strangler plan ...`, `strangler shift`) as a person uses it.
//! Holds are a second or two: the long holds of real plans are the state machine's own
//! tests (`control::plan::engine`), on invented times.

use crate::support;
use support::{get_json, get_text};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::faults::{FaultServer, Mode};
use support::plans::*;
use support::{Flaky, GatewayProcess, client};

/// The test's routes file and plans folder: `orders-read` at 0, and `plan`.
fn setup(legacy: &Flaky, new: &Flaky, plan: &str) -> (tempfile::TempDir, PathBuf) {
    support::plan_setup(
        &legacy.url(),
        &new.url(),
        "",
        "percent: 0        # the plan moves this",
        plan,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_new_side_walks_every_step_to_100_and_the_file_shows_each() {
    let (legacy, new) = (Flaky::start().await, Flaky::start().await);
    let (_dir, routes) = setup(
        &legacy,
        &new,
        "route: orders-read\nsteps:\n  - { percent: 10, hold: 1s }\n  - { percent: 50, hold: 1s }\n  - { percent: 100 }\nguard:\n  min_requests: 30\n  max_error_rate_delta: 0.01\n",
    );
    let original = std::fs::read_to_string(&routes).unwrap();
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    let _traffic = Traffic::start(gw.public);
    let admin = format!("http://{}", gw.admin);
    let out = start_plan(&admin);
    assert!(out.contains("state running"), "{out}");
    // Every percentage the file shows while the plan runs.
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = percent_in(&routes);
        if seen.last() != Some(&p) {
            seen.push(p);
        }
        if status(&gw, "orders-rollout").await["state"] == "done" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never done; file showed {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let p = percent_in(&routes);
    if seen.last() != Some(&p) {
        seen.push(p);
    }
    let values: Vec<&str> = seen
        .iter()
        .map(|l| l.trim().trim_start_matches("percent:").trim())
        .map(|v| v.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(values, ["10", "50", "100"], "{seen:?}");
    // Only the value changed: the comments and the rest are intact.
    let now = std::fs::read_to_string(&routes).unwrap();
    assert_eq!(
        now,
        original.replace("percent: 0        #", "percent: 100        #"),
        "only the value changes"
    );
    let s = status(&gw, "orders-rollout").await;
    let history = s["history"].as_array().unwrap();
    let advanced: Vec<&Value> = history
        .iter()
        .filter(|t| t["reason"].as_str().unwrap().contains("with the guard ok"))
        .collect();
    assert_eq!(advanced.len(), 2, "{history:?}");
    for t in advanced {
        let c = &t["check"];
        assert_eq!(c["verdict"], "ok");
        assert!(c["new_requests"].as_u64().unwrap() >= 30, "{c}");
        assert!(c["legacy_requests"].as_u64().unwrap() >= 30, "{c}");
    }
    let m = get_text(format!("{admin}/metrics")).await;
    assert_eq!(
        support::metric(
            &m,
            "strangler_plan_state{plan=\"orders-rollout\",state=\"done\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        support::metric(&m, "strangler_plan_step{plan=\"orders-rollout\"}"),
        Some(3.0),
        "steps are counted from 1"
    );
    assert_eq!(
        support::metric(&m, "strangler_route_percent{route=\"orders-read\"}"),
        Some(100.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_side_whose_errors_jump_at_the_10_percent_step_is_rolled_back_with_the_figures() {
    let (legacy, new) = (Flaky::start().await, Flaky::start().await);
    let (_dir, routes) = setup(
        &legacy,
        &new,
        "route: orders-read\nsteps:\n  - { percent: 5, hold: 1s }\n  - { percent: 10, hold: 1h }\n  - { percent: 100 }\nguard:\n  min_requests: 30\n  max_error_rate_delta: 0.01\non_fail: rollback\n",
    );
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    let _traffic = Traffic::start(gw.public);
    let admin = format!("http://{}", gw.admin);
    start_plan(&admin);
    // At the 10% step, the new side starts failing a third of its requests.
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&gw, "orders-rollout").await["step"] != 2 {
        assert!(Instant::now() < deadline, "never reached the 10% step");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    new.fail_permille.store(333, Ordering::Relaxed);
    let s = wait_state(&gw, "orders-rollout", "rolled_back", 30).await;
    assert!(
        percent_in(&routes).contains("percent: 0"),
        "{}",
        percent_in(&routes)
    );
    let last = s["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["to"], "rolled_back");
    assert_eq!(last["percent"], 0.0);
    let c = &last["check"];
    assert_eq!(c["verdict"], "worse", "{last}");
    assert!(c["new_errors"].as_u64().unwrap() > 0, "{c}");
    assert!(
        c["errors_log_lr"].as_f64().unwrap() >= c["threshold"].as_f64().unwrap(),
        "{c}"
    );
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains("new error rate higher"),
        "{last}"
    );
    // Rolled back within the hour's hold: at once (an ended plan has no hold left).
    assert!(s["step_seconds"].as_f64().unwrap() < 600.0, "{s}");
    assert!(s["hold_left_seconds"].is_null(), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_traffic_holds_the_plan_and_says_how_much_more_it_needs() {
    let (legacy, new) = (Flaky::start().await, Flaky::start().await);
    let (_dir, routes) = setup(
        &legacy,
        &new,
        "route: orders-read\nsteps:\n  - { percent: 50, hold: 1s }\n  - { percent: 100 }\nguard:\n  min_requests: 100\n",
    );
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    let admin = format!("http://{}", gw.admin);
    start_plan(&admin);
    // A trickle: 20 requests, so at most 20 a side.
    let c = client();
    for i in 0..20 {
        c.get(format!("http://{}/api/orders/{i}", gw.public))
            .send()
            .await
            .unwrap();
    }
    // Until the hold has passed and the guard has counted the trickle.
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = status(&gw, "orders-rollout").await;
        let counted = s["check"]["legacy_requests"].as_u64().unwrap_or(0)
            + s["check"]["new_requests"].as_u64().unwrap_or(0);
        if s["hold_left_seconds"] == 0.0 && counted == 20 {
            break s;
        }
        assert!(Instant::now() < deadline, "the hold never passed: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(s["state"], "running");
    assert_eq!(s["step"], 1, "the hold passed, the data did not come: {s}");
    assert_eq!(s["hold_left_seconds"], 0.0);
    assert_eq!(s["check"]["verdict"], "insufficient_data");
    let more = s["check"]["requests_to_decide"].as_u64().unwrap();
    assert!((80..=100).contains(&more), "{s}");
    // What each side still needs, from its own count.
    let (legacy_n, new_n) = (
        s["check"]["legacy_requests"].as_u64().unwrap(),
        s["check"]["new_requests"].as_u64().unwrap(),
    );
    let waiting = s["waiting_for"].as_str().unwrap();
    assert!(
        waiting.contains(&format!(
            "legacy {} more, new {} more",
            100 - legacy_n,
            100 - new_n
        )),
        "{waiting}"
    );
    let (ok, out, _) = cli(&["plan", "status", "--admin", &admin]);
    assert!(ok);
    assert!(out.contains("more traffic: legacy"), "{out}");
    assert!(percent_in(&routes).contains("percent: 50"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restarted_mid_hold_resumes_the_same_step_with_the_hold_that_remains() {
    let (legacy, new) = (Flaky::start().await, Flaky::start().await);
    let (dir, routes) = setup(
        &legacy,
        &new,
        "route: orders-read\nsteps:\n  - { percent: 10, hold: 1s }\n  - { percent: 20, hold: 30s }\n  - { percent: 100 }\nguard:\n  min_requests: 30\n  max_error_rate_delta: 0.01\n",
    );
    let mut gw = GatewayProcess::spawn(&routes, &[]).await;
    let traffic = Traffic::start(gw.public);
    let admin = format!("http://{}", gw.admin);
    start_plan(&admin);
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&gw, "orders-rollout").await["step"] != 2 {
        assert!(Instant::now() < deadline, "never reached step 2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Until three seconds of the 30 s hold are held (and saved: every second at most).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (before, left_before) = loop {
        let s = status(&gw, "orders-rollout").await;
        let left = s["hold_left_seconds"].as_f64().unwrap();
        if left < 27.0 {
            break (s, left);
        }
        assert!(Instant::now() < deadline, "the hold does not pass: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(left_before < 27.0, "{before}");
    drop(traffic);
    // Killed outright: no chance to save anything more.
    gw.signal("-KILL");
    gw.exit_status().await;
    assert!(dir.path().join("plans/.orders-rollout.state.json").exists());
    // Down for two seconds: time passing is what is tested, it must not count as held.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    let after = status(&gw, "orders-rollout").await;
    assert_eq!(after["state"], "running", "{after}");
    assert_eq!(after["step"], 2, "{after}");
    let left_after = after["hold_left_seconds"].as_f64().unwrap();
    // The hold that remained (less what was held since the last save, a second at most),
    // not a fresh one, and the time the gateway was down not counted as held.
    assert!(
        left_after >= left_before - 0.5 && left_after <= left_before + 1.5,
        "before {left_before}, after {left_after}"
    );
    assert!(percent_in(&routes).contains("percent: 20"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_pauses_resumes_and_aborts_through_the_cli_and_a_manual_shift_pauses_the_plan() {
    let (legacy, new) = (Flaky::start().await, Flaky::start().await);
    let (_dir, routes) = setup(
        &legacy,
        &new,
        "route: orders-read\nsteps:\n  - { percent: 10, hold: 1h }\n  - { percent: 100 }\n",
    );
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    let admin = format!("http://{}", gw.admin);
    let plan = |op: &str| cli(&["plan", op, "orders-rollout", "--admin", &admin]);
    // Not started yet: nothing to pause.
    let (ok, _, err) = plan("pause");
    assert!(!ok);
    assert!(err.contains("pending: cannot pause"), "{err}");
    assert!(plan("start").0);
    let (ok, out, err) = plan("pause");
    assert!(ok, "{err}");
    assert!(out.contains("state paused"), "{out}");
    let (ok, out, _) = plan("resume");
    assert!(ok);
    assert!(out.contains("state running"), "{out}");
    // A person shifts the route by hand: the plan pauses rather than fight.
    let file = routes.to_str().unwrap();
    let (ok, _, err) = cli(&["shift", file, "orders-read", "30"]);
    assert!(ok, "{err}");
    let s = wait_state(&gw, "orders-rollout", "paused", 10).await;
    let reason = s["history"].as_array().unwrap().last().unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("30% by hand"), "{reason}");
    // Abort: the plan stops; the percentage stays the person's.
    let (ok, out, _) = plan("abort");
    assert!(ok);
    assert!(out.contains("state aborted"), "{out}");
    // Time passing is what is tested: nothing writes the file after the abort.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(percent_in(&routes).contains("percent: 30"));
    let (ok, _, err) = plan("resume");
    assert!(!ok);
    assert!(err.contains("aborted: cannot resume"), "{err}");
    // An unknown plan, and an unreachable gateway, say so.
    let (ok, _, err) = cli(&["plan", "start", "nope", "--admin", &admin]);
    assert!(!ok);
    assert!(err.contains("no plan \"nope\""), "{err}");
    let dead = support::dead_addr().await;
    let (ok, _, err) = cli(&["plan", "status", "--admin", &dead.to_string()]);
    assert!(!ok);
    assert!(err.contains("cannot reach the admin API"), "{err}");
}

#[test]
fn check_reports_every_plan_error_with_its_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(
        &routes,
        "listen: 127.0.0.1:0\nlegacy:\n  url: http://127.0.0.1:9\nservices:\n  orders:\n    url: http://127.0.0.1:9\nplans: ../migrations-plan\nroutes:\n  - name: orders-read\n    match: { prefix: /api/orders }\n    service: orders\n    percent: 0\n",
    )
    .unwrap();
    // The folder is relative to the routes file: put the routes file one level down.
    let sub = dir.path().join("routes");
    std::fs::create_dir(&sub).unwrap();
    let routes_in_sub = sub.join("routes.yaml");
    std::fs::rename(&routes, &routes_in_sub).unwrap();
    let plans = dir.path().join("migrations-plan");
    std::fs::create_dir(&plans).unwrap();
    std::fs::write(
        plans.join("a.yaml"),
        "route: orders-read\nsteps:\n  - { percent: 10, hold: 1m }\n  - { percent: 100 }\n",
    )
    .unwrap();
    std::fs::write(
        plans.join("b.yaml"),
        "route: orders-read\nsteps:\n  - { percent: 50, hold: 1m }\n  - { percent: 20 }\n",
    )
    .unwrap();
    std::fs::write(plans.join("c.yaml"), "route: nope\nsteps: []\n").unwrap();
    std::fs::write(
        plans.join("e.yaml"),
        "route: orders-read\nsteps:\n  - { percent: 100 }\n",
    )
    .unwrap();
    std::fs::write(
        plans.join("d.yaml"),
        "route: orders-read\nsteps:\n  - { percent: 10, hold: soon }\nguard: { confidence: 2 }\non_fail: panic\n",
    )
    .unwrap();
    let file = routes_in_sub.to_str().unwrap();
    let (ok, out, _) = cli(&["check", file]);
    assert!(!ok, "{out}");
    let b = plans.join("b.yaml").display().to_string();
    let c = plans.join("c.yaml").display().to_string();
    let d = plans.join("d.yaml").display().to_string();
    let e = plans.join("e.yaml").display().to_string();
    for expected in [
        format!("{b}:4:5: steps[1].percent: found 20 after 50; allowed: percentages that increase"),
        format!(
            "{c}:1:8: route: unknown route \"nope\"; allowed: a route of the routes file (orders-read)"
        ),
        format!("{c}:2:8: steps: found an empty list"),
        format!("{d}:3:26: steps[0].hold: found \"soon\"; allowed: a positive duration"),
        format!("{d}:4:22: guard.confidence: found 2; allowed: a number from 0.5 to below 1"),
        format!("{d}:5:10: on_fail: found \"panic\"; allowed: rollback"),
        format!("{e}:1:1: route: route \"orders-read\" already has a plan"),
    ] {
        assert!(out.contains(&expected), "missing {expected:?} in:\n{out}");
    }
    // Fixed, the plans are listed by check.
    // In file order, each file's errors together.
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("error:")).collect();
    let mut sorted = lines.clone();
    sorted.sort_by_key(|l| l.split(':').nth(1).map(str::to_string));
    assert_eq!(lines, sorted);
    for f in ["b.yaml", "c.yaml", "d.yaml", "e.yaml"] {
        std::fs::remove_file(plans.join(f)).unwrap();
    }
    let (ok, out, _) = cli(&["check", file]);
    assert!(ok, "{out}");
    assert!(
        out.contains("route orders-read, steps 10% → 100%, on_fail rollback"),
        "{out}"
    );
    assert!(out.contains("1 plans"), "{out}");
    // A plan file alone is checked too, all but its route.
    let (ok, out, _) = cli(&["check", plans.join("a.yaml").to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("ok: a plan (route orders-read, steps 10% → 100%"),
        "{out}"
    );
    std::fs::write(
        plans.join("x.yaml"),
        "route: r\nsteps:\n  - { percent: 0 }\n",
    )
    .unwrap();
    let (ok, out, _) = cli(&["check", plans.join("x.yaml").to_str().unwrap()]);
    assert!(!ok);
    assert!(
        out.contains("x.yaml:3:5: steps[0].percent: found 0"),
        "{out}"
    );
    // A plans folder that is not there: check (which may run elsewhere) warns; the
    // gateway refuses to start.
    std::fs::remove_dir_all(&plans).unwrap();
    let (ok, out, _) = cli(&["check", file]);
    assert!(ok, "{out}");
    assert!(out.contains(":7:8: plans: the plans folder"), "{out}");
    assert!(
        out.contains("is not here, so its plans were not checked"),
        "{out}"
    );
    let served = std::process::Command::new(env!("CARGO_BIN_EXE_strangler"))
        .args(["serve", "--config", file])
        .output()
        .unwrap();
    assert!(!served.status.success());
    let err = String::from_utf8_lossy(&served.stderr);
    assert!(err.contains("plans: cannot read the plans folder"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_rolls_back_a_new_side_failing_30_percent_though_fallback_hid_it_from_users() {
    let (legacy, new) = (Flaky::start().await, Flaky::start().await);
    new.fail_permille.store(300, Ordering::Relaxed);
    let (_dir, routes) = support::plan_setup(
        &legacy.url(),
        &new.url(),
        "",
        "percent: 0        # the plan moves this\n    fallback: { when: [5xx] }",
        "route: orders-read\nsteps:\n  - { percent: 25, hold: 1h }\n  - { percent: 100 }\nguard:\n  min_requests: 30\n  max_error_rate_delta: 0.01\non_fail: rollback\n",
    );
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    let admin = format!("http://{}", gw.admin);
    start_plan(&admin);
    assert!(percent_in(&routes).contains("percent: 25"));
    let started = Instant::now();
    let traffic = CountedTraffic::start(gw.public);
    // Generous: at 25% of four clients' traffic, the test needs a few hundred requests.
    let s = wait_state(&gw, "orders-rollout", "rolled_back", 90).await;
    let took = started.elapsed();
    // A little more traffic, all of it on legacy now.
    traffic.more(50, 10).await;
    let (answered, bad) = traffic.finish().await;
    eprintln!("rolled back {took:?} after the start; {answered} answers of 200");
    assert!(
        bad.is_empty(),
        "{} of {} requests failed for the client, e.g. {:?}",
        bad.len(),
        answered as usize + bad.len(),
        &bad[..bad.len().min(5)]
    );
    assert!(
        percent_in(&routes).contains("percent: 0"),
        "{}",
        percent_in(&routes)
    );
    let last = s["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["from"], "running", "{last}");
    assert_eq!(last["to"], "rolled_back", "{last}");
    assert_eq!(last["percent"], 0.0, "{last}");
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains("new error rate higher"),
        "{last}"
    );
    // The figures: the new side's failures, though legacy answered each of them.
    let c = &last["check"];
    assert_eq!(c["verdict"], "worse", "{last}");
    let (new_requests, new_errors) = (
        c["new_requests"].as_u64().unwrap(),
        c["new_errors"].as_u64().unwrap(),
    );
    assert!(new_requests >= 30, "{c}");
    assert!(new_errors > 0, "{c}");
    let rate = new_errors as f64 / new_requests as f64;
    assert!((0.1..=0.7).contains(&rate), "new error rate {rate}: {c}");
    assert_eq!(c["legacy_errors"], 0, "{c}");
    assert!(
        c["errors_log_lr"].as_f64().unwrap() >= c["threshold"].as_f64().unwrap(),
        "{c}"
    );
    assert!(answered > new_requests, "{answered} answers, {c}");
    // Every failure of the new side fell back, and is counted as such.
    let m = gateway_metrics(&gw).await;
    let fallbacks = support::metric(&m, &support::faults::fallbacks_series("orders-read", "5xx"))
        .unwrap_or(0.0);
    assert!(fallbacks >= new_errors as f64, "{fallbacks} fallbacks: {c}");
    assert_eq!(
        support::metric(
            &m,
            &support::faults::requests_series("orders-read", "new", "GET", 500)
        ),
        Some(fallbacks),
        "each 500 of the new side fell back:\n{m}"
    );
    assert_eq!(
        support::metric(
            &m,
            "strangler_plan_state{plan=\"orders-rollout\",state=\"rolled_back\"}"
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_fails_a_running_plans_guard_at_once_whatever_the_figures() {
    let legacy = Flaky::start().await;
    let orders = FaultServer::start("orders").await;
    orders.set(Mode::Status(500));
    let (_dir, routes) = support::plan_setup(
        &legacy.url(),
        &orders.url(),
        "    breaker: { failures: 3, window: 10s, cooldown: 60s }\n",
        "percent: 0        # the plan moves this",
        "route: orders-read\nsteps:\n  - { percent: 50, hold: 1h }\n  - { percent: 100 }\nguard:\n  min_requests: 100\non_fail: rollback\n",
    );
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    let admin = format!("http://{}", gw.admin);
    start_plan(&admin);
    assert!(percent_in(&routes).contains("percent: 50"));
    let breaker = support::faults::breaker_series("orders");
    assert_eq!(
        support::metric(&gateway_metrics(&gw).await, &breaker),
        Some(0.0)
    );
    // Traffic right after the start, before the plan's first look, counts: the guard's
    // counts begin when the step's percent is written (they once began at the first look,
    // up to a second later, and the figures asserted below were then empty).
    // One request at a time, until the breaker opens: a handful, far from what the
    // sequential test needs to judge anything (30 a side, and min_requests 100).
    let c = client();
    let mut statuses: BTreeMap<u16, u32> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    let opened = loop {
        i += 1;
        let r = c
            .get(format!("http://{}/api/orders/{i}", gw.public))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap();
        *statuses.entry(r.status().as_u16()).or_default() += 1;
        let _ = r.bytes().await;
        if support::metric(&gateway_metrics(&gw).await, &breaker) == Some(1.0) {
            break Instant::now();
        }
        assert!(
            Instant::now() < deadline && i < 60,
            "the breaker never opened after {i} requests: {statuses:?}"
        );
    };
    eprintln!("the breaker opened after {i} requests: {statuses:?}");
    assert_eq!(statuses.get(&500).copied(), Some(3), "{statuses:?}");
    let s = wait_state(&gw, "orders-rollout", "rolled_back", 20).await;
    let took = opened.elapsed();
    eprintln!("rolled back {took:?} after the breaker opened");
    // The plan looks every second: the next look or the one after.
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        percent_in(&routes).contains("percent: 0"),
        "{}",
        percent_in(&routes)
    );
    // Within the hour's hold.
    assert!(s["step_seconds"].as_f64().unwrap() < 600.0, "{s}");
    let last = s["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["from"], "running", "{last}");
    assert_eq!(last["to"], "rolled_back", "{last}");
    assert_eq!(last["percent"], 0.0, "{last}");
    let reason = last["reason"].as_str().unwrap();
    assert!(reason.starts_with("guard failed: "), "{last}");
    assert!(
        reason.contains("the circuit breaker of orders is open"),
        "{last}"
    );
    let check = &last["check"];
    assert_eq!(check["verdict"], "worse", "{check}");
    assert!(
        check["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "the circuit breaker of orders is open"),
        "{check}"
    );
    // The figures: every request sent, the new side's three failures, and the requests
    // the open breaker diverted counted as legacy's. They alone could not have called it:
    // too few requests on either side, and no evidence weighed.
    assert_eq!(check["new_requests"], 3, "{check}");
    assert_eq!(check["new_errors"], 3, "{check}");
    assert_eq!(check["legacy_requests"], i - 3, "{check}");
    assert_eq!(check["legacy_errors"], 0, "{check}");
    assert!(i - 3 < 30, "{check}");
    assert!(
        check["errors_log_lr"].as_f64().unwrap() < check["threshold"].as_f64().unwrap(),
        "{check}"
    );
    // What a person sees: `plan status --json` (the admin API's status) and `plan status`.
    let (ok, out, err) = cli(&[
        "plan",
        "status",
        "orders-rollout",
        "--admin",
        &admin,
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "rolled_back", "{out}");
    assert_eq!(
        v["history"].as_array().unwrap().last().unwrap(),
        &last,
        "{out}"
    );
    let (ok, out, err) = cli(&["plan", "status", "orders-rollout", "--admin", &admin]);
    assert!(ok, "{err}");
    assert!(out.contains("state rolled_back"), "{out}");
    assert!(
        out.contains("the circuit breaker of orders is open"),
        "{out}"
    );
    // The breaker is still open (its cooldown is a minute): the rollback's reload kept it.
    assert_eq!(
        support::metric(&gateway_metrics(&gw).await, &breaker),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_with_min_shadow_match_starts_only_once_the_shadow_matches() {
    // Two upstreams that answer alike (same body; `x-upstream` ignored).
    let legacy = support::Upstream::start("same").await;
    let new = support::Upstream::start("same").await;
    let (_dir, routes) = support::plan_setup(
        &legacy.url(),
        &new.url(),
        "",
        "percent: 0\n    shadow: {ignore_headers: [x-upstream]}",
        "route: orders-read\nsteps:\n  - percent: 10\n    hold: 1h\n  - percent: 100\nguard:\n  min_requests: 20\n  min_shadow_match: 0.95\n",
    );
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    let admin = format!("http://{}", gw.admin);
    // No copy compared yet: the start is refused, with the figures.
    let refused = client()
        .post(format!("{admin}/admin/plans/orders-rollout/start"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 409);
    let body: Value = refused.json().await.unwrap();
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("min_shadow_match 0.95") && detail.contains("over 0"),
        "{body}"
    );
    assert_eq!(status(&gw, "orders-rollout").await["state"], "pending");
    assert!(percent_in(&routes).contains("percent: 0"));
    let (ok, out, err) = cli(&["plan", "start", "orders-rollout", "--admin", &admin]);
    assert!(!ok, "{out}{err}");
    assert!(format!("{out}{err}").contains("shadow"), "{out}{err}");
    // Legacy serves; every request is copied to the new side and matches.
    let c = client();
    for i in 0..30 {
        let r = c
            .get(format!("http://{}/api/orders/{i}", gw.public))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v: Value = get_json(format!("{admin}/admin/shadow/orders-read")).await;
        if v["compared"].as_u64().unwrap_or(0) >= 20 {
            assert_eq!(v["match_rate"], 1.0, "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "copies not compared: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The last copies may still be on their way when 20 have been compared.
    let deadline = Instant::now() + Duration::from_secs(10);
    while new.count() < 30 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(new.count(), 30);
    assert!(new.seen().iter().all(|r| {
        r.headers
            .get("x-strangler-shadow")
            .is_some_and(|v| v == "1")
    }));
    start_plan(&admin);
    assert!(percent_in(&routes).contains("percent: 10"));
    assert_eq!(status(&gw, "orders-rollout").await["state"], "running");
}
