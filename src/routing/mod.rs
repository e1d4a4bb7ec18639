//! Routing: which route takes a request, and which side serves it (docs/routing.md,
//! "Which route wins" and "Which side serves").
//!
//! The lowest layer, and pure: no I/O, no YAML, no metrics. The routes file is read into its
//! types (`config`), and [`RouteTable::decide`] is the one function that picks a route and a
//! side, for the gateway and for `strangler explain` alike.
//!
//! - [`canon`]: the canonical form of a request path;
//! - [`pattern`]: what a rule matches (path patterns, methods, header conditions);
//! - [`router`]: the lookup structures that find the winning rule;
//! - [`side`]: the side choice (percent, sticky cohorts, override header);
//! - [`table`]: the compiled table and the decision.

pub mod canon;
pub mod method;
pub mod pattern;
pub mod router;
pub mod side;
pub mod table;

pub use canon::{CanonError, PathParameters, canonicalize, routing_path};
pub use method::{METHOD_OTHER, METHODS, method_index};
pub use pattern::{
    HeaderCond, HeaderTest, Match, PathMatch, Template, check_canonical, group_order, regex_source,
};
pub use router::{Miss, Router, Tier};
pub use side::{Reason, Side, SidePolicy, StickyKey};
pub use table::{DEFAULT_ROUTE, Decision, RequestView, Route, RouteTable};
