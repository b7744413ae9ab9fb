//! Deleting ended runs, retention sweeps and compaction, over real redb files.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flexrun::engine::{Compaction, RetentionOptions, RetentionTotals, SweepReport};
use flexrun::fsm::{EventBody, EventKind, HitlDecision, RunState};
use flexrun::store::RunStatus;
use flexrun::{Durability, Engine, EngineError, HitlAnswer, RedbStore, RunId, Store, Timestamp};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::support::*;

fn approval() -> Value {
    json!({"runtime": [{"id": "review",
        "trigger": {"kind": "onNodeComplete", "selector": {"capabilityId": "writer.en"}},
        "action": {"type": "hitl", "question": "publish this copy?", "onApprove": "continue", "onReject": "fail"}}]})
}

/// Submits `count` runs of the demo workload and waits until each has completed.
async fn completed_runs(env: &mut TestEnv, count: usize) -> Vec<RunId> {
    let mut runs = Vec::new();
    for _ in 0..count {
        let run = env
            .engine
            .submit(copy_envelope(&["copyVariants", "summary"], json!({})))
            .await
            .unwrap();
        let events = env.until_complete(run).await;
        assert_eq!(complete_status(&events).as_deref(), Some("completed"));
        runs.push(run);
    }
    runs
}

/// Submits a run that stops at a HITL request; returns it with the request id.
async fn paused_run(env: &mut TestEnv) -> (RunId, String) {
    let run = env
        .engine
        .submit(copy_envelope(&["copyVariants", "summary"], approval()))
        .await
        .unwrap();
    let events = env.until(run, |e| e.kind() == EventKind::HitlRequest).await;
    let Some(EventBody::HitlRequest { request_id, .. }) = events.last().map(|e| &e.body) else {
        panic!("no hitl request: {:?}", labels(&events));
    };
    (run, request_id.clone())
}

/// One millisecond after the latest update of `runs`: a cutoff every one of them is older than.
fn just_after(engine: &Engine, runs: &[RunId]) -> Timestamp {
    let latest = runs
        .iter()
        .map(|run| engine.head(*run).unwrap().updated_at)
        .max()
        .unwrap();
    Timestamp(latest.millis() + 1)
}

fn gone(engine: &Engine, run: RunId) -> bool {
    matches!(engine.head(run), Err(EngineError::RunNotFound(r)) if r == run)
        && engine.store().events_after(run, 0, 10).unwrap().is_empty()
        && engine.store().node_records(run).unwrap().is_empty()
        && engine.store().plan_versions(run).unwrap().is_empty()
}

async fn totals_reach(
    rx: &mut watch::Receiver<RetentionTotals>,
    done: impl Fn(&RetentionTotals) -> bool,
) -> RetentionTotals {
    *tokio::time::timeout(GUARD, rx.wait_for(|t| done(t)))
        .await
        .expect("the retention task sweeps")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_run_is_deleted_with_everything_stored_about_it_and_an_active_one_is_refused() {
    let mut env = TestEnv::start(None).await;
    let (paused, request_id) = paused_run(&mut env).await;
    let ended = env
        .engine
        .submit(copy_envelope(&["copyVariants", "summary"], json!({})))
        .await
        .unwrap();
    env.until_complete(ended).await;
    env.engine.delete_run(ended).await.unwrap();
    assert!(gone(&env.engine, ended));
    assert!(matches!(
        env.engine.delete_run(ended).await,
        Err(EngineError::RunNotFound(r)) if r == ended
    ));
    assert!(matches!(
        env.engine.events(ended, 0),
        Err(EngineError::RunNotFound(_))
    ));
    assert!(matches!(
        env.engine.wait(ended).await,
        Err(EngineError::RunNotFound(_))
    ));

    let err = env.engine.delete_run(paused).await.unwrap_err();
    assert!(
        matches!(err, EngineError::RunActive(r) if r == paused),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("run {paused} is active: only an ended run can be deleted")
    );
    let head = env.engine.head(paused).unwrap();
    assert_eq!(
        (head.status, head.state),
        (RunStatus::Active, RunState::Paused)
    );
    assert_eq!(env.engine.pending_hitl(paused).unwrap().len(), 1);

    env.engine
        .answer_hitl(paused, &request_id, HitlAnswer::new(HitlDecision::Approve))
        .await
        .unwrap();
    env.until_complete(paused).await;
    env.engine.delete_run(paused).await.unwrap();
    assert!(gone(&env.engine, paused));

    env.engine.shutdown().await;
    let path = env.path();
    let TestEnv {
        dir: _dir,
        engine,
        rx,
    } = env;
    drop((engine, rx));
    let store = RedbStore::open(&path, Durability::Fsync).unwrap();
    assert!(
        store.list_runs(None).unwrap().is_empty(),
        "gone after a reopen"
    );
    assert_eq!(store.run_head(ended).unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_deletes_old_ended_runs_in_batches_and_never_an_active_or_paused_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flexrun.redb");
    let engine = open(path.clone(), None, |mut config| {
        config.retention = RetentionOptions {
            batch_size: 2,
            ..RetentionOptions::default()
        };
        config
    })
    .await;
    let mut env = TestEnv {
        rx: engine.subscribe(),
        engine,
        dir,
    };
    let mut totals = env.engine.retention();
    let (paused, request_id) = paused_run(&mut env).await;
    let ended = completed_runs(&mut env, 5).await;
    let before = env.engine.head(paused).unwrap();

    let report = env
        .engine
        .sweep_terminal_runs(just_after(&env.engine, &ended))
        .await
        .unwrap();
    assert_eq!(
        report,
        SweepReport {
            deleted: 5,
            batches: 3,
            compaction: Compaction::SkippedRunsLive,
        },
        "batches of at most 2; no compaction while a run is driven"
    );
    assert!(ended.iter().all(|run| gone(&env.engine, *run)));
    assert_eq!(env.engine.head(paused).unwrap(), before);
    assert_eq!(env.engine.pending_hitl(paused).unwrap().len(), 1);

    let again = env
        .engine
        .sweep_terminal_runs(Timestamp(u64::MAX))
        .await
        .unwrap();
    assert_eq!(again, SweepReport::default(), "the paused run is kept");
    assert_eq!(env.engine.head(paused).unwrap(), before);

    env.engine
        .answer_hitl(paused, &request_id, HitlAnswer::new(HitlDecision::Approve))
        .await
        .unwrap();
    env.until_complete(paused).await;
    let cutoff = just_after(&env.engine, &[paused]);
    let last = env.engine.sweep_terminal_runs(cutoff).await.unwrap();
    assert_eq!((last.deleted, last.batches), (1, 1));
    assert!(
        matches!(last.compaction, Compaction::Done { .. }),
        "nothing is driven any more: {last:?}"
    );
    assert!(gone(&env.engine, paused));
    assert_eq!(
        *totals.borrow_and_update(),
        RetentionTotals {
            sweeps: 3,
            failures: 0,
            deleted: 6,
            batches: 4,
            compactions: 1,
            compactions_skipped: 1,
        }
    );

    env.engine.shutdown().await;
    let TestEnv {
        dir: _dir,
        engine,
        rx,
    } = env;
    drop((engine, rx));
    let store = RedbStore::open(&path, Durability::Fsync).unwrap();
    assert!(store.list_runs(None).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_task_deletes_expired_runs_in_the_background_and_keeps_paused_ones() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path().join("flexrun.redb"), None, |mut config| {
        config.retain_terminal_runs = Some(Duration::ZERO);
        config.retention = RetentionOptions {
            interval: Duration::from_millis(10),
            batch_size: 2,
            compact: true,
        };
        config
    })
    .await;
    let mut env = TestEnv {
        rx: engine.subscribe(),
        engine,
        dir,
    };
    let mut totals = env.engine.retention();
    let (paused, request_id) = paused_run(&mut env).await;
    let ended = completed_runs(&mut env, 3).await;
    let swept = totals_reach(&mut totals, |t| t.deleted >= 3).await;
    assert_eq!(swept.deleted, 3);
    assert_eq!(swept.failures, 0);
    assert_eq!(swept.compactions, 0, "a paused run is driven: {swept:?}");
    assert!(swept.compactions_skipped >= 1, "{swept:?}");
    assert!(ended.iter().all(|run| gone(&env.engine, *run)));
    let head = env.engine.head(paused).unwrap();
    assert_eq!(
        (head.status, head.state),
        (RunStatus::Active, RunState::Paused)
    );

    env.engine
        .answer_hitl(paused, &request_id, HitlAnswer::new(HitlDecision::Approve))
        .await
        .unwrap();
    env.until_complete(paused).await;
    let swept = totals_reach(&mut totals, |t| t.deleted >= 4 && t.compactions >= 1).await;
    assert_eq!(swept.deleted, 4);
    assert!(gone(&env.engine, paused));
    assert!(env.engine.store().list_runs(None).unwrap().is_empty());
    env.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_task_keeps_runs_younger_than_the_retention_and_stops_with_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flexrun.redb");
    let engine = open(path.clone(), None, |mut config| {
        config.retain_terminal_runs = Some(Duration::from_secs(3600));
        config.retention.interval = Duration::from_millis(5);
        config
    })
    .await;
    let mut env = TestEnv {
        rx: engine.subscribe(),
        engine,
        dir,
    };
    let mut totals = env.engine.retention();
    let ended = completed_runs(&mut env, 1).await;
    let seen = totals.borrow_and_update().sweeps;
    let later = totals_reach(&mut totals, |t| t.sweeps >= seen + 2).await;
    assert_eq!(later.deleted, 0, "an hour has not passed");
    assert!(env.engine.head(ended[0]).is_ok());

    env.engine.shutdown().await;
    let stopped = env
        .engine
        .sweep_terminal_runs(Timestamp(u64::MAX))
        .await
        .unwrap();
    assert_eq!(
        stopped.deleted, 0,
        "no sweep deletes once the engine is shut down"
    );
    assert!(env.engine.head(ended[0]).is_ok());
    let TestEnv {
        dir: _dir,
        engine,
        rx,
    } = env;
    drop((engine, rx));

    let engine = open(path, None, |config| config).await;
    let report = engine
        .sweep_terminal_runs(Timestamp(u64::MAX))
        .await
        .unwrap();
    assert_eq!(report.deleted, 1);
    assert!(gone(&engine, ended[0]));
    engine.shutdown().await;
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// Runs `count` demo runs, `parallel` at a time.
async fn demo_runs(engine: &Engine, count: usize, parallel: usize) {
    let mut left = count;
    while left > 0 {
        let wave = left.min(parallel);
        let mut runs = Vec::with_capacity(wave);
        for _ in 0..wave {
            runs.push(
                engine
                    .submit(copy_envelope(&["copyVariants", "summary"], json!({})))
                    .await
                    .unwrap(),
            );
        }
        for run in runs {
            let result = tokio::time::timeout(GUARD, engine.wait(run))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(result.status, flexrun::fsm::RunOutcome::Completed);
        }
        left -= wave;
    }
}

/// The measurement of docs/STORAGE.md: a store file with 500 demo runs; after deleting them
/// all (no compaction); refilled with 500 more; with half of those deleted and compacted; with
/// all deleted and compacted; and empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_and_compacting_brings_the_file_back_near_its_empty_size() {
    const RUNS: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flexrun.redb");
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path, Durability::Os).unwrap());
    let mut config = flexrun::demo::config(store);
    config.retention = RetentionOptions {
        batch_size: 100,
        compact: false,
        ..RetentionOptions::default()
    };
    let engine = Engine::open(config).await.unwrap();
    let empty = file_len(&path);

    demo_runs(&engine, RUNS, 25).await;
    let full = file_len(&path);
    let events: u64 = engine
        .store()
        .list_runs(None)
        .unwrap()
        .iter()
        .map(|(_, head)| head.last_seq)
        .sum();

    let started = Instant::now();
    let report = engine
        .sweep_terminal_runs(Timestamp(u64::MAX))
        .await
        .unwrap();
    let delete_ms = started.elapsed().as_millis();
    assert_eq!((report.deleted, report.batches), (RUNS, RUNS / 100));
    assert_eq!(report.compaction, Compaction::Disabled);
    let deleted = file_len(&path);

    demo_runs(&engine, RUNS, 25).await;
    let refilled = file_len(&path);
    let runs = engine.store().list_runs(None).unwrap();
    for (run, _) in runs.iter().step_by(2) {
        engine.delete_run(*run).await.unwrap();
    }
    let started = Instant::now();
    assert!(engine.store().compact().unwrap());
    let half_ms = started.elapsed().as_millis();
    let half = file_len(&path);
    assert_eq!(engine.store().list_runs(None).unwrap().len(), RUNS / 2);

    engine
        .sweep_terminal_runs(Timestamp(u64::MAX))
        .await
        .unwrap();
    let started = Instant::now();
    assert!(engine.store().compact().unwrap());
    let compact_ms = started.elapsed().as_millis();
    let compacted = file_len(&path);
    engine.shutdown().await;
    drop(engine);

    eprintln!(
        "{RUNS} demo runs ({events} events): empty {empty} B, full {full} B, \
         all deleted {deleted} B ({delete_ms} ms), refilled {refilled} B, \
         half deleted and compacted {half} B ({half_ms} ms), \
         all deleted and compacted {compacted} B ({compact_ms} ms)"
    );
    assert!(
        full > 20 * empty,
        "the runs take room: {full} B vs {empty} B"
    );
    // Without reuse a refill would double the file; how commits group varies the size of
    // the same 500 runs by a third, so the bound sits between the two.
    assert!(
        refilled < 2 * full - full / 4,
        "a refill reuses the space of deleted runs: {refilled} B vs {full} B"
    );
    assert!(
        compacted <= 2 * empty,
        "compaction gives the space back: {compacted} B vs {empty} B empty"
    );
    let store = RedbStore::open(&path, Durability::Fsync).unwrap();
    assert!(store.list_runs(None).unwrap().is_empty());
}
