//! Errors raised when rebuilding a plan graph from persisted data.

use thiserror::Error;

/// A persisted [`PlanSnapshot`](super::PlanSnapshot) that does not describe a valid plan DAG.
///
/// Drafts and deltas from a planner are reported as diagnostics instead; this error only
/// covers data that should have been valid when it was written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum GraphError {
    /// Two nodes of the snapshot share one id.
    #[error("snapshot has duplicate node id `{id}`")]
    DuplicateNodeId {
        /// The repeated id.
        id: String,
    },
    /// A node id of the snapshot is empty or malformed.
    #[error("snapshot has invalid node id `{id}`")]
    InvalidNodeId {
        /// The offending id.
        id: String,
    },
    /// An edge of the snapshot names a node that does not exist.
    #[error("snapshot edge `{from}` -> `{to}` names an unknown node")]
    DanglingEdge {
        /// Upstream node id.
        from: String,
        /// Downstream node id.
        to: String,
    },
    /// An edge appears twice in the snapshot.
    #[error("snapshot has duplicate edge `{from}` -> `{to}`")]
    DuplicateEdge {
        /// Upstream node id.
        from: String,
        /// Downstream node id.
        to: String,
    },
    /// The snapshot's edges form a cycle.
    #[error("snapshot has a cycle through node `{node}`")]
    Cycle {
        /// A node on the cycle.
        node: String,
    },
}
