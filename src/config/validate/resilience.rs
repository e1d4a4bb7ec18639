//! The resilience settings: `balance`, `resolve`, `health`, `connect_timeout`, `breaker`
//! and `outlier` of services; `fallback`, `retries`, `timeout` and `connect_timeout` of routes.

use std::time::Duration;

use super::{Fields, Validator, join};
use crate::config::resilience::{
    Balance, BreakerConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_FALLBACK_MAX_BODY, FailKind,
    FailKinds, FallbackConfig, HealthConfig, MAX_RETRY_ATTEMPTS, OutlierConfig, RetryConfig, Trip,
};
use crate::config::yaml::{Node, Value};
use crate::routing::check_canonical;

/// The largest `max_body` allowed (a replay buffer is memory held per request).
const MAX_BODY_LIMIT: u64 = 64 * 1024 * 1024;

/// The resilience settings of a service.
pub(super) struct ServiceSettings {
    pub balance: Balance,
    pub resolve: Option<Duration>,
    pub health: Option<HealthConfig>,
    pub connect_timeout: Duration,
    pub breaker: Option<BreakerConfig>,
    pub outlier: Option<OutlierConfig>,
}

/// The resilience settings of a route.
pub(super) struct RouteSettings {
    pub timeout: Option<Duration>,
    pub connect_timeout: Option<Duration>,
    pub fallback: Option<FallbackConfig>,
    pub retries: Option<RetryConfig>,
}

impl Validator {
    pub(super) fn service_resilience(
        &mut self,
        f: &Fields<'_>,
        path: &str,
        legacy: bool,
    ) -> Option<ServiceSettings> {
        let balance = match f.get("balance") {
            None => Some(Balance::RoundRobin),
            Some(b) => match &b.value {
                Value::Str(s) if s == "round_robin" => Some(Balance::RoundRobin),
                Value::Str(s) if s == "least_connections" => Some(Balance::LeastConnections),
                _ => {
                    self.wrong(
                        b,
                        &join(path, "balance"),
                        "round_robin (default) or least_connections",
                    );
                    None
                }
            },
        };
        let resolve = self.duration_opt(f, path, "resolve");
        let connect_timeout = self.duration_or(f, path, "connect_timeout", DEFAULT_CONNECT_TIMEOUT);
        let health = match f.get("health") {
            None => Some(None),
            Some(h) => self.health(h, &join(path, "health")).map(Some),
        };
        let breaker = match f.get("breaker") {
            None => Some(None),
            Some(b) if legacy => {
                self.error(
                    b.pos,
                    &join(path, "breaker"),
                    "found a breaker on legacy; allowed: a breaker on the extracted services only (while it is open their share goes to legacy, and legacy has nowhere else to send its own)",
                );
                None
            }
            Some(b) => self.breaker(b, &join(path, "breaker")).map(Some),
        };
        let outlier = match f.get("outlier") {
            None => Some(None),
            Some(o) => self.outlier(o, &join(path, "outlier")).map(Some),
        };
        Some(ServiceSettings {
            balance: balance?,
            resolve: resolve?,
            health: health?,
            connect_timeout: connect_timeout?,
            breaker: breaker?,
            outlier: outlier?,
        })
    }

    pub(super) fn route_resilience(&mut self, f: &Fields<'_>, path: &str) -> Option<RouteSettings> {
        let timeout = self.duration_opt(f, path, "timeout");
        let connect_timeout = self.duration_opt(f, path, "connect_timeout");
        let fallback = match f.get("fallback") {
            None => Some(None),
            Some(n) => self.fallback(n, &join(path, "fallback")).map(Some),
        };
        let retries = match f.get("retries") {
            None => Some(None),
            Some(n) => self.retries(n, &join(path, "retries")).map(Some),
        };
        Some(RouteSettings {
            timeout: timeout?,
            connect_timeout: connect_timeout?,
            fallback: fallback?,
            retries: retries?,
        })
    }

    fn duration_or(
        &mut self,
        f: &Fields<'_>,
        path: &str,
        key: &str,
        default: Duration,
    ) -> Option<Duration> {
        match f.get(key) {
            None => Some(default),
            Some(n) => self.duration(n, &join(path, key)),
        }
    }

    fn duration_opt(&mut self, f: &Fields<'_>, path: &str, key: &str) -> Option<Option<Duration>> {
        match f.get(key) {
            None => Some(None),
            Some(n) => self.duration(n, &join(path, key)).map(Some),
        }
    }

    /// A whole number within `range`, or `default` when absent.
    fn count_or(
        &mut self,
        f: &Fields<'_>,
        path: &str,
        key: &str,
        range: std::ops::RangeInclusive<u32>,
        default: u32,
    ) -> Option<u32> {
        let Some(n) = f.get(key) else {
            return Some(default);
        };
        match n.value {
            Value::Int(i) if i >= 0 && range.contains(&(i as u32)) && i <= u32::MAX as i64 => {
                Some(i as u32)
            }
            _ => {
                self.wrong(
                    n,
                    &join(path, key),
                    &format!("a whole number from {} to {}", range.start(), range.end()),
                );
                None
            }
        }
    }

    fn health(&mut self, n: &Node, path: &str) -> Option<HealthConfig> {
        let f = self.fields(
            n,
            path,
            &[
                "path",
                "interval",
                "timeout",
                "unhealthy_after",
                "healthy_after",
            ],
        )?;
        let check = self
            .require(&f, path, "path", "the path to check, like /healthz")
            .and_then(|p| {
                let jp = join(path, "path");
                let s = self.string(p, &jp, "a path like /healthz")?;
                let (route, _query) = s.split_once('?').unwrap_or((s, ""));
                if check_canonical(route).is_err() {
                    self.wrong(p, &jp, "a canonical path starting with /, like /healthz");
                    return None;
                }
                Some(s.to_string())
            });
        let interval = self.duration_or(&f, path, "interval", HealthConfig::DEFAULT_INTERVAL);
        let timeout = self.duration_or(&f, path, "timeout", HealthConfig::DEFAULT_TIMEOUT);
        let unhealthy_after = self.count_or(
            &f,
            path,
            "unhealthy_after",
            1..=100,
            HealthConfig::DEFAULT_UNHEALTHY_AFTER,
        );
        let healthy_after = self.count_or(
            &f,
            path,
            "healthy_after",
            1..=100,
            HealthConfig::DEFAULT_HEALTHY_AFTER,
        );
        Some(HealthConfig {
            path: check?,
            interval: interval?,
            timeout: timeout?,
            unhealthy_after: unhealthy_after?,
            healthy_after: healthy_after?,
        })
    }

    fn breaker(&mut self, n: &Node, path: &str) -> Option<BreakerConfig> {
        let f = self.fields(
            n,
            path,
            &[
                "failures",
                "failure_rate",
                "min_requests",
                "window",
                "cooldown",
            ],
        )?;
        let d = BreakerConfig::DEFAULT;
        let window = self.duration_or(&f, path, "window", d.window);
        let cooldown = self.duration_or(&f, path, "cooldown", d.cooldown);
        let trip = match (f.get("failures"), f.get("failure_rate")) {
            (Some(_), Some(rate)) => {
                self.wrong(
                    rate,
                    &join(path, "failure_rate"),
                    "either failures (a count) or failure_rate (a share), not both",
                );
                None
            }
            (_, Some(rate)) => {
                let p = join(path, "failure_rate");
                let bp = match &rate.value {
                    Value::Str(t) => t
                        .strip_suffix('%')
                        .and_then(|x| crate::config::parse_percent(x).ok()),
                    _ => None,
                };
                let min_requests = self.count_or(
                    &f,
                    path,
                    "min_requests",
                    1..=1_000_000,
                    BreakerConfig::DEFAULT_MIN_REQUESTS,
                );
                match bp {
                    Some(rate_bp) if rate_bp > 0 => min_requests.map(|min_requests| Trip::Rate {
                        rate_bp,
                        min_requests,
                    }),
                    _ => {
                        self.wrong(rate, &p, "a share above 0 and up to 100%, like 50%");
                        None
                    }
                }
            }
            (_, None) => {
                if let Some(m) = f.get("min_requests") {
                    self.wrong(
                        m,
                        &join(path, "min_requests"),
                        "min_requests only beside failure_rate",
                    );
                    None
                } else {
                    let default = match d.trip {
                        Trip::Failures(n) => n,
                        Trip::Rate { .. } => 5,
                    };
                    self.count_or(&f, path, "failures", 1..=10_000, default)
                        .map(Trip::Failures)
                }
            }
        };
        Some(BreakerConfig {
            trip: trip?,
            window: window?,
            cooldown: cooldown?,
        })
    }

    fn outlier(&mut self, n: &Node, path: &str) -> Option<OutlierConfig> {
        let f = self.fields(n, path, &["consecutive", "ejection", "max_ejected_percent"])?;
        let d = OutlierConfig::DEFAULT;
        let consecutive = self.count_or(&f, path, "consecutive", 1..=10_000, d.consecutive);
        let ejection = self.duration_or(&f, path, "ejection", d.ejection);
        let max_ejected_percent = self.count_or(
            &f,
            path,
            "max_ejected_percent",
            1..=100,
            d.max_ejected_percent,
        );
        Some(OutlierConfig {
            consecutive: consecutive?,
            ejection: ejection?,
            max_ejected_percent: max_ejected_percent?,
        })
    }

    fn fallback(&mut self, n: &Node, path: &str) -> Option<FallbackConfig> {
        let f = self.fields(n, path, &["when", "max_body"])?;
        let when = match f.get("when") {
            None => Some(FailKinds::of(&FallbackConfig::DEFAULT_WHEN)),
            Some(w) => self.kinds(w, &join(path, "when"), &FallbackConfig::ALLOWED),
        };
        let max_body = match f.get("max_body") {
            None => Some(DEFAULT_FALLBACK_MAX_BODY),
            Some(m) => self.size(m, &join(path, "max_body")),
        };
        Some(FallbackConfig {
            when: when?,
            max_body: max_body?,
        })
    }

    fn retries(&mut self, n: &Node, path: &str) -> Option<RetryConfig> {
        let f = self.fields(n, path, &["attempts", "when", "min_per_second"])?;
        let attempts = self.count_or(
            &f,
            path,
            "attempts",
            1..=MAX_RETRY_ATTEMPTS,
            RetryConfig::DEFAULT_ATTEMPTS,
        );
        let when = match f.get("when") {
            None => Some(FailKinds::of(&RetryConfig::ALLOWED)),
            Some(w) => self.kinds(w, &join(path, "when"), &RetryConfig::ALLOWED),
        };
        let min_per_second = self.count_or(
            &f,
            path,
            "min_per_second",
            0..=10_000,
            RetryConfig::DEFAULT_MIN_PER_SECOND,
        );
        Some(RetryConfig {
            attempts: attempts?,
            when: when?,
            min_per_second: min_per_second?,
        })
    }

    /// A non-empty list of failure kinds among `allowed`, each once.
    fn kinds(&mut self, n: &Node, path: &str, allowed: &[FailKind]) -> Option<FailKinds> {
        let names: Vec<&str> = allowed.iter().map(|k| k.as_str()).collect();
        let listed = format!("a list of {}", names.join(", "));
        let Value::Seq(items) = &n.value else {
            self.wrong(n, path, &listed);
            return None;
        };
        if items.is_empty() {
            self.wrong(n, path, &format!("{listed} (at least one)"));
            return None;
        }
        let mut kinds = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            // `5xx` and `404` may be written bare: YAML reads 404 as a number.
            let name = match &item.value {
                Value::Str(s) => s.clone(),
                Value::Int(v) => v.to_string(),
                _ => String::new(),
            };
            match FailKind::parse(&name).filter(|k| allowed.contains(k)) {
                Some(k) if kinds.contains(&k) => {
                    self.wrong(item, &p, &format!("each of {} once", names.join(", ")));
                    ok = false;
                }
                Some(k) => kinds.push(k),
                None => {
                    self.wrong(item, &p, &format!("one of {}", names.join(", ")));
                    ok = false;
                }
            }
        }
        ok.then(|| FailKinds::of(&kinds))
    }

    /// A size in bytes: a whole number, or a number with B, KiB, MiB (or KB, MB).
    pub(super) fn size(&mut self, n: &Node, path: &str) -> Option<u64> {
        let allowed = "a size like 65536, 64KiB or 1MiB (at most 64MiB)";
        let bytes = match &n.value {
            Value::Int(i) if *i >= 0 => Some(*i as u64),
            Value::Str(s) => parse_size(s),
            _ => None,
        };
        match bytes {
            Some(b) if b <= MAX_BODY_LIMIT => Some(b),
            _ => {
                self.wrong(n, path, allowed);
                None
            }
        }
    }
}

/// `64KiB`, `1MiB`, `512B`, `1000KB`, `1MB` or a bare number of bytes.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let unit = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        "KB" | "kB" => 1000,
        "MB" => 1000 * 1000,
        _ => return None,
    };
    number.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("10 KB"), Some(10_000));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("1.5MiB"), None);
        assert_eq!(parse_size("KiB"), None);
        assert_eq!(parse_size("1GiB"), None);
    }
}
