//! Applying a planner's delta to a plan version, producing the next version.

use petgraph::Direction;
use petgraph::algo::has_path_connecting;

use super::model::{DeltaOp, PlanDelta, PlanNode};
use super::plan::{
    NodeState, PlanGraph, check_node_id, dangling_edge, duplicate_edge, duplicate_node_id,
    self_loop,
};
use crate::diagnostics::{Diagnostic, DiagnosticCode};

impl PlanGraph {
    /// Applies `delta` to this version and returns the next one; see [`apply_delta`].
    ///
    /// # Errors
    ///
    /// Returns the diagnostics of every rejected operation; see [`apply_delta`].
    pub fn apply_delta(
        &self,
        delta: &PlanDelta,
        state: &dyn Fn(&str) -> NodeState,
    ) -> Result<PlanGraph, Vec<Diagnostic>> {
        apply_delta(self, delta, state)
    }
}

/// Applies `delta` to `base` and returns version `base.version() + 1`; `base` is untouched.
///
/// `state` tells the status of each node of `base` at delta time; nodes the delta adds are
/// pending. Operations apply in order. An edge `from -> to` belongs to `to`: adding or
/// removing it counts as modifying `to`, so it is refused while `to` is running or
/// completed. The result keeps `base`'s system instructions and takes the delta's
/// rationale.
///
/// # Errors
///
/// `STALE_BASE_VERSION` alone when `delta.base_version` is not `base.version()`, and
/// `EMPTY_PLAN` when the delta would leave no node. A delta without operations is a "no
/// change" answer: it yields the next version with the same content. Otherwise every
/// operation is checked and the diagnostics of all rejected ones are returned (a rejected
/// operation is skipped, so later ones are checked against the plan without it):
/// `INVALID_NODE_ID` (pointer `/operations/<i>/node/id`) and `DUPLICATE_NODE_ID` for `addNode`; `UNKNOWN_NODE`,
/// `COMPLETED_NODE_MODIFIED` and `RUNNING_NODE_MODIFIED` for `replaceNode` and `removeNode`;
/// `DANGLING_EDGE`, `DUPLICATE_EDGE`, `CYCLE` and the two `*_NODE_MODIFIED` codes for
/// `addEdge`; `UNKNOWN_EDGE` and the two `*_NODE_MODIFIED` codes for `removeEdge`. Each
/// message starts with the 1-based position of its operation.
pub fn apply_delta(
    base: &PlanGraph,
    delta: &PlanDelta,
    state: &dyn Fn(&str) -> NodeState,
) -> Result<PlanGraph, Vec<Diagnostic>> {
    let next_version = match base.version.checked_add(1) {
        Some(next) if delta.base_version == base.version => next,
        Some(_) | None => {
            return Err(vec![
                Diagnostic::error(
                    DiagnosticCode::StaleBaseVersion,
                    format!(
                        "delta is based on version {} but the current version is {}",
                        delta.base_version, base.version
                    ),
                )
                .hint(format!(
                    "compute the delta against version {}",
                    base.version
                ))
                .at("/baseVersion")
                .expected_found(base.version.to_string(), delta.base_version.to_string()),
            ]);
        }
    };
    let mut next = base.clone();
    next.version = next_version;
    next.rationale = delta.rationale.clone();
    let mut editor = Editor {
        base,
        next,
        state,
        diagnostics: Vec::new(),
        position: 0,
    };
    for (position, op) in delta.operations.iter().enumerate() {
        let found = editor.diagnostics.len();
        editor.position = position;
        editor.apply(op);
        for diagnostic in &mut editor.diagnostics[found..] {
            diagnostic.message = format!("operation {}: {}", position + 1, diagnostic.message);
            diagnostic
                .pointer
                .get_or_insert_with(|| format!("/operations/{position}"));
        }
    }

    let Editor {
        next,
        mut diagnostics,
        ..
    } = editor;
    diagnostics.extend(next.cycle_diagnostics());
    if next.is_empty() {
        diagnostics.push(
            Diagnostic::error(
                DiagnosticCode::EmptyPlan,
                "delta would leave the plan empty",
            )
            .hint("keep at least one node"),
        );
    }
    if diagnostics.is_empty() {
        Ok(next)
    } else {
        Err(diagnostics)
    }
}

/// The working copy a delta is applied to, with the diagnostics found so far.
struct Editor<'a> {
    base: &'a PlanGraph,
    next: PlanGraph,
    state: &'a dyn Fn(&str) -> NodeState,
    diagnostics: Vec<Diagnostic>,
    /// The 0-based position of the operation being applied.
    position: usize,
}

impl Editor<'_> {
    fn apply(&mut self, op: &DeltaOp) {
        match op {
            DeltaOp::AddNode { node } => self.add_node(node),
            DeltaOp::ReplaceNode { node } => self.replace_node(node),
            DeltaOp::RemoveNode { node_id } => self.remove_node(node_id),
            DeltaOp::AddEdge { from, to } => self.add_edge(from, to),
            DeltaOp::RemoveEdge { from, to } => self.remove_edge(from, to),
        }
    }

    /// The state of a node of the working copy: nodes absent from the base are new, hence
    /// pending.
    fn state_of(&self, id: &str) -> NodeState {
        if self.base.contains(id) {
            (self.state)(id)
        } else {
            NodeState::Pending
        }
    }

    /// Records a diagnostic and returns true when node `id` must not change.
    fn refuse_if_frozen(&mut self, id: &str, change: impl FnOnce() -> String) -> bool {
        let (code, status) = match self.state_of(id) {
            NodeState::Pending => return false,
            NodeState::Running => (DiagnosticCode::RunningNodeModified, "running"),
            NodeState::Completed => (DiagnosticCode::CompletedNodeModified, "completed"),
        };
        self.diagnostics.push(
            Diagnostic::error(code, format!("{}: node `{id}` is {status}", change()))
                .node(id)
                .hint("only pending nodes and their incoming edges may change"),
        );
        true
    }

    fn unknown_node(&mut self, id: &str, action: &str) {
        self.diagnostics.push(
            Diagnostic::error(
                DiagnosticCode::UnknownNode,
                format!("cannot {action} unknown node `{id}`"),
            )
            .node(id)
            .hint("name a node of the current plan version"),
        );
    }

    fn add_node(&mut self, node: &PlanNode) {
        let pointer = format!("/operations/{}/node/id", self.position);
        if let Some(diagnostic) = check_node_id(&node.id, pointer) {
            self.diagnostics.push(diagnostic);
        } else if self.next.contains(&node.id) {
            self.diagnostics.push(duplicate_node_id(&node.id));
        } else {
            self.next.insert_node(node.clone());
        }
    }

    fn replace_node(&mut self, node: &PlanNode) {
        let Some(ix) = self.next.index_of(&node.id) else {
            self.unknown_node(&node.id, "replace");
            return;
        };
        if self.refuse_if_frozen(&node.id, || format!("cannot replace node `{}`", node.id)) {
            return;
        }
        self.next.graph[ix] = node.clone();
    }

    fn remove_node(&mut self, id: &str) {
        let Some(ix) = self.next.index_of(id) else {
            self.unknown_node(id, "remove");
            return;
        };
        if self.refuse_if_frozen(id, || format!("cannot remove node `{id}`")) {
            return;
        }
        let successors: Vec<String> = self
            .next
            .graph
            .neighbors_directed(ix, Direction::Outgoing)
            .map(|succ| self.next.graph[succ].id.clone())
            .collect();
        let mut refused = false;
        for succ in &successors {
            refused |= self.refuse_if_frozen(succ, || {
                format!("cannot remove node `{id}`, a dependency of `{succ}`")
            });
        }
        if !refused {
            self.next.remove_node(ix);
        }
    }

    fn add_edge(&mut self, from: &str, to: &str) {
        let (from_ix, to_ix) = match (self.next.index_of(from), self.next.index_of(to)) {
            (Some(from_ix), Some(to_ix)) => (from_ix, to_ix),
            (from_ix, to_ix) => {
                self.diagnostics
                    .push(dangling_edge(from, to, from_ix.is_some(), to_ix.is_some()));
                return;
            }
        };
        if from_ix == to_ix {
            self.diagnostics.push(self_loop(from));
            return;
        }
        if self.next.graph.find_edge(from_ix, to_ix).is_some() {
            self.diagnostics.push(duplicate_edge(from, to));
            return;
        }
        if self.refuse_if_frozen(to, || format!("cannot add edge `{from}` -> `{to}`")) {
            return;
        }
        if has_path_connecting(&self.next.graph, to_ix, from_ix, None) {
            self.diagnostics.push(
                Diagnostic::error(
                    DiagnosticCode::Cycle,
                    format!("edge `{from}` -> `{to}` would close a cycle, `{from}` already depends on `{to}`"),
                )
                .node(to)
                .hint("remove the edge or reverse the dependency"),
            );
            return;
        }
        self.next.graph.add_edge(from_ix, to_ix, ());
    }

    fn remove_edge(&mut self, from: &str, to: &str) {
        let edge = match (self.next.index_of(from), self.next.index_of(to)) {
            (Some(from_ix), Some(to_ix)) => self.next.graph.find_edge(from_ix, to_ix),
            (None, _) | (_, None) => None,
        };
        let Some(edge) = edge else {
            self.diagnostics.push(
                Diagnostic::error(
                    DiagnosticCode::UnknownEdge,
                    format!("cannot remove unknown edge `{from}` -> `{to}`"),
                )
                .node(to)
                .hint("name an edge of the current plan version"),
            );
            return;
        };
        if self.refuse_if_frozen(to, || format!("cannot remove edge `{from}` -> `{to}`")) {
            return;
        }
        self.next.graph.remove_edge(edge);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::PlanEdge;
    use crate::graph::testing::{codes, delta, node, pending, plan};

    fn add_edge(from: &str, to: &str) -> DeltaOp {
        DeltaOp::AddEdge {
            from: from.into(),
            to: to.into(),
        }
    }

    fn remove_edge(from: &str, to: &str) -> DeltaOp {
        DeltaOp::RemoveEdge {
            from: from.into(),
            to: to.into(),
        }
    }

    fn remove_node(id: &str) -> DeltaOp {
        DeltaOp::RemoveNode { node_id: id.into() }
    }

    fn replace_node(id: &str, instruction: &str) -> DeltaOp {
        let mut node = node(id);
        node.instructions.push(instruction.into());
        DeltaOp::ReplaceNode { node }
    }

    /// Plan `a -> b -> c`, `a -> d`, with `a` completed and `b` running.
    fn running_plan() -> PlanGraph {
        plan(&["a", "b", "c", "d"], &[("a", "b"), ("b", "c"), ("a", "d")])
    }

    fn in_flight(id: &str) -> NodeState {
        match id {
            "a" => NodeState::Completed,
            "b" => NodeState::Running,
            _ => NodeState::Pending,
        }
    }

    fn rejected(base: &PlanGraph, ops: Vec<DeltaOp>) -> Vec<Diagnostic> {
        let before = base.snapshot();
        let err = base
            .apply_delta(&delta(base.version(), ops), &in_flight)
            .unwrap_err();
        assert_eq!(base.snapshot(), before);
        err
    }

    #[test]
    fn valid_delta_yields_next_version_and_leaves_base_alone() {
        let base = running_plan();
        let before = base.snapshot();
        let next = base
            .apply_delta(
                &delta(
                    1,
                    vec![
                        DeltaOp::AddNode { node: node("e") },
                        add_edge("d", "e"),
                        add_edge("c", "e"),
                        replace_node("c", "shorter"),
                        remove_node("d"),
                    ],
                ),
                &in_flight,
            )
            .unwrap();
        assert_eq!(base.snapshot(), before);
        assert_eq!(next.version(), 2);
        assert_eq!(next.rationale(), "replan");
        assert_eq!(next.system_instructions(), "be brief");
        assert_eq!(
            next.nodes().map(|n| n.id.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c", "e"]
        );
        assert_eq!(next.node("c").unwrap().instructions, ["shorter"]);
        assert_eq!(
            next.edges(),
            [
                PlanEdge::new("a", "b"),
                PlanEdge::new("b", "c"),
                PlanEdge::new("c", "e"),
            ]
        );
        let third = apply_delta(&next, &delta(2, vec![remove_edge("c", "e")]), &in_flight).unwrap();
        assert_eq!(third.version(), 3);
        assert_eq!(third.edges().len(), 2);
    }

    #[test]
    fn stale_base_version_stops_everything() {
        let base = running_plan();
        let err = base
            .apply_delta(&delta(7, vec![remove_node("a")]), &in_flight)
            .unwrap_err();
        assert_eq!(codes(&err), [(DiagnosticCode::StaleBaseVersion, None)]);
        assert!(err[0].message.contains("version 7"), "{}", err[0].message);
    }

    #[test]
    fn no_operations_is_a_no_change_version() {
        let base = running_plan();
        let next = base
            .apply_delta(&delta(base.version(), Vec::new()), &in_flight)
            .unwrap();
        assert_eq!(next.version(), base.version() + 1);
        assert_eq!(next.snapshot().nodes, base.snapshot().nodes);
        assert_eq!(next.snapshot().edges, base.snapshot().edges);
        assert!(base.diff(&next).is_empty(), "{:?}", base.diff(&next));
    }

    #[test]
    fn removing_every_node_is_empty_plan() {
        let base = plan(&["a", "b"], &[("a", "b")]);
        let err = base
            .apply_delta(
                &delta(1, vec![remove_node("b"), remove_node("a")]),
                &pending,
            )
            .unwrap_err();
        assert_eq!(codes(&err), [(DiagnosticCode::EmptyPlan, None)]);
    }

    #[test]
    fn add_node_with_taken_id_is_duplicate() {
        let err = rejected(&running_plan(), vec![DeltaOp::AddNode { node: node("c") }]);
        assert_eq!(codes(&err), [(DiagnosticCode::DuplicateNodeId, Some("c"))]);
        assert!(
            err[0].message.starts_with("operation 1: "),
            "{}",
            err[0].message
        );
    }

    #[test]
    fn add_node_with_invalid_id() {
        let err = rejected(
            &running_plan(),
            vec![
                DeltaOp::AddNode { node: node("fine") },
                DeltaOp::AddNode { node: node(" ") },
                DeltaOp::AddNode {
                    node: node("qa/../x"),
                },
            ],
        );
        assert_eq!(
            codes(&err),
            [
                (DiagnosticCode::InvalidNodeId, Some(" ")),
                (DiagnosticCode::InvalidNodeId, Some("qa/../x"))
            ]
        );
        assert_eq!(err[0].pointer.as_deref(), Some("/operations/1/node/id"));
        assert_eq!(err[1].pointer.as_deref(), Some("/operations/2/node/id"));
        assert!(
            err[1]
                .message
                .starts_with("operation 3: node id \"qa/../x\" is invalid"),
            "{}",
            err[1].message
        );
    }

    #[test]
    fn unknown_nodes_cannot_be_replaced_or_removed() {
        let err = rejected(
            &running_plan(),
            vec![replace_node("ghost", "x"), remove_node("phantom")],
        );
        assert_eq!(
            codes(&err),
            [
                (DiagnosticCode::UnknownNode, Some("ghost")),
                (DiagnosticCode::UnknownNode, Some("phantom")),
            ]
        );
    }

    #[test]
    fn completed_and_running_nodes_are_frozen() {
        let err = rejected(
            &running_plan(),
            vec![
                replace_node("a", "redo"),
                remove_node("a"),
                replace_node("b", "redo"),
                remove_node("b"),
            ],
        );
        assert_eq!(
            codes(&err),
            [
                (DiagnosticCode::CompletedNodeModified, Some("a")),
                (DiagnosticCode::CompletedNodeModified, Some("a")),
                (DiagnosticCode::RunningNodeModified, Some("b")),
                (DiagnosticCode::RunningNodeModified, Some("b")),
            ]
        );
        assert_eq!(
            err[0].message,
            "operation 1: cannot replace node `a`: node `a` is completed"
        );
    }

    #[test]
    fn edges_into_frozen_nodes_are_frozen() {
        let err = rejected(
            &running_plan(),
            vec![
                add_edge("d", "b"),
                remove_edge("a", "b"),
                add_edge("c", "a"),
            ],
        );
        assert_eq!(
            codes(&err),
            [
                (DiagnosticCode::RunningNodeModified, Some("b")),
                (DiagnosticCode::RunningNodeModified, Some("b")),
                (DiagnosticCode::CompletedNodeModified, Some("a")),
            ]
        );
    }

    #[test]
    fn edges_out_of_frozen_nodes_may_change() {
        let base = running_plan();
        let next = base
            .apply_delta(
                &delta(1, vec![remove_edge("a", "d"), add_edge("b", "d")]),
                &in_flight,
            )
            .unwrap();
        assert_eq!(
            next.edges(),
            [
                PlanEdge::new("a", "b"),
                PlanEdge::new("b", "c"),
                PlanEdge::new("b", "d"),
            ]
        );
    }

    #[test]
    fn removing_a_dependency_of_a_frozen_node_is_refused() {
        let base = plan(&["p", "done"], &[("p", "done")]);
        let state = |id: &str| {
            if id == "done" {
                NodeState::Completed
            } else {
                NodeState::Pending
            }
        };
        let err = base
            .apply_delta(&delta(1, vec![remove_node("p")]), &state)
            .unwrap_err();
        assert_eq!(
            codes(&err),
            [(DiagnosticCode::CompletedNodeModified, Some("done"))]
        );
        assert!(base.contains("p"));
    }

    #[test]
    fn removing_a_pending_node_drops_its_incoming_edges() {
        let base = running_plan();
        let next = base
            .apply_delta(&delta(1, vec![remove_node("c")]), &in_flight)
            .unwrap();
        assert!(!next.contains("c"));
        assert_eq!(
            next.edges(),
            [PlanEdge::new("a", "b"), PlanEdge::new("a", "d")]
        );
    }

    #[test]
    fn add_edge_problems() {
        let err = rejected(
            &running_plan(),
            vec![
                add_edge("c", "ghost"),
                add_edge("b", "c"),
                add_edge("c", "c"),
                add_edge("c", "d"),
                add_edge("d", "c"),
            ],
        );
        assert_eq!(
            codes(&err),
            [
                (DiagnosticCode::DanglingEdge, Some("ghost")),
                (DiagnosticCode::DuplicateEdge, Some("c")),
                (DiagnosticCode::Cycle, Some("c")),
                (DiagnosticCode::Cycle, Some("c")),
            ]
        );
        assert!(
            err[3].message.starts_with("operation 5: "),
            "{}",
            err[3].message
        );
    }

    #[test]
    fn cycle_through_a_new_node_is_refused() {
        let err = rejected(
            &running_plan(),
            vec![
                DeltaOp::AddNode { node: node("e") },
                add_edge("c", "e"),
                add_edge("e", "d"),
                add_edge("d", "c"),
            ],
        );
        assert_eq!(codes(&err), [(DiagnosticCode::Cycle, Some("c"))]);
    }

    #[test]
    fn removing_an_absent_edge_is_unknown_edge() {
        let err = rejected(
            &running_plan(),
            vec![remove_edge("c", "d"), remove_edge("ghost", "d")],
        );
        assert_eq!(
            codes(&err),
            [
                (DiagnosticCode::UnknownEdge, Some("d")),
                (DiagnosticCode::UnknownEdge, Some("d")),
            ]
        );
    }

    #[test]
    fn later_operations_see_earlier_ones() {
        let base = running_plan();
        let err = rejected(
            &base,
            vec![
                remove_node("d"),
                add_edge("c", "d"),
                DeltaOp::AddNode { node: node("d") },
                add_edge("c", "d"),
                remove_node("d"),
                remove_node("d"),
            ],
        );
        assert_eq!(
            codes(&err),
            [
                (DiagnosticCode::DanglingEdge, Some("d")),
                (DiagnosticCode::UnknownNode, Some("d")),
            ]
        );
        assert!(err[0].message.starts_with("operation 2: "));
        assert!(err[1].message.starts_with("operation 6: "));
    }
}
