//! The planner trait and the planners shipped with the engine.
//!
//! A planner is the probabilistic half: given the objective, context, policies, catalog and
//! (for replans) the current plan and the trigger, it returns a draft or a delta. The
//! orchestrator validates whatever comes back; a planner never changes a plan itself.

mod catalog_planner;
#[cfg(feature = "client")]
pub mod openai;
mod reply;
mod scripted;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::catalog::{Capability, Facet};
use crate::diagnostics::Diagnostic;
use crate::fsm::{PlanPhase, PlannerOutput, TokenUsage, Trigger};
use crate::graph::PlanSnapshot;
use crate::ids::RunId;
use crate::policy::NormalizedPolicies;

pub use crate::fsm::Purpose;
pub use catalog_planner::CatalogPlanner;
#[cfg(feature = "client")]
pub use openai::{OpenAiConfig, OpenAiPlanner, ResponseFormat};
pub use scripted::{ScriptStep, ScriptedPlanner};

/// A node that already completed, with what it produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletedNode {
    /// The node.
    pub node_id: String,
    /// Its capability.
    pub capability_id: String,
    /// Facet values it produced.
    pub output: Map<String, Value>,
}

/// Everything a planner is told (DESIGN §1).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanRequest {
    /// The run.
    pub run_id: RunId,
    /// First plan or replan.
    pub purpose: Purpose,
    /// Initial, revision or replan.
    pub phase: PlanPhase,
    /// Attempt within the purpose, from 1.
    pub attempt: u32,
    /// The run's objective.
    pub objective: String,
    /// The run's inputs (facet name → value).
    pub inputs: Map<String, Value>,
    /// Every facet value known so far (inputs and node outputs).
    pub facet_values: Map<String, Value>,
    /// Completed nodes in completion order.
    pub completed: Vec<CompletedNode>,
    /// The facets the run must produce.
    pub required_outputs: Vec<String>,
    /// The envelope's special instructions.
    pub special_instructions: Vec<String>,
    /// Normalized policies.
    pub policies: NormalizedPolicies,
    /// Active capabilities the planner may use.
    pub capabilities: Vec<Capability>,
    /// Facets the planner may use.
    pub facets: Vec<Facet>,
    /// The current plan (replans only).
    pub current_plan: Option<PlanSnapshot>,
    /// Why a replan is asked.
    pub trigger: Option<Trigger>,
    /// Diagnostics of the previous attempt (revisions).
    pub diagnostics: Vec<Diagnostic>,
    /// The previous attempt's planner error, if it failed.
    pub previous_error: Option<String>,
    /// The run's budgets and what it has spent when the call was made (empty limits when
    /// it has none); a replan an `onBudget` policy asked for should fit what remains.
    pub budget: crate::policy::Ledger,
}

/// What a planner returns on success.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanResponse {
    /// The draft or delta (or, for a text reply that could not be read, the text).
    pub output: PlannerOutput,
    /// Token usage, for model-backed planners.
    pub usage: Option<TokenUsage>,
    /// What reading a text reply found (`REPLY_*` codes); validation judges them with its
    /// own findings and they reach the planner's next request like every diagnostic.
    pub diagnostics: Vec<Diagnostic>,
    /// The model that answered, when the planner knows; its usage is priced by it (see
    /// [`EngineConfig::pricing`](crate::EngineConfig::pricing)).
    pub model: Option<String>,
}

impl PlanResponse {
    /// A response without usage figures.
    pub fn new(output: PlannerOutput) -> Self {
        Self {
            output,
            usage: None,
            diagnostics: Vec::new(),
            model: None,
        }
    }

    /// Reads a planner's text reply (what a model returns as its message content) as the
    /// answer to `request`. Never fails: a reply that cannot be read becomes
    /// [`PlannerOutput::Unparsed`] with `REPLY_NOT_JSON` or `REPLY_SHAPE` diagnostics, which
    /// the engine records and sends back; what can be filled in unambiguously from the
    /// capabilities offered in `request` is, with a warning. See `docs/DIAGNOSTICS.md`.
    pub fn from_text(text: &str, request: &PlanRequest) -> Self {
        let (output, diagnostics) = reply::read(text, request.purpose, &request.capabilities);
        Self {
            output,
            usage: None,
            diagnostics,
            model: None,
        }
    }

    /// The same response with token usage.
    pub fn with_usage(mut self, usage: Option<TokenUsage>) -> Self {
        self.usage = usage;
        self
    }

    /// The same response, naming the model that answered.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }
}

/// Planner failures: retryable ones consume an attempt, fatal ones end the run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlannerError {
    /// Another attempt may succeed (timeouts, rate limits, a reply cut at the token limit).
    /// A reply that arrived but is wrong is not an error: it is a response whose
    /// diagnostics say what to fix (see [`PlanResponse::from_text`]).
    #[error("retryable planner error: {0}")]
    Retryable(String),
    /// No attempt will succeed (bad credentials, nothing to plan with).
    #[error("fatal planner error: {0}")]
    Fatal(String),
}

impl PlannerError {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Retryable(_) => true,
            Self::Fatal(_) => false,
        }
    }
}

/// The pluggable planner.
#[async_trait]
pub trait Planner: Send + Sync + 'static {
    /// A short name recorded on `plan_generated` events.
    fn name(&self) -> &str;

    /// Proposes a draft (initial purpose) or a delta (replan purpose).
    ///
    /// # Errors
    /// [`PlannerError::Retryable`] when another attempt may succeed, else [`PlannerError::Fatal`].
    async fn plan(&self, request: PlanRequest) -> Result<PlanResponse, PlannerError>;
}
