//! Exact scenarios against the scriptable fake server, driven through a real engine.

use std::sync::Arc;
use std::time::Duration;

use flexrun::ScriptedPlanner;
use flexrun::api::{self, ApiConfig, AppState};
use flexrun::catalog::{AgentType, Capability, CapabilityKind, CapabilityStatus, ExecutorSpec};
use flexrun::engine::NodeExecutor;
use flexrun::executors::llm::LlmExecutor;
use flexrun::fsm::{EventBody, EventKind, PlannerOutput, RunEvent, TokenUsage};
use flexrun::graph::{PlanDraft, PlanEdge, PlanNode};
use flexrun::planner::openai::{
    ChatClient, DIAGNOSTICS_LEAD, OpenAiConfig, OpenAiPlanner, ResponseFormat,
};
use flexrun::planner::{Planner, ScriptStep};
use serde_json::{Value, json};

use crate::fake::{FakeOpenAi, Received, Reply, chat, chat_finishing, error, refusing};
use crate::support::{TestEnv, complete_status, copy_envelope, envelope, labels, open};

const SECRET: &str = "sk-test-0123456789-secret";

const DRAFT: &str = r#"{"nodes":[
 {"id":"brief","stage":"structuring","capabilityId":"brief.structurer","kind":"structuring",
  "inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"],"instructions":[],"rationale":"structure the brief"},
 {"id":"write","stage":"generation","capabilityId":"writer.en","kind":"execution",
  "inputFacets":["writerBrief"],"outputFacets":["copyVariants"],"instructions":["keep it short"],"rationale":"write"}],
 "edges":[{"from":"brief","to":"write"}],"systemInstructions":"be concise","rationale":"structure then write"}"#;

/// Passes the reply schema but produces no `copyVariants`.
const INCOMPLETE_DRAFT: &str = r#"{"nodes":[
 {"id":"brief","stage":"structuring","capabilityId":"brief.structurer","kind":"structuring",
  "inputFacets":["objectiveBrief"],"outputFacets":["writerBrief"],"instructions":[],"rationale":"r"}],
 "edges":[],"systemInstructions":"","rationale":"only a brief"}"#;

const QA_DELTA: &str = r#"{"baseVersion":1,"rationale":"add a QA pass","operations":[
 {"op":"addNode","node":{"id":"qa","stage":"qa","capabilityId":"qa.copy","kind":"validation",
  "inputFacets":["copyVariants","writerBrief"],"outputFacets":["qaReport"],"instructions":[],"rationale":"check"}},
 {"op":"addEdge","from":"write","to":"qa"}]}"#;

fn config(fake: &FakeOpenAi) -> OpenAiConfig {
    let mut c = OpenAiConfig::new(&fake.base_url, "fake-model");
    c.backoff_base = Duration::from_millis(10);
    c.backoff_max = Duration::from_millis(40);
    c.timeout = Duration::from_secs(10);
    c.api_key_env = "FLEXRUN_TEST_KEY_THAT_IS_NOT_SET".into();
    c
}

fn planner(config: OpenAiConfig) -> Arc<OpenAiPlanner> {
    let client = ChatClient::with_api_key(config, Some(SECRET.to_owned())).unwrap();
    Arc::new(OpenAiPlanner::with_client(client))
}

async fn env_with(planner: Arc<dyn Planner>) -> TestEnv {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path().join("flexrun.redb"), Some(planner), |c| c).await;
    let rx = engine.subscribe();
    TestEnv { dir, engine, rx }
}

fn planner_policy(max_attempts: u32) -> Value {
    json!({"planner": {"maxAttempts": max_attempts}})
}

fn of_kind(events: &[RunEvent], kind: EventKind) -> Vec<&RunEvent> {
    events.iter().filter(|e| e.kind() == kind).collect()
}

fn complete_error(events: &[RunEvent]) -> String {
    events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::Complete {
                error: Some(err), ..
            } => Some(format!("{}: {}", err.code, err.message)),
            _ => None,
        })
        .unwrap_or_default()
}

fn planner_errors(events: &[RunEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::PlanRequested {
                error: Some(err), ..
            } => Some(err.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_draft_runs_to_completion_through_the_envelope_choice() {
    let fake = FakeOpenAi::start([chat(DRAFT)]).await;
    let openai = planner(config(&fake));
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path().join("flexrun.redb"), None, |mut c| {
        c.planners.push(openai.clone());
        c
    })
    .await;
    let rx = engine.subscribe();
    let mut env = TestEnv { dir, engine, rx };
    let mut env_json = serde_json::to_value(copy_envelope(&["copyVariants"], json!({}))).unwrap();
    env_json["planner"] = json!("openai");
    let run = env.engine.submit(envelope(env_json)).await.unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(
        complete_status(&events).as_deref(),
        Some("completed"),
        "{:?}",
        labels(&events)
    );
    assert_eq!(
        labels(&events)[..3],
        ["plan_requested", "plan_generated", "plan_accepted"]
    );
    let EventBody::PlanGenerated { planner, usage, .. } = &events[1].body else {
        panic!("{:?}", events[1])
    };
    assert_eq!(planner, "openai");
    assert_eq!(
        *usage,
        Some(TokenUsage {
            prompt_tokens: 120,
            completion_tokens: 45
        })
    );
    let m = env.engine.metrics();
    assert_eq!(
        m.prompt_tokens.load(std::sync::atomic::Ordering::Relaxed),
        120
    );
    assert_eq!(
        m.completion_tokens
            .load(std::sync::atomic::Ordering::Relaxed),
        45
    );
    assert_eq!(
        m.planner_answers.load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    let got = fake.received();
    assert_eq!(got.len(), 1);
    let req = &got[0];
    assert_eq!(req.body["model"], "fake-model");
    assert_eq!(req.body["response_format"]["type"], "json_schema");
    assert_eq!(
        req.body["response_format"]["json_schema"]["name"],
        "plan_draft"
    );
    assert_eq!(req.body["response_format"]["json_schema"]["strict"], true);
    assert_eq!(
        req.headers["authorization"].to_str().unwrap(),
        format!("Bearer {SECRET}")
    );
    let schema = req.schema();
    assert_eq!(schema["properties"]["nodes"]["maxItems"], 24);
    assert!(schema["properties"]["nodes"]["items"]["anyOf"].is_array());
    let ctx = req.context();
    assert_eq!(ctx["objective"], "tagline for a bakery");
    assert_eq!(ctx["requiredOutputs"], json!(["copyVariants"]));
    let caps: Vec<&str> = ctx["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["capabilityId"].as_str().unwrap())
        .collect();
    assert_eq!(
        caps,
        ["brief.structurer", "qa.copy", "writer.en", "writer.formal"],
        "capabilities off every path to the outputs are pruned"
    );

    let stored = serde_json::to_string(&env.stored_events(run)).unwrap();
    assert!(
        !stored.contains(SECRET),
        "the API key never reaches the event log"
    );
    let m = openai.metrics();
    assert_eq!((m.calls, m.attempts, m.retries, m.failures), (1, 1, 0, 0));
    assert_eq!((m.prompt_tokens, m.completion_tokens), (120, 45));
    assert!(m.server_micros > 0 && m.overhead_micros > 0, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_draft_is_revised_with_its_diagnostics() {
    let fake = FakeOpenAi::start([chat(INCOMPLETE_DRAFT), chat(DRAFT)]).await;
    let mut env = env_with(planner(config(&fake))).await;
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], json!({})))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(
        labels(&events)[..5],
        [
            "plan_requested",
            "plan_generated",
            "plan_rejected",
            "plan_generated",
            "plan_accepted"
        ]
    );
    assert_eq!(complete_status(&events).as_deref(), Some("completed"));
    let EventBody::PlanRejected { diagnostics, .. } = &events[2].body else {
        panic!("{:?}", events[2])
    };
    let got = fake.received();
    assert_eq!(got.len(), 2);
    let first = got[0].all_content();
    let second = got[1].all_content();
    assert!(!first.contains("rejected by the validator"));
    assert!(second.contains("rejected by the validator"), "{second}");
    for d in diagnostics.iter().filter(|d| d.is_error()) {
        assert!(
            second.contains(d.code.as_str()) && second.contains(&d.message),
            "diagnostic {d:?} missing from the revision request: {second}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_replan_is_answered_with_a_delta() {
    let fake = FakeOpenAi::start([chat(DRAFT), chat(QA_DELTA)]).await;
    let mut env = env_with(planner(config(&fake))).await;
    let policies = json!({"runtime": [{"id": "qa-gate",
        "trigger": {"kind": "onNodeComplete", "selector": {"capabilityId": "writer.en"}},
        "action": {"type": "replan", "rationale": "add a QA pass"}}]});
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], policies))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(
        complete_status(&events).as_deref(),
        Some("completed"),
        "{:?}",
        labels(&events)
    );
    let updated = of_kind(&events, EventKind::PlanUpdated);
    assert_eq!(updated.len(), 1);
    let EventBody::PlanUpdated { version, diff, .. } = &updated[0].body else {
        panic!()
    };
    assert_eq!(*version, 2);
    assert_eq!(diff.added_nodes, ["qa"]);
    assert!(labels(&events).contains(&"node_complete:qa".to_owned()));

    let got = fake.received();
    assert_eq!(got.len(), 2);
    let replan = &got[1];
    assert_eq!(
        replan.body["response_format"]["json_schema"]["name"],
        "plan_delta"
    );
    assert_eq!(
        replan.schema()["properties"]["baseVersion"]["enum"],
        json!([1])
    );
    let ctx = replan.context();
    assert_eq!(ctx["currentPlan"]["version"], 1);
    assert_eq!(ctx["trigger"]["policyId"], "qa-gate");
    assert_eq!(ctx["trigger"]["nodeId"], "write");
    let statuses: Vec<(&str, &str)> = ctx["currentPlan"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n["status"].as_str().unwrap()))
        .collect();
    assert_eq!(statuses, [("brief", "completed"), ("write", "completed")]);
    assert_eq!(ctx["completedNodes"][1]["nodeId"], "write");
    assert!(ctx["completedNodes"][1]["output"]["copyVariants"].is_array());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_is_retried_after_the_delay_it_asks_for() {
    let fake = FakeOpenAi::start([
        error(429, vec![("retry-after", "1")], "rate limited"),
        chat(DRAFT),
    ])
    .await;
    let openai = planner(config(&fake));
    let mut env = env_with(openai.clone()).await;
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], json!({})))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(complete_status(&events).as_deref(), Some("completed"));
    assert_eq!(
        of_kind(&events, EventKind::PlanRequested).len(),
        1,
        "the client retried inside one planner call"
    );
    let got = fake.received();
    assert_eq!(got.len(), 2);
    let waited = got[1].at.duration_since(got[0].at);
    assert!(
        waited >= Duration::from_millis(950),
        "Retry-After honoured: {waited:?}"
    );
    let m = openai.metrics();
    assert_eq!((m.calls, m.attempts, m.retries, m.failures), (1, 2, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_exhaust_the_retries_and_fail_the_run() {
    let fake = FakeOpenAi::start([]).await;
    fake.fallback(error(500, vec![], "upstream exploded"));
    let mut c = config(&fake);
    c.max_attempts = 2;
    let openai = planner(c);
    let mut env = env_with(openai.clone()).await;
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], planner_policy(2)))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(complete_status(&events).as_deref(), Some("failed"));
    assert_eq!(
        fake.received().len(),
        4,
        "2 planner attempts × 2 http attempts"
    );
    let error = complete_error(&events);
    assert!(
        error.contains("http 500")
            && error.contains("upstream exploded")
            && error.contains("2 attempt(s)"),
        "{error}"
    );
    assert_eq!(planner_errors(&events).len(), 1, "the engine retried once");
    let m = openai.metrics();
    assert_eq!((m.calls, m.attempts, m.retries, m.failures), (2, 4, 2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_fail_at_once() {
    let fake = FakeOpenAi::start([error(401, vec![], "invalid api key")]).await;
    let mut env = env_with(planner(config(&fake))).await;
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], planner_policy(3)))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(complete_status(&events).as_deref(), Some("failed"));
    assert_eq!(
        fake.received().len(),
        1,
        "a 401 is neither retried nor re-planned"
    );
    let error = complete_error(&events);
    assert!(
        error.contains("http 401") && error.contains("fatal"),
        "{error}"
    );
    assert!(!error.contains(SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_times_out() {
    let fake = FakeOpenAi::start([]).await;
    fake.fallback(Reply::Hang);
    let mut c = config(&fake);
    c.timeout = Duration::from_millis(300);
    c.max_attempts = 2;
    let mut env = env_with(planner(c)).await;
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], planner_policy(1)))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(complete_status(&events).as_deref(), Some("failed"));
    let error = complete_error(&events);
    assert!(
        error.contains("did not answer within 300 ms (2 attempt(s))"),
        "{error}"
    );
    assert_eq!(fake.received().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_is_a_planner_error_malformed_replies_are_diagnosed() {
    let fake = FakeOpenAi::start([
        chat_finishing(r#"{"nodes":[{"id":"brief","stage":"struct"#, "length"),
        chat(r#"{"nodes": oops}"#),
        chat(r#"{"nodes":[{"id":"Bad Id"}],"edges":[]}"#),
        chat(DRAFT),
    ])
    .await;
    let openai = planner(config(&fake));
    let mut env = env_with(openai.clone()).await;
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], planner_policy(4)))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(
        complete_status(&events).as_deref(),
        Some("completed"),
        "{:?}",
        labels(&events)
    );
    let errors = planner_errors(&events);
    assert_eq!(
        errors.len(),
        1,
        "only the truncation is a planner error: {errors:?}"
    );
    assert!(
        errors[0].contains("truncated") && errors[0].contains("finish_reason `length`"),
        "{}",
        errors[0]
    );
    let rejected = rejected_codes(&events);
    assert_eq!(
        rejected,
        vec![vec!["REPLY_NOT_JSON"], vec!["REPLY_SHAPE", "REPLY_SHAPE"]],
        "{:?}",
        labels(&events)
    );
    let unparsed = events
        .iter()
        .filter(|e| {
            matches!(&e.body, EventBody::PlanGenerated { output, .. }
                if matches!(output.as_ref(), PlannerOutput::Unparsed(r) if r.content.contains("oops")))
        })
        .count();
    assert_eq!(unparsed, 1, "the unreadable reply is recorded as it came");
    let got = fake.received();
    assert!(
        got[1].all_content().contains("truncated"),
        "the next request says what went wrong"
    );
    assert_eq!(sent_codes(&got[2]), vec!["REPLY_NOT_JSON"]);
    let shape = sent_diagnostics(&got[3]);
    let pointers: Vec<&str> = shape.iter().filter_map(|d| d["pointer"].as_str()).collect();
    assert_eq!(
        pointers,
        ["/nodes/0/capabilityId", "/nodes/0/kind"],
        "{shape:?}"
    );
    assert!(shape.iter().all(|d| d["code"] == "REPLY_SHAPE"));
    assert_eq!(shape[0]["expected"], "a string");
    assert_eq!(shape[0]["found"], "nothing");
    assert_eq!(openai.metrics().failures, 1);
}

/// The codes of every `plan_rejected`, in order.
fn rejected_codes(events: &[RunEvent]) -> Vec<Vec<String>> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::PlanRejected { diagnostics, .. } => Some(
                diagnostics
                    .iter()
                    .filter(|d| d.is_error())
                    .map(|d| d.code.as_str().to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// The structured diagnostics a request to the model carried.
fn sent_diagnostics(request: &Received) -> Vec<Value> {
    let content = request.all_content();
    let Some((_, list)) = content.split_once(DIAGNOSTICS_LEAD) else {
        return Vec::new();
    };
    let list = list.lines().nth(1).unwrap_or_default();
    serde_json::from_str(list).unwrap_or_else(|e| panic!("diagnostics are JSON ({e}): {list}"))
}

/// The error codes a request to the model carried.
fn sent_codes(request: &Received) -> Vec<String> {
    sent_diagnostics(request)
        .iter()
        .filter(|d| d["severity"] == "error")
        .filter_map(|d| d["code"].as_str().map(str::to_owned))
        .collect()
}

fn system_message(req: &Received) -> &str {
    assert_eq!(req.body["messages"][0]["role"], "system");
    req.body["messages"][0]["content"].as_str().unwrap()
}

/// `GET /metrics` of a real API server on 127.0.0.1:0 exporting `openai`'s counters.
async fn metrics_text(env: &TestEnv, openai: &OpenAiPlanner) -> String {
    let state = AppState::new(env.engine.clone(), ApiConfig::default())
        .with_planner_metrics(openai.metrics_handle());
    let shutdown = state.shutdown();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(api::serve(listener, state, std::future::pending()));
    let client = flexrun::http_client::client_builder().build().unwrap();
    let response = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    shutdown.trigger();
    server.await.unwrap().unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_json_schema_is_asked_in_json_object_mode_from_then_on() {
    let fake = FakeOpenAi::start([]).await;
    fake.fallback(refusing(&["json_schema"], chat(DRAFT)));
    let mut c = config(&fake);
    c.max_attempts = 1;
    let openai = planner(c);
    let mut env = env_with(openai.clone()).await;
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], planner_policy(1)))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(
        complete_status(&events).as_deref(),
        Some("completed"),
        "{:?}",
        labels(&events)
    );
    assert_eq!(
        of_kind(&events, EventKind::PlanRequested).len(),
        1,
        "the fallback happens inside one planner call and one http attempt budget"
    );

    let got = fake.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].format_type(), "json_schema");
    assert_eq!(
        got[1].body["response_format"],
        json!({"type": "json_object"})
    );
    assert!(!system_message(&got[0]).contains("JSON Schema"));
    let schema_line = format!(
        "The reply must be one JSON object matching this JSON Schema (`plan_draft`): {}",
        got[0].schema()
    );
    let system = system_message(&got[1]);
    assert!(
        system.starts_with(system_message(&got[0])) && system.ends_with(&schema_line),
        "the schema travels in the system message: {system}"
    );
    assert_eq!(got[1].context(), got[0].context());

    let second = env
        .engine
        .submit(copy_envelope(&["copyVariants"], planner_policy(1)))
        .await
        .unwrap();
    let events = env.until_complete(second).await;
    assert_eq!(complete_status(&events).as_deref(), Some("completed"));
    let got = fake.received();
    assert_eq!(got.len(), 3, "the next call does not try json_schema again");
    assert_eq!(got[2].format_type(), "json_object");

    let m = openai.metrics();
    assert_eq!(
        (m.calls, m.attempts, m.retries, m.failures),
        (2, 3, 0, 0),
        "{m:?}"
    );
    assert_eq!(
        (m.format_fallbacks, m.response_format),
        (1, ResponseFormat::JsonObject)
    );
    let text = metrics_text(&env, &openai).await;
    for line in [
        "# TYPE flexrun_planner_response_format_fallbacks_total counter",
        "flexrun_planner_response_format_fallbacks_total 1",
        "# TYPE flexrun_planner_response_format gauge",
        "flexrun_planner_response_format{mode=\"json_object\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_every_response_format_is_asked_without_one() {
    let fake = FakeOpenAi::start([]).await;
    fake.fallback(refusing(&["json_schema", "json_object"], chat(DRAFT)));
    let openai = planner(config(&fake));
    let mut env = env_with(openai.clone()).await;
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], planner_policy(1)))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(complete_status(&events).as_deref(), Some("completed"));
    let kinds: Vec<String> = fake
        .received()
        .iter()
        .map(|r| r.format_type().to_owned())
        .collect();
    assert_eq!(kinds, ["json_schema", "json_object", "none"]);
    let m = openai.metrics();
    assert_eq!(
        (m.format_fallbacks, m.response_format, m.retries),
        (2, ResponseFormat::None, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_none_mode_sends_no_response_format() {
    let fake = FakeOpenAi::start([chat(DRAFT)]).await;
    let mut c = config(&fake);
    c.response_format = ResponseFormat::None;
    let openai = planner(c);
    let mut env = env_with(openai.clone()).await;
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], json!({})))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(complete_status(&events).as_deref(), Some("completed"));
    let got = fake.received();
    assert_eq!(got.len(), 1);
    assert!(
        got[0].body.get("response_format").is_none(),
        "{}",
        got[0].body
    );
    assert!(
        system_message(&got[0]).contains(
            "The reply must be one JSON object matching this JSON Schema (`plan_draft`): {"
        )
    );
    let m = openai.metrics();
    assert_eq!(
        (m.format_fallbacks, m.response_format),
        (0, ResponseFormat::None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_request_in_the_none_mode_fails_at_once() {
    let fake = FakeOpenAi::start([error(400, vec![], "messages are malformed")]).await;
    let mut c = config(&fake);
    c.response_format = ResponseFormat::None;
    let openai = planner(c);
    let mut env = env_with(openai.clone()).await;
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], planner_policy(3)))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(complete_status(&events).as_deref(), Some("failed"));
    assert_eq!(
        fake.received().len(),
        1,
        "a 400 without a response_format is neither retried nor re-planned"
    );
    let error = complete_error(&events);
    assert!(
        error.contains("http 400")
            && error.contains("messages are malformed")
            && error.contains("fatal"),
        "{error}"
    );
    let m = openai.metrics();
    assert_eq!(
        (m.calls, m.failures, m.format_fallbacks, m.response_format),
        (1, 1, 0, ResponseFormat::None)
    );
}

fn llm_writer() -> Capability {
    Capability {
        capability_id: "writer.llm".into(),
        version: "1.0.0".into(),
        display_name: "LLM writer".into(),
        summary: "Writes copy with a model".into(),
        kind: CapabilityKind::Execution,
        agent_type: AgentType::Ai,
        input_facets: vec!["writerBrief".into()],
        output_facets: vec!["copyVariants".into()],
        cost: 1.0,
        timeout_ms: 5_000,
        max_attempts: 1,
        fallback: None,
        executor: ExecutorSpec::Llm {
            model: Some("writer-model".into()),
            instructions: "You write short ad copy.".into(),
        },
        status: CapabilityStatus::Active,
    }
}

fn llm_draft() -> PlanDraft {
    let demo = flexrun::demo::capabilities();
    let node = |id: &str, c: &Capability| PlanNode {
        id: id.into(),
        stage: "s".into(),
        capability_id: c.capability_id.clone(),
        kind: c.kind,
        input_facets: c.input_facets.clone(),
        output_facets: c.output_facets.clone(),
        instructions: vec![format!("node {id}")],
        rationale: String::new(),
    };
    PlanDraft {
        nodes: vec![node("brief", &demo[0]), node("write", &llm_writer())],
        edges: vec![PlanEdge::new("brief", "write")],
        system_instructions: String::new(),
        rationale: String::new(),
    }
}

async fn llm_env(fake: &FakeOpenAi) -> (TestEnv, Arc<LlmExecutor>) {
    let cap = llm_writer();
    let exec = Arc::new(LlmExecutor::for_capabilities(config(fake), [&cap]).unwrap());
    let scripted = Arc::new(ScriptedPlanner::new([ScriptStep::Draft(llm_draft())]));
    let dir = tempfile::tempdir().unwrap();
    let exec_for_engine: Arc<dyn NodeExecutor> = exec.clone();
    let engine = open(
        dir.path().join("flexrun.redb"),
        Some(scripted),
        move |mut c| {
            c.capabilities.push(cap);
            c.executors = c.executors.with_type("llm", exec_for_engine);
            c
        },
    )
    .await;
    let rx = engine.subscribe();
    (TestEnv { dir, engine, rx }, exec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_llm_executor_produces_a_validated_node_output() {
    let fake = FakeOpenAi::start([chat(r#"{"copyVariants":["Sourdough, done for you."]}"#)]).await;
    let (mut env, exec) = llm_env(&fake).await;
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], json!({})))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(
        complete_status(&events).as_deref(),
        Some("completed"),
        "{:?}",
        labels(&events)
    );
    let out = events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::NodeComplete { output, .. } if e.node_id.as_deref() == Some("write") => {
                Some(output.clone())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(out["copyVariants"], json!(["Sourdough, done for you."]));
    let usage = events.iter().find_map(|e| match &e.body {
        EventBody::NodeComplete { spend, .. } if e.node_id.as_deref() == Some("write") => {
            spend.and_then(|s| s.usage)
        }
        _ => None,
    });
    assert_eq!(
        usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
        Some((120, 45)),
        "the model reply's usage is the attempt's spend"
    );

    let got = fake.received();
    assert_eq!(got.len(), 1);
    let req = &got[0];
    assert_eq!(req.body["model"], "writer-model");
    assert!(
        req.body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("You write short ad copy.")
    );
    let ctx = req.context();
    assert_eq!(ctx["inputs"]["writerBrief"]["audience"], "busy parents");
    assert!(
        ctx["instructions"]
            .as_array()
            .unwrap()
            .contains(&json!("node write"))
    );
    let schema = req.schema();
    assert_eq!(schema["required"], json!(["copyVariants"]));
    assert_eq!(schema["properties"]["copyVariants"]["minItems"], 1);
    assert_eq!(exec.metrics().calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llm_output_that_breaks_the_contract_is_a_validation_error() {
    let fake = FakeOpenAi::start([chat(r#"{"copyVariants":[]}"#)]).await;
    let (mut env, _) = llm_env(&fake).await;
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], json!({})))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    let invalid = of_kind(&events, EventKind::ValidationError);
    assert_eq!(invalid.len(), 1, "{:?}", labels(&events));
    assert_eq!(invalid[0].node_id.as_deref(), Some("write"));
    let EventBody::ValidationError {
        errors, will_retry, ..
    } = &invalid[0].body
    else {
        panic!()
    };
    assert!(!will_retry);
    assert!(
        errors.iter().any(|e| e.contains("/copyVariants")),
        "{errors:?}"
    );
    assert_eq!(complete_status(&events).as_deref(), Some("failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_side_of_a_planner_call_is_small_next_to_the_round_trip() {
    use flexrun::planner::{PlanRequest, Purpose};
    const CALLS: u64 = 40;
    let fake = FakeOpenAi::start([]).await;
    fake.fallback(chat(DRAFT));
    let openai = planner(config(&fake));
    let request = PlanRequest {
        run_id: flexrun::RunId::new(),
        purpose: Purpose::Initial,
        phase: flexrun::fsm::PlanPhase::Initial,
        attempt: 1,
        objective: "tagline for a bakery".into(),
        inputs: json!({"objectiveBrief": "Fresh sourdough baked daily, for busy parents"})
            .as_object()
            .cloned()
            .unwrap(),
        facet_values: Default::default(),
        completed: vec![],
        required_outputs: vec!["copyVariants".into()],
        special_instructions: vec![],
        policies: Default::default(),
        capabilities: flexrun::demo::capabilities(),
        facets: flexrun::demo::facets(),
        current_plan: None,
        trigger: None,
        diagnostics: vec![],
        previous_error: None,
        budget: Default::default(),
    };
    let started = std::time::Instant::now();
    for _ in 0..CALLS {
        let response = openai.plan(request.clone()).await.unwrap();
        assert!(matches!(
            response.output,
            flexrun::fsm::PlannerOutput::Draft(_)
        ));
    }
    let wall = started.elapsed();
    let m = openai.metrics();
    assert_eq!((m.calls, m.failures), (CALLS, 0));
    let overhead = m.overhead_micros / CALLS;
    let round_trip = m.server_micros / CALLS;
    eprintln!(
        "planner call overhead: ours {overhead} µs/call (prompt, schema, encode, decode, schema check), \
         http round trip to the local fake {round_trip} µs/call, wall {} µs/call",
        wall.as_micros() as u64 / CALLS
    );
    assert!(
        overhead < 50_000,
        "our side stays well under a model's latency: {overhead} µs"
    );
}
