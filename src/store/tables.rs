//! Every redb table of the store, with its key and value encoding.
//!
//! Keys are raw bytes so their order never depends on redb's tuple encoding: a run id is its 16
//! UUID bytes (UUIDv7, so runs sort by creation time), integers are fixed-width big-endian, and
//! composite keys concatenate their parts. Values (except in `meta`) are one format-version
//! byte ([`VALUE_FORMAT`]) followed by the binary layout of their table, described in
//! `codec.rs`.
//!
//! Version history: 1 stored JSON values and the objective in every head; 2 stores compact
//! binary values (fixed binary heads without the objective, events without derivable fields,
//! packed JSON for free-form values); 3 adds the `queued` and `requests` tables; 4 adds the
//! `log_state` table of the commit log (the store id and the checkpointed log seq, see
//! `redb_store/log.rs`); 5 stores `node_complete` durations in microseconds instead of
//! milliseconds (values written from version 5 on carry value format 3, older ones keep format
//! 2 and are read as before, their durations × 1000; nothing is rewritten); 6 adds the
//! attempt's spend after a `node_complete` event's output (value format 4; format-3 values are
//! read as having spent nothing). A version-1 file is
//! refused with `UpgradeRequired`; a version-2 to -5 file is upgraded in place on open (the
//! missing tables are created empty, a store id is made if there is none, and the version is
//! recorded), after which builds that only know the older version refuse it with
//! `UpgradeRequired` instead of misreading its values.
//!
//! Changing a key layout, a value shape incompatibly or the set of tables requires bumping
//! [`SCHEMA_VERSION`] and freezing a new fixture under `tests/fixtures/`.

use redb::TableDefinition;
#[cfg(test)]
use redb::TableHandle;

use crate::ids::RunId;

/// The on-disk format version this build reads and writes.
pub(crate) const SCHEMA_VERSION: u32 = 6;

/// The oldest format version this build upgrades in place.
pub(crate) const UPGRADABLE_FROM: u32 = 2;

/// The leading byte of every stored value this build writes.
pub(crate) const VALUE_FORMAT: u8 = 4;

/// The leading byte of values written by store format 5: read like [`VALUE_FORMAT`], except
/// that a `node_complete` event has no spend after its output (see `codec.rs`).
pub(crate) const MICROS_VALUE_FORMAT: u8 = 3;

/// The leading byte of values written by store formats 2 to 4: read like [`VALUE_FORMAT`],
/// except that a `node_complete` event's duration is in milliseconds (see `codec.rs`).
pub(crate) const MILLIS_VALUE_FORMAT: u8 = 2;

/// The `meta` key holding [`SCHEMA_VERSION`].
pub(crate) const SCHEMA_VERSION_KEY: &str = "schema_version";

/// `meta`: setting name (UTF-8) → `u32` (redb's fixed-width encoding).
/// Holds `schema_version`.
pub(crate) const META: TableDefinition<&str, u32> = TableDefinition::new("meta");

/// `runs`: run id `[u8; 16]` → head: status tag, plan version, last seq, created and updated
/// timestamps (fixed width), state name. The objective is read from the envelope. Rewritten on
/// every commit.
pub(crate) const RUNS: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("runs");

/// `envelopes`: run id `[u8; 16]` → the envelope's objective, then the run envelope as
/// submitted (packed JSON). Written once.
pub(crate) const ENVELOPES: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("envelopes");

/// `plans`: run id ‖ version `u32` BE (`[u8; 20]`) → `PlanSnapshot` (packed JSON). Append-only:
/// a key is never overwritten, and versions are gap-free from 1.
pub(crate) const PLANS: TableDefinition<[u8; 20], &[u8]> = TableDefinition::new("plans");

/// `events`: run id ‖ seq `u64` BE (`[u8; 24]`) → the event without its run id and seq (both
/// are in the key): kind tag, timestamp, plan version, node id, body. Append-only, gap-free
/// from seq 1.
pub(crate) const EVENTS: TableDefinition<[u8; 24], &[u8]> = TableDefinition::new("events");

/// `nodes`: run id ‖ node id length `u16` BE ‖ node id (UTF-8) ‖ attempt `u32` BE → status
/// tag, timestamps, error, output (when given). Final once terminal.
pub(crate) const NODES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("nodes");

/// `hitl`: run id ‖ request id (UTF-8, to the end of the key) → status tag, request, response.
/// Final once resolved.
pub(crate) const HITL: TableDefinition<&[u8], &[u8]> = TableDefinition::new("hitl");

/// `facets`: facet name (UTF-8) → `Facet` (its wire shape, packed JSON). Last write wins.
pub(crate) const FACETS: TableDefinition<&str, &[u8]> = TableDefinition::new("facets");

/// `capabilities`: capability id (UTF-8) → `Capability` (its wire shape, packed JSON). Last
/// write wins, so one version per capability id is registered at a time.
pub(crate) const CAPABILITIES: TableDefinition<&str, &[u8]> = TableDefinition::new("capabilities");

/// `queued`: run id `[u8; 16]` → the run's acknowledged, not yet applied policy firings
/// (packed JSON list of `QueuedFiring`). Present only while the queue is not empty; rewritten
/// by the transitions that change it.
pub(crate) const QUEUED: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("queued");

/// `requests`: idempotency key (UTF-8) → `RequestRecord` (packed JSON). Overwritten only once
/// the key has expired; deleted by expiry.
pub(crate) const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("requests");

/// `log_state`: name (UTF-8) → bytes. `store_id`: 16 random bytes made once, when the store
/// is created or upgraded to version 4; the commit log's header carries the same id.
/// `checkpoint_seq`: `u64` BE, the last commit-log seq whose writes this file holds durably
/// (absent: 0). Written by every checkpoint, in the same durable transaction.
pub(crate) const LOG_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("log_state");

/// The `log_state` key of the store id.
pub(crate) const STORE_ID_KEY: &str = "store_id";

/// The `log_state` key of the checkpointed log seq.
pub(crate) const CHECKPOINT_SEQ_KEY: &str = "checkpoint_seq";

/// Names of every table, for the "is this a flexrun store" check on open.
pub(crate) const ALL_TABLES: [&str; 12] = [
    "meta",
    "runs",
    "envelopes",
    "plans",
    "events",
    "nodes",
    "hitl",
    "facets",
    "capabilities",
    "queued",
    "requests",
    "log_state",
];

/// A table whose rows belong to runs: every key starts with the run id's 16 bytes, so all the
/// rows of one run are one key range. The variant names the key's shape after the run id.
#[derive(Clone, Copy)]
pub(crate) enum PerRunTable {
    /// Keyed by the run id alone (`[u8; 16]`).
    Id(TableDefinition<'static, [u8; 16], &'static [u8]>),
    /// Keyed by run id ‖ `u32` BE (`[u8; 20]`).
    IdU32(TableDefinition<'static, [u8; 20], &'static [u8]>),
    /// Keyed by run id ‖ `u64` BE (`[u8; 24]`).
    IdU64(TableDefinition<'static, [u8; 24], &'static [u8]>),
    /// Keyed by run id ‖ any bytes (`&[u8]`).
    IdBytes(TableDefinition<'static, &'static [u8], &'static [u8]>),
}

#[cfg(test)]
impl PerRunTable {
    /// The table's name.
    pub(crate) fn name(&self) -> &str {
        match self {
            Self::Id(table) => table.name(),
            Self::IdU32(table) => table.name(),
            Self::IdU64(table) => table.name(),
            Self::IdBytes(table) => table.name(),
        }
    }
}

/// Every table holding rows of a run. Deleting a run (`RedbStore`'s one `delete_run_rows`)
/// removes its key range from exactly these tables, so **a new table keyed by run goes here**
/// (and its name into [`ALL_TABLES`]); a table of another kind goes into [`GLOBAL_TABLES`]. A
/// test checks that every table is in one of the two lists.
pub(crate) const PER_RUN_TABLES: [PerRunTable; 7] = [
    PerRunTable::Id(RUNS),
    PerRunTable::Id(QUEUED),
    PerRunTable::Id(ENVELOPES),
    PerRunTable::IdU32(PLANS),
    PerRunTable::IdU64(EVENTS),
    PerRunTable::IdBytes(NODES),
    PerRunTable::IdBytes(HITL),
];

/// The tables not keyed by run, which deleting runs never touches (checked by tests only: the
/// code that deletes needs [`PER_RUN_TABLES`] alone).
#[cfg(test)]
/// `requests` is keyed by idempotency key: the records of a deleted run stay until they
/// expire, and a lookup ignores a record whose run is gone.
/// `log_state` belongs to the store as a whole.
pub(crate) const GLOBAL_TABLES: [&str; 5] =
    ["meta", "facets", "capabilities", "requests", "log_state"];

/// The first and last possible `N`-byte keys of `run` in a table keyed by run id ‖ fixed-width
/// parts: the run id followed by all zero bytes, and by all `0xff` bytes.
pub(crate) fn run_span<const N: usize>(run: RunId) -> ([u8; N], [u8; N]) {
    let mut first = [0u8; N];
    let mut last = [0xffu8; N];
    first[..16].copy_from_slice(run.as_bytes());
    last[..16].copy_from_slice(run.as_bytes());
    (first, last)
}

/// The smallest 16 bytes greater than every key that starts with `run`'s id (the id plus one,
/// big-endian), or `None` for the all-`0xff` id, whose keys run to the end of the table.
pub(crate) fn run_prefix_end(run: RunId) -> Option<[u8; 16]> {
    let next = u128::from_be_bytes(*run.as_bytes()).checked_add(1)?;
    Some(next.to_be_bytes())
}

/// The `runs` / `envelopes` key.
pub(crate) fn run_key(run: RunId) -> [u8; 16] {
    *run.as_bytes()
}

/// The `plans` key of (run, version).
pub(crate) fn plan_key(run: RunId, version: u32) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..16].copy_from_slice(run.as_bytes());
    key[16..].copy_from_slice(&version.to_be_bytes());
    key
}

/// The version part of a `plans` key.
pub(crate) fn plan_key_version(key: &[u8; 20]) -> u32 {
    let mut version = [0u8; 4];
    version.copy_from_slice(&key[16..]);
    u32::from_be_bytes(version)
}

/// The `events` key of (run, seq).
pub(crate) fn event_key(run: RunId, seq: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(run.as_bytes());
    key[16..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The seq part of an `events` key.
pub(crate) fn event_key_seq(key: &[u8; 24]) -> u64 {
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&key[16..]);
    u64::from_be_bytes(seq)
}

/// The `nodes` key of (run, node, attempt); `None` when the node id exceeds 65535 bytes.
pub(crate) fn node_key(run: RunId, node_id: &str, attempt: u32) -> Option<Vec<u8>> {
    let len = u16::try_from(node_id.len()).ok()?;
    let mut key = Vec::with_capacity(16 + 2 + node_id.len() + 4);
    key.extend_from_slice(run.as_bytes());
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(node_id.as_bytes());
    key.extend_from_slice(&attempt.to_be_bytes());
    Some(key)
}

/// The (node id, attempt) parts of a `nodes` key; `None` when malformed.
pub(crate) fn split_node_key(key: &[u8]) -> Option<(String, u32)> {
    let rest = key.get(16..)?;
    let len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
    let node = rest.get(2..2 + len)?;
    let attempt: [u8; 4] = rest.get(2 + len..)?.try_into().ok()?;
    let node = std::str::from_utf8(node).ok()?;
    Some((node.to_owned(), u32::from_be_bytes(attempt)))
}

/// The `hitl` key of (run, request).
pub(crate) fn hitl_key(run: RunId, request_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(16 + request_id.len());
    key.extend_from_slice(run.as_bytes());
    key.extend_from_slice(request_id.as_bytes());
    key
}

/// The request id part of a `hitl` key; `None` when malformed.
pub(crate) fn split_hitl_key(key: &[u8]) -> Option<String> {
    let request = key.get(16..)?;
    std::str::from_utf8(request).ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_key_parts_are_big_endian_so_byte_order_is_numeric_order() {
        let run = RunId::from_bytes([7; 16]);
        assert!(event_key(run, 255) < event_key(run, 256));
        assert!(plan_key(run, 9) < plan_key(run, 10));
        assert_eq!(
            event_key_seq(&event_key(run, 0x0102_0304_0506)),
            0x0102_0304_0506
        );
        assert_eq!(plan_key_version(&plan_key(run, 70_000)), 70_000);
        assert_eq!(&event_key(run, 1)[16..], &[0, 0, 0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn every_table_is_either_per_run_or_global() {
        let per_run = PER_RUN_TABLES;
        let mut classified: Vec<&str> = per_run
            .iter()
            .map(|table| table.name())
            .chain(GLOBAL_TABLES)
            .collect();
        classified.sort_unstable();
        let mut all = ALL_TABLES.to_vec();
        all.sort_unstable();
        assert_eq!(classified, all);
    }

    #[test]
    fn a_run_key_range_holds_exactly_the_keys_of_that_run() {
        let run = RunId::from_bytes([
            0x12, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff,
        ]);
        let end = run_prefix_end(run).unwrap();
        assert_eq!(
            end,
            [0x12, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]
        );
        let next = RunId::from_bytes(end);
        assert!(
            node_key(run, &"z".repeat(300), u32::MAX)
                .unwrap()
                .as_slice()
                < end.as_slice()
        );
        assert!(hitl_key(next, "").as_slice() >= end.as_slice());
        assert_eq!(run_prefix_end(RunId::from_bytes([0xff; 16])), None);

        let (first, last) = run_span::<24>(run);
        assert_eq!(first, event_key(run, 0));
        assert_eq!(last, event_key(run, u64::MAX));
        let (first, last) = run_span::<20>(run);
        assert_eq!((first, last), (plan_key(run, 0), plan_key(run, u32::MAX)));
    }

    #[test]
    fn node_and_hitl_keys_split_back_into_their_parts() {
        let run = RunId::from_bytes([1; 16]);
        let key = node_key(run, "write\u{0}x", 3).unwrap();
        assert_eq!(split_node_key(&key), Some(("write\u{0}x".to_owned(), 3)));
        assert_eq!(split_node_key(&key[..key.len() - 1]), None);
        assert_eq!(node_key(run, &"n".repeat(70_000), 1), None);
        assert_eq!(
            split_hitl_key(&hitl_key(run, "req-1")),
            Some("req-1".to_owned())
        );
        assert!(key.starts_with(run.as_bytes()));
    }
}
