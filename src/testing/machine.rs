//! Machine level: random [`RunInput`]s and a reference model of the run machine.
//!
//! [`RunModel`] is a [`ReferenceStateMachine`] whose state ([`ModelState`]) holds a
//! [`ReferenceRun`]: applying an input applies it to the reference automaton and keeps its
//! [`Verdict`]. A `StateMachineTest` over your own wrapper of the run machine compares each
//! of its steps with [`ModelState::verdict`] and checks its log with
//! [`check_stream`](super::check_stream). The reference is the flat table interpreter
//! ([`Automaton`](super::Automaton)), so the statig machine is checked against it too.
//!
//! Inputs name nodes from [`NODES`] and HITL requests [`REQUEST_ID`] (or a stale id).

use std::sync::Arc;

use proptest::prelude::*;
use proptest::strategy::Union;
use proptest_state_machine::ReferenceStateMachine;
use serde_json::{Map, Value};

use super::reference::ReferenceRun;
use crate::diagnostics::{Diagnostic, DiagnosticCode};
use crate::fsm::{
    FollowUp, FsmError, HitlDecision, HitlKind, Limits, PlannerOutput, Purpose, RunError, RunInput,
    RunState, Step, Trigger, TriggerSource,
};
use crate::graph::{PlanDelta, PlanDiff, PlanDraft};
use crate::ids::{RunId, Timestamp};

/// The node ids inputs name.
pub const NODES: &[&str] = &["a", "b", "c"];

/// The id of the HITL requests inputs raise (and answer).
pub const REQUEST_ID: &str = "h";

/// The time every modelled input arrives at; a system under test applies inputs at it too,
/// so its events equal the reference's.
pub const MODEL_NOW: Timestamp = Timestamp(1_700_000_000_000);

/// The id of the modelled run.
pub fn model_run() -> RunId {
    RunId::from_bytes([7; 16])
}

/// What the reference automaton did with the last input.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Accepted: the row taken, its one event and the commands for the driver.
    Accepted(Step),
    /// Taken without effect (`Done` absorbs every input).
    Absorbed,
    /// Refused: the state does not accept it, and nothing changed.
    Refused(FsmError),
}

/// The model's state: the reference run and the verdict on the last input.
#[derive(Debug, Clone)]
pub struct ModelState {
    run: ReferenceRun,
    verdict: Option<Verdict>,
}

impl ModelState {
    /// A run of [`model_run`] before `start`, under `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            run: ReferenceRun::new(model_run(), limits),
            verdict: None,
        }
    }

    /// The reference run.
    pub fn run(&self) -> &ReferenceRun {
        &self.run
    }

    /// What the last applied input did (`None` before the first).
    pub fn verdict(&self) -> Option<&Verdict> {
        self.verdict.as_ref()
    }

    /// Applies `input` at [`MODEL_NOW`] and keeps the verdict.
    pub fn step(&mut self, input: &RunInput) -> &Verdict {
        let verdict = match self.run.apply(input, MODEL_NOW) {
            Ok(step) if step.row.is_none() => Verdict::Absorbed,
            Ok(step) => Verdict::Accepted(step),
            Err(e) => Verdict::Refused(e),
        };
        self.verdict.insert(verdict)
    }
}

/// The reference state machine: random limits, then inputs biased towards what the
/// state accepts ([`likely_input`], nine in ten) with any input mixed in ([`any_input`]).
#[derive(Debug, Clone, Copy)]
pub struct RunModel;

impl ReferenceStateMachine for RunModel {
    type State = ModelState;
    type Transition = RunInput;

    fn init_state() -> BoxedStrategy<ModelState> {
        limits().prop_map(ModelState::new).boxed()
    }

    fn transitions(state: &ModelState) -> BoxedStrategy<RunInput> {
        let version = state.run().plan_version();
        let any = any_input().prop_map(move |input| as_driver_fills(input, version));
        prop_oneof![9 => likely_input(state), 1 => any].boxed()
    }

    fn apply(mut state: ModelState, input: &RunInput) -> ModelState {
        state.step(input);
        state
    }
}

/// Small limits, so sequences of a few dozen inputs exhaust them: 1 to 3 planner attempts,
/// 0 to 2 replans.
pub fn limits() -> BoxedStrategy<Limits> {
    (1..=3u32, 0..=2u32)
        .prop_map(|(max_attempts, max_replans)| Limits {
            max_attempts,
            max_replans,
        })
        .boxed()
}

/// Continue, replan or fail.
pub fn follow_up() -> BoxedStrategy<FollowUp> {
    prop_oneof![
        Just(FollowUp::Continue),
        Just(FollowUp::Replan),
        Just(FollowUp::Fail)
    ]
    .boxed()
}

/// A policy trigger.
pub fn trigger() -> BoxedStrategy<Trigger> {
    prop_oneof![
        Just(TriggerSource::Policy),
        Just(TriggerSource::Signal),
        Just(TriggerSource::Operator),
    ]
    .prop_map(|source| Trigger {
        source,
        policy_id: Some("p".into()),
        node_id: None,
        reason: "r".into(),
    })
    .boxed()
}

/// One of [`NODES`].
pub fn node_id() -> BoxedStrategy<String> {
    proptest::sample::select(NODES)
        .prop_map(str::to_owned)
        .boxed()
}

/// A planner answer: a draft, or a delta against `base_version`.
pub fn plan_returned(draft: bool, base_version: u32) -> RunInput {
    let output = if draft {
        PlannerOutput::Draft(PlanDraft::default())
    } else {
        PlannerOutput::Delta(PlanDelta {
            base_version,
            rationale: String::new(),
            operations: vec![],
        })
    };
    RunInput::PlanReturned {
        output: Arc::new(output),
        planner: "model".into(),
        latency_ms: 0,
        usage: None,
        model: None,
        cost: None,
        diagnostics: vec![],
    }
}

fn planner_failed() -> BoxedStrategy<RunInput> {
    any::<bool>()
        .prop_map(|retryable| RunInput::PlannerFailed {
            error: "e".into(),
            retryable,
        })
        .boxed()
}

fn plan_invalid() -> RunInput {
    RunInput::PlanInvalid {
        diagnostics: vec![Diagnostic::error(DiagnosticCode::Cycle, "c")],
    }
}

fn draft_valid() -> RunInput {
    RunInput::DraftValid {
        nodes: 3,
        edges: 2,
        warnings: vec![],
    }
}

/// A merged delta taking `version` to the next.
pub fn delta_valid(version: u32) -> RunInput {
    RunInput::DeltaValid {
        diff: diff_from(version),
        warnings: vec![],
    }
}

fn diff_from(version: u32) -> PlanDiff {
    PlanDiff {
        from_version: version,
        to_version: version + 1,
        ..PlanDiff::default()
    }
}

/// `input` with the fields a driver fills from the run's data rather than chooses: the
/// versions of a merged delta's diff (from the current version to the next).
pub fn as_driver_fills(input: RunInput, plan_version: u32) -> RunInput {
    match input {
        RunInput::DeltaValid { warnings, .. } => RunInput::DeltaValid {
            diff: diff_from(plan_version),
            warnings,
        },
        other => other,
    }
}

fn dispatched(node_id: String) -> RunInput {
    RunInput::NodeDispatched {
        node_id,
        capability_id: "cap".into(),
        attempt: 1,
    }
}

/// A node result for `node`: success (most often), failure or invalid output.
fn node_result(node: BoxedStrategy<String>) -> BoxedStrategy<RunInput> {
    (node, 0..6u8, any::<bool>())
        .prop_map(|(node_id, pick, will_retry)| match pick {
            0 => RunInput::NodeFailed {
                node_id,
                error: RunError::new("E", "e"),
                will_retry,
                spend: None,
                retry_at: None,
            },
            1 => RunInput::OutputInvalid {
                node_id,
                errors: vec!["x".into()],
                will_retry,
                spend: None,
                retry_at: None,
            },
            _ => RunInput::NodeSucceeded {
                node_id,
                output: Map::new(),
                duration_us: 0,
                spend: None,
            },
        })
        .boxed()
}

/// A HITL request with random follow-ups.
pub fn hitl_requested() -> BoxedStrategy<RunInput> {
    (follow_up(), follow_up(), any::<bool>())
        .prop_map(
            |(on_approve, on_reject, approval)| RunInput::HitlRequested {
                request_id: REQUEST_ID.into(),
                kind: if approval {
                    HitlKind::Approval
                } else {
                    HitlKind::Clarify
                },
                question: "q".into(),
                policy_id: None,
                node_id: None,
                options: vec![],
                contract_summary: None,
                on_approve,
                on_reject,
            },
        )
        .boxed()
}

/// An answer to `request_id`: approve, reject or free text.
pub fn hitl_answered(request_id: String) -> BoxedStrategy<RunInput> {
    prop_oneof![
        Just(HitlDecision::Approve),
        Just(HitlDecision::Reject),
        Just(HitlDecision::Freeform)
    ]
    .prop_map(move |decision| RunInput::HitlAnswered {
        request_id: request_id.clone(),
        decision,
        text: (decision == HitlDecision::Freeform).then(|| "t".to_owned()),
        responder: None,
    })
    .boxed()
}

/// Any input of any kind, legal or not in whatever state.
pub fn any_input() -> BoxedStrategy<RunInput> {
    let answered = prop_oneof![Just(REQUEST_ID.to_owned()), Just("zz".to_owned())]
        .prop_flat_map(hitl_answered);
    prop_oneof![
        Just(RunInput::Start),
        (any::<bool>(), 0..3u32).prop_map(|(draft, base)| plan_returned(draft, base)),
        planner_failed(),
        Just(draft_valid()),
        (0..3u32).prop_map(delta_valid),
        Just(plan_invalid()),
        node_id().prop_map(dispatched),
        node_result(node_id()),
        trigger().prop_map(|trigger| RunInput::PolicyReplan {
            policy_id: "p".into(),
            trigger
        }),
        trigger().prop_map(|trigger| RunInput::PolicyPause {
            policy_id: "p".into(),
            trigger
        }),
        hitl_requested(),
        Just(RunInput::OperatorPause { reason: "o".into() }),
        Just(RunInput::Drained),
        answered,
        Just(RunInput::Resume {
            reason: "r".into(),
            budgets: Default::default(),
        }),
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

/// Inputs a run in `state` would plausibly receive from its driver, mostly legal ones, so
/// generated sequences reach deep states (replans, pauses, retries, exhausted limits).
pub fn likely_input(state: &ModelState) -> BoxedStrategy<RunInput> {
    let run = state.run();
    let flying: Vec<String> = run.in_flight().keys().cloned().collect();
    let idle: Vec<String> = NODES
        .iter()
        .filter(|n| !run.in_flight().contains_key(**n))
        .map(|n| (*n).to_owned())
        .collect();
    let mut options: Vec<(u32, BoxedStrategy<RunInput>)> = Vec::new();
    match run.state() {
        RunState::New => options.push((1, Just(RunInput::Start).boxed())),
        RunState::Requesting => {
            let draft = run.purpose() == Purpose::Initial;
            options.push((3, Just(plan_returned(draft, run.plan_version())).boxed()));
            options.push((1, planner_failed()));
        }
        RunState::Validating => {
            let valid = match run.purpose() {
                Purpose::Initial => draft_valid(),
                Purpose::Replan => delta_valid(run.plan_version()),
            };
            options.push((3, Just(valid).boxed()));
            options.push((1, Just(plan_invalid()).boxed()));
        }
        RunState::Executing => {
            if !idle.is_empty() {
                let idle = proptest::sample::select(idle).prop_map(dispatched);
                options.push((4, idle.boxed()));
            }
            let replan = trigger().prop_map(|trigger| RunInput::PolicyReplan {
                policy_id: "p".into(),
                trigger,
            });
            let pause = trigger().prop_map(|trigger| RunInput::PolicyPause {
                policy_id: "p".into(),
                trigger,
            });
            options.push((2, replan.boxed()));
            options.push((1, pause.boxed()));
            options.push((2, hitl_requested()));
            options.push((
                1,
                Just(RunInput::OperatorPause { reason: "o".into() }).boxed(),
            ));
            let output = Value::Null;
            options.push((1, Just(RunInput::AllDone { output }).boxed()));
        }
        RunState::Replanning => options.push((2, Just(RunInput::Drained).boxed())),
        RunState::Paused => match run.pending_hitl() {
            Some(pending) => options.push((3, hitl_answered(pending.request_id.clone()))),
            None => options.push((
                3,
                Just(RunInput::Resume {
                    reason: "r".into(),
                    budgets: Default::default(),
                })
                .boxed(),
            )),
        },
        RunState::Done => options.push((1, any_input())),
    }
    if !flying.is_empty() {
        let node = proptest::sample::select(flying).boxed();
        options.push((4, node_result(node)));
    }
    Union::new_weighted(options).boxed()
}
