//! The `http` executor type (webhook): POSTs the context bundle ([`NodeCall`]) to the
//! capability's URL and expects `200 {"output":{facet: value}}` (DESIGN §8).
//!
//! Failures become [`ExecError`]s, never panics: 5xx, 429, timeouts, connection errors and
//! unreadable answers are retryable (within the capability's `maxAttempts`), any other status
//! is fatal. The output itself is validated against the node's contract by the engine.
//!
//! With a signing secret — the executor's server-wide one, or the one a capability names with
//! `signingSecretEnv` — every call is signed in the Standard Webhooks style (see
//! [`crate::webhook`]): `webhook-id` (the node's idempotency key), `webhook-timestamp` and
//! `webhook-signature`. Without one, calls go unsigned.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::catalog::{Capability, ExecutorSpec};
use crate::engine::{CapabilityRefused, Engine, ExecError, NodeCall, NodeExecutor};
use crate::fsm::TokenUsage;
use crate::webhook::{self, SECRET_PREFIX, SecretError, WebhookSecret};

/// Largest webhook answer read, in bytes; a longer one is a failed attempt.
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// How much of an error answer's body is quoted in the node error.
const ERROR_SNIPPET_BYTES: usize = 512;

/// The registration field naming a capability's signing secret variable.
const SECRET_ENV_FIELD: &str = "executor.signingSecretEnv";

/// Where one capability's webhook lives and how long an attempt may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    /// The URL the context bundle is POSTed to.
    pub url: String,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// The environment variable (resolved by the executor's secret lookup) holding this
    /// webhook's signing secret(s); it overrides the executor's server-wide secret.
    pub signing_secret_env: Option<String>,
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

/// How `signingSecretEnv` names are read: the process environment unless told otherwise.
type SecretLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// How calls are signed.
struct Signing {
    /// The server-wide secrets, used when a capability names none (empty: unsigned).
    secrets: Vec<WebhookSecret>,
    lookup: SecretLookup,
}

/// Executes nodes of capabilities with `{"type":"http","url":…}` executors.
///
/// The executor is built before the engine (it goes into the engine's config), so it learns
/// the capability catalog late: [`HttpExecutor::for_engine`] returns a [`HttpBinding`] to call
/// once the engine is open. Calls made before that (a run recovered during
/// [`Engine::open`]) wait for the binding. [`HttpExecutor::builder`] sets how calls are
/// signed.
#[derive(Clone)]
pub struct HttpExecutor {
    client: reqwest::Client,
    targets: watch::Receiver<Option<Resolve>>,
    signing: Arc<Signing>,
}

impl fmt::Debug for HttpExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpExecutor")
            .field("bound", &self.targets.borrow().is_some())
            .field("server_wide_secrets", &self.signing.secrets.len())
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
                ExecutorSpec::Http {
                    url,
                    signing_secret_env,
                } => Some(HttpTarget {
                    url: url.clone(),
                    timeout: Duration::from_millis(cap.timeout_ms.max(1)),
                    signing_secret_env: signing_secret_env.clone(),
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

/// Builds an [`HttpExecutor`] that signs its calls.
///
/// ```
/// use flexrun::executors::http::HttpExecutor;
/// use flexrun::webhook::WebhookSecret;
///
/// let secrets = WebhookSecret::parse_list("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
/// let (http, binding) = HttpExecutor::builder().signing_secrets(secrets).for_engine()?;
/// // config.executors = config.executors.with_type("http", Arc::new(http));
/// // let engine = Engine::open(config).await?; binding.bind(&engine);
/// # let _ = (http, binding);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default)]
pub struct HttpExecutorBuilder {
    secrets: Vec<WebhookSecret>,
    lookup: Option<SecretLookup>,
}

impl fmt::Debug for HttpExecutorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpExecutorBuilder")
            .field("server_wide_secrets", &self.secrets.len())
            .field("custom_lookup", &self.lookup.is_some())
            .finish()
    }
}

impl HttpExecutorBuilder {
    /// Signs every call of a capability that names no secret of its own with each of
    /// `secrets` (several while rotating: the receiver accepts any of the signatures). No
    /// secrets (the default) leaves those calls unsigned.
    pub fn signing_secrets(mut self, secrets: impl IntoIterator<Item = WebhookSecret>) -> Self {
        self.secrets = secrets.into_iter().collect();
        self
    }

    /// How a capability's `signingSecretEnv` name is turned into its secret text (one or more
    /// whitespace-separated `whsec_…` secrets); by default the process environment is read
    /// (`std::env::var`). An embedding service that keeps secrets elsewhere, or a test, passes
    /// its own lookup. It is consulted when a capability is registered and for every call.
    pub fn secret_lookup(
        mut self,
        lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.lookup = Some(Arc::new(lookup));
        self
    }

    fn signing(self) -> Arc<Signing> {
        Arc::new(Signing {
            secrets: self.secrets,
            lookup: self
                .lookup
                .unwrap_or_else(|| Arc::new(|name| std::env::var(name).ok())),
        })
    }

    /// An executor to register as type `http` in an engine's config, and the binding to call
    /// with the engine once it is open.
    ///
    /// # Errors
    /// [`HttpExecutorError::Client`] when the HTTP client cannot be built.
    pub fn for_engine(self) -> Result<(HttpExecutor, HttpBinding), HttpExecutorError> {
        let (tx, targets) = watch::channel(None);
        Ok((
            HttpExecutor {
                client: client()?,
                targets,
                signing: self.signing(),
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
        self,
        resolve: impl Fn(&str) -> Option<HttpTarget> + Send + Sync + 'static,
    ) -> Result<HttpExecutor, HttpExecutorError> {
        let resolve: Resolve = Arc::new(resolve);
        let (_tx, targets) = watch::channel(Some(resolve));
        Ok(HttpExecutor {
            client: client()?,
            targets,
            signing: self.signing(),
        })
    }
}

impl HttpExecutor {
    /// A builder, to sign calls.
    pub fn builder() -> HttpExecutorBuilder {
        HttpExecutorBuilder::default()
    }

    /// An executor to register as type `http` in an engine's config, and the binding to call
    /// with the engine once it is open. Capabilities naming a `signingSecretEnv` are signed
    /// with the secret read from the process environment; others go unsigned.
    ///
    /// # Errors
    /// [`HttpExecutorError::Client`] when the HTTP client cannot be built.
    pub fn for_engine() -> Result<(Self, HttpBinding), HttpExecutorError> {
        Self::builder().for_engine()
    }

    /// An executor resolving capability ids with `resolve` (for embedders that keep their
    /// own table of webhooks).
    ///
    /// # Errors
    /// [`HttpExecutorError::Client`] when the HTTP client cannot be built.
    pub fn with_resolver(
        resolve: impl Fn(&str) -> Option<HttpTarget> + Send + Sync + 'static,
    ) -> Result<Self, HttpExecutorError> {
        Self::builder().with_resolver(resolve)
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

    /// The secrets a call of this target is signed with: the capability's own when it names a
    /// variable, else the server-wide ones (maybe none).
    fn secrets_for(&self, env: Option<&str>) -> Result<Vec<WebhookSecret>, SecretProblem> {
        match env {
            None => Ok(self.signing.secrets.clone()),
            Some(name) => {
                check_secret_env_name(name).map_err(SecretProblem::BadName)?;
                let text = (self.signing.lookup)(name).ok_or(SecretProblem::Unset)?;
                WebhookSecret::parse_list(&text).map_err(SecretProblem::Invalid)
            }
        }
    }
}

/// Why a capability's own signing secret cannot be used.
enum SecretProblem {
    BadName(String),
    Unset,
    Invalid(SecretError),
}

impl SecretProblem {
    fn message(&self, env: &str) -> String {
        match self {
            Self::BadName(message) => message.clone(),
            Self::Unset => format!(
                "environment variable `{env}` is not set; it must hold the webhook's signing secret (`whsec_<base64>`)"
            ),
            Self::Invalid(e) => format!("environment variable `{env}`: {e}"),
        }
    }
}

/// Checks that `name` can name an environment variable (`[A-Za-z_][A-Za-z0-9_]*`) and is not a
/// secret pasted in its place; the message never repeats a secret.
pub(crate) fn check_secret_env_name(name: &str) -> Result<(), String> {
    if name.starts_with(SECRET_PREFIX) {
        return Err(format!(
            "`signingSecretEnv` names the environment variable holding the secret; it must not be the secret itself (it starts with `{SECRET_PREFIX}`)"
        ));
    }
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`signingSecretEnv` must be an environment variable name (letters, digits and `_`, not starting with a digit), not `{name}`"
        ))
    }
}

fn client() -> Result<reqwest::Client, HttpExecutorError> {
    Ok(crate::http_client::client_builder()
        .user_agent(concat!("flexrun/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Deserialize)]
struct WebhookReply {
    output: Map<String, Value>,
    /// Tokens the webhook's own model calls used, when it says (`nodeTokens` budgets).
    #[serde(default)]
    usage: Option<TokenUsage>,
}

#[async_trait]
impl NodeExecutor for HttpExecutor {
    async fn execute(&self, call: NodeCall) -> Result<Map<String, Value>, ExecError> {
        let target = self.target(&call.capability_id).await?;
        let url = target.url.as_str();
        let secrets = self
            .secrets_for(target.signing_secret_env.as_deref())
            .map_err(|problem| {
                let env = target.signing_secret_env.as_deref().unwrap_or_default();
                let code = match problem {
                    SecretProblem::BadName(_) | SecretProblem::Invalid(_) => {
                        "WEBHOOK_SECRET_INVALID"
                    }
                    SecretProblem::Unset => "WEBHOOK_SECRET_MISSING",
                };
                ExecError::fatal(
                    code,
                    format!(
                        "capability `{}` cannot sign its webhook call: {}",
                        call.capability_id,
                        problem.message(env)
                    ),
                )
            })?;
        let body = serde_json::to_vec(&call).map_err(|e| {
            ExecError::fatal(
                "BAD_REQUEST_BODY",
                format!("the context bundle does not serialize: {e}"),
            )
        })?;
        let mut request = self
            .client
            .post(url)
            .timeout(target.timeout)
            .header("idempotency-key", &call.idempotency_key)
            .header(CONTENT_TYPE, "application/json");
        if let Some(traceparent) = crate::telemetry::traceparent(&tracing::Span::current()) {
            request = request.header(crate::telemetry::TRACEPARENT, traceparent);
        }
        if !secrets.is_empty() {
            let timestamp = unix_now();
            let signatures: Vec<String> = secrets
                .iter()
                .map(|s| webhook::sign(s, &call.idempotency_key, timestamp, &body))
                .collect();
            request = request
                .header(webhook::ID_HEADER, &call.idempotency_key)
                .header(webhook::TIMESTAMP_HEADER, timestamp.to_string())
                .header(webhook::SIGNATURE_HEADER, signatures.join(" "));
        }
        let mut response = request
            .body(body)
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
            .map(|reply| {
                if let Some(usage) = reply.usage {
                    call.usage.report(usage);
                }
                reply.output
            })
            .map_err(|e| {
                ExecError::retryable(
                    "BAD_RESPONSE",
                    format!("webhook {url} answered no `{{\"output\":{{…}}}}` object: {e}"),
                )
            })
    }

    /// Refuses an `http` capability whose `signingSecretEnv` is not a variable name, is not
    /// set, or does not hold valid secrets.
    fn check_capability(&self, capability: &Capability) -> Result<(), CapabilityRefused> {
        let ExecutorSpec::Http {
            signing_secret_env: Some(env),
            ..
        } = &capability.executor
        else {
            return Ok(());
        };
        self.secrets_for(Some(env))
            .map(drop)
            .map_err(|problem| CapabilityRefused::new(SECRET_ENV_FIELD, problem.message(env)))
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

    fn call() -> NodeCall {
        NodeCall {
            run_id: crate::RunId::new(),
            node_id: "n".into(),
            attempt: 1,
            idempotency_key: "r/n".into(),
            capability_id: "writer.hook".into(),
            objective: "o".into(),
            instructions: vec![],
            inputs: Map::new(),
            output_schema: Arc::new(Value::Null),
            executor: None,
            usage: Default::default(),
        }
    }

    fn hook(env: Option<&str>) -> Capability {
        Capability::new(
            "writer.hook",
            crate::catalog::CapabilityKind::Execution,
            ExecutorSpec::Http {
                url: "http://127.0.0.1:9/x".into(),
                signing_secret_env: env.map(str::to_owned),
            },
        )
    }

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn executor(env: &'static [(&'static str, &'static str)]) -> HttpExecutor {
        HttpExecutor::builder()
            .secret_lookup(move |name| {
                env.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            })
            .with_resolver(|_| {
                Some(HttpTarget {
                    url: "http://127.0.0.1:9/x".into(),
                    timeout: Duration::from_secs(5),
                    signing_secret_env: Some("HOOK_SECRET".into()),
                })
            })
            .unwrap()
    }

    #[test]
    fn registration_checks_the_capability_secret_variable() {
        let exec = executor(&[("HOOK_SECRET", SECRET), ("HOOK_BAD", "whsec_c2hvcnQ=")]);
        assert_eq!(exec.check_capability(&hook(None)), Ok(()));
        assert_eq!(exec.check_capability(&hook(Some("HOOK_SECRET"))), Ok(()));
        let unset = exec
            .check_capability(&hook(Some("HOOK_UNSET")))
            .unwrap_err();
        assert_eq!(unset.field, "executor.signingSecretEnv");
        assert!(
            unset
                .message
                .starts_with("environment variable `HOOK_UNSET` is not set"),
            "{}",
            unset.message
        );
        let bad = exec.check_capability(&hook(Some("HOOK_BAD"))).unwrap_err();
        assert_eq!(
            bad.message,
            "environment variable `HOOK_BAD`: a signing secret must hold 24 to 64 bytes of key; this one holds 5"
        );
        let pasted = exec.check_capability(&hook(Some(SECRET))).unwrap_err();
        assert!(!pasted.message.contains(&SECRET[6..]), "{}", pasted.message);
        let builtin = Capability::new(
            "b",
            crate::catalog::CapabilityKind::Execution,
            ExecutorSpec::Builtin {
                handler: "h".into(),
            },
        );
        assert_eq!(exec.check_capability(&builtin), Ok(()));
    }

    #[tokio::test]
    async fn a_capability_secret_gone_at_call_time_fails_the_node_before_any_request() {
        let err = executor(&[]).execute(call()).await.unwrap_err();
        assert_eq!(
            (err.code.as_str(), err.retryable),
            ("WEBHOOK_SECRET_MISSING", false)
        );
        assert!(
            err.message.starts_with(
                "capability `writer.hook` cannot sign its webhook call: environment variable `HOOK_SECRET` is not set"
            ),
            "{}",
            err.message
        );
        let err = executor(&[("HOOK_SECRET", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")])
            .execute(call())
            .await
            .unwrap_err();
        assert_eq!(
            (err.code.as_str(), err.retryable),
            ("WEBHOOK_SECRET_INVALID", false)
        );
        assert!(!err.message.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
    }

    #[test]
    fn secret_variable_names_are_variable_names() {
        for good in ["HOOK_SECRET", "_x", "a1"] {
            assert_eq!(check_secret_env_name(good), Ok(()), "{good}");
        }
        for bad in ["", "1A", "A-B", "A B", "A=B", "É"] {
            assert!(check_secret_env_name(bad).is_err(), "{bad}");
        }
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
                signing_secret_env: None,
            })
        })
        .unwrap();
        let err = exec.execute(call()).await.unwrap_err();
        assert_eq!((err.code.as_str(), err.retryable), ("HTTP_CONNECT", true));
    }
}
