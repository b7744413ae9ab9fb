//! `OpenAiPlanner`: plans through any OpenAI-compatible Chat Completions endpoint
//! (OpenAI, vLLM, llama.cpp's server, Ollama) with JSON-Schema structured output.
//!
//! Each plan request becomes one chat call: a fixed system message with the rules, a user
//! message holding the request as compact JSON (objective, known facet values, completed
//! nodes, required outputs, policies, the capabilities pruned to those on a path from the
//! available to the required facets, their facets, the current plan and the trigger) and,
//! for a revision, a message listing the previous attempt's diagnostics or error. The reply
//! is asked to match a bounded JSON Schema of the draft or delta shape (servers that enforce
//! it cannot return a wrong shape), and is then read by [`PlanResponse::from_text`], the
//! path every text reply takes: what cannot be read becomes `REPLY_*` diagnostics, and the
//! engine validates what can, as for every planner, sending every finding back in the next
//! request. Only transport failures (timeouts, connection errors, 429/5xx, a reply cut at
//! the token limit) are planner errors.
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use flexrun::planner::openai::{OpenAiConfig, OpenAiPlanner};
//!
//! let mut config = OpenAiConfig::new("http://127.0.0.1:8080/v1", "smollm2");
//! config.max_attempts = 2;
//! let planner = Arc::new(OpenAiPlanner::new(config)?);
//! # Ok(()) }
//! ```

mod client;
mod config;
mod error;
mod prompt;
mod reply;
mod schema;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{PlanRequest, PlanResponse, Planner, PlannerError, Purpose};
use crate::fsm::PlannerOutput;

pub use client::{
    ChatClient, ChatMessage, ChatReply, ChatRequest, OpenAiMetrics, OpenAiMetricsSnapshot, Role,
};
pub use config::{DEFAULT_API_KEY_ENV, OpenAiConfig, ResponseFormat};
pub use error::{ChatError, ConfigError};
pub use prompt::DIAGNOSTICS_LEAD;
pub(crate) use reply::unfenced;
pub use schema::{INSTRUCTION_CAP, NODE_CAP, NODE_ID_PATTERN, OPERATION_CAP, VARIANT_CAP};

/// The model-backed planner.
#[derive(Debug, Clone)]
pub struct OpenAiPlanner {
    client: ChatClient,
}

impl OpenAiPlanner {
    /// A planner over `config`; the API key is read from `config.api_key_env`.
    ///
    /// # Errors
    /// [`ConfigError`] when the config is invalid or the HTTP client cannot be built.
    pub fn new(config: OpenAiConfig) -> Result<Self, ConfigError> {
        Ok(Self::with_client(ChatClient::new(config)?))
    }

    /// A planner over an existing client (sharing its counters).
    pub fn with_client(client: ChatClient) -> Self {
        Self { client }
    }

    /// The client.
    pub fn client(&self) -> &ChatClient {
        &self.client
    }

    /// The counters (calls, retries, failures, tokens, server time and our overhead), for
    /// export as metrics.
    pub fn metrics(&self) -> OpenAiMetricsSnapshot {
        self.client.metrics().snapshot()
    }

    /// The live counters, to hand to a metrics exporter.
    pub fn metrics_handle(&self) -> Arc<OpenAiMetrics> {
        self.client.metrics().clone()
    }

    /// The chat request for a plan request: what [`Planner::plan`] sends. Public so tools
    /// can show or measure the prompt.
    pub fn chat_request(&self, req: &PlanRequest) -> ChatRequest {
        let caps = prompt::prune(req);
        let bounds = schema::Bounds {
            max_nodes: req.policies.planner.max_nodes,
            max_string: self.client.config().max_string_len,
        };
        let (name, schema) = match req.purpose {
            Purpose::Initial => ("plan_draft", schema::draft_schema(&caps, &bounds)),
            Purpose::Replan => {
                let done: Vec<&str> = req.completed.iter().map(|n| n.node_id.as_str()).collect();
                let pending: Vec<&str> = req
                    .current_plan
                    .iter()
                    .flat_map(|p| &p.nodes)
                    .map(|n| n.id.as_str())
                    .filter(|id| !done.contains(id))
                    .collect();
                (
                    "plan_delta",
                    schema::delta_schema(&caps, req.current_plan.as_ref(), &pending, &bounds),
                )
            }
        };
        ChatRequest {
            model: None,
            messages: prompt::messages(req, &caps),
            schema_name: name.to_owned(),
            schema,
        }
    }
}

fn planner_error(e: ChatError) -> PlannerError {
    if e.is_retryable() {
        PlannerError::Retryable(format!("openai planner: {e}"))
    } else {
        PlannerError::Fatal(format!("openai planner: {e}"))
    }
}

#[async_trait]
impl Planner for OpenAiPlanner {
    fn name(&self) -> &str {
        &self.client.config().planner_name
    }

    async fn plan(&self, request: PlanRequest) -> Result<PlanResponse, PlannerError> {
        let metrics = self.client.metrics();
        let building = Instant::now();
        let chat = self.chat_request(&request);
        metrics.overhead(building.elapsed());
        let reply = self.client.complete(&chat).await.map_err(planner_error)?;
        let reading = Instant::now();
        let response = PlanResponse::from_text(&reply.content, &request)
            .with_usage(reply.usage)
            .with_model(self.client.config().model.clone());
        metrics.overhead(reading.elapsed());
        if let PlannerOutput::Unparsed(text) = &response.output {
            tracing::warn!(
                run_id = %request.run_id,
                attempt = request.attempt,
                bytes = text.bytes,
                "planner reply is not a plan; its diagnostics go back to the model"
            );
        }
        Ok(response)
    }
}
