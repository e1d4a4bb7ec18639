//! The dashboard at the admin listener's `/`, driven by a real headless Chromium against a
//! gateway that served known traffic: the page shows the right routes and figures.

mod support;

use support::*;

fn chromium() -> String {
    for c in [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ] {
        if std::path::Path::new(c).exists() {
            return c.to_string();
        }
    }
    panic!("no Chromium: apt-get install -y chromium (.ci/run installs it)");
}

/// The `<tr data-route="NAME">…</tr>` of the rendered page.
fn row<'a>(dom: &'a str, route: &str) -> &'a str {
    let start = dom
        .find(&format!("<tr data-route=\"{route}\""))
        .unwrap_or_else(|| panic!("no row for {route} in the page:\n{dom}"));
    let end = dom[start..].find("</tr>").unwrap() + start;
    &dom[start..end]
}

fn field<'a>(row: &'a str, name: &str) -> &'a str {
    let at = row
        .find(&format!("data-field=\"{name}\""))
        .unwrap_or_else(|| panic!("no {name} in {row}"));
    let open = row[at..].find('>').unwrap() + at + 1;
    let close = row[open..].find('<').unwrap() + open;
    &row[open..close]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_routes_and_figures_in_a_real_browser() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let yaml = format!(
        "{}override: {{header: x-strangler-side}}\nroutes:\n  - name: flaky\n    match: {{prefix: /flaky}}\n    service: orders\n    percent: 10\n  - name: quiet\n    match: {{prefix: /quiet}}\n    service: orders\n    percent: 12.5\n",
        config_head(&legacy.url(), &[("orders", &orders.url())])
    );
    let gw = Gateway::start(&yaml).await;
    forced_traffic(&gw, "/flaky", "legacy", 400, 0).await;
    forced_traffic(&gw, "/flaky", "new", 400, 10).await;
    forced_traffic(&gw, "/quiet", "new", 3, 0).await;
    let hash: serde_json::Value = client()
        .get(gw.admin_url("/admin/routes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let dom = rendered(&gw.admin_url("/")).await;
    assert!(
        dom.contains("data-loaded=\"1\""),
        "the page did not load its data:\n{dom}"
    );
    assert!(
        dom.contains(hash["config_hash"].as_str().unwrap()),
        "config hash shown"
    );

    let flaky = row(&dom, "flaky");
    assert_eq!(field(flaky, "percent"), "10%");
    assert_eq!(field(flaky, "legacy-errors"), "0.00%");
    assert_eq!(field(flaky, "new-errors"), "10.00%");
    assert_eq!(field(flaky, "verdict"), "worse");
    for side in ["legacy-p99", "new-p99"] {
        assert!(field(flaky, side).ends_with(" ms"), "{side}: {flaky}");
    }
    let legacy_rps: f64 = field(flaky, "legacy-rps").parse().unwrap();
    let new_rps: f64 = field(flaky, "new-rps").parse().unwrap();
    assert!(
        legacy_rps > 0.0 && (legacy_rps - new_rps).abs() < 1e-9,
        "equal counts, equal rates: {flaky}"
    );
    // The chart has a line per side.
    assert!(flaky.contains("data-chart=\"flaky\""), "{flaky}");
    assert!(
        flaky.contains("data-side=\"legacy\"") && flaky.contains("data-side=\"new\""),
        "{flaky}"
    );
    assert!(
        dom.contains("data-reasons=\"flaky\""),
        "the reasons of a worse verdict are shown"
    );

    // The evidence: each test's statistic over its threshold (4.6 at 99%).
    let evidence = field(flaky, "evidence");
    assert!(evidence.starts_with("errors "), "{evidence}");
    assert!(evidence.contains("/ 4.6"), "{evidence}");
    let errors_lr: f64 = evidence["errors ".len()..]
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        errors_lr >= 4.6,
        "a worse verdict's statistic is over the threshold: {evidence}"
    );

    let quiet = row(&dom, "quiet");
    assert_eq!(field(quiet, "percent"), "12.5%");
    assert_eq!(field(quiet, "verdict"), "insufficient_data");
    assert_eq!(field(quiet, "legacy-p99"), "–");

    // Self-contained: the page names no other host.
    let page = client()
        .get(gw.admin_url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for external in ["<link", "src=\"", "url(", "@import", "https://"] {
        assert!(
            !page.contains(external),
            "the page loads something from elsewhere: {external}"
        );
    }
}

/// The page as headless Chromium renders it, after its scripts ran.
async fn rendered(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_each_plan_with_its_step_hold_guard_and_history() {
    let (legacy, new) = (Flaky::start().await, Flaky::start().await);
    let (_dir, routes) = plan_setup(
        &legacy.url(),
        &new.url(),
        "",
        "percent: 0",
        "route: orders-read\nsteps:\n  - { percent: 10, hold: 1h }\n  - { percent: 100 }\nguard:\n  min_requests: 1000\n",
    );
    let gw = GatewayProcess::spawn(&routes, &[]).await;
    let started = client()
        .post(format!(
            "http://{}/admin/plans/orders-rollout/start",
            gw.admin
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 200);
    for i in 0..50 {
        client()
            .get(format!("http://{}/api/orders/{i}", gw.public))
            .send()
            .await
            .unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let dom = rendered(&format!("http://{}/", gw.admin)).await;
    let start = dom
        .find("<tr data-plan=\"orders-rollout\"")
        .unwrap_or_else(|| panic!("no plan row:\n{dom}"));
    let plan = &dom[start..start + dom[start..].find("</tr>").unwrap()];
    assert_eq!(field(plan, "route"), "orders-read");
    assert_eq!(field(plan, "state"), "running");
    assert_eq!(field(plan, "step"), "1 of 2");
    assert_eq!(field(plan, "percent"), "10%");
    let left: u64 = field(plan, "hold-left")
        .trim_end_matches(" s")
        .parse()
        .unwrap();
    assert!((3500..=3600).contains(&left), "{plan}");
    assert_eq!(field(plan, "guard"), "insufficient_data");
    assert!(field(plan, "evidence").contains("/ 4.6"), "{plan}");
    assert!(
        field(plan, "waiting").contains("more traffic: legacy"),
        "{plan}"
    );
    let history = &dom[dom.find("data-history=\"orders-rollout\"").unwrap()..];
    assert!(
        history.contains("pending → running at 10%: started: step 1 of 2 (10%)"),
        "{history}"
    );
}
