//! The identifier grammar at the library's entry points: catalog registration, envelope
//! submission, HITL answers and planner drafts; and stored data that predates it.

use std::sync::Arc;

use flexrun::catalog::{CatalogError, Facet};
use flexrun::diagnostics::DiagnosticCode;
use flexrun::fsm::{EventBody, EventKind, HitlDecision};
use flexrun::graph::PlanDraft;
use flexrun::ids::{IdKind, MAX_ID_LEN};
use flexrun::planner::ScriptStep;
use flexrun::{
    Durability, EngineError, HitlAnswer, RedbStore, RunEnvelope, ScriptedPlanner, Store,
};
use serde_json::json;

use crate::plans;
use crate::support::*;

fn catalog_field(err: EngineError) -> String {
    match err {
        EngineError::Catalog(CatalogError::InvalidId(e)) => e.field().to_owned(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_refuses_ids_outside_the_grammar_and_names_the_field() {
    let env = TestEnv::start(None).await;
    let before = env.engine.catalog().registry.len();
    let mut capability = flexrun::demo::capabilities().remove(0);
    capability.capability_id = "../../etc".into();
    assert_eq!(
        catalog_field(
            env.engine
                .register_capability(capability.clone())
                .unwrap_err()
        ),
        "capabilityId"
    );
    capability.capability_id = "brief.v2".into();
    capability.output_facets = vec!["x".repeat(1_000_001)];
    let err = env.engine.register_capability(capability).unwrap_err();
    assert!(err.to_string().len() < 300, "no echo of the whole name");
    assert_eq!(catalog_field(err), "outputFacets[0]");
    let facet = Facet::new("a b", json!({"type": "string"}));
    assert_eq!(
        catalog_field(env.engine.register_facet(facet).unwrap_err()),
        "name"
    );
    assert_eq!(env.engine.catalog().registry.len(), before);
    assert!(env.engine.catalog().facets.get("a b").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_refuses_bad_policy_ids_and_facet_names() {
    let env = TestEnv::start(None).await;
    let policies = json!({"runtime": [{"id": "qa gate", "trigger": {"kind": "onStart"},
        "action": {"type": "pause"}}]});
    match env
        .engine
        .submit(copy_envelope(&["copyVariants"], policies))
        .await
        .unwrap_err()
    {
        EngineError::InvalidPolicies { field, .. } => assert_eq!(field, "policies.runtime[0].id"),
        other => panic!("{other:?}"),
    }
    let mut bad_input = copy_envelope(&["copyVariants"], json!(null));
    bad_input.inputs.insert("a/b".into(), json!("x"));
    let mut bad_output = copy_envelope(&["copyVariants"], json!(null));
    bad_output.output_contract = flexrun::OutputContract::Facets {
        facets: vec!["copyVariants".into(), "..".into()],
    };
    for (envelope, expected) in [
        (bad_input, "inputs.a/b"),
        (bad_output, "outputContract.facets[1]"),
    ] {
        match env.engine.submit(envelope).await.unwrap_err() {
            EngineError::InvalidEnvelope { field, message } => {
                assert_eq!(field, expected);
                assert!(message.contains("invalid facet name"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(env.engine.store().list_runs(None).unwrap().is_empty());
}

/// The longest policy id still leaves room for the HITL request id made from it, which can
/// be answered; an answer naming no identifier is refused as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_policy_id_names_an_answerable_hitl_request() {
    let mut env = TestEnv::start(None).await;
    let id = "p".repeat(IdKind::Policy.max_len());
    let policies = json!({"runtime": [{"id": id, "trigger": {"kind": "onStart"},
        "action": {"type": "hitl", "question": "go?", "onApprove": "continue", "onReject": "fail"}}]});
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], policies))
        .await
        .unwrap();
    let before = env.until(run, |e| e.kind() == EventKind::HitlRequest).await;
    let EventBody::HitlRequest { request_id, .. } = &before.last().unwrap().body else {
        panic!()
    };
    assert_eq!(request_id, &format!("{id}-1"));
    assert!(request_id.len() <= MAX_ID_LEN);
    let approve = || HitlAnswer::new(HitlDecision::Approve);
    match env
        .engine
        .answer_hitl(run, "no such/request", approve())
        .await
        .unwrap_err()
    {
        EngineError::InvalidId(e) => assert_eq!(e.field(), "requestId"),
        other => panic!("{other:?}"),
    }
    env.engine
        .answer_hitl(run, request_id, approve())
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(complete_status(&events).as_deref(), Some("completed"));
}

/// A typed draft with a bad node id is rejected like any invalid plan, with the place, the
/// grammar and the id; the revision is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_with_a_bad_node_id_is_diagnosed_and_revised() {
    let mut bad: PlanDraft = plans::draft("writer.en");
    bad.nodes[1].id = "write copy".into();
    bad.edges[0].to = "write copy".into();
    let planner = ScriptedPlanner::new([
        ScriptStep::Draft(bad),
        ScriptStep::Draft(plans::draft("writer.en")),
    ]);
    let mut env = TestEnv::start(Some(Arc::new(planner.clone()))).await;
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], json!(null)))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(complete_status(&events).as_deref(), Some("completed"));
    let diagnostics = events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::PlanRejected { diagnostics, .. } => Some(diagnostics.clone()),
            _ => None,
        })
        .expect("a plan_rejected");
    let errors: Vec<_> = diagnostics.iter().filter(|d| d.is_error()).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let d = errors[0];
    assert_eq!(d.code, DiagnosticCode::InvalidNodeId);
    assert_eq!(d.code.as_str(), "INVALID_NODE_ID");
    assert_eq!(d.node_id.as_deref(), Some("write copy"));
    assert_eq!(d.pointer.as_deref(), Some("/nodes/1/id"));
    assert_eq!(d.expected, Some(IdKind::Node.expected()));
    assert_eq!(d.found.as_deref(), Some("\"write copy\""));
    assert!(d.hint.is_some());
    let revision = planner.requests().last().cloned().unwrap();
    assert!(
        revision
            .diagnostics
            .iter()
            .any(|d| d.code == DiagnosticCode::InvalidNodeId),
        "the planner is told"
    );
}

/// Catalog entries written before the grammar existed still open: the engine does not refuse
/// its own store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_entries_that_predate_the_grammar_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flexrun.redb");
    {
        let store = RedbStore::open(&path, Durability::Fsync).unwrap();
        let mut capability = flexrun::demo::capabilities().remove(0);
        capability.capability_id = "old writer/en".into();
        store.put_capability(&capability).unwrap();
        store
            .put_facet(&Facet::new("old facet", json!({"type": "string"})))
            .unwrap();
    }
    let engine = open(path, None, |c| c).await;
    let catalog = engine.catalog();
    assert!(catalog.registry.contains("old writer/en"));
    assert!(catalog.facets.contains("old facet"));
    let envelope: RunEnvelope = copy_envelope(&["copyVariants"], json!(null));
    let run = engine.submit(envelope).await.unwrap();
    assert_eq!(
        engine.wait(run).await.unwrap().status,
        flexrun::fsm::RunOutcome::Completed
    );
}
