//! The OpenAI-compatible planner and `llm` executor over real HTTP: a scriptable fake server
//! for exact scenarios, and llama.cpp's server with a real (tiny) model.

#[allow(dead_code)]
#[path = "../engine/support.rs"]
mod support;

mod fake;
mod real;
mod wire;
