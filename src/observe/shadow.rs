//! Shadow comparison (docs/shadow.md): legacy's answer against the new side's answer to a
//! copy of the same request, and legacy against itself to learn which fields are noise.
//!
//! Pure and off the request path: the proxy hands in the answers once both are complete;
//! this module compares them, learns the noise, and keeps each route's report (counts by
//! result, per-field mismatch counts, the last mismatches) for `GET /admin/shadow/{route}`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::Read as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, header};
use serde_json::{Value, json};

use serde::Serialize;

use super::window::{BUCKETS, Registry, SideFigures, Span, Tally, bucket_of};
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
        // Compared as bytes; made text only for a difference to show.
        if a.headers.get_all(name).iter().eq(b.headers.get_all(name)) {
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

/// The kinds of difference a copy can have, each counted apart (a header difference never
/// hides a body regression): the `kind` label of `strangler_shadow_differences_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Status,
    Headers,
    Body,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Status, Kind::Headers, Kind::Body];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Status => "status",
            Kind::Headers => "headers",
            Kind::Body => "body",
        }
    }

    fn of(d: &Difference) -> Kind {
        if d.field == "status" {
            Kind::Status
        } else if d.field.starts_with("header:") {
            Kind::Headers
        } else {
            Kind::Body
        }
    }
}

/// What a comparison found: the copy's result, each kind of difference it had, and both
/// sides' times for the request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compared {
    pub outcome: Outcome,
    /// By [`Kind`]: whether the copy had a difference of that kind.
    pub kinds: [bool; 3],
    /// Legacy's time for the request (its answer's end), and the new side's for the copy.
    pub legacy: Duration,
    pub new: Duration,
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

/// A field that differed: how many copies, and the latest example.
#[derive(Debug, Clone)]
struct Field {
    mismatches: u64,
    /// The request's path, the concrete field (`/items/3/price`), and both values.
    example: (String, String, Value, Value),
}

/// One slot of time (the compare window's slots): the copies' results, their kinds of
/// difference, and both sides' latencies for the compared ones.
#[derive(Debug, Clone)]
struct Slot {
    epoch: u64,
    results: [u64; 7],
    kinds: [u64; 3],
    /// Latency histograms (the window's buckets) of legacy's answers and the new side's, for
    /// the copies compared; empty until the first.
    legacy: Vec<u64>,
    new: Vec<u64>,
}

impl Slot {
    fn new(epoch: u64) -> Slot {
        Slot {
            epoch,
            results: [0; 7],
            kinds: [0; 3],
            legacy: Vec::new(),
            new: Vec::new(),
        }
    }
}

/// A route's shadow figures and report.
pub struct RouteShadow {
    registry: Arc<Registry>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Since the gateway started, or the last reset.
    counts: BTreeMap<Outcome, u64>,
    kinds: [u64; 3],
    /// By slot, oldest first, over the comparison's retention.
    slots: VecDeque<Slot>,
    /// The slot the route last changed in (its service, its match or its shadow settings),
    /// or was reset: copies before it are not the route's as it is now.
    changed_at: u64,
    /// What the route was when it last changed.
    identity: Option<u64>,
    fields: HashMap<String, Field>,
    mismatches: VecDeque<Mismatch>,
    noise: Noise,
}

/// A route's copies over a window, as every view shows them (the API, the CLI, the
/// dashboard, Prometheus, a plan's gate): compared copies are those that reached a verdict
/// (matched, differed or failed on the new side); the match rate is matched over compared.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowFigures {
    pub compared: u64,
    pub matched: u64,
    pub match_rate: Option<f64>,
    /// Copies by result.
    pub results: BTreeMap<&'static str, u64>,
    /// Copies with a difference of each kind (a copy with several counts in each).
    pub differences: BTreeMap<&'static str, u64>,
    /// Legacy's and the new side's times for the same requests (the compared copies).
    pub legacy_p50_ms: Option<f64>,
    pub legacy_p99_ms: Option<f64>,
    pub new_p50_ms: Option<f64>,
    pub new_p99_ms: Option<f64>,
}

impl ShadowFigures {
    /// No copies (figures to add up).
    pub fn empty() -> ShadowFigures {
        ShadowFigures {
            compared: 0,
            matched: 0,
            match_rate: None,
            results: Outcome::ALL.iter().map(|o| (o.as_str(), 0)).collect(),
            differences: Kind::ALL.iter().map(|k| (k.as_str(), 0)).collect(),
            legacy_p50_ms: None,
            legacy_p99_ms: None,
            new_p50_ms: None,
            new_p99_ms: None,
        }
    }

    /// The compared copies, the matched ones and the match rate, from the results.
    pub fn settle(&mut self) {
        self.compared = Outcome::ALL
            .iter()
            .filter(|o| o.compared())
            .map(|o| self.results.get(o.as_str()).copied().unwrap_or(0))
            .sum();
        self.matched = self.results.get("match").copied().unwrap_or(0);
        self.match_rate = (self.compared > 0).then(|| self.matched as f64 / self.compared as f64);
    }
}

/// What a copy was, for the report.
pub struct Copied<'a> {
    pub method: &'a str,
    pub path: &'a str,
}

impl RouteShadow {
    /// A route's report, on the comparison's slots.
    pub fn new(registry: Arc<Registry>) -> RouteShadow {
        RouteShadow {
            registry,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The slot of now, made if needed (the oldest beyond the retention let go).
    fn slot<'a>(&self, inner: &'a mut Inner) -> &'a mut Slot {
        let epoch = self.registry.epoch_now();
        let keep = self.registry.slots() as u64;
        while inner.slots.front().is_some_and(|s| s.epoch + keep <= epoch) {
            inner.slots.pop_front();
        }
        if inner.slots.back().is_none_or(|s| s.epoch != epoch) {
            inner.slots.push_back(Slot::new(epoch));
        }
        inner.slots.back_mut().expect("a slot was just made")
    }

    /// Counts a copy that was not compared, or failed (skipped, too large, an error).
    pub fn count(&self, outcome: Outcome) {
        let mut inner = self.lock();
        *inner.counts.entry(outcome).or_default() += 1;
        self.slot(&mut inner).results[outcome as usize] += 1;
    }

    /// The copies of `span` since the route last changed (or was reset).
    pub fn figures(&self, span: &Span) -> ShadowFigures {
        let inner = self.lock();
        let mut results = [0u64; 7];
        let mut kinds = [0u64; 3];
        let mut legacy = vec![0u64; BUCKETS];
        let mut new = vec![0u64; BUCKETS];
        for s in inner
            .slots
            .iter()
            .filter(|s| span.contains(s.epoch) && s.epoch >= inner.changed_at)
        {
            for (a, b) in results.iter_mut().zip(s.results) {
                *a += b;
            }
            for (a, b) in kinds.iter_mut().zip(s.kinds) {
                *a += b;
            }
            for (a, b) in legacy.iter_mut().zip(&s.legacy) {
                *a += b;
            }
            for (a, b) in new.iter_mut().zip(&s.new) {
                *a += b;
            }
        }
        let compared: u64 = Outcome::ALL
            .iter()
            .filter(|o| o.compared())
            .map(|o| results[*o as usize])
            .sum();
        let matched = results[Outcome::Match as usize];
        let quantiles = |h: Vec<u64>| {
            let n = h.iter().sum();
            let f = SideFigures::of_tally(&Tally {
                requests: n,
                errors: 0,
                latency: h,
            });
            (f.p50_ms, f.p99_ms)
        };
        let (legacy_p50_ms, legacy_p99_ms) = quantiles(legacy);
        let (new_p50_ms, new_p99_ms) = quantiles(new);
        ShadowFigures {
            compared,
            matched,
            match_rate: (compared > 0).then(|| matched as f64 / compared as f64),
            results: Outcome::ALL
                .iter()
                .map(|o| (o.as_str(), results[*o as usize]))
                .collect(),
            differences: Kind::ALL
                .iter()
                .map(|k| (k.as_str(), kinds[*k as usize]))
                .collect(),
            legacy_p50_ms,
            legacy_p99_ms,
            new_p50_ms,
            new_p99_ms,
        }
    }

    /// The figures over the last `window` (what a plan's `min_shadow_match` reads: old
    /// mismatches, fixed since, age out; a service that breaks shows at once), with the
    /// seconds the window covered.
    pub fn recent(&self, window: Duration) -> (ShadowFigures, Duration) {
        let span = self.registry.span(window);
        (self.figures(&span), span.covered)
    }

    /// Marks the route as it is now (`identity`: a fingerprint of its service, match and
    /// shadow settings): when it differs from the last one, copies before now no longer
    /// count in the windowed figures.
    pub fn route_is(&self, identity: u64) {
        let mut inner = self.lock();
        if inner.identity.is_some_and(|i| i != identity) {
            inner.changed_at = self.registry.epoch_now();
        }
        inner.identity = Some(identity);
    }

    /// Starts the comparison afresh (after a fix of the new service): counts, fields and
    /// mismatches are forgotten, and the windowed figures count from now. What was learned
    /// of legacy's noise stays (it is legacy's, not the new side's).
    pub fn reset(&self) {
        let mut inner = self.lock();
        inner.counts.clear();
        inner.kinds = [0; 3];
        inner.slots.clear();
        inner.fields.clear();
        inner.mismatches.clear();
        inner.changed_at = self.registry.epoch_now();
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

    /// Compares legacy's answer with the new side's (their times `legacy_time` and
    /// `new_time`), counts the result and each kind of difference, and keeps a mismatch for
    /// the report. Fields learned as noise are not counted. A status that differs is one
    /// finding: the headers and bodies of two different statuses are not compared.
    #[allow(clippy::too_many_arguments)]
    pub fn compare(
        &self,
        copied: &Copied<'_>,
        legacy: &Answer,
        new: &Answer,
        cfg: &ShadowConfig,
        threshold: Option<f64>,
        at_ms: u128,
        times: (Duration, Duration),
    ) -> Compared {
        let noisy: Vec<String> = threshold.map_or_else(Vec::new, |t| self.noisy(t));
        let mut diffs = differences(legacy, new, cfg, &|g| noisy.iter().any(|n| n == g));
        if diffs.first().is_some_and(|d| d.field == "status") {
            diffs.truncate(1);
        }
        let outcome = outcome_of(&diffs);
        let mut kinds = [false; 3];
        for d in &diffs {
            kinds[Kind::of(d) as usize] = true;
        }
        let mut inner = self.lock();
        *inner.counts.entry(outcome).or_default() += 1;
        for (total, has) in inner.kinds.iter_mut().zip(kinds) {
            *total += u64::from(has);
        }
        let slot = self.slot(&mut inner);
        slot.results[outcome as usize] += 1;
        for (n, has) in slot.kinds.iter_mut().zip(kinds) {
            *n += u64::from(has);
        }
        for (hist, t) in [(&mut slot.legacy, times.0), (&mut slot.new, times.1)] {
            if hist.is_empty() {
                *hist = vec![0; BUCKETS];
            }
            hist[bucket_of(t.as_micros().min(u128::from(u64::MAX)) as u64)] += 1;
        }
        let compared = Compared {
            outcome,
            kinds,
            legacy: times.0,
            new: times.1,
        };
        if outcome == Outcome::Match {
            return compared;
        }
        // One count per field per copy, with its latest example.
        let mut seen: Vec<&str> = Vec::new();
        for d in &diffs {
            if seen.contains(&d.general.as_str()) {
                continue;
            }
            seen.push(&d.general);
            let example = (
                copied.path.to_string(),
                d.field.clone(),
                d.legacy.clone(),
                d.new.clone(),
            );
            let known = inner.fields.len();
            match inner.fields.get_mut(&d.general) {
                Some(f) => {
                    f.mismatches += 1;
                    f.example = example;
                }
                None if known < MAX_FIELDS => {
                    inner.fields.insert(
                        d.general.clone(),
                        Field {
                            mismatches: 1,
                            example,
                        },
                    );
                }
                None => {
                    let other = inner
                        .fields
                        .entry("(other)".to_string())
                        .or_insert_with(|| Field {
                            mismatches: 0,
                            example: example.clone(),
                        });
                    other.mismatches += 1;
                }
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
        compared
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

    /// The report of `GET /admin/shadow/{route}` over `span` (the window's figures; the
    /// fields, mismatches and noise since the gateway started or the last reset), the route
    /// shadowed with `cfg` now: fields its settings ignore now are marked so.
    pub fn report(&self, route: &str, cfg: Option<&ShadowConfig>, span: &Span) -> Value {
        let window = self.figures(span);
        let inner = self.lock();
        let totals: serde_json::Map<String, Value> = Outcome::ALL
            .iter()
            .map(|o| {
                (
                    o.as_str().to_string(),
                    json!(inner.counts.get(o).copied().unwrap_or(0)),
                )
            })
            .collect();
        let threshold = cfg.and_then(|c| c.noise).map(|n| n.threshold);
        let pairs = inner.noise.pairs;
        let is_noise = |f: &str| {
            pairs >= MIN_NOISE_PAIRS
                && threshold.is_some_and(|t| {
                    inner
                        .noise
                        .differed
                        .get(f)
                        .is_some_and(|n| *n as f64 / pairs as f64 >= t)
                })
        };
        let ignored = |general: &str| -> bool {
            if let Some(name) = general.strip_prefix("header:") {
                return header_ignored(name, cfg);
            }
            let path: Vec<String> = general
                .split('/')
                .skip(1)
                .map(|s| s.replace("~1", "/").replace("~0", "~"))
                .collect();
            cfg.is_some_and(|c| c.ignore_json.iter().any(|p| p.matches(&path)))
        };
        let mut fields: Vec<(&String, &Field)> = inner.fields.iter().collect();
        fields.sort_by(|a, b| b.1.mismatches.cmp(&a.1.mismatches).then(a.0.cmp(b.0)));
        let fields: Vec<Value> = fields
            .into_iter()
            .map(|(f, field)| {
                let (path, concrete, legacy, new) = &field.example;
                json!({
                    "field": f,
                    "mismatches": field.mismatches,
                    "ignored": ignored(f),
                    "noise": is_noise(f),
                    "example": {"path": path, "field": concrete, "legacy": legacy, "new": new},
                })
            })
            .collect();
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
                    "ignored": ignored(f),
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
        // The window's figures at the top (as `/admin/compare`'s `shadow` has them), the
        // counts since the start (or the last reset) beside them.
        let mut out = serde_json::to_value(&window).unwrap_or_default();
        let report = json!({
            "route": route,
            "configured": cfg.is_some(),
            "covered_seconds": (span.covered.as_secs_f64() * 10.0).round() / 10.0,
            "since_start": {
                "results": totals,
                "differences": Kind::ALL.iter().map(|k| (k.as_str().to_string(), json!(inner.kinds[*k as usize]))).collect::<serde_json::Map<_, _>>(),
            },
            "fields": fields,
            "ignored": {
                "headers": cfg.map(|c| c.ignore_headers.iter().map(|h| h.as_str().to_string()).collect::<Vec<_>>()).unwrap_or_default(),
                "json": cfg.map(|c| c.ignore_json.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap_or_default(),
                "always": always_ignored(),
            },
            "noise": {
                "sample": cfg.and_then(|c| c.noise).map(|n| n.sample_bp as f64 / 100.0),
                "threshold": threshold,
                "pairs": pairs,
                "min_pairs": MIN_NOISE_PAIRS,
                "fields": noise,
            },
            "mismatches": mismatches,
        });
        if let (Value::Object(out), Value::Object(more)) = (&mut out, report) {
            out.extend(more);
        }
        out
    }

    /// The fields learned as noise and not yet ignored, as the lines of `ignore_json` that
    /// would ignore them (`strangler shadow ROUTE --noise-yaml`).
    pub fn noise_pointers(&self, cfg: Option<&ShadowConfig>) -> Vec<String> {
        let threshold = cfg.and_then(|c| c.noise).map(|n| n.threshold);
        let Some(t) = threshold else {
            return Vec::new();
        };
        let inner = self.lock();
        let pairs = inner.noise.pairs;
        if pairs < MIN_NOISE_PAIRS {
            return Vec::new();
        }
        let mut out: Vec<String> = inner
            .noise
            .differed
            .iter()
            .filter(|(_, n)| **n as f64 / pairs as f64 >= t)
            .map(|(f, _)| f.clone())
            .filter(|f| {
                let path: Vec<String> = f
                    .split('/')
                    .skip(1)
                    .map(|s| s.replace("~1", "/").replace("~0", "~"))
                    .collect();
                !cfg.is_some_and(|c| c.ignore_json.iter().any(|p| p.matches(&path)))
            })
            .collect();
        out.sort();
        out
    }
}

/// Whether a header is left out of comparisons: always (framing, hop-by-hop, the date, what
/// gateways add, `x-strangler-*`), or by the route's `ignore_headers`.
fn header_ignored(name: &str, cfg: Option<&ShadowConfig>) -> bool {
    ALWAYS_IGNORED.contains(&name)
        || name.starts_with("x-strangler-")
        || cfg.is_some_and(|c| c.ignore_headers.iter().any(|h| h.as_str() == name))
}

/// The headers always left out, as the report lists them.
fn always_ignored() -> Vec<&'static str> {
    ALWAYS_IGNORED
        .iter()
        .copied()
        .chain(["x-strangler-*"])
        .collect()
}

/// Every route's shadow report, by name, kept across reloads (a route no longer shadowed,
/// or gone, is let go at the next reload).
pub struct Shadows {
    registry: Arc<Registry>,
    routes: Mutex<HashMap<String, Arc<RouteShadow>>>,
}

impl Shadows {
    /// The reports, on the comparison's slots.
    pub fn new(registry: Arc<Registry>) -> Arc<Shadows> {
        Arc::new(Shadows {
            registry,
            routes: Mutex::new(HashMap::new()),
        })
    }

    /// How many routes have a report.
    pub fn len(&self) -> usize {
        self.routes.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// A route's report (made on first use).
    pub fn route(&self, name: &str) -> Arc<RouteShadow> {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(RouteShadow::new(self.registry.clone())))
            .clone()
    }

    /// The report of `GET /admin/shadow/{route}` over `span`, without making an entry for
    /// a route that has none (an empty one is reported).
    pub fn report(&self, name: &str, cfg: Option<&ShadowConfig>, span: &Span) -> Value {
        match self.get(name) {
            Some(r) => r.report(name, cfg, span),
            None => RouteShadow::new(self.registry.clone()).report(name, cfg, span),
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

    /// Lets go of the reports of routes not shadowed any more (a reload removed them or
    /// their `shadow`): their memory is not kept across many reloads.
    pub fn retain(&self, shadowed: &HashSet<&str>) {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, _| shadowed.contains(name.as_str()));
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

    /// A report on slots of a second, 900 of them.
    fn route() -> RouteShadow {
        let cfg = crate::config::CompareConfig {
            resolution: Duration::from_secs(1),
            retention: Duration::from_secs(900),
            ..Default::default()
        };
        RouteShadow::new(Registry::new(cfg))
    }

    const T: (Duration, Duration) = (Duration::from_millis(10), Duration::from_millis(30));

    #[test]
    fn every_kind_of_difference_is_counted_and_a_status_is_one_finding() {
        let c = cfg(&[]);
        let r = route();
        let mut served = answer(200, r#"{"id":1,"total":10}"#);
        served
            .headers
            .insert("x-served-by", "monolith".parse().unwrap());
        let mut by_new = answer(200, r#"{"id":1,"total":11}"#);
        by_new
            .headers
            .insert("x-served-by", "orders".parse().unwrap());
        // A header and a body difference: both counted, the result the first.
        let got = r.compare(&COPIED, &served, &by_new, &c, None, 0, T);
        assert_eq!(got.outcome, Outcome::HeaderMismatch);
        assert_eq!(got.kinds, [false, true, true]);
        // A 500 against a 200: one finding, not every body field.
        let failed = answer(500, r#"{"error":"boom"}"#);
        let got = r.compare(&COPIED, &served, &failed, &c, None, 0, T);
        assert_eq!(
            (got.outcome, got.kinds),
            (Outcome::StatusMismatch, [true, false, false])
        );
        let f = r.figures(&r.registry.span(Duration::from_secs(60)));
        assert_eq!(f.compared, 2);
        assert_eq!(f.differences["body"], 1);
        assert_eq!(f.differences["headers"], 1);
        assert_eq!(f.differences["status"], 1);
        let report = r.report("x", Some(&c), &r.registry.span(Duration::from_secs(60)));
        let fields: Vec<&str> = report["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["field"].as_str().unwrap())
            .collect();
        assert!(
            !fields.contains(&"/error") && !fields.contains(&"/id"),
            "{fields:?}"
        );
        assert!(
            fields.contains(&"/total") && fields.contains(&"status"),
            "{fields:?}"
        );
        // Both sides' times for the same requests.
        assert!(f.legacy_p50_ms.unwrap() < f.new_p50_ms.unwrap(), "{f:?}");
        // A header ignored since (a reload added it): marked ignored in the report.
        let mut later = cfg(&[]);
        later.ignore_headers.push("x-served-by".parse().unwrap());
        let report = r.report("x", Some(&later), &r.registry.span(Duration::from_secs(60)));
        let served_by = report["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["field"] == "header:x-served-by")
            .unwrap();
        assert_eq!(served_by["ignored"], true);
        assert_eq!(served_by["example"]["legacy"], "monolith");
        assert!(
            report["ignored"]["always"]
                .as_array()
                .unwrap()
                .contains(&json!("x-strangler-*"))
        );
    }

    #[test]
    fn a_reset_or_a_change_of_the_route_starts_the_figures_afresh() {
        let c = cfg(&[]);
        let r = route();
        let (a, b) = (answer(200, "{}"), answer(500, "{}"));
        r.compare(&COPIED, &a, &b, &c, None, 0, T);
        r.compare(&COPIED, &a, &a, &c, None, 0, T);
        let (f, _) = r.recent(Duration::from_secs(60));
        assert_eq!((f.compared, f.matched), (2, 1));
        r.reset();
        let (f, _) = r.recent(Duration::from_secs(60));
        assert_eq!(f.compared, 0);
        r.compare(&COPIED, &a, &a, &c, None, 0, T);
        let (f, _) = r.recent(Duration::from_secs(60));
        assert_eq!((f.compared, f.match_rate), (1, Some(1.0)));
        r.route_is(1);
        r.route_is(2);
        // The slot of the change itself still counts; copies before it would not.
        let inner = r.lock();
        assert_eq!(inner.changed_at, r.registry.epoch_now());
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
        let r = route();
        let copied = COPIED;
        let legacy = |t: u32| answer(200, &format!(r#"{{"ts":{t},"price":5}}"#));
        // Before the noise is known, the timestamp counts.
        let o = r.compare(&copied, &legacy(1), &legacy(2), &c, Some(0.5), 0, T);
        assert_eq!(o.outcome, Outcome::BodyMismatch);
        for t in 0..MIN_NOISE_PAIRS as u32 {
            r.learn_noise(&legacy(t), &legacy(t + 100), &c);
        }
        let o = r.compare(&copied, &legacy(1), &legacy(2), &c, Some(0.5), 0, T);
        assert_eq!(o.outcome, Outcome::Match);
        // A field only new changes keeps counting.
        let new = answer(200, r#"{"ts":9,"price":6}"#);
        let o = r.compare(&copied, &legacy(1), &new, &c, Some(0.5), 0, T);
        assert_eq!(o.outcome, Outcome::BodyMismatch);
        let mut noisy = c.clone();
        noisy.noise = Some(crate::config::shadow::NoiseConfig {
            sample_bp: 500,
            threshold: 0.5,
        });
        assert_eq!(r.noise_pointers(Some(&noisy)), ["/ts"]);
        let report = r.report("x", Some(&noisy), &r.registry.span(Duration::from_secs(60)));
        assert_eq!(report["noise"]["fields"][0]["field"], "/ts");
        assert_eq!(report["noise"]["fields"][0]["noise"], true);
        assert_eq!(report["fields"][0]["field"], "/price");
        assert_eq!(report["mismatches"][0]["differences"][0]["field"], "/price");
    }
}
