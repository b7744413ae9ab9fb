//! The typed wire form of a run envelope's `policies` (docs/POLICIES.md), one OpenAPI
//! component per policy, trigger and action variant.
//!
//! These types describe the canonical camelCase form that the policy normalizer
//! ([`crate::policy::normalize`]) reads and writes back: field names, required fields,
//! defaults, enums and bounds are the normalizer's. The server keeps the envelope's policies
//! as raw JSON and normalizes them itself, so the legacy spellings the normalizer also
//! accepts (snake_case keys, trigger kind aliases) stay accepted on the wire without being
//! part of this schema. A client may build its policies with these types and serialize them
//! into [`RunRequest::policies`](super::RunRequest::policies).
//!
//! Triggers and actions are unions of named components, told apart by a discriminator
//! (`kind` for triggers, `type` for actions) that each variant carries as a one-value enum,
//! so code generators produce one model per variant.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa::openapi::Deprecated;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};

use super::KindDto;

/// A string with at least one non-whitespace character (the normalizer trims before it
/// checks emptiness).
fn text(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .pattern(Some(r"\S"))
        .description(Some(description))
}

/// An optional [`text`]: `null` counts as absent, as for every optional field.
fn optional_text(description: &str) -> ObjectBuilder {
    text(description).schema_type(SchemaType::Array(vec![Type::String, Type::Null]))
}

/// A list of non-empty strings; duplicates are allowed and dropped by the normalizer.
fn text_list(description: &str) -> ArrayBuilder {
    ArrayBuilder::new()
        .items(text("not empty"))
        .description(Some(description))
}

fn capability_ids() -> ArrayBuilder {
    text_list("Capability ids; duplicates are ignored.")
}

fn deprecated_capability_ids() -> ArrayBuilder {
    text_list(
        "Capability ids; each becomes an `onNodeComplete` policy on that capability, after the \
         `runtime` policies. Deprecated: write the runtime policy.",
    )
    .deprecated(Some(Deprecated::True))
}

fn policy_id() -> ObjectBuilder {
    text("Unique among the run's policies; named by events, HITL request ids and signals.")
}

fn node_id() -> ObjectBuilder {
    optional_text("The node id.")
}

fn capability_id() -> ObjectBuilder {
    optional_text("The node's capability.")
}

fn stage() -> ObjectBuilder {
    optional_text("The node's stage label.")
}

fn metric() -> ObjectBuilder {
    text("The name of a numeric top-level field of a node's output.")
}

fn signal_name() -> ObjectBuilder {
    optional_text("Only signals with this name; every signal when absent.")
}

fn question() -> ObjectBuilder {
    text("What the human is asked.")
}

fn options() -> ArrayBuilder {
    ArrayBuilder::new()
        .items(text("not empty"))
        .unique_items(true)
        .description(Some(
            "Options offered to the human (answered with `decision: option`); distinct.",
        ))
}

/// The JSON-Logic rule of a condition: any JSON value.
fn condition() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::AnyValue)
        .description(Some(
            "A JSON-Logic rule over `{inputs, facets, output, node}`, compiled when the run is \
             submitted (an unknown operator is refused); it holds when its result is truthy. \
             Absent: always holds.",
        ))
}

/// Defines a one-value string enum: the discriminator value of one union variant.
macro_rules! tag {
    ($(#[$doc:meta])* $name:ident :: $variant:ident = $value:tt) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
        pub enum $name {
            /// The one value.
            #[default]
            #[serde(rename = $value)]
            $variant,
        }

        impl $name {
            /// The discriminator property: a string that must be this one value.
            fn property() -> ObjectBuilder {
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some([$value]))
            }
        }
    };
}

tag!(
    /// `onStart`.
    OnStartKind::OnStart = "onStart"
);
tag!(
    /// `onNodeComplete`.
    OnNodeCompleteKind::OnNodeComplete = "onNodeComplete"
);
tag!(
    /// `onValidationFail`.
    OnValidationFailKind::OnValidationFail = "onValidationFail"
);
tag!(
    /// `onTimeout`.
    OnTimeoutKind::OnTimeout = "onTimeout"
);
tag!(
    /// `onMetricBelow`.
    OnMetricBelowKind::OnMetricBelow = "onMetricBelow"
);
tag!(
    /// `onBudget`.
    OnBudgetKind::OnBudget = "onBudget"
);
tag!(
    /// `manual`.
    ManualKind::Manual = "manual"
);
tag!(
    /// `replan`.
    ReplanType::Replan = "replan"
);
tag!(
    /// `hitl`.
    HitlType::Hitl = "hitl"
);
tag!(
    /// `pause`.
    PauseType::Pause = "pause"
);
tag!(
    /// `fail`.
    FailType::Fail = "fail"
);

/// A run envelope's policies: limits that shape planning and runtime policies that act
/// during the run. `null` or `{}` gives the defaults; unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoliciesDto {
    /// Limits and requirements that shape planning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planner: Option<PlannerPolicyDto>,
    /// Runtime policies, evaluated in declaration order; ids are unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtime: Vec<RuntimePolicyDto>,
    /// Limits on what the run spends. A limited resource that no `onBudget` policy watches
    /// pauses the run when it is spent (policy `budget-<resource>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budgets: Option<BudgetsDto>,
    /// Deprecated location of `planner.maxAttempts` (giving both is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(deprecated, minimum = 1, maximum = 4294967295u32, format = Int64)]
    pub max_attempts: Option<u32>,
    /// Deprecated location of `planner.maxReplans` (giving both is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(deprecated, minimum = 0, maximum = 4294967295u32, format = Int64)]
    pub max_replans: Option<u32>,
    /// Deprecated location of `planner.maxNodes` (giving both is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(deprecated, minimum = 1, maximum = 4294967295u32, format = Int64)]
    pub max_nodes: Option<u32>,
    /// Deprecated location of `planner.maxConcurrency` (giving both is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(deprecated, minimum = 1, maximum = 4294967295u32, format = Int64)]
    pub max_concurrency: Option<u32>,
    /// Deprecated: one `replan` policy per capability id (id `replan-after-<capabilityId>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(schema_with = deprecated_capability_ids)]
    pub replan_after: Vec<String>,
    /// Deprecated: one `hitl` approval policy per capability id (id `hitl-after-<capabilityId>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(schema_with = deprecated_capability_ids)]
    pub hitl_after: Vec<String>,
    /// The run's default fallback ladder for failing nodes; a capability's own `fallback`
    /// fields win over it (docs/POLICIES.md, "Fallback ladder").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackDto>,
}

/// What happens to a node whose attempt fails: retry with backoff, then ask a human or fail
/// the run. Omitted fields take the default: the capability's `maxAttempts`, no backoff,
/// then `fail`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FallbackDto {
    /// How failed attempts are retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryDto>,
    /// What follows the last failed attempt of a round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then: Option<ThenDto>,
}

/// Retries of a failed node attempt: the attempt after failed attempt `n` of a round waits
/// `backoffMs * multiplier^(n-1)` milliseconds, at most `maxBackoffMs`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryDto {
    /// Attempts per round, the first one included; absent: the capability's `maxAttempts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 4294967295u32, format = Int64)]
    pub max_attempts: Option<u32>,
    /// Delay before the first retry, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(default = 0, minimum = 0, maximum = 4294967295u32, format = Int64)]
    pub backoff_ms: Option<u64>,
    /// Growth of the delay per further retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(default = 2.0, minimum = 1, maximum = 100)]
    pub multiplier: Option<f64>,
    /// Upper bound of the delay, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 4294967295u32, format = Int64)]
    pub max_backoff_ms: Option<u64>,
}

/// What follows a node's last failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ThenDto {
    /// Ask a human: retry, skip with a supplied output, replan, or fail.
    Hitl,
    /// Fail the run (`NODE_FAILED`).
    Fail,
}

/// Limits and requirements that shape planning; a plan that breaks them is rejected with
/// a `POLICY_*` diagnostic and sent back to the planner.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlannerPolicyDto {
    /// Planner attempts per phase (the initial plan, each replan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(default = 3, minimum = 1, maximum = 4294967295u32, format = Int64)]
    pub max_attempts: Option<u32>,
    /// Replans per run; a replan asked beyond it fails the run (`REPLANS_EXHAUSTED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(default = 3, minimum = 0, maximum = 4294967295u32, format = Int64)]
    pub max_replans: Option<u32>,
    /// Node budget of a plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(default = 50, minimum = 1, maximum = 4294967295u32, format = Int64)]
    pub max_nodes: Option<u32>,
    /// Nodes dispatched at the same time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(default = 4, minimum = 1, maximum = 4294967295u32, format = Int64)]
    pub max_concurrency: Option<u32>,
    /// Capabilities a plan must not use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(schema_with = capability_ids)]
    pub forbidden_capabilities: Vec<String>,
    /// Capability kinds a plan must not use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forbidden_kinds: Vec<KindDto>,
    /// Capabilities a plan must use; none may also be forbidden.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(schema_with = capability_ids)]
    pub required_capabilities: Vec<String>,
    /// Capability kinds a plan must use; none may also be forbidden.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_kinds: Vec<KindDto>,
}

/// A runtime policy: when `trigger` happens, perform `action`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimePolicyDto {
    /// Unique among the run's policies.
    #[schema(schema_with = policy_id)]
    pub id: String,
    /// A disabled policy never fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(default = true)]
    pub enabled: Option<bool>,
    /// How many times the policy may fire over the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(default = 1, minimum = 1, maximum = 100)]
    pub max_fires: Option<u32>,
    /// When it fires.
    pub trigger: PolicyTriggerDto,
    /// What it does.
    pub action: PolicyActionDto,
}

/// Which nodes a trigger concerns: every field given must match; `{}` matches every node.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSelectorDto {
    /// The node id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = node_id)]
    pub node_id: Option<String>,
    /// The node's capability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = capability_id)]
    pub capability_id: Option<String>,
    /// The node's stage label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = stage)]
    pub stage: Option<String>,
    /// The node's kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<KindDto>,
}

/// When a runtime policy fires, told apart by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
#[schema(discriminator(property_name = "kind", mapping(
    ("onStart" = "#/components/schemas/OnStartTrigger"),
    ("onNodeComplete" = "#/components/schemas/OnNodeCompleteTrigger"),
    ("onValidationFail" = "#/components/schemas/OnValidationFailTrigger"),
    ("onTimeout" = "#/components/schemas/OnTimeoutTrigger"),
    ("onMetricBelow" = "#/components/schemas/OnMetricBelowTrigger"),
    ("onBudget" = "#/components/schemas/OnBudgetTrigger"),
    ("manual" = "#/components/schemas/ManualTrigger"),
)))]
pub enum PolicyTriggerDto {
    /// `onStart`.
    OnStart(OnStartTrigger),
    /// `onNodeComplete`.
    OnNodeComplete(OnNodeCompleteTrigger),
    /// `onValidationFail`.
    OnValidationFail(OnValidationFailTrigger),
    /// `onTimeout`.
    OnTimeout(OnTimeoutTrigger),
    /// `onMetricBelow`.
    OnMetricBelow(OnMetricBelowTrigger),
    /// `onBudget`.
    OnBudget(OnBudgetTrigger),
    /// `manual`.
    Manual(ManualTrigger),
}

/// Fires once, when the run first executes (its first plan was accepted), if the condition
/// holds; `output` and `node` are `null` in the condition's data.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OnStartTrigger {
    /// `onStart`.
    #[schema(schema_with = OnStartKind::property)]
    pub kind: OnStartKind,
    /// Fires only when this holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = condition)]
    pub condition: Option<Value>,
}

/// Fires when a node matching the selector completes with valid output and the condition
/// holds.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OnNodeCompleteTrigger {
    /// `onNodeComplete`.
    #[schema(schema_with = OnNodeCompleteKind::property)]
    pub kind: OnNodeCompleteKind,
    /// Which nodes; every node when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<NodeSelectorDto>,
    /// Fires only when this holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = condition)]
    pub condition: Option<Value>,
}

/// Fires when the output of a node matching the selector breaks its contract (each
/// `validation_error`, retried or not).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OnValidationFailTrigger {
    /// `onValidationFail`.
    #[schema(schema_with = OnValidationFailKind::property)]
    pub kind: OnValidationFailKind,
    /// Which nodes; every node when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<NodeSelectorDto>,
}

/// Fires when the run's execution time reaches `ms`: the clock starts when the first plan
/// is accepted and does not run while the run is Paused; it is checked while Executing.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OnTimeoutTrigger {
    /// `onTimeout`.
    #[schema(schema_with = OnTimeoutKind::property)]
    pub kind: OnTimeoutKind,
    /// Execution time in milliseconds.
    #[schema(minimum = 1)]
    pub ms: u64,
}

/// Fires when a completed node's output has a numeric top-level field named `metric`
/// whose value is strictly below `threshold`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OnMetricBelowTrigger {
    /// `onMetricBelow`.
    #[schema(schema_with = OnMetricBelowKind::property)]
    pub kind: OnMetricBelowKind,
    /// The output field.
    #[schema(schema_with = metric)]
    pub metric: String,
    /// Fires when the value is `< threshold`.
    pub threshold: f64,
}

/// Limits on what a run spends, by resource; each is greater than 0.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BudgetsDto {
    /// Prompt + completion tokens of planner calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0)]
    pub planner_tokens: Option<f64>,
    /// Tokens executors report for node attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0)]
    pub node_tokens: Option<f64>,
    /// Capability `cost` of node attempts plus model tokens priced by the server's table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0)]
    pub cost: Option<f64>,
    /// Milliseconds spent executing (the clock of `onTimeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0)]
    pub wall_time_ms: Option<f64>,
    /// Node attempts dispatched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0)]
    pub nodes: Option<f64>,
}

/// A budgeted resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum BudgetResourceDto {
    /// Prompt + completion tokens of planner calls.
    PlannerTokens,
    /// Tokens executors report for node attempts.
    NodeTokens,
    /// Capability cost plus priced tokens.
    Cost,
    /// Milliseconds spent executing.
    WallTimeMs,
    /// Node attempts dispatched.
    Nodes,
}

/// Where an `onBudget` trigger fires: a fraction of the resource's budget, or an amount.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ThresholdDto {
    /// A fraction of the budget.
    Fraction(FractionThreshold),
    /// An absolute amount.
    Absolute(AbsoluteThreshold),
}

/// A fraction of the resource's budget (`1` is all of it); the budget must be set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FractionThreshold {
    /// Greater than 0.
    #[schema(exclusive_minimum = 0)]
    pub fraction: f64,
}

/// An absolute amount of the resource.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AbsoluteThreshold {
    /// At least 0.
    #[schema(minimum = 0)]
    pub absolute: f64,
}

/// Fires when the run's spend of `resource` reaches `threshold` (default: the whole budget),
/// checked whenever spend changes; at most `maxFires` times, re-armed when an operator
/// raises that budget on resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OnBudgetTrigger {
    /// `onBudget`.
    #[schema(schema_with = OnBudgetKind::property)]
    pub kind: OnBudgetKind,
    /// The resource measured.
    pub resource: BudgetResourceDto,
    /// Where it fires; `{"fraction": 1}` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<ThresholdDto>,
}

/// Fires on an external signal (`POST /v1/runs/{id}/signals`) with a matching name, or
/// whose `payload.policyId` is this policy's id.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManualTrigger {
    /// `manual`.
    #[schema(schema_with = ManualKind::property)]
    pub kind: ManualKind,
    /// The signal name to match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = signal_name)]
    pub signal: Option<String>,
}

/// What a runtime policy does when it fires, told apart by `type`. The contract's `goto`
/// and `emit` are refused: this engine does not execute them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
#[schema(discriminator(property_name = "type", mapping(
    ("replan" = "#/components/schemas/ReplanAction"),
    ("hitl" = "#/components/schemas/HitlAction"),
    ("pause" = "#/components/schemas/PauseAction"),
    ("fail" = "#/components/schemas/FailAction"),
)))]
pub enum PolicyActionDto {
    /// `replan`.
    Replan(ReplanAction),
    /// `hitl`.
    Hitl(HitlAction),
    /// `pause`.
    Pause(PauseAction),
    /// `fail`.
    Fail(FailAction),
}

/// Stop dispatching, let in-flight nodes finish, then ask the planner for a delta
/// (`policy_triggered`, then `plan_requested` with phase `replan`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplanAction {
    /// `replan`.
    #[serde(rename = "type")]
    #[schema(schema_with = ReplanType::property)]
    pub action_type: ReplanType,
    /// Handed to the planner as the trigger's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rationale: Option<String>,
}

/// Pause the run and ask a human (`hitl_request`); the answer decides what follows.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HitlAction {
    /// `hitl`.
    #[serde(rename = "type")]
    #[schema(schema_with = HitlType::property)]
    pub action_type: HitlType,
    /// What the human is asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(default = "approval")]
    pub kind: Option<HitlKindDto>,
    /// What the human is asked.
    #[schema(schema_with = question)]
    pub question: String,
    /// Options offered to the human.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(schema_with = options)]
    pub options: Vec<String>,
    /// What an approval (or an option or free-form answer) leads to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(default = "continue")]
    pub on_approve: Option<FollowUpDto>,
    /// What a rejection leads to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(default = "fail")]
    pub on_reject: Option<FollowUpDto>,
}

/// Pause the run until an operator resumes it (`policy_triggered`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PauseAction {
    /// `pause`.
    #[serde(rename = "type")]
    #[schema(schema_with = PauseType::property)]
    pub action_type: PauseType,
    /// Why; the trigger's reason on the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// End the run as failed (`complete` with error `POLICY_FAILED`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailAction {
    /// `fail`.
    #[serde(rename = "type")]
    #[schema(schema_with = FailType::property)]
    pub action_type: FailType,
    /// Why; part of the error message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a HITL request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HitlKindDto {
    /// Approve or reject.
    Approval,
    /// Answer a question.
    Clarify,
}

/// What the run does after a HITL answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FollowUpDto {
    /// Continue dispatching.
    Continue,
    /// Stop dispatching and ask the planner for a delta.
    Replan,
    /// End the run as failed (`HITL_REJECTED`).
    Fail,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use serde_json::{Map, Value, json};
    use utoipa::OpenApi;

    use super::PoliciesDto;
    use crate::api::ApiDoc;
    use crate::policy::{PolicyError, normalize};

    /// The document's components, and a validator for the run envelope (`RunRequest`) that
    /// resolves `#/components/schemas/...` inside them.
    struct Schemas {
        doc: Value,
        envelope: jsonschema::Validator,
    }

    impl Schemas {
        fn new() -> Self {
            let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
            let root = json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "$ref": "#/components/schemas/RunRequest",
                "components": doc["components"].clone(),
            });
            let envelope = jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("{e}"));
            Self { doc, envelope }
        }

        fn component(&self, name: &str) -> &Value {
            let schema = &self.doc["components"]["schemas"][name];
            assert!(schema.is_object(), "no component {name}");
            schema
        }

        /// `schema` with `$ref`s followed.
        fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
            match schema["$ref"].as_str() {
                Some(r) => {
                    let name = r.strip_prefix("#/components/schemas/").unwrap();
                    self.resolve(self.component(name))
                }
                None => schema,
            }
        }

        /// `schema` without a `null` alternative (the form utoipa gives optional fields).
        fn non_null<'a>(&'a self, schema: &'a Value) -> &'a Value {
            let schema = self.resolve(schema);
            match schema["oneOf"].as_array() {
                Some(alts) if alts.iter().any(|a| a["type"] == "null") => {
                    let rest: Vec<&Value> = alts.iter().filter(|a| a["type"] != "null").collect();
                    assert_eq!(rest.len(), 1, "{schema}");
                    self.resolve(rest[0])
                }
                _ => schema,
            }
        }

        /// The non-null JSON type a schema names (`None` for any value or a union).
        fn kind_of(schema: &Value) -> Option<&str> {
            match &schema["type"] {
                Value::String(t) => Some(t.as_str()),
                Value::Array(types) => types
                    .iter()
                    .filter_map(Value::as_str)
                    .find(|t| *t != "null"),
                _ => None,
            }
        }

        fn nullable(&self, schema: &Value) -> bool {
            let resolved = self.resolve(schema);
            match &resolved["type"] {
                Value::Array(types) => types.iter().any(|t| t == "null"),
                _ => resolved["oneOf"]
                    .as_array()
                    .is_some_and(|alts| alts.iter().any(|a| a["type"] == "null")),
            }
        }

        /// The smallest value `schema` accepts: required properties only, enums' first value,
        /// numbers at their minimum.
        fn sample(&self, schema: &Value) -> Value {
            let schema = self.non_null(schema);
            if let Some(alts) = schema["oneOf"].as_array() {
                return self.sample(&alts[0]);
            }
            if let Some(values) = schema["enum"].as_array() {
                return values[0].clone();
            }
            match Self::kind_of(schema) {
                Some("object") => {
                    let mut out = Map::new();
                    for name in schema["required"].as_array().into_iter().flatten() {
                        let name = name.as_str().unwrap();
                        out.insert(name.to_owned(), self.sample(&schema["properties"][name]));
                    }
                    Value::Object(out)
                }
                Some("string") => json!("x"),
                Some("integer") => json!(schema["minimum"].as_u64().unwrap_or(1).max(1)),
                Some("number") => json!(schema["minimum"].as_f64().map_or(0.5, |m| m + 0.5)),
                Some("boolean") => json!(false),
                Some("array") => json!([]),
                _ => json!(true),
            }
        }

        /// A value of the wrong JSON type for `schema` (`None` when any value is allowed).
        fn wrong_type(&self, schema: &Value) -> Option<Value> {
            let schema = self.non_null(schema);
            if schema["enum"].is_array() {
                return Some(json!("zz-no-such-value"));
            }
            if schema["oneOf"].is_array() {
                return Some(json!("x"));
            }
            match Self::kind_of(schema)? {
                "string" => Some(json!(7)),
                "integer" | "number" => Some(json!("7")),
                "boolean" => Some(json!("yes")),
                "array" | "object" => Some(json!("x")),
                _ => None,
            }
        }

        fn accepts(&self, policies: &Value) -> bool {
            let envelope = json!({
                "objective": "o",
                "outputContract": {"mode": "facets", "facets": ["copyVariants"]},
                "policies": policies,
            });
            self.envelope.is_valid(&envelope)
        }
    }

    /// Where a component sits in a policy document.
    #[derive(Debug, Clone, Copy)]
    enum Slot {
        Root,
        Planner,
        Runtime,
        Selector,
        Trigger,
        Action,
        Fallback,
        Retry,
    }

    impl Slot {
        fn embed(self, value: Value) -> Value {
            let policy = |trigger: Value, action: Value| json!({"runtime": [{"id": "p", "trigger": trigger, "action": action}]});
            match self {
                Self::Root => value,
                Self::Planner => json!({ "planner": value }),
                Self::Runtime => json!({ "runtime": [value] }),
                Self::Selector => policy(
                    json!({"kind": "onNodeComplete", "selector": value}),
                    json!({"type": "pause"}),
                ),
                Self::Trigger => policy(value, json!({"type": "pause"})),
                Self::Action => policy(json!({"kind": "manual"}), value),
                Self::Fallback => json!({ "fallback": value }),
                Self::Retry => json!({ "fallback": {"retry": value} }),
            }
        }

        /// The normalized (canonical) value at this slot.
        fn normalized(self, document: &Value) -> Value {
            let n = serde_json::to_value(normalize(document).unwrap()).unwrap();
            match self {
                Self::Root => n,
                Self::Planner => n["planner"].clone(),
                Self::Runtime => n["runtime"][0].clone(),
                Self::Selector => n["runtime"][0]["trigger"]["selector"].clone(),
                Self::Trigger => n["runtime"][0]["trigger"].clone(),
                Self::Action => n["runtime"][0]["action"].clone(),
                Self::Fallback => n["fallback"].clone(),
                Self::Retry => n["fallback"]["retry"].clone(),
            }
        }
    }

    fn union_variants(schemas: &Schemas, union: &str) -> Vec<(String, String)> {
        let mapping = schemas.component(union)["discriminator"]["mapping"]
            .as_object()
            .unwrap_or_else(|| panic!("{union} has no discriminator mapping"));
        mapping
            .iter()
            .map(|(value, target)| {
                let name = target.as_str().unwrap();
                let name = name.strip_prefix("#/components/schemas/").unwrap();
                (value.clone(), name.to_owned())
            })
            .collect()
    }

    fn every_component(schemas: &Schemas) -> Vec<(String, Slot)> {
        let mut out = vec![
            ("PoliciesDto".to_owned(), Slot::Root),
            ("PlannerPolicyDto".to_owned(), Slot::Planner),
            ("RuntimePolicyDto".to_owned(), Slot::Runtime),
            ("NodeSelectorDto".to_owned(), Slot::Selector),
            ("FallbackDto".to_owned(), Slot::Fallback),
            ("RetryDto".to_owned(), Slot::Retry),
        ];
        for (_, name) in union_variants(schemas, "PolicyTriggerDto") {
            out.push((name, Slot::Trigger));
        }
        for (_, name) in union_variants(schemas, "PolicyActionDto") {
            out.push((name, Slot::Action));
        }
        out
    }

    /// The accepted spellings the normalizer lists when it refuses `document`'s unknown
    /// variant.
    fn accepted(document: Value) -> Vec<&'static str> {
        match normalize(&document) {
            Err(PolicyError::UnknownVariant { expected, .. }) => expected,
            other => panic!("expected an unknown-variant error, got {other:?}"),
        }
    }

    fn verdicts(schemas: &Schemas, document: &Value) -> (bool, bool) {
        (schemas.accepts(document), normalize(document).is_ok())
    }

    #[track_caller]
    fn assert_agree(schemas: &Schemas, document: &Value, expected: bool) {
        let (schema, normalizer) = verdicts(schemas, document);
        assert_eq!(
            (schema, normalizer),
            (expected, expected),
            "schema, normalizer on {document}: {:?}",
            normalize(document).err().map(|e| e.to_string())
        );
    }

    fn examples() -> Vec<(String, Value)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "json"))
            .map(|path| {
                let text = std::fs::read_to_string(&path).unwrap();
                let value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                (path.display().to_string(), value)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        assert!(out.len() >= 5, "{out:?}");
        out
    }

    /// The envelopes written out in docs/POLICIES.md.
    fn documented_envelopes() -> Vec<Value> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/POLICIES.md");
        let text = std::fs::read_to_string(path).unwrap();
        let mut out = Vec::new();
        let mut block: Option<String> = None;
        for line in text.lines() {
            match (&mut block, line.trim_end()) {
                (None, "```json") => block = Some(String::new()),
                (Some(body), "```") => {
                    let value: Value = serde_json::from_str(body).unwrap();
                    if value.get("objective").is_some() {
                        out.push(value);
                    }
                    block = None;
                }
                (Some(body), _) => {
                    body.push_str(line);
                    body.push('\n');
                }
                (None, _) => {}
            }
        }
        assert!(!out.is_empty());
        out
    }

    #[test]
    fn every_example_envelope_validates_against_the_envelope_schema() {
        let schemas = Schemas::new();
        let envelopes = examples().into_iter().chain(
            documented_envelopes()
                .into_iter()
                .map(|v| ("POLICIES.md".into(), v)),
        );
        for (name, envelope) in envelopes {
            let errors: Vec<String> = schemas
                .envelope
                .iter_errors(&envelope)
                .map(|e| format!("{}: {e}", e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{name}: {errors:?}");
            normalize(&envelope["policies"]).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn normalized_policies_validate_and_the_typed_form_reads_them_back() {
        let schemas = Schemas::new();
        for (name, envelope) in examples() {
            let normalized = normalize(&envelope["policies"]).unwrap();
            let canonical = serde_json::to_value(&normalized).unwrap();
            assert!(schemas.accepts(&canonical), "{name}: {canonical}");
            for raw in [&envelope["policies"], &canonical] {
                let typed: Option<PoliciesDto> = serde_json::from_value(raw.clone())
                    .unwrap_or_else(|e| panic!("{name}: {e}: {raw}"));
                let again = serde_json::to_value(&typed).unwrap();
                assert_eq!(normalize(&again).unwrap(), normalized, "{name}");
            }
        }
    }

    #[test]
    fn invalid_policies_fail_the_schema() {
        let schemas = Schemas::new();
        let policy = |trigger: Value, action: Value| json!({"runtime": [{"id": "p", "trigger": trigger, "action": action}]});
        let replan = json!({"type": "replan"});
        let node = json!({"kind": "onNodeComplete"});
        for bad in [
            policy(node.clone(), json!({"type": "goto", "target": "x"})),
            policy(node.clone(), json!({"type": "emit"})),
            policy(json!({"kind": "onFinish"}), replan.clone()),
            policy(json!({"kind": "onTimeout", "ms": 0}), replan.clone()),
            policy(json!({"kind": "onTimeout"}), replan.clone()),
            policy(node.clone(), json!({"type": "hitl"})),
            policy(node.clone(), json!({"type": "hitl", "question": "  "})),
            policy(
                node.clone(),
                json!({"type": "hitl", "question": "q", "onReject": "retry"}),
            ),
            policy(
                node.clone(),
                json!({"type": "hitl", "question": "q", "options": ["a", "a"]}),
            ),
            policy(
                json!({"kind": "onMetricBelow", "metric": "m"}),
                replan.clone(),
            ),
            policy(
                json!({"kind": "onNodeComplete", "selector": {"kind": "qa"}}),
                replan.clone(),
            ),
            json!({"runtime": [{"id": "p", "maxFires": 101, "trigger": node, "action": replan}]}),
            json!({"runtime": [{"trigger": node, "action": replan}]}),
            json!({"runtime": [{"id": "p", "when": "now", "trigger": node, "action": replan}]}),
            json!({"planner": {"maxNodes": 0}}),
            json!({"planner": {"maxAttempts": "3"}}),
            json!({"planner": {"forbiddenKinds": ["robot"]}}),
            json!({"plannner": {}}),
        ] {
            assert_agree(&schemas, &bad, false);
        }
    }

    #[test]
    fn unions_are_named_components_with_one_discriminator_value_each() {
        let schemas = Schemas::new();
        let unknown_kind = json!({"runtime": [{"id": "p", "trigger": {"kind": "?"}, "action": {"type": "pause"}}]});
        let unknown_type = json!({"runtime": [{"id": "p", "trigger": {"kind": "manual"}, "action": {"type": "?"}}]});
        let executed: Vec<&str> = accepted(unknown_type)
            .into_iter()
            .filter(|t| {
                let action = Slot::Action.embed(json!({ "type": t }));
                !matches!(
                    normalize(&action),
                    Err(PolicyError::UnsupportedAction { .. })
                )
            })
            .collect();
        for (union, tag, names) in [
            ("PolicyTriggerDto", "kind", accepted(unknown_kind)),
            ("PolicyActionDto", "type", executed),
        ] {
            let variants = union_variants(&schemas, union);
            let values: Vec<&str> = variants.iter().map(|(v, _)| v.as_str()).collect();
            assert_eq!(
                values.iter().copied().collect::<BTreeSet<_>>(),
                names.iter().copied().collect::<BTreeSet<_>>(),
                "{union}"
            );
            let one_of: Vec<&str> = schemas.component(union)["oneOf"]
                .as_array()
                .unwrap()
                .iter()
                .map(|item| item["$ref"].as_str().expect("a named component"))
                .collect();
            assert_eq!(one_of.len(), variants.len(), "{union}");
            for (value, component) in &variants {
                assert!(one_of.contains(&format!("#/components/schemas/{component}").as_str()));
                let variant = schemas.component(component);
                assert_eq!(
                    variant["properties"][tag]["enum"],
                    json!([value]),
                    "{component}"
                );
                assert!(
                    variant["required"]
                        .as_array()
                        .unwrap()
                        .contains(&json!(tag))
                );
                assert_eq!(variant["additionalProperties"], false, "{component}");
            }
        }
        let kinds = accepted(json!({"planner": {"forbiddenKinds": ["?"]}}));
        let hitl =
            accepted(Slot::Action.embed(json!({"type": "hitl", "question": "q", "kind": "?"})));
        let follow_ups =
            accepted(Slot::Action.embed(json!({"type": "hitl", "question": "q", "onReject": "?"})));
        let thens = accepted(json!({"fallback": {"then": "?"}}));
        for (component, names) in [
            ("ThenDto", thens),
            ("KindDto", kinds),
            ("HitlKindDto", hitl),
            ("FollowUpDto", follow_ups),
        ] {
            assert_eq!(
                schemas.component(component)["enum"],
                json!(names),
                "{component}"
            );
        }
    }

    /// Every component, field by field: the schema accepts exactly what the normalizer
    /// accepts — the same keys, required fields, types, bounds and defaults.
    #[test]
    fn the_schema_and_the_normalizer_agree_on_every_field() {
        let schemas = Schemas::new();
        for (name, slot) in every_component(&schemas) {
            let component = schemas.component(&name).clone();
            let minimal = schemas.sample(&component);
            let at = |value: Value| slot.embed(value);
            assert_agree(&schemas, &at(minimal.clone()), true);

            let with = |key: &str, value: Value| {
                let mut object = minimal.as_object().cloned().unwrap();
                object.insert(key.to_owned(), value);
                at(Value::Object(object))
            };
            let unknown = with("zzUnknown", json!(1));
            assert_agree(&schemas, &unknown, false);
            let Err(PolicyError::UnknownKeys { expected, .. }) = normalize(&unknown) else {
                panic!("{name}: {unknown}")
            };
            let properties = component["properties"].as_object().unwrap();
            assert_eq!(
                expected.into_iter().collect::<BTreeSet<_>>(),
                properties
                    .keys()
                    .map(String::as_str)
                    .collect::<BTreeSet<_>>(),
                "{name}: the keys the normalizer reads"
            );

            for required in component["required"].as_array().into_iter().flatten() {
                let mut object = minimal.as_object().cloned().unwrap();
                object.remove(required.as_str().unwrap());
                assert_agree(&schemas, &at(Value::Object(object)), false);
            }

            let normalized = slot.normalized(&at(minimal.clone()));
            for (key, property) in properties {
                if let Some(default) = property.get("default") {
                    assert_eq!(&normalized[key], default, "{name}.{key} default");
                }
                let resolved = schemas.non_null(property);
                if let Some(wrong) = schemas.wrong_type(property) {
                    assert_agree(&schemas, &with(key, wrong), false);
                }
                if schemas.nullable(property) {
                    assert_agree(&schemas, &with(key, Value::Null), true);
                }
                let value = match Schemas::kind_of(resolved) {
                    Some("array") => json!([schemas.sample(&resolved["items"])]),
                    _ => schemas.sample(property),
                };
                assert_agree(&schemas, &with(key, value), true);
                if let Some(min) = resolved["minimum"].as_u64() {
                    assert_agree(&schemas, &with(key, json!(min)), true);
                    let below = min.checked_sub(1).map_or(json!(-1), |n| json!(n));
                    assert_agree(&schemas, &with(key, below), false);
                }
                if let Some(max) = resolved["maximum"].as_u64() {
                    assert_agree(&schemas, &with(key, json!(max)), true);
                    assert_agree(&schemas, &with(key, json!(max + 1)), false);
                }
                if resolved["minLength"] == 1 {
                    assert_agree(&schemas, &with(key, json!("")), false);
                    assert_agree(&schemas, &with(key, json!("  ")), false);
                }
                let items = &resolved["items"];
                if items["minLength"] == 1 {
                    assert_agree(&schemas, &with(key, json!([" "])), false);
                    let distinct = resolved["uniqueItems"] == true;
                    assert_agree(&schemas, &with(key, json!(["a", "a"])), !distinct);
                }
            }
        }
    }
}
