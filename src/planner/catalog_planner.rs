//! `CatalogPlanner`: the deterministic, offline default planner.
//!
//! Initial plans chain registered capabilities backwards from the required output facets to
//! the facets the run's inputs supply. Replans answer with a minimal delta: a validation
//! (QA) capability after the triggering node when one fits, else an alternative producer of
//! that node's outputs. A replan an `onBudget` policy asked for replaces the nodes not yet
//! completed by cheaper capabilities that do the same work, when the catalog has them, and
//! drops those whose outputs nothing needs.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;

use super::{PlanRequest, PlanResponse, Planner, PlannerError, Purpose};
use crate::catalog::{Capability, CapabilityKind, CapabilityStatus};
use crate::diagnostics::DiagnosticCode;
use crate::fsm::PlannerOutput;
use crate::graph::{DeltaOp, PlanDelta, PlanDraft, PlanEdge, PlanNode, PlanSnapshot};
use crate::policy::PolicyTrigger;

/// The deterministic catalog-chaining planner (the embedded default).
#[derive(Debug, Clone, Copy, Default)]
pub struct CatalogPlanner;

#[async_trait]
impl Planner for CatalogPlanner {
    fn name(&self) -> &str {
        "catalog"
    }

    async fn plan(&self, request: PlanRequest) -> Result<PlanResponse, PlannerError> {
        let output = match request.purpose {
            Purpose::Initial => PlannerOutput::Draft(draft(&request)?),
            Purpose::Replan => PlannerOutput::Delta(delta(&request)?),
        };
        Ok(PlanResponse::new(output))
    }
}

/// Capabilities the planner may use for this request, cheapest first.
fn candidates(req: &PlanRequest) -> Vec<&Capability> {
    let policy = &req.policies.planner;
    let mut excluded: BTreeSet<&str> = policy
        .forbidden_capabilities
        .iter()
        .map(String::as_str)
        .collect();
    for d in &req.diagnostics {
        let blames_capability = matches!(
            d.code,
            DiagnosticCode::CapabilityNotRegistered
                | DiagnosticCode::CapabilityInactive
                | DiagnosticCode::CapabilityKindMismatch
                | DiagnosticCode::CapabilityFacetMismatch
                | DiagnosticCode::PolicyForbiddenCapability
        );
        if let (true, Some(cap)) = (blames_capability, d.capability_id.as_deref()) {
            excluded.insert(cap);
        }
    }
    let mut caps: Vec<&Capability> = req
        .capabilities
        .iter()
        .filter(|c| c.status == CapabilityStatus::Active)
        .filter(|c| !excluded.contains(c.capability_id.as_str()))
        .filter(|c| !policy.forbidden_kinds.contains(&c.kind))
        .collect();
    caps.sort_by(|a, b| {
        a.cost
            .total_cmp(&b.cost)
            .then_with(|| a.capability_id.cmp(&b.capability_id))
    });
    caps
}

fn node_id_for(capability_id: &str, taken: &dyn Fn(&str) -> bool) -> String {
    let base: String = capability_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let mut id = base.clone();
    let mut n = 2;
    while taken(&id) {
        id = format!("{base}-{n}");
        n += 1;
    }
    id
}

fn stage_for(kind: CapabilityKind) -> &'static str {
    match kind {
        CapabilityKind::Structuring => "structuring",
        CapabilityKind::Execution => "generation",
        CapabilityKind::Validation => "qa",
        CapabilityKind::Transformation => "transformation",
        CapabilityKind::Routing => "routing",
    }
}

fn node_for(cap: &Capability, id: String, req: &PlanRequest, rationale: String) -> PlanNode {
    let instructions = cap
        .output_facets
        .iter()
        .filter_map(|f| req.facets.iter().find(|x| &x.name == f))
        .filter(|f| !f.instructions.is_empty())
        .map(|f| f.instructions.clone())
        .collect();
    PlanNode {
        id,
        stage: stage_for(cap.kind).to_owned(),
        capability_id: cap.capability_id.clone(),
        kind: cap.kind,
        input_facets: cap.input_facets.clone(),
        output_facets: cap.output_facets.clone(),
        instructions,
        rationale,
    }
}

/// Backward chaining state for an initial draft.
struct Chain<'a> {
    req: &'a PlanRequest,
    caps: Vec<&'a Capability>,
    available: BTreeSet<String>,
    producer_of: BTreeMap<String, String>,
    nodes: Vec<PlanNode>,
}

impl<'a> Chain<'a> {
    /// Makes `facet` available, adding producer nodes as needed. `stack` holds the
    /// capabilities being resolved, so a capability never depends on itself.
    fn need(&mut self, facet: &str, stack: &mut Vec<&'a str>) -> bool {
        if self.available.contains(facet) || self.producer_of.contains_key(facet) {
            return true;
        }
        let producers: Vec<&'a Capability> = self
            .caps
            .iter()
            .copied()
            .filter(|c| c.output_facets.iter().any(|f| f == facet))
            .filter(|c| c.kind != CapabilityKind::Validation)
            .collect();
        for cap in producers {
            if stack.contains(&cap.capability_id.as_str()) {
                continue;
            }
            stack.push(&cap.capability_id);
            let mark = (self.nodes.len(), self.producer_of.clone());
            let ok = cap.input_facets.iter().all(|input| self.need(input, stack));
            stack.pop();
            if ok {
                self.add(cap, format!("produces `{facet}`"));
                return true;
            }
            self.nodes.truncate(mark.0);
            self.producer_of = mark.1;
        }
        false
    }

    fn add(&mut self, cap: &Capability, rationale: String) {
        let id = node_id_for(&cap.capability_id, &|id| {
            self.nodes.iter().any(|n| n.id == id)
        });
        for f in &cap.output_facets {
            self.producer_of
                .entry(f.clone())
                .or_insert_with(|| id.clone());
        }
        let node = node_for(cap, id, self.req, rationale);
        self.nodes.push(node);
    }

    fn edges(&self) -> Vec<PlanEdge> {
        let mut edges = BTreeSet::new();
        for n in &self.nodes {
            for input in &n.input_facets {
                if let Some(from) = self.producer_of.get(input).filter(|p| **p != n.id) {
                    edges.insert(PlanEdge::new(from.clone(), n.id.clone()));
                }
            }
        }
        edges.into_iter().collect()
    }
}

fn draft(req: &PlanRequest) -> Result<PlanDraft, PlannerError> {
    let mut chain = Chain {
        req,
        caps: candidates(req),
        available: req.inputs.keys().cloned().collect(),
        producer_of: BTreeMap::new(),
        nodes: Vec::new(),
    };
    let mut missing = Vec::new();
    for facet in &req.required_outputs {
        if !chain.need(facet, &mut Vec::new()) {
            missing.push(facet.clone());
        }
    }
    if !missing.is_empty() {
        return Err(PlannerError::Fatal(format!(
            "no chain of active capabilities produces {} from the inputs {:?}",
            missing
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", "),
            req.inputs.keys().collect::<Vec<_>>()
        )));
    }
    let policy = &req.policies.planner;
    for required in &policy.required_capabilities {
        let already = chain.nodes.iter().any(|n| &n.capability_id == required);
        let cap = chain
            .caps
            .iter()
            .copied()
            .find(|c| &c.capability_id == required);
        if let (false, Some(cap)) = (already, cap) {
            let mut stack = vec![cap.capability_id.as_str()];
            if cap.input_facets.iter().all(|f| chain.need(f, &mut stack)) {
                chain.add(cap, "required by the planner policy".to_owned());
            }
        }
    }
    for kind in &policy.required_kinds {
        if chain.nodes.iter().any(|n| n.kind == *kind) {
            continue;
        }
        let found = chain.caps.iter().copied().find(|c| c.kind == *kind);
        if let Some(cap) = found {
            let mut stack = vec![cap.capability_id.as_str()];
            if cap.input_facets.iter().all(|f| chain.need(f, &mut stack)) {
                chain.add(
                    cap,
                    format!(
                        "a `{}` node is required by the planner policy",
                        kind.as_str()
                    ),
                );
            }
        }
    }
    let edges = chain.edges();
    let names: Vec<&str> = chain
        .nodes
        .iter()
        .map(|n| n.capability_id.as_str())
        .collect();
    Ok(PlanDraft {
        rationale: format!(
            "chain {} to produce {} from the run inputs",
            names.join(" → "),
            req.required_outputs.join(", ")
        ),
        system_instructions: req.special_instructions.join("\n"),
        nodes: chain.nodes,
        edges,
    })
}

fn delta(req: &PlanRequest) -> Result<PlanDelta, PlannerError> {
    let plan = req.current_plan.as_ref().ok_or_else(|| {
        PlannerError::Fatal("a replan request carries no current plan".to_owned())
    })?;
    let completed: BTreeSet<&str> = req.completed.iter().map(|c| c.node_id.as_str()).collect();
    if asked_by_a_budget(req) {
        // Never answer a budget with more work: nothing cheaper leaves the plan as it is.
        return Ok(
            cheaper_delta(req, plan, &completed).unwrap_or_else(|| PlanDelta {
                base_version: plan.version,
                rationale: "nothing in the catalog does the remaining work for less".to_owned(),
                operations: Vec::new(),
            }),
        );
    }
    let focus = req
        .trigger
        .as_ref()
        .and_then(|t| t.node_id.as_deref())
        .and_then(|id| plan.nodes.iter().find(|n| n.id == id))
        .or_else(|| {
            req.completed
                .iter()
                .rev()
                .find_map(|c| plan.nodes.iter().find(|n| n.id == c.node_id))
        })
        .ok_or_else(|| {
            PlannerError::Fatal("the replan names no node and none has completed".to_owned())
        })?;

    let mut produced: BTreeSet<&str> = req.inputs.keys().map(String::as_str).collect();
    for n in &plan.nodes {
        produced.extend(n.output_facets.iter().map(String::as_str));
    }
    let caps = candidates(req);
    let fits = |cap: &Capability| {
        cap.input_facets
            .iter()
            .all(|f| produced.contains(f.as_str()))
    };
    let consumes_focus = |cap: &Capability| {
        cap.input_facets
            .iter()
            .any(|f| focus.output_facets.contains(f))
    };

    let qa = caps.iter().copied().find(|c| {
        c.kind == CapabilityKind::Validation
            && fits(c)
            && consumes_focus(c)
            && !plan
                .nodes
                .iter()
                .any(|n| n.capability_id == c.capability_id && feeds(plan, &focus.id, &n.id))
    });
    let (cap, why) = match qa {
        Some(cap) => (
            cap,
            format!("add a `{}` pass after `{}`", cap.capability_id, focus.id),
        ),
        None => {
            let alt = caps.iter().copied().find(|c| {
                c.kind != CapabilityKind::Validation
                    && c.capability_id != focus.capability_id
                    && fits(c)
                    && focus
                        .output_facets
                        .iter()
                        .any(|f| c.output_facets.contains(f))
                    && !plan
                        .nodes
                        .iter()
                        .any(|n| n.capability_id == c.capability_id)
            });
            match alt {
                Some(cap) => (
                    cap,
                    format!(
                        "redo the work of `{}` with `{}`",
                        focus.id, cap.capability_id
                    ),
                ),
                None => {
                    return Err(PlannerError::Fatal(format!(
                        "no active validation capability accepts the outputs of `{}` and no alternative producer exists",
                        focus.id
                    )));
                }
            }
        }
    };

    let taken = |id: &str| plan.nodes.iter().any(|n| n.id == id);
    let base = format!("{}-after-{}", cap.capability_id, focus.id);
    let id = node_id_for(&base, &taken);
    let node = node_for(cap, id.clone(), req, why.clone());
    let mut ops = vec![DeltaOp::AddNode { node }];
    let mut sources = BTreeSet::new();
    for input in &cap.input_facets {
        if focus.output_facets.contains(input) {
            sources.insert(focus.id.clone());
        } else if let Some(p) = producer_in(plan, input, &completed) {
            sources.insert(p);
        }
    }
    sources.insert(focus.id.clone());
    for from in &sources {
        ops.push(DeltaOp::AddEdge {
            from: from.clone(),
            to: id.clone(),
        });
    }
    let sources_settled = sources
        .iter()
        .all(|s| completed.contains(s.as_str()) || *s == focus.id);
    if sources_settled {
        for e in plan.edges.iter().filter(|e| e.from == focus.id) {
            if !completed.contains(e.to.as_str()) && e.to != id {
                ops.push(DeltaOp::AddEdge {
                    from: id.clone(),
                    to: e.to.clone(),
                });
            }
        }
    }
    Ok(PlanDelta {
        base_version: plan.version,
        rationale: why,
        operations: ops,
    })
}

/// Whether the replan was asked by an `onBudget` policy.
fn asked_by_a_budget(req: &PlanRequest) -> bool {
    let Some(policy_id) = req.trigger.as_ref().and_then(|t| t.policy_id.as_deref()) else {
        return false;
    };
    req.policies
        .runtime
        .iter()
        .any(|p| p.id == policy_id && matches!(p.trigger, PolicyTrigger::OnBudget { .. }))
}

/// A budget replan: every node not yet completed whose capability has a cheaper active
/// alternative (same kind, producing at least the same facets from facets the plan has) is
/// replaced by the cheapest one, and a node not yet completed whose outputs nothing needs is
/// removed. `None` when nothing can be made cheaper.
fn cheaper_delta(
    req: &PlanRequest,
    plan: &PlanSnapshot,
    completed: &BTreeSet<&str>,
) -> Option<PlanDelta> {
    let mut available: BTreeSet<&str> = req.inputs.keys().map(String::as_str).collect();
    for n in &plan.nodes {
        available.extend(n.output_facets.iter().map(String::as_str));
    }
    let caps = candidates(req);
    let cost_of = |id: &str| {
        req.capabilities
            .iter()
            .find(|c| c.capability_id == id)
            .map_or(f64::INFINITY, |c| c.cost)
    };
    let mut ops = Vec::new();
    let mut swaps = Vec::new();
    for node in plan
        .nodes
        .iter()
        .filter(|n| !completed.contains(n.id.as_str()))
    {
        let current = cost_of(&node.capability_id);
        // `candidates` is cheapest first: the first that fits is the cheapest.
        let cheaper = caps.iter().copied().find(|c| {
            c.cost < current
                && c.kind == node.kind
                && node
                    .output_facets
                    .iter()
                    .all(|f| c.output_facets.contains(f))
                && c.input_facets
                    .iter()
                    .all(|f| available.contains(f.as_str()) && !node.output_facets.contains(f))
        });
        if let Some(cap) = cheaper {
            let why = format!(
                "`{}` costs {} instead of {} (budget)",
                cap.capability_id, cap.cost, current
            );
            let mut replacement = node_for(cap, node.id.clone(), req, why);
            replacement.stage.clone_from(&node.stage);
            swaps.push(format!("{} → {}", node.capability_id, cap.capability_id));
            ops.push(DeltaOp::ReplaceNode { node: replacement });
        }
    }
    // A pending node whose outputs neither the run's contract nor another remaining node
    // needs (a QA pass, say) is dropped.
    let remaining: Vec<&PlanNode> = plan
        .nodes
        .iter()
        .filter(|n| !completed.contains(n.id.as_str()))
        .collect();
    for node in &remaining {
        let needed = node.output_facets.iter().any(|f| {
            req.required_outputs.contains(f)
                || remaining
                    .iter()
                    .any(|other| other.id != node.id && other.input_facets.contains(f))
        });
        if !needed {
            swaps.push(format!("drop {}", node.id));
            ops.push(DeltaOp::RemoveNode {
                node_id: node.id.clone(),
            });
        }
    }
    if ops.is_empty() {
        return None;
    }
    Some(PlanDelta {
        base_version: plan.version,
        rationale: format!("fit the remaining budget: {}", swaps.join(", ")),
        operations: ops,
    })
}

/// True when `to` is downstream of `from` in `plan`.
fn feeds(plan: &PlanSnapshot, from: &str, to: &str) -> bool {
    let mut stack = vec![from];
    let mut seen = BTreeSet::new();
    while let Some(n) = stack.pop() {
        if n == to {
            return true;
        }
        if seen.insert(n) {
            stack.extend(
                plan.edges
                    .iter()
                    .filter(|e| e.from == n)
                    .map(|e| e.to.as_str()),
            );
        }
    }
    false
}

/// A node of `plan` producing `facet`, completed ones first.
fn producer_in(plan: &PlanSnapshot, facet: &str, completed: &BTreeSet<&str>) -> Option<String> {
    let mut producers: Vec<&PlanNode> = plan
        .nodes
        .iter()
        .filter(|n| n.output_facets.iter().any(|f| f == facet))
        .collect();
    producers.sort_by_key(|n| !completed.contains(n.id.as_str()));
    producers.first().map(|n| n.id.clone())
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value, json};

    use super::*;
    use crate::diagnostics::Diagnostic;
    use crate::fsm::{PlanPhase, Trigger, TriggerSource};
    use crate::graph::PlanGraph;
    use crate::ids::RunId;
    use crate::planner::CompletedNode;
    use crate::policy::NormalizedPolicies;

    fn request(outputs: &[&str], purpose: Purpose) -> PlanRequest {
        let inputs: Map<String, Value> = json!({"objectiveBrief": "Fresh bread, for parents"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        PlanRequest {
            run_id: RunId::new(),
            purpose,
            phase: PlanPhase::Initial,
            attempt: 1,
            objective: "taglines".into(),
            facet_values: inputs.clone(),
            inputs,
            completed: vec![],
            required_outputs: outputs.iter().map(|s| s.to_string()).collect(),
            special_instructions: vec!["be kind".into()],
            policies: NormalizedPolicies::default(),
            capabilities: crate::demo::capabilities(),
            facets: crate::demo::facets(),
            current_plan: None,
            trigger: None,
            diagnostics: vec![],
            previous_error: None,
            budget: Default::default(),
        }
    }

    fn ids(draft: &PlanDraft) -> Vec<(&str, &str)> {
        draft
            .nodes
            .iter()
            .map(|n| (n.id.as_str(), n.capability_id.as_str()))
            .collect()
    }

    #[test]
    fn drafts_chain_the_cheapest_producers_back_to_the_inputs() {
        let d = draft(&request(&["summary", "keywords"], Purpose::Initial)).unwrap();
        assert_eq!(
            ids(&d),
            [
                ("brief-structurer", "brief.structurer"),
                ("writer-en", "writer.en"),
                ("copy-summarizer", "copy.summarizer"),
                ("keywords-extract", "keywords.extract")
            ]
        );
        assert_eq!(
            d.edges,
            [
                PlanEdge::new("brief-structurer", "writer-en"),
                PlanEdge::new("writer-en", "copy-summarizer")
            ]
        );
        assert_eq!(d.system_instructions, "be kind");
        assert!(PlanGraph::from_draft(&d).is_ok());
    }

    #[test]
    fn revisions_avoid_capabilities_blamed_by_diagnostics() {
        let mut req = request(&["copyVariants"], Purpose::Initial);
        req.diagnostics = vec![
            Diagnostic::error(DiagnosticCode::CapabilityInactive, "x").capability("writer.en"),
        ];
        let d = draft(&req).unwrap();
        assert_eq!(d.nodes[1].capability_id, "writer.formal");
        req.diagnostics.push(
            Diagnostic::error(DiagnosticCode::CapabilityInactive, "y").capability("writer.formal"),
        );
        let err = draft(&req).unwrap_err();
        assert!(
            matches!(&err, PlannerError::Fatal(m) if m.contains("`copyVariants`")),
            "{err}"
        );
    }

    #[test]
    fn replans_add_a_qa_pass_after_the_trigger_node_then_an_alternative_writer() {
        let initial = draft(&request(&["summary"], Purpose::Initial)).unwrap();
        let v1 = PlanGraph::from_draft(&initial).unwrap();
        let mut req = request(&["summary"], Purpose::Replan);
        req.current_plan = Some(v1.snapshot());
        req.completed = ["brief-structurer", "writer-en"]
            .iter()
            .map(|id| CompletedNode {
                node_id: id.to_string(),
                capability_id: String::new(),
                output: Map::new(),
            })
            .collect();
        req.trigger = Some(Trigger {
            source: TriggerSource::Policy,
            policy_id: Some("qa".into()),
            node_id: Some("writer-en".into()),
            reason: "check".into(),
        });
        let delta = delta(&req).unwrap();
        assert_eq!(delta.base_version, 1);
        let done = |id: &str| {
            if ["brief-structurer", "writer-en"].contains(&id) {
                crate::graph::NodeState::Completed
            } else {
                crate::graph::NodeState::Pending
            }
        };
        let v2 = v1.apply_delta(&delta, &done).unwrap();
        let diff = v1.diff(&v2);
        assert_eq!(diff.added_nodes, ["qa-copy-after-writer-en"]);
        assert!(
            diff.added_edges
                .contains(&PlanEdge::new("qa-copy-after-writer-en", "copy-summarizer")),
            "the QA pass gates the summarizer"
        );

        req.current_plan = Some(v2.snapshot());
        let again = delta_ops(&req);
        assert!(
            matches!(&again[0], DeltaOp::AddNode { node } if node.capability_id == "writer.formal"),
            "with a QA pass already in place, an alternative writer redoes the work: {again:?}"
        );
    }

    #[test]
    fn a_budget_replan_swaps_pending_nodes_for_cheaper_capabilities() {
        let formal = PlanDraft {
            nodes: draft(&request(&["summary"], Purpose::Initial))
                .unwrap()
                .nodes
                .into_iter()
                .map(|mut n| {
                    if n.capability_id == "writer.en" {
                        n.capability_id = "writer.formal".into();
                    }
                    n
                })
                .collect(),
            ..draft(&request(&["summary"], Purpose::Initial)).unwrap()
        };
        let v1 = PlanGraph::from_draft(&formal).unwrap();
        let mut req = request(&["summary"], Purpose::Replan);
        req.policies = crate::policy::normalize(&json!({
            "budgets": {"cost": 4},
            "runtime": [{"id": "thrift",
                         "trigger": {"kind": "onBudget", "resource": "cost",
                                     "threshold": {"fraction": 0.25}},
                         "action": {"type": "replan"}}]
        }))
        .unwrap();
        req.current_plan = Some(v1.snapshot());
        req.completed = vec![CompletedNode {
            node_id: "brief-structurer".into(),
            capability_id: "brief.structurer".into(),
            output: Map::new(),
        }];
        req.trigger = Some(Trigger {
            source: TriggerSource::Policy,
            policy_id: Some("thrift".into()),
            node_id: None,
            reason: "spend less".into(),
        });
        let ops = delta_ops(&req);
        assert_eq!(ops.len(), 1, "{ops:?}");
        assert!(
            matches!(&ops[0], DeltaOp::ReplaceNode { node }
                if node.id == "writer-en" && node.capability_id == "writer.en"),
            "writer.formal (3) becomes writer.en (2): {ops:?}"
        );
        // A replan some other policy asked for is answered as before (a QA pass).
        req.trigger.as_mut().unwrap().policy_id = Some("qa".into());
        req.trigger.as_mut().unwrap().node_id = Some("brief-structurer".into());
        assert!(matches!(&delta_ops(&req)[0], DeltaOp::AddNode { .. }));
    }

    fn delta_ops(req: &PlanRequest) -> Vec<DeltaOp> {
        delta(req).unwrap().operations
    }
}
