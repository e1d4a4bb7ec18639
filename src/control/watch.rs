//! The watch of the routes file (docs/operations.md, "Reload"): reloads when the file is
//! written, created, renamed or removed, and ignores everything else, the gateway's own
//! reads of it above all.
//!
//! The directories are watched rather than the file, so that editors' rename-over and
//! Kubernetes ConfigMap symlink swaps are seen. What matters is the file as named, every
//! symlink on the way to the real file (a link, or a symlinked directory such as a
//! ConfigMap's `..data`), and the real file; an event about any other name is ignored.
//! Events are debounced by `notify-debouncer-full` (a reload follows 200 ms after the last
//! event), and a reload whose content hash equals the config in force changes nothing, so
//! when events may have been lost (the kernel's queue overflowed, the watch failed) the file
//! is simply read once more.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};

use super::reload::Reloader;

/// Quiet time after the last event before a reload: an editor's write may come in parts.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// A running watch; dropping it stops it.
pub struct Watch {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
}

/// Starts watching `reloader`'s file. Must run inside a tokio runtime.
pub fn watch(reloader: &Arc<Reloader>) -> notify::Result<Watch> {
    let names = chain(reloader.path());
    let dirs: HashSet<PathBuf> = names.iter().map(|(d, _)| d.clone()).collect();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| {
        let relevant = match result {
            // The kernel's queue overflowed: events were lost, so any might have been ours.
            Ok(events) => events.iter().any(|e| {
                e.need_rescan()
                    || (is_change(&e.kind)
                        && e.paths.iter().any(|p| match (p.parent(), p.file_name()) {
                            (Some(d), Some(n)) => {
                                names.contains(&(d.to_path_buf(), n.to_os_string()))
                            }
                            _ => false,
                        }))
            }),
            Err(errors) => {
                for e in &errors {
                    tracing::warn!(error = %e, "watching the routes file");
                }
                // Whatever was missed, one more read settles it.
                true
            }
        };
        if relevant {
            let _ = tx.send(());
        }
    })?;
    for dir in &dirs {
        debouncer.watch(dir, notify::RecursiveMode::NonRecursive)?;
    }
    let me = Arc::downgrade(reloader);
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Several batches may have queued during a reload: one more reload reads them all.
            while rx.try_recv().is_ok() {}
            let Some(me) = me.upgrade() else { return };
            // Errors are logged and counted by `reload`.
            let _ = me.reload("file change").await;
        }
    });
    Ok(Watch {
        _debouncer: debouncer,
    })
}

/// Whether an event can mean new content: a write, a create, a rename, a removal. Opens,
/// reads and metadata changes (the gateway's own reads among them) cannot.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    }
}

/// The names whose change may change the routes file, as (real directory, file name): the
/// file as named, each symlink on the way to the real file, and the real file.
fn chain(path: &Path) -> HashSet<(PathBuf, OsString)> {
    let mut out = HashSet::new();
    let mut add = |p: &Path| {
        if let (Some(dir), Some(name)) = (p.parent(), p.file_name()) {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(real_dir) = std::fs::canonicalize(dir) {
                out.insert((real_dir, name.to_os_string()));
            }
        }
    };
    let mut cur = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    // A symlink chain is at most 40 links long on Linux.
    for _ in 0..40 {
        add(&cur);
        // Symlinked directories on the way (a ConfigMap's `..data`).
        for a in cur.ancestors().skip(1) {
            if a.symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink())
            {
                add(a);
            }
        }
        match std::fs::read_link(&cur) {
            Ok(target) => cur = cur.parent().map_or(target.clone(), |d| d.join(&target)),
            Err(_) => break,
        }
    }
    if let Ok(real) = std::fs::canonicalize(path) {
        add(&real);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_of_a_configmap_mount() {
        // routes.yaml -> ..data/routes.yaml, ..data -> ..v1 (as Kubernetes mounts a ConfigMap).
        let dir = tempfile::tempdir().unwrap();
        let d = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(d.join("..v1")).unwrap();
        std::fs::write(d.join("..v1/routes.yaml"), "x").unwrap();
        std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/routes.yaml", d.join("routes.yaml")).unwrap();
        let names = chain(&d.join("routes.yaml"));
        for (dir, name) in [
            (d.clone(), "routes.yaml"),
            (d.clone(), "..data"),
            (d.join("..v1"), "routes.yaml"),
        ] {
            assert!(
                names.contains(&(dir.clone(), name.into())),
                "{dir:?} {name}: {names:?}"
            );
        }
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn reads_are_not_changes() {
        assert!(!is_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(is_change(&EventKind::Modify(ModifyKind::Data(
            notify::event::DataChange::Any
        ))));
    }
}
