//! What every handler shares: the engine, the server settings, the shutdown signal and the
//! counters of a model-backed planner.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::engine::Engine;
use crate::planner::openai::OpenAiMetrics;

/// Server settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// When set, every route but `/healthz` requires `Authorization: Bearer <token>`.
    pub auth_token: Option<String>,
    /// Interval of SSE heartbeat comments (`: heartbeat`).
    pub heartbeat: Duration,
    /// Largest accepted request body, in bytes (413 beyond).
    pub body_limit: usize,
    /// Longest time a request may take to produce its response head (event streams are
    /// bounded only by their run).
    pub request_timeout: Duration,
    /// The reconnection delay event streams announce to clients (SSE `retry:`).
    pub sse_retry: Duration,
    /// Origins (`scheme://host[:port]`, or `*` for any) whose browser pages may call the API
    /// (CORS, preflight included); none by default, which leaves CORS off.
    pub cors_origins: Vec<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            auth_token: None,
            heartbeat: Duration::from_secs(15),
            body_limit: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            sse_retry: Duration::from_secs(3),
            cors_origins: Vec::new(),
        }
    }
}

/// Tells open event streams (and [`serve`](super::serve)) that the server is stopping.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A signal not yet triggered.
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Triggers the signal: event streams end and the server stops accepting.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Whether the signal was triggered.
    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once the signal is triggered.
    pub fn triggered(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }
}

/// The state behind [`router`](super::router).
#[derive(Debug, Clone)]
pub struct AppState {
    pub(crate) engine: Engine,
    pub(crate) config: Arc<ApiConfig>,
    pub(crate) shutdown: Shutdown,
    pub(crate) planner_metrics: Option<Arc<OpenAiMetrics>>,
    /// Mints and checks event-stream tokens; present when auth is on.
    pub(crate) stream_tokens: Option<Arc<super::stream_token::StreamTokens>>,
}

impl AppState {
    /// State over `engine` with `config` and a fresh shutdown signal.
    pub fn new(engine: Engine, config: ApiConfig) -> Self {
        let stream_tokens = config
            .auth_token
            .as_deref()
            .map(|bearer| Arc::new(super::stream_token::StreamTokens::new(bearer)));
        Self {
            engine,
            config: Arc::new(config),
            shutdown: Shutdown::new(),
            planner_metrics: None,
            stream_tokens,
        }
    }

    /// Exports the counters of an OpenAI-compatible planner on `/metrics` (its response
    /// format and fallbacks), e.g. from [`OpenAiPlanner::metrics_handle`].
    ///
    /// [`OpenAiPlanner::metrics_handle`]: crate::planner::OpenAiPlanner::metrics_handle
    #[must_use]
    pub fn with_planner_metrics(mut self, metrics: Arc<OpenAiMetrics>) -> Self {
        self.planner_metrics = Some(metrics);
        self
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The shutdown signal shared by every clone of this state.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn triggering_wakes_every_waiter_even_late_ones() {
        let s = Shutdown::new();
        let early = tokio::spawn(s.triggered());
        assert!(!s.is_triggered());
        s.clone().trigger();
        early.await.unwrap();
        s.triggered().await;
        assert!(s.is_triggered());
    }
}
