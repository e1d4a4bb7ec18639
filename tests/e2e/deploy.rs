//! deploy/kubernetes holds up against the binary it deploys, so the two cannot drift: every
//! manifest parses; the routes file of the ConfigMap passes `strangler check`, laid out as
//! the pods see it; the gateway pods' ports, probes, scrape annotations, token and grace
//! period match that file, and a real `strangler serve` on it answers the probes and the
//! scrape; every `strangler` command line (the containers' and the README's) is one the
//! binary accepts; and the plan runner seeds and publishes exactly what the replicas mount.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_strangler");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn deploy_dir() -> PathBuf {
    Path::new(ROOT).join("deploy/kubernetes")
}

fn read(name: &str) -> String {
    let path = deploy_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn parse_yaml(text: &str, what: &str) -> Value {
    serde_saphyr::from_str::<Value>(text)
        .unwrap_or_else(|e| panic!("{what} is not valid YAML: {e}\n{text}"))
}

fn string<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, found {v}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| string(s, "a list of strings").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The documents of a multi-document YAML text: split on lines that are exactly `---`.
fn documents(text: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    for line in text.lines() {
        if line == "---" {
            out.push(String::new());
        } else {
            let doc = out.last_mut().unwrap();
            doc.push_str(line);
            doc.push('\n');
        }
    }
    out
}

fn kustomization() -> Value {
    parse_yaml(&read("kustomization.yaml"), "kustomization.yaml")
}

/// One YAML document of a manifest.
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
}

/// Every document of every manifest the kustomization lists, comments-only ones left out.
fn manifests() -> Vec<Doc> {
    let mut docs = Vec::new();
    for file in strings(&kustomization()["resources"]) {
        let text = read(&file);
        for (i, doc) in documents(&text).iter().enumerate() {
            let value = parse_yaml(doc, &format!("{file}, document {}", i + 1));
            if !value.is_null() {
                docs.push(Doc {
                    file: file.clone(),
                    value,
                });
            }
        }
    }
    docs
}

fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Value {
    &docs
        .iter()
        .find(|d| d.kind() == kind && d.name() == name)
        .unwrap_or_else(|| panic!("no {kind} named {name} in the manifests"))
        .value
}

/// A container of a workload, with the workload and its pod template.
struct Container<'a> {
    workload: &'a Value,
    template: &'a Value,
    value: &'a Value,
    init: bool,
}

impl Container<'_> {
    fn pod(&self) -> &Value {
        &self.template["spec"]
    }

    fn name(&self) -> String {
        format!(
            "{} {}, container {}",
            self.workload["kind"].as_str().unwrap_or(""),
            self.workload["metadata"]["name"].as_str().unwrap_or(""),
            self.value["name"].as_str().unwrap_or("")
        )
    }

    /// `command` then `args`.
    fn argv(&self) -> Vec<String> {
        let mut argv = strings(&self.value["command"]);
        argv.extend(strings(&self.value["args"]));
        argv
    }

    /// The value of an option given as `--name VALUE` or `--name=VALUE`.
    fn flag(&self, name: &str) -> String {
        let argv = self.argv();
        let eq = format!("{name}=");
        argv.iter()
            .enumerate()
            .find_map(|(i, a)| {
                if a == name {
                    argv.get(i + 1).cloned()
                } else {
                    a.strip_prefix(&eq).map(str::to_string)
                }
            })
            .unwrap_or_else(|| panic!("{}: no {name}", self.name()))
    }

    /// The container's port of that name or number.
    fn port(&self, port: &Value) -> u16 {
        if let Some(n) = port.as_u64() {
            return n as u16;
        }
        let name = string(port, "a port");
        self.value["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("{}: no port named {name}", self.name())) as u16
    }

    /// The volume mounted at the longest mount path that holds `path`: (mount path, volume).
    fn mount_of(&self, path: &str) -> (String, &Value) {
        let mount = self.value["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| {
                let at = m["mountPath"].as_str().unwrap_or("/nowhere");
                path.strip_prefix(at).is_some_and(|r| r.starts_with('/'))
            })
            .max_by_key(|m| m["mountPath"].as_str().unwrap_or("").len())
            .unwrap_or_else(|| panic!("{}: nothing is mounted where {path} is", self.name()));
        let volume = self.pod()["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("{}: no volume {}", self.name(), mount["name"]));
        (mount["mountPath"].as_str().unwrap().to_string(), volume)
    }
}

/// Every container (init containers too) of every workload in the manifests.
fn containers(docs: &[Doc]) -> Vec<Container<'_>> {
    let mut out = Vec::new();
    for d in docs {
        let template = match d.kind() {
            "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => &d.value["spec"]["template"],
            "CronJob" => &d.value["spec"]["jobTemplate"]["spec"]["template"],
            _ => continue,
        };
        for (key, init) in [("initContainers", true), ("containers", false)] {
            for c in template["spec"][key].as_array().into_iter().flatten() {
                out.push(Container {
                    workload: &d.value,
                    template,
                    value: c,
                    init,
                });
            }
        }
    }
    out
}

fn runs_strangler(argv: &[String]) -> bool {
    argv.first()
        .is_some_and(|a| Path::new(a).file_name().is_some_and(|n| n == "strangler"))
}

/// The one container that runs `strangler WORDS...`.
fn container_running<'a>(docs: &'a [Doc], words: &[&str]) -> Container<'a> {
    let mut found: Vec<Container> = containers(docs)
        .into_iter()
        .filter(|c| {
            let argv = c.argv();
            runs_strangler(&argv)
                && argv.len() > words.len()
                && argv[1..=words.len()].iter().zip(words).all(|(a, w)| a == w)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one container running `strangler {}`",
        words.join(" ")
    );
    found.pop().unwrap()
}

/// The files a ConfigMap volume shows: each file's path relative to the mount, and its
/// content (the items when the volume lists them, else every key).
fn configmap_files(docs: &[Doc], volume: &Value) -> (String, BTreeMap<String, String>) {
    let name = string(&volume["configMap"]["name"], "configMap.name");
    let data = &find(docs, "ConfigMap", name)["data"];
    let content =
        |key: &str| string(&data[key], &format!("key {key} of the ConfigMap {name}")).to_string();
    let mut files = BTreeMap::new();
    match volume["configMap"]["items"].as_array() {
        Some(items) => {
            for item in items {
                let key = string(&item["key"], "an item's key");
                files.insert(
                    string(&item["path"], "an item's path").to_string(),
                    content(key),
                );
            }
        }
        None => {
            for key in data.as_object().unwrap().keys() {
                files.insert(key.clone(), content(key));
            }
        }
    }
    (name.to_string(), files)
}

/// The gateway: its container, and the files under its routes file's mount.
struct Gateway<'a> {
    container: Container<'a>,
    /// The `--config` path in the container.
    config: String,
    /// Where the ConfigMap is mounted, its name, and its files relative to the mount.
    mount: String,
    configmap: String,
    files: BTreeMap<String, String>,
}

impl<'a> Gateway<'a> {
    fn of(docs: &'a [Doc]) -> Gateway<'a> {
        let container = container_running(docs, &["serve"]);
        let config = container.flag("--config");
        let (mount, volume) = container.mount_of(&config);
        assert!(
            volume["configMap"].is_object(),
            "{}: the routes file is not on a ConfigMap volume",
            container.name()
        );
        let (configmap, files) = configmap_files(docs, volume);
        Gateway {
            container,
            config,
            mount,
            configmap,
            files,
        }
    }

    /// The routes file's path relative to the mount.
    fn config_rel(&self) -> &str {
        self.config
            .strip_prefix(&self.mount)
            .unwrap()
            .trim_start_matches('/')
    }

    fn routes_text(&self) -> &str {
        self.files.get(self.config_rel()).unwrap_or_else(|| {
            panic!(
                "the ConfigMap {} lays out no {} under {}",
                self.configmap,
                self.config_rel(),
                self.mount
            )
        })
    }

    fn routes(&self) -> Value {
        parse_yaml(self.routes_text(), "the routes file of the ConfigMap")
    }

    /// Writes the files as the pod sees them into `dir`; the routes file's path there.
    fn lay_out(&self, dir: &Path) -> PathBuf {
        for (rel, text) in &self.files {
            let path = dir.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
        }
        dir.join(self.config_rel())
    }
}

/// The routes file's settings the manifests depend on.
struct Routes {
    listen: SocketAddr,
    admin: SocketAddr,
    token_env: Option<String>,
    drain_timeout: Duration,
}

impl Routes {
    fn of(v: &Value) -> Routes {
        let addr = |v: &Value, default: &str| -> SocketAddr {
            v.as_str().unwrap_or(default).parse().unwrap()
        };
        Routes {
            listen: addr(&v["listen"], "127.0.0.1:8080"),
            admin: addr(&v["admin"]["listen"], "127.0.0.1:9901"),
            token_env: v["admin"]["token_env"].as_str().map(str::to_string),
            drain_timeout: humantime::parse_duration(v["drain_timeout"].as_str().unwrap_or("30s"))
                .unwrap(),
        }
    }
}

#[test]
fn every_manifest_parses_and_the_kustomization_lists_them_all() {
    let listed: BTreeSet<String> = strings(&kustomization()["resources"]).into_iter().collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, on_disk,
        "kustomization.yaml resources vs the directory"
    );
    let docs = manifests();
    for d in &docs {
        assert!(
            d.value["apiVersion"].is_string() && !d.kind().is_empty() && !d.name().is_empty(),
            "{}: a document without apiVersion, kind or metadata.name",
            d.file
        );
    }
    // Every image a container names is one the kustomization can point at a registry.
    let images: BTreeSet<String> = kustomization()["images"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| string(&i["name"], "images[].name").to_string())
        .collect();
    for c in containers(&docs) {
        let image = string(&c.value["image"], "image");
        let name = image.rsplit_once(':').map_or(image, |(n, _)| n);
        assert!(
            images.contains(name),
            "{}: image {name} is not in kustomization.yaml's images",
            c.name()
        );
    }
}

#[test]
fn the_routes_file_of_the_configmap_passes_check() {
    let docs = manifests();
    let gw = Gateway::of(&docs);
    let dir = tempfile::tempdir().unwrap();
    let config = gw.lay_out(dir.path());
    let out = Command::new(BIN)
        .arg("check")
        .arg(&config)
        .env_remove("STRANGLER_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`strangler check` refuses the routes file of the ConfigMap {}:\n{}{}",
        gw.configmap,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_gateway_pods_match_the_routes_file() {
    let docs = manifests();
    let gw = Gateway::of(&docs);
    let routes = Routes::of(&gw.routes());
    let c = &gw.container;

    // Ports: exactly the public and the admin listener's.
    let ports: BTreeSet<u16> = c.value["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p["containerPort"].as_u64().unwrap() as u16)
        .collect();
    assert_eq!(
        ports,
        BTreeSet::from([routes.listen.port(), routes.admin.port()]),
        "{}: containerPorts vs listen and admin.listen",
        c.name()
    );

    // Probes: /healthz and /readyz on the admin port.
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c.value[probe]["httpGet"];
        assert_eq!(get["path"], path, "{}: {probe}", c.name());
        assert_eq!(
            c.port(&get["port"]),
            routes.admin.port(),
            "{}: {probe} port",
            c.name()
        );
    }

    // Prometheus scrapes the admin listener's /metrics.
    let notes = &c.template["metadata"]["annotations"];
    assert_eq!(notes["prometheus.io/scrape"], "true");
    assert_eq!(notes["prometheus.io/port"], routes.admin.port().to_string());
    assert_eq!(notes["prometheus.io/path"], "/metrics");

    // An admin listener beyond loopback needs its token: from a Secret.
    if !routes.admin.ip().is_loopback() {
        let var = routes
            .token_env
            .as_deref()
            .expect("admin.token_env beyond loopback");
        let env = c.value["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == var)
            .unwrap_or_else(|| panic!("{}: no env {var} (admin.token_env)", c.name()));
        let secret = &env["valueFrom"]["secretKeyRef"];
        assert!(
            secret["name"].is_string() && secret["key"].is_string(),
            "{}: {var} does not come from a Secret",
            c.name()
        );
    }

    // The drain ends on its own before the kubelet's SIGKILL.
    let grace = c.pod()["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let pre_stop = c.value["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        Duration::from_secs(grace) > routes.drain_timeout + Duration::from_secs(pre_stop),
        "terminationGracePeriodSeconds {grace} is not above the preStop sleep ({pre_stop} s) plus drain_timeout ({:?})",
        routes.drain_timeout
    );

    // The Service sends to the public port only, and selects these pods.
    let labels = c.template["metadata"]["labels"].as_object().unwrap();
    let services: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.kind() == "Service")
        .filter(|d| {
            d.value["spec"]["selector"]
                .as_object()
                .is_some_and(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
        })
        .collect();
    assert_eq!(services.len(), 1, "one Service selects the gateway pods");
    for p in services[0].value["spec"]["ports"].as_array().unwrap() {
        assert_eq!(
            c.port(&p["targetPort"]),
            routes.listen.port(),
            "the Service's port {} does not send to the public listener",
            p["port"]
        );
    }
}

#[test]
fn every_pod_runs_as_non_root_on_a_read_only_root_filesystem() {
    let docs = manifests();
    for c in containers(&docs) {
        let selector = c.workload["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap();
        let labels = c.template["metadata"]["labels"].as_object().unwrap();
        assert!(
            selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
            "{}: the selector does not select the pod template",
            c.name()
        );
        assert_eq!(
            c.pod()["securityContext"]["runAsNonRoot"],
            true,
            "{}",
            c.name()
        );
        let sc = &c.value["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{}", c.name());
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", c.name());
        assert!(
            c.value["resources"]["requests"].is_object(),
            "{}: resources",
            c.name()
        );
    }
}

/// Loopback of the same family for an unspecified address (what a client connects to).
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// The routes file with both listeners on free ports (`:0`) of the same addresses.
fn on_free_ports(text: &str, routes: &Routes) -> String {
    let mut text = text.to_string();
    for addr in [routes.listen, routes.admin] {
        let was = addr.to_string();
        assert_eq!(
            text.matches(&was).count(),
            1,
            "{was} once in the routes file"
        );
        text = text.replace(&was, &SocketAddr::new(addr.ip(), 0).to_string());
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_on_the_routes_file_answers_the_probes_and_the_scrape() {
    let docs = manifests();
    let gw = Gateway::of(&docs);
    let routes = Routes::of(&gw.routes());
    let dir = tempfile::tempdir().unwrap();
    let config = gw.lay_out(dir.path());
    std::fs::write(&config, on_free_ports(gw.routes_text(), &routes)).unwrap();

    // Without the Secret's token, an admin listener beyond loopback does not start.
    if let Some(var) = routes
        .token_env
        .as_deref()
        .filter(|_| !routes.admin.ip().is_loopback())
    {
        let mut child = Command::new(BIN)
            .args(["serve", "--no-access-log", "--config"])
            .arg(&config)
            .env_remove(var)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            status.is_some_and(|s| !s.success()),
            "a gateway without {var} started its admin listener beyond loopback: {status:?}"
        );
    }

    let env: Vec<(&str, &str)> = routes
        .token_env
        .as_deref()
        .map(|var| vec![(var, "deploy-test-token")])
        .unwrap_or_default();
    let proc = support::GatewayProcess::spawn_with(&config, &["--no-access-log"], &env).await;
    let admin = reachable(proc.admin);

    // As the kubelet and Prometheus ask: the pod's address as Host, the configured port.
    let c = &gw.container;
    let scrape = c.template["metadata"]["annotations"]["prometheus.io/path"]
        .as_str()
        .unwrap_or("/metrics");
    let paths = [
        string(
            &c.value["livenessProbe"]["httpGet"]["path"],
            "livenessProbe path",
        ),
        string(
            &c.value["readinessProbe"]["httpGet"]["path"],
            "readinessProbe path",
        ),
        scrape,
    ];
    for path in paths {
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: 10.1.2.3:{}\r\nUser-Agent: kube-probe/1.30\r\nConnection: close\r\n\r\n",
            routes.admin.port()
        );
        let (status, _, body) = support::raw(admin, &head).await;
        assert_eq!(
            status,
            200,
            "GET {path} on the admin listener: {}",
            String::from_utf8_lossy(&body)
        );
        if path == scrape {
            let text = String::from_utf8_lossy(&body);
            assert!(text.contains("strangler_config_info"), "{text}");
            // Every series the alerting rules read is one a gateway exports.
            for name in rule_metrics() {
                assert!(
                    text.contains(&format!("# TYPE {name} ")),
                    "the alerting rules read {name}, which the gateway does not export:\n{text}"
                );
            }
        }
    }
}

// --- Alerts and the plan runner's metrics -------------------------------------------

fn rules_file() -> PathBuf {
    Path::new(ROOT).join("deploy/prometheus/strangler-rules.yml")
}

/// The metric names the alerting rules' expressions read.
fn rule_metrics() -> BTreeSet<String> {
    let rules = parse_yaml(
        &std::fs::read_to_string(rules_file()).unwrap(),
        "the rules file",
    );
    let mut names = BTreeSet::new();
    for g in rules["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            let expr = string(&r["expr"], "expr");
            let mut rest = expr;
            while let Some(i) = rest.find("strangler_") {
                let tail = &rest[i..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                names.insert(tail[..end].to_string());
                rest = &tail[end..];
            }
        }
    }
    assert!(names.len() >= 4, "{names:?}");
    names
}

fn promtool(args: &[&str], file: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .arg(file)
        .output()
        .expect("no promtool: apt-get install -y prometheus (scripts/test installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {args:?} {}:\n{text}",
        file.display()
    );
    text
}

/// The alerting rules pass `promtool check rules`, the PrometheusRule holds the same
/// groups, and `promtool test rules` shows the rollback alerts firing on the series a
/// gateway or a runner exports.
#[test]
fn the_alerting_rules_pass_promtool_and_fire_on_a_rollback() {
    let text = std::fs::read_to_string(rules_file()).unwrap();
    promtool(&["check", "rules"], &rules_file());
    let rules = parse_yaml(&text, "the rules file");
    let operator = parse_yaml(
        &read("monitoring/prometheus-rule.yaml"),
        "the PrometheusRule",
    );
    assert_eq!(operator["kind"], "PrometheusRule");
    assert_eq!(
        operator["spec"]["groups"], rules["groups"],
        "the PrometheusRule and deploy/prometheus/strangler-rules.yml disagree"
    );
    let kustomized = parse_yaml(
        &read("monitoring/kustomization.yaml"),
        "monitoring/kustomization.yaml",
    );
    assert_eq!(strings(&kustomized["resources"]), ["prometheus-rule.yaml"]);

    // The alerts, as they fire for the plan `orders-read`: their labels and annotations.
    let alert = |name: &str| -> Value {
        let r = rules["groups"][0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["alert"] == name)
            .unwrap_or_else(|| panic!("no alert {name}"))
            .clone();
        let mut annotations = serde_json::Map::new();
        for (k, v) in r["annotations"].as_object().unwrap() {
            let v = v
                .as_str()
                .unwrap()
                .replace("{{ $labels.plan }}", "orders-read");
            annotations.insert(k.clone(), v.into());
        }
        let mut labels = r["labels"].clone();
        labels["plan"] = "orders-read".into();
        serde_json::json!({"exp_labels": labels, "exp_annotations": annotations})
    };
    let dir = tempfile::tempdir().unwrap();
    let test = dir.path().join("rules-test.yml");
    let case = serde_json::json!({
        "rule_files": [rules_file().display().to_string()],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                // A replica's gauge: rolled back from minute 2.
                {"series": "strangler_plan_state{plan=\"orders-read\",state=\"rolled_back\",instance=\"10.0.0.1:9901\"}",
                 "values": "0 0 1 1 1 1"},
                // The runner's: the rollback unpublished from minute 2 (the alert waits 2m).
                {"series": "strangler_plan_unpublished{plan=\"orders-read\",instance=\"10.0.0.9:9902\"}",
                 "values": "0 0 1 1 1 1"},
            ],
            "alert_rule_test": [
                {"eval_time": "1m", "alertname": "StranglerPlanRolledBack", "exp_alerts": []},
                {"eval_time": "3m", "alertname": "StranglerPlanRolledBack", "exp_alerts": [alert("StranglerPlanRolledBack")]},
                {"eval_time": "3m", "alertname": "StranglerPlanRollbackUnpublished", "exp_alerts": []},
                {"eval_time": "5m", "alertname": "StranglerPlanRollbackUnpublished", "exp_alerts": [alert("StranglerPlanRollbackUnpublished")]},
            ],
        }],
    });
    // JSON is YAML.
    std::fs::write(&test, serde_json::to_string_pretty(&case).unwrap()).unwrap();
    promtool(&["test", "rules"], &test);
}

/// The runner's metrics (the plan's live state, an unpublished rollback) are scraped: its
/// pod carries the scrape annotations of its `--admin` port, which listens beyond loopback
/// with the admin token, behind a Service.
#[test]
fn the_plan_runner_is_scraped_on_its_admin_port_with_a_token() {
    let docs = manifests();
    let runner = container_running(&docs, &["plan", "run"]);
    let name = runner.name();
    let admin: SocketAddr = runner.flag("--admin").parse().unwrap();
    assert!(
        !admin.ip().is_loopback(),
        "{name}: --admin {admin} cannot be scraped"
    );
    let annotations = &runner.template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true", "{name}");
    assert_eq!(
        string(&annotations["prometheus.io/port"], "prometheus.io/port"),
        admin.port().to_string(),
        "{name}"
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics", "{name}");
    let token = runner.value["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "STRANGLER_ADMIN_TOKEN")
        .unwrap_or_else(|| panic!("{name}: no STRANGLER_ADMIN_TOKEN for --admin beyond loopback"));
    assert!(
        token["valueFrom"]["secretKeyRef"]["name"].is_string(),
        "{token}"
    );
    assert_eq!(runner.port(&Value::from("admin")), admin.port());
    let labels = &runner.template["metadata"]["labels"];
    let service = docs
        .iter()
        .find(|d| {
            d.kind() == "Service"
                && d.value["spec"]["selector"]
                    .as_object()
                    .is_some_and(|sel| sel.iter().all(|(k, v)| &labels[k] == v))
        })
        .expect("a Service in front of the plan runner");
    assert_eq!(service.value["spec"]["ports"][0]["port"], admin.port());
}

/// Each replica's memory limit holds the gateway's own use plus the budgets the docs state
/// for request bodies kept for a fallback or a retry, and for shadow copies.
#[test]
fn the_gateway_memory_limit_holds_its_documented_budgets() {
    let docs = manifests();
    let gw = Gateway::of(&docs);
    let limit = string(
        &gw.container.value["resources"]["limits"]["memory"],
        "the gateway's memory limit",
    );
    let mib: u64 = match (limit.strip_suffix("Mi"), limit.strip_suffix("Gi")) {
        (Some(n), _) => n.parse().ok(),
        (_, Some(n)) => n.parse::<u64>().ok().map(|n| n * 1024),
        _ => None,
    }
    .unwrap_or_else(|| panic!("memory limit {limit}: expected Mi or Gi"));
    // The budgets as the docs state them, read from there.
    let docs_say = |file: &str, needle: &str| {
        let text = std::fs::read_to_string(Path::new(ROOT).join(file)).unwrap();
        assert!(text.contains(needle), "{file} no longer says {needle:?}");
    };
    docs_say("docs/resilience.md", "256 MiB");
    docs_say("docs/shadow.md", "64 MiB");
    let own = 128;
    assert!(
        mib >= own + 256 + 64,
        "the gateway's limit {limit} is below its own use ({own} MiB) plus the replay (256 MiB) and shadow (64 MiB) budgets"
    );
}

// --- Command lines ------------------------------------------------------------------

/// Whether `strangler ARGS...` is a command line the binary accepts: the binary's own parser
/// reads it (subcommands, options and their values, required arguments), without running it.
fn check_invocation(argv: &[String]) -> Result<(), String> {
    strangler::parse(argv)
        .map(drop)
        .map_err(|e| e.to_string().trim_end().to_string())
}

#[test]
fn the_check_of_command_lines_tells_good_from_bad() {
    let argv = |s: &str| -> Vec<String> { s.split_whitespace().map(str::to_string).collect() };
    for good in [
        "strangler serve --config /etc/strangler/routes.yaml",
        "strangler serve -c routes.yaml --no-watch",
        "strangler serve --log-format text --config=r.yaml",
        "strangler check routes.yaml",
        "strangler compare --prometheus http://p:9090 --window 5m",
        "strangler plan run orders-read -c r.yaml --prometheus p:9090 --interval 10s",
        "strangler explain r.yaml GET /api/orders/7 -H x-user-id:7 --client-ip 10.0.0.7",
    ] {
        assert_eq!(check_invocation(&argv(good)), Ok(()), "{good}");
    }
    for bad in [
        "strangler serve --config",
        "strangler serve --conf r.yaml",
        "strangler serve --no-watch=yes",
        "strangler serve extra",
        "strangler check",
        "strangler nosuch --config r.yaml",
        "strangler",
        // Values the parser reads, not only counts: a scheme, a duration, an address.
        "strangler compare --prometheus ftp://p:9090",
        "strangler plan run orders-read -c r.yaml --prometheus p:9090 --interval soon",
        "strangler explain r.yaml GET /x --client-ip nobody",
    ] {
        assert!(check_invocation(&argv(bad)).is_err(), "{bad} passed");
    }
}

#[test]
fn every_container_command_line_is_one_the_binary_accepts() {
    let docs = manifests();
    let mut problems = Vec::new();
    let mut checked = 0;
    for c in containers(&docs) {
        let argv = c.argv();
        if runs_strangler(&argv) {
            checked += 1;
            if let Err(e) = check_invocation(&argv) {
                problems.push(format!("{}: {e}", c.name()));
            }
        }
    }
    assert!(checked >= 2, "only {checked} containers run strangler");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The `strangler` command lines of the ```sh blocks of a Markdown text: the words after a
/// `strangler` at the start of a command or after `--` (`kubectl exec ... -- strangler`),
/// up to the end of that command.
fn readme_commands(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("```") {
            in_sh = !in_sh && (t == "```sh" || t == "```bash" || t == "```shell");
            continue;
        }
        if !in_sh {
            continue;
        }
        let words: Vec<&str> = line
            .split_whitespace()
            .take_while(|w| !w.starts_with('#'))
            .collect();
        for (i, w) in words.iter().enumerate() {
            let starts = i == 0 || matches!(words[i - 1], "--" | "|" | "&&" | ";" | "$");
            if starts && (*w == "strangler" || w.ends_with("/release/strangler")) {
                let cmd = words[i..]
                    .iter()
                    .take_while(|w| !matches!(**w, "|" | "&&" | "||" | ";" | ">" | "2>&1"))
                    .map(|w| w.trim_matches(['\'', '"']).to_string())
                    .collect();
                out.push(cmd);
            }
        }
    }
    out
}

#[test]
fn the_readme_commands_are_ones_the_binary_accepts_and_it_names_every_file() {
    let text = read("README.md");
    let commands = readme_commands(&text);
    assert!(
        commands.len() >= 3,
        "only {} strangler commands",
        commands.len()
    );
    let problems: Vec<String> = commands
        .iter()
        .filter_map(|c| {
            check_invocation(c)
                .err()
                .map(|e| format!("README.md: `{}`: {e}", c.join(" ")))
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    for entry in std::fs::read_dir(deploy_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name == "README.md" || text.contains(&format!("`{name}`")),
            "README.md does not say what `{name}` is"
        );
    }
}

#[test]
fn the_dockerfile_builds_with_a_rust_that_cargo_accepts() {
    let dockerfile = read("Dockerfile");
    let version = |s: &str| -> Vec<u32> { s.split('.').map(|n| n.parse().unwrap()).collect() };
    let image = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG RUST_VERSION="))
        .expect("ARG RUST_VERSION= in the Dockerfile");
    let manifest = std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).unwrap();
    let wanted = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("rust-version in Cargo.toml")
        .trim_matches('"');
    assert!(
        version(image.trim()) >= version(wanted),
        "the Dockerfile builds with Rust {image}, Cargo.toml wants {wanted}"
    );
}

// --- The plan runner ----------------------------------------------------------------

/// The words of a shell command, quotes stripped (enough for a command without quoted
/// spaces).
fn shell_words(cmd: &str) -> Vec<String> {
    cmd.split_whitespace()
        .map(|w| w.trim_matches(['\'', '"']).to_string())
        .collect()
}

#[test]
fn the_plan_runner_publishes_what_the_replicas_mount() {
    let docs = manifests();
    let gw = Gateway::of(&docs);
    let runner = container_running(&docs, &["plan", "run"]);
    let name = runner.name();

    // One runner, never two at once.
    assert_eq!(runner.workload["spec"]["replicas"], 1, "{name}");
    assert_eq!(
        runner.workload["spec"]["strategy"]["type"], "Recreate",
        "{name}"
    );

    // Its working copy and state file live on a PersistentVolumeClaim of the manifests.
    let config = runner.flag("--config");
    for path in [config.clone(), runner.flag("--state")] {
        let (_, volume) = runner.mount_of(&path);
        let claim = string(
            &volume["persistentVolumeClaim"]["claimName"],
            &format!("{name}: the volume of {path} is not a PersistentVolumeClaim: claimName"),
        );
        find(&docs, "PersistentVolumeClaim", claim);
    }

    // The working copy is laid out as the replicas see the ConfigMap: the routes file at
    // --config, the plan where its `plans:` folder is.
    let (work_mount, _) = runner.mount_of(&config);
    let work_root = config
        .strip_suffix(gw.config_rel())
        .unwrap_or_else(|| {
            panic!(
                "{name}: --config {config} does not end as the replicas' {}",
                gw.config_rel()
            )
        })
        .trim_end_matches('/');
    assert!(work_root.starts_with(&work_mount), "{name}: {work_root}");
    let plans = gw.routes()["plans"]
        .as_str()
        .expect("a `plans:` folder in the routes file")
        .trim_end_matches('/')
        .to_string();
    let plan_name = runner.argv()[3].clone();
    let plan_rel = format!("{plans}/{plan_name}.yaml");
    let plan = parse_yaml(
        gw.files
            .get(&plan_rel)
            .unwrap_or_else(|| panic!("the replicas' ConfigMap lays out no {plan_rel}")),
        &plan_rel,
    );
    let route = string(&plan["route"], "the plan's route");
    assert!(
        gw.routes()["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == route),
        "the plan moves the route {route}, which the routes file does not have"
    );

    // --after-change publishes every key the replicas mount, each from the working copy's
    // file at the same place, to the ConfigMap the replicas mount.
    let after = runner.flag("--after-change");
    let words = shell_words(&after);
    let target = words
        .windows(3)
        .find(|w| w[0] == "create" && w[1] == "configmap")
        .map(|w| w[2].clone())
        .expect("--after-change runs `kubectl create configmap NAME`");
    assert_eq!(
        target, gw.configmap,
        "--after-change publishes another ConfigMap"
    );
    let published: BTreeMap<String, String> = words
        .iter()
        .filter_map(|w| w.strip_prefix("--from-file="))
        .map(|kv| {
            let (k, p) = kv.split_once('=').expect("--from-file=KEY=PATH");
            (k.to_string(), p.to_string())
        })
        .collect();
    let volume = gw.container.mount_of(&gw.config).1;
    let expected: BTreeMap<String, String> = volume["configMap"]["items"]
        .as_array()
        .expect("the replicas' ConfigMap volume lists its items")
        .iter()
        .map(|item| {
            (
                string(&item["key"], "key").to_string(),
                format!("{work_root}/{}", string(&item["path"], "path")),
            )
        })
        .collect();
    assert_eq!(
        published, expected,
        "--after-change --from-file vs the replicas' items"
    );
    assert!(
        words.iter().any(|w| w == "apply" || w == "replace"),
        "--after-change writes the ConfigMap: {after}"
    );

    // Its service account may write that one ConfigMap, and nothing else.
    let account = string(&runner.pod()["serviceAccountName"], "serviceAccountName");
    find(&docs, "ServiceAccount", account);
    let binding = docs
        .iter()
        .find(|d| {
            d.kind() == "RoleBinding"
                && d.value["subjects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| s["kind"] == "ServiceAccount" && s["name"] == account)
        })
        .expect("a RoleBinding for the runner's service account");
    let role = find(
        &docs,
        "Role",
        string(&binding.value["roleRef"]["name"], "roleRef.name"),
    );
    let rules = role["rules"].as_array().unwrap();
    for rule in rules {
        assert_eq!(strings(&rule["resources"]), ["configmaps"], "{rule}");
        assert_eq!(
            strings(&rule["resourceNames"]),
            [gw.configmap.as_str()],
            "{rule}"
        );
    }
    let verbs: BTreeSet<String> = rules.iter().flat_map(|r| strings(&r["verbs"])).collect();
    for verb in ["get", "patch", "update"] {
        assert!(verbs.contains(verb), "the runner's Role lacks {verb}");
    }
}

/// Lays out a ConfigMap volume as the kubelet does: the files in a timestamped folder,
/// `..data` a symlink to it, and each top-level name a symlink through `..data`.
fn kubelet_layout(dir: &Path, files: &BTreeMap<String, String>) {
    let stamp = dir.join("..2026_01_01_00_00_00.000000001");
    let mut top = BTreeSet::new();
    for (rel, text) in files {
        let path = stamp.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        top.insert(rel.split('/').next().unwrap().to_string());
    }
    std::os::unix::fs::symlink(stamp.file_name().unwrap(), dir.join("..data")).unwrap();
    for name in top {
        std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(&name)).unwrap();
    }
}

#[test]
fn the_seed_step_copies_the_configmap_once() {
    let docs = manifests();
    let gw = Gateway::of(&docs);
    let runner = container_running(&docs, &["plan", "run"]);
    let config = runner.flag("--config");
    let (work_mount, _) = runner.mount_of(&config);
    let seed = containers(&docs)
        .into_iter()
        .find(|c| c.init && c.workload == runner.workload)
        .expect("an init container seeds the runner's working copy");
    let argv = seed.argv();
    assert_eq!(argv[..2], ["sh", "-c"], "{}", seed.name());

    // The script, with each of its mounts moved into a temporary directory.
    let dir = tempfile::tempdir().unwrap();
    let mut mounts: Vec<(String, String)> = seed.value["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap().to_string(),
                m["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    let mut script = argv[2].clone();
    let mut work = None;
    for (path, volume) in &mounts {
        let here = dir.path().join(volume);
        std::fs::create_dir_all(&here).unwrap();
        let spec = seed.pod()["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == volume.as_str())
            .unwrap();
        if spec["configMap"].is_object() {
            kubelet_layout(&here, &configmap_files(&docs, spec).1);
        }
        if *path == work_mount {
            work = Some(here.clone());
        }
        script = script.replace(path.as_str(), here.to_str().unwrap());
    }
    let work = work.expect("the seed step mounts the runner's working volume");
    let run = || {
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert!(
            out.status.success(),
            "the seed step fails:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };

    // First start: the working copy is the ConfigMap, as plain files.
    run();
    let work_root = config
        .strip_suffix(gw.config_rel())
        .unwrap()
        .trim_end_matches('/');
    let root = work.join(
        work_root
            .strip_prefix(&work_mount)
            .unwrap()
            .trim_start_matches('/'),
    );
    for (rel, text) in &gw.files {
        let path = root.join(rel);
        let meta = std::fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("the seed step made no {}: {e}", path.display()));
        assert!(meta.is_file(), "{} is not a plain file", path.display());
        assert_eq!(&std::fs::read_to_string(&path).unwrap(), text, "{rel}");
    }

    // A restart keeps the runner's own copy.
    let routes = root.join(gw.config_rel());
    let changed = format!("{}# changed by the runner\n", gw.routes_text());
    std::fs::write(&routes, &changed).unwrap();
    run();
    assert_eq!(std::fs::read_to_string(&routes).unwrap(), changed);
}
