//! The `flexrun` command: run an envelope, serve the HTTP API, benchmark the engine, print
//! generated docs.

use std::io::{BufRead, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::builder::TypedValueParser;
use clap::{Parser, Subcommand, ValueEnum};
use flexrun::api::{self, ApiConfig, AppState};
use flexrun::bench::{self, BenchOptions, Consumer, Level, Scenario, Variant};
use flexrun::executors::http::HttpExecutor;
use flexrun::executors::llm::LlmExecutor;
use flexrun::fsm::{EventBody, HitlDecision, RunOutcome};
use flexrun::planner::{OpenAiConfig, OpenAiPlanner, Planner, ResponseFormat};
use flexrun::webhook::WebhookSecret;
use flexrun::{Durability, Engine, HitlAnswer, RedbStore, RunEnvelope, Store};
use tokio::sync::broadcast::error::RecvError;

/// The binary's allocator. The engine allocates small, short-lived values on one thread and
/// frees many of them on another (events reach subscribers on other workers); mimalloc's
/// per-thread free lists avoid the arena lock contention glibc's allocator shows there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "flexrun", version, about = "Hybrid plan/execute engine")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Answer {
    /// Ask on the terminal.
    Ask,
    /// Approve every request.
    Approve,
    /// Reject every request.
    Reject,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// One line per event.
    Pretty,
    /// SSE frames, as the server streams them.
    Sse,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run one envelope with the built-in demo catalog and the catalog planner.
    Run {
        /// The run envelope (JSON).
        envelope: PathBuf,
        /// The store file.
        #[arg(long, default_value = "flexrun.redb")]
        data: PathBuf,
        /// How to answer HITL requests.
        #[arg(long, value_enum, default_value = "ask")]
        answer: Answer,
        /// How to print events.
        #[arg(long, value_enum, default_value = "pretty")]
        format: Format,
    },
    /// Run the benchmark workload and print its figures as JSON.
    Bench {
        /// linear, replan or fanout.
        #[arg(long, value_enum, default_value = "linear")]
        scenario: ScenarioArg,
        /// Plan size N.
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        /// Runs R.
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// memory (D0), d1 or d2.
        #[arg(long, value_enum, default_value = "d2")]
        durability: LevelArg,
        /// Replan variant: interrupt (client resumes) or route.
        #[arg(long, value_enum, default_value = "interrupt")]
        variant: VariantArg,
        /// 1 runs a warm-up (N=8, R=1) on a separate store first; 0 disables it.
        #[arg(long, default_value_t = 1)]
        warmup: u8,
        /// Directory for the store files (a temp dir by default).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// park: the client awaits events (a wake-up per step); poll: it polls and yields.
        #[arg(long, value_enum, default_value = "park")]
        consumer: ConsumerArg,
    },
    /// Serve the HTTP API (runs, SSE events, plans, HITL, catalog, metrics).
    Serve {
        /// Address to listen on (loopback unless told otherwise).
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        /// Directory of the store file `flexrun.redb` (created if missing).
        #[arg(long, default_value = ".")]
        data: PathBuf,
        /// The default planner of runs whose envelope names none.
        #[arg(long, value_enum, default_value = "catalog")]
        planner: PlannerArg,
        /// Name of an environment variable holding a bearer token; when given, every route
        /// but `/healthz` requires `Authorization: Bearer <token>`.
        #[arg(long)]
        auth_token_env: Option<String>,
        /// Largest accepted request body, in bytes.
        #[arg(long, default_value_t = 1024 * 1024)]
        body_limit: usize,
        /// Seconds between SSE heartbeat comments.
        #[arg(long, default_value_t = 15)]
        heartbeat_secs: u64,
        /// Delete ended runs whose last update is older than this (e.g. `7d`, `12h`); without
        /// it, runs are kept until deleted.
        #[arg(long, value_parser = humantime::parse_duration)]
        retain_terminal_runs: Option<Duration>,
        /// Name of an environment variable holding the server-wide webhook signing secret
        /// (`whsec_<base64>`; several separated by spaces while rotating). Every `http`
        /// capability call is then signed, unless the capability names its own
        /// `signingSecretEnv`. The value is never logged.
        #[arg(long)]
        webhook_secret_env: Option<String>,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Compact a store file offline (no server may have it open) and print its size before and
    /// after as one JSON line.
    Compact {
        /// The store file, or a directory holding `flexrun.redb`.
        #[arg(long, default_value = "flexrun.redb")]
        data: PathBuf,
    },
    /// Print documentation generated from the code.
    Docs {
        /// states: the state table and diagram.
        what: DocsArg,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ScenarioArg {
    Linear,
    Replan,
    Fanout,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LevelArg {
    Memory,
    D1,
    D2,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ConsumerArg {
    Park,
    Poll,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum VariantArg {
    Interrupt,
    Route,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PlannerArg {
    /// The deterministic, offline catalog planner.
    Catalog,
    /// An OpenAI-compatible Chat Completions endpoint (needs --planner-base-url and --planner-model).
    Openai,
}

/// The OpenAI-compatible endpoint used by the `openai` planner and the `llm` executor.
#[derive(Debug, Clone, clap::Args)]
struct ModelArgs {
    /// Base URL including the API prefix, e.g. `https://api.openai.com/v1`. When given, the
    /// `openai` planner is available to runs (envelope `planner: "openai"`) and capabilities
    /// with `executor.type = "llm"` run against it.
    #[arg(long)]
    planner_base_url: Option<String>,
    /// Model name, e.g. `gpt-4o-mini`.
    #[arg(long)]
    planner_model: Option<String>,
    /// Environment variable holding the API key (never logged).
    #[arg(long, default_value = "OPENAI_API_KEY")]
    planner_api_key_env: String,
    /// Per-attempt timeout of a model call, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    planner_timeout_ms: u64,
    /// Attempts per model call (429/5xx/timeouts are retried with backoff).
    #[arg(long, default_value_t = 3)]
    planner_max_attempts: u32,
    /// How requests ask for the reply's shape: `json_schema` (enforced schema), `json_object`
    /// (JSON mode) or `none` (no `response_format`; the schema goes into the prompt). A 400
    /// to a mode falls back to the next one for the rest of the process.
    #[arg(long, default_value = "json_schema", value_parser = response_format_parser())]
    planner_response_format: ResponseFormat,
}

fn response_format_parser() -> impl TypedValueParser<Value = ResponseFormat> {
    clap::builder::PossibleValuesParser::new(ResponseFormat::ALL.map(ResponseFormat::as_str))
        .try_map(|s| s.parse::<ResponseFormat>())
}

impl ModelArgs {
    fn config(&self) -> anyhow::Result<Option<OpenAiConfig>> {
        let (Some(url), Some(model)) = (&self.planner_base_url, &self.planner_model) else {
            if self.planner_base_url.is_some() || self.planner_model.is_some() {
                bail!("--planner-base-url and --planner-model go together");
            }
            return Ok(None);
        };
        let mut config = OpenAiConfig::new(url.clone(), model.clone());
        config.api_key_env = self.planner_api_key_env.clone();
        config.timeout = Duration::from_millis(self.planner_timeout_ms.max(1));
        config.max_attempts = self.planner_max_attempts.max(1);
        config.response_format = self.planner_response_format;
        Ok(Some(config))
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DocsArg {
    States,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLEXRUN_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Cmd::Run {
            envelope,
            data,
            answer,
            format,
        } => run(envelope, data, answer, format).await,
        Cmd::Bench {
            scenario,
            nodes,
            runs,
            durability,
            variant,
            warmup,
            dir,
            consumer,
        } => {
            let opts = BenchOptions {
                scenario: match scenario {
                    ScenarioArg::Linear => Scenario::Linear,
                    ScenarioArg::Replan => Scenario::Replan,
                    ScenarioArg::Fanout => Scenario::Fanout,
                },
                nodes,
                runs,
                level: match durability {
                    LevelArg::Memory => Level::Memory,
                    LevelArg::D1 => Level::D1,
                    LevelArg::D2 => Level::D2,
                },
                variant: match variant {
                    VariantArg::Interrupt => Variant::Interrupt,
                    VariantArg::Route => Variant::Route,
                },
                warmup: warmup != 0,
                dir,
                consumer: match consumer {
                    ConsumerArg::Park => Consumer::Park,
                    ConsumerArg::Poll => Consumer::Poll,
                },
            };
            let report = bench::run(&opts)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Cmd::Serve {
            addr,
            data,
            planner,
            auth_token_env,
            body_limit,
            heartbeat_secs,
            retain_terminal_runs,
            webhook_secret_env,
            model,
        } => {
            let auth_token = match auth_token_env {
                None => None,
                Some(var) => {
                    let token = std::env::var(&var)
                        .with_context(|| format!("reading the auth token from ${var}"))?;
                    if token.trim().is_empty() {
                        bail!("${var} is empty; refusing to serve with an empty token");
                    }
                    Some(token)
                }
            };
            let config = ApiConfig {
                auth_token,
                heartbeat: Duration::from_secs(heartbeat_secs.max(1)),
                body_limit,
                ..ApiConfig::default()
            };
            let webhook_secrets = match webhook_secret_env {
                None => Vec::new(),
                Some(var) => {
                    let text = std::env::var(&var).with_context(|| {
                        format!("reading the webhook signing secret from ${var}")
                    })?;
                    WebhookSecret::parse_list(&text)
                        .with_context(|| format!("the webhook signing secret in ${var}"))?
                }
            };
            serve(
                addr,
                data,
                planner,
                model,
                webhook_secrets,
                config,
                retain_terminal_runs,
            )
            .await
        }
        Cmd::Compact { data } => compact(data),
        Cmd::Docs {
            what: DocsArg::States,
        } => {
            print!("{}", flexrun::fsm::table::docs_section());
            Ok(())
        }
    }
}

async fn run(path: PathBuf, data: PathBuf, answer: Answer, format: Format) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let envelope: RunEnvelope =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let store = RedbStore::open(&data, Durability::Fsync)
        .with_context(|| format!("opening {}", data.display()))?;
    let engine = Engine::open(flexrun::demo::config(Arc::new(store))).await?;
    let mut rx = engine.subscribe();
    let started = Instant::now();
    let run_id = engine.submit(envelope).await?;
    eprintln!("run {run_id} (store {})", data.display());
    let outcome = loop {
        let ev = match rx.recv().await {
            Ok(ev) => ev,
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => bail!("the engine stopped"),
        };
        if ev.run_id != run_id {
            continue;
        }
        match format {
            Format::Pretty => println!(
                "{:>4}  {:<17} {}",
                ev.seq,
                ev.kind().as_str(),
                flexrun::api::summary(&ev)
            ),
            Format::Sse => print!("{}", flexrun::api::sse_frame(&ev)),
            Format::Json => println!("{}", serde_json::to_string(&*ev)?),
        }
        match &ev.body {
            EventBody::HitlRequest {
                request_id,
                question,
                ..
            } => {
                let decision = match answer {
                    Answer::Approve => HitlDecision::Approve,
                    Answer::Reject => HitlDecision::Reject,
                    Answer::Ask => ask(question)?,
                };
                engine
                    .answer_hitl(run_id, request_id, HitlAnswer::new(decision))
                    .await?;
            }
            EventBody::Complete { status, .. } => break *status,
            _ => {}
        }
    };
    engine.shutdown().await;
    eprintln!(
        "{outcome:?} in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    if outcome != RunOutcome::Completed {
        std::process::exit(1);
    }
    Ok(())
}

async fn serve(
    addr: SocketAddr,
    data: PathBuf,
    planner: PlannerArg,
    model: ModelArgs,
    webhook_secrets: Vec<WebhookSecret>,
    config: ApiConfig,
    retain_terminal_runs: Option<Duration>,
) -> anyhow::Result<()> {
    let model = model.config()?;
    if planner == PlannerArg::Openai && model.is_none() {
        bail!("--planner openai needs --planner-base-url and --planner-model");
    }
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let path = data.join("flexrun.redb");
    let store = RedbStore::open(&path, Durability::Fsync)
        .with_context(|| format!("opening {}", path.display()))?;
    let recovered = store.non_terminal_runs()?.len();
    let mut engine_config = flexrun::demo::config(Arc::new(store));
    engine_config.planner = Arc::new(flexrun::CatalogPlanner);
    engine_config.retain_terminal_runs = retain_terminal_runs;
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
    let engine = Engine::open(engine_config).await?;
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

/// Compacts the store file at `data` (or `data/flexrun.redb`) and prints the sizes.
fn compact(data: PathBuf) -> anyhow::Result<()> {
    let path = if data.is_dir() {
        data.join("flexrun.redb")
    } else {
        data
    };
    if !path.is_file() {
        bail!("{}: no store file to compact", path.display());
    }
    let size = |path: &PathBuf| -> anyhow::Result<u64> {
        Ok(std::fs::metadata(path)
            .with_context(|| format!("reading the size of {}", path.display()))?
            .len())
    };
    let before = size(&path)?;
    let started = Instant::now();
    let store = RedbStore::open(&path, Durability::Fsync)
        .with_context(|| format!("opening {} (is a server using it?)", path.display()))?;
    let compacted = store.compact()?;
    drop(store);
    let millis = started.elapsed().as_millis();
    let after = size(&path)?;
    println!(
        "{}",
        serde_json::json!({
            "path": path.display().to_string(),
            "beforeBytes": before,
            "afterBytes": after,
            "compacted": compacted,
            "millis": millis,
        })
    );
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

fn ask(question: &str) -> anyhow::Result<HitlDecision> {
    let stdin = std::io::stdin();
    loop {
        eprint!("{question} [approve/reject] ");
        std::io::stderr().flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            bail!("no answer on standard input (use --answer approve|reject)");
        }
        match line.trim() {
            "a" | "approve" | "y" | "yes" => return Ok(HitlDecision::Approve),
            "r" | "reject" | "n" | "no" => return Ok(HitlDecision::Reject),
            _ => eprintln!("please answer approve or reject"),
        }
    }
}
