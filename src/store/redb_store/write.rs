//! The write side of a commit: the tables a transaction writes, deleting a run's rows, and
//! replaying the writes of a commit-log entry.

use std::borrow::Borrow;

use redb::{Key, ReadableTable, Table, TableDefinition, Value as RedbValue, WriteTransaction};

use super::log::{Frame, LogTable, Record, records};
use crate::ids::RunId;
use crate::store::codec::{
    At, HeadFacts, encode_value, head_facts, stored_hitl_status, stored_node_status,
};
use crate::store::error::StoreError;
use crate::store::prepare::{Lookup, Prepared};
use crate::store::tables::{
    ENVELOPES, EVENTS, HITL, NODES, PER_RUN_TABLES, PLANS, PerRunTable, QUEUED, REQUESTS, RUNS,
    event_key, hitl_key, node_key, plan_key, run_key, run_prefix_end, run_span,
};
use crate::store::types::{CommitBatch, HitlStatus, NodeStatus, RunStatus};

/// Deletes every row of `run` from every per-run table ([`PER_RUN_TABLES`]): the one place
/// that knows where a run's rows are.
pub(super) fn delete_run_rows(txn: &WriteTransaction, run: RunId) -> Result<(), StoreError> {
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
pub(super) fn stored_status(
    txn: &WriteTransaction,
    run: RunId,
) -> Result<Option<RunStatus>, StoreError> {
    let runs = txn.open_table(RUNS)?;
    let status = runs
        .get(run_key(run))?
        .map(|bytes| head_facts(bytes.value(), run).map(|facts| facts.status))
        .transpose()?;
    Ok(status)
}

/// The tables a commit touches, each opened on first use and then kept for the rest of the
/// write transaction (opening a table costs a lookup in redb's table tree).
pub(super) struct WriteTables<'txn> {
    txn: &'txn WriteTransaction,
    /// The commit-log entry the writes are recorded into, for a logged commit.
    frame: Option<Frame>,
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
    /// Opens the tables of `txn`; writes are also recorded into `frame` when given.
    pub(super) fn open(
        txn: &'txn WriteTransaction,
        frame: Option<Frame>,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            txn,
            frame,
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
    pub(super) fn write(
        &mut self,
        batch: &CommitBatch,
        prepared: &Prepared,
    ) -> Result<u64, StoreError> {
        let run = batch.run_id;
        self.runs.insert(run_key(run), prepared.head())?;
        log_put(
            &mut self.frame,
            LogTable::Runs,
            &run_key(run),
            prepared.head(),
        );
        if let Some(envelope) = prepared.envelope() {
            lazy(&mut self.envelopes, self.txn, ENVELOPES)?.insert(run_key(run), envelope)?;
            log_put(
                &mut self.frame,
                LogTable::Envelopes,
                &run_key(run),
                envelope,
            );
        }
        if !batch.events.is_empty() {
            let events = lazy(&mut self.events, self.txn, EVENTS)?;
            for (event, value) in batch.events.iter().zip(prepared.events()) {
                let key = event_key(run, event.seq);
                events.insert(key, value)?;
                log_put(&mut self.frame, LogTable::Events, &key, value);
            }
        }
        if let (Some(plan), Some(value)) = (&batch.plan, prepared.plan()) {
            let key = plan_key(run, plan.version);
            lazy(&mut self.plans, self.txn, PLANS)?.insert(key, value)?;
            log_put(&mut self.frame, LogTable::Plans, &key, value);
        }
        if !batch.nodes.is_empty() {
            let nodes = lazy(&mut self.nodes, self.txn, NODES)?;
            for (node, value) in batch.nodes.iter().zip(prepared.nodes()) {
                let key = node_key(run, &node.node_id, node.attempt)
                    .ok_or_else(|| StoreError::violation(run, "node id too long for a key"))?;
                nodes.insert(key.as_slice(), value)?;
                log_put(&mut self.frame, LogTable::Nodes, &key, value);
            }
        }
        if !batch.hitl.is_empty() {
            let hitl = lazy(&mut self.hitl, self.txn, HITL)?;
            for (record, value) in batch.hitl.iter().zip(prepared.hitl()) {
                let key = hitl_key(run, &record.request_id);
                hitl.insert(key.as_slice(), value)?;
                log_put(&mut self.frame, LogTable::Hitl, &key, value);
            }
        }
        let mut bytes = prepared.bytes();
        if let Some(queued) = &batch.queued {
            let table = lazy(&mut self.queued, self.txn, QUEUED)?;
            if queued.is_empty() {
                table.remove(run_key(run))?;
                if let Some(frame) = &mut self.frame {
                    frame.remove(LogTable::Queued, &run_key(run));
                }
            } else {
                let mut value = Vec::new();
                encode_value(queued, &mut value)?;
                table.insert(run_key(run), value.as_slice())?;
                log_put(&mut self.frame, LogTable::Queued, &run_key(run), &value);
                bytes += value.len() as u64;
            }
        }
        for record in &batch.requests {
            let mut value = Vec::new();
            encode_value(record, &mut value)?;
            lazy(&mut self.requests, self.txn, REQUESTS)?
                .insert(record.key.as_str(), value.as_slice())?;
            log_put(
                &mut self.frame,
                LogTable::Requests,
                record.key.as_bytes(),
                &value,
            );
            bytes += value.len() as u64;
        }
        Ok(bytes)
    }

    /// The frame the writes were recorded into.
    pub(super) fn into_frame(self) -> Option<Frame> {
        self.frame
    }
}

fn log_put(frame: &mut Option<Frame>, table: LogTable, key: &[u8], value: &[u8]) {
    if let Some(frame) = frame {
        frame.put(table, key, value);
    }
}

/// Applies one commit-log payload's writes to `txn`, as raw puts and removes: applying it
/// again, or on top of a state that already holds it, gives the same rows.
pub(super) fn replay(txn: &WriteTransaction, payload: &[u8]) -> Result<(), StoreError> {
    let malformed = || StoreError::corrupt("commit log entry: malformed write");
    for write in records(payload).ok_or_else(malformed)? {
        let (table, key, value) = match write {
            Record::Put(table, key, value) => (table, key, Some(value)),
            Record::Remove(table, key) => (table, key, None),
        };
        match table {
            LogTable::Runs => apply(txn, RUNS, fixed(key)?, value)?,
            LogTable::Envelopes => apply(txn, ENVELOPES, fixed(key)?, value)?,
            LogTable::Queued => apply(txn, QUEUED, fixed(key)?, value)?,
            LogTable::Plans => apply(txn, PLANS, fixed(key)?, value)?,
            LogTable::Events => apply(txn, EVENTS, fixed(key)?, value)?,
            LogTable::Nodes => apply(txn, NODES, key, value)?,
            LogTable::Hitl => apply(txn, HITL, key, value)?,
            LogTable::Requests => {
                let key = std::str::from_utf8(key).map_err(|_| malformed())?;
                apply(txn, REQUESTS, key, value)?;
            }
        }
    }
    Ok(())
}

fn fixed<const N: usize>(key: &[u8]) -> Result<[u8; N], StoreError> {
    key.try_into().map_err(|_| {
        StoreError::corrupt(format!(
            "commit log entry: key of {} bytes where {N} expected",
            key.len()
        ))
    })
}

fn apply<'k, K>(
    txn: &WriteTransaction,
    table: TableDefinition<K, &'static [u8]>,
    key: impl Borrow<K::SelfType<'k>>,
    value: Option<&[u8]>,
) -> Result<(), StoreError>
where
    K: Key + 'static,
{
    let mut table = txn.open_table(table)?;
    match value {
        Some(value) => table.insert(key, value)?,
        None => table.remove(key)?,
    };
    Ok(())
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
