//! Host names of a service's URLs looked up again every `resolve`: the instances follow the
//! addresses found, keeping the state of those that stay.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use super::*;
use crate::config::bare_host;

impl ServiceState {
    /// Replaces the instances with those at `addrs`, keeping the state of those that stay.
    pub(super) fn set_addresses(&self, addrs: &[(http::uri::Authority, SocketAddr)]) {
        let old = self.instances.load();
        let list: Vec<Arc<Instance>> = addrs
            .iter()
            .map(|(authority, addr)| {
                old.iter()
                    .find(|i| i.dial.addr == Some(*addr) && i.dial.authority == *authority)
                    .cloned()
                    .unwrap_or_else(|| {
                        let mut dial = self.template.clone();
                        dial.authority = authority.clone();
                        dial.addr = Some(*addr);
                        dial.tls = tls_for(&self.template, authority);
                        Instance::new(dial, addr.to_string())
                    })
            })
            .collect();
        let changed =
            list.len() != old.len() || list.iter().zip(old.iter()).any(|(a, b)| !Arc::ptr_eq(a, b));
        if changed {
            tracing::info!(
                service = %self.name,
                instances = ?list.iter().map(|i| &*i.label).collect::<Vec<_>>(),
                "instances changed"
            );
            self.instances.store(Arc::new(list));
        }
    }
}

/// Looks the service's host names up every `resolve`, at once first.
pub(super) async fn resolve_every(state: Weak<ServiceState>) {
    loop {
        let Some(s) = state.upgrade() else { return };
        let every = s.resolve;
        let mut addrs = Vec::new();
        let mut failed = false;
        for a in &s.authorities {
            let port = a.port_u16().unwrap_or(80);
            match s.template.resolver.lookup(bare_host(a), port).await {
                Ok(found) => addrs.extend(found.into_iter().map(|x| (a.clone(), x))),
                Err(e) => {
                    tracing::warn!(service = %s.name, host = %a, error = %e, "cannot look up an instance's host name: keeping the addresses known");
                    failed = true;
                }
            }
        }
        // A failed lookup keeps what was known rather than empty the service.
        if !failed && !addrs.is_empty() {
            s.set_addresses(&addrs);
        }
        drop(s);
        tokio::time::sleep(every).await;
    }
}
