//! `legal-sequence`: the stream replayed onto the reference run machine.

use super::Rule;
use super::run::RunCheck;
use crate::fsm::{EventBody, FsmError, RunEvent, RunMachine};

impl RunCheck<'_> {
    /// `legal-sequence`: replays the event onto the reference machine. Fields other rules own
    /// (seq, run id, plan versions, idempotency key, the ending attempt) are replayed as the
    /// machine expects them, so a wrong one is reported once, by its own rule, and legality
    /// checking goes on.
    pub(super) fn legality(&mut self, event: &RunEvent) {
        let Some(machine) = self.machine.as_mut() else {
            return;
        };
        let state = machine.state();
        let copy = as_expected(event, machine);
        let Err(error) = machine.replay(&copy) else {
            return;
        };
        let reason = match error {
            FsmError::Replay { reason, .. } | FsmError::IllegalTransition { reason, .. } => reason,
        };
        self.machine = None;
        self.legality_stopped_at = Some(event.seq);
        if !self.flagged.iter().any(|r| r.explains_illegal_events()) {
            let message = format!(
                "`{}` cannot follow in state {state}: {reason}",
                event.kind()
            );
            self.flag(Rule::LegalSequence, message);
        }
    }
}

/// `event` with the fields the machine derives itself set as the machine would.
fn as_expected(event: &RunEvent, machine: &RunMachine) -> RunEvent {
    let mut copy = event.clone();
    copy.seq = machine.seq() + 1;
    copy.run_id = machine.run_id();
    let current = machine.plan_version();
    let RunEvent {
        body,
        node_id,
        plan_version,
        ..
    } = &mut copy;
    *plan_version = current;
    match body {
        EventBody::PlanAccepted { version, .. } => {
            *version = 1;
            *plan_version = 1;
        }
        EventBody::PlanUpdated {
            previous_version,
            version,
            ..
        } => {
            *previous_version = current;
            *version = current + 1;
            *plan_version = current + 1;
        }
        EventBody::NodeStart {
            idempotency_key, ..
        } => {
            if let Some(node) = node_id {
                *idempotency_key = format!("{}/{node}", machine.run_id());
            }
        }
        EventBody::NodeComplete { attempt, .. }
        | EventBody::NodeError { attempt, .. }
        | EventBody::ValidationError { attempt, .. } => {
            if let Some(running) = node_id.as_ref().and_then(|n| machine.in_flight().get(n)) {
                *attempt = *running;
            }
        }
        EventBody::PlanRequested { .. }
        | EventBody::PlanGenerated { .. }
        | EventBody::PlanRejected { .. }
        | EventBody::PolicyTriggered { .. }
        | EventBody::HitlRequest { .. }
        | EventBody::HitlResolved { .. }
        | EventBody::RunPaused { .. }
        | EventBody::RunResumed { .. }
        | EventBody::Complete { .. } => {}
    }
    copy
}
