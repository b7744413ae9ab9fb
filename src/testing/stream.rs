//! The invariants every run's event stream keeps, checked in one function.

use std::borrow::Borrow;

use crate::fsm::{EventBody, EventKind, FollowUp, RunEvent};

/// Which invariant a stream breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamRule {
    /// Seqs start at 1 and rise by one.
    GapFreeSeqs,
    /// Every event belongs to the run of the first.
    OneRun,
    /// Nothing follows `complete`.
    NothingAfterComplete,
    /// No `node_start` while the run is paused.
    NoDispatchWhilePaused,
    /// No `node_start` between a replan trigger and the next `plan_updated`.
    NoDispatchWhileReplanning,
    /// `plan_accepted` makes version 1, each `plan_updated` adds one, nothing else changes it.
    PlanVersions,
}

/// The first event that breaks an invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {seq} (`{kind}`) breaks {rule:?}: {message}")]
pub struct StreamViolation {
    /// The offending event's seq.
    pub seq: u64,
    /// Its kind.
    pub kind: EventKind,
    /// The invariant.
    pub rule: StreamRule,
    /// What was found.
    pub message: String,
}

/// Checks a run's whole event log, from seq 1 (a finished run's ends with `complete`; a
/// live run's may stop anywhere).
///
/// Holds while the run is paused: from `hitl_request`, `run_paused` or a `pause` policy
/// trigger to the next `hitl_resolved` or `run_resumed`. Holds while it replans: from a
/// `replan` policy trigger or a `hitl_resolved` whose follow-up is `replan` to the next
/// `plan_updated` (or the end).
///
/// # Errors
/// The first [`StreamViolation`].
pub fn check_stream<E: Borrow<RunEvent>>(events: &[E]) -> Result<(), StreamViolation> {
    let mut paused = false;
    let mut replanning = false;
    let mut version = 0;
    let run = events.first().map(|e| e.borrow().run_id);
    for (i, event) in events.iter().enumerate() {
        let e = event.borrow();
        let fail = |rule, message: String| StreamViolation {
            seq: e.seq,
            kind: e.kind(),
            rule,
            message,
        };
        let expected = i as u64 + 1;
        if e.seq != expected {
            return Err(fail(
                StreamRule::GapFreeSeqs,
                format!("expected seq {expected}"),
            ));
        }
        if Some(e.run_id) != run {
            return Err(fail(
                StreamRule::OneRun,
                format!("belongs to run {}", e.run_id),
            ));
        }
        if i > 0 && events[i - 1].borrow().kind() == EventKind::Complete {
            return Err(fail(
                StreamRule::NothingAfterComplete,
                format!("follows `complete` at seq {}", e.seq - 1),
            ));
        }
        let next_version = match e.kind() {
            EventKind::PlanAccepted if version == 0 => 1,
            EventKind::PlanUpdated => version + 1,
            EventKind::PlanAccepted
            | EventKind::PlanRequested
            | EventKind::PlanGenerated
            | EventKind::PlanRejected
            | EventKind::NodeStart
            | EventKind::NodeComplete
            | EventKind::NodeError
            | EventKind::ValidationError
            | EventKind::PolicyTriggered
            | EventKind::HitlRequest
            | EventKind::HitlResolved
            | EventKind::RunPaused
            | EventKind::RunResumed
            | EventKind::Complete => version,
        };
        if e.plan_version != next_version {
            return Err(fail(
                StreamRule::PlanVersions,
                format!(
                    "plan version {} where {next_version} follows {version}",
                    e.plan_version
                ),
            ));
        }
        version = next_version;
        match &e.body {
            EventBody::NodeStart { .. } if paused => {
                return Err(fail(
                    StreamRule::NoDispatchWhilePaused,
                    "a node is dispatched while the run is paused".to_owned(),
                ));
            }
            EventBody::NodeStart { .. } if replanning => {
                return Err(fail(
                    StreamRule::NoDispatchWhileReplanning,
                    "a node is dispatched before the replan's plan_updated".to_owned(),
                ));
            }
            EventBody::PolicyTriggered { action, .. } => {
                paused |= action == "pause";
                replanning |= action == "replan";
            }
            EventBody::HitlRequest { .. } | EventBody::RunPaused { .. } => paused = true,
            EventBody::HitlResolved { next, .. } => {
                paused = false;
                replanning |= *next == FollowUp::Replan;
            }
            EventBody::RunResumed { .. } => paused = false,
            EventBody::PlanUpdated { .. } => replanning = false,
            EventBody::PlanRequested { .. }
            | EventBody::PlanGenerated { .. }
            | EventBody::PlanAccepted { .. }
            | EventBody::PlanRejected { .. }
            | EventBody::NodeStart { .. }
            | EventBody::NodeComplete { .. }
            | EventBody::NodeError { .. }
            | EventBody::ValidationError { .. }
            | EventBody::Complete { .. } => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::{HitlDecision, RunError, RunOutcome};
    use crate::ids::{RunId, Timestamp};

    fn event(seq: u64, plan_version: u32, body: EventBody) -> RunEvent {
        RunEvent {
            seq,
            run_id: RunId::from_bytes([1; 16]),
            timestamp: Timestamp(0),
            plan_version,
            node_id: None,
            body,
        }
    }

    fn start() -> EventBody {
        EventBody::NodeStart {
            attempt: 1,
            capability_id: "cap".into(),
            idempotency_key: "k".into(),
        }
    }

    fn accepted() -> EventBody {
        EventBody::PlanAccepted {
            version: 1,
            nodes: 1,
            edges: 0,
            warnings: vec![],
        }
    }

    fn complete() -> EventBody {
        EventBody::Complete {
            status: RunOutcome::Cancelled,
            output: None,
            error: Some(RunError::new("CANCELLED", "c")),
        }
    }

    fn rule_of(events: &[RunEvent]) -> Option<(u64, StreamRule)> {
        check_stream(events).err().map(|v| (v.seq, v.rule))
    }

    #[test]
    fn a_clean_stream_passes_and_each_rule_names_its_first_offender() {
        let paused = EventBody::RunPaused { reason: "p".into() };
        let resumed = EventBody::RunResumed { reason: "r".into() };
        let clean = [
            event(1, 1, accepted()),
            event(2, 1, paused.clone()),
            event(3, 1, resumed),
            event(4, 1, start()),
            event(5, 1, complete()),
        ];
        assert_eq!(rule_of(&clean), None);
        assert_eq!(check_stream::<RunEvent>(&[]), Ok(()));

        let gap = [event(1, 1, accepted()), event(3, 1, start())];
        assert_eq!(rule_of(&gap), Some((3, StreamRule::GapFreeSeqs)));

        let mut foreign = event(2, 1, start());
        foreign.run_id = RunId::from_bytes([2; 16]);
        assert_eq!(
            rule_of(&[event(1, 1, accepted()), foreign]),
            Some((2, StreamRule::OneRun))
        );

        let after = [event(1, 0, complete()), event(2, 0, start())];
        assert_eq!(rule_of(&after), Some((2, StreamRule::NothingAfterComplete)));

        let held = [
            event(1, 1, accepted()),
            event(2, 1, paused),
            event(3, 1, start()),
        ];
        assert_eq!(rule_of(&held), Some((3, StreamRule::NoDispatchWhilePaused)));

        let skipped = [event(1, 1, accepted()), event(2, 2, start())];
        assert_eq!(rule_of(&skipped), Some((2, StreamRule::PlanVersions)));
    }

    #[test]
    fn a_replan_holds_dispatch_until_plan_updated() {
        let resolved = EventBody::HitlResolved {
            request_id: "h".into(),
            decision: HitlDecision::Reject,
            text: None,
            responder: None,
            next: FollowUp::Replan,
        };
        let request = EventBody::HitlRequest {
            request_id: "h".into(),
            kind: crate::fsm::HitlKind::Approval,
            question: "q".into(),
            policy_id: None,
            options: vec![],
            contract_summary: None,
            on_approve: FollowUp::Continue,
            on_reject: FollowUp::Replan,
        };
        let early = [
            event(1, 1, accepted()),
            event(2, 1, request),
            event(3, 1, resolved),
            event(4, 1, start()),
        ];
        assert_eq!(
            rule_of(&early),
            Some((4, StreamRule::NoDispatchWhileReplanning))
        );
        let updated = EventBody::PlanUpdated {
            previous_version: 1,
            version: 2,
            diff: Default::default(),
            trigger: crate::fsm::Trigger {
                source: crate::fsm::TriggerSource::Hitl,
                policy_id: None,
                node_id: None,
                reason: "r".into(),
            },
            warnings: vec![],
        };
        let mut fine = early.to_vec();
        fine.insert(3, event(4, 2, updated));
        fine[4].seq = 5;
        fine[4].plan_version = 2;
        assert_eq!(rule_of(&fine), None);
    }
}
