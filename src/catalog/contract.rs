//! The contract compiler: merges a node's facets into one JSON Schema and compiles it.
//!
//! # Merge semantics
//!
//! A contract is an object schema whose properties are the facets:
//! `{"type":"object","properties":{…},"required":[…],"additionalProperties":false}`.
//!
//! * A dotted facet name is a path: `brief.tone` is the property `tone` of the property
//!   `brief`. Every ancestor on the path must be an object; ancestors that no facet of the
//!   contract describes are closed objects (`additionalProperties: false`).
//! * Fragments for the same path are conjoined. Their `properties` merge recursively (so
//!   `brief`'s own `properties.tone` and the facet `brief.tone` meet at one node), `required`
//!   lists are united, `type` sets are intersected (`integer` fits `number`; an empty
//!   intersection is [`DiagnosticCode::FacetContractTypeConflict`]), `enum` sets must be equal
//!   ([`DiagnosticCode::FacetContractEnumConflict`] otherwise). Annotations (`title`,
//!   `description`, …) keep the first value; any other keyword given twice with different
//!   values keeps the first and appends the second under `allOf`, so both still hold.
//! * A facet with `requiredByDefault` is required, and so is each ancestor on its path.
//! * A facet's `title` and `description` annotate its property when the fragment has none.
//! * `$schema` inside fragments is dropped: the merged document is one 2020-12 schema.
//!   Fragments must be self-contained (no `$ref` to the document root).
//!
//! Facets are merged in name order (a parent before its dotted children), so the result
//! does not depend on the order the facets are listed in.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::facets::FacetCatalog;
use super::model::Facet;
use crate::diagnostics::{Diagnostic, DiagnosticCode, has_errors};

/// Which side of a node a contract describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContractDirection {
    /// What the node consumes; admits `input` and `bidirectional` facets.
    Input,
    /// What the node produces; admits `output` and `bidirectional` facets.
    Output,
}

impl ContractDirection {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Input => "input",
            Self::Output => "output",
        }
    }

    fn admits(self, facet: &Facet) -> bool {
        match self {
            Self::Input => facet.direction.allows_input(),
            Self::Output => facet.direction.allows_output(),
        }
    }
}

/// A merged contract schema together with its compiled validator.
pub struct CompiledContract {
    schema: Arc<Value>,
    validator: jsonschema::Validator,
}

impl fmt::Debug for CompiledContract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledContract")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl CompiledContract {
    /// The merged JSON Schema (sent to executors as `outputSchema`).
    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// The merged JSON Schema, shared (cheap to hand to every node call).
    pub fn shared_schema(&self) -> Arc<Value> {
        self.schema.clone()
    }

    /// Validates facet values (facet name → value) against the contract.
    ///
    /// # Errors
    ///
    /// One readable message per violation, each starting with the JSON pointer of the
    /// failing location (`/brief/tone: "loud" is not one of …`), `(root)` for the object itself.
    pub fn validate(&self, values: &Map<String, Value>) -> Result<(), Vec<String>> {
        self.validate_value(&Value::Object(values.clone()))
    }

    /// Validates any JSON value against the contract; see [`validate`](Self::validate).
    ///
    /// # Errors
    ///
    /// One message per violation, prefixed with the failing location's JSON pointer.
    pub fn validate_value(&self, value: &Value) -> Result<(), Vec<String>> {
        if self.validator.is_valid(value) {
            return Ok(());
        }
        let messages: Vec<String> = self
            .validator
            .iter_errors(value)
            .map(|error| {
                let location = error.instance_path().as_str();
                let location = if location.is_empty() {
                    "(root)"
                } else {
                    location
                };
                format!("{location}: {error}")
            })
            .collect();
        if messages.is_empty() {
            Ok(())
        } else {
            Err(messages)
        }
    }

    /// True when `value` satisfies the contract.
    pub fn is_valid(&self, value: &Value) -> bool {
        self.validator.is_valid(value)
    }
}

/// Compiles a user-supplied schema (a run's `json_schema` output contract).
///
/// # Errors
///
/// One [`DiagnosticCode::FacetContractSchemaInvalid`] diagnostic when the schema is not a
/// valid JSON Schema.
pub fn compile_schema(schema: &Value) -> Result<CompiledContract, Vec<Diagnostic>> {
    jsonschema::validator_for(schema)
        .map(|validator| CompiledContract {
            schema: Arc::new(schema.clone()),
            validator,
        })
        .map_err(|error| {
            vec![Diagnostic::error(
                DiagnosticCode::FacetContractSchemaInvalid,
                format!(
                    "output schema is not a valid json schema: {}",
                    describe_error(&error)
                ),
            )]
        })
}

/// Merges the named facets into one object schema and compiles it (see the module docs for
/// the merge rules). Duplicate names count once.
///
/// # Errors
///
/// Every problem found, each naming its facet: [`DiagnosticCode::UnknownFacet`],
/// [`DiagnosticCode::FacetContractDirectionMismatch`] (an `input`-only facet in an output
/// contract or an `output`-only facet in an input contract),
/// [`DiagnosticCode::FacetContractTypeConflict`], [`DiagnosticCode::FacetContractEnumConflict`]
/// and [`DiagnosticCode::FacetContractSchemaInvalid`] (the merged schema does not compile).
pub fn compile_contract(
    catalog: &FacetCatalog,
    facets: &[String],
    direction: ContractDirection,
) -> Result<CompiledContract, Vec<Diagnostic>> {
    let mut names: Vec<&str> = facets.iter().map(String::as_str).collect();
    names.sort_unstable();
    names.dedup();

    let mut diagnostics = Vec::new();
    let mut known = Vec::with_capacity(names.len());
    for name in names {
        let Some(facet) = catalog.get(name) else {
            diagnostics.push(
                Diagnostic::error(
                    DiagnosticCode::UnknownFacet,
                    format!("unknown facet `{name}` in {} contract", direction.as_str()),
                )
                .facet(name)
                .hint("use a facet registered in the catalog"),
            );
            continue;
        };
        if !direction.admits(facet) {
            diagnostics.push(
                Diagnostic::error(
                    DiagnosticCode::FacetContractDirectionMismatch,
                    format!(
                        "facet `{name}` is {}-only and cannot appear in an {} contract",
                        facet.direction.as_str(),
                        direction.as_str()
                    ),
                )
                .facet(name)
                .hint(match direction {
                    ContractDirection::Input => {
                        "an output-only facet cannot be consumed; list it as an output"
                    }
                    ContractDirection::Output => {
                        "an input-only facet cannot be produced; list it as an input"
                    }
                }),
            );
        }
        known.push(facet);
    }

    let root = merge_facets(&known, &mut diagnostics);
    if has_errors(&diagnostics) {
        return Err(diagnostics);
    }
    let schema = root.into_value();
    match jsonschema::validator_for(&schema) {
        Ok(validator) => Ok(CompiledContract {
            schema: Arc::new(schema),
            validator,
        }),
        Err(error) => Err(attribute_schema_failure(&known, &error)),
    }
}

/// Names the facets responsible for a merged schema that does not compile: those whose
/// fragment fails on its own at its path, or every facet when only the combination fails.
fn attribute_schema_failure(
    facets: &[&Facet],
    merged_error: &jsonschema::ValidationError<'_>,
) -> Vec<Diagnostic> {
    let culprits: Vec<(&Facet, String)> = facets
        .iter()
        .filter_map(|facet| {
            let mut ignored = Vec::new();
            let alone = merge_facets(std::slice::from_ref(facet), &mut ignored).into_value();
            jsonschema::validator_for(&alone)
                .err()
                .map(|error| (*facet, describe_error(&error)))
        })
        .collect();
    let culprits = if culprits.is_empty() {
        let reason = describe_error(merged_error);
        facets.iter().map(|f| (*f, reason.clone())).collect()
    } else {
        culprits
    };
    culprits
        .into_iter()
        .map(|(facet, reason)| {
            Diagnostic::error(
                DiagnosticCode::FacetContractSchemaInvalid,
                format!(
                    "contract with facet `{}` is not a valid json schema: {reason}",
                    facet.name
                ),
            )
            .facet(&facet.name)
            .hint("facet schemas must be self-contained (no `$ref` to the document root)")
        })
        .collect()
}

fn describe_error(error: &jsonschema::ValidationError<'_>) -> String {
    let location = error.instance_path().as_str();
    if location.is_empty() {
        error.to_string()
    } else {
        format!("at {location}: {error}")
    }
}

fn merge_facets(facets: &[&Facet], diagnostics: &mut Vec<Diagnostic>) -> SchemaNode {
    let mut root = SchemaNode {
        types: Some(TypeConstraint {
            types: BTreeSet::from(["object".to_owned()]),
            origin: String::new(),
        }),
        ..SchemaNode::default()
    };
    for facet in facets {
        let segments: Vec<&str> = facet.name.split('.').collect();
        let mut node = &mut root;
        for (depth, segment) in segments.iter().enumerate() {
            if depth > 0 {
                node.constrain_types(
                    BTreeSet::from(["object".to_owned()]),
                    &facet.name,
                    &pointer(&segments[..depth]),
                    diagnostics,
                );
            }
            if facet.required_by_default {
                node.required.insert((*segment).to_owned());
            }
            node = node.properties.entry((*segment).to_owned()).or_default();
        }
        let mut fragment = facet.schema.clone();
        if let Value::Object(map) = &mut fragment {
            if !facet.title.is_empty() && !map.contains_key("title") {
                map.insert("title".to_owned(), Value::String(facet.title.clone()));
            }
            if !facet.description.is_empty() && !map.contains_key("description") {
                map.insert(
                    "description".to_owned(),
                    Value::String(facet.description.clone()),
                );
            }
        }
        let mut path = segments.iter().map(|s| (*s).to_owned()).collect();
        node.merge_fragment(&fragment, &facet.name, &mut path, diagnostics);
    }
    root
}

fn pointer<S: AsRef<str>>(segments: &[S]) -> String {
    segments.iter().fold(String::new(), |mut out, segment| {
        out.push('/');
        out.push_str(&segment.as_ref().replace('~', "~0").replace('/', "~1"));
        out
    })
}

/// Keywords that annotate rather than constrain: the first value wins.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "$comment",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
];

#[derive(Debug)]
struct TypeConstraint {
    types: BTreeSet<String>,
    origin: String,
}

#[derive(Debug)]
struct EnumConstraint {
    values: Vec<Value>,
    origin: String,
}

/// One property path of a contract under construction.
#[derive(Debug, Default)]
struct SchemaNode {
    keywords: Map<String, Value>,
    all_of: Vec<Value>,
    types: Option<TypeConstraint>,
    enumeration: Option<EnumConstraint>,
    properties: BTreeMap<String, SchemaNode>,
    required: BTreeSet<String>,
    /// True once a fragment was merged here; implied-only nodes are closed objects.
    described: bool,
}

impl SchemaNode {
    fn merge_fragment(
        &mut self,
        fragment: &Value,
        facet: &str,
        path: &mut Vec<String>,
        diagnostics: &mut Vec<Diagnostic>,
    ) {
        self.described = true;
        let map = match fragment {
            Value::Object(map) => map,
            Value::Bool(true) => return,
            Value::Bool(false)
            | Value::Null
            | Value::Number(_)
            | Value::String(_)
            | Value::Array(_) => {
                self.all_of.push(fragment.clone());
                return;
            }
        };
        for (keyword, value) in map {
            match keyword.as_str() {
                "$schema" => {}
                "type" => match parse_types(value) {
                    Some(types) => self.constrain_types(types, facet, &pointer(path), diagnostics),
                    None => self.merge_keyword(keyword, value),
                },
                "enum" => match value.as_array() {
                    Some(values) => self.constrain_enum(values, facet, &pointer(path), diagnostics),
                    None => self.merge_keyword(keyword, value),
                },
                "properties" => match value.as_object() {
                    Some(properties) => {
                        for (name, sub) in properties {
                            path.push(name.clone());
                            self.properties
                                .entry(name.clone())
                                .or_default()
                                .merge_fragment(sub, facet, path, diagnostics);
                            path.pop();
                        }
                    }
                    None => self.merge_keyword(keyword, value),
                },
                "required" => match string_array(value) {
                    Some(names) => self.required.extend(names),
                    None => self.merge_keyword(keyword, value),
                },
                _ => self.merge_keyword(keyword, value),
            }
        }
    }

    fn merge_keyword(&mut self, keyword: &str, value: &Value) {
        match self.keywords.get(keyword) {
            None => {
                self.keywords.insert(keyword.to_owned(), value.clone());
            }
            Some(existing) if existing == value || ANNOTATIONS.contains(&keyword) => {}
            Some(_) => {
                let mut extra = Map::new();
                extra.insert(keyword.to_owned(), value.clone());
                self.all_of.push(Value::Object(extra));
            }
        }
    }

    fn constrain_types(
        &mut self,
        types: BTreeSet<String>,
        facet: &str,
        location: &str,
        diagnostics: &mut Vec<Diagnostic>,
    ) {
        let Some(existing) = &mut self.types else {
            self.types = Some(TypeConstraint {
                types,
                origin: facet.to_owned(),
            });
            return;
        };
        let common = intersect_types(&existing.types, &types);
        if common.is_empty() {
            let location = if location.is_empty() { "/" } else { location };
            let other = if existing.origin.is_empty() || existing.origin == facet {
                String::new()
            } else {
                format!(" from facet `{}`", existing.origin)
            };
            diagnostics.push(
                Diagnostic::error(
                    DiagnosticCode::FacetContractTypeConflict,
                    format!(
                        "facet `{facet}` needs `{location}` to be of type {}, which conflicts with type {}{other}",
                        join_types(&types),
                        join_types(&existing.types),
                    ),
                )
                .facet(facet)
                .hint("make the facet schemas agree on the type or drop one facet from the node"),
            );
        } else {
            existing.types = common;
        }
    }

    fn constrain_enum(
        &mut self,
        values: &[Value],
        facet: &str,
        location: &str,
        diagnostics: &mut Vec<Diagnostic>,
    ) {
        let Some(existing) = &self.enumeration else {
            self.enumeration = Some(EnumConstraint {
                values: values.to_vec(),
                origin: facet.to_owned(),
            });
            return;
        };
        let same = values.iter().all(|v| existing.values.contains(v))
            && existing.values.iter().all(|v| values.contains(v));
        if !same {
            let other = if existing.origin == facet {
                String::new()
            } else {
                format!(" from facet `{}`", existing.origin)
            };
            diagnostics.push(
                Diagnostic::error(
                    DiagnosticCode::FacetContractEnumConflict,
                    format!(
                        "facet `{facet}` allows {} at `{location}`, which conflicts with {}{other}",
                        Value::Array(values.to_vec()),
                        Value::Array(existing.values.clone()),
                    ),
                )
                .facet(facet)
                .hint("give both facets the same enum values or drop one facet from the node"),
            );
        }
    }

    fn into_value(self) -> Value {
        let mut schema = self.keywords;
        if let Some(constraint) = self.types {
            let mut types: Vec<Value> = constraint.types.into_iter().map(Value::String).collect();
            let value = if types.len() == 1 {
                types.remove(0)
            } else {
                Value::Array(types)
            };
            schema.insert("type".to_owned(), value);
        }
        if let Some(constraint) = self.enumeration {
            schema.insert("enum".to_owned(), Value::Array(constraint.values));
        }
        if !self.properties.is_empty() {
            let properties: Map<String, Value> = self
                .properties
                .into_iter()
                .map(|(name, node)| (name, node.into_value()))
                .collect();
            schema.insert("properties".to_owned(), Value::Object(properties));
        }
        if !self.required.is_empty() {
            let required = self.required.into_iter().map(Value::String).collect();
            schema.insert("required".to_owned(), Value::Array(required));
        }
        if !self.described && !schema.contains_key("additionalProperties") {
            schema.insert("additionalProperties".to_owned(), Value::Bool(false));
        }
        if !self.all_of.is_empty() {
            match schema.get_mut("allOf") {
                Some(Value::Array(existing)) => existing.extend(self.all_of),
                Some(_) | None => {
                    schema.insert("allOf".to_owned(), Value::Array(self.all_of));
                }
            }
        }
        Value::Object(schema)
    }
}

fn parse_types(value: &Value) -> Option<BTreeSet<String>> {
    match value {
        Value::String(name) => Some(BTreeSet::from([name.clone()])),
        Value::Array(_) => string_array(value).map(|names| names.into_iter().collect()),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::Object(_) => None,
    }
}

fn string_array(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|item| item.as_str().map(str::to_owned))
        .collect()
}

/// Types satisfying both sets; `integer` satisfies `number`.
fn intersect_types(a: &BTreeSet<String>, b: &BTreeSet<String>) -> BTreeSet<String> {
    let mut common: BTreeSet<String> = a.intersection(b).cloned().collect();
    let has = |set: &BTreeSet<String>, name: &str| set.contains(name);
    if (has(a, "number") && has(b, "integer")) || (has(a, "integer") && has(b, "number")) {
        common.insert("integer".to_owned());
    }
    common
}

fn join_types(types: &BTreeSet<String>) -> String {
    types.iter().cloned().collect::<Vec<_>>().join(" | ")
}

/// Counters of a [`ContractCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that compiled a contract.
    pub misses: u64,
    /// Facet lists currently cached (each holds up to one contract per direction).
    pub entries: usize,
}

/// A shared cache of compiled contracts keyed by (direction, facet list as given).
///
/// Cloning is cheap and clones share the cache. Entries belong to one catalog
/// [`generation`](FacetCatalog::generation): a lookup with a catalog whose generation
/// differs (a facet was registered or replaced) drops every entry first. Failed
/// compilations are cached too. When `max_entries` facet lists are cached, the next new
/// list clears the cache.
#[derive(Clone)]
pub struct ContractCache {
    inner: Arc<Mutex<CacheInner>>,
}

type CachedContract = Result<Arc<CompiledContract>, Arc<[Diagnostic]>>;

#[derive(Default)]
struct CacheInner {
    generation: u64,
    entries: HashMap<Vec<String>, DirectionSlots>,
    max_entries: usize,
    hits: u64,
    misses: u64,
}

#[derive(Default)]
struct DirectionSlots {
    input: Option<CachedContract>,
    output: Option<CachedContract>,
}

impl DirectionSlots {
    fn slot(&mut self, direction: ContractDirection) -> &mut Option<CachedContract> {
        match direction {
            ContractDirection::Input => &mut self.input,
            ContractDirection::Output => &mut self.output,
        }
    }
}

impl fmt::Debug for ContractCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stats = self.stats();
        f.debug_struct("ContractCache")
            .field("entries", &stats.entries)
            .field("hits", &stats.hits)
            .field("misses", &stats.misses)
            .finish()
    }
}

impl Default for ContractCache {
    fn default() -> Self {
        Self::with_max_entries(Self::DEFAULT_MAX_ENTRIES)
    }
}

impl ContractCache {
    /// Facet lists kept by [`ContractCache::new`] before the cache is cleared.
    pub const DEFAULT_MAX_ENTRIES: usize = 4096;

    /// An empty cache holding up to [`DEFAULT_MAX_ENTRIES`](Self::DEFAULT_MAX_ENTRIES) facet lists.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty cache holding up to `max_entries` facet lists (at least one).
    pub fn with_max_entries(max_entries: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(CacheInner {
                max_entries: max_entries.max(1),
                ..CacheInner::default()
            })),
        }
    }

    /// The compiled contract for `facets` in `direction`, compiling it on first use.
    ///
    /// Compilation happens outside the lock; when two callers race on the same key, the
    /// first stored contract is returned to both.
    ///
    /// # Errors
    ///
    /// The diagnostics of [`compile_contract`].
    pub fn get_or_compile(
        &self,
        catalog: &FacetCatalog,
        facets: &[String],
        direction: ContractDirection,
    ) -> Result<Arc<CompiledContract>, Vec<Diagnostic>> {
        let generation = catalog.generation();
        {
            let mut inner = self.lock();
            if inner.generation != generation {
                inner.entries.clear();
                inner.generation = generation;
            }
            let cached = inner
                .entries
                .get_mut(facets)
                .and_then(|slots| slots.slot(direction).clone());
            if let Some(cached) = cached {
                inner.hits += 1;
                return cached.map_err(|diagnostics| diagnostics.to_vec());
            }
            inner.misses += 1;
        }

        let compiled: CachedContract = compile_contract(catalog, facets, direction)
            .map(Arc::new)
            .map_err(Arc::from);

        let mut inner = self.lock();
        if inner.generation != generation {
            return compiled.map_err(|diagnostics| diagnostics.to_vec());
        }
        if !inner.entries.contains_key(facets) && inner.entries.len() >= inner.max_entries {
            inner.entries.clear();
        }
        let slot = inner
            .entries
            .entry(facets.to_vec())
            .or_default()
            .slot(direction);
        let stored = slot.get_or_insert(compiled).clone();
        stored.map_err(|diagnostics| diagnostics.to_vec())
    }

    /// Hit, miss and size counters.
    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats {
            hits: inner.hits,
            misses: inner.misses,
            entries: inner.entries.len(),
        }
    }

    /// Drops every cached contract.
    pub fn clear(&self) {
        self.lock().entries.clear();
    }

    fn lock(&self) -> MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::catalog::FacetDirection;

    fn facet(name: &str, direction: FacetDirection, schema: Value) -> Facet {
        Facet {
            name: name.to_owned(),
            title: String::new(),
            description: String::new(),
            direction,
            schema,
            instructions: String::new(),
            required_by_default: true,
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn codes(diagnostics: &[Diagnostic]) -> Vec<(DiagnosticCode, Option<&str>)> {
        diagnostics
            .iter()
            .map(|d| (d.code, d.facet.as_deref()))
            .collect()
    }

    /// `brief` (object with audience and tone), `brief.tone` (enum), `copy` (output).
    fn brief_catalog() -> FacetCatalog {
        let mut catalog = FacetCatalog::new();
        catalog
            .register(facet(
                "brief",
                FacetDirection::Bidirectional,
                json!({
                    "type": "object",
                    "properties": {"audience": {"type": "string"}, "tone": {"type": "string"}},
                    "required": ["audience"]
                }),
            ))
            .unwrap();
        catalog
            .register(facet(
                "brief.tone",
                FacetDirection::Bidirectional,
                json!({"type": "string", "enum": ["formal", "casual"]}),
            ))
            .unwrap();
        let mut copy = facet(
            "copy",
            FacetDirection::Output,
            json!({"type": "array", "items": {"type": "string"}}),
        );
        copy.required_by_default = false;
        copy.description = "copy variants".to_owned();
        catalog.register(copy).unwrap();
        catalog
            .register(facet(
                "objective",
                FacetDirection::Input,
                json!({"type": "string"}),
            ))
            .unwrap();
        catalog
    }

    #[test]
    fn merges_dotted_facets_into_one_nested_tree() {
        let catalog = brief_catalog();
        let contract = compile_contract(
            &catalog,
            &names(&["copy", "brief.tone", "brief"]),
            ContractDirection::Output,
        )
        .unwrap();
        assert_eq!(
            contract.schema(),
            &json!({
                "type": "object",
                "properties": {
                    "brief": {
                        "type": "object",
                        "properties": {
                            "audience": {"type": "string"},
                            "tone": {"type": "string", "enum": ["formal", "casual"]}
                        },
                        "required": ["audience", "tone"]
                    },
                    "copy": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "copy variants"
                    }
                },
                "required": ["brief"],
                "additionalProperties": false
            })
        );
        let good = object(json!({"brief": {"audience": "devs", "tone": "casual"}, "copy": ["a"]}));
        assert_eq!(contract.validate(&good), Ok(()));

        let bad = object(json!({"brief": {"audience": "devs", "tone": "loud"}}));
        let messages = contract.validate(&bad).unwrap_err();
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(messages[0].starts_with("/brief/tone: "), "{messages:?}");
        assert!(messages[0].contains("loud"), "{messages:?}");

        let extra = object(json!({"brief": {"audience": "a", "tone": "formal"}, "other": 1}));
        let messages = contract.validate(&extra).unwrap_err();
        assert!(messages[0].starts_with("(root): "), "{messages:?}");
        assert!(messages[0].contains("other"), "{messages:?}");
    }

    #[test]
    fn dotted_facet_alone_implies_a_closed_required_parent() {
        let catalog = brief_catalog();
        let contract =
            compile_contract(&catalog, &names(&["brief.tone"]), ContractDirection::Input).unwrap();
        assert_eq!(
            contract.schema()["properties"]["brief"],
            json!({
                "type": "object",
                "properties": {"tone": {"type": "string", "enum": ["formal", "casual"]}},
                "required": ["tone"],
                "additionalProperties": false
            })
        );
        assert_eq!(contract.schema()["required"], json!(["brief"]));
        assert!(contract.is_valid(&json!({"brief": {"tone": "formal"}})));
        assert!(!contract.is_valid(&json!({"brief": {"tone": "formal", "x": 1}})));
        assert!(!contract.is_valid(&json!({})));
    }

    #[test]
    fn merge_is_independent_of_listing_order_and_duplicates() {
        let catalog = brief_catalog();
        let a = compile_contract(
            &catalog,
            &names(&["brief", "brief.tone"]),
            ContractDirection::Input,
        )
        .unwrap();
        let b = compile_contract(
            &catalog,
            &names(&["brief.tone", "brief", "brief.tone"]),
            ContractDirection::Input,
        )
        .unwrap();
        assert_eq!(a.schema(), b.schema());
    }

    #[test]
    fn unknown_facet_is_reported() {
        let catalog = brief_catalog();
        let err = compile_contract(
            &catalog,
            &names(&["brief", "ghost"]),
            ContractDirection::Input,
        )
        .unwrap_err();
        assert_eq!(codes(&err), [(DiagnosticCode::UnknownFacet, Some("ghost"))]);
        assert!(err[0].message.contains("`ghost`"));
    }

    #[test]
    fn direction_mismatch_is_reported_per_contract_side() {
        let catalog = brief_catalog();
        let err = compile_contract(
            &catalog,
            &names(&["copy", "brief"]),
            ContractDirection::Input,
        )
        .unwrap_err();
        assert_eq!(
            codes(&err),
            [(DiagnosticCode::FacetContractDirectionMismatch, Some("copy"))]
        );
        let err = compile_contract(&catalog, &names(&["objective"]), ContractDirection::Output)
            .unwrap_err();
        assert_eq!(
            codes(&err),
            [(
                DiagnosticCode::FacetContractDirectionMismatch,
                Some("objective")
            )]
        );
        assert!(
            compile_contract(&catalog, &names(&["objective"]), ContractDirection::Input).is_ok()
        );
        assert!(compile_contract(&catalog, &names(&["copy"]), ContractDirection::Output).is_ok());
    }

    #[test]
    fn type_conflict_between_parent_and_dotted_child() {
        let mut catalog = FacetCatalog::new();
        catalog
            .register(facet(
                "brief",
                FacetDirection::Bidirectional,
                json!({"type": "string"}),
            ))
            .unwrap();
        catalog
            .register(facet(
                "brief.tone",
                FacetDirection::Bidirectional,
                json!({"type": "string"}),
            ))
            .unwrap();
        let err = compile_contract(
            &catalog,
            &names(&["brief", "brief.tone"]),
            ContractDirection::Input,
        )
        .unwrap_err();
        assert_eq!(
            codes(&err),
            [(
                DiagnosticCode::FacetContractTypeConflict,
                Some("brief.tone")
            )]
        );
        assert!(err[0].message.contains("`/brief`"), "{}", err[0].message);
        assert!(
            err[0].message.contains("facet `brief`"),
            "{}",
            err[0].message
        );
    }

    #[test]
    fn type_conflict_inside_nested_properties() {
        let mut catalog = FacetCatalog::new();
        catalog
            .register(facet(
                "brief",
                FacetDirection::Bidirectional,
                json!({"type": "object", "properties": {"tone": {"type": "string"}}}),
            ))
            .unwrap();
        catalog
            .register(facet(
                "brief.tone",
                FacetDirection::Bidirectional,
                json!({"type": "integer"}),
            ))
            .unwrap();
        let err = compile_contract(
            &catalog,
            &names(&["brief", "brief.tone"]),
            ContractDirection::Input,
        )
        .unwrap_err();
        assert_eq!(
            codes(&err),
            [(
                DiagnosticCode::FacetContractTypeConflict,
                Some("brief.tone")
            )]
        );
        assert!(
            err[0].message.contains("`/brief/tone`"),
            "{}",
            err[0].message
        );
    }

    #[test]
    fn compatible_types_intersect() {
        let mut catalog = FacetCatalog::new();
        catalog
            .register(facet(
                "score",
                FacetDirection::Bidirectional,
                json!({"type": "object", "properties": {"value": {"type": ["number", "null"]}}}),
            ))
            .unwrap();
        catalog
            .register(facet(
                "score.value",
                FacetDirection::Bidirectional,
                json!({"type": "integer"}),
            ))
            .unwrap();
        let contract = compile_contract(
            &catalog,
            &names(&["score", "score.value"]),
            ContractDirection::Input,
        )
        .unwrap();
        assert_eq!(
            contract.schema()["properties"]["score"]["properties"]["value"]["type"],
            json!("integer")
        );
        assert!(contract.is_valid(&json!({"score": {"value": 3}})));
        assert!(!contract.is_valid(&json!({"score": {"value": 3.5}})));
    }

    #[test]
    fn enum_conflict_is_reported() {
        let mut catalog = FacetCatalog::new();
        catalog
            .register(facet(
                "brief",
                FacetDirection::Bidirectional,
                json!({"type": "object", "properties": {"tone": {"enum": ["formal", "casual"]}}}),
            ))
            .unwrap();
        catalog
            .register(facet(
                "brief.tone",
                FacetDirection::Bidirectional,
                json!({"enum": ["formal", "playful"]}),
            ))
            .unwrap();
        let err = compile_contract(
            &catalog,
            &names(&["brief", "brief.tone"]),
            ContractDirection::Output,
        )
        .unwrap_err();
        assert_eq!(
            codes(&err),
            [(
                DiagnosticCode::FacetContractEnumConflict,
                Some("brief.tone")
            )]
        );
        assert!(err[0].message.contains("playful"), "{}", err[0].message);

        let mut same = catalog.clone();
        same.register(facet(
            "brief.tone",
            FacetDirection::Bidirectional,
            json!({"enum": ["casual", "formal"]}),
        ))
        .unwrap();
        assert!(
            compile_contract(
                &same,
                &names(&["brief", "brief.tone"]),
                ContractDirection::Output
            )
            .is_ok()
        );
    }

    #[test]
    fn differing_constraints_are_conjoined() {
        let mut catalog = FacetCatalog::new();
        catalog
            .register(facet(
                "brief",
                FacetDirection::Bidirectional,
                json!({"type": "object", "properties": {"tone": {"type": "string", "maxLength": 8}}}),
            ))
            .unwrap();
        catalog
            .register(facet(
                "brief.tone",
                FacetDirection::Bidirectional,
                json!({"type": "string", "minLength": 3, "maxLength": 5}),
            ))
            .unwrap();
        let contract = compile_contract(
            &catalog,
            &names(&["brief", "brief.tone"]),
            ContractDirection::Input,
        )
        .unwrap();
        assert!(contract.is_valid(&json!({"brief": {"tone": "abcd"}})));
        assert!(
            !contract.is_valid(&json!({"brief": {"tone": "abcdef"}})),
            "second maxLength holds"
        );
        assert!(!contract.is_valid(&json!({"brief": {"tone": "ab"}})));
    }

    #[test]
    fn schema_invalid_names_the_facet() {
        let mut catalog = FacetCatalog::new();
        catalog
            .register(facet(
                "linked",
                FacetDirection::Bidirectional,
                json!({"$defs": {"s": {"type": "string"}}, "$ref": "#/$defs/s"}),
            ))
            .unwrap();
        catalog
            .register(facet(
                "plain",
                FacetDirection::Bidirectional,
                json!({"type": "string"}),
            ))
            .unwrap();
        let err = compile_contract(
            &catalog,
            &names(&["plain", "linked"]),
            ContractDirection::Input,
        )
        .unwrap_err();
        assert_eq!(
            codes(&err),
            [(DiagnosticCode::FacetContractSchemaInvalid, Some("linked"))]
        );
    }

    #[test]
    fn compile_schema_accepts_valid_and_reports_invalid() {
        let contract = compile_schema(&json!({
            "type": "object",
            "properties": {"n": {"type": "integer", "minimum": 1}},
            "required": ["n"]
        }))
        .unwrap();
        assert_eq!(contract.validate(&object(json!({"n": 2}))), Ok(()));
        let messages = contract.validate(&object(json!({"n": 0}))).unwrap_err();
        assert!(messages[0].starts_with("/n: "), "{messages:?}");

        let err = compile_schema(&json!({"type": "objekt"})).unwrap_err();
        assert_eq!(
            codes(&err),
            [(DiagnosticCode::FacetContractSchemaInvalid, None)]
        );
    }

    #[test]
    fn cache_reuses_contracts_until_the_catalog_changes() {
        let mut catalog = brief_catalog();
        let cache = ContractCache::new();
        let list = names(&["brief", "brief.tone"]);
        let first = cache
            .get_or_compile(&catalog, &list, ContractDirection::Input)
            .unwrap();
        let again = cache
            .clone()
            .get_or_compile(&catalog, &list, ContractDirection::Input)
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let output = cache
            .get_or_compile(&catalog, &list, ContractDirection::Output)
            .unwrap();
        assert!(!Arc::ptr_eq(&first, &output), "directions are cached apart");
        assert_eq!(
            cache.stats(),
            CacheStats {
                hits: 1,
                misses: 2,
                entries: 1
            }
        );

        catalog
            .register(facet(
                "brief.tone",
                FacetDirection::Bidirectional,
                json!({"type": "string", "enum": ["formal", "casual", "playful"]}),
            ))
            .unwrap();
        let recompiled = cache
            .get_or_compile(&catalog, &list, ContractDirection::Input)
            .unwrap();
        assert!(!Arc::ptr_eq(&first, &recompiled));
        assert!(recompiled.is_valid(&json!({"brief": {"audience": "a", "tone": "playful"}})));
        assert!(!first.is_valid(&json!({"brief": {"audience": "a", "tone": "playful"}})));
        assert_eq!(cache.stats().entries, 1);
    }

    #[test]
    fn cache_keeps_failures_and_respects_its_bound() {
        let catalog = brief_catalog();
        let cache = ContractCache::with_max_entries(2);
        for _ in 0..2 {
            let err = cache
                .get_or_compile(&catalog, &names(&["ghost"]), ContractDirection::Input)
                .unwrap_err();
            assert_eq!(codes(&err), [(DiagnosticCode::UnknownFacet, Some("ghost"))]);
        }
        assert_eq!(cache.stats().misses, 1);
        cache
            .get_or_compile(&catalog, &names(&["brief"]), ContractDirection::Input)
            .unwrap();
        assert_eq!(cache.stats().entries, 2);
        cache
            .get_or_compile(&catalog, &names(&["copy"]), ContractDirection::Output)
            .unwrap();
        assert_eq!(cache.stats().entries, 1);
        cache.clear();
        assert_eq!(cache.stats().entries, 0);
    }

    #[test]
    fn compiled_contracts_are_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<CompiledContract>();
        assert_send_sync::<ContractCache>();
    }
}
