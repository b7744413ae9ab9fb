//! The execution driver: owns each run, performs the machine's commands, commits every
//! transition to the store and publishes events only after the commit.
//!
//! One tokio task (a *run actor*) owns each live run. It feeds inputs to the sans-IO
//! [`RunMachine`](crate::fsm::RunMachine), gathers the events of one input into one commit
//! batch, commits it through the group-committing [`Committer`], publishes, and only then
//! calls planners and executors.

mod actor;
mod catalog_state;
mod executor;
pub(crate) mod follow;
#[cfg(feature = "client")]
mod query;
mod validation;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use futures::{FutureExt, StreamExt};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::catalog::{Capability, CapabilityStatus, CatalogError, Facet};
use crate::diagnostics::Diagnostic;
use crate::envelope::RunEnvelope;
use crate::fsm::FsmError;
use crate::fsm::{EventBody, EventKind, HitlDecision, RunError, RunEvent, RunOutcome};
use crate::ids::{IdError, IdKind, RunId, check_id};
use crate::planner::Planner;
use crate::policy::PolicyError;
use crate::store::{Committer, HitlRecord, HitlStatus, RunHead, RunStatus, Store, StoreError};

pub use catalog_state::CatalogState;

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
    AsyncBuiltinHandler, BuiltinHandler, ExecError, Executors, NodeCall, NodeExecutor,
};

use actor::{Control, Exit, Msg, RunActor};
use executor::panic_message;

/// Errors of the engine's public API, split by what a caller does about them.
///
/// - the request is wrong — fix it: [`InvalidEnvelope`](Self::InvalidEnvelope),
///   [`InvalidPolicies`](Self::InvalidPolicies), [`Catalog`](Self::Catalog),
///   [`CapabilityFacets`](Self::CapabilityFacets), [`InvalidId`](Self::InvalidId);
/// - the run is not where the request needs it — look again, maybe retry later:
///   [`RunNotFound`](Self::RunNotFound), [`RunEnded`](Self::RunEnded),
///   [`IllegalTransition`](Self::IllegalTransition),
///   [`UnknownHitlRequest`](Self::UnknownHitlRequest);
/// - the engine or its data failed — alert an operator: [`Store`](Self::Store),
///   [`Corrupt`](Self::Corrupt), [`ShuttingDown`](Self::ShuttingDown).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The envelope is invalid; `field` names the offending field (a JSON path).
    #[error("invalid envelope field `{field}`: {message}")]
    InvalidEnvelope {
        /// JSON path of the field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The envelope's policies do not normalize; `field` is `policies.<path>`.
    #[error("invalid envelope field `{field}`: {source}")]
    InvalidPolicies {
        /// JSON path of the field, e.g. `policies.runtime[0].trigger.kind`.
        field: String,
        /// The normalizer's error.
        #[source]
        source: PolicyError,
    },
    /// No run has this id.
    #[error("run {0} not found")]
    RunNotFound(RunId),
    /// The run's state does not accept the request (e.g. resuming a running run, pausing
    /// a paused one); the machine's refusal is the source.
    #[error("conflict: {0}")]
    IllegalTransition(#[source] FsmError),
    /// The HITL request is unknown or already resolved.
    #[error("conflict: hitl request `{request_id}` of run {run} is not pending")]
    UnknownHitlRequest {
        /// The run.
        run: RunId,
        /// The request id given.
        request_id: String,
    },
    /// The run has ended.
    #[error("run {0} has ended")]
    RunEnded(RunId),
    /// An identifier given to the engine breaks the grammar of [`crate::ids`] (a HITL
    /// request id to answer); it can name nothing.
    #[error(transparent)]
    InvalidId(#[from] IdError),
    /// A facet or capability registration was refused.
    #[error("invalid catalog entry: {0}")]
    Catalog(#[from] CatalogError),
    /// A capability names facets the catalog refuses (unknown, wrong direction, …).
    #[error("invalid catalog entry: {}", first_message(.diagnostics))]
    CapabilityFacets {
        /// The refused capability.
        capability_id: String,
        /// Every finding, errors and warnings.
        diagnostics: Vec<Diagnostic>,
    },
    /// Stored data of a run cannot be used (a missing plan version, a log that does not
    /// replay, contracts that no longer compile).
    #[error("run {run} cannot continue from its stored data: {message}")]
    Corrupt {
        /// The run.
        run: RunId,
        /// What is wrong.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The run has not ended but no task drives it any more: its driver panicked and the
    /// failure could not be recorded, a commit failed, or it could not be recovered when the
    /// engine opened. It resumes when the engine is opened again.
    #[error("run {run_id} is stranded: {reason}")]
    Stranded {
        /// The run.
        run_id: RunId,
        /// Why its driver stopped.
        reason: String,
    },
}

fn first_message(diagnostics: &[Diagnostic]) -> &str {
    diagnostics
        .iter()
        .find(|d| d.is_error())
        .map_or("", |d| d.message.as_str())
}

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
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("planner", &self.planner.name())
            .field("executors", &self.executors)
            .field("facets", &self.facets.len())
            .field("capabilities", &self.capabilities.len())
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
    events: broadcast::Sender<Arc<RunEvent>>,
    runs: Mutex<HashMap<RunId, RunSlot>>,
    /// Runs whose driver stopped without ending them, with the reason.
    stranded: Mutex<HashMap<RunId, String>>,
    /// Set by [`Engine::shutdown`] and [`Engine::abort`].
    closed: AtomicBool,
    metrics: EngineMetrics,
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

    pub(crate) fn catalog(&self) -> Arc<CatalogState> {
        self.catalog
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn publish(&self, event: Arc<RunEvent>) {
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
        tracing::info!(
            run_id = %event.run_id,
            seq = event.seq,
            kind = %event.kind(),
            node_id = event.node_id.as_deref().unwrap_or(""),
            plan_version = event.plan_version,
            "run event"
        );
        let _ = self.events.send(event);
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
            catalog.registry.register(cap)?;
        }
        let (events, _) = broadcast::channel(config.event_buffer.max(16));
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
            events,
            runs: Mutex::new(HashMap::new()),
            stranded: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            metrics: EngineMetrics::default(),
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
        Ok(engine)
    }

    /// Validates the envelope, creates the run (committing its first event) and starts it.
    ///
    /// # Errors
    /// [`EngineError::InvalidEnvelope`] naming the offending field; store errors.
    pub async fn submit(&self, envelope: RunEnvelope) -> Result<RunId, EngineError> {
        let actor = RunActor::create(self.inner.clone(), envelope).await?;
        let run_id = actor.run_id();
        self.spawn(actor);
        Ok(run_id)
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

    /// Live events of every run, published after commit.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RunEvent>> {
        self.inner.events.subscribe()
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
    /// [`EngineError::Catalog`] when the capability is invalid or names unknown facets.
    pub fn register_capability(&self, capability: Capability) -> Result<(), EngineError> {
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

    async fn control(&self, run_id: RunId, control: Control) -> Result<(), EngineError> {
        let Some((tx, mut ended)) = self.slot(run_id) else {
            return self
                .undriven(run_id)
                .and(Err(EngineError::RunEnded(run_id)));
        };
        let (reply, rx) = oneshot::channel();
        let answered = match tx.send(Msg::Control { control, reply }) {
            Ok(()) => rx.await.ok(),
            Err(_) => None,
        };
        if let Some(result) = answered {
            return result;
        }
        let _ = ended.wait_for(|stopped| *stopped).await;
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
        check_id(IdKind::HitlRequest, "requestId", request_id)?;
        self.control(
            run_id,
            Control::Answer {
                request_id: request_id.to_owned(),
                answer,
            },
        )
        .await
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
            Control::Signal {
                name: name.to_owned(),
                payload,
            },
        )
        .await
    }

    /// Cancels a run.
    ///
    /// # Errors
    /// [`EngineError::RunNotFound`] / [`EngineError::RunEnded`]; [`EngineError::Stranded`]
    /// when no driver owns the unfinished run (as every control request does).
    pub async fn cancel(&self, run_id: RunId, reason: &str) -> Result<(), EngineError> {
        self.control(
            run_id,
            Control::Cancel {
                reason: reason.to_owned(),
            },
        )
        .await
    }

    /// Pauses an executing run (in-flight nodes finish; nothing new dispatches).
    ///
    /// # Errors
    /// [`EngineError::IllegalTransition`] when the run is not executing.
    pub async fn pause(&self, run_id: RunId, reason: &str) -> Result<(), EngineError> {
        self.control(
            run_id,
            Control::Pause {
                reason: reason.to_owned(),
            },
        )
        .await
    }

    /// Resumes a paused run.
    ///
    /// # Errors
    /// [`EngineError::IllegalTransition`] when the run is not paused or waits on a HITL answer.
    pub async fn resume(&self, run_id: RunId, reason: &str) -> Result<(), EngineError> {
        self.control(
            run_id,
            Control::Resume {
                reason: reason.to_owned(),
            },
        )
        .await
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
        let rx = self.subscribe();
        self.head(run_id)?;
        Ok(follow::follow(self.inner.store.clone(), rx, run_id, after_seq).boxed())
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
        let Some((_, mut ended)) = self.slot(run_id) else {
            return self.settled(run_id);
        };
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                _ = ended.wait_for(|stopped| *stopped) => return self.settled(run_id),
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

    /// Stops every run actor after its current commit and waits for them. Runs stay
    /// non-terminal in the store and resume when the engine is opened again.
    pub async fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::Release);
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
    }

    /// Aborts every run actor at once, without finishing the current round: what a crash
    /// does to the engine. Committed events stay committed; nothing uncommitted is
    /// published. Returns once every actor is gone.
    pub async fn abort(&self) {
        self.inner.closed.store(true, Ordering::Release);
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
