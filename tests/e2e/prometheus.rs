//! Against a real Prometheus server (Debian `prometheus`, started here on loopback):
//! every query of `dashboards/strangler.json` parses and returns the expected series, and
//! several gateways on one routes file add up in `strangler compare --prometheus`.

use crate::support;

use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::prometheus::Prometheus;
use support::*;

fn value(m: &serde_json::Value) -> f64 {
    m["value"][1].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grafana_query_parses_and_returns_the_expected_series() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let dead = format!("http://{}", dead_addr().await);
    let yaml = format!(
        "{}override: {{header: x-strangler-side}}\nroutes:\n  - name: flaky\n    match: {{prefix: /flaky}}\n    service: orders\n    percent: 10\n  - name: broken\n    match: {{prefix: /broken}}\n    service: dead\n    percent: 100\n",
        config_head(&legacy.url(), &[("orders", &orders.url()), ("dead", &dead)])
    );
    let gw = Gateway::start(&yaml).await;
    let prom = Prometheus::start(&[gw.running.admin_addr]).await;

    // Steady traffic to both sides (new with 10% errors) while Prometheus scrapes.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        let url = gw.url("/flaky");
        tokio::spawn(async move {
            let c = client();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let side = if i.is_multiple_of(2) { "legacy" } else { "new" };
                let mut r = c.get(&url).header("x-strangler-side", side);
                if side == "new" && i % 10 == 1 {
                    r = r.header("x-test-status", "500");
                }
                let _ = r.send().await.map(|r| r.bytes());
                if i.is_multiple_of(20) {
                    // A route whose service is down: 502s and upstream connect errors.
                    let _ = c.get(url.replace("/flaky", "/broken")).send().await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Enough scrapes for rate() over 30s to have two samples of every series.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = prom
            .query("count_over_time(strangler_route_percent[30s])")
            .await;
        if r.first().is_some_and(|m| value(m) >= 4.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape the gateway"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("dashboards/strangler.json").unwrap())
            .unwrap();
    let mut checked = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            // What Grafana substitutes: all routes, and a rate interval.
            let q = expr
                .replace("$route", ".*")
                .replace("$__rate_interval", "30s");
            let result = prom.query(&q).await;
            assert!(
                !result.is_empty(),
                "{}: {q} returned nothing",
                panel["title"]
            );
            let labels: Vec<&serde_json::Value> = result.iter().map(|m| &m["metric"]).collect();
            if expr.contains("by (route, side)") || expr.contains("by (route, side, le)") {
                for side in ["legacy", "new"] {
                    assert!(
                        labels
                            .iter()
                            .any(|l| l["route"] == "flaky" && l["side"] == side),
                        "{}: no flaky/{side} series in {labels:?}",
                        panel["title"]
                    );
                }
            }
            if expr.contains("strangler_route_percent") {
                let flaky = result
                    .iter()
                    .find(|m| m["metric"]["route"] == "flaky")
                    .unwrap();
                assert_eq!(value(flaky), 10.0);
            }
            if expr.contains("code=~\"5..\"") {
                // The error rate of new is about 20% of its requests here (every 10th of
                // the odd ones), legacy's 0: both series exist; new's is above legacy's.
                let of = |side: &str| {
                    result
                        .iter()
                        .find(|m| m["metric"]["side"] == side)
                        .map(value)
                        .unwrap_or(0.0)
                };
                assert!(of("new") > of("legacy"), "{result:?}");
            }
            if expr.contains("strangler_upstream_errors_total") {
                assert!(
                    labels.iter().any(|l| l["route"] == "broken"
                        && l["side"] == "new"
                        && l["kind"] == "connect"),
                    "{labels:?}"
                );
            }
            if expr.contains("strangler_served_requests_total") {
                // Both routes send part of their requests to new: a share strictly
                // between 0 and 1.
                let share = value(&result[0]);
                assert!(share > 0.0 && share < 1.0, "{result:?}");
            }
            if expr.contains("strangler_inventory_templates") {
                let mut states: Vec<&str> = labels
                    .iter()
                    .map(|l| l["state"].as_str().unwrap())
                    .collect();
                states.sort();
                assert_eq!(states, ["carved", "legacy_only", "partly"]);
            }
            if expr.contains("strangler_config_info") {
                assert_eq!(result.len(), 1);
                assert_eq!(value(&result[0]), 1.0);
            }
            checked += 1;
        }
    }
    assert!(checked >= 6, "the dashboard has {checked} queries");
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
}

/// Two gateways on one routes file, no balancer in front: Prometheus scrapes both;
/// `strangler compare --prometheus` adds them up; sticky keys agree; so does the config hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_gateways_add_up_in_prometheus() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let (_dir, file) = routes_file(&format!(
        "{}sticky: {{header: x-user-id}}\nroutes:\n  - name: all\n    match: {{prefix: /}}\n    service: orders\n    percent: 50\n",
        config_head(&legacy.url(), &[("orders", &orders.url())])
    ));
    let a = GatewayProcess::spawn(&file, &[]).await;
    let b = GatewayProcess::spawn(&file, &[]).await;
    let prom = Prometheus::start(&[a.admin, b.admin]).await;

    // The same keys through both gateways: each key gets one side, on both.
    let c = client();
    let mut sent = 0u64;
    for k in 0..60 {
        let key = format!("user-{k}-{}", fastrand::u32(..));
        let mut sides = Vec::new();
        for gw in [a.public, b.public] {
            for _ in 0..3 {
                let body = c
                    .get(format!("http://{gw}/x"))
                    .header("x-user-id", &key)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                sides.push(body);
                sent += 1;
            }
        }
        assert!(
            sides.iter().all(|s| *s == sides[0]),
            "key {key} got {sides:?}"
        );
    }
    // Some unmatched-by-key traffic on one gateway only (random draws).
    for _ in 0..40 {
        c.get(format!("http://{}/y", a.public))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        sent += 1;
    }

    prom.wait_for_value("sum(strangler_requests_total)", sent as f64)
        .await;
    // Both replicas run the same config.
    let hashes = prom.query("count by (hash) (strangler_config_info)").await;
    assert_eq!(hashes.len(), 1, "{hashes:?}");
    assert_eq!(value(&hashes[0]), 2.0);

    // Each gateway's own counts, from its /metrics.
    let mut per_side = [0.0f64; 2];
    for gw in [&a, &b] {
        let m = client()
            .get(format!("http://{}/metrics", gw.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for (i, side) in ["legacy", "new"].iter().enumerate() {
            per_side[i] += metric(&m, &format!("strangler_requests_total{{code=\"200\",method=\"GET\",route=\"all\",side=\"{side}\"}}")).unwrap_or(0.0);
        }
    }
    assert_eq!(per_side[0] + per_side[1], sent as f64);

    let all = compared_route(&prom.url, "all").await;
    assert_eq!(
        all["legacy"]["requests"].as_f64().unwrap(),
        per_side[0],
        "{all}"
    );
    assert_eq!(
        all["new"]["requests"].as_f64().unwrap(),
        per_side[1],
        "{all}"
    );
    assert_eq!(all["percent"], 50);
    assert_eq!(all["verdict"], "ok", "{all}");
    // And as a table.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_strangler"))
        .args(["compare", "--prometheus", &prom.url, "--window", "10m"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{}/{}", per_side[0], per_side[1])),
        "{text}"
    );
}

/// gRPC calls failed by the server are HTTP 200: `compare --prometheus` counts them as
/// errors all the same, from `strangler_grpc_responses_total`, as the gateway's own figures
/// do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_server_faults_count_as_errors_through_prometheus() {
    let legacy = Upstream::start("legacy").await;
    let dead = dead_addr().await;
    let (_dir, file) = routes_file(&format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nlegacy: {{url: '{}'}}\nservices:\n  orders: {{url: 'http://{dead}', protocol: h2c}}\nroutes:\n  - name: orders-grpc\n    match: {{prefix: /orders.v1.Orders/}}\n    service: orders\n    percent: 100\n",
        legacy.url()
    ));
    let gw = GatewayProcess::spawn(&file, &[]).await;
    let prom = Prometheus::start(&[gw.admin]).await;
    // 12 gRPC calls to a service that is down: each answered UNAVAILABLE (HTTP 200).
    let mut h2 = support::tls::h2(tokio::net::TcpStream::connect(gw.public).await.unwrap()).await;
    for _ in 0..12 {
        let req = http::Request::post(format!("http://{}/orders.v1.Orders/Get", gw.public))
            .header("content-type", "application/grpc")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                &[0; 5],
            )))
            .unwrap();
        h2.ready().await.unwrap();
        let resp = h2.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["grpc-status"], "14");
    }
    prom.wait_for_value("sum(strangler_grpc_responses_total)", 12.0)
        .await;
    let route = compared_route(&prom.url, "orders-grpc").await;
    assert_eq!(route["new"]["requests"], 12, "{route}");
    assert_eq!(route["new"]["errors"], 12, "{route}");
}

/// A route's figures in `strangler compare --prometheus URL --window 10m --json`.
async fn compared_route(prometheus: &str, route: &str) -> serde_json::Value {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_strangler"))
        .args([
            "compare",
            "--prometheus",
            prometheus,
            "--window",
            "10m",
            "--json",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == route)
        .unwrap_or_else(|| panic!("no route {route} in {v}"))
        .clone()
}

/// The progress a plan runner keeps in `file`, once it exists.
fn progress(file: &std::path::Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()
}

/// The percentage of `route` a gateway has in force.
async fn in_force(admin: std::net::SocketAddr, route: &str) -> f64 {
    let v: serde_json::Value = client()
        .get(format!("http://{admin}/admin/routes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == route)
        .unwrap()["percent"]
        .as_f64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_run_steps_two_gateways_on_their_summed_figures_and_rolls_back() {
    let (legacy, new) = (Flaky::start().await, Flaky::start().await);
    let (dir, routes) = plan_setup(
        &legacy.url(),
        &new.url(),
        "override:\n  header: x-strangler-side\n",
        "percent: 0",
        "route: orders-read\nsteps:\n  - { percent: 10, hold: 2s }\n  - { percent: 50, hold: 1h }\n  - { percent: 100 }\nguard:\n  min_requests: 40\n  max_error_rate_delta: 0.01\non_fail: rollback\n",
    );
    let gw1 = GatewayProcess::spawn(&routes, &[]).await;
    let gw2 = GatewayProcess::spawn(&routes, &[]).await;
    let prom = Prometheus::start(&[gw1.admin, gw2.admin]).await;
    // Each replica sees one side only: the new side's requests all go through gw1, the
    // legacy side's through gw2. Neither replica's own figures can judge; their sum can.
    let stop = Arc::new(AtomicBool::new(false));
    for (addr, side) in [(gw1.public, "new"), (gw2.public, "legacy")] {
        let stop = stop.clone();
        tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = c
                    .get(format!("http://{addr}/api/orders/1"))
                    .header("x-strangler-side", side)
                    .send()
                    .await
                {
                    let _ = r.bytes().await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
    let changes = dir.path().join("changes.log");
    // The progress beside the plan, where the replicas read it too.
    let state = dir.path().join("plans/.orders-rollout.state.json");
    let mut runner = std::process::Command::new(env!("CARGO_BIN_EXE_strangler"))
        .args(["plan", "run", "orders-rollout", "--config"])
        .arg(&routes)
        .args(["--prometheus", &prom.url, "--interval", "1s"])
        .arg("--after-change")
        .arg(format!(
            "echo \"$STRANGLER_ROUTE $STRANGLER_PERCENT\" >> {}",
            changes.display()
        ))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let runner = Kill(&mut runner);
    let wait = |what: &'static str, f: Box<dyn Fn(&serde_json::Value) -> bool>| {
        let state = state.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                if let Some(p) = progress(&state)
                    && f(&p)
                {
                    return p;
                }
                assert!(
                    Instant::now() < deadline,
                    "never {what}: {:?}",
                    progress(&state)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let p = wait("at step 2", Box::new(|p| p["step_index"] == 1)).await;
    assert_eq!(p["state"], "running");
    assert_eq!(p["driver"], "plan run");
    let advanced = &p["history"].as_array().unwrap().last().unwrap()["check"];
    assert!(
        advanced["new_requests"].as_u64().unwrap() >= 40,
        "{advanced}"
    );
    assert!(
        advanced["legacy_requests"].as_u64().unwrap() >= 40,
        "{advanced}"
    );
    // Both replicas follow the file the runner wrote.
    let deadline = Instant::now() + Duration::from_secs(10);
    while in_force(gw1.admin, "orders-read").await != 50.0
        || in_force(gw2.admin, "orders-read").await != 50.0
    {
        assert!(
            Instant::now() < deadline,
            "the replicas did not pick up 50%"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The replicas show the runner's progress, and refuse to drive it themselves.
    let shown: serde_json::Value = client()
        .get(format!("http://{}/admin/plans/orders-rollout", gw1.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["state"], "running", "{shown}");
    assert_eq!(shown["driver"], "plan run", "{shown}");
    assert_eq!(shown["step"], 2, "{shown}");
    let refused = client()
        .post(format!(
            "http://{}/admin/plans/orders-rollout/pause",
            gw1.admin
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 409);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("driven by plan run"),
        "{body}"
    );
    // The new side starts failing a third of its requests: rolled back to 0.
    new.fail_permille.store(333, Ordering::Relaxed);
    let p = wait("rolled back", Box::new(|p| p["state"] == "rolled_back")).await;
    let last = p["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["check"]["verdict"], "worse", "{last}");
    assert!(last["check"]["new_errors"].as_u64().unwrap() > 0, "{last}");
    assert!(
        std::fs::read_to_string(&routes)
            .unwrap()
            .contains("percent: 0\n")
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while in_force(gw1.admin, "orders-read").await != 0.0
        || in_force(gw2.admin, "orders-read").await != 0.0
    {
        assert!(Instant::now() < deadline, "the replicas did not pick up 0%");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        std::fs::read_to_string(&changes).unwrap(),
        "orders-read 10\norders-read 50\norders-read 0\n",
        "--after-change ran after each write"
    );
    stop.store(true, Ordering::Relaxed);
    drop(runner);
}

/// Through Prometheus too: a route's shadow match rate, and a new side's 404 that fell back
/// to legacy counted as its error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_match_rates_and_404_fallbacks_through_prometheus() {
    let legacy = Upstream::start("legacy").await;
    let twin = Upstream::start("legacy").await;
    let missing = support::faults::FaultServer::start("missing").await;
    missing.set(support::faults::Mode::Status(404));
    let (_dir, file) = routes_file(&format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nlegacy: {{url: '{}'}}\nservices:\n  twin: {{url: '{}'}}\n  missing: {{url: '{}'}}\nroutes:\n  - name: hist\n    match: {{prefix: /hist}}\n    service: twin\n    percent: 0\n    shadow: {{ignore_headers: [x-upstream]}}\n  - name: fb\n    match: {{prefix: /fb}}\n    service: missing\n    percent: 100\n    fallback: {{when: [404]}}\n",
        legacy.url(),
        twin.url(),
        missing.url()
    ));
    let gw = GatewayProcess::spawn(&file, &[]).await;
    let prom = Prometheus::start(&[gw.admin]).await;
    let c = client();
    for i in 0..10 {
        for path in ["hist", "fb"] {
            let r = c
                .get(format!("http://{}/{path}/{i}", gw.public))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    prom.wait_for_value("sum(strangler_shadow_requests_total)", 10.0)
        .await;
    prom.wait_for_value("sum(strangler_fallbacks_total)", 10.0)
        .await;
    let hist = compared_route(&prom.url, "hist").await;
    assert_eq!(hist["shadow"]["compared"], 10.0, "{hist}");
    assert_eq!(hist["shadow"]["match_rate"], 1.0, "{hist}");
    let fb = compared_route(&prom.url, "fb").await;
    assert_eq!(fb["new"]["requests"], 10, "{fb}");
    assert_eq!(fb["new"]["errors"], 10, "{fb}");
    assert!(fb["shadow"].is_null(), "{fb}");
}
