//! Route matching (docs/routing.md, "Which route wins"): from a canonical path, a method and headers
//! to the winning rule.
//!
//! Rules are grouped by path pattern; a lookup visits groups in precedence order (exact,
//! templates, prefixes, regexes) and, inside a group, rules with more conditions first, then
//! file order. The first rule whose conditions hold wins. Finding the candidate groups never
//! scans the rule list: exact paths and prefixes are hash lookups (one per path segment for
//! prefixes), templates live in a segment trie, and regexes in `RegexSet`s keyed by the first
//! path segment their pattern spells out literally (`/invoices/[0-9]+` only ever sees paths
//! under `/invoices/`), with one set for regexes that have no such literal start. So the cost
//! grows with the length of the path, not with the number of rules.
//!
//! This module knows nothing of sides, metrics or forwarding: it returns a rule index.

use std::fmt;
use std::ops::ControlFlow;

use foldhash::HashMap;
use http::{HeaderMap, Method};
use regex::RegexSet;
use smallvec::SmallVec;

use super::method::MethodSet;
use super::pattern::{HeaderCond, Match, PathMatch, Segment};

/// The conditions of one rule, compiled.
#[derive(Debug, Clone)]
struct Conditions {
    methods: Option<MethodSet>,
    headers: Vec<HeaderCond>,
}

/// Why a candidate rule did not take a request: the method, or the header condition at
/// this index (rendered as text only by `explain`, never on the request path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    Method,
    Header(usize),
}

impl Conditions {
    #[inline]
    fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), Miss> {
        if let Some(ms) = &self.methods
            && !ms.contains(method)
        {
            return Err(Miss::Method);
        }
        for (i, c) in self.headers.iter().enumerate() {
            if !c.holds(headers) {
                return Err(Miss::Header(i));
            }
        }
        Ok(())
    }
}

/// Which precedence tier a candidate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Exact,
    Template,
    Prefix,
    Regex,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Exact => "exact path",
            Tier::Template => "template",
            Tier::Prefix => "prefix",
            Tier::Regex => "regex",
        })
    }
}

type GroupId = u32;

#[derive(Default, Debug)]
struct TrieNode {
    literal: HashMap<Box<str>, TrieNode>,
    param: Option<Box<TrieNode>>,
    /// The template group that ends exactly here.
    end: Option<GroupId>,
    /// The template group whose `{*rest}` starts here.
    rest: Option<GroupId>,
}

/// The compiled matcher of a rule set.
#[derive(Debug)]
pub struct Router {
    conditions: Vec<Conditions>,
    /// Rules of each pattern group, in the order they are tried.
    groups: Vec<Vec<u32>>,
    /// The pattern text of each group, for explanations.
    group_pattern: Vec<String>,
    /// Precedence among templates: lower sorts first.
    template_rank: Vec<(u32, bool, u32, u32)>,
    exact: HashMap<Box<str>, GroupId>,
    trie: TrieNode,
    prefix: HashMap<Box<str>, GroupId>,
    /// Regexes by the literal first segment (`/invoices/`) every path they match starts with.
    regex_by_segment: HashMap<Box<str>, RegexBucket>,
    /// Regexes without a literal first segment: tried for every path that reaches the tier.
    regex_any: Option<RegexBucket>,
    /// Group of each regex, by its position in file order.
    regex_group: Vec<GroupId>,
}

/// One candidate rule a lookup examined, in the order it examined them.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub rule: usize,
    pub tier: Tier,
    /// The pattern of the rule's group, as written.
    pub pattern: &'a str,
    /// `None` for the winner, else why it did not take the request.
    pub miss: Option<Miss>,
}

impl Router {
    /// Compiles the matcher of `rules` (in file order). Patterns were validated when the
    /// routes file was read; a regex that still fails to build (size limits) is an error.
    pub fn new<'a>(rules: impl IntoIterator<Item = &'a Match>) -> Result<Router, String> {
        let routes: Vec<&Match> = rules.into_iter().collect();
        let mut r = Router {
            conditions: routes
                .iter()
                .map(|rc| Conditions {
                    methods: rc.methods.as_deref().map(MethodSet::new),
                    headers: rc.headers.clone(),
                })
                .collect(),
            groups: Vec::new(),
            group_pattern: Vec::new(),
            template_rank: Vec::new(),
            exact: HashMap::default(),
            trie: TrieNode::default(),
            prefix: HashMap::default(),
            regex_by_segment: HashMap::default(),
            regex_any: None,
            regex_group: Vec::new(),
        };
        let mut by_key: HashMap<String, GroupId> = HashMap::default();
        // (anchored pattern, pattern as written), in file order.
        let mut regex_patterns: Vec<(String, String)> = Vec::new();
        for (i, rc) in routes.iter().enumerate() {
            let key = rc.path.key();
            if let Some(&g) = by_key.get(&key) {
                r.groups[g as usize].push(i as u32);
                continue;
            }
            let g = r.groups.len() as GroupId;
            by_key.insert(key, g);
            r.groups.push(vec![i as u32]);
            r.group_pattern.push(rc.path.pattern().to_string());
            let mut rank = (0, false, 0, 0);
            match &rc.path {
                PathMatch::Exact(p) => {
                    r.exact.insert(p.as_str().into(), g);
                }
                PathMatch::Prefix(p) => {
                    r.prefix.insert(p.as_str().into(), g);
                }
                PathMatch::Regex(p) => {
                    regex_patterns.push((format!("^(?:{p})$"), p.clone()));
                    r.regex_group.push(g);
                }
                PathMatch::Template(t) => {
                    rank = (
                        u32::MAX - t.literals() as u32,
                        t.has_rest(),
                        t.params() as u32,
                        i as u32,
                    );
                    let mut node = &mut r.trie;
                    for seg in &t.segments {
                        node = match seg {
                            Segment::Literal(l) => {
                                node.literal.entry(l.as_str().into()).or_default()
                            }
                            Segment::Param(_) => node.param.get_or_insert_with(Default::default),
                            Segment::Rest(_) => break,
                        };
                    }
                    if t.has_rest() {
                        node.rest = Some(g);
                    } else {
                        node.end = Some(g);
                    }
                }
            }
            r.template_rank.push(rank);
        }
        for g in &mut r.groups {
            g.sort_by_key(|&i| (std::cmp::Reverse(routes[i as usize].condition_count()), i));
        }
        let mut by_segment: HashMap<String, Vec<u32>> = HashMap::default();
        let mut any: Vec<u32> = Vec::new();
        for (i, (_, src)) in regex_patterns.iter().enumerate() {
            match first_segment(&literal_prefix(src)) {
                Some(seg) => by_segment
                    .entry(seg.to_string())
                    .or_default()
                    .push(i as u32),
                None => any.push(i as u32),
            }
        }
        for (seg, members) in by_segment {
            let bucket = RegexBucket::new(&regex_patterns, members)?;
            r.regex_by_segment.insert(seg.into(), bucket);
        }
        if !any.is_empty() {
            r.regex_any = Some(RegexBucket::new(&regex_patterns, any)?);
        }
        Ok(r)
    }

    /// The winning rule for a request, if any. `path` must be canonical.
    #[inline]
    pub fn find(&self, path: &str, method: &Method, headers: &HeaderMap) -> Option<usize> {
        self.find_traced(path, method, headers, |_| {})
    }

    /// As `find`, calling `trace` with every candidate examined, in order, up to and
    /// including the winner. The request path passes a closure that does nothing, which
    /// compiles away; `strangler explain` passes one that collects.
    #[inline]
    pub fn find_traced(
        &self,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
        mut trace: impl FnMut(Candidate<'_>),
    ) -> Option<usize> {
        let mut won = None;
        self.visit(path, |g, tier| {
            for &rule in &self.groups[g as usize] {
                let miss = self.conditions[rule as usize].check(method, headers).err();
                trace(Candidate {
                    rule: rule as usize,
                    tier,
                    pattern: &self.group_pattern[g as usize],
                    miss,
                });
                if miss.is_none() {
                    won = Some(rule as usize);
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        });
        won
    }

    /// Why `rule` missed, in words (for `strangler explain`).
    pub fn describe_miss(&self, rule: usize, miss: Miss) -> String {
        match miss {
            Miss::Method => "the method is not in its list".to_string(),
            Miss::Header(i) => format!(
                "header condition `{}` does not hold",
                self.conditions[rule].headers[i]
            ),
        }
    }

    /// Calls `f` with each group whose pattern matches `path`, most specific first, until it
    /// breaks.
    fn visit(&self, path: &str, mut f: impl FnMut(GroupId, Tier) -> ControlFlow<()>) {
        if let Some(&g) = self.exact.get(path)
            && f(g, Tier::Exact).is_break()
        {
            return;
        }
        if !self.trie.literal.is_empty() || self.trie.param.is_some() || self.trie.rest.is_some() {
            let segs: SmallVec<[&str; 16]> = path[1..].split('/').collect();
            let mut found: SmallVec<[GroupId; 8]> = SmallVec::new();
            walk(&self.trie, &segs, &mut found);
            found.sort_unstable_by_key(|&g| self.template_rank[g as usize]);
            for g in found {
                if f(g, Tier::Template).is_break() {
                    return;
                }
            }
        }
        if !self.prefix.is_empty() {
            let mut cur = if path.len() > 1 {
                path.trim_end_matches('/')
            } else {
                path
            };
            loop {
                if let Some(&g) = self.prefix.get(cur)
                    && f(g, Tier::Prefix).is_break()
                {
                    return;
                }
                match cur.rfind('/') {
                    _ if cur == "/" => break,
                    Some(0) => cur = "/",
                    Some(i) => cur = &cur[..i],
                    None => break,
                }
            }
        }
        if self.regex_any.is_some() || !self.regex_by_segment.is_empty() {
            let mut hits: SmallVec<[u32; 8]> = SmallVec::new();
            if let Some(seg) = first_segment(path)
                && let Some(b) = self.regex_by_segment.get(seg)
            {
                b.matches(path, &mut hits);
            }
            if let Some(b) = &self.regex_any {
                b.matches(path, &mut hits);
            }
            // Both buckets are in file order; together they must be too.
            hits.sort_unstable();
            for i in hits {
                if f(self.regex_group[i as usize], Tier::Regex).is_break() {
                    return;
                }
            }
        }
    }
}

/// A `RegexSet` over some of the file's regexes.
#[derive(Debug)]
struct RegexBucket {
    set: RegexSet,
    /// Position in file order of each member of `set`.
    members: Vec<u32>,
}

impl RegexBucket {
    fn new(patterns: &[(String, String)], members: Vec<u32>) -> Result<RegexBucket, String> {
        let set = regex::RegexSetBuilder::new(members.iter().map(|&i| &patterns[i as usize].0))
            .size_limit(256 << 20)
            .build()
            .map_err(|e| format!("the regexes of the file do not compile together: {e}"))?;
        Ok(RegexBucket { set, members })
    }

    fn matches(&self, path: &str, out: &mut SmallVec<[u32; 8]>) {
        out.extend(self.set.matches(path).iter().map(|i| self.members[i]));
    }
}

/// The literal text every match of `pattern` starts with, conservatively: empty when the
/// pattern has an alternation, starts with a group, class or flag, or anything unclear.
fn literal_prefix(pattern: &str) -> String {
    if pattern.contains('|') {
        return String::new();
    }
    let mut out = String::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        let lit = match c {
            '\\' => match chars.next() {
                Some(e) if e.is_ascii_punctuation() => e,
                _ => break,
            },
            '.' | '+' | '*' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '^' | '$' => break,
            c if c.is_whitespace() => break,
            c => c,
        };
        // A quantifier after a character makes that character optional or repeated.
        if matches!(chars.peek(), Some('?' | '*' | '{' | '+')) {
            break;
        }
        out.push(lit);
    }
    out
}

/// The first segment of a path with both its slashes (`/invoices/` of `/invoices/7.pdf`),
/// or `None` when the text does not hold a complete first segment.
fn first_segment(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    let end = rest.find('/')?;
    Some(&path[..end + 2])
}

fn walk(node: &TrieNode, segs: &[&str], out: &mut SmallVec<[GroupId; 8]>) {
    let Some((first, rest)) = segs.split_first() else {
        if let Some(g) = node.end {
            out.push(g);
        }
        return;
    };
    if let Some(g) = node.rest {
        out.push(g);
    }
    if let Some(child) = node.literal.get(*first) {
        walk(child, rest, out);
    }
    if let Some(child) = &node.param
        && !first.is_empty()
    {
        walk(child, rest, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_literal_prefixes() {
        assert_eq!(literal_prefix(r"/invoices/[0-9]+\.pdf"), "/invoices/");
        assert_eq!(literal_prefix(r"/a\.b/c"), "/a.b/c");
        assert_eq!(literal_prefix(r"/ab?c/"), "/a");
        assert_eq!(literal_prefix(r"/ab+/"), "/a");
        assert_eq!(literal_prefix(r"/a/x|/b/y"), "");
        assert_eq!(literal_prefix(r"(?i)/api/"), "");
        assert_eq!(literal_prefix(r"/\d+/"), "/");
        assert_eq!(first_segment("/invoices/"), Some("/invoices/"));
        assert_eq!(first_segment("/a"), None);
        assert_eq!(first_segment("/a/b/c"), Some("/a/"));
    }
}
