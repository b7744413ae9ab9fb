//! The projection of events into the driver's bookkeeping and the records stored with them,
//! and the scheduler's plan state: progress, ready set, successor release, validation.

use std::sync::Arc;

use serde_json::Value;

use super::{NodeProgress, Plans, RunDriver, node_of};
use crate::engine::EngineError;
use crate::engine::validation::{self, Validated};
use crate::fsm::{
    EventBody, FallbackChoice, HitlDecision, PendingOutput, Purpose, RunEvent, RunInput,
};
use crate::graph::{NodeState, PlanGraph, PlanNode};
use crate::planner::CompletedNode;
use crate::store::{HitlRecord, HitlStatus, NodeRecord, NodeStatus};

impl RunDriver {
    /// Keeps the actor's bookkeeping in step with an event (live or replayed).
    pub(super) fn observe(
        &mut self,
        event: &RunEvent,
        replay: Option<&Plans>,
    ) -> Result<(), EngineError> {
        let replaying = replay.is_some();
        let now = event.timestamp;
        self.clock.observe(event);
        let accounted = crate::engine::budget::account(&mut self.ledger, &event.body);
        if let (true, EventBody::RunResumed { budgets, .. }) = (accounted.raised, &event.body) {
            for &resource in budgets.keys() {
                self.policy_engine.rearm_budget(resource);
            }
        }
        if (accounted.spent || accounted.raised) && !replaying {
            self.budget_dirty = true;
        }
        match &event.body {
            EventBody::PlanAccepted { version, .. } | EventBody::PlanUpdated { version, .. } => {
                let validated = if let Some(plans) = replay {
                    let snapshot = plans.get(version).ok_or_else(|| EngineError::Corrupt {
                        run: self.run_id,
                        message: format!("plan version {version} is missing"),
                    })?;
                    validation::revalidate(self.run_id, snapshot, &self.catalog)?
                } else {
                    self.pending_plan
                        .take()
                        .ok_or_else(|| EngineError::Corrupt {
                            run: self.run_id,
                            message: "no validated plan to accept".to_owned(),
                        })?
                };
                if !replaying {
                    self.batch.plan = Some(validated.graph.snapshot());
                }
                self.install_plan(validated);
            }
            EventBody::NodeStart { attempt, .. } => {
                let id = node_of(event)?;
                self.set_progress(&id, NodeProgress::Running);
                self.attempts.insert(id.clone(), *attempt);
                self.started.insert(id.clone(), now);
                self.ready.remove(&id);
                if !replaying {
                    self.batch.nodes.push(NodeRecord {
                        node_id: id,
                        attempt: *attempt,
                        status: NodeStatus::Running,
                        started_at: now,
                        finished_at: None,
                        output: None,
                        error: None,
                    });
                }
            }
            EventBody::NodeComplete {
                attempt, output, ..
            } => {
                let id = node_of(event)?;
                // A node a human skipped completes from `Failed`: its last attempt's record
                // is final and stays as it is; the event carries the supplied output.
                let skipped = self.progress.get(&id) == Some(&NodeProgress::Failed);
                self.set_progress(&id, NodeProgress::Completed);
                for (k, v) in output {
                    self.facets.insert(k.clone(), v.clone());
                }
                let capability_id = self
                    .plan_node(&id)
                    .map(|n| n.capability_id.clone())
                    .unwrap_or_default();
                self.completed.push(CompletedNode {
                    node_id: id.clone(),
                    capability_id,
                    output: output.clone(),
                });
                self.release_successors(&id);
                if !replaying && !skipped {
                    self.batch.nodes.push(NodeRecord {
                        node_id: id.clone(),
                        attempt: *attempt,
                        status: NodeStatus::Completed,
                        started_at: self.started.get(&id).copied().unwrap_or(now),
                        finished_at: Some(now),
                        output: None,
                        error: None,
                    });
                }
            }
            EventBody::NodeError {
                attempt,
                will_retry,
                error,
                retry_at,
                ..
            } => {
                let retry = will_retry.then_some(*retry_at);
                let message = error.message.clone();
                self.node_failed(event, *attempt, retry, message, replaying)?;
            }
            EventBody::ValidationError {
                attempt,
                will_retry,
                errors,
                retry_at,
                ..
            } => {
                let retry = will_retry.then_some(*retry_at);
                self.node_failed(event, *attempt, retry, errors.join("; "), replaying)?;
            }
            EventBody::PolicyTriggered { policy_id, .. } => {
                if replaying {
                    self.policy_engine.record_fire(policy_id);
                }
            }
            EventBody::HitlRequest {
                request_id,
                policy_id,
                ..
            } => {
                self.hitl_seq += 1;
                if let (true, Some(p)) = (replaying, policy_id) {
                    self.policy_engine.record_fire(p);
                }
                let request = serde_json::to_value(&event.body).unwrap_or(Value::Null);
                self.hitl_requests
                    .insert(request_id.clone(), request.clone());
                let fallback = match (policy_id, &event.node_id) {
                    (None, Some(node))
                        if self.progress.get(node) == Some(&NodeProgress::Failed) =>
                    {
                        Some(node.clone())
                    }
                    _ => None,
                };
                if let Some(node) = fallback {
                    self.fallback_requests.insert(request_id.clone(), node);
                } else if let (true, None, Some(node)) = (replaying, policy_id, &event.node_id) {
                    let attempt = self.attempts.get(node).copied().unwrap_or(1);
                    self.human_requests
                        .insert(request_id.clone(), (node.clone(), attempt));
                }
                if !replaying {
                    self.batch.hitl.push(HitlRecord {
                        request_id: request_id.clone(),
                        status: HitlStatus::Pending,
                        request,
                        response: None,
                    });
                }
            }
            EventBody::HitlResolved {
                request_id,
                decision,
                text,
                ..
            } => {
                if replaying {
                    self.human_requests.remove(request_id);
                }
                if let Some(node) = self.fallback_requests.remove(request_id) {
                    self.fallback_answered(&node, *decision, text.as_deref());
                }
                let request = self.hitl_requests.remove(request_id).unwrap_or(Value::Null);
                if !replaying {
                    self.batch.hitl.push(HitlRecord {
                        request_id: request_id.clone(),
                        status: HitlStatus::Resolved,
                        request,
                        response: serde_json::to_value(&event.body).ok(),
                    });
                }
            }
            EventBody::Complete { .. } => {
                self.backoff.clear();
                self.fallback_requests.clear();
                let open: Vec<(String, Value)> = self.hitl_requests.drain().collect();
                if !replaying {
                    for (request_id, request) in open {
                        self.batch.hitl.push(HitlRecord {
                            request_id,
                            status: HitlStatus::Resolved,
                            request,
                            response: serde_json::to_value(&event.body).ok(),
                        });
                    }
                }
            }
            EventBody::PlanRequested { .. }
            | EventBody::PlanGenerated { .. }
            | EventBody::PlanRejected { .. }
            | EventBody::RunPaused { .. }
            | EventBody::RunResumed { .. } => {}
        }
        Ok(())
    }

    /// A node attempt failed; `retry` is `Some(retry_at)` when another attempt follows
    /// (after its backoff, when `retry_at` is set).
    pub(super) fn node_failed(
        &mut self,
        event: &RunEvent,
        attempt: u32,
        retry: Option<Option<u64>>,
        message: String,
        replaying: bool,
    ) -> Result<(), EngineError> {
        let id = node_of(event)?;
        let status = if retry.is_some() {
            NodeProgress::Pending
        } else {
            NodeProgress::Failed
        };
        self.set_progress(&id, status);
        match retry {
            Some(Some(at)) => {
                self.backoff.insert(id.clone(), at);
            }
            Some(None) => self.ready.push_front(&id),
            None => {}
        }
        if !replaying {
            self.batch.nodes.push(NodeRecord {
                node_id: id.clone(),
                attempt,
                status: NodeStatus::Failed,
                started_at: self.started.get(&id).copied().unwrap_or(event.timestamp),
                finished_at: Some(event.timestamp),
                output: None,
                error: Some(message),
            });
        }
        Ok(())
    }

    /// What a human's answer to a fallback request does to the node's bookkeeping: `retry`
    /// starts a new round of attempts now, `replan` one after the next plan version; `skip`
    /// completes it (its `node_complete` follows) and `fail` ends the run.
    fn fallback_answered(&mut self, node: &str, decision: HitlDecision, text: Option<&str>) {
        let choice = FallbackChoice::of(decision, text);
        let (Ok(FallbackChoice::Retry) | Ok(FallbackChoice::Replan)) = choice else {
            return;
        };
        let used = self.attempts.get(node).copied().unwrap_or(0);
        self.round_base.insert(node.to_owned(), used);
        self.set_progress(node, NodeProgress::Pending);
        let ready = self
            .plan
            .clone()
            .is_some_and(|graph| self.preds_done(&graph, node));
        if choice == Ok(FallbackChoice::Retry) && ready {
            self.ready.push_front(node);
        }
    }

    pub(super) fn plan_node(&self, id: &str) -> Option<&PlanNode> {
        self.plan.as_deref().and_then(|p| p.node(id))
    }

    pub(super) fn set_progress(&mut self, id: &str, next: NodeProgress) {
        let previous = self.progress.insert(id.to_owned(), next);
        if previous == Some(NodeProgress::Completed) {
            self.completed_count -= 1;
        }
        if next == NodeProgress::Completed {
            self.completed_count += 1;
        }
        if next == NodeProgress::Failed {
            self.failed.insert(id.to_owned());
        } else if previous == Some(NodeProgress::Failed) {
            self.failed.remove(id);
        }
    }

    pub(super) fn install_plan(&mut self, validated: Validated) {
        let graph = validated.graph;
        self.contracts = validated.contracts;
        for node in graph.nodes() {
            self.progress
                .entry(node.id.clone())
                .or_insert(NodeProgress::Pending);
        }
        self.progress.retain(|id, _| graph.contains(id));
        self.completed_count = self
            .progress
            .values()
            .filter(|p| **p == NodeProgress::Completed)
            .count();
        self.failed = self
            .progress
            .iter()
            .filter(|(_, p)| **p == NodeProgress::Failed)
            .map(|(id, _)| id.clone())
            .collect();
        let catalog = self.catalog.clone();
        // One shared copy per capability the plan uses, however many nodes use it.
        self.caps.clear();
        for node in graph.nodes() {
            if !self.caps.contains_key(&node.capability_id)
                && let Some(cap) = catalog.registry.get(&node.capability_id)
            {
                self.caps
                    .insert(cap.capability_id.clone(), Arc::new(cap.clone()));
            }
        }
        self.backoff.retain(|id, _| graph.contains(id));
        self.ready.clear();
        for id in graph.topo_order() {
            if self.progress.get(id) == Some(&NodeProgress::Pending)
                && !self.backoff.contains_key(id)
                && self.preds_done(&graph, id)
            {
                self.ready.push_back(id);
            }
        }
        self.plan = Some(graph);
    }

    pub(super) fn preds_done(&self, graph: &PlanGraph, id: &str) -> bool {
        graph
            .predecessors(id)
            .all(|p| self.progress.get(p) == Some(&NodeProgress::Completed))
    }

    pub(super) fn release_successors(&mut self, id: &str) {
        let Some(graph) = self.plan.clone() else {
            return;
        };
        for succ in graph.successors(id) {
            if self.progress.get(succ) == Some(&NodeProgress::Pending)
                && self.preds_done(&graph, succ)
            {
                self.ready.push_back(succ);
            }
        }
    }

    pub(super) fn validate(&mut self, pending: PendingOutput) {
        let PendingOutput {
            output,
            diagnostics: reply,
        } = pending;
        let catalog = self.catalog.clone();
        let state_of = |id: &str| match self.progress.get(id) {
            Some(NodeProgress::Completed) => NodeState::Completed,
            Some(NodeProgress::Running) => NodeState::Running,
            Some(NodeProgress::Pending | NodeProgress::Failed) | None => NodeState::Pending,
        };
        let result = validation::validate_output(
            &output,
            reply,
            self.machine.purpose(),
            self.plan.as_deref(),
            &state_of,
            &self.envelope,
            &self.required_outputs,
            &self.facets,
            &self.policies,
            &catalog,
        );
        match result {
            Ok(validated) => {
                let input = match self.machine.purpose() {
                    Purpose::Initial => RunInput::DraftValid {
                        nodes: validated.graph.len(),
                        edges: validated.graph.edges().len(),
                        warnings: validated.warnings.clone(),
                    },
                    Purpose::Replan => RunInput::DeltaValid {
                        diff: self
                            .plan
                            .as_deref()
                            .map(|p| p.diff(&validated.graph))
                            .unwrap_or_default(),
                        warnings: validated.warnings.clone(),
                    },
                };
                self.pending_plan = Some(validated);
                self.feed_or_log(input);
            }
            Err(diagnostics) => self.feed_or_log(RunInput::PlanInvalid { diagnostics }),
        }
    }
}
