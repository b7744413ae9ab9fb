//! The facet catalog: resolves facet names to their definitions.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::CatalogError;
use super::model::Facet;
use crate::ids::{IdKind, check_id};

/// Source of catalog generations. Every change to any catalog takes a fresh value, so a
/// generation identifies one catalog content within the process (clones share it until
/// one of them changes).
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// Facets by name.
///
/// Names are dotted paths (`brief`, `brief.tone`): a dotted facet addresses a nested
/// property of its parent, see [`compile_contract`](super::compile_contract).
#[derive(Debug, Clone, Default)]
pub struct FacetCatalog {
    facets: BTreeMap<String, Facet>,
    generation: u64,
}

impl FacetCatalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a facet, replacing any facet of the same name.
    ///
    /// Re-registering an identical facet is a no-op and keeps the [`generation`](Self::generation).
    ///
    /// # Errors
    ///
    /// [`CatalogError::InvalidId`] (field `name`) when the name breaks the identifier grammar
    /// (see [`crate::ids`]); [`CatalogError::InvalidFacetSchema`] when the schema does not
    /// compile as a JSON Schema.
    pub fn register(&mut self, facet: Facet) -> Result<(), CatalogError> {
        check_id(IdKind::Facet, "name", &facet.name)?;
        self.insert(facet)
    }

    /// Adds a facet read back from a store: its name is not held to the identifier grammar,
    /// which it may predate; the schema must still compile.
    pub(crate) fn restore(&mut self, facet: Facet) -> Result<(), CatalogError> {
        if let Err(e) = check_id(IdKind::Facet, "name", &facet.name) {
            tracing::warn!(error = %e, "stored facet breaks the identifier grammar; kept as stored");
        }
        self.insert(facet)
    }

    fn insert(&mut self, facet: Facet) -> Result<(), CatalogError> {
        if let Err(error) = jsonschema::validator_for(&facet.schema) {
            let location = error.instance_path().to_string();
            let reason = if location.is_empty() {
                error.to_string()
            } else {
                format!("at {location}: {error}")
            };
            return Err(CatalogError::InvalidFacetSchema {
                name: facet.name,
                reason,
            });
        }
        if self.facets.get(&facet.name) == Some(&facet) {
            return Ok(());
        }
        self.facets.insert(facet.name.clone(), facet);
        self.generation = NEXT_GENERATION.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The facet called `name`.
    pub fn get(&self, name: &str) -> Option<&Facet> {
        self.facets.get(name)
    }

    /// Every facet, sorted by name.
    pub fn list(&self) -> impl ExactSizeIterator<Item = &Facet> + DoubleEndedIterator + '_ {
        self.facets.values()
    }

    /// True when a facet called `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.facets.contains_key(name)
    }

    /// Number of registered facets.
    pub fn len(&self) -> usize {
        self.facets.len()
    }

    /// True when no facet is registered.
    pub fn is_empty(&self) -> bool {
        self.facets.is_empty()
    }

    /// A stamp of the catalog's content: it changes whenever a facet is added or replaced,
    /// and is unique within the process, so caches keyed by it never serve stale contracts.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::catalog::FacetDirection;

    fn facet(name: &str, schema: serde_json::Value) -> Facet {
        Facet {
            name: name.to_owned(),
            title: String::new(),
            description: String::new(),
            direction: FacetDirection::Bidirectional,
            schema,
            instructions: String::new(),
            required_by_default: true,
        }
    }

    #[test]
    fn registers_and_lists_sorted_by_name() {
        let mut catalog = FacetCatalog::new();
        for name in ["zeta", "alpha", "brief.tone", "brief"] {
            catalog
                .register(facet(name, json!({"type": "string"})))
                .unwrap();
        }
        let names: Vec<&str> = catalog.list().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["alpha", "brief", "brief.tone", "zeta"]);
        assert_eq!(catalog.len(), 4);
        assert!(catalog.contains("brief.tone"));
        assert!(!catalog.contains("brief.audience"));
        assert_eq!(
            catalog.get("zeta").unwrap().schema,
            json!({"type": "string"})
        );
    }

    #[test]
    fn re_registering_replaces_and_bumps_the_generation() {
        let mut catalog = FacetCatalog::new();
        catalog
            .register(facet("copy", json!({"type": "string"})))
            .unwrap();
        let first = catalog.generation();
        catalog
            .register(facet("copy", json!({"type": "string"})))
            .unwrap();
        assert_eq!(
            catalog.generation(),
            first,
            "identical facet keeps generation"
        );
        catalog
            .register(facet("copy", json!({"type": "array"})))
            .unwrap();
        assert_ne!(catalog.generation(), first);
        assert_eq!(catalog.len(), 1);
        assert_eq!(
            catalog.get("copy").unwrap().schema,
            json!({"type": "array"})
        );
    }

    #[test]
    fn clones_diverge_in_generation_once_changed() {
        let mut a = FacetCatalog::new();
        a.register(facet("x", json!({"type": "string"}))).unwrap();
        let mut b = a.clone();
        assert_eq!(a.generation(), b.generation());
        b.register(facet("y", json!({"type": "string"}))).unwrap();
        a.register(facet("z", json!({"type": "string"}))).unwrap();
        assert_ne!(a.generation(), b.generation());
    }

    #[test]
    fn rejects_names_outside_the_id_grammar() {
        let mut catalog = FacetCatalog::new();
        let long = "n".repeat(crate::ids::MAX_ID_LEN + 1);
        for bad in [
            "",
            "has space",
            "slash/x",
            "é",
            ".lead",
            "trail.",
            "a..b",
            "q?",
            &long,
        ] {
            match catalog.register(facet(bad, json!({}))) {
                Err(CatalogError::InvalidId(e)) => assert_eq!(e.field(), "name", "{bad}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(catalog.is_empty());
        for good in ["a", "A-b_c.d-9", "brief.tone", "ns:brief@2", &long[1..]] {
            catalog.register(facet(good, json!({}))).unwrap();
        }
        assert_eq!(catalog.len(), 5);
    }

    #[test]
    fn a_stored_facet_may_predate_the_grammar() {
        let mut catalog = FacetCatalog::new();
        catalog
            .restore(facet("old name", json!({"type": "string"})))
            .unwrap();
        assert!(catalog.contains("old name"));
        assert!(matches!(
            catalog.restore(facet("x", json!({"type": "strng"}))),
            Err(CatalogError::InvalidFacetSchema { .. })
        ));
    }

    #[test]
    fn rejects_invalid_json_schemas() {
        let mut catalog = FacetCatalog::new();
        for bad in [
            json!({"type": "strng"}),
            json!(42),
            json!({"properties": {"a": {"type": 7}}}),
            json!({"pattern": "("}),
        ] {
            let err = catalog.register(facet("x", bad.clone())).unwrap_err();
            match err {
                CatalogError::InvalidFacetSchema { name, reason } => {
                    assert_eq!(name, "x");
                    assert!(!reason.is_empty(), "{bad}");
                }
                other => panic!("unexpected {other:?} for {bad}"),
            }
        }
        assert!(catalog.is_empty());
    }
}
