//! The library's modules import each other one way only: no circle of imports,
//! and the layers in order, handlers -> domain -> adapters -> foundation (a
//! module may also use its own layer's other modules, never in a circle).
//!
//! Read from the sources: every `crate::...` and `super::...` path outside
//! comments (in `use` items and inline, brace groups expanded) names the module
//! it reaches, the longest module prefix of the path. Checked at three
//! levels: files, rooms (a file or folder directly under a layer) and layers.
//! A parent module's re-exports of its children (`pub use child::X`) are
//! relative paths and not counted: a folder is one room, which its `mod.rs`
//! opens.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, top first: each may import from the ones after it.
const LAYERS: [&str; 4] = ["handlers", "domain", "adapters", "foundation"];

type Module = Vec<String>;

/// Who imports whom, and the paths that tie each pair.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

struct Source {
    file: String,
    module: Module,
    code: String,
}

#[test]
fn the_modules_import_each_other_without_a_circle_and_layers_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let sources = read_sources(&src);
    let problems = check(&sources);
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// What is wrong with the imports of these sources, one line per problem
/// (empty when nothing is).
fn check(sources: &[Source]) -> Vec<String> {
    let modules: BTreeSet<Module> = sources.iter().map(|s| s.module.clone()).collect();
    let mut problems = Vec::new();
    let layers: BTreeSet<&str> = modules
        .iter()
        .filter_map(|m| m.first().map(String::as_str))
        .collect();
    if layers != BTreeSet::from(LAYERS) {
        problems.push(format!(
            "the top-level modules of shared/src are {layers:?}, not the layers {LAYERS:?}"
        ));
    }

    let (mut files, mut rooms, mut layer_graph) = (Graph::new(), Graph::new(), Graph::new());
    for source in sources {
        for path in paths(&source.code, &source.module) {
            let target = resolve(&path, &modules);
            if target.is_empty() {
                problems.push(format!(
                    "{}: `{}` reaches through the crate root; name the module's own path",
                    source.file,
                    path.join("::")
                ));
                continue;
            }
            if target == source.module || source.module.is_empty() {
                continue;
            }
            let named = format!("crate::{}", path.join("::"));
            let tie = |graph: &mut Graph, from: String, to: String| {
                if from != to {
                    graph
                        .entry(from)
                        .or_default()
                        .entry(to)
                        .or_default()
                        .insert(named.clone());
                }
            };
            tie(&mut files, source.file.clone(), file_of(&target, sources));
            tie(&mut rooms, room(&source.module), room(&target));
            tie(
                &mut layer_graph,
                source.module[0].clone(),
                target[0].clone(),
            );
        }
    }

    for (level, graph) in [
        ("files", &files),
        ("rooms", &rooms),
        ("layers", &layer_graph),
    ] {
        for circle in circles(graph) {
            problems.push(format!(
                "a circle of imports between {level}: {}",
                describe(&circle, graph)
            ));
        }
    }
    let rank = |layer: &str| LAYERS.iter().position(|l| *l == layer);
    for (from, targets) in &layer_graph {
        for (to, names) in targets {
            if let (Some(a), Some(b)) = (rank(from), rank(to)) {
                if a > b {
                    problems.push(format!(
                        "{from} imports from {to}, a layer above it: {}",
                        names.iter().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
    }
    problems
}

fn read_sources(src: &Path) -> Vec<Source> {
    let mut files = Vec::new();
    walk(src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let relative = path.strip_prefix(src).expect("under src");
            let mut module: Module = relative
                .iter()
                .map(|part| part.to_string_lossy().trim_end_matches(".rs").to_owned())
                .collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                module.pop();
            }
            let code = std::fs::read_to_string(&path).expect("readable source");
            Source {
                file: format!("shared/src/{}", relative.display()),
                module,
                code: strip_comments(&code),
            }
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code without its comments (doc comments included) and string literals,
/// so a path mentioned in prose or in a string is not an import.
fn strip_comments(code: &str) -> String {
    let bytes = code.as_bytes();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &code[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            let mut depth = 0;
            let mut j = 0;
            while j < rest.len() {
                if rest[j..].starts_with("/*") {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with("*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            i += j;
        } else if let Some(hashes) = raw_string_start(rest) {
            let end = format!("\"{}", "#".repeat(hashes));
            let body = 2 + hashes;
            i += body
                + rest[body..]
                    .find(&end)
                    .map_or(rest.len() - body, |e| e + end.len());
            out.push_str("\"\"");
        } else if rest.starts_with('"') && !code[..i].ends_with('\'') {
            let mut j = 1;
            while j < rest.len() && rest.as_bytes()[j] != b'"' {
                j += if rest.as_bytes()[j] == b'\\' { 2 } else { 1 };
            }
            i += (j + 1).min(rest.len());
            out.push_str("\"\"");
        } else {
            let c = rest.chars().next().expect("not at the end");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The number of `#` of a raw string starting here (`r"`, `r#"`, `br#"`...).
fn raw_string_start(rest: &str) -> Option<usize> {
    let rest = rest.strip_prefix('b').unwrap_or(rest);
    let after_r = rest.strip_prefix('r')?;
    let hashes = after_r.chars().take_while(|c| *c == '#').count();
    after_r[hashes..].starts_with('"').then_some(hashes)
}

/// Every path starting with `crate::` or `super::` in `code`, absolute (without
/// `crate`), brace groups expanded: `crate::a::{b, c::D}` is `a::b` and `a::c::D`.
/// `super` inside an inline module (`mod tests { use super::*; }`) is that
/// module's parent.
fn paths(code: &str, module: &Module) -> Vec<Module> {
    let inline = inline_modules(code);
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start).map(|p| p + from) {
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let base: Module = if start == "crate::" {
                Vec::new()
            } else {
                let mut here = module.clone();
                here.extend(
                    inline
                        .iter()
                        .filter(|(_, open, close)| (*open..*close).contains(&at))
                        .map(|(name, _, _)| name.clone()),
                );
                here[..here.len().saturating_sub(1)].to_vec()
            };
            let mut rest = &code[from..];
            tree(&mut rest, base, &mut found);
        }
    }
    found
}

/// The inline modules of `code` (`mod name { ... }`): name and byte span, outer
/// ones first.
fn inline_modules(code: &str) -> Vec<(String, usize, usize)> {
    let bytes = code.as_bytes();
    let mut spans = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("mod ").map(|p| p + from) {
        from = at + 4;
        if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
            continue;
        }
        let rest = code[from..].trim_start();
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let after = rest[name.len()..].trim_start();
        if name.is_empty() || !after.starts_with('{') {
            continue;
        }
        let open = code.len() - after.len();
        let mut depth = 0;
        let mut close = code.len();
        for (i, b) in bytes.iter().enumerate().skip(open) {
            match b {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        spans.push((name, open, close));
    }
    spans
}

/// Reads one use-tree (`a::b`, `a::{b, c::d}`, `a::*`) from `rest`.
fn tree(rest: &mut &str, mut prefix: Module, found: &mut Vec<Module>) {
    loop {
        *rest = rest.trim_start();
        if let Some(inner) = rest.strip_prefix('{') {
            *rest = inner;
            loop {
                *rest = rest.trim_start();
                if let Some(after) = rest.strip_prefix('}') {
                    *rest = after;
                    return;
                }
                if let Some(after) = rest.strip_prefix(',') {
                    *rest = after;
                    continue;
                }
                let before = rest.len();
                tree(rest, prefix.clone(), found);
                if rest.len() == before {
                    return;
                }
            }
        }
        let ident: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if ident.is_empty() || ident == "self" {
            *rest = &rest[ident.len()..];
            found.push(prefix);
            return;
        }
        *rest = &rest[ident.len()..];
        if ident == "super" {
            prefix.pop();
        } else {
            prefix.push(ident);
        }
        match rest.strip_prefix("::") {
            Some(after) => *rest = after,
            None => {
                found.push(prefix);
                return;
            }
        }
    }
}

/// The module a path reaches: its longest prefix that is a module.
fn resolve(path: &Module, modules: &BTreeSet<Module>) -> Module {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|prefix| modules.contains(prefix))
        .unwrap_or_default()
}

/// The room of a module: the file or folder directly under its layer (a layer's
/// own `mod.rs` is the layer).
fn room(module: &Module) -> String {
    module[..module.len().min(2)].join("::")
}

fn file_of(module: &Module, sources: &[Source]) -> String {
    sources
        .iter()
        .find(|s| &s.module == module)
        .map_or_else(|| module.join("::"), |s| s.file.clone())
}

/// The circles of a graph: its strongly connected components of more than one
/// node (Tarjan's algorithm), each as its nodes in order.
fn circles(graph: &Graph) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, node: &'g str) {
            let n = self.index.len();
            self.index.insert(node, n);
            self.low.insert(node, n);
            self.stack.push(node);
            for next in self.graph.get(node).into_iter().flat_map(|t| t.keys()) {
                let next = next.as_str();
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.stack.contains(&next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let at = self
                    .stack
                    .iter()
                    .rposition(|n| *n == node)
                    .expect("on the stack");
                let component: Vec<String> = self.stack.drain(at..).map(str::to_owned).collect();
                if component.len() > 1 {
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !walk.index.contains_key(node.as_str()) {
            walk.visit(node);
        }
    }
    walk.found
}

/// The members of a circle and, for each import between them, the paths used.
fn describe(circle: &[String], graph: &Graph) -> String {
    let mut out = circle.join(", ");
    for from in circle {
        for (to, names) in graph.get(from).into_iter().flatten() {
            if circle.contains(to) {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                out.push_str(&format!("\n    {from} -> {to}: {}", names.join(", ")));
            }
        }
    }
    out
}

#[cfg(test)]
mod reading {
    use super::*;

    fn source(file: &str, module: &[&str], code: &str) -> Source {
        Source {
            file: file.to_owned(),
            module: module.iter().map(|s| (*s).to_owned()).collect(),
            code: strip_comments(code),
        }
    }

    #[test]
    fn paths_expand_groups_and_resolve_super() {
        let module: Module = vec!["domain".into(), "live".into(), "slot".into()];
        let code = "use crate::adapters::{api::{self, ResponseBody}, store::Store};\n\
                    use super::settle::settle;\nlet x = crate::foundation::time_fmt::now();";
        let got: Vec<String> = paths(&strip_comments(code), &module)
            .iter()
            .map(|p| p.join("::"))
            .collect();
        assert_eq!(
            got,
            [
                "adapters::api",
                "adapters::api::ResponseBody",
                "adapters::store::Store",
                "foundation::time_fmt::now",
                "domain::live::settle::settle",
            ]
        );
    }

    #[test]
    fn super_in_an_inline_module_is_its_parent() {
        let module: Module = vec!["domain".into(), "limits".into()];
        let code = "use super::live;\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n";
        let got: Vec<String> = paths(&strip_comments(code), &module)
            .iter()
            .map(|p| p.join("::"))
            .collect();
        assert_eq!(got, ["domain::live", "domain::limits"]);
    }

    #[test]
    fn comments_and_strings_are_not_imports() {
        let code = "//! see [`crate::handlers`]\n/* crate::domain */ let s = \"crate::domain\";\n\
                    let r = r#\"crate::domain\"#; let c = '\"'; use crate::foundation::error;";
        let got = paths(&strip_comments(code), &vec!["adapters".into()]);
        assert_eq!(got, [vec!["foundation".to_owned(), "error".to_owned()]]);
    }

    #[test]
    fn a_circle_and_an_upward_import_are_named() {
        let sources = [
            source(
                "h.rs",
                &["handlers", "send"],
                "use crate::domain::answer::run;",
            ),
            source(
                "a.rs",
                &["domain", "answer"],
                "use crate::domain::limits::admit;",
            ),
            source(
                "l.rs",
                &["domain", "limits"],
                "use crate::domain::answer::Job; use crate::adapters::store::Store;",
            ),
            source(
                "s.rs",
                &["adapters", "store"],
                "use crate::domain::limits::X;",
            ),
            source("c.rs", &["foundation", "config"], ""),
        ];
        let problems = check(&sources).join("\n");
        assert!(
            problems.contains("a circle of imports between files: a.rs, l.rs"),
            "{problems}"
        );
        assert!(
            problems.contains("a.rs -> l.rs: crate::domain::limits::admit"),
            "{problems}"
        );
        assert!(
            problems.contains("adapters imports from domain, a layer above it"),
            "{problems}"
        );
        assert!(
            problems.contains("a circle of imports between layers"),
            "{problems}"
        );
    }
}
