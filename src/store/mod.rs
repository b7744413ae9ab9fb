//! The durable store: runs, their event logs, plan versions, node attempts, HITL records and
//! the catalog, behind the [`Store`] trait, with [`RedbStore`] as the embedded default and
//! [`MemoryStore`] for purely in-memory use. Both enforce the same invariants (the checks are
//! shared) and store the same encoded values.
//!
//! Every transition of a run is one [`CommitBatch`], written in one write transaction together
//! with whatever other runs' batches are ready at the same moment (group commit, see
//! [`Committer`]). [`Store::commit`] refuses batches that break the log's invariants and writes
//! nothing of them:
//!
//! - event seqs continue gap-free from the run's stored last seq (the first event is seq 1), and
//!   the head's `last_seq` is the last event's seq;
//! - plan versions are append-only and gap-free from 1, and the head names the latest one;
//! - a run whose stored head is terminal takes no more events, plans or status changes;
//! - the envelope comes with the batch that creates the run, and only with it;
//! - a terminal node attempt and a resolved HITL request are never rewritten.
//!
//! The store assigns nothing: callers number events and plan versions, and the store checks.
//!
//! Runs are kept until they are deleted: [`Store::delete_run`] removes every row of one ended
//! run in one write transaction, [`Store::delete_terminal_before`] does so for a bounded batch
//! of ended runs last written before a cutoff (what retention uses), and an active run is
//! never deleted. The space of deleted rows is reused by later commits; [`Store::compact`]
//! gives it back to the file system.

mod backend;
mod cluster;
mod codec;
mod committer;
#[cfg(test)]
mod conformance;
mod db;
mod error;
mod memory_store;
mod pack;
mod pack_ser;
#[cfg(feature = "postgres")]
mod postgres;
mod prepare;
mod query;
mod redb_store;
mod tables;
#[cfg(test)]
mod testkit;
mod types;

pub use cluster::{Cluster, InstanceInfo, RemoteCommit, RunOwner};
pub use committer::Committer;
pub use error::StoreError;
pub use memory_store::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresOptions, PostgresStore};
pub use query::{RunPage, RunQuery};
pub use redb_store::{Durability, RedbStore};
pub use types::{
    CommitBatch, HitlRecord, HitlStatus, NodeRecord, NodeStatus, QueuedFiring, RequestRecord,
    RunHead, RunStatus, StoreStats,
};

use serde_json::Value;

use crate::catalog::{Capability, Facet};
use crate::fsm::RunEvent;
use crate::graph::PlanSnapshot;
use crate::ids::{RunId, Timestamp};

/// Durable storage for runs and the catalog.
///
/// Methods are synchronous (the embedded backend is); call them from async code through
/// [`Committer`] for writes and `spawn_blocking` for large reads. Reads see a consistent
/// snapshot of the last commit.
pub trait Store: Send + Sync + 'static {
    /// Writes all `batches` in one transaction, or nothing.
    ///
    /// # Errors
    /// [`StoreError::InvariantViolation`] when a batch breaks an invariant (see the
    /// [module docs](self)); storage and codec errors otherwise. Nothing is written on error.
    fn commit(&self, batches: &[CommitBatch]) -> Result<(), StoreError>;

    /// Writes every valid batch of `batches` in one transaction and reports each batch's
    /// outcome, in order: a batch that breaks an invariant is skipped without affecting the
    /// others. This is the group-commit primitive [`Committer`] uses.
    ///
    /// The default implementation commits each batch on its own.
    ///
    /// # Errors
    /// The outer error is a failure of the transaction itself (storage), in which case nothing
    /// was written.
    fn commit_each(
        &self,
        batches: &[CommitBatch],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        Ok(batches
            .iter()
            .map(|batch| self.commit(std::slice::from_ref(batch)))
            .collect())
    }

    /// Whether a commit may wait on the disk, so async callers should move it off the async
    /// worker. `true` unless the backend is purely in memory.
    fn commit_blocks(&self) -> bool {
        true
    }

    /// The run's head, if the run exists.
    ///
    /// # Errors
    /// Storage errors; [`StoreError::Corrupt`] for undecodable data.
    fn run_head(&self, run: RunId) -> Result<Option<RunHead>, StoreError>;

    /// Every run (or those with `status`), in run-id order (creation order for UUIDv7 ids).
    ///
    /// # Errors
    /// Storage errors; [`StoreError::Corrupt`] for undecodable data.
    fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<(RunId, RunHead)>, StoreError>;

    /// One page of runs, newest first: those [`RunQuery`] keeps, at most `query.limit`, and
    /// whether more may follow (the last run returned is then the next page's
    /// `query.before`). Reads only the runs it steps over, not the whole table.
    ///
    /// # Errors
    /// Storage errors; [`StoreError::Corrupt`] for undecodable data.
    fn runs_page(&self, query: &RunQuery) -> Result<RunPage, StoreError>;

    /// The envelope the run was created from.
    ///
    /// # Errors
    /// Storage errors; [`StoreError::Corrupt`] for undecodable data.
    fn envelope(&self, run: RunId) -> Result<Option<Value>, StoreError>;

    /// Up to `limit` events of the run with a seq greater than `after_seq`, in seq order.
    ///
    /// # Errors
    /// Storage errors; [`StoreError::Corrupt`] for undecodable data.
    fn events_after(
        &self,
        run: RunId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<RunEvent>, StoreError>;

    /// Plan version `version` of the run.
    ///
    /// # Errors
    /// Storage errors; [`StoreError::Corrupt`] for undecodable data.
    fn plan_version(&self, run: RunId, version: u32) -> Result<Option<PlanSnapshot>, StoreError>;

    /// The run's stored plan version numbers, ascending.
    ///
    /// # Errors
    /// Storage errors.
    fn plan_versions(&self, run: RunId) -> Result<Vec<u32>, StoreError>;

    /// The run's highest plan version.
    ///
    /// # Errors
    /// Storage errors; [`StoreError::Corrupt`] for undecodable data.
    fn latest_plan(&self, run: RunId) -> Result<Option<PlanSnapshot>, StoreError>;

    /// Every node attempt record of the run, sorted by (node id, attempt).
    ///
    /// # Errors
    /// Storage errors; [`StoreError::Corrupt`] for undecodable data.
    fn node_records(&self, run: RunId) -> Result<Vec<NodeRecord>, StoreError>;

    /// Every HITL record of the run, sorted by request id.
    ///
    /// # Errors
    /// Storage errors; [`StoreError::Corrupt`] for undecodable data.
    fn hitl_records(&self, run: RunId) -> Result<Vec<HitlRecord>, StoreError>;

    /// The ids of every [`RunStatus::Active`] run: the runs to recover on start.
    ///
    /// # Errors
    /// Storage errors; [`StoreError::Corrupt`] for undecodable data.
    fn non_terminal_runs(&self) -> Result<Vec<RunId>, StoreError>;

    /// The run's queue of acknowledged, not yet applied policy firings, oldest first (empty
    /// when none).
    ///
    /// # Errors
    /// Storage errors; [`StoreError::Corrupt`] for undecodable data.
    fn queued_firings(&self, run: RunId) -> Result<Vec<QueuedFiring>, StoreError>;

    /// The idempotency record stored under `key`, if any (expired or not: expiry is the
    /// caller's policy).
    ///
    /// # Errors
    /// Storage errors; [`StoreError::Corrupt`] for undecodable data.
    fn request(&self, key: &str) -> Result<Option<RequestRecord>, StoreError>;

    /// Deletes up to `limit` idempotency records created before `before`, in one transaction;
    /// returns how many it deleted.
    ///
    /// # Errors
    /// Storage errors.
    fn expire_requests(&self, before: Timestamp, limit: usize) -> Result<usize, StoreError>;
    /// Deletes every row of the ended run `run` (head, envelope, plan versions, events, node
    /// attempts, HITL records) in one write transaction. Returns `false` when no run has this
    /// id (nothing to delete).
    ///
    /// # Errors
    /// [`StoreError::RunActive`] when the run has not ended, and nothing is deleted; storage
    /// errors (nothing is deleted either).
    fn delete_run(&self, run: RunId) -> Result<bool, StoreError>;

    /// Deletes up to `limit` ended runs whose head was last written before `cutoff`
    /// (`updated_at < cutoff`) and for which `skip` is false, in run-id order (oldest first for
    /// UUIDv7 ids), all in one write transaction, and returns their ids. Active runs are never
    /// deleted. Call it again while it returns `limit` runs: each call is its own bounded
    /// transaction, so commits of live runs interleave with a long clean-up.
    ///
    /// # Errors
    /// Storage errors; [`StoreError::Corrupt`] for an undecodable head. Nothing is deleted
    /// on error.
    fn delete_terminal_before(
        &self,
        cutoff: Timestamp,
        limit: usize,
        skip: &dyn Fn(RunId) -> bool,
    ) -> Result<Vec<RunId>, StoreError>;

    /// Gives the space freed by deletions back to the file system, where the backend has a
    /// file; returns whether anything was reclaimed. Every read and write of the store waits
    /// while it runs. The default (a backend without a file) does nothing.
    ///
    /// # Errors
    /// Storage errors.
    fn compact(&self) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// Registers or replaces a facet (by name), durably.
    ///
    /// # Errors
    /// Storage and codec errors.
    fn put_facet(&self, facet: &Facet) -> Result<(), StoreError>;

    /// Every registered facet, by name.
    ///
    /// # Errors
    /// Storage errors; [`StoreError::Corrupt`] for undecodable data.
    fn facets(&self) -> Result<Vec<Facet>, StoreError>;

    /// Registers or replaces a capability (by capability id), durably.
    ///
    /// # Errors
    /// Storage and codec errors.
    fn put_capability(&self, capability: &Capability) -> Result<(), StoreError>;

    /// Every registered capability, by capability id.
    ///
    /// # Errors
    /// Storage errors; [`StoreError::Corrupt`] for undecodable data.
    fn capabilities(&self) -> Result<Vec<Capability>, StoreError>;

    /// Counters since the store was opened.
    fn stats(&self) -> StoreStats;

    /// The store's cluster membership, when several engines share it (see [`Cluster`]);
    /// `None` (the default) for a store one engine owns alone.
    fn cluster(&self) -> Option<&dyn Cluster> {
        None
    }
}
