//! The engine's error type.

use crate::catalog::CatalogError;
use crate::diagnostics::Diagnostic;
use crate::engine::CapabilityRefused;
use crate::fsm::FsmError;
use crate::ids::{IdError, RunId};
use crate::policy::PolicyError;
use crate::store::StoreError;

/// Errors of the engine's public API, split by what a caller does about them.
///
/// - the request is wrong — fix it: [`InvalidEnvelope`](Self::InvalidEnvelope),
///   [`InvalidPolicies`](Self::InvalidPolicies), [`Catalog`](Self::Catalog),
///   [`CapabilityFacets`](Self::CapabilityFacets), [`ExecutorRefused`](Self::ExecutorRefused),
///   [`InvalidId`](Self::InvalidId);
/// - the run is not where the request needs it — look again, maybe retry later:
///   [`RunNotFound`](Self::RunNotFound), [`RunEnded`](Self::RunEnded),
///   [`RunActive`](Self::RunActive),
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
    /// A HITL answer that the request cannot take (an unknown option of a fallback
    /// request, a skip whose output breaks the node's contract); the request stays pending.
    #[error("invalid answer to hitl request `{request_id}`: `{field}`: {message}")]
    InvalidAnswer {
        /// The request answered.
        request_id: String,
        /// The offending field of the answer (`optionId`, `text`, or a JSON pointer into
        /// the output given in `text`, e.g. `text/copyVariants`).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The run has ended.
    #[error("run {0} has ended")]
    RunEnded(RunId),
    /// The run has not ended (or its driver is still finishing), so it cannot be deleted;
    /// nothing was deleted.
    #[error("run {0} is active: only an ended run can be deleted")]
    RunActive(RunId),
    /// An identifier given to the engine breaks the grammar of [`crate::ids`] (a HITL
    /// request id to answer); it can name nothing.
    #[error(transparent)]
    InvalidId(#[from] IdError),
    /// A facet or capability registration was refused.
    #[error("invalid catalog entry: {0}")]
    Catalog(#[from] CatalogError),
    /// The executor registered for a capability's executor type refuses its configuration
    /// (a webhook signing secret that is not set, say).
    #[error("invalid catalog entry: capability `{capability_id}` {source}")]
    ExecutorRefused {
        /// The refused capability.
        capability_id: String,
        /// The executor's refusal, naming the field.
        #[source]
        source: CapabilityRefused,
    },
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
    /// The idempotency key was used before for a different request.
    #[error("idempotency key `{key}` was used for a different request")]
    IdempotencyKeyReused {
        /// The key.
        key: String,
    },
    /// A request with this idempotency key is being applied right now.
    #[error("a request with idempotency key `{key}` is being applied; retry shortly")]
    IdempotencyKeyInUse {
        /// The key.
        key: String,
    },
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
    /// Another instance sharing the store drives the run (see [`crate::store::Cluster`]):
    /// a steering request must go to it (the HTTP API forwards it there).
    #[error("run {run_id} is driven by instance {instance}")]
    OwnedElsewhere {
        /// The run.
        run_id: RunId,
        /// The instance that drives it.
        instance: String,
        /// Where that instance's API answers, if it said.
        address: Option<String>,
    },
}

fn first_message(diagnostics: &[Diagnostic]) -> &str {
    diagnostics
        .iter()
        .find(|d| d.is_error())
        .map_or("", |d| d.message.as_str())
}
