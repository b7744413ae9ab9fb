//! The run state machine (sans-IO) and its event vocabulary.
//!
//! `src/fsm` imports no tokio, axum or redb: [`RunMachine::apply`] is synchronous and pure.
//!
//! - `table.rs` — every transition, one row each ([`table::EDGES`]), and the flat
//!   reference interpreter [`table::Automaton`];
//! - `guard.rs`, `act.rs` — the guard predicates and actions the rows name, one function each;
//! - `data.rs` — the run's data they read and change;
//! - `machine.rs` — the statig states (hierarchical, under `Live`) dispatching through the rows;
//! - `replay.rs` — rebuilding a machine from committed events;
//! - `next.rs` — what an executing or draining run does next (dispatch, wait, finish);
//! - `vocab.rs`, `event.rs` — states, inputs, commands and events.

mod act;
mod data;
mod event;
mod guard;
mod machine;
mod next;
mod replay;
pub mod table;
mod vocab;

pub use data::{Ctx, FallbackChoice, RunCore};
pub use event::{
    EventBody, EventKind, FollowUp, HitlDecision, HitlKind, NodeSpend, PlanPhase, PlannerOutput,
    RunError, RunEvent, RunOutcome, TokenUsage, Trigger, TriggerSource, UnparsedReply,
};
pub use machine::RunMachine;
pub use next::{Next, Progress, next};
pub use vocab::{
    Command, InputKind, Limits, PendingHitl, PendingOutput, PlanCall, Purpose, RunInput, RunState,
    Step,
};

/// Errors of the run machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FsmError {
    /// The current state does not accept the input.
    #[error("input `{input}` is illegal in state `{state}`: {reason}")]
    IllegalTransition {
        /// The state the run is in.
        state: RunState,
        /// The refused input.
        input: InputKind,
        /// Why.
        reason: String,
    },
    /// A stored event cannot be replayed onto the state before it.
    #[error("event {seq} cannot be replayed: {reason}")]
    Replay {
        /// The event's seq.
        seq: u64,
        /// Why.
        reason: String,
    },
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
