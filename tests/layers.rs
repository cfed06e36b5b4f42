//! The architecture, checked: every `crate::` path in the library's code must point to a layer
//! its module may use (the map below, the same as in `src/lib.rs`), and no source file grows past
//! 350 lines without saying why at its top (a `//! Size:` line), in any crate of the workspace.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module → the modules it may use (besides itself).
const ALLOWED: &[(&str, &[&str])] = &[
    ("core", &[]),
    ("error", &["core"]),
    ("storage", &["core", "error"]),
    ("net::protocol", &["core"]),
    ("net::auth", &["core"]),
    ("net::peer", &["core", "error", "net::protocol", "net::auth"]),
    ("net::client", &["core", "net::protocol"]),
    ("node", &["core", "error", "storage", "net::protocol", "net::auth", "net::peer"]),
    ("sync", &["core", "error", "storage", "net::protocol", "net::auth", "net::peer", "node"]),
    ("net::server", &["net::protocol"]),
    (
        "net::api",
        &[
            "core",
            "error",
            "net::protocol",
            "net::auth",
            "net::server",
            "net::exporter",
            "net::openapi",
            "net::page",
            "node",
            "sync",
        ],
    ),
    ("net::openapi", &["core", "net::api", "net::exporter", "net::page", "node"]),
    ("net::exporter", &["node"]),
    ("net::page", &["core", "error", "net::protocol", "net::api", "node"]),
];

const MODULES: &[&str] = &[
    "net::protocol",
    "net::auth",
    "net::peer",
    "net::client",
    "net::server",
    "net::api",
    "net::exporter",
    "net::openapi",
    "net::page",
    "core",
    "error",
    "storage",
    "node",
    "sync",
];

/// The module a source file belongs to (`None` for lib.rs and the folders' mod.rs, which only
/// declare and re-export).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?.with_extension("");
    let parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    match parts.as_slice() {
        [one] if one == "lib" => None,
        [_, last] if last == "mod" => None,
        [net, name] if net == "net" => Some(format!("net::{name}")),
        [first, ..] if first != "bin" => Some(first.clone()),
        _ => None,
    }
}

/// The modules a line of code names through `crate::`.
fn used_by(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let path = &rest[at + "crate::".len()..];
        if let Some(m) = MODULES.iter().find(|m| path.starts_with(**m)) {
            found.push(m.to_string());
        }
        rest = path;
    }
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

fn library_files() -> (PathBuf, Vec<PathBuf>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    (src, files)
}

#[test]
fn dependencies_point_one_way() {
    let allowed: BTreeMap<&str, BTreeSet<&str>> =
        ALLOWED.iter().map(|(m, uses)| (*m, uses.iter().copied().collect())).collect();
    let (src, files) = library_files();
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in &files {
        let Some(module) = module_of(&src, file) else { continue };
        let may = allowed
            .get(module.as_str())
            .unwrap_or_else(|| panic!("{}: module {module} not in the map", file.display()));
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for used in used_by(line) {
                checked += 1;
                if used != module && !may.contains(used.as_str()) {
                    violations.push(format!("{}:{}: {module} uses {used}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} crate:: paths found: is the scan broken?");
    assert!(violations.is_empty(), "dependencies against the layer map:\n{}", violations.join("\n"));
}

#[test]
fn the_scan_sees_a_forbidden_use() {
    assert_eq!(used_by("use crate::node::replica::Replica;"), vec!["node"]);
    assert_eq!(used_by("use crate::net::peer::{PeerClient, crate::core::x};"), vec!["net::peer", "core"]);
    let src = Path::new("/x/src");
    assert_eq!(module_of(src, Path::new("/x/src/net/api.rs")).as_deref(), Some("net::api"));
    assert_eq!(module_of(src, Path::new("/x/src/storage/store.rs")).as_deref(), Some("storage"));
    assert_eq!(module_of(src, Path::new("/x/src/node/mod.rs")), None);
    assert_eq!(module_of(src, Path::new("/x/src/bin/vkv.rs")), None);
}

#[test]
fn long_files_say_why() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "testkit/src", "driver/src", "report/src", "fuzz/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    let mut unexplained = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let lines = text.lines().count();
        if lines > 350 && !text.lines().take(40).any(|l| l.starts_with("//! Size:")) {
            unexplained.push(format!("{} ({lines} lines)", file.display()));
        }
    }
    assert!(
        unexplained.is_empty(),
        "files over 350 lines without a `//! Size:` reason at the top:\n{}",
        unexplained.join("\n")
    );
}
