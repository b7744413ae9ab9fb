//! The driver without a runtime or a store: inputs in, `Ready` out.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::*;
use crate::engine::HitlAnswer;
use crate::engine::idempotency::Steer;
use crate::fsm::{EventBody, EventKind, HitlDecision, PlannerOutput, RunOutcome};
use crate::graph::PlanDraft;
use crate::planner::PlanResponse;

const T0: Timestamp = Timestamp(1_700_000_000_000);

fn catalog() -> Arc<CatalogState> {
    let mut catalog = CatalogState::default();
    for facet in crate::demo::facets() {
        catalog.facets.register(facet).unwrap();
    }
    for cap in crate::demo::capabilities() {
        catalog.registry.register(cap).unwrap();
    }
    Arc::new(catalog)
}

fn driver(policies: Value) -> RunDriver {
    let envelope: RunEnvelope = serde_json::from_value(json!({
        "objective": "a tagline",
        "inputs": {"objectiveBrief": "fresh bread for busy parents"},
        "outputContract": {"mode": "facets", "facets": ["copyVariants"]},
        "policies": policies,
    }))
    .unwrap();
    let policies = crate::policy::normalize(&envelope.policies).unwrap();
    let machine = RunMachine::new(RunId::new(), limits_of(&policies));
    RunDriver::new(envelope, policies, machine, "test".into(), catalog(), T0)
}

fn draft() -> PlanDraft {
    serde_json::from_value(json!({"nodes": [
        {"id": "brief", "capabilityId": "brief.structurer", "kind": "structuring",
         "inputFacets": ["objectiveBrief"], "outputFacets": ["writerBrief"]},
        {"id": "write", "capabilityId": "writer.en", "kind": "execution",
         "inputFacets": ["writerBrief"], "outputFacets": ["copyVariants"]}],
        "edges": [{"from": "brief", "to": "write"}]}))
    .unwrap()
}

fn brief() -> Map<String, Value> {
    let v =
        json!({"writerBrief": {"audience": "parents", "tone": "playful", "keyPoints": ["fresh"]}});
    v.as_object().unwrap().clone()
}

fn copy() -> Map<String, Value> {
    json!({"copyVariants": ["Bread, fresh as mornings"]})
        .as_object()
        .unwrap()
        .clone()
}

fn kinds(ready: &Ready) -> Vec<String> {
    let events = ready.commit.as_ref().map_or(&[][..], |c| &c.events[..]);
    events
        .iter()
        .map(|e| match &e.node_id {
            Some(n) => format!("{}:{n}", e.kind()),
            None => e.kind().to_string(),
        })
        .collect()
}

fn planner_call(ready: &Ready) -> u64 {
    match &ready.after[..] {
        [After::CallPlanner(id, _)] => *id,
        other => panic!("one planner call expected: {other:?}"),
    }
}

fn executes(ready: &Ready) -> Vec<(String, u32)> {
    ready
        .after
        .iter()
        .filter_map(|a| match a {
            After::Execute(call, _) => Some((call.node_id.clone(), call.attempt)),
            After::CallPlanner(..) => None,
        })
        .collect()
}

/// Start and answer with the draft: the run executes `brief`.
fn executing(d: &mut RunDriver) -> Ready {
    d.start(json!({})).unwrap();
    let ready = d.ready();
    assert_eq!(kinds(&ready), ["plan_requested"]);
    let call = planner_call(&ready);
    let response = PlanResponse::new(PlannerOutput::Draft(draft()));
    d.on_planned(call, Ok(response), 3);
    d.ready()
}

#[test]
fn a_run_goes_from_start_to_complete_one_commit_per_round() {
    let mut d = driver(json!(null));
    let ready = executing(&mut d);
    assert_eq!(
        kinds(&ready),
        ["plan_generated", "plan_accepted", "node_start:brief"]
    );
    let commit = ready.commit.as_ref().unwrap();
    assert_eq!(commit.plan.as_ref().map(|p| p.nodes.len()), Some(2));
    assert_eq!(commit.head.plan_version, 1);
    assert_eq!(
        commit.envelope, None,
        "the envelope went with the first commit"
    );
    assert_eq!(executes(&ready), [("brief".to_owned(), 1)]);

    d.on_node_done("brief".into(), 1, Ok(brief()), 2);
    let ready = d.ready();
    assert_eq!(kinds(&ready), ["node_complete:brief", "node_start:write"]);
    let [After::Execute(call, _)] = &ready.after[..] else {
        panic!("{:?}", ready.after)
    };
    assert_eq!(
        call.inputs["writerBrief"]["tone"], "playful",
        "inputs come from facets"
    );
    assert_eq!(
        call.idempotency_key,
        format!("{}/write", d.machine().run_id())
    );

    d.on_node_done("write".into(), 1, Ok(copy()), 2);
    let ready = d.ready();
    assert_eq!(kinds(&ready), ["node_complete:write", "complete"]);
    assert!(d.finished());
    let commit = ready.commit.unwrap();
    let EventBody::Complete { status, output, .. } = &commit.events[1].body else {
        panic!()
    };
    assert_eq!(*status, RunOutcome::Completed);
    assert_eq!(
        output.as_ref().unwrap()["copyVariants"][0],
        "Bread, fresh as mornings"
    );
    assert_eq!(commit.head.status, RunStatus::Completed);
    let statuses: Vec<_> = commit.nodes.iter().map(|n| n.status).collect();
    assert_eq!(statuses, [crate::store::NodeStatus::Completed]);
}

#[test]
fn stale_results_and_an_empty_round_commit_nothing() {
    let mut d = driver(json!(null));
    executing(&mut d);
    d.on_node_done("brief".into(), 7, Ok(brief()), 1);
    d.on_planned(99, Ok(PlanResponse::new(PlannerOutput::Draft(draft()))), 1);
    let ready = d.ready();
    assert!(
        ready.commit.is_none() && ready.after.is_empty(),
        "{ready:?}"
    );
}

#[test]
fn an_invalid_output_on_the_last_attempt_fails_the_run_with_node_failed() {
    let mut d = driver(json!(null));
    executing(&mut d);
    let wrong = json!({"writerBrief": {"tone": "shouty"}})
        .as_object()
        .unwrap()
        .clone();
    let mut attempt = 1;
    let ready = loop {
        d.on_node_done("brief".into(), attempt, Ok(wrong.clone()), 1);
        let ready = d.ready();
        if kinds(&ready) != ["validation_error:brief", "node_start:brief"] {
            break ready;
        }
        attempt += 1;
        assert_eq!(executes(&ready), [("brief".to_owned(), attempt)], "retried");
    };
    assert!(attempt > 1, "the capability allows retries");
    assert_eq!(kinds(&ready), ["validation_error:brief", "complete"]);
    let EventBody::Complete { error, .. } = &ready.commit.unwrap().events[1].body else {
        panic!()
    };
    assert_eq!(error.as_ref().unwrap().code, "NODE_FAILED");
}

#[test]
fn a_signal_while_paused_is_queued_with_the_commit_and_fired_on_resume() {
    let mut d = driver(json!({"runtime": [{"id": "nudge",
        "trigger": {"kind": "manual"}, "action": {"type": "pause", "reason": "look"}}]}));
    executing(&mut d);
    d.on_control(Steer::Pause {
        reason: "op".into(),
    })
    .unwrap();
    assert_eq!(kinds(&d.ready()), ["run_paused"]);
    d.on_control(Steer::Signal {
        name: "nudge".into(),
        payload: json!({}),
    })
    .unwrap();
    let ready = d.ready();
    let commit = ready.commit.expect("the queue is stored before the answer");
    assert!(commit.events.is_empty());
    assert_eq!(commit.queued.as_ref().map(Vec::len), Some(1));

    d.on_control(Steer::Resume {
        reason: "go".into(),
        budgets: Default::default(),
    })
    .unwrap();
    let ready = d.ready();
    assert_eq!(kinds(&ready), ["run_resumed", "policy_triggered"]);
    assert_eq!(
        ready.commit.unwrap().queued,
        Some(vec![]),
        "the queue leaves with its firing"
    );
}

#[test]
fn a_restored_run_redispatches_the_interrupted_node_with_the_same_key() {
    let mut d = driver(json!(null));
    let mut events = Vec::new();
    let mut plans = Plans::new();
    d.start(json!({})).unwrap();
    let first = d.ready();
    let call = planner_call(&first);
    events.extend(first.commit.unwrap().events.iter().map(|e| (**e).clone()));
    d.on_planned(
        call,
        Ok(PlanResponse::new(PlannerOutput::Draft(draft()))),
        1,
    );
    let second = d.ready().commit.unwrap();
    plans.insert(1, second.plan.clone().unwrap());
    events.extend(second.events.iter().map(|e| (**e).clone()));

    let run_id = d.machine().run_id();
    let envelope = (*d.envelope).clone();
    let policies = d.policies.clone();
    let machine = RunMachine::restore(run_id, limits_of(&policies), &events).unwrap();
    let mut restored = RunDriver::new(envelope, policies, machine, "test".into(), catalog(), T0);
    restored.restore(None, &events, &plans, vec![]).unwrap();
    restored.resume_after_restart();
    let ready = restored.ready();
    assert_eq!(kinds(&ready), ["node_error:brief", "node_start:brief"]);
    let [After::Execute(call, _)] = &ready.after[..] else {
        panic!("{:?}", ready.after)
    };
    assert_eq!(
        (call.attempt, call.idempotency_key.clone()),
        (2, format!("{run_id}/brief"))
    );
}

#[test]
fn an_approved_policy_request_resumes_dispatch_in_the_same_round() {
    let mut d = driver(json!({"runtime": [{"id": "review",
        "trigger": {"kind": "onNodeComplete", "selector": {"capabilityId": "brief.structurer"}},
        "action": {"type": "hitl", "question": "ok?", "onApprove": "continue", "onReject": "fail"}}]}));
    executing(&mut d);
    d.on_node_done("brief".into(), 1, Ok(brief()), 1);
    let ready = d.ready();
    assert_eq!(kinds(&ready), ["node_complete:brief", "hitl_request:brief"]);
    assert!(
        ready.after.is_empty(),
        "nothing dispatches while a human is asked"
    );
    let request_id = d.machine().pending_hitl().unwrap().request_id.clone();
    let answer = HitlAnswer {
        decision: HitlDecision::Approve,
        text: None,
        option_id: None,
        responder: Some("ann".into()),
    };
    d.on_control(Steer::Answer { request_id, answer }).unwrap();
    let ready = d.ready();
    assert_eq!(kinds(&ready), ["hitl_resolved:brief", "node_start:write"]);
    assert!(
        ready.local.is_empty(),
        "a policy request stands for no node"
    );
    assert_eq!(
        EventKind::HitlResolved,
        ready.commit.unwrap().events[0].kind()
    );
}
