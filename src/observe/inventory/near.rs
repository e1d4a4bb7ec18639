//! Near misses (docs/inventory.md, "Near misses"): templates a route almost takes. The
//! requests a team believes it carved and did not: the route's path in another letter case,
//! with or without a trailing slash, with a `;parameter` in a segment, or a method the
//! route does not list.
//!
//! Found by asking the gateway's own decision ([`RouteTable::decide`]) about variants of each
//! template's example paths: a variant that another route takes, where the example as sent
//! is not taken by it, is a near miss of that route.

use std::net::{IpAddr, Ipv4Addr};

use http::{HeaderMap, Method};
use serde::{Deserialize, Serialize};

use super::map::Map;
use crate::config::Config;
use crate::routing::{
    PathMatch, PathParameters, RequestView, RouteTable, canonicalize, routing_path,
};

/// How a route almost takes a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NearMissKind {
    /// The path in lower case is the route's.
    Case,
    /// The path with (or without) a final `/` is the route's.
    TrailingSlash,
    /// The path without its segments' `;parameters` is the route's.
    PathParameter,
    /// Another method on the same path is the route's.
    Method,
}

impl NearMissKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NearMissKind::Case => "case",
            NearMissKind::TrailingSlash => "trailing_slash",
            NearMissKind::PathParameter => "path_parameter",
            NearMissKind::Method => "method",
        }
    }
}

/// A template that `route` almost takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NearMiss {
    pub method: String,
    pub template: String,
    /// The template's requests.
    pub requests: u64,
    /// The route that almost takes it.
    pub route: String,
    /// The route that takes the example as sent (`default`: none).
    pub taken_by: String,
    pub kind: NearMissKind,
    /// The example path as sent.
    pub example: String,
    /// The request `route` does take: `GET /api/orders/7`.
    pub variant: String,
    /// Why, in `strangler explain`'s words.
    pub reason: String,
}

/// What the routes decide for a method and a path, as the gateway would: canonical path,
/// `;parameters` read as `client.path_parameters` says, no headers, no query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// The winning route's index in the table; `None`: `default`.
    pub route: Option<usize>,
    /// The winning rule's pattern, as `explain` shows it: `template /api/orders/{id}`.
    pub rule: Option<String>,
    /// The gateway would refuse the request (400) before routing it.
    pub refused: bool,
}

impl Taken {
    const REFUSED: Taken = Taken {
        route: None,
        rule: None,
        refused: true,
    };
}

/// The route `table` gives `method` on `path`. Header conditions see no headers, and
/// sticky keys no value: this is which route, not which side.
pub fn decide_path(table: &RouteTable, method: &str, path: &str, mode: PathParameters) -> Taken {
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Taken::REFUSED;
    };
    let Ok(canonical) = canonicalize(path) else {
        return Taken::REFUSED;
    };
    let Ok(routed) = routing_path(&canonical, mode) else {
        return Taken::REFUSED;
    };
    let headers = HeaderMap::new();
    let mut rule = None;
    let d = table.decide_traced(
        &RequestView {
            path: &routed,
            method: &method,
            headers: &headers,
            query: None,
            peer: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        },
        |c| {
            if c.miss.is_none() {
                rule = Some(format!("{} {}", c.tier, c.pattern));
            }
        },
    );
    Taken {
        route: d.route,
        rule,
        refused: false,
    }
}

/// The name of a route index (`default` for none).
pub(crate) fn route_name(table: &RouteTable, route: Option<usize>) -> String {
    route.map_or_else(
        || crate::routing::DEFAULT_ROUTE.to_string(),
        |i| table.routes()[i].name.to_string(),
    )
}

/// The methods tried for method near misses.
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Near misses of the map's templates, paths read as the gateway's default
/// (`client.path_parameters: match_without`) reads them; letter case is tried in lower
/// case only ([`near_misses_for`] also tries each rule's own spelling).
pub fn near_misses(map: &Map, table: &RouteTable) -> Vec<NearMiss> {
    near_misses_with(map, table, PathParameters::default())
}

/// Near misses, paths read as `client.path_parameters` says (`mode`); letter case is tried
/// in lower case only.
pub fn near_misses_with(map: &Map, table: &RouteTable, mode: PathParameters) -> Vec<NearMiss> {
    find(map, table, mode, &[])
}

/// Near misses against the routes file `cfg` (compiled as `table`): paths read as its
/// `client.path_parameters` says, and letter case tried both in lower case and as each
/// rule spells its literal segments (`/Org/onboardingStatus` for `/org/onboardingstatus`).
pub fn near_misses_for(map: &Map, cfg: &Config, table: &RouteTable) -> Vec<NearMiss> {
    let patterns: Vec<&PathMatch> = cfg.routes.iter().map(|r| &r.matcher.path).collect();
    find(map, table, cfg.client.path_parameters, &patterns)
}

/// `example` with each segment that a literal segment of `pattern` spells in another
/// letter case written as the pattern spells it; `None` when no segment is.
fn spelled_as(example: &str, pattern: &PathMatch) -> Option<String> {
    let literals: Vec<Option<&str>> = match pattern {
        PathMatch::Exact(p) | PathMatch::Prefix(p) => p.split('/').skip(1).map(Some).collect(),
        PathMatch::Template(t) => t
            .source()
            .split('/')
            .skip(1)
            .map(|s| (!s.starts_with('{')).then_some(s))
            .collect(),
        PathMatch::Regex(_) => return None,
    };
    let mut out = String::with_capacity(example.len());
    let mut changed = false;
    for (i, seg) in example.split('/').skip(1).enumerate() {
        out.push('/');
        match literals.get(i).copied().flatten() {
            Some(l) if l != seg && l.eq_ignore_ascii_case(seg) => {
                out.push_str(l);
                changed = true;
            }
            _ => out.push_str(seg),
        }
    }
    changed.then_some(out)
}

/// Near misses; `patterns`: the rules' paths (by route index) for letter case, or none.
/// Method near misses are looked for only where no route takes the template: a method
/// another route takes on purpose (writes to a prefix route, reads to a template) is no
/// miss.
fn find(
    map: &Map,
    table: &RouteTable,
    mode: PathParameters,
    patterns: &[&PathMatch],
) -> Vec<NearMiss> {
    let mut out = Vec::new();
    for t in &map.templates {
        let mut seen: Vec<(usize, NearMissKind)> = Vec::new();
        for example in &t.examples {
            let here = decide_path(table, &t.method, example, mode);
            let taken_by = if here.refused {
                format!("{} (refused)", crate::routing::DEFAULT_ROUTE)
            } else {
                route_name(table, here.route)
            };
            let mut found = |kind: NearMissKind,
                             variant_method: &str,
                             variant: &str,
                             why: String| {
                let there = decide_path(table, variant_method, variant, mode);
                let Some(r) = there.route else { return };
                if there.route == here.route || seen.contains(&(r, kind)) {
                    return;
                }
                seen.push((r, kind));
                let name = route_name(table, Some(r));
                let rule = there.rule.unwrap_or_default();
                out.push(NearMiss {
                    method: t.method.clone(),
                    template: t.template.clone(),
                    requests: t.requests,
                    route: name.clone(),
                    taken_by: taken_by.clone(),
                    kind,
                    example: example.clone(),
                    variant: format!("{variant_method} {variant}"),
                    reason: format!(
                        "route {name} ({rule}) takes {variant_method} {variant} but not {} {example}: {why}",
                        t.method
                    ),
                });
            };
            let lower = example.to_ascii_lowercase();
            let mut spellings = vec![lower];
            spellings.extend(patterns.iter().filter_map(|p| spelled_as(example, p)));
            for variant in spellings {
                if variant != *example {
                    found(
                        NearMissKind::Case,
                        &t.method,
                        &variant,
                        "paths are matched case-sensitively".into(),
                    );
                }
            }
            let toggled = match example.strip_suffix('/') {
                Some(p) if !p.is_empty() => p.to_string(),
                Some(_) => String::new(),
                None => format!("{example}/"),
            };
            if !toggled.is_empty() {
                found(
                    NearMissKind::TrailingSlash,
                    &t.method,
                    &toggled,
                    "a path with and without a final / are two paths".into(),
                );
            }
            if example.contains(';') {
                let bare = routing_path(example, PathParameters::MatchWithout)
                    .map(|p| p.into_owned())
                    .unwrap_or_default();
                let why = match mode {
                    PathParameters::Refuse => {
                        "a path with ;parameters is refused (client.path_parameters: refuse)"
                    }
                    _ => {
                        "the ;parameters are part of the path it matches (client.path_parameters: literal)"
                    }
                };
                if !bare.is_empty() {
                    found(NearMissKind::PathParameter, &t.method, &bare, why.into());
                }
            }
            if here.route.is_none() && !here.refused {
                let mut by_route: Vec<(usize, Vec<&str>)> = Vec::new();
                for m in METHODS {
                    if m == t.method {
                        continue;
                    }
                    if let Some(r) = decide_path(table, m, example, mode).route {
                        match by_route.iter_mut().find(|(x, _)| *x == r) {
                            Some((_, ms)) => ms.push(m),
                            None => by_route.push((r, vec![m])),
                        }
                    }
                }
                for (_, ms) in by_route {
                    found(
                        NearMissKind::Method,
                        ms[0],
                        example,
                        format!(
                            "{} is not in its methods (it takes {})",
                            t.method,
                            ms.join(", ")
                        ),
                    );
                }
            }
        }
    }
    out
}
