//! The validation pipeline: structural checks (graph), semantic checks (catalog, policies),
//! and compilation of every node's output contract. Also envelope checks at submission.

use std::collections::BTreeSet;

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::{CatalogState, EngineError};
use crate::catalog::{CompiledContract, ContractDirection, compile_schema};
use crate::diagnostics::{Diagnostic, DiagnosticCode, Severity, has_errors};
use crate::envelope::{OutputContract, RunEnvelope};
use crate::fsm::{PlannerOutput, Purpose};
use crate::graph::{DeltaOp, NodeState, PlanGraph, PlanNode, PlanSnapshot};
use crate::ids::{IdKind, MAX_ID_LEN, RunId, check_id};
use crate::policy::{Condition, NormalizedPolicies};
use crate::validate::{PlanLimits, ValidationContext, check_plan, kind_mismatch};

/// A plan that passed validation, with its compiled node output contracts.
#[derive(Debug)]
pub(crate) struct Validated {
    pub(crate) graph: Arc<PlanGraph>,
    pub(crate) contracts: HashMap<String, Arc<CompiledContract>>,
    pub(crate) warnings: Vec<Diagnostic>,
}

fn limits_of(policies: &NormalizedPolicies) -> PlanLimits {
    let p = &policies.planner;
    PlanLimits {
        max_nodes: Some(p.max_nodes as usize),
        forbidden_capabilities: p.forbidden_capabilities.iter().cloned().collect(),
        forbidden_kinds: p.forbidden_kinds.iter().copied().collect(),
        required_capabilities: p.required_capabilities.iter().cloned().collect(),
        required_kinds: p.required_kinds.iter().copied().collect(),
    }
}

/// Validates a planner's output against the run, returning the next plan version.
///
/// `reply` holds what reading the planner's reply found (`REPLY_*` codes). An unreadable
/// reply is rejected with those alone; otherwise they are judged with the validator's own
/// findings: accepted plans carry the warnings, rejections carry everything.
#[allow(clippy::too_many_arguments)]
pub(crate) fn validate_output(
    output: &PlannerOutput,
    reply: Vec<Diagnostic>,
    purpose: Purpose,
    current: Option<&PlanGraph>,
    state: &dyn Fn(&str) -> NodeState,
    envelope: &RunEnvelope,
    required_outputs: &[String],
    facets: &Map<String, Value>,
    policies: &NormalizedPolicies,
    catalog: &CatalogState,
) -> Result<Validated, Vec<Diagnostic>> {
    let mut diagnostics = reply;
    let normalized = match output {
        PlannerOutput::Unparsed(_) => {
            if !has_errors(&diagnostics) {
                diagnostics.push(Diagnostic::error(
                    DiagnosticCode::ReplyNotJson,
                    "the reply could not be read as a draft or delta",
                ));
            }
            return Err(diagnostics);
        }
        PlannerOutput::Draft(_) | PlannerOutput::Delta(_) => {
            normalize_kinds(output, catalog, &mut diagnostics)
        }
    };
    let output = normalized.as_ref().unwrap_or(output);
    let built = match (output, purpose, current) {
        (PlannerOutput::Draft(draft), Purpose::Initial, _) => PlanGraph::from_draft(draft),
        (PlannerOutput::Delta(delta), Purpose::Replan, Some(base)) => {
            base.apply_delta(delta, state)
        }
        (PlannerOutput::Delta(_), Purpose::Replan, None) => Err(vec![Diagnostic::error(
            DiagnosticCode::PlannerOutputInvalid,
            "a delta was returned but the run has no plan to change",
        )]),
        (PlannerOutput::Draft(_), Purpose::Replan, _) => Err(vec![
            Diagnostic::error(
                DiagnosticCode::PlannerOutputInvalid,
                "a replan must return a delta, not a draft",
            )
            .hint("return {baseVersion, operations} against the current plan"),
        ]),
        (PlannerOutput::Delta(_), Purpose::Initial, _) => Err(vec![
            Diagnostic::error(
                DiagnosticCode::PlannerOutputInvalid,
                "an initial plan must be a draft, not a delta",
            )
            .hint("return {nodes, edges} for the whole plan"),
        ]),
        (PlannerOutput::Unparsed(_), _, _) => Err(Vec::new()),
    };
    let mut available: BTreeSet<String> = envelope.inputs.keys().cloned().collect();
    if purpose == Purpose::Replan {
        available.extend(facets.keys().cloned());
    }
    let limits = limits_of(policies);
    let graph = match built {
        Ok(graph) => graph,
        Err(found) => {
            diagnostics.extend(found);
            if let (PlannerOutput::Draft(draft), Purpose::Initial) = (output, purpose) {
                let no_frozen = BTreeSet::new();
                let ctx = ValidationContext {
                    catalog: &catalog.facets,
                    registry: &catalog.registry,
                    contracts: &catalog.contracts,
                    available_facets: &available,
                    required_outputs,
                    limits: &limits,
                    frozen_nodes: &no_frozen,
                };
                diagnostics.extend(check_plan(&draft.nodes, &draft.edges, &ctx));
            }
            return Err(diagnostics);
        }
    };
    let frozen: BTreeSet<String> = graph
        .nodes()
        .filter(|n| state(&n.id) != NodeState::Pending)
        .map(|n| n.id.clone())
        .collect();
    let ctx = ValidationContext {
        catalog: &catalog.facets,
        registry: &catalog.registry,
        contracts: &catalog.contracts,
        available_facets: &available,
        required_outputs,
        limits: &limits,
        frozen_nodes: &frozen,
    };
    match output {
        PlannerOutput::Draft(draft) => {
            diagnostics.extend(check_plan(&draft.nodes, &draft.edges, &ctx));
        }
        PlannerOutput::Delta(_) | PlannerOutput::Unparsed(_) => {
            let nodes: Vec<_> = graph.nodes().cloned().collect();
            diagnostics.extend(check_plan(&nodes, &graph.edges(), &ctx));
        }
    }
    if has_errors(&diagnostics) {
        return Err(diagnostics);
    }
    let contracts = match compile_contracts(&graph, catalog) {
        Ok(contracts) => contracts,
        Err(found) => {
            diagnostics.extend(found);
            return Err(diagnostics);
        }
    };
    Ok(Validated {
        graph: Arc::new(graph),
        contracts,
        warnings: diagnostics,
    })
}

/// A node's `kind` is fixed by its capability: a node of a registered capability whose kind
/// differs is given the capability's kind, with a `CAPABILITY_KIND_MISMATCH` warning.
/// Returns the corrected output when anything changed.
fn normalize_kinds(
    output: &PlannerOutput,
    catalog: &CatalogState,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<PlannerOutput> {
    let mut fix = |node: &mut PlanNode| -> bool {
        let Some(capability) = catalog.registry.get(&node.capability_id) else {
            return false;
        };
        if capability.kind == node.kind {
            return false;
        }
        diagnostics.push(kind_mismatch(node, capability, Severity::Warning));
        node.kind = capability.kind;
        true
    };
    let mismatched = |node: &PlanNode| {
        catalog
            .registry
            .get(&node.capability_id)
            .is_some_and(|c| c.kind != node.kind)
    };
    let any = match output {
        PlannerOutput::Draft(draft) => draft.nodes.iter().any(mismatched),
        PlannerOutput::Delta(delta) => delta.operations.iter().any(|op| match op {
            DeltaOp::AddNode { node } | DeltaOp::ReplaceNode { node } => mismatched(node),
            DeltaOp::RemoveNode { .. } | DeltaOp::AddEdge { .. } | DeltaOp::RemoveEdge { .. } => {
                false
            }
        }),
        PlannerOutput::Unparsed(_) => false,
    };
    if !any {
        return None;
    }
    let mut out = output.clone();
    let changed = match &mut out {
        PlannerOutput::Draft(draft) => draft.nodes.iter_mut().fold(false, |c, n| fix(n) | c),
        PlannerOutput::Delta(delta) => delta.operations.iter_mut().fold(false, |c, op| match op {
            DeltaOp::AddNode { node } | DeltaOp::ReplaceNode { node } => fix(node) | c,
            DeltaOp::RemoveNode { .. } | DeltaOp::AddEdge { .. } | DeltaOp::RemoveEdge { .. } => c,
        }),
        PlannerOutput::Unparsed(_) => false,
    };
    changed.then_some(out)
}

fn compile_contracts(
    graph: &PlanGraph,
    catalog: &CatalogState,
) -> Result<HashMap<String, Arc<CompiledContract>>, Vec<Diagnostic>> {
    let mut contracts = HashMap::with_capacity(graph.len());
    let mut problems = Vec::new();
    for node in graph.nodes() {
        match catalog.contracts.get_or_compile(
            &catalog.facets,
            &node.output_facets,
            ContractDirection::Output,
        ) {
            Ok(c) => {
                contracts.insert(node.id.clone(), c);
            }
            Err(ds) => problems.extend(ds.into_iter().map(|d| d.node(node.id.clone()))),
        }
    }
    if problems.is_empty() {
        Ok(contracts)
    } else {
        Err(problems)
    }
}

/// Rebuilds a stored plan version (on recovery) with its contracts.
pub(crate) fn revalidate(
    run: RunId,
    snapshot: &PlanSnapshot,
    catalog: &CatalogState,
) -> Result<Validated, EngineError> {
    let graph = PlanGraph::from_snapshot(snapshot).map_err(|e| EngineError::Corrupt {
        run,
        message: format!("stored plan version {} is corrupt: {e}", snapshot.version),
    })?;
    let contracts = compile_contracts(&graph, catalog).map_err(|ds| {
        let messages: Vec<String> = ds.iter().map(|d| d.message.clone()).collect();
        EngineError::Corrupt {
            run,
            message: format!(
                "stored plan contracts no longer compile: {}",
                messages.join("; ")
            ),
        }
    })?;
    Ok(Validated {
        graph: Arc::new(graph),
        contracts,
        warnings: Vec::new(),
    })
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> EngineError {
    EngineError::InvalidEnvelope {
        field: field.into(),
        message: message.into(),
    }
}

/// An `InvalidEnvelope` for a facet name that breaks the identifier grammar (checked before
/// the catalog is asked, so a refusal never quotes more than a short excerpt of it).
fn facet_name(field: String, name: &str) -> Result<(), EngineError> {
    check_id(IdKind::Facet, &field, name).map_err(|e| invalid(field, e.reason()))
}

/// Checks an envelope at submission and normalizes its policies.
pub(crate) fn check_envelope(
    envelope: &RunEnvelope,
    catalog: &CatalogState,
) -> Result<NormalizedPolicies, EngineError> {
    if envelope.objective.trim().is_empty() {
        return Err(invalid("objective", "must not be empty"));
    }
    for name in envelope.inputs.keys() {
        let field = if name.len() <= MAX_ID_LEN {
            format!("inputs.{name}")
        } else {
            "inputs".to_owned()
        };
        facet_name(field, name)?;
    }
    match &envelope.output_contract {
        OutputContract::Facets { facets } => {
            for (i, facet) in facets.iter().enumerate() {
                facet_name(format!("outputContract.facets[{i}]"), facet)?;
            }
        }
        OutputContract::JsonSchema { .. } => {
            for facet in envelope.output_contract.required_facets() {
                facet_name("outputContract.schema.required".to_owned(), &facet)?;
            }
        }
        OutputContract::Freeform { .. } => {}
    }
    match &envelope.output_contract {
        OutputContract::Facets { facets } => {
            if facets.is_empty() {
                return Err(invalid(
                    "outputContract.facets",
                    "must name at least one facet",
                ));
            }
            for (i, facet) in facets.iter().enumerate() {
                if !catalog.facets.contains(facet) {
                    return Err(invalid(
                        format!("outputContract.facets[{i}]"),
                        format!("unknown facet `{facet}`"),
                    ));
                }
            }
        }
        OutputContract::JsonSchema { schema } => {
            if let Err(ds) = compile_schema(schema) {
                let messages: Vec<String> = ds.iter().map(|d| d.message.clone()).collect();
                return Err(invalid("outputContract.schema", messages.join("; ")));
            }
            for facet in envelope.output_contract.required_facets() {
                if !catalog.facets.contains(&facet) {
                    return Err(invalid(
                        "outputContract.schema.required",
                        format!("unknown facet `{facet}`"),
                    ));
                }
            }
        }
        OutputContract::Freeform { instructions } => {
            if instructions.trim().is_empty() {
                return Err(invalid("outputContract.instructions", "must not be empty"));
            }
        }
    }
    for name in envelope.inputs.keys() {
        if !catalog.facets.contains(name) {
            return Err(invalid(
                format!("inputs.{name}"),
                format!("unknown facet `{name}`"),
            ));
        }
    }
    if let Some(rule) = &envelope.goal_conditions {
        Condition::compile(rule.clone()).map_err(|e| invalid("goalConditions", e.to_string()))?;
    }
    crate::policy::normalize(&envelope.policies).map_err(|source| {
        let path = source.path();
        let field = if path.is_empty() {
            "policies".to_owned()
        } else {
            format!("policies.{path}")
        };
        EngineError::InvalidPolicies { field, source }
    })
}

/// Checks the run's output contract and goal conditions once every node completed.
pub(crate) fn check_goal(
    envelope: &RunEnvelope,
    facets: &Map<String, Value>,
    output: &Value,
) -> Result<(), String> {
    if let OutputContract::JsonSchema { schema } = &envelope.output_contract {
        let contract = compile_schema(schema)
            .map_err(|_| "the output schema no longer compiles".to_owned())?;
        contract
            .validate_value(output)
            .map_err(|errors| errors.join("; "))?;
    }
    for facet in envelope.output_contract.required_facets() {
        if !facets.contains_key(&facet) {
            return Err(format!("required output facet `{facet}` was not produced"));
        }
    }
    let Some(rule) = &envelope.goal_conditions else {
        return Ok(());
    };
    let condition = Condition::compile(rule.clone()).map_err(|e| e.to_string())?;
    let data = serde_json::json!({ "inputs": envelope.inputs, "facets": facets, "output": output });
    match condition.evaluate(&data) {
        Ok(true) => Ok(()),
        Ok(false) => Err("the goal conditions do not hold".to_owned()),
        Err(e) => Err(format!("the goal conditions could not be evaluated: {e}")),
    }
}
