//! The `llm` executor type: one OpenAI-compatible structured-output call per node attempt.
//!
//! The system message carries the capability's instructions (from its
//! `{"type":"llm","model":…,"instructions":…}` executor spec); the user message carries the
//! objective, the node's instructions, its input facet values and its compiled output
//! schema, which is also sent as `response_format`. The reply's JSON object is returned as
//! the node's output, and the engine validates it against the contract like any other
//! node's output.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use crate::catalog::{Capability, ExecutorSpec};
use crate::engine::{ExecError, NodeCall, NodeExecutor};
use crate::planner::openai::{
    ChatClient, ChatError, ChatMessage, ChatRequest, ConfigError, OpenAiConfig, OpenAiMetrics,
    OpenAiMetricsSnapshot, unfenced,
};

/// What an `llm` capability says about its calls.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LlmSpec {
    /// Model; the executor's configured model when `None`.
    pub model: Option<String>,
    /// Capability-level instructions (the system prompt).
    pub instructions: String,
}

impl LlmSpec {
    /// The spec of an `llm` executor, `None` for other executor types.
    pub fn of(executor: &ExecutorSpec) -> Option<Self> {
        match executor {
            ExecutorSpec::Llm {
                model,
                instructions,
            } => Some(Self {
                model: model.clone(),
                instructions: instructions.clone(),
            }),
            ExecutorSpec::Builtin { .. }
            | ExecutorSpec::Http { .. }
            | ExecutorSpec::Human
            | ExecutorSpec::Custom { .. } => None,
        }
    }
}

/// Finds the [`LlmSpec`] of a capability by id (e.g. from the engine's live catalog).
pub type LlmResolver = Arc<dyn Fn(&str) -> Option<LlmSpec> + Send + Sync>;

/// The `llm` executor.
#[derive(Clone)]
pub struct LlmExecutor {
    client: ChatClient,
    resolve: LlmResolver,
}

impl fmt::Debug for LlmExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmExecutor")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl LlmExecutor {
    /// An executor over `config` that looks capabilities up with `resolve`.
    ///
    /// # Errors
    /// [`ConfigError`] when the config is invalid or the HTTP client cannot be built.
    pub fn new(
        config: OpenAiConfig,
        resolve: impl Fn(&str) -> Option<LlmSpec> + Send + Sync + 'static,
    ) -> Result<Self, ConfigError> {
        Ok(Self::with_client(
            ChatClient::new(config)?,
            Arc::new(resolve),
        ))
    }

    /// An executor for a fixed set of capabilities (those with an `llm` executor spec).
    ///
    /// # Errors
    /// [`ConfigError`] when the config is invalid or the HTTP client cannot be built.
    pub fn for_capabilities<'a>(
        config: OpenAiConfig,
        capabilities: impl IntoIterator<Item = &'a Capability>,
    ) -> Result<Self, ConfigError> {
        let specs: HashMap<String, LlmSpec> = capabilities
            .into_iter()
            .filter_map(|c| LlmSpec::of(&c.executor).map(|s| (c.capability_id.clone(), s)))
            .collect();
        Self::new(config, move |id| specs.get(id).cloned())
    }

    /// An executor over an existing client.
    pub fn with_client(client: ChatClient, resolve: LlmResolver) -> Self {
        Self { client, resolve }
    }

    /// The counters.
    pub fn metrics(&self) -> OpenAiMetricsSnapshot {
        self.client.metrics().snapshot()
    }

    /// The live counters, to hand to a metrics exporter.
    pub fn metrics_handle(&self) -> Arc<OpenAiMetrics> {
        self.client.metrics().clone()
    }

    /// The chat request for one node attempt.
    pub fn chat_request(&self, call: &NodeCall, spec: &LlmSpec) -> ChatRequest {
        let mut system = format!(
            "You carry out one step of a workflow as the capability `{}`.",
            call.capability_id
        );
        if !spec.instructions.trim().is_empty() {
            system.push('\n');
            system.push_str(spec.instructions.trim());
        }
        system.push_str(
            "\nReply with one JSON object that matches outputSchema (its keys are the output \
facets) and nothing else.",
        );
        let schema = match &*call.output_schema {
            Value::Null => json!({"type": "object"}),
            other => other.clone(),
        };
        let user = json!({
            "objective": call.objective,
            "instructions": call.instructions,
            "inputs": call.inputs,
            "outputSchema": schema,
        });
        ChatRequest {
            model: spec.model.clone(),
            messages: vec![
                ChatMessage::system(system),
                ChatMessage::user(user.to_string()),
            ],
            schema_name: "node_output".to_owned(),
            schema,
        }
    }
}

fn exec_error(e: &ChatError) -> ExecError {
    let code = match e {
        ChatError::Timeout { .. } => "LLM_TIMEOUT",
        ChatError::Connect { .. } => "LLM_UNREACHABLE",
        ChatError::Status { .. } | ChatError::RetryAfterTooLong { .. } => "LLM_HTTP_STATUS",
        ChatError::Malformed { .. } => "LLM_MALFORMED_RESPONSE",
        ChatError::Truncated { .. } => "LLM_TRUNCATED",
        ChatError::NoContent { .. } => "LLM_NO_CONTENT",
    };
    ExecError {
        code: code.to_owned(),
        message: format!("llm executor: {e}"),
        retryable: e.is_retryable(),
    }
}

#[async_trait]
impl NodeExecutor for LlmExecutor {
    async fn execute(&self, call: NodeCall) -> Result<Map<String, Value>, ExecError> {
        let from_call = call.executor.as_ref().and_then(LlmSpec::of);
        let spec = from_call
            .or_else(|| (self.resolve)(&call.capability_id))
            .ok_or_else(|| {
                ExecError::fatal(
                    "EXECUTOR_MISCONFIGURED",
                    format!(
                        "capability `{}` has no llm executor spec",
                        call.capability_id
                    ),
                )
            })?;
        let metrics = self.client.metrics();
        let building = Instant::now();
        let request = self.chat_request(&call, &spec);
        metrics.overhead(building.elapsed());
        let reply = self
            .client
            .complete(&request)
            .await
            .map_err(|e| exec_error(&e))?;
        if let Some(usage) = reply.usage {
            call.usage.report(usage);
        }
        let parsing = Instant::now();
        let parsed: Result<Value, _> = serde_json::from_str(unfenced(&reply.content));
        metrics.overhead(parsing.elapsed());
        match parsed {
            Ok(Value::Object(output)) => Ok(output),
            Ok(other) => {
                metrics.failed();
                Err(ExecError::retryable(
                    "LLM_MALFORMED_OUTPUT",
                    format!(
                        "llm executor: node `{}` got a JSON {} instead of an object",
                        call.node_id,
                        json_type(&other)
                    ),
                ))
            }
            Err(e) => {
                metrics.failed();
                Err(ExecError::retryable(
                    "LLM_MALFORMED_OUTPUT",
                    format!(
                        "llm executor: the reply for node `{}` is not valid JSON ({e})",
                        call.node_id
                    ),
                ))
            }
        }
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RunId;

    fn call() -> NodeCall {
        NodeCall {
            run_id: RunId::new(),
            node_id: "write".into(),
            attempt: 1,
            idempotency_key: "k".into(),
            capability_id: "writer.llm".into(),
            objective: "a tagline".into(),
            instructions: vec!["be brief".into()],
            inputs: json!({"writerBrief": {"tone": "playful"}})
                .as_object()
                .cloned()
                .unwrap(),
            output_schema: Arc::new(json!({"type": "object", "required": ["copyVariants"]})),
            executor: None,
            usage: Default::default(),
        }
    }

    #[test]
    fn the_request_carries_capability_and_node_context() {
        let spec = LlmSpec::of(&ExecutorSpec::Llm {
            model: Some("tiny".into()),
            instructions: "You write ad copy.".into(),
        })
        .unwrap();
        let exec =
            LlmExecutor::new(OpenAiConfig::new("http://127.0.0.1:9/v1", "m"), |_| None).unwrap();
        let req = exec.chat_request(&call(), &spec);
        assert_eq!(req.model.as_deref(), Some("tiny"));
        assert!(req.messages[0].content.contains("You write ad copy."));
        assert!(req.messages[0].content.contains("`writer.llm`"));
        let user: Value = serde_json::from_str(&req.messages[1].content).unwrap();
        assert_eq!(user["inputs"]["writerBrief"]["tone"], "playful");
        assert_eq!(user["instructions"][0], "be brief");
        assert_eq!(req.schema["required"][0], "copyVariants");
        assert_eq!(LlmSpec::of(&ExecutorSpec::Human), None);
    }

    #[tokio::test]
    async fn an_unknown_capability_is_a_fatal_misconfiguration() {
        let exec = LlmExecutor::for_capabilities(
            OpenAiConfig::new("http://127.0.0.1:9/v1", "m"),
            &crate::demo::capabilities(),
        )
        .unwrap();
        let e = exec.execute(call()).await.unwrap_err();
        assert_eq!(e.code, "EXECUTOR_MISCONFIGURED");
        assert!(!e.retryable);
        assert!(e.message.contains("writer.llm"), "{}", e.message);
    }
}
