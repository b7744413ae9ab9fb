//! The capability registry.

use std::collections::BTreeMap;

use super::error::CatalogError;
use super::facets::FacetCatalog;
use super::model::{Capability, CapabilityStatus, ExecutorSpec};
use crate::diagnostics::{Diagnostic, DiagnosticCode};
use crate::ids::{IdError, IdKind, check_id};

/// Capabilities by id.
#[derive(Debug, Clone, Default)]
pub struct CapabilityRegistry {
    capabilities: BTreeMap<String, Capability>,
}

impl CapabilityRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a capability, replacing any capability with the same id.
    ///
    /// Facet names are not resolved here; see [`check_capability_facets`].
    ///
    /// # Errors
    ///
    /// [`CatalogError::InvalidId`] when the id or a facet name breaks the identifier grammar
    /// ([`check_capability_ids`]), [`CatalogError::ZeroMaxAttempts`] when `max_attempts`
    /// is 0, [`CatalogError::ZeroTimeout`] when `timeout_ms` is 0.
    pub fn register(&mut self, capability: Capability) -> Result<(), CatalogError> {
        ids_of(&capability)?;
        self.insert(capability)
    }

    /// Adds a capability read back from a store: its id and facet names are not held to the
    /// identifier grammar, which they may predate; every other check applies.
    pub(crate) fn restore(&mut self, capability: Capability) -> Result<(), CatalogError> {
        if let Err(e) = ids_of(&capability) {
            tracing::warn!(error = %e, "stored capability breaks the identifier grammar; kept as stored");
        }
        self.insert(capability)
    }

    fn insert(&mut self, capability: Capability) -> Result<(), CatalogError> {
        if capability.max_attempts == 0 {
            return Err(CatalogError::ZeroMaxAttempts {
                capability_id: capability.capability_id,
            });
        }
        if capability.timeout_ms == 0 {
            return Err(CatalogError::ZeroTimeout {
                capability_id: capability.capability_id,
            });
        }
        if let ExecutorSpec::Custom { executor_type, .. } = &capability.executor {
            let t = executor_type.trim();
            if t.is_empty() || ExecutorSpec::KNOWN_TYPES.contains(&t) {
                return Err(CatalogError::BadExecutorType {
                    executor_type: executor_type.clone(),
                    capability_id: capability.capability_id,
                });
            }
        }
        self.capabilities
            .insert(capability.capability_id.clone(), capability);
        Ok(())
    }

    /// The capability with id `capability_id`.
    pub fn get(&self, capability_id: &str) -> Option<&Capability> {
        self.capabilities.get(capability_id)
    }

    /// Every capability, sorted by id.
    pub fn list(&self) -> impl ExactSizeIterator<Item = &Capability> + DoubleEndedIterator + '_ {
        self.capabilities.values()
    }

    /// Active capabilities, sorted by id.
    pub fn active(&self) -> impl Iterator<Item = &Capability> + '_ {
        self.capabilities.values().filter(|c| c.is_active())
    }

    /// Active capabilities that declare `facet` as an output, sorted by id.
    pub fn producers_of<'a>(&'a self, facet: &'a str) -> impl Iterator<Item = &'a Capability> + 'a {
        self.active().filter(move |c| c.produces(facet))
    }

    /// True when a capability with id `capability_id` is registered.
    pub fn contains(&self, capability_id: &str) -> bool {
        self.capabilities.contains_key(capability_id)
    }

    /// Number of registered capabilities.
    pub fn len(&self) -> usize {
        self.capabilities.len()
    }

    /// True when no capability is registered.
    pub fn is_empty(&self) -> bool {
        self.capabilities.is_empty()
    }

    /// Activates or deactivates a capability.
    ///
    /// # Errors
    ///
    /// [`CatalogError::UnknownCapability`] when no capability has that id.
    pub fn set_status(
        &mut self,
        capability_id: &str,
        status: CapabilityStatus,
    ) -> Result<(), CatalogError> {
        let capability = self.capabilities.get_mut(capability_id).ok_or_else(|| {
            CatalogError::UnknownCapability {
                capability_id: capability_id.to_owned(),
            }
        })?;
        capability.status = status;
        Ok(())
    }
}

/// Checks a capability's id and facet names against the identifier grammar (see
/// [`crate::ids`]).
///
/// # Errors
///
/// An [`IdError`] for the first that breaks it, naming the field: `capabilityId`,
/// `inputFacets[i]` or `outputFacets[i]`.
pub fn check_capability_ids(
    capability_id: &str,
    input_facets: &[String],
    output_facets: &[String],
) -> Result<(), IdError> {
    check_id(IdKind::Capability, "capabilityId", capability_id)?;
    for (side, names) in [
        ("inputFacets", input_facets),
        ("outputFacets", output_facets),
    ] {
        for (i, name) in names.iter().enumerate() {
            check_id(IdKind::Facet, &format!("{side}[{i}]"), name)?;
        }
    }
    Ok(())
}

fn ids_of(capability: &Capability) -> Result<(), IdError> {
    check_capability_ids(
        &capability.capability_id,
        &capability.input_facets,
        &capability.output_facets,
    )
}

/// Checks a capability's facets against the catalog: unknown facets ([`DiagnosticCode::UnknownFacet`])
/// and facets declared against their direction — an `output`-only facet as an input or an
/// `input`-only facet as an output ([`DiagnosticCode::FacetContractDirectionMismatch`]).
///
/// Diagnostics come inputs first, then outputs, each in declaration order.
pub fn check_capability_facets(capability: &Capability, catalog: &FacetCatalog) -> Vec<Diagnostic> {
    let id = capability.capability_id.as_str();
    let mut diagnostics = Vec::new();
    for name in &capability.input_facets {
        match catalog.get(name) {
            None => diagnostics.push(unknown_facet(id, name, "input")),
            Some(facet) if !facet.direction.allows_input() => diagnostics.push(
                Diagnostic::error(
                    DiagnosticCode::FacetContractDirectionMismatch,
                    format!(
                        "capability `{id}` consumes facet `{name}`, which is {}-only",
                        facet.direction.as_str()
                    ),
                )
                .capability(id)
                .facet(name)
                .hint("declare the facet as `bidirectional` or list it as an output"),
            ),
            Some(_) => {}
        }
    }
    for name in &capability.output_facets {
        match catalog.get(name) {
            None => diagnostics.push(unknown_facet(id, name, "output")),
            Some(facet) if !facet.direction.allows_output() => diagnostics.push(
                Diagnostic::error(
                    DiagnosticCode::FacetContractDirectionMismatch,
                    format!(
                        "capability `{id}` produces facet `{name}`, which is {}-only",
                        facet.direction.as_str()
                    ),
                )
                .capability(id)
                .facet(name)
                .hint("declare the facet as `bidirectional` or list it as an input"),
            ),
            Some(_) => {}
        }
    }
    diagnostics
}

fn unknown_facet(capability_id: &str, facet: &str, side: &str) -> Diagnostic {
    Diagnostic::error(
        DiagnosticCode::UnknownFacet,
        format!("capability `{capability_id}` lists unknown {side} facet `{facet}`"),
    )
    .capability(capability_id)
    .facet(facet)
    .hint("register the facet before the capability")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::catalog::{AgentType, CapabilityKind, ExecutorSpec, Facet, FacetDirection};

    fn capability(id: &str, inputs: &[&str], outputs: &[&str]) -> Capability {
        Capability {
            capability_id: id.to_owned(),
            version: "1.0.0".to_owned(),
            display_name: String::new(),
            summary: String::new(),
            kind: CapabilityKind::Execution,
            agent_type: AgentType::Ai,
            input_facets: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output_facets: outputs.iter().map(|s| (*s).to_owned()).collect(),
            cost: 0.0,
            timeout_ms: 1_000,
            max_attempts: 1,
            fallback: None,
            executor: ExecutorSpec::Human,
            status: CapabilityStatus::Active,
        }
    }

    fn facet(name: &str, direction: FacetDirection) -> Facet {
        Facet {
            name: name.to_owned(),
            title: String::new(),
            description: String::new(),
            direction,
            schema: json!({"type": "string"}),
            instructions: String::new(),
            required_by_default: true,
        }
    }

    #[test]
    fn registers_replaces_and_lists_sorted() {
        let mut registry = CapabilityRegistry::new();
        registry
            .register(capability("writer.fr", &[], &["a"]))
            .unwrap();
        registry
            .register(capability("writer.en", &[], &["a"]))
            .unwrap();
        registry
            .register(capability("writer.en", &[], &["b"]))
            .unwrap();
        assert_eq!(registry.len(), 2);
        let ids: Vec<&str> = registry.list().map(|c| c.capability_id.as_str()).collect();
        assert_eq!(ids, ["writer.en", "writer.fr"]);
        assert_eq!(registry.get("writer.en").unwrap().output_facets, ["b"]);
        assert!(registry.contains("writer.fr"));
        assert!(registry.get("missing").is_none());
    }

    #[test]
    fn rejects_invalid_capabilities() {
        let mut registry = CapabilityRegistry::new();
        let field = |result: Result<(), CatalogError>| match result {
            Err(CatalogError::InvalidId(e)) => e.field().to_owned(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(registry.register(capability(" ", &[], &[]))),
            "capabilityId"
        );
        assert_eq!(
            field(registry.register(capability("../../etc", &[], &[]))),
            "capabilityId"
        );
        assert_eq!(
            field(registry.register(capability("w", &["ok", "a b"], &[]))),
            "inputFacets[1]"
        );
        let huge = "f".repeat(1_000_001);
        assert_eq!(
            field(registry.register(capability("w", &[], &[huge.as_str()]))),
            "outputFacets[0]"
        );
        let mut zero_attempts = capability("a", &[], &[]);
        zero_attempts.max_attempts = 0;
        assert_eq!(
            registry.register(zero_attempts),
            Err(CatalogError::ZeroMaxAttempts {
                capability_id: "a".to_owned()
            })
        );
        let mut zero_timeout = capability("b", &[], &[]);
        zero_timeout.timeout_ms = 0;
        let err = registry.register(zero_timeout).unwrap_err();
        assert_eq!(
            err.to_string(),
            "capability `b` has timeout 0 ms; the timeout must be positive"
        );
        assert!(registry.is_empty());
    }

    #[test]
    fn status_changes_filter_active() {
        let mut registry = CapabilityRegistry::new();
        registry.register(capability("a", &[], &["x"])).unwrap();
        registry.register(capability("b", &[], &["x"])).unwrap();
        registry
            .set_status("a", CapabilityStatus::Inactive)
            .unwrap();
        let active: Vec<&str> = registry
            .active()
            .map(|c| c.capability_id.as_str())
            .collect();
        assert_eq!(active, ["b"]);
        let producers: Vec<&str> = registry
            .producers_of("x")
            .map(|c| c.capability_id.as_str())
            .collect();
        assert_eq!(producers, ["b"]);
        assert_eq!(
            registry.set_status("zz", CapabilityStatus::Active),
            Err(CatalogError::UnknownCapability {
                capability_id: "zz".to_owned()
            })
        );
        registry.set_status("a", CapabilityStatus::Active).unwrap();
        assert_eq!(registry.active().count(), 2);
    }

    #[test]
    fn capability_facet_check_reports_unknown_and_direction() {
        let mut catalog = FacetCatalog::new();
        catalog
            .register(facet("brief", FacetDirection::Input))
            .unwrap();
        catalog
            .register(facet("copy", FacetDirection::Output))
            .unwrap();
        catalog
            .register(facet("notes", FacetDirection::Bidirectional))
            .unwrap();

        let good = capability("w", &["brief", "notes"], &["copy", "notes"]);
        assert!(check_capability_facets(&good, &catalog).is_empty());

        let bad = capability("w", &["copy", "ghost"], &["brief"]);
        let diags = check_capability_facets(&bad, &catalog);
        let got: Vec<(DiagnosticCode, Option<&str>, Option<&str>)> = diags
            .iter()
            .map(|d| (d.code, d.capability_id.as_deref(), d.facet.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    DiagnosticCode::FacetContractDirectionMismatch,
                    Some("w"),
                    Some("copy")
                ),
                (DiagnosticCode::UnknownFacet, Some("w"), Some("ghost")),
                (
                    DiagnosticCode::FacetContractDirectionMismatch,
                    Some("w"),
                    Some("brief")
                ),
            ]
        );
    }
}
