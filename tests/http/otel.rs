//! `flexrun serve --otlp-endpoint` as a real process exporting to a real OTLP/HTTP receiver
//! (the protobuf `ExportTraceServiceRequest` decoded with prost): the span tree of a replan
//! run submitted with a `traceparent`, and the `traceparent` a webhook capability receives.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::fake::{FakeOpenAi, chat};
use crate::support::*;

/// The caller's span of the replan run: trace id and parent span id, as hex.
const REPLAN_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const REPLAN_PARENT: &str = "00f067aa0ba902b7";
/// The caller's span of the webhook run.
const HOOK_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const HOOK_PARENT: &str = "b7ad6b7169203331";

/// One exported span, flattened: hex ids and attributes as strings.
#[derive(Debug, Clone)]
struct Exported {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
    service: Option<String>,
}

impl Exported {
    fn attr(&self, key: &str) -> &str {
        self.attributes
            .get(key)
            .unwrap_or_else(|| panic!("span {} has no attribute {key}: {self:?}", self.name))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&any_value::Value>) -> String {
    match value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn flatten(span: &Span, service: Option<String>) -> Exported {
    Exported {
        name: span.name.clone(),
        trace_id: hex(&span.trace_id),
        span_id: hex(&span.span_id),
        parent_span_id: hex(&span.parent_span_id),
        attributes: span
            .attributes
            .iter()
            .map(|kv| {
                let value = kv.value.as_ref().and_then(|v| v.value.as_ref());
                (kv.key.clone(), text(value))
            })
            .collect(),
        service,
    }
}

type Received = Arc<Mutex<Vec<Exported>>>;

async fn traces(State(received): State<Received>, body: Bytes) -> Response {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf request");
    let mut spans = received.lock().unwrap();
    for resource in &request.resource_spans {
        let service = resource.resource.as_ref().and_then(|r| {
            r.attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
        });
        for scope in &resource.scope_spans {
            spans.extend(scope.spans.iter().map(|s| flatten(s, service.clone())));
        }
    }
    (
        [("content-type", "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
        .into_response()
}

/// An OTLP/HTTP traces receiver on 127.0.0.1:0: its base URL and what it received.
async fn receiver() -> (String, Received) {
    let received = Received::default();
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(traces))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, received)
}

type Traceparents = Arc<Mutex<Vec<Option<String>>>>;

#[derive(Clone, Default)]
struct HookState {
    seen: Traceparents,
    /// Calls still to leave unanswered (until the test ends).
    hang: Arc<AtomicUsize>,
    called: Arc<Notify>,
}

async fn hook(
    State(st): State<HookState>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let traceparent = headers
        .get("traceparent")
        .map(|v| v.to_str().unwrap().to_owned());
    st.seen.lock().unwrap().push(traceparent);
    st.called.notify_one();
    let hang = st
        .hang
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if hang {
        futures::future::pending::<()>().await;
    }
    axum::Json(json!({"output": {"copyVariants": [
        format!("{} attempt {}", body["nodeId"].as_str().unwrap(), body["attempt"])
    ]}}))
    .into_response()
}

/// A webhook writer on 127.0.0.1:0 that records each call's `traceparent` and leaves the
/// first `hang` calls unanswered.
async fn traced_webhook(hang: usize) -> (String, HookState) {
    let st = HookState::default();
    st.hang.store(hang, Ordering::SeqCst);
    let app = axum::Router::new()
        .route("/exec", axum::routing::post(hook))
        .with_state(st.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/exec", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, st)
}

fn hook_capability(url: &str) -> Value {
    json!({"capabilityId": "writer.hook", "version": "1.0.0",
        "displayName": "Webhook writer", "summary": "writes copy via a webhook",
        "kind": "execution", "agentType": "ai", "inputFacets": ["writerBrief"],
        "outputFacets": ["copyVariants"], "cost": 0.1, "timeoutMs": 60_000, "maxAttempts": 2,
        "executor": {"type": "http", "url": url}})
}

/// A `flexrun serve --otlp-endpoint` child process on 127.0.0.1, killed when dropped.
struct Process {
    child: Child,
    base: String,
    client: reqwest::Client,
}

impl Process {
    fn start(data: &Path, otlp: &str) -> Self {
        Self::start_with(data, otlp, &[])
    }

    /// With these further `serve` arguments.
    fn start_with(data: &Path, otlp: &str, args: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_flexrun"));
        command
            .args(["serve", "--addr", "127.0.0.1:0", "--data"])
            .arg(data)
            .args([
                "--otlp-endpoint",
                otlp,
                "--otlp-service-name",
                "flexrun-test",
            ])
            .args(args)
            .env("FLEXRUN_TEST_OTEL_KEY", "sk-otel");
        let (child, base) = spawn_server(command);
        Self {
            child,
            base,
            client: client(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post(
        &self,
        path: &str,
        body: Value,
        traceparent: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.post(self.url(path)).json(&body);
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        status_json(request.send().await.unwrap()).await
    }

    /// Submits `envelope` with a `traceparent` header and follows the run to its end; the run's id.
    async fn run(&self, envelope: Value, traceparent: &str) -> String {
        let (status, body) = self.post("/v1/runs", envelope, Some(traceparent)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let run = body["runId"].as_str().unwrap().to_owned();
        let events = self.client.get(self.url(&format!("/v1/runs/{run}/events")));
        let frames = SseReader::open(events).await.rest().await;
        let last = frames.last().expect("the run's events");
        assert_eq!(
            last.payload()["status"],
            "completed",
            "{:?}",
            labels(&frames)
        );
        run
    }

    /// SIGKILL: nothing of the process runs after this (its unexported spans are lost).
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and waits for the process to exit: a graceful stop, which flushes the spans.
    fn terminate(mut self) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "flexrun exits cleanly on SIGTERM: {exit}");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn of_run<'a>(spans: &'a [Exported], name: &str, run: &str) -> Vec<&'a Exported> {
    spans
        .iter()
        .filter(|s| s.name == name && s.attributes.get("run_id").map(String::as_str) == Some(run))
        .collect()
}

/// The run's one `run` span: in the caller's trace, child of the caller's span.
fn run_span<'a>(spans: &'a [Exported], run: &str, trace: &str, parent: &str) -> &'a Exported {
    let found = of_run(spans, "run", run);
    assert_eq!(found.len(), 1, "one run span: {found:?}");
    let span = found[0];
    assert_eq!(span.trace_id, trace, "the run joins the caller's trace");
    assert_eq!(
        span.parent_span_id, parent,
        "the run's parent is the caller's span"
    );
    assert_eq!(span.service.as_deref(), Some("flexrun-test"));
    span
}

/// The run's spans named `name`, each a child of `run` in its trace.
fn children<'a>(spans: &'a [Exported], name: &str, run: &Exported) -> Vec<&'a Exported> {
    let found = of_run(spans, name, run.attr("run_id"));
    for span in &found {
        assert_eq!(span.trace_id, run.trace_id, "{span:?}");
        assert_eq!(
            span.parent_span_id, run.span_id,
            "a child of the run span: {span:?}"
        );
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replan_run_exports_its_span_tree_into_the_callers_trace() {
    let dir = tempfile::tempdir().unwrap();
    let (otlp, received) = receiver().await;
    let (hook_url, hook) = traced_webhook(0).await;
    let server = Process::start(dir.path(), &otlp);

    let envelope: Value = serde_json::from_str(include_str!("../../examples/replan.json")).unwrap();
    let replan = server
        .run(envelope, &format!("00-{REPLAN_TRACE}-{REPLAN_PARENT}-01"))
        .await;

    let capability = hook_capability(&hook_url);
    let (status, body) = server.post("/v1/capabilities", capability, None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let hooked = server
        .run(
            copy_envelope(&["copyVariants"], only_webhook_writer()),
            &format!("00-{HOOK_TRACE}-{HOOK_PARENT}-01"),
        )
        .await;

    let untraced = server
        .run(
            copy_envelope(&["copyVariants"], json!({})),
            "00-not-a-traceparent",
        )
        .await;
    server.terminate();
    let spans = received.lock().unwrap().clone();

    let run = run_span(&spans, &replan, REPLAN_TRACE, REPLAN_PARENT);
    let calls = children(&spans, "planner_call", run);
    let mut phases: Vec<&str> = calls.iter().map(|s| s.attr("phase")).collect();
    phases.sort_unstable();
    assert_eq!(phases, ["initial", "replan"], "{calls:?}");
    for call in &calls {
        assert_eq!(call.attr("planner"), "catalog");
        assert_eq!(call.attr("attempt"), "1");
        assert_eq!(call.attr("outcome"), "ok");
        assert!(call.attr("latency_ms").parse::<u64>().is_ok(), "{call:?}");
    }
    let nodes = children(&spans, "node", run);
    let mut ids: Vec<(&str, &str)> = nodes
        .iter()
        .map(|s| (s.attr("node_id"), s.attr("capability_id")))
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        [
            ("brief-structurer", "brief.structurer"),
            ("copy-summarizer", "copy.summarizer"),
            ("qa-copy-after-writer-en", "qa.copy"),
            ("writer-en", "writer.en"),
        ]
    );
    for node in &nodes {
        assert_eq!(node.attr("attempt"), "1");
        assert_eq!(node.attr("outcome"), "ok");
        assert!(node.attr("duration_us").parse::<u64>().is_ok(), "{node:?}");
    }
    let in_trace = spans.iter().filter(|s| s.trace_id == REPLAN_TRACE).count();
    assert_eq!(
        in_trace,
        1 + 2 + 4,
        "nothing else joined the caller's trace"
    );

    let run = run_span(&spans, &hooked, HOOK_TRACE, HOOK_PARENT);
    let nodes = children(&spans, "node", run);
    let writer = nodes
        .iter()
        .find(|s| s.attr("node_id") == "writer-hook")
        .expect("the webhook node's span");

    let found = of_run(&spans, "run", &untraced);
    assert_eq!(found.len(), 1, "{found:?}");
    let fresh = found[0];
    assert_eq!(
        fresh.parent_span_id, "",
        "an invalid traceparent starts a new trace: {fresh:?}"
    );
    assert_ne!(fresh.trace_id, HOOK_TRACE);
    let fresh_writer = children(&spans, "node", fresh)
        .into_iter()
        .find(|s| s.attr("node_id") == "writer-hook")
        .expect("the webhook node's span of the untraced run");
    let seen = hook.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            Some(format!("00-{HOOK_TRACE}-{}-01", writer.span_id)),
            Some(format!("00-{}-{}-01", fresh.trace_id, fresh_writer.span_id)),
        ],
        "each webhook call carries its node span's context"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_resumed_after_a_restart_stays_in_the_callers_trace() {
    let dir = tempfile::tempdir().unwrap();
    let (otlp, received) = receiver().await;
    let (hook_url, hook) = traced_webhook(1).await;
    let server = Process::start(dir.path(), &otlp);
    let (status, body) = server
        .post("/v1/capabilities", hook_capability(&hook_url), None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let traceparent = format!("00-{HOOK_TRACE}-{HOOK_PARENT}-01");
    let (status, body) = server
        .post(
            "/v1/runs",
            copy_envelope(&["copyVariants"], only_webhook_writer()),
            Some(&traceparent),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let run = body["runId"].as_str().unwrap().to_owned();
    tokio::time::timeout(GUARD, hook.called.notified())
        .await
        .expect("the webhook's first call");
    server.kill();
    received.lock().unwrap().clear();

    let server = Process::start(dir.path(), &otlp);
    let events = server
        .client
        .get(server.url(&format!("/v1/runs/{run}/events")));
    let frames = SseReader::open(events).await.rest().await;
    assert_eq!(
        frames.last().unwrap().payload()["status"],
        "completed",
        "{:?}",
        labels(&frames)
    );
    server.terminate();
    let spans = received.lock().unwrap().clone();

    let resumed = run_span(&spans, &run, HOOK_TRACE, HOOK_PARENT);
    let writer = children(&spans, "node", resumed)
        .into_iter()
        .find(|s| s.attr("node_id") == "writer-hook")
        .expect("the retried webhook node's span");
    let seen = hook.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        seen[1],
        Some(format!("00-{HOOK_TRACE}-{}-01", writer.span_id)),
        "the call after the restart is in the caller's trace too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_planner_call_carries_its_span_context_and_records_model_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (otlp, received) = receiver().await;
    let fake = FakeOpenAi::start([chat(crate::corpus::DRAFT)]).await;
    let server = Process::start_with(
        dir.path(),
        &otlp,
        &[
            "--planner",
            "openai",
            "--planner-base-url",
            &fake.base_url,
            "--planner-model",
            "fake-model",
            "--planner-max-attempts",
            "1",
            "--planner-api-key-env",
            "FLEXRUN_TEST_OTEL_KEY",
        ],
    );
    let run = server
        .run(
            crate::corpus::envelope(false),
            &format!("00-{REPLAN_TRACE}-{REPLAN_PARENT}-01"),
        )
        .await;
    server.terminate();
    let spans = received.lock().unwrap().clone();

    let run = run_span(&spans, &run, REPLAN_TRACE, REPLAN_PARENT);
    let calls = children(&spans, "planner_call", run);
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = calls[0];
    assert_eq!(call.attr("planner"), "openai");
    assert_eq!(call.attr("model"), "fake-model");
    assert_eq!(call.attr("phase"), "initial");
    assert_eq!(call.attr("prompt_tokens"), "120");
    assert_eq!(call.attr("completion_tokens"), "45");
    assert_eq!(call.attr("outcome"), "ok");
    let requests = fake.received();
    assert_eq!(requests.len(), 1);
    let sent = requests[0]
        .headers
        .get("traceparent")
        .map(|v| v.to_str().unwrap());
    assert_eq!(
        sent,
        Some(format!("00-{REPLAN_TRACE}-{}-01", call.span_id).as_str()),
        "the model request carries the planner call's context"
    );
}
