//! Deleting ended runs: one on request ([`Engine::delete_run`]), and in bounded batches by
//! age ([`Engine::sweep_terminal_runs`], run periodically by the retention task when
//! [`EngineConfig::retain_terminal_runs`](super::EngineConfig::retain_terminal_runs) is set).
//!
//! A run is deleted only when its stored head is terminal **and** no actor of this engine
//! drives it: the slot map is checked, and the store refuses active runs on its own. The
//! driver of a run that just ended is waited for (it stops right after committing
//! `complete`). Compaction, which holds every store access back while it runs, follows a sweep
//! that deleted something only when no run is being driven at that moment.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::{Engine, EngineError, Inner};
use crate::ids::{RunId, Timestamp};
use crate::store::{Store, StoreError};

/// How long [`Engine::delete_run`] waits for the driver of a run that has just ended to stop.
const DRIVER_EXIT: Duration = Duration::from_secs(5);

/// How ended runs are swept: by the retention task
/// ([`EngineConfig::retain_terminal_runs`](super::EngineConfig::retain_terminal_runs)) and
/// by [`Engine::sweep_terminal_runs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionOptions {
    /// Time between two sweeps of the retention task; the first runs when the engine opens.
    /// Default 60 s.
    pub interval: Duration,
    /// Runs deleted per write transaction; a sweep yields between batches so that commits of
    /// live runs interleave. Default 64.
    pub batch_size: usize,
    /// Whether a sweep that deleted runs compacts the store afterwards, which it does only
    /// when no run is being driven (every store access waits while compaction runs). Default
    /// true.
    pub compact: bool,
}

impl Default for RetentionOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            batch_size: 64,
            compact: true,
        }
    }
}

/// What a sweep did about compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compaction {
    /// Nothing was deleted, so there was nothing to reclaim.
    #[default]
    NotNeeded,
    /// [`RetentionOptions::compact`] is off.
    Disabled,
    /// Runs were being driven, so compaction (which would hold their commits back) was left
    /// for a later sweep.
    SkippedRunsLive,
    /// The store was compacted; `reclaimed` tells whether the file shrank.
    Done {
        /// Whether any space was given back.
        reclaimed: bool,
    },
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SweepReport {
    /// Runs deleted.
    pub deleted: usize,
    /// Write transactions that deleted runs (each at most
    /// [`RetentionOptions::batch_size`] runs).
    pub batches: usize,
    /// Whether the store was compacted afterwards.
    pub compaction: Compaction,
}

/// Counters of every sweep since the engine opened (retention task and explicit calls), as
/// published by [`Engine::retention`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionTotals {
    /// Sweeps finished (successful or not).
    pub sweeps: u64,
    /// Sweeps that failed with a store error.
    pub failures: u64,
    /// Runs deleted by sweeps.
    pub deleted: u64,
    /// Write transactions that deleted runs.
    pub batches: u64,
    /// Compactions run.
    pub compactions: u64,
    /// Compactions skipped because runs were being driven.
    pub compactions_skipped: u64,
}

/// The engine's retention state.
pub(crate) struct Retention {
    options: RetentionOptions,
    totals: watch::Sender<RetentionTotals>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Retention {
    pub(crate) fn new(options: RetentionOptions) -> Self {
        Self {
            options,
            totals: watch::Sender::new(RetentionTotals::default()),
            stop: watch::Sender::new(false),
            task: Mutex::new(None),
        }
    }

    /// Starts the retention task: a sweep for runs older than `age` now and then every
    /// interval, until [`Retention::stop`] or until the engine is gone.
    pub(crate) fn start(&self, inner: Weak<Inner>, age: Duration) {
        let mut stop = self.stop.subscribe();
        let period = self.options.interval.max(Duration::from_millis(1));
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.wait_for(|stopped| *stopped) => return,
                    _ = ticks.tick() => {}
                }
                let Some(inner) = inner.upgrade() else { return };
                let engine = Engine { inner };
                let cutoff = Timestamp(Timestamp::now().millis().saturating_sub(millis(age)));
                match engine.sweep_terminal_runs(cutoff).await {
                    Ok(report) if report.deleted > 0 => tracing::info!(
                        deleted = report.deleted,
                        batches = report.batches,
                        compaction = ?report.compaction,
                        "retention deleted ended runs"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "retention sweep failed"),
                }
            }
        });
        *self.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
    }

    /// Stops the retention task after its current batch and waits for it.
    pub(crate) async fn stop(&self) {
        self.stop.send_replace(true);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    fn record(&self, report: Result<&SweepReport, ()>) {
        self.totals.send_modify(|totals| {
            totals.sweeps += 1;
            match report {
                Ok(report) => {
                    totals.deleted += report.deleted as u64;
                    totals.batches += report.batches as u64;
                    match report.compaction {
                        Compaction::Done { .. } => totals.compactions += 1,
                        Compaction::SkippedRunsLive => totals.compactions_skipped += 1,
                        Compaction::NotNeeded | Compaction::Disabled => {}
                    }
                }
                Err(()) => totals.failures += 1,
            }
        });
    }
}

/// Waits (at most [`DRIVER_EXIT`]) until a run's driver has stopped; false if it has not.
async fn driver_stopped(mut ended: watch::Receiver<bool>) -> bool {
    let stopped = tokio::time::timeout(DRIVER_EXIT, ended.wait_for(|stopped| *stopped)).await;
    stopped.is_ok()
}

fn millis(age: Duration) -> u64 {
    u64::try_from(age.as_millis()).unwrap_or(u64::MAX)
}

/// Runs a store call off the async workers when the store may block on the disk.
async fn blocking<T: Send + 'static>(
    store: &std::sync::Arc<dyn Store>,
    call: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, EngineError> {
    if !store.commit_blocks() {
        return Ok(call(store.as_ref())?);
    }
    let store = store.clone();
    tokio::task::spawn_blocking(move || call(store.as_ref()))
        .await
        .map_err(|e| EngineError::Store(StoreError::Backend(std::sync::Arc::new(e))))?
        .map_err(EngineError::from)
}

impl Engine {
    /// Deletes an ended run and everything stored about it (events, plan versions, node
    /// attempts, HITL records), in one store transaction, and forgets what the engine keeps
    /// about it. Followers of its events end. A run whose driver is still finishing its last
    /// round is waited for (briefly).
    ///
    /// # Errors
    /// [`EngineError::RunNotFound`]; [`EngineError::RunActive`] when the run has not ended or
    /// is still driven, in which case nothing is deleted; store errors.
    pub async fn delete_run(&self, run_id: RunId) -> Result<(), EngineError> {
        let head = self.head(run_id)?;
        if !head.status.is_terminal() {
            return Err(EngineError::RunActive(run_id));
        }
        if let Some((_, ended)) = self.slot(run_id)
            && !driver_stopped(ended).await
        {
            return Err(EngineError::RunActive(run_id));
        }
        match blocking(&self.inner.store, move |store| store.delete_run(run_id)).await {
            Ok(true) => {}
            Ok(false) => return Err(EngineError::RunNotFound(run_id)),
            Err(EngineError::Store(StoreError::RunActive { run })) => {
                return Err(EngineError::RunActive(run));
            }
            Err(e) => return Err(e),
        }
        self.forget(&[run_id]);
        tracing::info!(run_id = %run_id, "run deleted");
        Ok(())
    }

    /// One retention sweep: deletes every ended run last written before `cutoff` that no
    /// driver of this engine owns, in batches of [`RetentionOptions::batch_size`] runs (one
    /// store transaction each, yielding in between), then compacts the store when it deleted
    /// something and no run is being driven (see [`RetentionOptions::compact`]). Active and
    /// paused runs are never deleted. Stops early when the engine shuts down.
    ///
    /// The retention task calls this with `now - retain_terminal_runs`.
    ///
    /// # Errors
    /// Store errors; the batches committed before the error stay deleted.
    pub async fn sweep_terminal_runs(&self, cutoff: Timestamp) -> Result<SweepReport, EngineError> {
        let result = self.sweep(cutoff).await;
        self.inner.retention.record(result.as_ref().map_err(drop));
        result
    }

    async fn sweep(&self, cutoff: Timestamp) -> Result<SweepReport, EngineError> {
        let options = &self.inner.retention.options;
        let limit = options.batch_size.max(1);
        let mut report = SweepReport::default();
        self.settle_ended_drivers().await;
        while !self.inner.closed.load(Ordering::Acquire) {
            let driven = self.driven();
            let deleted = blocking(&self.inner.store, move |store| {
                store.delete_terminal_before(cutoff, limit, &|run| driven.contains(&run))
            })
            .await?;
            self.forget(&deleted);
            if !deleted.is_empty() {
                report.deleted += deleted.len();
                report.batches += 1;
            }
            if deleted.len() < limit {
                break;
            }
            tokio::task::yield_now().await;
        }
        report.compaction = if report.deleted == 0 {
            Compaction::NotNeeded
        } else if !options.compact {
            Compaction::Disabled
        } else if !self.driven().is_empty() {
            Compaction::SkippedRunsLive
        } else {
            let reclaimed = blocking(&self.inner.store, |store| store.compact()).await?;
            Compaction::Done { reclaimed }
        };
        Ok(report)
    }

    /// Counters of every retention sweep so far; changes after each sweep.
    pub fn retention(&self) -> watch::Receiver<RetentionTotals> {
        self.inner.retention.totals.subscribe()
    }

    /// Waits for the drivers of runs that have ended (their `complete` is committed) but are
    /// still finishing their last round, so that a sweep neither skips those runs nor
    /// mistakes them for live ones.
    async fn settle_ended_drivers(&self) {
        let slots: Vec<(RunId, watch::Receiver<bool>)> = self
            .inner
            .runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(run, slot)| (*run, slot.ended.clone()))
            .collect();
        for (run, ended) in slots {
            let finished = matches!(
                self.inner.store.run_head(run),
                Ok(Some(head)) if head.status.is_terminal()
            );
            if finished {
                driver_stopped(ended).await;
            }
        }
    }

    /// The runs an actor of this engine drives right now.
    fn driven(&self) -> HashSet<RunId> {
        self.inner
            .runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect()
    }

    /// Drops what the engine keeps about deleted runs.
    fn forget(&self, runs: &[RunId]) {
        if runs.is_empty() {
            return;
        }
        let mut stranded = self
            .inner
            .stranded
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for run in runs {
            stranded.remove(run);
        }
    }
}
