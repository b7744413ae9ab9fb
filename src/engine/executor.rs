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

use crate::catalog::ExecutorSpec;
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

/// Runs nodes of capabilities whose executor type it serves (`http`, `llm`, …).
#[async_trait]
pub trait NodeExecutor: Send + Sync + 'static {
    /// Executes one attempt and returns the facet values produced.
    ///
    /// # Errors
    /// [`ExecError`] when the attempt failed; its `retryable` flag decides whether the
    /// engine tries again (within the capability's `maxAttempts`).
    async fn execute(&self, call: NodeCall) -> Result<Map<String, Value>, ExecError>;
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
