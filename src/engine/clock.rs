//! The run's execution clock, which `onTimeout` policies measure.
//!
//! Execution time starts when the run's first plan is accepted and does not run while the run
//! is paused (an operator pause, a `pause` policy, or a wait on a HITL answer). It is rebuilt
//! from the event log alone, so a restarted engine measures the same time as the one that
//! stopped (the time the engine was down counts as execution time unless the run was paused).

use crate::fsm::{EventBody, RunEvent};
use crate::ids::Timestamp;

/// Milliseconds of execution so far, driven by the run's events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ExecutionClock {
    /// When the first plan was accepted.
    started: Option<u64>,
    /// Total time spent paused, up to the last resume.
    paused_total: u64,
    /// When the current pause began.
    paused_since: Option<u64>,
}

impl ExecutionClock {
    /// Advances the clock past `event`.
    pub(crate) fn observe(&mut self, event: &RunEvent) {
        let at = event.timestamp.millis();
        match &event.body {
            EventBody::PlanAccepted { .. } => {
                self.started.get_or_insert(at);
            }
            EventBody::PolicyTriggered { action, .. } if action == "pause" => self.pause(at),
            EventBody::HitlRequest { .. } | EventBody::RunPaused { .. } => self.pause(at),
            EventBody::HitlResolved { .. }
            | EventBody::RunResumed { .. }
            | EventBody::Complete { .. } => self.resume(at),
            _ => {}
        }
    }

    fn pause(&mut self, at: u64) {
        if self.started.is_some() {
            self.paused_since.get_or_insert(at);
        }
    }

    fn resume(&mut self, at: u64) {
        if let Some(since) = self.paused_since.take() {
            self.paused_total += at.saturating_sub(since);
        }
    }

    /// Execution time at `now`, or `None` before the first plan was accepted.
    pub(crate) fn elapsed_ms(&self, now: Timestamp) -> Option<u64> {
        let started = self.started?;
        let until = self.paused_since.unwrap_or(now.millis());
        Some(
            until
                .saturating_sub(started)
                .saturating_sub(self.paused_total),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::{FollowUp, HitlKind, RunOutcome};
    use crate::ids::RunId;

    fn at(ms: u64, body: EventBody) -> RunEvent {
        RunEvent {
            run_id: RunId::from_bytes([3; 16]),
            seq: 1,
            timestamp: Timestamp(ms),
            plan_version: 1,
            node_id: None,
            body,
        }
    }

    fn accepted(ms: u64) -> RunEvent {
        at(
            ms,
            EventBody::PlanAccepted {
                version: 1,
                nodes: 1,
                edges: 0,
                warnings: Vec::new(),
            },
        )
    }

    fn hitl_request(ms: u64) -> RunEvent {
        at(
            ms,
            EventBody::HitlRequest {
                request_id: "approve-1".to_owned(),
                kind: HitlKind::Approval,
                question: "Go?".to_owned(),
                policy_id: Some("approve".to_owned()),
                options: Vec::new(),
                contract_summary: None,
                on_approve: FollowUp::Continue,
                on_reject: FollowUp::Fail,
            },
        )
    }

    fn hitl_resolved(ms: u64) -> RunEvent {
        at(
            ms,
            EventBody::HitlResolved {
                request_id: "approve-1".to_owned(),
                decision: crate::fsm::HitlDecision::Approve,
                text: None,
                responder: None,
                next: FollowUp::Continue,
            },
        )
    }

    #[test]
    fn the_clock_starts_with_the_first_plan_and_stops_while_paused() {
        let mut clock = ExecutionClock::default();
        assert_eq!(clock.elapsed_ms(Timestamp(5_000)), None);
        clock.observe(&accepted(1_000));
        assert_eq!(clock.elapsed_ms(Timestamp(1_400)), Some(400));
        clock.observe(&hitl_request(1_500));
        assert_eq!(clock.elapsed_ms(Timestamp(9_000)), Some(500));
        clock.observe(&hitl_resolved(3_000));
        assert_eq!(clock.elapsed_ms(Timestamp(3_200)), Some(700));
        // A later plan version does not restart it.
        clock.observe(&accepted(3_300));
        assert_eq!(clock.elapsed_ms(Timestamp(3_300)), Some(800));
        clock.observe(&at(
            3_500,
            EventBody::RunPaused {
                reason: "operator".to_owned(),
            },
        ));
        clock.observe(&at(
            4_500,
            EventBody::RunResumed {
                reason: "operator".to_owned(),
                budgets: Default::default(),
            },
        ));
        assert_eq!(clock.elapsed_ms(Timestamp(4_600)), Some(1_100));
        clock.observe(&at(
            4_700,
            EventBody::Complete {
                status: RunOutcome::Completed,
                output: None,
                error: None,
            },
        ));
        assert_eq!(clock.elapsed_ms(Timestamp(4_700)), Some(1_200));
    }

    #[test]
    fn a_wait_before_the_first_plan_does_not_count() {
        let mut clock = ExecutionClock::default();
        clock.observe(&hitl_request(100));
        clock.observe(&hitl_resolved(900));
        clock.observe(&accepted(1_000));
        assert_eq!(clock.elapsed_ms(Timestamp(1_250)), Some(250));
    }
}
