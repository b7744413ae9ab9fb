//! The engine's catalog: facets, capabilities and the compiled-contract cache.

use crate::catalog::{CapabilityRegistry, ContractCache, FacetCatalog};

/// A consistent view of the catalog. The engine swaps in a new one on every registration;
/// runs keep the view they validated against.
#[derive(Debug, Clone, Default)]
pub struct CatalogState {
    /// Facets by name.
    pub facets: FacetCatalog,
    /// Capabilities by id.
    pub registry: CapabilityRegistry,
    /// Compiled node contracts, shared across runs.
    pub contracts: ContractCache,
}
