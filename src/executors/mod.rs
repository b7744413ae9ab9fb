//! Node executors shipped with the engine, one module per executor type.

pub mod http;
pub mod llm;
