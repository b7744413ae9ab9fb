//! Policies: the normalizer (raw JSON to canonical [`NormalizedPolicies`]) and the
//! [`PolicyEngine`] that evaluates runtime policies during a run.
//!
//! Both are pure: no clock, IO or tracing. Time, metrics and signals come in as arguments, and
//! fire counts are rebuilt from the run's event log with [`PolicyEngine::record_fire`].
//!
//! ```
//! use flexrun::policy::{normalize, EvalData, NodeFacts, PolicyEngine};
//! use flexrun::catalog::CapabilityKind;
//! use serde_json::{json, Map};
//!
//! let policies = normalize(&json!({
//!     "planner": {"maxNodes": 20},
//!     "runtime": [{
//!         "id": "qa-gate",
//!         "trigger": {"kind": "onNodeComplete", "selector": {"capabilityId": "writer.en"},
//!                     "condition": {"<": [{"var": "output.score"}, 0.5]}},
//!         "action": {"type": "replan", "rationale": "add a QA pass"}
//!     }]
//! }))?;
//! let mut engine = PolicyEngine::new(&policies.runtime);
//! let output = json!({"score": 0.2}).as_object().cloned().unwrap_or_default();
//! let empty = Map::new();
//! let data = EvalData { inputs: &empty, facets: &empty, output: Some(&output) };
//! let node = NodeFacts { node_id: "write", capability_id: "writer.en",
//!                        kind: CapabilityKind::Execution, stage: "generation" };
//! let evaluation = engine.on_node_complete(&node, &data);
//! assert_eq!(evaluation.firings[0].reason, "add a QA pass");
//! # Ok::<(), flexrun::policy::PolicyError>(())
//! ```

pub mod budget;
mod condition;
mod engine;
mod error;
mod model;
mod normalize;

pub use budget::{BudgetResource, Budgets, Ledger, Pricing, Spend, Threshold, TokenPrice};
pub use condition::Condition;
pub use engine::{EvalData, Evaluation, Firing, NodeFacts, PolicyEngine, PolicyWarning};
pub use error::PolicyError;
pub use model::{
    DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_FIRES, DEFAULT_MAX_NODES,
    DEFAULT_MAX_REPLANS, Ladder, MAX_FIRES_LIMIT, NodeSelector, NormalizedPolicies, PlannerPolicy,
    PolicyAction, PolicyTrigger, RuntimePolicy,
};
pub use normalize::{normalize, normalize_fallback};
