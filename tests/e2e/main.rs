//! The end-to-end tests, in one binary: real gateways (in this process or as `strangler`
//! processes) in front of real upstreams on `127.0.0.1:0`, the command line as a user runs
//! it, and the repository's documents and deployment files against the binary.
//!
//! One binary rather than one per file: each would link hyper, axum, reqwest, tonic and
//! rustls again. Tests that need a process of their own stay apart: `tests/fuzz.rs` (`scripts/fuzz` runs it alone, in
//! release mode), `tests/sequential.rs` (seeded simulations that keep both cores busy for a
//! minute, which would starve the timing-sensitive tests here) and `tests/layers.rs` (a
//! scan of the source, with no dependency to link).
//!
//! Nothing here may change what the whole process shares: no environment variable set, no
//! resolver installed, no fixed port. Run one file's tests with
//! `cargo test --test e2e -- FILE::` (e.g. `cargo test --test e2e -- dashboard::`).

#[path = "../support/mod.rs"]
mod support;

mod accesslog;
mod admin;
mod cli;
mod compare;
mod corpus;
mod dashboard;
mod decide;
mod deploy;
mod docs;
mod drain;
mod edge;
mod edge_three;
mod errors;
mod forwarding;
mod grpc;
mod hardening;
mod http1_client;
mod http1_server;
mod http2;
mod inventory;
mod inventory_gateway;
mod one_truth;
mod plan_safety;
mod plans;
mod pool;
mod precedence;
mod prometheus;
mod refused;
mod reload;
mod reload_memory;
mod resilience;
mod resilience_dns;
mod serve_threads;
mod shadow;
mod shift;
mod split;
mod stalled_stdout;
mod timeouts;
mod tls;
mod watch;
mod websocket;
