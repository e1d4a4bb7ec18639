//! The access log: one JSON line per request on stdout, from a real gateway process.

use crate::support;

use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_json_line_per_request() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    let yaml = format!(
        "{}routes:\n  - name: orders-read\n    match: {{path: '/api/orders/{{id}}'}}\n    service: orders\n    percent: 100\n",
        config_head(&legacy.url(), &[("orders", &orders.url())])
    );
    std::fs::write(&file, yaml).unwrap();
    let gw = GatewayProcess::spawn(&file, &[]).await;
    let c = client();
    let resp = c
        .get(format!("http://{}/api/./orders/7?secret=1", gw.public))
        .header("x-request-id", "log-test-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    let resp = c
        .post(format!("http://{}/elsewhere", gw.public))
        .header("x-request-id", "log-test-2")
        .body("12345")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();

    let mut found = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while found.len() < 2 && Instant::now() < deadline {
        let Ok(line) = gw.lines.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            panic!("a log line that is not JSON: {line}")
        };
        if v["kind"] == "access" {
            found.insert(v["request_id"].as_str().unwrap().to_string(), v);
        }
    }
    let a = &found["log-test-1"];
    assert_eq!(a["method"], "GET");
    assert_eq!(a["path"], "/api/orders/7", "canonical, without the query");
    assert_eq!(a["status"], 200);
    assert_eq!(a["route"], "orders-read");
    assert_eq!(a["side"], "new");
    assert_eq!(a["reason"], "percent");
    assert_eq!(a["upstream"], orders.addr.to_string());
    assert_eq!(a["bytes_out"], 6, "the body \"orders\"");
    assert!(a["duration_ms"].as_f64().unwrap() >= 0.0);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64;
    let ts = a["ts_ms"].as_f64().unwrap();
    assert!((now_ms - ts).abs() < 60_000.0, "ts_ms {ts} vs now {now_ms}");
    let b = &found["log-test-2"];
    assert_eq!(b["method"], "POST");
    assert_eq!(b["route"], "default");
    assert_eq!(b["side"], "legacy");
    assert_eq!(b["reason"], "unmatched");
    assert_eq!(b["bytes_in"], 5);
    assert_eq!(b["upstream"], legacy.addr.to_string());
}
