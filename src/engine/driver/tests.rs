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

    d.on_node_done("brief".into(), 1, Ok(brief()), 2, None);
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

    d.on_node_done("write".into(), 1, Ok(copy()), 2, None);
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
    d.on_node_done("brief".into(), 7, Ok(brief()), 1, None);
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
        d.on_node_done("brief".into(), attempt, Ok(wrong.clone()), 1, None);
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
    d.on_node_done("brief".into(), 1, Ok(brief()), 1, None);
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

fn ladder_driver() -> RunDriver {
    driver(json!({"fallback": {
        "retry": {"maxAttempts": 3, "backoffMs": 200, "multiplier": 2.0},
        "then": "hitl"}}))
}

fn busy() -> Result<Map<String, Value>, ExecError> {
    Err(ExecError::retryable("HTTP_STATUS", "503 busy"))
}

fn events_of(ready: &Ready) -> Vec<RunEvent> {
    ready
        .commit
        .as_ref()
        .map(|c| c.events.iter().map(|e| (**e).clone()).collect())
        .unwrap_or_default()
}

/// Fails `brief` on every attempt of its first round, waiting each backoff out; returns
/// the events from the start and the stored plans.
fn exhaust_brief(d: &mut RunDriver) -> (Vec<RunEvent>, Plans) {
    d.start(json!({})).unwrap();
    let first = d.ready();
    let mut events = events_of(&first);
    d.on_planned(
        planner_call(&first),
        Ok(PlanResponse::new(PlannerOutput::Draft(draft()))),
        1,
    );
    let accepted = d.ready();
    let mut plans = Plans::new();
    plans.insert(1, accepted.commit.as_ref().unwrap().plan.clone().unwrap());
    events.extend(events_of(&accepted));
    let mut now = T0.millis();
    for (attempt, delay) in [(1, 200), (2, 400)] {
        d.on_node_done("brief".into(), attempt, busy(), 1, None);
        let ready = d.ready();
        assert_eq!(
            kinds(&ready),
            ["node_error:brief"],
            "no dispatch before the backoff"
        );
        let EventBody::NodeError {
            retry_at,
            will_retry,
            ..
        } = &events_of(&ready)[0].body
        else {
            panic!()
        };
        assert_eq!((*will_retry, *retry_at), (true, Some(now + delay)));
        events.extend(events_of(&ready));
        assert_eq!(d.timeout_in_ms(Timestamp(now)), Some(delay));
        d.begin(Timestamp(now + delay - 1));
        d.on_timer();
        assert!(d.ready().commit.is_none(), "still waiting");
        now += delay;
        d.begin(Timestamp(now));
        d.on_timer();
        let ready = d.ready();
        assert_eq!(kinds(&ready), ["node_start:brief"]);
        assert_eq!(executes(&ready), [("brief".to_owned(), attempt + 1)]);
        events.extend(events_of(&ready));
    }
    d.on_node_done("brief".into(), 3, busy(), 1, None);
    let ready = d.ready();
    assert_eq!(kinds(&ready), ["node_error:brief", "hitl_request:brief"]);
    let evs = events_of(&ready);
    let EventBody::HitlRequest {
        options,
        kind,
        question,
        ..
    } = &evs[1].body
    else {
        panic!()
    };
    assert_eq!(options, &["retry", "skip", "replan", "fail"]);
    assert_eq!(*kind, crate::fsm::HitlKind::Clarify);
    assert!(
        question.contains("`brief`") && question.contains("503 busy"),
        "{question}"
    );
    events.extend(evs);
    (events, plans)
}

fn option(option: &str, text: Option<Value>) -> HitlAnswer {
    HitlAnswer {
        decision: HitlDecision::Option,
        option_id: Some(option.into()),
        text: text.map(|t| t.to_string()),
        responder: Some("ann".into()),
    }
}

fn answer_with(d: &mut RunDriver, answer: HitlAnswer) -> Result<(), EngineError> {
    let request_id = d.machine().pending_hitl().unwrap().request_id.clone();
    d.on_control(Steer::Answer { request_id, answer })
}

#[test]
fn retries_wait_their_backoff_then_a_human_retries_a_fresh_round() {
    let mut d = ladder_driver();
    exhaust_brief(&mut d);
    assert_eq!(d.machine().pending_hitl().unwrap().request_id, "brief-f3");
    answer_with(&mut d, option("retry", None)).unwrap();
    let ready = d.ready();
    assert_eq!(kinds(&ready), ["hitl_resolved:brief", "node_start:brief"]);
    let [After::Execute(call, _)] = &ready.after[..] else {
        panic!("{:?}", ready.after)
    };
    assert_eq!(
        (call.attempt, call.idempotency_key.clone()),
        (4, format!("{}/brief", d.machine().run_id())),
        "attempts go on, the key stays"
    );
    d.on_node_done("brief".into(), 4, busy(), 1, None);
    let ready = d.ready();
    assert_eq!(
        kinds(&ready),
        ["node_error:brief"],
        "a fresh round backs off again"
    );
    let EventBody::NodeError { will_retry, .. } = &events_of(&ready)[0].body else {
        panic!()
    };
    assert!(*will_retry);
}

#[test]
fn a_skip_must_pass_the_contract_and_completes_the_node() {
    let mut d = ladder_driver();
    exhaust_brief(&mut d);
    let bad = answer_with(
        &mut d,
        option("skip", Some(json!({"writerBrief": {"tone": 3}}))),
    );
    let Err(EngineError::InvalidAnswer { field, .. }) = bad else {
        panic!("{bad:?}")
    };
    assert!(field.starts_with("text/writerBrief"), "{field}");
    assert!(
        d.ready().commit.is_none(),
        "a refused answer changes nothing"
    );
    assert!(
        d.machine().pending_hitl().is_some(),
        "the request stays pending"
    );
    let Err(EngineError::InvalidAnswer { field, .. }) = answer_with(&mut d, option("shrug", None))
    else {
        panic!()
    };
    assert_eq!(field, "optionId");

    answer_with(&mut d, option("skip", Some(Value::Object(brief())))).unwrap();
    let ready = d.ready();
    assert_eq!(
        kinds(&ready),
        [
            "hitl_resolved:brief",
            "node_complete:brief",
            "node_start:write"
        ]
    );
    let EventBody::NodeComplete {
        attempt, output, ..
    } = &events_of(&ready)[1].body
    else {
        panic!()
    };
    assert_eq!(
        (*attempt, output),
        (3, &brief()),
        "the last attempt, the supplied output"
    );
}

#[test]
fn fail_and_replan_answers_end_the_node_their_way() {
    let mut d = ladder_driver();
    exhaust_brief(&mut d);
    answer_with(&mut d, option("fail", None)).unwrap();
    let ready = d.ready();
    assert_eq!(kinds(&ready), ["complete"]);
    let EventBody::Complete { error, .. } = &events_of(&ready)[0].body else {
        panic!()
    };
    assert_eq!(error.as_ref().unwrap().code, "NODE_FAILED");

    let mut d = ladder_driver();
    exhaust_brief(&mut d);
    answer_with(&mut d, option("replan", None)).unwrap();
    let ready = d.ready();
    assert_eq!(kinds(&ready), ["hitl_resolved:brief", "plan_requested"]);
    let [After::CallPlanner(_, request)] = &ready.after[..] else {
        panic!("{:?}", ready.after)
    };
    let trigger = request.trigger.as_ref().unwrap();
    assert_eq!(trigger.node_id.as_deref(), Some("brief"));
    assert!(trigger.reason.contains("503 busy"), "{}", trigger.reason);
}

#[test]
fn a_restored_run_keeps_its_backoff_and_its_fallback_request() {
    let restore = |d: &RunDriver, events: &[RunEvent], plans: &Plans| {
        let policies = d.policies.clone();
        let run_id = d.machine().run_id();
        let machine = RunMachine::restore(run_id, limits_of(&policies), events).unwrap();
        let mut r = RunDriver::new(
            (*d.envelope).clone(),
            policies,
            machine,
            "test".into(),
            catalog(),
            T0,
        );
        r.restore(None, events, plans, vec![]).unwrap();
        r.resume_after_restart();
        r
    };
    let mut d = ladder_driver();
    let (events, plans) = exhaust_brief(&mut d);
    let mut r = restore(&d, &events, &plans);
    assert!(
        r.ready().commit.is_none(),
        "the request is still pending, nothing redone"
    );
    assert_eq!(r.machine().fallback_node(), Some("brief"));
    answer_with(&mut r, option("retry", None)).unwrap();
    assert_eq!(
        kinds(&r.ready()),
        ["hitl_resolved:brief", "node_start:brief"]
    );

    // Stopped during the first backoff: the restored driver waits out what is left of it.
    let first_error = events
        .iter()
        .position(|e| e.kind() == EventKind::NodeError)
        .unwrap();
    let mut r = restore(&d, &events[..=first_error], &plans);
    r.begin(Timestamp(T0.millis() + 150));
    assert!(r.ready().commit.is_none());
    assert_eq!(r.timeout_in_ms(Timestamp(T0.millis() + 150)), Some(50));
    r.begin(Timestamp(T0.millis() + 200));
    r.on_timer();
    let ready = r.ready();
    assert_eq!(kinds(&ready), ["node_start:brief"]);
    assert_eq!(executes(&ready), [("brief".to_owned(), 2)]);
}
