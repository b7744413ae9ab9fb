//! A real server on 127.0.0.1:0 over a real redb file, a real HTTP client, a real SSE
//! reader, and a webhook capability served by the test itself.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use flexrun::api::{self, ApiConfig, AppState, Shutdown};
use flexrun::conformance;
use flexrun::executors::http::{HttpExecutor, HttpExecutorBuilder};
use flexrun::fsm::RunEvent;
use flexrun::planner::Planner;
use flexrun::{Durability, Engine, RedbStore, RunId, Store};
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

/// A guard against hangs (not a synchronisation sleep): a test waiting this long has failed.
pub const GUARD: Duration = Duration::from_secs(60);

/// How to start a server.
pub struct Options {
    pub planner: Option<Arc<dyn Planner>>,
    pub config: ApiConfig,
    pub event_buffer: usize,
    /// How the `http` executor signs its calls.
    pub http: HttpExecutorBuilder,
    /// What model tokens cost.
    pub pricing: flexrun::policy::Pricing,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            planner: None,
            config: ApiConfig::default(),
            event_buffer: 4096,
            http: HttpExecutor::builder(),
            pricing: flexrun::policy::Pricing::default(),
        }
    }
}

/// An in-process server over an engine over a redb file.
pub struct Server {
    pub base: String,
    pub engine: Engine,
    pub client: reqwest::Client,
    shutdown: Shutdown,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

pub fn client() -> reqwest::Client {
    flexrun::http_client::client_builder()
        .timeout(GUARD)
        .build()
        .unwrap()
}

impl Server {
    pub async fn start(path: PathBuf, opts: Options) -> Self {
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(path, Durability::Fsync).unwrap());
        let mut config = flexrun::demo::config(store);
        if let Some(p) = opts.planner {
            config.planner = p;
        }
        config.event_buffer = opts.event_buffer;
        config.pricing = opts.pricing;
        let (http, binding) = opts.http.for_engine().unwrap();
        config.executors = config.executors.clone().with_type("http", Arc::new(http));
        let engine = Engine::open(config).await.unwrap();
        binding.bind(&engine);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = AppState::new(engine.clone(), opts.config);
        let shutdown = state.shutdown();
        let task = tokio::spawn(api::serve(listener, state, std::future::pending()));
        Self {
            base,
            engine,
            client: client(),
            shutdown,
            task: Some(task),
        }
    }

    /// Stops accepting, closes event streams and waits until the server has stopped.
    pub async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(GUARD, task)
                .await
                .expect("the server stops")
                .unwrap()
                .unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        status_json(r).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        status_json(self.client.get(self.url(path)).send().await.unwrap()).await
    }

    pub async fn get_text(&self, path: &str) -> (StatusCode, String, String) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status();
        let mime = r
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, mime, r.text().await.unwrap())
    }

    /// Creates a run and returns its id, asserting the 201 answer.
    pub async fn submit(&self, envelope: Value) -> RunId {
        let (status, body) = self.post("/v1/runs", envelope).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["status"], "active");
        let run: RunId = body["runId"].as_str().unwrap().parse().unwrap();
        assert_eq!(body["eventsUrl"], format!("/v1/runs/{run}/events"));
        run
    }

    /// Opens the run's event stream, optionally with `Last-Event-ID`.
    pub async fn events(&self, run: RunId, last_event_id: Option<u64>) -> SseReader {
        let mut req = self.client.get(self.url(&format!("/v1/runs/{run}/events")));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        SseReader::open(req).await
    }

    /// Every stored event of the run.
    pub fn stored(&self, run: RunId) -> Vec<RunEvent> {
        self.engine
            .store()
            .events_after(run, 0, usize::MAX)
            .unwrap()
    }
}

pub async fn status_json(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    let text = r.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// One SSE frame: an event (with `event:`, `id:`, `data:`) or a comment.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub event: Option<String>,
    pub id: Option<u64>,
    pub data: Option<Value>,
    pub comment: Option<String>,
}

impl Frame {
    pub fn label(&self) -> String {
        let data = self.data.as_ref().unwrap();
        match data.get("nodeId").and_then(Value::as_str) {
            Some(n) => format!("{}:{n}", self.event.as_deref().unwrap()),
            None => self.event.clone().unwrap(),
        }
    }

    pub fn seq(&self) -> u64 {
        self.id.unwrap()
    }

    pub fn payload(&self) -> &Value {
        &self.data.as_ref().unwrap()["payload"]
    }
}

/// Reads `text/event-stream` frames off a real HTTP response. A stream read from its first
/// event to its end is held to the event contract (`flexrun::conformance`).
pub struct SseReader {
    response: reqwest::Response,
    buf: String,
    pub status: StatusCode,
    /// The reconnection delay the stream announced (`retry:`), once read.
    pub retry: Option<u64>,
    events: Vec<RunEvent>,
}

impl SseReader {
    pub async fn open(req: reqwest::RequestBuilder) -> Self {
        let response = req.send().await.unwrap();
        let status = response.status();
        if status == StatusCode::OK {
            assert_eq!(
                response.headers().get(CONTENT_TYPE).unwrap(),
                "text/event-stream"
            );
        }
        Self {
            response,
            buf: String::new(),
            status,
            retry: None,
            events: Vec::new(),
        }
    }

    /// The events read so far.
    pub fn events(&self) -> &[RunEvent] {
        &self.events
    }

    /// The next frame (events and comments), or `None` when the server closed the stream.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                if let Some(ms) = block.trim_end().strip_prefix("retry:") {
                    self.retry = Some(ms.trim().parse().expect("numeric retry"));
                    continue;
                }
                let frame = parse_frame(&block);
                if let Some(data) = &frame.data {
                    let event = serde_json::from_value(data.clone()).expect("data is a RunEvent");
                    self.events.push(event);
                }
                return Some(frame);
            }
            let chunk = tokio::time::timeout(GUARD, self.response.chunk())
                .await
                .expect("no frame within the guard")
                .expect("stream read");
            match chunk {
                Some(bytes) => self.buf.push_str(std::str::from_utf8(&bytes).unwrap()),
                None => {
                    assert!(self.buf.trim().is_empty(), "partial frame: {:?}", self.buf);
                    self.assert_conforms();
                    return None;
                }
            }
        }
    }

    /// A stream read from seq 1 to its end keeps the contract (it may end before `complete`
    /// when the server stops).
    fn assert_conforms(&self) {
        if self.events.first().is_some_and(|e| e.seq == 1) {
            let report = conformance::check_with(&self.events, &conformance::Options::live());
            assert!(
                report.is_ok(),
                "the stream breaks the event contract:\n{report}"
            );
        }
    }

    /// The next event frame, skipping comments; `None` at the end of the stream.
    pub async fn next_event(&mut self) -> Option<Frame> {
        loop {
            let frame = self.next_frame().await?;
            if frame.comment.is_none() {
                return Some(frame);
            }
        }
    }

    /// Events up to and including the first whose label starts with `label`.
    pub async fn until(&mut self, label: &str) -> Vec<Frame> {
        let mut out = Vec::new();
        loop {
            let frame = self
                .next_event()
                .await
                .unwrap_or_else(|| panic!("stream ended before {label}: {:?}", labels(&out)));
            let done = frame.label().starts_with(label);
            out.push(frame);
            if done {
                return out;
            }
        }
    }

    /// Every remaining event until the server closes the stream.
    pub async fn rest(&mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(frame) = self.next_event().await {
            out.push(frame);
        }
        out
    }
}

fn parse_frame(block: &str) -> Frame {
    let mut frame = Frame {
        event: None,
        id: None,
        data: None,
        comment: None,
    };
    let mut data = String::new();
    for line in block.lines() {
        if let Some(c) = line.strip_prefix(':') {
            frame.comment = Some(c.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("event:") {
            frame.event = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("id:") {
            frame.id = Some(v.trim().parse().expect("numeric id"));
        } else if let Some(v) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    if !data.is_empty() {
        let value: Value = serde_json::from_str(&data).expect("data is JSON");
        assert_eq!(
            value["type"].as_str(),
            frame.event.as_deref(),
            "event: is the type"
        );
        assert_eq!(value["seq"].as_u64(), frame.id, "id: is the seq");
        frame.data = Some(value);
    }
    frame
}

pub fn labels(frames: &[Frame]) -> Vec<String> {
    frames.iter().map(Frame::label).collect()
}

pub fn seqs(frames: &[Frame]) -> Vec<u64> {
    frames.iter().map(Frame::seq).collect()
}

/// The frames' data equal the stored events (same JSON), which keep the event contract.
pub fn assert_frames_are_stored(frames: &[Frame], stored: &[RunEvent]) {
    let report = conformance::check_with(stored, &conformance::Options::live());
    assert!(
        report.is_ok(),
        "the stored events break the contract:\n{report}"
    );
    let stored: Vec<Value> = stored
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    let streamed: Vec<Value> = frames.iter().map(|f| f.data.clone().unwrap()).collect();
    assert_eq!(streamed, stored);
}

pub fn copy_envelope(outputs: &[&str], policies: Value) -> Value {
    json!({
        "objective": "tagline for a bakery",
        "inputs": {"objectiveBrief": "Fresh sourdough baked daily, for busy parents. Playful tone"},
        "outputContract": {"mode": "facets", "facets": outputs},
        "policies": policies,
    })
}

/// What the test webhook answers to one call.
#[derive(Debug, Clone)]
pub enum Reply {
    /// `200 {"output":{"copyVariants":["<node> attempt <n>"]}}`.
    Copy,
    /// This status and body.
    Status(u16, Value),
    /// Never answers (until the test ends).
    Hang,
    /// Answers like [`Reply::Copy`] once the test releases it.
    After(Arc<Notify>),
}

/// One call received by the webhook.
#[derive(Debug, Clone)]
pub struct Call {
    pub body: Value,
    pub idempotency_key: Option<String>,
    /// When the webhook received it.
    pub at: std::time::Instant,
}

#[derive(Clone)]
struct HookState {
    replies: Arc<Mutex<VecDeque<Reply>>>,
    calls: mpsc::UnboundedSender<Call>,
}

/// A webhook capability served by the test on 127.0.0.1:0.
pub struct Webhook {
    pub url: String,
    pub calls: mpsc::UnboundedReceiver<Call>,
    stop: Arc<Notify>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

async fn hook(
    State(st): State<HookState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let reply = st
        .replies
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Reply::Copy);
    let call = Call {
        idempotency_key: headers
            .get("idempotency-key")
            .map(|v| v.to_str().unwrap().to_owned()),
        body: body.clone(),
        at: std::time::Instant::now(),
    };
    let _ = st.calls.send(call);
    match reply {
        Reply::Copy => Json(json!({"output": {"copyVariants": [
            format!("{} attempt {}", body["nodeId"].as_str().unwrap(), body["attempt"])
        ]}}))
        .into_response(),
        Reply::Status(code, body) => {
            (StatusCode::from_u16(code).unwrap(), Json(body)).into_response()
        }
        Reply::Hang => futures::future::pending().await,
        Reply::After(release) => {
            release.notified().await;
            Json(json!({"output": {"copyVariants": [
                format!("{} attempt {}", body["nodeId"].as_str().unwrap(), body["attempt"])
            ]}}))
            .into_response()
        }
    }
}

impl Webhook {
    pub async fn start(replies: impl IntoIterator<Item = Reply>) -> Self {
        let replies = Arc::new(Mutex::new(replies.into_iter().collect()));
        let (tx, calls) = mpsc::unbounded_channel();
        let app = axum::Router::new()
            .route("/exec", axum::routing::post(hook))
            .with_state(HookState { replies, calls: tx });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/exec", listener.local_addr().unwrap());
        let stop = Arc::new(Notify::new());
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.notified().await })
                .await;
        });
        Self { url, calls, stop }
    }

    pub async fn next_call(&mut self) -> Call {
        tokio::time::timeout(GUARD, self.calls.recv())
            .await
            .expect("the webhook is called")
            .unwrap()
    }

    /// The registration of a writer capability served by this webhook.
    pub fn capability(&self, id: &str, timeout_ms: u64, max_attempts: u32) -> Value {
        json!({"capabilityId": id, "version": "1.0.0", "displayName": "Webhook writer",
            "summary": "writes copy via a webhook", "kind": "execution", "agentType": "ai",
            "inputFacets": ["writerBrief"], "outputFacets": ["copyVariants"], "cost": 0.1,
            "timeoutMs": timeout_ms, "maxAttempts": max_attempts,
            "executor": {"type": "http", "url": self.url}})
    }
}

/// Policies that make the catalog planner choose the webhook writer.
pub fn only_webhook_writer() -> Value {
    json!({"planner": {"forbiddenCapabilities": ["writer.en", "writer.formal"]}})
}

/// A temp dir and the store path inside it.
pub fn temp_store() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flexrun.redb");
    (dir, path)
}

/// Spawns `command` (a `flexrun serve` on `127.0.0.1:0`) with its stderr piped, and waits up
/// to 30 s for the address its "serving" line names: the child and its base URL.
pub fn spawn_server(mut command: std::process::Command) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("flexrun starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !sent && let Some(rest) = line.split("serving ").nth(1) {
                let base = rest.split_whitespace().next().unwrap_or_default();
                let _ = tx.send(base.to_owned());
                sent = true;
            }
        }
    });
    let base = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the server says where it listens");
    (child, base)
}

/// A fresh database on the test PostgreSQL server (`FLEXRUN_TEST_POSTGRES`, which
/// scripts/test.sh starts and names), dropped with the guard.
pub struct TestDatabase {
    /// The database's URL.
    pub url: String,
    admin: String,
    name: String,
}

impl TestDatabase {
    pub fn create() -> Self {
        let admin = std::env::var("FLEXRUN_TEST_POSTGRES").expect(
            "FLEXRUN_TEST_POSTGRES names the test PostgreSQL server: run the tests with \
             scripts/test.sh, or `export FLEXRUN_TEST_POSTGRES=$(scripts/postgres.sh start)`",
        );
        let name = format!("flexrun_it_{}", uuid::Uuid::new_v4().simple());
        let (base, _) = admin.rsplit_once('/').expect("the URL names a database");
        let db = Self {
            url: format!("{base}/{name}"),
            admin,
            name,
        };
        psql(&db.admin, &format!("CREATE DATABASE {}", db.name));
        db
    }

    /// The unaligned output of one query (`|` between columns, a line per row).
    pub fn query(&self, sql: &str) -> String {
        psql(&self.url, sql)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args(["-X", "-q", "-d", &self.admin, "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

fn psql(url: &str, sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .output()
        .expect("psql runs (Debian's postgresql-client)");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
