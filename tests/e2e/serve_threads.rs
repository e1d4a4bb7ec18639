//! `strangler serve` on several threads: the main thread accepts the public listener's
//! connections and hands them round to the threads that serve them, each on a runtime of its
//! own (docs/cli.md).

use crate::support;

use std::time::Duration;

use support::*;

/// Time each thread named `strangler-public-N` of `pid` has run, in nanoseconds.
fn public_threads_runtime(pid: u32) -> Vec<u64> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if name.trim().starts_with("strangler-publi") {
            let stat = std::fs::read_to_string(dir.join("schedstat")).unwrap();
            out.push(stat.split_whitespace().next().unwrap().parse().unwrap());
        }
    }
    out
}

/// With two threads, connections are served on both (handed round in turn), and a second
/// gateway started on the same address fails to start rather than taking a share of the
/// connections unseen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_handed_round_the_threads_and_the_address_is_not_shared() {
    let legacy = Upstream::start("legacy").await;
    let (_dir, file) = routes_file(&format!("{}routes: []\n", config_head(&legacy.url(), &[])));
    let gw = GatewayProcess::spawn(&file, &[("TOKIO_WORKER_THREADS", "2")]).await;
    let pid = gw.child.id();
    let before = public_threads_runtime(pid);
    assert_eq!(before.len(), 2, "two public threads: {before:?}");
    // Twenty connections, five requests on each.
    for _ in 0..20 {
        let c = reqwest::Client::builder().build().unwrap();
        for _ in 0..5 {
            let r = c
                .get(format!("http://{}/a", gw.public))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.text().await.unwrap(), "legacy");
        }
    }
    let after = public_threads_runtime(pid);
    for (b, a) in before.iter().zip(&after) {
        assert!(a > b, "a thread served nothing: {before:?} -> {after:?}");
    }

    let (_dir2, second) = routes_file(
        &format!("{}routes: []\n", config_head(&legacy.url(), &[])).replace(
            "listen: 127.0.0.1:0\nadmin",
            &format!("listen: {}\nadmin", gw.public),
        ),
    );
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_strangler"))
            .args(["serve", "--config"])
            .arg(&second)
            .env("TOKIO_WORKER_THREADS", "2")
            .output(),
    )
    .await
    .expect("the second gateway exits")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot listen on") && stderr.contains("in use"),
        "{stderr}"
    );
}
