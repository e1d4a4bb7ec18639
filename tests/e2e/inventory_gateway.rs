//! The carve-out map in a running gateway: learned from the requests it serves (every one,
//! with `inventory.sample: 100`), read from `GET /admin/inventory`, Prometheus and
//! `strangler inventory --admin` over two gateways.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// A gateway with one carved route (`orders-read`, all on new) whose map learns from every
/// request.
pub(crate) async fn gateway(legacy: &Upstream, new: &Upstream) -> Gateway {
    let yaml = format!(
        "{}inventory: {{sample: 100}}\nroutes:\n  - name: orders-read\n    match: {{path: '/api/orders/{{id}}', methods: [GET]}}\n    service: orders\n    percent: 100\n",
        config_head(&legacy.url(), &[("orders", &new.url())])
    );
    Gateway::start(&yaml).await
}

/// Traffic: 40 orders (new), 30 products, 20 orders spelled in capitals (a near miss of
/// orders-read), 10 user profiles by UUID (all three on legacy).
pub(crate) async fn traffic(gw: &Gateway) {
    let c = client();
    for i in 0..100u32 {
        let path = match i % 10 {
            0..=3 => format!("/api/orders/{}", 100 + i),
            4..=6 => format!("/api/products/{}", 500 + i),
            7 | 8 => format!("/API/orders/{}", 100 + i),
            _ => format!(
                "/api/users/{:08x}-1234-4abc-9def-{:012x}/profile",
                i,
                u64::from(i) * 7919
            ),
        };
        let r = c.get(gw.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.bytes().await.unwrap();
    }
}

/// The map, once it has learned `n` requests (the learner takes them on a thread of its own).
pub(crate) async fn learned(gw: &Gateway, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = get_json(gw.admin_url("/admin/inventory")).await;
        if v["totals"]["requests"].as_u64() == Some(n) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "the map never learned {n} requests: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn templates(v: &Value) -> Vec<(String, u64, u64, String)> {
    v["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                format!(
                    "{} {}",
                    t["method"].as_str().unwrap(),
                    t["template"].as_str().unwrap()
                ),
                t["requests"].as_u64().unwrap(),
                t["new_requests"].as_u64().unwrap(),
                t["routes"][0]["route"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_map_learns_what_the_gateway_serves() {
    let (legacy, new) = (
        Upstream::start("legacy").await,
        Upstream::start("new").await,
    );
    let gw = gateway(&legacy, &new).await;
    traffic(&gw).await;
    let v = learned(&gw, 100).await;
    let mut got = templates(&v);
    got.sort();
    let want = vec![
        (
            "GET /API/orders/{order_id}".to_string(),
            20,
            0,
            "default".to_string(),
        ),
        (
            "GET /api/orders/{order_id}".to_string(),
            40,
            40,
            "orders-read".to_string(),
        ),
        (
            "GET /api/products/{product_id}".to_string(),
            30,
            0,
            "default".to_string(),
        ),
        (
            "GET /api/users/{user_id}/profile".to_string(),
            10,
            0,
            "default".to_string(),
        ),
    ];
    assert_eq!(got, want, "{v:#}");
    // Progress: 40 of 100 on new; one endpoint carved, three still on legacy.
    let p = &v["progress"];
    assert_eq!(p["share_new"].as_f64(), Some(0.4), "{p}");
    assert_eq!(p["templates_carved"], 1, "{p}");
    assert_eq!(p["templates_partly"], 0, "{p}");
    assert_eq!(p["templates_legacy_only"], 3, "{p}");
    // The capitals are a near miss of orders-read, by letter case.
    let near = v["near_misses"].as_array().unwrap();
    assert!(
        near.iter().any(|n| n["route"] == "orders-read"
            && n["kind"] == "case"
            && n["template"] == "/API/orders/{order_id}"),
        "{near:#?}"
    );
    assert_eq!(v["samples"]["dropped"], 0);
    assert_eq!(v["history"][0]["requests"], 100);
    assert_eq!(v["history"][0]["new_requests"], 40);
    // Prometheus: the share, the requests by side, the templates by state.
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "strangler_migrated_share"), Some(0.4), "{m}");
    assert_eq!(
        metric(&m, r#"strangler_served_requests_total{side="new"}"#),
        Some(40.0)
    );
    assert_eq!(
        metric(&m, r#"strangler_served_requests_total{side="legacy"}"#),
        Some(60.0)
    );
    assert_eq!(
        metric(&m, r#"strangler_inventory_templates{state="carved"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, r#"strangler_inventory_templates{state="legacy_only"}"#),
        Some(3.0)
    );
    // Filters: the route's templates only; an unknown route is a 404.
    let only = get_json(gw.admin_url("/admin/inventory?route=orders-read")).await;
    assert_eq!(templates(&only).len(), 1, "{only:#}");
    let r = client()
        .get(gw.admin_url("/admin/inventory?route=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client()
        .get(gw.admin_url("/admin/inventory?sort=colour"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// `inventory.sample: 0` turns the map off: nothing is learned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_of_zero_learns_nothing() {
    let (legacy, new) = (
        Upstream::start("legacy").await,
        Upstream::start("new").await,
    );
    let yaml = format!(
        "{}inventory: {{sample: 0}}\nroutes: []\n",
        config_head(&legacy.url(), &[("orders", &new.url())])
    );
    let gw = Gateway::start(&yaml).await;
    traffic(&gw).await;
    let v = get_json(gw.admin_url("/admin/inventory")).await;
    assert_eq!(v["totals"]["requests"], 0, "{v:#}");
    assert_eq!(v["samples"]["offered"], 0);
}

/// `strangler inventory --admin A --admin B` merges what two replicas learned, and says
/// which gateways answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_merges_the_maps_of_two_gateways() {
    let (legacy, new) = (
        Upstream::start("legacy").await,
        Upstream::start("new").await,
    );
    let (a, b) = (gateway(&legacy, &new).await, gateway(&legacy, &new).await);
    traffic(&a).await;
    traffic(&b).await;
    learned(&a, 100).await;
    learned(&b, 100).await;
    let (ua, ub) = (a.admin_url(""), b.admin_url(""));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_strangler"))
            .args(["inventory", "--json", "--admin", &ua, "--admin", &ub])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = stdout.find('{').unwrap();
    let v: Value = serde_json::from_str(&stdout[start..]).unwrap();
    assert_eq!(v["map"]["totals"]["requests"], 200, "{v:#}");
    let orders = v["map"]["templates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["template"] == "/api/orders/{order_id}")
        .unwrap();
    assert_eq!(orders["requests"], 80);
    assert_eq!(orders["new_requests"], 80);
    assert_eq!(v["progress"]["share_new"].as_f64(), Some(0.4));
    assert_eq!(v["sources"].as_array().unwrap().len(), 2);
    let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for g in [a.admin_url(""), b.admin_url("")] {
        assert!(
            text.contains(g.trim_end_matches('/')),
            "{g} not named:\n{text}"
        );
    }
}
