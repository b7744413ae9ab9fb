//! Several engines on one shared store: which instance drives which run.
//!
//! A store that many processes share (the PostgreSQL store) implements [`Cluster`] besides
//! [`Store`](super::Store) and hands it out through [`Store::cluster`](super::Store::cluster).
//! The engine then:
//!
//! - [`join`](Cluster::join)s on open, and renews its lease every heartbeat;
//! - creates runs owned by itself, and recovers only the runs it owns
//!   ([`Store::non_terminal_runs`](super::Store::non_terminal_runs) answers those);
//! - takes over the runs of instances whose lease expired ([`Cluster::take_over`]);
//! - tells callers who drives a run it does not ([`Cluster::owner`]), so a steering request
//!   reaches the owner;
//! - follows other instances' commits ([`Cluster::commits`]) to stream their runs live.
//!
//! The store fences every commit: a batch for an existing run is refused with
//! [`StoreError::NotOwner`] unless this instance owns the run, so an instance that lost its
//! lease (and its runs) cannot write one more event of them. Ownership changes only through
//! [`Cluster::take_over`] and [`Cluster::leave`], in the database.

use std::time::Duration;

use tokio::sync::broadcast;

use super::error::StoreError;
use crate::ids::RunId;

/// Who drives a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOwner {
    /// The owning instance's id; `None` when no instance owns the run (its owner left).
    pub instance: Option<String>,
    /// Where the owner's API answers (`http://host:port`), if it said so when it joined.
    pub address: Option<String>,
    /// Whether the owner's lease is live; an expired owner's runs are up for takeover.
    pub live: bool,
}

/// One instance of the cluster, as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    /// The instance's id.
    pub instance: String,
    /// Where its API answers, if it said.
    pub address: Option<String>,
    /// Whether its lease is live.
    pub live: bool,
    /// How many active runs it owns.
    pub runs: u64,
}

/// A commit of another instance, as [`Cluster::commits`] announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCommit {
    /// The run.
    pub run: RunId,
    /// The seq of the commit's first event.
    pub first_seq: u64,
    /// The seq of its last event.
    pub last_seq: u64,
}

/// Ownership of runs among the instances sharing one store, handed out by
/// [`Store::cluster`](super::Store::cluster).
///
/// The engine joins on open and renews its lease every heartbeat, creates runs owned by
/// itself and recovers only those, takes over the runs of instances whose lease expired, tells
/// callers who drives a run it does not, and follows other instances' commits. The store
/// fences every commit: a batch for a run this instance does not own is refused with
/// [`StoreError::NotOwner`], so an instance that lost its lease (and its runs) cannot write one
/// more event of them.
pub trait Cluster: Send + Sync + 'static {
    /// This instance's id (unique among the live instances; a restarted instance may reuse
    /// its id to get its runs back at once).
    fn instance_id(&self) -> &str;

    /// Registers this instance with a lease of `ttl`, and the address its API answers at.
    /// Re-registering an id renews it; the runs the id owned are its own again.
    ///
    /// # Errors
    /// Storage errors.
    fn join(&self, address: Option<&str>, ttl: Duration) -> Result<(), StoreError>;

    /// Renews this instance's lease for `ttl`. Returns `false` when the lease had expired
    /// (other instances may have taken runs of this one; it must stop driving those: their
    /// commits are refused).
    ///
    /// # Errors
    /// Storage errors.
    fn heartbeat(&self, ttl: Duration) -> Result<bool, StoreError>;

    /// Takes over up to `limit` active runs whose owner's lease has expired or that no
    /// instance owns, makes this instance their owner, and returns them. Two instances never
    /// take the same run.
    ///
    /// # Errors
    /// Storage errors.
    fn take_over(&self, limit: usize) -> Result<Vec<RunId>, StoreError>;

    /// Who drives `run`; `None` when the run does not exist.
    ///
    /// # Errors
    /// Storage errors.
    fn owner(&self, run: RunId) -> Result<Option<RunOwner>, StoreError>;

    /// Gives this instance's active runs up (no owner: the next takeover of any instance
    /// takes them at once) and removes the instance: what a graceful shutdown does.
    ///
    /// # Errors
    /// Storage errors.
    fn leave(&self) -> Result<(), StoreError>;

    /// The registered instances, live or not, by id.
    ///
    /// # Errors
    /// Storage errors.
    fn instances(&self) -> Result<Vec<InstanceInfo>, StoreError>;

    /// Claims idempotency key `key` for this instance for at most `ttl`, unless another
    /// instance holds an unexpired claim of it: returns whether this instance holds it now.
    /// The engine claims a key while it applies the request that came with it, so that two
    /// instances never apply two requests with the same key at once.
    ///
    /// # Errors
    /// Storage errors.
    fn claim_key(&self, key: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Gives up this instance's claim of `key` (nothing when it holds none).
    ///
    /// # Errors
    /// Storage errors.
    fn release_key(&self, key: &str) -> Result<(), StoreError>;

    /// Commits of other instances, announced after they are durable, in commit order per run.
    /// Announcements may be lost (a lagging receiver, a reconnect); a follower reads the
    /// store to fill any gap.
    fn commits(&self) -> broadcast::Receiver<RemoteCommit>;
}
