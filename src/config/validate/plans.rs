//! The plans folder (`plans:`) and its plan files: each file validated like the routes file
//! (every error, with its own file:line:col and YAML path), then the plans together (a
//! route named by two plans).

use std::path::{Path, PathBuf};

use super::{Validator, join};
use crate::config::NamedFile;
use crate::config::RouteConfig;
use crate::config::plan::{After, DEFAULT_HOLD, Guard, OnFail, PlanConfig, Step};
use crate::config::yaml::{self, Node, Value, quote};

const PLAN_KEYS: &[&str] = &[
    "route",
    "steps",
    "guard",
    "on_fail",
    "max_wait",
    "after",
    "on_transition",
];
const STEP_KEYS: &[&str] = &["percent", "hold", "max_wait"];
const AFTER_KEYS: &[&str] = &["watch", "on_fail"];
const GUARD_KEYS: &[&str] = &[
    "min_requests",
    "max_error_rate_delta",
    "max_error_rate_ratio",
    "max_p99_ratio",
    "confidence",
    "min_shadow_match",
    "shadow_window",
];

/// The plan files of a plans folder: its `*.yaml` files, in name order.
pub fn plan_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(listed(std::fs::read_dir(dir)?))
}

fn listed(entries: std::fs::ReadDir) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml") && p.is_file())
        .collect();
    files.sort();
    files
}

impl Validator {
    /// `plans: DIR` (relative to the routes file): reads and validates every `*.yaml` in
    /// it, in name order, against `routes`.
    pub(super) fn plans(
        &mut self,
        n: &Node,
        file: &Path,
        routes: &[RouteConfig],
        retention: std::time::Duration,
    ) -> Option<(PathBuf, Vec<PlanConfig>)> {
        let dir_text = self.string(
            n,
            "plans",
            "a folder of plan files, like ../migrations-plan",
        )?;
        let dir = normalize(&file.parent().unwrap_or(Path::new(".")).join(dir_text));
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.absent_files_ok => {
                self.absent.push(crate::config::Diagnostic {
                    file: self.file.clone(),
                    pos: n.pos,
                    path: "plans".into(),
                    message: format!(
                        "the plans folder {} is not here, so its plans were not checked; the gateway reads it when it starts or reloads, and refuses the file then if it is missing",
                        dir.display()
                    ),
                });
                return Some((dir, Vec::new()));
            }
            Err(e) => {
                self.error(
                    n.pos,
                    "plans",
                    format!(
                        "cannot read the plans folder {}: {e}; allowed: a folder (relative to the routes file) holding NAME.yaml plan files",
                        dir.display()
                    ),
                );
                return None;
            }
        };
        let files = listed(entries);
        let mut plans = Vec::new();
        let mut ok = true;
        for path in files {
            let mut v = Validator::new(&path);
            v.retention = Some(retention);
            let plan = v.plan_file(&path, Some(routes));
            self.errors.append(&mut v.errors);
            match plan {
                Some((p, read)) => {
                    self.files.push(read);
                    plans.push(p);
                }
                None => ok = false,
            }
        }
        // One plan per route: two would fight over its percentage.
        for (i, p) in plans.iter().enumerate() {
            if let Some(first) = plans[..i].iter().find(|q| q.route == p.route) {
                self.error(
                    yaml::Pos { line: 1, col: 1 },
                    "route",
                    format!(
                        "route {} already has a plan ({}); allowed: one plan per route",
                        quote(&p.route),
                        first.file.display()
                    ),
                );
                // The error belongs to the second plan's file.
                if let Some(last) = self.errors.last_mut() {
                    last.file = p.file.display().to_string();
                }
                ok = false;
            }
        }
        ok.then_some((dir, plans))
    }

    /// One plan file; `self` names it in its errors.
    /// Without `routes` (a plan checked alone), the route's name is not looked up.
    pub(in crate::config) fn plan_file(
        &mut self,
        path: &Path,
        routes: Option<&[RouteConfig]>,
    ) -> Option<(PlanConfig, NamedFile)> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                self.error(
                    yaml::Pos::default(),
                    "",
                    format!("cannot read the plan file: {e}"),
                );
                return None;
            }
        };
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned())?;
        if !super::valid_name(&name) {
            self.error(
                yaml::Pos::default(),
                "",
                format!(
                    "plan name {} (the file name without .yaml); allowed: [a-z0-9][a-z0-9_-]*",
                    quote(&name)
                ),
            );
        }
        let text = String::from_utf8_lossy(&bytes);
        self.source = Some(text.to_string());
        let root = match yaml::parse(&text) {
            Ok(r) => r,
            Err(e) => {
                self.error(e.pos, "", format!("invalid YAML: {}", e.message));
                return None;
            }
        };
        let f = self.fields(&root, "", PLAN_KEYS)?;
        let route = self
            .require(&f, "", "route", "the name of the route the plan moves")
            .and_then(|n| {
                let s = self.string(n, "route", "a route name")?;
                let Some(routes) = routes else {
                    return Some(s.to_string());
                };
                if routes.iter().any(|r| r.name == s) {
                    Some(s.to_string())
                } else {
                    let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
                    self.error(
                        n.pos,
                        "route",
                        format!(
                            "unknown route {}; allowed: a route of the routes file ({})",
                            quote(s),
                            if names.is_empty() {
                                "it has none".to_string()
                            } else {
                                names.join(", ")
                            }
                        ),
                    );
                    None
                }
            });
        let steps = self
            .require(&f, "", "steps", "a list of {percent, hold}")
            .and_then(|n| self.steps(n));
        let guard = match f.get("guard") {
            None => Some(Guard::default()),
            Some(n) => self.guard(n),
        };
        let on_fail = match f.get("on_fail") {
            None => Some(OnFail::Rollback),
            Some(n) => self.on_fail(n, "on_fail"),
        };
        let max_wait = match f.get("max_wait") {
            None => Some(None),
            Some(n) => self.duration(n, "max_wait").map(Some),
        };
        let after = match f.get("after") {
            None => Some(None),
            Some(n) => self.after(n, on_fail.unwrap_or(OnFail::Rollback)).map(Some),
        };
        let on_transition = match f.get("on_transition") {
            None => Some(None),
            Some(n) => self
                .string(
                    n,
                    "on_transition",
                    "a shell command, run with sh -c on each transition",
                )
                .and_then(|s| {
                    if s.trim().is_empty() {
                        self.wrong(
                            n,
                            "on_transition",
                            "a shell command, run with sh -c on each transition",
                        );
                        None
                    } else {
                        Some(Some(s.to_string()))
                    }
                }),
        };
        if !self.errors.is_empty() {
            return None;
        }
        let plan = PlanConfig {
            name,
            file: path.to_path_buf(),
            route: route?,
            steps: steps?,
            guard: guard?,
            on_fail: on_fail?,
            max_wait: max_wait?,
            after: after?,
            on_transition: on_transition?,
        };
        Some((plan, NamedFile::plan(path, &bytes)))
    }

    fn on_fail(&mut self, n: &Node, path: &str) -> Option<OnFail> {
        match self.string(n, path, "rollback or pause")? {
            "rollback" => Some(OnFail::Rollback),
            "pause" => Some(OnFail::Pause),
            _ => {
                self.wrong(
                    n,
                    path,
                    "rollback (percent 0, and stop) or pause (stay, and wait for a person)",
                );
                None
            }
        }
    }

    /// `after: {watch: 30m, on_fail: rollback}`; `on_fail` defaults to the plan's.
    fn after(&mut self, n: &Node, plan_on_fail: OnFail) -> Option<After> {
        let f = self.fields(n, "after", AFTER_KEYS)?;
        let watch = self
            .require(
                &f,
                "after",
                "watch",
                "how long the new side is watched, like 30m",
            )
            .and_then(|w| self.duration(w, "after.watch"));
        let on_fail = match f.get("on_fail") {
            None => Some(plan_on_fail),
            Some(v) => self.on_fail(v, "after.on_fail"),
        };
        Some(After {
            watch: watch?,
            on_fail: on_fail?,
        })
    }

    fn steps(&mut self, n: &Node) -> Option<Vec<Step>> {
        let Value::Seq(items) = &n.value else {
            self.wrong(n, "steps", "a list of {percent, hold}");
            return None;
        };
        if items.is_empty() {
            self.error(
                n.pos,
                "steps",
                "found an empty list; allowed: at least one step, like - { percent: 10, hold: 30m }",
            );
            return None;
        }
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let path = format!("steps[{i}]");
            let Some(f) = self.fields(item, &path, STEP_KEYS) else {
                ok = false;
                continue;
            };
            let percent = self
                .require(&f, &path, "percent", "the route's percentage at this step")
                .and_then(|p| self.percent(p, &join(&path, "percent")));
            let last = i + 1 == items.len();
            let hold = match f.get("hold") {
                Some(h) => self.duration(h, &join(&path, "hold")).map(Some),
                None if last => Some(None),
                None => Some(Some(DEFAULT_HOLD)),
            };
            let max_wait = match f.get("max_wait") {
                Some(w) => self.duration(w, &join(&path, "max_wait")).map(Some),
                None => Some(None),
            };
            match (percent, hold, max_wait) {
                (Some(bp), Some(hold), Some(max_wait)) => {
                    if let Some(prev) = out.last().map(|s: &Step| s.percent_bp)
                        && bp <= prev
                    {
                        self.error(
                            item.pos,
                            &join(&path, "percent"),
                            format!(
                                "found {} after {}; allowed: percentages that increase from step to step",
                                crate::config::format_percent(bp),
                                crate::config::format_percent(prev)
                            ),
                        );
                        ok = false;
                    }
                    if bp == 0 {
                        self.error(
                            item.pos,
                            &join(&path, "percent"),
                            "found 0; allowed: a step above 0 (a plan starts from the route's 0)",
                        );
                        ok = false;
                    }
                    out.push(Step {
                        percent_bp: bp,
                        hold,
                        max_wait,
                    });
                }
                _ => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn guard(&mut self, n: &Node) -> Option<Guard> {
        let f = self.fields(n, "guard", GUARD_KEYS)?;
        let mut g = Guard::default();
        let mut ok = true;
        let number = |v: &Node| match v.value {
            Value::Int(i) => Some(i as f64),
            Value::Float(x) => Some(x),
            _ => None,
        };
        if let Some(v) = f.get("min_requests") {
            match v.value {
                Value::Int(i) if i >= 1 => g.min_requests = i as u64,
                _ => {
                    self.wrong(v, "guard.min_requests", "a whole number, at least 1");
                    ok = false;
                }
            }
        }
        if let Some(v) = f.get("max_error_rate_delta") {
            match number(v) {
                Some(x) if (0.0..1.0).contains(&x) => g.max_error_rate_delta = x,
                _ => {
                    self.wrong(
                        v,
                        "guard.max_error_rate_delta",
                        "a number from 0 to below 1, like 0.01 (one percentage point)",
                    );
                    ok = false;
                }
            }
        }
        if let Some(v) = f.get("max_error_rate_ratio") {
            match number(v) {
                Some(x) if x >= 1.0 => g.max_error_rate_ratio = x,
                _ => {
                    self.wrong(
                        v,
                        "guard.max_error_rate_ratio",
                        "a number, at least 1, like 1.5 (new may fail up to 1.5 times as often as legacy)",
                    );
                    ok = false;
                }
            }
        }
        if let Some(v) = f.get("max_p99_ratio") {
            match number(v) {
                Some(x) if x >= 1.0 => g.max_p99_ratio = x,
                _ => {
                    self.wrong(v, "guard.max_p99_ratio", "a number, at least 1");
                    ok = false;
                }
            }
        }
        if let Some(v) = f.get("confidence") {
            match number(v) {
                Some(x) if (0.5..1.0).contains(&x) => g.confidence = x,
                _ => {
                    self.wrong(
                        v,
                        "guard.confidence",
                        "a number from 0.5 to below 1, like 0.99",
                    );
                    ok = false;
                }
            }
        }
        if let Some(v) = f.get("shadow_window") {
            match self.duration(v, "guard.shadow_window") {
                Some(d) if self.retention.is_some_and(|r| d > r) => {
                    let r = self.retention.unwrap_or_default();
                    self.wrong(
                        v,
                        "guard.shadow_window",
                        &format!(
                            "a duration of at most the routes file's compare.retention ({}): \
                             the gateway keeps its copies' figures no longer",
                            humantime::format_duration(r)
                        ),
                    );
                    ok = false;
                }
                Some(d) if d <= crate::config::plan::MAX_SHADOW_WINDOW => g.shadow_window = d,
                Some(_) => {
                    self.wrong(
                        v,
                        "guard.shadow_window",
                        "a duration of at most 1h, like 10m",
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        if let Some(v) = f.get("min_shadow_match") {
            match number(v) {
                Some(x) if x > 0.0 && x <= 1.0 => g.min_shadow_match = Some(x),
                _ => {
                    self.wrong(
                        v,
                        "guard.min_shadow_match",
                        "a share above 0 and up to 1, like 0.999",
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(g)
    }
}

/// `a/b/../c` as `a/c`, without touching the file system (messages name the plan files as
/// a person would).
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}
