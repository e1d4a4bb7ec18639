//! Gateway-made errors: dead upstream (502), slow upstream (504), both counted.

use crate::support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_upstream_is_502_json_naming_route_and_side() {
    let legacy = Upstream::start("legacy").await;
    let dead = dead_addr().await;
    let yaml = format!(
        "{}routes:\n  - name: orders-read\n    match: {{prefix: /api/orders}}\n    service: orders\n    percent: 100\n",
        config_head(&legacy.url(), &[("orders", &format!("http://{dead}"))])
    );
    let gw = Gateway::start(&yaml).await;
    let resp = client()
        .get(gw.url("/api/orders/7"))
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-request-id"], "req-123");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "upstream_unavailable");
    assert_eq!(v["route"], "orders-read");
    assert_eq!(v["side"], "new");
    assert_eq!(v["request_id"], "req-123");

    // Other routes are unaffected.
    let ok = client().get(gw.url("/elsewhere")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "legacy");

    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"strangler_upstream_errors_total{kind="connect",route="orders-read",side="new"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"strangler_requests_total{code="502",method="GET",route="orders-read",side="new"}"#
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504_after_its_timeout() {
    let legacy = Upstream::start("legacy").await;
    let slow = Upstream::start("orders").await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nlegacy: {{url: {}}}\nservices:\n  orders: {{url: {}, timeout: 300ms}}\nroutes:\n  - name: orders-read\n    match: {{prefix: /api/orders}}\n    service: orders\n    percent: 100\n",
        legacy.url(),
        slow.url()
    );
    let gw = Gateway::start(&yaml).await;
    let started = std::time::Instant::now();
    let resp = client()
        .get(gw.url("/api/orders/7"))
        .header("x-test-delay-ms", "3000")
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 504);
    assert!(resp.headers().contains_key("x-request-id"));
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "upstream_timeout");
    assert_eq!(v["route"], "orders-read");
    assert_eq!(v["side"], "new");
    // It answered on the timeout, not when the upstream did.
    assert!(
        took < std::time::Duration::from_millis(2500),
        "took {took:?}"
    );

    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"strangler_upstream_errors_total{kind="timeout",route="orders-read",side="new"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"strangler_requests_total{code="504",method="GET",route="orders-read",side="new"}"#
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_pass_through_unfollowed() {
    let legacy = Upstream::start("legacy").await;
    let gw = Gateway::start(&format!("{}routes: []\n", config_head(&legacy.url(), &[]))).await;
    let resp = client()
        .get(gw.url("/old"))
        .header("x-test-status", "302")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(legacy.count(), 1);
}
