//! The module graph drawn in docs/ARCHITECTURE.md is the one the code has, and the layering
//! rule it states holds: derived from the `crate::…` paths of every top-level module of `src/`
//! (and the binary's `flexrun::…` paths), compared with the generated block, then checked.
//!
//! `UPDATE_DOCS=1 cargo test --test engine modules` rewrites the block from the sources.

mod scan;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use scan::{BINARY, Graph, Scanned, Site, paths, scan};

/// The modules that perform no effects: no runtime, no store, no network, no files. They import
/// only each other and name none of [`EFFECTS`] outside their tests.
const PURE: &[&str] = &[
    "catalog",
    "diagnostics",
    "envelope",
    "fsm",
    "graph",
    "hitl",
    "ids",
    "policy",
    "validate",
    "webhook",
];

/// Path roots that mean effects: async runtime, HTTP, the database, files, sockets, processes,
/// threads and the environment.
const EFFECTS: &[&str] = &[
    "tokio",
    "axum",
    "tower_http",
    "reqwest",
    "redb",
    "std::env",
    "std::fs",
    "std::net",
    "std::process",
    "std::thread",
];

const BEGIN: &str = "<!-- generated:modules begin -->\n";
const END: &str = "<!-- generated:modules end -->";

fn crate_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn pure(module: &str) -> bool {
    PURE.contains(&module)
}

fn layer(module: &str) -> &'static str {
    if module == BINARY {
        "binary"
    } else if pure(module) {
        "pure"
    } else {
        "effects"
    }
}

fn names(modules: &[&str]) -> String {
    if modules.is_empty() {
        return "—".to_owned();
    }
    let quoted: Vec<String> = modules.iter().map(|m| format!("`{m}`")).collect();
    quoted.join(", ")
}

/// The generated block: a Mermaid flowchart of the code edges (pure layers boxed) and a table
/// of each module's imports, what only its tests import and which [`EFFECTS`] it names.
fn render(graph: &Graph) -> String {
    let mut out = String::from("```mermaid\nflowchart TD\n");
    out.push_str("    subgraph pure [\"pure layers\"]\n");
    for module in graph.modules.iter().filter(|m| pure(m)) {
        writeln!(out, "        m_{module}[\"{module}\"]").unwrap();
    }
    out.push_str("    end\n");
    for module in graph.modules.iter().filter(|m| !pure(m)) {
        writeln!(out, "    m_{module}[\"{module}\"]").unwrap();
    }
    for module in &graph.modules {
        for to in graph.imports(module) {
            writeln!(out, "    m_{module} --> m_{to}").unwrap();
        }
    }
    out.push_str(
        "```\n\n| module | layer | imports | its tests also import | effects it names |\n\
         |---|---|---|---|---|\n",
    );
    for module in &graph.modules {
        let effects: Vec<&str> = graph
            .externals
            .get(module)
            .map(|found| found.keys().map(String::as_str).collect())
            .unwrap_or_default();
        writeln!(
            out,
            "| `{module}` | {} | {} | {} | {} |",
            layer(module),
            names(&graph.imports(module)),
            names(&graph.test_imports(module)),
            names(&effects),
        )
        .unwrap();
    }
    out
}

/// The layering rule: a pure module imports only pure modules, and no module imports itself
/// through others (the whole graph, pure layers included, is acyclic). Test items are not
/// counted. The error names the offending edge and where it is.
fn check_layers(graph: &Graph) -> Result<(), String> {
    for from in graph.modules.iter().filter(|m| pure(m)) {
        for to in graph.imports(from) {
            if !pure(to) {
                let site = graph.code_edge(from, to).expect("a code edge");
                return Err(format!(
                    "`{from}` is a pure layer but imports `{to}`, which is not ({site})"
                ));
            }
        }
    }
    let mut done = BTreeMap::new();
    for start in &graph.modules {
        let mut stack = vec![start.as_str()];
        cycle_from(graph, start, &mut stack, &mut done)?;
    }
    Ok(())
}

/// Depth-first search from `module` (on top of `stack`); `done` marks finished modules.
fn cycle_from<'g>(
    graph: &'g Graph,
    module: &'g str,
    stack: &mut Vec<&'g str>,
    done: &mut BTreeMap<&'g str, ()>,
) -> Result<(), String> {
    if done.contains_key(module) {
        return Ok(());
    }
    for to in graph.imports(module) {
        if let Some(at) = stack.iter().position(|m| *m == to) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(to);
            let site = graph.code_edge(module, to).expect("a code edge");
            return Err(format!(
                "the module graph has a cycle {}: the edge `{module}` → `{to}` ({site}) closes it",
                cycle.join(" → ")
            ));
        }
        stack.push(to);
        cycle_from(graph, to, stack, done)?;
        stack.pop();
    }
    done.insert(module, ());
    Ok(())
}

/// Pure modules name no path of [`EFFECTS`] outside their tests.
fn check_effects(graph: &Graph) -> Result<(), String> {
    for (module, found) in graph.externals.iter().filter(|(m, _)| pure(m)) {
        if let Some((name, site)) = found.iter().next() {
            return Err(format!(
                "`{module}` is a pure layer but names `{name}::` ({site})"
            ));
        }
    }
    Ok(())
}

fn sources() -> Graph {
    scan(crate_root(), EFFECTS)
}

#[test]
fn architecture_module_graph_is_generated_from_the_sources() {
    let path = crate_root().join("docs").join("ARCHITECTURE.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.find(BEGIN).expect("begin marker") + BEGIN.len();
    let end = text.find(END).expect("end marker");
    let generated = render(&sources());
    if std::env::var_os("UPDATE_DOCS").is_some() {
        let updated = format!("{}{generated}{}", &text[..start], &text[end..]);
        let tmp = path.with_extension("md.tmp");
        std::fs::write(&tmp, updated).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        return;
    }
    let documented = &text[start..end];
    if documented != generated {
        let (line, doc, code) = documented
            .lines()
            .map(Some)
            .chain(std::iter::repeat(None))
            .zip(generated.lines().map(Some).chain(std::iter::repeat(None)))
            .enumerate()
            .find(|(_, (d, c))| d != c)
            .map(|(i, (d, c))| (i + 1, d.unwrap_or("(end)"), c.unwrap_or("(end)")))
            .expect("a differing line");
        panic!(
            "the module block of docs/ARCHITECTURE.md drifts from src/ at its line {line}:\n  \
             docs: {doc}\n   src: {code}\nregenerate with `UPDATE_DOCS=1 cargo test --test engine modules`"
        );
    }
}

#[test]
fn pure_layers_import_only_each_other_and_nothing_imports_itself() {
    let graph = sources();
    for module in PURE {
        assert!(
            graph.modules.iter().any(|m| m == module),
            "`{module}` is listed as pure but src/lib.rs declares no such module"
        );
    }
    check_layers(&graph).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn pure_layers_name_no_runtime_network_store_or_file_paths() {
    check_effects(&sources()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn the_graph_has_the_edges_the_vocabulary_move_removed_and_kept() {
    let graph = sources();
    assert!(graph.code_edge("policy", "hitl").is_some());
    assert!(graph.code_edge("fsm", "hitl").is_some());
    assert!(
        graph.code_edge("policy", "fsm").is_none(),
        "{:?}",
        graph.edges
    );
    assert!(graph.code_edge("engine", "store").is_some());
    assert!(graph.code_edge(BINARY, "api").is_some());
}

fn site() -> Site {
    Site {
        file: "src/x.rs".into(),
        line: 1,
    }
}

#[test]
fn a_cycle_or_an_upward_import_is_reported_by_the_offending_edge() {
    let mut graph = Graph {
        modules: ["fsm", "graph", "policy", "engine"]
            .map(String::from)
            .to_vec(),
        ..Graph::default()
    };
    graph.add("fsm", "graph", site(), false);
    graph.add("graph", "policy", site(), false);
    graph.add("engine", "fsm", site(), false);
    graph.add("policy", "engine", site(), true);
    check_layers(&graph).expect("test-only and downward edges are fine");

    graph.add(
        "policy",
        "fsm",
        Site {
            file: "src/policy/model.rs".into(),
            line: 6,
        },
        false,
    );
    let error = check_layers(&graph).unwrap_err();
    assert!(error.contains("fsm → graph → policy → fsm"), "{error}");
    assert!(
        error.contains("`policy` → `fsm` (src/policy/model.rs:6)"),
        "{error}"
    );

    let mut graph = Graph {
        modules: ["graph", "engine"].map(String::from).to_vec(),
        ..Graph::default()
    };
    graph.add("graph", "engine", site(), false);
    let error = check_layers(&graph).unwrap_err();
    assert!(
        error.contains("`graph` is a pure layer but imports `engine`"),
        "{error}"
    );
}

#[test]
fn the_scanner_reads_code_paths_not_comments_strings_or_test_items() {
    let text = r##"
//! See [`crate::engine`].
use crate::{fsm::{RunEvent, RunState}, graph};
use crate::ids::RunId;
const A: &str = "crate::store";
const B: &str = r#"crate::api "quoted""#;
const C: char = '{';
fn f<'a>(x: &'a str) -> $crate::catalog::Facet { /* crate::bench */ todo!() }
#[cfg(test)]
mod tests {
    use crate::demo;
    fn g() { let _ = '}'; }
}
#[cfg(test)]
use crate::planner::Planner;
fn h() -> crate::policy::Policies { todo!() }
"##;
    let scanned = Scanned::new(text);
    assert_eq!(scanned.code.len(), text.len(), "one byte per character");
    let found: Vec<(&str, bool)> = paths(&scanned.code, "crate")
        .into_iter()
        .map(|(at, name)| (name, scanned.in_test[at]))
        .collect();
    assert_eq!(
        found,
        [
            ("fsm", false),
            ("graph", false),
            ("ids", false),
            ("catalog", false),
            ("demo", true),
            ("planner", true),
            ("policy", false),
        ]
    );
}
