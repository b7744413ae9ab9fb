//! Several `flexrun serve` processes on one PostgreSQL database (docs/DEPLOY.md), killed
//! with SIGKILL while they drive runs: every run completes once, with a log that keeps the
//! event contract; followers on one instance follow runs another drives through its death;
//! steering requests sent to any instance reach the run's driver and are applied once.
//!
//! The database is a fresh one per test on the server scripts/postgres.sh starts (its URL
//! in `FLEXRUN_TEST_POSTGRES`, as scripts/test.sh sets it).

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flexrun::conformance;
use flexrun::fsm::RunEvent;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::support::*;

/// The lease of every instance here: a dead instance's runs move within about this long.
const LEASE: &str = "2s";

/// One `flexrun serve --store postgres://…` child process, killed when dropped.
struct Instance {
    id: String,
    child: Child,
    base: String,
}

impl Instance {
    fn start(db: &TestDatabase, id: &str) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_flexrun"));
        command.args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--store",
            &db.url,
            "--instance-id",
            id,
            "--lease",
            LEASE,
        ]);
        let (child, base) = spawn_server(command);
        Self {
            id: id.to_owned(),
            child,
            base,
        }
    }

    /// SIGKILL: nothing of the process runs after this, not even a goodbye to the cluster.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> (StatusCode, Value) {
    status_json(client.post(url).json(&body).send().await.unwrap()).await
}

async fn get(client: &reqwest::Client, url: String) -> (StatusCode, Value) {
    status_json(client.get(url).send().await.unwrap()).await
}

fn approval_envelope(tag: usize) -> Value {
    let mut envelope: Value =
        serde_json::from_str(include_str!("../../examples/approval.json")).unwrap();
    envelope["metadata"] = json!({"correlationId": format!("cluster-{tag}")});
    envelope
}

/// Waits until the run has a pending HITL request and returns its id.
async fn pending_request(client: &reqwest::Client, at: &Instance, run: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(client, at.url(&format!("/v1/runs/{run}/hitl"))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if let Some(pending) = body["requests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["status"] == "pending")
        {
            return pending["requestId"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "run {run} never asked: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every stored event of the run, read through `at`'s event stream (a replay from seq 1 of
/// an ended run).
async fn stored_events(at: &Instance, run: &str) -> Vec<RunEvent> {
    let frames = SseReader::open(client().get(at.url(&format!("/v1/runs/{run}/events"))))
        .await
        .rest()
        .await;
    frames
        .iter()
        .map(|f| serde_json::from_value(f.data.clone().unwrap()).unwrap())
        .collect()
}

/// The checks `flexrun verify` makes, on a run that must have completed: gap-free seqs from 1,
/// one `complete` (completed) at the end, plan versions contiguous from 1.
fn assert_run_is_whole(run: &str, events: &[RunEvent]) {
    let id = run.parse().unwrap();
    let report = conformance::check_with(events, &conformance::Options::default().for_run(id));
    assert!(
        report.is_ok(),
        "run {run} breaks the event contract:\n{report}"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "run {run}"
    );
    let completes: Vec<&RunEvent> = events
        .iter()
        .filter(|e| e.kind() == flexrun::fsm::EventKind::Complete)
        .collect();
    assert_eq!(completes.len(), 1, "run {run} completes once");
    let last = serde_json::to_value(events.last().unwrap()).unwrap();
    assert_eq!(last["type"], "complete", "run {run}");
    assert_eq!(last["payload"]["status"], "completed", "run {run}: {last}");
    let mut versions: Vec<u64> = events
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .filter(|e| e["type"] == "plan_accepted" || e["type"] == "plan_updated")
        .map(|e| e["payload"]["version"].as_u64().unwrap())
        .collect();
    versions.dedup();
    assert_eq!(
        versions,
        (1..=versions.len() as u64).collect::<Vec<_>>(),
        "run {run}: plan versions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_drive_300_runs_and_one_killed_mid_way_loses_none() {
    let db = TestDatabase::create();
    let mut instances = [
        Instance::start(&db, "a"),
        Instance::start(&db, "b"),
        Instance::start(&db, "c"),
    ];
    let client = client();

    // 300 runs, a hundred created on each instance, in parallel.
    let submits: Vec<_> = (0..300)
        .map(|i| {
            let (client, url) = (client.clone(), instances[i % 3].url("/v1/runs"));
            tokio::spawn(async move {
                let (status, body) = post(&client, url, approval_envelope(i)).await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
                body["runId"].as_str().unwrap().to_owned()
            })
        })
        .collect();
    let mut runs = Vec::new();
    for submit in submits {
        runs.push(submit.await.unwrap());
    }
    let mut requests = HashMap::new();
    for (i, run) in runs.iter().enumerate() {
        let request = pending_request(&client, &instances[(i + 1) % 3], run).await;
        requests.insert(run.clone(), request);
    }
    let owners = db.query(
        "SELECT owner, count(*) FROM flexrun_runs WHERE status = 1 GROUP BY owner ORDER BY owner",
    );
    assert_eq!(
        owners, "a|100\nb|100\nc|100",
        "each instance drives what it created"
    );

    // Approve every run through an instance that does not drive it, and kill b half way:
    // approvals of b's runs then wait for the takeover and are applied by the new owner.
    let approve = |i: usize, at: &Instance| {
        let run = runs[i].clone();
        let url = at.url(&format!("/v1/runs/{run}/hitl/{}", requests[&run]));
        let client = client.clone();
        tokio::spawn(async move {
            let (status, body) = post(&client, url, json!({"decision": "approve"})).await;
            (run, status, body)
        })
    };
    let mut answers = Vec::new();
    for i in 0..150 {
        let at = if i % 3 == 0 {
            &instances[2]
        } else {
            &instances[0]
        };
        answers.push(approve(i, at));
    }
    instances[1].kill();
    let killed = Instant::now();
    for i in 150..300 {
        let at = if i % 2 == 0 {
            &instances[2]
        } else {
            &instances[0]
        };
        answers.push(approve(i, at));
    }
    for answer in answers {
        let (run, status, body) = answer.await.unwrap();
        assert_eq!(status, StatusCode::OK, "approving {run}: {body}");
    }

    // Every run completes, on a or c.
    let deadline = Instant::now() + Duration::from_secs(120);
    for run in &runs {
        loop {
            let (status, body) = get(&client, instances[0].url(&format!("/v1/runs/{run}"))).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            if body["status"] == "completed" {
                break;
            }
            assert_ne!(body["status"], "failed", "{run}: {body}");
            assert!(Instant::now() < deadline, "{run} did not complete: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let took = killed.elapsed();
    eprintln!("all 300 runs completed {took:?} after the kill");
    assert_eq!(
        db.query(&format!(
            "SELECT count(*) FROM flexrun_runs WHERE owner = '{}' AND status = 1",
            instances[1].id
        )),
        "0",
        "the dead instance drives nothing"
    );
    assert_eq!(
        db.query("SELECT count(*) FROM flexrun_runs"),
        "300",
        "no run twice"
    );
    for (i, run) in runs.iter().enumerate() {
        let events = stored_events(&instances[if i % 2 == 0 { 0 } else { 2 }], run).await;
        assert_run_is_whole(run, &events);
        let resolved = events
            .iter()
            .filter(|e| e.kind() == flexrun::fsm::EventKind::HitlResolved)
            .count();
        assert_eq!(resolved, 1, "{run}: the approval is applied once");
    }
}

/// Registers the webhook writer on `at` (only) and creates a run there that uses it, with
/// `runtime` policies (if any) beside those choosing the webhook writer; returns its id.
async fn webhook_run(
    client: &reqwest::Client,
    at: &Instance,
    hook: &Webhook,
    runtime: Option<Value>,
) -> String {
    let (status, body) = post(
        client,
        at.url("/v1/capabilities"),
        hook.capability("writer.hook", 60_000, 1),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut policies = only_webhook_writer();
    if let Some(runtime) = runtime {
        policies["runtime"] = runtime;
    }
    let (status, body) = post(
        client,
        at.url("/v1/runs"),
        copy_envelope(&["copyVariants"], policies),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["runId"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_on_one_instance_follows_a_run_through_its_owners_death() {
    let db = TestDatabase::create();
    let release = Arc::new(Notify::new());
    // The writer's first call hangs until b is dead; the re-dispatch after the takeover is
    // answered.
    let mut hook = Webhook::start([Reply::Hang, Reply::After(release.clone())]).await;
    let a = Instance::start(&db, "a");
    let mut b = Instance::start(&db, "b");
    let client = client();

    // Registered on b only: a reads it from the shared catalog when it takes the run over.
    let review = json!([{"id": "review", "trigger": {"kind": "onNodeComplete",
        "selector": {"capabilityId": "brief.structurer"}},
        "action": {"type": "hitl", "kind": "approval", "question": "Brief fine?",
                   "onApprove": "continue", "onReject": "replan"}}]);
    let run = webhook_run(&client, &b, &hook, Some(review)).await;
    assert_eq!(
        db.query(&format!(
            "SELECT owner FROM flexrun_runs WHERE run_id = '{run}'"
        )),
        "b"
    );

    // Follow on a; answer the approval on a (b drives the run: the answer is forwarded).
    let mut sse = SseReader::open(client.get(a.url(&format!("/v1/runs/{run}/events")))).await;
    assert_eq!(sse.status, StatusCode::OK);
    sse.until("hitl_request").await;
    let request = pending_request(&client, &a, &run).await;
    let (status, body) = post(
        &client,
        a.url(&format!("/v1/runs/{run}/hitl/{request}")),
        json!({"decision": "approve", "text": "via a"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["runId"], run.as_str());
    let first = hook.next_call().await;
    assert_eq!(first.body["nodeId"], "writer-hook");
    sse.until("node_start:writer-hook").await;

    // b dies while its node is in flight; a takes the run over and dispatches the node again
    // with the same idempotency key.
    b.kill();
    let killed = Instant::now();
    let second = hook.next_call().await;
    let takeover = killed.elapsed();
    eprintln!("node re-dispatched {takeover:?} after the owner's death");
    assert_eq!(second.body["nodeId"], "writer-hook");
    assert_eq!(second.idempotency_key, first.idempotency_key);
    assert!(second.idempotency_key.is_some());
    assert!(takeover < Duration::from_secs(10), "{takeover:?}");
    release.notify_one();
    let rest = sse.rest().await;
    assert_eq!(rest.last().unwrap().payload()["status"], "completed");
    assert_eq!(
        db.query(&format!(
            "SELECT owner FROM flexrun_runs WHERE run_id = '{run}'"
        )),
        "a"
    );

    let metrics = client
        .get(a.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metric = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    assert_eq!(metric("flexrun_cluster_runs_taken_over_total"), 1);
    assert!(
        metric("flexrun_cluster_remote_events_total") > 0,
        "{metrics}"
    );

    // What the follower on a saw is the stored log, from the first event to the last.
    let stored = stored_events(&a, &run).await;
    assert_run_is_whole(&run, &stored);
    let seen = sse.events().to_vec();
    assert_eq!(seen.len(), stored.len(), "no gap, no duplicate");
    assert_eq!(seen, stored);
    let answered: Vec<&RunEvent> = stored
        .iter()
        .filter(|e| e.kind() == flexrun::fsm::EventKind::HitlResolved)
        .collect();
    assert_eq!(answered.len(), 1, "the forwarded answer is applied once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steering_sent_to_any_instance_is_applied_once_by_the_driver() {
    let db = TestDatabase::create();
    let mut hook = Webhook::start([Reply::Hang, Reply::Copy]).await;
    let a = Instance::start(&db, "a");
    let b = Instance::start(&db, "b");
    let client = client();
    let run = webhook_run(&client, &b, &hook, None).await;
    hook.next_call().await;

    // Every request goes to a; b drives the run.
    let steer = |path: &str, key: Option<&str>, body: Value| {
        let mut request = client
            .post(a.url(&format!("/v1/runs/{run}/{path}")))
            .json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send()
    };
    let response = steer("pause", None, json!({"reason": "hold"}))
        .await
        .unwrap();
    let (status, body) = status_json(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "paused");
    let (status, body) = status_json(steer("signal", None, json!({})).await.unwrap()).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "not a steering route: {body}"
    );
    let (status, body) = status_json(
        steer("signals", None, json!({"name": "noted"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for replay in [false, true] {
        let response = steer("resume", Some("resume-1"), json!({})).await.unwrap();
        let replayed = response.headers().get("idempotent-replayed").is_some();
        let (status, body) = status_json(response).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(replayed, replay, "{body}");
    }
    let (status, body) = status_json(
        steer("cancel", None, json!({"reason": "done"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = status_json(steer("cancel", None, json!({})).await.unwrap()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("RUN_ENDED")),
        "{body}"
    );

    let events = stored_events(&a, &run).await;
    let kinds: Vec<String> = events
        .iter()
        .map(|e| {
            serde_json::to_value(e).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let count = |kind: &str| kinds.iter().filter(|k| *k == kind).count();
    assert_eq!(count("run_paused"), 1, "{kinds:?}");
    assert_eq!(
        count("run_resumed"),
        1,
        "the replayed resume is not applied again: {kinds:?}"
    );
    assert_eq!(count("complete"), 1, "{kinds:?}");
    assert_eq!(
        serde_json::to_value(events.last().unwrap()).unwrap()["payload"]["status"],
        "cancelled"
    );
    assert_eq!(
        db.query(&format!(
            "SELECT owner FROM flexrun_runs WHERE run_id = '{run}'"
        )),
        b.id,
        "b drove the run throughout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_sent_to_two_instances_at_once_creates_one_run() {
    let db = TestDatabase::create();
    let a = Instance::start(&db, "a");
    let b = Instance::start(&db, "b");
    let client = client();
    let envelope = approval_envelope(0);
    for round in 0..10 {
        let key = format!("create-{round}");
        let send = |at: &Instance| {
            client
                .post(at.url("/v1/runs"))
                .header("Idempotency-Key", key.as_str())
                .json(&envelope)
                .send()
        };
        let (first, second) = tokio::join!(send(&a), send(&b));
        let mut runs = Vec::new();
        for response in [first.unwrap(), second.unwrap()] {
            let (status, body) = status_json(response).await;
            match status {
                StatusCode::CREATED | StatusCode::OK => {
                    runs.push(body["runId"].as_str().unwrap().to_owned());
                }
                StatusCode::CONFLICT => {
                    assert_eq!(body["error"]["code"], "IDEMPOTENCY_KEY_IN_USE", "{body}");
                }
                other => panic!("{other}: {body}"),
            }
        }
        // A client that got 409 retries, on either instance, and gets the one run.
        for at in [&a, &b] {
            let response = send(at).await.unwrap();
            let replayed = response.headers().get("idempotent-replayed").cloned();
            let (status, body) = status_json(response).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            assert_eq!(
                replayed.as_ref().and_then(|v| v.to_str().ok()),
                Some("true"),
                "a retry is answered from the record: {body}"
            );
            runs.push(body["runId"].as_str().unwrap().to_owned());
        }
        runs.sort();
        runs.dedup();
        assert_eq!(runs.len(), 1, "round {round}: {runs:?}");
    }
    assert_eq!(db.query("SELECT count(*) FROM flexrun_runs"), "10");
    assert_eq!(
        db.query("SELECT count(*) FROM flexrun_claims"),
        "0",
        "every claim is released"
    );
}
