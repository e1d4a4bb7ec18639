//! The latency histogram of a template: 64 fixed buckets growing by a quarter each, from
//! 50 µs to about 51 s (the last one unbounded), so that two gateways' histograms add up
//! bucket by bucket and a quantile is never off by more than a bucket's width (25%).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The number of buckets.
pub const BUCKETS: usize = 64;
/// The upper bound of the first bucket, in microseconds.
const FIRST_US: f64 = 50.0;
/// Each bucket's upper bound over the one before.
const GROWTH: f64 = 1.25;

/// Counts per bucket, and the largest latency. Serialized as
/// `{"max_ms": 12.5, "buckets": [[index, count], ...]}` with the non-empty buckets; bucket
/// `i` holds the latencies in `(50 µs × 1.25^(i-1), 50 µs × 1.25^i]` (bucket 0 from zero,
/// bucket 63 everything above).
#[derive(Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    /// The largest latency recorded, in microseconds: the top of the last bucket for the
    /// quantiles.
    max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: Box::new([0; BUCKETS]),
            max_us: 0,
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.sparse()).finish()
    }
}

/// The upper bound of bucket `i`, in milliseconds.
pub fn upper_ms(i: usize) -> f64 {
    FIRST_US * GROWTH.powi(i as i32) / 1000.0
}

/// The bucket of a latency.
pub fn bucket(d: Duration) -> usize {
    let us = d.as_secs_f64() * 1e6;
    if us <= FIRST_US {
        return 0;
    }
    let i = ((us / FIRST_US).ln() / GROWTH.ln()).ceil();
    // The bound itself belongs to its bucket (to the nanosecond): floating error may put
    // it one above.
    let mut i = (i as usize).min(BUCKETS - 1);
    if i > 0 && us <= upper_ms(i - 1) * 1000.0 + 1e-3 {
        i -= 1;
    }
    i
}

impl Histogram {
    pub fn record(&mut self, d: Duration) {
        self.counts[bucket(d)] += 1;
        self.max_us = self
            .max_us
            .max(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// The largest latency recorded, in milliseconds.
    pub fn max_ms(&self) -> Option<f64> {
        (self.count() > 0).then(|| self.max_us as f64 / 1000.0)
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn add(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.max_us = self.max_us.max(other.max_us);
    }

    /// The non-empty buckets, `(index, count)`.
    pub fn sparse(&self) -> Vec<(usize, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (i, *c))
            .collect()
    }

    /// The `q` quantile (0..1) in milliseconds, interpolated inside its bucket; `None`
    /// without a single latency.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let target = (q * n as f64).max(1.0);
        let mut below = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if (below + c) as f64 >= target {
                let lower = if i == 0 { 0.0 } else { upper_ms(i - 1) };
                let top = if i == BUCKETS - 1 {
                    lower * GROWTH
                } else {
                    upper_ms(i)
                };
                // The bucket's latencies end at the largest one, when it is in there.
                let max = self.max_us as f64 / 1000.0;
                let upper = if max > lower && max < top { max } else { top };
                let frac = (target - below as f64) / c as f64;
                let v = lower + (upper - lower) * frac;
                return Some((v * 1000.0).round() / 1000.0);
            }
            below += c;
        }
        None
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    max_ms: f64,
    buckets: Vec<[u64; 2]>,
}

impl Serialize for Histogram {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            max_ms: self.max_us as f64 / 1000.0,
            buckets: self
                .sparse()
                .into_iter()
                .map(|(i, c)| [i as u64, c])
                .collect(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Histogram {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = Wire::deserialize(d)?;
        let mut h = Histogram::default();
        for [i, c] in w.buckets {
            let i = usize::try_from(i)
                .ok()
                .filter(|i| *i < BUCKETS)
                .ok_or_else(|| serde::de::Error::custom(format!("bucket {i} is not 0..64")))?;
            h.counts[i] = h.counts[i].saturating_add(c);
        }
        if w.max_ms.is_finite() && w.max_ms >= 0.0 {
            h.max_us = (w.max_ms * 1000.0).round() as u64;
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_bounds() {
        assert_eq!(bucket(Duration::ZERO), 0);
        assert_eq!(bucket(Duration::from_micros(50)), 0);
        assert_eq!(bucket(Duration::from_micros(51)), 1);
        for i in 0..BUCKETS - 1 {
            let at = Duration::from_secs_f64(upper_ms(i) / 1000.0);
            assert_eq!(bucket(at), i, "bound of bucket {i}");
        }
        assert_eq!(bucket(Duration::from_secs(3600)), BUCKETS - 1);
        assert_eq!(bucket(Duration::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_within_a_bucket() {
        let mut h = Histogram::default();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.quantile_ms(0.5).unwrap();
        let p99 = h.quantile_ms(0.99).unwrap();
        assert!((40.0..=62.5).contains(&p50), "{p50}");
        // The top bucket ends at the largest latency.
        assert!((79.0..=100.0).contains(&p99), "{p99}");
        assert_eq!(h.max_ms(), Some(100.0));
        assert_eq!(Histogram::default().quantile_ms(0.5), None);
    }

    #[test]
    fn round_trip_and_add() {
        let mut a = Histogram::default();
        a.record(Duration::from_millis(3));
        a.record(Duration::from_millis(300));
        let json = serde_json::to_string(&a).unwrap();
        let b: Histogram = serde_json::from_str(&json).unwrap();
        assert_eq!(a, b);
        let mut c = a.clone();
        c.add(&b);
        assert_eq!(c.count(), 4);
        assert!(serde_json::from_str::<Histogram>(r#"{"max_ms":1,"buckets":[[64,1]]}"#).is_err());
    }
}
