//! Following a run: replay its log from the store after a given seq, then follow the live
//! broadcast without a gap or a duplicate at the seam.
//!
//! The order matters: subscribe to the broadcast *first*, then read the store. An event
//! committed before the subscription is in the store; one committed after reaches the
//! receiver (it is published only after its commit). Events seen on both paths are dropped
//! by seq. A receiver that lags behind the bounded broadcast (a slow client) falls back to
//! reading the missed range from the store, so the run never waits for a client and the
//! client never misses an event.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::stream::{self, Stream};
use tokio::sync::broadcast::{self, error::RecvError};

use crate::fsm::{EventKind, RunEvent};
use crate::ids::RunId;
use crate::store::Store;

/// Events read from the store per page.
const PAGE: usize = 256;

enum Phase {
    Replay,
    Live,
    Done,
}

struct Follow {
    store: Arc<dyn Store>,
    rx: broadcast::Receiver<Arc<RunEvent>>,
    run: RunId,
    high: u64,
    buf: VecDeque<Arc<RunEvent>>,
    phase: Phase,
}

impl Follow {
    async fn next(&mut self) -> Option<Arc<RunEvent>> {
        loop {
            if let Some(ev) = self.buf.pop_front() {
                if ev.seq <= self.high {
                    continue;
                }
                self.high = ev.seq;
                if ev.kind() == EventKind::Complete {
                    self.phase = Phase::Done;
                    self.buf.clear();
                }
                return Some(ev);
            }
            match self.phase {
                Phase::Done => return None,
                Phase::Replay => self.replay_page().await?,
                Phase::Live => match self.rx.recv().await {
                    Ok(ev) if ev.run_id != self.run || ev.seq <= self.high => {}
                    Ok(ev) if ev.seq == self.high + 1 => self.buf.push_back(ev),
                    Ok(_) | Err(RecvError::Lagged(_)) => self.phase = Phase::Replay,
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }

    /// Reads the next page after `high`; switches to live once the store is exhausted, or
    /// ends when the run is over and everything was sent, or when the run was deleted. `None`
    /// on a store failure.
    async fn replay_page(&mut self) -> Option<()> {
        let (store, run, high) = (self.store.clone(), self.run, self.high);
        let read = tokio::task::spawn_blocking(move || {
            let page = store.events_after(run, high, PAGE)?;
            let ended = if page.is_empty() {
                store
                    .run_head(run)?
                    .is_none_or(|h| h.status.is_terminal() && h.last_seq <= high)
            } else {
                false
            };
            Ok::<_, crate::store::StoreError>((page, ended))
        })
        .await;
        let (page, ended) = match read {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::error!(run_id = %run, error = %e, "event replay failed");
                return None;
            }
            Err(e) => {
                tracing::error!(run_id = %run, error = %e, "event replay task failed");
                return None;
            }
        };
        if ended {
            self.phase = Phase::Done;
        } else if page.len() < PAGE {
            self.phase = Phase::Live;
        }
        self.buf.extend(page.into_iter().map(Arc::new));
        Some(())
    }
}

/// The run's events with a seq greater than `after`, from the store and then live, ending
/// after `complete`. `rx` must have been subscribed before this is called (it is, when it
/// comes straight from [`Engine::subscribe`](crate::Engine::subscribe)).
pub(crate) fn follow(
    store: Arc<dyn Store>,
    rx: broadcast::Receiver<Arc<RunEvent>>,
    run: RunId,
    after: u64,
) -> impl Stream<Item = Arc<RunEvent>> + Send + 'static {
    let state = Follow {
        store,
        rx,
        run,
        high: after,
        buf: VecDeque::new(),
        phase: Phase::Replay,
    };
    stream::unfold(state, |mut state| async move {
        let ev = state.next().await?;
        Some((ev, state))
    })
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use futures::StreamExt;

    use super::*;
    use crate::fsm::{EventBody, RunOutcome, RunState};
    use crate::ids::Timestamp;
    use crate::store::{CommitBatch, RedbStore, RunHead, RunStatus};

    fn event(run: RunId, seq: u64, done: bool) -> RunEvent {
        RunEvent {
            seq,
            run_id: run,
            timestamp: Timestamp(seq),
            plan_version: 0,
            node_id: Some(format!("n{seq}")),
            body: if done {
                EventBody::Complete {
                    status: RunOutcome::Completed,
                    output: None,
                    error: None,
                }
            } else {
                EventBody::NodeComplete {
                    attempt: 1,
                    output: Map::new(),
                    duration_ms: 0,
                }
            },
        }
    }

    fn head(last_seq: u64, status: RunStatus) -> RunHead {
        RunHead {
            status,
            state: RunState::Executing,
            plan_version: 0,
            last_seq,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
            objective: "o".into(),
        }
    }

    /// Commits events `from..=to` (the last one `complete` when `done`).
    fn commit(store: &RedbStore, run: RunId, from: u64, to: u64, done: bool) -> Vec<RunEvent> {
        let status = if done {
            RunStatus::Completed
        } else {
            RunStatus::Active
        };
        let mut batch = CommitBatch::new(run, head(to, status));
        if from == 1 {
            batch.envelope = Some(serde_json::json!({"objective": "o"}));
        }
        batch.events = (from..=to)
            .map(|s| Arc::new(event(run, s, done && s == to)))
            .collect();
        store.commit(&[batch.clone()]).unwrap();
        batch.events.iter().map(|e| (**e).clone()).collect()
    }

    fn seqs(events: &[Arc<RunEvent>]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    #[tokio::test]
    async fn a_lagging_receiver_reads_the_missed_range_from_the_store() {
        let store = Arc::new(RedbStore::in_memory().unwrap());
        let run = RunId::new();
        let (tx, rx) = broadcast::channel(4);
        let stream = follow(store.clone(), rx, run, 0);
        for ev in commit(&store, run, 1, 40, false) {
            let _ = tx.send(Arc::new(ev));
        }
        let mut stream = Box::pin(stream);
        let mut got = Vec::new();
        for _ in 0..40 {
            got.push(stream.next().await.unwrap());
        }
        assert_eq!(seqs(&got), (1..=40).collect::<Vec<_>>());
        for ev in commit(&store, run, 41, 42, true) {
            let _ = tx.send(Arc::new(ev));
        }
        let rest: Vec<_> = stream.collect().await;
        assert_eq!(
            seqs(&rest),
            [41, 42],
            "the rest after the lag, then the end"
        );
    }

    #[tokio::test]
    async fn events_seen_in_the_store_and_live_are_sent_once() {
        let store = Arc::new(RedbStore::in_memory().unwrap());
        let run = RunId::new();
        let (tx, rx) = broadcast::channel(64);
        let first = commit(&store, run, 1, 3, false);
        let stream = follow(store.clone(), rx, run, 1);
        for ev in first {
            let _ = tx.send(Arc::new(ev));
        }
        let other = RunId::new();
        let _ = tx.send(Arc::new(event(other, 4, false)));
        for ev in commit(&store, run, 4, 5, true) {
            let _ = tx.send(Arc::new(ev));
        }
        let got: Vec<_> = stream.collect().await;
        assert_eq!(seqs(&got), [2, 3, 4, 5]);
        assert!(got.iter().all(|e| e.run_id == run));
    }

    #[tokio::test]
    async fn a_follower_of_a_run_deleted_during_its_replay_ends_after_what_it_read() {
        let store = Arc::new(RedbStore::in_memory().unwrap());
        let run = RunId::new();
        commit(&store, run, 1, 600, true);
        let (_tx, rx) = broadcast::channel(4);
        let mut stream = Box::pin(follow(store.clone(), rx, run, 0));
        assert_eq!(stream.next().await.unwrap().seq, 1);
        assert!(store.delete_run(run).unwrap());
        let rest: Vec<_> = stream.collect().await;
        assert_eq!(seqs(&rest), (2..=PAGE as u64).collect::<Vec<_>>());
        let (_tx, rx) = broadcast::channel(4);
        let got: Vec<_> = follow(store.clone(), rx, run, 0).collect().await;
        assert!(got.is_empty(), "a follower of a deleted run ends at once");
    }

    #[tokio::test]
    async fn a_finished_run_replays_and_ends_and_a_caught_up_client_ends_at_once() {
        let store = Arc::new(RedbStore::in_memory().unwrap());
        let run = RunId::new();
        commit(&store, run, 1, 600, true);
        let (_tx, rx) = broadcast::channel(4);
        let got: Vec<_> = follow(store.clone(), rx, run, 0).collect().await;
        assert_eq!(seqs(&got), (1..=600).collect::<Vec<_>>(), "paged replay");
        let (_tx, rx) = broadcast::channel(4);
        let got: Vec<_> = follow(store.clone(), rx, run, 600).collect().await;
        assert!(got.is_empty());
    }
}
