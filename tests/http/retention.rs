//! `DELETE /v1/runs/{id}` over a real socket and a real redb file, across a restart.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

fn approval() -> Value {
    json!({"runtime": [{"id": "review",
        "trigger": {"kind": "onNodeComplete", "selector": {"capabilityId": "writer.en"}},
        "action": {"type": "hitl", "question": "publish this copy?", "onApprove": "continue", "onReject": "fail"}}]})
}

async fn delete(server: &Server, path: &str) -> (StatusCode, Value) {
    let response = server.client.delete(server.url(path)).send().await.unwrap();
    status_json(response).await
}

fn run_ids(list: &Value) -> Vec<String> {
    list["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["runId"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_answers_204_409_404_and_a_deleted_run_stays_gone_after_a_restart() {
    let (_dir, path) = temp_store();
    let server = Server::start(path.clone(), Options::default()).await;
    let paused = server
        .submit(copy_envelope(&["copyVariants", "summary"], approval()))
        .await;
    let request = server
        .events(paused, None)
        .await
        .until("hitl_request")
        .await;
    let request_id = request.last().unwrap().payload()["requestId"]
        .as_str()
        .unwrap()
        .to_owned();

    let ended = server
        .submit(copy_envelope(&["copyVariants", "summary"], json!({})))
        .await;
    let mut open_stream = server.events(ended, None).await;
    let first = open_stream.next_event().await.unwrap();
    assert_eq!(first.seq(), 1);
    server.events(ended, None).await.until("complete").await;

    let (status, body) = delete(&server, &format!("/v1/runs/{ended}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(body, Value::String(String::new()), "no body");
    let rest = open_stream.rest().await;
    let mut streamed = vec![first];
    streamed.extend(rest);
    assert_eq!(
        seqs(&streamed),
        (1..=streamed.len() as u64).collect::<Vec<_>>(),
        "a stream open during the deletion ends cleanly, gap-free"
    );

    for path in [
        format!("/v1/runs/{ended}"),
        format!("/v1/runs/{ended}/events"),
        format!("/v1/runs/{ended}/plan"),
    ] {
        let (status, body) = server.get(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["error"]["code"], "RUN_NOT_FOUND", "{path}");
    }
    let (status, body) = delete(&server, &format!("/v1/runs/{ended}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "RUN_NOT_FOUND");
    assert_eq!(body["error"]["details"]["runId"], ended.to_string());
    let (status, body) = delete(&server, "/v1/runs/not-a-run").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "RUN_NOT_FOUND");

    let (status, body) = delete(&server, &format!("/v1/runs/{paused}")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "RUN_ACTIVE");
    assert_eq!(body["error"]["details"]["runId"], paused.to_string());
    assert_eq!(
        body["error"]["message"],
        format!("run {paused} is active: only an ended run can be deleted")
    );
    let (_, detail) = server.get(&format!("/v1/runs/{paused}")).await;
    assert_eq!(detail["state"], "paused");
    assert_eq!(detail["pendingHitl"].as_array().unwrap().len(), 1);
    let (_, list) = server.get("/v1/runs").await;
    assert_eq!(run_ids(&list), [paused.to_string()]);
    server.engine.shutdown().await;
    server.stop().await;

    let server = Server::start(path, Options::default()).await;
    let (status, _) = server.get(&format!("/v1/runs/{ended}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "still gone after a restart");
    let (_, list) = server.get("/v1/runs").await;
    assert_eq!(run_ids(&list), [paused.to_string()]);
    let (status, body) = delete(&server, &format!("/v1/runs/{paused}")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("RUN_ACTIVE")),
        "the recovered run is still active"
    );

    let mut sse = server.events(paused, None).await;
    let (status, body) = server
        .post(
            &format!("/v1/runs/{paused}/hitl/{request_id}"),
            json!({"decision": "approve"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    sse.until("complete").await;
    let (status, body) = delete(&server, &format!("/v1/runs/{paused}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _) = server
        .client
        .get(server.url(&format!("/v1/runs/{paused}/events")))
        .header("last-event-id", "3")
        .send()
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND, "no stream of a deleted run");
    let (_, list) = server.get("/v1/runs").await;
    assert!(run_ids(&list).is_empty(), "{list}");
    server.stop().await;
}
