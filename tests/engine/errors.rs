//! Typed engine errors: each carries its cause, so a caller matches on what it can act on.

use std::error::Error as _;

use flexrun::EngineError;
use flexrun::catalog::CatalogError;
use flexrun::diagnostics::DiagnosticCode;
use flexrun::fsm::FsmError;
use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_refusals_carry_the_catalog_error_or_the_diagnostics() {
    let env = TestEnv::start(None).await;
    let mut facet = flexrun::demo::facets().remove(0);
    facet.name = String::new();
    match env.engine.register_facet(facet).unwrap_err() {
        EngineError::Catalog(CatalogError::InvalidId(e)) => assert_eq!(e.field(), "name"),
        other => panic!("{other:?}"),
    }
    let mut capability = flexrun::demo::capabilities().remove(0);
    capability.capability_id = "brief.v2".into();
    capability.input_facets = vec!["noSuchFacet".into()];
    match env.engine.register_capability(capability).unwrap_err() {
        EngineError::CapabilityFacets {
            capability_id,
            diagnostics,
        } => {
            assert_eq!(capability_id, "brief.v2");
            assert!(
                diagnostics
                    .iter()
                    .any(|d| d.code == DiagnosticCode::UnknownFacet
                        && d.facet.as_deref() == Some("noSuchFacet")),
                "{diagnostics:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_conflicts_and_unknown_requests_are_told_apart() {
    let mut env = TestEnv::start(None).await;
    let policies = json!({"runtime": [{"id": "hold", "trigger": {"kind": "onStart"},
        "action": {"type": "hitl", "question": "go?", "onApprove": "continue", "onReject": "fail"}}]});
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], policies))
        .await
        .unwrap();
    env.until(run, |e| e.kind() == flexrun::fsm::EventKind::HitlRequest)
        .await;
    let err = env.engine.pause(run, "again").await.unwrap_err();
    match &err {
        EngineError::IllegalTransition(FsmError::IllegalTransition { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(
        err.source().is_some(),
        "the machine's refusal is the source"
    );
    let answer = flexrun::HitlAnswer::new(flexrun::fsm::HitlDecision::Approve);
    match env
        .engine
        .answer_hitl(run, "r-404", answer)
        .await
        .unwrap_err()
    {
        EngineError::UnknownHitlRequest { run: r, request_id } => {
            assert_eq!((r, request_id.as_str()), (run, "r-404"));
        }
        other => panic!("{other:?}"),
    }
    env.engine.cancel(run, "done").await.unwrap();
}
