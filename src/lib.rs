//! flexrun: a hybrid plan/execute engine.
//!
//! A probabilistic [`Planner`] proposes a plan; the deterministic orchestrator validates it,
//! executes it as a DAG, enforces policies, pauses for humans and asks the planner for
//! corrections. Every step is an explicit transition of the run state machine
//! ([`fsm::RunMachine`]), committed to the store before it is published.
//!
//! # Embedding the engine
//!
//! A service brings its facets, capabilities, executors and planner; the engine plans,
//! validates, runs and records. Depend on `flexrun` with `default-features = false` for the
//! engine alone (features `client`, `server`, `demo`, `bench`, `cli` add the rest; `webhook`
//! alone gives a receiver of the engine's webhook calls `flexrun::webhook::verify`; `testing`
//! adds property-test strategies and a steering harness, `flexrun::testing`).
//!
//! ```
//! use std::sync::Arc;
//! use flexrun::prelude::*;
//! use serde_json::{Map, Value, json};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let shout = Capability::new(
//!     "text.shout",
//!     CapabilityKind::Transformation,
//!     ExecutorSpec::Builtin { handler: "shout".into() },
//! )
//! .with_input_facets(["text"])
//! .with_output_facets(["loud"]);
//! let draft = PlanDraft::new([PlanNode::for_capability("shout", &shout)]);
//!
//! let mut config = EngineConfig::new(
//!     Arc::new(MemoryStore::new()),
//!     Arc::new(ScriptedPlanner::new([flexrun::planner::ScriptStep::Draft(draft)])),
//! );
//! config.facets = vec![
//!     Facet::new("text", json!({"type": "string"})).with_direction(FacetDirection::Input),
//!     Facet::new("loud", json!({"type": "string"})).with_direction(FacetDirection::Output),
//! ];
//! config.capabilities = vec![shout];
//! config.executors = Executors::new().builtin("shout", |call: &NodeCall| {
//!     let text: String = call.input("text")?;
//!     Ok(Map::from_iter([("loud".to_owned(), Value::String(text.to_uppercase()))]))
//! });
//! let engine = Engine::open(config).await?;
//!
//! let envelope = RunEnvelope::builder("shout it").input("text", "hello").outputs(&["loud"]).build();
//! let run = engine.submit(envelope).await?;
//! let result = engine.wait(run).await?;
//! assert_eq!(result.status, RunOutcome::Completed);
//! assert_eq!(result.output.unwrap()["loud"], "HELLO");
//! # Ok(()) }
//! ```
//!
//! The run machine itself is sans-IO and can be driven by hand:
//!
//! ```
//! use flexrun::fsm::{Limits, RunInput, RunMachine, RunState};
//! use flexrun::{RunId, Timestamp};
//!
//! let mut run = RunMachine::new(RunId::new(), Limits::default());
//! let step = run.apply(&RunInput::Start, Timestamp::now()).unwrap();
//! assert_eq!(step.events[0].kind().as_str(), "plan_requested");
//! assert_eq!(run.state(), RunState::Requesting);
//! ```

#[cfg(feature = "server")]
pub mod api;
#[cfg(feature = "bench")]
pub mod bench;
pub mod catalog;
pub mod conformance;
#[cfg(any(test, feature = "demo"))]
pub mod demo;
pub mod diagnostics;
pub mod engine;
mod envelope;
#[cfg(feature = "client")]
pub mod executors;
pub mod fsm;
pub mod graph;
pub mod hitl;
#[cfg(feature = "client")]
pub mod http_client;
pub mod ids;
pub mod planner;
pub mod policy;
pub mod store;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod validate;
#[cfg(feature = "webhook")]
pub mod webhook;

/// The attribute for implementing [`Planner`] and [`engine::NodeExecutor`], re-exported so
/// implementors need no dependency of their own.
pub use async_trait::async_trait;
pub use engine::{
    ClusterOptions, Engine, EngineConfig, EngineError, EventStream, HitlAnswer, IdempotencyKey,
    RunResult, Steer, Steered, Submission, Submitted,
};
pub use envelope::{OutputContract, RunEnvelope, RunEnvelopeBuilder};
pub use ids::{RunId, Timestamp};
pub use planner::{CatalogPlanner, Planner, ScriptedPlanner};
pub use store::{Durability, MemoryStore, RedbStore, Store};
#[cfg(feature = "postgres")]
pub use store::{PostgresOptions, PostgresStore};

/// What a service embedding the engine needs, in one import: `use flexrun::prelude::*;`.
///
/// ```
/// use flexrun::prelude::*;
/// use serde_json::json;
///
/// let writer = Capability::new(
///     "writer.en",
///     CapabilityKind::Execution,
///     ExecutorSpec::Builtin { handler: "write_copy".into() },
/// )
/// .with_input_facets(["objectiveBrief"])
/// .with_output_facets(["copyVariants"]);
/// let executors = Executors::new().builtin("write_copy", |call: &NodeCall| {
///     let brief: String = call.input("objectiveBrief")?;
///     NodeCall::output(&json!({"copyVariants": [format!("{brief}!")]}))
/// });
/// let draft = PlanDraft::new([PlanNode::for_capability("write", &writer)]);
/// let envelope = RunEnvelope::builder("Tagline")
///     .input("objectiveBrief", "Fresh bread")
///     .outputs(&["copyVariants"])
///     .build();
///
/// #[derive(Debug)]
/// struct Echo;
///
/// #[async_trait]
/// impl NodeExecutor for Echo {
///     async fn execute(&self, call: NodeCall) -> Result<serde_json::Map<String, serde_json::Value>, ExecError> {
///         NodeCall::output(&json!({"copyVariants": [call.objective]}))
///     }
/// }
///
/// let executors = executors.with_type("echo", std::sync::Arc::new(Echo));
/// # let _ = (executors, draft, envelope);
/// ```
pub mod prelude {
    pub use crate::RunResult;
    pub use crate::catalog::{Capability, CapabilityKind, ExecutorSpec, Facet, FacetDirection};
    pub use crate::diagnostics::Diagnostic;
    pub use crate::engine::{Engine, EngineConfig, ExecError, Executors, NodeCall, NodeExecutor};
    pub use crate::envelope::{OutputContract, RunEnvelope, RunEnvelopeBuilder};
    pub use crate::fsm::{EventBody, RunEvent, RunOutcome};
    pub use crate::graph::{PlanDelta, PlanDraft, PlanNode};
    pub use crate::planner::{
        CatalogPlanner, PlanRequest, PlanResponse, Planner, PlannerError, ScriptedPlanner,
    };
    pub use crate::store::{Durability, MemoryStore, RedbStore};
    pub use async_trait::async_trait;
}
