//! The carve-out map (docs/inventory.md): endpoint templates learned from traffic, with what
//! each carries (requests, errors, latency, the share the new side served, the routes that
//! took it), how far the migration is, the templates a route almost takes, and routes to
//! paste for what is still on the monolith.
//!
//! - [`shape`]: what a path segment looks like (an id, a UUID, a date, a word) and how a
//!   parameter is named;
//! - [`hist`]: the small fixed latency histogram each template keeps;
//! - [`learn`]: the [`Inventory`], a bounded tree of path segments per method that turns
//!   samples into templates;
//! - [`map`]: the [`Map`], a snapshot that serializes, merges across gateways and sums up as
//!   [`Progress`];
//! - [`near`]: templates a route almost takes (letter case, trailing slash, `;parameters`,
//!   method);
//! - [`suggest`]: routes in the routes file's YAML for the templates still on legacy;
//! - [`logs`]: the same map from access logs (nginx/Apache combined, the gateway's JSON,
//!   gzip).
//!
//! Pure and synchronous: no tasks, no clocks; only [`logs`] reads, from a reader it is given.
//! Memory is bounded whatever the input ([`Limits`]).

pub mod hist;
pub mod learn;
pub mod logs;
pub mod map;
pub mod near;
pub mod shape;
pub mod suggest;

use std::time::Duration;

pub use hist::Histogram;
pub use learn::Inventory;
pub use logs::{LogCounts, Malformed, feed};
pub use map::{Map, OtherView, Progress, RouteShare, TemplateView, Totals};
pub use near::{
    NearMiss, NearMissKind, Taken, decide_path, near_misses, near_misses_for, near_misses_with,
};
pub use suggest::{SortKey, Suggestion, suggest};

/// A latency that was not measured (an access log without times): the request is counted,
/// its latency is not.
pub const UNTIMED: Duration = Duration::MAX;

/// One request as the map learns it.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    pub method: &'a str,
    /// The path without its query.
    pub path: &'a str,
    pub status: u16,
    /// [`UNTIMED`] when unknown.
    pub latency: Duration,
    /// The route's name, or `default`.
    pub route: &'a str,
    /// Served by the new side.
    pub new_side: bool,
    /// When the request was made (unix milliseconds).
    pub at_unix_ms: u64,
}

/// How much the map may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Templates kept; requests for any other go to the `other` bucket.
    pub max_templates: usize,
    /// Example paths kept per template.
    pub examples: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_templates: 2000,
            examples: 3,
        }
    }
}

impl Limits {
    /// The nodes the learning tree may hold: eight per template, and never fewer than 1024.
    pub fn max_nodes(&self) -> usize {
        self.max_templates.saturating_mul(8).max(1024)
    }
}
