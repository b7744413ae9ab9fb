//! The `http` executor type (webhook): POSTs the context bundle ([`NodeCall`]) to the
//! capability's URL and expects `200 {"output":{facet: value}}` (DESIGN §8).
//!
//! Failures become [`ExecError`]s, never panics: 5xx, 429, timeouts, connection errors and
//! unreadable answers are retryable (within the capability's `maxAttempts`), any other status
//! is fatal. The output itself is validated against the node's contract by the engine.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::catalog::ExecutorSpec;
use crate::engine::{Engine, ExecError, NodeCall, NodeExecutor};

/// Largest webhook answer read, in bytes; a longer one is a failed attempt.
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// How much of an error answer's body is quoted in the node error.
const ERROR_SNIPPET_BYTES: usize = 512;

/// Where one capability's webhook lives and how long an attempt may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    /// The URL the context bundle is POSTed to.
    pub url: String,
    /// Per-attempt timeout.
    pub timeout: Duration,
}

/// Errors building an [`HttpExecutor`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpExecutorError {
    /// The HTTP client could not be built.
    #[error("cannot build the webhook http client: {0}")]
    Client(#[from] reqwest::Error),
}

type Resolve = Arc<dyn Fn(&str) -> Option<HttpTarget> + Send + Sync>;

/// Executes nodes of capabilities with `{"type":"http","url":…}` executors.
///
/// The executor is built before the engine (it goes into the engine's config), so it learns
/// the capability catalog late: [`HttpExecutor::for_engine`] returns a [`HttpBinding`] to call
/// once the engine is open. Calls made before that (a run recovered during
/// [`Engine::open`]) wait for the binding.
#[derive(Clone)]
pub struct HttpExecutor {
    client: reqwest::Client,
    targets: watch::Receiver<Option<Resolve>>,
}

impl fmt::Debug for HttpExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpExecutor")
            .field("bound", &self.targets.borrow().is_some())
            .finish()
    }
}

/// Connects an [`HttpExecutor`] made by [`HttpExecutor::for_engine`] to its engine.
pub struct HttpBinding {
    tx: watch::Sender<Option<Resolve>>,
}

impl fmt::Debug for HttpBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpBinding")
            .field("bound", &self.tx.borrow().is_some())
            .finish()
    }
}

impl HttpBinding {
    /// Resolves capability ids through `engine`'s live catalog from now on. The executor
    /// holds the engine weakly, so it does not keep it alive.
    pub fn bind(&self, engine: &Engine) {
        let catalog = engine.weak_catalog();
        let resolve: Resolve = Arc::new(move |capability_id| {
            let catalog = catalog()?;
            let cap = catalog.registry.get(capability_id)?;
            match &cap.executor {
                ExecutorSpec::Http { url } => Some(HttpTarget {
                    url: url.clone(),
                    timeout: Duration::from_millis(cap.timeout_ms.max(1)),
                }),
                ExecutorSpec::Builtin { .. }
                | ExecutorSpec::Llm { .. }
                | ExecutorSpec::Human
                | ExecutorSpec::Custom { .. } => None,
            }
        });
        self.tx.send_replace(Some(resolve));
    }
}

impl HttpExecutor {
    /// An executor to register as type `http` in an engine's config, and the binding to call
    /// with the engine once it is open.
    ///
    /// # Errors
    /// [`HttpExecutorError::Client`] when the HTTP client cannot be built.
    pub fn for_engine() -> Result<(Self, HttpBinding), HttpExecutorError> {
        let (tx, targets) = watch::channel(None);
        Ok((
            Self {
                client: client()?,
                targets,
            },
            HttpBinding { tx },
        ))
    }

    /// An executor resolving capability ids with `resolve` (for embedders that keep their
    /// own table of webhooks).
    ///
    /// # Errors
    /// [`HttpExecutorError::Client`] when the HTTP client cannot be built.
    pub fn with_resolver(
        resolve: impl Fn(&str) -> Option<HttpTarget> + Send + Sync + 'static,
    ) -> Result<Self, HttpExecutorError> {
        let resolve: Resolve = Arc::new(resolve);
        let (_tx, targets) = watch::channel(Some(resolve));
        Ok(Self {
            client: client()?,
            targets,
        })
    }

    async fn target(&self, capability_id: &str) -> Result<HttpTarget, ExecError> {
        let mut targets = self.targets.clone();
        let resolve = targets
            .wait_for(Option::is_some)
            .await
            .map_err(|_| {
                ExecError::fatal(
                    "EXECUTOR_UNBOUND",
                    "the http executor was never bound to an engine",
                )
            })?
            .clone()
            .ok_or_else(|| ExecError::fatal("EXECUTOR_UNBOUND", "no webhook resolver"))?;
        resolve(capability_id).ok_or_else(|| {
            ExecError::fatal(
                "CAPABILITY_NOT_HTTP",
                format!("capability `{capability_id}` has no http executor"),
            )
        })
    }
}

fn client() -> Result<reqwest::Client, HttpExecutorError> {
    Ok(crate::http_client::client_builder()
        .user_agent(concat!("flexrun/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

#[derive(Deserialize)]
struct WebhookReply {
    output: Map<String, Value>,
}

#[async_trait]
impl NodeExecutor for HttpExecutor {
    async fn execute(&self, call: NodeCall) -> Result<Map<String, Value>, ExecError> {
        let target = self.target(&call.capability_id).await?;
        let url = target.url.as_str();
        let mut response = self
            .client
            .post(url)
            .timeout(target.timeout)
            .header("idempotency-key", &call.idempotency_key)
            .json(&call)
            .send()
            .await
            .map_err(|e| transport_error(url, &e))?;
        let status = response.status();
        let mut body = Vec::new();
        let limit = if status == StatusCode::OK {
            MAX_RESPONSE_BYTES
        } else {
            ERROR_SNIPPET_BYTES
        };
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| transport_error(url, &e))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > limit {
                if status == StatusCode::OK {
                    return Err(ExecError::retryable(
                        "BAD_RESPONSE",
                        format!("webhook {url} answered more than {MAX_RESPONSE_BYTES} bytes"),
                    ));
                }
                body.truncate(limit);
                break;
            }
        }
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&body);
            let message = format!("webhook {url} answered {status}: {}", text.trim());
            let retryable = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
            return Err(if retryable {
                ExecError::retryable("HTTP_STATUS", message)
            } else {
                ExecError::fatal("HTTP_STATUS", message)
            });
        }
        serde_json::from_slice::<WebhookReply>(&body)
            .map(|reply| reply.output)
            .map_err(|e| {
                ExecError::retryable(
                    "BAD_RESPONSE",
                    format!("webhook {url} answered no `{{\"output\":{{…}}}}` object: {e}"),
                )
            })
    }
}

fn transport_error(url: &str, e: &reqwest::Error) -> ExecError {
    if e.is_timeout() {
        ExecError::retryable("TIMEOUT", format!("webhook {url} timed out"))
    } else if e.is_connect() {
        ExecError::retryable(
            "HTTP_CONNECT",
            format!("cannot connect to webhook {url}: {e}"),
        )
    } else {
        ExecError::retryable("HTTP_TRANSPORT", format!("webhook {url} failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unknown_capability_is_a_fatal_error() {
        let exec = HttpExecutor::with_resolver(|_| None).unwrap();
        let err = exec.target("writer.x").await.unwrap_err();
        assert_eq!(
            (err.code.as_str(), err.retryable),
            ("CAPABILITY_NOT_HTTP", false)
        );
        assert!(err.message.contains("writer.x"), "{}", err.message);
    }

    #[tokio::test]
    async fn an_unbound_executor_fails_once_its_binding_is_dropped() {
        let (exec, binding) = HttpExecutor::for_engine().unwrap();
        drop(binding);
        let err = exec.target("writer.x").await.unwrap_err();
        assert_eq!(err.code, "EXECUTOR_UNBOUND");
    }

    #[tokio::test]
    async fn a_refused_connection_is_retryable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/exec", listener.local_addr().unwrap());
        drop(listener);
        let exec = HttpExecutor::with_resolver(move |_| {
            Some(HttpTarget {
                url: url.clone(),
                timeout: Duration::from_secs(5),
            })
        })
        .unwrap();
        let call = NodeCall {
            run_id: crate::RunId::new(),
            node_id: "n".into(),
            attempt: 1,
            idempotency_key: "r/n".into(),
            capability_id: "c".into(),
            objective: "o".into(),
            instructions: vec![],
            inputs: Map::new(),
            output_schema: Arc::new(Value::Null),
            executor: None,
        };
        let err = exec.execute(call).await.unwrap_err();
        assert_eq!((err.code.as_str(), err.retryable), ("HTTP_CONNECT", true));
    }
}
