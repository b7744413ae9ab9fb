//! The run machine's vocabulary: states, inputs, commands and the data they carry.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use strum::VariantArray;

use super::event::{
    FollowUp, HitlDecision, HitlKind, NodeSpend, PlanPhase, PlannerOutput, RunError, RunEvent,
    RunOutcome, TokenUsage, Trigger,
};
use crate::diagnostics::Diagnostic;
use crate::graph::PlanDiff;
use crate::policy::Budgets;

/// Where a run is.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
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

impl RunState {
    /// Every state, in table order.
    pub const ALL: &'static [RunState] = <Self as VariantArray>::VARIANTS;

    /// The snake_case name (stored in the run head, shown by the API).
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Parses [`RunState::as_str`] output.
    pub fn parse(name: &str) -> Option<Self> {
        name.parse().ok()
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
///
/// Its discriminant, [`InputKind`], names the input in the edge table.
#[derive(Debug, Clone, PartialEq, strum::EnumDiscriminants)]
#[strum_discriminants(
    name(InputKind),
    doc = "The discriminant of a [`RunInput`], for the edge table (snake_case names).",
    derive(
        Hash,
        PartialOrd,
        Ord,
        strum::Display,
        strum::EnumString,
        strum::IntoStaticStr,
        VariantArray
    ),
    strum(serialize_all = "snake_case"),
    allow(missing_docs)
)]
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
        /// The model that answered, if the planner says.
        model: Option<String>,
        /// The usage priced by the engine's pricing table, when it has a price.
        cost: Option<f64>,
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
        /// Attempt wall time, in microseconds.
        duration_us: u64,
        /// What the attempt spent.
        spend: Option<NodeSpend>,
    },
    /// A node attempt failed.
    NodeFailed {
        /// The node.
        node_id: String,
        /// What went wrong.
        error: RunError,
        /// Whether another attempt follows.
        will_retry: bool,
        /// What the attempt spent.
        spend: Option<NodeSpend>,
        /// When the next attempt is due (ms since the epoch), when it waits for a backoff.
        retry_at: Option<u64>,
    },
    /// A node's output failed its contract.
    OutputInvalid {
        /// The node.
        node_id: String,
        /// Contract violations.
        errors: Vec<String>,
        /// Whether another attempt follows.
        will_retry: bool,
        /// What the attempt spent.
        spend: Option<NodeSpend>,
        /// When the next attempt is due (ms since the epoch), when it waits for a backoff.
        retry_at: Option<u64>,
    },
    /// A human skipped a node whose last attempt failed, supplying its output.
    NodeSkipped {
        /// The node.
        node_id: String,
        /// The supplied facet values (already checked against the node's contract).
        output: Map<String, Value>,
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
        /// Budgets raised (or set) with the resume; empty when none.
        budgets: Budgets,
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

impl InputKind {
    /// Every input kind, in declaration order.
    pub const ALL: &'static [InputKind] = <Self as VariantArray>::VARIANTS;

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl RunInput {
    /// The input's kind.
    pub fn kind(&self) -> InputKind {
        self.into()
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

/// What the driver must do after a transition: the entry actions of Requesting, Validating
/// and Done. Executing, Replanning and Paused issue none: what follows there depends on the
/// driver's scheduler and is decided by [`super::next`].
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Call the planner.
    CallPlanner(PlanCall),
    /// Validate the planner's output (and merge a delta).
    Validate(PendingOutput),
    /// The run ended.
    Finish(RunOutcome),
}

/// What one [`RunMachine::apply`](super::RunMachine::apply) produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Step {
    /// Events to commit, in order (already numbered).
    pub events: Vec<RunEvent>,
    /// Commands to perform after the commit.
    pub commands: Vec<Command>,
    /// The index in [`super::table::EDGES`] of the row taken (`None` when `Done` absorbed
    /// the input).
    pub row: Option<usize>,
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
