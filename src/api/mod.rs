//! The HTTP API (DESIGN §5, §8): [`router`] builds the axum router used by `flexrun serve`
//! and by tests, [`serve`] runs it with graceful shutdown. Also the wire renderings of events
//! shared by the CLI and the server: the SSE frame and a one-line human summary.
//!
//! ```no_run
//! # async fn demo(engine: flexrun::Engine) -> std::io::Result<()> {
//! use flexrun::api::{self, ApiConfig, AppState};
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let state = AppState::new(engine.clone(), ApiConfig::default());
//! api::serve(listener, state, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! engine.shutdown().await;
//! # Ok(()) }
//! ```

mod access;
mod console;
mod dto;
mod error;
mod extract;
mod forward;
mod list_query;
mod metrics;
mod openapi;
mod plan_svg;
mod routes;
mod sse;
mod state;
mod stream_token;

pub use access::check_cors_origin;
pub use dto::policies;
pub use dto::{
    AgentTypeDto, BudgetView, CapabilityDto, CapabilityList, CapabilityStatusDto, DecisionDto,
    DirectionDto, ErrorBody, ErrorDetail, EventDoc, ExecutorDto, FacetDto, FacetList, Health,
    HitlAnswerRequest, HitlList, HitlStatusDto, HitlView, KindDto, NodeStatusDto, NodeView,
    OutputContractDto, PlanDiffView, PlanEdgeDto, PlanNodeDto, PlanVersions, PlanView,
    ReasonRequest, ResponderDto, ResumeRequest, RunAck, RunCreated, RunDetail, RunErrorDto,
    RunList, RunRequest, RunStatusDto, RunSummary, SignalRequest,
};
pub use error::ApiError;
pub use extract::{ApiJson, ApiPath, ApiQuery, OptionalJson};
pub use openapi::ApiDoc;
pub use routes::router;
pub use state::{ApiConfig, AppState, Shutdown};

use std::future::Future;

/// Serves [`router`]`(state)` on `listener` until `signal` resolves or the state's
/// [`Shutdown`] is triggered. Then open event streams end, the server stops accepting and
/// waits for requests in flight. The engine is left running: call
/// [`Engine::shutdown`](crate::Engine::shutdown) afterwards.
///
/// # Errors
/// I/O errors of the listener.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shutdown = state.shutdown();
    let app = router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                () = signal => {}
                () = shutdown.triggered() => {}
            }
            shutdown.trigger();
        })
        .await
}

use std::fmt::Write as _;

use crate::fsm::{EventBody, PlannerOutput, RunEvent};

/// The SSE frame of an event: `event: <type>`, `id: <seq>`, `data: <json>`, blank line.
pub fn sse_frame(event: &RunEvent) -> String {
    crate::engine::fanout::sse_frame(event)
}

/// A one-line human summary of an event, for terminals and logs.
pub fn summary(event: &RunEvent) -> String {
    let mut s = String::new();
    let node = event.node_id.as_deref().unwrap_or("");
    match &event.body {
        EventBody::PlanRequested {
            phase,
            attempt,
            trigger,
            error,
        } => {
            let _ = write!(s, "{phase:?} plan, attempt {attempt}");
            if let Some(t) = trigger {
                let _ = write!(s, ", because {}", t.reason);
            }
            if let Some(e) = error {
                let _ = write!(s, ", after error: {e}");
            }
        }
        EventBody::PlanGenerated {
            planner,
            output,
            latency_ms,
            ..
        } => {
            let what = match output.as_ref() {
                PlannerOutput::Draft(d) => format!("draft of {} nodes", d.nodes.len()),
                PlannerOutput::Delta(d) => format!(
                    "delta of {} operations on v{}",
                    d.operations.len(),
                    d.base_version
                ),
                PlannerOutput::Unparsed(r) => {
                    format!("reply of {} bytes that is not a plan", r.bytes)
                }
            };
            let _ = write!(s, "{planner} returned a {what} in {latency_ms} ms");
        }
        EventBody::PlanAccepted {
            version,
            nodes,
            edges,
            ..
        } => {
            let _ = write!(s, "v{version} accepted: {nodes} nodes, {edges} edges");
        }
        EventBody::PlanUpdated {
            previous_version,
            version,
            diff,
            ..
        } => {
            let _ = write!(
                s,
                "v{previous_version} → v{version}: +{:?} -{:?} edges +{} -{}",
                diff.added_nodes,
                diff.removed_nodes,
                diff.added_edges.len(),
                diff.removed_edges.len()
            );
        }
        EventBody::PlanRejected {
            attempt,
            diagnostics,
            ..
        } => {
            let codes: Vec<String> = diagnostics
                .iter()
                .map(|d| format!("{} ({})", d.code, d.message))
                .collect();
            let _ = write!(s, "attempt {attempt} rejected: {}", codes.join("; "));
        }
        EventBody::NodeStart {
            attempt,
            capability_id,
            ..
        } => {
            let _ = write!(s, "{node} ← {capability_id} (attempt {attempt})");
        }
        EventBody::NodeComplete {
            output,
            duration_us,
            ..
        } => {
            let out = serde_json::to_string(output).unwrap_or_default();
            let out = if out.len() > 160 {
                format!("{}…", out.chars().take(160).collect::<String>())
            } else {
                out
            };
            let _ = write!(s, "{node} done in {}: {out}", micros(*duration_us));
        }
        EventBody::NodeError {
            attempt,
            error,
            will_retry,
            ..
        } => {
            let _ = write!(
                s,
                "{node} attempt {attempt} failed ({}): {}{}",
                error.code,
                error.message,
                retry(*will_retry)
            );
        }
        EventBody::ValidationError {
            attempt,
            errors,
            will_retry,
            ..
        } => {
            let _ = write!(
                s,
                "{node} attempt {attempt} output invalid: {}{}",
                errors.join("; "),
                retry(*will_retry)
            );
        }
        EventBody::PolicyTriggered {
            policy_id,
            action,
            trigger,
        } => {
            let _ = write!(s, "policy {policy_id} → {action}: {}", trigger.reason);
        }
        EventBody::HitlRequest {
            request_id,
            question,
            ..
        } => {
            let _ = write!(s, "{request_id}: {question}");
        }
        EventBody::HitlResolved {
            request_id,
            decision,
            next,
            ..
        } => {
            let _ = write!(s, "{request_id}: {decision:?} → {next:?}");
        }
        EventBody::RunPaused { reason } => {
            let _ = write!(s, "{reason}");
        }
        EventBody::RunResumed { reason, budgets } => {
            let _ = write!(s, "{reason}");
            for (resource, limit) in budgets {
                let _ = write!(s, "; budget {} raised to {limit}", resource.as_str());
            }
        }
        EventBody::Complete {
            status,
            output,
            error,
        } => {
            let _ = write!(s, "{status:?}");
            if let Some(o) = output {
                let _ = write!(s, " {o}");
            }
            if let Some(e) = error {
                let _ = write!(s, " {}: {}", e.code, e.message);
            }
        }
    }
    s
}

fn retry(will_retry: bool) -> &'static str {
    if will_retry { " (will retry)" } else { "" }
}

/// A duration in microseconds in the unit a reader takes in at a glance: `120 µs`, `12.35 ms`,
/// `1.50 s`.
fn micros(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.2} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::micros;

    #[test]
    fn durations_read_in_a_fitting_unit() {
        assert_eq!(micros(0), "0 µs");
        assert_eq!(micros(120), "120 µs");
        assert_eq!(micros(999), "999 µs");
        assert_eq!(micros(1_000), "1.00 ms");
        assert_eq!(micros(12_346), "12.35 ms");
        assert_eq!(micros(1_500_000), "1.50 s");
    }
}
