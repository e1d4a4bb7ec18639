//! The access log: one JSON line per request on stdout (docs/operations.md, "Logs").
//!
//! Lines are formatted straight into a shared buffer and written out in batches by a thread of
//! its own (every 100 ms, or sooner when the buffer passes 64 KiB), so a request costs a short
//! format and no system call, and a slow or stalled stdout never blocks the request path: past
//! 8 MiB of unwritten lines, new lines are dropped and counted, and the count is logged.
//! Lines are never split across writes.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Text (for people) or JSON lines (for machines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

/// One request's record.
pub struct Entry<'a> {
    /// When the request started: the line's timestamp.
    pub start: Instant,
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration: Duration,
    pub route: &'a str,
    pub side: &'a str,
    pub reason: &'a str,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub upstream: &'a str,
    pub error: Option<&'a str>,
}

const FLUSH_AT: usize = 64 * 1024;
/// Unwritten lines kept at most; beyond, lines are dropped (and counted).
const MAX_BUFFERED: usize = 8 << 20;
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The access log sink.
pub struct AccessLog {
    state: Mutex<State>,
    /// Wakes the writer thread early when the buffer fills.
    full: Condvar,
    format: LogFormat,
    enabled: bool,
}

struct State {
    buf: String,
    /// A monotonic instant and the wall-clock time at it, in Unix milliseconds: timestamps
    /// are derived from the request's start instead of reading the clock again. Re-read at
    /// every flush, so wall-clock adjustments show within 100 ms.
    base: (Instant, u128),
    /// Lines dropped since the last report because stdout did not keep up.
    dropped: u64,
}

fn wall_base() -> (Instant, u128) {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    (Instant::now(), ms)
}

impl AccessLog {
    /// A log; when enabled, a thread writes it out until the log is dropped.
    pub fn new(format: LogFormat, enabled: bool) -> Arc<AccessLog> {
        let log = Arc::new(AccessLog {
            state: Mutex::new(State {
                buf: String::with_capacity(2 * FLUSH_AT),
                base: wall_base(),
                dropped: 0,
            }),
            full: Condvar::new(),
            format,
            enabled,
        });
        if enabled {
            let weak = Arc::downgrade(&log);
            let spawned = std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || writer(weak));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the access-log writer; lines will be written inline");
            }
        }
        log
    }

    /// Takes what is buffered (and resyncs the wall clock), under the lock.
    fn take(&self, wait: bool) -> (String, u64) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if wait && st.buf.len() < FLUSH_AT {
            st = self
                .full
                .wait_timeout(st, FLUSH_EVERY)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        st.base = wall_base();
        let dropped = std::mem::take(&mut st.dropped);
        let out = if st.buf.is_empty() {
            String::new()
        } else {
            std::mem::replace(&mut st.buf, String::with_capacity(2 * FLUSH_AT))
        };
        (out, dropped)
    }

    /// Writes out whatever is buffered, now (at shutdown).
    pub fn flush(&self) {
        let (out, dropped) = self.take(false);
        write_out(&out, dropped);
    }

    pub fn log(&self, e: &Entry<'_>) {
        if !self.enabled {
            return;
        }
        let full = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.buf.len() >= MAX_BUFFERED {
                st.dropped += 1;
                return;
            }
            let (base_at, base_ms) = st.base;
            let ms = match e.start.checked_duration_since(base_at) {
                Some(d) => base_ms + d.as_millis(),
                None => base_ms.saturating_sub(base_at.duration_since(e.start).as_millis()),
            };
            let b = &mut st.buf;
            match self.format {
                LogFormat::Json => {
                    b.push_str("{\"ts_ms\":");
                    b.push_str(itoa::Buffer::new().format(ms));
                    b.push_str(",\"kind\":\"access\",\"request_id\":");
                    json_str(b, e.request_id);
                    b.push_str(",\"method\":");
                    json_str(b, e.method);
                    b.push_str(",\"path\":");
                    json_str(b, e.path);
                    b.push_str(",\"status\":");
                    b.push_str(itoa::Buffer::new().format(e.status));
                    // Milliseconds with three decimals, by integer arithmetic (float
                    // formatting costs more than the rest of the line).
                    let us = e.duration.as_micros();
                    b.push_str(",\"duration_ms\":");
                    b.push_str(itoa::Buffer::new().format(us / 1000));
                    let frac = (us % 1000) as u16;
                    b.push('.');
                    b.push(char::from(b'0' + (frac / 100) as u8));
                    b.push(char::from(b'0' + (frac / 10 % 10) as u8));
                    b.push(char::from(b'0' + (frac % 10) as u8));
                    b.push_str(",\"route\":");
                    json_str(b, e.route);
                    b.push_str(",\"side\":");
                    json_str(b, e.side);
                    b.push_str(",\"reason\":");
                    json_str(b, e.reason);
                    b.push_str(",\"bytes_in\":");
                    b.push_str(itoa::Buffer::new().format(e.bytes_in));
                    b.push_str(",\"bytes_out\":");
                    b.push_str(itoa::Buffer::new().format(e.bytes_out));
                    b.push_str(",\"upstream\":");
                    json_str(b, e.upstream);
                    if let Some(err) = e.error {
                        b.push_str(",\"error\":");
                        json_str(b, err);
                    }
                    b.push_str("}\n");
                }
                LogFormat::Text => {
                    let _ = writeln!(
                        b,
                        "{} {} {} {:.1}ms route={} side={} ({}) up={} in={} out={} id={}{}",
                        e.method,
                        e.path,
                        e.status,
                        e.duration.as_secs_f64() * 1000.0,
                        e.route,
                        e.side,
                        e.reason,
                        e.upstream,
                        e.bytes_in,
                        e.bytes_out,
                        e.request_id,
                        e.error.map(|x| format!(" error={x}")).unwrap_or_default()
                    );
                }
            }
            b.len() >= FLUSH_AT
        };
        if full {
            self.full.notify_one();
        }
    }
}

/// The writer thread: writes the buffer out every 100 ms, or when it fills; ends with the log.
fn writer(log: Weak<AccessLog>) {
    loop {
        let Some(log) = log.upgrade() else { return };
        let (out, dropped) = log.take(true);
        // The log is not kept alive while writing: a stalled stdout must not pin it.
        drop(log);
        write_out(&out, dropped);
    }
}

fn write_out(out: &str, dropped: u64) {
    let mut stdout = std::io::stdout().lock();
    // A closed stdout must not take the gateway down; the log is best effort.
    let _ = stdout.write_all(out.as_bytes());
    if dropped > 0 {
        let _ = writeln!(
            stdout,
            "{{\"kind\":\"access_log_dropped\",\"lines\":{dropped},\"message\":\"stdout did not keep up\"}}"
        );
    }
    let _ = stdout.flush();
}

/// Appends `s` as a JSON string literal.
pub fn json_str(out: &mut String, s: &str) {
    out.push('"');
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_escaping() {
        let mut s = String::new();
        super::json_str(&mut s, "a\"b\\c\n\u{1}");
        assert_eq!(s, "\"a\\\"b\\\\c\\n\\u0001\"");
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v, "a\"b\\c\n\u{1}");
    }
}
