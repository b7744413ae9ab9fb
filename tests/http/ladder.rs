//! The per-node fallback ladder over HTTP, with a failing webhook: retries wait their
//! backoff, then a human answers `retry`, `skip`, `replan` or `fail` (docs/POLICIES.md,
//! "Fallback ladder").

use std::time::Duration;

use flexrun::RunId;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

const BACKOFF_MS: u64 = 150;

fn busy() -> Reply {
    Reply::Status(503, json!({"busy": true}))
}

/// The webhook writer with a ladder of three attempts, `BACKOFF_MS` doubling, then a human.
fn laddered(hook: &Webhook) -> Value {
    let mut cap = hook.capability("writer.hook", 10_000, 1);
    cap["fallback"] = json!({
        "retry": {"maxAttempts": 3, "backoffMs": BACKOFF_MS, "multiplier": 2.0},
        "then": "hitl"});
    cap
}

struct Ladder {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    hook: Webhook,
    server: Server,
    run: RunId,
    sse: SseReader,
}

/// A run whose writer fails `failures` times (the webhook then succeeds).
async fn start(failures: usize) -> Ladder {
    let (dir, path) = temp_store();
    let hook = Webhook::start(std::iter::repeat_with(busy).take(failures)).await;
    let server = Server::start(path.clone(), Options::default()).await;
    let (status, body) = server.post("/v1/capabilities", laddered(&hook)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let run = server
        .submit(copy_envelope(&["copyVariants"], only_webhook_writer()))
        .await;
    let sse = server.events(run, None).await;
    Ladder {
        _dir: dir,
        path,
        hook,
        server,
        run,
        sse,
    }
}

/// Waits for the fallback request and checks its shape; returns its id.
async fn asked(l: &mut Ladder) -> String {
    let frames = l.sse.until("hitl_request").await;
    let request = frames.last().unwrap();
    assert_eq!(request.label(), "hitl_request:writer-hook");
    let p = request.payload();
    assert_eq!(p["kind"], "clarify");
    assert_eq!(p["options"], json!(["retry", "skip", "replan", "fail"]));
    let question = p["question"].as_str().unwrap();
    assert!(
        question.contains("`writer-hook`") && question.contains("503"),
        "{question}"
    );
    let errors: Vec<&Frame> = frames
        .iter()
        .filter(|f| f.label() == "node_error:writer-hook")
        .collect();
    assert_eq!(errors.len(), 3, "{:?}", labels(&frames));
    assert_eq!(errors[2].payload()["willRetry"], false);
    p["requestId"].as_str().unwrap().to_owned()
}

async fn answer(l: &Ladder, request_id: &str, body: Value) -> (StatusCode, Value) {
    l.server
        .post(&format!("/v1/runs/{}/hitl/{request_id}", l.run), body)
        .await
}

fn option(option: &str) -> Value {
    json!({"decision": "option", "optionId": option})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_wait_their_backoff_then_a_human_retry_completes_the_run() {
    let mut l = start(3).await;
    let mut calls = Vec::new();
    for _ in 0..3 {
        calls.push(l.hook.next_call().await);
    }
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(
        gaps[0] >= Duration::from_millis(BACKOFF_MS),
        "first retry after {gaps:?}"
    );
    assert!(
        gaps[1] >= Duration::from_millis(2 * BACKOFF_MS),
        "second retry after {gaps:?}"
    );
    assert!(
        calls
            .iter()
            .all(|c| c.idempotency_key == calls[0].idempotency_key),
        "one idempotency key for every attempt"
    );
    let request_id = asked(&mut l).await;
    let (status, body) = answer(&l, &request_id, option("retry")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let fourth = l.hook.next_call().await;
    assert_eq!(fourth.body["attempt"], 4, "a fresh round, attempts go on");
    let rest = l.sse.rest().await;
    assert_eq!(
        labels(&rest),
        [
            "hitl_resolved:writer-hook",
            "node_start:writer-hook",
            "node_complete:writer-hook",
            "complete"
        ]
    );
    assert_eq!(rest[3].payload()["status"], "completed");
    let (status, again) = answer(&l, &request_id, option("retry")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    l.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skip_supplies_the_output_and_a_contract_breaking_one_is_refused() {
    let mut l = start(3).await;
    let request_id = asked(&mut l).await;
    let bad = json!({"decision": "option", "optionId": "skip",
        "text": json!({"copyVariants": 5}).to_string()});
    let (status, body) = answer(&l, &request_id, bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "INVALID_ANSWER");
    assert_eq!(body["error"]["details"]["field"], "text/copyVariants");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("copyVariants"),
        "{body}"
    );
    let (_, detail) = l.server.get(&format!("/v1/runs/{}", l.run)).await;
    assert_eq!(detail["state"], "paused", "the request stays pending");

    let good = json!({"decision": "option", "optionId": "skip",
        "text": json!({"copyVariants": ["Supplied by ann"]}).to_string()});
    let (status, body) = answer(&l, &request_id, good).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rest = l.sse.rest().await;
    assert_eq!(
        labels(&rest),
        [
            "hitl_resolved:writer-hook",
            "node_complete:writer-hook",
            "complete"
        ]
    );
    assert_eq!(
        rest[1].payload()["attempt"],
        3,
        "the last attempt, unchanged"
    );
    assert_eq!(
        rest[2].payload()["output"]["copyVariants"][0],
        "Supplied by ann"
    );
    l.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replan_answer_makes_plan_version_two() {
    let mut l = start(3).await;
    let request_id = asked(&mut l).await;
    let (status, body) = answer(&l, &request_id, option("replan")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let frames = l.sse.until("plan_updated").await;
    let requested = frames
        .iter()
        .find(|f| f.label() == "plan_requested")
        .unwrap();
    let trigger = &requested.payload()["trigger"];
    assert_eq!(trigger["source"], "hitl");
    assert_eq!(trigger["nodeId"], "writer-hook");
    assert!(
        trigger["reason"].as_str().unwrap().contains("503"),
        "the failure is the reason: {trigger}"
    );
    let updated = frames.last().unwrap().payload();
    assert_eq!(
        (&updated["previousVersion"], &updated["version"]),
        (&json!(1), &json!(2))
    );
    let rest = l.sse.rest().await;
    assert_eq!(rest.last().unwrap().payload()["status"], "completed");
    let (_, detail) = l.server.get(&format!("/v1/runs/{}", l.run)).await;
    assert_eq!(detail["planVersion"], 2);
    l.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_answer_fails_the_run_with_node_failed() {
    let mut l = start(3).await;
    let request_id = asked(&mut l).await;
    let (status, body) = answer(&l, &request_id, option("fail")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rest = l.sse.rest().await;
    assert_eq!(
        labels(&rest),
        ["complete"],
        "one edge: the answer ends the run"
    );
    let complete = rest[0].payload();
    assert_eq!(complete["status"], "failed");
    assert_eq!(complete["error"]["code"], "NODE_FAILED");
    assert!(
        complete["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&request_id),
        "{complete}"
    );
    let (_, detail) = l.server.get(&format!("/v1/runs/{}", l.run)).await;
    assert_eq!(detail["pendingHitl"], json!([]), "the request is resolved");
    let stored = l.server.stored(l.run);
    assert_eq!(stored.last().unwrap().kind().as_str(), "complete");
    l.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_the_human_thinks_keeps_the_request_answerable() {
    let mut l = start(3).await;
    for attempt in 1..=3 {
        assert_eq!(l.hook.next_call().await.body["attempt"], attempt);
    }
    let request_id = asked(&mut l).await;
    let last = l.server.stored(l.run).last().unwrap().seq;
    l.server.engine.abort().await;
    let Ladder {
        _dir,
        path,
        mut hook,
        server,
        run,
        ..
    } = l;
    server.stop().await;

    let server = Server::start(path, Options::default()).await;
    let (_, detail) = server.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(detail["state"], "paused", "{detail}");
    let (status, body) = server
        .post(
            &format!("/v1/runs/{run}/hitl/{request_id}"),
            option("retry"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(hook.next_call().await.body["attempt"], 4);
    let rest = server.events(run, Some(last)).await.rest().await;
    assert_eq!(
        labels(&rest),
        [
            "hitl_resolved:writer-hook",
            "node_start:writer-hook",
            "node_complete:writer-hook",
            "complete"
        ]
    );
    assert_eq!(
        rest[0].seq(),
        last + 1,
        "nothing was redone across the restart"
    );
    assert_frames_are_stored(
        &server.events(run, None).await.rest().await,
        &server.stored(run),
    );
    server.stop().await;
}
