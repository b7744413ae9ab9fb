//! Structural comparison of two plan versions.

use std::cmp::Ordering;

use super::model::{PlanDiff, PlanEdge};
use super::plan::PlanGraph;

impl PlanGraph {
    /// What changed from this version to `newer`: nodes and edges added or removed, and
    /// nodes whose content differs. All lists are sorted.
    pub fn diff(&self, newer: &PlanGraph) -> PlanDiff {
        let mut added_nodes: Vec<String> = newer
            .nodes()
            .filter(|node| !self.contains(&node.id))
            .map(|node| node.id.clone())
            .collect();
        let mut removed_nodes: Vec<String> = self
            .nodes()
            .filter(|node| !newer.contains(&node.id))
            .map(|node| node.id.clone())
            .collect();
        let mut changed_nodes: Vec<String> = self
            .nodes()
            .filter(|node| newer.node(&node.id).is_some_and(|other| other != *node))
            .map(|node| node.id.clone())
            .collect();
        added_nodes.sort_unstable();
        removed_nodes.sort_unstable();
        changed_nodes.sort_unstable();
        let (removed_edges, added_edges) = split_sorted(self.edges(), newer.edges());
        PlanDiff {
            from_version: self.version(),
            to_version: newer.version(),
            added_nodes,
            removed_nodes,
            changed_nodes,
            added_edges,
            removed_edges,
        }
    }
}

/// Given two sorted, duplicate-free lists, the items only in `old` and those only in `new`.
fn split_sorted(old: Vec<PlanEdge>, new: Vec<PlanEdge>) -> (Vec<PlanEdge>, Vec<PlanEdge>) {
    let mut only_old = Vec::new();
    let mut only_new = Vec::new();
    let mut old = old.into_iter().peekable();
    let mut new = new.into_iter().peekable();
    loop {
        let order = match (old.peek(), new.peek()) {
            (Some(a), Some(b)) => a.cmp(b),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => break,
        };
        match order {
            Ordering::Less => only_old.extend(old.next()),
            Ordering::Greater => only_new.extend(new.next()),
            Ordering::Equal => {
                old.next();
                new.next();
            }
        }
    }
    (only_old, only_new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::DeltaOp;
    use crate::graph::testing::{delta, node, pending, plan};

    #[test]
    fn diff_of_a_delta_lists_exactly_what_changed() {
        let base = plan(&["a", "b", "c", "d"], &[("a", "b"), ("b", "c"), ("a", "d")]);
        let mut changed = node("b");
        changed.rationale = "sharper".into();
        let next = base
            .apply_delta(
                &delta(
                    1,
                    vec![
                        DeltaOp::RemoveNode {
                            node_id: "d".into(),
                        },
                        DeltaOp::AddNode { node: node("e") },
                        DeltaOp::ReplaceNode { node: changed },
                        DeltaOp::ReplaceNode { node: node("c") },
                        DeltaOp::AddEdge {
                            from: "c".into(),
                            to: "e".into(),
                        },
                        DeltaOp::RemoveEdge {
                            from: "b".into(),
                            to: "c".into(),
                        },
                        DeltaOp::AddEdge {
                            from: "a".into(),
                            to: "c".into(),
                        },
                    ],
                ),
                &pending,
            )
            .unwrap();
        assert_eq!(
            base.diff(&next),
            PlanDiff {
                from_version: 1,
                to_version: 2,
                added_nodes: vec!["e".into()],
                removed_nodes: vec!["d".into()],
                changed_nodes: vec!["b".into()],
                added_edges: vec![PlanEdge::new("a", "c"), PlanEdge::new("c", "e")],
                removed_edges: vec![PlanEdge::new("a", "d"), PlanEdge::new("b", "c")],
            }
        );
        let back = next.diff(&base);
        assert_eq!((back.from_version, back.to_version), (2, 1));
        assert_eq!(back.added_nodes, ["d"]);
        assert_eq!(
            back.removed_edges,
            [PlanEdge::new("a", "c"), PlanEdge::new("c", "e")]
        );
    }

    #[test]
    fn diff_with_itself_is_empty() {
        let g = plan(&["a", "b"], &[("a", "b")]);
        let diff = g.diff(&g);
        assert!(diff.is_empty());
        assert_eq!((diff.from_version, diff.to_version), (1, 1));
    }
}
