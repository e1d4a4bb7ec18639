//! `strangler plan run NAME --config FILE --prometheus URL`: one plan run in a process of
//! its own, for several replicas serving one routes file (README "Several gateways"). The
//! guard judges every replica's traffic since the step began, from Prometheus (the queries
//! of `compare --prometheus`); a change of percentage is written into the routes file the
//! replicas watch, then `--after-change` runs (to publish the file where the replicas read
//! it: a ConfigMap, a Git repository).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Environment, Op, Plans, State, engine, unix_now};
use crate::config::Config;
use crate::config::plan::{PlanConfig, state_file};
use crate::control::shift::shift_file;
use crate::observe::Metrics;
use crate::observe::verdict::RouteComparison;

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
}

impl RunnerEnv {
    fn config(&self) -> std::sync::MutexGuard<'_, Config> {
        self.config.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RunnerEnv {
    /// The new service of `route`, when it has a circuit breaker.
    fn breaker_of(&self, route: &str) -> Option<String> {
        let config = self.config();
        let r = config.routes.iter().find(|r| r.name == route)?;
        let service = &config.services[r.service];
        service.breaker.is_some().then(|| service.name.clone())
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

    async fn judge(&self, plan: &PlanConfig, since: f64) -> Option<RouteComparison> {
        // Whole seconds since the counts began; at least one.
        let window = Duration::from_secs((unix_now() - since).max(1.0).ceil() as u64);
        let cfg = engine::guard_config(plan);
        let mut judged = match crate::observe::prometheus::compare(&self.prometheus, window, &cfg)
            .await
        {
            Ok(routes) => routes.into_iter().find(|c| c.route == plan.route)?,
            Err(e) => {
                tracing::warn!(error = %e, "plan run: no figures from Prometheus; nothing moves until there are");
                return None;
            }
        };
        // A breaker open on any replica fails the guard, as in a gateway.
        if let Some(service) = self.breaker_of(&plan.route) {
            match crate::observe::prometheus::breaker_open(&self.prometheus, &service).await {
                Ok(true) => judged.breaker_open(&service),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "plan run: cannot read the breaker's state from Prometheus; nothing moves until it can");
                    return None;
                }
            }
        }
        Some(judged)
    }

    async fn shadow_match(&self, route: &str) -> Option<(Option<f64>, u64)> {
        // Over the last hour, summed across replicas.
        let rates =
            crate::observe::prometheus::shadow_rates(&self.prometheus, Duration::from_secs(3600))
                .await
                .map_err(
                    |e| tracing::warn!(error = %e, "plan run: no shadow figures from Prometheus"),
                )
                .ok()?;
        let (matched, compared) = rates.get(route).copied()?;
        Some((
            (compared > 0.0).then(|| matched / compared),
            compared as u64,
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
        let Some(cmd) = &self.after_change else {
            return Ok(());
        };
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env("STRANGLER_CONFIG", &self.config_path)
            .env("STRANGLER_ROUTE", route)
            .env("STRANGLER_PERCENT", crate::config::format_percent(bp))
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

/// The driver a runner writes into the plan's progress.
const DRIVER: &str = "plan run";

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
    // A plan a gateway is running is not taken from it.
    if let Some(plan) = config.plans.iter().find(|p| p.name == opts.name) {
        let on_disk = super::load_progress(&state, plan);
        if on_disk.driver.is_none() && matches!(on_disk.state, State::Running | State::Paused) {
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
