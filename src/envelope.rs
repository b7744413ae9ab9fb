//! The run envelope: what a client submits to start a run (DESIGN §1, §8).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::policy::NormalizedPolicies;

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

    /// A builder for an envelope with `objective`; see [`RunEnvelopeBuilder`].
    ///
    /// ```
    /// use flexrun::RunEnvelope;
    /// use flexrun::policy::{NormalizedPolicies, PlannerPolicy};
    /// use serde_json::json;
    ///
    /// let policies = NormalizedPolicies {
    ///     planner: PlannerPolicy { max_nodes: 8, ..PlannerPolicy::default() },
    ///     runtime: Vec::new(),
    ///     budgets: Default::default(),
    ///     fallback: None,
    /// };
    /// let envelope = RunEnvelope::builder("Tagline for a bakery")
    ///     .input("objectiveBrief", "Fresh sourdough baked daily, for busy parents")
    ///     .outputs(&["copyVariants", "qaReport"])
    ///     .policies(&policies)
    ///     .metadata("clientId", "bakery-42")
    ///     .special_instruction("Keep it short.")
    ///     .planner("catalog")
    ///     .build();
    /// assert_eq!(envelope.policies["planner"]["maxNodes"], json!(8));
    /// assert_eq!(envelope.output_contract.required_facets(), ["copyVariants", "qaReport"]);
    /// ```
    pub fn builder(objective: impl Into<String>) -> RunEnvelopeBuilder {
        RunEnvelopeBuilder {
            envelope: Self::new(objective, Map::new(), &[]),
        }
    }
}

/// Builds a [`RunEnvelope`] field by field; start with [`RunEnvelope::builder`].
///
/// Unlike the catalog and plan types, which are built with `with_*` methods on the value
/// itself, an envelope has a builder: its wire form keeps policies as raw JSON (they are
/// normalized on submission), and [`policies`](Self::policies) takes the typed value and
/// writes it in the canonical form the normalizer reads back unchanged. Each method
/// consumes and returns the builder; [`build`](Self::build) never fails, because every
/// check happens when the envelope is submitted.
///
/// Defaults: no inputs, constraints, policies (the normalizer's defaults), special
/// instructions or metadata; an output contract of no facets; the engine's default planner;
/// no goal conditions.
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct RunEnvelopeBuilder {
    envelope: RunEnvelope,
}

impl RunEnvelopeBuilder {
    /// Supplies the value of input facet `facet`, replacing an earlier one.
    pub fn input(mut self, facet: impl Into<String>, value: impl Into<Value>) -> Self {
        self.envelope.inputs.insert(facet.into(), value.into());
        self
    }

    /// Adds a free-form constraint for the planner, replacing an earlier one named `name`.
    pub fn constraint(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.envelope.constraints.insert(name.into(), value.into());
        self
    }

    /// Asks for the values of `facets` as the run's output ([`OutputContract::Facets`]).
    pub fn outputs(mut self, facets: &[&str]) -> Self {
        self.envelope.output_contract = OutputContract::Facets {
            facets: facets.iter().map(|f| (*f).to_owned()).collect(),
        };
        self
    }

    /// Sets the output contract, replacing what [`outputs`](Self::outputs) set.
    pub fn output_contract(mut self, contract: OutputContract) -> Self {
        self.envelope.output_contract = contract;
        self
    }

    /// Uses `policies`, written in their canonical JSON form: normalizing the envelope's
    /// policies gives `policies` back.
    pub fn policies(mut self, policies: &NormalizedPolicies) -> Self {
        self.envelope.policies = policies_json(policies);
        self
    }

    /// Uses raw JSON policies as a client would send them (legacy spellings included); they
    /// are checked when the envelope is submitted.
    pub fn raw_policies(mut self, policies: Value) -> Self {
        self.envelope.policies = policies;
        self
    }

    /// Adds client metadata under `key`, replacing an earlier value.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.envelope.metadata.insert(key.into(), value.into());
        self
    }

    /// Adds one instruction for the planner and every node, after those added before.
    pub fn special_instruction(mut self, instruction: impl Into<String>) -> Self {
        self.envelope.special_instructions.push(instruction.into());
        self
    }

    /// Uses the planner registered as `name` instead of the engine's default.
    pub fn planner(mut self, name: impl Into<String>) -> Self {
        self.envelope.planner = Some(name.into());
        self
    }

    /// Sets the JSON-Logic rule over `{inputs, facets}` that must hold for the run to complete.
    pub fn goal_conditions(mut self, rule: Value) -> Self {
        self.envelope.goal_conditions = Some(rule);
        self
    }

    /// The envelope.
    pub fn build(self) -> RunEnvelope {
        self.envelope
    }
}

/// The canonical JSON of normalized policies. Every field serializes to JSON (strings,
/// integers, finite-or-null numbers, enums and conditions kept as their JSON source), so
/// serialization cannot fail.
fn policies_json(policies: &NormalizedPolicies) -> Value {
    serde_json::to_value(policies).expect("normalized policies always serialize to JSON")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::catalog::CapabilityKind;
    use crate::fsm::{FollowUp, HitlKind};
    use crate::policy::{
        Condition, NodeSelector, PlannerPolicy, PolicyAction, PolicyTrigger, RuntimePolicy,
        normalize,
    };

    fn rule(policy: &str, trigger: PolicyTrigger, action: PolicyAction) -> RuntimePolicy {
        RuntimePolicy {
            id: policy.to_owned(),
            enabled: true,
            max_fires: 1,
            trigger,
            action,
        }
    }

    fn policies() -> NormalizedPolicies {
        NormalizedPolicies {
            fallback: None,
            planner: PlannerPolicy {
                max_attempts: 2,
                max_replans: 5,
                max_nodes: 12,
                max_concurrency: 1,
                forbidden_capabilities: vec!["writer.formal".into()],
                forbidden_kinds: vec![CapabilityKind::Routing],
                required_capabilities: vec!["qa.copy".into()],
                required_kinds: vec![CapabilityKind::Validation],
            },
            runtime: vec![
                rule(
                    "qa-gate",
                    PolicyTrigger::OnNodeComplete {
                        selector: Some(NodeSelector {
                            capability_id: Some("qa.copy".into()),
                            ..NodeSelector::default()
                        }),
                        condition: Some(
                            Condition::compile(
                                json!({"<": [{"var": "output.qaReport.score"}, 0.5]}),
                            )
                            .unwrap(),
                        ),
                    },
                    PolicyAction::Replan {
                        rationale: Some("rewrite weak copy".into()),
                    },
                ),
                RuntimePolicy {
                    enabled: false,
                    max_fires: 3,
                    ..rule(
                        "approve",
                        PolicyTrigger::OnStart { condition: None },
                        PolicyAction::Hitl {
                            kind: HitlKind::Approval,
                            question: "start?".into(),
                            options: Vec::new(),
                            on_approve: FollowUp::Continue,
                            on_reject: FollowUp::Fail,
                        },
                    )
                },
                rule(
                    "slow",
                    PolicyTrigger::OnTimeout { ms: 90_000 },
                    PolicyAction::Pause {
                        reason: Some("taking too long".into()),
                    },
                ),
                rule(
                    "low-score",
                    PolicyTrigger::OnMetricBelow {
                        metric: "score".into(),
                        threshold: 0.25,
                    },
                    PolicyAction::Fail { reason: None },
                ),
                rule(
                    "operator",
                    PolicyTrigger::Manual {
                        signal: Some("stop".into()),
                    },
                    PolicyAction::Fail {
                        reason: Some("stopped".into()),
                    },
                ),
            ],
            budgets: crate::policy::Budgets::new(),
        }
    }

    #[test]
    fn typed_policies_normalize_back_to_themselves() {
        let policies = policies();
        let envelope = RunEnvelope::builder("o").policies(&policies).build();
        assert_eq!(normalize(&envelope.policies).unwrap(), policies);
        let defaults = RunEnvelope::builder("o")
            .policies(&NormalizedPolicies::default())
            .build();
        assert_eq!(
            normalize(&defaults.policies).unwrap(),
            NormalizedPolicies::default()
        );
    }

    #[test]
    fn the_builder_sets_every_field() {
        let built = RunEnvelope::builder("Tagline")
            .input("objectiveBrief", "bread")
            .input("count", 3)
            .input("count", 4)
            .constraint("language", "en")
            .outputs(&["copyVariants"])
            .raw_policies(json!({"maxNodes": 5}))
            .metadata("clientId", "c-1")
            .metadata("runLabel", json!({"a": 1}))
            .special_instruction("first")
            .special_instruction("second")
            .planner("scripted")
            .goal_conditions(json!({"!!": [{"var": "facets.copyVariants"}]}))
            .build();
        let wire: RunEnvelope = serde_json::from_value(json!({
            "objective": "Tagline",
            "inputs": {"objectiveBrief": "bread", "count": 4},
            "constraints": {"language": "en"},
            "policies": {"maxNodes": 5},
            "specialInstructions": ["first", "second"],
            "metadata": {"clientId": "c-1", "runLabel": {"a": 1}},
            "outputContract": {"mode": "facets", "facets": ["copyVariants"]},
            "planner": "scripted",
            "goalConditions": {"!!": [{"var": "facets.copyVariants"}]}
        }))
        .unwrap();
        assert_eq!(built, wire);
    }

    #[test]
    fn a_bare_builder_matches_the_minimal_envelope() {
        assert_eq!(
            RunEnvelope::builder("o").build(),
            RunEnvelope::new("o", Map::new(), &[])
        );
        let schema = json!({"type": "object", "required": ["summary"]});
        let envelope = RunEnvelope::builder("o")
            .outputs(&["ignored"])
            .output_contract(OutputContract::JsonSchema { schema })
            .build();
        assert_eq!(envelope.output_contract.required_facets(), ["summary"]);
    }
}
