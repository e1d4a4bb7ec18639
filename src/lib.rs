//! strangler: a gateway for carving a monolith into services, one endpoint at a time.
//!
//! The request path, in order of the modules it crosses:
//!
//! - [`config`] reads and validates the routes file (through [`yaml`], which keeps every
//!   node's line and column so that all errors of a file are reported at once);
//! - [`table`] compiles a validated config into the immutable [`table::RouteTable`]:
//!   the [`router`] (route matching, §3), side policies ([`side`], §4), upstreams and the
//!   metric handles of [`metrics`] (§7);
//! - [`server`] accepts connections and hands each request to [`forward`], which
//!   canonicalizes the path ([`canon`], §5), routes, chooses the side, forwards through the
//!   per-thread connection [`pool`] and streams the answer back, logging it through
//!   [`accesslog`];
//! - [`admin`] serves `/metrics`, health, readiness, the live table, reloads, and the
//!   legacy-vs-new comparison of [`compare`] (§6);
//! - [`reload`] re-reads the routes file and swaps the table whole (SIGHUP, file changes,
//!   `POST /admin/reload`);
//! - [`cli`] implements the commands (§8), and [`demo`] the self-contained demo.

pub mod accesslog;
pub mod admin;
pub mod canon;
pub mod cli;
pub mod compare;
pub mod config;
pub mod demo;
pub mod forward;
pub mod metrics;
pub mod pool;
pub mod reload;
pub mod router;
pub mod server;
pub mod shift;
pub mod side;
pub mod table;
pub mod yaml;
