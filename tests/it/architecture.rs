//! ARCHITECTURE.md kept true by a test, in the manner of rust-analyzer's
//! tidy tests: the `crate::`, `super::` and `self::` paths of every file
//! under `src/` are read as the module graph, and the test fails
//!
//! - on a cycle between modules (a module's imports of its own ancestors
//!   and descendants are its insides, not edges);
//! - on an import against the layer order ARCHITECTURE.md's "Layers"
//!   section states (a top-level module may use only modules of lower
//!   layers);
//! - on a module ARCHITECTURE.md does not name;
//! - on a module that uses a crate its invariant says it knows nothing
//!   about (HTTP in the layers below `http`, Cedar in `store`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::support::repo_root;

/// Every module of the library: its path (`store::redb`) and its file.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut folders = vec![src.to_path_buf()];
    while let Some(dir) = folders.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            if rel == Path::new("lib.rs") || rel == Path::new("main.rs") {
                continue;
            }
            let mut parts: Vec<String> = rel
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            out.insert(parts.join("::"), path);
        }
    }
    out
}

/// The text of a file without its comments and the contents of its string
/// literals (a path in a doc comment or a message is no import).
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
            }
            '"' => {
                out.push('"');
                let mut escaped = false;
                for c in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
                out.push('"');
            }
            '\'' => {
                // A char literal ('x', '\n') or a lifetime ('a): skip a
                // literal whole so that '"' is not taken for a string.
                let rest: String = chars.clone().take(4).collect();
                if let Some(end) = rest.find('\'') {
                    if end > 0 && (end == 1 || rest.starts_with('\\')) {
                        for _ in 0..=end {
                            chars.next();
                        }
                        out.push_str("' '");
                        continue;
                    }
                }
                out.push('\'');
            }
            _ => out.push(c),
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths a file names from the crate: each `crate::a::b`, `super::a`
/// or `self::a` path, with `use` groups (`crate::a::{b, c::d}`) expanded.
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let at_word = i == 0 || !is_ident(bytes[i - 1]) && bytes[i - 1] != ':';
        let rest: String = bytes[i..bytes.len().min(i + 7)].iter().collect();
        let root = ["crate::", "super::", "self::"]
            .into_iter()
            .find(|r| rest.starts_with(r));
        match root.filter(|_| at_word) {
            Some(r) => {
                let (mut found, next) = path_at(&bytes, i);
                if r == "self::" && found.is_empty() {
                    i = next;
                    continue;
                }
                out.append(&mut found);
                i = next;
            }
            None => i += 1,
        }
    }
    out
}

/// Reads the path (or use tree) starting at `i`: its paths, and where it
/// ends.
fn path_at(chars: &[char], mut i: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    loop {
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        if start == i {
            break;
        }
        prefix.push(chars[start..i].iter().collect::<String>());
        if chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':') {
            i += 2;
            if chars.get(i) == Some(&'{') {
                // A group: split at its top-level commas.
                let mut depth = 0;
                let mut items = Vec::new();
                let mut item_start = i + 1;
                while i < chars.len() {
                    match chars[i] {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                items.push((item_start, i));
                                break;
                            }
                        }
                        ',' if depth == 1 => {
                            items.push((item_start, i));
                            item_start = i + 1;
                        }
                        _ => {}
                    }
                    i += 1;
                }
                let mut out = Vec::new();
                for (s, e) in items {
                    let item: Vec<char> = chars[s..e].to_vec();
                    let skip = item.iter().take_while(|c| c.is_whitespace()).count();
                    if skip >= item.len() {
                        continue;
                    }
                    let (inner, _) = path_at(&item, skip);
                    for p in inner {
                        let mut full = prefix.clone();
                        full.extend(p.into_iter().filter(|s| s != "self"));
                        out.push(full);
                    }
                }
                return (out, i + 1);
            }
            continue;
        }
        break;
    }
    (vec![prefix], i)
}

/// The module a path names, from `from`: the longest module prefix of the
/// path once `crate`, `super` and `self` are resolved.
fn target(from: &str, path: &[String], modules: &BTreeMap<String, PathBuf>) -> Option<String> {
    let mut segs: Vec<String> = Vec::new();
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => rest = &path[1..],
        Some("super") | Some("self") => {
            segs = from.split("::").map(str::to_owned).collect();
            while let Some(first) = rest.first() {
                match first.as_str() {
                    "super" => {
                        segs.pop();
                    }
                    "self" => {}
                    _ => break,
                }
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    segs.extend(rest.iter().cloned());
    (1..=segs.len())
        .rev()
        .map(|k| segs[..k].join("::"))
        .find(|candidate| modules.contains_key(candidate))
}

/// Whether one module is inside the other (or is it).
fn related(a: &str, b: &str) -> bool {
    a == b || a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"))
}

/// The module graph: module → the modules it uses.
fn graph(modules: &BTreeMap<String, PathBuf>) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, file) in modules {
        let text = std::fs::read_to_string(file).expect("read source");
        let uses = edges.entry(module.clone()).or_default();
        for path in paths_in(&code_of(&text)) {
            if let Some(to) = target(module, &path, modules) {
                if to != *module {
                    uses.insert(to);
                }
            }
        }
    }
    edges
}

/// The layers ARCHITECTURE.md states, bottom first: each a list of
/// top-level modules.
fn layers(architecture: &str) -> Vec<Vec<String>> {
    let (_, section) = architecture
        .split_once("## Layers")
        .expect("ARCHITECTURE.md has a `## Layers` section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let (n, rest) = l.split_once(". ")?;
            n.parse::<usize>().ok()?;
            let (names, _) = rest.split_once(" — ").unwrap_or((rest, ""));
            Some(
                names
                    .split(',')
                    .map(|n| n.trim().trim_matches('`').to_owned())
                    .filter(|n| !n.is_empty())
                    .collect(),
            )
        })
        .collect()
}

fn setup() -> (
    BTreeMap<String, PathBuf>,
    BTreeMap<String, BTreeSet<String>>,
    String,
) {
    let root = repo_root();
    let modules = modules(&root.join("src"));
    let edges = graph(&modules);
    let architecture =
        std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    (modules, edges, architecture)
}

#[test]
fn the_reader_finds_paths_the_way_the_compiler_does() {
    let code = code_of(
        "use crate::store::{self, Fault, pg::{Options, PgStore}};\n\
         // crate::commented::out\n\
         let s = \"crate::in_a_string\"; let c = '\"';\n\
         fn f() { crate::fit::check(); super::sibling::x(); }",
    );
    let paths: Vec<String> = paths_in(&code).iter().map(|p| p.join("::")).collect();
    assert_eq!(
        paths,
        [
            "crate::store",
            "crate::store::Fault",
            "crate::store::pg::Options",
            "crate::store::pg::PgStore",
            "crate::fit::check",
            "super::sibling::x",
        ]
    );
    let mods: BTreeMap<String, PathBuf> = ["store", "store::pg", "a", "a::b", "a::sibling"]
        .into_iter()
        .map(|m| (m.to_owned(), PathBuf::new()))
        .collect();
    let p = |s: &str| s.split("::").map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        target("x", &p("crate::store::pg::PgStore"), &mods).as_deref(),
        Some("store::pg")
    );
    assert_eq!(
        target("a::b", &p("super::sibling::x"), &mods).as_deref(),
        Some("a::sibling")
    );
    assert_eq!(target("a::b", &p("super::f"), &mods).as_deref(), Some("a"));
}

#[test]
fn modules_form_no_cycle() {
    let (_, edges, _) = setup();
    // Depth-first search for a path back to where it started, among edges
    // between modules that are not inside one another.
    fn visit(
        at: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == at) {
            let mut cycle = path[i..].to_vec();
            cycle.push(at.to_owned());
            return Some(cycle);
        }
        if done.contains(at) {
            return None;
        }
        path.push(at.to_owned());
        for to in edges.get(at).into_iter().flatten() {
            if related(at, to) {
                continue;
            }
            if let Some(cycle) = visit(to, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(at.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for module in edges.keys() {
        if let Some(cycle) = visit(module, &edges, &mut Vec::new(), &mut done) {
            panic!("a cycle of imports: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn imports_run_down_the_layers_architecture_md_states() {
    let (modules, edges, architecture) = setup();
    let layers = layers(&architecture);
    assert!(!layers.is_empty(), "no layers read from ARCHITECTURE.md");
    let mut layer_of: BTreeMap<String, usize> = BTreeMap::new();
    for (i, names) in layers.iter().enumerate() {
        for name in names {
            assert!(
                layer_of.insert(name.clone(), i).is_none(),
                "`{name}` is in two layers"
            );
        }
    }
    let top = |m: &str| m.split("::").next().unwrap_or(m).to_owned();
    let tops: BTreeSet<String> = modules.keys().map(|m| top(m)).collect();
    let unlayered: Vec<&String> = tops.iter().filter(|t| !layer_of.contains_key(*t)).collect();
    assert!(
        unlayered.is_empty(),
        "top-level modules in no layer of ARCHITECTURE.md: {unlayered:?}"
    );
    let stale: Vec<&String> = layer_of.keys().filter(|n| !tops.contains(*n)).collect();
    assert!(
        stale.is_empty(),
        "layers name modules that do not exist: {stale:?}"
    );
    let mut upward = Vec::new();
    for (from, uses) in &edges {
        for to in uses {
            let (a, b) = (top(from), top(to));
            if a != b && layer_of[&a] <= layer_of[&b] {
                upward.push(format!(
                    "{from} (layer {}) uses {to} (layer {})",
                    layer_of[&a] + 1,
                    layer_of[&b] + 1
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports against the layer order of ARCHITECTURE.md:\n{}",
        upward.join("\n")
    );
}

#[test]
fn architecture_md_names_every_module() {
    let (modules, _, architecture) = setup();
    let mut unnamed = Vec::new();
    for (module, file) in &modules {
        let rel = file
            .strip_prefix(repo_root())
            .expect("under the repository")
            .to_string_lossy()
            .into_owned();
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let folder = rel.rsplit_once('/').map(|(d, _)| format!("`{d}/`"));
        let named = architecture.contains(&format!("`{rel}`"))
            || (folder.as_ref().is_some_and(|f| architecture.contains(f))
                && (name == "mod.rs" || architecture.contains(&format!("`{name}`"))));
        if !named {
            unnamed.push(format!("{module} ({rel})"));
        }
    }
    assert!(
        unnamed.is_empty(),
        "modules ARCHITECTURE.md's code map does not name: {unnamed:?}"
    );
}

#[test]
fn modules_know_nothing_of_what_their_invariants_exclude() {
    let (modules, _, _) = setup();
    // What each module must not name, as ARCHITECTURE.md's invariants say.
    let http = [
        "axum::",
        "hyper::",
        "tower::",
        "tower_http::",
        "hyper_util::",
    ];
    let rules: &[(&str, &[&str])] = &[
        ("policy", &http),
        ("authz", &http),
        ("model", &http),
        ("facts", &http),
        ("pdp", &http),
        ("accounts", &http),
        ("keys", &http),
        ("audit", &http),
        ("impact", &http),
        ("matrix", &http),
        ("suite", &http),
        ("prove", &http),
        (
            "store",
            &[
                "axum::",
                "hyper::",
                "tower::",
                "tower_http::",
                "cedar_policy::",
            ],
        ),
    ];
    let mut broken = Vec::new();
    for (module, file) in &modules {
        let top = module.split("::").next().unwrap_or(module);
        let Some((_, banned)) = rules.iter().find(|(m, _)| *m == top) else {
            continue;
        };
        let code = code_of(&std::fs::read_to_string(file).expect("read source"));
        for crate_path in *banned {
            if code.contains(crate_path) {
                broken.push(format!("{module} uses `{crate_path}`"));
            }
        }
    }
    assert!(broken.is_empty(), "{broken:?}");
}
