//! Lints: findings about a valid file that are worth a warning, such as rules that can
//! never win. Run by `strangler check`, at start and at every reload.

use super::yaml::quote;
use super::{Config, Diagnostic};
use crate::routing::group_order;

/// Every warning about `cfg`.
pub fn run(cfg: &Config) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    unreachable_rules(cfg, &mut out);
    out
}

/// Routes that can never win: a route whose pattern is shared with an earlier-tried route
/// that has no conditions, or the very same conditions.
fn unreachable_rules(cfg: &Config, out: &mut Vec<Diagnostic>) {
    for group in group_order(cfg.routes.iter().map(|r| &r.matcher)) {
        for (pos, &ri) in group.iter().enumerate() {
            let r = &cfg.routes[ri];
            let shadow = group[..pos].iter().map(|&j| &cfg.routes[j]).find(|e| {
                e.matcher.condition_count() == 0 || e.matcher.same_conditions(&r.matcher)
            });
            if let Some(e) = shadow {
                let why = if e.matcher.condition_count() == 0 {
                    "has no conditions"
                } else {
                    "has the same conditions"
                };
                out.push(Diagnostic {
                    file: cfg.file.display().to_string(),
                    pos: r.pos,
                    path: format!("routes[{ri}]"),
                    message: format!(
                        "route {} can never win: route {} matches the same {} {} and {why}",
                        quote(&r.name),
                        quote(&e.name),
                        r.matcher.path.kind(),
                        quote(r.matcher.path.pattern())
                    ),
                });
            }
        }
    }
}
