//! The admin API's own answers: every error is JSON, with the status that says what went
//! wrong (404, 405 with `Allow`, 413, 415, 400).

mod support;

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
