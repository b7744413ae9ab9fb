//! Webhook failures become node events, never a crashed run.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

async fn run_with(replies: Vec<Reply>, timeout_ms: u64, max_attempts: u32) -> Vec<Frame> {
    let (_dir, path) = temp_store();
    let hook = Webhook::start(replies).await;
    let server = Server::start(path, Options::default()).await;
    let (status, body) = server
        .post(
            "/v1/capabilities",
            hook.capability("writer.hook", timeout_ms, max_attempts),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let run = server
        .submit(copy_envelope(&["copyVariants"], only_webhook_writer()))
        .await;
    let frames = server.events(run, None).await.rest().await;
    assert_frames_are_stored(&frames, &server.stored(run));
    server.stop().await;
    frames
        .into_iter()
        .filter(|f| f.label().ends_with("writer-hook") || f.label() == "complete")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_is_retried_and_a_4xx_fails_the_run_cleanly() {
    let frames = run_with(
        vec![Reply::Status(503, json!({"busy": true})), Reply::Copy],
        10_000,
        2,
    )
    .await;
    assert_eq!(
        labels(&frames),
        [
            "node_start:writer-hook",
            "node_error:writer-hook",
            "node_start:writer-hook",
            "node_complete:writer-hook",
            "complete"
        ]
    );
    let err = frames[1].payload();
    assert_eq!(
        (&err["error"]["code"], &err["willRetry"]),
        (&json!("HTTP_STATUS"), &json!(true))
    );
    assert!(
        err["error"]["message"].as_str().unwrap().contains("503"),
        "{err}"
    );
    assert_eq!(frames[4].payload()["status"], "completed");

    let frames = run_with(
        vec![Reply::Status(400, json!({"bad": "input"})), Reply::Copy],
        10_000,
        2,
    )
    .await;
    assert_eq!(
        labels(&frames),
        [
            "node_start:writer-hook",
            "node_error:writer-hook",
            "complete"
        ]
    );
    let err = frames[1].payload();
    assert_eq!(
        (&err["error"]["code"], &err["willRetry"]),
        (&json!("HTTP_STATUS"), &json!(false))
    );
    assert_eq!(frames[2].payload()["status"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_a_bad_body_and_an_invalid_output_are_node_failures() {
    let frames = run_with(vec![Reply::Hang], 300, 1).await;
    assert_eq!(
        labels(&frames),
        [
            "node_start:writer-hook",
            "node_error:writer-hook",
            "complete"
        ]
    );
    assert_eq!(frames[1].payload()["error"]["code"], "TIMEOUT");
    assert_eq!(frames[2].payload()["status"], "failed");

    let frames = run_with(
        vec![
            Reply::Status(200, json!({"result": "no output key"})),
            Reply::Copy,
        ],
        10_000,
        2,
    )
    .await;
    assert_eq!(frames[1].payload()["error"]["code"], "BAD_RESPONSE");
    assert_eq!(frames.last().unwrap().payload()["status"], "completed");

    let frames = run_with(
        vec![Reply::Status(200, json!({"output": {"copyVariants": 5}}))],
        10_000,
        1,
    )
    .await;
    assert_eq!(
        labels(&frames),
        [
            "node_start:writer-hook",
            "validation_error:writer-hook",
            "complete"
        ]
    );
    assert_eq!(frames[2].payload()["status"], "failed");
}
