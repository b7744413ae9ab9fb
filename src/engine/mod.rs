//! The execution driver: owns each run, performs the machine's commands, commits every
//! transition to the store and publishes events only after the commit.
//!
//! One tokio task (a *run actor*) owns each live run. It feeds inputs to the sans-IO
//! [`RunMachine`](crate::fsm::RunMachine), gathers the events of one input into one commit
//! batch, commits it through the group-committing [`Committer`], publishes, and only then
//! calls planners and executors.

mod actor;
mod budget;
mod catalog_state;
mod clock;
mod cluster;
pub mod coverage;
mod driver;
mod error;
mod executor;
pub(crate) mod fanout;
pub(crate) mod follow;
mod idempotency;
#[cfg(feature = "client")]
mod query;
mod retention;
mod validation;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::catalog::{Capability, CapabilityStatus, CatalogError, Facet};
use crate::envelope::RunEnvelope;
use crate::fsm::{EventBody, EventKind, HitlDecision, RunError, RunEvent, RunOutcome};
use crate::ids::{IdKind, RunId, check_id};
use crate::planner::Planner;
use crate::policy::{Budgets, Pricing};
use crate::store::{Committer, HitlRecord, HitlStatus, RunHead, RunStatus, Store, StoreError};

pub use budget::ledger_of;
pub use catalog_state::CatalogState;
pub use cluster::{ClusterOptions, Route};
pub use error::EngineError;
pub use retention::{Compaction, RetentionOptions, RetentionTotals, SweepReport};

/// A run's events, replayed then live, ending after `complete`: see [`Engine::events`].
pub type EventStream = futures::stream::BoxStream<'static, Arc<RunEvent>>;

/// How a run ended: [`Engine::wait`]'s answer, taken from its `complete` event.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    /// The run.
    pub run_id: RunId,
    /// Completed, failed or cancelled.
    pub status: RunOutcome,
    /// The run's output, when completed.
    pub output: Option<Value>,
    /// Why it failed or was cancelled.
    pub error: Option<RunError>,
}
pub use executor::{
    AsyncBuiltinHandler, BuiltinHandler, CapabilityRefused, ExecError, Executors, NodeCall,
    NodeExecutor,
};

pub use idempotency::{IdempotencyKey, MAX_KEY_LEN as MAX_IDEMPOTENCY_KEY_LEN, Steer};

use actor::{Exit, Msg, RunActor};
use executor::panic_message;
use idempotency::{Claims, PendingRequest};

/// A human's answer to a HITL request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HitlAnswer {
    /// approve, reject, option or freeform.
    pub decision: HitlDecision,
    /// Chosen option, for `option`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub option_id: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Who answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub responder: Option<String>,
}

impl HitlAnswer {
    /// A plain decision.
    pub fn new(decision: HitlDecision) -> Self {
        Self {
            decision,
            option_id: None,
            text: None,
            responder: None,
        }
    }

    /// With free text.
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }
}

/// Counters the engine keeps (exported as metrics by the server).
#[derive(Debug, Default)]
pub struct EngineMetrics {
    events: [AtomicU64; EventKind::ALL.len()],
    /// Planner calls made.
    pub planner_calls: AtomicU64,
    /// Node attempts finished.
    pub node_attempts: AtomicU64,
    /// Total node attempt wall time in microseconds.
    pub node_micros: AtomicU64,
    /// Planner answers received (`plan_generated` events).
    pub planner_answers: AtomicU64,
    /// Total planner latency of those answers, in milliseconds.
    pub planner_millis: AtomicU64,
    /// Prompt tokens reported by model-backed planners.
    pub prompt_tokens: AtomicU64,
    /// Completion tokens reported by model-backed planners.
    pub completion_tokens: AtomicU64,
    /// Tokens executors reported for node attempts.
    pub node_tokens: AtomicU64,
    /// Cost spent (node attempts and priced planner tokens), in millionths of a cost unit.
    pub cost_micros: AtomicU64,
    /// Runs this engine took over from instances whose lease expired (in a cluster).
    pub runs_taken_over: AtomicU64,
    /// Runs another instance took from this one (a commit refused for want of ownership).
    pub runs_lost: AtomicU64,
    /// Events of runs other instances drive, published to this engine's followers.
    pub remote_events: AtomicU64,
}

impl EngineMetrics {
    fn count(&self, kind: EventKind) {
        if let Some(i) = EventKind::ALL.iter().position(|k| *k == kind) {
            self.events[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events committed so far, by kind.
    pub fn events_by_kind(&self) -> Vec<(EventKind, u64)> {
        EventKind::ALL
            .iter()
            .zip(&self.events)
            .map(|(k, n)| (*k, n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// How to build an [`Engine`].
pub struct EngineConfig {
    /// The store (redb by default).
    pub store: Arc<dyn Store>,
    /// The default planner (runs whose envelope names no planner).
    pub planner: Arc<dyn Planner>,
    /// More planners a run may choose by name (envelope field `planner`).
    pub planners: Vec<Arc<dyn Planner>>,
    /// Executors for node capabilities.
    pub executors: Executors,
    /// Facets registered at startup (in addition to those persisted in the store).
    pub facets: Vec<Facet>,
    /// Capabilities registered at startup (in addition to those persisted in the store).
    pub capabilities: Vec<Capability>,
    /// Capacity of the live event channel; a subscriber that lags further behind gets
    /// `Lagged` and must read the missed events from the store.
    pub event_buffer: usize,
    /// How long an idempotency key is remembered after the request it came with was applied
    /// (24 hours by default). A retry after that is applied as a new request.
    pub idempotency_ttl: std::time::Duration,
    /// When set, a background task deletes ended runs whose last update is older than this
    /// (see [`Engine::sweep_terminal_runs`]); active and paused runs are kept. Off by default:
    /// runs are kept until deleted.
    pub retain_terminal_runs: Option<Duration>,
    /// How retention sweeps: interval, batch size, compaction.
    pub retention: RetentionOptions,
    /// Token prices by model: what model tokens cost in runs' `cost` budgets (planner calls,
    /// and node attempts whose executor reports usage). Empty by default: tokens cost 0.
    pub pricing: Pricing,
    /// How the engine takes part in a cluster when its store is shared with other engines
    /// ([`Store::cluster`], the PostgreSQL store); ignored
    /// otherwise.
    pub cluster: ClusterOptions,
}

/// A run to create: its envelope and, optionally, an idempotency key.
#[derive(Debug, Clone)]
pub struct Submission {
    /// What to run.
    pub envelope: RunEnvelope,
    /// The client's key for this submission; a retry with the same key and envelope gets the
    /// same run.
    pub idempotency_key: Option<IdempotencyKey>,
    /// The caller's W3C `traceparent`: the run's spans join that trace. Stored with the run
    /// (see [`crate::telemetry`]) but not part of the idempotency fingerprint, so a retry
    /// from another span is still the same request. An invalid value is ignored.
    pub traceparent: Option<String>,
}

impl Submission {
    /// A submission without a key.
    pub fn new(envelope: RunEnvelope) -> Self {
        Self {
            envelope,
            idempotency_key: None,
            traceparent: None,
        }
    }

    /// With this parent trace context (a W3C `traceparent` header value).
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// With this idempotency key.
    pub fn idempotency_key(mut self, key: IdempotencyKey) -> Self {
        self.idempotency_key = Some(key);
        self
    }
}

impl From<RunEnvelope> for Submission {
    fn from(envelope: RunEnvelope) -> Self {
        Self::new(envelope)
    }
}

/// What [`Engine::submit_request`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    /// The run.
    pub run_id: RunId,
    /// True when an earlier submission with the same key created it.
    pub replayed: bool,
}

/// Where a run stands right after a steering request was applied: [`Engine::steer`]'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steered {
    /// Active or how it ended.
    pub status: RunStatus,
    /// The run machine's state.
    pub state: crate::fsm::RunState,
    /// True when the answer is that of an earlier request with the same key, which was not
    /// applied again.
    pub replayed: bool,
}

/// The default of [`EngineConfig::idempotency_ttl`]: 24 hours.
pub const DEFAULT_IDEMPOTENCY_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("planner", &self.planner.name())
            .field("executors", &self.executors)
            .field("facets", &self.facets.len())
            .field("capabilities", &self.capabilities.len())
            .field("retain_terminal_runs", &self.retain_terminal_runs)
            .finish()
    }
}

impl EngineConfig {
    /// A config with the given store and planner, no executors and an empty catalog.
    pub fn new(store: Arc<dyn Store>, planner: Arc<dyn Planner>) -> Self {
        Self {
            store,
            planner,
            planners: Vec::new(),
            executors: Executors::new(),
            facets: Vec::new(),
            capabilities: Vec::new(),
            event_buffer: 4096,
            idempotency_ttl: DEFAULT_IDEMPOTENCY_TTL,
            retain_terminal_runs: None,
            retention: RetentionOptions::default(),
            pricing: Pricing::default(),
            cluster: ClusterOptions::default(),
        }
    }
}

struct RunSlot {
    tx: mpsc::UnboundedSender<Msg>,
    task: JoinHandle<()>,
    /// Turns true when the actor's task has stopped (for whatever reason).
    ended: watch::Receiver<bool>,
}

pub(crate) struct Inner {
    store: Arc<dyn Store>,
    committer: Committer,
    planner: Arc<dyn Planner>,
    planners: HashMap<String, Arc<dyn Planner>>,
    executors: Executors,
    catalog: RwLock<Arc<CatalogState>>,
    fanout: fanout::Fanout,
    runs: Mutex<HashMap<RunId, RunSlot>>,
    /// Runs whose driver stopped without ending them, with the reason.
    stranded: Mutex<HashMap<RunId, String>>,
    /// Set by [`Engine::shutdown`] and [`Engine::abort`].
    closed: AtomicBool,
    metrics: EngineMetrics,
    /// Idempotency keys whose request is being applied.
    claims: Claims,
    idempotency_ttl: std::time::Duration,
    /// When expired idempotency records were last deleted (ms since the epoch).
    last_expiry: AtomicU64,
    retention: retention::Retention,
    pricing: Arc<Pricing>,
    /// The engine's part in a cluster, when its store is shared.
    membership: Option<cluster::Membership>,
}

impl Inner {
    /// The planner a run uses: the one its envelope names, else the default.
    pub(crate) fn planner_for(&self, name: Option<&str>) -> Option<Arc<dyn Planner>> {
        match name {
            None => Some(self.planner.clone()),
            Some(n) => self.planners.get(n).cloned(),
        }
    }

    /// Names of the planners runs may choose.
    pub(crate) fn planner_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.planners.keys().cloned().collect();
        names.sort();
        names
    }

    /// Whether an actor of this engine drives `run`.
    pub(crate) fn drives(&self, run: RunId) -> bool {
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&run)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn pricing(&self) -> Arc<Pricing> {
        self.pricing.clone()
    }

    pub(crate) fn catalog(&self) -> Arc<CatalogState> {
        self.catalog
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Publishes one commit of `run` (its events in seq order) after it is durable.
    fn publish(&self, run: RunId, events: &[Arc<RunEvent>]) {
        for event in events {
            self.record(event);
        }
        self.fanout.publish(run, events);
    }

    /// Counts and traces a committed event.
    fn record(&self, event: &RunEvent) {
        self.metrics.count(event.kind());
        if let EventBody::PlanGenerated {
            latency_ms, usage, ..
        } = &event.body
        {
            let m = &self.metrics;
            m.planner_answers.fetch_add(1, Ordering::Relaxed);
            m.planner_millis.fetch_add(*latency_ms, Ordering::Relaxed);
            if let Some(u) = usage {
                m.prompt_tokens
                    .fetch_add(u.prompt_tokens, Ordering::Relaxed);
                m.completion_tokens
                    .fetch_add(u.completion_tokens, Ordering::Relaxed);
            }
        }
        let (cost, tokens) = match &event.body {
            EventBody::PlanGenerated { cost, .. } => (cost.unwrap_or(0.0), 0),
            EventBody::NodeComplete { spend, .. }
            | EventBody::NodeError { spend, .. }
            | EventBody::ValidationError { spend, .. } => spend.map_or((0.0, 0), |s| {
                let tokens = s
                    .usage
                    .map_or(0, |u| u.prompt_tokens.saturating_add(u.completion_tokens));
                (s.cost, tokens)
            }),
            _ => (0.0, 0),
        };
        if cost > 0.0 {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let micros = (cost * 1e6).round() as u64;
            self.metrics
                .cost_micros
                .fetch_add(micros, Ordering::Relaxed);
        }
        if tokens > 0 {
            self.metrics
                .node_tokens
                .fetch_add(tokens, Ordering::Relaxed);
        }
        tracing::info!(
            run_id = %event.run_id,
            seq = event.seq,
            kind = %event.kind(),
            node_id = event.node_id.as_deref().unwrap_or(""),
            plan_version = event.plan_version,
            "run event"
        );
    }
}

/// The engine: submit runs, follow their events, steer them.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use flexrun::{demo, Engine, RedbStore, Durability, RunEnvelope};
///
/// let store = Arc::new(RedbStore::open("flexrun.redb", Durability::Fsync)?);
/// let engine = Engine::open(demo::config(store)).await?;
/// let envelope: RunEnvelope = serde_json::from_str(r#"{"objective":"a tagline",
///     "inputs":{"objectiveBrief":"a tagline for a bakery"},
///     "outputContract":{"mode":"facets","facets":["copyVariants"]}}"#)?;
/// let run = engine.submit(envelope).await?;
/// let result = engine.wait(run).await?;
/// println!("{:?}: {:?}", result.status, result.output);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("planner", &self.inner.planner.name())
            .finish()
    }
}

impl Engine {
    /// Opens the engine over its store: loads the catalog and resumes every non-terminal run.
    ///
    /// Facets and capabilities read back from the store are not held to the identifier
    /// grammar (they may predate it); configured ones are.
    ///
    /// # Errors
    /// Store errors, and [`EngineError::Catalog`] when a configured facet or capability is invalid.
    pub async fn open(config: EngineConfig) -> Result<Self, EngineError> {
        let store = config.store.clone();
        let membership = store
            .cluster()
            .map(|_| cluster::Membership::new(config.cluster.clone()));
        let mut commits = None;
        if let Some(membership) = &membership {
            let (address, lease) = (membership.options.address.clone(), membership.options.lease);
            // Listens to the others' commits before any run is driven or followed here.
            commits = Some(
                cluster::cluster_call(&store, move |c| {
                    c.join(address.as_deref(), lease)?;
                    Ok(c.commits())
                })
                .await?,
            );
        }
        let mut catalog = CatalogState::default();
        for facet in store.facets()? {
            catalog.facets.restore(facet)?;
        }
        for facet in config.facets {
            catalog.facets.register(facet)?;
        }
        for cap in store.capabilities()? {
            catalog.registry.restore(cap)?;
        }
        for cap in config.capabilities {
            check_executor(&config.executors, &cap)?;
            catalog.registry.register(cap)?;
        }
        let inner = Arc::new(Inner {
            committer: Committer::new(store.clone()),
            store,
            planners: config
                .planners
                .into_iter()
                .chain(std::iter::once(config.planner.clone()))
                .map(|p| (p.name().to_owned(), p))
                .collect(),
            planner: config.planner,
            executors: config.executors,
            catalog: RwLock::new(Arc::new(catalog)),
            fanout: fanout::Fanout::new(config.event_buffer),
            runs: Mutex::new(HashMap::new()),
            stranded: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            metrics: EngineMetrics::default(),
            claims: Claims::default(),
            idempotency_ttl: config.idempotency_ttl,
            last_expiry: AtomicU64::new(0),
            retention: retention::Retention::new(config.retention),
            pricing: Arc::new(config.pricing),
            membership,
        });
        let engine = Self { inner };
        for run_id in engine.inner.store.non_terminal_runs()? {
            match RunActor::recover(engine.inner.clone(), run_id).await {
                Ok(actor) => engine.spawn(actor),
                Err(e) => {
                    tracing::error!(run_id = %run_id, error = %e, "run could not be recovered")
                }
            }
        }
        if let (Some(membership), Some(commits)) = (&engine.inner.membership, commits) {
            membership.start(&engine.inner, commits);
            engine.take_over().await?;
        }
        if let Some(age) = config.retain_terminal_runs {
            engine
                .inner
                .retention
                .start(Arc::downgrade(&engine.inner), age);
        }
        Ok(engine)
    }

    /// Validates the envelope, creates the run (committing its first event) and starts it.
    ///
    /// Takes a [`RunEnvelope`], or a [`Submission`] to give it an idempotency key: a
    /// submission repeating an earlier one with the same key returns the earlier run's id
    /// instead of creating another run (see [`Engine::submit_request`]).
    ///
    /// # Errors
    /// [`EngineError::InvalidEnvelope`] naming the offending field; store errors; with a key,
    /// [`EngineError::IdempotencyKeyReused`] and [`EngineError::IdempotencyKeyInUse`].
    pub async fn submit(&self, submission: impl Into<Submission>) -> Result<RunId, EngineError> {
        self.submit_request(submission.into())
            .await
            .map(|submitted| submitted.run_id)
    }

    /// [`Engine::submit`], telling whether the run was created now or by an earlier
    /// submission with the same idempotency key.
    ///
    /// # Errors
    /// As [`Engine::submit`].
    pub async fn submit_request(&self, submission: Submission) -> Result<Submitted, EngineError> {
        // On a task of its own, so a caller that stops waiting (a client that hangs up)
        // cannot leave a committed run without its driver, nor release the key early.
        let engine = self.clone();
        tokio::spawn(async move { engine.create(submission).await })
            .await
            .unwrap_or_else(|e| Err(join_failed(&e)))
    }

    async fn create(&self, submission: Submission) -> Result<Submitted, EngineError> {
        let Submission {
            envelope,
            idempotency_key,
            traceparent,
        } = submission;
        let Some(key) = idempotency_key else {
            return self.create_run(envelope, traceparent, None).await;
        };
        let content =
            serde_json::to_value(&envelope).map_err(|e| EngineError::InvalidEnvelope {
                field: "$".to_owned(),
                message: e.to_string(),
            })?;
        let fingerprint = idempotency::fingerprint("create", None, &content);
        let _claim = self.claim(&key)?;
        // In a cluster, the key is held across the instances too until the run is created.
        let shared = self.claim_shared(&key).await?;
        let created = self
            .create_keyed(envelope, traceparent, &key, fingerprint)
            .await;
        if shared {
            self.release_shared(&key).await;
        }
        created
    }

    /// Creates the run (committing its first event, and the request's record) and starts it.
    async fn create_run(
        &self,
        mut envelope: RunEnvelope,
        traceparent: Option<String>,
        request: Option<PendingRequest>,
    ) -> Result<Submitted, EngineError> {
        if let Some(parent) = traceparent.filter(|t| crate::telemetry::is_valid_traceparent(t)) {
            envelope.metadata.insert(
                crate::telemetry::TRACEPARENT_METADATA_KEY.to_owned(),
                Value::String(parent),
            );
        }
        let actor = RunActor::create(self.inner.clone(), envelope, request).await?;
        let run_id = actor.run_id();
        self.spawn(actor);
        Ok(Submitted {
            run_id,
            replayed: false,
        })
    }

    /// [`Engine::create`] of a keyed submission whose key this engine holds: the earlier run
    /// if the key was used for it, else a new run.
    async fn create_keyed(
        &self,
        envelope: RunEnvelope,
        traceparent: Option<String>,
        key: &IdempotencyKey,
        fingerprint: String,
    ) -> Result<Submitted, EngineError> {
        if let Some(record) = self.remembered(key, &fingerprint)? {
            return Ok(Submitted {
                run_id: record.run_id,
                replayed: true,
            });
        }
        let request = PendingRequest {
            key: key.as_str().to_owned(),
            fingerprint,
        };
        self.create_run(envelope, traceparent, Some(request)).await
    }

    fn claim(&self, key: &IdempotencyKey) -> Result<idempotency::Claim, EngineError> {
        self.inner
            .claims
            .claim(key)
            .ok_or_else(|| EngineError::IdempotencyKeyInUse {
                key: key.as_str().to_owned(),
            })
    }

    /// The live record of `key`: `None` when there is none (or it expired, or its run was
    /// deleted), an error when it was made for another request.
    fn remembered(
        &self,
        key: &IdempotencyKey,
        fingerprint: &str,
    ) -> Result<Option<crate::store::RequestRecord>, EngineError> {
        let store = &self.inner.store;
        let now = crate::ids::Timestamp::now().millis();
        let ttl = u64::try_from(self.inner.idempotency_ttl.as_millis()).unwrap_or(u64::MAX);
        self.expire_requests(now, ttl);
        let Some(record) = store.request(key.as_str())? else {
            return Ok(None);
        };
        if record.created_at.millis().saturating_add(ttl) <= now
            || store.run_head(record.run_id)?.is_none()
        {
            return Ok(None);
        }
        if record.fingerprint != fingerprint {
            return Err(EngineError::IdempotencyKeyReused {
                key: key.as_str().to_owned(),
            });
        }
        Ok(Some(record))
    }

    /// Deletes expired idempotency records, at most once a minute and a bounded number at a
    /// time, so the table stays as large as the keys of the last `ttl`.
    fn expire_requests(&self, now: u64, ttl: u64) {
        const EVERY_MS: u64 = 60_000;
        const BATCH: usize = 1_000;
        let last = self.inner.last_expiry.load(Ordering::Relaxed);
        if now.saturating_sub(last) < EVERY_MS
            || self
                .inner
                .last_expiry
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let before = crate::ids::Timestamp(now.saturating_sub(ttl));
        match self.inner.store.expire_requests(before, BATCH) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "expired idempotency keys deleted"),
            Err(e) => tracing::warn!(error = %e, "expired idempotency keys not deleted"),
        }
    }

    /// Applies a steering request to a run, optionally with an idempotency key: a request
    /// repeating an earlier one with the same key is answered with the earlier outcome and not
    /// applied again. The [`answer_hitl`](Self::answer_hitl), [`signal`](Self::signal),
    /// [`cancel`](Self::cancel), [`pause`](Self::pause) and [`resume`](Self::resume) methods
    /// are this without a key.
    ///
    /// # Errors
    /// As the method for the request; with a key, [`EngineError::IdempotencyKeyReused`] and
    /// [`EngineError::IdempotencyKeyInUse`].
    pub async fn steer(
        &self,
        run_id: RunId,
        steer: Steer,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<Steered, EngineError> {
        if let Steer::Answer { request_id, .. } = &steer {
            check_id(IdKind::HitlRequest, "requestId", request_id)?;
        }
        let Some(key) = idempotency_key else {
            return self.control(run_id, steer, None).await;
        };
        // On a task of its own, so the key stays claimed until the request is applied even
        // when the caller stops waiting.
        let engine = self.clone();
        tokio::spawn(async move { engine.steer_keyed(run_id, steer, key).await })
            .await
            .unwrap_or_else(|e| Err(join_failed(&e)))
    }

    async fn steer_keyed(
        &self,
        run_id: RunId,
        steer: Steer,
        key: IdempotencyKey,
    ) -> Result<Steered, EngineError> {
        let fingerprint = steer.fingerprint(run_id);
        let _claim = self.claim(&key)?;
        if let Some(record) = self.remembered(&key, &fingerprint)? {
            return Ok(Steered {
                status: record.status,
                state: record.state,
                replayed: true,
            });
        }
        let request = PendingRequest {
            key: key.as_str().to_owned(),
            fingerprint,
        };
        self.control(run_id, steer, Some(request)).await
    }

    /// Starts the run's actor. The task that owns it outlives a panic in it: a dead driver
    /// is reported, and the run is failed with `DRIVER_FAILED` if that can be committed.
    fn spawn(&self, actor: RunActor) {
        let run_id = actor.run_id();
        let tx = actor.sender();
        let inner = self.inner.clone();
        let (ended_tx, ended) = watch::channel(false);
        let mut runs = self
            .inner
            .runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let task = tokio::spawn(async move {
            let exit = match AssertUnwindSafe(actor.run()).catch_unwind().await {
                Ok(exit) => exit,
                Err(payload) => {
                    let why = format!("it panicked: {}", panic_message(payload.as_ref()));
                    tracing::error!(run_id = %run_id, reason = %why, "run driver died; failing the run");
                    let failing = RunActor::fail_dead_driver(inner.clone(), run_id, &why);
                    match AssertUnwindSafe(failing).catch_unwind().await {
                        Ok(Ok(())) => Exit::Ended,
                        Ok(Err(e)) => Exit::Stranded(format!(
                            "its driver {why}, and failing the run did not commit: {e}"
                        )),
                        Err(again) => Exit::Stranded(format!(
                            "its driver {why}, and failing the run panicked too: {}",
                            panic_message(again.as_ref())
                        )),
                    }
                }
            };
            match exit {
                Exit::Ended | Exit::Shutdown => {}
                Exit::Lost(owner) => {
                    inner.metrics.runs_lost.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(run_id = %run_id, owner = owner.as_deref().unwrap_or("no instance"), "run taken over by another instance; this one stops driving it");
                }
                Exit::Stranded(reason) => {
                    tracing::error!(run_id = %run_id, reason = %reason, "run stranded until the engine reopens");
                    inner
                        .stranded
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(run_id, reason);
                }
            }
            inner
                .runs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&run_id);
            ended_tx.send_replace(true);
        });
        runs.insert(run_id, RunSlot { tx, task, ended });
    }

    /// What to answer about a run no actor drives (any more): how it ended, or why not.
    fn undriven(&self, run_id: RunId) -> Result<RunOutcome, EngineError> {
        if let Some(outcome) = outcome_of(self.head(run_id)?.status) {
            return Ok(outcome);
        }
        let stranded = self
            .inner
            .stranded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&run_id)
            .cloned();
        match stranded {
            Some(reason) => Err(EngineError::Stranded { run_id, reason }),
            None if self.inner.closed.load(Ordering::Acquire) => Err(EngineError::ShuttingDown),
            None => Err(EngineError::Stranded {
                run_id,
                reason: "no driver owns it in this engine".to_owned(),
            }),
        }
    }

    fn slot(&self, run_id: RunId) -> Option<(mpsc::UnboundedSender<Msg>, watch::Receiver<bool>)> {
        let runs = self
            .inner
            .runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        runs.get(&run_id)
            .map(|slot| (slot.tx.clone(), slot.ended.clone()))
    }

    /// Whether an actor of this engine drives `run_id` now.
    pub fn drives(&self, run_id: RunId) -> bool {
        self.inner.drives(run_id)
    }

    /// How many runs this engine's actors drive now.
    pub fn driven_runs(&self) -> usize {
        self.inner
            .runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// How this engine takes part in a cluster; `None` when its store is not shared.
    pub fn cluster_options(&self) -> Option<&ClusterOptions> {
        self.inner.membership.as_ref().map(|m| &m.options)
    }

    /// Live events of every run, published after commit.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RunEvent>> {
        self.inner.fanout.subscribe_all()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Counters.
    pub fn metrics(&self) -> &EngineMetrics {
        &self.inner.metrics
    }

    /// The current catalog.
    pub fn catalog(&self) -> Arc<CatalogState> {
        self.inner.catalog()
    }

    /// Registers (or replaces) a facet, persisting it.
    ///
    /// # Errors
    /// [`EngineError::Catalog`] when the facet is invalid; store errors.
    pub fn register_facet(&self, facet: Facet) -> Result<(), EngineError> {
        let mut guard = self
            .inner
            .catalog
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next = (**guard).clone();
        next.facets.register(facet.clone())?;
        self.inner.store.put_facet(&facet)?;
        *guard = Arc::new(next);
        Ok(())
    }

    /// Registers (or replaces) a capability, persisting it.
    ///
    /// # Errors
    /// [`EngineError::Catalog`] when the capability is invalid or names unknown facets;
    /// [`EngineError::ExecutorRefused`] when the executor of its type refuses its
    /// configuration ([`NodeExecutor::check_capability`]).
    pub fn register_capability(&self, capability: Capability) -> Result<(), EngineError> {
        check_executor(&self.inner.executors, &capability)?;
        let mut guard = self
            .inner
            .catalog
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        crate::catalog::check_capability_ids(
            &capability.capability_id,
            &capability.input_facets,
            &capability.output_facets,
        )
        .map_err(CatalogError::from)?;
        let mut next = (**guard).clone();
        let problems = crate::catalog::check_capability_facets(&capability, &next.facets);
        if crate::diagnostics::has_errors(&problems) {
            return Err(EngineError::CapabilityFacets {
                capability_id: capability.capability_id.clone(),
                diagnostics: problems,
            });
        }
        next.registry.register(capability.clone())?;
        self.inner.store.put_capability(&capability)?;
        *guard = Arc::new(next);
        Ok(())
    }

    /// Activates or deactivates a capability (new plans only; running nodes finish).
    ///
    /// # Errors
    /// [`EngineError::Catalog`] when the capability is unknown.
    pub fn set_capability_status(
        &self,
        capability_id: &str,
        status: CapabilityStatus,
    ) -> Result<(), EngineError> {
        let mut guard = self
            .inner
            .catalog
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next = (**guard).clone();
        next.registry.set_status(capability_id, status)?;
        if let Some(cap) = next.registry.get(capability_id) {
            self.inner.store.put_capability(cap)?;
        }
        *guard = Arc::new(next);
        Ok(())
    }

    async fn control(
        &self,
        run_id: RunId,
        control: Steer,
        request: Option<PendingRequest>,
    ) -> Result<Steered, EngineError> {
        let slot = match self.slot(run_id) {
            Some(slot) => Some(slot),
            // In a cluster the run may be driven elsewhere, or here after a takeover.
            None => self.elsewhere(run_id).await.map(|()| self.slot(run_id))?,
        };
        let Some((tx, mut ended)) = slot else {
            return self
                .undriven(run_id)
                .and(Err(EngineError::RunEnded(run_id)));
        };
        let (reply, rx) = oneshot::channel();
        let msg = Msg::Control {
            control,
            request,
            reply,
        };
        let answered = match tx.send(msg) {
            Ok(()) => rx.await.ok(),
            Err(_) => None,
        };
        match answered {
            Some(Err(EngineError::Store(StoreError::NotOwner { .. }))) => {}
            Some(result) => return result,
            None => {}
        }
        let _ = ended.wait_for(|stopped| *stopped).await;
        self.elsewhere(run_id).await?;
        self.undriven(run_id)
            .and(Err(EngineError::RunEnded(run_id)))
    }

    /// Answers a pending HITL request.
    ///
    /// # Errors
    /// [`EngineError::InvalidId`] (field `requestId`) when `request_id` breaks the identifier
    /// grammar; [`EngineError::UnknownHitlRequest`] when the request is unknown or already
    /// resolved; [`EngineError::RunNotFound`] / [`EngineError::RunEnded`].
    pub async fn answer_hitl(
        &self,
        run_id: RunId,
        request_id: &str,
        answer: HitlAnswer,
    ) -> Result<(), EngineError> {
        let answer = Steer::Answer {
            request_id: request_id.to_owned(),
            answer,
        };
        self.steer(run_id, answer, None).await.map(drop)
    }

    /// Sends an external signal; `manual` policies may fire on it.
    ///
    /// # Errors
    /// [`EngineError::RunNotFound`] / [`EngineError::RunEnded`].
    pub async fn signal(
        &self,
        run_id: RunId,
        name: &str,
        payload: Value,
    ) -> Result<(), EngineError> {
        self.control(
            run_id,
            Steer::Signal {
                name: name.to_owned(),
                payload,
            },
            None,
        )
        .await
        .map(drop)
    }

    /// Cancels a run.
    ///
    /// # Errors
    /// [`EngineError::RunNotFound`] / [`EngineError::RunEnded`]; [`EngineError::Stranded`]
    /// when no driver owns the unfinished run (as every control request does).
    pub async fn cancel(&self, run_id: RunId, reason: &str) -> Result<(), EngineError> {
        self.control(
            run_id,
            Steer::Cancel {
                reason: reason.to_owned(),
            },
            None,
        )
        .await
        .map(drop)
    }

    /// Pauses an executing run (in-flight nodes finish; nothing new dispatches).
    ///
    /// # Errors
    /// [`EngineError::IllegalTransition`] when the run is not executing.
    pub async fn pause(&self, run_id: RunId, reason: &str) -> Result<(), EngineError> {
        self.control(
            run_id,
            Steer::Pause {
                reason: reason.to_owned(),
            },
            None,
        )
        .await
        .map(drop)
    }

    /// Resumes a paused run.
    ///
    /// # Errors
    /// [`EngineError::IllegalTransition`] when the run is not paused or waits on a HITL answer.
    pub async fn resume(&self, run_id: RunId, reason: &str) -> Result<(), EngineError> {
        self.resume_with_budgets(run_id, reason, Budgets::new())
            .await
    }

    /// Resumes a paused run with larger (or new) budgets, e.g. one a spent budget paused: each
    /// given resource's limit becomes the given one, and `onBudget` policies on it may fire
    /// again. The new limits are recorded on the `run_resumed` event.
    ///
    /// # Errors
    /// As [`Engine::resume`].
    pub async fn resume_with_budgets(
        &self,
        run_id: RunId,
        reason: &str,
        budgets: Budgets,
    ) -> Result<(), EngineError> {
        self.control(
            run_id,
            Steer::Resume {
                reason: reason.to_owned(),
                budgets,
            },
            None,
        )
        .await
        .map(drop)
    }

    /// The run's head from the store.
    ///
    /// # Errors
    /// [`EngineError::RunNotFound`]; store errors.
    pub fn head(&self, run_id: RunId) -> Result<RunHead, EngineError> {
        self.inner
            .store
            .run_head(run_id)?
            .ok_or(EngineError::RunNotFound(run_id))
    }

    /// The run's events after `after_seq`, gap-free and in order: replayed from the store,
    /// then live, ending after `complete` (or when the engine shuts down). The same follower
    /// serves the SSE endpoint; a slow consumer never blocks the run and never misses an
    /// event (it falls back to the store when it lags behind the broadcast).
    ///
    /// # Errors
    /// [`EngineError::RunNotFound`]; store errors.
    pub fn events(&self, run_id: RunId, after_seq: u64) -> Result<EventStream, EngineError> {
        let rx = self.inner.fanout.subscribe(run_id);
        self.head(run_id)?;
        Ok(
            follow::follow(self.inner.store.clone(), rx, run_id, after_seq)
                .map(|f| f.event.clone())
                .boxed(),
        )
    }

    /// [`Engine::events`] as shared frames, for a caller that checked the run exists: each
    /// live event's SSE frame is encoded once for all of the run's followers.
    #[cfg(feature = "server")]
    pub(crate) fn follow_frames(
        &self,
        run_id: RunId,
        after_seq: u64,
    ) -> impl futures::Stream<Item = Arc<fanout::Frame>> + Send + 'static {
        let rx = self.inner.fanout.subscribe(run_id);
        follow::follow(self.inner.store.clone(), rx, run_id, after_seq)
    }

    /// Waits until the run ends and returns how, with its output or error.
    ///
    /// # Errors
    /// [`EngineError::RunNotFound`]; store errors; [`EngineError::ShuttingDown`] when the
    /// engine stops first; [`EngineError::Stranded`] when the run's driver stops without
    /// ending the run (a driver that panics fails the run instead, when that commits, and the
    /// result's status is [`RunOutcome::Failed`]).
    pub async fn wait(&self, run_id: RunId) -> Result<RunResult, EngineError> {
        let head = self.head(run_id)?;
        let mut events = self.events(run_id, head.last_seq.saturating_sub(1))?;
        // In a cluster, a run driven by another instance (now, or after a takeover) is
        // followed to its end.
        let shared = self.inner.membership.is_some() && !head.status.is_terminal();
        let mut ended = match self.slot(run_id) {
            Some((_, ended)) => Some(ended),
            None if shared => None,
            None => return self.settled(run_id),
        };
        loop {
            let stopped = async {
                match ended.as_mut() {
                    Some(ended) => drop(ended.wait_for(|stopped| *stopped).await),
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                event = events.next() => event,
                () = stopped => {
                    if shared && !self.head(run_id)?.status.is_terminal() && self.elsewhere(run_id).await.is_err() {
                        ended = None;
                        continue;
                    }
                    return self.settled(run_id);
                }
            };
            let Some(event) = event else {
                return Err(EngineError::ShuttingDown);
            };
            if let Some(result) = result_of(run_id, &event) {
                return Ok(result);
            }
        }
    }

    /// The result of a run no driver owns any more: its stored `complete`, else why not.
    fn settled(&self, run_id: RunId) -> Result<RunResult, EngineError> {
        let last = self.head(run_id)?.last_seq;
        let tail = self
            .inner
            .store
            .events_after(run_id, last.saturating_sub(1), 1)?;
        if let Some(result) = tail.iter().find_map(|e| result_of(run_id, e)) {
            return Ok(result);
        }
        self.undriven(run_id)?;
        self.settled_after_race(run_id)
    }

    fn settled_after_race(&self, run_id: RunId) -> Result<RunResult, EngineError> {
        let last = self.head(run_id)?.last_seq;
        let tail = self
            .inner
            .store
            .events_after(run_id, last.saturating_sub(1), 1)?;
        tail.iter()
            .find_map(|e| result_of(run_id, e))
            .ok_or(EngineError::ShuttingDown)
    }

    /// The run's HITL requests that wait for an answer, oldest first.
    ///
    /// # Errors
    /// [`EngineError::RunNotFound`]; store errors.
    pub fn pending_hitl(&self, run_id: RunId) -> Result<Vec<HitlRecord>, EngineError> {
        self.head(run_id)?;
        let mut open = self.inner.store.hitl_records(run_id)?;
        open.retain(|r| r.status == HitlStatus::Pending);
        Ok(open)
    }

    /// Stops the retention task (after its current batch) and every run actor after its
    /// current commit, and waits for them. Runs stay non-terminal in the store and resume
    /// when the engine is opened again.
    pub async fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.retention.stop().await;
        if let Some(membership) = &self.inner.membership {
            membership.stop().await;
        }
        let slots: Vec<RunSlot> = {
            let mut runs = self
                .inner
                .runs
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            runs.drain().map(|(_, slot)| slot).collect()
        };
        for slot in &slots {
            let _ = slot.tx.send(Msg::Shutdown);
        }
        for slot in slots {
            let _ = slot.task.await;
        }
        if self.inner.membership.is_some() {
            // Gives the runs to the other instances at once, instead of after the lease.
            if let Err(e) = cluster::cluster_call(&self.inner.store, |c| c.leave()).await {
                tracing::warn!(error = %e, "leaving the cluster failed; other instances take the runs over when the lease expires");
            }
        }
    }

    /// Aborts every run actor at once, without finishing the current round: what a crash
    /// does to the engine. Committed events stay committed; nothing uncommitted is
    /// published. Returns once every actor is gone.
    pub async fn abort(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.retention.stop().await;
        if let Some(membership) = &self.inner.membership {
            membership.stop().await;
        }
        let slots: Vec<RunSlot> = {
            let mut runs = self
                .inner
                .runs
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            runs.drain().map(|(_, slot)| slot).collect()
        };
        for slot in &slots {
            slot.task.abort();
        }
        for slot in slots {
            let _ = slot.task.await;
        }
    }
}

/// A request task that panicked or was cancelled (the runtime shutting down).
fn join_failed(e: &tokio::task::JoinError) -> EngineError {
    if e.is_panic() {
        tracing::error!(error = %e, "a request task panicked");
    }
    EngineError::ShuttingDown
}

/// Asks the executor registered for the capability's executor type whether it can serve it.
fn check_executor(executors: &Executors, capability: &Capability) -> Result<(), EngineError> {
    match executors.for_type(capability.executor.executor_type()) {
        Some(executor) => {
            executor
                .check_capability(capability)
                .map_err(|source| EngineError::ExecutorRefused {
                    capability_id: capability.capability_id.clone(),
                    source,
                })
        }
        None => Ok(()),
    }
}

fn result_of(run_id: RunId, event: &RunEvent) -> Option<RunResult> {
    match &event.body {
        EventBody::Complete {
            status,
            output,
            error,
        } => Some(RunResult {
            run_id,
            status: *status,
            output: output.clone(),
            error: error.clone(),
        }),
        _ => None,
    }
}

fn outcome_of(status: RunStatus) -> Option<RunOutcome> {
    match status {
        RunStatus::Active => None,
        RunStatus::Completed => Some(RunOutcome::Completed),
        RunStatus::Failed => Some(RunOutcome::Failed),
        RunStatus::Cancelled => Some(RunOutcome::Cancelled),
    }
}
