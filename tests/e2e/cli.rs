//! The command line (docs/cli.md, with the routes file's rules and the routing decisions): the real
//! binary, run as a user would.

use std::path::PathBuf;
use std::process::{Command, Output};

use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_strangler");
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// Runs the binary from the repository root (so `routes/example.yaml` resolves).
fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(MANIFEST_DIR)
        .env_remove("STRANGLER_ADMIN_TOKEN")
        .output()
        .expect("the strangler binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "status: {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Writes a routes file into a fresh temporary directory.
fn write_file(text: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// 1-based line and column of the `nth` (0-based) occurrence of `needle` in `text`.
fn locate(text: &str, needle: &str, nth: usize) -> (usize, usize) {
    let (offset, _) = text
        .match_indices(needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("{needle:?} occurs {} times or more", nth + 1));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

// ---------------------------------------------------------------------------------------
// check
// ---------------------------------------------------------------------------------------

/// Nine mistakes at once, one of each kind docs/routes-file.md names. Lines are referred to by content.
const BAD: &str = "\
listen: 127.0.0.1:8080
admin:
  listen: 127.0.0.1:9901
legacy:
  url: http://127.0.0.1:9001
services:
  orders:
    url: http://127.0.0.1:9002
  billing:
    url: ftp://127.0.0.1:9003
colour: blue
routes:
  - name: orders-read
    match:
      path: /api/orders/{id}
    service: orders
    percent: 25
    percent: 30
  - name: pay
    match: { prefix: /api/pay }
    service: payments
    percent: 101
  - name: orders-read
    match:
      prefix: /api/x
    service: orders
  - name: precise
    match:
      prefix: /api/precise
    service: orders
    percent: 12.345
  - name: broken-template
    match:
      path: /api/{id
    service: orders
  - name: broken-regex
    match:
      regex: /invoices/(unclosed
    service: orders
";

#[test]
fn check_reports_every_error_with_position_and_yaml_path() {
    let (_dir, file) = write_file(BAD);
    let out = run(&["check", file.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));

    let f = file.display().to_string();
    // (YAML path, where it is: needle and occurrence, what the message must show)
    let expected: [(&str, &str, usize, &str); 9] = [
        ("services.billing.url", "ftp://127.0.0.1:9003", 0, "ftp://"),
        ("colour", "colour", 0, "colour"),
        ("routes[0].percent", "percent", 1, "percent"),
        ("routes[1].service", "payments", 0, "payments"),
        ("routes[1].percent", "101", 0, "101"),
        ("routes[3].percent", "12.345", 0, "12.345"),
        ("routes[4].match.path", "/api/{id", 0, "/api/{id"),
        (
            "routes[5].match.regex",
            "/invoices/(unclosed",
            0,
            "/invoices/(unclosed",
        ),
        // The duplicate name: the third route (index 2), at its `name` key or value.
        ("routes[2].name", "- name: orders-read", 1, "orders-read"),
    ];

    let mut problems: Vec<String> = Vec::new();
    for (ypath, needle, nth, shown) in expected {
        let (line, col) = locate(BAD, needle, nth);
        // A duplicate route name may point at the `name` key or at its value.
        let places: Vec<String> = if needle.starts_with("- name:") {
            vec![
                format!("{f}:{line}:{}: {ypath}: ", col + 2),
                format!("{f}:{line}:{}: {ypath}: ", col + 8),
            ]
        } else {
            vec![format!("{f}:{line}:{col}: {ypath}: ")]
        };
        let found = text
            .lines()
            .find(|l| places.iter().any(|p| l.contains(p.as_str())));
        match found {
            None => problems.push(format!("no error at {places:?}")),
            Some(l) => {
                if !l.contains(shown) {
                    problems.push(format!("{ypath}: the message does not show {shown:?}: {l}"));
                }
                if !l.contains("allowed") {
                    problems.push(format!(
                        "{ypath}: the message does not say what is allowed: {l}"
                    ));
                }
            }
        }
    }
    let errors = text.lines().filter(|l| l.starts_with("error:")).count();
    if errors != 9 {
        problems.push(format!("{errors} error lines, want 9"));
    }
    if !text.contains("9 error(s)") {
        problems.push("no total of 9 errors".into());
    }
    assert!(
        problems.is_empty(),
        "{}\n\n{}",
        problems.join("\n"),
        show(&out)
    );
}

#[test]
fn check_reports_a_duplicate_route_name_whatever_else_is_wrong_with_the_routes() {
    // The first `a` also names an undefined service: both mistakes are errors of the file,
    // and the duplicate is still at routes[2] (0-based, counting every route).
    let text = format!(
        "{HEAD}  - name: broken
    match: {{ prefix: /b }}
    service: nope
  - name: a
    match: {{ prefix: /a }}
    service: nope
  - name: a
    match: {{ prefix: /c }}
    service: orders
"
    );
    let (_dir, file) = write_file(&text);
    let out = run(&["check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stdout = stdout(&out);
    let f = file.display().to_string();
    for want in [
        format!("{f}:8:14: routes[0].service: "),
        format!("{f}:11:14: routes[1].service: "),
    ] {
        assert!(stdout.contains(&want), "missing {want:?}\n{}", show(&out));
    }
    let (line, _) = locate(&text, "- name: a", 1);
    let dup = stdout
        .lines()
        .find(|l| l.contains("routes[2].name: "))
        .unwrap_or_else(|| panic!("no duplicate-name error at routes[2].name\n{}", show(&out)));
    assert!(
        dup.contains(&format!("{f}:{line}:")) && dup.contains("\"a\""),
        "{}",
        show(&out)
    );
    assert!(stdout.contains("3 error(s)"), "{}", show(&out));
}

#[test]
fn check_positions_are_line_and_column_of_the_file() {
    // Positions worked out by hand from BAD, independently of `locate`.
    let (_dir, file) = write_file(BAD);
    let out = run(&["check", file.to_str().unwrap()]);
    let text = stdout(&out);
    let f = file.display().to_string();
    for want in [
        format!("{f}:10:10: services.billing.url: "),
        format!("{f}:11:1: colour: "),
        format!("{f}:18:5: routes[0].percent: "),
        format!("{f}:22:14: routes[1].percent: "),
        format!("{f}:38:14: routes[5].match.regex: "),
    ] {
        assert!(text.contains(&want), "missing {want:?}\n{}", show(&out));
    }
}

/// Twelve mistakes in the resilience settings, each where no other mistake hides it.
const BAD_RESILIENCE: &str = "\
listen: 127.0.0.1:8080
legacy:
  url: http://127.0.0.1:9001
  breaker: { failures: 3, window: 10s, cooldown: 30s }
services:
  orders:
    urls: [http://127.0.0.1:9002/v1, http://127.0.0.1:9003/v2]
  billing:
    url: http://127.0.0.1:9004
    urls: [http://127.0.0.1:9005]
  stock:
    urls: []
  catalog:
    url: http://127.0.0.1:9006
    balance: fastest
    health: { interval: 5s }
    outlier: { consecutive: 0, ejection: 10s, max_ejected_percent: 150 }
routes:
  - name: orders-read
    match: { prefix: /api/orders }
    service: orders
    fallback: { when: [reset] }
  - name: pay
    match: { prefix: /api/pay }
    service: billing
    fallback: { max_body: 1GiB }
    retries: { attempts: 9 }
  - name: stock
    match: { prefix: /api/stock }
    service: stock
    retries: { when: [5xx] }
  - name: catalog
    match: { prefix: /api/catalog }
    service: catalog
";

#[test]
fn check_reports_every_resilience_mistake_at_once_with_its_yaml_path() {
    let (_dir, file) = write_file(BAD_RESILIENCE);
    let out = run(&["check", file.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let f = file.display().to_string();
    // (YAML path, a text on the line of the mistake, words the message must show)
    let expected: [(&str, &str, &[&str]); 12] = [
        (
            "services.billing.url",
            "url: http://127.0.0.1:9004",
            &["url and urls"],
        ),
        ("services.stock.urls", "urls: []", &["non-empty"]),
        ("services.orders.urls[1]", "/v2]", &["base path", "/v2"]),
        (
            "services.catalog.balance",
            "fastest",
            &["\"fastest\"", "least_connections"],
        ),
        (
            "services.catalog.health.path",
            "interval: 5s",
            &["\"path\""],
        ),
        ("legacy.breaker", "cooldown: 30s", &["breaker on legacy"]),
        (
            "services.catalog.outlier.consecutive",
            "consecutive: 0",
            &["found 0", "1 to 10000"],
        ),
        (
            "services.catalog.outlier.max_ejected_percent",
            "max_ejected_percent: 150",
            &["found 150", "1 to 100"],
        ),
        (
            "routes[0].fallback.when[0]",
            "[reset]",
            &["\"reset\"", "5xx"],
        ),
        (
            "routes[1].fallback.max_body",
            "1GiB",
            &["\"1GiB\"", "64MiB"],
        ),
        (
            "routes[1].retries.attempts",
            "attempts: 9",
            &["found 9", "1 to 5"],
        ),
        (
            "routes[2].retries.when[0]",
            "[5xx]",
            &["\"5xx\"", "connect, reset"],
        ),
    ];
    let mut problems: Vec<String> = Vec::new();
    for (ypath, needle, words) in expected {
        let (line, _) = locate(BAD_RESILIENCE, needle, 0);
        let at = format!(": {ypath}: ");
        match text.lines().find(|l| l.contains(&at)) {
            None => problems.push(format!("no error at {ypath}")),
            Some(l) => {
                if !l.starts_with(&format!("error: {f}:{line}:")) {
                    problems.push(format!("{ypath}: not on line {line}: {l}"));
                }
                for w in words {
                    if !l.contains(w) {
                        problems.push(format!("{ypath}: the message does not show {w:?}: {l}"));
                    }
                }
            }
        }
    }
    let errors = text.lines().filter(|l| l.starts_with("error:")).count();
    if errors != 12 {
        problems.push(format!("{errors} error lines, want 12"));
    }
    if !text.contains("12 error(s)") {
        problems.push("no total of 12 errors".into());
    }
    assert!(
        problems.is_empty(),
        "{}\n\n{}",
        problems.join("\n"),
        show(&out)
    );
}

#[test]
fn check_accepts_the_example_file() {
    let out = run(&["check", "routes/example.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = stdout(&out);
    assert!(
        !text.lines().any(|l| l.starts_with("error")),
        "{}",
        show(&out)
    );
    assert!(
        !text.lines().any(|l| l.starts_with("warning")),
        "{}",
        show(&out)
    );
}

const HEAD: &str = "\
listen: 127.0.0.1:8080
legacy: {url: http://127.0.0.1:9001}
services:
  orders: {url: http://127.0.0.1:9002}
routes:
";

fn warnings(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("warning")).collect()
}

#[test]
fn check_warns_about_a_rule_that_can_never_win() {
    let text = format!(
        "{HEAD}  - name: orders-all
    match: {{ prefix: /api/orders }}
    service: orders
  - name: orders-shadowed
    match: {{ prefix: /api/orders }}
    service: orders
    percent: 50
  - name: orders-get
    match: {{ prefix: /api/orders, methods: [GET] }}
    service: orders
"
    );
    let (_dir, file) = write_file(&text);
    let out = run(&["check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let stdout = stdout(&out);
    let w = warnings(&stdout);
    // orders-shadowed has the same pattern as orders-all, which has no conditions and comes
    // first. orders-get has a condition, so it is tried before orders-all: no warning.
    assert_eq!(w.len(), 1, "{}", show(&out));
    assert!(w[0].contains("orders-shadowed"), "{}", show(&out));
    assert!(!w[0].contains("orders-get"), "{}", show(&out));
    let (line, _) = locate(&text, "- name: orders-shadowed", 0);
    assert!(
        w[0].contains(&format!("{}:{line}:", file.display())),
        "the warning says where the rule is (line {line})\n{}",
        show(&out)
    );
}

#[test]
fn check_warns_about_other_rules_that_can_never_win() {
    let text = format!(
        "{HEAD}  - name: item
    match: {{ path: '/api/items/{{id}}' }}
    service: orders
  - name: item-renamed
    match: {{ path: '/api/items/{{item}}' }}
    service: orders
  - name: get-a
    match: {{ path: /exact, methods: [GET, HEAD] }}
    service: orders
  - name: get-b
    match: {{ path: /exact, methods: [HEAD, GET] }}
    service: orders
  - name: post-c
    match: {{ path: /exact, methods: [POST] }}
    service: orders
"
    );
    let (_dir, file) = write_file(&text);
    let out = run(&["check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let stdout = stdout(&out);
    let w = warnings(&stdout);
    assert_eq!(w.len(), 2, "{}", show(&out));
    assert!(
        w.iter().any(|l| l.contains("\"item-renamed\"")),
        "{}",
        show(&out)
    );
    assert!(w.iter().any(|l| l.contains("\"get-b\"")), "{}", show(&out));
    assert!(!w.iter().any(|l| l.contains("post-c")), "{}", show(&out));
}

// ---------------------------------------------------------------------------------------
// explain
// ---------------------------------------------------------------------------------------

/// What `explain` said: canonical path, winning route, side and the reason for it.
#[derive(Debug)]
struct Explained {
    canonical: String,
    route: String,
    side: String,
    reason: String,
    text: String,
}

fn explain(method: &str, path: &str, headers: &[&str]) -> Explained {
    let mut args = vec!["explain", "routes/example.yaml", method, path];
    for h in headers {
        args.push("-H");
        args.push(h);
    }
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = stdout(&out);
    let field = |label: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label:?} line\n{text}"))
            .trim()
            .to_string()
    };
    let canonical = field("canonical:");
    let route = field("route:")
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    // The side line: `side ... <legacy|new> (<reason>)...`.
    let side_line = text
        .lines()
        .find(|l| l.starts_with("side"))
        .unwrap_or_else(|| panic!("no side line\n{text}"));
    let words: Vec<&str> = side_line.split_whitespace().collect();
    let (side, reason) = words
        .windows(2)
        .find_map(|w| {
            (matches!(w[0], "legacy" | "new") && w[1].starts_with('(')).then(|| {
                (
                    w[0].to_string(),
                    w[1].trim_matches(|c| matches!(c, '(' | ')' | ':' | ',' | ';'))
                        .to_string(),
                )
            })
        })
        .unwrap_or_else(|| panic!("no side and reason in {side_line:?}\n{text}"));
    Explained {
        canonical,
        route,
        side,
        reason,
        text,
    }
}

/// The side a sticky key gets (docs/routing.md): `xxh3_64(cohort + "\0" + key) % 10000 < percent * 100`.
fn sticky_side(cohort: &str, key: &str, percent: u64) -> &'static str {
    let bucket = xxhash_rust::xxh3::xxh3_64(format!("{cohort}\0{key}").as_bytes()) % 10000;
    if bucket < percent * 100 {
        "new"
    } else {
        "legacy"
    }
}

#[test]
fn explain_prints_the_canonical_path_and_winning_route() {
    let e = explain("GET", "/api/orders/../orders/42", &[]);
    assert_eq!(e.canonical, "/api/orders/42", "{}", e.text);
    assert_eq!(e.route, "orders-read", "{}", e.text);
    // 25%, no sticky key on the request: a draw.
    assert_eq!(e.reason, "random", "{}", e.text);

    let e = explain("GET", "/api//orders/./%34%32", &[]);
    assert_eq!(e.canonical, "/api/orders/42", "{}", e.text);
    assert_eq!(e.route, "orders-read", "{}", e.text);

    let e = explain("GET", "/api/billingX/1", &[]);
    assert_eq!(e.route, "default", "{}", e.text);
    assert_eq!(
        (e.side.as_str(), e.reason.as_str()),
        ("legacy", "unmatched")
    );

    let e = explain("GET", "/invoices/12.pdf", &["x-user-id: u1"]);
    assert_eq!(e.route, "invoice-pdf", "{}", e.text);
    assert_eq!(e.side, sticky_side("billing", "u1", 10), "{}", e.text);
    assert_eq!(e.reason, "sticky", "{}", e.text);
}

#[test]
fn explain_percent_settles_0_and_100() {
    let e = explain(
        "GET",
        "/api/orders/42",
        &["x-tenant: beta", "x-user-id: u1"],
    );
    assert_eq!(e.route, "orders-read-beta", "{}", e.text);
    assert_eq!((e.side.as_str(), e.reason.as_str()), ("new", "percent"));

    let e = explain("POST", "/api/orders/42", &["x-user-id: u1"]);
    assert_eq!(e.route, "orders-write", "{}", e.text);
    assert_eq!((e.side.as_str(), e.reason.as_str()), ("legacy", "percent"));

    let e = explain("GET", "/nowhere", &[]);
    assert_eq!(e.route, "default", "{}", e.text);
    assert_eq!(e.side, "legacy", "{}", e.text);
}

#[test]
fn explain_sticky_side_follows_the_key_hash() {
    let mut sides = Vec::new();
    for user in [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
    ] {
        let want = sticky_side("orders", user, 25);
        let e = explain("GET", "/api/orders/42", &[&format!("x-user-id: {user}")]);
        assert_eq!(e.route, "orders-read", "{}", e.text);
        assert_eq!(e.reason, "sticky", "{}", e.text);
        assert_eq!(e.side, want, "user {user}\n{}", e.text);
        sides.push(want);
    }
    assert!(
        sides.contains(&"new") && sides.contains(&"legacy"),
        "{sides:?}"
    );

    // billing: route-level sticky on the `session` cookie, cohort = service name, 50%.
    for session in ["s1", "s2", "s3", "s4"] {
        let e = explain(
            "GET",
            "/api/billing/invoices",
            &[
                &format!("cookie: theme=dark; session={session}"),
                "x-user-id: alice",
            ],
        );
        assert_eq!(e.route, "billing", "{}", e.text);
        assert_eq!(e.reason, "sticky", "{}", e.text);
        assert_eq!(
            e.side,
            sticky_side("billing", session, 50),
            "session {session}\n{}",
            e.text
        );
    }
}

#[test]
fn explain_override_header_wins() {
    // A user whose key puts them on legacy for orders-read.
    let user = [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
    ]
    .into_iter()
    .find(|u| sticky_side("orders", u, 25) == "legacy")
    .unwrap();
    let uid = format!("x-user-id: {user}");
    let e = explain("GET", "/api/orders/42", &[&uid]);
    assert_eq!((e.side.as_str(), e.reason.as_str()), ("legacy", "sticky"));

    let e = explain("GET", "/api/orders/42", &[&uid, "x-strangler-side: new"]);
    assert_eq!(e.route, "orders-read", "{}", e.text);
    assert_eq!(
        (e.side.as_str(), e.reason.as_str()),
        ("new", "override"),
        "{}",
        e.text
    );

    // Over percent 0 and percent 100 too, either way.
    let e = explain("POST", "/api/orders/42", &["x-strangler-side: new"]);
    assert_eq!(e.route, "orders-write", "{}", e.text);
    assert_eq!(
        (e.side.as_str(), e.reason.as_str()),
        ("new", "override"),
        "{}",
        e.text
    );
    let e = explain(
        "GET",
        "/api/orders/42",
        &["x-tenant: beta", "X-Strangler-Side: legacy"],
    );
    assert_eq!(e.route, "orders-read-beta", "{}", e.text);
    assert_eq!(
        (e.side.as_str(), e.reason.as_str()),
        ("legacy", "override"),
        "{}",
        e.text
    );
}

/// An unknown service is told which services the file defines, also when the ones it
/// defines have errors of their own (an invalid URL does not make a service undefined).
#[test]
fn check_names_the_services_defined_when_a_route_names_another() {
    let (_dir, file) = write_file(
        "listen: 127.0.0.1:8080\nlegacy: {url: http://127.0.0.1:9001}\nservices:\n  orders: {url: ftp://x}\n  billing: {url: http://127.0.0.1:9003}\nroutes:\n  - name: a\n    match: {prefix: /a}\n    service: payments\n",
    );
    let out = run(&["check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.contains("routes[0].service"))
        .unwrap_or_else(|| panic!("no error about the service\n{text}"));
    assert!(line.contains("unknown service \"payments\""), "{line}");
    assert!(
        line.contains("orders") && line.contains("billing"),
        "{line}"
    );
    assert!(!line.contains("none are defined"), "{line}");
}

/// Template braces inside a flow mapping end the mapping: YAML's own message is cryptic,
/// so `check` says what to do.
#[test]
fn check_hints_at_quoting_a_template_in_a_flow_mapping() {
    let (_dir, file) = write_file(
        "listen: 127.0.0.1:8080\nlegacy: {url: http://127.0.0.1:9001}\nservices:\n  orders: {url: http://127.0.0.1:9002}\nroutes:\n  - name: a\n    match: { path: /api/orders/{id}, methods: [GET, HEAD] }\n    service: orders\n",
    );
    let out = run(&["check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let text = stdout(&out);
    assert!(
        text.contains("quoted: path: \"/api/orders/{id}\""),
        "{}",
        show(&out)
    );
    // Quoted as the hint says, the file is valid.
    let (_dir, file) = write_file(
        "listen: 127.0.0.1:8080\nlegacy: {url: http://127.0.0.1:9001}\nservices:\n  orders: {url: http://127.0.0.1:9002}\nroutes:\n  - name: a\n    match: { path: \"/api/orders/{id}\", methods: [GET, HEAD] }\n    service: orders\n",
    );
    let out = run(&["check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
}

// ---------------------------------------------------------------------------------------
// messages
// ---------------------------------------------------------------------------------------

/// A message quotes at most the start of a value, with its size: a 2 MB regex, route name
/// or key does not make a 2 MB error.
#[test]
fn check_cuts_long_quoted_values() {
    let big = "a".repeat(2_000_000);
    // A plain key is at most 1024 characters in YAML.
    let key = "b".repeat(1000);
    let (_dir, file) = write_file(&format!(
        "listen: 127.0.0.1:8080\nlegacy: {{url: http://127.0.0.1:9001}}\nservices:\n  orders: {{url: http://127.0.0.1:9002}}\nroutes:\n  - name: \"{big}\"\n    match: {{regex: \"({big}\"}}\n    service: orders\n  - name: \"{big}\"\n    match: {{prefix: /x}}\n    service: \"{big}\"\n    {key}: 1\n"
    ));
    let out = run(&["check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let text = stdout(&out);
    assert!(text.len() < 4096, "{} bytes of messages", text.len());
    // Each error still says what and where: the invalid regex, the duplicate name, the
    // unknown service and the unknown key, each with the value's start and its size.
    assert!(
        text.contains("an invalid regex (error: unclosed group)"),
        "{text}"
    );
    assert!(text.contains("duplicate route name \"aaaa"), "{text}");
    assert!(text.contains("unknown service \"aaaa"), "{text}");
    assert!(text.contains("unknown key \"bbbb"), "{text}");
    assert!(text.contains("\"… (1000 bytes)"), "{text}");
    assert!(text.contains("\"… (2000001 bytes)"), "{text}");
    assert!(text.contains("\"… (2000000 bytes)"), "{text}");
    // The key's YAML path is cut too.
    assert!(
        text.contains(&format!("routes[1].{}…:", &key[..60])),
        "{text}"
    );
}

/// A second YAML document is refused in the file's own terms, where it starts.
#[test]
fn check_allows_one_document_per_file() {
    let text = "listen: 127.0.0.1:8080\nlegacy: {url: http://127.0.0.1:9001}\nroutes: []\n---\nlisten: 127.0.0.1:8081\n";
    let (_dir, file) = write_file(text);
    let out = run(&["check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let out = stdout(&out);
    assert!(
        out.contains(&format!("{}:4:1:", file.display()))
            && out.contains("a second document starts here")
            && out.contains("one document per file"),
        "{out}"
    );
    assert!(!out.contains("from_str_multiple"), "{out}");
}

/// A file that cannot be read is an error about the whole file: no made-up position.
#[test]
fn check_of_a_file_that_cannot_be_read_names_no_position() {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("missing.yaml");
    let out = run(&["check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!(
            "error: {}: cannot read the routes file:",
            file.display()
        )),
        "{text}"
    );
    assert!(!text.contains(":0:"), "{text}");
}

/// `shift --help` says what each argument is.
#[test]
fn shift_help_describes_every_argument() {
    let out = run(&["shift", "--help"]);
    assert!(out.status.success(), "{}", show(&out));
    let text = stdout(&out);
    for arg in ["<FILE>", "<ROUTE>", "<PERCENT>"] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(arg))
            .unwrap_or_else(|| panic!("no {arg} line in\n{text}"));
        assert!(line.trim_start()[arg.len()..].trim().len() > 10, "{line}");
    }
}

/// `--admin` and `--prometheus` take an address without a scheme as http; anything that
/// is not an http URL is refused with what is wrong, before anything is sent.
#[test]
fn compare_says_what_is_wrong_with_a_base_url() {
    for (given, says) in [
        ("ftp://127.0.0.1:9901", "ftp:// is not spoken"),
        ("https://127.0.0.1:9901", "https:// is not spoken"),
        ("http://", "not a URL"),
        ("127.0.0.1:9901/?x=1", "no query"),
    ] {
        for flag in ["--admin", "--prometheus"] {
            let out = run(&["compare", flag, given]);
            assert_eq!(out.status.code(), Some(2), "{}", show(&out));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(says) && err.contains(flag), "{given}: {err}");
        }
    }
}

/// A gateway that cannot start (its port is taken) still writes what it logged before the
/// error: the file's warnings are not lost with the process.
#[test]
fn serve_that_fails_to_start_still_writes_its_warnings() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (_dir, file) = write_file(&format!(
        "listen: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:0}}\nlegacy: {{url: http://127.0.0.1:9001}}\nservices:\n  orders: {{url: http://127.0.0.1:9002}}\nroutes:\n  - name: first\n    match: {{prefix: /api}}\n    service: orders\n  - name: never\n    match: {{prefix: /api}}\n    service: orders\n"
    ));
    let out = run(&["serve", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&port.to_string()),
        "{}",
        show(&out)
    );
    assert!(stdout(&out).contains("can never win"), "{}", show(&out));
}

// ---------------------------------------------------------------------------------------
// demo
// ---------------------------------------------------------------------------------------

/// A base for the demo's five ports (`--port-base`): five ports in a row that are free
/// now, below the kernel's range for ports given out to `127.0.0.1:0` (32768 and up by
/// default), where every other test listens. Closed again on return: something else may
/// still take one before the demo does, and the demo then says so (see `start_demo`).
fn free_port_base() -> u16 {
    loop {
        let base = fastrand::u16(20_000..32_000);
        let held: Result<Vec<_>, _> = (0..5)
            .map(|k| std::net::TcpListener::bind(("127.0.0.1", base + k)))
            .collect();
        if held.is_ok() {
            return base;
        }
    }
}

/// A running `strangler demo --port-base BASE`, its stdout line by line.
struct Demo {
    child: std::process::Child,
    base: u16,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    /// The next line holding `needle` (30 s at most).
    fn wait_for(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("the demo never printed {needle:?}"),
            }
        }
    }
}

/// `strangler demo --port-base BASE`, spawned.
// Killed and reaped by `Demo`'s `Drop`, or waited for by the caller.
#[allow(clippy::zombie_processes)]
fn spawn_demo(base: u16) -> Demo {
    use std::io::BufRead as _;
    let mut child = Command::new(BIN)
        .args(["demo", "--port-base", &base.to_string()])
        .current_dir(MANIFEST_DIR)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    Demo {
        child,
        base,
        lines: rx,
    }
}

/// A demo on free ports, running: one whose port another process took between
/// `free_port_base` and its start says so and exits, and is tried again elsewhere.
fn start_demo() -> Demo {
    use std::io::Read as _;
    for _ in 0..5 {
        let mut demo = spawn_demo(free_port_base());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match demo
                .lines
                .recv_timeout(std::time::Duration::from_millis(100))
            {
                Ok(line) if line.contains("strangler demo is running") => return demo,
                Ok(_) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the demo did not start"
                    );
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
            }
            // Its stdout ended before it said it runs: it exited, saying why on stderr.
            let status = demo.child.wait().unwrap();
            let mut err = String::new();
            demo.child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert!(
                !status.success() && err.contains("cannot listen on 127.0.0.1:"),
                "the demo stopped: {status:?}\n{err}"
            );
            break;
        }
    }
    panic!("no free ports for the demo in 5 tries");
}

/// A raw GET through the demo's gateway: status, lower-cased head, and the body as JSON.
fn demo_get(port: u16, path: &str, headers: &str) -> (u16, String, serde_json::Value) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {answer:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    (status, head.to_ascii_lowercase(), json)
}

/// The README's first command: `strangler demo` prints where everything is, serves the
/// example routes with its demo upstreams and traffic, reports that traffic, and stops
/// cleanly on SIGTERM. On free ports (`--port-base`), so that it runs beside another demo.
#[test]
fn the_demo_runs_serves_and_stops() {
    let mut demo = start_demo();
    let (gateway, admin) = (demo.base, demo.base + 4);
    demo.wait_for(&format!(
        "gateway:      http://127.0.0.1:{gateway}/api/orders/42"
    ));
    demo.wait_for(&format!("dashboard:    http://127.0.0.1:{admin}/"));
    demo.wait_for(&format!(
        "(or: target/release/strangler compare --admin 127.0.0.1:{admin})"
    ));

    // The admin API, on its port.
    for path in ["/healthz", "/readyz"] {
        let (status, head, _) = demo_get(admin, path, "");
        assert_eq!(status, 200, "{path}: {head}");
    }
    let (status, _, routes) = demo_get(admin, "/admin/routes", "");
    assert_eq!(status, 200, "{routes}");
    assert!(routes.to_string().contains("orders-read"), "{routes}");

    // Through the gateway, forced to each side (the example file's override header), so
    // that which upstream answers is known whatever the plans have done to the percent:
    // the monolith (port + 1) for legacy, the orders service (port + 2) for new. Each demo
    // upstream fails a share of its requests by design (0.5%; the orders service 10% once
    // its plan reaches 25%), and says so in its body: the status is exactly the one its
    // answer gives, 500 for a failure and 200 otherwise.
    let mut served = 0;
    for (side, upstream) in [("legacy", "monolith"), ("new", "orders")] {
        for _ in 0..3 {
            let (status, head, body) = demo_get(
                gateway,
                "/api/orders/42",
                &format!("x-user-id: alice\r\nx-strangler-side: {side}\r\n"),
            );
            assert_eq!(body["served_by"], upstream, "{side}: {head}{body}");
            assert!(
                head.contains(&format!("x-served-by: {upstream}\r\n")),
                "{head}"
            );
            assert!(head.contains("x-request-id: "), "{head}");
            let want = if body["ok"] == true { 200 } else { 500 };
            assert_eq!(status, want, "{side}: {head}{body}");
            served += usize::from(status == 200);
        }
    }
    // All six failing: at most 0.005^3 * 0.1^3, about 1e-10.
    assert!(served > 0, "every request through the demo failed");

    let tally = demo.wait_for("demo traffic so far:");
    assert!(tally.contains("orders-read:"), "{tally}");
    let _ = Command::new("kill")
        .args(["-TERM", &demo.child.id().to_string()])
        .status();
    demo.wait_for("demo stopped");
    assert!(demo.child.wait().unwrap().success());
}

/// A demo that cannot take one of its ports says which, and what for, and exits 1 at once.
#[test]
fn the_demo_names_the_port_it_cannot_take() {
    use std::io::Read as _;
    for (k, what) in [
        (0, "(listen)"),
        (1, "for the demo monolith"),
        (2, "for the demo orders"),
        (3, "for the demo billing"),
        (4, "(admin.listen)"),
    ] {
        let base = free_port_base();
        let taken = base + k;
        let _held = std::net::TcpListener::bind(("127.0.0.1", taken)).unwrap();
        let mut demo = spawn_demo(base);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let status = loop {
            if let Some(status) = demo.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the demo runs with port {taken} taken"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut err = String::new();
        demo.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(status.code(), Some(1), "{err}");
        let named = format!("cannot listen on 127.0.0.1:{taken} {what}");
        assert!(err.contains(&named), "port {taken} taken: {err}");
        assert!(err.contains("--port-base"), "{err}");
    }
}
