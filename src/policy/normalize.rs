//! The PolicyNormalizer: raw policy JSON in, [`NormalizedPolicies`] out.
//!
//! Accepted spellings, beyond the canonical camelCase form:
//! - every key may also be written in snake_case (`max_replans`, `capability_id`, …);
//! - trigger kinds may be written in snake_case (`on_node_complete`), `signal` is an alias of
//!   `manual`, and a trigger's `kind` may be given as `type`;
//! - top-level `maxAttempts`, `maxReplans`, `maxNodes` and `maxConcurrency` belong to `planner`;
//! - top-level `replanAfter` / `hitlAfter` (capability ids) become one `onNodeComplete` policy
//!   per entry, with ids `replan-after-<capabilityId>` / `hitl-after-<capabilityId>`, appended
//!   after the explicit runtime policies.
//!
//! A JSON `null` counts as an absent field. Any other key is an error.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::catalog::CapabilityKind;
use crate::hitl::{FollowUp, HitlKind};
use crate::ids::{IdKind, check_id};

use super::budget::{BudgetResource, Budgets, Threshold};
use super::condition::Condition;
use super::error::PolicyError;
use super::model::{
    MAX_FIRES_LIMIT, NodeSelector, NormalizedPolicies, PlannerPolicy, PolicyAction, PolicyTrigger,
    RuntimePolicy,
};
use crate::catalog::{DEFAULT_BACKOFF_MULTIPLIER, Fallback, Retry, Then};

/// Name used for the document itself in error paths.
const ROOT: &str = "policies";

/// Normalize a raw policy document (the run envelope's `policies`).
///
/// `null` yields the defaults. The result is canonical: serializing it and normalizing again
/// gives the same value.
///
/// # Errors
///
/// A [`PolicyError`] naming the JSON path of the first offending field: wrong types, unknown
/// keys or variants, missing required fields, duplicate policy ids, policy ids and the
/// capability and node ids policies name that break the identifier grammar of [`crate::ids`]
/// (policy ids, generated legacy ones included, are at most
/// [`MAX_PREFIX_ID_LEN`](crate::ids::MAX_PREFIX_ID_LEN) bytes), zero `maxAttempts`,
/// `maxNodes` or `maxConcurrency`, `maxFires` outside 1..=100, an invalid JSON-Logic condition,
/// an empty HITL question, a capability or kind both required and forbidden, and the `goto` and
/// `emit` actions, which this engine does not execute.
pub fn normalize(raw: &Value) -> Result<NormalizedPolicies, PolicyError> {
    if raw.is_null() {
        return Ok(NormalizedPolicies::default());
    }
    let mut root = Obj::new(raw, "")?;
    let planner = planner_policy(&mut root)?;
    let mut runtime = Vec::new();
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    let mut push = |policy: RuntimePolicy, path: String| -> Result<(), PolicyError> {
        if let Some(first) = ids.get(&policy.id) {
            return Err(PolicyError::DuplicateId {
                path,
                id: policy.id,
                first: first.clone(),
            });
        }
        ids.insert(policy.id.clone(), path);
        runtime.push(policy);
        Ok(())
    };
    if let Some(field) = root.get("runtime", &[])? {
        let items = field.value.as_array().ok_or_else(|| {
            invalid_type(&field.path, "an array of runtime policies", field.value)
        })?;
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", field.path);
            push(runtime_policy(item, &path)?, path)?;
        }
    }
    for legacy in [Legacy::ReplanAfter, Legacy::HitlAfter] {
        if let Some(field) = root.get(legacy.key(), &[])? {
            for (path, capability_id) in id_list(&field, IdKind::Capability)? {
                let policy = legacy.policy(capability_id);
                check_id(IdKind::Policy, &path, &policy.id)?;
                push(policy, path)?;
            }
        }
    }
    let budgets = budgets(&mut root)?;
    let fallback = root
        .get("fallback", &[])?
        .map(|found| fallback(found.value, &found.path))
        .transpose()?;
    root.finish()?;
    add_exhaustion_policies(&mut runtime, &budgets);
    Ok(NormalizedPolicies {
        planner,
        runtime,
        budgets,
        fallback,
    })
}

/// `budgets`: resource → a positive limit.
fn budgets(root: &mut Obj<'_>) -> Result<Budgets, PolicyError> {
    let Some(found) = root.get("budgets", &[])? else {
        return Ok(Budgets::new());
    };
    let mut obj = require_object(&found, "an object of budgets by resource")?;
    let mut out = Budgets::new();
    for resource in BudgetResource::ALL {
        if let Some(field) = obj.get(resource.as_str(), &[])? {
            let limit = number(field.field())?;
            if limit <= 0.0 {
                return Err(invalid_value(
                    &field.path,
                    "a budget must be greater than 0",
                ));
            }
            out.insert(resource, limit);
        }
    }
    obj.finish()?;
    Ok(out)
}

/// A budget that no `onBudget` policy watches pauses the run when it is spent: policy
/// `budget-<resource>` (trigger at the whole budget, action `pause`), appended after the
/// declared policies.
fn add_exhaustion_policies(runtime: &mut Vec<RuntimePolicy>, budgets: &Budgets) {
    for &resource in budgets.keys() {
        let watched = runtime.iter().any(
            |p| matches!(&p.trigger, PolicyTrigger::OnBudget { resource: r, .. } if *r == resource),
        );
        if watched {
            continue;
        }
        runtime.push(RuntimePolicy {
            id: format!("budget-{}", resource.as_str().to_ascii_lowercase()),
            enabled: true,
            max_fires: super::model::DEFAULT_MAX_FIRES,
            trigger: PolicyTrigger::OnBudget {
                resource,
                threshold: Threshold::Fraction(1.0),
            },
            action: PolicyAction::Pause {
                reason: Some(format!(
                    "the `{}` budget is spent; resume with a larger budget to continue",
                    resource.as_str()
                )),
            },
        });
    }
}

const THENS: &[(&str, &[&str], Then)] = &[("hitl", &[], Then::Hitl), ("fail", &[], Then::Fail)];

/// Normalize a fallback ladder (`policies.fallback`, or a capability's `fallback`) found at
/// `path`: `{retry?: {maxAttempts?, backoffMs?, multiplier?, maxBackoffMs?}, then?}`.
///
/// # Errors
/// A [`PolicyError`] naming the JSON path of the first offending field: wrong types, unknown
/// keys or variants, `maxAttempts` 0, `multiplier` outside 1..=100.
pub fn normalize_fallback(raw: &Value, path: &str) -> Result<Fallback, PolicyError> {
    fallback(raw, path)
}

fn fallback(raw: &Value, path: &str) -> Result<Fallback, PolicyError> {
    if !raw.is_object() {
        return Err(invalid_type(path, "a fallback object", raw));
    }
    let mut obj = Obj::new(raw, path)?;
    let retry = match obj.get("retry", &[])? {
        Some(found) => {
            let mut r = require_object(&found, "a retry object")?;
            let max_attempts = r
                .get("maxAttempts", &[])?
                .map(|f| uint32(f.field(), 1))
                .transpose()?;
            let backoff_ms = r
                .get("backoffMs", &[])?
                .map(|f| uint(f.field(), 0, u64::from(u32::MAX)))
                .transpose()?
                .unwrap_or(0);
            let multiplier = match r.get("multiplier", &[])? {
                Some(f) => {
                    let m = number(f.field())?;
                    if !(1.0..=100.0).contains(&m) {
                        return Err(invalid_value(
                            &f.path,
                            format!("must be within 1..=100, found {m}"),
                        ));
                    }
                    m
                }
                None => DEFAULT_BACKOFF_MULTIPLIER,
            };
            let max_backoff_ms = r
                .get("maxBackoffMs", &[])?
                .map(|f| uint(f.field(), 0, u64::from(u32::MAX)))
                .transpose()?;
            r.finish()?;
            Some(Retry {
                max_attempts,
                backoff_ms,
                multiplier,
                max_backoff_ms,
            })
        }
        None => None,
    };
    let then = obj
        .get("then", &[])?
        .map(|f| variant(f.field(), "fallback step", THENS))
        .transpose()?;
    obj.finish()?;
    Ok(Fallback { retry, then })
}

/// A field found in an object: its value and its path as spelled in the document.
#[derive(Debug, Clone, Copy)]
struct Field<'a> {
    value: &'a Value,
    path: &'a str,
}

/// An owned-path variant of [`Field`] (paths are built per lookup).
#[derive(Debug, Clone)]
struct Found<'a> {
    value: &'a Value,
    path: String,
}

impl<'a> Found<'a> {
    fn field(&self) -> Field<'_> {
        Field {
            value: self.value,
            path: &self.path,
        }
    }
}

/// A JSON object being read: records which keys were consumed so that leftovers are reported.
#[derive(Debug)]
struct Obj<'a> {
    map: Option<&'a Map<String, Value>>,
    path: String,
    used: BTreeSet<&'a str>,
    expected: Vec<&'static str>,
}

impl<'a> Obj<'a> {
    /// Read `value` as an object; `null` is an empty object.
    fn new(value: &'a Value, path: &str) -> Result<Self, PolicyError> {
        let map = match value {
            Value::Null => None,
            Value::Object(map) => Some(map),
            Value::Bool(_) | Value::Number(_) | Value::String(_) | Value::Array(_) => {
                return Err(invalid_type(display_path(path), "an object", value));
            }
        };
        Ok(Self {
            map,
            path: path.to_owned(),
            used: BTreeSet::new(),
            expected: Vec::new(),
        })
    }

    /// An absent object (every lookup finds nothing).
    fn absent(path: &str) -> Self {
        Self {
            map: None,
            path: path.to_owned(),
            used: BTreeSet::new(),
            expected: Vec::new(),
        }
    }

    fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Look up `name` (canonical camelCase), its snake_case spelling and `aliases`. Giving more
    /// than one spelling is a conflict; `null` counts as absent.
    fn get(
        &mut self,
        name: &'static str,
        aliases: &[&'static str],
    ) -> Result<Option<Found<'a>>, PolicyError> {
        if !self.expected.contains(&name) {
            self.expected.push(name);
        }
        let Some(map) = self.map else {
            return Ok(None);
        };
        let snake = snake_case(name);
        let spellings = std::iter::once(name)
            .chain((snake != name).then_some(snake.as_str()))
            .chain(aliases.iter().copied());
        let mut found: Option<Found<'a>> = None;
        for spelling in spellings {
            let Some((key, value)) = map.get_key_value(spelling) else {
                continue;
            };
            self.used.insert(key.as_str());
            if let Some(first) = &found {
                return Err(PolicyError::Conflict {
                    path: self.child(key),
                    other: first.path.clone(),
                });
            }
            found = Some(Found {
                value,
                path: self.child(key),
            });
        }
        Ok(found.filter(|f| !f.value.is_null()))
    }

    /// Like [`Obj::get`], but absence is an error.
    fn require(
        &mut self,
        name: &'static str,
        aliases: &[&'static str],
    ) -> Result<Found<'a>, PolicyError> {
        self.get(name, aliases)?
            .ok_or_else(|| PolicyError::Missing {
                path: self.child(name),
            })
    }

    /// Refuse every key that was not looked up.
    fn finish(self) -> Result<(), PolicyError> {
        let Some(map) = self.map else {
            return Ok(());
        };
        let unknown: Vec<String> = map
            .keys()
            .filter(|k| !self.used.contains(k.as_str()))
            .cloned()
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        Err(PolicyError::UnknownKeys {
            path: display_path(&self.path).to_owned(),
            noun: if unknown.len() == 1 { "key" } else { "keys" },
            keys: unknown,
            expected: self.expected,
        })
    }
}

fn display_path(path: &str) -> &str {
    if path.is_empty() { ROOT } else { path }
}

fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string \"{s}\""),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

fn invalid_type(path: &str, expected: &str, found: &Value) -> PolicyError {
    PolicyError::InvalidType {
        path: path.to_owned(),
        expected: expected.to_owned(),
        found: describe(found),
    }
}

fn invalid_value(path: &str, message: impl Into<String>) -> PolicyError {
    PolicyError::InvalidValue {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn boolean(field: Field<'_>) -> Result<bool, PolicyError> {
    field
        .value
        .as_bool()
        .ok_or_else(|| invalid_type(field.path, "a boolean", field.value))
}

fn uint(field: Field<'_>, min: u64, max: u64) -> Result<u64, PolicyError> {
    let n = field
        .value
        .as_u64()
        .ok_or_else(|| invalid_type(field.path, "a non-negative integer", field.value))?;
    if n < min {
        return Err(invalid_value(
            field.path,
            format!("must be at least {min}, found {n}"),
        ));
    }
    if n > max {
        return Err(invalid_value(
            field.path,
            format!("must be at most {max}, found {n}"),
        ));
    }
    Ok(n)
}

fn uint32(field: Field<'_>, min: u32) -> Result<u32, PolicyError> {
    let n = uint(field, u64::from(min), u64::from(u32::MAX))?;
    u32::try_from(n).map_err(|_| invalid_value(field.path, "out of range"))
}

fn number(field: Field<'_>) -> Result<f64, PolicyError> {
    field
        .value
        .as_f64()
        .filter(|n| n.is_finite())
        .ok_or_else(|| invalid_type(field.path, "a number", field.value))
}

fn string(field: Field<'_>) -> Result<String, PolicyError> {
    field
        .value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| invalid_type(field.path, "a string", field.value))
}

fn non_empty(field: Field<'_>) -> Result<String, PolicyError> {
    let s = string(field)?;
    if s.trim().is_empty() {
        return Err(invalid_value(field.path, "must not be empty"));
    }
    Ok(s)
}

/// A string that must be an identifier of `kind` (see [`crate::ids`]).
fn id(field: Field<'_>, kind: IdKind) -> Result<String, PolicyError> {
    let s = string(field)?;
    check_id(kind, field.path, &s)?;
    Ok(s)
}

/// A list of identifiers of `kind`, as [`string_list`] reads it.
fn id_list(found: &Found<'_>, kind: IdKind) -> Result<Vec<(String, String)>, PolicyError> {
    let list = string_list(found)?;
    for (path, s) in &list {
        check_id(kind, path, s)?;
    }
    Ok(list)
}

/// A list of non-empty strings; duplicates are dropped (first occurrence kept). Returns each
/// kept entry with its path.
fn string_list(found: &Found<'_>) -> Result<Vec<(String, String)>, PolicyError> {
    let items = found
        .value
        .as_array()
        .ok_or_else(|| invalid_type(&found.path, "an array of strings", found.value))?;
    let mut out: Vec<(String, String)> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("{}[{i}]", found.path);
        let s = non_empty(Field {
            value: item,
            path: &path,
        })?;
        if !out.iter().any(|(_, seen)| *seen == s) {
            out.push((path, s));
        }
    }
    Ok(out)
}

/// Parse a string into one of `table`'s values (canonical spelling first, then aliases).
fn variant<T: Copy>(
    field: Field<'_>,
    what: &'static str,
    table: &[(&'static str, &[&'static str], T)],
) -> Result<T, PolicyError> {
    let s = field
        .value
        .as_str()
        .ok_or_else(|| invalid_type(field.path, "a string", field.value))?;
    table
        .iter()
        .find(|(name, aliases, _)| *name == s || aliases.contains(&s))
        .map(|(_, _, value)| *value)
        .ok_or_else(|| PolicyError::UnknownVariant {
            path: field.path.to_owned(),
            what,
            value: s.to_owned(),
            expected: table.iter().map(|(name, _, _)| *name).collect(),
        })
}

const CAPABILITY_KINDS: &[(&str, &[&str], CapabilityKind)] = &[
    ("structuring", &[], CapabilityKind::Structuring),
    ("execution", &[], CapabilityKind::Execution),
    ("validation", &[], CapabilityKind::Validation),
    ("transformation", &[], CapabilityKind::Transformation),
    ("routing", &[], CapabilityKind::Routing),
];

const HITL_KINDS: &[(&str, &[&str], HitlKind)] = &[
    ("approval", &[], HitlKind::Approval),
    ("clarify", &[], HitlKind::Clarify),
];

const FOLLOW_UPS: &[(&str, &[&str], FollowUp)] = &[
    ("continue", &[], FollowUp::Continue),
    ("replan", &[], FollowUp::Replan),
    ("fail", &[], FollowUp::Fail),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TriggerKind {
    OnStart,
    OnNodeComplete,
    OnValidationFail,
    OnTimeout,
    OnMetricBelow,
    OnBudget,
    Manual,
}

const TRIGGER_KINDS: &[(&str, &[&str], TriggerKind)] = &[
    ("onStart", &["on_start"], TriggerKind::OnStart),
    (
        "onNodeComplete",
        &["on_node_complete"],
        TriggerKind::OnNodeComplete,
    ),
    (
        "onValidationFail",
        &["on_validation_fail"],
        TriggerKind::OnValidationFail,
    ),
    ("onTimeout", &["on_timeout"], TriggerKind::OnTimeout),
    (
        "onMetricBelow",
        &["on_metric_below"],
        TriggerKind::OnMetricBelow,
    ),
    ("onBudget", &["on_budget"], TriggerKind::OnBudget),
    ("manual", &["signal"], TriggerKind::Manual),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActionType {
    Replan,
    Hitl,
    Pause,
    Fail,
    Goto,
    Emit,
}

const ACTION_TYPES: &[(&str, &[&str], ActionType)] = &[
    ("replan", &[], ActionType::Replan),
    ("hitl", &[], ActionType::Hitl),
    ("pause", &[], ActionType::Pause),
    ("fail", &[], ActionType::Fail),
    ("goto", &[], ActionType::Goto),
    ("emit", &[], ActionType::Emit),
];

fn planner_policy(root: &mut Obj<'_>) -> Result<PlannerPolicy, PolicyError> {
    let defaults = PlannerPolicy::default();
    let planner_value = root.get("planner", &[])?;
    let mut planner = match &planner_value {
        Some(found) => Obj::new(found.value, &found.path)?,
        None => Obj::absent("planner"),
    };
    let mut limit = |name: &'static str, min: u32, default: u32| -> Result<u32, PolicyError> {
        let inner = planner.get(name, &[])?;
        let legacy = root.get(name, &[])?;
        match (inner, legacy) {
            (Some(inner), Some(legacy)) => Err(PolicyError::Conflict {
                path: legacy.path,
                other: inner.path,
            }),
            (Some(found), None) | (None, Some(found)) => uint32(found.field(), min),
            (None, None) => Ok(default),
        }
    };
    let max_attempts = limit("maxAttempts", 1, defaults.max_attempts)?;
    let max_replans = limit("maxReplans", 0, defaults.max_replans)?;
    let max_nodes = limit("maxNodes", 1, defaults.max_nodes)?;
    let max_concurrency = limit("maxConcurrency", 1, defaults.max_concurrency)?;

    let forbidden_capabilities = optional_capabilities(&mut planner, "forbiddenCapabilities")?;
    let forbidden_kinds = optional_kinds(&mut planner, "forbiddenKinds")?;
    let required_capabilities = optional_capabilities(&mut planner, "requiredCapabilities")?;
    let required_kinds = optional_kinds(&mut planner, "requiredKinds")?;
    planner.finish()?;

    for (path, capability) in &required_capabilities {
        if let Some((other, _)) = forbidden_capabilities.iter().find(|(_, c)| c == capability) {
            return Err(PolicyError::Conflict {
                path: path.clone(),
                other: other.clone(),
            });
        }
    }
    for (path, kind) in &required_kinds {
        if let Some((other, _)) = forbidden_kinds.iter().find(|(_, k)| k == kind) {
            return Err(PolicyError::Conflict {
                path: path.clone(),
                other: other.clone(),
            });
        }
    }
    Ok(PlannerPolicy {
        max_attempts,
        max_replans,
        max_nodes,
        max_concurrency,
        forbidden_capabilities: values(forbidden_capabilities),
        forbidden_kinds: values(forbidden_kinds),
        required_capabilities: values(required_capabilities),
        required_kinds: values(required_kinds),
    })
}

fn values<T>(entries: Vec<(String, T)>) -> Vec<T> {
    entries.into_iter().map(|(_, v)| v).collect()
}

fn optional_capabilities(
    obj: &mut Obj<'_>,
    name: &'static str,
) -> Result<Vec<(String, String)>, PolicyError> {
    match obj.get(name, &[])? {
        Some(found) => id_list(&found, IdKind::Capability),
        None => Ok(Vec::new()),
    }
}

fn optional_kinds(
    obj: &mut Obj<'_>,
    name: &'static str,
) -> Result<Vec<(String, CapabilityKind)>, PolicyError> {
    let Some(found) = obj.get(name, &[])? else {
        return Ok(Vec::new());
    };
    let items = found
        .value
        .as_array()
        .ok_or_else(|| invalid_type(&found.path, "an array of capability kinds", found.value))?;
    let mut out: Vec<(String, CapabilityKind)> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("{}[{i}]", found.path);
        let kind = variant(
            Field {
                value: item,
                path: &path,
            },
            "capability kind",
            CAPABILITY_KINDS,
        )?;
        if !out.iter().any(|(_, seen)| *seen == kind) {
            out.push((path, kind));
        }
    }
    Ok(out)
}

fn runtime_policy(value: &Value, path: &str) -> Result<RuntimePolicy, PolicyError> {
    if value.is_null() {
        return Err(invalid_type(path, "a runtime policy object", value));
    }
    let mut obj = Obj::new(value, path)?;
    let id = id(obj.require("id", &[])?.field(), IdKind::Policy)?;
    let enabled = match obj.get("enabled", &[])? {
        Some(found) => boolean(found.field())?,
        None => true,
    };
    let max_fires = match obj.get("maxFires", &[])? {
        Some(found) => {
            let n = uint(found.field(), 1, u64::from(MAX_FIRES_LIMIT))?;
            u32::try_from(n).map_err(|_| invalid_value(&found.path, "out of range"))?
        }
        None => super::model::DEFAULT_MAX_FIRES,
    };
    let trigger_field = obj.require("trigger", &[])?;
    let trigger = parse_trigger(&trigger_field)?;
    let action_field = obj.require("action", &[])?;
    let action = parse_action(&action_field)?;
    obj.finish()?;
    Ok(RuntimePolicy {
        id,
        enabled,
        max_fires,
        trigger,
        action,
    })
}

fn require_object<'a>(found: &Found<'a>, what: &str) -> Result<Obj<'a>, PolicyError> {
    if !found.value.is_object() {
        return Err(invalid_type(&found.path, what, found.value));
    }
    Obj::new(found.value, &found.path)
}

fn condition(obj: &mut Obj<'_>) -> Result<Option<Condition>, PolicyError> {
    obj.get("condition", &[])?
        .map(|found| Condition::compile_at(found.value.clone(), &found.path))
        .transpose()
}

fn parse_trigger(found: &Found<'_>) -> Result<PolicyTrigger, PolicyError> {
    let mut obj = require_object(found, "a trigger object")?;
    let kind_field = obj.require("kind", &["type"])?;
    let kind = variant(kind_field.field(), "trigger kind", TRIGGER_KINDS)?;
    let trigger = match kind {
        TriggerKind::OnStart => PolicyTrigger::OnStart {
            condition: condition(&mut obj)?,
        },
        TriggerKind::OnNodeComplete => {
            let selector = selector(&mut obj)?;
            PolicyTrigger::OnNodeComplete {
                selector,
                condition: condition(&mut obj)?,
            }
        }
        TriggerKind::OnValidationFail => PolicyTrigger::OnValidationFail {
            selector: selector(&mut obj)?,
        },
        TriggerKind::OnTimeout => {
            let ms = uint(obj.require("ms", &[])?.field(), 1, u64::MAX)?;
            PolicyTrigger::OnTimeout { ms }
        }
        TriggerKind::OnMetricBelow => {
            let metric = non_empty(obj.require("metric", &[])?.field())?;
            let threshold = number(obj.require("threshold", &[])?.field())?;
            PolicyTrigger::OnMetricBelow { metric, threshold }
        }
        TriggerKind::OnBudget => {
            let resource_field = obj.require("resource", &[])?;
            let name = string(resource_field.field())?;
            let resource = BudgetResource::parse(&name).ok_or_else(|| {
                invalid_value(
                    &resource_field.path,
                    format!(
                        "unknown budget resource {name:?}; expected one of {}",
                        BudgetResource::ALL.map(BudgetResource::as_str).join(", ")
                    ),
                )
            })?;
            let threshold = match obj.get("threshold", &[])? {
                None => Threshold::Fraction(1.0),
                Some(found) => threshold(&found)?,
            };
            PolicyTrigger::OnBudget {
                resource,
                threshold,
            }
        }
        TriggerKind::Manual => PolicyTrigger::Manual {
            signal: obj
                .get("signal", &[])?
                .map(|found| non_empty(found.field()))
                .transpose()?,
        },
    };
    obj.finish()?;
    Ok(trigger)
}

/// `{"fraction": f}` (0 < f) or `{"absolute": n}` (0 ≤ n).
fn threshold(found: &Found<'_>) -> Result<Threshold, PolicyError> {
    let mut obj = require_object(
        found,
        "a threshold object ({\"fraction\": f} or {\"absolute\": n})",
    )?;
    let fraction = obj.get("fraction", &[])?;
    let absolute = obj.get("absolute", &[])?;
    let out = match (fraction, absolute) {
        (Some(f), None) => {
            let value = number(f.field())?;
            if value <= 0.0 {
                return Err(invalid_value(&f.path, "a fraction must be greater than 0"));
            }
            Threshold::Fraction(value)
        }
        (None, Some(a)) => {
            let value = number(a.field())?;
            if value < 0.0 {
                return Err(invalid_value(&a.path, "an amount cannot be negative"));
            }
            Threshold::Absolute(value)
        }
        _ => {
            return Err(invalid_value(
                &found.path,
                "give exactly one of `fraction` and `absolute`",
            ));
        }
    };
    obj.finish()?;
    Ok(out)
}

fn selector(parent: &mut Obj<'_>) -> Result<Option<NodeSelector>, PolicyError> {
    let Some(found) = parent.get("selector", &[])? else {
        return Ok(None);
    };
    let mut obj = require_object(&found, "a selector object")?;
    let mut text =
        |name: &'static str, kind: Option<IdKind>| -> Result<Option<String>, PolicyError> {
            obj.get(name, &[])?
                .map(|found| match kind {
                    Some(kind) => id(found.field(), kind),
                    None => non_empty(found.field()),
                })
                .transpose()
        };
    let node_id = text("nodeId", Some(IdKind::Node))?;
    let capability_id = text("capabilityId", Some(IdKind::Capability))?;
    let stage = text("stage", None)?;
    let kind = obj
        .get("kind", &[])?
        .map(|found| variant(found.field(), "capability kind", CAPABILITY_KINDS))
        .transpose()?;
    obj.finish()?;
    let selector = NodeSelector {
        node_id,
        capability_id,
        kind,
        stage,
    };
    Ok((!selector.is_empty()).then_some(selector))
}

fn optional_text(obj: &mut Obj<'_>, name: &'static str) -> Result<Option<String>, PolicyError> {
    obj.get(name, &[])?
        .map(|found| string(found.field()))
        .transpose()
}

fn parse_action(found: &Found<'_>) -> Result<PolicyAction, PolicyError> {
    let mut obj = require_object(found, "an action object")?;
    let type_field = obj.require("type", &[])?;
    let action_type = variant(type_field.field(), "action type", ACTION_TYPES)?;
    let action = match action_type {
        ActionType::Replan => PolicyAction::Replan {
            rationale: optional_text(&mut obj, "rationale")?,
        },
        ActionType::Pause => PolicyAction::Pause {
            reason: optional_text(&mut obj, "reason")?,
        },
        ActionType::Fail => PolicyAction::Fail {
            reason: optional_text(&mut obj, "reason")?,
        },
        ActionType::Hitl => hitl(&mut obj)?,
        ActionType::Goto | ActionType::Emit => {
            let action = string(type_field.field())?;
            return Err(PolicyError::UnsupportedAction {
                path: type_field.path,
                action,
            });
        }
    };
    obj.finish()?;
    Ok(action)
}

fn hitl(obj: &mut Obj<'_>) -> Result<PolicyAction, PolicyError> {
    let kind = match obj.get("kind", &[])? {
        Some(found) => variant(found.field(), "hitl kind", HITL_KINDS)?,
        None => HitlKind::Approval,
    };
    let question = non_empty(obj.require("question", &[])?.field())?;
    let options = match obj.get("options", &[])? {
        Some(found) => {
            let list = string_list(&found)?;
            let given = found.value.as_array().map_or(0, Vec::len);
            if list.len() != given {
                return Err(invalid_value(&found.path, "options must be distinct"));
            }
            values(list)
        }
        None => Vec::new(),
    };
    let mut follow_up = |name: &'static str, default: FollowUp| -> Result<FollowUp, PolicyError> {
        match obj.get(name, &[])? {
            Some(found) => variant(found.field(), "follow-up action", FOLLOW_UPS),
            None => Ok(default),
        }
    };
    let on_approve = follow_up("onApprove", FollowUp::Continue)?;
    let on_reject = follow_up("onReject", FollowUp::Fail)?;
    Ok(PolicyAction::Hitl {
        kind,
        question,
        options,
        on_approve,
        on_reject,
    })
}

/// The legacy top-level lists of capability ids.
#[derive(Debug, Clone, Copy)]
enum Legacy {
    ReplanAfter,
    HitlAfter,
}

impl Legacy {
    fn key(self) -> &'static str {
        match self {
            Self::ReplanAfter => "replanAfter",
            Self::HitlAfter => "hitlAfter",
        }
    }

    fn policy(self, capability_id: String) -> RuntimePolicy {
        let (id, action) = match self {
            Self::ReplanAfter => (
                format!("replan-after-{capability_id}"),
                PolicyAction::Replan {
                    rationale: Some(format!("replan after {capability_id} completed")),
                },
            ),
            Self::HitlAfter => (
                format!("hitl-after-{capability_id}"),
                PolicyAction::Hitl {
                    kind: HitlKind::Approval,
                    question: format!("approve the output of {capability_id}?"),
                    options: Vec::new(),
                    on_approve: FollowUp::Continue,
                    on_reject: FollowUp::Fail,
                },
            ),
        };
        RuntimePolicy {
            id,
            enabled: true,
            max_fires: super::model::DEFAULT_MAX_FIRES,
            trigger: PolicyTrigger::OnNodeComplete {
                selector: Some(NodeSelector {
                    capability_id: Some(capability_id),
                    ..NodeSelector::default()
                }),
                condition: None,
            },
            action,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::policy::model::{
        DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_FIRES, DEFAULT_MAX_NODES,
        DEFAULT_MAX_REPLANS,
    };

    fn err(raw: Value) -> PolicyError {
        normalize(&raw).expect_err("expected a normalization error")
    }

    fn policy(trigger: Value, action: Value) -> Value {
        json!({"runtime": [{"id": "p", "trigger": trigger, "action": action}]})
    }

    fn replan() -> Value {
        json!({"type": "replan"})
    }

    fn node_complete() -> Value {
        json!({"kind": "onNodeComplete"})
    }

    fn only(policies: NormalizedPolicies) -> RuntimePolicy {
        assert_eq!(policies.runtime.len(), 1, "{policies:?}");
        policies
            .runtime
            .into_iter()
            .next()
            .unwrap_or_else(|| unreachable!())
    }

    fn canonical_input() -> Value {
        json!({
            "planner": {
                "maxAttempts": 2, "maxReplans": 1, "maxNodes": 20, "maxConcurrency": 8,
                "forbiddenCapabilities": ["legacy.writer"], "forbiddenKinds": ["routing"],
                "requiredCapabilities": ["writer.en"], "requiredKinds": ["validation"]
            },
            "runtime": [
                {"id": "qa-gate", "enabled": true, "maxFires": 2,
                 "trigger": {"kind": "onNodeComplete",
                             "selector": {"capabilityId": "writer.en", "nodeId": "write",
                                          "kind": "execution", "stage": "generation"},
                             "condition": {"<": [{"var": "output.score"}, 0.5]}},
                 "action": {"type": "replan", "rationale": "add a QA pass"}},
                {"id": "review", "enabled": false, "maxFires": 1,
                 "trigger": {"kind": "onValidationFail"},
                 "action": {"type": "hitl", "kind": "clarify", "question": "what now?",
                            "options": ["retry", "skip"], "onApprove": "replan",
                            "onReject": "continue"}},
                {"id": "start", "enabled": true, "maxFires": 1,
                 "trigger": {"kind": "onStart"}, "action": {"type": "pause", "reason": "warm-up"}},
                {"id": "slow", "enabled": true, "maxFires": 1,
                 "trigger": {"kind": "onTimeout", "ms": 60000}, "action": {"type": "fail", "reason": "too slow"}},
                {"id": "low-score", "enabled": true, "maxFires": 3,
                 "trigger": {"kind": "onMetricBelow", "metric": "score", "threshold": 0.25},
                 "action": {"type": "replan"}},
                {"id": "operator", "enabled": true, "maxFires": 100,
                 "trigger": {"kind": "manual", "signal": "stop"}, "action": {"type": "fail"}}
            ]
        })
    }

    #[test]
    fn canonical_input_round_trips() {
        let raw = canonical_input();
        let normalized = normalize(&raw).unwrap();
        assert_eq!(
            normalized.planner,
            PlannerPolicy {
                max_attempts: 2,
                max_replans: 1,
                max_nodes: 20,
                max_concurrency: 8,
                forbidden_capabilities: vec!["legacy.writer".into()],
                forbidden_kinds: vec![CapabilityKind::Routing],
                required_capabilities: vec!["writer.en".into()],
                required_kinds: vec![CapabilityKind::Validation],
            }
        );
        assert_eq!(normalized.runtime.len(), 6);
        assert_eq!(
            normalized.runtime[1].action,
            PolicyAction::Hitl {
                kind: HitlKind::Clarify,
                question: "what now?".into(),
                options: vec!["retry".into(), "skip".into()],
                on_approve: FollowUp::Replan,
                on_reject: FollowUp::Continue,
            }
        );
        assert!(!normalized.runtime[1].enabled);
        assert_eq!(
            normalized.runtime[3].trigger,
            PolicyTrigger::OnTimeout { ms: 60000 }
        );
        let serialized = serde_json::to_value(&normalized).unwrap();
        assert_eq!(serialized, raw, "canonical input serializes back unchanged");
        assert_eq!(normalize(&serialized).unwrap(), normalized);
        let deserialized: NormalizedPolicies = serde_json::from_value(serialized).unwrap();
        assert_eq!(deserialized, normalized);
    }

    #[test]
    fn absent_or_null_policies_are_defaults() {
        let defaults = NormalizedPolicies {
            fallback: None,
            planner: PlannerPolicy {
                max_attempts: DEFAULT_MAX_ATTEMPTS,
                max_replans: DEFAULT_MAX_REPLANS,
                max_nodes: DEFAULT_MAX_NODES,
                max_concurrency: DEFAULT_MAX_CONCURRENCY,
                forbidden_capabilities: vec![],
                forbidden_kinds: vec![],
                required_capabilities: vec![],
                required_kinds: vec![],
            },
            runtime: vec![],
            budgets: Budgets::new(),
        };
        assert_eq!(
            (
                DEFAULT_MAX_ATTEMPTS,
                DEFAULT_MAX_REPLANS,
                DEFAULT_MAX_NODES,
                DEFAULT_MAX_CONCURRENCY
            ),
            (3, 3, 50, 4)
        );
        assert_eq!(normalize(&Value::Null).unwrap(), defaults);
        assert_eq!(normalize(&json!({})).unwrap(), defaults);
        assert_eq!(
            normalize(&json!({"planner": null, "runtime": null})).unwrap(),
            defaults
        );
        assert_eq!(normalize(&json!({"planner": {}})).unwrap(), defaults);
    }

    #[test]
    fn each_planner_default_applies_independently() {
        let p = normalize(&json!({"planner": {"maxNodes": 7}}))
            .unwrap()
            .planner;
        assert_eq!(
            (
                p.max_attempts,
                p.max_replans,
                p.max_nodes,
                p.max_concurrency
            ),
            (3, 3, 7, 4)
        );
        let p = normalize(&json!({"planner": {"maxAttempts": 1, "maxReplans": 0}}))
            .unwrap()
            .planner;
        assert_eq!(
            (
                p.max_attempts,
                p.max_replans,
                p.max_nodes,
                p.max_concurrency
            ),
            (1, 0, 50, 4)
        );
    }

    #[test]
    fn runtime_defaults_apply() {
        let p = only(normalize(&policy(node_complete(), replan())).unwrap());
        assert!(p.enabled);
        assert_eq!(p.max_fires, DEFAULT_MAX_FIRES);
        assert_eq!(
            p.trigger,
            PolicyTrigger::OnNodeComplete {
                selector: None,
                condition: None
            }
        );
        assert_eq!(p.action, PolicyAction::Replan { rationale: None });
    }

    #[test]
    fn hitl_defaults_apply() {
        let raw = policy(node_complete(), json!({"type": "hitl", "question": "ok?"}));
        let p = only(normalize(&raw).unwrap());
        assert_eq!(
            p.action,
            PolicyAction::Hitl {
                kind: HitlKind::Approval,
                question: "ok?".into(),
                options: vec![],
                on_approve: FollowUp::Continue,
                on_reject: FollowUp::Fail,
            }
        );
    }

    #[test]
    fn empty_selector_means_no_selector() {
        let raw = policy(
            json!({"kind": "onValidationFail", "selector": {}}),
            replan(),
        );
        assert_eq!(
            only(normalize(&raw).unwrap()).trigger,
            PolicyTrigger::OnValidationFail { selector: None }
        );
    }

    #[test]
    fn legacy_top_level_limits_go_into_planner() {
        let p = normalize(&json!({"maxAttempts": 5, "maxReplans": 0, "maxNodes": 9}))
            .unwrap()
            .planner;
        assert_eq!(
            (
                p.max_attempts,
                p.max_replans,
                p.max_nodes,
                p.max_concurrency
            ),
            (5, 0, 9, 4)
        );
    }

    #[test]
    fn legacy_replan_after_becomes_one_policy_per_capability() {
        let n = normalize(&json!({"replanAfter": ["writer.en", "critic"]})).unwrap();
        let ids: Vec<&str> = n.runtime.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["replan-after-writer.en", "replan-after-critic"]);
        assert_eq!(
            n.runtime[0].trigger,
            PolicyTrigger::OnNodeComplete {
                selector: Some(NodeSelector {
                    capability_id: Some("writer.en".into()),
                    ..NodeSelector::default()
                }),
                condition: None,
            }
        );
        assert!(matches!(n.runtime[1].action, PolicyAction::Replan { .. }));
        assert!(n.runtime.iter().all(|p| p.enabled && p.max_fires == 1));
    }

    #[test]
    fn legacy_hitl_after_becomes_approval_policies_after_explicit_ones() {
        let raw = json!({
            "runtime": [{"id": "first", "trigger": {"kind": "onStart"}, "action": {"type": "pause"}}],
            "hitl_after": ["writer.en"]
        });
        let n = normalize(&raw).unwrap();
        assert_eq!(n.runtime[0].id, "first");
        assert_eq!(n.runtime[1].id, "hitl-after-writer.en");
        let PolicyAction::Hitl {
            kind,
            on_approve,
            on_reject,
            question,
            ..
        } = &n.runtime[1].action
        else {
            panic!("expected a hitl action, got {:?}", n.runtime[1].action);
        };
        assert_eq!(
            (*kind, *on_approve, *on_reject),
            (HitlKind::Approval, FollowUp::Continue, FollowUp::Fail)
        );
        assert!(question.contains("writer.en"), "{question}");
    }

    #[test]
    fn snake_case_keys_and_kinds_are_aliases() {
        let raw = json!({
            "planner": {"max_replans": 1, "max_concurrency": 2, "forbidden_kinds": ["routing"]},
            "runtime": [{"id": "p", "max_fires": 3,
                "trigger": {"kind": "on_node_complete", "selector": {"capability_id": "writer.en", "node_id": "w"}},
                "action": {"type": "hitl", "question": "ok?", "on_reject": "replan", "on_approve": "fail"}}]
        });
        let canonical = json!({
            "planner": {"maxReplans": 1, "maxConcurrency": 2, "forbiddenKinds": ["routing"]},
            "runtime": [{"id": "p", "maxFires": 3,
                "trigger": {"kind": "onNodeComplete", "selector": {"capabilityId": "writer.en", "nodeId": "w"}},
                "action": {"type": "hitl", "question": "ok?", "onReject": "replan", "onApprove": "fail"}}]
        });
        assert_eq!(normalize(&raw).unwrap(), normalize(&canonical).unwrap());
    }

    #[test]
    fn trigger_kind_may_be_given_as_type_and_signal_means_manual() {
        let a = normalize(&policy(json!({"type": "onStart"}), replan())).unwrap();
        assert_eq!(only(a).trigger, PolicyTrigger::OnStart { condition: None });
        let b = normalize(&policy(json!({"kind": "signal", "signal": "go"}), replan())).unwrap();
        assert_eq!(
            only(b).trigger,
            PolicyTrigger::Manual {
                signal: Some("go".into())
            }
        );
    }

    #[test]
    fn budgets_and_on_budget_triggers_are_normalized() {
        let p = normalize(&json!({
            "budgets": {"cost": 10, "nodes": 8},
            "runtime": [{"id": "p", "trigger":
                {"kind": "onBudget", "resource": "cost", "threshold": {"fraction": 0.8}},
                "action": replan()}]
        }))
        .unwrap();
        assert_eq!(
            p.budgets,
            Budgets::from([(BudgetResource::Cost, 10.0), (BudgetResource::Nodes, 8.0)])
        );
        assert_eq!(
            p.runtime[0].trigger,
            PolicyTrigger::OnBudget {
                resource: BudgetResource::Cost,
                threshold: Threshold::Fraction(0.8)
            }
        );
        // `nodes` has no policy watching it: spending it pauses the run.
        assert_eq!(p.runtime.len(), 2);
        assert_eq!(p.runtime[1].id, "budget-nodes");
        assert_eq!(
            p.runtime[1].trigger,
            PolicyTrigger::OnBudget {
                resource: BudgetResource::Nodes,
                threshold: Threshold::Fraction(1.0)
            }
        );
        assert_eq!(p.runtime[1].action.name(), "pause");
        // The canonical form normalizes to itself (no second implicit policy).
        let again = normalize(&serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(again, p);
    }

    #[test]
    fn bad_budgets_name_the_field() {
        let cases = [
            (json!({"budgets": {"cost": 0}}), "budgets.cost"),
            (json!({"budgets": {"dollars": 3}}), "budgets"),
            (
                json!({"budgets": {"cost": 1}, "runtime": [{"id": "p",
                    "trigger": {"kind": "onBudget", "resource": "money"}, "action": replan()}]}),
                "runtime[0].trigger.resource",
            ),
            (
                json!({"budgets": {"cost": 1}, "runtime": [{"id": "p",
                    "trigger": {"kind": "onBudget", "resource": "cost",
                                "threshold": {"fraction": 0.5, "absolute": 1}},
                    "action": replan()}]}),
                "runtime[0].trigger.threshold",
            ),
        ];
        for (raw, path) in cases {
            let e = err(raw.clone());
            assert_eq!(e.path(), path, "{raw}: {e}");
        }
    }

    #[test]
    fn snapshot_unknown_trigger_kind() {
        let e = err(policy(json!({"kind": "onFoo"}), replan()));
        assert_eq!(
            e.to_string(),
            "runtime[0].trigger.kind: unknown trigger kind \"onFoo\"; expected one of onStart, \
             onNodeComplete, onValidationFail, onTimeout, onMetricBelow, onBudget, manual"
        );
        assert_eq!(e.path(), "runtime[0].trigger.kind");
    }

    #[test]
    fn snapshot_unknown_keys() {
        let raw = json!({"runtime": [{"id": "p", "trigger": node_complete(), "action": replan(),
                                      "priority": 1, "when": "now"}]});
        assert_eq!(
            err(raw).to_string(),
            "runtime[0]: unknown keys \"priority\", \"when\"; expected id, enabled, maxFires, \
             trigger, action"
        );
    }

    #[test]
    fn ids_follow_the_identifier_grammar() {
        let id_error = |raw: Value| match err(raw) {
            PolicyError::InvalidId(e) => (e.field().to_owned(), e.kind()),
            other => panic!("{other:?}"),
        };
        let runtime = |id: &str| json!({"runtime": [{"id": id, "trigger": node_complete(), "action": replan()}]});
        for bad in ["", "qa gate", "../x", "a..b", "ok/no"] {
            assert_eq!(
                id_error(runtime(bad)),
                ("runtime[0].id".to_owned(), IdKind::Policy),
                "{bad:?}"
            );
        }
        let longest = "p".repeat(IdKind::Policy.max_len());
        normalize(&runtime(&longest)).unwrap();
        assert_eq!(
            id_error(runtime(&format!("{longest}q"))),
            ("runtime[0].id".to_owned(), IdKind::Policy)
        );
        let selector = |key: &str| {
            json!({"runtime": [{"id": "p", "trigger": {"kind": "onNodeComplete",
                "selector": {key: "a b"}}, "action": replan()}]})
        };
        assert_eq!(
            id_error(selector("nodeId")),
            (
                "runtime[0].trigger.selector.nodeId".to_owned(),
                IdKind::Node
            )
        );
        assert_eq!(
            id_error(selector("capabilityId")),
            (
                "runtime[0].trigger.selector.capabilityId".to_owned(),
                IdKind::Capability
            )
        );
        assert_eq!(
            id_error(json!({"planner": {"forbiddenCapabilities": ["ok", "not/ok"]}})),
            (
                "planner.forbiddenCapabilities[1]".to_owned(),
                IdKind::Capability
            )
        );
        assert_eq!(
            id_error(json!({"hitlAfter": ["bad id"]})),
            ("hitlAfter[0]".to_owned(), IdKind::Capability)
        );
    }

    #[test]
    fn legacy_policy_ids_must_leave_room_for_hitl_request_ids() {
        let fits = "c".repeat(IdKind::Policy.max_len() - "hitl-after-".len());
        let policies = normalize(&json!({"hitlAfter": [fits]})).unwrap();
        assert_eq!(policies.runtime[0].id.len(), IdKind::Policy.max_len());
        match err(json!({"hitlAfter": [format!("{fits}c")]})) {
            PolicyError::InvalidId(e) => {
                assert_eq!((e.field(), e.kind()), ("hitlAfter[0]", IdKind::Policy));
                assert!(
                    e.to_string()
                        .contains("118 bytes long, at most 117 allowed"),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn snapshot_duplicate_policy_id() {
        let raw = json!({"runtime": [
            {"id": "p", "trigger": node_complete(), "action": replan()},
            {"id": "p", "trigger": {"kind": "onStart"}, "action": replan()}
        ]});
        assert_eq!(
            err(raw).to_string(),
            "runtime[1]: duplicate policy id \"p\" (first declared at runtime[0])"
        );
    }

    #[test]
    fn unknown_keys_are_reported_at_every_level() {
        let cases = [
            (json!({"plannr": {}}), "policies"),
            (json!({"planner": {"maxNode": 3}}), "planner"),
            (
                policy(json!({"kind": "onNodeComplete", "nodeId": "x"}), replan()),
                "runtime[0].trigger",
            ),
            (
                policy(
                    json!({"kind": "onNodeComplete", "selector": {"capability": "x"}}),
                    replan(),
                ),
                "runtime[0].trigger.selector",
            ),
            (
                policy(node_complete(), json!({"type": "replan", "reason": "x"})),
                "runtime[0].action",
            ),
            (
                policy(
                    json!({"kind": "onTimeout", "ms": 5, "threshold": 1}),
                    replan(),
                ),
                "runtime[0].trigger",
            ),
        ];
        for (raw, path) in cases {
            let e = err(raw);
            assert!(matches!(e, PolicyError::UnknownKeys { .. }), "{e}");
            assert_eq!(e.path(), path, "{e}");
        }
    }

    #[test]
    fn unknown_key_message_lists_it() {
        let e = err(json!({"planner": {"maxNode": 3}}));
        let msg = e.to_string();
        assert!(
            msg.starts_with("planner: unknown key \"maxNode\"; expected"),
            "{msg}"
        );
        assert!(msg.contains("maxNodes"), "{msg}");
    }

    #[test]
    fn zero_limits_are_refused() {
        for (raw, path) in [
            (
                json!({"planner": {"maxAttempts": 0}}),
                "planner.maxAttempts",
            ),
            (
                json!({"planner": {"maxConcurrency": 0}}),
                "planner.maxConcurrency",
            ),
            (json!({"planner": {"maxNodes": 0}}), "planner.maxNodes"),
            (json!({"maxAttempts": 0}), "maxAttempts"),
        ] {
            let e = err(raw);
            assert_eq!(e.path(), path);
            assert!(
                e.to_string().ends_with("must be at least 1, found 0"),
                "{e}"
            );
        }
    }

    #[test]
    fn max_fires_is_bounded() {
        let with_fires = |n: u64| json!({"runtime": [{"id": "p", "maxFires": n, "trigger": node_complete(), "action": replan()}]});
        assert_eq!(only(normalize(&with_fires(100)).unwrap()).max_fires, 100);
        let e = err(with_fires(101));
        assert_eq!(
            e.to_string(),
            "runtime[0].maxFires: must be at most 100, found 101"
        );
        assert_eq!(err(with_fires(0)).path(), "runtime[0].maxFires");
    }

    #[test]
    fn wrong_types_name_the_path_and_the_value() {
        let e = err(json!({"planner": {"maxAttempts": "3"}}));
        assert_eq!(
            e.to_string(),
            "planner.maxAttempts: expected a non-negative integer, found string \"3\""
        );
        assert_eq!(err(json!({"runtime": {}})).path(), "runtime");
        assert_eq!(err(json!([1])).path(), "policies");
        assert_eq!(
            err(json!({"runtime": [{"id": "p", "enabled": "yes", "trigger": node_complete(), "action": replan()}]}))
                .path(),
            "runtime[0].enabled"
        );
        assert_eq!(
            err(policy(
                json!({"kind": "onMetricBelow", "metric": "m", "threshold": "x"}),
                replan()
            ))
            .path(),
            "runtime[0].trigger.threshold"
        );
        assert_eq!(err(json!({"runtime": [null]})).path(), "runtime[0]");
        assert_eq!(
            err(json!({"planner": {"forbiddenKinds": ["robot"]}})).to_string(),
            "planner.forbiddenKinds[0]: unknown capability kind \"robot\"; expected one of \
             structuring, execution, validation, transformation, routing"
        );
    }

    #[test]
    fn missing_required_fields_are_named() {
        assert_eq!(
            err(json!({"runtime": [{"trigger": node_complete(), "action": replan()}]})).to_string(),
            "runtime[0].id: missing required field"
        );
        assert_eq!(
            err(json!({"runtime": [{"id": "p", "action": replan()}]})).path(),
            "runtime[0].trigger"
        );
        assert_eq!(
            err(json!({"runtime": [{"id": "p", "trigger": node_complete()}]})).path(),
            "runtime[0].action"
        );
        assert_eq!(
            err(policy(json!({"selector": {}}), replan())).path(),
            "runtime[0].trigger.kind"
        );
        assert_eq!(
            err(policy(json!({"kind": "onTimeout"}), replan())).path(),
            "runtime[0].trigger.ms"
        );
        assert_eq!(
            err(policy(node_complete(), json!({"type": "hitl"}))).path(),
            "runtime[0].action.question"
        );
    }

    #[test]
    fn empty_hitl_question_is_refused() {
        let e = err(policy(
            node_complete(),
            json!({"type": "hitl", "question": "  "}),
        ));
        assert_eq!(
            e.to_string(),
            "runtime[0].action.question: must not be empty"
        );
    }

    #[test]
    fn invalid_condition_is_refused_at_normalization() {
        let e = err(policy(
            json!({"kind": "onNodeComplete", "condition": {"frob": [{"var": "x"}]}}),
            replan(),
        ));
        assert!(matches!(e, PolicyError::InvalidCondition { .. }), "{e}");
        assert_eq!(e.path(), "runtime[0].trigger.condition");
        let e = err(policy(
            json!({"kind": "onNodeComplete", "condition": {"var": "x", "==": 1}}),
            replan(),
        ));
        assert_eq!(e.path(), "runtime[0].trigger.condition");
    }

    #[test]
    fn goto_and_emit_are_unsupported() {
        for action in ["goto", "emit"] {
            let e = err(policy(
                node_complete(),
                json!({"type": action, "target": "x"}),
            ));
            assert_eq!(
                e.to_string(),
                format!(
                    "runtime[0].action.type: unsupported action \"{action}\"; this engine \
                     executes replan, hitl, pause and fail"
                )
            );
        }
    }

    #[test]
    fn unknown_action_type_is_refused() {
        let e = err(policy(node_complete(), json!({"type": "notify"})));
        assert_eq!(e.path(), "runtime[0].action.type");
        assert!(matches!(e, PolicyError::UnknownVariant { .. }), "{e}");
    }

    #[test]
    fn duplicate_ids_from_legacy_lists_are_refused() {
        let e = err(json!({
            "runtime": [{"id": "replan-after-w", "trigger": node_complete(), "action": replan()}],
            "replanAfter": ["w"]
        }));
        assert_eq!(
            e.to_string(),
            "replanAfter[0]: duplicate policy id \"replan-after-w\" (first declared at runtime[0])"
        );
    }

    #[test]
    fn two_spellings_of_one_setting_conflict() {
        let e = err(json!({"planner": {"maxReplans": 1, "max_replans": 2}}));
        assert_eq!(
            e.to_string(),
            "planner.max_replans: conflicts with planner.maxReplans"
        );
        let e = err(json!({"maxNodes": 3, "planner": {"maxNodes": 4}}));
        assert_eq!(e.to_string(), "maxNodes: conflicts with planner.maxNodes");
        let e = err(policy(
            json!({"kind": "onStart", "type": "onStart"}),
            replan(),
        ));
        assert_eq!(e.path(), "runtime[0].trigger.type");
    }

    #[test]
    fn required_and_forbidden_conflict() {
        let e = err(
            json!({"planner": {"forbiddenCapabilities": ["a", "b"], "requiredCapabilities": ["b"]}}),
        );
        assert_eq!(
            e.to_string(),
            "planner.requiredCapabilities[0]: conflicts with planner.forbiddenCapabilities[1]"
        );
        let e =
            err(json!({"planner": {"forbiddenKinds": ["routing"], "requiredKinds": ["routing"]}}));
        assert_eq!(e.path(), "planner.requiredKinds[0]");
    }

    #[test]
    fn lists_drop_duplicates_but_options_must_be_distinct() {
        let p = normalize(&json!({"planner": {"forbiddenCapabilities": ["a", "a", "b"]}}))
            .unwrap()
            .planner;
        assert_eq!(p.forbidden_capabilities, ["a", "b"]);
        let e = err(policy(
            node_complete(),
            json!({"type": "hitl", "question": "q", "options": ["x", "x"]}),
        ));
        assert_eq!(e.path(), "runtime[0].action.options");
        assert_eq!(
            err(json!({"planner": {"requiredCapabilities": [""]}})).path(),
            "planner.requiredCapabilities[0]"
        );
    }

    // ---- property: normalize(serialize(n)) == n, also through legacy spellings ----

    fn kind() -> impl Strategy<Value = CapabilityKind> {
        prop_oneof![
            Just(CapabilityKind::Structuring),
            Just(CapabilityKind::Execution),
            Just(CapabilityKind::Validation),
            Just(CapabilityKind::Transformation),
            Just(CapabilityKind::Routing),
        ]
    }

    fn follow_up() -> impl Strategy<Value = FollowUp> {
        prop_oneof![
            Just(FollowUp::Continue),
            Just(FollowUp::Replan),
            Just(FollowUp::Fail)
        ]
    }

    /// Identifiers (policy, capability and node ids), some of them dotted.
    fn name() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9-]{0,6}(\\.[a-z0-9-]{1,3})?"
    }

    fn planner() -> impl Strategy<Value = PlannerPolicy> {
        (
            1u32..10,
            0u32..10,
            1u32..100,
            1u32..16,
            proptest::collection::btree_set(name(), 0..3),
            proptest::collection::btree_set(name(), 0..3),
            proptest::collection::btree_set(kind(), 0..3),
            proptest::collection::btree_set(kind(), 0..3),
        )
            .prop_map(|(a, r, n, c, forbidden, required, fk, rk)| PlannerPolicy {
                max_attempts: a,
                max_replans: r,
                max_nodes: n,
                max_concurrency: c,
                required_capabilities: required.difference(&forbidden).cloned().collect(),
                forbidden_capabilities: forbidden.into_iter().collect(),
                required_kinds: rk.difference(&fk).copied().collect(),
                forbidden_kinds: fk.into_iter().collect(),
            })
    }

    fn condition() -> impl Strategy<Value = Option<Condition>> {
        let rules = [
            json!(true),
            json!({"<": [{"var": "output.score"}, 0.5]}),
            json!({"and": [{"var": "facets.brief"}, {"!": {"var": "inputs.skip"}}]}),
            json!({"==": [{"var": "node.capabilityId"}, "writer.en"]}),
        ];
        proptest::option::of(
            proptest::sample::select(rules.to_vec())
                .prop_map(|rule| Condition::compile(rule).unwrap_or_else(|e| panic!("{e}"))),
        )
    }

    fn selector() -> impl Strategy<Value = Option<NodeSelector>> {
        (
            proptest::option::of(name()),
            proptest::option::of(name()),
            proptest::option::of(kind()),
            proptest::option::of(name()),
        )
            .prop_map(|(node_id, capability_id, kind, stage)| {
                let s = NodeSelector {
                    node_id,
                    capability_id,
                    kind,
                    stage,
                };
                (!s.is_empty()).then_some(s)
            })
    }

    fn trigger() -> impl Strategy<Value = PolicyTrigger> {
        prop_oneof![
            condition().prop_map(|condition| PolicyTrigger::OnStart { condition }),
            (selector(), condition()).prop_map(|(selector, condition)| {
                PolicyTrigger::OnNodeComplete {
                    selector,
                    condition,
                }
            }),
            selector().prop_map(|selector| PolicyTrigger::OnValidationFail { selector }),
            (1u64..1_000_000).prop_map(|ms| PolicyTrigger::OnTimeout { ms }),
            (name(), -1000.0f64..1000.0)
                .prop_map(|(metric, threshold)| PolicyTrigger::OnMetricBelow { metric, threshold }),
            proptest::option::of(name()).prop_map(|signal| PolicyTrigger::Manual { signal }),
        ]
    }

    fn action() -> impl Strategy<Value = PolicyAction> {
        prop_oneof![
            proptest::option::of(".{0,12}")
                .prop_map(|rationale| PolicyAction::Replan { rationale }),
            (
                prop_oneof![Just(HitlKind::Approval), Just(HitlKind::Clarify)],
                "[a-z?][a-z ?]{0,12}",
                proptest::collection::btree_set(name(), 0..3),
                follow_up(),
                follow_up(),
            )
                .prop_map(|(kind, question, options, on_approve, on_reject)| {
                    PolicyAction::Hitl {
                        kind,
                        question,
                        options: options.into_iter().collect(),
                        on_approve,
                        on_reject,
                    }
                }),
            proptest::option::of(".{0,12}").prop_map(|reason| PolicyAction::Pause { reason }),
            proptest::option::of(".{0,12}").prop_map(|reason| PolicyAction::Fail { reason }),
        ]
    }

    fn normalized() -> impl Strategy<Value = NormalizedPolicies> {
        let runtime =
            proptest::collection::vec((any::<bool>(), 1u32..=100, trigger(), action()), 0..5)
                .prop_map(|items| {
                    items
                        .into_iter()
                        .enumerate()
                        .map(|(i, (enabled, max_fires, trigger, action))| RuntimePolicy {
                            id: format!("policy-{i}"),
                            enabled,
                            max_fires,
                            trigger,
                            action,
                        })
                        .collect()
                });
        let fallback = proptest::option::of(
            (
                proptest::option::of(1u32..5),
                0u64..1000,
                proptest::option::of(0u64..5000),
                any::<bool>(),
            )
                .prop_map(|(max_attempts, backoff_ms, max_backoff_ms, hitl)| {
                    Fallback {
                        retry: Some(Retry {
                            max_attempts,
                            backoff_ms,
                            multiplier: 1.5,
                            max_backoff_ms,
                        }),
                        then: Some(if hitl { Then::Hitl } else { Then::Fail }),
                    }
                }),
        );
        (planner(), runtime, fallback).prop_map(|(planner, runtime, fallback)| NormalizedPolicies {
            planner,
            runtime,
            budgets: Budgets::new(),
            fallback,
        })
    }

    /// Rewrite canonical JSON into accepted legacy spellings.
    fn respell(mut value: Value, snake: bool, hoist: bool, kind_as_type: bool) -> Value {
        fn snake_keys(value: &mut Value) {
            match value {
                Value::Object(map) => {
                    let old = std::mem::take(map);
                    for (key, mut v) in old {
                        if key != "condition" {
                            snake_keys(&mut v);
                        }
                        map.insert(snake_case(&key), v);
                    }
                }
                Value::Array(items) => items.iter_mut().for_each(snake_keys),
                Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
            }
        }
        if let Some(runtime) = value.get_mut("runtime").and_then(Value::as_array_mut) {
            for policy in runtime {
                if kind_as_type
                    && let Some(trigger) = policy.get_mut("trigger").and_then(Value::as_object_mut)
                    && let Some(kind) = trigger.remove("kind")
                {
                    trigger.insert("type".into(), kind);
                }
            }
        }
        if hoist {
            let moved: Vec<(String, Value)> = ["maxAttempts", "maxReplans", "maxNodes"]
                .iter()
                .filter_map(|k| {
                    value
                        .get_mut("planner")
                        .and_then(Value::as_object_mut)
                        .and_then(|p| p.remove(*k))
                        .map(|v| ((*k).to_owned(), v))
                })
                .collect();
            if let Some(root) = value.as_object_mut() {
                root.extend(moved);
            }
        }
        if snake {
            snake_keys(&mut value);
        }
        value
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn normalize_is_idempotent(n in normalized()) {
            let serialized = serde_json::to_value(&n).unwrap();
            prop_assert_eq!(normalize(&serialized), Ok(n.clone()));
            let again = serde_json::to_value(normalize(&serialized).unwrap()).unwrap();
            prop_assert_eq!(again, serialized);
        }

        #[test]
        fn legacy_spellings_normalize_to_the_same_policies(
            n in normalized(),
            snake in any::<bool>(),
            hoist in any::<bool>(),
            kind_as_type in any::<bool>(),
        ) {
            let raw = respell(serde_json::to_value(&n).unwrap(), snake, hoist, kind_as_type);
            prop_assert_eq!(normalize(&raw), Ok(n));
        }
    }
}
