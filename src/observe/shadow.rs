//! Shadow comparison (docs/shadow.md): legacy's answer against the new side's answer to a
//! copy of the same request, and legacy against itself to learn which fields are noise.
//!
//! Pure and off the request path: the proxy hands in the answers once both are complete;
//! this module compares them, learns the noise, and keeps each route's report (counts by
//! result, per-field mismatch counts, the last mismatches) for `GET /admin/shadow/{route}`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Read as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, header};
use serde_json::{Value, json};

use crate::config::shadow::{Pointer, ShadowConfig};

/// Mismatches kept per route for the report.
pub const KEPT_MISMATCHES: usize = 50;
/// Differences kept per mismatch.
pub const KEPT_DIFFERENCES: usize = 10;
/// Legacy pairs compared before any field is called noise.
pub const MIN_NOISE_PAIRS: u64 = 5;
/// The longest value a kept difference shows (in bytes of JSON): a larger one is
/// described (its type and size) instead of kept.
const SHOWN_VALUE: usize = 256;
/// The longest window a recent match rate can be asked over (the plan's
/// `guard.shadow_window`): compared copies are kept as counts per second for this long.
pub const MAX_RECENT: Duration = crate::config::plan::MAX_SHADOW_WINDOW;
/// Distinct fields counted per route (mismatches and noise); further ones are counted
/// under `(other)`, so a body full of generated keys cannot grow the report without bound.
const MAX_FIELDS: usize = 1000;

/// Headers never compared: framing, hop-by-hop, the date, and what gateways add.
const ALWAYS_IGNORED: &[&str] = &[
    "date",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "via",
    "x-request-id",
];

/// A complete answer, as compared.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    /// `None`: larger than `max_body`, not kept.
    pub body: Option<Bytes>,
}

/// A copy's outcome: the `result` label of `strangler_shadow_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Match,
    StatusMismatch,
    HeaderMismatch,
    BodyMismatch,
    /// The copy failed on the new side (no answer, or a broken one).
    Error,
    /// Not sent: the budget was full, or legacy's own exchange failed.
    Skipped,
    /// Not compared: a body (request or answer) over `max_body`.
    TooLarge,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Match,
        Outcome::StatusMismatch,
        Outcome::HeaderMismatch,
        Outcome::BodyMismatch,
        Outcome::Error,
        Outcome::Skipped,
        Outcome::TooLarge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Match => "match",
            Outcome::StatusMismatch => "status_mismatch",
            Outcome::HeaderMismatch => "header_mismatch",
            Outcome::BodyMismatch => "body_mismatch",
            Outcome::Error => "error",
            Outcome::Skipped => "skipped",
            Outcome::TooLarge => "too_large",
        }
    }

    /// Whether the copy was compared (counts in the match rate).
    pub fn compared(self) -> bool {
        !matches!(self, Outcome::Skipped | Outcome::TooLarge)
    }
}

/// One difference between two answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// `status`, `header:NAME`, a JSON pointer (`/items/0/price`), or `body` (not JSON).
    pub field: String,
    /// The field with array indices generalized (`/items/*/price`): what is counted.
    pub general: String,
    pub legacy: Value,
    pub new: Value,
}

/// Every difference between `a` and `b` that is not ignored (`noisy` says which general
/// JSON fields are noise), in order: status, headers, body.
pub fn differences(
    a: &Answer,
    b: &Answer,
    cfg: &ShadowConfig,
    noisy: &dyn Fn(&str) -> bool,
) -> Vec<Difference> {
    let mut out = Vec::new();
    if a.status != b.status {
        out.push(Difference {
            field: "status".into(),
            general: "status".into(),
            legacy: json!(a.status),
            new: json!(b.status),
        });
    }
    let ignored = |name: &HeaderName| {
        ALWAYS_IGNORED.contains(&name.as_str())
            || name.as_str().starts_with("x-strangler-")
            || cfg.ignore_headers.contains(name)
    };
    let mut names: Vec<&HeaderName> = a.headers.keys().chain(b.headers.keys()).collect();
    names.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    names.dedup();
    for name in names {
        if ignored(name) {
            continue;
        }
        let values = |h: &HeaderMap| -> Vec<String> {
            h.get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect()
        };
        let (va, vb) = (values(&a.headers), values(&b.headers));
        if va != vb {
            let field = format!("header:{name}");
            out.push(Difference {
                general: field.clone(),
                field,
                legacy: header_value(&va),
                new: header_value(&vb),
            });
        }
    }
    let (Some(ba), Some(bb)) = (&a.body, &b.body) else {
        return out;
    };
    // Compressed bodies are compared as what they say, not as bytes: two encoders (or two
    // levels of one) write the same JSON differently.
    let (ba, bb) = (
        decoded(&a.headers, ba, cfg.max_body),
        decoded(&b.headers, bb, cfg.max_body),
    );
    match (json_body(&a.headers, &ba), json_body(&b.headers, &bb)) {
        (Some(ja), Some(jb)) => {
            let mut path = Vec::new();
            let mut general = Vec::new();
            diff_json(&ja, &jb, &mut path, &mut general, cfg, noisy, &mut out);
        }
        _ => {
            if ba != bb {
                out.push(Difference {
                    field: "body".into(),
                    general: "body".into(),
                    legacy: json!(format!("{} bytes", ba.len())),
                    new: json!(format!("{} bytes", bb.len())),
                });
            }
        }
    }
    out
}

fn header_value(v: &[String]) -> Value {
    match v {
        [] => Value::Null,
        [one] => json!(one),
        many => json!(many),
    }
}

/// The body with its `Content-Encoding` (`gzip` or `deflate`) undone, up to `limit` bytes;
/// as it is when it has no such encoding, or does not decode within the limit.
fn decoded<'a>(headers: &HeaderMap, body: &'a Bytes, limit: u64) -> Cow<'a, [u8]> {
    let coding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    let reader: Box<dyn std::io::Read + '_> = match coding.as_deref() {
        Some("gzip" | "x-gzip") => Box::new(flate2::read::GzDecoder::new(&body[..])),
        // HTTP's `deflate` is zlib's format.
        Some("deflate") => Box::new(flate2::read::ZlibDecoder::new(&body[..])),
        _ => return Cow::Borrowed(body),
    };
    let mut out = Vec::new();
    match reader.take(limit.saturating_add(1)).read_to_end(&mut out) {
        Ok(n) if n as u64 <= limit => Cow::Owned(out),
        _ => Cow::Borrowed(body),
    }
}

/// The body as JSON, when its content type says JSON (or it has none) and it parses.
fn json_body(headers: &HeaderMap, body: &[u8]) -> Option<Value> {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|t| t.to_ascii_lowercase().contains("json"));
    if !json_type || body.is_empty() {
        return None;
    }
    serde_json::from_slice(body).ok()
}

fn pointer_of(path: &[String]) -> String {
    let mut s = String::new();
    for seg in path {
        s.push('/');
        s.push_str(&seg.replace('~', "~0").replace('/', "~1"));
    }
    s
}

fn diff_json(
    a: &Value,
    b: &Value,
    path: &mut Vec<String>,
    general: &mut Vec<String>,
    cfg: &ShadowConfig,
    noisy: &dyn Fn(&str) -> bool,
    out: &mut Vec<Difference>,
) {
    if cfg.ignore_json.iter().any(|p: &Pointer| p.matches(path)) {
        return;
    }
    match (a, b) {
        (Value::Object(oa), Value::Object(ob)) => {
            let mut keys: Vec<&String> = oa.keys().chain(ob.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                path.push(k.clone());
                general.push(k.clone());
                let (va, vb) = (oa.get(k), ob.get(k));
                match (va, vb) {
                    (Some(x), Some(y)) => diff_json(x, y, path, general, cfg, noisy, out),
                    _ => leaf(va, vb, path, general, cfg, noisy, out),
                }
                path.pop();
                general.pop();
            }
        }
        // 10 and 10.0 are the same number.
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        (Value::Array(xa), Value::Array(xb)) => {
            for i in 0..xa.len().max(xb.len()) {
                path.push(i.to_string());
                general.push("*".into());
                match (xa.get(i), xb.get(i)) {
                    (Some(x), Some(y)) => diff_json(x, y, path, general, cfg, noisy, out),
                    (va, vb) => leaf(va, vb, path, general, cfg, noisy, out),
                }
                path.pop();
                general.pop();
            }
        }
        _ if a == b => {}
        _ => leaf(Some(a), Some(b), path, general, cfg, noisy, out),
    }
}

/// A differing value (or one side without it), unless ignored or noise.
fn leaf(
    a: Option<&Value>,
    b: Option<&Value>,
    path: &[String],
    general: &[String],
    cfg: &ShadowConfig,
    noisy: &dyn Fn(&str) -> bool,
    out: &mut Vec<Difference>,
) {
    if cfg.ignore_json.iter().any(|p| p.matches(path)) {
        return;
    }
    let g = pointer_of(general);
    if noisy(&g) {
        return;
    }
    let shown = |v: Option<&Value>| v.map_or_else(|| json!("(absent)"), shown_value);
    out.push(Difference {
        field: pointer_of(path),
        general: g,
        legacy: shown(a),
        new: shown(b),
    });
}

/// A value as a kept difference shows it: itself when small, else its type and size (a
/// report of 50 mismatches must not hold 50 copies of large documents).
fn shown_value(v: &Value) -> Value {
    let size = serde_json::to_string(v).map_or(usize::MAX, |s| s.len());
    if size <= SHOWN_VALUE {
        return v.clone();
    }
    match v {
        Value::Array(a) => json!(format!("(an array of {} items, {size} bytes)", a.len())),
        Value::Object(o) => json!(format!("(an object of {} keys, {size} bytes)", o.len())),
        Value::String(s) => {
            let cut: String = s.chars().take(SHOWN_VALUE / 2).collect();
            json!(format!("{cut}… ({} bytes)", s.len()))
        }
        other => other.clone(),
    }
}

/// The result of a comparison's differences.
pub fn outcome_of(diffs: &[Difference]) -> Outcome {
    if diffs.iter().any(|d| d.field == "status") {
        Outcome::StatusMismatch
    } else if diffs.iter().any(|d| d.field.starts_with("header:")) {
        Outcome::HeaderMismatch
    } else if diffs.is_empty() {
        Outcome::Match
    } else {
        Outcome::BodyMismatch
    }
}

/// A mismatch kept for the report.
#[derive(Debug, Clone)]
struct Mismatch {
    at_ms: u128,
    method: String,
    path: String,
    legacy_status: u16,
    new_status: u16,
    outcome: Outcome,
    differences: Vec<Difference>,
}

/// What is learned of legacy against itself.
#[derive(Default)]
struct Noise {
    pairs: u64,
    /// By general field: pairs in which it differed.
    differed: HashMap<String, u64>,
}

/// A route's shadow figures and report.
#[derive(Default)]
pub struct RouteShadow {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    counts: BTreeMap<Outcome, u64>,
    /// Compared copies per second, oldest first, over the last [`MAX_RECENT`]: (second,
    /// compared, matched).
    recent: VecDeque<(u64, u32, u32)>,
    /// The second the route last changed (its service, its match or its shadow settings):
    /// copies before it are not the route's as it is now.
    changed_at: u64,
    /// What the route was when it last changed.
    identity: Option<u64>,
    fields: HashMap<String, u64>,
    mismatches: VecDeque<Mismatch>,
    noise: Noise,
}

impl Inner {
    fn match_rate(&self) -> (Option<f64>, u64) {
        let compared: u64 = self
            .counts
            .iter()
            .filter(|(o, _)| o.compared())
            .map(|(_, n)| n)
            .sum();
        let matched = self.counts.get(&Outcome::Match).copied().unwrap_or(0);
        (
            (compared > 0).then(|| matched as f64 / compared as f64),
            compared,
        )
    }

    fn remember(&mut self, now: u64, matched: bool) {
        while self
            .recent
            .front()
            .is_some_and(|(t, _, _)| now.saturating_sub(*t) >= MAX_RECENT.as_secs())
        {
            self.recent.pop_front();
        }
        match self.recent.back_mut() {
            Some((t, n, m)) if *t == now => {
                *n += 1;
                *m += u32::from(matched);
            }
            _ => self.recent.push_back((now, 1, u32::from(matched))),
        }
    }

    fn match_rate_over(&self, now: u64, window: Duration) -> (Option<f64>, u64) {
        let from = now
            .saturating_sub(window.as_secs().saturating_sub(1))
            .max(self.changed_at);
        let (n, m) = self
            .recent
            .iter()
            .filter(|(t, _, _)| *t >= from)
            .fold((0u64, 0u64), |(n, m), (_, a, b)| {
                (n + u64::from(*a), m + u64::from(*b))
            });
        ((n > 0).then(|| m as f64 / n as f64), n)
    }
}

/// Whole seconds on a clock of this process (for the per-second counts).
fn second() -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_secs() + 1
}

/// What a copy was, for the report.
pub struct Copied<'a> {
    pub method: &'a str,
    pub path: &'a str,
}

impl RouteShadow {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a copy that was not compared (skipped, too large, failed).
    pub fn count(&self, outcome: Outcome) {
        let mut inner = self.lock();
        *inner.counts.entry(outcome).or_default() += 1;
        if outcome.compared() {
            inner.remember(second(), false);
        }
    }

    /// The match rate of the copies compared over the last `window` (at most
    /// [`MAX_RECENT`]) and since the route last changed, and how many those are: what a
    /// plan's `min_shadow_match` reads (old mismatches, fixed since, age out; a service
    /// that breaks shows at once).
    pub fn recent_match_rate(&self, window: Duration) -> (Option<f64>, u64) {
        self.lock().match_rate_over(second(), window)
    }

    /// Marks the route as it is now (`identity`: a fingerprint of its service, match and
    /// shadow settings): when it differs from the last one, copies before now no longer
    /// count towards the recent match rate.
    pub fn route_is(&self, identity: u64) {
        let mut inner = self.lock();
        if inner.identity.is_some_and(|i| i != identity) {
            inner.changed_at = second();
        }
        inner.identity = Some(identity);
    }

    /// Learns from two answers of legacy to the same request: every general field that
    /// differs between them.
    pub fn learn_noise(&self, a: &Answer, b: &Answer, cfg: &ShadowConfig) {
        let diffs = differences(a, b, cfg, &|_| false);
        let mut inner = self.lock();
        inner.noise.pairs += 1;
        let mut seen: Vec<&str> = diffs
            .iter()
            .filter(|d| d.general.starts_with('/'))
            .map(|d| d.general.as_str())
            .collect();
        seen.sort_unstable();
        seen.dedup();
        for f in seen {
            let known = inner.noise.differed.len();
            match inner.noise.differed.get_mut(f) {
                Some(n) => *n += 1,
                None if known < MAX_FIELDS => {
                    inner.noise.differed.insert(f.to_string(), 1);
                }
                None => {}
            }
        }
    }

    /// Compares legacy's answer with the new side's, counts the result and keeps a
    /// mismatch for the report. Fields learned as noise are not counted.
    pub fn compare(
        &self,
        copied: &Copied<'_>,
        legacy: &Answer,
        new: &Answer,
        cfg: &ShadowConfig,
        threshold: Option<f64>,
        at_ms: u128,
    ) -> Outcome {
        let noisy: Vec<String> = threshold.map_or_else(Vec::new, |t| self.noisy(t));
        let diffs = differences(legacy, new, cfg, &|g| noisy.iter().any(|n| n == g));
        let outcome = outcome_of(&diffs);
        let mut inner = self.lock();
        *inner.counts.entry(outcome).or_default() += 1;
        inner.remember(second(), outcome == Outcome::Match);
        if outcome == Outcome::Match {
            return outcome;
        }
        let mut general: Vec<&str> = diffs.iter().map(|d| d.general.as_str()).collect();
        general.sort_unstable();
        general.dedup();
        for g in general {
            let known = inner.fields.len();
            match inner.fields.get_mut(g) {
                Some(n) => *n += 1,
                None if known < MAX_FIELDS => {
                    inner.fields.insert(g.to_string(), 1);
                }
                None => *inner.fields.entry("(other)".to_string()).or_default() += 1,
            }
        }
        if inner.mismatches.len() == KEPT_MISMATCHES {
            inner.mismatches.pop_front();
        }
        inner.mismatches.push_back(Mismatch {
            at_ms,
            method: copied.method.to_string(),
            path: copied.path.to_string(),
            legacy_status: legacy.status,
            new_status: new.status,
            outcome,
            differences: diffs.into_iter().take(KEPT_DIFFERENCES).collect(),
        });
        outcome
    }

    /// The general fields learned as noise at `threshold`.
    fn noisy(&self, threshold: f64) -> Vec<String> {
        let inner = self.lock();
        let pairs = inner.noise.pairs;
        if pairs < MIN_NOISE_PAIRS {
            return Vec::new();
        }
        inner
            .noise
            .differed
            .iter()
            .filter(|(_, n)| **n as f64 / pairs as f64 >= threshold)
            .map(|(f, _)| f.clone())
            .collect()
    }

    /// Matches over compared copies (`None` before any).
    pub fn match_rate(&self) -> (Option<f64>, u64) {
        self.lock().match_rate()
    }

    /// The report of `GET /admin/shadow/{route}`.
    pub fn report(&self, route: &str, cfg: Option<&ShadowConfig>) -> Value {
        let inner = self.lock();
        let (rate, compared) = inner.match_rate();
        let counts: serde_json::Map<String, Value> = Outcome::ALL
            .iter()
            .map(|o| {
                (
                    o.as_str().to_string(),
                    json!(inner.counts.get(o).copied().unwrap_or(0)),
                )
            })
            .collect();
        let mut fields: Vec<(&String, &u64)> = inner.fields.iter().collect();
        fields.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let threshold = cfg.and_then(|c| c.noise).map(|n| n.threshold);
        let pairs = inner.noise.pairs;
        let mut noise: Vec<(&String, &u64)> = inner.noise.differed.iter().collect();
        noise.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let noise: Vec<Value> = noise
            .into_iter()
            .map(|(f, n)| {
                let share = *n as f64 / pairs.max(1) as f64;
                json!({
                    "field": f,
                    "differed": n,
                    "share": share,
                    "noise": pairs >= MIN_NOISE_PAIRS && threshold.is_some_and(|t| share >= t),
                })
            })
            .collect();
        let mismatches: Vec<Value> = inner
            .mismatches
            .iter()
            .rev()
            .map(|m| {
                json!({
                    "at_ms": m.at_ms as u64,
                    "method": m.method,
                    "path": m.path,
                    "legacy_status": m.legacy_status,
                    "new_status": m.new_status,
                    "result": m.outcome.as_str(),
                    "differences": m.differences.iter().map(|d| json!({
                        "field": d.field,
                        "legacy": d.legacy,
                        "new": d.new,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "route": route,
            "configured": cfg.is_some(),
            "results": counts,
            "compared": compared,
            "match_rate": rate,
            "fields": fields.iter().map(|(f, n)| json!({"field": f, "mismatches": n})).collect::<Vec<_>>(),
            "ignored": {
                "headers": cfg.map(|c| c.ignore_headers.iter().map(|h| h.as_str().to_string()).collect::<Vec<_>>()).unwrap_or_default(),
                "json": cfg.map(|c| c.ignore_json.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap_or_default(),
                "always": ALWAYS_IGNORED,
            },
            "noise": {
                "sample": cfg.and_then(|c| c.noise).map(|n| n.sample_bp as f64 / 100.0),
                "threshold": threshold,
                "pairs": pairs,
                "min_pairs": MIN_NOISE_PAIRS,
                "fields": noise,
            },
            "mismatches": mismatches,
        })
    }
}

/// Every route's shadow report, by name, kept across reloads.
#[derive(Default)]
pub struct Shadows {
    routes: Mutex<HashMap<String, Arc<RouteShadow>>>,
}

impl Shadows {
    pub fn new() -> Arc<Shadows> {
        Arc::default()
    }

    /// A route's report (made on first use).
    pub fn route(&self, name: &str) -> Arc<RouteShadow> {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// The report of `GET /admin/shadow/{route}`, without making an entry for a route
    /// that has none (an empty one is reported).
    pub fn report(&self, name: &str, cfg: Option<&ShadowConfig>) -> Value {
        match self.get(name) {
            Some(r) => r.report(name, cfg),
            None => RouteShadow::default().report(name, cfg),
        }
    }

    /// A route's report if it has one.
    pub fn get(&self, name: &str) -> Option<Arc<RouteShadow>> {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::shadow::{DEFAULT_MAX_BODY, NoiseConfig};

    fn cfg(ignore: &[&str]) -> ShadowConfig {
        ShadowConfig {
            percent_bp: 10_000,
            methods: vec![http::Method::GET],
            max_body: DEFAULT_MAX_BODY,
            ignore_headers: vec![HeaderName::from_static("x-trace")],
            ignore_json: ignore.iter().map(|p| Pointer::parse(p).unwrap()).collect(),
            noise: Some(NoiseConfig {
                sample_bp: 10_000,
                threshold: 0.5,
            }),
        }
    }

    const COPIED: Copied<'static> = Copied {
        method: "GET",
        path: "/x",
    };

    fn answer(status: u16, body: &str) -> Answer {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        Answer {
            status,
            headers,
            body: Some(Bytes::from(body.to_string())),
        }
    }

    #[test]
    fn json_differences_name_their_pointer_and_skip_ignored_fields() {
        let c = cfg(&["/generated_at", "/items/*/etag"]);
        let a = answer(
            200,
            r#"{"id":1,"generated_at":"x","items":[{"price":5,"etag":"a"},{"price":6}]}"#,
        );
        let b = answer(
            200,
            r#"{"id":1,"generated_at":"y","items":[{"price":5,"etag":"b"},{"price":7}],"extra":true}"#,
        );
        let d = differences(&a, &b, &c, &|_| false);
        let fields: Vec<&str> = d.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["/extra", "/items/1/price"]);
        assert_eq!(d[1].general, "/items/*/price");
        assert_eq!(d[1].legacy, json!(6));
        assert_eq!(d[1].new, json!(7));
        assert_eq!(outcome_of(&d), Outcome::BodyMismatch);
    }

    #[test]
    fn status_then_headers_then_body() {
        let c = cfg(&[]);
        let a = answer(200, "{}");
        let mut b = answer(200, "{}");
        assert_eq!(
            outcome_of(&differences(&a, &b, &c, &|_| false)),
            Outcome::Match
        );
        b.headers.insert("x-trace", "1".parse().unwrap());
        b.headers.insert(header::DATE, "now".parse().unwrap());
        assert_eq!(
            outcome_of(&differences(&a, &b, &c, &|_| false)),
            Outcome::Match
        );
        b.headers
            .insert("cache-control", "no-store".parse().unwrap());
        let d = differences(&a, &b, &c, &|_| false);
        assert_eq!(d[0].field, "header:cache-control");
        assert_eq!(outcome_of(&d), Outcome::HeaderMismatch);
        b.status = 500;
        assert_eq!(
            outcome_of(&differences(&a, &b, &c, &|_| false)),
            Outcome::StatusMismatch
        );
    }

    #[test]
    fn numbers_compare_by_value_and_large_values_are_described() {
        let c = cfg(&[]);
        let a = answer(200, r#"{"n":10,"big":[1,2,3]}"#);
        let b = answer(200, r#"{"n":10.0,"big":[1,2,3]}"#);
        assert!(differences(&a, &b, &c, &|_| false).is_empty());
        let long: Vec<u32> = (0..200).collect();
        let big = answer(200, &json!({"n": 10, "big": long}).to_string());
        let none = answer(200, r#"{"n":10,"big":null}"#);
        let d = differences(&big, &none, &c, &|_| false);
        assert_eq!(d[0].field, "/big");
        let shown = d[0].legacy.as_str().unwrap();
        assert!(shown.starts_with("(an array of 200 items"), "{shown}");
    }

    #[test]
    fn the_recent_rate_counts_the_window_since_the_last_change() {
        let mut inner = Inner::default();
        // An hour and a half of copies, one a second: a mismatch every tenth second in the
        // first hour, none after.
        for t in 1..=5400u64 {
            inner.remember(t, t > 3600 || t % 10 != 0);
        }
        // Over the last ten minutes: all matched.
        assert_eq!(
            inner.match_rate_over(5400, Duration::from_secs(600)),
            (Some(1.0), 600)
        );
        // Over the last hour: half an hour of each.
        let (rate, n) = inner.match_rate_over(5400, Duration::from_secs(3600));
        assert_eq!(n, 3600);
        assert!((rate.unwrap() - 0.95).abs() < 1e-9, "{rate:?}");
        // Nothing is kept beyond the longest window.
        assert!(inner.recent.len() <= MAX_RECENT.as_secs() as usize);
        // A change of the route: only the copies since count.
        inner.changed_at = 5391;
        assert_eq!(
            inner.match_rate_over(5400, Duration::from_secs(600)),
            (Some(1.0), 10)
        );
    }

    fn gzipped(body: &str, level: u32) -> Bytes {
        use std::io::Write as _;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        e.write_all(body.as_bytes()).unwrap();
        Bytes::from(e.finish().unwrap())
    }

    #[test]
    fn compressed_bodies_compare_as_what_they_say() {
        let c = cfg(&[]);
        let text =
            r#"{"id":1,"items":[{"price":5},{"price":6}],"note":"aaaaaaaaaaaaaaaaaaaaaaaa"}"#;
        let mut a = answer(200, "");
        a.headers
            .insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        a.body = Some(gzipped(text, 1));
        let mut b = a.clone();
        b.body = Some(gzipped(text, 9));
        assert_ne!(a.body, b.body, "two levels write different bytes");
        assert!(differences(&a, &b, &c, &|_| false).is_empty());
        // One field apart: named by its pointer, as for plain JSON.
        b.body = Some(gzipped(&text.replace("6}", "7}"), 9));
        let d = differences(&a, &b, &c, &|_| false);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].field, "/items/1/price");
        // Against the same JSON sent plain: only the header differs.
        let plain = answer(200, text);
        let d = differences(&a, &plain, &c, &|_| false);
        let fields: Vec<&str> = d.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["header:content-encoding"]);
        // Decoding past max_body (a bomb) is not done: the bytes are compared.
        let mut small = cfg(&[]);
        small.max_body = 16;
        let d = differences(&a, &plain, &small, &|_| false);
        assert!(d.iter().any(|d| d.field == "body"), "{d:?}");
    }

    #[test]
    fn non_json_bodies_compare_byte_for_byte() {
        let c = cfg(&[]);
        let mut a = answer(200, "<p>a</p>");
        a.headers
            .insert(header::CONTENT_TYPE, "text/html".parse().unwrap());
        let mut b = a.clone();
        assert!(differences(&a, &b, &c, &|_| false).is_empty());
        b.body = Some(Bytes::from_static(b"<p>b</p>"));
        let d = differences(&a, &b, &c, &|_| false);
        assert_eq!(d[0].field, "body");
    }

    #[test]
    fn a_field_legacy_disagrees_with_itself_on_is_learned_and_no_longer_counted() {
        let c = cfg(&[]);
        let r = RouteShadow::default();
        let copied = COPIED;
        let legacy = |t: u32| answer(200, &format!(r#"{{"ts":{t},"price":5}}"#));
        // Before the noise is known, the timestamp counts.
        let o = r.compare(&copied, &legacy(1), &legacy(2), &c, Some(0.5), 0);
        assert_eq!(o, Outcome::BodyMismatch);
        for t in 0..MIN_NOISE_PAIRS as u32 {
            r.learn_noise(&legacy(t), &legacy(t + 100), &c);
        }
        let o = r.compare(&copied, &legacy(1), &legacy(2), &c, Some(0.5), 0);
        assert_eq!(o, Outcome::Match);
        // A field only new changes keeps counting.
        let new = answer(200, r#"{"ts":9,"price":6}"#);
        let o = r.compare(&copied, &legacy(1), &new, &c, Some(0.5), 0);
        assert_eq!(o, Outcome::BodyMismatch);
        let report = r.report("x", Some(&c));
        assert_eq!(report["noise"]["fields"][0]["field"], "/ts");
        assert_eq!(report["noise"]["fields"][0]["noise"], true);
        assert_eq!(report["fields"][0]["field"], "/price");
        assert_eq!(report["mismatches"][0]["differences"][0]["field"], "/price");
    }
}
