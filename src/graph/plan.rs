//! The immutable, versioned plan DAG and its read-only queries.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashSet};

use foldhash::{HashMap, HashMapExt};

use petgraph::Direction;
use petgraph::algo::tarjan_scc;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::{EdgeRef, IntoEdgeReferences, NodeIndexable};

use super::error::GraphError;
use super::model::{PlanDraft, PlanEdge, PlanNode, PlanSnapshot};
use crate::diagnostics::{Diagnostic, DiagnosticCode};
use crate::ids::{IdKind, MAX_ID_LEN, check_id};

/// At most this many node ids are listed in a cycle diagnostic's message.
const CYCLE_MESSAGE_IDS: usize = 8;

/// The execution status of a node at the time a delta is applied, as known by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Not started yet; a delta may replace or remove it.
    Pending,
    /// In flight; a delta must not touch it or its dependencies.
    Running,
    /// Finished; a delta must not touch it or its dependencies.
    Completed,
}

/// One immutable version of a plan: a DAG of [`PlanNode`]s keyed by stable string ids.
///
/// Node ids never depend on petgraph indices: lookups go through an id map, and node
/// iteration follows insertion order. Every `PlanGraph` is acyclic, has unique valid ids
/// and no duplicate edges. Changes produce a new version through
/// [`PlanGraph::apply_delta`]; the original is never mutated.
#[derive(Debug, Clone)]
pub struct PlanGraph {
    pub(super) version: u32,
    pub(super) graph: StableDiGraph<PlanNode, ()>,
    pub(super) index: HashMap<String, NodeIndex>,
    pub(super) order: Vec<NodeIndex>,
    pub(super) system_instructions: String,
    pub(super) rationale: String,
}

impl PartialEq for PlanGraph {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version
            && self.system_instructions == other.system_instructions
            && self.rationale == other.rationale
            && self.len() == other.len()
            && self.nodes().eq(other.nodes())
            && self.edges() == other.edges()
    }
}

impl Eq for PlanGraph {}

impl PlanGraph {
    pub(super) fn empty(version: u32, system_instructions: String, rationale: String) -> Self {
        Self {
            version,
            graph: StableDiGraph::new(),
            index: HashMap::new(),
            order: Vec::new(),
            system_instructions,
            rationale,
        }
    }

    /// Builds version 1 of a plan from a planner's draft.
    ///
    /// # Errors
    ///
    /// Returns every structural problem found, not just the first: `EMPTY_PLAN`,
    /// `INVALID_NODE_ID` (an id that breaks the identifier grammar of [`crate::ids`], with
    /// the pointer `/nodes/<i>/id`), `DUPLICATE_NODE_ID`, `DANGLING_EDGE`, `DUPLICATE_EDGE` and
    /// `CYCLE` (one per cycle, naming a node on it).
    pub fn from_draft(draft: &PlanDraft) -> Result<Self, Vec<Diagnostic>> {
        let mut diagnostics = Vec::new();
        if draft.nodes.is_empty() {
            diagnostics.push(
                Diagnostic::error(DiagnosticCode::EmptyPlan, "plan has no nodes")
                    .hint("propose at least one node"),
            );
        }
        let mut plan = Self::empty(
            1,
            draft.system_instructions.clone(),
            draft.rationale.clone(),
        );
        for (i, node) in draft.nodes.iter().enumerate() {
            if let Some(diagnostic) = check_node_id(&node.id, format!("/nodes/{i}/id")) {
                diagnostics.push(diagnostic);
            }
            if plan.contains(&node.id) {
                diagnostics.push(duplicate_node_id(&node.id));
                continue;
            }
            plan.insert_node(node.clone());
        }
        for edge in &draft.edges {
            let (from, to) = match (plan.index_of(&edge.from), plan.index_of(&edge.to)) {
                (Some(from), Some(to)) => (from, to),
                (from, to) => {
                    diagnostics.push(dangling_edge(
                        &edge.from,
                        &edge.to,
                        from.is_some(),
                        to.is_some(),
                    ));
                    continue;
                }
            };
            if from == to {
                diagnostics.push(self_loop(&edge.from));
            } else if plan.graph.find_edge(from, to).is_some() {
                diagnostics.push(duplicate_edge(&edge.from, &edge.to));
            } else {
                plan.graph.add_edge(from, to, ());
            }
        }
        diagnostics.extend(plan.cycle_diagnostics());
        if diagnostics.is_empty() {
            Ok(plan)
        } else {
            Err(diagnostics)
        }
    }

    /// Rebuilds a plan from its persisted form, keeping its version and node order.
    ///
    /// Node ids are held to what was accepted when plans may have been written (non-empty, no
    /// surrounding whitespace or control characters), not to the identifier grammar, which
    /// stored plans may predate.
    ///
    /// # Errors
    ///
    /// Returns a [`GraphError`] when the snapshot has an invalid or duplicate node id, an
    /// edge naming an unknown node, a duplicate edge, or a cycle.
    pub fn from_snapshot(snapshot: &PlanSnapshot) -> Result<Self, GraphError> {
        let mut plan = Self::empty(
            snapshot.version,
            snapshot.system_instructions.clone(),
            snapshot.rationale.clone(),
        );
        for node in &snapshot.nodes {
            if !stored_node_id_ok(&node.id) {
                return Err(GraphError::InvalidNodeId {
                    id: node.id.clone(),
                });
            }
            if plan.contains(&node.id) {
                return Err(GraphError::DuplicateNodeId {
                    id: node.id.clone(),
                });
            }
            plan.insert_node(node.clone());
        }
        for edge in &snapshot.edges {
            let (Some(from), Some(to)) = (plan.index_of(&edge.from), plan.index_of(&edge.to))
            else {
                return Err(GraphError::DanglingEdge {
                    from: edge.from.clone(),
                    to: edge.to.clone(),
                });
            };
            if from == to {
                return Err(GraphError::Cycle {
                    node: edge.from.clone(),
                });
            }
            if plan.graph.find_edge(from, to).is_some() {
                return Err(GraphError::DuplicateEdge {
                    from: edge.from.clone(),
                    to: edge.to.clone(),
                });
            }
            plan.graph.add_edge(from, to, ());
        }
        if let Some(node) = plan.cycle_members().first().and_then(|scc| scc.first()) {
            return Err(GraphError::Cycle {
                node: plan.graph[*node].id.clone(),
            });
        }
        Ok(plan)
    }

    /// The persisted form: nodes in insertion order, edges sorted by `(from, to)`.
    pub fn snapshot(&self) -> PlanSnapshot {
        PlanSnapshot {
            version: self.version,
            nodes: self.nodes().cloned().collect(),
            edges: self.edges(),
            system_instructions: self.system_instructions.clone(),
            rationale: self.rationale.clone(),
        }
    }

    /// The version number, starting at 1.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when the plan has no nodes.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The node with this id, if any.
    pub fn node(&self, id: &str) -> Option<&PlanNode> {
        self.index_of(id).map(|ix| &self.graph[ix])
    }

    /// True when a node has this id.
    pub fn contains(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    /// All nodes in insertion order.
    pub fn nodes(&self) -> impl Iterator<Item = &PlanNode> {
        self.order.iter().map(|&ix| &self.graph[ix])
    }

    /// All edges, sorted by `(from, to)`.
    pub fn edges(&self) -> Vec<PlanEdge> {
        let mut edges: Vec<PlanEdge> = self
            .graph
            .edge_references()
            .map(|edge| {
                PlanEdge::new(
                    self.graph[edge.source()].id.as_str(),
                    self.graph[edge.target()].id.as_str(),
                )
            })
            .collect();
        edges.sort_unstable();
        edges
    }

    /// Every node id in a topological order: each node comes after all its predecessors.
    ///
    /// The order is deterministic: among nodes that are ready at the same time, the one
    /// inserted first comes first.
    pub fn topo_order(&self) -> Vec<&str> {
        let ranks = self.ranks();
        let mut waiting = vec![0usize; self.graph.node_bound()];
        let mut ready = BinaryHeap::new();
        for &ix in &self.order {
            let in_degree = self
                .graph
                .neighbors_directed(ix, Direction::Incoming)
                .count();
            waiting[ix.index()] = in_degree;
            if in_degree == 0 {
                ready.push(Reverse((ranks[ix.index()], ix)));
            }
        }
        let mut out = Vec::with_capacity(self.len());
        while let Some(Reverse((_, ix))) = ready.pop() {
            out.push(self.graph[ix].id.as_str());
            for next in self.graph.neighbors_directed(ix, Direction::Outgoing) {
                waiting[next.index()] -= 1;
                if waiting[next.index()] == 0 {
                    ready.push(Reverse((ranks[next.index()], next)));
                }
            }
        }
        out
    }

    /// Ids of the direct predecessors of `id` (empty for an unknown id).
    ///
    /// The order is unspecified but stable for a given graph value.
    pub fn predecessors<'a>(&'a self, id: &str) -> impl Iterator<Item = &'a str> + use<'a> {
        self.neighbor_ids(id, Direction::Incoming)
    }

    /// Ids of the direct successors of `id` (empty for an unknown id).
    ///
    /// The order is unspecified but stable for a given graph value.
    pub fn successors<'a>(&'a self, id: &str) -> impl Iterator<Item = &'a str> + use<'a> {
        self.neighbor_ids(id, Direction::Outgoing)
    }

    /// Ids of nodes without predecessors, in insertion order.
    pub fn roots(&self) -> impl Iterator<Item = &str> {
        self.order
            .iter()
            .filter(|&&ix| {
                self.graph
                    .neighbors_directed(ix, Direction::Incoming)
                    .next()
                    .is_none()
            })
            .map(|&ix| self.graph[ix].id.as_str())
    }

    /// Ids of every node `id` transitively depends on, excluding `id` itself.
    pub fn ancestors(&self, id: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        let Some(start) = self.index_of(id) else {
            return found;
        };
        let mut seen = HashSet::from([start]);
        let mut stack = vec![start];
        while let Some(ix) = stack.pop() {
            for prev in self.graph.neighbors_directed(ix, Direction::Incoming) {
                if seen.insert(prev) {
                    found.insert(self.graph[prev].id.clone());
                    stack.push(prev);
                }
            }
        }
        found
    }

    /// Plan-level system instructions handed to every node.
    pub fn system_instructions(&self) -> &str {
        &self.system_instructions
    }

    /// The rationale of the draft or delta that produced this version.
    pub fn rationale(&self) -> &str {
        &self.rationale
    }

    fn neighbor_ids<'a>(
        &'a self,
        id: &str,
        direction: Direction,
    ) -> impl Iterator<Item = &'a str> + use<'a> {
        self.index_of(id)
            .into_iter()
            .flat_map(move |ix| self.graph.neighbors_directed(ix, direction))
            .map(move |ix| self.graph[ix].id.as_str())
    }

    pub(super) fn index_of(&self, id: &str) -> Option<NodeIndex> {
        self.index.get(id).copied()
    }

    pub(super) fn insert_node(&mut self, node: PlanNode) -> NodeIndex {
        let id = node.id.clone();
        let ix = self.graph.add_node(node);
        self.index.insert(id, ix);
        self.order.push(ix);
        ix
    }

    pub(super) fn remove_node(&mut self, ix: NodeIndex) {
        if let Some(node) = self.graph.remove_node(ix) {
            self.index.remove(&node.id);
            self.order.retain(|&other| other != ix);
        }
    }

    /// Insertion position of every live node, indexed by `NodeIndex::index()`.
    pub(super) fn ranks(&self) -> Vec<usize> {
        let mut ranks = vec![usize::MAX; self.graph.node_bound()];
        for (rank, ix) in self.order.iter().enumerate() {
            ranks[ix.index()] = rank;
        }
        ranks
    }

    /// The nodes of each cycle, each sorted by insertion order, cycles sorted by their
    /// first node. Self-loops are never stored, so only multi-node components count.
    fn cycle_members(&self) -> Vec<Vec<NodeIndex>> {
        let ranks = self.ranks();
        let mut cycles: Vec<Vec<NodeIndex>> = tarjan_scc(&self.graph)
            .into_iter()
            .filter(|component| component.len() > 1)
            .map(|mut component| {
                component.sort_unstable_by_key(|ix| ranks[ix.index()]);
                component
            })
            .collect();
        cycles.sort_unstable_by_key(|component| ranks[component[0].index()]);
        cycles
    }

    /// One `CYCLE` diagnostic per cycle, naming its earliest-inserted node.
    pub(super) fn cycle_diagnostics(&self) -> Vec<Diagnostic> {
        self.cycle_members()
            .into_iter()
            .map(|component| {
                let mut listed: Vec<String> = component
                    .iter()
                    .take(CYCLE_MESSAGE_IDS)
                    .map(|&ix| format!("`{}`", self.graph[ix].id))
                    .collect();
                if component.len() > CYCLE_MESSAGE_IDS {
                    listed.push(format!("{} more", component.len() - CYCLE_MESSAGE_IDS));
                }
                let first = &self.graph[component[0]].id;
                Diagnostic::error(
                    DiagnosticCode::Cycle,
                    format!(
                        "nodes {} depend on each other in a cycle",
                        listed.join(", ")
                    ),
                )
                .node(first.as_str())
                .hint("remove an edge so that the plan is acyclic")
            })
            .collect()
    }
}

/// An `INVALID_NODE_ID` diagnostic at `pointer` (the id's place in the draft or delta) when
/// `id` breaks the identifier grammar.
pub(super) fn check_node_id(id: &str, pointer: String) -> Option<Diagnostic> {
    let error = check_id(IdKind::Node, &pointer, id).err()?;
    let mut diagnostic = Diagnostic::error(
        DiagnosticCode::InvalidNodeId,
        format!("node id {} is invalid: {}", error.found(), error.problem()),
    )
    .at(pointer)
    .expected_found(IdKind::Node.expected(), error.found())
    .hint("rename the node, e.g. `write-copy` or `qa.check`, and use the new id in its edges");
    if id.len() <= MAX_ID_LEN {
        diagnostic = diagnostic.node(id);
    }
    Some(diagnostic)
}

/// What node ids were held to before the identifier grammar: non-empty, no surrounding
/// whitespace, no control characters.
fn stored_node_id_ok(id: &str) -> bool {
    !id.is_empty() && id.trim() == id && !id.chars().any(char::is_control)
}

pub(super) fn duplicate_node_id(id: &str) -> Diagnostic {
    Diagnostic::error(
        DiagnosticCode::DuplicateNodeId,
        format!("node id `{id}` is used more than once"),
    )
    .node(id)
    .hint("give every node a unique id")
}

/// A `DANGLING_EDGE` diagnostic naming the missing endpoint (`from` when both are missing).
pub(super) fn dangling_edge(from: &str, to: &str, from_known: bool, to_known: bool) -> Diagnostic {
    let (missing, what) = match (from_known, to_known) {
        (false, false) => (from, format!("unknown nodes `{from}` and `{to}`")),
        (false, true) => (from, format!("unknown node `{from}`")),
        (true, false) | (true, true) => (to, format!("unknown node `{to}`")),
    };
    Diagnostic::error(
        DiagnosticCode::DanglingEdge,
        format!("edge `{from}` -> `{to}` names {what}"),
    )
    .node(missing)
    .hint("edges may only connect nodes of the plan")
}

/// A `DUPLICATE_EDGE` diagnostic, naming the edge's downstream node.
pub(super) fn duplicate_edge(from: &str, to: &str) -> Diagnostic {
    Diagnostic::error(
        DiagnosticCode::DuplicateEdge,
        format!("edge `{from}` -> `{to}` already exists"),
    )
    .node(to)
}

/// A `CYCLE` diagnostic for an edge from a node to itself.
pub(super) fn self_loop(id: &str) -> Diagnostic {
    Diagnostic::error(
        DiagnosticCode::Cycle,
        format!("edge `{id}` -> `{id}` makes node `{id}` depend on itself"),
    )
    .node(id)
    .hint("remove the self-dependency")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::DeltaOp;
    use crate::graph::testing::{codes, delta, draft, node, pending, plan};

    fn ids<'a>(iter: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
        iter.collect()
    }

    #[test]
    fn draft_becomes_version_one_in_insertion_order() {
        let g = plan(
            &["write", "brief", "qa"],
            &[("write", "qa"), ("brief", "write")],
        );
        assert_eq!(g.version(), 1);
        assert_eq!(g.len(), 3);
        assert!(!g.is_empty());
        assert_eq!(
            g.nodes().map(|n| n.id.as_str()).collect::<Vec<_>>(),
            ["write", "brief", "qa"]
        );
        assert_eq!(
            g.edges(),
            [
                PlanEdge::new("brief", "write"),
                PlanEdge::new("write", "qa")
            ]
        );
        assert_eq!(g.system_instructions(), "be brief");
        assert_eq!(g.rationale(), "initial");
        assert_eq!(g.node("qa"), Some(&node("qa")));
        assert!(g.contains("brief"));
        assert!(!g.contains("nope"));
        assert_eq!(g.node("nope"), None);
    }

    #[test]
    fn empty_draft_is_empty_plan() {
        let err = PlanGraph::from_draft(&draft(&[], &[])).unwrap_err();
        assert_eq!(codes(&err), [(DiagnosticCode::EmptyPlan, None)]);
    }

    #[test]
    fn invalid_ids_are_reported_with_their_place() {
        let long = "x".repeat(IdKind::Node.max_len() + 1);
        let ok_long = "y".repeat(IdKind::Node.max_len());
        let bad = [
            "",
            "   ",
            " padded",
            "line\nbreak",
            long.as_str(),
            "a/b",
            "../up",
            "odd \"id\"",
        ];
        let mut all: Vec<&str> = bad.to_vec();
        all.push(&ok_long);
        all.push("ns:write@2.qa-1_x");
        let err = PlanGraph::from_draft(&draft(&all, &[])).unwrap_err();
        let expected: Vec<_> = bad
            .iter()
            .map(|id| (DiagnosticCode::InvalidNodeId, Some(*id)))
            .collect();
        assert_eq!(codes(&err), expected);
        for (i, d) in err.iter().enumerate() {
            assert_eq!(
                d.pointer.as_deref(),
                Some(format!("/nodes/{i}/id").as_str())
            );
            assert_eq!(
                d.expected.as_deref(),
                Some(IdKind::Node.expected().as_str())
            );
            let found = d.found.as_deref().unwrap();
            if bad[i].len() <= 48 {
                assert_eq!(found, format!("{:?}", bad[i]));
            } else {
                assert!(
                    found.starts_with("\"xxx") && found.ends_with('…'),
                    "{found}"
                );
            }
        }
    }

    #[test]
    fn a_huge_id_is_quoted_short_and_not_echoed_as_the_node() {
        let huge = "z".repeat(1_000_000);
        let err = PlanGraph::from_draft(&draft(&[huge.as_str()], &[])).unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].node_id, None);
        assert!(err[0].message.len() < 200, "{}", err[0].message);
        assert!(err[0].found.as_ref().unwrap().ends_with('…'));
    }

    #[test]
    fn stored_snapshots_keep_the_ids_they_were_written_with() {
        let mut snapshot = plan(&["a"], &[]).snapshot();
        snapshot.nodes[0].id = "old id/with slash".into();
        let restored = PlanGraph::from_snapshot(&snapshot).unwrap();
        assert!(restored.contains("old id/with slash"));
    }

    #[test]
    fn duplicate_ids_are_reported() {
        let err = PlanGraph::from_draft(&draft(&["a", "b", "a"], &[])).unwrap_err();
        assert_eq!(codes(&err), [(DiagnosticCode::DuplicateNodeId, Some("a"))]);
        assert!(err[0].message.contains("`a`"), "{}", err[0].message);
    }

    #[test]
    fn dangling_edges_name_the_missing_endpoint() {
        let err = PlanGraph::from_draft(&draft(
            &["a", "b"],
            &[("a", "ghost"), ("phantom", "b"), ("x", "y")],
        ))
        .unwrap_err();
        assert_eq!(
            codes(&err),
            [
                (DiagnosticCode::DanglingEdge, Some("ghost")),
                (DiagnosticCode::DanglingEdge, Some("phantom")),
                (DiagnosticCode::DanglingEdge, Some("x")),
            ]
        );
        assert!(err[2].message.contains("`x` and `y`"), "{}", err[2].message);
    }

    #[test]
    fn duplicate_edges_name_the_downstream_node() {
        let err =
            PlanGraph::from_draft(&draft(&["a", "b"], &[("a", "b"), ("a", "b")])).unwrap_err();
        assert_eq!(codes(&err), [(DiagnosticCode::DuplicateEdge, Some("b"))]);
    }

    #[test]
    fn cycles_name_their_earliest_inserted_node() {
        let err = PlanGraph::from_draft(&draft(
            &["x", "c", "b", "a", "p", "q"],
            &[
                ("x", "a"),
                ("a", "b"),
                ("b", "c"),
                ("c", "a"),
                ("q", "p"),
                ("p", "q"),
            ],
        ))
        .unwrap_err();
        assert_eq!(
            codes(&err),
            [
                (DiagnosticCode::Cycle, Some("c")),
                (DiagnosticCode::Cycle, Some("p")),
            ]
        );
        assert!(
            err[0].message.contains("`c`, `b`, `a`"),
            "{}",
            err[0].message
        );
    }

    #[test]
    fn self_loop_is_a_cycle() {
        let err = PlanGraph::from_draft(&draft(&["a"], &[("a", "a")])).unwrap_err();
        assert_eq!(codes(&err), [(DiagnosticCode::Cycle, Some("a"))]);
    }

    #[test]
    fn all_structural_problems_are_collected() {
        let err = PlanGraph::from_draft(&draft(
            &["a", "b", "a", ""],
            &[("a", "b"), ("b", "a"), ("a", "zz"), ("a", "b")],
        ))
        .unwrap_err();
        assert_eq!(
            codes(&err),
            [
                (DiagnosticCode::DuplicateNodeId, Some("a")),
                (DiagnosticCode::InvalidNodeId, Some("")),
                (DiagnosticCode::DanglingEdge, Some("zz")),
                (DiagnosticCode::DuplicateEdge, Some("b")),
                (DiagnosticCode::Cycle, Some("a")),
            ]
        );
    }

    #[test]
    fn topo_order_breaks_ties_by_insertion_order() {
        assert_eq!(plan(&["c", "a", "b"], &[]).topo_order(), ["c", "a", "b"]);
        let g = plan(&["c", "a", "b", "d"], &[("b", "c"), ("d", "a")]);
        assert_eq!(g.topo_order(), ["b", "c", "d", "a"]);
    }

    #[test]
    fn neighbourhood_queries() {
        let g = plan(
            &["a", "b", "c", "d", "e"],
            &[("a", "c"), ("b", "c"), ("c", "d"), ("e", "d")],
        );
        let mut preds = ids(g.predecessors("c"));
        preds.sort_unstable();
        assert_eq!(preds, ["a", "b"]);
        assert_eq!(ids(g.successors("c")), ["d"]);
        assert_eq!(ids(g.successors("d")), Vec::<&str>::new());
        assert_eq!(ids(g.roots()), ["a", "b", "e"]);
        assert_eq!(
            g.ancestors("d"),
            BTreeSet::from(["a", "b", "c", "e"].map(String::from))
        );
        assert!(g.ancestors("a").is_empty());
        assert_eq!(g.predecessors("missing").count(), 0);
        assert_eq!(g.successors("missing").count(), 0);
        assert!(g.ancestors("missing").is_empty());
    }

    #[test]
    fn predecessors_outlive_the_queried_id() {
        let g = plan(&["a", "b"], &[("a", "b")]);
        let preds = {
            let id = String::from("b");
            g.predecessors(&id)
        };
        assert_eq!(preds.collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn snapshot_round_trips() {
        let g = plan(&["b", "a", "c"], &[("b", "c"), ("a", "c")]);
        let snap = g.snapshot();
        assert_eq!(snap.version, 1);
        assert_eq!(
            snap.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
            ["b", "a", "c"]
        );
        assert_eq!(
            snap.edges,
            [PlanEdge::new("a", "c"), PlanEdge::new("b", "c")]
        );
        let back = PlanGraph::from_snapshot(&snap).unwrap();
        assert_eq!(back, g);
        assert_eq!(back.snapshot(), snap);
        let json = serde_json::to_string(&snap).unwrap();
        let parsed: PlanSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(PlanGraph::from_snapshot(&parsed).unwrap(), g);
    }

    #[test]
    fn ids_stay_stable_when_holes_are_reused() {
        let base = plan(&["a", "b", "c"], &[("a", "b"), ("b", "c")]);
        let next = base
            .apply_delta(
                &delta(
                    1,
                    vec![
                        DeltaOp::RemoveNode {
                            node_id: "b".into(),
                        },
                        DeltaOp::AddNode { node: node("d") },
                        DeltaOp::AddEdge {
                            from: "a".into(),
                            to: "d".into(),
                        },
                        DeltaOp::AddEdge {
                            from: "d".into(),
                            to: "c".into(),
                        },
                    ],
                ),
                &pending,
            )
            .unwrap();
        assert_eq!(next.node("b"), None);
        assert_eq!(next.node("d"), Some(&node("d")));
        assert_eq!(next.node("c"), Some(&node("c")));
        assert_eq!(
            next.nodes().map(|n| n.id.as_str()).collect::<Vec<_>>(),
            ["a", "c", "d"]
        );
        assert_eq!(ids(next.predecessors("c")), ["d"]);
        assert_eq!(ids(next.successors("a")), ["d"]);
        assert_eq!(next.topo_order(), ["a", "d", "c"]);
        let back = PlanGraph::from_snapshot(&next.snapshot()).unwrap();
        assert_eq!(back, next);
        assert_eq!(back.topo_order(), ["a", "d", "c"]);
        assert_eq!(base.node("b"), Some(&node("b")));
        assert_eq!(ids(base.successors("a")), ["b"]);
    }

    #[test]
    fn corrupt_snapshots_are_refused() {
        let good = plan(&["a", "b"], &[("a", "b")]).snapshot();

        let mut dup = good.clone();
        dup.nodes.push(node("a"));
        assert_eq!(
            PlanGraph::from_snapshot(&dup),
            Err(GraphError::DuplicateNodeId { id: "a".into() })
        );

        let mut invalid = good.clone();
        invalid.nodes.push(node(""));
        assert_eq!(
            PlanGraph::from_snapshot(&invalid),
            Err(GraphError::InvalidNodeId { id: String::new() })
        );

        let mut dangling = good.clone();
        dangling.edges.push(PlanEdge::new("b", "z"));
        assert_eq!(
            PlanGraph::from_snapshot(&dangling),
            Err(GraphError::DanglingEdge {
                from: "b".into(),
                to: "z".into()
            })
        );

        let mut twice = good.clone();
        twice.edges.push(PlanEdge::new("a", "b"));
        assert_eq!(
            PlanGraph::from_snapshot(&twice),
            Err(GraphError::DuplicateEdge {
                from: "a".into(),
                to: "b".into()
            })
        );

        let mut cyclic = good.clone();
        cyclic.edges.push(PlanEdge::new("b", "a"));
        assert_eq!(
            PlanGraph::from_snapshot(&cyclic),
            Err(GraphError::Cycle { node: "a".into() })
        );
        assert_eq!(
            GraphError::Cycle { node: "a".into() }.to_string(),
            "snapshot has a cycle through node `a`"
        );
    }
}
