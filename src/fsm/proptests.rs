//! Property test: random input sequences, the statig machine against the reference model
//! of `crate::testing::machine` (the flat table automaton).
//!
//! After every step: the machine accepts, absorbs or refuses exactly as the reference
//! automaton does, takes the same row, emits the same events and commands and ends with the
//! same data; the row is one for that state, input and target; a refusal changes nothing.
//! After every sequence: the log keeps the rules of the event contract the machine alone
//! guarantees (`crate::testing::MACHINE_RULES`) and replaying it rebuilds the same machine.

use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

use super::table::{EDGES, From};
use super::*;
use crate::conformance::Options;
use crate::graph::PlanDraft;
use crate::testing::machine::{MODEL_NOW, REQUEST_ID, delta_valid, model_run, plan_returned};
use crate::testing::{MACHINE_RULES, ModelState, RunModel, Verdict, check_stream};

/// The system under test: the real machine plus the event log it produced.
pub struct Sut {
    machine: RunMachine,
    limits: Limits,
    log: Vec<RunEvent>,
}

/// The row the machine took leads from `from` on `input` to where it went, emitting what it
/// emitted.
fn on_the_table(from: RunState, input: &RunInput, to: RunState, step: &Step) {
    let Some(row) = step.row else {
        panic!("{input:?} in {from}: accepted without a row");
    };
    let edge = &EDGES[row];
    let kinds: Vec<EventKind> = step.events.iter().map(RunEvent::kind).collect();
    assert_eq!(kinds, [edge.event], "{edge:?}: one event per edge");
    assert_eq!(edge.input, input.kind(), "{edge:?}");
    assert!(
        matches!(edge.from, From::Live if from.is_live()) || edge.from == From::State(from),
        "{edge:?} taken in {from}"
    );
    assert_eq!(edge.target(from), to, "{edge:?}");
}

impl StateMachineTest for Sut {
    type SystemUnderTest = Self;
    type Reference = RunModel;

    fn init_test(model: &ModelState) -> Self {
        let limits = model.run().limits();
        Sut {
            machine: RunMachine::new(model_run(), limits),
            limits,
            log: Vec::new(),
        }
    }

    fn apply(mut sut: Self, model: &ModelState, input: RunInput) -> Self {
        let from = sut.machine.state();
        let seq = sut.machine.seq();
        let verdict = model.verdict().expect("the model applied the input");
        match (sut.machine.apply(&input, MODEL_NOW), verdict) {
            (Ok(step), Verdict::Accepted(expected)) => {
                assert_eq!(&step, expected, "{input:?} in {from}");
                on_the_table(from, &input, sut.machine.state(), &step);
                sut.log.extend(step.events);
            }
            (Ok(step), Verdict::Absorbed) => {
                assert_eq!(from, RunState::Done, "only Done absorbs");
                assert!(step.events.is_empty() && step.commands.is_empty());
            }
            (Err(e), Verdict::Refused(expected)) => {
                assert_eq!(&e, expected);
                assert_eq!(sut.machine.seq(), seq, "a rejection changes nothing");
            }
            (got, expected) => panic!("{input:?} in {from}: machine {got:?}, model {expected:?}"),
        }
        let reference = model.run();
        assert_eq!(sut.machine.state(), reference.state(), "after {input:?}");
        assert_eq!(sut.machine.core(), reference.core(), "after {input:?}");
        sut
    }

    fn check_invariants(sut: &Self, _model: &ModelState) {
        let contract = Options::live()
            .with_limits(sut.limits)
            .for_run(sut.machine.run_id());
        if let Err(report) = check_stream(&sut.log, &contract) {
            let broken: Vec<_> = report
                .violations()
                .iter()
                .filter(|v| MACHINE_RULES.contains(&v.rule))
                .collect();
            assert!(broken.is_empty(), "{broken:#?}\n{:#?}", sut.log);
        }
        let replayed = RunMachine::restore(sut.machine.run_id(), sut.limits, &sut.log)
            .expect("the log replays");
        assert_eq!(replayed.state(), sut.machine.state());
        assert_eq!(
            replayed.core(),
            sut.machine.core(),
            "replaying the log rebuilds the machine"
        );
    }
}

prop_state_machine! {
    #![proptest_config(Config { cases: 256, failure_persistence: None, ..Config::default() })]
    #[test]
    fn run_machine_matches_the_reference_model(sequential 1..60 => Sut);
}

#[test]
fn the_model_reaches_every_state() {
    let mut m = ModelState::new(Limits {
        max_attempts: 2,
        max_replans: 1,
    });
    let script = [
        RunInput::Start,
        RunInput::PlanReturned {
            output: Arc::new(PlannerOutput::Draft(PlanDraft::default())),
            planner: "m".into(),
            latency_ms: 0,
            usage: None,
            diagnostics: vec![],
            cost: None,
            model: None,
        },
        RunInput::DraftValid {
            nodes: 1,
            edges: 0,
            warnings: vec![],
        },
        RunInput::NodeDispatched {
            node_id: "a".into(),
            capability_id: "cap".into(),
            attempt: 1,
        },
        RunInput::HitlRequested {
            request_id: REQUEST_ID.into(),
            kind: HitlKind::Approval,
            question: "q".into(),
            policy_id: None,
            node_id: None,
            options: vec![],
            contract_summary: None,
            on_approve: FollowUp::Continue,
            on_reject: FollowUp::Replan,
        },
        RunInput::HitlAnswered {
            request_id: REQUEST_ID.into(),
            decision: HitlDecision::Reject,
            text: None,
            responder: None,
        },
        RunInput::NodeSucceeded {
            node_id: "a".into(),
            output: serde_json::Map::new(),
            duration_us: 0,
            spend: None,
        },
        RunInput::Drained,
        plan_returned(false, 1),
        delta_valid(1),
        RunInput::AllDone {
            output: serde_json::Value::Null,
        },
    ];
    let mut seen = BTreeSet::from([m.run().state()]);
    for input in &script {
        let verdict = m.step(input);
        assert!(
            matches!(verdict, Verdict::Accepted(step) if step.events.len() == 1),
            "{input:?}: {verdict:?}"
        );
        seen.insert(m.run().state());
    }
    assert_eq!(seen.len(), RunState::ALL.len(), "{seen:?}");
    assert_eq!(m.run().plan_version(), 2);
    assert_eq!(m.run().replans(), 1);
    assert_eq!(m.run().state(), RunState::Done);
    assert_eq!(m.run().outcome(), Some(RunOutcome::Completed));
    assert_eq!(m.step(&RunInput::Start), &Verdict::Absorbed, "Done absorbs");
}

#[test]
fn generated_sequences_reach_deep_states() {
    let mut runner = TestRunner::deterministic();
    let mut states = BTreeSet::new();
    let mut replans_used_up = 0;
    let (mut refused, mut absorbed, mut paused_on_hitl) = (0, 0, 0);
    for _ in 0..64 {
        let mut m = RunModel::init_state()
            .new_tree(&mut runner)
            .unwrap()
            .current();
        states.insert(m.run().state());
        for _ in 0..60 {
            let input = RunModel::transitions(&m)
                .new_tree(&mut runner)
                .unwrap()
                .current();
            match m.step(&input) {
                Verdict::Refused(_) => refused += 1,
                Verdict::Absorbed => absorbed += 1,
                Verdict::Accepted(_) => {}
            }
            let run = m.run();
            states.insert(run.state());
            paused_on_hitl += usize::from(run.pending_hitl().is_some());
        }
        let limits = m.run().limits();
        replans_used_up += usize::from(limits.max_replans == 2 && m.run().replans() == 2);
    }
    assert_eq!(states.len(), RunState::ALL.len(), "every state: {states:?}");
    assert!(replans_used_up > 0, "some sequences use every replan");
    assert!(paused_on_hitl > 0, "some sequences wait on a human");
    assert!(
        refused > 0 && absorbed > 0,
        "{refused} refused, {absorbed} absorbed"
    );
}
