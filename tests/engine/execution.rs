//! Node execution: retries, output validation, timeouts, bounded concurrency, operator controls.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use flexrun::catalog::{AgentType, Capability, CapabilityKind, CapabilityStatus, ExecutorSpec};
use flexrun::engine::{ExecError, NodeCall, NodeExecutor};
use flexrun::fsm::{EventBody, EventKind, RunEvent, RunState};
use serde_json::{Map, Value, json};

use crate::support::*;

fn writer(id: &str, executor: ExecutorSpec, timeout_ms: u64, max_attempts: u32) -> Capability {
    Capability {
        capability_id: id.into(),
        version: "1.0.0".into(),
        display_name: id.into(),
        summary: "writes copy".into(),
        kind: CapabilityKind::Execution,
        agent_type: AgentType::Ai,
        input_facets: vec!["writerBrief".into()],
        output_facets: vec!["copyVariants".into()],
        cost: 0.1,
        timeout_ms,
        max_attempts,
        fallback: None,
        executor,
        status: CapabilityStatus::Active,
    }
}

fn builtin(handler: &str) -> ExecutorSpec {
    ExecutorSpec::Builtin {
        handler: handler.into(),
    }
}

/// Planner policies that leave `cap` as the only writer the catalog planner may pick.
fn only(cap: &str) -> Value {
    let forbidden: Vec<&str> = ["writer.en", "writer.formal"]
        .into_iter()
        .filter(|c| *c != cap)
        .collect();
    json!({"planner": {"forbiddenCapabilities": forbidden}})
}

fn copy(text: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("copyVariants".into(), json!([text]));
    m
}

fn node_events<'a>(events: &'a [RunEvent], node: &str) -> Vec<&'a RunEvent> {
    events
        .iter()
        .filter(|e| e.node_id.as_deref() == Some(node))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_failure_is_retried_within_max_attempts() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path().join("f.redb"), None, move |mut c| {
        c.capabilities
            .push(writer("writer.flaky", builtin("flaky"), 1_000, 2));
        c.executors = c
            .executors
            .clone()
            .builtin("flaky", move |call: &NodeCall| {
                if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(ExecError::retryable("UPSTREAM_BUSY", "try again"))
                } else {
                    Ok(copy(&format!("attempt {}", call.attempt)))
                }
            });
        c
    })
    .await;
    let mut env = TestEnv {
        dir,
        rx: engine.subscribe(),
        engine,
    };
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], only("writer.flaky")))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(
        labels(
            &node_events(&events, "writer-flaky")
                .into_iter()
                .cloned()
                .collect::<Vec<_>>()
        ),
        [
            "node_start:writer-flaky",
            "node_error:writer-flaky",
            "node_start:writer-flaky",
            "node_complete:writer-flaky"
        ]
    );
    let errors: Vec<(u32, bool)> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::NodeError {
                attempt,
                will_retry,
                ..
            } => Some((*attempt, *will_retry)),
            _ => None,
        })
        .collect();
    assert_eq!(errors, [(1, true)]);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(complete_status(&events).as_deref(), Some("completed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_that_breaks_the_contract_is_a_validation_error_then_retried_then_fails() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path().join("v.redb"), None, |mut c| {
        c.capabilities
            .push(writer("writer.sloppy", builtin("sloppy"), 1_000, 2));
        c.executors = c.executors.clone().builtin("sloppy", |_: &NodeCall| {
            Ok(Map::from_iter([("copyVariants".to_owned(), json!([]))]))
        });
        c
    })
    .await;
    let mut env = TestEnv {
        dir,
        rx: engine.subscribe(),
        engine,
    };
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], only("writer.sloppy")))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    let invalid: Vec<(u32, bool, String)> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::ValidationError {
                attempt,
                will_retry,
                errors,
                ..
            } => Some((*attempt, *will_retry, errors.join(";"))),
            _ => None,
        })
        .collect();
    assert_eq!(invalid.len(), 2, "{:?}", labels(&events));
    assert_eq!((invalid[0].0, invalid[0].1), (1, true));
    assert_eq!((invalid[1].0, invalid[1].1), (2, false));
    assert!(
        invalid[0].2.starts_with("/copyVariants"),
        "{}",
        invalid[0].2
    );
    let EventBody::Complete { status, error, .. } = &events.last().unwrap().body else {
        panic!()
    };
    assert_eq!(format!("{status:?}"), "Failed");
    assert_eq!(error.as_ref().unwrap().code, "NODE_FAILED");
}

struct Hang;

#[async_trait]
impl NodeExecutor for Hang {
    async fn execute(&self, _call: NodeCall) -> Result<Map<String, Value>, ExecError> {
        futures::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_overruns_its_timeout_fails_with_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path().join("t.redb"), None, |mut c| {
        c.capabilities.push(writer(
            "writer.hook",
            ExecutorSpec::Http {
                url: "http://127.0.0.1:9/x".into(),
                signing_secret_env: None,
            },
            50,
            1,
        ));
        c.executors = c.executors.clone().with_type("http", Arc::new(Hang));
        c
    })
    .await;
    let mut env = TestEnv {
        dir,
        rx: engine.subscribe(),
        engine,
    };
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], only("writer.hook")))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    let err = events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::NodeError {
                error, will_retry, ..
            } => Some((error.code.clone(), *will_retry)),
            _ => None,
        })
        .expect("node_error");
    assert_eq!(err, ("TIMEOUT".to_owned(), false));
    assert_eq!(complete_status(&events).as_deref(), Some("failed"));
}

fn max_in_flight(events: &[RunEvent]) -> usize {
    let (mut now, mut max) = (0usize, 0usize);
    for e in events {
        match e.kind() {
            EventKind::NodeStart => {
                now += 1;
                max = max.max(now);
            }
            EventKind::NodeComplete | EventKind::NodeError | EventKind::ValidationError => now -= 1,
            _ => {}
        }
    }
    max
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_respects_the_concurrency_bound() {
    for (limit, expected) in [(1, 1), (4, 2)] {
        let mut env = TestEnv::start(None).await;
        let policies = json!({"planner": {"maxConcurrency": limit}});
        let run = env
            .engine
            .submit(copy_envelope(&["copyVariants", "keywords"], policies))
            .await
            .unwrap();
        let events = env.until_complete(run).await;
        assert_eq!(complete_status(&events).as_deref(), Some("completed"));
        assert_eq!(
            max_in_flight(&events),
            expected,
            "limit {limit}: {:?}",
            labels(&events)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_pause_holds_dispatch_until_resume_and_cancel_ends_the_run() {
    let mut env = TestEnv::start(None).await;
    let policies = json!({"runtime": [{"id": "hold", "trigger": {"kind": "onStart"}, "action": {"type": "pause", "reason": "wait"}}]});
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], policies))
        .await
        .unwrap();
    let first = env
        .until(run, |e| e.kind() == EventKind::PolicyTriggered)
        .await;
    assert!(
        first.iter().all(|e| e.kind() != EventKind::NodeStart),
        "onStart pause holds before any dispatch"
    );
    assert!(
        env.engine.pause(run, "again").await.is_err(),
        "pausing a paused run is a conflict"
    );
    env.engine.resume(run, "go").await.unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(events[0].kind(), EventKind::RunResumed);
    assert_eq!(complete_status(&events).as_deref(), Some("completed"));

    let policies = json!({"runtime": [{"id": "hold", "trigger": {"kind": "onStart"}, "action": {"type": "pause"}}]});
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], policies))
        .await
        .unwrap();
    env.until(run, |e| e.kind() == EventKind::PolicyTriggered)
        .await;
    env.engine.cancel(run, "not needed").await.unwrap();
    let events = env.until_complete(run).await;
    let EventBody::Complete { status, error, .. } = &events[0].body else {
        panic!()
    };
    assert_eq!(format!("{status:?}"), "Cancelled");
    assert_eq!(error.as_ref().unwrap().message, "not needed");
    assert_eq!(env.engine.head(run).unwrap().state, RunState::Done);
}
