//! Passive outlier detection (`outlier`): an instance whose attempts fail in a row is
//! taken out for a while, within the service's cap; and the breaker told of every attempt.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::*;
use crate::config::resilience::OutlierConfig;

impl ServiceState {
    /// Tells the breaker and outlier detection how an attempt on `instance`, begun at
    /// `began`, went; `ok` is `None` when the client's own failure says nothing of the
    /// service; `probe` is the breaker's probe number when the attempt was its probe.
    pub fn report(
        &self,
        instance: Option<&Instance>,
        ok: Option<bool>,
        probe: Option<u64>,
        began: Instant,
        now: Instant,
    ) {
        if let Some(b) = &self.breaker {
            b.record(ok, probe, now);
        }
        let (Some(outlier), Some(i), Some(ok)) = (self.outlier, instance, ok) else {
            return;
        };
        // An attempt begun before the instance's last ejection tells nothing new: that
        // ejection acted on what such attempts saw.
        if self.ms(began) < i.out_since.load(Ordering::Relaxed) {
            return;
        }
        if ok {
            // Written only when set: a success costs a read.
            if i.streak.load(Ordering::Relaxed) != 0 {
                i.streak.store(0, Ordering::Relaxed);
            }
            if i.ejections.load(Ordering::Relaxed) != 0 {
                i.ejections.store(0, Ordering::Relaxed);
            }
        } else if i.streak.fetch_add(1, Ordering::Relaxed) + 1 >= outlier.consecutive {
            self.eject(i, outlier, now);
        }
    }

    /// Takes `i` out, unless the cap is reached or it is the last instance serving (its
    /// streak then stays one short: its next failure asks again).
    fn eject(&self, i: &Instance, outlier: OutlierConfig, now: Instant) {
        let _one = self.ejecting.lock().unwrap_or_else(|p| p.into_inner());
        let now_ms = self.ms(now);
        if i.ejected(now_ms) {
            // Failures of requests it served while out, every healthy instance being out.
            i.streak.store(0, Ordering::Relaxed);
            return;
        }
        let list = self.instances.load();
        let out = list.iter().filter(|x| x.ejected(now_ms)).count();
        let cap = (list.len() * outlier.max_ejected_percent as usize / 100).max(1);
        let serving = list
            .iter()
            .filter(|x| x.healthy() && !x.ejected(now_ms))
            .count();
        if out >= cap || (i.healthy() && serving <= 1) {
            i.streak
                .store(outlier.consecutive.saturating_sub(1), Ordering::Relaxed);
            return;
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        // Ejections in a row count up, unless it stayed in as long as the longest one.
        let last_end = i.out_until.load(Ordering::Relaxed);
        let longest = ms(outlier.ejection.saturating_mul(OutlierConfig::MAX_MULTIPLE));
        let before = if last_end != 0 && now_ms.saturating_sub(last_end) >= longest {
            0
        } else {
            i.ejections.load(Ordering::Relaxed)
        };
        let times = (before + 1).min(OutlierConfig::MAX_MULTIPLE);
        i.ejections.store(times, Ordering::Relaxed);
        let span = outlier.ejection.saturating_mul(times);
        i.out_since.store(now_ms, Ordering::Relaxed);
        i.out_until
            .store(now_ms.saturating_add(ms(span)), Ordering::Relaxed);
        i.streak.store(0, Ordering::Relaxed);
        tracing::warn!(
            service = %self.name,
            instance = %i.label,
            failures = outlier.consecutive,
            out_for = ?span,
            "instance ejected: its requests failed in a row"
        );
    }
}
