//! Semantic plan validation: capabilities, facets, data flow, contracts and planner limits.
//!
//! The structural checks (cycles, dangling edges, duplicate ids) belong to the graph module;
//! the checks here tolerate such input: dangling edges are ignored and cycles cannot make
//! the upstream search loop.
//!
//! Facet data flow honours dotted names: a facet `brief` — supplied by the run or produced
//! by a node — also provides `brief.tone`, not the other way round.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::catalog::{
    Capability, CapabilityKind, CapabilityRegistry, CompiledContract, ContractCache,
    ContractDirection, FacetCatalog,
};
use crate::diagnostics::{Diagnostic, DiagnosticCode, Severity};
use crate::graph::{PlanEdge, PlanNode};

/// Planner-policy limits a plan must respect. The default imposes none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanLimits {
    /// Most nodes a plan may have (frozen nodes included).
    pub max_nodes: Option<usize>,
    /// Capabilities no node may use.
    pub forbidden_capabilities: BTreeSet<String>,
    /// Kinds no node may have.
    pub forbidden_kinds: BTreeSet<CapabilityKind>,
    /// Capabilities at least one node must use.
    pub required_capabilities: BTreeSet<String>,
    /// Kinds at least one node must have.
    pub required_kinds: BTreeSet<CapabilityKind>,
}

/// Everything plan validation reads besides the plan itself.
#[derive(Debug, Clone, Copy)]
pub struct ValidationContext<'a> {
    /// Facet definitions.
    pub catalog: &'a FacetCatalog,
    /// Capability definitions.
    pub registry: &'a CapabilityRegistry,
    /// Shared compiled-contract cache.
    pub contracts: &'a ContractCache,
    /// Facets supplied by run inputs, plus facets produced by already-completed nodes on replans.
    pub available_facets: &'a BTreeSet<String>,
    /// The run's output contract facets.
    pub required_outputs: &'a [String],
    /// Planner-policy limits.
    pub limits: &'a PlanLimits,
    /// Completed or running node ids: their own checks are skipped; they still count as
    /// producers, for coverage and for the plan-level limits.
    pub frozen_nodes: &'a BTreeSet<String>,
}

/// Most ids listed in one hint.
const MAX_SUGGESTIONS: usize = 5;

/// Checks a plan's semantics and returns every problem found.
///
/// Order is deterministic: `POLICY_MAX_NODES_EXCEEDED`; then, for each non-frozen node in
/// the given order, its capability (`CAPABILITY_NOT_REGISTERED`, `CAPABILITY_INACTIVE`,
/// `CAPABILITY_KIND_MISMATCH`), policy (`POLICY_FORBIDDEN_CAPABILITY`,
/// `POLICY_FORBIDDEN_KIND`), input then output facets (`UNKNOWN_FACET`,
/// `CAPABILITY_FACET_MISMATCH`), input then output contracts (`FACET_CONTRACT_*`) and data
/// flow (`INPUT_FACET_UNSATISFIED`); then `OUTPUT_FACET_UNCOVERED` in the order of
/// [`ValidationContext::required_outputs`]; then `POLICY_REQUIREMENT_MISSING` (capabilities,
/// then kinds, each sorted).
pub fn check_plan(
    nodes: &[PlanNode],
    edges: &[PlanEdge],
    ctx: &ValidationContext<'_>,
) -> Vec<Diagnostic> {
    let index = PlanIndex::new(nodes, edges);
    let mut diagnostics = Vec::new();

    if let Some(max) = ctx.limits.max_nodes
        && nodes.len() > max
    {
        diagnostics.push(
            Diagnostic::error(
                DiagnosticCode::PolicyMaxNodesExceeded,
                format!(
                    "plan has {} nodes; the planner policy allows at most {max}",
                    nodes.len()
                ),
            )
            .hint(format!("merge or drop nodes to stay within {max}")),
        );
    }

    let mut visited = Visited::new(nodes.len());
    for (position, node) in nodes.iter().enumerate() {
        if ctx.frozen_nodes.contains(&node.id) {
            continue;
        }
        check_capability(node, ctx, &mut diagnostics);
        check_node_policy(node, ctx, &mut diagnostics);
        let capability = ctx.registry.get(&node.capability_id);
        check_node_facets(
            node,
            capability,
            ContractDirection::Input,
            ctx,
            &mut diagnostics,
        );
        check_node_facets(
            node,
            capability,
            ContractDirection::Output,
            ctx,
            &mut diagnostics,
        );
        check_node_contract(node, ContractDirection::Input, ctx, &mut diagnostics);
        check_node_contract(node, ContractDirection::Output, ctx, &mut diagnostics);
        check_inputs_satisfied(&index, position, ctx, &mut visited, &mut diagnostics);
    }

    check_outputs_covered(nodes, ctx, &mut diagnostics);
    check_requirements(nodes, ctx.limits, &mut diagnostics);
    diagnostics
}

/// Compiles the output contract of every node (frozen nodes included: a running node's
/// output is still validated), keyed by node id, through the shared cache.
///
/// After [`check_plan`] reported no error, this succeeds for every non-frozen node.
///
/// # Errors
///
/// The contract diagnostics of every node whose output contract does not compile, each
/// with its node and capability set.
pub fn compile_node_contracts(
    nodes: &[PlanNode],
    ctx: &ValidationContext<'_>,
) -> Result<BTreeMap<String, Arc<CompiledContract>>, Vec<Diagnostic>> {
    let mut contracts = BTreeMap::new();
    let mut diagnostics = Vec::new();
    for node in nodes {
        match ctx.contracts.get_or_compile(
            ctx.catalog,
            &node.output_facets,
            ContractDirection::Output,
        ) {
            Ok(contract) => {
                contracts.insert(node.id.clone(), contract);
            }
            Err(found) => diagnostics.extend(
                found
                    .into_iter()
                    .map(|d| d.node(&node.id).capability(&node.capability_id)),
            ),
        }
    }
    if diagnostics.is_empty() {
        Ok(contracts)
    } else {
        Err(diagnostics)
    }
}

fn check_capability(node: &PlanNode, ctx: &ValidationContext<'_>, out: &mut Vec<Diagnostic>) {
    let Some(capability) = ctx.registry.get(&node.capability_id) else {
        let suggestions = suggest_capabilities(node, ctx.registry);
        out.push(
            Diagnostic::error(
                DiagnosticCode::CapabilityNotRegistered,
                format!(
                    "node `{}` uses capability `{}`, which is not registered",
                    node.id, node.capability_id
                ),
            )
            .node(&node.id)
            .capability(&node.capability_id)
            .hint(alternatives_hint(&suggestions))
            .suggest(suggestions.iter().copied()),
        );
        return;
    };
    if !capability.is_active() {
        let suggestions = suggest_capabilities(node, ctx.registry);
        out.push(
            Diagnostic::error(
                DiagnosticCode::CapabilityInactive,
                format!(
                    "node `{}` uses capability `{}`, which is inactive",
                    node.id, node.capability_id
                ),
            )
            .node(&node.id)
            .capability(&node.capability_id)
            .hint(alternatives_hint(&suggestions))
            .suggest(suggestions.iter().copied()),
        );
    }
    if capability.kind != node.kind {
        out.push(kind_mismatch(node, capability, Severity::Error));
    }
}

/// `CAPABILITY_KIND_MISMATCH` for `node` against its `capability`: an error from
/// [`check_plan`], a warning where the engine uses the capability's kind instead.
pub(crate) fn kind_mismatch(
    node: &PlanNode,
    capability: &Capability,
    severity: Severity,
) -> Diagnostic {
    let mut message = format!(
        "node `{}` has kind {} but capability `{}` is {}",
        node.id,
        node.kind.as_str(),
        node.capability_id,
        capability.kind.as_str()
    );
    if severity == Severity::Warning {
        message.push_str("; the capability's kind was used");
    }
    let mut d = Diagnostic::error(DiagnosticCode::CapabilityKindMismatch, message)
        .node(&node.id)
        .capability(&node.capability_id)
        .hint(format!(
            "set the node's kind to `{}`",
            capability.kind.as_str()
        ));
    d.severity = severity;
    d
}

fn check_node_policy(node: &PlanNode, ctx: &ValidationContext<'_>, out: &mut Vec<Diagnostic>) {
    let limits = ctx.limits;
    if limits.forbidden_capabilities.contains(&node.capability_id) {
        let allowed: Vec<&str> = suggest_capabilities(node, ctx.registry)
            .into_iter()
            .filter(|id| !limits.forbidden_capabilities.contains(*id))
            .collect();
        out.push(
            Diagnostic::error(
                DiagnosticCode::PolicyForbiddenCapability,
                format!(
                    "node `{}` uses capability `{}`, which the planner policy forbids",
                    node.id, node.capability_id
                ),
            )
            .node(&node.id)
            .capability(&node.capability_id)
            .hint("use another capability producing the same facets")
            .suggest(allowed),
        );
    }
    if limits.forbidden_kinds.contains(&node.kind) {
        out.push(
            Diagnostic::error(
                DiagnosticCode::PolicyForbiddenKind,
                format!(
                    "node `{}` has kind {}, which the planner policy forbids",
                    node.id,
                    node.kind.as_str()
                ),
            )
            .node(&node.id)
            .capability(&node.capability_id)
            .hint("use a capability of an allowed kind"),
        );
    }
}

fn facets_of(node: &PlanNode, direction: ContractDirection) -> &[String] {
    match direction {
        ContractDirection::Input => &node.input_facets,
        ContractDirection::Output => &node.output_facets,
    }
}

fn check_node_facets(
    node: &PlanNode,
    capability: Option<&Capability>,
    direction: ContractDirection,
    ctx: &ValidationContext<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let side = direction.as_str();
    let mut seen = BTreeSet::new();
    for facet in facets_of(node, direction) {
        if !seen.insert(facet.as_str()) {
            continue;
        }
        if !ctx.catalog.contains(facet) {
            out.push(
                Diagnostic::error(
                    DiagnosticCode::UnknownFacet,
                    format!("node `{}` lists unknown {side} facet `{facet}`", node.id),
                )
                .node(&node.id)
                .capability(&node.capability_id)
                .facet(facet)
                .hint("use a facet registered in the catalog"),
            );
            continue;
        }
        let Some(capability) = capability else {
            continue;
        };
        let declared = match direction {
            ContractDirection::Input => &capability.input_facets,
            ContractDirection::Output => &capability.output_facets,
        };
        if !declared.contains(facet) {
            out.push(
                Diagnostic::error(
                    DiagnosticCode::CapabilityFacetMismatch,
                    format!(
                        "node `{}` lists {side} facet `{facet}`, which capability `{}` does not declare",
                        node.id, capability.capability_id
                    ),
                )
                .node(&node.id)
                .capability(&capability.capability_id)
                .facet(facet)
                .hint(format!(
                    "capability `{}` declares {side} facets: {}",
                    capability.capability_id,
                    quoted_list(declared.iter().map(String::as_str))
                )),
            );
        }
    }
}

fn check_node_contract(
    node: &PlanNode,
    direction: ContractDirection,
    ctx: &ValidationContext<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let Err(found) =
        ctx.contracts
            .get_or_compile(ctx.catalog, facets_of(node, direction), direction)
    else {
        return;
    };
    out.extend(
        found
            .into_iter()
            .filter(|d| d.code != DiagnosticCode::UnknownFacet)
            .map(|d| d.node(&node.id).capability(&node.capability_id)),
    );
}

fn check_inputs_satisfied(
    index: &PlanIndex<'_>,
    position: usize,
    ctx: &ValidationContext<'_>,
    visited: &mut Visited,
    out: &mut Vec<Diagnostic>,
) {
    let node = &index.nodes[position];
    let mut pending: Vec<&str> = Vec::new();
    for facet in &node.input_facets {
        if ctx.catalog.contains(facet)
            && !available_covers(ctx.available_facets, facet)
            && !pending.contains(&facet.as_str())
        {
            pending.push(facet);
        }
    }
    if pending.is_empty() {
        return;
    }
    let unsatisfied = index.unsatisfied_upstream(position, pending, visited);
    for facet in unsatisfied {
        let producers: Vec<&str> = index
            .nodes
            .iter()
            .enumerate()
            .filter(|(other, candidate)| *other != position && node_covers(candidate, facet))
            .map(|(_, candidate)| candidate.id.as_str())
            .take(MAX_SUGGESTIONS)
            .collect();
        let (hint, suggestions) = if let Some(first) = producers.first() {
            let hint = format!(
                "{} produces `{facet}` but is not upstream of `{}`: add an edge from `{first}` to `{}`",
                node_list(&producers),
                node.id,
                node.id
            );
            (hint, producers.clone())
        } else {
            (
                missing_producer_hint(facet, ctx.registry),
                producer_capabilities(facet, ctx.registry),
            )
        };
        out.push(
            Diagnostic::error(
                DiagnosticCode::InputFacetUnsatisfied,
                format!(
                    "node `{}` consumes facet `{facet}`, which no upstream node produces and the run does not supply",
                    node.id
                ),
            )
            .node(&node.id)
            .capability(&node.capability_id)
            .facet(facet)
            .hint(hint)
            .suggest(suggestions),
        );
    }
}

fn check_outputs_covered(
    nodes: &[PlanNode],
    ctx: &ValidationContext<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let mut seen = BTreeSet::new();
    for facet in ctx.required_outputs {
        if !seen.insert(facet.as_str()) {
            continue;
        }
        if available_covers(ctx.available_facets, facet)
            || nodes.iter().any(|node| node_covers(node, facet))
        {
            continue;
        }
        out.push(
            Diagnostic::error(
                DiagnosticCode::OutputFacetUncovered,
                format!("required output facet `{facet}` is produced by no node"),
            )
            .facet(facet)
            .hint(missing_producer_hint(facet, ctx.registry))
            .suggest(producer_capabilities(facet, ctx.registry)),
        );
    }
}

fn check_requirements(nodes: &[PlanNode], limits: &PlanLimits, out: &mut Vec<Diagnostic>) {
    for capability_id in &limits.required_capabilities {
        if !nodes.iter().any(|n| &n.capability_id == capability_id) {
            out.push(
                Diagnostic::error(
                    DiagnosticCode::PolicyRequirementMissing,
                    format!(
                        "the planner policy requires capability `{capability_id}`, which no node uses"
                    ),
                )
                .capability(capability_id)
                .hint(format!("add a node using `{capability_id}`")),
            );
        }
    }
    for kind in &limits.required_kinds {
        if !nodes.iter().any(|n| n.kind == *kind) {
            out.push(
                Diagnostic::error(
                    DiagnosticCode::PolicyRequirementMissing,
                    format!(
                        "the planner policy requires a node of kind {}, and the plan has none",
                        kind.as_str()
                    ),
                )
                .hint(format!("add a {} node", kind.as_str())),
            );
        }
    }
}

/// True when `produced` provides `wanted`: the same facet or a dotted ancestor of it.
fn covers(produced: &str, wanted: &str) -> bool {
    wanted
        .strip_prefix(produced)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

fn node_covers(node: &PlanNode, facet: &str) -> bool {
    node.output_facets.iter().any(|p| covers(p, facet))
}

fn available_covers(available: &BTreeSet<String>, facet: &str) -> bool {
    let mut candidate = facet;
    loop {
        if available.contains(candidate) {
            return true;
        }
        match candidate.rfind('.') {
            Some(dot) => candidate = &candidate[..dot],
            None => return false,
        }
    }
}

fn producer_capabilities<'r>(facet: &'r str, registry: &'r CapabilityRegistry) -> Vec<&'r str> {
    registry
        .producers_of(facet)
        .map(|c| c.capability_id.as_str())
        .take(MAX_SUGGESTIONS)
        .collect()
}

fn missing_producer_hint(facet: &str, registry: &CapabilityRegistry) -> String {
    let producers = producer_capabilities(facet, registry);
    if producers.is_empty() {
        format!("no active capability produces `{facet}`; it must be supplied as a run input")
    } else {
        format!(
            "add a node producing `{facet}` with capability {}",
            quoted_list(producers)
        )
    }
}

/// Active capabilities that produce every output of `node`, then those with a similar id.
fn suggest_capabilities<'r>(node: &PlanNode, registry: &'r CapabilityRegistry) -> Vec<&'r str> {
    let mut suggestions: Vec<&str> = Vec::new();
    if !node.output_facets.is_empty() {
        suggestions.extend(
            registry
                .active()
                .filter(|c| node.output_facets.iter().all(|f| c.produces(f)))
                .map(|c| c.capability_id.as_str()),
        );
    }
    for capability in registry.active() {
        let id = capability.capability_id.as_str();
        if id != node.capability_id
            && !suggestions.contains(&id)
            && similar_ids(&node.capability_id, id)
        {
            suggestions.push(id);
        }
    }
    suggestions.retain(|id| *id != node.capability_id);
    suggestions.truncate(MAX_SUGGESTIONS);
    suggestions
}

fn alternatives_hint(suggestions: &[&str]) -> String {
    if suggestions.is_empty() {
        "no active capability produces the same outputs; pick one from the capability list"
            .to_owned()
    } else {
        format!(
            "active capabilities producing the same outputs or with a similar id: {}",
            quoted_list(suggestions.iter().copied())
        )
    }
}

fn similar_ids(a: &str, b: &str) -> bool {
    let threshold = (a.chars().count().max(b.chars().count()) / 4).max(2);
    edit_distance(a, b) <= threshold
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

fn quoted_list<'s>(items: impl IntoIterator<Item = &'s str>) -> String {
    let quoted: Vec<String> = items.into_iter().map(|s| format!("`{s}`")).collect();
    if quoted.is_empty() {
        "none".to_owned()
    } else {
        quoted.join(", ")
    }
}

fn node_list(ids: &[&str]) -> String {
    match ids {
        [one] => format!("node `{one}`"),
        many => format!("nodes {}", quoted_list(many.iter().copied())),
    }
}

/// Node positions and upstream links, tolerant of duplicates, dangling edges and cycles.
struct PlanIndex<'n> {
    nodes: &'n [PlanNode],
    parents: Vec<Vec<usize>>,
}

impl<'n> PlanIndex<'n> {
    fn new(nodes: &'n [PlanNode], edges: &[PlanEdge]) -> Self {
        let mut positions: HashMap<&str, usize> = HashMap::with_capacity(nodes.len());
        for (position, node) in nodes.iter().enumerate() {
            positions.entry(node.id.as_str()).or_insert(position);
        }
        let mut parents = vec![Vec::new(); nodes.len()];
        for edge in edges {
            if let (Some(&from), Some(&to)) = (
                positions.get(edge.from.as_str()),
                positions.get(edge.to.as_str()),
            ) && from != to
            {
                parents[to].push(from);
            }
        }
        for list in &mut parents {
            list.sort_unstable();
            list.dedup();
        }
        Self { nodes, parents }
    }

    /// Walks the ancestors of `position` and returns the facets of `pending` none of them
    /// provides. Each node is visited at most once, so cycles terminate.
    fn unsatisfied_upstream<'f>(
        &self,
        position: usize,
        mut pending: Vec<&'f str>,
        visited: &mut Visited,
    ) -> Vec<&'f str> {
        visited.reset();
        visited.insert(position);
        let mut stack: Vec<usize> = self.parents[position].clone();
        while let Some(ancestor) = stack.pop() {
            if !visited.insert(ancestor) {
                continue;
            }
            let producer = &self.nodes[ancestor];
            pending.retain(|facet| !node_covers(producer, facet));
            if pending.is_empty() {
                break;
            }
            stack.extend(self.parents[ancestor].iter().copied());
        }
        pending
    }
}

/// A visited set over node positions, cleared in O(1) by bumping a stamp.
struct Visited {
    marks: Vec<u32>,
    stamp: u32,
}

impl Visited {
    fn new(len: usize) -> Self {
        Self {
            marks: vec![0; len],
            stamp: 0,
        }
    }

    fn reset(&mut self) {
        if self.stamp == u32::MAX {
            self.marks.fill(0);
            self.stamp = 0;
        }
        self.stamp += 1;
    }

    /// Marks `position`; false when it was already marked since the last reset.
    fn insert(&mut self, position: usize) -> bool {
        if self.marks[position] == self.stamp {
            false
        } else {
            self.marks[position] = self.stamp;
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::catalog::CapabilityKind::{
        Execution, Routing, Structuring, Transformation, Validation,
    };
    use crate::catalog::{AgentType, CapabilityStatus, ExecutorSpec, Facet, FacetDirection};

    fn facet(name: &str, direction: FacetDirection, schema: Value) -> Facet {
        Facet {
            name: name.to_owned(),
            title: String::new(),
            description: String::new(),
            direction,
            schema,
            instructions: String::new(),
            required_by_default: true,
        }
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn capability(id: &str, kind: CapabilityKind, inputs: &[&str], outputs: &[&str]) -> Capability {
        Capability {
            capability_id: id.to_owned(),
            version: "1.0.0".to_owned(),
            display_name: String::new(),
            summary: String::new(),
            kind,
            agent_type: AgentType::Ai,
            input_facets: strings(inputs),
            output_facets: strings(outputs),
            cost: 1.0,
            timeout_ms: 1_000,
            max_attempts: 1,
            fallback: None,
            executor: ExecutorSpec::Builtin {
                handler: id.to_owned(),
            },
            status: CapabilityStatus::Active,
        }
    }

    fn node(
        id: &str,
        capability_id: &str,
        kind: CapabilityKind,
        inputs: &[&str],
        outputs: &[&str],
    ) -> PlanNode {
        PlanNode {
            id: id.to_owned(),
            stage: String::new(),
            capability_id: capability_id.to_owned(),
            kind,
            input_facets: strings(inputs),
            output_facets: strings(outputs),
            instructions: Vec::new(),
            rationale: String::new(),
        }
    }

    struct Fixture {
        catalog: FacetCatalog,
        registry: CapabilityRegistry,
        contracts: ContractCache,
        available: BTreeSet<String>,
        outputs: Vec<String>,
        limits: PlanLimits,
        frozen: BTreeSet<String>,
    }

    impl Fixture {
        /// objective (input) → brief.writer → brief (+ brief.tone) → writer.en → copy → qa → review.
        fn new() -> Self {
            let mut catalog = FacetCatalog::new();
            for f in [
                facet(
                    "objective",
                    FacetDirection::Input,
                    json!({"type": "string"}),
                ),
                facet(
                    "brief",
                    FacetDirection::Bidirectional,
                    json!({"type": "object", "properties": {"audience": {"type": "string"}}}),
                ),
                facet(
                    "brief.tone",
                    FacetDirection::Bidirectional,
                    json!({"type": "string", "enum": ["formal", "casual"]}),
                ),
                facet(
                    "copy",
                    FacetDirection::Bidirectional,
                    json!({"type": "array", "items": {"type": "string"}}),
                ),
                facet("review", FacetDirection::Output, json!({"type": "string"})),
                facet(
                    "clash",
                    FacetDirection::Bidirectional,
                    json!({"type": "string"}),
                ),
                facet(
                    "clash.part",
                    FacetDirection::Bidirectional,
                    json!({"type": "string"}),
                ),
                facet(
                    "mood",
                    FacetDirection::Bidirectional,
                    json!({"type": "object", "properties": {"level": {"enum": ["low", "high"]}}}),
                ),
                facet(
                    "mood.level",
                    FacetDirection::Bidirectional,
                    json!({"enum": ["low", "mid"]}),
                ),
                facet(
                    "linked",
                    FacetDirection::Bidirectional,
                    json!({"$defs": {"s": {"type": "string"}}, "$ref": "#/$defs/s"}),
                ),
            ] {
                catalog.register(f).unwrap();
            }
            let mut registry = CapabilityRegistry::new();
            for c in [
                capability(
                    "brief.writer",
                    Structuring,
                    &["objective"],
                    &["brief", "brief.tone"],
                ),
                capability("writer.en", Execution, &["brief", "brief.tone"], &["copy"]),
                capability("writer.fr", Execution, &["brief"], &["copy"]),
                capability("qa", Validation, &["copy"], &["review"]),
                capability("legacy.qa", Validation, &["copy"], &["review"]),
                capability(
                    "odd",
                    Transformation,
                    &["review", "copy"],
                    &[
                        "objective",
                        "clash",
                        "clash.part",
                        "mood",
                        "mood.level",
                        "linked",
                    ],
                ),
            ] {
                registry.register(c).unwrap();
            }
            registry
                .set_status("legacy.qa", CapabilityStatus::Inactive)
                .unwrap();
            Self {
                catalog,
                registry,
                contracts: ContractCache::new(),
                available: BTreeSet::from(["objective".to_owned()]),
                outputs: strings(&["review"]),
                limits: PlanLimits::default(),
                frozen: BTreeSet::new(),
            }
        }

        fn ctx(&self) -> ValidationContext<'_> {
            ValidationContext {
                catalog: &self.catalog,
                registry: &self.registry,
                contracts: &self.contracts,
                available_facets: &self.available,
                required_outputs: &self.outputs,
                limits: &self.limits,
                frozen_nodes: &self.frozen,
            }
        }

        fn check(&self, nodes: &[PlanNode], edges: &[PlanEdge]) -> Vec<Diagnostic> {
            check_plan(nodes, edges, &self.ctx())
        }
    }

    fn good_plan() -> (Vec<PlanNode>, Vec<PlanEdge>) {
        (
            vec![
                node(
                    "brief",
                    "brief.writer",
                    Structuring,
                    &["objective"],
                    &["brief", "brief.tone"],
                ),
                node(
                    "write",
                    "writer.en",
                    Execution,
                    &["brief", "brief.tone"],
                    &["copy"],
                ),
                node("qa", "qa", Validation, &["copy"], &["review"]),
            ],
            vec![
                PlanEdge::new("brief", "write"),
                PlanEdge::new("write", "qa"),
            ],
        )
    }

    type Found<'d> = (DiagnosticCode, Option<&'d str>, Option<&'d str>);

    fn found(diagnostics: &[Diagnostic]) -> Vec<Found<'_>> {
        diagnostics
            .iter()
            .map(|d| (d.code, d.node_id.as_deref(), d.facet.as_deref()))
            .collect()
    }

    #[test]
    fn a_good_plan_passes_and_yields_output_contracts() {
        let fx = Fixture::new();
        let (nodes, edges) = good_plan();
        assert_eq!(fx.check(&nodes, &edges), []);
        let contracts = compile_node_contracts(&nodes, &fx.ctx()).unwrap();
        assert_eq!(
            contracts.keys().collect::<Vec<_>>(),
            ["brief", "qa", "write"]
        );
        let brief = &contracts["brief"];
        assert!(brief.is_valid(&json!({"brief": {"audience": "devs", "tone": "formal"}})));
        let messages = brief
            .validate_value(&json!({"brief": {"audience": "devs", "tone": "shouty"}}))
            .unwrap_err();
        assert!(messages[0].starts_with("/brief/tone: "), "{messages:?}");
    }

    #[test]
    fn unregistered_capability_suggests_producers_and_similar_ids() {
        let fx = Fixture::new();
        let (mut nodes, edges) = good_plan();
        nodes[1].capability_id = "writer.em".to_owned();
        let diags = fx.check(&nodes, &edges);
        assert_eq!(
            found(&diags),
            [(DiagnosticCode::CapabilityNotRegistered, Some("write"), None)]
        );
        assert_eq!(diags[0].capability_id.as_deref(), Some("writer.em"));
        let hint = diags[0].hint.as_deref().unwrap();
        assert!(
            hint.contains("`writer.en`") && hint.contains("`writer.fr`"),
            "{hint}"
        );
        assert!(!hint.contains("qa"), "{hint}");
    }

    #[test]
    fn inactive_capability_is_reported() {
        let fx = Fixture::new();
        let (mut nodes, edges) = good_plan();
        nodes[2].capability_id = "legacy.qa".to_owned();
        let diags = fx.check(&nodes, &edges);
        assert_eq!(
            found(&diags),
            [(DiagnosticCode::CapabilityInactive, Some("qa"), None)]
        );
        assert!(diags[0].hint.as_deref().unwrap().contains("`qa`"));
    }

    #[test]
    fn kind_mismatch_is_reported() {
        let fx = Fixture::new();
        let (mut nodes, edges) = good_plan();
        nodes[2].kind = Execution;
        let diags = fx.check(&nodes, &edges);
        assert_eq!(
            found(&diags),
            [(DiagnosticCode::CapabilityKindMismatch, Some("qa"), None)]
        );
        assert_eq!(diags[0].capability_id.as_deref(), Some("qa"));
        assert!(diags[0].message.contains("execution") && diags[0].message.contains("validation"));
    }

    #[test]
    fn unknown_facet_is_reported_once() {
        let fx = Fixture::new();
        let (mut nodes, edges) = good_plan();
        nodes[2].input_facets.push("ghost".to_owned());
        let diags = fx.check(&nodes, &edges);
        assert_eq!(
            found(&diags),
            [(DiagnosticCode::UnknownFacet, Some("qa"), Some("ghost"))]
        );
    }

    #[test]
    fn facet_not_declared_by_the_capability_is_reported() {
        let fx = Fixture::new();
        let (mut nodes, edges) = good_plan();
        nodes[1].input_facets = strings(&["brief", "objective"]);
        let diags = fx.check(&nodes, &edges);
        assert_eq!(
            found(&diags),
            [(
                DiagnosticCode::CapabilityFacetMismatch,
                Some("write"),
                Some("objective")
            )]
        );
        assert!(diags[0].hint.as_deref().unwrap().contains("`brief.tone`"));
    }

    #[test]
    fn uncovered_output_names_producing_capabilities() {
        let fx = Fixture::new();
        let (mut nodes, mut edges) = good_plan();
        nodes.pop();
        edges.pop();
        let diags = fx.check(&nodes, &edges);
        assert_eq!(
            found(&diags),
            [(DiagnosticCode::OutputFacetUncovered, None, Some("review"))]
        );
        let hint = diags[0].hint.as_deref().unwrap();
        assert!(hint.contains("`qa`") && !hint.contains("legacy"), "{hint}");
    }

    #[test]
    fn outputs_are_covered_by_available_facets_and_parents() {
        let mut fx = Fixture::new();
        fx.outputs = strings(&["brief.tone", "objective"]);
        let nodes = vec![node(
            "brief",
            "brief.writer",
            Structuring,
            &["objective"],
            &["brief"],
        )];
        assert_eq!(fx.check(&nodes, &[]), []);
    }

    #[test]
    fn missing_edge_is_hinted() {
        let fx = Fixture::new();
        let (nodes, _) = good_plan();
        let edges = vec![PlanEdge::new("brief", "write")];
        let diags = fx.check(&nodes, &edges);
        assert_eq!(
            found(&diags),
            [(
                DiagnosticCode::InputFacetUnsatisfied,
                Some("qa"),
                Some("copy")
            )]
        );
        assert_eq!(
            diags[0].hint.as_deref(),
            Some(
                "node `write` produces `copy` but is not upstream of `qa`: add an edge from `write` to `qa`"
            )
        );
    }

    #[test]
    fn inputs_are_satisfied_by_transitive_ancestors_and_nested_availability() {
        let mut fx = Fixture::new();
        fx.available = BTreeSet::from(["brief".to_owned()]);
        let nodes = vec![
            node(
                "write",
                "writer.en",
                Execution,
                &["brief", "brief.tone"],
                &["copy"],
            ),
            node("qa", "qa", Validation, &["copy"], &["review"]),
            node("odd", "odd", Transformation, &["copy"], &["clash"]),
        ];
        let edges = vec![PlanEdge::new("write", "qa"), PlanEdge::new("qa", "odd")];
        assert_eq!(fx.check(&nodes, &edges), []);
    }

    #[test]
    fn unproduced_input_hints_at_capabilities() {
        let mut fx = Fixture::new();
        fx.available.clear();
        let (nodes, edges) = good_plan();
        let diags = fx.check(&nodes, &edges);
        assert_eq!(
            found(&diags),
            [(
                DiagnosticCode::InputFacetUnsatisfied,
                Some("brief"),
                Some("objective")
            )]
        );
        assert_eq!(
            diags[0].hint.as_deref(),
            Some("add a node producing `objective` with capability `odd`")
        );
    }

    #[test]
    fn direction_mismatch_in_node_contracts() {
        let fx = Fixture::new();
        let nodes = vec![
            node("qa", "qa", Validation, &["copy"], &["review"]),
            node("odd", "odd", Transformation, &["review"], &["objective"]),
        ];
        let mut outputs_ok = fx;
        outputs_ok.available.insert("copy".to_owned());
        let diags = outputs_ok.check(&nodes, &[PlanEdge::new("qa", "odd")]);
        assert_eq!(
            found(&diags),
            [
                (
                    DiagnosticCode::FacetContractDirectionMismatch,
                    Some("odd"),
                    Some("review")
                ),
                (
                    DiagnosticCode::FacetContractDirectionMismatch,
                    Some("odd"),
                    Some("objective")
                ),
            ]
        );
        assert!(
            diags
                .iter()
                .all(|d| d.capability_id.as_deref() == Some("odd"))
        );
    }

    fn odd_node(outputs: &[&str]) -> Vec<PlanNode> {
        vec![
            node("qa", "qa", Validation, &["copy"], &["review"]),
            node("odd", "odd", Transformation, &[], outputs),
        ]
    }

    fn contract_fixture() -> Fixture {
        let mut fx = Fixture::new();
        fx.available.insert("copy".to_owned());
        fx
    }

    #[test]
    fn type_conflict_in_node_contract() {
        let fx = contract_fixture();
        let diags = fx.check(&odd_node(&["clash", "clash.part"]), &[]);
        assert_eq!(
            found(&diags),
            [(
                DiagnosticCode::FacetContractTypeConflict,
                Some("odd"),
                Some("clash.part")
            )]
        );
        let err =
            compile_node_contracts(&odd_node(&["clash", "clash.part"]), &fx.ctx()).unwrap_err();
        assert_eq!(
            found(&err),
            [(
                DiagnosticCode::FacetContractTypeConflict,
                Some("odd"),
                Some("clash.part")
            )]
        );
    }

    #[test]
    fn enum_conflict_in_node_contract() {
        let fx = contract_fixture();
        let diags = fx.check(&odd_node(&["mood", "mood.level"]), &[]);
        assert_eq!(
            found(&diags),
            [(
                DiagnosticCode::FacetContractEnumConflict,
                Some("odd"),
                Some("mood.level")
            )]
        );
    }

    #[test]
    fn invalid_merged_schema_in_node_contract() {
        let fx = contract_fixture();
        let diags = fx.check(&odd_node(&["linked"]), &[]);
        assert_eq!(
            found(&diags),
            [(
                DiagnosticCode::FacetContractSchemaInvalid,
                Some("odd"),
                Some("linked")
            )]
        );
    }

    #[test]
    fn policy_limits_are_enforced() {
        let mut fx = Fixture::new();
        fx.limits = PlanLimits {
            max_nodes: Some(2),
            forbidden_capabilities: BTreeSet::from(["writer.en".to_owned()]),
            forbidden_kinds: BTreeSet::from([Validation]),
            required_capabilities: BTreeSet::from(["writer.fr".to_owned()]),
            required_kinds: BTreeSet::from([Transformation]),
        };
        let (nodes, edges) = good_plan();
        let diags = fx.check(&nodes, &edges);
        assert_eq!(
            found(&diags),
            [
                (DiagnosticCode::PolicyMaxNodesExceeded, None, None),
                (
                    DiagnosticCode::PolicyForbiddenCapability,
                    Some("write"),
                    None
                ),
                (DiagnosticCode::PolicyForbiddenKind, Some("qa"), None),
                (DiagnosticCode::PolicyRequirementMissing, None, None),
                (DiagnosticCode::PolicyRequirementMissing, None, None),
            ]
        );
        assert_eq!(diags[3].capability_id.as_deref(), Some("writer.fr"));
        assert!(diags[4].message.contains("transformation"));
        assert!(diags[0].message.contains("3 nodes"));
    }

    #[test]
    fn frozen_nodes_are_skipped_but_still_produce() {
        let mut fx = Fixture::new();
        fx.frozen = BTreeSet::from(["write".to_owned()]);
        let (mut nodes, edges) = good_plan();
        nodes[1].capability_id = "retired".to_owned();
        nodes[1].kind = Routing;
        assert_eq!(fx.check(&nodes, &edges), []);
    }

    #[test]
    fn cycles_and_dangling_edges_terminate() {
        let fx = Fixture::new();
        let nodes = vec![
            node("a", "qa", Validation, &["copy"], &["review"]),
            node("b", "writer.fr", Execution, &["brief"], &["copy"]),
            node("a", "qa", Validation, &["copy"], &["review"]),
        ];
        let edges = vec![
            PlanEdge::new("a", "b"),
            PlanEdge::new("b", "a"),
            PlanEdge::new("a", "a"),
            PlanEdge::new("ghost", "a"),
            PlanEdge::new("b", "nowhere"),
        ];
        let diags = fx.check(&nodes, &edges);
        assert_eq!(
            found(&diags),
            [
                (
                    DiagnosticCode::InputFacetUnsatisfied,
                    Some("b"),
                    Some("brief")
                ),
                (
                    DiagnosticCode::InputFacetUnsatisfied,
                    Some("a"),
                    Some("copy")
                ),
            ],
            "the first `a` reaches `b` through the cycle; the duplicate has no edges"
        );
        assert_eq!(diags, fx.check(&nodes, &edges), "deterministic");
    }

    #[test]
    fn large_plans_reuse_a_few_contracts() {
        let fx = Fixture::new();
        let mut nodes = vec![node(
            "brief",
            "brief.writer",
            Structuring,
            &["objective"],
            &["brief", "brief.tone"],
        )];
        let mut edges = Vec::new();
        for i in 0..1_000 {
            let id = format!("write{i}");
            nodes.push(node(
                &id,
                "writer.en",
                Execution,
                &["brief", "brief.tone"],
                &["copy"],
            ));
            edges.push(PlanEdge::new(
                if i == 0 {
                    "brief".to_owned()
                } else {
                    format!("write{}", i - 1)
                },
                id,
            ));
        }
        nodes.push(node("qa", "qa", Validation, &["copy"], &["review"]));
        edges.push(PlanEdge::new("write999", "qa"));
        assert_eq!(fx.check(&nodes, &edges), []);
        let stats = fx.contracts.stats();
        assert_eq!(
            stats.misses, 6,
            "three nodes shapes, two directions: {stats:?}"
        );
        assert_eq!(stats.hits, 2 * 1_002 - 6);
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("writer.en", "writer.en"), 0);
        assert_eq!(edit_distance("writer.em", "writer.en"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert!(!similar_ids("qa", "writer.en"));
    }

    fn arbitrary_plan() -> impl Strategy<Value = (Vec<PlanNode>, Vec<PlanEdge>)> {
        let ids = ["a", "b", "c", "d", "e"];
        let caps = ["brief.writer", "writer.en", "qa", "odd", "nope"];
        let facets = [
            "objective",
            "brief",
            "brief.tone",
            "copy",
            "review",
            "clash",
            "ghost",
        ];
        let node_strategy = (
            proptest::sample::select(ids.to_vec()),
            proptest::sample::select(caps.to_vec()),
            proptest::sample::subsequence(facets.to_vec(), 0..3),
            proptest::sample::subsequence(facets.to_vec(), 0..3),
        )
            .prop_map(|(id, cap, inputs, outputs)| node(id, cap, Execution, &inputs, &outputs));
        let edge_strategy = (
            proptest::sample::select(vec!["a", "b", "c", "d", "e", "x"]),
            proptest::sample::select(vec!["a", "b", "c", "d", "e", "y"]),
        )
            .prop_map(|(from, to)| PlanEdge::new(from, to));
        (
            proptest::collection::vec(node_strategy, 0..6),
            proptest::collection::vec(edge_strategy, 0..12),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn arbitrary_graphs_are_checked_deterministically((nodes, edges) in arbitrary_plan()) {
            let fx = Fixture::new();
            let first = fx.check(&nodes, &edges);
            let second = fx.check(&nodes, &edges);
            prop_assert_eq!(&first, &second);
            for diagnostic in &first {
                if diagnostic.code == DiagnosticCode::InputFacetUnsatisfied {
                    prop_assert!(diagnostic.node_id.is_some() && diagnostic.facet.is_some());
                }
            }
        }
    }
}
