//! (d) HITL: approve continues; reject with a replan follow-up produces a new version.

use flexrun::fsm::{EventBody, EventKind, FollowUp, HitlDecision, RunState};
use flexrun::{EngineError, HitlAnswer};
use serde_json::json;

use crate::support::*;

fn approval(on_reject: &str) -> serde_json::Value {
    json!({"runtime": [{"id": "review",
        "trigger": {"kind": "onNodeComplete", "selector": {"capabilityId": "writer.en"}},
        "action": {"type": "hitl", "question": "publish this copy?", "onApprove": "continue", "onReject": on_reject}}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_continues_the_run() {
    let mut env = TestEnv::start(None).await;
    let run = env
        .engine
        .submit(copy_envelope(
            &["copyVariants", "summary"],
            approval("fail"),
        ))
        .await
        .unwrap();
    let before = env.until(run, |e| e.kind() == EventKind::HitlRequest).await;
    let EventBody::HitlRequest {
        request_id,
        question,
        on_approve,
        contract_summary,
        ..
    } = &before.last().unwrap().body
    else {
        panic!()
    };
    assert_eq!(
        (question.as_str(), *on_approve),
        ("publish this copy?", FollowUp::Continue)
    );
    assert_eq!(
        contract_summary.as_ref().unwrap()["capabilityId"],
        "writer.en"
    );
    assert_eq!(env.engine.head(run).unwrap().state, RunState::Paused);
    let hitl = env.engine.store().hitl_records(run).unwrap();
    assert_eq!(hitl.len(), 1);

    let resume = env.engine.resume(run, "skip the human").await.unwrap_err();
    assert!(
        matches!(resume, EngineError::IllegalTransition(_)),
        "resume needs the answer first: {resume}"
    );
    env.engine
        .answer_hitl(run, request_id, HitlAnswer::new(HitlDecision::Approve))
        .await
        .unwrap();
    let again = env
        .engine
        .answer_hitl(run, request_id, HitlAnswer::new(HitlDecision::Approve))
        .await;
    let after = env.until_complete(run).await;
    assert!(
        again.is_err(),
        "a resolved request cannot be answered twice"
    );
    assert_eq!(
        labels(&after),
        [
            "hitl_resolved:writer-en",
            "node_start:copy-summarizer",
            "node_complete:copy-summarizer",
            "complete"
        ]
    );
    assert_eq!(complete_status(&after).as_deref(), Some("completed"));
    let all = env.stored_events(run);
    let paused_at = all
        .iter()
        .position(|e| e.kind() == EventKind::HitlRequest)
        .unwrap();
    let resolved_at = all
        .iter()
        .position(|e| e.kind() == EventKind::HitlResolved)
        .unwrap();
    assert!(
        all[paused_at..resolved_at]
            .iter()
            .all(|e| e.kind() != EventKind::NodeStart),
        "nothing dispatches while paused"
    );
    let records = env.engine.store().hitl_records(run).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(format!("{:?}", records[0].status), "Resolved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejection_with_replan_follow_up_produces_a_new_version() {
    let mut env = TestEnv::start(None).await;
    let run = env
        .engine
        .submit(copy_envelope(
            &["copyVariants", "summary"],
            approval("replan"),
        ))
        .await
        .unwrap();
    let before = env.until(run, |e| e.kind() == EventKind::HitlRequest).await;
    let EventBody::HitlRequest { request_id, .. } = &before.last().unwrap().body else {
        panic!()
    };
    env.engine
        .answer_hitl(
            run,
            request_id,
            HitlAnswer::new(HitlDecision::Reject).with_text("too cute, check it"),
        )
        .await
        .unwrap();
    let after = env.until_complete(run).await;
    let ks = kinds(&after);
    assert_eq!(
        &ks[..4],
        [
            "hitl_resolved",
            "plan_requested",
            "plan_generated",
            "plan_updated"
        ],
        "{ks:?}"
    );
    let EventBody::HitlResolved { next, decision, .. } = &after[0].body else {
        panic!()
    };
    assert_eq!((*next, *decision), (FollowUp::Replan, HitlDecision::Reject));
    let EventBody::PlanRequested { trigger, .. } = &after[1].body else {
        panic!()
    };
    assert_eq!(trigger.as_ref().unwrap().reason, "too cute, check it");
    assert_eq!(env.engine.store().plan_versions(run).unwrap(), [1, 2]);
    assert_eq!(complete_status(&after).as_deref(), Some("completed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejection_with_fail_follow_up_fails_the_run() {
    let mut env = TestEnv::start(None).await;
    let run = env
        .engine
        .submit(copy_envelope(
            &["copyVariants", "summary"],
            approval("fail"),
        ))
        .await
        .unwrap();
    let before = env.until(run, |e| e.kind() == EventKind::HitlRequest).await;
    let EventBody::HitlRequest { request_id, .. } = &before.last().unwrap().body else {
        panic!()
    };
    env.engine
        .answer_hitl(run, request_id, HitlAnswer::new(HitlDecision::Reject))
        .await
        .unwrap();
    let after = env.until_complete(run).await;
    assert_eq!(kinds(&after), ["complete"]);
    let EventBody::Complete { error, .. } = &after[0].body else {
        panic!()
    };
    assert_eq!(error.as_ref().unwrap().code, "HITL_REJECTED");
    assert!(matches!(
        env.engine.cancel(run, "late").await,
        Err(EngineError::RunEnded(_))
    ));
}

fn human_summarizer() -> flexrun::catalog::Capability {
    use flexrun::catalog::{AgentType, Capability, CapabilityKind, CapabilityStatus, ExecutorSpec};
    Capability {
        capability_id: "summary.human".into(),
        version: "1.0.0".into(),
        display_name: "editor".into(),
        summary: "a person summarises the copy".into(),
        kind: CapabilityKind::Transformation,
        agent_type: AgentType::Human,
        input_facets: vec!["copyVariants".into()],
        output_facets: vec!["summary".into()],
        cost: 0.1,
        timeout_ms: 60_000,
        max_attempts: 2,
        fallback: None,
        executor: ExecutorSpec::Human,
        status: CapabilityStatus::Active,
    }
}

fn human_policies() -> serde_json::Value {
    json!({"planner": {"forbiddenCapabilities": ["copy.summarizer"]}})
}

async fn human_env(path: std::path::PathBuf) -> flexrun::Engine {
    open(path, None, |mut c| {
        c.capabilities.push(human_summarizer());
        c
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_human_node_becomes_a_request_and_its_answer_is_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let engine = human_env(dir.path().join("h.redb")).await;
    let mut env = TestEnv {
        rx: engine.subscribe(),
        engine,
        dir,
    };
    let run = env
        .engine
        .submit(copy_envelope(
            &["copyVariants", "summary"],
            human_policies(),
        ))
        .await
        .unwrap();
    let before = env.until(run, |e| e.kind() == EventKind::HitlRequest).await;
    let last = before.last().unwrap();
    assert_eq!(last.node_id.as_deref(), Some("summary-human"));
    let EventBody::HitlRequest {
        request_id,
        kind,
        contract_summary,
        policy_id,
        ..
    } = &last.body
    else {
        panic!()
    };
    assert_eq!(request_id, "summary-human-1");
    assert_eq!(format!("{kind:?}"), "Clarify");
    assert!(policy_id.is_none());
    let summary = contract_summary.as_ref().unwrap();
    assert_eq!(
        summary["outputSchema"]["properties"]["summary"]["type"],
        "string"
    );
    assert!(
        summary["inputs"]["copyVariants"].is_array(),
        "the human sees the node's inputs"
    );
    assert_eq!(
        labels(&before[before.len() - 2..]),
        ["node_start:summary-human", "hitl_request:summary-human"]
    );

    env.engine
        .answer_hitl(run, request_id, HitlAnswer::new(HitlDecision::Approve))
        .await
        .unwrap();
    let retry = env.until(run, |e| e.kind() == EventKind::HitlRequest).await;
    assert_eq!(
        labels(&retry),
        [
            "hitl_resolved:summary-human",
            "validation_error:summary-human",
            "node_start:summary-human",
            "hitl_request:summary-human"
        ],
        "a bare approval gives `true`, which breaks the string contract: the node asks again"
    );
    let EventBody::HitlRequest { request_id, .. } = &retry.last().unwrap().body else {
        panic!()
    };
    assert_eq!(request_id, "summary-human-2");
    env.engine
        .answer_hitl(
            run,
            request_id,
            HitlAnswer::new(HitlDecision::Freeform).with_text("Bread, baked for parents"),
        )
        .await
        .unwrap();
    let after = env.until_complete(run).await;
    assert_eq!(
        labels(&after),
        [
            "hitl_resolved:summary-human",
            "node_complete:summary-human",
            "complete"
        ]
    );
    let EventBody::Complete { output, .. } = &after[2].body else {
        panic!()
    };
    assert_eq!(
        output.as_ref().unwrap()["summary"],
        "Bread, baked for parents"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_human_node_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.redb");
    let engine = human_env(path.clone()).await;
    let mut rx = engine.subscribe();
    let run = engine
        .submit(copy_envelope(
            &["copyVariants", "summary"],
            human_policies(),
        ))
        .await
        .unwrap();
    loop {
        let ev = tokio::time::timeout(GUARD, rx.recv())
            .await
            .unwrap()
            .unwrap();
        if ev.run_id == run && ev.kind() == EventKind::HitlRequest {
            break;
        }
    }
    engine.abort().await;
    drop(rx);
    drop(engine);

    let engine = human_env(path).await;
    assert_eq!(engine.head(run).unwrap().state, RunState::Paused);
    let mut env = TestEnv {
        rx: engine.subscribe(),
        engine,
        dir,
    };
    env.engine
        .answer_hitl(
            run,
            "summary-human-1",
            HitlAnswer::new(HitlDecision::Freeform).with_text(r#"{"summary":"kept"}"#),
        )
        .await
        .unwrap();
    let after = env.until_complete(run).await;
    assert_eq!(
        labels(&after),
        [
            "hitl_resolved:summary-human",
            "node_complete:summary-human",
            "complete"
        ]
    );
    let all = env.stored_events(run);
    assert_gap_free(&all);
    assert!(
        all.iter().all(|e| e.kind() != EventKind::NodeError),
        "the waiting node was not interrupted"
    );
}
