//! The edge table: every transition of the run machine, declared once.
//!
//! Each row names its source, input, guard predicate, target, the one event it emits and the
//! action that emits it. The statig handlers in `machine.rs` dispatch through these rows (a
//! state's own rows first, then the `Live` superstate's); [`Automaton`] interprets the same
//! rows flat, as the reference the property tests and `flexrun::conformance` hold the machine
//! to; `docs/ARCHITECTURE.md`'s table and diagram are generated from them
//! (`flexrun docs states`). Guards live in `guard.rs`, actions in `act.rs`, one function each.

use super::FsmError;
use super::data::{ActionFn, Ctx, GuardFn, RunCore};
use super::event::EventKind;
use super::vocab::{InputKind, Limits, RunInput, RunState, Step};
use super::{act, guard};
use crate::ids::{RunId, Timestamp};

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
    /// A given state (entered again when it is the source: its entry action runs).
    State(RunState),
    /// The state the run was in, without re-entering it.
    Same,
}

/// A row's condition: a named predicate over the run's data and the input.
#[derive(Debug, Clone, Copy)]
pub struct Guard {
    /// The predicate's name (`always`, `attempts_left`, …).
    pub name: &'static str,
    /// `Ok` when the row applies, or why not (the refusal reason).
    pub check: GuardFn,
}

/// A row's effect: changes the run's data and emits the row's event.
#[derive(Debug, Clone, Copy)]
pub struct Action {
    /// The action's name.
    pub name: &'static str,
    /// The function.
    pub run: ActionFn,
}

/// One row: `from` on `input`, when `guard` holds, runs `action`, emits `event`, goes `to`.
#[derive(Clone, Copy)]
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
    /// What the edge does.
    pub action: Action,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl Edge {
    /// A stable name: `state.input[guard]` (`live.` for superstate rows).
    pub fn name(&self) -> String {
        let from = match self.from {
            From::State(s) => s.as_str(),
            From::Live => "live",
        };
        format!("{from}.{}[{}]", self.input, self.guard.name)
    }

    /// The target, given the state the row was taken in.
    pub fn target(&self, state: RunState) -> RunState {
        match self.to {
            To::State(s) => s,
            To::Same => state,
        }
    }
}

macro_rules! from {
    (Live) => {
        From::Live
    };
    ($s:ident) => {
        From::State(RunState::$s)
    };
}

macro_rules! to {
    (Same) => {
        To::Same
    };
    ($s:ident) => {
        To::State(RunState::$s)
    };
}

macro_rules! edges {
    ($($from:ident $input:ident [$guard:ident] => $to:ident $event:ident $action:ident;)*) => {
        &[$(Edge {
            from: from!($from),
            input: InputKind::$input,
            guard: Guard { name: stringify!($guard), check: guard::$guard },
            to: to!($to),
            event: EventKind::$event,
            action: Action { name: stringify!($action), run: act::$action },
        }),*]
    };
}

/// Every edge of the run machine. `Done` absorbs every input without an edge; any other
/// pair not listed here, or whose guards all refuse, is rejected with
/// `FsmError::IllegalTransition` and changes nothing.
#[rustfmt::skip]
pub const EDGES: &[Edge] = edges! {
//  from        input           [guard]               => to          event            action
    New         Start           [always]              => Requesting  PlanRequested    start;
    Requesting  PlanReturned    [always]              => Validating  PlanGenerated    plan_generated;
    Requesting  PlannerFailed   [attempts_left]       => Requesting  PlanRequested    retry_planner;
    Requesting  PlannerFailed   [no_attempts_left]    => Done        Complete         planner_gave_up;
    Validating  DraftValid      [initial_plan]        => Executing   PlanAccepted     accept_draft;
    Validating  DeltaValid      [replan]              => Executing   PlanUpdated      update_plan;
    Validating  PlanInvalid     [attempts_left]       => Requesting  PlanRejected     reject_plan;
    Validating  PlanInvalid     [no_attempts_left]    => Done        Complete         plans_exhausted;
    Executing   NodeDispatched  [node_idle]           => Same        NodeStart        start_node;
    Live        NodeSucceeded   [node_in_flight]      => Same        NodeComplete     end_node;
    Live        NodeFailed      [node_in_flight]      => Same        NodeError        end_node;
    Live        OutputInvalid   [node_in_flight]      => Same        ValidationError  end_node;
    Executing   NodeSkipped     [node_exhausted]      => Same        NodeComplete     skip_node;
    Executing   PolicyReplan    [replans_left]        => Replanning  PolicyTriggered  policy_triggered;
    Executing   PolicyReplan    [no_replans_left]     => Done        Complete         replans_exhausted;
    Executing   PolicyPause     [always]              => Paused      PolicyTriggered  policy_triggered;
    Executing   HitlRequested   [always]              => Paused      HitlRequest      ask_human;
    Executing   OperatorPause   [always]              => Paused      RunPaused        pause;
    Executing   AllDone         [nothing_in_flight]   => Done        Complete         complete;
    Replanning  Drained         [nothing_in_flight]   => Requesting  PlanRequested    request_delta;
    Paused      HitlAnswered    [follow_up_continue]  => Executing   HitlResolved     resolve_hitl;
    Paused      HitlAnswered    [follow_up_replan]    => Replanning  HitlResolved     resolve_hitl;
    Paused      HitlAnswered    [fallback_fail]       => Done        Complete         node_gave_up;
    Paused      HitlAnswered    [follow_up_fail]      => Done        Complete         hitl_ends_run;
    Paused      Resume          [no_hitl_pending]     => Executing   RunResumed       resume;
    Live        Fail            [always]              => Done        Complete         fail;
    Live        Cancel          [always]              => Done        Complete         cancel;
};

/// What the table says about an input at one level (a state, or `Live`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// The index in [`EDGES`] of the first row whose guard holds.
    Row(usize),
    /// Rows exist for the input but every guard refused; the first refusal.
    Refused(String),
    /// No row for the input at this level.
    NoRow,
}

/// The row `from` takes on `input`, checking the guards in table order.
pub fn select(from: From, core: &RunCore, input: &RunInput) -> Selection {
    let kind = input.kind();
    let mut refusal = None;
    for (i, edge) in EDGES.iter().enumerate() {
        if edge.from != from || edge.input != kind {
            continue;
        }
        match (edge.guard.check)(core, input) {
            Ok(()) => return Selection::Row(i),
            Err(why) => {
                refusal.get_or_insert(why);
            }
        }
    }
    refusal.map_or(Selection::NoRow, Selection::Refused)
}

/// Why an input without any row is refused.
pub(super) fn no_row_reason(state: RunState) -> &'static str {
    if state == RunState::New {
        "the run has not started"
    } else {
        "input not accepted in this state"
    }
}

/// Takes row `i`: runs its action and checks (in debug builds) that it emitted the row's
/// event and nothing else.
pub(super) fn take(i: usize, core: &mut RunCore, ctx: &mut Ctx, input: &RunInput) {
    let edge = &EDGES[i];
    ctx.row = Some(i);
    (edge.action.run)(core, ctx, input);
    debug_assert!(
        matches!(&ctx.events[..], [e] if e.kind() == edge.event),
        "row {} must emit exactly one `{}`, emitted {:?}",
        edge.name(),
        edge.event,
        ctx.events.iter().map(|e| e.kind()).collect::<Vec<_>>()
    );
}

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

/// The reference automaton: the same rows interpreted flat, without statig's hierarchy.
///
/// Same contract as [`super::RunMachine::apply`]: one event per accepted input, nothing
/// changed by a refused one, `Done` absorbs everything.
#[derive(Debug, Clone, PartialEq)]
pub struct Automaton {
    state: RunState,
    core: RunCore,
}

impl Automaton {
    /// A new run, in [`RunState::New`].
    pub fn new(run_id: RunId, limits: Limits) -> Self {
        Self {
            state: RunState::New,
            core: RunCore::new(run_id, limits),
        }
    }

    /// The current state.
    pub fn state(&self) -> RunState {
        self.state
    }

    /// The run's data.
    pub fn core(&self) -> &RunCore {
        &self.core
    }

    /// Feeds one input.
    ///
    /// # Errors
    /// [`FsmError::IllegalTransition`] when no row of the state (or of `Live`) applies.
    pub fn apply(&mut self, input: &RunInput, now: Timestamp) -> Result<Step, FsmError> {
        if self.state == RunState::Done {
            return Ok(Step::default());
        }
        let mut selection = select(From::State(self.state), &self.core, input);
        if selection == Selection::NoRow && self.state.is_live() {
            selection = select(From::Live, &self.core, input);
        }
        let illegal = |reason: String| FsmError::IllegalTransition {
            state: self.state,
            input: input.kind(),
            reason,
        };
        let i = match selection {
            Selection::Row(i) => i,
            Selection::Refused(why) => return Err(illegal(why)),
            Selection::NoRow => return Err(illegal(no_row_reason(self.state).to_owned())),
        };
        let mut ctx = Ctx::at(now, false);
        take(i, &mut self.core, &mut ctx, input);
        if let To::State(s) = EDGES[i].to {
            self.state = s;
            self.core.enter(s, &mut ctx);
        }
        Ok(Step {
            events: ctx.events,
            commands: ctx.commands,
            row: ctx.row,
        })
    }
}

fn state_label(from: From) -> &'static str {
    match from {
        From::State(RunState::New) => "[*]",
        From::State(RunState::Requesting) => "Requesting",
        From::State(RunState::Validating) => "Validating",
        From::State(RunState::Executing) => "Executing",
        From::State(RunState::Replanning) => "Replanning",
        From::State(RunState::Paused) => "Paused",
        From::State(RunState::Done) => "Done",
        From::Live => "Live",
    }
}

fn guard_label(guard: &Guard) -> String {
    guard.name.replace('_', " ")
}

/// A Mermaid `stateDiagram-v2` generated from [`EDGES`].
pub fn mermaid_state_diagram() -> String {
    let mut out = String::from("stateDiagram-v2\n    state Live {\n");
    for s in RunState::ALL.iter().filter(|s| s.is_live()) {
        out.push_str(&format!("        {}\n", state_label(From::State(*s))));
    }
    out.push_str("    }\n");
    for e in EDGES {
        let from = state_label(e.from);
        let to = match e.to {
            To::State(s) => state_label(From::State(s)),
            To::Same => from,
        };
        let guard = match e.guard.name {
            "always" => String::new(),
            _ => format!(" [{}]", guard_label(&e.guard)),
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
    let mut out =
        String::from("| from | input | when | to | event | action |\n|---|---|---|---|---|---|\n");
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
            "| {from} | `{}` | {} | {to} | `{}` | `{}` |\n",
            e.input,
            guard_label(&e.guard),
            e.event,
            e.action.name
        ));
    }
    out
}

/// The generated section of `docs/ARCHITECTURE.md`: the Markdown table, then the diagram.
pub fn docs_section() -> String {
    format!(
        "{}\n```mermaid\n{}```\n",
        markdown_table(),
        mermaid_state_diagram()
    )
}
