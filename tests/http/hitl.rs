//! HITL answered over HTTP, with the 409s around it.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

pub fn approval(on_reject: &str) -> Value {
    json!({"runtime": [{"id": "review",
        "trigger": {"kind": "onNodeComplete", "selector": {"capabilityId": "writer.en"}},
        "action": {"type": "hitl", "question": "publish this copy?", "onApprove": "continue", "onReject": on_reject}}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hitl_request_is_answered_over_http() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let run = server
        .submit(copy_envelope(
            &["copyVariants", "summary"],
            approval("fail"),
        ))
        .await;
    let mut sse = server.events(run, None).await;
    let before = sse.until("hitl_request").await;
    let request = before.last().unwrap().payload().clone();
    assert_eq!(request["question"], "publish this copy?");
    let request_id = request["requestId"].as_str().unwrap().to_owned();

    let (_, detail) = server.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(detail["state"], "paused");
    assert_eq!(detail["pendingHitl"][0]["requestId"], request_id.as_str());
    assert_eq!(detail["pendingHitl"][0]["status"], "pending");

    let (status, body) = server
        .post(&format!("/v1/runs/{run}/resume"), json!({}))
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "resume needs the answer first: {body}"
    );
    assert_eq!(body["error"]["code"], "CONFLICT");
    let (status, body) = server
        .post(
            &format!("/v1/runs/{run}/hitl/no-such-request"),
            json!({"decision": "approve"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = server
        .post(
            &format!("/v1/runs/{run}/hitl/{request_id}"),
            json!({"decision": "maybe"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_BODY"))
    );

    let (status, ack) = server
        .post(
            &format!("/v1/runs/{run}/hitl/{request_id}"),
            json!({"decision": "approve", "text": "ship it", "responder": {"id": "ops-1"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ack}");
    assert_eq!(ack["runId"], run.to_string());
    let (status, again) = server
        .post(
            &format!("/v1/runs/{run}/hitl/{request_id}"),
            json!({"decision": "approve"}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a resolved request is refused: {again}"
    );

    let after = sse.rest().await;
    assert_eq!(
        labels(&after),
        [
            "hitl_resolved:writer-en",
            "node_start:copy-summarizer",
            "node_complete:copy-summarizer",
            "complete"
        ]
    );
    let resolved = after[0].payload();
    assert_eq!(
        (
            &resolved["decision"],
            &resolved["text"],
            &resolved["responder"]
        ),
        (&json!("approve"), &json!("ship it"), &json!("ops-1"))
    );
    let (_, hitl) = server.get(&format!("/v1/runs/{run}/hitl")).await;
    assert_eq!(hitl["requests"][0]["status"], "resolved");
    let (status, ended) = server
        .post(&format!("/v1/runs/{run}/cancel"), json!({}))
        .await;
    assert_eq!(
        (status, ended["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("RUN_ENDED"))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_pause_resume_signal_and_cancel_over_http() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let policies = json!({"runtime": [
        {"id": "hold", "trigger": {"kind": "onNodeComplete", "selector": {"capabilityId": "brief.structurer"}},
         "action": {"type": "pause", "reason": "wait for the operator"}},
        {"id": "operator-replan", "trigger": {"kind": "manual", "signal": "needs-qa"},
         "action": {"type": "replan", "rationale": "operator asked for QA"}}]});
    let run = server
        .submit(copy_envelope(&["copyVariants", "summary"], policies))
        .await;
    let mut sse = server.events(run, None).await;
    sse.until("policy_triggered").await;
    let (status, body) = server
        .post(&format!("/v1/runs/{run}/pause"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "already paused: {body}");
    let (status, ack) = server
        .post(
            &format!("/v1/runs/{run}/signals"),
            json!({"name": "needs-qa", "payload": {"by": "ops"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ack}");
    let resume = server
        .client
        .post(server.url(&format!("/v1/runs/{run}/resume")))
        .send()
        .await
        .unwrap();
    assert_eq!(resume.status(), StatusCode::OK, "an empty body is fine");
    let (status, _) = server
        .post(
            &format!("/v1/runs/{run}/resume"),
            json!({"reason": "again"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "the run is no longer paused");
    let rest = sse.rest().await;
    let kinds: Vec<String> = rest.iter().map(|f| f.event.clone().unwrap()).collect();
    assert_eq!(kinds[0], "run_resumed");
    assert_eq!(kinds[1], "policy_triggered", "{kinds:?}");
    assert!(kinds.contains(&"plan_updated".to_owned()));
    assert_eq!(rest.last().unwrap().payload()["status"], "completed");

    let run = server
        .submit(copy_envelope(
            &["copyVariants", "summary"],
            approval("fail"),
        ))
        .await;
    let mut sse = server.events(run, None).await;
    sse.until("hitl_request").await;
    let (status, ack) = server
        .post(
            &format!("/v1/runs/{run}/cancel"),
            json!({"reason": "changed my mind"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ack}");
    let rest = sse.rest().await;
    assert_eq!(labels(&rest), ["complete"]);
    assert_eq!(rest[0].payload()["status"], "cancelled");
    let (_, detail) = server.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(detail["status"], "cancelled");
    assert!(detail["error"]["code"].is_string(), "{detail}");
    server.stop().await;
}
