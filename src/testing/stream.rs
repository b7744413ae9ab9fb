//! The event contract a run's stream keeps, checked in one function: [`crate::conformance`].

use std::borrow::Borrow;

use crate::conformance::{self, Options, Report, Rule};
use crate::fsm::RunEvent;

/// The rules the run machine alone guarantees, whatever inputs it is fed: seqs, one run,
/// legality, nothing after `complete`, no dispatch while paused or replanning, plan
/// versions, HITL requests answered once. The other rules of [`crate::conformance`] hold
/// for what the *engine* feeds the machine (attempts that rise, completed nodes that do not
/// start again, payloads and ids it builds): a model that feeds the machine arbitrary
/// inputs filters its reports to these.
pub const MACHINE_RULES: &[Rule] = &[
    Rule::SeqGap,
    Rule::RunId,
    Rule::LegalSequence,
    Rule::AfterComplete,
    Rule::DispatchDuringReplan,
    Rule::DispatchWhilePaused,
    Rule::PlanVersion,
    Rule::HitlAnsweredOnce,
];

/// Checks a run's events against the event contract ([`conformance::check_with`]): gap-free
/// seqs, legality on the run machine, nothing after `complete`, no `node_start` while paused
/// or between a replan trigger and the next `plan_updated`, plan versions rising by one, and
/// the rest of [`Rule::ALL`]. Give [`Options::with_limits`] the run's limits and
/// [`Options::live`] for a run that has not ended.
///
/// # Errors
/// The report of every broken rule.
pub fn check_stream<E: Borrow<RunEvent>>(events: &[E], options: &Options) -> Result<(), Report> {
    let events: Vec<RunEvent> = events.iter().map(|e| e.borrow().clone()).collect();
    let report = conformance::check_with(&events, options);
    if report.is_ok() { Ok(()) } else { Err(report) }
}
