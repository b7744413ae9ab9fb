//! The run state machine (sans-IO) and its event vocabulary.

mod event;

pub use event::{
    EventBody, EventKind, FollowUp, HitlDecision, HitlKind, PlanPhase, PlannerOutput, RunError,
    RunEvent, RunOutcome, TokenUsage, Trigger, TriggerSource,
};
