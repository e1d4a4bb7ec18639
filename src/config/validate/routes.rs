//! Routes: names, what each matches, its service, percent and stickiness.

use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

use std::collections::HashMap;

use super::{Defined, MATCH_KEYS, ROUTE_KEYS, Validator, join, valid_name};
use crate::config::yaml::{Key, Node, Value, quote};
use crate::config::{RouteConfig, percent_to_bp};
use crate::routing::{HeaderCond, HeaderTest, Match, PathMatch, Template, check_canonical};

impl Validator {
    pub(super) fn route(
        &mut self,
        n: &Node,
        i: usize,
        valid: &HashMap<&str, usize>,
        defined: &Defined,
    ) -> Option<RouteConfig> {
        let path = format!("routes[{i}]");
        let f = self.fields(n, &path, ROUTE_KEYS)?;
        let name = self
            .require(&f, &path, "name", "a unique route name")
            .and_then(|nn| {
                let p = join(&path, "name");
                let s = self.string(nn, &p, "a name matching [a-z0-9][a-z0-9_-]*")?;
                if !valid_name(s) || s == "default" {
                    self.wrong(
                        nn,
                        &p,
                        "a name matching [a-z0-9][a-z0-9_-]*, other than \"default\"",
                    );
                    None
                } else {
                    Some(s.to_string())
                }
            });
        let m = self.require(
            &f,
            &path,
            "match",
            "a mapping with one of path, prefix, regex",
        );
        let matched = m.and_then(|m| self.route_match(m, &join(&path, "match")));
        let service = self
            .require(
                &f,
                &path,
                "service",
                "the name of a service under `services`",
            )
            .and_then(|sn| {
                let p = join(&path, "service");
                let s = self.string(sn, &p, "a service name")?;
                match valid.get(s) {
                    Some(&idx) => Some((idx, s.to_string())),
                    None if defined.names.contains(s) => None,
                    None => {
                        let allowed = if defined.listed.is_empty() {
                            "a key of `services` (none are defined)".to_string()
                        } else {
                            format!("one of the services defined: {}", defined.listed.join(", "))
                        };
                        self.error(
                            sn.pos,
                            &p,
                            format!("unknown service {q}; allowed: {allowed}", q = quote(s)),
                        );
                        None
                    }
                }
            });
        let percent_bp = match f.get("percent") {
            None => Some(0),
            Some(p) => self.percent(p, &join(&path, "percent")),
        };
        let sticky = match f.get("sticky") {
            None => Some(None),
            Some(s) => self.sticky(s, &join(&path, "sticky")).map(Some),
        };
        let cohort = match f.get("cohort") {
            None => Some(None),
            Some(c) => {
                let p = join(&path, "cohort");
                match self.string(c, &p, "a non-empty cohort name") {
                    Some("") => {
                        self.wrong(c, &p, "a non-empty cohort name");
                        None
                    }
                    Some(s) => Some(Some(s.to_string())),
                    None => None,
                }
            }
        };
        let upgrades = match f.get("upgrades") {
            None => Some(true),
            Some(v) => match v.value {
                Value::Bool(b) => Some(b),
                _ => {
                    self.wrong(v, &join(&path, "upgrades"), "true or false");
                    None
                }
            },
        };
        let resilience = self.route_resilience(&f, &path);
        let shadow = match f.get("shadow") {
            None => Some(None),
            Some(s) => self.shadow(s, &join(&path, "shadow")).map(Some),
        };
        let matcher = matched?;
        let (service, service_name) = service?;
        let resilience = resilience?;
        Some(RouteConfig {
            name: name?,
            pos: n.pos,
            matcher,
            service,
            percent_bp: percent_bp?,
            sticky: sticky?,
            cohort: cohort?.unwrap_or(service_name),
            upgrades: upgrades?,
            timeout: resilience.timeout,
            connect_timeout: resilience.connect_timeout,
            fallback: resilience.fallback,
            retries: resilience.retries,
            shadow: shadow?,
        })
    }

    pub(super) fn route_match(&mut self, n: &Node, path: &str) -> Option<Match> {
        let f = self.fields(n, path, MATCH_KEYS)?;
        let kinds: Vec<(&Key, &Node)> = f
            .entries
            .iter()
            .filter(|(k, _)| matches!(k.name.as_str(), "path" | "prefix" | "regex"))
            .copied()
            .collect();
        let pm = if kinds.len() != 1 {
            let found = if kinds.is_empty() {
                "none of them".to_string()
            } else {
                kinds
                    .iter()
                    .map(|(k, _)| k.name.as_str())
                    .collect::<Vec<_>>()
                    .join(" and ")
            };
            self.error(
                n.pos,
                path,
                format!("found {found}; allowed: exactly one of path, prefix, regex"),
            );
            None
        } else {
            let (k, v) = kinds[0];
            let p = join(path, &k.name);
            self.path_match(&k.name, v, &p)
        };
        let methods = match f.get("methods") {
            None => Some(None),
            Some(m) => self.methods(m, &join(path, "methods")).map(Some),
        };
        let headers = match f.get("headers") {
            None => Some(Vec::new()),
            Some(h) => self.header_conds(h, &join(path, "headers")),
        };
        Some(Match {
            path: pm?,
            methods: methods?,
            headers: headers?,
        })
    }

    pub(super) fn path_match(&mut self, kind: &str, n: &Node, path: &str) -> Option<PathMatch> {
        match kind {
            "regex" => {
                let s = self.string(n, path, "a regular expression (regex crate syntax)")?;
                // Compiled alone first: anchoring `a)|(b` would otherwise make it valid.
                match Regex::new(s).and_then(|_| Regex::new(&format!("^(?:{s})$"))) {
                    Ok(_) => Some(PathMatch::Regex(s.to_string())),
                    Err(e) => {
                        let why = e
                            .to_string()
                            .lines()
                            .last()
                            .unwrap_or("invalid")
                            .trim()
                            .to_string();
                        self.error(
                            n.pos,
                            path,
                            format!("found {q}, an invalid regex ({why}); allowed: a regex in the syntax of the Rust regex crate", q = quote(s)),
                        );
                        None
                    }
                }
            }
            "prefix" => {
                let s = self.string(n, path, "a path prefix like /api/orders")?;
                if let Err(why) = check_canonical(s) {
                    self.error(
                        n.pos,
                        path,
                        format!(
                            "found {q} ({why}); allowed: a canonical path starting with /",
                            q = quote(s)
                        ),
                    );
                    return None;
                }
                let trimmed = if s.len() > 1 {
                    s.trim_end_matches('/')
                } else {
                    s
                };
                Some(PathMatch::Prefix(trimmed.to_string()))
            }
            _ => {
                let s = self.string(n, path, "a path like /api/orders or /api/orders/{id}")?;
                if s.contains('{') || s.contains('}') {
                    match Template::parse(s) {
                        Ok(t) => Some(PathMatch::Template(t)),
                        Err(why) => {
                            self.error(
                                n.pos,
                                path,
                                format!("found {q}, a malformed template ({why}); allowed: segments that are literal or exactly {{name}}, and an optional final {{*name}}", q = quote(s)),
                            );
                            None
                        }
                    }
                } else {
                    if let Err(why) = check_canonical(s) {
                        self.error(
                            n.pos,
                            path,
                            format!(
                                "found {q} ({why}); allowed: a canonical path starting with /",
                                q = quote(s)
                            ),
                        );
                        return None;
                    }
                    Some(PathMatch::Exact(s.to_string()))
                }
            }
        }
    }

    pub(super) fn methods(&mut self, n: &Node, path: &str) -> Option<Vec<Method>> {
        let Value::Seq(items) = &n.value else {
            self.wrong(n, path, "a list of methods like [GET, HEAD]");
            return None;
        };
        if items.is_empty() {
            self.wrong(
                n,
                path,
                "a non-empty list of methods (omit the key for any method)",
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let Some(s) = self.string(item, &p, "an HTTP method like GET") else {
                ok = false;
                continue;
            };
            let upper = s.to_ascii_uppercase();
            match Method::from_bytes(upper.as_bytes()) {
                Ok(m) if !upper.is_empty() => {
                    if !out.contains(&m) {
                        out.push(m);
                    }
                }
                _ => {
                    self.wrong(item, &p, "an HTTP method token like GET, POST or PURGE");
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    pub(super) fn header_conds(&mut self, n: &Node, path: &str) -> Option<Vec<HeaderCond>> {
        let Value::Map(entries) = &n.value else {
            self.wrong(
                n,
                path,
                "a mapping from header name to a value, {regex: ...} or {present: true|false}",
            );
            return None;
        };
        let mut out: Vec<HeaderCond> = Vec::new();
        let mut ok = true;
        for (k, v) in entries {
            let p = join(path, &k.name);
            let Ok(name) = HeaderName::from_bytes(k.name.to_ascii_lowercase().as_bytes()) else {
                self.error(
                    k.pos,
                    &p,
                    format!(
                        "found header name {}; allowed: a valid HTTP header name",
                        quote(&k.name)
                    ),
                );
                ok = false;
                continue;
            };
            if out.iter().any(|c| c.name == name) {
                self.error(
                    k.pos,
                    &p,
                    format!("duplicate header condition {} (names are case-insensitive); allowed: each header once", quote(&k.name)),
                );
                ok = false;
                continue;
            }
            let test = match &v.value {
                Value::Str(s) => match HeaderValue::from_str(s) {
                    Ok(hv) => Some(HeaderTest::Exact(hv)),
                    Err(_) => {
                        self.wrong(v, &p, "a header value of visible ASCII");
                        None
                    }
                },
                Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                    // `x-version: 2` means the text "2"; YAML typed it as a number.
                    let text = match &v.value {
                        Value::Int(i) => i.to_string(),
                        Value::Float(f) => f.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => unreachable!("matched scalar kinds above"),
                    };
                    HeaderValue::from_str(&text).ok().map(HeaderTest::Exact)
                }
                Value::Map(_) => {
                    let Some(f) = self.fields(v, &p, &["regex", "present"]) else {
                        ok = false;
                        continue;
                    };
                    if f.entries.len() != 1 {
                        self.wrong(
                            v,
                            &p,
                            "exactly one of {regex: ...} or {present: true|false}",
                        );
                        None
                    } else {
                        let (ck, cv) = f.entries[0];
                        let cp = join(&p, &ck.name);
                        if ck.name == "regex" {
                            let s = self.string(cv, &cp, "a regular expression");
                            s.and_then(|s| match Regex::new(s).and_then(|_| Regex::new(&format!("^(?:{s})$"))) {
                                Ok(r) => Some(HeaderTest::Regex(r)),
                                Err(e) => {
                                    let why = e.to_string().lines().last().unwrap_or("invalid").trim().to_string();
                                    self.error(cv.pos, &cp, format!("found {q}, an invalid regex ({why}); allowed: a regex in the syntax of the Rust regex crate", q = quote(s)));
                                    None
                                }
                            })
                        } else {
                            match cv.value {
                                Value::Bool(b) => Some(HeaderTest::Present(b)),
                                _ => {
                                    self.wrong(cv, &cp, "true or false");
                                    None
                                }
                            }
                        }
                    }
                }
                _ => {
                    self.wrong(v, &p, "a value, {regex: ...} or {present: true|false}");
                    None
                }
            };
            match test {
                Some(test) => out.push(HeaderCond { name, test }),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A percentage, written as a plain decimal (`parse_percent`'s rule, read from the
    /// scalar as written: YAML would read `0x10` as 16 and `010` as 10 or 8).
    pub(super) fn percent(&mut self, n: &Node, path: &str) -> Option<u32> {
        const ALLOWED: &str = "a number from 0 to 100 with at most two decimals";
        let written = self
            .source
            .as_deref()
            .and_then(|t| crate::config::yaml::scalar_at(t, n.pos));
        match (&n.value, written) {
            (Value::Int(_) | Value::Float(_), Some(w)) => match crate::config::parse_percent(w) {
                Ok(bp) => Some(bp),
                Err(e) => {
                    self.error(n.pos, path, e);
                    None
                }
            },
            (Value::Int(i), None) if (0..=100).contains(i) => Some(*i as u32 * 100),
            (Value::Float(f), None) => {
                let bp = percent_to_bp(*f);
                if bp.is_none() {
                    self.wrong(n, path, ALLOWED);
                }
                bp
            }
            _ => {
                self.wrong(n, path, ALLOWED);
                None
            }
        }
    }

    /// Reports duplicate route names, over every route of the file (also those with other
    /// errors), with each route's index in the file.
    pub(super) fn check_names(&mut self, items: &[Node]) {
        // By name: linear in the routes (a 20,000-route file is checked in a blink).
        let mut seen: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let Value::Map(entries) = &item.value else {
                continue;
            };
            let Some((_, n)) = entries.iter().find(|(k, _)| k.name == "name") else {
                continue;
            };
            let Value::Str(name) = &n.value else { continue };
            if let Some(line) = seen.get(name.as_str()) {
                self.error(
                    n.pos,
                    &format!("routes[{i}].name"),
                    format!(
                        "duplicate route name {q} (first at line {line}); allowed: unique names",
                        q = quote(name)
                    ),
                );
            } else {
                seen.insert(name, n.pos.line);
            }
        }
    }
}
