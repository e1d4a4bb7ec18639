//! One truth on every screen, end to end: the shadow comparison counts every kind of
//! difference and gives one match rate in every view (the admin API, the CLI, Prometheus,
//! a plan's gate); the command line names the gateway it asks and fails when it should;
//! words that do not mislead; the admin API's bodies, the logs and percentages held to one
//! rule each.

use crate::support;

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::plans::{percent_in, status};
use support::prometheus::Prometheus;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_strangler");

fn strangler(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut c = Command::new(BIN);
    c.args(args).env_remove("STRANGLER_ADMIN");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The monolith of the team's carve-out: orders as JSON, served by `X-Served-By: monolith`.
fn monolith(a: &Recorded) -> Reply {
    let id = a.id().unwrap_or(0);
    Reply::json(&json!({"id": id, "items": [{"sku": "a", "qty": 1}], "total": 10}))
        .header("x-served-by", "monolith")
}

/// The reimplemented orders service: another `X-Served-By`, 20 ms slower, and a total
/// that differs for one order in five.
fn reimplemented(a: &Recorded) -> Reply {
    let id = a.id().unwrap_or(0);
    let total = if id.is_multiple_of(5) { 11 } else { 10 };
    Reply::json(&json!({"id": id, "items": [{"sku": "a", "qty": 1}], "total": total}))
        .header("x-served-by", "orders")
        .after(Duration::from_millis(20))
}

/// A routes file with `orders-read` (prefix /api/orders) shadowed to `orders`, at 0.
fn shadowed_routes(legacy: &str, new: &str, shadow: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nlegacy: {{ url: '{legacy}' }}\nservices:\n  orders: {{ url: '{new}' }}\nroutes:\n  - name: orders-read\n    match: {{ prefix: /api/orders }}\n    service: orders\n    percent: 0\n    shadow: {shadow}\n"
    )
}

async fn send_orders(public: std::net::SocketAddr, ids: std::ops::Range<u64>) {
    let c = client();
    for i in ids {
        let r = c
            .get(format!("http://{public}/api/orders/{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
}

async fn shadow_report(admin: std::net::SocketAddr, route: &str) -> Value {
    get_json(format!("http://{admin}/admin/shadow/{route}")).await
}

async fn wait_compared(admin: std::net::SocketAddr, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = shadow_report(admin, "orders-read").await;
        if r["compared"].as_u64().unwrap_or(0) >= n {
            return r;
        }
        assert!(Instant::now() < deadline, "copies not compared: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// -------------------------------------------------------------------------------------
// 1. Shadow
// -------------------------------------------------------------------------------------

/// One differing header on every copy no longer hides a body that differs on one in five:
/// each kind of difference is counted, in the report, the metrics and the compare entry;
/// and both sides' times for the same requests show the new side 20 ms slower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_difference_never_hides_a_body_regression() {
    let legacy = Upstream::scripted(monolith).await;
    let new = Upstream::scripted(reimplemented).await;
    let (_dir, file) = routes_file(&shadowed_routes(&legacy.url(), &new.url(), "{}"));
    let gw = GatewayProcess::spawn(&file, &[]).await;
    send_orders(gw.public, 0..50).await;
    let r = wait_compared(gw.admin, 50).await;
    assert_eq!(r["results"]["header_mismatch"], 50, "{r}");
    assert_eq!(r["differences"]["headers"], 50, "{r}");
    assert_eq!(
        r["differences"]["body"], 10,
        "one in five bodies differ: {r}"
    );
    assert_eq!(r["differences"]["status"], 0);
    let total = r["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "/total")
        .unwrap_or_else(|| panic!("/total among the fields: {r}"));
    assert_eq!(total["mismatches"], 10);
    assert_eq!(
        (&total["example"]["legacy"], &total["example"]["new"]),
        (&json!(10), &json!(11))
    );
    let m = get_text(format!("http://{}/metrics", gw.admin)).await;
    let kind = |k: &str| {
        metric(
            &m,
            &format!("strangler_shadow_differences_total{{kind=\"{k}\",route=\"orders-read\"}}"),
        )
    };
    assert_eq!(
        (kind("headers"), kind("body")),
        (Some(50.0), Some(10.0)),
        "{m}"
    );
    let v = get_json(format!("http://{}/admin/compare", gw.admin)).await;
    let shadow = &compared(&v, "orders-read")["shadow"];
    assert_eq!(shadow["differences"]["body"], 10, "{shadow}");
    let (l, n) = (
        shadow["legacy_p50_ms"].as_f64().unwrap(),
        shadow["new_p50_ms"].as_f64().unwrap(),
    );
    assert!(
        n - l > 15.0,
        "the new side's 20 ms: legacy {l} ms, new {n} ms"
    );
}

/// A header ignored by a reload is marked ignored, not left counting as if it were not;
/// a 500 against a 200 is one finding, not every body field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_fields_are_marked_and_a_status_mismatch_is_one_finding() {
    let legacy = Upstream::scripted(monolith).await;
    let failing = Arc::new(AtomicU64::new(0));
    let f = failing.clone();
    let new = Upstream::scripted(move |a| {
        if f.load(Ordering::Relaxed) == 1 {
            Reply::json(&json!({"error": "boom"})).status(500)
        } else {
            reimplemented(a)
        }
    })
    .await;
    let (_dir, file) = routes_file(&shadowed_routes(&legacy.url(), &new.url(), "{}"));
    let gw = GatewayProcess::spawn(&file, &[]).await;
    send_orders(gw.public, 1..5).await;
    wait_compared(gw.admin, 4).await;
    // The header is ignored from now on.
    std::fs::write(
        &file,
        shadowed_routes(
            &legacy.url(),
            &new.url(),
            "{ ignore_headers: [x-served-by] }",
        ),
    )
    .unwrap();
    let r = client()
        .post(format!("http://{}/admin/reload", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = shadow_report(gw.admin, "orders-read").await;
    let served_by = r["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "header:x-served-by")
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(served_by["ignored"], true, "{r}");
    assert!(
        r["ignored"]["always"]
            .as_array()
            .unwrap()
            .contains(&json!("x-strangler-*")),
        "the headers always left out, as docs/shadow.md lists them: {r}"
    );
    // The new side fails: its 500s are a status finding only.
    failing.store(1, Ordering::Relaxed);
    send_orders(gw.public, 10..14).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let r = loop {
        let r = shadow_report(gw.admin, "orders-read").await;
        if r["results"]["status_mismatch"].as_u64().unwrap_or(0) >= 4 {
            break r;
        }
        assert!(Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let fields: Vec<&str> = r["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"status"), "{fields:?}");
    assert!(
        !fields.contains(&"/error") && !fields.contains(&"/id") && !fields.contains(&"/items"),
        "a status mismatch added body fields: {fields:?}"
    );
    assert_eq!(r["differences"]["status"], 4);
}

/// One route at one moment: the admin API's compare entry, its shadow report, the plan's
/// gate and `compare --prometheus` give the same match rate over the same window; a reset
/// starts it afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_view_gives_one_match_rate_for_a_route() {
    let legacy = Upstream::scripted(monolith).await;
    let new = Upstream::scripted(reimplemented).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::create_dir(dir.path().join("plans")).unwrap();
    std::fs::write(
        dir.path().join("plans/orders-rollout.yaml"),
        "route: orders-read\nsteps:\n  - { percent: 10, hold: 1h }\n  - { percent: 100 }\nguard:\n  min_requests: 20\n  min_shadow_match: 0.99\n  shadow_window: 5m\n",
    )
    .unwrap();
    std::fs::write(
        &file,
        format!(
            "{}plans: plans\n",
            shadowed_routes(
                &legacy.url(),
                &new.url(),
                "{ ignore_headers: [x-served-by] }"
            )
        )
        .replace("routes:\n", "compare: { window: 5m }\nroutes:\n"),
    )
    .unwrap();
    let gw = GatewayProcess::spawn(&file, &[]).await;
    let prom = Prometheus::start(&[gw.admin]).await;
    send_orders(gw.public, 0..100).await;
    wait_compared(gw.admin, 100).await;
    prom.wait_for_value(
        "sum(strangler_shadow_requests_total{route=\"orders-read\"})",
        100.0,
    )
    .await;
    // The gateway's views.
    let report = shadow_report(gw.admin, "orders-read").await;
    let v = get_json(format!("http://{}/admin/compare?window=5m", gw.admin)).await;
    let entry = compared(&v, "orders-read")["shadow"].clone();
    // The plan's gate: refused, with its figure and window.
    let r = client()
        .post(format!(
            "http://{}/admin/plans/orders-rollout/start",
            gw.admin
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let refused: Value = r.json().await.unwrap();
    assert_eq!(refused["error"], "shadow_not_matching", "{refused}");
    assert_eq!(refused["state"], "pending", "{refused}");
    let detail = refused["detail"].as_str().unwrap();
    // Prometheus's, across replicas.
    let (code, out, err) = strangler(
        &[
            "compare",
            "--prometheus",
            &prom.url,
            "--window",
            "5m",
            "--json",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    let from_prom: Value = serde_json::from_str(&out).unwrap();
    let prom_entry = compared(&from_prom, "orders-read")["shadow"].clone();
    // 80 of 100 match (one total in five differs).
    for (view, v) in [
        ("report", &report),
        ("compare", &entry),
        ("prometheus", &prom_entry),
    ] {
        assert_eq!(
            (v["compared"].as_u64(), v["matched"].as_u64()),
            (Some(100), Some(80)),
            "{view}: {v}"
        );
        assert_eq!(v["match_rate"], 0.8, "{view}: {v}");
    }
    assert!(
        detail.contains("0.8000 over 100") && detail.contains("last 5m"),
        "the gate: {detail}"
    );
    eprintln!(
        "one route at one moment: report {} of {}, compare {} of {}, prometheus {} of {}, gate: {detail}",
        report["match_rate"],
        report["compared"],
        entry["match_rate"],
        entry["compared"],
        prom_entry["match_rate"],
        prom_entry["compared"]
    );
    // After a fix: a reset starts the comparison afresh.
    let (code, out, err) = strangler(
        &[
            "shadow",
            "orders-read",
            "--reset",
            "--admin",
            &gw.admin.to_string(),
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let r = shadow_report(gw.admin, "orders-read").await;
    assert_eq!(r["compared"], 0, "{r}");
    assert_eq!(status(&gw, "orders-rollout").await["state"], "pending");
}

/// `strangler shadow ROUTE`: the results, the fields that differ with an example, and the
/// fields learned as noise, printed as the `ignore_json` lines that `check` accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangler_shadow_prints_the_report_and_noise_as_yaml_to_paste() {
    let seq = Arc::new(AtomicU64::new(0));
    let s = seq.clone();
    // Legacy stamps each answer: a field that differs between two of its answers is noise.
    let legacy = Upstream::scripted(move |a| {
        let n = s.fetch_add(1, Ordering::Relaxed);
        let mut r = monolith(a);
        r.body = json!({"id": a.id(), "total": 10, "generated_at": n})
            .to_string()
            .into();
        r
    })
    .await;
    let new = Upstream::scripted(|a| {
        Reply::json(&json!({"id": a.id(), "total": if a.id().unwrap_or(0) % 5 == 0 { 11 } else { 10 }, "generated_at": 0}))
            .header("x-served-by", "monolith")
    })
    .await;
    let (dir, file) = routes_file(&shadowed_routes(
        &legacy.url(),
        &new.url(),
        "{ noise: { sample: 100% } }",
    ));
    let gw = GatewayProcess::spawn(&file, &[]).await;
    send_orders(gw.public, 0..40).await;
    wait_compared(gw.admin, 40).await;
    let admin = gw.admin.to_string();
    let (code, out, err) = strangler(&["shadow", "orders-read", "--admin", &admin], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with(&format!(
            "gateway http://{admin} (--admin) answered, config "
        )),
        "{out}"
    );
    assert!(out.contains("compared 40"), "{out}");
    assert!(
        out.contains("/total") && out.contains("legacy 10 new 11"),
        "{out}"
    );
    assert!(
        out.contains("learned as noise") && out.contains("/generated_at"),
        "{out}"
    );
    let (code, yaml, err) = strangler(
        &["shadow", "orders-read", "--admin", &admin, "--noise-yaml"],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        yaml.contains("ignore_json:\n  - \"/generated_at\"\n"),
        "{yaml}"
    );
    // Pasted under the route's shadow, it is a file `check` accepts.
    let lines: String = yaml
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("      {l}\n"))
        .collect();
    let pasted = shadowed_routes(&legacy.url(), &new.url(), "\n")
        .replace("    shadow: \n\n", &format!("    shadow:\n{lines}"));
    let checked = dir.path().join("pasted.yaml");
    std::fs::write(&checked, &pasted).unwrap();
    let (code, out, err) = strangler(&["check", checked.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{pasted}\n{out}{err}");
}

// -------------------------------------------------------------------------------------
// 2. The command line says which gateway answered, and fails when it should
// -------------------------------------------------------------------------------------

/// An operation is never sent to a gateway nobody named; every command names the gateway
/// that answered and the config it runs, whether named by `--config`, `STRANGLER_ADMIN` or
/// `--admin`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_names_the_gateway_that_answered_and_an_operation_needs_one_named() {
    let (legacy, new) = (Flaky::start().await, Flaky::start().await);
    let (_dir, routes) = plan_setup(
        &legacy.url(),
        &new.url(),
        "",
        "percent: 0",
        "route: orders-read\nsteps:\n  - { percent: 10, hold: 1h }\n  - { percent: 100 }\n",
    );
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    let hash = get_json(format!("http://{}/admin/routes", gw.admin)).await["config_hash"]
        .as_str()
        .unwrap()
        .to_string();
    // No gateway named: a start is refused before anything is sent.
    let (code, _, err) = strangler(&["plan", "start", "orders-rollout"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("which gateway?"), "{err}");
    assert_eq!(status(&gw, "orders-rollout").await["state"], "pending");
    // Named by STRANGLER_ADMIN.
    let admin = format!("http://{}", gw.admin);
    let (code, out, err) = strangler(&["plan", "status"], &[("STRANGLER_ADMIN", &admin)]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with(&format!(
            "gateway {admin} (STRANGLER_ADMIN) answered, config {hash}"
        )),
        "{out}"
    );
    // A plan not started reads so, with no null for its step or percent.
    assert!(
        out.contains("not started") && !out.contains("null"),
        "{out}"
    );
    // Named by its routes file (admin.listen is :0 there: the file says which port only
    // for a real gateway, so this gateway is named by a copy with its port).
    let text = std::fs::read_to_string(&routes)
        .unwrap()
        .replace("listen: 127.0.0.1:0\n", &format!("listen: {}\n", gw.admin));
    let named = routes.with_file_name("named.yaml");
    std::fs::write(
        &named,
        text.replacen(
            &format!("listen: {}\n", gw.admin),
            "listen: 127.0.0.1:0\n",
            1,
        ),
    )
    .unwrap();
    let (code, out, err) = strangler(
        &[
            "plan",
            "start",
            "orders-rollout",
            "--config",
            named.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!("gateway {admin} (admin.listen of ")),
        "{out}"
    );
    // Its file is not the gateway's: it says so.
    assert!(out.contains("the --config file is config"), "{out}");
    assert!(percent_in(&routes).contains("percent: 10"));
}

/// A server that answers JSON but is not a strangler gateway is an error, not a table of
/// nulls; an operation that did not happen exits 1; `help --help` is help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_is_not_a_gateways_fails_and_help_help_is_help() {
    let impostor = Upstream::scripted(|_| Reply::json(&json!({"hello": "world"}))).await;
    for args in [
        vec!["compare", "--admin", impostor.url().as_str()],
        vec!["plan", "status", "--admin", impostor.url().as_str()],
        vec!["shadow", "orders-read", "--admin", impostor.url().as_str()],
    ] {
        let (code, out, err) = strangler(&args, &[]);
        assert_eq!(code, Some(1), "{args:?}: {out}{err}");
        assert!(
            err.contains("not as a strangler gateway"),
            "{args:?}: {err}"
        );
    }
    let (code, out, _) = strangler(&["help", "--help"], &[]);
    assert_eq!(code, Some(0));
    assert!(out.contains("Usage:"), "{out}");
}

/// `compare --prometheus` counts only what its window covers (not a gateway's whole
/// lifetime when Prometheus started lately), says what it covered, and takes a plan's
/// margin and confidence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_through_prometheus_counts_only_what_the_window_covers() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let (_dir, file) = routes_file(&format!(
        "{}override: {{header: x-strangler-side}}\nroutes:\n  - name: all\n    match: {{prefix: /}}\n    service: orders\n    percent: 50\n",
        config_head(&legacy.url(), &[("orders", &orders.url())])
    ));
    let gw = GatewayProcess::spawn(&file, &[]).await;
    let c = client();
    let traffic = async |n: usize| {
        for _ in 0..n {
            c.get(format!("http://{}/x", gw.public))
                .header("x-strangler-side", "legacy")
                .send()
                .await
                .unwrap();
        }
    };
    // A long life before Prometheus sees the gateway.
    traffic(300).await;
    let prom = Prometheus::start(&[gw.admin]).await;
    traffic(40).await;
    prom.wait_for_value("sum(strangler_requests_total)", 340.0)
        .await;
    let (code, out, err) = strangler(
        &[
            "compare",
            "--prometheus",
            &prom.url,
            "--window",
            "1m",
            "--max-error-rate-delta",
            "0.01",
            "--confidence",
            "0.95",
            "--json",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(compared(&v, "all")["legacy"]["requests"], 40, "{v}");
    let covered = v["covered_seconds"].as_f64().unwrap();
    assert!(covered > 0.0 && covered < 60.0, "{v}");
    let (_, text, _) = strangler(
        &["compare", "--prometheus", &prom.url, "--window", "1m"],
        &[],
    );
    assert!(text.contains("window 60s, covering "), "{text}");
}

// -------------------------------------------------------------------------------------
// 3. Words that do not mislead
// -------------------------------------------------------------------------------------

/// New errors far above legacy's but not yet shown worse: `undecided`, in words, not a
/// green `ok`; each side's count in the reasons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_beyond_the_margin_not_yet_shown_worse_are_undecided() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let yaml = format!(
        "{}override: {{header: x-strangler-side}}\nroutes:\n  - name: r\n    match: {{prefix: /r}}\n    service: orders\n    percent: 10\n",
        config_head(&legacy.url(), &[("orders", &orders.url())])
    );
    let gw = Gateway::start(&yaml).await;
    forced_traffic(&gw, "/r", "legacy", 400, 0).await;
    // 7.5% of new's 80 requests fail: far above, not yet enough to call it.
    forced_traffic(&gw, "/r", "new", 80, 0).await;
    for _ in 0..6 {
        client()
            .get(gw.url("/r"))
            .header("x-strangler-side", "new")
            .header("x-test-status", "500")
            .send()
            .await
            .unwrap();
    }
    let v = get_json(gw.admin_url("/admin/compare")).await;
    let r = compared(&v, "r");
    assert_eq!(r["verdict"], "undecided", "{r}");
    assert!(
        r["reasons"][0]
            .as_str()
            .unwrap()
            .contains("points above legacy's"),
        "{r}"
    );
    let (_, out, _) = strangler(&["compare", "--admin", &gw.admin_url("")], &[]);
    assert!(
        out.contains("undecided") && out.contains("not shown worse yet"),
        "{out}"
    );
}

/// `plan status` says what is true of a gateway without plans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plans_says_what_is_true() {
    let legacy = Upstream::start("legacy").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("plans")).unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::write(
        &file,
        format!(
            "{}plans: plans\nroutes: []\n",
            config_head(&legacy.url(), &[])
        ),
    )
    .unwrap();
    let gw = GatewayProcess::spawn(&file, &[]).await;
    let (code, out, _) = strangler(&["plan", "status", "--admin", &gw.admin.to_string()], &[]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("plans folder") && out.contains("held no NAME.yaml"),
        "{out}"
    );
}

/// A 502 says what failed, as the access log does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_502_names_the_kind_of_failure() {
    let dead = format!("http://{}", dead_addr().await);
    let yaml = format!("{}routes: []\n", config_head(&dead, &[]));
    let gw = Gateway::start(&yaml).await;
    let r = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["error"].as_str(), v["kind"].as_str()),
        (Some("upstream_unavailable"), Some("connect")),
        "{v}"
    );
}

/// `explain` reads a method as the gateway does: `get` is not `GET`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_agrees_with_the_gateway_on_a_lowercase_method() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let yaml = format!(
        "{}routes:\n  - name: orders-read\n    match: {{ path: \"/api/orders/{{id}}\", methods: [GET, HEAD] }}\n    service: orders\n    percent: 100\n",
        config_head(&legacy.url(), &[("orders", &orders.url())])
    );
    let (_dir, file) = routes_file(&yaml);
    let gw = Gateway::start(&yaml).await;
    let (_, head, _) = raw(
        gw.running.public_addr,
        "get /api/orders/10 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (_, out, _) = strangler(
        &["explain", file.to_str().unwrap(), "get", "/api/orders/10"],
        &[],
    );
    // The gateway's reading, and explain's: the same route, or the same refusal.
    let gateway = if head.contains("x-upstream: orders") {
        "orders-read".to_string()
    } else if head.contains("x-upstream: legacy") {
        "default".to_string()
    } else {
        format!("rejected {}", head.split_whitespace().nth(1).unwrap_or("?"))
    };
    let explained = if let Some(line) = out.lines().find(|l| l.starts_with("rejected:")) {
        format!("rejected {}", line.split_whitespace().nth(1).unwrap_or("?"))
    } else {
        let route = out
            .lines()
            .find(|l| l.starts_with("route:"))
            .unwrap_or_else(|| panic!("explain names no route:\n{out}"));
        route.split_whitespace().nth(1).unwrap_or("?").to_string()
    };
    assert_eq!(
        gateway, explained,
        "gateway answered {head:?}; explain said:\n{out}"
    );
}

// -------------------------------------------------------------------------------------
// 5. Small things an operator hit
// -------------------------------------------------------------------------------------

/// The percent body is an object of `application/json`, and a declared oversized body is
/// refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_bodies_are_json_objects_and_an_oversized_one_is_refused_at_once() {
    let legacy = Upstream::start("legacy").await;
    let yaml = format!(
        "{}  orders:\n    url: {}\nroutes:\n  - name: a\n    match: {{prefix: /a}}\n    service: orders\n",
        config_head(&legacy.url(), &[]),
        legacy.url()
    );
    let (_dir, file) = routes_file(&yaml);
    let gw = GatewayProcess::spawn(&file, &[]).await;
    let url = format!("http://{}/admin/routes/a/percent", gw.admin);
    let post = |ct: &'static str, body: &'static str| {
        client()
            .post(&url)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let r = post("application/json", "[33]").await.unwrap();
    assert_eq!(r.status(), 400);
    let r = post("application/merge-patch+json", r#"{"percent": 33}"#)
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert!(
        !std::fs::read_to_string(&file)
            .unwrap()
            .contains("percent: 33")
    );
    // A head declaring 99,999,999 bytes, and 14 of them: 413 at once.
    let started = Instant::now();
    let (status, _, _) = raw(
        gw.admin,
        "POST /admin/routes/a/percent HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 99999999\r\n\r\n{\"percent\": 5}",
    )
    .await;
    assert_eq!(status, 413);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// Percentages are plain decimals, in the routes file and to `shift` alike, and a form that
/// is not is named.
#[test]
fn a_percentage_is_a_plain_decimal_everywhere() {
    let head = "listen: 127.0.0.1:8080\nlegacy: {url: http://127.0.0.1:9001}\nservices:\n  orders: {url: http://127.0.0.1:9002}\nroutes:\n  - name: a\n    match: {prefix: /a}\n    service: orders\n";
    for (form, named) in [
        ("0x10", "hexadecimal"),
        ("0o10", "octal"),
        ("0b11", "binary"),
        ("1_0", "separators"),
        ("010", "leading zero"),
    ] {
        let (_dir, file) = routes_file(&format!("{head}    percent: {form}\n"));
        let (code, out, err) = strangler(&["check", file.to_str().unwrap()], &[]);
        assert_eq!(code, Some(1), "{form}: {out}{err}");
        assert!(format!("{out}{err}").contains(named), "{form}: {out}{err}");
        let (_dir, file) = routes_file(&format!("{head}    percent: 5\n"));
        let (code, out, err) = strangler(&["shift", file.to_str().unwrap(), "a", form], &[]);
        assert_eq!(code, Some(1), "shift {form}: {out}{err}");
        assert!(err.contains(named), "shift {form}: {err}");
    }
    let (_dir, file) = routes_file(&format!("{head}    percent: 5\n"));
    let (code, _, err) = strangler(&["shift", file.to_str().unwrap(), "a", "-0"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("a sign"), "{err}");
    let (code, _, err) = strangler(&["shift", file.to_str().unwrap(), "a", "12.5"], &[]);
    assert_eq!(code, Some(0), "{err}");
}

/// A path with a right-to-left override is escaped in the access log: the line reads as
/// it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_characters_of_a_path_are_escaped_in_the_access_log() {
    let legacy = Upstream::start("legacy").await;
    let (_dir, file) = routes_file(&format!("{}routes: []\n", config_head(&legacy.url(), &[])));
    let gw = GatewayProcess::spawn(&file, &[]).await;
    // The override's bytes as they are on the request line.
    raw(
        gw.public,
        "GET /files/\u{202e}gpj.exe HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = gw
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("an access-log line");
        if line.contains("gpj.exe") {
            assert!(line.contains("\\u202e"), "{line}");
            assert!(!line.contains('\u{202e}'), "{line}");
            break;
        }
    }
}

/// A corrupt progress file is reported once, not at every look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_progress_file_is_reported_once() {
    let (legacy, new) = (Flaky::start().await, Flaky::start().await);
    let (dir, routes) = plan_setup(
        &legacy.url(),
        &new.url(),
        "",
        "percent: 0",
        "route: orders-read\nsteps:\n  - { percent: 10, hold: 1h }\n  - { percent: 100 }\n",
    );
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    std::fs::write(
        dir.path().join("plans/.orders-rollout.state.json"),
        "{not json",
    )
    .unwrap();
    for _ in 0..10 {
        status(&gw, "orders-rollout").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let warned = gw
        .lines
        .try_iter()
        .filter(|l| l.contains("its progress file is not valid"))
        .count();
    assert_eq!(warned, 1);
}

/// With stdout stalled (a log shipper that stopped reading) and nothing in flight, SIGTERM
/// ends the gateway within the one flush it allows (2 s), not one per flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stdout_holds_an_exit_up_once() {
    let legacy = Upstream::start("legacy").await;
    let (_dir, file) = routes_file(&format!("{}routes: []\n", config_head(&legacy.url(), &[])));
    // stdout a pipe nobody reads once the listening line is read: it fills.
    let (mut child, out, public, _) = serve_reading_until_listening(&file);
    // Enough access-log lines to fill the pipe and the writer's hands.
    let c = client();
    for i in 0..2000 {
        let _ = c
            .get(format!("http://{public}/{}", "x".repeat(200 + i % 10)))
            .send()
            .await;
    }
    let started = Instant::now();
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "no exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    drop(out);
    assert!(took < Duration::from_millis(3500), "took {took:?}");
}

/// Lines lost to a closed stdout are counted as dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_lost_to_a_closed_stdout_are_counted() {
    let legacy = Upstream::start("legacy").await;
    let (_dir, file) = routes_file(&format!("{}routes: []\n", config_head(&legacy.url(), &[])));
    let (_child, mut out, public, admin) = serve_reading_until_listening(&file);
    // The reader goes away: its stdout is a pipe with no reader.
    drop(out.take());
    let c = client();
    for _ in 0..50 {
        c.get(format!("http://{public}/x")).send().await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = get_text(format!("http://{admin}/metrics")).await;
        if metric(&m, "strangler_log_lines_dropped_total").unwrap_or(0.0) >= 10.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A gateway process killed when the test ends, passed or not.
struct Reaped(std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `strangler serve` with its stdout a pipe, read until its listening line: the child, the
/// pipe (to read more, or to drop), and the public and admin addresses.
fn serve_reading_until_listening(
    file: &std::path::Path,
) -> (
    Reaped,
    Option<std::process::ChildStdout>,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    let mut child = Reaped(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(file)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "no listening line");
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen).to_string();
        if let Some(line) = text.lines().find(|l| l.contains("\"listening\"")) {
            let v: Value = serde_json::from_str(line).unwrap();
            let addr = |k: &str| v["fields"][k].as_str().unwrap().parse().unwrap();
            return (child, Some(out), addr("public"), addr("admin"));
        }
    }
}

/// A ConfigMap's symlink swap (a new timestamped folder, `..data` pointed at it, the old
/// folder removed) is followed without a warning from the file watcher's bookkeeping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_swap_is_followed_without_a_warning() {
    let legacy = Upstream::start("legacy").await;
    let dir = tempfile::tempdir().unwrap();
    let routes = |p: u32| {
        format!(
            "{}  orders:\n    url: {}\nroutes:\n  - name: a\n    match: {{prefix: /a}}\n    service: orders\n    percent: {p}\n",
            config_head(&legacy.url(), &[]),
            legacy.url()
        )
    };
    let stamp = |n: u32| {
        dir.path()
            .join(format!("..2026_12_07_00_00_0{n}.000000001"))
    };
    std::fs::create_dir(stamp(1)).unwrap();
    std::fs::write(stamp(1).join("routes.yaml"), routes(10)).unwrap();
    std::os::unix::fs::symlink(stamp(1).file_name().unwrap(), dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/routes.yaml", dir.path().join("routes.yaml")).unwrap();
    let gw = GatewayProcess::spawn(&dir.path().join("routes.yaml"), &[]).await;
    for n in 2..5u32 {
        std::fs::create_dir(stamp(n)).unwrap();
        std::fs::write(stamp(n).join("routes.yaml"), routes(10 * n)).unwrap();
        let tmp = dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(stamp(n).file_name().unwrap(), &tmp).unwrap();
        std::fs::rename(&tmp, dir.path().join("..data")).unwrap();
        std::fs::remove_dir_all(stamp(n - 1)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = get_json(format!("http://{}/admin/routes", gw.admin)).await;
            if v["routes"][0]["percent"] == 10 * n {
                break;
            }
            assert!(Instant::now() < deadline, "swap {n} not followed: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let warnings: Vec<String> = gw
        .lines
        .try_iter()
        .filter(|l| l.contains("\"level\":\"WARN\""))
        .collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
}

/// A plan's shadow gate judges at most what the gateway keeps: a `guard.shadow_window`
/// longer than the routes file's `compare.retention` is refused by `check`, not read short.
#[test]
fn a_shadow_window_longer_than_the_retention_is_refused() {
    let head = "listen: 127.0.0.1:8080\nlegacy: {url: http://127.0.0.1:9001}\nservices:\n  orders: {url: http://127.0.0.1:9002}\nplans: plans\nroutes:\n  - name: a\n    match: {prefix: /a}\n    service: orders\n    percent: 0\n    shadow: {}\n";
    let plan = |window: &str| {
        format!(
            "route: a\nsteps:\n  - {{ percent: 10, hold: 1m }}\nguard:\n  min_shadow_match: 0.99\n  shadow_window: {window}\n"
        )
    };
    for (compare, window, ok) in [
        ("", "20m", false),
        ("", "15m", true),
        ("compare: {retention: 30m}\n", "20m", true),
    ] {
        let (dir, file) = routes_file(&format!("{compare}{head}"));
        std::fs::create_dir(dir.path().join("plans")).unwrap();
        std::fs::write(dir.path().join("plans/a.yaml"), plan(window)).unwrap();
        let (code, out, err) = strangler(&["check", file.to_str().unwrap()], &[]);
        if ok {
            assert_eq!(code, Some(0), "{compare}{window}: {out}{err}");
        } else {
            assert_eq!(code, Some(1), "{compare}{window}: {out}{err}");
            assert!(
                format!("{out}{err}").contains("compare.retention (15m)"),
                "{out}{err}"
            );
        }
    }
}

/// The route page's charts have what they need from the API: each slot's p99 beside its
/// requests and errors; and a plan that ended shows no hold left to serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_carry_each_slots_p99_and_an_ended_plan_no_hold() {
    let (legacy, new) = (Flaky::start().await, Flaky::start().await);
    let (_dir, routes) = plan_setup(
        &legacy.url(),
        &new.url(),
        "compare: {resolution: 1s, window: 10s, retention: 60s}\n",
        "percent: 50",
        "route: orders-read\nsteps:\n  - { percent: 60, hold: 1h }\n  - { percent: 100 }\n",
    );
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    let c = client();
    for i in 0..40 {
        c.get(format!("http://{}/api/orders/{i}", gw.public))
            .send()
            .await
            .unwrap();
    }
    let v = get_json(format!(
        "http://{}/admin/compare?series=1&route=orders-read",
        gw.admin
    ))
    .await;
    for side in ["legacy", "new"] {
        let points = v["routes"][0][side]["series"].as_array().unwrap().clone();
        let busy: Vec<&Value> = points
            .iter()
            .filter(|p| p[1].as_u64().unwrap() > 0)
            .collect();
        assert!(!busy.is_empty(), "{side}: {points:?}");
        for p in &points {
            assert_eq!(p.as_array().unwrap().len(), 4, "{p}");
            assert_eq!(p[1].as_u64().unwrap() > 0, p[3].is_number(), "{p}");
        }
    }
    let admin = format!("http://{}", gw.admin);
    let (code, _, err) = strangler(&["plan", "start", "orders-rollout", "--admin", &admin], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        status(&gw, "orders-rollout").await["hold_left_seconds"]
            .as_f64()
            .unwrap()
            > 3000.0
    );
    let (code, _, err) = strangler(&["plan", "abort", "orders-rollout", "--admin", &admin], &[]);
    assert_eq!(code, Some(0), "{err}");
    let s = status(&gw, "orders-rollout").await;
    assert_eq!(s["state"], "aborted");
    assert_eq!(s["hold_left_seconds"], Value::Null, "{s}");
}
