//! The resilience settings of services and routes (docs/resilience.md):
//! instances and their balancing, health checks, the circuit breaker, fallback to legacy and
//! retries. Only settings live here; the request path acts on them in `proxy::fleet` and
//! `proxy::forward`.

use std::time::Duration;

/// Default `connect_timeout` of a service (Envoy's default).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `resolve` of a service: how often its host names are looked up again.
pub const DEFAULT_RESOLVE: Duration = Duration::from_secs(30);
/// Default `max_body` of a route's `fallback`: the request body kept for a replay.
pub const DEFAULT_FALLBACK_MAX_BODY: u64 = 64 * 1024;
/// The body kept for a retry after a reset when the route has no `fallback`.
pub const DEFAULT_RETRY_MAX_BODY: u64 = 64 * 1024;
/// Most retries a route may ask for.
pub const MAX_RETRY_ATTEMPTS: u32 = 5;
/// Extra attempts a route may make, as a share of its requests.
pub const RETRY_BUDGET: f64 = 0.2;

/// How a service's requests are spread over its instances (`balance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Balance {
    /// Each instance in turn (the default).
    RoundRobin,
    /// The less busy of two instances drawn at random (power of two choices; exact with two).
    LeastConnections,
}

/// Active health checks of a service's instances (`health`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthConfig {
    /// Asked with GET on each instance; a 2xx answer passes.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Failed checks in a row that take an instance out.
    pub unhealthy_after: u32,
    /// Passed checks in a row that bring it back.
    pub healthy_after: u32,
}

impl HealthConfig {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
    pub const DEFAULT_UNHEALTHY_AFTER: u32 = 3;
    pub const DEFAULT_HEALTHY_AFTER: u32 = 2;
}

/// The circuit breaker of a new service (`breaker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BreakerConfig {
    /// What opens it, within `window`.
    pub trip: Trip,
    pub window: Duration,
    /// How long it stays open before one probe request decides.
    pub cooldown: Duration,
}

/// What opens a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trip {
    /// This many failed attempts within the window (`failures`): a count, which a busy
    /// service reaches at a low error rate and a quiet one may never.
    Failures(u32),
    /// A share of failed attempts within the window, once there were at least
    /// `min_requests` attempts (`failure_rate`, Resilience4j's `failureRateThreshold` with
    /// `minimumNumberOfCalls`): the same rate trips it at any traffic.
    Rate {
        /// In hundredths of a percent.
        rate_bp: u32,
        min_requests: u32,
    },
}

impl BreakerConfig {
    pub const DEFAULT: BreakerConfig = BreakerConfig {
        trip: Trip::Failures(5),
        window: Duration::from_secs(10),
        cooldown: Duration::from_secs(30),
    };
    pub const DEFAULT_MIN_REQUESTS: u32 = 20;
}

/// Passive outlier detection (`outlier`): an instance whose requests fail `consecutive`
/// times in a row is taken out for a while, though its health checks may still pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OutlierConfig {
    /// Failed attempts in a row (a connect failure, a timeout, a broken connection or a
    /// 5xx answer other than 501) that take an instance out.
    pub consecutive: u32,
    /// How long it stays out the first time; each ejection in a row (no success between,
    /// nor a stay as long as the longest ejection) adds as much again, up to ten times.
    pub ejection: Duration,
    /// At most this share of the instances out at once; never the last one serving.
    pub max_ejected_percent: u32,
}

impl OutlierConfig {
    pub const DEFAULT: OutlierConfig = OutlierConfig {
        consecutive: 5,
        ejection: Duration::from_secs(30),
        max_ejected_percent: 50,
    };
    /// The longest ejection, in multiples of `ejection`.
    pub const MAX_MULTIPLE: u32 = 10;
}

/// A way an attempt can fail, as `fallback.when` and `retries.when` name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// No connection could be made (refused, unreachable, or `connect_timeout`): the request
    /// never reached the upstream.
    Connect,
    /// No response head within the timeout.
    Timeout,
    /// The connection broke before a response head.
    Reset,
    /// A 5xx answer.
    Status5xx,
    /// A 404 answer.
    Status404,
    /// A 501 answer.
    Status501,
}

impl FailKind {
    pub const ALL: [FailKind; 6] = [
        FailKind::Connect,
        FailKind::Timeout,
        FailKind::Reset,
        FailKind::Status5xx,
        FailKind::Status404,
        FailKind::Status501,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailKind::Connect => "connect",
            FailKind::Timeout => "timeout",
            FailKind::Reset => "reset",
            FailKind::Status5xx => "5xx",
            FailKind::Status404 => "404",
            FailKind::Status501 => "501",
        }
    }

    pub fn parse(s: &str) -> Option<FailKind> {
        FailKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of [`FailKind`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FailKinds(u8);

impl FailKinds {
    pub fn of(kinds: &[FailKind]) -> FailKinds {
        FailKinds(kinds.iter().fold(0, |b, k| b | k.bit()))
    }

    pub fn contains(self, k: FailKind) -> bool {
        self.0 & k.bit() != 0
    }

    pub fn names(self) -> Vec<&'static str> {
        FailKind::ALL
            .into_iter()
            .filter(|k| self.contains(*k))
            .map(FailKind::as_str)
            .collect()
    }
}

/// Replay to legacy when the new side fails (`fallback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FallbackConfig {
    pub when: FailKinds,
    /// The request body kept for the replay; a larger one cannot be replayed.
    pub max_body: u64,
}

impl FallbackConfig {
    pub const DEFAULT_WHEN: [FailKind; 3] =
        [FailKind::Connect, FailKind::Timeout, FailKind::Status5xx];
    pub const ALLOWED: [FailKind; 5] = [
        FailKind::Connect,
        FailKind::Timeout,
        FailKind::Status5xx,
        FailKind::Status404,
        FailKind::Status501,
    ];
}

/// Another attempt after a failure that the upstream cannot have acted on (`retries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    /// Retries after the first attempt.
    pub attempts: u32,
    pub when: FailKinds,
    /// The budget's floor: retries a second allowed whatever the share of requests.
    pub min_per_second: u32,
}

impl RetryConfig {
    pub const DEFAULT_ATTEMPTS: u32 = 1;
    pub const DEFAULT_MIN_PER_SECOND: u32 = 10;
    pub const ALLOWED: [FailKind; 2] = [FailKind::Connect, FailKind::Reset];
}
