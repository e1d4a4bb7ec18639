//! A real Prometheus server (Debian `prometheus`), started on loopback for a test, scraping
//! the admin listeners it is given every second.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::client;

pub struct Prometheus {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (host:port of admin listeners) every second.
    // The child is killed and reaped by `Drop` once constructed.
    #[allow(clippy::zombie_processes)]
    pub async fn start(targets: &[std::net::SocketAddr]) -> Prometheus {
        let bin = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("no Prometheus: apt-get install -y prometheus (scripts/test installs it)");
        let dir = tempfile::tempdir().unwrap();
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: strangler\n    scrape_interval: 1s\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            ),
        )
        .unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts");
        let p = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client().get(format!("{}/-/ready", p.url)).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(Instant::now() < deadline, "Prometheus did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Every target scraped once: what comes after is what a window can cover
        // (figures before a gateway's first scrape are not Prometheus's to count).
        p.wait_for_value("count(strangler_config_info)", targets.len() as f64)
            .await;
        p
    }

    pub async fn query(&self, q: &str) -> Vec<serde_json::Value> {
        let v: serde_json::Value = client()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", q)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["status"], "success", "{q}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `q` returns a single value equal to `want`.
    pub async fn wait_for_value(&self, q: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.query(q).await;
            let got = r
                .first()
                .and_then(|m| m["value"][1].as_str()?.parse::<f64>().ok());
            if got == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{q} never became {want} (last {got:?})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
