//! An embedding service: its own facets and capabilities, in-process executors, and its own
//! planner whose first draft is wrong — the engine answers with diagnostics, the planner
//! revises, the plan runs, and the run's events are followed as they are committed.
//!
//! ```sh
//! cargo run --example embedding
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use flexrun::catalog::{Capability, Facet};
use flexrun::engine::{ExecError, Executors, NodeCall};
use flexrun::fsm::{EventBody, PlannerOutput};
use flexrun::graph::{PlanDraft, PlanEdge, PlanNode};
use flexrun::planner::{PlanRequest, PlanResponse, Planner, PlannerError};
use flexrun::{Engine, EngineConfig, MemoryStore, RunEnvelope};
use futures::StreamExt;
use serde_json::{Map, Value, json};

/// Plans `extract → summarise`; its first draft forgets the edge between them.
struct TicketPlanner {
    calls: AtomicU32,
}

fn node(id: &str, capability: &Capability) -> PlanNode {
    PlanNode {
        id: id.to_owned(),
        stage: "support".to_owned(),
        capability_id: capability.capability_id.clone(),
        kind: capability.kind,
        input_facets: capability.input_facets.clone(),
        output_facets: capability.output_facets.clone(),
        instructions: Vec::new(),
        rationale: capability.summary.clone(),
    }
}

#[async_trait]
impl Planner for TicketPlanner {
    fn name(&self) -> &str {
        "tickets"
    }

    async fn plan(&self, request: PlanRequest) -> Result<PlanResponse, PlannerError> {
        let attempt = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        for d in &request.diagnostics {
            println!("planner was told: [{}] {}", d.code, d.message);
        }
        let find = |id: &str| {
            request
                .capabilities
                .iter()
                .find(|c| c.capability_id == id)
                .ok_or_else(|| PlannerError::Fatal(format!("capability `{id}` is missing")))
        };
        let extract = node("extract", find("ticket.extract")?);
        let summarise = node("summarise", find("ticket.summarise")?);
        let edges = if attempt == 1 {
            Vec::new()
        } else {
            vec![PlanEdge::new("extract", "summarise")]
        };
        Ok(PlanResponse::new(PlannerOutput::Draft(PlanDraft {
            nodes: vec![extract, summarise],
            edges,
            system_instructions: "be factual".to_owned(),
            rationale: "extract the facts, then summarise them".to_owned(),
        })))
    }
}

fn facets() -> Result<Vec<Facet>, serde_json::Error> {
    serde_json::from_value(json!([
        {"name": "ticketText", "title": "Ticket", "description": "The customer's message",
         "direction": "input", "schema": {"type": "string"}},
        {"name": "ticketFacts", "title": "Facts", "description": "What the customer reports",
         "direction": "bidirectional", "schema": {"type": "array", "items": {"type": "string"}}},
        {"name": "ticketSummary", "title": "Summary", "description": "One line for the agent",
         "direction": "output", "schema": {"type": "string"}, "requiredByDefault": true}
    ]))
}

fn capabilities() -> Result<Vec<Capability>, serde_json::Error> {
    serde_json::from_value(json!([
        {"capabilityId": "ticket.extract", "version": "1.0.0", "displayName": "Extract",
         "summary": "Splits a ticket into facts", "kind": "transformation", "agentType": "ai",
         "inputFacets": ["ticketText"], "outputFacets": ["ticketFacts"],
         "timeoutMs": 1000, "maxAttempts": 2, "executor": {"type": "builtin", "handler": "extract"}},
        {"capabilityId": "ticket.summarise", "version": "1.0.0", "displayName": "Summarise",
         "summary": "Summarises the facts", "kind": "execution", "agentType": "ai",
         "inputFacets": ["ticketFacts"], "outputFacets": ["ticketSummary"],
         "timeoutMs": 1000, "maxAttempts": 2, "executor": {"type": "builtin", "handler": "summarise"}}
    ]))
}

fn extract(call: &NodeCall) -> Result<Map<String, Value>, ExecError> {
    let text = call.inputs["ticketText"]
        .as_str()
        .ok_or_else(|| ExecError::fatal("INPUT_INVALID", "ticketText is not a string"))?;
    let facts: Vec<Value> = text
        .split('.')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| Value::String(s.to_owned()))
        .collect();
    Ok(Map::from_iter([(
        "ticketFacts".to_owned(),
        Value::Array(facts),
    )]))
}

fn summarise(call: &NodeCall) -> Result<Map<String, Value>, ExecError> {
    let facts = call.inputs["ticketFacts"].as_array().map_or(0, Vec::len);
    let summary = format!("customer reports {facts} issue(s)");
    Ok(Map::from_iter([(
        "ticketSummary".to_owned(),
        Value::String(summary),
    )]))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let planner = Arc::new(TicketPlanner {
        calls: AtomicU32::new(0),
    });
    let mut config = EngineConfig::new(Arc::new(MemoryStore::new()), planner);
    config.facets = facets()?;
    config.capabilities = capabilities()?;
    config.executors = Executors::new()
        .builtin("extract", extract)
        .builtin("summarise", summarise);
    let engine = Engine::open(config).await?;

    let envelope: RunEnvelope = serde_json::from_value(json!({
        "objective": "summarise a support ticket",
        "inputs": {"ticketText": "The app crashes on login. Password reset mails never arrive."},
        "outputContract": {"mode": "facets", "facets": ["ticketSummary"]}
    }))?;
    let run = engine.submit(envelope).await?;
    let mut events = engine.events(run, 0)?;
    while let Some(event) = events.next().await {
        match &event.body {
            EventBody::PlanRejected { diagnostics, .. } => {
                println!(
                    "{:>2} plan_rejected: {} diagnostic(s)",
                    event.seq,
                    diagnostics.len()
                )
            }
            body => println!("{:>2} {}", event.seq, body.kind().as_str()),
        }
    }
    let result = engine.wait(run).await?;
    println!("{:?}: {}", result.status, result.output.unwrap_or_default());
    engine.shutdown().await;
    Ok(())
}
