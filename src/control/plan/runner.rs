//! `strangler plan run NAME --config FILE --prometheus URL`: one plan run in a process of
//! its own, for several replicas serving one routes file (docs/operations.md, "Several gateways"). The
//! guard judges every replica's traffic since the step began, from Prometheus (the queries
//! of `compare --prometheus`); a change of percentage is written into the routes file the
//! replicas watch, then `--after-change` runs (to publish the file where the replicas read
//! it: a ConfigMap, a Git repository).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{CatchUp, Environment, Judgement, Op, Plans, State, Unpublished, engine, unix_now};
use crate::config::plan::{PlanConfig, state_file};
use crate::config::{Config, format_percent};
use crate::control::shift::{ShiftError, shift_file, shift_file_from};
use crate::observe::Metrics;

/// How `plan run` runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub name: String,
    pub config: PathBuf,
    pub prometheus: String,
    /// Where the progress is kept (default: `.NAME.state.json` beside the plan).
    pub state: Option<PathBuf>,
    /// A shell command run after each write of the routes file.
    pub after_change: Option<String>,
    /// How often the plan is looked at.
    pub interval: Duration,
    /// Where to serve the plan's status, operations and metrics.
    pub admin: Option<SocketAddr>,
}

/// What a runner's plan acts on.
pub struct RunnerEnv {
    name: String,
    config_path: PathBuf,
    prometheus: String,
    state: PathBuf,
    after_change: Option<String>,
    /// The last valid routes file read.
    config: Mutex<Config>,
    /// This runner's name in the lease (`plan run PID@HOST`), and how long its lease lasts
    /// without a heartbeat.
    holder: String,
    lease_seconds: f64,
}

impl RunnerEnv {
    fn config(&self) -> std::sync::MutexGuard<'_, Config> {
        self.config.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The hash of the routes file (and plans) the runner last read.
    pub fn config_hash(&self) -> String {
        self.config().hash.clone()
    }
}

impl RunnerEnv {
    /// The new service of `route`: its name, and whether it has a breaker and health
    /// checks.
    fn service_of(&self, route: &str) -> Option<(String, bool, bool)> {
        let config = self.config();
        let r = config.routes.iter().find(|r| r.name == route)?;
        let service = &config.services[r.service];
        Some((
            service.name.clone(),
            service.breaker.is_some(),
            service.health.is_some(),
        ))
    }

    /// Runs `--after-change` for `route` at `bp`: how the file reaches the replicas.
    async fn publish(&self, route: &str, bp: u32) -> Result<(), String> {
        let Some(cmd) = &self.after_change else {
            return Ok(());
        };
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env("STRANGLER_CONFIG", &self.config_path)
            .env("STRANGLER_ROUTE", route)
            .env("STRANGLER_PERCENT", format_percent(bp))
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("cannot run --after-change: {e}"))?;
        if out.status.success() {
            tracing::info!(command = %cmd, "plan run: --after-change ran");
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stderr: String = stderr.trim().chars().take(300).collect();
            Err(format!(
                "the routes file was written, but --after-change failed ({}): {stderr}",
                out.status
            ))
        }
    }
}

impl Environment for RunnerEnv {
    fn plans(&self) -> Vec<PlanConfig> {
        self.config()
            .plans
            .iter()
            .filter(|p| p.name == self.name)
            .cloned()
            .collect()
    }

    fn state_path(&self, _plan: &PlanConfig) -> PathBuf {
        self.state.clone()
    }

    fn plans_dir(&self) -> Option<PathBuf> {
        self.config().plans_dir.clone()
    }

    fn driver(&self) -> Option<&'static str> {
        Some(DRIVER)
    }

    async fn refresh(&self) {
        match Config::load(&self.config_path) {
            Ok(c) => *self.config() = c,
            Err(e) => tracing::warn!(
                file = %self.config_path.display(),
                errors = %e,
                "plan run: the routes file is not valid; judging on the last valid one"
            ),
        }
    }

    async fn in_force(&self, route: &str) -> Option<u32> {
        self.config()
            .routes
            .iter()
            .find(|r| r.name == route)
            .map(|r| r.percent_bp)
    }

    async fn judge(&self, plan: &PlanConfig, since: f64) -> Option<Judgement> {
        // Whole seconds since the counts began; at least one.
        let window = Duration::from_secs((unix_now() - since).max(1.0).ceil() as u64);
        let cfg = engine::guard_config(plan);
        let figures = match crate::observe::prometheus::compare(&self.prometheus, window, &cfg)
            .await
        {
            Ok(routes) => routes.into_iter().find(|c| c.route == plan.route)?,
            Err(e) => {
                tracing::warn!(error = %e, "plan run: no figures from Prometheus; nothing moves until there are");
                return None;
            }
        };
        let mut blocked = None;
        // A breaker open, or no healthy instance, on the replicas fails the guard, as in a
        // gateway.
        if let Some((service, breaker, health)) = self.service_of(&plan.route)
            && self.in_force(&plan.route).await.unwrap_or(0) > 0
        {
            let prom = &self.prometheus;
            if health {
                match crate::observe::prometheus::unhealthy(prom, &service).await {
                    Ok(true) => {
                        blocked = Some(format!(
                            "no healthy instance of {service}: the new side's share goes to legacy"
                        ))
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "plan run: cannot read the instances' health from Prometheus; nothing moves until it can");
                        return None;
                    }
                }
            }
            if breaker && blocked.is_none() {
                match crate::observe::prometheus::breaker_open(prom, &service).await {
                    Ok(true) => blocked = Some(format!("the circuit breaker of {service} is open")),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "plan run: cannot read the breaker's state from Prometheus; nothing moves until it can");
                        return None;
                    }
                }
            }
        }
        Some(Judgement { figures, blocked })
    }

    async fn shadow_match(
        &self,
        route: &str,
        window: Duration,
    ) -> Option<(Option<f64>, u64, String)> {
        let figures = crate::observe::prometheus::shadow_figures(&self.prometheus, window)
            .await
            .map_err(|e| tracing::warn!(error = %e, "plan run: no shadow figures from Prometheus"))
            .ok()?;
        let f = figures.get(route)?;
        Some((
            f.match_rate,
            f.compared,
            format!(
                "(compared over the last {}, summed across replicas)",
                humantime::format_duration(window)
            ),
        ))
    }

    async fn write(&self, route: &str, bp: u32) -> Result<(), String> {
        let path = self.config_path.clone();
        let name = route.to_string();
        tokio::task::spawn_blocking(move || shift_file(&path, &name, bp))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        self.refresh().await;
        self.publish(route, bp).await
    }

    async fn catch_up(&self, route: &str, change: &Unpublished) -> Result<CatchUp, String> {
        let path = self.config_path.clone();
        let (name, from, bp) = (route.to_string(), change.from_bp, change.bp);
        let written = tokio::task::spawn_blocking(move || shift_file_from(&path, &name, from, bp))
            .await
            .map_err(|e| e.to_string())?;
        match written {
            Ok(_) => {}
            Err(ShiftError::Moved { found, .. }) => {
                return Ok(CatchUp::Superseded(format!(
                    "the routes file says {}%",
                    format_percent(found)
                )));
            }
            Err(e) => return Err(e.to_string()),
        }
        self.refresh().await;
        self.publish(route, bp).await?;
        Ok(CatchUp::Done)
    }

    fn lease(&self) -> Option<(String, f64)> {
        Some((self.holder.clone(), self.lease_seconds))
    }
}

/// The driver a runner writes into the plan's progress.
const DRIVER: &str = "plan run";

/// The shortest `--interval`: a runner looks at its plan at most ten times a second.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// How long a runner's lease lasts without a heartbeat: three of its intervals, at least
/// three seconds.
pub fn lease_seconds(interval: Duration) -> f64 {
    (3.0 * interval.as_secs_f64()).max(3.0)
}

/// This machine's name, for the lease's holder.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Where a plan's progress is kept when `--state` is not given.
fn default_state(config: &Config, name: &str) -> Option<PathBuf> {
    let plan = config.plans.iter().find(|p| p.name == name)?;
    Some(state_file(
        plan.file.parent().unwrap_or(Path::new(".")),
        name,
    ))
}

/// Reads the routes file and the plan's progress, takes the plan up (refusing one a
/// gateway is running) and starts it if it has not started: the plan, ready to be ticked.
pub async fn prepare(opts: &RunOptions) -> anyhow::Result<(Arc<Plans<RunnerEnv>>, Arc<Metrics>)> {
    if opts.interval < MIN_INTERVAL {
        anyhow::bail!(
            "--interval {}: allowed: at least {}",
            humantime::format_duration(opts.interval),
            humantime::format_duration(MIN_INTERVAL)
        );
    }
    let config = Config::load(&opts.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    if !config.plans.iter().any(|p| p.name == opts.name) {
        let names: Vec<&str> = config.plans.iter().map(|p| p.name.as_str()).collect();
        anyhow::bail!(
            "no plan {:?} in {}; plans: {}",
            opts.name,
            match &config.plans_dir {
                Some(d) => d.display().to_string(),
                None => format!("(none: {} has no plans: key)", opts.config.display()),
            },
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    }
    let state = match &opts.state {
        Some(s) => s.clone(),
        None => default_state(&config, &opts.name).expect("the plan exists"),
    };
    let now = unix_now();
    // A plan a gateway is running is not taken from it, nor one another runner holds.
    if let Some(plan) = config.plans.iter().find(|p| p.name == opts.name) {
        let on_disk = super::load_progress(&state, plan);
        if on_disk.driver.is_some()
            && let Some(l) = &on_disk.lease
            && !l.lapsed(now)
        {
            anyhow::bail!(
                "plan {:?} is driven by {} (seen {}s ago; progress in {}): stop it first, or wait for its lease to lapse ({}s without a heartbeat)",
                opts.name,
                l.holder,
                l.silent_for(now).round(),
                state.display(),
                l.ttl.round()
            );
        }
        if on_disk.driver.is_none() && on_disk.state.live() {
            anyhow::bail!(
                "plan {:?} is {} in a gateway (progress in {}): abort it there first (strangler plan abort), or give this runner a --state of its own",
                opts.name,
                on_disk.state.as_str(),
                state.display()
            );
        }
        if on_disk.driver.is_none() && on_disk.state != State::Pending {
            // Ended in a gateway: the runner takes it up as ended.
            let mut p = on_disk;
            p.driver = Some(DRIVER.into());
            super::save_progress(&state, &p)?;
        }
    }
    let metrics = Metrics::new();
    let env = RunnerEnv {
        name: opts.name.clone(),
        config_path: opts.config.clone(),
        prometheus: opts.prometheus.clone(),
        state,
        after_change: opts.after_change.clone(),
        config: Mutex::new(config),
        holder: format!("{DRIVER} {}@{}", std::process::id(), hostname()),
        lease_seconds: lease_seconds(opts.interval),
    };
    let plans = Plans::new(env, metrics.clone());
    let status = plans.status(&opts.name).await;
    let state_now = status
        .as_ref()
        .and_then(|s| s["state"].as_str().map(str::to_string))
        .unwrap_or_default();
    // A plan not started starts; one that ended stays ended (a restarted runner never
    // starts a rolled-back plan again: `start` through --admin does, on purpose).
    if state_now == State::Pending.as_str() {
        if let Err(e) = plans.operate(&opts.name, Op::Start, unix_now()).await {
            anyhow::bail!("{e}");
        }
    } else {
        tracing::info!(plan = %opts.name, state = %state_now, "plan run: resuming the plan's progress");
    }
    Ok((plans, metrics))
}
