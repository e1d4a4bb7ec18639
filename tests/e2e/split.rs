//! Side choice end to end (docs/routing.md) and the metrics that count it (docs/metrics.md): random splits,
//! fixed percentages, sticky cohorts by header, cookie, query parameter and client IP, the
//! override header, and exact per-route/side/method/code counters after known traffic.
//!
//! Sticky keys are random per run (no fixed seeds); every assertion that depends on them is
//! sized so that a false failure is far below one in a million, and failure messages name the
//! keys involved so a failing run can be replayed by hand.

use crate::support;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use support::*;

/// Requests in flight at once when firing many requests.
const CONCURRENCY: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    Legacy,
    New,
}

/// The side that answered, from the recording upstream's `x-upstream` response header.
fn side_of(resp: &reqwest::Response) -> Side {
    let who = resp
        .headers()
        .get("x-upstream")
        .unwrap_or_else(|| panic!("no x-upstream on a {} answer", resp.status()))
        .to_str()
        .unwrap();
    match who {
        "legacy" => Side::Legacy,
        "orders" | "billing" => Side::New,
        other => panic!("unexpected upstream {other}"),
    }
}

/// Sends `n` requests, `CONCURRENCY` at a time, each built by `build(i)`; every answer must
/// be `200`. Returns the side that served request `i` at index `i`.
async fn send_all<F>(n: usize, build: F) -> Vec<Side>
where
    F: Fn(usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let build = Arc::new(build);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(CONCURRENCY);
    for _ in 0..CONCURRENCY {
        let (build, next) = (build.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let resp = build(i).send().await.unwrap();
                assert_eq!(resp.status(), 200, "request {i}");
                let side = side_of(&resp);
                resp.bytes().await.unwrap();
                out.push((i, side));
            }
            out
        }));
    }
    let mut sides = vec![None; n];
    for t in tasks {
        for (i, s) in t.await.unwrap() {
            sides[i] = Some(s);
        }
    }
    sides
        .into_iter()
        .map(|s| s.expect("every request answered"))
        .collect()
}

/// The acceptable range of new-side counts for `n` independent draws at probability `p`.
///
/// The count of requests sent to new is Binomial(n, p): mean `n p`, standard deviation
/// `sigma = sqrt(n p (1 - p))`. For the sizes used here (n p and n (1 - p) in the hundreds or
/// more) it is very close to normal, and a normal variable lies more than 5 sigma from its
/// mean with probability 2 * (1 - Phi(5)) ~= 5.7e-7, so a correct gateway fails this check
/// less than once in a million runs, while a wrong percentage (say 20 or 30 instead of 25 at
/// n = 20,000: a shift of 16 sigma) cannot pass.
fn binomial_range(n: usize, p: f64) -> (f64, f64) {
    let n = n as f64;
    let mean = n * p;
    let sigma = (n * p * (1.0 - p)).sqrt();
    (mean - 5.0 * sigma, mean + 5.0 * sigma)
}

/// docs/routing.md: `bucket = xxh3_64(cohort + "\0" + key) % 10000`; new when
/// `bucket < percent * 100`.
fn expected_side(cohort: &str, key: &str, percent: f64) -> Side {
    let bucket = xxhash_rust::xxh3::xxh3_64(format!("{cohort}\0{key}").as_bytes()) % 10_000;
    if (bucket as f64) < percent * 100.0 {
        Side::New
    } else {
        Side::Legacy
    }
}

/// `n` distinct random keys, fresh each run.
fn random_keys(prefix: &str, n: usize) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut keys = Vec::with_capacity(n);
    while keys.len() < n {
        let k = format!("{prefix}-{:016x}", fastrand::u64(..));
        if seen.insert(k.clone()) {
            keys.push(k);
        }
    }
    keys
}

/// A routes file: `config_head` with the given services, `extra` top-level keys, `routes`.
fn routes_file(legacy: &Upstream, services: &[&Upstream], extra: &str, routes: &str) -> String {
    let urls: Vec<(String, String)> = services
        .iter()
        .map(|u| (u.name.to_string(), u.url()))
        .collect();
    let pairs: Vec<(&str, &str)> = urls.iter().map(|(n, u)| (n.as_str(), u.as_str())).collect();
    format!(
        "{}{extra}routes:\n{routes}",
        config_head(&legacy.url(), &pairs)
    )
}

/// One route on an exact path; `more` holds further route keys, each line indented 4.
fn route(name: &str, path: &str, service: &str, percent: &str, more: &str) -> String {
    format!(
        "  - name: {name}\n    match: {{path: {path}}}\n    service: {service}\n    percent: {percent}\n{more}"
    )
}

fn requests_series(route: &str, side: &str, method: &str, code: u16) -> String {
    format!(
        r#"strangler_requests_total{{code="{code}",method="{method}",route="{route}",side="{side}"}}"#
    )
}

fn count(m: &str, route: &str, side: &str) -> f64 {
    metric(m, &requests_series(route, side, "GET", 200)).unwrap_or(0.0)
}

/// Asserts that every key got one side on all its requests; returns the side per key.
fn one_side_per_key(keys: &[String], sides: &[Side], what: &str) -> Vec<Side> {
    let mut per_key: Vec<Option<Side>> = vec![None; keys.len()];
    for (i, s) in sides.iter().enumerate() {
        let k = i % keys.len();
        match per_key[k] {
            None => per_key[k] = Some(*s),
            Some(first) => assert_eq!(
                first, *s,
                "{what}: key {:?} got {first:?} and then {s:?} (request {i})",
                keys[k]
            ),
        }
    }
    per_key.into_iter().map(Option::unwrap).collect()
}

fn assert_formula(cohort: &str, percent: f64, keys: &[String], sides: &[Side], what: &str) {
    for (k, s) in keys.iter().zip(sides) {
        assert_eq!(
            *s,
            expected_side(cohort, k, percent),
            "{what}: key {k:?} (cohort {cohort:?}, percent {percent}) is on {s:?}, the bucket formula says otherwise"
        );
    }
}

fn assert_both_sides(sides: &[Side], what: &str) {
    assert!(
        sides.contains(&Side::New) && sides.contains(&Side::Legacy),
        "{what}: expected keys on both sides, got {sides:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Random split
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_25_percent_without_key_is_binomial_and_metrics_agree() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    // A file-wide sticky header the requests do not carry: the random draw (the last step).
    let yaml = routes_file(
        &legacy,
        &[&orders],
        "sticky: {header: x-user-id}\n",
        &route("orders-read", "/api/orders", "orders", "25", ""),
    );
    let gw = Gateway::start(&yaml).await;

    const N: usize = 20_000;
    let client = client();
    let url = gw.url("/api/orders");
    let sides = send_all(N, move |_| client.get(&url)).await;

    let new = orders.count();
    let old = legacy.count();
    assert_eq!(new + old, N, "every request reached exactly one upstream");
    let answered_new = sides.iter().filter(|s| **s == Side::New).count();
    assert_eq!(answered_new, new, "answers and upstream records agree");

    let (lo, hi) = binomial_range(N, 0.25);
    assert!(
        (lo..=hi).contains(&(new as f64)),
        "{new} of {N} on new at 25%: outside [{lo:.0}, {hi:.0}] (5 sigma)"
    );

    let m = gw.metrics().await;
    assert_eq!(count(&m, "orders-read", "new"), new as f64, "{m}");
    assert_eq!(count(&m, "orders-read", "legacy"), old as f64, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn percent_0_and_100_are_exact() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let routes =
        route("none", "/none", "orders", "0", "") + &route("all", "/all", "orders", "100", "");
    let yaml = routes_file(
        &legacy,
        &[&orders],
        "sticky: {header: x-user-id}\n",
        &routes,
    );
    let gw = Gateway::start(&yaml).await;

    // Half the requests carry a sticky key: it must not matter at 0 or 100.
    const N: usize = 2_000;
    let keys = random_keys("user", 50);
    let client = client();
    let (none, all) = (gw.url("/none"), gw.url("/all"));
    let sides = send_all(2 * N, move |i| {
        let r = client.get(if i % 2 == 0 { &none } else { &all });
        if i % 4 < 2 {
            r.header("x-user-id", &keys[i % keys.len()])
        } else {
            r
        }
    })
    .await;

    for (i, s) in sides.iter().enumerate() {
        let want = if i % 2 == 0 { Side::Legacy } else { Side::New };
        assert_eq!(*s, want, "request {i}");
    }
    let seen = |u: &Upstream, path: &str| {
        u.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.target == path)
            .count()
    };
    assert_eq!(seen(&orders, "/none"), 0, "percent 0 sent requests to new");
    assert_eq!(seen(&legacy, "/none"), N);
    assert_eq!(seen(&orders, "/all"), N);
    assert_eq!(
        seen(&legacy, "/all"),
        0,
        "percent 100 sent requests to legacy"
    );

    let m = gw.metrics().await;
    assert_eq!(count(&m, "none", "new"), 0.0, "{m}");
    assert_eq!(count(&m, "none", "legacy"), N as f64, "{m}");
    assert_eq!(count(&m, "all", "new"), N as f64, "{m}");
    assert_eq!(count(&m, "all", "legacy"), 0.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fractional_percent_splits_within_tolerance() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let yaml = routes_file(
        &legacy,
        &[&orders],
        "",
        &route("eighth", "/eighth", "orders", "12.5", ""),
    );
    let gw = Gateway::start(&yaml).await;

    // n p = 1000, sigma = sqrt(8000 * 0.125 * 0.875) ~= 29.6: the 5-sigma band is +-148,
    // which excludes 12 or 13 percent (960 / 1040 are inside, 10% = 800 and 15% = 1200 not).
    const N: usize = 8_000;
    let client = client();
    let url = gw.url("/eighth");
    let sides = send_all(N, move |_| client.get(&url)).await;
    let new = orders.count();
    assert_eq!(new + legacy.count(), N);
    assert_eq!(sides.iter().filter(|s| **s == Side::New).count(), new);
    let (lo, hi) = binomial_range(N, 0.125);
    assert!(
        (lo..=hi).contains(&(new as f64)),
        "{new} of {N} on new at 12.5%: outside [{lo:.0}, {hi:.0}] (5 sigma)"
    );
    let m = gw.metrics().await;
    assert_eq!(count(&m, "eighth", "new"), new as f64, "{m}");
    assert_eq!(count(&m, "eighth", "legacy"), (N - new) as f64, "{m}");
}

// ---------------------------------------------------------------------------------------
// Sticky cohorts
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sticky_header_key_always_gets_one_side() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let yaml = routes_file(
        &legacy,
        &[&orders],
        "sticky: {header: x-user-id}\n",
        &route("orders-read", "/api/orders", "orders", "50", ""),
    );
    let gw = Gateway::start(&yaml).await;

    // 40 keys x 50 requests, interleaved so each key's requests spread over connections.
    let keys = random_keys("user", 40);
    let client = client();
    let url = gw.url("/api/orders");
    let ks = keys.clone();
    let sides = send_all(40 * 50, move |i| {
        client.get(&url).header("x-user-id", &ks[i % ks.len()])
    })
    .await;
    let per_key = one_side_per_key(&keys, &sides, "header key");
    // Both sides occur unless all 40 random keys fell on one side: 2 * 0.5^40 ~= 2e-12.
    assert_both_sides(&per_key, "header key at 50%");
    assert_formula("orders", 50.0, &keys, &per_key, "header key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raising_the_percent_only_moves_keys_to_new() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let file = |percent: &str| {
        routes_file(
            &legacy,
            &[&orders],
            "sticky: {header: x-user-id}\n",
            &route("orders-read", "/api/orders", "orders", percent, ""),
        )
    };
    // Two gateways on the same text (two replicas, or one before and after a restart) and a
    // third whose text differs only in the percent.
    let at10 = Gateway::start(&file("10")).await;
    let at10_again = Gateway::start(&file("10")).await;
    let at30 = Gateway::start(&file("30")).await;

    let keys = random_keys("user", 300);
    let mut results = Vec::new();
    for gw in [&at10, &at10_again, &at30] {
        let client = client();
        let url = gw.url("/api/orders");
        let ks = keys.clone();
        // Two requests per key: each key also has to be stable within one gateway.
        let sides = send_all(2 * keys.len(), move |i| {
            client.get(&url).header("x-user-id", &ks[i % ks.len()])
        })
        .await;
        results.push(one_side_per_key(&keys, &sides, "header key"));
    }
    let (s10, s10_again, s30) = (&results[0], &results[1], &results[2]);

    assert_eq!(s10, s10_again, "two gateways on the same file disagree");
    for (k, (a, b)) in keys.iter().zip(s10.iter().zip(s30)) {
        assert!(
            !(*a == Side::New && *b == Side::Legacy),
            "key {k:?} is on new at 10% but back on legacy at 30%"
        );
    }
    let new10 = s10.iter().filter(|s| **s == Side::New).count();
    let new30 = s30.iter().filter(|s| **s == Side::New).count();
    // With 300 random keys: P(no key at 10%) = 0.9^300 ~= 2e-14; P(no key moves, i.e. none in
    // buckets 1000..3000) = 0.8^300 ~= 1e-29.
    assert!(new10 > 0, "no key on new at 10%");
    assert!(
        new30 > new10,
        "raising 10% -> 30% moved no key ({new10} vs {new30})"
    );
    assert_formula("orders", 10.0, &keys, s10, "at 10%");
    assert_formula("orders", 30.0, &keys, s30, "at 30%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routes_of_one_cohort_agree_and_other_cohorts_differ() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let billing = Upstream::start("billing").await;
    let routes = [
        // Explicit cohort, different services.
        route("a", "/a", "orders", "50", "    cohort: shared\n"),
        route("b", "/b", "billing", "50", "    cohort: shared\n"),
        // Another cohort, same service as `a`.
        route("c", "/c", "orders", "50", "    cohort: other\n"),
        // The default cohort is the service name: `d` (orders, no cohort) and `e` (billing,
        // cohort orders) are one cohort.
        route("d", "/d", "orders", "50", ""),
        route("e", "/e", "billing", "50", "    cohort: orders\n"),
    ]
    .concat();
    let yaml = routes_file(
        &legacy,
        &[&orders, &billing],
        "sticky: {header: x-user-id}\n",
        &routes,
    );
    let gw = Gateway::start(&yaml).await;

    let keys = random_keys("user", 200);
    let mut by_route = BTreeMap::new();
    for path in ["/a", "/b", "/c", "/d", "/e"] {
        let client = client();
        let url = gw.url(path);
        let ks = keys.clone();
        let sides = send_all(keys.len(), move |i| {
            client.get(&url).header("x-user-id", &ks[i])
        })
        .await;
        by_route.insert(path, sides);
    }
    let (a, b, c, d, e) = (
        &by_route["/a"],
        &by_route["/b"],
        &by_route["/c"],
        &by_route["/d"],
        &by_route["/e"],
    );
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            a[i], b[i],
            "cohort `shared`: routes a and b disagree on {k:?}"
        );
        assert_eq!(
            d[i], e[i],
            "cohort `orders`: routes d and e disagree on {k:?}"
        );
    }
    // Independent cohorts at 50% agree on all 200 keys with probability 0.5^200.
    assert!(
        a.iter().zip(c).any(|(x, y)| x != y),
        "cohorts `shared` and `other` agree on every key"
    );
    // Non-vacuous: each cohort has keys on both sides (failure 2 * 0.5^200 per cohort).
    assert_both_sides(a, "cohort shared");
    assert_both_sides(d, "cohort orders");
    assert_formula("shared", 50.0, &keys, a, "route a");
    assert_formula("other", 50.0, &keys, c, "route c");
    assert_formula("orders", 50.0, &keys, d, "route d (default cohort)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bucket_formula_decides_the_side() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let yaml = routes_file(
        &legacy,
        &[&orders],
        "sticky: {header: x-user-id}\n",
        &route(
            "checkout",
            "/checkout",
            "orders",
            "37.25",
            "    cohort: checkout-v2\n",
        ),
    );
    let gw = Gateway::start(&yaml).await;

    let mut keys = random_keys("user", 400);
    // A few keys of other shapes: plain digits, an e-mail, a UUID-like key.
    keys.extend(
        [
            "42",
            "alice@example.com",
            "0b9c2f1e-5d7a-4c3b-9f00-1a2b3c4d5e6f",
        ]
        .map(String::from),
    );
    let client = client();
    let url = gw.url("/checkout");
    let ks = keys.clone();
    let sides = send_all(keys.len(), move |i| {
        client.get(&url).header("x-user-id", &ks[i])
    })
    .await;
    assert_formula("checkout-v2", 37.25, &keys, &sides, "header key");
    assert_both_sides(&sides, "at 37.25%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sticky_cookie_key_gets_a_stable_side() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    // The route's cookie overrides the file-wide header, which varies on every request.
    let yaml = routes_file(
        &legacy,
        &[&orders],
        "sticky: {header: x-user-id}\n",
        &route(
            "cart",
            "/cart",
            "orders",
            "50",
            "    sticky: {cookie: session}\n",
        ),
    );
    let gw = Gateway::start(&yaml).await;

    let keys = random_keys("sess", 40);
    let client = client();
    let url = gw.url("/cart");
    let ks = keys.clone();
    let sides = send_all(keys.len() * 10, move |i| {
        client
            .get(&url)
            .header(
                "cookie",
                format!("theme=dark; session={}; lang=en", ks[i % ks.len()]),
            )
            .header("x-user-id", format!("noise-{i}"))
    })
    .await;
    let per_key = one_side_per_key(&keys, &sides, "cookie key");
    assert_both_sides(&per_key, "cookie key at 50%");
    assert_formula("orders", 50.0, &keys, &per_key, "cookie key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sticky_query_key_gets_a_stable_side() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let yaml = routes_file(
        &legacy,
        &[&orders],
        "sticky: {header: x-user-id}\n",
        &route(
            "search",
            "/search",
            "orders",
            "50",
            "    sticky: {query: uid}\n",
        ),
    );
    let gw = Gateway::start(&yaml).await;

    let keys = random_keys("uid", 40);
    let client = client();
    let url = gw.url("/search");
    let ks = keys.clone();
    let sides = send_all(keys.len() * 10, move |i| {
        client
            .get(format!("{url}?q=shoes&uid={}&page={i}", ks[i % ks.len()]))
            .header("x-user-id", format!("noise-{i}"))
    })
    .await;
    let per_key = one_side_per_key(&keys, &sides, "query key");
    assert_both_sides(&per_key, "query key at 50%");
    assert_formula("orders", 50.0, &keys, &per_key, "query key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sticky_client_ip_of_the_peer_gets_a_stable_side() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    // No trusted proxies: the key is the TCP peer; X-Forwarded-For from clients is ignored.
    let yaml = routes_file(
        &legacy,
        &[&orders],
        "sticky: {header: x-user-id}\n",
        &route(
            "home",
            "/home",
            "orders",
            "50",
            "    sticky: {client_ip: true}\n",
        ),
    );
    let gw = Gateway::start(&yaml).await;

    // Distinct loopback source addresses (all of 127.0.0.0/8 is local on Linux).
    let mut ips: Vec<IpAddr> = Vec::new();
    while ips.len() < 24 {
        let ip = IpAddr::from([
            127,
            fastrand::u8(..),
            fastrand::u8(..),
            fastrand::u8(1..255),
        ]);
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    let keys: Vec<String> = ips.iter().map(ToString::to_string).collect();
    let clients: Vec<reqwest::Client> = ips
        .iter()
        .map(|ip| {
            reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .local_address(*ip)
                .build()
                .unwrap()
        })
        .collect();
    let url = gw.url("/home");
    let sides = send_all(ips.len() * 10, move |i| {
        clients[i % clients.len()]
            .get(&url)
            .header("x-forwarded-for", format!("198.51.100.{}", i % 250))
            .header("x-user-id", format!("noise-{i}"))
    })
    .await;
    let per_key = one_side_per_key(&keys, &sides, "client ip");
    // 2 * 0.5^24 ~= 1.2e-7.
    assert_both_sides(&per_key, "client ip at 50%");
    assert_formula("orders", 50.0, &keys, &per_key, "client ip");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sticky_client_ip_behind_a_trusted_proxy_gets_a_stable_side() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    // The test client is a trusted proxy: the key is the address it forwards for.
    let yaml = routes_file(
        &legacy,
        &[&orders],
        "trusted_proxies: [127.0.0.0/8]\n",
        &route(
            "home",
            "/home",
            "orders",
            "50",
            "    sticky: {client_ip: true}\n",
        ),
    );
    let gw = Gateway::start(&yaml).await;

    let mut keys: Vec<String> = Vec::new();
    while keys.len() < 40 {
        let ip = format!("203.0.{}.{}", fastrand::u8(..), fastrand::u8(1..255));
        if !keys.contains(&ip) {
            keys.push(ip);
        }
    }
    let client = client();
    let url = gw.url("/home");
    let ks = keys.clone();
    let sides = send_all(keys.len() * 10, move |i| {
        client
            .get(&url)
            .header("x-forwarded-for", &ks[i % ks.len()])
    })
    .await;
    let per_key = one_side_per_key(&keys, &sides, "forwarded client ip");
    assert_both_sides(&per_key, "forwarded client ip at 50%");
    assert_formula("orders", 50.0, &keys, &per_key, "forwarded client ip");
}

// ---------------------------------------------------------------------------------------
// Override header
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_header_forces_a_side_and_other_values_are_ignored() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let routes = route("none", "/none", "orders", "0", "")
        + &route("all", "/all", "orders", "100", "")
        + &route("half", "/half", "orders", "50", "");
    let yaml = routes_file(
        &legacy,
        &[&orders],
        "sticky: {header: x-user-id}\noverride: {header: x-strangler-side}\n",
        &routes,
    );
    let gw = Gateway::start(&yaml).await;

    // A key the bucket puts on legacy at 50%, and one it puts on new.
    let mut on_legacy = None;
    let mut on_new = None;
    while on_legacy.is_none() || on_new.is_none() {
        let k = random_keys("user", 1).pop().unwrap();
        match expected_side("orders", &k, 50.0) {
            Side::Legacy => on_legacy = Some(k),
            Side::New => on_new = Some(k),
        }
    }
    let (on_legacy, on_new) = (on_legacy.unwrap(), on_new.unwrap());

    let c = client();
    let get = |path: &str, key: &str, forced: Option<&str>| {
        let mut r = c.get(gw.url(path)).header("x-user-id", key);
        if let Some(v) = forced {
            r = r.header("x-strangler-side", v);
        }
        let what = format!("{path} key {key:?} override {forced:?}");
        async move {
            let resp = r.send().await.unwrap();
            assert_eq!(resp.status(), 200, "{what}");
            (side_of(&resp), what)
        }
    };

    // (path, key, side without override)
    let cases = [
        ("/none", on_new.as_str(), Side::Legacy),
        ("/none", on_legacy.as_str(), Side::Legacy),
        ("/all", on_legacy.as_str(), Side::New),
        ("/all", on_new.as_str(), Side::New),
        ("/half", on_legacy.as_str(), Side::Legacy),
        ("/half", on_new.as_str(), Side::New),
    ];
    for (path, key, natural) in cases {
        let (s, what) = get(path, key, None).await;
        assert_eq!(s, natural, "{what}");
        let (s, what) = get(path, key, Some("new")).await;
        assert_eq!(s, Side::New, "{what}");
        let (s, what) = get(path, key, Some("legacy")).await;
        assert_eq!(s, Side::Legacy, "{what}");
        for ignored in ["", "both", "newer", "old", "legacy-v1", "0", "1", "true"] {
            let (s, what) = get(path, key, Some(ignored)).await;
            assert_eq!(
                s, natural,
                "{what}: an unknown override value must be ignored"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Metrics after known traffic
// ---------------------------------------------------------------------------------------

/// One parsed sample of Prometheus text: name, labels, value.
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (head, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, mut rest) = match head.split_once('{') {
            Some((n, r)) => (n, r.strip_suffix('}').expect("closing brace")),
            None => (head, ""),
        };
        let mut labels = BTreeMap::new();
        while !rest.is_empty() {
            let (k, r) = rest.split_once("=\"").expect("label name");
            let mut v = String::new();
            let mut chars = r.char_indices();
            let end = loop {
                match chars.next().expect("closing quote") {
                    (_, '\\') => match chars.next().expect("escape").1 {
                        'n' => v.push('\n'),
                        c => v.push(c),
                    },
                    (i, '"') => break i,
                    (_, c) => v.push(c),
                }
            };
            labels.insert(k.to_string(), v);
            rest = r[end + 1..].trim_start_matches(',');
        }
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

fn config_hash_label(m: &str) -> Vec<(String, f64)> {
    samples(m)
        .into_iter()
        .filter(|s| s.name == "strangler_config_info")
        .map(|s| (s.labels["hash"].clone(), s.value))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic_exactly() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let billing = Upstream::start("billing").await;
    let routes = [
        "  - name: orders-read\n",
        "    match: {prefix: /api/orders, methods: [GET]}\n",
        "    service: orders\n",
        "    percent: 5\n",
        "  - name: orders-write\n",
        "    match: {prefix: /api/orders, methods: [POST]}\n",
        "    service: orders\n",
        "    percent: 0\n",
        "  - name: billing-read\n",
        "    match: {prefix: /api/billing}\n",
        "    service: billing\n",
        "    percent: 12.5\n",
    ]
    .concat();
    let yaml = routes_file(
        &legacy,
        &[&orders, &billing],
        "sticky: {header: x-user-id}\noverride: {header: x-strangler-side}\n",
        &routes,
    );
    let gw = Gateway::start(&yaml).await;

    // Values that must never become label values.
    let tag = format!("{:016x}", fastrand::u64(..));
    let user_key = format!("user-{tag}");
    let request_id = format!("rid-{tag}");
    let cookie = format!("sess-{tag}");
    let order_id = format!("{}", fastrand::u64(1_000_000..u64::MAX));
    let secrets = [
        user_key.clone(),
        request_id.clone(),
        cookie.clone(),
        order_id.clone(),
        tag.clone(),
        "127.0.0.1".to_string(),
        "/api/orders".to_string(),
        "/elsewhere".to_string(),
    ];

    let c = client();
    // 7 GETs on orders-read, forced to new.
    for i in 0..7 {
        let resp = c
            .get(gw.url(&format!("/api/orders/{order_id}?token={tag}")))
            .header("x-user-id", &user_key)
            .header("x-request-id", format!("{request_id}-{i}"))
            .header("cookie", format!("session={cookie}"))
            .header("x-strangler-side", "new")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "orders");
    }
    // 3 POSTs on orders-write (percent 0: legacy), answered 201 by the upstream.
    for i in 0..3 {
        let resp = c
            .post(gw.url("/api/orders"))
            .header("x-user-id", &user_key)
            .header("x-request-id", format!("{request_id}-p{i}"))
            .header("x-test-status", "201")
            .body("{\"item\":1}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        assert_eq!(resp.text().await.unwrap(), "legacy");
    }
    // 2 requests no route takes: `default`, legacy.
    for method in [reqwest::Method::GET, reqwest::Method::PUT] {
        let resp = c
            .request(method, gw.url(&format!("/elsewhere/{order_id}")))
            .header("x-user-id", &user_key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "legacy");
    }

    let m = gw.metrics().await;
    let all = samples(&m);

    // Requests: exactly these series, with exactly these counts.
    let got: BTreeMap<(String, String, String, String), f64> = all
        .iter()
        .filter(|s| s.name == "strangler_requests_total")
        .map(|s| {
            let l = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
            ((l("route"), l("side"), l("method"), l("code")), s.value)
        })
        .filter(|(_, v)| *v != 0.0)
        .collect();
    let want: BTreeMap<(String, String, String, String), f64> = [
        (("orders-read", "new", "GET", "200"), 7.0),
        (("orders-write", "legacy", "POST", "201"), 3.0),
        (("default", "legacy", "GET", "200"), 1.0),
        (("default", "legacy", "PUT", "200"), 1.0),
    ]
    .into_iter()
    .map(|((r, s, me, c), v)| {
        (
            (r.to_string(), s.to_string(), me.to_string(), c.to_string()),
            v,
        )
    })
    .collect();
    assert_eq!(got, want, "{m}");
    assert_eq!(
        metric(&m, &requests_series("orders-read", "new", "GET", 200)),
        Some(7.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, &requests_series("orders-write", "legacy", "POST", 201)),
        Some(3.0),
        "{m}"
    );

    // Durations: one observation per request, per route and side.
    let duration_count = |route: &str, side: &str| {
        metric(
            &m,
            &format!(
                r#"strangler_request_duration_seconds_count{{route="{route}",side="{side}"}}"#
            ),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(duration_count("orders-read", "new"), 7.0, "{m}");
    assert_eq!(duration_count("orders-read", "legacy"), 0.0, "{m}");
    assert_eq!(duration_count("orders-write", "legacy"), 3.0, "{m}");
    assert_eq!(duration_count("orders-write", "new"), 0.0, "{m}");
    assert_eq!(duration_count("default", "legacy"), 2.0, "{m}");
    assert_eq!(duration_count("billing-read", "new"), 0.0, "{m}");
    assert_eq!(duration_count("billing-read", "legacy"), 0.0, "{m}");
    let total_count: f64 = all
        .iter()
        .filter(|s| s.name == "strangler_request_duration_seconds_count")
        .map(|s| s.value)
        .sum();
    assert_eq!(total_count, 12.0, "{m}");
    let sum = metric(
        &m,
        r#"strangler_request_duration_seconds_sum{route="orders-read",side="new"}"#,
    )
    .unwrap_or(0.0);
    assert!(sum > 0.0, "durations are measured: {m}");

    // The percentage in force, per route.
    for (route, percent) in [
        ("orders-read", 5.0),
        ("orders-write", 0.0),
        ("billing-read", 12.5),
    ] {
        assert_eq!(
            metric(
                &m,
                &format!(r#"strangler_route_percent{{route="{route}"}}"#)
            ),
            Some(percent),
            "percent of {route}: {m}"
        );
    }

    // The config in force: exactly one series, value 1.
    let info = config_hash_label(&m);
    assert_eq!(info.len(), 1, "{m}");
    let (hash, v) = &info[0];
    assert_eq!(*v, 1.0, "{m}");
    assert!(!hash.is_empty());
    assert_eq!(
        metric(&m, &format!(r#"strangler_config_info{{hash="{hash}"}}"#)),
        Some(1.0)
    );
    // Replicas on the same file show the same hash; another file shows another.
    let replica = Gateway::start(&yaml).await;
    assert_eq!(config_hash_label(&replica.metrics().await), info);
    let other = Gateway::start(&yaml.replace("percent: 12.5", "percent: 13")).await;
    let other_info = config_hash_label(&other.metrics().await);
    assert_eq!(other_info.len(), 1);
    assert_ne!(other_info[0].0, *hash, "a different file has the same hash");
    // The admin API reports the same hash as the metric.
    let routes_json: serde_json::Value = c
        .get(gw.admin_url("/admin/routes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    if let Some(h) = routes_json.get("config_hash") {
        assert_eq!(h.as_str(), Some(hash.as_str()), "{routes_json}");
    }

    // No label holds a user key, IP, path or request id; known labels hold known values.
    let routes_known = ["orders-read", "orders-write", "billing-read", "default"];
    for s in all.iter().filter(|s| s.name.starts_with("strangler_")) {
        for (k, v) in &s.labels {
            for secret in &secrets {
                assert!(
                    !v.contains(secret.as_str()),
                    "label {k}={v:?} of {} holds {secret:?}",
                    s.name
                );
            }
            assert!(
                v.parse::<IpAddr>().is_err(),
                "label {k}={v:?} of {} is an IP",
                s.name
            );
            let ok = match k.as_str() {
                "route" => routes_known.contains(&v.as_str()),
                "side" => v == "legacy" || v == "new",
                "method" => [
                    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
                    "OTHER",
                ]
                .contains(&v.as_str()),
                "code" => v.len() == 3 && v.bytes().all(|b| b.is_ascii_digit()),
                "kind" => ["connect", "timeout", "reset", "protocol"].contains(&v.as_str()),
                "result" => v == "ok" || v == "error",
                "hash" => v == hash,
                "le" => v == "+Inf" || v.parse::<f64>().is_ok(),
                _ => true,
            };
            assert!(ok, "label {k}={v:?} of {} is not an allowed value", s.name);
        }
    }
}
