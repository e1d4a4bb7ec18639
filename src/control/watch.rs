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
//!
//! On every event and every SIGHUP the symlink chain is resolved again and what it now
//! points to is watched (a release symlink switched to another directory, a directory
//! renamed and made again). A directory that cannot be watched is logged, and the file's
//! identity (real path, inode, size, modification time) is polled every [`POLL_EVERY`]
//! until the watch can be armed again.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};

use super::reload::Reloader;
use crate::config::FilesChanged;

/// Quiet time after the last event before a reload: an editor's write may come in parts.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// How often the file's identity is looked at when a directory on its way cannot be
/// watched (it does not exist yet, or the system refuses the watch).
pub const POLL_EVERY: Duration = Duration::from_secs(2);

/// What the watch reacts to: the names that matter, as (real directory, file name), and the
/// directories watched for them, each with the (device, inode) it had when it was watched:
/// a directory made again at the same path is another directory, to be watched anew.
#[derive(Default)]
struct Armed {
    names: HashSet<(PathBuf, OsString)>,
    dirs: HashMap<PathBuf, (u64, u64)>,
}

impl Armed {
    /// Whether an event path is about the routes file, its symlink chain, or a directory of
    /// the chain itself (removed or renamed: the watch must be re-armed).
    fn concerns(&self, p: &Path) -> bool {
        if self.names.iter().any(|(d, _)| d == p) {
            return true;
        }
        match (p.parent(), p.file_name()) {
            (Some(d), Some(n)) => self.names.contains(&(d.to_path_buf(), n.to_os_string())),
            _ => false,
        }
    }
}

type Watcher = Debouncer<notify::RecommendedWatcher, RecommendedCache>;

/// Why the watch task wakes: a relevant event (or events may have been lost), or SIGHUP.
/// Either way, the chain is resolved again and the file reloaded.
enum Wake {
    Event,
    Rearm,
}

/// A running watch; dropping it stops it.
pub struct Watch {
    wake: tokio::sync::mpsc::UnboundedSender<Wake>,
    task: tokio::task::AbortHandle,
    _debouncer: Arc<Mutex<Watcher>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        // The task holds the debouncer too; once it is gone, so is the debouncer's thread.
        self.task.abort();
    }
}

impl Watch {
    /// Resolves the symlink chain again and watches what it now points to (SIGHUP does
    /// this); a reload follows.
    pub fn rearm(&self) {
        let _ = self.wake.send(Wake::Rearm);
    }
}

/// Starts watching `reloader`'s file. Must run inside a tokio runtime.
pub fn watch(reloader: &Arc<Reloader>) -> notify::Result<Watch> {
    let armed = Arc::new(Mutex::new(Armed::default()));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Wake>();
    let seen = armed.clone();
    let events = tx.clone();
    let debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| {
        let relevant = match result {
            // The kernel's queue overflowed: events were lost, so any might have been ours.
            Ok(batch) => {
                let mut armed = seen.lock().unwrap_or_else(|p| p.into_inner());
                // A watched directory removed or renamed took its watch with it: forgotten
                // here, it is watched anew by the next arming, whatever its inode then
                // (a directory made again at once may get the same one).
                for e in batch.iter() {
                    if matches!(
                        e.kind,
                        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
                    ) {
                        for p in &e.paths {
                            armed.dirs.remove(p);
                        }
                    }
                }
                batch.iter().any(|e| {
                    e.need_rescan()
                        || (is_change(&e.kind) && e.paths.iter().any(|p| armed.concerns(p)))
                })
            }
            Err(errors) => {
                for e in &errors {
                    tracing::warn!(error = %e, "watching the routes file");
                }
                // Whatever was missed, one more read settles it.
                true
            }
        };
        if relevant {
            let _ = events.send(Wake::Event);
        }
    })?;
    let debouncer = Arc::new(Mutex::new(debouncer));
    let path = reloader.path().to_path_buf();
    // Armed once now, so that a watch that cannot start is an error at start.
    let mut polling = arm(&path, &armed, &debouncer);
    let me = Arc::downgrade(reloader);
    let (task_armed, task_debouncer) = (armed.clone(), debouncer.clone());
    let task = tokio::spawn(async move {
        // File system calls (and the round trip to the watcher's thread) are made off the
        // runtime's threads: a slow file system must not stall requests.
        let identity_of = |path: PathBuf| async move {
            tokio::task::spawn_blocking(move || Identity::of(&path))
                .await
                .unwrap_or(Identity(None))
        };
        let mut identity = identity_of(path.clone()).await;
        let mut poll = tokio::time::interval(POLL_EVERY);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut files_poll = tokio::time::interval(POLL_EVERY);
        files_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // What the named files held when a reload was last asked for them (a bad
        // certificate or plan is reported once, not at every poll).
        let mut files_tried: Option<u64> = None;
        let mut trigger: String;
        loop {
            let why = tokio::select! {
                wake = rx.recv() => match wake {
                    None => return,
                    Some(Wake::Event) => "file change",
                    Some(Wake::Rearm) => "SIGHUP",
                },
                _ = poll.tick(), if polling => {
                    if identity_of(path.clone()).await == identity {
                        continue;
                    }
                    "file change (polled)"
                }
                _ = files_poll.tick() => {
                    let Some(me) = me.upgrade() else { return };
                    let Some(now) = files_changed(&me).await else { continue };
                    if files_tried == Some(now.fingerprint) {
                        continue;
                    }
                    files_tried = Some(now.fingerprint);
                    trigger = now.what;
                    trigger.as_str()
                }
            };
            // Several wakes may have queued during a reload: one more reload reads them all.
            while rx.try_recv().is_ok() {}
            // Every time: the chain may have moved (a release symlink switched, a directory
            // renamed and made again).
            let (p, a, d) = (path.clone(), task_armed.clone(), task_debouncer.clone());
            (polling, identity) =
                tokio::task::spawn_blocking(move || (arm(&p, &a, &d), Identity::of(&p)))
                    .await
                    .unwrap_or((true, Identity(None)));
            let Some(me) = me.upgrade() else { return };
            // Errors are logged and counted by `reload`.
            let _ = me.reload(why).await;
        }
    });
    Ok(Watch {
        wake: tx,
        task: task.abort_handle(),
        _debouncer: debouncer,
    })
}

/// What changed among the files the config in force was read with (certificate, key, CAs,
/// plan files, the plans folder's list of plans), when something did. Polled every
/// [`POLL_EVERY`]: certificate renewals replace files in many ways (Kubernetes secrets
/// swap a symlinked directory), and a reread of a few small files catches them all.
async fn files_changed(reloader: &Arc<Reloader>) -> Option<FilesChanged> {
    let reloader = reloader.clone();
    tokio::task::spawn_blocking(move || reloader.files_changed())
        .await
        .ok()
        .flatten()
}

/// Resolves the symlink chain of `path` and watches the directories it runs through now
/// (unwatching those it left). Returns whether some could not be watched: then the file's
/// identity is polled.
fn arm(path: &Path, armed: &Mutex<Armed>, debouncer: &Mutex<Watcher>) -> bool {
    let names = chain(path);
    let dirs: HashSet<PathBuf> = names.iter().map(|(d, _)| d.clone()).collect();
    let mut armed = armed.lock().unwrap_or_else(|p| p.into_inner());
    let mut watcher = debouncer.lock().unwrap_or_else(|p| p.into_inner());
    // A chain that does not end in a file (a link to a directory not made yet): what comes
    // next cannot be watched, so the file is polled.
    let mut missing = std::fs::canonicalize(path).is_err();
    if missing {
        tracing::warn!(file = %path.display(), interval = ?POLL_EVERY, "the routes file cannot be found where it is named: polling until it is back");
    }
    for gone in armed.dirs.keys().filter(|d| !dirs.contains(*d)) {
        let _ = watcher.unwatch(gone);
    }
    let mut watched = HashMap::new();
    for dir in &dirs {
        let id = dir_id(dir);
        match (armed.dirs.get(dir), id) {
            // Still the directory that was watched.
            (Some(was), Some(now)) if *was == now => {
                watched.insert(dir.clone(), now);
                continue;
            }
            // Another directory at the same path (renamed or removed, and made again):
            // the old watch went with the old directory.
            (Some(_), _) => {
                let _ = watcher.unwatch(dir);
            }
            // Not watched, or forgotten after its removal: any watch left is stale.
            (None, _) => {
                let _ = watcher.unwatch(dir);
            }
        }
        match watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
            Ok(()) => {
                watched.insert(dir.clone(), id.unwrap_or_default());
            }
            Err(e) => {
                missing = true;
                tracing::warn!(dir = %dir.display(), error = %e, interval = ?POLL_EVERY, "cannot watch a directory of the routes file: polling the file instead");
            }
        }
    }
    armed.names = names;
    armed.dirs = watched;
    missing
}

/// A directory's (device, inode), or `None` if it cannot be read.
fn dir_id(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// What identifies the file's content on disk without reading it: its real path, inode,
/// size and modification time.
#[derive(PartialEq, Eq)]
struct Identity(Option<(PathBuf, u64, u64, std::time::SystemTime)>);

impl Identity {
    fn of(path: &Path) -> Identity {
        use std::os::unix::fs::MetadataExt as _;
        Identity(std::fs::canonicalize(path).ok().and_then(|real| {
            let m = std::fs::metadata(&real).ok()?;
            Some((real, m.ino(), m.size(), m.modified().ok()?))
        }))
    }
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
