//! Resumable SSE streams: the frames of [`Engine::events`](crate::Engine::events), the
//! gap-free replay-then-live follower every embedder uses too.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, KeepAliveStream, Sse};
use futures::stream::{BoxStream, StreamExt};

use super::state::AppState;
use crate::engine::follow::follow;
use crate::fsm::RunEvent;
use crate::ids::RunId;

/// The SSE response type of the API.
pub(crate) type EventSse = Sse<KeepAliveStream<BoxStream<'static, Result<Event, Infallible>>>>;

/// The SSE frame of an event: `event:` is the type, `id:` the seq, `data:` the event JSON.
pub(crate) fn frame(event: &RunEvent) -> Event {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".to_owned());
    Event::default()
        .event(event.kind().as_str())
        .id(event.seq.to_string())
        .data(data)
}

/// The SSE response following `run` after `after`, with heartbeats, ending on `complete` or
/// when the server shuts down.
pub(crate) fn response(state: &AppState, run: RunId, after: u64) -> EventSse {
    let rx = state.engine.subscribe();
    let events = follow(state.engine.store().clone(), rx, run, after)
        .map(|ev| Ok::<_, Infallible>(frame(&ev)))
        .take_until(state.shutdown.triggered())
        .boxed();
    Sse::new(events).keep_alive(
        KeepAlive::new()
            .interval(state.config.heartbeat)
            .text("heartbeat"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::EventBody;
    use crate::ids::{RunId, Timestamp};

    #[test]
    fn frames_carry_the_contract_names() {
        let run = RunId::new();
        let ev = RunEvent {
            seq: 7,
            run_id: run,
            timestamp: Timestamp(7),
            plan_version: 0,
            node_id: Some("n7".to_owned()),
            body: EventBody::NodeComplete {
                attempt: 1,
                output: serde_json::Map::new(),
                duration_ms: 0,
            },
        };
        let text = format!("{:?}", frame(&ev));
        assert!(text.contains("node_complete"), "{text}");
        assert_eq!(
            crate::api::sse_frame(&ev)
                .lines()
                .take(2)
                .collect::<Vec<_>>(),
            ["event: node_complete", "id: 7"]
        );
    }
}
