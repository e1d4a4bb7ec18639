//! A plan's state machine, with no clock and no I/O of its own: every call is given the
//! time, the percentage in force and the guard's figures.
//!
//! The machine proposes, the driver disposes: [`Progress::tick`] and [`Progress::operate`]
//! answer with the [`Change`] they want, recording nothing; the driver puts what the change
//! needs in force (a percentage written, a rollback held), and only then
//! [`Progress::commit`]s it, with the percentage then in force. A change that could not be
//! put in force is never recorded as made. The gateway's driver and `strangler plan run`
//! feed it alike; tests feed it invented times and figures.
//!
//! Steps are numbered from 1 wherever a person reads them (reasons, status, metrics); the
//! progress file keeps the index from 0 as `step_index`.

use serde::{Deserialize, Serialize};

use crate::config::plan::{OnFail, PlanConfig};
use crate::config::{CompareConfig, format_percent};
use crate::observe::Tally;
use crate::observe::verdict::{RouteComparison, Verdict, judge};
use crate::observe::window::SideFigures;

/// Where a plan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not started.
    Pending,
    Running,
    /// Stopped on its step, waiting for a person (`resume` or `abort`).
    Paused,
    /// The last step is in force and the guard keeps judging it for the plan's
    /// `after.watch`.
    Watching,
    /// The guard failed under `on_fail: rollback`: the route is at 0.
    RolledBack,
    /// Stopped by a person; the percentage stayed.
    Aborted,
    /// The last step is in force (and its hold and the watch, if any, passed).
    Done,
}

impl State {
    pub const ALL: [State; 7] = [
        State::Pending,
        State::Running,
        State::Paused,
        State::Watching,
        State::RolledBack,
        State::Aborted,
        State::Done,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Paused => "paused",
            State::Watching => "watching",
            State::RolledBack => "rolled_back",
            State::Aborted => "aborted",
            State::Done => "done",
        }
    }

    /// Whether the plan is under way: a driver looks at it, or it waits for a person.
    pub fn live(self) -> bool {
        matches!(self, State::Running | State::Paused | State::Watching)
    }
}

/// The guard's figures at one check, as kept in the status and the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub verdict: String,
    pub reasons: Vec<String>,
    pub legacy_requests: u64,
    pub legacy_errors: u64,
    pub new_requests: u64,
    pub new_errors: u64,
    pub legacy_p99_ms: Option<f64>,
    pub new_p99_ms: Option<f64>,
    /// The error-rate test's statistic and threshold.
    pub errors_log_lr: f64,
    /// The latency test's statistic.
    pub latency_log_lr: f64,
    pub threshold: f64,
    pub requests_to_decide: Option<u64>,
    /// New's error rate minus legacy's, and new's p99 over legacy's.
    #[serde(default)]
    pub error_rate_delta: f64,
    #[serde(default)]
    pub p99_ratio: Option<f64>,
    /// The advance boundary: each test's statistic against its threshold, whether both are
    /// shown, the error-rate margin in effect, the requests per side the step needs, and how
    /// many more at these rates.
    #[serde(default)]
    pub advance_errors_log_lr: f64,
    #[serde(default)]
    pub advance_latency_log_lr: f64,
    #[serde(default)]
    pub advance_threshold: f64,
    #[serde(default)]
    pub advance_shown: bool,
    #[serde(default)]
    pub margin: f64,
    #[serde(default)]
    pub requests_needed: Option<u64>,
    #[serde(default)]
    pub requests_to_advance: Option<u64>,
    /// Why the new side's share is not being served, when it is not (no healthy instance,
    /// the breaker open): the guard fails on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
    /// Whether legacy's figures are those of the last split step (during the watch of a
    /// plan whose last step leaves legacy nothing to serve).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub legacy_from_reference: bool,
}

impl Check {
    pub fn of(c: &RouteComparison) -> Check {
        Check {
            verdict: c.verdict.as_str().to_string(),
            reasons: c.reasons.clone(),
            legacy_requests: c.legacy.requests,
            legacy_errors: c.legacy.errors,
            new_requests: c.new.requests,
            new_errors: c.new.errors,
            legacy_p99_ms: c.legacy.p99_ms,
            new_p99_ms: c.new.p99_ms,
            errors_log_lr: c.evidence.errors.log_lr,
            latency_log_lr: c.evidence.latency.log_lr,
            threshold: c.evidence.errors.threshold,
            requests_to_decide: c.requests_to_decide,
            error_rate_delta: c.error_rate_delta,
            p99_ratio: c.p99_ratio,
            advance_errors_log_lr: c.advance.errors.log_lr,
            advance_latency_log_lr: c.advance.latency.log_lr,
            advance_threshold: c.advance.errors.threshold,
            advance_shown: c.advance.shown,
            margin: c.advance.margin,
            requests_needed: c.advance.needed,
            requests_to_advance: c.advance.requests_to_advance,
            blocked: None,
            legacy_from_reference: false,
        }
    }

    /// One line for logs and histories.
    pub fn summary(&self) -> String {
        let rate = |e: u64, n: u64| {
            if n == 0 {
                0.0
            } else {
                e as f64 * 100.0 / n as f64
            }
        };
        format!(
            "legacy {}/{} errors ({:.2}%), new {}/{} ({:.2}%); evidence errors {:.1}, latency {:.1}, threshold {:.1}",
            self.legacy_errors,
            self.legacy_requests,
            rate(self.legacy_errors, self.legacy_requests),
            self.new_errors,
            self.new_requests,
            rate(self.new_errors, self.new_requests),
            self.errors_log_lr,
            self.latency_log_lr,
            self.threshold
        )
    }
}

/// The guard's view of the route, as a driver judges it: the figures since the counts
/// began, and why the new share is not being served when it is not.
#[derive(Debug, Clone)]
pub struct Judgement {
    pub figures: RouteComparison,
    /// The new side's share is going to legacy instead (no healthy instance, the circuit
    /// breaker open): whatever the figures say, the guard fails.
    pub blocked: Option<String>,
}

impl Judgement {
    pub fn of(figures: RouteComparison) -> Judgement {
        Judgement {
            figures,
            blocked: None,
        }
    }
}

/// One transition, with what justified it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// Unix time, seconds.
    pub at: f64,
    pub from: State,
    pub to: State,
    /// The step in force after it, counted from 1 (0: none started), and the route's
    /// percentage in force after it.
    pub step: usize,
    pub percent: f64,
    pub reason: String,
    pub check: Option<Check>,
}

/// A runner's hold on a plan: while its heartbeat is fresh, only it drives the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// Who holds it: `plan run`, its process id and host.
    pub holder: String,
    /// When the holder last saved the plan's progress (unix seconds).
    pub heartbeat: f64,
    /// How long after the heartbeat the lease lapses (seconds): a few of its intervals.
    pub ttl: f64,
}

impl Lease {
    /// Seconds since the holder was last seen.
    pub fn silent_for(&self, now: f64) -> f64 {
        (now - self.heartbeat).max(0.0)
    }

    /// Whether the lease has lapsed at `now`.
    pub fn lapsed(&self, now: f64) -> bool {
        self.silent_for(now) > self.ttl
    }
}

/// A rollback in force that the routes file (or, for `plan run`, the replicas) has not
/// caught up with yet: retried with backoff until it has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unpublished {
    /// The percentage to write (basis points), and what the file said when it was asked
    /// for.
    pub bp: u32,
    pub from_bp: u32,
    /// When it was asked for, and when it is next tried (unix seconds).
    pub since: f64,
    pub next_at: f64,
    pub attempts: u32,
    pub last_error: String,
}

/// The longest wait between two tries of an unpublished rollback.
pub const MAX_BACKOFF: f64 = 60.0;

impl Unpublished {
    /// Another failed try at `now`: the next in 1, 2, 4 ... seconds, at most a minute.
    pub fn failed(&mut self, now: f64, why: String) {
        self.attempts += 1;
        let wait = 2f64.powi(self.attempts.min(16) as i32 - 1).min(MAX_BACKOFF);
        self.next_at = now + wait;
        self.last_error = why;
    }
}

/// Legacy's figures of the last step that split the route: what a watch at 100% compares
/// the new side with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    pub requests: u64,
    pub errors: u64,
    /// Requests per latency bucket.
    pub latency: Vec<u64>,
}

impl Reference {
    fn of(f: &SideFigures) -> Reference {
        Reference {
            requests: f.requests,
            errors: f.errors,
            latency: f.latency.clone(),
        }
    }

    fn figures(&self) -> SideFigures {
        SideFigures::of_tally(&Tally {
            requests: self.requests,
            errors: self.errors,
            latency: self.latency.clone(),
        })
    }
}

/// A plan's progress: what survives a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub plan: String,
    pub route: String,
    pub state: State,
    /// The step in force, as an index from 0 (0 before the start).
    #[serde(rename = "step_index", alias = "step")]
    pub step: usize,
    /// When the step began (unix seconds).
    pub step_started: f64,
    /// Seconds of the step's hold (or the watch) served: time the plan ran while a driver
    /// watched it (a gateway that was down, or a pause, does not count).
    pub held: f64,
    /// From when the guard's figures count (unix seconds): the step's start, or the last
    /// resume.
    pub counts_since: f64,
    /// The percentage (basis points) the plan last put in force: another one in force
    /// means a person changed it.
    pub written_bp: Option<u32>,
    /// When the driver last looked (unix seconds).
    pub last_tick: f64,
    pub last_check: Option<Check>,
    pub history: Vec<Transition>,
    /// Who drives the plan: absent for a gateway, `plan run` for a runner of its own. A
    /// gateway only shows a plan a runner drives, unless the runner's lease lapsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// A runner's lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    /// The plan as it was started (or last resumed): an edit of its file changes nothing
    /// until a person resumes onto it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<PlanConfig>,
    /// A rollback the routes file has not caught up with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpublished: Option<Unpublished>,
    /// Legacy's figures of the last split step, for the watch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
}

/// The most transitions a history keeps (the oldest go first).
const HISTORY: usize = 200;

/// What a transition is, for the driver: what it must put in force before it commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Start,
    Resume,
    Advance,
    /// The last step held: done, or the watch begins.
    Finish,
    Rollback,
    Pause,
    Abort,
}

/// A transition the machine asks for. Nothing is recorded until the driver commits it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: Kind,
    pub to: State,
    /// The step (index) in force after it.
    pub step: usize,
    /// The percentage (basis points) to put in force first, if any.
    pub write: Option<u32>,
    pub reason: String,
    pub check: Option<Check>,
    /// Legacy's figures of the step that ends, kept for the watch.
    reference: Option<Reference>,
}

/// Why an operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plan {plan} is {state}: cannot {op}{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
pub struct Refused {
    pub plan: String,
    /// The plan's state, or what stands in the way, in words.
    pub state: String,
    pub op: &'static str,
    /// The error code the admin API answers with (409).
    pub code: &'static str,
    /// More on why, when the state alone does not say it.
    pub detail: Option<String>,
}

/// A person's operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Start,
    Pause,
    Resume,
    Abort,
}

impl Op {
    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "start" => Some(Op::Start),
            "pause" => Some(Op::Pause),
            "resume" => Some(Op::Resume),
            "abort" => Some(Op::Abort),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Start => "start",
            Op::Pause => "pause",
            Op::Resume => "resume",
            Op::Abort => "abort",
        }
    }
}

/// The longest stretch one tick adds to a hold: a driver that did not look for longer (a
/// gateway that was down, a machine asleep) does not count that time as held.
pub const MAX_TICK: f64 = 5.0;

/// The compare settings a plan's guard judges with: a rollback on any excess the test shows
/// (the harm test's margin is 0, so that a doubled error rate is caught as fast as
/// `/admin/compare` calls it worse), and the step's margin for the advance boundary.
pub fn guard_config(plan: &PlanConfig) -> CompareConfig {
    CompareConfig {
        min_requests: plan.guard.min_requests,
        max_p99_ratio: plan.guard.max_p99_ratio,
        max_error_rate_delta: 0.0,
        max_error_rate_ratio: plan.guard.max_error_rate_ratio,
        advance_margin: Some(plan.guard.max_error_rate_delta),
        confidence: plan.guard.confidence,
        ..CompareConfig::default()
    }
}

/// Whether the guard's figures let a step advance: at least `min_requests` a side, nothing
/// called worse, and the advance boundary shown on both tests (the evidence tells a new
/// side as good as legacy from one worse by twice the margin).
pub fn may_advance(c: &RouteComparison) -> bool {
    c.verdict == Verdict::Ok && c.advance.shown
}

fn pct(bp: u32) -> f64 {
    f64::from(bp) / 100.0
}

/// `humantime` of whole seconds.
fn secs(s: f64) -> humantime::FormattedDuration {
    humantime::format_duration(std::time::Duration::from_secs(s.max(0.0).round() as u64))
}

impl Change {
    fn new(kind: Kind, to: State, step: usize, reason: String) -> Change {
        Change {
            kind,
            to,
            step,
            write: None,
            reason,
            check: None,
            reference: None,
        }
    }

    fn writing(mut self, bp: u32) -> Change {
        self.write = Some(bp);
        self
    }

    fn with_check(mut self, check: Option<Check>) -> Change {
        self.check = check;
        self
    }
}

impl Progress {
    /// A plan not started.
    pub fn new(plan: &PlanConfig) -> Progress {
        Progress {
            plan: plan.name.clone(),
            route: plan.route.clone(),
            state: State::Pending,
            step: 0,
            step_started: 0.0,
            held: 0.0,
            counts_since: 0.0,
            written_bp: None,
            last_tick: 0.0,
            last_check: None,
            history: Vec::new(),
            driver: None,
            lease: None,
            definition: None,
            unpublished: None,
            reference: None,
        }
    }

    /// "step 2 of 5 (20%)".
    pub fn step_text(plan: &PlanConfig, i: usize) -> String {
        let i = i.min(plan.steps.len() - 1);
        format!(
            "step {} of {} ({}%)",
            i + 1,
            plan.steps.len(),
            format_percent(plan.steps[i].percent_bp)
        )
    }

    /// The step in force counted from 1 (0 before the start), as people and metrics see it.
    pub fn step_number(&self) -> usize {
        if self.state == State::Pending {
            0
        } else {
            self.step + 1
        }
    }

    fn record(
        &mut self,
        plan: &PlanConfig,
        now: f64,
        to: State,
        reason: String,
        check: Option<Check>,
        in_force: u32,
    ) {
        let percent = pct(in_force);
        tracing::info!(
            plan = %self.plan,
            route = %self.route,
            from = self.state.as_str(),
            to = to.as_str(),
            step = self.step + 1,
            steps = plan.steps.len(),
            percent,
            figures = check.as_ref().map(Check::summary).unwrap_or_default(),
            "plan: {reason}"
        );
        self.history.push(Transition {
            at: now,
            from: self.state,
            to,
            step: if to == State::Pending {
                0
            } else {
                self.step + 1
            },
            percent,
            reason,
            check,
        });
        if self.history.len() > HISTORY {
            self.history.remove(0);
        }
        self.state = to;
    }

    /// Enters step `i` at `now`: the hold and the guard's counts start afresh.
    fn enter(&mut self, i: usize, now: f64) {
        self.step = i;
        self.step_started = now;
        self.counts_since = now;
        self.held = 0.0;
    }

    /// A person's operation at `now` on `plan` (the plan file as it is now), the route at
    /// `in_force` (basis points): the change it asks for, or why it cannot be made.
    pub fn operate(
        &self,
        plan: &PlanConfig,
        op: Op,
        now: f64,
        in_force: u32,
    ) -> Result<Change, Refused> {
        let _ = now;
        let refuse = || Refused {
            plan: self.plan.clone(),
            state: self.state.as_str().to_string(),
            op: op.as_str(),
            code: "invalid_transition",
            detail: None,
        };
        match (op, self.state) {
            // Started again after it ended: from the first step.
            (Op::Start, State::Pending | State::RolledBack | State::Aborted | State::Done) => {
                let bp = plan.steps[0].percent_bp;
                Ok(Change::new(
                    Kind::Start,
                    State::Running,
                    0,
                    format!("started: {}", Progress::step_text(plan, 0)),
                )
                .writing(bp))
            }
            (Op::Pause, State::Running | State::Watching) => Ok(Change::new(
                Kind::Pause,
                State::Paused,
                self.step,
                "paused by a person".into(),
            )),
            (Op::Resume, State::Paused) => {
                // Onto the plan file as it is now: the same step, or, when the file's steps
                // changed, the last step at or below the percentage in force.
                let changed = self
                    .definition
                    .as_ref()
                    .is_some_and(|d| !d.same_definition(plan));
                let step = if changed {
                    plan.steps
                        .iter()
                        .rposition(|s| s.percent_bp <= in_force)
                        .unwrap_or(0)
                } else {
                    self.step.min(plan.steps.len() - 1)
                };
                let bp = plan.steps[step].percent_bp;
                let onto = if changed {
                    format!(" onto the plan file's new steps ({})", plan.steps_text())
                } else {
                    String::new()
                };
                Ok(Change::new(
                    Kind::Resume,
                    State::Running,
                    step,
                    format!("resumed at {}{onto}", Progress::step_text(plan, step)),
                )
                .writing(bp))
            }
            (Op::Abort, State::Pending | State::Running | State::Paused | State::Watching) => {
                Ok(Change::new(
                    Kind::Abort,
                    State::Aborted,
                    self.step,
                    "aborted by a person; the percentage stays".into(),
                ))
            }
            _ => Err(refuse()),
        }
    }

    /// Records `change`, now in force, the route at `in_force` (basis points) after it.
    /// `plan` is the definition the plan runs from now on.
    pub fn commit(&mut self, plan: &PlanConfig, change: &Change, now: f64, in_force: u32) {
        match change.kind {
            Kind::Start => {
                self.enter(change.step, now);
                self.last_check = None;
                self.definition = Some(plan.clone());
                self.unpublished = None;
                self.reference = None;
            }
            Kind::Resume => {
                // Fresh counts: the traffic before was split otherwise. The hold served
                // stays, unless the step changed.
                if change.step != self.step {
                    self.enter(change.step, now);
                }
                self.counts_since = now;
                self.definition = Some(plan.clone());
            }
            Kind::Advance => {
                self.enter(change.step, now);
                if change.reference.is_some() {
                    self.reference = change.reference.clone();
                }
            }
            Kind::Finish => {
                if change.to == State::Watching {
                    // The watch is held and counted afresh.
                    self.held = 0.0;
                    self.counts_since = now;
                    if change.reference.is_some() {
                        self.reference = change.reference.clone();
                    }
                }
            }
            Kind::Rollback | Kind::Pause | Kind::Abort => {}
        }
        if let Some(bp) = change.write {
            self.written_bp = Some(bp);
        }
        self.last_tick = now;
        self.record(
            plan,
            now,
            change.to,
            change.reason.clone(),
            change.check.clone(),
            in_force,
        );
        if matches!(change.kind, Kind::Start | Kind::Resume | Kind::Advance) {
            self.finish_if_last(plan, now, in_force);
        }
    }

    /// A plan on its last step with no hold is done (or begins its watch) as soon as that
    /// step is in force.
    fn finish_if_last(&mut self, plan: &PlanConfig, now: f64, in_force: u32) {
        if self.step + 1 == plan.steps.len() && plan.steps[self.step].hold.is_none() {
            let change = self.finish(
                plan,
                format!(
                    "the last step ({}%) is in force",
                    format_percent(plan.steps[self.step].percent_bp)
                ),
                self.last_check.clone(),
                None,
            );
            self.commit(plan, &change, now, in_force);
        }
    }

    /// The change that ends the last step: the watch, or done.
    fn finish(
        &self,
        plan: &PlanConfig,
        why: String,
        check: Option<Check>,
        reference: Option<Reference>,
    ) -> Change {
        let mut change = match plan.after {
            Some(a) => Change::new(
                Kind::Finish,
                State::Watching,
                self.step,
                format!(
                    "{why}: watching the new side for {}",
                    secs(a.watch.as_secs_f64())
                ),
            ),
            None => Change::new(Kind::Finish, State::Done, self.step, format!("done: {why}")),
        }
        .with_check(check);
        change.reference = reference;
        change
    }

    /// A write the plan asked for failed: the plan pauses, saying why (a person resumes
    /// it once the file can be written, or aborts it). The change itself is not recorded.
    pub fn write_failed(
        &mut self,
        plan: &PlanConfig,
        change: &Change,
        now: f64,
        in_force: u32,
        why: &str,
    ) {
        let wanted = change.write.map(format_percent).unwrap_or_default();
        let pause = Change::new(
            Kind::Pause,
            State::Paused,
            self.step,
            format!(
                "could not set {wanted}% ({}): {why}; paused at {}, {}% in force",
                change.reason,
                Progress::step_text(plan, self.step),
                format_percent(in_force)
            ),
        )
        .with_check(change.check.clone());
        self.commit(plan, &pause, now, in_force);
    }

    /// The plan's progress could not be saved: a plan under way pauses (keeping the
    /// percentage in force) and says why.
    pub fn save_failed(&mut self, plan: &PlanConfig, now: f64, in_force: u32, why: &str) {
        if matches!(self.state, State::Running | State::Watching) {
            let pause = Change::new(
                Kind::Pause,
                State::Paused,
                self.step,
                format!(
                    "its progress cannot be saved ({why}): paused, {}% stays in force; resume once the plans folder can be written",
                    format_percent(in_force)
                ),
            );
            self.commit(plan, &pause, now, in_force);
        }
    }

    /// The driver found, on taking the plan up, that the route's percentage in force is not
    /// the one its progress says: the last change may not have been saved. The plan
    /// pauses rather than put an older step in force again.
    pub fn differs_on_start(&mut self, plan: &PlanConfig, now: f64, in_force: u32) {
        if !matches!(self.state, State::Running | State::Watching) {
            return;
        }
        let expected = plan.steps[self.step.min(plan.steps.len() - 1)].percent_bp;
        if self.written_bp.unwrap_or(expected) == in_force {
            return;
        }
        let pause = Change::new(
            Kind::Pause,
            State::Paused,
            self.step,
            format!(
                "on taking the plan up, the route is at {}% but the saved progress is at {} (its last change may not have been saved): paused; resume puts {}% in force again, abort keeps {}%",
                format_percent(in_force),
                Progress::step_text(plan, self.step),
                format_percent(expected),
                format_percent(in_force)
            ),
        );
        self.commit(plan, &pause, now, in_force);
    }

    /// The plan file changed while the plan was under way: a running plan keeps the
    /// definition it started with, and pauses for a person (`resume` takes the new one).
    pub fn file_changed(
        &mut self,
        running: &PlanConfig,
        new: &PlanConfig,
        now: f64,
        in_force: u32,
    ) {
        if !matches!(self.state, State::Running | State::Watching) {
            return;
        }
        let pause = Change::new(
            Kind::Pause,
            State::Paused,
            self.step,
            format!(
                "plan file changed (steps {} → {}): paused at {}; resume takes the new file, abort stops",
                running.steps_text(),
                new.steps_text(),
                Progress::step_text(running, self.step)
            ),
        );
        self.commit(running, &pause, now, in_force);
    }

    /// One look at `now`, with the route's percentage in force (basis points; `None` when
    /// the route is gone) and the guard's judgement of the traffic since `counts_since`:
    /// the change the plan wants, if any (nothing is recorded; see [`Progress::commit`]).
    pub fn tick(
        &mut self,
        plan: &PlanConfig,
        now: f64,
        in_force: Option<u32>,
        judged: Option<&Judgement>,
    ) -> Option<Change> {
        if !matches!(self.state, State::Running | State::Watching) {
            self.last_tick = now;
            return None;
        }
        let dt = (now - self.last_tick).clamp(0.0, MAX_TICK);
        self.last_tick = now;
        let Some(in_force) = in_force else {
            return Some(Change::new(
                Kind::Pause,
                State::Paused,
                self.step,
                format!("route {} is no longer in the routes file", self.route),
            ));
        };
        // A person changed the percentage: the plan never fights a person.
        if let Some(written) = self.written_bp
            && written != in_force
        {
            return Some(Change::new(
                Kind::Pause,
                State::Paused,
                self.step,
                format!(
                    "the route was changed to {}% by hand (the plan had set {}%): paused",
                    format_percent(in_force),
                    format_percent(written)
                ),
            ));
        }
        self.held += dt;
        let judged = judged?;
        let watching = self.state == State::Watching;
        let mut c = judged.figures.clone();
        let mut from_reference = false;
        // At a last step that leaves legacy nothing, the watch weighs the new side against
        // legacy's figures of the last split step.
        if watching
            && c.legacy.requests < plan.guard.min_requests
            && let Some(r) = &self.reference
        {
            c = judge(
                &c.route,
                c.percent.clone(),
                r.figures(),
                c.new.clone(),
                &guard_config(plan),
            );
            from_reference = true;
        }
        if let Some(why) = &judged.blocked {
            if c.verdict != Verdict::Worse {
                c.reasons.clear();
            }
            c.reasons.insert(0, why.clone());
            c.verdict = Verdict::Worse;
            c.requests_to_decide = Some(0);
        }
        let mut check = Check::of(&c);
        check.blocked = judged.blocked.clone();
        check.legacy_from_reference = from_reference;
        self.last_check = Some(check.clone());
        let check = Some(check);
        if c.verdict == Verdict::Worse {
            let why = c.reasons.join("; ");
            let on_fail = match (watching, plan.after) {
                (true, Some(a)) => a.on_fail,
                _ => plan.on_fail,
            };
            let during = if watching { " during the watch" } else { "" };
            return Some(match on_fail {
                OnFail::Rollback => Change::new(
                    Kind::Rollback,
                    State::RolledBack,
                    self.step,
                    format!("guard failed{during}: {why}; rolled back to 0%"),
                )
                .writing(0)
                .with_check(check),
                OnFail::Pause => Change::new(
                    Kind::Pause,
                    State::Paused,
                    self.step,
                    format!("guard failed{during}: {why}; paused for a person"),
                )
                .with_check(check),
            });
        }
        if watching {
            let watch = plan.after.map_or(0.0, |a| a.watch.as_secs_f64());
            if self.held < watch {
                return None;
            }
            return Some(
                Change::new(
                    Kind::Finish,
                    State::Done,
                    self.step,
                    format!(
                        "done: watched the new side for {} with the guard ok",
                        secs(watch)
                    ),
                )
                .with_check(check),
            );
        }
        let step = plan.steps[self.step];
        let hold = step.hold.map_or(0.0, |h| h.as_secs_f64());
        // At 100% legacy serves nothing: there is nothing to compare, the hold decides.
        let ok = step.percent_bp == 10_000 || may_advance(&c);
        if self.held < hold {
            return None;
        }
        if !ok {
            if let Some(wait) = plan.max_wait(self.step)
                && self.held >= hold + wait.as_secs_f64()
            {
                return Some(
                    Change::new(
                        Kind::Pause,
                        State::Paused,
                        self.step,
                        format!(
                            "{} waited {} past its hold for the guard's evidence (max_wait) and still needs {}: paused for a person",
                            Progress::step_text(plan, self.step),
                            secs(wait.as_secs_f64()),
                            self.waiting_for(plan, now)
                        ),
                    )
                    .with_check(check),
                );
            }
            return None;
        }
        let reason = format!(
            "{} held {} with the guard ok",
            Progress::step_text(plan, self.step),
            secs(hold)
        );
        // Legacy's figures of a split step, for a watch at a last step that leaves it none.
        let reference =
            (c.legacy.requests > 0 && step.percent_bp < 10_000).then(|| Reference::of(&c.legacy));
        if self.step + 1 == plan.steps.len() {
            return Some(self.finish(plan, reason, check, reference));
        }
        let next = self.step + 1;
        let mut change = Change::new(
            Kind::Advance,
            State::Running,
            next,
            format!("{reason}: {}", Progress::step_text(plan, next)),
        )
        .writing(plan.steps[next].percent_bp)
        .with_check(check);
        change.reference = reference;
        Some(change)
    }

    /// The hold still to serve on this step (or the watch still to run), in seconds
    /// (`None` on a last step without one).
    pub fn hold_left(&self, plan: &PlanConfig) -> Option<f64> {
        if self.state == State::Watching {
            return plan
                .after
                .map(|a| (a.watch.as_secs_f64() - self.held).max(0.0));
        }
        let step = plan.steps.get(self.step)?;
        step.hold.map(|h| (h.as_secs_f64() - self.held).max(0.0))
    }

    /// What the plan waits for, in words.
    pub fn waiting_for(&self, plan: &PlanConfig, now: f64) -> String {
        match self.state {
            State::Pending => return "a start (strangler plan start)".into(),
            State::Paused => return "a person: resume or abort".into(),
            State::Watching => {
                return format!(
                    "the watch: {} left",
                    secs(self.hold_left(plan).unwrap_or(0.0).ceil())
                );
            }
            State::Running => {}
            _ => return "nothing: the plan has ended".into(),
        }
        let mut parts = Vec::new();
        if let Some(left) = self.hold_left(plan).filter(|l| *l > 0.0) {
            parts.push(format!("the hold: {} left", secs(left.ceil())));
        }
        let min = plan.guard.min_requests;
        match &self.last_check {
            Some(c) if c.verdict == "insufficient_data" => {
                // What each side still needs.
                let need = |n: u64| min.saturating_sub(n);
                parts.push(format!(
                    "more traffic: legacy {} more, new {} more (legacy {}, new {}; at least {min} each)",
                    need(c.legacy_requests),
                    need(c.new_requests),
                    c.legacy_requests,
                    c.new_requests,
                ))
            }
            Some(c)
                if c.verdict == "ok"
                    && !c.advance_shown
                    && plan.steps[self.step].percent_bp < 10_000 =>
            {
                let margin = c.margin * 100.0;
                parts.push(match c.requests_to_advance {
                    Some(more) => format!(
                        "the evidence to advance (as good as legacy, not worse by twice the {margin:.2}-point margin): about {more} more requests per side at these rates{}",
                        c.requests_needed
                            .map(|n| format!("; such a step needs about {n} a side"))
                            .unwrap_or_default()
                    ),
                    None => format!(
                        "the figures to settle: new's error rate {:+.2} points against legacy's (margin {margin:.2} points), p99 ratio {}; not yet shown worse, not shown within the margin either: more traffic decides",
                        c.error_rate_delta * 100.0,
                        c.p99_ratio.map_or("unknown".into(), |r| format!("{r:.2}")),
                    ),
                })
            }
            None => parts.push("the guard's first figures".into()),
            _ => {}
        }
        let _ = now;
        if parts.is_empty() {
            "the next check".into()
        } else {
            parts.join("; ")
        }
    }
}

#[cfg(test)]
mod tests {
    //! The state machine on invented times: hours of holds in microseconds, no clock. The
    //! tests play the driver: each change wanted is committed at once with the percentage
    //! it asked for in force, unless a test makes its write fail.

    use std::time::Duration;

    use super::*;
    use crate::config::plan::{After, Guard, Step};
    use crate::observe::window::bucket_of;

    fn step(bp: u32, hold: Option<u64>) -> Step {
        Step {
            percent_bp: bp,
            hold: hold.map(Duration::from_secs),
            max_wait: None,
        }
    }

    fn plan(on_fail: OnFail) -> PlanConfig {
        PlanConfig {
            name: "p".into(),
            file: "plans/p.yaml".into(),
            route: "r".into(),
            steps: vec![
                step(100, Some(3600)),
                step(1000, Some(3600)),
                step(10_000, None),
            ],
            // A margin of one point: 5,000 requests a side tell it.
            guard: Guard {
                min_requests: 100,
                max_error_rate_delta: 0.01,
                ..Guard::default()
            },
            on_fail,
            max_wait: None,
            after: None,
            on_transition: None,
        }
    }

    /// The guard's judgement of `n` requests a side with these error counts, all at 10 ms.
    fn judged(p: &PlanConfig, n: u64, legacy_errors: u64, new_errors: u64) -> Judgement {
        let side = |n: u64, errors| {
            let mut t = Tally {
                requests: n,
                errors,
                ..Tally::default()
            };
            t.latency[bucket_of(10_000)] = n;
            SideFigures::of_tally(&t)
        };
        Judgement::of(judge(
            "r",
            1.into(),
            side(n, legacy_errors),
            side(n, new_errors),
            &guard_config(p),
        ))
    }

    /// Commits `change` as a driver whose writes succeed: the percentage it asks for (or
    /// the one in force) is in force after it.
    fn put(p: &PlanConfig, g: &mut Progress, change: &Change, now: f64) {
        let in_force = change.write.or(g.written_bp).unwrap_or(0);
        g.commit(p, change, now, in_force);
    }

    /// Ticks every `every` seconds from `from` to `to`, the plan's last write in force,
    /// committing each change: the changes made.
    fn run(
        p: &PlanConfig,
        g: &mut Progress,
        from: f64,
        to: f64,
        every: f64,
        c: &Judgement,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut t = from;
        while t <= to {
            if let Some(change) = g.tick(p, t, g.written_bp.or(Some(0)), Some(c)) {
                put(p, g, &change, t);
                changes.push(change);
            }
            t += every;
        }
        changes
    }

    fn start(p: &PlanConfig, g: &mut Progress, now: f64) {
        let change = g.operate(p, Op::Start, now, 0).unwrap();
        assert_eq!(change.write, Some(p.steps[0].percent_bp));
        put(p, g, &change, now);
    }

    #[test]
    fn a_step_advances_only_after_its_hold_and_with_the_guard_ok() {
        let p = plan(OnFail::Rollback);
        let mut g = Progress::new(&p);
        start(&p, &mut g, 0.0);
        let ok = judged(&p, 5000, 5, 5);
        // 59 minutes of checks every second: nothing moves.
        assert!(run(&p, &mut g, 1.0, 3540.0, 1.0, &ok).is_empty());
        assert_eq!((g.state, g.step), (State::Running, 0));
        let left = g.hold_left(&p).unwrap();
        assert!((59.0..=61.0).contains(&left), "{left}");
        // The hour passes: the next step is written.
        let changes = run(&p, &mut g, 3541.0, 3602.0, 1.0, &ok);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].write, Some(1000));
        assert_eq!((g.state, g.step), (State::Running, 1));
        // Its own hour, then the last step (100%, no hold): done at once.
        let changes = run(&p, &mut g, 3603.0, 7300.0, 1.0, &ok);
        assert_eq!(changes[0].write, Some(10_000));
        assert_eq!(g.state, State::Done);
        let reasons: Vec<&str> = g.history.iter().map(|t| t.reason.as_str()).collect();
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        // People count steps from 1, in the history as in the reasons.
        assert_eq!(g.history[0].step, 1);
        assert!(reasons[0].contains("step 1 of 3 (1%)"), "{reasons:?}");
        assert!(reasons[1].contains("step 2 of 3 (10%)"), "{reasons:?}");
        assert_eq!(g.history[3].step, 3);
        assert_eq!(g.step_number(), 3);
        assert!(g.history[1].check.as_ref().unwrap().verdict == "ok");
    }

    #[test]
    fn insufficient_data_holds_the_step_whatever_the_hold() {
        let p = plan(OnFail::Rollback);
        let mut g = Progress::new(&p);
        start(&p, &mut g, 0.0);
        let few = judged(&p, 40, 0, 0);
        assert!(run(&p, &mut g, 1.0, 10_000.0, 5.0, &few).is_empty());
        assert_eq!((g.state, g.step), (State::Running, 0));
        assert_eq!(g.hold_left(&p), Some(0.0));
        let w = g.waiting_for(&p, 10_000.0);
        assert!(w.contains("legacy 60 more, new 60 more"), "{w}");
    }

    #[test]
    fn a_worse_guard_rolls_back_at_once_or_pauses() {
        let p = plan(OnFail::Rollback);
        let mut g = Progress::new(&p);
        start(&p, &mut g, 0.0);
        let bad = judged(&p, 1000, 10, 200);
        let change = g.tick(&p, 1.0, Some(100), Some(&bad)).unwrap();
        assert_eq!((change.kind, change.write), (Kind::Rollback, Some(0)));
        // Nothing is recorded until the driver commits.
        assert_eq!(g.state, State::Running);
        put(&p, &mut g, &change, 1.0);
        assert_eq!(g.state, State::RolledBack);
        let t = g.history.last().unwrap();
        assert_eq!(t.percent, 0.0);
        assert_eq!(t.check.as_ref().unwrap().new_errors, 200);
        // Nothing more happens until a person starts it again.
        assert_eq!(g.tick(&p, 2.0, Some(0), Some(&bad)), None);

        let p = plan(OnFail::Pause);
        let mut g = Progress::new(&p);
        start(&p, &mut g, 0.0);
        let change = g.tick(&p, 1.0, Some(100), Some(&bad)).unwrap();
        assert_eq!((change.kind, change.write), (Kind::Pause, None));
        put(&p, &mut g, &change, 1.0);
        assert_eq!(g.state, State::Paused);
    }

    #[test]
    fn a_blocked_new_share_fails_the_guard_whatever_the_figures() {
        let p = plan(OnFail::Rollback);
        let mut g = Progress::new(&p);
        start(&p, &mut g, 0.0);
        let mut fine = judged(&p, 5000, 5, 5);
        fine.blocked = Some("no healthy instance of orders".into());
        let change = g.tick(&p, 1.0, Some(100), Some(&fine)).unwrap();
        assert_eq!(change.kind, Kind::Rollback);
        assert!(
            change.reason.contains("no healthy instance of orders"),
            "{}",
            change.reason
        );
        assert_eq!(
            change.check.as_ref().unwrap().blocked.as_deref(),
            Some("no healthy instance of orders")
        );
    }

    #[test]
    fn a_write_that_fails_is_never_recorded_as_made() {
        let p = plan(OnFail::Rollback);
        let mut g = Progress::new(&p);
        start(&p, &mut g, 0.0);
        let ok = judged(&p, 5000, 5, 5);
        run(&p, &mut g, 1.0, 3599.0, 1.0, &ok);
        let change = g.tick(&p, 3601.0, Some(100), Some(&ok)).unwrap();
        assert_eq!(change.write, Some(1000));
        g.write_failed(&p, &change, 3601.0, 100, "the routes file is read-only");
        assert_eq!((g.state, g.step), (State::Paused, 0));
        let t = g.history.last().unwrap();
        assert_eq!((t.step, t.percent), (1, 1.0));
        assert!(
            t.reason.contains("could not set 10%")
                && t.reason.contains("paused at step 1 of 3 (1%), 1% in force"),
            "{}",
            t.reason
        );
        assert!(!g.history.iter().any(|t| t.step == 2), "{:?}", g.history);
    }

    #[test]
    fn the_history_records_the_percentage_in_force() {
        let p = plan(OnFail::Rollback);
        let mut g = Progress::new(&p);
        // A pending plan aborted: the route stays at what it was (0%), not the first step.
        let change = g.operate(&p, Op::Abort, 1.0, 0).unwrap();
        g.commit(&p, &change, 1.0, 0);
        let t = g.history.last().unwrap();
        assert_eq!((t.to, t.percent), (State::Aborted, 0.0));
    }

    #[test]
    fn a_person_wins() {
        let p = plan(OnFail::Rollback);
        let mut g = Progress::new(&p);
        let ok = judged(&p, 5000, 5, 5);
        assert!(g.operate(&p, Op::Pause, 0.0, 0).is_err());
        start(&p, &mut g, 0.0);
        run(&p, &mut g, 1.0, 1800.0, 1.0, &ok);
        let pause = g.operate(&p, Op::Pause, 1800.0, 100).unwrap();
        put(&p, &mut g, &pause, 1800.0);
        // A paused hour does not count as held.
        assert!(run(&p, &mut g, 1801.0, 5400.0, 1.0, &ok).is_empty());
        let resume = g.operate(&p, Op::Resume, 5400.0, 100).unwrap();
        assert_eq!(resume.write, Some(100));
        put(&p, &mut g, &resume, 5400.0);
        let left = g.hold_left(&p).unwrap();
        assert!((1795.0..=1805.0).contains(&left), "{left}");
        // A manual shift pauses it.
        let c = g.tick(&p, 5401.0, Some(3000), Some(&ok)).unwrap();
        put(&p, &mut g, &c, 5401.0);
        assert_eq!(g.state, State::Paused);
        assert!(g.history.last().unwrap().reason.contains("30% by hand"));
        let abort = g.operate(&p, Op::Abort, 5402.0, 3000).unwrap();
        g.commit(&p, &abort, 5402.0, 3000);
        assert_eq!(g.state, State::Aborted);
        assert_eq!(g.history.last().unwrap().percent, 30.0);
        assert!(g.operate(&p, Op::Resume, 5403.0, 3000).is_err());
    }

    #[test]
    fn a_changed_plan_file_pauses_a_running_plan_and_resume_takes_the_new_steps() {
        let p = plan(OnFail::Rollback);
        let mut g = Progress::new(&p);
        start(&p, &mut g, 0.0);
        let ok = judged(&p, 5000, 5, 5);
        run(&p, &mut g, 1.0, 3700.0, 1.0, &ok);
        assert_eq!((g.step, g.written_bp), (1, Some(1000)));
        let mut edited = plan(OnFail::Rollback);
        edited.steps = vec![step(500, Some(60)), step(700, None)];
        g.file_changed(&p, &edited, 3701.0, 1000);
        assert_eq!(g.state, State::Paused);
        let reason = &g.history.last().unwrap().reason;
        assert!(reason.contains("plan file changed"), "{reason}");
        // Resumed onto the new steps: the last one at or below the 10% in force.
        let resume = g.operate(&edited, Op::Resume, 3800.0, 1000).unwrap();
        assert_eq!((resume.step, resume.write), (1, Some(700)));
        put(&edited, &mut g, &resume, 3800.0);
        // A last step without a hold: done at once, on the new definition.
        assert_eq!(g.state, State::Done);
        assert_eq!(g.definition.as_ref().unwrap().steps.len(), 2);
        assert_eq!(g.history.last().unwrap().percent, 7.0);
    }

    #[test]
    fn a_differing_percentage_on_taking_the_plan_up_pauses_it() {
        let p = plan(OnFail::Rollback);
        let mut g = Progress::new(&p);
        start(&p, &mut g, 0.0);
        // The progress says step 1 (1%), the route is at 40%: its last change was not saved.
        g.differs_on_start(&p, 10.0, 4000);
        assert_eq!(g.state, State::Paused);
        let reason = &g.history.last().unwrap().reason;
        assert!(
            reason.contains("40%") && reason.contains("step 1 of 3 (1%)"),
            "{reason}"
        );
        assert_eq!(g.history.last().unwrap().percent, 40.0);
    }

    #[test]
    fn a_step_waiting_past_max_wait_pauses_and_says_why() {
        let mut p = plan(OnFail::Rollback);
        p.max_wait = Some(Duration::from_secs(1800));
        let mut g = Progress::new(&p);
        start(&p, &mut g, 0.0);
        let few = judged(&p, 40, 0, 0);
        let changes = run(&p, &mut g, 1.0, 6000.0, 1.0, &few);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(g.state, State::Paused);
        let t = g.history.last().unwrap();
        assert!((5399.0..=5402.0).contains(&t.at), "{}", t.at);
        assert!(t.reason.contains("max_wait"), "{}", t.reason);
        assert!(t.reason.contains("new 60 more"), "{}", t.reason);
    }

    #[test]
    fn the_watch_after_the_last_step_rolls_back_a_side_that_fails_then_ends() {
        let mut p = plan(OnFail::Rollback);
        p.after = Some(After {
            watch: Duration::from_secs(1800),
            on_fail: OnFail::Rollback,
        });
        let mut g = Progress::new(&p);
        start(&p, &mut g, 0.0);
        let ok = judged(&p, 5000, 5, 5);
        run(&p, &mut g, 1.0, 7300.0, 1.0, &ok);
        assert_eq!(g.state, State::Watching);
        assert_eq!(g.written_bp, Some(10_000));
        // At 100% legacy serves nothing: the new side is weighed against the 10% step's
        // legacy figures (5 errors in 5,000).
        let at_100 = |new_errors| {
            let mut j = judged(&p, 5000, 0, new_errors);
            j.figures.legacy = SideFigures::of_tally(&Tally::default());
            j
        };
        assert!(run(&p, &mut g, 7301.0, 8000.0, 1.0, &at_100(5)).is_empty());
        assert_eq!(g.last_check.as_ref().unwrap().legacy_requests, 5000);
        assert!(g.last_check.as_ref().unwrap().legacy_from_reference);
        let change = g
            .tick(&p, 8001.0, Some(10_000), Some(&at_100(400)))
            .unwrap();
        assert_eq!((change.kind, change.write), (Kind::Rollback, Some(0)));
        assert!(
            change.reason.contains("during the watch"),
            "{}",
            change.reason
        );

        // A side that holds up: done once the watch has run.
        let mut g = Progress::new(&p);
        start(&p, &mut g, 0.0);
        run(&p, &mut g, 1.0, 7300.0, 1.0, &ok);
        let changes = run(&p, &mut g, 7301.0, 9200.0, 1.0, &at_100(5));
        assert_eq!(changes.len(), 1);
        assert_eq!(g.state, State::Done);
        assert!(
            g.history
                .last()
                .unwrap()
                .reason
                .contains("watched the new side for 30m")
        );
    }

    #[test]
    fn progress_survives_a_restart_with_the_hold_that_remains() {
        let p = plan(OnFail::Rollback);
        let mut g = Progress::new(&p);
        let ok = judged(&p, 5000, 5, 5);
        start(&p, &mut g, 0.0);
        run(&p, &mut g, 1.0, 1200.0, 1.0, &ok);
        let saved = serde_json::to_string(&g).unwrap();
        assert!(saved.contains("\"step_index\""), "{saved}");
        let mut back: Progress = serde_json::from_str(&saved).unwrap();
        assert_eq!(back, g);
        // Down for an hour: a driver reading it again starts its clock then.
        back.last_tick = 4800.0;
        back.tick(&p, 4801.0, Some(100), Some(&ok));
        let left = back.hold_left(&p).unwrap();
        assert!((2398.0..=2401.0).contains(&left), "{left}");
        // A progress file of an earlier version (`step`, no definition) still reads.
        let old = saved.replace("\"step_index\"", "\"step\"");
        let old: Progress = serde_json::from_str(&old).unwrap();
        assert_eq!(old.step, g.step);
    }

    #[test]
    fn an_unpublished_rollback_is_retried_with_growing_waits() {
        let mut u = Unpublished {
            bp: 0,
            from_bp: 5000,
            since: 0.0,
            next_at: 0.0,
            attempts: 0,
            last_error: String::new(),
        };
        let waits: Vec<f64> = (0..9)
            .map(|_| {
                u.failed(100.0, "read-only".into());
                u.next_at - 100.0
            })
            .collect();
        assert_eq!(waits, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]);
    }
}
