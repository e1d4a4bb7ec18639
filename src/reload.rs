//! Reloading the routes file (CONTRACT §6, §8): on SIGHUP, on `POST /admin/reload`, and when
//! the file changes.
//!
//! The new file is read, validated and compiled off the request path, then the table is
//! swapped in whole; requests in flight finish on the table they started with (they hold an
//! `Arc` to it). An invalid file changes nothing: the old table keeps serving, and the errors
//! are logged, counted and returned. Listener addresses cannot change without a restart: a
//! new address is reported, and the listeners stay where they are.
//!
//! The file's directory is watched, not the file, so that editors' rename-over and
//! Kubernetes ConfigMap symlink swaps are seen; events are debounced, and a reload happens
//! only when the file's content hash differs from the config in force.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::compare::Registry;
use crate::config::{Config, ConfigErrors, Diagnostic};
use crate::forward::Gateway;
use crate::metrics::Metrics;
use crate::table::RouteTable;
use crate::yaml::Pos;

/// A reload waits for this long without file events…
const DEBOUNCE: Duration = Duration::from_millis(250);
/// …but no longer than this after the first one.
const DEBOUNCE_MAX: Duration = Duration::from_secs(2);

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

    /// Re-reads the file now. `why` names the trigger in the log.
    pub async fn reload(&self, why: &str) -> Result<Reloaded, ConfigErrors> {
        let _one = self.serial.lock().await;
        let path = self.path.clone();
        let metrics = self.metrics.clone();
        let windows = self.windows.clone();
        let current = self.gateway.table.load().config.hash.clone();
        // Parsing and compiling may take a while for large files: off the runtime's threads.
        let built =
            tokio::task::spawn_blocking(move || -> Result<Option<RouteTable>, ConfigErrors> {
                let config = Config::load(&path)?;
                if config.hash == current {
                    return Ok(None);
                }
                RouteTable::compile(config, &metrics, &windows)
                    .map(Some)
                    .map_err(|e| ConfigErrors {
                        errors: vec![Diagnostic {
                            file: path.display().to_string(),
                            pos: Pos::default(),
                            path: "routes".into(),
                            message: e,
                        }],
                    })
            })
            .await
            .unwrap_or_else(|e| {
                Err(ConfigErrors {
                    errors: vec![Diagnostic {
                        file: self.path.display().to_string(),
                        pos: Pos::default(),
                        path: String::new(),
                        message: format!("the reload failed unexpectedly: {e}"),
                    }],
                })
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
            Ok(Some(table)) => {
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
                let (old, new) = (&self.windows.config, &table.config.compare);
                if old.resolution != new.resolution || old.retention != new.retention {
                    warnings.push(
                        "compare.resolution and compare.retention changes need a restart; the window, min_requests and max_p99_ratio apply now".to_string(),
                    );
                }
                let hash = table.config.hash.clone();
                let names: Vec<&str> = table.routes.iter().map(|r| &*r.name).collect();
                self.metrics.retain_routes(&names);
                self.windows.retain(&names);
                table.publish(&self.metrics);
                self.gateway.table.store(Arc::new(table));
                self.metrics.count_reload(true);
                for w in &warnings {
                    tracing::warn!(trigger = why, warning = %w, "reload");
                }
                tracing::info!(trigger = why, hash = %hash, "reloaded the routes file");
                Ok(Reloaded {
                    hash,
                    changed: true,
                    warnings,
                })
            }
        }
    }

    /// Watches the file's directory and reloads on changes, until the reloader is dropped.
    /// Returns the watcher, which must be kept alive.
    pub fn watch(self: &Arc<Self>) -> notify::Result<notify::RecommendedWatcher> {
        use notify::Watcher as _;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    let _ = tx.send(());
                }
            })?;
        let dir_of = |p: &Path| match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir = dir_of(&self.path);
        watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
        // A symlink to a file elsewhere: watch the target's directory too.
        if let Ok(target) = std::fs::canonicalize(&self.path) {
            let target_dir = dir_of(&target);
            if std::fs::canonicalize(&dir).ok().as_deref() != Some(target_dir.as_path())
                && let Err(e) = watcher.watch(&target_dir, notify::RecursiveMode::NonRecursive)
            {
                tracing::warn!(dir = %target_dir.display(), error = %e, "cannot watch the routes file's target directory");
            }
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // Settle: wait until no event has come for DEBOUNCE (an editor's write may
                // come in several parts), but no longer than DEBOUNCE_MAX (other files of
                // the directory may keep changing).
                let give_up = tokio::time::Instant::now() + DEBOUNCE_MAX;
                loop {
                    let quiet = (tokio::time::Instant::now() + DEBOUNCE).min(give_up);
                    match tokio::time::timeout_at(quiet, rx.recv()).await {
                        Ok(Some(())) if tokio::time::Instant::now() < give_up => continue,
                        Ok(None) => return,
                        _ => break,
                    }
                }
                let Some(me) = me.upgrade() else { return };
                // Errors are logged and counted by `reload`.
                let _ = me.reload("file change").await;
            }
        });
        Ok(watcher)
    }
}
