//! The architecture, checked: the layers of `src/` import only downwards, and no modules of
//! one folder import each other, directly or around a circle. The layers, lowest first:
//! routing, config, observe, proxy, control, cli (ARCHITECTURE.md, "Layout").
//!
//! Every `crate::...` and `super::...` path in the code (comments aside) is resolved to the
//! module it names; `src/lib.rs` and `src/main.rs`, which map and start the whole, are left
//! out. A folder's `mod.rs` is that folder's map and shared types: its submodules may use it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const LAYERS: [&str; 6] = ["routing", "config", "observe", "proxy", "control", "cli"];

/// Module path of a source file: `src/proxy/send.rs` is `proxy::send`, `src/proxy/mod.rs`
/// is `proxy`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    parts
}

fn sources(dir: &Path, root: &Path, out: &mut BTreeMap<Vec<String>, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).unwrap();
            if rel == Path::new("lib.rs") || rel == Path::new("main.rs") {
                continue;
            }
            out.insert(module_of(rel), std::fs::read_to_string(&path).unwrap());
        }
    }
}

/// The paths a file's code names: `crate::a::b` and `super::a` (with `super::super::`),
/// resolved against the file's module, as segments.
fn references(module: &[String], text: &str) -> Vec<Vec<String>> {
    // The segments of a path at the start of `s`, up to the first character that cannot
    // continue it.
    let path = |s: &str| -> Vec<String> {
        let mut out = Vec::new();
        for seg in s.split("::") {
            let id: String = seg
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let whole = id.len() == seg.len();
            if !id.is_empty() {
                out.push(id);
            }
            if !whole || out.is_empty() {
                break;
            }
        }
        out
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let mut rest = line.split("//").next().unwrap_or("");
        loop {
            let found = [rest.find("crate::"), rest.find("super::")];
            let Some(i) = found.iter().flatten().min().copied() else {
                break;
            };
            let tail = &rest[i..];
            if let Some(t) = tail.strip_prefix("crate::") {
                out.push(path(t));
                rest = t;
            } else {
                // `super` of `a::b` is `a`, whether `a::b` is a file or a folder.
                let mut base: Vec<String> = module.to_vec();
                let mut t = tail;
                while let Some(r) = t.strip_prefix("super::") {
                    base.pop();
                    t = r;
                }
                base.extend(path(t));
                out.push(base);
                rest = t;
            }
        }
    }
    out
}

#[test]
fn layers_import_downwards_and_modules_form_no_circles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    sources(&root, &root, &mut files);
    let modules: BTreeSet<Vec<String>> = files.keys().cloned().collect();
    // module -> modules it names (the longest known module prefix of each path)
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, text) in &files {
        for r in references(module, text) {
            let target = (1..=r.len())
                .rev()
                .map(|n| r[..n].to_vec())
                .find(|p| modules.contains(p));
            if let Some(t) = target
                && t != *module
            {
                edges.entry(module.clone()).or_default().insert(t);
            }
        }
    }

    let mut problems = Vec::new();
    // Layers: a folder imports only folders below it.
    for (from, tos) in &edges {
        for to in tos {
            let (f, t) = (&from[0], &to[0]);
            if f == t {
                continue;
            }
            let rank = |n: &str| LAYERS.iter().position(|l| *l == n);
            match (rank(f), rank(t)) {
                (Some(a), Some(b)) if b < a => {}
                _ => problems.push(format!(
                    "{} imports {}: {f} may not import {t}",
                    from.join("::"),
                    to.join("::")
                )),
            }
        }
    }
    // Circles: within each folder, between its submodules (a submodule using its folder's
    // own mod.rs is not a circle; two submodules using each other are).
    let folders: BTreeSet<Vec<String>> = modules
        .iter()
        .flat_map(|m| (0..m.len()).map(move |n| m[..n].to_vec()))
        .collect();
    for folder in &folders {
        let child = |m: &Vec<String>| -> Option<String> {
            (m.len() > folder.len() && m[..folder.len()] == folder[..])
                .then(|| m[folder.len()].clone())
        };
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, tos) in &edges {
            let Some(a) = child(from) else { continue };
            for to in tos {
                if let Some(b) = child(to)
                    && a != b
                {
                    graph.entry(a.clone()).or_default().insert(b);
                }
            }
        }
        if let Some(cycle) = find_cycle(&graph) {
            let name = if folder.is_empty() {
                "src".to_string()
            } else {
                folder.join("::")
            };
            problems.push(format!(
                "a circle of imports in {name}: {}",
                cycle.join(" -> ")
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The check sees the code: the proxy does use routing, and the cli the control plane.
    assert!(edges.values().flatten().any(|t| t[0] == "routing"));
    assert!(
        edges
            .iter()
            .filter(|(from, _)| from[0] == "proxy")
            .any(|(_, tos)| tos.iter().any(|t| t[0] == "routing"))
    );
}

fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &String,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(1) => {
                let at = stack.iter().position(|s| s == n).unwrap();
                let mut c = stack[at..].to_vec();
                c.push(n.clone());
                return Some(c);
            }
            Some(_) => return None,
            None => {}
        }
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if let Some(c) = visit(n, g, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_checker_finds_a_circle_and_an_upward_import() {
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert!(find_cycle(&g).is_some());
    g.remove("b");
    assert!(find_cycle(&g).is_none());
    let r = references(
        &["proxy".to_string(), "send".to_string()],
        "use super::pool::Sender; use crate::control::x; // crate::cli::y\n",
    );
    assert_eq!(
        r,
        vec![
            vec![
                "proxy".to_string(),
                "pool".to_string(),
                "Sender".to_string()
            ],
            vec!["control".to_string(), "x".to_string()],
        ]
    );
}
