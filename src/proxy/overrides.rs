//! Percentages in force that the routes file does not say yet (docs/plans.md, "When the
//! routes file cannot be written").
//!
//! A plan's rollback must take the route's new share to legacy at once, whatever happens to
//! the file: a read-only mount, a directory made read-only during an incident, a full disk.
//! The gateway then holds the rolled-back percentage here, in memory, and every table it
//! compiles serves it, reloads included, until the file catches up:
//!
//! - the file says the held percentage: caught up, the hold ends;
//! - the file still says what it said when the hold began: the hold stays (a reload of the
//!   stale file, or a deploy that applies it again, must not undo a rollback);
//! - the file says anything else: a person set it (an editor, `strangler shift`, the admin
//!   API), and a person wins: the hold ends, the file's value is in force.
//!
//! Kept across reloads with the rest of the gateway's state; never read on the request path
//! (a table carries the percentages already applied).

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::config::{Config, format_percent};

/// One held percentage.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The percentage in force (basis points).
    pub bp: u32,
    /// What the routes file said when the hold began: while it still says this, the hold
    /// stays.
    pub file_bp: u32,
    /// Why, in words (the plan's rollback and its reason).
    pub reason: String,
    /// The plan that asked for it.
    pub plan: String,
    /// When the hold began (unix seconds).
    pub since: f64,
}

/// An override as a compiled table applied it: what the file says beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub route: String,
    pub held: Override,
}

/// Every route's held percentage, by route name.
#[derive(Default)]
pub struct Overrides {
    held: Mutex<BTreeMap<String, Override>>,
}

impl Overrides {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Override>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `route` at `o.bp` from now on (replacing any earlier hold of it).
    pub fn hold(&self, route: &str, o: Override) {
        self.lock().insert(route.to_string(), o);
    }

    /// The hold of `route`, if any.
    pub fn get(&self, route: &str) -> Option<Override> {
        self.lock().get(route).cloned()
    }

    /// Ends the hold of `route` (a person set its percentage through the gateway).
    pub fn release(&self, route: &str) -> Option<Override> {
        self.lock().remove(route)
    }

    /// Applies the holds to a config read from the routes file: a held route gets its held
    /// percentage, and holds that ended (see the module's rules) are dropped, each logged.
    /// Returns the holds applied.
    pub fn apply(&self, config: &mut Config) -> Vec<Applied> {
        let mut held = self.lock();
        let mut applied = Vec::new();
        held.retain(|route, o| {
            let Some(r) = config.routes.iter_mut().find(|r| &r.name == route) else {
                tracing::warn!(route = %route, plan = %o.plan, "the route is no longer in the routes file: its held percentage ends");
                return false;
            };
            if r.percent_bp == o.bp {
                tracing::info!(route = %route, plan = %o.plan, percent = format_percent(o.bp), "the routes file now says the held percentage: caught up");
                return false;
            }
            if r.percent_bp != o.file_bp {
                tracing::warn!(
                    route = %route,
                    plan = %o.plan,
                    file_percent = format_percent(r.percent_bp),
                    held_percent = format_percent(o.bp),
                    "the routes file was set to another percentage while the gateway held the rollback's: a person wins, the file's value is in force"
                );
                return false;
            }
            r.percent_bp = o.bp;
            applied.push(Applied {
                route: route.clone(),
                held: o.clone(),
            });
            true
        });
        applied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(percent: u32) -> Config {
        let yaml = format!(
            "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nlegacy: {{ url: http://127.0.0.1:9 }}\nservices: {{ s: {{ url: http://127.0.0.1:10 }} }}\nroutes:\n  - {{ name: r, match: {{ prefix: /a }}, service: s, percent: {percent} }}\n"
        );
        Config::parse(&yaml, std::path::Path::new("t.yaml")).unwrap()
    }

    fn held() -> Override {
        Override {
            bp: 0,
            file_bp: 5000,
            reason: "rolled back".into(),
            plan: "p".into(),
            since: 1.0,
        }
    }

    #[test]
    fn a_hold_stays_while_the_file_is_stale_and_ends_when_it_catches_up_or_a_person_sets_it() {
        let o = Overrides::default();
        o.hold("r", held());
        // The stale file: held.
        let mut c = config(50);
        assert_eq!(o.apply(&mut c).len(), 1);
        assert_eq!(c.routes[0].percent_bp, 0);
        // Again (a reload of the same stale file): still held.
        let mut c = config(50);
        o.apply(&mut c);
        assert_eq!(c.routes[0].percent_bp, 0);
        // The file says 0: caught up, the hold ends.
        let mut c = config(0);
        assert!(o.apply(&mut c).is_empty());
        assert!(o.get("r").is_none());
        // A person sets 30% while held: the person wins.
        o.hold("r", held());
        let mut c = config(30);
        assert!(o.apply(&mut c).is_empty());
        assert_eq!(c.routes[0].percent_bp, 3000);
        assert!(o.get("r").is_none());
    }
}
