//! Tidy: the layering of ARCHITECTURE.md, checked on the source text. Each top-level module may
//! name (`crate::x`) only the modules its row allows, and the edge crates stay at their edges.
//! Test code (files named `tests.rs`, and everything from a file's `#[cfg(test)]` on) is free.

use std::path::{Path, PathBuf};

/// Which modules each module may import. `cli` may import anything.
const ALLOWED: &[(&str, &[&str])] = &[
    ("domain", &[]),
    ("clock", &[]),
    ("shutdown", &[]),
    ("telemetry", &[]),
    ("planner", &["domain"]),
    ("render", &["domain"]),
    ("channels", &["domain"]),
    ("storage", &["domain"]),
    ("import", &["domain", "storage"]),
    ("dispatch", &["domain", "storage", "render", "channels", "clock"]),
    (
        "broadcast",
        &["domain", "storage", "render", "dispatch", "clock", "shutdown"],
    ),
    ("scheduler", &["domain", "storage", "planner", "dispatch", "clock"]),
    ("config", &["domain", "channels", "dispatch", "broadcast"]),
    (
        "app",
        &[
            "domain",
            "config",
            "storage",
            "render",
            "channels",
            "dispatch",
            "scheduler",
        ],
    ),
    (
        "http",
        &[
            "domain",
            "storage",
            "render",
            "channels",
            "clock",
            "config",
            "shutdown",
            "import",
            "broadcast",
            "planner",
        ],
    ),
    ("cli", &["*"]),
];

/// Crates only some modules may use.
const EDGE_CRATES: &[(&str, &[&str])] = &[
    ("sqlx", &["storage"]),
    ("handlebars", &["render"]),
    ("anyhow", &["cli"]),
    ("clap", &["cli"]),
    ("indicatif", &["cli"]),
    (
        "tokio",
        &[
            "storage",
            "channels",
            "dispatch",
            "scheduler",
            "shutdown",
            "http",
            "cli",
        ],
    ),
    ("tokio_util", &["dispatch", "scheduler", "shutdown", "cli"]),
    ("lettre", &["channels"]),
    ("reqwest", &["channels"]),
    ("axum", &["http"]),
    ("tower_http", &["http"]),
    ("rustls", &["channels"]),
];

/// The names a source text imports from the crate's top level: `crate::x…` and each first
/// segment inside `crate::{…}`.
fn crate_imports(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = matching_brace(group);
            let mut depth = 0;
            let mut item = String::new();
            for c in group[..end].chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        push_first_segment(&item, &mut out);
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            push_first_segment(&item, &mut out);
        } else {
            push_first_segment(rest, &mut out);
        }
    }
    out
}

fn matching_brace(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    s.len()
}

fn push_first_segment(s: &str, out: &mut Vec<String>) {
    let name: String = s
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if !name.is_empty() && name != "self" {
        out.push(name);
    }
}

/// The code of a file without comments and without its test part.
fn production_code(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every way `module`'s code (one file's text) breaks the rules.
fn violations(module: &str, text: &str) -> Vec<String> {
    let code = production_code(text);
    let mut found = Vec::new();
    let allowed = ALLOWED
        .iter()
        .find(|(m, _)| *m == module)
        .map(|(_, a)| *a)
        .unwrap_or_else(|| panic!("module {module} has no row in the tidy table (nor in ARCHITECTURE.md?)"));
    for name in crate_imports(&code) {
        if name != module && !allowed.contains(&"*") && !allowed.contains(&name.as_str()) {
            found.push(format!("{module} imports crate::{name}"));
        }
    }
    for (krate, users) in EDGE_CRATES {
        let named = code.contains(&format!("{krate}::")) || code.contains(&format!("use {krate}"));
        if named && !users.contains(&module) {
            found.push(format!("{module} uses the {krate} crate"));
        }
    }
    found.sort();
    found.dedup();
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn imports_follow_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str().to_string_lossy();
        let module = first.trim_end_matches(".rs");
        if matches!(module, "lib" | "main") || relative.ends_with("tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for v in violations(module, &text) {
            problems.push(format!("{}: {v}", relative.display()));
        }
        checked += 1;
    }
    assert!(checked > 30, "only {checked} files were checked: is src/ where it was?");
    assert!(
        problems.is_empty(),
        "imports against the layers:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_catches_a_wrong_direction() {
    // A direct import, a grouped one and a path used inline are all seen.
    assert_eq!(
        violations("storage", "use crate::planner::Decision;\nuse crate::domain::Window;\n"),
        ["storage imports crate::planner"]
    );
    assert_eq!(
        violations("render", "use crate::{domain::{Locale, Zone}, dispatch::Dispatcher};"),
        ["render imports crate::dispatch"]
    );
    assert_eq!(
        violations("channels", "fn f() { let _ = crate::config::EXAMPLE; }"),
        ["channels imports crate::config"]
    );
    assert_eq!(
        violations("render", "#[derive(sqlx::FromRow)]\nstruct R;"),
        ["render uses the sqlx crate"]
    );
    // Comments and test code are not code.
    assert!(
        violations(
            "domain",
            "// see crate::storage\n#[cfg(test)]\nmod t { use crate::storage::Store; }"
        )
        .is_empty()
    );
    assert!(violations("cli", "use crate::storage::Store; use anyhow::Context;").is_empty());
}
