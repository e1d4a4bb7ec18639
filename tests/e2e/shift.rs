//! Shifting traffic in place: `strangler shift` and `POST /admin/routes/{name}/percent`
//! change only the value, keep the file's comments and layout, and take effect.

use crate::support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use strangler::Config;
use strangler::{AccessLog, LogFormat};
use support::*;

const EXAMPLE: &str = include_str!("../../routes/example.yaml");

/// The example plans, which the example routes file names (`plans: ../migrations-plan`).
const PLANS: [(&str, &str); 2] = [
    (
        "orders-read.yaml",
        include_str!("../../migrations-plan/orders-read.yaml"),
    ),
    (
        "billing.yaml",
        include_str!("../../migrations-plan/billing.yaml"),
    ),
];

/// Writes the example plans into `dir/migrations-plan`.
fn plans_in(dir: &std::path::Path) {
    std::fs::create_dir_all(dir.join("migrations-plan")).unwrap();
    for (name, text) in PLANS {
        std::fs::write(dir.join("migrations-plan").join(name), text).unwrap();
    }
}

/// The example routes file laid out as in the repository (`routes/`, `migrations-plan/`)
/// in a new temporary directory; keep the directory alive.
fn example_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("routes")).unwrap();
    let file = dir.path().join("routes/example.yaml");
    std::fs::write(&file, EXAMPLE).unwrap();
    plans_in(dir.path());
    (dir, file)
}

fn strangler(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_strangler"))
        .args(args)
        .output()
        .unwrap()
}

fn differing_lines(a: &str, b: &str) -> Vec<(String, String)> {
    assert_eq!(
        a.lines().count(),
        b.lines().count(),
        "the number of lines changed"
    );
    a.lines()
        .zip(b.lines())
        .filter(|(x, y)| x != y)
        .map(|(x, y)| (x.to_string(), y.to_string()))
        .collect()
}

#[test]
fn shift_changes_exactly_one_line_of_a_commented_file() {
    let (_dir, file) = example_file();
    let out = strangler(&["shift", file.to_str().unwrap(), "orders-read", "30"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("25% -> 30%"));
    let after = std::fs::read_to_string(&file).unwrap();
    let diff = differing_lines(EXAMPLE, &after);
    assert_eq!(diff.len(), 1, "{diff:?}");
    let (old, new) = &diff[0];
    assert!(old.trim_start().starts_with("percent: 25"), "{old}");
    // The comment after the value, and the spacing before it, are kept.
    assert_eq!(new, &old.replacen("25", "30", 1));
    assert_eq!(Config::load(&file).unwrap().routes[0].percent_bp, 3000);
    // Same length: 25 and 30 are both two characters, and nothing else moved.
    assert_eq!(after.len(), EXAMPLE.len());
}

#[test]
fn shift_inserts_a_missing_percent_at_the_routes_indentation() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    let text = "listen: 127.0.0.1:8080\nlegacy: {url: http://127.0.0.1:9001}\nservices:\n  orders: {url: http://127.0.0.1:9002}\nroutes:\n    -   name: orders  # eight columns in\n        match: {prefix: /api/orders}\n        service: orders\n";
    std::fs::write(&file, text).unwrap();
    let out = strangler(&["shift", file.to_str().unwrap(), "orders", "12.5"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        after,
        text.replace(
            "# eight columns in\n",
            "# eight columns in\n        percent: 12.5\n"
        )
    );
    assert_eq!(Config::load(&file).unwrap().routes[0].percent_bp, 1250);
}

#[test]
fn shift_refuses_bad_input_and_read_only_files() {
    let (_dir, file) = example_file();
    let f = file.to_str().unwrap();
    for (args, says) in [
        (vec!["shift", f, "orders-read", "101"], "percent"),
        (vec!["shift", f, "orders-read", "1.234"], "percent"),
        (vec!["shift", f, "no-such-route", "5"], "no route named"),
    ] {
        let out = strangler(&args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        EXAMPLE,
        "a refused shift wrote"
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444)).unwrap();
    let out = strangler(&["shift", f, "orders-read", "5"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("read-only") && err.contains("at its source"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), EXAMPLE);
}

fn two_routes(head: &str) -> String {
    format!(
        "{head}routes:\n  # first\n  - name: a\n    match: {{prefix: /a}}\n    service: orders\n    percent: 0\n  # second\n  - name: b\n    match: {{prefix: /b}}\n    service: orders\n"
    )
}

async fn in_process(file: &Path) -> Gateway {
    let running = strangler::start(
        Config::load(file).unwrap(),
        AccessLog::new(LogFormat::Json, false),
    )
    .await
    .unwrap();
    Gateway { running }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_admin_shifts_of_two_routes_both_survive() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    let text = two_routes(&config_head(&legacy.url(), &[("orders", &orders.url())]));
    std::fs::write(&file, &text).unwrap();
    let gw = in_process(&file).await;
    let c = client();
    let (ra, rb) = tokio::join!(
        c.post(gw.admin_url("/admin/routes/a/percent"))
            .header("content-type", "application/json")
            .body(r#"{"percent": 100}"#)
            .send(),
        c.post(gw.admin_url("/admin/routes/b/percent"))
            .header("content-type", "application/json")
            .body(r#"{"percent": 100}"#)
            .send(),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.status(), 200);
    assert_eq!(rb.status(), 200);
    let va: serde_json::Value = ra.json().await.unwrap();
    assert_eq!(va["percent_before"], 0);
    assert_eq!(va["percent"], 100);
    let after = std::fs::read_to_string(&file).unwrap();
    let cfg = Config::load(&file).unwrap();
    assert_eq!(cfg.routes[0].percent_bp, 10_000, "{after}");
    assert_eq!(cfg.routes[1].percent_bp, 10_000, "{after}");
    assert!(after.contains("  # first\n") && after.contains("  # second\n"));
    // In force at once.
    assert_eq!(
        c.get(gw.url("/a"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "orders"
    );
    assert_eq!(
        c.get(gw.url("/b"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "orders"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, r#"strangler_route_percent{route="b"}"#),
        Some(100.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_shift_errors() {
    let legacy = Upstream::start("legacy").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    let head = config_head(&legacy.url(), &[("orders", &legacy.url())]);
    std::fs::write(&file, two_routes(&head)).unwrap();
    let gw = in_process(&file).await;
    let c = client();
    let post = |route: &str, body: &'static str| {
        c.post(gw.admin_url(&format!("/admin/routes/{route}/percent")))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = post("zzz", r#"{"percent": 5}"#).await.unwrap();
    assert_eq!(r.status(), 404);
    for body in [
        r#"{"percent": 101}"#,
        r#"{"percent": 1.234}"#,
        r#"{"pct": 5}"#,
        "not json",
    ] {
        let r = post("a", body).await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
    }
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444)).unwrap();
    let r = post("a", r#"{"percent": 5}"#).await.unwrap();
    assert_eq!(r.status(), 409);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "read_only");
    assert!(
        v["message"].as_str().unwrap().contains("at its source"),
        "{v}"
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    // What a page on another site could send: refused, and the file is untouched.
    let before = std::fs::read_to_string(&file).unwrap();
    let r = c
        .post(gw.admin_url("/admin/routes/a/percent"))
        .header("content-type", "text/plain")
        .body(r#"{"percent": 100}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = c
        .post(gw.admin_url("/admin/routes/a/percent"))
        .header("content-type", "application/json")
        .header("origin", "https://evil.example")
        .body(r#"{"percent": 100}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(gw.admin_url("/admin/reload"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
}

/// Through a symlink (as a ConfigMap mounts files), the target changes and the link stays.
#[test]
fn shift_through_a_symlink_edits_the_target() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("real")).unwrap();
    std::fs::create_dir(dir.path().join("link")).unwrap();
    let real = dir.path().join("real/routes.yaml");
    let link = dir.path().join("link/routes.yaml");
    std::fs::write(&real, EXAMPLE).unwrap();
    plans_in(dir.path());
    std::os::unix::fs::symlink("../real/routes.yaml", &link).unwrap();
    let out = strangler(&["shift", link.to_str().unwrap(), "orders-read", "40"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(Config::load(&real).unwrap().routes[0].percent_bp, 4000);
}

/// Several processes shifting different routes of one file at once: every change survives.
#[test]
fn concurrent_shifts_from_several_processes_all_survive() {
    let (_dir, file) = example_file();
    let f = file.to_str().unwrap();
    let routes = ["orders-read", "orders-write", "billing", "invoice-pdf"];
    let children: Vec<_> = routes
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            (0..3).map(move |_| {
                Command::new(env!("CARGO_BIN_EXE_strangler"))
                    .args(["shift", f, r, &format!("{}", 11 + i)])
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let cfg = Config::load(&file).unwrap();
    for (i, r) in routes.iter().enumerate() {
        let got = cfg.routes.iter().find(|x| x.name == *r).unwrap().percent_bp;
        assert_eq!(got, (11 + i as u32) * 100, "{r}");
    }
}

/// A routes file `root:nogroup 640`, read by a gateway running as `nobody:nogroup`: a shift
/// run as root keeps owner, group and mode, so the gateway can still read the file, and
/// applies the change. (Recreated only as root, as CI runs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shift_keeps_the_files_owner_group_and_mode() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !is_root() {
        eprintln!("skipped: recreating a file owned by another user needs root");
        return;
    }
    let legacy = Upstream::start("legacy").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::write(
        &file,
        format!(
            "{}  orders:\n    url: {}\nroutes:\n  - name: a\n    match: {{prefix: /}}\n    service: orders\n",
            config_head(&legacy.url(), &[]),
            legacy.url()
        ),
    )
    .unwrap();
    const NOGROUP: u32 = 65534;
    std::os::unix::fs::chown(&file, Some(0), Some(NOGROUP)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let gw = GatewayProcess::spawn_as(&file, 65534, NOGROUP).await;
    let out = strangler(&["shift", file.to_str().unwrap(), "a", "35"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = std::fs::metadata(&file).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, NOGROUP, 0o640));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let v: serde_json::Value = client()
            .get(format!("http://{}/admin/routes", gw.admin))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["routes"][0]["percent"] == 35 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway running as nobody did not apply the shift"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Another tool rewriting the file in place, in two writes 20 ms apart, while shifts run: no
/// shift ever writes back a half-written file (each waits for the file to be still, or
/// refuses), so no route is ever lost.
#[test]
fn a_shift_never_writes_back_a_half_written_file() {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let routes: String = (0..20)
        .map(|i| format!("  - name: r{i}\n    match: {{prefix: /r{i}}}\n    service: orders\n"))
        .collect();
    let head = "listen: 127.0.0.1:8080\nlegacy: {url: http://127.0.0.1:9001}\nservices:\n  orders: {url: http://127.0.0.1:9002}\nroutes:\n";
    let full = format!("{head}{routes}");
    // The first write stops after ten whole routes: a valid file, with half the routes.
    let cut = full.match_indices("  - name: r10\n").next().unwrap().0;
    let (first, second) = full.split_at(cut);
    let (_dir, file) = routes_file(&full);
    // A shift's edit (`percent: 7`) on a file with fewer than 20 routes: a half-written file
    // written back, its missing routes lost.
    let lost = |text: &str| text.contains("percent: 7") && text.matches("- name:").count() < 20;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let losses = std::sync::Arc::new(AtomicUsize::new(0));
    let writer = {
        let (file, stop, losses) = (file.clone(), stop.clone(), losses.clone());
        let (first, second) = (first.to_string(), second.to_string());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if lost(&std::fs::read_to_string(&file).unwrap()) {
                    losses.fetch_add(1, Ordering::Relaxed);
                }
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&file)
                    .unwrap();
                f.write_all(first.as_bytes()).unwrap();
                f.sync_data().unwrap();
                std::thread::sleep(std::time::Duration::from_millis(20));
                f.write_all(second.as_bytes()).unwrap();
                drop(f);
                std::thread::sleep(std::time::Duration::from_millis(
                    150 + fastrand::u64(0..100),
                ));
            }
        })
    };
    let mut refused = 0;
    for i in 0..30 {
        let out = strangler(&[
            "shift",
            file.to_str().unwrap(),
            &format!("r{}", i % 20),
            "7",
        ]);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("kept changing"), "{err}");
            refused += 1;
        }
        if lost(&std::fs::read_to_string(&file).unwrap()) {
            losses.fetch_add(1, Ordering::Relaxed);
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(
        losses.load(Ordering::Relaxed),
        0,
        "a shift wrote back a half-written file ({refused} of 30 shifts refused)"
    );
    let out = strangler(&["shift", file.to_str().unwrap(), "r19", "9"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(Config::load(&file).unwrap().routes.len(), 20);
}

/// `strangler shift` as a user without privileges: as root, through `setpriv` as nobody (so
/// that file permissions apply), else as this user.
fn shift_unprivileged(file: &Path, route: &str, percent: &str) -> std::process::Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_strangler"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_strangler"))
    };
    cmd.arg("shift").arg(file).args([route, percent]);
    cmd.output().unwrap()
}

/// An unreadable file and a directory that cannot be written are told apart, from the CLI
/// and from the API, and neither is called a read-only file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shift_says_whether_the_file_or_its_directory_is_the_problem() {
    let legacy = Upstream::start("legacy").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::write(
        &file,
        two_routes(&config_head(&legacy.url(), &[("orders", &legacy.url())])),
    )
    .unwrap();
    let root = is_root();
    if root {
        for p in [dir.path(), &file] {
            std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
        }
    }
    let mode =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    mode(dir.path(), 0o755);
    let gw = if root {
        GatewayProcess::spawn_as(&file, 65534, 65534).await
    } else {
        GatewayProcess::spawn(&file, &[]).await
    };
    let api = || async {
        let r = client()
            .post(format!("http://{}/admin/routes/a/percent", gw.admin))
            .header("content-type", "application/json")
            .body(r#"{"percent": 5}"#)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<serde_json::Value>().await.unwrap())
    };

    // A file that cannot be read (write-only).
    mode(&file, 0o200);
    let out = shift_unprivileged(&file, "a", "5");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot read") && !err.contains("read-only"),
        "{err}"
    );
    let (status, v) = api().await;
    assert_eq!(
        (status, v["error"].as_str()),
        (500, Some("unreadable")),
        "{v}"
    );
    mode(&file, 0o644);

    // A writable file in a directory that cannot be written.
    mode(dir.path(), 0o555);
    let out = shift_unprivileged(&file, "a", "5");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("the directory") && err.contains("cannot be written"),
        "{err}"
    );
    let (status, v) = api().await;
    assert_eq!(
        (status, v["error"].as_str()),
        (409, Some("directory_read_only")),
        "{v}"
    );
    mode(dir.path(), 0o755);

    // Both fixed, the shift goes through.
    let out = shift_unprivileged(&file, "a", "5");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains("percent: 5")
    );

    // A lock file made by root (`sudo strangler shift` first) does not stop the gateway's
    // own shifts: a lock needs only reading.
    if root {
        use std::os::unix::fs::MetadataExt as _;
        let lock = dir.path().join(".routes.yaml.lock");
        std::fs::remove_file(&lock).unwrap();
        let out = strangler(&["shift", file.to_str().unwrap(), "a", "6"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::metadata(&lock).unwrap().uid(), 0);
        let (status, v) = api().await;
        assert_eq!(status, 200, "{v}");
        assert!(
            std::fs::read_to_string(&file)
                .unwrap()
                .contains("percent: 5")
        );
    }
}

/// A file whose modification time is in the future (clock skew, an extracted archive) is
/// shifted: it is seen to be still by reading it twice, not refused as "kept changing".
#[test]
fn a_file_dated_in_the_future_can_be_shifted() {
    let (_dir, file) = routes_file(&two_routes(&config_head(
        "http://127.0.0.1:9001",
        &[("orders", "http://127.0.0.1:9002")],
    )));
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let out = strangler(&["shift", file.to_str().unwrap(), "a", "7"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains("percent: 7")
    );
}
