//! The run state machine (sans-IO) and its event vocabulary.
//!
//! `src/fsm` imports no tokio, axum or redb: [`RunMachine::apply`] is synchronous and pure.

mod event;
mod machine;
pub mod table;

pub use event::{
    EventBody, EventKind, FollowUp, HitlDecision, HitlKind, PlanPhase, PlannerOutput, RunError,
    RunEvent, RunOutcome, TokenUsage, Trigger, TriggerSource, UnparsedReply,
};
pub use machine::{
    Command, InputKind, Limits, PendingHitl, PendingOutput, PlanCall, Purpose, RunInput,
    RunMachine, RunState, Step,
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
