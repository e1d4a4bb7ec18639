//! The carve-out map under a flood of random paths (docs/inventory.md, "Bounded"): the
//! process's resident memory before and after a million requests of each kind, and what
//! the map holds. `cargo run --release --example inventory_flood [REQUESTS]`.
//!
//! - `ids`: `/x/<12 random base62>/<1 to 23 random base62>`, the hostile-input shape;
//! - `words`: random lower-case words, 1 to 20 segments deep, with 16 random methods: words
//!   are kept literal longer than ids;
//! - `full`: at each depth one of 16 long words (too few to be values), 1 to 12 segments
//!   deep, with 16 methods: a tree no rule folds, which fills the map up to its caps (the
//!   worst case for memory).

use std::time::{Duration, Instant};

use strangler::inventory::{Inventory, Limits, Sample};

// The same allocator as the gateway binary.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn random(rng: &mut fastrand::Rng, alphabet: &[u8], len: usize) -> String {
    (0..len)
        .map(|_| alphabet[rng.usize(..alphabet.len())] as char)
        .collect()
}

const METHODS: [&str; 16] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PURGE", "LOCK", "UNLOCK",
    "MKCOL", "COPY", "MOVE", "PROPFIND", "REPORT",
];

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let limits = Limits::default();
    println!(
        "limits: {} templates, {} nodes",
        limits.max_templates,
        limits.max_nodes()
    );
    let vocabulary: Vec<String> = (0..16)
        .map(|i| format!("{}{}", "segment".repeat(4), (b'a' + i) as char))
        .collect();
    for kind in ["ids", "words", "full"] {
        let mut rng = fastrand::Rng::with_seed(7);
        let before = rss_kib();
        let mut inv = Inventory::new(limits);
        let start = Instant::now();
        for _ in 0..n {
            let (method, path) = if kind == "ids" {
                let a = random(&mut rng, BASE62, 12);
                let len = rng.usize(1..24);
                let b = random(&mut rng, BASE62, len);
                ("GET", format!("/x/{a}/{b}"))
            } else if kind == "full" {
                let depth = rng.usize(1..13);
                let mut p = String::new();
                for _ in 0..depth {
                    p.push('/');
                    p.push_str(&vocabulary[rng.usize(..16)]);
                }
                (METHODS[rng.usize(..METHODS.len())], p)
            } else {
                let depth = rng.usize(1..21);
                let mut p = String::new();
                for _ in 0..depth {
                    let len = rng.usize(3..10);
                    p.push('/');
                    p.push_str(&random(&mut rng, b"abcdefghijklmnopqrstuvwxyz", len));
                }
                (METHODS[rng.usize(..METHODS.len())], p)
            };
            inv.observe(&Sample {
                method,
                path: &path,
                status: 200,
                latency: Duration::from_micros(rng.u64(100..100_000)),
                route: "default",
                new_side: false,
                at_unix_ms: 1_700_000_000_000,
            });
        }
        let took = start.elapsed();
        let after = rss_kib();
        let map = inv.map();
        println!(
            "{kind}: {n} requests in {:.2}s ({:.0} ns each): {} nodes, {} templates, {} in other; RSS {} KiB -> {} KiB ({:+} KiB)",
            took.as_secs_f64(),
            took.as_nanos() as f64 / f64::from(n),
            inv.nodes(),
            map.templates.len(),
            map.other.requests,
            before,
            after,
            after as i64 - before as i64
        );
        assert!(inv.nodes() <= limits.max_nodes());
        assert!(map.templates.len() <= limits.max_templates);
        drop(map);
        drop(inv);
    }
}
