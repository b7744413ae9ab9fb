//! The redb database behind a lock that makes online compaction possible.
//!
//! redb's `Database::compact` needs `&mut Database` and refuses to run while any transaction
//! is open. Every transaction of the store is begun through [`Db`] and holds a shared guard of
//! its lock for as long as it lives; [`Db::compact`] takes the lock exclusively, so it starts
//! once the transactions in progress have ended and every new one waits for it. Taking a
//! shared guard is an uncontended atomic operation on the hot path.
//!
//! A method of the store begins at most one transaction at a time: a thread that held one
//! guard while waiting for a second could deadlock against a compaction queued in between.

use std::ops::{Deref, DerefMut};
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use redb::{
    CommitError, Database, ReadTransaction, ReadableDatabase, StorageError, TransactionError,
    WriteTransaction,
};

/// The store's database.
#[derive(Debug)]
pub(crate) struct Db {
    lock: RwLock<Database>,
}

/// A transaction together with the shared guard that keeps compaction out while it lives.
pub(crate) struct Guarded<'db, T> {
    // Declared first, so it is dropped before the guard.
    txn: T,
    _guard: RwLockReadGuard<'db, Database>,
}

impl Db {
    pub(crate) fn new(db: Database) -> Self {
        Self {
            lock: RwLock::new(db),
        }
    }

    fn shared(&self) -> RwLockReadGuard<'_, Database> {
        self.lock.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// A read transaction (an MVCC snapshot of the last commit).
    pub(crate) fn begin_read(&self) -> Result<Guarded<'_, ReadTransaction>, TransactionError> {
        let guard = self.shared();
        let txn = guard.begin_read()?;
        Ok(Guarded { txn, _guard: guard })
    }

    /// The write transaction; blocks the thread until any other one has ended.
    pub(crate) fn begin_write(&self) -> Result<Guarded<'_, WriteTransaction>, TransactionError> {
        let guard = self.shared();
        let txn = guard.begin_write()?;
        Ok(Guarded { txn, _guard: guard })
    }

    /// Compacts the file once no transaction is open, holding every new one back meanwhile.
    /// Returns whether any space was reclaimed.
    pub(crate) fn compact(&self) -> Result<bool, redb::CompactionError> {
        let mut db = self.lock.write().unwrap_or_else(PoisonError::into_inner);
        db.compact()
    }
}

impl<T> Deref for Guarded<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.txn
    }
}

impl<T> DerefMut for Guarded<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.txn
    }
}

impl Guarded<'_, WriteTransaction> {
    /// Commits the transaction, then releases the guard.
    pub(crate) fn commit(self) -> Result<(), CommitError> {
        self.txn.commit()
    }

    /// Aborts the transaction, then releases the guard.
    pub(crate) fn abort(self) -> Result<(), StorageError> {
        self.txn.abort()
    }
}
