//! What a check found: violations in stream order and a summary per run.

use std::fmt;

use super::Rule;
use crate::fsm::{EventKind, RunOutcome};
use crate::ids::RunId;

/// One broken rule at one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The run the event belongs to (the run checked, for `run-id`).
    pub run_id: RunId,
    /// The event's seq as it was in the stream.
    pub seq: u64,
    /// The event's position in the checked slice, from 0.
    pub index: usize,
    /// The event's type.
    pub kind: EventKind,
    /// The rule broken.
    pub rule: Rule,
    /// What is wrong, in plain words.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seq {} ({}): {}: {}",
            self.seq, self.kind, self.rule, self.message
        )
    }
}

/// What was found about one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// The run.
    pub run_id: RunId,
    /// Its events in the slice.
    pub events: usize,
    /// Its violations.
    pub violations: usize,
    /// How it ended, when its `complete` was seen.
    pub outcome: Option<RunOutcome>,
    /// The seq after which `legal-sequence` was no longer checked: the first event the run
    /// machine refused (the state after it is unknown).
    pub legality_stopped_at: Option<u64>,
}

impl fmt::Display for RunSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let events = plural(self.events, "event");
        match self.violations {
            0 => write!(f, "run {}: {events}, conforms", self.run_id)?,
            n => write!(
                f,
                "run {}: {events}, {}",
                self.run_id,
                plural(n, "violation")
            )?,
        }
        match self.outcome {
            Some(outcome) => write!(f, " (ended {})", outcome_name(outcome)),
            None => f.write_str(" (no complete yet)"),
        }
    }
}

fn outcome_name(outcome: RunOutcome) -> &'static str {
    match outcome {
        RunOutcome::Completed => "completed",
        RunOutcome::Failed => "failed",
        RunOutcome::Cancelled => "cancelled",
    }
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The result of a check: every violation in stream order, and one summary per run in the
/// order the runs first appear.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    pub(crate) violations: Vec<Violation>,
    pub(crate) runs: Vec<RunSummary>,
    pub(crate) events: usize,
}

impl Report {
    /// True when no rule is broken.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// The first violation in stream order.
    pub fn first(&self) -> Option<&Violation> {
        self.violations.first()
    }

    /// Every violation, in stream order (by event, then in the order the rules are checked).
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// The violations of one rule.
    pub fn of(&self, rule: Rule) -> impl Iterator<Item = &Violation> {
        self.violations.iter().filter(move |v| v.rule == rule)
    }

    /// One summary per run, in the order the runs first appear.
    pub fn runs(&self) -> &[RunSummary] {
        &self.runs
    }

    /// Events checked.
    pub fn event_count(&self) -> usize {
        self.events
    }

    /// Runs checked.
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// The violations of one run.
    pub fn of_run(&self, run_id: RunId) -> impl Iterator<Item = &Violation> {
        self.violations.iter().filter(move |v| v.run_id == run_id)
    }
}

/// One line per run (`run …: 23 events, conforms`), each violation of the run indented under
/// it, and a note where legality checking stopped.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.runs.is_empty() {
            return f.write_str("no events\n");
        }
        for run in &self.runs {
            writeln!(f, "{run}")?;
            for v in self.of_run(run.run_id) {
                writeln!(f, "  {v}")?;
            }
            if let Some(seq) = run.legality_stopped_at {
                writeln!(
                    f,
                    "  legal-sequence not checked after seq {seq}: the run's state is unknown from there"
                )?;
            }
        }
        Ok(())
    }
}
