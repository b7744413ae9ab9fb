//! Code the engine does not control cannot strand a run: panicking and slow handlers,
//! executors and planners become events, custom executor types run, and a run whose driver
//! dies is failed (or reported) instead of hanging.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use async_trait::async_trait;
use flexrun::catalog::Facet;
use flexrun::catalog::{AgentType, Capability, CapabilityKind, CapabilityStatus, ExecutorSpec};
use flexrun::engine::{CapabilityRefused, ExecError, NodeCall, NodeExecutor};
use flexrun::fsm::{EventBody, RunEvent, RunOutcome};
use flexrun::graph::PlanSnapshot;
use flexrun::planner::{PlanRequest, PlanResponse, Planner, PlannerError};
use flexrun::store::{
    CommitBatch, HitlRecord, NodeRecord, RunHead, RunStatus, StoreError, StoreStats,
};
use flexrun::{Engine, EngineConfig, EngineError, MemoryStore, RunId, Store};
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

fn only(cap: &str) -> Value {
    let forbidden: Vec<&str> = ["writer.en", "writer.formal"]
        .into_iter()
        .filter(|c| *c != cap)
        .collect();
    json!({"planner": {"forbiddenCapabilities": forbidden}})
}

fn copy(text: &str) -> Map<String, Value> {
    Map::from_iter([("copyVariants".to_owned(), json!([text]))])
}

/// `(attempt, code, message, will_retry)` of every `node_error`.
fn node_errors(events: &[RunEvent]) -> Vec<(u32, String, String, bool)> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::NodeError {
                attempt,
                will_retry,
                error,
                ..
            } => Some((
                *attempt,
                error.code.clone(),
                error.message.clone(),
                *will_retry,
            )),
            _ => None,
        })
        .collect()
}

fn complete_error(events: &[RunEvent]) -> Option<(String, String)> {
    events.iter().rev().find_map(|e| match &e.body {
        EventBody::Complete { error, .. } => {
            error.as_ref().map(|e| (e.code.clone(), e.message.clone()))
        }
        _ => None,
    })
}

/// Opens an engine with one extra writer capability and the executors `tweak` adds, submits a
/// run that can only use that writer and returns its published events up to `complete`.
async fn run_with(
    cap: Capability,
    tweak: impl FnOnce(EngineConfig) -> EngineConfig,
) -> (TestEnv, RunId, Vec<RunEvent>) {
    let dir = tempfile::tempdir().unwrap();
    let only_cap = only(&cap.capability_id);
    let engine = open(dir.path().join("x.redb"), None, move |mut c| {
        c.capabilities.push(cap);
        tweak(c)
    })
    .await;
    let mut env = TestEnv {
        dir,
        rx: engine.subscribe(),
        engine,
    };
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], only_cap))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    (env, run, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_builtin_handler_is_a_node_error_and_the_retry_completes_the_run() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let cap = writer("writer.shaky", builtin("shaky"), 5_000, 2);
    let (env, run, events) = run_with(cap, move |mut c| {
        c.executors = c
            .executors
            .clone()
            .builtin("shaky", move |call: &NodeCall| {
                if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("shaky handler blew up on attempt {}", call.attempt);
                }
                Ok(copy("steady now"))
            });
        c
    })
    .await;
    let errors = node_errors(&events);
    assert_eq!(errors.len(), 1, "{:?}", labels(&events));
    let (attempt, code, message, will_retry) = &errors[0];
    assert_eq!(
        (*attempt, code.as_str(), *will_retry),
        (1, "HANDLER_PANICKED", true)
    );
    assert!(
        message.contains("shaky handler blew up on attempt 1"),
        "{message}"
    );
    assert_eq!(complete_status(&events).as_deref(), Some("completed"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        env.engine.wait(run).await.unwrap().status,
        RunOutcome::Completed
    );
}

struct Panics;

#[async_trait]
impl NodeExecutor for Panics {
    async fn execute(&self, call: NodeCall) -> Result<Map<String, Value>, ExecError> {
        panic!("webhook client crashed for {}", call.node_id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_node_executor_fails_the_node_and_the_run_ends_normally() {
    let hook = ExecutorSpec::Http {
        url: "http://127.0.0.1:9/x".into(),
        signing_secret_env: None,
    };
    let (env, run, events) = run_with(writer("writer.hook", hook, 5_000, 1), |mut c| {
        c.executors = c.executors.clone().with_type("http", Arc::new(Panics));
        c
    })
    .await;
    let errors = node_errors(&events);
    assert_eq!(errors.len(), 1, "{:?}", labels(&events));
    let (_, code, message, will_retry) = &errors[0];
    assert_eq!((code.as_str(), *will_retry), ("HANDLER_PANICKED", false));
    assert!(
        message.contains("webhook client crashed for writer-hook"),
        "{message}"
    );
    assert_eq!(complete_status(&events).as_deref(), Some("failed"));
    assert_eq!(
        env.engine.wait(run).await.unwrap().status,
        RunOutcome::Failed
    );
    assert!(matches!(
        env.engine.cancel(run, "too late").await,
        Err(EngineError::RunEnded(r)) if r == run
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_builtin_handler_slower_than_its_timeout_fails_with_timeout() {
    let (release, held) = mpsc::channel::<()>();
    let held = Arc::new(Mutex::new(held));
    let cap = writer("writer.stuck", builtin("stuck"), 50, 1);
    let (env, run, events) = run_with(cap, move |mut c| {
        c.executors = c.executors.clone().builtin("stuck", move |_: &NodeCall| {
            let _ = held.lock().unwrap().recv();
            Ok(copy("too late"))
        });
        c
    })
    .await;
    release.send(()).unwrap();
    let errors = node_errors(&events);
    assert_eq!(errors.len(), 1, "{:?}", labels(&events));
    assert_eq!((errors[0].1.as_str(), errors[0].3), ("TIMEOUT", false));
    assert!(errors[0].2.contains("50 ms"), "{}", errors[0].2);
    assert_eq!(complete_status(&events).as_deref(), Some("failed"));
    assert_eq!(
        env.engine.wait(run).await.unwrap().status,
        RunOutcome::Failed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_builtin_handler_completes_a_run() {
    let cap = writer("writer.async", builtin("async-writer"), 5_000, 1);
    let (_env, _run, events) = run_with(cap, |mut c| {
        c.executors =
            c.executors
                .clone()
                .builtin_async("async-writer", |call: NodeCall| async move {
                    tokio::task::yield_now().await;
                    Ok(copy(&format!("async attempt {}", call.attempt)))
                });
        c
    })
    .await;
    assert_eq!(complete_status(&events).as_deref(), Some("completed"));
    let output = events
        .iter()
        .filter(|e| e.node_id.as_deref() == Some("writer-async"))
        .find_map(|e| match &e.body {
            EventBody::NodeComplete { output, .. } => Some(output.clone()),
            _ => None,
        });
    assert_eq!(output, Some(copy("async attempt 1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_builtin_handler_that_never_finishes_times_out_then_one_that_panics_is_retried() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let cap = writer("writer.async", builtin("async-writer"), 50, 3);
    let (_env, _run, events) = run_with(cap, move |mut c| {
        c.executors = c
            .executors
            .clone()
            .builtin_async("async-writer", move |_: NodeCall| {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                async move {
                    match n {
                        0 => futures::future::pending().await,
                        1 => panic!("async handler panicked"),
                        _ => Ok(copy("third time")),
                    }
                }
            });
        c
    })
    .await;
    let errors: Vec<(u32, String, bool)> = node_errors(&events)
        .into_iter()
        .map(|(a, code, _, retry)| (a, code, retry))
        .collect();
    assert_eq!(
        errors,
        [
            (1, "TIMEOUT".to_owned(), true),
            (2, "HANDLER_PANICKED".to_owned(), true)
        ]
    );
    assert_eq!(complete_status(&events).as_deref(), Some("completed"));
}

/// Records the executor spec it was called with.
struct Grpc {
    seen: Mutex<Option<ExecutorSpec>>,
}

#[async_trait]
impl NodeExecutor for Grpc {
    async fn execute(&self, call: NodeCall) -> Result<Map<String, Value>, ExecError> {
        *self.seen.lock().unwrap() = call.executor.clone();
        Ok(copy("over grpc"))
    }
}

fn grpc_writer() -> Capability {
    let mut cap = writer("writer.grpc", ExecutorSpec::Human, 5_000, 1);
    cap.executor = serde_json::from_value(json!({"type": "grpc", "target": "x"})).unwrap();
    cap
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capability_of_a_custom_executor_type_runs_on_the_executor_registered_for_it() {
    let grpc = Arc::new(Grpc {
        seen: Mutex::new(None),
    });
    let executor = grpc.clone();
    let (env, _run, events) = run_with(grpc_writer(), move |mut c| {
        c.executors = c.executors.clone().with_type("grpc", executor);
        c
    })
    .await;
    assert_eq!(complete_status(&events).as_deref(), Some("completed"));
    let seen = grpc
        .seen
        .lock()
        .unwrap()
        .clone()
        .expect("the grpc executor ran");
    assert_eq!(
        serde_json::to_value(&seen).unwrap(),
        json!({"type": "grpc", "target": "x"})
    );
    env.engine.register_capability(grpc_writer()).unwrap();
    let stored = env.engine.store().capabilities().unwrap();
    let cap = stored.iter().find(|c| c.capability_id == "writer.grpc");
    assert_eq!(
        cap.map(|c| &c.executor),
        Some(&seen),
        "stored and read back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_executor_type_nobody_registered_is_executor_missing() {
    let (_env, _run, events) = run_with(grpc_writer(), |c| c).await;
    let errors = node_errors(&events);
    assert_eq!(errors.len(), 1, "{:?}", labels(&events));
    assert_eq!(errors[0].1, "EXECUTOR_MISSING");
    assert!(errors[0].2.contains("`grpc`"), "{}", errors[0].2);
    assert_eq!(complete_status(&events).as_deref(), Some("failed"));
}

/// A custom executor that serves only capabilities naming a `target`.
struct Picky;

#[async_trait]
impl NodeExecutor for Picky {
    async fn execute(&self, _call: NodeCall) -> Result<Map<String, Value>, ExecError> {
        Ok(copy("picky"))
    }

    fn check_capability(&self, capability: &Capability) -> Result<(), CapabilityRefused> {
        match &capability.executor {
            ExecutorSpec::Custom { config, .. } if config.contains_key("target") => Ok(()),
            _ => Err(CapabilityRefused::new(
                "executor.target",
                "a grpc capability needs a target",
            )),
        }
    }
}

#[tokio::test]
async fn an_executor_refuses_a_capability_it_cannot_serve_when_it_is_registered() {
    let mut untargeted = grpc_writer();
    untargeted.executor = serde_json::from_value(json!({"type": "grpc"})).unwrap();
    let config = |capabilities: Vec<Capability>| {
        let mut c = flexrun::demo::config(Arc::new(MemoryStore::new()));
        c.executors = c.executors.clone().with_type("grpc", Arc::new(Picky));
        c.capabilities.extend(capabilities);
        c
    };
    let refused = Engine::open(config(vec![untargeted.clone()]))
        .await
        .unwrap_err();
    let EngineError::ExecutorRefused {
        capability_id,
        source,
    } = &refused
    else {
        panic!("{refused:?}")
    };
    assert_eq!(
        (capability_id.as_str(), source.field.as_str()),
        ("writer.grpc", "executor.target")
    );
    assert_eq!(
        refused.to_string(),
        "invalid catalog entry: capability `writer.grpc` field `executor.target`: a grpc capability needs a target"
    );

    let engine = Engine::open(config(vec![])).await.unwrap();
    let err = engine.register_capability(untargeted).unwrap_err();
    assert!(
        matches!(&err, EngineError::ExecutorRefused { source, .. } if source.field == "executor.target"),
        "{err:?}"
    );
    assert!(!engine.catalog().registry.contains("writer.grpc"));
    assert!(engine.store().capabilities().unwrap().is_empty());
    engine.register_capability(grpc_writer()).unwrap();
    assert!(engine.catalog().registry.contains("writer.grpc"));
    engine.shutdown().await;
}

struct PanickingPlanner;

#[async_trait]
impl Planner for PanickingPlanner {
    fn name(&self) -> &str {
        "panicking"
    }

    async fn plan(&self, _request: PlanRequest) -> Result<PlanResponse, PlannerError> {
        panic!("planner lost its mind")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_planner_fails_the_run_instead_of_killing_its_driver() {
    let mut env = TestEnv::start(Some(Arc::new(PanickingPlanner))).await;
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], json!({})))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(complete_status(&events).as_deref(), Some("failed"));
    let (_, message) = complete_error(&events).expect("an error");
    assert!(message.contains("planner lost its mind"), "{message}");
    assert_eq!(
        env.engine.wait(run).await.unwrap().status,
        RunOutcome::Failed
    );
}

/// A store that panics inside a commit that starts a node: once, or on every later commit.
struct PanickyStore {
    inner: MemoryStore,
    armed: AtomicBool,
    forever: bool,
}

impl PanickyStore {
    fn check(&self, batches: &[CommitBatch]) {
        let starts_node = batches
            .iter()
            .flat_map(|b| &b.events)
            .any(|e| matches!(e.body, EventBody::NodeStart { .. }));
        let tripped = self.forever && !self.armed.load(Ordering::SeqCst);
        if tripped || (starts_node && self.armed.swap(false, Ordering::SeqCst)) {
            panic!("storage driver crashed");
        }
    }
}

impl Store for PanickyStore {
    fn commit(&self, batches: &[CommitBatch]) -> Result<(), StoreError> {
        self.check(batches);
        self.inner.commit(batches)
    }
    fn commit_each(
        &self,
        batches: &[CommitBatch],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        self.check(batches);
        self.inner.commit_each(batches)
    }
    fn commit_blocks(&self) -> bool {
        self.inner.commit_blocks()
    }
    fn run_head(&self, run: RunId) -> Result<Option<RunHead>, StoreError> {
        self.inner.run_head(run)
    }
    fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<(RunId, RunHead)>, StoreError> {
        self.inner.list_runs(status)
    }
    fn runs_page(
        &self,
        query: &flexrun::store::RunQuery,
    ) -> Result<flexrun::store::RunPage, StoreError> {
        self.inner.runs_page(query)
    }
    fn envelope(&self, run: RunId) -> Result<Option<Value>, StoreError> {
        self.inner.envelope(run)
    }
    fn events_after(
        &self,
        run: RunId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<RunEvent>, StoreError> {
        self.inner.events_after(run, after_seq, limit)
    }
    fn plan_version(&self, run: RunId, version: u32) -> Result<Option<PlanSnapshot>, StoreError> {
        self.inner.plan_version(run, version)
    }
    fn plan_versions(&self, run: RunId) -> Result<Vec<u32>, StoreError> {
        self.inner.plan_versions(run)
    }
    fn latest_plan(&self, run: RunId) -> Result<Option<PlanSnapshot>, StoreError> {
        self.inner.latest_plan(run)
    }
    fn node_records(&self, run: RunId) -> Result<Vec<NodeRecord>, StoreError> {
        self.inner.node_records(run)
    }
    fn hitl_records(&self, run: RunId) -> Result<Vec<HitlRecord>, StoreError> {
        self.inner.hitl_records(run)
    }
    fn non_terminal_runs(&self) -> Result<Vec<RunId>, StoreError> {
        self.inner.non_terminal_runs()
    }
    fn queued_firings(&self, run: RunId) -> Result<Vec<flexrun::store::QueuedFiring>, StoreError> {
        self.inner.queued_firings(run)
    }
    fn request(&self, key: &str) -> Result<Option<flexrun::store::RequestRecord>, StoreError> {
        self.inner.request(key)
    }
    fn expire_requests(
        &self,
        before: flexrun::Timestamp,
        limit: usize,
    ) -> Result<usize, StoreError> {
        self.inner.expire_requests(before, limit)
    }
    fn delete_run(&self, run: RunId) -> Result<bool, StoreError> {
        self.inner.delete_run(run)
    }
    fn delete_terminal_before(
        &self,
        cutoff: flexrun::Timestamp,
        limit: usize,
        skip: &dyn Fn(RunId) -> bool,
    ) -> Result<Vec<RunId>, StoreError> {
        self.inner.delete_terminal_before(cutoff, limit, skip)
    }
    fn put_facet(&self, facet: &Facet) -> Result<(), StoreError> {
        self.inner.put_facet(facet)
    }
    fn facets(&self) -> Result<Vec<Facet>, StoreError> {
        self.inner.facets()
    }
    fn put_capability(&self, capability: &Capability) -> Result<(), StoreError> {
        self.inner.put_capability(capability)
    }
    fn capabilities(&self) -> Result<Vec<Capability>, StoreError> {
        self.inner.capabilities()
    }
    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }
}

async fn engine_over(store: Arc<PanickyStore>) -> Engine {
    Engine::open(flexrun::demo::config(store)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_driver_panics_is_failed_with_driver_failed() {
    let store = Arc::new(PanickyStore {
        inner: MemoryStore::new(),
        armed: AtomicBool::new(true),
        forever: false,
    });
    let engine = engine_over(store.clone()).await;
    let run = engine
        .submit(copy_envelope(&["copyVariants"], json!({})))
        .await
        .unwrap();
    let outcome = tokio::time::timeout(GUARD, engine.wait(run))
        .await
        .expect("wait returns");
    assert_eq!(outcome.unwrap().status, RunOutcome::Failed);
    let events = store.events_after(run, 0, usize::MAX).unwrap();
    assert_gap_free(&events);
    let (code, message) = complete_error(&events).expect("a complete event with an error");
    assert_eq!(code, "DRIVER_FAILED");
    assert!(message.contains("storage driver crashed"), "{message}");
    assert_eq!(engine.head(run).unwrap().status, RunStatus::Failed);
    assert!(matches!(
        engine.cancel(run, "stop").await,
        Err(EngineError::RunEnded(r)) if r == run
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_failure_cannot_be_recorded_is_reported_stranded_not_awaited_forever() {
    let store = Arc::new(PanickyStore {
        inner: MemoryStore::new(),
        armed: AtomicBool::new(true),
        forever: true,
    });
    let engine = engine_over(store.clone()).await;
    let run = engine
        .submit(copy_envelope(&["copyVariants"], json!({})))
        .await
        .unwrap();
    let waited = tokio::time::timeout(GUARD, engine.wait(run))
        .await
        .expect("wait returns");
    let Err(EngineError::Stranded { run_id, reason }) = waited else {
        panic!("expected a stranded run, got {waited:?}")
    };
    assert_eq!(run_id, run);
    assert!(reason.contains("storage driver crashed"), "{reason}");
    assert_eq!(engine.head(run).unwrap().status, RunStatus::Active);
    let cancelled = engine.cancel(run, "stop").await;
    assert!(
        matches!(cancelled, Err(EngineError::Stranded { run_id, .. }) if run_id == run),
        "{cancelled:?}"
    );
}
