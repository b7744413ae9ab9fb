//! Errors raised when registering facets and capabilities.

use crate::ids::IdError;

/// Why a facet or capability was refused by the catalog or the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// A capability id or facet name breaks the identifier grammar (see
    /// [`crate::ids`]); the error names the field (`capabilityId`, `inputFacets[0]`, `name`).
    #[error(transparent)]
    InvalidId(#[from] IdError),
    /// A facet's schema is not a valid JSON Schema.
    #[error("facet `{name}` has an invalid json schema: {reason}")]
    InvalidFacetSchema {
        /// The facet whose schema was refused.
        name: String,
        /// What the schema compiler reported.
        reason: String,
    },
    /// A capability allows zero attempts per node.
    #[error("capability `{capability_id}` has max attempts 0; at least one attempt is required")]
    ZeroMaxAttempts {
        /// The refused capability.
        capability_id: String,
    },
    /// A capability has a zero per-attempt timeout.
    #[error("capability `{capability_id}` has timeout 0 ms; the timeout must be positive")]
    ZeroTimeout {
        /// The refused capability.
        capability_id: String,
    },
    /// A custom executor type is empty or spells one of the known types, so it would not read
    /// back as itself.
    #[error(
        "capability `{capability_id}` has custom executor type `{executor_type}`; a custom type must be non-empty and not builtin, http, llm or human"
    )]
    BadExecutorType {
        /// The refused capability.
        capability_id: String,
        /// The refused type.
        executor_type: String,
    },
    /// A capability id is not in the registry.
    #[error("unknown capability `{capability_id}`")]
    UnknownCapability {
        /// The id that was looked up.
        capability_id: String,
    },
}
