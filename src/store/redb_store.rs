//! The embedded store on redb.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::backends::InMemoryBackend;
use redb::{
    Database, Key, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, Table,
    TableDefinition, TableError, TableHandle, Value as RedbValue, WriteTransaction,
};
use serde_json::Value;

use super::Store;
use super::backend::NoSyncFileBackend;
use super::codec::{
    At, HeadFacts, decode_envelope, decode_event, decode_head, decode_hitl, decode_node,
    decode_plan, decode_value, encode_value, envelope_objective, head_facts, stored_hitl_status,
    stored_node_status,
};
use super::db::Db;
use super::error::StoreError;
use super::prepare::{Lookup, Prepared, prepare};
use super::tables::{
    ALL_TABLES, CAPABILITIES, ENVELOPES, EVENTS, FACETS, HITL, META, NODES, PER_RUN_TABLES, PLANS,
    PerRunTable, QUEUED, REQUESTS, RUNS, SCHEMA_VERSION, SCHEMA_VERSION_KEY, UPGRADABLE_FROM,
    event_key, event_key_seq, hitl_key, node_key, plan_key, plan_key_version, run_key,
    run_prefix_end, run_span, split_hitl_key, split_node_key,
};
use super::types::{
    CommitBatch, HitlRecord, HitlStatus, NodeRecord, NodeStatus, QueuedFiring, RequestRecord,
    RunHead, RunStatus, StoreStats,
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
    /// D1: every commit is handed to the operating system before `commit` returns, but never
    /// fsynced. Survives a crash or kill of the process; a power loss or kernel crash may lose
    /// recent commits (redb then recovers to an earlier consistent commit).
    Os,
    /// D2: every commit is fsynced before `commit` returns. Survives power loss.
    #[default]
    Fsync,
}

/// The redb-backed [`Store`]: one file, every table in it, one write transaction per commit.
#[derive(Debug)]
pub struct RedbStore {
    db: Db,
    durability: Durability,
    commits: AtomicU64,
    batches: AtomicU64,
    bytes_written: AtomicU64,
}

impl RedbStore {
    /// Opens the store file at `path`, creating it (and every table) when it does not exist.
    ///
    /// # Errors
    /// [`StoreError::UpgradeRequired`] when the file has another format version,
    /// [`StoreError::Corrupt`] when it is a redb file but not a store, storage errors
    /// otherwise (including a file already open for writing elsewhere).
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<Self, StoreError> {
        let builder = Database::builder();
        let db = match durability {
            Durability::Memory => builder.create_with_backend(InMemoryBackend::new())?,
            Durability::Os => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path.as_ref())
                    .map_err(redb::DatabaseError::from)?;
                builder.create_with_backend(NoSyncFileBackend::new(file)?)?
            }
            Durability::Fsync => builder.create(path)?,
        };
        init_schema(&db)?;
        Ok(Self {
            db: Db::new(db),
            durability,
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

    fn write_batches(
        &self,
        batches: &[CommitBatch],
        all_or_nothing: bool,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let mut txn = self.db.begin_write()?;
        if self.durability == Durability::Memory
            && !self
                .commits
                .load(Ordering::Relaxed)
                .is_multiple_of(MEMORY_DURABLE_EVERY)
        {
            txn.set_durability(redb::Durability::None)?;
        }
        let mut outcomes = Vec::with_capacity(batches.len());
        let mut bytes = 0u64;
        let mut written = 0u64;
        {
            let mut tables = WriteTables::open(&txn)?;
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
        }
        if written == 0 {
            txn.abort()?;
            return Ok(outcomes);
        }
        txn.commit()?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.batches.fetch_add(written, Ordering::Relaxed);
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        Ok(outcomes)
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
        txn.commit()?;
        Ok(())
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

/// Checks the schema version of an existing store, upgrades an older one that only lacks
/// tables (creating every table is idempotent), or lays out a new one.
fn init_schema(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_read()?;
    match txn.open_table(META) {
        Ok(meta) => {
            let found = meta.get(SCHEMA_VERSION_KEY)?.map(|guard| guard.value());
            drop(meta);
            drop(txn);
            match found {
                Some(SCHEMA_VERSION) => Ok(()),
                Some(found) if (UPGRADABLE_FROM..SCHEMA_VERSION).contains(&found) => {
                    create_schema(db)
                }
                Some(found) => Err(StoreError::UpgradeRequired {
                    found,
                    expected: SCHEMA_VERSION,
                }),
                None => Err(StoreError::corrupt("meta: schema_version missing")),
            }
        }
        Err(TableError::TableDoesNotExist(_)) => {
            let foreign: Vec<String> = txn
                .list_tables()?
                .map(|table| table.name().to_owned())
                .filter(|name| !ALL_TABLES.contains(&name.as_str()))
                .collect();
            if !foreign.is_empty() {
                return Err(StoreError::corrupt(format!(
                    "not a flexrun store: no meta table, foreign tables {}",
                    foreign.join(", ")
                )));
            }
            drop(txn);
            create_schema(db)
        }
        Err(err) => Err(err.into()),
    }
}

fn create_schema(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        txn.open_table(META)?
            .insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)?;
        txn.open_table(RUNS)?;
        txn.open_table(ENVELOPES)?;
        txn.open_table(PLANS)?;
        txn.open_table(EVENTS)?;
        txn.open_table(NODES)?;
        txn.open_table(HITL)?;
        txn.open_table(FACETS)?;
        txn.open_table(CAPABILITIES)?;
        txn.open_table(QUEUED)?;
        txn.open_table(REQUESTS)?;
    }
    txn.commit()?;
    Ok(())
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

/// Deletes every row of `run` from every per-run table ([`PER_RUN_TABLES`]): the one place
/// that knows where a run's rows are.
fn delete_run_rows(txn: &WriteTransaction, run: RunId) -> Result<(), StoreError> {
    for table in PER_RUN_TABLES {
        match table {
            PerRunTable::Id(table) => {
                txn.open_table(table)?.remove(run_key(run))?;
            }
            PerRunTable::IdU32(table) => {
                let (first, last) = run_span::<20>(run);
                txn.open_table(table)?
                    .retain_in(first..=last, |_, _| false)?;
            }
            PerRunTable::IdU64(table) => {
                let (first, last) = run_span::<24>(run);
                txn.open_table(table)?
                    .retain_in(first..=last, |_, _| false)?;
            }
            PerRunTable::IdBytes(table) => {
                let mut table = txn.open_table(table)?;
                let first = run_key(run);
                match run_prefix_end(run) {
                    Some(end) => table
                        .retain_in::<&[u8], _>(first.as_slice()..end.as_slice(), |_, _| false)?,
                    None => table.retain_in::<&[u8], _>(first.as_slice().., |_, _| false)?,
                }
            }
        }
    }
    Ok(())
}

/// The stored status of `run` as seen by a write transaction, `None` when there is no run.
fn stored_status(txn: &WriteTransaction, run: RunId) -> Result<Option<RunStatus>, StoreError> {
    let runs = txn.open_table(RUNS)?;
    let status = runs
        .get(run_key(run))?
        .map(|bytes| head_facts(bytes.value(), run).map(|facts| facts.status))
        .transpose()?;
    Ok(status)
}

/// The tables a commit touches, each opened on first use and then kept for the rest of the
/// write transaction (opening a table costs a lookup in redb's table tree).
struct WriteTables<'txn> {
    txn: &'txn WriteTransaction,
    runs: Table<'txn, [u8; 16], &'static [u8]>,
    envelopes: Option<Table<'txn, [u8; 16], &'static [u8]>>,
    plans: Option<Table<'txn, [u8; 20], &'static [u8]>>,
    events: Option<Table<'txn, [u8; 24], &'static [u8]>>,
    nodes: Option<Table<'txn, &'static [u8], &'static [u8]>>,
    hitl: Option<Table<'txn, &'static [u8], &'static [u8]>>,
    queued: Option<Table<'txn, [u8; 16], &'static [u8]>>,
    requests: Option<Table<'txn, &'static str, &'static [u8]>>,
}

/// The table in `slot`, opened in `txn` if this is its first use.
fn lazy<'a, 'txn, K: Key + 'static, V: RedbValue + 'static>(
    slot: &'a mut Option<Table<'txn, K, V>>,
    txn: &'txn WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<&'a mut Table<'txn, K, V>, StoreError> {
    match slot {
        Some(table) => Ok(table),
        None => Ok(slot.insert(txn.open_table(table)?)),
    }
}

impl<'txn> WriteTables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            txn,
            runs: txn.open_table(RUNS)?,
            envelopes: None,
            plans: None,
            events: None,
            nodes: None,
            hitl: None,
            queued: None,
            requests: None,
        })
    }

    /// Inserts a prepared batch; returns the value bytes written.
    fn write(&mut self, batch: &CommitBatch, prepared: &Prepared) -> Result<u64, StoreError> {
        let run = batch.run_id;
        self.runs.insert(run_key(run), prepared.head())?;
        if let Some(envelope) = prepared.envelope() {
            lazy(&mut self.envelopes, self.txn, ENVELOPES)?.insert(run_key(run), envelope)?;
        }
        if !batch.events.is_empty() {
            let events = lazy(&mut self.events, self.txn, EVENTS)?;
            for (event, value) in batch.events.iter().zip(prepared.events()) {
                events.insert(event_key(run, event.seq), value)?;
            }
        }
        if let (Some(plan), Some(value)) = (&batch.plan, prepared.plan()) {
            lazy(&mut self.plans, self.txn, PLANS)?.insert(plan_key(run, plan.version), value)?;
        }
        if !batch.nodes.is_empty() {
            let nodes = lazy(&mut self.nodes, self.txn, NODES)?;
            for (node, value) in batch.nodes.iter().zip(prepared.nodes()) {
                let key = node_key(run, &node.node_id, node.attempt)
                    .ok_or_else(|| StoreError::violation(run, "node id too long for a key"))?;
                nodes.insert(key.as_slice(), value)?;
            }
        }
        if !batch.hitl.is_empty() {
            let hitl = lazy(&mut self.hitl, self.txn, HITL)?;
            for (record, value) in batch.hitl.iter().zip(prepared.hitl()) {
                hitl.insert(hitl_key(run, &record.request_id).as_slice(), value)?;
            }
        }
        let mut bytes = prepared.bytes();
        if let Some(queued) = &batch.queued {
            let table = lazy(&mut self.queued, self.txn, QUEUED)?;
            if queued.is_empty() {
                table.remove(run_key(run))?;
            } else {
                let mut value = Vec::new();
                encode_value(queued, &mut value)?;
                table.insert(run_key(run), value.as_slice())?;
                bytes += value.len() as u64;
            }
        }
        for record in &batch.requests {
            let mut value = Vec::new();
            encode_value(record, &mut value)?;
            lazy(&mut self.requests, self.txn, REQUESTS)?
                .insert(record.key.as_str(), value.as_slice())?;
            bytes += value.len() as u64;
        }
        Ok(bytes)
    }
}

impl Lookup for WriteTables<'_> {
    fn head(&mut self, run: RunId) -> Result<Option<HeadFacts>, StoreError> {
        self.runs
            .get(run_key(run))?
            .map(|bytes| head_facts(bytes.value(), run))
            .transpose()
    }

    fn plan_exists(&mut self, run: RunId, version: u32) -> Result<bool, StoreError> {
        Ok(lazy(&mut self.plans, self.txn, PLANS)?
            .get(plan_key(run, version))?
            .is_some())
    }

    fn node_status(
        &mut self,
        run: RunId,
        node_id: &str,
        attempt: u32,
    ) -> Result<Option<NodeStatus>, StoreError> {
        let Some(key) = node_key(run, node_id, attempt) else {
            return Ok(None);
        };
        lazy(&mut self.nodes, self.txn, NODES)?
            .get(key.as_slice())?
            .map(|bytes| stored_node_status(bytes.value(), At::Node(run, node_id, attempt)))
            .transpose()
    }

    fn hitl_status(
        &mut self,
        run: RunId,
        request_id: &str,
    ) -> Result<Option<HitlStatus>, StoreError> {
        lazy(&mut self.hitl, self.txn, HITL)?
            .get(hitl_key(run, request_id).as_slice())?
            .map(|bytes| stored_hitl_status(bytes.value(), At::Hitl(run, request_id)))
            .transpose()
    }
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
            txn.commit()?;
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
                txn.commit()?;
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
        txn.commit()?;
        Ok(deleted)
    }

    fn compact(&self) -> Result<bool, StoreError> {
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::fsm::RunOutcome;
    use crate::store::conformance::{assert_two_runs, commit_all, commit_two_runs};
    use crate::store::testkit::{RunScript, capability, facet, plan};

    fn temp_store(durability: Durability) -> (tempfile::TempDir, PathBuf, RedbStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flexrun.redb");
        let store = RedbStore::open(&path, durability).unwrap();
        (dir, path, store)
    }

    #[test]
    fn commit_then_reopen_reads_everything_back() {
        let (_dir, path, store) = temp_store(Durability::Fsync);
        let runs = commit_two_runs(&store);
        assert_eq!(store.stats().commits, 9);
        drop(store);

        let store = RedbStore::open(&path, Durability::Fsync).unwrap();
        assert_eq!(store.stats(), StoreStats::default());
        assert_two_runs(&store, &runs);
    }

    #[test]
    fn memory_store_mixes_durable_and_non_durable_commits_without_losing_any() {
        let store = RedbStore::in_memory().unwrap();
        let mut run = RunScript::new(RunId::new());
        let mut events = commit_all(&store, vec![run.create(), run.accept_plan()]);
        for i in 0..3 * MEMORY_DURABLE_EVERY {
            let batch = run.node_start(&format!("node-{i}"));
            events.extend(batch.events.iter().map(|e| (**e).clone()));
            store.commit(&[batch]).unwrap();
        }
        assert_eq!(store.stats().commits, 2 + 3 * MEMORY_DURABLE_EVERY);
        assert_eq!(store.events_after(run.run, 0, usize::MAX).unwrap(), events);
        assert_eq!(store.run_head(run.run).unwrap(), Some(run.head()));
        assert_eq!(
            store.node_records(run.run).unwrap().len() as u64,
            3 * MEMORY_DURABLE_EVERY
        );
    }

    #[test]
    fn a_file_with_another_schema_version_requires_an_upgrade() {
        let (_dir, path, store) = temp_store(Durability::Fsync);
        drop(store);
        {
            let db = Database::open(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(SCHEMA_VERSION_KEY, 99)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = RedbStore::open(&path, Durability::Fsync).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::UpgradeRequired {
                    found: 99,
                    expected: 3
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "store format version 99 found, version 3 expected: upgrade required"
        );
    }

    #[test]
    fn a_foreign_redb_file_is_not_taken_for_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            let other: TableDefinition<&str, u64> = TableDefinition::new("other");
            txn.open_table(other).unwrap().insert("k", 1).unwrap();
            txn.commit().unwrap();
        }
        let err = RedbStore::open(&path, Durability::Fsync).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { what } if what.contains("foreign tables other")),
            "{err:?}"
        );
    }

    #[test]
    fn missing_tables_read_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta-only.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)
                .unwrap();
            txn.commit().unwrap();
        }
        let store = RedbStore::open(&path, Durability::Os).unwrap();
        let run = RunId::new();
        assert_eq!(store.run_head(run).unwrap(), None);
        assert!(store.list_runs(None).unwrap().is_empty());
        assert_eq!(store.envelope(run).unwrap(), None);
        assert!(store.events_after(run, 0, 10).unwrap().is_empty());
        assert!(store.plan_versions(run).unwrap().is_empty());
        assert_eq!(store.latest_plan(run).unwrap(), None);
        assert_eq!(store.plan_version(run, 1).unwrap(), None);
        assert!(store.node_records(run).unwrap().is_empty());
        assert!(store.hitl_records(run).unwrap().is_empty());
        assert!(store.facets().unwrap().is_empty());
        assert!(store.capabilities().unwrap().is_empty());

        let mut script = RunScript::new(run);
        store.commit(&[script.create()]).unwrap();
        assert_eq!(store.run_head(run).unwrap(), Some(script.head()));
    }

    #[test]
    fn os_durability_survives_drop_and_reopen_with_non_terminal_runs() {
        let (_dir, path, store) = temp_store(Durability::Os);
        assert_eq!(store.durability(), Durability::Os);
        let mut runs: Vec<RunScript> = (0..4).map(|_| RunScript::new(RunId::new())).collect();
        for script in &mut runs {
            store
                .commit(&[script.create(), script.accept_plan()])
                .unwrap();
        }
        store
            .commit(&[runs[1].complete(RunOutcome::Completed)])
            .unwrap();
        store
            .commit(&[runs[2].complete(RunOutcome::Failed)])
            .unwrap();
        drop(store);

        let store = RedbStore::open(&path, Durability::Os).unwrap();
        let mut expected = vec![runs[0].run, runs[3].run];
        expected.sort();
        assert_eq!(store.non_terminal_runs().unwrap(), expected);
        assert_eq!(store.run_head(runs[2].run).unwrap(), Some(runs[2].head()));
        drop(store);

        let store = RedbStore::open(&path, Durability::Fsync).unwrap();
        assert_eq!(store.non_terminal_runs().unwrap(), expected);
        let failed = store.list_runs(Some(RunStatus::Failed)).unwrap();
        assert_eq!(failed, vec![(runs[2].run, runs[2].head())]);
    }

    #[test]
    fn a_second_writer_on_the_same_file_is_refused() {
        let (_dir, path, _store) = temp_store(Durability::Fsync);
        let err = RedbStore::open(&path, Durability::Os).unwrap_err();
        assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    }

    /// The number of rows of every table that is not global (every per-run table, including
    /// any added later and not yet deleted by `delete_run_rows`).
    fn per_run_rows(store: &RedbStore) -> Vec<(String, u64)> {
        use redb::ReadableTableMetadata;
        let txn = store.db.begin_read().unwrap();
        let handles: Vec<_> = txn.list_tables().unwrap().collect();
        handles
            .into_iter()
            .filter(|table| !crate::store::tables::GLOBAL_TABLES.contains(&table.name()))
            .map(|table| {
                let name = table.name().to_owned();
                let rows = txn.open_untyped_table(table).unwrap().len().unwrap();
                (name, rows)
            })
            .collect()
    }

    #[test]
    fn deleting_every_run_leaves_every_per_run_table_empty_after_a_reopen() {
        let (_dir, path, store) = temp_store(Durability::Fsync);
        let mut runs: Vec<RunScript> = (0..3).map(|_| RunScript::new(RunId::new())).collect();
        for (i, script) in runs.iter_mut().enumerate() {
            let mut batches = vec![
                script.create(),
                script.accept_plan(),
                script.node_start("write"),
                script.node_complete("write"),
                script.hitl_request(&format!("req-{i}")),
                script.hitl_resolved(&format!("req-{i}")),
            ];
            batches[3].queued = Some(vec![fixture_queued()]);
            batches.push(script.complete(RunOutcome::Completed));
            commit_all(&store, batches);
        }
        store.put_facet(&facet()).unwrap();
        let before = per_run_rows(&store);
        assert_eq!(before.len(), 7, "{before:?}");
        assert!(before.iter().all(|(_, rows)| *rows >= 3), "{before:?}");

        assert!(store.delete_run(runs[0].run).unwrap());
        let deleted = store
            .delete_terminal_before(crate::ids::Timestamp(u64::MAX), 2, &|_| false)
            .unwrap();
        assert_eq!(deleted, vec![runs[1].run, runs[2].run]);
        drop(store);

        let store = RedbStore::open(&path, Durability::Fsync).unwrap();
        let after = per_run_rows(&store);
        assert!(after.iter().all(|(_, rows)| *rows == 0), "{after:?}");
        assert!(store.list_runs(None).unwrap().is_empty());
        assert_eq!(store.facets().unwrap(), vec![facet()]);
    }

    /// Commits `count` ended runs of `steps` node starts each; returns their ids.
    fn ended_runs(store: &RedbStore, count: usize, steps: usize) -> Vec<RunId> {
        (0..count)
            .map(|_| {
                let mut run = RunScript::new(RunId::new());
                let mut batches = vec![run.create(), run.accept_plan()];
                batches.extend((0..steps).map(|i| run.node_start(&format!("node-{i:03}"))));
                batches.push(run.complete(RunOutcome::Completed));
                store.commit(&batches).unwrap();
                run.run
            })
            .collect()
    }

    #[test]
    fn compaction_gives_the_space_of_deleted_runs_back_to_the_file_system() {
        let (_dir, path, store) = temp_store(Durability::Os);
        let len = || std::fs::metadata(&path).unwrap().len();
        let empty = len();
        ended_runs(&store, 200, 20);
        let full = len();
        assert!(full > 10 * empty, "{full} bytes with runs, {empty} empty");
        let deleted = store
            .delete_terminal_before(crate::ids::Timestamp(u64::MAX), usize::MAX, &|_| false)
            .unwrap();
        assert_eq!(deleted.len(), 200);
        assert!(store.compact().unwrap());
        let compacted = len();
        assert!(
            compacted <= 2 * empty,
            "{compacted} bytes after compaction, {full} before, {empty} empty"
        );
        drop(store);
        let store = RedbStore::open(&path, Durability::Os).unwrap();
        assert!(store.list_runs(None).unwrap().is_empty());
        ended_runs(&store, 1, 1);
        assert_eq!(store.list_runs(None).unwrap().len(), 1);
    }

    #[test]
    fn compaction_waits_for_transactions_in_progress_instead_of_failing() {
        let (_dir, _path, store) = temp_store(Durability::Os);
        let old = ended_runs(&store, 50, 10);
        std::thread::scope(|scope| {
            let writer = scope.spawn(|| ended_runs(&store, 100, 5));
            let reader = scope.spawn(|| {
                for _ in 0..200 {
                    store.list_runs(None).unwrap();
                }
            });
            for run in &old {
                assert!(store.delete_run(*run).unwrap());
                store.compact().unwrap();
            }
            assert_eq!(writer.join().unwrap().len(), 100);
            reader.join().unwrap();
        });
        assert_eq!(store.list_runs(None).unwrap().len(), 100);
    }

    const FIXTURE_V1: &str = "tests/fixtures/store-v1.redb";
    const FIXTURE_V2: &str = "tests/fixtures/store-v2.redb";
    const FIXTURE: &str = "tests/fixtures/store-v3.redb";

    fn fixture_path(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(name)
    }

    /// A copy of a committed fixture, so that opening it cannot change the original.
    fn fixture_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fixture.redb");
        std::fs::copy(fixture_path(name), &path).unwrap();
        (dir, path)
    }

    /// The content of the frozen fixture: one finished run exercising every table and one
    /// live run, with fixed ids and timestamps.
    fn fixture_runs() -> (RunScript, RunScript, Vec<CommitBatch>) {
        let mut done = RunScript::new(RunId::from_bytes([
            0x01, 0x8f, 0x00, 0x00, 0x00, 0x00, 0x70, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x01,
        ]));
        let mut live = RunScript::new(RunId::from_bytes([
            0x01, 0x8f, 0x00, 0x00, 0x00, 0x00, 0x70, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x02,
        ]));
        let mut batches = vec![
            done.create(),
            done.accept_plan(),
            done.node_start("write"),
            done.node_complete("write"),
            done.hitl_request("req-1"),
            done.hitl_resolved("req-1"),
        ];
        let mut replan = done.accept_plan();
        std::sync::Arc::make_mut(&mut replan.events[0]).body = crate::fsm::EventBody::PlanUpdated {
            previous_version: 1,
            version: 2,
            diff: crate::graph::PlanDiff {
                from_version: 1,
                to_version: 2,
                changed_nodes: vec!["brief".to_owned(), "write".to_owned()],
                ..crate::graph::PlanDiff::default()
            },
            trigger: crate::fsm::Trigger {
                source: crate::fsm::TriggerSource::Policy,
                policy_id: Some("qa-gate".to_owned()),
                node_id: Some("write".to_owned()),
                reason: "add a QA pass".to_owned(),
            },
            warnings: Vec::new(),
        };
        batches.push(replan);
        batches.push(done.complete(RunOutcome::Completed));
        batches.push(live.create());
        batches.push(live.accept_plan());
        batches.push(live.node_start("brief"));
        (done, live, batches)
    }

    /// What version 3 added to the fixture: the live run's queue and an idempotency record.
    fn fixture_v3_runs() -> (RunScript, RunScript, Vec<CommitBatch>) {
        let (done, live, mut batches) = fixture_runs();
        let last = batches.last_mut().unwrap();
        last.queued = Some(vec![fixture_queued()]);
        last.requests = vec![fixture_request(live.run)];
        (done, live, batches)
    }

    fn fixture_queued() -> QueuedFiring {
        QueuedFiring {
            policy_id: "needs-qa".to_owned(),
            action: crate::policy::PolicyAction::Replan {
                rationale: Some("add a QA pass".to_owned()),
            },
            reason: "signal \"needs-qa\"".to_owned(),
            source: crate::fsm::TriggerSource::Signal,
            node_id: None,
            queued_at: crate::ids::Timestamp(1_700_000_000_500),
        }
    }

    fn fixture_request(run: RunId) -> RequestRecord {
        RequestRecord {
            key: "retry-me".to_owned(),
            fingerprint: "0f".repeat(32),
            run_id: run,
            created_at: crate::ids::Timestamp(1_700_000_000_400),
            status: RunStatus::Active,
            state: crate::fsm::RunState::Executing,
        }
    }

    /// Regenerates the frozen fixture. Run by hand only when [`SCHEMA_VERSION`] is bumped, and
    /// then under a new file name: the old fixture must keep opening (or keep failing with
    /// `UpgradeRequired`).
    #[test]
    #[ignore = "writes tests/fixtures; run by hand on a format change"]
    fn write_frozen_fixture() {
        let path = fixture_path(FIXTURE);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&path);
        let store = RedbStore::open(&path, Durability::Fsync).unwrap();
        let (_, _, batches) = fixture_v3_runs();
        commit_all(&store, batches);
        store.put_facet(&facet()).unwrap();
        store.put_capability(&capability()).unwrap();
    }

    #[test]
    fn the_frozen_v1_fixture_requires_an_upgrade() {
        let (_dir, path) = fixture_copy(FIXTURE_V1);
        for durability in [Durability::Fsync, Durability::Os] {
            let err = RedbStore::open(&path, durability).unwrap_err();
            assert!(
                matches!(
                    err,
                    StoreError::UpgradeRequired {
                        found: 1,
                        expected: 3
                    }
                ),
                "{err:?}"
            );
        }
    }

    fn schema_version_of(path: &Path) -> u32 {
        let db = Database::open(path).unwrap();
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        meta.get(SCHEMA_VERSION_KEY).unwrap().unwrap().value()
    }

    #[test]
    fn the_frozen_v2_fixture_is_upgraded_in_place_and_reads_back() {
        let (_dir, path) = fixture_copy(FIXTURE_V2);
        assert_eq!(schema_version_of(&path), 2);
        let store = RedbStore::open(&path, Durability::Fsync).unwrap();
        let (done, live, batches) = fixture_runs();
        assert_fixture_reads_back(&store, &done, &live, &batches);
        assert!(store.queued_firings(live.run).unwrap().is_empty());
        assert_eq!(store.request("retry-me").unwrap(), None);
        drop(store);
        assert_eq!(schema_version_of(&path), SCHEMA_VERSION);
        let store = RedbStore::open(&path, Durability::Fsync).unwrap();
        let head = store.run_head(live.run).unwrap().unwrap();
        let mut batch = CommitBatch::new(live.run, head);
        batch.queued = Some(vec![fixture_queued()]);
        store.commit(&[batch]).unwrap();
        assert_eq!(
            store.queued_firings(live.run).unwrap(),
            vec![fixture_queued()]
        );
    }

    #[test]
    fn the_frozen_v3_fixture_opens_and_reads_back() {
        let (_dir, path) = fixture_copy(FIXTURE);
        let store = RedbStore::open(&path, Durability::Fsync).unwrap();
        let (done, live, batches) = fixture_v3_runs();
        assert_fixture_reads_back(&store, &done, &live, &batches);
        assert_eq!(
            store.queued_firings(live.run).unwrap(),
            vec![fixture_queued()]
        );
        assert!(store.queued_firings(done.run).unwrap().is_empty());
        assert_eq!(
            store.request("retry-me").unwrap(),
            Some(fixture_request(live.run))
        );
    }

    fn assert_fixture_reads_back(
        store: &RedbStore,
        done: &RunScript,
        live: &RunScript,
        batches: &[CommitBatch],
    ) {
        let events_of = |run: RunId| -> Vec<RunEvent> {
            batches
                .iter()
                .filter(|batch| batch.run_id == run)
                .flat_map(|batch| batch.events.iter().map(|e| (**e).clone()))
                .collect()
        };
        assert_eq!(store.run_head(done.run).unwrap(), Some(done.head()));
        assert_eq!(store.run_head(live.run).unwrap(), Some(live.head()));
        assert_eq!(store.envelope(done.run).unwrap(), Some(done.envelope()));
        assert_eq!(
            store.events_after(done.run, 0, 100).unwrap(),
            events_of(done.run)
        );
        assert_eq!(
            store.events_after(live.run, 0, 100).unwrap(),
            events_of(live.run)
        );
        assert_eq!(store.plan_versions(done.run).unwrap(), vec![1, 2]);
        assert_eq!(store.plan_version(done.run, 1).unwrap(), Some(plan(1)));
        assert_eq!(store.latest_plan(done.run).unwrap(), Some(plan(2)));
        let nodes: Vec<NodeRecord> = batches
            .iter()
            .filter(|b| b.run_id == done.run)
            .flat_map(|b| b.nodes.clone())
            .collect();
        assert_eq!(store.node_records(done.run).unwrap(), nodes[1..].to_vec());
        let hitl: Vec<HitlRecord> = batches.iter().flat_map(|b| b.hitl.clone()).collect();
        assert_eq!(store.hitl_records(done.run).unwrap(), hitl[1..].to_vec());
        assert_eq!(store.non_terminal_runs().unwrap(), vec![live.run]);
        assert_eq!(store.facets().unwrap(), vec![facet()]);
        assert_eq!(store.capabilities().unwrap(), vec![capability()]);

        let mut live = live.clone();
        store.commit(&[live.node_complete("brief")]).unwrap();
        assert_eq!(store.run_head(live.run).unwrap(), Some(live.head()));
    }
}
