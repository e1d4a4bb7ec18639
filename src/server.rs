//! Listeners: accepting connections on the public and admin addresses and serving HTTP/1.1
//! on them with hyper.
//!
//! Owns sockets and connection tasks, nothing about routing. `start` binds both listeners and
//! returns their real addresses (so `:0` works for tests and the demo).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::accesslog::AccessLog;
use crate::admin::Admin;
use crate::compare::Registry;
use crate::config::Config;
use crate::forward::{Gateway, Peer};
use crate::metrics::Metrics;
use crate::reload::Reloader;
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
    pub reloader: Arc<Reloader>,
    /// Tells the public listener and its connections to stop (drain).
    draining: watch::Sender<bool>,
    /// Tells the admin listener to stop (at exit).
    closing: watch::Sender<bool>,
    connections: Arc<Connections>,
}

/// Counts open client connections, so a drain knows when the last one has finished.
#[derive(Default)]
struct Connections {
    open: AtomicUsize,
    none_left: Notify,
}

/// Held by each connection task; its drop is the connection's end.
struct ConnectionGuard(Arc<Connections>);

impl Connections {
    fn enter(self: &Arc<Self>) -> ConnectionGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard(self.clone())
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_left.notify_waiters();
        }
    }
}

impl Running {
    /// Graceful stop: `/readyz` turns 503, the public listener stops accepting, every client
    /// connection finishes its request in flight and closes, for at most `timeout`. Returns
    /// how many connections were still open when the time ran out (0 for a clean drain).
    /// The admin listener stays up until `close`.
    pub async fn drain(&self, timeout: Duration) -> usize {
        self.admin.ready.store(false, Ordering::Release);
        let _ = self.draining.send(true);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the count is read, so the last connection's notification
            // cannot fall between the two.
            let mut waiting = std::pin::pin!(self.connections.none_left.notified());
            waiting.as_mut().enable();
            let open = self.connections.open.load(Ordering::Acquire);
            if open == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, waiting).await.is_err() {
                return self.connections.open.load(Ordering::Acquire);
            }
        }
    }

    /// Stops the admin listener too.
    pub fn close(&self) {
        let _ = self.draining.send(true);
        let _ = self.closing.send(true);
    }
}

/// Binds the listeners of `config` and starts serving. Must run inside a tokio runtime.
pub async fn start(config: Config, access_log: Arc<AccessLog>) -> anyhow::Result<Running> {
    let token = config.admin.token_env.as_deref().and_then(|var| {
        let t = std::env::var(var).unwrap_or_default().trim().to_string();
        if t.is_empty() {
            tracing::warn!(
                variable = var,
                "admin.token_env names a variable that holds no token"
            );
        }
        (!t.is_empty()).then_some(t)
    });
    if !config.admin.listen.ip().is_loopback() && token.is_none() {
        anyhow::bail!(
            "the admin listener {} is beyond loopback, but the environment variable {} (admin.token_env) holds no token: refusing to start",
            config.admin.listen,
            config.admin.token_env.as_deref().unwrap_or("(none)")
        );
    }
    let config_file = config.file.clone();
    // A reload compares against the addresses as configured (`:0` stays `:0`).
    let (configured_listen, configured_admin) = (config.listen, config.admin.listen);
    let metrics = Metrics::new();
    let public = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (listen)", config.listen))?;
    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin.listen)", config.admin.listen))?;
    let public_addr = public.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    // The comparison's settings are read at start (its slots are sized from them).
    let windows = Registry::new(config.compare.clone());
    let table = RouteTable::compile(config, &metrics, &windows).map_err(|e| anyhow::anyhow!(e))?;
    table.publish(&metrics);
    metrics.count_reload(true);
    let gateway = Gateway::new(table, access_log.clone());
    let reloader = Reloader::new(
        config_file,
        gateway.clone(),
        metrics.clone(),
        windows.clone(),
        configured_listen,
        configured_admin,
    );
    let admin = Arc::new(Admin {
        gateway: gateway.clone(),
        metrics: metrics.clone(),
        reloader: reloader.clone(),
        token,
        windows,
        ready: false.into(),
    });
    let (draining, drain_rx) = watch::channel(false);
    let (closing, close_rx) = watch::channel(false);
    let connections = Arc::new(Connections::default());

    let gw = gateway.clone();
    let conns = connections.clone();
    tokio::spawn(accept_loop(
        public,
        drain_rx.clone(),
        move |stream, addr| {
            let guard = conns.enter();
            let mut drain = drain_rx.clone();
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
                let mut conn = std::pin::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    () = wait_true(&mut drain) => {
                        // Finish the request in flight, then close (no more keep-alive).
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(peer = %addr, error = %e, "client connection ended with an error");
                }
                drop(guard);
            }
        },
    ));

    let adm = admin.clone();
    tokio::spawn(accept_loop(
        admin_listener,
        close_rx,
        move |stream, _addr| {
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
        },
    ));
    admin.ready.store(true, Ordering::Release);
    tracing::info!(public = %public_addr, admin = %admin_addr, "listening");
    Ok(Running {
        public_addr,
        admin_addr,
        gateway,
        admin,
        metrics,
        reloader,
        draining,
        closing,
        connections,
    })
}

/// Resolves once the flag is (or becomes) true, or its sender is gone (the gateway was
/// dropped: everything stops).
async fn wait_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|v| *v).await;
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
            () = wait_true(&mut shutdown) => return,
        }
    }
}
