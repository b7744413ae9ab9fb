//! SSE semantics: resume with Last-Event-ID or ?after= without gap or duplicate, many
//! clients, heartbeats, stalled clients, streams closed on shutdown.

use std::time::Duration;

use flexrun::api::ApiConfig;
use flexrun::fsm::EventKind;
use reqwest::StatusCode;
use serde_json::json;

use crate::hitl::approval;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnecting_with_last_event_id_gets_exactly_the_missing_events() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let mut committed = server.engine.subscribe();
    let run = server
        .submit(copy_envelope(
            &["copyVariants", "summary"],
            approval("fail"),
        ))
        .await;
    let mut first = server.events(run, None).await;
    let seen = first.until("node_start:writer-en").await;
    let last_seen = seen.last().unwrap().seq();
    drop(first);

    let paused_at = loop {
        let ev = tokio::time::timeout(GUARD, committed.recv())
            .await
            .unwrap()
            .unwrap();
        if ev.run_id == run && ev.kind() == EventKind::HitlRequest {
            break ev.seq;
        }
    };
    assert!(
        paused_at > last_seen + 1,
        "events were committed while disconnected"
    );
    let mut second = server.events(run, Some(last_seen)).await;
    let replayed = second.until("hitl_request").await;
    assert_eq!(
        seqs(&replayed),
        (last_seen + 1..=paused_at).collect::<Vec<_>>(),
        "the backlog from the store"
    );
    let request_id = replayed.last().unwrap().payload()["requestId"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = server
        .post(
            &format!("/v1/runs/{run}/hitl/{request_id}"),
            json!({"decision": "approve"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let live = second.rest().await;
    let mut all = seen.clone();
    all.extend(replayed);
    all.extend(live);
    let stored = server.stored(run);
    assert_eq!(
        seqs(&all),
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    assert_frames_are_stored(&all, &stored);
    assert_eq!(all.last().unwrap().event.as_deref(), Some("complete"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_query_and_last_event_id_select_the_replay_start() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let run = server
        .submit(copy_envelope(&["copyVariants"], json!(null)))
        .await;
    let all = server.events(run, None).await.rest().await;
    assert_eq!(all.len(), 8);

    let url = server.url(&format!("/v1/runs/{run}/events?after=3"));
    let frames = SseReader::open(server.client.get(&url)).await.rest().await;
    assert_eq!(seqs(&frames), [4, 5, 6, 7, 8]);
    let url = server.url(&format!("/v1/runs/{run}/events?after=2"));
    let frames = SseReader::open(server.client.get(&url).header("last-event-id", "5"))
        .await
        .rest()
        .await;
    assert_eq!(seqs(&frames), [6, 7, 8], "Last-Event-ID wins over ?after");
    let mut caught_up = server.events(run, Some(8)).await;
    assert_eq!(
        caught_up.status,
        StatusCode::NO_CONTENT,
        "a client that saw `complete` is told not to reconnect"
    );
    assert!(caught_up.rest().await.is_empty());
    let mut last = server.events(run, Some(7)).await;
    assert_eq!(labels(&last.rest().await), ["complete"]);
    assert_eq!(
        last.retry,
        Some(3000),
        "every stream announces its retry delay"
    );

    let bad = SseReader::open(
        server
            .client
            .get(server.url(&format!("/v1/runs/{run}/events")))
            .header("last-event-id", "x"),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let mut streamed = SseReader::open(
        server
            .client
            .post(server.url("/v1/runs?stream=true"))
            .json(&copy_envelope(&["copyVariants"], json!(null))),
    )
    .await;
    assert_eq!(streamed.status, StatusCode::OK);
    let frames = streamed.rest().await;
    assert_eq!(
        labels(&frames),
        labels(&all),
        "?stream=true answers with the run's stream"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_follow_one_run_and_a_stalled_one_blocks_nothing() {
    let (_dir, path) = temp_store();
    let opts = Options {
        event_buffer: 16,
        ..Options::default()
    };
    let server = Server::start(path, opts).await;
    let run = server
        .submit(copy_envelope(
            &["copyVariants", "summary"],
            approval("fail"),
        ))
        .await;
    let mut clients = Vec::new();
    let mut request_id = String::new();
    for _ in 0..4 {
        let mut c = server.events(run, None).await;
        let head = c.until("hitl_request").await;
        request_id = head.last().unwrap().payload()["requestId"]
            .as_str()
            .unwrap()
            .to_owned();
        clients.push(c);
    }
    let mut stalled = server.events(run, None).await;
    let (status, body) = server
        .post(
            &format!("/v1/runs/{run}/hitl/{request_id}"),
            json!({"decision": "approve"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for _ in 0..10 {
        server
            .submit(copy_envelope(&["copyVariants"], json!(null)))
            .await;
    }
    let outcome = tokio::time::timeout(GUARD, server.engine.wait(run))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        format!("{:?}", outcome.status),
        "Completed",
        "the run finished with a client not reading"
    );
    let mut tails = Vec::new();
    for c in &mut clients {
        tails.push(labels(&c.rest().await));
    }
    assert!(tails.windows(2).all(|w| w[0] == w[1]), "{tails:?}");
    assert_eq!(tails[0].last().map(String::as_str), Some("complete"));
    let frames = stalled.rest().await;
    assert_frames_are_stored(&frames, &server.stored(run));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_an_idle_stream_open_and_shutdown_closes_it() {
    let (_dir, path) = temp_store();
    let opts = Options {
        config: ApiConfig {
            heartbeat: Duration::from_millis(50),
            ..ApiConfig::default()
        },
        ..Options::default()
    };
    let server = Server::start(path, opts).await;
    let run = server
        .submit(copy_envelope(
            &["copyVariants", "summary"],
            approval("fail"),
        ))
        .await;
    let mut sse = server.events(run, None).await;
    sse.until("hitl_request").await;
    let frame = sse.next_frame().await.unwrap();
    assert_eq!(frame.comment.as_deref(), Some("heartbeat"), "{frame:?}");
    assert!(frame.event.is_none() && frame.data.is_none());

    let stop = tokio::spawn(server.stop());
    loop {
        match sse.next_frame().await {
            None => break,
            Some(f) => assert!(f.comment.is_some(), "only heartbeats before the end: {f:?}"),
        }
    }
    tokio::time::timeout(GUARD, stop).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_of_one_run_get_exactly_its_events_beside_other_runs_traffic() {
    let (_dir, path) = temp_store();
    let server = Server::start(path, Options::default()).await;
    let run = server
        .submit(copy_envelope(
            &["copyVariants", "summary"],
            approval("fail"),
        ))
        .await;
    let other = server
        .submit(copy_envelope(
            &["copyVariants", "summary"],
            approval("fail"),
        ))
        .await;
    let mut clients = Vec::new();
    let mut request_id = String::new();
    for _ in 0..50 {
        let mut c = server.events(run, None).await;
        let head = c.until("hitl_request").await;
        request_id = head.last().unwrap().payload()["requestId"]
            .as_str()
            .unwrap()
            .to_owned();
        clients.push((c, head));
    }
    let mut watcher = server.events(other, None).await;
    watcher.until("hitl_request").await;
    let (status, body) = server
        .post(
            &format!("/v1/runs/{run}/hitl/{request_id}"),
            json!({"decision": "approve"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for _ in 0..5 {
        server
            .submit(copy_envelope(&["copyVariants"], json!(null)))
            .await;
    }
    tokio::time::timeout(GUARD, server.engine.wait(run))
        .await
        .unwrap()
        .unwrap();
    let stored = server.stored(run);
    for (mut c, mut frames) in clients {
        frames.extend(c.rest().await);
        assert!(
            frames
                .iter()
                .all(|f| f.data.as_ref().unwrap()["runId"] == json!(run)),
            "only the run's events"
        );
        assert_frames_are_stored(&frames, &stored);
    }
    drop(watcher);
    server.stop().await;
}
