//! Route precedence (docs/routing.md), end to end: a real gateway in front of one recording
//! upstream per route, every route at `percent: 100`, so the upstream that answers names the
//! route that won. Requests no route takes go to legacy under the route label `default`.

use crate::support;

use std::time::{Duration, Instant};

use support::*;

/// A gateway whose routes each have their own service (and upstream) of the same name.
struct Setup {
    gw: Gateway,
    legacy: Upstream,
    routes: Vec<Upstream>,
}

/// Starts legacy, one upstream per route, and a gateway on the rules. Each rule is
/// `(name, match)` where `match` is the YAML flow mapping of the route's `match:` key; every
/// route sends 100% to its service, which is named like the route.
async fn setup(rules: &[(&'static str, &str)]) -> Setup {
    let legacy = Upstream::start("legacy").await;
    let mut routes = Vec::new();
    for &(name, _) in rules {
        routes.push(Upstream::start(name).await);
    }
    let urls: Vec<String> = routes.iter().map(|u| u.url()).collect();
    let services: Vec<(&str, &str)> = rules
        .iter()
        .zip(&urls)
        .map(|((name, _), url)| (*name, url.as_str()))
        .collect();
    let mut yaml = config_head(&legacy.url(), &services);
    yaml.push_str("routes:\n");
    for (name, m) in rules {
        yaml.push_str(&format!(
            "  - name: {name}\n    match: {m}\n    service: {name}\n    percent: 100\n"
        ));
    }
    let gw = Gateway::start(&yaml).await;
    Setup { gw, legacy, routes }
}

impl Setup {
    /// Sends a request and returns the name of the upstream that answered it ("legacy" or
    /// a route's name). Checks that exactly that upstream received it.
    async fn who(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> String {
        let before = self.counts();
        let mut req = client().request(method.parse().unwrap(), self.gw.url(path));
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{method} {path} {headers:?}");
        let upstream = resp
            .headers()
            .get("x-upstream")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        // HEAD has no body; everything else carries the upstream's name as its body.
        if method != "HEAD" {
            assert_eq!(resp.text().await.unwrap(), upstream);
        }
        let after = self.counts();
        let changed: Vec<&str> = before
            .iter()
            .zip(&after)
            .filter(|((_, b), (_, a))| a != b)
            .map(|((n, _), _)| *n)
            .collect();
        assert_eq!(
            changed,
            vec![upstream.as_str()],
            "{method} {path} {headers:?}: exactly the answering upstream received it"
        );
        upstream
    }

    async fn get(&self, path: &str) -> String {
        self.who("GET", path, &[]).await
    }

    fn counts(&self) -> Vec<(&'static str, usize)> {
        std::iter::once(&self.legacy)
            .chain(&self.routes)
            .map(|u| (u.name, u.count()))
            .collect()
    }

    /// Waits (bounded) until a metric series has the wanted value: the request is counted
    /// when its response body ends, which may be a moment after the client has read it.
    async fn expect_metric(&self, series: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let m = self.gw.metrics().await;
            let got = metric(&m, series);
            if got == Some(want) {
                return;
            }
            if Instant::now() > deadline {
                panic!("{series}: want {want}, got {got:?}\n{m}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn expect_requests(&self, method: &str, route: &str, side: &str, want: f64) {
        self.expect_metric(
            &format!(
                r#"strangler_requests_total{{code="200",method="{method}",route="{route}",side="{side}"}}"#
            ),
            want,
        )
        .await;
    }
}

// ---------------------------------------------------------------------------------------
// 1. Exact paths
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_path_beats_template_prefix_and_regex() {
    // Listed least specific first, so file order cannot be what decides.
    let s = setup(&[
        ("by-regex", r"{regex: '/api/orders/[0-9]+'}"),
        ("by-prefix", "{prefix: /api/orders}"),
        ("by-template", "{path: '/api/orders/{id}'}"),
        ("by-exact", "{path: /api/orders/42}"),
    ])
    .await;
    assert_eq!(s.get("/api/orders/42").await, "by-exact");
    assert_eq!(s.who("POST", "/api/orders/42", &[]).await, "by-exact");
    // The same path after canonicalization (dot segments, repeated slashes) is still exact.
    let (status, head, body) = raw(
        s.gw.running.public_addr,
        "GET /api/x/..//orders/./42 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, b"by-exact");
    // The others still take what the exact path does not.
    assert_eq!(s.get("/api/orders/43").await, "by-template");
    assert_eq!(s.get("/api/orders/43/items").await, "by-prefix");
    assert_eq!(s.get("/api/orders").await, "by-prefix");

    s.expect_requests("GET", "by-exact", "new", 2.0).await;
    s.expect_requests("POST", "by-exact", "new", 1.0).await;
    s.expect_requests("GET", "by-template", "new", 1.0).await;
    s.expect_requests("GET", "by-prefix", "new", 2.0).await;
}

// ---------------------------------------------------------------------------------------
// 2. Templates
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_with_more_literal_segments_wins() {
    let s = setup(&[
        ("one-literal", "{path: '/api/{a}/special/{x}'}"),
        ("two-literals", "{path: '/api/orders/special/{x}'}"),
        // More literals win even over a template without {*rest} and with fewer params.
        ("lit-rest", "{path: '/shop/cart/{*rest}'}"),
        ("params", "{path: '/shop/{a}/{b}'}"),
    ])
    .await;
    assert_eq!(s.get("/api/orders/special/1").await, "two-literals");
    assert_eq!(s.get("/api/users/special/1").await, "one-literal");
    assert_eq!(s.get("/shop/cart/7").await, "lit-rest");
    assert_eq!(s.get("/shop/wishlist/7").await, "params");

    s.expect_requests("GET", "two-literals", "new", 1.0).await;
    s.expect_requests("GET", "one-literal", "new", 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_without_rest_before_one_with_rest_at_equal_literals() {
    // The {*rest} templates come first in the file, and have fewer params.
    let s = setup(&[
        ("files-rest", "{path: '/files/{*rest}'}"),
        ("files-name", "{path: '/files/{name}'}"),
        ("docs-rest", "{path: '/docs/{*rest}'}"),
        ("docs-two", "{path: '/docs/{a}/{b}'}"),
    ])
    .await;
    assert_eq!(s.get("/files/a").await, "files-name");
    assert_eq!(s.get("/files/a/b").await, "files-rest");
    assert_eq!(s.get("/docs/x/y").await, "docs-two");
    assert_eq!(s.get("/docs/x").await, "docs-rest");
    assert_eq!(s.get("/docs/x/y/z").await, "docs-rest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_with_fewer_params_wins_at_equal_literals_and_rest() {
    // Both have one literal and a {*rest}; the one with more params is first in the file.
    // (Without {*rest}, two templates that match the same path have as many segments, so
    // equal literals means equal params: only {*rest} templates can differ here.)
    let s = setup(&[
        ("more-params", "{path: '/shop/{a}/{*rest}'}"),
        ("fewer-params", "{path: '/shop/{*rest}'}"),
        ("three-params", "{path: '/deep/{a}/{b}/{*rest}'}"),
        ("two-params", "{path: '/deep/{a}/{*rest}'}"),
    ])
    .await;
    assert_eq!(s.get("/shop/a/b").await, "fewer-params");
    assert_eq!(s.get("/shop/a/b/c").await, "fewer-params");
    assert_eq!(s.get("/deep/a/b/c").await, "two-params");
    assert_eq!(s.routes[0].count(), 0);
    assert_eq!(s.routes[2].count(), 0);
    s.expect_requests("GET", "fewer-params", "new", 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn param_does_not_match_an_empty_segment() {
    let s = setup(&[
        ("user", "{path: '/users/{id}'}"),
        ("user-orders", "{path: '/users/{id}/orders'}"),
    ])
    .await;
    assert_eq!(s.get("/users/7").await, "user");
    assert_eq!(s.get("/users/7/orders").await, "user-orders");
    // `/users/` ends in an empty segment: {id} does not take it.
    assert_eq!(s.get("/users/").await, "legacy");
    assert_eq!(s.get("/users").await, "legacy");
    s.expect_requests("GET", "default", "legacy", 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_needs_at_least_one_more_segment() {
    let s = setup(&[("files", "{path: '/files/{*rest}'}")]).await;
    assert_eq!(s.get("/files/a/b").await, "files");
    assert_eq!(s.routes[0].last().target, "/files/a/b");
    assert_eq!(s.get("/files/a").await, "files");
    assert_eq!(s.get("/files/").await, "files");
    assert_eq!(s.routes[0].last().target, "/files/");
    assert_eq!(s.get("/files").await, "legacy");
    assert_eq!(s.get("/filesX/a").await, "legacy");
    s.expect_requests("GET", "files", "new", 3.0).await;
    s.expect_requests("GET", "default", "legacy", 2.0).await;
}

// ---------------------------------------------------------------------------------------
// 3. Prefixes
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_prefix_wins() {
    let s = setup(&[
        ("api", "{prefix: /api}"),
        ("orders", "{prefix: /api/orders}"),
        ("archive", "{prefix: /api/orders/archive}"),
    ])
    .await;
    assert_eq!(s.get("/api/orders/archive/2020").await, "archive");
    assert_eq!(s.get("/api/orders/archive").await, "archive");
    assert_eq!(s.get("/api/orders/7").await, "orders");
    assert_eq!(s.get("/api/orders/archived").await, "orders");
    assert_eq!(s.get("/api/users").await, "api");
    assert_eq!(s.get("/api").await, "api");
    assert_eq!(s.get("/apix").await, "legacy");
    s.expect_requests("GET", "archive", "new", 2.0).await;
    s.expect_requests("GET", "orders", "new", 2.0).await;
    s.expect_requests("GET", "api", "new", 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_matches_on_segment_boundaries() {
    let s = setup(&[("orders", "{prefix: /api/orders}")]).await;
    assert_eq!(s.get("/api/orders").await, "orders");
    assert_eq!(s.get("/api/orders/7").await, "orders");
    assert_eq!(s.get("/api/orders/").await, "orders");
    assert_eq!(s.get("/api/orders/7/lines/1").await, "orders");
    assert_eq!(s.get("/api/ordersX").await, "legacy");
    assert_eq!(s.get("/api/ordersX/7").await, "legacy");
    assert_eq!(s.get("/api/order").await, "legacy");
    assert_eq!(s.get("/api").await, "legacy");
    s.expect_requests("GET", "orders", "new", 4.0).await;
    s.expect_requests("GET", "default", "legacy", 4.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_root_catches_everything_else() {
    let s = setup(&[("root", "{prefix: /}"), ("api", "{prefix: /api}")]).await;
    assert_eq!(s.get("/").await, "root");
    assert_eq!(s.get("/anything").await, "root");
    assert_eq!(s.get("/a/b/c").await, "root");
    assert_eq!(s.get("/apix").await, "root");
    assert_eq!(s.get("/api/x").await, "api");
    assert_eq!(s.who("DELETE", "/x", &[]).await, "root");
    assert_eq!(s.legacy.count(), 0);
    s.expect_requests("GET", "root", "new", 4.0).await;
}

// ---------------------------------------------------------------------------------------
// 4. Regexes
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_only_when_nothing_earlier_takes_the_request() {
    let s = setup(&[
        ("any-api", "{regex: '/api/.*'}"),
        ("orders", "{prefix: /api/orders}"),
        ("item", "{path: '/api/items/{id}'}"),
        ("health", "{path: /api/health}"),
    ])
    .await;
    assert_eq!(s.get("/api/orders/7").await, "orders");
    assert_eq!(s.get("/api/items/3").await, "item");
    assert_eq!(s.get("/api/health").await, "health");
    assert_eq!(s.get("/api/users/1").await, "any-api");
    assert_eq!(s.get("/api/items/3/x").await, "any-api");
    assert_eq!(s.get("/other").await, "legacy");
    s.expect_requests("GET", "any-api", "new", 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_must_match_the_whole_path() {
    let s = setup(&[
        ("pdf", r"{regex: '/invoices/[0-9]+\.pdf'}"),
        // Would match part of many paths; must match the whole one.
        ("part", "{regex: 'orders'}"),
        ("tail", "{regex: '/x/[a-z]+'}"),
    ])
    .await;
    assert_eq!(s.get("/invoices/12.pdf").await, "pdf");
    assert_eq!(s.get("/invoices/12.pdf/extra").await, "legacy");
    assert_eq!(s.get("/v1/invoices/12.pdf").await, "legacy");
    assert_eq!(s.get("/invoices/12Xpdf").await, "legacy");
    assert_eq!(s.get("/api/orders").await, "legacy");
    assert_eq!(s.get("/orders").await, "legacy");
    assert_eq!(s.get("/x/abc").await, "tail");
    assert_eq!(s.get("/x/abc1").await, "legacy");
    s.expect_requests("GET", "pdf", "new", 1.0).await;
    s.expect_requests("GET", "default", "legacy", 6.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regexes_are_tried_in_file_order() {
    let s = setup(&[
        ("letters", "{regex: '/r/[a-z]+'}"),
        ("anything", "{regex: '/r/.*'}"),
        // More specific, but later in the file: never reached for /r/abc.
        ("literal", "{regex: '/r/abc'}"),
    ])
    .await;
    assert_eq!(s.get("/r/abc").await, "letters");
    assert_eq!(s.get("/r/123").await, "anything");
    assert_eq!(s.get("/r/").await, "anything");
    assert_eq!(s.routes[2].count(), 0);
}

// ---------------------------------------------------------------------------------------
// 5. Same pattern: more conditions first, then file order
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_pattern_more_conditions_first_then_file_order() {
    let s = setup(&[
        ("plain", "{prefix: /api/orders}"),
        ("get-only", "{prefix: /api/orders, methods: [GET]}"),
        (
            "get-beta",
            "{prefix: /api/orders, methods: [GET], headers: {x-tenant: beta}}",
        ),
        (
            "beta-gold",
            "{prefix: /api/orders, headers: {x-tenant: beta, x-plan: gold}}",
        ),
        (
            "tenant-any",
            "{prefix: /api/orders, headers: {x-tenant: {present: true}}}",
        ),
    ])
    .await;
    let beta_gold = [("x-tenant", "beta"), ("x-plan", "gold")];
    // Two conditions each: file order.
    assert_eq!(s.who("GET", "/api/orders/1", &beta_gold).await, "get-beta");
    assert_eq!(
        s.who("POST", "/api/orders/1", &beta_gold).await,
        "beta-gold"
    );
    // One condition each (get-only before tenant-any in the file).
    assert_eq!(
        s.who("GET", "/api/orders/1", &[("x-tenant", "alpha")])
            .await,
        "get-only"
    );
    assert_eq!(s.who("GET", "/api/orders/1", &[]).await, "get-only");
    assert_eq!(
        s.who("POST", "/api/orders/1", &[("x-tenant", "beta")])
            .await,
        "tenant-any"
    );
    // No condition: last, although first in the file.
    assert_eq!(s.who("POST", "/api/orders/1", &[]).await, "plain");
    assert_eq!(s.who("DELETE", "/api/orders", &[]).await, "plain");

    s.expect_requests("GET", "get-beta", "new", 1.0).await;
    s.expect_requests("POST", "beta-gold", "new", 1.0).await;
    s.expect_requests("GET", "get-only", "new", 2.0).await;
    s.expect_requests("POST", "tenant-any", "new", 1.0).await;
    s.expect_requests("POST", "plain", "new", 1.0).await;
    s.expect_requests("DELETE", "plain", "new", 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_methods_list_counts_as_one_condition() {
    // One header condition vs a three-method list: both one condition, so file order.
    let s = setup(&[
        (
            "by-header",
            "{prefix: /count, headers: {x-a: {present: true}}}",
        ),
        ("by-methods", "{prefix: /count, methods: [GET, POST, PUT]}"),
        // Two header conditions beat a methods list, whatever its length.
        (
            "two-headers",
            "{prefix: /two, headers: {x-a: {present: true}, x-b: {present: true}}}",
        ),
        (
            "many-methods",
            "{prefix: /two, methods: [GET, HEAD, POST, PUT, DELETE]}",
        ),
    ])
    .await;
    assert_eq!(s.who("GET", "/count", &[("x-a", "1")]).await, "by-header");
    assert_eq!(s.who("GET", "/count", &[]).await, "by-methods");
    assert_eq!(
        s.who("GET", "/two", &[("x-a", "1"), ("x-b", "1")]).await,
        "two-headers"
    );
    assert_eq!(s.who("GET", "/two", &[("x-a", "1")]).await, "many-methods");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_differing_only_in_param_names_are_one_pattern() {
    let s = setup(&[
        ("any-method", "{path: '/api/items/{id}'}"),
        ("get-item", "{path: '/api/items/{item}', methods: [GET]}"),
    ])
    .await;
    assert_eq!(s.get("/api/items/1").await, "get-item");
    assert_eq!(s.who("PUT", "/api/items/1", &[]).await, "any-method");
}

// ---------------------------------------------------------------------------------------
// 6. Fall-through on methods and headers
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_falls_through_to_the_next_rule_of_any_tier() {
    let s = setup(&[
        ("exact-get", "{path: /api/orders/42, methods: [GET]}"),
        (
            "tpl-put",
            "{path: '/api/orders/{id}', methods: [PUT, HEAD]}",
        ),
        ("prefix-post", "{prefix: /api/orders, methods: [POST]}"),
        ("regex-delete", "{regex: '/api/.*', methods: [DELETE]}"),
    ])
    .await;
    let p = "/api/orders/42";
    assert_eq!(s.who("GET", p, &[]).await, "exact-get");
    assert_eq!(s.who("PUT", p, &[]).await, "tpl-put");
    assert_eq!(s.who("HEAD", p, &[]).await, "tpl-put");
    assert_eq!(s.who("POST", p, &[]).await, "prefix-post");
    assert_eq!(s.who("DELETE", p, &[]).await, "regex-delete");
    // No rule takes PATCH: legacy.
    assert_eq!(s.who("PATCH", p, &[]).await, "legacy");
    // Another id: the exact rule is not a candidate; GET is in no other list.
    assert_eq!(s.who("GET", "/api/orders/43", &[]).await, "legacy");
    assert_eq!(s.who("PUT", "/api/orders/43", &[]).await, "tpl-put");

    s.expect_requests("GET", "exact-get", "new", 1.0).await;
    s.expect_requests("PUT", "tpl-put", "new", 2.0).await;
    s.expect_requests("POST", "prefix-post", "new", 1.0).await;
    s.expect_requests("DELETE", "regex-delete", "new", 1.0)
        .await;
    s.expect_requests("PATCH", "default", "legacy", 1.0).await;
    s.expect_requests("GET", "default", "legacy", 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_condition_falls_through_to_the_next_rule_of_any_tier() {
    let s = setup(&[
        ("exact-beta", "{path: /h/1, headers: {x-tenant: beta}}"),
        ("tpl-silver", "{path: '/h/{id}', headers: {x-plan: silver}}"),
        (
            "prefix-plan",
            "{prefix: /h, headers: {x-plan: {present: true}}}",
        ),
        ("regex-any", "{regex: '/h/[0-9]+'}"),
    ])
    .await;
    let p = "/h/1";
    assert_eq!(s.who("GET", p, &[("x-tenant", "beta")]).await, "exact-beta");
    assert_eq!(
        s.who("GET", p, &[("x-tenant", "alpha"), ("x-plan", "silver")])
            .await,
        "tpl-silver"
    );
    assert_eq!(s.who("GET", p, &[("x-plan", "gold")]).await, "prefix-plan");
    assert_eq!(s.who("GET", p, &[("x-tenant", "alpha")]).await, "regex-any");
    assert_eq!(s.who("GET", p, &[]).await, "regex-any");
    assert_eq!(s.who("GET", "/h/x/y", &[]).await, "legacy");
    s.expect_requests("GET", "exact-beta", "new", 1.0).await;
    s.expect_requests("GET", "tpl-silver", "new", 1.0).await;
    s.expect_requests("GET", "prefix-plan", "new", 1.0).await;
    s.expect_requests("GET", "regex-any", "new", 2.0).await;
    s.expect_requests("GET", "default", "legacy", 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_are_case_insensitive() {
    let s = setup(&[("mixed", "{prefix: /ci, headers: {X-Tenant: beta}}")]).await;
    assert_eq!(s.who("GET", "/ci", &[("x-tenant", "beta")]).await, "mixed");
    // Upper-case name on the wire (reqwest would send it lower-case).
    let (status, head, body) = raw(
        s.gw.running.public_addr,
        "GET /ci HTTP/1.1\r\nHost: t\r\nX-TENANT: beta\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, b"mixed");
    assert_eq!(s.get("/ci").await, "legacy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_header_values_are_case_sensitive() {
    let s = setup(&[("beta", "{prefix: /cs, headers: {x-tenant: beta}}")]).await;
    assert_eq!(s.who("GET", "/cs", &[("x-tenant", "beta")]).await, "beta");
    assert_eq!(s.who("GET", "/cs", &[("x-tenant", "Beta")]).await, "legacy");
    assert_eq!(s.who("GET", "/cs", &[("x-tenant", "BETA")]).await, "legacy");
    assert_eq!(
        s.who("GET", "/cs", &[("x-tenant", "betas")]).await,
        "legacy"
    );
    assert_eq!(s.who("GET", "/cs", &[("x-tenant", "bet")]).await, "legacy");
    s.expect_requests("GET", "beta", "new", 1.0).await;
    s.expect_requests("GET", "default", "legacy", 4.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_regex_must_match_the_whole_value() {
    let s = setup(&[(
        "versioned",
        "{prefix: /rv, headers: {x-version: {regex: 'v[0-9]+'}}}",
    )])
    .await;
    for (value, want) in [
        ("v2", "versioned"),
        ("v10", "versioned"),
        ("v2-beta", "legacy"),
        ("xv2", "legacy"),
        ("V2", "legacy"),
        ("v", "legacy"),
    ] {
        assert_eq!(
            s.who("GET", "/rv", &[("x-version", value)]).await,
            want,
            "x-version: {value}"
        );
    }
    assert_eq!(s.who("GET", "/rv", &[]).await, "legacy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_present_true_and_false() {
    let s = setup(&[
        (
            "debug-on",
            "{prefix: /p, headers: {x-debug: {present: true}}}",
        ),
        (
            "debug-off",
            "{prefix: /p, headers: {x-debug: {present: false}}}",
        ),
        (
            "only-absent",
            "{prefix: /q, headers: {x-debug: {present: false}}}",
        ),
    ])
    .await;
    assert_eq!(s.who("GET", "/p", &[("x-debug", "1")]).await, "debug-on");
    assert_eq!(s.who("GET", "/p", &[("X-Debug", "no")]).await, "debug-on");
    assert_eq!(s.who("GET", "/p", &[("x-debug", "")]).await, "debug-on");
    assert_eq!(s.who("GET", "/p", &[]).await, "debug-off");
    assert_eq!(s.who("GET", "/p", &[("x-other", "1")]).await, "debug-off");
    assert_eq!(s.who("GET", "/q/1", &[]).await, "only-absent");
    assert_eq!(s.who("GET", "/q/1", &[("x-debug", "1")]).await, "legacy");
}

// ---------------------------------------------------------------------------------------
// 7. Unmatched requests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_request_goes_to_legacy_under_route_default() {
    let s = setup(&[
        ("orders", "{prefix: /api/orders, methods: [GET]}"),
        ("item", "{path: '/api/items/{id}'}"),
    ])
    .await;
    assert_eq!(s.get("/nothing/here").await, "legacy");
    assert_eq!(s.get("/").await, "legacy");
    assert_eq!(s.who("POST", "/api/orders/1", &[]).await, "legacy");
    assert_eq!(s.get("/api/orders/1").await, "orders");
    let last = s.legacy.last();
    assert_eq!(last.method, "POST");
    assert_eq!(last.target, "/api/orders/1");

    s.expect_requests("GET", "default", "legacy", 2.0).await;
    s.expect_requests("POST", "default", "legacy", 1.0).await;
    s.expect_requests("GET", "orders", "new", 1.0).await;
    let m = s.gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"strangler_requests_total{code="200",method="GET",route="default",side="new"}"#
        ),
        None,
        "{m}"
    );
}
