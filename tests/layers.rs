//! The modules form layers, and every `crate::` path in the node's code flows down them
//! (docs/architecture.md, "Layers"): leaves → engine → journal → node → api/ws/http/postgres →
//! server. A module that names one above it, or two that name each other, fail this test, with
//! the file and line of each offending path. Test code (`#[cfg(test)]`) may reach further.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module of `src/` and its layer: a module may name modules of lower layers, and
/// modules of its own layer as long as no cycle forms.
const LAYERS: &[(&str, u8)] = &[
    // Leaves: they name no other module of the crate but each other.
    ("alloc", 0),
    ("auth", 0),
    ("clock", 0),
    ("cores", 0),
    ("fixed", 0),
    ("json", 0),
    ("metrics", 0),
    ("notify", 0),
    ("rate_limit", 0),
    ("shutdown", 0),
    ("time", 0),
    ("tls", 0),
    // The sans-I/O engine, with its venue port.
    ("engine", 1),
    // What builds on the engine alone.
    ("journal", 2),
    ("venue", 2),
    ("quote_sim", 2),
    // Settings and error answers, over the journal's and the engine's types.
    ("config", 3),
    ("error", 3),
    // The hot core's state and the request life cycle.
    ("node", 4),
    // What serves the node to the outside, and follows it.
    ("api", 5),
    ("cluster", 5),
    ("history", 5),
    ("http", 5),
    ("postgres", 5),
    ("venue_link", 5),
    ("ws", 5),
    // Start-up and the command line.
    ("server", 6),
    ("tune", 6),
];

fn layer(module: &str) -> u8 {
    LAYERS
        .iter()
        .find(|(m, _)| *m == module)
        .map(|(_, l)| *l)
        .unwrap_or_else(|| panic!("module `{module}` has no layer: add it to LAYERS and docs/architecture.md"))
}

/// A `crate::` path found in the code: where, and the module it names.
#[derive(Debug, Clone)]
struct Use {
    file: PathBuf,
    line: usize,
    to: String,
}

/// The top-level module a file of `src/` belongs to (`None`: the crate root, `main.rs`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" => None,
        f => Some(f.trim_end_matches(".rs").to_string()),
    }
}

/// The lines of `text` that are not test code: `#[cfg(test)]` items (a module, with its braces,
/// or a module in a file of its own, whose name goes into `test_files`) are blanked.
fn without_tests(text: &str, test_files: &mut BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() != "#[cfg(test)]" {
            out.push(line.to_string());
            continue;
        }
        out.push(String::new());
        let Some(item) = lines.next() else { break };
        out.push(String::new());
        let item = item.trim();
        if let Some(name) = item.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
            test_files.insert(name.to_string());
            continue;
        }
        let mut depth = item.matches('{').count() as i64 - item.matches('}').count() as i64;
        while depth > 0 {
            let Some(l) = lines.next() else { break };
            depth += l.matches('{').count() as i64 - l.matches('}').count() as i64;
            out.push(String::new());
        }
    }
    out
}

/// Every `crate::` path in the non-test code of `src/`, by the module whose file holds it.
fn uses(src: &Path) -> BTreeMap<String, Vec<Use>> {
    let mut files = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    files.sort();
    // Files declared as test modules are skipped whole.
    let mut test_files = BTreeSet::new();
    let mut texts = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        texts.push((f.clone(), without_tests(&text, &mut test_files)));
    }
    let mut out: BTreeMap<String, Vec<Use>> = BTreeMap::new();
    for (file, lines) in texts {
        let stem = file.file_stem().unwrap().to_str().unwrap().to_string();
        if test_files.contains(&stem) && stem != "mod" {
            continue;
        }
        let Some(from) = module_of(src, &file) else { continue };
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let mut rest = code;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + "crate::".len()..];
                let to: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !to.is_empty() && to != from {
                    out.entry(from.clone()).or_default().push(Use { file: file.clone(), line: i + 1, to });
                }
            }
        }
    }
    out
}

/// The cycles among `modules` (strongly connected components of more than one module).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Kosaraju: finish order on the graph, then components on the reversed graph.
    fn visit(
        v: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(v.to_string()) {
            return;
        }
        for w in edges.get(v).into_iter().flatten() {
            visit(w, edges, seen, order);
        }
        order.push(v.to_string());
    }
    let nodes: BTreeSet<String> = edges.keys().chain(edges.values().flatten()).cloned().collect();
    let (mut seen, mut order) = (BTreeSet::new(), Vec::new());
    for v in &nodes {
        visit(v, edges, &mut seen, &mut order);
    }
    let mut reversed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in edges {
        for to in tos {
            reversed.entry(to.clone()).or_default().insert(from.clone());
        }
    }
    let mut assigned = BTreeSet::new();
    let mut out = Vec::new();
    for v in order.iter().rev() {
        if assigned.contains(v) {
            continue;
        }
        let mut component = Vec::new();
        visit(v, &reversed, &mut assigned, &mut component);
        if component.len() > 1 {
            component.sort();
            out.push(component);
        }
    }
    out
}

#[test]
fn every_module_names_only_modules_below_it_and_none_names_another_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let uses = uses(&src);
    let mut wrong = Vec::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, list) in &uses {
        for u in list {
            edges.entry(from.clone()).or_default().insert(u.to.clone());
            if layer(&u.to) > layer(from) {
                wrong.push(format!(
                    "{}:{}: `{from}` (layer {}) names `{}` (layer {})",
                    u.file.display(),
                    u.line,
                    layer(from),
                    u.to,
                    layer(&u.to)
                ));
            }
        }
    }
    for cycle in cycles(&edges) {
        let mut at = Vec::new();
        for from in &cycle {
            for u in uses.get(from).into_iter().flatten().filter(|u| cycle.contains(&u.to)) {
                at.push(format!("{}:{} ({from} → {})", u.file.display(), u.line, u.to));
            }
        }
        wrong.push(format!("a cycle among {cycle:?}: {}", at.join(", ")));
    }
    assert!(wrong.is_empty(), "the layers do not hold:\n{}", wrong.join("\n"));
    // A guard against a check that cannot fail: the node does name the journal and the engine.
    assert!(edges["node"].contains("journal") && edges["journal"].contains("engine"), "{edges:?}");
}

#[test]
fn a_cycle_or_an_upward_path_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("journal")).unwrap();
    std::fs::write(
        src.join("journal/mod.rs"),
        "use crate::node::Node;\n#[cfg(test)]\nmod tests {\n    use crate::server::x;\n}\n",
    )
    .unwrap();
    std::fs::write(src.join("node.rs"), "//! see crate::api\nuse crate::journal::Journal;\n").unwrap();
    let uses = uses(src);
    assert_eq!(uses["journal"].len(), 1, "test code and comments are left out: {uses:?}");
    assert_eq!((uses["journal"][0].to.as_str(), uses["journal"][0].line), ("node", 1));
    let edges: BTreeMap<String, BTreeSet<String>> =
        uses.iter().map(|(from, l)| (from.clone(), l.iter().map(|u| u.to.clone()).collect())).collect();
    assert_eq!(cycles(&edges), vec![vec!["journal".to_string(), "node".to_string()]]);
    assert!(layer("node") > layer("journal"), "journal → node goes up");
}
