//! The vocabulary of human-in-the-loop requests: what is asked, what a human decides and what
//! the run does next.
//!
//! Runtime policies ([`crate::policy`]) name these when they ask for a human, and the run
//! machine ([`crate::fsm`], which re-exports them) records them in `hitl_request` and
//! `hitl_resolved` events. They live here, beside both, so that `policy` need not depend on
//! `fsm`. Each serializes as a snake_case string.

use serde::{Deserialize, Serialize};

/// The kind of a HITL request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HitlKind {
    /// Approve or reject.
    Approval,
    /// Answer a question.
    Clarify,
}

/// A human's decision on a HITL request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HitlDecision {
    /// Go ahead.
    Approve,
    /// Do not go ahead; the request's `onReject` action follows.
    Reject,
    /// One of the offered options.
    Option,
    /// Free text.
    Freeform,
}

/// What the run does after a HITL answer or a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FollowUp {
    /// Continue dispatching.
    Continue,
    /// Ask the planner for a delta.
    Replan,
    /// End the run as failed.
    Fail,
}

#[cfg(test)]
mod tests {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use super::*;

    #[track_caller]
    fn round_trips<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
        pairs: &[(T, &str)],
    ) {
        for (value, wire) in pairs {
            let json = serde_json::to_value(value).unwrap();
            assert_eq!(json, serde_json::Value::String((*wire).to_owned()));
            assert_eq!(&serde_json::from_value::<T>(json).unwrap(), value);
        }
    }

    #[test]
    fn wire_names_are_snake_case_strings() {
        round_trips(&[
            (HitlKind::Approval, "approval"),
            (HitlKind::Clarify, "clarify"),
        ]);
        round_trips(&[
            (HitlDecision::Approve, "approve"),
            (HitlDecision::Reject, "reject"),
            (HitlDecision::Option, "option"),
            (HitlDecision::Freeform, "freeform"),
        ]);
        round_trips(&[
            (FollowUp::Continue, "continue"),
            (FollowUp::Replan, "replan"),
            (FollowUp::Fail, "fail"),
        ]);
        assert!(serde_json::from_str::<FollowUp>("\"Continue\"").is_err());
    }

    #[test]
    fn the_fsm_paths_name_the_same_types() {
        let kind: crate::fsm::HitlKind = HitlKind::Clarify;
        let decision: crate::fsm::HitlDecision = HitlDecision::Reject;
        let next: crate::fsm::FollowUp = FollowUp::Replan;
        assert_eq!(
            (kind, decision, next),
            (HitlKind::Clarify, HitlDecision::Reject, FollowUp::Replan)
        );
    }
}
