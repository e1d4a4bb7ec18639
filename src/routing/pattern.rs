//! What a rule matches: a path pattern (exact, template, prefix or regex), optional methods
//! and header conditions. These are the validated forms the routes file is read into; the
//! [`Router`](super::Router) compiles them into lookup structures.

use std::fmt;

use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

/// What part of the path a rule matches on.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    Template(Template),
    /// Stored without a trailing slash (`/` stays `/`).
    Prefix(String),
    /// The pattern as written; matched against the whole path.
    Regex(String),
}

impl PathMatch {
    /// The key of the routes file that holds this pattern.
    pub fn kind(&self) -> &'static str {
        match self {
            PathMatch::Exact(_) | PathMatch::Template(_) => "path",
            PathMatch::Prefix(_) => "prefix",
            PathMatch::Regex(_) => "regex",
        }
    }

    /// The pattern as written.
    pub fn pattern(&self) -> &str {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) | PathMatch::Regex(p) => p,
            PathMatch::Template(t) => t.source(),
        }
    }

    /// Identifies the pattern for precedence: rules with equal keys share one group
    /// (templates that differ only in parameter names are the same pattern).
    pub(crate) fn key(&self) -> String {
        match self {
            PathMatch::Exact(s) => format!("e:{s}"),
            PathMatch::Template(t) => format!("t:{}", t.shape()),
            PathMatch::Prefix(s) => format!("p:{s}"),
            PathMatch::Regex(s) => format!("r:{s}"),
        }
    }
}

/// A header condition of a rule.
#[derive(Debug, Clone)]
pub struct HeaderCond {
    pub name: HeaderName,
    pub test: HeaderTest,
}

#[derive(Debug, Clone)]
pub enum HeaderTest {
    /// The value, compared case-sensitively.
    Exact(HeaderValue),
    /// Anchored to match the whole value.
    Regex(Regex),
    Present(bool),
}

impl HeaderCond {
    /// Whether any of the request's values of the header satisfies the condition.
    #[inline]
    pub fn holds(&self, headers: &http::HeaderMap) -> bool {
        match &self.test {
            HeaderTest::Present(want) => headers.contains_key(&self.name) == *want,
            HeaderTest::Exact(v) => headers.get_all(&self.name).iter().any(|h| h == v),
            HeaderTest::Regex(r) => headers
                .get_all(&self.name)
                .iter()
                .any(|h| h.to_str().is_ok_and(|s| r.is_match(s))),
        }
    }
}

impl fmt::Display for HeaderCond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.test {
            HeaderTest::Exact(v) => write!(
                f,
                "{}: {}",
                self.name,
                String::from_utf8_lossy(v.as_bytes())
            ),
            HeaderTest::Regex(r) => write!(f, "{} ~ /{}/", self.name, regex_source(r)),
            HeaderTest::Present(p) => write!(f, "{} present: {p}", self.name),
        }
    }
}

/// The pattern of a header regex as written in the file (without the anchoring added to it).
pub fn regex_source(r: &Regex) -> &str {
    let s = r.as_str();
    s.strip_prefix("^(?:")
        .and_then(|s| s.strip_suffix(")$"))
        .unwrap_or(s)
}

/// Everything a rule matches on.
#[derive(Debug, Clone)]
pub struct Match {
    pub path: PathMatch,
    /// `None`: any method.
    pub methods: Option<Vec<Method>>,
    /// All must hold.
    pub headers: Vec<HeaderCond>,
}

impl Match {
    /// How many conditions the rule has: a `methods` list counts one, each header one.
    pub fn condition_count(&self) -> usize {
        usize::from(self.methods.is_some()) + self.headers.len()
    }

    /// The rule's conditions in a form two rules share exactly when they have the same
    /// conditions (methods in any order, headers in any order), so that the one tried
    /// second can never win.
    pub fn conditions_key(&self) -> (Option<Vec<String>>, Vec<String>) {
        let methods = self.methods.as_ref().map(|ms| {
            let mut v: Vec<String> = ms.iter().map(|m| m.as_str().to_string()).collect();
            v.sort();
            v.dedup();
            v
        });
        let mut headers: Vec<String> = self.headers.iter().map(ToString::to_string).collect();
        headers.sort();
        (methods, headers)
    }
}

/// The rules that share a path pattern, each group in the order precedence tries its rules
/// (more conditions first, then file order). `strangler check` uses it to find rules that
/// can never win; the router groups rules the same way.
pub fn group_order<'a>(rules: impl IntoIterator<Item = &'a Match>) -> Vec<Vec<usize>> {
    let rules: Vec<&Match> = rules.into_iter().collect();
    // Groups in order of their first rule; found by key in a map (linear in the rules).
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (i, r) in rules.iter().enumerate() {
        let key = r.path.key();
        match index.get(&key) {
            Some(&g) => groups[g].1.push(i),
            None => {
                index.insert(key.clone(), groups.len());
                groups.push((key, vec![i]));
            }
        }
    }
    groups
        .into_iter()
        .map(|(_, mut v)| {
            v.sort_by_key(|&i| (std::cmp::Reverse(rules[i].condition_count()), i));
            v
        })
        .collect()
}

/// A parsed path template: `/api/orders/{id}`, `/files/{*rest}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    pub(crate) segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(String),
    Param(String),
    /// Only last: one or more remaining segments (the last may be empty after a final `/`).
    Rest(String),
}

impl Template {
    /// Parses a template; the error says what is wrong.
    pub fn parse(s: &str) -> Result<Template, String> {
        let Some(body) = s.strip_prefix('/') else {
            return Err("it does not start with /".into());
        };
        let parts: Vec<&str> = body.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        let mut names: Vec<&str> = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            if part.starts_with('{') && part.ends_with('}') && part.len() >= 2 {
                let inner = &part[1..part.len() - 1];
                let (rest, name) = match inner.strip_prefix('*') {
                    Some(n) => (true, n),
                    None => (false, inner),
                };
                if !valid_param(name) {
                    return Err(format!(
                        "parameter name {name:?} is not [A-Za-z_][A-Za-z0-9_]*"
                    ));
                }
                if names.contains(&name) {
                    return Err(format!("parameter {name:?} appears twice"));
                }
                names.push(name);
                if rest {
                    if !last {
                        return Err(format!("{{*{name}}} must be the last segment"));
                    }
                    segments.push(Segment::Rest(name.to_string()));
                } else {
                    segments.push(Segment::Param(name.to_string()));
                }
            } else if part.contains('{') || part.contains('}') {
                return Err(format!(
                    "segment {part:?} mixes text and braces; a parameter must be a whole segment"
                ));
            } else if part.is_empty() && !last {
                return Err("it holds an empty segment (//)".into());
            } else if *part == "." || *part == ".." {
                return Err("it holds a dot segment".into());
            } else {
                match super::canon::canonicalize(&format!("/{part}")) {
                    Ok(c) if c.len() == part.len() + 1 => {}
                    _ => return Err(format!("segment {part:?} is not in canonical form")),
                }
                segments.push(Segment::Literal(part.to_string()));
            }
        }
        if !segments.iter().any(|s| !matches!(s, Segment::Literal(_))) {
            return Err("it has no parameter".into());
        }
        Ok(Template {
            source: s.to_string(),
            segments,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub(crate) fn literals(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count()
    }

    pub(crate) fn params(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Param(_)))
            .count()
    }

    pub(crate) fn has_rest(&self) -> bool {
        matches!(self.segments.last(), Some(Segment::Rest(_)))
    }

    /// The pattern with parameter names erased: two templates with the same shape are one
    /// pattern for precedence.
    fn shape(&self) -> String {
        let mut s = String::new();
        for seg in &self.segments {
            s.push('/');
            match seg {
                Segment::Literal(l) => s.push_str(l),
                Segment::Param(_) => s.push_str("{}"),
                Segment::Rest(_) => s.push_str("{*}"),
            }
        }
        s
    }
}

fn valid_param(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Whether a path written in the routes file is already in the form requests are
/// canonicalized to (rules are matched against that form); the error says why not.
pub fn check_canonical(s: &str) -> Result<(), String> {
    if !s.starts_with('/') {
        return Err("does not start with /".into());
    }
    match super::canon::canonicalize(s) {
        Ok(c) if c == s => Ok(()),
        Ok(c) => Err(format!("not canonical; requests are matched as {c:?}")),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parse() {
        assert!(Template::parse("/api/orders/{id}").is_ok());
        assert!(Template::parse("/files/{*rest}").is_ok());
        assert!(Template::parse("/a/{*rest}/b").is_err());
        assert!(Template::parse("/a/x{id}").is_err());
        assert!(Template::parse("/a/{id}/{id}").is_err());
        assert!(Template::parse("/a/{}").is_err());
        assert!(Template::parse("/a/{id").is_err());
        assert!(Template::parse("a/{id}").is_err());
        assert!(Template::parse("/a//{id}").is_err());
    }

    #[test]
    fn templates_differing_in_names_are_one_pattern() {
        let a = PathMatch::Template(Template::parse("/a/{id}").unwrap());
        let b = PathMatch::Template(Template::parse("/a/{key}").unwrap());
        assert_eq!(a.key(), b.key());
    }
}
