//! The server and engine die mid-run; a new server on the same redb file finishes the run
//! and a client resuming with Last-Event-ID sees the rest.

use reqwest::StatusCode;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_run_finishes_the_run_after_restart() {
    let (_dir, path) = temp_store();
    let mut hook = Webhook::start([Reply::Hang, Reply::Copy]).await;
    let server = Server::start(path.clone(), Options::default()).await;
    let (status, body) = server
        .post(
            "/v1/capabilities",
            hook.capability("writer.hook", 60_000, 1),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let run = server
        .submit(copy_envelope(&["copyVariants"], only_webhook_writer()))
        .await;
    let mut sse = server.events(run, None).await;
    let before = sse.until("node_start:writer-hook").await;
    let first = hook.next_call().await;
    assert_eq!(first.body["attempt"], 1);

    server.engine.abort().await;
    server.stop().await;
    assert!(
        sse.next_event().await.is_none(),
        "the stream ended with the server"
    );

    let server = Server::start(path, Options::default()).await;
    let second = hook.next_call().await;
    assert_eq!(
        second.body["attempt"], 2,
        "re-dispatched with a new attempt"
    );
    assert_eq!(
        second.idempotency_key, first.idempotency_key,
        "and the same idempotency key"
    );
    let last = before.last().unwrap().seq();
    let rest = server.events(run, Some(last)).await.rest().await;
    assert_eq!(
        labels(&rest),
        [
            "node_error:writer-hook",
            "node_start:writer-hook",
            "node_complete:writer-hook",
            "complete"
        ]
    );
    assert_eq!(rest[0].payload()["error"]["code"], "INTERRUPTED");
    assert_eq!(rest[0].seq(), last + 1, "no gap across the crash");
    let mut all = before;
    all.extend(rest);
    assert_frames_are_stored(&all, &server.stored(run));
    let (_, detail) = server.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(detail["status"], "completed");
    assert_eq!(detail["output"]["copyVariants"][0], "writer-hook attempt 2");
    server.stop().await;
}
