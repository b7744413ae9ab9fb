//! Facet catalog, capability registry and the contract compiler.

mod model;

pub use model::{
    AgentType, Capability, CapabilityKind, CapabilityStatus, ExecutorSpec, Facet, FacetDirection,
};
