//! Migration plans at work (docs/plans.md): the state machine
//! ([`engine`]), its progress kept on disk, and the driver that looks at every plan once a
//! tick, inside a gateway (figures from its own counts) or as `strangler plan run`
//! (figures from Prometheus, across replicas).
//!
//! A percentage change is the same locked, validated, in-place write as `strangler shift`;
//! the routes file shows what is in force, but for one thing: a rollback goes into force
//! first (held in memory by a gateway) and the file catches up, retried until it does.
//!
//! Fail safe: a change is recorded only once it is in force; a plan whose progress cannot
//! be saved does not start, resume or go on; a runner holds a lease that lapses, so that a
//! person on any gateway can take a plan back from a runner that went away.

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
use crate::proxy::overrides::Override;
pub use engine::{Change, Judgement, Kind, Op, Progress, Refused, State, Unpublished};

/// How often a driver looks at its plans.
pub const TICK: Duration = Duration::from_secs(1);
/// How often a running plan's progress (its hold served) is saved, at least.
const SAVE_EVERY: f64 = 1.0;
/// How long an `on_transition` command may run.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(30);

/// The wall clock in unix seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What became of a change the routes file had not caught up with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatchUp {
    /// The file (and, for `plan run`, the replicas) now carry it.
    Done,
    /// It is no longer wanted: the file was set to another percentage by a person, who
    /// wins. The words say what was found.
    Superseded(String),
}

/// What a driver needs from the world: the percentage in force, the guard's judgement,
/// and the write of a new percentage.
pub trait Environment: Send + Sync + 'static {
    /// The plans of the config in force.
    fn plans(&self) -> Vec<PlanConfig>;
    /// Where a plan's progress is kept.
    fn state_path(&self, plan: &PlanConfig) -> PathBuf;
    /// The plans folder of the config in force (`None`: the routes file names none).
    fn plans_dir(&self) -> Option<PathBuf> {
        None
    }
    /// Who drives the plans it runs (`None`: a gateway); see [`Progress::driver`].
    fn driver(&self) -> Option<&'static str> {
        None
    }
    /// The lease this driver holds on the plans it runs (a runner: its name, and how long
    /// its lease lasts without a heartbeat); `None`: no lease (a gateway).
    fn lease(&self) -> Option<(String, f64)> {
        None
    }
    /// Reads again what the next tick looks at (a runner re-reads the routes file).
    fn refresh(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// The route's percentage in force (basis points), `None` when it has no such route.
    fn in_force(&self, route: &str) -> impl Future<Output = Option<u32>> + Send;
    /// The percentage the driver holds in memory for the route, when the routes file says
    /// another (a gateway's rollback the file has not caught up with).
    fn held(&self, _route: &str) -> Option<Override> {
        None
    }
    /// The guard's judgement of the route's traffic since `since` (unix seconds); `None`
    /// when no figures could be had (then nothing moves).
    fn judge(
        &self,
        plan: &PlanConfig,
        since: f64,
    ) -> impl Future<Output = Option<Judgement>> + Send;
    /// Puts `bp` in force as the route's percentage through the routes file (ending any
    /// percentage held in memory for it); the error in words.
    fn write(&self, route: &str, bp: u32) -> impl Future<Output = Result<(), String>> + Send;
    /// Puts `bp` in force at once, whatever becomes of the routes file (a gateway holds it
    /// in memory until the file catches up): the percentage in force after it, `None`
    /// when this driver cannot (a runner only has the file).
    fn hold(
        &self,
        _plan: &PlanConfig,
        _bp: u32,
        _reason: &str,
    ) -> impl Future<Output = Option<u32>> + Send {
        async { None }
    }
    /// Brings the routes file (and whatever publishes it) up to an unpublished change.
    fn catch_up(
        &self,
        route: &str,
        change: &Unpublished,
    ) -> impl Future<Output = Result<CatchUp, String>> + Send;
    /// The route's shadow match rate over the last `window` and the copies it is over
    /// (`None`: no figures), and what the figures cover, in words.
    fn shadow_match(
        &self,
        _route: &str,
        _window: Duration,
    ) -> impl Future<Output = Option<(Option<f64>, u64, String)>> + Send {
        async { None }
    }
    /// The plan's counts start again at `since` (a step began, or the plan resumed), its
    /// new percentage in force: a driver that counts for itself takes its baseline now.
    fn begin_counts(&self, _plan: &PlanConfig, _since: f64) {}
    /// What the driver knows of the route's users since the counts began: distinct sticky
    /// keys seen on the new side and in all (estimates), when the route has a sticky key.
    fn sticky_keys(&self, _plan: &PlanConfig) -> Option<Value> {
        None
    }
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
            plans.sync(&mut book, unix_now());
        }
        plans
    }

    /// Takes in the plans of the config in force, and exports every plan's state.
    fn sync(&self, book: &mut Book, now: f64) {
        book.sync(
            &self.env.plans(),
            |p| self.env.state_path(p),
            self.env.driver(),
            self.env.lease().map(|l| l.0),
            now,
        );
        let mut exported = self.exported.lock().unwrap_or_else(|p| p.into_inner());
        book.export(&self.metrics, &mut exported);
    }

    /// One look at every plan.
    pub async fn tick(&self, now: f64) {
        self.env.refresh().await;
        let mut book = self.book.lock().await;
        self.sync(&mut book, now);
        book.tick(&self.env, &self.metrics, now).await;
        self.sync(&mut book, now);
    }

    /// Looks at every plan once every `every`, for the life of the process.
    pub fn spawn(self: &Arc<Self>, every: Duration) {
        let plans = self.clone();
        let every = every.max(Duration::from_millis(10));
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
        let now = unix_now();
        let mut book = self.book.lock().await;
        self.sync(&mut book, now);
        let mut out = Vec::new();
        for e in book.entries.values() {
            out.push(self.status_of(e, now).await);
        }
        out
    }

    /// One plan's status; `None` when there is no such plan.
    pub async fn status(&self, name: &str) -> Option<Value> {
        let now = unix_now();
        let mut book = self.book.lock().await;
        self.sync(&mut book, now);
        let e = book.entries.get(name)?;
        Some(self.status_of(e, now).await)
    }

    async fn status_of(&self, e: &Entry, now: f64) -> Value {
        let route = &e.plan().route;
        let view = RouteView {
            in_force: self.env.in_force(route).await,
            held: self.env.held(route),
            sticky: self.env.sticky_keys(e.plan()),
        };
        status(e, &view, now)
    }

    /// The names of the plans.
    pub async fn names(&self) -> Vec<String> {
        let mut book = self.book.lock().await;
        self.sync(&mut book, unix_now());
        book.entries.keys().cloned().collect()
    }

    /// Whether this driver lost a plan it ran to another (a person took it over after its
    /// lease lapsed): a runner then stops.
    pub async fn lost(&self, name: &str) -> Option<String> {
        let book = self.book.lock().await;
        book.entries.get(name).and_then(|e| e.lost.clone())
    }

    /// Gives up this driver's lease on every plan it runs (a runner stopping): a person on
    /// any gateway may operate them at once.
    pub async fn release(&self) {
        let mut book = self.book.lock().await;
        let Some((holder, _)) = self.env.lease() else {
            return;
        };
        for e in book.entries.values_mut() {
            if e.progress
                .lease
                .as_ref()
                .is_some_and(|l| l.holder == holder)
            {
                e.progress.lease = None;
                if let Err(err) = save_progress(&e.state_path, &e.progress) {
                    tracing::warn!(plan = %e.file.name, error = %err, "plan run: cannot release its lease in the progress file; it lapses by itself");
                }
            }
        }
    }

    /// A person's operation at `now`; `Ok(None)` when there is no such plan.
    pub async fn operate(&self, name: &str, op: Op, now: f64) -> Result<Option<Value>, Refused> {
        let mut book = self.book.lock().await;
        self.sync(&mut book, now);
        let r = book.operate(&self.env, &self.metrics, name, op, now).await;
        self.sync(&mut book, now);
        let Some(e) = book.entries.get(name) else {
            return r.map(|_| None);
        };
        match r {
            Ok(Some(())) => Ok(Some(self.status_of(e, now).await)),
            Ok(None) => Ok(None),
            Err(refused) => Err(refused),
        }
    }
}

/// One plan: its file, its progress, where the progress is kept.
pub struct Entry {
    /// The plan as its file says it now.
    pub file: PlanConfig,
    pub progress: Progress,
    pub state_path: PathBuf,
    saved_at: f64,
    /// Taken up from disk and not looked at yet: its percentage in force is checked
    /// against its progress at the first tick.
    verify: bool,
    /// This driver ran the plan and lost it to another (its lease lapsed, a person took
    /// it over): in words.
    lost: Option<String>,
}

impl Entry {
    /// The definition the plan runs on: the one it started with while it is under way (an
    /// edit of its file waits for a person), else its file's.
    pub fn plan(&self) -> &PlanConfig {
        match &self.progress.definition {
            Some(d) if self.progress.state.live() => d,
            _ => &self.file,
        }
    }

    /// Whether the plan file says otherwise than the definition the plan runs on.
    fn file_differs(&self) -> bool {
        self.progress.state.live()
            && self
                .progress
                .definition
                .as_ref()
                .is_some_and(|d| !d.same_definition(&self.file))
    }
}

/// Every plan a driver runs, by name.
#[derive(Default)]
pub struct Book {
    pub entries: BTreeMap<String, Entry>,
}

/// Reads a plan's progress; a missing or empty file is a plan not started, an unreadable
/// one is logged and read as not started.
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
    // An empty file is a plan not started (a published progress that was never written).
    if text.trim().is_empty() {
        return fresh;
    }
    match serde_json::from_str::<Progress>(&text) {
        Ok(mut p) => {
            // The definition it runs on bounds its step (an earlier version kept none: the
            // plan file's).
            let steps = p
                .definition
                .as_ref()
                .map_or(plan.steps.len(), |d| d.steps.len());
            p.step = p.step.min(steps - 1);
            p.route = plan.route.clone();
            p
        }
        Err(e) => {
            // Said once per content: the file is read again at every look.
            if first_time(path, &text) {
                tracing::warn!(file = %path.display(), error = %e, "plan: its progress file is not valid; starting from pending");
            }
            fresh
        }
    }
}

/// Whether this file with this content is seen for the first time (for warnings said once).
fn first_time(path: &Path, text: &str) -> bool {
    static SEEN: std::sync::Mutex<Vec<(PathBuf, u64)>> = std::sync::Mutex::new(Vec::new());
    let key = (
        path.to_path_buf(),
        xxhash_rust::xxh3::xxh3_64(text.as_bytes()),
    );
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if seen.contains(&key) {
        return false;
    }
    if seen.len() >= 1024 {
        seen.clear();
    }
    seen.push(key);
    true
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
    ///
    /// A plan this driver is not running (another driver's, or one idle here) is read from
    /// its progress file again, so that it is shown as it is (a file deleted is a plan not
    /// started). A plan this driver runs under a lease is checked against the file: if
    /// another took it over, this driver lets go of it.
    pub fn sync(
        &mut self,
        plans: &[PlanConfig],
        state_of: impl Fn(&PlanConfig) -> PathBuf,
        driver: Option<&'static str>,
        holder: Option<String>,
        now: f64,
    ) {
        self.entries
            .retain(|name, _| plans.iter().any(|p| &p.name == name));
        for plan in plans {
            match self.entries.get_mut(&plan.name) {
                Some(e) => {
                    e.file = plan.clone();
                    let ours = e.progress.driver.as_deref() == driver;
                    if !ours || !e.progress.state.live() {
                        let mut on_disk = load_progress(&e.state_path, plan);
                        take_up_idle(&mut on_disk, driver);
                        // When a driver last looked is its own business.
                        on_disk.last_tick = e.progress.last_tick;
                        if on_disk != e.progress {
                            e.verify = on_disk.driver.as_deref() == driver;
                            e.progress = on_disk;
                            e.progress.last_tick = now;
                        }
                    } else if let Some(holder) = &holder {
                        let on_disk = load_progress(&e.state_path, plan);
                        let still_mine = on_disk.driver.as_deref() == driver
                            && on_disk.lease.as_ref().is_none_or(|l| &l.holder == holder);
                        if !still_mine && e.lost.is_none() {
                            let by = match (&on_disk.driver, &on_disk.lease) {
                                (None, _) => "a gateway".to_string(),
                                (Some(_), Some(l)) => l.holder.clone(),
                                (Some(d), None) => d.clone(),
                            };
                            tracing::error!(plan = %plan.name, by = %by, "plan run: the plan was taken over after this runner's lease lapsed; it stops driving it");
                            e.lost = Some(format!("taken over by {by}"));
                            e.progress = on_disk;
                        }
                    }
                    // An edit of the file of a plan under way: it keeps its definition and
                    // pauses for a person.
                    if ours
                        && e.lost.is_none()
                        && e.file_differs()
                        && matches!(e.progress.state, State::Running | State::Watching)
                    {
                        let running = e.plan().clone();
                        let in_force = e.progress.written_bp.unwrap_or(0);
                        e.progress.file_changed(&running, plan, now, in_force);
                        e.saved_at = 0.0;
                    }
                }
                None => {
                    let state_path = state_of(plan);
                    let mut progress = load_progress(&state_path, plan);
                    take_up_idle(&mut progress, driver);
                    // Time while no driver looked (the process was down) is not held.
                    progress.last_tick = now;
                    let verify = progress.driver.as_deref() == driver;
                    self.entries.insert(
                        plan.name.clone(),
                        Entry {
                            file: plan.clone(),
                            progress,
                            state_path,
                            saved_at: 0.0,
                            verify,
                            lost: None,
                        },
                    );
                }
            }
        }
    }

    /// One tick: every plan this driver runs looked at once.
    pub async fn tick<E: Environment>(&mut self, env: &E, metrics: &Metrics, now: f64) {
        for e in self.entries.values_mut() {
            if e.progress.driver.as_deref() != env.driver() || e.lost.is_some() {
                continue;
            }
            let history = e.progress.history.last().cloned();
            let mut changed = false;
            if std::mem::take(&mut e.verify) {
                changed |= take_up(env, e, now).await;
            }
            changed |= catch_up(env, metrics, e, now).await;
            if matches!(e.progress.state, State::Running | State::Watching) {
                let plan = e.plan().clone();
                let in_force = env.in_force(&plan.route).await;
                let since = e.progress.counts_since;
                let judged = env.judge(&plan, since).await;
                if let Some(change) = e.progress.tick(&plan, now, in_force, judged.as_ref()) {
                    apply(
                        env,
                        metrics,
                        e,
                        &plan,
                        change,
                        now,
                        in_force.unwrap_or(0),
                        since,
                    )
                    .await;
                    changed = true;
                }
            }
            // A running plan saves its hold served; a runner renews its lease whatever the
            // state.
            let running = matches!(e.progress.state, State::Running | State::Watching);
            let leased = env.lease().is_some();
            if changed || ((running || leased) && now - e.saved_at >= SAVE_EVERY) {
                save(env, metrics, e, now).await;
            }
            notify(metrics, e, history);
        }
    }

    /// A person's operation on plan `name`: `Ok(Some(()))` done, `Ok(None)` no such plan.
    pub async fn operate<E: Environment>(
        &mut self,
        env: &E,
        metrics: &Metrics,
        name: &str,
        op: Op,
        now: f64,
    ) -> Result<Option<()>, Refused> {
        let Some(e) = self.entries.get_mut(name) else {
            return Ok(None);
        };
        let refused = |state: String, code: &'static str, detail: Option<String>| Refused {
            plan: name.to_string(),
            state,
            op: op.as_str(),
            code,
            detail,
        };
        if e.progress.driver.as_deref() != env.driver() {
            match (env.driver(), &e.progress.lease) {
                // A gateway may take a plan back from a runner whose lease lapsed (or
                // that gave it up on stopping).
                (None, lease) if lease.as_ref().is_none_or(|l| l.lapsed(now)) => {
                    tracing::warn!(
                        plan = %name,
                        runner = lease.as_ref().map_or("(none)", |l| l.holder.as_str()),
                        silent_seconds = lease.as_ref().map(|l| l.silent_for(now).round()),
                        op = op.as_str(),
                        "plan: taken over from plan run, whose lease lapsed"
                    );
                    e.progress.driver = None;
                    e.progress.lease = None;
                    e.verify = false;
                }
                (None, Some(l)) => {
                    return Err(refused(
                        format!(
                            "driven by {} (seen {}s ago)",
                            l.holder,
                            l.silent_for(now).round()
                        ),
                        "driven_elsewhere",
                        Some(format!(
                            "operate it there (its --admin), or wait for its lease to lapse: {}s without a heartbeat",
                            (l.ttl - l.silent_for(now)).max(0.0).ceil()
                        )),
                    ));
                }
                _ => {
                    return Err(refused(
                        "driven by a gateway".into(),
                        "driven_elsewhere",
                        Some("operate it on the gateway (strangler plan ... --admin)".into()),
                    ));
                }
            }
        }
        let may_start = matches!(
            e.progress.state,
            State::Pending | State::RolledBack | State::Aborted | State::Done
        );
        if op == Op::Start
            && may_start
            && let Some(min) = e.file.guard.min_shadow_match
        {
            let need = e.file.guard.min_requests;
            let (rate, compared, window) = env
                .shadow_match(&e.file.route, e.file.guard.shadow_window)
                .await
                .unwrap_or((None, 0, String::new()));
            if compared < need || rate.is_none_or(|r| r < min) {
                return Err(refused(
                    e.progress.state.as_str().into(),
                    "shadow_not_matching",
                    Some(format!(
                        "guard.min_shadow_match {min} over at least {need} compared copies {window}; the route has {} over {compared}",
                        rate.map_or("no match rate".to_string(), |r| format!("{r:.4}"))
                    )),
                ));
            }
        }
        // Start and resume go onto the plan file as it is now; pause and abort act on the
        // definition under way.
        let plan = match op {
            Op::Start | Op::Resume => e.file.clone(),
            Op::Pause | Op::Abort => e.plan().clone(),
        };
        let before = env.in_force(&plan.route).await.unwrap_or(0);
        let change = e.progress.operate(&plan, op, now, before)?;
        let history = e.progress.history.last().cloned();
        let since = e.progress.counts_since;
        let mut in_force = before;
        if let Some(bp) = change.write {
            // Nothing moves unless the progress can be saved: a plan that could not keep
            // its step would come back from a restart at an older one.
            if let Err(err) = save_progress(&e.state_path, &e.progress) {
                metrics.count_plan_write_failure(name, "progress");
                return Err(refused(
                    "unable to keep its progress".into(),
                    "progress_not_saved",
                    Some(format!(
                        "its progress cannot be saved to {}: {err}; make the plans folder writable for the gateway's user (or free its disk), then {} again",
                        e.state_path.display(),
                        op.as_str()
                    )),
                ));
            }
            if let Err(why) = env.write(&plan.route, bp).await {
                metrics.count_plan_write_failure(name, "routes");
                return Err(refused(
                    "unable to set its percentage".into(),
                    "write_failed",
                    Some(format!("could not set {}%: {why}", format_percent(bp))),
                ));
            }
            in_force = bp;
        }
        e.progress.commit(&plan, &change, now, in_force);
        // The person's operation put in force what the plan now says.
        e.verify = false;
        if e.progress.counts_since != since {
            env.begin_counts(&plan, e.progress.counts_since);
        }
        save(env, metrics, e, now).await;
        notify(metrics, e, history);
        Ok(Some(()))
    }

    /// Exports each plan's step, state and unpublished change.
    pub fn export(&self, metrics: &Metrics, known: &mut Vec<String>) {
        let states: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
        for e in self.entries.values() {
            metrics.set_plan(
                &e.file.name,
                e.progress.step_number(),
                e.progress.state.as_str(),
                &states,
                e.progress.unpublished.is_some(),
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

/// A runner takes up a plan no one is running (a gateway's that ended, or none's).
fn take_up_idle(progress: &mut Progress, driver: Option<&'static str>) {
    if driver.is_some() && progress.driver.is_none() && !progress.state.live() {
        progress.driver = driver.map(str::to_string);
    }
}

/// A plan taken up from disk (this driver started, or another gave it up): a rollback that
/// had not reached the routes file is held again, and a plan under way whose route is not
/// where its progress says pauses rather than put an older step back. Whether it changed.
async fn take_up<E: Environment>(env: &E, e: &mut Entry, now: f64) -> bool {
    let plan = e.plan().clone();
    if e.progress.state == State::RolledBack
        && let Some(u) = &e.progress.unpublished
    {
        let why = format!(
            "plan {}'s rollback, not yet in the routes file (since {})",
            plan.name,
            humantime::format_rfc3339_seconds(
                SystemTime::UNIX_EPOCH + Duration::from_secs_f64(u.since.max(0.0))
            )
        );
        if env.hold(&plan, u.bp, &why).await.is_some() {
            tracing::warn!(plan = %plan.name, route = %plan.route, "plan: its rollback had not reached the routes file: held in memory again");
        }
        return false;
    }
    if !matches!(e.progress.state, State::Running | State::Watching) {
        return false;
    }
    let Some(in_force) = env.in_force(&plan.route).await else {
        return false;
    };
    let before = e.progress.state;
    e.progress.differs_on_start(&plan, now, in_force);
    e.progress.state != before
}

/// Tries again to bring the routes file up to an unpublished change, when its time has
/// come. Whether anything changed.
async fn catch_up<E: Environment>(env: &E, metrics: &Metrics, e: &mut Entry, now: f64) -> bool {
    let Some(u) = e.progress.unpublished.clone() else {
        return false;
    };
    if now < u.next_at {
        return false;
    }
    let (plan, route) = (e.file.name.clone(), e.file.route.clone());
    match env.catch_up(&route, &u).await {
        Ok(CatchUp::Done) => {
            tracing::info!(plan = %plan, route = %route, percent = format_percent(u.bp), attempts = u.attempts + 1, "plan: the routes file caught up with the rollback");
            e.progress.unpublished = None;
        }
        Ok(CatchUp::Superseded(why)) => {
            tracing::warn!(plan = %plan, route = %route, found = %why, "plan: the rollback is no longer written: a person set the route's percentage");
            e.progress.unpublished = None;
        }
        Err(why) => {
            metrics.count_plan_write_failure(&plan, "routes");
            let mut u = u;
            u.failed(now, why.clone());
            tracing::warn!(plan = %plan, route = %route, error = %why, attempts = u.attempts, retry_in_seconds = (u.next_at - now).round(), "plan: the rollback is in force but not yet in the routes file; trying again");
            e.progress.unpublished = Some(u);
        }
    }
    true
}

/// Carries out a change the state machine asked for, committing it once it is in force.
/// A rollback goes into force first (held in memory where the driver can), and the routes
/// file catches up; any other write that fails pauses the plan, saying why.
#[allow(clippy::too_many_arguments)]
async fn apply<E: Environment>(
    env: &E,
    metrics: &Metrics,
    e: &mut Entry,
    plan: &PlanConfig,
    change: Change,
    now: f64,
    before: u32,
    since: f64,
) {
    match (change.kind, change.write) {
        (Kind::Rollback, Some(bp)) => {
            let held = env.hold(plan, bp, &change.reason).await;
            let u = Unpublished {
                bp,
                from_bp: before,
                since: now,
                next_at: now,
                attempts: 0,
                last_error: String::new(),
            };
            let mut change = change;
            let in_force = match env.catch_up(&plan.route, &u).await {
                Ok(_) => bp,
                Err(why) => {
                    metrics.count_plan_write_failure(&plan.name, "routes");
                    tracing::error!(plan = %plan.name, route = %plan.route, error = %why, held_in_memory = held.is_some(), "plan: the rollback could not be written to the routes file; retried until it is");
                    change.reason = match held {
                        Some(_) => format!(
                            "{}; held in memory: the routes file could not be written ({why}), retried until it is",
                            change.reason
                        ),
                        None => format!(
                            "{}; not yet published ({why}), retried until it is",
                            change.reason
                        ),
                    };
                    let mut u = u;
                    u.failed(now, why);
                    e.progress.unpublished = Some(u);
                    held.unwrap_or(before)
                }
            };
            e.progress.commit(plan, &change, now, in_force);
        }
        (_, Some(bp)) => match env.write(&plan.route, bp).await {
            Ok(()) => e.progress.commit(plan, &change, now, bp),
            Err(why) => {
                metrics.count_plan_write_failure(&plan.name, "routes");
                e.progress.write_failed(plan, &change, now, before, &why);
            }
        },
        (_, None) => e.progress.commit(plan, &change, now, before),
    }
    if e.progress.counts_since != since {
        env.begin_counts(plan, e.progress.counts_since);
    }
}

/// Saves a plan's progress (a runner's with its lease renewed); a plan under way whose
/// progress cannot be saved pauses, saying why, and the failure is counted.
async fn save<E: Environment>(env: &E, metrics: &Metrics, e: &mut Entry, now: f64) {
    e.saved_at = now;
    if let Some((holder, ttl)) = env.lease()
        && e.progress.driver.as_deref() == env.driver()
    {
        e.progress.lease = Some(engine::Lease {
            holder,
            heartbeat: now,
            ttl,
        });
    }
    let Err(err) = save_progress(&e.state_path, &e.progress) else {
        return;
    };
    metrics.count_plan_write_failure(&e.file.name, "progress");
    tracing::warn!(plan = %e.file.name, file = %e.state_path.display(), error = %err, "plan: cannot save its progress");
    if matches!(e.progress.state, State::Running | State::Watching) {
        let plan = e.plan().clone();
        let in_force = env.in_force(&plan.route).await.unwrap_or(0);
        e.progress.save_failed(
            &plan,
            now,
            in_force,
            &format!("{}: {err}", e.state_path.display()),
        );
    }
}

/// Runs the plan's `on_transition` command for each transition recorded since the history
/// held `before` entries, off the driver's path; a failure is logged and counted, and moves
/// nothing.
fn notify(metrics: &Metrics, e: &Entry, before: Option<engine::Transition>) {
    let Some(cmd) = e.file.on_transition.clone() else {
        return;
    };
    let history = &e.progress.history;
    // The transitions after the one that was last (a history full to its cap drops its
    // oldest entries as new ones come).
    let from = match &before {
        None => 0,
        Some(last) => history
            .iter()
            .rposition(|t| t == last)
            .map_or(history.len(), |i| i + 1),
    };
    for t in &history[from..] {
        let env: Vec<(&str, String)> = vec![
            ("STRANGLER_PLAN", e.file.name.clone()),
            ("STRANGLER_ROUTE", e.file.route.clone()),
            ("STRANGLER_FROM", t.from.as_str().to_string()),
            ("STRANGLER_TO", t.to.as_str().to_string()),
            ("STRANGLER_STEP", t.step.to_string()),
            (
                "STRANGLER_PERCENT",
                format_percent((t.percent * 100.0).round() as u32),
            ),
            ("STRANGLER_REASON", t.reason.clone()),
            (
                "STRANGLER_TRANSITION",
                serde_json::to_string(t).unwrap_or_default(),
            ),
        ];
        let (cmd, plan) = (cmd.clone(), e.file.name.clone());
        let failed = metrics.plan_notify_failures(&plan);
        tokio::spawn(async move {
            let mut c = tokio::process::Command::new("sh");
            c.arg("-c").arg(&cmd).kill_on_drop(true);
            for (k, v) in env {
                c.env(k, v);
            }
            let outcome = tokio::time::timeout(NOTIFY_TIMEOUT, c.output()).await;
            let why = match outcome {
                Ok(Ok(out)) if out.status.success() => return,
                Ok(Ok(out)) => format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                        .trim()
                        .chars()
                        .take(300)
                        .collect::<String>()
                ),
                Ok(Err(err)) => format!("cannot run it: {err}"),
                Err(_) => format!("still running after {}s: stopped", NOTIFY_TIMEOUT.as_secs()),
            };
            failed.inc();
            tracing::warn!(plan = %plan, command = %cmd, error = %why, "plan: on_transition failed");
        });
    }
}

/// Where a plan's progress is kept inside a gateway: beside the plan.
pub fn beside_plan(plan: &PlanConfig) -> PathBuf {
    state_file(plan.file.parent().unwrap_or(Path::new(".")), &plan.name)
}

/// What a driver knows of a plan's route now.
pub struct RouteView {
    /// The percentage in force (basis points); `None`: no such route.
    pub in_force: Option<u32>,
    /// A percentage held in memory that the routes file does not say.
    pub held: Option<Override>,
    /// Distinct sticky keys seen since the counts began.
    pub sticky: Option<Value>,
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// A plan's status, as the admin API, the CLI and the dashboard show it.
pub fn status(e: &Entry, view: &RouteView, now: f64) -> Value {
    let (c, p) = (e.plan(), &e.progress);
    let step = &c.steps[p.step.min(c.steps.len() - 1)];
    let started = p.state != State::Pending;
    let mut waiting = p.waiting_for(c, now);
    let runner = match (&p.driver, &p.lease) {
        (Some(_), Some(l)) => {
            let silent = l.silent_for(now);
            if l.lapsed(now) {
                waiting = format!(
                    "{waiting}; runner not seen for {}s (its lease lapsed after {}s): a person may pause, abort or take it over (start, resume) on any gateway",
                    silent.round(),
                    l.ttl.round()
                );
            }
            json!({"holder": l.holder, "last_seen_seconds": round1(silent), "lease_seconds": l.ttl, "lapsed": l.lapsed(now)})
        }
        (Some(d), None) => {
            waiting = format!(
                "{waiting}; {d} holds no lease (it stopped): a person may operate the plan on any gateway"
            );
            json!({"holder": null, "last_seen_seconds": null, "lease_seconds": null, "lapsed": true})
        }
        _ => Value::Null,
    };
    let file_change = e.file_differs().then(|| {
        json!({
            "steps_running": c.steps_text(),
            "steps_in_file": e.file.steps_text(),
            "message": format!("the plan file changed since the plan started ({} → {}): resume takes the new file", c.steps_text(), e.file.steps_text()),
        })
    });
    let held = view.held.as_ref().map(|o| {
        json!({
            "percent": percent_json(o.bp),
            "file_percent": percent_json(o.file_bp),
            "reason": o.reason,
            "since": o.since,
            "message": format!("the routes file says {}%; the gateway serves {}% ({})", format_percent(o.file_bp), format_percent(o.bp), o.reason),
        })
    });
    let unpublished = p.unpublished.as_ref().map(|u| {
        json!({
            "percent": percent_json(u.bp),
            "since": u.since,
            "attempts": u.attempts,
            "last_error": u.last_error,
            "next_try_seconds": round1((u.next_at - now).max(0.0)),
        })
    });
    if let Some(u) = &p.unpublished {
        waiting = format!(
            "{waiting}; the rollback to {}% is not yet in the routes file ({} tries; last: {})",
            format_percent(u.bp),
            u.attempts,
            u.last_error
        );
    }
    json!({
        "name": c.name,
        "route": c.route,
        "file": e.file.file.display().to_string(),
        "state": p.state.as_str(),
        "step": started.then(|| p.step + 1),
        "step_count": c.steps.len(),
        "step_text": started.then(|| Progress::step_text(c, p.step)),
        "steps": c.steps.iter().map(|s| json!({
            "percent": percent_json(s.percent_bp),
            "hold_seconds": s.hold.map(|h| h.as_secs_f64()),
            "max_wait_seconds": s.max_wait.map(|h| h.as_secs_f64()),
        })).collect::<Vec<_>>(),
        "percent": view.in_force.map(percent_json),
        "step_percent": started.then(|| percent_json(step.percent_bp)),
        "override": held,
        "unpublished": unpublished,
        "plan_file_changed": file_change,
        "step_started": started.then_some(p.step_started),
        "step_seconds": started.then(|| round1(now - p.step_started)),
        "hold_seconds": step.hold.map(|h| h.as_secs_f64()),
        // A plan not under way has no hold running (an ended one none left to serve).
        "hold_left_seconds": p.hold_left(c).filter(|_| p.state.live()).map(round1),
        "max_wait_seconds": c.max_wait(p.step).map(|w| w.as_secs_f64()),
        "watch": c.after.map(|a| json!({"seconds": a.watch.as_secs_f64(), "on_fail": a.on_fail.as_str()})),
        "waiting_for": waiting,
        "guard": {
            "min_requests": c.guard.min_requests,
            "max_error_rate_delta": c.guard.max_error_rate_delta,
            "max_error_rate_ratio": c.guard.max_error_rate_ratio,
            "max_p99_ratio": c.guard.max_p99_ratio,
            "confidence": c.guard.confidence,
            "counts_since": started.then_some(p.counts_since),
        },
        "sticky": view.sticky,
        "on_fail": c.on_fail.as_str(),
        "driver": p.driver.as_deref().unwrap_or("gateway"),
        "runner": runner,
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
                    Some(p) => format!("{}%", format_percent((p * 100.0).round() as u32)),
                    None => "?".into(),
                })
                .collect()
        })
        .unwrap_or_default();
    let in_force = match v["percent"].as_f64() {
        Some(p) => format!("{}% in force", format_percent((p * 100.0).round() as u32)),
        None => "route not in the routes file".into(),
    };
    let at = match v["step"].as_u64() {
        Some(n) => format!("step {n} of {}", steps.len()),
        None => "not started".into(),
    };
    out.push_str(&format!(
        "plan {}  route {}  state {}  {at}  {in_force}  steps {}  driver {}\n",
        v["name"].as_str().unwrap_or("?"),
        v["route"].as_str().unwrap_or("?"),
        v["state"].as_str().unwrap_or("?"),
        steps.join(" → "),
        v["driver"].as_str().unwrap_or("?"),
    ));
    if let Some(m) = v["override"]["message"].as_str() {
        out.push_str(&format!("  override: {m}\n"));
    }
    if let Some(m) = v["plan_file_changed"]["message"].as_str() {
        out.push_str(&format!("  {m}\n"));
    }
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
    if let Some(w) = v["sticky"]["warning"].as_str() {
        out.push_str(&format!("  sticky keys: {w}\n"));
    }
    if let Some(h) = v["history"].as_array() {
        for t in h.iter().rev().take(5).rev() {
            let percent = t["percent"].as_f64().map_or("?".to_string(), |p| {
                format_percent((p * 100.0).round() as u32)
            });
            out.push_str(&format!(
                "  {}  {} → {}  step {}  {}% in force  {}\n",
                humantime::format_rfc3339_seconds(
                    SystemTime::UNIX_EPOCH
                        + Duration::from_secs_f64(t["at"].as_f64().unwrap_or(0.0).max(0.0))
                ),
                t["from"].as_str().unwrap_or("?"),
                t["to"].as_str().unwrap_or("?"),
                t["step"],
                percent,
                t["reason"].as_str().unwrap_or(""),
            ));
        }
    }
    out
}
