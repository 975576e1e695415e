//! The module graph keeps its shape: the crate's top-level modules in layers that only look
//! down, the harness's stages in the order the data flows, and no cycle among the files of one
//! folder. The rules are data here ([`LAYERS`], [`HARNESS_STAGES`]); src/lib.rs and
//! src/harness/mod.rs say the same in words.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crate's top-level modules from the bottom up. A module uses only modules of lower layers
/// (and itself); modules of one layer do not use each other.
const LAYERS: &[&[&str]] = &[
    &["error", "metrics"],
    &["paths"],
    &["portable"],
    &["torch"],
    &["env", "models", "schedulers", "tokenizer"],
    &["loading"],
    &["pipelines"],
    &["harness"],
    &["cli"],
];

/// The harness's parts in the order the data flows (src/harness/mod.rs): a part uses only the
/// parts before it. The commands at the end put the stages together.
const HARNESS_STAGES: &[&[&str]] = &[
    &["store"],
    &["suite"],
    &["run"],
    &["compare"],
    &["records", "run_record"],
    &["report", "own_record"],
    &["golden"],
    &["session"],
    &["oneoff", "localize"],
];

/// One source file: its module path (`harness::check` for src/harness/check.rs) and the
/// `crate::` and `super::` paths its code (not its comments, not its unit tests) names.
struct Source {
    file: PathBuf,
    module: Vec<String>,
    is_folder_root: bool,
    crate_paths: Vec<Vec<String>>,
    super_names: Vec<String>,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            // The kernels are a crate of their own, with no path into this one.
            if path.file_name().is_some_and(|n| n != "kernels") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comment lines and without the unit tests at its end.
fn code(text: &str) -> String {
    let text = text.find("\n#[cfg(test)]").map_or(text, |i| &text[..i]);
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_path(s: &str) -> Vec<String> {
    s.split("::")
        .map(|seg| {
            seg.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .take_while(|seg| !seg.is_empty())
        .collect()
}

/// Every path after `crate::`, with `crate::{a, b::c}` read as `a` and `b::c`.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut item, mut end) = (0, String::new(), false);
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => end = true,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(ident_path(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if end {
                    break;
                }
                item.push(c);
            }
            out.push(ident_path(item.trim()));
        } else {
            out.push(ident_path(rest));
        }
    }
    // `crate::Result` and `crate::Error` are the error module's, re-exported at the root.
    for p in &mut out {
        if p.first().is_some_and(|s| s == "Result" || s == "Error") {
            *p = vec!["error".to_string()];
        }
    }
    out.retain(|p| !p.is_empty());
    out
}

fn super_names(code: &str) -> Vec<String> {
    code.match_indices("super::")
        .filter(|(i, _)| {
            let before = code[..*i].chars().next_back();
            !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        })
        .map(|(i, _)| ident_path(&code[i + "super::".len()..]))
        .filter_map(|p| p.into_iter().next())
        .collect()
}

fn sources() -> Vec<Source> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n != "main.rs"))
        .map(|file| {
            let rel = file.strip_prefix(&src).unwrap().with_extension("");
            let mut module: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let is_folder_root = matches!(module.last().map(String::as_str), Some("mod" | "lib"));
            if is_folder_root {
                module.pop();
            }
            let code = code(&std::fs::read_to_string(&file).unwrap());
            Source {
                crate_paths: crate_paths(&code),
                super_names: super_names(&code),
                file,
                module,
                is_folder_root,
            }
        })
        .collect()
}

fn rank(layers: &[&[&str]], name: &str) -> Option<usize> {
    layers.iter().position(|layer| layer.contains(&name))
}

/// Uses that break `layers` among the children of `parent` (a module path), as
/// "file: from -> to" lines.
fn back_edges(sources: &[Source], parent: &[&str], layers: &[&[&str]]) -> Vec<String> {
    let depth = parent.len();
    let mut bad = BTreeSet::new();
    for s in sources {
        if s.module.len() <= depth || s.module[..depth] != *parent {
            continue;
        }
        let from = s.module[depth].as_str();
        let Some(from_rank) = rank(layers, from) else {
            bad.insert(format!(
                "{}: module `{from}` is in no layer of the rule",
                s.file.display()
            ));
            continue;
        };
        for path in &s.crate_paths {
            if path.len() <= depth || path[..depth] != *parent || path[depth] == from {
                continue;
            }
            let to = path[depth].as_str();
            match rank(layers, to) {
                Some(r) if r < from_rank => {}
                _ => {
                    bad.insert(format!("{}: {from} -> {to}", s.file.display()));
                }
            }
        }
    }
    bad.into_iter().collect()
}

#[test]
fn top_level_modules_only_use_the_layers_below_them() {
    let bad = back_edges(&sources(), &[], LAYERS);
    assert!(
        bad.is_empty(),
        "uses against the layers:\n{}",
        bad.join("\n")
    );
}

#[test]
fn harness_stages_only_use_the_stages_before_them() {
    let bad = back_edges(&sources(), &["harness"], HARNESS_STAGES);
    assert!(
        bad.is_empty(),
        "uses against the stages:\n{}",
        bad.join("\n")
    );
}

/// Which files of one folder use which others: `crate::a::b::x` or `super::x` from a file
/// `a::b::y`, where `x` is another file (or folder) of `a::b`.
fn sibling_graph(sources: &[Source]) -> BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> {
    let mut children: BTreeMap<Vec<String>, BTreeSet<String>> = BTreeMap::new();
    for s in sources {
        if let Some((name, parent)) = s.module.split_last() {
            children
                .entry(parent.to_vec())
                .or_default()
                .insert(name.clone());
        }
    }
    let mut graph: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for s in sources {
        let Some((me, parent)) = s.module.split_last() else {
            continue;
        };
        let siblings = &children[parent];
        // super:: from a folder's mod.rs names the folder's parent's items, not siblings.
        let by_super = (!s.is_folder_root)
            .then_some(&s.super_names)
            .into_iter()
            .flatten();
        let by_crate = s
            .crate_paths
            .iter()
            .filter(|p| p.len() > parent.len() && p[..parent.len()] == *parent)
            .map(|p| &p[parent.len()]);
        for to in by_super.chain(by_crate) {
            if to != me && siblings.contains(to) {
                graph
                    .entry(parent.to_vec())
                    .or_default()
                    .entry(me.clone())
                    .or_default()
                    .insert(to.clone());
            }
        }
    }
    graph
}

fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|n| visit(n, edges, &mut Vec::new(), &mut done))
}

#[test]
fn no_folder_has_a_cycle_among_its_files() {
    let graph = sibling_graph(&sources());
    let cycles: Vec<String> = graph
        .iter()
        .filter_map(|(parent, edges)| {
            find_cycle(edges).map(|c| format!("src/{}: {}", parent.join("/"), c.join(" -> ")))
        })
        .collect();
    assert!(cycles.is_empty(), "cycles:\n{}", cycles.join("\n"));
}

/// The checker reads uses as the compiler does: grouped imports, `super::` between files, and
/// not comments or unit tests; and on the real tree it finds the edges everyone knows are there
/// (so the rules above cannot pass by reading nothing).
#[test]
fn the_module_rule_reads_the_uses_the_compiler_sees() {
    let code = code(
        "use crate::{torch::{DType, Generator}, harness};\n// crate::pipelines in a comment\n\
         let x = super::sibling::f();\n#[cfg(test)]\nmod tests { use crate::env; }",
    );
    let p = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(crate_paths(&code), vec![p(&["torch"]), p(&["harness"])]);
    assert_eq!(super_names(&code), vec!["sibling".to_string()]);

    let sources = sources();
    let uses = |from: &[&str], to: &[&str]| {
        sources
            .iter()
            .any(|s| s.module == p(from) && s.crate_paths.iter().any(|c| c.starts_with(&p(to))))
    };
    assert!(uses(&["harness", "session"], &["harness", "compare"]));
    assert!(uses(&["pipelines", "ddim"], &["models"]));
    let graph = sibling_graph(&sources);
    assert!(graph[&p(&["models"])]["derived"].contains("params"));
}
