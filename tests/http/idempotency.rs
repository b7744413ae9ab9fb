//! `Idempotency-Key`: a retried request gets the original answer — across a dropped
//! connection and a restart — and a reused key with another body is refused.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::hitl::approval;
use crate::support::*;

impl Server {
    async fn post_keyed(&self, path: &str, key: &str, body: &Value) -> (StatusCode, bool, Value) {
        let response = self
            .client
            .post(self.url(path))
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .unwrap();
        let replayed = response
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true");
        let (status, body) = status_json(response).await;
        (status, replayed, body)
    }

    async fn run_ids(&self) -> Vec<String> {
        let (_, list) = self.get("/v1/runs").await;
        list["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["runId"].as_str().unwrap().to_owned())
            .collect()
    }
}

fn tagline() -> Value {
    copy_envelope(&["copyVariants", "summary"], json!({}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_after_sending_and_retries_ends_with_one_run() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let body = serde_json::to_vec(&tagline()).unwrap();
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/runs HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         idempotency-key: create-1\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&body).await.unwrap();
    socket.flush().await.unwrap();
    drop(socket);

    // The retry may meet the first request still being applied (409); a client retries that.
    let started = tokio::time::Instant::now();
    let (status, replayed, created) = loop {
        let answer = server.post_keyed("/v1/runs", "create-1", &tagline()).await;
        if answer.0 != StatusCode::CONFLICT {
            break answer;
        }
        assert_eq!(
            answer.2["error"]["code"], "IDEMPOTENCY_KEY_IN_USE",
            "{}",
            answer.2
        );
        assert!(
            started.elapsed() < GUARD,
            "the first request never finished"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let run = created["runId"].as_str().unwrap().to_owned();
    assert_eq!(server.run_ids().await, vec![run], "exactly one run");
    // Whether the request that hung up got to create the run is up to timing; when it did,
    // the retry was answered from its record.
    let _ = replayed;

    let (status, again, body) = server.post_keyed("/v1/runs", "create-1", &tagline()).await;
    assert_eq!((status, again), (StatusCode::CREATED, true));
    assert_eq!(body, created, "the original answer, field for field");
    assert_eq!(server.run_ids().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_kept_across_a_restart_and_refuses_a_different_body() {
    let (_dir, path) = temp_store();
    let server = Server::start(path.clone(), Options::default()).await;
    let (status, replayed, first) = server.post_keyed("/v1/runs", "create-2", &tagline()).await;
    assert_eq!((status, replayed), (StatusCode::CREATED, false), "{first}");
    // The same body written another way is the same request.
    let reordered: Value =
        serde_json::from_str(&serde_json::to_string_pretty(&tagline()).unwrap()).unwrap();
    server.engine.abort().await;
    server.stop().await;

    let server = Server::start(path, Options::default()).await;
    let (status, replayed, again) = server.post_keyed("/v1/runs", "create-2", &reordered).await;
    assert_eq!((status, replayed), (StatusCode::CREATED, true), "{again}");
    assert_eq!(again["runId"], first["runId"]);

    let mut other = tagline();
    other["objective"] = json!("another objective");
    let (status, _, refused) = server.post_keyed("/v1/runs", "create-2", &other).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["error"]["code"], "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(refused["error"]["details"]["field"], "Idempotency-Key");
    assert_eq!(server.run_ids().await.len(), 1, "nothing was created");

    let (status, _, bad) = server.post_keyed("/v1/runs", "two words", &tagline()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    assert_eq!(bad["error"]["code"], "INVALID_IDEMPOTENCY_KEY");
    assert_eq!(bad["error"]["details"]["field"], "Idempotency-Key");
    assert_eq!(server.run_ids().await.len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_steering_requests_are_applied_once() {
    let (_dir, path) = temp_store();
    let server = Server::start(path.clone(), Options::default()).await;
    let run = server
        .submit(copy_envelope(
            &["copyVariants", "summary"],
            approval("fail"),
        ))
        .await;
    let mut sse = server.events(run, None).await;
    let request = sse
        .until("hitl_request")
        .await
        .last()
        .unwrap()
        .payload()
        .clone();
    let request_id = request["requestId"].as_str().unwrap();
    let answer = format!("/v1/runs/{run}/hitl/{request_id}");
    let approve = json!({"decision": "approve"});

    let (status, replayed, first) = server.post_keyed(&answer, "answer-1", &approve).await;
    assert_eq!((status, replayed), (StatusCode::OK, false), "{first}");
    let rest = sse.rest().await;
    assert_eq!(rest.last().unwrap().payload()["status"], "completed");

    // Without the key a second answer is a conflict; with it, the original answer.
    let (status, _) = server.post(&answer, approve.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, replayed, again) = server.post_keyed(&answer, "answer-1", &approve).await;
    assert_eq!((status, replayed), (StatusCode::OK, true), "{again}");
    assert_eq!(again, first, "where the run stood right after the answer");
    assert_eq!(first["state"], "executing");

    // Reusing the key for another operation is a mismatch, also after a restart.
    server.stop().await;
    let server = Server::start(path, Options::default()).await;
    let (status, replayed, _) = server.post_keyed(&answer, "answer-1", &approve).await;
    assert_eq!((status, replayed), (StatusCode::OK, true));
    let cancel = format!("/v1/runs/{run}/cancel");
    let (status, _, refused) = server.post_keyed(&cancel, "answer-1", &json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["error"]["code"], "IDEMPOTENCY_KEY_REUSED");
    let resolved = server
        .stored(run)
        .iter()
        .filter(|e| e.kind().as_str() == "hitl_resolved")
        .count();
    assert_eq!(resolved, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_signal_fires_its_policy_once() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let mut policies = approval("fail");
    policies["runtime"].as_array_mut().unwrap().push(json!(
        {"id": "needs-qa", "maxFires": 5, "trigger": {"kind": "manual", "signal": "needs-qa"},
         "action": {"type": "replan", "rationale": "add a QA pass"}}));
    let run = server
        .submit(copy_envelope(&["copyVariants", "summary"], policies))
        .await;
    let mut sse = server.events(run, None).await;
    let request = sse
        .until("hitl_request")
        .await
        .last()
        .unwrap()
        .payload()
        .clone();
    let signals = format!("/v1/runs/{run}/signals");
    let signal = json!({"name": "needs-qa"});
    for attempt in 0..3 {
        let (status, replayed, body) = server.post_keyed(&signals, "signal-1", &signal).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(replayed, attempt > 0);
        assert_eq!(body["state"], "paused");
    }
    let (_, detail) = server.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(detail["state"], "paused");
    let answer = format!(
        "/v1/runs/{run}/hitl/{}",
        request["requestId"].as_str().unwrap()
    );
    let (status, _) = server.post(&answer, json!({"decision": "approve"})).await;
    assert_eq!(status, StatusCode::OK);
    let rest = sse.rest().await;
    let fired = rest
        .iter()
        .filter(|f| f.event.as_deref() == Some("policy_triggered"))
        .count();
    assert_eq!(fired, 1, "{:?}", labels(&rest));
    assert_eq!(rest.last().unwrap().payload()["status"], "completed");
    server.stop().await;
}
