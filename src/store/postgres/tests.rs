//! Tests of the PostgreSQL store beyond the conformance suite: persistence, migrations, the
//! constraints the database enforces by itself, ownership fencing, leases, takeover and commit
//! announcements. Each runs against a fresh database of the test server
//! (`FLEXRUN_TEST_POSTGRES`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::{MIGRATIONS, PostgresOptions, PostgresStore, TestDb};
use crate::fsm::RunOutcome;
use crate::ids::RunId;
use crate::store::conformance::{assert_two_runs, commit_all, commit_two_runs, violation_message};
use crate::store::testkit::RunScript;
use crate::store::{Cluster, RemoteCommit, Store, StoreError};

fn open(db: &TestDb, instance: &str) -> PostgresStore {
    PostgresStore::connect(
        &db.url,
        PostgresOptions {
            instance_id: Some(instance.to_owned()),
            ..PostgresOptions::default()
        },
    )
    .unwrap()
}

fn count(db: &TestDb, sql: &str) -> u64 {
    db.text(sql).unwrap().parse().unwrap()
}

/// The database's error for `sql`, which must fail.
fn refused(db: &TestDb, sql: &str) -> String {
    let err = db.sql(sql).expect_err("the database must refuse it");
    let db_err = err.as_db_error().expect("a database error");
    format!(
        "{} {}",
        db_err.code().code(),
        db_err.constraint().unwrap_or("-")
    )
}

#[test]
fn a_reopened_database_reads_everything_back() {
    let db = TestDb::new();
    let runs = commit_two_runs(&open(&db, "a"));
    let store = open(&db, "a");
    assert_two_runs(&store, &runs);
    assert_eq!(store.stats().commits, 0, "stats count since this connect");

    // Another instance reads the same, but recovers none of a's runs.
    let other = open(&db, "b");
    assert_eq!(other.run_head(runs.2.run).unwrap(), Some(runs.2.head()));
    assert!(other.non_terminal_runs().unwrap().is_empty());
}

#[test]
fn migrations_are_recorded_once_and_never_applied_twice() {
    let db = TestDb::new();
    let sql = "SELECT count(*) FROM flexrun_migrations";
    drop(open(&db, "a"));
    assert_eq!(count(&db, sql), MIGRATIONS.len() as u64);
    let applied = db.text("SELECT applied_at FROM flexrun_migrations WHERE version = 1");
    assert_eq!(
        db.text("SELECT name FROM flexrun_migrations WHERE version = 1")
            .as_deref(),
        Some("init")
    );
    drop(open(&db, "b"));
    assert_eq!(count(&db, sql), MIGRATIONS.len() as u64);
    assert_eq!(
        db.text("SELECT applied_at FROM flexrun_migrations WHERE version = 1"),
        applied
    );

    // Several instances connecting to a new database at once.
    let fresh = TestDb::new();
    let target = &fresh;
    std::thread::scope(|scope| {
        let connects: Vec<_> = (0..4)
            .map(|i| scope.spawn(move || open(target, &format!("i{i}"))))
            .collect();
        for connect in connects {
            drop(connect.join().unwrap());
        }
    });
    assert_eq!(count(&fresh, sql), MIGRATIONS.len() as u64);
    assert_eq!(
        count(
            &fresh,
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'flexrun%'"
        ),
        11
    );
}

#[test]
fn a_database_of_an_older_schema_is_upgraded_in_place_keeping_its_runs() {
    let db = TestDb::new();
    // What a build of schema version 1 left: its tables, its record, a run.
    db.sql(
        "CREATE TABLE flexrun_migrations (version integer PRIMARY KEY, name text NOT NULL,
         applied_at timestamptz NOT NULL)",
    )
    .unwrap();
    db.sql(MIGRATIONS[0].2).unwrap();
    db.sql("INSERT INTO flexrun_migrations VALUES (1, 'init', now())")
        .unwrap();
    let a = open(&db, "a");
    let (done, done_events, live, live_events) = commit_two_runs(&a);
    drop(a);
    db.sql("DROP TABLE flexrun_claims").unwrap();
    db.sql("DELETE FROM flexrun_migrations WHERE version > 1")
        .unwrap();

    let a = open(&db, "a");
    assert_eq!(
        count(&db, "SELECT count(*) FROM flexrun_migrations"),
        MIGRATIONS.len() as u64
    );
    assert_eq!(
        db.text("SELECT name FROM flexrun_migrations WHERE version = 2")
            .as_deref(),
        Some("claims")
    );
    assert!(a.claim_key("k", Duration::from_secs(1)).unwrap());
    assert_two_runs(&a, &(done, done_events, live, live_events));
}

#[test]
fn a_schema_newer_than_this_build_is_refused() {
    let db = TestDb::new();
    drop(open(&db, "a"));
    db.sql(
        "INSERT INTO flexrun_migrations (version, name, applied_at) VALUES (99, 'future', now())",
    )
    .unwrap();
    let err = PostgresStore::connect(&db.url, PostgresOptions::default()).unwrap_err();
    assert!(
        matches!(err, StoreError::UpgradeRequired { found: 99, expected } if expected as usize == MIGRATIONS.len()),
        "{err:?}"
    );
}

#[test]
fn the_database_itself_refuses_seq_gaps_duplicate_seqs_and_plan_gaps() {
    let db = TestDb::new();
    let store = open(&db, "a");
    let mut run = RunScript::new(RunId::new());
    commit_all(&store, vec![run.create(), run.accept_plan()]);
    let id = run.run;
    let event = |seq: u64, prev: &str| {
        format!(
            "INSERT INTO flexrun_events (run_id, seq, prev_seq, value) \
             VALUES ('{id}', {seq}, {prev}, '\\x01')"
        )
    };
    // A gap: seq 4 after the stored seq 2, whether it names a missing predecessor, none, or
    // a wrong one.
    assert_eq!(
        refused(&db, &event(4, "3")),
        "23503 flexrun_events_prev_fkey"
    );
    assert_eq!(
        refused(&db, &event(4, "NULL")),
        "23514 flexrun_events_follows"
    );
    assert_eq!(refused(&db, &event(4, "2")), "23514 flexrun_events_follows");
    // A duplicate seq.
    assert_eq!(refused(&db, &event(2, "1")), "23505 flexrun_events_pkey");
    assert_eq!(refused(&db, &event(1, "NULL")), "23505 flexrun_events_pkey");
    // A second first event of another run that does not exist.
    let ghost = RunId::new();
    assert_eq!(
        refused(
            &db,
            &format!(
                "INSERT INTO flexrun_events (run_id, seq, prev_seq, value) \
                 VALUES ('{ghost}', 1, NULL, '\\x01')"
            )
        ),
        "23503 flexrun_events_run_id_fkey"
    );
    // The next seq is taken.
    db.sql(&event(3, "2")).unwrap();

    let plan = |version: u32, prev: &str| {
        format!(
            "INSERT INTO flexrun_plans (run_id, version, prev_version, value) \
             VALUES ('{id}', {version}, {prev}, '\\x01')"
        )
    };
    assert_eq!(refused(&db, &plan(3, "2")), "23503 flexrun_plans_prev_fkey");
    assert_eq!(
        refused(&db, &plan(3, "NULL")),
        "23514 flexrun_plans_follows"
    );
    assert_eq!(refused(&db, &plan(1, "NULL")), "23505 flexrun_plans_pkey");

    // Deleting a run's whole chain in one statement is fine.
    db.sql(&format!("DELETE FROM flexrun_events WHERE run_id = '{id}'"))
        .unwrap();
    // Deleting one link in the middle is not.
    let mut other = RunScript::new(RunId::new());
    commit_all(&store, vec![other.create(), other.accept_plan()]);
    assert_eq!(
        refused(
            &db,
            &format!(
                "DELETE FROM flexrun_events WHERE run_id = '{}' AND seq = 1",
                other.run
            )
        ),
        "23503 flexrun_events_prev_fkey"
    );
}

#[test]
fn a_batch_the_database_refuses_is_rolled_back_alone() {
    let db = TestDb::new();
    let store = open(&db, "a");
    let mut run = RunScript::new(RunId::new());
    commit_all(&store, vec![run.create()]);
    // Seq 2 written behind the store's back: the checks still see last seq 1.
    db.sql(&format!(
        "INSERT INTO flexrun_events (run_id, seq, prev_seq, value) VALUES ('{}', 2, 1, '\\x01')",
        run.run
    ))
    .unwrap();
    let mut before = RunScript::new(RunId::new());
    let mut after = RunScript::new(RunId::new());
    let batches = [before.create(), run.accept_plan(), after.create()];

    let err = store.commit(&batches).unwrap_err();
    let message = violation_message(err, run.run);
    assert!(
        message.contains("an event seq is already stored"),
        "{message}"
    );
    assert_eq!(store.run_head(before.run).unwrap(), None);
    assert_eq!(store.stats().commits, 1);

    let outcomes = store.commit_each(&batches).unwrap();
    assert!(outcomes[0].is_ok(), "{outcomes:?}");
    assert!(
        matches!(&outcomes[1], Err(StoreError::InvariantViolation { run: r, .. }) if *r == run.run),
        "{outcomes:?}"
    );
    assert!(outcomes[2].is_ok(), "{outcomes:?}");
    assert_eq!(store.run_head(before.run).unwrap(), Some(before.head()));
    assert_eq!(store.run_head(after.run).unwrap(), Some(after.head()));
    assert!(store.plan_versions(run.run).unwrap().is_empty());
    assert_eq!(store.run_head(run.run).unwrap().unwrap().last_seq, 1);
    assert_eq!(
        (store.stats().commits, store.stats().batches),
        (2, 3),
        "one more transaction, two more batches"
    );
}

#[test]
fn another_instance_cannot_write_a_run_it_does_not_own() {
    let db = TestDb::new();
    let a = open(&db, "a");
    let b = open(&db, "b");
    let mut run = RunScript::new(RunId::new());
    commit_all(&a, vec![run.create()]);
    let head = a.run_head(run.run).unwrap();

    let mut mine = RunScript::new(RunId::new());
    let batches = [mine.create(), run.clone().accept_plan()];
    let err = b.commit(&batches).unwrap_err();
    assert!(
        matches!(&err, StoreError::NotOwner { run: r, owner } if *r == run.run && owner.as_deref() == Some("a")),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("run {} is owned by a and not by this instance", run.run)
    );
    assert_eq!(b.run_head(mine.run).unwrap(), None, "nothing written");
    assert_eq!(a.run_head(run.run).unwrap(), head);
    assert!(a.plan_versions(run.run).unwrap().is_empty());
    assert!(a.events_after(run.run, 1, 10).unwrap().is_empty());

    let outcomes = b.commit_each(&batches).unwrap();
    assert!(outcomes[0].is_ok());
    assert!(matches!(outcomes[1], Err(StoreError::NotOwner { .. })));
    assert_eq!(b.non_terminal_runs().unwrap(), vec![mine.run]);
    assert_eq!(a.non_terminal_runs().unwrap(), vec![run.run]);
    assert_eq!(
        a.owner(run.run).unwrap().unwrap().instance.as_deref(),
        Some("a")
    );

    // The owner goes on.
    a.commit(&[run.accept_plan()]).unwrap();
    assert_eq!(a.plan_versions(run.run).unwrap(), vec![1]);
}

#[test]
fn an_expired_instances_active_runs_are_taken_over_after_its_lease_and_not_before() {
    let db = TestDb::new();
    let a = open(&db, "a");
    let b = open(&db, "b");
    a.join(Some("http://a:1"), Duration::from_secs(1)).unwrap();
    b.join(Some("http://b:1"), Duration::from_secs(60)).unwrap();
    let mut active: Vec<RunScript> = (0..3).map(|_| RunScript::new(RunId::new())).collect();
    for run in &mut active {
        commit_all(&a, vec![run.create(), run.accept_plan()]);
    }
    let mut ended = RunScript::new(RunId::new());
    commit_all(
        &a,
        vec![ended.create(), ended.complete(RunOutcome::Completed)],
    );

    assert!(b.take_over(10).unwrap().is_empty(), "a's lease is live");
    let owner = b.owner(active[0].run).unwrap().unwrap();
    assert_eq!(
        owner,
        crate::store::RunOwner {
            instance: Some("a".to_owned()),
            address: Some("http://a:1".to_owned()),
            live: true,
        }
    );
    let instances = b.instances().unwrap();
    assert_eq!(instances.len(), 2);
    assert_eq!(
        (
            instances[0].instance.as_str(),
            instances[0].runs,
            instances[0].live
        ),
        ("a", 3, true)
    );
    assert_eq!(
        (instances[1].instance.as_str(), instances[1].runs),
        ("b", 0)
    );

    std::thread::sleep(Duration::from_millis(1300));
    assert!(!b.owner(active[0].run).unwrap().unwrap().live);
    let mut expected: Vec<RunId> = active.iter().map(|run| run.run).collect();
    expected.sort();
    let taken = b.take_over(2).unwrap();
    assert_eq!(
        taken,
        expected[..2].to_vec(),
        "the limit holds, in run-id order"
    );
    let taken_rest = b.take_over(10).unwrap();
    assert_eq!(taken_rest, expected[2..].to_vec());
    assert!(b.take_over(10).unwrap().is_empty(), "not the ended run");
    assert_eq!(b.non_terminal_runs().unwrap(), expected);
    assert!(a.non_terminal_runs().unwrap().is_empty());
    assert_eq!(
        b.owner(ended.run).unwrap().unwrap().instance.as_deref(),
        Some("a")
    );

    // The new owner writes on; the old one is fenced off.
    let mut lost = active[0].clone();
    b.commit(&[active[0].node_start("write")]).unwrap();
    let err = a.commit(&[lost.node_start("write")]).unwrap_err();
    assert!(
        matches!(&err, StoreError::NotOwner { owner, .. } if owner.as_deref() == Some("b")),
        "{err:?}"
    );
    assert_eq!(
        a.run_head(active[0].run).unwrap(),
        Some(active[0].head()),
        "b's commit stands"
    );

    // A heartbeat after expiry says so, and renews the lease anyway.
    assert!(!a.heartbeat(Duration::from_secs(60)).unwrap());
    assert!(a.heartbeat(Duration::from_secs(60)).unwrap());
    assert!(b.heartbeat(Duration::from_secs(60)).unwrap());
    let instances = b.instances().unwrap();
    assert_eq!((instances[0].runs, instances[0].live), (0, true));
    assert_eq!(instances[1].runs, 3);
}

#[test]
fn concurrent_takeovers_never_take_the_same_run() {
    let db = TestDb::new();
    let dead = open(&db, "dead");
    let mut runs = Vec::new();
    for _ in 0..40 {
        let mut run = RunScript::new(RunId::new());
        commit_all(&dead, vec![run.create()]);
        runs.push(run.run);
    }
    // "dead" never joined: no live lease, its runs are up for takeover at once.
    let takers: Vec<PostgresStore> = (0..3).map(|i| open(&db, &format!("t{i}"))).collect();
    let taken: Vec<Vec<RunId>> = std::thread::scope(|scope| {
        let handles: Vec<_> = takers
            .iter()
            .map(|store| {
                scope.spawn(move || {
                    store.join(None, Duration::from_secs(60)).unwrap();
                    let mut mine = Vec::new();
                    loop {
                        let batch = store.take_over(3).unwrap();
                        if batch.is_empty() {
                            break mine;
                        }
                        mine.extend(batch);
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: Vec<RunId> = taken.iter().flatten().copied().collect();
    let unique: HashSet<RunId> = all.iter().copied().collect();
    assert_eq!(all.len(), unique.len(), "a run taken twice: {taken:?}");
    assert_eq!(unique, runs.iter().copied().collect::<HashSet<_>>());
    for (store, mine) in takers.iter().zip(&taken) {
        let mut mine = mine.clone();
        mine.sort();
        assert_eq!(store.non_terminal_runs().unwrap(), mine);
    }
}

#[test]
fn a_run_of_an_instance_that_left_is_takeable_at_once() {
    let db = TestDb::new();
    let a = open(&db, "a");
    let b = open(&db, "b");
    a.join(None, Duration::from_secs(60)).unwrap();
    b.join(None, Duration::from_secs(60)).unwrap();
    let mut run = RunScript::new(RunId::new());
    commit_all(&a, vec![run.create()]);
    assert!(b.take_over(10).unwrap().is_empty());

    a.leave().unwrap();
    let owner = b.owner(run.run).unwrap().unwrap();
    assert_eq!((owner.instance, owner.live), (None, false));
    assert_eq!(b.instances().unwrap().len(), 1);
    let err = a.commit(&[run.clone().accept_plan()]).unwrap_err();
    assert!(
        matches!(&err, StoreError::NotOwner { owner: None, .. }),
        "{err:?}"
    );
    assert_eq!(b.take_over(10).unwrap(), vec![run.run]);
    b.commit(&[run.accept_plan()]).unwrap();
    assert_eq!(
        b.owner(run.run).unwrap().unwrap().instance.as_deref(),
        Some("b")
    );
    assert_eq!(b.owner(RunId::new()).unwrap(), None);
}

#[test]
fn an_idempotency_key_is_claimed_by_one_instance_at_a_time_until_released_or_lapsed() {
    let db = TestDb::new();
    let a = open(&db, "a");
    let b = open(&db, "b");
    let long = Duration::from_secs(60);
    assert!(a.claim_key("key-1", long).unwrap());
    assert!(!b.claim_key("key-1", long).unwrap(), "a holds it");
    assert!(
        a.claim_key("key-1", long).unwrap(),
        "its holder may claim it again"
    );
    assert!(b.claim_key("key-2", long).unwrap(), "another key is free");
    b.release_key("key-1").unwrap();
    assert!(
        !b.claim_key("key-1", long).unwrap(),
        "only the holder releases"
    );
    a.release_key("key-1").unwrap();
    assert!(b.claim_key("key-1", long).unwrap());

    // A claim lapses after its time, on the database clock (an instance that died).
    assert!(a.claim_key("key-3", Duration::from_millis(300)).unwrap());
    assert!(!b.claim_key("key-3", long).unwrap());
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        b.claim_key("key-3", long).unwrap(),
        "the lapsed claim is taken"
    );
    assert!(!a.claim_key("key-3", long).unwrap());
    assert_eq!(count(&db, "SELECT count(*) FROM flexrun_claims"), 3);
}

/// The next announcement `receiver` hears within `within`.
fn next_commit(
    receiver: &mut tokio::sync::broadcast::Receiver<RemoteCommit>,
    within: Duration,
) -> Option<RemoteCommit> {
    let deadline = Instant::now() + within;
    loop {
        match receiver.try_recv() {
            Ok(commit) => return Some(commit),
            Err(tokio::sync::broadcast::error::TryRecvError::Empty)
                if Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return None,
        }
    }
}

#[test]
fn commits_of_other_instances_are_announced_and_own_ones_are_not() {
    let db = TestDb::new();
    let a = open(&db, "a");
    let b = open(&db, "b");
    let mut heard = b.commits();

    let mut own = RunScript::new(RunId::new());
    commit_all(&b, vec![own.create()]);
    let mut run = RunScript::new(RunId::new());
    let started = Instant::now();
    a.commit(&[run.create(), run.accept_plan()]).unwrap();
    let first = next_commit(&mut heard, Duration::from_secs(1)).expect("a's commit within 1 s");
    assert_eq!(
        first,
        RemoteCommit {
            run: run.run,
            first_seq: 1,
            last_seq: 1,
        },
        "not b's own commit"
    );
    let second = next_commit(&mut heard, Duration::from_secs(1)).expect("a's second batch");
    assert_eq!(
        (second.run, second.first_seq, second.last_seq),
        (run.run, 2, 2)
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    // A refused batch announces nothing; a batch of several events announces its range.
    let mut gap = run.clone();
    gap.seq += 1;
    assert!(a.commit(&[gap.node_start("write")]).is_err());
    let mut batch = run.node_start("write");
    let extra = run.node_start("review");
    batch.events.extend(extra.events);
    batch.nodes.extend(extra.nodes);
    batch.head = extra.head;
    a.commit(&[batch]).unwrap();
    let third = next_commit(&mut heard, Duration::from_secs(1)).expect("the range");
    assert_eq!((third.first_seq, third.last_seq), (3, 4));
    assert_eq!(next_commit(&mut heard, Duration::from_millis(200)), None);
}

/// Commits per second of a simple loop: `n` single-batch transactions of one run, then
/// `groups` transactions of 32 batches of as many runs.
fn measure(store: &PostgresStore, n: u32, groups: u32) -> (f64, f64) {
    let mut run = RunScript::new(RunId::new());
    commit_all(store, vec![run.create(), run.accept_plan()]);
    let started = Instant::now();
    for i in 0..n {
        store.commit(&[run.node_start(&format!("n{i}"))]).unwrap();
    }
    let single = f64::from(n) / started.elapsed().as_secs_f64();

    let mut runs: Vec<RunScript> = (0..32).map(|_| RunScript::new(RunId::new())).collect();
    let create: Vec<_> = runs.iter_mut().map(RunScript::create).collect();
    store.commit(&create).unwrap();
    let started = Instant::now();
    for i in 0..groups {
        let batches: Vec<_> = runs
            .iter_mut()
            .map(|run| run.node_start(&format!("n{i}")))
            .collect();
        for outcome in store.commit_each(&batches).unwrap() {
            outcome.unwrap();
        }
    }
    let grouped = f64::from(groups * 32) / started.elapsed().as_secs_f64();
    (single, grouped)
}

/// Commits per second of [`measure`]'s loops, with the server's durable commits and then with
/// `synchronous_commit = off` (what the client side and the round trips cost);
/// `cargo test … -- --ignored --nocapture commit_rate` prints them.
#[test]
#[ignore = "a measurement, not a check"]
fn commit_rate() {
    let db = TestDb::new();
    let (single, grouped) = measure(&open(&db, "a"), 1000, 50);
    println!("durable: {single:.0} single-batch commits/s, {grouped:.0} batches/s in groups of 32");
    db.sql(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET synchronous_commit = off', \
         current_database()); END $$",
    )
    .unwrap();
    let (single, grouped) = measure(&open(&db, "a"), 3000, 100);
    println!(
        "synchronous_commit off: {single:.0} single-batch commits/s, {grouped:.0} batches/s in \
         groups of 32"
    );
}

/// Single-row reads per second (`run_head`: one round trip through the store's runtime).
#[test]
#[ignore = "a measurement, not a check"]
fn read_rate() {
    let db = TestDb::new();
    let store = open(&db, "a");
    let mut run = RunScript::new(RunId::new());
    commit_all(&store, vec![run.create(), run.accept_plan()]);
    let started = Instant::now();
    for _ in 0..2000 {
        store.run_head(run.run).unwrap();
    }
    println!(
        "run_head: {:.0}/s",
        2000.0 / started.elapsed().as_secs_f64()
    );
}
