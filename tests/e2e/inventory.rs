//! The carve-out map (docs/inventory.md): templates learned from generated traffic match the
//! expected set exactly, the map stays bounded under a flood of random paths, near misses of
//! each kind are found, and `strangler inventory --from-log` reads nginx, JSON and gzip logs,
//! with suggestions `strangler check` accepts.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use strangler::inventory::{
    Inventory, Limits, NearMissKind, Sample, near_misses, near_misses_with,
};
use strangler::{Config, PathParameters};

const BIN: &str = env!("CARGO_BIN_EXE_strangler");

fn sample<'a>(method: &'a str, path: &'a str) -> Sample<'a> {
    Sample {
        method,
        path,
        status: 200,
        latency: Duration::from_millis(4),
        route: "default",
        new_side: false,
        at_unix_ms: 1_706_695_200_000,
    }
}

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn random_from(rng: &mut fastrand::Rng, alphabet: &[u8], len: usize) -> String {
    (0..len)
        .map(|_| alphabet[rng.usize(..alphabet.len())] as char)
        .collect()
}

fn uuid(rng: &mut fastrand::Rng) -> String {
    let h = random_from(rng, b"0123456789abcdef", 32);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A lower-case word of 4 to 9 letters (a user name, a slug's part).
fn word(rng: &mut fastrand::Rng) -> String {
    let len = rng.usize(4..10);
    random_from(rng, b"abcdefghijklmnopqrstuvwxyz", len)
}

/// An endpoint family: its method, the template it should be learned as, how many requests
/// it gets, and how a concrete path is made.
struct Family {
    method: &'static str,
    template: String,
    requests: usize,
    path: Box<dyn Fn(&mut fastrand::Rng) -> String>,
}

/// A family: `f(method, template, requests, path)`.
fn f(
    method: &'static str,
    template: &str,
    requests: usize,
    path: impl Fn(&mut fastrand::Rng) -> String + 'static,
) -> Family {
    Family {
        method,
        template: template.to_string(),
        requests,
        path: Box::new(path),
    }
}

/// Resource names of a large API, beside those of [`families`]: with them, more than 16
/// collections under `/api/v1`, which stay literal.
const RESOURCES: [(&str, &str); 17] = [
    ("accounts", "account_id"),
    ("addresses", "address_id"),
    ("carts", "cart_id"),
    ("categories", "category_id"),
    ("coupons", "coupon_id"),
    ("deliveries", "delivery_id"),
    ("events", "event_id"),
    ("groups", "group_id"),
    ("messages", "message_id"),
    ("notes", "note_id"),
    ("payments", "payment_id"),
    ("refunds", "refund_id"),
    ("shipments", "shipment_id"),
    ("subscriptions", "subscription_id"),
    ("tags", "tag_id"),
    ("teams", "team_id"),
    ("webhooks", "webhook_id"),
];

fn families() -> Vec<Family> {
    let mut v = families_by_hand();
    for (res, id) in RESOURCES {
        v.push(f("GET", &format!("/api/v1/{res}"), 30, move |_| {
            format!("/api/v1/{res}")
        }));
        v.push(f("GET", &format!("/api/v1/{res}/{{{id}}}"), 60, move |r| {
            format!("/api/v1/{res}/{}", r.u32(1..100_000))
        }));
    }
    v
}

fn families_by_hand() -> Vec<Family> {
    vec![
        f("GET", "/", 300, |_| "/".into()),
        f("GET", "/healthz", 200, |_| "/healthz".into()),
        f("GET", "/api/v1/users", 400, |_| "/api/v1/users".into()),
        f("GET", "/api/v2/users", 150, |_| "/api/v2/users".into()),
        f("POST", "/api/v1/users", 80, |_| "/api/v1/users".into()),
        f("GET", "/api/v1/users/me", 250, |_| {
            "/api/v1/users/me".into()
        }),
        f("GET", "/api/v1/users/{user_id}", 900, |r| {
            format!("/api/v1/users/{}", r.u32(1..1_000_000))
        }),
        f("DELETE", "/api/v1/users/{user_id}", 20, |r| {
            format!("/api/v1/users/{}", r.u32(1..1_000_000))
        }),
        f("GET", "/api/v1/users/{user_id}/orders", 500, |r| {
            format!("/api/v1/users/{}/orders", r.u32(1..1_000_000))
        }),
        f("POST", "/api/v1/users/{user_id}/orders", 120, |r| {
            format!("/api/v1/users/{}/orders", r.u32(1..1_000_000))
        }),
        f(
            "GET",
            "/api/v1/users/{user_id}/orders/{order_id}",
            600,
            |r| {
                format!(
                    "/api/v1/users/{}/orders/{}",
                    r.u32(1..1_000_000),
                    r.u32(1..1_000_000)
                )
            },
        ),
        f("GET", "/api/v1/tables/{table_id}", 300, |r| {
            format!("/api/v1/tables/{}", uuid(r))
        }),
        f("GET", "/api/v1/tables/{table_id}/rows/{row_id}", 300, |r| {
            format!("/api/v1/tables/{}/rows/{}", uuid(r), r.u32(1..5000))
        }),
        f("GET", "/api/v1/customers/{customer_id}", 400, |r| {
            format!("/api/v1/customers/cus_{}", random_from(r, BASE62, 14))
        }),
        f(
            "GET",
            "/api/v1/customers/{customer_id}/invoices",
            200,
            |r| {
                format!(
                    "/api/v1/customers/cus_{}/invoices",
                    random_from(r, BASE62, 14)
                )
            },
        ),
        f("GET", "/api/v1/invoices/{invoice_id}/pdf", 150, |r| {
            format!("/api/v1/invoices/in_{}/pdf", r.u32(1..100_000))
        }),
        f("GET", "/reports/{date}/summary", 120, |r| {
            format!(
                "/reports/2024-{:02}-{:02}/summary",
                r.u32(1..13),
                r.u32(1..29)
            )
        }),
        f("GET", "/files/{file_id}", 200, |r| {
            format!("/files/{}", random_from(r, b"0123456789abcdef", 40))
        }),
        f("GET", "/password-reset/{token}", 60, |r| {
            format!("/password-reset/{}1a", random_from(r, BASE62, 30))
        }),
        f("GET", "/org/onboardingStatus", 90, |_| {
            "/org/onboardingStatus".into()
        }),
        f("GET", "/org/settings", 90, |_| "/org/settings".into()),
        f("PUT", "/org/settings", 30, |_| "/org/settings".into()),
        f("GET", "/org/members", 90, |_| "/org/members".into()),
        // Literals by number: user names and slugs, each seen once or twice.
        f("GET", "/api/v1/profiles/{profile_id}", 300, |r| {
            format!("/api/v1/profiles/{}", word(r))
        }),
        f("GET", "/shop/products/{product_id}/reviews", 300, |r| {
            format!("/shop/products/{}-{}/reviews", word(r), word(r))
        }),
        f("GET", "/api/v1/search", 100, |r| {
            format!("/api/v1/search?q={}", word(r))
        }),
    ]
}

/// Requests of every family, shuffled, with the template each should land in.
fn traffic(seed: u64) -> Vec<(&'static str, String, String)> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = Vec::new();
    for f in families() {
        for _ in 0..f.requests {
            out.push((f.method, (f.path)(&mut rng), f.template.clone()));
        }
    }
    rng.shuffle(&mut out);
    out
}

#[test]
fn templates_from_generated_traffic_match_the_expected_set() {
    let expected: BTreeSet<String> = families()
        .iter()
        .map(|f| format!("{} {}", f.method, f.template))
        .collect();
    let mut accuracies = Vec::new();
    for seed in [1, 2, 3, 42, 2024] {
        let reqs = traffic(seed);
        let mut inv = Inventory::new(Limits::default());
        for (m, p, _) in &reqs {
            inv.observe(&sample(m, p));
        }
        let map = inv.map();
        let learned: BTreeSet<String> = map.templates.iter().map(|t| t.key()).collect();
        let missing: Vec<&String> = expected.difference(&learned).collect();
        let extra: Vec<&String> = learned.difference(&expected).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "seed {seed}: missing {missing:?}, extra {extra:?}"
        );
        // Every request in the template it belongs to.
        for f in families() {
            let t = map.get(f.method, &f.template).unwrap();
            assert_eq!(t.requests, f.requests as u64, "seed {seed}: {}", f.template);
        }
        assert_eq!(map.other.requests, 0);
        let right: u64 = map
            .templates
            .iter()
            .filter(|t| expected.contains(&t.key()))
            .map(|t| t.requests)
            .sum();
        accuracies.push(right as f64 / reqs.len() as f64);
        // Examples keep no query string.
        let search = map.get("GET", "/api/v1/search").unwrap();
        assert_eq!(search.examples, vec!["/api/v1/search".to_string()]);
    }
    println!(
        "learning accuracy: {} families, templates exact on {} seeds, requests in the right template: {:?}",
        families().len(),
        accuracies.len(),
        accuracies
    );
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn a_million_random_paths_stay_under_the_caps() {
    let limits = Limits::default();
    let mut inv = Inventory::new(limits);
    let mut rng = fastrand::Rng::with_seed(7);
    let before = rss_kib();
    for i in 0..1_000_000u32 {
        let a = random_from(&mut rng, BASE62, 12);
        let len = rng.usize(1..24);
        let b = random_from(&mut rng, BASE62, len);
        let path = match i % 4 {
            // The hostile-input shape: /x/<random>/<random>.
            0 | 1 => format!("/x/{a}/{b}"),
            // Random words at random depths, under random first segments.
            2 => {
                let depth = rng.usize(1..8);
                (0..depth).map(|_| format!("/{}", word(&mut rng))).collect()
            }
            _ => format!("/{a}/{b}/{}", word(&mut rng)),
        };
        let method = ["GET", "POST", "PUT"][rng.usize(..3)];
        inv.observe(&sample(method, &path));
        if i % 100_000 == 0 {
            assert!(inv.nodes() <= limits.max_nodes(), "{} nodes", inv.nodes());
            assert!(inv.templates() <= limits.max_templates);
        }
    }
    let after = rss_kib();
    let map = inv.map();
    assert!(inv.nodes() <= limits.max_nodes(), "{} nodes", inv.nodes());
    assert!(map.templates.len() <= limits.max_templates);
    assert_eq!(map.totals.requests, 1_000_000);
    assert!(
        map.get("GET", "/x/{id}/{id_2}").is_some(),
        "{:?}",
        &map.templates[..3]
    );
    println!(
        "1,000,000 random paths: {} nodes, {} templates, {} requests in other; RSS {before:?} KiB -> {after:?} KiB",
        inv.nodes(),
        map.templates.len(),
        map.other.requests
    );
}

#[test]
fn templates_in_other_past_the_cap_and_merge_across_gateways() {
    let mut a = Inventory::new(Limits {
        max_templates: 2,
        examples: 2,
    });
    let mut b = Inventory::new(Limits::default());
    for p in ["/a/1", "/a/2", "/b", "/c", "/d"] {
        a.observe(&sample("GET", p));
    }
    for p in ["/a/3", "/c"] {
        let mut s = sample("GET", p);
        s.new_side = true;
        s.route = "c-route";
        b.observe(&s);
    }
    let mut m = a.map();
    assert_eq!(m.templates.len(), 2);
    assert_eq!((m.other.requests, m.other.over_cap), (2, 2));
    m.merge(&b.map());
    assert_eq!(m.totals.requests, 7);
    let t = m.get("GET", "/a/{id}").unwrap();
    assert_eq!((t.requests, t.new_requests), (3, 1));
    assert_eq!(t.routes.len(), 2);
    let p = m.progress();
    assert_eq!(
        (
            p.templates_carved,
            p.templates_partly,
            p.templates_legacy_only
        ),
        (1, 1, 1)
    );
}

const NEAR_ROUTES: &str = "\
listen: 127.0.0.1:8080
legacy: { url: http://127.0.0.1:9001 }
services:
  orders: { url: http://127.0.0.1:9002 }
routes:
  - name: orders-read
    match: { path: \"/api/orders/{id}\", methods: [GET, HEAD] }
    service: orders
  - name: catalog
    match: { path: /api/catalog }
    service: orders
  - name: items
    match: { path: \"/api/items/{id}\" }
    service: orders
";

fn config(text: &str) -> Config {
    Config::parse(text, Path::new("routes.yaml")).unwrap()
}

#[test]
fn near_misses_of_each_kind() {
    let cfg = config(NEAR_ROUTES);
    let table = cfg.compile().unwrap();
    let mut inv = Inventory::new(Limits::default());
    for (m, p) in [
        ("GET", "/API/Orders/7"),
        ("POST", "/api/orders/7"),
        ("GET", "/api/catalog/"),
        ("GET", "/api/items;jsessionid=abc/5"),
        ("GET", "/api/orders/8"),
        ("GET", "/api/elsewhere"),
    ] {
        inv.observe(&sample(m, p));
    }
    let map = inv.map();
    let found = |mode| -> BTreeSet<(String, String, NearMissKind)> {
        near_misses_with(&map, &table, mode)
            .into_iter()
            .map(|n| (format!("{} {}", n.method, n.template), n.route, n.kind))
            .collect()
    };
    let literal = found(PathParameters::Literal);
    let expect = |t: &str, r: &str, k| (t.to_string(), r.to_string(), k);
    assert_eq!(
        literal,
        BTreeSet::from([
            expect(
                "GET /API/Orders/{order_id}",
                "orders-read",
                NearMissKind::Case
            ),
            expect(
                "POST /api/orders/{order_id}",
                "orders-read",
                NearMissKind::Method
            ),
            expect("GET /api/catalog/", "catalog", NearMissKind::TrailingSlash),
            expect(
                "GET /api/items;jsessionid=abc/{id}",
                "items",
                NearMissKind::PathParameter
            ),
        ])
    );
    // A refused ;parameter is a near miss too; the default mode routes it without them.
    assert!(found(PathParameters::Refuse).contains(&expect(
        "GET /api/items;jsessionid=abc/{id}",
        "items",
        NearMissKind::PathParameter
    )));
    let default = near_misses(&map, &table);
    assert!(
        default
            .iter()
            .all(|n| n.kind != NearMissKind::PathParameter)
    );
    assert_eq!(default.len(), 3);
    let case = default
        .iter()
        .find(|n| n.kind == NearMissKind::Case)
        .unwrap();
    assert_eq!(case.taken_by, "default");
    assert_eq!(case.variant, "GET /api/orders/7");
    assert!(
        case.reason.starts_with("route orders-read (template /api/orders/{id}) takes GET /api/orders/7 but not GET /API/Orders/7"),
        "{}",
        case.reason
    );
    let method = default
        .iter()
        .find(|n| n.kind == NearMissKind::Method)
        .unwrap();
    assert!(
        method
            .reason
            .contains("POST is not in its methods (it takes GET, HEAD)"),
        "{}",
        method.reason
    );
}

// ---------------------------------------------------------------------------------------
// strangler inventory --from-log
// ---------------------------------------------------------------------------------------

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("STRANGLER_ADMIN_TOKEN")
        .output()
        .expect("the strangler binary runs")
}

fn show(o: &Output) -> String {
    format!(
        "status: {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json_of(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", show(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(o)))
}

/// `(method template, requests, errors)` of every template of a `--json` answer.
fn templates_of(v: &serde_json::Value) -> BTreeSet<(String, u64, u64)> {
    v["map"]["templates"]
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
                t["errors"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// An nginx access log in the combined format with `$request_time` appended: users by id,
/// their orders, a few literals; two malformed lines.
fn nginx_log() -> String {
    let mut s = String::new();
    for i in 0..30 {
        let status = if i % 10 == 0 { 502 } else { 200 };
        s.push_str(&format!(
            "10.1.2.{i} - - [31/Jan/2024:10:{:02}:00 +0100] \"GET /api/users/{} HTTP/1.1\" {status} 812 \"https://shop.example/\" \"Mozilla/5.0 (X11; Linux x86_64)\" 0.0{}\n",
            i,
            1000 + i * 7,
            i % 10
        ));
    }
    for i in 0..12 {
        s.push_str(&format!(
            "10.1.2.9 - alice [31/Jan/2024:11:00:{i:02} +0100] \"POST /api/users/{}/orders?source=web HTTP/1.1\" 201 90 \"-\" \"curl/8.5.0\" 0.120\n",
            2000 + i
        ));
    }
    for _ in 0..5 {
        s.push_str("10.1.2.9 - - [31/Jan/2024:11:30:00 +0100] \"GET /org/onboardingStatus HTTP/1.1\" 200 12 \"-\" \"curl/8.5.0\" 0.003\n");
    }
    s.push_str("this is not a log line\n");
    s.push_str("10.1.2.9 - - [31/Jan/2024:11:30:00 +0100] \"-\" 400 0 \"-\" \"-\" 0.000\n");
    s
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn from_an_nginx_combined_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = write(dir.path(), "access.log", nginx_log().as_bytes());
    let v = json_of(&run(&[
        "inventory",
        "--from-log",
        log.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(
        templates_of(&v),
        BTreeSet::from([
            ("GET /api/users/{user_id}".to_string(), 30, 3),
            ("POST /api/users/{user_id}/orders".to_string(), 12, 0),
            ("GET /org/onboardingStatus".to_string(), 5, 0),
        ])
    );
    let src = &v["sources"][0];
    assert_eq!(src["lines"], 49);
    assert_eq!(src["requests"], 47);
    assert_eq!(src["malformed"], 2);
    assert_eq!(src["first_malformed"][0]["line"], 48);
    assert_eq!(src["first_malformed"][0]["text"], "this is not a log line");
    assert_eq!(src["first_malformed"][1]["why"], "no request line");
    let users = &v["map"]["templates"][0];
    // 10:00+01:00 is 09:00Z.
    assert_eq!(users["first_seen_ms"], 1_706_691_600_000u64);
    assert!(users["p99_ms"].as_f64().unwrap() >= 80.0, "{users}");
    let orders = v["map"]["templates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["method"] == "POST")
        .unwrap();
    assert!(
        orders["examples"][0]
            .as_str()
            .unwrap()
            .starts_with("/api/users/20")
    );
    assert!(!orders["examples"][0].as_str().unwrap().contains('?'));
    assert_eq!(v["progress"]["templates_legacy_only"], 3);

    // The table says the same, and quotes the malformed lines.
    let o = run(&["inventory", "--from-log", log.to_str().unwrap()]);
    assert!(o.status.success(), "{}", show(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("49 lines, 47 requests, 2 malformed"),
        "{text}"
    );
    assert!(
        text.contains("line 48: no [time]: \"this is not a log line\""),
        "{text}"
    );
    assert!(text.contains("GET     /api/users/{user_id}"), "{text}");

    // CSV, by errors.
    let o = run(&[
        "inventory",
        "--from-log",
        log.to_str().unwrap(),
        "--csv",
        "--sort",
        "errors",
        "--limit",
        "1",
    ]);
    assert!(o.status.success(), "{}", show(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[1].starts_with("GET,/api/users/{user_id},30,3,"),
        "{text}"
    );
}

/// Lines of the gateway's own JSON access log, with its other log lines among them.
fn gateway_log() -> String {
    let mut s = String::new();
    s.push_str("{\"timestamp\":\"2024-01-31T10:00:00Z\",\"level\":\"INFO\",\"fields\":{\"message\":\"listening\"}}\n");
    for i in 0..20u64 {
        let (route, side) = if i % 4 == 0 {
            ("orders-read", "new")
        } else {
            ("orders-read", "legacy")
        };
        s.push_str(&format!(
            "{{\"ts_ms\":{},\"kind\":\"access\",\"request_id\":\"r{i}\",\"method\":\"GET\",\"path\":\"/api/orders/{}\",\"status\":200,\"duration_ms\":{}.250,\"route\":\"{route}\",\"side\":\"{side}\",\"reason\":\"sticky\",\"bytes_in\":0,\"bytes_out\":10,\"upstream\":\"127.0.0.1:9002\"}}\n",
            1_706_695_200_000 + i * 1000,
            100 + i,
            i + 1
        ));
    }
    for i in 0..6u64 {
        s.push_str(&format!(
            "{{\"ts_ms\":{},\"kind\":\"access\",\"request_id\":\"d{i}\",\"method\":\"GET\",\"path\":\"/api/catalog/{}\",\"status\":500,\"duration_ms\":3.000,\"route\":\"default\",\"side\":\"legacy\",\"reason\":\"unmatched\",\"bytes_in\":0,\"bytes_out\":10,\"upstream\":\"127.0.0.1:9001\",\"error\":\"upstream\"}}\n",
            1_706_695_300_000 + i,
            uuid_fixed(i)
        ));
    }
    s.push_str("{\"ts_ms\":1,\"kind\":\"access\",\"method\":\"GET\"\n");
    s
}

fn uuid_fixed(i: u64) -> String {
    format!("3f2c1a9e-7b4d-4c1e-9a2b-{:012x}", 0xabc000 + i)
}

#[test]
fn from_the_gateways_json_log_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let plain = write(dir.path(), "gateway.log", gateway_log().as_bytes());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(nginx_log().as_bytes()).unwrap();
    // Two gzip members, as rotated logs concatenated are.
    let mut bytes = gz.finish().unwrap();
    let mut gz2 = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz2.write_all(b"10.1.2.9 - - [31/Jan/2024:12:00:00 +0100] \"GET /org/onboardingStatus HTTP/1.1\" 200 12 \"-\" \"curl/8.5.0\" 0.003\n")
        .unwrap();
    bytes.extend(gz2.finish().unwrap());
    let gzipped = write(dir.path(), "access.log.1.gz", &bytes);

    let v = json_of(&run(&[
        "inventory",
        "--from-log",
        plain.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(
        templates_of(&v),
        BTreeSet::from([
            ("GET /api/orders/{order_id}".to_string(), 20, 0),
            ("GET /api/catalog/{catalog_id}".to_string(), 6, 6),
        ])
    );
    let orders = &v["map"]["templates"][0];
    assert_eq!(orders["new_requests"], 5);
    assert_eq!(orders["routes"][0]["route"], "orders-read");
    assert_eq!(orders["routes"][0]["requests"], 20);
    assert_eq!(orders["first_seen_ms"], 1_706_695_200_000u64);
    assert_eq!(orders["last_seen_ms"], 1_706_695_219_000u64);
    let src = &v["sources"][0];
    assert_eq!(
        (src["lines"].as_u64(), src["requests"].as_u64()),
        (Some(28), Some(26))
    );
    assert_eq!(
        (src["skipped"].as_u64(), src["malformed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(v["progress"]["templates_partly"], 1);
    assert_eq!(v["progress"]["new_requests"], 5);

    let v = json_of(&run(&[
        "inventory",
        "--from-log",
        gzipped.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(v["sources"][0]["gzip"], true);
    assert_eq!(
        templates_of(&v),
        BTreeSet::from([
            ("GET /api/users/{user_id}".to_string(), 30, 3),
            ("POST /api/users/{user_id}/orders".to_string(), 12, 0),
            ("GET /org/onboardingStatus".to_string(), 6, 0),
        ])
    );

    // Both at once, learned together.
    let v = json_of(&run(&[
        "inventory",
        "--from-log",
        plain.to_str().unwrap(),
        gzipped.to_str().unwrap(),
        "--json",
        "--min-requests",
        "10",
    ]));
    assert_eq!(v["sources"].as_array().unwrap().len(), 2);
    assert_eq!(v["map"]["totals"]["requests"], 26 + 48);
    assert_eq!(v["map"]["templates"].as_array().unwrap().len(), 3);

    // A file that is not there is an error, not an empty map.
    let o = run(&["inventory", "--from-log", "/nonexistent/access.log"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
}

const ROUTES: &str = "\
listen: 127.0.0.1:8080
legacy: { url: http://127.0.0.1:9001 }
services:
  orders: { url: http://127.0.0.1:9002 }
  users: { url: http://127.0.0.1:9003 }
routes:
  - name: orders-write
    match: { prefix: /api/users, methods: [POST] }
    service: orders
    percent: 0
  - name: org-onboarding
    match: { path: /Org/onboardingStatus }
    service: users
routes_end_marker: ~
";

#[test]
fn suggestions_pass_check_and_say_where_they_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let log = write(dir.path(), "access.log", nginx_log().as_bytes());
    let routes_text = ROUTES.replace("routes_end_marker: ~\n", "");
    let routes = write(dir.path(), "routes.yaml", routes_text.as_bytes());
    let o = run(&[
        "inventory",
        "--from-log",
        log.to_str().unwrap(),
        "--config",
        routes.to_str().unwrap(),
        "--suggest",
    ]);
    assert!(o.status.success(), "{}", show(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    // Every template is legacy-only: three suggestions, most requests first.
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- name: "))
        .collect();
    assert_eq!(
        names,
        vec![
            "get-api-users-user_id",
            "post-api-users-user_id-orders",
            "get-org-onboardingstatus"
        ],
        "{text}"
    );
    assert!(
        text.contains("path: /api/users/{user_id}\n      methods: [GET, HEAD]"),
        "{text}"
    );
    assert!(text.contains("shadow: { percent: 100 }"), "{text}");
    // The POST is taken today by orders-write (at 0%): flagged, in explain's words.
    assert!(text.contains("# overlap: POST /api/users/20"), "{text}");
    assert!(
        text.contains("is taken today by route orders-write (prefix /api/users)"),
        "{text}"
    );
    // Pasted under `routes:` with a real service, the file passes `strangler check`.
    let pasted = format!(
        "{routes_text}{}",
        text.replace("service: TODO", "service: users")
    );
    let file = write(dir.path(), "pasted.yaml", pasted.as_bytes());
    let o = run(&["check", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}\n{pasted}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("ok (5 routes"),
        "{}",
        show(&o)
    );
    // As it is, with TODO, it does not.
    let file = write(
        dir.path(),
        "todo.yaml",
        format!("{routes_text}{text}").as_bytes(),
    );
    let o = run(&["check", file.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", show(&o));

    // The table with --config: the route each template would take, and the near miss of
    // org-onboarding (another letter case).
    let o = run(&[
        "inventory",
        "--from-log",
        log.to_str().unwrap(),
        "--config",
        routes.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", show(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.contains("orders-write 0%"), "{text}");
    assert!(
        text.contains("GET /org/onboardingStatus (5 requests, case): route org-onboarding"),
        "{text}"
    );
    // By p99, as JSON: the suggestions and near misses are there too.
    let v = json_of(&run(&[
        "inventory",
        "--from-log",
        log.to_str().unwrap(),
        "--config",
        routes.to_str().unwrap(),
        "--suggest",
        "--sort",
        "p99",
        "--json",
    ]));
    assert_eq!(
        v["suggestions"][0]["template"],
        "/api/users/{user_id}/orders"
    );
    let misses: BTreeSet<(String, String)> = v["near_misses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["route"].as_str().unwrap().to_string(),
                m["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // The GETs under /api/users: orders-write takes the path, for POST only.
    assert_eq!(
        misses,
        BTreeSet::from([
            ("org-onboarding".to_string(), "case".to_string()),
            ("orders-write".to_string(), "method".to_string()),
        ])
    );
    assert_eq!(v["config_routes"].as_array().unwrap().len(), 3);
}
