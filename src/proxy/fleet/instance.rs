//! One instance of a service: its address, its pool of connections, its health and its
//! share of the requests under way.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderValue, header};

use crate::config::bare_host;
use crate::proxy::pool::{Dial, PoolKey};
use crate::proxy::send::Target;

/// One instance of a service: an address, its pool of connections and its health.
pub struct Instance {
    /// `ip:port` (or `host:port` until the host is looked up): the metric label and the
    /// access log's `upstream`.
    pub label: Box<str>,
    pub dial: Dial,
    pub pool_key: PoolKey,
    /// The instance's own authority, as `Host` for `host_header: upstream`.
    pub host_value: HeaderValue,
    pub(super) healthy: AtomicBool,
    /// Health-check streaks (only the checker writes them).
    pub(super) passes: AtomicU32,
    pub(super) fails: AtomicU32,
    /// Requests under way on it (`least_connections`).
    pub(super) in_flight: AtomicUsize,
    /// Outlier detection: failed attempts in a row, ejections in a row (no success
    /// between), and when the last ejection began and ends (ms on the service's clock; 0:
    /// never ejected).
    pub(super) streak: AtomicU32,
    pub(super) ejections: AtomicU32,
    pub(super) out_since: AtomicU64,
    pub(super) out_until: AtomicU64,
}

impl Instance {
    pub(super) fn new(dial: Dial, label: String) -> Arc<Instance> {
        Arc::new(Instance {
            host_value: HeaderValue::from_str(dial.authority.as_str())
                .expect("an authority is a valid header value"),
            pool_key: PoolKey::of(&dial),
            label: label.into(),
            dial,
            healthy: AtomicBool::new(true),
            passes: AtomicU32::new(0),
            fails: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
            streak: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            out_since: AtomicU64::new(0),
            out_until: AtomicU64::new(0),
        })
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether outlier detection has it out at `now_ms` (the service's clock).
    pub(super) fn ejected(&self, now_ms: u64) -> bool {
        now_ms < self.out_until.load(Ordering::Relaxed)
    }

    /// Aims a request at this instance: with `host_header: upstream` (`host_upstream`),
    /// its own authority as `Host` (HTTP/1.1) or `:authority` (HTTP/2).
    pub fn aim(&self, head: &mut http::request::Parts, host_upstream: bool) {
        if !host_upstream {
            return;
        }
        if self.dial.protocol.is_http2() {
            let mut parts = head.uri.clone().into_parts();
            if parts.scheme.is_some() {
                parts.authority = Some(self.dial.authority.clone());
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    head.uri = uri;
                }
            }
        } else {
            head.headers.insert(header::HOST, self.host_value.clone());
        }
    }

    /// Where an attempt on this instance goes.
    pub fn target(&self, timeout: Duration, connect_timeout: Duration) -> Target<'_> {
        Target {
            key: self.pool_key,
            dial: &self.dial,
            timeout,
            connect_timeout,
        }
    }
}

/// A request under way on an instance; dropped when the request ends.
pub struct InFlight(pub(super) Arc<Instance>);

impl InFlight {
    pub fn instance(&self) -> &Arc<Instance> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The TLS settings of an instance: the service's, with the instance's host as the name
/// its certificate must carry.
pub(super) fn tls_for(
    template: &Dial,
    authority: &http::uri::Authority,
) -> Option<(
    Arc<rustls::ClientConfig>,
    rustls_pki_types::ServerName<'static>,
    u64,
)> {
    template.tls.as_ref().map(|(config, name, trust)| {
        let name = rustls_pki_types::ServerName::try_from(bare_host(authority).to_string())
            .unwrap_or_else(|_| name.clone());
        (config.clone(), name, *trust)
    })
}
