//! Reloading the routes file while traffic flows: nothing is lost, valid versions take
//! effect, invalid ones change nothing and are counted.

use crate::support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use strangler::Config;
use strangler::{AccessLog, LogFormat};
use support::*;

fn hash(text: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}

/// Writes `text` to `file` the way editors do: a temporary file renamed over it.
fn replace(file: &Path, text: &str) {
    let tmp = file.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

fn version(head: &str, percent: u32) -> String {
    format!(
        "{head}routes:\n  - name: all\n    match: {{prefix: /}}\n    service: orders\n    percent: {percent}\n"
    )
}

async fn routes_hash(admin: &str) -> String {
    let v: serde_json::Value = client()
        .get(format!("{admin}/admin/routes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["config_hash"].as_str().unwrap().to_string()
}

async fn reload_errors(gw: &Gateway) -> f64 {
    metric(
        &gw.metrics().await,
        r#"strangler_config_reloads_total{result="error"}"#,
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_rewrites_under_load_lose_nothing() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    let head = config_head(&legacy.url(), &[("orders", &orders.url())]);
    let first = version(&head, 0);
    std::fs::write(&file, &first).unwrap();
    let cfg = Config::load(&file).unwrap();
    let running = strangler::start(cfg, AccessLog::new(LogFormat::Json, false))
        .await
        .unwrap();
    let _watcher = running.watch().unwrap();
    let gw = Gateway { running };
    let admin = gw.admin_url("");

    // Continuous traffic from 8 clients until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        let url = gw.url("/api/x");
        clients.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let ok = match c.get(&url).send().await {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                sent.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    let mut valid = 0;
    let mut invalid = 0;
    for i in 0..50 {
        let deadline = Instant::now() + Duration::from_secs(10);
        if i % 2 == 0 {
            // Valid: alternately all-new and all-legacy.
            let percent = if (i / 2) % 2 == 0 { 100 } else { 0 };
            let text = version(&head, percent);
            replace(&file, &text);
            let want = hash(&text);
            while routes_hash(&admin).await != want {
                assert!(Instant::now() < deadline, "version {i} never took effect");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // It is in force: a request now goes where it says.
            let resp = client().get(gw.url("/probe")).send().await.unwrap();
            let expect = if percent == 100 { "orders" } else { "legacy" };
            assert_eq!(resp.text().await.unwrap(), expect, "version {i}");
            valid += 1;
        } else {
            let before = reload_errors(&gw).await;
            let in_force = routes_hash(&admin).await;
            replace(
                &file,
                &format!(
                    "{head}routes:\n  - name: all\n    match: {{prefix: /}}\n    service: nowhere-{i}\n"
                ),
            );
            while reload_errors(&gw).await <= before {
                assert!(
                    Instant::now() < deadline,
                    "invalid version {i} was not counted"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(
                routes_hash(&admin).await,
                in_force,
                "an invalid file changed the table"
            );
            invalid += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let m = gw.metrics().await;
    let ok = metric(&m, r#"strangler_config_reloads_total{result="ok"}"#).unwrap();
    let errors = metric(&m, r#"strangler_config_reloads_total{result="error"}"#).unwrap();
    let sent = sent.load(Ordering::Relaxed);
    println!(
        "requests sent {sent}, failed {}, reloads ok {ok}, errors {errors}",
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(sent >= 1000, "only {sent} requests were sent");
    assert_eq!((valid, invalid), (25, 25));
    // The start counts one ok; every valid version one more; every invalid one an error.
    assert!(ok >= 26.0, "{m}");
    assert!(errors >= 25.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reload_applies_or_answers_the_errors() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    let head = config_head(&legacy.url(), &[("orders", &orders.url())]);
    std::fs::write(&file, version(&head, 0)).unwrap();
    let running = strangler::start(
        Config::load(&file).unwrap(),
        AccessLog::new(LogFormat::Json, false),
    )
    .await
    .unwrap();
    let gw = Gateway { running };
    let c = client();

    let bad = format!(
        "{head}routes:\n  - name: all\n    match: {{prefix: /, bogus: 1}}\n    service: orders\n    percent: 300\n"
    );
    std::fs::write(&file, &bad).unwrap();
    let resp = c.post(gw.admin_url("/admin/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "invalid_config");
    let errors: Vec<String> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("routes[0].match.bogus")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("routes[0].percent")),
        "{errors:?}"
    );
    // The same list `strangler check` prints.
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_strangler"))
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&check.stdout);
    for e in &errors {
        assert!(
            printed.contains(e.as_str()),
            "check printed:\n{printed}\nmissing: {e}"
        );
    }
    let resp = c.get(gw.url("/a")).send().await.unwrap();
    assert_eq!(
        resp.text().await.unwrap(),
        "legacy",
        "the old table keeps serving"
    );

    let good = version(&head, 100);
    std::fs::write(&file, &good).unwrap();
    let resp = c.post(gw.admin_url("/admin/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["config_hash"], hash(&good));
    assert_eq!(v["changed"], true);
    let resp = c.get(gw.url("/a")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "orders");
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, r#"strangler_route_percent{route="all"}"#),
        Some(100.0),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "strangler_config_info{{hash=\"{}\"}} 1",
            hash(&good)
        )),
        "{m}"
    );
    // Reloading an unchanged file swaps nothing.
    let v: serde_json::Value = c
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["changed"], false);
}

/// State-changing admin calls need the bearer token; reads do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_guards_changes() {
    let legacy = Upstream::start("legacy").await;
    let (_dir, file) = routes_file(&format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n  token_env: STRANGLER_TEST_TOKEN\nlegacy: {{url: {}}}\nroutes: []\n",
        legacy.url()
    ));
    let gw = GatewayProcess::spawn(&file, &[("STRANGLER_TEST_TOKEN", "s3cret-token")]).await;
    let c = client();
    let url = format!("http://{}/admin/reload", gw.admin);
    let r = c.post(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    for wrong in [
        "Bearer s3cret-toke",
        "Bearer s3cret-token2",
        "Basic s3cret-token",
        "s3cret-token",
    ] {
        let r = c
            .post(&url)
            .header("authorization", wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{wrong}");
    }
    // The scheme is case-insensitive (RFC 9110 §11.1); the token is not.
    for right in [
        "Bearer s3cret-token",
        "bearer s3cret-token",
        "BEARER  s3cret-token",
    ] {
        let r = c
            .post(&url)
            .header("authorization", right)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{right}");
    }
    for read in ["/admin/routes", "/metrics", "/healthz", "/readyz"] {
        let r = c
            .get(format!("http://{}{read}", gw.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{read}");
    }
}

/// A routes file that is a symlink to a file in another directory: editing the target is
/// seen (its directory is watched too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_of_a_symlinks_target_are_seen() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("real")).unwrap();
    std::fs::create_dir(dir.path().join("conf")).unwrap();
    let real = dir.path().join("real/routes.yaml");
    let link = dir.path().join("conf/routes.yaml");
    let head = config_head(&legacy.url(), &[("orders", &orders.url())]);
    std::fs::write(&real, version(&head, 0)).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let running = strangler::start(
        Config::load(&link).unwrap(),
        AccessLog::new(LogFormat::Json, false),
    )
    .await
    .unwrap();
    let _watcher = running.watch().unwrap();
    let gw = Gateway { running };
    let text = version(&head, 100);
    replace(&real, &text);
    let deadline = Instant::now() + Duration::from_secs(10);
    while routes_hash(&gw.admin_url("")).await != hash(&text) {
        assert!(
            Instant::now() < deadline,
            "the edit of the target was not seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Adding or removing `admin.token_env` by reload applies at once, and says so; a reload can
/// never leave an admin listener beyond loopback without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_the_admin_token_and_never_drops_a_required_one() {
    let legacy = Upstream::start("legacy").await;
    let plain = format!("{}routes: []\n", config_head(&legacy.url(), &[]));
    let guarded = plain.replace(
        "admin:\n  listen: 127.0.0.1:0\n",
        "admin:\n  listen: 127.0.0.1:0\n  token_env: STRANGLER_TEST_TOKEN\n",
    );
    assert_ne!(plain, guarded);
    let (_dir, file) = routes_file(&plain);
    let gw = GatewayProcess::spawn(&file, &[("STRANGLER_TEST_TOKEN", "t0ken")]).await;
    let c = client();
    let reload = |auth: Option<&'static str>| {
        let mut r = c.post(format!("http://{}/admin/reload", gw.admin));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    assert_eq!(reload(None).await.unwrap().status(), 200);
    replace(&file, &guarded);
    let r = reload(None).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["warnings"].to_string().contains("need it from now on"),
        "{v}"
    );
    assert_eq!(reload(None).await.unwrap().status(), 401);
    replace(&file, &plain);
    let r = reload(Some("Bearer t0ken")).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["warnings"].to_string().contains("no longer need a token"),
        "{v}"
    );
    assert_eq!(reload(None).await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_cannot_leave_an_open_admin_listener_without_a_token() {
    let legacy = Upstream::start("legacy").await;
    let open = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 0.0.0.0:0\n  token_env: STRANGLER_TEST_TOKEN\nlegacy: {{url: {}}}\nroutes: []\n",
        legacy.url()
    );
    let (_dir, file) = routes_file(&open);
    let gw = GatewayProcess::spawn(&file, &[("STRANGLER_TEST_TOKEN", "t0ken")]).await;
    let admin = format!("127.0.0.1:{}", gw.admin.port());
    replace(
        &file,
        &open.replace("STRANGLER_TEST_TOKEN", "STRANGLER_UNSET_TOKEN"),
    );
    let r = client()
        .post(format!("http://{admin}/admin/reload"))
        .header("authorization", "Bearer t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["errors"].to_string().contains("needs a token"), "{v}");
    // The token is still required.
    let r = client()
        .post(format!("http://{admin}/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// A reload that sets a default compare window the slots made at start cannot hold says
/// so, and the comparison uses (and reports) the longest window it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_a_window_beyond_the_slots_in_force_warns_and_fits() {
    let legacy = Upstream::start("legacy").await;
    let head = config_head(&legacy.url(), &[]);
    let small =
        format!("{head}compare: {{resolution: 1s, retention: 1m, window: 1m}}\nroutes: []\n");
    let large =
        format!("{head}compare: {{resolution: 1s, retention: 10m, window: 5m}}\nroutes: []\n");
    let (_dir, file) = routes_file(&small);
    let gw = GatewayProcess::spawn(&file, &[]).await;
    replace(&file, &large);
    let r = client()
        .post(format!("http://{}/admin/reload", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["warnings"]
            .to_string()
            .contains("compare.window 5m does not fit"),
        "{v}"
    );
    let v: serde_json::Value = client()
        .get(format!("http://{}/admin/compare", gw.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["window_seconds"], 60.0, "{v}");
}
