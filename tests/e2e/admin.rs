//! The admin API's own answers: every error is JSON, with the status that says what went
//! wrong (404, 405 with `Allow`, 413, 415, 400).

use crate::support;

use support::*;

async fn json_of(r: reqwest::Response) -> (u16, Option<String>, serde_json::Value) {
    let status = r.status().as_u16();
    let allow = r
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(
        r.headers()["content-type"],
        "application/json",
        "every answer of the admin API is JSON"
    );
    (status, allow, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_json_with_the_right_status() {
    let legacy = Upstream::start("legacy").await;
    let (_dir, file) = routes_file(&format!(
        "{}  orders:\n    url: {}\nroutes:\n  - name: a\n    match: {{prefix: /a}}\n    service: orders\n",
        config_head(&legacy.url(), &[]),
        legacy.url()
    ));
    let gw = GatewayProcess::spawn(&file, &[]).await;
    let c = client();
    let url = |p: &str| format!("http://{}{p}", gw.admin);

    let (status, _, v) = json_of(c.get(url("/nope")).send().await.unwrap()).await;
    assert_eq!((status, v["error"].as_str()), (404, Some("not_found")));
    assert_eq!(v["path"], "/nope");

    let (status, allow, v) = json_of(c.post(url("/metrics")).send().await.unwrap()).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (405, Some("method_not_allowed"))
    );
    assert!(allow.unwrap().contains("GET"));
    assert!(
        v["allowed"].as_array().unwrap().contains(&"GET".into()),
        "{v}"
    );

    let (status, allow, v) = json_of(c.get(url("/admin/reload")).send().await.unwrap()).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (405, Some("method_not_allowed"))
    );
    assert_eq!(allow.as_deref(), Some("POST"));

    let (status, _, v) = json_of(
        c.post(url("/admin/routes/a/percent"))
            .header("content-type", "application/json")
            .body(format!(
                "{{\"percent\": 5, \"pad\": \"{}\"}}",
                "x".repeat(10_000)
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (413, Some("payload_too_large"))
    );

    let (status, _, v) = json_of(
        c.post(url("/admin/routes/a/percent"))
            .body(r#"{"percent": 5}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (415, Some("unsupported_media_type"))
    );

    let (status, _, v) = json_of(
        c.post(url("/admin/routes/a/percent"))
            .header("content-type", "application/json")
            .body(r#"{"percent": "five"}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, v["error"].as_str()), (400, Some("bad_request")));
    assert!(v["message"].as_str().unwrap().contains("percent"), "{v}");

    let (status, _, v) = json_of(
        c.get(url("/admin/compare?window=soon"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, v["error"].as_str()), (400, Some("bad_request")));

    let (status, _, v) = json_of(
        c.post(url("/admin/routes/%FF/percent"))
            .header("content-type", "application/json")
            .body(r#"{"percent": 5}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, v["error"].as_str()), (400, Some("bad_request")));

    // GET endpoints answer HEAD too.
    let r = c.head(url("/admin/routes")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // None of that changed the file.
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains("prefix: /a}\n    service: orders\n")
    );
    let (status, _, v) = json_of(c.get(url("/admin/routes")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(v["routes"][0]["percent"], 0);
}

/// DNS rebinding: a page whose host name an attacker re-points at 127.0.0.1 sends its own
/// name as `Host` (and a matching `Origin`). Without a token, the admin API answers only
/// requests addressed to localhost or a loopback address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebound_host_name_cannot_drive_or_read_the_admin_api() {
    let legacy = Upstream::start("legacy").await;
    let (_dir, file) = routes_file(&format!(
        "{}  orders:\n    url: {}\nroutes:\n  - name: a\n    match: {{prefix: /a}}\n    service: orders\n",
        config_head(&legacy.url(), &[]),
        legacy.url()
    ));
    let gw = GatewayProcess::spawn(&file, &[]).await;
    let port = gw.admin.port();
    let before = std::fs::read_to_string(&file).unwrap();
    let body = r#"{"percent": 50}"#;
    let rebound = format!(
        "POST /admin/routes/a/percent HTTP/1.1\r\nHost: rebind.attacker.example:{port}\r\nOrigin: http://rebind.attacker.example:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, _, answer) = raw(gw.admin, &rebound).await;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
    let read = format!(
        "GET /admin/routes HTTP/1.1\r\nHost: rebind.attacker.example:{port}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(raw(gw.admin, &read).await.0, 403);
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let ok = format!("GET /admin/routes HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        assert_eq!(raw(gw.admin, &ok).await.0, 200, "{host}");
    }
    // From the same origin, the change goes through.
    let same = rebound.replace("rebind.attacker.example", "localhost");
    assert_eq!(raw(gw.admin, &same).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_percent_body_must_say_exactly_one_thing() {
    let legacy = Upstream::start("legacy").await;
    let (_dir, file) = routes_file(&format!(
        "{}  orders:\n    url: {}\nroutes:\n  - name: a\n    match: {{prefix: /a}}\n    service: orders\n",
        config_head(&legacy.url(), &[]),
        legacy.url()
    ));
    let gw = GatewayProcess::spawn(&file, &[]).await;
    let c = client();
    for body in [
        r#"{"percent": 5, "percent": 95}"#,
        r#"{"percent": 5, "force": true}"#,
    ] {
        let r = c
            .post(format!("http://{}/admin/routes/a/percent", gw.admin))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"], "bad_request", "{body}");
    }
    let cfg = strangler::Config::load(&file).unwrap();
    assert_eq!(cfg.routes[0].percent_bp, 0);
}
