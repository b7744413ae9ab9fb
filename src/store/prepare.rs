//! The invariant checks every backend runs before writing a batch, and the batch's encoded
//! values.
//!
//! A backend answers four questions about what its transaction sees so far ([`Lookup`]), and
//! [`prepare`] decides whether the batch may be written and encodes it; the backend then stores
//! the [`Prepared`] values. Keeping the checks here is what makes every backend enforce the same
//! invariants.

use std::collections::HashSet;
use std::ops::Range;

use super::codec::{HeadFacts, encode_envelope, encode_event, encode_head, encode_hitl};
use super::codec::{encode_node, encode_value};
use super::error::StoreError;
use super::types::{CommitBatch, HitlStatus, NodeStatus};
use crate::ids::RunId;

/// Longest node id a store accepts (the redb key gives it a `u16` length).
const MAX_NODE_ID: usize = u16::MAX as usize;

/// Above this many records per batch, duplicates are found with a set instead of a scan.
const LINEAR_DUPLICATES: usize = 16;

/// What a write transaction sees, including the batches it already took.
pub(crate) trait Lookup {
    /// The stored head of `run`.
    fn head(&mut self, run: RunId) -> Result<Option<HeadFacts>, StoreError>;
    /// Whether plan `version` of `run` is stored.
    fn plan_exists(&mut self, run: RunId, version: u32) -> Result<bool, StoreError>;
    /// The status of a stored node attempt.
    fn node_status(
        &mut self,
        run: RunId,
        node_id: &str,
        attempt: u32,
    ) -> Result<Option<NodeStatus>, StoreError>;
    /// The status of a stored HITL record.
    fn hitl_status(
        &mut self,
        run: RunId,
        request_id: &str,
    ) -> Result<Option<HitlStatus>, StoreError>;
}

/// A validated batch's encoded values, all in one buffer, with the range of each value in
/// `spans`: the head, the envelope (if any), the events, the plan (if any), the node records
/// and the HITL records, each list parallel to the batch's list of the same name.
#[derive(Debug)]
pub(crate) struct Prepared {
    buf: Vec<u8>,
    spans: Vec<Range<usize>>,
    has_envelope: bool,
    events: usize,
    has_plan: bool,
    nodes: usize,
}

impl Prepared {
    fn values(&self, spans: Range<usize>) -> impl Iterator<Item = &[u8]> {
        self.spans[spans]
            .iter()
            .map(|range| &self.buf[range.clone()])
    }

    fn value(&self, present: bool, at: usize) -> Option<&[u8]> {
        present.then(|| &self.buf[self.spans[at].clone()])
    }

    fn events_at(&self) -> usize {
        1 + usize::from(self.has_envelope)
    }

    fn nodes_at(&self) -> usize {
        self.events_at() + self.events + usize::from(self.has_plan)
    }

    pub(crate) fn head(&self) -> &[u8] {
        &self.buf[self.spans[0].clone()]
    }

    pub(crate) fn envelope(&self) -> Option<&[u8]> {
        self.value(self.has_envelope, 1)
    }

    pub(crate) fn events(&self) -> impl Iterator<Item = &[u8]> {
        let at = self.events_at();
        self.values(at..at + self.events)
    }

    pub(crate) fn plan(&self) -> Option<&[u8]> {
        self.value(self.has_plan, self.events_at() + self.events)
    }

    pub(crate) fn nodes(&self) -> impl Iterator<Item = &[u8]> {
        let at = self.nodes_at();
        self.values(at..at + self.nodes)
    }

    pub(crate) fn hitl(&self) -> impl Iterator<Item = &[u8]> {
        self.values(self.nodes_at() + self.nodes..self.spans.len())
    }

    /// Value bytes of the batch (what [`StoreStats::bytes_written`](super::StoreStats) counts).
    pub(crate) fn bytes(&self) -> u64 {
        self.buf.len() as u64
    }
}

/// Whether `items[index]` repeats an earlier item, by `key`.
fn repeats<'a, T, K: Eq + std::hash::Hash>(
    seen: &mut Option<HashSet<K>>,
    items: &'a [T],
    index: usize,
    key: impl Fn(&'a T) -> K,
) -> bool {
    if items.len() <= LINEAR_DUPLICATES {
        let wanted = key(&items[index]);
        return items[..index].iter().any(|item| key(item) == wanted);
    }
    !seen
        .get_or_insert_with(|| HashSet::with_capacity(items.len()))
        .insert(key(&items[index]))
}

/// Checks `batch` against what `lookup` sees and encodes it. Reads only: nothing is written,
/// on success or on error.
pub(crate) fn prepare(
    lookup: &mut impl Lookup,
    batch: &CommitBatch,
) -> Result<Prepared, StoreError> {
    let run = batch.run_id;
    let fail = |message: String| Err(StoreError::violation(run, message));
    let stored = lookup.head(run)?;
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

    if head.status.is_terminal() && batch.queued.as_ref().is_some_and(|q| !q.is_empty()) {
        return fail(format!(
            "a {} run keeps no queued firings",
            head.status.as_str()
        ));
    }
    if let Some(record) = batch.requests.iter().find(|r| r.run_id != run) {
        return fail(format!(
            "idempotency record `{}` names run {}",
            record.key, record.run_id
        ));
    }

    let mut last = stored.map_or(0, |head| head.last_seq);
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
    // stored head names it without a scan of the plans.
    let latest = stored.map_or(0, |head| head.plan_version);
    match &batch.plan {
        Some(plan) => {
            if lookup.plan_exists(run, plan.version)? {
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

    let mut seen = None;
    for (i, node) in batch.nodes.iter().enumerate() {
        if node.node_id.len() > MAX_NODE_ID {
            return fail(format!(
                "node id of {} bytes exceeds {MAX_NODE_ID} bytes",
                node.node_id.len()
            ));
        }
        if repeats(&mut seen, &batch.nodes, i, |n| {
            (n.node_id.as_str(), n.attempt)
        }) {
            return fail(format!(
                "node {} attempt {} appears twice in one batch",
                node.node_id, node.attempt
            ));
        }
        if lookup
            .node_status(run, &node.node_id, node.attempt)?
            .is_some_and(NodeStatus::is_terminal)
        {
            return fail(format!(
                "node {} attempt {} is already final and cannot be rewritten",
                node.node_id, node.attempt
            ));
        }
    }

    let mut seen = None;
    for (i, record) in batch.hitl.iter().enumerate() {
        if repeats(&mut seen, &batch.hitl, i, |h| h.request_id.as_str()) {
            return fail(format!(
                "hitl request {} appears twice in one batch",
                record.request_id
            ));
        }
        match lookup.hitl_status(run, &record.request_id)? {
            Some(HitlStatus::Resolved) => {
                return fail(format!(
                    "hitl request {} is already resolved",
                    record.request_id
                ));
            }
            Some(HitlStatus::Pending) | None => {}
        }
    }

    encode(batch)
}

/// Encodes every value of `batch` into one buffer.
fn encode(batch: &CommitBatch) -> Result<Prepared, StoreError> {
    let count = 3 + batch.events.len() + batch.nodes.len() + batch.hitl.len();
    let mut buf = Vec::with_capacity(64 + 48 * count);
    let mut spans = Vec::with_capacity(count);
    let mut put = |write: &mut dyn FnMut(&mut Vec<u8>) -> Result<(), StoreError>| {
        let start = buf.len();
        write(&mut buf)?;
        spans.push(start..buf.len());
        Ok::<_, StoreError>(())
    };
    put(&mut |out| {
        encode_head(&batch.head, out);
        Ok(())
    })?;
    if let Some(envelope) = &batch.envelope {
        put(&mut |out| {
            encode_envelope(envelope, out);
            Ok(())
        })?;
    }
    for event in &batch.events {
        put(&mut |out| encode_event(event, out))?;
    }
    if let Some(plan) = &batch.plan {
        put(&mut |out| encode_value(plan, out))?;
    }
    for node in &batch.nodes {
        put(&mut |out| {
            encode_node(node, out);
            Ok(())
        })?;
    }
    for record in &batch.hitl {
        put(&mut |out| {
            encode_hitl(record, out);
            Ok(())
        })?;
    }
    Ok(Prepared {
        buf,
        spans,
        has_envelope: batch.envelope.is_some(),
        events: batch.events.len(),
        has_plan: batch.plan.is_some(),
        nodes: batch.nodes.len(),
    })
}
