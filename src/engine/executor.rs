//! Executing nodes: the context bundle, the executor trait and in-process builtin handlers.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::catalog::{Capability, ExecutorSpec};
use crate::fsm::TokenUsage;
use crate::ids::RunId;

/// The context bundle handed to an executor (DESIGN §8, "HTTP executor call").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCall {
    /// The run.
    pub run_id: RunId,
    /// The node.
    pub node_id: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Stable across attempts: `runId/nodeId`.
    pub idempotency_key: String,
    /// The executing capability.
    pub capability_id: String,
    /// The run's objective.
    pub objective: String,
    /// Plan system instructions, special instructions and node instructions, in that order.
    pub instructions: Vec<String>,
    /// Values of the facets the node consumes.
    pub inputs: Map<String, Value>,
    /// The node's compiled output contract.
    pub output_schema: Arc<Value>,
    /// How the capability says its nodes run (not sent over the wire).
    #[serde(skip)]
    pub executor: Option<ExecutorSpec>,
    /// Where a model-backed executor reports the tokens the attempt used (not sent over the
    /// wire); they count towards the run's `nodeTokens` and `cost` budgets.
    #[serde(skip)]
    pub usage: UsageReport,
}

/// Where an executor reports the tokens a node attempt used; the engine reads it when the
/// attempt ends and records it on the attempt's event (`spend.usage`). Reports add up.
#[derive(Debug, Clone, Default)]
pub struct UsageReport(Arc<std::sync::Mutex<Option<TokenUsage>>>);

impl UsageReport {
    /// Adds `usage` to what the attempt used.
    pub fn report(&self, usage: TokenUsage) {
        let mut slot = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let total = slot.get_or_insert_with(TokenUsage::default);
        total.prompt_tokens = total.prompt_tokens.saturating_add(usage.prompt_tokens);
        total.completion_tokens = total
            .completion_tokens
            .saturating_add(usage.completion_tokens);
    }

    /// What was reported, if anything.
    pub fn get(&self) -> Option<TokenUsage> {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Reports compare equal: they are a channel, not part of the call's content.
impl PartialEq for UsageReport {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// A failed node attempt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExecError {
    /// Stable code, e.g. `HANDLER_FAILED`, `TIMEOUT`.
    pub code: String,
    /// What went wrong.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
}

impl ExecError {
    /// A retryable failure.
    pub fn retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure no retry can fix.
    pub fn fatal(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable: false,
        }
    }
}

/// An executor's refusal of a capability's configuration, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct CapabilityRefused {
    /// JSON path of the field in the capability registration, e.g. `executor.signingSecretEnv`.
    pub field: String,
    /// What is wrong; never a secret's value.
    pub message: String,
}

impl CapabilityRefused {
    /// A refusal of `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Runs nodes of capabilities whose executor type it serves (`http`, `llm`, …).
#[async_trait]
pub trait NodeExecutor: Send + Sync + 'static {
    /// Executes one attempt and returns the facet values produced.
    ///
    /// # Errors
    /// [`ExecError`] when the attempt failed; its `retryable` flag decides whether the
    /// engine tries again (within the capability's `maxAttempts`).
    async fn execute(&self, call: NodeCall) -> Result<Map<String, Value>, ExecError>;

    /// Checks a capability of this executor's type when it is registered
    /// ([`Engine::register_capability`](crate::Engine::register_capability) and the
    /// capabilities of [`EngineConfig`](crate::EngineConfig)), so that a configuration the
    /// executor cannot serve is refused up front instead of failing every node. Capabilities
    /// read back from the store are not checked again. The default accepts every capability.
    ///
    /// # Errors
    /// [`CapabilityRefused`] naming the field at fault.
    fn check_capability(&self, capability: &Capability) -> Result<(), CapabilityRefused> {
        let _ = capability;
        Ok(())
    }
}

/// A synchronous in-process handler (executor type `builtin`).
///
/// Handlers are code the engine does not control, so they never run on the run's own task:
/// each attempt runs on tokio's blocking pool ([`tokio::task::spawn_blocking`]). A handler may
/// block; if it outlives its capability's `timeoutMs` the attempt fails with `TIMEOUT` (the
/// thread is not interrupted: it finishes in the background and its result is dropped). A
/// handler that panics fails the attempt with `HANDLER_PANICKED` carrying the panic message.
pub type BuiltinHandler =
    Arc<dyn Fn(&NodeCall) -> Result<Map<String, Value>, ExecError> + Send + Sync>;

/// An asynchronous in-process handler (executor type `builtin`), registered with
/// [`Executors::builtin_async`]. Each attempt runs in its own task under the capability's
/// timeout; a panic fails the attempt with `HANDLER_PANICKED`.
pub type AsyncBuiltinHandler = Arc<
    dyn Fn(NodeCall) -> BoxFuture<'static, Result<Map<String, Value>, ExecError>> + Send + Sync,
>;

/// A registered builtin handler.
#[derive(Clone)]
pub(crate) enum Handler {
    Blocking(BuiltinHandler),
    Async(AsyncBuiltinHandler),
}

/// What runs one attempt of a node.
pub(crate) enum Work {
    Handler(Handler),
    Executor(Arc<dyn NodeExecutor>),
}

/// The executors an engine can use, by executor type.
///
/// Builtin handlers (`{"type":"builtin","handler":name}`) are registered by name with
/// [`Executors::builtin`] (synchronous, run on the blocking pool) or
/// [`Executors::builtin_async`]; every other executor type — `http`, `llm` and any custom type
/// such as `{"type":"grpc", …}` — is served by the [`NodeExecutor`] registered with
/// [`Executors::with_type`]. Whatever runs an attempt, the engine bounds it by the capability's
/// `timeoutMs` (`TIMEOUT`) and turns a panic into a failed attempt (`HANDLER_PANICKED`), which
/// the node's `maxAttempts` may retry; no handler or executor can leave a run stranded.
#[derive(Clone, Default)]
pub struct Executors {
    builtin: HashMap<String, Handler>,
    by_type: HashMap<String, Arc<dyn NodeExecutor>>,
}

impl fmt::Debug for Executors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut builtin: Vec<&String> = self.builtin.keys().collect();
        builtin.sort();
        let mut types: Vec<&String> = self.by_type.keys().collect();
        types.sort();
        f.debug_struct("Executors")
            .field("builtin", &builtin)
            .field("types", &types)
            .finish()
    }
}

impl Executors {
    /// No executors.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a synchronous builtin handler under `name` (capabilities refer to it by
    /// `{"type":"builtin","handler":name}`). It runs on the blocking pool, so it may block.
    pub fn builtin(
        mut self,
        name: impl Into<String>,
        handler: impl Fn(&NodeCall) -> Result<Map<String, Value>, ExecError> + Send + Sync + 'static,
    ) -> Self {
        self.builtin
            .insert(name.into(), Handler::Blocking(Arc::new(handler)));
        self
    }

    /// Registers an asynchronous builtin handler under `name`; it replaces a handler of the
    /// same name. Each attempt runs in its own task, so the handler never holds up its run.
    ///
    /// ```
    /// use flexrun::engine::{Executors, NodeCall};
    /// use serde_json::{json, Map};
    ///
    /// let executors = Executors::new().builtin_async("echo", |call: NodeCall| async move {
    ///     Ok(Map::from_iter([("echo".to_owned(), json!(call.objective))]))
    /// });
    /// # let _ = executors;
    /// ```
    pub fn builtin_async<F, Fut>(mut self, name: impl Into<String>, handler: F) -> Self
    where
        F: Fn(NodeCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Map<String, Value>, ExecError>> + Send + 'static,
    {
        let handler: AsyncBuiltinHandler = Arc::new(move |call| Box::pin(handler(call)));
        self.builtin.insert(name.into(), Handler::Async(handler));
        self
    }

    /// Registers the executor for an executor type (`http`, `llm` or a custom type such as
    /// `grpc`, named by a capability's `{"type":"grpc", …}` executor).
    pub fn with_type(
        mut self,
        executor_type: impl Into<String>,
        executor: Arc<dyn NodeExecutor>,
    ) -> Self {
        self.by_type.insert(executor_type.into(), executor);
        self
    }

    pub(crate) fn handler(&self, name: &str) -> Option<&Handler> {
        self.builtin.get(name)
    }

    pub(crate) fn for_type(&self, executor_type: &str) -> Option<&Arc<dyn NodeExecutor>> {
        self.by_type.get(executor_type)
    }
}

/// Typed access to a call's inputs and typed outputs, for handlers and executors.
impl NodeCall {
    /// The value of input facet `facet`, deserialized as `T`.
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use flexrun::RunId;
    /// use flexrun::engine::{ExecError, NodeCall};
    /// use serde::Deserialize;
    /// use serde_json::{Map, Value, json};
    ///
    /// #[derive(Deserialize)]
    /// #[serde(rename_all = "camelCase")]
    /// struct WriterBrief {
    ///     audience: String,
    ///     key_points: Vec<String>,
    /// }
    ///
    /// fn write_copy(call: &NodeCall) -> Result<Map<String, Value>, ExecError> {
    ///     let brief: WriterBrief = call.input("writerBrief")?;
    ///     let variants: Vec<String> =
    ///         brief.key_points.iter().map(|p| format!("{p}, for {}.", brief.audience)).collect();
    ///     NodeCall::output(&json!({"copyVariants": variants}))
    /// }
    ///
    /// let mut call = NodeCall {
    ///     run_id: RunId::new(),
    ///     node_id: "write".into(),
    ///     attempt: 1,
    ///     idempotency_key: "run/write".into(),
    ///     capability_id: "writer.en".into(),
    ///     objective: "Tagline".into(),
    ///     instructions: Vec::new(),
    ///     inputs: Map::new(),
    ///     output_schema: Arc::new(Value::Null),
    ///     executor: None,
    ///     usage: Default::default(),
    /// };
    /// assert_eq!(write_copy(&call).unwrap_err().code, "INPUT_INVALID");
    /// call.inputs.insert(
    ///     "writerBrief".into(),
    ///     json!({"audience": "parents", "keyPoints": ["Fresh bread"]}),
    /// );
    /// assert_eq!(write_copy(&call)?["copyVariants"], json!(["Fresh bread, for parents."]));
    /// # Ok::<(), ExecError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A fatal [`ExecError`] with code `INPUT_INVALID` naming `facet` when the call has no
    /// such input or its value does not deserialize as `T`.
    pub fn input<T: serde::de::DeserializeOwned>(&self, facet: &str) -> Result<T, ExecError> {
        let value = self.inputs.get(facet).ok_or_else(|| {
            ExecError::fatal(INPUT_INVALID, format!("input facet `{facet}` is missing"))
        })?;
        T::deserialize(value).map_err(|e| {
            ExecError::fatal(
                INPUT_INVALID,
                format!("input facet `{facet}` has an unexpected shape: {e}"),
            )
        })
    }

    /// The value of input facet `facet` deserialized as `T`, or `None` when the call has no
    /// such input.
    ///
    /// # Errors
    ///
    /// A fatal [`ExecError`] with code `INPUT_INVALID` naming `facet` when the value does not
    /// deserialize as `T`.
    pub fn optional_input<T: serde::de::DeserializeOwned>(
        &self,
        facet: &str,
    ) -> Result<Option<T>, ExecError> {
        if self.inputs.contains_key(facet) {
            self.input(facet).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The facet values of a handler's result from a value that serializes to a JSON object
    /// whose keys are facet names (a struct with one field per output facet, say).
    ///
    /// ```
    /// use flexrun::engine::NodeCall;
    /// use serde::Serialize;
    ///
    /// #[derive(Serialize)]
    /// #[serde(rename_all = "camelCase")]
    /// struct Produced {
    ///     copy_variants: Vec<String>,
    /// }
    ///
    /// let output = NodeCall::output(&Produced { copy_variants: vec!["Fresh bread.".into()] })?;
    /// assert_eq!(output["copyVariants"][0], "Fresh bread.");
    /// # Ok::<(), flexrun::engine::ExecError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A fatal [`ExecError`] with code `OUTPUT_INVALID` when `value` does not serialize or
    /// serializes to something other than an object.
    pub fn output<T: Serialize + ?Sized>(value: &T) -> Result<Map<String, Value>, ExecError> {
        match serde_json::to_value(value) {
            Ok(Value::Object(facets)) => Ok(facets),
            Ok(other) => Err(ExecError::fatal(
                OUTPUT_INVALID,
                format!(
                    "a node's output must be an object of facet values, not {}",
                    json_type(&other)
                ),
            )),
            Err(e) => Err(ExecError::fatal(
                OUTPUT_INVALID,
                format!("a node's output does not serialize: {e}"),
            )),
        }
    }
}

/// The code of a call input that is missing or of the wrong shape.
const INPUT_INVALID: &str = "INPUT_INVALID";

/// The code of a handler result that is not an object of facet values.
const OUTPUT_INVALID: &str = "OUTPUT_INVALID";

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Runs one attempt under `timeout`, off the caller's task, turning a panic into
/// `HANDLER_PANICKED` and an overrun into `TIMEOUT`.
pub(crate) async fn attempt(
    work: Work,
    call: NodeCall,
    timeout: Duration,
) -> Result<Map<String, Value>, ExecError> {
    let outcome = match work {
        Work::Handler(Handler::Blocking(handler)) => {
            let task = tokio::task::spawn_blocking(move || handler(&call));
            match tokio::time::timeout(timeout, task).await {
                Ok(Ok(result)) => Ok(result),
                Ok(Err(join)) => Err(join_failure(join)),
                Err(_) => Err(timed_out(timeout)),
            }
        }
        Work::Handler(Handler::Async(handler)) => guarded(timeout, handler(call)).await,
        Work::Executor(executor) => {
            guarded(timeout, async move { executor.execute(call).await }).await
        }
    };
    outcome.unwrap_or_else(Err)
}

async fn guarded<F>(
    timeout: Duration,
    work: F,
) -> Result<Result<Map<String, Value>, ExecError>, ExecError>
where
    F: Future<Output = Result<Map<String, Value>, ExecError>>,
{
    match tokio::time::timeout(timeout, AssertUnwindSafe(work).catch_unwind()).await {
        Ok(Ok(result)) => Ok(result),
        Ok(Err(payload)) => Err(panicked(payload.as_ref())),
        Err(_) => Err(timed_out(timeout)),
    }
}

fn timed_out(timeout: Duration) -> ExecError {
    ExecError::retryable(
        "TIMEOUT",
        format!("node attempt exceeded {} ms", timeout.as_millis()),
    )
}

fn join_failure(join: tokio::task::JoinError) -> ExecError {
    match join.try_into_panic() {
        Ok(payload) => panicked(payload.as_ref()),
        Err(join) => ExecError::retryable("HANDLER_CANCELLED", join.to_string()),
    }
}

fn panicked(payload: &(dyn Any + Send)) -> ExecError {
    ExecError::retryable(
        "HANDLER_PANICKED",
        format!("the handler panicked: {}", panic_message(payload)),
    )
}

/// The message of a panic payload (`panic!` with a literal or a formatted string).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod typed_io_tests {
    use serde_json::json;

    use super::*;

    fn call(inputs: Value) -> NodeCall {
        NodeCall {
            run_id: RunId::new(),
            node_id: "write".into(),
            attempt: 1,
            idempotency_key: "r/write".into(),
            capability_id: "writer.en".into(),
            objective: "o".into(),
            instructions: Vec::new(),
            inputs: inputs.as_object().cloned().unwrap_or_default(),
            output_schema: Arc::new(Value::Null),
            executor: None,
            usage: Default::default(),
        }
    }

    #[derive(Debug, PartialEq, Deserialize, Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Brief {
        audience: String,
        key_points: Vec<String>,
    }

    #[test]
    fn inputs_deserialize_into_typed_values() {
        let call = call(json!({
            "writerBrief": {"audience": "parents", "keyPoints": ["fresh bread"]},
            "count": 3
        }));
        assert_eq!(
            call.input::<Brief>("writerBrief").unwrap(),
            Brief {
                audience: "parents".into(),
                key_points: vec!["fresh bread".into()],
            }
        );
        assert_eq!(call.input::<u32>("count").unwrap(), 3);
        assert_eq!(call.optional_input::<u32>("count").unwrap(), Some(3));
        assert_eq!(call.optional_input::<u32>("absent").unwrap(), None);
    }

    #[test]
    fn missing_or_mistyped_inputs_are_fatal_input_invalid_errors_naming_the_facet() {
        let call = call(json!({"count": "three", "writerBrief": {"audience": "parents"}}));
        let missing = call.input::<String>("objectiveBrief").unwrap_err();
        assert_eq!(
            missing,
            ExecError::fatal("INPUT_INVALID", "input facet `objectiveBrief` is missing")
        );
        let mistyped = call.input::<u32>("count").unwrap_err();
        assert_eq!(mistyped.code, "INPUT_INVALID");
        assert!(!mistyped.retryable);
        assert!(
            mistyped
                .message
                .starts_with("input facet `count` has an unexpected shape: invalid type"),
            "{}",
            mistyped.message
        );
        let incomplete = call.optional_input::<Brief>("writerBrief").unwrap_err();
        assert!(
            incomplete.message.contains("`writerBrief`")
                && incomplete.message.contains("keyPoints"),
            "{}",
            incomplete.message
        );
    }

    #[test]
    fn outputs_are_objects_of_facet_values() {
        let brief = Brief {
            audience: "parents".into(),
            key_points: vec!["bread".into()],
        };
        let output = NodeCall::output(&brief).unwrap();
        assert_eq!(
            Value::Object(output),
            json!({"audience": "parents", "keyPoints": ["bread"]})
        );
        assert_eq!(
            NodeCall::output(&["a", "b"]).unwrap_err(),
            ExecError::fatal(
                "OUTPUT_INVALID",
                "a node's output must be an object of facet values, not an array"
            )
        );
        let mut keyed = std::collections::BTreeMap::new();
        keyed.insert(vec![1u8], "x");
        let err = NodeCall::output(&keyed).unwrap_err();
        assert_eq!(err.code, "OUTPUT_INVALID");
        assert!(
            err.message
                .starts_with("a node's output does not serialize: "),
            "{}",
            err.message
        );
    }
}
