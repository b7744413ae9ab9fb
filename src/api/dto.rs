//! The API's wire types, kept apart from the domain types, and every conversion between the
//! two (this module is the only place where they meet).
//!
//! Request DTOs mirror DESIGN §8 field for field (camelCase); response DTOs are views
//! assembled from the store. Event frames are the one exception: an SSE `data:` line is the
//! domain [`RunEvent`](crate::fsm::RunEvent) serialized as is, because the event type is the
//! single definition shared by the store, tracing and the stream ([`EventDoc`] documents it).

use serde::de::Error as _;
use serde::ser::SerializeMap as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AdditionalProperties, Array, ArrayBuilder, Object, ObjectBuilder, OneOfBuilder, Schema, Type,
};

use super::error::ApiError;
use crate::catalog::{
    AgentType, Capability, CapabilityKind, CapabilityStatus, ExecutorSpec, Facet, FacetDirection,
    check_capability_ids,
};
use crate::engine::HitlAnswer;
use crate::envelope::{OutputContract, RunEnvelope};
use crate::fsm::{HitlDecision, RunError};
use crate::graph::{PlanDiff, PlanEdge, PlanNode, PlanSnapshot};
use crate::ids::{ID_PATTERN, IdKind, RunId, Timestamp, check_id};
use crate::policy::{BudgetResource, Budgets, Ledger, Spend};
use crate::store::{HitlRecord, HitlStatus, NodeRecord, NodeStatus, RunHead, RunStatus};

pub mod policies;

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

/// A run envelope (`POST /v1/runs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunRequest {
    /// What the run is for; must not be empty.
    pub objective: String,
    /// Facet name → value supplied by the client.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub inputs: Map<String, Value>,
    /// Free-form constraints handed to the planner.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub constraints: Map<String, Value>,
    /// Planner limits and runtime policies (docs/POLICIES.md), kept as given and normalized
    /// on submission; the normalizer also reads legacy spellings the schema does not list.
    #[serde(default)]
    #[schema(value_type = Option<policies::PoliciesDto>)]
    pub policies: Value,
    /// Extra instructions for the planner and every node.
    #[serde(default)]
    pub special_instructions: Vec<String>,
    /// Client metadata (clientId, correlationId, runLabel, …), stored as given.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// What the run must deliver.
    pub output_contract: OutputContractDto,
    /// The planner to use, by name; the server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planner: Option<String>,
    /// JSON-Logic rule over `{inputs, facets}` that must hold for the run to complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub goal_conditions: Option<Value>,
}

/// What a run must deliver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum OutputContractDto {
    /// The output is the values of these facets.
    Facets {
        /// Required output facets (registered facet names).
        #[schema(schema_with = facet_names_schema)]
        facets: Vec<String>,
    },
    /// The output is an object matching `schema`; its `required` properties are facets.
    JsonSchema {
        /// A JSON Schema for the output object.
        #[schema(value_type = Object)]
        schema: Value,
    },
    /// Free-form output described by instructions.
    Freeform {
        /// What the output should be.
        instructions: String,
    },
}

/// A facet (`POST /v1/facets` and listings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FacetDto {
    /// Unique name, e.g. `copyVariants`.
    #[schema(schema_with = facet_name_schema)]
    pub name: String,
    /// Short title.
    #[serde(default)]
    pub title: String,
    /// What the facet holds.
    #[serde(default)]
    pub description: String,
    /// Allowed direction.
    pub direction: DirectionDto,
    /// JSON-Schema fragment for the facet's value.
    #[schema(value_type = Object)]
    pub schema: Value,
    /// Instructions for producers of the facet.
    #[serde(default)]
    pub instructions: String,
    /// Whether the facet is required in a compiled contract by default.
    #[serde(default = "yes")]
    pub required_by_default: bool,
}

fn yes() -> bool {
    true
}

/// Which way a facet may flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DirectionDto {
    /// Consumed only.
    Input,
    /// Produced only.
    Output,
    /// Both.
    Bidirectional,
}

/// A capability (`POST /v1/capabilities` and listings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CapabilityDto {
    /// Unique id, e.g. `writer.en`.
    #[schema(schema_with = capability_id_schema)]
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
    pub kind: KindDto,
    /// Who performs it.
    #[serde(default = "default_agent")]
    pub agent_type: AgentTypeDto,
    /// Facets consumed.
    #[serde(default)]
    #[schema(schema_with = facet_names_schema)]
    pub input_facets: Vec<String>,
    /// Facets produced.
    #[serde(default)]
    #[schema(schema_with = facet_names_schema)]
    pub output_facets: Vec<String>,
    /// Relative cost.
    #[serde(default)]
    pub cost: f64,
    /// Per-attempt timeout in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts per node before the node fails (when `fallback.retry.maxAttempts` is not
    /// given).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The fallback ladder of its nodes; each field given wins over the run's
    /// `policies.fallback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<policies::FallbackDto>,
    /// How nodes run.
    pub executor: ExecutorDto,
    /// Active or inactive.
    #[serde(default = "default_status")]
    pub status: CapabilityStatusDto,
}

fn default_version() -> String {
    "1.0.0".to_owned()
}

fn default_agent() -> AgentTypeDto {
    AgentTypeDto::Ai
}

fn default_timeout_ms() -> u64 {
    30_000
}

fn default_max_attempts() -> u32 {
    1
}

fn default_status() -> CapabilityStatusDto {
    CapabilityStatusDto::Active
}

/// The kind of work a capability (or plan node) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KindDto {
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

/// Who performs a capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentTypeDto {
    /// A model or program.
    Ai,
    /// A person.
    Human,
}

/// Whether new plans may use a capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CapabilityStatusDto {
    /// Usable.
    Active,
    /// Registered but not usable.
    Inactive,
}

/// How nodes of a capability run: an object tagged by `type`. `builtin`, `http`, `llm` and
/// `human` have fixed fields; any other type (`grpc`, …) is a custom executor the server's
/// embedding registers, and its other fields are kept as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutorDto {
    /// A handler compiled into the server, by name.
    Builtin {
        /// The handler's name.
        handler: String,
    },
    /// A webhook receiving the context bundle (`http` or `https` URL).
    Http {
        /// Where to POST.
        url: String,
        /// The environment variable holding the webhook's signing secret(s).
        signing_secret_env: Option<String>,
    },
    /// An OpenAI-compatible model call.
    Llm {
        /// Model name; the server default when absent.
        model: Option<String>,
        /// Capability-level instructions.
        instructions: String,
    },
    /// Becomes a HITL request.
    Human,
    /// A custom executor type.
    Custom {
        /// The `type` field.
        executor_type: String,
        /// The other fields.
        config: Map<String, Value>,
    },
}

/// The wire form (and schema) of the known executor types.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum KnownExecutorDto {
    /// A handler compiled into the server, by name.
    Builtin {
        /// The handler's name.
        handler: String,
    },
    /// A webhook receiving the context bundle (`http` or `https` URL).
    Http {
        /// Where to POST.
        url: String,
        /// The name of the server's environment variable holding this webhook's signing
        /// secret(s), `whsec_<base64>` (several separated by spaces while rotating); it
        /// overrides the server-wide `--webhook-secret-env`. Only the name is stored and
        /// returned; the variable must be set when the capability is registered.
        #[serde(
            rename = "signingSecretEnv",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        signing_secret_env: Option<String>,
    },
    /// An OpenAI-compatible model call.
    Llm {
        /// Model name; the server default when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        /// Capability-level instructions.
        #[serde(default)]
        instructions: String,
    },
    /// Becomes a HITL request.
    Human,
}

impl Serialize for ExecutorDto {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let known = match self {
            Self::Builtin { handler } => KnownExecutorDto::Builtin {
                handler: handler.clone(),
            },
            Self::Http {
                url,
                signing_secret_env,
            } => KnownExecutorDto::Http {
                url: url.clone(),
                signing_secret_env: signing_secret_env.clone(),
            },
            Self::Llm {
                model,
                instructions,
            } => KnownExecutorDto::Llm {
                model: model.clone(),
                instructions: instructions.clone(),
            },
            Self::Human => KnownExecutorDto::Human,
            Self::Custom {
                executor_type,
                config,
            } => {
                let mut map = serializer.serialize_map(None)?;
                map.serialize_entry("type", executor_type)?;
                for (k, v) in config.iter().filter(|(k, _)| k.as_str() != "type") {
                    map.serialize_entry(k, v)?;
                }
                return map.end();
            }
        };
        known.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ExecutorDto {
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
        if !ExecutorSpec::KNOWN_TYPES.contains(&executor_type.as_str()) {
            fields.remove("type");
            return Ok(Self::Custom {
                executor_type,
                config: fields,
            });
        }
        let known =
            KnownExecutorDto::deserialize(Value::Object(fields)).map_err(D::Error::custom)?;
        Ok(match known {
            KnownExecutorDto::Builtin { handler } => Self::Builtin { handler },
            KnownExecutorDto::Http {
                url,
                signing_secret_env,
            } => Self::Http {
                url,
                signing_secret_env,
            },
            KnownExecutorDto::Llm {
                model,
                instructions,
            } => Self::Llm {
                model,
                instructions,
            },
            KnownExecutorDto::Human => Self::Human,
        })
    }
}

impl utoipa::PartialSchema for ExecutorDto {
    fn schema() -> RefOr<Schema> {
        let custom = ObjectBuilder::new()
            .title(Some("CustomExecutor"))
            .description(Some(
                "A custom executor type (e.g. `grpc`) served by an executor the server's \
                 embedding registers; its other fields are kept as given.",
            ))
            .property(
                "type",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("anything but builtin, http, llm or human")),
            )
            .required("type")
            .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(true)));
        match KnownExecutorDto::schema() {
            RefOr::T(Schema::OneOf(mut one_of)) => {
                one_of.items.push(custom.into());
                RefOr::T(Schema::OneOf(one_of))
            }
            known => OneOfBuilder::new().item(known).item(custom).into(),
        }
    }
}

impl ToSchema for ExecutorDto {
    fn name() -> std::borrow::Cow<'static, str> {
        "ExecutorDto".into()
    }
}

/// An answer to a HITL request (`POST /v1/runs/{id}/hitl/{requestId}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HitlAnswerRequest {
    /// approve, reject, option or freeform.
    pub decision: DecisionDto,
    /// The chosen option, for `option`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub option_id: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Who answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub responder: Option<ResponderDto>,
}

/// A HITL decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DecisionDto {
    /// Go ahead.
    Approve,
    /// Do not go ahead; the request's `onReject` follows.
    Reject,
    /// One of the offered options.
    Option,
    /// Free text.
    Freeform,
}

/// Who answered a HITL request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponderDto {
    /// The responder's id.
    pub id: String,
}

/// An external signal (`POST /v1/runs/{id}/signals`); `manual` policies whose `signal` is
/// `name` or absent, and the `manual` policy whose id is `payload.policyId`, fire on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignalRequest {
    /// The signal's name.
    pub name: String,
    /// Any data.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: Value,
}

/// Resuming a paused run (`POST /v1/runs/{id}/resume`): why, and optionally larger budgets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResumeRequest {
    /// Why; recorded on the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// New limits by resource (`plannerTokens`, `nodeTokens`, `cost`, `wallTimeMs`, `nodes`),
    /// each greater than 0; `onBudget` policies on a raised resource may fire again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<BTreeMap<String, f64>>, example = json!({"cost": 20}))]
    pub budgets: Option<Map<String, Value>>,
}

impl ResumeRequest {
    /// The budgets as limits by resource.
    ///
    /// # Errors
    /// [`ApiError::invalid_field`] naming `budgets.<key>` for an unknown resource or a limit
    /// that is not a number greater than 0.
    pub fn limits(&self) -> Result<Budgets, ApiError> {
        let mut out = Budgets::new();
        for (key, value) in self.budgets.iter().flatten() {
            let field = format!("budgets.{key}");
            let resource = BudgetResource::parse(key).ok_or_else(|| {
                ApiError::invalid_field(
                    &field,
                    format!(
                        "`{key}` is not a budget resource; expected one of {}",
                        BudgetResource::ALL.map(BudgetResource::as_str).join(", ")
                    ),
                )
            })?;
            let limit = value
                .as_f64()
                .filter(|v| *v > 0.0 && v.is_finite())
                .ok_or_else(|| {
                    ApiError::invalid_field(
                        &field,
                        format!("a budget is a number greater than 0, found {value}"),
                    )
                })?;
            out.insert(resource, limit);
        }
        Ok(out)
    }
}

/// An optional reason for cancel, pause and resume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReasonRequest {
    /// Why; recorded on the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------

/// The answer to `POST /v1/runs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunCreated {
    /// The new run.
    #[schema(value_type = String)]
    pub run_id: RunId,
    /// `active`.
    pub status: RunStatusDto,
    /// Where to follow the run's events.
    pub events_url: String,
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatusDto {
    /// Not finished.
    Active,
    /// Completed.
    Completed,
    /// Failed.
    Failed,
    /// Cancelled.
    Cancelled,
}

/// One run in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    /// The run.
    #[schema(value_type = String)]
    pub run_id: RunId,
    /// Active or how it ended.
    pub status: RunStatusDto,
    /// The run machine's state (`requesting`, `executing`, `paused`, `done`, …).
    pub state: String,
    /// The objective.
    pub objective: String,
    /// The current plan version (0 before the first plan).
    pub plan_version: u32,
    /// The seq of the last event.
    pub last_seq: u64,
    /// Creation time (RFC 3339).
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Last change (RFC 3339).
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// `GET /v1/runs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunList {
    /// Runs, newest first.
    pub runs: Vec<RunSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /v1/runs/{id}`: the run, its current plan's nodes with their status, and its output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunDetail {
    /// The run's head.
    #[serde(flatten)]
    pub run: RunSummary,
    /// Nodes of the current plan version, in plan order.
    pub nodes: Vec<NodeView>,
    /// HITL requests still waiting for an answer.
    pub pending_hitl: Vec<HitlView>,
    /// The run's output, once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    /// Why the run failed or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunErrorDto>,
    /// Budgets and spend.
    pub budget: BudgetView,
}

/// A run's budgets and spend (`budget` of the run detail).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetView {
    /// What the run has spent: `plannerTokens`, `nodeTokens`, `cost`, `wallTimeMs`, `nodes`.
    #[schema(value_type = Object)]
    pub spent: Spend,
    /// The limits by resource (the policies' budgets, as raised since); absent resources are
    /// unbounded.
    #[schema(value_type = BTreeMap<String, f64>)]
    pub limits: Budgets,
    /// What is left of each limited resource (never below 0).
    #[schema(value_type = BTreeMap<String, f64>)]
    pub remaining: Budgets,
}

impl BudgetView {
    /// The view of `ledger`.
    pub fn new(ledger: &Ledger) -> Self {
        Self {
            spent: ledger.spend,
            limits: ledger.limits.clone(),
            remaining: ledger.spend.remaining(&ledger.limits),
        }
    }
}

/// A structured run error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunErrorDto {
    /// Stable code.
    pub code: String,
    /// Message.
    pub message: String,
}

/// A plan node with its execution status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// The node id.
    #[schema(schema_with = node_id_schema)]
    pub node_id: String,
    /// The executing capability.
    #[schema(schema_with = capability_id_schema)]
    pub capability_id: String,
    /// Stage label.
    pub stage: String,
    /// pending, running, completed or failed (of the latest attempt).
    pub status: NodeStatusDto,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the first attempt was dispatched (RFC 3339); absent while pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
    /// When the latest attempt ended (RFC 3339); absent while pending or running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<Timestamp>,
    /// The facet values produced, when completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    /// The last error, when failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where a node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatusDto {
    /// Not dispatched yet.
    Pending,
    /// Dispatched, no result yet.
    Running,
    /// Produced a valid output.
    Completed,
    /// Failed.
    Failed,
}

/// A HITL request and its answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HitlView {
    /// The request id (the path segment to answer it).
    #[schema(schema_with = hitl_request_id_schema)]
    pub request_id: String,
    /// Pending or resolved.
    pub status: HitlStatusDto,
    /// The request as sent to humans.
    #[schema(value_type = Object)]
    pub request: Value,
    /// The answer, once resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub response: Option<Value>,
}

/// Whether a HITL request has been answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HitlStatusDto {
    /// Waiting.
    Pending,
    /// Answered.
    Resolved,
}

/// `GET /v1/runs/{id}/hitl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HitlList {
    /// Every request of the run, by request id.
    pub requests: Vec<HitlView>,
}

/// The answer to a steering request (HITL answer, signal, cancel, pause, resume).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunAck {
    /// The run.
    #[schema(value_type = String)]
    pub run_id: RunId,
    /// Active or how it ended, after the request was applied.
    pub status: RunStatusDto,
    /// The run machine's state after the request was applied.
    pub state: String,
}

/// A plan version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanView {
    /// Version number, from 1.
    pub version: u32,
    /// Nodes in insertion order.
    pub nodes: Vec<PlanNodeDto>,
    /// Edges sorted by (from, to).
    pub edges: Vec<PlanEdgeDto>,
    /// Plan-level system instructions.
    pub system_instructions: String,
    /// The rationale of the draft or delta that produced this version.
    pub rationale: String,
}

/// A plan node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanNodeDto {
    /// Stable id.
    #[schema(schema_with = node_id_schema)]
    pub id: String,
    /// Stage label.
    pub stage: String,
    /// The executing capability.
    #[schema(schema_with = capability_id_schema)]
    pub capability_id: String,
    /// The node's kind.
    pub kind: KindDto,
    /// Facets consumed.
    #[schema(schema_with = facet_names_schema)]
    pub input_facets: Vec<String>,
    /// Facets produced.
    #[schema(schema_with = facet_names_schema)]
    pub output_facets: Vec<String>,
    /// Node-level instructions.
    pub instructions: Vec<String>,
    /// Why the planner put it here.
    pub rationale: String,
}

/// A dependency between two plan nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlanEdgeDto {
    /// Upstream node id.
    #[schema(schema_with = node_id_schema)]
    pub from: String,
    /// Downstream node id.
    #[schema(schema_with = node_id_schema)]
    pub to: String,
}

/// `GET /v1/runs/{id}/plan/versions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanVersions {
    /// The current version (0 before the first plan).
    pub current: u32,
    /// Every stored version, ascending.
    pub versions: Vec<u32>,
}

/// `GET /v1/runs/{id}/plan/diff`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanDiffView {
    /// Version diffed from.
    pub from_version: u32,
    /// Version diffed to.
    pub to_version: u32,
    /// Nodes only in the newer version.
    pub added_nodes: Vec<String>,
    /// Nodes only in the older version.
    pub removed_nodes: Vec<String>,
    /// Nodes in both whose content differs.
    pub changed_nodes: Vec<String>,
    /// Edges only in the newer version.
    pub added_edges: Vec<PlanEdgeDto>,
    /// Edges only in the older version.
    pub removed_edges: Vec<PlanEdgeDto>,
}

/// `GET /v1/facets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FacetList {
    /// Facets by name.
    pub facets: Vec<FacetDto>,
}

/// `GET /v1/capabilities`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CapabilityList {
    /// Capabilities by id.
    pub capabilities: Vec<CapabilityDto>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// The server's version.
    pub version: String,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable code, e.g. `RUN_NOT_FOUND`, `INVALID_ENVELOPE`, `MALFORMED_JSON`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Structured details, e.g. `{"field":"objective"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
}

/// The `data:` of an SSE frame: one committed run event (see `docs/EVENTS.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventDoc {
    /// Per-run, gap-free sequence number; also the SSE `id:`.
    pub seq: u64,
    /// The run.
    #[schema(value_type = String)]
    pub run_id: String,
    /// The event type; also the SSE `event:`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When the transition was taken (RFC 3339).
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: String,
    /// Plan version after the transition.
    pub plan_version: u32,
    /// The node concerned, for node events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Type-specific fields.
    #[schema(value_type = Object)]
    pub payload: Value,
}

// ---------------------------------------------------------------------------------------
// Identifier schemas: the grammar of `crate::ids` as OpenAPI `pattern` and `maxLength`
// ---------------------------------------------------------------------------------------

fn id_schema(kind: IdKind, description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(kind.max_len()))
        .pattern(Some(ID_PATTERN))
        .description(Some(format!(
            "{description}: {} (see Identifiers in docs/API.md)",
            kind.expected()
        )))
        .build()
}

fn capability_id_schema() -> Object {
    id_schema(IdKind::Capability, "A capability id, e.g. `writer.en`")
}

fn facet_name_schema() -> Object {
    id_schema(IdKind::Facet, "A facet name, e.g. `copyVariants`")
}

fn facet_names_schema() -> Array {
    ArrayBuilder::new()
        .items(facet_name_schema())
        .description(Some("Facet names"))
        .build()
}

fn node_id_schema() -> Object {
    id_schema(IdKind::Node, "A plan node id, e.g. `write`")
}

fn hitl_request_id_schema() -> Object {
    id_schema(IdKind::HitlRequest, "A HITL request id, e.g. `qa-gate-1`")
}

// ---------------------------------------------------------------------------------------
// Conversions
// ---------------------------------------------------------------------------------------

impl From<RunRequest> for RunEnvelope {
    fn from(r: RunRequest) -> Self {
        Self {
            objective: r.objective,
            inputs: r.inputs,
            constraints: r.constraints,
            policies: r.policies,
            special_instructions: r.special_instructions,
            metadata: r.metadata,
            output_contract: r.output_contract.into(),
            planner: r.planner,
            goal_conditions: r.goal_conditions,
        }
    }
}

impl From<OutputContractDto> for OutputContract {
    fn from(c: OutputContractDto) -> Self {
        match c {
            OutputContractDto::Facets { facets } => Self::Facets { facets },
            OutputContractDto::JsonSchema { schema } => Self::JsonSchema { schema },
            OutputContractDto::Freeform { instructions } => Self::Freeform { instructions },
        }
    }
}

impl From<DirectionDto> for FacetDirection {
    fn from(d: DirectionDto) -> Self {
        match d {
            DirectionDto::Input => Self::Input,
            DirectionDto::Output => Self::Output,
            DirectionDto::Bidirectional => Self::Bidirectional,
        }
    }
}

impl From<FacetDirection> for DirectionDto {
    fn from(d: FacetDirection) -> Self {
        match d {
            FacetDirection::Input => Self::Input,
            FacetDirection::Output => Self::Output,
            FacetDirection::Bidirectional => Self::Bidirectional,
        }
    }
}

impl TryFrom<FacetDto> for Facet {
    type Error = ApiError;

    fn try_from(f: FacetDto) -> Result<Self, ApiError> {
        check_id(IdKind::Facet, "name", &f.name)?;
        if !f.schema.is_object() && !f.schema.is_boolean() {
            return Err(ApiError::invalid_field(
                "schema",
                format!("facet `{}` schema must be a JSON Schema object", f.name),
            ));
        }
        Ok(Self {
            name: f.name,
            title: f.title,
            description: f.description,
            direction: f.direction.into(),
            schema: f.schema,
            instructions: f.instructions,
            required_by_default: f.required_by_default,
        })
    }
}

impl From<&Facet> for FacetDto {
    fn from(f: &Facet) -> Self {
        Self {
            name: f.name.clone(),
            title: f.title.clone(),
            description: f.description.clone(),
            direction: f.direction.into(),
            schema: f.schema.clone(),
            instructions: f.instructions.clone(),
            required_by_default: f.required_by_default,
        }
    }
}

impl From<KindDto> for CapabilityKind {
    fn from(k: KindDto) -> Self {
        match k {
            KindDto::Structuring => Self::Structuring,
            KindDto::Execution => Self::Execution,
            KindDto::Validation => Self::Validation,
            KindDto::Transformation => Self::Transformation,
            KindDto::Routing => Self::Routing,
        }
    }
}

impl From<CapabilityKind> for KindDto {
    fn from(k: CapabilityKind) -> Self {
        match k {
            CapabilityKind::Structuring => Self::Structuring,
            CapabilityKind::Execution => Self::Execution,
            CapabilityKind::Validation => Self::Validation,
            CapabilityKind::Transformation => Self::Transformation,
            CapabilityKind::Routing => Self::Routing,
        }
    }
}

impl From<AgentTypeDto> for AgentType {
    fn from(a: AgentTypeDto) -> Self {
        match a {
            AgentTypeDto::Ai => Self::Ai,
            AgentTypeDto::Human => Self::Human,
        }
    }
}

impl From<AgentType> for AgentTypeDto {
    fn from(a: AgentType) -> Self {
        match a {
            AgentType::Ai => Self::Ai,
            AgentType::Human => Self::Human,
        }
    }
}

impl From<CapabilityStatusDto> for CapabilityStatus {
    fn from(s: CapabilityStatusDto) -> Self {
        match s {
            CapabilityStatusDto::Active => Self::Active,
            CapabilityStatusDto::Inactive => Self::Inactive,
        }
    }
}

impl From<CapabilityStatus> for CapabilityStatusDto {
    fn from(s: CapabilityStatus) -> Self {
        match s {
            CapabilityStatus::Active => Self::Active,
            CapabilityStatus::Inactive => Self::Inactive,
        }
    }
}

impl TryFrom<ExecutorDto> for ExecutorSpec {
    type Error = ApiError;

    fn try_from(e: ExecutorDto) -> Result<Self, ApiError> {
        Ok(match e {
            ExecutorDto::Builtin { handler } => Self::Builtin { handler },
            ExecutorDto::Http {
                url,
                signing_secret_env,
            } => {
                let parsed = reqwest::Url::parse(&url).map_err(|err| {
                    ApiError::invalid_field(
                        "executor.url",
                        format!("bad webhook url `{url}`: {err}"),
                    )
                })?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(ApiError::invalid_field(
                        "executor.url",
                        format!("webhook url `{url}` must be http or https"),
                    ));
                }
                if let Some(name) = &signing_secret_env {
                    crate::executors::http::check_secret_env_name(name).map_err(|message| {
                        ApiError::invalid_field("executor.signingSecretEnv", message)
                    })?;
                }
                Self::Http {
                    url,
                    signing_secret_env,
                }
            }
            ExecutorDto::Llm {
                model,
                instructions,
            } => Self::Llm {
                model,
                instructions,
            },
            ExecutorDto::Human => Self::Human,
            ExecutorDto::Custom {
                executor_type,
                config,
            } => Self::Custom {
                executor_type,
                config,
            },
        })
    }
}

impl From<&ExecutorSpec> for ExecutorDto {
    fn from(e: &ExecutorSpec) -> Self {
        match e {
            ExecutorSpec::Builtin { handler } => Self::Builtin {
                handler: handler.clone(),
            },
            ExecutorSpec::Http {
                url,
                signing_secret_env,
            } => Self::Http {
                url: url.clone(),
                signing_secret_env: signing_secret_env.clone(),
            },
            ExecutorSpec::Llm {
                model,
                instructions,
            } => Self::Llm {
                model: model.clone(),
                instructions: instructions.clone(),
            },
            ExecutorSpec::Human => Self::Human,
            ExecutorSpec::Custom {
                executor_type,
                config,
            } => Self::Custom {
                executor_type: executor_type.clone(),
                config: config.clone(),
            },
        }
    }
}

impl TryFrom<CapabilityDto> for Capability {
    type Error = ApiError;

    fn try_from(c: CapabilityDto) -> Result<Self, ApiError> {
        check_capability_ids(&c.capability_id, &c.input_facets, &c.output_facets)?;
        if c.max_attempts == 0 {
            return Err(ApiError::invalid_field(
                "maxAttempts",
                format!(
                    "capability `{}` needs at least one attempt",
                    c.capability_id
                ),
            ));
        }
        if !c.cost.is_finite() || c.cost < 0.0 {
            return Err(ApiError::invalid_field(
                "cost",
                format!(
                    "capability `{}` cost must be a non-negative number",
                    c.capability_id
                ),
            ));
        }
        let fallback = match &c.fallback {
            Some(dto) => {
                let raw = serde_json::to_value(dto).unwrap_or(Value::Null);
                Some(
                    crate::policy::normalize_fallback(&raw, "fallback").map_err(|e| {
                        ApiError::invalid_field(
                            "fallback",
                            format!("capability `{}` {e}", c.capability_id),
                        )
                    })?,
                )
            }
            None => None,
        };
        Ok(Self {
            executor: c.executor.try_into()?,
            fallback,
            capability_id: c.capability_id,
            version: c.version,
            display_name: c.display_name,
            summary: c.summary,
            kind: c.kind.into(),
            agent_type: c.agent_type.into(),
            input_facets: c.input_facets,
            output_facets: c.output_facets,
            cost: c.cost,
            timeout_ms: c.timeout_ms,
            max_attempts: c.max_attempts,
            status: c.status.into(),
        })
    }
}

impl From<&Capability> for CapabilityDto {
    fn from(c: &Capability) -> Self {
        Self {
            capability_id: c.capability_id.clone(),
            version: c.version.clone(),
            display_name: c.display_name.clone(),
            summary: c.summary.clone(),
            kind: c.kind.into(),
            agent_type: c.agent_type.into(),
            input_facets: c.input_facets.clone(),
            output_facets: c.output_facets.clone(),
            cost: c.cost,
            timeout_ms: c.timeout_ms,
            max_attempts: c.max_attempts,
            fallback: c.fallback.as_ref().map(|f| policies::FallbackDto {
                retry: f.retry.as_ref().map(|r| policies::RetryDto {
                    max_attempts: r.max_attempts,
                    backoff_ms: Some(r.backoff_ms),
                    multiplier: Some(r.multiplier),
                    max_backoff_ms: r.max_backoff_ms,
                }),
                then: f.then.map(|t| match t {
                    crate::catalog::Then::Hitl => policies::ThenDto::Hitl,
                    crate::catalog::Then::Fail => policies::ThenDto::Fail,
                }),
            }),
            executor: (&c.executor).into(),
            status: c.status.into(),
        }
    }
}

impl From<DecisionDto> for HitlDecision {
    fn from(d: DecisionDto) -> Self {
        match d {
            DecisionDto::Approve => Self::Approve,
            DecisionDto::Reject => Self::Reject,
            DecisionDto::Option => Self::Option,
            DecisionDto::Freeform => Self::Freeform,
        }
    }
}

impl From<HitlAnswerRequest> for HitlAnswer {
    fn from(a: HitlAnswerRequest) -> Self {
        Self {
            decision: a.decision.into(),
            option_id: a.option_id,
            text: a.text,
            responder: a.responder.map(|r| r.id),
        }
    }
}

impl From<RunStatus> for RunStatusDto {
    fn from(s: RunStatus) -> Self {
        match s {
            RunStatus::Active => Self::Active,
            RunStatus::Completed => Self::Completed,
            RunStatus::Failed => Self::Failed,
            RunStatus::Cancelled => Self::Cancelled,
        }
    }
}

impl From<RunStatusDto> for RunStatus {
    fn from(s: RunStatusDto) -> Self {
        match s {
            RunStatusDto::Active => Self::Active,
            RunStatusDto::Completed => Self::Completed,
            RunStatusDto::Failed => Self::Failed,
            RunStatusDto::Cancelled => Self::Cancelled,
        }
    }
}

impl RunSummary {
    /// The listing view of a run head.
    pub fn new(run_id: RunId, head: &RunHead) -> Self {
        Self {
            run_id,
            status: head.status.into(),
            state: head.state.as_str().to_owned(),
            objective: head.objective.clone(),
            plan_version: head.plan_version,
            last_seq: head.last_seq,
            created_at: head.created_at,
            updated_at: head.updated_at,
        }
    }
}

impl RunAck {
    /// The acknowledgement of a steering request, from the head read after it.
    pub fn new(run_id: RunId, head: &RunHead) -> Self {
        Self {
            run_id,
            status: head.status.into(),
            state: head.state.as_str().to_owned(),
        }
    }
}

impl From<&RunError> for RunErrorDto {
    fn from(e: &RunError) -> Self {
        Self {
            code: e.code.clone(),
            message: e.message.clone(),
        }
    }
}

impl NodeView {
    /// A node of the current plan with the status of its latest attempt (`records` holds
    /// the run's attempt records sorted by node id then attempt).
    pub fn new(node: &PlanNode, records: &[NodeRecord]) -> Self {
        let mine: Vec<&NodeRecord> = records.iter().filter(|r| r.node_id == node.id).collect();
        let last = mine.last();
        let status = match last.map(|r| r.status) {
            None => NodeStatusDto::Pending,
            Some(NodeStatus::Running) => NodeStatusDto::Running,
            Some(NodeStatus::Completed) => NodeStatusDto::Completed,
            Some(NodeStatus::Failed) => NodeStatusDto::Failed,
        };
        Self {
            node_id: node.id.clone(),
            capability_id: node.capability_id.clone(),
            stage: node.stage.clone(),
            status,
            attempts: last.map_or(0, |r| r.attempt),
            started_at: mine.first().map(|r| r.started_at),
            ended_at: last.and_then(|r| r.finished_at),
            output: last.and_then(|r| r.output.clone()),
            error: last.and_then(|r| r.error.clone()),
        }
    }
}

impl From<&HitlRecord> for HitlView {
    fn from(r: &HitlRecord) -> Self {
        Self {
            request_id: r.request_id.clone(),
            status: match r.status {
                HitlStatus::Pending => HitlStatusDto::Pending,
                HitlStatus::Resolved => HitlStatusDto::Resolved,
            },
            request: r.request.clone(),
            response: r.response.clone(),
        }
    }
}

impl From<&PlanEdge> for PlanEdgeDto {
    fn from(e: &PlanEdge) -> Self {
        Self {
            from: e.from.clone(),
            to: e.to.clone(),
        }
    }
}

impl From<&PlanNode> for PlanNodeDto {
    fn from(n: &PlanNode) -> Self {
        Self {
            id: n.id.clone(),
            stage: n.stage.clone(),
            capability_id: n.capability_id.clone(),
            kind: n.kind.into(),
            input_facets: n.input_facets.clone(),
            output_facets: n.output_facets.clone(),
            instructions: n.instructions.clone(),
            rationale: n.rationale.clone(),
        }
    }
}

impl From<&PlanSnapshot> for PlanView {
    fn from(p: &PlanSnapshot) -> Self {
        Self {
            version: p.version,
            nodes: p.nodes.iter().map(Into::into).collect(),
            edges: p.edges.iter().map(Into::into).collect(),
            system_instructions: p.system_instructions.clone(),
            rationale: p.rationale.clone(),
        }
    }
}

impl From<&PlanDiff> for PlanDiffView {
    fn from(d: &PlanDiff) -> Self {
        Self {
            from_version: d.from_version,
            to_version: d.to_version,
            added_nodes: d.added_nodes.clone(),
            removed_nodes: d.removed_nodes.clone(),
            changed_nodes: d.changed_nodes.clone(),
            added_edges: d.added_edges.iter().map(Into::into).collect(),
            removed_edges: d.removed_edges.iter().map(Into::into).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_design_capability_example_converts() {
        let dto: CapabilityDto = serde_json::from_value(json!({
            "capabilityId":"writer.en","version":"1.0.0","displayName":"Writer","summary":"…",
            "kind":"execution","agentType":"ai","inputFacets":["writerBrief"],"outputFacets":["copyVariants"],
            "timeoutMs":30000,"maxAttempts":2,
            "executor":{"type":"http","url":"http://127.0.0.1:9000/exec"}}))
        .unwrap();
        let cap = Capability::try_from(dto.clone()).unwrap();
        assert_eq!(
            cap.executor,
            ExecutorSpec::Http {
                url: "http://127.0.0.1:9000/exec".into(),
                signing_secret_env: None,
            }
        );
        assert_eq!((cap.max_attempts, cap.timeout_ms), (2, 30_000));
        assert_eq!(CapabilityDto::from(&cap), dto, "round trip");
    }

    #[test]
    fn a_capability_fallback_is_normalized_and_its_bounds_are_checked() {
        let with = |fallback: Value| -> Result<Capability, ApiError> {
            let dto: CapabilityDto = serde_json::from_value(json!({
                "capabilityId": "writer.hook", "kind": "execution",
                "executor": {"type": "http", "url": "http://127.0.0.1:9/exec"},
                "fallback": fallback}))
            .unwrap();
            Capability::try_from(dto)
        };
        let cap = with(json!({"retry": {"backoffMs": 100}, "then": "hitl"})).unwrap();
        let fallback = cap.fallback.clone().unwrap();
        let retry = fallback.retry.unwrap();
        assert_eq!(
            (retry.max_attempts, retry.backoff_ms, retry.multiplier),
            (None, 100, crate::catalog::DEFAULT_BACKOFF_MULTIPLIER)
        );
        assert_eq!(fallback.then, Some(crate::catalog::Then::Hitl));
        let back = serde_json::to_value(CapabilityDto::from(&cap)).unwrap();
        assert_eq!(
            back["fallback"],
            json!({"retry": {"backoffMs": 100, "multiplier": 2.0}, "then": "hitl"})
        );
        let err = with(json!({"retry": {"multiplier": 0.5}})).unwrap_err();
        assert!(
            err.message.contains("fallback.retry.multiplier"),
            "{}",
            err.message
        );
        assert!(with(json!({"retry": {"maxAttempts": 0}})).is_err());
        assert!(
            serde_json::from_value::<CapabilityDto>(json!({
            "capabilityId": "x", "kind": "execution", "executor": {"type": "human"},
            "fallback": {"then": "pray"}}))
            .is_err()
        );
    }

    #[test]
    fn a_custom_executor_type_round_trips_through_the_api() {
        let wire = json!({"type": "grpc", "target": "x"});
        let dto: ExecutorDto = serde_json::from_value(wire.clone()).unwrap();
        let spec = ExecutorSpec::try_from(dto.clone()).unwrap();
        assert_eq!(spec.executor_type(), "grpc");
        assert_eq!(ExecutorDto::from(&spec), dto);
        assert_eq!(serde_json::to_value(&dto).unwrap(), wire);
        let known = json!({"type": "builtin", "handler": "noop", "extra": 1});
        let err = serde_json::from_value::<ExecutorDto>(known).unwrap_err();
        assert!(err.to_string().contains("unknown field `extra`"), "{err}");
    }

    #[test]
    fn a_webhook_url_must_be_http() {
        for url in ["ftp://x/y", "not a url"] {
            let dto = ExecutorDto::Http {
                url: url.into(),
                signing_secret_env: None,
            };
            let err = ExecutorSpec::try_from(dto).unwrap_err();
            assert_eq!(err.details, Some(json!({"field": "executor.url"})), "{url}");
        }
    }

    #[test]
    fn a_signing_secret_env_is_a_variable_name_never_a_secret() {
        let wire = json!({"type": "http", "url": "http://127.0.0.1:9/x", "signingSecretEnv": "HOOK_SECRET"});
        let dto: ExecutorDto = serde_json::from_value(wire.clone()).unwrap();
        let spec = ExecutorSpec::try_from(dto.clone()).unwrap();
        assert_eq!(
            spec,
            ExecutorSpec::Http {
                url: "http://127.0.0.1:9/x".into(),
                signing_secret_env: Some("HOOK_SECRET".into()),
            }
        );
        assert_eq!(
            serde_json::to_value(ExecutorDto::from(&spec)).unwrap(),
            wire
        );
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        for name in ["", "1ABC", "A B", "A=B", secret] {
            let dto = ExecutorDto::Http {
                url: "http://127.0.0.1:9/x".into(),
                signing_secret_env: Some(name.into()),
            };
            let err = ExecutorSpec::try_from(dto).unwrap_err();
            assert_eq!(
                err.details,
                Some(json!({"field": "executor.signingSecretEnv"})),
                "{name}"
            );
            assert!(!err.message.contains(&secret[6..]), "{}", err.message);
        }
    }

    #[test]
    fn the_design_envelope_example_converts_to_the_domain_envelope() {
        let value = json!({"objective":"…","inputs":{"objectiveBrief":"…"},
            "outputContract":{"mode":"facets","facets":["copyVariants"]},
            "policies":{"planner":{"maxAttempts":3,"maxReplans":3,"maxNodes":20},
              "runtime":[{"id":"qa-gate","trigger":{"kind":"onNodeComplete","selector":{"capabilityId":"writer.en"}},
                          "action":{"type":"replan","rationale":"add a QA pass"}}]},
            "specialInstructions":[],"metadata":{"correlationId":"…"}});
        let dto: RunRequest = serde_json::from_value(value.clone()).unwrap();
        let via_dto = RunEnvelope::from(dto);
        let direct: RunEnvelope = serde_json::from_value(value).unwrap();
        assert_eq!(via_dto, direct);
    }

    #[test]
    fn node_status_comes_from_the_latest_attempt() {
        let node = PlanNode {
            id: "w".into(),
            stage: "s".into(),
            capability_id: "writer.en".into(),
            kind: CapabilityKind::Execution,
            input_facets: vec![],
            output_facets: vec![],
            instructions: vec![],
            rationale: String::new(),
        };
        let rec = |attempt, status| NodeRecord {
            node_id: "w".into(),
            attempt,
            status,
            started_at: Timestamp(1),
            finished_at: None,
            output: None,
            error: None,
        };
        assert_eq!(NodeView::new(&node, &[]).status, NodeStatusDto::Pending);
        let view = NodeView::new(
            &node,
            &[rec(1, NodeStatus::Failed), rec(2, NodeStatus::Running)],
        );
        assert_eq!((view.status, view.attempts), (NodeStatusDto::Running, 2));
    }
}
