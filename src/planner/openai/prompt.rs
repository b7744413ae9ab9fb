//! Building the planner prompt: catalog pruning and the chat messages.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::client::{ChatMessage, shorten};
use crate::catalog::{Capability, CapabilityKind, Facet};
use crate::planner::{PlanRequest, Purpose};

/// Longest string value shown to the planner (facet values, outputs).
const VALUE_CHARS: usize = 400;
/// Most array items of a value shown to the planner.
const VALUE_ITEMS: usize = 12;

/// The system message: the role and the contract. It is the same for every request of a
/// purpose, so servers with prefix caching reuse it.
pub(crate) fn system_message(purpose: Purpose) -> String {
    let common = "You are the planner of a workflow engine. From a catalog of capabilities you \
build a plan: a DAG of nodes that turns the available facets (named pieces of run data) into \
the required output facets. Reply with one JSON object that matches the response schema and \
nothing else.\n\
Rules:\n\
- Each node runs one capability of the catalog: copy its capabilityId and kind, and list its \
inputFacets and outputFacets exactly as the catalog gives them.\n\
- A node can run only when each of its input facets is available: a run input, a value already \
produced, or an output of a node upstream of it. Add an edge {\"from\":upstream,\"to\":node} for \
each such dependency.\n\
- Every required output facet must be produced by a node.\n\
- Node ids are short, unique, lowercase words joined by dashes.\n\
- Respect the policies: at most maxNodes nodes, no forbidden capability or kind, every \
required capability and kind.\n\
- Keep instructions and rationales to one short sentence.";
    match purpose {
        Purpose::Initial => {
            format!("{common}\nReply with a draft: nodes, edges, systemInstructions, rationale.")
        }
        Purpose::Replan => format!(
            "{common}\nThe run is under way. Reply with a delta against currentPlan: baseVersion \
(the current version), rationale, and operations (addNode, replaceNode or removeNode for pending \
nodes only, addEdge, removeEdge). Completed nodes can never be changed or removed. Address the \
trigger with as few operations as possible."
        ),
    }
}

/// The capabilities the planner may use for this request: active, not forbidden, reachable
/// from the available facets, and on a path to a required output (or checking a facet on
/// such a path, or required by policy). Falls back to every reachable capability, then to
/// every allowed one, when nothing connects.
pub(crate) fn prune(req: &PlanRequest) -> Vec<&Capability> {
    let policy = &req.policies.planner;
    let allowed: Vec<&Capability> = req
        .capabilities
        .iter()
        .filter(|c| c.is_active())
        .filter(|c| !policy.forbidden_capabilities.contains(&c.capability_id))
        .filter(|c| !policy.forbidden_kinds.contains(&c.kind))
        .collect();

    let mut reach: BTreeSet<&str> = req
        .inputs
        .keys()
        .chain(req.facet_values.keys())
        .map(String::as_str)
        .collect();
    if let Some(plan) = &req.current_plan {
        reach.extend(
            plan.nodes
                .iter()
                .flat_map(|n| &n.output_facets)
                .map(String::as_str),
        );
    }
    let mut usable = vec![false; allowed.len()];
    loop {
        let mut changed = false;
        for (i, cap) in allowed.iter().enumerate() {
            if !usable[i] && cap.input_facets.iter().all(|f| reach.contains(f.as_str())) {
                usable[i] = true;
                reach.extend(cap.output_facets.iter().map(String::as_str));
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }

    let mut needed: BTreeSet<&str> = req.required_outputs.iter().map(String::as_str).collect();
    let mut relevant = vec![false; allowed.len()];
    loop {
        let mut changed = false;
        for (i, cap) in allowed.iter().enumerate() {
            if usable[i]
                && !relevant[i]
                && cap
                    .output_facets
                    .iter()
                    .any(|f| needed.contains(f.as_str()))
            {
                relevant[i] = true;
                needed.extend(cap.input_facets.iter().map(String::as_str));
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let in_plan: BTreeSet<&str> = req
        .current_plan
        .iter()
        .flat_map(|p| &p.nodes)
        .map(|n| n.capability_id.as_str())
        .collect();
    for (i, cap) in allowed.iter().enumerate() {
        let checks_path = cap.kind == CapabilityKind::Validation
            && cap.input_facets.iter().any(|f| needed.contains(f.as_str()));
        let required = policy.required_capabilities.contains(&cap.capability_id)
            || policy.required_kinds.contains(&cap.kind);
        if usable[i] && (checks_path || required || in_plan.contains(cap.capability_id.as_str())) {
            relevant[i] = true;
        }
    }

    let pick = |mask: &[bool]| -> Vec<&Capability> {
        allowed
            .iter()
            .zip(mask)
            .filter(|(_, keep)| **keep)
            .map(|(c, _)| *c)
            .collect()
    };
    let kept = pick(&relevant);
    if !kept.is_empty() {
        return kept;
    }
    let reachable = pick(&usable);
    if !reachable.is_empty() {
        return reachable;
    }
    allowed
}

/// Cuts long strings and arrays so a facet value cannot flood the prompt.
pub(crate) fn clip(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(shorten(s, VALUE_CHARS)),
        Value::Array(items) => {
            let mut out: Vec<Value> = items.iter().take(VALUE_ITEMS).map(clip).collect();
            if items.len() > VALUE_ITEMS {
                out.push(json!(format!("… {} more items", items.len() - VALUE_ITEMS)));
            }
            Value::Array(out)
        }
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), clip(v))).collect())
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => value.clone(),
    }
}

fn clip_map(map: &Map<String, Value>) -> Value {
    Value::Object(map.iter().map(|(k, v)| (k.clone(), clip(v))).collect())
}

fn facet_entry(f: &Facet) -> Value {
    let mut e = json!({"name": f.name, "direction": f.direction.as_str()});
    let about = if f.description.is_empty() || f.description == f.title {
        f.title.clone()
    } else if f.title.is_empty() {
        f.description.clone()
    } else {
        format!("{}: {}", f.title, f.description)
    };
    if !about.is_empty() {
        e["about"] = json!(about);
    }
    if !f.instructions.is_empty() {
        e["instructions"] = json!(f.instructions);
    }
    e
}

fn capability_entry(c: &Capability) -> Value {
    json!({"capabilityId": c.capability_id, "kind": c.kind.as_str(), "summary": c.summary,
           "inputFacets": c.input_facets, "outputFacets": c.output_facets, "cost": c.cost})
}

/// The user message: the request as one compact JSON document.
pub(crate) fn context_message(req: &PlanRequest, caps: &[&Capability]) -> String {
    let mut facet_names: BTreeSet<&str> = caps
        .iter()
        .flat_map(|c| c.input_facets.iter().chain(&c.output_facets))
        .chain(&req.required_outputs)
        .chain(req.inputs.keys())
        .map(String::as_str)
        .collect();
    facet_names.extend(req.facet_values.keys().map(String::as_str));
    let facets: Vec<Value> = req
        .facets
        .iter()
        .filter(|f| facet_names.contains(f.name.as_str()))
        .map(facet_entry)
        .collect();
    let policy = &req.policies.planner;
    let mut policies = json!({"maxNodes": policy.max_nodes});
    let lists = [
        (
            "forbiddenCapabilities",
            json!(policy.forbidden_capabilities),
            policy.forbidden_capabilities.is_empty(),
        ),
        (
            "requiredCapabilities",
            json!(policy.required_capabilities),
            policy.required_capabilities.is_empty(),
        ),
        (
            "forbiddenKinds",
            json!(policy.forbidden_kinds),
            policy.forbidden_kinds.is_empty(),
        ),
        (
            "requiredKinds",
            json!(policy.required_kinds),
            policy.required_kinds.is_empty(),
        ),
    ];
    for (key, value, empty) in lists {
        if !empty {
            policies[key] = value;
        }
    }
    if !req.policies.runtime.is_empty() {
        policies["runtime"] = serde_json::to_value(&req.policies.runtime).unwrap_or(Value::Null);
    }

    let mut doc = json!({
        "objective": req.objective,
        "requiredOutputs": req.required_outputs,
        "availableFacets": clip_map(&known_values(req)),
        "capabilities": caps.iter().map(|c| capability_entry(c)).collect::<Vec<_>>(),
        "facets": facets,
        "policies": policies,
    });
    if !req.special_instructions.is_empty() {
        doc["specialInstructions"] = json!(req.special_instructions);
    }
    if !req.completed.is_empty() {
        doc["completedNodes"] = json!(req
            .completed
            .iter()
            .map(|n| json!({"nodeId": n.node_id, "capabilityId": n.capability_id, "output": clip_map(&n.output)}))
            .collect::<Vec<_>>());
    }
    if let Some(plan) = &req.current_plan {
        let done: BTreeSet<&str> = req.completed.iter().map(|n| n.node_id.as_str()).collect();
        let nodes: Vec<Value> = plan
            .nodes
            .iter()
            .map(|n| {
                json!({"id": n.id, "capabilityId": n.capability_id, "kind": n.kind.as_str(),
                       "inputFacets": n.input_facets, "outputFacets": n.output_facets,
                       "status": if done.contains(n.id.as_str()) { "completed" } else { "pending" }})
            })
            .collect();
        doc["currentPlan"] = json!({"version": plan.version, "nodes": nodes, "edges": plan.edges});
    }
    if let Some(trigger) = &req.trigger {
        doc["trigger"] = serde_json::to_value(trigger).unwrap_or(Value::Null);
    }
    if !req.budget.limits.is_empty() {
        // Capability `cost` above is in the same units as the `cost` budget.
        doc["budget"] = json!({
            "limits": req.budget.limits,
            "spent": req.budget.spend,
            "remaining": req.budget.spend.remaining(&req.budget.limits),
        });
    }
    doc.to_string()
}

/// The lead-in of the message that carries the previous attempt's diagnostics; the JSON
/// array of the diagnostics follows it on the next line.
pub const DIAGNOSTICS_LEAD: &str = "Diagnostics (JSON):";

fn diagnostics_message(req: &PlanRequest, what: &str) -> String {
    let list = serde_json::to_string(&req.diagnostics).unwrap_or_else(|_| "[]".to_owned());
    format!(
        "Your previous {what} was rejected by the validator (attempt {}). Each diagnostic has a \
stable code, a message, where it applies (nodeId, capabilityId, facet, or a JSON pointer into \
your reply) and a hint; suggestions list ids that would fix it. Fix every error and reply \
with a complete corrected {what}; warnings say what the engine corrected for you.\n\
{DIAGNOSTICS_LEAD}\n{list}",
        req.attempt.saturating_sub(1).max(1),
    )
}

/// The messages of one planner request.
pub(crate) fn messages(req: &PlanRequest, caps: &[&Capability]) -> Vec<ChatMessage> {
    let mut out = vec![
        ChatMessage::system(system_message(req.purpose)),
        ChatMessage::user(context_message(req, caps)),
    ];
    let what = match req.purpose {
        Purpose::Initial => "draft",
        Purpose::Replan => "delta",
    };
    if !req.diagnostics.is_empty() {
        out.push(ChatMessage::user(diagnostics_message(req, what)));
    } else if let Some(error) = &req.previous_error {
        out.push(ChatMessage::user(format!(
            "Your previous reply could not be used: {}. Reply again with one complete {what} \
that matches the schema.",
            shorten(error, 600)
        )));
    }
    out
}

/// Inputs and every facet value produced so far (values win over inputs).
fn known_values(req: &PlanRequest) -> Map<String, Value> {
    let mut all = req.inputs.clone();
    for (k, v) in &req.facet_values {
        all.insert(k.clone(), v.clone());
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo;
    use crate::diagnostics::{Diagnostic, DiagnosticCode};
    use crate::fsm::PlanPhase;
    use crate::ids::RunId;
    use crate::policy::NormalizedPolicies;

    pub(crate) fn request(required: &[&str]) -> PlanRequest {
        PlanRequest {
            run_id: RunId::new(),
            purpose: Purpose::Initial,
            phase: PlanPhase::Initial,
            attempt: 1,
            objective: "tagline".into(),
            inputs: json!({"objectiveBrief": "fresh bread"})
                .as_object()
                .cloned()
                .unwrap(),
            facet_values: Map::new(),
            completed: vec![],
            required_outputs: required.iter().map(|s| (*s).to_owned()).collect(),
            special_instructions: vec![],
            policies: NormalizedPolicies::default(),
            capabilities: demo::capabilities(),
            facets: demo::facets(),
            current_plan: None,
            trigger: None,
            diagnostics: vec![],
            previous_error: None,
            budget: Default::default(),
        }
    }

    fn ids(caps: &[&Capability]) -> Vec<String> {
        caps.iter().map(|c| c.capability_id.clone()).collect()
    }

    #[test]
    fn pruning_keeps_the_paths_to_the_required_outputs() {
        let req = request(&["copyVariants"]);
        assert_eq!(
            ids(&prune(&req)),
            ["brief.structurer", "writer.en", "writer.formal", "qa.copy"],
            "keywords and summaries lie on no path; the QA pass checks one"
        );
        let req = request(&["keywords"]);
        assert_eq!(ids(&prune(&req)), ["keywords.extract"]);
        let mut req = request(&["copyVariants"]);
        req.policies.planner.forbidden_capabilities = vec!["writer.en".into()];
        req.policies.planner.required_capabilities = vec!["keywords.extract".into()];
        assert_eq!(
            ids(&prune(&req)),
            [
                "brief.structurer",
                "writer.formal",
                "qa.copy",
                "keywords.extract"
            ]
        );
    }

    #[test]
    fn pruning_drops_unreachable_capabilities_and_falls_back() {
        let mut req = request(&["copyVariants"]);
        req.inputs = Map::new();
        let all = prune(&req);
        assert_eq!(all.len(), 6, "nothing reachable: every allowed capability");
        let mut req = request(&["copyVariants"]);
        req.capabilities[0].status = crate::catalog::CapabilityStatus::Inactive;
        assert_eq!(
            ids(&prune(&req)),
            ["keywords.extract"],
            "no path to the outputs: every reachable capability"
        );
    }

    #[test]
    fn messages_carry_context_and_previous_diagnostics() {
        let mut req = request(&["copyVariants"]);
        req.attempt = 2;
        req.phase = PlanPhase::Revision;
        req.diagnostics = vec![
            Diagnostic::error(
                DiagnosticCode::CapabilityNotRegistered,
                "capability `writer.de` is not registered",
            )
            .node("write"),
        ];
        let caps = prune(&req);
        let msgs = messages(&req, &caps);
        assert_eq!(msgs.len(), 3);
        let ctx: Value = serde_json::from_str(&msgs[1].content).unwrap();
        assert_eq!(ctx["objective"], "tagline");
        assert_eq!(ctx["availableFacets"]["objectiveBrief"], "fresh bread");
        assert_eq!(ctx["capabilities"].as_array().unwrap().len(), 4);
        assert!(
            ctx["facets"]
                .as_array()
                .unwrap()
                .iter()
                .all(|f| f["name"] != "summary")
        );
        assert!(
            msgs[2].content.contains("CAPABILITY_NOT_REGISTERED"),
            "{}",
            msgs[2].content
        );
        let (_, list) = msgs[2].content.split_once(DIAGNOSTICS_LEAD).unwrap();
        let sent: Vec<Diagnostic> = serde_json::from_str(list.trim()).unwrap();
        assert_eq!(sent, req.diagnostics, "the same list, structured");
    }

    #[test]
    fn long_values_are_clipped() {
        let long = "x".repeat(5000);
        let v = clip(&json!({"a": long, "b": (0..50).collect::<Vec<_>>()}));
        assert_eq!(v["a"].as_str().unwrap().chars().count(), VALUE_CHARS + 1);
        assert_eq!(v["b"].as_array().unwrap().len(), VALUE_ITEMS + 1);
    }
}
