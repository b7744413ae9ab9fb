//! `flexrun serve`: the engine over the redb store (or a PostgreSQL store shared with other
//! instances) behind the HTTP API, until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use flexrun::api::{self, ApiConfig, AppState};
use flexrun::executors::http::HttpExecutor;
use flexrun::executors::llm::LlmExecutor;
use flexrun::planner::{OpenAiPlanner, Planner};
use flexrun::store::{PostgresOptions, PostgresStore};
use flexrun::webhook::WebhookSecret;
use flexrun::{ClusterOptions, Durability, Engine, RedbStore, Store};

use crate::{DataArg, ModelArgs, PlannerArg};

/// Where `serve` keeps its runs: the redb file of `--data`, or a PostgreSQL database shared
/// with other instances.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StoreArgs {
    #[command(flatten)]
    data: DataArg,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// A store shared by several instances (docs/DEPLOY.md).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClusterArgs {
    /// A PostgreSQL store (`postgres://user@host:port/database`) instead of the redb file of
    /// `--data`. Several `flexrun serve` processes on one database act as one server: each
    /// run is driven by one of them, and another takes it over when that one dies.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// This instance's id among those sharing the store (random by default). An instance
    /// restarted with the same id takes its runs back at once instead of after the lease.
    #[arg(long, requires = "store")]
    instance_id: Option<String>,
    /// Where the other instances reach this one's API to forward steering requests
    /// (default: `http://` and the address bound by `--addr`).
    #[arg(long, value_name = "URL", requires = "store")]
    advertise: Option<String>,
    /// How long this instance's lease lasts without a heartbeat (heartbeats come every fifth
    /// of it): after it dies, its runs are taken over within about this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    lease: Duration,
}

/// The store `serve` opens, and how to name it in messages.
fn open_store(data: &DataArg, cluster: &ClusterArgs) -> anyhow::Result<(Arc<dyn Store>, String)> {
    match &cluster.store {
        Some(url) => {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                bail!("--store {url}: expected a postgres:// URL");
            }
            let options = PostgresOptions {
                instance_id: cluster.instance_id.clone(),
                ..PostgresOptions::default()
            };
            let store = PostgresStore::connect(url, options)
                .with_context(|| format!("connecting to the store at {}", redact(url)))?;
            Ok((Arc::new(store), redact(url)))
        }
        None => {
            let path = data.store_path()?;
            let store = RedbStore::open(&path, Durability::Fsync)
                .with_context(|| format!("opening {}", path.display()))?;
            Ok((Arc::new(store), path.display().to_string()))
        }
    }
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = &url[scheme + 3..at];
            match user.split_once(':') {
                Some((name, _)) => format!("{}{name}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

pub(crate) async fn serve(
    addr: SocketAddr,
    store: StoreArgs,
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
    let StoreArgs { data, cluster } = store;
    let (store, name) = open_store(&data, &cluster)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let bound = listener.local_addr()?;
    let mut engine_config = flexrun::demo::config(store.clone());
    engine_config.cluster = ClusterOptions {
        lease: cluster.lease,
        heartbeat: cluster.lease / 5,
        address: Some(
            cluster
                .advertise
                .unwrap_or_else(|| format!("http://{bound}")),
        ),
        ..ClusterOptions::default()
    };
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
        .with_context(|| format!("opening the engine over {name}"))?;
    binding.bind(&engine);
    let driven = engine.driven_runs();
    match store.cluster() {
        Some(c) => eprintln!(
            "flexrun serving http://{bound} (store {name}, instance {}, {driven} run(s) continued)",
            c.instance_id()
        ),
        None => {
            eprintln!("flexrun serving http://{bound} (store {name}, {driven} run(s) continued)")
        }
    }
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
