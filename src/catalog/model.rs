//! Catalog DTOs: facets and capabilities as registered and as sent to planners.

use serde::de::Error as _;
use serde::ser::SerializeMap as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Which way a facet may flow through a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FacetDirection {
    /// Only consumed by nodes (supplied by run inputs or upstream).
    Input,
    /// Only produced by nodes.
    Output,
    /// Both consumed and produced.
    Bidirectional,
}

impl FacetDirection {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Input => "input",
            Self::Output => "output",
            Self::Bidirectional => "bidirectional",
        }
    }

    /// True when nodes may consume the facet (`input` or `bidirectional`).
    pub fn allows_input(self) -> bool {
        match self {
            Self::Input | Self::Bidirectional => true,
            Self::Output => false,
        }
    }

    /// True when nodes may produce the facet (`output` or `bidirectional`).
    pub fn allows_output(self) -> bool {
        match self {
            Self::Output | Self::Bidirectional => true,
            Self::Input => false,
        }
    }
}

/// A named piece of run data with a JSON-Schema fragment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Facet {
    /// Unique name, e.g. `copyVariants`; an identifier (see [`crate::ids`]), checked on
    /// registration. A dotted name (`brief.tone`) addresses a nested property of its parent.
    pub name: String,
    /// Short title.
    #[serde(default)]
    pub title: String,
    /// What the facet holds.
    #[serde(default)]
    pub description: String,
    /// Allowed direction.
    pub direction: FacetDirection,
    /// JSON-Schema fragment for the facet's value.
    pub schema: serde_json::Value,
    /// Instructions for producers of the facet.
    #[serde(default)]
    pub instructions: String,
    /// Whether the facet is required in a compiled contract by default.
    #[serde(default = "default_true")]
    pub required_by_default: bool,
}

fn default_true() -> bool {
    true
}

/// The kind of work a capability does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapabilityKind {
    /// Turns objectives into structured briefs.
    Structuring,
    /// Does the main work.
    Execution,
    /// Checks other nodes' work.
    Validation,
    /// Reshapes data.
    Transformation,
    /// Chooses between paths.
    Routing,
}

impl CapabilityKind {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Structuring => "structuring",
            Self::Execution => "execution",
            Self::Validation => "validation",
            Self::Transformation => "transformation",
            Self::Routing => "routing",
        }
    }
}

/// Who performs a capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentType {
    /// A model or program.
    Ai,
    /// A person (nodes become HITL requests).
    Human,
}

/// Whether a capability may be used by new plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapabilityStatus {
    /// Usable.
    #[default]
    Active,
    /// Registered but not usable.
    Inactive,
}

impl CapabilityStatus {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Inactive => "inactive",
        }
    }
}

/// How nodes of a capability are executed.
///
/// On the wire an object tagged by `type`. The four types the engine knows have fixed fields;
/// any other type is [`ExecutorSpec::Custom`], whose other fields are kept as they are, so
/// `{"type":"grpc","target":"x"}` reads and writes back unchanged. The engine runs a custom
/// type with the executor registered for it (`Executors::with_type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutorSpec {
    /// A handler compiled into the binary, by name.
    Builtin {
        /// The handler's registered name.
        handler: String,
    },
    /// A webhook that receives the context bundle.
    Http {
        /// Where to POST.
        url: String,
        /// The name of the environment variable holding this webhook's signing secret(s)
        /// (wire `signingSecretEnv`); it overrides the executor's server-wide secret. Only the
        /// name is stored: the value is read when a call is signed.
        signing_secret_env: Option<String>,
    },
    /// An OpenAI-compatible model call.
    Llm {
        /// Model name; the engine default when absent.
        model: Option<String>,
        /// Capability-level instructions.
        instructions: String,
    },
    /// Becomes a HITL request.
    Human,
    /// An executor type the embedding service provides (`grpc`, `queue`, …).
    Custom {
        /// The `type` field; never one of `builtin`, `http`, `llm`, `human`.
        executor_type: String,
        /// The object's other fields, for the executor to read.
        config: Map<String, Value>,
    },
}

impl ExecutorSpec {
    /// The executor types with fixed fields; every other type is custom.
    pub const KNOWN_TYPES: [&'static str; 4] = ["builtin", "http", "llm", "human"];

    /// The wire `type`.
    pub fn executor_type(&self) -> &str {
        match self {
            Self::Builtin { .. } => "builtin",
            Self::Http { .. } => "http",
            Self::Llm { .. } => "llm",
            Self::Human => "human",
            Self::Custom { executor_type, .. } => executor_type,
        }
    }
}

/// The wire form of the known executor types.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum KnownSpec {
    Builtin {
        handler: String,
    },
    Http {
        url: String,
        #[serde(
            rename = "signingSecretEnv",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        signing_secret_env: Option<String>,
    },
    Llm {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        #[serde(default)]
        instructions: String,
    },
    Human,
}

impl Serialize for ExecutorSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let known = match self {
            Self::Builtin { handler } => KnownSpec::Builtin {
                handler: handler.clone(),
            },
            Self::Http {
                url,
                signing_secret_env,
            } => KnownSpec::Http {
                url: url.clone(),
                signing_secret_env: signing_secret_env.clone(),
            },
            Self::Llm {
                model,
                instructions,
            } => KnownSpec::Llm {
                model: model.clone(),
                instructions: instructions.clone(),
            },
            Self::Human => KnownSpec::Human,
            Self::Custom {
                executor_type,
                config,
            } => {
                let fields = config.iter().filter(|(k, _)| k.as_str() != "type");
                let mut map = serializer.serialize_map(None)?;
                map.serialize_entry("type", executor_type)?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                return map.end();
            }
        };
        known.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ExecutorSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut fields = Map::<String, Value>::deserialize(deserializer)?;
        let executor_type = match fields.get("type") {
            Some(Value::String(t)) => t.clone(),
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "executor `type` must be a string, got {other}"
                )));
            }
            None => return Err(D::Error::missing_field("type")),
        };
        if !Self::KNOWN_TYPES.contains(&executor_type.as_str()) {
            fields.remove("type");
            return Ok(Self::Custom {
                executor_type,
                config: fields,
            });
        }
        let known = KnownSpec::deserialize(Value::Object(fields)).map_err(D::Error::custom)?;
        Ok(match known {
            KnownSpec::Builtin { handler } => Self::Builtin { handler },
            KnownSpec::Http {
                url,
                signing_secret_env,
            } => Self::Http {
                url,
                signing_secret_env,
            },
            KnownSpec::Llm {
                model,
                instructions,
            } => Self::Llm {
                model,
                instructions,
            },
            KnownSpec::Human => Self::Human,
        })
    }
}

/// What happens to a node whose attempt fails: retry (with backoff), then ask a human or fail
/// the run. Set per capability (`fallback`) and per run (`policies.fallback`); each field the
/// capability gives wins over the run's, and what neither gives takes the default (the
/// capability's `maxAttempts`, no backoff, then `fail`).
///
/// The policy normalizer reads it with every bound checked (`crate::policy::normalize`, and
/// `POST /v1/capabilities`); plain deserialization fills in the same defaults.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fallback {
    /// How failed attempts are retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// What follows the last failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then: Option<Then>,
}

/// Retries of a failed node attempt, with exponential backoff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    /// Attempts per round (the first one included), at least 1; `None` takes the
    /// capability's `maxAttempts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Delay before the first retry, in milliseconds (0: none).
    #[serde(default)]
    pub backoff_ms: u64,
    /// Factor applied to the delay for each further retry, at least 1.
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// Upper bound of the delay, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff_ms: Option<u64>,
}

/// The default backoff multiplier.
pub const DEFAULT_BACKOFF_MULTIPLIER: f64 = 2.0;

fn default_multiplier() -> f64 {
    DEFAULT_BACKOFF_MULTIPLIER
}

/// What follows a node's last failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Then {
    /// The run fails with `NODE_FAILED`.
    #[default]
    Fail,
    /// A human is asked: retry, skip with a supplied output, replan, or fail.
    Hitl,
}

/// Something that can execute a plan node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capability {
    /// Unique id, e.g. `writer.en`; an identifier (see [`crate::ids`]), checked on
    /// registration.
    pub capability_id: String,
    /// Semantic version.
    #[serde(default = "default_version")]
    pub version: String,
    /// Display name.
    #[serde(default)]
    pub display_name: String,
    /// One-line summary for planners.
    #[serde(default)]
    pub summary: String,
    /// The kind of work.
    pub kind: CapabilityKind,
    /// Who performs it.
    #[serde(default = "default_agent")]
    pub agent_type: AgentType,
    /// Facets consumed.
    #[serde(default)]
    pub input_facets: Vec<String>,
    /// Facets produced.
    #[serde(default)]
    pub output_facets: Vec<String>,
    /// Relative cost, for planners that optimise.
    #[serde(default)]
    pub cost: f64,
    /// Per-attempt timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts per node before the node fails (when `fallback.retry.maxAttempts` is not
    /// given).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The fallback ladder of its nodes (retry with backoff, then ask a human or fail); each
    /// field given wins over the run's `policies.fallback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    /// How nodes run.
    pub executor: ExecutorSpec,
    /// Active or inactive.
    #[serde(default)]
    pub status: CapabilityStatus,
}

impl Capability {
    /// True when the capability may be used by new plans.
    pub fn is_active(&self) -> bool {
        self.status == CapabilityStatus::Active
    }

    /// True when the capability declares `facet` among its input facets.
    pub fn consumes(&self, facet: &str) -> bool {
        self.input_facets.iter().any(|f| f == facet)
    }

    /// True when the capability declares `facet` among its output facets.
    pub fn produces(&self, facet: &str) -> bool {
        self.output_facets.iter().any(|f| f == facet)
    }
}

fn default_version() -> String {
    "1.0.0".to_owned()
}

fn default_agent() -> AgentType {
    AgentType::Ai
}

fn default_timeout_ms() -> u64 {
    30_000
}

fn default_max_attempts() -> u32 {
    1
}

/// Building facets by hand.
///
/// Catalog and plan types are built in one style: a constructor taking what has no default,
/// then chainable `with_*` methods, each consuming and returning the value. The defaults are
/// the ones a JSON registration with the field left out gets.
impl Facet {
    /// A bidirectional facet called `name` whose values match `schema`, required by default,
    /// with empty title, description and instructions.
    ///
    /// ```
    /// use flexrun::catalog::{Facet, FacetDirection};
    /// use serde_json::json;
    ///
    /// let facet = Facet::new("copyVariants", json!({"type": "array", "items": {"type": "string"}}))
    ///     .with_direction(FacetDirection::Output)
    ///     .with_title("Copy variants")
    ///     .with_instructions("Write short, distinct variants.");
    /// assert_eq!(facet.direction, FacetDirection::Output);
    /// assert!(facet.required_by_default);
    /// ```
    pub fn new(name: impl Into<String>, schema: serde_json::Value) -> Self {
        Self {
            name: name.into(),
            title: String::new(),
            description: String::new(),
            direction: FacetDirection::Bidirectional,
            schema,
            instructions: String::new(),
            required_by_default: default_true(),
        }
    }

    /// The same facet with `direction`.
    pub fn with_direction(mut self, direction: FacetDirection) -> Self {
        self.direction = direction;
        self
    }

    /// The same facet with a short title.
    pub fn with_title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// The same facet with a description of what it holds.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// The same facet with instructions for its producers.
    pub fn with_instructions(mut self, instructions: impl Into<String>) -> Self {
        self.instructions = instructions.into();
        self
    }

    /// The same facet, required by default in compiled contracts or not.
    pub fn with_required_by_default(mut self, required: bool) -> Self {
        self.required_by_default = required;
        self
    }
}

/// Building capabilities by hand, in the style described on [`Facet::new`].
impl Capability {
    /// An active capability `capability_id` of `kind` run by `executor`: version `1.0.0`,
    /// performed by [`AgentType::Ai`], no facets, cost 0, a 30 s per-attempt timeout and one
    /// attempt per node.
    ///
    /// ```
    /// use flexrun::catalog::{Capability, CapabilityKind, ExecutorSpec};
    ///
    /// let writer = Capability::new(
    ///     "writer.en",
    ///     CapabilityKind::Execution,
    ///     ExecutorSpec::Builtin { handler: "write_copy".into() },
    /// )
    /// .with_summary("Writes three English copy variants")
    /// .with_input_facets(["writerBrief"])
    /// .with_output_facets(["copyVariants"])
    /// .with_max_attempts(2);
    /// assert!(writer.consumes("writerBrief") && writer.produces("copyVariants"));
    /// assert_eq!((writer.version.as_str(), writer.timeout_ms), ("1.0.0", 30_000));
    /// ```
    pub fn new(
        capability_id: impl Into<String>,
        kind: CapabilityKind,
        executor: ExecutorSpec,
    ) -> Self {
        Self {
            capability_id: capability_id.into(),
            version: default_version(),
            display_name: String::new(),
            summary: String::new(),
            kind,
            agent_type: default_agent(),
            input_facets: Vec::new(),
            output_facets: Vec::new(),
            cost: 0.0,
            timeout_ms: default_timeout_ms(),
            max_attempts: default_max_attempts(),
            fallback: None,
            executor,
            status: CapabilityStatus::default(),
        }
    }

    /// The same capability with semantic version `version`.
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// The same capability with a display name.
    pub fn with_display_name(mut self, display_name: impl Into<String>) -> Self {
        self.display_name = display_name.into();
        self
    }

    /// The same capability with a one-line summary for planners.
    pub fn with_summary(mut self, summary: impl Into<String>) -> Self {
        self.summary = summary.into();
        self
    }

    /// The same capability performed by `agent_type`.
    pub fn with_agent_type(mut self, agent_type: AgentType) -> Self {
        self.agent_type = agent_type;
        self
    }

    /// The same capability consuming exactly `facets`.
    pub fn with_input_facets<S: Into<String>>(
        mut self,
        facets: impl IntoIterator<Item = S>,
    ) -> Self {
        self.input_facets = facets.into_iter().map(Into::into).collect();
        self
    }

    /// The same capability producing exactly `facets`.
    pub fn with_output_facets<S: Into<String>>(
        mut self,
        facets: impl IntoIterator<Item = S>,
    ) -> Self {
        self.output_facets = facets.into_iter().map(Into::into).collect();
        self
    }

    /// The same capability with relative cost `cost`.
    pub fn with_cost(mut self, cost: f64) -> Self {
        self.cost = cost;
        self
    }

    /// The same capability with a per-attempt timeout of `timeout_ms` milliseconds.
    pub fn with_timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.timeout_ms = timeout_ms;
        self
    }

    /// The same capability allowing `max_attempts` attempts per node.
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// The same capability with the fallback ladder `fallback`.
    pub fn with_fallback(mut self, fallback: Fallback) -> Self {
        self.fallback = Some(fallback);
        self
    }

    /// The same capability with `status`.
    pub fn with_status(mut self, status: CapabilityStatus) -> Self {
        self.status = status;
        self
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_new_facet_has_the_defaults_of_a_minimal_registration() {
        let schema = json!({"type": "string"});
        let registered: Facet = serde_json::from_value(
            json!({"name": "summary", "direction": "bidirectional", "schema": schema}),
        )
        .unwrap();
        assert_eq!(Facet::new("summary", schema), registered);
    }

    #[test]
    fn facet_with_methods_set_every_field() {
        let facet = Facet::new("qaReport", json!({"type": "object"}))
            .with_direction(FacetDirection::Output)
            .with_title("QA")
            .with_description("Quality report")
            .with_instructions("Check the copy.")
            .with_required_by_default(false);
        assert_eq!(
            facet,
            Facet {
                name: "qaReport".into(),
                title: "QA".into(),
                description: "Quality report".into(),
                direction: FacetDirection::Output,
                schema: json!({"type": "object"}),
                instructions: "Check the copy.".into(),
                required_by_default: false,
            }
        );
    }

    #[test]
    fn a_new_capability_has_the_defaults_of_a_minimal_registration() {
        let registered: Capability = serde_json::from_value(json!({
            "capabilityId": "qa.copy",
            "kind": "validation",
            "executor": {"type": "human"}
        }))
        .unwrap();
        let built = Capability::new("qa.copy", CapabilityKind::Validation, ExecutorSpec::Human);
        assert_eq!(built, registered);
        assert!(built.is_active());
        assert_eq!(built.agent_type, AgentType::Ai);
        assert_eq!((built.timeout_ms, built.max_attempts), (30_000, 1));
    }

    #[test]
    fn capability_with_methods_set_every_field() {
        let built = Capability::new(
            "review",
            CapabilityKind::Validation,
            ExecutorSpec::Http {
                url: "http://127.0.0.1:9/review".into(),
                signing_secret_env: None,
            },
        )
        .with_version("2.1.0")
        .with_display_name("Review")
        .with_summary("A person reviews the copy")
        .with_agent_type(AgentType::Human)
        .with_input_facets(["copyVariants", "writerBrief"])
        .with_output_facets(vec![String::from("qaReport")])
        .with_cost(4.5)
        .with_timeout_ms(60_000)
        .with_max_attempts(3)
        .with_status(CapabilityStatus::Inactive);
        assert_eq!(
            built,
            Capability {
                capability_id: "review".into(),
                version: "2.1.0".into(),
                display_name: "Review".into(),
                summary: "A person reviews the copy".into(),
                kind: CapabilityKind::Validation,
                agent_type: AgentType::Human,
                input_facets: vec!["copyVariants".into(), "writerBrief".into()],
                output_facets: vec!["qaReport".into()],
                cost: 4.5,
                timeout_ms: 60_000,
                max_attempts: 3,
                fallback: None,
                executor: ExecutorSpec::Http {
                    url: "http://127.0.0.1:9/review".into(),
                    signing_secret_env: None,
                },
                status: CapabilityStatus::Inactive,
            }
        );
        assert!(!built.is_active());
    }
}

#[cfg(test)]
mod executor_spec_tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_known_executor_types_keep_their_wire_shape() {
        for wire in [
            json!({"type": "builtin", "handler": "noop"}),
            json!({"type": "http", "url": "http://127.0.0.1:9/x"}),
            json!({"type": "http", "url": "http://127.0.0.1:9/x", "signingSecretEnv": "HOOK_SECRET"}),
            json!({"type": "llm", "instructions": ""}),
            json!({"type": "llm", "model": "m", "instructions": "be brief"}),
            json!({"type": "human"}),
        ] {
            let spec: ExecutorSpec = serde_json::from_value(wire.clone()).unwrap();
            assert!(!matches!(spec, ExecutorSpec::Custom { .. }), "{wire}");
            assert_eq!(serde_json::to_value(&spec).unwrap(), wire);
        }
        let spec: ExecutorSpec = serde_json::from_value(json!({"type": "llm"})).unwrap();
        assert_eq!(
            spec,
            ExecutorSpec::Llm {
                model: None,
                instructions: String::new()
            }
        );
    }

    #[test]
    fn a_custom_executor_type_round_trips_with_its_fields() {
        let wire = json!({"type": "grpc", "target": "x", "retry": {"max": 2}});
        let spec: ExecutorSpec = serde_json::from_value(wire.clone()).unwrap();
        let ExecutorSpec::Custom {
            executor_type,
            config,
        } = &spec
        else {
            panic!("not custom: {spec:?}")
        };
        assert_eq!(executor_type, "grpc");
        assert_eq!(
            Value::Object(config.clone()),
            json!({"target": "x", "retry": {"max": 2}})
        );
        assert_eq!(spec.executor_type(), "grpc");
        assert_eq!(serde_json::to_value(&spec).unwrap(), wire);
    }

    #[test]
    fn a_malformed_executor_names_what_is_wrong() {
        let cases = [
            (json!({"handler": "noop"}), "missing field `type`"),
            (
                json!({"type": 3}),
                "executor `type` must be a string, got 3",
            ),
            (json!({"type": "builtin"}), "missing field `handler`"),
        ];
        for (wire, message) in cases {
            let err = serde_json::from_value::<ExecutorSpec>(wire.clone()).unwrap_err();
            assert!(err.to_string().contains(message), "{wire}: {err}");
        }
    }
}
