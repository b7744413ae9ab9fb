//! A [`Store`] that keeps everything in the process's memory.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::Store;
use super::codec::{
    At, HeadFacts, decode_envelope, decode_event, decode_head, decode_hitl, decode_node,
    decode_plan, decode_value, encode_value, envelope_objective, head_facts, stored_hitl_status,
    stored_node_status,
};
use super::error::StoreError;
use super::prepare::{Lookup, Prepared, prepare};
use super::query::{Pager, RunPage, RunQuery};
use super::types::{
    CommitBatch, HitlRecord, HitlStatus, NodeRecord, NodeStatus, QueuedFiring, RequestRecord,
    RunHead, RunStatus, StoreStats,
};
use crate::catalog::{Capability, Facet};
use crate::fsm::RunEvent;
use crate::graph::PlanSnapshot;
use crate::ids::{RunId, Timestamp};

/// A [`Store`] held entirely in memory (durability level D0): for tests, benchmarks and
/// embedders that persist elsewhere. Everything is lost when it is dropped.
///
/// It enforces exactly the invariants of [`RedbStore`](super::RedbStore) (the checks are
/// shared), stores the same encoded values (so [`Store::stats`] counts the same bytes and
/// every read decodes what was written), and never blocks on I/O:
/// [`Store::commit_blocks`] is `false`. Writers are serialized by one lock; readers share it.
#[derive(Default)]
pub struct MemoryStore {
    state: RwLock<State>,
    commits: AtomicU64,
    batches: AtomicU64,
    bytes_written: AtomicU64,
}

#[derive(Default)]
struct State {
    runs: BTreeMap<RunId, RunData>,
    facets: BTreeMap<String, Vec<u8>>,
    capabilities: BTreeMap<String, Vec<u8>>,
    requests: BTreeMap<String, Vec<u8>>,
}

/// The encoded values of a batch that are not part of [`Prepared`]: the queue and the
/// idempotency records, which only some batches carry.
struct Extras {
    queued: Option<Vec<u8>>,
    requests: Vec<(String, Vec<u8>)>,
}

impl Extras {
    fn encode(batch: &CommitBatch) -> Result<Self, StoreError> {
        let queued = match &batch.queued {
            Some(queued) if !queued.is_empty() => {
                let mut bytes = Vec::new();
                encode_value(queued, &mut bytes)?;
                Some(bytes)
            }
            Some(_) | None => None,
        };
        let mut requests = Vec::with_capacity(batch.requests.len());
        for record in &batch.requests {
            let mut bytes = Vec::new();
            encode_value(record, &mut bytes)?;
            requests.push((record.key.clone(), bytes));
        }
        Ok(Self { queued, requests })
    }

    fn bytes(&self) -> u64 {
        let queued = self.queued.as_ref().map_or(0, Vec::len);
        let requests: usize = self.requests.iter().map(|(_, bytes)| bytes.len()).sum();
        (queued + requests) as u64
    }
}

/// One run's encoded values: everything stored about the run, so that removing it from
/// [`State::runs`] deletes the run.
struct RunData {
    head: Vec<u8>,
    envelope: Vec<u8>,
    /// Every event's bytes, back to back; event seq `k` ends at `event_ends[k - 1]`.
    events: Vec<u8>,
    event_ends: Vec<usize>,
    /// Plan version `v` at index `v - 1` (versions are gap-free from 1).
    plans: Vec<Vec<u8>>,
    /// Node id → attempt → record.
    nodes: BTreeMap<String, BTreeMap<u32, Vec<u8>>>,
    hitl: BTreeMap<String, Vec<u8>>,
    /// The encoded queue of firings, while not empty.
    queued: Option<Vec<u8>>,
}

impl RunData {
    fn event(&self, seq: u64) -> Option<&[u8]> {
        let index = usize::try_from(seq.checked_sub(1)?).ok()?;
        let end = *self.event_ends.get(index)?;
        let start = match index {
            0 => 0,
            _ => self.event_ends[index - 1],
        };
        Some(&self.events[start..end])
    }

    fn objective(&self, run: RunId) -> Result<String, StoreError> {
        envelope_objective(&self.envelope, run)
    }
}

/// How to take back one write of an all-or-nothing commit.
enum Undo {
    Created(RunId),
    Head(RunId, Vec<u8>),
    Events(RunId, usize),
    Plan(RunId),
    Node(RunId, String, u32, Option<Vec<u8>>),
    Hitl(RunId, String, Option<Vec<u8>>),
    Queued(RunId, Option<Vec<u8>>),
    Request(String, Option<Vec<u8>>),
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_batches(
        &self,
        batches: &[CommitBatch],
        all_or_nothing: bool,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut state = self.write();
        // A single batch is fully checked before anything of it is written, so only a
        // multi-batch all-or-nothing commit may have to take writes back.
        let mut undo = (all_or_nothing && batches.len() > 1).then(Vec::new);
        let mut outcomes = Vec::with_capacity(batches.len());
        let mut bytes = 0;
        let mut written = 0;
        for batch in batches {
            match prepare(&mut *state, batch)
                .and_then(|prepared| Ok((prepared, Extras::encode(batch)?)))
            {
                Ok((prepared, extras)) => {
                    bytes += prepared.bytes() + extras.bytes();
                    state.apply(batch, &prepared, extras, undo.as_mut());
                    written += 1;
                    outcomes.push(Ok(()));
                }
                Err(err) if all_or_nothing => {
                    if let Some(undo) = undo {
                        state.roll_back(undo);
                    }
                    return Err(err);
                }
                Err(err) => outcomes.push(Err(err)),
            }
        }
        drop(state);
        if written > 0 {
            self.commits.fetch_add(1, Ordering::Relaxed);
            self.batches.fetch_add(written, Ordering::Relaxed);
            self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        }
        Ok(outcomes)
    }

    /// A commit of one batch: checked in full before anything is written, so nothing to undo.
    fn commit_one(&self, batch: &CommitBatch) -> Result<(), StoreError> {
        let mut state = self.write();
        let prepared = prepare(&mut *state, batch)?;
        let extras = Extras::encode(batch)?;
        let bytes = prepared.bytes() + extras.bytes();
        state.apply(batch, &prepared, extras, None);
        drop(state);
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    fn catalog_entries<T: DeserializeOwned>(
        &self,
        table: fn(&State) -> &BTreeMap<String, Vec<u8>>,
        table_name: &'static str,
    ) -> Result<Vec<T>, StoreError> {
        let state = self.read();
        table(&state)
            .iter()
            .map(|(key, bytes)| decode_value(bytes, At::Catalog(table_name, key)))
            .collect()
    }

    fn with_run<T>(
        &self,
        run: RunId,
        read: impl FnOnce(&RunData) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        self.read().runs.get(&run).map(read).transpose()
    }
}

impl State {
    /// Writes a prepared batch; with `undo`, records how to take each write back.
    fn apply(
        &mut self,
        batch: &CommitBatch,
        prepared: &Prepared,
        extras: Extras,
        mut undo: Option<&mut Vec<Undo>>,
    ) {
        let run = batch.run_id;
        let recording = undo.is_some();
        let mut log = |entry: Undo| {
            if let Some(undo) = undo.as_mut() {
                undo.push(entry);
            }
        };
        let data = match self.runs.entry(run) {
            Entry::Vacant(vacant) => {
                log(Undo::Created(run));
                vacant.insert(RunData {
                    head: prepared.head().to_vec(),
                    envelope: prepared.envelope().unwrap_or_default().to_vec(),
                    events: Vec::new(),
                    event_ends: Vec::new(),
                    plans: Vec::new(),
                    nodes: BTreeMap::new(),
                    hitl: BTreeMap::new(),
                    queued: None,
                })
            }
            Entry::Occupied(occupied) => {
                let data = occupied.into_mut();
                if recording {
                    let previous = std::mem::take(&mut data.head);
                    log(Undo::Head(run, previous));
                }
                data.head.clear();
                data.head.extend_from_slice(prepared.head());
                data
            }
        };
        if !batch.events.is_empty() {
            log(Undo::Events(run, data.event_ends.len()));
            for (event, bytes) in batch.events.iter().zip(prepared.events()) {
                debug_assert_eq!(event.seq, data.event_ends.len() as u64 + 1);
                data.events.extend_from_slice(bytes);
                data.event_ends.push(data.events.len());
            }
        }
        if let (Some(plan), Some(bytes)) = (&batch.plan, prepared.plan()) {
            debug_assert_eq!(plan.version as usize, data.plans.len() + 1);
            log(Undo::Plan(run));
            data.plans.push(bytes.to_vec());
        }
        for (node, bytes) in batch.nodes.iter().zip(prepared.nodes()) {
            let attempts = match data.nodes.get_mut(node.node_id.as_str()) {
                Some(attempts) => attempts,
                None => data.nodes.entry(node.node_id.clone()).or_default(),
            };
            let previous = match attempts.get_mut(&node.attempt) {
                Some(stored) => {
                    let previous = recording.then(|| std::mem::take(stored));
                    stored.clear();
                    stored.extend_from_slice(bytes);
                    previous
                }
                None => {
                    attempts.insert(node.attempt, bytes.to_vec());
                    None
                }
            };
            if recording {
                log(Undo::Node(
                    run,
                    node.node_id.clone(),
                    node.attempt,
                    previous,
                ));
            }
        }
        for (record, bytes) in batch.hitl.iter().zip(prepared.hitl()) {
            let previous = data.hitl.insert(record.request_id.clone(), bytes.to_vec());
            if recording {
                log(Undo::Hitl(run, record.request_id.clone(), previous));
            }
        }
        if batch.queued.is_some() {
            let previous = std::mem::replace(&mut data.queued, extras.queued);
            if recording {
                log(Undo::Queued(run, previous));
            }
        }
        for (key, bytes) in extras.requests {
            let previous = self.requests.insert(key.clone(), bytes);
            if recording {
                log(Undo::Request(key, previous));
            }
        }
    }

    /// Takes back the writes recorded in `undo`, newest first.
    fn roll_back(&mut self, undo: Vec<Undo>) {
        for entry in undo.into_iter().rev() {
            match entry {
                Undo::Created(run) => {
                    self.runs.remove(&run);
                }
                Undo::Head(run, previous) => {
                    if let Some(data) = self.runs.get_mut(&run) {
                        data.head = previous;
                    }
                }
                Undo::Events(run, count) => {
                    if let Some(data) = self.runs.get_mut(&run) {
                        let end = match count {
                            0 => 0,
                            _ => data.event_ends[count - 1],
                        };
                        data.event_ends.truncate(count);
                        data.events.truncate(end);
                    }
                }
                Undo::Plan(run) => {
                    if let Some(data) = self.runs.get_mut(&run) {
                        data.plans.pop();
                    }
                }
                Undo::Node(run, node_id, attempt, previous) => {
                    if let Some(attempts) = self
                        .runs
                        .get_mut(&run)
                        .and_then(|data| data.nodes.get_mut(&node_id))
                    {
                        match previous {
                            Some(bytes) => {
                                attempts.insert(attempt, bytes);
                            }
                            None => {
                                attempts.remove(&attempt);
                            }
                        }
                    }
                }
                Undo::Queued(run, previous) => {
                    if let Some(data) = self.runs.get_mut(&run) {
                        data.queued = previous;
                    }
                }
                Undo::Request(key, previous) => match previous {
                    Some(bytes) => {
                        self.requests.insert(key, bytes);
                    }
                    None => {
                        self.requests.remove(&key);
                    }
                },
                Undo::Hitl(run, request_id, previous) => {
                    if let Some(data) = self.runs.get_mut(&run) {
                        match previous {
                            Some(bytes) => {
                                data.hitl.insert(request_id, bytes);
                            }
                            None => {
                                data.hitl.remove(&request_id);
                            }
                        }
                    }
                }
            }
        }
    }
}

impl Lookup for State {
    fn head(&mut self, run: RunId) -> Result<Option<HeadFacts>, StoreError> {
        self.runs
            .get(&run)
            .map(|data| head_facts(&data.head, run))
            .transpose()
    }

    fn plan_exists(&mut self, run: RunId, version: u32) -> Result<bool, StoreError> {
        Ok(self
            .runs
            .get(&run)
            .is_some_and(|data| version >= 1 && version as usize <= data.plans.len()))
    }

    fn node_status(
        &mut self,
        run: RunId,
        node_id: &str,
        attempt: u32,
    ) -> Result<Option<NodeStatus>, StoreError> {
        self.runs
            .get(&run)
            .and_then(|data| data.nodes.get(node_id))
            .and_then(|attempts| attempts.get(&attempt))
            .map(|bytes| stored_node_status(bytes, At::Node(run, node_id, attempt)))
            .transpose()
    }

    fn hitl_status(
        &mut self,
        run: RunId,
        request_id: &str,
    ) -> Result<Option<HitlStatus>, StoreError> {
        self.runs
            .get(&run)
            .and_then(|data| data.hitl.get(request_id))
            .map(|bytes| stored_hitl_status(bytes, At::Hitl(run, request_id)))
            .transpose()
    }
}

impl Store for MemoryStore {
    fn commit(&self, batches: &[CommitBatch]) -> Result<(), StoreError> {
        match batches {
            [batch] => self.commit_one(batch),
            _ => self.write_batches(batches, true).map(drop),
        }
    }

    fn commit_each(
        &self,
        batches: &[CommitBatch],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        self.write_batches(batches, false)
    }

    fn commit_blocks(&self) -> bool {
        false
    }

    fn run_head(&self, run: RunId) -> Result<Option<RunHead>, StoreError> {
        self.with_run(run, |data| {
            decode_head(&data.head, run, data.objective(run)?)
        })
    }

    fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<(RunId, RunHead)>, StoreError> {
        let state = self.read();
        let mut out = Vec::new();
        for (&run, data) in &state.runs {
            if let Some(wanted) = status
                && head_facts(&data.head, run)?.status != wanted
            {
                continue;
            }
            out.push((run, decode_head(&data.head, run, data.objective(run)?)?));
        }
        Ok(out)
    }

    fn runs_page(&self, query: &RunQuery) -> Result<RunPage, StoreError> {
        let state = self.read();
        let rows = match query.upper() {
            Some(upper) => state.runs.range(..upper),
            None => state.runs.range(..),
        };
        let mut pager = Pager::new(query);
        for (&run, data) in rows.rev() {
            let go_on = pager.offer(
                run,
                || Ok(head_facts(&data.head, run)?.status),
                || decode_head(&data.head, run, data.objective(run)?),
                || decode_envelope(&data.envelope, run).map(Some),
            )?;
            if !go_on {
                break;
            }
        }
        Ok(pager.finish())
    }

    fn envelope(&self, run: RunId) -> Result<Option<Value>, StoreError> {
        self.with_run(run, |data| decode_envelope(&data.envelope, run))
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
        let events = self.with_run(run, |data| {
            (first..)
                .take(limit)
                .map_while(|seq| data.event(seq).map(|bytes| decode_event(bytes, run, seq)))
                .collect()
        })?;
        Ok(events.unwrap_or_default())
    }

    fn plan_version(&self, run: RunId, version: u32) -> Result<Option<PlanSnapshot>, StoreError> {
        let plan = self.with_run(run, |data| {
            let index = (version as usize).checked_sub(1);
            index
                .and_then(|index| data.plans.get(index))
                .map(|bytes| decode_plan(bytes, run, version))
                .transpose()
        })?;
        Ok(plan.flatten())
    }

    fn plan_versions(&self, run: RunId) -> Result<Vec<u32>, StoreError> {
        let count = self.with_run(run, |data| Ok(data.plans.len() as u32))?;
        Ok((1..=count.unwrap_or(0)).collect())
    }

    fn latest_plan(&self, run: RunId) -> Result<Option<PlanSnapshot>, StoreError> {
        let plan = self.with_run(run, |data| {
            data.plans
                .last()
                .map(|bytes| decode_plan(bytes, run, data.plans.len() as u32))
                .transpose()
        })?;
        Ok(plan.flatten())
    }

    fn node_records(&self, run: RunId) -> Result<Vec<NodeRecord>, StoreError> {
        let records = self.with_run(run, |data| {
            data.nodes
                .iter()
                .flat_map(|(node_id, attempts)| {
                    attempts
                        .iter()
                        .map(|(&attempt, bytes)| decode_node(bytes, run, node_id.clone(), attempt))
                })
                .collect()
        })?;
        Ok(records.unwrap_or_default())
    }

    fn hitl_records(&self, run: RunId) -> Result<Vec<HitlRecord>, StoreError> {
        let records = self.with_run(run, |data| {
            data.hitl
                .iter()
                .map(|(request_id, bytes)| decode_hitl(bytes, run, request_id.clone()))
                .collect()
        })?;
        Ok(records.unwrap_or_default())
    }

    fn non_terminal_runs(&self) -> Result<Vec<RunId>, StoreError> {
        let state = self.read();
        let mut out = Vec::new();
        for (&run, data) in &state.runs {
            if head_facts(&data.head, run)?.status == RunStatus::Active {
                out.push(run);
            }
        }
        Ok(out)
    }

    fn queued_firings(&self, run: RunId) -> Result<Vec<QueuedFiring>, StoreError> {
        let queued = self.with_run(run, |data| {
            data.queued
                .as_ref()
                .map(|bytes| decode_value(bytes, At::Queued(run)))
                .transpose()
        })?;
        Ok(queued.flatten().unwrap_or_default())
    }

    fn request(&self, key: &str) -> Result<Option<RequestRecord>, StoreError> {
        self.read()
            .requests
            .get(key)
            .map(|bytes| decode_value(bytes, At::Request(key)))
            .transpose()
    }

    fn expire_requests(&self, before: Timestamp, limit: usize) -> Result<usize, StoreError> {
        if limit == 0 {
            return Ok(0);
        }
        let mut state = self.write();
        let mut expired = Vec::new();
        for (key, bytes) in &state.requests {
            let record: RequestRecord = decode_value(bytes, At::Request(key))?;
            if record.created_at < before {
                expired.push(key.clone());
                if expired.len() >= limit {
                    break;
                }
            }
        }
        for key in &expired {
            state.requests.remove(key);
        }
        Ok(expired.len())
    }

    fn delete_run(&self, run: RunId) -> Result<bool, StoreError> {
        let mut state = self.write();
        let Some(data) = state.runs.get(&run) else {
            return Ok(false);
        };
        if !head_facts(&data.head, run)?.status.is_terminal() {
            return Err(StoreError::RunActive { run });
        }
        state.runs.remove(&run);
        Ok(true)
    }

    fn delete_terminal_before(
        &self,
        cutoff: Timestamp,
        limit: usize,
        skip: &dyn Fn(RunId) -> bool,
    ) -> Result<Vec<RunId>, StoreError> {
        let mut state = self.write();
        let mut expired = Vec::new();
        for (&run, data) in &state.runs {
            if expired.len() == limit {
                break;
            }
            let head = decode_head(&data.head, run, String::new())?;
            if head.status.is_terminal() && head.updated_at < cutoff && !skip(run) {
                expired.push(run);
            }
        }
        for run in &expired {
            state.runs.remove(run);
        }
        Ok(expired)
    }

    fn put_facet(&self, facet: &Facet) -> Result<(), StoreError> {
        let mut bytes = Vec::new();
        encode_value(facet, &mut bytes)?;
        self.write().facets.insert(facet.name.clone(), bytes);
        Ok(())
    }

    fn facets(&self) -> Result<Vec<Facet>, StoreError> {
        self.catalog_entries(|state| &state.facets, "facets")
    }

    fn put_capability(&self, capability: &Capability) -> Result<(), StoreError> {
        let mut bytes = Vec::new();
        encode_value(capability, &mut bytes)?;
        self.write()
            .capabilities
            .insert(capability.capability_id.clone(), bytes);
        Ok(())
    }

    fn capabilities(&self) -> Result<Vec<Capability>, StoreError> {
        self.catalog_entries(|state| &state.capabilities, "capabilities")
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.commits.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("runs", &self.read().runs.len())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::fsm::RunOutcome;
    use crate::store::RedbStore;
    use crate::store::conformance::commit_two_runs;
    use crate::store::testkit::RunScript;

    /// The batches of a linear run of `steps` steps, after its creation and plan.
    fn linear_run(steps: usize) -> (RunScript, Vec<CommitBatch>, Vec<CommitBatch>) {
        let mut run = RunScript::new(RunId::new());
        let setup = vec![run.create(), run.accept_plan()];
        let mut batches = Vec::with_capacity(steps + 1);
        for i in 0..steps {
            batches.push(run.step(&format!("s{i:05}"), &format!("s{:05}", i + 1)));
        }
        batches.push(run.complete(RunOutcome::Completed));
        (run, setup, batches)
    }

    #[test]
    fn both_backends_count_the_same_bytes_and_read_back_the_same_records() {
        let memory = MemoryStore::new();
        let redb = RedbStore::in_memory().unwrap();
        let (run, setup, batches) = linear_run(20);
        let mut step_bytes = Vec::new();
        for store in [&memory as &dyn Store, &redb] {
            store.commit(&setup).unwrap();
            let before = store.stats().bytes_written;
            for batch in &batches[..20] {
                store.commit(std::slice::from_ref(batch)).unwrap();
            }
            step_bytes.push((store.stats().bytes_written - before) / 20);
            store.commit(&batches[20..]).unwrap();
        }
        assert_eq!(memory.stats(), redb.stats());
        assert_eq!(memory.stats().commits, 22);
        assert_eq!(step_bytes[0], step_bytes[1]);
        assert!(step_bytes[0] <= 160, "{} bytes per step", step_bytes[0]);
        assert_eq!(
            memory.events_after(run.run, 0, 100).unwrap(),
            redb.events_after(run.run, 0, 100).unwrap()
        );
        assert_eq!(
            memory.node_records(run.run).unwrap(),
            redb.node_records(run.run).unwrap()
        );
        assert_eq!(memory.run_head(run.run).unwrap(), Some(run.head()));
        assert_eq!(
            memory.list_runs(None).unwrap(),
            redb.list_runs(None).unwrap()
        );
        assert!(format!("{memory:?}").contains("runs: 1"));
    }

    #[test]
    fn a_corrupt_stored_value_is_reported_with_its_table_and_key() {
        let store = MemoryStore::new();
        let (done, _, _, _) = commit_two_runs(&store);
        store
            .write()
            .runs
            .get_mut(&done.run)
            .unwrap()
            .nodes
            .get_mut("write")
            .unwrap()
            .insert(1, vec![2, 7]);
        let err = store.node_records(done.run).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { what } if *what == format!("nodes[{}/write/1]: node status tag 7 unknown", done.run)),
            "{err:?}"
        );
    }
}
