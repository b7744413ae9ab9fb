//! Facet catalog, capability registry and the contract compiler.

mod contract;
mod error;
mod facets;
mod model;
mod registry;

pub use contract::{
    CacheStats, CompiledContract, ContractCache, ContractDirection, compile_contract,
    compile_schema,
};
pub use error::CatalogError;
pub use facets::FacetCatalog;
pub use model::{
    AgentType, Capability, CapabilityKind, CapabilityStatus, DEFAULT_BACKOFF_MULTIPLIER,
    ExecutorSpec, Facet, FacetDirection, Fallback, Retry, Then,
};
pub use registry::{CapabilityRegistry, check_capability_facets, check_capability_ids};
