//! Shadow copies, end to end: requests legacy serves are copied to the route's new service
//! off the request path, both answers compared, legacy measured against itself for noise,
//! the gateway-wide budget for copies, and the figures in `/metrics`,
//! `GET /admin/shadow/{route}` and `/admin/compare`.
//!
//! Upstreams are `support::Upstream::scripted` servers, whose every answer a closure decides.
//! A copy completes after the client's answer, so every wait for its result is a poll with
//! a deadline; the few fixed sleeps give a copy that must not happen the time to show up,
//! and let the gateway's memory settle before it is read.

use crate::support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use support::faults::*;
use support::*;

/// How long a copy gets to be compared and counted.
const WAIT: Duration = Duration::from_secs(30);

/// Every result a copy can have (the `result` label).
const RESULTS: [&str; 7] = [
    "match",
    "status_mismatch",
    "header_mismatch",
    "body_mismatch",
    "error",
    "skipped",
    "too_large",
];

/// The timing-sensitive tests (client latency, resident memory) run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A routes file: listeners on `:0`, legacy and `services` (10 s timeouts), then `routes`.
fn routes_yaml(legacy: &Upstream, services: &[(&str, &Upstream)], routes: &str) -> String {
    let services: Vec<(&str, String)> = services.iter().map(|(n, s)| (*n, s.url())).collect();
    let services: Vec<(&str, &str)> = services.iter().map(|(n, u)| (*n, u.as_str())).collect();
    format!("{}routes:\n{routes}", config_head(&legacy.url(), &services))
}

/// The series of `strangler_shadow_requests_total`.
fn series(route: &str, result: &str) -> String {
    format!("strangler_shadow_requests_total{{result=\"{result}\",route=\"{route}\"}}")
}

/// `GET {admin}/admin/shadow/{route}`.
async fn report_at(admin: &str, route: &str) -> Value {
    let r = client()
        .get(format!("{admin}/admin/shadow/{route}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET /admin/shadow/{route}");
    r.json().await.unwrap()
}

/// A gateway in front of a legacy and an `orders` service that answer alike (JSON echoing
/// the path), with `routes`.
async fn echo_gateway(routes: &str) -> (Upstream, Upstream, Gateway) {
    let echo = |a: &Recorded| Reply::json(&json!({"ok": true, "path": a.path()}));
    let legacy = Upstream::scripted(echo).await;
    let new = Upstream::scripted(echo).await;
    let gw = Gateway::start(&routes_yaml(&legacy, &[("orders", &new)], routes)).await;
    (legacy, new, gw)
}

async fn report(gw: &Gateway, route: &str) -> Value {
    report_at(&admin(gw), route).await
}

fn admin(gw: &Gateway) -> String {
    format!("http://{}", gw.running.admin_addr)
}

/// Copies counted in a report, all results together.
fn total(report: &Value) -> u64 {
    RESULTS
        .iter()
        .map(|r| report["results"][r].as_u64().unwrap_or(0))
        .sum()
}

/// A report's count of `result`.
fn count(report: &Value, result: &str) -> u64 {
    report["results"][result]
        .as_u64()
        .unwrap_or_else(|| panic!("results.{result} in {report}"))
}

/// Waits until the copies counted for `route` reach `n`; then checks there are exactly
/// `n` and returns the report.
async fn wait_total_at(admin: &str, route: &str, n: u64) -> Value {
    eventually(
        &format!("{n} copies of {route} counted"),
        WAIT,
        async || total(&report_at(admin, route).await) >= n,
    )
    .await;
    let r = report_at(admin, route).await;
    assert_eq!(total(&r), n, "{r:#}");
    r
}

async fn wait_total(gw: &Gateway, route: &str, n: u64) -> Value {
    wait_total_at(&admin(gw), route, n).await
}

/// The shadow metric of `route`, by result (results never counted left out).
async fn shadow_metrics_at(admin: &str, route: &str) -> BTreeMap<&'static str, f64> {
    let text = get_text(format!("{admin}/metrics")).await;
    RESULTS
        .iter()
        .filter_map(|r| metric(&text, &series(route, r)).map(|v| (*r, v)))
        .collect()
}

async fn shadow_metrics(gw: &Gateway, route: &str) -> BTreeMap<&'static str, f64> {
    shadow_metrics_at(&admin(gw), route).await
}

/// The metric agrees with the report's counts, result by result.
async fn assert_metric_agrees(gw: &Gateway, route: &str, report: &Value) {
    let m = shadow_metrics(gw, route).await;
    for r in RESULTS {
        assert_eq!(
            m.get(r).copied().unwrap_or(0.0),
            count(report, r) as f64,
            "{r}: metric {m:?} against report {report:#}"
        );
    }
}

fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(b)))
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn field<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|f| f["field"] == name)
}

// 1. Identical answers match; the copy carries X-Strangler-Shadow: 1 and goes after
//    legacy's answer; the client only ever gets legacy's answer.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_answers_match_and_the_client_gets_legacys_answer() {
    let item = |a: &Recorded, side: &str| {
        let mut r = Reply::json(&json!({"id": a.id(), "name": "lamp", "tags": ["a", "b"]}))
            .header("cache-control", "max-age=60")
            .header("x-upstream", side);
        if a.path().ends_with("/slow") {
            r = r.after(Duration::from_millis(300));
        }
        r
    };
    let legacy = Upstream::scripted(move |a| item(a, "legacy")).await;
    let new = Upstream::scripted(move |a| item(a, "new")).await;
    let yaml = routes_yaml(
        &legacy,
        &[("items", &new)],
        "  - name: items\n    match: {prefix: /api/items}\n    service: items\n    percent: 0\n    shadow:\n      percent: 100\n      ignore_headers: [x-upstream]\n",
    );
    let gw = Gateway::start(&yaml).await;
    let c = client();

    let mut targets = Vec::new();
    for i in 0..20 {
        let path = format!("/api/items/{i}");
        let got = send(c.get(gw.url(&path))).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.upstream, "legacy", "the client gets legacy's answer");
        assert_eq!(
            json_of(&got.body),
            json!({"id": i, "name": "lamp", "tags": ["a", "b"]})
        );
        targets.push(("GET", path));
    }
    for i in 20..25 {
        let path = format!("/api/items/{i}");
        let got = send(c.head(gw.url(&path))).await;
        assert_eq!((got.status, got.upstream.as_str()), (200, "legacy"));
        assert!(got.body.is_empty());
        targets.push(("HEAD", path));
    }
    // Legacy takes 300 ms over this one: its copy may only leave once the answer has ended.
    let got = send(c.get(gw.url("/api/items/slow"))).await;
    assert_eq!(got.upstream, "legacy");
    assert!(got.took >= Duration::from_millis(300));
    targets.push(("GET", "/api/items/slow".to_string()));

    let r = wait_total(&gw, "items", 26).await;
    eprintln!("items: {}", r["results"]);
    assert_eq!(count(&r, "match"), 26, "{r:#}");
    assert_eq!(r["compared"], 26);
    assert_eq!(r["match_rate"], 1.0);
    assert_eq!(r["configured"], true);
    assert_eq!(r["mismatches"], json!([]));
    assert_eq!(r["fields"], json!([]));
    assert_metric_agrees(&gw, "items", &r).await;
    let m = shadow_metrics(&gw, "items").await;
    assert_eq!(m.get("match"), Some(&26.0), "{m:?}");

    // The new side got each request once, as a copy, and legacy each once, not as one.
    let seen = new.seen();
    assert_eq!(seen.len(), 26);
    for a in &seen {
        assert_eq!(a.header("x-strangler-shadow"), Some("1"), "{a:?}");
    }
    let mut got: Vec<(String, String)> = seen
        .iter()
        .map(|a| (a.method.clone(), a.target.clone()))
        .collect();
    let mut want: Vec<(String, String)> = targets
        .iter()
        .map(|(m, p)| (m.to_string(), p.clone()))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(legacy.count(), 26);
    assert_eq!(legacy.shadow_count(), 0);

    // The slow one's copy reached the new side after legacy had answered.
    let at = |s: &Upstream| {
        s.seen()
            .into_iter()
            .find(|a| a.path() == "/api/items/slow")
            .unwrap()
            .at
    };
    let (asked_legacy, asked_new) = (at(&legacy), at(&new));
    assert!(
        asked_new >= asked_legacy + Duration::from_millis(300),
        "the copy left {:?} after legacy was asked, before its 300 ms answer",
        asked_new - asked_legacy
    );
}

// 2. Each kind of difference, its field, and what is ignored.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differences_are_counted_by_kind_and_field_and_ignored_ones_are_not() {
    let n = Arc::new(AtomicU64::new(0));
    let catalog = move |a: &Recorded, legacy: bool| -> Reply {
        let k = n.fetch_add(1, Ordering::SeqCst);
        let ok = json!({"ok": true});
        match a.path() {
            "/api/catalog/status" => Reply::json(&ok).status(if legacy { 200 } else { 503 }),
            "/api/catalog/header" => Reply::json(&ok).header(
                "cache-control",
                if legacy { "max-age=60" } else { "no-store" },
            ),
            "/api/catalog/body" => Reply::json(&json!({
                "generated_at": if legacy { "2024-01-01" } else { "2024-06-30" },
                "items": [
                    {"sku": "a", "price": 5, "etag": if legacy { "l1" } else { "n1" }},
                    {"sku": "b", "price": if legacy { 6 } else { 7 }, "etag": if legacy { "l2" } else { "n2" }},
                ],
            })),
            // Differs only where ignored: `/generated_at`, `/items/*/etag`, `x-trace`.
            "/api/catalog/ignored" => Reply::json(&json!({
                "generated_at": format!("t{k}"),
                "items": [{"sku": "a", "price": 5, "etag": format!("e{k}")}],
            }))
            .header("x-trace", &format!("trace-{k}")),
            "/api/catalog/text" => Reply::bytes(
                "text/plain",
                if legacy {
                    "hello from legacy"
                } else {
                    "hello from new"
                },
            ),
            _ => Reply::json(&ok).status(404),
        }
    };
    let c1 = catalog.clone();
    let legacy = Upstream::scripted(move |a| c1(a, true)).await;
    let new = Upstream::scripted(move |a| catalog(a, false)).await;
    let yaml = routes_yaml(
        &legacy,
        &[("catalog", &new)],
        "  - name: catalog\n    match: {prefix: /api/catalog}\n    service: catalog\n    percent: 0\n    shadow:\n      ignore_headers: [x-trace]\n      ignore_json: [\"/generated_at\", \"/items/*/etag\"]\n",
    );
    let gw = Gateway::start(&yaml).await;
    let c = client();
    let mut sent = 0;
    // One request at a time, each copy counted before the next: the newest mismatch is
    // `mismatches[0]`.
    let mut get = async |path: &str| -> Value {
        let got = send(c.get(gw.url(path))).await;
        assert_eq!(got.status, 200, "{path}: the client gets legacy's answer");
        sent += 1;
        wait_total(&gw, "catalog", sent).await
    };

    let r = get("/api/catalog/status").await;
    assert_eq!(count(&r, "status_mismatch"), 1, "{r:#}");
    let m = &r["mismatches"][0];
    assert_eq!(m["path"], "/api/catalog/status");
    assert_eq!(m["method"], "GET");
    assert_eq!(m["result"], "status_mismatch");
    assert_eq!(
        (m["legacy_status"].clone(), m["new_status"].clone()),
        (json!(200), json!(503))
    );
    assert_eq!(
        m["differences"],
        json!([{"field": "status", "legacy": 200, "new": 503}])
    );

    let r = get("/api/catalog/header").await;
    assert_eq!(count(&r, "header_mismatch"), 1, "{r:#}");
    let m = &r["mismatches"][0];
    assert_eq!(m["result"], "header_mismatch");
    assert_eq!(
        m["differences"],
        json!([{"field": "header:cache-control", "legacy": "max-age=60", "new": "no-store"}])
    );

    // Only ignored fields and headers differ: a match, three times.
    for _ in 0..3 {
        get("/api/catalog/ignored").await;
    }
    let r = report(&gw, "catalog").await;
    assert_eq!(count(&r, "match"), 3, "{r:#}");
    assert_eq!(r["mismatches"].as_array().unwrap().len(), 2);

    // A body that is not JSON compares byte for byte.
    let r = get("/api/catalog/text").await;
    assert_eq!(count(&r, "body_mismatch"), 1, "{r:#}");
    assert_eq!(r["mismatches"][0]["differences"][0]["field"], "body");

    // A JSON body: the one differing field, by its pointer; the etags and the generation
    // time differ too, but are ignored.
    let r = get("/api/catalog/body").await;
    eprintln!("catalog: {:#}", r["mismatches"][0]);
    assert_eq!(count(&r, "body_mismatch"), 2, "{r:#}");
    let m = &r["mismatches"][0];
    assert_eq!(m["path"], "/api/catalog/body");
    assert_eq!(m["result"], "body_mismatch");
    assert_eq!(
        m["differences"],
        json!([{"field": "/items/1/price", "legacy": 6, "new": 7}])
    );
    // Counted per field, array indices generalized.
    for (f, want) in [
        ("/items/*/price", 1),
        ("status", 1),
        ("header:cache-control", 1),
        ("body", 1),
    ] {
        let got = field(&r["fields"], f).unwrap_or_else(|| panic!("{f} in {:#}", r["fields"]));
        assert_eq!(got["mismatches"], want, "{f}");
    }
    assert_eq!(
        r["fields"].as_array().unwrap().len(),
        4,
        "{:#}",
        r["fields"]
    );
    assert!(field(&r["fields"], "/items/1/price").is_none());
    assert!(field(&r["fields"], "/generated_at").is_none());

    // Totals: 3 matches of 7 compared.
    assert_eq!(count(&r, "match"), 3);
    assert_eq!(count(&r, "status_mismatch"), 1);
    assert_eq!(count(&r, "header_mismatch"), 1);
    assert_eq!(r["compared"], 7);
    let rate = r["match_rate"].as_f64().unwrap();
    assert!((rate - 3.0 / 7.0).abs() < 1e-9, "{rate}");
    assert_eq!(r["ignored"]["headers"], json!(["x-trace"]));
    assert_eq!(
        r["ignored"]["json"],
        json!(["/generated_at", "/items/*/etag"])
    );
    assert_metric_agrees(&gw, "catalog", &r).await;
    assert_eq!(new.shadow_count(), 7);
}

/// `body` compressed with gzip at `level` (0 to 9).
fn gzip(body: &Value, level: u32) -> Vec<u8> {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(body.to_string().as_bytes()).unwrap();
    e.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzipped_answers_compare_as_the_json_they_hold() {
    // The same JSON, gzipped at different levels (different bytes); the new side's total
    // differs for id 2.
    let answer = |a: &Recorded, new: bool| {
        let id = a.path().rsplit('/').next().unwrap_or("").to_string();
        let total = if new && id == "2" { 13 } else { 12 };
        let body = json!({"id": id, "items": [{"sku": "a", "qty": 1}], "note": "x".repeat(200), "total": total});
        Reply::bytes("application/json", gzip(&body, if new { 9 } else { 1 }))
            .header("content-encoding", "gzip")
    };
    let legacy = Upstream::scripted(move |a| answer(a, false)).await;
    let new = Upstream::scripted(move |a| answer(a, true)).await;
    let yaml = routes_yaml(
        &legacy,
        &[("orders", &new)],
        "  - name: orders\n    match: {prefix: /api/orders}\n    service: orders\n    percent: 0\n    shadow: {}\n",
    );
    let gw = Gateway::start(&yaml).await;
    let c = client();
    let got = send(c.get(gw.url("/api/orders/1"))).await;
    assert_eq!(got.status, 200);
    let r = wait_total(&gw, "orders", 1).await;
    assert_eq!(count(&r, "match"), 1, "{r:#}");
    send(c.get(gw.url("/api/orders/2"))).await;
    let r = wait_total(&gw, "orders", 2).await;
    assert_eq!(count(&r, "body_mismatch"), 1, "{r:#}");
    assert_eq!(
        r["mismatches"][0]["differences"],
        json!([{"field": "/total", "legacy": 12, "new": 13}])
    );
}

// 3. Noise: a field legacy disagrees with itself on is learned and no longer counted.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_that_differs_between_two_legacy_answers_is_noise() {
    // Legacy stamps every answer with a counter in `/ts`; the new side has its own `/ts`
    // and a different `/price` for ids divisible by 4.
    let ts = Arc::new(AtomicU64::new(1));
    let legacy = Upstream::scripted(move |a| {
        Reply::json(&json!({"id": a.id(), "price": 10, "ts": ts.fetch_add(1, Ordering::SeqCst)}))
    })
    .await;
    let new = Upstream::scripted(|a| {
        let price = if a.id().unwrap_or(1) % 4 == 0 { 11 } else { 10 };
        Reply::json(&json!({"id": a.id(), "price": price, "ts": 0}))
    })
    .await;
    let yaml = routes_yaml(
        &legacy,
        &[("prices", &new)],
        "  - name: prices\n    match: {prefix: /api/prices}\n    service: prices\n    percent: 0\n    shadow:\n      noise: {sample: 100%, threshold: 0.1}\n",
    );
    let gw = Gateway::start(&yaml).await;
    let c = client();

    // Five copies, one at a time, whose prices agree: fewer than 5 legacy pairs are
    // known while (at least) the first four are compared, so `/ts` still counts for them.
    for (k, id) in [1, 2, 3, 5, 6].into_iter().enumerate() {
        let got = send(c.get(gw.url(&format!("/api/prices/{id}")))).await;
        assert_eq!(got.status, 200);
        assert_eq!(json_of(&got.body)["price"], 10);
        wait_total(&gw, "prices", k as u64 + 1).await;
    }
    let r = report(&gw, "prices").await;
    eprintln!("after 5: {} noise {:#}", r["results"], r["noise"]["fields"]);
    assert_eq!(r["noise"]["pairs"], 5, "{:#}", r["noise"]);
    let early = count(&r, "body_mismatch");
    assert!((4..=5).contains(&early), "{r:#}");
    assert_eq!(count(&r, "match"), 5 - early);
    assert_eq!(field(&r["fields"], "/ts").unwrap()["mismatches"], early);

    // Forty more, ten of them with a different price.
    let answers: Vec<Got> = futures_util::future::join_all(
        (0..40).map(|id| send(c.get(gw.url(&format!("/api/prices/{id}"))))),
    )
    .await;
    assert!(answers.iter().all(|g| g.status == 200));
    let r = wait_total(&gw, "prices", 45).await;
    eprintln!("after 45: {} noise {:#}", r["results"], r["noise"]);
    assert_eq!(count(&r, "body_mismatch"), early + 10, "{r:#}");
    assert_eq!(count(&r, "match"), 5 - early + 30, "{r:#}");
    // Every copy was also sent again to legacy: 45 pairs, `/ts` differing in all of them.
    assert_eq!(legacy.count(), 90);
    assert_eq!(new.count(), 45);
    assert_eq!(r["noise"]["pairs"], 45);
    assert_eq!(r["noise"]["threshold"], 0.1);
    let ts = field(&r["noise"]["fields"], "/ts").expect("/ts is learned");
    assert_eq!(ts["noise"], true, "{ts}");
    assert_eq!(ts["differed"], 45);
    assert_eq!(ts["share"], 1.0);
    assert!(
        field(&r["noise"]["fields"], "/price").is_none(),
        "legacy agrees on prices"
    );
    // `/ts` stopped counting once learned; `/price` counts every time.
    assert_eq!(field(&r["fields"], "/ts").unwrap()["mismatches"], early);
    assert_eq!(field(&r["fields"], "/price").unwrap()["mismatches"], 10);
    for m in &r["mismatches"].as_array().unwrap()[..10] {
        assert_eq!(
            m["differences"],
            json!([{"field": "/price", "legacy": 10, "new": 11}]),
            "{m}"
        );
        let id: u64 = m["path"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(id % 4, 0, "{m}");
    }
    assert_metric_agrees(&gw, "prices", &r).await;
}

// 4. A stalling new side does not slow the client down.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalling_new_side_does_not_slow_the_client() {
    let _serial = SERIAL.lock().await;
    const STALL: Duration = Duration::from_secs(5);
    let body = |a: &Recorded| json!({"id": a.id(), "name": "lamp"});
    let legacy = Upstream::scripted(move |a| Reply::json(&body(a))).await;
    let slow = Upstream::scripted(move |a| Reply::json(&body(a)).after(STALL)).await;
    let yaml = routes_yaml(
        &legacy,
        &[("slow", &slow)],
        "  - name: shadow-on\n    match: {prefix: /on}\n    service: slow\n    percent: 0\n    shadow: {percent: 100}\n  - name: shadow-off\n    match: {prefix: /off}\n    service: slow\n    percent: 0\n",
    );
    let gw = Gateway::start(&yaml).await;
    let c = client();
    // Warm-up: connections made, code paths run.
    for i in 0..3 {
        send(c.get(gw.url(&format!("/on/{i}")))).await;
        send(c.get(gw.url(&format!("/off/{i}")))).await;
    }
    // Interleaved, alternating which goes first, so both see the same machine.
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for i in 3..33 {
        let paths = [format!("/on/{i}"), format!("/off/{i}")];
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            let got = send(c.get(gw.url(&paths[k]))).await;
            assert_eq!(got.status, 200);
            assert_eq!(json_of(&got.body)["id"], i);
            if k == 0 { &mut on } else { &mut off }.push(got.took);
        }
    }
    let (on_med, off_med) = (median(&on), median(&off));
    let on_max = *on.iter().max().unwrap();
    eprintln!(
        "client latency, 30 requests each: shadow on median {on_med:?} max {on_max:?}; off median {off_med:?} max {:?}",
        off.iter().max().unwrap()
    );
    assert!(
        on_med < off_med + Duration::from_millis(200),
        "shadow on {on_med:?} against off {off_med:?}"
    );
    assert!(on_med < Duration::from_secs(1), "{on_med:?}");
    assert!(on_max < STALL / 2, "a client waited {on_max:?}");
    // Meanwhile the copies did go, and were held up by the new side.
    eventually("33 copies reach the stalling side", WAIT, async || {
        slow.count() == 33
    })
    .await;
    assert_eq!(slow.shadow_count(), 33);
    assert!(
        slow.max_in_flight() >= 20,
        "copies overlapped: {}",
        slow.max_in_flight()
    );
    // ...and, once the new side answered, compared.
    let r = wait_total(&gw, "shadow-on", 33).await;
    assert_eq!(count(&r, "match"), 33, "{r:#}");
    assert!(shadow_metrics(&gw, "shadow-off").await.is_empty());
}

// 5. A POST is copied only when the route's methods say so.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_copied_only_when_its_method_is_listed() {
    let (legacy, new, gw) = echo_gateway(
        "  - name: reads\n    match: {prefix: /api/reads}\n    service: orders\n    percent: 0\n    shadow: {}\n  - name: writes\n    match: {prefix: /api/writes}\n    service: orders\n    percent: 0\n    shadow: {methods: [POST]}\n",
    )
    .await;
    let c = client();
    let order = r#"{"order":1,"qty":2}"#;

    // Default methods (GET, HEAD): three POSTs are not copied, the GET after them is.
    for _ in 0..3 {
        let got = send(
            c.post(gw.url("/api/reads/1"))
                .header("content-type", "application/json")
                .body(order),
        )
        .await;
        assert_eq!(got.status, 200);
    }
    send(c.get(gw.url("/api/reads/2"))).await;
    let r = wait_total(&gw, "reads", 1).await;
    // Time for a copy of a POST, were there one, to arrive (they were answered before the
    // GET was even sent).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r2 = report(&gw, "reads").await;
    assert_eq!(total(&r2), 1, "{r2:#}");
    assert_eq!(count(&r, "match"), 1);
    let seen = new.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path()),
        ("GET", "/api/reads/2")
    );
    assert_eq!(
        legacy.seen().iter().filter(|a| a.method == "POST").count(),
        3
    );
    assert_eq!(
        shadow_metrics(&gw, "reads").await,
        BTreeMap::from([("match", 1.0)])
    );

    // `methods: [POST]`: the POST is copied, body and all; a GET no longer is.
    let got = send(
        c.post(gw.url("/api/writes/1"))
            .header("content-type", "application/json")
            .body(order),
    )
    .await;
    assert_eq!(got.status, 200);
    let r = wait_total(&gw, "writes", 1).await;
    assert_eq!(count(&r, "match"), 1, "{r:#}");
    let copy = new
        .seen()
        .into_iter()
        .find(|a| a.path() == "/api/writes/1")
        .expect("the POST was copied");
    assert_eq!(copy.method, "POST");
    assert_eq!(copy.body, Some(Bytes::from(order)));
    assert_eq!(copy.header("content-type"), Some("application/json"));
    assert_eq!(copy.header("x-strangler-shadow"), Some("1"));
    let original = legacy
        .seen()
        .into_iter()
        .find(|a| a.path() == "/api/writes/1")
        .unwrap();
    assert_eq!(original.body, copy.body);
    assert!(original.header("x-strangler-shadow").is_none());

    send(c.get(gw.url("/api/writes/2"))).await;
    send(
        c.post(gw.url("/api/writes/3"))
            .header("content-type", "application/json")
            .body(order),
    )
    .await;
    wait_total(&gw, "writes", 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(total(&report(&gw, "writes").await), 2);
    assert!(
        new.seen().iter().all(|a| a.path() != "/api/writes/2"),
        "a GET of a POST-only shadow is not copied"
    );
    assert_eq!(
        shadow_metrics(&gw, "writes").await,
        BTreeMap::from([("match", 2.0)])
    );
}

// 6. Answers over `max_body` are not compared.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_over_max_body_count_too_large() {
    let large = json!({"data": "x".repeat(4000)});
    let small = json!({"data": "x"});
    let (l1, l2) = (large.clone(), small.clone());
    let legacy = Upstream::scripted(move |a| match a.path() {
        "/api/big/large" => Reply::json(&l1),
        _ => Reply::json(&l2),
    })
    .await;
    let new = Upstream::scripted(move |a| match a.path() {
        "/api/big/small" => Reply::json(&small),
        // Legacy's answer is large, or only the new side's is.
        _ => Reply::json(&large),
    })
    .await;
    let yaml = routes_yaml(
        &legacy,
        &[("big", &new)],
        "  - name: big\n    match: {prefix: /api/big}\n    service: big\n    percent: 0\n    shadow: {max_body: 1KiB}\n",
    );
    let gw = Gateway::start(&yaml).await;
    let c = client();
    for _ in 0..3 {
        let got = send(c.get(gw.url("/api/big/large"))).await;
        assert_eq!(got.status, 200);
        assert_eq!(
            got.body.len(),
            4011,
            "the client gets all of legacy's answer"
        );
        assert_eq!(json_of(&got.body)["data"].as_str().unwrap().len(), 4000);
    }
    let r = wait_total(&gw, "big", 3).await;
    assert_eq!(count(&r, "too_large"), 3, "{r:#}");
    assert_eq!(r["compared"], 0);
    assert_eq!(r["match_rate"], Value::Null);
    assert_eq!(r["mismatches"], json!([]));

    // Small on both sides: compared.
    send(c.get(gw.url("/api/big/small"))).await;
    let r = wait_total(&gw, "big", 4).await;
    assert_eq!(count(&r, "match"), 1, "{r:#}");
    assert_eq!(r["compared"], 1);
    assert_eq!(r["match_rate"], 1.0);

    // Legacy's answer small, the new side's over the limit.
    let got = send(c.get(gw.url("/api/big/new-large"))).await;
    assert_eq!(json_of(&got.body), json!({"data": "x"}));
    let r = wait_total(&gw, "big", 5).await;
    eprintln!("big: {}", r["results"]);
    assert_eq!(count(&r, "too_large"), 4, "{r:#}");
    assert_eq!(r["compared"], 1);
    assert_eq!(r["mismatches"], json!([]));
    assert_metric_agrees(&gw, "big", &r).await;
}

// 7. Overload: copies beyond the budget are skipped, clients unaffected, memory bounded.

/// A line of `/proc/PID/status`, in bytes (`VmRSS`, `VmHWM`).
fn proc_status(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"));
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// `n` GETs of `url`, all at once; each body read as it streams and only its length kept.
async fn all_at_once(c: &reqwest::Client, url: &str, n: usize) -> Vec<(u16, u64)> {
    futures_util::future::join_all((0..n).map(|i| {
        let req = c
            .get(format!("{url}/{i}"))
            .timeout(Duration::from_secs(120));
        async move {
            let mut r = req.send().await.expect("an answer from the gateway");
            let status = r.status().as_u16();
            let mut len = 0u64;
            while let Some(chunk) = r.chunk().await.expect("the whole body") {
                len += chunk.len() as u64;
            }
            (status, len)
        }
    }))
    .await
}

const MIB: u64 = 1024 * 1024;

/// A deterministic body of `size` bytes.
fn blob(size: u64) -> Bytes {
    Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_beyond_the_budget_are_skipped_and_memory_stays_bounded() {
    let _serial = SERIAL.lock().await;
    const N: usize = 400;
    // `/blobs` answers 2 MiB: the 64 MiB the budget keeps hold 32 of them (fewer than its
    // 64 copies). `/small` answers 256 KiB: 64 copies keep 16 MiB (the count binds).
    const BIG: u64 = 2 * MIB;
    const SMALL: u64 = 256 * 1024;
    const BYTES_HELD: usize = (64 * MIB / BIG) as usize;
    const COPIES_HELD: usize = 64;
    let (big, small) = (blob(BIG), blob(SMALL));
    let sized = move |a: &Recorded| {
        let body = if a.path().starts_with("/small") {
            small.clone()
        } else {
            big.clone()
        };
        Reply::bytes("application/octet-stream", body)
    };
    let legacy = Upstream::scripted(sized.clone()).await;
    // Two new services, each holding every copy until released.
    let s2 = sized.clone();
    let blobs = Upstream::scripted(move |a| sized(a).held()).await;
    let smalls = Upstream::scripted(move |a| s2(a).held()).await;
    let (_dir, file) = routes_file(&format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nlegacy:\n  url: {}\n  timeout: 60s\nservices:\n  blobs:\n    url: {}\n    timeout: 120s\n  smalls:\n    url: {}\n    timeout: 120s\nroutes:\n  - name: blobs\n    match: {{prefix: /blobs}}\n    service: blobs\n    percent: 0\n    shadow: {{max_body: 4MiB}}\n  - name: small\n    match: {{prefix: /small}}\n    service: smalls\n    percent: 0\n    shadow: {{}}\n  - name: plain\n    match: {{prefix: /plain}}\n    service: blobs\n    percent: 0\n",
        legacy.url(),
        blobs.url(),
        smalls.url()
    ));
    let gw = GatewayProcess::spawn(&file, &[]).await;
    let pid = gw.child.id();
    let admin = format!("http://{}", gw.admin);
    let public = format!("http://{}", gw.public);
    let c = client();
    let bad = |got: &[(u16, u64)], size: u64| got.iter().filter(|g| **g != (200, size)).count();
    let one = async |path: String| {
        let got = all_at_once(&c, &format!("{public}{path}"), 1).await;
        assert_eq!(bad(&got, BIG), 0, "{path}: {got:?}");
    };

    // The 400-at-once burst without shadow, twice: what proxying it costs by itself, once
    // the allocator has settled.
    let got = all_at_once(&c, &format!("{public}/plain"), 4).await;
    assert_eq!(bad(&got, BIG), 0);
    let baseline = proc_status(pid, "VmRSS");
    let started = Instant::now();
    for _ in 0..2 {
        let got = all_at_once(&c, &format!("{public}/plain"), N).await;
        assert_eq!(bad(&got, BIG), 0);
    }
    let plain_took = started.elapsed() / 2;
    let plain_peak = proc_status(pid, "VmHWM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = proc_status(pid, "VmRSS");
    assert_eq!(blobs.count(), 0);

    // One at a time: copies are held until the budget's 64 MiB are kept (32 copies of
    // 2 MiB); every further one is skipped.
    let mut sent = 0;
    for _ in 0..BYTES_HELD + 8 {
        one(format!("/blobs/one{sent}")).await;
        sent += 1;
        wait_accounted(&admin, "blobs", &blobs, sent).await;
    }
    let r = report_at(&admin, "blobs").await;
    assert_eq!(blobs.count(), BYTES_HELD, "{r:#}");
    assert_eq!(count(&r, "skipped"), 8, "{r:#}");
    let full = proc_status(pid, "VmRSS");
    let full_peak = proc_status(pid, "VmHWM");

    // 400 at once with the budget's bytes full: every copy skipped, every client served.
    let started = Instant::now();
    let got = all_at_once(&c, &format!("{public}/blobs"), N).await;
    let full_took = started.elapsed();
    assert_eq!(bad(&got, BIG), 0, "every client gets legacy's whole answer");
    sent += N;
    let r = wait_total_at(&admin, "blobs", (sent - BYTES_HELD) as u64).await;
    assert_eq!(count(&r, "skipped"), (8 + N) as u64, "{r:#}");
    assert_eq!(blobs.count(), BYTES_HELD);
    assert_eq!(blobs.in_flight(), BYTES_HELD);
    assert_eq!(
        shadow_metrics_at(&admin, "blobs").await,
        BTreeMap::from([("skipped", (8 + N) as f64)])
    );
    let overload_peak = proc_status(pid, "VmHWM");

    // Released, the held copies end and are counted.
    blobs.release();
    let r = wait_total_at(&admin, "blobs", sent as u64).await;
    assert_eq!(
        count(&r, "skipped") + count(&r, "match"),
        sent as u64,
        "{r:#}"
    );

    // 400 at once with an empty budget, the copies of 256 KiB: exactly 64 are held at once,
    // the other 336 skipped.
    let started = Instant::now();
    let got = all_at_once(&c, &format!("{public}/small"), N).await;
    let small_took = started.elapsed();
    assert_eq!(
        bad(&got, SMALL),
        0,
        "every client gets legacy's whole answer"
    );
    eventually("every small copy held or skipped", WAIT, async || {
        let r = report_at(&admin, "small").await;
        count(&r, "skipped") + smalls.count() as u64 == N as u64
    })
    .await;
    let r = report_at(&admin, "small").await;
    let small_held = smalls.count();
    eprintln!(
        "overload: {N} requests at once; unshadowed (2 MiB) {plain_took:?}, shadowed with the budget's bytes full (2 MiB) {full_took:?}, shadowed from an empty budget (256 KiB) {small_took:?}: {small_held} copies held, {} skipped",
        count(&r, "skipped")
    );
    assert_eq!(small_held, COPIES_HELD, "{r:#}");
    assert_eq!(smalls.max_in_flight(), COPIES_HELD);
    assert_eq!(count(&r, "skipped"), (N - COPIES_HELD) as u64, "{r:#}");
    smalls.release();
    let r = wait_total_at(&admin, "small", N as u64).await;
    assert_eq!(count(&r, "match"), COPIES_HELD as u64, "{r:#}");

    // The budget is whole again: later copies are compared, none skipped.
    let skipped = count(&report_at(&admin, "blobs").await, "skipped");
    for _ in 0..5 {
        one(format!("/blobs/again{sent}")).await;
        sent += 1;
        let r = wait_total_at(&admin, "blobs", sent as u64).await;
        assert_eq!(
            count(&r, "skipped"),
            skipped,
            "a copy after the release: {r:#}"
        );
    }

    // Memory. Holding the budget's 64 MiB of answers may cost those 64 MiB, plus 32 MiB
    // for what else 32 held copies have (their heads, their connections to the new side
    // and those connections' buffers, a few hundred KiB each at most) and the allocator's
    // rounding: 96 MiB over the resident size before, measured one copy at a time so that
    // no burst's buffers blur the figure. (Copies unbounded by the budget would keep
    // 40 × 2 MiB; with the overload, 800 MiB.) The overload on top, every copy skipped, may
    // add what the same burst unshadowed needed over the baseline, and 32 MiB.
    let grown = full.saturating_sub(before);
    let burst_cost = plain_peak.saturating_sub(baseline);
    eprintln!(
        "gateway memory: baseline RSS {} MiB; unshadowed bursts' peak {} MiB (+{} MiB); RSS before the copies {} MiB, with {BYTES_HELD} copies of {} MiB held ({} MiB kept) {} MiB (+{} MiB, peak {} MiB); peak after the overload on top {} MiB",
        baseline / MIB,
        plain_peak / MIB,
        burst_cost / MIB,
        before / MIB,
        BIG / MIB,
        BYTES_HELD as u64 * BIG / MIB,
        full / MIB,
        grown / MIB,
        full_peak / MIB,
        overload_peak / MIB
    );
    let allowed = 64 * MIB + 32 * MIB;
    assert!(
        grown <= allowed,
        "holding {} MiB of copies grew the gateway's RSS by {} MiB (allowed {} MiB)",
        BYTES_HELD as u64 * BIG / MIB,
        grown / MIB,
        allowed / MIB
    );
    assert!(
        overload_peak <= full + burst_cost + 32 * MIB,
        "peak RSS {} MiB after the overload: over {} MiB held + {} MiB for the burst + 32 MiB",
        overload_peak / MIB,
        full / MIB,
        burst_cost / MIB
    );
}

/// Waits until `n` requests' copies are accounted for: counted, or held by `new`.
async fn wait_accounted(admin: &str, route: &str, new: &Upstream, n: usize) {
    eventually(
        &format!("{n} copies of {route} counted or held"),
        WAIT,
        async || total(&report_at(admin, route).await) + new.count() as u64 >= n as u64,
    )
    .await;
}

// 8. The compare table and the report's 404.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_shows_the_shadow_match_rate_and_an_unknown_route_is_404() {
    let echo = |a: &Recorded| Reply::json(&json!({"path": a.path()}));
    let legacy = Upstream::scripted(echo).await;
    let new = Upstream::scripted(echo).await;
    let yaml = routes_yaml(
        &legacy,
        &[("orders", &new)],
        "  - name: shadowed\n    match: {prefix: /shadowed}\n    service: orders\n    percent: 0\n    shadow: {}\n  - name: plain\n    match: {prefix: /plain}\n    service: orders\n    percent: 0\n",
    );
    let gw = Gateway::start(&yaml).await;
    let c = client();
    for i in 0..4 {
        send(c.get(gw.url(&format!("/shadowed/{i}")))).await;
        send(c.get(gw.url(&format!("/plain/{i}")))).await;
    }
    wait_total(&gw, "shadowed", 4).await;
    let compare = async || -> (Value, Value) {
        let v: Value = get_json(gw.admin_url("/admin/compare?window=5m")).await;
        let shadow = |name: &str| {
            v["routes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["route"] == name)
                .unwrap_or_else(|| panic!("route {name} in {v}"))["shadow"]
                .clone()
        };
        (shadow("shadowed"), shadow("plain"))
    };
    let (shadowed, plain) = compare().await;
    assert_eq!(
        (&shadowed["match_rate"], &shadowed["compared"]),
        (&json!(1.0), &json!(4)),
        "{shadowed}"
    );
    assert_eq!(
        shadowed["differences"],
        json!({"status": 0, "headers": 0, "body": 0})
    );
    // Both sides' times for the same requests.
    assert!(shadowed["legacy_p99_ms"].is_number() && shadowed["new_p99_ms"].is_number());
    assert_eq!(plain, Value::Null);
    assert_eq!(new.count(), 4);

    // A route without shadow has a report too, with nothing in it...
    let r = report(&gw, "plain").await;
    assert_eq!(r["configured"], false);
    assert_eq!(total(&r), 0);
    assert_eq!(r["match_rate"], Value::Null);
    // ...and reading it leaves the route without shadow in the compare table.
    let (shadowed, plain) = compare().await;
    assert_eq!(shadowed["compared"], 4);
    assert_eq!(
        plain,
        Value::Null,
        "a route without shadow, after GET /admin/shadow/plain"
    );

    let r = c
        .get(gw.admin_url("/admin/shadow/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "no_such_route", "{body}");
    let routes = body["routes"].as_array().unwrap();
    assert!(routes.contains(&json!("shadowed")) && routes.contains(&json!("plain")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_never_sent_twice_to_legacy_and_a_clients_shadow_mark_is_removed() {
    let (legacy, new, gw) = echo_gateway(
        "  - name: writes\n    match: {prefix: /api/writes}\n    service: orders\n    percent: 0\n    shadow: {methods: [GET, POST], noise: {sample: 100%}}\n  - name: moved\n    match: {prefix: /api/moved}\n    service: orders\n    percent: 100\n",
    )
    .await;
    let c = client();
    for i in 0..5 {
        let got = send(c.post(gw.url(&format!("/api/writes/{i}"))).body("{}")).await;
        assert_eq!(got.status, 200);
    }
    send(c.get(gw.url("/api/writes/read"))).await;
    let r = wait_total(&gw, "writes", 6).await;
    assert_eq!(count(&r, "match"), 6, "{r:#}");
    // Each POST reached legacy once (no noise sample for a write); the GET twice, the
    // second time marked as a copy.
    let posts = legacy.seen().iter().filter(|a| a.method == "POST").count();
    assert_eq!(posts, 5);
    let gets: Vec<Recorded> = legacy
        .seen()
        .into_iter()
        .filter(|a| a.method == "GET")
        .collect();
    assert_eq!(gets.len(), 2);
    assert_eq!(
        gets.iter()
            .filter(|a| a.header("x-strangler-shadow") == Some("1"))
            .count(),
        1
    );
    // A client's own mark never reaches a service: a real request stays a real one.
    send(
        c.post(gw.url("/api/moved/1"))
            .header("x-strangler-shadow", "1")
            .body("{}"),
    )
    .await;
    let moved = new
        .seen()
        .into_iter()
        .find(|a| a.path() == "/api/moved/1")
        .expect("the request reached the new side");
    assert!(moved.header("x-strangler-shadow").is_none());
}
