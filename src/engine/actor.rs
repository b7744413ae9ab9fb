//! The run actor: the async shell around one run's [`RunDriver`]. It only loops over
//! messages, commits what the driver hands it, publishes the committed events, and starts the
//! planner calls and node executions the driver asked for.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::driver::{After, Local, Plans, Ready, RunDriver, limits_of};
use super::executor::{self, ExecError, NodeCall, Work};
use super::idempotency::{PendingRequest, Steer};
use super::validation;
use super::{EngineError, Inner, Steered};
use crate::catalog::{Capability, ExecutorSpec};
use crate::envelope::RunEnvelope;
use crate::fsm::{PlanPhase, RunError, RunMachine, RunState, TokenUsage};
use crate::ids::{RunId, Timestamp};
use crate::planner::{PlanRequest, PlanResponse, Planner, PlannerError};
use crate::store::StoreError;
use crate::telemetry;

/// Everything a run actor receives.
pub(crate) enum Msg {
    NodeDone {
        node_id: String,
        attempt: u32,
        result: Result<Map<String, Value>, ExecError>,
        /// Wall time of the attempt in microseconds: the `node_complete` event carries it and
        /// `/metrics` sums it, so both read the same figure.
        duration_us: u64,
        /// Tokens the executor reported for the attempt.
        usage: Option<TokenUsage>,
    },
    Planned {
        call: u64,
        result: Result<PlanResponse, PlannerError>,
        latency_ms: u64,
    },
    Control {
        control: Steer,
        /// The idempotency key it came with, recorded with the commit that applies it.
        request: Option<PendingRequest>,
        reply: oneshot::Sender<Result<Steered, EngineError>>,
    },
    Timer,
    Shutdown,
}

/// Why a run actor stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Exit {
    /// The run ended (its `complete` event is committed).
    Ended,
    /// The engine asked it to stop; the run resumes when the engine is opened again.
    Shutdown,
    /// It stopped without ending the run, for the reason given.
    Stranded(String),
    /// Another instance of the cluster took the run over (the store refused this one's
    /// commit); that instance drives it now.
    Lost(Option<String>),
}

pub(crate) struct RunActor {
    inner: Arc<Inner>,
    run_id: RunId,
    driver: RunDriver,
    planner: Arc<dyn Planner>,
    /// Work the driver handed out, started once the batch it came with is committed.
    after: Vec<After>,
    local: VecDeque<Msg>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    /// The `run` span: parent of this driver's `planner_call` and `node` spans, itself a
    /// child of the caller's trace when the run was submitted with a `traceparent`.
    span: Span,
}

impl RunActor {
    fn build(
        inner: Arc<Inner>,
        driver: RunDriver,
        planner: Arc<dyn Planner>,
        parent: Option<String>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let run_id = driver.machine().run_id();
        let span = tracing::info_span!("run", run_id = %run_id);
        if let Some(parent) = parent {
            telemetry::set_parent(&span, &parent);
        }
        Self {
            run_id,
            inner,
            driver,
            planner,
            after: Vec::new(),
            local: VecDeque::new(),
            tx,
            rx,
            span,
        }
    }

    /// Validates the envelope, commits the run's creation with its `plan_requested` event.
    pub(crate) async fn create(
        inner: Arc<Inner>,
        envelope: RunEnvelope,
        request: Option<PendingRequest>,
    ) -> Result<Self, EngineError> {
        let policies = validation::check_envelope(&envelope, &inner.catalog())?;
        let raw = serde_json::to_value(&envelope).map_err(|e| EngineError::InvalidEnvelope {
            field: "$".to_owned(),
            message: e.to_string(),
        })?;
        let run_id = RunId::new();
        let machine = RunMachine::new(run_id, limits_of(&policies));
        let planner = inner
            .planner_for(envelope.planner.as_deref())
            .ok_or_else(|| EngineError::InvalidEnvelope {
                field: "planner".to_owned(),
                message: format!(
                    "unknown planner `{}`; this engine has {}",
                    envelope.planner.as_deref().unwrap_or_default(),
                    inner.planner_names().join(", ")
                ),
            })?;
        let now = Timestamp::now();
        let name = planner.name().to_owned();
        let parent = telemetry::parent_of(&envelope.metadata).map(str::to_owned);
        let mut driver = RunDriver::new(envelope, policies, machine, name, inner.catalog(), now);
        driver.set_pricing(inner.pricing());
        let mut actor = Self::build(inner, driver, planner, parent);
        actor.driver.applied_opt(request);
        actor
            .driver
            .start(raw)
            .map_err(EngineError::IllegalTransition)?;
        actor.commit().await?;
        Ok(actor)
    }

    /// Rebuilds a run's driver from its committed events, plan versions and queue.
    async fn restore(inner: Arc<Inner>, run_id: RunId) -> Result<Self, EngineError> {
        let store = inner.store.clone();
        let raw = store
            .envelope(run_id)?
            .ok_or(EngineError::RunNotFound(run_id))?;
        let envelope: RunEnvelope =
            serde_json::from_value(raw).map_err(|e| EngineError::Corrupt {
                run: run_id,
                message: format!("stored envelope does not decode: {e}"),
            })?;
        let policies =
            crate::policy::normalize(&envelope.policies).map_err(|e| EngineError::Corrupt {
                run: run_id,
                message: format!("stored policies do not normalize: {e}"),
            })?;
        let events = store.events_after(run_id, 0, usize::MAX)?;
        let machine = RunMachine::restore(run_id, limits_of(&policies), &events).map_err(|e| {
            EngineError::Corrupt {
                run: run_id,
                message: format!("the event log does not replay: {e}"),
            }
        })?;
        let planner = inner
            .planner_for(envelope.planner.as_deref())
            .ok_or_else(|| EngineError::Corrupt {
                run: run_id,
                message: "the run names a planner this engine lacks".to_owned(),
            })?;
        let mut plans = Plans::new();
        for version in store.plan_versions(run_id)? {
            if let Some(snapshot) = store.plan_version(run_id, version)? {
                plans.insert(version, snapshot);
            }
        }
        let created_at = store.run_head(run_id)?.map(|h| h.created_at);
        let queued = store.queued_firings(run_id)?;
        let name = planner.name().to_owned();
        let now = Timestamp::now();
        let parent = telemetry::parent_of(&envelope.metadata).map(str::to_owned);
        let mut driver = RunDriver::new(envelope, policies, machine, name, inner.catalog(), now);
        driver.set_pricing(inner.pricing());
        driver.restore(created_at, &events, &plans, queued)?;
        Ok(Self::build(inner, driver, planner, parent))
    }

    /// Rebuilds a run from its committed events and decides how to continue it.
    pub(crate) async fn recover(inner: Arc<Inner>, run_id: RunId) -> Result<Self, EngineError> {
        let mut actor = Self::restore(inner, run_id).await?;
        let machine = actor.driver.machine();
        tracing::info!(run_id = %run_id, state = %machine.state(), seq = machine.seq(), "recovering run");
        actor.driver.resume_after_restart();
        actor.commit().await?;
        Ok(actor)
    }

    /// Ends a run whose driver died: rebuilds it from its committed events (whatever the dead
    /// driver had not committed is lost) and commits `complete{failed}` with `DRIVER_FAILED`.
    pub(crate) async fn fail_dead_driver(
        inner: Arc<Inner>,
        run_id: RunId,
        why: &str,
    ) -> Result<(), EngineError> {
        let mut actor = Self::restore(inner, run_id).await?;
        if actor.driver.machine().state() == RunState::Done {
            return Ok(());
        }
        let error = RunError::new("DRIVER_FAILED", format!("the run's driver died: {why}"));
        actor
            .driver
            .fail(error)
            .map_err(EngineError::IllegalTransition)?;
        actor.commit().await
    }

    pub(crate) fn run_id(&self) -> RunId {
        self.run_id
    }

    pub(crate) fn sender(&self) -> mpsc::UnboundedSender<Msg> {
        self.tx.clone()
    }

    /// The actor loop: one message, one round, one commit. Returns why it stopped.
    pub(crate) async fn run(mut self) -> Exit {
        self.perform_after();
        while !self.driver.finished() {
            let msg = match self.local.pop_front() {
                Some(msg) => msg,
                None => match self.next_message().await {
                    Some(msg) => msg,
                    None => return Exit::Shutdown,
                },
            };
            self.driver.begin(Timestamp::now());
            let reply = match msg {
                Msg::Shutdown => return Exit::Shutdown,
                Msg::NodeDone {
                    node_id,
                    attempt,
                    result,
                    duration_us,
                    usage,
                } => {
                    if self.driver.awaits(&node_id, attempt) {
                        let metrics = &self.inner.metrics;
                        let relaxed = std::sync::atomic::Ordering::Relaxed;
                        metrics.node_attempts.fetch_add(1, relaxed);
                        metrics.node_micros.fetch_add(duration_us, relaxed);
                    }
                    self.driver
                        .on_node_done(node_id, attempt, result, duration_us, usage);
                    None
                }
                Msg::Planned {
                    call,
                    result,
                    latency_ms,
                } => {
                    self.driver.set_catalog(self.inner.catalog());
                    self.driver.on_planned(call, result, latency_ms);
                    None
                }
                Msg::Control {
                    control,
                    request,
                    reply,
                } => {
                    let applied = self.driver.on_control(control);
                    if applied.is_ok() {
                        self.driver.applied_opt(request);
                    }
                    Some((applied, reply))
                }
                Msg::Timer => {
                    self.driver.on_timer();
                    None
                }
            };
            let committed = self.commit().await;
            let failed = committed.as_ref().err().map(ToString::to_string);
            let lost = match &committed {
                Err(EngineError::Store(StoreError::NotOwner { owner, .. })) => Some(owner.clone()),
                _ => None,
            };
            if let Some((result, reply)) = reply {
                let steered = Steered {
                    status: self.driver.status(),
                    state: self.driver.machine().state(),
                    replayed: false,
                };
                let _ = reply.send(committed.and(result).map(|()| steered));
            }
            if let Some(owner) = lost {
                return Exit::Lost(owner);
            }
            if let Some(e) = failed {
                // What the machine applied is not stored: this driver cannot go on, and a
                // restart continues from the last commit.
                tracing::error!(run_id = %self.run_id, error = %e, "commit failed; the run stops here and resumes on restart");
                return Exit::Stranded(format!("a commit failed: {e}"));
            }
            self.perform_after();
        }
        Exit::Ended
    }

    async fn next_message(&mut self) -> Option<Msg> {
        let wait = self.driver.timeout_in_ms(Timestamp::now());
        match wait {
            Some(ms) => {
                let at = tokio::time::Instant::now() + Duration::from_millis(ms);
                tokio::select! {
                    msg = self.rx.recv() => msg,
                    () = tokio::time::sleep_until(at) => Some(Msg::Timer),
                }
            }
            None => self.rx.recv().await,
        }
    }

    /// Ends the round: commits what the driver hands out (if anything) and publishes its
    /// events; the work to start after it waits in `after`.
    async fn commit(&mut self) -> Result<(), EngineError> {
        let Ready {
            commit,
            after,
            local,
        } = self.driver.ready();
        self.after.extend(after);
        self.local.extend(local.into_iter().map(|l| match l {
            Local::NodeDone {
                node_id,
                attempt,
                result,
                duration_us,
            } => Msg::NodeDone {
                node_id,
                attempt,
                result,
                duration_us,
                usage: None,
            },
        }));
        let Some(commit) = commit else {
            return Ok(());
        };
        let (run, events) = (commit.run_id, commit.events.clone());
        self.inner.committer.commit(commit).await?;
        self.inner.publish(run, &events);
        Ok(())
    }

    /// Starts what waited on the commit: planner calls and node executions.
    fn perform_after(&mut self) {
        for action in std::mem::take(&mut self.after) {
            match action {
                After::CallPlanner(id, request) => self.call_planner(id, request),
                After::Execute(call, cap) => self.execute(call, cap),
            }
        }
    }

    fn call_planner(&mut self, id: u64, request: PlanRequest) {
        self.inner
            .metrics
            .planner_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let planner = self.planner.clone();
        let tx = self.tx.clone();
        let span = tracing::info_span!(
            parent: &self.span,
            "planner_call",
            run_id = %self.run_id,
            planner = planner.name(),
            model = Empty,
            phase = phase_name(request.phase),
            attempt = request.attempt,
            prompt_tokens = Empty,
            completion_tokens = Empty,
            latency_ms = Empty,
            outcome = Empty,
        );
        let started = Instant::now();
        let mut fut = Box::pin(
            AssertUnwindSafe(async move { planner.plan(request).await })
                .catch_unwind()
                .map(|outcome| {
                    outcome.unwrap_or_else(|payload| {
                        Err(PlannerError::Fatal(format!(
                            "the planner panicked: {}",
                            executor::panic_message(payload.as_ref())
                        )))
                    })
                })
                .instrument(span.clone()),
        );
        if let Some(result) = fut.as_mut().now_or_never() {
            let latency_ms = started.elapsed().as_millis() as u64;
            planner_call_done(&span, &result, latency_ms);
            self.local.push_back(Msg::Planned {
                call: id,
                result,
                latency_ms,
            });
            return;
        }
        tokio::spawn(async move {
            let result = fut.await;
            let latency_ms = started.elapsed().as_millis() as u64;
            planner_call_done(&span, &result, latency_ms);
            let _ = tx.send(Msg::Planned {
                call: id,
                result,
                latency_ms,
            });
        });
    }

    fn execute(&mut self, mut call: NodeCall, cap: Arc<Capability>) {
        let (node_id, attempt) = (call.node_id.clone(), call.attempt);
        let started = Instant::now();
        let timeout = Duration::from_millis(cap.timeout_ms.max(1));
        let work = match &cap.executor {
            ExecutorSpec::Builtin { handler } => match self.inner.executors.handler(handler) {
                Some(h) => Ok(Work::Handler(h.clone())),
                None => Err(ExecError::fatal(
                    "EXECUTOR_MISSING",
                    format!("no builtin handler named `{handler}`"),
                )),
            },
            ExecutorSpec::Http { .. } => self.typed_executor("http"),
            ExecutorSpec::Llm { .. } => self.typed_executor("llm"),
            ExecutorSpec::Custom { executor_type, .. } => self.typed_executor(executor_type),
            ExecutorSpec::Human => return,
        };
        let span = tracing::info_span!(
            parent: &self.span,
            "node",
            run_id = %self.run_id,
            node_id = call.node_id.as_str(),
            capability_id = call.capability_id.as_str(),
            attempt,
            outcome = Empty,
            duration_us = Empty,
        );
        let work = match work {
            Ok(work) => work,
            Err(e) => {
                let result = Err(e);
                node_done(&span, &result, 0);
                self.local.push_back(Msg::NodeDone {
                    node_id,
                    attempt,
                    result,
                    duration_us: 0,
                    usage: None,
                });
                return;
            }
        };
        call.executor = Some(cap.executor.clone());
        let usage = call.usage.clone();
        let mut attempt_fut =
            Box::pin(executor::attempt(work, call, timeout).instrument(span.clone()));
        if let Some(result) = attempt_fut.as_mut().now_or_never() {
            let duration_us = started.elapsed().as_micros() as u64;
            node_done(&span, &result, duration_us);
            self.local.push_back(Msg::NodeDone {
                node_id,
                attempt,
                result,
                duration_us,
                usage: usage.get(),
            });
            return;
        }
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let result = attempt_fut.await;
            let duration_us = started.elapsed().as_micros() as u64;
            node_done(&span, &result, duration_us);
            let _ = tx.send(Msg::NodeDone {
                node_id,
                attempt,
                result,
                duration_us,
                usage: usage.get(),
            });
        });
    }

    fn typed_executor(&self, executor_type: &str) -> Result<Work, ExecError> {
        self.inner
            .executors
            .for_type(executor_type)
            .cloned()
            .map(Work::Executor)
            .ok_or_else(|| {
                ExecError::fatal(
                    "EXECUTOR_MISSING",
                    format!("no executor registered for type `{executor_type}`"),
                )
            })
    }
}

fn phase_name(phase: PlanPhase) -> &'static str {
    match phase {
        PlanPhase::Initial => "initial",
        PlanPhase::Revision => "revision",
        PlanPhase::Replan => "replan",
    }
}

/// Records how a planner call went on its span: `ok`, `retryable` or `fatal`, with the
/// reply's token counts when the planner reports them.
fn planner_call_done(span: &Span, result: &Result<PlanResponse, PlannerError>, latency_ms: u64) {
    if span.is_disabled() {
        return;
    }
    span.record("latency_ms", latency_ms);
    let outcome = match result {
        Ok(response) => {
            if let Some(usage) = &response.usage {
                span.record("prompt_tokens", usage.prompt_tokens);
                span.record("completion_tokens", usage.completion_tokens);
            }
            "ok"
        }
        Err(PlannerError::Retryable(_)) => "retryable",
        Err(PlannerError::Fatal(_)) => "fatal",
    };
    span.record("outcome", outcome);
}

/// Records how a node attempt went on its span: `ok`, or the error's code.
fn node_done(span: &Span, result: &Result<Map<String, Value>, ExecError>, duration_us: u64) {
    if span.is_disabled() {
        return;
    }
    span.record("duration_us", duration_us);
    match result {
        Ok(_) => span.record("outcome", "ok"),
        Err(e) => span.record("outcome", e.code.as_str()),
    };
}
