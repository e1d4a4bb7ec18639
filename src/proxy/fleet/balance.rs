//! Balancing: which instance takes the next attempt (`balance`), among those serving.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::*;
use crate::config::resilience::Balance;

/// The instances a pick chooses among.
type Instances<'a> = smallvec::SmallVec<[&'a Arc<Instance>; 8]>;

impl ServiceState {
    /// An instance for the next attempt, other than `avoid` when there is another; `None`
    /// only when the service has no instance at all.
    pub fn pick(&self, avoid: Option<&Instance>) -> Option<Picked> {
        let list = self.instances.load();
        let now_ms = self.outlier.map(|_| self.ms(Instant::now()));
        // Serving: healthy and not ejected (one look at each: the checker may change it).
        let serving = |i: &&Arc<Instance>| i.healthy() && now_ms.is_none_or(|m| !i.ejected(m));
        // On the stack for up to 8 instances: a pick allocates nothing.
        let usable: Instances<'_> = list
            .iter()
            .filter(serving)
            .filter(|i| avoid.is_none_or(|a| !std::ptr::eq(a, &***i)))
            .collect();
        let (pool, all_unhealthy): (Instances<'_>, bool) = if !usable.is_empty() {
            (usable, false)
        } else {
            // Only the instance to avoid serves: it again; else an ejected healthy one;
            // else, nothing healthy: any instance, in turn.
            let fewer = |keep: &dyn Fn(&&Arc<Instance>) -> bool| -> Instances<'_> {
                list.iter().filter(|i| keep(i)).collect()
            };
            let serving = fewer(&serving);
            if !serving.is_empty() {
                (serving, false)
            } else {
                let healthy = fewer(&|i| i.healthy());
                if healthy.is_empty() {
                    (list.iter().collect(), true)
                } else {
                    (healthy, false)
                }
            }
        };
        let chosen = match (self.balance, pool.len()) {
            (_, 0) => return None,
            (Balance::LeastConnections, n) if n > 1 && !all_unhealthy => {
                // Two distinct instances drawn at random; the less busy one serves.
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let (a, b) = (pool[a], pool[b]);
                if b.in_flight.load(Ordering::Relaxed) < a.in_flight.load(Ordering::Relaxed) {
                    b
                } else {
                    a
                }
            }
            (_, n) => pool[self.next.fetch_add(1, Ordering::Relaxed) % n],
        }
        .clone();
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Picked {
            guard: InFlight(chosen),
            all_unhealthy,
        })
    }
}
