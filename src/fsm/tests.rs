//! The edge table test: every state × input pair through the real machine.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::table::{self, Guard, To};
use super::*;
use crate::diagnostics::{Diagnostic, DiagnosticCode};
use crate::graph::{PlanDelta, PlanDiff, PlanDraft};
use crate::ids::{RunId, Timestamp};

const NOW: Timestamp = Timestamp(1_700_000_000_000);

fn apply(m: &mut RunMachine, input: RunInput) -> Step {
    m.apply(&input, NOW).unwrap_or_else(|e| panic!("{e}"))
}

fn draft_returned() -> RunInput {
    RunInput::PlanReturned {
        output: Arc::new(PlannerOutput::Draft(PlanDraft::default())),
        planner: "test".into(),
        latency_ms: 1,
        usage: None,
        diagnostics: vec![],
    }
}

fn delta_returned(base: u32) -> RunInput {
    RunInput::PlanReturned {
        output: Arc::new(PlannerOutput::Delta(PlanDelta {
            base_version: base,
            rationale: String::new(),
            operations: vec![],
        })),
        planner: "test".into(),
        latency_ms: 1,
        usage: None,
        diagnostics: vec![],
    }
}

fn trigger() -> Trigger {
    Trigger {
        source: TriggerSource::Policy,
        policy_id: Some("p".into()),
        node_id: None,
        reason: "because".into(),
    }
}

fn hitl(on_approve: FollowUp, on_reject: FollowUp) -> RunInput {
    RunInput::HitlRequested {
        request_id: "h1".into(),
        kind: HitlKind::Approval,
        question: "ok?".into(),
        policy_id: None,
        node_id: None,
        options: vec![],
        contract_summary: None,
        on_approve,
        on_reject,
    }
}

fn dispatched(node: &str) -> RunInput {
    RunInput::NodeDispatched {
        node_id: node.into(),
        capability_id: "cap".into(),
        attempt: 1,
    }
}

fn limits(max_attempts: u32, max_replans: u32) -> Limits {
    Limits {
        max_attempts,
        max_replans,
    }
}

fn requesting(l: Limits) -> RunMachine {
    let mut m = RunMachine::new(RunId::new(), l);
    apply(&mut m, RunInput::Start);
    m
}

fn executing(l: Limits) -> RunMachine {
    let mut m = requesting(l);
    apply(&mut m, draft_returned());
    apply(
        &mut m,
        RunInput::DraftValid {
            nodes: 1,
            edges: 0,
            warnings: vec![],
        },
    );
    m
}

fn replanning(l: Limits, in_flight: bool) -> RunMachine {
    let mut m = executing(l);
    if in_flight {
        apply(&mut m, dispatched("n"));
    }
    apply(
        &mut m,
        RunInput::PolicyReplan {
            policy_id: "p".into(),
            trigger: trigger(),
        },
    );
    m
}

fn validating_replan(l: Limits) -> RunMachine {
    let mut m = replanning(l, false);
    apply(&mut m, RunInput::Drained);
    apply(&mut m, delta_returned(1));
    m
}

/// A machine in `state` where `guard` holds, plus the input that exercises it.
fn setup(state: RunState, kind: InputKind, guard: Guard) -> Option<(RunMachine, RunInput)> {
    let roomy = limits(3, 3);
    let tight = limits(1, 0);
    let mut m = match (state, guard) {
        (RunState::New, _) => RunMachine::new(RunId::new(), roomy),
        (RunState::Requesting, Guard::ExhaustedOrFatal) => requesting(tight),
        (RunState::Requesting, _) => requesting(roomy),
        (RunState::Validating, Guard::Replan) => validating_replan(roomy),
        (RunState::Validating, Guard::AttemptsExhausted) => {
            let mut m = requesting(tight);
            apply(&mut m, draft_returned());
            m
        }
        (RunState::Validating, _) => {
            let mut m = requesting(roomy);
            apply(&mut m, draft_returned());
            m
        }
        (RunState::Executing, Guard::ReplansExhausted) => executing(tight),
        (RunState::Executing, Guard::NodeInFlight) => {
            let mut m = executing(roomy);
            apply(&mut m, dispatched("n"));
            m
        }
        (RunState::Executing, _) => executing(roomy),
        (RunState::Replanning, Guard::NodeInFlight) => replanning(roomy, true),
        (RunState::Replanning, _) => replanning(roomy, false),
        (RunState::Paused, g) => {
            let l = if g == Guard::FollowUpFail {
                limits(3, 0)
            } else {
                roomy
            };
            let mut m = executing(l);
            if g == Guard::NodeInFlight {
                apply(&mut m, dispatched("n"));
            }
            match (kind, g) {
                (InputKind::HitlAnswered, Guard::FollowUpContinue) => {
                    apply(&mut m, hitl(FollowUp::Continue, FollowUp::Fail));
                }
                (InputKind::HitlAnswered, Guard::FollowUpReplan) => {
                    apply(&mut m, hitl(FollowUp::Replan, FollowUp::Fail));
                }
                (InputKind::HitlAnswered, _) => {
                    apply(&mut m, hitl(FollowUp::Replan, FollowUp::Fail));
                }
                _ => {
                    apply(
                        &mut m,
                        RunInput::OperatorPause {
                            reason: "op".into(),
                        },
                    );
                }
            }
            m
        }
        (RunState::Done, _) => {
            let mut m = executing(roomy);
            apply(
                &mut m,
                RunInput::Cancel {
                    reason: "stop".into(),
                },
            );
            m
        }
    };
    let _ = &mut m;
    let input = match kind {
        InputKind::Start => RunInput::Start,
        InputKind::PlanReturned => draft_returned(),
        InputKind::PlannerFailed => RunInput::PlannerFailed {
            error: "boom".into(),
            retryable: guard != Guard::ExhaustedOrFatal,
        },
        InputKind::DraftValid => RunInput::DraftValid {
            nodes: 1,
            edges: 0,
            warnings: vec![],
        },
        InputKind::DeltaValid => RunInput::DeltaValid {
            diff: PlanDiff::default(),
            warnings: vec![],
        },
        InputKind::PlanInvalid => RunInput::PlanInvalid {
            diagnostics: vec![Diagnostic::error(DiagnosticCode::Cycle, "cycle")],
        },
        InputKind::NodeDispatched => dispatched("m"),
        InputKind::NodeSucceeded => RunInput::NodeSucceeded {
            node_id: "n".into(),
            output: Map::new(),
            duration_ms: 0,
        },
        InputKind::NodeFailed => RunInput::NodeFailed {
            node_id: "n".into(),
            error: RunError::new("E", "e"),
            will_retry: false,
        },
        InputKind::OutputInvalid => RunInput::OutputInvalid {
            node_id: "n".into(),
            errors: vec!["bad".into()],
            will_retry: false,
        },
        InputKind::PolicyReplan => RunInput::PolicyReplan {
            policy_id: "p".into(),
            trigger: trigger(),
        },
        InputKind::PolicyPause => RunInput::PolicyPause {
            policy_id: "p".into(),
            trigger: trigger(),
        },
        InputKind::HitlRequested => hitl(FollowUp::Continue, FollowUp::Fail),
        InputKind::OperatorPause => RunInput::OperatorPause {
            reason: "op".into(),
        },
        InputKind::Drained => RunInput::Drained,
        InputKind::HitlAnswered => RunInput::HitlAnswered {
            request_id: "h1".into(),
            decision: if guard == Guard::FollowUpFail {
                HitlDecision::Reject
            } else {
                HitlDecision::Approve
            },
            text: None,
            responder: None,
        },
        InputKind::Resume => RunInput::Resume {
            reason: "go".into(),
        },
        InputKind::AllDone => RunInput::AllDone { output: json!({}) },
        InputKind::Fail => RunInput::Fail {
            error: RunError::new("E", "fatal"),
        },
        InputKind::Cancel => RunInput::Cancel {
            reason: "stop".into(),
        },
    };
    Some((m, input))
}

fn guard_reachable(state: RunState, guard: Guard) -> bool {
    !(guard == Guard::NodeInFlight && matches!(state, RunState::Requesting | RunState::Validating))
}

#[test]
fn every_state_input_pair_matches_the_edge_table() {
    let mut checked = 0;
    for &state in RunState::ALL {
        for &kind in InputKind::ALL {
            let rows = table::rows(state, kind);
            if state == RunState::Done {
                let (mut m, input) = setup(state, kind, Guard::Always).unwrap();
                let seq = m.seq();
                let step = m.apply(&input, NOW).expect("done absorbs every input");
                assert!(
                    step.events.is_empty() && step.commands.is_empty(),
                    "{kind} in done"
                );
                assert_eq!((m.state(), m.seq()), (RunState::Done, seq));
                checked += 1;
                continue;
            }
            if rows.is_empty() {
                let (mut m, input) = setup(state, kind, Guard::Always).unwrap();
                let seq = m.seq();
                let err = m
                    .apply(&input, NOW)
                    .expect_err(&format!("{kind} must be illegal in {state}"));
                assert!(
                    matches!(err, FsmError::IllegalTransition { state: s, input: i, .. } if s == state && i == kind)
                );
                assert_eq!(
                    (m.state(), m.seq()),
                    (state, seq),
                    "rejection changes nothing"
                );
                checked += 1;
                continue;
            }
            for row in rows {
                let (mut m, input) = setup(state, kind, row.guard).unwrap();
                assert_eq!(m.state(), state, "setup for {kind} in {state}");
                if !guard_reachable(state, row.guard) {
                    let err = m.apply(&input, NOW);
                    assert!(
                        err.is_err(),
                        "{kind} in {state} without its guard must be illegal"
                    );
                    checked += 1;
                    continue;
                }
                let seq = m.seq();
                let step = m
                    .apply(&input, NOW)
                    .unwrap_or_else(|e| panic!("{kind} in {state} [{:?}]: {e}", row.guard));
                assert_eq!(
                    step.events.len(),
                    1,
                    "exactly one event for {kind} in {state}"
                );
                assert_eq!(
                    step.events[0].kind(),
                    row.event,
                    "{kind} in {state} [{:?}]",
                    row.guard
                );
                assert_eq!(step.events[0].seq, seq + 1);
                let expected = match row.to {
                    To::State(s) => s,
                    To::Same => state,
                };
                assert_eq!(m.state(), expected, "{kind} in {state} [{:?}]", row.guard);
                checked += 1;
            }
        }
    }
    assert!(checked >= RunState::ALL.len() * InputKind::ALL.len());
}

#[test]
fn guards_that_fail_reject_instead_of_emitting() {
    let mut m = executing(limits(3, 3));
    assert!(
        m.apply(
            &RunInput::NodeSucceeded {
                node_id: "ghost".into(),
                output: Map::new(),
                duration_ms: 0
            },
            NOW
        )
        .is_err()
    );
    apply(&mut m, dispatched("a"));
    assert!(m.apply(&dispatched("a"), NOW).is_err(), "double dispatch");
    assert!(
        m.apply(
            &RunInput::AllDone {
                output: Value::Null
            },
            NOW
        )
        .is_err(),
        "in flight"
    );
    let mut r = replanning(limits(3, 3), true);
    assert!(
        r.apply(&RunInput::Drained, NOW).is_err(),
        "drained while in flight"
    );
    let mut p = executing(limits(3, 3));
    apply(&mut p, hitl(FollowUp::Continue, FollowUp::Fail));
    assert!(
        p.apply(&RunInput::Resume { reason: "x".into() }, NOW)
            .is_err(),
        "resume needs an answer"
    );
    let wrong = RunInput::HitlAnswered {
        request_id: "nope".into(),
        decision: HitlDecision::Approve,
        text: None,
        responder: None,
    };
    assert!(p.apply(&wrong, NOW).is_err(), "unknown request id");
}

#[test]
fn entry_actions_issue_commands_and_restore_stays_silent() {
    let mut m = RunMachine::new(RunId::new(), limits(3, 3));
    let step = apply(&mut m, RunInput::Start);
    assert!(
        matches!(&step.commands[..], [Command::CallPlanner(c)] if c.attempt == 1 && c.phase == PlanPhase::Initial)
    );
    let mut events = step.events;
    let step = apply(&mut m, draft_returned());
    assert!(matches!(
        &step.commands[..],
        [Command::Validate(o)] if matches!(*o.output, PlannerOutput::Draft(_))
    ));
    events.extend(step.events);
    let step = apply(
        &mut m,
        RunInput::PlanInvalid {
            diagnostics: vec![Diagnostic::error(
                DiagnosticCode::CapabilityNotRegistered,
                "x",
            )],
        },
    );
    let [Command::CallPlanner(call)] = &step.commands[..] else {
        panic!("revision call expected: {:?}", step.commands)
    };
    assert_eq!((call.attempt, call.phase), (2, PlanPhase::Revision));
    assert_eq!(
        call.diagnostics[0].code,
        DiagnosticCode::CapabilityNotRegistered
    );
    events.extend(step.events);

    let restored = RunMachine::restore(m.run_id(), limits(3, 3), &events).unwrap();
    assert_eq!(restored.state(), RunState::Requesting);
    assert_eq!(restored.seq(), 3);
    assert_eq!(
        restored.plan_call(),
        *call,
        "restore rebuilds the pending call without issuing it"
    );
}

#[test]
fn restore_rejects_gaps_and_foreign_events() {
    let mut m = RunMachine::new(RunId::new(), limits(3, 3));
    let mut events = apply(&mut m, RunInput::Start).events;
    events.extend(apply(&mut m, draft_returned()).events);
    let mut gap = events.clone();
    gap.remove(0);
    assert!(matches!(
        RunMachine::restore(m.run_id(), limits(3, 3), &gap),
        Err(FsmError::Replay { seq: 2, .. })
    ));
    assert!(RunMachine::restore(RunId::new(), limits(3, 3), &events).is_err());
}

#[test]
fn replan_cycle_bumps_version_and_counts_replans() {
    let mut m = executing(limits(3, 1));
    apply(&mut m, dispatched("a"));
    let step = apply(
        &mut m,
        RunInput::PolicyReplan {
            policy_id: "p".into(),
            trigger: trigger(),
        },
    );
    assert_eq!(step.commands, vec![Command::AwaitDrain]);
    apply(
        &mut m,
        RunInput::NodeSucceeded {
            node_id: "a".into(),
            output: Map::new(),
            duration_ms: 3,
        },
    );
    let step = apply(&mut m, RunInput::Drained);
    let [Command::CallPlanner(call)] = &step.commands[..] else {
        panic!()
    };
    assert_eq!(
        (call.purpose, call.phase),
        (Purpose::Replan, PlanPhase::Replan)
    );
    assert_eq!(
        call.trigger.as_ref().unwrap().policy_id.as_deref(),
        Some("p")
    );
    apply(&mut m, delta_returned(1));
    let step = apply(
        &mut m,
        RunInput::DeltaValid {
            diff: PlanDiff::default(),
            warnings: vec![],
        },
    );
    let EventBody::PlanUpdated {
        previous_version,
        version,
        trigger,
        ..
    } = &step.events[0].body
    else {
        panic!()
    };
    assert_eq!((*previous_version, *version), (1, 2));
    assert_eq!(trigger.policy_id.as_deref(), Some("p"));
    assert_eq!((m.plan_version(), m.replans()), (2, 1));
    let step = apply(
        &mut m,
        RunInput::PolicyReplan {
            policy_id: "p2".into(),
            trigger: trigger.clone(),
        },
    );
    let EventBody::Complete { status, error, .. } = &step.events[0].body else {
        panic!()
    };
    assert_eq!(*status, RunOutcome::Failed);
    assert_eq!(error.as_ref().unwrap().code, "REPLANS_EXHAUSTED");
}

#[test]
fn event_serializes_to_the_wire_shape() {
    let mut m = RunMachine::new(RunId::new(), limits(3, 3));
    let ev = apply(&mut m, RunInput::Start).events.remove(0);
    let v = serde_json::to_value(&ev).unwrap();
    assert_eq!(v["type"], "plan_requested");
    assert_eq!(v["seq"], 1);
    assert_eq!(v["planVersion"], 0);
    assert_eq!(v["payload"]["phase"], "initial");
    assert_eq!(v["runId"], m.run_id().to_string());
    assert!(v.get("nodeId").is_none());
    let back: RunEvent = serde_json::from_value(v).unwrap();
    assert_eq!(back, ev);
}
