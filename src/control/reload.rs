//! Reloading the routes file (docs/operations.md, "Reload"): on SIGHUP, on
//! `POST /admin/reload`, and when the file changes (see [`watch`](super::watch)).
//!
//! The new file is read, validated and compiled off the request path, then the table is
//! swapped in whole; requests in flight finish on the table they started with (they hold an
//! `Arc` to it). An invalid file changes nothing: the old table keeps serving, and the errors
//! are logged, counted and returned. Listener addresses cannot change without a restart: a
//! new address is reported, and the listeners stay where they are.
//! A reload that finds the file's content hash equal to the config in force changes
//! nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::config::{Config, ConfigErrors, FilesChanged};
use crate::observe::{Metrics, Registry};
use crate::proxy::{Gateway, Table};

/// What a successful reload did.
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// The hash of the config now in force.
    pub hash: String,
    /// False when the file had not changed (nothing was swapped).
    pub changed: bool,
    /// Warnings of the new file, and changes that need a restart.
    pub warnings: Vec<String>,
}

/// Reloads one gateway's routes file.
pub struct Reloader {
    path: PathBuf,
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
    windows: Arc<Registry>,
    /// The listener addresses as configured at start, which a reload cannot move.
    listen: SocketAddr,
    admin_listen: SocketAddr,
    /// One reload at a time, so two triggers cannot swap tables out of order.
    serial: tokio::sync::Mutex<()>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        gateway: Arc<Gateway>,
        metrics: Arc<Metrics>,
        windows: Arc<Registry>,
        listen: SocketAddr,
        admin_listen: SocketAddr,
    ) -> Arc<Reloader> {
        Arc::new(Reloader {
            path,
            gateway,
            metrics,
            windows,
            listen,
            admin_listen,
            serial: tokio::sync::Mutex::new(()),
        })
    }

    /// The routes file this reloader reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What changed among the files the config in force was read with (certificates,
    /// keys, CAs, plan files, the plans folder's list); `None` when nothing did.
    pub fn files_changed(&self) -> Option<FilesChanged> {
        self.gateway.table.load().config.files_changed()
    }

    /// Re-reads the file now. `why` names the trigger in the log.
    pub async fn reload(&self, why: &str) -> Result<Reloaded, ConfigErrors> {
        let _one = self.serial.lock().await;
        let path = self.path.clone();
        let carried = self.gateway.carried.clone();
        let current = self.gateway.table.load().config.clone();
        let admin_listen = self.admin_listen;
        // Every step but the swap takes time in proportion to the routes (reading,
        // validating, compiling, the metric series and compare windows of removed routes,
        // the new percent gauges): all of it off the runtime's threads, each step linear.
        let built = in_background(move || -> Result<Option<(Table, String)>, ConfigErrors> {
            // What changed, for the log: the routes file, or which of the files it names.
            let changed = current
                .files_changed()
                .map_or_else(|| "the routes file".to_string(), |f| f.what);
            // An unchanged file (naming files that did not change either) is not validated
            // again (a 10,000-route file takes most of a second).
            let Some(config) = Config::load_if_changed(&path, &current)? else {
                return Ok(None);
            };
            // An admin listener beyond loopback was only started with a token: a new file must
            // not take it away.
            if !admin_listen.ip().is_loopback() && config.admin_token().is_none() {
                return Err(ConfigErrors::whole_file(
                    &path,
                    format!(
                        "the admin listener {admin_listen} is beyond loopback and needs a token, but admin.token_env ({}) holds none: the previous config keeps serving",
                        config.admin.token_env.as_deref().unwrap_or("not set")
                    ),
                ));
            }
            let table = Table::compile(config, &carried)
                .map_err(|e| ConfigErrors::whole_file(&path, e))?;
            carried.keep_only(&table.config);
            table.publish(&carried.metrics);
            Ok(Some((table, changed)))
        })
        .await
        .unwrap_or_else(|e| {
            Err(ConfigErrors::whole_file(
                &self.path,
                format!("the reload failed unexpectedly: {e}"),
            ))
        });
        match built {
            Err(errors) => {
                self.metrics.count_reload(false);
                for e in &errors.errors {
                    tracing::error!(trigger = why, error = %e, "reload rejected: the old config keeps serving");
                }
                Err(errors)
            }
            Ok(None) => Ok(Reloaded {
                hash: self.gateway.table.load().config.hash.clone(),
                changed: false,
                warnings: Vec::new(),
            }),
            Ok(Some((table, changed))) => {
                let mut warnings: Vec<String> = table
                    .config
                    .warnings
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                if table.config.listen != self.listen {
                    warnings.push(format!(
                        "listen changed to {}: needs a restart; still listening on {}",
                        table.config.listen, self.listen
                    ));
                }
                if table.config.admin.listen != self.admin_listen {
                    warnings.push(format!(
                        "admin.listen changed to {}: needs a restart; still listening on {}",
                        table.config.admin.listen, self.admin_listen
                    ));
                }
                let previous = self.gateway.table.load_full();
                match (previous.config.tls.is_some(), table.config.tls.is_some()) {
                    (true, false) => warnings.push(
                        "tls was removed: new connections to the public listener are plain HTTP from now on".to_string(),
                    ),
                    (false, true) => warnings.push(
                        "tls was added: new connections to the public listener must speak TLS from now on".to_string(),
                    ),
                    _ => {}
                }
                match (previous.config.admin_token(), table.config.admin_token()) {
                    (None, Some(_)) => warnings.push(
                        "admin.token_env now holds a token: state-changing admin calls need it from now on".to_string(),
                    ),
                    (Some(_), None) => warnings.push(format!(
                        "{}: state-changing admin calls no longer need a token",
                        match &table.config.admin.token_env {
                            Some(var) => format!("admin.token_env names {var}, which holds no token"),
                            None => "admin.token_env was removed".to_string(),
                        }
                    )),
                    _ => {}
                }
                if previous.config.drain_timeout != table.config.drain_timeout {
                    warnings.push(format!(
                        "drain_timeout is now {} (it applies to the next stop)",
                        humantime::format_duration(table.config.drain_timeout)
                    ));
                }
                let (old, new) = (&self.windows.config, &table.config.compare);
                if old.resolution != new.resolution || old.retention != new.retention {
                    warnings.push(
                        "compare.resolution and compare.retention changes need a restart; the window, min_requests and max_p99_ratio apply now".to_string(),
                    );
                }
                let (slot, retention) = (self.windows.resolution(), self.windows.retention());
                if new.window > retention || new.window < slot {
                    warnings.push(format!(
                        "compare.window {} does not fit the slots in force until a restart ({} slots, {} kept): the default window is {} until then",
                        humantime::format_duration(new.window),
                        humantime::format_duration(slot),
                        humantime::format_duration(retention),
                        humantime::format_duration(new.window.clamp(slot, retention)),
                    ));
                }
                let hash = table.config.hash.clone();
                let old = self.gateway.table.swap(Arc::new(table));
                // Freeing a large table takes time too: never on a runtime thread, whichever
                // request held it last.
                drop(previous);
                retire(old);
                self.metrics.count_reload(true);
                for w in &warnings {
                    tracing::warn!(trigger = why, warning = %w, "reload");
                }
                tracing::info!(trigger = why, changed = %changed, hash = %hash, "reloaded the routes file");
                Ok(Reloaded {
                    hash,
                    changed: true,
                    warnings,
                })
            }
        }
    }
}

impl Reloader {
    /// Compiles the config in force again, as its file says it, with the percentages the
    /// gateway holds now (a rollback held in memory), and swaps it in: the routes file is
    /// not read. `why` names the change in the log.
    pub async fn rebuild(&self, why: &str) -> Result<(), String> {
        let _one = self.serial.lock().await;
        let config = self.gateway.table.load().file_config();
        let carried = self.gateway.carried.clone();
        let table = in_background(move || {
            let table = Table::compile(config, &carried)?;
            table.publish(&carried.metrics);
            Ok::<_, String>(table)
        })
        .await??;
        let old = self.gateway.table.swap(Arc::new(table));
        retire(old);
        tracing::info!(trigger = why, "the table in force was compiled again");
        Ok(())
    }
}

/// Runs `work` on a thread of its own at a lower CPU priority (nice +10, where the system
/// allows it), so that on a busy machine requests win the CPU over a reload's compile.
/// Resolves to its result, or to an error if it panicked.
fn in_background<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> impl std::future::Future<Output = Result<T, String>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("strangler-reload".into())
        .spawn(move || {
            // On Linux, this thread's own niceness; failure only leaves it at the default.
            #[cfg(target_os = "linux")]
            let _ = rustix::process::setpriority_process(None, 10);
            let _ = tx.send(work());
        });
    async move {
        spawned.map_err(|e| format!("cannot start a thread: {e}"))?;
        rx.await.map_err(|_| "the work panicked".to_string())
    }
}

/// Hands an old table to the thread that frees old tables off the request path: it holds
/// each until no request does (requests in flight keep the table they started with), then
/// drops it there.
fn retire(old: Arc<Table>) {
    static RETIRED: OnceLock<std::sync::mpsc::Sender<Arc<Table>>> = OnceLock::new();
    let sender = RETIRED.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Arc<Table>>();
        let started = std::thread::Builder::new()
            .name("strangler-retire".into())
            .spawn(move || {
                #[cfg(target_os = "linux")]
                let _ = rustix::process::setpriority_process(None, 10);
                let mut held: Vec<Arc<Table>> = Vec::new();
                loop {
                    match rx.recv_timeout(RETIRE_EVERY) {
                        Ok(t) => held.push(t),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    // The table is no longer published, so a count of one is final.
                    held.retain(|t| Arc::strong_count(t) > 1);
                }
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "cannot start the thread that frees old tables: they are freed where they are last used");
        }
        tx
    });
    // Without the thread, the table is dropped here (or by the last request holding it).
    let _ = sender.send(old);
}

/// How often the retiring thread looks at the tables it holds.
const RETIRE_EVERY: Duration = Duration::from_millis(50);
