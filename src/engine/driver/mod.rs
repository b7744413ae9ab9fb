//! The run driver, sans-IO: everything one run's actor decides, without a runtime or a store.
//!
//! The driver takes what happened (a planner answer, a node result, an operator's request, a
//! timer), feeds the machine, keeps the scheduler (progress, ready set, successors, `human`
//! nodes, deferred policy firings) and projects every event into the records stored with it.
//! [`RunDriver::ready`] then hands the shell (`actor.rs`) what to do, in the style of raft-rs's
//! `Ready`: the batch to commit, and the planner calls and node executions to start once the
//! commit is durable. The shell only loops, commits, publishes and spawns.

mod inputs;
mod project;
mod ready;
mod schedule;
#[cfg(all(test, feature = "demo"))]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::EngineError;
use super::catalog_state::CatalogState;
use super::executor::{ExecError, NodeCall};
use super::idempotency::PendingRequest;
use super::validation::Validated;
use crate::catalog::{Capability, CompiledContract, ExecutorSpec};
use crate::envelope::RunEnvelope;
use crate::fsm::{
    Command, FsmError, Limits, PlanCall, Purpose, RunError, RunEvent, RunInput, RunMachine,
    RunState,
};
use crate::fsm::{NodeSpend, TokenUsage, TriggerSource};
use crate::graph::{PlanGraph, PlanSnapshot};
use crate::ids::{RunId, Timestamp};
use crate::planner::{CompletedNode, PlanRequest};
use crate::policy::{Ladder, Ledger, NormalizedPolicies, PolicyEngine, Pricing};
use crate::store::{
    CommitBatch, HitlRecord, NodeRecord, QueuedFiring, RequestRecord, RunHead, RunStatus,
};

use super::clock::ExecutionClock;

/// The stored plan versions of a run, by version (what a restore revalidates).
pub(crate) type Plans = BTreeMap<u32, PlanSnapshot>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NodeProgress {
    Pending,
    Running,
    Completed,
    Failed,
}

/// Work to start once the current batch is committed. Short-lived (built in a round,
/// performed after its commit), so its size matters less than not allocating per step.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum After {
    /// Call the planner (call id, request).
    CallPlanner(u64, PlanRequest),
    /// Execute a node with its capability.
    Execute(NodeCall, Arc<Capability>),
}

/// A result the driver produced itself, handled as the next round (not in this one).
#[derive(Debug)]
pub(crate) enum Local {
    /// A node attempt ended without running (its capability is gone, a human answered).
    NodeDone {
        node_id: String,
        attempt: u32,
        result: Result<Map<String, Value>, ExecError>,
        duration_us: u64,
    },
}

/// What one round produced: the batch to commit, then what to start after it.
#[derive(Debug, Default)]
pub(crate) struct Ready {
    /// The commit, if anything changed.
    pub commit: Option<CommitBatch>,
    /// Planner calls and executions to start once the commit is durable.
    pub after: Vec<After>,
    /// Rounds the driver queued for itself.
    pub local: Vec<Local>,
}

#[derive(Debug, Default)]
struct Batch {
    events: Vec<RunEvent>,
    envelope: Option<Value>,
    plan: Option<PlanSnapshot>,
    nodes: Vec<NodeRecord>,
    hitl: Vec<HitlRecord>,
}

/// One run's decisions.
#[derive(Debug)]
pub(crate) struct RunDriver {
    run_id: RunId,
    machine: RunMachine,
    planner_name: String,
    catalog: Arc<CatalogState>,
    /// The time of the current round.
    now: Timestamp,
    envelope: Arc<RunEnvelope>,
    required_outputs: Vec<String>,
    policies: NormalizedPolicies,
    policy_engine: PolicyEngine,
    /// Budgets and spend, from the events.
    ledger: Ledger,
    /// What model tokens cost.
    pricing: Arc<Pricing>,
    /// Spend or limits changed since `onBudget` policies were last checked.
    budget_dirty: bool,
    plan: Option<Arc<PlanGraph>>,
    pending_plan: Option<Validated>,
    contracts: HashMap<String, Arc<CompiledContract>>,
    progress: HashMap<String, NodeProgress>,
    completed_count: usize,
    failed: BTreeSet<String>,
    caps: HashMap<String, Arc<Capability>>,
    attempts: HashMap<String, u32>,
    /// Attempts a node used before its current round of the fallback ladder (a human's
    /// `retry` or a `replan` answer starts a new round).
    round_base: HashMap<String, u32>,
    /// Nodes waiting for a retry's backoff: node → when the attempt is due (ms since the
    /// epoch, the `retryAt` of their `node_error` / `validation_error`).
    backoff: BTreeMap<String, u64>,
    /// Open fallback requests: request id → the node whose last attempt failed.
    fallback_requests: HashMap<String, String>,
    started: HashMap<String, Timestamp>,
    ready: ready::ReadySet,
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
    local: Vec<Local>,
    finished: bool,
}

pub(crate) fn limits_of(policies: &NormalizedPolicies) -> Limits {
    Limits {
        max_attempts: policies.planner.max_attempts,
        max_replans: policies.planner.max_replans,
    }
}

fn node_of(event: &RunEvent) -> Result<String, EngineError> {
    event.node_id.clone().ok_or_else(|| EngineError::Corrupt {
        run: event.run_id,
        message: format!("`{}` event {} has no node id", event.kind(), event.seq),
    })
}

impl RunDriver {
    /// A driver for a run whose machine is `machine` (new, or restored from events).
    pub(crate) fn new(
        envelope: RunEnvelope,
        policies: NormalizedPolicies,
        machine: RunMachine,
        planner_name: String,
        catalog: Arc<CatalogState>,
        now: Timestamp,
    ) -> Self {
        let required_outputs = envelope.output_contract.required_facets();
        Self {
            run_id: machine.run_id(),
            machine,
            planner_name,
            catalog,
            now,
            required_outputs,
            policy_engine: PolicyEngine::new(&policies.runtime),
            ledger: Ledger::new(policies.budgets.clone()),
            pricing: Arc::default(),
            budget_dirty: false,
            policies,
            plan: None,
            pending_plan: None,
            contracts: HashMap::new(),
            progress: HashMap::new(),
            completed_count: 0,
            failed: BTreeSet::new(),
            caps: HashMap::new(),
            attempts: HashMap::new(),
            round_base: HashMap::new(),
            backoff: BTreeMap::new(),
            fallback_requests: HashMap::new(),
            started: HashMap::new(),
            ready: ready::ReadySet::new(),
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
            created_at: now,
            hitl_requests: HashMap::new(),
            hitl_seq: 0,
            planner_call: 0,
            batch: Batch::default(),
            after: Vec::new(),
            local: Vec::new(),
            finished: false,
            envelope: Arc::new(envelope),
        }
    }

    /// Starts a new run: the envelope is stored with its first commit.
    pub(crate) fn start(&mut self, raw_envelope: Value) -> Result<(), FsmError> {
        self.batch.envelope = Some(raw_envelope);
        self.feed(RunInput::Start)
    }

    /// Rebuilds the bookkeeping from a restored machine's events, the stored plan versions
    /// and the stored queue of firings.
    pub(crate) fn restore(
        &mut self,
        created_at: Option<Timestamp>,
        events: &[RunEvent],
        plans: &Plans,
        queued: Vec<QueuedFiring>,
    ) -> Result<(), EngineError> {
        if let Some(at) = created_at {
            self.created_at = at;
        }
        for event in events {
            self.observe(event, Some(plans))?;
        }
        self.started_execution = self.machine.plan_version() > 0;
        // Queued firings were counted when they fired; their policy_triggered events (which
        // replay counts) are committed together with their removal from the queue.
        for firing in &queued {
            self.policy_engine.record_fire(&firing.policy_id);
        }
        self.deferred_stored = !queued.is_empty();
        self.deferred = queued.into();
        Ok(())
    }

    /// Prices model tokens with `pricing` (the engine's table).
    pub(crate) fn set_pricing(&mut self, pricing: Arc<Pricing>) {
        self.pricing = pricing;
    }

    /// What a node attempt that ends now spent: its capability's cost, plus `usage` priced
    /// by the table; `None` when that is nothing.
    pub(super) fn attempt_spend(
        &self,
        node_id: &str,
        usage: Option<TokenUsage>,
    ) -> Option<NodeSpend> {
        let capability = self.capability(node_id).map_or(0.0, |c| c.cost);
        let tokens = usage.map_or(0.0, |u| {
            self.pricing
                .price(None, u.prompt_tokens, u.completion_tokens)
        });
        let cost = capability + tokens;
        (cost > 0.0 || usage.is_some()).then_some(NodeSpend { cost, usage })
    }

    /// The ledger with the executing time up to now.
    fn current_ledger(&self) -> Ledger {
        let mut ledger = self.ledger.clone();
        ledger.spend.wall_time_ms = self.clock.elapsed_ms(self.now).unwrap_or(0);
        ledger
    }

    /// `onBudget` policies the spend now reaches fire (applied when the run executes).
    pub(super) fn check_budgets(&mut self) {
        if self.finished {
            return;
        }
        self.ledger.spend.wall_time_ms = self.clock.elapsed_ms(self.now).unwrap_or(0);
        let firings = self
            .policy_engine
            .on_budget(&self.ledger.spend, &self.ledger.limits);
        for firing in firings {
            self.defer(firing, TriggerSource::Policy, None);
        }
    }

    /// Begins a round at `now`.
    pub(crate) fn begin(&mut self, now: Timestamp) {
        self.now = now;
    }

    /// Takes a newer view of the catalog (before validating a planner's answer).
    pub(crate) fn set_catalog(&mut self, catalog: Arc<CatalogState>) {
        self.catalog = catalog;
    }

    /// The machine.
    pub(crate) fn machine(&self) -> &RunMachine {
        &self.machine
    }

    /// Whether the run ended (its `complete` is in the batch or committed).
    pub(crate) fn finished(&self) -> bool {
        self.finished
    }

    /// Whether the driver waits on this node attempt.
    pub(crate) fn awaits(&self, node_id: &str, attempt: u32) -> bool {
        self.machine.in_flight().get(node_id) == Some(&attempt)
    }

    /// Records a request applied in this round (if it came with a key), to be committed
    /// with it.
    pub(crate) fn applied_opt(&mut self, request: Option<PendingRequest>) {
        self.requests.extend(request);
    }

    /// Ends the round: settles what follows from the state, then hands out the batch and
    /// the work to start after it.
    pub(crate) fn ready(&mut self) -> Ready {
        self.settle();
        Ready {
            commit: self.take_commit(),
            after: std::mem::take(&mut self.after),
            local: std::mem::take(&mut self.local),
        }
    }

    /// Milliseconds until the next `onTimeout` policy or retry backoff is due, while
    /// executing.
    pub(crate) fn timeout_in_ms(&self, now: Timestamp) -> Option<u64> {
        if self.machine.state() != RunState::Executing {
            return None;
        }
        let timeout = match (
            self.policy_engine.next_timeout_ms(),
            self.policy_engine
                .next_wall_time_budget_ms(&self.ledger.limits),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let policy = timeout.and_then(|ms| {
            let elapsed = self.clock.elapsed_ms(now)?;
            Some(ms.saturating_sub(elapsed))
        });
        let backoff = self
            .backoff
            .values()
            .min()
            .map(|due| due.saturating_sub(now.millis()));
        match (policy, backoff) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fails the run with `error` (a dead driver, found by the engine).
    pub(crate) fn fail(&mut self, error: RunError) -> Result<(), FsmError> {
        self.feed(RunInput::Fail { error })
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
        let step = self.machine.apply(input, self.now)?;
        super::coverage::record(step.row);
        tracing::debug!(run_id = %self.run_id, from = %from, input = %input.kind(), to = %self.machine.state(), "transition");
        for event in &step.events {
            if let Err(e) = self.observe(event, None) {
                tracing::error!(run_id = %self.run_id, error = %e, "event bookkeeping failed");
            }
        }
        self.batch.events.extend(step.events);
        for command in step.commands {
            match command {
                Command::CallPlanner(call) => self.call_planner(call),
                Command::Validate(output) => self.validate(output),
                Command::Finish(_) => self.finished = true,
            }
        }
        Ok(())
    }

    fn feed_or_log(&mut self, input: RunInput) {
        self.feed_ref(&input);
    }

    fn capability(&self, node_id: &str) -> Option<&Arc<Capability>> {
        self.plan_node(node_id)
            .and_then(|n| self.caps.get(&n.capability_id))
    }

    /// The fallback ladder of a node: its capability's `fallback` fields over the run's.
    fn ladder(&self, node_id: &str) -> Ladder {
        let cap = self.capability(node_id);
        Ladder::resolve(
            cap.and_then(|c| c.fallback.as_ref()),
            self.policies.fallback.as_ref(),
            cap.map_or(1, |c| c.max_attempts),
        )
    }

    /// The attempt number within the node's current round of the ladder (from 1).
    fn attempt_in_round(&self, node_id: &str, attempt: u32) -> u32 {
        attempt.saturating_sub(self.round_base.get(node_id).copied().unwrap_or(0))
    }

    pub(crate) fn status(&self) -> RunStatus {
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

    /// The batch of this round as a commit (the run head, the queue if it changed, the
    /// requests applied), or `None` when nothing changed.
    fn take_commit(&mut self) -> Option<CommitBatch> {
        let batch = std::mem::take(&mut self.batch);
        let queued = self.queue_change();
        let requests = std::mem::take(&mut self.requests);
        if batch.events.is_empty()
            && batch.envelope.is_none()
            && queued.is_none()
            && requests.is_empty()
        {
            return None;
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
        Some(CommitBatch {
            run_id: self.run_id,
            head,
            envelope: batch.envelope,
            events,
            plan: batch.plan,
            nodes: batch.nodes,
            hitl: batch.hitl,
            queued,
            requests,
        })
    }

    /// Builds the planner call to start after the commit.
    fn call_planner(&mut self, call: PlanCall) {
        self.planner_call += 1;
        let id = self.planner_call;
        let catalog = self.catalog.clone();
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
            budget: self.current_ledger(),
        };
        self.after.push(After::CallPlanner(id, request));
    }

    /// Builds the node call to start after the commit (a `human` node asks instead).
    pub(super) fn execute(&mut self, node_id: String, attempt: u32) {
        let Some(plan) = self.plan.clone() else {
            return;
        };
        let Some(node) = plan.node(&node_id) else {
            return;
        };
        let Some(cap) = self.caps.get(&node.capability_id).cloned() else {
            self.local.push(Local::NodeDone {
                node_id,
                attempt,
                result: Err(ExecError::fatal(
                    "CAPABILITY_NOT_REGISTERED",
                    format!("capability `{}` is gone", node.capability_id),
                )),
                duration_us: 0,
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
        let call = NodeCall {
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
            usage: Default::default(),
        };
        if matches!(cap.executor, ExecutorSpec::Human) {
            // Asked in this same round, so `node_start` and its `hitl_request` commit together.
            self.human_waiting.push_back((node_id, attempt));
            return;
        }
        self.after.push(After::Execute(call, cap));
    }
}
