//! A [`Store`] on PostgreSQL that several engine instances share: [`PostgresStore`].
//!
//! The store keeps the values the other backends keep (the shared codec's bytes, checked by the
//! shared [`prepare`](super::prepare) before they are written) in `flexrun_*` tables, and has
//! the database enforce the log's invariants too: a primary key and a self-referencing foreign
//! key make every run's event seqs (and plan versions) unique and gap-free, the head is
//! rewritten by compare-and-set, and final node attempts and resolved HITL records are upserted
//! only over running or pending ones. See `docs/STORAGE.md`, section "PostgreSQL", for the
//! schema, the commit's round trips, ownership fencing and migrations.
//!
//! The [`Store`] methods are synchronous: each hands its queries to the store's own small tokio
//! runtime (two worker threads named `flexrun-pg`, driving a pool of connections) and waits for
//! the answer on a channel, so any thread may call them (a tokio worker inside
//! `block_in_place`, a `spawn_blocking` thread or a plain thread).
//!
//! The store is also a [`Cluster`](super::Cluster) (see `cluster.rs`): every run has an owner
//! instance, and a commit for a run this instance does not own is refused.

mod cluster;
mod commit;
#[cfg(test)]
mod testdb;
#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::runtime::Runtime;
use tokio::sync::broadcast;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{NoTls, Row};
use uuid::Uuid;

use super::Store;
use super::cluster::{Cluster, RemoteCommit};
use super::codec::{
    At, decode_envelope, decode_event, decode_head, decode_hitl, decode_node, decode_plan,
    decode_value, encode_value, envelope_objective,
};
use super::error::StoreError;
use super::query::{Pager, RunPage, RunQuery};
use super::types::{
    CommitBatch, HitlRecord, NodeRecord, QueuedFiring, RequestRecord, RunHead, RunStatus,
    StoreStats,
};
use crate::catalog::{Capability, Facet};
use crate::fsm::RunEvent;
use crate::graph::PlanSnapshot;
use crate::ids::{RunId, Timestamp};

#[cfg(test)]
pub(crate) use testdb::TestDb;

/// The schema migrations, in order: (version, name, SQL). A migration is never edited once
/// released; a change of the schema is a new file.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("migrations/V1__init.sql")),
    (2, "claims", include_str!("migrations/V2__claims.sql")),
];

/// The key of the advisory lock that serializes migrations (`"flexrun"` in ASCII).
const MIGRATION_LOCK: i64 = 0x0066_6c65_7872_756e;

/// How many announcements of other instances' commits [`Cluster::commits`] buffers per
/// receiver before the slowest one starts to lose them.
const ANNOUNCEMENTS: usize = 4096;

/// Runs the page scan of [`Store::runs_page`] reads per round trip at most.
const MAX_PAGE_ROWS: usize = 512;

/// How a [`PostgresStore`] connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// This instance's id in the cluster (see [`Cluster::instance_id`]): the owner of the runs
    /// it creates. `None` picks a random UUID, so a restarted process is a new instance that
    /// takes its predecessor's runs over only once that one's lease expired; give a stable id
    /// to get them back at once.
    pub instance_id: Option<String>,
    /// Most connections the store opens at once (at least 1), besides the one that listens
    /// for other instances' commits.
    pub pool_size: usize,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            instance_id: None,
            pool_size: 8,
        }
    }
}

/// A [`Store`] in a PostgreSQL database, shared by the engine instances that connect to it
/// (see [`Cluster`], and `docs/STORAGE.md`, section "PostgreSQL").
///
/// The [`Store`] methods are synchronous and may be called from any thread: each hands its
/// queries to the store's own small tokio runtime (two worker threads named `flexrun-pg`,
/// driving a pool of connections) and waits for the answer on a channel.
///
/// It enforces the invariants of [`RedbStore`](super::RedbStore) with the same shared checks
/// and stores the same encoded values, so [`Store::stats`] counts the same bytes. Every
/// commit is one database transaction (group commit: [`Store::commit_each`] writes all ready
/// batches in one), and the database refuses what the checks should have: an event seq that
/// does not follow the stored one, a plan version twice, a head that moved under the commit.
pub struct PostgresStore {
    inner: Arc<Inner>,
    /// The runtime driving the connections; `None` only while dropping.
    runtime: Option<Runtime>,
}

/// What the store's futures share.
struct Inner {
    pool: Pool,
    /// Where to connect, for the listening connection.
    config: tokio_postgres::Config,
    instance_id: String,
    commits: AtomicU64,
    batches: AtomicU64,
    bytes_written: AtomicU64,
    /// Announcements of other instances' commits.
    announcements: broadcast::Sender<RemoteCommit>,
    /// Whether the listening connection was started.
    listening: Mutex<bool>,
}

/// A store error that is only a message (a failure of the store's own machinery).
#[derive(Debug)]
struct Failure(String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

fn failure(message: impl Into<String>) -> StoreError {
    StoreError::Backend(Arc::new(Failure(message.into())))
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::Backend(Arc::new(err))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        Self::Backend(Arc::new(err))
    }
}

/// A query parameter that can move onto the runtime.
type Param = Box<dyn ToSql + Send + Sync>;

/// A future of the store's runtime that borrows a connection.
type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Polls every future in order until all are done, and returns their outputs in order.
///
/// tokio-postgres sends a query when its future is first polled, so this sends all of them
/// back to back on one connection (a pipeline) in the order given, which is the order the
/// server runs them in.
async fn in_order<T>(futures: Vec<Pending<'_, T>>) -> Vec<T> {
    let mut futures: Vec<_> = futures
        .into_iter()
        .map(futures::future::maybe_done)
        .collect();
    futures::future::poll_fn(|cx| {
        let mut done = true;
        for future in &mut futures {
            done &= Pin::new(future).poll(cx).is_ready();
        }
        if done { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    futures
        .iter_mut()
        .filter_map(|future| Pin::new(future).take_output())
        .collect()
}

/// A pooled connection. One dropped inside a transaction it did not end (an error or a panic
/// half-way) is closed instead of going back to the pool.
struct Conn {
    client: Option<Object>,
    in_transaction: bool,
}

impl Conn {
    fn client(&self) -> &tokio_postgres::Client {
        self.client.as_ref().expect("a connection until dropped")
    }

    async fn prepare(&self, sql: &str) -> Result<tokio_postgres::Statement, StoreError> {
        let client = self.client.as_ref().expect("a connection until dropped");
        Ok(client.prepare_cached(sql).await?)
    }

    /// Ends the transaction with `COMMIT` or `ROLLBACK`.
    async fn end(mut self, sql: &str) -> Result<(), StoreError> {
        self.client().batch_execute(sql).await?;
        self.in_transaction = false;
        Ok(())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.in_transaction
            && let Some(client) = self.client.take()
        {
            drop(Object::take(client));
        }
    }
}

impl Inner {
    async fn conn(&self) -> Result<Conn, StoreError> {
        Ok(Conn {
            client: Some(self.pool.get().await?),
            in_transaction: false,
        })
    }

    /// Runs `sql` with `params` and returns its rows.
    async fn rows(&self, sql: &str, params: &[Param]) -> Result<Vec<Row>, StoreError> {
        let conn = self.conn().await?;
        let statement = conn.prepare(sql).await?;
        let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as _).collect();
        Ok(conn.client().query(&statement, &params).await?)
    }
}

/// Column `index` of `row`.
fn col<'a, T: FromSql<'a>>(row: &'a Row, index: usize) -> Result<T, StoreError> {
    Ok(row.try_get(index)?)
}

fn uuid(run: RunId) -> Uuid {
    Uuid::from_bytes(*run.as_bytes())
}

fn run_id(row: &Row, index: usize) -> Result<RunId, StoreError> {
    Ok(RunId::from_bytes(*col::<Uuid>(row, index)?.as_bytes()))
}

/// `value` as a bigint, saturating (times and seqs beyond `i64::MAX` do not occur).
fn big(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn param(value: impl ToSql + Send + Sync + 'static) -> Param {
    Box::new(value)
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user@host:port/database`), brings its
    /// schema up to date and returns the store.
    ///
    /// The schema's migrations are applied in order in one transaction that holds an advisory
    /// lock, so instances connecting at once apply each one once; each is recorded in
    /// `flexrun_migrations`.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the URL is invalid, the runtime cannot start or the
    /// database cannot be reached or migrated; [`StoreError::UpgradeRequired`] when the
    /// database's schema is newer than this build knows.
    pub fn connect(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        let config: tokio_postgres::Config = url.parse()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("flexrun-pg")
            .enable_all()
            .build()
            .map_err(|err| StoreError::Backend(Arc::new(err)))?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .build()
            .map_err(|err| failure(format!("cannot build the connection pool: {err}")))?;
        let instance_id = options
            .instance_id
            .unwrap_or_else(|| Uuid::new_v4().to_string());
        let store = Self {
            inner: Arc::new(Inner {
                pool,
                config,
                instance_id,
                commits: AtomicU64::new(0),
                batches: AtomicU64::new(0),
                bytes_written: AtomicU64::new(0),
                announcements: broadcast::channel(ANNOUNCEMENTS).0,
                listening: Mutex::new(false),
            }),
            runtime: Some(runtime),
        };
        let inner = store.inner.clone();
        store.block(async move { migrate(&inner).await })?;
        Ok(store)
    }

    fn runtime(&self) -> &Runtime {
        self.runtime.as_ref().expect("a runtime until dropped")
    }

    /// Runs `future` on the store's runtime and waits for it on this thread.
    fn block<T: Send + 'static>(
        &self,
        future: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime().spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(failure(
                "the PostgreSQL store's task ended without an answer",
            ))
        })
    }

    /// Runs `sql` with `params` and returns its rows.
    fn rows(&self, sql: &'static str, params: Vec<Param>) -> Result<Vec<Row>, StoreError> {
        let inner = self.inner.clone();
        self.block(async move { inner.rows(sql, &params).await })
    }

    /// Runs `sql` with `params` and returns how many rows it changed.
    fn execute(&self, sql: &'static str, params: Vec<Param>) -> Result<u64, StoreError> {
        let inner = self.inner.clone();
        self.block(async move {
            let conn = inner.conn().await?;
            let statement = conn.prepare(sql).await?;
            let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as _).collect();
            Ok(conn.client().execute(&statement, &params).await?)
        })
    }

    /// The head of a row holding `run_id, head, envelope` from column `at` on.
    fn head_of(row: &Row, at: usize) -> Result<(RunId, RunHead), StoreError> {
        let run = run_id(row, at)?;
        let objective = envelope_objective(col(row, at + 2)?, run)?;
        Ok((run, decode_head(col(row, at + 1)?, run, objective)?))
    }

    fn catalog<T: DeserializeOwned>(
        &self,
        sql: &'static str,
        table: &'static str,
    ) -> Result<Vec<T>, StoreError> {
        self.rows(sql, Vec::new())?
            .iter()
            .map(|row| decode_value(col(row, 1)?, At::Catalog(table, col(row, 0)?)))
            .collect()
    }

    fn put_catalog(
        &self,
        sql: &'static str,
        key: String,
        value: &impl serde::Serialize,
    ) -> Result<(), StoreError> {
        let mut bytes = Vec::new();
        encode_value(value, &mut bytes)?;
        self.execute(sql, vec![param(key), param(bytes)]).map(drop)
    }

    /// Deletes every row of the runs `runs` on `conn`, children first (one statement a table,
    /// pipelined).
    async fn delete_rows(conn: &Conn, runs: &[Uuid]) -> Result<(), StoreError> {
        const DELETES: [&str; 5] = [
            "DELETE FROM flexrun_events WHERE run_id = ANY($1)",
            "DELETE FROM flexrun_plans WHERE run_id = ANY($1)",
            "DELETE FROM flexrun_nodes WHERE run_id = ANY($1)",
            "DELETE FROM flexrun_hitl WHERE run_id = ANY($1)",
            "DELETE FROM flexrun_runs WHERE run_id = ANY($1)",
        ];
        let statements =
            futures::future::try_join_all(DELETES.iter().map(|sql| conn.prepare(sql))).await?;
        let deletes = statements
            .iter()
            .map(|statement| -> Pending<'_, _> {
                Box::pin(async move { conn.client().execute(statement, &[&runs]).await })
            })
            .collect();
        for result in in_order(deletes).await {
            result?;
        }
        Ok(())
    }
}

/// Brings the schema up to date in one transaction that holds the migration lock, so that
/// instances connecting at once apply each migration once.
async fn migrate(inner: &Inner) -> Result<(), StoreError> {
    let mut conn = inner.conn().await?;
    conn.in_transaction = true;
    let client = conn.client();
    client.batch_execute("BEGIN").await?;
    client
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS flexrun_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
    let found: i32 = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM flexrun_migrations",
            &[],
        )
        .await?
        .try_get(0)?;
    let latest = MIGRATIONS.last().map_or(0, |(version, _, _)| *version);
    if found > latest {
        conn.end("ROLLBACK").await?;
        return Err(StoreError::UpgradeRequired {
            found: found.unsigned_abs(),
            expected: latest.unsigned_abs(),
        });
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > found) {
        client.batch_execute(sql).await?;
        client
            .execute(
                "INSERT INTO flexrun_migrations (version, name, applied_at) VALUES ($1, $2, now())",
                &[version, name],
            )
            .await?;
    }
    conn.end("COMMIT").await
}

impl Store for PostgresStore {
    fn commit(&self, batches: &[CommitBatch]) -> Result<(), StoreError> {
        self.write_batches(batches, true).map(drop)
    }

    fn commit_each(
        &self,
        batches: &[CommitBatch],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        self.write_batches(batches, false)
    }

    fn run_head(&self, run: RunId) -> Result<Option<RunHead>, StoreError> {
        let rows = self.rows(
            "SELECT run_id, head, envelope FROM flexrun_runs WHERE run_id = $1",
            vec![param(uuid(run))],
        )?;
        rows.first()
            .map(|row| Self::head_of(row, 0).map(|(_, head)| head))
            .transpose()
    }

    fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<(RunId, RunHead)>, StoreError> {
        let status = status.map(|status| i16::from(status.tag()));
        self.rows(
            "SELECT run_id, head, envelope FROM flexrun_runs
             WHERE $1::smallint IS NULL OR status = $1 ORDER BY run_id",
            vec![param(status)],
        )?
        .iter()
        .map(|row| Self::head_of(row, 0))
        .collect()
    }

    fn runs_page(&self, query: &RunQuery) -> Result<RunPage, StoreError> {
        let mut pager = Pager::new(query);
        let mut upper = query.upper();
        let mut rows = (query.limit.max(1) + 1).min(MAX_PAGE_ROWS);
        loop {
            let page = self.rows(
                "SELECT run_id, status, head, envelope FROM flexrun_runs
                 WHERE $1::uuid IS NULL OR run_id < $1 ORDER BY run_id DESC LIMIT $2",
                vec![param(upper.map(uuid)), param(rows as i64)],
            )?;
            for row in &page {
                let run = run_id(row, 0)?;
                upper = Some(run);
                let go_on = pager.offer(
                    run,
                    || {
                        let tag: i16 = col(row, 1)?;
                        u8::try_from(tag)
                            .ok()
                            .and_then(RunStatus::from_tag)
                            .ok_or_else(|| {
                                StoreError::corrupt(format!("runs[{run}]: status {tag} unknown"))
                            })
                    },
                    || {
                        let objective = envelope_objective(col(row, 3)?, run)?;
                        decode_head(col(row, 2)?, run, objective)
                    },
                    || decode_envelope(col(row, 3)?, run).map(Some),
                )?;
                if !go_on {
                    return Ok(pager.finish());
                }
            }
            if page.len() < rows {
                return Ok(pager.finish());
            }
            rows = (rows * 2).min(MAX_PAGE_ROWS);
        }
    }

    fn envelope(&self, run: RunId) -> Result<Option<Value>, StoreError> {
        let rows = self.rows(
            "SELECT envelope FROM flexrun_runs WHERE run_id = $1",
            vec![param(uuid(run))],
        )?;
        rows.first()
            .map(|row| decode_envelope(col(row, 0)?, run))
            .transpose()
    }

    fn events_after(
        &self,
        run: RunId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<RunEvent>, StoreError> {
        let Ok(after) = i64::try_from(after_seq) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.rows(
            "SELECT seq, value FROM flexrun_events WHERE run_id = $1 AND seq > $2
             ORDER BY seq LIMIT $3",
            vec![
                param(uuid(run)),
                param(after),
                param(i64::try_from(limit).unwrap_or(i64::MAX)),
            ],
        )?
        .iter()
        .map(|row| {
            let seq: i64 = col(row, 0)?;
            decode_event(col(row, 1)?, run, seq.unsigned_abs())
        })
        .collect()
    }

    fn plan_version(&self, run: RunId, version: u32) -> Result<Option<PlanSnapshot>, StoreError> {
        let Ok(wanted) = i32::try_from(version) else {
            return Ok(None);
        };
        let rows = self.rows(
            "SELECT value FROM flexrun_plans WHERE run_id = $1 AND version = $2",
            vec![param(uuid(run)), param(wanted)],
        )?;
        rows.first()
            .map(|row| decode_plan(col(row, 0)?, run, version))
            .transpose()
    }

    fn plan_versions(&self, run: RunId) -> Result<Vec<u32>, StoreError> {
        self.rows(
            "SELECT version FROM flexrun_plans WHERE run_id = $1 ORDER BY version",
            vec![param(uuid(run))],
        )?
        .iter()
        .map(|row| Ok(col::<i32>(row, 0)?.unsigned_abs()))
        .collect()
    }

    fn latest_plan(&self, run: RunId) -> Result<Option<PlanSnapshot>, StoreError> {
        let rows = self.rows(
            "SELECT version, value FROM flexrun_plans WHERE run_id = $1
             ORDER BY version DESC LIMIT 1",
            vec![param(uuid(run))],
        )?;
        rows.first()
            .map(|row| decode_plan(col(row, 1)?, run, col::<i32>(row, 0)?.unsigned_abs()))
            .transpose()
    }

    fn node_records(&self, run: RunId) -> Result<Vec<NodeRecord>, StoreError> {
        self.rows(
            "SELECT node_id, attempt, value FROM flexrun_nodes WHERE run_id = $1
             ORDER BY node_id COLLATE \"C\", attempt",
            vec![param(uuid(run))],
        )?
        .iter()
        .map(|row| {
            let attempt: i32 = col(row, 1)?;
            decode_node(col(row, 2)?, run, col(row, 0)?, attempt.unsigned_abs())
        })
        .collect()
    }

    fn hitl_records(&self, run: RunId) -> Result<Vec<HitlRecord>, StoreError> {
        self.rows(
            "SELECT request_id, value FROM flexrun_hitl WHERE run_id = $1
             ORDER BY request_id COLLATE \"C\"",
            vec![param(uuid(run))],
        )?
        .iter()
        .map(|row| decode_hitl(col(row, 1)?, run, col(row, 0)?))
        .collect()
    }

    /// The active runs this instance owns (for a store no other instance shares, every active
    /// run it created).
    fn non_terminal_runs(&self) -> Result<Vec<RunId>, StoreError> {
        self.rows(
            "SELECT run_id FROM flexrun_runs WHERE status = 1 AND owner = $1 ORDER BY run_id",
            vec![param(self.inner.instance_id.clone())],
        )?
        .iter()
        .map(|row| run_id(row, 0))
        .collect()
    }

    fn queued_firings(&self, run: RunId) -> Result<Vec<QueuedFiring>, StoreError> {
        let rows = self.rows(
            "SELECT queued FROM flexrun_runs WHERE run_id = $1",
            vec![param(uuid(run))],
        )?;
        match rows
            .first()
            .map(|row| col::<Option<&[u8]>>(row, 0))
            .transpose()?
        {
            Some(Some(bytes)) => decode_value(bytes, At::Queued(run)),
            Some(None) | None => Ok(Vec::new()),
        }
    }

    fn request(&self, key: &str) -> Result<Option<RequestRecord>, StoreError> {
        let rows = self.rows(
            "SELECT value FROM flexrun_requests WHERE key = $1",
            vec![param(key.to_owned())],
        )?;
        rows.first()
            .map(|row| decode_value(col(row, 0)?, At::Request(key)))
            .transpose()
    }

    fn expire_requests(&self, before: Timestamp, limit: usize) -> Result<usize, StoreError> {
        if limit == 0 {
            return Ok(0);
        }
        let deleted = self.execute(
            "DELETE FROM flexrun_requests WHERE key IN (
                SELECT key FROM flexrun_requests WHERE created_at < $1
                ORDER BY key LIMIT $2 FOR UPDATE SKIP LOCKED)",
            vec![
                param(big(before.millis())),
                param(i64::try_from(limit).unwrap_or(i64::MAX)),
            ],
        )?;
        Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
    }

    fn delete_run(&self, run: RunId) -> Result<bool, StoreError> {
        let inner = self.inner.clone();
        self.block(async move {
            let mut conn = inner.conn().await?;
            conn.in_transaction = true;
            let lock = conn
                .prepare("SELECT status FROM flexrun_runs WHERE run_id = $1 FOR UPDATE")
                .await?;
            let (begin, rows) = futures::future::join(
                conn.client().batch_execute("BEGIN"),
                conn.client().query(&lock, &[&uuid(run)]),
            )
            .await;
            begin?;
            let status = match rows?.first() {
                None => None,
                Some(row) => Some(col::<i16>(row, 0)?),
            };
            match status {
                None => {
                    conn.end("ROLLBACK").await?;
                    Ok(false)
                }
                Some(1) => {
                    conn.end("ROLLBACK").await?;
                    Err(StoreError::RunActive { run })
                }
                Some(_) => {
                    Self::delete_rows(&conn, &[uuid(run)]).await?;
                    conn.end("COMMIT").await?;
                    Ok(true)
                }
            }
        })
    }

    fn delete_terminal_before(
        &self,
        cutoff: Timestamp,
        limit: usize,
        skip: &dyn Fn(RunId) -> bool,
    ) -> Result<Vec<RunId>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let inner = self.inner.clone();
        let mut conn = self.block(async move {
            let mut conn = inner.conn().await?;
            conn.in_transaction = true;
            conn.client().batch_execute("BEGIN").await?;
            Ok(conn)
        })?;
        // Candidates are read (and locked) in pages, in run-id order, on this thread's side of
        // the transaction so that `skip` is asked here; the rows are deleted at the end.
        let cutoff = big(cutoff.millis());
        let page = limit.clamp(16, MAX_PAGE_ROWS);
        let mut after: Option<Uuid> = None;
        let mut chosen = Vec::new();
        loop {
            let (back, rows) = self.block(async move {
                let statement = conn
                    .prepare(
                        "SELECT run_id FROM flexrun_runs
                         WHERE status <> 1 AND updated_at < $1 AND ($2::uuid IS NULL OR run_id > $2)
                         ORDER BY run_id LIMIT $3 FOR UPDATE",
                    )
                    .await?;
                let rows = conn
                    .client()
                    .query(&statement, &[&cutoff, &after, &(page as i64)])
                    .await?;
                Ok((conn, rows))
            })?;
            conn = back;
            for row in &rows {
                let run = run_id(row, 0)?;
                after = Some(uuid(run));
                if chosen.len() < limit && !skip(run) {
                    chosen.push(run);
                }
            }
            if chosen.len() == limit || rows.len() < page {
                break;
            }
        }
        let runs: Vec<Uuid> = chosen.iter().copied().map(uuid).collect();
        self.block(async move {
            if !runs.is_empty() {
                Self::delete_rows(&conn, &runs).await?;
            }
            conn.end("COMMIT").await
        })?;
        Ok(chosen)
    }

    fn put_facet(&self, facet: &Facet) -> Result<(), StoreError> {
        self.put_catalog(
            "INSERT INTO flexrun_facets (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            facet.name.clone(),
            facet,
        )
    }

    fn facets(&self) -> Result<Vec<Facet>, StoreError> {
        self.catalog(
            "SELECT name, value FROM flexrun_facets ORDER BY name COLLATE \"C\"",
            "facets",
        )
    }

    fn put_capability(&self, capability: &Capability) -> Result<(), StoreError> {
        self.put_catalog(
            "INSERT INTO flexrun_capabilities (id, value) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET value = excluded.value",
            capability.capability_id.clone(),
            capability,
        )
    }

    fn capabilities(&self) -> Result<Vec<Capability>, StoreError> {
        self.catalog(
            "SELECT id, value FROM flexrun_capabilities ORDER BY id COLLATE \"C\"",
            "capabilities",
        )
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.inner.commits.load(Ordering::Relaxed),
            batches: self.inner.batches.load(Ordering::Relaxed),
            bytes_written: self.inner.bytes_written.load(Ordering::Relaxed),
        }
    }

    fn cluster(&self) -> Option<&dyn Cluster> {
        Some(self)
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks on its tasks, which panics inside async code; the store may
        // be dropped there.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("instance_id", &self.inner.instance_id)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
