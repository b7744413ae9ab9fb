//! Steering requests: what the harness sends, what the reference automaton says of it, and
//! whether the engine's answer fits.

use serde_json::json;
use tokio::time::timeout;

use super::case::{Case, Claim, Expect};
use super::report::{Rule, StepOutcome};
use super::{Answer, STALE_REQUEST_ID, SteerOp};
use crate::engine::{EngineError, HitlAnswer, Steer, Steered};
use crate::fsm::{FsmError, HitlDecision, RunEvent, RunInput, RunState};
use crate::ids::Timestamp;
use crate::store::RunStatus;

/// What the reference automaton says a request does, asked when the run is quiescent.
#[derive(Debug)]
enum Expected {
    Accept(Option<Box<RunEvent>>),
    Refuse,
    Ended,
}

impl Case<'_> {
    pub(super) async fn steer(
        &mut self,
        step: usize,
        op: &SteerOp,
        quiescent: bool,
    ) -> StepOutcome {
        let pending = self.mirror.pending_hitl().map(|p| p.request_id.clone());
        let (steer, input) = translate(op, pending);
        let expected = quiescent.then(|| self.expected(input.as_ref()));
        let after = self.seen();
        let answer =
            match timeout(self.options.wait, self.engine.steer(self.run, steer, None)).await {
                Ok(answer) => answer,
                Err(_) => {
                    let detail = format!("{op:?} did not answer within {:?}", self.options.wait);
                    self.report.violate(Some(step), Rule::Stalled, detail);
                    self.broken = true;
                    return StepOutcome::NoAnswer;
                }
            };
        let upto = self.committed(Some(step)).unwrap_or(u64::MAX);
        match answer {
            Ok(steered) => {
                self.accepted(step, op, input.as_ref(), &steered, expected, (after, upto));
                StepOutcome::Accepted(steered.state)
            }
            Err(e) => {
                self.refused(step, op, input.as_ref(), &e, expected);
                StepOutcome::Refused(e.to_string())
            }
        }
    }

    fn expected(&self, input: Option<&RunInput>) -> Expected {
        if self.mirror.state() == RunState::Done {
            return Expected::Ended;
        }
        let Some(input) = input else {
            return Expected::Accept(None);
        };
        match self.mirror.clone().apply(input, Timestamp::now()) {
            Ok(step) if step.events.is_empty() => Expected::Ended,
            Ok(step) => Expected::Accept(step.events.into_iter().next().map(Box::new)),
            Err(_) => Expected::Refuse,
        }
    }

    fn accepted(
        &mut self,
        step: usize,
        op: &SteerOp,
        input: Option<&RunInput>,
        steered: &Steered,
        expected: Option<Expected>,
        (after, upto): (u64, u64),
    ) {
        let state = self.mirror.state();
        let predicted = match expected {
            Some(Expected::Accept(event)) => event,
            Some(Expected::Refuse) => {
                let detail =
                    format!("the engine accepted {op:?}; the reference refuses it in {state}");
                self.report.violate(Some(step), Rule::Acceptance, detail);
                None
            }
            Some(Expected::Ended) => {
                let detail = format!("the engine accepted {op:?} after the run ended");
                self.report.violate(Some(step), Rule::Acceptance, detail);
                None
            }
            None => None,
        };
        let expect = match op {
            SteerOp::Pause => Expect::Paused,
            SteerOp::Resume => Expect::Resumed,
            SteerOp::Cancel => Expect::Cancelled,
            SteerOp::Answer(_) | SteerOp::AnswerStale => {
                Expect::Resolved(answered_id(input).unwrap_or_default().to_owned())
            }
            SteerOp::Signal(_) => return,
        };
        let lands = match op {
            SteerOp::Pause => steered.state == RunState::Paused,
            SteerOp::Cancel => {
                steered.state == RunState::Done && steered.status == RunStatus::Cancelled
            }
            SteerOp::Resume | SteerOp::Answer(_) | SteerOp::AnswerStale | SteerOp::Signal(_) => {
                true
            }
        };
        if !lands {
            let detail = format!(
                "{op:?} was accepted but left the run {} ({:?})",
                steered.state, steered.status
            );
            self.report.violate(Some(step), Rule::Acceptance, detail);
        }
        self.claims.push(Claim {
            step,
            expect,
            after,
            upto,
            predicted,
        });
    }

    fn refused(
        &mut self,
        step: usize,
        op: &SteerOp,
        input: Option<&RunInput>,
        e: &EngineError,
        expected: Option<Expected>,
    ) {
        let ended = matches!(e, EngineError::RunEnded(_));
        let fits = match (e, op) {
            (EngineError::RunEnded(_), _) => match self.engine.head(self.run) {
                Ok(head) => head.status.is_terminal(),
                Err(_) => false,
            },
            (
                EngineError::IllegalTransition(FsmError::IllegalTransition { input: kind, .. }),
                SteerOp::Pause | SteerOp::Resume | SteerOp::Cancel,
            ) => Some(*kind) == input.map(RunInput::kind),
            (
                EngineError::UnknownHitlRequest { request_id, .. },
                SteerOp::Answer(_) | SteerOp::AnswerStale,
            ) => Some(request_id.as_str()) == answered_id(input),
            (_, _) => false,
        };
        if !fits {
            let detail = format!("{op:?} failed with an error that is not its refusal: {e}");
            self.report
                .violate(Some(step), Rule::UnexpectedError, detail);
        }
        let state = self.mirror.state();
        let wrong = match expected {
            Some(Expected::Accept(_)) => Some("the reference accepts it"),
            Some(Expected::Ended) if !ended => Some("the run has ended"),
            Some(Expected::Refuse) if ended => Some("the run has not ended"),
            Some(Expected::Ended | Expected::Refuse) | None => None,
        };
        if let Some(why) = wrong {
            let detail = format!("the engine refused {op:?} in {state} ({e}) but {why}");
            self.report.violate(Some(step), Rule::Acceptance, detail);
        }
    }
}

const REASON: &str = "steered by the test harness";

fn answered_id(input: Option<&RunInput>) -> Option<&str> {
    if let Some(RunInput::HitlAnswered { request_id, .. }) = input {
        Some(request_id)
    } else {
        None
    }
}

/// The engine request for `op`, and the machine input it becomes (none for a signal).
fn translate(op: &SteerOp, pending: Option<String>) -> (Steer, Option<RunInput>) {
    let reason = REASON.to_owned();
    match op {
        SteerOp::Pause => (
            Steer::Pause {
                reason: reason.clone(),
            },
            Some(RunInput::OperatorPause { reason }),
        ),
        SteerOp::Resume => (
            Steer::Resume {
                reason: reason.clone(),
                budgets: Default::default(),
            },
            Some(RunInput::Resume {
                reason,
                budgets: Default::default(),
            }),
        ),
        SteerOp::Cancel => (
            Steer::Cancel {
                reason: reason.clone(),
            },
            Some(RunInput::Cancel { reason }),
        ),
        SteerOp::Answer(a) => {
            let request_id = pending.unwrap_or_else(|| STALE_REQUEST_ID.to_owned());
            answer(request_id, a)
        }
        SteerOp::AnswerStale => answer(STALE_REQUEST_ID.to_owned(), &Answer::Approve),
        SteerOp::Signal(name) => (
            Steer::Signal {
                name: name.clone(),
                payload: json!({}),
            },
            None,
        ),
    }
}

fn answer(request_id: String, a: &Answer) -> (Steer, Option<RunInput>) {
    let (decision, text) = match a {
        Answer::Approve => (HitlDecision::Approve, None),
        Answer::Reject => (HitlDecision::Reject, None),
        Answer::Text(t) => (HitlDecision::Freeform, Some(t.clone())),
    };
    let mut answer = HitlAnswer::new(decision);
    answer.text = text.clone();
    let input = RunInput::HitlAnswered {
        request_id: request_id.clone(),
        decision,
        text,
        responder: None,
    };
    (Steer::Answer { request_id, answer }, Some(input))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::InputKind;

    #[test]
    fn requests_become_the_inputs_the_driver_feeds() {
        let (steer, input) = translate(
            &SteerOp::Answer(Answer::Text("ok".into())),
            Some("h".into()),
        );
        assert_eq!(steer.operation(), "answer");
        assert_eq!(
            input,
            Some(RunInput::HitlAnswered {
                request_id: "h".into(),
                decision: HitlDecision::Freeform,
                text: Some("ok".into()),
                responder: None
            })
        );
        let (_, stale) = translate(&SteerOp::Answer(Answer::Approve), None);
        assert_eq!(answered_id(stale.as_ref()), Some(STALE_REQUEST_ID));
        let (_, pause) = translate(&SteerOp::Pause, None);
        assert_eq!(pause.map(|i| i.kind()), Some(InputKind::OperatorPause));
        let (signal, none) = translate(&SteerOp::Signal("go".into()), None);
        assert_eq!(signal.operation(), "signal");
        assert_eq!(none, None);
    }
}
