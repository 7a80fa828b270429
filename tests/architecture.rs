//! The layers of the service, checked on its source (ARCHITECTURE.md draws them):
//!
//! ```text
//! app, main, cli, config          composition: may use everything
//!   api (gRPC edge), metrics, overload, middleware, jobs, telemetry
//!     service                     operations, authorization, caches
//!       store                     SQL (SeaORM), the write path
//!         domain, secrets, periodic   types, rules, crypto helpers: no I/O of their own
//! ```
//!
//! Dependencies point down only. This test fails when a `crate::…` path points the wrong way,
//! when two top-level modules (or two files of the store) import each other, or when SeaORM is
//! named outside the store.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// What each layer may import from the crate (besides itself). Modules not listed are the
/// composition root and may import anything.
const ALLOWED: &[(&str, &[&str])] = &[
    ("domain", &[]),
    ("secrets", &["domain"]),
    ("periodic", &[]),
    ("proto", &[]),
    ("store", &["domain", "secrets"]),
    ("service", &["domain", "secrets", "store", "periodic"]),
    ("api", &["domain", "service", "proto", "telemetry", "middleware"]),
    ("middleware", &[]),
    ("overload", &["domain", "api", "proto", "middleware"]),
    ("metrics", &["service", "middleware", "periodic"]),
    ("jobs", &["domain", "service", "periodic"]),
    ("telemetry", &["config"]),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            // The benchmark binary is not part of the service.
            if path.file_name().unwrap() != "bin" {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments (line comments and doc comments), so prose naming a module does
/// not count as an import.
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            // Not inside a string literal (good enough for this codebase: no "//" in strings
            // before code on the same line).
            Some(i) if l[..i].matches('"').count() % 2 == 0 => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// First path segments after each `prefix` (`crate::`, `super::`): `crate::a::b` gives `a`,
/// `crate::{a::x, b}` gives `a` and `b`.
fn segments_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // `foo_crate::` or `a::super::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            // The top level of a balanced group.
            let (mut depth, mut item) = (0, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 && c == ',' {
                    out.insert(ident(item.trim()));
                    item.clear();
                } else {
                    item.push(c);
                }
            }
            out.insert(ident(item.trim()));
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|s| !s.is_empty() && s != "self");
    out
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(n.to_owned());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_owned());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

struct Source {
    /// `store`, `service`, … (`lib` for src/lib.rs).
    top: String,
    /// For a file directly in a module directory (`src/store/users.rs`): its name.
    file: Option<String>,
    rel: String,
    code: String,
}

fn sources() -> Vec<Source> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            let parts: Vec<&str> = rel.split('/').collect();
            let top = parts[0].trim_end_matches(".rs").to_owned();
            let file = (parts.len() == 2).then(|| parts[1].trim_end_matches(".rs").to_owned());
            Source { top, file, rel, code: code_of(&std::fs::read_to_string(&p).unwrap()) }
        })
        .collect()
}

fn top_graph(sources: &[Source]) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in sources.iter().filter(|s| s.top != "lib") {
        let deps = segments_after(&s.code, "crate::");
        graph.entry(s.top.clone()).or_default().extend(deps.into_iter().filter(|d| *d != s.top));
    }
    graph
}

#[test]
fn layers_point_down() {
    let sources = sources();
    let mut wrong = Vec::new();
    for s in &sources {
        let Some((_, allowed)) = ALLOWED.iter().find(|(m, _)| *m == s.top) else { continue };
        for dep in segments_after(&s.code, "crate::") {
            if dep != s.top && !allowed.contains(&dep.as_str()) {
                wrong.push(format!("{} uses crate::{dep}", s.rel));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers:\n{}", wrong.join("\n"));
}

#[test]
fn no_module_imports_one_that_imports_it() {
    let graph = top_graph(&sources());
    assert!(graph.contains_key("store") && graph["api"].contains("service"), "the scan sees imports: {graph:?}");
    assert_eq!(find_cycle(&graph), None, "a cycle among the top-level modules");
}

#[test]
fn store_files_form_no_cycle() {
    let sources = sources();
    let store: Vec<&Source> = sources.iter().filter(|s| s.top == "store" && s.file.is_some()).collect();
    let names: BTreeSet<String> = store.iter().filter_map(|s| s.file.clone()).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in &store {
        let me = s.file.clone().unwrap();
        let mut deps = segments_after(&s.code, "super::");
        deps.extend(segments_after(&s.code, "crate::store::"));
        deps.retain(|d| names.contains(d) && *d != me && d != "mod");
        graph.entry(me).or_default().extend(deps);
    }
    assert!(graph["write"].contains("audit"), "the scan sees the store's imports: {graph:?}");
    assert_eq!(find_cycle(&graph), None, "a cycle among the store's files");
}

#[test]
fn only_the_store_speaks_sql() {
    let offenders: Vec<String> = sources()
        .iter()
        .filter(|s| s.top != "store" && (s.code.contains("sea_orm::") || s.code.contains("sqlx::")))
        .map(|s| s.rel.clone())
        .collect();
    assert!(offenders.is_empty(), "SeaORM or sqlx outside src/store: {offenders:?}");
}

#[test]
fn the_scanner_reads_use_trees() {
    let code = code_of("use crate::{\n    a::{b, c},\n    d,\n};\n// crate::commented\nlet x = crate::e::f();");
    assert_eq!(segments_after(&code, "crate::"), ["a", "d", "e"].map(String::from).into());
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.insert("x".into(), ["y".to_owned()].into());
    g.insert("y".into(), ["x".to_owned()].into());
    assert_eq!(find_cycle(&g), Some(vec!["x".to_owned(), "y".to_owned(), "x".to_owned()]));
}

/// The bodies of the RPC handlers (`async fn` in `impl <Service> for <Service>Api`), in lines:
/// (file, method, lines).
fn handler_lengths(sources: &[Source]) -> Vec<(String, String, usize)> {
    let mut out = Vec::new();
    for s in sources.iter().filter(|s| s.top == "api") {
        let lines: Vec<&str> = s.code.lines().collect();
        let mut in_service = false;
        let mut i = 0;
        while i < lines.len() {
            let l = lines[i];
            if l.starts_with("impl ") && l.contains(" for ") && l.trim_end().ends_with("Api {") {
                in_service = true;
            } else if l == "}" {
                in_service = false;
            } else if in_service && l.starts_with("    async fn ") {
                let name = l.trim_start_matches("    async fn ").split('(').next().unwrap_or_default().to_owned();
                let open = (i..lines.len()).find(|&j| lines[j].trim_end().ends_with('{')).expect("a body");
                let close = (open + 1..lines.len()).find(|&j| lines[j] == "    }").expect("the end of a body");
                out.push((s.rel.clone(), name, close - open - 1));
                i = close;
            }
            i += 1;
        }
    }
    out
}

#[test]
fn handlers_only_take_calls_apart() {
    let handlers = handler_lengths(&sources());
    assert!(handlers.len() > 60, "the scan sees the handlers: {handlers:?}");
    let long: Vec<String> =
        handlers.iter().filter(|(_, _, n)| *n > 5).map(|(f, m, n)| format!("{f}: {m} has {n} lines")).collect();
    assert!(
        long.is_empty(),
        "handlers over five lines (move the work into the operation or a conversion):\n{}",
        long.join("\n")
    );
}
