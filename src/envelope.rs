//! The run envelope: what a client submits to start a run (DESIGN §1, §8).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What the run must deliver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum OutputContract {
    /// The run's output is the values of these facets.
    Facets {
        /// Required output facets.
        facets: Vec<String>,
    },
    /// The run's output is an object of facet values that must match `schema`; its
    /// top-level `required` properties are the required output facets.
    JsonSchema {
        /// A JSON Schema for the output object.
        schema: Value,
    },
    /// Free-form output described by instructions (needs a model planner).
    Freeform {
        /// What the output should be.
        instructions: String,
    },
}

impl OutputContract {
    /// The facets a plan must produce.
    pub fn required_facets(&self) -> Vec<String> {
        match self {
            Self::Facets { facets } => facets.clone(),
            Self::JsonSchema { schema } => schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| {
                    r.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            Self::Freeform { .. } => Vec::new(),
        }
    }
}

/// A request to plan and execute one objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunEnvelope {
    /// What the run is for; must not be empty.
    pub objective: String,
    /// Facet name → value supplied by the client.
    #[serde(default)]
    pub inputs: Map<String, Value>,
    /// Free-form constraints handed to the planner.
    #[serde(default)]
    pub constraints: Map<String, Value>,
    /// Raw policies; normalized on submission.
    #[serde(default)]
    pub policies: Value,
    /// Extra instructions for the planner and every node.
    #[serde(default)]
    pub special_instructions: Vec<String>,
    /// Client metadata (clientId, correlationId, runLabel, …), stored as given.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// What the run must deliver.
    pub output_contract: OutputContract,
    /// The planner to use, by name (`catalog`, `openai`, …); the engine's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planner: Option<String>,
    /// Optional JSON-Logic rule over `{inputs, facets}` that must hold for the run to complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal_conditions: Option<Value>,
}

impl RunEnvelope {
    /// A minimal envelope asking for `facets` from `inputs`.
    pub fn new(objective: impl Into<String>, inputs: Map<String, Value>, facets: &[&str]) -> Self {
        Self {
            objective: objective.into(),
            inputs,
            constraints: Map::new(),
            policies: Value::Null,
            special_instructions: Vec::new(),
            metadata: Map::new(),
            output_contract: OutputContract::Facets {
                facets: facets.iter().map(|f| (*f).to_owned()).collect(),
            },
            planner: None,
            goal_conditions: None,
        }
    }
}
