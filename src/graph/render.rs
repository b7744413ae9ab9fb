//! Text renderings of a plan version: Graphviz DOT and Mermaid flowcharts.

use std::fmt::Write;

use super::plan::PlanGraph;

impl PlanGraph {
    /// The plan as a Graphviz DOT digraph.
    ///
    /// Node ids are used as quoted DOT ids; each label shows the id and the capability.
    /// Nodes come in insertion order, edges sorted by `(from, to)`.
    pub fn to_dot(&self) -> String {
        let mut out = String::from("digraph plan {\n  node [shape=box];\n");
        for node in self.nodes() {
            let label = format!("{}\n{}", node.id, node.capability_id);
            let _ = writeln!(
                out,
                "  {} [label={}];",
                dot_quote(&node.id),
                dot_quote(&label)
            );
        }
        for edge in self.edges() {
            let _ = writeln!(
                out,
                "  {} -> {};",
                dot_quote(&edge.from),
                dot_quote(&edge.to)
            );
        }
        out.push_str("}\n");
        out
    }

    /// The plan as a Mermaid `flowchart TD`.
    ///
    /// Mermaid ids are synthetic (`n0`, `n1`, … in insertion order) so that any node id is
    /// safe; labels show the id and the capability, with Mermaid entity escapes.
    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("flowchart TD\n");
        let ranks = self.ranks();
        for (rank, node) in self.nodes().enumerate() {
            let _ = writeln!(
                out,
                "    n{rank}[\"{}<br/>{}\"]",
                mermaid_escape(&node.id),
                mermaid_escape(&node.capability_id)
            );
        }
        for edge in self.edges() {
            if let (Some(from), Some(to)) = (self.index_of(&edge.from), self.index_of(&edge.to)) {
                let _ = writeln!(
                    out,
                    "    n{} --> n{}",
                    ranks[from.index()],
                    ranks[to.index()]
                );
            }
        }
        out
    }
}

/// A DOT double-quoted string: backslashes and quotes escaped, newlines as `\n`, other
/// control characters as spaces.
fn dot_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Text safe inside a Mermaid `["…"]` label: markup characters as Mermaid entity codes,
/// control characters as spaces.
fn mermaid_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("#quot;"),
            '#' => out.push_str("#35;"),
            '&' => out.push_str("#38;"),
            '<' => out.push_str("#60;"),
            '>' => out.push_str("#62;"),
            '`' => out.push_str("#96;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::graph::testing::{plan, stored_plan};

    #[test]
    fn dot_of_a_small_plan() {
        let g = plan(
            &["brief", "write", "qa"],
            &[("write", "qa"), ("brief", "write")],
        );
        assert_eq!(
            g.to_dot(),
            concat!(
                "digraph plan {\n",
                "  node [shape=box];\n",
                "  \"brief\" [label=\"brief\\ncap.brief\"];\n",
                "  \"write\" [label=\"write\\ncap.write\"];\n",
                "  \"qa\" [label=\"qa\\ncap.qa\"];\n",
                "  \"brief\" -> \"write\";\n",
                "  \"write\" -> \"qa\";\n",
                "}\n",
            )
        );
    }

    #[test]
    fn mermaid_of_a_small_plan() {
        let g = plan(
            &["brief", "write", "qa"],
            &[("write", "qa"), ("brief", "write")],
        );
        assert_eq!(
            g.to_mermaid(),
            concat!(
                "flowchart TD\n",
                "    n0[\"brief<br/>cap.brief\"]\n",
                "    n1[\"write<br/>cap.write\"]\n",
                "    n2[\"qa<br/>cap.qa\"]\n",
                "    n0 --> n1\n",
                "    n1 --> n2\n",
            )
        );
    }

    #[test]
    fn odd_ids_are_escaped() {
        let g = stored_plan(
            &["say \"hi\"", "x-y z", "a\\b", "end"],
            &[("say \"hi\"", "x-y z")],
        );
        assert_eq!(
            g.to_dot(),
            concat!(
                "digraph plan {\n",
                "  node [shape=box];\n",
                "  \"say \\\"hi\\\"\" [label=\"say \\\"hi\\\"\\ncap.say \\\"hi\\\"\"];\n",
                "  \"x-y z\" [label=\"x-y z\\ncap.x-y z\"];\n",
                "  \"a\\\\b\" [label=\"a\\\\b\\ncap.a\\\\b\"];\n",
                "  \"end\" [label=\"end\\ncap.end\"];\n",
                "  \"say \\\"hi\\\"\" -> \"x-y z\";\n",
                "}\n",
            )
        );
        assert_eq!(
            g.to_mermaid(),
            concat!(
                "flowchart TD\n",
                "    n0[\"say #quot;hi#quot;<br/>cap.say #quot;hi#quot;\"]\n",
                "    n1[\"x-y z<br/>cap.x-y z\"]\n",
                "    n2[\"a\\b<br/>cap.a\\b\"]\n",
                "    n3[\"end<br/>cap.end\"]\n",
                "    n0 --> n1\n",
            )
        );
    }

    #[test]
    fn mermaid_markup_characters_become_entities() {
        let g = stored_plan(&["<b>#1 & `x`"], &[]);
        assert_eq!(
            g.to_mermaid(),
            "flowchart TD\n    n0[\"#60;b#62;#35;1 #38; #96;x#96;<br/>cap.#60;b#62;#35;1 #38; #96;x#96;\"]\n"
        );
    }
}
