//! Resilience, end to end: services of several instances and their balancing, active health
//! checks, fallback to legacy, the circuit breaker and retries with their budget, each
//! against upstreams that fail on cue (`support::faults`). Host names looked up again:
//! `resilience_dns`, with a resolver of the test's own.
//!
//! Every wait for the gateway to notice something is a poll with a deadline; the few fixed
//! sleeps are where time passing is what is tested (a cooldown), and say so.

use crate::support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::faults::*;
use support::*;

/// How long the gateway gets to notice a change (a health check, a breaker's state).
const WAIT: Duration = Duration::from_secs(10);

/// The head of a routes file: listeners on `:0`, legacy at `legacy`.
fn head(legacy: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nlegacy:\n  url: {legacy}\n  timeout: 10s\n"
    )
}

/// What the client got.
async fn burst(gw: &Gateway, path: &str, n: usize, concurrency: usize) -> Vec<Got> {
    let c = client();
    let url = gw.url(path);
    futures_util::stream::iter(0..n)
        .map(|_| send(c.get(&url)))
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// Answers counted by `status upstream`, e.g. `"200 b"`.
fn tally(answers: &[Got]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for a in answers {
        *out.entry(format!("{} {}", a.status, a.upstream))
            .or_insert(0) += 1;
    }
    out
}

/// A metric's value now (0 when the series does not exist yet).
async fn value(gw: &Gateway, series: &str) -> f64 {
    metric(&gw.metrics().await, series).unwrap_or(0.0)
}

/// Waits until the series reads `want`.
async fn wait_metric(gw: &Gateway, series: &str, want: f64) {
    eventually(&format!("{series} = {want}"), WAIT, async || {
        metric(&gw.metrics().await, series) == Some(want)
    })
    .await;
}

async fn compare(gw: &Gateway) -> serde_json::Value {
    get_json(gw.admin_url("/admin/compare?window=5m")).await
}

/// Two addresses where nothing listens (distinct: both are bound before either is freed).
async fn two_dead_addrs() -> (SocketAddr, SocketAddr) {
    let a = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    (a.local_addr().unwrap(), b.local_addr().unwrap())
}

/// A body whose every byte depends on its place, so that a copy cut or shifted differs.
fn body_of(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

// 1. Health checks take a dead instance out and bring it back.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instance_gets_no_traffic_until_its_checks_pass_again() {
    let legacy = Upstream::start("legacy").await;
    let a = FaultServer::start("a").await;
    let b = FaultServer::start("b").await;
    let c = FaultServer::start("c").await;
    let yaml = format!(
        "{}services:\n  orders:\n    urls: {}\n    timeout: 10s\n    health: {{path: /healthz, interval: 200ms, timeout: 200ms, unhealthy_after: 2, healthy_after: 1}}\nroutes:\n  - name: orders-read\n    match: {{prefix: /api/orders}}\n    service: orders\n    percent: 100\n    retries: {{attempts: 2}}\n",
        head(&legacy.url()),
        urls(&[&a, &b, &c])
    );
    let gw = Gateway::start(&yaml).await;
    // Instances start healthy: no check has to pass first.
    let m = gw.metrics().await;
    for s in [&a, &b, &c] {
        assert_eq!(
            metric(&m, &healthy_series("orders", &s.label())),
            Some(1.0),
            "{m}"
        );
    }
    // All three serve, in turn (this also leaves pooled connections to each).
    let answers = burst(&gw, "/api/orders/1", 30, 3).await;
    let t = tally(&answers);
    for s in ["a", "b", "c"] {
        assert!(
            t.get(&format!("200 {s}")).copied().unwrap_or(0) >= 5,
            "{t:?}"
        );
    }

    // Kill a: no listener, its connections reset.
    a.refuse().await;
    let killed = Instant::now();
    wait_metric(&gw, &healthy_series("orders", &a.label()), 0.0).await;
    eprintln!("a taken out {:?} after it died", killed.elapsed());
    let m = gw.metrics().await;
    for s in [&b, &c] {
        assert_eq!(
            metric(&m, &healthy_series("orders", &s.label())),
            Some(1.0),
            "{m}"
        );
    }
    // 300 requests: all succeed, on b and c. Nothing can reach a; had the gateway tried,
    // the attempt would have failed to connect and either failed the request or cost a
    // retry: so neither happens.
    let retries_before = value(&gw, &retries_series("orders-read")).await;
    let (b0, c0) = (b.count(), c.count());
    let answers = burst(&gw, "/api/orders/2", 300, 8).await;
    let t = tally(&answers);
    eprintln!("with a dead: {t:?}");
    assert_eq!(
        t.get("200 b").copied().unwrap_or(0) + t.get("200 c").copied().unwrap_or(0),
        300,
        "{t:?}"
    );
    assert_eq!(b.count() - b0 + c.count() - c0, 300);
    assert!(b.count() - b0 >= 100 && c.count() - c0 >= 100, "{t:?}");
    assert_eq!(
        value(&gw, &retries_series("orders-read")).await,
        retries_before,
        "no attempt went to the dead instance"
    );
    assert_eq!(legacy.count(), 0, "the service had healthy instances");

    // a comes back on the same port: once a check passes, it serves again.
    let checks = a.health_count();
    a.restore().await;
    wait_metric(&gw, &healthy_series("orders", &a.label()), 1.0).await;
    assert!(a.health_count() > checks, "checked with GET /healthz");
    let a0 = a.count();
    let answers = burst(&gw, "/api/orders/3", 60, 3).await;
    let t = tally(&answers);
    eprintln!("with a back: {t:?}");
    assert!(answers.iter().all(|x| x.status == 200), "{t:?}");
    assert!(a.count() - a0 >= 10, "a got {} of 60", a.count() - a0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_failing_requests_in_a_row_is_ejected_though_its_checks_pass() {
    let legacy = Upstream::start("legacy").await;
    let a = FaultServer::start("a").await;
    let b = FaultServer::start("b").await;
    let c = FaultServer::start("c").await;
    // a passes its health checks throughout.
    a.set_health(Some(200));
    let yaml = format!(
        "{}services:\n  orders:\n    urls: {}\n    timeout: 10s\n    health: {{path: /healthz, interval: 200ms}}\n    outlier: {{consecutive: 3, ejection: 6s}}\nroutes:\n  - name: orders-read\n    match: {{prefix: /api/orders}}\n    service: orders\n    percent: 100\n    fallback: {{when: [5xx]}}\n",
        head(&legacy.url()),
        urls(&[&a, &b, &c])
    );
    let gw = Gateway::start(&yaml).await;
    let ejected = ejected_series("orders", &a.label());
    assert_eq!(value(&gw, &ejected).await, 0.0);
    // A 501 is the service saying it has no such endpoint yet: not a failure.
    a.set(Mode::Status(501));
    let answers = burst(&gw, "/api/orders/0", 15, 1).await;
    let t = tally(&answers);
    assert_eq!(t.get("501 a"), Some(&5), "{t:?}");
    assert_eq!(value(&gw, &ejected).await, 0.0);
    // a now answers every request 500. One at a time, in turn: a fails three in a row,
    // then gets nothing for 6 s.
    a.set(Mode::Status(500));
    let before = a.count();
    let answers = burst(&gw, "/api/orders/1", 60, 1).await;
    let t = tally(&answers);
    assert_eq!(a.count() - before, 3, "{t:?}");
    assert_eq!(t.get("200 legacy"), Some(&3), "a's three fell back: {t:?}");
    assert_eq!(t.values().sum::<usize>(), 60);
    assert!(t.keys().all(|k| k.starts_with("200 ")), "{t:?}");
    assert_eq!(value(&gw, &ejected).await, 1.0);
    assert_eq!(
        value(&gw, &healthy_series("orders", &a.label())).await,
        1.0,
        "its checks still pass"
    );
    assert_eq!(
        value(&gw, &fallbacks_series("orders-read", "5xx")).await,
        3.0
    );
    // Mended, it is back once its ejection ends.
    a.set(Mode::Ok);
    wait_metric(&gw, &ejected, 0.0).await;
    let answers = burst(&gw, "/api/orders/2", 30, 1).await;
    let t = tally(&answers);
    assert_eq!(t.get("200 a"), Some(&10), "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_failing_its_checks_gets_nothing_though_it_still_answers() {
    let legacy = Upstream::start("legacy").await;
    let a = FaultServer::start("a").await;
    let b = FaultServer::start("b").await;
    let yaml = format!(
        "{}services:\n  orders:\n    urls: {}\n    timeout: 10s\n    health: {{path: /healthz, interval: 200ms, timeout: 1s, unhealthy_after: 2, healthy_after: 1}}\nroutes:\n  - name: orders-read\n    match: {{prefix: /api/orders}}\n    service: orders\n    percent: 100\n",
        head(&legacy.url()),
        urls(&[&a, &b])
    );
    let gw = Gateway::start(&yaml).await;
    // a answers its checks 503 (and would still answer traffic 200).
    a.set_health(Some(503));
    wait_metric(&gw, &healthy_series("orders", &a.label()), 0.0).await;
    let a0 = a.count();
    let answers = burst(&gw, "/api/orders/1", 100, 4).await;
    let t = tally(&answers);
    assert_eq!(t.get("200 b").copied(), Some(100), "{t:?}");
    assert_eq!(a.count(), a0, "an unhealthy instance got traffic");
    // A 2xx check brings it back.
    a.set_health(Some(204));
    wait_metric(&gw, &healthy_series("orders", &a.label()), 1.0).await;
    let answers = burst(&gw, "/api/orders/2", 40, 2).await;
    assert!(answers.iter().all(|x| x.status == 200));
    assert!(a.count() - a0 >= 10, "a got {} of 40", a.count() - a0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_with_no_healthy_instance_sends_its_share_to_legacy_which_always_serves() {
    let legacy = FaultServer::start("legacy").await;
    let a = FaultServer::start("a").await;
    let b = FaultServer::start("b").await;
    let health = "health: {path: /healthz, interval: 200ms, timeout: 1s, unhealthy_after: 2, healthy_after: 1}";
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nlegacy:\n  url: {}\n  timeout: 10s\n  {health}\nservices:\n  orders:\n    urls: {}\n    timeout: 10s\n    {health}\nroutes:\n  - name: orders-read\n    match: {{prefix: /api/orders}}\n    service: orders\n    percent: 100\n",
        legacy.url(),
        urls(&[&a, &b])
    );
    let gw = Gateway::start(&yaml).await;
    a.set_health(Some(500));
    b.set_health(Some(500));
    wait_metric(&gw, &healthy_series("orders", &a.label()), 0.0).await;
    wait_metric(&gw, &healthy_series("orders", &b.label()), 0.0).await;
    let answers = burst(&gw, "/api/orders/1", 20, 4).await;
    let t = tally(&answers);
    assert_eq!(t.get("200 legacy").copied(), Some(20), "{t:?}");
    assert_eq!(a.count() + b.count(), 0);
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, &requests_series("orders-read", "legacy", "GET", 200)),
        Some(20.0),
        "{m}"
    );

    // Legacy's only instance fails its checks too: requests still go to legacy, which
    // is all there is.
    legacy.set_health(Some(500));
    wait_metric(&gw, &healthy_series("legacy", &legacy.label()), 0.0).await;
    let before = legacy.count();
    for path in ["/api/orders/2", "/elsewhere"] {
        let answers = burst(&gw, path, 10, 2).await;
        let t = tally(&answers);
        assert_eq!(t.get("200 legacy").copied(), Some(10), "{path}: {t:?}");
    }
    assert_eq!(legacy.count() - before, 20);
    assert_eq!(a.count() + b.count(), 0);
}

// 3. least_connections.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_sends_new_requests_to_the_instance_not_busy() {
    let legacy = Upstream::start("legacy").await;
    let a = FaultServer::start("a").await;
    let b = FaultServer::start("b").await;
    let yaml = format!(
        "{}services:\n  orders:\n    urls: {}\n    balance: least_connections\n    timeout: 60s\nroutes:\n  - name: orders-read\n    match: {{prefix: /api/orders}}\n    service: orders\n    percent: 100\n",
        head(&legacy.url()),
        urls(&[&a, &b])
    );
    let gw = Gateway::start(&yaml).await;
    // a holds what it gets until released; b keeps its requests 1.5 s. Slow requests sent
    // together spread over both (each goes to the less busy one); b's then end, a's stay.
    // With k held on a and b idle, a batch of m splits as b k, then one each in turn:
    // a gains (m - k) / 2, so 12 - k more bring a to 5 or over.
    a.set(Mode::Hold);
    b.set(Mode::Stall(Duration::from_millis(1500)));
    let c = client();
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.in_flight() < 5 {
        assert!(
            Instant::now() < deadline,
            "a holds {} requests, not 5",
            a.in_flight()
        );
        let k = a.in_flight();
        for _ in 0..(12 - k) {
            held.push(tokio::spawn(send(c.get(gw.url("/api/orders/slow")))));
        }
        let sent = held.len();
        eventually(
            "the slow batch reaches the instances and b is done",
            WAIT,
            async || a.count() + b.count() == sent && b.in_flight() == 0,
        )
        .await;
    }
    let holding = a.in_flight();
    eprintln!(
        "held on a: {holding}; slow requests sent: {}, received by a {} and b {}",
        held.len(),
        a.count(),
        b.count()
    );
    // From now on both answer at once; a still holds its requests.
    a.set(Mode::Ok);
    b.set(Mode::Ok);
    let (a0, b0) = (a.count(), b.count());
    let mut to_b = 0;
    for _ in 0..100 {
        let x = send(c.get(gw.url("/api/orders/fast"))).await;
        assert_eq!(x.status, 200);
        to_b += usize::from(x.upstream == "b");
    }
    eprintln!(
        "fast requests: {to_b} of 100 to b (a got {}, b {})",
        a.count() - a0,
        b.count() - b0
    );
    assert_eq!(a.in_flight(), holding, "a held its requests throughout");
    assert!(to_b >= 95, "{to_b} of 100 to the idle instance");
    // The held requests end well.
    a.release();
    for h in held {
        let x = h.await.unwrap();
        assert_eq!(x.status, 200, "{x:?}");
    }
}

// 4. Fallback to legacy.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_new_side_falls_back_to_legacy_and_is_counted_as_failing() {
    let legacy = Upstream::start("legacy").await;
    let gone = dead_addr().await;
    let stalling = FaultServer::start("stalling").await;
    stalling.set(Mode::Stall(Duration::from_secs(5)));
    let failing = FaultServer::start("failing").await;
    failing.set(Mode::Status(500));
    let missing = FaultServer::start("missing").await;
    missing.set(Mode::Status(404));
    let unimpl = FaultServer::start("unimpl").await;
    unimpl.set(Mode::Status(501));
    let svc = |name: &str, url: &str| format!("  {name}:\n    url: {url}\n    timeout: 10s\n");
    let rt = |name: &str, prefix: &str, service: &str, extra: &str| {
        format!(
            "  - name: {name}\n    match: {{prefix: {prefix}}}\n    service: {service}\n    percent: 100\n{extra}"
        )
    };
    let yaml = format!(
        "{}services:\n{}{}{}{}{}routes:\n{}{}{}{}{}{}",
        head(&legacy.url()),
        svc("gone", &format!("http://{gone}")),
        svc("stalling", &stalling.url()),
        svc("failing", &failing.url()),
        svc("missing", &missing.url()),
        svc("unimpl", &unimpl.url()),
        // The default `when`: connect, timeout, 5xx.
        rt("fb-connect", "/connect", "gone", "    fallback: {}\n"),
        rt(
            "fb-timeout",
            "/timeout",
            "stalling",
            "    timeout: 300ms\n    fallback: {}\n"
        ),
        rt("fb-5xx", "/5xx", "failing", "    fallback: {when: [5xx]}\n"),
        rt(
            "fb-404",
            "/404",
            "missing",
            "    fallback: {when: [connect, timeout, 5xx, 404]}\n"
        ),
        rt("fb-501", "/501", "unimpl", "    fallback: {when: [501]}\n"),
        // 404 is not in the default `when`: the client gets the new side's 404.
        rt("plain-404", "/plain404", "missing", "    fallback: {}\n"),
    );
    let gw = Gateway::start(&yaml).await;
    let c = client();
    let cases = [
        ("fb-connect", "/connect", "connect", 502),
        ("fb-timeout", "/timeout", "timeout", 504),
        ("fb-5xx", "/5xx", "5xx", 500),
        ("fb-404", "/404", "404", 404),
        ("fb-501", "/501", "501", 501),
    ];
    for (name, prefix, _, _) in cases {
        for i in 0..3 {
            let x = send(c.get(gw.url(&format!("{prefix}/{i}")))).await;
            assert_eq!(
                (x.status, x.upstream.as_str(), x.body.as_ref()),
                (200, "legacy", &b"legacy"[..]),
                "{name}: {x:?}"
            );
            if name == "fb-timeout" {
                // The route's 300 ms, not the service's 10 s nor the upstream's 5 s.
                assert!(
                    x.took >= Duration::from_millis(250) && x.took < Duration::from_secs(4),
                    "{name} took {:?}",
                    x.took
                );
            }
        }
    }
    for i in 0..3 {
        let x = send(c.get(gw.url(&format!("/plain404/{i}")))).await;
        assert_eq!((x.status, x.upstream.as_str()), (404, "missing"), "{x:?}");
    }
    // Legacy got each fallen-back request once, and none of the plain 404s.
    let seen = legacy.seen();
    for (_, prefix, _, _) in cases {
        let n = seen
            .iter()
            .filter(|r| r.target.starts_with(&format!("{prefix}/")))
            .count();
        assert_eq!(n, 3, "{prefix}");
    }
    assert!(!seen.iter().any(|r| r.target.starts_with("/plain404")));

    let m = gw.metrics().await;
    let v = compare(&gw).await;
    for (name, _, reason, code) in cases {
        assert_eq!(
            metric(&m, &fallbacks_series(name, reason)),
            Some(3.0),
            "{name}\n{m}"
        );
        // Counted as the new side's failure, with its own status, and as legacy's answer.
        assert_eq!(
            metric(&m, &requests_series(name, "new", "GET", code)),
            Some(3.0),
            "{name}\n{m}"
        );
        assert_eq!(
            metric(&m, &requests_series(name, "legacy", "GET", 200)),
            Some(3.0),
            "{name}\n{m}"
        );
        let r = compared(&v, name);
        assert_eq!(r["new"]["requests"], 3, "{name}: {r}");
        assert_eq!(r["new"]["errors"], 3, "{name}: {r}");
        assert_eq!(r["legacy"]["requests"], 3, "{name}: {r}");
        assert_eq!(r["legacy"]["errors"], 0, "{name}: {r}");
    }
    // The plain 404: no fallback; an answer, not an error, as before.
    assert!(
        !m.lines()
            .any(|l| l.starts_with("strangler_fallbacks_total") && l.contains("plain-404")),
        "{m}"
    );
    assert_eq!(
        metric(&m, &requests_series("plain-404", "new", "GET", 404)),
        Some(3.0)
    );
    let r = compared(&v, "plain-404");
    assert_eq!(r["new"]["requests"], 3, "{r}");
    assert_eq!(r["new"]["errors"], 0, "{r}");
    assert_eq!(r["legacy"]["requests"], 0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smaller_of_the_services_and_the_routes_timeout_applies() {
    let legacy = Upstream::start("legacy").await;
    let stalling = FaultServer::start("stalling").await;
    stalling.set(Mode::Stall(Duration::from_secs(5)));
    let yaml = format!(
        "{}services:\n  stalling:\n    url: {}\n    timeout: 300ms\nroutes:\n  - name: loose\n    match: {{prefix: /loose}}\n    service: stalling\n    percent: 100\n    timeout: 30s\n    fallback: {{when: [timeout]}}\n",
        head(&legacy.url()),
        stalling.url()
    );
    let gw = Gateway::start(&yaml).await;
    let x = send(client().get(gw.url("/loose/1"))).await;
    assert_eq!((x.status, x.upstream.as_str()), (200, "legacy"), "{x:?}");
    assert!(
        x.took >= Duration::from_millis(250) && x.took < Duration::from_secs(4),
        "took {:?}: the service's 300 ms applies",
        x.took
    );
    assert_eq!(value(&gw, &fallbacks_series("loose", "timeout")).await, 1.0);
}

/// A listener whose accept queue is full (a backlog of 0 holds one connection, which is made
/// and never accepted): the kernel drops every further SYN, so a new connection to it hangs
/// as one to a host that does not answer would. Keep the pair alive for the test.
fn unanswered_addr() -> (socket2::Socket, std::net::TcpStream, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    l.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let queued = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(),
        "the accept queue is full"
    );
    (l, queued, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_not_made_within_connect_timeout_is_a_connect_failure() {
    let legacy = Upstream::start("legacy").await;
    let (_listener, _queued, addr) = unanswered_addr();
    let yaml = format!(
        "{}services:\n  silent:\n    url: http://{addr}\n    timeout: 10s\n    connect_timeout: 2s\nroutes:\n  - name: tight\n    match: {{prefix: /tight}}\n    service: silent\n    percent: 100\n    connect_timeout: 300ms\n    fallback: {{when: [connect]}}\n  - name: loose\n    match: {{prefix: /loose}}\n    service: silent\n    percent: 100\n    fallback: {{when: [connect]}}\n",
        head(&legacy.url())
    );
    let gw = Gateway::start(&yaml).await;
    // The route's 300 ms tightens the service's 2 s; the failure is `connect` (the only
    // reason this route falls back on), not the request's `timeout` of 10 s.
    let x = send(client().get(gw.url("/tight/1"))).await;
    assert_eq!((x.status, x.upstream.as_str()), (200, "legacy"), "{x:?}");
    assert!(
        x.took >= Duration::from_millis(250) && x.took < Duration::from_millis(1900),
        "took {:?}: the route's 300 ms applies",
        x.took
    );
    assert_eq!(value(&gw, &fallbacks_series("tight", "connect")).await, 1.0);
    // Without a route's own, the service's 2 s applies.
    let y = send(client().get(gw.url("/loose/1"))).await;
    assert_eq!((y.status, y.upstream.as_str()), (200, "legacy"), "{y:?}");
    assert!(
        y.took >= Duration::from_millis(1900) && y.took < Duration::from_secs(8),
        "took {:?}: the service's 2 s applies",
        y.took
    );
    assert_eq!(value(&gw, &fallbacks_series("loose", "connect")).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_body_is_not_replayed_one_within_it_is_replayed_intact() {
    let legacy = Upstream::start("legacy").await;
    let new = FaultServer::start("new").await;
    new.set(Mode::Status(500));
    let yaml = format!(
        "{}services:\n  orders:\n    url: {}\n    timeout: 10s\nroutes:\n  - name: orders-write\n    match: {{prefix: /api/orders}}\n    service: orders\n    percent: 100\n    fallback: {{max_body: 1KiB}}\n",
        head(&legacy.url()),
        new.url()
    );
    let gw = Gateway::start(&yaml).await;
    let c = client();
    // (path, body length, replayed): over 1 KiB is not; exactly 1 KiB is. PUT, which is
    // idempotent: a POST is not replayed after a 5xx at all (below).
    let cases = [
        ("/api/orders/big", 4096, false),
        ("/api/orders/edge", 1025, false),
        ("/api/orders/small", 512, true),
        ("/api/orders/exact", 1024, true),
    ];
    for (i, (path, len, replayed)) in cases.into_iter().enumerate() {
        let body = body_of(len, i as u8);
        let x = send(c.put(gw.url(path)).body(body.clone())).await;
        let to_legacy: Vec<_> = legacy
            .seen()
            .into_iter()
            .filter(|r| r.target == path)
            .collect();
        let to_new: Vec<_> = new
            .seen()
            .into_iter()
            .filter(|r| r.target == path)
            .collect();
        assert_eq!(to_new.len(), 1, "{path}");
        assert_eq!(
            to_new[0].body.as_deref(),
            Some(body.as_slice()),
            "{path}: new side's copy"
        );
        if replayed {
            assert_eq!(
                (x.status, x.upstream.as_str(), x.body.as_ref()),
                (200, "legacy", &b"legacy"[..]),
                "{path}"
            );
            assert_eq!(to_legacy.len(), 1, "{path}");
            assert_eq!(to_legacy[0].method, "PUT");
            assert_eq!(
                to_legacy[0].body.as_deref(),
                Some(body.as_slice()),
                "{path}: legacy's copy"
            );
        } else {
            // The new side's own failure.
            assert_eq!(
                (x.status, x.upstream.as_str(), x.body.as_ref()),
                (500, "new", &b"new"[..]),
                "{path}"
            );
            assert!(to_legacy.is_empty(), "{path}: legacy got it");
        }
    }
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, &fallbacks_series("orders-write", "5xx")),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, &requests_series("orders-write", "new", "PUT", 500)),
        Some(4.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, &requests_series("orders-write", "legacy", "PUT", 200)),
        Some(2.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_falls_back_only_when_the_new_side_cannot_have_acted_on_it() {
    let legacy = Upstream::start("legacy").await;
    let new = FaultServer::start("new").await;
    let dead = dead_addr().await;
    let yaml = format!(
        "{}services:\n  orders:\n    url: {}\n    timeout: 10s\n  gone:\n    url: http://{dead}\n    timeout: 10s\nroutes:\n  - name: orders-write\n    match: {{prefix: /api/orders}}\n    service: orders\n    percent: 100\n    fallback: {{when: [connect, timeout, 5xx, 404]}}\n  - name: gone-write\n    match: {{prefix: /api/gone}}\n    service: gone\n    percent: 100\n    fallback: {{when: [connect]}}\n",
        head(&legacy.url()),
        new.url()
    );
    let gw = Gateway::start(&yaml).await;
    let c = client();
    let body = body_of(300, 7);
    // A 5xx: the new side may have done the work; no second execution on legacy.
    new.set(Mode::Status(500));
    let x = send(c.post(gw.url("/api/orders/1")).body(body.clone())).await;
    assert_eq!((x.status, x.upstream.as_str()), (500, "new"));
    // A 404: it has no such thing; legacy gets the POST, body intact.
    new.set(Mode::Status(404));
    let x = send(c.post(gw.url("/api/orders/2")).body(body.clone())).await;
    assert_eq!((x.status, x.upstream.as_str()), (200, "legacy"));
    // Never connected: legacy gets it.
    let x = send(c.post(gw.url("/api/gone/3")).body(body.clone())).await;
    assert_eq!((x.status, x.upstream.as_str()), (200, "legacy"));
    let seen = legacy.seen();
    let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["/api/orders/2", "/api/gone/3"]);
    assert!(
        seen.iter()
            .all(|r| r.method == "POST" && r.body.as_deref() == Some(body.as_slice()))
    );
    assert_eq!(new.count(), 2);
}

// 5. The circuit breaker.

async fn breaker_gateway(legacy: &Upstream, orders: &FaultServer) -> Gateway {
    Gateway::start(&format!(
        "{}services:\n  orders:\n    url: {}\n    timeout: 10s\n    breaker: {{failures: 3, window: 10s, cooldown: 1s}}\nroutes:\n  - name: orders-read\n    match: {{prefix: /api/orders}}\n    service: orders\n    percent: 100\n",
        head(&legacy.url()),
        orders.url()
    ))
    .await
}

/// Three 500s from `orders` open the breaker (two do not); returns an instant just before
/// it opened (the third failure was sent), so that a wait measured from it is never
/// shorter than the gateway's own.
async fn open_the_breaker(gw: &Gateway, orders: &FaultServer) -> Instant {
    let c = client();
    orders.set(Mode::Status(500));
    let mut opened = Instant::now();
    for i in 0..3 {
        if i == 2 {
            assert_eq!(
                value(gw, &breaker_series("orders")).await,
                0.0,
                "open after 2"
            );
            opened = Instant::now();
        }
        let x = send(c.get(gw.url(&format!("/api/orders/{i}")))).await;
        assert_eq!(
            (x.status, x.upstream.as_str()),
            (500, "orders"),
            "{i}: {x:?}"
        );
    }
    wait_metric(gw, &breaker_series("orders"), 1.0).await;
    opened
}

/// Sends a request every 50 ms until one reaches `orders` (the half-open probe); the
/// others must be legacy's. Returns when the probe reached it and, unless `orders` holds
/// it, its answer.
async fn wait_for_probe(
    gw: &Gateway,
    legacy: &Upstream,
    orders: &FaultServer,
) -> (Instant, tokio::task::JoinHandle<Got>) {
    let c = client();
    let deadline = Instant::now() + WAIT;
    let before = orders.count();
    loop {
        assert!(Instant::now() < deadline, "no probe reached the service");
        let legacy_before = legacy.count();
        let h = tokio::spawn(send(c.get(gw.url("/api/orders/probe"))));
        loop {
            if orders.count() > before {
                return (Instant::now(), h);
            }
            if h.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if orders.count() > before {
            return (Instant::now(), h);
        }
        let x = h.await.unwrap();
        assert_eq!((x.status, x.upstream.as_str()), (200, "legacy"), "{x:?}");
        assert_eq!(legacy.count(), legacy_before + 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_after_failures_and_one_good_probe_closes_it() {
    let legacy = Upstream::start("legacy").await;
    let orders = FaultServer::start("orders").await;
    let gw = breaker_gateway(&legacy, &orders).await;
    assert_eq!(value(&gw, &breaker_series("orders")).await, 0.0);
    let opened = open_the_breaker(&gw, &orders).await;
    // Open: legacy serves, the service gets nothing.
    let answers = burst(&gw, "/api/orders/open", 10, 2).await;
    let t = tally(&answers);
    assert_eq!(t.get("200 legacy").copied(), Some(10), "{t:?}");
    assert_eq!(orders.count(), 3);

    // The service recovers, and holds the probe until told: meanwhile the breaker is
    // half-open and everything else still goes to legacy.
    orders.set(Mode::Hold);
    let (probed, probe) = wait_for_probe(&gw, &legacy, &orders).await;
    let after = probed - opened;
    eprintln!("probe {after:?} after the breaker opened (cooldown 1s)");
    assert!(after >= Duration::from_millis(900), "probe after {after:?}");
    wait_metric(&gw, &breaker_series("orders"), 2.0).await;
    let answers = burst(&gw, "/api/orders/half-open", 5, 5).await;
    let t = tally(&answers);
    assert_eq!(t.get("200 legacy").copied(), Some(5), "{t:?}");
    assert_eq!(orders.count(), 4, "one probe only");
    orders.set(Mode::Ok);
    orders.release();
    let x = probe.await.unwrap();
    assert_eq!((x.status, x.upstream.as_str()), (200, "orders"), "{x:?}");
    // Closed again: the service serves.
    wait_metric(&gw, &breaker_series("orders"), 0.0).await;
    let answers = burst(&gw, "/api/orders/closed", 10, 2).await;
    let t = tally(&answers);
    assert_eq!(t.get("200 orders").copied(), Some(10), "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_probe_opens_the_breaker_again_for_another_cooldown() {
    let legacy = Upstream::start("legacy").await;
    let orders = FaultServer::start("orders").await;
    let gw = breaker_gateway(&legacy, &orders).await;
    let opened = open_the_breaker(&gw, &orders).await;
    // Still failing: the probe gets the service's 500 and the breaker opens again.
    let (probed, probe) = wait_for_probe(&gw, &legacy, &orders).await;
    let after = probed - opened;
    eprintln!("first probe {after:?} after the breaker opened (cooldown 1s)");
    assert!(after >= Duration::from_millis(900), "probe after {after:?}");
    let x = probe.await.unwrap();
    assert_eq!((x.status, x.upstream.as_str()), (500, "orders"), "{x:?}");
    wait_metric(&gw, &breaker_series("orders"), 1.0).await;
    // The probe reached the service before its failure reopened the breaker.
    let reopened = probed;
    let n = orders.count();
    let answers = burst(&gw, "/api/orders/reopened", 10, 2).await;
    let t = tally(&answers);
    assert_eq!(t.get("200 legacy").copied(), Some(10), "{t:?}");
    assert_eq!(orders.count(), n, "open again: nothing to the service");
    // Recovered: the next probe, a whole cooldown later, closes it.
    orders.set(Mode::Ok);
    let (probed, probe) = wait_for_probe(&gw, &legacy, &orders).await;
    let after = probed - reopened;
    eprintln!("second probe {after:?} after the breaker opened again");
    assert!(after >= Duration::from_millis(900), "probe after {after:?}");
    let x = probe.await.unwrap();
    assert_eq!((x.status, x.upstream.as_str()), (200, "orders"), "{x:?}");
    wait_metric(&gw, &breaker_series("orders"), 0.0).await;
}

// 6. Retries and their budget.

async fn two_instance_gateway(
    legacy: &Upstream,
    a: &FaultServer,
    b: &FaultServer,
    retries: &str,
) -> Gateway {
    Gateway::start(&format!(
        "{}services:\n  orders:\n    urls: {}\n    timeout: 10s\nroutes:\n  - name: orders-read\n    match: {{prefix: /api/orders}}\n    service: orders\n    percent: 100\n    retries: {retries}\n",
        head(&legacy.url()),
        urls(&[a, b])
    ))
    .await
}

/// 50 good requests: a budget of 10 retries.
async fn warm_up(gw: &Gateway) {
    let answers = burst(gw, "/api/orders/warm", 50, 4).await;
    assert!(
        answers.iter().all(|x| x.status == 200),
        "{:?}",
        tally(&answers)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_reset_after_it_was_read_is_not_retried_and_a_get_is() {
    let legacy = Upstream::start("legacy").await;
    let a = FaultServer::start("a").await;
    let b = FaultServer::start("b").await;
    let gw = two_instance_gateway(&legacy, &a, &b, "{attempts: 1, when: [connect, reset]}").await;
    warm_up(&gw).await;
    a.set(Mode::Reset);
    b.set(Mode::Reset);
    let c = client();
    let x = send(c.post(gw.url("/api/orders")).body("order=1")).await;
    assert_eq!(x.status, 502, "{x:?}");
    let posts: Vec<Recorded> = a
        .seen()
        .into_iter()
        .chain(b.seen())
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts.len(), 1, "the POST was sent {} times", posts.len());
    assert_eq!(posts[0].body.as_deref(), Some(&b"order=1"[..]));
    assert_eq!(value(&gw, &retries_series("orders-read")).await, 0.0);
    assert_eq!(legacy.count(), 0);

    // The same failure on a GET is retried, on the other instance.
    let x = send(c.get(gw.url("/api/orders/1"))).await;
    assert_eq!(x.status, 502, "{x:?}");
    let gets = |s: &FaultServer| {
        s.seen()
            .iter()
            .filter(|r| r.method == "GET" && r.target == "/api/orders/1")
            .count()
    };
    assert!(
        gets(&a) >= 1 && gets(&b) >= 1,
        "a got {}, b {}",
        gets(&a),
        gets(&b)
    );
    assert_eq!(value(&gw, &retries_series("orders-read")).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_reset_on_one_instance_is_retried_on_the_other() {
    let legacy = Upstream::start("legacy").await;
    let a = FaultServer::start("a").await;
    let b = FaultServer::start("b").await;
    let gw = two_instance_gateway(&legacy, &a, &b, "{attempts: 1, when: [reset]}").await;
    warm_up(&gw).await;
    // Budget: 10 from the warm-up, 0.2 a request: 5 requests can all be retried, then 5
    // more (a retry moves the turn to b, so a may well be every request's first try).
    let c = client();
    for (phase, mode) in [
        ("reset", Mode::Reset),
        ("half-written head", Mode::PartialHead),
    ] {
        a.set(mode);
        let a0 = a.count();
        let r0 = value(&gw, &retries_series("orders-read")).await;
        for i in 0..5 {
            let x = send(c.get(gw.url(&format!("/api/orders/{i}")))).await;
            assert_eq!(
                (x.status, x.upstream.as_str()),
                (200, "b"),
                "{phase} {i}: {x:?}"
            );
        }
        let failed = a.count() - a0;
        let retries = value(&gw, &retries_series("orders-read")).await - r0;
        eprintln!("{phase}: a failed {failed} attempts; {retries} retries");
        assert!(failed >= 1, "{phase}: round robin sent nothing to a");
        assert!((1.0..=5.0).contains(&retries), "{phase}: {retries} retries");
    }
    assert_eq!(legacy.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_could_not_connect_is_retried_whatever_its_method() {
    let legacy = Upstream::start("legacy").await;
    let a = FaultServer::start("a").await;
    let b = FaultServer::start("b").await;
    let gw = two_instance_gateway(&legacy, &a, &b, "{attempts: 1, when: [connect]}").await;
    warm_up(&gw).await;
    a.refuse().await;
    // The gateway's idle connections to a were reset; what is tested is a connection that
    // cannot be made, so give it a moment to see those go (not the subject here).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = client();
    let bodies: Vec<Vec<u8>> = (0..6).map(|i| body_of(300 + i, i as u8)).collect();
    for (i, body) in bodies.iter().enumerate() {
        let x = send(
            c.post(gw.url(&format!("/api/orders/new{i}")))
                .body(body.clone()),
        )
        .await;
        assert_eq!((x.status, x.upstream.as_str()), (200, "b"), "{i}: {x:?}");
    }
    let posts: Vec<Recorded> = b
        .seen()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts.len(), 6);
    for (i, body) in bodies.iter().enumerate() {
        let p = posts
            .iter()
            .find(|r| r.target == format!("/api/orders/new{i}"))
            .unwrap();
        assert_eq!(
            p.body.as_deref(),
            Some(body.as_slice()),
            "POST {i} arrived intact"
        );
    }
    let retries = value(&gw, &retries_series("orders-read")).await;
    eprintln!("{retries} retries for 6 POSTs, a dead");
    assert!((1.0..=6.0).contains(&retries), "{retries} retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_a_fifth_of_the_requests_when_everything_fails() {
    const N: usize = 500;
    let legacy = Upstream::start("legacy").await;
    let (dead1, dead2) = two_dead_addrs().await;
    let r1 = FaultServer::start("r1").await;
    let r2 = FaultServer::start("r2").await;
    r1.set(Mode::Reset);
    r2.set(Mode::Reset);
    let yaml = format!(
        "{}services:\n  down:\n    urls: [http://{dead1}, http://{dead2}]\n    timeout: 10s\n  broken:\n    urls: {}\n    timeout: 10s\nroutes:\n  - name: refusing\n    match: {{prefix: /down}}\n    service: down\n    percent: 100\n    retries: {{attempts: 2, when: [connect, reset]}}\n  - name: resetting\n    match: {{prefix: /broken}}\n    service: broken\n    percent: 100\n    retries: {{attempts: 2, when: [connect, reset]}}\n",
        head(&legacy.url()),
        urls(&[&r1, &r2])
    );
    let gw = Gateway::start(&yaml).await;
    for (name, path) in [("refusing", "/down/x"), ("resetting", "/broken/x")] {
        let started = std::time::Instant::now();
        let answers = burst(&gw, path, N, 8).await;
        let took = started.elapsed().as_secs_f64();
        let t = tally(&answers);
        assert_eq!(t.get("502 ").copied(), Some(N), "{name}: {t:?}");
        let retries = value(&gw, &retries_series(name)).await;
        // The floor (`min_per_second`, 10 by default) adds at most a second's worth at
        // once and 10 a second after.
        let floor = 10.0 * (1.0 + took);
        eprintln!(
            "{name}: {N} requests in {took:.2}s, {retries} retries (a fifth: {}, the floor: at most {floor:.0})",
            0.2 * N as f64
        );
        // Each request adds 0.2 to the balance, a retry takes 1: never more than a fifth
        // and the floor; and, everything failing, the balance is spent as it comes (the
        // last few requests' shares may be left).
        assert!(
            retries <= 0.2 * N as f64 + floor + 1.0,
            "{name}: {retries} retries"
        );
        assert!(retries >= 0.2 * N as f64 - 5.0, "{name}: {retries} retries");
    }
    // Every attempt on the resetting service was a request it read.
    let retries = value(&gw, &retries_series("resetting")).await;
    assert_eq!((r1.count() + r2.count()) as f64, N as f64 + retries);
    assert_eq!(legacy.count(), 0);
}

// 7. Steady load with a flaky new side.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_flaky_new_side_no_client_sees_an_error_and_compare_sees_them_all() {
    const N: usize = 2000;
    let legacy = Upstream::start("legacy").await;
    let flaky = Flaky::start().await;
    flaky
        .fail_permille
        .store(300, std::sync::atomic::Ordering::Relaxed);
    let yaml = format!(
        "{}services:\n  orders:\n    url: {}\n    timeout: 10s\nroutes:\n  - name: orders-read\n    match: {{prefix: /api/orders}}\n    service: orders\n    percent: 50\n    fallback: {{when: [5xx]}}\n",
        head(&legacy.url()),
        flaky.url()
    );
    let gw = Gateway::start(&yaml).await;
    let started = Instant::now();
    let answers = burst(&gw, "/api/orders/1", N, 16).await;
    let took = started.elapsed();
    let bad: Vec<&Got> = answers.iter().filter(|x| x.status != 200).collect();
    assert!(
        bad.is_empty(),
        "{} client errors: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    let v = compare(&gw).await;
    let r = compared(&v, "orders-read");
    let n = r["new"]["requests"].as_u64().unwrap();
    let e = r["new"]["errors"].as_u64().unwrap();
    let l = r["legacy"]["requests"].as_u64().unwrap();
    let rate = e as f64 / n as f64;
    let tolerance = 4.0 * (0.3 * 0.7 / n as f64).sqrt();
    let share_tolerance = 4.0 * (N as f64 * 0.25).sqrt();
    eprintln!(
        "{N} requests in {took:?}: new side {n} ({e} errors, rate {rate:.4}, 0.3 ± {tolerance:.4}); legacy {l} ({} by the split, {e} fallbacks); by answer {:?}",
        N as u64 - n,
        tally(&answers)
    );
    // The split: Binomial(N, 0.5) within 4 standard deviations.
    assert!(
        (n as f64 - N as f64 / 2.0).abs() <= share_tolerance,
        "new side got {n} of {N}"
    );
    // The new side's failures, all of them: Binomial(n, 0.3) within 4 standard deviations.
    assert!((rate - 0.3).abs() <= tolerance, "error rate {rate}");
    // Legacy served its share and every fallback, without error.
    assert_eq!(l, N as u64 - n + e, "{r}");
    assert_eq!(r["legacy"]["errors"], 0, "{r}");
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, &fallbacks_series("orders-read", "5xx")),
        Some(e as f64),
        "{m}"
    );
    assert_eq!(
        metric(&m, &requests_series("orders-read", "new", "GET", 500)),
        Some(e as f64),
        "{m}"
    );
    assert_eq!(
        metric(&m, &requests_series("orders-read", "legacy", "GET", 200)),
        Some(l as f64),
        "{m}"
    );
    assert_eq!(legacy.count() as u64, l);
}

// The access log, from a real process.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_tells_fallbacks_and_diversions() {
    let legacy = Upstream::start("legacy").await;
    let failing = FaultServer::start("failing").await;
    failing.set(Mode::Status(500));
    let broken = FaultServer::start("broken").await;
    broken.set(Mode::Status(500));
    let fine = FaultServer::start("fine").await;
    let down = dead_addr().await;
    let yaml = format!(
        "{}services:\n  failing:\n    url: {}\n  broken:\n    url: {}\n    breaker: {{failures: 2, window: 10s, cooldown: 60s}}\n  down:\n    url: http://{down}\n    health: {{path: /healthz, interval: 100ms, timeout: 1s, unhealthy_after: 1, healthy_after: 1}}\n  fine:\n    url: {}\nroutes:\n  - name: fb\n    match: {{prefix: /fb}}\n    service: failing\n    percent: 100\n    fallback: {{when: [5xx]}}\n  - name: br\n    match: {{prefix: /br}}\n    service: broken\n    percent: 100\n  - name: uh\n    match: {{prefix: /uh}}\n    service: down\n    percent: 100\n  - name: plain\n    match: {{prefix: /plain}}\n    service: fine\n    percent: 100\n",
        head(&legacy.url()),
        failing.url(),
        broken.url(),
        fine.url()
    );
    let (_dir, file) = routes_file(&yaml);
    let gw = GatewayProcess::spawn(&file, &[]).await;
    let c = client();
    let metrics = async || get_text(format!("http://{}/metrics", gw.admin)).await;
    let get = async |path: &str, id: &str| {
        send(
            c.get(format!("http://{}{path}", gw.public))
                .header("x-request-id", id),
        )
        .await
    };
    eventually("the dead instance is taken out", WAIT, async || {
        metric(&metrics().await, &healthy_series("down", &down.to_string())) == Some(0.0)
    })
    .await;

    let x = get("/fb/1", "rl-fb").await;
    assert_eq!((x.status, x.upstream.as_str()), (200, "legacy"));
    for id in ["rl-br-1", "rl-br-2"] {
        assert_eq!(get("/br/1", id).await.status, 500);
    }
    eventually("the breaker opens", WAIT, async || {
        metric(&metrics().await, &breaker_series("broken")) == Some(1.0)
    })
    .await;
    let x = get("/br/2", "rl-br-open").await;
    assert_eq!((x.status, x.upstream.as_str()), (200, "legacy"));
    let x = get("/uh/1", "rl-uh").await;
    assert_eq!((x.status, x.upstream.as_str()), (200, "legacy"));
    let x = get("/plain/1", "rl-plain").await;
    assert_eq!((x.status, x.upstream.as_str()), (200, "fine"));

    let ids = [
        "rl-fb",
        "rl-br-1",
        "rl-br-2",
        "rl-br-open",
        "rl-uh",
        "rl-plain",
    ];
    let mut found: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let Ok(line) = gw.lines.recv_timeout(Duration::from_millis(200)) else {
            if ids.iter().all(|i| found.contains_key(*i)) {
                break; // all in, and nothing more for 200 ms
            }
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("a log line that is not JSON: {line}"));
        if v["kind"] == "access"
            && let Some(id) = v["request_id"].as_str()
        {
            found.entry(id.to_string()).or_default().push(v);
        }
    }
    for id in ids {
        let lines = found.get(id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            lines.len(),
            1,
            "{id}: one line per client request: {lines:?}"
        );
    }
    let one = |id: &str| found[id][0].clone();

    let fb = one("rl-fb");
    assert_eq!(fb["route"], "fb", "{fb}");
    assert_eq!(fb["side"], "new", "the side the decision chose: {fb}");
    assert_eq!(fb["reason"], "percent", "{fb}");
    assert_eq!(fb["fallback"], "5xx", "{fb}");
    assert_eq!(fb["status"], 200, "what the client got: {fb}");

    let br = one("rl-br-1");
    assert_eq!(br["side"], "new", "{br}");
    assert_eq!(br["status"], 500, "{br}");
    assert!(br["fallback"].is_null(), "{br}");

    let open = one("rl-br-open");
    assert_eq!(open["route"], "br", "{open}");
    assert_eq!(open["side"], "legacy", "{open}");
    assert_eq!(open["reason"], "breaker_open", "{open}");
    assert_eq!(open["status"], 200, "{open}");
    assert_eq!(open["upstream"], legacy.addr.to_string(), "{open}");
    assert!(open["fallback"].is_null(), "{open}");

    let uh = one("rl-uh");
    assert_eq!(uh["route"], "uh", "{uh}");
    assert_eq!(uh["side"], "legacy", "{uh}");
    assert_eq!(uh["reason"], "unhealthy", "{uh}");
    assert_eq!(uh["status"], 200, "{uh}");
    assert_eq!(uh["upstream"], legacy.addr.to_string(), "{uh}");

    let plain = one("rl-plain");
    assert_eq!(plain["side"], "new", "{plain}");
    assert_eq!(plain["reason"], "percent", "{plain}");
    assert_eq!(plain["upstream"], fine.label(), "{plain}");
    assert!(plain["fallback"].is_null(), "{plain}");
}

// Reloads.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_added_by_a_reload_run() {
    let legacy = Upstream::start("legacy").await;
    let orders = FaultServer::start("orders").await;
    let without = format!(
        "{}services:\n  orders:\n    url: {}\n    timeout: 10s\nroutes:\n  - name: orders-read\n    match: {{prefix: /api/orders}}\n    service: orders\n    percent: 100\n",
        head(&legacy.url()),
        orders.url()
    );
    let (_dir, file) = routes_file(&without);
    let gw = GatewayProcess::spawn(&file, &[]).await;
    // The reload compiles its table on a thread of its own: the checks it adds must still
    // run, on the gateway's runtime.
    let with = without.replace(
        "    timeout: 10s\nroutes:",
        "    timeout: 10s\n    health: {path: /healthz, interval: 100ms, timeout: 200ms, unhealthy_after: 2, healthy_after: 1}\nroutes:",
    );
    std::fs::write(&file, with).unwrap();
    let c = client();
    let reloaded = c
        .post(format!("http://{}/admin/reload", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(reloaded.status(), 200);
    orders.set_health(Some(503));
    let series = healthy_series("orders", &orders.addr.to_string());
    eventually(
        "the reloaded checks take the instance out",
        WAIT,
        async || {
            let m = get_text(format!("http://{}/metrics", gw.admin)).await;
            metric(&m, &series) == Some(0.0)
        },
    )
    .await;
    assert!(orders.health_count() >= 2);
    // Its share now goes to legacy.
    let x = send(c.get(format!("http://{}/api/orders/1", gw.public))).await;
    assert_eq!((x.status, x.upstream.as_str()), (200, "legacy"));
}

// 8. Retries and breakers as Linkerd and Resilience4j have them.

/// A quiet route retries its first failures: the budget's floor (`min_per_second`) allows
/// retries that no earlier request saved up; with the floor off, it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_route_retries_its_first_reset() {
    for (floor, retried) in [("", true), (", min_per_second: 0", false)] {
        let legacy = Upstream::start("legacy").await;
        let a = FaultServer::start("a").await;
        let b = FaultServer::start("b").await;
        a.set(Mode::Reset);
        let gw = two_instance_gateway(
            &legacy,
            &a,
            &b,
            &format!("{{attempts: 2, when: [reset]{floor}}}"),
        )
        .await;
        // Two requests on a gateway that just started: round robin sends one of them to a
        // first.
        let c = client();
        let mut statuses = Vec::new();
        for i in 0..2 {
            statuses.push(
                send(c.get(gw.url(&format!("/api/orders/{i}"))))
                    .await
                    .status,
            );
        }
        assert!(a.count() >= 1, "a was never tried");
        let retries = value(&gw, &retries_series("orders-read")).await;
        if retried {
            assert_eq!(statuses, [200, 200], "{floor}");
            assert!(retries >= 1.0, "{retries}");
        } else {
            assert!(statuses.contains(&502), "{statuses:?}");
            assert_eq!(retries, 0.0);
        }
    }
}

/// A rate breaker means the same at any traffic: a 5% error rate on a busy service trips a
/// count of 5 failures but not a rate of 50%; a quiet service failing every request trips
/// the rate, never the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_breaker_trips_on_the_share_of_failures_not_their_number() {
    let legacy = Upstream::start("legacy").await;
    let busy = Flaky::start().await;
    busy.fail_permille
        .store(50, std::sync::atomic::Ordering::Relaxed);
    let quiet = Flaky::start().await;
    quiet
        .fail_permille
        .store(1000, std::sync::atomic::Ordering::Relaxed);
    let service = |name: &str, url: &str, breaker: &str| {
        format!("  {name}:\n    url: {url}\n    breaker: {breaker}\n")
    };
    let route = |name: &str| {
        format!(
            "  - name: {name}\n    match: {{prefix: /{name}}}\n    service: {name}\n    percent: 100\n"
        )
    };
    let yaml = format!(
        "{}services:\n{}{}{}{}routes:\n{}{}{}{}",
        head(&legacy.url()),
        service(
            "busy-counted",
            &busy.url(),
            "{failures: 5, window: 10s, cooldown: 60s}"
        ),
        service(
            "busy-rated",
            &busy.url(),
            "{failure_rate: 50%, min_requests: 20, window: 10s, cooldown: 60s}"
        ),
        service(
            "quiet-counted",
            &quiet.url(),
            "{failures: 5, window: 2s, cooldown: 60s}"
        ),
        service(
            "quiet-rated",
            &quiet.url(),
            "{failure_rate: 50%, min_requests: 3, window: 2s, cooldown: 60s}"
        ),
        route("busy-counted"),
        route("busy-rated"),
        route("quiet-counted"),
        route("quiet-rated"),
    );
    let gw = Gateway::start(&yaml).await;
    // Busy: 400 requests at 5% errors (about 20 failures; fewer than 5 has a chance of
    // about 1e-5).
    for name in ["busy-counted", "busy-rated"] {
        burst(&gw, &format!("/{name}/x"), 400, 8).await;
    }
    assert_eq!(value(&gw, &breaker_series("busy-counted")).await, 1.0);
    assert_eq!(value(&gw, &breaker_series("busy-rated")).await, 0.0);
    // Quiet: one request every 700 ms, every one failing: at most 3 in a 2 s window.
    let c = client();
    for i in 0..4 {
        for name in ["quiet-counted", "quiet-rated"] {
            send(c.get(gw.url(&format!("/{name}/{i}")))).await;
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert_eq!(value(&gw, &breaker_series("quiet-counted")).await, 0.0);
    assert_eq!(value(&gw, &breaker_series("quiet-rated")).await, 1.0);
    // The rate breaker's share goes to legacy.
    let x = send(c.get(gw.url("/quiet-rated/after"))).await;
    assert_eq!((x.status, x.upstream.as_str()), (200, "legacy"), "{x:?}");
}
