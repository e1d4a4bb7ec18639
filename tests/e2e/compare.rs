//! Legacy vs new: the rolling figures, the verdicts of `GET /admin/compare`, and
//! `strangler compare`.

use crate::support;

use std::time::Duration;

use support::*;

async fn compare(gw: &Gateway, query: &str) -> serde_json::Value {
    get_json(gw.admin_url(&format!("/admin/compare{query}"))).await
}

async fn two_route_gateway(extra: &str) -> (Upstream, Upstream, Gateway) {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let yaml = format!(
        "{}override: {{header: x-strangler-side}}\n{extra}routes:\n  - name: flaky\n    match: {{prefix: /flaky}}\n    service: orders\n    percent: 10\n  - name: steady\n    match: {{prefix: /steady}}\n    service: orders\n    percent: 50\n  - name: quiet\n    match: {{prefix: /quiet}}\n    service: orders\n    percent: 5\n",
        config_head(&legacy.url(), &[("orders", &orders.url())])
    );
    let gw = Gateway::start(&yaml).await;
    (legacy, orders, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_worse_ok_and_insufficient_data() {
    let (_legacy, _orders, gw) = two_route_gateway("").await;
    // flaky: legacy 0% errors, new 10% errors, 1,000 requests a side.
    forced_traffic(&gw, "/flaky", "legacy", 1000, 0).await;
    forced_traffic(&gw, "/flaky", "new", 1000, 10).await;
    // steady: both sides 2% errors.
    forced_traffic(&gw, "/steady", "legacy", 1000, 50).await;
    forced_traffic(&gw, "/steady", "new", 1000, 50).await;
    // quiet: 10 requests.
    forced_traffic(&gw, "/quiet", "legacy", 5, 0).await;
    forced_traffic(&gw, "/quiet", "new", 5, 0).await;

    let v = compare(&gw, "?window=5m").await;
    assert_eq!(v["window_seconds"], 300.0);
    let flaky = compared(&v, "flaky");
    assert_eq!(flaky["legacy"]["requests"], 1000);
    assert_eq!(flaky["new"]["requests"], 1000);
    assert_eq!(flaky["legacy"]["errors"], 0);
    assert_eq!(flaky["new"]["errors"], 100);
    assert_eq!(flaky["new"]["error_rate"], 0.1);
    assert_eq!(flaky["error_rate_delta"], 0.1);
    assert_eq!(flaky["percent"], 10);
    assert_eq!(flaky["verdict"], "worse", "{flaky}");
    assert!(
        flaky["reasons"][0].as_str().unwrap().contains("error rate"),
        "{flaky}"
    );
    for side in ["legacy", "new"] {
        let f = &flaky[side];
        let (p50, p90, p99) = (
            f["p50_ms"].as_f64().unwrap(),
            f["p90_ms"].as_f64().unwrap(),
            f["p99_ms"].as_f64().unwrap(),
        );
        assert!(
            0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 < 10_000.0,
            "{f}"
        );
    }
    let steady = compared(&v, "steady");
    assert_eq!(steady["legacy"]["errors"], 20);
    assert_eq!(steady["new"]["errors"], 20);
    // Equal error rates; latencies of the same upstream server: ok, unless the p99 of
    // loopback requests happened to differ by half (then say so).
    if steady["verdict"] != "ok" {
        let reasons = steady["reasons"].to_string();
        assert!(
            reasons.contains("p99") && !reasons.contains("error rate"),
            "{steady}"
        );
    }
    let quiet = compared(&v, "quiet");
    assert_eq!(quiet["verdict"], "insufficient_data", "{quiet}");
    assert_eq!(quiet["legacy"]["requests"], 5);

    // A bad window is refused.
    let r = client()
        .get(gw.admin_url("/admin/compare?window=soon"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_forgets_old_traffic() {
    let (_legacy, _orders, gw) =
        two_route_gateway("compare: {resolution: 200ms, retention: 10s, window: 1s}\n").await;
    forced_traffic(&gw, "/steady", "new", 60, 0).await;
    let v = compare(&gw, "").await;
    assert_eq!(v["window_seconds"], 1.0);
    assert_eq!(compared(&v, "steady")["new"]["requests"], 60);
    // Time passing is what is tested here: after the window, the traffic is out of it,
    // and still in a longer one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let v = compare(&gw, "?window=1s").await;
    assert_eq!(compared(&v, "steady")["new"]["requests"], 0, "{v}");
    let v = compare(&gw, "?window=5s").await;
    assert_eq!(compared(&v, "steady")["new"]["requests"], 60, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangler_compare_prints_the_table() {
    let (_legacy, _orders, gw) = two_route_gateway("").await;
    forced_traffic(&gw, "/flaky", "legacy", 200, 0).await;
    forced_traffic(&gw, "/flaky", "new", 200, 5).await;
    let admin = gw.admin_url("");
    let bin = env!("CARGO_BIN_EXE_strangler");
    let out = tokio::process::Command::new(bin)
        .args(["compare", "--admin", &admin, "--window", "5m"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // Which gateway answered, then the window and what it covered, then the table.
    assert!(
        text.starts_with(&format!(
            "gateway {} (--admin) answered, config ",
            admin.trim_end_matches('/')
        )),
        "{text}"
    );
    let lines: Vec<&str> = text.lines().skip(1).collect();
    assert!(lines[0].starts_with("window 300s, covering "), "{text}");
    assert!(
        lines[1].starts_with("route")
            && lines[1].contains("shadow match")
            && lines[1].contains("verdict"),
        "{text}"
    );
    let flaky = lines
        .iter()
        .find(|l| l.starts_with("flaky"))
        .expect("a flaky row");
    assert!(
        flaky.contains("200/200") && flaky.contains("0.00%/20.00%") && flaky.contains("worse"),
        "{text}"
    );
    // No shadow on this route: a dash under "shadow match".
    let shadow_col = lines[1].find("shadow match").unwrap();
    assert_eq!(&flaky[shadow_col..shadow_col + 2], "- ", "{text}");
    // Columns are aligned: every row has the verdict column at the same place.
    let col = lines[1].find("verdict").unwrap();
    for l in &lines[2..5] {
        assert!(l.len() > col && l.as_bytes()[col - 1] == b' ', "{text}");
    }
    let out = tokio::process::Command::new(bin)
        .args(["compare", "--admin", &admin, "--json"])
        .output()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(compared(&v, "flaky")["verdict"], "worse");
    // The admin address as admin.listen writes it, without a scheme: http is assumed.
    let bare = admin.trim_start_matches("http://");
    let out = tokio::process::Command::new(bin)
        .args(["compare", "--admin", bare, "--json"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(compared(&v, "flaky")["verdict"], "worse");
    // An unreachable admin API is a clear error, exit 1.
    let dead = dead_addr().await;
    let out = tokio::process::Command::new(bin)
        .args(["compare", "--admin", &format!("http://{dead}")])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin API"));
}

/// A window covers at least what it says (whole slots, plus the slot in progress) and says
/// how much it covers; a window below one slot is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_covers_what_it_says() {
    let (_legacy, _orders, gw) =
        two_route_gateway("compare: {resolution: 1s, retention: 1m, window: 1m}\n").await;
    // Up for longer than the window: what it covers is not cut short by the start.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    forced_traffic(&gw, "/steady", "new", 100, 0).await;
    let sent = std::time::Instant::now();
    let v = compare(&gw, "?window=5s").await;
    assert_eq!(compared(&v, "steady")["new"]["requests"], 100, "{v}");
    // Capped by the time the gateway has been up (a little over 1.2 s here).
    let covered = v["covered_seconds"].as_f64().unwrap();
    assert!((1.2..6.05).contains(&covered), "{v}");
    // Three seconds later: a 1 s window (at most two slots) no longer holds them, and says
    // it covers between one and two seconds; a 10 s window still does.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(sent.elapsed())).await;
    let v = compare(&gw, "?window=1s").await;
    assert_eq!(compared(&v, "steady")["new"]["requests"], 0, "{v}");
    let covered = v["covered_seconds"].as_f64().unwrap();
    assert!((1.0..2.05).contains(&covered), "{v}");
    let v = compare(&gw, "?window=10s").await;
    assert_eq!(compared(&v, "steady")["new"]["requests"], 100, "{v}");
    assert!(v["covered_seconds"].as_f64().unwrap() >= 3.0, "{v}");
    for bad in ["500ms", "1ms", "2m"] {
        let r = client()
            .get(gw.admin_url(&format!("/admin/compare?window={bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
}
