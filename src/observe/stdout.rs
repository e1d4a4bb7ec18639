//! The process's stdout, for everything the gateway prints while it serves: its log events
//! and its access log (docs/operations.md, "Logs").
//!
//! Lines go into one buffer, written out by one thread of its own (every 100 ms, or sooner
//! when 64 KiB are waiting); a line is never split across writes. Nothing else in the
//! process writes to stdout while it serves, so a slow or stalled stdout (a stuck log
//! shipper) holds up that thread only: no request, reload, admin call or drain ever waits on
//! it. Past 8 MiB of unwritten lines, new lines are dropped and counted; the count is
//! printed once stdout moves again, and exported as `strangler_log_lines_dropped_total`.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const FLUSH_AT: usize = 64 * 1024;
/// Unwritten bytes kept at most; beyond, lines are dropped (and counted).
const MAX_BUFFERED: usize = 8 << 20;
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The process's one stdout writer.
pub struct Stdout {
    state: Mutex<State>,
    /// Wakes the writer early (the buffer filled, or a flush is asked for).
    wake: Condvar,
    /// Tells a flush that the writer has written what it took.
    written: Condvar,
    /// Lines dropped since the start (for the metric): past the buffer's cap, or lost to a
    /// stdout that was closed (a write that failed).
    dropped_total: AtomicU64,
    /// A flush ran out of time: stdout is stalled, and later flushes do not wait again (an
    /// exit flushes at most once for its whole limit).
    stalled: std::sync::atomic::AtomicBool,
}

pub(crate) struct State {
    pub(crate) buf: String,
    /// A monotonic instant and the wall-clock time at it, in Unix milliseconds: access-log
    /// timestamps are derived from a request's start instead of reading the clock again.
    /// Re-read at every write, so wall-clock adjustments show within 100 ms.
    pub(crate) base: (Instant, u128),
    /// Lines dropped since the last report.
    dropped: u64,
    /// The writer holds a batch it has not finished writing.
    writing: bool,
}

fn wall_base() -> (Instant, u128) {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    (Instant::now(), ms)
}

/// The process's stdout writer, started on first use.
pub fn stdout() -> &'static Stdout {
    static STDOUT: OnceLock<Stdout> = OnceLock::new();
    let mut first = false;
    let s = STDOUT.get_or_init(|| {
        first = true;
        Stdout {
            state: Mutex::new(State {
                buf: String::with_capacity(2 * FLUSH_AT),
                base: wall_base(),
                dropped: 0,
                writing: false,
            }),
            wake: Condvar::new(),
            written: Condvar::new(),
            dropped_total: AtomicU64::new(0),
            stalled: std::sync::atomic::AtomicBool::new(false),
        }
    });
    if first {
        let spawned = std::thread::Builder::new()
            .name("stdout".into())
            .spawn(move || writer(s));
        if spawned.is_err() {
            // No thread, no output: better than blocking the request path on stdout.
            eprintln!("cannot start the stdout writer: logs are lost");
        }
    }
    s
}

impl Stdout {
    /// Appends one or more whole lines with `write`; when 8 MiB are already waiting, drops
    /// them instead (and counts one line).
    pub(crate) fn append(&self, write: impl FnOnce(&mut State)) {
        let full = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.buf.len() >= MAX_BUFFERED {
                st.dropped += 1;
                self.dropped_total.fetch_add(1, Ordering::Relaxed);
                return;
            }
            write(&mut st);
            st.buf.len() >= FLUSH_AT
        };
        if full {
            self.wake.notify_one();
        }
    }

    /// Appends text that holds whole lines.
    pub fn print(&self, text: &str) {
        self.append(|st| st.buf.push_str(text));
    }

    /// Lines dropped since the process started.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }

    /// Waits until what is buffered now is written, for at most `limit` (a stalled stdout
    /// must not hold up an exit).
    pub fn flush(&self, limit: Duration) {
        if self.stalled.load(Ordering::Relaxed) {
            return;
        }
        let deadline = Instant::now() + limit;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.wake.notify_one();
        while !st.buf.is_empty() || st.writing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.stalled.store(true, Ordering::Relaxed);
                return;
            }
            st = self
                .written
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            self.wake.notify_one();
        }
    }
}

/// The writer thread: writes the buffer out every 100 ms, or when it fills.
fn writer(s: &'static Stdout) {
    loop {
        let (out, dropped) = {
            let mut st = s.state.lock().unwrap_or_else(|p| p.into_inner());
            st.writing = false;
            s.written.notify_all();
            if st.buf.len() < FLUSH_AT {
                st = s
                    .wake
                    .wait_timeout(st, FLUSH_EVERY)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            st.base = wall_base();
            st.writing = !st.buf.is_empty() || st.dropped > 0;
            let dropped = std::mem::take(&mut st.dropped);
            let out = if st.buf.is_empty() {
                String::new()
            } else {
                std::mem::replace(&mut st.buf, String::with_capacity(2 * FLUSH_AT))
            };
            (out, dropped)
        };
        let mut stdout = std::io::stdout().lock();
        // A closed stdout must not take the gateway down; the output is best effort, and
        // what a failed write lost is counted as dropped (std's stdout buffers lines: a
        // failure may show only at the flush).
        let mut failed = stdout.write_all(out.as_bytes()).is_err();
        if dropped > 0 {
            failed |= writeln!(
                stdout,
                "{{\"kind\":\"log_dropped\",\"lines\":{dropped},\"message\":\"stdout did not keep up\"}}"
            )
            .is_err();
        }
        failed |= stdout.flush().is_err();
        if failed {
            let lost = out.bytes().filter(|b| *b == b'\n').count() as u64;
            s.dropped_total.fetch_add(lost, Ordering::Relaxed);
        }
    }
}

/// The log events' writer (for `tracing_subscriber`): each event is gathered, then appended
/// whole to the process's stdout buffer.
#[derive(Clone, Copy, Default)]
pub struct LogLines;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogLines {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(Vec::with_capacity(256))
    }
}

/// One log event's text, appended to stdout's buffer when complete.
pub struct Line(Vec<u8>);

impl std::io::Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let text = String::from_utf8_lossy(&self.0);
            stdout().print(&text);
        }
    }
}
