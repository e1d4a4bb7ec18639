//! Looking up the host names of services' URLs: the system's resolver (through tokio), or
//! one a program embedding the gateway passes in its [`Dependencies`](crate::Dependencies)
//! (the tests pass a table they change at will, to play a DNS record that moves). It travels
//! with each upstream's [`Dial`](super::pool::Dial), so two gateways in one process each
//! have their own.

use std::net::SocketAddr;
use std::sync::Arc;

type Lookup = dyn Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + Sync;

/// A resolver: host and port to addresses. The default is the system's.
#[derive(Clone, Default)]
pub struct Resolver(Option<Arc<Lookup>>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "custom" } else { "system" })
    }
}

impl Resolver {
    /// A resolver of the program's own.
    pub fn custom(
        f: impl Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + Sync + 'static,
    ) -> Resolver {
        Resolver(Some(Arc::new(f)))
    }

    /// The custom resolver's answer; `None` for the system's (connect by name).
    pub fn custom_answer(&self, host: &str, port: u16) -> Option<std::io::Result<Vec<SocketAddr>>> {
        self.0.as_ref().map(|r| r(host, port))
    }

    /// The addresses of `host:port`, sorted and without repeats (an IP literal is itself).
    pub async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        let mut found: Vec<SocketAddr> = if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            vec![SocketAddr::new(ip, port)]
        } else if let Some(r) = self.custom_answer(host, port) {
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
}
