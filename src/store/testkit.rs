//! Batch builders shared by the store's tests.

use serde_json::{Value, json};

use super::types::{
    CommitBatch, HitlRecord, HitlStatus, NodeRecord, NodeStatus, RunHead, RunStatus,
};
use crate::catalog::{AgentType, Capability, CapabilityKind, CapabilityStatus, ExecutorSpec};
use crate::catalog::{Facet, FacetDirection};
use crate::fsm::{
    EventBody, FollowUp, HitlDecision, HitlKind, PlanPhase, RunEvent, RunOutcome, RunState,
};
use crate::graph::{PlanEdge, PlanNode, PlanSnapshot};
use crate::ids::{RunId, Timestamp};

const T0: u64 = 1_700_000_000_000;

/// Tracks one run's seq and plan version and builds its next batches, the way a driver would.
#[derive(Debug, Clone)]
pub(crate) struct RunScript {
    pub(crate) run: RunId,
    pub(crate) seq: u64,
    pub(crate) plan_version: u32,
    pub(crate) status: RunStatus,
    pub(crate) state: RunState,
    /// The head's creation time.
    pub(crate) created: Timestamp,
    /// The envelope's `metadata`, when set.
    pub(crate) metadata: Option<Value>,
}

impl RunScript {
    pub(crate) fn new(run: RunId) -> Self {
        Self {
            run,
            seq: 0,
            plan_version: 0,
            status: RunStatus::Active,
            state: RunState::Requesting,
            created: Timestamp(T0),
            metadata: None,
        }
    }

    pub(crate) fn head(&self) -> RunHead {
        RunHead {
            status: self.status,
            state: self.state,
            plan_version: self.plan_version,
            last_seq: self.seq,
            created_at: self.created,
            updated_at: Timestamp(T0 + self.seq),
            objective: format!("objective of {}", self.run),
        }
    }

    pub(crate) fn envelope(&self) -> Value {
        let mut envelope = json!({"objective": format!("objective of {}", self.run), "inputs": {"brief": "bread"}});
        if let Some(metadata) = &self.metadata {
            envelope["metadata"] = metadata.clone();
        }
        envelope
    }

    pub(crate) fn event(&mut self, node_id: Option<&str>, body: EventBody) -> RunEvent {
        self.seq += 1;
        RunEvent {
            seq: self.seq,
            run_id: self.run,
            timestamp: Timestamp(T0 + self.seq),
            plan_version: self.plan_version,
            node_id: node_id.map(str::to_owned),
            body,
        }
    }

    fn batch(&self, events: Vec<RunEvent>) -> CommitBatch {
        let mut batch = CommitBatch::new(self.run, self.head());
        batch.events = events.into_iter().map(std::sync::Arc::new).collect();
        batch
    }

    /// The batch that creates the run: envelope and `plan_requested`.
    pub(crate) fn create(&mut self) -> CommitBatch {
        let event = self.event(
            None,
            EventBody::PlanRequested {
                phase: PlanPhase::Initial,
                attempt: 1,
                trigger: None,
                error: None,
            },
        );
        let mut batch = self.batch(vec![event]);
        batch.envelope = Some(self.envelope());
        batch
    }

    /// `plan_accepted` with the next plan version.
    pub(crate) fn accept_plan(&mut self) -> CommitBatch {
        self.plan_version += 1;
        self.state = RunState::Executing;
        let plan = plan(self.plan_version);
        let event = self.event(
            None,
            EventBody::PlanAccepted {
                version: self.plan_version,
                nodes: plan.nodes.len(),
                edges: plan.edges.len(),
                warnings: Vec::new(),
            },
        );
        let mut batch = self.batch(vec![event]);
        batch.plan = Some(plan);
        batch
    }

    pub(crate) fn node_start(&mut self, node: &str) -> CommitBatch {
        let event = self.event(
            Some(node),
            EventBody::NodeStart {
                attempt: 1,
                capability_id: "writer.en".to_owned(),
                idempotency_key: format!("{}/{node}", self.run),
            },
        );
        let mut batch = self.batch(vec![event]);
        batch
            .nodes
            .push(node_record(node, NodeStatus::Running, None));
        batch
    }

    pub(crate) fn node_complete(&mut self, node: &str) -> CommitBatch {
        let output = json!({"copyVariants": ["Fresh bread daily", "Baked at dawn"]});
        let event = self.event(
            Some(node),
            EventBody::NodeComplete {
                attempt: 1,
                output: output.as_object().cloned().unwrap_or_default(),
                duration_us: 42,
                spend: None,
            },
        );
        let mut batch = self.batch(vec![event]);
        batch
            .nodes
            .push(node_record(node, NodeStatus::Completed, Some(output)));
        batch
    }

    pub(crate) fn hitl_request(&mut self, request_id: &str) -> CommitBatch {
        self.state = RunState::Paused;
        let event = self.event(
            None,
            EventBody::HitlRequest {
                request_id: request_id.to_owned(),
                kind: HitlKind::Approval,
                question: "ship it?".to_owned(),
                policy_id: Some("qa-gate".to_owned()),
                options: Vec::new(),
                contract_summary: None,
                on_approve: FollowUp::Continue,
                on_reject: FollowUp::Replan,
            },
        );
        let mut batch = self.batch(vec![event]);
        batch
            .hitl
            .push(hitl_record(request_id, HitlStatus::Pending));
        batch
    }

    pub(crate) fn hitl_resolved(&mut self, request_id: &str) -> CommitBatch {
        self.state = RunState::Executing;
        let event = self.event(
            None,
            EventBody::HitlResolved {
                request_id: request_id.to_owned(),
                decision: HitlDecision::Approve,
                text: None,
                responder: Some("ana".to_owned()),
                next: FollowUp::Continue,
            },
        );
        let mut batch = self.batch(vec![event]);
        batch
            .hitl
            .push(hitl_record(request_id, HitlStatus::Resolved));
        batch
    }

    pub(crate) fn complete(&mut self, outcome: RunOutcome) -> CommitBatch {
        self.status = RunStatus::from(outcome);
        self.state = RunState::Done;
        let event = self.event(
            None,
            EventBody::Complete {
                status: outcome,
                output: Some(json!({"copyVariants": ["Fresh bread daily"]})),
                error: None,
            },
        );
        self.batch(vec![event])
    }
}

pub(crate) fn plan(version: u32) -> PlanSnapshot {
    let node = |id: &str| PlanNode {
        id: id.to_owned(),
        stage: "generation".to_owned(),
        capability_id: "writer.en".to_owned(),
        kind: CapabilityKind::Execution,
        input_facets: vec!["writerBrief".to_owned()],
        output_facets: vec!["copyVariants".to_owned()],
        instructions: vec![format!("version {version}")],
        rationale: "write the copy".to_owned(),
    };
    PlanSnapshot {
        version,
        nodes: vec![node("brief"), node("write")],
        edges: vec![PlanEdge::new("brief", "write")],
        system_instructions: "be brief".to_owned(),
        rationale: format!("plan v{version}"),
    }
}

pub(crate) fn node_record(node: &str, status: NodeStatus, output: Option<Value>) -> NodeRecord {
    NodeRecord {
        node_id: node.to_owned(),
        attempt: 1,
        status,
        started_at: Timestamp(T0),
        finished_at: status.is_terminal().then_some(Timestamp(T0 + 5)),
        output,
        error: None,
    }
}

pub(crate) fn hitl_record(request_id: &str, status: HitlStatus) -> HitlRecord {
    HitlRecord {
        request_id: request_id.to_owned(),
        status,
        request: json!({"kind": "approval", "question": "ship it?"}),
        response: match status {
            HitlStatus::Pending => None,
            HitlStatus::Resolved => Some(json!({"decision": "approve"})),
        },
    }
}

pub(crate) fn facet() -> Facet {
    Facet {
        name: "copyVariants".to_owned(),
        title: "Copy variants".to_owned(),
        description: "Candidate texts".to_owned(),
        direction: FacetDirection::Output,
        schema: json!({"type": "array", "items": {"type": "string"}}),
        instructions: String::new(),
        required_by_default: true,
    }
}

pub(crate) fn capability() -> Capability {
    Capability {
        capability_id: "writer.en".to_owned(),
        version: "1.0.0".to_owned(),
        display_name: "Writer".to_owned(),
        summary: "Writes copy".to_owned(),
        kind: CapabilityKind::Execution,
        agent_type: AgentType::Ai,
        input_facets: vec!["writerBrief".to_owned()],
        output_facets: vec!["copyVariants".to_owned()],
        cost: 1.5,
        timeout_ms: 30_000,
        max_attempts: 2,
        fallback: None,
        executor: ExecutorSpec::Http {
            url: "http://127.0.0.1:9000/exec".to_owned(),
            signing_secret_env: None,
        },
        status: CapabilityStatus::Active,
    }
}

impl RunScript {
    /// One step of a linear run, as the engine commits it: `done` completes (with the
    /// workload's `{step, ok}` output and no output in its node record) and `next` starts.
    pub(crate) fn step(&mut self, done: &str, next: &str) -> CommitBatch {
        let output = json!({"step": done, "ok": true});
        let complete = self.event(
            Some(done),
            EventBody::NodeComplete {
                attempt: 1,
                output: output.as_object().cloned().unwrap_or_default(),
                duration_us: 0,
                spend: None,
            },
        );
        let start = self.event(
            Some(next),
            EventBody::NodeStart {
                attempt: 1,
                capability_id: "bench.noop".to_owned(),
                idempotency_key: format!("{}/{next}", self.run),
            },
        );
        let mut batch = self.batch(vec![complete, start]);
        batch
            .nodes
            .push(node_record(done, NodeStatus::Completed, None));
        batch
            .nodes
            .push(node_record(next, NodeStatus::Running, None));
        batch
    }
}
