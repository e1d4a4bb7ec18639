//! Graceful stop: SIGTERM lets the request in flight finish, refuses new connections, turns
//! `/readyz` to 503 while the admin listener stays up, and exits 0.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let legacy = Upstream::start("legacy").await;
    let (_dir, file) = routes_file(&format!(
        "{}drain_timeout: 20s\nroutes: []\n",
        config_head(&legacy.url(), &[])
    ));
    let mut gw = GatewayProcess::spawn(&file, &[]).await;
    let public = gw.public;
    let admin = gw.admin;
    let ready = client()
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    // A request the upstream answers after 2 s.
    let slow = tokio::spawn(async move {
        let resp = client()
            .get(format!("http://{public}/slow"))
            .header("x-test-delay-ms", "2000")
            .send()
            .await
            .unwrap();
        (resp.status(), resp.text().await.unwrap())
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while legacy.count() == 0 {
        assert!(
            Instant::now() < deadline,
            "the slow request never reached the upstream"
        );
        tokio::task::yield_now().await;
    }

    gw.signal("-TERM");

    // Draining: not ready, and the public listener refuses new connections.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = client()
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(public).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "new connections are still accepted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "legacy");

    let exit = gw.exit_status().await;
    assert!(exit.success(), "exit status {exit:?}");
}

/// SIGHUP reloads the routes file (here with the file watch off, so only the signal can).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_routes_file() {
    let legacy = Upstream::start("legacy").await;
    let orders = Upstream::start("orders").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    let head = config_head(&legacy.url(), &[("orders", &orders.url())]);
    let route = |p: u32| {
        format!(
            "{head}routes:\n  - name: all\n    match: {{prefix: /}}\n    service: orders\n    percent: {p}\n"
        )
    };
    std::fs::write(&file, route(0)).unwrap();
    let gw = GatewayProcess::spawn_with(&file, &["--no-watch"], &[]).await;
    let url = format!("http://{}/x", gw.public);
    assert_eq!(
        client()
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "legacy"
    );
    std::fs::write(&file, route(100)).unwrap();
    gw.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = client()
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if body == "orders" {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A SIGTERM or SIGHUP the moment the gateway says it listens is handled, not fatal: the
/// handlers are in place before the listening line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_right_after_start_are_handled() {
    let legacy = Upstream::start("legacy").await;
    let (_dir, file) = routes_file(&format!("{}routes: []\n", config_head(&legacy.url(), &[])));
    for signal in ["-HUP", "-TERM"] {
        let mut gw = GatewayProcess::spawn(&file, &[]).await;
        gw.signal(signal);
        if signal == "-HUP" {
            // Still serving.
            let r = client()
                .get(format!("http://{}/x", gw.public))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        } else {
            let exit = gw.exit_status().await;
            assert!(exit.success(), "SIGTERM right after start: {exit:?}");
        }
    }
}
