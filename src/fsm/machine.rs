//! The hierarchical run machine: statig states under a `Live` superstate.
//!
//! Sans-IO: [`RunMachine::apply`] takes one [`RunInput`] (with the time it arrived) and
//! returns the events to record and the commands the driver must perform. Nothing here
//! reads a clock, touches the store or spawns work.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use statig::blocking::*;

use super::FsmError;
use super::event::{
    EventBody, FollowUp, HitlDecision, HitlKind, PlanPhase, PlannerOutput, RunError, RunEvent,
    RunOutcome, TokenUsage, Trigger, TriggerSource,
};
use crate::diagnostics::Diagnostic;
use crate::graph::PlanDiff;
use crate::ids::{RunId, Timestamp};

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Created, not started (never persisted: creation and start commit together).
    New,
    /// A planner call is in flight.
    Requesting,
    /// A draft or delta is being checked.
    Validating,
    /// Ready nodes are dispatched.
    Executing,
    /// Dispatch stopped; in-flight nodes drain before a delta is requested.
    Replanning,
    /// Waiting for a human answer or an operator resume.
    Paused,
    /// Terminal.
    Done,
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for InputKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RunState {
    /// Every state, in table order.
    pub const ALL: &'static [RunState] = &[
        Self::New,
        Self::Requesting,
        Self::Validating,
        Self::Executing,
        Self::Replanning,
        Self::Paused,
        Self::Done,
    ];

    /// The snake_case name (stored in the run head, shown by the API).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Requesting => "requesting",
            Self::Validating => "validating",
            Self::Executing => "executing",
            Self::Replanning => "replanning",
            Self::Paused => "paused",
            Self::Done => "done",
        }
    }

    /// Parses [`RunState::as_str`] output.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|s| s.as_str() == name)
    }

    /// True for states under the `Live` superstate.
    pub fn is_live(self) -> bool {
        !matches!(self, Self::New | Self::Done)
    }
}

/// Why the planner is being asked: for the first plan or for a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// The first plan.
    Initial,
    /// A delta against the current plan.
    Replan,
}

/// What the machine receives. Time and ids come in with the input.
#[derive(Debug, Clone, PartialEq)]
pub enum RunInput {
    /// Begin planning.
    Start,
    /// The planner answered.
    PlanReturned {
        /// Draft or delta.
        output: Arc<PlannerOutput>,
        /// Planner name.
        planner: String,
        /// Call latency.
        latency_ms: u64,
        /// Token usage, if reported.
        usage: Option<TokenUsage>,
        /// What reading the reply found.
        diagnostics: Vec<Diagnostic>,
    },
    /// The planner call failed.
    PlannerFailed {
        /// What went wrong.
        error: String,
        /// Whether another attempt may succeed.
        retryable: bool,
    },
    /// The initial draft passed validation.
    DraftValid {
        /// Node count.
        nodes: usize,
        /// Edge count.
        edges: usize,
        /// Non-blocking findings.
        warnings: Vec<Diagnostic>,
    },
    /// The delta passed validation and was merged.
    DeltaValid {
        /// Structural diff between the old and new version.
        diff: PlanDiff,
        /// Non-blocking findings.
        warnings: Vec<Diagnostic>,
    },
    /// The draft or delta failed validation.
    PlanInvalid {
        /// Why.
        diagnostics: Vec<Diagnostic>,
    },
    /// A ready node is being dispatched.
    NodeDispatched {
        /// The node.
        node_id: String,
        /// Its capability.
        capability_id: String,
        /// Attempt number, from 1.
        attempt: u32,
    },
    /// A node produced a valid output.
    NodeSucceeded {
        /// The node.
        node_id: String,
        /// Facet values.
        output: Map<String, Value>,
        /// Attempt wall time.
        duration_ms: u64,
    },
    /// A node attempt failed.
    NodeFailed {
        /// The node.
        node_id: String,
        /// What went wrong.
        error: RunError,
        /// Whether another attempt follows.
        will_retry: bool,
    },
    /// A node's output failed its contract.
    OutputInvalid {
        /// The node.
        node_id: String,
        /// Contract violations.
        errors: Vec<String>,
        /// Whether another attempt follows.
        will_retry: bool,
    },
    /// A runtime policy asks for a replan.
    PolicyReplan {
        /// The policy.
        policy_id: String,
        /// What fired it.
        trigger: Trigger,
    },
    /// A runtime policy asks for a pause.
    PolicyPause {
        /// The policy.
        policy_id: String,
        /// What fired it.
        trigger: Trigger,
    },
    /// A policy or a node asks a human.
    HitlRequested {
        /// Request id, unique within the run.
        request_id: String,
        /// Approval or clarify.
        kind: HitlKind,
        /// The question.
        question: String,
        /// The asking policy.
        policy_id: Option<String>,
        /// The pending node concerned.
        node_id: Option<String>,
        /// Offered options.
        options: Vec<String>,
        /// Summary of the pending work's contract.
        contract_summary: Option<Value>,
        /// What approval leads to.
        on_approve: FollowUp,
        /// What rejection leads to.
        on_reject: FollowUp,
    },
    /// An operator pauses the run.
    OperatorPause {
        /// Why.
        reason: String,
    },
    /// Nothing is in flight any more (Replanning only).
    Drained,
    /// A human answered the pending request.
    HitlAnswered {
        /// The request answered.
        request_id: String,
        /// The decision.
        decision: HitlDecision,
        /// Free text or option id.
        text: Option<String>,
        /// Who answered.
        responder: Option<String>,
    },
    /// An operator resumes a paused run.
    Resume {
        /// Why.
        reason: String,
    },
    /// Every node completed and the goal conditions hold.
    AllDone {
        /// The run's output.
        output: Value,
    },
    /// A fatal error.
    Fail {
        /// What went wrong.
        error: RunError,
    },
    /// A client or operator cancels the run.
    Cancel {
        /// Why.
        reason: String,
    },
}

/// The discriminant of a [`RunInput`], for the edge table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum InputKind {
    Start,
    PlanReturned,
    PlannerFailed,
    DraftValid,
    DeltaValid,
    PlanInvalid,
    NodeDispatched,
    NodeSucceeded,
    NodeFailed,
    OutputInvalid,
    PolicyReplan,
    PolicyPause,
    HitlRequested,
    OperatorPause,
    Drained,
    HitlAnswered,
    Resume,
    AllDone,
    Fail,
    Cancel,
}

impl InputKind {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::PlanReturned => "plan_returned",
            Self::PlannerFailed => "planner_failed",
            Self::DraftValid => "draft_valid",
            Self::DeltaValid => "delta_valid",
            Self::PlanInvalid => "plan_invalid",
            Self::NodeDispatched => "node_dispatched",
            Self::NodeSucceeded => "node_succeeded",
            Self::NodeFailed => "node_failed",
            Self::OutputInvalid => "output_invalid",
            Self::PolicyReplan => "policy_replan",
            Self::PolicyPause => "policy_pause",
            Self::HitlRequested => "hitl_requested",
            Self::OperatorPause => "operator_pause",
            Self::Drained => "drained",
            Self::HitlAnswered => "hitl_answered",
            Self::Resume => "resume",
            Self::AllDone => "all_done",
            Self::Fail => "fail",
            Self::Cancel => "cancel",
        }
    }

    /// Every input kind.
    pub const ALL: &'static [InputKind] = &[
        Self::Start,
        Self::PlanReturned,
        Self::PlannerFailed,
        Self::DraftValid,
        Self::DeltaValid,
        Self::PlanInvalid,
        Self::NodeDispatched,
        Self::NodeSucceeded,
        Self::NodeFailed,
        Self::OutputInvalid,
        Self::PolicyReplan,
        Self::PolicyPause,
        Self::HitlRequested,
        Self::OperatorPause,
        Self::Drained,
        Self::HitlAnswered,
        Self::Resume,
        Self::AllDone,
        Self::Fail,
        Self::Cancel,
    ];
}

impl RunInput {
    /// The input's kind.
    pub fn kind(&self) -> InputKind {
        match self {
            Self::Start => InputKind::Start,
            Self::PlanReturned { .. } => InputKind::PlanReturned,
            Self::PlannerFailed { .. } => InputKind::PlannerFailed,
            Self::DraftValid { .. } => InputKind::DraftValid,
            Self::DeltaValid { .. } => InputKind::DeltaValid,
            Self::PlanInvalid { .. } => InputKind::PlanInvalid,
            Self::NodeDispatched { .. } => InputKind::NodeDispatched,
            Self::NodeSucceeded { .. } => InputKind::NodeSucceeded,
            Self::NodeFailed { .. } => InputKind::NodeFailed,
            Self::OutputInvalid { .. } => InputKind::OutputInvalid,
            Self::PolicyReplan { .. } => InputKind::PolicyReplan,
            Self::PolicyPause { .. } => InputKind::PolicyPause,
            Self::HitlRequested { .. } => InputKind::HitlRequested,
            Self::OperatorPause { .. } => InputKind::OperatorPause,
            Self::Drained => InputKind::Drained,
            Self::HitlAnswered { .. } => InputKind::HitlAnswered,
            Self::Resume { .. } => InputKind::Resume,
            Self::AllDone { .. } => InputKind::AllDone,
            Self::Fail { .. } => InputKind::Fail,
            Self::Cancel { .. } => InputKind::Cancel,
        }
    }
}

/// A planner call the driver must make.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanCall {
    /// First plan or replan.
    pub purpose: Purpose,
    /// Phase label of the call (initial, revision or replan).
    pub phase: PlanPhase,
    /// Attempt number within the purpose, from 1.
    pub attempt: u32,
    /// Why a replan is asked.
    pub trigger: Option<Trigger>,
    /// The previous attempt's diagnostics (for a revision).
    pub diagnostics: Vec<Diagnostic>,
    /// The previous attempt's planner error, if it failed.
    pub error: Option<String>,
}

/// A planner's output awaiting validation, with what reading the reply found.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingOutput {
    /// The draft, delta or unreadable reply.
    pub output: Arc<PlannerOutput>,
    /// Reply findings (`REPLY_*`), judged with the validator's own.
    pub diagnostics: Vec<Diagnostic>,
}

/// What the driver must do after a transition.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Call the planner.
    CallPlanner(PlanCall),
    /// Validate the planner's output (and merge a delta).
    Validate(PendingOutput),
    /// Dispatch ready nodes (or report completion).
    Dispatch,
    /// Wait for in-flight nodes, then feed [`RunInput::Drained`].
    AwaitDrain,
    /// Wait for a human answer or an operator resume.
    AwaitHuman,
    /// The run ended.
    Finish(RunOutcome),
}

/// What one [`RunMachine::apply`] produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Step {
    /// Events to commit, in order (already numbered).
    pub events: Vec<RunEvent>,
    /// Commands to perform after the commit.
    pub commands: Vec<Command>,
}

/// A HITL request the run waits on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingHitl {
    /// Request id.
    pub request_id: String,
    /// The asking policy, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<String>,
    /// The node concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// What approval leads to.
    pub on_approve: FollowUp,
    /// What rejection leads to.
    pub on_reject: FollowUp,
}

/// Limits the machine enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Planner attempts per purpose (initial plan, or each replan).
    pub max_attempts: u32,
    /// Replans per run.
    pub max_replans: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            max_replans: 3,
        }
    }
}

/// The machine's shared storage: everything needed to continue a run, rebuilt from events.
#[derive(Debug, Clone, PartialEq)]
pub struct RunCore {
    run_id: RunId,
    limits: Limits,
    seq: u64,
    plan_version: u32,
    purpose: Purpose,
    attempt: u32,
    replans: u32,
    trigger: Option<Trigger>,
    diagnostics: Vec<Diagnostic>,
    last_error: Option<String>,
    pending_output: Option<PendingOutput>,
    in_flight: BTreeMap<String, u32>,
    hitl: Option<PendingHitl>,
    outcome: Option<RunOutcome>,
}

/// The machine's per-call context: collects what a transition produced. Not persisted.
#[derive(Debug, Default)]
pub struct Ctx {
    now: Timestamp,
    restoring: bool,
    events: Vec<RunEvent>,
    commands: Vec<Command>,
    rejected: Option<String>,
    absorbed: bool,
}

impl RunCore {
    fn emit(&mut self, ctx: &mut Ctx, node_id: Option<&str>, body: EventBody) {
        self.seq += 1;
        ctx.events.push(RunEvent {
            seq: self.seq,
            run_id: self.run_id,
            timestamp: ctx.now,
            plan_version: self.plan_version,
            node_id: node_id.map(str::to_owned),
            body,
        });
    }

    fn reject(ctx: &mut Ctx, why: impl Into<String>) -> Outcome<State> {
        ctx.rejected = Some(why.into());
        Handled
    }

    fn finish(
        &mut self,
        ctx: &mut Ctx,
        status: RunOutcome,
        output: Option<Value>,
        error: Option<RunError>,
    ) -> Outcome<State> {
        self.outcome = Some(status);
        self.hitl = None;
        self.in_flight.clear();
        self.emit(
            ctx,
            None,
            EventBody::Complete {
                status,
                output,
                error,
            },
        );
        Transition(State::done())
    }

    fn phase(&self) -> PlanPhase {
        match (self.purpose, self.attempt) {
            (Purpose::Initial, 1) => PlanPhase::Initial,
            (Purpose::Replan, 1) => PlanPhase::Replan,
            (Purpose::Initial | Purpose::Replan, _) => PlanPhase::Revision,
        }
    }

    fn begin_replan(
        &mut self,
        ctx: &mut Ctx,
        trigger: Trigger,
        node: Option<&str>,
        body: EventBody,
    ) -> Outcome<State> {
        if self.replans >= self.limits.max_replans {
            let message = format!(
                "replan asked by {} but the run already used {} of {} replans",
                describe_trigger(&trigger),
                self.replans,
                self.limits.max_replans
            );
            return self.finish(
                ctx,
                RunOutcome::Failed,
                None,
                Some(RunError::new("REPLANS_EXHAUSTED", message)),
            );
        }
        self.trigger = Some(trigger);
        self.emit(ctx, node, body);
        Transition(State::replanning())
    }
}

fn describe_trigger(trigger: &Trigger) -> String {
    match (&trigger.policy_id, trigger.source) {
        (Some(p), _) => format!("policy `{p}`"),
        (None, TriggerSource::Hitl) => "a hitl answer".to_owned(),
        (None, TriggerSource::Signal) => "a signal".to_owned(),
        (None, TriggerSource::Operator) => "an operator".to_owned(),
        (None, TriggerSource::Policy) => "a policy".to_owned(),
    }
}

#[state_machine(
    initial = "State::new_run()",
    event_identifier = "input",
    state(derive(Debug, Clone, PartialEq, Eq)),
    superstate(derive(Debug))
)]
impl RunCore {
    /// Before `start`. Only `Start` is legal.
    #[state]
    fn new_run(&mut self, context: &mut Ctx, input: &RunInput) -> Outcome<State> {
        match input {
            RunInput::Start => {
                self.purpose = Purpose::Initial;
                self.attempt = 1;
                self.emit(
                    context,
                    None,
                    EventBody::PlanRequested {
                        phase: PlanPhase::Initial,
                        attempt: 1,
                        trigger: None,
                        error: None,
                    },
                );
                Transition(State::requesting())
            }
            RunInput::PlanReturned { .. }
            | RunInput::PlannerFailed { .. }
            | RunInput::DraftValid { .. }
            | RunInput::DeltaValid { .. }
            | RunInput::PlanInvalid { .. }
            | RunInput::NodeDispatched { .. }
            | RunInput::NodeSucceeded { .. }
            | RunInput::NodeFailed { .. }
            | RunInput::OutputInvalid { .. }
            | RunInput::PolicyReplan { .. }
            | RunInput::PolicyPause { .. }
            | RunInput::HitlRequested { .. }
            | RunInput::OperatorPause { .. }
            | RunInput::Drained
            | RunInput::HitlAnswered { .. }
            | RunInput::Resume { .. }
            | RunInput::AllDone { .. }
            | RunInput::Fail { .. }
            | RunInput::Cancel { .. } => Self::reject(context, "the run has not started"),
        }
    }

    /// Every non-terminal state. Handles node results, cancel and fatal errors; rejects the rest.
    #[superstate]
    fn live(&mut self, context: &mut Ctx, input: &RunInput) -> Outcome<State> {
        match input {
            RunInput::NodeSucceeded {
                node_id,
                output,
                duration_ms,
            } => {
                let Some(attempt) = self.in_flight.remove(node_id) else {
                    return Self::reject(context, format!("node `{node_id}` is not in flight"));
                };
                self.emit(
                    context,
                    Some(node_id),
                    EventBody::NodeComplete {
                        attempt,
                        output: output.clone(),
                        duration_ms: *duration_ms,
                    },
                );
                Handled
            }
            RunInput::NodeFailed {
                node_id,
                error,
                will_retry,
            } => {
                let Some(attempt) = self.in_flight.remove(node_id) else {
                    return Self::reject(context, format!("node `{node_id}` is not in flight"));
                };
                self.emit(
                    context,
                    Some(node_id),
                    EventBody::NodeError {
                        attempt,
                        error: error.clone(),
                        will_retry: *will_retry,
                    },
                );
                Handled
            }
            RunInput::OutputInvalid {
                node_id,
                errors,
                will_retry,
            } => {
                let Some(attempt) = self.in_flight.remove(node_id) else {
                    return Self::reject(context, format!("node `{node_id}` is not in flight"));
                };
                self.emit(
                    context,
                    Some(node_id),
                    EventBody::ValidationError {
                        attempt,
                        errors: errors.clone(),
                        will_retry: *will_retry,
                    },
                );
                Handled
            }
            RunInput::Fail { error } => {
                self.finish(context, RunOutcome::Failed, None, Some(error.clone()))
            }
            RunInput::Cancel { reason } => {
                let error = RunError::new("CANCELLED", reason.clone());
                self.finish(context, RunOutcome::Cancelled, None, Some(error))
            }
            RunInput::Start
            | RunInput::PlanReturned { .. }
            | RunInput::PlannerFailed { .. }
            | RunInput::DraftValid { .. }
            | RunInput::DeltaValid { .. }
            | RunInput::PlanInvalid { .. }
            | RunInput::NodeDispatched { .. }
            | RunInput::PolicyReplan { .. }
            | RunInput::PolicyPause { .. }
            | RunInput::HitlRequested { .. }
            | RunInput::OperatorPause { .. }
            | RunInput::Drained
            | RunInput::HitlAnswered { .. }
            | RunInput::Resume { .. }
            | RunInput::AllDone { .. } => Self::reject(context, "input not accepted in this state"),
        }
    }

    /// A planner call is in flight.
    #[state(superstate = "live", entry_action = "enter_requesting")]
    fn requesting(&mut self, context: &mut Ctx, input: &RunInput) -> Outcome<State> {
        match input {
            RunInput::PlanReturned {
                output,
                planner,
                latency_ms,
                usage,
                diagnostics,
            } => {
                self.pending_output = Some(PendingOutput {
                    output: output.clone(),
                    diagnostics: diagnostics.clone(),
                });
                self.last_error = None;
                self.emit(
                    context,
                    None,
                    EventBody::PlanGenerated {
                        phase: self.phase(),
                        attempt: self.attempt,
                        planner: planner.clone(),
                        output: output.clone(),
                        latency_ms: *latency_ms,
                        usage: *usage,
                        diagnostics: diagnostics.clone(),
                    },
                );
                Transition(State::validating())
            }
            RunInput::PlannerFailed { error, retryable } => {
                if *retryable && self.attempt < self.limits.max_attempts {
                    self.attempt += 1;
                    self.last_error = Some(error.clone());
                    self.emit(
                        context,
                        None,
                        EventBody::PlanRequested {
                            phase: self.phase(),
                            attempt: self.attempt,
                            trigger: self.trigger.clone(),
                            error: Some(error.clone()),
                        },
                    );
                    Transition(State::requesting())
                } else {
                    let code = if *retryable {
                        "PLANNER_ATTEMPTS_EXHAUSTED"
                    } else {
                        "PLANNER_FAILED"
                    };
                    let message = format!("planner failed on attempt {}: {error}", self.attempt);
                    self.finish(
                        context,
                        RunOutcome::Failed,
                        None,
                        Some(RunError::new(code, message)),
                    )
                }
            }
            RunInput::Start
            | RunInput::DraftValid { .. }
            | RunInput::DeltaValid { .. }
            | RunInput::PlanInvalid { .. }
            | RunInput::NodeDispatched { .. }
            | RunInput::NodeSucceeded { .. }
            | RunInput::NodeFailed { .. }
            | RunInput::OutputInvalid { .. }
            | RunInput::PolicyReplan { .. }
            | RunInput::PolicyPause { .. }
            | RunInput::HitlRequested { .. }
            | RunInput::OperatorPause { .. }
            | RunInput::Drained
            | RunInput::HitlAnswered { .. }
            | RunInput::Resume { .. }
            | RunInput::AllDone { .. }
            | RunInput::Fail { .. }
            | RunInput::Cancel { .. } => Super,
        }
    }

    /// A draft or delta is being checked.
    #[state(superstate = "live", entry_action = "enter_validating")]
    fn validating(&mut self, context: &mut Ctx, input: &RunInput) -> Outcome<State> {
        match input {
            RunInput::DraftValid {
                nodes,
                edges,
                warnings,
            } => {
                if self.purpose != Purpose::Initial {
                    return Self::reject(context, "a draft was validated during a replan");
                }
                self.pending_output = None;
                self.diagnostics.clear();
                self.plan_version = 1;
                self.emit(
                    context,
                    None,
                    EventBody::PlanAccepted {
                        version: 1,
                        nodes: *nodes,
                        edges: *edges,
                        warnings: warnings.clone(),
                    },
                );
                Transition(State::executing())
            }
            RunInput::DeltaValid { diff, warnings } => {
                if self.purpose != Purpose::Replan {
                    return Self::reject(context, "a delta was validated for an initial plan");
                }
                let trigger = self.trigger.take().unwrap_or(Trigger {
                    source: TriggerSource::Operator,
                    policy_id: None,
                    node_id: None,
                    reason: String::new(),
                });
                self.pending_output = None;
                self.diagnostics.clear();
                let previous_version = self.plan_version;
                self.plan_version += 1;
                self.emit(
                    context,
                    None,
                    EventBody::PlanUpdated {
                        previous_version,
                        version: self.plan_version,
                        diff: diff.clone(),
                        trigger,
                        warnings: warnings.clone(),
                    },
                );
                Transition(State::executing())
            }
            RunInput::PlanInvalid { diagnostics } => {
                let phase = self.phase();
                let attempt = self.attempt;
                self.pending_output = None;
                if self.attempt < self.limits.max_attempts {
                    self.attempt += 1;
                    self.diagnostics = diagnostics.clone();
                    self.emit(
                        context,
                        None,
                        EventBody::PlanRejected {
                            phase,
                            attempt,
                            diagnostics: diagnostics.clone(),
                        },
                    );
                    Transition(State::requesting())
                } else {
                    let codes: Vec<&str> = diagnostics
                        .iter()
                        .filter(|d| d.is_error())
                        .map(|d| d.code.as_str())
                        .collect();
                    let message = format!(
                        "no valid plan after {attempt} attempts; last diagnostics: {}",
                        codes.join(", ")
                    );
                    self.finish(
                        context,
                        RunOutcome::Failed,
                        None,
                        Some(RunError::new("PLAN_ATTEMPTS_EXHAUSTED", message)),
                    )
                }
            }
            RunInput::Start
            | RunInput::PlanReturned { .. }
            | RunInput::PlannerFailed { .. }
            | RunInput::NodeDispatched { .. }
            | RunInput::NodeSucceeded { .. }
            | RunInput::NodeFailed { .. }
            | RunInput::OutputInvalid { .. }
            | RunInput::PolicyReplan { .. }
            | RunInput::PolicyPause { .. }
            | RunInput::HitlRequested { .. }
            | RunInput::OperatorPause { .. }
            | RunInput::Drained
            | RunInput::HitlAnswered { .. }
            | RunInput::Resume { .. }
            | RunInput::AllDone { .. }
            | RunInput::Fail { .. }
            | RunInput::Cancel { .. } => Super,
        }
    }

    /// Ready nodes are dispatched.
    #[state(superstate = "live", entry_action = "enter_executing")]
    fn executing(&mut self, context: &mut Ctx, input: &RunInput) -> Outcome<State> {
        match input {
            RunInput::NodeDispatched {
                node_id,
                capability_id,
                attempt,
            } => {
                if self.in_flight.contains_key(node_id) {
                    return Self::reject(context, format!("node `{node_id}` is already in flight"));
                }
                self.in_flight.insert(node_id.clone(), *attempt);
                let idempotency_key = format!("{}/{node_id}", self.run_id);
                self.emit(
                    context,
                    Some(node_id),
                    EventBody::NodeStart {
                        attempt: *attempt,
                        capability_id: capability_id.clone(),
                        idempotency_key,
                    },
                );
                Handled
            }
            RunInput::PolicyReplan { policy_id, trigger } => {
                let body = EventBody::PolicyTriggered {
                    policy_id: policy_id.clone(),
                    action: "replan".to_owned(),
                    trigger: trigger.clone(),
                };
                self.begin_replan(context, trigger.clone(), None, body)
            }
            RunInput::PolicyPause { policy_id, trigger } => {
                self.emit(
                    context,
                    None,
                    EventBody::PolicyTriggered {
                        policy_id: policy_id.clone(),
                        action: "pause".to_owned(),
                        trigger: trigger.clone(),
                    },
                );
                Transition(State::paused())
            }
            RunInput::HitlRequested {
                request_id,
                kind,
                question,
                policy_id,
                node_id,
                options,
                contract_summary,
                on_approve,
                on_reject,
            } => {
                self.hitl = Some(PendingHitl {
                    request_id: request_id.clone(),
                    policy_id: policy_id.clone(),
                    node_id: node_id.clone(),
                    on_approve: *on_approve,
                    on_reject: *on_reject,
                });
                self.emit(
                    context,
                    node_id.as_deref(),
                    EventBody::HitlRequest {
                        request_id: request_id.clone(),
                        kind: *kind,
                        question: question.clone(),
                        policy_id: policy_id.clone(),
                        options: options.clone(),
                        contract_summary: contract_summary.clone(),
                        on_approve: *on_approve,
                        on_reject: *on_reject,
                    },
                );
                Transition(State::paused())
            }
            RunInput::OperatorPause { reason } => {
                self.emit(
                    context,
                    None,
                    EventBody::RunPaused {
                        reason: reason.clone(),
                    },
                );
                Transition(State::paused())
            }
            RunInput::AllDone { output } => {
                if !self.in_flight.is_empty() {
                    return Self::reject(context, "nodes are still in flight");
                }
                self.finish(context, RunOutcome::Completed, Some(output.clone()), None)
            }
            RunInput::Start
            | RunInput::PlanReturned { .. }
            | RunInput::PlannerFailed { .. }
            | RunInput::DraftValid { .. }
            | RunInput::DeltaValid { .. }
            | RunInput::PlanInvalid { .. }
            | RunInput::NodeSucceeded { .. }
            | RunInput::NodeFailed { .. }
            | RunInput::OutputInvalid { .. }
            | RunInput::Drained
            | RunInput::HitlAnswered { .. }
            | RunInput::Resume { .. }
            | RunInput::Fail { .. }
            | RunInput::Cancel { .. } => Super,
        }
    }

    /// Dispatch stopped; waiting for in-flight nodes before asking for a delta.
    #[state(superstate = "live", entry_action = "enter_replanning")]
    fn replanning(&mut self, context: &mut Ctx, input: &RunInput) -> Outcome<State> {
        match input {
            RunInput::Drained => {
                if !self.in_flight.is_empty() {
                    return Self::reject(context, "nodes are still in flight");
                }
                self.replans += 1;
                self.purpose = Purpose::Replan;
                self.attempt = 1;
                self.diagnostics.clear();
                self.emit(
                    context,
                    None,
                    EventBody::PlanRequested {
                        phase: PlanPhase::Replan,
                        attempt: 1,
                        trigger: self.trigger.clone(),
                        error: None,
                    },
                );
                Transition(State::requesting())
            }
            RunInput::Start
            | RunInput::PlanReturned { .. }
            | RunInput::PlannerFailed { .. }
            | RunInput::DraftValid { .. }
            | RunInput::DeltaValid { .. }
            | RunInput::PlanInvalid { .. }
            | RunInput::NodeDispatched { .. }
            | RunInput::NodeSucceeded { .. }
            | RunInput::NodeFailed { .. }
            | RunInput::OutputInvalid { .. }
            | RunInput::PolicyReplan { .. }
            | RunInput::PolicyPause { .. }
            | RunInput::HitlRequested { .. }
            | RunInput::OperatorPause { .. }
            | RunInput::HitlAnswered { .. }
            | RunInput::Resume { .. }
            | RunInput::AllDone { .. }
            | RunInput::Fail { .. }
            | RunInput::Cancel { .. } => Super,
        }
    }

    /// Waiting for a human answer or an operator resume.
    #[state(superstate = "live", entry_action = "enter_paused")]
    fn paused(&mut self, context: &mut Ctx, input: &RunInput) -> Outcome<State> {
        match input {
            RunInput::HitlAnswered {
                request_id,
                decision,
                text,
                responder,
            } => {
                let Some(pending) = self.hitl.clone() else {
                    return Self::reject(context, "no hitl request is pending");
                };
                if pending.request_id != *request_id {
                    return Self::reject(
                        context,
                        format!("hitl request `{request_id}` is not pending"),
                    );
                }
                let next = match decision {
                    HitlDecision::Reject => pending.on_reject,
                    HitlDecision::Approve | HitlDecision::Option | HitlDecision::Freeform => {
                        pending.on_approve
                    }
                };
                self.hitl = None;
                let resolved = EventBody::HitlResolved {
                    request_id: request_id.clone(),
                    decision: *decision,
                    text: text.clone(),
                    responder: responder.clone(),
                    next,
                };
                match next {
                    FollowUp::Continue => {
                        self.emit(context, pending.node_id.as_deref(), resolved);
                        Transition(State::executing())
                    }
                    FollowUp::Replan => {
                        let trigger = Trigger {
                            source: TriggerSource::Hitl,
                            policy_id: pending.policy_id.clone(),
                            node_id: pending.node_id.clone(),
                            reason: text
                                .clone()
                                .unwrap_or_else(|| format!("hitl request `{request_id}` answered")),
                        };
                        self.begin_replan(context, trigger, pending.node_id.as_deref(), resolved)
                    }
                    FollowUp::Fail => {
                        let message = match text {
                            Some(t) => format!("hitl request `{request_id}` rejected: {t}"),
                            None => format!("hitl request `{request_id}` rejected"),
                        };
                        self.finish(
                            context,
                            RunOutcome::Failed,
                            None,
                            Some(RunError::new("HITL_REJECTED", message)),
                        )
                    }
                }
            }
            RunInput::Resume { reason } => {
                if let Some(pending) = &self.hitl {
                    let why = format!(
                        "hitl request `{}` must be answered to resume",
                        pending.request_id
                    );
                    return Self::reject(context, why);
                }
                self.emit(
                    context,
                    None,
                    EventBody::RunResumed {
                        reason: reason.clone(),
                    },
                );
                Transition(State::executing())
            }
            RunInput::Start
            | RunInput::PlanReturned { .. }
            | RunInput::PlannerFailed { .. }
            | RunInput::DraftValid { .. }
            | RunInput::DeltaValid { .. }
            | RunInput::PlanInvalid { .. }
            | RunInput::NodeDispatched { .. }
            | RunInput::NodeSucceeded { .. }
            | RunInput::NodeFailed { .. }
            | RunInput::OutputInvalid { .. }
            | RunInput::PolicyReplan { .. }
            | RunInput::PolicyPause { .. }
            | RunInput::HitlRequested { .. }
            | RunInput::OperatorPause { .. }
            | RunInput::Drained
            | RunInput::AllDone { .. }
            | RunInput::Fail { .. }
            | RunInput::Cancel { .. } => Super,
        }
    }

    /// Terminal: absorbs every input without an event.
    #[state(entry_action = "enter_done")]
    fn done(context: &mut Ctx, input: &RunInput) -> Outcome<State> {
        match input {
            RunInput::Start
            | RunInput::PlanReturned { .. }
            | RunInput::PlannerFailed { .. }
            | RunInput::DraftValid { .. }
            | RunInput::DeltaValid { .. }
            | RunInput::PlanInvalid { .. }
            | RunInput::NodeDispatched { .. }
            | RunInput::NodeSucceeded { .. }
            | RunInput::NodeFailed { .. }
            | RunInput::OutputInvalid { .. }
            | RunInput::PolicyReplan { .. }
            | RunInput::PolicyPause { .. }
            | RunInput::HitlRequested { .. }
            | RunInput::OperatorPause { .. }
            | RunInput::Drained
            | RunInput::HitlAnswered { .. }
            | RunInput::Resume { .. }
            | RunInput::AllDone { .. }
            | RunInput::Fail { .. }
            | RunInput::Cancel { .. } => {
                context.absorbed = true;
                Handled
            }
        }
    }

    #[action]
    fn enter_requesting(&mut self, context: &mut Ctx) {
        if context.restoring {
            return;
        }
        context.commands.push(Command::CallPlanner(PlanCall {
            purpose: self.purpose,
            phase: self.phase(),
            attempt: self.attempt,
            trigger: self.trigger.clone(),
            diagnostics: self.diagnostics.clone(),
            error: self.last_error.clone(),
        }));
    }

    #[action]
    fn enter_validating(&mut self, context: &mut Ctx) {
        if context.restoring {
            return;
        }
        if let Some(pending) = &self.pending_output {
            context.commands.push(Command::Validate(pending.clone()));
        }
    }

    #[action]
    fn enter_executing(context: &mut Ctx) {
        if !context.restoring {
            context.commands.push(Command::Dispatch);
        }
    }

    #[action]
    fn enter_replanning(context: &mut Ctx) {
        if !context.restoring {
            context.commands.push(Command::AwaitDrain);
        }
    }

    #[action]
    fn enter_paused(context: &mut Ctx) {
        if !context.restoring {
            context.commands.push(Command::AwaitHuman);
        }
    }

    #[action]
    fn enter_done(&mut self, context: &mut Ctx) {
        if context.restoring {
            return;
        }
        if let Some(outcome) = self.outcome {
            context.commands.push(Command::Finish(outcome));
        }
    }
}

fn to_run_state(state: &State) -> RunState {
    match state {
        State::NewRun {} => RunState::New,
        State::Requesting {} => RunState::Requesting,
        State::Validating {} => RunState::Validating,
        State::Executing {} => RunState::Executing,
        State::Replanning {} => RunState::Replanning,
        State::Paused {} => RunState::Paused,
        State::Done {} => RunState::Done,
    }
}

/// One run's state machine.
#[derive(Clone)]
pub struct RunMachine {
    sm: StateMachine<RunCore>,
}

impl std::fmt::Debug for RunMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunMachine")
            .field("state", &self.state())
            .field("core", self.sm.inner())
            .finish()
    }
}

impl RunMachine {
    /// A new run, in [`RunState::New`].
    pub fn new(run_id: RunId, limits: Limits) -> Self {
        let core = RunCore {
            run_id,
            limits,
            seq: 0,
            plan_version: 0,
            purpose: Purpose::Initial,
            attempt: 0,
            replans: 0,
            trigger: None,
            diagnostics: Vec::new(),
            last_error: None,
            pending_output: None,
            in_flight: BTreeMap::new(),
            hitl: None,
            outcome: None,
        };
        let mut ctx = Ctx::default();
        let sm = core
            .uninitialized_state_machine()
            .init_with_context(&mut ctx);
        Self { sm: sm.into() }
    }

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

    /// The current state.
    pub fn state(&self) -> RunState {
        to_run_state(self.sm.state())
    }

    /// The run's id.
    pub fn run_id(&self) -> RunId {
        self.sm.inner().run_id
    }

    /// The last committed (or produced) sequence number.
    pub fn seq(&self) -> u64 {
        self.sm.inner().seq
    }

    /// The current plan version (0 before the first plan).
    pub fn plan_version(&self) -> u32 {
        self.sm.inner().plan_version
    }

    /// Replans used so far.
    pub fn replans(&self) -> u32 {
        self.sm.inner().replans
    }

    /// Planner attempt within the current purpose.
    pub fn attempt(&self) -> u32 {
        self.sm.inner().attempt
    }

    /// Why the planner is (or was last) asked.
    pub fn purpose(&self) -> Purpose {
        self.sm.inner().purpose
    }

    /// Nodes in flight with their attempt numbers.
    pub fn in_flight(&self) -> &BTreeMap<String, u32> {
        &self.sm.inner().in_flight
    }

    /// The pending HITL request, if the run waits on one.
    pub fn pending_hitl(&self) -> Option<&PendingHitl> {
        self.sm.inner().hitl.as_ref()
    }

    /// The planner output awaiting validation (in Validating).
    pub fn pending_output(&self) -> Option<&PendingOutput> {
        self.sm.inner().pending_output.as_ref()
    }

    /// The trigger of the pending replan, if any.
    pub fn trigger(&self) -> Option<&Trigger> {
        self.sm.inner().trigger.as_ref()
    }

    /// The planner call to make now (in Requesting), as the entry action would issue it.
    pub fn plan_call(&self) -> PlanCall {
        let core = self.sm.inner();
        PlanCall {
            purpose: core.purpose,
            phase: core.phase(),
            attempt: core.attempt,
            trigger: core.trigger.clone(),
            diagnostics: core.diagnostics.clone(),
            error: core.last_error.clone(),
        }
    }

    /// How the run ended, once Done.
    pub fn outcome(&self) -> Option<RunOutcome> {
        self.sm.inner().outcome
    }

    /// Feeds one input.
    ///
    /// # Errors
    /// [`FsmError::IllegalTransition`] when the current state does not accept the input;
    /// nothing changes then. In `Done` every input is absorbed: `Ok` with no events.
    pub fn apply(&mut self, input: &RunInput, now: Timestamp) -> Result<Step, FsmError> {
        let mut ctx = Ctx {
            now,
            ..Ctx::default()
        };
        let state = self.state();
        // Every guard rejects before mutating, so a rejected input leaves the machine as it was.
        self.sm.handle_with_context(input, &mut ctx);
        if let Some(reason) = ctx.rejected {
            return Err(FsmError::IllegalTransition {
                state,
                input: input.kind(),
                reason,
            });
        }
        debug_assert!(ctx.absorbed || ctx.events.len() == 1, "one event per edge");
        Ok(Step {
            events: ctx.events,
            commands: ctx.commands,
        })
    }

    /// Replays one committed event onto the machine: the event must be the next seq of this
    /// run and follow from the current state. No entry action runs, no command is produced.
    ///
    /// # Errors
    /// [`FsmError::Replay`] naming the event's seq and why it cannot follow.
    pub fn replay(&mut self, event: &RunEvent) -> Result<(), FsmError> {
        let core = self.sm.inner();
        if event.run_id != core.run_id || event.seq != core.seq + 1 {
            return Err(FsmError::Replay {
                seq: event.seq,
                reason: format!("expected seq {} of run {}", core.seq + 1, core.run_id),
            });
        }
        let input = input_for(event, self)?;
        let mut ctx = Ctx {
            now: event.timestamp,
            restoring: true,
            ..Ctx::default()
        };
        self.sm.handle_with_context(&input, &mut ctx);
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
            diagnostics,
            ..
        } => RunInput::PlanReturned {
            output: output.clone(),
            planner: planner.clone(),
            latency_ms: *latency_ms,
            usage: *usage,
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
            duration_ms,
            ..
        } => RunInput::NodeSucceeded {
            node_id: node()?,
            output: output.clone(),
            duration_ms: *duration_ms,
        },
        EventBody::NodeError {
            error, will_retry, ..
        } => RunInput::NodeFailed {
            node_id: node()?,
            error: error.clone(),
            will_retry: *will_retry,
        },
        EventBody::ValidationError {
            errors, will_retry, ..
        } => RunInput::OutputInvalid {
            node_id: node()?,
            errors: errors.clone(),
            will_retry: *will_retry,
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
        EventBody::RunResumed { reason } => RunInput::Resume {
            reason: reason.clone(),
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
