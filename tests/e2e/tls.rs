//! TLS termination on the public listener: certificates made in the test (rcgen), a real
//! gateway process, rustls clients. A certificate replaced on disk is taken for new
//! connections without dropping open ones; a bad one keeps the old and is reported like any
//! invalid config; `check` validates the files.

use crate::support;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};

use support::tls::{self, Ca, Leaf};
use support::*;

fn write_pair(dir: &Path, leaf: &Leaf) {
    std::fs::write(dir.join("cert.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &leaf.key_pem).unwrap();
}

/// Publishes a new certificate and key at once, as Kubernetes does a secret's: both files in
/// a new directory `version`, then the symlink `live` swapped to it (a rename: atomic).
fn publish(dir: &Path, version: &str, cert_pem: &str, key_pem: &str) {
    let v = dir.join(version);
    std::fs::create_dir(&v).unwrap();
    std::fs::write(v.join("cert.pem"), cert_pem).unwrap();
    std::fs::write(v.join("key.pem"), key_pem).unwrap();
    let tmp = dir.join(".live.new");
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("live")).unwrap();
}

fn config(legacy: &Upstream) -> String {
    format!(
        "{}tls: {{cert: live/cert.pem, key: live/key.pem}}\nroutes: []\n",
        config_head(&legacy.url(), &[])
    )
}

async fn get_over(h2: &mut tls::H2, port: u16) -> u16 {
    h2.ready().await.unwrap();
    let req = Request::get(format!("https://localhost:{port}/x"))
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), h2.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    resp.into_body().collect().await.unwrap();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_replaced_on_disk_serves_new_connections_and_keeps_open_ones() {
    let legacy = Upstream::start("legacy").await;
    let ca = Ca::new("test CA");
    let (first, second) = (ca.leaf("first"), ca.leaf("second"));
    let (dir, file) = routes_file(&config(&legacy));
    publish(dir.path(), "v1", &first.cert_pem, &first.key_pem);
    let gw = GatewayProcess::spawn(&file, &[]).await;
    let port = gw.public.port();
    let client = ca.client(&[b"h2"]);

    let s = tls::connect(gw.public, client.clone()).await.unwrap();
    assert_eq!(tls::peer_cert(&s), first.der);
    let mut open = tls::h2(s).await;
    assert_eq!(get_over(&mut open, port).await, 200);

    // Renewed: new connections get the new certificate (the files are polled every 2 s).
    publish(dir.path(), "v2", &second.cert_pem, &second.key_pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = tls::connect(gw.public, client.clone()).await.unwrap();
        if tls::peer_cert(&s) == second.der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not taken"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection opened before goes on.
    assert_eq!(get_over(&mut open, port).await, 200);

    // A broken certificate: the reload is refused and counted; the last good one serves.
    let series = r#"strangler_config_reloads_total{result="error"}"#;
    assert_eq!(metric(&client_metrics(gw.admin).await, series), Some(0.0));
    publish(dir.path(), "v3", "not a certificate\n", &second.key_pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = client_metrics(gw.admin).await;
        if metric(&m, series) == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "no refused reload:\n{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = tls::connect(gw.public, client.clone()).await.unwrap();
    assert_eq!(tls::peer_cert(&s), second.der);
    let mut fresh = tls::h2(s).await;
    assert_eq!(get_over(&mut fresh, port).await, 200);
    assert_eq!(get_over(&mut open, port).await, 200);
    // Reported once, not at every poll: two more polls (each reads the files it named),
    // and still one refused reload.
    let (_watcher, opens) = count_opens(&dir.path().join("v3/cert.pem"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while opens.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "the files were not polled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&client_metrics(gw.admin).await, series), Some(1.0));
}

async fn client_metrics(admin: std::net::SocketAddr) -> String {
    get_text(format!("http://{admin}/metrics")).await
}

fn check(file: &Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strangler"))
        .arg("check")
        .arg(file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn check_validates_the_tls_files() {
    let ca = Ca::new("test CA");
    let (good, other) = (ca.leaf("good"), ca.leaf("other"));
    let text = "listen: 127.0.0.1:0\nlegacy: {url: 'http://127.0.0.1:9'}\ntls:\n  cert: cert.pem\n  key: key.pem\n";
    let (dir, file) = routes_file(text);

    // Missing files: `check` may run where the certificates are not (a CI job), so it says
    // it could not check them, at the position of each, and passes...
    let (ok, out) = check(&file);
    assert!(ok, "{out}");
    assert!(
        out.contains("warning: ")
            && out.contains("routes.yaml:4:9: tls.cert: ")
            && out.contains("is not here, so it was not checked"),
        "{out}"
    );
    assert!(out.contains("routes.yaml:5:8: tls.key: "), "{out}");
    // ...while the gateway refuses to start without them.
    let serve = std::process::Command::new(env!("CARGO_BIN_EXE_strangler"))
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!serve.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&serve.stdout),
        String::from_utf8_lossy(&serve.stderr)
    );
    assert!(said.contains("tls.cert: cannot read"), "{said}");

    write_pair(dir.path(), &good);
    let (ok, out) = check(&file);
    assert!(ok, "{out}");

    // A key that is not the certificate's.
    std::fs::write(dir.path().join("key.pem"), &other.key_pem).unwrap();
    let (ok, out) = check(&file);
    assert!(!ok);
    assert!(out.contains("tls.cert: "), "{out}");
    assert!(out.contains("do not make a usable pair"), "{out}");

    // Not PEM at all.
    std::fs::write(dir.path().join("key.pem"), "garbage").unwrap();
    let (ok, out) = check(&file);
    assert!(!ok);
    assert!(out.contains("routes.yaml:5:8: tls.key: "), "{out}");
    assert!(out.contains("no usable private key"), "{out}");
    std::fs::write(dir.path().join("cert.pem"), "").unwrap();
    let (ok, out) = check(&file);
    assert!(!ok);
    assert!(out.contains("no certificate in it"), "{out}");
}
