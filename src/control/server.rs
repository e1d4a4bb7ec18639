//! Listeners: the public listener (the request path, on hyper) and the admin listener (the
//! admin API, on axum), and the graceful drain (docs/operations.md, "Drain").
//!
//! Owns sockets and connection tasks, nothing about routing. [`start`] binds both listeners
//! and returns their real addresses (so `:0` works for tests and the demo).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use super::admin::{self, AdminState};
use super::plan::{self, Plans, gateway::GatewayEnv};
use super::reload::Reloader;
use crate::config::Config;
use crate::observe::{AccessLog, Metrics, Registry};
use crate::proxy::carried::Carried;
use crate::proxy::{ClientIo, Gateway, Peer, Table};

/// How long an admin client may take to send a request head.
const ADMIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// hyper's read buffer bound: the largest request head it will parse.
const MAX_BUF: usize = 64 * 1024;
/// How many request headers hyper parses at most.
const MAX_HEADER_COUNT: usize = 512;

/// A gateway that is running.
pub struct Running {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    pub metrics: Arc<Metrics>,
    pub reloader: Arc<Reloader>,
    /// The migration plans of the routes file.
    pub plans: Arc<plan::gateway::GatewayPlans>,
    /// `/readyz`: true once listening, false from the start of a drain.
    ready: Arc<AtomicBool>,
    /// Tells the public listener to stop accepting and its connections to finish.
    draining: watch::Sender<bool>,
    /// Tells the public listener (each of its threads) to close the connections still open
    /// (the drain is over).
    cut: Vec<Arc<Notify>>,
    /// True once every public connection has closed after a drain began.
    drained: watch::Receiver<bool>,
    /// Tells the admin listener to stop (at exit).
    closing: watch::Sender<bool>,
}

impl Running {
    /// Graceful stop: `/readyz` turns 503, the public listener stops accepting, every client
    /// connection finishes its request in flight and closes, for at most `timeout`. Returns
    /// whether every connection closed in time. The admin listener stays up until `close`.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.ready.store(false, Ordering::Release);
        let _ = self.draining.send(true);
        let mut drained = self.drained.clone();
        tokio::time::timeout(timeout, drained.wait_for(|d| *d))
            .await
            .is_ok()
    }

    /// Ends a drain now: closes the public connections still open; each request they carry
    /// is recorded (counted and logged, `"error": "drain"`). Returns once they are closed
    /// (or after a few seconds).
    pub async fn cut(&self) {
        self.ready.store(false, Ordering::Release);
        let _ = self.draining.send(true);
        for cut in &self.cut {
            cut.notify_one();
        }
        let mut drained = self.drained.clone();
        let _ = tokio::time::timeout(Duration::from_secs(3), drained.wait_for(|d| *d)).await;
    }

    /// Starts watching the routes file: reloads when it changes (dropping the `Watch`
    /// stops it).
    pub fn watch(&self) -> notify::Result<super::watch::Watch> {
        super::watch::watch(&self.reloader)
    }

    /// Stops the admin listener too.
    pub fn close(&self) {
        let _ = self.draining.send(true);
        let _ = self.closing.send(true);
    }
}

/// Refuses to start an admin listener beyond loopback without a token; warns when
/// `admin.token_env` names a variable that holds none.
fn check_admin_token(config: &Config) -> anyhow::Result<()> {
    let token = config.admin_token();
    if let Some(var) = config.admin.token_env.as_deref()
        && token.is_none()
    {
        tracing::warn!(
            variable = var,
            "admin.token_env names a variable that holds no token"
        );
    }
    if !config.admin.listen.ip().is_loopback() && token.is_none() {
        anyhow::bail!(
            "the admin listener {} is beyond loopback, but the environment variable {} (admin.token_env) holds no token: refusing to start",
            config.admin.listen,
            config.admin.token_env.as_deref().unwrap_or("(none)")
        );
    }
    Ok(())
}

/// What a program embedding the gateway may give it in place of the system's, and how its
/// public listener runs.
#[derive(Debug, Clone, Default)]
pub struct Dependencies {
    /// How services' host names are looked up (the system's resolver by default).
    pub resolver: crate::proxy::resolve::Resolver,
    /// Threads serving the public listener, each with a single-threaded runtime, as nginx
    /// runs a process per core: the listener's connections are handed to them in turn, and
    /// a connection and everything its requests do stay on its thread. 0 or 1: the public
    /// listener is served on the runtime `start_with` runs in when that runtime has one
    /// thread, and on one thread of its own otherwise (a thread's upstream pool and its
    /// sweep must run on that thread: `proxy::pool`).
    pub public_threads: usize,
}

/// Binds the listeners of `config` and starts serving. Must run inside a tokio runtime.
pub async fn start(config: Config, access_log: Arc<AccessLog>) -> anyhow::Result<Running> {
    start_with(config, access_log, Dependencies::default()).await
}

/// As [`start`], with `deps` in place of the system's.
pub async fn start_with(
    config: Config,
    access_log: Arc<AccessLog>,
    deps: Dependencies,
) -> anyhow::Result<Running> {
    check_admin_token(&config)?;
    let config_file = config.file.clone();
    // A reload compares against the addresses as configured (`:0` stays `:0`).
    let (configured_listen, configured_admin) = (config.listen, config.admin.listen);
    let metrics = Metrics::new();
    let threads = deps.public_threads.max(1);
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
    let carried = Carried::new(
        metrics.clone(),
        windows.clone(),
        deps.resolver,
        &config.inventory,
    );
    let table = Table::compile(config, &carried).map_err(|e| anyhow::anyhow!(e))?;
    table.publish(&metrics);
    metrics.count_reload(true);
    let gateway = Gateway::new(table, access_log, carried);
    let reloader = Reloader::new(
        config_file,
        gateway.clone(),
        metrics.clone(),
        windows.clone(),
        configured_listen,
        configured_admin,
    );
    let ready = Arc::new(AtomicBool::new(false));
    let plans = Plans::new(
        GatewayEnv::new(gateway.clone(), reloader.clone(), windows.clone()),
        metrics.clone(),
    );
    plans.spawn(plan::TICK);
    let admin_router = admin::router(Arc::new(AdminState {
        gateway: gateway.clone(),
        metrics: metrics.clone(),
        reloader: reloader.clone(),
        windows,
        ready: ready.clone(),
        port: admin_addr.port(),
        plans: plans.clone(),
    }));
    let (draining, drain_rx) = watch::channel(false);
    let (closing, close_rx) = watch::channel(false);
    let (drained_tx, drained_rx) = watch::channel(false);
    let cut: Vec<Arc<Notify>> = (0..threads).map(|_| Arc::new(Notify::new())).collect();
    // Seen by every connection's requests, on every thread: set, they were cut by the end
    // of a drain (one flag: a thread that cuts the tunnels, which are the gateway's, cuts
    // those of the others' connections too).
    let cutting = Arc::new(AtomicBool::new(false));

    let on_caller = threads == 1
        && tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::CurrentThread;
    if on_caller {
        tokio::spawn(serve_public(
            Incoming::Socket(public),
            gateway.clone(),
            metrics.clone(),
            drain_rx,
            (cut[0].clone(), cutting),
            drained_tx,
        ));
    } else {
        let mut each_drained = Vec::with_capacity(threads);
        let mut hands = Vec::with_capacity(threads);
        for (i, cut) in cut.iter().enumerate() {
            let (tx, rx) = watch::channel(false);
            each_drained.push(rx);
            let (hand, handed) = tokio::sync::mpsc::unbounded_channel();
            hands.push(hand);
            let (gateway, metrics, drain, cut) = (
                gateway.clone(),
                metrics.clone(),
                drain_rx.clone(),
                (cut.clone(), cutting.clone()),
            );
            std::thread::Builder::new()
                .name(format!("strangler-public-{i}"))
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(serve_public(
                            Incoming::Handed(handed),
                            gateway,
                            metrics,
                            drain,
                            cut,
                            tx,
                        )),
                        Err(e) => {
                            tracing::error!(error = %e, "cannot start a public listener's runtime");
                            let _ = tx.send(true);
                        }
                    }
                })
                .context("cannot start a public listener's thread")?;
        }
        tokio::spawn(hand_round(public, hands, drain_rx));
        // Drained once every thread's connections are.
        tokio::spawn(async move {
            for mut rx in each_drained {
                let _ = rx.wait_for(|d| *d).await;
            }
            let _ = drained_tx.send(true);
        });
    }
    tokio::spawn(async move {
        let mut tasks = JoinSet::new();
        accept_loop(
            Incoming::Socket(admin_listener),
            close_rx,
            GracefulShutdown::new(),
            &mut tasks,
            move |stream, _addr, watcher| {
                let svc = TowerToHyperService::new(admin_router.clone());
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(ADMIN_HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), svc);
                let conn = watcher.watch(conn);
                async move {
                    let _ = conn.await;
                }
            },
        )
        .await;
    });
    ready.store(true, Ordering::Release);
    Ok(Running {
        public_addr,
        admin_addr,
        plans,
        gateway,
        metrics,
        reloader,
        ready,
        draining,
        cut,
        drained: drained_rx,
        closing,
    })
}

/// The public listener: each connection served with hyper (HTTP/1.1 and HTTP/2), until a
/// drain; then the connections finish their request in flight and close, the open tunnels
/// end, and `drained` is told. When
/// `cut` comes first, the connections still open are closed. A connection's limits
/// (`client.*`) and TLS certificate are those of the table in force when it was accepted
/// (a reload that changes them changes new connections only).
async fn serve_public(
    listener: Incoming,
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
    drain: watch::Receiver<bool>,
    (cut, cutting): (Arc<Notify>, Arc<AtomicBool>),
    drained: watch::Sender<bool>,
) {
    let graceful = GracefulShutdown::new();
    let mut tasks = JoinSet::new();
    let flag = cutting.clone();
    let tunnels = gateway.tunnels.clone();
    let draining = drain.clone();
    let accepted = accept_loop(
        listener,
        drain,
        graceful,
        &mut tasks,
        move |stream, addr, watcher| {
            let (limits, tls) = {
                let table = gateway.table.load();
                let tls = table.config.tls.as_ref().map(|t| t.server.clone());
                (table.config.client.clone(), tls)
            };
            let peer = Arc::new(Peer::new(addr, flag.clone(), tls.is_some()));
            let io = ClientIo::new(
                stream,
                peer.clone(),
                limits.send_timeout,
                limits.head_timeout,
            );
            let (gw, metrics) = (gateway.clone(), metrics.clone());
            let watcher = (watcher, draining.clone());
            async move {
                match tls {
                    None => serve_client(io, &limits, watcher, gw, peer).await,
                    // Boxed: a connection in clear holds no room for a TLS handshake.
                    Some(tls) => {
                        Box::pin(serve_tls(io, tls, limits, watcher, gw, peer, metrics)).await
                    }
                }
            }
        },
    );
    let graceful = accepted.await;
    tracing::info!(
        connections = graceful.count(),
        "draining: finishing the requests in flight"
    );
    tokio::select! {
        // Upgraded connections (WebSocket) have left their HTTP connection: they are waited
        // for on their own.
        () = async { graceful.shutdown().await; tunnels.closed().await } => {}
        () = cut.notified() => {
            tracing::warn!(
                connections = tasks.len(),
                tunnels = tunnels.open(),
                "drain over: closing the connections still open"
            );
            cutting.store(true, Ordering::Release);
            // Dropping a connection's task drops the request it carries, which records it;
            // a tunnel records itself when it is closed.
            tunnels.cut();
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            tunnels.closed().await;
        }
    }
    let _ = drained.send(true);
}

/// Serves a TLS client connection: its handshake, bounded like a request head, then its
/// requests.
async fn serve_tls(
    io: ClientIo<TcpStream>,
    tls: Arc<rustls::ServerConfig>,
    limits: crate::config::ClientConfig,
    watcher: (Watcher, watch::Receiver<bool>),
    gateway: Arc<Gateway>,
    peer: Arc<Peer>,
    metrics: Arc<Metrics>,
) {
    let accepted = tokio::time::timeout(
        limits.head_timeout,
        tokio_rustls::TlsAcceptor::from(tls).accept(io),
    )
    .await;
    match accepted {
        Ok(Ok(stream)) => serve_client(stream, &limits, watcher, gateway, peer).await,
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer.addr, error = %e, "TLS handshake failed");
            metrics.tls_handshake_failed();
        }
        Err(_) => {
            tracing::debug!(peer = %peer.addr, "TLS handshake timed out");
            metrics.tls_handshake_failed();
        }
    }
}

/// Serves one client connection (plain or TLS) until it closes or the drain ends it: with
/// the gateway's own HTTP/1.1 server while its requests are ones it serves ([`http1`]),
/// then with hyper (HTTP/1.x, HTTP/2) from the first request that is not. Each part is
/// boxed when it runs: a connection waiting for its next request holds only what the part
/// serving it needs.
async fn serve_client<I>(
    io: I,
    limits: &crate::config::ClientConfig,
    (watcher, drain): (Watcher, watch::Receiver<bool>),
    gateway: Arc<Gateway>,
    peer: Arc<Peer>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // The drain waits for `watcher` while the connection is served here.
    let Some(handoff) = Box::pin(super::http1::serve(io, &gateway, &peer, drain)).await else {
        return;
    };
    let io = Replay::new(handoff.read, handoff.io);
    let http1_only = handoff.served.then_some(handoff.drain);
    Box::pin(serve_hyper(io, limits, http1_only, watcher, gateway, peer)).await;
}

/// Serves a client connection with hyper until it closes or the drain ends it; HTTP/1.x
/// only once it has carried HTTP/1.1 requests (`http1_only`: the listener's drain).
async fn serve_hyper<I>(
    io: I,
    limits: &crate::config::ClientConfig,
    http1_only: Option<watch::Receiver<bool>>,
    watcher: Watcher,
    gateway: Arc<Gateway>,
    peer: Arc<Peer>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (gw, p) = (gateway.clone(), peer.clone());
    // Each request's future is boxed on its own and freed with its response: the
    // connection keeps a pointer, not room for the largest request future, while it waits
    // for its next request (docs/performance.md, "Memory per connection").
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let gw = gw.clone();
        let peer = p.clone();
        Box::pin(async move { gw.handle(req.map(|body| Some(body.into())), &peer).await })
    });
    let ended: Result<(), Box<dyn std::error::Error + Send + Sync>> = match http1_only {
        Some(mut drain) => {
            // Without hyper-util's look for HTTP/2's preface, which waits on no timer; drained
            // as `watcher` would (which the drain waits for until it is dropped).
            let conn = public_http1(limits)
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                _ = wait_true(&mut drain) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            drop(watcher);
            ended.map_err(Into::into)
        }
        None => {
            let builder = public_builder(limits);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
            watcher.watch(conn).await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(peer = %peer.addr, error = %e, "client connection ended with an error");
        if let Some(e) = e.downcast_ref::<hyper::Error>() {
            gateway.record_unread(&peer, e);
        }
    }
}

/// A stream whose first bytes are ones read from it already (by the gateway's own HTTP/1.1
/// server, before it handed the connection to hyper).
struct Replay<I> {
    read: Vec<u8>,
    at: usize,
    io: I,
}

impl<I> Replay<I> {
    fn new(read: Vec<u8>, io: I) -> Replay<I> {
        Replay { read, at: 0, io }
    }
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Replay<I> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.read.len() {
            let n = buf.remaining().min(this.read.len() - this.at);
            buf.put_slice(&this.read[this.at..this.at + n]);
            this.at += n;
            if this.at == this.read.len() {
                this.read = Vec::new();
                this.at = 0;
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Replay<I> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The public listener's HTTP/1.x settings, on hyper's builder or hyper-util's (two types
/// with the same methods).
macro_rules! http1_settings {
    ($builder:expr, $limits:expr) => {
        $builder
            .timer(TokioTimer::new())
            .header_read_timeout($limits.head_timeout)
            .max_buf_size(MAX_BUF)
            // Above the default 100, so that the gateway's own limit on the total size of
            // the headers (431, as JSON) is the one clients meet.
            .max_headers(MAX_HEADER_COUNT)
            // The gateway adds nothing to an upstream's answer, not even `Date`.
            .auto_date_header(false)
    };
}

/// The public listener's HTTP server: HTTP/1.1, and HTTP/2 with prior knowledge (h2c) or
/// by ALPN, on one port; upgrades (WebSocket) enabled. `limits` are the `client` settings in
/// force when the connection was accepted.
fn public_builder(limits: &crate::config::ClientConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    http1_settings!(builder.http1(), limits);
    builder
        .http2()
        .timer(TokioTimer::new())
        // As for HTTP/1.1: above the gateway's own limit (431 as JSON) on the headers' size.
        .max_header_list_size(MAX_BUF as u32)
        .auto_date_header(false);
    builder
}

/// The public listener's HTTP/1.x server for a connection known to be HTTP/1.1: the
/// settings of [`public_builder`]'s.
fn public_http1(limits: &crate::config::ClientConfig) -> http1::Builder {
    let mut builder = http1::Builder::new();
    http1_settings!(builder, limits);
    builder
}

/// Where a listener's connections come from: its own socket, or the thread that accepts
/// the public listener's connections and hands them round ([`hand_round`]).
enum Incoming {
    Socket(TcpListener),
    Handed(tokio::sync::mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>),
}

impl Incoming {
    async fn accept(&mut self) -> std::io::Result<(TcpStream, SocketAddr)> {
        match self {
            Incoming::Socket(listener) => listener.accept().await,
            Incoming::Handed(handed) => match handed.recv().await {
                Some((stream, addr)) => Ok((TcpStream::from_std(stream)?, addr)),
                // Nothing more comes (a drain began): the drain ends the loop.
                None => std::future::pending().await,
            },
        }
    }
}

/// Accepts the public listener's connections until a drain and hands them in turn to the
/// threads that serve them, each on a runtime of its own: a connection and everything its
/// requests do stay on one thread (one hand-off per connection, none per request). One
/// socket rather than one per thread (`SO_REUSEPORT`): a second gateway started on the same
/// address by mistake fails to start instead of silently taking a share of the connections.
async fn hand_round(
    listener: TcpListener,
    hands: Vec<tokio::sync::mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut next = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted.and_then(|(s, a)| Ok((s.into_std()?, a))) {
                Ok(conn) => {
                    let _ = hands[next % hands.len()].send(conn);
                    next += 1;
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = wait_true(&mut stop) => return,
        }
    }
}

/// Resolves once the flag is (or becomes) true, or its sender is gone (the gateway was
/// dropped: everything stops).
async fn wait_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|v| *v).await;
}

/// Accepts connections until `stop`, serving each with the task `serve` makes (which
/// watches its connection with the watcher of `graceful` it is given), spawned into
/// `tasks`; returns `graceful`.
async fn accept_loop<F, Fut>(
    mut listener: Incoming,
    mut stop: watch::Receiver<bool>,
    graceful: GracefulShutdown,
    tasks: &mut JoinSet<()>,
    serve: F,
) -> GracefulShutdown
where
    F: Fn(TcpStream, SocketAddr, Watcher) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    // Finished connections leave the set as new ones come.
                    while tasks.try_join_next().is_some() {}
                    tasks.spawn(serve(stream, addr, graceful.watcher()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = wait_true(&mut stop) => return graceful,
        }
    }
}
