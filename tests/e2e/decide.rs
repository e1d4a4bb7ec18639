//! The gateway and `strangler explain` make one decision: for the same request they name the
//! same route and side, including for clients behind a trusted proxy (whose address comes
//! from `X-Forwarded-For`) and for sticky keys of every kind.

use crate::support;

use std::process::Command;

use support::*;

/// The side `strangler explain` names for a request.
fn explained_side(
    file: &std::path::Path,
    path: &str,
    headers: &[(&str, String)],
    peer: &str,
) -> (String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strangler"));
    cmd.args([
        "explain",
        file.to_str().unwrap(),
        "GET",
        path,
        "--client-ip",
        peer,
    ]);
    for (n, v) in headers {
        cmd.arg("-H").arg(format!("{n}: {v}"));
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    let route = text
        .lines()
        .find_map(|l| l.strip_prefix("route:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no route line\n{text}"))
        .to_string();
    let side_line = text
        .lines()
        .find(|l| l.starts_with("side"))
        .unwrap_or_else(|| panic!("no side line\n{text}"));
    let side = side_line
        .split_whitespace()
        .find(|w| *w == "legacy" || *w == "new")
        .unwrap_or_else(|| panic!("no side in {side_line:?}"))
        .to_string();
    (route, side)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_and_the_gateway_agree() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let text = format!(
        "{}trusted_proxies: [127.0.0.1/32, 10.0.0.0/8]\nroutes:\n  - name: by-ip\n    match: {{prefix: /ip}}\n    service: orders\n    percent: 50\n    sticky: {{client_ip: true}}\n  - name: by-user\n    match: {{prefix: /user}}\n    service: orders\n    percent: 30\n    sticky: {{header: x-user-id}}\n  - name: by-cookie\n    match: {{prefix: /cookie}}\n    service: orders\n    percent: 70\n    sticky: {{cookie: session}}\n",
        config_head(&legacy.url(), &[("orders", &orders.url())])
    );
    let (_dir, file) = routes_file(&text);
    let gw = Gateway::start(&text).await;
    let c = client();
    let mut sides = std::collections::BTreeMap::<(String, String), usize>::new();
    for i in 0..24 {
        // Behind the trusted proxy (this test's own address, 127.0.0.1): the client is the
        // nearest untrusted address of X-Forwarded-For, past another trusted hop.
        let cases: [(&str, &str, String); 4] = [
            ("/ip/a", "x-forwarded-for", format!("203.0.113.{i}")),
            (
                "/ip/b",
                "x-forwarded-for",
                format!("198.51.100.{i}, 10.1.2.3"),
            ),
            ("/user", "x-user-id", format!("user-{i}")),
            ("/cookie", "cookie", format!("theme=dark; session=s{i}")),
        ];
        for (path, name, value) in cases {
            let resp = c
                .get(gw.url(path))
                .header(name, &value)
                .send()
                .await
                .unwrap();
            let served = match resp.headers()["x-upstream"].to_str().unwrap() {
                "orders" => "new",
                _ => "legacy",
            };
            let (route, side) = explained_side(&file, path, &[(name, value.clone())], "127.0.0.1");
            assert_eq!(
                side, served,
                "{path} with {name}: {value}: explain says {side}, the gateway served {served}"
            );
            *sides.entry((route, side)).or_default() += 1;
        }
    }
    // Every route's requests went to both sides, so agreement is not a coincidence of one
    // side taking everything.
    for route in ["by-ip", "by-user", "by-cookie"] {
        for side in ["legacy", "new"] {
            assert!(
                sides
                    .get(&(route.to_string(), side.to_string()))
                    .copied()
                    .unwrap_or(0)
                    > 0,
                "{route} never went to {side}: {sides:?}"
            );
        }
    }
}
