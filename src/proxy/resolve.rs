//! Looking up the host names of services' URLs: the system's resolver (through tokio), or
//! one a program embedding the gateway installs with [`set_resolver`] (the tests use a
//! table they change at will, to play a DNS record that moves).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

/// A resolver: host and port to addresses.
pub type Resolver = dyn Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + Sync;

static INJECTED: OnceLock<Arc<Resolver>> = OnceLock::new();

/// Replaces the system's resolver for the whole process (once; later calls are ignored).
pub fn set_resolver(
    f: impl Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + Sync + 'static,
) {
    let _ = INJECTED.set(Arc::new(f));
}

/// The injected resolver's answer, if one is installed.
pub fn injected(host: &str, port: u16) -> Option<std::io::Result<Vec<SocketAddr>>> {
    INJECTED.get().map(|r| r(host, port))
}

/// The addresses of `host:port`, sorted and without repeats (an IP literal is itself).
pub async fn lookup(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    let mut found: Vec<SocketAddr> = if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        vec![SocketAddr::new(ip, port)]
    } else if let Some(r) = injected(host, port) {
        r?
    } else {
        tokio::net::lookup_host((host, port)).await?.collect()
    };
    found.sort();
    found.dedup();
    if found.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{host} has no address"),
        ));
    }
    Ok(found)
}
