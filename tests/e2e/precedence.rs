//! Route precedence (docs/routing.md), as tables of the decision: each test compiles a
//! routes file and asks `RouteTable::decide` (which the gateway calls for every request)
//! which route takes each request, read as the gateway reads it (`support::table`). Every
//! route sends 100% to a service named like it, so a route that takes a request sends it to
//! new. Requests no route takes go to legacy under the route label `default`.
//!
//! The last test runs a real gateway in front of one recording upstream per route and
//! shows that it routes, and counts, every request of every tier as the table decides.

use crate::support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use strangler::{Reason, Side};
use support::table::{LOOPBACK, Table};
use support::*;

/// A routes file whose routes each have their own service of the same name: each rule is
/// `(name, match)`, `match` the YAML flow mapping of the route's `match:` key; every route
/// at `percent: 100`. `url` gives each service's URL.
fn routes_yaml(legacy: &str, rules: &[(&str, &str)], url: impl Fn(usize) -> String) -> String {
    let urls: Vec<String> = (0..rules.len()).map(url).collect();
    let services: Vec<(&str, &str)> = rules
        .iter()
        .zip(&urls)
        .map(|((name, _), url)| (*name, url.as_str()))
        .collect();
    let mut yaml = config_head(legacy, &services);
    yaml.push_str("routes:\n");
    for (name, m) in rules {
        yaml.push_str(&format!(
            "  - name: {name}\n    match: {m}\n    service: {name}\n    percent: 100\n"
        ));
    }
    yaml
}

/// The compiled rules (no upstream behind them).
struct Rules(Table);

fn rules(rules: &[(&str, &str)]) -> Rules {
    let nowhere = "http://127.0.0.1:9";
    Rules(Table::new(&routes_yaml(nowhere, rules, |_| {
        nowhere.to_string()
    })))
}

impl Rules {
    /// The route label and side of a request.
    fn decision(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> (String, Side) {
        let d = self.0.decide(method, target, headers, LOOPBACK);
        // A route at 100% sends to new; no route is legacy.
        let reason = if d.route.is_some() {
            Reason::Percent
        } else {
            Reason::Unmatched
        };
        assert_eq!(d.reason, reason, "{method} {target} {headers:?}: {d:?}");
        (self.0.label(&d).to_string(), d.side)
    }

    /// The name of the route that takes a request, or `legacy` when none does (the upstream
    /// that would answer it).
    fn who(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> String {
        match self.decision(method, target, headers) {
            (label, Side::Legacy) if label == "default" => "legacy".to_string(),
            (route, Side::New) if route != "default" => route,
            other => panic!("{method} {target} {headers:?}: {other:?}"),
        }
    }

    fn get(&self, target: &str) -> String {
        self.who("GET", target, &[])
    }
}

// ---------------------------------------------------------------------------------------
// 1. Exact paths
// ---------------------------------------------------------------------------------------

#[test]
fn exact_path_beats_template_prefix_and_regex() {
    // Listed least specific first, so file order cannot be what decides.
    let s = rules(&[
        ("by-regex", r"{regex: '/api/orders/[0-9]+'}"),
        ("by-prefix", "{prefix: /api/orders}"),
        ("by-template", "{path: '/api/orders/{id}'}"),
        ("by-exact", "{path: /api/orders/42}"),
    ]);
    assert_eq!(s.get("/api/orders/42"), "by-exact");
    assert_eq!(s.who("POST", "/api/orders/42", &[]), "by-exact");
    // The same path after canonicalization (dot segments, repeated slashes) is still exact.
    assert_eq!(s.get("/api/x/..//orders/./42"), "by-exact");
    // The others still take what the exact path does not.
    assert_eq!(s.get("/api/orders/43"), "by-template");
    assert_eq!(s.get("/api/orders/43/items"), "by-prefix");
    assert_eq!(s.get("/api/orders"), "by-prefix");
}

// ---------------------------------------------------------------------------------------
// 2. Templates
// ---------------------------------------------------------------------------------------

#[test]
fn template_with_more_literal_segments_wins() {
    let s = rules(&[
        ("one-literal", "{path: '/api/{a}/special/{x}'}"),
        ("two-literals", "{path: '/api/orders/special/{x}'}"),
        // More literals win even over a template without {*rest} and with fewer params.
        ("lit-rest", "{path: '/shop/cart/{*rest}'}"),
        ("params", "{path: '/shop/{a}/{b}'}"),
    ]);
    assert_eq!(s.get("/api/orders/special/1"), "two-literals");
    assert_eq!(s.get("/api/users/special/1"), "one-literal");
    assert_eq!(s.get("/shop/cart/7"), "lit-rest");
    assert_eq!(s.get("/shop/wishlist/7"), "params");
}

#[test]
fn template_without_rest_before_one_with_rest_at_equal_literals() {
    // The {*rest} templates come first in the file, and have fewer params.
    let s = rules(&[
        ("files-rest", "{path: '/files/{*rest}'}"),
        ("files-name", "{path: '/files/{name}'}"),
        ("docs-rest", "{path: '/docs/{*rest}'}"),
        ("docs-two", "{path: '/docs/{a}/{b}'}"),
    ]);
    assert_eq!(s.get("/files/a"), "files-name");
    assert_eq!(s.get("/files/a/b"), "files-rest");
    assert_eq!(s.get("/docs/x/y"), "docs-two");
    assert_eq!(s.get("/docs/x"), "docs-rest");
    assert_eq!(s.get("/docs/x/y/z"), "docs-rest");
}

#[test]
fn template_with_fewer_params_wins_at_equal_literals_and_rest() {
    // Both have one literal and a {*rest}; the one with more params is first in the file.
    // (Without {*rest}, two templates that match the same path have as many segments, so
    // equal literals means equal params: only {*rest} templates can differ here.)
    let s = rules(&[
        ("more-params", "{path: '/shop/{a}/{*rest}'}"),
        ("fewer-params", "{path: '/shop/{*rest}'}"),
        ("three-params", "{path: '/deep/{a}/{b}/{*rest}'}"),
        ("two-params", "{path: '/deep/{a}/{*rest}'}"),
    ]);
    assert_eq!(s.get("/shop/a/b"), "fewer-params");
    assert_eq!(s.get("/shop/a/b/c"), "fewer-params");
    assert_eq!(s.get("/deep/a/b/c"), "two-params");
}

#[test]
fn param_does_not_match_an_empty_segment() {
    let s = rules(&[
        ("user", "{path: '/users/{id}'}"),
        ("user-orders", "{path: '/users/{id}/orders'}"),
    ]);
    assert_eq!(s.get("/users/7"), "user");
    assert_eq!(s.get("/users/7/orders"), "user-orders");
    // `/users/` ends in an empty segment: {id} does not take it.
    assert_eq!(s.get("/users/"), "legacy");
    assert_eq!(s.get("/users"), "legacy");
}

#[test]
fn rest_needs_at_least_one_more_segment() {
    let s = rules(&[("files", "{path: '/files/{*rest}'}")]);
    assert_eq!(s.get("/files/a/b"), "files");
    assert_eq!(s.get("/files/a"), "files");
    assert_eq!(s.get("/files/"), "files");
    assert_eq!(s.get("/files"), "legacy");
    assert_eq!(s.get("/filesX/a"), "legacy");
}

// ---------------------------------------------------------------------------------------
// 3. Prefixes
// ---------------------------------------------------------------------------------------

#[test]
fn longest_prefix_wins() {
    let s = rules(&[
        ("api", "{prefix: /api}"),
        ("orders", "{prefix: /api/orders}"),
        ("archive", "{prefix: /api/orders/archive}"),
    ]);
    assert_eq!(s.get("/api/orders/archive/2020"), "archive");
    assert_eq!(s.get("/api/orders/archive"), "archive");
    assert_eq!(s.get("/api/orders/7"), "orders");
    assert_eq!(s.get("/api/orders/archived"), "orders");
    assert_eq!(s.get("/api/users"), "api");
    assert_eq!(s.get("/api"), "api");
    assert_eq!(s.get("/apix"), "legacy");
}

#[test]
fn prefix_matches_on_segment_boundaries() {
    let s = rules(&[("orders", "{prefix: /api/orders}")]);
    assert_eq!(s.get("/api/orders"), "orders");
    assert_eq!(s.get("/api/orders/7"), "orders");
    assert_eq!(s.get("/api/orders/"), "orders");
    assert_eq!(s.get("/api/orders/7/lines/1"), "orders");
    assert_eq!(s.get("/api/ordersX"), "legacy");
    assert_eq!(s.get("/api/ordersX/7"), "legacy");
    assert_eq!(s.get("/api/order"), "legacy");
    assert_eq!(s.get("/api"), "legacy");
}

#[test]
fn prefix_root_catches_everything_else() {
    let s = rules(&[("root", "{prefix: /}"), ("api", "{prefix: /api}")]);
    assert_eq!(s.get("/"), "root");
    assert_eq!(s.get("/anything"), "root");
    assert_eq!(s.get("/a/b/c"), "root");
    assert_eq!(s.get("/apix"), "root");
    assert_eq!(s.get("/api/x"), "api");
    assert_eq!(s.who("DELETE", "/x", &[]), "root");
}

// ---------------------------------------------------------------------------------------
// 4. Regexes
// ---------------------------------------------------------------------------------------

#[test]
fn regex_only_when_nothing_earlier_takes_the_request() {
    let s = rules(&[
        ("any-api", "{regex: '/api/.*'}"),
        ("orders", "{prefix: /api/orders}"),
        ("item", "{path: '/api/items/{id}'}"),
        ("health", "{path: /api/health}"),
    ]);
    assert_eq!(s.get("/api/orders/7"), "orders");
    assert_eq!(s.get("/api/items/3"), "item");
    assert_eq!(s.get("/api/health"), "health");
    assert_eq!(s.get("/api/users/1"), "any-api");
    assert_eq!(s.get("/api/items/3/x"), "any-api");
    assert_eq!(s.get("/other"), "legacy");
}

#[test]
fn regex_must_match_the_whole_path() {
    let s = rules(&[
        ("pdf", r"{regex: '/invoices/[0-9]+\.pdf'}"),
        // Would match part of many paths; must match the whole one.
        ("part", "{regex: 'orders'}"),
        ("tail", "{regex: '/x/[a-z]+'}"),
    ]);
    assert_eq!(s.get("/invoices/12.pdf"), "pdf");
    assert_eq!(s.get("/invoices/12.pdf/extra"), "legacy");
    assert_eq!(s.get("/v1/invoices/12.pdf"), "legacy");
    assert_eq!(s.get("/invoices/12Xpdf"), "legacy");
    assert_eq!(s.get("/api/orders"), "legacy");
    assert_eq!(s.get("/orders"), "legacy");
    assert_eq!(s.get("/x/abc"), "tail");
    assert_eq!(s.get("/x/abc1"), "legacy");
}

#[test]
fn regexes_are_tried_in_file_order() {
    let s = rules(&[
        ("letters", "{regex: '/r/[a-z]+'}"),
        ("anything", "{regex: '/r/.*'}"),
        // More specific, but later in the file: never reached for /r/abc.
        ("literal", "{regex: '/r/abc'}"),
    ]);
    assert_eq!(s.get("/r/abc"), "letters");
    assert_eq!(s.get("/r/123"), "anything");
    assert_eq!(s.get("/r/"), "anything");
}

// ---------------------------------------------------------------------------------------
// 5. Same pattern: more conditions first, then file order
// ---------------------------------------------------------------------------------------

#[test]
fn same_pattern_more_conditions_first_then_file_order() {
    let s = rules(&[
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
    ]);
    let beta_gold = [("x-tenant", "beta"), ("x-plan", "gold")];
    // Two conditions each: file order.
    assert_eq!(s.who("GET", "/api/orders/1", &beta_gold), "get-beta");
    assert_eq!(s.who("POST", "/api/orders/1", &beta_gold), "beta-gold");
    // One condition each (get-only before tenant-any in the file).
    assert_eq!(
        s.who("GET", "/api/orders/1", &[("x-tenant", "alpha")]),
        "get-only"
    );
    assert_eq!(s.who("GET", "/api/orders/1", &[]), "get-only");
    assert_eq!(
        s.who("POST", "/api/orders/1", &[("x-tenant", "beta")]),
        "tenant-any"
    );
    // No condition: last, although first in the file.
    assert_eq!(s.who("POST", "/api/orders/1", &[]), "plain");
    assert_eq!(s.who("DELETE", "/api/orders", &[]), "plain");
}

#[test]
fn a_methods_list_counts_as_one_condition() {
    // One header condition vs a three-method list: both one condition, so file order.
    let s = rules(&[
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
    ]);
    assert_eq!(s.who("GET", "/count", &[("x-a", "1")]), "by-header");
    assert_eq!(s.who("GET", "/count", &[]), "by-methods");
    assert_eq!(
        s.who("GET", "/two", &[("x-a", "1"), ("x-b", "1")]),
        "two-headers"
    );
    assert_eq!(s.who("GET", "/two", &[("x-a", "1")]), "many-methods");
}

#[test]
fn templates_differing_only_in_param_names_are_one_pattern() {
    let s = rules(&[
        ("any-method", "{path: '/api/items/{id}'}"),
        ("get-item", "{path: '/api/items/{item}', methods: [GET]}"),
    ]);
    assert_eq!(s.get("/api/items/1"), "get-item");
    assert_eq!(s.who("PUT", "/api/items/1", &[]), "any-method");
}

// ---------------------------------------------------------------------------------------
// 6. Fall-through on methods and headers
// ---------------------------------------------------------------------------------------

#[test]
fn method_falls_through_to_the_next_rule_of_any_tier() {
    let s = rules(&[
        ("exact-get", "{path: /api/orders/42, methods: [GET]}"),
        (
            "tpl-put",
            "{path: '/api/orders/{id}', methods: [PUT, HEAD]}",
        ),
        ("prefix-post", "{prefix: /api/orders, methods: [POST]}"),
        ("regex-delete", "{regex: '/api/.*', methods: [DELETE]}"),
    ]);
    let p = "/api/orders/42";
    assert_eq!(s.who("GET", p, &[]), "exact-get");
    assert_eq!(s.who("PUT", p, &[]), "tpl-put");
    assert_eq!(s.who("HEAD", p, &[]), "tpl-put");
    assert_eq!(s.who("POST", p, &[]), "prefix-post");
    assert_eq!(s.who("DELETE", p, &[]), "regex-delete");
    // No rule takes PATCH: legacy.
    assert_eq!(s.who("PATCH", p, &[]), "legacy");
    // Another id: the exact rule is not a candidate; GET is in no other list.
    assert_eq!(s.who("GET", "/api/orders/43", &[]), "legacy");
    assert_eq!(s.who("PUT", "/api/orders/43", &[]), "tpl-put");
}

#[test]
fn header_condition_falls_through_to_the_next_rule_of_any_tier() {
    let s = rules(&[
        ("exact-beta", "{path: /h/1, headers: {x-tenant: beta}}"),
        ("tpl-silver", "{path: '/h/{id}', headers: {x-plan: silver}}"),
        (
            "prefix-plan",
            "{prefix: /h, headers: {x-plan: {present: true}}}",
        ),
        ("regex-any", "{regex: '/h/[0-9]+'}"),
    ]);
    let p = "/h/1";
    assert_eq!(s.who("GET", p, &[("x-tenant", "beta")]), "exact-beta");
    assert_eq!(
        s.who("GET", p, &[("x-tenant", "alpha"), ("x-plan", "silver")]),
        "tpl-silver"
    );
    assert_eq!(s.who("GET", p, &[("x-plan", "gold")]), "prefix-plan");
    assert_eq!(s.who("GET", p, &[("x-tenant", "alpha")]), "regex-any");
    assert_eq!(s.who("GET", p, &[]), "regex-any");
    assert_eq!(s.who("GET", "/h/x/y", &[]), "legacy");
}

#[test]
fn header_names_are_case_insensitive() {
    let s = rules(&[("mixed", "{prefix: /ci, headers: {X-Tenant: beta}}")]);
    assert_eq!(s.who("GET", "/ci", &[("x-tenant", "beta")]), "mixed");
    assert_eq!(s.who("GET", "/ci", &[("X-TENANT", "beta")]), "mixed");
    assert_eq!(s.who("GET", "/ci", &[("X-Tenant", "beta")]), "mixed");
    assert_eq!(s.get("/ci"), "legacy");
}

#[test]
fn exact_header_values_are_case_sensitive() {
    let s = rules(&[("beta", "{prefix: /cs, headers: {x-tenant: beta}}")]);
    assert_eq!(s.who("GET", "/cs", &[("x-tenant", "beta")]), "beta");
    assert_eq!(s.who("GET", "/cs", &[("x-tenant", "Beta")]), "legacy");
    assert_eq!(s.who("GET", "/cs", &[("x-tenant", "BETA")]), "legacy");
    assert_eq!(s.who("GET", "/cs", &[("x-tenant", "betas")]), "legacy");
    assert_eq!(s.who("GET", "/cs", &[("x-tenant", "bet")]), "legacy");
}

#[test]
fn header_regex_must_match_the_whole_value() {
    let s = rules(&[(
        "versioned",
        "{prefix: /rv, headers: {x-version: {regex: 'v[0-9]+'}}}",
    )]);
    for (value, want) in [
        ("v2", "versioned"),
        ("v10", "versioned"),
        ("v2-beta", "legacy"),
        ("xv2", "legacy"),
        ("V2", "legacy"),
        ("v", "legacy"),
    ] {
        assert_eq!(
            s.who("GET", "/rv", &[("x-version", value)]),
            want,
            "x-version: {value}"
        );
    }
    assert_eq!(s.who("GET", "/rv", &[]), "legacy");
}

#[test]
fn header_present_true_and_false() {
    let s = rules(&[
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
    ]);
    assert_eq!(s.who("GET", "/p", &[("x-debug", "1")]), "debug-on");
    assert_eq!(s.who("GET", "/p", &[("X-Debug", "no")]), "debug-on");
    assert_eq!(s.who("GET", "/p", &[("x-debug", "")]), "debug-on");
    assert_eq!(s.who("GET", "/p", &[]), "debug-off");
    assert_eq!(s.who("GET", "/p", &[("x-other", "1")]), "debug-off");
    assert_eq!(s.who("GET", "/q/1", &[]), "only-absent");
    assert_eq!(s.who("GET", "/q/1", &[("x-debug", "1")]), "legacy");
}

// ---------------------------------------------------------------------------------------
// 7. Unmatched requests
// ---------------------------------------------------------------------------------------

#[test]
fn unmatched_request_goes_to_legacy_under_route_default() {
    let s = rules(&[
        ("orders", "{prefix: /api/orders, methods: [GET]}"),
        ("item", "{path: '/api/items/{id}'}"),
    ]);
    assert_eq!(
        s.decision("GET", "/nothing/here", &[]),
        ("default".to_string(), Side::Legacy)
    );
    assert_eq!(s.get("/nothing/here"), "legacy");
    assert_eq!(s.get("/"), "legacy");
    assert_eq!(s.who("POST", "/api/orders/1", &[]), "legacy");
    assert_eq!(s.get("/api/orders/1"), "orders");
}

// ---------------------------------------------------------------------------------------
// 8. The gateway decides as the table does
// ---------------------------------------------------------------------------------------

/// A gateway whose routes each have their own service (and upstream) of the same name.
struct Setup {
    gw: Gateway,
    legacy: Upstream,
    routes: Vec<Upstream>,
}

impl Setup {
    async fn start(rules: &[(&'static str, &str)]) -> Setup {
        let legacy = Upstream::start("legacy").await;
        let mut routes = Vec::new();
        for &(name, _) in rules {
            routes.push(Upstream::start(name).await);
        }
        let yaml = routes_yaml(&legacy.url(), rules, |i| routes[i].url());
        let gw = Gateway::start(&yaml).await;
        Setup { gw, legacy, routes }
    }

    fn counts(&self) -> Vec<(&'static str, usize)> {
        std::iter::once(&self.legacy)
            .chain(&self.routes)
            .map(|u| (u.name, u.count()))
            .collect()
    }

    /// Sends a request (raw bytes, so the target and the header names go as written) and
    /// returns the name of the upstream that answered it, checking that exactly that
    /// upstream received it.
    async fn who(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> String {
        let before = self.counts();
        let fields: String = headers
            .iter()
            .map(|(n, v)| format!("{n}: {v}\r\n"))
            .collect();
        let (status, head, body) = raw(
            self.gw.running.public_addr,
            &format!("{method} {target} HTTP/1.1\r\nHost: t\r\n{fields}Connection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 200, "{method} {target} {headers:?}: {head}");
        let upstream = head
            .lines()
            .find_map(|l| l.strip_prefix("x-upstream: "))
            .unwrap_or_else(|| panic!("no x-upstream: {head}"))
            .to_string();
        // HEAD has no body; everything else carries the upstream's name as its body.
        if method != "HEAD" {
            assert_eq!(String::from_utf8_lossy(&body), upstream);
        }
        let changed: Vec<&str> = before
            .iter()
            .zip(self.counts())
            .filter(|((_, b), (_, a))| a != b)
            .map(|((n, _), _)| *n)
            .collect();
        assert_eq!(
            changed,
            vec![upstream.as_str()],
            "{method} {target} {headers:?}: exactly the answering upstream received it"
        );
        upstream
    }
}

/// A request: method, target, headers.
type Ask<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

/// Every tier, with methods and headers that fall through, on one gateway: each request is
/// served by the upstream of the route the table names (legacy for none), and counted in
/// `strangler_requests_total` under that route and side, and nowhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_routes_as_the_table_decides() {
    let rules_list: [(&'static str, &str); 14] = [
        ("by-regex", r"{regex: '/api/(orders|items)/[0-9]+'}"),
        ("by-prefix", "{prefix: /api/orders}"),
        ("by-template", "{path: '/api/orders/{id}'}"),
        ("by-exact", "{path: /api/orders/42}"),
        ("m-exact-get", "{path: /m/orders/42, methods: [GET]}"),
        (
            "m-tpl-put",
            "{path: '/m/orders/{id}', methods: [PUT, HEAD]}",
        ),
        ("m-prefix-post", "{prefix: /m/orders, methods: [POST]}"),
        ("m-regex-delete", "{regex: '/m/.*', methods: [DELETE]}"),
        ("h-exact-beta", "{path: /h/1, headers: {x-tenant: beta}}"),
        (
            "h-tpl-silver",
            "{path: '/h/{id}', headers: {x-plan: silver}}",
        ),
        (
            "h-prefix-plan",
            "{prefix: /h, headers: {x-plan: {present: true}}}",
        ),
        ("h-regex-any", "{regex: '/h/[0-9]+'}"),
        ("files", "{path: '/files/{*rest}'}"),
        (
            "versioned",
            "{prefix: /rv, headers: {x-version: {regex: 'v[0-9]+'}}}",
        ),
    ];
    let table = rules(&rules_list);
    let s = Setup::start(&rules_list).await;
    let requests: &[Ask] = &[
        ("GET", "/api/orders/42", &[]),
        ("POST", "/api/orders/42", &[]),
        // Dot segments and repeated slashes: the canonical path is the exact one.
        ("GET", "/api/x/..//orders/./42", &[]),
        ("GET", "/api/orders/43", &[]),
        ("GET", "/api/orders/43/items", &[]),
        ("GET", "/api/orders", &[]),
        ("GET", "/api/ordersX", &[]),
        ("GET", "/api/items/7", &[]),
        ("GET", "/m/orders/42", &[]),
        ("PUT", "/m/orders/42", &[]),
        ("HEAD", "/m/orders/42", &[]),
        ("POST", "/m/orders/42", &[]),
        ("DELETE", "/m/orders/42", &[]),
        ("PATCH", "/m/orders/42", &[]),
        ("GET", "/m/orders/43", &[]),
        ("PUT", "/m/orders/43", &[]),
        ("GET", "/h/1", &[("x-tenant", "beta")]),
        // Header names in any case, on the wire.
        ("GET", "/h/1", &[("X-TENANT", "beta")]),
        (
            "GET",
            "/h/1",
            &[("x-tenant", "alpha"), ("x-plan", "silver")],
        ),
        ("GET", "/h/1", &[("x-plan", "gold")]),
        ("GET", "/h/1", &[("x-tenant", "Beta")]),
        ("GET", "/h/1", &[]),
        ("GET", "/h/x/y", &[]),
        ("GET", "/files/a/b", &[]),
        ("GET", "/files/", &[]),
        ("GET", "/files", &[]),
        ("GET", "/rv", &[("x-version", "v2")]),
        ("GET", "/rv", &[("x-version", "v2-beta")]),
        ("GET", "/nothing/here", &[]),
    ];
    let mut want_counts: BTreeMap<(String, &str, &str), f64> = BTreeMap::new();
    for &(method, target, headers) in requests {
        let want = table.who(method, target, headers);
        let got = s.who(method, target, headers).await;
        assert_eq!(got, want, "{method} {target} {headers:?}");
        let (label, side) = table.decision(method, target, headers);
        *want_counts
            .entry((label, side.as_str(), method))
            .or_default() += 1.0;
    }
    // The path goes upstream as sent.
    let files = s.routes.iter().find(|u| u.name == "files").unwrap();
    assert_eq!(files.last().target, "/files/");
    // Not vacuous: every route and legacy served some of them.
    for (name, n) in s.counts() {
        assert!(n > 0, "{name} served nothing");
    }

    // Counted as decided, and nothing else: a request is counted when its response body
    // ends, which may be a moment after the client has read it.
    let series = |(label, side, method): &(String, &str, &str)| {
        format!(
            r#"strangler_requests_total{{code="200",method="{method}",route="{label}",side="{side}"}}"#
        )
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = s.gw.metrics().await;
        let agree = want_counts
            .iter()
            .all(|(k, v)| metric(&m, &series(k)) == Some(*v));
        let total: f64 = m
            .lines()
            .filter(|l| l.starts_with("strangler_requests_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
        if agree && total == requests.len() as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "want {want_counts:?}, {total} in all\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
