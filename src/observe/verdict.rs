//! The verdict on legacy vs new (README "Legacy vs new"): from both sides' figures over a
//! window, whether the new side is worse, and why.
//!
//! The distributions come from `statrs`: the normal for the two-proportion z-test and the
//! hypergeometric for Fisher's exact test, which decides where expected counts are small.

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, DiscreteCDF, Hypergeometric, Normal};

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
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    InsufficientData,
    Worse,
    Ok,
}

/// The significance level of "new's error rate is higher": one-sided, 99%.
const ALPHA: f64 = 0.01;
/// Below this many requests on a side, p99 is one or two requests: the p99 ratio is not
/// judged (the error rates still are).
pub const MIN_FOR_P99: u64 = 200;

/// The one-sided critical value of the standard normal at `1 - ALPHA` (2.326).
fn z_critical() -> f64 {
    Normal::standard().inverse_cdf(1.0 - ALPHA)
}

/// The two-proportion z statistic of new's error rate over legacy's (pooled variance).
pub fn z_score(legacy: &SideFigures, new: &SideFigures) -> f64 {
    let (n1, n2) = (legacy.requests as f64, new.requests as f64);
    if n1 == 0.0 || n2 == 0.0 {
        return 0.0;
    }
    let pooled = (legacy.errors + new.errors) as f64 / (n1 + n2);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if se == 0.0 {
        return 0.0;
    }
    (new.error_rate - legacy.error_rate) / se
}

/// One-sided Fisher exact test: with the errors of both sides pooled, the probability that
/// new, drawing `n2` of the `n1 + n2` requests, gets at least the `e2` errors it got (the
/// upper tail of the hypergeometric distribution).
fn fisher_p(n1: u64, e1: u64, n2: u64, e2: u64) -> f64 {
    match (e2, Hypergeometric::new(n1 + n2, e1 + e2, n2)) {
        (0, _) => 1.0,
        (_, Ok(h)) => h.sf(e2 - 1).clamp(0.0, 1.0),
        (_, Err(_)) => 1.0,
    }
}

/// Whether new's error rate is higher with significance at 99%, and how it was judged.
/// Large samples use the two-proportion z-test; where an expected count is under 5 (few
/// errors, or few requests), the normal approximation is poor and Fisher's exact test
/// decides instead (one error among 50 requests against none among 1000 is not a
/// regression at 99%).
pub fn error_rate_worse(legacy: &SideFigures, new: &SideFigures) -> Option<String> {
    let (n1, n2) = (legacy.requests, new.requests);
    if n1 == 0 || n2 == 0 || new.error_rate <= legacy.error_rate {
        return None;
    }
    let pooled = (legacy.errors + new.errors) as f64 / (n1 + n2) as f64;
    let min_expected = [n1 as f64, n2 as f64]
        .iter()
        .flat_map(|n| [n * pooled, n * (1.0 - pooled)])
        .fold(f64::INFINITY, f64::min);
    if min_expected < 5.0 {
        let p = fisher_p(n1, legacy.errors, n2, new.errors);
        return (p < ALPHA).then(|| format!("new error rate higher (Fisher exact p = {p:.4})"));
    }
    let z = z_score(legacy, new);
    (z > z_critical()).then(|| format!("new error rate higher (z = {z:.1})"))
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
    let mut reasons = Vec::new();
    let verdict = if legacy.requests < cfg.min_requests || new.requests < cfg.min_requests {
        reasons.push(format!(
            "fewer than {} requests on a side (legacy {}, new {})",
            cfg.min_requests, legacy.requests, new.requests
        ));
        Verdict::InsufficientData
    } else {
        if let Some(why) = error_rate_worse(&legacy, &new) {
            reasons.push(why);
        }
        let p99_judged = legacy.requests >= MIN_FOR_P99 && new.requests >= MIN_FOR_P99;
        if let Some(r) = p99_ratio.filter(|r| p99_judged && *r > cfg.max_p99_ratio) {
            reasons.push(format!(
                "new p99 is {r:.2}x legacy's (bound {})",
                cfg.max_p99_ratio
            ));
        }
        if reasons.is_empty() {
            Verdict::Ok
        } else {
            Verdict::Worse
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(requests: u64, errors: u64, p99: f64) -> SideFigures {
        SideFigures {
            requests,
            errors,
            error_rate: errors as f64 / requests as f64,
            p50_ms: Some(p99 / 2.0),
            p90_ms: Some(p99 / 1.5),
            p99_ms: Some(p99),
            series: None,
        }
    }

    #[test]
    fn verdicts() {
        let cfg = CompareConfig::default();
        let j = |l, n| judge("r", 25.into(), l, n, &cfg).verdict;
        assert_eq!(j(fig(1800, 0, 10.0), fig(200, 20, 10.0)), Verdict::Worse);
        assert_eq!(
            j(fig(1000, 0, 10.0), fig(1000, 0, 16.0)),
            Verdict::Worse,
            "p99 ratio 1.6"
        );
        assert_eq!(j(fig(1000, 10, 10.0), fig(1000, 10, 10.0)), Verdict::Ok);
        assert_eq!(
            j(fig(1000, 10, 10.0), fig(1000, 13, 10.0)),
            Verdict::Ok,
            "noise is not a regression"
        );
        assert_eq!(
            j(fig(5, 0, 10.0), fig(5, 5, 10.0)),
            Verdict::InsufficientData
        );
        assert_eq!(
            j(fig(1000, 0, 10.0), fig(1000, 0, 16.0)),
            Verdict::Worse,
            "p99 ratio 1.6"
        );
        assert_eq!(j(fig(1000, 0, 10.0), fig(1000, 0, 14.0)), Verdict::Ok);
        // One error in a small canary is not a regression at 99% (Fisher: p = 0.048)...
        assert_eq!(j(fig(1000, 0, 10.0), fig(50, 1, 10.0)), Verdict::Ok);
        // ...four are (p < 0.01).
        assert_eq!(j(fig(1000, 0, 10.0), fig(50, 4, 10.0)), Verdict::Worse);
        // p99 from 60 requests is one request: not judged.
        assert_eq!(j(fig(60, 0, 10.0), fig(60, 0, 30.0)), Verdict::Ok);
    }

    #[test]
    fn fisher_matches_a_hand_computed_value() {
        // N = 1050, K = 1 error, 50 drawn: P(X >= 1) = 50 / 1050.
        let p = fisher_p(1000, 0, 50, 1);
        assert!((p - 50.0 / 1050.0).abs() < 1e-9, "{p}");
        // No errors on the new side: nothing to explain.
        assert_eq!(fisher_p(1000, 3, 50, 0), 1.0);
        // The critical value the z-test uses.
        assert!((z_critical() - 2.326).abs() < 1e-3);
    }
}
