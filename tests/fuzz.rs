//! Generated-input tests (proptest) for the parts that read hostile or careless input: the
//! routes-file reader and validator, the path canonicalizer, the router (against a plain
//! reference implementation of the precedence rules) and the request-head handling of a
//! running gateway. Zero panics, and the properties below, for every generated case.
//!
//! `cargo test` runs each harness for proptest's default number of cases (256);
//! `scripts/fuzz` runs them for longer (`PROPTEST_CASES`). A failing case is kept by proptest
//! under `proptest-regressions/` and replayed first on every later run.

use std::borrow::Cow;
use std::net::IpAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use strangler::{Config, PathParameters, RequestView, canonicalize, routing_path};

/// Where failing cases are kept, replayed first by every later run.
const REGRESSIONS: &str = "tests/fuzz.proptest-regressions";

// ------------------------------------------------------------------------------------------
// The routes file

/// YAML-shaped text: the file's own keys and values, nested, in random order and kinds,
/// with the odd stray character.
fn yaml_like() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "listen",
        "admin",
        "legacy",
        "services",
        "routes",
        "name",
        "match",
        "path",
        "prefix",
        "regex",
        "methods",
        "headers",
        "service",
        "percent",
        "sticky",
        "cohort",
        "url",
        "timeout",
        "idle_timeout",
        "header",
        "cookie",
        "client_ip",
        "compare",
        "window",
        "client",
        "body_timeout",
        "via",
        "trusted_proxies",
        "orders",
        "present",
        "x-t",
    ]);
    let scalar = prop_oneof![
        prop::sample::select(vec![
            "127.0.0.1:8080",
            "http://127.0.0.1:9001",
            "http://h:1/base",
            "/api/{id}",
            "/files/{*rest}",
            "/a",
            "'/x/{y}'",
            "\"[0-9]+\"",
            "30s",
            "0",
            "100",
            "12.5",
            "101",
            "-1",
            "true",
            "null",
            "~",
            "GET",
            "[GET, POST]",
            "{}",
            "[]",
            "orders",
            "a",
            "ftp://x",
            "'('",
            "1e400",
            "\"\\u0000\"",
            "&a",
            "*a",
            "!!str x",
        ])
        .prop_map(str::to_string),
        "[ -~]{0,12}",
    ];
    let leaf = (key.clone(), scalar).prop_map(|(k, v)| format!("{k}: {v}"));
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            // A nested mapping.
            (key.clone(), prop::collection::vec(inner.clone(), 1..5)).prop_map(|(k, items)| {
                let body: Vec<String> = items
                    .iter()
                    .flat_map(|i| i.lines().map(|l| format!("  {l}")).collect::<Vec<_>>())
                    .collect();
                format!("{k}:\n{}", body.join("\n"))
            }),
            // A sequence of mappings.
            (key.clone(), prop::collection::vec(inner, 1..4)).prop_map(|(k, items)| {
                let mut out = format!("{k}:");
                for i in items {
                    let mut lines = i.lines();
                    if let Some(first) = lines.next() {
                        out.push_str(&format!("\n  - {first}"));
                    }
                    for l in lines {
                        out.push_str(&format!("\n    {l}"));
                    }
                }
                out
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        ..ProptestConfig::default()
    })]
    #[test]
    fn the_routes_file_reader_never_panics(docs in prop::collection::vec(yaml_like(), 1..6)) {
        let text = docs.join("\n");
        if let Ok(cfg) = Config::parse(&text, Path::new("fuzz.yaml")) {
            // A valid file compiles, and its table decides.
            let table = cfg.compile().expect("a valid file compiles");
            let headers = HeaderMap::new();
            let _ = table.decide(&RequestView {
                path: "/api/7",
                method: &Method::GET,
                headers: &headers,
                query: None,
                peer: IpAddr::from([127, 0, 0, 1]),
            });
        }
    }

    #[test]
    fn the_routes_file_reader_never_panics_on_any_text(text in "\\PC{0,300}") {
        let _ = Config::parse(&text, Path::new("fuzz.yaml"));
    }
}

// ------------------------------------------------------------------------------------------
// Canonical paths

/// Paths made of the pieces that matter: separators, dots, escapes of every kind, bytes
/// that are not ASCII.
fn path_like() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "/", "//", ".", "..", "a", "api", "%2e", "%2E", "%2f", "%2F", "%5c", "%00", "%0a", "%41",
        "%7e", "%c3%a9", "%c0%ae", "%ff", "%", "%4", "%zz", ";", "..;", "?", "#", "\\", "\u{e9}",
        "~", "-", "_", "%25", "%20",
    ]);
    prop::collection::vec(piece, 0..12).prop_map(|p| format!("/{}", p.concat()))
}

fn check_canonical_form(c: &str) {
    assert!(c.starts_with('/'), "{c}");
    assert!(c.is_ascii(), "{c}");
    assert!(!c.contains("//"), "{c}");
    for seg in c.split('/') {
        assert!(seg != "." && seg != "..", "{c}");
    }
    let b = c.as_bytes();
    for (i, _) in c.match_indices('%') {
        let hex = &b[i + 1..i + 3];
        assert!(
            hex.iter()
                .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h)),
            "{c}"
        );
        let v = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
        assert!(
            !(v.is_ascii_alphanumeric() || b"-._~".contains(&v)),
            "an unreserved character left encoded in {c}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        ..ProptestConfig::default()
    })]
    #[test]
    fn canonical_paths_are_canonical(path in path_like()) {
        if let Ok(c) = canonicalize(&path) {
            check_canonical_form(&c);
            // Canonical is a fixed point.
            let again = canonicalize(&c).expect("a canonical path is accepted");
            prop_assert_eq!(again.as_ref(), c.as_ref());
            // A path the canonicalizer left as it was needed no change at all.
            if matches!(c, Cow::Borrowed(_)) {
                prop_assert_eq!(c.as_ref(), path.as_str());
            }
        }
    }

    #[test]
    fn the_canonicalizer_never_panics(path in "\\PC{0,64}") {
        let _ = canonicalize(&path);
    }
}

// ------------------------------------------------------------------------------------------
// The router, against a reference

const SEGMENTS: &[&str] = &["a", "b", "api", "x"];

#[derive(Debug, Clone)]
enum Pattern {
    Exact(Vec<String>),
    /// Each segment: `Some(literal)` or `None` for a parameter; the bool: a final `{*rest}`.
    Template(Vec<Option<String>>, bool),
    Prefix(Vec<String>),
    Regex(&'static str),
}

#[derive(Debug, Clone)]
struct Rule {
    pattern: Pattern,
    methods: Option<Vec<&'static str>>,
    /// `x-t: 1` required.
    header: bool,
}

const REGEXES: &[&str] = &[
    "/a/[0-9]+",
    "/b/.*",
    "/(a|b)/x",
    "/x/y",
    "/api/[a-z]+/[0-9]+",
];

fn segments() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop::sample::select(SEGMENTS).prop_map(str::to_string),
        1..4,
    )
}

fn rule() -> impl Strategy<Value = Rule> {
    let pattern = prop_oneof![
        segments().prop_map(Pattern::Exact),
        (
            prop::collection::vec(
                prop_oneof![
                    prop::sample::select(SEGMENTS).prop_map(|s| Some(s.to_string())),
                    Just(None)
                ],
                0..3
            ),
            any::<bool>()
        )
            .prop_filter("a template has a parameter", |(segs, rest)| {
                *rest || segs.iter().any(Option::is_none)
            })
            .prop_map(|(segs, rest)| Pattern::Template(segs, rest)),
        prop::collection::vec(
            prop::sample::select(SEGMENTS).prop_map(str::to_string),
            0..3
        )
        .prop_map(Pattern::Prefix),
        prop::sample::select(REGEXES).prop_map(Pattern::Regex),
    ];
    let methods = prop_oneof![
        Just(None),
        Just(Some(vec!["GET"])),
        Just(Some(vec!["POST"])),
        Just(Some(vec!["GET", "POST"])),
    ];
    (pattern, methods, any::<bool>()).prop_map(|(pattern, methods, header)| Rule {
        pattern,
        methods,
        header,
    })
}

fn render(rules: &[Rule]) -> String {
    let mut s = String::from(
        "listen: 127.0.0.1:0\nlegacy: {url: 'http://127.0.0.1:1'}\nservices:\n  s: {url: 'http://127.0.0.1:2'}\nroutes:\n",
    );
    for (i, r) in rules.iter().enumerate() {
        let m = match &r.pattern {
            Pattern::Exact(segs) => format!("path: '/{}'", segs.join("/")),
            Pattern::Template(segs, rest) => {
                let mut parts: Vec<String> = segs
                    .iter()
                    .enumerate()
                    .map(|(k, s)| s.clone().unwrap_or_else(|| format!("{{p{k}}}")))
                    .collect();
                if *rest {
                    parts.push("{*rest}".into());
                }
                format!("path: '/{}'", parts.join("/"))
            }
            Pattern::Prefix(segs) => format!("prefix: '/{}'", segs.join("/")),
            Pattern::Regex(re) => format!("regex: '{re}'"),
        };
        s.push_str(&format!(
            "  - name: r{i}\n    service: s\n    match:\n      {m}\n"
        ));
        if let Some(ms) = &r.methods {
            s.push_str(&format!("      methods: [{}]\n", ms.join(", ")));
        }
        if r.header {
            s.push_str("      headers: {x-t: '1'}\n");
        }
    }
    s
}

/// The path as a servlet container (Tomcat, Jetty) reads it: each segment without its
/// `;parameters`, empty segments merged away.
fn servlet_reading(path: &str) -> String {
    let segs: Vec<&str> = path
        .split('/')
        .map(|s| s.split(';').next().unwrap_or(""))
        .filter(|s| !s.is_empty())
        .collect();
    let last_empty = path
        .rsplit('/')
        .next()
        .is_some_and(|s| s.split(';').next() == Some(""));
    let mut out = format!("/{}", segs.join("/"));
    if last_empty && out.len() > 1 {
        out.push('/');
    }
    out
}

/// The reference: every rule that matches, ordered by the precedence rules as the docs
/// state them, the first whose conditions hold.
fn reference(rules: &[Rule], path: &str, method: &str, header: bool) -> Option<usize> {
    let segs: Vec<&str> = path[1..].split('/').collect();
    // (tier, rank within the tier, group key, rule) for the rules whose pattern matches.
    type Rank = (i64, bool, usize, usize);
    let mut hits: Vec<(u8, Rank, String, usize)> = Vec::new();
    let first_index = |key: &str| {
        rules
            .iter()
            .position(|r| group_key(&r.pattern) == key)
            .unwrap()
    };
    for (i, r) in rules.iter().enumerate() {
        let key = group_key(&r.pattern);
        let rank = match &r.pattern {
            Pattern::Exact(s) => {
                (path == format!("/{}", s.join("/"))).then_some((0, (0, false, 0, 0)))
            }
            Pattern::Template(t, rest) => {
                let fixed = t.len();
                let fits = if *rest {
                    segs.len() > fixed
                } else {
                    segs.len() == fixed
                };
                let matches = fits
                    && t.iter().zip(&segs).all(|(want, got)| match want {
                        Some(l) => l == got,
                        None => !got.is_empty(),
                    });
                let literals = t.iter().filter(|s| s.is_some()).count();
                let params = t.iter().filter(|s| s.is_none()).count();
                matches.then_some((1, (-(literals as i64), *rest, params, first_index(&key))))
            }
            Pattern::Prefix(p) => {
                let prefix = format!("/{}", p.join("/"));
                let matches =
                    prefix == "/" || path == prefix || path.starts_with(&format!("{prefix}/"));
                matches.then_some((2, (-(prefix.len() as i64), false, 0, 0)))
            }
            Pattern::Regex(re) => regex::Regex::new(&format!("^(?:{re})$"))
                .unwrap()
                .is_match(path)
                .then_some((3, (first_index(&key) as i64, false, 0, 0))),
        };
        if let Some((tier, rank)) = rank {
            hits.push((tier, rank, key, i));
        }
    }
    // Groups in precedence order; inside a group, more conditions first, then file order.
    hits.sort_by(|a, b| {
        let conds =
            |i: usize| usize::from(rules[i].methods.is_some()) + usize::from(rules[i].header);
        (a.0, a.1, &a.2, std::cmp::Reverse(conds(a.3)), a.3).cmp(&(
            b.0,
            b.1,
            &b.2,
            std::cmp::Reverse(conds(b.3)),
            b.3,
        ))
    });
    hits.into_iter().map(|h| h.3).find(|&i| {
        let r = &rules[i];
        r.methods.as_ref().is_none_or(|m| m.contains(&method)) && (!r.header || header)
    })
}

fn group_key(p: &Pattern) -> String {
    match p {
        Pattern::Exact(s) => format!("e/{}", s.join("/")),
        Pattern::Template(t, rest) => format!(
            "t/{}{}",
            t.iter()
                .map(|s| s.clone().unwrap_or_else(|| "{}".into()))
                .collect::<Vec<_>>()
                .join("/"),
            if *rest { "/{*}" } else { "" }
        ),
        Pattern::Prefix(s) => format!("p/{}", s.join("/")),
        Pattern::Regex(r) => format!("r/{r}"),
    }
}

fn request_path() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(
            prop::sample::select(vec![
                "a", "b", "api", "x", "y", "7", "42", "z9", "a;x", "api;v=1", ";x", "7;s=1", "b;",
            ]),
            0..5,
        ),
        any::<bool>(),
    )
        .prop_map(|(segs, slash)| {
            let mut p = format!("/{}", segs.join("/"));
            if slash && p.len() > 1 {
                p.push('/');
            }
            p
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        ..ProptestConfig::default()
    })]
    #[test]
    fn the_router_agrees_with_the_reference(
        rules in prop::collection::vec(rule(), 1..12),
        requests in prop::collection::vec(
            (request_path(), prop::sample::select(vec!["GET", "POST", "PUT"]), any::<bool>()),
            1..16
        ),
    ) {
        let text = render(&rules);
        let cfg = Config::parse(&text, Path::new("fuzz.yaml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let table = cfg.compile().unwrap();
        for (path, method, header) in requests {
            let mut headers = HeaderMap::new();
            if header {
                headers.insert("x-t", HeaderValue::from_static("1"));
            }
            let m = Method::from_bytes(method.as_bytes()).unwrap();
            // Routes are matched without the segments' parameters, as a servlet container
            // reads the path.
            let routed = routing_path(&path, PathParameters::MatchWithout).unwrap();
            let got = table
                .decide(&RequestView {
                    path: &routed,
                    method: &m,
                    headers: &headers,
                    query: None,
                    peer: IpAddr::from([127, 0, 0, 1]),
                })
                .route;
            let want = reference(&rules, &servlet_reading(&path), method, header);
            prop_assert_eq!(got, want, "{} {} x-t:{}\n{}", method, path, header, text);
        }
    }
}

// ------------------------------------------------------------------------------------------
// Request heads, against a running gateway

/// Request trailers the upstream received that the docs say never reach it, and those it
/// received at all (so that the check is seen to look at something).
static TRAILER_VIOLATIONS: AtomicUsize = AtomicUsize::new(0);
static TRAILERS_SEEN: AtomicUsize = AtomicUsize::new(0);

/// Whether a field may be a request trailer upstream, as docs/http.md lists them: not one
/// that frames, routes, authenticates or modifies a request or describes its content, not a
/// forwarding or client-address header, not the gateway's own, no `_` in its name.
fn trailer_allowed(name: &str) -> bool {
    const NEVER: &[&str] = &[
        "host",
        "content-length",
        "transfer-encoding",
        "trailer",
        "te",
        "connection",
        "upgrade",
        "keep-alive",
        "proxy-connection",
        "authorization",
        "proxy-authorization",
        "cookie",
        "content-type",
        "content-encoding",
        "content-range",
        "cache-control",
        "expect",
        "max-forwards",
        "pragma",
        "range",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
        "if-range",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-real-ip",
        "forwarded",
        "x-request-id",
        "via",
        "x-original-url",
        "x-rewrite-url",
        "true-client-ip",
        "x-client-ip",
        "cf-connecting-ip",
        "x-cluster-client-ip",
    ];
    !NEVER.contains(&name) && !name.starts_with("x-strangler-") && !name.contains('_')
}

fn judge_trailers(t: &HeaderMap) {
    for name in t.keys() {
        if trailer_allowed(name.as_str()) {
            TRAILERS_SEEN.fetch_add(1, Ordering::SeqCst);
        } else {
            eprintln!("a forbidden trailer reached the upstream: {name}");
            TRAILER_VIOLATIONS.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Panics on the gateway's own threads since the hook was set.
static PANICS: AtomicUsize = AtomicUsize::new(0);
const GATEWAY_THREAD: &str = "fuzz-gateway";

/// A gateway (route `/api` to a service, the rest to legacy, both the same upstream) and
/// its upstream, which answers 200, or the status in an `x-answer` header, to everything.
struct Target {
    rt: tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    /// Requests the upstream received (their heads: counted as soon as read).
    hits: std::sync::Arc<AtomicUsize>,
}

/// The gateway that most harnesses share.
fn target() -> &'static Target {
    static T: OnceLock<Target> = OnceLock::new();
    T.get_or_init(start_target)
}

/// A gateway of their own for the harnesses that count what reaches the upstream (their
/// cases run one at a time; the other harnesses run beside them).
fn heads_target() -> &'static Target {
    static T: OnceLock<Target> = OnceLock::new();
    T.get_or_init(start_target)
}

fn requests_target() -> &'static Target {
    static T: OnceLock<Target> = OnceLock::new();
    T.get_or_init(start_target)
}

fn start_target() -> Target {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(GATEWAY_THREAD) {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(GATEWAY_THREAD)
        .enable_all()
        .build()
        .unwrap();
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let addr = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { continue };
                let counted = counted.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            counted.fetch_add(1, Ordering::SeqCst);
                            async move {
                                use http_body_util::BodyExt as _;
                                let status = req
                                    .headers()
                                    .get("x-answer")
                                    .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
                                    .unwrap_or(200);
                                if let Ok(body) = req.into_body().collect().await
                                    && let Some(t) = body.trailers()
                                {
                                    judge_trailers(t);
                                }
                                let mut resp = http::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::from_static(b"ok"),
                                ));
                                *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        let cfg = Config::parse(
            &format!(
                "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nlegacy: {{url: 'http://{upstream}', timeout: 2s}}\nservices:\n  s: {{url: 'http://{upstream}', timeout: 2s}}\nclient: {{head_timeout: 1s, body_timeout: 1s, send_timeout: 1s}}\ntrusted_proxies: [10.0.0.0/8]\nroutes:\n  - name: api\n    match: {{prefix: /api}}\n    service: s\n    percent: 50\n    sticky: {{header: x-user}}\n"
            ),
            Path::new("fuzz.yaml"),
        )
        .unwrap();
        let running = strangler::start(cfg, strangler::AccessLog::new(strangler::LogFormat::Json, false))
            .await
            .unwrap();
        let addr = running.public_addr;
        // Serves for the rest of the test process.
        std::mem::forget(running);
        addr
    });
    Target { rt, addr, hits }
}

/// Sends `request` on a connection of its own and reads until the final answer's head is
/// complete, the connection ends, or 5 s pass.
fn exchange(t: &Target, request: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    t.rt.block_on(async {
        let mut s = tokio::net::TcpStream::connect(t.addr).await.unwrap();
        let _ = s.write_all(request).await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let mut chunk = [0u8; 4096];
            while !matches!(final_head(&buf), Ok(Some(_)) | Err(_)) {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        buf
    })
}

/// The final answer's status in what a connection read (after any 1xx interim answers):
/// `Ok(None)` while its head is not complete (or nothing came), `Err` for anything that is
/// not HTTP/1.x: a status line `HTTP/1.x DDD reason` of a code from 100 to 599, then
/// `name: value` lines with a token for a name, then a blank line.
fn final_head(buf: &[u8]) -> Result<Option<u16>, String> {
    let mut rest = buf;
    loop {
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Ok(None);
        };
        let head = std::str::from_utf8(&rest[..end]).map_err(|e| format!("{e}"))?;
        let mut lines = head.split("\r\n");
        let line = lines.next().unwrap_or("");
        let code = line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| line.strip_prefix("HTTP/1.0 "))
            .filter(|r| r.len() == 3 || r.as_bytes().get(3) == Some(&b' '))
            .and_then(|r| r.get(..3)?.parse::<u16>().ok())
            .filter(|c| (100..=599).contains(c))
            .ok_or_else(|| format!("not a status line: {line:?}"))?;
        for l in lines {
            let (name, _) = l
                .split_once(':')
                .ok_or_else(|| format!("not a field: {l:?}"))?;
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                return Err(format!("not a field name: {name:?}"));
            }
        }
        // 1xx answers (`100 Continue`) are interim: the final one follows. 101 is final.
        if (100..200).contains(&code) && code != 101 {
            rest = &rest[end + 4..];
            continue;
        }
        return Ok(Some(code));
    }
}

/// A generated request head: its request line's parts, and the bytes sent.
#[derive(Clone)]
struct Head {
    method: &'static str,
    target: String,
    version: &'static str,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.bytes))
    }
}

impl Head {
    /// A request line the gateway refuses whatever the headers and body say: a method that
    /// is not a registered one in upper case (other than CONNECT, which names no resource
    /// here), a version other than HTTP/1.0 and HTTP/1.1, or a target that is neither a
    /// path nor an absolute URL (docs/http.md).
    fn refused_line(&self) -> bool {
        let method = [
            "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE", "PROPFIND", "QUERY",
        ]
        .contains(&self.method);
        let version = matches!(self.version, "HTTP/1.1" | "HTTP/1.0");
        let target = self.target.starts_with('/') || self.target.starts_with("http://");
        !(method && version && target)
    }
}

fn head_like() -> impl Strategy<Value = Head> {
    let method = prop::sample::select(vec![
        "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "CONNECT", "TRACE", "PURGE", "get",
        "Get", "pOST", "PROPFIND", "QUERY", "G ET", "", "\u{e9}",
    ]);
    let target = prop_oneof![
        path_like(),
        Just("*".to_string()),
        Just("http://evil.example/api/x".to_string()),
        Just("evil.example:80".to_string()),
        "[ -~]{0,20}",
    ];
    let version = prop::sample::select(vec![
        "HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "HTTP/2.0", "http/1.1", "",
    ]);
    let name = prop::sample::select(vec![
        "Host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "TE",
        "Via",
        "X-User",
        "X-Forwarded-For",
        "X_Forwarded_For",
        "X-Request-Id",
        "Expect",
        "Upgrade",
        "Trailer",
        "Forwarded",
        "Cookie",
        "X A",
        "",
        "Host ",
    ]);
    let value = prop_oneof![
        prop::sample::select(vec![
            "h",
            "good.example, evil.example",
            "chunked",
            "chunked, chunked",
            "gzip, chunked",
            "5",
            "5, 5",
            "-1",
            "1x",
            "close",
            "keep-alive",
            "trailers",
            "1.1 strangler",
            "100-continue",
            "websocket",
            "10.0.0.1, 6.6.6.6",
            "a\u{0}b",
            "[::1]:80",
            "",
        ])
        .prop_map(str::to_string),
        "[ -~]{0,16}",
    ];
    let header = (name, value).prop_map(|(n, v)| format!("{n}: {v}\r\n"));
    (
        method,
        target,
        version,
        prop::collection::vec(header, 0..8),
        prop::sample::select(vec![
            "",
            "hello",
            "5\r\nhello\r\n0\r\n\r\n",
            "zz\r\n",
            "0\r\n\r\n",
            "5\r\nhello\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\nX-Strangler-Shadow: 1\r\nX-Sum: 1\r\n\r\n",
        ]),
    )
        .prop_map(|(m, t, v, hs, body)| Head {
            method: m,
            bytes: format!("{m} {t} {v}\r\n{}\r\n{body}", hs.concat()).into_bytes(),
            target: t,
            version: v,
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        ..ProptestConfig::default()
    })]
    /// Whatever the head, the gateway does not panic, and answers it in HTTP/1.x: a request line it must refuse gets a 4xx (or 501, 505, or 508 when the
    /// head also shows a loop) and never reaches the upstream; a 2xx is the upstream's 200,
    /// to the one request it received.
    #[test]
    fn request_heads_never_panic_the_gateway(head in head_like()) {
        let t = heads_target();
        let before = t.hits.load(Ordering::SeqCst);
        let answer = exchange(t, &head.bytes);
        let reached = t.hits.load(Ordering::SeqCst) - before;
        let status = final_head(&answer).map_err(|e| {
            TestCaseError::fail(format!("{head:?} -> {:?}: {e}", String::from_utf8_lossy(&answer)))
        })?;
        prop_assert!(
            status.is_some(),
            "{:?} -> no complete answer: {:?}", head, String::from_utf8_lossy(&answer)
        );
        if head.refused_line() {
            prop_assert!(
                matches!(status, Some(400..=499 | 501 | 505 | 508)),
                "{:?} -> {:?}", head, String::from_utf8_lossy(&answer)
            );
            prop_assert_eq!(reached, 0, "{:?} reached the upstream", head);
        }
        if let Some(code @ 200..=299) = status {
            prop_assert_eq!(code, 200, "{:?}", head);
            prop_assert_eq!(reached, 1, "{:?} -> 200", head);
        }
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a panic on {:?}", head);
    }

    /// A well-formed request is served, with the upstream's status, exactly when its path
    /// is one the canonicalizer accepts; otherwise it is a 400 that never reaches the
    /// upstream.
    #[test]
    fn well_formed_requests_reach_the_upstream_or_are_400(r in request_like()) {
        let t = requests_target();
        let before = t.hits.load(Ordering::SeqCst);
        let answer = exchange(t, r.bytes.as_bytes());
        let reached = t.hits.load(Ordering::SeqCst) - before;
        let status = final_head(&answer).map_err(|e| {
            TestCaseError::fail(format!("{:?} -> {:?}: {e}", r.bytes, String::from_utf8_lossy(&answer)))
        })?;
        let (want, upstream) = if canonicalize(&r.path).is_ok() { (r.answer, 1) } else { (400, 0) };
        prop_assert_eq!(status, Some(want), "{:?} -> {:?}", r.bytes, String::from_utf8_lossy(&answer));
        prop_assert_eq!(reached, upstream, "{:?}", r.bytes);
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0);
    }
}

/// A well-formed request: a method the gateway serves, a path of the pieces that matter to
/// the canonicalizer (any of `path_like`'s that a request line can carry as they are), an
/// optional query, ordinary headers, a framed body on the methods that send one, and the
/// status the upstream is to answer (`x-answer`).
#[derive(Debug, Clone)]
struct Request {
    path: String,
    answer: u16,
    bytes: String,
}

fn request_like() -> impl Strategy<Value = Request> {
    let piece = prop::sample::select(vec![
        "/",
        "//",
        ".",
        "..",
        "a",
        "api",
        "%2e",
        "%2E",
        "%2f",
        "%2F",
        "%5c",
        "%00",
        "%0a",
        "%41",
        "%7e",
        "%c3%a9",
        "%c0%ae",
        "%ff",
        "%",
        "%4",
        "%zz",
        ";",
        "..;",
        "~",
        "-",
        "_",
        "%25",
        "%20",
        "api;v=1",
        ";jsessionid=x",
    ]);
    let path = prop::collection::vec(piece, 0..10).prop_map(|p| format!("/{}", p.concat()));
    (
        prop::sample::select(vec![
            "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "PROPFIND", "QUERY",
        ]),
        path,
        prop::sample::select(vec!["", "?a=1", "?q=%20&a=1&a=2", "?"]),
        prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0"]),
        prop::sample::subsequence(
            vec!["X-User: u1\r\n", "Accept: */*\r\n", "Cookie: a=b\r\n", "X-Request-Id: fuzz-1\r\n"],
            0..=4,
        ),
        any::<bool>(),
        prop::sample::select(vec![200u16, 201, 404, 418]),
    )
        .prop_map(|(method, path, query, version, headers, chunked, answer)| {
            let body = match method {
                "POST" | "PUT" | "PATCH" if chunked && version == "HTTP/1.1" => {
                    "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                }
                "POST" | "PUT" | "PATCH" => "Content-Length: 5\r\n\r\nhello",
                _ => "\r\n",
            };
            let bytes = format!(
                "{method} {path}{query} {version}\r\nHost: h\r\n{}x-answer: {answer}\r\nConnection: close\r\n{body}",
                headers.concat()
            );
            Request { path, answer, bytes }
        })
}

/// Sends `request` to the shared gateway: the final answer's status (0 for none).
fn status_of(request: &str) -> u16 {
    let answer = exchange(target(), request.as_bytes());
    final_head(&answer)
        .unwrap_or_else(|e| panic!("{request:?} -> {:?}: {e}", String::from_utf8_lossy(&answer)))
        .unwrap_or(0)
}

/// The methods of the IANA registry, as docs/http.md lists them.
const REGISTERED: &[&str] = &[
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "OPTIONS",
    "PATCH",
    "TRACE",
    "ACL",
    "BASELINE-CONTROL",
    "BIND",
    "CHECKIN",
    "CHECKOUT",
    "COPY",
    "LABEL",
    "LINK",
    "LOCK",
    "MERGE",
    "MKACTIVITY",
    "MKCALENDAR",
    "MKCOL",
    "MKREDIRECTREF",
    "MKWORKSPACE",
    "MOVE",
    "ORDERPATCH",
    "PROPFIND",
    "PROPPATCH",
    "QUERY",
    "REBIND",
    "REPORT",
    "SEARCH",
    "UNBIND",
    "UNCHECKOUT",
    "UNLINK",
    "UNLOCK",
    "UPDATE",
    "UPDATEREDIRECTREF",
    "VERSION-CONTROL",
];

/// Method tokens: registered ones in every letter case, and made-up ones.
fn method_like() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            prop::sample::select(REGISTERED),
            prop::collection::vec(any::<bool>(), 20)
        )
            .prop_map(|(m, lower)| {
                m.chars()
                    .zip(lower.iter().cycle())
                    .map(|(c, l)| if *l { c.to_ascii_lowercase() } else { c })
                    .collect()
            }),
        "[A-Za-z][A-Za-z-]{0,11}",
    ]
}

/// Trailer sections: forwarding, identity, framing and gateway-owned fields, in any case and
/// with underscores, beside ordinary ones.
fn trailers_like() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        prop::sample::select(vec![
            "X-Forwarded-For",
            "x-real-ip",
            "X-Request-Id",
            "X-Strangler-Shadow",
            "X-Strangler-Side",
            "X_Forwarded_For",
            "Forwarded",
            "Via",
            "X-Forwarded-Host",
            "Cookie",
            "Authorization",
            "Host",
            "Content-Length",
            "Transfer-Encoding",
            "TE",
            "Connection",
            "True-Client-IP",
            "CF-Connecting-IP",
            "X-Original-URL",
            "Expect",
            "Content-Type",
            "X-Checksum",
            "X-Digest",
            "grpc-status",
            "X_Custom",
        ])
        .prop_map(str::to_string),
        "[A-Za-z][A-Za-z0-9-]{0,10}",
    ];
    prop::collection::vec((name, "[a-z0-9.]{1,8}"), 0..8)
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        ..ProptestConfig::default()
    })]
    /// A method is answered as docs/http.md says: 400 when not in upper case, 501 when in
    /// upper case but neither registered nor added, served otherwise.
    #[test]
    fn methods_are_judged_as_the_docs_say(method in method_like()) {
        let status = status_of(&format!(
            "{method} /api/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        ));
        let want = if method.bytes().any(|b| b.is_ascii_lowercase()) || method == "CONNECT" {
            400
        } else if REGISTERED.contains(&method.as_str()) {
            200
        } else {
            501
        };
        prop_assert_eq!(status, want, "{}", method);
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0);
    }

    /// A request's trailers reach the upstream with none of what its head may not carry.
    #[test]
    fn request_trailers_carry_only_what_a_head_may(fields in trailers_like()) {
        let declared: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).chain(["X-Checksum"]).collect();
        let section: String = fields
            .iter()
            .map(|(n, v)| format!("{n}: {v}\r\n"))
            .chain(["X-Checksum: abc\r\n".to_string()])
            .collect();
        let seen = TRAILERS_SEEN.load(Ordering::SeqCst);
        let status = status_of(&format!(
            "POST /api/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTrailer: {}\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n{section}\r\n",
            declared.join(", ")
        ));
        prop_assert_eq!(status, 200);
        prop_assert_eq!(TRAILER_VIOLATIONS.load(Ordering::SeqCst), 0);
        // The benign one arrived: the upstream does see trailers.
        prop_assert!(TRAILERS_SEEN.load(Ordering::SeqCst) > seen);
    }
}

/// The gateway still serves after the generated heads (run after them or alone).
#[test]
fn the_gateway_serves_after_hostile_heads() {
    let t = heads_target();
    let before = t.hits.load(Ordering::SeqCst);
    let answer = exchange(
        t,
        b"GET /api/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        final_head(&answer),
        Ok(Some(200)),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(t.hits.load(Ordering::SeqCst) > before);
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
}
