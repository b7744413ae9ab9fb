//! `ChatClient`: one structured-output Chat Completions call with timeout, bounded retries,
//! exponential backoff with jitter and `Retry-After`, a sticky `response_format` fallback on
//! 400, plus counters.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::config::{OpenAiConfig, ResponseFormat};
use super::error::{ChatError, ConfigError, is_retryable_status};
use crate::fsm::TokenUsage;

/// Who speaks a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The request.
    User,
    /// A previous model answer.
    Assistant,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who speaks.
    pub role: Role,
    /// What is said.
    pub content: String,
}

impl ChatMessage {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
        }
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }
}

/// A structured-output request: the messages and the JSON Schema the reply must match.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// Model; the client's configured model when `None`.
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Name of the schema (`response_format.json_schema.name`, and named in the system
    /// message when the schema travels there).
    pub schema_name: String,
    /// The JSON Schema of the reply.
    pub schema: Value,
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<WireFormat<'a>>,
    max_tokens: u32,
    temperature: f32,
    stream: bool,
}

#[derive(Serialize)]
struct WireFormat<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    json_schema: Option<WireSchema<'a>>,
}

#[derive(Serialize)]
struct WireSchema<'a> {
    name: &'a str,
    strict: bool,
    schema: &'a Value,
}

#[derive(Deserialize)]
struct WireReply {
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// A successful reply.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatReply {
    /// The message content (the JSON text the schema asked for).
    pub content: String,
    /// The finish reason reported (`stop` normally).
    pub finish_reason: Option<String>,
    /// Token usage, when the server reports it.
    pub usage: Option<TokenUsage>,
    /// HTTP attempts made (1 = no retry).
    pub attempts: u32,
    /// Time spent waiting on the network and the server in the successful attempt.
    pub server_time: Duration,
}

/// Counters of a client (and of the planner or executor that owns it).
#[derive(Debug, Default)]
pub struct OpenAiMetrics {
    calls: AtomicU64,
    attempts: AtomicU64,
    retries: AtomicU64,
    failures: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    server_micros: AtomicU64,
    overhead_micros: AtomicU64,
    format_fallbacks: AtomicU64,
    /// [`ResponseFormat::code`] of the mode calls start in.
    response_format: AtomicU8,
}

/// A point-in-time copy of [`OpenAiMetrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenAiMetricsSnapshot {
    /// Calls started (one per plan request or node attempt).
    pub calls: u64,
    /// HTTP attempts made.
    pub attempts: u64,
    /// Attempts that were retries.
    pub retries: u64,
    /// Calls that ended in an error (transport, status, or an unusable reply).
    pub failures: u64,
    /// Prompt tokens reported by the server.
    pub prompt_tokens: u64,
    /// Completion tokens reported by the server.
    pub completion_tokens: u64,
    /// Time spent waiting on the server (successful attempts), in microseconds.
    pub server_micros: u64,
    /// Time spent on our side (building requests, parsing and checking replies), in
    /// microseconds.
    pub overhead_micros: u64,
    /// Times a 400 made the client fall back to the next response format.
    pub format_fallbacks: u64,
    /// The response format calls start in now: the configured one, or the one a fallback
    /// settled on.
    pub response_format: ResponseFormat,
}

impl OpenAiMetrics {
    /// Reads every counter.
    pub fn snapshot(&self) -> OpenAiMetricsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        OpenAiMetricsSnapshot {
            calls: get(&self.calls),
            attempts: get(&self.attempts),
            retries: get(&self.retries),
            failures: get(&self.failures),
            prompt_tokens: get(&self.prompt_tokens),
            completion_tokens: get(&self.completion_tokens),
            server_micros: get(&self.server_micros),
            overhead_micros: get(&self.overhead_micros),
            format_fallbacks: get(&self.format_fallbacks),
            response_format: self.response_format(),
        }
    }

    /// The response format calls start in now.
    pub fn response_format(&self) -> ResponseFormat {
        ResponseFormat::from_code(self.response_format.load(Ordering::Acquire))
    }

    /// Counts a failed call (also used by owners whose post-processing failed).
    pub(crate) fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds time spent on our side.
    pub(crate) fn overhead(&self, d: Duration) {
        self.overhead_micros.fetch_add(micros(d), Ordering::Relaxed);
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The API key, read once from the environment; never printed.
#[derive(Clone)]
struct ApiKey(String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// An OpenAI-compatible Chat Completions client for structured output.
#[derive(Clone)]
pub struct ChatClient {
    http: reqwest::Client,
    config: Arc<OpenAiConfig>,
    endpoint: Arc<str>,
    api_key: Option<ApiKey>,
    metrics: Arc<OpenAiMetrics>,
}

impl fmt::Debug for ChatClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatClient")
            .field("endpoint", &self.endpoint)
            .field("model", &self.config.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl ChatClient {
    /// Builds a client, reading the API key from the environment variable the config names.
    ///
    /// # Errors
    /// [`ConfigError`] when the config is invalid or the HTTP client cannot be built.
    pub fn new(config: OpenAiConfig) -> Result<Self, ConfigError> {
        let key = std::env::var(&config.api_key_env).ok();
        Self::with_api_key(config, key)
    }

    /// Builds a client with an explicit API key (`None`: no `Authorization` header).
    ///
    /// # Errors
    /// [`ConfigError`] when the config is invalid or the HTTP client cannot be built.
    pub fn with_api_key(
        config: OpenAiConfig,
        api_key: Option<String>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let http = crate::http_client::client_builder()
            .connect_timeout(config.timeout)
            .build()
            .map_err(|e| ConfigError::Client(e.to_string()))?;
        let metrics = OpenAiMetrics::default();
        metrics
            .response_format
            .store(config.response_format.code(), Ordering::Release);
        Ok(Self {
            http,
            endpoint: config.endpoint().into(),
            config: Arc::new(config),
            api_key: api_key.filter(|k| !k.trim().is_empty()).map(ApiKey),
            metrics: Arc::new(metrics),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<OpenAiMetrics> {
        &self.metrics
    }

    /// Sends one structured-output request, retrying transport errors, timeouts, 408, 409,
    /// 429 and 5xx up to `max_attempts` with exponential backoff and jitter (or the server's
    /// `Retry-After`), and returns the first choice's content.
    ///
    /// The request starts in the client's current [`ResponseFormat`]. A 400 to a request
    /// that carried a `response_format` switches the client to the next mode for good and
    /// resends at once, without using up an attempt.
    ///
    /// # Errors
    /// [`ChatError`]: the last failure once attempts are exhausted, a non-retryable status at
    /// once, a body that is not a chat completion, a truncated or empty reply.
    pub async fn complete(&self, request: &ChatRequest) -> Result<ChatReply, ChatError> {
        self.metrics.calls.fetch_add(1, Ordering::Relaxed);
        let model = request.model.as_deref().unwrap_or(&self.config.model);
        tracing::Span::current().record("model", model);
        let result = self.complete_inner(request).await;
        if result.is_err() {
            self.metrics.failed();
        }
        result
    }

    async fn complete_inner(&self, request: &ChatRequest) -> Result<ChatReply, ChatError> {
        let mut mode = self.metrics.response_format();
        let mut body = self.encode(request, mode)?;
        let max = self.config.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            self.metrics.attempts.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let outcome = self.attempt(body.clone(), attempt).await;
            let server_time = started.elapsed();
            let wait = match outcome {
                Attempt::Done(bytes) => {
                    self.metrics
                        .server_micros
                        .fetch_add(micros(server_time), Ordering::Relaxed);
                    let parsing = Instant::now();
                    let reply = self.parse(&bytes, attempt, server_time);
                    self.metrics.overhead(parsing.elapsed());
                    return reply;
                }
                Attempt::Fatal(e) => match self.fall_back(mode, &e) {
                    Some(next) => {
                        mode = next;
                        body = self.encode(request, mode)?;
                        continue;
                    }
                    None => return Err(e),
                },
                Attempt::Retry { error, retry_after } => {
                    if attempt >= max {
                        return Err(error);
                    }
                    match retry_after {
                        Some(after) if after > self.config.retry_after_max => {
                            return Err(ChatError::RetryAfterTooLong {
                                endpoint: self.endpoint.to_string(),
                                seconds: after.as_secs(),
                                max_seconds: self.config.retry_after_max.as_secs(),
                            });
                        }
                        Some(after) => after,
                        None => backoff(
                            attempt,
                            self.config.backoff_base,
                            self.config.backoff_max,
                            jitter_unit(),
                        ),
                    }
                }
            };
            tracing::debug!(
                endpoint = %self.endpoint,
                attempt,
                wait_ms = wait.as_millis() as u64,
                "retrying chat completion"
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
            self.metrics.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The request body in `mode`; outside `json_schema` the schema goes into the system
    /// message.
    fn encode(&self, request: &ChatRequest, mode: ResponseFormat) -> Result<Vec<u8>, ChatError> {
        let built = Instant::now();
        let (messages, response_format) = match mode {
            ResponseFormat::JsonSchema => (
                Cow::Borrowed(request.messages.as_slice()),
                Some(WireFormat {
                    kind: "json_schema",
                    json_schema: Some(WireSchema {
                        name: &request.schema_name,
                        strict: self.config.strict_schema,
                        schema: &request.schema,
                    }),
                }),
            ),
            ResponseFormat::JsonObject => (
                Cow::Owned(with_schema_in_prompt(request)),
                Some(WireFormat {
                    kind: "json_object",
                    json_schema: None,
                }),
            ),
            ResponseFormat::None => (Cow::Owned(with_schema_in_prompt(request)), None),
        };
        let body = serde_json::to_vec(&WireRequest {
            model: request.model.as_deref().unwrap_or(&self.config.model),
            messages: &messages,
            response_format,
            max_tokens: self.config.max_tokens,
            temperature: self.config.temperature,
            stream: false,
        })
        .map_err(|e| ChatError::Malformed {
            endpoint: self.endpoint.to_string(),
            message: format!("cannot encode the request: {e}"),
        })?;
        self.metrics.overhead(built.elapsed());
        Ok(body)
    }

    /// The mode to resend in after `error` in `mode`: the next one when the server answered
    /// 400 to a request carrying a `response_format`. Only the call that sees the current
    /// mode refused moves the client on (and counts and logs it); a call that raced it
    /// resends in the mode already chosen.
    fn fall_back(&self, mode: ResponseFormat, error: &ChatError) -> Option<ResponseFormat> {
        let ChatError::Status {
            status: 400, body, ..
        } = error
        else {
            return None;
        };
        let next = mode.next()?;
        match self.metrics.response_format.compare_exchange(
            mode.code(),
            next.code(),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                self.metrics
                    .format_fallbacks
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    endpoint = %self.endpoint,
                    from = mode.as_str(),
                    to = next.as_str(),
                    error = %shorten(body, 200),
                    "the server refused response_format {mode}; using {next} from now on"
                );
                Some(next)
            }
            Err(current) => Some(ResponseFormat::from_code(current)),
        }
    }

    async fn attempt(&self, body: Vec<u8>, attempt: u32) -> Attempt {
        let mut builder = self
            .http
            .post(&*self.endpoint)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(ApiKey(key)) = &self.api_key {
            builder = builder.bearer_auth(key);
        }
        if let Some(traceparent) = crate::telemetry::traceparent(&tracing::Span::current()) {
            builder = builder.header(crate::telemetry::TRACEPARENT, traceparent);
        }
        let timeout = self.config.timeout;
        let exchange = async {
            let response = builder.send().await?;
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = response.bytes().await?.to_vec();
            Ok::<_, reqwest::Error>((status, headers, bytes))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => Attempt::Retry {
                error: ChatError::Timeout {
                    endpoint: self.endpoint.to_string(),
                    timeout_ms: timeout.as_millis() as u64,
                    attempts: attempt,
                },
                retry_after: None,
            },
            Ok(Err(e)) if e.is_timeout() => Attempt::Retry {
                error: ChatError::Timeout {
                    endpoint: self.endpoint.to_string(),
                    timeout_ms: timeout.as_millis() as u64,
                    attempts: attempt,
                },
                retry_after: None,
            },
            Ok(Err(e)) => Attempt::Retry {
                error: ChatError::Connect {
                    endpoint: self.endpoint.to_string(),
                    message: transport_message(&e),
                    attempts: attempt,
                },
                retry_after: None,
            },
            Ok(Ok((status, _, bytes))) if status.is_success() => Attempt::Done(bytes),
            Ok(Ok((status, headers, bytes))) => {
                let error = ChatError::Status {
                    endpoint: self.endpoint.to_string(),
                    status: status.as_u16(),
                    body: error_text(&bytes),
                    attempts: attempt,
                };
                if is_retryable_status(status.as_u16()) {
                    Attempt::Retry {
                        error,
                        retry_after: retry_after(&headers, status),
                    }
                } else {
                    Attempt::Fatal(error)
                }
            }
        }
    }

    fn parse(
        &self,
        bytes: &[u8],
        attempts: u32,
        server_time: Duration,
    ) -> Result<ChatReply, ChatError> {
        let malformed = |message: String| ChatError::Malformed {
            endpoint: self.endpoint.to_string(),
            message,
        };
        let reply: WireReply = serde_json::from_slice(bytes)
            .map_err(|e| malformed(format!("{e}; body starts with {}", preview(bytes))))?;
        let usage = reply.usage.map(|u| TokenUsage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        });
        if let Some(u) = usage {
            self.metrics
                .prompt_tokens
                .fetch_add(u.prompt_tokens, Ordering::Relaxed);
            self.metrics
                .completion_tokens
                .fetch_add(u.completion_tokens, Ordering::Relaxed);
        }
        let choice = reply
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| malformed("`choices` is empty".to_owned()))?;
        if choice.finish_reason.as_deref() == Some("length") {
            return Err(ChatError::Truncated {
                completion_tokens: usage.map_or(0, |u| u.completion_tokens),
                max_tokens: self.config.max_tokens,
            });
        }
        if let Some(refusal) = choice.message.refusal.filter(|r| !r.is_empty()) {
            return Err(ChatError::NoContent {
                reason: format!("the model refused: {}", shorten(&refusal, 300)),
            });
        }
        let content = choice
            .message
            .content
            .filter(|c| !c.trim().is_empty())
            .ok_or_else(|| ChatError::NoContent {
                reason: format!(
                    "empty message (finish_reason `{}`)",
                    choice.finish_reason.as_deref().unwrap_or("none")
                ),
            })?;
        Ok(ChatReply {
            content,
            finish_reason: choice.finish_reason,
            usage,
            attempts,
            server_time,
        })
    }
}

/// The request's messages with a line giving the reply schema, appended to the leading
/// system message (so a fixed system prefix stays a prefix) or put first as one.
fn with_schema_in_prompt(request: &ChatRequest) -> Vec<ChatMessage> {
    let line = format!(
        "The reply must be one JSON object matching this JSON Schema (`{}`): {}",
        request.schema_name, request.schema
    );
    let mut messages = request.messages.clone();
    match messages.first_mut() {
        Some(first) if first.role == Role::System => {
            first.content.push('\n');
            first.content.push_str(&line);
        }
        Some(_) | None => messages.insert(0, ChatMessage::system(line)),
    }
    messages
}

enum Attempt {
    Done(Vec<u8>),
    Retry {
        error: ChatError,
        retry_after: Option<Duration>,
    },
    Fatal(ChatError),
}

/// Exponential backoff with "equal jitter": half of `base·2^(attempt-1)` (capped at `max`)
/// plus a random share of the other half. `unit` is a random number in `[0, 1)`.
pub(crate) fn backoff(attempt: u32, base: Duration, max: Duration, unit: f64) -> Duration {
    let exp = base
        .checked_mul(1u32 << attempt.saturating_sub(1).min(16))
        .unwrap_or(max)
        .min(max);
    let half = exp / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// A random number in `[0, 1)` from the OS generator (through v4 uuids).
fn jitter_unit() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() as u64 >> 11;
    bits as f64 / (1u64 << 53) as f64
}

/// The delay a 429 or 503 asks for: `Retry-After` in seconds (fractions tolerated).
/// HTTP dates are not honoured (the backoff applies instead).
pub(crate) fn retry_after(headers: &HeaderMap, status: StatusCode) -> Option<Duration> {
    if !matches!(status.as_u16(), 429 | 503) && !headers.contains_key(RETRY_AFTER) {
        return None;
    }
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let secs: f64 = value.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

fn transport_message(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The `error.message` of an OpenAI-style error body, else the start of the body.
fn error_text(bytes: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(bytes).ok();
    let message = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("error"))
            .or_else(|| v.get("message"))
            .and_then(Value::as_str)
    });
    match message {
        Some(m) => shorten(m, 300),
        None if bytes.is_empty() => "(empty body)".to_owned(),
        None => preview(bytes),
    }
}

fn preview(bytes: &[u8]) -> String {
    format!("`{}`", shorten(&String::from_utf8_lossy(bytes), 200))
}

/// The first `max` characters of `s`, with an ellipsis when cut.
pub(crate) fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn backoff_doubles_within_bounds_and_caps() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        assert_eq!(backoff(1, base, max, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(1, base, max, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(3, base, max, 0.0), Duration::from_millis(200));
        assert_eq!(backoff(3, base, max, 0.5), Duration::from_millis(300));
        assert_eq!(backoff(10, base, max, 1.0), max);
        assert_eq!(backoff(60, base, max, 0.0), max / 2);
        for _ in 0..100 {
            let u = jitter_unit();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
    }

    #[test]
    fn retry_after_seconds_are_honoured_dates_are_not() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, StatusCode::TOO_MANY_REQUESTS), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(
            retry_after(&h, StatusCode::TOO_MANY_REQUESTS),
            Some(Duration::from_secs(2))
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("0.25"));
        assert_eq!(
            retry_after(&h, StatusCode::SERVICE_UNAVAILABLE),
            Some(Duration::from_millis(250))
        );
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h, StatusCode::TOO_MANY_REQUESTS), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("-3"));
        assert_eq!(retry_after(&h, StatusCode::TOO_MANY_REQUESTS), None);
    }

    #[test]
    fn error_bodies_are_summarised() {
        assert_eq!(
            error_text(
                br#"{"error":{"message":"model `x` not found","type":"invalid_request_error"}}"#
            ),
            "model `x` not found"
        );
        assert_eq!(error_text(b""), "(empty body)");
        assert_eq!(
            error_text(b"<html>bad gateway</html>"),
            "`<html>bad gateway</html>`"
        );
        assert_eq!(shorten("abcdef", 3), "abc…");
        assert_eq!(shorten("abc", 3), "abc");
    }

    fn request() -> ChatRequest {
        ChatRequest {
            model: None,
            messages: vec![ChatMessage::system("rules"), ChatMessage::user("{}")],
            schema_name: "plan_draft".to_owned(),
            schema: serde_json::json!({"type": "object", "required": ["nodes"]}),
        }
    }

    fn encoded(mode: ResponseFormat, request: &ChatRequest) -> Value {
        let client =
            ChatClient::with_api_key(OpenAiConfig::new("http://127.0.0.1:9/v1", "m"), None)
                .unwrap();
        serde_json::from_slice(&client.encode(request, mode).unwrap()).unwrap()
    }

    #[test]
    fn each_response_format_shapes_the_body() {
        let req = request();
        let schema_line = r#"The reply must be one JSON object matching this JSON Schema (`plan_draft`): {"required":["nodes"],"type":"object"}"#;

        let body = encoded(ResponseFormat::JsonSchema, &req);
        assert_eq!(body["response_format"]["type"], "json_schema");
        assert_eq!(body["response_format"]["json_schema"]["name"], "plan_draft");
        assert_eq!(body["response_format"]["json_schema"]["strict"], true);
        assert_eq!(body["response_format"]["json_schema"]["schema"], req.schema);
        assert_eq!(body["messages"][0]["content"], "rules");

        let body = encoded(ResponseFormat::JsonObject, &req);
        assert_eq!(
            body["response_format"],
            serde_json::json!({"type": "json_object"})
        );
        assert_eq!(
            body["messages"][0]["content"],
            format!("rules\n{schema_line}")
        );
        assert_eq!(body["messages"][1]["content"], "{}");

        let body = encoded(ResponseFormat::None, &req);
        assert!(body.get("response_format").is_none(), "{body}");
        assert_eq!(
            body["messages"][0]["content"],
            format!("rules\n{schema_line}")
        );

        let mut no_system = request();
        no_system.messages.remove(0);
        let body = encoded(ResponseFormat::None, &no_system);
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["messages"][0]["content"], schema_line);
        assert_eq!(body["messages"][1]["role"], "user");
    }

    #[test]
    fn only_a_400_to_a_response_format_falls_back_and_only_once_per_mode() {
        let client =
            ChatClient::with_api_key(OpenAiConfig::new("http://127.0.0.1:9/v1", "m"), None)
                .unwrap();
        let status = |status| ChatError::Status {
            endpoint: "e".into(),
            status,
            body: "bad response_format".into(),
            attempts: 1,
        };
        assert_eq!(
            client.fall_back(ResponseFormat::JsonSchema, &status(401)),
            None
        );
        assert_eq!(
            client.fall_back(ResponseFormat::JsonSchema, &status(400)),
            Some(ResponseFormat::JsonObject)
        );
        assert_eq!(
            client.fall_back(ResponseFormat::JsonSchema, &status(400)),
            Some(ResponseFormat::JsonObject),
            "a call that raced the first fallback resends in the chosen mode"
        );
        assert_eq!(client.metrics().snapshot().format_fallbacks, 1);
        assert_eq!(
            client.fall_back(ResponseFormat::JsonObject, &status(400)),
            Some(ResponseFormat::None)
        );
        assert_eq!(client.fall_back(ResponseFormat::None, &status(400)), None);
        let m = client.metrics().snapshot();
        assert_eq!(
            (m.format_fallbacks, m.response_format),
            (2, ResponseFormat::None)
        );
        let configured = ChatClient::with_api_key(
            OpenAiConfig {
                response_format: ResponseFormat::JsonObject,
                ..OpenAiConfig::new("http://127.0.0.1:9/v1", "m")
            },
            None,
        )
        .unwrap();
        assert_eq!(
            configured.metrics().response_format(),
            ResponseFormat::JsonObject
        );
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let client = ChatClient::with_api_key(
            OpenAiConfig::new("http://127.0.0.1:9/v1", "m"),
            Some("sk-secret-123".to_owned()),
        )
        .unwrap();
        let text = format!("{client:?}");
        assert!(!text.contains("sk-secret-123"), "{text}");
        assert!(text.contains("<redacted>"));
    }

    #[test]
    fn retryable_classification() {
        let status = |status| ChatError::Status {
            endpoint: "e".into(),
            status,
            body: String::new(),
            attempts: 1,
        };
        assert!(status(429).is_retryable());
        assert!(status(503).is_retryable());
        assert!(!status(401).is_retryable());
        assert!(!status(400).is_retryable());
        assert!(
            ChatError::Truncated {
                completion_tokens: 5,
                max_tokens: 5
            }
            .is_retryable()
        );
    }
}
