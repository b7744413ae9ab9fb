//! Normalized policy types (canonical camelCase wire form).

use serde::{Deserialize, Serialize};

use crate::catalog::{CapabilityKind, DEFAULT_BACKOFF_MULTIPLIER, Fallback, Then};
use crate::hitl::{FollowUp, HitlKind};

use super::budget::{BudgetResource, Budgets, Threshold};
use super::condition::Condition;
use super::error::PolicyError;
use super::normalize::normalize;

/// Default planner attempts per phase.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Default replans per run.
pub const DEFAULT_MAX_REPLANS: u32 = 3;
/// Default node budget of a plan.
pub const DEFAULT_MAX_NODES: u32 = 50;
/// Default concurrently dispatched nodes.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 4;
/// Default number of times one runtime policy may fire.
pub const DEFAULT_MAX_FIRES: u32 = 1;
/// Upper bound of `maxFires`.
pub const MAX_FIRES_LIMIT: u32 = 100;

/// Policies after normalization: defaults applied, legacy spellings mapped, conditions compiled.
///
/// Serializes to the canonical camelCase form; deserializing runs [`normalize`], so a
/// deserialized value holds the same invariants as a normalized one.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "serde_json::Value")]
pub struct NormalizedPolicies {
    /// Limits and requirements that shape planning.
    pub planner: PlannerPolicy,
    /// Runtime policies, in declaration order.
    pub runtime: Vec<RuntimePolicy>,
    /// Limits on what the run spends, by resource (`onBudget` triggers measure against
    /// them); empty when the run has none.
    #[serde(default, skip_serializing_if = "Budgets::is_empty")]
    pub budgets: Budgets,
    /// The run's default fallback ladder for failing nodes (a capability's own `fallback`
    /// fields win over it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
}

impl TryFrom<serde_json::Value> for NormalizedPolicies {
    type Error = PolicyError;

    fn try_from(raw: serde_json::Value) -> Result<Self, Self::Error> {
        normalize(&raw)
    }
}

/// Limits and requirements that shape planning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannerPolicy {
    /// Planner attempts per phase (initial, each replan), at least 1.
    pub max_attempts: u32,
    /// Replans per run.
    pub max_replans: u32,
    /// Node budget of a plan, at least 1.
    pub max_nodes: u32,
    /// Concurrently dispatched nodes, at least 1.
    pub max_concurrency: u32,
    /// Capabilities a plan must not use.
    pub forbidden_capabilities: Vec<String>,
    /// Capability kinds a plan must not use.
    pub forbidden_kinds: Vec<CapabilityKind>,
    /// Capabilities a plan must use.
    pub required_capabilities: Vec<String>,
    /// Capability kinds a plan must use.
    pub required_kinds: Vec<CapabilityKind>,
}

impl Default for PlannerPolicy {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_replans: DEFAULT_MAX_REPLANS,
            max_nodes: DEFAULT_MAX_NODES,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            forbidden_capabilities: Vec::new(),
            forbidden_kinds: Vec::new(),
            required_capabilities: Vec::new(),
            required_kinds: Vec::new(),
        }
    }
}

/// A runtime policy: when `trigger` happens, perform `action`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimePolicy {
    /// Unique within the run; named by events and signals. An identifier (see
    /// [`crate::ids`]) of at most [`MAX_PREFIX_ID_LEN`](crate::ids::MAX_PREFIX_ID_LEN) bytes,
    /// so the HITL requests named after it (`{id}-{n}`) are identifiers too.
    pub id: String,
    /// Disabled policies never fire.
    pub enabled: bool,
    /// How many times the policy may fire over the run (1..=100).
    pub max_fires: u32,
    /// When it fires.
    pub trigger: PolicyTrigger,
    /// What it does.
    pub action: PolicyAction,
}

/// When a runtime policy fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
#[non_exhaustive]
pub enum PolicyTrigger {
    /// When the run starts executing, if the optional condition holds (evaluated with empty
    /// facets, no output and a null node).
    OnStart {
        /// JSON-Logic over `{inputs, facets, output, node}`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        condition: Option<Condition>,
    },
    /// When a node matching the selector completes and the condition holds.
    OnNodeComplete {
        /// Which nodes; `None` matches every node.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        selector: Option<NodeSelector>,
        /// JSON-Logic over `{inputs, facets, output, node}`; `None` always holds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        condition: Option<Condition>,
    },
    /// When a matching node's output fails its contract.
    OnValidationFail {
        /// Which nodes; `None` matches every node.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        selector: Option<NodeSelector>,
    },
    /// When the run has been executing for at least `ms` milliseconds: the clock starts when
    /// the first plan is accepted and stops while the run is paused (an operator pause, a
    /// `pause` policy, a wait on a HITL answer).
    OnTimeout {
        /// Elapsed time threshold, at least 1.
        ms: u64,
    },
    /// When a reported metric falls strictly below a threshold.
    OnMetricBelow {
        /// Metric name.
        metric: String,
        /// Fires when the value is `< threshold`.
        threshold: f64,
    },
    /// On an external signal (`POST /v1/runs/{id}/signals`).
    Manual {
        /// Only this signal name; `None` accepts every signal.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
    },
    /// When the run's spend of `resource` reaches `threshold`.
    OnBudget {
        /// The resource measured.
        resource: BudgetResource,
        /// A fraction of the resource's budget, or an absolute amount.
        threshold: Threshold,
    },
}

/// Which nodes a trigger concerns. Every field given must match; an empty selector is
/// normalized to no selector.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelector {
    /// The node id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// The node's capability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability_id: Option<String>,
    /// The node's kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<CapabilityKind>,
    /// The node's stage label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
}

impl NodeSelector {
    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        self.node_id.is_none()
            && self.capability_id.is_none()
            && self.kind.is_none()
            && self.stage.is_none()
    }
}

/// What a runtime policy does when it fires.
///
/// The contract also names `goto` and `emit`; this engine does not execute them, so the
/// normalizer refuses them instead of accepting a policy that would do nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
#[non_exhaustive]
pub enum PolicyAction {
    /// Drain in-flight nodes and ask the planner for a delta.
    Replan {
        /// Passed to the planner as the trigger's reason.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rationale: Option<String>,
    },
    /// Pause the run and ask a human.
    #[serde(rename_all = "camelCase")]
    Hitl {
        /// Approval or clarify.
        kind: HitlKind,
        /// What the human is asked; never empty.
        question: String,
        /// Offered options for `option` answers.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        options: Vec<String>,
        /// What approval leads to.
        on_approve: FollowUp,
        /// What rejection leads to.
        on_reject: FollowUp,
    },
    /// Pause the run until an operator resumes it.
    Pause {
        /// Why.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// End the run as failed.
    Fail {
        /// Why.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

impl PolicyAction {
    /// The wire name of the action (`replan`, `hitl`, `pause`, `fail`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Replan { .. } => "replan",
            Self::Hitl { .. } => "hitl",
            Self::Pause { .. } => "pause",
            Self::Fail { .. } => "fail",
        }
    }
}

/// The ladder one node follows, resolved from its capability's and the run's [`Fallback`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ladder {
    /// Attempts per round, at least 1.
    pub max_attempts: u32,
    /// Delay before the first retry, in milliseconds.
    pub backoff_ms: u64,
    /// Growth of the delay per retry.
    pub multiplier: f64,
    /// Upper bound of the delay.
    pub max_backoff_ms: Option<u64>,
    /// What follows the last attempt of a round.
    pub then: Then,
}

impl Ladder {
    /// The ladder of a node: each field of the capability's `fallback` wins over the run's;
    /// without either, `max_attempts` (the capability's), no backoff, then fail.
    pub fn resolve(
        capability: Option<&Fallback>,
        run: Option<&Fallback>,
        max_attempts: u32,
    ) -> Self {
        let retry = capability
            .and_then(|f| f.retry.as_ref())
            .or_else(|| run.and_then(|f| f.retry.as_ref()));
        let then = capability
            .and_then(|f| f.then)
            .or_else(|| run.and_then(|f| f.then))
            .unwrap_or_default();
        Self {
            max_attempts: retry
                .and_then(|r| r.max_attempts)
                .unwrap_or(max_attempts)
                .max(1),
            backoff_ms: retry.map_or(0, |r| r.backoff_ms),
            multiplier: retry.map_or(DEFAULT_BACKOFF_MULTIPLIER, |r| r.multiplier),
            max_backoff_ms: retry.and_then(|r| r.max_backoff_ms),
            then,
        }
    }

    /// The delay before the attempt that follows failed attempt `n` of a round (from 1):
    /// `backoffMs * multiplier^(n-1)`, at most `maxBackoffMs`.
    pub fn delay_ms(&self, n: u32) -> u64 {
        if self.backoff_ms == 0 {
            return 0;
        }
        let exponent = i32::try_from(n.saturating_sub(1)).unwrap_or(i32::MAX);
        let raw = self.backoff_ms as f64 * self.multiplier.powi(exponent);
        let capped = match self.max_backoff_ms {
            Some(max) => raw.min(max as f64),
            None => raw,
        };
        if capped.is_finite() && capped < u64::MAX as f64 {
            capped as u64
        } else {
            self.max_backoff_ms.unwrap_or(u64::MAX)
        }
    }
}

#[cfg(test)]
mod ladder_tests {
    use super::*;

    fn fallback(json: serde_json::Value) -> Fallback {
        super::super::normalize::normalize_fallback(&json, "fallback").unwrap()
    }

    #[test]
    fn capability_fields_win_and_defaults_are_todays_behaviour() {
        let none = Ladder::resolve(None, None, 2);
        assert_eq!(
            (none.max_attempts, none.backoff_ms, none.then),
            (2, 0, Then::Fail)
        );
        assert_eq!(none.delay_ms(1), 0);
        let run = fallback(serde_json::json!({
            "retry": {"maxAttempts": 3, "backoffMs": 100}, "then": "hitl"}));
        let cap = fallback(serde_json::json!({"then": "fail"}));
        let ladder = Ladder::resolve(Some(&cap), Some(&run), 1);
        assert_eq!((ladder.max_attempts, ladder.then), (3, Then::Fail));
        let ladder = Ladder::resolve(None, Some(&run), 1);
        assert_eq!(ladder.then, Then::Hitl);
        assert_eq!(
            [1, 2, 3].map(|n| ladder.delay_ms(n)),
            [100, 200, 400],
            "the default multiplier doubles"
        );
        let capped = fallback(serde_json::json!({
            "retry": {"backoffMs": 200, "multiplier": 3.0, "maxBackoffMs": 1000}}));
        let ladder = Ladder::resolve(Some(&capped), None, 4);
        assert_eq!(
            ladder.max_attempts, 4,
            "maxAttempts falls back to the capability's"
        );
        assert_eq!(
            [1, 2, 3, 60].map(|n| ladder.delay_ms(n)),
            [200, 600, 1000, 1000]
        );
    }
}
