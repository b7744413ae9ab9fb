//! `OpenAiConfig`: where the endpoint is and how hard to try.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::ConfigError;

/// The environment variable read for the API key when none is named.
pub const DEFAULT_API_KEY_ENV: &str = "OPENAI_API_KEY";

/// How a request asks for the reply's shape (`response_format`).
///
/// Servers differ in what they accept: OpenAI, vLLM and llama.cpp's server enforce a JSON
/// Schema, some older or smaller servers only know JSON mode, and a few refuse the field
/// altogether. In the last two modes the schema travels in the system message instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormat {
    /// `{"type":"json_schema","json_schema":{"name","strict","schema"}}`: the server
    /// constrains the reply to the schema.
    #[default]
    JsonSchema,
    /// `{"type":"json_object"}`: the server constrains the reply to some JSON object.
    JsonObject,
    /// No `response_format` at all.
    None,
}

impl ResponseFormat {
    /// Every mode, in fallback order.
    pub const ALL: [Self; 3] = [Self::JsonSchema, Self::JsonObject, Self::None];

    /// The stable name: `json_schema`, `json_object` or `none`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::JsonSchema => "json_schema",
            Self::JsonObject => "json_object",
            Self::None => "none",
        }
    }

    /// The mode to fall back to when a server refuses this one: `json_schema` →
    /// `json_object` → `none`; `None` after `none`.
    pub const fn next(self) -> Option<Self> {
        match self {
            Self::JsonSchema => Some(Self::JsonObject),
            Self::JsonObject => Some(Self::None),
            Self::None => None,
        }
    }

    pub(crate) const fn code(self) -> u8 {
        match self {
            Self::JsonSchema => 0,
            Self::JsonObject => 1,
            Self::None => 2,
        }
    }

    pub(crate) const fn from_code(code: u8) -> Self {
        match code {
            0 => Self::JsonSchema,
            1 => Self::JsonObject,
            _ => Self::None,
        }
    }
}

impl fmt::Display for ResponseFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ResponseFormat {
    type Err = ConfigError;

    /// Parses a mode name (case and `-`/`_` do not matter).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == wanted)
            .ok_or_else(|| ConfigError::Invalid {
                field: "response_format".to_owned(),
                message: format!("`{s}` is not one of json_schema, json_object, none"),
            })
    }
}

/// How to reach an OpenAI-compatible Chat Completions endpoint and how hard to try.
///
/// The API key itself is never stored here: only the *name* of the environment variable
/// that holds it. The key is read once when a client is built and is never logged, put in
/// an error or an event.
#[derive(Clone, PartialEq)]
pub struct OpenAiConfig {
    /// Base URL including the API prefix, e.g. `https://api.openai.com/v1` or
    /// `http://127.0.0.1:8080/v1`; `/chat/completions` is appended.
    pub base_url: String,
    /// Model name sent in every request.
    pub model: String,
    /// Name of the environment variable holding the API key; when the variable is unset or
    /// empty no `Authorization` header is sent (local servers).
    pub api_key_env: String,
    /// Timeout of one HTTP attempt (connect, send, wait, read).
    pub timeout: Duration,
    /// HTTP attempts per call (1 = no retry), at least 1.
    pub max_attempts: u32,
    /// First backoff delay; doubles per retry, with jitter.
    pub backoff_base: Duration,
    /// Upper bound of one backoff delay.
    pub backoff_max: Duration,
    /// Longest `Retry-After` honoured; a server asking for longer fails the call at once.
    pub retry_after_max: Duration,
    /// `max_tokens` of a reply.
    pub max_tokens: u32,
    /// Sampling temperature.
    pub temperature: f32,
    /// Send `strict: true` with the JSON schema (OpenAI's strict structured outputs; only
    /// in the `json_schema` mode).
    pub strict_schema: bool,
    /// The `response_format` calls start in. A server answering 400 to it makes the client
    /// fall back to [`ResponseFormat::next`] for the rest of its life.
    pub response_format: ResponseFormat,
    /// Longest string the reply schema allows (`maxLength`); `None` leaves strings unbounded
    /// (for endpoints that refuse the keyword).
    pub max_string_len: Option<u32>,
    /// Name the planner reports on `plan_generated` and that envelopes select it by.
    pub planner_name: String,
}

impl fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key_env", &self.api_key_env)
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .field("response_format", &self.response_format)
            .field("planner_name", &self.planner_name)
            .finish_non_exhaustive()
    }
}

impl OpenAiConfig {
    /// Defaults for `base_url` and `model`: key from `OPENAI_API_KEY`, 60 s per attempt,
    /// 3 attempts, backoff 500 ms doubling up to 8 s, `Retry-After` up to 60 s,
    /// 1024 reply tokens, temperature 0, strict `json_schema` response format, strings up to
    /// 400 characters.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key_env: DEFAULT_API_KEY_ENV.to_owned(),
            timeout: Duration::from_secs(60),
            max_attempts: 3,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(8),
            retry_after_max: Duration::from_secs(60),
            max_tokens: 1024,
            temperature: 0.0,
            strict_schema: true,
            response_format: ResponseFormat::JsonSchema,
            max_string_len: Some(400),
            planner_name: "openai".to_owned(),
        }
    }

    /// Reads the configuration from `FLEXRUN_PLANNER_*` environment variables:
    /// `BASE_URL` and `MODEL` (required), `API_KEY_ENV`, `TIMEOUT_MS`, `MAX_ATTEMPTS`,
    /// `MAX_TOKENS`, `TEMPERATURE`, `STRICT` (`true`/`false`), `RESPONSE_FORMAT`
    /// (`json_schema`, `json_object` or `none`), `MAX_STRING_LEN` (`0` = none).
    ///
    /// # Errors
    /// [`ConfigError`] naming the missing or unparsable variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`from_env`](Self::from_env) over any lookup (for tests and config files).
    ///
    /// # Errors
    /// [`ConfigError`] naming the missing or unparsable variable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |suffix: &str| {
            let name = format!("FLEXRUN_PLANNER_{suffix}");
            lookup(&name)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (name, v))
        };
        let required = |suffix: &str| {
            get(suffix)
                .map(|(_, v)| v)
                .ok_or_else(|| ConfigError::Missing {
                    name: format!("FLEXRUN_PLANNER_{suffix}"),
                })
        };
        let mut config = Self::new(required("BASE_URL")?, required("MODEL")?);
        if let Some((_, v)) = get("API_KEY_ENV") {
            config.api_key_env = v;
        }
        if let Some((name, v)) = get("TIMEOUT_MS") {
            config.timeout = Duration::from_millis(parse(&name, &v)?);
        }
        if let Some((name, v)) = get("MAX_ATTEMPTS") {
            config.max_attempts = parse(&name, &v)?;
        }
        if let Some((name, v)) = get("MAX_TOKENS") {
            config.max_tokens = parse(&name, &v)?;
        }
        if let Some((name, v)) = get("TEMPERATURE") {
            config.temperature = parse(&name, &v)?;
        }
        if let Some((name, v)) = get("STRICT") {
            config.strict_schema = parse(&name, &v)?;
        }
        if let Some((name, v)) = get("RESPONSE_FORMAT") {
            config.response_format = v.parse().map_err(|_| ConfigError::Invalid {
                field: name,
                message: format!("`{v}` is not one of json_schema, json_object, none"),
            })?;
        }
        if let Some((name, v)) = get("MAX_STRING_LEN") {
            let n: u32 = parse(&name, &v)?;
            config.max_string_len = (n > 0).then_some(n);
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks the values: a http(s) base URL, a model name, at least one attempt, a
    /// non-zero timeout.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            field: field.to_owned(),
            message,
        };
        let url = reqwest::Url::parse(&self.base_url)
            .map_err(|e| invalid("base_url", format!("`{}`: {e}", self.base_url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(
                "base_url",
                format!("`{}` is not an http(s) url", self.base_url),
            ));
        }
        if self.model.trim().is_empty() {
            return Err(invalid("model", "the model name is empty".to_owned()));
        }
        if self.max_attempts == 0 {
            return Err(invalid("max_attempts", "must be at least 1".to_owned()));
        }
        if self.timeout.is_zero() {
            return Err(invalid("timeout", "must be more than zero".to_owned()));
        }
        if self.max_tokens == 0 {
            return Err(invalid("max_tokens", "must be at least 1".to_owned()));
        }
        Ok(())
    }

    /// The Chat Completions URL.
    pub fn endpoint(&self) -> String {
        format!("{}/chat/completions", self.base_url.trim_end_matches('/'))
    }
}

fn parse<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    value
        .trim()
        .parse()
        .map_err(|e: T::Err| ConfigError::Invalid {
            field: name.to_owned(),
            message: format!("`{value}`: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn reads_the_environment_with_defaults() {
        let c = OpenAiConfig::from_lookup(lookup(&[
            ("FLEXRUN_PLANNER_BASE_URL", "http://127.0.0.1:8080/v1/"),
            ("FLEXRUN_PLANNER_MODEL", "smol"),
            ("FLEXRUN_PLANNER_TIMEOUT_MS", "1500"),
            ("FLEXRUN_PLANNER_MAX_STRING_LEN", "0"),
            ("FLEXRUN_PLANNER_STRICT", "false"),
        ]))
        .unwrap();
        assert_eq!(c.endpoint(), "http://127.0.0.1:8080/v1/chat/completions");
        assert_eq!(c.timeout, Duration::from_millis(1500));
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.max_string_len, None);
        assert!(!c.strict_schema);
        assert_eq!(c.api_key_env, DEFAULT_API_KEY_ENV);
        assert_eq!(c.response_format, ResponseFormat::JsonSchema);
        let c = OpenAiConfig::from_lookup(lookup(&[
            ("FLEXRUN_PLANNER_BASE_URL", "http://x/v1"),
            ("FLEXRUN_PLANNER_MODEL", "m"),
            ("FLEXRUN_PLANNER_RESPONSE_FORMAT", "json_object"),
        ]))
        .unwrap();
        assert_eq!(c.response_format, ResponseFormat::JsonObject);
        let e = OpenAiConfig::from_lookup(lookup(&[
            ("FLEXRUN_PLANNER_BASE_URL", "http://x/v1"),
            ("FLEXRUN_PLANNER_MODEL", "m"),
            ("FLEXRUN_PLANNER_RESPONSE_FORMAT", "xml"),
        ]))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid configuration `FLEXRUN_PLANNER_RESPONSE_FORMAT`: `xml` is not one of \
             json_schema, json_object, none"
        );
    }

    #[test]
    fn response_formats_parse_print_and_fall_back_in_order() {
        for mode in ResponseFormat::ALL {
            assert_eq!(mode.as_str().parse::<ResponseFormat>(), Ok(mode));
            assert_eq!(mode.to_string(), mode.as_str());
            assert_eq!(ResponseFormat::from_code(mode.code()), mode);
            assert_eq!(
                serde_json::to_value(mode).unwrap(),
                serde_json::Value::from(mode.as_str())
            );
            assert_eq!(
                serde_json::from_value::<ResponseFormat>(mode.as_str().into()).unwrap(),
                mode
            );
        }
        assert_eq!(" JSON-Object ".parse(), Ok(ResponseFormat::JsonObject));
        let e = "yaml".parse::<ResponseFormat>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid configuration `response_format`: `yaml` is not one of json_schema, \
             json_object, none"
        );
        assert_eq!(ResponseFormat::default(), ResponseFormat::JsonSchema);
        assert_eq!(
            ResponseFormat::JsonSchema.next(),
            Some(ResponseFormat::JsonObject)
        );
        assert_eq!(
            ResponseFormat::JsonObject.next(),
            Some(ResponseFormat::None)
        );
        assert_eq!(ResponseFormat::None.next(), None);
    }

    #[test]
    fn names_the_missing_or_bad_variable() {
        let e = OpenAiConfig::from_lookup(lookup(&[("FLEXRUN_PLANNER_BASE_URL", "http://x/v1")]))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "missing configuration `FLEXRUN_PLANNER_MODEL`"
        );
        let e = OpenAiConfig::from_lookup(lookup(&[
            ("FLEXRUN_PLANNER_BASE_URL", "http://x/v1"),
            ("FLEXRUN_PLANNER_MODEL", "m"),
            ("FLEXRUN_PLANNER_MAX_ATTEMPTS", "many"),
        ]))
        .unwrap_err();
        assert!(
            e.to_string().contains("FLEXRUN_PLANNER_MAX_ATTEMPTS")
                && e.to_string().contains("many"),
            "{e}"
        );
        let e = OpenAiConfig::new("ftp://x", "m").validate().unwrap_err();
        assert!(e.to_string().contains("base_url"), "{e}");
        let mut c = OpenAiConfig::new("http://x/v1", "m");
        c.max_attempts = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("max_attempts")
        );
    }

    #[test]
    fn debug_output_names_the_key_variable_only() {
        let c = OpenAiConfig::new("http://x/v1", "m");
        let text = format!("{c:?}");
        assert!(text.contains("OPENAI_API_KEY"));
    }
}
