//! (e) the engine dies mid-run; reopening the file finishes the run without losing a
//! committed event.

use std::sync::Arc;

use async_trait::async_trait;
use flexrun::catalog::{AgentType, Capability, CapabilityKind, CapabilityStatus, ExecutorSpec};
use flexrun::engine::{ExecError, NodeCall, NodeExecutor};
use flexrun::fsm::{EventBody, EventKind};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::support::*;

/// Reports each call, then never answers (the node is in flight when the engine dies).
struct Hang(mpsc::UnboundedSender<NodeCall>);

#[async_trait]
impl NodeExecutor for Hang {
    async fn execute(&self, call: NodeCall) -> Result<Map<String, Value>, ExecError> {
        let _ = self.0.send(call);
        futures::future::pending().await
    }
}

/// Answers at once with fixed copy.
struct Answer;

#[async_trait]
impl NodeExecutor for Answer {
    async fn execute(&self, call: NodeCall) -> Result<Map<String, Value>, ExecError> {
        let mut out = Map::new();
        out.insert(
            "copyVariants".into(),
            json!([format!("attempt {} of {}", call.attempt, call.node_id)]),
        );
        Ok(out)
    }
}

fn slow_writer() -> Capability {
    Capability {
        capability_id: "writer.slow".into(),
        version: "1.0.0".into(),
        display_name: "slow writer".into(),
        summary: "writes copy via a webhook".into(),
        kind: CapabilityKind::Execution,
        agent_type: AgentType::Ai,
        input_facets: vec!["writerBrief".into()],
        output_facets: vec!["copyVariants".into()],
        cost: 0.1,
        timeout_ms: 60_000,
        max_attempts: 1,
        fallback: None,
        executor: ExecutorSpec::Http {
            url: "http://127.0.0.1:9/exec".into(),
            signing_secret_env: None,
        },
        status: CapabilityStatus::Active,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_engine_resumes_the_run_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flexrun.redb");
    let (calls_tx, mut calls) = mpsc::unbounded_channel();
    let engine = open(path.clone(), None, |mut c| {
        c.capabilities.push(slow_writer());
        c.executors = c
            .executors
            .clone()
            .with_type("http", Arc::new(Hang(calls_tx)));
        c
    })
    .await;
    let mut rx = engine.subscribe();
    let policies = json!({"planner": {"forbiddenCapabilities": ["writer.en", "writer.formal"]}});
    let run = engine
        .submit(copy_envelope(&["copyVariants"], policies))
        .await
        .unwrap();
    let first_call = tokio::time::timeout(GUARD, calls.recv())
        .await
        .expect("the node is dispatched")
        .unwrap();
    assert_eq!(
        (first_call.node_id.as_str(), first_call.attempt),
        ("writer-slow", 1)
    );
    let mut before = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if ev.run_id == run {
            before.push((*ev).clone());
        }
    }
    assert_eq!(
        before.last().map(|e| e.kind()),
        Some(EventKind::NodeStart),
        "{:?}",
        labels(&before)
    );
    engine.abort().await;
    drop(rx);
    drop(engine);

    let engine = open(path.clone(), None, |mut c| {
        c.capabilities.push(slow_writer());
        c.executors = c.executors.clone().with_type("http", Arc::new(Answer));
        c
    })
    .await;
    let outcome = tokio::time::timeout(GUARD, engine.wait(run))
        .await
        .expect("the run finishes")
        .unwrap();
    assert_eq!(format!("{:?}", outcome.status), "Completed");
    let all = engine.store().events_after(run, 0, usize::MAX).unwrap();
    assert_gap_free(&all);
    assert_eq!(
        &all[..before.len()],
        &before[..],
        "every committed event survives the crash"
    );
    assert_eq!(
        labels(&all[before.len()..]),
        [
            "node_error:writer-slow",
            "node_start:writer-slow",
            "node_complete:writer-slow",
            "complete"
        ]
    );
    let EventBody::NodeError {
        error,
        will_retry,
        attempt,
        ..
    } = &all[before.len()].body
    else {
        panic!()
    };
    assert_eq!(
        (error.code.as_str(), *will_retry, *attempt),
        ("INTERRUPTED", true, 1)
    );
    let keys: Vec<(u32, String)> = all
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::NodeStart {
                attempt,
                idempotency_key,
                ..
            } if e.node_id.as_deref() == Some("writer-slow") => {
                Some((*attempt, idempotency_key.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(keys.len(), 2);
    assert_eq!(
        (keys[0].0, keys[1].0),
        (1, 2),
        "re-dispatched with a new attempt number"
    );
    assert_eq!(keys[0].1, keys[1].1, "and the same idempotency key");
    let EventBody::Complete { output, .. } = &all.last().unwrap().body else {
        panic!()
    };
    assert_eq!(
        output.as_ref().unwrap()["copyVariants"][0],
        "attempt 2 of writer-slow"
    );
}
