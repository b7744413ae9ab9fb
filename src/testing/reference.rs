//! The reference automaton behind the machine model, in one place.
//!
//! [`Automaton`] names the type that decides what a run accepts: the flat interpreter of the
//! transition table ([`crate::fsm::table::Automaton`]), which shares the rows — guards and
//! actions — with the statig machine but not its hierarchy or dispatch. [`ReferenceRun`] is
//! the small surface the strategies read.

use std::collections::BTreeMap;

use crate::fsm::{FsmError, Limits, PendingHitl, Purpose, RunCore, RunInput, RunOutcome};
use crate::fsm::{RunState, Step};
use crate::ids::{RunId, Timestamp};

/// The automaton that says what a run accepts and what it emits.
pub type Automaton = crate::fsm::table::Automaton;

/// A run as the reference automaton sees it.
#[derive(Debug, Clone)]
pub struct ReferenceRun {
    automaton: Automaton,
}

impl ReferenceRun {
    /// A new run, before `start`.
    pub fn new(run_id: RunId, limits: Limits) -> Self {
        Self {
            automaton: Automaton::new(run_id, limits),
        }
    }

    /// Feeds one input.
    ///
    /// # Errors
    /// [`FsmError::IllegalTransition`] when the automaton refuses it (nothing changes then).
    pub fn apply(&mut self, input: &RunInput, now: Timestamp) -> Result<Step, FsmError> {
        self.automaton.apply(input, now)
    }

    /// The current state.
    pub fn state(&self) -> RunState {
        self.automaton.state()
    }

    /// The run's data, to compare whole with a machine's.
    pub fn core(&self) -> &RunCore {
        self.automaton.core()
    }

    /// The limits the run enforces.
    pub fn limits(&self) -> Limits {
        self.core().limits()
    }

    /// The run's id.
    pub fn run_id(&self) -> RunId {
        self.core().run_id()
    }

    /// The last seq produced.
    pub fn seq(&self) -> u64 {
        self.core().seq()
    }

    /// The current plan version.
    pub fn plan_version(&self) -> u32 {
        self.core().plan_version()
    }

    /// Replans used.
    pub fn replans(&self) -> u32 {
        self.core().replans()
    }

    /// Why the planner is (or was last) asked.
    pub fn purpose(&self) -> Purpose {
        self.core().purpose()
    }

    /// Nodes in flight with their attempt numbers.
    pub fn in_flight(&self) -> &BTreeMap<String, u32> {
        self.core().in_flight()
    }

    /// How the run ended, once done.
    pub fn outcome(&self) -> Option<RunOutcome> {
        self.core().outcome()
    }

    /// The HITL request the run waits on.
    pub fn pending_hitl(&self) -> Option<&PendingHitl> {
        self.core().pending_hitl()
    }
}
