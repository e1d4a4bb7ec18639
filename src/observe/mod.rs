//! Observation: what the gateway measures and reports (docs/metrics.md, and the
//! guard's test in docs/plans.md).
//!
//! - [`metrics`]: the Prometheus registry, metric names and per-route handles;
//! - [`stdout`]: the process's one stdout writer, which nothing ever waits on;
//! - [`access_log`]: one line per request, through it;
//! - [`window`]: rolling per-route, per-side figures over a sliding window;
//! - [`verdict`]: whether the new side is worse than legacy, from those figures;
//! - [`prometheus`]: the same comparison computed from Prometheus, across replicas;
//! - [`shadow`]: legacy's answers against the new side's to copies of the same requests;
//! - [`inventory`]: the carve-out map, endpoint templates learned from traffic or access logs.
//!
//! Above `routing` and `config`; never imports the proxy or the control plane.

pub mod access_log;
pub mod inventory;
pub mod learner;
pub mod metrics;
pub mod prometheus;
pub mod sequential;
pub mod shadow;
pub mod stdout;
pub mod verdict;
pub mod window;

pub use access_log::{AccessLog, Entry, LogFormat, json_str};
pub use metrics::{ClientErrorKind, Metrics, SideMetrics, UpstreamErrorKind, grpc_server_fault};
pub use stdout::{LogLines, stdout};
pub use verdict::judge;
pub use window::{Registry, RouteWindow, Tally};
