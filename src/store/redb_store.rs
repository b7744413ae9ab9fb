//! The embedded store on redb.

use std::collections::HashSet;
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
    decode, decode_event, decode_head, decode_hitl, decode_node, encode, encode_event, encode_head,
    encode_hitl, encode_node, hitl_status, node_status,
};
use super::error::StoreError;
use super::tables::{
    ALL_TABLES, CAPABILITIES, ENVELOPES, EVENTS, FACETS, HITL, META, NODES, PLANS, RUNS,
    SCHEMA_VERSION, SCHEMA_VERSION_KEY, event_key, event_key_seq, hitl_key, node_key, plan_key,
    plan_key_version, run_key, split_hitl_key, split_node_key,
};
use super::types::{
    CommitBatch, HitlRecord, HitlStatus, NodeRecord, RunHead, RunStatus, StoreStats,
};
use crate::catalog::{Capability, Facet};
use crate::fsm::RunEvent;
use crate::graph::PlanSnapshot;
use crate::ids::RunId;

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
    db: Database,
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
            db,
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
                match tables.prepare(batch) {
                    Ok(prepared) => {
                        bytes += tables.write(batch.run_id, prepared)?;
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
    ) -> Result<Vec<T>, StoreError> {
        let txn = self.db.begin_read()?;
        let Some(table) = open_read(&txn, table)? else {
            return Ok(Vec::new());
        };
        let name = table.name().to_owned();
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            out.push(decode(value.value(), &format!("{name}[{}]", key.value()))?);
        }
        Ok(out)
    }
}

/// Checks the schema version of an existing store, or lays out a new one.
fn init_schema(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_read()?;
    match txn.open_table(META) {
        Ok(meta) => match meta.get(SCHEMA_VERSION_KEY)? {
            Some(found) if found.value() == SCHEMA_VERSION => Ok(()),
            Some(found) => Err(StoreError::UpgradeRequired {
                found: found.value(),
                expected: SCHEMA_VERSION,
            }),
            None => Err(StoreError::corrupt("meta: schema_version missing")),
        },
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

fn stored_head(
    runs: &impl ReadableTable<[u8; 16], &'static [u8]>,
    run: RunId,
) -> Result<Option<RunHead>, StoreError> {
    runs.get(run_key(run))?
        .map(|bytes| decode_head(bytes.value(), run))
        .transpose()
}

fn decode_plan(bytes: &[u8], run: RunId, version: u32) -> Result<PlanSnapshot, StoreError> {
    let what = format!("plans[{run}/{version}]");
    let plan: PlanSnapshot = decode(bytes, &what)?;
    if plan.version != version {
        return Err(StoreError::corrupt(format!(
            "{what}: snapshot says version {}",
            plan.version
        )));
    }
    Ok(plan)
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

/// A validated batch, encoded and ready to insert.
struct Prepared {
    head: Vec<u8>,
    envelope: Option<Vec<u8>>,
    events: Vec<([u8; 24], Vec<u8>)>,
    plan: Option<([u8; 20], Vec<u8>)>,
    nodes: Vec<(Vec<u8>, Vec<u8>)>,
    hitl: Vec<(Vec<u8>, Vec<u8>)>,
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
        })
    }

    /// Checks `batch` against what this transaction sees (including earlier batches of the
    /// same transaction) and encodes it. Reads only: nothing is written on error.
    fn prepare(&mut self, batch: &CommitBatch) -> Result<Prepared, StoreError> {
        let run = batch.run_id;
        let fail = |message: String| Err(StoreError::violation(run, message));
        let stored = stored_head(&self.runs, run)?;
        let head = &batch.head;

        match (&stored, &batch.envelope) {
            (None, None) => return fail("run does not exist and the batch has no envelope".into()),
            (Some(_), Some(_)) => {
                return fail("envelope given for a run that already exists".into());
            }
            (None, Some(_)) | (Some(_), None) => {}
        }

        if let Some(stored) = &stored
            && stored.status.is_terminal()
        {
            if let Some(first) = batch.events.first() {
                return fail(format!(
                    "run is {} and takes no more events (refused seq {})",
                    stored.status.as_str(),
                    first.seq
                ));
            }
            if head.status != stored.status {
                return fail(format!(
                    "run is {} and cannot become {}",
                    stored.status.as_str(),
                    head.status.as_str()
                ));
            }
            if let Some(plan) = &batch.plan {
                return fail(format!(
                    "run is {} and takes no more plan versions (refused version {})",
                    stored.status.as_str(),
                    plan.version
                ));
            }
        }

        let stored_last = stored.as_ref().map_or(0, |head| head.last_seq);
        let mut last = stored_last;
        for event in &batch.events {
            if event.run_id != run {
                return fail(format!(
                    "event seq {} belongs to run {}",
                    event.seq, event.run_id
                ));
            }
            if Some(event.seq) != last.checked_add(1) {
                return fail(format!(
                    "event seq {} does not follow last seq {last}",
                    event.seq
                ));
            }
            last = event.seq;
        }
        if head.last_seq != last {
            return fail(format!(
                "head last seq {} differs from last event seq {last}",
                head.last_seq
            ));
        }

        // Every commit keeps the head's plan version equal to the latest stored version, so the
        // stored head names it without a scan of `plans`.
        let latest = stored.as_ref().map_or(0, |head| head.plan_version);
        match &batch.plan {
            Some(plan) => {
                let plans = lazy(&mut self.plans, self.txn, PLANS)?;
                if plans.get(plan_key(run, plan.version))?.is_some() {
                    return fail(format!(
                        "plan version {} is already stored and plan versions are append-only",
                        plan.version
                    ));
                }
                if Some(plan.version) != latest.checked_add(1) {
                    return fail(format!(
                        "plan version {} does not follow latest stored version {latest}",
                        plan.version
                    ));
                }
                if head.plan_version != plan.version {
                    return fail(format!(
                        "head plan version {} differs from committed plan version {}",
                        head.plan_version, plan.version
                    ));
                }
            }
            None => {
                if head.plan_version != latest {
                    return fail(format!(
                        "head plan version {} differs from latest stored plan version {latest}",
                        head.plan_version
                    ));
                }
            }
        }

        let mut node_keys = HashSet::with_capacity(batch.nodes.len());
        let mut nodes = Vec::with_capacity(batch.nodes.len());
        for node in &batch.nodes {
            let Some(key) = node_key(run, &node.node_id, node.attempt) else {
                return fail(format!(
                    "node id of {} bytes exceeds 65535 bytes",
                    node.node_id.len()
                ));
            };
            if !node_keys.insert(key.clone()) {
                return fail(format!(
                    "node {} attempt {} appears twice in one batch",
                    node.node_id, node.attempt
                ));
            }
            if let Some(existing) = lazy(&mut self.nodes, self.txn, NODES)?.get(key.as_slice())? {
                let what = format!("nodes[{run}/{}/{}]", node.node_id, node.attempt);
                let status = node_status(existing.value(), &what)?;
                if status.is_terminal() {
                    return fail(format!(
                        "node {} attempt {} is already final and cannot be rewritten",
                        node.node_id, node.attempt
                    ));
                }
            }
            nodes.push((key, encode_node(node)?));
        }

        let mut hitl_keys = HashSet::with_capacity(batch.hitl.len());
        let mut hitl = Vec::with_capacity(batch.hitl.len());
        for record in &batch.hitl {
            let key = hitl_key(run, &record.request_id);
            if !hitl_keys.insert(key.clone()) {
                return fail(format!(
                    "hitl request {} appears twice in one batch",
                    record.request_id
                ));
            }
            if let Some(existing) = lazy(&mut self.hitl, self.txn, HITL)?.get(key.as_slice())? {
                let what = format!("hitl[{run}/{}]", record.request_id);
                match hitl_status(existing.value(), &what)? {
                    HitlStatus::Resolved => {
                        return fail(format!(
                            "hitl request {} is already resolved",
                            record.request_id
                        ));
                    }
                    HitlStatus::Pending => {}
                }
            }
            hitl.push((key, encode_hitl(record)?));
        }

        Ok(Prepared {
            head: encode_head(head)?,
            envelope: batch.envelope.as_ref().map(encode).transpose()?,
            events: batch
                .events
                .iter()
                .map(|event| Ok((event_key(run, event.seq), encode_event(event)?)))
                .collect::<Result<_, StoreError>>()?,
            plan: batch
                .plan
                .as_ref()
                .map(|plan| Ok::<_, StoreError>((plan_key(run, plan.version), encode(plan)?)))
                .transpose()?,
            nodes,
            hitl,
        })
    }

    /// Inserts a prepared batch; returns the value bytes written.
    fn write(&mut self, run: RunId, prepared: Prepared) -> Result<u64, StoreError> {
        let mut bytes = prepared.head.len();
        self.runs.insert(run_key(run), prepared.head.as_slice())?;
        if let Some(envelope) = &prepared.envelope {
            bytes += envelope.len();
            lazy(&mut self.envelopes, self.txn, ENVELOPES)?
                .insert(run_key(run), envelope.as_slice())?;
        }
        if !prepared.events.is_empty() {
            let events = lazy(&mut self.events, self.txn, EVENTS)?;
            for (key, value) in &prepared.events {
                bytes += value.len();
                events.insert(key, value.as_slice())?;
            }
        }
        if let Some((key, value)) = &prepared.plan {
            bytes += value.len();
            lazy(&mut self.plans, self.txn, PLANS)?.insert(key, value.as_slice())?;
        }
        if !prepared.nodes.is_empty() {
            let nodes = lazy(&mut self.nodes, self.txn, NODES)?;
            for (key, value) in &prepared.nodes {
                bytes += value.len();
                nodes.insert(key.as_slice(), value.as_slice())?;
            }
        }
        if !prepared.hitl.is_empty() {
            let hitl = lazy(&mut self.hitl, self.txn, HITL)?;
            for (key, value) in &prepared.hitl {
                bytes += value.len();
                hitl.insert(key.as_slice(), value.as_slice())?;
            }
        }
        Ok(bytes as u64)
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
            Some(runs) => stored_head(&runs, run),
            None => Ok(None),
        }
    }

    fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<(RunId, RunHead)>, StoreError> {
        let txn = self.db.begin_read()?;
        let Some(runs) = open_read(&txn, RUNS)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for entry in runs.iter()? {
            let (key, value) = entry?;
            let run = RunId::from_bytes(key.value());
            let head = decode_head(value.value(), run)?;
            if status.is_none_or(|wanted| head.status == wanted) {
                out.push((run, head));
            }
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
            .map(|bytes| decode(bytes.value(), &format!("envelopes[{run}]")))
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

    fn put_facet(&self, facet: &Facet) -> Result<(), StoreError> {
        self.put_catalog_entry(FACETS, &facet.name, &encode(facet)?)
    }

    fn facets(&self) -> Result<Vec<Facet>, StoreError> {
        self.catalog_entries(FACETS)
    }

    fn put_capability(&self, capability: &Capability) -> Result<(), StoreError> {
        self.put_catalog_entry(
            CAPABILITIES,
            &capability.capability_id,
            &encode(capability)?,
        )
    }

    fn capabilities(&self) -> Result<Vec<Capability>, StoreError> {
        self.catalog_entries(CAPABILITIES)
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
    use crate::store::NodeStatus;
    use crate::store::testkit::{RunScript, capability, facet, plan};

    fn temp_store(durability: Durability) -> (tempfile::TempDir, PathBuf, RedbStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flexrun.redb");
        let store = RedbStore::open(&path, durability).unwrap();
        (dir, path, store)
    }

    /// Commits each batch alone and returns every event committed.
    fn commit_all(store: &RedbStore, batches: Vec<CommitBatch>) -> Vec<RunEvent> {
        let mut events = Vec::new();
        for batch in batches {
            store.commit(std::slice::from_ref(&batch)).unwrap();
            events.extend(batch.events);
        }
        events
    }

    fn violation_message(err: StoreError, expected_run: RunId) -> String {
        match err {
            StoreError::InvariantViolation { run, message } => {
                assert_eq!(run, expected_run);
                message
            }
            other => panic!("expected an invariant violation, got {other:?}"),
        }
    }

    #[test]
    fn commit_then_reopen_reads_everything_back() {
        let (_dir, path, store) = temp_store(Durability::Fsync);
        let mut done = RunScript::new(RunId::new());
        let mut live = RunScript::new(RunId::new());
        let done_events = commit_all(
            &store,
            vec![
                done.create(),
                done.accept_plan(),
                done.node_start("write"),
                done.node_complete("write"),
                done.hitl_request("req-1"),
                done.hitl_resolved("req-1"),
                done.complete(RunOutcome::Completed),
            ],
        );
        let live_events = commit_all(&store, vec![live.create(), live.accept_plan()]);
        store.put_facet(&facet()).unwrap();
        store.put_capability(&capability()).unwrap();
        let stats = store.stats();
        assert_eq!((stats.commits, stats.batches), (9, 9));
        assert!(stats.bytes_written > 1000, "{stats:?}");
        drop(store);

        let store = RedbStore::open(&path, Durability::Fsync).unwrap();
        assert_eq!(store.stats(), StoreStats::default());
        assert_eq!(store.run_head(done.run).unwrap(), Some(done.head()));
        assert_eq!(store.run_head(live.run).unwrap(), Some(live.head()));
        assert_eq!(store.run_head(RunId::new()).unwrap(), None);
        assert_eq!(store.envelope(done.run).unwrap(), Some(done.envelope()));
        assert_eq!(store.events_after(done.run, 0, 100).unwrap(), done_events);
        assert_eq!(store.events_after(live.run, 0, 100).unwrap(), live_events);
        assert_eq!(store.plan_versions(done.run).unwrap(), vec![1]);
        assert_eq!(store.plan_version(done.run, 1).unwrap(), Some(plan(1)));
        assert_eq!(store.plan_version(done.run, 2).unwrap(), None);
        assert_eq!(store.latest_plan(live.run).unwrap(), Some(plan(1)));

        let nodes = store.node_records(done.run).unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].node_id, "write");
        assert_eq!(nodes[0].status, NodeStatus::Completed);
        assert!(nodes[0].output.is_some());
        assert!(store.node_records(live.run).unwrap().is_empty());

        let hitl = store.hitl_records(done.run).unwrap();
        assert_eq!(hitl.len(), 1);
        assert_eq!(hitl[0].status, HitlStatus::Resolved);

        let all = store.list_runs(None).unwrap();
        assert_eq!(all.len(), 2);
        let completed = store.list_runs(Some(RunStatus::Completed)).unwrap();
        assert_eq!(completed, vec![(done.run, done.head())]);
        assert_eq!(store.non_terminal_runs().unwrap(), vec![live.run]);
        assert_eq!(store.facets().unwrap(), vec![facet()]);
        assert_eq!(store.capabilities().unwrap(), vec![capability()]);
    }

    #[test]
    fn plan_versions_are_append_only() {
        let store = RedbStore::in_memory().unwrap();
        let mut run = RunScript::new(RunId::new());
        commit_all(&store, vec![run.create(), run.accept_plan()]);
        let before = store.run_head(run.run).unwrap();

        let mut again = run.clone();
        again.plan_version -= 1;
        let mut overwrite = again.accept_plan();
        overwrite.plan.as_mut().unwrap().rationale = "a different plan".to_owned();
        let err = store.commit(&[overwrite]).unwrap_err();
        let message = violation_message(err, run.run);
        assert!(
            message.contains("plan version 1 is already stored"),
            "{message}"
        );
        assert_eq!(store.plan_version(run.run, 1).unwrap(), Some(plan(1)));
        assert_eq!(store.run_head(run.run).unwrap(), before);
        assert_eq!(store.events_after(run.run, 2, 10).unwrap(), Vec::new());

        let mut skip = run.clone();
        skip.plan_version += 1;
        let err = store.commit(&[skip.accept_plan()]).unwrap_err();
        let message = violation_message(err, run.run);
        assert!(
            message.contains("plan version 3 does not follow"),
            "{message}"
        );
        assert_eq!(store.plan_versions(run.run).unwrap(), vec![1]);

        store.commit(&[run.accept_plan()]).unwrap();
        assert_eq!(store.plan_versions(run.run).unwrap(), vec![1, 2]);
        assert_eq!(store.latest_plan(run.run).unwrap(), Some(plan(2)));
    }

    #[test]
    fn head_must_name_the_latest_plan_version() {
        let store = RedbStore::in_memory().unwrap();
        let mut run = RunScript::new(RunId::new());
        commit_all(&store, vec![run.create()]);
        let mut batch = run.clone().node_start("write");
        batch.head.plan_version = 4;
        let message = violation_message(store.commit(&[batch]).unwrap_err(), run.run);
        assert!(message.contains("head plan version 4"), "{message}");
    }

    #[test]
    fn a_seq_gap_is_refused_and_nothing_of_the_batch_is_written() {
        let store = RedbStore::in_memory().unwrap();
        let mut run = RunScript::new(RunId::new());
        commit_all(&store, vec![run.create()]);
        let before = store.run_head(run.run).unwrap();

        let mut gap = run.clone();
        gap.seq += 1;
        let batch = gap.accept_plan();
        assert_eq!(batch.events[0].seq, 3);
        let message = violation_message(store.commit(&[batch]).unwrap_err(), run.run);
        assert!(
            message.contains("event seq 3 does not follow last seq 1"),
            "{message}"
        );
        assert_eq!(store.run_head(run.run).unwrap(), before);
        assert!(store.plan_versions(run.run).unwrap().is_empty());
        assert_eq!(store.events_after(run.run, 1, 10).unwrap(), Vec::new());

        let mut batch = run.clone().node_start("write");
        batch.head.last_seq = 7;
        let message = violation_message(store.commit(&[batch]).unwrap_err(), run.run);
        assert!(
            message.contains("head last seq 7 differs from last event seq 2"),
            "{message}"
        );
        assert!(store.node_records(run.run).unwrap().is_empty());

        let mut fresh = RunScript::new(RunId::new());
        fresh.seq = 1;
        let message = violation_message(store.commit(&[fresh.create()]).unwrap_err(), fresh.run);
        assert!(
            message.contains("event seq 2 does not follow last seq 0"),
            "{message}"
        );
        assert_eq!(store.run_head(fresh.run).unwrap(), None);
        assert_eq!(store.envelope(fresh.run).unwrap(), None);
    }

    #[test]
    fn events_of_another_run_are_refused() {
        let store = RedbStore::in_memory().unwrap();
        let mut run = RunScript::new(RunId::new());
        let mut batch = run.create();
        batch.events[0].run_id = RunId::new();
        let message = violation_message(store.commit(&[batch]).unwrap_err(), run.run);
        assert!(message.contains("event seq 1 belongs to run"), "{message}");
    }

    #[test]
    fn a_terminal_run_refuses_more_events_and_status_changes() {
        let store = RedbStore::in_memory().unwrap();
        let mut run = RunScript::new(RunId::new());
        commit_all(
            &store,
            vec![run.create(), run.complete(RunOutcome::Cancelled)],
        );
        let before = store.run_head(run.run).unwrap();
        assert_eq!(
            before.as_ref().map(|head| head.status),
            Some(RunStatus::Cancelled)
        );

        let message = violation_message(
            store
                .commit(&[run.clone().node_start("write")])
                .unwrap_err(),
            run.run,
        );
        assert!(
            message.contains("run is cancelled and takes no more events (refused seq 3)"),
            "{message}"
        );

        let mut revive = CommitBatch::new(run.run, run.head());
        revive.head.status = RunStatus::Active;
        let message = violation_message(store.commit(&[revive]).unwrap_err(), run.run);
        assert!(message.contains("cannot become active"), "{message}");
        assert_eq!(store.run_head(run.run).unwrap(), before);
        assert_eq!(store.events_after(run.run, 2, 10).unwrap(), Vec::new());
        assert!(store.non_terminal_runs().unwrap().is_empty());
    }

    #[test]
    fn the_envelope_comes_exactly_with_the_creating_batch() {
        let store = RedbStore::in_memory().unwrap();
        let mut run = RunScript::new(RunId::new());
        let mut create = run.clone().create();
        create.envelope = None;
        let message = violation_message(store.commit(&[create]).unwrap_err(), run.run);
        assert!(message.contains("no envelope"), "{message}");

        commit_all(&store, vec![run.create()]);
        let mut again = run.clone().accept_plan();
        again.envelope = Some(run.envelope());
        let message = violation_message(store.commit(&[again]).unwrap_err(), run.run);
        assert!(message.contains("already exists"), "{message}");
    }

    #[test]
    fn final_node_attempts_and_resolved_hitl_requests_are_not_rewritten() {
        let store = RedbStore::in_memory().unwrap();
        let mut run = RunScript::new(RunId::new());
        commit_all(
            &store,
            vec![
                run.create(),
                run.accept_plan(),
                run.node_start("write"),
                run.node_complete("write"),
                run.hitl_request("req-1"),
                run.hitl_resolved("req-1"),
            ],
        );
        let message = violation_message(
            store
                .commit(&[run.clone().node_start("write")])
                .unwrap_err(),
            run.run,
        );
        assert!(
            message.contains("node write attempt 1 is already final"),
            "{message}"
        );
        let message = violation_message(
            store
                .commit(&[run.clone().hitl_resolved("req-1")])
                .unwrap_err(),
            run.run,
        );
        assert!(
            message.contains("hitl request req-1 is already resolved"),
            "{message}"
        );

        let mut twice = run.clone().node_start("review");
        twice.nodes.push(twice.nodes[0].clone());
        let message = violation_message(store.commit(&[twice]).unwrap_err(), run.run);
        assert!(message.contains("appears twice"), "{message}");
        assert_eq!(store.node_records(run.run).unwrap().len(), 1);
    }

    #[test]
    fn commit_is_all_or_nothing_and_commit_each_isolates_bad_batches() {
        let store = RedbStore::in_memory().unwrap();
        let mut good = RunScript::new(RunId::new());
        let mut bad = RunScript::new(RunId::new());
        let good_batch = good.create();
        let mut bad_batch = bad.create();
        bad_batch.events[0].seq = 5;

        let err = store
            .commit(&[good_batch.clone(), bad_batch.clone()])
            .unwrap_err();
        assert_eq!(
            violation_message(err, bad.run),
            "event seq 5 does not follow last seq 0"
        );
        assert_eq!(store.run_head(good.run).unwrap(), None);
        assert_eq!(store.stats().commits, 0);

        let outcomes = store.commit_each(&[good_batch, bad_batch]).unwrap();
        assert!(outcomes[0].is_ok());
        assert!(
            matches!(outcomes[1], Err(StoreError::InvariantViolation { run, .. }) if run == bad.run)
        );
        assert_eq!(store.run_head(good.run).unwrap(), Some(good.head()));
        assert_eq!(store.run_head(bad.run).unwrap(), None);
        assert_eq!(store.stats().commits, 1);
        assert_eq!(store.stats().batches, 1);
    }

    #[test]
    fn batches_of_one_run_in_one_transaction_see_each_other() {
        let store = RedbStore::in_memory().unwrap();
        let mut run = RunScript::new(RunId::new());
        let batches = vec![run.create(), run.accept_plan(), run.node_start("write")];
        store.commit(&batches).unwrap();
        assert_eq!(store.stats().commits, 1);
        assert_eq!(store.run_head(run.run).unwrap(), Some(run.head()));
        assert_eq!(store.events_after(run.run, 0, 10).unwrap().len(), 3);
    }

    #[test]
    fn memory_store_mixes_durable_and_non_durable_commits_without_losing_any() {
        let store = RedbStore::in_memory().unwrap();
        let mut run = RunScript::new(RunId::new());
        let mut events = commit_all(&store, vec![run.create(), run.accept_plan()]);
        for i in 0..3 * MEMORY_DURABLE_EVERY {
            let batch = run.node_start(&format!("node-{i}"));
            events.extend(batch.events.clone());
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
    fn events_after_pages_through_one_run_only() {
        let store = RedbStore::in_memory().unwrap();
        let mut a = RunScript::new(RunId::new());
        let mut b = RunScript::new(RunId::new());
        let mut a_events = Vec::new();
        store.commit(&[a.create(), b.create()]).unwrap();
        store.commit(&[a.accept_plan(), b.accept_plan()]).unwrap();
        for _ in 0..23 {
            let batch = a.node_start("write");
            store.commit(&[batch, b.node_start("other")]).unwrap();
        }
        let all = store.events_after(a.run, 0, usize::MAX).unwrap();
        assert_eq!(all.len(), 25);
        assert!(all.iter().all(|event| event.run_id == a.run));
        a_events.extend(all);

        let mut pages = Vec::new();
        let mut after = 0;
        loop {
            let page = store.events_after(a.run, after, 10).unwrap();
            let Some(last) = page.last() else { break };
            after = last.seq;
            pages.push(page);
        }
        assert_eq!(
            pages.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![10, 10, 5]
        );
        assert_eq!(pages.concat(), a_events);
        assert_eq!(pages[1][0].seq, 11);
        assert!(store.events_after(a.run, 0, 0).unwrap().is_empty());
        assert!(store.events_after(a.run, u64::MAX, 10).unwrap().is_empty());
        assert!(store.events_after(RunId::new(), 0, 10).unwrap().is_empty());
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
                    expected: 1
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "store format version 99 found, version 1 expected: upgrade required"
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
        assert!(matches!(err, StoreError::Redb(_)), "{err:?}");
    }

    const FIXTURE: &str = "tests/fixtures/store-v1.redb";

    fn fixture_path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(FIXTURE)
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
        replan.events[0].body = crate::fsm::EventBody::PlanUpdated {
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

    /// Regenerates the frozen fixture. Run by hand only when [`SCHEMA_VERSION`] is bumped, and
    /// then under a new file name: the old fixture must keep opening (or keep failing with
    /// `UpgradeRequired`).
    #[test]
    #[ignore = "writes tests/fixtures; run by hand on a format change"]
    fn write_frozen_fixture() {
        let path = fixture_path();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&path);
        let store = RedbStore::open(&path, Durability::Fsync).unwrap();
        let (_, _, batches) = fixture_runs();
        commit_all(&store, batches);
        store.put_facet(&facet()).unwrap();
        store.put_capability(&capability()).unwrap();
    }

    #[test]
    fn frozen_v1_fixture_still_opens_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store-v1.redb");
        std::fs::copy(fixture_path(), &path).unwrap();
        let store = RedbStore::open(&path, Durability::Fsync).unwrap();

        let (done, live, batches) = fixture_runs();
        let events_of = |run: RunId| -> Vec<RunEvent> {
            batches
                .iter()
                .filter(|batch| batch.run_id == run)
                .flat_map(|batch| batch.events.clone())
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

        let mut live = live;
        store.commit(&[live.node_complete("brief")]).unwrap();
        assert_eq!(store.run_head(live.run).unwrap(), Some(live.head()));
    }
}
