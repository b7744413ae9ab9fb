//! Property-test building blocks for suites that embed flexrun (cargo feature `testing`).
//!
//! Two levels:
//!
//! - [`machine`]: strategies for [`RunInput`](crate::fsm::RunInput)s and [`RunModel`], a
//!   `proptest_state_machine::ReferenceStateMachine` whose state is the reference automaton
//!   ([`ReferenceRun`] over [`Automaton`], the flat table interpreter). Drive your own
//!   wrapper of the run machine against it.
//! - [`engine`]: strategies for steering a run from outside (pause, resume, cancel, HITL
//!   answers, signals, interleaved with waiting for the run) and [`run_case`], which submits
//!   an envelope to an [`Engine`](crate::Engine) you built (your planner, executors, catalog
//!   and store), applies the operations through the public API and checks what the engine
//!   answered and streamed against the run machine, rebuilt from the stream.
//!
//! Both check streams with [`check_stream`], the event contract of [`crate::conformance`]:
//! gap-free seqs, nothing after `complete`, no `node_start` while paused or between a replan
//! trigger and the next `plan_updated`, plan versions rising by one, and the rest.
//!
//! proptest and proptest-state-machine are re-exported ([`proptest`],
//! [`proptest_state_machine`]) so a suite uses the versions these strategies are built with.
//!
//! ```
//! use std::sync::Arc;
//! use flexrun::testing::engine::{CaseOptions, run_case, steering};
//! use flexrun::testing::proptest::test_runner::{Config, TestRunner};
//! use flexrun::{Engine, MemoryStore, RunEnvelope, demo};
//!
//! let envelope: RunEnvelope = serde_json::from_value(serde_json::json!({
//!     "objective": "a tagline",
//!     "inputs": {"objectiveBrief": "fresh bread"},
//!     "outputContract": {"mode": "facets", "facets": ["copyVariants"]}
//! })).unwrap();
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! let mut runner = TestRunner::new(Config { cases: 4, ..Config::default() });
//! runner
//!     .run(&steering(&[], 1..8), |ops| {
//!         let report = rt.block_on(async {
//!             let engine = Engine::open(demo::config(Arc::new(MemoryStore::new()))).await.unwrap();
//!             let report = run_case(&engine, envelope.clone(), &ops, &CaseOptions::default()).await;
//!             engine.shutdown().await;
//!             report
//!         });
//!         assert!(report.passed(), "{report}");
//!         Ok(())
//!     })
//!     .unwrap();
//! ```

pub mod engine;
pub mod machine;
mod reference;
mod stream;

pub use engine::{CaseOptions, CaseReport, Op, SteerOp, run_case};
pub use machine::{ModelState, RunModel, Verdict};
pub use reference::{Automaton, ReferenceRun};
pub use stream::{MACHINE_RULES, check_stream};

pub use proptest;
pub use proptest_state_machine;

/// The code samples of `docs/TESTING.md`, compiled as doctests so the guide cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../../docs/TESTING.md")]
pub struct Guide;
