//! Side choice (docs/routing.md) and the metrics that count it (docs/metrics.md): random
//! splits, fixed percentages, sticky cohorts by header, cookie, query parameter and client
//! IP, the override header, as tables of the decision (`RouteTable::decide`, which the
//! gateway calls for every request, on requests read as the gateway reads them:
//! `support::table`); then, end to end, that a gateway serves each request from the side
//! the table decides, and exact per-route/side/method/code counters after known traffic.
//!
//! Sticky keys are random per run (no fixed seeds); every assertion that depends on them is
//! sized so that a false failure is far below one in a million, and failure messages name the
//! keys involved so a failing run can be replayed by hand.

use crate::support;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use support::table::{LOOPBACK, Table};
use support::*;

/// Requests in flight at once when firing many requests.
const CONCURRENCY: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

/// The table of a routes file as `routes_file` writes it, with nothing behind its URLs.
fn table(services: &[&str], extra: &str, routes: &str) -> Table {
    let nowhere = "http://127.0.0.1:9";
    let pairs: Vec<(&str, &str)> = services.iter().map(|n| (*n, nowhere)).collect();
    Table::new(&format!(
        "{}{extra}routes:\n{routes}",
        config_head(nowhere, &pairs)
    ))
}

/// The side the table decides for a GET of `target` with `headers` from `peer`.
fn side_from(t: &Table, target: &str, headers: &[(&str, &str)], peer: IpAddr) -> Side {
    match t.decide("GET", target, headers, peer).side {
        strangler::Side::New => Side::New,
        strangler::Side::Legacy => Side::Legacy,
    }
}

/// As `side_from`, from 127.0.0.1.
fn side(t: &Table, target: &str, headers: &[(&str, &str)]) -> Side {
    side_from(t, target, headers, LOOPBACK)
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

#[test]
fn split_25_percent_without_key_is_binomial() {
    // A file-wide sticky header the requests do not carry: the random draw (the last step).
    let t = table(
        &["orders"],
        "sticky: {header: x-user-id}\n",
        &route("orders-read", "/api/orders", "orders", "25", ""),
    );
    const N: usize = 20_000;
    let mut new = 0;
    for _ in 0..N {
        let d = t.decide("GET", "/api/orders", &[], LOOPBACK);
        assert_eq!(d.reason, strangler::Reason::Random, "{d:?}");
        new += usize::from(d.side == strangler::Side::New);
    }
    let (lo, hi) = binomial_range(N, 0.25);
    assert!(
        (lo..=hi).contains(&(new as f64)),
        "{new} of {N} on new at 25%: outside [{lo:.0}, {hi:.0}] (5 sigma)"
    );
}

#[test]
fn percent_0_and_100_are_exact() {
    let routes =
        route("none", "/none", "orders", "0", "") + &route("all", "/all", "orders", "100", "");
    let t = table(&["orders"], "sticky: {header: x-user-id}\n", &routes);
    // Half the requests carry a sticky key: it must not matter at 0 or 100.
    const N: usize = 2_000;
    let keys = random_keys("user", 50);
    for i in 0..2 * N {
        let (path, want) = if i % 2 == 0 {
            ("/none", Side::Legacy)
        } else {
            ("/all", Side::New)
        };
        let key = [("x-user-id", keys[i % keys.len()].as_str())];
        let headers: &[(&str, &str)] = if i % 4 < 2 { &key } else { &[] };
        assert_eq!(
            side(&t, path, headers),
            want,
            "request {i}: {path} {headers:?}"
        );
    }
}

#[test]
fn fractional_percent_splits_within_tolerance() {
    let t = table(
        &["orders"],
        "",
        &route("eighth", "/eighth", "orders", "12.5", ""),
    );
    // n p = 1000, sigma = sqrt(8000 * 0.125 * 0.875) ~= 29.6: the 5-sigma band is +-148,
    // which excludes 12 or 13 percent (960 / 1040 are inside, 10% = 800 and 15% = 1200 not).
    const N: usize = 8_000;
    let new = (0..N)
        .filter(|_| side(&t, "/eighth", &[]) == Side::New)
        .count();
    let (lo, hi) = binomial_range(N, 0.125);
    assert!(
        (lo..=hi).contains(&(new as f64)),
        "{new} of {N} on new at 12.5%: outside [{lo:.0}, {hi:.0}] (5 sigma)"
    );
}

// ---------------------------------------------------------------------------------------
// Sticky cohorts
// ---------------------------------------------------------------------------------------

#[test]
fn sticky_header_key_always_gets_one_side() {
    let t = table(
        &["orders"],
        "sticky: {header: x-user-id}\n",
        &route("orders-read", "/api/orders", "orders", "50", ""),
    );
    // 40 keys x 50 requests, interleaved.
    let keys = random_keys("user", 40);
    let sides: Vec<Side> = (0..40 * 50)
        .map(|i| side(&t, "/api/orders", &[("x-user-id", &keys[i % keys.len()])]))
        .collect();
    let per_key = one_side_per_key(&keys, &sides, "header key");
    // Both sides occur unless all 40 random keys fell on one side: 2 * 0.5^40 ~= 2e-12.
    assert_both_sides(&per_key, "header key at 50%");
    assert_formula("orders", 50.0, &keys, &per_key, "header key");
}

#[test]
fn raising_the_percent_only_moves_keys_to_new() {
    let file = |percent: &str| {
        table(
            &["orders"],
            "sticky: {header: x-user-id}\n",
            &route("orders-read", "/api/orders", "orders", percent, ""),
        )
    };
    // Two tables of the same text (two replicas, or one before and after a restart) and a
    // third whose text differs only in the percent.
    let (at10, at10_again, at30) = (file("10"), file("10"), file("30"));
    let keys = random_keys("user", 300);
    let sides = |t: &Table| -> Vec<Side> {
        keys.iter()
            .map(|k| side(t, "/api/orders", &[("x-user-id", k)]))
            .collect()
    };
    let (s10, s10_again, s30) = (sides(&at10), sides(&at10_again), sides(&at30));

    assert_eq!(s10, s10_again, "two tables of the same file disagree");
    for (k, (a, b)) in keys.iter().zip(s10.iter().zip(&s30)) {
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
    assert_formula("orders", 10.0, &keys, &s10, "at 10%");
    assert_formula("orders", 30.0, &keys, &s30, "at 30%");
}

#[test]
fn routes_of_one_cohort_agree_and_other_cohorts_differ() {
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
    let t = table(
        &["orders", "billing"],
        "sticky: {header: x-user-id}\n",
        &routes,
    );
    let keys = random_keys("user", 200);
    let by_route: BTreeMap<&str, Vec<Side>> = ["/a", "/b", "/c", "/d", "/e"]
        .into_iter()
        .map(|path| {
            let sides = keys
                .iter()
                .map(|k| side(&t, path, &[("x-user-id", k)]))
                .collect();
            (path, sides)
        })
        .collect();
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

#[test]
fn bucket_formula_decides_the_side() {
    let t = table(
        &["orders"],
        "sticky: {header: x-user-id}\n",
        &route(
            "checkout",
            "/checkout",
            "orders",
            "37.25",
            "    cohort: checkout-v2\n",
        ),
    );
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
    let mut sides = Vec::new();
    for k in &keys {
        let d = t.decide("GET", "/checkout", &[("x-user-id", k)], LOOPBACK);
        // The decision names the bucket the docs' formula gives.
        let bucket = xxhash_rust::xxh3::xxh3_64(format!("checkout-v2\0{k}").as_bytes()) % 10_000;
        assert_eq!(d.reason, strangler::Reason::Sticky, "{k:?}: {d:?}");
        assert_eq!(d.bucket, Some(bucket as u32), "{k:?}: {d:?}");
        sides.push(side(&t, "/checkout", &[("x-user-id", k)]));
    }
    assert_formula("checkout-v2", 37.25, &keys, &sides, "header key");
    assert_both_sides(&sides, "at 37.25%");
}

#[test]
fn sticky_cookie_key_gets_a_stable_side() {
    // The route's cookie overrides the file-wide header, which varies on every request.
    let t = table(
        &["orders"],
        "sticky: {header: x-user-id}\n",
        &route(
            "cart",
            "/cart",
            "orders",
            "50",
            "    sticky: {cookie: session}\n",
        ),
    );
    let keys = random_keys("sess", 40);
    let sides: Vec<Side> = (0..keys.len() * 10)
        .map(|i| {
            let cookie = format!("theme=dark; session={}; lang=en", keys[i % keys.len()]);
            let noise = format!("noise-{i}");
            side(&t, "/cart", &[("cookie", &cookie), ("x-user-id", &noise)])
        })
        .collect();
    let per_key = one_side_per_key(&keys, &sides, "cookie key");
    assert_both_sides(&per_key, "cookie key at 50%");
    assert_formula("orders", 50.0, &keys, &per_key, "cookie key");
}

#[test]
fn sticky_query_key_gets_a_stable_side() {
    let t = table(
        &["orders"],
        "sticky: {header: x-user-id}\n",
        &route(
            "search",
            "/search",
            "orders",
            "50",
            "    sticky: {query: uid}\n",
        ),
    );
    let keys = random_keys("uid", 40);
    let sides: Vec<Side> = (0..keys.len() * 10)
        .map(|i| {
            let target = format!("/search?q=shoes&uid={}&page={i}", keys[i % keys.len()]);
            side(&t, &target, &[("x-user-id", &format!("noise-{i}"))])
        })
        .collect();
    let per_key = one_side_per_key(&keys, &sides, "query key");
    assert_both_sides(&per_key, "query key at 50%");
    assert_formula("orders", 50.0, &keys, &per_key, "query key");
}

/// `n` distinct random loopback addresses (all of 127.0.0.0/8 is local on Linux).
fn random_loopbacks(n: usize) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = Vec::new();
    while ips.len() < n {
        let ip = IpAddr::from([
            127,
            fastrand::u8(..),
            fastrand::u8(..),
            fastrand::u8(1..255),
        ]);
        if !ips.contains(&ip) && ip != LOOPBACK {
            ips.push(ip);
        }
    }
    ips
}

#[test]
fn sticky_client_ip_of_the_peer_gets_a_stable_side() {
    // No trusted proxies: the key is the TCP peer; X-Forwarded-For from clients is ignored.
    let t = table(
        &["orders"],
        "sticky: {header: x-user-id}\n",
        &route(
            "home",
            "/home",
            "orders",
            "50",
            "    sticky: {client_ip: true}\n",
        ),
    );
    let ips = random_loopbacks(24);
    let keys: Vec<String> = ips.iter().map(ToString::to_string).collect();
    let sides: Vec<Side> = (0..ips.len() * 10)
        .map(|i| {
            let xff = format!("198.51.100.{}", i % 250);
            let noise = format!("noise-{i}");
            side_from(
                &t,
                "/home",
                &[("x-forwarded-for", &xff), ("x-user-id", &noise)],
                ips[i % ips.len()],
            )
        })
        .collect();
    let per_key = one_side_per_key(&keys, &sides, "client ip");
    // 2 * 0.5^24 ~= 1.2e-7.
    assert_both_sides(&per_key, "client ip at 50%");
    assert_formula("orders", 50.0, &keys, &per_key, "client ip");
}

#[test]
fn sticky_client_ip_behind_a_trusted_proxy_gets_a_stable_side() {
    // The peer is a trusted proxy: the key is the address it forwards for.
    let t = table(
        &["orders"],
        "trusted_proxies: [127.0.0.0/8]\n",
        &route(
            "home",
            "/home",
            "orders",
            "50",
            "    sticky: {client_ip: true}\n",
        ),
    );
    let mut keys: Vec<String> = Vec::new();
    while keys.len() < 40 {
        let ip = format!("203.0.{}.{}", fastrand::u8(..), fastrand::u8(1..255));
        if !keys.contains(&ip) {
            keys.push(ip);
        }
    }
    let sides: Vec<Side> = (0..keys.len() * 10)
        .map(|i| side(&t, "/home", &[("x-forwarded-for", &keys[i % keys.len()])]))
        .collect();
    let per_key = one_side_per_key(&keys, &sides, "forwarded client ip");
    assert_both_sides(&per_key, "forwarded client ip at 50%");
    assert_formula("orders", 50.0, &keys, &per_key, "forwarded client ip");
}

// ---------------------------------------------------------------------------------------
// Override header
// ---------------------------------------------------------------------------------------

#[test]
fn override_header_forces_a_side_and_other_values_are_ignored() {
    let routes = route("none", "/none", "orders", "0", "")
        + &route("all", "/all", "orders", "100", "")
        + &route("half", "/half", "orders", "50", "");
    let t = table(
        &["orders"],
        "sticky: {header: x-user-id}\noverride: {header: x-strangler-side}\n",
        &routes,
    );
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
    let get = |path: &str, key: &str, forced: Option<&str>| {
        let mut headers = vec![("x-user-id", key)];
        if let Some(v) = forced {
            headers.push(("x-strangler-side", v));
        }
        (
            side(&t, path, &headers),
            format!("{path} key {key:?} override {forced:?}"),
        )
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
        let (s, what) = get(path, key, None);
        assert_eq!(s, natural, "{what}");
        for (forced, want) in [
            ("new", Side::New),
            ("legacy", Side::Legacy),
            ("NEW", Side::New),
            ("Legacy", Side::Legacy),
        ] {
            let (s, what) = get(path, key, Some(forced));
            assert_eq!(s, want, "{what}");
        }
        for ignored in ["", "both", "newer", "old", "legacy-v1", "0", "1", "true"] {
            let (s, what) = get(path, key, Some(ignored));
            assert_eq!(
                s, natural,
                "{what}: an unknown override value must be ignored"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The gateway decides as the table does
// ---------------------------------------------------------------------------------------

/// A request of `the_gateway_serves_the_side_the_table_decides`: target, headers, peer.
type Case = (String, Vec<(String, String)>, IpAddr);

/// One gateway with a route of each kind of side choice: every request is served by the
/// side the table of the same file decides for it (from the same peer), and the random
/// split, the only one a table cannot replay request by request, is binomial at the
/// gateway and counted exactly as the upstreams saw it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_serves_the_side_the_table_decides() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let routes = [
        route("random", "/random", "orders", "50", ""),
        route("by-header", "/header", "orders", "50", ""),
        route(
            "by-cookie",
            "/cookie",
            "orders",
            "50",
            "    sticky: {cookie: session}\n",
        ),
        route(
            "by-query",
            "/query",
            "orders",
            "50",
            "    sticky: {query: uid}\n",
        ),
        route(
            "by-ip",
            "/ip",
            "orders",
            "50",
            "    sticky: {client_ip: true}\n",
        ),
    ]
    .concat();
    // 127.0.0.1 is a trusted proxy: from it, the client is the X-Forwarded-For address;
    // from any other loopback address, the peer itself.
    let extra = "sticky: {header: x-user-id}\noverride: {header: x-strangler-side}\ntrusted_proxies: [127.0.0.1/32]\n";
    let yaml = routes_file(&legacy, &[&orders], extra, &routes);
    let gw = Gateway::start(&yaml).await;
    let t = Table::new(&yaml);

    // (target, headers, peer), each sent twice: a key keeps its side within a gateway.
    let mut cases: Vec<Case> = Vec::new();
    for k in random_keys("user", 40) {
        cases.push(("/header".into(), vec![("x-user-id".into(), k)], LOOPBACK));
    }
    for k in random_keys("sess", 40) {
        let cookie = format!("theme=dark; session={k}");
        cases.push(("/cookie".into(), vec![("cookie".into(), cookie)], LOOPBACK));
    }
    for k in random_keys("uid", 40) {
        cases.push((format!("/query?q=1&uid={k}"), vec![], LOOPBACK));
    }
    for ip in random_loopbacks(24) {
        let xff = vec![("x-forwarded-for".to_string(), "198.51.100.7".to_string())];
        cases.push(("/ip".into(), xff, ip));
    }
    for i in 0..40 {
        let xff = vec![("x-forwarded-for".to_string(), format!("203.0.113.{i}"))];
        cases.push(("/ip".into(), xff, LOOPBACK));
    }
    for forced in ["new", "legacy"] {
        let forced = vec![("x-strangler-side".to_string(), forced.to_string())];
        cases.push(("/header".into(), forced.clone(), LOOPBACK));
        cases.push(("/random".into(), forced, LOOPBACK));
    }
    let mut clients: BTreeMap<IpAddr, reqwest::Client> = BTreeMap::new();
    let mut seen: BTreeMap<(String, Side), usize> = BTreeMap::new();
    for (target, headers, peer) in &cases {
        let c = clients.entry(*peer).or_insert_with(|| {
            reqwest::Client::builder()
                .no_proxy()
                .local_address(*peer)
                .build()
                .unwrap()
        });
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let want = side_from(&t, target, &pairs, *peer);
        for _ in 0..2 {
            let mut r = c.get(gw.url(target));
            for (n, v) in &pairs {
                r = r.header(*n, *v);
            }
            let resp = r.send().await.unwrap();
            assert_eq!(resp.status(), 200, "{target} {pairs:?} from {peer}");
            let got = side_of(&resp);
            assert_eq!(
                got, want,
                "{target} {pairs:?} from {peer}: the table says {want:?}"
            );
        }
        let route = target.split(['?', '/']).nth(1).unwrap().to_string();
        *seen.entry((route, want)).or_default() += 1;
    }
    // Not vacuous: every sticky route had keys on both sides (at 50%, each of these fails
    // with probability 2 * 0.5^n for its n keys: at most 1.2e-7 for the 24 peers).
    for route in ["header", "cookie", "query", "ip"] {
        for s in [Side::Legacy, Side::New] {
            assert!(
                seen.contains_key(&(route.to_string(), s)),
                "{route}: no key on {s:?}: {seen:?}"
            );
        }
    }

    // The random split. N = 1000 at 50%: the count on new is Binomial(1000, 0.5), mean 500,
    // sigma = sqrt(1000 * 0.5 * 0.5) ~= 15.8; the 5-sigma band [421, 579] holds it but in
    // 5.7e-7 of runs (`binomial_range`), and holds no count a percentage of 40 or 60 gives.
    orders.clear();
    legacy.clear();
    const N: usize = 1_000;
    let client = client();
    let url = gw.url("/random");
    let sides = send_all(N, move |_| client.get(&url)).await;
    let (new, old) = (orders.count(), legacy.count());
    assert_eq!(new + old, N, "every request reached exactly one upstream");
    assert_eq!(sides.iter().filter(|s| **s == Side::New).count(), new);
    let (lo, hi) = binomial_range(N, 0.5);
    assert!(
        (lo..=hi).contains(&(new as f64)),
        "{new} of {N} on new at 50%: outside [{lo:.0}, {hi:.0}] (5 sigma)"
    );
    // Counted as the upstreams saw it, with the two forced each way before; a request is
    // counted when its answer ends, which may be a moment after the client read it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let m = gw.metrics().await;
        let got = (count(&m, "random", "new"), count(&m, "random", "legacy"));
        if got == ((new + 2) as f64, (old + 2) as f64) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{got:?} counted, {new} + 2 and {old} + 2 served\n{m}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
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
