//! Stored value shapes (format 4): a format byte, then a binary layout per table.
//!
//! The layouts are decoupled from the public records so that the public types can evolve (and
//! carry whatever serde shape the API wants) without silently changing the file format.
//! Integers are LEB128 varints unless said otherwise, strings are a varint byte length and
//! UTF-8, timestamps are epoch milliseconds, enum tags are their explicit `u8` discriminants,
//! free-form JSON is packed JSON (see `pack.rs`), and nothing already in the key is repeated in
//! the value. Every decoder reads the whole value and reports anything unexpected as
//! [`StoreError::Corrupt`] naming the table and key.
//!
//! | table | layout after the format byte |
//! |---|---|
//! | `runs` | status `u8`, plan version `u32` LE, last seq `u64` LE, created at `u64` LE, updated at `u64` LE, state string |
//! | `envelopes` | objective string, packed envelope |
//! | `events` | kind tag `u8`, timestamp, plan version, node id (0 = none, else byte length + 1, then UTF-8), body |
//! | `nodes` | status `u8`, flags `u8` (1 finished at, 2 error, 4 output), started at, then the flagged fields in that order |
//! | `hitl` | status `u8`, flags `u8` (1 response), packed request, packed response |
//! | `plans`, `facets`, `capabilities` | packed JSON of the record's wire shape |
//!
//! Event bodies: `node_start` is attempt, capability id, then 0 when the idempotency key is the
//! usual `{runId}/{nodeId}` (rebuilt on decode) or 1 and the key; `node_complete` is attempt,
//! duration in microseconds, packed output object, then the attempt's spend (a flags byte: 1
//! cost, 2 token usage, 0 none; the cost as `f64` LE, the prompt and completion tokens as
//! varints); every other kind is its packed payload.
//!
//! Format 3 (written by store format 5) is format 4 without the spend of `node_complete`.
//! Format 2 (written by store formats 2 to 4) has the same layouts as format 3 except one: a
//! `node_complete` duration is in milliseconds, and is read as that many thousand
//! microseconds. All three formats are read; only format 4 is written. The format byte is the
//! value's own, so a file upgraded from store format 4, whose old events keep format 2 beside
//! new ones in format 3, needs no rewrite, and neither do commit-log entries written before the
//! upgrade.

use std::fmt::{self, Write as _};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::error::StoreError;
use super::pack::{
    Malformed, Reader, pack_object, pack_value, put_str, put_varint, unpack_object, unpack_value,
};
use super::pack_ser::{pack_field, pack_serialize};
use super::tables::{MICROS_VALUE_FORMAT, MILLIS_VALUE_FORMAT, VALUE_FORMAT};
use super::types::{HitlRecord, HitlStatus, NodeRecord, NodeStatus, RunHead, RunStatus};
use crate::fsm::{EventBody, EventKind, NodeSpend, RunEvent, RunState, TokenUsage};
use crate::graph::PlanSnapshot;
use crate::ids::{RunId, Timestamp};

/// Which stored value is being read, for error messages: `table[key]`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum At<'a> {
    Run(RunId),
    Envelope(RunId),
    Event(RunId, u64),
    Plan(RunId, u32),
    Node(RunId, &'a str, u32),
    Hitl(RunId, &'a str),
    /// A catalog table (`facets` or `capabilities`) and key.
    Catalog(&'static str, &'a str),
    /// A run's queue of firings.
    Queued(RunId),
    /// An idempotency record.
    Request(&'a str),
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Run(run) => write!(f, "runs[{run}]"),
            Self::Envelope(run) => write!(f, "envelopes[{run}]"),
            Self::Event(run, seq) => write!(f, "events[{run}/{seq}]"),
            Self::Plan(run, version) => write!(f, "plans[{run}/{version}]"),
            Self::Node(run, node, attempt) => write!(f, "nodes[{run}/{node}/{attempt}]"),
            Self::Hitl(run, request) => write!(f, "hitl[{run}/{request}]"),
            Self::Catalog(table, key) => write!(f, "{table}[{key}]"),
            Self::Queued(run) => write!(f, "queued[{run}]"),
            Self::Request(key) => write!(f, "requests[{key}]"),
        }
    }
}

/// What was wrong with a value, before the table and key are added.
#[derive(Debug)]
enum Bad {
    Malformed(Malformed),
    Tag(&'static str, u8),
    /// A stored name that names nothing this build knows.
    Name(&'static str, String),
    Payload(serde_json::Error),
}

impl From<Malformed> for Bad {
    fn from(message: Malformed) -> Self {
        Self::Malformed(message)
    }
}

impl Bad {
    fn at(self, at: At<'_>) -> StoreError {
        match self {
            Self::Malformed(message) => StoreError::corrupt(format!("{at}: {message}")),
            Self::Tag(what, tag) => StoreError::corrupt(format!("{at}: {what} tag {tag} unknown")),
            Self::Name(what, name) => StoreError::corrupt(format!("{at}: {what} `{name}` unknown")),
            Self::Payload(err) => StoreError::corrupt(format!("{at}: undecodable value: {err}")),
        }
    }
}

/// The value's format byte, and a reader positioned after it.
fn open_format<'a>(bytes: &'a [u8], at: At<'_>) -> Result<(u8, Reader<'a>), StoreError> {
    match bytes.split_first() {
        Some((&format @ (VALUE_FORMAT | MICROS_VALUE_FORMAT | MILLIS_VALUE_FORMAT), rest)) => {
            Ok((format, Reader::new(rest)))
        }
        Some((other, _)) => Err(StoreError::corrupt(format!(
            "{at}: value format {other} unknown"
        ))),
        None => Err(StoreError::corrupt(format!("{at}: empty value"))),
    }
}

/// A reader positioned after the format byte.
fn open<'a>(bytes: &'a [u8], at: At<'_>) -> Result<Reader<'a>, StoreError> {
    open_format(bytes, at).map(|(_, reader)| reader)
}

/// Reads a whole value with `parse`, which must consume every byte.
fn read<'a, T>(
    bytes: &'a [u8],
    at: At<'_>,
    parse: impl FnOnce(&mut Reader<'a>) -> Result<T, Bad>,
) -> Result<T, StoreError> {
    read_format(bytes, at, |_, reader| parse(reader))
}

/// Reads a whole value with `parse`, which is given the value's format byte and must consume
/// every byte.
fn read_format<'a, T>(
    bytes: &'a [u8],
    at: At<'_>,
    parse: impl FnOnce(u8, &mut Reader<'a>) -> Result<T, Bad>,
) -> Result<T, StoreError> {
    let (format, mut reader) = open_format(bytes, at)?;
    let value = parse(format, &mut reader).map_err(|bad| bad.at(at))?;
    reader
        .finish()
        .map_err(|message| Bad::from(message).at(at))?;
    Ok(value)
}

/// Writes the format byte then the packed JSON of `value`'s serde shape.
pub(crate) fn encode_value<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), StoreError> {
    out.push(VALUE_FORMAT);
    pack_serialize(out, value)?;
    Ok(())
}

/// Reads a value written by [`encode_value`].
pub(crate) fn decode_value<T: DeserializeOwned>(bytes: &[u8], at: At<'_>) -> Result<T, StoreError> {
    let value = read(bytes, at, |reader| Ok(unpack_value(reader)?))?;
    serde_json::from_value(value).map_err(|err| Bad::Payload(err).at(at))
}

/// Reads plan `version` of `run`, checking that the snapshot is the version its key says.
pub(crate) fn decode_plan(
    bytes: &[u8],
    run: RunId,
    version: u32,
) -> Result<PlanSnapshot, StoreError> {
    let at = At::Plan(run, version);
    let plan: PlanSnapshot = decode_value(bytes, at)?;
    if plan.version != version {
        return Err(StoreError::corrupt(format!(
            "{at}: snapshot says version {}",
            plan.version
        )));
    }
    Ok(plan)
}

/// The envelope's `objective` string ("" when it has none), stored ahead of the envelope so
/// that heads can be completed without decoding the whole envelope.
fn objective_of(envelope: &Value) -> &str {
    envelope
        .get("objective")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub(crate) fn encode_envelope(envelope: &Value, out: &mut Vec<u8>) {
    out.push(VALUE_FORMAT);
    put_str(out, objective_of(envelope));
    pack_value(out, envelope);
}

pub(crate) fn decode_envelope(bytes: &[u8], run: RunId) -> Result<Value, StoreError> {
    read(bytes, At::Envelope(run), |reader| {
        reader.str()?;
        Ok(unpack_value(reader)?)
    })
}

/// The objective of a stored envelope, without decoding the rest of it.
pub(crate) fn envelope_objective(bytes: &[u8], run: RunId) -> Result<String, StoreError> {
    let mut reader = open(bytes, At::Envelope(run))?;
    reader
        .str()
        .map(str::to_owned)
        .map_err(|message| Bad::from(message).at(At::Envelope(run)))
}

/// What the invariant checks need of a stored head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeadFacts {
    pub(crate) status: RunStatus,
    pub(crate) plan_version: u32,
    pub(crate) last_seq: u64,
}

/// The fixed part of a head: format, status, plan version, last seq, two timestamps.
const HEAD_FIXED: usize = 1 + 1 + 4 + 8 + 8 + 8;

pub(crate) fn encode_head(head: &RunHead, out: &mut Vec<u8>) {
    let state = head.state.as_str();
    out.reserve(HEAD_FIXED + 1 + state.len());
    out.push(VALUE_FORMAT);
    out.push(head.status.tag());
    out.extend_from_slice(&head.plan_version.to_le_bytes());
    out.extend_from_slice(&head.last_seq.to_le_bytes());
    out.extend_from_slice(&head.created_at.millis().to_le_bytes());
    out.extend_from_slice(&head.updated_at.millis().to_le_bytes());
    put_str(out, state);
}

fn read_head_facts(reader: &mut Reader<'_>) -> Result<HeadFacts, Bad> {
    let tag = reader.u8()?;
    let status = RunStatus::from_tag(tag).ok_or(Bad::Tag("run status", tag))?;
    Ok(HeadFacts {
        status,
        plan_version: u32::from_le_bytes(reader.array()?),
        last_seq: u64::from_le_bytes(reader.array()?),
    })
}

/// The status, plan version and last seq of a stored head.
pub(crate) fn head_facts(bytes: &[u8], run: RunId) -> Result<HeadFacts, StoreError> {
    let at = At::Run(run);
    let mut reader = open(bytes, at)?;
    read_head_facts(&mut reader).map_err(|bad| bad.at(at))
}

/// A stored head, with the objective taken from the run's envelope.
pub(crate) fn decode_head(
    bytes: &[u8],
    run: RunId,
    objective: String,
) -> Result<RunHead, StoreError> {
    read(bytes, At::Run(run), |reader| {
        let facts = read_head_facts(reader)?;
        let created_at = Timestamp(u64::from_le_bytes(reader.array()?));
        let updated_at = Timestamp(u64::from_le_bytes(reader.array()?));
        let name = reader.str()?;
        let state = RunState::parse(name).ok_or_else(|| Bad::Name("run state", name.to_owned()))?;
        Ok(RunHead {
            status: facts.status,
            state,
            plan_version: facts.plan_version,
            last_seq: facts.last_seq,
            created_at,
            updated_at,
            objective,
        })
    })
}

/// The persisted tag of each event kind; never renumbered.
fn kind_tag(kind: EventKind) -> u8 {
    match kind {
        EventKind::PlanRequested => 1,
        EventKind::PlanGenerated => 2,
        EventKind::PlanAccepted => 3,
        EventKind::PlanUpdated => 4,
        EventKind::PlanRejected => 5,
        EventKind::NodeStart => 6,
        EventKind::NodeComplete => 7,
        EventKind::NodeError => 8,
        EventKind::ValidationError => 9,
        EventKind::PolicyTriggered => 10,
        EventKind::HitlRequest => 11,
        EventKind::HitlResolved => 12,
        EventKind::RunPaused => 13,
        EventKind::RunResumed => 14,
        EventKind::Complete => 15,
    }
}

fn kind_from_tag(tag: u8) -> Option<EventKind> {
    EventKind::ALL
        .iter()
        .copied()
        .find(|kind| kind_tag(*kind) == tag)
}

/// A run id's text, formatted on the stack.
struct RunText {
    bytes: [u8; 36],
    len: usize,
}

impl fmt::Write for RunText {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let end = self.len + text.len();
        self.bytes
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(text.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Whether `key` is exactly `{run}/{node}`, the idempotency key the engine derives.
fn is_derived_key(run: RunId, node: &str, key: &str) -> bool {
    let Some(rest) = key
        .strip_suffix(node)
        .and_then(|rest| rest.strip_suffix('/'))
    else {
        return false;
    };
    let mut text = RunText {
        bytes: [0; 36],
        len: 0,
    };
    write!(text, "{run}").is_ok() && text.bytes.get(..text.len) == Some(rest.as_bytes())
}

const SPEND_COST: u8 = 1;
const SPEND_USAGE: u8 = 2;

/// A node attempt's spend: flags (1 cost, 2 usage; 0 = none), then the cost as `f64` LE and
/// the prompt and completion tokens as varints, each when flagged.
fn put_spend(out: &mut Vec<u8>, spend: Option<&NodeSpend>) {
    let Some(spend) = spend else {
        out.push(0);
        return;
    };
    let mut flags = SPEND_COST;
    if spend.usage.is_some() {
        flags |= SPEND_USAGE;
    }
    out.push(flags);
    out.extend_from_slice(&spend.cost.to_le_bytes());
    if let Some(usage) = spend.usage {
        put_varint(out, usage.prompt_tokens);
        put_varint(out, usage.completion_tokens);
    }
}

fn read_spend(reader: &mut Reader<'_>) -> Result<Option<NodeSpend>, Bad> {
    let flags = reader.u8()?;
    if flags == 0 {
        return Ok(None);
    }
    if flags & !(SPEND_COST | SPEND_USAGE) != 0 || flags & SPEND_COST == 0 {
        return Err(Bad::Tag("spend flags", flags));
    }
    let cost = f64::from_le_bytes(reader.array::<8>()?);
    let usage = if flags & SPEND_USAGE == 0 {
        None
    } else {
        Some(TokenUsage {
            prompt_tokens: reader.varint()?,
            completion_tokens: reader.varint()?,
        })
    };
    Ok(Some(NodeSpend { cost, usage }))
}

pub(crate) fn encode_event(event: &RunEvent, out: &mut Vec<u8>) -> Result<(), StoreError> {
    out.push(VALUE_FORMAT);
    out.push(kind_tag(event.body.kind()));
    put_varint(out, event.timestamp.millis());
    put_varint(out, u64::from(event.plan_version));
    match &event.node_id {
        Some(node) => {
            put_varint(out, node.len() as u64 + 1);
            out.extend_from_slice(node.as_bytes());
        }
        None => out.push(0),
    }
    match &event.body {
        EventBody::NodeStart {
            attempt,
            capability_id,
            idempotency_key,
        } => {
            put_varint(out, u64::from(*attempt));
            put_str(out, capability_id);
            let derived = event
                .node_id
                .as_deref()
                .is_some_and(|node| is_derived_key(event.run_id, node, idempotency_key));
            if derived {
                out.push(0);
            } else {
                out.push(1);
                put_str(out, idempotency_key);
            }
        }
        EventBody::NodeComplete {
            attempt,
            output,
            duration_us,
            spend,
        } => {
            put_varint(out, u64::from(*attempt));
            put_varint(out, *duration_us);
            pack_object(out, output);
            put_spend(out, spend.as_ref());
        }
        body @ (EventBody::PlanRequested { .. }
        | EventBody::PlanGenerated { .. }
        | EventBody::PlanAccepted { .. }
        | EventBody::PlanUpdated { .. }
        | EventBody::PlanRejected { .. }
        | EventBody::NodeError { .. }
        | EventBody::ValidationError { .. }
        | EventBody::PolicyTriggered { .. }
        | EventBody::HitlRequest { .. }
        | EventBody::HitlResolved { .. }
        | EventBody::RunPaused { .. }
        | EventBody::RunResumed { .. }
        | EventBody::Complete { .. }) => {
            pack_field(out, body, "payload")?;
        }
    }
    Ok(())
}

fn read_event_body(
    reader: &mut Reader<'_>,
    format: u8,
    kind: EventKind,
    run: RunId,
    node_id: Option<&str>,
) -> Result<EventBody, Bad> {
    match kind {
        EventKind::NodeStart => {
            let attempt = reader.varint_u32()?;
            let capability_id = reader.str()?.to_owned();
            let idempotency_key = match reader.u8()? {
                0 => {
                    let node = node_id
                        .ok_or(Bad::Malformed("derived idempotency key without a node id"))?;
                    format!("{run}/{node}")
                }
                1 => reader.str()?.to_owned(),
                other => return Err(Bad::Tag("idempotency key", other)),
            };
            Ok(EventBody::NodeStart {
                attempt,
                capability_id,
                idempotency_key,
            })
        }
        EventKind::NodeComplete => {
            let attempt = reader.varint_u32()?;
            let duration = reader.varint()?;
            let duration_us = if format == MILLIS_VALUE_FORMAT {
                duration.saturating_mul(1000)
            } else {
                duration
            };
            let output = unpack_object(reader)?;
            let spend = if format == VALUE_FORMAT {
                read_spend(reader)?
            } else {
                None
            };
            Ok(EventBody::NodeComplete {
                attempt,
                duration_us,
                output,
                spend,
            })
        }
        EventKind::PlanRequested
        | EventKind::PlanGenerated
        | EventKind::PlanAccepted
        | EventKind::PlanUpdated
        | EventKind::PlanRejected
        | EventKind::NodeError
        | EventKind::ValidationError
        | EventKind::PolicyTriggered
        | EventKind::HitlRequest
        | EventKind::HitlResolved
        | EventKind::RunPaused
        | EventKind::RunResumed
        | EventKind::Complete => {
            let payload = unpack_value(reader)?;
            let mut body = Map::new();
            body.insert("type".to_owned(), Value::String(kind.as_str().to_owned()));
            body.insert("payload".to_owned(), payload);
            serde_json::from_value(Value::Object(body)).map_err(Bad::Payload)
        }
    }
}

pub(crate) fn decode_event(bytes: &[u8], run: RunId, seq: u64) -> Result<RunEvent, StoreError> {
    read_format(bytes, At::Event(run, seq), |format, reader| {
        let tag = reader.u8()?;
        let kind = kind_from_tag(tag).ok_or(Bad::Tag("event kind", tag))?;
        let timestamp = Timestamp(reader.varint()?);
        let plan_version = reader.varint_u32()?;
        let node_id = match reader.varint()? {
            0 => None,
            len => {
                let len = usize::try_from(len - 1).map_err(|_| "node id length overflows")?;
                let node =
                    std::str::from_utf8(reader.take(len)?).map_err(|_| "node id is not UTF-8")?;
                Some(node.to_owned())
            }
        };
        let body = read_event_body(reader, format, kind, run, node_id.as_deref())?;
        Ok(RunEvent {
            seq,
            run_id: run,
            timestamp,
            plan_version,
            node_id,
            body,
        })
    })
}

const NODE_FINISHED: u8 = 1;
const NODE_ERROR: u8 = 2;
const NODE_OUTPUT: u8 = 4;

pub(crate) fn encode_node(node: &NodeRecord, out: &mut Vec<u8>) {
    let mut flags = 0;
    if node.finished_at.is_some() {
        flags |= NODE_FINISHED;
    }
    if node.error.is_some() {
        flags |= NODE_ERROR;
    }
    if node.output.is_some() {
        flags |= NODE_OUTPUT;
    }
    out.push(VALUE_FORMAT);
    out.push(node.status.tag());
    out.push(flags);
    put_varint(out, node.started_at.millis());
    if let Some(finished) = node.finished_at {
        put_varint(out, finished.millis());
    }
    if let Some(error) = &node.error {
        put_str(out, error);
    }
    if let Some(output) = &node.output {
        pack_value(out, output);
    }
}

fn read_status<T>(
    reader: &mut Reader<'_>,
    what: &'static str,
    from_tag: fn(u8) -> Option<T>,
) -> Result<T, Bad> {
    let tag = reader.u8()?;
    from_tag(tag).ok_or(Bad::Tag(what, tag))
}

pub(crate) fn decode_node(
    bytes: &[u8],
    run: RunId,
    node_id: String,
    attempt: u32,
) -> Result<NodeRecord, StoreError> {
    read(bytes, At::Node(run, &node_id, attempt), |reader| {
        let status = read_status(reader, "node status", NodeStatus::from_tag)?;
        let flags = reader.u8()?;
        if flags & !(NODE_FINISHED | NODE_ERROR | NODE_OUTPUT) != 0 {
            return Err(Bad::Tag("node flags", flags));
        }
        let started_at = Timestamp(reader.varint()?);
        let finished_at = if flags & NODE_FINISHED != 0 {
            Some(Timestamp(reader.varint()?))
        } else {
            None
        };
        let error = if flags & NODE_ERROR != 0 {
            Some(reader.str()?.to_owned())
        } else {
            None
        };
        let output = if flags & NODE_OUTPUT != 0 {
            Some(unpack_value(reader)?)
        } else {
            None
        };
        Ok((status, started_at, finished_at, error, output))
    })
    .map(
        |(status, started_at, finished_at, error, output)| NodeRecord {
            node_id,
            attempt,
            status,
            started_at,
            finished_at,
            output,
            error,
        },
    )
}

/// The status of a stored node record, without decoding the rest.
pub(crate) fn stored_node_status(bytes: &[u8], at: At<'_>) -> Result<NodeStatus, StoreError> {
    let mut reader = open(bytes, at)?;
    read_status(&mut reader, "node status", NodeStatus::from_tag).map_err(|bad| bad.at(at))
}

const HITL_RESPONSE: u8 = 1;

pub(crate) fn encode_hitl(record: &HitlRecord, out: &mut Vec<u8>) {
    out.push(VALUE_FORMAT);
    out.push(record.status.tag());
    out.push(if record.response.is_some() {
        HITL_RESPONSE
    } else {
        0
    });
    pack_value(out, &record.request);
    if let Some(response) = &record.response {
        pack_value(out, response);
    }
}

pub(crate) fn decode_hitl(
    bytes: &[u8],
    run: RunId,
    request_id: String,
) -> Result<HitlRecord, StoreError> {
    read(bytes, At::Hitl(run, &request_id), |reader| {
        let status = read_status(reader, "hitl status", HitlStatus::from_tag)?;
        let flags = reader.u8()?;
        if flags & !HITL_RESPONSE != 0 {
            return Err(Bad::Tag("hitl flags", flags));
        }
        let request = unpack_value(reader)?;
        let response = if flags & HITL_RESPONSE != 0 {
            Some(unpack_value(reader)?)
        } else {
            None
        };
        Ok((status, request, response))
    })
    .map(|(status, request, response)| HitlRecord {
        request_id,
        status,
        request,
        response,
    })
}

/// The status of a stored HITL record, without decoding the rest.
pub(crate) fn stored_hitl_status(bytes: &[u8], at: At<'_>) -> Result<HitlStatus, StoreError> {
    let mut reader = open(bytes, at)?;
    read_status(&mut reader, "hitl status", HitlStatus::from_tag).map_err(|bad| bad.at(at))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::diagnostics::{Diagnostic, DiagnosticCode, Severity};
    use crate::fsm::{
        FollowUp, HitlDecision, HitlKind, PlanPhase, RunError, RunOutcome, Trigger, TriggerSource,
    };
    use crate::store::testkit::plan;

    fn event(run: RunId, node_id: Option<&str>, body: EventBody) -> RunEvent {
        RunEvent {
            seq: 7,
            run_id: run,
            timestamp: Timestamp(1_700_000_000_123),
            plan_version: 2,
            node_id: node_id.map(str::to_owned),
            body,
        }
    }

    #[test]
    fn a_node_attempts_spend_round_trips() {
        let run = RunId::new();
        for spend in [
            None,
            Some(NodeSpend {
                cost: 2.5,
                usage: None,
            }),
            Some(NodeSpend {
                cost: 0.125,
                usage: Some(TokenUsage {
                    prompt_tokens: 300,
                    completion_tokens: 70_000,
                }),
            }),
        ] {
            let event = RunEvent {
                seq: 3,
                run_id: run,
                timestamp: Timestamp(1),
                plan_version: 1,
                node_id: Some("n".into()),
                body: EventBody::NodeComplete {
                    attempt: 1,
                    output: Map::new(),
                    duration_us: 9,
                    spend,
                },
            };
            let bytes = encoded(&event);
            let mut bad = bytes.clone();
            *bad.last_mut().unwrap() = 0xff;
            if spend.is_none() {
                assert!(
                    decode_event(&bad, run, 3).is_err(),
                    "unknown flags are refused"
                );
            }
        }
    }

    fn encoded(event: &RunEvent) -> Vec<u8> {
        let mut out = Vec::new();
        encode_event(event, &mut out).unwrap();
        assert_eq!(decode_event(&out, event.run_id, event.seq).unwrap(), *event);
        out
    }

    fn node_start(run: RunId, key: String) -> RunEvent {
        event(
            run,
            Some("s00042"),
            EventBody::NodeStart {
                attempt: 1,
                capability_id: "bench.noop".to_owned(),
                idempotency_key: key,
            },
        )
    }

    #[test]
    fn a_derived_idempotency_key_is_not_stored_and_any_other_key_is() {
        let run = RunId::new();
        let derived = encoded(&node_start(run, format!("{run}/s00042")));
        assert!(derived.len() <= 32, "node_start is {} bytes", derived.len());
        assert!(!derived.windows(6).any(|w| w == b"s00042/"));

        let upper = format!("{run}/s00042").to_uppercase();
        for key in [
            format!("{run}/s00043"),
            format!("{run}s00042"),
            format!("x{run}/s00042"),
            upper,
            String::new(),
        ] {
            let bytes = encoded(&node_start(run, key.clone()));
            assert!(bytes.len() > derived.len() + key.len(), "{key}");
        }
        let mut no_node = node_start(run, format!("{run}/s00042"));
        no_node.node_id = None;
        encoded(&no_node);
    }

    #[test]
    fn node_complete_is_small_and_keeps_its_output() {
        let run = RunId::new();
        let output = json!({"step": "s00042", "ok": true});
        let bytes = encoded(&event(
            run,
            Some("s00042"),
            EventBody::NodeComplete {
                attempt: 1,
                output: output.as_object().cloned().unwrap(),
                duration_us: 0,
                spend: None,
            },
        ));
        assert!(bytes.len() <= 48, "node_complete is {} bytes", bytes.len());
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(&run.to_string()), "{text}");
    }

    #[test]
    fn node_durations_of_format_2_read_as_milliseconds() {
        let run = RunId::new();
        let complete = |duration_us| {
            event(
                run,
                Some("write"),
                EventBody::NodeComplete {
                    attempt: 2,
                    output: json!({"ok": true}).as_object().cloned().unwrap(),
                    duration_us,
                    spend: None,
                },
            )
        };
        // Formats 2 and 3 have no spend byte after the output.
        let older = |event: &RunEvent| {
            let mut bytes = encoded(event);
            assert_eq!(bytes.pop(), Some(0), "no spend");
            bytes
        };
        let mut bytes = older(&complete(1_234_567));
        assert_eq!(bytes[0], VALUE_FORMAT);
        bytes[0] = MICROS_VALUE_FORMAT;
        assert_eq!(decode_event(&bytes, run, 7).unwrap(), complete(1_234_567));
        bytes[0] = MILLIS_VALUE_FORMAT;
        assert_eq!(
            decode_event(&bytes, run, 7).unwrap(),
            complete(1_234_567_000)
        );
        let mut huge = older(&complete(u64::MAX / 10));
        huge[0] = MILLIS_VALUE_FORMAT;
        assert_eq!(decode_event(&huge, run, 7).unwrap(), complete(u64::MAX));

        let mut start = encoded(&node_start(run, format!("{run}/s00042")));
        start[0] = MILLIS_VALUE_FORMAT;
        assert_eq!(
            decode_event(&start, run, 7).unwrap(),
            node_start(run, format!("{run}/s00042")),
            "other kinds read the same in both formats"
        );
    }

    #[test]
    fn every_other_event_kind_round_trips() {
        let run = RunId::new();
        let trigger = Trigger {
            source: TriggerSource::Policy,
            policy_id: Some("qa".to_owned()),
            node_id: Some("write".to_owned()),
            reason: "check".to_owned(),
        };
        let diagnostic = Diagnostic {
            code: DiagnosticCode::CapabilityNotRegistered,
            severity: Severity::Error,
            message: "no such capability".to_owned(),
            node_id: Some("write".to_owned()),
            capability_id: Some("writer.xx".to_owned()),
            facet: None,
            hint: None,
            pointer: Some("/nodes/0/capabilityId".to_owned()),
            expected: None,
            found: None,
            suggestions: vec!["writer.en".to_owned()],
        };
        let bodies = vec![
            EventBody::PlanRequested {
                phase: PlanPhase::Replan,
                attempt: 2,
                trigger: Some(trigger.clone()),
                error: Some("timeout".to_owned()),
            },
            EventBody::PlanAccepted {
                version: 1,
                nodes: 3,
                edges: 2,
                warnings: vec![diagnostic.clone()],
            },
            EventBody::PlanRejected {
                phase: PlanPhase::Initial,
                attempt: 1,
                diagnostics: vec![diagnostic],
            },
            EventBody::NodeError {
                attempt: 2,
                error: RunError::new("TIMEOUT", "too slow"),
                will_retry: false,
                spend: None,
                retry_at: None,
            },
            EventBody::ValidationError {
                attempt: 1,
                errors: vec!["missing copyVariants".to_owned()],
                will_retry: true,
                spend: None,
                retry_at: Some(1_700_000_000_250),
            },
            EventBody::PolicyTriggered {
                policy_id: "qa".to_owned(),
                action: "replan".to_owned(),
                trigger,
            },
            EventBody::HitlRequest {
                request_id: "r1".to_owned(),
                kind: HitlKind::Clarify,
                question: "which?".to_owned(),
                policy_id: None,
                options: vec!["a".to_owned(), "b".to_owned()],
                contract_summary: Some(json!({"facets": ["x"]})),
                on_approve: FollowUp::Continue,
                on_reject: FollowUp::Fail,
            },
            EventBody::HitlResolved {
                request_id: "r1".to_owned(),
                decision: HitlDecision::Option,
                text: Some("a".to_owned()),
                responder: None,
                next: FollowUp::Replan,
            },
            EventBody::RunPaused {
                reason: "ops".to_owned(),
            },
            EventBody::RunResumed {
                reason: "ops".to_owned(),
                budgets: Default::default(),
            },
            EventBody::Complete {
                status: RunOutcome::Failed,
                output: None,
                error: Some(RunError::new("X", "y")),
            },
        ];
        for body in bodies {
            encoded(&event(run, None, body));
        }
        encoded(&event(
            run,
            Some("n\u{e9}"),
            EventBody::RunPaused {
                reason: String::new(),
            },
        ));
    }

    #[test]
    fn every_event_kind_has_a_distinct_tag() {
        let mut tags: Vec<u8> = EventKind::ALL.iter().map(|kind| kind_tag(*kind)).collect();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), EventKind::ALL.len());
        for kind in EventKind::ALL {
            assert_eq!(kind_from_tag(kind_tag(*kind)), Some(*kind));
        }
        assert_eq!(kind_from_tag(0), None);
    }

    #[test]
    fn heads_are_fixed_binary_records_without_the_objective() {
        let run = RunId::new();
        let head = RunHead {
            status: RunStatus::Cancelled,
            state: RunState::Executing,
            plan_version: 3,
            last_seq: 9,
            created_at: Timestamp(1),
            updated_at: Timestamp(2),
            objective: "ship it".to_owned(),
        };
        let mut bytes = Vec::new();
        encode_head(&head, &mut bytes);
        assert_eq!(bytes.len(), HEAD_FIXED + 1 + "executing".len());
        assert_eq!(
            head_facts(&bytes, run).unwrap(),
            HeadFacts {
                status: RunStatus::Cancelled,
                plan_version: 3,
                last_seq: 9
            }
        );
        assert_eq!(
            decode_head(&bytes, run, "ship it".to_owned()).unwrap(),
            head
        );

        let envelope = json!({"objective": "ship it", "inputs": {"a": 1}});
        let mut bytes = Vec::new();
        encode_envelope(&envelope, &mut bytes);
        assert_eq!(envelope_objective(&bytes, run).unwrap(), "ship it");
        assert_eq!(decode_envelope(&bytes, run).unwrap(), envelope);
        let mut bytes = Vec::new();
        encode_envelope(&json!([1]), &mut bytes);
        assert_eq!(envelope_objective(&bytes, run).unwrap(), "");
    }

    #[test]
    fn nodes_hitl_and_plans_round_trip() {
        let run = RunId::new();
        for node in [
            NodeRecord {
                node_id: "n".to_owned(),
                attempt: 2,
                status: NodeStatus::Failed,
                started_at: Timestamp(10),
                finished_at: Some(Timestamp(11)),
                output: None,
                error: Some("boom".to_owned()),
            },
            NodeRecord {
                node_id: "n".to_owned(),
                attempt: 1,
                status: NodeStatus::Completed,
                started_at: Timestamp(1_700_000_000_000),
                finished_at: Some(Timestamp(1_700_000_000_001)),
                output: Some(json!({"a": [1, 2]})),
                error: None,
            },
        ] {
            let mut bytes = Vec::new();
            encode_node(&node, &mut bytes);
            let at = At::Node(run, "n", node.attempt);
            assert_eq!(stored_node_status(&bytes, at).unwrap(), node.status);
            let decoded = decode_node(&bytes, run, "n".to_owned(), node.attempt).unwrap();
            assert_eq!(decoded, node);
        }
        let running = NodeRecord {
            node_id: "s00001".to_owned(),
            attempt: 1,
            status: NodeStatus::Running,
            started_at: Timestamp(1_700_000_000_000),
            finished_at: None,
            output: None,
            error: None,
        };
        let mut bytes = Vec::new();
        encode_node(&running, &mut bytes);
        assert!(bytes.len() <= 10, "running node is {} bytes", bytes.len());

        let hitl = HitlRecord {
            request_id: "r".to_owned(),
            status: HitlStatus::Resolved,
            request: json!({"q": "ok?"}),
            response: Some(json!({"decision": "approve"})),
        };
        let mut bytes = Vec::new();
        encode_hitl(&hitl, &mut bytes);
        let at = At::Hitl(run, "r");
        assert_eq!(
            stored_hitl_status(&bytes, at).unwrap(),
            HitlStatus::Resolved
        );
        assert_eq!(decode_hitl(&bytes, run, "r".to_owned()).unwrap(), hitl);

        let mut bytes = Vec::new();
        encode_value(&plan(2), &mut bytes).unwrap();
        assert_eq!(decode_plan(&bytes, run, 2).unwrap(), plan(2));
        let err = decode_plan(&bytes, run, 3).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { what } if what == &format!("plans[{run}/3]: snapshot says version 2")),
            "{err:?}"
        );
    }

    #[test]
    fn heads_store_the_state_name_and_refuse_unknown_names() {
        let run = RunId::new();
        for state in RunState::ALL {
            let head = RunHead {
                status: RunStatus::Active,
                state: *state,
                plan_version: 1,
                last_seq: 2,
                created_at: Timestamp(3),
                updated_at: Timestamp(4),
                objective: String::new(),
            };
            let mut bytes = Vec::new();
            encode_head(&head, &mut bytes);
            assert!(bytes.ends_with(state.as_str().as_bytes()), "{state}");
            assert_eq!(decode_head(&bytes, run, String::new()).unwrap(), head);
            if *state == RunState::Paused {
                let at = bytes.len() - "paused".len();
                bytes[at..].copy_from_slice(b"frozen");
                match decode_head(&bytes, run, String::new()).unwrap_err() {
                    StoreError::Corrupt { what } => {
                        assert_eq!(what, format!("runs[{run}]: run state `frozen` unknown"));
                    }
                    other => panic!("expected corrupt, got {other:?}"),
                }
            }
        }
    }

    #[test]
    fn corrupt_values_name_their_table_and_key() {
        let run = RunId::new();
        let corrupt = |err: StoreError| match err {
            StoreError::Corrupt { what } => what,
            other => panic!("expected corrupt, got {other:?}"),
        };
        let what = corrupt(decode_value::<Value>(&[9, 0], At::Catalog("facets", "f")).unwrap_err());
        assert_eq!(what, "facets[f]: value format 9 unknown");
        let what =
            corrupt(decode_value::<Value>(&[], At::Catalog("capabilities", "c")).unwrap_err());
        assert_eq!(what, "capabilities[c]: empty value");

        let mut head = Vec::new();
        encode_head(
            &RunHead {
                status: RunStatus::Active,
                state: RunState::Paused,
                plan_version: 0,
                last_seq: 0,
                created_at: Timestamp(0),
                updated_at: Timestamp(0),
                objective: String::new(),
            },
            &mut head,
        );
        head[1] = 9;
        let what = corrupt(head_facts(&head, run).unwrap_err());
        assert_eq!(what, format!("runs[{run}]: run status tag 9 unknown"));
        head[1] = 1;
        head.push(0);
        let what = corrupt(decode_head(&head, run, String::new()).unwrap_err());
        assert_eq!(what, format!("runs[{run}]: trailing bytes after the value"));
        let what = corrupt(decode_head(&head[..10], run, String::new()).unwrap_err());
        assert_eq!(what, format!("runs[{run}]: value truncated"));

        let what = corrupt(decode_event(&[VALUE_FORMAT, 99], run, 4).unwrap_err());
        assert_eq!(what, format!("events[{run}/4]: event kind tag 99 unknown"));
        let mut start = Vec::new();
        encode_event(&node_start(run, format!("{run}/s00042")), &mut start).unwrap();
        let flag = start.len() - 1;
        start[flag] = 7;
        let what = corrupt(decode_event(&start, run, 4).unwrap_err());
        assert_eq!(
            what,
            format!("events[{run}/4]: idempotency key tag 7 unknown")
        );
        let mut paused = Vec::new();
        encode_event(
            &event(run, None, EventBody::RunPaused { reason: "r".into() }),
            &mut paused,
        )
        .unwrap();
        paused[1] = kind_tag(EventKind::Complete);
        let what = corrupt(decode_event(&paused, run, 5).unwrap_err());
        assert!(
            what.starts_with(&format!("events[{run}/5]: undecodable value")),
            "{what}"
        );

        let what =
            corrupt(stored_node_status(&[VALUE_FORMAT, 0], At::Node(run, "n", 1)).unwrap_err());
        assert_eq!(what, format!("nodes[{run}/n/1]: node status tag 0 unknown"));
        let what = corrupt(decode_hitl(&[VALUE_FORMAT, 1, 8, 0], run, "r".to_owned()).unwrap_err());
        assert_eq!(what, format!("hitl[{run}/r]: hitl flags tag 8 unknown"));
    }
}
