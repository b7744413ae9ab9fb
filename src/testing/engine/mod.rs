//! Engine level: steer a run of your own engine with random operations and check what it
//! answers and streams.
//!
//! [`run_case`] submits an envelope to an [`Engine`](crate::Engine) you built (your planner,
//! executors, catalog, store), applies [`Op`]s through [`Engine::steer`](crate::Engine::steer)
//! while following the run's event stream, and returns a [`CaseReport`]. It checks:
//!
//! - every operation the engine accepted shows up as its event: pause → `run_paused`,
//!   resume → `run_resumed`, answer → `hitl_resolved` (or the `complete{failed}` its
//!   follow-up leads to), cancel → `complete{cancelled}`; and no such event appears without
//!   one (the harness must be the only one steering the run);
//! - a refused operation is refused with [`EngineError::IllegalTransition`] (pause, resume,
//!   cancel) or [`EngineError::UnknownHitlRequest`] (answers), or [`EngineError::RunEnded`]
//!   once the run has ended — never another error;
//! - when the run was quiescent (paused with nothing running, or done), acceptance matches
//!   what the run machine rebuilt from the stream says for that state, and an accepted
//!   operation's event is the one it emits (the [`machine`](super::machine) model holds that
//!   machine to the table automaton);
//! - the stream replays on the run machine, equals the stored log and passes
//!   [`check_stream`](super::check_stream);
//! - the run ends: after the operations the harness answers every HITL request with
//!   approval and resumes every pause (cancelling after [`CaseOptions::finish_rounds`]), and
//!   every wait is bounded by [`CaseOptions::wait`].
//!
//! [`EngineError::IllegalTransition`]: crate::EngineError::IllegalTransition
//! [`EngineError::UnknownHitlRequest`]: crate::EngineError::UnknownHitlRequest
//! [`EngineError::RunEnded`]: crate::EngineError::RunEnded

mod case;
mod report;
mod steer;
#[cfg(test)]
mod tests;

use std::time::Duration;

use proptest::collection::SizeRange;
use proptest::prelude::*;

pub use case::run_case;
pub use report::{CaseReport, Rule, StepOutcome, StepRecord, Violation};

/// One thing done to a run from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A steering request through [`Engine::steer`](crate::Engine::steer).
    Steer(SteerOp),
    /// Let the run progress until its next event (nothing when it is quiescent).
    NextEvent,
    /// Let the run progress until it is quiescent: paused with nothing running, or done.
    Quiesce,
}

/// A steering request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SteerOp {
    /// Pause the run.
    Pause,
    /// Resume the run.
    Resume,
    /// Cancel the run.
    Cancel,
    /// Answer the HITL request the run waits on (a request id that is not pending when it
    /// waits on none).
    Answer(Answer),
    /// Answer a request id that is not pending.
    AnswerStale,
    /// Send the signal of this name, with an empty payload.
    Signal(String),
}

/// A HITL answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Approve.
    Approve,
    /// Reject.
    Reject,
    /// Free text.
    Text(String),
}

/// The request id [`SteerOp::AnswerStale`] answers (and [`SteerOp::Answer`] when nothing
/// is pending).
pub const STALE_REQUEST_ID: &str = "not-pending";

/// How long the harness waits and how hard it tries to end the run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CaseOptions {
    /// The longest wait for one event, one steering answer or the run's end (10 s by
    /// default). A run that needs longer (slow executors, `onTimeout` policies) needs more.
    pub wait: Duration,
    /// After the operations: how many pauses the harness answers or resumes before it
    /// cancels the run (16 by default).
    pub finish_rounds: usize,
}

impl Default for CaseOptions {
    fn default() -> Self {
        Self {
            wait: Duration::from_secs(10),
            finish_rounds: 16,
        }
    }
}

impl CaseOptions {
    /// With this longest wait.
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// With this many finishing rounds.
    pub fn with_finish_rounds(mut self, rounds: usize) -> Self {
        self.finish_rounds = rounds;
        self
    }
}

/// A HITL answer: approve, reject, or a short free text.
pub fn answer() -> BoxedStrategy<Answer> {
    prop_oneof![
        3 => Just(Answer::Approve),
        2 => Just(Answer::Reject),
        1 => "[a-z]{1,8}".prop_map(Answer::Text),
    ]
    .boxed()
}

/// A steering request; signals are drawn from `signals` (the names your envelope's
/// `manual` policies listen to, plus any you like), none when it is empty.
pub fn steer_op(signals: &[&str]) -> BoxedStrategy<SteerOp> {
    let mut options: Vec<(u32, BoxedStrategy<SteerOp>)> = vec![
        (3, Just(SteerOp::Pause).boxed()),
        (3, Just(SteerOp::Resume).boxed()),
        (1, Just(SteerOp::Cancel).boxed()),
        (4, answer().prop_map(SteerOp::Answer).boxed()),
        (1, Just(SteerOp::AnswerStale).boxed()),
    ];
    if !signals.is_empty() {
        let names: Vec<String> = signals.iter().map(|s| (*s).to_owned()).collect();
        let signal = proptest::sample::select(names).prop_map(SteerOp::Signal);
        options.push((2, signal.boxed()));
    }
    proptest::strategy::Union::new_weighted(options).boxed()
}

/// One operation: a steering request, or letting the run progress.
pub fn op(signals: &[&str]) -> BoxedStrategy<Op> {
    prop_oneof![
        3 => steer_op(signals).prop_map(Op::Steer),
        2 => Just(Op::NextEvent),
        1 => Just(Op::Quiesce),
    ]
    .boxed()
}

/// A sequence of operations of a length in `len`.
pub fn steering(signals: &[&str], len: impl Into<SizeRange>) -> BoxedStrategy<Vec<Op>> {
    proptest::collection::vec(op(signals), len).boxed()
}
