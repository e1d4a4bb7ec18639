//! The documentation holds up: every YAML example of the README and of docs/ is a routes file
//! that `strangler check` accepts, the README's commands exist, and no text in the
//! repository points at files outside it.

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn pages() -> Vec<PathBuf> {
    let mut out = vec![Path::new(ROOT).join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    out.extend(docs);
    out
}

/// The fenced ```yaml blocks of a Markdown text, with the line each starts on.
fn yaml_blocks(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        match &mut current {
            None if line.trim_start().starts_with("```yaml")
                || line.trim_start().starts_with("```yml") =>
            {
                current = Some((i + 1, String::new()));
            }
            Some(_) if line.trim_start().starts_with("```") => {
                out.push(current.take().unwrap());
            }
            Some((_, block)) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn every_yaml_example_passes_check() {
    // Each example alone in a directory of its own, as a reader would try it: the files a
    // TLS example names are not there (`check` says so, and passes).
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    let mut problems = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for (line, block) in yaml_blocks(&text) {
            let file = dir.path().join(format!("example-{checked}.yaml"));
            std::fs::write(&file, &block).unwrap();
            let out = Command::new(env!("CARGO_BIN_EXE_strangler"))
                .arg("check")
                .arg(&file)
                .env_remove("STRANGLER_ADMIN_TOKEN")
                .output()
                .unwrap();
            if !out.status.success() {
                problems.push(format!(
                    "{}:{line}: the example fails `strangler check`:\n{}",
                    page.display(),
                    String::from_utf8_lossy(&out.stdout)
                ));
            }
            checked += 1;
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked >= 5, "only {checked} YAML examples found");
}

#[test]
fn the_readme_starts_with_the_demo_and_the_test_command() {
    let text = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let first_block = text.split("```").nth(1).expect("a code block");
    assert!(
        first_block.contains("cargo run --release -- demo"),
        "{first_block}"
    );
    assert!(first_block.contains("scripts/test"), "{first_block}");
    assert!(Path::new(ROOT).join("scripts/test").exists());
    // Every docs page the README links to exists.
    for link in text.split("](docs/").skip(1) {
        let page = link.split([')', '#']).next().unwrap();
        assert!(
            Path::new(ROOT).join("docs").join(page).exists(),
            "the README links to docs/{page}, which does not exist"
        );
    }
}

fn text_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(name.as_str(), "target" | ".git" | "node_modules") {
                text_files(&path, out);
            }
        } else if !matches!(name.as_str(), "Cargo.lock") {
            out.push(path);
        }
    }
}

/// Users have this repository and nothing else: nothing in it may send them to files
/// outside it.
#[test]
fn nothing_points_outside_the_repository() {
    // Built at run time, so this file does not match itself.
    let needles = [["..", "/shared"].concat(), ["CON", "TRACT"].concat()];
    let mut files = Vec::new();
    text_files(Path::new(ROOT), &mut files);
    let mut found = Vec::new();
    for f in &files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue; // not text
        };
        for (i, line) in text.lines().enumerate() {
            if needles.iter().any(|n| line.contains(n.as_str())) {
                found.push(format!("{}:{}: {line}", f.display(), i + 1));
            }
        }
    }
    assert!(files.len() > 50, "only {} files looked at", files.len());
    assert!(found.is_empty(), "{}", found.join("\n"));
}
