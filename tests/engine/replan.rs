//! (c) a mid-run policy replan: drain, delta, new version, completed nodes kept.

use flexrun::fsm::{EventBody, EventKind, TriggerSource};
use flexrun::{Durability, RedbStore, Store};
use serde_json::json;

use crate::support::*;

fn qa_gate() -> serde_json::Value {
    json!({"runtime": [{"id": "qa-gate",
        "trigger": {"kind": "onNodeComplete", "selector": {"capabilityId": "writer.en"}},
        "action": {"type": "replan", "rationale": "add a QA pass"}}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_replan_merges_a_delta_and_keeps_completed_work() {
    let mut env = TestEnv::start(None).await;
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants", "summary"], qa_gate()))
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
            "policy_triggered",
            "plan_requested",
            "plan_generated",
            "plan_updated",
            "node_start:qa-copy-after-writer-en",
            "node_complete:qa-copy-after-writer-en",
            "node_start:copy-summarizer",
            "node_complete:copy-summarizer",
            "complete"
        ],
        "the QA pass is gated before the summarizer"
    );
    assert_gap_free(&events);
    assert_eq!(complete_status(&events).as_deref(), Some("completed"));

    let trig = events
        .iter()
        .position(|e| e.kind() == EventKind::PolicyTriggered)
        .unwrap();
    let upd = events
        .iter()
        .position(|e| e.kind() == EventKind::PlanUpdated)
        .unwrap();
    assert!(
        events[trig..upd]
            .iter()
            .all(|e| e.kind() != EventKind::NodeStart),
        "no dispatch while replanning"
    );
    let EventBody::PlanRequested { phase, trigger, .. } = &events[trig + 1].body else {
        panic!()
    };
    assert_eq!(format!("{phase:?}"), "Replan");
    let trigger = trigger.as_ref().unwrap();
    assert_eq!(
        (
            trigger.source,
            trigger.policy_id.as_deref(),
            trigger.node_id.as_deref()
        ),
        (TriggerSource::Policy, Some("qa-gate"), Some("writer-en"))
    );
    let EventBody::PlanUpdated {
        previous_version,
        version,
        diff,
        ..
    } = &events[upd].body
    else {
        panic!()
    };
    assert_eq!((*previous_version, *version), (1, 2));
    assert_eq!(diff.added_nodes, ["qa-copy-after-writer-en"]);
    assert!(diff.removed_nodes.is_empty() && diff.changed_nodes.is_empty());
    assert_eq!(events[upd].plan_version, 2);
    for n in ["brief-structurer", "writer-en"] {
        let starts = events
            .iter()
            .filter(|e| e.kind() == EventKind::NodeStart && e.node_id.as_deref() == Some(n))
            .count();
        assert_eq!(starts, 1, "{n} ran once");
    }

    let path = env.path();
    env.engine.shutdown().await;
    drop(env.engine);
    let store = RedbStore::open(&path, Durability::Fsync).unwrap();
    assert_eq!(store.plan_versions(run).unwrap(), [1, 2]);
    let v1 = store.plan_version(run, 1).unwrap().unwrap();
    let v2 = store.plan_version(run, 2).unwrap().unwrap();
    assert_eq!(v1.nodes.len(), 3);
    assert_eq!(v2.nodes.len(), 4);
    assert!(
        v1.nodes.iter().all(|n| v2.nodes.contains(n)),
        "v1 nodes unchanged in v2"
    );
    assert_eq!(store.events_after(run, 0, usize::MAX).unwrap(), events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_signal_fires_a_manual_policy() {
    let mut env = TestEnv::start(None).await;
    let policies = json!({"runtime": [
        {"id": "hold", "trigger": {"kind": "onNodeComplete", "selector": {"capabilityId": "brief.structurer"}},
         "action": {"type": "pause", "reason": "wait for the operator"}},
        {"id": "operator-replan", "trigger": {"kind": "manual", "signal": "needs-qa"},
         "action": {"type": "replan", "rationale": "operator asked for QA"}}]});
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants", "summary"], policies))
        .await
        .unwrap();
    env.until(run, |e| e.kind() == EventKind::PolicyTriggered)
        .await;
    env.engine.signal(run, "needs-qa", json!({})).await.unwrap();
    let err = env
        .engine
        .answer_hitl(
            run,
            "nope",
            flexrun::HitlAnswer::new(flexrun::fsm::HitlDecision::Approve),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, flexrun::EngineError::UnknownHitlRequest { request_id, .. } if request_id == "nope"),
        "{err}"
    );
    env.engine.resume(run, "operator done").await.unwrap();
    let err = env.engine.resume(run, "again").await;
    let events = env.until_complete(run).await;
    assert!(err.is_err() || events.iter().any(|e| e.kind() == EventKind::RunResumed));
    let ks = kinds(&events);
    assert_eq!(ks[0], "run_resumed");
    assert_eq!(
        ks[1], "policy_triggered",
        "the signal's replan applies once executing again: {ks:?}"
    );
    assert!(ks.contains(&"plan_updated"));
    assert_eq!(complete_status(&events).as_deref(), Some("completed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replan_with_none_left_fails_the_run() {
    let mut env = TestEnv::start(None).await;
    let mut policies = qa_gate();
    policies["planner"] = json!({"maxReplans": 0});
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants", "summary"], policies))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert!(
        events
            .iter()
            .all(|e| e.kind() != EventKind::PolicyTriggered),
        "the replan is refused, not started"
    );
    let Some(EventBody::Complete { error, .. }) = events.last().map(|e| &e.body) else {
        panic!("{:?}", labels(&events))
    };
    let error = error.as_ref().unwrap();
    assert_eq!(error.code, "REPLANS_EXHAUSTED");
    assert!(error.message.contains("qa-gate"), "{}", error.message);
    assert_eq!(complete_status(&events).as_deref(), Some("failed"));
}
