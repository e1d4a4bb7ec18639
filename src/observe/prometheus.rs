//! The legacy-vs-new comparison computed from Prometheus, across every replica it scrapes
//! (docs/operations.md, "Several gateways"): the same figures and verdicts as one gateway's
//! `/admin/compare`, from the counters and histograms each gateway exports.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::shadow::{Kind, Outcome, ShadowFigures};
use super::verdict::{RouteComparison, judge};
use super::window::{BUCKETS, SideFigures, bucket_of, bucket_range};
use crate::config::{CompareConfig, format_percent};

/// Runs one PromQL instant query; the result vector.
async fn query(client: &reqwest::Client, base: &str, promql: &str) -> anyhow::Result<Vec<Value>> {
    let url = format!("{}/api/v1/query", base.trim_end_matches('/'));
    let resp = client
        .get(&url)
        .query(&[("query", promql)])
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach Prometheus at {base}: {e}"))?;
    let v: Value = resp
        .json()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: not JSON: {e}"))?;
    if v["status"] != "success" {
        anyhow::bail!("Prometheus refused {promql}: {}", v["error"]);
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// The `(route, side)` labels of one result series.
fn route_side(m: &Value) -> (String, String) {
    (
        m["metric"]["route"].as_str().unwrap_or("").to_string(),
        m["metric"]["side"].as_str().unwrap_or("").to_string(),
    )
}

/// The value of one result series, when finite.
fn value(m: &Value) -> Option<f64> {
    m["value"][1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite())
}

/// One value per `(route, side)` of a query's result.
fn by_route_side(result: &[Value]) -> BTreeMap<(String, String), f64> {
    result
        .iter()
        .map(|m| (route_side(m), value(m).unwrap_or(0.0)))
        .collect()
}

/// The growth of a counter (or a histogram's buckets) over `window`, per series (per replica)
/// before summing `by`; only what the window covers counts:
///
/// - a series Prometheus had at the window's start: its value now less its value then;
/// - one reset within the window (its replica restarted), of a replica scraped at the
///   window's start: its whole value, counted since the reset;
/// - one that began within the window, after its replica's first scrape in it (the first
///   request of its kind): its whole value, counted from 0;
/// - one seen since its replica's first scrape in the window, when Prometheus (or the
///   replica) started since the window began: from its first sample, never the replica's
///   whole lifetime.
fn growth(metric: &str, by: &str, window: Duration) -> String {
    let w = format!("{}s", window.as_secs().max(1));
    format!(
        "sum by ({by}) (\
         (({metric} - {metric} offset {w}) >= 0) \
         or ({metric} and on (instance, job) (up offset {w})) \
         or ({metric} and (count_over_time({metric}[{w}]) < on (instance, job) group_left count_over_time(up[{w}]))) \
         or ({metric} - min_over_time({metric}[{w}])))"
    )
}

/// How much of `window` the figures cover: from the oldest sample of the gateways'
/// `strangler_config_info` within it to now (0 when there is none).
pub async fn covered(base: &str, window: Duration) -> anyhow::Result<Duration> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    let w = format!("{}s", window.as_secs().max(1));
    let promql = format!("time() - min(min_over_time(timestamp(strangler_config_info)[{w}:1s]))");
    let secs = query(&client, base, &promql)
        .await?
        .first()
        .and_then(value)
        .unwrap_or(0.0);
    Ok(Duration::from_secs_f64(
        secs.clamp(0.0, window.as_secs_f64()),
    ))
}

/// Per route, its shadow copies over `window`, summed across replicas: by result, by kind
/// of difference, and both sides' times for the compared ones (the figures of a gateway's
/// `/admin/compare`, `shadow`).
pub async fn shadow_figures(
    base: &str,
    window: Duration,
) -> anyhow::Result<BTreeMap<String, ShadowFigures>> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    let mut out: BTreeMap<String, ShadowFigures> = BTreeMap::new();
    let route_of = |m: &Value| m["metric"]["route"].as_str().unwrap_or("").to_string();
    let promql = growth("strangler_shadow_requests_total", "route, result", window);
    for m in query(&client, base, &promql).await? {
        let result = m["metric"]["result"].as_str().unwrap_or("");
        let Some(outcome) = Outcome::ALL.iter().find(|o| o.as_str() == result) else {
            continue;
        };
        let f = out.entry(route_of(&m)).or_insert_with(ShadowFigures::empty);
        let n = value(&m).unwrap_or(0.0).round() as u64;
        *f.results.entry(outcome.as_str()).or_default() += n;
    }
    let promql = growth("strangler_shadow_differences_total", "route, kind", window);
    for m in query(&client, base, &promql).await? {
        let kind = m["metric"]["kind"].as_str().unwrap_or("");
        let Some(k) = Kind::ALL.iter().find(|k| k.as_str() == kind) else {
            continue;
        };
        let f = out.entry(route_of(&m)).or_insert_with(ShadowFigures::empty);
        *f.differences.entry(k.as_str()).or_default() += value(&m).unwrap_or(0.0).round() as u64;
    }
    for (q, which) in [(0.5, 50), (0.99, 99)] {
        let promql = format!(
            "histogram_quantile({q}, {})",
            growth(
                "strangler_shadow_duration_seconds_bucket",
                "route, side, le",
                window
            )
        );
        for m in query(&client, base, &promql).await? {
            let Some(f) = out.get_mut(&route_of(&m)) else {
                continue;
            };
            let ms = value(&m).map(|s| (s * 1e5).round() / 100.0);
            match (m["metric"]["side"].as_str(), which) {
                (Some("legacy"), 50) => f.legacy_p50_ms = ms,
                (Some("legacy"), _) => f.legacy_p99_ms = ms,
                (Some("new"), 50) => f.new_p50_ms = ms,
                _ => f.new_p99_ms = ms,
            }
        }
    }
    for f in out.values_mut() {
        f.settle();
    }
    Ok(out)
}

/// Whether any replica reports the circuit breaker of `service` open or half-open.
pub async fn breaker_open(base: &str, service: &str) -> anyhow::Result<bool> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    let promql = format!(
        "max(strangler_breaker_state{{service={}}})",
        serde_json::Value::from(service)
    );
    Ok(query(&client, base, &promql)
        .await?
        .iter()
        .filter_map(value)
        .any(|v| v > 0.0))
}

/// Whether no replica sees a healthy instance of `service` (every replica's health checks
/// send its share to legacy); `false` when the service has no health checks (no series).
pub async fn unhealthy(base: &str, service: &str) -> anyhow::Result<bool> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    let promql = format!(
        "max(strangler_instance_healthy{{service={}}})",
        serde_json::Value::from(service)
    );
    Ok(query(&client, base, &promql)
        .await?
        .iter()
        .filter_map(value)
        .any(|v| v == 0.0))
}

/// Every route's comparison over `window`, from Prometheus at `base`. 5xx answers and gRPC
/// calls failed by the server's fault count as errors, as in the gateway's own figures.
pub async fn compare(
    base: &str,
    window: Duration,
    cfg: &CompareConfig,
) -> anyhow::Result<Vec<RouteComparison>> {
    // Growth over exactly the window, per replica, then summed (see `growth`): exact when
    // nothing restarted, unlike increase()'s extrapolation.
    let growth = |metric: &str, by: &str| growth(metric, by, window);
    let client = reqwest::Client::builder().no_proxy().build()?;
    let requests = by_route_side(
        &query(
            &client,
            base,
            &growth("strangler_requests_total", "route, side"),
        )
        .await?,
    );
    let mut errors = by_route_side(
        &query(
            &client,
            base,
            &growth("strangler_requests_total{code=~\"5..\"}", "route, side"),
        )
        .await?,
    );
    // gRPC calls failed by the server's fault are answered with HTTP 200.
    let grpc_faults = format!(
        "strangler_grpc_responses_total{{grpc_code=~\"{}\"}}",
        super::metrics::GRPC_SERVER_FAULTS
    );
    for (k, v) in by_route_side(&query(&client, base, &growth(&grpc_faults, "route, side")).await?)
    {
        *errors.entry(k).or_default() += v;
    }
    // A new side's 404 or 501 that fell back to legacy is its failure too (its 5xx are
    // counted above).
    let fell_back = growth("strangler_fallbacks_total{reason=~\"404|501\"}", "route");
    for m in query(&client, base, &fell_back).await? {
        let route = m["metric"]["route"].as_str().unwrap_or("").to_string();
        *errors.entry((route, "new".to_string())).or_default() += value(&m).unwrap_or(0.0);
    }
    let mut quantiles: BTreeMap<(String, String), [Option<f64>; 3]> = BTreeMap::new();
    for (i, q) in [0.5, 0.9, 0.99].iter().enumerate() {
        let promql = format!(
            "histogram_quantile({q}, {})",
            growth(
                "strangler_request_duration_seconds_bucket",
                "route, side, le"
            )
        );
        for m in query(&client, base, &promql).await? {
            quantiles.entry(route_side(&m)).or_default()[i] =
                value(&m).map(|s| (s * 1e5).round() / 100.0);
        }
    }
    // The latency histograms themselves, for the latency test: each Prometheus bucket's
    // growth spread over the gateway's finer buckets it covers.
    let mut cumulative: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    let buckets = query(
        &client,
        base,
        &growth(
            "strangler_request_duration_seconds_bucket",
            "route, side, le",
        ),
    )
    .await?;
    for m in &buckets {
        let le = match m["metric"]["le"].as_str() {
            Some("+Inf") => f64::INFINITY,
            Some(s) => s.parse().unwrap_or(f64::INFINITY),
            None => continue,
        };
        cumulative
            .entry(route_side(m))
            .or_default()
            .push((le, value(m).unwrap_or(0.0)));
    }
    let mut percents: BTreeMap<String, f64> = BTreeMap::new();
    for m in query(&client, base, "max by (route) (strangler_route_percent)").await? {
        percents.insert(
            m["metric"]["route"].as_str().unwrap_or("").to_string(),
            value(&m).unwrap_or(0.0),
        );
    }
    let side_figures = |route: &str, side: &str| {
        let k = (route.to_string(), side.to_string());
        let n = requests.get(&k).copied().unwrap_or(0.0).round() as u64;
        let e = errors.get(&k).copied().unwrap_or(0.0).round() as u64;
        let q = quantiles.get(&k).copied().unwrap_or_default();
        let latency = cumulative
            .get(&k)
            .map(|c| spread(c))
            .unwrap_or_else(|| vec![0; BUCKETS]);
        SideFigures {
            requests: n,
            errors: e,
            error_rate: if n == 0 { 0.0 } else { e as f64 / n as f64 },
            p50_ms: q[0].filter(|_| n > 0),
            p90_ms: q[1].filter(|_| n > 0),
            p99_ms: q[2].filter(|_| n > 0),
            series: None,
            latency,
        }
    };
    Ok(percents
        .iter()
        .map(|(route, pct)| {
            let percent = serde_json::from_str(&format_percent((pct * 100.0).round() as u32))
                .unwrap_or(Value::Null);
            judge(
                route,
                percent,
                side_figures(route, "legacy"),
                side_figures(route, "new"),
                cfg,
            )
        })
        .collect())
}

/// A Prometheus histogram (cumulative counts by upper bound `le`, in seconds) laid out in
/// the gateway's latency buckets: each Prometheus bucket's count spread evenly over the
/// gateway buckets its range covers (in proportion to the overlap); the `+Inf` bucket's
/// excess goes just above the last finite bound.
fn spread(cumulative: &[(f64, f64)]) -> Vec<u64> {
    let mut c = cumulative.to_vec();
    c.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out = vec![0f64; BUCKETS];
    let (mut lo_us, mut below) = (0.0f64, 0.0f64);
    for (le, total) in c {
        let n = (total - below).max(0.0);
        below = total.max(below);
        if n == 0.0 {
            if le.is_finite() {
                lo_us = le * 1e6;
            }
            continue;
        }
        if !le.is_finite() {
            out[(bucket_of(lo_us as u64) + 1).min(BUCKETS - 1)] += n;
            continue;
        }
        let hi_us = le * 1e6;
        let (first, last) = (bucket_of(lo_us as u64), bucket_of(hi_us as u64));
        let width = (hi_us - lo_us).max(1e-9);
        for (i, slot) in out.iter_mut().enumerate().take(last + 1).skip(first) {
            let (a, b) = bucket_range(i);
            let overlap = (b.min(hi_us) - a.max(lo_us)).max(0.0);
            *slot += n * overlap / width;
        }
        lo_us = hi_us;
    }
    out.iter().map(|x| x.round() as u64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prometheus_histogram_keeps_its_counts_and_their_place() {
        // 100 requests up to 5 ms, 50 more up to 10 ms, 2 beyond 10 s.
        let h = spread(&[
            (0.005, 100.0),
            (0.01, 150.0),
            (10.0, 150.0),
            (f64::INFINITY, 152.0),
        ]);
        let total: u64 = h.iter().sum();
        assert!((150..=154).contains(&total), "{total}");
        let upto = |us: u64| -> u64 { h[..=bucket_of(us)].iter().sum() };
        assert!((98..=102).contains(&upto(4_990)), "{}", upto(4_990));
        assert!((148..=151).contains(&upto(9_990)), "{}", upto(9_990));
        assert!(h[bucket_of(10_000_000) + 1] == 2);
    }
}
