//! The verdict on legacy vs new (README "Legacy vs new"): from both sides' figures, whether
//! the new side is worse, and why.
//!
//! The verdict comes from the anytime-valid sequential tests of [`super::sequential`]: one
//! on the error rates (with the `max_error_rate_delta` margin), one on latency (the share
//! of new's requests slower than `max_p99_ratio` times legacy's p99). Each calls `worse` a
//! new side within the bounds with a chance of at most `1 - confidence` however often it is
//! looked at, so a dashboard refreshed every few seconds or a plan's guard checked every
//! second keeps the level a single look would have.

use serde::Serialize;

use super::sequential::{self, Counts, Settings};
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
    Ok,
}

/// The sequential tests' settings from the compare section (or a plan's guard).
pub fn settings(cfg: &CompareConfig) -> Settings {
    Settings {
        alpha: 1.0 - cfg.confidence,
        margin: cfg.max_error_rate_delta,
        ..Settings::default()
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
        if reasons.is_empty() {
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
            (Verdict::Ok, to_worse)
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
        // A handful of errors in a small canary is not a regression...
        assert_eq!(
            v(fig(1000, 0, 5.0, 10.0), fig(50, 1, 5.0, 10.0)),
            Verdict::Ok
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
        assert_eq!(close.verdict, Verdict::Ok);
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
}
