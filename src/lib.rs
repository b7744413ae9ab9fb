//! flexrun: a hybrid plan/execute engine.
//!
//! A probabilistic [`Planner`] proposes a plan; the deterministic orchestrator validates it,
//! executes it as a DAG, enforces policies, pauses for humans and asks the planner for
//! corrections. Every step is an explicit transition of the run state machine
//! ([`fsm::RunMachine`]), committed to the store before it is published.
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
#[cfg(any(test, feature = "demo"))]
pub mod demo;
pub mod diagnostics;
pub mod engine;
mod envelope;
#[cfg(feature = "client")]
pub mod executors;
pub mod fsm;
pub mod graph;
#[cfg(feature = "client")]
pub mod http_client;
mod ids;
pub mod planner;
pub mod policy;
pub mod store;
pub mod validate;

pub use engine::{Engine, EngineConfig, EngineError, EventStream, HitlAnswer, RunResult};
pub use envelope::{OutputContract, RunEnvelope};
pub use ids::{RunId, Timestamp};
pub use planner::{CatalogPlanner, Planner, ScriptedPlanner};
pub use store::{Durability, MemoryStore, RedbStore, Store};
