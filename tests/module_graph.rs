//! Dependencies between the library's modules point one way.
//!
//! Reads `src/` the way the command in docs/design.md, "Module map" does: every `.rs`
//! file except the `tests.rs` test modules, up to its first `#[cfg(test)]` line, comment
//! lines left out; an edge `A -> B` is code in module `A` naming `crate::B`. Each module
//! has a layer (the table below, leaves first, as the module map lists them) and may
//! only name modules of a lower layer, so no cycle can form. A new module needs a layer
//! here and a line in the module map.
//!
//! Offenders are listed all at once, as `FILE:LINE: edge`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each module's layer: a module may name `crate::` modules of lower layers only.
/// config → creds → (model, protocol, verify) → metrics → events → cache → server →
/// daemon → reload (→ the binary, which names `credvend::` only).
const LAYERS: [(&str, u8); 23] = [
    ("aws_names", 0),
    ("clock", 0),
    ("secret", 0),
    ("notify", 0),
    ("memory", 0),
    ("policy", 1),
    ("config", 1),
    ("control_client", 1),
    ("credential_process", 1),
    ("creds", 2),
    ("telemetry", 2),
    ("setup", 2),
    ("exec", 2),
    ("testing", 2),
    ("model", 3),
    ("protocol", 3),
    ("verify", 4),
    ("metrics", 5),
    ("events", 6),
    ("cache", 7),
    ("server", 8),
    ("daemon", 9),
    ("reload", 10),
];

/// One `crate::` reference: where it is and what it names.
struct Edge {
    file: String,
    line: usize,
    from: String,
    to: String,
}

fn src_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            src_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs")
            && path.file_name().is_some_and(|name| name != "tests.rs")
        {
            found.push(path);
        }
    }
}

/// The module a file under `src/` belongs to: its first path component, `.rs` dropped.
fn module_of(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .expect("a path under src/")
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.strip_suffix(".rs").unwrap_or(&first).to_string()
}

/// Every `crate::name` in `line`, `name` being lower case, digits and `_`.
fn crate_references(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

fn edges(root: &Path) -> Vec<Edge> {
    let src = root.join("src");
    let mut files = Vec::new();
    src_files(&src, &mut files);
    let mut out = Vec::new();
    for path in files {
        let rel = path.strip_prefix(&src).expect("under src/");
        let from = module_of(rel);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        for (number, line) in text.lines().enumerate() {
            if line.starts_with("#[cfg(test)]") {
                break;
            }
            if line.trim_start().starts_with("//") {
                continue;
            }
            for to in crate_references(line) {
                if to != from {
                    out.push(Edge {
                        file: format!("src/{}", rel.display()),
                        line: number + 1,
                        from: from.clone(),
                        to,
                    });
                }
            }
        }
    }
    out
}

#[test]
fn every_module_names_only_modules_below_it() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let layers: BTreeMap<&str, u8> = LAYERS.into_iter().collect();
    let edges = edges(&root);
    assert!(
        edges.iter().any(|e| e.from == "cache" && e.to == "creds"),
        "the scan found no `cache -> creds` edge; it is not reading src/ as intended"
    );
    let mut problems = Vec::new();
    for edge in &edges {
        // The binary (`src/main.rs` and its own modules in `src/cli/`) names the library
        // as `credvend::`; a `crate::` there is its own.
        if edge.from == "main" || edge.from == "cli" {
            continue;
        }
        match (layers.get(edge.from.as_str()), layers.get(edge.to.as_str())) {
            (Some(from), Some(to)) if to < from => {}
            (Some(from), Some(to)) => problems.push(format!(
                "{}:{}: {} -> {} points up or sideways (layer {from} names layer {to}); move \
                 what it needs into a module below both",
                edge.file, edge.line, edge.from, edge.to
            )),
            (None, _) => problems.push(format!(
                "{}:{}: module `{}` has no layer; add it to LAYERS in tests/module_graph.rs \
                 and to the module map",
                edge.file, edge.line, edge.from
            )),
            (_, None) => problems.push(format!(
                "{}:{}: {} -> {}: module `{}` has no layer; add it to LAYERS in \
                 tests/module_graph.rs and to the module map",
                edge.file, edge.line, edge.from, edge.to, edge.to
            )),
        }
    }
    assert!(
        problems.is_empty(),
        "{} dependency edge(s) break the one-way module graph:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn every_library_module_has_a_layer() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).expect("src/lib.rs");
    let layers: BTreeMap<&str, u8> = LAYERS.into_iter().collect();
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|line| line.trim().strip_prefix("pub mod "))
        .filter_map(|rest| rest.strip_suffix(';'))
        .collect();
    assert!(
        declared.contains(&"cache"),
        "no `pub mod` found in src/lib.rs"
    );
    let missing: Vec<&&str> = declared
        .iter()
        .filter(|m| !layers.contains_key(**m))
        .collect();
    assert!(
        missing.is_empty(),
        "modules declared in src/lib.rs without a layer in tests/module_graph.rs: {missing:?}"
    );
    for module in &declared {
        assert!(
            // A link, or plain code for a module hidden from the docs (`testing`).
            lib.contains(&format!("[`{module}`]")) || lib.contains(&format!("//! - `{module}`")),
            "the module map in src/lib.rs does not list `{module}`"
        );
    }
}
