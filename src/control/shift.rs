//! Shifting traffic: changing one route's `percent` in the routes file itself.
//!
//! The file stays the single source of truth, so a change of percentage is a change of the
//! file: only that value's characters change (comments and layout stay byte for byte), a
//! missing `percent` key is inserted with the route's indentation, the result is validated
//! before it replaces the file, and the write is atomic (a temporary file renamed over the
//! original, with its mode, owner and group), made only if the file is still the one that was
//! read. Reloading is the caller's business (the running gateway watches the file; the
//! admin API reloads at once).

use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::config::yaml::{self, Node, Value, offset, scalar_len};
use crate::config::{Config, ConfigErrors, format_percent};

/// Why a shift was not made.
#[derive(Debug, thiserror::Error)]
pub enum ShiftError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is read-only; change the percentage at its source (where the file is generated or mounted from)"
    )]
    ReadOnly { path: PathBuf },
    #[error(
        "the directory {dir} cannot be written ({source}): a shift writes a new file beside the routes file and renames it over, and locks .NAME.lock beside it"
    )]
    DirReadOnly {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot open or lock {lock} ({source}): every shift of this file locks it; run the shift as a user that can read it"
    )]
    Lock {
        lock: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path} ({source}): run the shift as a user that can read and write it")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot keep the owner and group of {path} ({uid}:{gid}): {source}; run the shift as the file's owner or as root"
    )]
    Owner {
        path: PathBuf,
        uid: u32,
        gid: u32,
        source: std::io::Error,
    },
    #[error(
        "{path} kept changing while it was being edited (another tool writing it?); nothing was written: try again"
    )]
    Changing { path: PathBuf },
    #[error(
        "the routes file says {}% for {route}, not the {}% expected: it was changed meanwhile; nothing was written",
        crate::config::format_percent(*.found),
        crate::config::format_percent(*.expected)
    )]
    Moved {
        route: String,
        expected: u32,
        found: u32,
    },
    #[error("no route named {} in the routes file", crate::config::quote(.0))]
    NoSuchRoute(String),
    #[error("the routes file is invalid as it stands; fix it first:\n{0}")]
    InvalidBefore(ConfigErrors),
    #[error("the change would make the routes file invalid:\n{0}")]
    InvalidAfter(ConfigErrors),
    #[error("cannot locate the route's text in the file: {0}")]
    Layout(String),
}

/// What a shift changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shifted {
    /// The previous share in basis points.
    pub before: u32,
    pub after: u32,
}

/// A file that changed less than this long ago may be in the middle of another tool's
/// write (one that rewrites it in place, in parts): the shift waits for it to be still.
const QUIET: Duration = Duration::from_millis(100);
/// How long a shift keeps trying while the file keeps changing.
const PATIENCE: Duration = Duration::from_secs(3);

/// What the file on disk is, without its content: to tell whether it changed.
#[derive(Debug, PartialEq, Eq)]
struct Identity {
    ino: u64,
    len: u64,
    mtime: SystemTime,
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Identity {
        Identity {
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }
}

/// Sets `route`'s percentage (basis points) in the file at `path`, in place.
///
/// The new text replaces the file only if the file is still the one that was read (same
/// inode, size, modification time and content), and had been still for a moment when it
/// was read; otherwise it is read again, for up to a few seconds, then the shift is refused.
/// The new file keeps the old one's mode, owner and group.
pub fn shift_file(path: &Path, route: &str, bp: u32) -> Result<Shifted, ShiftError> {
    shift_file_if(path, route, bp, None)
}

/// As [`shift_file`], only if the file says `from` (or already `bp`) for the route: a
/// change meant to replace one value never overwrites another that a person wrote since
/// ([`ShiftError::Moved`]).
pub fn shift_file_from(
    path: &Path,
    route: &str,
    from: u32,
    bp: u32,
) -> Result<Shifted, ShiftError> {
    shift_file_if(path, route, bp, Some(from))
}

fn shift_file_if(
    path: &Path,
    route: &str,
    bp: u32,
    from: Option<u32>,
) -> Result<Shifted, ShiftError> {
    let io = |source| ShiftError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Through a symlink, the target is what changes (the link stays a link).
    let target = std::fs::canonicalize(path).map_err(io)?;
    let meta = std::fs::metadata(&target).map_err(io)?;
    if meta.permissions().readonly() {
        return Err(ShiftError::ReadOnly {
            path: path.to_path_buf(),
        });
    }
    let dir = directory(&target);
    // One writer at a time, across processes (the CLI and every gateway on this file):
    // read, edit and rename happen under an exclusive lock on a file beside it.
    let _lock = lock_beside(&target, path, &dir)?;
    let give_up = Instant::now() + PATIENCE;
    // The previous read, when it was not taken for a still file: the same bytes and
    // identity seen again a moment later count as still, whatever the modification time
    // says (a time in the future, after clock skew or an extracted archive).
    let mut previous: Option<(Identity, String, Instant)> = None;
    loop {
        let before = std::fs::metadata(&target).map_err(io)?;
        let text = std::fs::read_to_string(&target).map_err(|source| {
            if source.kind() == std::io::ErrorKind::PermissionDenied {
                ShiftError::Unreadable {
                    path: path.to_path_buf(),
                    source,
                }
            } else {
                io(source)
            }
        })?;
        let read = Identity::of(&before);
        // Unchanged while it was being read, else the text may not be what the file holds.
        let during = Identity::of(&std::fs::metadata(&target).map_err(io)?) != read;
        let age = SystemTime::now().duration_since(read.mtime).ok();
        let seen_still = previous
            .as_ref()
            .is_some_and(|(i, t, at)| *i == read && *t == text && at.elapsed() >= QUIET);
        let still = !during && (age.is_some_and(|a| a >= QUIET) || seen_still);
        // An empty file is taken for one being rewritten: a truncation is seen with its
        // new size a moment before its new modification time.
        if !still || text.trim().is_empty() {
            if Instant::now() < give_up {
                let wait = age.map_or(QUIET, |a| QUIET.saturating_sub(a));
                if !still
                    && previous
                        .as_ref()
                        .is_none_or(|(i, t, _)| *i != read || *t != text)
                {
                    previous = Some((read, text, Instant::now()));
                }
                std::thread::sleep(wait.max(Duration::from_millis(10)));
                continue;
            }
            if !still {
                return Err(ShiftError::Changing {
                    path: path.to_path_buf(),
                });
            }
            // Empty and still: reported as the invalid file it is.
        }
        let (new_text, shifted) = shift_text(&text, path, route, bp)?;
        if shifted.before == shifted.after {
            return Ok(shifted);
        }
        if let Some(expected) = from
            && shifted.before != expected
        {
            return Err(ShiftError::Moved {
                route: route.to_string(),
                expected,
                found: shifted.before,
            });
        }
        let tmp = prepare(&dir, &new_text, &before).map_err(|e| match e {
            Prepared::Dir(source) => denied(path, &dir, source),
            Prepared::Owner(source) => ShiftError::Owner {
                path: path.to_path_buf(),
                uid: before.uid(),
                gid: before.gid(),
                source,
            },
        })?;
        // Still the file that was read? Another writer that does not take the lock (and
        // writes in place) may have changed it meanwhile: then read it again.
        let now = std::fs::metadata(&target).map_err(io)?;
        let unchanged =
            Identity::of(&now) == read && std::fs::read_to_string(&target).is_ok_and(|t| t == text);
        if !unchanged {
            drop(tmp);
            if Instant::now() >= give_up {
                return Err(ShiftError::Changing {
                    path: path.to_path_buf(),
                });
            }
            continue;
        }
        tmp.persist(&target)
            .map_err(|e| denied(path, &dir, e.error))?;
        return Ok(shifted);
    }
}

fn directory(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A permission problem in the directory (the lock, the new file, the rename); anything
/// else is I/O.
fn denied(path: &Path, dir: &Path, source: std::io::Error) -> ShiftError {
    if matches!(
        source.kind(),
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
    ) {
        ShiftError::DirReadOnly {
            dir: dir.to_path_buf(),
            source,
        }
    } else {
        ShiftError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Why the new file could not be made.
enum Prepared {
    /// The directory refused it.
    Dir(std::io::Error),
    /// Its owner and group could not be made the old file's.
    Owner(std::io::Error),
}

/// The new file, beside the old one: written, synced, with the old one's mode, owner and
/// group (as `sed -i` and editors keep them), ready to be renamed over it.
fn prepare(
    dir: &Path,
    text: &str,
    old: &std::fs::Metadata,
) -> Result<tempfile::NamedTempFile, Prepared> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".strangler-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(Prepared::Dir)?;
    tmp.write_all(text.as_bytes()).map_err(Prepared::Dir)?;
    tmp.as_file().sync_all().map_err(Prepared::Dir)?;
    if (old.uid(), old.gid()) != {
        let m = tmp.as_file().metadata().map_err(Prepared::Dir)?;
        (m.uid(), m.gid())
    } {
        std::os::unix::fs::fchown(tmp.as_file(), Some(old.uid()), Some(old.gid()))
            .map_err(Prepared::Owner)?;
    }
    // After the owner: changing it may clear set-id bits.
    std::fs::set_permissions(tmp.path(), old.permissions()).map_err(Prepared::Dir)?;
    Ok(tmp)
}

/// An exclusive lock on `.NAME.lock` beside `target`, held until the file is dropped. The
/// lock needs only reading: an existing lock file (made by another user, say root running
/// the CLI) is opened read-only, so any user who can read it can lock it.
fn lock_beside(target: &Path, path: &Path, dir: &Path) -> Result<std::fs::File, ShiftError> {
    let lock = sibling(target, "lock");
    let f = match std::fs::File::open(&lock) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .map_err(|source| denied(path, dir, source))?,
        Err(source) => return Err(ShiftError::Lock { lock, source }),
    };
    f.lock().map_err(|source| ShiftError::Lock {
        lock: lock.clone(),
        source,
    })?;
    Ok(f)
}

/// `.NAME.SUFFIX` in the directory of `path`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    directory(path).join(format!(".{name}.{suffix}"))
}

/// The text with `route`'s percentage set to `bp`, validated.
pub fn shift_text(
    text: &str,
    file: &Path,
    route: &str,
    bp: u32,
) -> Result<(String, Shifted), ShiftError> {
    let config = Config::parse(text, file).map_err(ShiftError::InvalidBefore)?;
    let before = config
        .routes
        .iter()
        .find(|r| r.name == route)
        .map(|r| r.percent_bp)
        .ok_or_else(|| ShiftError::NoSuchRoute(route.to_string()))?;
    let shifted = Shifted { before, after: bp };
    if before == bp {
        return Ok((text.to_string(), shifted));
    }
    let root = yaml::parse(text).map_err(|e| ShiftError::Layout(e.message))?;
    let node =
        route_node(&root, route).ok_or_else(|| ShiftError::NoSuchRoute(route.to_string()))?;
    let Value::Map(entries) = &node.value else {
        return Err(ShiftError::Layout("the route is not a mapping".into()));
    };
    let value = format_percent(bp);
    let new_text = if let Some((_, v)) = entries.iter().find(|(k, _)| k.name == "percent") {
        let start = yaml::offset(text, v.pos)
            .ok_or_else(|| ShiftError::Layout("percent value position".into()))?;
        let end = start + yaml::scalar_len(&text[start..]);
        format!("{}{}{}", &text[..start], value, &text[end..])
    } else {
        let (key, name) = entries
            .iter()
            .find(|(k, _)| k.name == "name")
            .ok_or_else(|| ShiftError::Layout("the route has no name key".into()))?;
        let key_at =
            offset(text, key.pos).ok_or_else(|| ShiftError::Layout("name key position".into()))?;
        let name_at = offset(text, name.pos)
            .ok_or_else(|| ShiftError::Layout("name value position".into()))?;
        let line_start = text[..key_at].rfind('\n').map_or(0, |i| i + 1);
        // A flow mapping (`{name: a, ...}`, on one line or several) starts with `{`.
        let flow = offset(text, node.pos).is_some_and(|at| text[at..].starts_with('{'));
        if flow {
            // Flow mapping: `{name: a, ...}` gains `, percent: N` after the name.
            let end = name_at + scalar_len(&text[name_at..]);
            format!("{}, percent: {}{}", &text[..end], value, &text[end..])
        } else {
            // Block mapping: a new line under `name`, at its indentation.
            let indent = " ".repeat(text[line_start..key_at].chars().count());
            let line_end = text[name_at..]
                .find('\n')
                .map_or(text.len(), |i| name_at + i + 1);
            // The file's own line ending (a CRLF file stays CRLF).
            let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
            let newline = if line_end == text.len() && !text.ends_with('\n') {
                eol
            } else {
                ""
            };
            format!(
                "{}{}{indent}percent: {value}{eol}{}",
                &text[..line_end],
                newline,
                &text[line_end..]
            )
        }
    };
    let after = Config::parse(&new_text, file).map_err(ShiftError::InvalidAfter)?;
    // Exactly one thing changed: this route's share (an alias could have carried the edit
    // to another route too).
    let shares = |c: &Config| {
        c.routes
            .iter()
            .map(|r| (r.name.clone(), r.percent_bp))
            .collect::<Vec<_>>()
    };
    let mut expected = shares(&config);
    for (name, p) in &mut expected {
        if name == route {
            *p = bp;
        }
    }
    if shares(&after) != expected {
        return Err(ShiftError::Layout(
            "the edit would change more than this route's percent (is the value an anchor or alias?)".into(),
        ));
    }
    Ok((new_text, shifted))
}

fn route_node<'a>(root: &'a Node, route: &str) -> Option<&'a Node> {
    let Value::Map(top) = &root.value else {
        return None;
    };
    let (_, routes) = top.iter().find(|(k, _)| k.name == "routes")?;
    let Value::Seq(items) = &routes.value else {
        return None;
    };
    items.iter().find(|item| {
        let Value::Map(entries) = &item.value else {
            return false;
        };
        entries
            .iter()
            .any(|(k, v)| k.name == "name" && matches!(&v.value, Value::Str(s) if s == route))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "listen: 127.0.0.1:8080\nlegacy: {url: http://127.0.0.1:9001}\nservices:\n  orders: {url: http://127.0.0.1:9002}\n";

    fn shift(text: &str, route: &str, bp: u32) -> String {
        shift_text(text, Path::new("t.yaml"), route, bp).unwrap().0
    }

    #[test]
    fn changes_only_the_value() {
        let text = format!(
            "{HEAD}routes:\n  # reads\n  - name: a   # the first\n    match: {{prefix: /a}}\n    service: orders\n    percent: 25      # quarter\n  - name: b\n    match: {{prefix: /b}}\n    service: orders\n    percent: 5\n"
        );
        let out = shift(&text, "a", 3050);
        assert_eq!(
            out,
            text.replace("percent: 25      # quarter", "percent: 30.5      # quarter")
        );
        let out = shift(&text, "b", 10000);
        assert_eq!(out, text.replace("percent: 5\n", "percent: 100\n"));
    }

    #[test]
    fn quoted_and_flow_values() {
        let text = format!(
            "{HEAD}routes:\n  - {{name: a, match: {{prefix: /a}}, service: orders, percent: 1.5}}\n"
        );
        assert_eq!(
            shift(&text, "a", 200),
            text.replace("percent: 1.5}", "percent: 2}")
        );
        let text =
            format!("{HEAD}routes:\n  - {{name: \"a\", match: {{prefix: /a}}, service: orders}}\n");
        assert_eq!(
            shift(&text, "a", 700),
            text.replace("name: \"a\",", "name: \"a\", percent: 7,")
        );
    }

    #[test]
    fn inserts_a_missing_percent() {
        let text =
            format!("{HEAD}routes:\n  - name: a\n    match: {{prefix: /a}}\n    service: orders\n");
        let out = shift(&text, "a", 1000);
        assert_eq!(
            out,
            text.replace("  - name: a\n", "  - name: a\n    percent: 10\n")
        );
        let no_newline = text.trim_end().to_string();
        let out = shift(&no_newline, "a", 1000);
        assert!(Config::parse(&out, Path::new("t.yaml")).is_ok(), "{out}");
    }

    #[test]
    fn flow_mapping_over_several_lines() {
        let text = format!(
            "{HEAD}routes:\n  - {{\n      name: a, match: {{prefix: /a}},\n      service: orders}}\n"
        );
        assert_eq!(
            shift(&text, "a", 300),
            text.replace("name: a,", "name: a, percent: 3,")
        );
    }

    #[test]
    fn crlf_files_stay_crlf() {
        let text =
            format!("{HEAD}routes:\n  - name: a\n    match: {{prefix: /a}}\n    service: orders\n")
                .replace('\n', "\r\n");
        let out = shift(&text, "a", 500);
        assert_eq!(
            out,
            text.replace("  - name: a\r\n", "  - name: a\r\n    percent: 5\r\n")
        );
        let out = shift(&out, "a", 600);
        assert!(out.contains("percent: 6\r\n"), "{out:?}");
    }

    #[test]
    fn refuses_bad_shifts() {
        let text =
            format!("{HEAD}routes:\n  - name: a\n    match: {{prefix: /a}}\n    service: orders\n");
        assert!(matches!(
            shift_text(&text, Path::new("t"), "zzz", 100),
            Err(ShiftError::NoSuchRoute(_))
        ));
        let broken = text.replace("service: orders", "service: nope");
        assert!(matches!(
            shift_text(&broken, Path::new("t"), "a", 100),
            Err(ShiftError::InvalidBefore(_))
        ));
    }
}
