//! Plans run inside a gateway: the guard judges the gateway's own counts of the route
//! since the step began, and a change of percentage is written into the routes file and
//! reloaded at once. A rollback goes into force in memory first ([`Overrides`]), and the
//! file catches up.
//!
//! [`Overrides`]: crate::proxy::overrides::Overrides

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::{CatchUp, Environment, Judgement, Plans, Unpublished, beside_plan, engine, unix_now};
use crate::config::percent_json;
use crate::config::plan::PlanConfig;
use crate::control::reload::Reloader;
use crate::control::shift::{ShiftError, shift_file, shift_file_from};
use crate::observe::verdict::judge;
use crate::observe::window::SideFigures;
use crate::observe::{Registry, Tally};
use crate::proxy::Gateway;
use crate::proxy::overrides::Override;
use crate::routing::Side;

/// A gateway's plans.
pub type GatewayPlans = Plans<GatewayEnv>;

/// What a gateway's plans act on.
pub struct GatewayEnv {
    gateway: Arc<Gateway>,
    reloader: Arc<Reloader>,
    windows: Arc<Registry>,
    /// Per plan: the route's totals when its counts began (`counts_since`), both sides.
    baselines: Mutex<HashMap<String, (f64, Tally, Tally)>>,
}

impl GatewayEnv {
    pub fn new(
        gateway: Arc<Gateway>,
        reloader: Arc<Reloader>,
        windows: Arc<Registry>,
    ) -> GatewayEnv {
        GatewayEnv {
            gateway,
            reloader,
            windows,
            baselines: Mutex::new(HashMap::new()),
        }
    }

    /// Why the new side's share of `route` goes to legacy now, if it does: no healthy
    /// instance of its service, or its circuit breaker open (or half-open).
    fn blocked(&self, route: &str) -> Option<String> {
        let table = self.gateway.table.load();
        let i = table.config.routes.iter().position(|r| r.name == route)?;
        let upstream = table.upstream(table.new_upstream(i));
        let fleet = upstream.fleet.as_ref()?;
        if !fleet.available() {
            return Some(format!(
                "no healthy instance of {}: the new side's share goes to legacy",
                upstream.name
            ));
        }
        let open = fleet
            .breaker
            .as_ref()
            .is_some_and(|b| b.is_open(std::time::Instant::now()));
        open.then(|| format!("the circuit breaker of {} is open", upstream.name))
    }
}

impl Environment for GatewayEnv {
    fn plans(&self) -> Vec<PlanConfig> {
        self.gateway.table.load().config.plans.clone()
    }

    fn state_path(&self, plan: &PlanConfig) -> PathBuf {
        beside_plan(plan)
    }

    fn plans_dir(&self) -> Option<PathBuf> {
        self.gateway.table.load().config.plans_dir.clone()
    }

    async fn in_force(&self, route: &str) -> Option<u32> {
        let table = self.gateway.table.load();
        table
            .config
            .routes
            .iter()
            .find(|r| r.name == route)
            .map(|r| r.percent_bp)
    }

    fn held(&self, route: &str) -> Option<Override> {
        self.gateway
            .table
            .load()
            .held_of(route)
            .map(|a| a.held.clone())
    }

    async fn judge(&self, plan: &PlanConfig, since: f64) -> Option<Judgement> {
        let percent = self.in_force(&plan.route).await.unwrap_or(0);
        let w = self.windows.route(&plan.route);
        let (legacy, new) = (w.tally(Side::Legacy), w.tally(Side::New));
        let (legacy, new) = {
            let mut baselines = self.baselines.lock().unwrap_or_else(|p| p.into_inner());
            // Taken when the counts began (`begin_counts`); a gateway that restarted mid-step
            // (or never saw the step begin) counts from its first look.
            let base = baselines
                .entry(plan.name.clone())
                .or_insert_with(|| (since, legacy.clone(), new.clone()));
            if base.0 != since {
                *base = (since, legacy.clone(), new.clone());
            }
            (legacy.since(&base.1), new.since(&base.2))
        };
        let figures = judge(
            &plan.route,
            percent_json(percent),
            SideFigures::of_tally(&legacy),
            SideFigures::of_tally(&new),
            &engine::guard_config(plan),
        );
        Some(Judgement {
            figures,
            // Only a share the plan sends there can be diverted from it.
            blocked: (percent > 0).then(|| self.blocked(&plan.route)).flatten(),
        })
    }

    async fn shadow_match(
        &self,
        route: &str,
        window: std::time::Duration,
    ) -> Option<(Option<f64>, u64, String)> {
        self.gateway.carried.shadows.get(route).map(|r| {
            let (f, covered) = r.recent(window);
            (
                f.match_rate,
                f.compared,
                format!(
                    "(the copies compared over the last {} (covering {}s), since the route last changed or was reset)",
                    humantime::format_duration(window),
                    covered.as_secs()
                ),
            )
        })
    }

    fn begin_counts(&self, plan: &PlanConfig, since: f64) {
        let w = self.windows.route(&plan.route);
        w.watch_keys().clear();
        let base = (since, w.tally(Side::Legacy), w.tally(Side::New));
        self.baselines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(plan.name.clone(), base);
    }

    async fn write(&self, route: &str, bp: u32) -> Result<(), String> {
        let path = self.reloader.path().to_path_buf();
        let name = route.to_string();
        tokio::task::spawn_blocking(move || shift_file(&path, &name, bp))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        // The plan's own write ends any percentage held for the route (the file now says
        // what the plan wants, even when that is what it said before the hold).
        let released = self.gateway.carried.overrides.release(route).is_some();
        let reloaded = self
            .reloader
            .reload("plan")
            .await
            .map_err(|e| format!("the routes file was not applied: {e}"))?;
        if released && !reloaded.changed {
            self.reloader.rebuild("plan").await?;
        }
        Ok(())
    }

    async fn hold(&self, plan: &PlanConfig, bp: u32, reason: &str) -> Option<u32> {
        let table = self.gateway.table.load();
        let route = table.config.routes.iter().find(|r| r.name == plan.route)?;
        let file_bp = table
            .held_of(&plan.route)
            .map_or(route.percent_bp, |a| a.held.file_bp);
        drop(table);
        self.gateway.carried.overrides.hold(
            &plan.route,
            Override {
                bp,
                file_bp,
                reason: format!("plan {}: {reason}", plan.name),
                plan: plan.name.clone(),
                since: unix_now(),
            },
        );
        if let Err(e) = self.reloader.rebuild("plan rollback").await {
            tracing::error!(plan = %plan.name, error = %e, "plan: the rollback could not be compiled into the table");
        }
        self.in_force(&plan.route).await
    }

    async fn catch_up(&self, route: &str, change: &Unpublished) -> Result<CatchUp, String> {
        let table = self.gateway.table.load();
        // The hold already ended: the file caught up, or a person set another percentage.
        let Some(from) = table.held_of(route).map(|a| a.held.file_bp) else {
            return self.catch_up_settled(route, change).await;
        };
        drop(table);
        let path = self.reloader.path().to_path_buf();
        let (name, bp) = (route.to_string(), change.bp);
        let written = tokio::task::spawn_blocking(move || shift_file_from(&path, &name, from, bp))
            .await
            .map_err(|e| e.to_string())?;
        match written {
            Ok(_) => {}
            // Someone else wrote the file meanwhile: the reload below applies what it says.
            Err(ShiftError::Moved { found, .. }) => {
                tracing::info!(route = %route, found = crate::config::format_percent(found), "plan: the routes file was changed meanwhile");
            }
            Err(e) => return Err(e.to_string()),
        }
        self.reloader
            .reload("plan rollback written")
            .await
            .map_err(|e| format!("the routes file was not applied: {e}"))?;
        // The reload ended the hold (caught up, or a person's value).
        self.catch_up_settled(route, change).await
    }

    fn sticky_keys(&self, plan: &PlanConfig) -> Option<Value> {
        let table = self.gateway.table.load();
        let i = table
            .config
            .routes
            .iter()
            .position(|r| r.name == plan.route)?;
        let route = &table.config.routes[i];
        route.sticky.as_ref().or(table.config.sticky.as_ref())?;
        let keys = table.stats(Some(i)).window.watch_keys();
        let (new, all) = (keys.new.estimate(), keys.all.estimate());
        let few = new < FEW_KEYS && all > 0;
        Some(json!({
            "new_keys": new,
            "keys": all,
            "warning": few.then(|| format!(
                "the new side served about {new} distinct sticky keys since the counts began (of about {all} seen): its figures speak for very few users"
            )),
        }))
    }
}

/// Below this many distinct sticky keys on the new side, the status warns that its figures
/// speak for few users.
const FEW_KEYS: u64 = 20;

impl GatewayEnv {
    /// After a catch-up's write and reload: whether the hold is over.
    async fn catch_up_settled(&self, route: &str, change: &Unpublished) -> Result<CatchUp, String> {
        let table = self.gateway.table.load();
        if table.held_of(route).is_some() {
            return Err("the routes file still says the old percentage after the write".into());
        }
        let now = table
            .config
            .routes
            .iter()
            .find(|r| r.name == route)
            .map(|r| r.percent_bp);
        Ok(match now {
            Some(bp) if bp == change.bp => CatchUp::Done,
            Some(bp) => CatchUp::Superseded(format!(
                "the routes file says {}%",
                crate::config::format_percent(bp)
            )),
            None => CatchUp::Superseded("the route is no longer in the routes file".into()),
        })
    }
}
