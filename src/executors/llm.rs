//! The `llm` executor type (OpenAI-compatible structured output).
