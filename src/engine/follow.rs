//! Following a run: replay its log from the store after a given seq, then follow the run's
//! live channel without a gap or a duplicate at the seam.
//!
//! The order matters: subscribe to the run's channel *first*, then read the store. An event
//! committed before the subscription is in the store; one committed after reaches the
//! receiver (it is published only after its commit). Events seen on both paths are dropped
//! by seq. A receiver that lags behind the bounded channel (a slow client) falls back to
//! reading the missed range from the store, so the run never waits for a client and the
//! client never misses an event.

use std::collections::VecDeque;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use futures::stream::{self, Stream};
use tokio::sync::broadcast::error::RecvError;

use super::fanout::{Frame, RunSubscription};
use crate::fsm::EventKind;
use crate::ids::RunId;
use crate::store::Store;

/// Events read from the store per page.
const PAGE: usize = 256;

/// Threads that run followers' store reads (replay pages, run checks). A burst of connects
/// queues its reads here instead of starting a blocking thread per client (each with its
/// stack and its allocator's thread heap); the reads are short, so the queue drains fast.
const READERS: usize = 4;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why a follower's read gave no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadFailed {
    /// The read panicked.
    #[error("a follower's store read panicked")]
    Panicked,
    /// No reader thread could be started, or it is gone.
    #[error("no reader thread to run a follower's store read")]
    NoReader,
}

/// The queue of the reader threads, started on first use; `None` when none could be started.
fn readers() -> Option<&'static Sender<Job>> {
    static QUEUE: OnceLock<Option<Sender<Job>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<Job>();
            let rx = Arc::new(Mutex::new(rx));
            let started = (0..READERS)
                .filter(|i| {
                    let rx = rx.clone();
                    std::thread::Builder::new()
                        .name(format!("flexrun-reader-{i}"))
                        .spawn(move || {
                            loop {
                                // The guard is dropped at the end of this statement, before
                                // the job runs, so the other readers can take the next one.
                                let next = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                                match next {
                                    Ok(job) => job(),
                                    Err(_) => return,
                                }
                            }
                        })
                        .is_ok()
                })
                .count();
            (started > 0).then_some(tx)
        })
        .as_ref()
}

/// Runs a follower's store read on one of the [`READERS`] reader threads.
pub(crate) async fn bounded_read<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ReadFailed> {
    let queue = readers().ok_or(ReadFailed::NoReader)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    queue.send(job).map_err(|_| ReadFailed::NoReader)?;
    match rx.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(_)) => Err(ReadFailed::Panicked),
        Err(_) => Err(ReadFailed::NoReader),
    }
}

enum Phase {
    Replay,
    Live,
    Done,
}

struct Follow {
    store: Arc<dyn Store>,
    rx: RunSubscription,
    run: RunId,
    high: u64,
    buf: VecDeque<Arc<Frame>>,
    phase: Phase,
}

impl Follow {
    async fn next(&mut self) -> Option<Arc<Frame>> {
        loop {
            if let Some(frame) = self.buf.pop_front() {
                let ev = &frame.event;
                if ev.seq <= self.high {
                    continue;
                }
                self.high = ev.seq;
                if ev.kind() == EventKind::Complete {
                    self.phase = Phase::Done;
                    self.buf.clear();
                }
                return Some(frame);
            }
            match self.phase {
                Phase::Done => return None,
                Phase::Replay => self.replay_page().await?,
                Phase::Live => match self.rx.recv().await {
                    Ok(batch) => self.take(&batch),
                    Err(RecvError::Lagged(_)) => self.phase = Phase::Replay,
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }

    /// Queues the frames of a live commit that continue `high` without a gap; on a gap (the
    /// store has events the channel did not bring), reads from the store after them.
    fn take(&mut self, batch: &[Arc<Frame>]) {
        let mut next = self.high + 1;
        for frame in batch {
            let seq = frame.event.seq;
            if seq < next {
                continue;
            }
            if seq > next {
                self.phase = Phase::Replay;
                return;
            }
            self.buf.push_back(frame.clone());
            next += 1;
        }
    }

    /// Reads the next page after `high`; switches to live once the store is exhausted, or
    /// ends when the run is over and everything was sent, or when the run was deleted. `None`
    /// on a store failure.
    async fn replay_page(&mut self) -> Option<()> {
        let (store, run, high) = (self.store.clone(), self.run, self.high);
        let read = bounded_read(move || {
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
        self.buf
            .extend(page.into_iter().map(|e| Arc::new(Frame::new(Arc::new(e)))));
        Some(())
    }
}

/// The run's events with a seq greater than `after`, from the store and then live, ending
/// after `complete`. `rx`, the subscription to `run`'s channel, must have been taken before
/// this is called.
pub(crate) fn follow(
    store: Arc<dyn Store>,
    rx: RunSubscription,
    run: RunId,
    after: u64,
) -> impl Stream<Item = Arc<Frame>> + Send + 'static {
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
    use crate::engine::fanout::{Fanout, RUN_BATCHES};
    use crate::fsm::RunEvent;
    use crate::fsm::{EventBody, RunOutcome, RunState};
    use crate::ids::Timestamp;
    use crate::store::{CommitBatch, RedbStore, RunHead, RunStatus};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_run_on_a_few_reader_threads_and_a_panic_is_an_error() {
        let reads: Vec<_> = (0..64)
            .map(|_| {
                tokio::spawn(bounded_read(|| {
                    std::thread::current().name().map(str::to_owned)
                }))
            })
            .collect();
        let mut names = std::collections::BTreeSet::new();
        for read in reads {
            names.insert(read.await.unwrap().unwrap().unwrap_or_default());
        }
        assert!(names.len() <= READERS, "{names:?}");
        assert!(
            names.iter().all(|n| n.starts_with("flexrun-reader-")),
            "{names:?}"
        );
        let panicked = bounded_read(|| -> u8 { panic!("a read that fails") }).await;
        assert!(
            matches!(panicked, Err(ReadFailed::Panicked)),
            "{panicked:?}"
        );
        assert_eq!(
            bounded_read(|| 7).await.unwrap(),
            7,
            "the pool survives a panic"
        );
    }

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
                    duration_us: 0,
                    spend: None,
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

    fn seqs(frames: &[Arc<Frame>]) -> Vec<u64> {
        frames.iter().map(|f| f.event.seq).collect()
    }

    /// Publishes each event as its own commit.
    fn publish(fanout: &Fanout, events: Vec<RunEvent>) {
        for ev in events {
            fanout.publish(ev.run_id, &[Arc::new(ev)]);
        }
    }

    #[tokio::test]
    async fn a_lagging_receiver_reads_the_missed_range_from_the_store() {
        let store = Arc::new(RedbStore::in_memory().unwrap());
        let run = RunId::new();
        let fanout = Fanout::new(16);
        let stream = follow(store.clone(), fanout.subscribe(run), run, 0);
        let mut stream = Box::pin(stream);
        let first = commit(&store, run, 1, 1, false);
        publish(&fanout, first);
        assert_eq!(stream.next().await.unwrap().event.seq, 1, "live");
        let n = 2 * RUN_BATCHES as u64;
        for seq in 2..=n {
            publish(&fanout, commit(&store, run, seq, seq, false));
        }
        let mut got = Vec::new();
        for _ in 2..=n {
            got.push(stream.next().await.unwrap());
        }
        assert_eq!(
            seqs(&got),
            (2..=n).collect::<Vec<_>>(),
            "no gap, no duplicate"
        );
        publish(&fanout, commit(&store, run, n + 1, n + 2, true));
        let rest: Vec<_> = stream.collect().await;
        assert_eq!(
            seqs(&rest),
            [n + 1, n + 2],
            "the rest after the lag, then the end"
        );
    }

    #[tokio::test]
    async fn events_seen_in_the_store_and_live_are_sent_once() {
        let store = Arc::new(RedbStore::in_memory().unwrap());
        let run = RunId::new();
        let fanout = Fanout::new(16);
        let first = commit(&store, run, 1, 3, false);
        let stream = follow(store.clone(), fanout.subscribe(run), run, 1);
        let other = RunId::new();
        let _other_sub = fanout.subscribe(other);
        publish(&fanout, first);
        publish(&fanout, vec![event(other, 4, false)]);
        let batch = commit(&store, run, 4, 5, true);
        fanout.publish(run, &batch.into_iter().map(Arc::new).collect::<Vec<_>>());
        let got: Vec<_> = stream.collect().await;
        assert_eq!(seqs(&got), [2, 3, 4, 5]);
        assert!(got.iter().all(|f| f.event.run_id == run));
    }

    #[tokio::test]
    async fn a_follower_of_a_run_deleted_during_its_replay_ends_after_what_it_read() {
        let store = Arc::new(RedbStore::in_memory().unwrap());
        let run = RunId::new();
        commit(&store, run, 1, 600, true);
        let fanout = Fanout::new(16);
        let mut stream = Box::pin(follow(store.clone(), fanout.subscribe(run), run, 0));
        assert_eq!(stream.next().await.unwrap().event.seq, 1);
        assert!(store.delete_run(run).unwrap());
        let rest: Vec<_> = stream.collect().await;
        assert_eq!(seqs(&rest), (2..=PAGE as u64).collect::<Vec<_>>());
        let got: Vec<_> = follow(store.clone(), fanout.subscribe(run), run, 0)
            .collect()
            .await;
        assert!(got.is_empty(), "a follower of a deleted run ends at once");
    }

    #[tokio::test]
    async fn a_finished_run_replays_and_ends_and_a_caught_up_client_ends_at_once() {
        let store = Arc::new(RedbStore::in_memory().unwrap());
        let run = RunId::new();
        commit(&store, run, 1, 600, true);
        let fanout = Fanout::new(16);
        let got: Vec<_> = follow(store.clone(), fanout.subscribe(run), run, 0)
            .collect()
            .await;
        assert_eq!(seqs(&got), (1..=600).collect::<Vec<_>>(), "paged replay");
        let got: Vec<_> = follow(store.clone(), fanout.subscribe(run), run, 600)
            .collect()
            .await;
        assert!(got.is_empty());
    }
}
