//! `/metrics` in the Prometheus text exposition format (version 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::engine::Engine;
use crate::fsm::EventKind;
use crate::ids::RunId;
use crate::planner::openai::OpenAiMetricsSnapshot;
use crate::store::{RunHead, RunStatus};

const STATUSES: [RunStatus; 4] = [
    RunStatus::Active,
    RunStatus::Completed,
    RunStatus::Failed,
    RunStatus::Cancelled,
];

/// Renders the engine's counters, the runs of `runs` (every run in the store) and, when an
/// OpenAI-compatible planner is configured, its response format counters.
pub(crate) fn render(
    engine: &Engine,
    runs: &[(RunId, RunHead)],
    planner: Option<&OpenAiMetricsSnapshot>,
) -> String {
    let mut out = String::new();
    let mut by_status: BTreeMap<&'static str, u64> =
        STATUSES.iter().map(|s| (s.as_str(), 0)).collect();
    let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, head) in runs {
        *by_status.entry(head.status.as_str()).or_default() += 1;
        *by_state.entry(head.state.as_str()).or_default() += 1;
    }
    header(
        &mut out,
        "flexrun_runs",
        "gauge",
        "Runs in the store by status.",
    );
    for (status, n) in &by_status {
        let _ = writeln!(out, "flexrun_runs{{status=\"{status}\"}} {n}");
    }
    header(
        &mut out,
        "flexrun_runs_by_state",
        "gauge",
        "Runs in the store by run machine state.",
    );
    for (state, n) in &by_state {
        let _ = writeln!(
            out,
            "flexrun_runs_by_state{{state=\"{}\"}} {n}",
            escape(state)
        );
    }

    let metrics = engine.metrics();
    let events = metrics.events_by_kind();
    header(
        &mut out,
        "flexrun_transitions_total",
        "counter",
        "Committed run transitions (events) since start, by event type.",
    );
    for (kind, n) in &events {
        let _ = writeln!(out, "flexrun_transitions_total{{type=\"{kind}\"}} {n}");
    }
    let count = |wanted: EventKind| {
        events
            .iter()
            .find(|(k, _)| *k == wanted)
            .map_or(0, |(_, n)| *n)
    };
    header(
        &mut out,
        "flexrun_planner_calls_total",
        "counter",
        "Planner calls made since start.",
    );
    let _ = writeln!(
        out,
        "flexrun_planner_calls_total {}",
        metrics.planner_calls.load(Ordering::Relaxed)
    );
    header(
        &mut out,
        "flexrun_planner_latency_seconds",
        "summary",
        "Latency of planner answers (plan_generated events).",
    );
    let _ = writeln!(
        out,
        "flexrun_planner_latency_seconds_sum {}",
        metrics.planner_millis.load(Ordering::Relaxed) as f64 / 1e3
    );
    let _ = writeln!(
        out,
        "flexrun_planner_latency_seconds_count {}",
        metrics.planner_answers.load(Ordering::Relaxed)
    );
    header(
        &mut out,
        "flexrun_planner_tokens_total",
        "counter",
        "Tokens reported by model-backed planners.",
    );
    let _ = writeln!(
        out,
        "flexrun_planner_tokens_total{{kind=\"prompt\"}} {}",
        metrics.prompt_tokens.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "flexrun_planner_tokens_total{{kind=\"completion\"}} {}",
        metrics.completion_tokens.load(Ordering::Relaxed)
    );
    header(
        &mut out,
        "flexrun_node_tokens_total",
        "counter",
        "Tokens executors reported for node attempts (budgets' `nodeTokens`).",
    );
    let _ = writeln!(
        out,
        "flexrun_node_tokens_total {}",
        metrics.node_tokens.load(Ordering::Relaxed)
    );
    header(
        &mut out,
        "flexrun_spend_cost_total",
        "counter",
        "Cost spent by runs: capability cost of node attempts plus priced model tokens (budgets' `cost`).",
    );
    let _ = writeln!(
        out,
        "flexrun_spend_cost_total {}",
        metrics.cost_micros.load(Ordering::Relaxed) as f64 / 1e6
    );
    header(
        &mut out,
        "flexrun_plan_rejections_total",
        "counter",
        "Drafts and deltas rejected by validation since start.",
    );
    let _ = writeln!(
        out,
        "flexrun_plan_rejections_total {}",
        count(EventKind::PlanRejected)
    );
    if let Some(planner) = planner {
        response_format(&mut out, planner);
    }
    header(
        &mut out,
        "flexrun_node_duration_seconds",
        "summary",
        "Wall time of finished node attempts.",
    );
    let _ = writeln!(
        out,
        "flexrun_node_duration_seconds_sum {}",
        metrics.node_micros.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "flexrun_node_duration_seconds_count {}",
        metrics.node_attempts.load(Ordering::Relaxed)
    );
    let stats = engine.store().stats();
    header(
        &mut out,
        "flexrun_store_commits_total",
        "counter",
        "Store write transactions since start.",
    );
    let _ = writeln!(out, "flexrun_store_commits_total {}", stats.commits);
    header(
        &mut out,
        "flexrun_store_bytes_written_total",
        "counter",
        "Serialized bytes written to the store since start.",
    );
    let _ = writeln!(
        out,
        "flexrun_store_bytes_written_total {}",
        stats.bytes_written
    );
    header(
        &mut out,
        "flexrun_runs_driven",
        "gauge",
        "Runs this instance's actors drive now.",
    );
    let _ = writeln!(out, "flexrun_runs_driven {}", engine.driven_runs());
    for (name, help, value) in [
        (
            "flexrun_cluster_runs_taken_over_total",
            "Runs this instance took over from instances whose lease expired.",
            &metrics.runs_taken_over,
        ),
        (
            "flexrun_cluster_runs_lost_total",
            "Runs another instance took from this one.",
            &metrics.runs_lost,
        ),
        (
            "flexrun_cluster_remote_events_total",
            "Events of runs other instances drive, streamed to this instance's followers.",
            &metrics.remote_events,
        ),
    ] {
        header(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
    }
    let retention = *engine.retention().borrow();
    header(
        &mut out,
        "flexrun_retention_deleted_runs_total",
        "counter",
        "Ended runs deleted by retention sweeps since start.",
    );
    let _ = writeln!(
        out,
        "flexrun_retention_deleted_runs_total {}",
        retention.deleted
    );
    header(
        &mut out,
        "flexrun_store_compactions_total",
        "counter",
        "Store compactions run by retention sweeps since start.",
    );
    let _ = writeln!(
        out,
        "flexrun_store_compactions_total {}",
        retention.compactions
    );
    out
}

fn response_format(out: &mut String, planner: &OpenAiMetricsSnapshot) {
    header(
        out,
        "flexrun_planner_response_format_fallbacks_total",
        "counter",
        "Times a 400 made the OpenAI-compatible planner fall back to the next response format.",
    );
    let _ = writeln!(
        out,
        "flexrun_planner_response_format_fallbacks_total {}",
        planner.format_fallbacks
    );
    header(
        out,
        "flexrun_planner_response_format",
        "gauge",
        "The response format planner calls start in (1 for the effective mode).",
    );
    let _ = writeln!(
        out,
        "flexrun_planner_response_format{{mode=\"{}\"}} 1",
        planner.response_format.as_str()
    );
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_planner_response_format_is_a_counter_and_a_gauge() {
        let mut out = String::new();
        response_format(
            &mut out,
            &OpenAiMetricsSnapshot {
                format_fallbacks: 1,
                response_format: crate::planner::ResponseFormat::JsonObject,
                ..OpenAiMetricsSnapshot::default()
            },
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "# HELP flexrun_planner_response_format_fallbacks_total Times a 400 made the \
                 OpenAI-compatible planner fall back to the next response format.",
                "# TYPE flexrun_planner_response_format_fallbacks_total counter",
                "flexrun_planner_response_format_fallbacks_total 1",
                "# HELP flexrun_planner_response_format The response format planner calls start \
                 in (1 for the effective mode).",
                "# TYPE flexrun_planner_response_format gauge",
                "flexrun_planner_response_format{mode=\"json_object\"} 1",
            ]
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
