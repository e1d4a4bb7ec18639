//! The carve-out map at work in the gateway (docs/inventory.md): the record phase offers a
//! sample of the requests it records ([`Learner::offer`]: a push onto a bounded buffer, no
//! system call, no wake-up; a full buffer drops the sample and counts it), and a thread of
//! its own takes the buffer every [`EVERY`] and learns it into the [`Inventory`]. The admin
//! API reads snapshots ([`Learner::map`]) and the progress over time ([`Learner::history`]:
//! requests and the new side's share, per hour).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use serde::Serialize;

use super::Metrics;
use super::inventory::{Inventory, Limits, Map, Sample};

/// Samples waiting to be learned, at most.
const BUFFER: usize = 8192;
/// How often the learner takes the samples waiting.
pub const EVERY: Duration = Duration::from_millis(100);
/// The progress points kept: an hour each, thirty days.
const HOURS_KEPT: usize = 30 * 24;
const HOUR_MS: u64 = 3_600_000;

/// A request as the record phase hands it over.
pub struct Seen {
    pub method: &'static str,
    /// The canonical path, without its query.
    pub path: Box<str>,
    pub status: u16,
    pub latency: Duration,
    /// The route's name, or `default`.
    pub route: Box<str>,
    pub new_side: bool,
    pub at_unix_ms: u64,
}

/// One hour of progress: the requests sampled and those the new side served.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    /// The hour's start (unix milliseconds).
    pub at_ms: u64,
    pub requests: u64,
    pub new_requests: u64,
}

struct State {
    inventory: Inventory,
    history: VecDeque<Point>,
}

struct Shared {
    /// The samples waiting for the learner's next turn.
    waiting: Mutex<Vec<Seen>>,
    state: Mutex<State>,
}

/// The map's learner: its buffer, its thread and what it learned.
pub struct Learner {
    shared: Arc<Shared>,
    offered: AtomicU64,
    dropped: AtomicU64,
    limits: Limits,
}

impl Learner {
    /// A learner within `limits`, its thread started (it ends with the learner).
    pub fn new(limits: Limits) -> Arc<Learner> {
        let shared = Arc::new(Shared {
            waiting: Mutex::new(Vec::new()),
            state: Mutex::new(State {
                inventory: Inventory::new(limits),
                history: VecDeque::new(),
            }),
        });
        let weak = Arc::downgrade(&shared);
        let started = std::thread::Builder::new()
            .name("strangler-inventory".into())
            .spawn(move || learn(weak));
        if let Err(e) = started {
            tracing::warn!(error = %e, "cannot start the carve-out map's thread: the map stays empty");
        }
        Arc::new(Learner {
            shared,
            offered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            limits,
        })
    }

    /// Hands a sample over; never waits on the learner (a full buffer drops it, counted).
    pub fn offer(&self, seen: Seen) {
        self.offered.fetch_add(1, Ordering::Relaxed);
        let mut waiting = self
            .shared
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if waiting.len() < BUFFER {
            waiting.push(seen);
        } else {
            drop(waiting);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What was learned so far.
    pub fn map(&self) -> Map {
        self.state().inventory.map()
    }

    /// Requests and the new side's share, an hour a point, oldest first.
    pub fn history(&self) -> Vec<Point> {
        self.state().history.iter().copied().collect()
    }

    /// Samples offered since start, and those dropped because the buffer was full.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.offered.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The learner's thread: every [`EVERY`], the samples waiting, learned under one lock,
/// until the learner is gone.
fn learn(shared: Weak<Shared>) {
    let mut batch = Vec::new();
    loop {
        std::thread::sleep(EVERY);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        std::mem::swap(
            &mut batch,
            &mut *shared.waiting.lock().unwrap_or_else(|p| p.into_inner()),
        );
        if batch.is_empty() {
            continue;
        }
        let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        for s in batch.drain(..) {
            state.inventory.observe(&Sample {
                method: s.method,
                path: &s.path,
                status: s.status,
                latency: s.latency,
                route: &s.route,
                new_side: s.new_side,
                at_unix_ms: s.at_unix_ms,
            });
            let hour = s.at_unix_ms - s.at_unix_ms % HOUR_MS;
            let history = &mut state.history;
            if history.back().is_none_or(|p| p.at_ms < hour) {
                if history.len() == HOURS_KEPT {
                    history.pop_front();
                }
                history.push_back(Point {
                    at_ms: hour,
                    requests: 0,
                    new_requests: 0,
                });
            }
            if let Some(p) = history.back_mut() {
                p.requests += 1;
                p.new_requests += u64::from(s.new_side);
            }
        }
    }
}

/// The migration's progress for Prometheus, computed when scraped (a handful of series, none
/// per template): `strangler_migrated_share` and `strangler_served_requests_total{side}`
/// from every request counted, `strangler_inventory_templates{state}` from the map.
pub struct MapMetrics {
    learner: Arc<Learner>,
    metrics: Arc<Metrics>,
    share: prometheus::Gauge,
    served: IntCounterVec,
    templates: IntGaugeVec,
    /// One scrape at a time fills the series above.
    collecting: Mutex<()>,
    /// The requests by side at the last scrape.
    last: Mutex<[u64; 2]>,
}

impl MapMetrics {
    pub fn new(learner: Arc<Learner>, metrics: Arc<Metrics>) -> MapMetrics {
        MapMetrics {
            learner,
            metrics,
            share: prometheus::Gauge::new(
                "strangler_migrated_share",
                "The share of the requests counted since start (every route) that new services served, from 0 to 1",
            )
            .expect("static metric definition is valid"),
            served: IntCounterVec::new(
                Opts::new(
                    "strangler_served_requests_total",
                    "Requests counted since start (every route), by the side that served them: plot the migrated share over weeks as new / (legacy + new)",
                ),
                &["side"],
            )
            .expect("static metric definition is valid"),
            templates: IntGaugeVec::new(
                Opts::new(
                    "strangler_inventory_templates",
                    "Endpoint templates of the carve-out map, by state: carved (every sampled request on new), partly carved, legacy_only",
                ),
                &["state"],
            )
            .expect("static metric definition is valid"),
            collecting: Mutex::new(()),
            last: Mutex::new([0; 2]),
        }
    }
}

impl Collector for MapMetrics {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.share.desc();
        d.extend(self.served.desc());
        d.extend(self.templates.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one = self.collecting.lock().unwrap_or_else(|p| p.into_inner());
        let [legacy, new] = self.metrics.requests_by_side();
        let all = legacy + new;
        self.share.set(if all == 0 {
            0.0
        } else {
            new as f64 / all as f64
        });
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        for (i, (side, n)) in [("legacy", legacy), ("new", new)].into_iter().enumerate() {
            // What was counted since the last scrape is added: the sum of the routes' counters
            // only grows, but for a reload that removes a route, which takes its requests out
            // (the counter then holds).
            self.served
                .with_label_values(&[side])
                .inc_by(n.saturating_sub(last[i]));
            last[i] = n;
        }
        drop(last);
        let progress = self.learner.map().progress();
        for (state, n) in [
            ("carved", progress.templates_carved),
            ("partly", progress.templates_partly),
            ("legacy_only", progress.templates_legacy_only),
        ] {
            self.templates.with_label_values(&[state]).set(n as i64);
        }
        let mut families = self.share.collect();
        families.extend(self.served.collect());
        families.extend(self.templates.collect());
        families
    }
}
