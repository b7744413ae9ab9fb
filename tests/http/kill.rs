//! `flexrun serve` as a real process, killed with SIGKILL while a run holds acknowledged but
//! not yet applied input, then restarted on the same store: the input is applied, once.

use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::support::*;

/// A `flexrun serve` child process on 127.0.0.1, killed when dropped.
struct Process {
    child: Child,
    base: String,
    client: reqwest::Client,
}

impl Process {
    fn start(data: &Path) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_flexrun"));
        command
            .args(["serve", "--addr", "127.0.0.1:0", "--data"])
            .arg(data);
        let (child, base) = spawn_server(command);
        Self {
            child,
            base,
            client: client(),
        }
    }

    /// SIGKILL: nothing of the process runs after this.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self.client.post(self.url(path)).json(&body).send();
        status_json(response.await.unwrap()).await
    }

    async fn events(&self, run: &str) -> SseReader {
        SseReader::open(self.client.get(self.url(&format!("/v1/runs/{run}/events")))).await
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn replan_policy(id: &str, trigger: Value) -> Value {
    json!({"id": id, "trigger": trigger,
        "action": {"type": "replan", "rationale": "add a QA pass"}})
}

/// Starts a run on the webhook writer with `runtime` policies and waits for the writer's
/// first call.
async fn start_run(server: &Process, hook: &mut Webhook, runtime: Value) -> String {
    let (status, body) = server
        .post(
            "/v1/capabilities",
            hook.capability("writer.hook", 60_000, 2),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut policies = only_webhook_writer();
    policies["runtime"] = runtime;
    let (status, body) = server
        .post("/v1/runs", copy_envelope(&["copyVariants"], policies))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let run = body["runId"].as_str().unwrap().to_owned();
    let call = hook.next_call().await;
    assert_eq!(call.body["nodeId"], "writer-hook");
    run
}

/// Every event of a finished run, read from the start of its stream.
async fn all_events(server: &Process, run: &str) -> Vec<Frame> {
    server.events(run).await.rest().await
}

fn policy_firings(frames: &[Frame], policy: &str) -> Vec<Frame> {
    frames
        .iter()
        .filter(|f| f.event.as_deref() == Some("policy_triggered"))
        .filter(|f| f.payload()["policyId"] == policy)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_acknowledged_while_paused_survives_sigkill_and_replans_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let mut hook = Webhook::start([Reply::Hang, Reply::Copy, Reply::Copy]).await;
    let server = Process::start(dir.path());
    let runtime = json!([replan_policy(
        "needs-qa",
        json!({"kind": "manual", "signal": "needs-qa"})
    )]);
    let run = start_run(&server, &mut hook, runtime).await;

    let (status, body) = server
        .post(&format!("/v1/runs/{run}/pause"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "paused");
    let (status, body) = server
        .post(
            &format!("/v1/runs/{run}/signals"),
            json!({"name": "needs-qa"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["state"], "paused",
        "the signal waits for the run to execute"
    );
    server.kill();

    let server = Process::start(dir.path());
    let (status, body) = server
        .post(&format!("/v1/runs/{run}/resume"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let frames = all_events(&server, &run).await;
    let fired = policy_firings(&frames, "needs-qa");
    assert_eq!(
        fired.len(),
        1,
        "applied exactly once: {:?}",
        labels(&frames)
    );
    assert_eq!(fired[0].payload()["trigger"]["source"], "signal");
    let at = |label: &str| labels(&frames).iter().position(|l| l == label);
    let resumed = at("run_resumed").expect("resumed");
    let triggered = frames
        .iter()
        .position(|f| f.seq() == fired[0].seq())
        .unwrap();
    let updated = at("plan_updated").expect("the replan produced a new plan version");
    assert!(
        resumed < triggered && triggered < updated,
        "{:?}",
        labels(&frames)
    );
    assert!(
        !labels(&frames[resumed..triggered]).contains(&"node_start:writer-hook".to_owned()),
        "the queued signal is applied before anything is dispatched: {:?}",
        labels(&frames)
    );
    assert_eq!(frames.last().unwrap().payload()["status"], "completed");
    assert_eq!(seqs(&frames), (1..=frames.len() as u64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_complete_firing_queued_while_paused_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let release = Arc::new(Notify::new());
    let mut hook = Webhook::start([Reply::After(release.clone()), Reply::Copy]).await;
    let server = Process::start(dir.path());
    let runtime = json!([replan_policy(
        "qa-gate",
        json!({"kind": "onNodeComplete", "selector": {"capabilityId": "writer.hook"}})
    )]);
    let run = start_run(&server, &mut hook, runtime).await;
    let mut sse = server.events(&run).await;

    let (status, body) = server
        .post(&format!("/v1/runs/{run}/pause"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    sse.until("run_paused").await;
    // The in-flight writer finishes while the run is paused: its policy fires and waits.
    release.notify_one();
    sse.until("node_complete:writer-hook").await;
    // The queue is committed with that transition; give no other chance to store it.
    server.kill();

    let server = Process::start(dir.path());
    let (status, body) = server
        .post(&format!("/v1/runs/{run}/resume"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let frames = all_events(&server, &run).await;
    let fired = policy_firings(&frames, "qa-gate");
    assert_eq!(
        fired.len(),
        1,
        "applied exactly once: {:?}",
        labels(&frames)
    );
    assert_eq!(fired[0].payload()["trigger"]["nodeId"], "writer-hook");
    let names = labels(&frames);
    let resumed = names.iter().position(|l| l == "run_resumed").unwrap();
    assert_eq!(
        names[resumed + 1],
        "policy_triggered",
        "the queued firing comes first after the resume: {names:?}"
    );
    assert!(names.contains(&"plan_updated".to_owned()), "{names:?}");
    assert_eq!(frames.last().unwrap().payload()["status"], "completed");
}
