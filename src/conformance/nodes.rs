//! `node-lifecycle`: starts, ends, attempts and idempotency keys of a run's nodes.

use super::Rule;
use super::run::RunCheck;
use crate::fsm::{EventBody, RunEvent, RunOutcome};

/// What the checker knows about one node of the run.
#[derive(Debug, Default)]
pub(super) struct NodeTrack {
    /// The running attempt and the seq of its `node_start`.
    running: Option<(u32, u64)>,
    /// The highest attempt started so far (0 before the first start).
    last_attempt: u32,
    /// The idempotency key of the first start.
    key: Option<String>,
    /// The seq of the node's `node_complete`.
    completed_at: Option<u64>,
    /// The plan version and seq of a failure with `willRetry: false`.
    final_failure: Option<(u32, u64)>,
    /// A human's answer to the node's fallback request skipped it: its `node_complete`
    /// follows without a running attempt.
    skipped: bool,
}

impl RunCheck<'_> {
    pub(super) fn node_rules(&mut self, event: &RunEvent) {
        match &event.body {
            EventBody::NodeStart {
                attempt,
                idempotency_key,
                ..
            } => self.node_started(event, *attempt, idempotency_key),
            EventBody::NodeComplete { attempt, .. } => self.node_ended(event, *attempt, None),
            EventBody::NodeError {
                attempt,
                will_retry,
                ..
            }
            | EventBody::ValidationError {
                attempt,
                will_retry,
                ..
            } => self.node_ended(event, *attempt, Some(*will_retry)),
            EventBody::Complete {
                status: RunOutcome::Completed,
                ..
            } => self.nothing_running(),
            EventBody::HitlResolved { text, .. } => self.fallback_answered(event, text.as_deref()),
            EventBody::PlanRequested { .. }
            | EventBody::PlanGenerated { .. }
            | EventBody::PlanAccepted { .. }
            | EventBody::PlanUpdated { .. }
            | EventBody::PlanRejected { .. }
            | EventBody::PolicyTriggered { .. }
            | EventBody::HitlRequest { .. }
            | EventBody::RunPaused { .. }
            | EventBody::RunResumed { .. }
            | EventBody::Complete { .. } => {}
        }
    }

    fn node_started(&mut self, event: &RunEvent, attempt: u32, key: &str) {
        let Some(node) = event.node_id.as_deref() else {
            return;
        };
        let expected_key = format!("{}/{node}", self.run_id);
        let version = self.version;
        let track = self.nodes.entry(node.to_owned()).or_default();
        let problem = if let Some((running, at)) = track.running {
            Some(format!(
                "node `{node}` starts again while attempt {running} (started at seq {at}) still runs"
            ))
        } else if let Some(at) = track.completed_at {
            Some(format!(
                "node `{node}` completed at seq {at} and starts again"
            ))
        } else if let Some((v, at)) = track.final_failure.filter(|(v, _)| *v == version) {
            Some(format!(
                "node `{node}` starts again after its final failure at seq {at} \
                 (willRetry false) in the same plan version {v}"
            ))
        } else if track.last_attempt == 0 && attempt != 1 {
            Some(format!(
                "the first attempt of node `{node}` is {attempt}; attempts start at 1"
            ))
        } else if track.last_attempt > 0 && attempt <= track.last_attempt {
            Some(format!(
                "node `{node}` is dispatched again with attempt {attempt}, not above its last attempt {}",
                track.last_attempt
            ))
        } else if let Some(first) = track.key.as_deref().filter(|k| *k != key) {
            Some(format!(
                "idempotencyKey `{key}` differs from `{first}` of the node's first start"
            ))
        } else if key != expected_key {
            Some(format!(
                "idempotencyKey `{key}` is not `runId/nodeId` (`{expected_key}`)"
            ))
        } else {
            None
        };
        track.key.get_or_insert_with(|| key.to_owned());
        track.running = Some((attempt, event.seq));
        track.last_attempt = track.last_attempt.max(attempt);
        if let Some(message) = problem {
            self.flag(Rule::NodeLifecycle, message);
        }
    }

    /// A `node_complete` (`will_retry` None) or a failure.
    fn node_ended(&mut self, event: &RunEvent, attempt: u32, will_retry: Option<bool>) {
        let Some(node) = event.node_id.as_deref() else {
            return;
        };
        let kind = event.kind();
        let version = self.version;
        let track = self.nodes.entry(node.to_owned()).or_default();
        let skipped = std::mem::take(&mut track.skipped);
        let problem = match track.running.take() {
            None if skipped && will_retry.is_none() => None,
            None => Some(format!("`{kind}` for node `{node}`, which is not running")),
            Some((running, at)) if running != attempt => Some(format!(
                "`{kind}` for attempt {attempt} of node `{node}`, but attempt {running} started at seq {at}"
            )),
            Some(_) => None,
        };
        match will_retry {
            None => track.completed_at = Some(event.seq),
            Some(false) => track.final_failure = Some((version, event.seq)),
            Some(true) => {}
        }
        if let Some(message) = problem {
            self.flag(Rule::NodeLifecycle, message);
        }
    }

    /// An answer about a node whose last attempt failed (a fallback request): `retry` and
    /// `replan` let it start again, `skip` lets it complete without a running attempt.
    fn fallback_answered(&mut self, event: &RunEvent, text: Option<&str>) {
        let Some(track) = event.node_id.as_deref().and_then(|n| self.nodes.get_mut(n)) else {
            return;
        };
        if track.running.is_some() || track.final_failure.is_none() {
            return;
        }
        match text {
            Some("retry" | "replan") | None => track.final_failure = None,
            Some("skip") => {
                track.final_failure = None;
                track.skipped = true;
            }
            Some(_) => {}
        }
    }

    fn nothing_running(&mut self) {
        let running: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, t)| t.running.is_some())
            .map(|(n, _)| format!("`{n}`"))
            .collect();
        if !running.is_empty() {
            let message = format!(
                "the run completes while node(s) {} still run",
                running.join(", ")
            );
            self.flag(Rule::NodeLifecycle, message);
        }
    }
}
