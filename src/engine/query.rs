//! Crate-internal handles on the engine for components built before it (executors that
//! need the live catalog) without keeping it alive.

use std::sync::Arc;

use super::{CatalogState, Engine};

impl Engine {
    /// A function returning the engine's current catalog, or `None` once the engine is gone.
    /// It holds the engine weakly: executors are owned by the engine, so a strong handle
    /// would be a reference cycle.
    pub(crate) fn weak_catalog(
        &self,
    ) -> impl Fn() -> Option<Arc<CatalogState>> + Send + Sync + 'static {
        let inner = Arc::downgrade(&self.inner);
        move || inner.upgrade().map(|inner| inner.catalog())
    }
}
