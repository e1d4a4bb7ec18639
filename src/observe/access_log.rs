//! The access log: one JSON line per request on stdout (docs/operations.md, "Logs").
//!
//! Lines are formatted straight into the process's stdout buffer ([`super::stdout`]), so a
//! request costs a short format and no system call, and a slow or stalled stdout never
//! blocks it.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::stdout::stdout;

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
    /// The `grpc-status` of a gRPC call.
    pub grpc_status: Option<u32>,
    /// The new side failed this way and legacy answered.
    pub fallback: Option<&'a str>,
}

/// The access log: lines formatted straight into the process's stdout buffer.
pub struct AccessLog {
    format: LogFormat,
    enabled: bool,
}

impl AccessLog {
    /// A log; when enabled, its lines go to the process's stdout writer.
    pub fn new(format: LogFormat, enabled: bool) -> Arc<AccessLog> {
        if enabled {
            stdout();
        }
        Arc::new(AccessLog { format, enabled })
    }

    /// Waits (2 s at most) until the lines logged so far are written.
    pub fn flush(&self) {
        stdout().flush(Duration::from_secs(2));
    }

    pub fn log(&self, e: &Entry<'_>) {
        if !self.enabled {
            return;
        }
        stdout().append(|st| {
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
                    if let Some(code) = e.grpc_status {
                        b.push_str(",\"grpc_status\":");
                        b.push_str(itoa::Buffer::new().format(code));
                    }
                    if let Some(why) = e.fallback {
                        b.push_str(",\"fallback\":");
                        json_str(b, why);
                    }
                    b.push_str("}\n");
                }
                LogFormat::Text => {
                    let _ = writeln!(
                        b,
                        "{} {} {} {:.1}ms route={} side={} ({}) up={} in={} out={} id={}{}{}{}",
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
                        e.error.map(|x| format!(" error={x}")).unwrap_or_default(),
                        e.grpc_status
                            .map(|c| format!(" grpc_status={c}"))
                            .unwrap_or_default(),
                        e.fallback
                            .map(|f| format!(" fallback={f}"))
                            .unwrap_or_default()
                    );
                }
            }
        });
    }
}

/// Appends `s` as a JSON string literal. Besides what JSON requires, the characters that
/// change what a reader sees without being seen (C1 controls, bidirectional overrides and
/// isolates, line and paragraph separators) are escaped: a path holding U+202E would
/// otherwise show a log line's text reversed.
pub fn json_str(out: &mut String, s: &str) {
    out.push('"');
    if !s
        .bytes()
        .any(|b| b < 0x20 || b == b'"' || b == b'\\' || b >= 0x7f)
    {
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
            c if (c as u32) < 0x20 || hidden(c) => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Characters that change how text is shown without being seen.
fn hidden(c: char) -> bool {
    matches!(c as u32,
        0x7f..=0x9f            // DEL and the C1 controls
        | 0x061c               // Arabic letter mark
        | 0x200e | 0x200f      // left-to-right and right-to-left marks
        | 0x2028 | 0x2029      // line and paragraph separators
        | 0x202a..=0x202e      // bidirectional embeddings and overrides
        | 0x2066..=0x2069      // bidirectional isolates
    )
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
        // A right-to-left override from a path is escaped: the line reads as it is.
        let mut s = String::new();
        super::json_str(&mut s, "/files/\u{202e}gpj.exe é");
        assert_eq!(s, "\"/files/\\u202egpj.exe é\"");
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v, "/files/\u{202e}gpj.exe é");
    }
}
