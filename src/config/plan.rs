//! Migration plans (docs/plans.md): one file per plan in the
//! folder the routes file names with `plans:`, each moving one route from 0 to 100 percent
//! in steps while a guard holds. Validated with the routes file; executed by the control
//! plane (`control::plan`).
//!
//! A plan is serializable: a running plan keeps the definition it started with in its
//! progress file, so that an edit of its file mid-run changes nothing until a person says so.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One validated plan file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanConfig {
    /// The file name without `.yaml`.
    pub name: String,
    pub file: PathBuf,
    /// The route it moves (a route of the routes file).
    pub route: String,
    /// At least one; percentages strictly increasing.
    pub steps: Vec<Step>,
    pub guard: Guard,
    pub on_fail: OnFail,
    /// How long a step may wait for the guard's evidence once its hold has passed, before
    /// the plan pauses and says why (a step's own `max_wait` wins); `None`: as long as it
    /// takes.
    #[serde(default)]
    pub max_wait: Option<Duration>,
    /// The watch after the last step (`after`): `None`, the plan is done at once.
    #[serde(default)]
    pub after: Option<After>,
    /// A shell command run on each transition (`on_transition`), the transition in its
    /// environment; `None`: none.
    #[serde(default)]
    pub on_transition: Option<String>,
}

impl PlanConfig {
    /// Whether two versions of a plan would move the route alike: the same route, steps,
    /// guard, failure action, waits and watch (`on_transition` may differ: it moves
    /// nothing).
    pub fn same_definition(&self, other: &PlanConfig) -> bool {
        self.route == other.route
            && self.steps == other.steps
            && self.guard == other.guard
            && self.on_fail == other.on_fail
            && self.max_wait == other.max_wait
            && self.after == other.after
    }

    /// The longest a step may wait past its hold (`None`: no limit).
    pub fn max_wait(&self, step: usize) -> Option<Duration> {
        self.steps
            .get(step)
            .and_then(|s| s.max_wait)
            .or(self.max_wait)
    }

    /// The steps' percentages in words: `10% → 50% → 100%`.
    pub fn steps_text(&self) -> String {
        self.steps
            .iter()
            .map(|s| format!("{}%", super::format_percent(s.percent_bp)))
            .collect::<Vec<_>>()
            .join(" → ")
    }
}

/// One step: the route's percentage, and how long it is held before the next.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub percent_bp: u32,
    /// `None` on the last step: the plan is done once it is in force. On another step,
    /// the default is [`DEFAULT_HOLD`].
    pub hold: Option<Duration>,
    /// This step's own `max_wait`.
    #[serde(default)]
    pub max_wait: Option<Duration>,
}

/// A step's hold when the file gives none (other than the last step's).
pub const DEFAULT_HOLD: Duration = Duration::from_secs(600);

/// What a step must show before the next, judged on the route's traffic since the step
/// began (the sequential tests of `observe::sequential`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Guard {
    /// Requests per side before the step may advance.
    pub min_requests: u64,
    /// The margin, in points of error rate: a step advances once the evidence tells a new
    /// side as good as legacy from one worse by twice the margin.
    pub max_error_rate_delta: f64,
    /// The margin as a multiple of legacy's error rate (new's rate up to this many times
    /// legacy's); the margin is the larger of the two.
    #[serde(default = "default_error_rate_ratio")]
    pub max_error_rate_ratio: f64,
    /// New's p99 over legacy's, at most.
    pub max_p99_ratio: f64,
    /// 1 - the chance of ever rolling back a new side as good as legacy.
    pub confidence: f64,
    /// The shadow match rate the route must show, over at least `min_requests` compared
    /// copies, before the plan may start (its first step).
    pub min_shadow_match: Option<f64>,
    /// The copies `min_shadow_match` judges: those compared over this last stretch (and
    /// since the route last changed).
    #[serde(default = "default_shadow_window")]
    pub shadow_window: Duration,
}

/// The longest `guard.shadow_window`.
pub const MAX_SHADOW_WINDOW: Duration = Duration::from_secs(3600);

/// The default `guard.shadow_window`.
pub const DEFAULT_SHADOW_WINDOW: Duration = Duration::from_secs(600);

fn default_shadow_window() -> Duration {
    DEFAULT_SHADOW_WINDOW
}

fn default_error_rate_ratio() -> f64 {
    Guard::default().max_error_rate_ratio
}

impl Default for Guard {
    fn default() -> Guard {
        Guard {
            min_requests: 100,
            max_error_rate_delta: 0.0005,
            max_error_rate_ratio: 1.5,
            max_p99_ratio: 1.5,
            confidence: 0.99,
            min_shadow_match: None,
            shadow_window: DEFAULT_SHADOW_WINDOW,
        }
    }
}

/// What a failing guard does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFail {
    /// Percent 0, and the plan stops (state `rolled_back`).
    Rollback,
    /// The percentage stays; the plan waits for a person (state `paused`).
    Pause,
}

impl OnFail {
    pub fn as_str(self) -> &'static str {
        match self {
            OnFail::Rollback => "rollback",
            OnFail::Pause => "pause",
        }
    }
}

/// The watch after the last step: for `watch`, the guard keeps judging the new side, and a
/// failure acts as `on_fail` says, as in a step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct After {
    pub watch: Duration,
    pub on_fail: OnFail,
}

/// A plan's progress, kept beside it: `.NAME.state.json` in the plans folder.
pub fn state_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.state.json"))
}
