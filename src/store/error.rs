//! The store's error type.

use std::sync::Arc;

use thiserror::Error;

use crate::ids::RunId;

/// Why a store operation failed.
///
/// Cloneable so that a failed group commit can report the same error to every caller in the
/// group.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file was written by another on-disk format version.
    #[error("store format version {found} found, version {expected} expected: upgrade required")]
    UpgradeRequired {
        /// Version in the file.
        found: u32,
        /// Version this build reads and writes.
        expected: u32,
    },
    /// Stored bytes could not be understood.
    #[error("corrupt store: {what}")]
    Corrupt {
        /// What was wrong, naming the table and key where known.
        what: String,
    },
    /// A commit batch broke a store invariant; nothing of the batch was written.
    #[error("invariant violated for run {run}: {message}")]
    InvariantViolation {
        /// The run whose batch was refused.
        run: RunId,
        /// Which invariant, naming the offending value.
        message: String,
    },
    /// The storage engine failed (I/O, a locked or damaged file, …). The cause is the
    /// backend's own error, kept as the [`std::error::Error::source`].
    #[error("storage engine error: {0}")]
    Backend(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// A value could not be encoded or decoded as JSON.
    #[error("json codec error: {0}")]
    Codec(#[source] Arc<serde_json::Error>),
    /// The run has not ended, so it cannot be deleted; nothing was deleted.
    #[error("run {run} is active: only an ended run can be deleted")]
    RunActive {
        /// The run.
        run: RunId,
    },
    /// The run is driven by another instance of a cluster sharing the store (see
    /// [`Cluster`](super::Cluster)), so this one may not write it; nothing was written.
    #[error("run {run} is owned by {} and not by this instance", owner.as_deref().unwrap_or("no instance"))]
    NotOwner {
        /// The run.
        run: RunId,
        /// The instance that owns it, if any.
        owner: Option<String>,
    },
    /// A group commit was abandoned (its leader panicked) before this batch's outcome was known.
    #[error("group commit abandoned before batch for run {run} was confirmed")]
    Abandoned {
        /// The run whose batch is in doubt.
        run: RunId,
    },
}

impl StoreError {
    pub(crate) fn violation(run: RunId, message: impl Into<String>) -> Self {
        Self::InvariantViolation {
            run,
            message: message.into(),
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        Self::Corrupt { what: what.into() }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(err: serde_json::Error) -> Self {
        Self::Codec(Arc::new(err))
    }
}

impl From<super::pack_ser::PackError> for StoreError {
    fn from(err: super::pack_ser::PackError) -> Self {
        <serde_json::Error as serde::ser::Error>::custom(err).into()
    }
}

impl From<redb::Error> for StoreError {
    fn from(err: redb::Error) -> Self {
        Self::Backend(Arc::new(err))
    }
}

macro_rules! from_redb {
    ($($ty:ty),* $(,)?) => {
        $(impl From<$ty> for StoreError {
            fn from(err: $ty) -> Self {
                Self::Backend(Arc::new(redb::Error::from(err)))
            }
        })*
    };
}

from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    redb::CompactionError,
);
