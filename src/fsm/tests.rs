//! The edge table test: every state × input pair through the real machine.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::table::{self, Automaton, EDGES, Edge, From};
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
        cost: None,
        model: None,
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
        cost: None,
        model: None,
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

fn answer(request_id: &str, decision: HitlDecision) -> RunInput {
    RunInput::HitlAnswered {
        request_id: request_id.into(),
        decision,
        text: None,
        responder: None,
    }
}

/// The fallback ladder's question about node `node`, whose last attempt (1) failed.
fn fallback_request(node: &str) -> RunInput {
    RunInput::HitlRequested {
        request_id: format!("{node}-f1"),
        kind: HitlKind::Clarify,
        question: format!("node `{node}` failed"),
        policy_id: None,
        node_id: Some(node.into()),
        options: FallbackChoice::OPTIONS.map(str::to_owned).to_vec(),
        contract_summary: None,
        on_approve: FollowUp::Continue,
        on_reject: FollowUp::Fail,
    }
}

fn option(request_id: &str, option: &str) -> RunInput {
    RunInput::HitlAnswered {
        request_id: request_id.into(),
        decision: HitlDecision::Option,
        text: Some(option.into()),
        responder: None,
    }
}

/// Sample inputs of one kind: a few shapes each, legal in some situations, not in others.
/// Adding an input kind means adding its samples here (the match is exhaustive).
fn samples(kind: InputKind) -> Vec<RunInput> {
    match kind {
        InputKind::Start => vec![RunInput::Start],
        InputKind::PlanReturned => vec![draft_returned(), delta_returned(1)],
        InputKind::PlannerFailed => [true, false]
            .map(|retryable| RunInput::PlannerFailed {
                error: "boom".into(),
                retryable,
            })
            .to_vec(),
        InputKind::DraftValid => vec![RunInput::DraftValid {
            nodes: 1,
            edges: 0,
            warnings: vec![],
        }],
        InputKind::DeltaValid => vec![RunInput::DeltaValid {
            diff: PlanDiff::default(),
            warnings: vec![],
        }],
        InputKind::PlanInvalid => vec![RunInput::PlanInvalid {
            diagnostics: vec![Diagnostic::error(DiagnosticCode::Cycle, "cycle")],
        }],
        InputKind::NodeDispatched => vec![dispatched("n"), dispatched("m")],
        InputKind::NodeSucceeded => ["n", "ghost"]
            .map(|node| RunInput::NodeSucceeded {
                node_id: node.into(),
                output: Map::new(),
                duration_us: 0,
                spend: None,
            })
            .to_vec(),
        InputKind::NodeFailed => vec![
            RunInput::NodeFailed {
                node_id: "n".into(),
                error: RunError::new("E", "e"),
                will_retry: false,
                retry_at: None,
                spend: None,
            },
            RunInput::NodeFailed {
                node_id: "n".into(),
                error: RunError::new("E", "e"),
                will_retry: true,
                retry_at: Some(NOW.millis() + 200),
                spend: None,
            },
        ],
        InputKind::NodeSkipped => ["n", "ghost"]
            .map(|node| RunInput::NodeSkipped {
                node_id: node.into(),
                output: Map::from_iter([("x".to_owned(), json!(1))]),
            })
            .to_vec(),
        InputKind::OutputInvalid => vec![RunInput::OutputInvalid {
            node_id: "n".into(),
            errors: vec!["bad".into()],
            will_retry: true,
            spend: None,
            retry_at: None,
        }],
        InputKind::PolicyReplan => vec![RunInput::PolicyReplan {
            policy_id: "p".into(),
            trigger: trigger(),
        }],
        InputKind::PolicyPause => vec![RunInput::PolicyPause {
            policy_id: "p".into(),
            trigger: trigger(),
        }],
        InputKind::HitlRequested => vec![
            hitl(FollowUp::Continue, FollowUp::Fail),
            hitl(FollowUp::Replan, FollowUp::Fail),
            fallback_request("n"),
        ],
        InputKind::OperatorPause => vec![RunInput::OperatorPause {
            reason: "op".into(),
        }],
        InputKind::Drained => vec![RunInput::Drained],
        InputKind::HitlAnswered => vec![
            answer("h1", HitlDecision::Approve),
            answer("h1", HitlDecision::Reject),
            answer("nope", HitlDecision::Approve),
            option("n-f1", "retry"),
            option("n-f1", "skip"),
            option("n-f1", "replan"),
            option("n-f1", "fail"),
            option("n-f1", "shrug"),
        ],
        InputKind::Resume => vec![RunInput::Resume {
            reason: "go".into(),
            budgets: Default::default(),
        }],
        InputKind::AllDone => vec![RunInput::AllDone { output: json!({}) }],
        InputKind::Fail => vec![RunInput::Fail {
            error: RunError::new("E", "fatal"),
        }],
        InputKind::Cancel => vec![RunInput::Cancel {
            reason: "stop".into(),
        }],
    }
}

/// Scripts whose prefixes, under roomy and tight limits, put a run in every situation the
/// rows distinguish. Inputs a prefix does not accept are skipped.
fn scripts() -> Vec<Vec<RunInput>> {
    let s = |k: InputKind, i: usize| samples(k).swap_remove(i);
    use InputKind as K;
    vec![
        vec![
            s(K::Start, 0),
            s(K::PlannerFailed, 0),
            s(K::PlanReturned, 0),
            s(K::PlanInvalid, 0),
            s(K::PlanReturned, 0),
            s(K::DraftValid, 0),
            s(K::NodeDispatched, 0),
            s(K::PolicyReplan, 0),
            s(K::NodeSucceeded, 0),
            s(K::Drained, 0),
            s(K::PlanReturned, 1),
            s(K::DeltaValid, 0),
            s(K::NodeDispatched, 0),
            s(K::HitlRequested, 0),
            s(K::HitlAnswered, 0),
            s(K::OperatorPause, 0),
            s(K::Resume, 0),
            s(K::PolicyPause, 0),
            s(K::Resume, 0),
            s(K::NodeFailed, 0),
            s(K::AllDone, 0),
        ],
        vec![
            s(K::Start, 0),
            s(K::PlanReturned, 0),
            s(K::DraftValid, 0),
            s(K::HitlRequested, 1),
            s(K::HitlAnswered, 0),
        ],
        vec![
            s(K::Start, 0),
            s(K::PlanReturned, 0),
            s(K::DraftValid, 0),
            s(K::NodeDispatched, 0),
            s(K::NodeFailed, 1),
            s(K::NodeDispatched, 0),
            s(K::NodeFailed, 0),
            s(K::HitlRequested, 2),
            s(K::HitlAnswered, 4),
            s(K::NodeSkipped, 0),
        ],
    ]
}

/// Every situation: each prefix of each script, under each limit.
fn situations() -> Vec<(RunMachine, Automaton)> {
    let mut out = Vec::new();
    for l in [limits(3, 3), limits(1, 0)] {
        for script in scripts() {
            let id = RunId::new();
            let mut m = RunMachine::new(id, l);
            let mut a = Automaton::new(id, l);
            out.push((m.clone(), a.clone()));
            for input in &script {
                if m.apply(input, NOW).is_ok() {
                    a.apply(input, NOW)
                        .expect("the automaton accepts what the machine does");
                    out.push((m.clone(), a.clone()));
                }
            }
        }
    }
    out
}

#[test]
fn the_statig_machine_takes_the_rows_the_flat_table_takes() {
    let mut taken = vec![0usize; EDGES.len()];
    let mut checked = 0;
    for (machine, reference) in situations() {
        for &kind in InputKind::ALL {
            for input in samples(kind) {
                let (mut m, mut a) = (machine.clone(), reference.clone());
                let state = m.state();
                let seq = m.seq();
                let got = m.apply(&input, NOW);
                let want = a.apply(&input, NOW);
                checked += 1;
                match (&got, &want) {
                    (Ok(g), Ok(w)) => {
                        assert_eq!(g, w, "{kind} in {state}");
                        assert_eq!(m.state(), a.state(), "{kind} in {state}");
                        assert_eq!(m.core(), a.core(), "{kind} in {state}");
                        match g.row {
                            Some(i) => {
                                taken[i] += 1;
                                assert_eq!(g.events.len(), 1, "one event per edge");
                                assert_eq!(g.events[0].kind(), EDGES[i].event);
                                assert_eq!(g.events[0].seq, seq + 1);
                                assert_eq!(m.state(), EDGES[i].target(state));
                            }
                            None => {
                                assert_eq!(state, RunState::Done, "only Done absorbs");
                                assert!(g.events.is_empty() && g.commands.is_empty());
                            }
                        }
                    }
                    (
                        Err(FsmError::IllegalTransition {
                            state: s, input: i, ..
                        }),
                        Err(_),
                    ) => {
                        assert_eq!((*s, *i), (state, kind));
                        assert_eq!(
                            (m.state(), m.seq()),
                            (state, seq),
                            "refusal changes nothing"
                        );
                        assert_eq!(m.core(), machine.core(), "refusal changes nothing");
                    }
                    _ => panic!("{kind} in {state}: machine {got:?}, table {want:?}"),
                }
            }
        }
    }
    let missed: Vec<String> = EDGES
        .iter()
        .zip(&taken)
        .filter(|(_, n)| **n == 0)
        .map(|(e, _)| e.name())
        .collect();
    assert!(missed.is_empty(), "rows never taken: {missed:?}");
    assert!(checked > EDGES.len() * InputKind::ALL.len());
}

#[test]
fn every_row_names_a_distinct_situation() {
    let names: std::collections::BTreeSet<String> = EDGES.iter().map(Edge::name).collect();
    assert_eq!(
        names.len(),
        EDGES.len(),
        "two rows share source, input and guard"
    );
    for &state in RunState::ALL {
        for &kind in InputKind::ALL {
            let rows = table::rows(state, kind);
            if state == RunState::Done || state == RunState::New {
                assert!(rows.iter().all(|e| e.from == From::State(state)));
            }
        }
    }
}

#[test]
fn guards_that_fail_reject_instead_of_emitting() {
    let mut m = executing(limits(3, 3));
    assert!(
        m.apply(
            &RunInput::NodeSucceeded {
                node_id: "ghost".into(),
                output: Map::new(),
                duration_us: 0,
                spend: None
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
        p.apply(
            &RunInput::Resume {
                reason: "x".into(),
                budgets: Default::default()
            },
            NOW
        )
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
    assert!(step.commands.is_empty(), "replanning waits for the drain");
    apply(
        &mut m,
        RunInput::NodeSucceeded {
            node_id: "a".into(),
            output: Map::new(),
            duration_us: 3,
            spend: None,
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

/// Runs `inputs` from an executing run and checks that replaying the events rebuilds the
/// same machine.
fn ladder(inputs: Vec<RunInput>) -> (RunMachine, Vec<RunEvent>) {
    let mut m = executing(limits(3, 1));
    let mut events = Vec::new();
    for input in inputs {
        events.extend(apply(&mut m, input).events);
    }
    let mut all = RunMachine::restore(m.run_id(), limits(3, 1), &[]).unwrap();
    let mut prefix = executing_events(m.run_id());
    prefix.extend(events.iter().cloned());
    for event in &prefix {
        all.replay(event).unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(all.core(), m.core(), "replay rebuilds the same state");
    assert_eq!(all.state(), m.state());
    (m, events)
}

/// The events of [`executing`] for a run with this id.
fn executing_events(run_id: RunId) -> Vec<RunEvent> {
    let mut m = RunMachine::new(run_id, limits(3, 1));
    let mut events = apply(&mut m, RunInput::Start).events;
    events.extend(apply(&mut m, draft_returned()).events);
    events.extend(
        apply(
            &mut m,
            RunInput::DraftValid {
                nodes: 1,
                edges: 0,
                warnings: vec![],
            },
        )
        .events,
    );
    events
}

fn failed_for_good(node: &str) -> Vec<RunInput> {
    vec![
        dispatched(node),
        RunInput::NodeFailed {
            node_id: node.into(),
            error: RunError::new("HTTP_STATUS", "503"),
            will_retry: false,
            retry_at: None,
            spend: None,
        },
        fallback_request(node),
    ]
}

#[test]
fn a_retry_records_its_due_time_and_replays() {
    let at = NOW.millis() + 250;
    let (m, events) = ladder(vec![
        dispatched("n"),
        RunInput::NodeFailed {
            node_id: "n".into(),
            error: RunError::new("HTTP_STATUS", "503"),
            will_retry: true,
            retry_at: Some(at),
            spend: None,
        },
    ]);
    let EventBody::NodeError { retry_at, .. } = &events[1].body else {
        panic!("{events:?}")
    };
    assert_eq!(*retry_at, Some(at));
    let wire = serde_json::to_value(&events[1]).unwrap();
    assert_eq!(wire["payload"]["retryAt"], json!(at));
    assert!(m.exhausted().is_empty(), "a retry is not the last attempt");
}

#[test]
fn the_ladder_asks_and_each_answer_takes_its_row() {
    let (m, _) = ladder(failed_for_good("n"));
    assert_eq!(m.state(), RunState::Paused);
    assert_eq!(m.fallback_node(), Some("n"));
    assert_eq!(m.exhausted()["n"].0, 1);

    let (m, events) = ladder([failed_for_good("n"), vec![option("n-f1", "retry")]].concat());
    assert_eq!(m.state(), RunState::Executing);
    assert!(m.exhausted().is_empty(), "a retry starts a new round");
    assert!(matches!(
        events.last().unwrap().body,
        EventBody::HitlResolved {
            next: FollowUp::Continue,
            ..
        }
    ));

    let skip = RunInput::NodeSkipped {
        node_id: "n".into(),
        output: Map::from_iter([("x".to_owned(), json!(1))]),
    };
    let (m, events) = ladder([failed_for_good("n"), vec![option("n-f1", "skip"), skip]].concat());
    let EventBody::NodeComplete {
        attempt, output, ..
    } = &events.last().unwrap().body
    else {
        panic!("{events:?}")
    };
    assert_eq!(
        (*attempt, &output["x"]),
        (1, &json!(1)),
        "attempt unchanged"
    );
    assert!(m.exhausted().is_empty());

    let (m, _) = ladder([failed_for_good("n"), vec![option("n-f1", "replan")]].concat());
    assert_eq!(m.state(), RunState::Replanning);
    let trigger = m.trigger().unwrap();
    assert_eq!(
        (trigger.source, trigger.node_id.as_deref()),
        (TriggerSource::Hitl, Some("n"))
    );
    assert!(trigger.reason.contains("503"), "{}", trigger.reason);

    for decision in [option("n-f1", "fail"), answer("n-f1", HitlDecision::Reject)] {
        let (m, events) = ladder([failed_for_good("n"), vec![decision]].concat());
        assert_eq!(m.outcome(), Some(RunOutcome::Failed));
        let EventBody::Complete { error, .. } = &events.last().unwrap().body else {
            panic!("{events:?}")
        };
        assert_eq!(error.as_ref().unwrap().code, "NODE_FAILED");
    }

    let mut m = executing(limits(3, 1));
    for input in failed_for_good("n") {
        apply(&mut m, input);
    }
    assert!(
        m.apply(&option("n-f1", "shrug"), NOW).is_err(),
        "an unknown option is refused"
    );
    assert!(
        m.apply(
            &RunInput::NodeSkipped {
                node_id: "n".into(),
                output: Map::new()
            },
            NOW
        )
        .is_err(),
        "no skip while paused"
    );
}
