//! flexrun: a hybrid plan/execute engine.

pub mod catalog;
pub mod diagnostics;
pub mod fsm;
pub mod graph;
mod ids;
pub mod policy;
pub mod store;

pub use ids::{RunId, Timestamp};
