//! The invariants and read-backs every [`Store`] backend must satisfy, as test bodies over
//! `&dyn Store`, instantiated for each backend at the bottom.

use serde_json::json;

use super::testkit::{RunScript, capability, facet, plan};
use super::{
    CommitBatch, HitlStatus, NodeStatus, QueuedFiring, RequestRecord, RunStatus, Store, StoreError,
};
use crate::fsm::{RunEvent, RunOutcome, TriggerSource};
use crate::ids::{RunId, Timestamp};
use crate::policy::PolicyAction;

/// Commits each batch alone and returns every event committed.
pub(crate) fn commit_all(store: &dyn Store, batches: Vec<CommitBatch>) -> Vec<RunEvent> {
    let mut events = Vec::new();
    for batch in batches {
        store.commit(std::slice::from_ref(&batch)).unwrap();
        events.extend(batch.events.iter().map(|e| (**e).clone()));
    }
    events
}

pub(crate) fn violation_message(err: StoreError, expected_run: RunId) -> String {
    match err {
        StoreError::InvariantViolation { run, message } => {
            assert_eq!(run, expected_run);
            message
        }
        other => panic!("expected an invariant violation, got {other:?}"),
    }
}

/// Commits a finished and a live run and the catalog, and returns both scripts and the events
/// of each.
pub(crate) fn commit_two_runs(
    store: &dyn Store,
) -> (RunScript, Vec<RunEvent>, RunScript, Vec<RunEvent>) {
    let mut done = RunScript::new(RunId::new());
    let mut live = RunScript::new(RunId::new());
    let done_events = commit_all(
        store,
        vec![
            done.create(),
            done.accept_plan(),
            done.node_start("write"),
            done.node_complete("write"),
            done.hitl_request("req-1"),
            done.hitl_resolved("req-1"),
            done.complete(RunOutcome::Completed),
        ],
    );
    let live_events = commit_all(store, vec![live.create(), live.accept_plan()]);
    store.put_facet(&facet()).unwrap();
    store.put_capability(&capability()).unwrap();
    (done, done_events, live, live_events)
}

/// Checks what [`commit_two_runs`] wrote.
pub(crate) fn assert_two_runs(
    store: &dyn Store,
    (done, done_events, live, live_events): &(RunScript, Vec<RunEvent>, RunScript, Vec<RunEvent>),
) {
    assert_eq!(store.run_head(done.run).unwrap(), Some(done.head()));
    assert_eq!(store.run_head(live.run).unwrap(), Some(live.head()));
    assert_eq!(store.run_head(RunId::new()).unwrap(), None);
    assert_eq!(store.envelope(done.run).unwrap(), Some(done.envelope()));
    assert_eq!(store.envelope(RunId::new()).unwrap(), None);
    assert_eq!(store.events_after(done.run, 0, 100).unwrap(), *done_events);
    assert_eq!(store.events_after(live.run, 0, 100).unwrap(), *live_events);
    assert_eq!(store.plan_versions(done.run).unwrap(), vec![1]);
    assert_eq!(store.plan_version(done.run, 1).unwrap(), Some(plan(1)));
    assert_eq!(store.plan_version(done.run, 0).unwrap(), None);
    assert_eq!(store.plan_version(done.run, 2).unwrap(), None);
    assert_eq!(store.latest_plan(live.run).unwrap(), Some(plan(1)));
    assert_eq!(store.latest_plan(RunId::new()).unwrap(), None);

    let nodes = store.node_records(done.run).unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].node_id, "write");
    assert_eq!(nodes[0].status, NodeStatus::Completed);
    assert!(nodes[0].output.is_some());
    assert!(store.node_records(live.run).unwrap().is_empty());

    let hitl = store.hitl_records(done.run).unwrap();
    assert_eq!(hitl.len(), 1);
    assert_eq!(hitl[0].status, HitlStatus::Resolved);
    assert!(store.hitl_records(live.run).unwrap().is_empty());

    let mut all = vec![(done.run, done.head()), (live.run, live.head())];
    all.sort_by_key(|(run, _)| *run);
    assert_eq!(store.list_runs(None).unwrap(), all);
    let completed = store.list_runs(Some(RunStatus::Completed)).unwrap();
    assert_eq!(completed, vec![(done.run, done.head())]);
    assert!(store.list_runs(Some(RunStatus::Failed)).unwrap().is_empty());
    assert_eq!(store.non_terminal_runs().unwrap(), vec![live.run]);
    assert_eq!(store.facets().unwrap(), vec![facet()]);
    assert_eq!(store.capabilities().unwrap(), vec![capability()]);
}

pub(crate) fn commit_reads_everything_back(store: &dyn Store) {
    let runs = commit_two_runs(store);
    let stats = store.stats();
    assert_eq!((stats.commits, stats.batches), (9, 9));
    assert!(stats.bytes_written > 500, "{stats:?}");
    assert_two_runs(store, &runs);
}

pub(crate) fn the_head_objective_is_read_from_the_envelope(store: &dyn Store) {
    let mut run = RunScript::new(RunId::new());
    let mut create = run.create();
    create.head.objective = "not stored".to_owned();
    store.commit(&[create]).unwrap();
    assert_eq!(store.run_head(run.run).unwrap(), Some(run.head()));

    let mut bare = RunScript::new(RunId::new());
    let mut create = bare.create();
    create.envelope = Some(json!({"inputs": {}}));
    store.commit(&[create]).unwrap();
    let head = store.run_head(bare.run).unwrap().unwrap();
    assert_eq!(head.objective, "");
    assert_eq!(
        store.envelope(bare.run).unwrap(),
        Some(json!({"inputs": {}}))
    );
}

pub(crate) fn catalog_entries_are_replaced_by_key(store: &dyn Store) {
    let mut facet = facet();
    store.put_facet(&facet).unwrap();
    facet.title = "Copy".to_owned();
    store.put_facet(&facet).unwrap();
    let mut other = facet.clone();
    other.name = "brief".to_owned();
    store.put_facet(&other).unwrap();
    assert_eq!(store.facets().unwrap(), vec![other, facet]);

    let mut capability = capability();
    store.put_capability(&capability).unwrap();
    capability.version = "1.1.0".to_owned();
    store.put_capability(&capability).unwrap();
    assert_eq!(store.capabilities().unwrap(), vec![capability]);
}

pub(crate) fn a_failed_commit_takes_back_the_batches_before_the_bad_one(store: &dyn Store) {
    let mut run = RunScript::new(RunId::new());
    commit_all(
        store,
        vec![
            run.create(),
            run.accept_plan(),
            run.node_start("write"),
            run.hitl_request("req-1"),
        ],
    );
    let head = store.run_head(run.run).unwrap();
    let events = store.events_after(run.run, 0, 100).unwrap();
    let nodes = store.node_records(run.run).unwrap();
    let hitl = store.hitl_records(run.run).unwrap();
    let stats = store.stats();

    let mut next = run.clone();
    let mut fresh = RunScript::new(RunId::new());
    let mut bad = RunScript::new(RunId::new());
    let mut bad_batch = bad.create();
    bad_batch.head.last_seq = 3;
    let batches = vec![
        next.node_complete("write"),
        next.hitl_resolved("req-1"),
        next.node_start("review"),
        next.accept_plan(),
        fresh.create(),
        bad_batch,
    ];
    let err = store.commit(&batches).unwrap_err();
    assert_eq!(
        violation_message(err, bad.run),
        "head last seq 3 differs from last event seq 1"
    );
    assert_eq!(store.run_head(run.run).unwrap(), head);
    assert_eq!(store.events_after(run.run, 0, 100).unwrap(), events);
    assert_eq!(store.node_records(run.run).unwrap(), nodes);
    assert_eq!(store.hitl_records(run.run).unwrap(), hitl);
    assert_eq!(store.plan_versions(run.run).unwrap(), vec![1]);
    assert_eq!(store.run_head(fresh.run).unwrap(), None);
    assert_eq!(store.stats(), stats);

    store.commit(&batches[..5]).unwrap();
    assert_eq!(store.run_head(run.run).unwrap(), Some(next.head()));
    assert_eq!(store.plan_versions(run.run).unwrap(), vec![1, 2]);
    assert_eq!(store.events_after(run.run, 4, 100).unwrap().len(), 4);
    assert_eq!(store.node_records(run.run).unwrap().len(), 2);
    assert_eq!(store.run_head(fresh.run).unwrap(), Some(fresh.head()));
}

pub(crate) fn plan_versions_are_append_only(store: &dyn Store) {
    let mut run = RunScript::new(RunId::new());
    commit_all(store, vec![run.create(), run.accept_plan()]);
    let before = store.run_head(run.run).unwrap();

    let mut again = run.clone();
    again.plan_version -= 1;
    let mut overwrite = again.accept_plan();
    overwrite.plan.as_mut().unwrap().rationale = "a different plan".to_owned();
    let err = store.commit(&[overwrite]).unwrap_err();
    let message = violation_message(err, run.run);
    assert!(
        message.contains("plan version 1 is already stored"),
        "{message}"
    );
    assert_eq!(store.plan_version(run.run, 1).unwrap(), Some(plan(1)));
    assert_eq!(store.run_head(run.run).unwrap(), before);
    assert_eq!(store.events_after(run.run, 2, 10).unwrap(), Vec::new());

    let mut skip = run.clone();
    skip.plan_version += 1;
    let err = store.commit(&[skip.accept_plan()]).unwrap_err();
    let message = violation_message(err, run.run);
    assert!(
        message.contains("plan version 3 does not follow"),
        "{message}"
    );
    assert_eq!(store.plan_versions(run.run).unwrap(), vec![1]);

    store.commit(&[run.accept_plan()]).unwrap();
    assert_eq!(store.plan_versions(run.run).unwrap(), vec![1, 2]);
    assert_eq!(store.latest_plan(run.run).unwrap(), Some(plan(2)));
}

pub(crate) fn head_must_name_the_latest_plan_version(store: &dyn Store) {
    let mut run = RunScript::new(RunId::new());
    commit_all(store, vec![run.create()]);
    let mut batch = run.clone().node_start("write");
    batch.head.plan_version = 4;
    let message = violation_message(store.commit(&[batch]).unwrap_err(), run.run);
    assert!(message.contains("head plan version 4"), "{message}");
}

pub(crate) fn a_seq_gap_is_refused_and_nothing_of_the_batch_is_written(store: &dyn Store) {
    let mut run = RunScript::new(RunId::new());
    commit_all(store, vec![run.create()]);
    let before = store.run_head(run.run).unwrap();

    let mut gap = run.clone();
    gap.seq += 1;
    let batch = gap.accept_plan();
    assert_eq!(batch.events[0].seq, 3);
    let message = violation_message(store.commit(&[batch]).unwrap_err(), run.run);
    assert!(
        message.contains("event seq 3 does not follow last seq 1"),
        "{message}"
    );
    assert_eq!(store.run_head(run.run).unwrap(), before);
    assert!(store.plan_versions(run.run).unwrap().is_empty());
    assert_eq!(store.events_after(run.run, 1, 10).unwrap(), Vec::new());

    let mut batch = run.clone().node_start("write");
    batch.head.last_seq = 7;
    let message = violation_message(store.commit(&[batch]).unwrap_err(), run.run);
    assert!(
        message.contains("head last seq 7 differs from last event seq 2"),
        "{message}"
    );
    assert!(store.node_records(run.run).unwrap().is_empty());

    let mut fresh = RunScript::new(RunId::new());
    fresh.seq = 1;
    let message = violation_message(store.commit(&[fresh.create()]).unwrap_err(), fresh.run);
    assert!(
        message.contains("event seq 2 does not follow last seq 0"),
        "{message}"
    );
    assert_eq!(store.run_head(fresh.run).unwrap(), None);
    assert_eq!(store.envelope(fresh.run).unwrap(), None);
}

pub(crate) fn events_of_another_run_are_refused(store: &dyn Store) {
    let mut run = RunScript::new(RunId::new());
    let mut batch = run.create();
    std::sync::Arc::make_mut(&mut batch.events[0]).run_id = RunId::new();
    let message = violation_message(store.commit(&[batch]).unwrap_err(), run.run);
    assert!(message.contains("event seq 1 belongs to run"), "{message}");
}

pub(crate) fn a_terminal_run_refuses_more_events_and_status_changes(store: &dyn Store) {
    let mut run = RunScript::new(RunId::new());
    commit_all(
        store,
        vec![run.create(), run.complete(RunOutcome::Cancelled)],
    );
    let before = store.run_head(run.run).unwrap();
    assert_eq!(
        before.as_ref().map(|head| head.status),
        Some(RunStatus::Cancelled)
    );

    let message = violation_message(
        store
            .commit(&[run.clone().node_start("write")])
            .unwrap_err(),
        run.run,
    );
    assert!(
        message.contains("run is cancelled and takes no more events (refused seq 3)"),
        "{message}"
    );

    let mut revive = CommitBatch::new(run.run, run.head());
    revive.head.status = RunStatus::Active;
    let message = violation_message(store.commit(&[revive]).unwrap_err(), run.run);
    assert!(message.contains("cannot become active"), "{message}");
    assert_eq!(store.run_head(run.run).unwrap(), before);
    assert_eq!(store.events_after(run.run, 2, 10).unwrap(), Vec::new());
    assert!(store.non_terminal_runs().unwrap().is_empty());
}

pub(crate) fn the_envelope_comes_exactly_with_the_creating_batch(store: &dyn Store) {
    let mut run = RunScript::new(RunId::new());
    let mut create = run.clone().create();
    create.envelope = None;
    let message = violation_message(store.commit(&[create]).unwrap_err(), run.run);
    assert!(message.contains("no envelope"), "{message}");

    commit_all(store, vec![run.create()]);
    let mut again = run.clone().accept_plan();
    again.envelope = Some(run.envelope());
    let message = violation_message(store.commit(&[again]).unwrap_err(), run.run);
    assert!(message.contains("already exists"), "{message}");
}

pub(crate) fn final_node_attempts_and_resolved_hitl_requests_are_not_rewritten(store: &dyn Store) {
    let mut run = RunScript::new(RunId::new());
    commit_all(
        store,
        vec![
            run.create(),
            run.accept_plan(),
            run.node_start("write"),
            run.node_complete("write"),
            run.hitl_request("req-1"),
            run.hitl_resolved("req-1"),
        ],
    );
    let message = violation_message(
        store
            .commit(&[run.clone().node_start("write")])
            .unwrap_err(),
        run.run,
    );
    assert!(
        message.contains("node write attempt 1 is already final"),
        "{message}"
    );
    let message = violation_message(
        store
            .commit(&[run.clone().hitl_resolved("req-1")])
            .unwrap_err(),
        run.run,
    );
    assert!(
        message.contains("hitl request req-1 is already resolved"),
        "{message}"
    );

    let mut twice = run.clone().node_start("review");
    twice.nodes.push(twice.nodes[0].clone());
    let message = violation_message(store.commit(&[twice]).unwrap_err(), run.run);
    assert!(message.contains("appears twice"), "{message}");
    assert_eq!(store.node_records(run.run).unwrap().len(), 1);
}

pub(crate) fn commit_is_all_or_nothing_and_commit_each_isolates_bad_batches(store: &dyn Store) {
    let mut good = RunScript::new(RunId::new());
    let mut bad = RunScript::new(RunId::new());
    let good_batch = good.create();
    let mut bad_batch = bad.create();
    std::sync::Arc::make_mut(&mut bad_batch.events[0]).seq = 5;

    let err = store
        .commit(&[good_batch.clone(), bad_batch.clone()])
        .unwrap_err();
    assert_eq!(
        violation_message(err, bad.run),
        "event seq 5 does not follow last seq 0"
    );
    assert_eq!(store.run_head(good.run).unwrap(), None);
    assert_eq!(store.stats().commits, 0);

    let outcomes = store.commit_each(&[good_batch, bad_batch]).unwrap();
    assert!(outcomes[0].is_ok());
    assert!(
        matches!(outcomes[1], Err(StoreError::InvariantViolation { run, .. }) if run == bad.run)
    );
    assert_eq!(store.run_head(good.run).unwrap(), Some(good.head()));
    assert_eq!(store.run_head(bad.run).unwrap(), None);
    assert_eq!(store.stats().commits, 1);
    assert_eq!(store.stats().batches, 1);
}

pub(crate) fn batches_of_one_run_in_one_transaction_see_each_other(store: &dyn Store) {
    let mut run = RunScript::new(RunId::new());
    let batches = vec![run.create(), run.accept_plan(), run.node_start("write")];
    store.commit(&batches).unwrap();
    assert_eq!(store.stats().commits, 1);
    assert_eq!(store.run_head(run.run).unwrap(), Some(run.head()));
    assert_eq!(store.events_after(run.run, 0, 10).unwrap().len(), 3);
}

pub(crate) fn events_after_pages_through_one_run_only(store: &dyn Store) {
    let mut a = RunScript::new(RunId::new());
    let mut b = RunScript::new(RunId::new());
    let mut a_events = Vec::new();
    store.commit(&[a.create(), b.create()]).unwrap();
    store.commit(&[a.accept_plan(), b.accept_plan()]).unwrap();
    for _ in 0..23 {
        let batch = a.node_start("write");
        store.commit(&[batch, b.node_start("other")]).unwrap();
    }
    let all = store.events_after(a.run, 0, usize::MAX).unwrap();
    assert_eq!(all.len(), 25);
    assert!(all.iter().all(|event| event.run_id == a.run));
    a_events.extend(all);

    let mut pages = Vec::new();
    let mut after = 0;
    loop {
        let page = store.events_after(a.run, after, 10).unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        pages.push(page);
    }
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![10, 10, 5]
    );
    assert_eq!(pages.concat(), a_events);
    assert_eq!(pages[1][0].seq, 11);
    assert!(store.events_after(a.run, 0, 0).unwrap().is_empty());
    assert!(store.events_after(a.run, u64::MAX, 10).unwrap().is_empty());
    assert!(store.events_after(RunId::new(), 0, 10).unwrap().is_empty());
}

fn queued(policy_id: &str) -> QueuedFiring {
    QueuedFiring {
        policy_id: policy_id.to_owned(),
        action: PolicyAction::Replan { rationale: None },
        reason: format!("{policy_id} fired"),
        source: TriggerSource::Signal,
        node_id: Some("write".to_owned()),
        queued_at: Timestamp(1_700_000_000_000),
    }
}

fn request(key: &str, run: RunId, at: u64) -> RequestRecord {
    RequestRecord {
        key: key.to_owned(),
        fingerprint: "ab".repeat(32),
        run_id: run,
        created_at: Timestamp(at),
        status: RunStatus::Active,
        state: crate::fsm::RunState::Requesting,
    }
}

pub(crate) fn queued_firings_are_replaced_with_the_batch_that_changes_them(store: &dyn Store) {
    let mut run = RunScript::new(RunId::new());
    store.commit(&[run.create()]).unwrap();
    assert!(store.queued_firings(run.run).unwrap().is_empty());

    let mut batch = run.accept_plan();
    batch.queued = Some(vec![queued("qa"), queued("audit")]);
    store.commit(&[batch]).unwrap();
    assert_eq!(
        store.queued_firings(run.run).unwrap(),
        vec![queued("qa"), queued("audit")]
    );

    // A batch without a queue leaves it; a head-only batch can replace it.
    store.commit(&[run.node_start("write")]).unwrap();
    assert_eq!(store.queued_firings(run.run).unwrap().len(), 2);
    let mut head_only = CommitBatch::new(run.run, run.head());
    head_only.queued = Some(vec![queued("audit")]);
    store.commit(&[head_only]).unwrap();
    assert_eq!(
        store.queued_firings(run.run).unwrap(),
        vec![queued("audit")]
    );

    // A failed transaction takes the queue change back with the rest.
    let mut refused = run.clone();
    let mut good = refused.node_complete("write");
    good.queued = Some(Vec::new());
    let mut bad = refused.node_start("write");
    std::sync::Arc::make_mut(&mut bad.events[0]).seq += 5;
    assert!(store.commit(&[good, bad]).is_err());
    assert_eq!(
        store.queued_firings(run.run).unwrap(),
        vec![queued("audit")]
    );

    // A terminal run keeps none.
    let mut ending = run.clone().complete(RunOutcome::Completed);
    ending.queued = Some(vec![queued("qa")]);
    let message = violation_message(store.commit(&[ending]).unwrap_err(), run.run);
    assert!(message.contains("queued"), "{message}");
    let mut ending = run.complete(RunOutcome::Completed);
    ending.queued = Some(Vec::new());
    store.commit(&[ending]).unwrap();
    assert!(store.queued_firings(run.run).unwrap().is_empty());
}

pub(crate) fn idempotency_records_are_written_with_their_run_and_expire(store: &dyn Store) {
    let mut run = RunScript::new(RunId::new());
    let mut create = run.create();
    create.requests = vec![request("key-1", run.run, 1_000)];
    store.commit(&[create]).unwrap();
    assert_eq!(
        store.request("key-1").unwrap(),
        Some(request("key-1", run.run, 1_000))
    );
    assert_eq!(store.request("key-2").unwrap(), None);

    // A record must name the batch's run; the whole batch is refused otherwise.
    let mut other = run.clone().accept_plan();
    other.requests = vec![request("key-2", RunId::new(), 2_000)];
    let message = violation_message(store.commit(&[other]).unwrap_err(), run.run);
    assert!(message.contains("key-2"), "{message}");
    assert_eq!(store.request("key-2").unwrap(), None);
    assert_eq!(store.run_head(run.run).unwrap().unwrap().plan_version, 0);

    let mut steer = run.accept_plan();
    steer.requests = vec![
        request("key-2", run.run, 2_000),
        request("key-3", run.run, 3_000),
    ];
    store.commit(&[steer]).unwrap();
    assert_eq!(store.expire_requests(Timestamp(2_500), 10).unwrap(), 2);
    assert_eq!(store.request("key-1").unwrap(), None);
    assert_eq!(store.request("key-2").unwrap(), None);
    assert!(store.request("key-3").unwrap().is_some());
    assert_eq!(store.expire_requests(Timestamp(2_500), 10).unwrap(), 0);
    assert_eq!(store.expire_requests(Timestamp(9_000), 0).unwrap(), 0);
    assert_eq!(store.expire_requests(Timestamp(9_000), 1).unwrap(), 1);
    assert_eq!(store.request("key-3").unwrap(), None);
}

/// The batches of a run that touches every per-run table and then ends.
fn full_run(run: &mut RunScript, outcome: RunOutcome) -> Vec<CommitBatch> {
    vec![
        run.create(),
        run.accept_plan(),
        run.node_start("write"),
        run.node_complete("write"),
        run.hitl_request("req-1"),
        run.hitl_resolved("req-1"),
        run.accept_plan(),
        run.complete(outcome),
    ]
}

/// Checks that nothing of `run` can be read any more.
fn assert_gone(store: &dyn Store, run: RunId) {
    assert_eq!(store.run_head(run).unwrap(), None);
    assert_eq!(store.envelope(run).unwrap(), None);
    assert!(store.events_after(run, 0, 100).unwrap().is_empty());
    assert!(store.plan_versions(run).unwrap().is_empty());
    assert_eq!(store.plan_version(run, 1).unwrap(), None);
    assert_eq!(store.latest_plan(run).unwrap(), None);
    assert!(store.node_records(run).unwrap().is_empty());
    assert!(store.hitl_records(run).unwrap().is_empty());
    assert!(
        store
            .list_runs(None)
            .unwrap()
            .iter()
            .all(|(id, _)| *id != run)
    );
}

pub(crate) fn deleting_an_ended_run_removes_every_row_of_it_and_nothing_else(store: &dyn Store) {
    let (done, _, mut live, live_events) = commit_two_runs(store);
    assert!(store.delete_run(done.run).unwrap());
    assert_gone(store, done.run);
    assert_eq!(
        store.list_runs(None).unwrap(),
        vec![(live.run, live.head())]
    );
    assert_eq!(store.events_after(live.run, 0, 100).unwrap(), live_events);
    assert_eq!(store.latest_plan(live.run).unwrap(), Some(plan(1)));
    assert_eq!(store.envelope(live.run).unwrap(), Some(live.envelope()));
    assert_eq!(store.facets().unwrap(), vec![facet()]);
    assert_eq!(store.capabilities().unwrap(), vec![capability()]);

    assert!(!store.delete_run(done.run).unwrap(), "already deleted");
    assert!(!store.delete_run(RunId::new()).unwrap(), "never existed");

    commit_all(
        store,
        vec![live.node_start("write"), live.complete(RunOutcome::Failed)],
    );
    assert_eq!(store.node_records(live.run).unwrap().len(), 1);
    assert!(store.delete_run(live.run).unwrap());
    assert_gone(store, live.run);
    assert!(store.list_runs(None).unwrap().is_empty());
    assert_eq!(store.facets().unwrap(), vec![facet()]);
}

pub(crate) fn deleting_a_run_leaves_the_runs_next_to_it_in_key_order_intact(store: &dyn Store) {
    let mut below = [0x01; 16];
    below[15] = 0xff;
    let mut target = below;
    target[14] = 0x02;
    target[15] = 0x00;
    let ids = [below, target, [0xff; 16]].map(RunId::from_bytes);
    let mut scripts: Vec<RunScript> = ids.iter().map(|id| RunScript::new(*id)).collect();
    let mut events = Vec::new();
    for script in &mut scripts {
        events.push(commit_all(store, full_run(script, RunOutcome::Completed)));
    }
    let intact = |store: &dyn Store, i: usize| {
        let run = scripts[i].run;
        assert_eq!(store.run_head(run).unwrap(), Some(scripts[i].head()));
        assert_eq!(store.events_after(run, 0, 100).unwrap(), events[i]);
        assert_eq!(store.plan_versions(run).unwrap(), vec![1, 2]);
        assert_eq!(store.node_records(run).unwrap().len(), 1);
        assert_eq!(store.hitl_records(run).unwrap().len(), 1);
    };

    assert!(store.delete_run(ids[1]).unwrap());
    assert_gone(store, ids[1]);
    intact(store, 0);
    intact(store, 2);

    assert!(store.delete_run(ids[2]).unwrap(), "the last possible id");
    assert_gone(store, ids[2]);
    intact(store, 0);
}

pub(crate) fn an_active_run_is_never_deleted(store: &dyn Store) {
    let runs = commit_two_runs(store);
    let live = runs.2.run;
    let err = store.delete_run(live).unwrap_err();
    assert!(
        matches!(err, StoreError::RunActive { run } if run == live),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("run {live} is active: only an ended run can be deleted")
    );
    assert_two_runs(store, &runs);

    let mut paused = RunScript::new(RunId::new());
    commit_all(
        store,
        vec![
            paused.create(),
            paused.accept_plan(),
            paused.hitl_request("req-1"),
        ],
    );
    assert!(matches!(
        store.delete_run(paused.run),
        Err(StoreError::RunActive { .. })
    ));
    let deleted = store
        .delete_terminal_before(Timestamp(u64::MAX), 10, &|_| false)
        .unwrap();
    assert_eq!(deleted, vec![runs.0.run]);
    let mut active = vec![live, paused.run];
    active.sort();
    assert_eq!(store.non_terminal_runs().unwrap(), active);
    assert_eq!(store.run_head(paused.run).unwrap(), Some(paused.head()));
    assert_eq!(store.hitl_records(paused.run).unwrap().len(), 1);
}

pub(crate) fn runs_are_paged_newest_first_and_filtered(store: &dyn Store) {
    use crate::store::RunQuery;
    // Seven runs two minutes apart (more than the id/head slack), created at their ids' time.
    let base = 1_800_000_000_000u64;
    let at = |i: u64| base + i * 120_000;
    let mut runs = Vec::new();
    for i in 0..7u64 {
        let mut run = RunScript::new(RunId::first_at(at(i)));
        run.created = Timestamp(at(i));
        run.metadata = Some(serde_json::json!({"correlationId": format!("c{}", i % 3)}));
        let mut batches = vec![run.create()];
        if i % 2 == 0 {
            batches.push(run.complete(RunOutcome::Completed));
        }
        commit_all(store, batches);
        runs.push(run);
    }
    let ids = |page: &crate::store::RunPage| -> Vec<RunId> {
        page.runs.iter().map(|(run, _)| *run).collect()
    };
    let of = |idx: &[usize]| -> Vec<RunId> { idx.iter().map(|&i| runs[i].run).collect() };
    let query = |q: RunQuery| store.runs_page(&q).unwrap();

    let first = query(RunQuery {
        limit: 3,
        ..RunQuery::default()
    });
    assert_eq!((ids(&first), first.more), (of(&[6, 5, 4]), true));
    assert_eq!(first.runs[0].1, runs[6].head(), "pages carry whole heads");
    let second = query(RunQuery {
        limit: 3,
        before: Some(runs[4].run),
        ..RunQuery::default()
    });
    assert_eq!((ids(&second), second.more), (of(&[3, 2, 1]), true));
    let last = query(RunQuery {
        limit: 3,
        before: Some(runs[1].run),
        ..RunQuery::default()
    });
    assert_eq!((ids(&last), last.more), (of(&[0]), false));

    let completed = query(RunQuery {
        status: Some(RunStatus::Completed),
        limit: 10,
        ..RunQuery::default()
    });
    assert_eq!(
        (ids(&completed), completed.more),
        (of(&[6, 4, 2, 0]), false)
    );
    let tagged = query(RunQuery {
        metadata: vec![("correlationId".to_owned(), serde_json::json!("c1"))],
        limit: 10,
        ..RunQuery::default()
    });
    assert_eq!(ids(&tagged), of(&[4, 1]));
    let window = query(RunQuery {
        created_after: Some(Timestamp(at(2))),
        created_before: Some(Timestamp(at(5))),
        limit: 10,
        ..RunQuery::default()
    });
    assert_eq!((ids(&window), window.more), (of(&[4, 3, 2]), false));
    let one = query(RunQuery::default());
    assert_eq!((ids(&one), one.more), (of(&[6]), true), "a limit of 0 is 1");
}

pub(crate) fn delete_terminal_before_takes_bounded_batches_of_old_ended_runs(store: &dyn Store) {
    let mut old_active = RunScript::new(RunId::new());
    commit_all(store, vec![old_active.create()]);
    let mut ended = Vec::new();
    for extra in 0..5 {
        let mut run = RunScript::new(RunId::new());
        let mut batches = vec![run.create(), run.accept_plan()];
        for i in 0..extra {
            batches.push(run.node_start(&format!("n{i}")));
        }
        batches.push(run.complete(RunOutcome::Completed));
        commit_all(store, batches);
        ended.push(run);
    }
    let mut kept = RunScript::new(RunId::new());
    commit_all(
        store,
        vec![kept.create(), kept.complete(RunOutcome::Cancelled)],
    );
    let updated = |run: &RunScript| run.head().updated_at;
    assert!(updated(&old_active) < updated(&ended[0]));
    assert!(updated(&kept) < updated(&ended[0]));
    let cutoff = updated(&ended[4]);
    assert!(updated(&ended[3]) < cutoff);
    let skip = |run: RunId| run == kept.run;

    assert!(
        store
            .delete_terminal_before(cutoff, 0, &skip)
            .unwrap()
            .is_empty()
    );
    let first = store.delete_terminal_before(cutoff, 3, &skip).unwrap();
    assert_eq!(first, vec![ended[0].run, ended[1].run, ended[2].run]);
    for run in &first {
        assert_gone(store, *run);
    }
    let second = store.delete_terminal_before(cutoff, 3, &skip).unwrap();
    assert_eq!(second, vec![ended[3].run], "strictly older than the cutoff");
    assert!(
        store
            .delete_terminal_before(cutoff, 3, &skip)
            .unwrap()
            .is_empty()
    );
    let left: Vec<RunId> = store
        .list_runs(None)
        .unwrap()
        .into_iter()
        .map(|(run, _)| run)
        .collect();
    assert_eq!(left, vec![old_active.run, ended[4].run, kept.run]);
    assert_eq!(
        store.events_after(ended[4].run, 0, 100).unwrap().len() as u64,
        ended[4].seq
    );

    let rest = store
        .delete_terminal_before(Timestamp(u64::MAX), 10, &|_| false)
        .unwrap();
    assert_eq!(rest, vec![ended[4].run, kept.run]);
    assert_eq!(store.non_terminal_runs().unwrap(), vec![old_active.run]);
    assert_eq!(
        store.list_runs(None).unwrap(),
        vec![(old_active.run, old_active.head())]
    );
}

/// Instantiates every conformance test for each backend.
macro_rules! for_each_backend {
    ($($name:ident),* $(,)?) => {
        mod redb_in_memory {
            $(#[test]
            fn $name() {
                super::$name(&crate::store::RedbStore::in_memory().unwrap());
            })*
        }

        mod redb_file {
            $(#[test]
            fn $name() {
                let dir = tempfile::tempdir().unwrap();
                let store = crate::store::RedbStore::open(
                    dir.path().join("store.redb"),
                    crate::store::Durability::Os,
                )
                .unwrap();
                super::$name(&store);
            })*
        }

        mod redb_file_fsync {
            $(#[test]
            fn $name() {
                let dir = tempfile::tempdir().unwrap();
                let store = crate::store::RedbStore::open(
                    dir.path().join("store.redb"),
                    crate::store::Durability::Fsync,
                )
                .unwrap();
                super::$name(&store);
            })*
        }

        mod memory {
            $(#[test]
            fn $name() {
                super::$name(&crate::store::MemoryStore::new());
            })*
        }

        #[cfg(feature = "postgres")]
        mod postgres {
            $(#[test]
            fn $name() {
                let db = crate::store::postgres::TestDb::new();
                let store = crate::store::PostgresStore::connect(
                    &db.url,
                    crate::store::PostgresOptions::default(),
                )
                .unwrap();
                super::$name(&store);
            })*
        }
    };
}

for_each_backend!(
    commit_reads_everything_back,
    the_head_objective_is_read_from_the_envelope,
    catalog_entries_are_replaced_by_key,
    a_failed_commit_takes_back_the_batches_before_the_bad_one,
    plan_versions_are_append_only,
    head_must_name_the_latest_plan_version,
    a_seq_gap_is_refused_and_nothing_of_the_batch_is_written,
    events_of_another_run_are_refused,
    a_terminal_run_refuses_more_events_and_status_changes,
    the_envelope_comes_exactly_with_the_creating_batch,
    final_node_attempts_and_resolved_hitl_requests_are_not_rewritten,
    commit_is_all_or_nothing_and_commit_each_isolates_bad_batches,
    batches_of_one_run_in_one_transaction_see_each_other,
    events_after_pages_through_one_run_only,
    queued_firings_are_replaced_with_the_batch_that_changes_them,
    idempotency_records_are_written_with_their_run_and_expire,
    deleting_an_ended_run_removes_every_row_of_it_and_nothing_else,
    deleting_a_run_leaves_the_runs_next_to_it_in_key_order_intact,
    an_active_run_is_never_deleted,
    delete_terminal_before_takes_bounded_batches_of_old_ended_runs,
    runs_are_paged_newest_first_and_filtered,
);
