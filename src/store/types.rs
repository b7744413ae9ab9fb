//! The records the store keeps, and the unit of a commit.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fsm::{RunEvent, RunOutcome, RunState, TriggerSource};
use crate::graph::PlanSnapshot;
use crate::ids::{RunId, Timestamp};
use crate::policy::PolicyAction;

/// Where a run stands, as far as the store is concerned.
///
/// One status vocabulary: a run is [`RunStatus::Active`] until the machine records `complete`
/// with a [`RunOutcome`], and then has the status of that outcome (`From<RunOutcome>`, the
/// only way to a terminal status; the names match). [`RunOutcome`] is what the run machine and
/// [`RunResult`](crate::RunResult) say about a finished run; `RunStatus` adds `Active` for the
/// runs the store recovers and lists. Where the machine is within an active run is
/// [`RunHead::state`].
///
/// The discriminants are the persisted tags and never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum RunStatus {
    /// Not finished: recovered and continued on start.
    Active = 1,
    /// Ended with `complete` (completed).
    Completed = 2,
    /// Ended with `complete` (failed).
    Failed = 3,
    /// Ended with `complete` (cancelled).
    Cancelled = 4,
}

impl RunStatus {
    /// True for every status but [`RunStatus::Active`].
    pub fn is_terminal(self) -> bool {
        match self {
            Self::Active => false,
            Self::Completed | Self::Failed | Self::Cancelled => true,
        }
    }

    /// The snake_case name (`active`, `completed`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub(crate) fn tag(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(Self::Active),
            2 => Some(Self::Completed),
            3 => Some(Self::Failed),
            4 => Some(Self::Cancelled),
            _ => None,
        }
    }
}

impl From<RunOutcome> for RunStatus {
    fn from(outcome: RunOutcome) -> Self {
        match outcome {
            RunOutcome::Completed => Self::Completed,
            RunOutcome::Failed => Self::Failed,
            RunOutcome::Cancelled => Self::Cancelled,
        }
    }
}

/// The small per-run record rewritten on every commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunHead {
    /// Active or how it ended.
    pub status: RunStatus,
    /// Where the run machine is, e.g. [`RunState::Executing`]; stored as its
    /// [`as_str`](RunState::as_str) name. [`RunState::Done`] exactly when `status` is terminal.
    pub state: RunState,
    /// The current plan version (0 before the first plan).
    pub plan_version: u32,
    /// The seq of the run's last event (0 before the first).
    pub last_seq: u64,
    /// When the run was created.
    pub created_at: Timestamp,
    /// When the head was last written.
    pub updated_at: Timestamp,
    /// The run's objective, for listings. Not stored with the head: reads fill it from the
    /// envelope's `objective` field (empty when the envelope has none), and the value given in
    /// a [`CommitBatch`] is ignored.
    pub objective: String,
}

/// Where one node attempt stands.
///
/// The discriminants are the persisted tags and never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum NodeStatus {
    /// Dispatched, no result yet.
    Running = 1,
    /// Produced a valid output.
    Completed = 2,
    /// Failed (error, timeout or invalid output).
    Failed = 3,
}

impl NodeStatus {
    /// True for [`NodeStatus::Completed`] and [`NodeStatus::Failed`].
    pub fn is_terminal(self) -> bool {
        match self {
            Self::Running => false,
            Self::Completed | Self::Failed => true,
        }
    }

    pub(crate) fn tag(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(Self::Running),
            2 => Some(Self::Completed),
            3 => Some(Self::Failed),
            _ => None,
        }
    }
}

/// One attempt of one node, keyed (runId, nodeId, attempt).
///
/// A record may be rewritten while [`NodeStatus::Running`]; once terminal it is final.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    /// The plan node.
    pub node_id: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Running, completed or failed.
    pub status: NodeStatus,
    /// When the attempt was dispatched.
    pub started_at: Timestamp,
    /// When the attempt ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// The facet values produced, when completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// What went wrong, when failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Whether a HITL request has been answered.
///
/// The discriminants are the persisted tags and never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum HitlStatus {
    /// Waiting for a human.
    Pending = 1,
    /// Answered; the record is final.
    Resolved = 2,
}

impl HitlStatus {
    pub(crate) fn tag(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(Self::Pending),
            2 => Some(Self::Resolved),
            _ => None,
        }
    }
}

/// A HITL request and its answer, keyed (runId, requestId).
///
/// A resolved record is final: writing over it is refused, which is what makes a second answer
/// to the same request a conflict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HitlRecord {
    /// Request id, unique within the run.
    pub request_id: String,
    /// Pending or resolved.
    pub status: HitlStatus,
    /// The request as sent to humans.
    pub request: Value,
    /// The answer, once resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Value>,
}

/// Everything one transition of one run writes: the unit of [`Store::commit`](super::Store::commit).
#[derive(Debug, Clone, PartialEq)]
pub struct CommitBatch {
    /// The run.
    pub run_id: RunId,
    /// The run's head after the transition.
    pub head: RunHead,
    /// The run envelope, present exactly when the batch creates the run.
    pub envelope: Option<Value>,
    /// New events, continuing the run's seqs without a gap.
    pub events: Vec<Arc<RunEvent>>,
    /// A new plan version, never one already stored.
    pub plan: Option<PlanSnapshot>,
    /// Node attempt records to write.
    pub nodes: Vec<NodeRecord>,
    /// HITL records to write.
    pub hitl: Vec<HitlRecord>,
    /// When present, replaces the run's queue of acknowledged, not yet applied policy firings
    /// (an empty list removes it). `None` leaves the stored queue as it is.
    pub queued: Option<Vec<QueuedFiring>>,
    /// Idempotency records of the requests this transition applies, written (or overwritten)
    /// by key.
    pub requests: Vec<RequestRecord>,
}

impl CommitBatch {
    /// A batch that only rewrites the head; add the rest with the public fields.
    pub fn new(run_id: RunId, head: RunHead) -> Self {
        Self {
            run_id,
            head,
            envelope: None,
            events: Vec::new(),
            plan: None,
            nodes: Vec::new(),
            hitl: Vec::new(),
            queued: None,
            requests: Vec::new(),
        }
    }
}

/// A policy firing (from a policy trigger or a signal) that the run acknowledged but could not
/// apply yet, because the run was paused, replanning or still planning. The run's queue is
/// stored with the transition that changes it, so a firing that was acknowledged survives a
/// restart and is applied, once, when the run executes again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueuedFiring {
    /// The policy that fired.
    pub policy_id: String,
    /// What it does when applied.
    pub action: PolicyAction,
    /// Why it fired (the action's rationale, or what matched).
    pub reason: String,
    /// A policy trigger or an external signal.
    pub source: TriggerSource,
    /// The node whose completion (or failed validation) fired it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// When it was queued.
    pub queued_at: Timestamp,
}

/// What an idempotency key was used for, and what the request it came with led to: the record
/// that lets a retried request get its original answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    /// The client's idempotency key.
    pub key: String,
    /// A digest of the operation and its content (hex), to tell a retry from a different
    /// request that reuses the key.
    pub fingerprint: String,
    /// The run the request created or steered.
    pub run_id: RunId,
    /// When the request was applied; the key expires a configured time after.
    pub created_at: Timestamp,
    /// The run's status right after the request was applied.
    pub status: RunStatus,
    /// The run machine's state right after the request was applied.
    pub state: RunState,
}

/// Counters since the store was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Write transactions committed by [`Store::commit`](super::Store::commit) and
    /// [`Store::commit_each`](super::Store::commit_each).
    pub commits: u64,
    /// Batches written by those transactions.
    pub batches: u64,
    /// Serialized value bytes written by those transactions: heads, envelopes, events, plans,
    /// node and HITL records (keys and storage-engine overhead excluded).
    pub bytes_written: u64,
}
