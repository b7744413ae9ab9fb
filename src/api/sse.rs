//! Resumable SSE streams: the frames of [`Engine::events`](crate::Engine::events), the
//! gap-free replay-then-live follower every embedder uses too.
//!
//! The body is written from the run's shared frames ([`Frame::sse`]): a live event is
//! serialised once however many clients follow its run.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use futures::stream::{self, Stream, StreamExt};

use super::state::AppState;
use crate::engine::fanout::Frame;
use crate::ids::RunId;

/// The heartbeat comment sent when a stream is idle for the heartbeat interval.
const HEARTBEAT: &[u8] = b":heartbeat\n\n";

/// The SSE response following `run` after `after`, with heartbeats, ending on `complete` or
/// when the server shuts down.
pub(crate) fn response(state: &AppState, run: RunId, after: u64) -> Response {
    let frames = state
        .engine
        .follow_frames(run, after)
        .take_until(state.shutdown.triggered());
    let body = with_heartbeats(frames, state.config.heartbeat).map(Ok::<_, Infallible>);
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The frames' bytes, with a heartbeat whenever none came for `every`; ends with `frames`.
fn with_heartbeats(
    frames: impl Stream<Item = std::sync::Arc<Frame>> + Send + 'static,
    every: Duration,
) -> impl Stream<Item = Bytes> + Send + 'static {
    let frames = Box::pin(frames);
    stream::unfold(frames, move |mut frames| async move {
        // `next` is cancel-safe: a timed-out wait leaves the pending item in `frames`.
        match tokio::time::timeout(every, frames.next()).await {
            Ok(Some(frame)) => Some((frame.sse(), frames)),
            Ok(None) => None,
            Err(_) => Some((Bytes::from_static(HEARTBEAT), frames)),
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::fsm::{EventBody, RunEvent};
    use crate::ids::{RunId, Timestamp};

    fn event(seq: u64) -> Arc<RunEvent> {
        Arc::new(RunEvent {
            seq,
            run_id: RunId::new(),
            timestamp: Timestamp(seq),
            plan_version: 0,
            node_id: Some(format!("n{seq}")),
            body: EventBody::NodeComplete {
                attempt: 1,
                output: serde_json::Map::new(),
                duration_ms: 0,
            },
        })
    }

    #[test]
    fn frames_carry_the_contract_names() {
        let ev = event(7);
        let frame = Frame::new(ev.clone());
        let text = String::from_utf8(frame.sse().to_vec()).unwrap();
        assert_eq!(
            text.lines().take(2).collect::<Vec<_>>(),
            ["event: node_complete", "id: 7"]
        );
        assert_eq!(text, crate::api::sse_frame(&ev));
    }

    #[tokio::test]
    async fn an_idle_stream_gets_heartbeats_and_ends_with_its_frames() {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Arc<Frame>>();
        let mut body = Box::pin(with_heartbeats(rx, Duration::from_millis(10)));
        assert_eq!(&body.next().await.unwrap()[..], HEARTBEAT);
        tx.unbounded_send(Arc::new(Frame::new(event(1)))).unwrap();
        let got = body.next().await.unwrap();
        assert!(got.starts_with(b"event: node_complete\nid: 1\n"), "{got:?}");
        drop(tx);
        let rest: Vec<_> = body.collect().await;
        assert!(rest.iter().all(|b| &b[..] == HEARTBEAT), "{rest:?}");
    }
}
