//! Property tests: random deltas over random plans, checked against a set-based model.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::sample::Index;

use super::testing::node;
use super::{DeltaOp, NodeState, PlanDelta, PlanDiff, PlanDraft, PlanEdge, PlanGraph, PlanNode};
use crate::diagnostics::{Diagnostic, DiagnosticCode};

fn id(i: usize) -> String {
    format!("n{i}")
}

fn state_strategy() -> impl Strategy<Value = NodeState> {
    prop_oneof![
        4 => Just(NodeState::Pending),
        1 => Just(NodeState::Running),
        1 => Just(NodeState::Completed),
    ]
}

fn node_strategy(id: String) -> impl Strategy<Value = PlanNode> {
    prop_oneof![Just("a"), Just("b")].prop_map(move |stage| {
        let mut n = node(&id);
        n.stage = stage.to_owned();
        n
    })
}

/// A random DAG: nodes inserted in shuffled order, edges oriented from lower to higher
/// number so that insertion order and topological order disagree.
fn draft_strategy() -> impl Strategy<Value = PlanDraft> {
    (1..=7usize)
        .prop_flat_map(|n| {
            let order = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
            let edges = proptest::collection::vec((0..n, 0..n), 0..12);
            let nodes = proptest::collection::vec(node_strategy(String::new()), n);
            (order, edges, nodes)
        })
        .prop_map(|(order, pairs, templates)| {
            let nodes = order
                .iter()
                .zip(templates)
                .map(|(&i, mut n)| {
                    n.id = id(i);
                    n.capability_id = format!("cap.{}", n.id);
                    n
                })
                .collect();
            let edges: BTreeSet<PlanEdge> = pairs
                .into_iter()
                .filter(|(a, b)| a != b)
                .map(|(a, b)| PlanEdge::new(id(a.min(b)), id(a.max(b))))
                .collect();
            PlanDraft {
                nodes,
                edges: edges.into_iter().collect(),
                system_instructions: "sys".into(),
                rationale: "initial".into(),
            }
        })
}

/// The raw material of one delta operation, resolved against the plan by [`resolve`].
#[derive(Debug, Clone)]
struct Choice {
    kind: u8,
    first: Index,
    second: Index,
    stage: &'static str,
    /// Pick targets blindly (often invalid) instead of among the pending nodes.
    wild: bool,
}

fn choice_strategy() -> impl Strategy<Value = Choice> {
    (
        0..5u8,
        any::<Index>(),
        any::<Index>(),
        prop_oneof![Just("a"), Just("b")],
        proptest::bool::weighted(0.15),
    )
        .prop_map(|(kind, first, second, stage, wild)| Choice {
            kind,
            first,
            second,
            stage,
            wild,
        })
}

/// Turns choices into operations, tracking the plan as the operations would change it so
/// that non-wild operations are mostly valid: they target pending nodes, add fresh ids and
/// orient new edges from lower to higher number (the generated plans' orientation).
fn resolve(draft: &PlanDraft, states: &[NodeState], choices: &[Choice]) -> Vec<DeltaOp> {
    let number = |node: &str| {
        node.strip_prefix('n')
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(usize::MAX)
    };
    let mut ids: Vec<String> = draft.nodes.iter().map(|n| n.id.clone()).collect();
    let mut edges: Vec<PlanEdge> = draft.edges.clone();
    let mut fresh = draft.nodes.len();
    let blind = draft.nodes.len() + 2;
    let mut ops = Vec::new();
    for choice in choices {
        let pending: Vec<&String> = ids
            .iter()
            .filter(|n| state_of(states, n) == NodeState::Pending)
            .collect();
        let target = |index: &Index| -> String {
            if choice.wild || pending.is_empty() {
                id(index.index(blind))
            } else {
                index.get(&pending).to_string()
            }
        };
        let with_stage = |node_id: String| {
            let mut n = node(&node_id);
            n.stage = choice.stage.to_owned();
            n
        };
        match choice.kind {
            0 => {
                let node_id = if choice.wild {
                    if choice.first.index(4) == 0 {
                        String::new()
                    } else {
                        id(choice.second.index(blind))
                    }
                } else {
                    fresh += 1;
                    id(fresh - 1)
                };
                ids.push(node_id.clone());
                ops.push(DeltaOp::AddNode {
                    node: with_stage(node_id),
                });
            }
            1 => ops.push(DeltaOp::ReplaceNode {
                node: with_stage(target(&choice.first)),
            }),
            2 => {
                let node_id = target(&choice.first);
                ids.retain(|n| *n != node_id);
                edges.retain(|e| e.from != node_id && e.to != node_id);
                ops.push(DeltaOp::RemoveNode { node_id });
            }
            3 => {
                let to = target(&choice.first);
                let from = if choice.wild || ids.is_empty() {
                    id(choice.second.index(blind))
                } else {
                    choice.second.get(&ids).clone()
                };
                let (from, to) = if choice.wild || number(&from) < number(&to) {
                    (from, to)
                } else {
                    (to, from)
                };
                edges.push(PlanEdge::new(from.as_str(), to.as_str()));
                ops.push(DeltaOp::AddEdge { from, to });
            }
            _ => {
                let edge = if choice.wild || edges.is_empty() {
                    PlanEdge::new(
                        id(choice.first.index(blind)),
                        id(choice.second.index(blind)),
                    )
                } else {
                    choice.first.get(&edges).clone()
                };
                edges.retain(|e| *e != edge);
                ops.push(DeltaOp::RemoveEdge {
                    from: edge.from,
                    to: edge.to,
                });
            }
        }
    }
    ops
}

/// A valid draft, the state of each id `n0`.., and a delta against it.
fn case_strategy() -> impl Strategy<Value = (PlanDraft, Vec<NodeState>, PlanDelta)> {
    draft_strategy().prop_flat_map(|draft| {
        let n = draft.nodes.len();
        (
            Just(draft),
            proptest::collection::vec(state_strategy(), n),
            prop_oneof![19 => Just(1u32), 1 => 0..4u32],
            proptest::collection::vec(choice_strategy(), 0..6),
        )
            .prop_map(|(draft, states, base_version, choices)| {
                let operations = resolve(&draft, &states, &choices);
                let delta = PlanDelta {
                    base_version,
                    rationale: "replan".into(),
                    operations,
                };
                (draft, states, delta)
            })
    })
}

/// The plan as plain collections, edited with set logic only.
struct Model<'a> {
    base: &'a PlanGraph,
    states: &'a [NodeState],
    nodes: Vec<PlanNode>,
    edges: BTreeSet<PlanEdge>,
    errors: Vec<(DiagnosticCode, Option<String>)>,
}

impl Model<'_> {
    fn state(&self, node: &str) -> NodeState {
        if self.base.contains(node) {
            state_of(self.states, node)
        } else {
            NodeState::Pending
        }
    }

    fn has(&self, node: &str) -> bool {
        self.nodes.iter().any(|n| n.id == node)
    }

    fn frozen(&mut self, node: &str) -> bool {
        let code = match self.state(node) {
            NodeState::Pending => return false,
            NodeState::Running => DiagnosticCode::RunningNodeModified,
            NodeState::Completed => DiagnosticCode::CompletedNodeModified,
        };
        self.error(code, node);
        true
    }

    fn error(&mut self, code: DiagnosticCode, node: &str) {
        self.errors.push((code, Some(node.to_owned())));
    }

    fn reaches(&self, from: &str, to: &str) -> bool {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(at) = stack.pop() {
            if at == to {
                return true;
            }
            for edge in &self.edges {
                if edge.from == at && seen.insert(edge.to.clone()) {
                    stack.push(edge.to.clone());
                }
            }
        }
        false
    }

    fn apply(&mut self, op: &DeltaOp) {
        match op {
            DeltaOp::AddNode { node } => {
                if node.id.is_empty() {
                    self.error(DiagnosticCode::InvalidNodeId, &node.id);
                } else if self.has(&node.id) {
                    self.error(DiagnosticCode::DuplicateNodeId, &node.id);
                } else {
                    self.nodes.push(node.clone());
                }
            }
            DeltaOp::ReplaceNode { node } => {
                if !self.has(&node.id) {
                    self.error(DiagnosticCode::UnknownNode, &node.id);
                } else if !self.frozen(&node.id) {
                    for n in &mut self.nodes {
                        if n.id == node.id {
                            *n = node.clone();
                        }
                    }
                }
            }
            DeltaOp::RemoveNode { node_id } => {
                if !self.has(node_id) {
                    self.error(DiagnosticCode::UnknownNode, node_id);
                } else if !self.frozen(node_id) {
                    let successors: Vec<String> = self
                        .edges
                        .iter()
                        .filter(|e| &e.from == node_id)
                        .map(|e| e.to.clone())
                        .collect();
                    let mut refused = false;
                    for succ in &successors {
                        refused |= self.frozen(succ);
                    }
                    if !refused {
                        self.nodes.retain(|n| &n.id != node_id);
                        self.edges
                            .retain(|e| &e.from != node_id && &e.to != node_id);
                    }
                }
            }
            DeltaOp::AddEdge { from, to } => {
                let edge = PlanEdge::new(from.as_str(), to.as_str());
                if !self.has(from) {
                    self.error(DiagnosticCode::DanglingEdge, from);
                } else if !self.has(to) {
                    self.error(DiagnosticCode::DanglingEdge, to);
                } else if from == to {
                    self.error(DiagnosticCode::Cycle, from);
                } else if self.edges.contains(&edge) {
                    self.error(DiagnosticCode::DuplicateEdge, to);
                } else if !self.frozen(to) {
                    if self.reaches(to, from) {
                        self.error(DiagnosticCode::Cycle, to);
                    } else {
                        self.edges.insert(edge);
                    }
                }
            }
            DeltaOp::RemoveEdge { from, to } => {
                let edge = PlanEdge::new(from.as_str(), to.as_str());
                if !self.edges.contains(&edge) {
                    self.error(DiagnosticCode::UnknownEdge, to);
                } else if !self.frozen(to) {
                    self.edges.remove(&edge);
                }
            }
        }
    }
}

fn state_of(states: &[NodeState], node: &str) -> NodeState {
    node.strip_prefix('n')
        .and_then(|n| n.parse::<usize>().ok())
        .and_then(|i| states.get(i).copied())
        .unwrap_or(NodeState::Pending)
}

fn sorted_codes(diagnostics: &[Diagnostic]) -> Vec<(DiagnosticCode, Option<String>)> {
    let mut out: Vec<_> = diagnostics
        .iter()
        .map(|d| (d.code, d.node_id.clone()))
        .collect();
    out.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
    out
}

/// The diff of two snapshots by plain set logic.
fn set_diff(old: &PlanGraph, new: &PlanGraph) -> PlanDiff {
    let (old, new) = (old.snapshot(), new.snapshot());
    let old_nodes: BTreeMap<&str, &PlanNode> =
        old.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    let new_nodes: BTreeMap<&str, &PlanNode> =
        new.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    let old_edges: BTreeSet<&PlanEdge> = old.edges.iter().collect();
    let new_edges: BTreeSet<&PlanEdge> = new.edges.iter().collect();
    PlanDiff {
        from_version: old.version,
        to_version: new.version,
        added_nodes: new_nodes
            .keys()
            .filter(|k| !old_nodes.contains_key(*k))
            .map(|k| k.to_string())
            .collect(),
        removed_nodes: old_nodes
            .keys()
            .filter(|k| !new_nodes.contains_key(*k))
            .map(|k| k.to_string())
            .collect(),
        changed_nodes: old_nodes
            .iter()
            .filter(|(k, n)| new_nodes.get(*k).is_some_and(|m| m != *n))
            .map(|(k, _)| k.to_string())
            .collect(),
        added_edges: new_edges
            .difference(&old_edges)
            .map(|e| (*e).clone())
            .collect(),
        removed_edges: old_edges
            .difference(&new_edges)
            .map(|e| (*e).clone())
            .collect(),
    }
}

fn check_acyclic(g: &PlanGraph) -> Result<(), TestCaseError> {
    let topo = g.topo_order();
    prop_assert_eq!(topo.len(), g.len());
    let position: BTreeMap<&str, usize> = topo.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    prop_assert_eq!(position.len(), g.len());
    for edge in g.edges() {
        prop_assert!(position[edge.from.as_str()] < position[edge.to.as_str()]);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn deltas_match_the_set_model(
        (draft, states, delta) in case_strategy(),
    ) {
        let base = PlanGraph::from_draft(&draft).expect("generated drafts are valid");
        check_acyclic(&base)?;
        let before = base.snapshot();
        let lookup = |node: &str| state_of(&states, node);
        let result = base.apply_delta(&delta, &lookup);
        prop_assert_eq!(&base.snapshot(), &before);

        let mut model = Model {
            base: &base,
            states: &states,
            nodes: before.nodes.clone(),
            edges: before.edges.iter().cloned().collect(),
            errors: Vec::new(),
        };
        if delta.base_version != 1 {
            model.errors.push((DiagnosticCode::StaleBaseVersion, None));
        } else {
            for op in &delta.operations {
                model.apply(op);
            }
            if model.nodes.is_empty() {
                model.errors.push((DiagnosticCode::EmptyPlan, None));
            }
        }

        match result {
            Ok(next) => {
                prop_assert!(model.errors.is_empty(), "model rejects: {:?}", model.errors);
                prop_assert_eq!(next.version(), base.version() + 1);
                prop_assert_eq!(next.rationale(), "replan");
                check_acyclic(&next)?;
                let snap = next.snapshot();
                prop_assert_eq!(&snap.nodes, &model.nodes);
                prop_assert_eq!(&snap.edges, &model.edges.iter().cloned().collect::<Vec<_>>());
                for old in base.nodes() {
                    if lookup(&old.id) == NodeState::Pending {
                        continue;
                    }
                    let kept = next.node(&old.id);
                    prop_assert!(kept.is_some(), "frozen node {} vanished", old.id);
                    prop_assert_eq!(
                        serde_json::to_vec(old).unwrap(),
                        serde_json::to_vec(kept.unwrap()).unwrap()
                    );
                    let old_preds: BTreeSet<&str> = base.predecessors(&old.id).collect();
                    let new_preds: BTreeSet<&str> = next.predecessors(&old.id).collect();
                    prop_assert_eq!(old_preds, new_preds);
                }
                prop_assert_eq!(base.diff(&next), set_diff(&base, &next));
                prop_assert_eq!(&PlanGraph::from_snapshot(&snap).unwrap(), &next);
            }
            Err(diagnostics) => {
                prop_assert!(diagnostics.iter().all(Diagnostic::is_error));
                let mut expected = model.errors.clone();
                expected.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
                prop_assert_eq!(sorted_codes(&diagnostics), expected);
            }
        }
    }
}
