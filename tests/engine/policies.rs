//! The policy examples of docs/POLICIES.md, run through the library: every envelope under
//! `examples/` and the documented rating scenario, so that neither can drift from the engine.

use std::sync::Arc;

use async_trait::async_trait;
use flexrun::catalog::{Capability, Facet};
use flexrun::engine::{ExecError, NodeCall, NodeExecutor};
use flexrun::fsm::{
    EventBody, EventKind, FollowUp, HitlDecision, PlanPhase, RunEvent, RunState, TriggerSource,
};
use flexrun::{Engine, EngineError, HitlAnswer, RunEnvelope, RunId};
use serde_json::{Map, Value, json};

use crate::support::*;

/// Every envelope under `examples/`; each has a test below.
const EXAMPLES: &[&str] = &[
    "approval", "budget", "deadline", "kickoff", "operator", "replan", "tagline",
];

/// `(policyId, action, source, trigger nodeId)` of every `policy_triggered`.
fn fired(events: &[RunEvent]) -> Vec<(String, String, TriggerSource, Option<String>)> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::PolicyTriggered {
                policy_id,
                action,
                trigger,
            } => Some((
                policy_id.clone(),
                action.clone(),
                trigger.source,
                trigger.node_id.clone(),
            )),
            _ => None,
        })
        .collect()
}

fn fired_ids(events: &[RunEvent]) -> Vec<String> {
    fired(events).into_iter().map(|f| f.0).collect()
}

/// The `complete` error's code and message.
fn failure(events: &[RunEvent]) -> Option<(String, String)> {
    events.iter().find_map(|e| match &e.body {
        EventBody::Complete {
            error: Some(error), ..
        } => Some((error.code.clone(), error.message.clone())),
        _ => None,
    })
}

fn is_pause(e: &RunEvent) -> bool {
    matches!(&e.body, EventBody::PolicyTriggered { action, .. } if action == "pause")
}

fn is_complete(e: &RunEvent) -> bool {
    e.kind() == EventKind::Complete
}

/// The last event, which must be a `hitl_request`: its request id, policy id and node.
fn hitl_request(events: &[RunEvent]) -> (String, Option<String>, Option<String>) {
    let last = events.last().expect("events");
    let EventBody::HitlRequest {
        request_id,
        policy_id,
        ..
    } = &last.body
    else {
        panic!("expected a hitl_request, got {:?}", labels(events))
    };
    (request_id.clone(), policy_id.clone(), last.node_id.clone())
}

fn capabilities_of_version(env: &TestEnv, run: RunId, version: u32) -> Vec<String> {
    let plan = env
        .engine
        .store()
        .plan_version(run, version)
        .unwrap()
        .unwrap();
    plan.nodes.iter().map(|n| n.capability_id.clone()).collect()
}

async fn env_with(tweak: impl FnOnce(flexrun::EngineConfig) -> flexrun::EngineConfig) -> TestEnv {
    let dir = tempfile::tempdir().unwrap();
    let engine: Engine = open(dir.path().join("flexrun.redb"), None, tweak).await;
    TestEnv {
        rx: engine.subscribe(),
        engine,
        dir,
    }
}

#[test]
fn every_example_envelope_is_run_by_a_test_here() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert_eq!(found, EXAMPLES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagline_runs_without_policies() {
    let mut env = TestEnv::start(None).await;
    let run = env
        .engine
        .submit(envelope(example("tagline")))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(complete_status(&events).as_deref(), Some("completed"));
    assert!(fired(&events).is_empty());
    assert!(events.iter().all(|e| e.kind() != EventKind::HitlRequest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replan_example_adds_a_qa_pass_after_the_writer() {
    let mut env = TestEnv::start(None).await;
    let run = env
        .engine
        .submit(envelope(example("replan")))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(
        fired(&events),
        [(
            "qa-gate".to_owned(),
            "replan".to_owned(),
            TriggerSource::Policy,
            Some("writer-en".to_owned())
        )]
    );
    let replan = events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::PlanRequested {
                phase: PlanPhase::Replan,
                trigger: Some(trigger),
                ..
            } => Some(trigger.clone()),
            _ => None,
        })
        .expect("a replan request");
    assert_eq!(replan.policy_id.as_deref(), Some("qa-gate"));
    assert_eq!(
        replan.reason,
        "add a QA pass before anything builds on the copy"
    );
    assert_eq!(complete_status(&events).as_deref(), Some("completed"));
    assert_eq!(env.engine.store().plan_versions(run).unwrap(), [1, 2]);
    assert!(capabilities_of_version(&env, run, 2).contains(&"qa.copy".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_example_replans_cheaper_when_three_quarters_are_spent() {
    let mut env = TestEnv::start(None).await;
    let run = env
        .engine
        .submit(envelope(example("budget")))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(fired_ids(&events), ["qa-gate", "thrift"]);
    assert_eq!(complete_status(&events).as_deref(), Some("completed"));
    assert_eq!(env.engine.store().plan_versions(run).unwrap(), [1, 2, 3]);
    assert!(capabilities_of_version(&env, run, 2).contains(&"qa.copy".to_owned()));
    assert!(
        !capabilities_of_version(&env, run, 3).contains(&"qa.copy".to_owned()),
        "the budget's replan drops the QA pass nothing needs"
    );
    let stored = env.engine.store().events_after(run, 0, usize::MAX).unwrap();
    let policies = flexrun::policy::normalize(&example("budget")["policies"]).unwrap();
    let ledger = flexrun::engine::ledger_of(&policies, &stored, flexrun::ids::Timestamp::now());
    assert!((ledger.spend.cost - 3.5).abs() < 1e-9, "{ledger:?}");
    assert_eq!(ledger.spend.nodes, 3);
    let thrift = events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::PlanRequested {
                trigger: Some(trigger),
                ..
            } if trigger.policy_id.as_deref() == Some("thrift") => Some(trigger.clone()),
            _ => None,
        })
        .expect("the budget's replan request");
    assert!(thrift.reason.contains("three quarters"), "{thrift:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_example_continues_when_approved_and_replans_when_rejected() {
    for (decision, next, versions) in [
        (HitlDecision::Approve, FollowUp::Continue, vec![1]),
        (HitlDecision::Reject, FollowUp::Replan, vec![1, 2]),
    ] {
        let mut env = TestEnv::start(None).await;
        let run = env
            .engine
            .submit(envelope(example("approval")))
            .await
            .unwrap();
        let before = env.until(run, |e| e.kind() == EventKind::HitlRequest).await;
        let (request, policy, node) = hitl_request(&before);
        assert_eq!(
            (request.as_str(), policy.as_deref(), node.as_deref()),
            ("editor-review-1", Some("editor-review"), Some("writer-en"))
        );
        env.engine
            .answer_hitl(run, &request, HitlAnswer::new(decision))
            .await
            .unwrap();
        let after = env.until_complete(run).await;
        let EventBody::HitlResolved { next: got, .. } = &after[0].body else {
            panic!("{:?}", labels(&after))
        };
        assert_eq!(*got, next);
        assert_eq!(complete_status(&after).as_deref(), Some("completed"));
        assert_eq!(env.engine.store().plan_versions(run).unwrap(), versions);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kickoff_example_asks_before_any_dispatch_and_gates_on_qa() {
    let mut env = TestEnv::start(None).await;
    let run = env
        .engine
        .submit(envelope(example("kickoff")))
        .await
        .unwrap();
    let before = env.until(run, |e| e.kind() == EventKind::HitlRequest).await;
    assert_eq!(
        hitl_request(&before),
        ("go-ahead-1".to_owned(), Some("go-ahead".to_owned()), None)
    );
    assert!(before.iter().any(|e| e.kind() == EventKind::PlanAccepted));
    assert!(
        before.iter().all(|e| e.kind() != EventKind::NodeStart),
        "onStart fires before anything is dispatched: {:?}",
        labels(&before)
    );
    env.engine
        .answer_hitl(run, "go-ahead-1", HitlAnswer::new(HitlDecision::Approve))
        .await
        .unwrap();
    let after = env.until_complete(run).await;
    let score = after
        .iter()
        .find_map(|e| match &e.body {
            EventBody::NodeComplete { output, .. } => output.get("qaReport")?["score"].as_f64(),
            _ => None,
        })
        .expect("the required QA node ran");
    let weak = fired_ids(&after).contains(&"weak-copy".to_owned());
    assert_eq!(weak, score < 0.5, "score {score}: {:?}", labels(&after));
    assert_eq!(complete_status(&after).as_deref(), Some("completed"));
    assert!(fired_ids(&after).iter().all(|id| id != "release-freeze"));
    let caps = capabilities_of_version(&env, run, 1);
    assert!(caps.contains(&"qa.copy".to_owned()), "{caps:?}");
    assert!(!caps.contains(&"writer.formal".to_owned()), "{caps:?}");

    let run = env
        .engine
        .submit(envelope(example("kickoff")))
        .await
        .unwrap();
    env.until(run, |e| e.kind() == EventKind::HitlRequest).await;
    env.engine
        .answer_hitl(run, "go-ahead-1", HitlAnswer::new(HitlDecision::Reject))
        .await
        .unwrap();
    let rejected = env.until_complete(run).await;
    assert_eq!(labels(&rejected), ["complete"]);
    assert_eq!(failure(&rejected).unwrap().0, "HITL_REJECTED");

    let mut other = example("kickoff");
    other["inputs"]["objectiveBrief"] = json!("Fresh sourdough baked daily, for busy parents");
    let run = env.engine.submit(envelope(other)).await.unwrap();
    let events = env.until_complete(run).await;
    assert!(
        events.iter().all(|e| e.kind() != EventKind::HitlRequest),
        "the condition does not hold for a brief without investors"
    );
    assert_eq!(complete_status(&events).as_deref(), Some("completed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kickoff_example_fails_the_run_on_a_weak_qa_score() {
    let mut env = env_with(|mut c| {
        c.executors = c.executors.clone().builtin("qa_copy", |_: &NodeCall| {
            let report = json!({"passed": false, "score": 0.25, "issues": ["too vague"]});
            Ok(Map::from_iter([("qaReport".to_owned(), report)]))
        });
        c
    })
    .await;
    let run = env
        .engine
        .submit(envelope(example("kickoff")))
        .await
        .unwrap();
    env.until(run, |e| e.kind() == EventKind::HitlRequest).await;
    env.engine
        .answer_hitl(run, "go-ahead-1", HitlAnswer::new(HitlDecision::Approve))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(
        failure(&events),
        Some((
            "POLICY_FAILED".to_owned(),
            "policy `weak-copy`: the QA score is below 0.5".to_owned()
        ))
    );
}

/// Runs `examples/operator.json`, resuming after every pause; `signal` is sent while the run
/// is paused for the first time. Returns every event.
async fn operator_run(signal: (&str, Value)) -> Vec<RunEvent> {
    let mut env = TestEnv::start(None).await;
    let run = env
        .engine
        .submit(envelope(example("operator")))
        .await
        .unwrap();
    let mut events = Vec::new();
    for pause in 1.. {
        assert!(pause < 10, "{:?}", labels(&events));
        let chunk = env.until(run, |e| is_pause(e) || is_complete(e)).await;
        let done = chunk.last().is_some_and(is_complete);
        events.extend(chunk);
        if done {
            break;
        }
        if pause == 1 {
            env.engine
                .signal(run, signal.0, signal.1.clone())
                .await
                .unwrap();
        }
        env.engine.resume(run, "operator done").await.unwrap();
    }
    assert_gap_free(&events);
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_example_applies_a_signal_sent_during_a_pause_after_the_resume() {
    let events = operator_run(("needs-qa", json!({"requestedBy": "ops-1"}))).await;
    let resumed = events
        .iter()
        .position(|e| e.kind() == EventKind::RunResumed)
        .expect("resumed");
    assert_eq!(
        fired(&events[resumed + 1..resumed + 2]),
        [(
            "needs-qa".to_owned(),
            "replan".to_owned(),
            TriggerSource::Signal,
            None
        )],
        "{:?}",
        labels(&events)
    );
    assert_eq!(
        labels(&events[resumed..resumed + 8]),
        [
            "run_resumed",
            "policy_triggered",
            "plan_requested",
            "plan_generated",
            "plan_updated",
            "node_start:writer-en",
            "node_complete:writer-en",
            "policy_triggered"
        ]
    );
    let steps = fired_ids(&events).iter().filter(|id| *id == "step").count();
    assert_eq!(steps, 2, "maxFires 2: {:?}", labels(&events));
    assert!(events.iter().any(|e| e.kind() == EventKind::PlanUpdated));
    assert_eq!(complete_status(&events).as_deref(), Some("completed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_example_routes_a_signal_by_payload_policy_id() {
    let events = operator_run(("operator", json!({"policyId": "stop"}))).await;
    let resumed = events
        .iter()
        .position(|e| e.kind() == EventKind::RunResumed)
        .expect("resumed");
    assert_eq!(labels(&events[resumed..]), ["run_resumed", "complete"]);
    assert_eq!(
        failure(&events),
        Some((
            "POLICY_FAILED".to_owned(),
            "policy `stop`: stopped by the operator".to_owned()
        ))
    );
    assert!(!fired_ids(&events).contains(&"needs-qa".to_owned()));
}

/// An executor whose nodes never finish.
struct Hang;

#[async_trait]
impl NodeExecutor for Hang {
    async fn execute(&self, _call: NodeCall) -> Result<Map<String, Value>, ExecError> {
        futures::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_example_pauses_a_run_that_executes_too_long() {
    let mut env = TestEnv::start(None).await;
    let run = env
        .engine
        .submit(envelope(example("deadline")))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert!(fired(&events).is_empty(), "the demo is fast");
    assert_eq!(complete_status(&events).as_deref(), Some("completed"));

    let slow: Capability = serde_json::from_value(json!({
        "capabilityId": "writer.slow", "kind": "execution", "inputFacets": ["writerBrief"],
        "outputFacets": ["copyVariants"], "timeoutMs": 60000, "executor": {"type": "slow"}
    }))
    .unwrap();
    let mut env = env_with(|mut c| {
        c.capabilities.push(slow);
        c.executors = c.executors.clone().with_type("slow", Arc::new(Hang));
        c
    })
    .await;
    let mut deadline = example("deadline");
    let ms = 200;
    deadline["policies"]["runtime"][0]["trigger"]["ms"] = json!(ms);
    deadline["policies"]["planner"]["forbiddenCapabilities"] =
        json!(["writer.en", "writer.formal"]);
    let run = env.engine.submit(envelope(deadline)).await.unwrap();
    let events = env.until(run, |e| is_pause(e) || is_complete(e)).await;
    assert_eq!(
        fired(&events),
        [(
            "time-budget".to_owned(),
            "pause".to_owned(),
            TriggerSource::Policy,
            None
        )],
        "{:?}",
        labels(&events)
    );
    assert!(
        events
            .iter()
            .any(|e| e.node_id.as_deref() == Some("writer-slow")),
        "the slow writer was running"
    );
    let fired_at = events.last().unwrap().timestamp.millis();
    assert!(fired_at - events[0].timestamp.millis() >= ms);
    assert_eq!(env.engine.head(run).unwrap().state, RunState::Paused);
    env.engine.cancel(run, "too slow").await.unwrap();
    let end = env.until_complete(run).await;
    assert_eq!(complete_status(&end).as_deref(), Some("cancelled"));
}

/// The rating scenario of docs/POLICIES.md: its facet, capability and envelope blocks.
async fn rating_env() -> (TestEnv, RunEnvelope) {
    let blocks = json_blocks(&repo_file("docs/POLICIES.md"));
    let block = |name: &str| -> Value {
        blocks
            .iter()
            .find(|b| b.marker.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no `{name}` block in POLICIES.md"))
            .value
            .clone()
    };
    let facet: Facet = serde_json::from_value(block("rating-facet")).unwrap();
    let capability: Capability = serde_json::from_value(block("rating-capability")).unwrap();
    let envelope = envelope(block("rating-envelope"));
    let env = env_with(|mut c| {
        c.facets.push(facet);
        c.capabilities.push(capability);
        c
    })
    .await;
    (env, envelope)
}

fn rating(text: &str) -> HitlAnswer {
    HitlAnswer::new(HitlDecision::Freeform).with_text(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rating_example_pauses_on_an_unreadable_rating_and_fails_on_a_low_one() {
    let (mut env, rated) = rating_env().await;
    let run = env.engine.submit(rated).await.unwrap();
    let asked = env.until(run, |e| e.kind() == EventKind::HitlRequest).await;
    assert_eq!(
        hitl_request(&asked),
        (
            "copy-rater-1".to_owned(),
            None,
            Some("copy-rater".to_owned())
        )
    );
    env.engine
        .answer_hitl(run, "copy-rater-1", rating(r#"{"copyRating": "great"}"#))
        .await
        .unwrap();
    let paused = env.until(run, |e| is_pause(e) || is_complete(e)).await;
    assert_eq!(
        labels(&paused),
        [
            "hitl_resolved:copy-rater",
            "validation_error:copy-rater",
            "policy_triggered"
        ]
    );
    assert!(matches!(
        paused[1].body,
        EventBody::ValidationError {
            will_retry: true,
            ..
        }
    ));
    assert_eq!(
        fired(&paused),
        [(
            "unreadable-rating".to_owned(),
            "pause".to_owned(),
            TriggerSource::Policy,
            Some("copy-rater".to_owned())
        )]
    );
    env.engine.resume(run, "instructions fixed").await.unwrap();
    let again = env.until(run, |e| e.kind() == EventKind::HitlRequest).await;
    assert_eq!(
        labels(&again),
        [
            "run_resumed",
            "node_start:copy-rater",
            "hitl_request:copy-rater"
        ]
    );
    assert_eq!(hitl_request(&again).0, "copy-rater-2");
    env.engine
        .answer_hitl(run, "copy-rater-2", rating(r#"{"copyRating": 0.3}"#))
        .await
        .unwrap();
    let end = env.until_complete(run).await;
    assert_eq!(
        labels(&end),
        [
            "hitl_resolved:copy-rater",
            "node_complete:copy-rater",
            "complete"
        ]
    );
    assert_eq!(
        failure(&end),
        Some((
            "POLICY_FAILED".to_owned(),
            "policy `low-rating`: the copy was rated below 0.5".to_owned()
        ))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rating_example_completes_on_a_good_rating() {
    let (mut env, rated) = rating_env().await;
    let run = env.engine.submit(rated).await.unwrap();
    env.until(run, |e| e.kind() == EventKind::HitlRequest).await;
    env.engine
        .answer_hitl(run, "copy-rater-1", rating(r#"{"copyRating": 0.5}"#))
        .await
        .unwrap();
    let end = env.until_complete(run).await;
    assert!(fired(&end).is_empty(), "0.5 is not below 0.5");
    assert_eq!(
        labels(&end),
        [
            "hitl_resolved:copy-rater",
            "node_complete:copy-rater",
            "complete"
        ]
    );
    let EventBody::NodeComplete { output, .. } = &end[1].body else {
        panic!()
    };
    assert_eq!(output["copyRating"], 0.5);
    assert_eq!(complete_status(&end).as_deref(), Some("completed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_refusal_is_what_the_engine_answers() {
    let blocks = json_blocks(&repo_file("docs/POLICIES.md"));
    let documented = blocks
        .iter()
        .find(|b| b.value.get("error").is_some())
        .expect("an error example")
        .value["error"]
        .clone();
    let env = TestEnv::start(None).await;
    let mut replan = example("replan");
    replan["policies"]["runtime"][0]["maxFires"] = json!(101);
    let err = env.engine.submit(envelope(replan)).await.unwrap_err();
    let EngineError::InvalidPolicies { field, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(documented["message"], err.to_string());
    assert_eq!(&documented["details"]["field"], field.as_str());
}
