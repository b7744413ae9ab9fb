//! Tests of the redb store: reopening, schema versions and frozen fixtures, deletion and
//! compaction, and the commit log's checkpoints. Crash tests are in `crash_tests.rs`.

use std::path::PathBuf;

use redb::{Database, ReadableDatabase, TableDefinition, TableHandle};

use super::*;
use crate::fsm::RunOutcome;
use crate::store::conformance::{assert_two_runs, commit_all, commit_two_runs};
use crate::store::tables::{LOG_STATE, META, SCHEMA_VERSION, SCHEMA_VERSION_KEY, STORE_ID_KEY};
use crate::store::testkit::{RunScript, capability, facet, plan};

pub(super) fn temp_store(durability: Durability) -> (tempfile::TempDir, PathBuf, RedbStore) {
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
                expected: SCHEMA_VERSION
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "store format version 99 found, version 6 expected: upgrade required"
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
const FIXTURE_V3: &str = "tests/fixtures/store-v3.redb";
const FIXTURE_V4: &str = "tests/fixtures/store-v4.redb";
const FIXTURE_V5: &str = "tests/fixtures/store-v5.redb";
const FIXTURE: &str = "tests/fixtures/store-v6.redb";

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
        0x01, 0x8f, 0x00, 0x00, 0x00, 0x00, 0x70, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x01,
    ]));
    let mut live = RunScript::new(RunId::from_bytes([
        0x01, 0x8f, 0x00, 0x00, 0x00, 0x00, 0x70, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x02,
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

/// What a fixture written before format 5 reads back: the test kit's node durations were
/// stored as milliseconds then, and read as that many thousand microseconds.
fn written_in_millis(mut batches: Vec<CommitBatch>) -> Vec<CommitBatch> {
    for batch in &mut batches {
        for event in &mut batch.events {
            if let crate::fsm::EventBody::NodeComplete { duration_us, .. } =
                &mut std::sync::Arc::make_mut(event).body
            {
                *duration_us *= 1000;
            }
        }
    }
    batches
}

/// The durations of a run's `node_complete` events, in microseconds.
fn node_durations(store: &RedbStore, run: RunId) -> Vec<u64> {
    store
        .events_after(run, 0, 100)
        .unwrap()
        .into_iter()
        .filter_map(|event| match event.body {
            crate::fsm::EventBody::NodeComplete { duration_us, .. } => Some(duration_us),
            _ => None,
        })
        .collect()
}

/// The checks every fixture written before format 5 passes after [`assert_fixture_reads_back`]:
/// the old node duration (42 ms) reads as 42,000 µs, and a duration written after the
/// upgrade, beside it in the same file, reads as written, before and after a reopen.
fn assert_millis_upgraded(path: &Path, store: RedbStore, done: RunId, live: RunId) {
    assert_eq!(node_durations(&store, done), vec![42_000]);
    assert_eq!(node_durations(&store, live), vec![42]);
    drop(store);
    let store = RedbStore::open(path, Durability::Os).unwrap();
    assert_eq!(node_durations(&store, done), vec![42_000]);
    assert_eq!(node_durations(&store, live), vec![42]);
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
    drop(store);
    // The checkpoint on close emptied the log; the fixture is the redb file alone.
    std::fs::remove_file(log::log_path(&path)).unwrap();
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
                    expected: SCHEMA_VERSION
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
    assert_fixture_reads_back(&store, &done, &live, &written_in_millis(batches));
    assert!(store.queued_firings(live.run).unwrap().is_empty());
    assert_eq!(store.request("retry-me").unwrap(), None);
    assert_millis_upgraded(&path, store, done.run, live.run);
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

fn store_id_of(path: &Path) -> Option<Vec<u8>> {
    let db = Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let state = match txn.open_table(LOG_STATE) {
        Ok(state) => state,
        Err(TableError::TableDoesNotExist(_)) => return None,
        Err(err) => panic!("{err}"),
    };
    state
        .get(STORE_ID_KEY)
        .unwrap()
        .map(|id| id.value().to_vec())
}

#[test]
fn the_frozen_v3_fixture_is_upgraded_in_place_and_reads_back() {
    let (_dir, path) = fixture_copy(FIXTURE_V3);
    assert_eq!(schema_version_of(&path), 3);
    assert_eq!(store_id_of(&path), None);
    let store = RedbStore::open(&path, Durability::Fsync).unwrap();
    let (done, live, batches) = fixture_v3_runs();
    assert_fixture_reads_back(&store, &done, &live, &written_in_millis(batches));
    assert_eq!(
        store.request("retry-me").unwrap(),
        Some(fixture_request(live.run))
    );
    assert_millis_upgraded(&path, store, done.run, live.run);
    assert_eq!(schema_version_of(&path), SCHEMA_VERSION);
    let id = store_id_of(&path).unwrap();
    assert_eq!(id.len(), 16);
    let store = RedbStore::open(&path, Durability::Os).unwrap();
    assert_eq!(
        store.run_head(live.run).unwrap().unwrap().last_seq,
        live.seq + 1
    );
    drop(store);
    assert_eq!(store_id_of(&path), Some(id), "the store id is made once");
}

#[test]
fn the_frozen_v4_fixture_is_upgraded_in_place_and_reads_durations_as_micros() {
    let (_dir, path) = fixture_copy(FIXTURE_V4);
    assert_eq!(schema_version_of(&path), 4);
    let id = store_id_of(&path).unwrap();
    let store = RedbStore::open(&path, Durability::Fsync).unwrap();
    let (done, live, batches) = fixture_v3_runs();
    assert_fixture_reads_back(&store, &done, &live, &written_in_millis(batches));
    assert_eq!(
        store.queued_firings(live.run).unwrap(),
        vec![fixture_queued()]
    );
    assert!(store.queued_firings(done.run).unwrap().is_empty());
    assert_eq!(
        store.request("retry-me").unwrap(),
        Some(fixture_request(live.run))
    );
    assert_millis_upgraded(&path, store, done.run, live.run);
    assert_eq!(schema_version_of(&path), SCHEMA_VERSION);
    assert_eq!(
        store_id_of(&path),
        Some(id),
        "the upgrade keeps the store id"
    );
}

/// A copy of the fixture of store format `version` (5 or later: microsecond durations)
/// opens, reads back everything it was written with, keeps its store id, and is at this
/// build's format afterwards.
fn assert_micros_fixture_reads_back(name: &str, version: u32) {
    let (_dir, path) = fixture_copy(name);
    assert_eq!(schema_version_of(&path), version);
    let id = store_id_of(&path).unwrap();
    let store = RedbStore::open(&path, Durability::Fsync).unwrap();
    let (done, live, batches) = fixture_v3_runs();
    assert_fixture_reads_back(&store, &done, &live, &batches);
    assert_eq!(node_durations(&store, done.run), vec![42]);
    assert_eq!(
        store.queued_firings(live.run).unwrap(),
        vec![fixture_queued()]
    );
    assert!(store.queued_firings(done.run).unwrap().is_empty());
    assert_eq!(
        store.request("retry-me").unwrap(),
        Some(fixture_request(live.run))
    );
    drop(store);
    assert_eq!(store_id_of(&path), Some(id));
    assert_eq!(
        schema_version_of(&path),
        SCHEMA_VERSION,
        "upgraded in place"
    );
}

#[test]
fn the_frozen_v5_fixture_opens_and_reads_back() {
    assert_micros_fixture_reads_back(FIXTURE_V5, 5);
}

#[test]
fn the_frozen_v6_fixture_opens_and_reads_back() {
    assert_micros_fixture_reads_back(FIXTURE, 6);
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
