//! A file backend that hands writes to the operating system but never forces them to disk.

use std::fs::File;
use std::io;
use std::ops::Bound;

use redb::backends::FileBackend;
use redb::{BackendError, DatabaseError, StorageBackend};

/// redb's file backend with `sync_data` turned into a no-op (durability D1).
///
/// redb still runs its full commit protocol on every commit: it flushes its write buffer with
/// `write` calls, then writes the new header, in that order. Only the `fdatasync` between and
/// after those steps is skipped. So when `commit` returns, every byte of the transaction is in
/// the operating system's page cache:
///
/// - a crash or kill of **this process** loses nothing that was committed;
/// - a **power loss or kernel crash** may lose recent commits, and because the kernel may write
///   pages back in any order, redb may find a torn commit on the next open and fall back to its
///   repair path (the previous consistent commit). Use [`Durability::Fsync`](super::Durability)
///   when that matters.
///
/// File locking and everything else is delegated unchanged.
#[derive(Debug)]
pub(crate) struct NoSyncFileBackend {
    inner: FileBackend,
}

impl NoSyncFileBackend {
    pub(crate) fn new(file: File) -> Result<Self, DatabaseError> {
        Ok(Self {
            inner: FileBackend::new(file)?,
        })
    }
}

impl StorageBackend for NoSyncFileBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}
