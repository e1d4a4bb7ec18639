//! The watch of the routes file reacts to changes of the file, never to the gateway's own
//! reads of it: one invalid write is one error, an idle gateway reads nothing, and a valid
//! change is in force within a second. Each against a real `strangler serve`.

use crate::support;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::*;

fn routes(legacy: &str, percent: u32) -> String {
    format!(
        "{}  orders:\n    url: {legacy}\nroutes:\n  - name: all\n    match: {{prefix: /}}\n    service: orders\n    percent: {percent}\n",
        config_head(legacy, &[])
    )
}

async fn admin_get(gw: &GatewayProcess, path: &str) -> String {
    get_text(format!("http://{}{path}", gw.admin)).await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_invalid_write_is_one_error() {
    let legacy = Upstream::start("legacy").await;
    let (_dir, file) = routes_file(&routes(&legacy.url(), 0));
    let gw = GatewayProcess::spawn(&file, &[]).await;
    assert_eq!(reloads(&gw, "error").await, 0.0);
    std::fs::write(&file, "listen: [this is not a routes file\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads(&gw, "error").await == 0.0 {
        assert!(
            Instant::now() < deadline,
            "the invalid write was not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The old config keeps serving.
    let r = client()
        .get(format!("http://{}/x", gw.public))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A valid write after it: once it is in force, the watch has handled every event of
    // the invalid one (it handles them in order), and counted it once.
    let ok_before = reloads(&gw, "ok").await;
    std::fs::write(&file, routes(&legacy.url(), 10)).unwrap();
    wait_for_percent(&gw, 10.0, "after the valid write").await;
    assert_eq!(
        reloads(&gw, "error").await,
        1.0,
        "one invalid write must be counted once"
    );
    assert_eq!(reloads(&gw, "ok").await, ok_before + 1.0);
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

async fn wait_for_percent(gw: &GatewayProcess, want: f64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while percent_in_force(gw).await != want {
        assert!(
            Instant::now() < deadline,
            "{what}: percent {want} not in force"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Points `link` at `target` atomically, as deploy tools do (a new link renamed over it).
fn repoint(link: &Path, target: &str) {
    let tmp = link.with_extension("new-link");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

/// The usual release layout: `current -> releases/N`, the gateway started on
/// `current/routes.yaml`. Switching `current` is seen, and so are edits in the new release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_symlink_switch_is_followed() {
    let legacy = Upstream::start("legacy").await;
    let dir = tempfile::tempdir().unwrap();
    for (n, p) in [(1, 10), (2, 20)] {
        let release = dir.path().join(format!("releases/{n}"));
        std::fs::create_dir_all(&release).unwrap();
        std::fs::write(release.join("routes.yaml"), routes(&legacy.url(), p)).unwrap();
    }
    let current = dir.path().join("current");
    std::os::unix::fs::symlink("releases/1", &current).unwrap();
    let gw = GatewayProcess::spawn(&current.join("routes.yaml"), &[]).await;
    assert_eq!(percent_in_force(&gw).await, 10.0);
    repoint(&current, "releases/2");
    wait_for_percent(&gw, 20.0, "after switching current to releases/2").await;
    std::fs::write(
        dir.path().join("releases/2/routes.yaml"),
        routes(&legacy.url(), 25),
    )
    .unwrap();
    wait_for_percent(&gw, 25.0, "after editing releases/2").await;
    // The old release is no longer what counts.
    std::fs::write(
        dir.path().join("releases/1/routes.yaml"),
        routes(&legacy.url(), 11),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(percent_in_force(&gw).await, 25.0);
}

/// A file symlink moved to a file in another directory: edits there are seen, a shift through
/// the link included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_symlink_moved_elsewhere_is_followed() {
    let legacy = Upstream::start("legacy").await;
    let dir = tempfile::tempdir().unwrap();
    for (d, p) in [("a", 10), ("b", 20)] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
        std::fs::write(
            dir.path().join(d).join("routes.yaml"),
            routes(&legacy.url(), p),
        )
        .unwrap();
    }
    std::fs::create_dir(dir.path().join("conf")).unwrap();
    let link = dir.path().join("conf/routes.yaml");
    std::os::unix::fs::symlink("../a/routes.yaml", &link).unwrap();
    let gw = GatewayProcess::spawn(&link, &[]).await;
    repoint(&link, "../b/routes.yaml");
    wait_for_percent(&gw, 20.0, "after moving the link").await;
    std::fs::write(dir.path().join("b/routes.yaml"), routes(&legacy.url(), 30)).unwrap();
    wait_for_percent(&gw, 30.0, "after editing the new target").await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strangler"))
        .args(["shift", link.to_str().unwrap(), "all", "40"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_percent(&gw, 40.0, "after a shift through the link").await;
}

/// The file's directory renamed away and made again: the watch follows, and says in the log
/// what it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_renamed_and_made_again_is_followed() {
    let legacy = Upstream::start("legacy").await;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(conf.join("routes.yaml"), routes(&legacy.url(), 10)).unwrap();
    let gw = GatewayProcess::spawn(&conf.join("routes.yaml"), &[]).await;
    std::fs::rename(&conf, dir.path().join("conf.old")).unwrap();
    // The gateway looks while the directory is missing: it says so and polls.
    gw.wait_line(
        "the routes file cannot be found where it is named: polling until it is back",
        10,
    );
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(conf.join("routes.yaml"), routes(&legacy.url(), 20)).unwrap();
    wait_for_percent(&gw, 20.0, "after the directory was made again").await;
    std::fs::write(conf.join("routes.yaml"), routes(&legacy.url(), 30)).unwrap();
    wait_for_percent(&gw, 30.0, "after an edit in the new directory").await;
}

/// A deploy that swaps the directory at once (`mv conf conf.old && mkdir conf && cp ...`),
/// quicker than the watch's debounce, and then `rm -rf` and make it again: each new
/// directory is watched, though it has the old one's path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_swapped_at_once_is_followed() {
    let legacy = Upstream::start("legacy").await;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(conf.join("routes.yaml"), routes(&legacy.url(), 10)).unwrap();
    let gw = GatewayProcess::spawn(&conf.join("routes.yaml"), &[]).await;
    std::fs::rename(&conf, dir.path().join("conf.old")).unwrap();
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(conf.join("routes.yaml"), routes(&legacy.url(), 20)).unwrap();
    wait_for_percent(&gw, 20.0, "after the directory was swapped").await;
    std::fs::write(conf.join("routes.yaml"), routes(&legacy.url(), 30)).unwrap();
    wait_for_percent(&gw, 30.0, "after an edit in the new directory").await;
    std::fs::remove_dir_all(&conf).unwrap();
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(conf.join("routes.yaml"), routes(&legacy.url(), 40)).unwrap();
    wait_for_percent(&gw, 40.0, "after the directory was removed and made again").await;
    std::fs::write(conf.join("routes.yaml"), routes(&legacy.url(), 50)).unwrap();
    wait_for_percent(&gw, 50.0, "after an edit in the remade directory").await;
}
