//! `RunEvent`: the one record written to the run log, traced, counted and streamed as SSE.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::diagnostics::Diagnostic;
use crate::graph::{PlanDelta, PlanDiff, PlanDraft};
pub use crate::hitl::{FollowUp, HitlDecision, HitlKind};
use crate::ids::{RunId, Timestamp};
use crate::policy::Budgets;

/// One committed transition of a run.
///
/// Serializes to the wire shape
/// `{seq, runId, type, timestamp, planVersion, nodeId?, payload}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunEvent {
    /// Per-run, gap-free, durable sequence number (starts at 1); the SSE `id:`.
    pub seq: u64,
    /// The run.
    pub run_id: RunId,
    /// When the transition was taken.
    pub timestamp: Timestamp,
    /// The plan version current after the transition (0 before the first plan).
    pub plan_version: u32,
    /// The node concerned, for node events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// The event type and its payload.
    #[serde(flatten)]
    pub body: EventBody,
}

impl RunEvent {
    /// The stable snake_case event name (SSE `event:`, tracing field, metric label).
    pub fn kind(&self) -> EventKind {
        self.body.kind()
    }
}

/// Why a planner is being called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanPhase {
    /// The first plan of the run.
    Initial,
    /// A new attempt after a rejected draft or delta.
    Revision,
    /// A change requested by a policy, a HITL answer or a signal.
    Replan,
}

/// What asked for a replan (or a pause).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    /// `policy`, `hitl`, `signal` or `operator`.
    pub source: TriggerSource,
    /// The policy that fired, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<String>,
    /// The node whose completion fired it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Human-readable reason (the policy's rationale, the reviewer's text, …).
    #[serde(default)]
    pub reason: String,
}

/// Where a trigger came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerSource {
    /// A runtime policy.
    Policy,
    /// A human answer to a HITL request.
    Hitl,
    /// An external signal.
    Signal,
    /// An operator action.
    Operator,
}

/// What a planner returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "plan", rename_all = "snake_case")]
pub enum PlannerOutput {
    /// A whole plan (initial phase).
    Draft(PlanDraft),
    /// A change against a base version (replan phase).
    Delta(PlanDelta),
    /// A reply that could not be read as a draft or delta (not JSON, or JSON of the wrong
    /// shape): the text as it came back, bounded. Validation rejects it with the reply
    /// diagnostics recorded beside it.
    Unparsed(UnparsedReply),
}

/// The text of a reply that could not be read, kept for the record and the next request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnparsedReply {
    /// The reply's first [`UnparsedReply::MAX_BYTES`] bytes (cut at a character boundary).
    pub content: String,
    /// The reply's whole length in bytes.
    pub bytes: usize,
}

impl UnparsedReply {
    /// Most bytes of an unreadable reply that are kept.
    pub const MAX_BYTES: usize = 4096;

    /// Keeps at most [`UnparsedReply::MAX_BYTES`] of `text`.
    pub fn new(text: &str) -> Self {
        let mut end = text.len().min(Self::MAX_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            content: text[..end].to_owned(),
            bytes: text.len(),
        }
    }

    /// True when the kept content is shorter than the reply.
    pub fn is_cut(&self) -> bool {
        self.content.len() < self.bytes
    }
}

/// What one node attempt spent.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpend {
    /// The capability's `cost`, plus the reported tokens priced by the engine's pricing table.
    pub cost: f64,
    /// Tokens the executor reported for the attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<TokenUsage>,
}

/// Token usage reported by a model-backed planner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenUsage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// All nodes done and goal conditions hold.
    Completed,
    /// A fatal error, exhausted attempts or replans, or a rejection that fails.
    Failed,
    /// Cancelled by a client or operator.
    Cancelled,
}

/// A structured error carried by failure events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    /// Stable code, e.g. `PLANNER_ATTEMPTS_EXHAUSTED`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

impl RunError {
    /// A new error.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// The type-specific part of an event. `type` on the wire, with the fields in `payload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
pub enum EventBody {
    /// A planner call was issued.
    #[serde(rename_all = "camelCase")]
    PlanRequested {
        /// Initial, revision or replan.
        phase: PlanPhase,
        /// Attempt number within the phase, from 1.
        attempt: u32,
        /// Why a replan is asked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trigger: Option<Trigger>,
        /// The previous attempt's error, when retrying after a planner error.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A planner returned a draft or delta.
    #[serde(rename_all = "camelCase")]
    PlanGenerated {
        /// Phase of the request answered.
        phase: PlanPhase,
        /// Attempt answered.
        attempt: u32,
        /// Which planner answered.
        planner: String,
        /// The draft or delta as read from the reply, or the unreadable reply itself.
        output: Arc<PlannerOutput>,
        /// Planner latency.
        latency_ms: u64,
        /// Token usage, for model-backed planners.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<TokenUsage>,
        /// The model that answered, when the planner says.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        /// The usage priced by the engine's pricing table (when it has a price for the model).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cost: Option<f64>,
        /// What reading the reply found (`REPLY_*` codes): errors for an unreadable reply,
        /// warnings for what was extracted, ignored or filled in. Validation adds them to
        /// its own findings.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        diagnostics: Vec<Diagnostic>,
    },
    /// An initial draft passed validation and became version 1.
    #[serde(rename_all = "camelCase")]
    PlanAccepted {
        /// The new version (1).
        version: u32,
        /// Node count of the plan.
        nodes: usize,
        /// Edge count of the plan.
        edges: usize,
        /// Non-blocking findings.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<Diagnostic>,
    },
    /// A delta passed validation and became a new version.
    #[serde(rename_all = "camelCase")]
    PlanUpdated {
        /// The version the delta applied to.
        previous_version: u32,
        /// The new version.
        version: u32,
        /// Structural diff between the two.
        diff: PlanDiff,
        /// Why the replan happened.
        trigger: Trigger,
        /// Non-blocking findings.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<Diagnostic>,
    },
    /// A draft or delta failed validation; the diagnostics go back to the planner.
    #[serde(rename_all = "camelCase")]
    PlanRejected {
        /// Phase of the rejected output.
        phase: PlanPhase,
        /// Attempt rejected.
        attempt: u32,
        /// Why.
        diagnostics: Vec<Diagnostic>,
    },
    /// A node was dispatched.
    #[serde(rename_all = "camelCase")]
    NodeStart {
        /// Attempt number, from 1.
        attempt: u32,
        /// Executing capability.
        capability_id: String,
        /// Stable across attempts: `runId/nodeId`.
        idempotency_key: String,
    },
    /// A node produced a valid output.
    #[serde(rename_all = "camelCase")]
    NodeComplete {
        /// Attempt that succeeded.
        attempt: u32,
        /// Facet values produced.
        output: Map<String, Value>,
        /// Wall time of the attempt, in microseconds: `durationUs` on the wire, with its whole
        /// milliseconds beside it as `durationMs` for readers of the older field (a recording
        /// that has only `durationMs` reads as that many milliseconds).
        #[serde(flatten, with = "node_duration")]
        duration_us: u64,
        /// What the attempt spent (capability cost, priced tokens), when it cost anything.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spend: Option<NodeSpend>,
    },
    /// A node attempt failed.
    #[serde(rename_all = "camelCase")]
    NodeError {
        /// Attempt that failed.
        attempt: u32,
        /// What went wrong.
        error: RunError,
        /// Whether another attempt follows.
        will_retry: bool,
        /// What the attempt spent (capability cost, priced tokens), when it cost anything.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spend: Option<NodeSpend>,
        /// When the next attempt is due (ms since the epoch), when it waits for a backoff.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_at: Option<u64>,
    },
    /// A node's output failed its compiled contract.
    #[serde(rename_all = "camelCase")]
    ValidationError {
        /// Attempt whose output failed.
        attempt: u32,
        /// Contract violations.
        errors: Vec<String>,
        /// Whether another attempt follows.
        will_retry: bool,
        /// What the attempt spent (capability cost, priced tokens), when it cost anything.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spend: Option<NodeSpend>,
        /// When the next attempt is due (ms since the epoch), when it waits for a backoff.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_at: Option<u64>,
    },
    /// A runtime policy fired with a replan or pause action.
    #[serde(rename_all = "camelCase")]
    PolicyTriggered {
        /// The policy.
        policy_id: String,
        /// `replan` or `pause`.
        action: String,
        /// What fired it.
        trigger: Trigger,
    },
    /// The run waits for a human.
    #[serde(rename_all = "camelCase")]
    HitlRequest {
        /// Request id, unique within the run.
        request_id: String,
        /// Approval or clarify.
        kind: HitlKind,
        /// What the human is asked.
        question: String,
        /// The policy that asked, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy_id: Option<String>,
        /// Offered options for `option` answers.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        options: Vec<String>,
        /// Facets and schema of the pending work, summarised.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        contract_summary: Option<Value>,
        /// What approval leads to.
        on_approve: FollowUp,
        /// What rejection leads to.
        on_reject: FollowUp,
    },
    /// A HITL request was answered.
    #[serde(rename_all = "camelCase")]
    HitlResolved {
        /// The request.
        request_id: String,
        /// The decision.
        decision: HitlDecision,
        /// Free text or the chosen option.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        /// Who answered.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        responder: Option<String>,
        /// What the run does next.
        next: FollowUp,
    },
    /// An operator paused the run.
    #[serde(rename_all = "camelCase")]
    RunPaused {
        /// Why.
        reason: String,
    },
    /// An operator resumed the run.
    #[serde(rename_all = "camelCase")]
    RunResumed {
        /// Why.
        reason: String,
        /// Budgets the operator raised (or set) with the resume; absent when none.
        #[serde(default, skip_serializing_if = "Budgets::is_empty")]
        budgets: Budgets,
    },
    /// The run ended.
    #[serde(rename_all = "camelCase")]
    Complete {
        /// Completed, failed or cancelled.
        status: RunOutcome,
        /// The run's output (facet values of the output contract), when completed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<Value>,
        /// Why it failed or was cancelled.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<RunError>,
    },
}

/// The stable names of event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// `plan_requested`
    PlanRequested,
    /// `plan_generated`
    PlanGenerated,
    /// `plan_accepted`
    PlanAccepted,
    /// `plan_updated`
    PlanUpdated,
    /// `plan_rejected`
    PlanRejected,
    /// `node_start`
    NodeStart,
    /// `node_complete`
    NodeComplete,
    /// `node_error`
    NodeError,
    /// `validation_error`
    ValidationError,
    /// `policy_triggered`
    PolicyTriggered,
    /// `hitl_request`
    HitlRequest,
    /// `hitl_resolved`
    HitlResolved,
    /// `run_paused`
    RunPaused,
    /// `run_resumed`
    RunResumed,
    /// `complete`
    Complete,
}

impl EventKind {
    /// Every kind, for docs and metrics.
    pub const ALL: &'static [EventKind] = &[
        Self::PlanRequested,
        Self::PlanGenerated,
        Self::PlanAccepted,
        Self::PlanUpdated,
        Self::PlanRejected,
        Self::NodeStart,
        Self::NodeComplete,
        Self::NodeError,
        Self::ValidationError,
        Self::PolicyTriggered,
        Self::HitlRequest,
        Self::HitlResolved,
        Self::RunPaused,
        Self::RunResumed,
        Self::Complete,
    ];

    /// The snake_case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PlanRequested => "plan_requested",
            Self::PlanGenerated => "plan_generated",
            Self::PlanAccepted => "plan_accepted",
            Self::PlanUpdated => "plan_updated",
            Self::PlanRejected => "plan_rejected",
            Self::NodeStart => "node_start",
            Self::NodeComplete => "node_complete",
            Self::NodeError => "node_error",
            Self::ValidationError => "validation_error",
            Self::PolicyTriggered => "policy_triggered",
            Self::HitlRequest => "hitl_request",
            Self::HitlResolved => "hitl_resolved",
            Self::RunPaused => "run_paused",
            Self::RunResumed => "run_resumed",
            Self::Complete => "complete",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EventBody {
    /// The event's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            Self::PlanRequested { .. } => EventKind::PlanRequested,
            Self::PlanGenerated { .. } => EventKind::PlanGenerated,
            Self::PlanAccepted { .. } => EventKind::PlanAccepted,
            Self::PlanUpdated { .. } => EventKind::PlanUpdated,
            Self::PlanRejected { .. } => EventKind::PlanRejected,
            Self::NodeStart { .. } => EventKind::NodeStart,
            Self::NodeComplete { .. } => EventKind::NodeComplete,
            Self::NodeError { .. } => EventKind::NodeError,
            Self::ValidationError { .. } => EventKind::ValidationError,
            Self::PolicyTriggered { .. } => EventKind::PolicyTriggered,
            Self::HitlRequest { .. } => EventKind::HitlRequest,
            Self::HitlResolved { .. } => EventKind::HitlResolved,
            Self::RunPaused { .. } => EventKind::RunPaused,
            Self::RunResumed { .. } => EventKind::RunResumed,
            Self::Complete { .. } => EventKind::Complete,
        }
    }
}

/// The two wire fields of a node's duration: `durationUs`, and the whole milliseconds as
/// `durationMs`, which events carried before `durationUs` existed and clients may still read.
mod node_duration {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Fields {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_us: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
    }

    pub(super) fn serialize<S: Serializer>(micros: &u64, s: S) -> Result<S::Ok, S::Error> {
        Fields {
            duration_us: Some(*micros),
            duration_ms: Some(*micros / 1000),
        }
        .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let fields = Fields::deserialize(d)?;
        match (fields.duration_us, fields.duration_ms) {
            (Some(micros), _) => Ok(micros),
            (None, Some(millis)) => Ok(millis.saturating_mul(1000)),
            (None, None) => Err(serde::de::Error::missing_field("durationUs")),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::EventBody;

    #[test]
    fn a_node_duration_is_written_in_both_units_and_read_from_either() {
        let body = EventBody::NodeComplete {
            attempt: 1,
            output: serde_json::Map::new(),
            duration_us: 1_999,
            spend: None,
        };
        let wire = serde_json::to_value(&body).unwrap();
        assert_eq!(wire["payload"]["durationUs"], 1_999);
        assert_eq!(wire["payload"]["durationMs"], 1);
        assert_eq!(serde_json::from_value::<EventBody>(wire).unwrap(), body);
        let recorded_in_millis = json!({"type": "node_complete",
            "payload": {"attempt": 1, "output": {}, "durationMs": 7}});
        let EventBody::NodeComplete { duration_us, .. } =
            serde_json::from_value(recorded_in_millis).unwrap()
        else {
            panic!("not a node_complete");
        };
        assert_eq!(duration_us, 7_000);
        let neither = json!({"type": "node_complete", "payload": {"attempt": 1, "output": {}}});
        let err = serde_json::from_value::<EventBody>(neither).unwrap_err();
        assert!(err.to_string().contains("durationUs"), "{err}");
    }
}
