//! Publishing committed events: one publish per commit, fanned out per run.
//!
//! Each run with subscribers has its own bounded broadcast channel, created by the first
//! subscriber and dropped with the last one, so a subscriber only receives its run's events
//! and a slow client of a quiet run never falls behind because of other runs' traffic. A
//! commit's events travel as one [`Batch`]; each event's SSE frame is encoded at most once
//! ([`Frame::sse`]) and shared by every subscriber of the run. [`Engine::subscribe`]'s
//! channel of every run's events stays, and is only fed while it has receivers.
//!
//! [`Engine::subscribe`]: crate::Engine::subscribe

use std::collections::HashMap;
#[cfg(feature = "server")]
use std::sync::OnceLock;
use std::sync::{Arc, Mutex, PoisonError};

#[cfg(feature = "server")]
use bytes::Bytes;
use tokio::sync::broadcast;

use crate::fsm::RunEvent;
use crate::ids::RunId;

/// Most commits a run's subscriber may fall behind before it reads from the store instead.
/// Bounded well below the global buffer: a run channel's slots are allocated when its first
/// subscriber arrives, and a lagging subscriber loses nothing (it replays from the store).
pub(crate) const RUN_BATCHES: usize = 256;

/// The SSE frame of an event: `event: <type>`, `id: <seq>`, `data: <json>`, blank line.
#[cfg(feature = "server")]
pub fn sse_frame(event: &RunEvent) -> String {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".to_owned());
    format!(
        "event: {}\nid: {}\ndata: {data}\n\n",
        event.kind(),
        event.seq
    )
}

/// A committed event and its SSE frame, encoded on first use and then shared.
#[derive(Debug)]
pub struct Frame {
    /// The event.
    pub event: Arc<RunEvent>,
    #[cfg(feature = "server")]
    sse: OnceLock<Bytes>,
}

impl Frame {
    pub fn new(event: Arc<RunEvent>) -> Self {
        Self {
            event,
            #[cfg(feature = "server")]
            sse: OnceLock::new(),
        }
    }

    /// The event's SSE frame ([`sse_frame`]), encoded once for every holder of this frame.
    #[cfg(feature = "server")]
    pub fn sse(&self) -> Bytes {
        self.sse
            .get_or_init(|| Bytes::from(sse_frame(&self.event)))
            .clone()
    }
}

/// The events of one commit of one run, in seq order.
pub type Batch = Arc<[Arc<Frame>]>;

type Runs = Mutex<HashMap<RunId, broadcast::Sender<Batch>>>;

/// The run channels and the channel of every run's events.
pub(crate) struct Fanout {
    all: broadcast::Sender<Arc<RunEvent>>,
    runs: Arc<Runs>,
}

impl Fanout {
    /// `capacity`: the buffer of the channel of every run's events.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            all: broadcast::channel(capacity.max(16)).0,
            runs: Arc::default(),
        }
    }

    /// Every run's events, one at a time.
    pub(crate) fn subscribe_all(&self) -> broadcast::Receiver<Arc<RunEvent>> {
        self.all.subscribe()
    }

    /// `run`'s commits, from now on; the channel lives as long as it has subscribers.
    pub(crate) fn subscribe(&self, run: RunId) -> RunSubscription {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        let rx = runs
            .entry(run)
            .or_insert_with(|| broadcast::channel(RUN_BATCHES).0)
            .subscribe();
        RunSubscription {
            rx: Some(rx),
            run,
            runs: self.runs.clone(),
        }
    }

    /// Publishes one commit of `run`: its events, in seq order.
    pub(crate) fn publish(&self, run: RunId, events: &[Arc<RunEvent>]) {
        if self.all.receiver_count() > 0 {
            for event in events {
                let _ = self.all.send(event.clone());
            }
        }
        self.send_to_run(run, || {
            events
                .iter()
                .map(|e| Arc::new(Frame::new(e.clone())))
                .collect()
        });
    }

    /// Sends the batch `make` builds to `run`'s followers, building it only when there are.
    fn send_to_run(&self, run: RunId, make: impl FnOnce() -> Batch) {
        let tx = self
            .runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&run)
            .cloned();
        if let Some(tx) = tx {
            let _ = tx.send(make());
        }
    }

    /// Publishes a commit of `run` that another engine made (a cluster peer, see
    /// [`crate::store::Cluster`]) to the run's followers only: the channel of every run's
    /// events carries this engine's commits.
    pub(crate) fn publish_followed(&self, run: RunId, events: Vec<RunEvent>) {
        self.send_to_run(run, || {
            events
                .into_iter()
                .map(|e| Arc::new(Frame::new(Arc::new(e))))
                .collect()
        });
    }

    /// Whether `run` has followers now.
    pub(crate) fn is_followed(&self, run: RunId) -> bool {
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&run)
    }

    /// The runs that have followers now.
    pub(crate) fn followed(&self) -> Vec<RunId> {
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect()
    }

    /// Runs that have a channel (subscribers) now.
    #[cfg(test)]
    fn channels(&self) -> usize {
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A subscription to one run's commits; the run's channel goes with its last subscription.
pub(crate) struct RunSubscription {
    rx: Option<broadcast::Receiver<Batch>>,
    run: RunId,
    runs: Arc<Runs>,
}

impl RunSubscription {
    pub(crate) async fn recv(&mut self) -> Result<Batch, broadcast::error::RecvError> {
        match self.rx.as_mut() {
            Some(rx) => rx.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }
}

impl Drop for RunSubscription {
    fn drop(&mut self) {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        drop(self.rx.take());
        if runs
            .get(&self.run)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            runs.remove(&self.run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::EventBody;
    use crate::ids::Timestamp;

    fn event(run: RunId, seq: u64) -> Arc<RunEvent> {
        Arc::new(RunEvent {
            seq,
            run_id: run,
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

    #[tokio::test]
    async fn a_run_channel_carries_only_its_run_and_goes_with_its_last_subscriber() {
        let fanout = Fanout::new(16);
        let (a, b) = (RunId::new(), RunId::new());
        let mut sub_a = fanout.subscribe(a);
        let mut sub_a2 = fanout.subscribe(a);
        let sub_b = fanout.subscribe(b);
        assert_eq!(fanout.channels(), 2);
        fanout.publish(b, &[event(b, 1)]);
        fanout.publish(a, &[event(a, 1), event(a, 2)]);
        let got = sub_a.recv().await.unwrap();
        let got2 = sub_a2.recv().await.unwrap();
        assert_eq!(got.iter().map(|f| f.event.seq).collect::<Vec<_>>(), [1, 2]);
        assert!(got.iter().all(|f| f.event.run_id == a));
        assert!(Arc::ptr_eq(&got[0], &got2[0]), "one frame shared by both");
        #[cfg(feature = "server")]
        {
            let bytes = got[0].sse();
            assert_eq!(bytes.as_ptr(), got2[0].sse().as_ptr(), "encoded once");
            assert_eq!(&bytes[..], sse_frame(&got[0].event).as_bytes());
        }
        drop(sub_b);
        assert_eq!(fanout.channels(), 1);
        drop((sub_a, sub_a2));
        assert_eq!(fanout.channels(), 0);
        fanout.publish(a, &[event(a, 3)]);
    }

    #[tokio::test]
    async fn a_busy_run_does_not_make_a_quiet_runs_follower_lag() {
        let fanout = Fanout::new(16);
        let (quiet, busy) = (RunId::new(), RunId::new());
        let mut sub_quiet = fanout.subscribe(quiet);
        let mut sub_busy = fanout.subscribe(busy);
        fanout.publish(quiet, &[event(quiet, 1)]);
        for seq in 1..=2 * RUN_BATCHES as u64 {
            fanout.publish(busy, &[event(busy, seq)]);
        }
        fanout.publish(quiet, &[event(quiet, 2)]);
        for seq in [1, 2] {
            let batch = sub_quiet
                .recv()
                .await
                .expect("the quiet run's follower is not lagged");
            assert_eq!(batch[0].event.seq, seq);
        }
        assert!(matches!(
            sub_busy.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
    }
}
