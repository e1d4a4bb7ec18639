//! Migration plans at work (README "Migration plans"; docs/plans.md): the state machine
//! ([`engine`]), its progress kept on disk, and the driver that looks at every plan once a
//! tick, inside a gateway (figures from its own counts) or as `strangler plan run`
//! (figures from Prometheus, across replicas).
//!
//! A percentage change is the same locked, validated, in-place write as `strangler shift`;
//! the routes file always shows what is in force.

pub mod engine;
pub mod gateway;
pub mod runner;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::config::plan::{PlanConfig, state_file};
use crate::config::{format_percent, percent_json};
use crate::observe::Metrics;
use crate::observe::verdict::RouteComparison;
pub use engine::{Action, Op, Progress, Refused, State};

/// How often a driver looks at its plans.
pub const TICK: Duration = Duration::from_secs(1);
/// How often a running plan's progress (its hold served) is saved, at least.
const SAVE_EVERY: f64 = 1.0;

/// The wall clock in unix seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What a driver needs from the world: the percentage in force, the guard's judgement,
/// and the write of a new percentage.
pub trait Environment: Send + Sync + 'static {
    /// The plans of the config in force.
    fn plans(&self) -> Vec<PlanConfig>;
    /// Where a plan's progress is kept.
    fn state_path(&self, plan: &PlanConfig) -> PathBuf;
    /// Who drives the plans it runs (`None`: a gateway); see [`Progress::driver`].
    fn driver(&self) -> Option<&'static str> {
        None
    }
    /// Reads again what the next tick looks at (a runner re-reads the routes file).
    fn refresh(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// The route's percentage in force (basis points), `None` when it has no such route.
    fn in_force(&self, route: &str) -> impl Future<Output = Option<u32>> + Send;
    /// The guard's judgement of the route's traffic since `since` (unix seconds); `None`
    /// when no figures could be had (then nothing moves).
    fn judge(
        &self,
        plan: &PlanConfig,
        since: f64,
    ) -> impl Future<Output = Option<RouteComparison>> + Send;
    /// Writes `bp` as the route's percentage; the error in words.
    fn write(&self, route: &str, bp: u32) -> impl Future<Output = Result<(), String>> + Send;
    /// The route's shadow match rate and the copies it is over (`None`: no figures).
    fn shadow_match(
        &self,
        _route: &str,
    ) -> impl Future<Output = Option<(Option<f64>, u64)>> + Send {
        async { None }
    }
    /// The plan's counts start again at `since` (a step began, or the plan resumed), its
    /// new percentage in force: a driver that counts for itself takes its baseline now.
    fn begin_counts(&self, _plan: &PlanConfig, _since: f64) {}
}

/// The plans a driver runs, and what they act on.
pub struct Plans<E> {
    book: tokio::sync::Mutex<Book>,
    pub env: E,
    metrics: Arc<Metrics>,
    exported: std::sync::Mutex<Vec<String>>,
}

impl<E: Environment> Plans<E> {
    pub fn new(env: E, metrics: Arc<Metrics>) -> Arc<Plans<E>> {
        let plans = Arc::new(Plans {
            book: tokio::sync::Mutex::new(Book::default()),
            env,
            metrics,
            exported: std::sync::Mutex::new(Vec::new()),
        });
        // Progress on disk is read, and exported, from the start.
        if let Ok(mut book) = plans.book.try_lock() {
            plans.sync(&mut book);
        }
        plans
    }

    /// Takes in the plans of the config in force, and exports every plan's state.
    fn sync(&self, book: &mut Book) {
        book.sync(
            &self.env.plans(),
            |p| self.env.state_path(p),
            self.env.driver(),
        );
        let mut exported = self.exported.lock().unwrap_or_else(|p| p.into_inner());
        book.export(&self.metrics, &mut exported);
    }

    /// One look at every plan.
    pub async fn tick(&self, now: f64) {
        self.env.refresh().await;
        let mut book = self.book.lock().await;
        self.sync(&mut book);
        book.tick(&self.env, now).await;
        self.sync(&mut book);
    }

    /// Looks at every plan once every `every`, for the life of the process.
    pub fn spawn(self: &Arc<Self>, every: Duration) {
        let plans = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                plans.tick(unix_now()).await;
            }
        });
    }

    /// Every plan's status.
    pub async fn statuses(&self) -> Vec<Value> {
        let mut book = self.book.lock().await;
        self.sync(&mut book);
        book.statuses(unix_now())
    }

    /// One plan's status; `None` when there is no such plan.
    pub async fn status(&self, name: &str) -> Option<Value> {
        let mut book = self.book.lock().await;
        self.sync(&mut book);
        book.entries.get(name).map(|e| status(e, unix_now()))
    }

    /// The names of the plans.
    pub async fn names(&self) -> Vec<String> {
        let mut book = self.book.lock().await;
        self.sync(&mut book);
        book.entries.keys().cloned().collect()
    }

    /// A person's operation at `now`; `Ok(None)` when there is no such plan.
    pub async fn operate(&self, name: &str, op: Op, now: f64) -> Result<Option<Value>, Refused> {
        let mut book = self.book.lock().await;
        self.sync(&mut book);
        let r = book.operate(&self.env, name, op, now).await;
        self.sync(&mut book);
        r
    }
}

/// One plan: its file, its progress, where the progress is kept.
pub struct Entry {
    pub config: PlanConfig,
    pub progress: Progress,
    pub state_path: PathBuf,
    saved_at: f64,
}

/// Every plan a driver runs, by name.
#[derive(Default)]
pub struct Book {
    pub entries: BTreeMap<String, Entry>,
}

/// Reads a plan's progress; a missing file is a plan not started, an unreadable one is
/// logged and read as not started.
pub fn load_progress(path: &Path, plan: &PlanConfig) -> Progress {
    let fresh = Progress::new(plan);
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return fresh,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "plan: cannot read its progress; starting from pending");
            return fresh;
        }
    };
    match serde_json::from_str::<Progress>(&text) {
        Ok(mut p) => {
            // The plan file may have changed meanwhile: keep the step within it.
            p.step = p.step.min(plan.steps.len() - 1);
            p.route = plan.route.clone();
            p
        }
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "plan: its progress file is not valid; starting from pending");
            fresh
        }
    }
}

/// Writes a plan's progress atomically (a temporary file renamed over).
pub fn save_progress(path: &Path, p: &Progress) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer_pretty(&mut tmp, p).map_err(std::io::Error::other)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

impl Book {
    /// Takes in the plans of the config in force: new ones read their progress, edited
    /// ones keep theirs, removed ones are dropped (their progress file stays).
    /// A plan another driver runs (or may take up: one this driver is not running) is
    /// read from its progress file again, so that it is shown as it is.
    pub fn sync(
        &mut self,
        plans: &[PlanConfig],
        state_of: impl Fn(&PlanConfig) -> PathBuf,
        driver: Option<&'static str>,
    ) {
        self.entries
            .retain(|name, _| plans.iter().any(|p| &p.name == name));
        for plan in plans {
            match self.entries.get_mut(&plan.name) {
                Some(e) => {
                    e.config = plan.clone();
                    let idle = !matches!(e.progress.state, State::Running | State::Paused);
                    if e.progress.driver.as_deref() != driver || (driver.is_none() && idle) {
                        let on_disk = load_progress(&e.state_path, plan);
                        if on_disk.driver.as_deref() != driver {
                            e.progress = on_disk;
                        }
                    }
                }
                None => {
                    let state_path = state_of(plan);
                    let mut progress = load_progress(&state_path, plan);
                    // A runner takes up a plan no one is running.
                    let idle = !matches!(progress.state, State::Running | State::Paused);
                    if driver.is_some() && progress.driver.is_none() && idle {
                        progress.driver = driver.map(str::to_string);
                    }
                    // Time while no driver looked (the process was down) is not held.
                    progress.last_tick = unix_now();
                    self.entries.insert(
                        plan.name.clone(),
                        Entry {
                            config: plan.clone(),
                            progress,
                            state_path,
                            saved_at: 0.0,
                        },
                    );
                }
            }
        }
    }

    /// One tick: every running plan looked at once.
    pub async fn tick<E: Environment>(&mut self, env: &E, now: f64) {
        for e in self.entries.values_mut() {
            if e.progress.state != State::Running || e.progress.driver.as_deref() != env.driver() {
                continue;
            }
            let before = (e.progress.state, e.progress.step);
            let in_force = env.in_force(&e.config.route).await;
            let since = e.progress.counts_since;
            let judged = env.judge(&e.config, since).await;
            let action = e.progress.tick(&e.config, now, in_force, judged.as_ref());
            apply(env, e, action, now, since).await;
            let changed = before != (e.progress.state, e.progress.step);
            if changed || now - e.saved_at >= SAVE_EVERY {
                save(e, now);
            }
        }
    }

    /// A person's operation on plan `name`.
    pub async fn operate<E: Environment>(
        &mut self,
        env: &E,
        name: &str,
        op: Op,
        now: f64,
    ) -> Result<Option<Value>, Refused> {
        let Some(e) = self.entries.get_mut(name) else {
            return Ok(None);
        };
        if e.progress.driver.as_deref() != env.driver() {
            return Err(Refused {
                plan: name.to_string(),
                state: "driven by strangler plan run elsewhere (operate it there)",
                op: op.as_str(),
                detail: None,
            });
        }
        let may_start = matches!(
            e.progress.state,
            State::Pending | State::RolledBack | State::Aborted | State::Done
        );
        if op == Op::Start
            && may_start
            && let Some(min) = e.config.guard.min_shadow_match
        {
            let need = e.config.guard.min_requests;
            let (rate, compared) = env.shadow_match(&e.config.route).await.unwrap_or((None, 0));
            if compared < need || rate.is_none_or(|r| r < min) {
                return Err(Refused {
                    plan: name.to_string(),
                    state: "waiting for its shadow comparison",
                    op: op.as_str(),
                    detail: Some(format!(
                        "guard.min_shadow_match {min} over at least {need} compared copies; the route has {} over {compared}",
                        rate.map_or("no match rate".to_string(), |r| format!("{r:.4}"))
                    )),
                });
            }
        }
        let since = e.progress.counts_since;
        let action = e.progress.operate(&e.config, op, now)?;
        apply(env, e, action, now, since).await;
        save(e, now);
        Ok(Some(status(e, now)))
    }

    /// Every plan's status.
    pub fn statuses(&self, now: f64) -> Vec<Value> {
        self.entries.values().map(|e| status(e, now)).collect()
    }

    /// Exports each plan's step and state.
    pub fn export(&self, metrics: &Metrics, known: &mut Vec<String>) {
        let states: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
        for e in self.entries.values() {
            metrics.set_plan(
                &e.config.name,
                e.progress.step,
                e.progress.state.as_str(),
                &states,
            );
        }
        known.retain(|name| {
            let kept = self.entries.contains_key(name);
            if !kept {
                metrics.remove_plan(name, &states);
            }
            kept
        });
        for name in self.entries.keys() {
            if !known.contains(name) {
                known.push(name.clone());
            }
        }
    }
}

/// Carries out an action; a write that fails pauses the plan, saying why. Counts that
/// started again (`counts_since` moved from `since`) begin once the write is in force.
async fn apply<E: Environment>(env: &E, e: &mut Entry, action: Action, now: f64, since: f64) {
    if let Action::Write(bp) = action
        && let Err(why) = env.write(&e.config.route, bp).await
    {
        e.progress.write_failed(&e.config, now, bp, &why);
    }
    if e.progress.counts_since != since {
        env.begin_counts(&e.config, e.progress.counts_since);
    }
}

fn save(e: &mut Entry, now: f64) {
    e.saved_at = now;
    if let Err(err) = save_progress(&e.state_path, &e.progress) {
        tracing::warn!(plan = %e.config.name, file = %e.state_path.display(), error = %err, "plan: cannot save its progress");
    }
}

/// Where a plan's progress is kept inside a gateway: beside the plan.
pub fn beside_plan(plan: &PlanConfig) -> PathBuf {
    state_file(plan.file.parent().unwrap_or(Path::new(".")), &plan.name)
}

/// A plan's status, as the admin API and the dashboard show it.
pub fn status(e: &Entry, now: f64) -> Value {
    let (c, p) = (&e.config, &e.progress);
    let step = &c.steps[p.step];
    json!({
        "name": c.name,
        "route": c.route,
        "file": c.file.display().to_string(),
        "state": p.state.as_str(),
        "step": p.step,
        "steps": c.steps.iter().map(|s| json!({
            "percent": percent_json(s.percent_bp),
            "hold_seconds": s.hold.map(|h| h.as_secs_f64()),
        })).collect::<Vec<_>>(),
        "percent": match p.state {
            State::Pending => Value::Null,
            State::RolledBack => json!(0),
            _ => percent_json(step.percent_bp),
        },
        "step_started": (p.state != State::Pending).then_some(p.step_started),
        "step_seconds": (p.state != State::Pending).then(|| ((now - p.step_started) * 10.0).round() / 10.0),
        "hold_seconds": step.hold.map(|h| h.as_secs_f64()),
        "hold_left_seconds": p.hold_left(c).map(|l| (l * 10.0).round() / 10.0),
        "waiting_for": p.waiting_for(c),
        "guard": {
            "min_requests": c.guard.min_requests,
            "max_error_rate_delta": c.guard.max_error_rate_delta,
            "max_p99_ratio": c.guard.max_p99_ratio,
            "confidence": c.guard.confidence,
            "counts_since": (p.state != State::Pending).then_some(p.counts_since),
        },
        "on_fail": c.on_fail.as_str(),
        "driver": p.driver.as_deref().unwrap_or("gateway"),
        "check": p.last_check,
        "history": p.history,
    })
}

/// The status of plans as lines for people (`strangler plan status`).
pub fn describe(v: &Value) -> String {
    let mut out = String::new();
    let steps: Vec<String> = v["steps"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| match s["percent"].as_f64() {
                    Some(p) => format_percent((p * 100.0).round() as u32),
                    None => "?".into(),
                })
                .collect()
        })
        .unwrap_or_default();
    out.push_str(&format!(
        "plan {}  route {}  state {}  step {} of {} ({}%)  steps {}\n",
        v["name"].as_str().unwrap_or("?"),
        v["route"].as_str().unwrap_or("?"),
        v["state"].as_str().unwrap_or("?"),
        v["step"],
        steps.len(),
        v["percent"],
        steps.join(" → "),
    ));
    out.push_str(&format!(
        "  waiting for: {}\n",
        v["waiting_for"].as_str().unwrap_or("")
    ));
    if let Some(c) = v["check"].as_object() {
        out.push_str(&format!(
            "  guard: {}  legacy {}/{} errors  new {}/{} errors  evidence errors {} latency {} (threshold {})\n",
            c["verdict"].as_str().unwrap_or("?"),
            c["legacy_errors"],
            c["legacy_requests"],
            c["new_errors"],
            c["new_requests"],
            c["errors_log_lr"],
            c["latency_log_lr"],
            c["threshold"],
        ));
    }
    if let Some(h) = v["history"].as_array() {
        for t in h.iter().rev().take(5).rev() {
            out.push_str(&format!(
                "  {}  {} → {}  {}%  {}\n",
                humantime::format_rfc3339_seconds(
                    SystemTime::UNIX_EPOCH
                        + Duration::from_secs_f64(t["at"].as_f64().unwrap_or(0.0).max(0.0))
                ),
                t["from"].as_str().unwrap_or("?"),
                t["to"].as_str().unwrap_or("?"),
                t["percent"],
                t["reason"].as_str().unwrap_or(""),
            ));
        }
    }
    out
}
