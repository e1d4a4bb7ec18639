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
        // The first rule tried without conditions, and the first with each set of
        // conditions: the earlier of the two that apply is the one that shadows (linear in
        // the group, however large).
        // Positions in the group, in the order its rules are tried.
        let mut unconditioned: Option<usize> = None;
        let mut first_with = std::collections::HashMap::new();
        for (pos, &ri) in group.iter().enumerate() {
            let r = &cfg.routes[ri];
            let same = *first_with.entry(r.matcher.conditions_key()).or_insert(pos);
            let shadow = [unconditioned, (same != pos).then_some(same)]
                .into_iter()
                .flatten()
                .min()
                .map(|p| &cfg.routes[group[p]]);
            if r.matcher.condition_count() == 0 && unconditioned.is_none() {
                unconditioned = Some(pos);
            }
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
