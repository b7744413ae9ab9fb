//! The plan graph: immutable, versioned petgraph DAGs of plan nodes.

mod model;

pub use model::{DeltaOp, PlanDelta, PlanDiff, PlanDraft, PlanEdge, PlanNode, PlanSnapshot};
