//! Executing nodes: the context bundle, the executor trait and in-process builtin handlers.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
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

/// A synchronous in-process handler (executor type `builtin`). Handlers run inline on the
/// run's task, so they must be quick and must not block.
pub type BuiltinHandler =
    Arc<dyn Fn(&NodeCall) -> Result<Map<String, Value>, ExecError> + Send + Sync>;

/// The executors an engine can use, by executor type.
#[derive(Clone, Default)]
pub struct Executors {
    builtin: HashMap<String, BuiltinHandler>,
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

    /// Registers a builtin handler under `name` (capabilities refer to it by
    /// `{"type":"builtin","handler":name}`).
    pub fn builtin(
        mut self,
        name: impl Into<String>,
        handler: impl Fn(&NodeCall) -> Result<Map<String, Value>, ExecError> + Send + Sync + 'static,
    ) -> Self {
        self.builtin.insert(name.into(), Arc::new(handler));
        self
    }

    /// Registers the executor for an executor type (`http`, `llm`, …).
    pub fn with_type(
        mut self,
        executor_type: impl Into<String>,
        executor: Arc<dyn NodeExecutor>,
    ) -> Self {
        self.by_type.insert(executor_type.into(), executor);
        self
    }

    pub(crate) fn handler(&self, name: &str) -> Option<&BuiltinHandler> {
        self.builtin.get(name)
    }

    pub(crate) fn for_type(&self, executor_type: &str) -> Option<&Arc<dyn NodeExecutor>> {
        self.by_type.get(executor_type)
    }
}
