//! `flexrun serve`: the engine over the redb store behind the HTTP API, until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use flexrun::api::{self, ApiConfig, AppState};
use flexrun::executors::http::HttpExecutor;
use flexrun::executors::llm::LlmExecutor;
use flexrun::planner::{OpenAiPlanner, Planner};
use flexrun::webhook::WebhookSecret;
use flexrun::{Durability, Engine, RedbStore, Store};

use crate::{DataArg, ModelArgs, PlannerArg};

pub(crate) async fn serve(
    addr: SocketAddr,
    data: DataArg,
    planner: PlannerArg,
    model: ModelArgs,
    webhook_secrets: Vec<WebhookSecret>,
    config: ApiConfig,
    retain_terminal_runs: Option<Duration>,
) -> anyhow::Result<()> {
    let pricing = model.pricing()?;
    let model = model.config()?;
    if planner == PlannerArg::Openai && model.is_none() {
        bail!("--planner openai needs --planner-base-url and --planner-model");
    }
    let path = data.store_path()?;
    let store = RedbStore::open(&path, Durability::Fsync)
        .with_context(|| format!("opening {}", path.display()))?;
    let recovered = store.non_terminal_runs()?.len();
    let mut engine_config = flexrun::demo::config(Arc::new(store));
    engine_config.planner = Arc::new(flexrun::CatalogPlanner);
    engine_config.retain_terminal_runs = retain_terminal_runs;
    engine_config.pricing = pricing;
    let mut planner_metrics = None;
    if let Some(model) = model {
        let openai = OpenAiPlanner::new(model.clone())?;
        planner_metrics = Some(openai.metrics_handle());
        let openai: Arc<dyn Planner> = Arc::new(openai);
        match planner {
            PlannerArg::Openai => {
                engine_config.planners.push(engine_config.planner.clone());
                engine_config.planner = openai;
            }
            PlannerArg::Catalog => engine_config.planners.push(openai),
        }
        let llm = LlmExecutor::new(model, |_| None)?;
        engine_config.executors = engine_config
            .executors
            .clone()
            .with_type("llm", Arc::new(llm));
    }
    let (http, binding) = HttpExecutor::builder()
        .signing_secrets(webhook_secrets)
        .for_engine()?;
    engine_config.executors = engine_config
        .executors
        .clone()
        .with_type("http", Arc::new(http));
    let engine = Engine::open(engine_config)
        .await
        .with_context(|| format!("opening the engine over {}", path.display()))?;
    binding.bind(&engine);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    eprintln!(
        "flexrun serving http://{} (store {}, {recovered} run(s) continued)",
        listener.local_addr()?,
        path.display()
    );
    let mut state = AppState::new(engine.clone(), config);
    if let Some(metrics) = planner_metrics {
        state = state.with_planner_metrics(metrics);
    }
    api::serve(listener, state, stop_signal()).await?;
    eprintln!("stopping: finishing current commits");
    engine.shutdown().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
