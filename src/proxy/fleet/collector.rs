//! The fleet's gauges for Prometheus, computed from the live states at each scrape.

use std::sync::Arc;
use std::time::Instant;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use super::*;

/// The fleet's metrics (`strangler_instance_healthy`, `strangler_instance_ejected`,
/// `strangler_breaker_state`),
/// computed from the live states whenever they are scraped: a state that is gone leaves no
/// series behind.
pub struct FleetMetrics(pub Arc<Fleet>);

impl Collector for FleetMetrics {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.0.healthy.desc();
        d.extend(self.0.ejected.desc());
        d.extend(self.0.breaker.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.0.collect()
    }
}

impl Fleet {
    fn collect(&self) -> Vec<MetricFamily> {
        let _one = self.collecting.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        self.healthy.reset();
        self.ejected.reset();
        self.breaker.reset();
        let mut seen = std::collections::HashSet::new();
        for s in self.live() {
            if !seen.insert(s.name.clone()) {
                continue;
            }
            let now_ms = s.ms(now);
            for i in s.instances.load().iter() {
                let labels = [&*s.name, &*i.label];
                self.healthy
                    .with_label_values(&labels)
                    .set(i64::from(i.healthy()));
                if s.outlier.is_some() {
                    self.ejected
                        .with_label_values(&labels)
                        .set(i64::from(i.ejected(now_ms)));
                }
            }
            if let Some(b) = &s.breaker {
                self.breaker
                    .with_label_values(&[&*s.name])
                    .set(i64::from(b.state(now)));
            }
        }
        let mut families = self.healthy.collect();
        families.extend(self.ejected.collect());
        families.extend(self.breaker.collect());
        families
    }
}
