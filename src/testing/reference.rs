//! The reference automaton behind both models, in one place.
//!
//! [`Automaton`] names the type that decides what a run accepts; [`ReferenceRun`] is the
//! small surface the strategies and the engine harness read. Changing the automaton is
//! changing the alias.

use std::collections::BTreeMap;

use crate::fsm::{FsmError, Limits, PendingHitl, Purpose, RunEvent, RunInput, RunMachine};
use crate::fsm::{RunOutcome, RunState, Step};
use crate::ids::{RunId, Timestamp};

/// The automaton that says what a run accepts and what it emits.
pub type Automaton = RunMachine;

/// A run as the reference automaton sees it: the automaton and the limits it enforces.
#[derive(Debug, Clone)]
pub struct ReferenceRun {
    automaton: Automaton,
    limits: Limits,
}

impl ReferenceRun {
    /// A new run, before `start`.
    pub fn new(run_id: RunId, limits: Limits) -> Self {
        Self {
            automaton: Automaton::new(run_id, limits),
            limits,
        }
    }

    /// Feeds one input.
    ///
    /// # Errors
    /// [`FsmError::IllegalTransition`] when the automaton refuses it (nothing changes then).
    pub fn apply(&mut self, input: &RunInput, now: Timestamp) -> Result<Step, FsmError> {
        self.automaton.apply(input, now)
    }

    /// Follows one committed event (the next seq of this run).
    ///
    /// # Errors
    /// [`FsmError::Replay`] when the event cannot follow from the current state.
    pub fn replay(&mut self, event: &RunEvent) -> Result<(), FsmError> {
        self.automaton.replay(event)
    }

    /// The current state.
    pub fn state(&self) -> RunState {
        self.automaton.state()
    }

    /// The limits the run enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The run's id.
    pub fn run_id(&self) -> RunId {
        self.automaton.run_id()
    }

    /// The last seq produced or followed.
    pub fn seq(&self) -> u64 {
        self.automaton.seq()
    }

    /// The current plan version.
    pub fn plan_version(&self) -> u32 {
        self.automaton.plan_version()
    }

    /// Replans used.
    pub fn replans(&self) -> u32 {
        self.automaton.replans()
    }

    /// Why the planner is (or was last) asked.
    pub fn purpose(&self) -> Purpose {
        self.automaton.purpose()
    }

    /// Nodes in flight with their attempt numbers.
    pub fn in_flight(&self) -> &BTreeMap<String, u32> {
        self.automaton.in_flight()
    }

    /// How the run ended, once done.
    pub fn outcome(&self) -> Option<RunOutcome> {
        self.automaton.outcome()
    }

    /// The HITL request the run waits on.
    pub fn pending_hitl(&self) -> Option<&PendingHitl> {
        self.automaton.pending_hitl()
    }
}
