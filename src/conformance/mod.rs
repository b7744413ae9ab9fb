//! Checks that a run's event stream keeps the contract: what any consumer of the SSE stream,
//! the store or `flexrun run --format jsonl` may rely on.
//!
//! [`check`] walks the events once. Events of several runs may share a slice: they are
//! grouped by run id and each run is checked on its own. Every broken rule is a
//! [`Violation`] naming the run, the event's seq, index and type, and the [`Rule`]; the
//! [`Report`] lists them in stream order and prints one line per run.
//!
//! The rules (stable names, see [`Rule::ALL`] and `docs/CONFORMANCE.md`):
//!
//! - `seq-gap`: seqs start at 1 and rise by exactly one (an exact repeat of an earlier
//!   event is reported once and not checked further).
//! - `run-id`: with [`Options::for_run`], every event belongs to that run.
//! - `legal-sequence`: every event is what [`RunMachine`](crate::fsm::RunMachine) produces
//!   from the state before it ([`RunMachine::replay`](crate::fsm::RunMachine::replay)).
//!   After the first refused event the state is unknown, so legality is not checked further
//!   for that run; the other rules go on. It is the catch-all: an event a more specific rule
//!   already flagged is not reported again as `legal-sequence`.
//! - `after-complete`: nothing follows `complete`; `complete-missing`: a stream that is
//!   over ([`Options::require_complete`]) ends with `complete`.
//! - `dispatch-during-replan`: no `node_start` between a replan request
//!   (`policy_triggered` action replan, `hitl_resolved` next=replan) and the next
//!   `plan_updated`.
//! - `dispatch-while-paused`: no `node_start` after `run_paused`, `hitl_request` or
//!   `policy_triggered` pause until `run_resumed` or `hitl_resolved`.
//! - `plan-version`: `plan_accepted` makes version 1, once; each `plan_updated` goes from
//!   the current version to the next (its diff too); every event's `planVersion` is the
//!   version current after it.
//! - `hitl-answered-once`: a `hitl_resolved` answers a request that was made and not yet
//!   answered; `hitl-request-unique`: request ids are not reused within a run.
//! - `node-lifecycle`: a started node ends (`node_complete`, `node_error`,
//!   `validation_error`) before it starts again and its end carries the attempt it started
//!   with; attempts start at 1 and rise; the idempotency key is `runId/nodeId` on every
//!   attempt; a failure with `willRetry: false` is not followed by a start of the node in the
//!   same plan version; a completed node never starts again; `complete` (completed) has
//!   nothing in flight.
//! - `node-id`: node events carry a `nodeId`; plan, policy, pause, resume and `complete`
//!   events carry none; a `hitl_resolved` names its request's node.
//! - `complete-payload`: completed carries an output and no error, failed an error,
//!   cancelled the error `CANCELLED`, and neither of those an output.
//! - `timestamp-order`: a run's timestamps never go back.
//! - `id-grammar`: node, capability, policy and HITL request ids follow the identifier
//!   grammar ([`crate::ids`]).
//! - `sse-frame`: an SSE frame's `id:` is its event's seq and `event:` its type (checked
//!   when the events come from [`wire::Stream`], see [`check_stream`]).
//!
//! The module is pure (no runtime, no I/O) and is compiled without default features.
//!
//! ```
//! use flexrun::conformance::{self, Rule};
//! use flexrun::fsm::{Limits, RunInput, RunMachine};
//! use flexrun::{RunId, Timestamp};
//!
//! let mut run = RunMachine::new(RunId::new(), Limits::default());
//! let mut events = run.apply(&RunInput::Start, Timestamp(1)).unwrap().events;
//! assert!(conformance::check_with(&events, &conformance::Options::live()).is_ok());
//!
//! events[0].seq = 2;
//! let report = conformance::check(&events);
//! assert_eq!(report.first().unwrap().rule, Rule::SeqGap);
//! assert!(report.of(Rule::CompleteMissing).next().is_some());
//! ```

mod legality;
mod nodes;
mod report;
mod rule;
mod run;
pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::HashMap;

pub use report::{Report, RunSummary, Violation};
pub use rule::{Rule, UnknownRule, rules_markdown};

use crate::fsm::{Limits, RunEvent};
use crate::ids::RunId;
use run::RunCheck;

/// The reference automaton of legal event sequences: the rows of the edge table
/// ([`EDGES`]) interpreted flat. Feeding it inputs generates exactly the event sequences the
/// engine may commit; `legal-sequence` replays a stream through the statig machine that
/// dispatches through the same rows.
pub use crate::fsm::table::{Automaton, EDGES, Edge};

/// How to check.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// The stream is over: a run without `complete` breaks `complete-missing`. True by
    /// default; false for a live stream still running ([`Options::live`]).
    pub require_complete: bool,
    /// The limits the reference machine enforces. Permissive by default (`u32::MAX`
    /// attempts and replans): the checker does not know the envelope's policies. Give the
    /// run's limits to check that they were kept.
    pub limits: Limits,
    /// The one run the stream is of: events of other runs break `run-id` and are not checked
    /// further. `None` (the default) checks every run found.
    pub run: Option<RunId>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            require_complete: true,
            limits: Limits {
                max_attempts: u32::MAX,
                max_replans: u32::MAX,
            },
            run: None,
        }
    }
}

impl Options {
    /// For a stream that may still be running: `complete` is not required.
    pub fn live() -> Self {
        Self {
            require_complete: false,
            ..Self::default()
        }
    }

    /// Requires (or not) that every run ends with `complete`.
    pub fn require_complete(mut self, yes: bool) -> Self {
        self.require_complete = yes;
        self
    }

    /// Checks against these planner limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Expects every event to belong to `run`.
    pub fn for_run(mut self, run: RunId) -> Self {
        self.run = Some(run);
        self
    }
}

/// Checks `events` with the default [`Options`]: every run must be complete.
pub fn check(events: &[RunEvent]) -> Report {
    check_with(events, &Options::default())
}

/// Checks `events` with `opts`.
pub fn check_with(events: &[RunEvent], opts: &Options) -> Report {
    check_events(events, opts, |_| None)
}

/// Checks a decoded stream, including its SSE framing (rule `sse-frame`).
pub fn check_stream(stream: &wire::Stream, opts: &Options) -> Report {
    check_events(stream.events(), opts, |i| stream.frame_problem(i))
}

fn check_events<'a>(
    events: &'a [RunEvent],
    opts: &Options,
    frame_problem: impl Fn(usize) -> Option<&'a str>,
) -> Report {
    let mut order: Vec<RunId> = Vec::new();
    let mut runs: HashMap<RunId, RunCheck<'a>> = HashMap::new();
    for (index, event) in events.iter().enumerate() {
        let run = opts.run.unwrap_or(event.run_id);
        runs.entry(run)
            .or_insert_with(|| {
                order.push(run);
                RunCheck::new(run, events, opts)
            })
            .observe(index, frame_problem(index));
    }
    let mut report = Report::default();
    for run in order {
        if let Some(check) = runs.remove(&run) {
            check.finish(&mut report);
        }
    }
    report.violations.sort_by_key(|v| v.index);
    report
}
