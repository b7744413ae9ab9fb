//! Builders shared by the graph module's tests.

use super::{
    DeltaOp, NodeState, PlanDelta, PlanDraft, PlanEdge, PlanGraph, PlanNode, PlanSnapshot,
};
use crate::catalog::CapabilityKind;
use crate::diagnostics::{Diagnostic, DiagnosticCode};

/// A node with a capability named after it.
pub(crate) fn node(id: &str) -> PlanNode {
    PlanNode {
        id: id.to_owned(),
        stage: "work".to_owned(),
        capability_id: format!("cap.{id}"),
        kind: CapabilityKind::Execution,
        input_facets: Vec::new(),
        output_facets: Vec::new(),
        instructions: Vec::new(),
        rationale: String::new(),
    }
}

pub(super) fn draft(ids: &[&str], edges: &[(&str, &str)]) -> PlanDraft {
    PlanDraft {
        nodes: ids.iter().map(|id| node(id)).collect(),
        edges: edges.iter().map(|(a, b)| PlanEdge::new(*a, *b)).collect(),
        system_instructions: "be brief".to_owned(),
        rationale: "initial".to_owned(),
    }
}

pub(super) fn plan(ids: &[&str], edges: &[(&str, &str)]) -> PlanGraph {
    PlanGraph::from_draft(&draft(ids, edges)).expect("valid test draft")
}

/// A plan read back from a snapshot, so its ids need not follow the identifier grammar (as
/// plans stored before it).
pub(super) fn stored_plan(ids: &[&str], edges: &[(&str, &str)]) -> PlanGraph {
    let snapshot = PlanSnapshot {
        version: 1,
        nodes: ids.iter().map(|id| node(id)).collect(),
        edges: edges.iter().map(|(a, b)| PlanEdge::new(*a, *b)).collect(),
        system_instructions: String::new(),
        rationale: String::new(),
    };
    PlanGraph::from_snapshot(&snapshot).expect("valid stored plan")
}

pub(super) fn delta(base_version: u32, operations: Vec<DeltaOp>) -> PlanDelta {
    PlanDelta {
        base_version,
        rationale: "replan".to_owned(),
        operations,
    }
}

pub(super) fn pending(_: &str) -> NodeState {
    NodeState::Pending
}

/// `(code, nodeId)` of each diagnostic, in order.
pub(super) fn codes(diagnostics: &[Diagnostic]) -> Vec<(DiagnosticCode, Option<&str>)> {
    diagnostics
        .iter()
        .map(|d| (d.code, d.node_id.as_deref()))
        .collect()
}
