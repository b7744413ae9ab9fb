//! The harness on fixed operation lists: what it records, and what it reports.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::fsm::{EventKind, RunOutcome, RunState};
use crate::planner::{PlanRequest, PlanResponse, Planner, PlannerError};
use crate::{Engine, MemoryStore, RunEnvelope};

fn envelope(policies: serde_json::Value) -> RunEnvelope {
    serde_json::from_value(json!({
        "objective": "a tagline",
        "inputs": {"objectiveBrief": "fresh bread"},
        "outputContract": {"mode": "facets", "facets": ["copyVariants"]},
        "policies": policies
    }))
    .unwrap()
}

fn review(on_reject: &str) -> serde_json::Value {
    json!({"runtime": [{
        "id": "review",
        "trigger": {"kind": "onNodeComplete", "selector": {"capabilityId": "writer.en"}},
        "action": {"type": "hitl", "kind": "approval", "question": "ok?",
                   "onApprove": "continue", "onReject": on_reject}
    }]})
}

async fn demo_engine(planner: Option<Arc<dyn Planner>>) -> Engine {
    let mut config = crate::demo::config(Arc::new(MemoryStore::new()));
    if let Some(planner) = planner {
        config.planner = planner;
    }
    Engine::open(config).await.unwrap()
}

fn steer(op: SteerOp) -> Op {
    Op::Steer(op)
}

fn refusal(report: &CaseReport, step: usize) -> &str {
    match &report.steps[step].outcome {
        StepOutcome::Refused(e) => e,
        other => panic!("step {step}: {other:?}\n{report}"),
    }
}

#[tokio::test]
async fn a_fixed_case_records_each_answer_and_where_the_run_was() {
    let engine = demo_engine(None).await;
    let ops = [
        Op::Quiesce,
        steer(SteerOp::Pause),
        steer(SteerOp::AnswerStale),
        steer(SteerOp::Signal("nobody-listens".into())),
        steer(SteerOp::Answer(Answer::Reject)),
        steer(SteerOp::Resume),
        Op::NextEvent,
    ];
    let report = run_case(
        &engine,
        envelope(review("fail")),
        &ops,
        &CaseOptions::default(),
    )
    .await;
    assert!(report.passed(), "{report}");
    assert!(report.steps[1..].iter().all(|s| s.quiescent), "{report}");
    assert!(refusal(&report, 1).contains("operator_pause"), "{report}");
    assert!(refusal(&report, 2).contains(STALE_REQUEST_ID), "{report}");
    assert_eq!(
        report.steps[3].outcome,
        StepOutcome::Accepted(RunState::Paused)
    );
    assert_eq!(
        report.steps[4].outcome,
        StepOutcome::Accepted(RunState::Done)
    );
    assert!(refusal(&report, 5).contains("has ended"), "{report}");
    assert_eq!(report.steps[6].outcome, StepOutcome::Waited(0));
    let finishing: Vec<&Op> = report.steps[7..].iter().map(|s| &s.op).collect();
    assert_eq!(
        finishing,
        [&Op::Quiesce],
        "nothing left to finish: {report}"
    );
    assert_eq!(report.outcome, Some(RunOutcome::Failed));
    let kinds: Vec<EventKind> = report.events.iter().map(|e| e.kind()).collect();
    assert_eq!(kinds.last(), Some(&EventKind::Complete));
    assert!(
        !kinds.contains(&EventKind::HitlResolved),
        "a fail follow-up completes at once"
    );
    assert_eq!(report.accepted(), 2);
}

#[tokio::test]
async fn the_harness_ends_what_the_operations_leave_paused() {
    let engine = demo_engine(None).await;
    let report = run_case(
        &engine,
        envelope(review("replan")),
        &[],
        &CaseOptions::default(),
    )
    .await;
    assert!(report.passed(), "{report}");
    assert_eq!(report.outcome, Some(RunOutcome::Completed));
    let finishing: Vec<&Op> = report.steps.iter().map(|s| &s.op).collect();
    assert!(
        finishing.contains(&&steer(SteerOp::Answer(Answer::Approve))),
        "{report}"
    );
    assert!(report.steps.iter().all(|s| s.finishing));
}

#[tokio::test]
async fn a_refused_envelope_is_a_setup_violation() {
    let engine = demo_engine(None).await;
    let bad = envelope(json!({"runtime": [{"id": "x", "trigger": {"kind": "never"}}]}));
    let report = run_case(&engine, bad, &[Op::Quiesce], &CaseOptions::default()).await;
    assert_eq!(report.violations.len(), 1, "{report}");
    assert_eq!(report.violations[0].rule, Rule::Setup);
    assert_eq!(report.run_id, None);
}

/// A planner that never answers.
#[derive(Debug)]
struct Silent;

#[crate::async_trait]
impl Planner for Silent {
    fn name(&self) -> &str {
        "silent"
    }

    async fn plan(&self, _: PlanRequest) -> Result<PlanResponse, PlannerError> {
        futures::future::pending().await
    }
}

#[tokio::test]
async fn a_run_that_stops_moving_is_reported_stalled_and_cancelled() {
    let engine = demo_engine(Some(Arc::new(Silent))).await;
    let options = CaseOptions::default().with_wait(Duration::from_millis(200));
    let report = run_case(&engine, envelope(json!({})), &[Op::Quiesce], &options).await;
    let rules: Vec<Rule> = report.violations.iter().map(|v| v.rule).collect();
    assert_eq!(rules, [Rule::Stalled], "{report}");
    assert_eq!(report.outcome, Some(RunOutcome::Cancelled), "{report}");
}
