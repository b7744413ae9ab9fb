//! Plan DTOs: the wire and storage shapes of drafts, deltas and plan nodes.
//!
//! These are stable, id-based shapes (never petgraph indices). The planner returns
//! [`PlanDraft`] for an initial plan and [`PlanDelta`] for a replan.

use serde::{Deserialize, Serialize};

use crate::catalog::{Capability, CapabilityKind};

/// One node of a plan: a unit of work executed by one capability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanNode {
    /// Stable id, unique within a run, independent of position; an identifier (see
    /// [`crate::ids`]) of at most [`MAX_PREFIX_ID_LEN`](crate::ids::MAX_PREFIX_ID_LEN) bytes,
    /// checked when the draft or delta is validated.
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

/// Building plans by hand, in the catalog's style (see [`Facet::new`](crate::catalog::Facet::new)):
/// a constructor, then chainable `with_*` methods.
impl PlanNode {
    /// A node `id` executed by `capability`, consuming and producing the capability's facets,
    /// with no stage, instructions or rationale.
    ///
    /// ```
    /// use flexrun::catalog::{Capability, CapabilityKind, ExecutorSpec};
    /// use flexrun::graph::PlanNode;
    ///
    /// let writer = Capability::new(
    ///     "writer.en",
    ///     CapabilityKind::Execution,
    ///     ExecutorSpec::Builtin { handler: "write_copy".into() },
    /// )
    /// .with_input_facets(["writerBrief"])
    /// .with_output_facets(["copyVariants"]);
    /// let node = PlanNode::for_capability("write", &writer)
    ///     .with_stage("generation")
    ///     .with_instructions(["Keep each variant under 80 characters."]);
    /// assert_eq!(node.capability_id, "writer.en");
    /// assert_eq!(node.output_facets, ["copyVariants"]);
    /// ```
    pub fn for_capability(id: impl Into<String>, capability: &Capability) -> Self {
        Self {
            id: id.into(),
            stage: String::new(),
            capability_id: capability.capability_id.clone(),
            kind: capability.kind,
            input_facets: capability.input_facets.clone(),
            output_facets: capability.output_facets.clone(),
            instructions: Vec::new(),
            rationale: String::new(),
        }
    }

    /// The same node with stage label `stage`.
    pub fn with_stage(mut self, stage: impl Into<String>) -> Self {
        self.stage = stage.into();
        self
    }

    /// The same node with exactly `instructions` as its node-level instructions.
    pub fn with_instructions<S: Into<String>>(
        mut self,
        instructions: impl IntoIterator<Item = S>,
    ) -> Self {
        self.instructions = instructions.into_iter().map(Into::into).collect();
        self
    }

    /// The same node with the planner's reason for it.
    pub fn with_rationale(mut self, rationale: impl Into<String>) -> Self {
        self.rationale = rationale.into();
        self
    }

    /// The same node consuming exactly `facets` (a subset of its capability's, say).
    pub fn with_input_facets<S: Into<String>>(
        mut self,
        facets: impl IntoIterator<Item = S>,
    ) -> Self {
        self.input_facets = facets.into_iter().map(Into::into).collect();
        self
    }

    /// The same node producing exactly `facets`.
    pub fn with_output_facets<S: Into<String>>(
        mut self,
        facets: impl IntoIterator<Item = S>,
    ) -> Self {
        self.output_facets = facets.into_iter().map(Into::into).collect();
        self
    }
}

impl PlanDraft {
    /// A draft of `nodes` without edges, system instructions or rationale.
    ///
    /// ```
    /// use flexrun::catalog::{Capability, CapabilityKind, ExecutorSpec};
    /// use flexrun::graph::{PlanDraft, PlanEdge, PlanNode};
    ///
    /// let cap = Capability::new("step", CapabilityKind::Execution, ExecutorSpec::Human);
    /// let draft = PlanDraft::new([
    ///     PlanNode::for_capability("a", &cap),
    ///     PlanNode::for_capability("b", &cap),
    /// ])
    /// .with_edge("a", "b")
    /// .with_rationale("a before b");
    /// assert_eq!(draft.edges, [PlanEdge::new("a", "b")]);
    /// ```
    pub fn new(nodes: impl IntoIterator<Item = PlanNode>) -> Self {
        Self {
            nodes: nodes.into_iter().collect(),
            ..Self::default()
        }
    }

    /// The same draft with one more node.
    pub fn with_node(mut self, node: PlanNode) -> Self {
        self.nodes.push(node);
        self
    }

    /// The same draft with one more dependency: `to` starts after `from` completed.
    pub fn with_edge(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.edges.push(PlanEdge::new(from, to));
        self
    }

    /// The same draft with plan-level system instructions.
    pub fn with_system_instructions(mut self, instructions: impl Into<String>) -> Self {
        self.system_instructions = instructions.into();
        self
    }

    /// The same draft with the planner's reason for it.
    pub fn with_rationale(mut self, rationale: impl Into<String>) -> Self {
        self.rationale = rationale.into();
        self
    }
}

impl PlanDelta {
    /// A delta against plan version `base_version` without operations or rationale; add
    /// operations, applied in the order added, with the `with_*` methods.
    ///
    /// ```
    /// use flexrun::catalog::{Capability, CapabilityKind, ExecutorSpec};
    /// use flexrun::graph::{DeltaOp, PlanDelta, PlanNode};
    ///
    /// let qa = Capability::new("qa.copy", CapabilityKind::Validation, ExecutorSpec::Human);
    /// let delta = PlanDelta::new(1)
    ///     .with_added_node(PlanNode::for_capability("qa", &qa))
    ///     .with_added_edge("write", "qa")
    ///     .with_rationale("add a QA pass");
    /// assert_eq!(delta.operations.len(), 2);
    /// assert!(matches!(&delta.operations[1], DeltaOp::AddEdge { from, .. } if from == "write"));
    /// ```
    pub fn new(base_version: u32) -> Self {
        Self {
            base_version,
            rationale: String::new(),
            operations: Vec::new(),
        }
    }

    /// The same delta with one more operation.
    pub fn with_op(mut self, op: DeltaOp) -> Self {
        self.operations.push(op);
        self
    }

    /// The same delta, then adding `node`.
    pub fn with_added_node(self, node: PlanNode) -> Self {
        self.with_op(DeltaOp::AddNode { node })
    }

    /// The same delta, then replacing the pending node with `node`'s id by `node`.
    pub fn with_replaced_node(self, node: PlanNode) -> Self {
        self.with_op(DeltaOp::ReplaceNode { node })
    }

    /// The same delta, then removing the pending node `node_id` and its edges.
    pub fn with_removed_node(self, node_id: impl Into<String>) -> Self {
        self.with_op(DeltaOp::RemoveNode {
            node_id: node_id.into(),
        })
    }

    /// The same delta, then adding the dependency `from` → `to`.
    pub fn with_added_edge(self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.with_op(DeltaOp::AddEdge {
            from: from.into(),
            to: to.into(),
        })
    }

    /// The same delta, then removing the dependency `from` → `to`.
    pub fn with_removed_edge(self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.with_op(DeltaOp::RemoveEdge {
            from: from.into(),
            to: to.into(),
        })
    }

    /// The same delta with the planner's reason for it.
    pub fn with_rationale(mut self, rationale: impl Into<String>) -> Self {
        self.rationale = rationale.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::catalog::ExecutorSpec;

    fn writer() -> Capability {
        Capability::new(
            "writer.en",
            CapabilityKind::Execution,
            ExecutorSpec::Builtin {
                handler: "write_copy".into(),
            },
        )
        .with_input_facets(["writerBrief"])
        .with_output_facets(["copyVariants"])
    }

    #[test]
    fn a_node_for_a_capability_takes_its_id_kind_and_facets() {
        let node = PlanNode::for_capability("write", &writer())
            .with_stage("generation")
            .with_instructions(["short", "punchy"])
            .with_rationale("the brief asks for copy");
        assert_eq!(
            node,
            PlanNode {
                id: "write".into(),
                stage: "generation".into(),
                capability_id: "writer.en".into(),
                kind: CapabilityKind::Execution,
                input_facets: vec!["writerBrief".into()],
                output_facets: vec!["copyVariants".into()],
                instructions: vec!["short".into(), "punchy".into()],
                rationale: "the brief asks for copy".into(),
            }
        );
        let narrowed = PlanNode::for_capability("w", &writer())
            .with_input_facets(Vec::<String>::new())
            .with_output_facets(["copyVariants.0"]);
        assert!(narrowed.input_facets.is_empty());
        assert_eq!(narrowed.output_facets, ["copyVariants.0"]);
    }

    #[test]
    fn a_built_draft_reads_like_the_wire_form() {
        let draft = PlanDraft::new([PlanNode::for_capability("a", &writer())])
            .with_node(PlanNode::for_capability("b", &writer()))
            .with_edge("a", "b")
            .with_system_instructions("be brief")
            .with_rationale("two passes");
        let wire: PlanDraft = serde_json::from_value(json!({
            "nodes": [
                {"id": "a", "capabilityId": "writer.en", "kind": "execution",
                 "inputFacets": ["writerBrief"], "outputFacets": ["copyVariants"]},
                {"id": "b", "capabilityId": "writer.en", "kind": "execution",
                 "inputFacets": ["writerBrief"], "outputFacets": ["copyVariants"]}
            ],
            "edges": [{"from": "a", "to": "b"}],
            "systemInstructions": "be brief",
            "rationale": "two passes"
        }))
        .unwrap();
        assert_eq!(draft, wire);
    }

    #[test]
    fn a_built_delta_keeps_its_operations_in_order() {
        let node = PlanNode::for_capability("qa", &writer());
        let delta = PlanDelta::new(2)
            .with_added_node(node.clone())
            .with_replaced_node(node.clone().with_stage("qa"))
            .with_removed_node("old")
            .with_added_edge("write", "qa")
            .with_removed_edge("write", "old")
            .with_rationale("swap old for qa");
        assert_eq!(
            delta,
            PlanDelta {
                base_version: 2,
                rationale: "swap old for qa".into(),
                operations: vec![
                    DeltaOp::AddNode { node: node.clone() },
                    DeltaOp::ReplaceNode {
                        node: node.with_stage("qa")
                    },
                    DeltaOp::RemoveNode {
                        node_id: "old".into()
                    },
                    DeltaOp::AddEdge {
                        from: "write".into(),
                        to: "qa".into()
                    },
                    DeltaOp::RemoveEdge {
                        from: "write".into(),
                        to: "old".into()
                    },
                ],
            }
        );
    }
}
