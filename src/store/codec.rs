//! Stored value shapes: a format byte, then JSON of a private DTO.
//!
//! The DTOs are decoupled from the public records so that the public types can evolve (and
//! carry whatever serde shape the API wants) without silently changing the file format.
//! Timestamps are epoch milliseconds; enum tags are their explicit `u8` discriminants; ids
//! already present in the key are left out of the value.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::StoreError;
use super::tables::VALUE_FORMAT;
use super::types::{HitlRecord, HitlStatus, NodeRecord, NodeStatus, RunHead, RunStatus};
use crate::fsm::{EventBody, RunEvent};
use crate::ids::{RunId, Timestamp};

/// Writes the format byte then `value` as JSON.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(128);
    out.push(VALUE_FORMAT);
    serde_json::to_writer(&mut out, value)?;
    Ok(out)
}

/// Checks the format byte and parses the JSON after it; `what` names the table and key.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&VALUE_FORMAT, json)) => serde_json::from_slice(json)
            .map_err(|err| StoreError::corrupt(format!("{what}: undecodable value: {err}"))),
        Some((other, _)) => Err(StoreError::corrupt(format!(
            "{what}: value format {other} unknown"
        ))),
        None => Err(StoreError::corrupt(format!("{what}: empty value"))),
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredHead {
    status: u8,
    state: String,
    plan_version: u32,
    last_seq: u64,
    created_at: u64,
    updated_at: u64,
    objective: String,
}

pub(crate) fn encode_head(head: &RunHead) -> Result<Vec<u8>, StoreError> {
    encode(&StoredHead {
        status: head.status.tag(),
        state: head.state.clone(),
        plan_version: head.plan_version,
        last_seq: head.last_seq,
        created_at: head.created_at.millis(),
        updated_at: head.updated_at.millis(),
        objective: head.objective.clone(),
    })
}

pub(crate) fn decode_head(bytes: &[u8], run: RunId) -> Result<RunHead, StoreError> {
    let what = format!("runs[{run}]");
    let stored: StoredHead = decode(bytes, &what)?;
    let status = RunStatus::from_tag(stored.status).ok_or_else(|| {
        StoreError::corrupt(format!("{what}: run status tag {} unknown", stored.status))
    })?;
    Ok(RunHead {
        status,
        state: stored.state,
        plan_version: stored.plan_version,
        last_seq: stored.last_seq,
        created_at: Timestamp(stored.created_at),
        updated_at: Timestamp(stored.updated_at),
        objective: stored.objective,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StoredEventRef<'a> {
    timestamp: u64,
    plan_version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<&'a str>,
    #[serde(flatten)]
    body: &'a EventBody,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredEvent {
    timestamp: u64,
    plan_version: u32,
    #[serde(default)]
    node_id: Option<String>,
    #[serde(flatten)]
    body: EventBody,
}

pub(crate) fn encode_event(event: &RunEvent) -> Result<Vec<u8>, StoreError> {
    encode(&StoredEventRef {
        timestamp: event.timestamp.millis(),
        plan_version: event.plan_version,
        node_id: event.node_id.as_deref(),
        body: &event.body,
    })
}

pub(crate) fn decode_event(bytes: &[u8], run: RunId, seq: u64) -> Result<RunEvent, StoreError> {
    let stored: StoredEvent = decode(bytes, &format!("events[{run}/{seq}]"))?;
    Ok(RunEvent {
        seq,
        run_id: run,
        timestamp: Timestamp(stored.timestamp),
        plan_version: stored.plan_version,
        node_id: stored.node_id,
        body: stored.body,
    })
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredNode {
    status: u8,
    started_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    finished_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub(crate) fn encode_node(node: &NodeRecord) -> Result<Vec<u8>, StoreError> {
    encode(&StoredNode {
        status: node.status.tag(),
        started_at: node.started_at.millis(),
        finished_at: node.finished_at.map(Timestamp::millis),
        output: node.output.clone(),
        error: node.error.clone(),
    })
}

pub(crate) fn decode_node(
    bytes: &[u8],
    run: RunId,
    node_id: String,
    attempt: u32,
) -> Result<NodeRecord, StoreError> {
    let what = format!("nodes[{run}/{node_id}/{attempt}]");
    let stored: StoredNode = decode(bytes, &what)?;
    let status = NodeStatus::from_tag(stored.status).ok_or_else(|| {
        StoreError::corrupt(format!("{what}: node status tag {} unknown", stored.status))
    })?;
    Ok(NodeRecord {
        node_id,
        attempt,
        status,
        started_at: Timestamp(stored.started_at),
        finished_at: stored.finished_at.map(Timestamp),
        output: stored.output,
        error: stored.error,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StoredHitlRef<'a> {
    status: u8,
    request: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<&'a Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredHitl {
    status: u8,
    request: Value,
    #[serde(default)]
    response: Option<Value>,
}

pub(crate) fn encode_hitl(record: &HitlRecord) -> Result<Vec<u8>, StoreError> {
    encode(&StoredHitlRef {
        status: record.status.tag(),
        request: &record.request,
        response: record.response.as_ref(),
    })
}

pub(crate) fn decode_hitl(
    bytes: &[u8],
    run: RunId,
    request_id: String,
) -> Result<HitlRecord, StoreError> {
    let what = format!("hitl[{run}/{request_id}]");
    let stored: StoredHitl = decode(bytes, &what)?;
    let status = HitlStatus::from_tag(stored.status).ok_or_else(|| {
        StoreError::corrupt(format!("{what}: hitl status tag {} unknown", stored.status))
    })?;
    Ok(HitlRecord {
        request_id,
        status,
        request: stored.request,
        response: stored.response,
    })
}

/// The status tag of a node or HITL record; the other fields are skipped.
#[derive(Deserialize)]
struct StatusOnly {
    status: u8,
}

/// The status tag of a stored node record, without decoding the rest.
pub(crate) fn node_status(bytes: &[u8], what: &str) -> Result<NodeStatus, StoreError> {
    let only: StatusOnly = decode(bytes, what)?;
    NodeStatus::from_tag(only.status).ok_or_else(|| {
        StoreError::corrupt(format!("{what}: node status tag {} unknown", only.status))
    })
}

/// The status tag of a stored HITL record, without decoding the rest.
pub(crate) fn hitl_status(bytes: &[u8], what: &str) -> Result<HitlStatus, StoreError> {
    let only: StatusOnly = decode(bytes, what)?;
    HitlStatus::from_tag(only.status).ok_or_else(|| {
        StoreError::corrupt(format!("{what}: hitl status tag {} unknown", only.status))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::fsm::{PlanPhase, RunOutcome};

    fn node_complete(run: RunId) -> RunEvent {
        let output = json!({"copyVariants": ["Fresh bread daily", "Baked at dawn"]});
        RunEvent {
            seq: 7,
            run_id: run,
            timestamp: Timestamp(1_700_000_000_123),
            plan_version: 2,
            node_id: Some("write".to_owned()),
            body: EventBody::NodeComplete {
                attempt: 1,
                output: output.as_object().cloned().unwrap(),
                duration_ms: 42,
            },
        }
    }

    #[test]
    fn events_round_trip_without_storing_run_id_or_seq() {
        let run = RunId::new();
        let event = node_complete(run);
        let bytes = encode_event(&event).unwrap();
        assert_eq!(bytes[0], VALUE_FORMAT);
        let text = std::str::from_utf8(&bytes[1..]).unwrap();
        assert!(!text.contains(&run.to_string()), "{text}");
        assert!(!text.contains("\"seq\""), "{text}");
        assert!(
            bytes.len() < 200,
            "node_complete is {} bytes: {text}",
            bytes.len()
        );
        assert_eq!(decode_event(&bytes, run, 7).unwrap(), event);
    }

    #[test]
    fn events_without_node_round_trip() {
        let run = RunId::new();
        for body in [
            EventBody::PlanRequested {
                phase: PlanPhase::Initial,
                attempt: 1,
                trigger: None,
                error: None,
            },
            EventBody::Complete {
                status: RunOutcome::Completed,
                output: Some(json!({"a": 1})),
                error: None,
            },
        ] {
            let event = RunEvent {
                seq: 1,
                run_id: run,
                timestamp: Timestamp(5),
                plan_version: 0,
                node_id: None,
                body,
            };
            let bytes = encode_event(&event).unwrap();
            assert_eq!(decode_event(&bytes, run, 1).unwrap(), event);
        }
    }

    #[test]
    fn heads_nodes_and_hitl_round_trip_with_numeric_tags() {
        let run = RunId::new();
        let head = RunHead {
            status: RunStatus::Cancelled,
            state: "done".to_owned(),
            plan_version: 3,
            last_seq: 9,
            created_at: Timestamp(1),
            updated_at: Timestamp(2),
            objective: "ship it".to_owned(),
        };
        let bytes = encode_head(&head).unwrap();
        assert!(
            std::str::from_utf8(&bytes[1..])
                .unwrap()
                .contains("\"status\":4")
        );
        assert_eq!(decode_head(&bytes, run).unwrap(), head);

        let node = NodeRecord {
            node_id: "n".to_owned(),
            attempt: 2,
            status: NodeStatus::Failed,
            started_at: Timestamp(10),
            finished_at: Some(Timestamp(11)),
            output: None,
            error: Some("boom".to_owned()),
        };
        let bytes = encode_node(&node).unwrap();
        assert_eq!(node_status(&bytes, "n").unwrap(), NodeStatus::Failed);
        assert_eq!(decode_node(&bytes, run, "n".to_owned(), 2).unwrap(), node);

        let hitl = HitlRecord {
            request_id: "r".to_owned(),
            status: HitlStatus::Resolved,
            request: json!({"q": "ok?"}),
            response: Some(json!({"decision": "approve"})),
        };
        let bytes = encode_hitl(&hitl).unwrap();
        assert_eq!(hitl_status(&bytes, "r").unwrap(), HitlStatus::Resolved);
        assert_eq!(decode_hitl(&bytes, run, "r".to_owned()).unwrap(), hitl);
    }

    #[test]
    fn unknown_format_byte_and_tags_are_corrupt() {
        let run = RunId::new();
        let err = decode::<Value>(&[9, b'1'], "runs[x]").unwrap_err();
        assert!(matches!(&err, StoreError::Corrupt { what } if what.contains("format 9")));
        assert!(matches!(
            decode::<Value>(&[], "runs[x]"),
            Err(StoreError::Corrupt { .. })
        ));
        let mut bad = vec![VALUE_FORMAT];
        bad.extend_from_slice(br#"{"status":9,"state":"x","planVersion":0,"lastSeq":0,"createdAt":0,"updatedAt":0,"objective":""}"#);
        let err = decode_head(&bad, run).unwrap_err();
        assert!(matches!(&err, StoreError::Corrupt { what } if what.contains("tag 9")));
    }
}
