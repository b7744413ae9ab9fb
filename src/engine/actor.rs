//! The run actor: one task per live run.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};

use super::idempotency::{PendingRequest, Steer};
use super::validation::{self, Validated};
use super::{EngineError, HitlAnswer, Inner, Steered};
use crate::catalog::{Capability, CompiledContract, ExecutorSpec};
use crate::envelope::RunEnvelope;
use crate::fsm::{
    self, Command, EventBody, FollowUp, FsmError, HitlKind, Limits, Next, PendingOutput, PlanCall,
    Purpose, RunError, RunEvent, RunInput, RunMachine, RunState, Trigger, TriggerSource,
};
use crate::graph::{NodeState, PlanGraph, PlanNode};
use crate::ids::{RunId, Timestamp};
use crate::planner::{CompletedNode, PlanRequest, PlanResponse, Planner, PlannerError};
use crate::policy::{EvalData, Firing, NodeFacts, NormalizedPolicies, PolicyAction, PolicyEngine};
use crate::store::{
    CommitBatch, HitlRecord, HitlStatus, NodeRecord, NodeStatus, QueuedFiring, RequestRecord,
    RunHead, RunStatus,
};

use super::clock::ExecutionClock;

use super::executor::{self, ExecError, NodeCall, Work};

/// Everything a run actor receives.
pub(crate) enum Msg {
    NodeDone {
        node_id: String,
        attempt: u32,
        result: Result<Map<String, Value>, ExecError>,
        duration_ms: u64,
    },
    Planned {
        call: u64,
        result: Result<PlanResponse, PlannerError>,
        latency_ms: u64,
    },
    Control {
        control: Steer,
        /// The idempotency key it came with, recorded with the commit that applies it.
        request: Option<PendingRequest>,
        reply: oneshot::Sender<Result<Steered, EngineError>>,
    },
    Timer,
    /// Nothing arrived, but follow-ups are due (a `human` node waits for its request).
    Wake,
    Shutdown,
}

/// Why a run actor stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Exit {
    /// The run ended (its `complete` event is committed).
    Ended,
    /// The engine asked it to stop; the run resumes when the engine is opened again.
    Shutdown,
    /// It stopped without ending the run, for the reason given.
    Stranded(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Pending,
    Running,
    Completed,
    Failed,
}

/// Work to do once the current batch is committed.
enum After {
    CallPlanner(PlanCall),
    Execute { node_id: String, attempt: u32 },
}

#[derive(Default)]
struct Batch {
    events: Vec<RunEvent>,
    envelope: Option<Value>,
    plan: Option<crate::graph::PlanSnapshot>,
    nodes: Vec<NodeRecord>,
    hitl: Vec<HitlRecord>,
}

pub(crate) struct RunActor {
    inner: Arc<Inner>,
    run_id: RunId,
    machine: RunMachine,
    planner: Arc<dyn Planner>,
    envelope: Arc<RunEnvelope>,
    required_outputs: Vec<String>,
    policies: NormalizedPolicies,
    policy_engine: PolicyEngine,
    plan: Option<Arc<PlanGraph>>,
    pending_plan: Option<Validated>,
    contracts: HashMap<String, Arc<CompiledContract>>,
    progress: HashMap<String, Progress>,
    completed_count: usize,
    failed: BTreeSet<String>,
    caps: HashMap<String, Arc<Capability>>,
    attempts: HashMap<String, u32>,
    started: HashMap<String, Timestamp>,
    ready: VecDeque<String>,
    facets: Map<String, Value>,
    completed: Vec<CompletedNode>,
    /// Acknowledged firings waiting for the run to execute, oldest first; stored with every
    /// commit that changes it.
    deferred: VecDeque<QueuedFiring>,
    /// Whether `deferred` changed since the last commit.
    deferred_changed: bool,
    /// Whether the store holds a non-empty queue for this run.
    deferred_stored: bool,
    /// What `onTimeout` policies measure.
    clock: ExecutionClock,
    /// Requests with an idempotency key applied since the last commit.
    requests: Vec<PendingRequest>,
    /// Dispatched `human` nodes waiting for their HITL request, in dispatch order.
    human_waiting: VecDeque<(String, u32)>,
    /// Open HITL requests that stand for a `human` node: request id → (node, attempt).
    human_requests: HashMap<String, (String, u32)>,
    started_execution: bool,
    created_at: Timestamp,
    hitl_requests: HashMap<String, Value>,
    hitl_seq: u32,
    planner_call: u64,
    batch: Batch,
    after: Vec<After>,
    local: VecDeque<Msg>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    finished: bool,
}

fn limits_of(policies: &NormalizedPolicies) -> Limits {
    Limits {
        max_attempts: policies.planner.max_attempts,
        max_replans: policies.planner.max_replans,
    }
}

impl RunActor {
    fn build(
        inner: Arc<Inner>,
        run_id: RunId,
        envelope: RunEnvelope,
        policies: NormalizedPolicies,
        machine: RunMachine,
        planner: Arc<dyn Planner>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let required_outputs = envelope.output_contract.required_facets();
        Self {
            inner,
            run_id,
            machine,
            planner,
            required_outputs,
            policy_engine: PolicyEngine::new(&policies.runtime),
            policies,
            plan: None,
            pending_plan: None,
            contracts: HashMap::new(),
            progress: HashMap::new(),
            completed_count: 0,
            failed: BTreeSet::new(),
            caps: HashMap::new(),
            attempts: HashMap::new(),
            started: HashMap::new(),
            ready: VecDeque::new(),
            facets: envelope.inputs.clone(),
            completed: Vec::new(),
            deferred: VecDeque::new(),
            deferred_changed: false,
            deferred_stored: false,
            clock: ExecutionClock::default(),
            requests: Vec::new(),
            human_waiting: VecDeque::new(),
            human_requests: HashMap::new(),
            started_execution: false,
            created_at: Timestamp::now(),
            hitl_requests: HashMap::new(),
            hitl_seq: 0,
            planner_call: 0,
            batch: Batch::default(),
            after: Vec::new(),
            local: VecDeque::new(),
            tx,
            rx,
            finished: false,
            envelope: Arc::new(envelope),
        }
    }

    /// Validates the envelope, commits the run's creation with its `plan_requested` event.
    pub(crate) async fn create(
        inner: Arc<Inner>,
        envelope: RunEnvelope,
        request: Option<PendingRequest>,
    ) -> Result<Self, EngineError> {
        let policies = validation::check_envelope(&envelope, &inner.catalog())?;
        let raw = serde_json::to_value(&envelope).map_err(|e| EngineError::InvalidEnvelope {
            field: "$".to_owned(),
            message: e.to_string(),
        })?;
        let run_id = RunId::new();
        let machine = RunMachine::new(run_id, limits_of(&policies));
        let planner = inner
            .planner_for(envelope.planner.as_deref())
            .ok_or_else(|| EngineError::InvalidEnvelope {
                field: "planner".to_owned(),
                message: format!(
                    "unknown planner `{}`; this engine has {}",
                    envelope.planner.as_deref().unwrap_or_default(),
                    inner.planner_names().join(", ")
                ),
            })?;
        let mut actor = Self::build(inner, run_id, envelope, policies, machine, planner);
        actor.batch.envelope = Some(raw);
        actor.requests.extend(request);
        actor
            .feed(RunInput::Start)
            .map_err(EngineError::IllegalTransition)?;
        actor.commit().await?;
        Ok(actor)
    }

    /// Rebuilds a run's machine and bookkeeping from its committed events.
    async fn restore(inner: Arc<Inner>, run_id: RunId) -> Result<Self, EngineError> {
        let store = inner.store.clone();
        let raw = store
            .envelope(run_id)?
            .ok_or(EngineError::RunNotFound(run_id))?;
        let envelope: RunEnvelope =
            serde_json::from_value(raw).map_err(|e| EngineError::Corrupt {
                run: run_id,
                message: format!("stored envelope does not decode: {e}"),
            })?;
        let policies =
            crate::policy::normalize(&envelope.policies).map_err(|e| EngineError::Corrupt {
                run: run_id,
                message: format!("stored policies do not normalize: {e}"),
            })?;
        let events = store.events_after(run_id, 0, usize::MAX)?;
        let machine = RunMachine::restore(run_id, limits_of(&policies), &events).map_err(|e| {
            EngineError::Corrupt {
                run: run_id,
                message: format!("the event log does not replay: {e}"),
            }
        })?;
        let planner = inner
            .planner_for(envelope.planner.as_deref())
            .ok_or_else(|| EngineError::Corrupt {
                run: run_id,
                message: "the run names a planner this engine lacks".to_owned(),
            })?;
        let mut actor = Self::build(inner, run_id, envelope, policies, machine, planner);
        if let Some(head) = store.run_head(run_id)? {
            actor.created_at = head.created_at;
        }
        for event in &events {
            actor.observe(event, true)?;
        }
        actor.started_execution = actor.machine.plan_version() > 0;
        // Queued firings were counted when they fired; their policy_triggered events (which
        // replay counts) are committed together with their removal from the queue.
        let queued = store.queued_firings(run_id)?;
        for firing in &queued {
            actor.policy_engine.record_fire(&firing.policy_id);
        }
        actor.deferred_stored = !queued.is_empty();
        actor.deferred = queued.into();
        Ok(actor)
    }

    /// Rebuilds a run from its committed events and decides how to continue it.
    pub(crate) async fn recover(inner: Arc<Inner>, run_id: RunId) -> Result<Self, EngineError> {
        let mut actor = Self::restore(inner, run_id).await?;
        tracing::info!(run_id = %run_id, state = %actor.machine.state(), seq = actor.machine.seq(), "recovering run");
        actor.resume_after_restart();
        actor.settle();
        actor.commit().await?;
        Ok(actor)
    }

    /// Ends a run whose driver died: rebuilds it from its committed events (whatever the dead
    /// driver had not committed is lost) and commits `complete{failed}` with `DRIVER_FAILED`.
    pub(crate) async fn fail_dead_driver(
        inner: Arc<Inner>,
        run_id: RunId,
        why: &str,
    ) -> Result<(), EngineError> {
        let mut actor = Self::restore(inner, run_id).await?;
        if actor.machine.state() == RunState::Done {
            return Ok(());
        }
        let error = RunError::new("DRIVER_FAILED", format!("the run's driver died: {why}"));
        actor
            .feed(RunInput::Fail { error })
            .map_err(EngineError::IllegalTransition)?;
        actor.commit().await
    }

    fn resume_after_restart(&mut self) {
        match self.machine.state() {
            RunState::Requesting => {
                let call = self.machine.plan_call();
                self.after.push(After::CallPlanner(call));
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
                    };
                    self.feed_or_log(input);
                }
            }
            RunState::New | RunState::Done => {}
        }
    }

    pub(crate) fn run_id(&self) -> RunId {
        self.run_id
    }

    pub(crate) fn sender(&self) -> mpsc::UnboundedSender<Msg> {
        self.tx.clone()
    }

    /// The actor loop: one message, one round, one commit. Returns why it stopped.
    pub(crate) async fn run(mut self) -> Exit {
        self.perform_after().await;
        while !self.finished {
            let msg = match self.local.pop_front() {
                Some(msg) => msg,
                None => match self.next_message().await {
                    Some(msg) => msg,
                    None => return Exit::Shutdown,
                },
            };
            let reply = match msg {
                Msg::Shutdown => return Exit::Shutdown,
                Msg::NodeDone {
                    node_id,
                    attempt,
                    result,
                    duration_ms,
                } => {
                    self.on_node_done(node_id, attempt, result, duration_ms);
                    None
                }
                Msg::Planned {
                    call,
                    result,
                    latency_ms,
                } => {
                    self.on_planned(call, result, latency_ms);
                    None
                }
                Msg::Control {
                    control,
                    request,
                    reply,
                } => {
                    let applied = self.on_control(control);
                    if let (Ok(()), Some(request)) = (&applied, request) {
                        self.requests.push(request);
                    }
                    Some((applied, reply))
                }
                Msg::Wake => None,
                Msg::Timer => {
                    self.on_timer();
                    None
                }
            };
            self.settle();
            let committed = self.commit().await;
            let failed = committed.as_ref().err().map(ToString::to_string);
            if let Some((result, reply)) = reply {
                let steered = Steered {
                    status: self.status(),
                    state: self.machine.state(),
                    replayed: false,
                };
                let _ = reply.send(committed.and(result).map(|()| steered));
            }
            if let Some(e) = failed {
                // What the machine applied is not stored: this driver cannot go on, and a
                // restart continues from the last commit.
                tracing::error!(run_id = %self.run_id, error = %e, "commit failed; the run stops here and resumes on restart");
                return Exit::Stranded(format!("a commit failed: {e}"));
            }
            self.perform_after().await;
        }
        Exit::Ended
    }

    async fn next_message(&mut self) -> Option<Msg> {
        let deadline = self.timeout_deadline();
        match deadline {
            Some(at) => tokio::select! {
                msg = self.rx.recv() => msg,
                () = tokio::time::sleep_until(at) => Some(Msg::Timer),
            },
            None => self.rx.recv().await,
        }
    }

    fn timeout_deadline(&self) -> Option<tokio::time::Instant> {
        if self.machine.state() != RunState::Executing {
            return None;
        }
        let ms = self.policy_engine.next_timeout_ms()?;
        let elapsed = self.clock.elapsed_ms(Timestamp::now())?;
        let wait = ms.saturating_sub(elapsed);
        Some(tokio::time::Instant::now() + Duration::from_millis(wait))
    }

    fn on_timer(&mut self) {
        let Some(elapsed) = self.clock.elapsed_ms(Timestamp::now()) else {
            return;
        };
        for firing in self.policy_engine.on_timeout(elapsed) {
            self.defer(firing, TriggerSource::Policy, None);
        }
    }

    /// Queues a firing; it is applied when the run executes, and stored until then.
    fn defer(&mut self, firing: Firing, source: TriggerSource, node_id: Option<String>) {
        self.deferred.push_back(QueuedFiring {
            policy_id: firing.policy_id,
            action: firing.action,
            reason: firing.reason,
            source,
            node_id,
            queued_at: Timestamp::now(),
        });
        self.deferred_changed = true;
    }

    /// Applies one input and handles the commands it produced that are synchronous.
    fn feed(&mut self, input: RunInput) -> Result<(), FsmError> {
        self.feed_input(&input)
    }

    fn feed_ref(&mut self, input: &RunInput) {
        if let Err(e) = self.feed_input(input) {
            tracing::error!(run_id = %self.run_id, error = %e, "input refused");
        }
    }

    fn feed_input(&mut self, input: &RunInput) -> Result<(), FsmError> {
        let from = self.machine.state();
        let step = self.machine.apply(input, Timestamp::now())?;
        super::coverage::record(step.row);
        tracing::debug!(run_id = %self.run_id, from = %from, input = %input.kind(), to = %self.machine.state(), "transition");
        for event in &step.events {
            if let Err(e) = self.observe(event, false) {
                tracing::error!(run_id = %self.run_id, error = %e, "event bookkeeping failed");
            }
        }
        self.batch.events.extend(step.events);
        for command in step.commands {
            match command {
                Command::CallPlanner(call) => self.after.push(After::CallPlanner(call)),
                Command::Validate(output) => self.validate(output),
                Command::Finish(_) => self.finished = true,
            }
        }
        Ok(())
    }

    fn feed_or_log(&mut self, input: RunInput) {
        self.feed_ref(&input);
    }

    /// Keeps the actor's bookkeeping in step with an event (live or replayed).
    fn observe(&mut self, event: &RunEvent, replaying: bool) -> Result<(), EngineError> {
        let now = event.timestamp;
        self.clock.observe(event);
        match &event.body {
            EventBody::PlanAccepted { version, .. } | EventBody::PlanUpdated { version, .. } => {
                let validated = if replaying {
                    let snapshot = self
                        .inner
                        .store
                        .plan_version(self.run_id, *version)?
                        .ok_or_else(|| EngineError::Corrupt {
                            run: self.run_id,
                            message: format!("plan version {version} is missing"),
                        })?;
                    validation::revalidate(self.run_id, &snapshot, &self.inner.catalog())?
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
                self.set_progress(&id, Progress::Running);
                self.attempts.insert(id.clone(), *attempt);
                self.started.insert(id.clone(), now);
                self.ready.retain(|r| *r != id);
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
                self.set_progress(&id, Progress::Completed);
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
                if !replaying {
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
            } => {
                let message = error.message.clone();
                self.node_failed(event, *attempt, *will_retry, message, replaying)?;
            }
            EventBody::ValidationError {
                attempt,
                will_retry,
                errors,
            } => {
                self.node_failed(event, *attempt, *will_retry, errors.join("; "), replaying)?;
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
                if let (true, None, Some(node)) = (replaying, policy_id, &event.node_id) {
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
            EventBody::HitlResolved { request_id, .. } => {
                if replaying {
                    self.human_requests.remove(request_id);
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

    fn node_failed(
        &mut self,
        event: &RunEvent,
        attempt: u32,
        will_retry: bool,
        message: String,
        replaying: bool,
    ) -> Result<(), EngineError> {
        let id = node_of(event)?;
        let status = if will_retry {
            Progress::Pending
        } else {
            Progress::Failed
        };
        self.set_progress(&id, status);
        if will_retry && !self.ready.contains(&id) {
            self.ready.push_front(id.clone());
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

    fn plan_node(&self, id: &str) -> Option<&PlanNode> {
        self.plan.as_deref().and_then(|p| p.node(id))
    }

    fn set_progress(&mut self, id: &str, next: Progress) {
        let previous = self.progress.insert(id.to_owned(), next);
        if previous == Some(Progress::Completed) {
            self.completed_count -= 1;
        }
        if next == Progress::Completed {
            self.completed_count += 1;
        }
        if next == Progress::Failed {
            self.failed.insert(id.to_owned());
        } else if previous == Some(Progress::Failed) {
            self.failed.remove(id);
        }
    }

    fn install_plan(&mut self, validated: Validated) {
        let graph = validated.graph;
        self.contracts = validated.contracts;
        for node in graph.nodes() {
            self.progress
                .entry(node.id.clone())
                .or_insert(Progress::Pending);
        }
        self.progress.retain(|id, _| graph.contains(id));
        self.completed_count = self
            .progress
            .values()
            .filter(|p| **p == Progress::Completed)
            .count();
        self.failed = self
            .progress
            .iter()
            .filter(|(_, p)| **p == Progress::Failed)
            .map(|(id, _)| id.clone())
            .collect();
        let catalog = self.inner.catalog();
        self.caps = graph
            .nodes()
            .filter_map(|n| catalog.registry.get(&n.capability_id))
            .map(|c| (c.capability_id.clone(), Arc::new(c.clone())))
            .collect();
        self.ready.clear();
        for id in graph.topo_order() {
            if self.progress.get(id) == Some(&Progress::Pending) && self.preds_done(&graph, id) {
                self.ready.push_back(id.to_owned());
            }
        }
        self.plan = Some(graph);
    }

    fn preds_done(&self, graph: &PlanGraph, id: &str) -> bool {
        graph
            .predecessors(id)
            .all(|p| self.progress.get(p) == Some(&Progress::Completed))
    }

    fn release_successors(&mut self, id: &str) {
        let Some(graph) = self.plan.clone() else {
            return;
        };
        for succ in graph.successors(id) {
            if self.progress.get(succ) == Some(&Progress::Pending)
                && self.preds_done(&graph, succ)
                && !self.ready.iter().any(|r| r == succ)
            {
                self.ready.push_back(succ.to_owned());
            }
        }
    }

    fn validate(&mut self, pending: PendingOutput) {
        let PendingOutput {
            output,
            diagnostics: reply,
        } = pending;
        let catalog = self.inner.catalog();
        let state_of = |id: &str| match self.progress.get(id) {
            Some(Progress::Completed) => NodeState::Completed,
            Some(Progress::Running) => NodeState::Running,
            Some(Progress::Pending | Progress::Failed) | None => NodeState::Pending,
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

    fn on_planned(
        &mut self,
        call: u64,
        result: Result<PlanResponse, PlannerError>,
        latency_ms: u64,
    ) {
        if call != self.planner_call || self.machine.state() != RunState::Requesting {
            return;
        }
        let input = match result {
            Ok(response) => RunInput::PlanReturned {
                output: Arc::new(response.output),
                planner: self.planner.name().to_owned(),
                latency_ms,
                usage: response.usage,
                diagnostics: response.diagnostics,
            },
            Err(e) => RunInput::PlannerFailed {
                retryable: e.is_retryable(),
                error: e.to_string(),
            },
        };
        self.feed_or_log(input);
    }

    fn on_node_done(
        &mut self,
        node_id: String,
        attempt: u32,
        result: Result<Map<String, Value>, ExecError>,
        duration_ms: u64,
    ) {
        if self.machine.in_flight().get(&node_id) != Some(&attempt) {
            return;
        }
        self.inner
            .metrics
            .node_attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.metrics.node_micros.fetch_add(
            duration_ms.saturating_mul(1000),
            std::sync::atomic::Ordering::Relaxed,
        );
        let max_attempts = self.max_attempts(&node_id);
        let may_retry = attempt < max_attempts;
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
                            duration_ms,
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
                });
            }
        }
    }

    fn evaluate_node_policies(&mut self, node_id: &str, output: &Map<String, Value>) {
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

    fn capability(&self, node_id: &str) -> Option<&Arc<Capability>> {
        self.plan_node(node_id)
            .and_then(|n| self.caps.get(&n.capability_id))
    }

    fn max_attempts(&self, node_id: &str) -> u32 {
        self.capability(node_id)
            .map_or(1, |c| c.max_attempts)
            .max(1)
    }

    fn on_control(&mut self, control: Steer) -> Result<(), EngineError> {
        let conflict = EngineError::IllegalTransition;
        match control {
            Steer::Cancel { reason } => self.feed(RunInput::Cancel { reason }).map_err(conflict),
            Steer::Pause { reason } => self
                .feed(RunInput::OperatorPause { reason })
                .map_err(conflict),
            Steer::Resume { reason } => self.feed(RunInput::Resume { reason }).map_err(conflict),
            Steer::Answer { request_id, answer } => {
                let pending = self.machine.pending_hitl().map(|p| p.request_id.as_str());
                if pending != Some(request_id.as_str()) {
                    return Err(EngineError::UnknownHitlRequest {
                        run: self.run_id,
                        request_id,
                    });
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
                    self.local.push_back(Msg::NodeDone {
                        node_id,
                        attempt,
                        result,
                        duration_ms: 0,
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

    /// Applies what follows from the state: deferred policy actions, dispatch, completion,
    /// drain. Loops until the machine waits on something outside.
    fn settle(&mut self) {
        loop {
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
    fn dispatch(&mut self) {
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
            self.after.push(After::Execute { node_id, attempt });
        }
    }

    /// Asks [`fsm::next`] what follows from the scheduler's facts and does it; true when
    /// something changed (nodes dispatched or an input fed).
    fn proceed(&mut self) -> bool {
        let limit = self.policies.planner.max_concurrency.max(1) as usize;
        let in_flight = self.machine.in_flight().len();
        let progress = fsm::Progress {
            in_flight,
            ready: self.ready.len(),
            slots: limit.saturating_sub(in_flight),
            nodes: self.progress.len(),
            completed: self.completed_count,
            exhausted: self.failed.first().map(String::as_str),
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
        }
    }

    fn fire(&mut self, firing: QueuedFiring) {
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
    fn ask_human(&mut self, node_id: String, attempt: u32) {
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
    fn human_output(
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

    fn contract_summary(&self, node_id: Option<&str>) -> Option<Value> {
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

    /// Commits the batch (if any) and publishes its events.
    async fn commit(&mut self) -> Result<(), EngineError> {
        let batch = std::mem::take(&mut self.batch);
        let queued = self.queue_change();
        let requests = std::mem::take(&mut self.requests);
        if batch.events.is_empty()
            && batch.envelope.is_none()
            && queued.is_none()
            && requests.is_empty()
        {
            return Ok(());
        }
        let now = batch
            .events
            .last()
            .map(|e| e.timestamp)
            .unwrap_or_else(Timestamp::now);
        let status = self.status();
        let requests = requests
            .into_iter()
            .map(|request| RequestRecord {
                key: request.key,
                fingerprint: request.fingerprint,
                run_id: self.run_id,
                created_at: now,
                status,
                state: self.machine.state(),
            })
            .collect();
        let head = RunHead {
            status,
            state: self.machine.state(),
            plan_version: self.machine.plan_version(),
            last_seq: self.machine.seq(),
            created_at: self.created_at,
            updated_at: now,
            objective: self.envelope.objective.clone(),
        };
        let events: Vec<Arc<RunEvent>> = batch.events.into_iter().map(Arc::new).collect();
        let commit = CommitBatch {
            run_id: self.run_id,
            head,
            envelope: batch.envelope,
            events: events.clone(),
            plan: batch.plan,
            nodes: batch.nodes,
            hitl: batch.hitl,
            queued,
            requests,
        };
        self.inner.committer.commit(commit).await?;
        for event in events {
            self.inner.publish(event);
        }
        Ok(())
    }

    fn status(&self) -> RunStatus {
        match self.machine.outcome() {
            Some(outcome) => RunStatus::from(outcome),
            None => RunStatus::Active,
        }
    }

    /// The queue to store with the next commit, if it changed: the whole queue, or an empty
    /// list to remove it. A finished run keeps none.
    fn queue_change(&mut self) -> Option<Vec<QueuedFiring>> {
        if self.machine.state() == RunState::Done {
            self.deferred.clear();
        } else if !self.deferred_changed {
            return None;
        }
        self.deferred_changed = false;
        if self.deferred.is_empty() {
            return std::mem::take(&mut self.deferred_stored).then(Vec::new);
        }
        self.deferred_stored = true;
        Some(self.deferred.iter().cloned().collect())
    }

    /// Performs what waits on the commit: planner calls and node executions.
    async fn perform_after(&mut self) {
        for action in std::mem::take(&mut self.after) {
            match action {
                After::CallPlanner(call) => self.call_planner(call),
                After::Execute { node_id, attempt } => self.execute(node_id, attempt),
            }
        }
    }

    fn call_planner(&mut self, call: PlanCall) {
        self.planner_call += 1;
        let id = self.planner_call;
        self.inner
            .metrics
            .planner_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let catalog = self.inner.catalog();
        let request = PlanRequest {
            run_id: self.run_id,
            purpose: call.purpose,
            phase: call.phase,
            attempt: call.attempt,
            objective: self.envelope.objective.clone(),
            inputs: self.envelope.inputs.clone(),
            facet_values: self.facets.clone(),
            completed: self.completed.clone(),
            required_outputs: self.required_outputs.clone(),
            special_instructions: self.envelope.special_instructions.clone(),
            policies: self.policies.clone(),
            capabilities: catalog.registry.active().cloned().collect(),
            facets: catalog.facets.list().cloned().collect(),
            current_plan: match call.purpose {
                Purpose::Initial => None,
                Purpose::Replan => self.plan.as_deref().map(PlanGraph::snapshot),
            },
            trigger: call.trigger,
            diagnostics: call.diagnostics,
            previous_error: call.error,
        };
        let planner = self.planner.clone();
        let tx = self.tx.clone();
        let started = Instant::now();
        let mut fut = Box::pin(
            AssertUnwindSafe(async move { planner.plan(request).await })
                .catch_unwind()
                .map(|outcome| {
                    outcome.unwrap_or_else(|payload| {
                        Err(PlannerError::Fatal(format!(
                            "the planner panicked: {}",
                            executor::panic_message(payload.as_ref())
                        )))
                    })
                }),
        );
        if let Some(result) = fut.as_mut().now_or_never() {
            self.local.push_back(Msg::Planned {
                call: id,
                result,
                latency_ms: started.elapsed().as_millis() as u64,
            });
            return;
        }
        tokio::spawn(async move {
            let result = fut.await;
            let _ = tx.send(Msg::Planned {
                call: id,
                result,
                latency_ms: started.elapsed().as_millis() as u64,
            });
        });
    }

    fn execute(&mut self, node_id: String, attempt: u32) {
        let Some(plan) = self.plan.clone() else {
            return;
        };
        let Some(node) = plan.node(&node_id) else {
            return;
        };
        let Some(cap) = self.caps.get(&node.capability_id).cloned() else {
            self.local.push_back(Msg::NodeDone {
                node_id,
                attempt,
                result: Err(ExecError::fatal(
                    "CAPABILITY_NOT_REGISTERED",
                    format!("capability `{}` is gone", node.capability_id),
                )),
                duration_ms: 0,
            });
            return;
        };
        let mut instructions = Vec::new();
        if let Some(plan) = self
            .plan
            .as_deref()
            .filter(|p| !p.system_instructions().is_empty())
        {
            instructions.push(plan.system_instructions().to_owned());
        }
        instructions.extend(self.envelope.special_instructions.iter().cloned());
        instructions.extend(node.instructions.iter().cloned());
        let inputs: Map<String, Value> = node
            .input_facets
            .iter()
            .filter_map(|f| self.facets.get(f).map(|v| (f.clone(), v.clone())))
            .collect();
        let mut call = NodeCall {
            run_id: self.run_id,
            idempotency_key: format!("{}/{}", self.run_id, node_id),
            node_id: node_id.clone(),
            attempt,
            capability_id: cap.capability_id.clone(),
            objective: self.envelope.objective.clone(),
            instructions,
            inputs,
            output_schema: self
                .contracts
                .get(&node_id)
                .map_or_else(|| Arc::new(Value::Null), |c| c.shared_schema()),
            executor: None,
        };
        let started = Instant::now();
        let timeout = Duration::from_millis(cap.timeout_ms.max(1));
        let work = match &cap.executor {
            ExecutorSpec::Builtin { handler } => match self.inner.executors.handler(handler) {
                Some(h) => Ok(Work::Handler(h.clone())),
                None => Err(ExecError::fatal(
                    "EXECUTOR_MISSING",
                    format!("no builtin handler named `{handler}`"),
                )),
            },
            ExecutorSpec::Http { .. } => self.typed_executor("http"),
            ExecutorSpec::Llm { .. } => self.typed_executor("llm"),
            ExecutorSpec::Custom { executor_type, .. } => self.typed_executor(executor_type),
            ExecutorSpec::Human => {
                self.human_waiting.push_back((node_id, attempt));
                self.local.push_back(Msg::Wake);
                return;
            }
        };
        let work = match work {
            Ok(work) => work,
            Err(e) => {
                self.local.push_back(Msg::NodeDone {
                    node_id,
                    attempt,
                    result: Err(e),
                    duration_ms: 0,
                });
                return;
            }
        };
        call.executor = Some(cap.executor.clone());
        let mut attempt_fut = Box::pin(executor::attempt(work, call, timeout));
        if let Some(result) = attempt_fut.as_mut().now_or_never() {
            self.local.push_back(Msg::NodeDone {
                node_id,
                attempt,
                result,
                duration_ms: started.elapsed().as_millis() as u64,
            });
            return;
        }
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let result = attempt_fut.await;
            let _ = tx.send(Msg::NodeDone {
                node_id,
                attempt,
                result,
                duration_ms: started.elapsed().as_millis() as u64,
            });
        });
    }

    fn typed_executor(&self, executor_type: &str) -> Result<Work, ExecError> {
        self.inner
            .executors
            .for_type(executor_type)
            .cloned()
            .map(Work::Executor)
            .ok_or_else(|| {
                ExecError::fatal(
                    "EXECUTOR_MISSING",
                    format!("no executor registered for type `{executor_type}`"),
                )
            })
    }
}

fn node_of(event: &RunEvent) -> Result<String, EngineError> {
    event.node_id.clone().ok_or_else(|| EngineError::Corrupt {
        run: event.run_id,
        message: format!("`{}` event {} has no node id", event.kind(), event.seq),
    })
}
