//! The server crate's modules import each other without cycles: every file can be read (and
//! changed) knowing only the files below it. A cycle is found here, not in review.
//!
//! Edges are the `crate::…` and `super::…` paths a file names outside its unit tests (and
//! comments), resolved to the file that defines the module they lead into. Checked twice: file by
//! file, and with each top-level module (`proxy/*`, `admin/*`, …) taken as one.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "a test: a failure is a failed test")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

#[test]
fn no_file_imports_itself_through_others() {
    let graph = Graph::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(graph.files.len() > 40, "expected the whole crate, found {} files", graph.files.len());
    let cycles = graph.cycles(usize::MAX);
    assert!(cycles.is_empty(), "file-level import cycles: {cycles:#?}");
}

#[test]
fn no_top_level_module_imports_itself_through_others() {
    let graph = Graph::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let cycles = graph.cycles(1);
    assert!(cycles.is_empty(), "module-level import cycles: {cycles:#?}");
}

/// The checker finds what it is for: a cycle through `super::` and one through `crate::`.
#[test]
fn a_cycle_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("lib.rs", "mod a;\nmod b;\n");
    write("a/mod.rs", "mod inner;\nuse crate::b::Thing;\n// use crate::c is only a comment\n");
    write("a/inner.rs", "use super::super::b;\n");
    write("b.rs", "use crate::a::inner::Other;\n#[cfg(test)]\nmod tests {\n    use crate::a::X;\n}\n");
    let graph = Graph::read(dir.path());
    assert_eq!(graph.cycles(usize::MAX), vec![vec!["a/inner".to_string(), "b".to_string()]]);
    assert_eq!(graph.cycles(1), vec![vec!["a".to_string(), "b".to_string()]]);
    write("b.rs", "pub struct Thing;\n#[cfg(test)]\nmod tests {\n    use crate::a::X;\n}\n");
    assert!(Graph::read(dir.path()).cycles(usize::MAX).is_empty(), "a unit test's imports are not edges");
}

struct Graph {
    /// Each module that has a file of its own, with the modules its file names.
    files: BTreeMap<Module, BTreeSet<Module>>,
}

impl Graph {
    fn read(src: &Path) -> Graph {
        let mut paths = Vec::new();
        collect(src, &mut paths);
        let modules: BTreeMap<Module, PathBuf> = paths.into_iter().map(|path| (module_of(src, &path), path)).collect();
        let mut files = BTreeMap::new();
        for (module, path) in &modules {
            let text = without_tests_and_comments(&std::fs::read_to_string(path).unwrap());
            let named = paths_named(&text)
                .into_iter()
                .filter_map(|(root, segments)| {
                    let mut base: Module = match root {
                        Root::Crate => Vec::new(),
                        // `super` of `a/b.rs` (module a::b) and of `a/b/mod.rs` alike is `a`.
                        Root::Super(levels) => module[..module.len().saturating_sub(levels)].to_vec(),
                    };
                    base.extend(segments);
                    defining_file(&modules, &base)
                })
                .filter(|target| target != module && !target.is_empty())
                .collect();
            files.insert(module.clone(), named);
        }
        Graph { files }
    }

    /// The strongly connected groups of more than one module, with modules cut to their first
    /// `depth` segments; each group sorted, the groups in order.
    fn cycles(&self, depth: usize) -> Vec<Vec<String>> {
        let cut = |module: &Module| module[..module.len().min(depth)].join("/");
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, targets) in &self.files {
            let from = cut(from);
            let entry = edges.entry(from.clone()).or_default();
            entry.extend(targets.iter().map(cut).filter(|to| *to != from));
        }
        strongly_connected(&edges).into_iter().filter(|group| group.len() > 1).collect()
    }
}

enum Root {
    Crate,
    /// How many `super::` in a row.
    Super(usize),
}

fn collect(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, into);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            into.push(path);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are module `a::b`; `src/lib.rs` is the root.
fn module_of(src: &Path, path: &Path) -> Module {
    let relative = path.strip_prefix(src).unwrap().with_extension("");
    let mut module: Module = relative.iter().map(|part| part.to_string_lossy().into_owned()).collect();
    if matches!(module.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        module.pop();
    }
    module
}

/// The longest prefix of `path` that is a module with a file: the file that defines the item.
fn defining_file(modules: &BTreeMap<Module, PathBuf>, path: &[String]) -> Option<Module> {
    (0..=path.len()).rev().map(|len| path[..len].to_vec()).find(|prefix| modules.contains_key(prefix))
}

/// Source without `//` comments and without the `#[cfg(test)] mod tests { … }` block (the
/// crate's convention: unit tests last, in one such block).
fn without_tests_and_comments(text: &str) -> String {
    let text = text.find("#[cfg(test)]\nmod tests").map_or(text, |start| &text[..start]);
    text.lines().map(|line| line.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// Every `crate::x::y` and `super::…::x` path: its root and its segments after the root.
fn paths_named(text: &str) -> Vec<(Root, Vec<String>)> {
    let mut found = Vec::new();
    let bytes = text.as_bytes();
    for (start, _) in text.match_indices("::") {
        // Walk back over the first segment before `::` to find a path's beginning.
        let mut begin = start;
        while begin > 0 && (bytes[begin - 1].is_ascii_alphanumeric() || bytes[begin - 1] == b'_') {
            begin -= 1;
        }
        let preceded_by_path = begin >= 2 && &text[begin - 2..begin] == "::";
        let first = &text[begin..start];
        if preceded_by_path || !(first == "crate" || first == "super") {
            continue;
        }
        let rest: Vec<&str> = text[begin..]
            .split("::")
            .map(|segment| segment.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next().unwrap_or(""))
            .take_while(|segment| !segment.is_empty())
            .collect();
        let supers = rest.iter().take_while(|segment| **segment == "super").count();
        let root = if first == "crate" { Root::Crate } else { Root::Super(supers) };
        let skip = if first == "crate" { 1 } else { supers };
        found.push((root, rest[skip..].iter().map(|segment| segment.to_string()).collect()));
    }
    found
}

/// Tarjan's algorithm (recursive: the graphs here have a few dozen nodes).
fn strongly_connected(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        groups: Vec<Vec<String>>,
    }
    fn visit<'a>(walk: &mut Walk<'a>, node: &'a str) {
        let index = walk.index.len();
        walk.index.insert(node, index);
        walk.low.insert(node, index);
        walk.stack.push(node);
        for next in walk.edges.get(node).into_iter().flatten() {
            let next = next.as_str();
            if !walk.index.contains_key(next) {
                visit(walk, next);
                let low = walk.low[node].min(walk.low[next]);
                walk.low.insert(node, low);
            } else if walk.stack.contains(&next) {
                let low = walk.low[node].min(walk.index[next]);
                walk.low.insert(node, low);
            }
        }
        if walk.low[node] == walk.index[node] {
            let mut group = Vec::new();
            while let Some(member) = walk.stack.pop() {
                group.push(member.to_string());
                if member == node {
                    break;
                }
            }
            group.sort();
            walk.groups.push(group);
        }
    }
    let mut walk = Walk { edges, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), groups: Vec::new() };
    for node in edges.keys() {
        if !walk.index.contains_key(node.as_str()) {
            visit(&mut walk, node);
        }
    }
    walk.groups.sort();
    walk.groups
}
