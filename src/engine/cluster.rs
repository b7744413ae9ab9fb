//! An engine among several that share one store (a store with a
//! [`Cluster`](crate::store::Cluster), PostgreSQL): its lease, the takeover of runs whose
//! owner died, where a steering request for a run must go, and the live stream of runs that
//! another instance drives.
//!
//! Three tasks run while the engine is open:
//!
//! - **heartbeat** renews this instance's lease every [`ClusterOptions::heartbeat`];
//! - **takeover** asks the store, on the same period, for active runs whose owner's lease
//!   expired (or that no instance owns) and recovers each one as a restart would: from its
//!   stored events, re-dispatching an interrupted node with the same idempotency key;
//! - **remote** publishes the commits of other instances to this engine's followers of those
//!   runs: on the store's commit announcements, and every [`ClusterOptions::poll`] for a
//!   followed run whose announcement was lost. Followers drop what they already have and
//!   read any gap from the store, so a follower never misses an event.
//!
//! The store fences every commit (a batch for a run this instance does not own is refused),
//! so a run is written by one instance at a time even when an instance keeps running after
//! its lease expired: its actors of runs taken over stop at their next commit.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::actor::RunActor;
use super::follow::bounded_read;
use super::{Engine, EngineError, IdempotencyKey, Inner};
use crate::ids::RunId;
use crate::store::{Cluster, RemoteCommit, Store, StoreError};

/// Events a catch-up of a followed remote run reads at most at once.
const CATCH_UP: usize = 256;

/// How an engine takes part in a cluster, when its store has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOptions {
    /// How long this instance's lease lasts without a heartbeat: after an instance dies, its
    /// runs are taken over within about this long plus one heartbeat. Default 10 s.
    pub lease: Duration,
    /// Time between heartbeats, and between two looks for runs to take over. Default 2 s
    /// (well below the lease, so one slow heartbeat does not lose it).
    pub heartbeat: Duration,
    /// Runs taken over per store call. Default 64.
    pub takeover_batch: usize,
    /// Where this instance's HTTP API answers (`http://host:port`), told to the other
    /// instances so they can forward steering requests for the runs this one drives.
    pub address: Option<String>,
    /// How often followed runs of other instances are checked for commits whose
    /// announcement was lost. Default 1 s.
    pub poll: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(10),
            heartbeat: Duration::from_secs(2),
            takeover_batch: 64,
            address: None,
            poll: Duration::from_secs(1),
        }
    }
}

/// Where a run is driven, as this engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Here: an actor of this engine drives it, it has ended, or the engine shares its store
    /// with no one. Steering requests are applied (or refused) by this engine.
    Here,
    /// By another live instance, which applies steering requests for it.
    Instance {
        /// Its id.
        instance: String,
        /// Where its API answers, if it said.
        address: Option<String>,
    },
}

/// The engine's part in a cluster: its tasks and their stop switch.
pub(crate) struct Membership {
    pub(crate) options: ClusterOptions,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Held while runs are being taken over, so two takeovers of this engine never race.
    taking: tokio::sync::Mutex<()>,
}

impl Membership {
    pub(crate) fn new(options: ClusterOptions) -> Self {
        Self {
            options,
            stop: watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
            taking: tokio::sync::Mutex::new(()),
        }
    }

    /// Starts the heartbeat, takeover and remote tasks; `commits` are the store's
    /// announcements of other instances' commits.
    pub(crate) fn start(&self, inner: &Arc<Inner>, commits: broadcast::Receiver<RemoteCommit>) {
        let period = self.options.heartbeat.max(Duration::from_millis(10));
        let heartbeat = ticking(self, Arc::downgrade(inner), period, |engine| async move {
            let lease = engine.membership().options.lease;
            match cluster_call(&engine.inner.store, move |c| c.heartbeat(lease)).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    "this instance's lease had expired: runs other instances took over are no longer written here"
                ),
                Err(e) => tracing::error!(error = %e, "heartbeat failed"),
            }
        });
        let takeover = ticking(self, Arc::downgrade(inner), period, |engine| async move {
            if let Err(e) = engine.reload_catalog().await {
                tracing::warn!(error = %e, "reading the shared catalog failed");
            }
            if let Err(e) = engine.take_over().await {
                tracing::error!(error = %e, "takeover failed");
            }
        });
        let remote = tokio::spawn(remote(
            Arc::downgrade(inner),
            commits,
            self.stop.subscribe(),
            self.options.poll,
        ));
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend([heartbeat, takeover, remote]);
    }

    /// Stops the tasks and waits for them.
    pub(crate) async fn stop(&self) {
        self.stop.send_replace(true);
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// A task that calls `step` with the engine every `period` until the membership stops or
/// the engine is gone.
fn ticking<F, Fut>(
    membership: &Membership,
    inner: Weak<Inner>,
    period: Duration,
    step: F,
) -> JoinHandle<()>
where
    F: Fn(Engine) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut stop = membership.stop.subscribe();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return,
                _ = ticks.tick() => {}
            }
            let Some(inner) = inner.upgrade() else { return };
            step(Engine { inner }).await;
        }
    })
}

/// Runs a call of the store's cluster on a blocking thread (it waits on the database).
pub(crate) async fn cluster_call<T: Send + 'static>(
    store: &Arc<dyn Store>,
    call: impl FnOnce(&dyn Cluster) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, EngineError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || match store.cluster() {
        Some(cluster) => call(cluster),
        None => Err(StoreError::corrupt("the store has no cluster")),
    })
    .await
    .map_err(|e| EngineError::Store(StoreError::Backend(Arc::new(e))))?
    .map_err(EngineError::from)
}

/// The remote task: publishes other instances' commits to this engine's followers.
async fn remote(
    inner: Weak<Inner>,
    mut commits: broadcast::Receiver<RemoteCommit>,
    mut stop: watch::Receiver<bool>,
    poll: Duration,
) {
    let mut ticks = tokio::time::interval(poll.max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The last seq published per followed remote run.
    let mut published: HashMap<RunId, u64> = HashMap::new();
    loop {
        let announced = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            announced = commits.recv() => announced,
            _ = ticks.tick() => Err(RecvError::Lagged(0)),
        };
        let Some(inner) = inner.upgrade() else { return };
        match announced {
            Ok(commit) => catch_up(&inner, &mut published, commit.run, Some(&commit)).await,
            Err(RecvError::Lagged(_)) => {
                let followed = inner.fanout.followed();
                published.retain(|run, _| followed.contains(run));
                for run in followed {
                    catch_up(&inner, &mut published, run, None).await;
                }
            }
            Err(RecvError::Closed) => {
                // The store stopped announcing: subscribe again, and poll meanwhile.
                tokio::time::sleep(poll).await;
                if let Ok(again) = cluster_call(&inner.store, |c| Ok(c.commits())).await {
                    commits = again;
                }
            }
        }
    }
}

/// Publishes the events of followed run `run` that this engine has not published yet, when
/// another instance drives it.
async fn catch_up(
    inner: &Arc<Inner>,
    published: &mut HashMap<RunId, u64>,
    run: RunId,
    commit: Option<&RemoteCommit>,
) {
    if !inner.fanout.is_followed(run) || inner.drives(run) {
        return;
    }
    let known = published.get(&run).copied();
    if let (Some(high), Some(commit)) = (known, commit)
        && commit.last_seq <= high
    {
        return;
    }
    let store = inner.store.clone();
    let from = commit.map(|c| c.first_seq.saturating_sub(1));
    let read = bounded_read(move || {
        // Without a known position, start at the announced commit, or (on a poll) with the
        // run's last event: a follower that is further behind reads the gap from the store.
        let after = match (known, from) {
            (Some(high), _) => high,
            (None, Some(from)) => from,
            (None, None) => match store.run_head(run)? {
                Some(head) => head.last_seq.saturating_sub(1),
                None => return Ok(Vec::new()),
            },
        };
        store.events_after(run, after, CATCH_UP)
    })
    .await;
    match read {
        Ok(Ok(events)) => {
            if let Some(last) = events.last() {
                published.insert(run, last.seq);
                let count = events.len() as u64;
                inner
                    .metrics
                    .remote_events
                    .fetch_add(count, Ordering::Relaxed);
                inner.fanout.publish_followed(run, events);
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(run_id = %run, error = %e, "reading a remote run's commits failed")
        }
        Err(e) => {
            tracing::warn!(run_id = %run, error = %e, "reading a remote run's commits failed")
        }
    }
}

impl Engine {
    fn membership(&self) -> &Membership {
        self.inner
            .membership
            .as_ref()
            .expect("membership tasks run only for an engine in a cluster")
    }

    /// Takes over the runs of instances whose lease expired, and of none, and starts driving
    /// them (as a restart would). Returns how many it took. Does nothing, and returns 0, for
    /// an engine that shares its store with no one or that is shutting down.
    ///
    /// The takeover task does this every heartbeat; a steering request for a run whose owner
    /// died does it at once.
    ///
    /// # Errors
    /// Store errors.
    pub async fn take_over(&self) -> Result<usize, EngineError> {
        let Some(membership) = self.inner.membership.as_ref() else {
            return Ok(0);
        };
        let _taking = membership.taking.lock().await;
        let batch = membership.options.takeover_batch.max(1);
        let mut taken = 0;
        loop {
            if self.inner.is_closed() {
                return Ok(taken);
            }
            let runs = cluster_call(&self.inner.store, move |c| c.take_over(batch)).await?;
            if !runs.is_empty() {
                // A run may use what another instance registered a moment ago.
                self.reload_catalog().await?;
            }
            for &run_id in &runs {
                if self.inner.drives(run_id) {
                    continue;
                }
                match RunActor::recover(self.inner.clone(), run_id).await {
                    Ok(actor) => {
                        tracing::info!(run_id = %run_id, "run taken over");
                        self.spawn(actor);
                        let metrics = &self.inner.metrics;
                        metrics.runs_taken_over.fetch_add(1, Ordering::Relaxed);
                        taken += 1;
                    }
                    Err(e) => {
                        tracing::error!(run_id = %run_id, error = %e, "a run taken over could not be recovered");
                    }
                }
            }
            if runs.len() < batch {
                return Ok(taken);
            }
        }
    }

    /// Reads the facets and capabilities the shared store holds into this engine's catalog,
    /// so that what another instance registered is known here too (the takeover task does it
    /// every heartbeat). Returns whether anything changed.
    ///
    /// # Errors
    /// Store errors; [`EngineError::Catalog`] for a stored entry the catalog refuses.
    pub(crate) async fn reload_catalog(&self) -> Result<bool, EngineError> {
        let store = self.inner.store.clone();
        let (facets, capabilities) = tokio::task::spawn_blocking(move || {
            Ok::<_, StoreError>((store.facets()?, store.capabilities()?))
        })
        .await
        .map_err(|e| EngineError::Store(StoreError::Backend(Arc::new(e))))??;
        let mut guard = self
            .inner
            .catalog
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next = None;
        for facet in facets {
            if guard.facets.get(&facet.name) != Some(&facet) {
                next.get_or_insert_with(|| (**guard).clone())
                    .facets
                    .restore(facet)?;
            }
        }
        for capability in capabilities {
            if guard.registry.get(&capability.capability_id) != Some(&capability) {
                next.get_or_insert_with(|| (**guard).clone())
                    .registry
                    .restore(capability)?;
            }
        }
        let changed = next.is_some();
        if let Some(next) = next {
            *guard = Arc::new(next);
        }
        Ok(changed)
    }

    /// Where `run_id` is driven: here, or by which other instance. A run whose owner's lease
    /// expired is taken over first (by this engine, unless another one is faster).
    ///
    /// # Errors
    /// [`EngineError::RunNotFound`]; store errors.
    pub async fn route(&self, run_id: RunId) -> Result<Route, EngineError> {
        if self.inner.drives(run_id) || self.inner.membership.is_none() {
            return Ok(Route::Here);
        }
        for attempt in 0..2 {
            let store = self.inner.store.clone();
            let (owner, head) = cluster_call(&self.inner.store, move |c| {
                Ok((c.owner(run_id)?, store.run_head(run_id)?))
            })
            .await?;
            let (Some(owner), Some(head)) = (owner, head) else {
                return Err(EngineError::RunNotFound(run_id));
            };
            if head.status.is_terminal() {
                return Ok(Route::Here);
            }
            let me = self.inner.store.cluster().map(Cluster::instance_id);
            match owner.instance {
                Some(instance) if Some(instance.as_str()) == me => {
                    // Taken over by this engine: wait for a takeover in progress to start
                    // driving it.
                    if !self.inner.drives(run_id) {
                        self.take_over().await?;
                    }
                    return Ok(Route::Here);
                }
                Some(instance) if owner.live => {
                    return Ok(Route::Instance {
                        instance,
                        address: owner.address,
                    });
                }
                _ if attempt == 0 => {
                    self.take_over().await?;
                    if self.inner.drives(run_id) {
                        return Ok(Route::Here);
                    }
                }
                _ => {}
            }
        }
        Ok(Route::Here)
    }

    /// [`EngineError::OwnedElsewhere`] when another instance of the cluster drives the run.
    pub(crate) async fn elsewhere(&self, run_id: RunId) -> Result<(), EngineError> {
        match self.route(run_id).await? {
            Route::Here => Ok(()),
            Route::Instance { instance, address } => Err(EngineError::OwnedElsewhere {
                run_id,
                instance,
                address,
            }),
        }
    }

    /// In a cluster: claims `key` across the instances ([`Cluster::claim_key`]) for as long
    /// as a lease; `false` when the engine shares its store with no one.
    ///
    /// [`Cluster::claim_key`]: crate::store::Cluster::claim_key
    pub(crate) async fn claim_shared(&self, key: &IdempotencyKey) -> Result<bool, EngineError> {
        let Some(membership) = &self.inner.membership else {
            return Ok(false);
        };
        let (ttl, text) = (membership.options.lease, key.as_str().to_owned());
        if cluster_call(&self.inner.store, move |c| c.claim_key(&text, ttl)).await? {
            Ok(true)
        } else {
            Err(EngineError::IdempotencyKeyInUse {
                key: key.as_str().to_owned(),
            })
        }
    }

    pub(crate) async fn release_shared(&self, key: &IdempotencyKey) {
        let text = key.as_str().to_owned();
        if let Err(e) = cluster_call(&self.inner.store, move |c| c.release_key(&text)).await {
            tracing::warn!(error = %e, "releasing an idempotency key failed; it lapses with the lease");
        }
    }
}
