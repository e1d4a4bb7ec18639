//! The map: a snapshot of what the inventory learned, as it serializes (JSON), merges
//! (several gateways, several log files) and sums up ([`Progress`]).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::hist::Histogram;

/// Every template learned, the `other` bucket, and the totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Map {
    /// By requests, most first.
    pub templates: Vec<TemplateView>,
    pub other: OtherView,
    pub totals: Totals,
}

/// One endpoint template and what it carried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateView {
    pub method: String,
    /// `/api/users/{user_id}`, in the routes file's template syntax.
    pub template: String,
    pub requests: u64,
    /// Answers with a status of 500 or more.
    pub errors: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Requests the new side served.
    pub new_requests: u64,
    /// The routes that took it (`default`: none did), most requests first.
    pub routes: Vec<RouteShare>,
    /// Unix milliseconds.
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// A few concrete paths (no query string).
    pub examples: Vec<String>,
    /// The latency histogram the quantiles come from (`{"max_ms", "buckets"}`), kept so that
    /// maps merge exactly.
    pub latency: Histogram,
}

/// Requests a route took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteShare {
    pub route: String,
    pub requests: u64,
}

/// The requests that are in no template: over the caps, or with a path that is not one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OtherView {
    pub requests: u64,
    pub errors: u64,
    pub new_requests: u64,
    /// Of `requests`: those refused a template because the map was full (templates, nodes
    /// or methods).
    pub over_cap: u64,
    /// Of `requests`: paths that cannot be canonicalized, or a method that is not a token.
    pub rejected: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub examples: Vec<String>,
    pub latency: Histogram,
}

/// Everything, templates and `other` together.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    pub new_requests: u64,
    pub templates: usize,
    /// Unix milliseconds; 0 when nothing was seen.
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
}

/// How far along the migration is: the share of requests the new side served, and the
/// templates fully carved (every request on new), partly carved, and still legacy-only, by
/// count and by traffic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Every request, `other` included.
    pub requests: u64,
    pub new_requests: u64,
    /// `new_requests / requests` (0 when there are none).
    pub share_new: f64,
    pub templates_carved: usize,
    pub templates_partly: usize,
    pub templates_legacy_only: usize,
    pub requests_carved: u64,
    pub requests_partly: u64,
    pub requests_legacy_only: u64,
    /// The same, as shares of the templates' requests.
    pub share_carved: f64,
    pub share_partly: f64,
    pub share_legacy_only: f64,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

fn min_seen(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

fn add_examples(into: &mut Vec<String>, from: &[String]) {
    let keep = into.len().max(from.len());
    for e in from {
        if into.len() >= keep {
            break;
        }
        if !into.contains(e) {
            into.push(e.clone());
        }
    }
}

impl TemplateView {
    /// `GET /api/users/{user_id}`.
    pub fn key(&self) -> String {
        format!("{} {}", self.method, self.template)
    }

    /// The route that took most of its requests (`default` when none did).
    pub fn main_route(&self) -> &str {
        self.routes.first().map_or("default", |r| r.route.as_str())
    }

    fn add(&mut self, o: &TemplateView) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.new_requests += o.new_requests;
        for r in &o.routes {
            match self.routes.iter_mut().find(|x| x.route == r.route) {
                Some(x) => x.requests += r.requests,
                None => self.routes.push(r.clone()),
            }
        }
        self.routes
            .sort_by(|a, b| b.requests.cmp(&a.requests).then(a.route.cmp(&b.route)));
        self.first_seen_ms = min_seen(self.first_seen_ms, o.first_seen_ms);
        self.last_seen_ms = self.last_seen_ms.max(o.last_seen_ms);
        add_examples(&mut self.examples, &o.examples);
        self.latency.add(&o.latency);
        self.p50_ms = self.latency.quantile_ms(0.5);
        self.p99_ms = self.latency.quantile_ms(0.99);
    }
}

impl Map {
    /// Adds another map to this one (another gateway's, another log's): templates with the
    /// same method and template add up, latencies by histogram; the others are appended.
    /// Two gateways may have learned one endpoint differently (one still holding literals
    /// the other already made a parameter): those stay apart.
    pub fn merge(&mut self, other: &Map) {
        let mut at: HashMap<(String, String), usize> = self
            .templates
            .iter()
            .enumerate()
            .map(|(i, t)| ((t.method.clone(), t.template.clone()), i))
            .collect();
        for t in &other.templates {
            match at.get(&(t.method.clone(), t.template.clone())) {
                Some(&i) => self.templates[i].add(t),
                None => {
                    at.insert((t.method.clone(), t.template.clone()), self.templates.len());
                    self.templates.push(t.clone());
                }
            }
        }
        let (o, p) = (&mut self.other, &other.other);
        o.requests += p.requests;
        o.errors += p.errors;
        o.new_requests += p.new_requests;
        o.over_cap += p.over_cap;
        o.rejected += p.rejected;
        o.first_seen_ms = min_seen(o.first_seen_ms, p.first_seen_ms);
        o.last_seen_ms = o.last_seen_ms.max(p.last_seen_ms);
        add_examples(&mut o.examples, &p.examples);
        o.latency.add(&p.latency);
        o.p50_ms = o.latency.quantile_ms(0.5);
        o.p99_ms = o.latency.quantile_ms(0.99);
        self.finish();
    }

    /// Sorts the templates (most requests first) and computes the totals.
    pub fn finish(&mut self) {
        self.templates.sort_by(|a, b| {
            b.requests
                .cmp(&a.requests)
                .then_with(|| a.template.cmp(&b.template))
                .then_with(|| a.method.cmp(&b.method))
        });
        let mut t = Totals {
            requests: self.other.requests,
            errors: self.other.errors,
            new_requests: self.other.new_requests,
            templates: self.templates.len(),
            first_seen_ms: self.other.first_seen_ms,
            last_seen_ms: self.other.last_seen_ms,
        };
        for x in &self.templates {
            t.requests += x.requests;
            t.errors += x.errors;
            t.new_requests += x.new_requests;
            t.first_seen_ms = min_seen(t.first_seen_ms, x.first_seen_ms);
            t.last_seen_ms = t.last_seen_ms.max(x.last_seen_ms);
        }
        self.totals = t;
    }

    /// The template of `method` and `template`, if learned.
    pub fn get(&self, method: &str, template: &str) -> Option<&TemplateView> {
        self.templates
            .iter()
            .find(|t| t.method == method && t.template == template)
    }

    /// How far along the migration is.
    pub fn progress(&self) -> Progress {
        let mut p = Progress {
            requests: self.totals.requests,
            new_requests: self.totals.new_requests,
            share_new: ratio(self.totals.new_requests, self.totals.requests),
            ..Progress::default()
        };
        for t in &self.templates {
            if t.requests == 0 {
                continue;
            }
            if t.new_requests >= t.requests {
                p.templates_carved += 1;
                p.requests_carved += t.requests;
            } else if t.new_requests > 0 {
                p.templates_partly += 1;
                p.requests_partly += t.requests;
            } else {
                p.templates_legacy_only += 1;
                p.requests_legacy_only += t.requests;
            }
        }
        let all = p.requests_carved + p.requests_partly + p.requests_legacy_only;
        p.share_carved = ratio(p.requests_carved, all);
        p.share_partly = ratio(p.requests_partly, all);
        p.share_legacy_only = ratio(p.requests_legacy_only, all);
        p
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn view(method: &str, template: &str, requests: u64, new: u64, ms: u64) -> TemplateView {
        let mut latency = Histogram::default();
        for _ in 0..requests {
            latency.record(Duration::from_millis(ms));
        }
        TemplateView {
            method: method.into(),
            template: template.into(),
            requests,
            errors: 1,
            p50_ms: latency.quantile_ms(0.5),
            p99_ms: latency.quantile_ms(0.99),
            new_requests: new,
            routes: vec![RouteShare {
                route: "default".into(),
                requests,
            }],
            first_seen_ms: 1000,
            last_seen_ms: 2000,
            examples: vec![format!("{template}-example")],
            latency,
        }
    }

    #[test]
    fn merge_adds_up_and_keeps_histograms() {
        let mut a = Map {
            templates: vec![view("GET", "/a/{id}", 10, 0, 2), view("GET", "/b", 5, 5, 2)],
            ..Map::default()
        };
        a.finish();
        let mut b = Map {
            templates: vec![
                view("GET", "/a/{id}", 30, 3, 200),
                view("POST", "/a/{id}", 1, 0, 2),
            ],
            ..Map::default()
        };
        b.other.requests = 4;
        b.finish();
        // Through JSON, as another gateway's map arrives.
        let b: Map = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        a.merge(&b);
        assert_eq!(a.totals.requests, 10 + 5 + 30 + 1 + 4);
        assert_eq!(a.totals.templates, 3);
        let t = a.get("GET", "/a/{id}").unwrap();
        assert_eq!((t.requests, t.errors, t.new_requests), (40, 2, 3));
        assert_eq!(t.routes[0].requests, 40);
        assert_eq!(t.latency.count(), 40);
        // Three quarters of its requests took 200 ms: the median is theirs.
        assert!(t.p50_ms.unwrap() > 150.0, "{:?}", t.p50_ms);
        assert_eq!(t.examples.len(), 1);
        assert_eq!(a.templates[0].template, "/a/{id}");
        let p = a.progress();
        assert_eq!(
            (
                p.templates_carved,
                p.templates_partly,
                p.templates_legacy_only
            ),
            (1, 1, 1)
        );
        assert_eq!(
            (p.requests_carved, p.requests_partly, p.requests_legacy_only),
            (5, 40, 1)
        );
        assert!((p.share_new - 8.0 / 50.0).abs() < 1e-9);
    }
}
