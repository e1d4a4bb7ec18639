//! The learner (docs/inventory.md, "How templates are learned"): per method, a tree of path
//! segments whose leaves are templates.
//!
//! A segment goes down to its node's parameter child when its shape says it is a value
//! ([`shape::shape`]); otherwise to the literal child of that name. When a node holds more
//! than [`COLLAPSE_AT`] literal children and most of them are not words, or more than
//! twice that and most were seen once or twice with at most one literal below them
//! (`/users/alice`, `/users/bob/avatar`, ...), or more than [`MAX_LITERALS`] whatever they
//! look like, the position becomes a parameter: the literal children are merged into the
//! parameter child (their subtrees and figures added up), but for a few words carrying real
//! traffic (`/users/me`), and from then on any new literal there goes to the parameter. So a flood of random paths folds into a
//! handful of nodes, and the tree never holds more than [`Limits::max_nodes`] nodes nor
//! more than [`Limits::max_templates`] templates: past either, requests count in `other`.

use foldhash::HashMap;
use smallvec::SmallVec;

use super::hist::Histogram;
use super::map::{Map, OtherView, RouteShare, TemplateView};
use super::shape::{self, NAME, word_like};
use super::{Limits, Sample, UNTIMED};
use crate::routing::canonicalize;

/// Literal children a node holds before the cardinality rule is asked.
pub const COLLAPSE_AT: usize = 16;
/// Literal children a node holds at most: one more makes the position a parameter.
pub const MAX_LITERALS: usize = 64;
/// A literal seen this often or less (with at most one literal below it) looks like a value.
const RARE_HITS: u64 = 2;
/// Words kept as literals when their position becomes a parameter: at most this many...
const KEEP_MAX: usize = 16;
/// ...each seen this often at least, and with a twentieth of the position's traffic.
const KEEP_HITS: u64 = 8;
/// Segments followed one by one; the rest of a deeper path is one `{*rest}` parameter.
pub const MAX_DEPTH: usize = 16;
/// Methods told apart; requests with others count in `other`.
pub const MAX_METHODS: usize = 16;
/// Routes told apart per template; the others are added to the last one kept.
const MAX_ROUTES: usize = 8;
/// Example paths longer than this are not kept.
const MAX_EXAMPLE: usize = 512;

/// What one template carries.
#[derive(Debug, Clone, Default)]
struct Stats {
    requests: u64,
    errors: u64,
    new_requests: u64,
    latency: Histogram,
    routes: Vec<(Box<str>, u64)>,
    first_ms: u64,
    last_ms: u64,
    examples: Vec<Box<str>>,
}

impl Stats {
    fn record(&mut self, s: &Sample<'_>, path: &str, examples: usize) {
        self.requests += 1;
        self.errors += u64::from(s.status >= 500);
        self.new_requests += u64::from(s.new_side);
        if s.latency != UNTIMED {
            self.latency.record(s.latency);
        }
        let route = if s.route.is_empty() {
            "default"
        } else {
            s.route
        };
        add_route(&mut self.routes, route, 1);
        if self.first_ms == 0 || (s.at_unix_ms != 0 && s.at_unix_ms < self.first_ms) {
            self.first_ms = s.at_unix_ms;
        }
        self.last_ms = self.last_ms.max(s.at_unix_ms);
        if self.examples.len() < examples
            && path.len() <= MAX_EXAMPLE
            && !self.examples.iter().any(|e| &**e == path)
        {
            self.examples.push(path.into());
        }
    }

    fn absorb(&mut self, o: Stats, examples: usize) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.new_requests += o.new_requests;
        self.latency.add(&o.latency);
        for (r, n) in o.routes {
            add_route(&mut self.routes, &r, n);
        }
        if self.first_ms == 0 || (o.first_ms != 0 && o.first_ms < self.first_ms) {
            self.first_ms = o.first_ms;
        }
        self.last_ms = self.last_ms.max(o.last_ms);
        for e in o.examples {
            if self.examples.len() >= examples {
                break;
            }
            if !self.examples.contains(&e) {
                self.examples.push(e);
            }
        }
    }
}

/// Counts `n` requests of `route`; past [`MAX_ROUTES`] routes, on the last one kept.
fn add_route(routes: &mut Vec<(Box<str>, u64)>, route: &str, n: u64) {
    match routes.iter().position(|(r, _)| &**r == route) {
        Some(i) => routes[i].1 += n,
        None if routes.len() < MAX_ROUTES => routes.push((route.into(), n)),
        None => {
            if let Some((_, m)) = routes.last_mut() {
                *m += n;
            }
        }
    }
}

#[derive(Debug, Default)]
struct Node {
    literals: HashMap<Box<str>, Node>,
    param: Option<Box<Node>>,
    /// The rest of a path deeper than [`MAX_DEPTH`].
    rest: Option<Box<Node>>,
    /// At a parameter node: the shapes of the values seen there.
    kinds: u8,
    /// The position below became a parameter: new literals go to `param`.
    collapsed: bool,
    /// Requests that reached this node (ended here or went further).
    hits: u64,
    /// The template that ends here.
    end: Option<Box<Stats>>,
}

/// Counts the tree keeps against its limits.
struct Budget {
    nodes: usize,
    templates: usize,
    max_nodes: usize,
    max_templates: usize,
    examples: usize,
}

impl Budget {
    /// Takes one node, if the budget allows.
    fn node(&mut self) -> Option<Box<Node>> {
        if self.nodes >= self.max_nodes {
            return None;
        }
        self.nodes += 1;
        Some(Box::default())
    }
}

/// The endpoint-template learner: feed it samples ([`Inventory::observe`]), read it as a
/// [`Map`] ([`Inventory::map`]).
pub struct Inventory {
    limits: Limits,
    /// One tree per method, in order of first sight.
    methods: Vec<(Box<str>, Node)>,
    budget: Budget,
    other: Stats,
    over_cap: u64,
    rejected: u64,
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory")
            .field("limits", &self.limits)
            .field("nodes", &self.budget.nodes)
            .field("templates", &self.budget.templates)
            .finish_non_exhaustive()
    }
}

/// Whether a method is an HTTP token of a sensible length.
fn is_method(m: &str) -> bool {
    (1..=20).contains(&m.len())
        && m.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Inventory {
    pub fn new(limits: Limits) -> Inventory {
        let limits = Limits {
            max_templates: limits.max_templates.max(1),
            examples: limits.examples,
        };
        Inventory {
            budget: Budget {
                nodes: 0,
                templates: 0,
                max_nodes: limits.max_nodes(),
                max_templates: limits.max_templates,
                examples: limits.examples,
            },
            limits,
            methods: Vec::new(),
            other: Stats::default(),
            over_cap: 0,
            rejected: 0,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Nodes of the learning trees (the method roots included).
    pub fn nodes(&self) -> usize {
        self.budget.nodes
    }

    /// Templates learned.
    pub fn templates(&self) -> usize {
        self.budget.templates
    }

    /// Learns one request.
    pub fn observe(&mut self, s: &Sample<'_>) {
        let raw = s.path.split(['?', '#']).next().unwrap_or("");
        let canonical = match canonicalize(raw) {
            Ok(c) if is_method(s.method) => c,
            _ => {
                self.rejected += 1;
                self.other.record(s, raw, self.limits.examples);
                return;
            }
        };
        let tree = match self.methods.iter().position(|(m, _)| &**m == s.method) {
            Some(i) => Some(i),
            None if self.methods.len() < MAX_METHODS
                && self.budget.nodes < self.budget.max_nodes =>
            {
                self.budget.nodes += 1;
                self.methods.push((s.method.into(), Node::default()));
                Some(self.methods.len() - 1)
            }
            None => None,
        };
        let stored = match tree {
            Some(i) => {
                let segs: SmallVec<[&str; 16]> = canonical[1..].split('/').collect();
                let root = &mut self.methods[i].1;
                root.hits += 1;
                descend(root, &segs, 0, &mut self.budget, s, &canonical)
            }
            None => false,
        };
        if !stored {
            self.over_cap += 1;
            self.other.record(s, &canonical, self.limits.examples);
        }
    }

    /// The map as it stands.
    pub fn map(&self) -> Map {
        let mut templates = Vec::with_capacity(self.budget.templates);
        for (method, root) in &self.methods {
            let mut segs: Vec<Seg> = Vec::new();
            collect(method, root, &mut segs, &mut templates);
        }
        let o = &self.other;
        let mut map = Map {
            templates,
            other: OtherView {
                requests: o.requests,
                errors: o.errors,
                new_requests: o.new_requests,
                over_cap: self.over_cap,
                rejected: self.rejected,
                p50_ms: o.latency.quantile_ms(0.5),
                p99_ms: o.latency.quantile_ms(0.99),
                first_seen_ms: o.first_ms,
                last_seen_ms: o.last_ms,
                examples: o.examples.iter().map(|e| e.to_string()).collect(),
                latency: o.latency.clone(),
            },
            ..Map::default()
        };
        map.finish();
        map
    }
}

/// Follows (and grows) the tree along `segs` from `node`, and records the sample at the
/// template it ends on. `false`: a limit stopped it.
fn descend(
    node: &mut Node,
    segs: &[&str],
    depth: usize,
    budget: &mut Budget,
    s: &Sample<'_>,
    path: &str,
) -> bool {
    let Some((&seg, rest)) = segs.split_first() else {
        if node.end.is_none() {
            if budget.templates >= budget.max_templates {
                return false;
            }
            budget.templates += 1;
            node.end = Some(Box::default());
        }
        if let Some(st) = &mut node.end {
            st.record(s, path, budget.examples);
        }
        return true;
    };
    if depth + 1 == MAX_DEPTH && !rest.is_empty() {
        if node.rest.is_none() {
            node.rest = budget.node();
        }
        let Some(child) = node.rest.as_deref_mut() else {
            return false;
        };
        child.hits += 1;
        child.kinds |= shape::TOKEN;
        return descend(child, &[], depth + 1, budget, s, path);
    }
    let kind = shape::shape(seg);
    if kind.is_none()
        && let Some(child) = node.literals.get_mut(seg)
    {
        child.hits += 1;
        return descend(child, rest, depth + 1, budget, s, path);
    }
    let is_root = depth == 0;
    let to_param = match kind {
        Some(_) => true,
        None if node.collapsed => true,
        None => {
            if budget.nodes >= budget.max_nodes {
                return false;
            }
            budget.nodes += 1;
            node.literals.insert(seg.into(), Node::default());
            if node.literals.len() > COLLAPSE_AT {
                maybe_collapse(node, is_root, budget);
            }
            !node.literals.contains_key(seg)
        }
    };
    let child = if to_param {
        if node.param.is_none() {
            node.param = budget.node();
        }
        let Some(p) = node.param.as_deref_mut() else {
            return false;
        };
        p.kinds |= kind.unwrap_or(NAME);
        p
    } else {
        node.literals
            .get_mut(seg)
            .expect("the literal child is there")
    };
    child.hits += 1;
    descend(child, rest, depth + 1, budget, s, path)
}

/// The cardinality rule: makes the position below `node` a parameter when its literal
/// children look like values.
fn maybe_collapse(node: &mut Node, is_root: bool, budget: &mut Budget) {
    let n = node.literals.len();
    if n <= COLLAPSE_AT || node.collapsed {
        return;
    }
    let id_like = node.literals.keys().filter(|k| !word_like(k)).count();
    // A value seen once or twice, with nothing or one literal below it (`/users/alice`,
    // `/products/blue-mug/reviews`). A collection name has a parameter below it.
    let rare = node
        .literals
        .values()
        .filter(|c| {
            c.hits <= RARE_HITS && c.param.is_none() && c.rest.is_none() && c.literals.len() <= 1
        })
        .count();
    // Words need more of them than ids do: a fresh map of a large API sees many resource
    // names once or twice too.
    let collapse = n > MAX_LITERALS
        || id_like * 2 >= n
        || (!is_root && n > 2 * COLLAPSE_AT && rare * 4 >= n * 3);
    if !collapse {
        return;
    }
    // Words carrying real traffic stay literal (`/users/me` among user names).
    let total: u64 = node.literals.values().map(|c| c.hits).sum();
    let mut keep: Vec<(u64, Box<str>)> = node
        .literals
        .iter()
        .filter(|(k, c)| word_like(k) && c.hits >= KEEP_HITS.max(total / 20))
        .map(|(k, c)| (c.hits, k.clone()))
        .collect();
    keep.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    keep.truncate(KEEP_MAX);
    let mut merged: Vec<(Box<str>, Node)> = Vec::with_capacity(n);
    for (k, c) in std::mem::take(&mut node.literals) {
        if keep.iter().any(|(_, kk)| *kk == k) {
            node.literals.insert(k, c);
        } else {
            merged.push((k, c));
        }
    }
    node.collapsed = true;
    for (_, child) in merged {
        into_param(node, child, budget);
    }
}

/// Folds `child`, a literal the parameter now stands for, into `node`'s parameter (which it
/// becomes when there is none yet): its segment was a name.
fn into_param(node: &mut Node, mut child: Node, budget: &mut Budget) {
    match node.param.as_deref_mut() {
        Some(p) => {
            p.kinds |= NAME;
            merge(p, child, budget);
        }
        None => {
            child.kinds |= NAME;
            node.param = Some(Box::new(child));
        }
    }
}

/// Adds the subtree `from` into `into` (figures, children, templates), freeing its nodes.
fn merge(into: &mut Node, from: Node, budget: &mut Budget) {
    budget.nodes -= 1;
    into.hits += from.hits;
    into.kinds |= from.kinds;
    match (&mut into.end, from.end) {
        (Some(a), Some(b)) => {
            budget.templates -= 1;
            a.absorb(*b, budget.examples);
        }
        (None, Some(b)) => into.end = Some(b),
        (_, None) => {}
    }
    for (k, child) in from.literals {
        if into.collapsed && !into.literals.contains_key(&k) {
            into_param(into, child, budget);
            continue;
        }
        match into.literals.get_mut(&k) {
            Some(existing) => merge(existing, child, budget),
            None => {
                into.literals.insert(k, child);
            }
        }
    }
    if from.collapsed && !into.collapsed {
        // The literals `into` holds stay; new ones go to the parameter, as in `from`.
        into.collapsed = true;
    }
    for (slot, other) in [(&mut into.param, from.param), (&mut into.rest, from.rest)] {
        if let Some(b) = other {
            match slot.as_deref_mut() {
                Some(p) => merge(p, *b, budget),
                None => *slot = Some(b),
            }
        }
    }
    maybe_collapse(into, false, budget);
}

/// A segment of a template while the tree is walked.
enum Seg<'a> {
    Literal(&'a str),
    /// The shapes seen, and whether it is the `{*rest}` of a deep path.
    Param(u8, bool),
}

fn collect<'a>(method: &str, node: &'a Node, segs: &mut Vec<Seg<'a>>, out: &mut Vec<TemplateView>) {
    if let Some(st) = &node.end {
        out.push(view(method, segs, st));
    }
    let mut keys: Vec<&Box<str>> = node.literals.keys().collect();
    keys.sort();
    for k in keys {
        segs.push(Seg::Literal(k));
        collect(method, &node.literals[k], segs, out);
        segs.pop();
    }
    if let Some(p) = &node.param {
        segs.push(Seg::Param(p.kinds, false));
        collect(method, p, segs, out);
        segs.pop();
    }
    if let Some(r) = &node.rest {
        segs.push(Seg::Param(r.kinds, true));
        collect(method, r, segs, out);
        segs.pop();
    }
}

/// The template text of `segs`: parameters named by their parent or their shape, each
/// name once.
fn template_text(segs: &[Seg<'_>]) -> String {
    let mut out = String::new();
    let mut names: Vec<String> = Vec::new();
    let mut prev: Option<&str> = None;
    for seg in segs {
        out.push('/');
        match seg {
            Seg::Literal(l) => {
                out.push_str(l);
                prev = Some(l);
            }
            Seg::Param(kinds, rest) => {
                let base = if *rest {
                    "rest".to_string()
                } else {
                    shape::param_name(prev, *kinds)
                };
                let mut name = base.clone();
                let mut k = 2;
                while names.contains(&name) {
                    name = format!("{base}_{k}");
                    k += 1;
                }
                out.push('{');
                if *rest {
                    out.push('*');
                }
                out.push_str(&name);
                out.push('}');
                names.push(name);
                prev = None;
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn view(method: &str, segs: &[Seg<'_>], st: &Stats) -> TemplateView {
    let mut routes: Vec<RouteShare> = st
        .routes
        .iter()
        .map(|(r, n)| RouteShare {
            route: r.to_string(),
            requests: *n,
        })
        .collect();
    routes.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.route.cmp(&b.route)));
    TemplateView {
        method: method.to_string(),
        template: template_text(segs),
        requests: st.requests,
        errors: st.errors,
        p50_ms: st.latency.quantile_ms(0.5),
        p99_ms: st.latency.quantile_ms(0.99),
        new_requests: st.new_requests,
        routes,
        first_seen_ms: st.first_ms,
        last_seen_ms: st.last_ms,
        examples: st.examples.iter().map(|e| e.to_string()).collect(),
        latency: st.latency.clone(),
    }
}

/// A sample of a GET on `path`.
#[cfg(test)]
pub(crate) fn get(path: &str) -> Sample<'_> {
    Sample {
        method: "GET",
        path,
        status: 200,
        latency: std::time::Duration::from_millis(5),
        route: "default",
        new_side: false,
        at_unix_ms: 1_700_000_000_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn learn(paths: &[String]) -> Vec<String> {
        let mut inv = Inventory::new(Limits::default());
        for p in paths {
            inv.observe(&get(p));
        }
        let mut t: Vec<String> = inv
            .map()
            .templates
            .into_iter()
            .map(|t| t.template)
            .collect();
        t.sort();
        t
    }

    #[test]
    fn ids_by_shape_and_names_by_parent() {
        let paths: Vec<String> = vec![
            "/api/users/17".into(),
            "/api/users/18/orders".into(),
            "/api/users/19/orders/20".into(),
            "/api/users/me".into(),
            "/api/v1/tables/3f2c1a9e-7b4d-4c1e-9a2b-0123456789ab".into(),
        ];
        assert_eq!(
            learn(&paths),
            vec![
                "/api/users/me",
                "/api/users/{user_id}",
                "/api/users/{user_id}/orders",
                "/api/users/{user_id}/orders/{order_id}",
                "/api/v1/tables/{table_id}",
            ]
        );
    }

    #[test]
    fn many_rare_names_become_a_parameter_and_busy_words_stay() {
        let mut paths: Vec<String> = (0..40).map(|_| "/users/me".to_string()).collect();
        let names = [
            "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
            "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter",
        ];
        for suffix in ["", "x", "y"] {
            paths.extend(names.iter().map(|n| format!("/users/{n}{suffix}")));
        }
        assert_eq!(learn(&paths), vec!["/users/me", "/users/{user_id}"]);
    }

    #[test]
    fn few_literals_stay_literal() {
        let mut paths = Vec::new();
        for v in ["v1", "v2"] {
            for r in ["onboardingStatus", "settings", "members"] {
                for _ in 0..5 {
                    paths.push(format!("/api/{v}/org/{r}"));
                }
            }
        }
        assert_eq!(learn(&paths).len(), 6);
    }

    #[test]
    fn root_is_a_template() {
        assert_eq!(learn(&["/".into(), "/a/".into()]), vec!["/", "/a/"]);
    }

    #[test]
    fn deep_paths_end_in_rest() {
        let deep: String = (0..30).map(|i| format!("/s{i}")).collect();
        let t = learn(&[deep]);
        assert_eq!(t.len(), 1);
        assert!(t[0].ends_with("/{*rest}"), "{}", t[0]);
        assert_eq!(t[0].matches('/').count(), MAX_DEPTH);
    }

    #[test]
    fn over_the_cap_counts_in_other() {
        let mut inv = Inventory::new(Limits {
            max_templates: 3,
            examples: 1,
        });
        for p in ["/a", "/b", "/c", "/d", "/e"] {
            inv.observe(&get(p));
        }
        inv.observe(&get("/../x"));
        let m = inv.map();
        assert_eq!(m.templates.len(), 3);
        assert_eq!(
            (m.other.requests, m.other.over_cap, m.other.rejected),
            (3, 2, 1)
        );
        assert_eq!(m.totals.requests, 6);
    }
}
