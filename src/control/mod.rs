//! The control plane (docs/operations.md, docs/admin-api.md): everything that starts,
//! changes or stops a gateway, never on the request path.
//!
//! - [`server`]: the listeners and the graceful drain;
//! - [`admin`]: the admin API, on axum;
//! - [`reload`] and [`watch`]: re-reading the routes file and swapping the table whole;
//! - [`shift`]: changing one route's percent in the file itself;
//! - [`plan`]: migration plans, stepping a route's percent while a guard holds;
//! - [`serve`]: the life of `strangler serve` (signals, reloads, drain);
//! - [`client`]: the command line's client of a running gateway's admin API.

pub mod admin;
pub mod client;
pub mod http1;
pub mod plan;
pub mod reload;
pub mod serve;
pub mod server;
pub mod shift;
pub mod watch;

pub use server::{Dependencies, Running, start, start_with};
