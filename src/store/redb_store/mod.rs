//! The embedded store on redb, with a commit log at D1 and D2.
//!
//! A commit at [`Durability::Os`] or [`Durability::Fsync`] is written to redb in a transaction
//! committed with redb's non-durable commit, and made durable by one entry appended to the
//! commit log beside the file (`log.rs`): the entry carries every table write of the
//! transaction. A checkpoint, a durable redb commit that records the last log seq it holds,
//! lets the log be emptied; opening replays the entries after the checkpoint. See
//! docs/STORAGE.md, "Commit log".

#[cfg(test)]
mod crash_tests;
mod fault;
mod log;
mod schema;
#[cfg(test)]
mod tests;
mod write;

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use redb::backends::InMemoryBackend;
use redb::{
    Database, Key, ReadOnlyTable, ReadTransaction, ReadableTable, TableDefinition, TableError,
    Value as RedbValue, WriteTransaction,
};
use serde_json::Value;

use self::fault::{FaultPoint, Faults};
use self::log::CommitLog;
use self::schema::{init_schema, log_state, put_checkpoint_seq};
use self::write::{WriteTables, delete_run_rows, replay, stored_status};
use super::Store;
use super::backend::NoSyncFileBackend;
use super::codec::{
    At, decode_envelope, decode_event, decode_head, decode_hitl, decode_node, decode_plan,
    decode_value, encode_value, envelope_objective, head_facts,
};
use super::db::{Db, Guarded};
use super::error::StoreError;
use super::prepare::prepare;
use super::query::{Pager, RunPage, RunQuery};
use super::tables::{
    CAPABILITIES, ENVELOPES, EVENTS, FACETS, HITL, NODES, PLANS, QUEUED, REQUESTS, RUNS, event_key,
    event_key_seq, plan_key, plan_key_version, run_key, split_hitl_key, split_node_key,
};
use super::types::{
    CommitBatch, HitlRecord, NodeRecord, QueuedFiring, RequestRecord, RunHead, RunStatus,
    StoreStats,
};
use crate::catalog::{Capability, Facet};
use crate::fsm::RunEvent;
use crate::graph::PlanSnapshot;
use crate::ids::{RunId, Timestamp};

/// In [`Durability::Memory`], one commit in this many runs redb's full (durable) commit, which
/// lets it reuse pages freed by the cheaper non-durable commits in between.
const MEMORY_DURABLE_EVERY: u64 = 64;

/// How far a commit goes before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Durability {
    /// D0: nothing leaves the process; the data is gone when the store is dropped. For tests
    /// and benchmarks. The path given to [`RedbStore::open`] is ignored. Most commits use
    /// redb's non-durable commit, which is about twice as fast and just as visible to readers.
    Memory,
    /// D1: every commit is appended to the commit log (handed to the operating system) before
    /// `commit` returns, but never fsynced. Survives a crash or kill of the process; a power
    /// loss or kernel crash may lose recent commits.
    Os,
    /// D2: every commit is appended to the commit log and fsynced (one `fdatasync`) before
    /// `commit` returns. Survives power loss.
    #[default]
    Fsync,
}

/// The redb-backed [`Store`]: one redb file holding every table, plus the commit log beside it
/// (`<path>-log`) at [`Durability::Os`] and [`Durability::Fsync`]; one write transaction per
/// commit.
#[derive(Debug)]
pub struct RedbStore {
    db: Db,
    durability: Durability,
    /// The commit log; locked only while holding redb's write transaction.
    log: Option<Mutex<CommitLog>>,
    faults: Faults,
    commits: AtomicU64,
    batches: AtomicU64,
    bytes_written: AtomicU64,
}

impl RedbStore {
    /// Opens the store file at `path`, creating it (and every table) when it does not exist,
    /// and replays its commit log (`<path>-log`) past the last checkpoint.
    ///
    /// # Errors
    /// [`StoreError::UpgradeRequired`] when the file has another format version,
    /// [`StoreError::Corrupt`] when it is a redb file but not a store, or when the commit log
    /// belongs to another store or is damaged before its last good entry, storage errors
    /// otherwise (including a file already open for writing elsewhere).
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<Self, StoreError> {
        Self::open_with(path.as_ref(), durability, Faults::default())
    }

    fn open_with(path: &Path, durability: Durability, faults: Faults) -> Result<Self, StoreError> {
        let builder = Database::builder();
        let db = match durability {
            Durability::Memory => builder.create_with_backend(InMemoryBackend::new())?,
            Durability::Os => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
                    .map_err(redb::DatabaseError::from)?;
                builder.create_with_backend(NoSyncFileBackend::new(file)?)?
            }
            Durability::Fsync => builder.create(path)?,
        };
        init_schema(&db)?;
        let log = match durability {
            Durability::Memory => None,
            Durability::Os => Some(Mutex::new(recover(&db, path, false, &faults)?)),
            Durability::Fsync => Some(Mutex::new(recover(&db, path, true, &faults)?)),
        };
        Ok(Self {
            db: Db::new(db),
            durability,
            log,
            faults,
            commits: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
        })
    }

    /// A fresh store that lives in memory only ([`Durability::Memory`]).
    ///
    /// # Errors
    /// Storage errors.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::open("", Durability::Memory)
    }

    /// The durability the store was opened with.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    fn lock_log(&self) -> Option<MutexGuard<'_, CommitLog>> {
        self.log
            .as_ref()
            .map(|log| log.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Writes the batches in one redb transaction. With a commit log: the writes are recorded
    /// while they are made (so a refused batch never reaches the log), the entry is appended
    /// (and synced at D2), then redb commits non-durably; the commit that finds a checkpoint
    /// due is itself committed durably as the checkpoint instead of being logged.
    fn write_batches(
        &self,
        batches: &[CommitBatch],
        all_or_nothing: bool,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let mut txn = self.db.begin_write()?;
        let mut log = self.lock_log();
        let mut frame = None;
        match log.as_deref_mut() {
            None => {
                if self.durability == Durability::Memory
                    && !self
                        .commits
                        .load(Ordering::Relaxed)
                        .is_multiple_of(MEMORY_DURABLE_EVERY)
                {
                    txn.set_durability(redb::Durability::None)?;
                }
            }
            Some(log) => {
                log.usable()?;
                if !log.checkpoint_due() {
                    txn.set_durability(redb::Durability::None)?;
                    frame = Some(log.frame());
                }
            }
        }
        let mut outcomes = Vec::with_capacity(batches.len());
        let mut bytes = 0u64;
        let mut written = 0u64;
        {
            let mut tables = WriteTables::open(&txn, frame)?;
            for batch in batches {
                match prepare(&mut tables, batch) {
                    Ok(prepared) => {
                        bytes += tables.write(batch, &prepared)?;
                        written += 1;
                        outcomes.push(Ok(()));
                    }
                    Err(err) if all_or_nothing => return Err(err),
                    Err(err) => outcomes.push(Err(err)),
                }
            }
            frame = tables.into_frame();
        }
        if written == 0 {
            txn.abort()?;
            if let (Some(log), Some(frame)) = (log.as_deref_mut(), frame) {
                log.recycle(frame);
            }
            return Ok(outcomes);
        }
        match (log.as_deref_mut(), frame) {
            (None, _) => txn.commit()?,
            (Some(log), Some(mut frame)) => {
                let seq = log.append(&mut frame, &self.faults)?;
                let committed = self
                    .faults
                    .hit(FaultPoint::LogAppended)
                    .map_err(backend)
                    .and_then(|()| txn.commit().map_err(StoreError::from));
                if let Err(err) = committed {
                    log.take_back(seq, &frame);
                    log.recycle(frame);
                    return Err(err);
                }
                log.recycle(frame);
                self.faults
                    .hit(FaultPoint::RedbCommitted)
                    .map_err(backend)?;
            }
            (Some(log), None) => checkpoint(txn, log, &self.faults)?,
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.batches.fetch_add(written, Ordering::Relaxed);
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        Ok(outcomes)
    }

    /// Commits a write that is not a logged commit (deletions, expiry, catalog entries): with
    /// a commit log, as a checkpoint, so that no log entry is ever replayed over it.
    fn commit_unlogged(&self, txn: Guarded<'_, WriteTransaction>) -> Result<(), StoreError> {
        match self.lock_log() {
            None => Ok(txn.commit()?),
            Some(mut log) => checkpoint(txn, &mut log, &self.faults),
        }
    }

    /// Takes a checkpoint now if anything was logged since the last one.
    fn checkpoint_now(&self) -> Result<(), StoreError> {
        if !self.lock_log().is_some_and(|log| log.has_entries()) {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        self.commit_unlogged(txn)
    }

    #[cfg(test)]
    fn set_checkpoint_limits(&self, commits: u64, bytes: u64) {
        if let Some(mut log) = self.lock_log() {
            log.set_limits(commits, bytes);
        }
    }

    fn put_catalog_entry(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(table)?;
            table.insert(key, bytes)?;
        }
        self.commit_unlogged(txn)
    }

    fn catalog_entries<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        table_name: &'static str,
    ) -> Result<Vec<T>, StoreError> {
        let txn = self.db.begin_read()?;
        let Some(table) = open_read(&txn, table)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            out.push(decode_value(
                value.value(),
                At::Catalog(table_name, key.value()),
            )?);
        }
        Ok(out)
    }
}

/// Commits `txn` durably as a checkpoint of every entry of `log`, then empties the log.
///
/// Once the durable commit is done the write is acknowledged whatever happens next: a failure
/// to empty the log leaves entries the checkpoint covers, which recovery skips.
fn checkpoint(
    txn: Guarded<'_, WriteTransaction>,
    log: &mut CommitLog,
    faults: &Faults,
) -> Result<(), StoreError> {
    if log.has_entries() {
        put_checkpoint_seq(&txn, log.last_seq())?;
    }
    txn.commit()?;
    faults
        .hit(FaultPoint::CheckpointCommitted)
        .map_err(backend)?;
    if log.has_entries()
        && let Err(err) = log.reset()
    {
        tracing::warn!(error = %err, "commit log not emptied after a checkpoint");
    }
    Ok(())
}

/// Brings the redb file up to date with its commit log on open: replays, in one durable
/// transaction that also records the new checkpoint, every entry after the file's checkpoint,
/// then lays an empty log. A torn or unacknowledged tail is dropped with the old file.
fn recover(
    db: &Database,
    path: &Path,
    sync: bool,
    faults: &Faults,
) -> Result<CommitLog, StoreError> {
    let (store_id, checkpoint) = log_state(db)?;
    let log_path = log::log_path(path);
    let mut last = checkpoint;
    if let Some(contents) = log::read(&log_path, store_id)? {
        let name = log_path.display();
        if contents.base > checkpoint {
            return Err(StoreError::corrupt(format!(
                "commit log {name} starts after seq {}, but the store holds only up to seq \
                 {checkpoint}: the store file is older than its log; not applied",
                contents.base
            )));
        }
        if contents.dropped_bytes > 0 {
            tracing::warn!(
                log = %name,
                bytes = contents.dropped_bytes,
                "commit log: dropped a torn or unacknowledged tail"
            );
        }
        let mut newer = contents
            .entries
            .iter()
            .filter(|(seq, _)| *seq > checkpoint)
            .peekable();
        if newer.peek().is_some() {
            let txn = db.begin_write()?;
            for (seq, payload) in newer {
                replay(&txn, payload).map_err(|err| match err {
                    StoreError::Corrupt { what } => {
                        StoreError::corrupt(format!("commit log {name}, seq {seq}: {what}"))
                    }
                    other => other,
                })?;
                last = *seq;
            }
            put_checkpoint_seq(&txn, last)?;
            faults.hit(FaultPoint::Replayed).map_err(backend)?;
            txn.commit()?;
            tracing::info!(log = %name, from = checkpoint + 1, to = last, "commit log replayed");
        }
        faults
            .hit(FaultPoint::CheckpointCommitted)
            .map_err(backend)?;
    }
    CommitLog::create(&log_path, store_id, last, sync)
}

fn backend(err: std::io::Error) -> StoreError {
    StoreError::Backend(std::sync::Arc::new(err))
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        if let Err(err) = self.checkpoint_now() {
            tracing::warn!(
                error = %err,
                "checkpoint on close failed: the commit log is replayed on the next open"
            );
        }
    }
}

/// Opens a table for reading; a table that does not exist reads as `None` (empty).
fn open_read<K: Key + 'static, V: RedbValue + 'static>(
    txn: &ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<Option<ReadOnlyTable<K, V>>, StoreError> {
    match txn.open_table(table) {
        Ok(table) => Ok(Some(table)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// The head of `run` with its objective read from the run's envelope.
fn read_head(
    runs: &ReadOnlyTable<[u8; 16], &'static [u8]>,
    envelopes: Option<&ReadOnlyTable<[u8; 16], &'static [u8]>>,
    run: RunId,
) -> Result<Option<RunHead>, StoreError> {
    let Some(bytes) = runs.get(run_key(run))? else {
        return Ok(None);
    };
    let objective = match envelopes {
        Some(envelopes) => envelopes
            .get(run_key(run))?
            .map(|envelope| envelope_objective(envelope.value(), run))
            .transpose()?,
        None => None,
    };
    decode_head(bytes.value(), run, objective.unwrap_or_default()).map(Some)
}

impl Store for RedbStore {
    fn commit(&self, batches: &[CommitBatch]) -> Result<(), StoreError> {
        self.write_batches(batches, true).map(drop)
    }

    fn commit_each(
        &self,
        batches: &[CommitBatch],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        self.write_batches(batches, false)
    }

    fn commit_blocks(&self) -> bool {
        match self.durability {
            Durability::Memory => false,
            Durability::Os | Durability::Fsync => true,
        }
    }

    fn run_head(&self, run: RunId) -> Result<Option<RunHead>, StoreError> {
        let txn = self.db.begin_read()?;
        match open_read(&txn, RUNS)? {
            Some(runs) => read_head(&runs, open_read(&txn, ENVELOPES)?.as_ref(), run),
            None => Ok(None),
        }
    }

    fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<(RunId, RunHead)>, StoreError> {
        let txn = self.db.begin_read()?;
        let Some(runs) = open_read(&txn, RUNS)? else {
            return Ok(Vec::new());
        };
        let envelopes = open_read(&txn, ENVELOPES)?;
        let mut out = Vec::new();
        for entry in runs.iter()? {
            let (key, value) = entry?;
            let run = RunId::from_bytes(key.value());
            if let Some(wanted) = status
                && head_facts(value.value(), run)?.status != wanted
            {
                continue;
            }
            let objective = match &envelopes {
                Some(envelopes) => envelopes
                    .get(run_key(run))?
                    .map(|envelope| envelope_objective(envelope.value(), run))
                    .transpose()?,
                None => None,
            };
            out.push((
                run,
                decode_head(value.value(), run, objective.unwrap_or_default())?,
            ));
        }
        Ok(out)
    }

    fn runs_page(&self, query: &RunQuery) -> Result<RunPage, StoreError> {
        let txn = self.db.begin_read()?;
        let Some(runs) = open_read(&txn, RUNS)? else {
            return Ok(RunPage::default());
        };
        let envelopes = open_read(&txn, ENVELOPES)?;
        let envelope_of = |run: RunId| -> Result<Option<Value>, StoreError> {
            match &envelopes {
                Some(envelopes) => envelopes
                    .get(run_key(run))?
                    .map(|envelope| decode_envelope(envelope.value(), run))
                    .transpose(),
                None => Ok(None),
            }
        };
        let rows = match query.upper() {
            Some(upper) => runs.range(..run_key(upper))?,
            None => runs.range::<[u8; 16]>(..)?,
        };
        let mut pager = Pager::new(query);
        for entry in rows.rev() {
            let (key, value) = entry?;
            let run = RunId::from_bytes(key.value());
            let go_on = pager.offer(
                run,
                || Ok(head_facts(value.value(), run)?.status),
                || {
                    let objective = match &envelopes {
                        Some(envelopes) => envelopes
                            .get(run_key(run))?
                            .map(|envelope| envelope_objective(envelope.value(), run))
                            .transpose()?,
                        None => None,
                    };
                    decode_head(value.value(), run, objective.unwrap_or_default())
                },
                || envelope_of(run),
            )?;
            if !go_on {
                break;
            }
        }
        Ok(pager.finish())
    }

    fn envelope(&self, run: RunId) -> Result<Option<Value>, StoreError> {
        let txn = self.db.begin_read()?;
        let Some(envelopes) = open_read(&txn, ENVELOPES)? else {
            return Ok(None);
        };
        envelopes
            .get(run_key(run))?
            .map(|bytes| decode_envelope(bytes.value(), run))
            .transpose()
    }

    fn events_after(
        &self,
        run: RunId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<RunEvent>, StoreError> {
        let Some(first) = after_seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read()?;
        let Some(events) = open_read(&txn, EVENTS)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for entry in events
            .range(event_key(run, first)..=event_key(run, u64::MAX))?
            .take(limit)
        {
            let (key, value) = entry?;
            out.push(decode_event(
                value.value(),
                run,
                event_key_seq(&key.value()),
            )?);
        }
        Ok(out)
    }

    fn plan_version(&self, run: RunId, version: u32) -> Result<Option<PlanSnapshot>, StoreError> {
        let txn = self.db.begin_read()?;
        let Some(plans) = open_read(&txn, PLANS)? else {
            return Ok(None);
        };
        plans
            .get(plan_key(run, version))?
            .map(|bytes| decode_plan(bytes.value(), run, version))
            .transpose()
    }

    fn plan_versions(&self, run: RunId) -> Result<Vec<u32>, StoreError> {
        let txn = self.db.begin_read()?;
        let Some(plans) = open_read(&txn, PLANS)? else {
            return Ok(Vec::new());
        };
        plans
            .range(plan_key(run, 0)..=plan_key(run, u32::MAX))?
            .map(|entry| Ok(plan_key_version(&entry?.0.value())))
            .collect()
    }

    fn latest_plan(&self, run: RunId) -> Result<Option<PlanSnapshot>, StoreError> {
        let txn = self.db.begin_read()?;
        let Some(plans) = open_read(&txn, PLANS)? else {
            return Ok(None);
        };
        let last = plans
            .range(plan_key(run, 0)..=plan_key(run, u32::MAX))?
            .next_back();
        match last {
            Some(entry) => {
                let (key, value) = entry?;
                decode_plan(value.value(), run, plan_key_version(&key.value())).map(Some)
            }
            None => Ok(None),
        }
    }

    fn node_records(&self, run: RunId) -> Result<Vec<NodeRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let Some(nodes) = open_read(&txn, NODES)? else {
            return Ok(Vec::new());
        };
        let prefix = run_key(run);
        let mut out = Vec::new();
        for entry in nodes.range::<&[u8]>(prefix.as_slice()..)? {
            let (key, value) = entry?;
            let key = key.value();
            if !key.starts_with(&prefix) {
                break;
            }
            let (node_id, attempt) = split_node_key(key)
                .ok_or_else(|| StoreError::corrupt(format!("nodes: malformed key of run {run}")))?;
            out.push(decode_node(value.value(), run, node_id, attempt)?);
        }
        out.sort_by(|a, b| (&a.node_id, a.attempt).cmp(&(&b.node_id, b.attempt)));
        Ok(out)
    }

    fn hitl_records(&self, run: RunId) -> Result<Vec<HitlRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let Some(hitl) = open_read(&txn, HITL)? else {
            return Ok(Vec::new());
        };
        let prefix = run_key(run);
        let mut out = Vec::new();
        for entry in hitl.range::<&[u8]>(prefix.as_slice()..)? {
            let (key, value) = entry?;
            let key = key.value();
            if !key.starts_with(&prefix) {
                break;
            }
            let request_id = split_hitl_key(key)
                .ok_or_else(|| StoreError::corrupt(format!("hitl: malformed key of run {run}")))?;
            out.push(decode_hitl(value.value(), run, request_id)?);
        }
        Ok(out)
    }

    fn non_terminal_runs(&self) -> Result<Vec<RunId>, StoreError> {
        Ok(self
            .list_runs(Some(RunStatus::Active))?
            .into_iter()
            .map(|(run, _)| run)
            .collect())
    }

    fn queued_firings(&self, run: RunId) -> Result<Vec<QueuedFiring>, StoreError> {
        let txn = self.db.begin_read()?;
        let Some(queued) = open_read(&txn, QUEUED)? else {
            return Ok(Vec::new());
        };
        match queued.get(run_key(run))? {
            Some(bytes) => decode_value(bytes.value(), At::Queued(run)),
            None => Ok(Vec::new()),
        }
    }

    fn request(&self, key: &str) -> Result<Option<RequestRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let Some(requests) = open_read(&txn, REQUESTS)? else {
            return Ok(None);
        };
        requests
            .get(key)?
            .map(|bytes| decode_value(bytes.value(), At::Request(key)))
            .transpose()
    }

    fn expire_requests(&self, before: Timestamp, limit: usize) -> Result<usize, StoreError> {
        if limit == 0 {
            return Ok(0);
        }
        let txn = self.db.begin_write()?;
        let mut deleted = 0;
        {
            let mut requests = txn.open_table(REQUESTS)?;
            let mut expired = Vec::new();
            for entry in requests.iter()? {
                let (key, value) = entry?;
                let record: RequestRecord = decode_value(value.value(), At::Request(key.value()))?;
                if record.created_at < before {
                    expired.push(record.key);
                    if expired.len() >= limit {
                        break;
                    }
                }
            }
            for key in expired {
                requests.remove(key.as_str())?;
                deleted += 1;
            }
        }
        if deleted == 0 {
            txn.abort()?;
        } else {
            self.commit_unlogged(txn)?;
        }
        Ok(deleted)
    }

    fn delete_run(&self, run: RunId) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        match stored_status(&txn, run)? {
            None => {
                txn.abort()?;
                Ok(false)
            }
            Some(RunStatus::Active) => {
                txn.abort()?;
                Err(StoreError::RunActive { run })
            }
            Some(RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled) => {
                delete_run_rows(&txn, run)?;
                self.commit_unlogged(txn)?;
                Ok(true)
            }
        }
    }

    fn delete_terminal_before(
        &self,
        cutoff: Timestamp,
        limit: usize,
        skip: &dyn Fn(RunId) -> bool,
    ) -> Result<Vec<RunId>, StoreError> {
        // The candidates come from a read snapshot, so scanning the heads never holds up the
        // writer; the write transaction then deletes only those (an ended run stays ended).
        let mut expired = Vec::new();
        {
            let txn = self.db.begin_read()?;
            let Some(runs) = open_read(&txn, RUNS)? else {
                return Ok(expired);
            };
            for entry in runs.iter()? {
                if expired.len() == limit {
                    break;
                }
                let (key, value) = entry?;
                let run = RunId::from_bytes(key.value());
                let head = decode_head(value.value(), run, String::new())?;
                if head.status.is_terminal() && head.updated_at < cutoff && !skip(run) {
                    expired.push(run);
                }
            }
        }
        if expired.is_empty() {
            return Ok(expired);
        }
        let txn = self.db.begin_write()?;
        let mut deleted = Vec::with_capacity(expired.len());
        for run in expired {
            if stored_status(&txn, run)?.is_some_and(RunStatus::is_terminal) {
                delete_run_rows(&txn, run)?;
                deleted.push(run);
            }
        }
        self.commit_unlogged(txn)?;
        Ok(deleted)
    }

    fn compact(&self) -> Result<bool, StoreError> {
        self.checkpoint_now()?;
        Ok(self.db.compact()?)
    }

    fn put_facet(&self, facet: &Facet) -> Result<(), StoreError> {
        let mut bytes = Vec::new();
        encode_value(facet, &mut bytes)?;
        self.put_catalog_entry(FACETS, &facet.name, &bytes)
    }

    fn facets(&self) -> Result<Vec<Facet>, StoreError> {
        self.catalog_entries(FACETS, "facets")
    }

    fn put_capability(&self, capability: &Capability) -> Result<(), StoreError> {
        let mut bytes = Vec::new();
        encode_value(capability, &mut bytes)?;
        self.put_catalog_entry(CAPABILITIES, &capability.capability_id, &bytes)
    }

    fn capabilities(&self) -> Result<Vec<Capability>, StoreError> {
        self.catalog_entries(CAPABILITIES, "capabilities")
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.commits.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
        }
    }
}
