//! Listeners: accepting connections on the public and admin addresses and serving HTTP/1.1
//! on them with hyper.
//!
//! Owns sockets and connection tasks, nothing about routing. `start` binds both listeners and
//! returns their real addresses (so `:0` works for tests and the demo).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::accesslog::AccessLog;
use crate::admin::Admin;
use crate::config::Config;
use crate::forward::{Gateway, Peer};
use crate::metrics::Metrics;
use crate::table::RouteTable;

/// How long a client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// hyper's read buffer bound: the largest request head it will parse.
const MAX_BUF: usize = 64 * 1024;
/// How many request headers hyper parses at most.
const MAX_HEADER_COUNT: usize = 512;

/// A gateway that is running.
pub struct Running {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    pub admin: Arc<Admin>,
    pub metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
}

impl Running {
    /// Stops accepting new connections on both listeners.
    pub fn stop_accepting(&self) {
        let _ = self.shutdown.send(true);
    }
}

/// Binds the listeners of `config` and starts serving. Must run inside a tokio runtime.
pub async fn start(config: Config, access_log: Arc<AccessLog>) -> anyhow::Result<Running> {
    if !config.admin.listen.ip().is_loopback() {
        // Validation guarantees a token_env here; the variable itself must hold a token.
        let var = config.admin.token_env.as_deref().unwrap_or_default();
        if std::env::var(var).map_or(true, |t| t.trim().is_empty()) {
            anyhow::bail!(
                "the admin listener {} is beyond loopback, but the environment variable {var} (admin.token_env) holds no token: refusing to start",
                config.admin.listen
            );
        }
    }
    let metrics = Metrics::new();
    let public = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (listen)", config.listen))?;
    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin.listen)", config.admin.listen))?;
    let public_addr = public.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let table = RouteTable::compile(config, &metrics).map_err(|e| anyhow::anyhow!(e))?;
    table.publish(&metrics);
    metrics.count_reload(true);
    let gateway = Gateway::new(table, access_log.clone());
    let admin = Arc::new(Admin {
        gateway: gateway.clone(),
        metrics: metrics.clone(),
        ready: false.into(),
    });
    let (shutdown, rx) = watch::channel(false);

    let gw = gateway.clone();
    tokio::spawn(accept_loop(public, rx.clone(), move |stream, addr| {
        let gw = gw.clone();
        let peer = Arc::new(Peer::new(addr));
        let svc = service_fn(move |req| {
            let gw = gw.clone();
            let peer = peer.clone();
            async move { gw.handle(req, &peer).await }
        });
        async move {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_BUF)
                // Above the default 100, so that the gateway's own limit on the total size
                // of the headers (431, as JSON) is the one clients meet.
                .max_headers(MAX_HEADER_COUNT)
                // The gateway adds nothing to an upstream's answer (§5), not even `Date`.
                .auto_date_header(false)
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(peer = %addr, error = %e, "client connection ended with an error");
            }
        }
    }));

    let adm = admin.clone();
    tokio::spawn(accept_loop(admin_listener, rx, move |stream, _addr| {
        let adm = adm.clone();
        let svc = service_fn(move |req| {
            let adm = adm.clone();
            async move { adm.handle(req).await }
        });
        async move {
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        }
    }));
    admin.ready.store(true, Ordering::Release);
    tracing::info!(public = %public_addr, admin = %admin_addr, "listening");
    Ok(Running {
        public_addr,
        admin_addr,
        gateway,
        admin,
        metrics,
        shutdown,
    })
}

async fn accept_loop<F, Fut>(listener: TcpListener, mut shutdown: watch::Receiver<bool>, serve: F)
where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve(stream, addr));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}
