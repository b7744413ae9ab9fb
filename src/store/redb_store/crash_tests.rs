//! The commit log under failures and crashes.
//!
//! A crash is a real one: the test binary runs itself as a child process
//! ([`crash_child`]), which commits one batch at a time, prints `<ack>` after each commit
//! returns, and aborts at an armed fault point (no destructor runs, nothing is checkpointed or
//! flushed). The parent then opens the files the child left and checks that every
//! acknowledged commit is there, that nothing that never reached the log is, that event seqs
//! are gap-free, and that replaying again changes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::fault::FaultAction;
use super::log;
use super::tests::temp_store;
use super::*;
use crate::store::tables::{CHECKPOINT_SEQ_KEY, LOG_STATE, STORE_ID_KEY};
use crate::store::testkit::{RunScript, facet};

const RUN: [u8; 16] = [
    0x01, 0x8f, 0, 0, 0, 0, 0x70, 0, 0x80, 0, 0, 0, 0, 0, 0, 0x42,
];

/// The batches the child commits, one per commit: create, plan, then `steps` node starts.
fn script(steps: usize) -> Vec<CommitBatch> {
    let mut run = RunScript::new(RunId::from_bytes(RUN));
    let mut batches = vec![run.create(), run.accept_plan()];
    batches.extend((0..steps).map(|i| run.node_start(&format!("node-{i:03}"))));
    batches
}

/// Every row of every table but `log_state`, as raw bytes.
fn rows(store: &RedbStore) -> BTreeMap<(&'static str, Vec<u8>), Vec<u8>> {
    let txn = store.db.begin_read().unwrap();
    let mut out = BTreeMap::new();
    macro_rules! dump {
        ($table:expr, $name:literal, |$key:ident| $bytes:expr) => {
            if let Some(table) = open_read(&txn, $table).unwrap() {
                for entry in table.iter().unwrap() {
                    let (key, value) = entry.unwrap();
                    let $key = key.value();
                    out.insert(($name, $bytes), value.value().to_vec());
                }
            }
        };
    }
    dump!(RUNS, "runs", |k| k.to_vec());
    dump!(ENVELOPES, "envelopes", |k| k.to_vec());
    dump!(QUEUED, "queued", |k| k.to_vec());
    dump!(PLANS, "plans", |k| k.to_vec());
    dump!(EVENTS, "events", |k| k.to_vec());
    dump!(NODES, "nodes", |k| k.to_vec());
    dump!(HITL, "hitl", |k| k.to_vec());
    dump!(REQUESTS, "requests", |k| k.as_bytes().to_vec());
    dump!(FACETS, "facets", |k| k.as_bytes().to_vec());
    dump!(CAPABILITIES, "capabilities", |k| k.as_bytes().to_vec());
    out
}

fn checkpoint_seq(store: &RedbStore) -> u64 {
    let txn = store.db.begin_read().unwrap();
    let state = txn.open_table(LOG_STATE).unwrap();
    let seq = state.get(CHECKPOINT_SEQ_KEY).unwrap();
    seq.map_or(0, |seq| u64::from_be_bytes(seq.value().try_into().unwrap()))
}

fn store_id(store: &RedbStore) -> [u8; 16] {
    let txn = store.db.begin_read().unwrap();
    let state = txn.open_table(LOG_STATE).unwrap();
    let id = state.get(STORE_ID_KEY).unwrap().unwrap();
    id.value().try_into().unwrap()
}

/// Asserts that `store` holds exactly the first `count` batches of `batches`.
fn assert_holds(store: &RedbStore, batches: &[CommitBatch], count: usize) {
    let run = RunId::from_bytes(RUN);
    let events: Vec<RunEvent> = batches[..count]
        .iter()
        .flat_map(|batch| batch.events.iter().map(|event| (**event).clone()))
        .collect();
    let stored = store.events_after(run, 0, usize::MAX).unwrap();
    let seqs: Vec<u64> = stored.iter().map(|event| event.seq).collect();
    assert_eq!(
        seqs,
        (1..=count as u64).collect::<Vec<_>>(),
        "gap-free seqs"
    );
    assert_eq!(stored, events);
    let head = (count > 0).then(|| batches[count - 1].head.clone());
    assert_eq!(store.run_head(run).unwrap(), head);
    assert_eq!(
        store.node_records(run).unwrap().len(),
        count.saturating_sub(2)
    );
}

/// In the child: commits the batches of `FLEXRUN_CRASH_CHILD` =
/// `path;point;skip;steps;every;durability`
/// one by one with `point` armed to abort, then aborts itself.
#[test]
#[ignore = "the child process of the crash tests; does nothing on its own"]
fn crash_child() {
    let Ok(spec) = std::env::var("FLEXRUN_CRASH_CHILD") else {
        return;
    };
    let parts: Vec<&str> = spec.split(';').collect();
    let faults = Faults::default();
    let point = match parts[1] {
        "LogAppended" => Some(FaultPoint::LogAppended),
        "RedbCommitted" => Some(FaultPoint::RedbCommitted),
        "CheckpointCommitted" => Some(FaultPoint::CheckpointCommitted),
        "TornAppend" => Some(FaultPoint::TornAppend),
        _ => None,
    };
    if let Some(point) = point {
        faults.arm(point, FaultAction::Abort, parts[2].parse().unwrap());
    }
    let durability = match parts[5] {
        "d1" => Durability::Os,
        _ => Durability::Fsync,
    };
    let store = RedbStore::open_with(Path::new(parts[0]), durability, faults).unwrap();
    store.set_checkpoint_limits(parts[4].parse().unwrap(), u64::MAX);
    for batch in script(parts[3].parse().unwrap()) {
        store.commit(&[batch]).unwrap();
        println!("<ack>");
    }
    std::process::abort();
}

/// Runs the child against a fresh store in `dir`; returns the store path and the number of
/// acknowledged commits.
fn crash(dir: &Path, point: &str, skip: u64, steps: usize, every: u64) -> (PathBuf, usize) {
    crash_at(dir, "d2", point, skip, steps, every)
}

fn crash_at(
    dir: &Path,
    durability: &str,
    point: &str,
    skip: u64,
    steps: usize,
    every: u64,
) -> (PathBuf, usize) {
    let path = dir.join("crash.redb");
    // Through a shell that turns core dumps off: the child's abort is the point.
    let output = Command::new("sh")
        .args(["-c", "ulimit -c 0; exec \"$0\" \"$@\""])
        .arg(std::env::current_exe().unwrap())
        .args([
            "store::redb_store::crash_tests::crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            "FLEXRUN_CRASH_CHILD",
            format!(
                "{};{point};{skip};{steps};{every};{durability}",
                path.display()
            ),
        )
        .output()
        .unwrap();
    assert!(!output.status.success(), "the child must die: {output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let acks = stdout.matches("<ack>").count();
    assert!(acks > 0, "{output:?}");
    (path, acks)
}

/// Copies the store and its log from `path` into `dir`; returns the copy's path.
fn copy_files(path: &Path, dir: &Path) -> PathBuf {
    let copy = dir.join("copy.redb");
    std::fs::copy(path, &copy).unwrap();
    std::fs::copy(log::log_path(path), log::log_path(&copy)).unwrap();
    copy
}

/// Opens the crashed store and checks what it holds; then checks that a crash during the
/// replay, a second replay over the replayed state and a reopen all give the same rows.
fn recover_and_check(path: &Path, batches: &[CommitBatch], expected: usize) {
    let spare = tempfile::tempdir().unwrap();
    let copy = copy_files(path, spare.path());
    let copied_checkpoint = log_state(&Database::open(&copy).unwrap()).unwrap().1;
    let left = log::read(&log::log_path(path), [0; 16]).err();
    assert!(
        left.is_some_and(|err| err.to_string().contains("another store")),
        "the child's log is checked against the store id"
    );

    let store = RedbStore::open(path, Durability::Fsync).unwrap();
    assert_holds(&store, batches, expected);
    let recovered = rows(&store);
    let entries = log::read(&log::log_path(&copy), store_id(&store))
        .unwrap()
        .unwrap()
        .entries;
    {
        let txn = store.db.begin_write().unwrap();
        for (_, payload) in entries.iter().filter(|(seq, _)| *seq > copied_checkpoint) {
            replay(&txn, payload).unwrap();
        }
        txn.commit().unwrap();
    }
    assert!(rows(&store) == recovered, "replaying again changes nothing");
    drop(store);

    for point in [FaultPoint::Replayed, FaultPoint::CheckpointCommitted] {
        let faults = Faults::default();
        faults.arm(point, FaultAction::Fail, 0);
        let failed = RedbStore::open_with(&copy, Durability::Fsync, faults);
        let replays = entries.iter().any(|(seq, _)| *seq > copied_checkpoint);
        let reached = replays || point == FaultPoint::CheckpointCommitted;
        assert_eq!(failed.is_err(), reached, "{point:?}");
    }
    let store = RedbStore::open(&copy, Durability::Fsync).unwrap();
    assert!(
        rows(&store) == recovered,
        "a crash during recovery, then a reopen"
    );
    drop(store);

    let store = RedbStore::open(path, Durability::Fsync).unwrap();
    assert!(rows(&store) == recovered, "a second open");
    let more = script(batches.len() - 1);
    store.commit(&[more[expected].clone()]).unwrap();
    assert_holds(&store, &more, expected + 1);
    let log = log::read(&log::log_path(path), store_id(&store))
        .unwrap()
        .unwrap();
    assert_eq!(log.entries.len(), 1);
    assert_eq!(log.entries[0].0, log.base + 1, "log seqs continue gap-free");
}

#[test]
fn a_crash_after_the_log_append_keeps_the_synced_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (path, acks) = crash(dir.path(), "LogAppended", 6, 10, 1024);
    assert_eq!(acks, 6);
    let batches = script(10);
    recover_and_check(&path, &batches, acks + 1);
}

#[test]
fn a_crash_after_the_non_durable_redb_commit_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (path, acks) = crash(dir.path(), "RedbCommitted", 4, 10, 1024);
    assert_eq!(acks, 4);
    recover_and_check(&path, &script(10), acks + 1);
}

#[test]
fn a_torn_tail_was_never_acknowledged_and_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (path, acks) = crash(dir.path(), "TornAppend", 7, 10, 1024);
    assert_eq!(acks, 7);
    let db = Database::open(&path).unwrap();
    let (id, _) = log_state(&db).unwrap();
    drop(db);
    let log = log::read(&log::log_path(&path), id).unwrap().unwrap();
    assert_eq!(log.entries.len(), 7);
    assert!(log.dropped_bytes > 0, "half an entry is on disk");
    recover_and_check(&path, &script(10), acks);
}

#[test]
fn a_crash_between_a_checkpoint_and_the_log_truncation_skips_the_covered_entries() {
    let dir = tempfile::tempdir().unwrap();
    // Every 4th logged commit makes the next one a checkpoint: commits 5 and 10 are, and
    // the child dies right after the second one's durable commit.
    let (path, acks) = crash(dir.path(), "CheckpointCommitted", 1, 12, 4);
    assert_eq!(acks, 9);
    let db = Database::open(&path).unwrap();
    let (id, checkpoint) = log_state(&db).unwrap();
    drop(db);
    let log = log::read(&log::log_path(&path), id).unwrap().unwrap();
    assert_eq!(checkpoint, 8);
    let seqs: Vec<u64> = log.entries.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        vec![5, 6, 7, 8],
        "the log still holds what the checkpoint covers"
    );
    recover_and_check(&path, &script(12), acks + 1);
}

#[test]
fn a_crash_with_no_fault_replays_every_acknowledged_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (path, acks) = crash(dir.path(), "none", 0, 20, 1024);
    assert_eq!(acks, 22);
    recover_and_check(&path, &script(21), acks);
}

#[test]
fn at_d1_a_killed_process_loses_no_acknowledged_commit() {
    let dir = tempfile::tempdir().unwrap();
    // Commits 5 and 10 are checkpoints (every 4 logged commits); the 9th logged one is 11.
    let (path, acks) = crash_at(dir.path(), "d1", "LogAppended", 8, 12, 4);
    assert_eq!(acks, 10);
    recover_and_check(&path, &script(12), acks + 1);
}

#[test]
fn a_failed_append_fails_the_commit_and_leaves_nothing_behind() {
    for point in [FaultPoint::TornAppend, FaultPoint::LogAppended] {
        let (_dir, path, store) = temp_store(Durability::Fsync);
        let batches = script(3);
        commit_all_one_by_one(&store, &batches[..3]);
        let log_path = log::log_path(&path);
        let before = log::raw(&log_path);
        store.faults.arm(point, FaultAction::Fail, 0);
        let err = store.commit(&[batches[3].clone()]).unwrap_err();
        assert!(err.to_string().contains("injected fault"), "{err}");
        assert_eq!(
            log::raw(&log_path),
            before,
            "{point:?}: the entry is taken back"
        );
        assert_holds(&store, &batches, 3);
        assert_eq!(store.stats().commits, 3);

        store.commit(&[batches[3].clone()]).unwrap();
        let log = log::read(&log_path, store_id(&store)).unwrap().unwrap();
        let seqs: Vec<u64> = log.entries.iter().map(|(seq, _)| *seq).collect();
        assert_eq!((seqs, log.dropped_bytes), (vec![1, 2, 3, 4], 0));
        drop(store);
        let store = RedbStore::open(&path, Durability::Fsync).unwrap();
        assert_holds(&store, &batches, 4);
    }
}

fn commit_all_one_by_one(store: &RedbStore, batches: &[CommitBatch]) {
    for batch in batches {
        store.commit(std::slice::from_ref(batch)).unwrap();
    }
}

#[test]
fn a_refused_batch_is_never_logged() {
    let (_dir, path, store) = temp_store(Durability::Os);
    let batches = script(2);
    commit_all_one_by_one(&store, &batches[..2]);
    let err = store.commit(&[batches[3].clone()]).unwrap_err();
    assert!(
        matches!(err, StoreError::InvariantViolation { .. }),
        "{err:?}"
    );
    let outcomes = store
        .commit_each(&[batches[3].clone(), batches[2].clone()])
        .unwrap();
    assert!(outcomes[0].is_err() && outcomes[1].is_ok());
    let log = log::read(&log::log_path(&path), store_id(&store))
        .unwrap()
        .unwrap();
    assert_eq!(log.entries.len(), 3);
    let writes = log::records(&log.entries[2].1).unwrap();
    let events = writes
        .iter()
        .filter(|write| matches!(write, log::Record::Put(log::LogTable::Events, ..)))
        .count();
    assert_eq!(
        events,
        batches[2].events.len(),
        "only the valid batch's event"
    );
}

#[test]
fn every_k_commits_and_every_write_that_is_not_logged_take_a_checkpoint() {
    let (_dir, path, store) = temp_store(Durability::Fsync);
    let log_path = log::log_path(&path);
    store.set_checkpoint_limits(3, u64::MAX);
    let batches = script(8);
    let entries = |store: &RedbStore| {
        let log = log::read(&log_path, store_id(store)).unwrap().unwrap();
        (log.base, log.entries.len())
    };
    commit_all_one_by_one(&store, &batches[..3]);
    assert_eq!(checkpoint_seq(&store), 0);
    assert_eq!(entries(&store), (0, 3));
    store.commit(&[batches[3].clone()]).unwrap();
    assert_eq!(
        checkpoint_seq(&store),
        3,
        "the 4th commit is the checkpoint"
    );
    assert_eq!(entries(&store), (3, 0), "and the log is emptied");

    commit_all_one_by_one(&store, &batches[4..6]);
    store.put_facet(&facet()).unwrap();
    assert_eq!(checkpoint_seq(&store), 5);
    assert_eq!(entries(&store), (5, 0));

    store.set_checkpoint_limits(u64::MAX, 1);
    commit_all_one_by_one(&store, &batches[6..8]);
    assert_eq!(
        checkpoint_seq(&store),
        6,
        "the byte limit: one entry is enough"
    );
    commit_all_one_by_one(&store, &script(9)[8..9]);
    assert_eq!(entries(&store), (6, 1));
    let id = store_id(&store);
    drop(store);
    let db = Database::open(&path).unwrap();
    assert_eq!(log_state(&db).unwrap().1, 7, "closing takes a checkpoint");
    drop(db);
    let log = log::read(&log_path, id).unwrap().unwrap();
    assert_eq!((log.base, log.entries.len()), (7, 0));
    assert_eq!(log::raw(&log_path).len() as u64, log::PREALLOCATE);
}

#[test]
fn a_log_from_another_store_is_refused_and_a_missing_log_is_nothing_to_replay() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.redb");
    let theirs = dir.path().join("theirs.redb");
    let batches = script(1);
    {
        let store = RedbStore::open(&ours, Durability::Fsync).unwrap();
        commit_all_one_by_one(&store, &batches[..1]);
        let other = RedbStore::open(&theirs, Durability::Fsync).unwrap();
        commit_all_one_by_one(&other, &batches);
        std::mem::drop(other);
    }
    std::fs::copy(log::log_path(&theirs), log::log_path(&ours)).unwrap();
    let err = RedbStore::open(&ours, Durability::Os).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { what }
            if what.contains(&log::log_path(&ours).display().to_string())
                && what.contains("another store")),
        "{err}"
    );
    std::fs::remove_file(log::log_path(&ours)).unwrap();
    let store = RedbStore::open(&ours, Durability::Os).unwrap();
    assert_holds(&store, &batches, 1);
}

#[test]
fn a_log_newer_than_its_store_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let old = dir.path().join("old.redb");
    let batches = script(2);
    let store = RedbStore::open(&path, Durability::Fsync).unwrap();
    commit_all_one_by_one(&store, &batches[..2]);
    drop(store);
    std::fs::copy(&path, &old).unwrap();
    let store = RedbStore::open(&path, Durability::Fsync).unwrap();
    commit_all_one_by_one(&store, &batches[2..]);
    drop(store);
    std::fs::copy(&old, &path).unwrap();
    let err = RedbStore::open(&path, Durability::Fsync).unwrap_err();
    assert!(err.to_string().contains("older than its log"), "{err}");
}
