//! Suggestions (docs/inventory.md, "Suggestions"): for the templates still on legacy, the
//! most requested (or failing, or slowest) first, a route in the routes file's own YAML,
//! with `service: TODO` for the team to name, at `percent: 0` with a shadow of reads, so
//! that nothing moves until someone decides. With the routes file at hand, a rule that
//! would overlap an existing route says so, in `strangler explain`'s words.

use http::Method;
use serde::{Deserialize, Serialize};

use super::map::{Map, TemplateView};
use super::near::{Taken, decide_path, route_name};
use crate::config::Config;
use crate::routing::{
    Match, PathMatch, PathParameters, Route, RouteTable, SidePolicy, Template, check_canonical,
};

/// What suggestions are ranked by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SortKey {
    /// Most requests first.
    #[default]
    Requests,
    /// Most errors (status 500 or more) first.
    Errors,
    /// Slowest p99 first.
    P99,
}

impl SortKey {
    /// Orders `a` before `b` when it ranks higher.
    pub fn cmp(self, a: &TemplateView, b: &TemplateView) -> std::cmp::Ordering {
        let key = |t: &TemplateView| match self {
            SortKey::Requests => (t.requests as f64, 0.0),
            SortKey::Errors => (t.errors as f64, t.requests as f64),
            SortKey::P99 => (t.p99_ms.unwrap_or(-1.0), t.requests as f64),
        };
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0)
            .then(kb.1.total_cmp(&ka.1))
            .then(b.requests.cmp(&a.requests))
            .then_with(|| a.template.cmp(&b.template))
            .then_with(|| a.method.cmp(&b.method))
    }
}

/// A route to paste for a template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suggestion {
    pub method: String,
    pub template: String,
    pub requests: u64,
    pub errors: u64,
    pub p99_ms: Option<f64>,
    /// The route's name, unique in the routes file and among the suggestions.
    pub name: String,
    /// The route as a list item of `routes:` (two spaces in), comments included.
    pub yaml: String,
    /// Why the rule would overlap an existing route (empty: it would not, or no routes
    /// file was given).
    pub overlaps: Vec<String>,
}

/// Overlap reasons kept per suggestion.
const MAX_OVERLAPS: usize = 5;

/// Whether a template is still on legacy: no route of `routes` takes its first example (or,
/// without a routes file, none took its requests), or the new side served none of them.
fn legacy_only(t: &TemplateView, routes: Option<(&RouteTable, PathParameters)>) -> bool {
    if t.new_requests == 0 {
        return true;
    }
    match (routes, t.examples.first()) {
        (Some((table, mode)), Some(e)) => {
            let d = decide_path(table, &t.method, e, mode);
            d.route.is_none() && !d.refused
        }
        _ => t
            .routes
            .iter()
            .all(|r| r.route == crate::routing::DEFAULT_ROUTE),
    }
}

/// The path match of a template as a rule: a template with parameters, else an exact path.
/// `None` when the routes file could not hold it (braces in a literal, say).
fn rule_path(template: &str) -> Option<PathMatch> {
    if template.contains('{') {
        Template::parse(template).ok().map(PathMatch::Template)
    } else {
        check_canonical(template)
            .ok()
            .map(|()| PathMatch::Exact(template.to_string()))
    }
}

/// A route name from a method and a template: `get-api-users-user_id`.
fn base_name(method: &str, template: &str) -> String {
    let mut s = method.to_ascii_lowercase();
    for seg in template.split('/').filter(|s| !s.is_empty()) {
        let seg = seg.trim_start_matches(['{', '*']).trim_end_matches('}');
        let cleaned: String = seg
            .chars()
            .map(|c| {
                let c = c.to_ascii_lowercase();
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let cleaned = cleaned.trim_matches('-');
        if !cleaned.is_empty() {
            s.push('-');
            s.push_str(cleaned);
        }
    }
    if !s.contains('-') {
        s.push_str("-root");
    }
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    if out.len() > 48 {
        out.truncate(48);
    }
    out.trim_end_matches(['-', '_']).to_string()
}

/// A YAML scalar for a path: plain when it is safe so, else double-quoted.
fn yaml_path(p: &str) -> String {
    if p.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/_-.{}*~%:@!$&'()+,;=".contains(&b))
        && !p.contains(": ")
    {
        p.to_string()
    } else {
        format!("\"{}\"", p.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

fn summary(t: &TemplateView) -> String {
    let rate = if t.requests == 0 {
        0.0
    } else {
        t.errors as f64 * 100.0 / t.requests as f64
    };
    let p99 = t
        .p99_ms
        .map_or("p99 unknown".to_string(), |p| format!("p99 {p:.1} ms"));
    format!(
        "{} {}: {} requests, {} errors ({rate:.2}%), {p99}, {} served by new",
        t.method, t.template, t.requests, t.errors, t.new_requests
    )
}

/// Ranks the map's legacy-only templates by `sort` and writes a route for each of the first
/// `limit`. With `cfg`, the routes it already has decide what is legacy-only, the names
/// avoid theirs, and overlaps are reported.
pub fn suggest(map: &Map, cfg: Option<&Config>, sort: SortKey, limit: usize) -> Vec<Suggestion> {
    let table = cfg.and_then(|c| c.compile().ok());
    let mode = cfg.map_or(PathParameters::default(), |c| c.client.path_parameters);
    let routes = table.as_ref().map(|t| (t, mode));
    let mut picked: Vec<&TemplateView> = map
        .templates
        .iter()
        .filter(|t| t.requests > 0 && legacy_only(t, routes) && rule_path(&t.template).is_some())
        .filter(|t| Method::from_bytes(t.method.as_bytes()).is_ok())
        .collect();
    // A HEAD whose GET is suggested too: the GET's rule lists HEAD.
    let gets: Vec<&str> = picked
        .iter()
        .filter(|t| t.method == "GET")
        .map(|t| t.template.as_str())
        .collect();
    picked.retain(|t| !(t.method == "HEAD" && gets.contains(&t.template.as_str())));
    picked.sort_by(|a, b| sort.cmp(a, b));
    picked.truncate(limit);

    let mut names: Vec<String> = cfg
        .map(|c| c.routes.iter().map(|r| r.name.clone()).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for t in picked {
        let base = base_name(&t.method, &t.template);
        let mut name = base.clone();
        let mut k = 2;
        while names.contains(&name) || name == crate::routing::DEFAULT_ROUTE {
            name = format!("{base}-{k}");
            k += 1;
        }
        names.push(name.clone());
        let methods: Vec<&str> = if t.method == "GET" {
            vec!["GET", "HEAD"]
        } else {
            vec![t.method.as_str()]
        };
        let overlaps = match (cfg, &table) {
            (Some(c), Some(existing)) => overlaps(map, t, c, existing, &name, &methods, mode),
            _ => Vec::new(),
        };
        let safe = matches!(t.method.as_str(), "GET" | "HEAD");
        let mut yaml = format!("  # {}\n", summary(t));
        for o in &overlaps {
            yaml.push_str(&format!("  # overlap: {o}\n"));
        }
        yaml.push_str(&format!(
            "  - name: {name}\n    match:\n      path: {}\n      methods: [{}]\n    service: TODO\n    percent: 0\n",
            yaml_path(&t.template),
            methods.join(", ")
        ));
        if safe {
            yaml.push_str("    shadow: { percent: 100 }\n");
        } else {
            yaml.push_str(&format!(
                "    # no shadow: a copy of a {} would act a second time\n",
                t.method
            ));
        }
        out.push(Suggestion {
            method: t.method.clone(),
            template: t.template.clone(),
            requests: t.requests,
            errors: t.errors,
            p99_ms: t.p99_ms,
            name,
            yaml,
            overlaps,
        });
    }
    out
}

/// Where the rule for `t` would meet the routes of `cfg`: its examples taken today by a
/// route, its examples another rule would still win, and other templates' requests it would
/// take from their route.
fn overlaps<'a>(
    map: &'a Map,
    t: &TemplateView,
    cfg: &Config,
    existing: &RouteTable,
    name: &str,
    methods: &[&str],
    mode: PathParameters,
) -> Vec<String> {
    let Some(path) = rule_path(&t.template) else {
        return Vec::new();
    };
    let new_match = Match {
        path,
        methods: Some(
            methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect(),
        ),
        headers: Vec::new(),
    };
    let mut routes: Vec<Route> = existing.routes().to_vec();
    routes.push(Route {
        name: name.into(),
        policy: SidePolicy {
            percent_bp: 0,
            sticky: None,
            cohort: name.into(),
        },
        service: 0,
    });
    let new_index = cfg.routes.len();
    let Ok(extended) = RouteTable::new(
        cfg.routes
            .iter()
            .map(|r| &r.matcher)
            .chain(std::iter::once(&new_match)),
        routes,
        cfg.override_header.clone(),
        cfg.trusted_proxies.clone(),
    ) else {
        return Vec::new();
    };
    let describe = |d: &Taken| -> String {
        match &d.rule {
            Some(rule) => format!("route {} ({rule})", route_name(&extended, d.route)),
            None => format!("route {}", route_name(&extended, d.route)),
        }
    };
    // One line per kind and route: the first example that shows it.
    let mut out = Vec::new();
    let mut seen: Vec<(u8, Option<usize>, &str)> = Vec::new();
    let mut more = 0usize;
    let mut say = |key: (u8, Option<usize>, &'a str), s: String| {
        if seen.contains(&key) {
            return;
        }
        seen.push(key);
        if out.len() < MAX_OVERLAPS {
            out.push(s);
        } else {
            more += 1;
        }
    };
    for e in &t.examples {
        let before = decide_path(existing, &t.method, e, mode);
        if before.route.is_some() {
            say(
                (0, before.route, ""),
                format!(
                    "{} {e} is taken today by {}; raising that route's percent may be all it needs",
                    t.method,
                    describe(&before)
                ),
            );
        }
        let after = decide_path(&extended, &t.method, e, mode);
        if after.route != Some(new_index) && !after.refused {
            say(
                (1, after.route, ""),
                format!(
                    "the rule would not take {} {e}: {} is tried first",
                    t.method,
                    describe(&after)
                ),
            );
        }
    }
    for o in &map.templates {
        if std::ptr::eq(o, t) {
            continue;
        }
        for e in &o.examples {
            let after = decide_path(&extended, &o.method, e, mode);
            if after.route != Some(new_index) {
                continue;
            }
            let before = decide_path(existing, &o.method, e, mode);
            if before.route.is_some() {
                say(
                    (2, before.route, &o.template),
                    format!(
                        "it would take {} {e} ({} {}) from {}",
                        o.method,
                        o.method,
                        o.template,
                        describe(&before)
                    ),
                );
                break;
            }
        }
    }
    if more > 0 {
        out.push(format!("and {more} more"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            base_name("GET", "/api/users/{user_id}"),
            "get-api-users-user_id"
        );
        assert_eq!(base_name("POST", "/"), "post-root");
        assert_eq!(base_name("GET", "/files/{*rest}"), "get-files-rest");
        assert_eq!(base_name("GET", "/a.b/C"), "get-a-b-c");
        assert!(base_name("GET", &"/abcdefghij".repeat(10)).len() <= 48);
    }

    #[test]
    fn paths_in_yaml() {
        assert_eq!(yaml_path("/api/users/{user_id}"), "/api/users/{user_id}");
        assert_eq!(yaml_path("/a\"b"), "\"/a\\\"b\"");
    }
}
