//! Convergence of the planner/validator loop over the reply corpus: a scripted "model" that
//! starts from a corpus reply and then fixes exactly what the diagnostics it receives name,
//! using only those diagnostics (code, node, capability, facet, JSON pointer, suggestions),
//! its own previous reply and what every request shows a model (the catalog, the current
//! plan). It never looks at the right answer. The test reports the attempts each case took
//! and fails when a case does not converge.

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use flexrun::RunEnvelope;
use flexrun::catalog::Capability;
use flexrun::diagnostics::{Diagnostic, DiagnosticCode};
use flexrun::fsm::{EventBody, PlanPhase, Purpose};
use flexrun::planner::{PlanRequest, PlanResponse, Planner, PlannerError};
use serde_json::{Map, Value, json};

use crate::corpus::{self, CASES, Case, DRAFT};
use crate::support::TestEnv;

/// Attempts allowed per planning phase in this driver.
const ATTEMPTS: u32 = 8;

struct FixingModel {
    case: Case,
    last: Mutex<Option<Value>>,
}

#[async_trait]
impl Planner for FixingModel {
    fn name(&self) -> &str {
        "fixing-model"
    }

    async fn plan(&self, request: PlanRequest) -> Result<PlanResponse, PlannerError> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let text = if self.case.replan && request.purpose == Purpose::Initial {
            DRAFT.to_owned()
        } else if request.phase != PlanPhase::Revision {
            *last = serde_json::from_str(self.case.reply).ok();
            self.case.reply.to_owned()
        } else {
            let fixed = fix(last.take(), &request);
            let text = fixed.to_string();
            *last = Some(fixed);
            text
        };
        Ok(PlanResponse::from_text(&text, &request))
    }
}

fn capability<'r>(request: &'r PlanRequest, id: &str) -> Option<&'r Capability> {
    request.capabilities.iter().find(|c| c.capability_id == id)
}

fn node_for(capability: &Capability) -> Value {
    json!({"id": capability.capability_id.replace('.', "-"), "capabilityId": capability.capability_id,
           "kind": capability.kind.as_str(), "inputFacets": capability.input_facets,
           "outputFacets": capability.output_facets})
}

/// The model's working copy: a draft (`nodes`, `edges`) or a delta (`operations`).
struct Work<'r> {
    request: &'r PlanRequest,
    plan: Value,
}

impl Work<'_> {
    fn is_delta(&self) -> bool {
        self.request.purpose == Purpose::Replan
    }

    fn list(&mut self, key: &str) -> &mut Vec<Value> {
        let Value::Object(map) = &mut self.plan else {
            unreachable!("the working copy is an object")
        };
        let entry = map.entry(key).or_insert_with(|| json!([]));
        if !entry.is_array() {
            *entry = json!([]);
        }
        entry.as_array_mut().unwrap()
    }

    /// Node objects of the working copy (a delta's added or replaced nodes).
    fn nodes(&mut self) -> Vec<&mut Map<String, Value>> {
        if self.is_delta() {
            self.list("operations")
                .iter_mut()
                .filter_map(|op| op.get_mut("node"))
                .filter_map(Value::as_object_mut)
                .collect()
        } else {
            self.list("nodes")
                .iter_mut()
                .filter_map(Value::as_object_mut)
                .collect()
        }
    }

    fn node(&mut self, id: &str) -> Option<&mut Map<String, Value>> {
        self.nodes().into_iter().find(|n| n["id"] == id)
    }

    fn has_node(&mut self, id: &str) -> bool {
        let current = self
            .request
            .current_plan
            .iter()
            .flat_map(|p| &p.nodes)
            .any(|n| n.id == id);
        current || self.node(id).is_some()
    }

    fn add_node(&mut self, node: Value) {
        let id = node["id"].as_str().unwrap_or_default().to_owned();
        if self.has_node(&id) {
            return;
        }
        if self.is_delta() {
            self.list("operations")
                .push(json!({"op": "addNode", "node": node}));
        } else {
            self.list("nodes").push(node);
        }
    }

    fn add_edge(&mut self, from: &str, to: &str) {
        if self.is_delta() {
            self.list("operations")
                .push(json!({"op": "addEdge", "from": from, "to": to}));
        } else {
            self.list("edges").push(json!({"from": from, "to": to}));
        }
    }

    fn edges_mut(&mut self) -> &mut Vec<Value> {
        if self.is_delta() {
            self.list("operations")
        } else {
            self.list("edges")
        }
    }

    fn drop_node(&mut self, id: &str) {
        if self.is_delta() {
            self.list("operations").retain(|op| op["node"]["id"] != id);
        } else {
            self.list("nodes").retain(|n| n["id"] != id);
        }
        self.edges_mut()
            .retain(|e| e["from"] != id && e["to"] != id);
    }

    /// Removes what a JSON pointer into the reply names: an array element, or a field.
    fn drop_at(&mut self, pointer: &str) {
        let Some((parent, last)) = pointer.rsplit_once('/') else {
            return;
        };
        match self.plan.pointer_mut(parent) {
            Some(Value::Array(items)) => {
                if let Ok(i) = last.parse::<usize>()
                    && i < items.len()
                {
                    items.remove(i);
                }
            }
            Some(Value::Object(map)) => {
                map.remove(last);
            }
            _ => {}
        }
    }

    /// The element of a list that a pointer such as `/nodes/2/kind` sits in.
    fn drop_element_of(&mut self, pointer: &str) {
        let parts: Vec<&str> = pointer.split('/').collect();
        if parts.len() >= 3 {
            self.drop_at(&parts[..3].join("/"));
        }
    }

    fn apply(&mut self, d: &Diagnostic) {
        let node = d.node_id.clone().unwrap_or_default();
        let first = d.suggestions.first().cloned();
        match d.code {
            DiagnosticCode::ReplyShape => match (d.pointer.as_deref(), first) {
                (Some(p), Some(meant)) if p.ends_with("/op") => {
                    if let Some(v) = self.plan.pointer_mut(p) {
                        *v = Value::String(meant);
                    }
                }
                (Some("/baseVersion"), _) => {
                    let version = self.request.current_plan.as_ref().map_or(0, |p| p.version);
                    self.plan["baseVersion"] = json!(version);
                }
                (Some(p), _) if p.starts_with("/nodes/") || p.starts_with("/operations/") => {
                    self.drop_element_of(p)
                }
                (Some(p), _) => self.drop_at(p),
                (None, _) => {}
            },
            DiagnosticCode::CapabilityNotRegistered
            | DiagnosticCode::CapabilityInactive
            | DiagnosticCode::PolicyForbiddenCapability => {
                let replacement = first.and_then(|id| capability(self.request, &id).cloned());
                match (replacement, self.node(&node)) {
                    (Some(c), Some(n)) => {
                        n.insert("capabilityId".into(), json!(c.capability_id));
                        n.insert("kind".into(), json!(c.kind.as_str()));
                        n.insert("inputFacets".into(), json!(c.input_facets));
                        n.insert("outputFacets".into(), json!(c.output_facets));
                    }
                    (None, _) | (_, None) => self.drop_node(&node),
                }
            }
            DiagnosticCode::CapabilityFacetMismatch | DiagnosticCode::UnknownFacet => {
                let facet = d.facet.clone().unwrap_or_default();
                if let Some(n) = self.node(&node) {
                    for key in ["inputFacets", "outputFacets"] {
                        if let Some(list) = n.get_mut(key).and_then(Value::as_array_mut) {
                            list.retain(|f| *f != *facet);
                        }
                    }
                }
            }
            DiagnosticCode::InputFacetUnsatisfied => {
                let Some(source) = first else { return };
                if let Some(c) = capability(self.request, &source).cloned() {
                    let added = node_for(&c);
                    let id = added["id"].as_str().unwrap_or_default().to_owned();
                    self.add_node(added);
                    self.add_edge(&id, &node);
                } else {
                    self.add_edge(&source, &node);
                }
            }
            DiagnosticCode::OutputFacetUncovered => {
                if let Some(c) = first.and_then(|id| capability(self.request, &id).cloned()) {
                    self.add_node(node_for(&c));
                }
            }
            DiagnosticCode::DanglingEdge => {
                let missing = node.clone();
                self.edges_mut()
                    .retain(|e| e["from"] != *missing && e["to"] != *missing);
            }
            DiagnosticCode::Cycle => self.break_cycle_at(&node),
            DiagnosticCode::DuplicateNodeId => {
                let mut seen = false;
                for n in self.nodes() {
                    if n["id"] == *node {
                        if seen {
                            n.insert("id".into(), json!(format!("{node}-2")));
                        }
                        seen = true;
                    }
                }
            }
            DiagnosticCode::InvalidNodeId => {
                let clean = id_from(&node);
                for n in self.nodes() {
                    if n["id"] == *node {
                        n.insert("id".into(), json!(clean));
                    }
                }
                for e in self.edges_mut() {
                    for end in ["from", "to"] {
                        if e[end] == *node {
                            e[end] = json!(clean);
                        }
                    }
                }
            }
            DiagnosticCode::PolicyMaxNodesExceeded => self.drop_unneeded_nodes(),
            DiagnosticCode::StaleBaseVersion => {
                let version = self.request.current_plan.as_ref().map_or(0, |p| p.version);
                self.plan["baseVersion"] = json!(version);
            }
            DiagnosticCode::CompletedNodeModified
            | DiagnosticCode::RunningNodeModified
            | DiagnosticCode::UnknownNode
            | DiagnosticCode::UnknownEdge
            | DiagnosticCode::DuplicateEdge => match d.pointer.as_deref() {
                Some(p) if p.starts_with("/operations/") => self.drop_element_of(p),
                Some(_) | None => {
                    let mut seen = Vec::new();
                    self.edges_mut().retain(|e| {
                        let fresh = !seen.contains(e);
                        seen.push(e.clone());
                        fresh
                    });
                }
            },
            DiagnosticCode::PlannerOutputInvalid => self.reshape(),
            _ => {}
        }
    }

    /// Removes an edge into `node` that carries no data `node` consumes.
    fn break_cycle_at(&mut self, node: &str) {
        let consumes: Vec<Value> = self
            .node(node)
            .and_then(|n| n.get("inputFacets").and_then(Value::as_array).cloned())
            .unwrap_or_default();
        let outputs: Vec<(String, Vec<Value>)> = self
            .nodes()
            .iter()
            .map(|n| {
                let id = n["id"].as_str().unwrap_or_default().to_owned();
                let out = n.get("outputFacets").and_then(Value::as_array).cloned();
                (id, out.unwrap_or_default())
            })
            .collect();
        self.edges_mut().retain(|e| {
            if e["to"] != node {
                return true;
            }
            let from = e["from"].as_str().unwrap_or_default();
            outputs
                .iter()
                .filter(|(id, _)| id == from)
                .any(|(_, out)| out.iter().any(|f| consumes.contains(f)))
        });
    }

    /// Drops nodes whose outputs neither the run requires nor another node consumes.
    fn drop_unneeded_nodes(&mut self) {
        let required = self.request.required_outputs.clone();
        let nodes: Vec<(String, Vec<Value>, Vec<Value>)> = self
            .nodes()
            .iter()
            .map(|n| {
                let list = |k: &str| {
                    n.get(k)
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default()
                };
                (
                    n["id"].as_str().unwrap_or_default().to_owned(),
                    list("inputFacets"),
                    list("outputFacets"),
                )
            })
            .collect();
        for (id, _, outputs) in &nodes {
            let needed = outputs.iter().any(|f| {
                required.iter().any(|r| f == r)
                    || nodes
                        .iter()
                        .any(|(other, inputs, _)| other != id && inputs.contains(f))
            });
            if !needed {
                self.drop_node(id);
            }
        }
    }

    /// A draft where a delta is wanted, or the other way round: the same content re-shaped.
    fn reshape(&mut self) {
        if self.is_delta() {
            let current = self.request.current_plan.clone();
            let known = |id: &str| current.iter().flat_map(|p| &p.nodes).any(|n| n.id == id);
            let has_edge = |f: &str, t: &str| {
                current
                    .iter()
                    .flat_map(|p| &p.edges)
                    .any(|e| e.from == f && e.to == t)
            };
            let mut ops = Vec::new();
            for n in self.plan["nodes"].as_array().cloned().unwrap_or_default() {
                if !known(n["id"].as_str().unwrap_or_default()) {
                    ops.push(json!({"op": "addNode", "node": n}));
                }
            }
            for e in self.plan["edges"].as_array().cloned().unwrap_or_default() {
                if !has_edge(
                    e["from"].as_str().unwrap_or_default(),
                    e["to"].as_str().unwrap_or_default(),
                ) {
                    ops.push(json!({"op": "addEdge", "from": e["from"], "to": e["to"]}));
                }
            }
            let version = current.as_ref().map_or(0, |p| p.version);
            self.plan = json!({"baseVersion": version, "operations": ops});
        } else {
            let ops = self.plan["operations"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let nodes: Vec<Value> = ops
                .iter()
                .filter_map(|op| op.get("node").cloned())
                .collect();
            let edges: Vec<Value> = ops
                .iter()
                .filter(|op| op["op"] == "addEdge")
                .map(|op| json!({"from": op["from"], "to": op["to"]}))
                .collect();
            self.plan = json!({"nodes": nodes, "edges": edges});
        }
    }
}

/// The next reply: the previous one with every named problem fixed. A reply that was not
/// a JSON object is started again from an empty skeleton of the asked shape.
/// What a model makes of `expected` on an `INVALID_NODE_ID`: every character outside the
/// grammar becomes `-`, empty dotted segments go.
fn id_from(bad: &str) -> String {
    let dashed: String = bad
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-:@.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    dashed
        .split('.')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(".")
}

fn fix(previous: Option<Value>, request: &PlanRequest) -> Value {
    let skeleton = match request.purpose {
        Purpose::Initial => json!({"nodes": [], "edges": []}),
        Purpose::Replan => {
            json!({"baseVersion": request.current_plan.as_ref().map_or(0, |p| p.version), "operations": []})
        }
    };
    let restart = request.diagnostics.iter().any(|d| {
        d.code == DiagnosticCode::ReplyNotJson
            || (d.code == DiagnosticCode::ReplyShape
                && matches!(d.pointer.as_deref(), Some("" | "/nodes" | "/operations")))
    });
    let plan = match previous {
        Some(v @ Value::Object(_)) if !restart => v,
        Some(_) | None => skeleton,
    };
    let mut work = Work { request, plan };
    if !restart {
        for d in request.diagnostics.iter().filter(|d| d.is_error()) {
            work.apply(d);
        }
    }
    work.plan
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_fixes_what_the_diagnostics_name_converges_on_every_case() {
    let mut report = Vec::new();
    let mut stuck = Vec::new();
    for case in CASES {
        let model = Arc::new(FixingModel {
            case: *case,
            last: Mutex::new(None),
        });
        let mut env = TestEnv::start(Some(model)).await;
        let mut envelope = corpus::envelope(case.replan);
        envelope["policies"]["planner"]["maxAttempts"] = json!(ATTEMPTS);
        let envelope: RunEnvelope = serde_json::from_value(envelope).unwrap();
        let run = env.engine.submit(envelope).await.unwrap();
        let events = env.until_complete(run).await;
        let phase = if case.replan {
            PlanPhase::Replan
        } else {
            PlanPhase::Initial
        };
        let mut attempts = 0;
        let mut in_phase = false;
        for e in &events {
            match &e.body {
                EventBody::PlanRequested { phase: p, .. } => {
                    in_phase = *p == phase || (in_phase && *p == PlanPhase::Revision)
                }
                EventBody::PlanGenerated { .. } if in_phase => attempts += 1,
                _ => {}
            }
        }
        let completed = matches!(events.last().map(|e| &e.body),
            Some(EventBody::Complete { status, .. }) if *status == flexrun::fsm::RunOutcome::Completed);
        if !completed {
            stuck.push((case.name, corpus::rejected_codes(&events)));
        }
        report.push((case.name, attempts, completed));
    }
    let total: u32 = report.iter().map(|(_, a, _)| *a).sum();
    let mean = f64::from(total) / report.len() as f64;
    println!(
        "convergence over {} corpus cases (attempts to an accepted plan):",
        report.len()
    );
    for (name, attempts, completed) in &report {
        println!(
            "  {attempts}  {}{name}",
            if *completed { "" } else { "NOT CONVERGED: " }
        );
    }
    println!("mean attempts: {mean:.2}; not converged: {}", stuck.len());
    assert!(
        stuck.is_empty(),
        "cases whose diagnostics did not say enough: {stuck:?}"
    );
}
