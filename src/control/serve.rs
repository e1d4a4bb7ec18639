//! The life of `strangler serve` (docs/operations.md): start, reload on SIGHUP and on file
//! changes, drain on SIGTERM or Ctrl-C, exit; and of `strangler plan run`.

use std::sync::Arc;

use super::plan::runner::RunOptions;
use crate::config::Config;
use crate::observe::{AccessLog, LogFormat};

/// How `serve` runs.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    pub log_format: LogFormat,
    pub access_log: bool,
    /// Watch the routes file (off for file systems without change notifications).
    pub watch: bool,
    /// Threads serving the public listener, each with a runtime of its own (1: the
    /// public listener is served on the calling runtime).
    pub public_threads: usize,
}

/// Runs the gateway on `config` until SIGTERM or Ctrl-C, then drains and returns.
pub async fn serve(config: Config, opts: ServeOptions) -> anyhow::Result<()> {
    // Signal handlers first: a SIGTERM or SIGHUP that arrives once the gateway says it is
    // listening must never meet the default action (exit at once).
    let mut stop = StopSignals::install()?;
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let log = AccessLog::new(opts.log_format, opts.access_log);
    let deps = super::server::Dependencies {
        public_threads: opts.public_threads,
        ..Default::default()
    };
    let running = super::server::start_with(config, log.clone(), deps).await?;
    let watch = match opts.watch.then(|| running.watch()) {
        None => None,
        Some(Ok(w)) => {
            // A change between the first read and the watch's start would go unseen: one
            // more read now (nothing is swapped if the file is as it was).
            let _ = running.reloader.reload("start").await;
            Some(Arc::new(w))
        }
        Some(Err(e)) => {
            tracing::warn!(error = %e, "cannot watch the routes file; reload with SIGHUP or POST /admin/reload");
            None
        }
    };
    #[cfg(unix)]
    {
        let (reloader, watch) = (running.reloader.clone(), watch.clone());
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match &watch {
                    // Resolves the symlink chain again, then reloads.
                    Some(w) => w.rearm(),
                    None => {
                        let _ = reloader.reload("SIGHUP").await;
                    }
                }
            }
        });
    }
    // Said once the gateway is listening and watching, so that whoever waits for this line
    // (a supervisor, a test) knows that a change of the file from now on is seen.
    tracing::info!(public = %running.public_addr, admin = %running.admin_addr, "listening");
    stop.wait().await;
    // The drain timeout of the config in force (a reload may have changed it).
    let drain_timeout = running.gateway.table.load().config.drain_timeout;
    tracing::info!(timeout = ?drain_timeout, "stopping: draining in-flight requests");
    // A second SIGTERM (or Ctrl-C) ends the drain at once, as operators expect.
    let drained = tokio::select! {
        clean = running.drain(drain_timeout) => clean,
        () = stop.wait() => {
            tracing::warn!("a second stop signal: ending the drain now");
            false
        }
    };
    if drained {
        tracing::info!("drained");
    } else {
        // Each request cut is recorded: counted, and logged with "error": "drain".
        running.cut().await;
        let cut = running.metrics.cut_total();
        tracing::warn!(
            requests_cut = cut,
            "drain over: requests still in flight were cut"
        );
    }
    running.close();
    log.flush();
    Ok(())
}

/// Ctrl-C and SIGTERM, listened for from the moment of `install`.
pub struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub fn install() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?,
        })
    }

    /// Resolves on the next Ctrl-C or SIGTERM.
    pub async fn wait(&mut self) {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        tokio::select! {
            _ = ctrl_c => {}
            _ = self.term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
    }
}

/// Resolves on Ctrl-C or SIGTERM (listening from this call on).
pub async fn wait_for_stop() {
    match StopSignals::install() {
        Ok(mut s) => s.wait().await,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `strangler plan run`: one plan, ticked every `--interval` until SIGTERM or Ctrl-C, with
/// its status, operations and gauges on `--admin` when given.
pub async fn plan_run(opts: RunOptions) -> anyhow::Result<()> {
    let (plans, metrics) = super::plan::runner::prepare(&opts).await?;
    let mut stop = StopSignals::install()?;
    if let Some(addr) = opts.admin {
        // As a gateway's: beyond loopback, only with a token for the operations.
        let token = std::env::var(super::admin::RUNNER_TOKEN_ENV).unwrap_or_default();
        if !addr.ip().is_loopback() && token.trim().is_empty() {
            anyhow::bail!(
                "--admin {addr} is beyond loopback, but {} holds no token: refusing to start (the plan's operations would be open to anyone who reaches it)",
                super::admin::RUNNER_TOKEN_ENV
            );
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (--admin): {e}"))?;
        let local = listener.local_addr()?;
        let app = super::admin::runner_router(plans.clone(), metrics, local.port());
        tokio::spawn(async move {
            let _ = axum::serve(listener, tower::make::Shared::new(app)).await;
        });
        tracing::info!(admin = %local, plan = %opts.name, "plan run: listening");
    } else {
        tracing::info!(plan = %opts.name, "plan run: started");
    }
    let mut ticks = tokio::time::interval(opts.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => plans.tick(super::plan::unix_now()).await,
            () = stop.wait() => break,
        }
        if let Some(why) = plans.lost(&opts.name).await {
            anyhow::bail!(
                "plan {:?} was {why} after this runner's lease lapsed: it is driven there now; this runner stops",
                opts.name
            );
        }
    }
    // Stopping on purpose: the lease is given up, so that a person can operate the plan
    // on any gateway at once.
    plans.release().await;
    tracing::info!(plan = %opts.name, "plan run: stopping; the progress is saved and the lease given up");
    Ok(())
}
