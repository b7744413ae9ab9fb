//! [`Cluster`] on PostgreSQL: instances and their leases in `flexrun_instances`, run owners in
//! `flexrun_runs.owner`, commit announcements on the `flexrun_commits` channel.
//!
//! Every lease time is the database's clock (`now()`), never a process's: instances' clocks
//! may differ, the database's is the one they share. An instance is live while its
//! `lease_until` is not past.
//!
//! A heartbeat that finds its lease expired renews it anyway and returns `false`: other
//! instances may have taken some of this one's runs in the meantime (its commits to those are
//! refused from then on, [`StoreError::NotOwner`]), but the runs nobody took are still its own
//! and it goes on driving them.

use std::sync::PoisonError;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls};

use super::commit::CHANNEL;
use super::{PostgresStore, col, param, run_id, uuid};
use crate::ids::RunId;
use crate::store::cluster::{Cluster, InstanceInfo, RemoteCommit, RunOwner};
use crate::store::error::StoreError;

/// How long [`Cluster::commits`] waits for the listening connection's first `LISTEN`.
const LISTEN_WAIT: Duration = Duration::from_secs(5);

/// The first and the longest wait before the listening connection reconnects.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// Reads an announcement `<run> <first seq> <last seq> <instance>`; `None` for one of `me`
/// or one that does not parse.
fn announcement(payload: &str, me: &str) -> Option<RemoteCommit> {
    let mut parts = payload.splitn(4, ' ');
    let run = parts.next()?.parse::<RunId>().ok()?;
    let first_seq = parts.next()?.parse().ok()?;
    let last_seq = parts.next()?.parse().ok()?;
    let instance = parts.next()?;
    (instance != me).then_some(RemoteCommit {
        run,
        first_seq,
        last_seq,
    })
}

/// Listens on the commit channel until the runtime stops, reconnecting with a growing pause
/// when the connection drops; `ready` hears of the first `LISTEN`.
async fn listen(
    config: tokio_postgres::Config,
    me: String,
    sender: broadcast::Sender<RemoteCommit>,
    ready: std::sync::mpsc::SyncSender<()>,
) {
    let mut ready = Some(ready);
    let mut backoff = BACKOFF.0;
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                let sql = format!("LISTEN {CHANNEL}");
                let subscribe = client.batch_execute(&sql);
                tokio::pin!(subscribe);
                let mut listening = false;
                loop {
                    tokio::select! {
                        result = &mut subscribe, if !listening => {
                            if result.is_err() {
                                break;
                            }
                            listening = true;
                            backoff = BACKOFF.0;
                            if let Some(ready) = ready.take() {
                                let _ = ready.send(());
                            }
                        }
                        message = messages.next() => match message {
                            Some(Ok(AsyncMessage::Notification(note))) => {
                                if let Some(commit) = announcement(note.payload(), &me) {
                                    let _ = sender.send(commit);
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => break,
                        },
                    }
                }
                tracing::warn!("the PostgreSQL store's commit listener lost its connection");
            }
            Err(err) => {
                tracing::warn!(error = %err, "the PostgreSQL store's commit listener cannot connect");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

impl PostgresStore {
    /// Starts the listening connection unless it runs, and waits (a bounded time) for its
    /// first `LISTEN`.
    fn start_listening(&self) {
        let mut started = self
            .inner
            .listening
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *started {
            return;
        }
        *started = true;
        let (ready, heard) = std::sync::mpsc::sync_channel(1);
        self.runtime().spawn(listen(
            self.inner.config.clone(),
            self.inner.instance_id.clone(),
            self.inner.announcements.clone(),
            ready,
        ));
        if heard.recv_timeout(LISTEN_WAIT).is_err() {
            tracing::warn!(
                "the PostgreSQL store's commit listener is not listening yet; announcements \
                 before it does are lost"
            );
        }
    }
}

impl Cluster for PostgresStore {
    fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    fn join(&self, address: Option<&str>, ttl: Duration) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO flexrun_instances (instance_id, address, joined_at, lease_until)
             VALUES ($1, $2, now(), now() + $3::bigint * interval '1 millisecond')
             ON CONFLICT (instance_id) DO UPDATE
             SET address = excluded.address, joined_at = excluded.joined_at,
                 lease_until = excluded.lease_until",
            vec![
                param(self.inner.instance_id.clone()),
                param(address.map(str::to_owned)),
                param(millis(ttl)),
            ],
        )
        .map(drop)
    }

    /// Renews the lease even when it had expired, and then returns `false`: the runs nobody
    /// took over meanwhile are still this instance's, and it goes on with them (its commits to
    /// the runs taken are refused).
    fn heartbeat(&self, ttl: Duration) -> Result<bool, StoreError> {
        let rows = self.rows(
            "UPDATE flexrun_instances i
             SET lease_until = now() + $2::bigint * interval '1 millisecond'
             FROM (SELECT lease_until FROM flexrun_instances WHERE instance_id = $1) old
             WHERE i.instance_id = $1
             RETURNING old.lease_until >= now()",
            vec![param(self.inner.instance_id.clone()), param(millis(ttl))],
        )?;
        match rows.first() {
            Some(row) => Ok(col::<Option<bool>>(row, 0)?.unwrap_or(false)),
            None => {
                // Removed (it left, or was never there): back in, with no address.
                self.execute(
                    "INSERT INTO flexrun_instances (instance_id, address, joined_at, lease_until)
                     VALUES ($1, NULL, now(), now() + $2::bigint * interval '1 millisecond')
                     ON CONFLICT (instance_id) DO UPDATE SET lease_until = excluded.lease_until",
                    vec![param(self.inner.instance_id.clone()), param(millis(ttl))],
                )?;
                Ok(false)
            }
        }
    }

    fn take_over(&self, limit: usize) -> Result<Vec<RunId>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut runs = self
            .rows(
                "UPDATE flexrun_runs SET owner = $1
                 WHERE run_id IN (
                    SELECT r.run_id FROM flexrun_runs r
                    WHERE r.status = 1 AND r.owner IS DISTINCT FROM $1
                      AND (r.owner IS NULL OR NOT EXISTS (
                          SELECT 1 FROM flexrun_instances i
                          WHERE i.instance_id = r.owner AND i.lease_until >= now()))
                    ORDER BY r.run_id LIMIT $2
                    FOR UPDATE SKIP LOCKED)
                 RETURNING run_id",
                vec![
                    param(self.inner.instance_id.clone()),
                    param(i64::try_from(limit).unwrap_or(i64::MAX)),
                ],
            )?
            .iter()
            .map(|row| run_id(row, 0))
            .collect::<Result<Vec<_>, _>>()?;
        runs.sort();
        Ok(runs)
    }

    fn owner(&self, run: RunId) -> Result<Option<RunOwner>, StoreError> {
        let rows = self.rows(
            "SELECT r.owner, i.address, coalesce(i.lease_until >= now(), false)
             FROM flexrun_runs r LEFT JOIN flexrun_instances i ON i.instance_id = r.owner
             WHERE r.run_id = $1",
            vec![param(uuid(run))],
        )?;
        rows.first()
            .map(|row| {
                Ok(RunOwner {
                    instance: col(row, 0)?,
                    address: col(row, 1)?,
                    live: col(row, 2)?,
                })
            })
            .transpose()
    }

    fn leave(&self) -> Result<(), StoreError> {
        self.execute(
            "WITH released AS (
                UPDATE flexrun_runs SET owner = NULL WHERE owner = $1 AND status = 1)
             DELETE FROM flexrun_instances WHERE instance_id = $1",
            vec![param(self.inner.instance_id.clone())],
        )
        .map(drop)
    }

    fn claim_key(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let claimed = self.execute(
            "INSERT INTO flexrun_claims (key, instance_id, until)
             VALUES ($1, $2, now() + $3::bigint * interval '1 millisecond')
             ON CONFLICT (key) DO UPDATE
             SET instance_id = excluded.instance_id, until = excluded.until
             WHERE flexrun_claims.until < now() OR flexrun_claims.instance_id = excluded.instance_id",
            vec![
                param(key.to_owned()),
                param(self.inner.instance_id.clone()),
                param(millis(ttl)),
            ],
        )?;
        Ok(claimed == 1)
    }

    fn release_key(&self, key: &str) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM flexrun_claims WHERE key = $1 AND instance_id = $2",
            vec![param(key.to_owned()), param(self.inner.instance_id.clone())],
        )
        .map(drop)
    }

    fn instances(&self) -> Result<Vec<InstanceInfo>, StoreError> {
        self.rows(
            "SELECT i.instance_id, i.address, i.lease_until >= now(),
                    (SELECT count(*) FROM flexrun_runs r
                     WHERE r.status = 1 AND r.owner = i.instance_id)
             FROM flexrun_instances i ORDER BY i.instance_id COLLATE \"C\"",
            Vec::new(),
        )?
        .iter()
        .map(|row| {
            Ok(InstanceInfo {
                instance: col(row, 0)?,
                address: col(row, 1)?,
                live: col(row, 2)?,
                runs: col::<i64>(row, 3)?.unsigned_abs(),
            })
        })
        .collect()
    }

    /// Starts the listening connection on the first call (and waits up to a few seconds for
    /// it to listen, so that commits after this call are heard).
    fn commits(&self) -> broadcast::Receiver<RemoteCommit> {
        let receiver = self.inner.announcements.subscribe();
        self.start_listening();
        receiver
    }
}
