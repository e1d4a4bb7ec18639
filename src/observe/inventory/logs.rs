//! The map from access logs (docs/inventory.md, "From access logs"): nginx or Apache lines
//! in the combined (or common) format, the gateway's own JSON access-log lines, either one
//! gzip-compressed (told by its magic bytes). Read line by line, in bounded memory; a line
//! that cannot be read is counted and skipped (the first few kept to quote), never fatal.

use std::borrow::Cow;
use std::io::{self, BufRead, BufReader, Read};
use std::time::Duration;

use serde::Deserialize;

use super::learn::Inventory;
use super::{Sample, UNTIMED};

/// Lines longer than this are malformed (and not held in memory).
pub const MAX_LINE: usize = 64 * 1024;
/// Malformed lines kept to quote.
pub const QUOTED: usize = 5;
/// Characters of a malformed line quoted.
const QUOTE_CHARS: usize = 200;

/// What reading a log found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogCounts {
    /// Bytes read (after decompression).
    pub bytes: u64,
    pub lines: u64,
    /// Lines that were requests, given to the inventory.
    pub requests: u64,
    /// Lines that could not be read as a request.
    pub malformed: u64,
    /// JSON lines that are not requests (the gateway's other log lines) and empty lines.
    pub skipped: u64,
    /// The first [`QUOTED`] malformed lines.
    pub first_malformed: Vec<Malformed>,
    /// The input was gzip-compressed.
    pub gzip: bool,
}

/// A malformed line, quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// 1-based.
    pub line: u64,
    /// The line's start, at most 200 characters.
    pub text: String,
    pub why: &'static str,
}

/// Reads a log (plain or gzip) line by line into `inv`.
pub fn feed(reader: impl Read, inv: &mut Inventory) -> io::Result<LogCounts> {
    let mut r = BufReader::with_capacity(256 * 1024, reader);
    let gzip = r.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let mut counts = if gzip {
        let gz = flate2::bufread::MultiGzDecoder::new(r);
        read_lines(BufReader::with_capacity(256 * 1024, gz), inv)?
    } else {
        read_lines(r, inv)?
    };
    counts.gzip = gzip;
    Ok(counts)
}

/// Reads the next line into `buf` (without its end), at most [`MAX_LINE`] bytes of it.
/// `None` at the end; `Some(true)` when the line was longer (the rest is skipped).
fn next_line<R: BufRead>(
    r: &mut R,
    buf: &mut Vec<u8>,
    bytes: &mut u64,
) -> io::Result<Option<bool>> {
    buf.clear();
    let mut any = false;
    let mut long = false;
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(any.then_some(long));
        }
        any = true;
        let (part, used, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (&avail[..i], i + 1, true),
            None => (avail, avail.len(), false),
        };
        let room = MAX_LINE.saturating_sub(buf.len());
        if part.len() > room {
            long = true;
        }
        buf.extend_from_slice(&part[..part.len().min(room)]);
        *bytes += used as u64;
        r.consume(used);
        if done {
            return Ok(Some(long));
        }
    }
}

/// Counts a malformed line, quoting it when it is one of the first.
fn bad(why: &'static str, text: &[u8], c: &mut LogCounts) {
    c.malformed += 1;
    if c.first_malformed.len() < QUOTED {
        let s = String::from_utf8_lossy(text);
        c.first_malformed.push(Malformed {
            line: c.lines,
            text: s.chars().take(QUOTE_CHARS).collect(),
            why,
        });
    }
}

fn read_lines<R: BufRead>(mut r: R, inv: &mut Inventory) -> io::Result<LogCounts> {
    let mut c = LogCounts::default();
    let mut buf = Vec::with_capacity(4096);
    while let Some(long) = next_line(&mut r, &mut buf, &mut c.bytes)? {
        c.lines += 1;
        if long {
            bad("longer than 64 KiB", &buf, &mut c);
            continue;
        }
        let line = buf.strip_suffix(b"\r").unwrap_or(&buf);
        let Ok(text) = std::str::from_utf8(line) else {
            bad("not UTF-8", line, &mut c);
            continue;
        };
        let text = text.trim();
        if text.is_empty() {
            c.skipped += 1;
            continue;
        }
        let parsed = if text.starts_with('{') {
            json_line(text)
        } else {
            combined_line(text).map(Some)
        };
        match parsed {
            Ok(Some(l)) => {
                c.requests += 1;
                inv.observe(&Sample {
                    method: &l.method,
                    path: &l.path,
                    status: l.status,
                    latency: l.latency,
                    route: &l.route,
                    new_side: l.new_side,
                    at_unix_ms: l.at_ms,
                });
            }
            Ok(None) => c.skipped += 1,
            Err(why) => bad(why, text.as_bytes(), &mut c),
        }
    }
    Ok(c)
}

/// A request read from a line.
struct Line<'a> {
    method: Cow<'a, str>,
    path: Cow<'a, str>,
    status: u16,
    latency: Duration,
    route: Cow<'a, str>,
    new_side: bool,
    at_ms: u64,
}

/// A JSON string, borrowed from the line when it has no escapes (serde borrows a `Cow`
/// only as a field of its own, not inside an `Option`).
#[derive(Deserialize)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

#[derive(Deserialize)]
struct JsonLine<'a> {
    #[serde(borrow)]
    kind: Option<Str<'a>>,
    ts_ms: Option<u64>,
    #[serde(borrow)]
    method: Option<Str<'a>>,
    #[serde(borrow)]
    path: Option<Str<'a>>,
    status: Option<u16>,
    duration_ms: Option<f64>,
    #[serde(borrow)]
    route: Option<Str<'a>>,
    #[serde(borrow)]
    side: Option<Str<'a>>,
}

/// A line of the gateway's JSON access log (docs/operations.md, "Logs"); `None` for its
/// other JSON lines.
fn json_line(text: &str) -> Result<Option<Line<'_>>, &'static str> {
    let j: JsonLine<'_> = serde_json::from_str(text).map_err(|_| "not a JSON object")?;
    if j.kind.as_ref().is_some_and(|k| k.0 != "access") {
        return Ok(None);
    }
    let (Some(method), Some(path), Some(status)) = (j.method, j.path, j.status) else {
        return if j.kind.is_some() {
            Err("an access line without method, path and status")
        } else {
            Ok(None)
        };
    };
    Ok(Some(Line {
        method: method.0,
        path: path.0,
        status,
        latency: j
            .duration_ms
            .filter(|d| d.is_finite() && *d >= 0.0)
            .map_or(UNTIMED, |ms| Duration::from_secs_f64(ms / 1000.0)),
        route: j.route.map_or(Cow::Borrowed("default"), |r| r.0),
        new_side: j.side.is_some_and(|s| s.0 == "new"),
        at_ms: j.ts_ms.unwrap_or(0),
    }))
}

/// The end of a quoted field starting after its opening quote: the index of the closing
/// quote (a quote escaped with `\` does not close it).
fn closing_quote(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// An nginx or Apache line in the combined (or common) format:
/// `ip ident user [time] "request" status bytes ["referer" "agent"] [time taken]`.
/// The time taken, when the format appends one after the agent, is read as seconds when it
/// has a decimal point (nginx `$request_time`, also as `rt=` or `request_time=`) and as
/// microseconds when it is an integer (Apache `%D`).
fn combined_line(text: &str) -> Result<Line<'_>, &'static str> {
    let open = text.find(" [").ok_or("no [time]")?;
    let rest = &text[open + 2..];
    let close = rest.find(']').ok_or("no [time]")?;
    let at_ms =
        parse_time(&rest[..close]).ok_or("a [time] that is not dd/Mon/yyyy:hh:mm:ss +zzzz")?;
    let rest = rest[close + 1..]
        .trim_start()
        .strip_prefix('"')
        .ok_or("no \"request\"")?;
    let end = closing_quote(rest).ok_or("an unterminated \"request\"")?;
    let request = &rest[..end];
    let mut after = rest[end + 1..].split_ascii_whitespace();
    let status: u16 = after
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..=999).contains(s))
        .ok_or("no status")?;
    let mut parts = request.split(' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err("no request line");
    };
    if method.is_empty() || method == "-" {
        return Err("no request line");
    }
    let path = strip_origin(target);
    // Referer and agent are quoted and may hold spaces; what follows the agent is looked
    // at for a time taken.
    let mut latency = UNTIMED;
    let tail = &rest[end + 1..];
    let mut quotes = 0;
    let mut cut = tail.len();
    let mut i = 0;
    while i < tail.len() {
        if tail.as_bytes()[i] == b'"' {
            match closing_quote(&tail[i + 1..]) {
                Some(j) => {
                    quotes += 1;
                    i += j + 2;
                    if quotes == 2 {
                        cut = i;
                        break;
                    }
                    continue;
                }
                None => break,
            }
        }
        i += 1;
    }
    if quotes == 2 {
        for tok in tail[cut..].split_ascii_whitespace() {
            let v = tok
                .strip_prefix("rt=")
                .or_else(|| tok.strip_prefix("request_time="))
                .unwrap_or(tok)
                .trim_matches('"');
            if v.contains('.') {
                if let Ok(s) = v.parse::<f64>()
                    && s.is_finite()
                    && s >= 0.0
                {
                    latency = Duration::from_secs_f64(s);
                    break;
                }
            } else if let Ok(us) = v.parse::<u64>() {
                latency = Duration::from_micros(us);
                break;
            }
        }
    }
    Ok(Line {
        method: Cow::Borrowed(method),
        path: Cow::Borrowed(path),
        status,
        latency,
        route: Cow::Borrowed("default"),
        new_side: false,
        at_ms,
    })
}

/// The path of a request target: the absolute form (`http://host/path`, sent to proxies)
/// without its scheme and authority.
fn strip_origin(target: &str) -> &str {
    for scheme in ["http://", "https://"] {
        if let Some(after) = target.strip_prefix(scheme) {
            return after.find('/').map_or("/", |i| &after[i..]);
        }
    }
    target
}

/// `10/Oct/2000:13:55:36 -0700` in unix milliseconds.
fn parse_time(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[2] != b'/' || b[6] != b'/' || b[11] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let day = num(0..2)?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == &s[3..6])? as i64
        + 1;
    let year = num(7..11)?;
    let (h, m, sec) = (num(12..14)?, num(15..17)?, num(18..20)?);
    let zone = s[20..].trim();
    let offset = if zone.is_empty() {
        0
    } else {
        let sign = match zone.as_bytes()[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let hh: i64 = zone.get(1..3)?.parse().ok()?;
        let mm: i64 = zone.get(3..5)?.parse().ok()?;
        sign * (hh * 3600 + mm * 60)
    };
    let secs = days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec - offset;
    u64::try_from(secs).ok().map(|s| s * 1000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::inventory::Limits;

    #[test]
    fn times() {
        assert_eq!(parse_time("01/Jan/1970:00:00:00 +0000"), Some(0));
        assert_eq!(
            parse_time("10/Oct/2000:13:55:36 -0700"),
            Some(971_211_336_000)
        );
        assert_eq!(
            parse_time("29/Feb/2024:12:00:00 +0100"),
            Some(1_709_204_400_000)
        );
        assert_eq!(parse_time("10/Foo/2000:13:55:36 -0700"), None);
    }

    #[test]
    fn combined_lines() {
        let l = combined_line(
            r#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /api/users/7?x=1 HTTP/1.0" 503 2326 "http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)" 0.250"#,
        )
        .unwrap();
        assert_eq!(
            (&*l.method, &*l.path, l.status),
            ("GET", "/api/users/7?x=1", 503)
        );
        assert_eq!(l.latency, Duration::from_millis(250));
        let l = combined_line(
            r#"::1 - - [10/Oct/2000:13:55:36 +0000] "POST http://shop.example/api/orders HTTP/1.1" 201 -"#,
        )
        .unwrap();
        assert_eq!((&*l.method, &*l.path), ("POST", "/api/orders"));
        assert_eq!(l.latency, UNTIMED);
        let l = combined_line(
            r#"1.2.3.4 - - [10/Oct/2000:13:55:36 +0000] "GET /a HTTP/1.1" 200 5 "-" "agent \"quoted\"" 1234"#,
        )
        .unwrap();
        assert_eq!(l.latency, Duration::from_micros(1234));
        assert!(
            combined_line(r#"1.2.3.4 - - [10/Oct/2000:13:55:36 +0000] "-" 400 0 "-" "-""#).is_err()
        );
        assert!(combined_line("garbage").is_err());
    }

    #[test]
    fn long_and_broken_lines_are_counted() {
        let mut text = String::new();
        text.push_str(&"x".repeat(MAX_LINE + 10));
        text.push('\n');
        text.push_str("{\"kind\":\"access\",\"method\":\"GET\"}\n");
        text.push_str("{\"level\":\"INFO\",\"message\":\"listening\"}\n");
        text.push_str(
            "{\"ts_ms\":1,\"kind\":\"access\",\"method\":\"GET\",\"path\":\"/a\",\"status\":200,\"duration_ms\":1.5,\"route\":\"r\",\"side\":\"new\"}",
        );
        let mut inv = Inventory::new(Limits::default());
        let c = feed(text.as_bytes(), &mut inv).unwrap();
        assert_eq!(
            (c.lines, c.requests, c.malformed, c.skipped),
            (4, 1, 2, 1),
            "{:?}",
            c.first_malformed
        );
        assert_eq!(c.first_malformed[0].why, "longer than 64 KiB");
        assert_eq!(c.first_malformed[0].text.len(), 200);
        // Borrowed from the line when it has no escapes.
        let j = json_line(r#"{"method":"GET","path":"/a","status":200}"#)
            .unwrap()
            .unwrap();
        assert!(matches!(j.path, Cow::Borrowed(_)));
        let j = json_line(r#"{"method":"GET","path":"/a\u0041","status":200}"#)
            .unwrap()
            .unwrap();
        assert_eq!(j.path, "/aA");
        let m = inv.map();
        assert_eq!(m.templates[0].new_requests, 1);
        assert_eq!(m.templates[0].routes[0].route, "r");
    }
}
