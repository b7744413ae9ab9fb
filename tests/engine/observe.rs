//! The observation API an embedding service uses: a per-run gap-free stream, `wait` with the
//! output or error, the pending HITL requests, and `hitl_resolved` naming its node.

use flexrun::fsm::{EventBody, EventKind, HitlDecision, RunOutcome};
use flexrun::planner::{PlannerError, ScriptStep};
use flexrun::{HitlAnswer, ScriptedPlanner};
use futures::StreamExt;
use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stream_is_gap_free_ends_with_complete_and_resumes_after_a_seq() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path().join("flexrun.redb"), None, |mut c| {
        c.event_buffer = 1;
        c
    })
    .await;
    let other = engine
        .submit(copy_envelope(&["copyVariants"], json!(null)))
        .await
        .unwrap();
    let run = engine
        .submit(copy_envelope(&["copyVariants", "summary"], json!(null)))
        .await
        .unwrap();
    let live: Vec<_> = engine.events(run, 0).unwrap().collect().await;
    let stored = engine.store().events_after(run, 0, usize::MAX).unwrap();
    let seqs: Vec<u64> = live.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=stored.len() as u64).collect::<Vec<_>>());
    assert!(
        live.iter().all(|e| e.run_id == run),
        "only this run's events"
    );
    assert_eq!(live.last().unwrap().kind(), EventKind::Complete);
    let tail: Vec<_> = engine.events(run, 3).unwrap().collect().await;
    assert_eq!(
        tail.first().map(|e| e.seq),
        Some(4),
        "resumes after the given seq"
    );
    assert_eq!(tail.len(), stored.len() - 3);
    assert_eq!(
        engine.wait(other).await.unwrap().status,
        RunOutcome::Completed
    );
    assert!(
        engine.events(flexrun::RunId::new(), 0).is_err(),
        "unknown runs are refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_returns_the_output_or_the_error() {
    let env = TestEnv::start(None).await;
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], json!(null)))
        .await
        .unwrap();
    let done = env.engine.wait(run).await.unwrap();
    assert_eq!((done.run_id, done.status), (run, RunOutcome::Completed));
    assert!(done.output.unwrap()["copyVariants"].is_array());
    assert!(done.error.is_none());
    let again = env.engine.wait(run).await.unwrap();
    assert_eq!(
        again.status,
        RunOutcome::Completed,
        "an ended run answers at once"
    );

    let planner = ScriptedPlanner::new([ScriptStep::Error(PlannerError::Fatal(
        "no credentials".to_owned(),
    ))]);
    let env = TestEnv::start(Some(std::sync::Arc::new(planner))).await;
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], json!(null)))
        .await
        .unwrap();
    let failed = env.engine.wait(run).await.unwrap();
    assert_eq!(failed.status, RunOutcome::Failed);
    assert!(failed.output.is_none());
    let error = failed.error.unwrap();
    assert!(error.message.contains("no credentials"), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_hitl_lists_open_requests_and_the_answer_names_its_node() {
    let mut env = TestEnv::start(None).await;
    let policies = json!({"runtime": [{"id": "review",
        "trigger": {"kind": "onNodeComplete", "selector": {"capabilityId": "writer.en"}},
        "action": {"type": "hitl", "question": "publish?", "onApprove": "continue", "onReject": "fail"}}]});
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants", "summary"], policies))
        .await
        .unwrap();
    let asked = env.until(run, |e| e.kind() == EventKind::HitlRequest).await;
    let request = asked.last().unwrap();
    let EventBody::HitlRequest { request_id, .. } = &request.body else {
        panic!("{request:?}")
    };
    let pending = env.engine.pending_hitl(run).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(&pending[0].request_id, request_id);
    env.engine
        .answer_hitl(run, request_id, HitlAnswer::new(HitlDecision::Approve))
        .await
        .unwrap();
    let rest = env.until_complete(run).await;
    let resolved = rest
        .iter()
        .find(|e| e.kind() == EventKind::HitlResolved)
        .unwrap();
    assert!(request.node_id.is_some());
    assert_eq!(
        resolved.node_id, request.node_id,
        "hitl_resolved names the request's node"
    );
    assert!(env.engine.pending_hitl(run).unwrap().is_empty());
}
