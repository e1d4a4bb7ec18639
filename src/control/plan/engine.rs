//! A plan's state machine, with no clock and no I/O of its own: every call is given the
//! time, the percentage in force and the guard's figures, and answers with the percentage
//! to write, if any. The gateway's driver and `strangler plan run` feed it alike; tests
//! feed it invented times and figures.

use serde::{Deserialize, Serialize};

use crate::config::plan::{OnFail, PlanConfig};
use crate::config::{CompareConfig, format_percent};
use crate::observe::verdict::{RouteComparison, Verdict};

/// Where a plan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not started.
    Pending,
    Running,
    /// Stopped on its step, waiting for a person (`resume` or `abort`).
    Paused,
    /// The guard failed under `on_fail: rollback`: the route is at 0.
    RolledBack,
    /// Stopped by a person; the percentage stayed.
    Aborted,
    /// The last step is in force (and its hold, if it has one, passed).
    Done,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Pending,
        State::Running,
        State::Paused,
        State::RolledBack,
        State::Aborted,
        State::Done,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Paused => "paused",
            State::RolledBack => "rolled_back",
            State::Aborted => "aborted",
            State::Done => "done",
        }
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
}

impl Check {
    pub fn of(c: &RouteComparison) -> Check {
        Check {
            verdict: match c.verdict {
                Verdict::Ok => "ok",
                Verdict::Worse => "worse",
                Verdict::InsufficientData => "insufficient_data",
            }
            .to_string(),
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

/// One transition, with what justified it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// Unix time, seconds.
    pub at: f64,
    pub from: State,
    pub to: State,
    /// The step in force after it, and its percentage.
    pub step: usize,
    pub percent: f64,
    pub reason: String,
    pub check: Option<Check>,
}

/// A plan's progress: what survives a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub plan: String,
    pub route: String,
    pub state: State,
    /// The step in force (0 before the start).
    pub step: usize,
    /// When the step began (unix seconds).
    pub step_started: f64,
    /// Seconds of the step's hold served: time the plan ran on this step while a driver
    /// watched it (a gateway that was down, or a pause, does not count).
    pub held: f64,
    /// From when the guard's figures count (unix seconds): the step's start, or the last
    /// resume.
    pub counts_since: f64,
    /// The percentage (basis points) the plan last wrote: another one in force means a
    /// person changed it.
    pub written_bp: Option<u32>,
    /// When the driver last looked (unix seconds).
    pub last_tick: f64,
    pub last_check: Option<Check>,
    pub history: Vec<Transition>,
    /// Who drives the plan: absent for a gateway, `plan run` for a runner of its own. A
    /// gateway only shows a plan a runner drives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

/// The most transitions a history keeps (the oldest go first).
const HISTORY: usize = 200;

/// What the driver must do after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Write this percentage (basis points) to the routes file, as `strangler shift` does.
    Write(u32),
}

/// Why an operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plan {plan} is {state}: cannot {op}{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
pub struct Refused {
    pub plan: String,
    pub state: &'static str,
    pub op: &'static str,
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

/// The compare settings a plan's guard judges with.
pub fn guard_config(plan: &PlanConfig) -> CompareConfig {
    CompareConfig {
        min_requests: plan.guard.min_requests,
        max_p99_ratio: plan.guard.max_p99_ratio,
        max_error_rate_delta: plan.guard.max_error_rate_delta,
        confidence: plan.guard.confidence,
        ..CompareConfig::default()
    }
}

/// Whether the observed figures are within the guard's bounds (the error-rate margin and
/// the p99 ratio), whatever the test says yet.
pub fn within_bounds(plan: &PlanConfig, c: &RouteComparison) -> bool {
    c.error_rate_delta <= plan.guard.max_error_rate_delta + 1e-9
        && c.p99_ratio.is_none_or(|r| r <= plan.guard.max_p99_ratio)
}

fn pct(bp: u32) -> f64 {
    f64::from(bp) / 100.0
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
        }
    }

    fn record(
        &mut self,
        plan: &PlanConfig,
        now: f64,
        to: State,
        reason: String,
        check: Option<Check>,
    ) {
        let percent = match to {
            State::RolledBack => 0.0,
            _ => pct(plan.steps[self.step.min(plan.steps.len() - 1)].percent_bp),
        };
        tracing::info!(
            plan = %self.plan,
            route = %self.route,
            from = self.state.as_str(),
            to = to.as_str(),
            step = self.step,
            percent,
            figures = check.as_ref().map(Check::summary).unwrap_or_default(),
            "plan: {reason}"
        );
        self.history.push(Transition {
            at: now,
            from: self.state,
            to,
            step: self.step,
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

    /// A person's operation at `now`.
    pub fn operate(&mut self, plan: &PlanConfig, op: Op, now: f64) -> Result<Action, Refused> {
        let refuse = |p: &Progress| Refused {
            plan: p.plan.clone(),
            state: p.state.as_str(),
            op: op.as_str(),
            detail: None,
        };
        match (op, self.state) {
            // Started again after it ended: from the first step.
            (Op::Start, State::Pending | State::RolledBack | State::Aborted | State::Done) => {
                self.enter(0, now);
                let bp = plan.steps[0].percent_bp;
                self.written_bp = Some(bp);
                self.last_tick = now;
                self.last_check = None;
                self.record(
                    plan,
                    now,
                    State::Running,
                    format!("started: step 0 at {}%", format_percent(bp)),
                    None,
                );
                self.finish_if_last(plan, now);
                Ok(Action::Write(bp))
            }
            (Op::Pause, State::Running) => {
                self.record(plan, now, State::Paused, "paused by a person".into(), None);
                Ok(Action::Nothing)
            }
            (Op::Resume, State::Paused) => {
                // The step's percentage again (a person may have shifted it), and fresh
                // counts: the traffic before the pause was split otherwise.
                let bp = plan.steps[self.step].percent_bp;
                self.written_bp = Some(bp);
                self.counts_since = now;
                self.last_tick = now;
                self.record(
                    plan,
                    now,
                    State::Running,
                    format!("resumed at step {} ({}%)", self.step, format_percent(bp)),
                    None,
                );
                Ok(Action::Write(bp))
            }
            (Op::Abort, State::Pending | State::Running | State::Paused) => {
                self.record(
                    plan,
                    now,
                    State::Aborted,
                    "aborted by a person; the percentage stays".into(),
                    None,
                );
                Ok(Action::Nothing)
            }
            _ => Err(refuse(self)),
        }
    }

    /// A plan on its last step with no hold is done as soon as that step is in force.
    fn finish_if_last(&mut self, plan: &PlanConfig, now: f64) {
        if self.step + 1 == plan.steps.len() && plan.steps[self.step].hold.is_none() {
            let bp = plan.steps[self.step].percent_bp;
            self.record(
                plan,
                now,
                State::Done,
                format!("done: the last step ({}%) is in force", format_percent(bp)),
                self.last_check.clone(),
            );
        }
    }

    /// One look at `now`, with the route's percentage in force (basis points; `None` when
    /// the route is gone) and the guard's judgement of the traffic since `counts_since`.
    pub fn tick(
        &mut self,
        plan: &PlanConfig,
        now: f64,
        in_force: Option<u32>,
        judged: Option<&RouteComparison>,
    ) -> Action {
        if self.state != State::Running {
            self.last_tick = now;
            return Action::Nothing;
        }
        let dt = (now - self.last_tick).clamp(0.0, MAX_TICK);
        self.last_tick = now;
        let Some(in_force) = in_force else {
            self.record(
                plan,
                now,
                State::Paused,
                format!("route {} is no longer in the routes file", self.route),
                None,
            );
            return Action::Nothing;
        };
        // A person changed the percentage: the plan never fights a person.
        if let Some(written) = self.written_bp
            && written != in_force
        {
            self.record(
                plan,
                now,
                State::Paused,
                format!(
                    "the route was changed to {}% by hand (the plan had set {}%): paused",
                    format_percent(in_force),
                    format_percent(written)
                ),
                None,
            );
            return Action::Nothing;
        }
        self.held += dt;
        let check = judged.map(Check::of);
        self.last_check = check.clone();
        let Some(c) = judged else {
            return Action::Nothing;
        };
        if c.verdict == Verdict::Worse {
            let why = c.reasons.join("; ");
            return match plan.on_fail {
                OnFail::Rollback => {
                    self.written_bp = Some(0);
                    self.record(
                        plan,
                        now,
                        State::RolledBack,
                        format!("guard failed: {why}; rolled back to 0%"),
                        check,
                    );
                    Action::Write(0)
                }
                OnFail::Pause => {
                    self.record(
                        plan,
                        now,
                        State::Paused,
                        format!("guard failed: {why}; paused for a person"),
                        check,
                    );
                    Action::Nothing
                }
            };
        }
        let step = plan.steps[self.step];
        let hold = step.hold.map_or(0.0, |h| h.as_secs_f64());
        // At 100% legacy serves nothing: there is nothing to compare, the hold decides.
        // Otherwise the guard must be `ok` and the figures themselves within the bounds: a
        // step never advances on figures the test has not yet had the data to call worse.
        let judged_ok =
            (c.verdict == Verdict::Ok && within_bounds(plan, c)) || step.percent_bp == 10_000;
        if self.held < hold || !judged_ok {
            return Action::Nothing;
        }
        let reason = format!(
            "step {} held {} with the guard ok",
            self.step,
            humantime::format_duration(std::time::Duration::from_secs(hold.round() as u64))
        );
        if self.step + 1 == plan.steps.len() {
            self.record(plan, now, State::Done, format!("done: {reason}"), check);
            return Action::Nothing;
        }
        self.enter(self.step + 1, now);
        let bp = plan.steps[self.step].percent_bp;
        self.written_bp = Some(bp);
        self.record(
            plan,
            now,
            State::Running,
            format!("{reason}: step {} at {}%", self.step, format_percent(bp)),
            check,
        );
        self.finish_if_last(plan, now);
        Action::Write(bp)
    }

    /// A write the plan asked for failed: the plan pauses, saying why (a person resumes
    /// it once the file can be written, or aborts it).
    pub fn write_failed(&mut self, plan: &PlanConfig, now: f64, bp: u32, why: &str) {
        self.written_bp = None;
        self.record(
            plan,
            now,
            State::Paused,
            format!("could not set {}%: {why}", format_percent(bp)),
            None,
        );
    }

    /// The hold still to serve on this step, in seconds (`None` on a last step without one).
    pub fn hold_left(&self, plan: &PlanConfig) -> Option<f64> {
        let step = plan.steps.get(self.step)?;
        step.hold.map(|h| (h.as_secs_f64() - self.held).max(0.0))
    }

    /// What the plan waits for, in words.
    pub fn waiting_for(&self, plan: &PlanConfig) -> String {
        match self.state {
            State::Pending => return "a start (strangler plan start)".into(),
            State::Paused => return "a person: resume or abort".into(),
            State::Running => {}
            _ => return "nothing: the plan has ended".into(),
        }
        let mut parts = Vec::new();
        if let Some(left) = self.hold_left(plan).filter(|l| *l > 0.0) {
            parts.push(format!(
                "the hold: {} left",
                humantime::format_duration(std::time::Duration::from_secs(left.ceil() as u64))
            ));
        }
        match &self.last_check {
            Some(c) if c.verdict == "insufficient_data" => parts.push(format!(
                "more traffic: {} more requests per side (legacy {}, new {}; at least {} each)",
                c.requests_to_decide.unwrap_or(0),
                c.legacy_requests,
                c.new_requests,
                plan.guard.min_requests
            )),
            Some(c)
                if c.verdict == "ok"
                    && (c.error_rate_delta > plan.guard.max_error_rate_delta + 1e-9
                        || c.p99_ratio.is_some_and(|r| r > plan.guard.max_p99_ratio)) =>
            {
                let more = match c.requests_to_decide {
                    Some(n) => format!("at these rates about {n} more requests per side decide"),
                    None => "more traffic".into(),
                };
                parts.push(format!(
                    "the figures to come within the guard's bounds (error rate {:+.2} points, p99 ratio {}; bounds {:+.2} points, {}) or the test to call them worse: {more}",
                    c.error_rate_delta * 100.0,
                    c.p99_ratio.map_or("unknown".into(), |r| format!("{r:.2}")),
                    plan.guard.max_error_rate_delta * 100.0,
                    plan.guard.max_p99_ratio
                ))
            }
            None => parts.push("the guard's first figures".into()),
            _ => {}
        }
        if parts.is_empty() {
            "the next check".into()
        } else {
            parts.join("; ")
        }
    }
}

#[cfg(test)]
mod tests {
    //! The state machine on invented times: hours of holds in microseconds, no clock.

    use std::time::Duration;

    use super::*;
    use crate::config::plan::{Guard, Step};
    use crate::observe::verdict::judge;
    use crate::observe::window::{SideFigures, Tally, bucket_of};

    fn plan(on_fail: OnFail) -> PlanConfig {
        let hour = Some(Duration::from_secs(3600));
        PlanConfig {
            name: "p".into(),
            file: "plans/p.yaml".into(),
            route: "r".into(),
            steps: vec![
                Step {
                    percent_bp: 100,
                    hold: hour,
                },
                Step {
                    percent_bp: 1000,
                    hold: hour,
                },
                Step {
                    percent_bp: 10_000,
                    hold: None,
                },
            ],
            guard: Guard {
                min_requests: 100,
                ..Guard::default()
            },
            on_fail,
        }
    }

    /// The guard's judgement of `n` requests a side with these error counts, all at 10 ms.
    fn judged(p: &PlanConfig, n: u64, legacy_errors: u64, new_errors: u64) -> RouteComparison {
        let side = |errors| {
            let mut t = Tally {
                requests: n,
                errors,
                ..Tally::default()
            };
            t.latency[bucket_of(10_000)] = n;
            SideFigures::of_tally(&t)
        };
        judge(
            "r",
            1.into(),
            side(legacy_errors),
            side(new_errors),
            &guard_config(p),
        )
    }

    /// Ticks every `every` seconds from `from` to `to`, the plan's last write in force.
    fn run(
        p: &PlanConfig,
        g: &mut Progress,
        from: f64,
        to: f64,
        every: f64,
        c: &RouteComparison,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut t = from;
        while t <= to {
            let in_force = g.written_bp;
            let a = g.tick(p, t, in_force, Some(c));
            if a != Action::Nothing {
                actions.push(a);
            }
            t += every;
        }
        actions
    }

    #[test]
    fn a_step_advances_only_after_its_hold_and_with_the_guard_ok() {
        let p = plan(OnFail::Rollback);
        let mut g = Progress::new(&p);
        assert_eq!(g.operate(&p, Op::Start, 0.0), Ok(Action::Write(100)));
        let ok = judged(&p, 5000, 5, 5);
        // 59 minutes of checks every second: nothing moves.
        assert!(run(&p, &mut g, 1.0, 3540.0, 1.0, &ok).is_empty());
        assert_eq!((g.state, g.step), (State::Running, 0));
        let left = g.hold_left(&p).unwrap();
        assert!((59.0..=61.0).contains(&left), "{left}");
        // The hour passes: the next step is written.
        assert_eq!(
            run(&p, &mut g, 3541.0, 3602.0, 1.0, &ok),
            [Action::Write(1000)]
        );
        assert_eq!((g.state, g.step), (State::Running, 1));
        // Its own hour, then the last step (100%, no hold): done at once.
        assert_eq!(
            run(&p, &mut g, 3603.0, 7300.0, 1.0, &ok),
            [Action::Write(10_000)]
        );
        assert_eq!(g.state, State::Done);
        let reasons: Vec<&str> = g.history.iter().map(|t| t.reason.as_str()).collect();
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(g.history[1].check.as_ref().unwrap().verdict == "ok");
    }

    #[test]
    fn insufficient_data_holds_the_step_whatever_the_hold() {
        let p = plan(OnFail::Rollback);
        let mut g = Progress::new(&p);
        g.operate(&p, Op::Start, 0.0).unwrap();
        let few = judged(&p, 40, 0, 0);
        assert!(run(&p, &mut g, 1.0, 10_000.0, 5.0, &few).is_empty());
        assert_eq!((g.state, g.step), (State::Running, 0));
        assert_eq!(g.hold_left(&p), Some(0.0));
        let w = g.waiting_for(&p);
        assert!(w.contains("60 more requests per side"), "{w}");
    }

    #[test]
    fn a_worse_guard_rolls_back_at_once_or_pauses() {
        let p = plan(OnFail::Rollback);
        let mut g = Progress::new(&p);
        g.operate(&p, Op::Start, 0.0).unwrap();
        let bad = judged(&p, 1000, 10, 200);
        assert_eq!(g.tick(&p, 1.0, Some(100), Some(&bad)), Action::Write(0));
        assert_eq!(g.state, State::RolledBack);
        let t = g.history.last().unwrap();
        assert_eq!(t.percent, 0.0);
        assert_eq!(t.check.as_ref().unwrap().new_errors, 200);
        // Nothing more happens until a person starts it again.
        assert_eq!(g.tick(&p, 2.0, Some(0), Some(&bad)), Action::Nothing);

        let p = plan(OnFail::Pause);
        let mut g = Progress::new(&p);
        g.operate(&p, Op::Start, 0.0).unwrap();
        assert_eq!(g.tick(&p, 1.0, Some(100), Some(&bad)), Action::Nothing);
        assert_eq!(g.state, State::Paused);
    }

    #[test]
    fn figures_out_of_bounds_hold_the_step_until_the_test_decides() {
        let p = plan(OnFail::Rollback);
        let mut g = Progress::new(&p);
        g.operate(&p, Op::Start, 0.0).unwrap();
        // 8 points worse on 150 requests a side: not yet enough to call it worse, and
        // not a reason to go on either.
        let unsure = judged(&p, 150, 1, 13);
        assert_eq!(unsure.verdict, Verdict::Ok, "{:?}", unsure.evidence);
        assert!(run(&p, &mut g, 1.0, 7200.0, 5.0, &unsure).is_empty());
        assert_eq!((g.state, g.step), (State::Running, 0));
        let w = g.waiting_for(&p);
        assert!(w.contains("within the guard's bounds"), "{w}");
        assert!(w.contains("more requests per side decide"), "{w}");
        // More of the same: the test decides, and the plan rolls back.
        let sure = judged(&p, 1500, 10, 130);
        assert_eq!(g.tick(&p, 7201.0, Some(100), Some(&sure)), Action::Write(0));
        assert_eq!(g.state, State::RolledBack);
    }

    #[test]
    fn a_person_wins() {
        let p = plan(OnFail::Rollback);
        let mut g = Progress::new(&p);
        let ok = judged(&p, 5000, 5, 5);
        assert!(g.operate(&p, Op::Pause, 0.0).is_err());
        g.operate(&p, Op::Start, 0.0).unwrap();
        run(&p, &mut g, 1.0, 1800.0, 1.0, &ok);
        g.operate(&p, Op::Pause, 1800.0).unwrap();
        // A paused hour does not count as held.
        assert!(run(&p, &mut g, 1801.0, 5400.0, 1.0, &ok).is_empty());
        assert_eq!(g.operate(&p, Op::Resume, 5400.0), Ok(Action::Write(100)));
        let left = g.hold_left(&p).unwrap();
        assert!((1795.0..=1805.0).contains(&left), "{left}");
        // A manual shift pauses it.
        assert_eq!(g.tick(&p, 5401.0, Some(3000), Some(&ok)), Action::Nothing);
        assert_eq!(g.state, State::Paused);
        assert!(g.history.last().unwrap().reason.contains("30% by hand"));
        assert_eq!(g.operate(&p, Op::Abort, 5402.0), Ok(Action::Nothing));
        assert_eq!(g.state, State::Aborted);
        assert!(g.operate(&p, Op::Resume, 5403.0).is_err());
    }

    #[test]
    fn progress_survives_a_restart_with_the_hold_that_remains() {
        let p = plan(OnFail::Rollback);
        let mut g = Progress::new(&p);
        let ok = judged(&p, 5000, 5, 5);
        g.operate(&p, Op::Start, 0.0).unwrap();
        run(&p, &mut g, 1.0, 1200.0, 1.0, &ok);
        let saved = serde_json::to_string(&g).unwrap();
        let mut back: Progress = serde_json::from_str(&saved).unwrap();
        assert_eq!(back, g);
        // Down for an hour: a driver reading it again starts its clock then.
        back.last_tick = 4800.0;
        back.tick(&p, 4801.0, Some(100), Some(&ok));
        let left = back.hold_left(&p).unwrap();
        assert!((2398.0..=2401.0).contains(&left), "{left}");
    }
}
