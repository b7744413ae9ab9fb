//! Reading the module graph out of `src/`: which top-level module names which, in code and in
//! `#[cfg(test)]` items, with the first place each edge is seen.
//!
//! A light scanner, not a parser: comments and string and char literals are blanked, then
//! `crate::…` (and, in the binary, `flexrun::…`) paths are read, `{…}` groups included. Paths
//! through the crate root's re-exports (`crate::RunId`) count for the module re-exported.
//! `super::` never leaves a top-level module in this crate, so it is not followed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The binary's node in the graph (`src/main.rs`, which names the library as `flexrun::…`).
pub const BINARY: &str = "main";

/// Where an edge was seen: a file relative to the crate and a 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub file: String,
    pub line: usize,
}

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// The first place a module names another, in code and in test items.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edge {
    pub code: Option<Site>,
    pub tests: Option<Site>,
}

/// One file's code, blanked, with which of its bytes belong to `#[cfg(test)]` items.
pub struct Scanned {
    pub code: String,
    pub in_test: Vec<bool>,
}

impl Scanned {
    pub fn new(text: &str) -> Self {
        let code = blank(text);
        let in_test = test_mask(&code);
        Self { code, in_test }
    }

    fn line(&self, at: usize) -> usize {
        self.code[..at].matches('\n').count() + 1
    }
}

/// The graph of `src/`: the library's top-level modules and the binary, and who names whom.
#[derive(Debug, Default)]
pub struct Graph {
    pub modules: Vec<String>,
    pub edges: BTreeMap<(String, String), Edge>,
    /// Per module, the first place (in code, not tests) each external path root is named.
    pub externals: BTreeMap<String, BTreeMap<String, Site>>,
}

impl Graph {
    /// What `module` imports outside its tests, in name order.
    pub fn imports(&self, module: &str) -> Vec<&str> {
        self.edges
            .iter()
            .filter(|((from, _), e)| from == module && e.code.is_some())
            .map(|((_, to), _)| to.as_str())
            .collect()
    }

    /// What only `module`'s tests import.
    pub fn test_imports(&self, module: &str) -> Vec<&str> {
        self.edges
            .iter()
            .filter(|((from, _), e)| from == module && e.code.is_none())
            .map(|((_, to), _)| to.as_str())
            .collect()
    }

    pub fn code_edge(&self, from: &str, to: &str) -> Option<&Site> {
        self.edges
            .get(&(from.to_owned(), to.to_owned()))?
            .code
            .as_ref()
    }

    /// Records that `from` names `to` at `site`, in a test item or not.
    pub fn add(&mut self, from: &str, to: &str, site: Site, test: bool) {
        if from == to {
            return;
        }
        let edge = self
            .edges
            .entry((from.to_owned(), to.to_owned()))
            .or_default();
        let slot = if test {
            &mut edge.tests
        } else {
            &mut edge.code
        };
        slot.get_or_insert(site);
    }
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// `text` with comments and string and char literals blanked to spaces, newlines kept, and
/// every non-ASCII character turned into a space: one byte per character of `text`, so lines
/// still count, and what is left is code whose brackets and paths can be read.
pub fn blank(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let n = c.len();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut out = String::with_capacity(n);
    let mut i = 0;
    while i < n {
        let start = i;
        if c[i] == '/' && at(i + 1) == '/' {
            while i < n && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < n {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c[i] == '"' {
            i += 1;
            while i < n && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c[i] == 'r'
            && (i == 0 || !ident(c[i - 1]) || (c[i - 1] == 'b' && (i < 2 || !ident(c[i - 2]))))
            && matches!(at(i + 1), '"' | '#')
        {
            let mut j = i + 1;
            while at(j) == '#' {
                j += 1;
            }
            let hashes = j - i - 1;
            if at(j) != '"' {
                out.push('r');
                i += 1;
                continue;
            }
            j += 1;
            while j < n && !(c[j] == '"' && (1..=hashes).all(|h| at(j + h) == '#')) {
                j += 1;
            }
            i = j + 1 + hashes;
        } else if c[i] == '\'' && (at(i + 1) == '\\' || at(i + 2) == '\'') {
            i += if at(i + 1) == '\\' { 3 } else { 2 };
            while i < n && c[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else {
            out.push(if c[i].is_ascii() { c[i] } else { ' ' });
            i += 1;
            continue;
        }
        for &ch in &c[start..i.min(n)] {
            out.push(if ch == '\n' { '\n' } else { ' ' });
        }
        i = i.min(n);
    }
    out
}

/// Which bytes of blanked `code` belong to an item under `#[cfg(test)]` (or
/// `#[cfg(all(test, …))]`): from the attribute to the item's first `;` or the `}` closing its
/// first `{`.
pub fn test_mask(code: &str) -> Vec<bool> {
    let bytes = code.as_bytes();
    let mut mask = vec![false; bytes.len()];
    let mut from = 0;
    let next = |from: usize| {
        ["#[cfg(test)]", "#[cfg(all(test,"]
            .iter()
            .filter_map(|p| code[from..].find(p))
            .min()
    };
    while let Some(found) = next(from) {
        let start = from + found;
        let mut depth = 0usize;
        let mut end = bytes.len();
        for (j, &b) in bytes.iter().enumerate().skip(start) {
            match b {
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' => depth = depth.saturating_sub(1),
                b'}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = j + 1;
                        break;
                    }
                }
                b';' if depth == 0 => {
                    end = j + 1;
                    break;
                }
                _ => {}
            }
        }
        mask[start..end].fill(true);
        from = end;
    }
    mask
}

/// The identifier starting at `at`, if any.
fn ident_at(code: &str, at: usize) -> Option<&str> {
    let len = code.as_bytes()[at..]
        .iter()
        .take_while(|&&b| is_ident(b))
        .count();
    (len > 0).then(|| &code[at..at + len])
}

fn skip_space(code: &str, mut at: usize) -> usize {
    while code.as_bytes().get(at).is_some_and(u8::is_ascii_whitespace) {
        at += 1;
    }
    at
}

/// Every `root::name` of blanked `code` with its offset, `root::{a::…, b}` giving `a` and
/// `b`. `root` must stand alone (`$crate` counts as `crate`, `my_crate` does not).
pub fn paths<'a>(code: &'a str, root: &str) -> Vec<(usize, &'a str)> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    for (start, _) in code.match_indices(root) {
        if start > 0 && is_ident(bytes[start - 1]) {
            continue;
        }
        let mut at = skip_space(code, start + root.len());
        if !code[at..].starts_with("::") {
            continue;
        }
        at = skip_space(code, at + 2);
        if bytes.get(at) != Some(&b'{') {
            if let Some(name) = ident_at(code, at) {
                out.push((start, name));
            }
            continue;
        }
        let (mut depth, mut expect) = (0usize, true);
        while at < bytes.len() {
            match bytes[at] {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                b',' if depth == 1 => expect = true,
                b if expect && depth == 1 && is_ident(b) => {
                    let name = ident_at(code, at).unwrap_or_default();
                    out.push((start, name));
                    expect = false;
                    at += name.len();
                    continue;
                }
                _ => {}
            }
            at += 1;
        }
    }
    out
}

/// The `mod name;` declarations of blanked `code`: the name and whether it is a test item.
fn file_modules(scanned: &Scanned) -> Vec<(String, bool)> {
    let code = &scanned.code;
    let mut out = Vec::new();
    for (start, _) in code.match_indices("mod") {
        if start > 0 && is_ident(code.as_bytes()[start - 1]) {
            continue;
        }
        let at = start + 3;
        if !code.as_bytes().get(at).is_some_and(u8::is_ascii_whitespace) {
            continue;
        }
        let at = skip_space(code, at);
        let Some(name) = ident_at(code, at) else {
            continue;
        };
        if code.as_bytes().get(skip_space(code, at + name.len())) == Some(&b';') {
            out.push((name.to_owned(), scanned.in_test[start]));
        }
    }
    out
}

/// The directory of the modules `file` declares: `src/x/` for `src/x.rs` and `src/x/mod.rs`.
fn child_dir(file: &Path) -> PathBuf {
    let parent = file.parent().expect("a file in a directory");
    match file.file_stem().and_then(|s| s.to_str()) {
        Some("mod" | "lib" | "main") => parent.to_owned(),
        Some(stem) => parent.join(stem),
        None => panic!("{}: no file name", file.display()),
    }
}

fn child_file(file: &Path, name: &str) -> PathBuf {
    let dir = child_dir(file);
    let flat = dir.join(format!("{name}.rs"));
    if flat.exists() {
        flat
    } else {
        dir.join(name).join("mod.rs")
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The files of the module tree under `file`, each with whether it is test-only.
fn tree(file: &Path, test: bool, out: &mut Vec<(PathBuf, bool, Scanned)>) {
    let scanned = Scanned::new(&read(file));
    let children = file_modules(&scanned);
    out.push((file.to_owned(), test, scanned));
    for (name, child_test) in children {
        tree(&child_file(file, &name), test || child_test, out);
    }
}

/// Names `lib.rs` re-exports at the crate root (`pub use engine::{Engine, …};`), each with the
/// module it comes from; a name from another crate maps to `None`.
fn root_exports(lib: &Scanned, modules: &[String]) -> BTreeMap<String, Option<String>> {
    let code = &lib.code;
    let mut depth = vec![0usize; code.len()];
    let mut d = 0usize;
    for (i, b) in code.bytes().enumerate() {
        if b == b'}' {
            d -= 1;
        }
        depth[i] = d;
        if b == b'{' {
            d += 1;
        }
    }
    let mut out = BTreeMap::new();
    for (start, _) in code.match_indices("pub use ") {
        if depth[start] != 0 {
            continue;
        }
        let end = start + code[start..].find(';').expect("`;` after `pub use`");
        let item: String = code[start + 8..end].split_whitespace().collect();
        let (from, names) = item.split_once("::").expect("`pub use a::b`");
        let from = modules.iter().any(|m| m == from).then(|| from.to_owned());
        let names = names.trim_start_matches('{').trim_end_matches('}');
        for name in names.split(',').filter(|n| !n.is_empty()) {
            out.insert(name.to_owned(), from.clone());
        }
    }
    out
}

/// Scans the crate at `root`: the modules `src/lib.rs` declares, the binary `src/main.rs`,
/// and every `crate::` / `flexrun::` path of theirs; `externals` lists path roots to record.
pub fn scan(root: &Path, externals: &[&str]) -> Graph {
    let src = root.join("src");
    let lib = Scanned::new(&read(&src.join("lib.rs")));
    let modules: Vec<String> = file_modules(&lib)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let exports = root_exports(&lib, &modules);
    let mut graph = Graph {
        modules: modules.clone(),
        ..Graph::default()
    };
    graph.modules.push(BINARY.to_owned());

    let mut seen = BTreeSet::new();
    let mut files = Vec::new();
    for module in &modules {
        let mut found = Vec::new();
        tree(&child_file(&src.join("lib.rs"), module), false, &mut found);
        files.extend(found.into_iter().map(|f| (module.clone(), f)));
    }
    // The binary: src/main.rs and the modules it declares (src/verify.rs, …).
    let mut found = Vec::new();
    tree(&src.join("main.rs"), false, &mut found);
    files.extend(found.into_iter().map(|f| (BINARY.to_owned(), f)));

    for (module, (path, test_file, scanned)) in &files {
        let file = path
            .strip_prefix(root)
            .unwrap_or(path)
            .display()
            .to_string();
        assert!(seen.insert(file.clone()), "{file} is reached twice");
        let (prefix, rest) = if module == BINARY {
            ("flexrun", "lib")
        } else {
            ("crate", "crate root")
        };
        for (at, name) in paths(&scanned.code, prefix) {
            let site = Site {
                file: file.clone(),
                line: scanned.line(at),
            };
            let target = if modules.iter().any(|m| m == name) {
                Some(name.to_owned())
            } else {
                match exports.get(name) {
                    Some(from) => from.clone(),
                    None => panic!("{site}: `{prefix}::{name}` names nothing of the {rest}"),
                }
            };
            if let Some(target) = target {
                graph.add(module, &target, site, *test_file || scanned.in_test[at]);
            }
        }
        for external in externals {
            let root_name = external.split("::").next().unwrap_or(external);
            let wanted = external.split("::").nth(1);
            for (at, name) in paths(&scanned.code, root_name) {
                if *test_file || scanned.in_test[at] || wanted.is_some_and(|w| w != name) {
                    continue;
                }
                let site = Site {
                    file: file.clone(),
                    line: scanned.line(at),
                };
                let per_module = graph.externals.entry(module.clone()).or_default();
                per_module.entry((*external).to_owned()).or_insert(site);
            }
        }
    }
    let on_disk = rust_files(&src);
    let missed: Vec<&String> = on_disk
        .iter()
        .filter(|f| !seen.contains(*f) && !f.ends_with("src/lib.rs"))
        .collect();
    assert!(missed.is_empty(), "not reached from src/lib.rs: {missed:?}");
    graph
}

fn rust_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    let root = dir.parent().expect("src/ in a crate");
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out
}
