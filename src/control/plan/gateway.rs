//! Plans run inside a gateway: the guard judges the gateway's own counts of the route
//! since the step began, and a change of percentage is written into the routes file and
//! reloaded at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::{Environment, Plans, beside_plan, engine};
use crate::config::percent_json;
use crate::config::plan::PlanConfig;
use crate::control::reload::Reloader;
use crate::control::shift::shift_file;
use crate::observe::verdict::{RouteComparison, judge};
use crate::observe::window::SideFigures;
use crate::observe::{Registry, Tally};
use crate::proxy::Gateway;
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
}

impl GatewayEnv {
    /// The new service of `route`, when its circuit breaker is open (or half-open).
    fn open_breaker(&self, route: &str) -> Option<String> {
        let table = self.gateway.table.load();
        let i = table.config.routes.iter().position(|r| r.name == route)?;
        let upstream = &table.upstreams[table.new_upstream(i)];
        let open = upstream
            .fleet
            .as_ref()
            .and_then(|f| f.breaker.as_ref())
            .is_some_and(|b| b.is_open(std::time::Instant::now()));
        open.then(|| upstream.name.to_string())
    }
}

impl Environment for GatewayEnv {
    fn plans(&self) -> Vec<PlanConfig> {
        self.gateway.table.load().config.plans.clone()
    }

    fn state_path(&self, plan: &PlanConfig) -> PathBuf {
        beside_plan(plan)
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

    async fn judge(&self, plan: &PlanConfig, since: f64) -> Option<RouteComparison> {
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
        let mut verdict = judge(
            &plan.route,
            percent_json(percent),
            SideFigures::of_tally(&legacy),
            SideFigures::of_tally(&new),
            &engine::guard_config(plan),
        );
        // An open breaker fails the guard, whatever the figures say yet.
        if let Some(service) = self.open_breaker(&plan.route) {
            verdict.breaker_open(&service);
        }
        Some(verdict)
    }

    async fn shadow_match(&self, route: &str) -> Option<(Option<f64>, u64)> {
        self.gateway
            .shadows
            .get(route)
            .map(|r| r.recent_match_rate())
    }

    fn begin_counts(&self, plan: &PlanConfig, since: f64) {
        let w = self.windows.route(&plan.route);
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
        self.reloader
            .reload("plan")
            .await
            .map(|_| ())
            .map_err(|e| format!("the routes file was not applied: {e}"))
    }
}
