//! Errors of the OpenAI-compatible client and its configuration.

/// A configuration value is missing or unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A required setting is absent.
    #[error("missing configuration `{name}`")]
    Missing {
        /// The setting (environment variable or field).
        name: String,
    },
    /// A setting has an unusable value.
    #[error("invalid configuration `{field}`: {message}")]
    Invalid {
        /// The setting (environment variable or field).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the http client: {0}")]
    Client(String),
}

/// A Chat Completions call failed. Messages name the endpoint and the attempts made, never
/// the API key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChatError {
    /// Every attempt timed out.
    #[error("{endpoint} did not answer within {timeout_ms} ms ({attempts} attempt(s))")]
    Timeout {
        /// The URL called.
        endpoint: String,
        /// Per-attempt timeout.
        timeout_ms: u64,
        /// Attempts made.
        attempts: u32,
    },
    /// The endpoint could not be reached (connection refused, reset, DNS).
    #[error("cannot reach {endpoint}: {message} ({attempts} attempt(s))")]
    Connect {
        /// The URL called.
        endpoint: String,
        /// The transport error.
        message: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The endpoint answered with a non-success status (after retries, for retryable ones).
    #[error("{endpoint} answered http {status} ({attempts} attempt(s)): {body}")]
    Status {
        /// The URL called.
        endpoint: String,
        /// HTTP status code.
        status: u16,
        /// The error message from the body, shortened.
        body: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The endpoint asked to wait longer than the configured maximum.
    #[error("{endpoint} asked to retry after {seconds} s, more than the {max_seconds} s allowed")]
    RetryAfterTooLong {
        /// The URL called.
        endpoint: String,
        /// What `Retry-After` asked for.
        seconds: u64,
        /// The configured maximum.
        max_seconds: u64,
    },
    /// A 2xx body that is not a chat completion.
    #[error("{endpoint} answered with a body that is not a chat completion: {message}")]
    Malformed {
        /// The URL called.
        endpoint: String,
        /// What is wrong, with the start of the body.
        message: String,
    },
    /// The reply was cut at the token limit (`finish_reason: "length"`).
    #[error(
        "the reply was truncated at the token limit (finish_reason `length`, {completion_tokens} completion tokens, max_tokens {max_tokens})"
    )]
    Truncated {
        /// Completion tokens the server reported (0 when not reported).
        completion_tokens: u64,
        /// The `max_tokens` sent.
        max_tokens: u32,
    },
    /// The reply carries no content (a refusal, a content filter, an empty message).
    #[error("the reply has no usable content: {reason}")]
    NoContent {
        /// Finish reason or refusal text.
        reason: String,
    },
}

impl ChatError {
    /// Whether calling again later may succeed: everything except client errors
    /// (4xx other than 408, 409 and 429) such as bad credentials or an unknown model.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Status { status, .. } => is_retryable_status(*status),
            Self::Timeout { .. }
            | Self::Connect { .. }
            | Self::RetryAfterTooLong { .. }
            | Self::Malformed { .. }
            | Self::Truncated { .. }
            | Self::NoContent { .. } => true,
        }
    }
}

/// 408, 409, 429 and every 5xx are worth another attempt.
pub(crate) fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 409 | 429) || (500..600).contains(&status)
}
