//! The driver's inputs: what happened outside (a planner answer, a node result, an
//! operator's request, a timer, a restart), turned into machine inputs and deferred firings.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::{Local, RunDriver};
use crate::engine::executor::ExecError;
use crate::engine::idempotency::Steer;
use crate::engine::{EngineError, HitlAnswer};
use crate::fsm::{
    FallbackChoice, HitlDecision, RunError, RunInput, RunState, TokenUsage, TriggerSource,
};
use crate::planner::{PlanResponse, PlannerError};
use crate::policy::{Firing, NodeFacts};
use crate::store::QueuedFiring;

impl RunDriver {
    /// Continues a restored run: re-issues its planner call or validation, and fails the
    /// nodes that were running when the engine stopped so they are dispatched again.
    pub(crate) fn resume_after_restart(&mut self) {
        match self.machine.state() {
            RunState::Requesting => {
                let call = self.machine.plan_call();
                self.call_planner(call);
            }
            RunState::Validating => {
                if let Some(pending) = self.machine.pending_output().cloned() {
                    self.validate(pending);
                }
            }
            RunState::Executing | RunState::Replanning | RunState::Paused => {
                let asked: BTreeSet<&String> =
                    self.human_requests.values().map(|(n, _)| n).collect();
                let interrupted: Vec<String> = self
                    .machine
                    .in_flight()
                    .keys()
                    .filter(|n| !asked.contains(n))
                    .cloned()
                    .collect();
                for node_id in interrupted {
                    let input = RunInput::NodeFailed {
                        node_id,
                        error: RunError::new(
                            "INTERRUPTED",
                            "the engine stopped while the node was running",
                        ),
                        will_retry: true,
                        spend: None,
                        retry_at: None,
                    };
                    self.feed_or_log(input);
                }
            }
            RunState::New | RunState::Done => {}
        }
    }

    pub(crate) fn on_timer(&mut self) {
        let Some(elapsed) = self.clock.elapsed_ms(self.now) else {
            return;
        };
        for firing in self.policy_engine.on_timeout(elapsed) {
            self.defer(firing, TriggerSource::Policy, None);
        }
        self.budget_dirty = true;
    }

    /// Queues a firing; it is applied when the run executes, and stored until then.
    pub(super) fn defer(&mut self, firing: Firing, source: TriggerSource, node_id: Option<String>) {
        self.deferred.push_back(QueuedFiring {
            policy_id: firing.policy_id,
            action: firing.action,
            reason: firing.reason,
            source,
            node_id,
            queued_at: self.now,
        });
        self.deferred_changed = true;
    }

    pub(crate) fn on_planned(
        &mut self,
        call: u64,
        result: Result<PlanResponse, PlannerError>,
        latency_ms: u64,
    ) {
        if call != self.planner_call || self.machine.state() != RunState::Requesting {
            return;
        }
        let input = match result {
            Ok(response) => {
                let cost = response
                    .usage
                    .map(|u| {
                        let model = response.model.as_deref();
                        self.pricing
                            .price(model, u.prompt_tokens, u.completion_tokens)
                    })
                    .filter(|cost| *cost > 0.0);
                RunInput::PlanReturned {
                    output: Arc::new(response.output),
                    planner: self.planner_name.clone(),
                    latency_ms,
                    usage: response.usage,
                    model: response.model,
                    cost,
                    diagnostics: response.diagnostics,
                }
            }
            Err(e) => RunInput::PlannerFailed {
                retryable: e.is_retryable(),
                error: e.to_string(),
            },
        };
        self.feed_or_log(input);
    }

    pub(crate) fn on_node_done(
        &mut self,
        node_id: String,
        attempt: u32,
        result: Result<Map<String, Value>, ExecError>,
        duration_us: u64,
        usage: Option<TokenUsage>,
    ) {
        if self.machine.in_flight().get(&node_id) != Some(&attempt) {
            return;
        }
        let ladder = self.ladder(&node_id);
        let in_round = self.attempt_in_round(&node_id, attempt);
        let may_retry = in_round < ladder.max_attempts;
        let delay = ladder.delay_ms(in_round);
        let retry_at = (delay > 0).then(|| self.now.millis().saturating_add(delay));
        let spend = self.attempt_spend(&node_id, usage);
        match result {
            Ok(output) => {
                let value = Value::Object(output);
                let verdict = match self.contracts.get(&node_id) {
                    Some(contract) => contract.validate_value(&value),
                    None => Ok(()),
                };
                let Value::Object(output) = value else {
                    return;
                };
                match verdict {
                    Ok(()) => {
                        let input = RunInput::NodeSucceeded {
                            node_id: node_id.clone(),
                            output,
                            duration_us,
                            spend,
                        };
                        self.feed_ref(&input);
                        if let RunInput::NodeSucceeded { output, .. } = &input {
                            self.evaluate_node_policies(&node_id, output);
                        }
                    }
                    Err(errors) => {
                        self.feed_or_log(RunInput::OutputInvalid {
                            node_id: node_id.clone(),
                            errors,
                            will_retry: may_retry,
                            spend,
                            retry_at,
                        });
                        if let Some(node) = self.plan_node(&node_id).cloned() {
                            for firing in
                                self.policy_engine.on_validation_fail(&NodeFacts::of(&node))
                            {
                                self.defer(firing, TriggerSource::Policy, Some(node_id.clone()));
                            }
                        }
                    }
                }
            }
            Err(e) => {
                let will_retry = e.retryable && may_retry;
                self.feed_or_log(RunInput::NodeFailed {
                    node_id,
                    error: RunError::new(e.code, e.message),
                    will_retry,
                    spend,
                    retry_at,
                });
            }
        }
    }

    pub(crate) fn on_control(&mut self, control: Steer) -> Result<(), EngineError> {
        let conflict = EngineError::IllegalTransition;
        match control {
            Steer::Cancel { reason } => self.feed(RunInput::Cancel { reason }).map_err(conflict),
            Steer::Pause { reason } => self
                .feed(RunInput::OperatorPause { reason })
                .map_err(conflict),
            Steer::Resume { reason, budgets } => self
                .feed(RunInput::Resume { reason, budgets })
                .map_err(conflict),
            Steer::Answer { request_id, answer } => {
                let pending = self.machine.pending_hitl().map(|p| p.request_id.as_str());
                if pending != Some(request_id.as_str()) {
                    return Err(EngineError::UnknownHitlRequest {
                        run: self.run_id,
                        request_id,
                    });
                }
                if let Some(node_id) = self.machine.fallback_node().map(str::to_owned) {
                    return self.answer_fallback(request_id, node_id, &answer);
                }
                let text = answer.text.clone().or(answer.option_id.clone());
                self.feed(RunInput::HitlAnswered {
                    request_id: request_id.clone(),
                    decision: answer.decision,
                    text,
                    responder: answer.responder.clone(),
                })
                .map_err(conflict)?;
                let human = self.human_requests.remove(&request_id);
                if let (Some((node_id, attempt)), false) =
                    (human, self.machine.state() == RunState::Done)
                {
                    let result = self.human_output(&node_id, &answer);
                    self.local.push(Local::NodeDone {
                        node_id,
                        attempt,
                        result,
                        duration_us: 0,
                    });
                }
                Ok(())
            }
            Steer::Signal { name, payload } => {
                for firing in self.policy_engine.on_signal(&name, &payload) {
                    self.defer(firing, TriggerSource::Signal, None);
                }
                Ok(())
            }
        }
    }

    /// Applies an answer to a fallback request (a node's last attempt failed): the option
    /// `retry`, `skip` (with the node's output in `text`), `replan` or `fail`; a rejection
    /// fails and a bare approval retries. A skip's output must pass the node's contract, or
    /// the answer is refused and the request stays pending.
    fn answer_fallback(
        &mut self,
        request_id: String,
        node_id: String,
        answer: &HitlAnswer,
    ) -> Result<(), EngineError> {
        let invalid = |field: &str, message: String| EngineError::InvalidAnswer {
            request_id: request_id.clone(),
            field: field.to_owned(),
            message,
        };
        let chosen = answer.option_id.clone().or_else(|| {
            answer
                .text
                .clone()
                .filter(|t| FallbackChoice::OPTIONS.contains(&t.as_str()))
        });
        let text = match answer.decision {
            HitlDecision::Reject => answer.text.clone(),
            HitlDecision::Approve | HitlDecision::Option | HitlDecision::Freeform => chosen,
        };
        let choice = FallbackChoice::of(answer.decision, text.as_deref())
            .map_err(|message| invalid("optionId", message))?;
        let output = match choice {
            FallbackChoice::Skip => Some(
                self.skip_output(&node_id, answer)
                    .map_err(|(field, message)| invalid(&field, message))?,
            ),
            FallbackChoice::Retry | FallbackChoice::Replan | FallbackChoice::Fail => None,
        };
        self.feed(RunInput::HitlAnswered {
            request_id,
            decision: answer.decision,
            text,
            responder: answer.responder.clone(),
        })
        .map_err(EngineError::IllegalTransition)?;
        if let Some(output) = output {
            let input = RunInput::NodeSkipped {
                node_id: node_id.clone(),
                output,
            };
            self.feed_ref(&input);
            if let RunInput::NodeSkipped { output, .. } = &input {
                self.evaluate_node_policies(&node_id, output);
            }
        }
        Ok(())
    }

    /// The output a `skip` answer supplies for a node, checked against its contract: a JSON
    /// object of facet values in `text`, or (for a node with one output facet) that facet's
    /// value. Refusals name the offending field.
    fn skip_output(
        &self,
        node_id: &str,
        answer: &HitlAnswer,
    ) -> Result<Map<String, Value>, (String, String)> {
        let Some(text) = answer.text.as_deref().filter(|t| *t != "skip") else {
            return Err((
                "text".to_owned(),
                format!(
                    "a skip of node `{node_id}` supplies its output in `text` (a JSON object of its output facets)"
                ),
            ));
        };
        let given = HitlAnswer {
            decision: HitlDecision::Freeform,
            option_id: None,
            text: Some(text.to_owned()),
            responder: None,
        };
        let output = self
            .human_output(node_id, &given)
            .map_err(|e| ("text".to_owned(), e.message))?;
        if let Some(contract) = self.contracts.get(node_id) {
            let value = Value::Object(output);
            if let Err(errors) = contract.validate_value(&value) {
                let field = errors
                    .first()
                    .and_then(|e| e.split(':').next())
                    .filter(|location| location.starts_with('/'))
                    .map_or_else(|| "text".to_owned(), |location| format!("text{location}"));
                return Err((
                    field,
                    format!(
                        "the output supplied for node `{node_id}` breaks its contract: {}",
                        errors.join("; ")
                    ),
                ));
            }
            let Value::Object(output) = value else {
                return Err(("text".to_owned(), "not an object".to_owned()));
            };
            return Ok(output);
        }
        Ok(output)
    }
}
