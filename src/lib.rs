//! strangler: a gateway for carving a monolith into services, one endpoint at a time.
//!
//! The layers, lowest first; a layer imports only the ones below it (`tests/layers.rs`
//! checks this):
//!
//! - [`routing`]: which route takes a request and which side serves it; pure (no I/O, no
//!   YAML). [`RouteTable::decide`] is the one function that picks a route and a side;
//! - [`config`]: the routes file, read, validated and compiled into a `RouteTable`;
//! - [`observe`]: metrics, the access log, and the legacy-vs-new comparison;
//! - [`proxy`]: the request path, as its phases: admit, decide, rewrite, send, respond,
//!   record;
//! - [`control`]: listeners, the admin API (axum), reload, shift, drain;
//! - [`cli`]: the command line and the demo.
//!
//! ARCHITECTURE.md ("Layout") says why the layers are in this order.

mod cli;
mod config;
mod control;
mod observe;
mod proxy;
mod routing;

pub use cli::main;
#[doc(hidden)]
pub use cli::parse;
pub use config::{Config, ConfigErrors, Diagnostic, RouteConfig};
pub use control::watch::Watch;
pub use control::{Dependencies, Running, start, start_with};
/// The sequential tests and their seeded simulations, for tests/sequential.rs and
/// benches/sequential.rs: only with the `simulate` feature, which they turn on.
#[cfg(feature = "simulate")]
pub use observe::sequential;
pub use observe::{AccessLog, LogFormat, inventory};
pub use proxy::resolve::Resolver;
pub use routing::{
    CanonError, Decision, PathParameters, Reason, RequestView, RouteTable, Router, Side,
    canonicalize, routing_path,
};

/// The per-thread upstream connection pool and the request body it sends, for
/// `examples/floor.rs`, which measures hyper's server and the upstream pool with none of
/// the gateway's features.
pub mod floor {
    pub use crate::config::Protocol;
    pub use crate::proxy::RequestBody;
    pub use crate::proxy::h1client::{UpstreamBody, needs_hyper};
    pub use crate::proxy::pool::{Conn, Dial, Limit, PoolKey, checkin, checkout};
}

/// The public listener's own HTTP/1.1 server, for tests that serve one connection with it
/// and see whether it hands the connection to hyper.
#[doc(hidden)]
pub mod http1 {
    pub use crate::control::http1::serve;
    pub use crate::proxy::Peer;
}
