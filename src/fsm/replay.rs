//! Rebuilding a machine from its committed events: each event is mapped back to the input
//! that produced it (given the state before it) and fed again, without entry actions.
//!
//! The map is the inverse of the row actions in `act.rs`; where one event can come from two
//! inputs (`plan_requested` after `start`, a planner failure or a drain) the state before it
//! and the event's own fields decide. A replayed input must reproduce the committed event
//! exactly, or the replay fails: the map cannot silently guess.

use serde_json::Value;

use super::FsmError;
use super::event::{EventBody, RunError, RunEvent, RunOutcome};
use super::machine::RunMachine;
use super::vocab::{Limits, RunInput, RunState};
use crate::ids::RunId;

impl RunMachine {
    /// Rebuilds a run from its committed events, without re-running entry actions and
    /// without producing commands: the driver decides how to continue.
    ///
    /// # Errors
    /// [`FsmError::Replay`] when the events are not a sequence the machine accepts
    /// (a gap, a foreign run id, or an illegal transition).
    pub fn restore(run_id: RunId, limits: Limits, events: &[RunEvent]) -> Result<Self, FsmError> {
        let mut machine = Self::new(run_id, limits);
        for event in events {
            machine.replay(event)?;
        }
        Ok(machine)
    }

    /// Replays one committed event onto the machine: the event must be the next seq of this
    /// run and follow from the current state. No entry action runs, no command is produced.
    ///
    /// # Errors
    /// [`FsmError::Replay`] naming the event's seq and why it cannot follow.
    pub fn replay(&mut self, event: &RunEvent) -> Result<(), FsmError> {
        let core = self.core();
        if event.run_id != core.run_id || event.seq != core.seq + 1 {
            return Err(FsmError::Replay {
                seq: event.seq,
                reason: format!("expected seq {} of run {}", core.seq + 1, core.run_id),
            });
        }
        let input = input_for(event, self)?;
        let ctx = self.handle_restoring(&input, event.timestamp);
        if let Some(reason) = ctx.rejected {
            return Err(FsmError::Replay {
                seq: event.seq,
                reason,
            });
        }
        debug_assert!(
            ctx.commands.is_empty(),
            "entry actions are silent while restoring"
        );
        let produced = ctx.events.first().map(|e| (&e.body, e.plan_version));
        if produced != Some((&event.body, event.plan_version)) {
            return Err(FsmError::Replay {
                seq: event.seq,
                reason: format!(
                    "event `{}` does not follow from the state before it",
                    event.kind()
                ),
            });
        }
        Ok(())
    }
}

/// The input that produced a committed event, given the state before it.
fn input_for(event: &RunEvent, machine: &RunMachine) -> Result<RunInput, FsmError> {
    let node = || {
        event.node_id.clone().ok_or_else(|| FsmError::Replay {
            seq: event.seq,
            reason: format!("`{}` event without a node id", event.kind()),
        })
    };
    Ok(match &event.body {
        EventBody::PlanRequested { error, .. } => match (machine.state(), error) {
            (RunState::New, _) => RunInput::Start,
            (RunState::Replanning, _) => RunInput::Drained,
            // The only row that emits `plan_requested` with an error is
            // `requesting.planner_failed[attempts_left]`, whose guard requires a retryable error.
            (_, Some(error)) => RunInput::PlannerFailed {
                error: error.clone(),
                retryable: true,
            },
            (_, None) => RunInput::Drained,
        },
        EventBody::PlanGenerated {
            output,
            planner,
            latency_ms,
            usage,
            model,
            cost,
            diagnostics,
            ..
        } => RunInput::PlanReturned {
            output: output.clone(),
            planner: planner.clone(),
            latency_ms: *latency_ms,
            usage: *usage,
            model: model.clone(),
            cost: *cost,
            diagnostics: diagnostics.clone(),
        },
        EventBody::PlanAccepted {
            nodes,
            edges,
            warnings,
            ..
        } => RunInput::DraftValid {
            nodes: *nodes,
            edges: *edges,
            warnings: warnings.clone(),
        },
        EventBody::PlanUpdated { diff, warnings, .. } => RunInput::DeltaValid {
            diff: diff.clone(),
            warnings: warnings.clone(),
        },
        EventBody::PlanRejected { diagnostics, .. } => RunInput::PlanInvalid {
            diagnostics: diagnostics.clone(),
        },
        EventBody::NodeStart {
            attempt,
            capability_id,
            ..
        } => RunInput::NodeDispatched {
            node_id: node()?,
            capability_id: capability_id.clone(),
            attempt: *attempt,
        },
        EventBody::NodeComplete {
            output,
            duration_us,
            spend,
            ..
        } => {
            let node_id = node()?;
            // A node that is not running but waits for its fallback ladder was skipped by a
            // human (`executing.node_skipped`); any other completion is a result.
            let skipped = !machine.in_flight().contains_key(&node_id)
                && machine.exhausted().contains_key(&node_id);
            if skipped {
                RunInput::NodeSkipped {
                    node_id,
                    output: output.clone(),
                }
            } else {
                RunInput::NodeSucceeded {
                    node_id,
                    output: output.clone(),
                    duration_us: *duration_us,
                    spend: *spend,
                }
            }
        }
        EventBody::NodeError {
            error,
            will_retry,
            spend,
            retry_at,
            ..
        } => RunInput::NodeFailed {
            node_id: node()?,
            error: error.clone(),
            will_retry: *will_retry,
            spend: *spend,
            retry_at: *retry_at,
        },
        EventBody::ValidationError {
            errors,
            will_retry,
            spend,
            retry_at,
            ..
        } => RunInput::OutputInvalid {
            node_id: node()?,
            errors: errors.clone(),
            will_retry: *will_retry,
            spend: *spend,
            retry_at: *retry_at,
        },
        EventBody::PolicyTriggered {
            policy_id,
            action,
            trigger,
        } => match action.as_str() {
            "replan" => RunInput::PolicyReplan {
                policy_id: policy_id.clone(),
                trigger: trigger.clone(),
            },
            "pause" => RunInput::PolicyPause {
                policy_id: policy_id.clone(),
                trigger: trigger.clone(),
            },
            other => {
                return Err(FsmError::Replay {
                    seq: event.seq,
                    reason: format!("unknown policy action `{other}`"),
                });
            }
        },
        EventBody::HitlRequest {
            request_id,
            kind,
            question,
            policy_id,
            options,
            contract_summary,
            on_approve,
            on_reject,
        } => RunInput::HitlRequested {
            request_id: request_id.clone(),
            kind: *kind,
            question: question.clone(),
            policy_id: policy_id.clone(),
            node_id: event.node_id.clone(),
            options: options.clone(),
            contract_summary: contract_summary.clone(),
            on_approve: *on_approve,
            on_reject: *on_reject,
        },
        EventBody::HitlResolved {
            request_id,
            decision,
            text,
            responder,
            ..
        } => RunInput::HitlAnswered {
            request_id: request_id.clone(),
            decision: *decision,
            text: text.clone(),
            responder: responder.clone(),
        },
        EventBody::RunPaused { reason } => RunInput::OperatorPause {
            reason: reason.clone(),
        },
        EventBody::RunResumed { reason, budgets } => RunInput::Resume {
            reason: reason.clone(),
            budgets: budgets.clone(),
        },
        EventBody::Complete {
            status,
            output,
            error,
        } => complete_input(*status, output, error),
    })
}

fn complete_input(
    status: RunOutcome,
    output: &Option<Value>,
    error: &Option<RunError>,
) -> RunInput {
    let error = error
        .clone()
        .unwrap_or_else(|| RunError::new("UNKNOWN", ""));
    match status {
        RunOutcome::Completed => RunInput::AllDone {
            output: output.clone().unwrap_or(Value::Null),
        },
        RunOutcome::Cancelled => RunInput::Cancel {
            reason: error.message,
        },
        RunOutcome::Failed => RunInput::Fail { error },
    }
}
