//! The edge table: every transition of the run machine, listed once.
//!
//! The machine in `machine.rs` *defines* the transitions; this table *lists* them. A test
//! drives every state × input pair through the real machine and compares with this table,
//! and `docs/ARCHITECTURE.md`'s state diagram is generated from it (`flexrun docs states`).

use super::event::EventKind;
use super::machine::{InputKind, RunState};

/// Where a row applies: one state, or every state under `Live`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// One state.
    State(RunState),
    /// Any of Requesting, Validating, Executing, Replanning, Paused.
    Live,
}

/// Where a row leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// A given state.
    State(RunState),
    /// The state the run was in (a self-loop).
    Same,
}

/// The condition under which a row applies, when an input has several outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Always.
    Always,
    /// Planner attempts remain (and the error is retryable, for planner failures).
    AttemptsLeft,
    /// Planner attempts are used up.
    AttemptsExhausted,
    /// Planner attempts are used up, or the planner error is fatal.
    ExhaustedOrFatal,
    /// The node named by the input is in flight.
    NodeInFlight,
    /// Replans remain.
    ReplansLeft,
    /// Replans are used up.
    ReplansExhausted,
    /// No node is in flight.
    NothingInFlight,
    /// The answer's follow-up is `continue`.
    FollowUpContinue,
    /// The answer's follow-up is `replan` and replans remain.
    FollowUpReplan,
    /// The answer's follow-up is `fail`, or `replan` with replans used up.
    FollowUpFail,
    /// No HITL request is pending (an operator or policy pause).
    NoHitlPending,
    /// The run plans its first version.
    InitialPlan,
    /// The run plans a change.
    Replan,
}

/// One row: `from` on `input` (when `guard`) goes `to`, emitting `event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// Source.
    pub from: From,
    /// Input.
    pub input: InputKind,
    /// Condition.
    pub guard: Guard,
    /// Target.
    pub to: To,
    /// The one event the edge emits.
    pub event: EventKind,
}

const fn edge(from: From, input: InputKind, guard: Guard, to: To, event: EventKind) -> Edge {
    Edge {
        from,
        input,
        guard,
        to,
        event,
    }
}

use EventKind as E;
use Guard as G;
use InputKind as I;
use RunState as S;

/// Every edge of the run machine. `Done` absorbs every input without an edge; any pair
/// not listed here is rejected with `FsmError::IllegalTransition`.
pub const EDGES: &[Edge] = &[
    edge(
        From::State(S::New),
        I::Start,
        G::Always,
        To::State(S::Requesting),
        E::PlanRequested,
    ),
    edge(
        From::State(S::Requesting),
        I::PlanReturned,
        G::Always,
        To::State(S::Validating),
        E::PlanGenerated,
    ),
    edge(
        From::State(S::Requesting),
        I::PlannerFailed,
        G::AttemptsLeft,
        To::State(S::Requesting),
        E::PlanRequested,
    ),
    edge(
        From::State(S::Requesting),
        I::PlannerFailed,
        G::ExhaustedOrFatal,
        To::State(S::Done),
        E::Complete,
    ),
    edge(
        From::State(S::Validating),
        I::DraftValid,
        G::InitialPlan,
        To::State(S::Executing),
        E::PlanAccepted,
    ),
    edge(
        From::State(S::Validating),
        I::DeltaValid,
        G::Replan,
        To::State(S::Executing),
        E::PlanUpdated,
    ),
    edge(
        From::State(S::Validating),
        I::PlanInvalid,
        G::AttemptsLeft,
        To::State(S::Requesting),
        E::PlanRejected,
    ),
    edge(
        From::State(S::Validating),
        I::PlanInvalid,
        G::AttemptsExhausted,
        To::State(S::Done),
        E::Complete,
    ),
    edge(
        From::State(S::Executing),
        I::NodeDispatched,
        G::Always,
        To::Same,
        E::NodeStart,
    ),
    edge(
        From::Live,
        I::NodeSucceeded,
        G::NodeInFlight,
        To::Same,
        E::NodeComplete,
    ),
    edge(
        From::Live,
        I::NodeFailed,
        G::NodeInFlight,
        To::Same,
        E::NodeError,
    ),
    edge(
        From::Live,
        I::OutputInvalid,
        G::NodeInFlight,
        To::Same,
        E::ValidationError,
    ),
    edge(
        From::State(S::Executing),
        I::PolicyReplan,
        G::ReplansLeft,
        To::State(S::Replanning),
        E::PolicyTriggered,
    ),
    edge(
        From::State(S::Executing),
        I::PolicyReplan,
        G::ReplansExhausted,
        To::State(S::Done),
        E::Complete,
    ),
    edge(
        From::State(S::Executing),
        I::PolicyPause,
        G::Always,
        To::State(S::Paused),
        E::PolicyTriggered,
    ),
    edge(
        From::State(S::Executing),
        I::HitlRequested,
        G::Always,
        To::State(S::Paused),
        E::HitlRequest,
    ),
    edge(
        From::State(S::Executing),
        I::OperatorPause,
        G::Always,
        To::State(S::Paused),
        E::RunPaused,
    ),
    edge(
        From::State(S::Replanning),
        I::Drained,
        G::NothingInFlight,
        To::State(S::Requesting),
        E::PlanRequested,
    ),
    edge(
        From::State(S::Paused),
        I::HitlAnswered,
        G::FollowUpContinue,
        To::State(S::Executing),
        E::HitlResolved,
    ),
    edge(
        From::State(S::Paused),
        I::HitlAnswered,
        G::FollowUpReplan,
        To::State(S::Replanning),
        E::HitlResolved,
    ),
    edge(
        From::State(S::Paused),
        I::HitlAnswered,
        G::FollowUpFail,
        To::State(S::Done),
        E::Complete,
    ),
    edge(
        From::State(S::Paused),
        I::Resume,
        G::NoHitlPending,
        To::State(S::Executing),
        E::RunResumed,
    ),
    edge(
        From::State(S::Executing),
        I::AllDone,
        G::NothingInFlight,
        To::State(S::Done),
        E::Complete,
    ),
    edge(
        From::Live,
        I::Fail,
        G::Always,
        To::State(S::Done),
        E::Complete,
    ),
    edge(
        From::Live,
        I::Cancel,
        G::Always,
        To::State(S::Done),
        E::Complete,
    ),
];

/// The rows that apply to `state` on `input`: rows of the state itself first, then `Live` rows.
pub fn rows(state: RunState, input: InputKind) -> Vec<&'static Edge> {
    let own: Vec<&Edge> = EDGES
        .iter()
        .filter(|e| e.from == From::State(state) && e.input == input)
        .collect();
    if !own.is_empty() {
        return own;
    }
    EDGES
        .iter()
        .filter(|e| e.from == From::Live && state.is_live() && e.input == input)
        .collect()
}

fn state_label(from: From) -> &'static str {
    match from {
        From::State(s) => match s {
            RunState::New => "[*]",
            RunState::Requesting => "Requesting",
            RunState::Validating => "Validating",
            RunState::Executing => "Executing",
            RunState::Replanning => "Replanning",
            RunState::Paused => "Paused",
            RunState::Done => "Done",
        },
        From::Live => "Live",
    }
}

/// A Mermaid `stateDiagram-v2` generated from [`EDGES`].
pub fn mermaid_state_diagram() -> String {
    let mut out = String::from("stateDiagram-v2\n");
    out.push_str("    state Live {\n");
    for s in [
        S::Requesting,
        S::Validating,
        S::Executing,
        S::Replanning,
        S::Paused,
    ] {
        out.push_str(&format!("        {}\n", state_label(From::State(s))));
    }
    out.push_str("    }\n");
    for e in EDGES {
        let from = state_label(e.from);
        let to = match e.to {
            To::State(s) => state_label(From::State(s)),
            To::Same => from,
        };
        let guard = match e.guard {
            G::Always => String::new(),
            other => format!(" [{}]", guard_label(other)),
        };
        out.push_str(&format!(
            "    {from} --> {to}: {}{guard} / {}\n",
            e.input, e.event
        ));
    }
    out.push_str("    Done --> [*]\n");
    out
}

/// A Markdown table generated from [`EDGES`].
pub fn markdown_table() -> String {
    let mut out = String::from("| from | input | when | to | event |\n|---|---|---|---|---|\n");
    for e in EDGES {
        let from = match e.from {
            From::State(RunState::New) => "(new run)",
            other => state_label(other),
        };
        let to = match e.to {
            To::State(s) => state_label(From::State(s)),
            To::Same => "(same)",
        };
        out.push_str(&format!(
            "| {from} | `{}` | {} | {to} | `{}` |\n",
            e.input,
            guard_label(e.guard),
            e.event
        ));
    }
    out
}

fn guard_label(guard: Guard) -> &'static str {
    match guard {
        G::Always => "always",
        G::AttemptsLeft => "attempts left",
        G::AttemptsExhausted => "attempts exhausted",
        G::ExhaustedOrFatal => "attempts exhausted or fatal error",
        G::NodeInFlight => "node in flight",
        G::ReplansLeft => "replans left",
        G::ReplansExhausted => "replans exhausted",
        G::NothingInFlight => "nothing in flight",
        G::FollowUpContinue => "follow-up continue",
        G::FollowUpReplan => "follow-up replan, replans left",
        G::FollowUpFail => "follow-up fail, or replan with none left",
        G::NoHitlPending => "no hitl pending",
        G::InitialPlan => "initial plan",
        G::Replan => "replan",
    }
}

/// The generated section of `docs/ARCHITECTURE.md`: the Markdown table, then the diagram.
pub fn docs_section() -> String {
    format!(
        "{}\n```mermaid\n{}```\n",
        markdown_table(),
        mermaid_state_diagram()
    )
}
