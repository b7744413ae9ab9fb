//! What one case did and what it found.

use std::fmt;
use std::sync::Arc;

use super::Op;
use crate::conformance;
use crate::fsm::{RunEvent, RunOutcome, RunState};
use crate::ids::RunId;

/// Which check a case failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rule {
    /// The engine refused the envelope, or a query the harness needs failed.
    Setup,
    /// A steering request failed with an error that is not a refusal of the request.
    UnexpectedError,
    /// The engine accepted what the reference automaton refuses, or the other way round.
    Acceptance,
    /// An accepted request's event is missing from the stream.
    MissingEvent,
    /// A steering event (`run_paused`, `run_resumed`, `hitl_resolved`,
    /// `complete{cancelled}`) appeared without an accepted request.
    UnexplainedEvent,
    /// The request's event differs from the one the reference automaton emits.
    EventMismatch,
    /// The stream does not replay on the reference automaton.
    Replay,
    /// The stream breaks a rule of the event contract
    /// ([`check_stream`](crate::testing::check_stream)).
    Stream(conformance::Rule),
    /// The streamed events differ from the stored log, or `wait` from `complete`.
    Store,
    /// Nothing happened within [`CaseOptions::wait`](super::CaseOptions::wait).
    Stalled,
    /// The run did not end.
    NotEnded,
}

/// One failed check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The step it concerns (an index into [`CaseReport::steps`]), if any.
    pub step: Option<usize>,
    /// The check.
    pub rule: Rule,
    /// What was found.
    pub detail: String,
}

/// What the engine did with one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// The steering request was accepted; the run's state right after.
    Accepted(RunState),
    /// The steering request was refused with this error.
    Refused(String),
    /// The steering request got no answer within the wait.
    NoAnswer,
    /// The run was followed until this many more events had arrived.
    Waited(usize),
}

/// One applied operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    /// The operation.
    pub op: Op,
    /// True for the requests the harness adds to end the run.
    pub finishing: bool,
    /// The last seq committed before it.
    pub before_seq: u64,
    /// Whether the run was quiescent before it (so the reference automaton was asked).
    pub quiescent: bool,
    /// What happened.
    pub outcome: StepOutcome,
}

/// The result of [`run_case`](super::run_case).
#[derive(Debug, Clone, Default)]
pub struct CaseReport {
    /// The run, once submitted.
    pub run_id: Option<RunId>,
    /// Every operation applied, the finishing ones last.
    pub steps: Vec<StepRecord>,
    /// The run's events as streamed.
    pub events: Vec<Arc<RunEvent>>,
    /// How the run ended.
    pub outcome: Option<RunOutcome>,
    /// Every failed check; empty when the case passed.
    pub violations: Vec<Violation>,
}

impl CaseReport {
    /// True when no check failed.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// How many steering requests the engine accepted.
    pub fn accepted(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| matches!(s.outcome, StepOutcome::Accepted(_)))
            .count()
    }

    pub(super) fn violate(&mut self, step: Option<usize>, rule: Rule, detail: impl Into<String>) {
        self.violations.push(Violation {
            step,
            rule,
            detail: detail.into(),
        });
    }
}

impl fmt::Display for CaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.run_id {
            Some(run) => writeln!(f, "run {run}, outcome {:?}", self.outcome)?,
            None => writeln!(f, "no run")?,
        }
        for v in &self.violations {
            let at = v.step.map(|s| format!(" at step {s}")).unwrap_or_default();
            writeln!(f, "VIOLATION {:?}{at}: {}", v.rule, v.detail)?;
        }
        writeln!(f, "steps:")?;
        for (i, s) in self.steps.iter().enumerate() {
            let how = if s.quiescent { "quiescent" } else { "running" };
            let fin = if s.finishing { " (finishing)" } else { "" };
            writeln!(
                f,
                "  {i}: {:?}{fin} after seq {} ({how}) -> {:?}",
                s.op, s.before_seq, s.outcome
            )?;
        }
        writeln!(f, "events:")?;
        for e in &self.events {
            let node = e.node_id.as_deref().unwrap_or("");
            writeln!(f, "  {} {} {node} v{}", e.seq, e.kind(), e.plan_version)?;
        }
        Ok(())
    }
}
