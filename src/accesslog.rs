//! The access log: one JSON line per request on stdout (CONTRACT §8).
//!
//! Lines are formatted straight into a shared buffer and written out in batches by a
//! background task (every 100 ms, or sooner when the buffer passes 64 KiB), so a request costs
//! a short format and no system call. Lines are never split across writes.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
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

/// The access log sink.
pub struct AccessLog {
    state: Mutex<State>,
    format: LogFormat,
    enabled: bool,
}

struct State {
    buf: String,
    /// A monotonic instant and the wall-clock time at it, in Unix milliseconds: timestamps
    /// are derived from the request's start instead of reading the clock again. Re-read at
    /// every flush, so wall-clock adjustments show within 100 ms.
    base: (Instant, u128),
}

fn wall_base() -> (Instant, u128) {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    (Instant::now(), ms)
}

impl AccessLog {
    pub fn new(format: LogFormat, enabled: bool) -> Arc<AccessLog> {
        Arc::new(AccessLog {
            state: Mutex::new(State {
                buf: String::with_capacity(2 * FLUSH_AT),
                base: wall_base(),
            }),
            format,
            enabled,
        })
    }

    /// Starts the task that writes the buffer out periodically.
    pub fn spawn_flusher(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                me.flush();
            }
        });
    }

    /// Writes out whatever is buffered.
    pub fn flush(&self) {
        let out = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.base = wall_base();
            if st.buf.is_empty() {
                return;
            }
            std::mem::replace(&mut st.buf, String::with_capacity(2 * FLUSH_AT))
        };
        let mut stdout = std::io::stdout().lock();
        // A closed stdout must not take the gateway down; the log is best effort.
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
    }

    pub fn log(&self, e: &Entry<'_>) {
        if !self.enabled {
            return;
        }
        let full = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
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
                    let _ = write!(
                        b,
                        ",\"bytes_in\":{},\"bytes_out\":{},\"upstream\":",
                        e.bytes_in, e.bytes_out
                    );
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
            self.flush();
        }
    }
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
