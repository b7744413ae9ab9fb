//! llama.cpp's HTTP server (xllamacpp) with SmolLM2-135M-Instruct, one thread, started as a
//! child process. A 135M model plans badly: these tests assert wire behaviour and engine
//! handling, not plan quality. `scripts/setup-llm.sh` installs the server and the model.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use flexrun::ScriptedPlanner;
use flexrun::catalog::{AgentType, Capability, CapabilityKind, CapabilityStatus, ExecutorSpec};
use flexrun::engine::NodeExecutor;
use flexrun::executors::llm::LlmExecutor;
use flexrun::fsm::{EventBody, EventKind, PlanPhase, PlannerOutput, RunEvent};
use flexrun::graph::{PlanDraft, PlanEdge, PlanNode};
use flexrun::planner::openai::{OpenAiConfig, OpenAiPlanner};
use flexrun::planner::{Planner, ScriptStep};
use serde_json::json;

use crate::support::{TestEnv, complete_status, copy_envelope, labels, open};

/// One real server at a time: two single-threaded servers would share 2 cores with the build.
static SERIAL: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(|| tokio::sync::Mutex::new(()));

/// Bound on the wait for the server to bind and load the model.
const STARTUP: Duration = Duration::from_secs(120);

fn llm_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/llm")
}

/// The interpreter with xllamacpp and the GGUF model, from `FLEXRUN_LLAMA_PYTHON` /
/// `FLEXRUN_LLAMA_MODEL` or where `scripts/setup-llm.sh` puts them.
fn installed() -> Option<(PathBuf, PathBuf)> {
    let python = std::env::var_os("FLEXRUN_LLAMA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| llm_dir().join("venv/bin/python"));
    let model = std::env::var_os("FLEXRUN_LLAMA_MODEL")
        .map(PathBuf::from)
        .or_else(|| {
            std::fs::read_dir(llm_dir())
                .ok()?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "gguf"))
        })?;
    (python.exists() && model.exists()).then_some((python, model))
}

/// The running server; killed when dropped.
struct LlamaServer {
    child: Child,
    base_url: String,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LlamaServer {
    /// Starts the server; fails the test when the server or model is not installed.
    async fn start() -> Self {
        let Some((python, model)) = installed() else {
            panic!(
                "llama.cpp server or model not found under {}: run scripts/setup-llm.sh (or \
                 scripts/test.sh), or set FLEXRUN_LLAMA_PYTHON and FLEXRUN_LLAMA_MODEL",
                llm_dir().display()
            );
        };
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/llama_server.py");
        let log = std::fs::File::create(
            std::env::temp_dir().join(format!("flexrun-llama-{}.log", std::process::id())),
        )
        .unwrap();
        let mut child = Command::new(python)
            .arg(script)
            .arg(model)
            .args(["--threads", "1", "--ctx", "4096"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start scripts/llama_server.py");
        let stdout = child.stdout.take().unwrap();
        let mut server = Self {
            child,
            base_url: String::new(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.find_map(|l| l.ok()?.strip_prefix("LISTENING ").map(str::to_owned));
            let _ = tx.send(first);
        });
        let url = tokio::time::timeout(STARTUP, rx)
            .await
            .expect("the server bound within the startup bound")
            .unwrap()
            .expect("the launcher printed its address");
        server.base_url = format!("{url}/v1");
        let health = format!("{url}/health");
        let http = flexrun::http_client::client_builder().build().unwrap();
        let deadline = Instant::now() + STARTUP;
        loop {
            let ok = http
                .get(&health)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{health} not healthy within {STARTUP:?}"
            );
            assert!(
                server.child.try_wait().unwrap().is_none(),
                "the llama.cpp server exited during startup"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    fn config(&self) -> OpenAiConfig {
        let mut c = OpenAiConfig::new(&self.base_url, "smollm2");
        c.timeout = Duration::from_secs(120);
        c.max_attempts = 1;
        c.max_tokens = 768;
        c.max_string_len = Some(40);
        c.api_key_env = "FLEXRUN_TEST_KEY_THAT_IS_NOT_SET".into();
        c
    }
}

async fn env_with(planner: Arc<dyn Planner>) -> TestEnv {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path().join("flexrun.redb"), Some(planner), |c| c).await;
    let rx = engine.subscribe();
    TestEnv { dir, engine, rx }
}

fn plan_requests(events: &[RunEvent]) -> Vec<(PlanPhase, Option<String>)> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::PlanRequested { phase, error, .. } => Some((*phase, error.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_model_plans_and_the_engine_handles_what_it_says() {
    let _serial = SERIAL.lock().await;
    let server = LlamaServer::start().await;
    let planner = Arc::new(OpenAiPlanner::new(server.config()).unwrap());
    let mut env = env_with(planner.clone()).await;
    let started = Instant::now();
    let run = env
        .engine
        .submit(copy_envelope(
            &["copyVariants"],
            json!({"planner": {"maxAttempts": 3, "maxNodes": 3}}),
        ))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    let wall = started.elapsed();
    let status = complete_status(&events).unwrap();
    assert!(status == "completed" || status == "failed", "{status}");

    let catalog: Vec<String> = flexrun::demo::capabilities()
        .into_iter()
        .map(|c| c.capability_id)
        .collect();
    let generated: Vec<&RunEvent> = events
        .iter()
        .filter(|e| e.kind() == EventKind::PlanGenerated)
        .collect();
    for e in &generated {
        let EventBody::PlanGenerated {
            output,
            usage,
            planner: name,
            ..
        } = &e.body
        else {
            unreachable!()
        };
        assert_eq!(name, "openai");
        let usage = usage.expect("llama.cpp reports token usage");
        assert!(
            usage.prompt_tokens > 100 && usage.completion_tokens > 0,
            "{usage:?}"
        );
        let PlannerOutput::Draft(draft) = output.as_ref() else {
            panic!("an initial plan is a draft: {output:?}")
        };
        assert!(
            !draft.nodes.is_empty() && draft.nodes.len() <= 3,
            "schema bounds hold: {draft:?}"
        );
        for n in &draft.nodes {
            assert!(catalog.contains(&n.capability_id), "{n:?}");
        }
    }
    let kinds: Vec<EventKind> = events.iter().map(RunEvent::kind).collect();
    for (i, k) in kinds.iter().enumerate() {
        if *k == EventKind::PlanGenerated {
            assert!(
                matches!(
                    kinds[i + 1],
                    EventKind::PlanAccepted | EventKind::PlanRejected | EventKind::Complete
                ),
                "every parsed draft is validated (the last rejection ends the run): {:?}",
                labels(&events)
            );
        }
    }
    let rejections: Vec<&RunEvent> = events
        .iter()
        .filter(|e| e.kind() == EventKind::PlanRejected)
        .collect();
    for r in &rejections {
        let EventBody::PlanRejected { diagnostics, .. } = &r.body else {
            unreachable!()
        };
        assert!(
            diagnostics.iter().any(|d| d.is_error()),
            "a rejection carries its reasons"
        );
    }
    let requests = plan_requests(&events);
    if status == "failed" {
        let code = events
            .iter()
            .find_map(|e| match &e.body {
                EventBody::Complete {
                    error: Some(err), ..
                } => Some(err.code.clone()),
                _ => None,
            })
            .unwrap();
        assert!(
            code == "PLAN_ATTEMPTS_EXHAUSTED" || code.starts_with("PLANNER"),
            "a failed run used up its planner attempts: {code} {:?}",
            labels(&events)
        );
    }
    let m = planner.metrics();
    let planner_errors = requests.iter().filter(|(_, e)| e.is_some()).count();
    assert!(
        m.calls as usize >= generated.len() + planner_errors && m.calls <= 3,
        "{m:?} {:?}",
        labels(&events)
    );
    let reasons: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::PlanRejected { diagnostics, .. } => Some(
                diagnostics
                    .iter()
                    .map(|d| d.code.as_str().to_owned())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            EventBody::Complete {
                error: Some(err), ..
            } => Some(err.message.clone()),
            _ => None,
        })
        .collect();
    eprintln!("real model: rejections and failure: {reasons:?}");
    eprintln!(
        "real model: {status} in {wall:?}; {} planner call(s), {} rejection(s); server {} ms, our overhead {} µs, tokens {}+{}; events {:?}",
        m.calls,
        rejections.len(),
        m.server_micros / 1000,
        m.overhead_micros,
        m.prompt_tokens,
        m.completion_tokens,
        labels(&events)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_truncated_reply_is_a_planner_error() {
    let _serial = SERIAL.lock().await;
    let server = LlamaServer::start().await;
    let mut config = server.config();
    config.max_tokens = 8;
    let planner = Arc::new(OpenAiPlanner::new(config).unwrap());
    let mut env = env_with(planner.clone()).await;
    let run = env
        .engine
        .submit(copy_envelope(
            &["copyVariants"],
            json!({"planner": {"maxAttempts": 2}}),
        ))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    assert_eq!(
        labels(&events),
        ["plan_requested", "plan_requested", "complete"],
        "two truncated attempts, then the run fails"
    );
    assert_eq!(complete_status(&events).as_deref(), Some("failed"));
    let (_, error) = &plan_requests(&events)[1];
    let error = error.as_deref().unwrap();
    assert!(
        error.contains("finish_reason `length`") && error.contains("max_tokens 8"),
        "{error}"
    );
    assert_eq!(planner.metrics().failures, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_llm_node_output_is_schema_valid() {
    let _serial = SERIAL.lock().await;
    let server = LlamaServer::start().await;
    let writer = Capability {
        capability_id: "writer.llm".into(),
        version: "1.0.0".into(),
        display_name: "LLM writer".into(),
        summary: "Writes copy with a model".into(),
        kind: CapabilityKind::Execution,
        agent_type: AgentType::Ai,
        input_facets: vec!["writerBrief".into()],
        output_facets: vec!["copyVariants".into()],
        cost: 1.0,
        timeout_ms: 120_000,
        max_attempts: 2,
        fallback: None,
        executor: ExecutorSpec::Llm {
            model: None,
            instructions: "You write short ad copy lines for the brief.".into(),
        },
        status: CapabilityStatus::Active,
    };
    let mut config = server.config();
    config.max_attempts = 1;
    config.strict_schema = true;
    let exec = Arc::new(LlmExecutor::for_capabilities(config, [&writer]).unwrap());
    let structurer = flexrun::demo::capabilities()[0].clone();
    let node = |id: &str, c: &Capability| PlanNode {
        id: id.into(),
        stage: "s".into(),
        capability_id: c.capability_id.clone(),
        kind: c.kind,
        input_facets: c.input_facets.clone(),
        output_facets: c.output_facets.clone(),
        instructions: vec!["Write two lines.".into()],
        rationale: String::new(),
    };
    let draft = PlanDraft {
        nodes: vec![node("brief", &structurer), node("write", &writer)],
        edges: vec![PlanEdge::new("brief", "write")],
        system_instructions: String::new(),
        rationale: String::new(),
    };
    let scripted = Arc::new(ScriptedPlanner::new([ScriptStep::Draft(draft)]));
    let dir = tempfile::tempdir().unwrap();
    let for_engine: Arc<dyn NodeExecutor> = exec.clone();
    let engine = open(
        dir.path().join("flexrun.redb"),
        Some(scripted),
        move |mut c| {
            c.capabilities.push(writer);
            c.executors = c.executors.with_type("llm", for_engine);
            c
        },
    )
    .await;
    let rx = engine.subscribe();
    let mut env = TestEnv { dir, engine, rx };
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants"], json!({})))
        .await
        .unwrap();
    let events = env.until_complete(run).await;
    let node_events: Vec<String> = labels(&events)
        .into_iter()
        .filter(|l| l.ends_with(":write"))
        .collect();
    assert!(
        node_events.contains(&"node_complete:write".to_owned())
            || node_events.iter().any(|l| l.starts_with("node_error")),
        "{node_events:?}"
    );
    if complete_status(&events).as_deref() == Some("completed") {
        let out = events
            .iter()
            .find_map(|e| match &e.body {
                EventBody::NodeComplete { output, .. } if e.node_id.as_deref() == Some("write") => {
                    Some(output.clone())
                }
                _ => None,
            })
            .unwrap();
        assert!(
            out["copyVariants"]
                .as_array()
                .is_some_and(|a| !a.is_empty()),
            "{out:?}"
        );
    }
    assert!(
        !labels(&events)
            .iter()
            .any(|l| l.starts_with("validation_error")),
        "grammar-constrained output satisfies the contract: {:?}",
        labels(&events)
    );
    let m = exec.metrics();
    eprintln!(
        "real llm node: {:?}; server {} ms, our overhead {} µs, tokens {}+{}",
        complete_status(&events),
        m.server_micros / 1000,
        m.overhead_micros,
        m.prompt_tokens,
        m.completion_tokens
    );
}
