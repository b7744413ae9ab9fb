//! Plan DTOs: the wire and storage shapes of drafts, deltas and plan nodes.
//!
//! These are stable, id-based shapes (never petgraph indices). The planner returns
//! [`PlanDraft`] for an initial plan and [`PlanDelta`] for a replan.

use serde::{Deserialize, Serialize};

use crate::catalog::CapabilityKind;

/// One node of a plan: a unit of work executed by one capability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanNode {
    /// Stable id, unique within a run, independent of position.
    pub id: String,
    /// Free-form stage label (e.g. `generation`, `qa`).
    #[serde(default)]
    pub stage: String,
    /// The capability that executes the node.
    pub capability_id: String,
    /// The node's kind; must match its capability's kind.
    pub kind: CapabilityKind,
    /// Facets the node consumes.
    #[serde(default)]
    pub input_facets: Vec<String>,
    /// Facets the node produces.
    #[serde(default)]
    pub output_facets: Vec<String>,
    /// Node-level instructions for the executor.
    #[serde(default)]
    pub instructions: Vec<String>,
    /// Why the planner put this node here.
    #[serde(default)]
    pub rationale: String,
}

/// A dependency: `to` may start only after `from` completed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PlanEdge {
    /// Upstream node id.
    pub from: String,
    /// Downstream node id.
    pub to: String,
}

impl PlanEdge {
    /// An edge from `from` to `to`.
    pub fn new(from: impl Into<String>, to: impl Into<String>) -> Self {
        Self {
            from: from.into(),
            to: to.into(),
        }
    }
}

/// An initial plan proposed by a planner.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanDraft {
    /// The nodes, in any order.
    pub nodes: Vec<PlanNode>,
    /// Dependencies between nodes.
    #[serde(default)]
    pub edges: Vec<PlanEdge>,
    /// Plan-level system instructions handed to every node.
    #[serde(default)]
    pub system_instructions: String,
    /// Why the planner chose this plan.
    #[serde(default)]
    pub rationale: String,
}

/// One operation of a delta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum DeltaOp {
    /// Add a new node.
    AddNode {
        /// The node to add.
        node: PlanNode,
    },
    /// Replace a pending node (same id).
    ReplaceNode {
        /// The replacement.
        node: PlanNode,
    },
    /// Remove a pending node and its edges.
    #[serde(rename_all = "camelCase")]
    RemoveNode {
        /// Id of the node to remove.
        node_id: String,
    },
    /// Add a dependency.
    AddEdge {
        /// Upstream node id.
        from: String,
        /// Downstream node id.
        to: String,
    },
    /// Remove a dependency.
    RemoveEdge {
        /// Upstream node id.
        from: String,
        /// Downstream node id.
        to: String,
    },
}

/// A change to a plan proposed by a planner during a replan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanDelta {
    /// The version the delta was computed against.
    pub base_version: u32,
    /// Why the planner proposes the change.
    #[serde(default)]
    pub rationale: String,
    /// The operations, applied in order.
    pub operations: Vec<DeltaOp>,
}

/// A persisted plan version: the stable DTO written to the store (nodes and edges by id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanSnapshot {
    /// Version number, starting at 1.
    pub version: u32,
    /// Nodes in insertion order.
    pub nodes: Vec<PlanNode>,
    /// Edges sorted by (from, to).
    pub edges: Vec<PlanEdge>,
    /// Plan-level system instructions.
    #[serde(default)]
    pub system_instructions: String,
    /// The rationale of the draft or delta that produced this version.
    #[serde(default)]
    pub rationale: String,
}

/// The structural difference between two plan versions.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanDiff {
    /// Version diffed from.
    pub from_version: u32,
    /// Version diffed to.
    pub to_version: u32,
    /// Ids of nodes only in the newer version, sorted.
    pub added_nodes: Vec<String>,
    /// Ids of nodes only in the older version, sorted.
    pub removed_nodes: Vec<String>,
    /// Ids of nodes in both versions whose content differs, sorted.
    pub changed_nodes: Vec<String>,
    /// Edges only in the newer version, sorted.
    pub added_edges: Vec<PlanEdge>,
    /// Edges only in the older version, sorted.
    pub removed_edges: Vec<PlanEdge>,
}

impl PlanDiff {
    /// True when the two versions are structurally identical.
    pub fn is_empty(&self) -> bool {
        self.added_nodes.is_empty()
            && self.removed_nodes.is_empty()
            && self.changed_nodes.is_empty()
            && self.added_edges.is_empty()
            && self.removed_edges.is_empty()
    }
}
