//! The PostgreSQL store's commit: one transaction for all the batches of a group, in three
//! round trips.
//!
//! 1. `BEGIN` and the prefetch of what the checks need of every batch, pipelined: the stored
//!    heads of the batches' runs (`SELECT … FOR UPDATE`, so concurrent commits of a run
//!    serialize), the statuses of the node attempts and HITL records the batches write.
//! 2. The checks ([`prepare`]) and the ownership fence run on the calling thread against those
//!    facts, updated as each batch is taken; then every statement of every accepted batch goes
//!    out in one pipeline (each batch inside a savepoint for [`Store::commit_each`](super::Store::commit_each)).
//! 3. `COMMIT`.
//!
//! The database checks again what it can: a duplicate seq, an event or plan version that does
//! not follow a stored one (constraint violations), a head that moved or changed owner (the
//! compare-and-set update changes no row), a final node attempt or resolved HITL record (the
//! conditional upsert changes no row). Such a refusal fails the batch with
//! [`StoreError::InvariantViolation`]; in `commit_each` it is rolled back to its savepoint
//! alone, and the batches after it are checked and written again.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};
use uuid::Uuid;

use super::{Conn, Inner, Pending, PostgresStore, big, col, in_order, run_id, uuid};
use crate::ids::RunId;
use crate::store::codec::{HeadFacts, encode_value};
use crate::store::error::StoreError;
use crate::store::prepare::{Lookup, Prepared, prepare};
use crate::store::types::{CommitBatch, HitlStatus, NodeStatus, RunStatus};

const PREFETCH_HEADS: &str = "SELECT run_id, status, plan_version, last_seq, owner
    FROM flexrun_runs WHERE run_id = ANY($1) ORDER BY run_id FOR UPDATE";
const PREFETCH_NODES: &str = "SELECT n.run_id, n.node_id, n.attempt, n.status
    FROM flexrun_nodes n
    JOIN unnest($1::uuid[], $2::text[], $3::integer[]) AS k (run_id, node_id, attempt)
    ON n.run_id = k.run_id AND n.node_id = k.node_id AND n.attempt = k.attempt";
const PREFETCH_HITL: &str = "SELECT h.run_id, h.request_id, h.status
    FROM flexrun_hitl h
    JOIN unnest($1::uuid[], $2::text[]) AS k (run_id, request_id)
    ON h.run_id = k.run_id AND h.request_id = k.request_id";

const INSERT_RUN: &str = "INSERT INTO flexrun_runs
    (run_id, status, created_at, updated_at, last_seq, plan_version, head, envelope, queued, owner)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
/// The head's compare-and-set: it changes the row only while it is the head the checks saw
/// and this instance owns the run.
const UPDATE_RUN: &str = "UPDATE flexrun_runs SET
    status = $2, created_at = $3, updated_at = $4, last_seq = $5, plan_version = $6, head = $7,
    queued = CASE WHEN $8::boolean THEN $9::bytea ELSE queued END
    WHERE run_id = $1 AND last_seq = $10 AND status = $11 AND plan_version = $12 AND owner = $13";
const INSERT_EVENTS: &str = "INSERT INTO flexrun_events (run_id, seq, prev_seq, value)
    SELECT $1::uuid, e.seq, nullif(e.seq - 1, 0), e.value
    FROM unnest($2::bigint[], $3::bytea[]) AS e (seq, value)";
const INSERT_PLAN: &str = "INSERT INTO flexrun_plans (run_id, version, prev_version, value)
    VALUES ($1, $2::integer, nullif($2::integer - 1, 0), $3)";
const UPSERT_NODE: &str = "INSERT INTO flexrun_nodes (run_id, node_id, attempt, status, value)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (run_id, node_id, attempt) DO UPDATE
    SET status = excluded.status, value = excluded.value WHERE flexrun_nodes.status = 1";
const UPSERT_HITL: &str = "INSERT INTO flexrun_hitl (run_id, request_id, status, value)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (run_id, request_id) DO UPDATE
    SET status = excluded.status, value = excluded.value WHERE flexrun_hitl.status = 1";
const UPSERT_REQUEST: &str = "INSERT INTO flexrun_requests (key, run_id, created_at, value)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (key) DO UPDATE
    SET run_id = excluded.run_id, created_at = excluded.created_at, value = excluded.value";
const NOTIFY: &str = "SELECT pg_notify('flexrun_commits', $1)";

/// The channel commits are announced on.
pub(super) const CHANNEL: &str = "flexrun_commits";

/// What the prefetch reads: the batches' runs, node attempts and HITL records.
#[derive(Default)]
struct Keys {
    runs: Vec<Uuid>,
    node_runs: Vec<Uuid>,
    node_ids: Vec<String>,
    node_attempts: Vec<i32>,
    hitl_runs: Vec<Uuid>,
    hitl_ids: Vec<String>,
}

impl Keys {
    fn of(batches: &[CommitBatch]) -> Self {
        let mut keys = Self::default();
        let mut runs = BTreeSet::new();
        for batch in batches {
            runs.insert(uuid(batch.run_id));
            for node in &batch.nodes {
                if let Ok(attempt) = i32::try_from(node.attempt) {
                    keys.node_runs.push(uuid(batch.run_id));
                    keys.node_ids.push(node.node_id.clone());
                    keys.node_attempts.push(attempt);
                }
            }
            for record in &batch.hitl {
                keys.hitl_runs.push(uuid(batch.run_id));
                keys.hitl_ids.push(record.request_id.clone());
            }
        }
        keys.runs = runs.into_iter().collect();
        keys
    }
}

/// A stored head as the transaction sees it.
#[derive(Debug, Clone)]
struct Stored {
    facts: HeadFacts,
    owner: Option<String>,
}

/// What the transaction sees: the prefetched rows, updated with every batch it took.
#[derive(Default)]
struct Seen {
    heads: HashMap<RunId, Stored>,
    nodes: HashMap<(RunId, String, u32), NodeStatus>,
    hitl: HashMap<(RunId, String), HitlStatus>,
}

impl Lookup for Seen {
    fn head(&mut self, run: RunId) -> Result<Option<HeadFacts>, StoreError> {
        Ok(self.heads.get(&run).map(|stored| stored.facts))
    }

    fn plan_exists(&mut self, run: RunId, version: u32) -> Result<bool, StoreError> {
        // Plan versions are gap-free from 1 and the head names the latest.
        Ok(self
            .heads
            .get(&run)
            .is_some_and(|stored| version >= 1 && version <= stored.facts.plan_version))
    }

    fn node_status(
        &mut self,
        run: RunId,
        node_id: &str,
        attempt: u32,
    ) -> Result<Option<NodeStatus>, StoreError> {
        Ok(self.nodes.get(&(run, node_id.to_owned(), attempt)).copied())
    }

    fn hitl_status(
        &mut self,
        run: RunId,
        request_id: &str,
    ) -> Result<Option<HitlStatus>, StoreError> {
        Ok(self.hitl.get(&(run, request_id.to_owned())).copied())
    }
}

fn tag<T>(
    value: i16,
    what: &str,
    at: impl std::fmt::Display,
    from: fn(u8) -> Option<T>,
) -> Result<T, StoreError> {
    u8::try_from(value)
        .ok()
        .and_then(from)
        .ok_or_else(|| StoreError::corrupt(format!("{at}: {what} {value} unknown")))
}

impl Seen {
    fn read(heads: &[Row], nodes: &[Row], hitl: &[Row]) -> Result<Self, StoreError> {
        let mut seen = Self::default();
        for row in heads {
            let run = run_id(row, 0)?;
            let status = tag(
                col(row, 1)?,
                "run status",
                format!("runs[{run}]"),
                RunStatus::from_tag,
            )?;
            let facts = HeadFacts {
                status,
                plan_version: col::<i32>(row, 2)?.unsigned_abs(),
                last_seq: col::<i64>(row, 3)?.unsigned_abs(),
            };
            seen.heads.insert(
                run,
                Stored {
                    facts,
                    owner: col(row, 4)?,
                },
            );
        }
        for row in nodes {
            let run = run_id(row, 0)?;
            let node_id: String = col(row, 1)?;
            let attempt = col::<i32>(row, 2)?.unsigned_abs();
            let at = format!("nodes[{run}/{node_id}/{attempt}]");
            let status = tag(col(row, 3)?, "node status", at, NodeStatus::from_tag)?;
            seen.nodes.insert((run, node_id, attempt), status);
        }
        for row in hitl {
            let run = run_id(row, 0)?;
            let request_id: String = col(row, 1)?;
            let at = format!("hitl[{run}/{request_id}]");
            let status = tag(col(row, 2)?, "hitl status", at, HitlStatus::from_tag)?;
            seen.hitl.insert((run, request_id), status);
        }
        Ok(seen)
    }

    /// Records that `batch` was taken.
    fn take(&mut self, batch: &CommitBatch, me: &str) {
        let head = &batch.head;
        self.heads.insert(
            batch.run_id,
            Stored {
                facts: HeadFacts {
                    status: head.status,
                    plan_version: head.plan_version,
                    last_seq: head.last_seq,
                },
                owner: Some(me.to_owned()),
            },
        );
        for node in &batch.nodes {
            self.nodes.insert(
                (batch.run_id, node.node_id.clone(), node.attempt),
                node.status,
            );
        }
        for record in &batch.hitl {
            self.hitl
                .insert((batch.run_id, record.request_id.clone()), record.status);
        }
    }
}

/// The head the compare-and-set expects.
struct Expect {
    last_seq: i64,
    status: i16,
    plan_version: i32,
}

/// Everything one accepted batch writes, owned so that it can move onto the runtime.
struct Write {
    run_id: RunId,
    run: Uuid,
    /// `None` when the batch creates the run.
    expect: Option<Expect>,
    prepared: Prepared,
    status: i16,
    created_at: i64,
    updated_at: i64,
    last_seq: i64,
    plan_version: i32,
    /// Whether the batch replaces the queue, and with what (`None`: none queued).
    queue_set: bool,
    queued: Option<Vec<u8>>,
    seqs: Vec<i64>,
    plan: Option<i32>,
    nodes: Vec<(String, i32, i16)>,
    hitl: Vec<(String, i16)>,
    requests: Vec<(String, Uuid, i64, Vec<u8>)>,
    owner: String,
    /// The commit announcement, for a batch with events.
    notify: Option<String>,
    /// Value bytes, as [`StoreStats::bytes_written`](crate::store::StoreStats) counts them.
    bytes: u64,
}

fn int<T: TryFrom<u64>>(run: RunId, what: &str, value: u64) -> Result<T, StoreError> {
    T::try_from(value).map_err(|_| {
        StoreError::violation(
            run,
            format!("{what} {value} is beyond the database's range"),
        )
    })
}

/// Checks `batch` against what the transaction sees, fences it, and makes its write.
fn accept(seen: &mut Seen, batch: &CommitBatch, me: &str) -> Result<Write, StoreError> {
    let run = batch.run_id;
    let stored = seen.heads.get(&run).cloned();
    if let Some(stored) = &stored
        && stored.owner.as_deref() != Some(me)
    {
        return Err(StoreError::NotOwner {
            run,
            owner: stored.owner.clone(),
        });
    }
    let prepared = prepare(seen, batch)?;
    let expect = match &stored {
        Some(stored) => Some(Expect {
            last_seq: int(run, "last seq", stored.facts.last_seq)?,
            status: i16::from(stored.facts.status.tag()),
            plan_version: int(run, "plan version", u64::from(stored.facts.plan_version))?,
        }),
        None => None,
    };
    let (queue_set, queued) = match &batch.queued {
        Some(queued) if !queued.is_empty() => {
            let mut bytes = Vec::new();
            encode_value(queued, &mut bytes)?;
            (true, Some(bytes))
        }
        Some(_) => (true, None),
        None => (false, None),
    };
    let mut requests = Vec::with_capacity(batch.requests.len());
    for record in &batch.requests {
        let mut bytes = Vec::new();
        encode_value(record, &mut bytes)?;
        requests.push((
            record.key.clone(),
            uuid(record.run_id),
            big(record.created_at.millis()),
            bytes,
        ));
    }
    let bytes = prepared.bytes()
        + queued.as_ref().map_or(0, |q| q.len() as u64)
        + requests.iter().map(|r| r.3.len() as u64).sum::<u64>();
    let mut seqs = Vec::with_capacity(batch.events.len());
    for event in &batch.events {
        seqs.push(int(run, "event seq", event.seq)?);
    }
    let notify = match (batch.events.first(), batch.events.last()) {
        (Some(first), Some(last)) => Some(format!("{run} {} {} {me}", first.seq, last.seq)),
        _ => None,
    };
    let mut nodes = Vec::with_capacity(batch.nodes.len());
    for node in &batch.nodes {
        let attempt = int(run, "node attempt", u64::from(node.attempt))?;
        nodes.push((node.node_id.clone(), attempt, i16::from(node.status.tag())));
    }
    let head = &batch.head;
    let write = Write {
        run_id: run,
        run: uuid(run),
        expect,
        status: i16::from(head.status.tag()),
        created_at: big(head.created_at.millis()),
        updated_at: big(head.updated_at.millis()),
        last_seq: int(run, "last seq", head.last_seq)?,
        plan_version: int(run, "plan version", u64::from(head.plan_version))?,
        queue_set,
        queued,
        seqs,
        plan: match &batch.plan {
            Some(plan) => Some(int(run, "plan version", u64::from(plan.version))?),
            None => None,
        },
        nodes,
        hitl: batch
            .hitl
            .iter()
            .map(|h| (h.request_id.clone(), i16::from(h.status.tag())))
            .collect(),
        requests,
        owner: me.to_owned(),
        notify,
        bytes,
        prepared,
    };
    seen.take(batch, me);
    Ok(write)
}

/// What a statement of a write must do besides not failing.
#[derive(Clone, Copy)]
enum Check {
    Nothing,
    Head,
    Node(usize),
    Hitl(usize),
}

/// The error of a statement of batch `write` that the database refused, or `None` when the
/// failure is not the batch's (a broken connection, …).
fn refusal(write: &Write, err: &tokio_postgres::Error) -> Option<StoreError> {
    let db = err.as_db_error()?;
    let code = db.code();
    let what = if *code == SqlState::UNIQUE_VIOLATION {
        "a duplicate key"
    } else if *code == SqlState::FOREIGN_KEY_VIOLATION {
        "a missing predecessor or run"
    } else if *code == SqlState::CHECK_VIOLATION {
        "a failed check"
    } else {
        return None;
    };
    let constraint = db.constraint().unwrap_or("unnamed");
    let meaning = match constraint {
        "flexrun_runs_pkey" => "the run already exists",
        "flexrun_events_pkey" => "an event seq is already stored",
        "flexrun_events_prev_fkey" | "flexrun_events_follows" => {
            "an event does not follow the run's stored last event (seq gap)"
        }
        "flexrun_plans_pkey" => "the plan version is already stored",
        "flexrun_plans_prev_fkey" | "flexrun_plans_follows" => {
            "the plan version does not follow the stored latest version"
        }
        _ => "the batch breaks a constraint",
    };
    Some(StoreError::violation(
        write.run_id,
        format!(
            "the database refused the batch: {meaning} ({what}, constraint {constraint}: {})",
            db.message()
        ),
    ))
}

/// The statements a commit uses, prepared (and cached) on its connection.
struct Statements {
    insert_run: Statement,
    update_run: Statement,
    insert_events: Statement,
    insert_plan: Statement,
    upsert_node: Statement,
    upsert_hitl: Statement,
    upsert_request: Statement,
    notify: Statement,
}

impl Statements {
    async fn prepare(conn: &Conn) -> Result<Self, StoreError> {
        let [
            insert_run,
            update_run,
            insert_events,
            insert_plan,
            upsert_node,
            upsert_hitl,
            upsert_request,
            notify,
        ] = futures::future::try_join_all(
            [
                INSERT_RUN,
                UPDATE_RUN,
                INSERT_EVENTS,
                INSERT_PLAN,
                UPSERT_NODE,
                UPSERT_HITL,
                UPSERT_REQUEST,
                NOTIFY,
            ]
            .map(|sql| conn.prepare(sql)),
        )
        .await?
        .try_into()
        .map_err(|_| super::failure("statement count"))?;
        Ok(Self {
            insert_run,
            update_run,
            insert_events,
            insert_plan,
            upsert_node,
            upsert_hitl,
            upsert_request,
            notify,
        })
    }
}

/// A pipelined statement and what its row count must be.
type Op<'a> = (Check, Pending<'a, Result<u64, tokio_postgres::Error>>);

/// Appends the pipelined statements of one write to `out`.
fn push_statements<'a>(
    client: &'a tokio_postgres::Client,
    s: &'a Statements,
    w: &'a Write,
    events: &'a [&'a [u8]],
    out: &mut Vec<Op<'a>>,
) {
    let head = w.prepared.head();
    match &w.expect {
        None => {
            let envelope = w.prepared.envelope().unwrap_or_default();
            out.push((
                Check::Head,
                Box::pin(async move {
                    let params: [&(dyn ToSql + Sync); 10] = [
                        &w.run,
                        &w.status,
                        &w.created_at,
                        &w.updated_at,
                        &w.last_seq,
                        &w.plan_version,
                        &head,
                        &envelope,
                        &w.queued,
                        &w.owner,
                    ];
                    client.execute_raw(&s.insert_run, params).await
                }),
            ));
        }
        Some(expect) => {
            out.push((
                Check::Head,
                Box::pin(async move {
                    let params: [&(dyn ToSql + Sync); 13] = [
                        &w.run,
                        &w.status,
                        &w.created_at,
                        &w.updated_at,
                        &w.last_seq,
                        &w.plan_version,
                        &head,
                        &w.queue_set,
                        &w.queued,
                        &expect.last_seq,
                        &expect.status,
                        &expect.plan_version,
                        &w.owner,
                    ];
                    client.execute_raw(&s.update_run, params).await
                }),
            ));
        }
    }
    if !w.seqs.is_empty() {
        out.push((
            Check::Nothing,
            Box::pin(async move {
                let params: [&(dyn ToSql + Sync); 3] = [&w.run, &w.seqs, &events];
                client.execute_raw(&s.insert_events, params).await
            }),
        ));
    }
    if let (Some(version), Some(plan)) = (&w.plan, w.prepared.plan()) {
        out.push((
            Check::Nothing,
            Box::pin(async move {
                let params: [&(dyn ToSql + Sync); 3] = [&w.run, version, &plan];
                client.execute_raw(&s.insert_plan, params).await
            }),
        ));
    }
    for (i, ((node_id, attempt, status), value)) in
        w.nodes.iter().zip(w.prepared.nodes()).enumerate()
    {
        out.push((
            Check::Node(i),
            Box::pin(async move {
                let params: [&(dyn ToSql + Sync); 5] = [&w.run, node_id, attempt, status, &value];
                client.execute_raw(&s.upsert_node, params).await
            }),
        ));
    }
    for (i, ((request_id, status), value)) in w.hitl.iter().zip(w.prepared.hitl()).enumerate() {
        out.push((
            Check::Hitl(i),
            Box::pin(async move {
                let params: [&(dyn ToSql + Sync); 4] = [&w.run, request_id, status, &value];
                client.execute_raw(&s.upsert_hitl, params).await
            }),
        ));
    }
    for (key, run, created_at, value) in &w.requests {
        out.push((
            Check::Nothing,
            Box::pin(async move {
                let params: [&(dyn ToSql + Sync); 4] = [key, run, created_at, value];
                client.execute_raw(&s.upsert_request, params).await
            }),
        ));
    }
    if let Some(payload) = &w.notify {
        out.push((
            Check::Nothing,
            Box::pin(async move {
                let params: [&(dyn ToSql + Sync); 1] = [payload];
                client.execute_raw(&s.notify, params).await
            }),
        ));
    }
}

/// The error for a statement of `w` that changed no row where it had to change one.
fn unchanged(w: &Write, check: Check) -> Option<StoreError> {
    let message = match check {
        Check::Nothing => return None,
        Check::Head => format!(
            "the stored head moved or changed owner under the commit (compare-and-set at last \
             seq {} refused)",
            w.expect.as_ref().map_or(0, |e| e.last_seq)
        ),
        Check::Node(i) => format!(
            "node {} attempt {} is already final and cannot be rewritten",
            w.nodes[i].0, w.nodes[i].1
        ),
        Check::Hitl(i) => format!("hitl request {} is already resolved", w.hitl[i].0),
    };
    Some(StoreError::violation(w.run_id, message))
}

/// Sends every write's statements in one pipeline (each write inside savepoint
/// `s{first_savepoint + i}` when `first_savepoint` is given) and returns the first write the
/// database refused, with why.
async fn write(
    conn: Conn,
    writes: Vec<Write>,
    first_savepoint: Option<usize>,
) -> Result<(Conn, Option<(usize, StoreError)>), StoreError> {
    let prepared = Statements::prepare(&conn).await?;
    let events: Vec<Vec<&[u8]>> = writes
        .iter()
        .map(|w| w.prepared.events().collect())
        .collect();
    let savepoints: Vec<(String, String)> = match first_savepoint {
        Some(first) => (0..writes.len())
            .map(|i| {
                (
                    format!("SAVEPOINT s{}", first + i),
                    format!("RELEASE SAVEPOINT s{}", first + i),
                )
            })
            .collect(),
        None => Vec::new(),
    };
    let client = conn.client();
    let mut ops: Vec<Op<'_>> = Vec::new();
    let mut owners = Vec::new();
    for (i, w) in writes.iter().enumerate() {
        if let Some((savepoint, _)) = savepoints.get(i) {
            ops.push((
                Check::Nothing,
                Box::pin(async move { client.batch_execute(savepoint).await.map(|()| 0) }),
            ));
            owners.push(i);
        }
        let before = ops.len();
        push_statements(client, &prepared, w, &events[i], &mut ops);
        owners.extend(std::iter::repeat_n(i, ops.len() - before));
        if let Some((_, release)) = savepoints.get(i) {
            ops.push((
                Check::Nothing,
                Box::pin(async move { client.batch_execute(release).await.map(|()| 0) }),
            ));
            owners.push(i);
        }
    }
    let checks: Vec<Check> = ops.iter().map(|(check, _)| *check).collect();
    let results = in_order(ops.into_iter().map(|(_, op)| op).collect()).await;
    let mut failure = None;
    for ((result, check), &i) in results.into_iter().zip(checks).zip(&owners) {
        let w = &writes[i];
        let err = match result {
            Ok(1) => continue,
            Ok(_) => match unchanged(w, check) {
                Some(err) => err,
                None => continue,
            },
            Err(err) => match refusal(w, &err) {
                Some(refused) => refused,
                None => return Err(err.into()),
            },
        };
        failure = Some((i, err));
        break;
    }
    drop(events);
    Ok((conn, failure))
}

/// Opens the transaction (or rolls back to `savepoint` in it) and reads what the checks of
/// batches with `keys` need.
async fn prefetch(
    inner: Arc<Inner>,
    conn: Option<Conn>,
    savepoint: Option<usize>,
    keys: Keys,
) -> Result<(Conn, Seen), StoreError> {
    let mut conn = match conn {
        Some(conn) => conn,
        None => inner.conn().await?,
    };
    let [heads, nodes, hitl] = futures::future::try_join_all(
        [PREFETCH_HEADS, PREFETCH_NODES, PREFETCH_HITL].map(|sql| conn.prepare(sql)),
    )
    .await?
    .try_into()
    .map_err(|_| super::failure("statement count"))?;
    conn.in_transaction = true;
    let client = conn.client();
    let opening = match savepoint {
        Some(savepoint) => format!("ROLLBACK TO SAVEPOINT s{savepoint}"),
        None => "BEGIN".to_owned(),
    };
    type Rows<'a> = Pending<'a, Result<Vec<Row>, tokio_postgres::Error>>;
    let mut ops: Vec<Rows<'_>> = vec![Box::pin(async {
        client.batch_execute(&opening).await.map(|()| Vec::new())
    })];
    let want = [
        !keys.runs.is_empty(),
        !keys.node_ids.is_empty(),
        !keys.hitl_ids.is_empty(),
    ];
    let (runs, node_runs, node_ids, node_attempts, hitl_runs, hitl_ids) = (
        &keys.runs,
        &keys.node_runs,
        &keys.node_ids,
        &keys.node_attempts,
        &keys.hitl_runs,
        &keys.hitl_ids,
    );
    if want[0] {
        ops.push(Box::pin(async move { client.query(&heads, &[runs]).await }));
    }
    if want[1] {
        ops.push(Box::pin(async move {
            client
                .query(&nodes, &[node_runs, node_ids, node_attempts])
                .await
        }));
    }
    if want[2] {
        ops.push(Box::pin(async move {
            client.query(&hitl, &[hitl_runs, hitl_ids]).await
        }));
    }
    let mut results = in_order(ops).await.into_iter();
    results.next().unwrap_or_else(|| Ok(Vec::new()))?;
    let mut next = |wanted: bool| -> Result<Vec<Row>, StoreError> {
        match wanted {
            true => Ok(results.next().unwrap_or_else(|| Ok(Vec::new()))?),
            false => Ok(Vec::new()),
        }
    };
    let (heads, nodes, hitl) = (next(want[0])?, next(want[1])?, next(want[2])?);
    let seen = Seen::read(&heads, &nodes, &hitl)?;
    Ok((conn, seen))
}

impl PostgresStore {
    /// Writes `batches` in one transaction: all or nothing, or (`commit_each`) every batch
    /// that passes, reporting each batch's outcome.
    pub(super) fn write_batches(
        &self,
        batches: &[CommitBatch],
        all_or_nothing: bool,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let me = self.inner.instance_id.as_str();
        let inner = self.inner.clone();
        let keys = Keys::of(batches);
        let (mut conn, mut seen) = self.block(prefetch(inner, None, None, keys))?;
        let mut outcomes: Vec<Option<Result<(), StoreError>>> = vec![None; batches.len()];
        let (mut from, mut savepoint, mut written, mut bytes) = (0, 0, 0u64, 0u64);
        loop {
            let mut writes = Vec::new();
            let mut taken = Vec::new();
            for (i, batch) in batches.iter().enumerate().skip(from) {
                match accept(&mut seen, batch, me) {
                    Ok(write) => {
                        writes.push(write);
                        taken.push(i);
                    }
                    Err(err) if all_or_nothing => {
                        self.block(conn.end("ROLLBACK"))?;
                        return Err(err);
                    }
                    Err(err) => outcomes[i] = Some(Err(err)),
                }
            }
            if writes.is_empty() {
                break;
            }
            // A batch refused alone needs a savepoint when anything else is in the transaction.
            let savepoints = !all_or_nothing && (writes.len() > 1 || written > 0);
            let sizes: Vec<u64> = writes.iter().map(|w| w.bytes).collect();
            let first = savepoints.then_some(savepoint);
            savepoint += writes.len();
            let (back, failure) = self.block(write(conn, writes, first))?;
            conn = back;
            let good = failure.as_ref().map_or(taken.len(), |(j, _)| *j);
            for (k, &i) in taken.iter().enumerate().take(good) {
                outcomes[i] = Some(Ok(()));
                bytes += sizes[k];
                written += 1;
            }
            let Some((j, err)) = failure else { break };
            if all_or_nothing {
                self.block(conn.end("ROLLBACK"))?;
                return Err(err);
            }
            outcomes[taken[j]] = Some(Err(err));
            from = taken[j] + 1;
            let Some(first) = first else {
                // The refused batch was the transaction's only write.
                break;
            };
            let keys = Keys::of(&batches[from..]);
            let inner = self.inner.clone();
            (conn, seen) = self.block(prefetch(inner, Some(conn), Some(first + j), keys))?;
        }
        if written > 0 {
            self.block(conn.end("COMMIT"))?;
            self.inner.commits.fetch_add(1, Ordering::Relaxed);
            self.inner.batches.fetch_add(written, Ordering::Relaxed);
            self.inner.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        } else {
            self.block(conn.end("ROLLBACK"))?;
        }
        Ok(outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or_else(|| Err(super::failure("batch left undecided"))))
            .collect())
    }
}
