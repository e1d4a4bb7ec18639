//! Migration plans (README "Migration plans"; docs/plans.md): one file per plan in the
//! folder the routes file names with `plans:`, each moving one route from 0 to 100 percent
//! in steps while a guard holds. Validated with the routes file; executed by the control
//! plane (`control::plan`).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// One validated plan file.
#[derive(Debug, Clone, PartialEq)]
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
}

/// One step: the route's percentage, and how long it is held before the next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub percent_bp: u32,
    /// `None` on the last step: the plan is done once it is in force. On another step,
    /// the default is [`DEFAULT_HOLD`].
    pub hold: Option<Duration>,
}

/// A step's hold when the file gives none (other than the last step's).
pub const DEFAULT_HOLD: Duration = Duration::from_secs(600);

/// What a step must show before the next, judged on the route's traffic since the step
/// began (the sequential test of `observe::sequential`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guard {
    /// Requests per side before the step may advance.
    pub min_requests: u64,
    /// The margin: new's error rate may exceed legacy's by this much.
    pub max_error_rate_delta: f64,
    /// New's p99 over legacy's, at most.
    pub max_p99_ratio: f64,
    /// 1 - the chance of ever rolling back a new side that meets the bounds.
    pub confidence: f64,
    /// The shadow match rate the route must show, over at least `min_requests` compared
    /// copies, before the plan may start (its first step).
    pub min_shadow_match: Option<f64>,
}

impl Default for Guard {
    fn default() -> Guard {
        Guard {
            min_requests: 100,
            max_error_rate_delta: 0.0,
            max_p99_ratio: 1.5,
            confidence: 0.99,
            min_shadow_match: None,
        }
    }
}

/// What a failing guard does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// A plan's progress, kept beside it: `.NAME.state.json` in the plans folder.
pub fn state_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.state.json"))
}
