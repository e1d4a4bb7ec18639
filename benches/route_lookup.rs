//! Route lookup cost with 10, 1,000 and 10,000 rules of mixed kinds (exact paths,
//! templates, prefixes, regexes, some with method and header conditions). The lookup must
//! cost about the same whatever the number of rules (docs/routing.md, "Which route wins").

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use strangler::Config;

/// A routes file with `n` rules: per 10 rules, 4 exact paths, 2 templates, 2 prefixes,
/// 1 regex and 1 exact path with method and header conditions.
fn routes_file(n: usize) -> String {
    let mut s = String::from(
        "listen: 127.0.0.1:0\nlegacy: {url: http://127.0.0.1:1}\nservices:\n  svc: {url: http://127.0.0.1:2}\nroutes:\n",
    );
    for i in 0..n {
        let m = match i % 10 {
            0..=3 => format!("{{path: /api/v1/exact{i}/items}}"),
            4 | 5 => format!("{{path: '/api/t{i}/{{id}}/detail'}}"),
            6 | 7 => format!("{{prefix: /svc/p{i}}}"),
            8 => format!("{{regex: '/re{i}/[0-9]+\\.pdf'}}"),
            _ => format!(
                "{{path: /api/v1/exact{}/items, methods: [POST], headers: {{x-tenant: beta}}}}",
                i - 9
            ),
        };
        writeln!(
            s,
            "  - name: r{i}\n    match: {m}\n    service: svc\n    percent: 50"
        )
        .unwrap();
    }
    s
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_lookup");
    let mut headers = HeaderMap::new();
    headers.insert("x-user-id", HeaderValue::from_static("alice"));
    headers.insert("accept", HeaderValue::from_static("*/*"));
    for n in [10usize, 1_000, 10_000] {
        let cfg = Config::parse(&routes_file(n), Path::new("bench.yaml"))
            .expect("generated file is valid");
        let table = cfg.compile().expect("the table compiles");
        let router = table.router();
        // Requests that hit each kind, plus one that no rule takes (it crosses every tier).
        let last = |k: usize| {
            (0..n)
                .rev()
                .find(|i| i % 10 == k)
                .expect("every kind is present")
        };
        let cases = [
            ("exact", format!("/api/v1/exact{}/items", last(0))),
            ("template", format!("/api/t{}/12345/detail", last(4))),
            ("prefix", format!("/svc/p{}/a/b/c", last(6))),
            ("regex", format!("/re{}/42.pdf", last(8))),
            ("unmatched", "/nothing/here/at/all".to_string()),
        ];
        for (name, path) in &cases {
            assert!(
                router.find(path, &Method::GET, &headers).is_some() == (*name != "unmatched"),
                "{name} {path} with {n} rules"
            );
            g.bench_with_input(BenchmarkId::new(*name, n), path, |b, path| {
                b.iter(|| router.find(black_box(path), &Method::GET, &headers))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
