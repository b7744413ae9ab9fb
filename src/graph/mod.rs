//! The plan graph: immutable, versioned petgraph DAGs of plan nodes.
//!
//! [`PlanGraph::from_draft`] validates a planner's draft into version 1,
//! [`PlanGraph::apply_delta`] turns version N into N+1 without touching N, and
//! [`PlanGraph::snapshot`] / [`PlanGraph::from_snapshot`] convert to and from the stable,
//! id-based form that is persisted.

mod delta;
mod diff;
mod error;
mod model;
mod plan;
mod render;

pub use delta::apply_delta;
pub use error::GraphError;
pub use model::{DeltaOp, PlanDelta, PlanDiff, PlanDraft, PlanEdge, PlanNode, PlanSnapshot};
pub use plan::{NodeState, PlanGraph};

#[cfg(test)]
mod proptests;
#[cfg(test)]
pub(crate) mod testing;
