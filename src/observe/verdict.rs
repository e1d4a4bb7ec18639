//! The verdict on legacy vs new (docs/plans.md, "The guard's test"): from both sides' figures, whether
//! the new side is worse, and why.
//!
//! The verdict comes from the anytime-valid sequential tests of [`super::sequential`]: one
//! on the error rates (with the `max_error_rate_delta` margin), one on latency (the share
//! of new's requests slower than `max_p99_ratio` times legacy's p99). Each calls `worse` a
//! new side within the bounds with a chance of at most `1 - confidence` however often it is
//! looked at, so a dashboard refreshed every few seconds or a plan's guard checked every
//! second keeps the level a single look would have.

use serde::Serialize;

use super::sequential::{self, Advance, Counts, Settings};
use super::window::SideFigures;
use crate::config::CompareConfig;

/// The comparison of one route.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouteComparison {
    pub route: String,
    pub percent: serde_json::Value,
    pub legacy: SideFigures,
    pub new: SideFigures,
    /// New's error rate minus legacy's.
    pub error_rate_delta: f64,
    /// New's p99 over legacy's, when both are known.
    pub p99_ratio: Option<f64>,
    pub verdict: Verdict,
    pub reasons: Vec<String>,
    /// Each test's statistic against its threshold.
    pub evidence: Evidence,
    /// How many more requests per side a decision needs at the current rates: while the
    /// verdict is `insufficient_data`, until `min_requests`; while it is `ok`, until the
    /// current rates (if they last) would be called `worse` (`null`: never, they are within
    /// the bounds); 0 once `worse`.
    pub requests_to_decide: Option<u64>,
    /// The advance boundary: whether the figures show the new side no worse than legacy
    /// beyond the margins.
    pub advance: AdvanceJudgement,
}

/// The advance boundary on both tests (`sequential::advance_evidence` and
/// `sequential::latency_advance_evidence`): a step may advance once both are shown (with
/// its hold served and `min_requests` a side).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct AdvanceJudgement {
    /// Each boundary's log likelihood ratio against its threshold, log(1 / beta).
    pub errors: Statistic,
    pub latency: Statistic,
    /// Both shown.
    pub shown: bool,
    /// The error-rate margin used: new's rate may exceed legacy's by this much.
    pub margin: f64,
    /// The requests per side the step needs (on the side with fewer, at the current split):
    /// where a new side as good as legacy, at the observed rates, shows it in most runs;
    /// the larger of the two tests' (`None` without requests on both sides).
    pub needed: Option<u64>,
    /// How many more requests per side until both are shown and both sides have
    /// `min_requests`, if the figures stay as they are: 0 once they are; `None` when no
    /// amount of the same shows it (new is at or beyond a margin), or without requests on
    /// both sides.
    pub requests_to_advance: Option<u64>,
}

impl RouteComparison {
    /// Fails the comparison because the new service's circuit breaker is open: the service
    /// failed often enough for the gateway to stop sending it traffic, whatever the figures
    /// say yet. The breaker comes first among the reasons, and the figures' own reasons stay
    /// only when they call it worse too (an "insufficient data" would read as the cause).
    pub fn breaker_open(&mut self, service: &str) {
        if self.verdict != Verdict::Worse {
            self.reasons.clear();
        }
        self.reasons
            .insert(0, format!("the circuit breaker of {service} is open"));
        self.verdict = Verdict::Worse;
        self.requests_to_decide = Some(0);
        self.advance.shown = false;
        self.advance.requests_to_advance = None;
    }
}

/// The two tests' statistics: `worse` once one reaches its threshold.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Evidence {
    pub errors: Statistic,
    pub latency: Statistic,
}

/// A sequential test's statistic: the log of its mixture likelihood ratio, and the
/// threshold, log(1 / (1 - confidence)), at which it calls `worse`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Statistic {
    pub log_lr: f64,
    pub threshold: f64,
}

impl Statistic {
    fn new(log_lr: f64, threshold: f64) -> Statistic {
        let r = |x: f64| (x * 1000.0).round() / 1000.0;
        Statistic {
            log_lr: r(log_lr),
            threshold: r(threshold),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    InsufficientData,
    Worse,
    /// Not shown worse, but the observed figures are beyond the margin (new's error rate
    /// above legacy's by more than the advance margin, or its p99 above `max_p99_ratio` ×
    /// legacy's): the test has not decided yet. Not healthy, not yet harm.
    Undecided,
    Ok,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::InsufficientData => "insufficient_data",
            Verdict::Worse => "worse",
            Verdict::Undecided => "undecided",
            Verdict::Ok => "ok",
        }
    }
}

/// The sequential tests' settings from the compare section (or a plan's guard).
pub fn settings(cfg: &CompareConfig) -> Settings {
    Settings {
        alpha: 1.0 - cfg.confidence,
        margin: cfg.max_error_rate_delta,
        ..Settings::default()
    }
}

/// The advance boundary's settings from the compare section (or a plan's guard): the
/// defaults of [`Advance`], with `max_error_rate_ratio`, and the error-rate margin's floor
/// `advance_margin` (a plan's `guard.max_error_rate_delta`), else raised to
/// `max_error_rate_delta` when that is more (a new side within the margin the verdict
/// tolerates can then advance).
pub fn advance_settings(cfg: &CompareConfig) -> Advance {
    let a = Advance::default();
    Advance {
        margin_abs: cfg
            .advance_margin
            .unwrap_or_else(|| a.margin_abs.max(cfg.max_error_rate_delta)),
        margin_ratio: cfg.max_error_rate_ratio,
        ..a
    }
}

/// The advance boundary on both tests.
fn advance(
    counts: &Counts,
    legacy: &SideFigures,
    new: &SideFigures,
    cfg: &CompareConfig,
) -> AdvanceJudgement {
    let a = advance_settings(cfg);
    let errors = sequential::advance_evidence(counts, &a);
    let latency =
        sequential::latency_advance_evidence(&legacy.latency, &new.latency, cfg.max_p99_ratio, &a);
    let shown = errors.shown() && latency.shown();
    let short = cfg
        .min_requests
        .saturating_sub(legacy.requests.min(new.requests));
    let requests_to_advance = match (errors.to_advance, latency.to_advance) {
        (Some(e), Some(l)) => Some(e.max(l).max(short)),
        _ => None,
    };
    AdvanceJudgement {
        errors: Statistic::new(errors.log_lr, errors.threshold),
        latency: Statistic::new(latency.log_lr, latency.threshold),
        shown,
        margin: (errors.margin * 1e6).round() / 1e6,
        needed: errors.needed.into_iter().chain(latency.needed).max(),
        requests_to_advance,
    }
}

/// Judges one route from both sides' figures.
pub fn judge(
    route: &str,
    percent: serde_json::Value,
    legacy: SideFigures,
    new: SideFigures,
    cfg: &CompareConfig,
) -> RouteComparison {
    let error_rate_delta = ((new.error_rate - legacy.error_rate) * 1e6).round() / 1e6;
    let p99_ratio = match (legacy.p99_ms, new.p99_ms) {
        (Some(l), Some(n)) if l > 0.0 => Some((n / l * 100.0).round() / 100.0),
        _ => None,
    };
    let s = settings(cfg);
    let counts = Counts {
        legacy_requests: legacy.requests,
        legacy_errors: legacy.errors,
        new_requests: new.requests,
        new_errors: new.errors,
    };
    let errors = sequential::evidence(&counts, &s);
    let latency =
        sequential::latency_evidence(&legacy.latency, &new.latency, cfg.max_p99_ratio, &s);
    let evidence = Evidence {
        errors: Statistic::new(errors.log_lr, errors.threshold),
        latency: Statistic::new(latency.log_lr, latency.threshold),
    };
    let advance = advance(&counts, &legacy, &new, cfg);
    let mut reasons = Vec::new();
    let short = cfg
        .min_requests
        .saturating_sub(legacy.requests.min(new.requests));
    let (verdict, requests_to_decide) = if short > 0 {
        reasons.push(format!(
            "fewer than {} requests on a side (legacy {}, new {})",
            cfg.min_requests, legacy.requests, new.requests
        ));
        (Verdict::InsufficientData, Some(short))
    } else {
        if errors.worse() {
            reasons.push(format!(
                "new error rate higher than legacy's{} (evidence {:.1} over threshold {:.1})",
                if s.margin > 0.0 {
                    format!(" by more than {}", s.margin)
                } else {
                    String::new()
                },
                errors.log_lr,
                errors.threshold
            ));
        }
        if latency.worse() {
            reasons.push(format!(
                "new p99 above {}x legacy's: {:.1}% of new requests slower than {:.1} ms (evidence {:.1} over threshold {:.1})",
                cfg.max_p99_ratio,
                latency.new_slow_share * 100.0,
                latency.slow_ms.unwrap_or(0.0),
                latency.log_lr,
                latency.threshold
            ));
        }
        // Beyond the margin, not yet shown worse: undecided, in words.
        // Latency: more of new's requests above `max_p99_ratio` × legacy's p99 than the 1% a
        // p99 allows plus the latency margin (an observed p99 ratio of a few hundred
        // requests is too noisy to call anything).
        let beyond_margin = error_rate_delta > advance.margin + 1e-9;
        let latency_margin = advance_settings(cfg).latency_margin;
        let beyond_ratio = new.requests >= sequential::LATENCY_MIN_NEW
            && legacy.requests >= sequential::LATENCY_MIN_LEGACY
            && latency.new_slow_share > 0.01 + latency_margin;
        if reasons.is_empty() && (beyond_margin || beyond_ratio) {
            if beyond_margin {
                reasons.push(format!(
                    "new error rate {:.2}% is {:.2} points above legacy's (margin {:.2}): not shown worse yet",
                    new.error_rate * 100.0,
                    error_rate_delta * 100.0,
                    advance.margin * 100.0
                ));
            }
            if beyond_ratio {
                reasons.push(format!(
                    "{:.1}% of new's requests are slower than {}x legacy's p99 (a p99 within the bound allows 1%): not shown worse yet",
                    latency.new_slow_share * 100.0,
                    cfg.max_p99_ratio
                ));
            }
        }
        if !errors.worse() && !latency.worse() {
            let to_worse = [
                sequential::requests_to_decide(&counts, &s),
                sequential::latency_requests_to_decide(
                    &legacy.latency,
                    &new.latency,
                    cfg.max_p99_ratio,
                    &s,
                ),
            ]
            .into_iter()
            .flatten()
            .min();
            let v = if reasons.is_empty() {
                Verdict::Ok
            } else {
                Verdict::Undecided
            };
            (v, to_worse)
        } else {
            (Verdict::Worse, Some(0))
        }
    };
    RouteComparison {
        route: route.to_string(),
        percent,
        legacy,
        new,
        error_rate_delta,
        p99_ratio,
        verdict,
        reasons,
        evidence,
        requests_to_decide,
        advance,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::window::{BUCKETS, bucket_of};

    /// `requests` with `errors`, 98% at `base` ms and 2% at `p99` ms.
    fn fig(requests: u64, errors: u64, base: f64, p99: f64) -> SideFigures {
        let mut latency = vec![0u64; BUCKETS];
        let slow = requests / 50;
        latency[bucket_of((base * 1000.0) as u64)] += requests - slow;
        latency[bucket_of((p99 * 1000.0) as u64)] += slow;
        SideFigures {
            requests,
            errors,
            error_rate: errors as f64 / requests as f64,
            p50_ms: Some(base),
            p90_ms: Some(base),
            p99_ms: Some(p99),
            series: None,
            latency,
        }
    }

    #[test]
    fn verdicts() {
        let cfg = CompareConfig::default();
        let j = |l, n| judge("r", 25.into(), l, n, &cfg);
        let v = |l, n| j(l, n).verdict;
        assert_eq!(
            v(fig(1800, 0, 5.0, 10.0), fig(200, 20, 5.0, 10.0)),
            Verdict::Worse
        );
        assert_eq!(
            v(fig(1000, 10, 5.0, 10.0), fig(1000, 10, 5.0, 10.0)),
            Verdict::Ok
        );
        assert_eq!(
            v(fig(1000, 10, 5.0, 10.0), fig(1000, 13, 5.0, 10.0)),
            Verdict::Ok,
            "noise is not a regression"
        );
        assert_eq!(
            v(fig(5, 0, 5.0, 10.0), fig(5, 5, 5.0, 10.0)),
            Verdict::InsufficientData
        );
        // Latency: 2% of new's requests at 4x legacy's p99 (its p99 is 4x) is worse; the
        // same at 1.2x is within the 1.5 bound.
        let slow = j(fig(20_000, 0, 5.0, 10.0), fig(20_000, 0, 5.0, 40.0));
        assert_eq!(slow.verdict, Verdict::Worse, "{:?}", slow.reasons);
        assert!(slow.reasons[0].contains("p99"), "{:?}", slow.reasons);
        assert!(slow.evidence.latency.log_lr >= slow.evidence.latency.threshold);
        assert_eq!(
            v(fig(20_000, 0, 5.0, 10.0), fig(20_000, 0, 5.0, 12.0)),
            Verdict::Ok
        );
        // A handful of errors in a small canary is not a regression shown, nor healthy
        // either: beyond the margin, undecided, and it says so...
        let canary = j(fig(1000, 0, 5.0, 10.0), fig(50, 1, 5.0, 10.0));
        assert_eq!(canary.verdict, Verdict::Undecided);
        assert!(
            canary.reasons[0].contains("2.00 points above legacy's")
                && canary.reasons[0].contains("not shown worse yet"),
            "{:?}",
            canary.reasons
        );
        // ...a third of its requests failing is.
        assert_eq!(
            v(fig(1000, 0, 5.0, 10.0), fig(60, 20, 5.0, 10.0)),
            Verdict::Worse
        );
    }

    #[test]
    fn it_says_how_many_more_requests_a_decision_needs() {
        let cfg = CompareConfig::default();
        let few = judge(
            "r",
            25.into(),
            fig(45, 0, 5.0, 10.0),
            fig(20, 0, 5.0, 10.0),
            &cfg,
        );
        assert_eq!(few.verdict, Verdict::InsufficientData);
        assert_eq!(few.requests_to_decide, Some(30));
        // 1% against 2%: not decided at 1000 a side; more of the same would be.
        let close = judge(
            "r",
            25.into(),
            fig(1000, 10, 5.0, 10.0),
            fig(1000, 20, 5.0, 10.0),
            &cfg,
        );
        assert_eq!(close.verdict, Verdict::Undecided);
        let more = close.requests_to_decide.unwrap();
        assert!(more > 100 && more < 20_000, "{more}");
        // Equal rates: no amount decides worse.
        let same = judge(
            "r",
            25.into(),
            fig(1000, 10, 5.0, 10.0),
            fig(1000, 10, 5.0, 10.0),
            &cfg,
        );
        assert_eq!(same.requests_to_decide, None);
        let worse = judge(
            "r",
            25.into(),
            fig(1000, 0, 5.0, 10.0),
            fig(100, 40, 5.0, 10.0),
            &cfg,
        );
        assert_eq!(worse.requests_to_decide, Some(0));
    }

    #[test]
    fn the_margin_and_the_confidence_are_the_configs() {
        let mut cfg = CompareConfig::default();
        let (l, n) = (fig(20_000, 200, 5.0, 10.0), fig(20_000, 400, 5.0, 10.0));
        assert_eq!(
            judge("r", 25.into(), l.clone(), n.clone(), &cfg).verdict,
            Verdict::Worse
        );
        cfg.max_error_rate_delta = 0.02;
        assert_eq!(judge("r", 25.into(), l, n, &cfg).verdict, Verdict::Ok);
        let t = judge(
            "r",
            25.into(),
            fig(100, 0, 5.0, 10.0),
            fig(100, 0, 5.0, 10.0),
            &cfg,
        );
        assert!((t.evidence.errors.threshold - 100f64.ln()).abs() < 1e-3);
    }

    #[test]
    fn the_advance_boundary_is_judged_beside_the_verdict() {
        let cfg = CompareConfig::default();
        let j = |l, n| judge("r", 25.into(), l, n, &cfg);
        // Equal sides, 50,000 requests a side at 1%: no worse beyond the margins, shown on
        // both tests (new's p99 far within 1.5 × legacy's).
        let same = j(fig(50_000, 500, 5.0, 10.0), fig(50_000, 500, 5.0, 10.0));
        assert_eq!(same.verdict, Verdict::Ok);
        let adv = same.advance;
        assert!(adv.shown, "{adv:?}");
        assert!(adv.errors.log_lr >= adv.errors.threshold);
        assert!(adv.latency.log_lr >= adv.latency.threshold);
        assert!((adv.errors.threshold - 25f64.ln()).abs() < 1e-3);
        assert_eq!(adv.margin, 0.005);
        assert_eq!(adv.requests_to_advance, Some(0));
        let needed = adv.needed.unwrap();
        assert!((1000..50_000).contains(&needed), "{needed}");
        let json = serde_json::to_value(&same).unwrap();
        assert_eq!(json["advance"]["shown"], true);
        assert_eq!(json["advance"]["needed"], needed);
        // The same rates on 500 a side: not yet, and it says how many more.
        let early = j(fig(500, 5, 5.0, 10.0), fig(500, 5, 5.0, 10.0));
        assert!(!early.advance.shown);
        let more = early.advance.requests_to_advance.unwrap();
        assert!(more > 500 && more < 50_000, "{more}");
        // A doubled error rate is not shown fit, and no amount of the same would be.
        let doubled = j(fig(5000, 50, 5.0, 10.0), fig(5000, 100, 5.0, 10.0));
        assert!(!doubled.advance.shown);
        assert_eq!(doubled.advance.requests_to_advance, None);
        assert!(doubled.advance.errors.log_lr < 0.0);
        // Below min_requests, the shortfall counts.
        let few = j(fig(30_000, 0, 5.0, 10.0), fig(40, 0, 5.0, 10.0));
        assert!(few.advance.requests_to_advance.unwrap() >= 10);
        // An open breaker: not fit to advance whatever the figures.
        let mut broken = same.clone();
        broken.breaker_open("svc");
        assert!(!broken.advance.shown);
        assert_eq!(broken.advance.requests_to_advance, None);
    }

    #[test]
    fn the_advance_margin_follows_the_config() {
        let mut cfg = CompareConfig::default();
        let no_errors = |cfg: &CompareConfig| {
            judge(
                "r",
                25.into(),
                fig(2000, 0, 5.0, 10.0),
                fig(2000, 0, 5.0, 10.0),
                cfg,
            )
            .advance
        };
        // Without errors, the floor: 0.05 point.
        assert_eq!(no_errors(&cfg).margin, 0.0005);
        // A larger tolerated difference raises it.
        cfg.max_error_rate_delta = 0.002;
        assert_eq!(no_errors(&cfg).margin, 0.002);
        // The relative margin, at legacy's 4%: (2 - 1) × 4%.
        cfg.max_error_rate_delta = 0.0;
        cfg.max_error_rate_ratio = 2.0;
        let a = judge(
            "r",
            25.into(),
            fig(2000, 80, 5.0, 10.0),
            fig(2000, 80, 5.0, 10.0),
            &cfg,
        )
        .advance;
        assert_eq!(a.margin, 0.04);
    }
}
