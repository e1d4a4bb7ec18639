//! The command line (CONTRACT §8): `serve`, `check`, `explain`, `demo`.
//!
//! Parses flags, builds the runtime, and calls into the library; prints what a person at a
//! terminal needs. No gateway logic lives here.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::accesslog::{AccessLog, LogFormat};
use crate::config::{Config, format_percent};
use crate::side::{self, Reason, RequestKeys};

#[derive(Parser, Debug)]
#[command(
    name = "strangler",
    version,
    about = "A strangler-fig gateway: legacy or new, per route, measured"
)]
pub struct Cli {
    /// Log format: JSON lines (default) or text for people.
    #[arg(long, value_enum, global = true, default_value = "json")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// The routes file.
        #[arg(long, short, default_value = "routes/example.yaml")]
        config: PathBuf,
        /// Do not write an access-log line per request.
        #[arg(long)]
        no_access_log: bool,
        /// Do not watch the routes file; reload only on SIGHUP or POST /admin/reload (for
        /// file systems without change notifications).
        #[arg(long)]
        no_watch: bool,
    },
    /// Validate a routes file: print every error and warning; exit 1 when invalid.
    Check { file: PathBuf },
    /// Show how a request would be routed: canonical path, winning route, side, and why.
    Explain {
        file: PathBuf,
        method: String,
        /// Path with optional query, as the client sends it.
        path: String,
        /// A request header, `name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// The client IP, for routes sticky on it.
        #[arg(long, default_value = "127.0.0.1")]
        client_ip: IpAddr,
    },
    /// Change one route's percentage in the routes file, in place (a running gateway
    /// watching the file picks it up).
    Shift {
        file: PathBuf,
        route: String,
        /// 0 to 100, at most two decimals.
        percent: String,
    },
    /// Legacy vs new per route, from a running gateway's admin API, as a table.
    Compare {
        /// The admin listener's base URL.
        #[arg(long, default_value = "http://127.0.0.1:9901")]
        admin: String,
        /// The window, like 5m (default: the gateway's `compare.window`).
        #[arg(long)]
        window: Option<String>,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Compute the table from Prometheus (all replicas together) instead of one
        /// gateway's admin API: the Prometheus server's base URL.
        #[arg(long)]
        prometheus: Option<String>,
        /// With --prometheus: requests per side below which the verdict is insufficient_data.
        #[arg(long, default_value_t = 50)]
        min_requests: u64,
        /// With --prometheus: new p99 over legacy p99 above which the verdict is worse.
        #[arg(long, default_value_t = 1.5)]
        max_p99_ratio: f64,
    },
    /// Run the embedded demo: a monolith, two services, the gateway and steady traffic.
    Demo {
        /// Also print the access log.
        #[arg(long)]
        access_log: bool,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { file } => check(&file),
        Command::Shift {
            file,
            route,
            percent,
        } => shift(&file, &route, &percent),
        Command::Compare {
            admin,
            window,
            json,
            prometheus,
            min_requests,
            max_p99_ratio,
        } => match prometheus {
            Some(url) => run(compare_prometheus(
                url,
                window,
                json,
                min_requests,
                max_p99_ratio,
            )),
            None => run(compare(admin, window, json)),
        },
        Command::Explain {
            file,
            method,
            path,
            headers,
            client_ip,
        } => explain(&file, &method, &path, &headers, client_ip),
        Command::Serve {
            config,
            no_access_log,
            no_watch,
        } => {
            init_tracing(cli.log_format);
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    eprintln!("{} error(s): the gateway did not start", e.errors.len());
                    return ExitCode::FAILURE;
                }
            };
            for w in &config.warnings {
                tracing::warn!(warning = %w, "routes file");
            }
            let drain_timeout = config.drain_timeout;
            run(async move {
                // Signal handlers first: a SIGTERM or SIGHUP that arrives once the gateway
                // says it is listening must never meet the default action (exit at once).
                let stop = StopSignals::install()?;
                #[cfg(unix)]
                let mut hup =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
                let log = AccessLog::new(cli.log_format, !no_access_log);
                let running = crate::server::start(config, log.clone()).await?;
                // Reload on changes of the file, and on SIGHUP.
                let _watcher = match (!no_watch).then(|| running.reloader.watch()) {
                    None => None,
                    Some(Ok(w)) => Some(w),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "cannot watch the routes file; reload with SIGHUP or POST /admin/reload");
                        None
                    }
                };
                #[cfg(unix)]
                {
                    let reloader = running.reloader.clone();
                    tokio::spawn(async move {
                        while hup.recv().await.is_some() {
                            let _ = reloader.reload("SIGHUP").await;
                        }
                    });
                }
                stop.wait().await;
                tracing::info!(timeout = ?drain_timeout, "stopping: draining in-flight requests");
                let left = running.drain(drain_timeout).await;
                if left > 0 {
                    tracing::warn!(
                        connections = left,
                        "drain timeout: closing connections still open"
                    );
                } else {
                    tracing::info!("drained");
                }
                running.close();
                log.flush();
                Ok(())
            })
        }
        Command::Demo { access_log } => {
            init_tracing(LogFormat::Text);
            run(crate::demo::run(LogFormat::Text, access_log))
        }
    }
}

/// Builds the runtime: one thread when `TOKIO_WORKER_THREADS=1` (no cross-thread handoffs at
/// all), else tokio's multi-thread scheduler.
fn run(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let single = std::env::var("TOKIO_WORKER_THREADS").is_ok_and(|v| v.trim() == "1");
    let rt = if single {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a terminal, never into files or pipes.
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(std::io::stdout);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
}

/// Ctrl-C and SIGTERM, listened for from the moment of `install`.
pub struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub fn install() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?,
        })
    }

    /// Resolves on Ctrl-C or SIGTERM.
    pub async fn wait(mut self) {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        tokio::select! {
            _ = ctrl_c => {}
            _ = self.term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
    }
}

/// Resolves on Ctrl-C or SIGTERM (listening from this call on).
pub async fn wait_for_stop() {
    match StopSignals::install() {
        Ok(s) => s.wait().await,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn compare(admin: String, window: Option<String>, json: bool) -> anyhow::Result<()> {
    let mut url = format!("{}/admin/compare", admin.trim_end_matches('/'));
    if let Some(w) = &window {
        url.push_str("?window=");
        url.push_str(w);
    }
    let client = reqwest::Client::builder().no_proxy().build()?;
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the admin API at {admin}: {e}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| anyhow::anyhow!("{url} did not answer JSON: {e}"))?;
    if !status.is_success() {
        anyhow::bail!(
            "{url}: {status}: {}",
            body["message"].as_str().unwrap_or("error")
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        print!("{}", compare_table(&body));
    }
    Ok(())
}

/// Runs one PromQL instant query; the result vector.
async fn prom_query(
    client: &reqwest::Client,
    base: &str,
    query: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let url = format!("{}/api/v1/query", base.trim_end_matches('/'));
    let resp = client
        .get(&url)
        .query(&[("query", query)])
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach Prometheus at {base}: {e}"))?;
    let v: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: not JSON: {e}"))?;
    if v["status"] != "success" {
        anyhow::bail!("Prometheus refused {query}: {}", v["error"]);
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// `strangler compare --prometheus URL`: the compare table across every replica Prometheus
/// scrapes, from the counters and histograms of §7 (5xx answers count as errors, as in the
/// gateway's own figures).
async fn compare_prometheus(
    base: String,
    window: Option<String>,
    json: bool,
    min_requests: u64,
    max_p99_ratio: f64,
) -> anyhow::Result<()> {
    use std::collections::BTreeMap;
    let window = match &window {
        Some(w) => humantime::parse_duration(w)
            .map_err(|_| anyhow::anyhow!("--window {w}: a duration like 5m"))?,
        None => std::time::Duration::from_secs(300),
    };
    let w = format!("{}s", window.as_secs().max(1));
    // Growth over the window, per series (per replica) before summing: now minus a window
    // ago; the whole value for a series younger than the window or reset within it (a
    // replica restarted: its count since then). Exact when nothing restarted, unlike
    // increase()'s extrapolation; a restart undercounts only that replica's pre-restart part.
    let growth = |metric: &str, by: &str| {
        format!("sum by ({by}) (({metric} - {metric} offset {w}) >= 0 or {metric})")
    };
    let client = reqwest::Client::builder().no_proxy().build()?;
    let key = |m: &serde_json::Value| {
        (
            m["metric"]["route"].as_str().unwrap_or("").to_string(),
            m["metric"]["side"].as_str().unwrap_or("").to_string(),
        )
    };
    let num = |m: &serde_json::Value| {
        m["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite())
    };
    // One value per (route, side) of a query.
    let by_route_side = |result: Vec<serde_json::Value>| -> BTreeMap<(String, String), f64> {
        result
            .iter()
            .map(|m| (key(m), num(m).unwrap_or(0.0)))
            .collect()
    };
    let requests = by_route_side(
        prom_query(
            &client,
            &base,
            &growth("strangler_requests_total", "route, side"),
        )
        .await?,
    );
    let errors = by_route_side(
        prom_query(
            &client,
            &base,
            &growth("strangler_requests_total{code=~\"5..\"}", "route, side"),
        )
        .await?,
    );
    let mut quantiles: BTreeMap<(String, String), [Option<f64>; 3]> = BTreeMap::new();
    for (i, q) in [0.5, 0.9, 0.99].iter().enumerate() {
        let query = format!(
            "histogram_quantile({q}, {})",
            growth(
                "strangler_request_duration_seconds_bucket",
                "route, side, le"
            )
        );
        for m in prom_query(&client, &base, &query).await? {
            quantiles.entry(key(&m)).or_default()[i] = num(&m).map(|s| (s * 1e5).round() / 100.0);
        }
    }
    let mut percents: BTreeMap<String, f64> = BTreeMap::new();
    for m in prom_query(&client, &base, "max by (route) (strangler_route_percent)").await? {
        percents.insert(
            m["metric"]["route"].as_str().unwrap_or("").to_string(),
            num(&m).unwrap_or(0.0),
        );
    }
    let cfg = crate::compare::CompareConfig {
        min_requests,
        max_p99_ratio,
        ..Default::default()
    };
    let side_figures = |route: &str, side: &str| {
        let k = (route.to_string(), side.to_string());
        let n = requests.get(&k).copied().unwrap_or(0.0).round() as u64;
        let e = errors.get(&k).copied().unwrap_or(0.0).round() as u64;
        let q = quantiles.get(&k).copied().unwrap_or_default();
        crate::compare::SideFigures {
            requests: n,
            errors: e,
            error_rate: if n == 0 { 0.0 } else { e as f64 / n as f64 },
            p50_ms: q[0].filter(|_| n > 0),
            p90_ms: q[1].filter(|_| n > 0),
            p99_ms: q[2].filter(|_| n > 0),
            series: None,
        }
    };
    let routes: Vec<_> = percents
        .iter()
        .map(|(route, pct)| {
            let percent = serde_json::from_str(&format_percent((pct * 100.0).round() as u32))
                .unwrap_or(serde_json::Value::Null);
            crate::compare::judge(
                route,
                percent,
                side_figures(route, "legacy"),
                side_figures(route, "new"),
                &cfg,
            )
        })
        .collect();
    let body = serde_json::json!({"window_seconds": window.as_secs_f64(), "source": base, "routes": routes});
    if json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        print!("{}", compare_table(&body));
    }
    Ok(())
}

/// The compare JSON as an aligned text table.
pub fn compare_table(body: &serde_json::Value) -> String {
    use serde_json::Value;
    let ms = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.1}ms"));
    let pct = |v: &Value| {
        v.as_f64()
            .map_or("-".to_string(), |x| format!("{:.2}%", x * 100.0))
    };
    let mut rows = vec![[
        "route".to_string(),
        "percent".into(),
        "requests legacy/new".into(),
        "errors legacy/new".into(),
        "p99 legacy/new".into(),
        "verdict".into(),
    ]];
    for r in body["routes"].as_array().into_iter().flatten() {
        let (l, n) = (&r["legacy"], &r["new"]);
        rows.push([
            r["route"].as_str().unwrap_or("?").to_string(),
            format!("{}%", r["percent"]),
            format!("{}/{}", l["requests"], n["requests"]),
            format!("{}/{}", pct(&l["error_rate"]), pct(&n["error_rate"])),
            format!("{}/{}", ms(&l["p99_ms"]), ms(&n["p99_ms"])),
            r["verdict"].as_str().unwrap_or("?").to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = format!("window {}s\n", body["window_seconds"]);
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for r in body["routes"].as_array().into_iter().flatten() {
        for reason in r["reasons"].as_array().into_iter().flatten() {
            if r["verdict"] == "worse" {
                out.push_str(&format!(
                    "{}: {}\n",
                    r["route"].as_str().unwrap_or("?"),
                    reason.as_str().unwrap_or("")
                ));
            }
        }
    }
    out
}

fn shift(file: &Path, route: &str, percent: &str) -> ExitCode {
    let Some(bp) = percent
        .parse::<f64>()
        .ok()
        .and_then(crate::config::percent_to_bp)
    else {
        eprintln!(
            "error: percent {percent:?}: allowed: a number from 0 to 100 with at most two decimals"
        );
        return ExitCode::FAILURE;
    };
    match crate::shift::shift_file(file, route, bp) {
        Ok(s) if s.before == s.after => {
            println!(
                "{}: route {route} is already at {}%",
                file.display(),
                format_percent(bp)
            );
            ExitCode::SUCCESS
        }
        Ok(s) => {
            println!(
                "{}: route {route}: {}% -> {}%",
                file.display(),
                format_percent(s.before),
                format_percent(s.after)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(file: &Path) -> ExitCode {
    match Config::load(file) {
        Ok(cfg) => {
            for w in &cfg.warnings {
                println!("warning: {w}");
            }
            println!(
                "{}: ok ({} routes, {} services, config hash {})",
                file.display(),
                cfg.routes.len(),
                cfg.services.len(),
                cfg.hash
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            for d in &e.errors {
                println!("error: {d}");
            }
            println!("{}: {} error(s)", file.display(), e.errors.len());
            ExitCode::FAILURE
        }
    }
}

fn explain(
    file: &Path,
    method: &str,
    target: &str,
    headers: &[String],
    client_ip: IpAddr,
) -> ExitCode {
    let cfg = match Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            for d in &e.errors {
                println!("error: {d}");
            }
            return ExitCode::FAILURE;
        }
    };
    let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
        eprintln!("error: {method:?} is not an HTTP method");
        return ExitCode::FAILURE;
    };
    let mut map = HeaderMap::new();
    for h in headers {
        let Some((n, v)) = h.split_once(':') else {
            eprintln!("error: header {h:?} is not `name: value`");
            return ExitCode::FAILURE;
        };
        match (
            HeaderName::from_bytes(n.trim().as_bytes()),
            HeaderValue::from_str(v.trim()),
        ) {
            (Ok(n), Ok(v)) => {
                map.append(n, v);
            }
            _ => {
                eprintln!("error: header {h:?} is not a valid HTTP header");
                return ExitCode::FAILURE;
            }
        }
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let canonical = match crate::canon::canonicalize(path) {
        Ok(c) => c.into_owned(),
        Err(e) => {
            println!("path:       {path}");
            println!("rejected:   400 bad_request: {e}");
            return ExitCode::SUCCESS;
        }
    };
    println!("path:       {path}");
    println!("canonical:  {canonical}");
    let metrics = crate::metrics::Metrics::new();
    let windows = crate::compare::Registry::new(cfg.compare.clone());
    let table = match crate::table::RouteTable::compile(cfg, &metrics, &windows) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cands = table.router.explain(&canonical, &method, &map);
    for c in &cands {
        let r = &table.config.routes[c.rule];
        match &c.outcome {
            Ok(()) => println!(
                "  {:<9} {:?} ({} {}): wins",
                "candidate", r.name, c.tier, c.pattern
            ),
            Err(miss) => println!(
                "  {:<9} {:?} ({} {}): skipped, {miss}",
                "candidate", r.name, c.tier, c.pattern
            ),
        }
    }
    let winner = cands.iter().find(|c| c.outcome.is_ok()).map(|c| c.rule);
    let Some(rule) = winner else {
        println!("route:      default (no rule takes the request)");
        println!(
            "side:       legacy ({}), {}",
            Reason::Unmatched.as_str(),
            table.config.legacy.url
        );
        return ExitCode::SUCCESS;
    };
    let route = &table.routes[rule];
    let rc = &table.config.routes[rule];
    println!(
        "route:      {} ({} {}, {} condition(s))",
        rc.name,
        rc.path.kind(),
        rc.path.pattern(),
        rc.condition_count()
    );
    let keys = RequestKeys {
        headers: &map,
        query,
        client_ip,
    };
    let (side, reason) = side::choose(&route.policy, table.override_header.as_ref(), &keys);
    let pct = format_percent(route.policy.percent_bp);
    let why = match reason {
        Reason::Override => format!(
            "the override header {} says so",
            table.override_header.as_ref().map_or("", |h| h.as_str())
        ),
        Reason::Percent => format!("percent is {pct}: no draw"),
        Reason::Sticky => {
            let key = route
                .policy
                .sticky
                .as_ref()
                .expect("sticky reason implies a key");
            let b =
                side::with_key(key, &keys, |k| side::bucket(&route.policy.cohort, k)).unwrap_or(0);
            format!(
                "sticky on {key}, cohort {:?}: bucket {b} {} {} (percent {pct})",
                route.policy.cohort,
                if b < route.policy.percent_bp {
                    "<"
                } else {
                    ">="
                },
                route.policy.percent_bp
            )
        }
        Reason::Random => match &route.policy.sticky {
            Some(k) => {
                format!("the request carries no {k}: a random draw, new with probability {pct}%")
            }
            None => format!("no sticky key: a random draw, new with probability {pct}%"),
        },
        Reason::Unmatched => String::new(),
    };
    let up = table.upstream(route, side);
    let shown = if reason == Reason::Random {
        "side (this draw)"
    } else {
        "side"
    };
    println!(
        "{shown:<11} {side} ({}): {why}; upstream {}{}",
        reason.as_str(),
        up.authority,
        up.base_path
    );
    ExitCode::SUCCESS
}
