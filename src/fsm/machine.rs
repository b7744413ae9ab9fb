//! The hierarchical run machine: statig states under a `Live` superstate, dispatching
//! through the rows of [`super::table::EDGES`].
//!
//! Sans-IO: [`RunMachine::apply`] takes one [`RunInput`] (with the time it arrived) and
//! returns the events to record and the commands the driver must perform. Nothing here
//! reads a clock, touches the store or spawns work.

use std::collections::BTreeMap;

use statig::blocking::*;

use super::FsmError;
use super::data::{Ctx, RunCore};
use super::event::{RunOutcome, Trigger};
use super::table::{self, EDGES, From, Selection, To};
use super::vocab::{
    Limits, PendingHitl, PendingOutput, PlanCall, Purpose, RunInput, RunState, Step,
};
use crate::ids::{RunId, Timestamp};

fn reject(ctx: &mut Ctx, why: impl Into<String>) -> Outcome<State> {
    ctx.rejected = Some(why.into());
    Handled
}

impl RunCore {
    /// A state's handler: its own rows; without one, the superstate (`Live`) decides.
    fn route(&mut self, state: RunState, ctx: &mut Ctx, input: &RunInput) -> Outcome<State> {
        match table::select(From::State(state), self, input) {
            Selection::Row(i) => self.take_row(i, ctx, input),
            Selection::Refused(why) => reject(ctx, why),
            Selection::NoRow if state.is_live() => Super,
            Selection::NoRow => reject(ctx, table::no_row_reason(state)),
        }
    }

    fn take_row(&mut self, i: usize, ctx: &mut Ctx, input: &RunInput) -> Outcome<State> {
        table::take(i, self, ctx, input);
        match EDGES[i].to {
            To::Same => Handled,
            To::State(s) => Transition(state_of(s)),
        }
    }
}

#[state_machine(
    initial = "State::new_run()",
    event_identifier = "input",
    state(derive(Debug, Clone, PartialEq, Eq)),
    superstate(derive(Debug))
)]
impl RunCore {
    /// Before `start`.
    #[state]
    fn new_run(&mut self, context: &mut Ctx, input: &RunInput) -> Outcome<State> {
        self.route(RunState::New, context, input)
    }

    /// Every non-terminal state: node results, cancel and fatal errors.
    #[superstate]
    fn live(&mut self, context: &mut Ctx, input: &RunInput) -> Outcome<State> {
        match table::select(From::Live, self, input) {
            Selection::Row(i) => self.take_row(i, context, input),
            Selection::Refused(why) => reject(context, why),
            Selection::NoRow => reject(context, table::no_row_reason(RunState::Executing)),
        }
    }

    /// A planner call is in flight.
    #[state(superstate = "live", entry_action = "enter_requesting")]
    fn requesting(&mut self, context: &mut Ctx, input: &RunInput) -> Outcome<State> {
        self.route(RunState::Requesting, context, input)
    }

    /// A draft or delta is being checked.
    #[state(superstate = "live", entry_action = "enter_validating")]
    fn validating(&mut self, context: &mut Ctx, input: &RunInput) -> Outcome<State> {
        self.route(RunState::Validating, context, input)
    }

    /// Ready nodes are dispatched.
    #[state(superstate = "live")]
    fn executing(&mut self, context: &mut Ctx, input: &RunInput) -> Outcome<State> {
        self.route(RunState::Executing, context, input)
    }

    /// Dispatch stopped; waiting for in-flight nodes before asking for a delta.
    #[state(superstate = "live")]
    fn replanning(&mut self, context: &mut Ctx, input: &RunInput) -> Outcome<State> {
        self.route(RunState::Replanning, context, input)
    }

    /// Waiting for a human answer or an operator resume.
    #[state(superstate = "live")]
    fn paused(&mut self, context: &mut Ctx, input: &RunInput) -> Outcome<State> {
        self.route(RunState::Paused, context, input)
    }

    /// Terminal: absorbs every input without an event.
    #[state(entry_action = "enter_done")]
    fn done(context: &mut Ctx, input: &RunInput) -> Outcome<State> {
        let _ = input;
        context.absorbed = true;
        Handled
    }

    #[action]
    fn enter_requesting(&mut self, context: &mut Ctx) {
        self.enter(RunState::Requesting, context);
    }

    #[action]
    fn enter_validating(&mut self, context: &mut Ctx) {
        self.enter(RunState::Validating, context);
    }

    #[action]
    fn enter_done(&mut self, context: &mut Ctx) {
        self.enter(RunState::Done, context);
    }
}

fn state_of(state: RunState) -> State {
    match state {
        RunState::New => State::new_run(),
        RunState::Requesting => State::requesting(),
        RunState::Validating => State::validating(),
        RunState::Executing => State::executing(),
        RunState::Replanning => State::replanning(),
        RunState::Paused => State::paused(),
        RunState::Done => State::done(),
    }
}

fn run_state(state: &State) -> RunState {
    match state {
        State::NewRun {} => RunState::New,
        State::Requesting {} => RunState::Requesting,
        State::Validating {} => RunState::Validating,
        State::Executing {} => RunState::Executing,
        State::Replanning {} => RunState::Replanning,
        State::Paused {} => RunState::Paused,
        State::Done {} => RunState::Done,
    }
}

/// One run's state machine.
#[derive(Clone)]
pub struct RunMachine {
    pub(super) sm: StateMachine<RunCore>,
}

impl std::fmt::Debug for RunMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunMachine")
            .field("state", &self.state())
            .field("core", self.sm.inner())
            .finish()
    }
}

impl RunMachine {
    /// A new run, in [`RunState::New`].
    pub fn new(run_id: RunId, limits: Limits) -> Self {
        let mut ctx = Ctx::default();
        let sm = RunCore::new(run_id, limits)
            .uninitialized_state_machine()
            .init_with_context(&mut ctx);
        Self { sm: sm.into() }
    }

    /// The current state.
    pub fn state(&self) -> RunState {
        run_state(self.sm.state())
    }

    /// The run's data (what the guards read).
    pub fn core(&self) -> &RunCore {
        self.sm.inner()
    }

    /// The run's id.
    pub fn run_id(&self) -> RunId {
        self.core().run_id
    }

    /// The last committed (or produced) sequence number.
    pub fn seq(&self) -> u64 {
        self.core().seq
    }

    /// The current plan version (0 before the first plan).
    pub fn plan_version(&self) -> u32 {
        self.core().plan_version
    }

    /// Replans used so far.
    pub fn replans(&self) -> u32 {
        self.core().replans
    }

    /// Planner attempt within the current purpose.
    pub fn attempt(&self) -> u32 {
        self.core().attempt
    }

    /// Why the planner is (or was last) asked.
    pub fn purpose(&self) -> Purpose {
        self.core().purpose
    }

    /// Nodes in flight with their attempt numbers.
    pub fn in_flight(&self) -> &BTreeMap<String, u32> {
        &self.core().in_flight
    }

    /// The pending HITL request, if the run waits on one.
    pub fn pending_hitl(&self) -> Option<&PendingHitl> {
        self.core().hitl.as_ref()
    }

    /// Nodes whose last attempt failed, waiting for the fallback ladder's next step (a
    /// human's answer, or the end of the run), with their last attempt and error.
    pub fn exhausted(&self) -> &BTreeMap<String, (u32, String)> {
        &self.core().exhausted
    }

    /// The node the pending request asks about, when it is a fallback request.
    pub fn fallback_node(&self) -> Option<&str> {
        self.core().fallback_node()
    }

    /// The planner output awaiting validation (in Validating).
    pub fn pending_output(&self) -> Option<&PendingOutput> {
        self.core().pending_output.as_ref()
    }

    /// The trigger of the pending replan, if any.
    pub fn trigger(&self) -> Option<&Trigger> {
        self.core().trigger.as_ref()
    }

    /// The planner call to make now (in Requesting), as the entry action would issue it.
    pub fn plan_call(&self) -> PlanCall {
        self.core().plan_call()
    }

    /// How the run ended, once Done.
    pub fn outcome(&self) -> Option<RunOutcome> {
        self.core().outcome
    }

    /// Feeds one input.
    ///
    /// # Errors
    /// [`FsmError::IllegalTransition`] when the current state does not accept the input;
    /// nothing changes then. In `Done` every input is absorbed: `Ok` with no events.
    pub fn apply(&mut self, input: &RunInput, now: Timestamp) -> Result<Step, FsmError> {
        let mut ctx = Ctx::at(now, false);
        let state = self.state();
        // Every guard refuses before anything changes, so a rejected input leaves the
        // machine as it was.
        self.sm.handle_with_context(input, &mut ctx);
        if let Some(reason) = ctx.rejected {
            return Err(FsmError::IllegalTransition {
                state,
                input: input.kind(),
                reason,
            });
        }
        debug_assert!(
            ctx.absorbed
                || ctx
                    .row
                    .is_some_and(|i| EDGES[i].target(state) == self.state()),
            "{input:?} in {state} must land where its row says, landed in {}",
            self.state()
        );
        Ok(Step {
            events: ctx.events,
            commands: ctx.commands,
            row: ctx.row,
        })
    }

    /// Feeds one committed event's input without entry actions (see `replay.rs`).
    pub(super) fn handle_restoring(&mut self, input: &RunInput, now: Timestamp) -> Ctx {
        let mut ctx = Ctx::at(now, true);
        self.sm.handle_with_context(input, &mut ctx);
        ctx
    }
}
