use serde_json::json;

use super::*;
use crate::conformance::{Options, check, check_with};
use crate::fsm::{EventKind, RunOutcome};

#[test]
fn streams_the_machine_produces_conform() {
    for script in [linear(), with_replan(), with_hitl()] {
        let report = check(&script.events);
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.run_count(), 1);
        assert_eq!(report.event_count(), script.events.len());
        let run = &report.runs()[0];
        assert_eq!(run.outcome, Some(RunOutcome::Completed));
        assert_eq!(run.legality_stopped_at, None);
    }
}

#[test]
fn retries_pauses_cancels_and_failures_conform() {
    let mut retry = Script::new();
    retry
        .go(RunInput::Start)
        .go(RunInput::PlannerFailed {
            error: "429".into(),
            retryable: true,
        })
        .go(returned(PlannerOutput::Draft(PlanDraft::default())))
        .go(RunInput::PlanInvalid {
            diagnostics: vec![],
        })
        .go(returned(PlannerOutput::Draft(PlanDraft::default())))
        .go(RunInput::DraftValid {
            nodes: 1,
            edges: 0,
            warnings: vec![],
        })
        .start("write", 1)
        .fail("write", true)
        .start("write", 2)
        .go(RunInput::OperatorPause {
            reason: "lunch".into(),
        })
        .succeed("write")
        .go(RunInput::Resume {
            reason: "back".into(),
            budgets: Default::default(),
        })
        .go(RunInput::PolicyPause {
            policy_id: "hold".into(),
            trigger: trigger(TriggerSource::Policy),
        })
        .go(RunInput::Resume {
            reason: "go".into(),
            budgets: Default::default(),
        })
        .start("human", 1)
        .ask("human-1", Some("human"), FollowUp::Fail)
        .answer("human-1", HitlDecision::Freeform)
        .succeed("human")
        .done();
    let mut cancelled = Script::new();
    cancelled.planned().start("write", 1).go(RunInput::Cancel {
        reason: "operator".into(),
    });
    let mut failed = Script::new();
    failed
        .planned()
        .start("write", 1)
        .fail("write", false)
        .go(RunInput::Fail {
            error: RunError::new("NODE_FAILED", "node `write` failed after its last attempt"),
        });
    let mut rejected = Script::new();
    rejected
        .planned()
        .ask("gate-1", None, FollowUp::Fail)
        .answer("gate-1", HitlDecision::Reject);
    for script in [retry, cancelled, failed, rejected] {
        let report = check(&script.events);
        assert!(report.is_ok(), "{report}");
    }
}

#[test]
fn seq_gap_names_the_event_after_a_removed_one() {
    let mut events = linear().events();
    events.remove(1);
    let report = check(&events);
    assert_eq!(found(&report), [(Rule::SeqGap, 3)]);
    assert!(report.first().unwrap().message.contains("seq 2 is missing"));
    assert_eq!(report.first().unwrap().index, 1);
    assert_eq!(report.first().unwrap().kind, EventKind::PlanAccepted);
}

#[test]
fn seq_gap_names_a_repeat_once_and_a_late_start() {
    let mut events = linear().events();
    let again = events[4].clone();
    events.insert(5, again);
    assert_eq!(found(&check(&events)), [(Rule::SeqGap, 5)]);

    let mut events = linear().events();
    for e in &mut events {
        e.seq += 1;
    }
    let report = check(&events);
    assert_eq!(found(&report), [(Rule::SeqGap, 2)]);
    assert!(report.first().unwrap().message.contains("seqs start at 1"));

    let mut events = linear().events();
    events[3].seq = 3;
    let report = check(&events);
    assert!(
        report
            .of(Rule::SeqGap)
            .all(|v| v.index == 3 || v.index == 4)
    );
    assert_eq!(report.first().unwrap().seq, 3);
}

#[test]
fn run_id_names_an_event_of_another_run() {
    let s = linear();
    let mut events = s.events();
    let other = linear().events()[0].clone();
    events.insert(4, other.clone());
    let report = check_with(&events, &Options::default().for_run(s.run_id()));
    assert_eq!(found(&report), [(Rule::RunId, 1)]);
    assert_eq!(report.first().unwrap().index, 4);
    assert_eq!(report.first().unwrap().run_id, s.run_id());

    let report = check(&events);
    assert_eq!(report.run_count(), 2, "without a run, every run is checked");
    assert_eq!(found(&report), [(Rule::CompleteMissing, 1)]);
    assert_eq!(report.first().unwrap().run_id, other.run_id);
}

#[test]
fn interleaved_runs_are_checked_apart() {
    let (a, b) = (with_replan().events(), with_hitl().events());
    let mut both = Vec::new();
    for i in 0..a.len().max(b.len()) {
        both.extend(a.get(i).cloned());
        both.extend(b.get(i).cloned());
    }
    let report = check(&both);
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.run_count(), 2);
    assert_eq!(report.runs()[0].events, a.len());

    both.retain(|e| !(e.run_id == b[0].run_id && e.seq == 2));
    let report = check(&both);
    assert_eq!(found(&report), [(Rule::SeqGap, 3)]);
    assert_eq!(report.first().unwrap().run_id, b[0].run_id);
}

#[test]
fn legal_sequence_names_the_first_refused_event_and_stops() {
    let s = linear();
    let mut events = s.events();
    let resumed = event(
        &events[4],
        None,
        EventBody::RunResumed {
            reason: "nothing was paused".into(),
            budgets: Default::default(),
        },
    );
    let at = insert(&mut events, 5, vec![resumed.clone(), resumed]);
    let report = check(&events);
    assert_eq!(found(&report), [(Rule::LegalSequence, at)]);
    let message = &report.first().unwrap().message;
    assert!(
        message.contains("cannot follow in state executing"),
        "{message}"
    );
    assert_eq!(report.runs()[0].legality_stopped_at, Some(at));
    assert!(
        report.to_string().contains("not checked after seq 6"),
        "{report}"
    );
}

#[test]
fn legal_sequence_catches_a_payload_the_machine_would_not_write() {
    let mut events = with_hitl().events();
    let i = events
        .iter()
        .position(|e| e.kind() == EventKind::PlanRequested)
        .unwrap();
    if let EventBody::PlanRequested { attempt, .. } = &mut events[i].body {
        *attempt = 2;
    }
    assert_eq!(found(&check(&events)), [(Rule::LegalSequence, 1)]);
}

#[test]
fn legal_sequence_holds_the_stream_to_given_limits() {
    let mut s = Script::new();
    s.planned()
        .run_node("a")
        .replan()
        .run_node("b")
        .replan()
        .done();
    let events = s.events();
    assert!(check(&events).is_ok());
    let one_replan = Limits {
        max_attempts: 3,
        max_replans: 1,
    };
    let report = check_with(&events, &Options::default().with_limits(one_replan));
    assert_eq!(
        found(&report),
        [(Rule::LegalSequence, s.seq_of("policy_triggered", 1))]
    );
}

#[test]
fn after_complete_names_what_follows() {
    let mut events = linear().events();
    let last = events.last().unwrap().clone();
    let mut extra = node_start(&last, "late", 1);
    extra.seq = last.seq + 1;
    events.push(extra);
    let report = check(&events);
    assert_eq!(found(&report), [(Rule::AfterComplete, last.seq + 1)]);
}

#[test]
fn complete_missing_unless_the_stream_is_live() {
    let mut events = linear().events();
    events.pop();
    let last = events.last().unwrap().seq;
    let report = check(&events);
    assert_eq!(found(&report), [(Rule::CompleteMissing, last)]);
    assert!(check_with(&events, &Options::live()).is_ok());
    assert!(check_with(&events, &Options::default().require_complete(false)).is_ok());
}

#[test]
fn dispatch_during_replan_names_the_start() {
    let s = with_replan();
    let mut events = s.events();
    let after = s.seq_of("policy_triggered", 0) as usize;
    let model = events[after - 1].clone();
    let extra = vec![
        node_start(&model, "sneaky", 1),
        node_complete(&model, "sneaky", 1),
    ];
    let at = insert(&mut events, after, extra);
    let report = check(&events);
    assert_eq!(found(&report), [(Rule::DispatchDuringReplan, at)]);
    assert!(report.first().unwrap().message.contains("node `sneaky`"));
}

#[test]
fn dispatch_while_paused_names_the_start() {
    let mut s = Script::new();
    s.planned()
        .go(RunInput::OperatorPause {
            reason: "hold".into(),
        })
        .go(RunInput::Resume {
            reason: "go".into(),
            budgets: Default::default(),
        })
        .run_node("write")
        .done();
    let mut events = s.events();
    let after = s.seq_of("run_paused", 0) as usize;
    let model = events[after - 1].clone();
    let extra = vec![
        node_start(&model, "sneaky", 1),
        node_complete(&model, "sneaky", 1),
    ];
    let at = insert(&mut events, after, extra);
    assert_eq!(found(&check(&events)), [(Rule::DispatchWhilePaused, at)]);

    let s = with_hitl();
    let mut events = s.events();
    let after = s.seq_of("hitl_request", 1) as usize;
    let model = events[after - 1].clone();
    let extra = vec![
        node_start(&model, "sneaky", 1),
        node_complete(&model, "sneaky", 1),
    ];
    let at = insert(&mut events, after, extra);
    assert_eq!(found(&check(&events)), [(Rule::DispatchWhilePaused, at)]);
}

#[test]
fn plan_version_names_a_wrong_plan_version_and_legality_goes_on() {
    let s = with_replan();
    let mut events = s.events();
    events[4].plan_version = 2;
    let report = check(&events);
    assert_eq!(found(&report), [(Rule::PlanVersion, 5)]);
    assert_eq!(report.runs()[0].legality_stopped_at, None);

    let mut events = s.events();
    let i = s.seq_of("plan_updated", 0) as usize - 1;
    if let EventBody::PlanUpdated { version, .. } = &mut events[i].body {
        *version = 3;
    }
    let report = check(&events);
    assert_eq!(found(&report), [(Rule::PlanVersion, i as u64 + 1)]);
    assert!(report.first().unwrap().message.contains("from 1 to 2"));

    let mut events = s.events();
    if let EventBody::PlanUpdated { diff, .. } = &mut events[i].body {
        diff.to_version = 5;
    }
    assert_eq!(found(&check(&events)), [(Rule::PlanVersion, i as u64 + 1)]);
}

#[test]
fn hitl_answered_once_names_a_second_answer_and_an_unknown_one() {
    let s = with_hitl();
    let mut events = s.events();
    let second = s.seq_of("hitl_resolved", 1) as usize;
    let again = events[second - 1].clone();
    let at = insert(&mut events, second, vec![again]);
    let report = check(&events);
    assert_eq!(found(&report), [(Rule::HitlAnsweredOnce, at)]);
    assert!(report.first().unwrap().message.contains("again"));

    let mut events = s.events();
    if let EventBody::HitlResolved { request_id, .. } = &mut events[second - 1].body {
        *request_id = "nobody-asked".into();
    }
    let report = check(&events);
    assert_eq!(found(&report), [(Rule::HitlAnsweredOnce, second as u64)]);
    assert!(report.first().unwrap().message.contains("never made"));
}

#[test]
fn hitl_request_unique_names_a_reused_id() {
    let mut s = Script::new();
    s.planned()
        .ask("review", None, FollowUp::Fail)
        .answer("review", HitlDecision::Approve)
        .ask("review", None, FollowUp::Fail)
        .answer("review", HitlDecision::Approve)
        .done();
    let report = check(&s.events);
    assert_eq!(
        found(&report),
        [(Rule::HitlRequestUnique, s.seq_of("hitl_request", 1))]
    );
}

#[test]
fn node_lifecycle_names_attempts_that_do_not_rise() {
    let mut s = Script::new();
    s.planned()
        .start("write", 1)
        .fail("write", true)
        .start("write", 1)
        .succeed("write")
        .done();
    let report = check(&s.events);
    assert_eq!(
        found(&report),
        [(Rule::NodeLifecycle, s.seq_of("node_start", 1))]
    );
    assert!(
        report
            .first()
            .unwrap()
            .message
            .contains("not above its last attempt 1")
    );

    let mut s = Script::new();
    s.planned().start("write", 2).succeed("write").done();
    assert_eq!(found(&check(&s.events)), [(Rule::NodeLifecycle, 4)]);
}

#[test]
fn node_lifecycle_names_restarts_the_engine_never_makes() {
    let mut s = Script::new();
    s.planned()
        .run_node("write")
        .start("write", 2)
        .succeed("write")
        .done();
    let report = check(&s.events);
    assert_eq!(found(&report), [(Rule::NodeLifecycle, 6)]);
    assert!(
        report
            .first()
            .unwrap()
            .message
            .contains("completed at seq 5")
    );

    let mut s = Script::new();
    s.planned()
        .start("write", 1)
        .fail("write", false)
        .start("write", 2)
        .succeed("write")
        .done();
    let report = check(&s.events);
    assert_eq!(found(&report), [(Rule::NodeLifecycle, 6)]);
    assert!(report.first().unwrap().message.contains("final failure"));

    let mut s = Script::new();
    s.planned()
        .start("write", 1)
        .fail("write", false)
        .replan()
        .start("write", 2)
        .succeed("write")
        .done();
    assert!(
        check(&s.events).is_ok(),
        "a new plan version may run it again"
    );
}

#[test]
fn node_lifecycle_names_a_changed_key_and_a_wrong_attempt() {
    let s = linear();
    let mut events = s.events();
    if let EventBody::NodeStart {
        idempotency_key, ..
    } = &mut events[5].body
    {
        *idempotency_key = "elsewhere/write".into();
    }
    let report = check(&events);
    assert_eq!(found(&report), [(Rule::NodeLifecycle, 6)]);
    assert_eq!(report.runs()[0].legality_stopped_at, None);

    let mut events = s.events();
    if let EventBody::NodeComplete { attempt, .. } = &mut events[4].body {
        *attempt = 2;
    }
    assert_eq!(found(&check(&events)), [(Rule::NodeLifecycle, 5)]);
}

#[test]
fn node_lifecycle_names_a_completion_with_a_node_in_flight() {
    let mut events = linear().events();
    events.remove(6);
    renumber(&mut events);
    let report = check(&events);
    assert_eq!(found(&report), [(Rule::NodeLifecycle, 7)]);
    assert!(report.first().unwrap().message.contains("`write`"));
    assert_eq!(report.first().unwrap().kind, EventKind::Complete);
}

#[test]
fn node_id_names_missing_stray_and_mismatched_node_ids() {
    let mut events = linear().events();
    events[2].node_id = Some("brief".into());
    let report = check(&events);
    assert_eq!(found(&report), [(Rule::NodeId, 3)]);

    let s = with_hitl();
    let mut events = s.events();
    let i = s.seq_of("hitl_resolved", 0) as usize - 1;
    events[i].node_id = None;
    let report = check(&events);
    assert_eq!(found(&report), [(Rule::NodeId, i as u64 + 1)]);
    assert!(
        report
            .first()
            .unwrap()
            .message
            .contains("concerns node `write`")
    );

    let mut events = linear().events();
    events[3].node_id = None;
    let report = check(&events);
    assert_eq!(
        report.first().map(|v| (v.rule, v.seq)),
        Some((Rule::NodeId, 4))
    );
}

#[test]
fn complete_payload_names_what_the_status_calls_for() {
    let mut events = linear().events();
    if let EventBody::Complete { output, .. } = &mut events.last_mut().unwrap().body {
        *output = None;
    }
    let last = events.last().unwrap().seq;
    assert_eq!(found(&check(&events)), [(Rule::CompletePayload, last)]);

    let mut s = Script::new();
    s.planned().go(RunInput::Cancel {
        reason: "operator".into(),
    });
    let mut events = s.events();
    if let EventBody::Complete { error: Some(e), .. } = &mut events.last_mut().unwrap().body {
        e.code = "OOPS".into();
    }
    let report = check(&events);
    assert_eq!(found(&report), [(Rule::CompletePayload, 4)]);
    assert!(report.first().unwrap().message.contains("not `CANCELLED`"));
}

#[test]
fn timestamp_order_names_a_step_back() {
    let mut events = linear().events();
    events[4].timestamp = Timestamp(events[2].timestamp.millis() - 1);
    let report = check(&events);
    assert_eq!(found(&report), [(Rule::TimestampOrder, 5)]);
}

#[test]
fn id_grammar_names_ids_outside_the_grammar() {
    let mut s = Script::new();
    s.planned().run_node("a node").done();
    let report = check(&s.events);
    assert_eq!(found(&report), [(Rule::IdGrammar, 4), (Rule::IdGrammar, 5)]);
    assert!(
        report
            .first()
            .unwrap()
            .message
            .starts_with("nodeId: invalid node id")
    );
}

#[test]
fn one_violation_per_rule_and_event() {
    let mut events = linear().events();
    events[4].plan_version = 9;
    events[4].timestamp = Timestamp(0);
    let report = check(&events);
    assert_eq!(
        found(&report),
        [(Rule::TimestampOrder, 5), (Rule::PlanVersion, 5)]
    );
    let shown = report.to_string();
    assert!(
        shown.contains(": 8 events, 2 violations (ended completed)"),
        "{shown}"
    );
    assert!(
        shown.contains("seq 5 (node_complete): plan-version: planVersion is 9"),
        "{shown}"
    );
    assert_eq!(value(&events[4])["planVersion"], json!(9));
}
