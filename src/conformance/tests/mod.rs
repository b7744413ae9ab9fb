//! Valid streams are built by driving the real run machine; each test then breaks one in one
//! way and asserts which rule is named, and where.

mod rules;
mod walk;
mod wire;

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{Report, Rule};
use crate::fsm::{
    EventBody, FollowUp, HitlDecision, HitlKind, Limits, PlannerOutput, RunError, RunEvent,
    RunInput, RunMachine, Trigger, TriggerSource,
};
use crate::graph::{PlanDelta, PlanDiff, PlanDraft};
use crate::ids::{RunId, Timestamp};

/// Drives a [`RunMachine`] and records what it commits.
pub(super) struct Script {
    pub(super) machine: RunMachine,
    pub(super) events: Vec<RunEvent>,
    now: u64,
}

impl Script {
    pub(super) fn new() -> Self {
        Self::for_run(RunId::new())
    }

    pub(super) fn for_run(run: RunId) -> Self {
        Self {
            machine: RunMachine::new(run, Limits::default()),
            events: Vec::new(),
            now: 1_700_000_000_000,
        }
    }

    pub(super) fn run_id(&self) -> RunId {
        self.machine.run_id()
    }

    /// Applies one input, which must be legal.
    pub(super) fn go(&mut self, input: RunInput) -> &mut Self {
        self.now += 7;
        let step = self
            .machine
            .apply(&input, Timestamp(self.now))
            .unwrap_or_else(|e| panic!("{input:?}: {e}"));
        self.events.extend(step.events);
        self
    }

    /// Applies one input if the machine takes it; true if it did.
    pub(super) fn try_go(&mut self, input: &RunInput) -> bool {
        self.now += 7;
        match self.machine.apply(input, Timestamp(self.now)) {
            Ok(step) => {
                self.events.extend(step.events);
                true
            }
            Err(_) => false,
        }
    }

    /// `plan_requested`, `plan_generated`, `plan_accepted`: version 1 is executing.
    pub(super) fn planned(&mut self) -> &mut Self {
        self.go(RunInput::Start)
            .go(returned(PlannerOutput::Draft(PlanDraft::default())))
            .go(RunInput::DraftValid {
                nodes: 2,
                edges: 1,
                warnings: vec![],
            })
    }

    pub(super) fn start(&mut self, node: &str, attempt: u32) -> &mut Self {
        self.go(RunInput::NodeDispatched {
            node_id: node.to_owned(),
            capability_id: "writer.en".to_owned(),
            attempt,
        })
    }

    pub(super) fn succeed(&mut self, node: &str) -> &mut Self {
        self.go(RunInput::NodeSucceeded {
            node_id: node.to_owned(),
            output: Map::from_iter([("copy".to_owned(), json!(node))]),
            duration_us: 3,
            spend: None,
        })
    }

    pub(super) fn fail(&mut self, node: &str, will_retry: bool) -> &mut Self {
        self.go(RunInput::NodeFailed {
            node_id: node.to_owned(),
            error: RunError::new("HTTP_500", "the webhook answered 500"),
            will_retry,
            spend: None,
            retry_at: None,
        })
    }

    pub(super) fn run_node(&mut self, node: &str) -> &mut Self {
        self.start(node, 1).succeed(node)
    }

    /// `policy_triggered` replan, then `plan_requested`, `plan_generated`, `plan_updated`.
    pub(super) fn replan(&mut self) -> &mut Self {
        let version = self.machine.plan_version();
        self.go(RunInput::PolicyReplan {
            policy_id: "qa-gate".to_owned(),
            trigger: trigger(TriggerSource::Policy),
        })
        .go(RunInput::Drained)
        .replanned(version)
    }

    /// From Requesting a replan: the delta and `plan_updated`.
    pub(super) fn replanned(&mut self, version: u32) -> &mut Self {
        self.go(returned(PlannerOutput::Delta(PlanDelta {
            base_version: version,
            rationale: "add a QA pass".to_owned(),
            operations: vec![],
        })))
        .go(RunInput::DeltaValid {
            diff: PlanDiff {
                from_version: version,
                to_version: version + 1,
                added_nodes: vec!["qa".to_owned()],
                ..PlanDiff::default()
            },
            warnings: vec![],
        })
    }

    pub(super) fn ask(
        &mut self,
        request: &str,
        node: Option<&str>,
        on_reject: FollowUp,
    ) -> &mut Self {
        self.go(hitl(request, node, on_reject))
    }

    pub(super) fn answer(&mut self, request: &str, decision: HitlDecision) -> &mut Self {
        self.go(RunInput::HitlAnswered {
            request_id: request.to_owned(),
            decision,
            text: None,
            responder: Some("editor".to_owned()),
        })
    }

    pub(super) fn done(&mut self) -> &mut Self {
        self.go(RunInput::AllDone {
            output: json!({"copy": "done"}),
        })
    }

    pub(super) fn events(&self) -> Vec<RunEvent> {
        self.events.clone()
    }

    /// The seq of the `n`th (from 0) event of `kind`.
    pub(super) fn seq_of(&self, kind: &str, n: usize) -> u64 {
        self.events
            .iter()
            .filter(|e| e.kind().as_str() == kind)
            .nth(n)
            .unwrap_or_else(|| panic!("no {kind} #{n}"))
            .seq
    }
}

pub(super) fn returned(output: PlannerOutput) -> RunInput {
    RunInput::PlanReturned {
        output: Arc::new(output),
        planner: "scripted".to_owned(),
        latency_ms: 1,
        usage: None,
        diagnostics: vec![],
        cost: None,
        model: None,
    }
}

pub(super) fn trigger(source: TriggerSource) -> Trigger {
    Trigger {
        source,
        policy_id: Some("qa-gate".to_owned()),
        node_id: None,
        reason: "add a QA pass".to_owned(),
    }
}

pub(super) fn hitl(request: &str, node: Option<&str>, on_reject: FollowUp) -> RunInput {
    RunInput::HitlRequested {
        request_id: request.to_owned(),
        kind: HitlKind::Approval,
        question: "publish?".to_owned(),
        policy_id: Some("editor-review".to_owned()),
        node_id: node.map(str::to_owned),
        options: vec![],
        contract_summary: None,
        on_approve: FollowUp::Continue,
        on_reject,
    }
}

/// The valid streams every rule test starts from.
pub(super) fn linear() -> Script {
    let mut s = Script::new();
    s.planned().run_node("brief").run_node("write").done();
    s
}

pub(super) fn with_replan() -> Script {
    let mut s = Script::new();
    s.planned().run_node("write").replan().run_node("qa").done();
    s
}

pub(super) fn with_hitl() -> Script {
    let mut s = Script::new();
    s.planned()
        .run_node("write")
        .ask("editor-review-1", Some("write"), FollowUp::Replan)
        .answer("editor-review-1", HitlDecision::Reject)
        .go(RunInput::Drained)
        .replanned(1)
        .run_node("rewrite")
        .ask("editor-review-2", None, FollowUp::Fail)
        .answer("editor-review-2", HitlDecision::Approve)
        .done();
    s
}

/// `(rule, seq)` of every violation, in order.
pub(super) fn found(report: &Report) -> Vec<(Rule, u64)> {
    report
        .violations()
        .iter()
        .map(|v| (v.rule, v.seq))
        .collect()
}

/// Seqs 1, 2, … in slice order (after inserting or removing events).
pub(super) fn renumber(events: &mut [RunEvent]) {
    for (i, e) in events.iter_mut().enumerate() {
        e.seq = i as u64 + 1;
    }
}

/// Inserts `extra` at `at` and renumbers; returns the seq the first inserted event got.
pub(super) fn insert(events: &mut Vec<RunEvent>, at: usize, extra: Vec<RunEvent>) -> u64 {
    for (i, e) in extra.into_iter().enumerate() {
        events.insert(at + i, e);
    }
    renumber(events);
    at as u64 + 1
}

/// An event of `run` with `body`, to splice into streams.
pub(super) fn event(model: &RunEvent, node: Option<&str>, body: EventBody) -> RunEvent {
    RunEvent {
        node_id: node.map(str::to_owned),
        body,
        ..model.clone()
    }
}

/// The SSE frame of an event, as the server writes it.
pub(super) fn sse(event: &RunEvent) -> String {
    format!(
        "event: {}\nid: {}\ndata: {}\n\n",
        event.kind(),
        event.seq,
        serde_json::to_string(event).unwrap()
    )
}

pub(super) fn node_start(model: &RunEvent, node: &str, attempt: u32) -> RunEvent {
    event(
        model,
        Some(node),
        EventBody::NodeStart {
            attempt,
            capability_id: "writer.en".to_owned(),
            idempotency_key: format!("{}/{node}", model.run_id),
        },
    )
}

pub(super) fn node_complete(model: &RunEvent, node: &str, attempt: u32) -> RunEvent {
    event(
        model,
        Some(node),
        EventBody::NodeComplete {
            attempt,
            output: Map::new(),
            duration_us: 1,
            spend: None,
        },
    )
}

pub(super) fn value(event: &RunEvent) -> Value {
    serde_json::to_value(event).unwrap()
}
