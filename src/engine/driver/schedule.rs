//! What follows from the state: deferred policy firings, `human` nodes, dispatch, and the
//! decisions of [`fsm::next`] (drain, complete, fail).

use serde_json::{Map, Value, json};

use super::RunDriver;
use crate::catalog::Then;
use crate::engine::HitlAnswer;
use crate::engine::executor::ExecError;
use crate::engine::validation;
use crate::fsm::{
    self, FallbackChoice, FollowUp, HitlKind, Next, RunError, RunInput, RunState, Trigger,
    TriggerSource,
};
use crate::policy::{EvalData, NodeFacts, PolicyAction};
use crate::store::QueuedFiring;

impl RunDriver {
    /// Applies what follows from the state: deferred policy actions, dispatch, completion,
    /// drain. Loops until the machine waits on something outside.
    pub(super) fn settle(&mut self) {
        loop {
            // After the round's other policies: a budget reached in this round fires last.
            if self.budget_dirty {
                self.budget_dirty = false;
                self.check_budgets();
            }
            match self.machine.state() {
                RunState::Executing => {
                    if !self.started_execution {
                        self.started_execution = true;
                        let data = EvalData {
                            inputs: &self.envelope.inputs,
                            facets: &self.facets,
                            output: None,
                        };
                        let evaluation = self.policy_engine.on_start(&data);
                        for firing in evaluation.firings {
                            self.defer(firing, TriggerSource::Policy, None);
                        }
                    }
                    if let Some(firing) = self.deferred.pop_front() {
                        self.deferred_changed = true;
                        self.fire(firing);
                        continue;
                    }
                    if let Some((node_id, attempt)) = self.human_waiting.pop_front() {
                        self.ask_human(node_id, attempt);
                        continue;
                    }
                    if self.proceed() {
                        continue;
                    }
                    return;
                }
                RunState::Replanning if self.proceed() => {}
                RunState::New
                | RunState::Requesting
                | RunState::Validating
                | RunState::Replanning
                | RunState::Paused
                | RunState::Done => return,
            }
        }
    }

    /// Dispatches ready nodes up to the concurrency bound.
    pub(super) fn dispatch(&mut self) {
        let limit = self.policies.planner.max_concurrency.max(1) as usize;
        while self.machine.in_flight().len() < limit {
            let Some(node_id) = self.ready.pop_front() else {
                break;
            };
            let Some(capability_id) = self.plan_node(&node_id).map(|n| n.capability_id.clone())
            else {
                continue;
            };
            let attempt = self.attempts.get(&node_id).copied().unwrap_or(0) + 1;
            self.feed_or_log(RunInput::NodeDispatched {
                node_id: node_id.clone(),
                capability_id,
                attempt,
            });
            self.execute(node_id, attempt);
        }
    }

    /// Asks [`fsm::next`] what follows from the scheduler's facts and does it; true when
    /// something changed (nodes dispatched or an input fed).
    pub(super) fn proceed(&mut self) -> bool {
        self.release_due();
        let limit = self.policies.planner.max_concurrency.max(1) as usize;
        let in_flight = self.machine.in_flight().len();
        let (mut exhausted, mut ask) = (None, None);
        for node in &self.failed {
            let slot = match self.ladder(node).then {
                Then::Fail => &mut exhausted,
                Then::Hitl => &mut ask,
            };
            slot.get_or_insert(node.as_str());
        }
        let progress = fsm::Progress {
            in_flight,
            ready: self.ready.len(),
            slots: limit.saturating_sub(in_flight),
            nodes: self.progress.len(),
            completed: self.completed_count,
            exhausted,
            ask,
            waiting: self.backoff.len(),
        };
        let goal = || {
            let mut output = Map::new();
            for facet in &self.required_outputs {
                if let Some(v) = self.facets.get(facet) {
                    output.insert(facet.clone(), v.clone());
                }
            }
            let output = Value::Object(output);
            validation::check_goal(&self.envelope, &self.facets, &output).map(|()| output)
        };
        match fsm::next(self.machine.state(), &progress, goal) {
            Next::Wait => false,
            Next::Dispatch => {
                self.dispatch();
                true
            }
            Next::Feed(input) => {
                self.feed_or_log(input);
                true
            }
            Next::Ask(node_id) => {
                self.ask_fallback(node_id);
                true
            }
        }
    }

    /// Moves the nodes whose retry backoff has passed into the ready set.
    fn release_due(&mut self) {
        let now = self.now.millis();
        let due: Vec<String> = self
            .backoff
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(node, _)| node.clone())
            .collect();
        for node in due {
            self.backoff.remove(&node);
            self.ready.push_front(&node);
        }
    }

    /// The fallback ladder's `hitl` step: asks a human what to do with a node whose last
    /// attempt failed (options `retry`, `skip`, `replan`, `fail`).
    fn ask_fallback(&mut self, node_id: String) {
        let Some((attempt, error)) = self.machine.exhausted().get(&node_id).cloned() else {
            return;
        };
        let question = format!(
            "node `{node_id}` failed after its last attempt ({attempt}): {error}. \
             Retry it, skip it with its output, replan, or fail the run?"
        );
        let mut summary = self.contract_summary(Some(&node_id)).unwrap_or(Value::Null);
        if let (Value::Object(map), Some(contract)) = (&mut summary, self.contracts.get(&node_id)) {
            map.insert("outputSchema".to_owned(), contract.schema().clone());
            map.insert("lastError".to_owned(), Value::String(error));
        }
        self.feed_or_log(RunInput::HitlRequested {
            request_id: format!("{node_id}-f{attempt}"),
            kind: HitlKind::Clarify,
            question,
            policy_id: None,
            node_id: Some(node_id),
            options: FallbackChoice::OPTIONS.map(str::to_owned).to_vec(),
            contract_summary: Some(summary),
            on_approve: FollowUp::Continue,
            on_reject: FollowUp::Fail,
        });
    }

    pub(super) fn fire(&mut self, firing: QueuedFiring) {
        let node_id = firing.node_id;
        let trigger = Trigger {
            source: firing.source,
            policy_id: Some(firing.policy_id.clone()),
            node_id: node_id.clone(),
            reason: firing.reason.clone(),
        };
        let input = match firing.action {
            PolicyAction::Replan { .. } => RunInput::PolicyReplan {
                policy_id: firing.policy_id,
                trigger,
            },
            PolicyAction::Pause { .. } => RunInput::PolicyPause {
                policy_id: firing.policy_id,
                trigger,
            },
            PolicyAction::Fail { .. } => RunInput::Fail {
                error: RunError::new(
                    "POLICY_FAILED",
                    format!("policy `{}`: {}", firing.policy_id, firing.reason),
                ),
            },
            PolicyAction::Hitl {
                kind,
                question,
                options,
                on_approve,
                on_reject,
            } => {
                let request_id = format!("{}-{}", firing.policy_id, self.hitl_seq + 1);
                let summary = self.contract_summary(node_id.as_deref());
                RunInput::HitlRequested {
                    request_id,
                    kind,
                    question,
                    policy_id: Some(firing.policy_id),
                    node_id,
                    options,
                    contract_summary: summary,
                    on_approve,
                    on_reject,
                }
            }
        };
        self.feed_or_log(input);
    }

    /// Turns a dispatched `human` node into a HITL request (the node stays in flight).
    pub(super) fn ask_human(&mut self, node_id: String, attempt: u32) {
        if self.machine.in_flight().get(&node_id) != Some(&attempt) {
            return;
        }
        let Some(node) = self.plan_node(&node_id).cloned() else {
            return;
        };
        let question = if node.instructions.is_empty() {
            format!(
                "provide {} for node `{}`",
                node.output_facets.join(", "),
                node.id
            )
        } else {
            node.instructions.join("\n")
        };
        let mut summary = self.contract_summary(Some(&node_id)).unwrap_or(Value::Null);
        if let (Value::Object(map), Some(contract)) = (&mut summary, self.contracts.get(&node_id)) {
            map.insert("outputSchema".to_owned(), contract.schema().clone());
            let inputs: Map<String, Value> = node
                .input_facets
                .iter()
                .filter_map(|f| self.facets.get(f).map(|v| (f.clone(), v.clone())))
                .collect();
            map.insert("inputs".to_owned(), Value::Object(inputs));
        }
        let request_id = format!("{node_id}-{attempt}");
        self.human_requests
            .insert(request_id.clone(), (node_id.clone(), attempt));
        self.feed_or_log(RunInput::HitlRequested {
            request_id,
            kind: HitlKind::Clarify,
            question,
            policy_id: None,
            node_id: Some(node_id),
            options: Vec::new(),
            contract_summary: Some(summary),
            on_approve: FollowUp::Continue,
            on_reject: FollowUp::Fail,
        });
    }

    /// The output a human's answer gives a `human` node: a JSON object in the text is the
    /// output; otherwise the text (or `true` for a bare approval) is the value of the node's
    /// single output facet.
    pub(super) fn human_output(
        &self,
        node_id: &str,
        answer: &HitlAnswer,
    ) -> Result<Map<String, Value>, ExecError> {
        let facets = self
            .plan_node(node_id)
            .map(|n| n.output_facets.clone())
            .unwrap_or_default();
        let text = answer.text.as_deref().or(answer.option_id.as_deref());
        if let Some(Ok(Value::Object(map))) = text.map(serde_json::from_str::<Value>) {
            return Ok(map);
        }
        let value = match (text, answer.decision) {
            (Some(t), _) => Value::String(t.to_owned()),
            (None, crate::fsm::HitlDecision::Approve) => Value::Bool(true),
            (None, _) => Value::Null,
        };
        match facets.as_slice() {
            [facet] if !value.is_null() => Ok(Map::from_iter([(facet.clone(), value)])),
            _ => Err(ExecError::retryable(
                "HUMAN_ANSWER_UNUSABLE",
                format!(
                    "the answer gives no value for {}; answer with a JSON object of those facets",
                    facets.join(", ")
                ),
            )),
        }
    }

    pub(super) fn contract_summary(&self, node_id: Option<&str>) -> Option<Value> {
        let node = node_id.and_then(|id| self.plan_node(id))?;
        let values: Map<String, Value> = node
            .output_facets
            .iter()
            .filter_map(|f| self.facets.get(f).map(|v| (f.clone(), v.clone())))
            .collect();
        Some(json!({
            "capabilityId": node.capability_id,
            "outputFacets": node.output_facets,
            "values": values,
        }))
    }

    pub(super) fn evaluate_node_policies(&mut self, node_id: &str, output: &Map<String, Value>) {
        let Some(node) = self.plan_node(node_id).cloned() else {
            return;
        };
        let data = EvalData {
            inputs: &self.envelope.inputs,
            facets: &self.facets,
            output: Some(output),
        };
        let evaluation = self
            .policy_engine
            .on_node_complete(&NodeFacts::of(&node), &data);
        for w in evaluation.warnings {
            tracing::warn!(run_id = %self.run_id, policy_id = %w.policy_id, "{w}");
        }
        let mut firings = evaluation.firings;
        for (name, value) in output {
            if let Some(v) = value.as_f64() {
                firings.extend(self.policy_engine.on_metric(name, v));
            }
        }
        for firing in firings {
            self.defer(firing, TriggerSource::Policy, Some(node_id.to_owned()));
        }
    }
}
