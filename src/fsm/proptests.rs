//! Property test: random input sequences against a reference model of the run machine.
//!
//! After every step: the machine accepts exactly what the model accepts, lands in the
//! model's state and emits the model's event; seqs are gap-free; plan versions rise by one
//! per `plan_updated`; nothing dispatches between `policy_triggered` and the next
//! `plan_updated`, nor while paused; nothing follows `complete`; and replaying the emitted
//! events rebuilds the same machine.

use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::Config;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use serde_json::{Map, Value};

use super::*;
use crate::diagnostics::{Diagnostic, DiagnosticCode};
use crate::graph::{PlanDelta, PlanDiff, PlanDraft};
use crate::ids::{RunId, Timestamp};

const LIMITS: Limits = Limits {
    max_attempts: 2,
    max_replans: 2,
};
const NODES: &[&str] = &["a", "b", "c"];

/// The reference model: the six states plus the counters that guards read.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    state: RunState,
    replan_purpose: bool,
    attempt: u32,
    replans: u32,
    version: u32,
    in_flight: BTreeSet<&'static str>,
    hitl: Option<(FollowUp, FollowUp)>,
    hitl_seq: u32,
    /// What the last input should have produced: `None` = rejected, `Some(None)` = absorbed.
    expect: Option<Option<EventKind>>,
}

fn pick(i: usize) -> &'static str {
    NODES[i % NODES.len()]
}

fn follow_up() -> impl Strategy<Value = FollowUp> {
    prop_oneof![
        Just(FollowUp::Continue),
        Just(FollowUp::Replan),
        Just(FollowUp::Fail)
    ]
}

fn trigger() -> Trigger {
    Trigger {
        source: TriggerSource::Policy,
        policy_id: Some("p".into()),
        node_id: None,
        reason: "r".into(),
    }
}

fn any_input() -> BoxedStrategy<RunInput> {
    prop_oneof![
        Just(RunInput::Start),
        any::<bool>().prop_map(|draft| RunInput::PlanReturned {
            output: Arc::new(if draft {
                PlannerOutput::Draft(PlanDraft::default())
            } else {
                PlannerOutput::Delta(PlanDelta {
                    base_version: 1,
                    rationale: String::new(),
                    operations: vec![],
                })
            }),
            planner: "m".into(),
            latency_ms: 0,
            usage: None,
            diagnostics: vec![],
        }),
        any::<bool>().prop_map(|retryable| RunInput::PlannerFailed {
            error: "e".into(),
            retryable
        }),
        Just(RunInput::DraftValid {
            nodes: 3,
            edges: 2,
            warnings: vec![]
        }),
        Just(RunInput::DeltaValid {
            diff: PlanDiff::default(),
            warnings: vec![]
        }),
        Just(RunInput::PlanInvalid {
            diagnostics: vec![Diagnostic::error(DiagnosticCode::Cycle, "c")]
        }),
        (0..3usize).prop_map(|i| RunInput::NodeDispatched {
            node_id: pick(i).into(),
            capability_id: "cap".into(),
            attempt: 1
        }),
        (0..3usize).prop_map(|i| RunInput::NodeSucceeded {
            node_id: pick(i).into(),
            output: Map::new(),
            duration_ms: 0
        }),
        (0..3usize, any::<bool>()).prop_map(|(i, will_retry)| RunInput::NodeFailed {
            node_id: pick(i).into(),
            error: RunError::new("E", "e"),
            will_retry
        }),
        (0..3usize).prop_map(|i| RunInput::OutputInvalid {
            node_id: pick(i).into(),
            errors: vec!["x".into()],
            will_retry: true
        }),
        Just(RunInput::PolicyReplan {
            policy_id: "p".into(),
            trigger: trigger()
        }),
        Just(RunInput::PolicyPause {
            policy_id: "p".into(),
            trigger: trigger()
        }),
        (follow_up(), follow_up()).prop_map(|(on_approve, on_reject)| RunInput::HitlRequested {
            request_id: "h".into(),
            kind: HitlKind::Approval,
            question: "q".into(),
            policy_id: None,
            node_id: None,
            options: vec![],
            contract_summary: None,
            on_approve,
            on_reject
        }),
        Just(RunInput::OperatorPause { reason: "o".into() }),
        Just(RunInput::Drained),
        (any::<bool>(), any::<bool>()).prop_map(|(right_id, approve)| RunInput::HitlAnswered {
            request_id: if right_id { "h".into() } else { "zz".into() },
            decision: if approve {
                HitlDecision::Approve
            } else {
                HitlDecision::Reject
            },
            text: None,
            responder: None
        }),
        Just(RunInput::Resume { reason: "r".into() }),
        Just(RunInput::AllDone {
            output: Value::Null
        }),
        Just(RunInput::Fail {
            error: RunError::new("F", "f")
        }),
        Just(RunInput::Cancel { reason: "c".into() }),
    ]
    .boxed()
}

/// Inputs that fit the model's state, so random sequences go deep (replans, pauses, retries).
fn likely_input(m: &Model) -> BoxedStrategy<RunInput> {
    let flying: Vec<&'static str> = m.in_flight.iter().copied().collect();
    let idle: Vec<&'static str> = NODES
        .iter()
        .copied()
        .filter(|n| !m.in_flight.contains(n))
        .collect();
    let done = |n: &'static str| RunInput::NodeSucceeded {
        node_id: n.into(),
        output: Map::new(),
        duration_ms: 0,
    };
    let mut options: Vec<BoxedStrategy<RunInput>> = Vec::new();
    match m.state {
        RunState::New => options.push(Just(RunInput::Start).boxed()),
        RunState::Requesting => {
            let output = Arc::new(if m.replan_purpose {
                PlannerOutput::Delta(PlanDelta {
                    base_version: m.version,
                    rationale: String::new(),
                    operations: vec![],
                })
            } else {
                PlannerOutput::Draft(PlanDraft::default())
            });
            options.push(
                Just(RunInput::PlanReturned {
                    output,
                    planner: "m".into(),
                    latency_ms: 0,
                    usage: None,
                    diagnostics: vec![],
                })
                .boxed(),
            );
            options.push(
                any::<bool>()
                    .prop_map(|retryable| RunInput::PlannerFailed {
                        error: "e".into(),
                        retryable,
                    })
                    .boxed(),
            );
        }
        RunState::Validating => {
            options.push(if m.replan_purpose {
                Just(RunInput::DeltaValid {
                    diff: PlanDiff::default(),
                    warnings: vec![],
                })
                .boxed()
            } else {
                Just(RunInput::DraftValid {
                    nodes: 3,
                    edges: 2,
                    warnings: vec![],
                })
                .boxed()
            });
            options.push(
                Just(RunInput::PlanInvalid {
                    diagnostics: vec![Diagnostic::error(DiagnosticCode::Cycle, "c")],
                })
                .boxed(),
            );
        }
        RunState::Executing => {
            if !idle.is_empty() {
                options.push(
                    proptest::sample::select(idle)
                        .prop_map(|n| RunInput::NodeDispatched {
                            node_id: n.into(),
                            capability_id: "cap".into(),
                            attempt: 1,
                        })
                        .boxed(),
                );
            }
            options.push(
                Just(RunInput::PolicyReplan {
                    policy_id: "p".into(),
                    trigger: trigger(),
                })
                .boxed(),
            );
            options.push(
                (follow_up(), follow_up())
                    .prop_map(|(on_approve, on_reject)| RunInput::HitlRequested {
                        request_id: "h".into(),
                        kind: HitlKind::Approval,
                        question: "q".into(),
                        policy_id: None,
                        node_id: None,
                        options: vec![],
                        contract_summary: None,
                        on_approve,
                        on_reject,
                    })
                    .boxed(),
            );
            options.push(
                Just(RunInput::AllDone {
                    output: Value::Null,
                })
                .boxed(),
            );
        }
        RunState::Replanning => options.push(Just(RunInput::Drained).boxed()),
        RunState::Paused => {
            options.push(Just(RunInput::Resume { reason: "r".into() }).boxed());
            options.push(
                any::<bool>()
                    .prop_map(|approve| RunInput::HitlAnswered {
                        request_id: "h".into(),
                        decision: if approve {
                            HitlDecision::Approve
                        } else {
                            HitlDecision::Reject
                        },
                        text: None,
                        responder: None,
                    })
                    .boxed(),
            );
        }
        RunState::Done => options.push(any_input()),
    }
    if !flying.is_empty() {
        options.push(proptest::sample::select(flying).prop_map(done).boxed());
    }
    proptest::strategy::Union::new(options).boxed()
}

fn node_of(input: &RunInput) -> Option<&'static str> {
    let id = match input {
        RunInput::NodeDispatched { node_id, .. }
        | RunInput::NodeSucceeded { node_id, .. }
        | RunInput::NodeFailed { node_id, .. }
        | RunInput::OutputInvalid { node_id, .. } => node_id.as_str(),
        _ => return None,
    };
    NODES.iter().copied().find(|n| *n == id)
}

impl Model {
    fn go(&mut self, to: RunState, event: EventKind) {
        self.state = to;
        self.expect = Some(Some(event));
    }

    fn fail(&mut self) {
        self.go(RunState::Done, EventKind::Complete);
    }

    fn replan_or_fail(&mut self, event: EventKind) {
        if self.replans < LIMITS.max_replans {
            self.go(RunState::Replanning, event);
        } else {
            self.fail();
        }
    }

    fn step(&mut self, input: &RunInput) {
        use RunState as S;
        self.expect = None;
        if self.state == S::Done {
            self.expect = Some(None);
            return;
        }
        let live = self.state.is_live();
        match (self.state, input) {
            (S::New, RunInput::Start) => {
                self.attempt = 1;
                self.go(S::Requesting, EventKind::PlanRequested);
            }
            (S::Requesting, RunInput::PlanReturned { .. }) => {
                self.go(S::Validating, EventKind::PlanGenerated)
            }
            (S::Requesting, RunInput::PlannerFailed { retryable, .. }) => {
                if *retryable && self.attempt < LIMITS.max_attempts {
                    self.attempt += 1;
                    self.go(S::Requesting, EventKind::PlanRequested);
                } else {
                    self.fail();
                }
            }
            (S::Validating, RunInput::DraftValid { .. }) if !self.replan_purpose => {
                self.version = 1;
                self.go(S::Executing, EventKind::PlanAccepted);
            }
            (S::Validating, RunInput::DeltaValid { .. }) if self.replan_purpose => {
                self.version += 1;
                self.go(S::Executing, EventKind::PlanUpdated);
            }
            (S::Validating, RunInput::PlanInvalid { .. }) => {
                if self.attempt < LIMITS.max_attempts {
                    self.attempt += 1;
                    self.go(S::Requesting, EventKind::PlanRejected);
                } else {
                    self.fail();
                }
            }
            (S::Executing, RunInput::NodeDispatched { .. }) => {
                let n = node_of(input).unwrap_or("a");
                if self.in_flight.insert(n) {
                    self.go(S::Executing, EventKind::NodeStart);
                }
            }
            (
                s,
                RunInput::NodeSucceeded { .. }
                | RunInput::NodeFailed { .. }
                | RunInput::OutputInvalid { .. },
            ) if live => {
                let n = node_of(input).unwrap_or("a");
                if self.in_flight.remove(n) {
                    let kind = match input {
                        RunInput::NodeSucceeded { .. } => EventKind::NodeComplete,
                        RunInput::NodeFailed { .. } => EventKind::NodeError,
                        _ => EventKind::ValidationError,
                    };
                    self.go(s, kind);
                }
            }
            (S::Executing, RunInput::PolicyReplan { .. }) => {
                self.replan_or_fail(EventKind::PolicyTriggered)
            }
            (S::Executing, RunInput::PolicyPause { .. }) => {
                self.go(S::Paused, EventKind::PolicyTriggered)
            }
            (
                S::Executing,
                RunInput::HitlRequested {
                    on_approve,
                    on_reject,
                    ..
                },
            ) => {
                self.hitl = Some((*on_approve, *on_reject));
                self.hitl_seq += 1;
                self.go(S::Paused, EventKind::HitlRequest);
            }
            (S::Executing, RunInput::OperatorPause { .. }) => {
                self.go(S::Paused, EventKind::RunPaused)
            }
            (S::Replanning, RunInput::Drained) if self.in_flight.is_empty() => {
                self.replans += 1;
                self.replan_purpose = true;
                self.attempt = 1;
                self.go(S::Requesting, EventKind::PlanRequested);
            }
            (
                S::Paused,
                RunInput::HitlAnswered {
                    request_id,
                    decision,
                    ..
                },
            ) if request_id == "h" => {
                if let Some((approve, reject)) = self.hitl.take() {
                    let next = if *decision == HitlDecision::Reject {
                        reject
                    } else {
                        approve
                    };
                    match next {
                        FollowUp::Continue => self.go(S::Executing, EventKind::HitlResolved),
                        FollowUp::Replan => self.replan_or_fail(EventKind::HitlResolved),
                        FollowUp::Fail => self.fail(),
                    }
                }
            }
            (S::Paused, RunInput::Resume { .. }) if self.hitl.is_none() => {
                self.go(S::Executing, EventKind::RunResumed)
            }
            (S::Executing, RunInput::AllDone { .. }) if self.in_flight.is_empty() => self.fail(),
            (_, RunInput::Fail { .. } | RunInput::Cancel { .. }) if live => self.fail(),
            _ => {}
        }
    }
}

/// The reference state machine for proptest-state-machine.
pub struct Reference;

impl ReferenceStateMachine for Reference {
    type State = Model;
    type Transition = RunInput;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model {
            state: RunState::New,
            replan_purpose: false,
            attempt: 0,
            replans: 0,
            version: 0,
            in_flight: BTreeSet::new(),
            hitl: None,
            hitl_seq: 0,
            expect: None,
        })
        .boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<RunInput> {
        prop_oneof![9 => likely_input(state), 1 => any_input()].boxed()
    }

    fn apply(mut state: Model, input: &RunInput) -> Model {
        state.step(input);
        state
    }
}

/// The system under test: the real machine plus the event log it produced.
pub struct Sut {
    machine: RunMachine,
    log: Vec<RunEvent>,
}

const NOW: Timestamp = Timestamp(1_700_000_000_000);

impl StateMachineTest for Sut {
    type SystemUnderTest = Self;
    type Reference = Reference;

    fn init_test(_: &Model) -> Self {
        Sut {
            machine: RunMachine::new(RunId::from_bytes([7; 16]), LIMITS),
            log: Vec::new(),
        }
    }

    fn apply(mut sut: Self, model: &Model, input: RunInput) -> Self {
        let seq = sut.machine.seq();
        match (sut.machine.apply(&input, NOW), model.expect) {
            (Ok(step), Some(expected)) => {
                let kinds: Vec<EventKind> = step.events.iter().map(RunEvent::kind).collect();
                assert_eq!(kinds, expected.into_iter().collect::<Vec<_>>(), "{input:?}");
                sut.log.extend(step.events);
            }
            (Err(e), None) => {
                assert!(matches!(e, FsmError::IllegalTransition { .. }));
                assert_eq!(sut.machine.seq(), seq, "a rejection changes nothing");
            }
            (got, expected) => panic!("{input:?}: machine {got:?}, model {expected:?}"),
        }
        assert_eq!(sut.machine.state(), model.state, "after {input:?}");
        assert_eq!(sut.machine.plan_version(), model.version);
        sut
    }

    fn check_invariants(sut: &Self, _model: &Model) {
        let mut replanning = false;
        let mut paused = false;
        let mut version = 0;
        for (i, e) in sut.log.iter().enumerate() {
            assert_eq!(e.seq, i as u64 + 1, "gap-free seqs");
            match e.kind() {
                EventKind::PolicyTriggered => {
                    if let EventBody::PolicyTriggered { action, .. } = &e.body {
                        replanning |= action == "replan";
                        paused |= action == "pause";
                    }
                }
                EventKind::HitlRequest | EventKind::RunPaused => paused = true,
                EventKind::HitlResolved | EventKind::RunResumed => {
                    paused = false;
                    if let EventBody::HitlResolved {
                        next: FollowUp::Replan,
                        ..
                    } = &e.body
                    {
                        replanning = true;
                    }
                }
                EventKind::PlanUpdated => {
                    replanning = false;
                    assert_eq!(e.plan_version, version + 1, "one version per plan_updated");
                }
                EventKind::NodeStart => assert!(
                    !replanning && !paused,
                    "dispatch while held at seq {}",
                    e.seq
                ),
                EventKind::Complete => assert_eq!(i + 1, sut.log.len(), "nothing follows complete"),
                EventKind::PlanRequested
                | EventKind::PlanGenerated
                | EventKind::PlanAccepted
                | EventKind::PlanRejected
                | EventKind::NodeComplete
                | EventKind::NodeError
                | EventKind::ValidationError => {}
            }
            version = e.plan_version;
        }
        let replayed =
            RunMachine::restore(sut.machine.run_id(), LIMITS, &sut.log).expect("the log replays");
        assert_eq!(replayed.state(), sut.machine.state());
        assert_eq!(replayed.seq(), sut.machine.seq());
        assert_eq!(replayed.plan_version(), sut.machine.plan_version());
        assert_eq!(replayed.in_flight(), sut.machine.in_flight());
        assert_eq!(replayed.pending_hitl(), sut.machine.pending_hitl());
    }
}

prop_state_machine! {
    #![proptest_config(Config { cases: 256, failure_persistence: None, ..Config::default() })]
    #[test]
    fn run_machine_matches_the_reference_model(sequential 1..60 => Sut);
}

#[test]
fn the_model_reaches_every_state() {
    let mut m = <Reference as ReferenceStateMachine>::init_state()
        .new_tree(&mut proptest::test_runner::TestRunner::deterministic())
        .unwrap()
        .current();
    let script = [
        RunInput::Start,
        RunInput::PlanReturned {
            output: Arc::new(PlannerOutput::Draft(PlanDraft::default())),
            planner: "m".into(),
            latency_ms: 0,
            usage: None,
            diagnostics: vec![],
        },
        RunInput::DraftValid {
            nodes: 1,
            edges: 0,
            warnings: vec![],
        },
        RunInput::PolicyReplan {
            policy_id: "p".into(),
            trigger: trigger(),
        },
    ];
    let mut seen = BTreeSet::new();
    for input in &script {
        m.step(input);
        seen.insert(m.state);
    }
    assert_eq!(seen.len(), 4);
    assert_eq!(m.state, RunState::Replanning);
}

#[test]
fn generated_sequences_reach_deep_states() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut max_replans = 0;
    let mut paused = 0;
    for _ in 0..64 {
        let mut m = Reference::init_state()
            .new_tree(&mut runner)
            .unwrap()
            .current();
        for _ in 0..60 {
            let input = Reference::transitions(&m)
                .new_tree(&mut runner)
                .unwrap()
                .current();
            m.step(&input);
            paused += usize::from(m.state == RunState::Paused);
        }
        max_replans = max_replans.max(m.replans);
    }
    assert_eq!(
        max_replans, LIMITS.max_replans,
        "some sequences use every replan"
    );
    assert!(paused > 0, "some sequences pause");
}
