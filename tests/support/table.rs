//! The routing decision without a gateway, for table-driven tests of it: a routes file
//! compiled as the gateway compiles it ([`Config::compile`]), and a request read as the
//! gateway reads it (its target's path canonicalized and matched without the segments'
//! `;parameters`, its query, its headers, its peer) handed to [`RouteTable::decide`], the
//! one function that picks every request's route and side.

use std::net::IpAddr;
use std::path::Path;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use strangler::{
    Config, Decision, PathParameters, RequestView, RouteTable, canonicalize, routing_path,
};

/// The peer of the tests' requests unless they say otherwise.
pub const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A compiled routes file.
pub struct Table {
    pub table: RouteTable,
}

impl Table {
    /// Compiles a routes file (which must be valid).
    pub fn new(yaml: &str) -> Table {
        let config = Config::parse(yaml, Path::new("table.yaml"))
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n{yaml}"));
        let table = config.compile().expect("a valid routes file compiles");
        Table { table }
    }

    /// The decision for `method target` with `headers` from `peer`. `target` is a path
    /// with an optional query, as on a request line; its path must be one the gateway
    /// accepts.
    pub fn decide(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        peer: IpAddr,
    ) -> Decision {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let canonical = canonicalize(path).unwrap_or_else(|e| panic!("{target}: {e:?}"));
        let routed = routing_path(&canonical, PathParameters::MatchWithout)
            .unwrap_or_else(|e| panic!("{target}: {e:?}"));
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        self.table.decide(&RequestView {
            path: &routed,
            method: &Method::from_bytes(method.as_bytes()).unwrap(),
            headers: &map,
            query,
            peer,
        })
    }

    /// The route label of a decision: the route's name, or `default` when none took it.
    pub fn label(&self, d: &Decision) -> &str {
        d.route
            .map_or("default", |i| self.table.routes()[i].name.as_ref())
    }
}
