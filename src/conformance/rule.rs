//! The rules a run's event stream is held to, with their stable names.

use std::fmt;
use std::str::FromStr;

/// One rule of the event-stream contract. [`Rule::as_str`] is its stable kebab-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Rule {
    /// `seq-gap`: seqs start at 1 and rise by one.
    SeqGap,
    /// `run-id`: the stream carries one run.
    RunId,
    /// `legal-sequence`: every event follows from the state before it.
    LegalSequence,
    /// `after-complete`: nothing follows `complete`.
    AfterComplete,
    /// `complete-missing`: a finished stream ends with `complete`.
    CompleteMissing,
    /// `dispatch-during-replan`: no `node_start` while a replan is pending.
    DispatchDuringReplan,
    /// `dispatch-while-paused`: no `node_start` while the run is paused.
    DispatchWhilePaused,
    /// `plan-version`: versions rise by one per plan change and every event carries the
    /// current one.
    PlanVersion,
    /// `hitl-answered-once`: only a requested, unanswered HITL request is answered.
    HitlAnsweredOnce,
    /// `hitl-request-unique`: a HITL request id is used once per run.
    HitlRequestUnique,
    /// `node-lifecycle`: starts, ends, attempts and idempotency keys of nodes fit together.
    NodeLifecycle,
    /// `node-id`: node events name their node, run events name none.
    NodeId,
    /// `complete-payload`: `complete` carries what its status calls for.
    CompletePayload,
    /// `timestamp-order`: timestamps do not go back.
    TimestampOrder,
    /// `id-grammar`: identifiers in events follow the identifier grammar.
    IdGrammar,
    /// `sse-frame`: an SSE frame's `id:` and `event:` match its data.
    SseFrame,
}

impl Rule {
    /// Every rule, in the order the docs list them.
    pub const ALL: &'static [Rule] = &[
        Self::SeqGap,
        Self::RunId,
        Self::LegalSequence,
        Self::AfterComplete,
        Self::CompleteMissing,
        Self::DispatchDuringReplan,
        Self::DispatchWhilePaused,
        Self::PlanVersion,
        Self::HitlAnsweredOnce,
        Self::HitlRequestUnique,
        Self::NodeLifecycle,
        Self::NodeId,
        Self::CompletePayload,
        Self::TimestampOrder,
        Self::IdGrammar,
        Self::SseFrame,
    ];

    /// The stable kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SeqGap => "seq-gap",
            Self::RunId => "run-id",
            Self::LegalSequence => "legal-sequence",
            Self::AfterComplete => "after-complete",
            Self::CompleteMissing => "complete-missing",
            Self::DispatchDuringReplan => "dispatch-during-replan",
            Self::DispatchWhilePaused => "dispatch-while-paused",
            Self::PlanVersion => "plan-version",
            Self::HitlAnsweredOnce => "hitl-answered-once",
            Self::HitlRequestUnique => "hitl-request-unique",
            Self::NodeLifecycle => "node-lifecycle",
            Self::NodeId => "node-id",
            Self::CompletePayload => "complete-payload",
            Self::TimestampOrder => "timestamp-order",
            Self::IdGrammar => "id-grammar",
            Self::SseFrame => "sse-frame",
        }
    }

    /// What the rule requires, in one line.
    pub fn description(self) -> &'static str {
        match self {
            Self::SeqGap => "seqs of a run start at 1 and rise by exactly one",
            Self::RunId => {
                "every event belongs to the run the stream is of (when that run is known)"
            }
            Self::LegalSequence => {
                "every event is what the run machine produces from the state before it"
            }
            Self::AfterComplete => "nothing follows a run's `complete`",
            Self::CompleteMissing => "a stream that is over ends with `complete`",
            Self::DispatchDuringReplan => {
                "no `node_start` after a replan is asked (`policy_triggered` replan, \
                 `hitl_resolved` next=replan) until the next `plan_updated`"
            }
            Self::DispatchWhilePaused => {
                "no `node_start` after `run_paused`, `hitl_request` or `policy_triggered` \
                 pause until `run_resumed` or `hitl_resolved`"
            }
            Self::PlanVersion => {
                "`plan_accepted` makes version 1, once; each `plan_updated` goes from the \
                 current version to the next; every event's `planVersion` is the version \
                 current after it"
            }
            Self::HitlAnsweredOnce => {
                "a `hitl_resolved` answers a request that was made and not yet answered"
            }
            Self::HitlRequestUnique => "a `hitl_request` id is not reused within a run",
            Self::NodeLifecycle => {
                "a started node ends before it starts again, its end carries the attempt it \
                 started with, attempts start at 1 and rise, the idempotency key is \
                 `runId/nodeId` on every attempt, a final failure is not retried in the same \
                 plan version, a completed node never starts again, and `complete` \
                 (completed) has nothing in flight"
            }
            Self::NodeId => {
                "node events carry a `nodeId`; plan, policy, pause, resume and `complete` \
                 events carry none; a `hitl_resolved` names its request's node"
            }
            Self::CompletePayload => {
                "`complete` completed carries an output and no error; failed carries an \
                 error; cancelled carries the error `CANCELLED`; neither carries an output"
            }
            Self::TimestampOrder => "a run's timestamps never go back",
            Self::IdGrammar => {
                "node, capability, policy and HITL request ids in events follow the \
                 identifier grammar"
            }
            Self::SseFrame => {
                "an SSE frame's `id:` is its event's seq and its `event:` the event's type"
            }
        }
    }

    /// A rule a more specific violation explains: `legal-sequence` is not reported on an
    /// event one of these rules already flagged.
    pub(crate) fn explains_illegal_events(self) -> bool {
        match self {
            Self::SeqGap
            | Self::RunId
            | Self::AfterComplete
            | Self::DispatchDuringReplan
            | Self::DispatchWhilePaused
            | Self::PlanVersion
            | Self::HitlAnsweredOnce
            | Self::HitlRequestUnique
            | Self::NodeLifecycle
            | Self::NodeId
            | Self::CompletePayload => true,
            Self::LegalSequence
            | Self::CompleteMissing
            | Self::TimestampOrder
            | Self::IdGrammar
            | Self::SseFrame => false,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a rule's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown conformance rule `{0}`")]
pub struct UnknownRule(pub String);

impl FromStr for Rule {
    type Err = UnknownRule;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRule(s.to_owned()))
    }
}

/// The rules as a Markdown table (`rule | requires`), as `docs/CONFORMANCE.md` lists them.
pub fn rules_markdown() -> String {
    let mut out = String::from("| rule | requires |\n|---|---|\n");
    for rule in Rule::ALL {
        out.push_str(&format!(
            "| `{}` | {} |\n",
            rule.as_str(),
            rule.description()
        ));
    }
    out
}
