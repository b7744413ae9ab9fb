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

/// The SSE response following `run` after `after`: first the reconnection delay (`retry:`),
/// then the frames with heartbeats, ending on `complete` or when the server shuts down.
pub(crate) fn response(state: &AppState, run: RunId, after: u64) -> Response {
    let frames = state
        .engine
        .follow_frames(run, after)
        .take_until(state.shutdown.triggered());
    let retry = Bytes::from(format!("retry: {}\n\n", state.config.sse_retry.as_millis()));
    let body = stream::once(async move { retry })
        .chain(with_heartbeats(frames, state.config.heartbeat))
        .map(Ok::<_, Infallible>);
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Most frames joined into one body chunk.
const MAX_COALESCED: usize = 64;

/// The frames' bytes, with a heartbeat when none came over a whole `every` (so an idle stream
/// gets one every `every` to 2 × `every`); ends with `frames`.
///
/// Frames that are ready together (a commit's events, a replay page) leave as one body chunk:
/// one frame is passed on as its shared bytes, several are joined. The heartbeat is one timer
/// per stream that ticks every `every`, not a timer per frame.
fn with_heartbeats(
    frames: impl Stream<Item = std::sync::Arc<Frame>> + Send + 'static,
    every: Duration,
) -> impl Stream<Item = Bytes> + Send + 'static {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = (Box::pin(frames), ticks, false);
    stream::unfold(state, |(mut frames, mut ticks, mut sent)| async move {
        loop {
            tokio::select! {
                biased;
                frame = frames.next() => {
                    let first = frame?;
                    sent = true;
                    let chunk = coalesce(first, &mut frames);
                    return Some((chunk, (frames, ticks, sent)));
                }
                _ = ticks.tick() => {
                    if !std::mem::take(&mut sent) {
                        return Some((Bytes::from_static(HEARTBEAT), (frames, ticks, sent)));
                    }
                }
            }
        }
    })
}

/// `first`'s bytes, followed by those of every frame `frames` has ready now (up to
/// [`MAX_COALESCED`]).
fn coalesce<S>(first: std::sync::Arc<Frame>, frames: &mut std::pin::Pin<Box<S>>) -> Bytes
where
    S: Stream<Item = std::sync::Arc<Frame>> + ?Sized,
{
    use futures::FutureExt as _;
    let first = first.sse();
    let mut joined: Option<Vec<u8>> = None;
    for _ in 1..MAX_COALESCED {
        // A pending `next` is dropped unpolled again: the follower's `next` is cancel-safe.
        let Some(Some(frame)) = frames.next().now_or_never() else {
            break;
        };
        joined
            .get_or_insert_with(|| first.to_vec())
            .extend_from_slice(&frame.sse());
    }
    joined.map_or(first, Bytes::from)
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
                duration_us: 0,
                spend: None,
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

    // Paused time: the sleeps below advance the clock exactly, whatever the machine's load.
    #[tokio::test(start_paused = true)]
    async fn frames_ready_together_leave_as_one_chunk_and_a_busy_stream_gets_no_heartbeat() {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Arc<Frame>>();
        let mut body = Box::pin(with_heartbeats(rx, Duration::from_millis(40)));
        let events: Vec<_> = (1..=3).map(event).collect();
        for ev in &events {
            tx.unbounded_send(Arc::new(Frame::new(ev.clone()))).unwrap();
        }
        let chunk = body.next().await.unwrap();
        let expected: Vec<u8> = events
            .iter()
            .flat_map(|ev| Frame::new(ev.clone()).sse().to_vec())
            .collect();
        assert_eq!(&chunk[..], &expected[..]);
        // A frame every 10 ms keeps the stream busy: no heartbeat in between.
        for seq in 4..=10 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.unbounded_send(Arc::new(Frame::new(event(seq)))).unwrap();
            let got = body.next().await.unwrap();
            assert!(
                got.starts_with(format!("event: node_complete\nid: {seq}\n").as_bytes()),
                "{got:?}"
            );
        }
    }
}
