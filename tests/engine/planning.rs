//! (a) initial plan accepted and executed; (b) first draft rejected, diagnostics sent back.

use std::sync::Arc;

use flexrun::diagnostics::DiagnosticCode;
use flexrun::fsm::{EventBody, PlanPhase, RunOutcome};
use flexrun::planner::{ScriptStep, ScriptedPlanner};
use serde_json::json;

use crate::plans::draft;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_plan_is_accepted_executed_and_completed() {
    let mut env = TestEnv::start(None).await;
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], json!(null)))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(
        labels(&events),
        [
            "plan_requested",
            "plan_generated",
            "plan_accepted",
            "node_start:brief-structurer",
            "node_complete:brief-structurer",
            "node_start:writer-en",
            "node_complete:writer-en",
            "complete"
        ]
    );
    assert_gap_free(&events);
    let EventBody::Complete { status, output, .. } = &events.last().unwrap().body else {
        panic!()
    };
    assert_eq!(*status, RunOutcome::Completed);
    let variants = output.as_ref().unwrap()["copyVariants"].as_array().unwrap();
    assert_eq!(
        variants[0],
        "Fresh sourdough baked daily! Made for busy parents."
    );
    assert_eq!(
        env.stored_events(run),
        events,
        "published events are exactly the committed ones"
    );
    let head = env.engine.head(run).unwrap();
    assert_eq!(
        (head.state.as_str(), head.plan_version, head.last_seq),
        ("done", 1, 8)
    );
    assert_eq!(
        env.engine.wait(run).await.unwrap().status,
        RunOutcome::Completed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_draft_diagnostics_reach_the_next_planner_request() {
    let planner = ScriptedPlanner::new([
        ScriptStep::Draft(draft("writer.de")),
        ScriptStep::Draft(draft("writer.en")),
    ]);
    let mut env = TestEnv::start(Some(Arc::new(planner.clone()))).await;
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], json!(null)))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(
        labels(&events),
        [
            "plan_requested",
            "plan_generated",
            "plan_rejected",
            "plan_generated",
            "plan_accepted",
            "node_start:brief",
            "node_complete:brief",
            "node_start:write",
            "node_complete:write",
            "complete"
        ]
    );
    let EventBody::PlanRejected {
        diagnostics,
        attempt,
        ..
    } = &events[2].body
    else {
        panic!()
    };
    assert_eq!(*attempt, 1);
    let d = diagnostics
        .iter()
        .find(|d| d.code == DiagnosticCode::CapabilityNotRegistered)
        .expect("CAPABILITY_NOT_REGISTERED");
    assert_eq!(
        (d.node_id.as_deref(), d.capability_id.as_deref()),
        (Some("write"), Some("writer.de"))
    );

    let requests = planner.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests[0].diagnostics.is_empty());
    assert_eq!(
        (requests[1].attempt, requests[1].phase),
        (2, PlanPhase::Revision)
    );
    assert!(
        requests[1]
            .diagnostics
            .iter()
            .any(|d| d.code == DiagnosticCode::CapabilityNotRegistered
                && d.capability_id.as_deref() == Some("writer.de")),
        "the revision request carries the diagnostics: {:?}",
        requests[1].diagnostics
    );
    assert_eq!(complete_status(&events).as_deref(), Some("completed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_exhausted_fail_the_run_with_a_complete_frame() {
    let planner = ScriptedPlanner::new([
        ScriptStep::Draft(draft("writer.de")),
        ScriptStep::Draft(draft("writer.xx")),
    ]);
    let mut env = TestEnv::start(Some(Arc::new(planner))).await;
    let policies = json!({"planner": {"maxAttempts": 2}});
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], policies))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(
        kinds(&events),
        [
            "plan_requested",
            "plan_generated",
            "plan_rejected",
            "plan_generated",
            "complete"
        ]
    );
    let EventBody::Complete { status, error, .. } = &events[4].body else {
        panic!()
    };
    assert_eq!(*status, RunOutcome::Failed);
    assert_eq!(error.as_ref().unwrap().code, "PLAN_ATTEMPTS_EXHAUSTED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_envelopes_are_refused_naming_the_field_and_store_nothing() {
    let env = TestEnv::start(None).await;
    let cases = [
        (
            json!({"objective": " ", "outputContract": {"mode": "facets", "facets": ["copyVariants"]}}),
            "objective",
        ),
        (
            json!({"objective": "x", "outputContract": {"mode": "facets", "facets": ["nope"]}}),
            "outputContract.facets[0]",
        ),
        (
            json!({"objective": "x", "inputs": {"zzz": 1}, "outputContract": {"mode": "facets", "facets": ["copyVariants"]}}),
            "inputs.zzz",
        ),
        (
            json!({"objective": "x", "outputContract": {"mode": "facets", "facets": ["copyVariants"]}, "policies": {"runtime": [{"id": "a", "trigger": {"kind": "onWhatever"}, "action": {"type": "replan"}}]}}),
            "policies.runtime[0].trigger.kind",
        ),
        (
            json!({"objective": "x", "planner": "oracle", "outputContract": {"mode": "facets", "facets": ["copyVariants"]}}),
            "planner",
        ),
    ];
    for (value, field) in cases {
        let err = env.engine.submit(envelope(value)).await.unwrap_err();
        match err {
            flexrun::EngineError::InvalidEnvelope { field: f, .. } => assert_eq!(f, field),
            flexrun::EngineError::InvalidPolicies { field: f, source } => {
                assert_eq!(f, field);
                assert_eq!(
                    format!("policies.{}", source.path()),
                    field,
                    "the cause is typed"
                );
            }
            other => panic!("expected InvalidEnvelope for {field}, got {other}"),
        }
    }
    assert!(env.engine.store().list_runs(None).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_planner_failure_is_asked_again_with_the_error() {
    use flexrun::planner::PlannerError;
    let planner = ScriptedPlanner::new([
        ScriptStep::Error(PlannerError::Retryable("rate limited".into())),
        ScriptStep::Draft(draft("writer.en")),
    ]);
    let mut env = TestEnv::start(Some(Arc::new(planner.clone()))).await;
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], json!(null)))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(
        labels(&events)[..4],
        [
            "plan_requested",
            "plan_requested",
            "plan_generated",
            "plan_accepted"
        ]
    );
    let EventBody::PlanRequested {
        phase,
        attempt,
        error,
        ..
    } = &events[1].body
    else {
        panic!("{:?}", events[1])
    };
    assert_eq!((*phase, *attempt), (PlanPhase::Revision, 2));
    assert!(error.as_deref().unwrap().contains("rate limited"));
    assert_eq!(complete_status(&events).as_deref(), Some("completed"));
    let requests = planner.requests();
    assert_eq!(requests.len(), 2, "asked once more");
}
