//! The watch of the routes file reacts to changes of the file, never to the gateway's own
//! reads of it: one invalid write is one error, an idle gateway reads nothing, and a valid
//! change is in force within a second. Each against a real `strangler serve`.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use notify::Watcher as _;
use notify::event::{AccessKind, EventKind};
use support::*;

fn routes(legacy: &str, percent: u32) -> String {
    format!(
        "{}  orders:\n    url: {legacy}\nroutes:\n  - name: all\n    match: {{prefix: /}}\n    service: orders\n    percent: {percent}\n",
        config_head(legacy, &[])
    )
}

async fn admin_get(gw: &GatewayProcess, path: &str) -> String {
    client()
        .get(format!("http://{}{path}", gw.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn reloads(gw: &GatewayProcess, result: &str) -> f64 {
    let text = admin_get(gw, "/metrics").await;
    metric(
        &text,
        &format!("strangler_config_reloads_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

async fn percent_in_force(gw: &GatewayProcess) -> f64 {
    let v: serde_json::Value = serde_json::from_str(&admin_get(gw, "/admin/routes").await).unwrap();
    v["routes"][0]["percent"].as_f64().unwrap()
}

/// Counts the opens of `file` from now on (inotify, as the gateway's own watch sees them).
fn count_opens(file: &Path) -> (notify::RecommendedWatcher, Arc<AtomicUsize>) {
    let opens = Arc::new(AtomicUsize::new(0));
    let seen = opens.clone();
    let mut w = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        if let Ok(e) = e
            && matches!(e.kind, EventKind::Access(AccessKind::Open(_)))
        {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    })
    .unwrap();
    w.watch(file, notify::RecursiveMode::NonRecursive).unwrap();
    (w, opens)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_invalid_write_is_one_error() {
    let legacy = Upstream::start("legacy").await;
    let (_dir, file) = routes_file(&routes(&legacy.url(), 0));
    let gw = GatewayProcess::spawn(&file, &[]).await;
    assert_eq!(reloads(&gw, "error").await, 0.0);
    std::fs::write(&file, "listen: [this is not a routes file\n").unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        reloads(&gw, "error").await,
        1.0,
        "one invalid write must be counted once"
    );
    // The old config keeps serving.
    let r = client()
        .get(format!("http://{}/x", gw.public))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_gateway_does_not_reread_its_file() {
    let legacy = Upstream::start("legacy").await;
    let (_dir, file) = routes_file(&routes(&legacy.url(), 0));
    let gw = GatewayProcess::spawn(&file, &[]).await;
    // One change, so the watch has fired and reloaded once.
    std::fs::write(&file, routes(&legacy.url(), 10)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while percent_in_force(&gw).await != 10.0 {
        assert!(Instant::now() < deadline, "the change was not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_watcher, opens) = count_opens(&file);
    let ok_before = reloads(&gw, "ok").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        opens.load(Ordering::SeqCst),
        0,
        "the routes file was opened while nothing changed"
    );
    assert_eq!(reloads(&gw, "ok").await, ok_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_change_is_in_force_within_a_second() {
    let legacy = Upstream::start("legacy").await;
    let (_dir, file) = routes_file(&routes(&legacy.url(), 0));
    let gw = GatewayProcess::spawn(&file, &[]).await;
    for percent in [20, 30, 40] {
        let written = Instant::now();
        std::fs::write(&file, routes(&legacy.url(), percent)).unwrap();
        while percent_in_force(&gw).await != f64::from(percent) {
            assert!(
                written.elapsed() < Duration::from_secs(1),
                "percent {percent} not in force after {:?}",
                written.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(reloads(&gw, "error").await, 0.0);
}
