//! Compiled JSON-Logic conditions.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, LazyLock};

use datalogic_rs::bumpalo::Bump;
use datalogic_rs::{DataValue, Engine, Logic};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::error::PolicyError;

/// The one JSON-Logic engine (default configuration, JavaScript truthiness).
static ENGINE: LazyLock<Engine> = LazyLock::new(Engine::new);

/// The operator names the engine resolves; a single-key object whose key is not one of these is
/// refused at compile time (the engine itself would only fail at evaluation).
static OPERATORS: LazyLock<BTreeSet<&'static str>> =
    LazyLock::new(|| ENGINE.builtin_operator_names().collect());

/// A JSON-Logic rule, compiled once.
///
/// Equality, serialization and `Debug` use the rule's JSON source; the compiled form is shared
/// (cloning is a reference-count bump).
#[derive(Clone)]
pub struct Condition {
    source: Value,
    logic: Arc<Logic>,
}

impl Condition {
    /// Compile `rule`.
    ///
    /// # Errors
    ///
    /// [`PolicyError::InvalidCondition`] (path `condition`) when the rule does not compile or
    /// names an unknown operator.
    pub fn compile(rule: Value) -> Result<Self, PolicyError> {
        Self::compile_at(rule, "condition")
    }

    pub(crate) fn compile_at(rule: Value, path: &str) -> Result<Self, PolicyError> {
        let invalid = |message: String| PolicyError::InvalidCondition {
            path: path.to_owned(),
            message,
        };
        check_operators(&rule).map_err(invalid)?;
        let logic = ENGINE
            .compile(&rule)
            .map_err(|e| invalid(e.to_string().to_lowercase()))?;
        Ok(Self {
            source: rule,
            logic: Arc::new(logic),
        })
    }

    /// The rule as written (after normalization).
    pub fn source(&self) -> &Value {
        &self.source
    }

    /// Evaluates the rule against a JSON document and applies JSON-Logic truthiness.
    ///
    /// # Errors
    /// The evaluation error's message (e.g. a type error inside the rule).
    pub fn evaluate(&self, data: &Value) -> Result<bool, String> {
        let arena = Bump::new();
        let scope = DataValue::from_serde_value_in(data, &arena);
        self.is_truthy(arena.alloc(scope), &arena)
    }

    /// Evaluate against `data` (built in `arena`) and apply JSON-Logic truthiness.
    pub(crate) fn is_truthy<'a>(
        &'a self,
        data: &'a DataValue<'a>,
        arena: &'a Bump,
    ) -> Result<bool, String> {
        ENGINE
            .evaluate(&self.logic, data, arena)
            .map(|result| ENGINE.truthy(result))
            .map_err(|e| e.to_string())
    }
}

fn check_operators(rule: &Value) -> Result<(), String> {
    match rule {
        Value::Object(map) => {
            if map.len() == 1
                && let Some((op, args)) = map.iter().next()
            {
                if !OPERATORS.contains(op.as_str()) {
                    return Err(format!("unknown operator \"{op}\""));
                }
                check_operators(args)?;
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(check_operators),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => Ok(()),
    }
}

impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Condition").field(&self.source).finish()
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.source.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let rule = Value::deserialize(deserializer)?;
        Self::compile(rule).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn eval(cond: &Condition, data: &Value) -> Result<bool, String> {
        let arena = Bump::new();
        let data = arena.alloc(DataValue::from_serde_value_in(data, &arena));
        cond.is_truthy(data, &arena)
    }

    #[test]
    fn compiles_and_evaluates_with_jsonlogic_truthiness() {
        let cond = Condition::compile(json!({"var": "items"})).unwrap();
        assert_eq!(eval(&cond, &json!({"items": [1]})), Ok(true));
        assert_eq!(eval(&cond, &json!({"items": []})), Ok(false));
        assert_eq!(eval(&cond, &json!({"items": "x"})), Ok(true));
        assert_eq!(eval(&cond, &json!({})), Ok(false));
    }

    #[test]
    fn unknown_operator_is_refused_at_compile_time() {
        let err = Condition::compile(json!({"and": [true, {"frobnicate": [1]}]})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "condition: invalid json-logic condition: unknown operator \"frobnicate\""
        );
    }

    #[test]
    fn multi_key_object_is_refused() {
        let err = Condition::compile(json!({"var": "a", "x": 1})).unwrap_err();
        assert!(matches!(err, PolicyError::InvalidCondition { .. }), "{err}");
    }

    #[test]
    fn evaluation_error_is_reported() {
        let cond = Condition::compile(json!({"/": [1, {"var": "z"}]})).unwrap();
        assert!(eval(&cond, &json!({"z": 0})).is_err());
    }

    #[test]
    fn serde_round_trip_keeps_source() {
        let cond = Condition::compile(json!({">": [{"var": "x"}, 2]})).unwrap();
        let text = serde_json::to_string(&cond).unwrap();
        assert_eq!(text, r#"{">":[{"var":"x"},2]}"#);
        let back: Condition = serde_json::from_str(&text).unwrap();
        assert_eq!(back, cond);
        assert!(serde_json::from_str::<Condition>(r#"{"nope":[1]}"#).is_err());
    }
}

#[cfg(test)]
mod evaluate_tests {
    use serde_json::json;

    use super::Condition;

    #[test]
    fn evaluates_against_plain_json() {
        let rule =
            Condition::compile(json!({">=": [{"var": "facets.qaReport.score"}, 0.5]})).unwrap();
        assert_eq!(
            rule.evaluate(&json!({"facets": {"qaReport": {"score": 0.9}}})),
            Ok(true)
        );
        assert_eq!(
            rule.evaluate(&json!({"facets": {"qaReport": {"score": 0.1}}})),
            Ok(false)
        );
    }
}
