//! W3C trace context for the engine's spans, without a dependency on OpenTelemetry.
//!
//! The engine makes plain `tracing` spans: `run` (one per run driver, field `run_id`), and as
//! its children `planner_call` (one per planner call) and `node` (one per node attempt); see
//! `docs/TELEMETRY.md`. What links them to a caller's trace, and what puts a `traceparent`
//! header on webhook and model requests, is a pair of [`TraceHooks`] a binary installs once
//! with [`install`] (the `flexrun` binary does, with OpenTelemetry, when `serve` is given
//! `--otlp-endpoint`). Without hooks both are no-ops, so an embedder pays nothing.
//!
//! A run's parent context is its submission's `traceparent` (the `POST /v1/runs` header),
//! stored with the run's envelope under the metadata key [`TRACEPARENT_METADATA_KEY`] so a
//! run resumed after a restart still joins its trace.

use std::sync::OnceLock;

use serde_json::{Map, Value};
use tracing::Span;

/// The W3C trace-context header name.
pub const TRACEPARENT: &str = "traceparent";

/// The reserved envelope metadata key a run's parent `traceparent` is stored under.
pub const TRACEPARENT_METADATA_KEY: &str = "flexrun.traceparent";

/// What links the engine's `tracing` spans to a tracing system; installed once by the binary.
#[derive(Debug, Clone, Copy)]
pub struct TraceHooks {
    /// Makes the span a child of the remote span a (valid) `traceparent` names.
    pub set_parent: fn(&Span, &str),
    /// The `traceparent` header value naming the span, when it is exported.
    pub traceparent: fn(&Span) -> Option<String>,
}

static HOOKS: OnceLock<TraceHooks> = OnceLock::new();

/// Installs the hooks for the process; returns false (and changes nothing) when some were
/// installed already.
pub fn install(hooks: TraceHooks) -> bool {
    HOOKS.set(hooks).is_ok()
}

/// The `traceparent` header value naming `span`, when hooks are installed and the span is
/// exported; what outgoing webhook and model requests carry.
pub fn traceparent(span: &Span) -> Option<String> {
    let hooks = HOOKS.get()?;
    if span.is_disabled() {
        return None;
    }
    (hooks.traceparent)(span)
}

/// Parents `span` on the remote span `traceparent` names, when hooks are installed.
pub(crate) fn set_parent(span: &Span, traceparent: &str) {
    if let Some(hooks) = HOOKS.get()
        && !span.is_disabled()
    {
        (hooks.set_parent)(span, traceparent);
    }
}

/// The run's stored parent `traceparent`, if its metadata holds a valid one.
pub(crate) fn parent_of(metadata: &Map<String, Value>) -> Option<&str> {
    metadata
        .get(TRACEPARENT_METADATA_KEY)
        .and_then(Value::as_str)
        .filter(|v| is_valid_traceparent(v))
}

/// Whether `value` is a `traceparent` header the W3C Trace Context spec lets a receiver use:
/// `version-traceid-parentid-flags` in lowercase hex, version not `ff`, ids not all zeros;
/// version `00` has exactly these four fields, later versions may append more after a `-`.
pub fn is_valid_traceparent(value: &str) -> bool {
    let b = value.as_bytes();
    let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let zeros = |s: &[u8]| s.iter().all(|c| *c == b'0');
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return false;
    }
    let (version, trace, parent, flags) = (&b[0..2], &b[3..35], &b[36..52], &b[53..55]);
    if !(hex(version) && hex(trace) && hex(parent) && hex(flags)) || version == b"ff" {
        return false;
    }
    if zeros(trace) || zeros(parent) {
        return false;
    }
    if version == b"00" {
        b.len() == 55
    } else {
        b.len() == 55 || b[55] == b'-'
    }
}

#[cfg(test)]
mod tests {
    use super::is_valid_traceparent;

    #[test]
    fn accepts_the_spec_example_and_rejects_malformed_headers() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_valid_traceparent(ok));
        assert!(is_valid_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
        ));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(!is_valid_traceparent(bad), "{bad}");
        }
    }
}
