//! Group commit: concurrent async callers share write transactions.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::oneshot;

use super::Store;
use super::error::StoreError;
use super::types::CommitBatch;

/// Commits [`CommitBatch`]es from async code, grouping concurrent callers (across runs) into
/// one write transaction, so that one fsync serves many transitions.
///
/// The first caller that finds no commit in progress becomes the *leader*: it commits its own
/// batch plus everything queued so far in one [`Store::commit_each`] call, inline (inside
/// [`tokio::task::block_in_place`] on a multi-thread runtime when the store may block). Callers
/// arriving meanwhile queue their batch and wait. When the leader is done and the queue is not
/// empty, it hands leadership to the oldest waiter, which commits the whole queue in the next
/// transaction; so no caller waits for more than about two commits. An uncontended caller pays
/// no thread hop and no channel: it commits its batch alone with [`Store::commit`], and on a
/// store that does not block ([`Store::commit_blocks`] is false) not even `block_in_place`.
///
/// A batch that breaks an invariant fails alone: the other batches of its transaction are
/// written. Dropping a [`Committer::commit`] future after it has queued does not withdraw the
/// batch.
#[derive(Clone)]
pub struct Committer {
    shared: Arc<Shared>,
}

struct Shared {
    store: Arc<dyn Store>,
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    /// Whether some caller is committing (and will drain `waiting` before giving up the role).
    leading: bool,
    waiting: VecDeque<Waiter>,
}

struct Waiter {
    batch: CommitBatch,
    reply: oneshot::Sender<Reply>,
}

enum Reply {
    /// The batch's outcome.
    Done(Result<(), StoreError>),
    /// Leadership, with the waiter's own batch handed back to commit first.
    Lead(Box<CommitBatch>),
}

/// Who to tell a batch's outcome.
enum Slot {
    /// The leader's own batch.
    Own,
    /// A waiting caller.
    Waiter(oneshot::Sender<Reply>),
    /// A caller that stopped waiting.
    Gone,
}

/// Gives the leader role up if the leader unwinds, failing the queued callers instead of
/// leaving them waiting forever.
struct LeaderGuard<'a> {
    shared: &'a Shared,
    armed: bool,
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut queue = self.shared.lock();
            queue.leading = false;
            queue.waiting.clear();
        }
    }
}

impl Committer {
    /// A committer writing to `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                queue: Mutex::new(Queue::default()),
            }),
        }
    }

    /// The store written to (for reads).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// Commits `batch`, possibly in one transaction with other callers' batches; returns once
    /// the transaction holding it is committed (or refused it).
    ///
    /// # Errors
    /// [`StoreError::InvariantViolation`] when this batch breaks an invariant (nothing of it is
    /// written; other callers' batches are unaffected); the transaction's storage error, shared
    /// by every batch in it; [`StoreError::Abandoned`] if the committing task panicked.
    pub async fn commit(&self, batch: CommitBatch) -> Result<(), StoreError> {
        let run = batch.run_id;
        match self.enqueue(batch) {
            Err(batch) => self.lead(batch),
            Ok(receiver) => match receiver.await {
                Ok(Reply::Done(result)) => result,
                Ok(Reply::Lead(batch)) => self.lead(*batch),
                Err(_) => Err(StoreError::Abandoned { run }),
            },
        }
    }

    /// Queues `batch` behind the current leader, or hands it back when the caller is to lead.
    #[expect(
        clippy::result_large_err,
        reason = "a short-lived move; boxing would allocate on the uncontended path"
    )]
    fn enqueue(&self, batch: CommitBatch) -> Result<oneshot::Receiver<Reply>, CommitBatch> {
        let mut queue = self.shared.lock();
        if !queue.leading {
            queue.leading = true;
            return Err(batch);
        }
        let (reply, receiver) = oneshot::channel();
        queue.waiting.push_back(Waiter { batch, reply });
        Ok(receiver)
    }

    /// Commits `own` with everything queued, then hands the role on or gives it up.
    /// Synchronous on purpose: a leader is never suspended, so it cannot be cancelled mid-way.
    fn lead(&self, own: CommitBatch) -> Result<(), StoreError> {
        let mut guard = LeaderGuard {
            shared: &self.shared,
            armed: true,
        };
        let run = own.run_id;
        let mut batches = Vec::new();
        let mut slots = Vec::new();
        self.take_queued(&mut batches, &mut slots);
        let own_result = if batches.is_empty() {
            // Alone: one single-batch commit, no group bookkeeping and no allocation here.
            Some(self.commit_alone(&own))
        } else {
            batches.insert(0, own);
            slots.insert(0, Slot::Own);
            None
        };
        let own_result = self.commit_queue(own_result, batches, slots);
        guard.armed = false;
        own_result.unwrap_or(Err(StoreError::Abandoned { run }))
    }

    /// Commits `batches` (whose callers are `slots`) and whatever queues meanwhile, until the
    /// queue is empty or a waiter takes the leader role over; returns the leader's outcome.
    fn commit_queue(
        &self,
        mut own_result: Option<Result<(), StoreError>>,
        mut batches: Vec<CommitBatch>,
        mut slots: Vec<Slot>,
    ) -> Option<Result<(), StoreError>> {
        loop {
            if !batches.is_empty() {
                for (slot, outcome) in slots.drain(..).zip(self.commit_group(&batches)) {
                    match slot {
                        Slot::Own => own_result = Some(outcome),
                        Slot::Waiter(reply) => {
                            let _ = reply.send(Reply::Done(outcome));
                        }
                        Slot::Gone => {}
                    }
                }
                batches.clear();
            }
            let next = {
                let mut queue = self.shared.lock();
                match queue.waiting.pop_front() {
                    Some(next) => next,
                    None => {
                        queue.leading = false;
                        return own_result;
                    }
                }
            };
            match next.reply.send(Reply::Lead(Box::new(next.batch))) {
                Ok(()) => return own_result,
                Err(Reply::Lead(batch)) => {
                    batches.push(*batch);
                    slots.push(Slot::Gone);
                    self.take_queued(&mut batches, &mut slots);
                }
                Err(Reply::Done(_)) => {}
            }
        }
    }

    fn take_queued(&self, batches: &mut Vec<CommitBatch>, slots: &mut Vec<Slot>) {
        let mut queue = self.shared.lock();
        for waiter in queue.waiting.drain(..) {
            batches.push(waiter.batch);
            slots.push(Slot::Waiter(waiter.reply));
        }
    }

    /// One transaction for `batches`; one outcome per batch.
    fn commit_group(&self, batches: &[CommitBatch]) -> Vec<Result<(), StoreError>> {
        match self.off_worker(|store| store.commit_each(batches)) {
            Ok(outcomes) => outcomes,
            Err(err) => vec![Err(err); batches.len()],
        }
    }

    /// One transaction for the leader's batch alone.
    fn commit_alone(&self, batch: &CommitBatch) -> Result<(), StoreError> {
        self.off_worker(|store| store.commit(std::slice::from_ref(batch)))
    }

    /// Runs `write` on the store, inside `block_in_place` when the store may block and the
    /// caller is a worker of a multi-thread runtime.
    fn off_worker<T>(&self, write: impl FnOnce(&dyn Store) -> T) -> T {
        let store = &*self.shared.store;
        if store.commit_blocks() && on_multi_thread_runtime() {
            tokio::task::block_in_place(|| write(store))
        } else {
            write(store)
        }
    }

    #[cfg(test)]
    fn queued(&self) -> usize {
        self.shared.lock().waiting.len()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn on_multi_thread_runtime() -> bool {
    Handle::try_current().is_ok_and(|handle| handle.runtime_flavor() == RuntimeFlavor::MultiThread)
}

impl fmt::Debug for Committer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let queue = self.shared.lock();
        f.debug_struct("Committer")
            .field("leading", &queue.leading)
            .field("queued", &queue.waiting.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use serde_json::Value;

    use super::*;
    use crate::catalog::{Capability, Facet};
    use crate::fsm::{RunEvent, RunOutcome};
    use crate::graph::PlanSnapshot;
    use crate::ids::RunId;
    use crate::store::testkit::RunScript;
    use crate::store::{
        Durability, HitlRecord, NodeRecord, RedbStore, RunHead, RunStatus, StoreStats,
    };

    enum GateAction {
        Open,
        Panic,
    }

    /// Holds the first group commit until the test says so.
    struct Gate {
        entered: oneshot::Sender<()>,
        open: mpsc::Receiver<GateAction>,
    }

    /// A [`RedbStore`] whose first write waits at a gate.
    struct GatedStore {
        inner: RedbStore,
        gate: Mutex<Option<Gate>>,
    }

    impl GatedStore {
        /// Waits at the gate if this is the first write.
        fn pass_gate(&self) {
            let gate = self.gate.lock().unwrap().take();
            if let Some(gate) = gate {
                gate.entered.send(()).unwrap();
                match gate.open.recv().unwrap() {
                    GateAction::Open => {}
                    GateAction::Panic => panic!("storage failure injected by the test"),
                }
            }
        }
    }

    impl Store for GatedStore {
        fn commit(&self, batches: &[CommitBatch]) -> Result<(), StoreError> {
            self.pass_gate();
            self.inner.commit(batches)
        }
        fn commit_each(
            &self,
            batches: &[CommitBatch],
        ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
            self.pass_gate();
            self.inner.commit_each(batches)
        }
        fn run_head(&self, run: RunId) -> Result<Option<RunHead>, StoreError> {
            self.inner.run_head(run)
        }
        fn list_runs(
            &self,
            status: Option<RunStatus>,
        ) -> Result<Vec<(RunId, RunHead)>, StoreError> {
            self.inner.list_runs(status)
        }
        fn runs_page(
            &self,
            query: &crate::store::RunQuery,
        ) -> Result<crate::store::RunPage, StoreError> {
            self.inner.runs_page(query)
        }
        fn envelope(&self, run: RunId) -> Result<Option<Value>, StoreError> {
            self.inner.envelope(run)
        }
        fn events_after(
            &self,
            run: RunId,
            after_seq: u64,
            limit: usize,
        ) -> Result<Vec<RunEvent>, StoreError> {
            self.inner.events_after(run, after_seq, limit)
        }
        fn plan_version(
            &self,
            run: RunId,
            version: u32,
        ) -> Result<Option<PlanSnapshot>, StoreError> {
            self.inner.plan_version(run, version)
        }
        fn plan_versions(&self, run: RunId) -> Result<Vec<u32>, StoreError> {
            self.inner.plan_versions(run)
        }
        fn latest_plan(&self, run: RunId) -> Result<Option<PlanSnapshot>, StoreError> {
            self.inner.latest_plan(run)
        }
        fn node_records(&self, run: RunId) -> Result<Vec<NodeRecord>, StoreError> {
            self.inner.node_records(run)
        }
        fn hitl_records(&self, run: RunId) -> Result<Vec<HitlRecord>, StoreError> {
            self.inner.hitl_records(run)
        }
        fn non_terminal_runs(&self) -> Result<Vec<RunId>, StoreError> {
            self.inner.non_terminal_runs()
        }
        fn queued_firings(
            &self,
            run: RunId,
        ) -> Result<Vec<crate::store::QueuedFiring>, StoreError> {
            self.inner.queued_firings(run)
        }
        fn request(&self, key: &str) -> Result<Option<crate::store::RequestRecord>, StoreError> {
            self.inner.request(key)
        }
        fn expire_requests(
            &self,
            before: crate::ids::Timestamp,
            limit: usize,
        ) -> Result<usize, StoreError> {
            self.inner.expire_requests(before, limit)
        }
        fn delete_run(&self, run: RunId) -> Result<bool, StoreError> {
            self.inner.delete_run(run)
        }
        fn delete_terminal_before(
            &self,
            cutoff: crate::ids::Timestamp,
            limit: usize,
            skip: &dyn Fn(RunId) -> bool,
        ) -> Result<Vec<RunId>, StoreError> {
            self.inner.delete_terminal_before(cutoff, limit, skip)
        }
        fn put_facet(&self, facet: &Facet) -> Result<(), StoreError> {
            self.inner.put_facet(facet)
        }
        fn facets(&self) -> Result<Vec<Facet>, StoreError> {
            self.inner.facets()
        }
        fn put_capability(&self, capability: &Capability) -> Result<(), StoreError> {
            self.inner.put_capability(capability)
        }
        fn capabilities(&self) -> Result<Vec<Capability>, StoreError> {
            self.inner.capabilities()
        }
        fn stats(&self) -> StoreStats {
            self.inner.stats()
        }
    }

    /// A committer over a gated in-file store, the receiver told when the gate is reached, and
    /// the sender that opens it.
    fn gated(
        dir: &tempfile::TempDir,
    ) -> (Committer, oneshot::Receiver<()>, mpsc::Sender<GateAction>) {
        let (entered_tx, entered_rx) = oneshot::channel();
        let (open_tx, open_rx) = mpsc::channel();
        let store = GatedStore {
            inner: RedbStore::open(dir.path().join("gated.redb"), Durability::Os).unwrap(),
            gate: Mutex::new(Some(Gate {
                entered: entered_tx,
                open: open_rx,
            })),
        };
        (Committer::new(Arc::new(store)), entered_rx, open_tx)
    }

    async fn until_queued(committer: &Committer, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while committer.queued() < count {
            assert!(
                Instant::now() < deadline,
                "only {} queued",
                committer.queued()
            );
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_lone_caller_commits_inline_and_gets_its_own_violation() {
        let committer = Committer::new(Arc::new(RedbStore::in_memory().unwrap()));
        let mut run = RunScript::new(RunId::new());
        committer.commit(run.create()).await.unwrap();
        committer.commit(run.accept_plan()).await.unwrap();
        let mut gap = run.clone();
        gap.seq += 1;
        let err = committer.commit(gap.node_start("write")).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::InvariantViolation { run: bad, .. } if *bad == run.run),
            "{err:?}"
        );
        let store = committer.store();
        assert_eq!(store.run_head(run.run).unwrap(), Some(run.head()));
        assert_eq!(store.stats().commits, 2);
        assert_eq!(committer.queued(), 0);
        assert!(format!("{committer:?}").contains("leading: false"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fifty_concurrent_runs_share_fsynced_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(RedbStore::open(dir.path().join("s.redb"), Durability::Fsync).unwrap());
        let committer = Committer::new(store.clone());
        let barrier = Arc::new(tokio::sync::Barrier::new(50));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let committer = committer.clone();
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                let mut run = RunScript::new(RunId::new());
                barrier.wait().await;
                committer.commit(run.create()).await.unwrap();
                committer.commit(run.accept_plan()).await.unwrap();
                committer.commit(run.node_start("write")).await.unwrap();
                committer.commit(run.node_complete("write")).await.unwrap();
                committer
                    .commit(run.complete(RunOutcome::Completed))
                    .await
                    .unwrap();
                run
            }));
        }
        let mut runs = Vec::new();
        for task in tasks {
            runs.push(task.await.unwrap());
        }
        for run in &runs {
            assert_eq!(store.run_head(run.run).unwrap(), Some(run.head()));
            assert_eq!(store.events_after(run.run, 0, 10).unwrap().len(), 5);
        }
        let stats = store.stats();
        assert_eq!(stats.batches, 250);
        assert!(stats.commits < 250, "no grouping: {stats:?}");
        assert_eq!(
            store.list_runs(Some(RunStatus::Completed)).unwrap().len(),
            50
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_callers_share_one_transaction_and_a_bad_batch_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (committer, entered, open) = gated(&dir);
        let mut leader_run = RunScript::new(RunId::new());
        let leader = {
            let committer = committer.clone();
            let batch = leader_run.create();
            tokio::spawn(async move { committer.commit(batch).await })
        };
        entered.await.unwrap();

        let mut followers = Vec::new();
        let mut scripts = Vec::new();
        for i in 0..49 {
            let mut script = RunScript::new(RunId::new());
            let mut batch = script.create();
            if i == 17 {
                Arc::make_mut(&mut batch.events[0]).seq = 9;
            }
            scripts.push(script);
            let committer = committer.clone();
            followers.push(tokio::spawn(async move { committer.commit(batch).await }));
        }
        until_queued(&committer, 49).await;
        open.send(GateAction::Open).unwrap();

        leader.await.unwrap().unwrap();
        for (i, follower) in followers.into_iter().enumerate() {
            let outcome = follower.await.unwrap();
            let head = committer.store().run_head(scripts[i].run).unwrap();
            if i == 17 {
                assert!(
                    matches!(&outcome, Err(StoreError::InvariantViolation { run, message })
                        if *run == scripts[i].run && message.contains("event seq 9")),
                    "{outcome:?}"
                );
                assert_eq!(head, None);
            } else {
                outcome.unwrap();
                assert_eq!(head, Some(scripts[i].head()));
            }
        }
        let stats = committer.store().stats();
        assert_eq!((stats.commits, stats.batches), (2, 49));
        assert_eq!(
            committer.store().run_head(leader_run.run).unwrap(),
            Some(leader_run.head())
        );
        assert_eq!(committer.queued(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_follower_still_has_its_batch_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (committer, entered, open) = gated(&dir);
        let mut first = RunScript::new(RunId::new());
        let mut second = RunScript::new(RunId::new());
        let leader = {
            let committer = committer.clone();
            let batch = first.create();
            tokio::spawn(async move { committer.commit(batch).await })
        };
        entered.await.unwrap();
        let follower = {
            let committer = committer.clone();
            let batch = second.create();
            tokio::spawn(async move { committer.commit(batch).await })
        };
        until_queued(&committer, 1).await;
        follower.abort();
        assert!(follower.await.unwrap_err().is_cancelled());
        open.send(GateAction::Open).unwrap();

        leader.await.unwrap().unwrap();
        let store = committer.store();
        assert_eq!(store.run_head(second.run).unwrap(), Some(second.head()));
        assert_eq!(store.stats().commits, 2);
        committer.commit(second.accept_plan()).await.unwrap();
        assert_eq!(store.stats().commits, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_leader_abandons_waiters_and_frees_the_role() {
        let dir = tempfile::tempdir().unwrap();
        let (committer, entered, open) = gated(&dir);
        let mut first = RunScript::new(RunId::new());
        let mut second = RunScript::new(RunId::new());
        let leader = {
            let committer = committer.clone();
            let batch = first.create();
            tokio::spawn(async move { committer.commit(batch).await })
        };
        entered.await.unwrap();
        let follower = {
            let committer = committer.clone();
            let batch = second.clone().create();
            tokio::spawn(async move { committer.commit(batch).await })
        };
        until_queued(&committer, 1).await;
        open.send(GateAction::Panic).unwrap();

        assert!(leader.await.unwrap_err().is_panic());
        let outcome = follower.await.unwrap();
        assert!(
            matches!(outcome, Err(StoreError::Abandoned { run }) if run == second.run),
            "{outcome:?}"
        );
        assert_eq!(committer.store().run_head(first.run).unwrap(), None);

        committer.commit(second.create()).await.unwrap();
        assert_eq!(
            committer.store().run_head(second.run).unwrap(),
            Some(second.head())
        );
    }
}
