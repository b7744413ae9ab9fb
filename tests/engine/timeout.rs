//! `onTimeout{ms}` measures execution time: from the first accepted plan, not counting the
//! time the run is paused waiting for a human.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flexrun::catalog::{AgentType, Capability, CapabilityKind, CapabilityStatus, ExecutorSpec};
use flexrun::engine::{ExecError, NodeCall, NodeExecutor};
use flexrun::fsm::HitlDecision;
use flexrun::fsm::{EventBody, EventKind};
use flexrun::{HitlAnswer, RunId};
use serde_json::{Map, Value, json};

use crate::support::*;

/// Never answers: the node is still running when the timeout comes.
struct Hang;

#[async_trait]
impl NodeExecutor for Hang {
    async fn execute(&self, _call: NodeCall) -> Result<Map<String, Value>, ExecError> {
        futures::future::pending().await
    }
}

/// Answers after a short while, as a real model call would.
struct Slow;

#[async_trait]
impl NodeExecutor for Slow {
    async fn execute(&self, call: NodeCall) -> Result<Map<String, Value>, ExecError> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut out = Map::new();
        out.insert(
            "copyVariants".into(),
            json!([format!("by {}", call.node_id)]),
        );
        Ok(out)
    }
}

/// A writer served by the executor type `executor_type`.
fn writer(capability_id: &str, executor_type: &str) -> Capability {
    Capability {
        capability_id: capability_id.into(),
        version: "1.0.0".into(),
        display_name: "hanging writer".into(),
        summary: "writes copy, eventually".into(),
        kind: CapabilityKind::Execution,
        agent_type: AgentType::Ai,
        input_facets: vec!["writerBrief".into()],
        output_facets: vec!["copyVariants".into()],
        cost: 0.1,
        timeout_ms: 60_000,
        max_attempts: 1,
        fallback: None,
        executor: ExecutorSpec::Custom {
            executor_type: executor_type.into(),
            config: Map::new(),
        },
        status: CapabilityStatus::Active,
    }
}

/// An engine whose catalog adds `capability`, served by `executor`.
async fn with_writer(
    capability: Capability,
    executor_type: &str,
    executor: Arc<dyn NodeExecutor>,
) -> TestEnv {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path().join("flexrun.redb"), None, |mut c| {
        c.capabilities.push(capability);
        c.executors = c.executors.clone().with_type(executor_type, executor);
        c
    })
    .await;
    let rx = engine.subscribe();
    TestEnv { dir, engine, rx }
}

/// An approval asked when the run starts, and a time limit that fails the run.
fn approval_then_limit(ms: u64, planner: Value) -> Value {
    json!({"planner": planner, "runtime": [
        {"id": "go-ahead", "trigger": {"kind": "onStart"},
         "action": {"type": "hitl", "question": "start?", "onApprove": "continue", "onReject": "fail"}},
        {"id": "limit", "trigger": {"kind": "onTimeout", "ms": ms},
         "action": {"type": "fail", "reason": "too slow"}}
    ]})
}

/// Waits for the onStart request, holds it for `hold`, then approves it.
async fn approve_after(env: &mut TestEnv, run: RunId, hold: Duration) {
    let events = env.until(run, |e| e.kind() == EventKind::HitlRequest).await;
    let EventBody::HitlRequest { request_id, .. } = &events.last().unwrap().body else {
        panic!()
    };
    tokio::time::sleep(hold).await;
    env.engine
        .answer_hitl(run, request_id, HitlAnswer::new(HitlDecision::Approve))
        .await
        .unwrap();
}

fn at(events: &[flexrun::fsm::RunEvent], kind: EventKind) -> u64 {
    events
        .iter()
        .find(|e| e.kind() == kind)
        .unwrap_or_else(|| panic!("no {kind:?} in {:?}", labels(events)))
        .timestamp
        .millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_waiting_for_a_human_does_not_count_towards_on_timeout() {
    let mut env = with_writer(writer("writer.slow", "slow"), "slow", Arc::new(Slow)).await;
    let planner = json!({"forbiddenCapabilities": ["writer.en", "writer.formal"]});
    let envelope = copy_envelope(&["copyVariants"], approval_then_limit(1_000, planner));
    let run = env.engine.submit(envelope).await.unwrap();
    approve_after(&mut env, run, Duration::from_millis(1_500)).await;
    let after = env.until_complete(run).await;
    assert_eq!(
        complete_status(&after).as_deref(),
        Some("completed"),
        "{:?}",
        labels(&after)
    );
    let all = env.stored_events(run);
    let waited = at(&all, EventKind::HitlResolved) - at(&all, EventKind::HitlRequest);
    assert!(
        waited >= 1_500,
        "the run waited {waited} ms for its approval"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_timeout_fires_after_the_execution_time_not_the_run_age() {
    let mut env = with_writer(writer("writer.hang", "hang"), "hang", Arc::new(Hang)).await;
    let planner = json!({"forbiddenCapabilities": ["writer.en", "writer.formal"]});
    let envelope = copy_envelope(&["copyVariants"], approval_then_limit(400, planner));
    let run = env.engine.submit(envelope).await.unwrap();
    approve_after(&mut env, run, Duration::from_millis(600)).await;
    let after = env.until_complete(run).await;
    let EventBody::Complete { error, .. } = &after.last().unwrap().body else {
        panic!()
    };
    let error = error.as_ref().expect("the limit failed the run");
    assert_eq!(error.code, "POLICY_FAILED", "{error:?}");

    let all = env.stored_events(run);
    let executing = at(&all, EventKind::PlanAccepted);
    let paused = at(&all, EventKind::HitlResolved) - at(&all, EventKind::HitlRequest);
    let ended = at(&all, EventKind::Complete);
    assert!(paused >= 600, "paused {paused} ms");
    assert!(
        ended - executing - paused >= 400,
        "failed after {} ms of execution (run age {} ms)",
        ended - executing - paused,
        ended - all[0].timestamp.millis()
    );
}
